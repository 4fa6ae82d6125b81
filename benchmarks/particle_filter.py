"""Particle-filter gradients: a Categorical resampling site vs je.resample / je.new_weight.

The setting of StochasticAD.jl's particle-filter tutorial (docs/src/tutorials/
particle_filter.md in gaurav-arya/StochasticAD.jl), as far as it can be reproduced: a
2-D linear-Gaussian state-space model ::

    x_1 ~ N(x0, 0.001 I),  x_t = Φ x_{t-1} + N(0, 0.02 I),  y_t = x_t + N(0, 0.01 I),

T = 20 observations simulated at Φ = exp(0.3 (M - Mᵀ) / 2) (a rotation, M a random 2×2
matrix), θ = vec(Φ); a bootstrap filter with m = 1,000 particles that resamples after
weighting at t = 2..T-1; the derivative of log Ẑ with respect to θ₁ = Φ₁₁ (the quantity
whose distribution the tutorial plots; the other entries of Φ are held at their values).
Our random numbers differ from the tutorial's (different data and x0), so figures agree
in size, not digit for digit.

Rows (per-run std of the ∂θ₁ log Ẑ estimate, one filter run per estimate):

* ``Categorical site``: ancestors ``je.sample(k, Categorical(logits=log w), (m,))`` under
  ``je.stochastic_ad()`` (what jaxestim offered before ``je.resample``). Unbiased for
  ``∇E[log Ẑ]``, but a jump moves a resampled index to the adjacent particle in array
  order, an unrelated particle, at a total rate of order m² per run.
* ``je.resample``: ancestors drawn without derivative, likelihood ratio in the weights
  (``je.new_log_weight``); reparameterized moves under ``je.pathwise()`` (and under
  ``je.stochastic_ad()``, which has no discrete site left to jump). Differentiating log Ẑ
  gives ∇Ẑ/Ẑ, the ratio estimator the tutorial uses: consistent, with O(1/m) bias.
* ``stop-gradient``: ``je.resample``'s indices with weights S/m that carry no likelihood
  ratio (the tutorial's ``use_new_weight=false``): low variance, biased.
* Kalman: the exact ∂θ₁ log Z (float64, jax.grad through the Kalman filter).

Run: ``python benchmarks/particle_filter.py`` (prints a Markdown table; ``--quick`` for a
smoke-sized run).
"""

from __future__ import annotations

import argparse
import math
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxestim as je
from jaxestim import distributions as D

D_STATE, R_VAR, Q_VAR, S0_VAR, C = 2, 0.01, 0.02, 0.001, 0.3


def make_model(seed: int = 423897, T: int = 20):
    """Φ (rotation), x0 and the observations ys (numpy float64)."""
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(D_STATE, D_STATE))
    A = C * (M - M.T) / 2
    w, V = np.linalg.eig(A)
    phi = np.real(V @ np.diag(np.exp(w)) @ np.linalg.inv(V))
    x0 = rng.normal(size=D_STATE)
    x = x0 + math.sqrt(S0_VAR) * rng.normal(size=D_STATE)
    ys = []
    for t in range(T):
        if t:
            x = phi @ x + math.sqrt(Q_VAR) * rng.normal(size=D_STATE)
        ys.append(x + math.sqrt(R_VAR) * rng.normal(size=D_STATE))
    return phi, x0, np.array(ys)


def kalman_log_z(phi, x0, ys):
    """Exact log p(y_1..y_T) (Kalman filter, differentiable in phi)."""
    d = D_STATE
    eye = jnp.eye(d, dtype=ys.dtype)
    m, P, ll = jnp.asarray(x0, ys.dtype), S0_VAR * eye, 0.0
    for t in range(ys.shape[0]):
        if t:
            m, P = phi @ m, phi @ P @ phi.T + Q_VAR * eye
        S = P + R_VAR * eye
        res = ys[t] - m
        sol = jnp.linalg.solve(S, res)
        ll = ll - 0.5 * (jnp.linalg.slogdet(2 * jnp.pi * S)[1] + res @ sol)
        K = P @ jnp.linalg.inv(S)
        m, P = m + K @ res, (eye - K) @ P
    return ll


