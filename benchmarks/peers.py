"""Peer implementations: PyTorch (as users write it) and NumPyro's TraceGraph_ELBO.

Both are optional: each ``*_available()`` says whether the library imports, and the runner
skips the columns with a printed note otherwise.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def torch_available() -> bool:
    """Whether PyTorch can be imported."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def numpyro_available() -> bool:
    """Whether NumPyro can be imported."""
    try:
        import numpyro  # noqa: F401
        from numpyro.infer import TraceGraph_ELBO  # noqa: F401
    except ImportError:
        return False
    return True


def _median_time(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


# --------------------------------------------------------------------------------------
# PyTorch
# --------------------------------------------------------------------------------------


def torch_cases(
    w1_theta: np.ndarray,
    w2_theta: np.ndarray,
    w4_theta: np.ndarray,
    w4_costs: np.ndarray,
    n_batch: int,
    n_loop: int,
    repeats: int,
) -> list[dict[str, Any]]:
    """Time PyTorch gradient estimators for W1, W2 and W4.

    Two styles: a per-sample Python loop calling ``.backward()`` once per sample (the
    pattern of many tutorials; ``n_loop`` samples, reported per sample), and the batched
    form (``rsample((N,))``, ``F.gumbel_softmax`` on an expanded logits tensor, batched
    score function). Returns rows with the gradient (for a correctness check) and times.
    """
    import torch
    import torch.nn.functional as F
    from torch.distributions import Bernoulli, Normal

    torch.manual_seed(0)
    rows: list[dict[str, Any]] = []

    def w1_f(z):
        return (z.pow(2).sum(-1) + torch.sin(z).sum(-1)) / z.shape[-1]

    def w2_f(x):
        d = x.shape[-1]
        return (x.sum(-1) - d / 3.0) ** 2 / d

    c4 = torch.tensor(w4_costs)

    def w4_f(y):
        return (y * c4).sum((-2, -1))

    def make(theta_np):
        return torch.tensor(theta_np, dtype=torch.float32, requires_grad=True)

    # ---- W1 pathwise ---------------------------------------------------------------
    th1 = make(w1_theta)

    def w1_loop():
        th1.grad = None
        for _ in range(n_loop):
            (w1_f(Normal(th1, 1.0).rsample()) / n_loop).backward()
        return th1.grad

    def w1_batch():
        th1.grad = None
        w1_f(Normal(th1, 1.0).rsample((n_batch,))).mean().backward()
        return th1.grad

    # ---- W2 score function (LOO) ---------------------------------------------------
    th2 = make(w2_theta)

    def w2_loop():  # plain REINFORCE, no baseline (a loop has no other samples to share)
        th2.grad = None
        for _ in range(n_loop):
            dist = Bernoulli(logits=th2)
            x = dist.sample()
            (w2_f(x).detach() * dist.log_prob(x).sum() / n_loop).backward()
        return th2.grad

    def w2_batch(loo: bool):
        def run():
            th2.grad = None
            dist = Bernoulli(logits=th2)
            x = dist.sample((n_batch,))
            fx = w2_f(x)
            b = (fx.sum() - fx) / (n_batch - 1) if loo else 0.0
            ((fx - b).detach() * dist.log_prob(x).sum(-1)).mean().backward()
            return th2.grad

        return run

    # ---- W4 Gumbel-softmax ---------------------------------------------------------
    th4 = make(w4_theta)

    def w4_loop():
        th4.grad = None
        for _ in range(n_loop):
            (w4_f(F.gumbel_softmax(th4, tau=0.5)) / n_loop).backward()
        return th4.grad

    def w4_batch():
        th4.grad = None
        y = F.gumbel_softmax(th4.expand(n_batch, *th4.shape), tau=0.5)
        w4_f(y).mean().backward()
        return th4.grad

    specs = [
        ("W1", "pathwise", w1_loop, w1_batch, "Normal.rsample((N,))"),
        ("W2", "score_function", w2_loop, w2_batch(False), "batched log_prob surrogate"),
        ("W2", "score_function(LOO)", None, w2_batch(True), "batched surrogate + LOO"),
        ("W4", "gumbel_softmax(0.5)", w4_loop, w4_batch, "F.gumbel_softmax on (N,20,10)"),
    ]
    loop_repeats = max(3, repeats // 2)
    for wl, est, loop, batch, desc in specs:
        t_batch = _median_time(batch, repeats)
        grad = batch().detach().numpy().copy()
        t_loop = _median_time(loop, loop_repeats) / n_loop if loop is not None else None
        rows.append(
            {
                "workload": wl,
                "estimator": est,
                "batched": t_batch,
                "loop_per_sample": t_loop,
                "desc": desc,
                "grad": grad,
            }
        )
    return rows


# --------------------------------------------------------------------------------------
# NumPyro
# --------------------------------------------------------------------------------------


def numpyro_w2(theta: Any, n: int, f: Callable[[Any], Any]) -> Callable[[Any, Any], Any]:
    """``g(key, theta)``: the gradient of NumPyro's TraceGraph_ELBO loss for W2.

    Guide: ``x ~ Bernoulli(logits=theta).to_event(1)`` (non-reparameterizable, so
    TraceGraph_ELBO uses its score-function surrogate). Model: the *same* Bernoulli site
    with the same ``theta`` plus ``factor("f", -f(x))``. Then ``log p(x) - log q(x) = 0``
    for every ``x`` and its theta-gradient cancels, so ``-ELBO = E_q[f(x)]`` and the loss
    gradient is the plain score-function estimate of ``grad E[f]`` (no baseline:
    NumPyro's TraceGraph_ELBO has none, and Rao-Blackwellization cannot help since ``f``
    depends on every ``x_i``). ``num_particles = n``, vectorized.
    """
    import jax
    import numpyro
    import numpyro.distributions as nd
    from numpyro.infer import TraceGraph_ELBO

    def guide():
        th = numpyro.param("theta", theta)
        numpyro.sample("x", nd.Bernoulli(logits=th).to_event(1))

    def model():
        th = numpyro.param("theta", theta)
        x = numpyro.sample("x", nd.Bernoulli(logits=th).to_event(1))
        numpyro.factor("f", -f(x))

    elbo = TraceGraph_ELBO(num_particles=n, vectorize_particles=True)

    def g(key, th):
        return jax.grad(lambda t: elbo.loss(key, {"theta": t}, model, guide))(th)

    return g
