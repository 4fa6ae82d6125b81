"""Tests for StudentT, TransformedDistribution and the bijectors (jaxestim.distributions).

Same conventions as tests/test_distributions.py: fixed keys, KS p-values > 1e-4, gradient
means within 5 SE of closed forms with a bound on the SE (tests/_stats.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special as sps
import scipy.stats as st

import jaxestim as je
import jaxestim.distributions as D
from tests._stats import assert_unbiased

KEY = jax.random.key(20261129)
N = 100_000


def _softplus_inv(y):
    return y + np.log(-np.expm1(-y))


def _td(base, bij):
    return D.TransformedDistribution(base, bij)


# ----------------------------------------------------------------------------------------
# Goodness of fit, log_prob, cdf
# ----------------------------------------------------------------------------------------

KS_CASES = [
    ("student_t", lambda: D.StudentT(5.0, 1.0, 2.0), st.t(5.0, 1.0, 2.0)),
    ("student_t_heavy", lambda: D.StudentT(1.5, -1.0, 0.5), st.t(1.5, -1.0, 0.5)),
    ("lognormal_exp", lambda: _td(D.Normal(0.5, 0.7), D.Exp()), st.lognorm(0.7, scale=np.exp(0.5))),
    (
        "logit_normal",
        lambda: _td(D.Normal(0.3, 1.2), D.Sigmoid()),
        # closed form: P(sigmoid(X) <= y) = Phi((logit(y) - mu) / s)
        type("R", (), {"cdf": staticmethod(lambda y: st.norm.cdf(sps.logit(y), 0.3, 1.2))})(),
    ),
    (
        "tanh_normal",
        lambda: _td(D.Normal(-0.2, 0.8), D.Tanh()),
        type("R", (), {"cdf": staticmethod(lambda y: st.norm.cdf(np.arctanh(y), -0.2, 0.8))})(),
    ),
    (
        "softplus_normal",
        lambda: _td(D.Normal(0.1, 1.5), D.Softplus()),
        type("R", (), {"cdf": staticmethod(lambda y: st.norm.cdf(_softplus_inv(y), 0.1, 1.5))})(),
    ),
    (
        "chain_affine_exp",
        lambda: _td(D.Normal(0.0, 1.0), D.Chain([D.Affine(1.0, 0.5), D.Exp()])),
        st.lognorm(0.5, scale=np.exp(1.0)),
    ),
]


@pytest.mark.parametrize("name,make,ref", KS_CASES, ids=[c[0] for c in KS_CASES])
def test_ks_goodness_of_fit(name, make, ref):
    dist = make()
    samples = np.asarray(jax.jit(lambda k: dist.sample(k, N))(KEY), np.float64)
    assert samples.shape == (N,) and np.all(np.isfinite(samples))
    assert st.kstest(samples, ref.cdf).pvalue > 1e-4


def test_student_t_log_prob_cdf_moments():
    dist = D.StudentT(5.0, 1.0, 2.0)
    ref = st.t(5.0, 1.0, 2.0)
    xs = np.concatenate([ref.ppf(np.linspace(0.001, 0.999, 41)), [-300.0, 250.0]])
    xs = xs.astype(np.float32)
    np.testing.assert_allclose(np.asarray(dist.log_prob(xs)), ref.logpdf(xs), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dist.cdf(xs)), ref.cdf(xs), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(dist.mean), 1.0)
    np.testing.assert_allclose(float(dist.variance), 4.0 * 5 / 3, rtol=1e-6)
    assert np.isnan(D.StudentT(0.5, 0.0, 1.0).mean)
    assert np.isinf(D.StudentT(1.5, 0.0, 1.0).variance)
    # batched, with broadcasting parameters
    b = D.StudentT(jnp.array([1.0, 3.0, 30.0]), 0.0, jnp.array([[1.0], [2.0]]))
    assert b.batch_shape == (2, 3) and b.sample(KEY, 4).shape == (4, 2, 3)
    np.testing.assert_allclose(
        np.asarray(b.log_prob(0.7)),
        st.t.logpdf(0.7, np.array([1.0, 3.0, 30.0]), 0.0, np.array([[1.0], [2.0]])),
        rtol=1e-5,
    )


def test_transformed_log_prob_closed_forms():
    ys = np.linspace(0.02, 0.98, 30).astype(np.float32)
    mu, s = 0.3, 1.2
    logit_normal = _td(D.Normal(mu, s), D.Sigmoid())
    exact = st.norm.logpdf(sps.logit(ys.astype(np.float64)), mu, s) - np.log(ys * (1.0 - ys))
    np.testing.assert_allclose(np.asarray(logit_normal.log_prob(ys)), exact, rtol=1e-4, atol=1e-5)
    assert np.all(np.asarray(logit_normal.log_prob(jnp.array([-0.1, 0.0, 1.0, 1.5]))) == -np.inf)

    lognormal = _td(D.Normal(0.5, 0.7), D.Exp())
    ref = D.LogNormal(0.5, 0.7)
    xs = jnp.array([1e-3, 0.3, 1.0, 2.5, 40.0])
    np.testing.assert_allclose(lognormal.log_prob(xs), ref.log_prob(xs), rtol=1e-5)
    assert float(lognormal.log_prob(-1.0)) == -np.inf and float(lognormal.log_prob(0.0)) == -np.inf
    # gradient at an out-of-support value is finite (not NaN)
    g = jax.grad(lambda m: _td(D.Normal(m, 0.7), D.Exp()).log_prob(-1.0))(0.5)
    assert np.isfinite(g)

    tanh = _td(D.Normal(-0.2, 0.8), D.Tanh())
    y = np.linspace(-0.95, 0.95, 21)
    exact = st.norm.logpdf(np.arctanh(y), -0.2, 0.8) - np.log1p(-(y**2))
    np.testing.assert_allclose(np.asarray(tanh.log_prob(y.astype(np.float32))), exact, rtol=1e-4)

    softplus = _td(D.Normal(0.1, 1.5), D.Softplus())
    y = np.array([0.05, 0.5, 1.0, 3.0, 10.0])
    x = y + np.log(-np.expm1(-y))
    exact = st.norm.logpdf(x, 0.1, 1.5) - np.log(sps.expit(x))
    lp = np.asarray(softplus.log_prob(y.astype(np.float32)))
    np.testing.assert_allclose(lp, exact, rtol=1e-4)

    # a Chain that leaves a gap: exp(sigmoid(x)) lies in (1, e)
    gap = _td(D.Normal(0.0, 1.0), D.Chain([D.Sigmoid(), D.Exp()]))
    lp = np.asarray(gap.log_prob(jnp.array([0.5, 1.0, 2.0, 2.8])))
    assert lp[0] == -np.inf and lp[1] == -np.inf and lp[3] == -np.inf and np.isfinite(lp[2])
    u = np.log(2.0)
    exact = st.norm.logpdf(sps.logit(u)) - np.log(u * (1 - u)) - np.log(2.0)
    np.testing.assert_allclose(lp[2], exact, rtol=1e-5)

    # event dimensions: log|J| is summed over the event axes
    mvn = D.MultivariateNormal(jnp.zeros(2), jnp.eye(2))
    t = _td(mvn, D.Exp())
    y = jnp.array([[0.5, 2.0], [1.0, 1.0]])
    exact = st.norm.logpdf(np.log(np.asarray(y))).sum(-1) - np.log(np.asarray(y)).sum(-1)
    np.testing.assert_allclose(np.asarray(t.log_prob(y)), exact, rtol=1e-5)
    assert t.sample(KEY, 3).shape == (3, 2)

    # affine moments
    aff = _td(D.Normal(1.0, 2.0), D.Chain([D.Affine(3.0, -0.5), D.Affine(1.0, 2.0)]))
    np.testing.assert_allclose(float(aff.mean), 1.0 + 2.0 * (3.0 - 0.5))
    np.testing.assert_allclose(float(aff.variance), 4.0 * 4.0 * 0.25)
    with pytest.raises(NotImplementedError, match="non-affine"):
        _ = lognormal.mean


BIJECTORS = [D.Affine(0.5, -2.0), D.Exp(), D.Sigmoid(), D.Tanh(), D.Softplus()]


CHAIN = D.Chain([D.Affine(0.5, -2.0), D.Tanh(), D.Exp()])


@pytest.mark.parametrize("bij", [*BIJECTORS, CHAIN], ids=repr)
def test_bijector_roundtrip_and_log_det(bij):
    # (the autodiff reference 1 - tanh^2 cancels in float32 far out; tails are tested below)
    x = jnp.linspace(-1.5, 1.5, 13)
    y = bij.forward(x)
    # float32: tanh(-5.5) is 2e-5 from -1, so its inverse loses ~1e-3 absolute
    np.testing.assert_allclose(bij.inverse(y), x, rtol=1e-4, atol=1e-3)
    autodiff = jnp.log(jnp.abs(jax.vmap(jax.grad(bij.forward))(x)))
    np.testing.assert_allclose(bij.forward_log_det_jacobian(x), autodiff, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        bij.inverse_log_det_jacobian(y), -bij.forward_log_det_jacobian(x), rtol=1e-3, atol=1e-3
    )


def test_bijector_log_det_stable_in_tails():
    x = jnp.array([-200.0, -60.0, 60.0, 200.0])
    for bij, exact in [
        (D.Tanh(), 2 * (np.log(2.0) - np.abs(np.asarray(x)))),  # log(1 - tanh^2) ~ log 4 - 2|x|
        (D.Sigmoid(), -np.abs(np.asarray(x))),  # log(s (1 - s)) ~ -|x|
        (D.Softplus(), np.minimum(np.asarray(x), 0.0)),  # log sigmoid(x)
    ]:
        ldj = np.asarray(bij.forward_log_det_jacobian(x))
        np.testing.assert_allclose(ldj, exact, rtol=1e-5, atol=1e-6)
        g = jax.vmap(jax.grad(bij.forward_log_det_jacobian))(x)
        assert np.all(np.isfinite(np.asarray(g)))


# ----------------------------------------------------------------------------------------
# Pathwise gradients (unbiased at 5 SE against closed forms)
# ----------------------------------------------------------------------------------------


def _pathwise_samples(make, stat, theta, n=N, fold=1):
    keys = jax.random.split(jax.random.fold_in(KEY, fold), n)
    theta = jnp.asarray(theta, jnp.float32)
    one = lambda k: jax.grad(lambda t: stat(make(t).rsample(k)))(theta)
    return np.asarray(jax.jit(jax.vmap(one))(keys), np.float64)


def test_student_t_pathwise_loc_scale():
    df = 5.0
    g = _pathwise_samples(lambda t: D.StudentT(df, t[0], t[1]), lambda y: y, [0.3, 1.5])
    np.testing.assert_allclose(g[:, 0], 1.0)  # d/dloc E[Y] = 1 exactly, per sample
    assert_unbiased(g[:, 1], 0.0, se_max=0.01)  # d/dscale E[Y] = 0
    # E[Y^2] = loc^2 + scale^2 df / (df - 2)
    g = _pathwise_samples(lambda t: D.StudentT(df, t[0], t[1]), jnp.square, [0.3, 1.5], fold=2)
    assert_unbiased(g, [0.6, 2 * 1.5 * df / (df - 2)], se_max=[0.03, 0.08])


@pytest.mark.parametrize("df", [6.0])
def test_student_t_pathwise_df(df):
    """d/d df E[T^2] = d/d df df/(df-2) = -2/(df-2)^2 (implicit reparameterization of Gamma)."""
    g = _pathwise_samples(lambda t: D.StudentT(t, 0.0, 1.0), jnp.square, df, fold=3)
    assert_unbiased(g, -2.0 / (df - 2) ** 2, se_max=0.004)
    # E[log(1 + T^2/df)] = psi((df+1)/2) - psi(df/2) (T^2/df = B/(1-B), B ~ Beta(1/2, df/2));
    # the statistic also depends on df explicitly, and the per-sample total derivative is
    # unbiased for d/d df E = (psi1((df+1)/2) - psi1(df/2)) / 2
    stat = lambda t, y: jnp.log1p(jnp.square(y) / t)
    keys = jax.random.split(jax.random.fold_in(KEY, 4), N)
    one = lambda k: jax.grad(lambda t: stat(t, D.StudentT(t, 0.0, 1.0).rsample(k)))(df)
    g = np.asarray(jax.jit(jax.vmap(one))(keys), np.float64)
    exact = 0.5 * (sps.polygamma(1, (df + 1) / 2) - sps.polygamma(1, df / 2))
    assert_unbiased(g, exact, se_max=0.002)


def test_transformed_pathwise_gradients():
    mu, s = 0.2, 0.5
    # d/dmu, d/ds E[exp(X)] = exp(mu + s^2/2) * (1, s)
    g = _pathwise_samples(lambda t: _td(D.Normal(t[0], t[1]), D.Exp()), lambda y: y, [mu, s])
    e = np.exp(mu + s**2 / 2)
    assert_unbiased(g, [e, s * e], se_max=0.01)
    # through the bijector's own parameters: Y = a + b X, X ~ N(0,1): d E[Y^2] = (2a, 2b)
    g = _pathwise_samples(
        lambda t: _td(D.Normal(0.0, 1.0), D.Affine(t[0], t[1])), jnp.square, [0.7, -1.3], fold=5
    )
    assert_unbiased(g, [1.4, -2.6], se_max=0.02)
    # through je.grad with the pathwise estimator: E[Y] for Y = exp(X), X ~ N(theta, s)
    f = lambda key, t: je.sample(key, _td(D.Normal(t, s), D.Exp()))
    per = je.grad_samples(f, je.pathwise(), num_samples=20_000)(jax.random.fold_in(KEY, 6), mu)
    assert_unbiased(np.asarray(per), e, se_max=0.01)


# ----------------------------------------------------------------------------------------
# Score function through the change-of-variables log_prob
# ----------------------------------------------------------------------------------------


def test_score_function_on_transformed():
    mu, s = 0.2, 0.5
    f = lambda key, t: je.sample(key, _td(D.Normal(t, s), D.Exp()))
    per = je.grad_samples(f, je.score_function(), num_samples=100_000)(KEY, mu)
    assert_unbiased(np.asarray(per), np.exp(mu + s**2 / 2), se_max=0.02)
    # a logit-normal with the location in the bijector: d/dt E[sigmoid(t + Z)]
    bij = lambda t: D.Chain([D.Affine(t, 1.0), D.Sigmoid()])
    g = lambda key, t: je.sample(key, _td(D.Normal(0.0, 1.0), bij(t)))
    per = je.grad_samples(g, je.score_function(), num_samples=100_000)(KEY, 0.4)
    # exact: d/dt E[sigmoid(t + Z)] = E[sigmoid'(t + Z)], by Gauss-Hermite quadrature
    z, w = np.polynomial.hermite_e.hermegauss(80)
    exact = float(np.sum(w * sps.expit(0.4 + z) * (1 - sps.expit(0.4 + z))) / np.sqrt(2 * np.pi))
    assert_unbiased(np.asarray(per), exact, se_max=0.003)


def test_score_function_moving_support_is_nan():
    """An Affine shift moves the support of an Exponential base: the score function would be
    biased, so its gradient is NaN (the support-boundary check)."""
    f = lambda key, t: je.sample(key, _td(D.Exponential(1.0), D.Affine(t, 1.0)))
    g = je.grad(f, je.score_function(), num_samples=100)(KEY, 0.3)
    assert np.isnan(g)
    # pathwise is fine there: d/dt E[t + E] = 1
    g = je.grad(f, je.pathwise(), num_samples=100)(KEY, 0.3)
    np.testing.assert_allclose(g, 1.0, rtol=1e-6)


# ----------------------------------------------------------------------------------------
# Invalid parameters, pytrees, jit/vmap
# ----------------------------------------------------------------------------------------


def test_invalid_parameters():
    with pytest.raises(ValueError, match="df"):
        D.StudentT(0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="scale"):
        D.StudentT(3.0, 0.0, -1.0)
    with pytest.raises(ValueError, match="loc"):
        D.StudentT(3.0, np.nan, 1.0)
    with pytest.raises(ValueError, match="scale"):
        D.Affine(0.0, 0.0)
    with pytest.raises(TypeError, match="continuous"):
        _td(D.Bernoulli(probs=0.3), D.Exp())
    with pytest.raises(ValueError, match="broadcast"):
        _td(D.Normal(0.0, 1.0), D.Affine(jnp.zeros(3), 1.0))

    @jax.jit
    def outputs(df, loc, scale, shift, bscale):
        t = D.StudentT(df, loc, scale)
        td = _td(D.Normal(loc, scale), D.Chain([D.Affine(shift, bscale), D.Exp()]))
        return (t.log_prob(0.5), t.cdf(0.5), t.sample(KEY, 2), td.log_prob(0.5), td.sample(KEY, 2))

    good = outputs(3.0, 0.0, 1.0, 0.0, 1.0)
    assert all(np.all(np.isfinite(np.asarray(o))) for o in good)
    for bad in [(-1.0, 0.0, 1.0), (np.nan, 0.0, 1.0), (3.0, np.inf, 1.0), (3.0, 0.0, 0.0)]:
        lp, cdf, x, _, _ = outputs(*bad, 0.0, 1.0)
        assert np.isnan(lp) and np.isnan(cdf) and np.all(np.isnan(x)), bad
    for bij in [(0.0, 0.0), (np.nan, 1.0), (0.0, np.inf)]:
        *_, lp, x = outputs(3.0, 0.0, 1.0, *bij)
        assert np.isnan(lp) and np.all(np.isnan(x)), bij
    *_, lp, x = outputs(3.0, 0.0, -1.0, 0.0, 1.0)  # invalid base
    assert np.isnan(lp) and np.all(np.isnan(x))
    # element-wise: valid batch elements are unaffected
    t = jax.jit(lambda df: D.StudentT(df, 0.0, 1.0).log_prob(0.0))(jnp.array([-1.0, 4.0]))
    assert np.isnan(t[0]) and np.isclose(t[1], st.t.logpdf(0.0, 4.0))


EXTRA_DISTS = [
    D.StudentT(3.0, 0.0, 1.0),
    _td(D.Normal(0.0, 1.0), D.Exp()),
    _td(D.Normal(jnp.zeros(2), 1.0), D.Chain([D.Affine(jnp.ones(2), 2.0), D.Tanh()])),
    _td(D.MultivariateNormal(jnp.zeros(2), jnp.eye(2)), D.Softplus()),
]


@pytest.mark.parametrize("dist", EXTRA_DISTS, ids=repr)
def test_pytree_jit_vmap(dist):
    leaves, treedef = jax.tree_util.tree_flatten(dist)
    rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
    assert type(rebuilt) is type(dist) and repr(rebuilt) == repr(dist)
    jax.tree_util.tree_unflatten(treedef, [object()] * len(leaves))
    x = jax.jit(lambda d, k: d.sample(k, 4))(dist, KEY)
    assert x.shape == (4, *dist.batch_shape, *dist.event_shape)
    np.testing.assert_allclose(np.asarray(x), np.asarray(dist.sample(KEY, 4)), rtol=1e-6)
    lp = jax.jit(lambda d, v: d.log_prob(v))(dist, x)
    np.testing.assert_allclose(np.asarray(lp), np.asarray(dist.log_prob(x)), rtol=1e-5, atol=1e-6)
    assert lp.shape == (4, *dist.batch_shape) and np.all(np.isfinite(np.asarray(lp)))
    assert dist.is_reparameterized and not dist.is_discrete
    # vmap over the distribution's leaves
    stacked = jax.tree_util.tree_map(lambda a: jnp.stack([jnp.asarray(a)] * 3), dist)
    ys = jax.vmap(lambda d, k: d.sample(k))(stacked, jax.random.split(KEY, 3))
    assert ys.shape == (3, *dist.batch_shape, *dist.event_shape)


def test_student_t_cdf_gradients():
    """d/dloc cdf(x) = -pdf(x); JAX cannot differentiate betainc in df: a loud error."""
    g = jax.grad(lambda loc: D.StudentT(3.0, loc, 2.0).cdf(0.5))(0.0)
    np.testing.assert_allclose(g, -st.t.pdf(0.5, 3.0, 0.0, 2.0), rtol=1e-5)
    with pytest.raises(ValueError, match="not supported"):
        jax.grad(lambda df: D.StudentT(df, 0.0, 1.0).cdf(0.5))(3.0)