def make_filter(phi, x0, ys, m: int, mode: str, method: str = "stratified"):
    """``f(key, theta1) -> log Z_hat``; ``mode`` in {"site", "new_weight", "stop_gradient"}."""
    phi = jnp.asarray(phi, jnp.float32)
    x0 = jnp.asarray(x0, jnp.float32)
    ys = jnp.asarray(ys, jnp.float32)
    T = ys.shape[0]
    log_norm = -0.5 * D_STATE * math.log(2 * math.pi * R_VAR)

    def log_g(y, x):
        return log_norm - 0.5 * jnp.sum((y - x) ** 2, -1) / R_VAR

    def resample(key, lw, now):
        if mode == "site":  # masked when not resampling: no jumps at a step that is unused
            mask = jnp.broadcast_to(now, (m,))
            idx = je.sample(key, D.Categorical(logits=lw), (m,), mask=mask)
            return idx, jnp.full((m,), jax.nn.logsumexp(lw) - math.log(m))
        idx, new = je.resample(key, lw, method=method)
        if mode == "stop_gradient":
            new = jnp.full((m,), jax.nn.logsumexp(lw) - math.log(m))
        return idx, new

    def pf(key, theta1):
        Phi = phi.at[0, 0].set(theta1)
        k0, kl = jax.random.split(key)
        x = je.sample(k0, D.Normal(jnp.broadcast_to(x0, (m, D_STATE)), math.sqrt(S0_VAR)))
        lw = log_g(ys[0], x) - math.log(m)

        def step(carry, xs):
            x, lw = carry
            k, y, resample_now = xs
            kr, kt = jax.random.split(k)
            idx, new = resample(kr, lw, resample_now)
            x = jnp.where(resample_now, x[idx], x)
            lw = jnp.where(resample_now, new, lw)
            x = je.sample(kt, D.Normal(x @ Phi.T, math.sqrt(Q_VAR)))
            return (x, lw + log_g(y, x)), None

        # step t (1-based, t = 2..T) first resamples the weights of t - 1 if 2 <= t - 1 <= T - 1
        now = jnp.arange(2, T + 1) - 1 >= 2
        (x, lw), _ = je.scan(step, (x, lw), (jax.random.split(kl, T - 1), ys[1:], now))
        return jax.nn.logsumexp(lw)

    return pf


def run_row(f, est, theta1, runs: int, chunk: int | None, seed: int):
    """Per-run estimates, compile time and time per run (one compiled batch of ``runs``)."""
    key = jax.random.key(seed)
    g = jax.jit(je.grad_samples(f, est, num_samples=runs, chunk_size=chunk))
    t0 = time.perf_counter()
    compiled = g.lower(key, theta1).compile()
    t1 = time.perf_counter()
    out = np.asarray(jax.block_until_ready(compiled(key, theta1)), np.float64)
    t2 = time.perf_counter()
    return out, t1 - t0, (t2 - t1) / runs


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke-test sizes")
    ap.add_argument("--particles", type=int, default=None)
    ap.add_argument("--runs", type=int, default=None)
    args = ap.parse_args(argv)
    m = args.particles or (32 if args.quick else 1000)
    T = 6 if args.quick else 20
    runs = args.runs or (4 if args.quick else 200)
    site_runs = args.runs or (4 if args.quick else 100)

    phi, x0, ys = make_model(T=T)
    with jax.enable_x64(True):
        g_exact = jax.grad(
            lambda p: kalman_log_z(jnp.asarray(phi).at[0, 0].set(p), x0, jnp.asarray(ys))
        )(float(phi[0, 0]))
        exact = float(g_exact)
    theta1 = jnp.float32(phi[0, 0])

    rows = [
        ("Categorical site", "stochastic_ad", "site", "-", je.stochastic_ad(), site_runs, 1),
        (
            "je.resample + new_weight",
            "pathwise",
            "new_weight",
            "multinomial",
            je.pathwise(),
            runs,
            None,
        ),
        (
            "je.resample + new_weight",
            "pathwise",
            "new_weight",
            "stratified",
            je.pathwise(),
            runs,
            None,
        ),
    ]
    if args.quick:
        del rows[1]
    else:
        rows += [
            (
                "je.resample + new_weight",
                "stochastic_ad",
                "new_weight",
                "stratified",
                je.stochastic_ad(),
                runs,
                None,
            ),
            (
                "stop-gradient (no new_weight)",
                "pathwise",
                "stop_gradient",
                "stratified",
                je.pathwise(),
                runs,
                None,
            ),
        ]
    table = []
    for name, est_name, mode, method, est, n, chunk in rows:
        f = make_filter(phi, x0, ys, m, mode, method if method != "-" else "stratified")
        g, first, per_run = run_row(f, est, theta1, n, chunk, seed=11)
        mean, std = g.mean(), g.std(ddof=1)
        se = std / math.sqrt(n)
        q1, q3 = np.percentile(g, [25, 75])
        table.append(
            (
                name,
                est_name,
                method,
                n,
                f"{mean:.3f}",
                f"{std:.3g}",
                f"{(q3 - q1) / 1.349:.3g}",
                f"{abs(mean - exact) / se:.1f}",
                f"{per_run * 1e3:.1f} ms",
                f"{first:.1f} s",
            )
        )
    print(f"Particle filter, d = 2, T = {T}, m = {m} particles; ∂/∂θ₁ log Ẑ at θ = vec(Φ)")
    print(f"(jax {jax.__version__}, {platform.machine()}, {jax.devices()[0].platform}).\n")
    print(
        "| resampling | estimator | scheme | runs | mean | std per run | IQR / 1.349 "
        "| |mean − exact| / SE "
        "| time per run | compile |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in table:
        print("| " + " | ".join(str(c) for c in r) + " |")
    print(f"| Kalman filter (exact) | - | - | - | {exact:.3f} | 0 | 0 | - | - | - |")


if __name__ == "__main__":
    main()
