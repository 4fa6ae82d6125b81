"""Exact and empirical per-sample variances of Gaussian gradient estimators.

Usage::

    python benchmarks/variance_table.py [--num-samples N] [--seed S]

The setting of Mohamed, Rosca, Figurnov & Mnih (2020), "Monte Carlo Gradient Estimation in
Machine Learning", JMLR 21, Figures 2-3: ``x ~ N(mu = 1, sigma = 1)`` and the costs
``(x - k)^2`` (k = -3, 0, 1, 3), ``exp(-k x^2)`` (k = 0.1, 1, 10), ``cos(k x)``
(k = 0.5, 1, 2, 5). Prints two Markdown tables of the per-sample variance of the estimate of
d/dmu and d/dsigma (sigma the standard deviation, not log sigma), 3 significant figures:

1. exact, by ``scipy.integrate.quad`` in float64 (tests/_variance_reference.py, independent
   of jaxestim): score function, score function with the optimal per-coordinate constant
   baseline ``b*_j = E[f s_j^2] / E[s_j^2]``, pathwise, measure-valued with coupling;
2. empirical: the sample variance of ``N`` per-sample gradients from
   ``je.grad_samples(f, estimator, num_samples=N)`` for each of those estimators that this
   jaxestim has (``je.score_function()``, ``je.score_function(baseline="optimal")`` (its
   leave-one-out estimate of b*), ``je.pathwise()``, ``je.measure_valued()``), and the
   largest relative deviation from the exact table per estimator.

tests/test_variance_table.py asserts the agreement (3 % where the empirical variance's
relative standard error is <= 0.7 % at N = 10^6).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))
sys.path.insert(1, str(_HERE.parent))
sys.path.insert(2, str(_HERE.parent / "tests"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _common import md_table  # noqa: E402
from _variance_reference import COSTS, ESTIMATORS, moments, variance  # noqa: E402

import jaxestim as je  # noqa: E402
from jaxestim import distributions as D  # noqa: E402

TITLES = {
    "score": "score function",
    "score_optimal": "score fn. + b*",
    "pathwise": "pathwise",
    "measure_valued": "measure-valued",
}
_FAMILY = {"square": 0, "exp": 1, "cos": 2}


def available_estimators() -> dict[str, je.Estimator]:
    """The jaxestim estimators of the table that this version of jaxestim has."""
    out: dict[str, je.Estimator] = {"score": je.score_function()}
    try:
        out["score_optimal"] = je.score_function(baseline="optimal")
    except ValueError:  # this jaxestim has no optimal baseline
        pass
    out["pathwise"] = je.pathwise()
    if hasattr(je, "measure_valued"):
        out["measure_valued"] = je.measure_valued()
    return out


def program(key, theta, family, k):
    """x ~ N(theta[0], theta[1]); cost 0: (x - k)^2, 1: exp(-k x^2), 2: cos(k x)."""
    x = je.sample(key, D.Normal(theta[0], theta[1]))
    costs = (lambda x: (x - k) ** 2, lambda x: jnp.exp(-k * x**2), lambda x: jnp.cos(k * x))
    return jax.lax.switch(family, costs, x)


def header() -> list[str]:
    return ["cost", *(f"{TITLES[e]} ∂{c}" for e in ESTIMATORS for c in ("μ", "σ"))]


def fmt3(x: float) -> str:
    """3 significant figures without exponent notation (1546 -> 1550, 4 -> 4.00, 0.002509 ->
    0.00251); exact zeros (rounding: ~1e-32 in quad, ~1e-14 in float32) print as 0."""
    if abs(x) < 1e-12:
        return "0"
    r = float(f"{x:.3g}")
    return f"{r:.0f}" if abs(r) >= 100 else f"{r:#.3g}"


def exact_table() -> dict[tuple[str, str], np.ndarray]:
    return {(c.label, e): variance(c, e) for c in COSTS for e in ESTIMATORS}


def empirical_table(n: int, seed: int) -> dict[tuple[str, str], np.ndarray]:
    theta = jnp.array([1.0, 1.0])
    out = {}
    for name, est in available_estimators().items():
        run = jax.jit(je.grad_samples(program, est, num_samples=n))
        for i, c in enumerate(COSTS):
            g = run(jax.random.key(seed + i), theta, _FAMILY[c.family], c.k)
            out[(c.label, name)] = moments(np.asarray(g).T)[1]
    return out


def markdown(values: dict[tuple[str, str], np.ndarray]) -> str:
    rows = []
    for c in COSTS:
        row = [f"`{c.label}`"]
        for e in ESTIMATORS:
            v = values.get((c.label, e))
            row += ["–"] * 2 if v is None else [fmt3(x) for x in v]
        rows.append(row)
    return md_table(header(), rows)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-samples", type=int, default=10**6)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    exact = exact_table()
    print("### Exact per-sample variance (scipy.integrate.quad, float64)\n")
    print(markdown(exact))
    emp = empirical_table(args.num_samples, args.seed)
    print(
        f"\n### Empirical per-sample variance, jaxestim, N = {args.num_samples} "
        f"(float32, keys jax.random.key({args.seed} + cost index))\n"
    )
    print(markdown(emp))
    print()
    for name in available_estimators():
        dev = [
            abs(emp[(c.label, name)][j] / exact[(c.label, name)][j] - 1.0)
            for c in COSTS
            for j in range(2)
            if exact[(c.label, name)][j] > 1e-12
        ]
        print(f"* `{name}`: largest relative deviation from the exact table {max(dev):.2%}")
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
