"""Per-sample variances of the Gaussian gradient estimators against exact quad references.

The table of Mohamed, Rosca, Figurnov & Mnih (2020), "Monte Carlo Gradient Estimation in
Machine Learning", JMLR 21, Figures 2-3: ``x ~ N(mu = 1, sigma = 1)``, costs ``(x - k)^2``,
``exp(-k x^2)``, ``cos(k x)``, the per-sample variance of each estimator of d/dmu and
d/dsigma. References by ``scipy.integrate.quad`` in float64 (tests/_variance_reference.py,
independent of jaxestim), checked against the paper's worked example, against closed forms
and against a direct NumPy Monte Carlo implementation of the optimal-baseline and
measure-valued estimators.

Statistical power: an empirical variance of ``N`` samples has relative standard error
``sqrt((m4 / v^2 - 1) / N)`` (``m4`` the 4th central moment). The 3 % tolerance is used for
cells whose exact relative SE at ``N = 10^6`` is at most 0.7 % (>= 4.3 SE); the empirical
relative SE (from the samples' 4th moment) is asserted below 0.75 % there. Twelve cells are
too heavy-tailed for that at ``N = 10^6`` (listed in ``HEAVY_TAILED``; the score function's
``g`` for ``(x - k)^2`` is a degree-3 / degree-4 polynomial of a Gaussian, kurtosis up to
~640; exact relative SE 1.0 % to 2.5 %): they are held to the same 3 % (with the fixed keys
their largest deviation is 1.75 %), which there is fewer than 4.3 standard errors, so a
different key could miss it; the list is asserted to equal the computed set. The NumPy Monte
Carlo cross-check of the references (its own draws) uses 4.3 exact relative SEs there.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _variance_reference import (
    COSTS,
    ESTIMATORS,
    Cost,
    exact_grad,
    mc_samples,
    moments,
    variance,
    variance_rel_se_exact,
)

import jaxestim as je
from jaxestim import distributions as D

N = 10**6
TOL = 0.03  # relative tolerance of an empirical variance where its relative SE <= 0.7 %
REL_SE_MAX = 0.007  # exact relative SE at N above which a cell is "heavy-tailed"
REL_SE_EMP_MAX = 0.0075  # bound on the empirical relative SE (the "~0.7 %" of the design)
Z = TOL / REL_SE_MAX  # ~4.3 standard errors

# (estimator, cost label, coordinate) whose exact relative SE at N = 10^6 exceeds 0.7 %
HEAVY_TAILED = frozenset(
    {
        *(("score", c, "sigma") for c in ("(x + 3)^2", "(x - 0)^2", "(x - 1)^2", "(x - 3)^2")),
        ("score_optimal", "(x - 0)^2", "mu"),
        ("score_optimal", "(x - 1)^2", "mu"),
        *(
            ("score_optimal", c, "sigma")
            for c in (
                "(x + 3)^2",
                "(x - 0)^2",
                "(x - 1)^2",
                "(x - 3)^2",
                "exp(-0.1 x^2)",
                "cos(0.5 x)",
            )
        ),
    }
)

_FAMILY = {"square": 0, "exp": 1, "cos": 2}

# ------------------------------------------------------------------ estimators under test
# (name of the quad reference, estimator factory)
ESTIMATOR_TABLE = [
    pytest.param("score", lambda: je.score_function(), id="score_function"),
    pytest.param("pathwise", lambda: je.pathwise(), id="pathwise"),
    pytest.param(
        "score_optimal", lambda: je.score_function(baseline="optimal"), id="score_optimal"
    ),
    pytest.param("measure_valued", lambda: je.measure_valued(), id="measure_valued"),
]


@functools.cache
def _reference(label: str, estimator: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(exact gradient, exact variance, exact relative SE of the variance at N)."""
    cost = next(c for c in COSTS if c.label == label)
    return (
        exact_grad(cost),
        variance(cost, estimator),
        variance_rel_se_exact(cost, estimator, N),
    )


