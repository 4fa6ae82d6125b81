"""A realistic program end to end: an outbreak with a random reproduction number.

Generation ``t + 1`` of a branching process has ``Z_{t+1} ~ Poisson(Z_t G_t)`` cases, where
the generation's reproduction number ``G_t ~ Gamma(k, rate k / R)`` has mean ``R`` and
dispersion ``k`` (small ``k``: occasional superspreading generations). Both ``R`` and the
*shape* ``k`` are calibrated, so the Gamma sites' shape depends on the parameters; the
outbreak dies out in many runs (``Z_t = 0`` makes the Poisson rate exactly 0). The program
uses a ``je.scan`` with bulk per-iteration keys, dict parameters, checked mode and the
user's own ``jax.jit``, and is trained in a jitted optax loop.

Exact reference: given ``Z_t = z``, ``Z_{t+1}`` is negative binomial with ``r = k`` and
``p = b / (b + z)``, ``b = k / R``, so ``E[log1p(Z_T)]`` follows from dynamic programming
over ``z`` (truncated where the remaining mass is below 1e-12) in float64, and its gradient
from central differences of that exact function.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _stats import assert_unbiased
from scipy import stats

import jaxestim as je
from jaxestim import distributions as D

Z0, T, ZMAX = 2, 3, 1200
PARAMS = {"R": 1.2, "k": 3.0}


def outbreak(key, params):
    R, k = params["R"], params["k"]

    def generation(z, _, key):
        k_g, k_z = key.split(2)
        g = je.sample(k_g, D.Gamma(k, k / R))
        return je.sample(k_z, D.Poisson(z * g)), None

    z, _ = je.scan(generation, jnp.asarray(Z0, jnp.float32), None, length=T, key=key)
    return jnp.log1p(z)


def distribution_of_final_size(R: float, k: float) -> np.ndarray:
    """P(Z_T = z), z = 0..ZMAX, by forward dynamic programming in float64."""
    z = np.arange(ZMAX + 1)
    b = k / R
    p = b / (b + z[:, None])  # row z: the negative binomial of the next generation
    trans = stats.nbinom.pmf(z[None, :], k, p)
    trans[0] = 0.0
    trans[0, 0] = 1.0  # extinct stays extinct
    pi = np.zeros(ZMAX + 1)
    pi[Z0] = 1.0
    for _ in range(T):
        pi = pi @ trans
    assert abs(pi.sum() - 1.0) < 1e-10, f"truncation lost mass {1 - pi.sum()}"
    return pi


def exact_value(R: float, k: float) -> float:
    """E[log1p(Z_T)]."""
    return float(np.sum(distribution_of_final_size(R, k) * np.log1p(np.arange(ZMAX + 1))))


def exact_gradient(R: float, k: float, h: float = 1e-5) -> np.ndarray:
    return np.array(
        [
            (exact_value(R + h, k) - exact_value(R - h, k)) / (2 * h),
            (exact_value(R, k + h) - exact_value(R, k - h)) / (2 * h),
        ]
    )


EXACT = exact_gradient(PARAMS["R"], PARAMS["k"])


def test_reference_sanity():
    # E[Z_T] = Z0 R^T (the negative binomial's mean is z R), from the same recursion
    pi = distribution_of_final_size(PARAMS["R"], PARAMS["k"])
    np.testing.assert_allclose(np.sum(pi * np.arange(ZMAX + 1)), Z0 * PARAMS["R"] ** T, rtol=1e-9)
    assert EXACT[0] > 0 and EXACT[1] > 0  # more cases with R; fewer wipe-outs with k


@pytest.mark.parametrize(
    "est, n, se_max",
    [
        # common random numbers: the Gamma shape is coupled continuously, the Poisson by its
        # inverse CDF; per-coordinate SE bounds (R, k), measured SEs 0.029 / 0.0094
        (je.finite_difference(step=1e-2), 40_000, (0.04, 0.013)),
        (je.stochastic_ad(), 40_000, (0.01, 0.0014)),  # measured 0.0071 / 0.00099
        (je.score_function("leave_one_out"), 40_000, (0.022, 0.0032)),  # 0.016 / 0.0022
    ],
    ids=["fd_crn", "stochastic_ad", "loo"],
)
def test_gradient_matches_dynamic_programming(est, n, se_max):
    g = jax.jit(je.grad_samples(outbreak, est, num_samples=n, validate=True))
    samples = g(jax.random.key(3), PARAMS)
    stacked = np.stack([np.asarray(samples["R"]), np.asarray(samples["k"])], axis=1)
    assert_unbiased(stacked, EXACT, se_max=np.asarray(se_max))


def test_checked_mode_names_an_invalid_dispersion():
    g = jax.jit(je.grad(outbreak, je.stochastic_ad(), num_samples=16, validate=True))
    with pytest.raises(Exception, match="Gamma parameter `concentration`"):
        g(jax.random.key(0), {"R": 1.3, "k": -1.0})


def test_calibration_in_a_jitted_optax_loop():
    # fit (R, k) to maximize E[log1p(Z_T)] - 2 (R - 1)^2 - 0.5 (k - 3)^2 (a penalized
    # objective with an interior optimum); the exact objective must improve
    opt = optax.adam(0.05)
    est = je.stochastic_ad()

    def objective(key, params):
        R, k = params["R"], params["k"]
        return -(outbreak(key, params) - 2.0 * (R - 1.0) ** 2 - 0.5 * (k - 3.0) ** 2)

    @jax.jit
    def step(params, state, key):
        g = je.grad(objective, est, num_samples=256)(key, params)
        updates, state = opt.update(g, state, params)
        return optax.apply_updates(params, updates), state

    def exact_objective(p):
        R, k = float(p["R"]), float(p["k"])
        return exact_value(R, k) - 2.0 * (R - 1.0) ** 2 - 0.5 * (k - 3.0) ** 2

    params = {"R": jnp.float32(0.8), "k": jnp.float32(2.5)}
    state = opt.init(params)
    start = exact_objective(params)
    for key in jax.random.split(jax.random.key(7), 40):
        params, state = step(params, state, key)
    assert all(np.isfinite(float(v)) for v in params.values())
    assert exact_objective(params) > start + 0.1, (start, exact_objective(params), params)
