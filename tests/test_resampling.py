"""Differentiable resampling: je.new_weight / je.new_log_weight / je.resample.

The particle-filter tests run a bootstrap filter on a 1-D linear-Gaussian state-space model
and compare the mean gradient of its likelihood estimate with the Kalman filter's exact
gradient (float64, differentiated with jax.grad).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _stats import assert_unbiased, mean_se

import jaxestim as je
from jaxestim import distributions as D

KEY = jax.random.key(7)
METHODS = ("multinomial", "stratified", "systematic")

# --------------------------------------------------------------------------------------
# new_weight / new_log_weight
# --------------------------------------------------------------------------------------


def test_new_weight_value_is_one_and_derivative_is_likelihood_ratio():
    theta = jnp.array([0.3, 0.7, 2.0, 1e-3])
    p = lambda t: jnp.array([t[0] ** 2, jnp.sin(t[1]), t[2] / 4, t[3]])
    w = je.new_weight(p(theta))
    assert w.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(w), 1.0)  # exactly 1
    jac = jax.jit(jax.jacrev(lambda t: je.new_weight(p(t))))(theta)
    expected = jnp.diag(jnp.diag(jax.jacrev(p)(theta)) / p(theta))
    np.testing.assert_allclose(jac, expected, rtol=1e-6)
    lw = je.new_log_weight(jnp.log(p(theta)))
    np.testing.assert_array_equal(np.asarray(lw), 0.0)  # exactly 0
    jac_log = jax.jit(jax.jacfwd(lambda t: je.new_log_weight(jnp.log(p(t)))))(theta)
    np.testing.assert_allclose(jac_log, expected, rtol=1e-5)
    # integer input is promoted; the value is still 1
    assert float(je.new_weight(3)) == 1.0


def test_new_weight_at_zero_probability_is_one_with_zero_derivative():
    # evaluating for every candidate and selecting afterwards must stay NaN-free
    def f(t):
        p = jnp.array([0.0 * t, t, 1 - t])  # the first outcome cannot occur
        w = je.new_weight(p)
        return jnp.sum(jnp.where(jnp.array([False, True, False]), w, 0.0) * 5.0)

    assert float(f(0.25)) == 5.0
    np.testing.assert_allclose(jax.grad(f)(0.25), 5.0 / 0.25, rtol=1e-6)
    g0 = jax.grad(lambda t: je.new_weight(0.0 * t))(0.5)
    assert float(je.new_weight(0.0)) == 1.0 and float(g0) == 0.0
    assert float(je.new_log_weight(-jnp.inf)) == 0.0
    hard_zero = lambda t: je.new_log_weight(jnp.where(t > 0, -jnp.inf, t))  # a constraint
    assert float(jax.grad(hard_zero)(0.5)) == 0.0
    # not probabilities: NaN, never a silent 1
    for bad in (-0.1, jnp.inf, jnp.nan):
        assert np.isnan(float(je.new_weight(bad)))
    for bad in (jnp.inf, jnp.nan):
        assert np.isnan(float(je.new_log_weight(bad)))
    with pytest.raises(TypeError, match="real"):
        je.new_weight(jnp.array([1 + 1j]))


def test_new_weight_under_jit_and_vmap():
    def g(t):
        return jax.grad(lambda s: 3.0 * je.new_weight(s**2) + je.new_log_weight(jnp.log(s)))(t)

    ts = jnp.array([0.2, 0.5, 1.5])
    expected = 3.0 * 2 / ts + 1 / ts
    np.testing.assert_allclose(jax.jit(jax.vmap(g))(ts), expected, rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(jax.jit(g))(ts), expected, rtol=1e-6)


# --------------------------------------------------------------------------------------
# resample: contract
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_resample_contract_and_one_step_identity(method):
    """Shapes, values S / M, zero weights never chosen, and
    E_a[grad sum_i w'_i h(x_{a_i})] = grad sum_j w_j h(x_j): the identity the derivation uses."""
    h = jnp.array([1.0, -2.0, 0.5, 3.0, 7.0])
    base = jnp.log(jnp.array([0.2, 0.0, 0.3, 0.5, 0.0])) + 2.0  # particles 1 and 4: weight 0

    def lw_of(t):
        return base + jnp.array([t, 0.0, 2 * t, -t, 1.0])

    def est(k, t):
        idx, new = je.resample(k, lw_of(t), 7, method=method)
        return jnp.sum(jnp.exp(new) * h[idx]), (idx, new)

    keys = jax.random.split(KEY, 20_000)
    run = jax.jit(jax.vmap(jax.value_and_grad(est, argnums=1, has_aux=True), (0, None)))
    (vals, (idx, new)), grads = run(keys, 0.3)
    assert idx.shape == (20_000, 7) and idx.dtype == jnp.int32 and new.shape == (20_000, 7)
    idx = np.asarray(idx)
    assert not np.isin(idx, [1, 4]).any()  # zero-weight particles are never chosen
    total = float(jax.nn.logsumexp(lw_of(0.3)))
    np.testing.assert_allclose(new, total - math.log(7), rtol=1e-6)  # every weight is S / M
    w_bar = np.asarray(jax.nn.softmax(lw_of(0.3)))
    counts = np.stack([(idx == j).sum(1) for j in range(5)], 1)
    assert_unbiased(counts, 7 * w_bar, se_max=0.02)  # expected offspring M w_j
    if method == "systematic":  # within one of M w_j
        assert np.all(np.abs(counts - 7 * w_bar) < 1 + 1e-5)
    exact_value = float(jnp.sum(jnp.exp(lw_of(0.3)) * h))
    exact = float(jax.grad(lambda t: jnp.sum(jnp.exp(lw_of(t)) * h))(0.3))
    assert_unbiased(vals, exact_value, se_max=0.05 * abs(exact_value))
    assert_unbiased(grads, exact, se_max=0.05 * abs(exact))


def test_resample_all_zero_weights_and_invalid_inputs():
    lw = jnp.full(4, -jnp.inf)
    for method in METHODS:
        idx, new = jax.jit(lambda v, m=method: je.resample(KEY, v, method=m))(lw)
        np.testing.assert_array_equal(idx, np.arange(4))
        assert np.all(np.asarray(new) == -np.inf)
    g = jax.jit(jax.grad(lambda v: jnp.sum(jnp.exp(je.resample(KEY, v)[1]))))(lw)
    np.testing.assert_array_equal(g, 0.0)
    _, new = je.resample(KEY, jnp.array([0.0, jnp.nan, 1.0]))
    assert np.all(np.isnan(np.asarray(new)))
    with pytest.raises(ValueError, match="method"):
        je.resample(KEY, jnp.zeros(3), method="residual")
    with pytest.raises(ValueError, match=r"shape \(N,\)"):
        je.resample(KEY, jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="positive int"):
        je.resample(KEY, jnp.zeros(3), num=0)


def _bernoulli_particles(key, theta):
    """3 particles x_i ~ Bernoulli(theta) (sites), weights exp((1 + theta) x_i), resample,
    f = sum_i w'_i h(x_{a_i}) with h(x) = 1 + 2x: E[f] = E[w(x) h(x)]."""
    k1, k2 = jax.random.split(key)
    x = je.sample(k1, D.Bernoulli(probs=theta), 3)
    lw = (1.0 + theta) * x - math.log(3)
    idx, new = je.resample(k2, lw, method="systematic")
    return jnp.sum(jnp.exp(new) * (1.0 + 2.0 * x[idx]))


def _bernoulli_exact(theta):
    return (1 - theta) + theta * jnp.exp(1.0 + theta) * 3.0


def test_resample_with_discrete_sites_under_stochastic_ad():
    """Discrete sites upstream of the resampling: stochastic_ad's replay runs a jumped
    Bernoulli and resamples at the jumped weights; the JVP run carries new_weight's ratio."""
    est = je.stochastic_ad()
    g = je.grad_samples(_bernoulli_particles, est, num_samples=20_000)(KEY, 0.4)
    exact = float(jax.grad(_bernoulli_exact)(0.4))
    assert_unbiased(g, exact, se_max=0.05 * exact)


# --------------------------------------------------------------------------------------
# particle filter on a linear-Gaussian state-space model vs the Kalman filter
# --------------------------------------------------------------------------------------
# x_1 ~ N(0, S0^2), x_t = a x_{t-1} + Q eps_t, y_t = x_t + r nu_t; theta = (a, r).

T, Q, S0 = 12, 0.5, 1.0
THETA_TRUE = (0.8, 0.6)  # generates the data
THETA = np.array([0.5, 0.9])  # where the gradient is evaluated (large in both coordinates)
PARTICLES = 64


def _simulate() -> np.ndarray:
    rng = np.random.default_rng(0)
    a, r = THETA_TRUE
    x, ys = rng.normal() * S0, []
    for t in range(T):
        if t:
            x = a * x + Q * rng.normal()
        ys.append(x + r * rng.normal())
    return np.array(ys)


YS = _simulate()


def kalman_log_z(theta, ys):
    """Exact log p(y_1..y_T | theta) (Kalman filter; differentiable)."""
    a, r = theta[0], theta[1]
    m, p, ll = 0.0, S0**2, 0.0
    for t in range(ys.shape[0]):
        if t:
            m, p = a * m, a * a * p + Q**2
        s = p + r * r
        ll = ll - 0.5 * (jnp.log(2 * jnp.pi * s) + (ys[t] - m) ** 2 / s)
        k = p / s
        m, p = m + k * (ys[t] - m), (1 - k) * p
    return ll


with jax.enable_x64(True):
    _th64 = jnp.asarray(THETA, jnp.float64)
    _ys64 = jnp.asarray(YS, jnp.float64)
    LOG_Z = float(kalman_log_z(_th64, _ys64))
    GRAD_LOG_Z = np.asarray(jax.grad(kalman_log_z)(_th64, _ys64))

    def _central_difference(h):
        """(Z(theta + h e_i) - Z(theta - h e_i)) / (2 h Z(theta)), what FD estimates."""
        out = []
        for i in range(2):
            e = np.zeros(2)
            e[i] = h
            up = float(kalman_log_z(jnp.asarray(THETA + e), _ys64)) - LOG_Z
            down = float(kalman_log_z(jnp.asarray(THETA - e), _ys64)) - LOG_Z
            out.append((math.exp(up) - math.exp(down)) / (2 * h))
        return np.array(out)

    FD_STEP = 0.05
    FD_EXACT = _central_difference(FD_STEP)


def _log_g(y, x, r):
    return -0.5 * ((y - x) / r) ** 2 - jnp.log(r) - 0.5 * math.log(2 * math.pi)


def make_filter(method):
    ys = jnp.asarray(YS, jnp.float32)

    def pf(key, theta):
        """Bootstrap filter; returns Z_hat / Z(THETA), linear in the weights."""
        a, r = theta[0], theta[1]
        k0, kl = jax.random.split(key)
        x = je.sample(k0, D.Normal(jnp.zeros(PARTICLES), S0))
        lw = _log_g(ys[0], x, r) - math.log(PARTICLES)

        def step(carry, xs):
            x, lw = carry
            k, y = xs
            kr, kt = jax.random.split(k)
            idx, lw = je.resample(kr, lw, method=method)
            x = je.sample(kt, D.Normal(a * x[idx], Q))  # reparameterized move
            return (x, lw + _log_g(y, x, r)), None

        (x, lw), _ = je.scan(step, (x, lw), (jax.random.split(kl, T - 1), ys[1:]))
        return jnp.exp(jax.nn.logsumexp(lw) - LOG_Z)

    return pf


@pytest.mark.parametrize(
    "est, method",
    [(je.pathwise(), "multinomial"), (je.stochastic_ad(), "systematic")],
    ids=["pathwise-multinomial", "stochastic_ad-systematic"],
)
def test_particle_filter_gradient_matches_kalman(est, method):
    """E[grad Z_hat] / Z = grad log Z (exact, Kalman), within 5 SE; SE < 5% of |grad|."""
    g = jax.jit(je.grad_samples(make_filter(method), est, num_samples=500))(
        KEY, jnp.asarray(THETA, jnp.float32)
    )
    assert_unbiased(g, GRAD_LOG_Z, se_max=0.05 * np.abs(GRAD_LOG_Z))


def test_particle_filter_under_finite_differences_matches_kalman():
    """FD differentiates the ordinary filter, whose E[Z_hat(theta +- h)] = Z(theta +- h):
    new_weight's invisible derivative is not needed (no error, no bias beyond O(h^2),
    compared here with the exact central difference of the Kalman likelihood)."""
    est = je.finite_difference(FD_STEP)
    g = jax.jit(je.grad_samples(make_filter("stratified"), est, num_samples=500))(
        KEY, jnp.asarray(THETA, jnp.float32)
    )
    m, se = mean_se(g)
    assert_unbiased(g, FD_EXACT, se_max=0.05 * np.abs(FD_EXACT))
    assert np.all(np.abs(FD_EXACT - GRAD_LOG_Z) < 0.05 * np.abs(GRAD_LOG_Z))  # h is small
    assert np.all(np.isfinite(m)) and np.all(np.isfinite(se))


def test_particle_filter_passes_je_check():
    report = je.check(make_filter("multinomial"), KEY, jnp.asarray(THETA, jnp.float32))
    assert report.ok, str(report)
