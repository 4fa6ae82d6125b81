"""Common-random-number finite differences through shape parameters: spread vs step.

Under ``je.finite_difference(common_random_numbers=True)`` every site draws from a sampler
that is continuous in its parameters for a fixed key (``Gamma.icdf`` for the gamma-based
families). For a program continuous in theta at fixed random numbers the per-sample spread
of the difference quotient then stays bounded as ``h -> 0``. This prints, for
``d/da E[X / (1 + X)]`` with ``X ~ Gamma(a, 1)`` at ``a = 2`` and
``d/d(df) E[T^2 / (1 + T^2)]`` with ``T ~ StudentT(df)`` at ``df = 3``, the mean, its standard
error, the per-sample standard deviation and the largest ``|g|`` at each step, next to the
pathwise estimator and the exact value (``scipy.integrate.quad`` in float64), and the
seconds per call (jitted, after compilation) of coupled and independent-key differences.

    python benchmarks/crn_coupling.py [--num-samples N]
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from scipy import integrate, stats

import jaxestim as je
from jaxestim import distributions as D


def _exact(density, g, theta: float, lo: float, eps: float = 1e-4) -> float:
    """Central difference (step ``eps``) of ``E_theta[g(X)]`` by quadrature over ``(lo, inf)``."""

    def value(t: float) -> float:
        return integrate.quad(lambda x: g(x) * density(x, t), lo, np.inf, epsabs=1e-13)[0]

    return (value(theta + eps) - value(theta - eps)) / (2 * eps)


def _row(label: str, s: np.ndarray) -> str:
    se = s.std(ddof=1) / np.sqrt(s.size)
    return (
        f"  {label:<22} mean {s.mean():+.5f} ± {se:.5f}   sd {s.std(ddof=1):7.3f}   "
        f"max|g| {np.abs(s).max():9.1f}"
    )


def _seconds(fn, *args) -> float:
    jax.block_until_ready(fn(*args))  # compile
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=100_000)
    n = parser.parse_args().num_samples
    key = jax.random.key(0)
    cases = [
        (
            "Gamma(a, 1), a = 2: d/da E[X / (1 + X)]",
            lambda k, a: (lambda x: x / (1 + x))(je.sample(k, D.Gamma(a, 1.0))),
            2.0,
            _exact(lambda x, a: stats.gamma.pdf(x, a), lambda x: x / (1 + x), 2.0, 0.0),
        ),
        (
            "StudentT(df), df = 3: d/d(df) E[T^2 / (1 + T^2)]",
            lambda k, df: (lambda x: x**2 / (1 + x**2))(je.sample(k, D.StudentT(df, 0.0, 1.0))),
            3.0,
            _exact(lambda x, df: stats.t.pdf(x, df), lambda x: x**2 / (1 + x**2), 3.0, -np.inf),
        ),
    ]
    for title, f, theta, exact in cases:
        print(f"{title}   (N = {n}, exact {exact:+.5f})")
        for h in (1e-1, 1e-2, 1e-3):
            g = jax.jit(je.grad_samples(f, je.finite_difference(step=h), num_samples=n))
            print(_row(f"FD-CRN h = {h:g}", np.asarray(g(key, theta), np.float64)))
        g = jax.jit(je.grad_samples(f, je.pathwise(), num_samples=n))
        print(_row("pathwise", np.asarray(g(key, theta), np.float64)))
        crn = jax.jit(je.grad(f, je.finite_difference(step=1e-2), num_samples=n))
        ind = jax.jit(
            je.grad(f, je.finite_difference(step=1e-2, common_random_numbers=False), num_samples=n)
        )
        print(
            f"  seconds per call: FD-CRN (coupled) {_seconds(crn, key, theta):.3f}, "
            f"independent keys (rejection sampler) {_seconds(ind, key, theta):.3f}"
        )


if __name__ == "__main__":
    main()
