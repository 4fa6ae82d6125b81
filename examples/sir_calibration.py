"""Calibrating a stochastic SIR epidemic (Binomial transitions) to observed infected counts.

Model. A closed population of ``POP`` people, ``I0`` of them infected at the start. Each day
``t = 1..T``, every susceptible is infected with probability ``1 - exp(-beta I / POP)`` and
every infected recovers with probability ``gamma``, independently::

    new_inf ~ Binomial(S, 1 - exp(-beta I / POP)),   new_rec ~ Binomial(I, gamma),
    S <- S - new_inf,                                I <- I + new_inf - new_rec.

The days are a ``je.scan`` loop; the parameters are a dict of unconstrained reals
``theta = {"log_beta": log beta, "logit_gamma": logit gamma}``. The observed counts
``y_1..y_T`` are one simulated epidemic at the true rates (beta, gamma) = (1.5, 0.25).

What is differentiated. The calibration loss ``L(theta) = E[(1/T) sum_t (I_t - y_t)^2]``
(the expectation over the epidemic; the program returns one run's squared error) and its
gradient in ``theta``. Every random draw is discrete (Binomial) and the epidemic dies out
in many runs (``I = 0`` makes the infection probability exactly 0), so pathwise
differentiation does not apply: the estimators are ``stochastic_ad`` (inverse-CDF coupling,
unbiased), ``score_function("leave_one_out")`` (REINFORCE with a leave-one-out baseline,
unbiased) and ``finite_difference`` with common random numbers (central difference of
step ``h``: it estimates ``(L(theta + h e_j) - L(theta - h e_j)) / 2h``, an O(h^2) bias,
with a variance that grows like 1/h because perturbing ``theta`` flips discrete draws;
full mode only: every compiled program with Binomial sites takes seconds to compile).

Exact reference. Forward dynamic programming over the joint law of ``(S_t, I_t)`` in NumPy
float64: the probability table ``pi_t(s, i)`` and its derivative in both parameters are
pushed through the Binomial transition kernels (derivative of a Binomial(n, p) pmf in p:
``n (Bin(n-1, p)(a-1) - Bin(n-1, p)(a))``), and ``L`` and ``grad L`` are sums over the table
of ``(i - y_t)^2`` at each day. The population is small (``POP = 20``) so the table has
231 states and one exact evaluation takes milliseconds. The same DP gives the model's mean
curve ``E[I_t]`` plotted against the observations.

Calibration. Adam (optax) on ``theta`` with the ``stochastic_ad`` gradient, the whole step
under the user's own ``jax.jit``; the exact loss is evaluated by the DP along the way.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import figure, progress, run_cli
from scipy import stats

import jaxestim as je
from jaxestim import distributions as D

POP, I0, T = 20, 2, 10
TRUE = {"log_beta": float(np.log(1.5)), "logit_gamma": float(np.log(0.25 / 0.75))}
START = {"log_beta": float(np.log(0.6)), "logit_gamma": float(np.log(0.6 / 0.4))}


def rates(theta):
    """(beta, gamma) from the unconstrained parameters."""
    return jnp.exp(theta["log_beta"]), jax.nn.sigmoid(theta["logit_gamma"])


def epidemic(key, theta):
    """One run: the infected counts I_1..I_T (float32)."""
    beta, gamma = rates(theta)

    def day(state, k):
        s, i = state
        k1, k2 = jax.random.split(k)
        new_inf = je.sample(k1, D.Binomial(s, probs=1.0 - jnp.exp(-beta * i / POP)))
        new_rec = je.sample(k2, D.Binomial(i, probs=gamma))
        i = i + new_inf - new_rec
        return (s - new_inf, i), i

    init = (jnp.asarray(POP - I0, jnp.float32), jnp.asarray(I0, jnp.float32))
    _, infected = je.scan(day, init, jax.random.split(key, T))
    return infected


def make_loss(observed):
    obs = jnp.asarray(observed, jnp.float32)

    def loss(key, theta):
        return jnp.mean((epidemic(key, theta) - obs) ** 2)

    return loss


def simulate_observations(seed: int = 3) -> np.ndarray:
    """One epidemic at the true rates (NumPy), conditioned to last past day 3."""
    rng = np.random.default_rng(seed)
    beta, gamma = np.exp(TRUE["log_beta"]), 1 / (1 + np.exp(-TRUE["logit_gamma"]))
    while True:
        s, i, out = POP - I0, I0, []
        for _ in range(T):
            a = rng.binomial(s, 1 - np.exp(-beta * i / POP))
            r = rng.binomial(i, gamma)
            s, i = s - a, i + a - r
            out.append(i)
        if out[2] > 0:
            return np.array(out, np.float64)


# ---------------------------------------------------------------------------------------
# exact loss and gradient: forward dynamic programming over (S, I) in float64
# ---------------------------------------------------------------------------------------
_N = np.arange(POP + 1)


def _binom_table(n, p):
    """pmf[..., a] of Binomial(n, p) for a = 0..POP and its derivative in p (n, p arrays)."""
    a = _N
    n, p = np.asarray(n)[..., None], np.asarray(p)[..., None]
    pmf = stats.binom.pmf(a, n, p)
    m = np.maximum(n - 1, 0)
    d = n * (stats.binom.pmf(a - 1, m, p) - stats.binom.pmf(a, m, p))
    return pmf, np.where(n > 0, d, 0.0)


def exact(theta, observed):
    """Exact loss, its gradient (log_beta, logit_gamma) and the mean curve E[I_t]."""
    beta = float(np.exp(theta["log_beta"]))
    gamma = float(1 / (1 + np.exp(-theta["logit_gamma"])))
    s_, i_ = np.meshgrid(_N, _N, indexing="ij")  # state grid (s, i); s + i <= POP
    e = np.exp(-beta * i_ / POP)
    pin, dpin = _binom_table(s_, 1 - e)  # (s, i, a)
    dpin = dpin * (e * beta * i_ / POP)[..., None]  # d p_inf / d log beta
    prec, dprec = _binom_table(_N, np.full(POP + 1, gamma))  # (i, r)
    dprec = dprec * gamma * (1 - gamma)  # d gamma / d logit gamma
    # transition (s, i) -> (s - a, i + a - r) for every (s, i, a, r), invalid ones weight 0
    S, In, A, R = np.meshgrid(_N, _N, _N, _N, indexing="ij")
    valid = (A <= S) & (R <= In) & (S + In <= POP)
    k_in = pin[S, In, A] * valid
    k_rec = prec[In, R]
    dk = np.stack([dpin[S, In, A] * valid * k_rec, k_in * dprec[In, R]])  # (2, s, i, a, r)
    k = k_in * k_rec
    dst_s, dst_i = np.where(valid, S - A, 0), np.where(valid, In + A - R, 0)
    flat_dst = (dst_s * (POP + 1) + dst_i).ravel()

    w = np.zeros((POP + 1, POP + 1))
    w[POP - I0, I0] = 1.0
    dw = np.zeros((2, POP + 1, POP + 1))
    loss, grad, mean_i = 0.0, np.zeros(2), []
    for t in range(T):
        src = w[:, :, None, None] * k
        dsrc = dw[:, :, :, None, None] * k + w[:, :, None, None] * dk
        w = np.bincount(flat_dst, src.ravel(), (POP + 1) ** 2).reshape(POP + 1, POP + 1)
        dw = np.stack(
            [
                np.bincount(flat_dst, dsrc[j].ravel(), (POP + 1) ** 2).reshape(POP + 1, -1)
                for j in range(2)
            ]
        )
        sq = (_N[None, :] - observed[t]) ** 2 / T
        loss += float((w * sq).sum())
        grad += (dw * sq).sum(axis=(1, 2))
        mean_i.append(float((w * _N[None, :]).sum()))
    return loss, grad, np.array(mean_i)


# ---------------------------------------------------------------------------------------


def main(fast: bool, out: Path) -> dict:
    observed = simulate_observations()
    loss = make_loss(observed)
    theta0 = {k: jnp.asarray(v, jnp.float32) for k, v in START.items()}
    l0, g0, mean0 = exact(START, observed)
    n_cmp = 4000 if fast else 100_000
    fd_step = 0.1
    estimators = {"stochastic_ad": je.stochastic_ad()}
    if not fast:  # (left out of the fast mode: each Binomial program takes seconds to compile)
        estimators["score_function(loo)"] = je.score_function("leave_one_out")
        estimators[f"finite_difference(h={fd_step}, CRN)"] = je.finite_difference(step=fd_step)
    report = je.compare(
        loss,
        theta0,
        estimators,
        key=jax.random.key(0),
        num_samples=n_cmp,
        exact={"log_beta": g0[0], "logit_gamma": g0[1]},
        chunk_size=None if fast else 10_000,
        repeats=1,
        title=f"SIR loss gradient at the start (POP={POP}, T={T})",
    )
    print(report)
    # what CRN finite differences estimate: the DP's own central difference
    res = {"exact_grad": g0.tolist()}
    res["fd_target"] = np.array(
        [
            (
                exact({**START, k: START[k] + fd_step}, observed)[0]
                - exact({**START, k: START[k] - fd_step}, observed)[0]
            )
            / (2 * fd_step)
            for k in ("log_beta", "logit_gamma")
        ]
    ).tolist()
    figure(out, "sir_estimators", report.plot(coord=0))

    # calibration: adam under the user's jax.jit, stochastic_ad gradients
    steps, batch = (60, 32) if fast else (300, 256)
    opt = optax.adam(0.05)
    grad_fn = je.grad(loss, je.stochastic_ad(), num_samples=batch)

    @jax.jit
    def train_step(theta, state, key):
        g = grad_fn(key, theta)
        updates, state = opt.update(g, state, theta)
        return optax.apply_updates(theta, updates), state

    theta, state = theta0, opt.init(theta0)
    curve, every = [(0, l0)], max(1, steps // (6 if fast else 20))
    t0 = time.perf_counter()
    for step, k in progress(
        enumerate(jax.random.split(jax.random.key(1), steps), 1), steps, "adam"
    ):
        theta, state = train_step(theta, state, k)
        if step % every == 0 or step == steps:
            curve.append((step, exact({n: float(v) for n, v in theta.items()}, observed)[0]))
    loop_s = time.perf_counter() - t0
    final = {n: float(v) for n, v in theta.items()}
    l1, _, mean1 = exact(final, observed)
    l_true, _, mean_true = exact(TRUE, observed)

    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    days = np.arange(1, T + 1)
    a1.plot(days, observed, "ko", label="observed $y_t$")
    a1.plot(days, mean0, "C0--", label=f"E[$I_t$] before (loss {l0:.2f})")
    a1.plot(days, mean1, "C1-", label=f"E[$I_t$] after (loss {l1:.2f})")
    a1.plot(days, mean_true, "C2:", label=f"E[$I_t$] at true rates (loss {l_true:.2f})")
    a1.set(xlabel="day", ylabel="infected", title="SIR calibration (exact means by DP)")
    a1.legend(fontsize=8)
    c = np.array(curve)
    a2.plot(c[:, 0], c[:, 1], "o-")
    a2.axhline(l_true, color="C2", ls=":", label="at the true rates")
    a2.set(xlabel="adam step", ylabel="exact loss L(theta)", title="exact loss (DP)")
    a2.legend(fontsize=8)
    figure(out, "sir_calibration", fig)

    for name, key in zip(estimators, ("sad", "loo", "fd"), strict=False):
        r = report[name]
        res[f"{key}_mean"] = r.mean_flat.tolist()
        res[f"{key}_se"] = r.se_flat.tolist()
    res.update(
        loss_before=l0,
        loss_after=l1,
        loss_true=l_true,
        rates_after=[
            float(np.exp(final["log_beta"])),
            float(1 / (1 + np.exp(-final["logit_gamma"]))),
        ],
        loop_seconds=round(loop_s, 2),
    )
    return res


if __name__ == "__main__":
    run_cli(main, __doc__)
