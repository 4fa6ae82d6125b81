"""Common-random-number finite differences through Gamma/StudentT/Beta/Dirichlet sites.

Under ``je.finite_difference(common_random_numbers=True)`` sites draw with
``dist.coupled_sample``, continuous in the parameters for a fixed key (the gamma families by
inversion, ``Gamma.icdf``). References: quadrature with scipy or closed forms.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special as ss
from _stats import assert_unbiased
from scipy import integrate, stats

import jaxestim as je
from jaxestim import distributions as D

KEY = jax.random.key(0)


def _quad_derivative(density, g, theta, lo, hi, eps=1e-4):
    """d/dtheta int g(x) density(x, theta) dx by a central difference of quadratures."""
    e = lambda t: integrate.quad(lambda x: g(x) * density(x, t), lo, hi, epsabs=1e-13)[0]
    return (e(theta + eps) - e(theta - eps)) / (2 * eps)


def _fd_samples(f, theta, step, n, **kw):
    est = je.finite_difference(step=step, **kw)
    return np.asarray(je.grad_samples(f, est, num_samples=n)(KEY, theta), np.float64)


# --------------------------------------------------------------- gradients vs references
def test_studentt_df():
    g = lambda x: x**2 / (1 + x**2)
    f = lambda k, df: g(je.sample(k, D.StudentT(df, 0.0, 1.0)))
    exact = _quad_derivative(lambda x, d: stats.t.pdf(x, d), g, 3.0, -np.inf, np.inf)
    # the rejection-sampled draw gave -0.0219 +- 0.0001 here (exact -0.0187)
    assert_unbiased(_fd_samples(f, 3.0, 1e-3, 10_000), exact, se_max=4e-4)


def test_gamma_concentration_and_bounded_variance():
    g = lambda x: x / (1 + x)
    f = lambda k, a: g(je.sample(k, D.Gamma(a, 1.5)))
    exact = _quad_derivative(lambda x, a: stats.gamma.pdf(x, a, scale=1 / 1.5), g, 2.0, 0, np.inf)
    sds = {}
    for h in (1e-1, 1e-3):
        s = _fd_samples(f, 2.0, h, 10_000)
        assert_unbiased(s, exact, se_max=8e-4)
        sds[h] = s.std()
    # the per-sample SD does not grow as h -> 0 (by rejection: 0.13 -> 1.35, like 1/sqrt(h))
    assert sds[1e-3] < 1.5 * sds[1e-1], sds


def test_beta_concentrations():
    def f(k, c):
        return je.sample(k, D.Beta(c[0], c[1])) ** 2

    a, b = 0.7, 2.5
    # E[X^2] = a (a + 1) / (s (s + 1)), s = a + b
    s = a + b
    m = a * (a + 1) / (s * (s + 1))
    dlog_s = 1 / s + 1 / (s + 1)
    exact = [m * ((2 * a + 1) / (a * (a + 1)) - dlog_s), -m * dlog_s]
    assert_unbiased(_fd_samples(f, jnp.asarray([a, b]), 1e-3, 8000), exact, se_max=2e-3)


def test_dirichlet_concentration():
    alpha = np.asarray([0.5, 1.5, 3.0])
    f = lambda k, al: je.sample(k, D.Dirichlet(al))[0] ** 2
    # E[X_0^2] = a0 (a0 + 1) / (A (A + 1)), A = sum(alpha)
    a0, total = alpha[0], alpha.sum()
    m = a0 * (a0 + 1) / (total * (total + 1))
    dlog_total = 1 / total + 1 / (total + 1)
    exact = np.full(3, -m * dlog_total)
    exact[0] += m * (2 * a0 + 1) / (a0 * (a0 + 1))
    runs = {h: _fd_samples(f, jnp.asarray(alpha), h, 8000) for h in (1e-2, 1e-3)}
    for s in runs.values():
        assert_unbiased(s, exact, se_max=1.5e-3)
    # per sample, the difference quotients of a coupled (smooth) draw converge as h -> 0;
    # a draw that jumps (rejection) makes them differ by O(1/h) (11.8 here)
    assert np.abs(runs[1e-2] - runs[1e-3]).max() < 0.05


def test_transformed_gamma_and_forward_scheme():
    # a bijector of a coupled base is coupled; the one-sided scheme shares the mechanism
    f = lambda k, a: je.sample(k, D.TransformedDistribution(D.Gamma(a, 1.0), D.Exp())) ** -1
    # E[exp(-G)] = 2^-a, derivative -log(2) 2^-a
    exact = -np.log(2) * 2.0**-1.5
    assert_unbiased(_fd_samples(f, 1.5, 1e-3, 20_000, scheme="forward"), exact, se_max=1e-3)


# ------------------------------------------------------------------- the coupled sampler
@pytest.mark.parametrize(
    ("dist", "ref"),
    [
        (D.Gamma(0.3, 2.0), stats.gamma(0.3, scale=0.5).cdf),
        (D.Gamma(40.0, 1.0), stats.gamma(40.0).cdf),
        (D.StudentT(2.5, 1.0, 2.0), stats.t(2.5, 1.0, 2.0).cdf),
        (D.Beta(0.4, 3.0), stats.beta(0.4, 3.0).cdf),
    ],
)
def test_coupled_marginal_ks(dist, ref):
    x = np.asarray(dist.coupled_sample(KEY, (20_000,)), np.float64)
    assert stats.kstest(x, ref).pvalue > 1e-3


def test_dirichlet_coupled_marginal_ks():
    x = np.asarray(D.Dirichlet(jnp.asarray([0.5, 1.5, 3.0])).coupled_sample(KEY, (20_000,)))
    np.testing.assert_allclose(x.sum(-1), 1.0, rtol=1e-5)
    assert stats.kstest(x[:, 0].astype(np.float64), stats.beta(0.5, 4.5).cdf).pvalue > 1e-3


def _icdf_error(a, u):
    """Max relative ``|F(x) - u| / min(u, 1 - u)`` and max absolute ``|F(x) - u|``."""
    x = np.asarray(D.Gamma(a, 1.0).icdf(u), np.float64)
    u = np.asarray(u, np.float64)
    lower = u <= 0.5
    f = np.where(lower, ss.gammainc(a, x), ss.gammaincc(a, x))
    p = np.where(lower, u, 1 - u)
    # where the quantile itself is below the dtype's tiny it rounds to 0 (not an error)
    tiny = 4 * np.finfo(np.asarray(a).dtype).tiny
    representable = np.where(lower, ss.gammaincinv(a, p), ss.gammainccinv(a, p)) > tiny
    err = np.where(representable, np.abs(f - p), 0.0)
    return np.max(err / p), np.max(err)


def _u_grid(dtype):
    tail = 10.0 ** -np.arange(1, 8 if dtype == np.float32 else 15)
    return np.concatenate([tail, np.linspace(0.01, 0.99, 99), 1 - tail]).astype(dtype)


def test_gamma_icdf_accuracy_float32():
    u = jnp.asarray(_u_grid(np.float32))
    for a in (0.1, 0.5, 1.0, 3.0):
        assert _icdf_error(jnp.float32(a), u)[0] < 3e-5, a
    # large a: float32 gammainc cancels; the Wilson-Hilferty guess takes over smoothly
    for a, bound in ((20.0, 5e-5), (140.0, 5e-5), (1e3, 5e-5), (1e5, 3e-4), (1e6, 6e-4)):
        assert _icdf_error(jnp.float32(a), u)[1] < bound, a


def test_gamma_icdf_accuracy_float64():
    with jax.enable_x64(True):
        u = jnp.asarray(_u_grid(np.float64))
        for a in (1e-3, 0.05, 0.5, 1.0, 3.0, 50.0, 1e3):
            assert _icdf_error(jnp.float64(a), u)[0] < 1e-11, a
        assert _icdf_error(jnp.float64(1e6), u)[1] < 1e-8


def test_coupled_sample_is_continuous_in_the_concentration():
    # same key, nearby concentration: every draw moves by O(h); by rejection some jump
    def slopes(sample):
        x = [np.asarray(sample(D.Gamma(a, 1.0)), np.float64) for a in (2.0, 2.01)]
        return np.abs(x[1] - x[0]) / 0.01

    assert slopes(lambda d: d.coupled_sample(KEY, (20_000,))).max() < 10
    # also where the Halley steps hand over to the Wilson-Hilferty guess (float32: a ~ 140)
    x = [
        np.asarray(D.Gamma(a, 1.0).coupled_sample(KEY, (20_000,)), np.float64)
        for a in (140.0, 140.5)
    ]
    assert (np.abs(x[1] - x[0]) / 0.5).max() < 3
    assert slopes(lambda d: d.sample(KEY, (20_000,))).max() > 10


def test_other_estimators_keep_the_rejection_sampler():
    a = jnp.float32(2.0)
    np.testing.assert_array_equal(D.Gamma(a, 1.0).sample(KEY, (5,)), jax.random.gamma(KEY, a, (5,)))
    # the program's value (the same per-sample keys): pathwise and independent-key differences
    # draw by rejection as before, common random numbers by inversion
    f = lambda k, a: je.sample(k, D.Gamma(a, 1.0))
    value = lambda est: float(je.value_and_grad(f, est, num_samples=8)(KEY, a)[0])
    pw = value(je.pathwise())
    assert value(je.finite_difference(common_random_numbers=False)) == pw
    assert value(je.finite_difference()) != pw


def test_same_key_same_estimate_eager_jit_chunked():
    f = lambda k, df: jnp.tanh(je.sample(k, D.StudentT(df, 0.0, 1.0)))
    est = je.finite_difference(step=1e-3)
    eager = je.grad(f, est, num_samples=64)(KEY, 3.0)
    jitted = jax.jit(je.grad(f, est, num_samples=64))(KEY, 3.0)
    chunked = je.grad(f, est, num_samples=64, chunk_size=16)(KEY, 3.0)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(chunked, eager, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------ errors
class _Rejection(D.Normal):
    """A continuous family whose sampler is not declared continuous in its parameters."""

    _coupled = False


def _both_ways(f, match):
    grad = je.grad(f, je.finite_difference(), num_samples=2)
    with pytest.raises(je.EstimatorError, match=match):
        grad(KEY, 1.0)
    with pytest.raises(je.EstimatorError, match=match):
        jax.jit(grad)(KEY, 1.0)


def test_uncoupled_site_raises():
    f = lambda k, t: je.sample(k, _Rejection(t, 1.0))
    _both_ways(f, r"cannot difference a _Rejection.*common_random_numbers=False.*je\.pathwise")
    # independent keys need no coupling
    je.grad(f, je.finite_difference(common_random_numbers=False), num_samples=2)(KEY, 1.0)


def test_numpyro_rejection_sampled_site_raises():
    ndist = pytest.importorskip("numpyro.distributions")
    _both_ways(
        lambda k, a: je.sample(k, ndist.Gamma(a, 1.0)),
        r"numpyro Gamma sample site: its sampler \(rejection sampling\).*"
        r"jaxestim\.distributions\.Gamma",
    )
    _both_ways(
        lambda k, a: je.sample(
            k, ndist.TransformedDistribution(ndist.Beta(a, 1.0), [ndist.transforms.ExpTransform()])
        ),
        "rejection sampling",
    )
    # a numpyro family that is a smooth transform of noise works, as do independent keys
    g = je.grad(lambda k, t: je.sample(k, ndist.Normal(t, 1.0)) ** 2, je.finite_difference(),
                num_samples=4)(KEY, 1.0)  # fmt: skip
    assert np.isfinite(g)
    fd = je.finite_difference(common_random_numbers=False)
    assert np.isfinite(je.grad(lambda k, a: je.sample(k, ndist.Gamma(a, 1.0)), fd)(KEY, 1.0))
