"""A bootstrap particle filter with differentiable resampling, against the Kalman filter.

Model. A linear-Gaussian state-space model (an AR(1) state observed in noise)::

    x_1 ~ N(0, 1),   x_t = a x_{t-1} + N(0, Q),   y_t = x_t + N(0, R),   t = 1..T,

with ``Q = 0.25``, ``R = 1``, ``T = 10`` observations simulated at ``a = 0.8``. The
parameter is the autoregression coefficient ``a``, differentiated at ``a = 0.7``.

What is differentiated. A bootstrap filter with ``m`` particles (moves reparameterized:
``x_t = a x_{t-1} + sqrt(Q) eps``; resampling at every step, stratified) estimates the
likelihood ``Z(a) = p(y_1..y_T; a)`` by ``Z-hat = exp(logsumexp(final log-weights))``. Its
resampling draws indices, which carry no derivative; ``je.resample`` draws them without one
and puts the likelihood ratio of the draw into the offspring's weight
(``je.new_log_weight``, value 0, derivative ``grad log w-bar``), which makes ``Z-hat``
*unbiased as a function of a*: ``E[grad Z-hat] = grad Z`` (Scibior & Wood 2021; the
particle-filter tutorial of StochasticAD.jl). Three gradients are compared, each under
``je.pathwise()`` (``je.stochastic_ad()`` gives the same numbers here: no discrete site
is left):

* ``grad log Z-hat`` with ``je.resample`` (``new_weight``): the ratio ``grad Z-hat / Z-hat``.
  It is **consistent, not unbiased**: its bias is O(1/m), so the mean over many runs
  approaches ``grad log Z`` as the number of particles ``m`` grows;
* ``grad (Z-hat / Z_ref)`` with ``je.resample`` and a constant ``Z_ref = Z(a)`` (from the
  Kalman filter, no derivative): linear in the weights, hence **unbiased** for
  ``grad Z / Z = grad log Z`` at every ``m``;
* ``grad log Z-hat`` with stop-gradient resampling (offspring weights ``S / m`` without the
  likelihood-ratio term, what one gets by differentiating the ordinary filter): low
  variance and **biased**; its bias does not go away as ``m`` grows.

Exact reference. ``d/da log Z(a)`` by ``jax.grad`` through the Kalman filter's
prediction-error decomposition of ``log Z`` in float64 (independent of the particle filter).

At each ``m`` the three gradients are computed in one compiled program, each filter from its
own random numbers (the key folded with the filter's index: two sample sites never share a
key). Once the O(1/m) bias of the ratio
estimator falls below the standard error (about ``m = 64`` here), ``|mean - exact|`` stops
decreasing: it is then noise.

Figure: histograms of the per-run estimates at the largest ``m`` against the Kalman value,
and ``|mean - exact|`` against ``m`` (log-log, with the O(1/m) slope).
"""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from _common import figure, progress, run_cli

import jaxestim as je
from jaxestim import distributions as D

T, Q, R, A_TRUE, A0 = 10, 0.25, 1.0, 0.8, 0.7