def _check(
    estimator: str, cost: Cost, samples: np.ndarray, failures: list[str], z_heavy: bool = False
) -> None:
    """Compare the empirical per-sample variance of (mu, sigma) with the quad reference."""
    grad, v_ref, rse_ref = _reference(cost.label, estimator)
    assert samples.shape == (N, 2), (estimator, cost.label, samples.shape)
    mean, v, rse = moments(np.asarray(samples).T)
    assert np.all(np.isfinite(mean)), (estimator, cost.label, mean)
    for j, coord in enumerate(("mu", "sigma")):
        cell = f"{estimator} {cost.label} d/d{coord}: var {v[j]:.5g} vs exact {v_ref[j]:.5g}"
        if v_ref[j] < 1e-12:  # measure-valued d/dmu of (x - 1)^2: f(1 + R) = f(1 - R)
            if v[j] > 1e-8:
                failures.append(cell + " (exact variance 0)")
            continue
        heavy = (estimator, cost.label, coord) in HEAVY_TAILED
        assert heavy == (rse_ref[j] > REL_SE_MAX), (cell, rse_ref[j], "update HEAVY_TAILED")
        # jaxestim's estimators: 3 % in every cell. The NumPy cross-check of the
        # references (z_heavy): 4.3 exact relative SEs in the heavy-tailed cells, where 3 % is
        # fewer than 4.3 standard errors (its own draws are not the fixed-key jaxestim ones)
        tol = Z * rse_ref[j] if (heavy and z_heavy) else TOL
        if not heavy and rse[j] >= REL_SE_EMP_MAX:
            failures.append(f"{cell}: empirical relative SE {rse[j]:.2%} >= {REL_SE_EMP_MAX:.2%}")
        if heavy and rse[j] >= 0.03:
            failures.append(f"{cell}: empirical relative SE {rse[j]:.2%} >= 3 %")
        if abs(v[j] / v_ref[j] - 1.0) >= tol:
            failures.append(f"{cell}: relative error {v[j] / v_ref[j] - 1:+.2%}, tol {tol:.2%}")
    # unbiased too: |mean - exact| < 5 SE (as tests/_stats.assert_unbiased), SE bounded by
    # 1.1 sqrt(exact variance / N)
    se = np.sqrt(v / N)
    assert np.all(se < 1.1 * np.sqrt(v_ref / N) + 1e-9), (estimator, cost.label, se)
    assert np.all(np.abs(mean - grad) < 5 * se + 1e-9), (estimator, cost.label, mean, grad, se)


def test_reference_matches_paper_and_closed_forms():
    """Mohamed et al. (2020), worked example: (x - 3)^2 has score-function variance
    87 / 346 and pathwise 4 / 24 for (mu, sigma) at mu = sigma = 1; the quad gradients equal
    the hand-differentiated closed forms of E[f]; the measure-valued d/dmu of (x - k)^2 is
    4 (1 - k) R / sqrt(2 pi), variance 16 (1 - k)^2 (2 - pi / 2) / (2 pi)."""
    sq3 = Cost("square", 3.0)
    np.testing.assert_allclose(variance(sq3, "score"), [87.0, 346.0], rtol=1e-9)
    np.testing.assert_allclose(variance(sq3, "pathwise"), [4.0, 24.0], rtol=1e-9)
    for c in COSTS:
        np.testing.assert_allclose(exact_grad(c), c.exact_grad_closed_form(), atol=1e-11)
        if c.family == "square":
            v_mu = 16 * (1 - c.k) ** 2 * (2 - np.pi / 2) / (2 * np.pi)
            np.testing.assert_allclose(variance(c, "measure_valued")[0], v_mu, atol=1e-11)
            np.testing.assert_allclose(variance(c, "pathwise")[0], 4.0, rtol=1e-9)
    # the optimal constant baseline never increases the variance
    for c in COSTS:
        assert np.all(variance(c, "score_optimal") <= variance(c, "score") + 1e-12)


@pytest.mark.parametrize("estimator", ["score_optimal", "measure_valued"])
def test_reference_matches_numpy_monte_carlo(estimator):
    """A direct float64 NumPy Monte Carlo implementation of the estimators not yet checked
    against jaxestim on every branch (N = 10^6 per cost, plug-in b* for the optimal
    baseline) agrees with the quad reference. (The score-function and pathwise references
    are also checked by ``test_empirical_variance`` and the paper's closed forms.)"""
    rng = np.random.default_rng(20200601 + ESTIMATORS.index(estimator))
    failures: list[str] = []
    for cost in COSTS:
        _check(estimator, cost, mc_samples(cost, estimator, rng, N), failures, z_heavy=True)
    assert not failures, "\n".join(failures)


def _program(key, theta, family, k):
    """x ~ N(theta[0], theta[1]); the cost f_k of ``family`` (0 square, 1 exp, 2 cos).

    ``family`` and ``k`` are traced but not batched over samples, so ``lax.switch`` stays a
    conditional and only the selected cost is evaluated.
    """
    x = je.sample(key, D.Normal(theta[0], theta[1]))
    costs = (lambda x: (x - k) ** 2, lambda x: jnp.exp(-k * x**2), lambda x: jnp.cos(k * x))
    return jax.lax.switch(family, costs, x)


@pytest.mark.parametrize(("estimator", "factory"), ESTIMATOR_TABLE)
def test_empirical_variance(estimator, factory):
    """N = 10^6 per-sample gradients from ``je.grad_samples`` per cost (one compiled program,
    the cost a traced argument): unbiased, and the per-sample variance matches the quad
    reference within 3 % (see the module docstring for the heavy-tailed cells)."""
    run = jax.jit(je.grad_samples(_program, factory(), num_samples=N))
    theta = jnp.array([1.0, 1.0])
    failures: list[str] = []
    for i, cost in enumerate(COSTS):
        g = run(jax.random.key(i), theta, _FAMILY[cost.family], cost.k)
        _check(estimator, cost, np.asarray(g), failures)
    assert not failures, "\n".join(failures)