def simulate(seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x, ys = rng.normal(), []
    for t in range(T):
        if t:
            x = A_TRUE * x + math.sqrt(Q) * rng.normal()
        ys.append(x + math.sqrt(R) * rng.normal())
    return np.array(ys)


def kalman_log_z(a, ys):
    """Exact log p(y_1..y_T; a): the Kalman filter's prediction-error decomposition."""
    m, P, ll = 0.0, 1.0, 0.0
    for t in range(ys.shape[0]):
        if t:
            m, P = a * m, a * a * P + Q
        S = P + R
        ll = ll - 0.5 * (jnp.log(2 * jnp.pi * S) + (ys[t] - m) ** 2 / S)
        K = P / S
        m, P = m + K * (ys[t] - m), (1 - K) * P
    return ll


def make_filter(ys, m: int, mode: str, log_z_ref: float = 0.0):
    """``f(key, a)``: log Z-hat (``mode`` "new_weight" / "stop_gradient") or Z-hat / Z_ref
    (``mode`` "unbiased")."""
    ys = jnp.asarray(ys, jnp.float32)

    def log_g(y, x):
        return -0.5 * (math.log(2 * math.pi * R) + (y - x) ** 2 / R)

    def pf(key, a):
        k0, kl = jax.random.split(key)
        x = je.sample(k0, D.Normal(jnp.zeros(m), 1.0))
        lw = log_g(ys[0], x) - math.log(m)

        def step(carry, xs):
            x, lw = carry
            k, y = xs
            kr, kt = jax.random.split(k)
            idx, new = je.resample(kr, lw, method="stratified")
            if mode == "stop_gradient":
                new = jnp.full((m,), jax.nn.logsumexp(lw) - math.log(m))
            x = je.sample(kt, D.Normal(a * x[idx], math.sqrt(Q)))
            return (x, new + log_g(y, x)), None

        (x, lw), _ = je.scan(step, (x, lw), (jax.random.split(kl, T - 1), ys[1:]))
        log_z = jax.nn.logsumexp(lw)
        return jnp.exp(log_z - log_z_ref) if mode == "unbiased" else log_z

    return pf


MODES = {
    "new_weight": "grad log Z-hat, je.resample (ratio: consistent)",
    "unbiased": "grad Z-hat/Z_ref, je.resample (unbiased)",
    "stop_gradient": "grad log Z-hat, stop-gradient resampling (biased)",
}


def main(fast: bool, out: Path) -> dict:
    ys = simulate()
    with jax.enable_x64(True):
        ys64 = jnp.asarray(ys, jnp.float64)
        log_z, exact = jax.value_and_grad(kalman_log_z)(jnp.float64(A0), ys64)
        log_z, exact = float(log_z), float(exact)
    print(f"Kalman: log Z = {log_z:.4f}, d/da log Z = {exact:.4f} at a = {A0}")
    ms = [4, 16, 64] if fast else [4, 16, 64, 256, 1024]
    runs = 2000 if fast else 20_000
    a = jnp.float32(A0)
    stats: dict[str, dict[int, tuple[float, float]]] = {k: {} for k in MODES}
    last: dict[str, np.ndarray] = {}
    for m in progress(ms, len(ms), "filters"):
        # the three filters in one program, one parameter copy and one key each: the
        # gradient in copy j is filter j's (one compiled program per m)
        filters = [make_filter(ys, m, mode, log_z) for mode in MODES]

        def three(key, copies, filters=filters):
            return sum(
                f(jax.random.fold_in(key, j), c)
                for j, (f, c) in enumerate(zip(filters, copies, strict=True))
            )

        g = jax.jit(je.grad_samples(three, je.pathwise(), num_samples=runs, chunk_size=4000))
        samples = g(jax.random.key(m), (a, a, a))
        for mode, s in zip(MODES, samples, strict=True):
            s = np.asarray(s, np.float64)
            stats[mode][m] = (float(s.mean()), float(s.std(ddof=1) / math.sqrt(runs)))
            if m == ms[-1]:
                last[mode] = s
    # je.compare at the largest m: pathwise vs stochastic_ad on the ratio estimator
    report = je.compare(
        make_filter(ys, ms[-1], "new_weight"),
        a,
        {"pathwise": je.pathwise(), "stochastic_ad": je.stochastic_ad()},
        key=jax.random.key(1),
        num_samples=runs,
        exact=exact,
        chunk_size=4000,
        repeats=1,
        title=f"d/da log Z-hat, m = {ms[-1]} (ratio estimator: O(1/m) bias)",
    )
    print(report)
    for mode, label in MODES.items():
        print(label)
        for m in ms:
            mean, se = stats[mode][m]
            print(
                f"  m = {m:5d}: mean {mean:9.4f} ± {se:.4f}  (mean - exact = {mean - exact:+.4f})"
            )

    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    lo, hi = np.percentile(np.concatenate(list(last.values())), [0.5, 99.5])
    for i, (mode, s) in enumerate(last.items()):
        a1.hist(
            s,
            bins=60,
            range=(lo, hi),
            density=True,
            alpha=0.45,
            color=f"C{i}",
            label=f"{MODES[mode]}: {s.mean():.3f}",
        )
    a1.axvline(exact, color="k", ls="--", label=f"Kalman (exact) {exact:.3f}")
    a1.set(
        xlabel="per-run estimate of d/da log Z",
        ylabel="density",
        title=f"m = {ms[-1]} particles, {runs} runs",
    )
    a1.legend(fontsize=7)
    for i, mode in enumerate(MODES):
        bias = [abs(stats[mode][m][0] - exact) for m in ms]
        se = [stats[mode][m][1] for m in ms]
        a2.errorbar(ms, bias, yerr=se, fmt="o-", color=f"C{i}", label=MODES[mode], capsize=3)
    ref = abs(stats["new_weight"][ms[0]][0] - exact)
    a2.plot(ms, [ref * ms[0] / m for m in ms], "k:", label="O(1/m)")
    a2.set(
        xscale="log",
        yscale="log",
        xlabel="particles m",
        ylabel="|mean - exact|",
        title="bias against the number of particles",
    )
    a2.set_xticks(ms, [str(m) for m in ms])
    a2.minorticks_off()
    a2.legend(fontsize=7)
    figure(out, "particle_filter", fig)

    res = {"exact": exact, "log_z": log_z, "particles": ms}
    for mode in MODES:
        res[f"{mode}_mean"] = [stats[mode][m][0] for m in ms]
        res[f"{mode}_se"] = [stats[mode][m][1] for m in ms]
    for name in ("pathwise", "stochastic_ad"):
        res[f"compare_{name}_mean"] = float(report[name].mean_flat[0])
        res[f"compare_{name}_se"] = float(report[name].se_flat[0])
    return res


if __name__ == "__main__":
    run_cli(main, __doc__)
