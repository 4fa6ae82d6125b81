"""Tests for :mod:`jaxestim.distributions`.

Statistical tests use fixed keys and thresholds far in the tails (p-values > 1e-4, 5 standard
errors), so they are deterministic and only fail on real discrepancies. References are
float64 scipy computations evaluated at the float32-rounded parameters.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special as sps
import scipy.stats as st

import jaxestim.distributions as D
from jaxestim.distributions import _discrete

F32 = np.float32
KEY = jax.random.key(20240611)


def f32(x):
    """Rounds to float32 and returns a Python float (the parameter the sampler actually sees)."""
    return float(np.float32(x))


def expit32(logit):
    return float(sps.expit(np.float64(np.float32(logit))))


@functools.partial(jax.jit, static_argnums=2)
def _sample(dist, key, n):
    return dist.sample(key, (n,))


@jax.jit
def _icdf(dist, u):
    return dist.icdf(u)


# --------------------------------------------------------------------------------------------
# Discrete goodness of fit
# --------------------------------------------------------------------------------------------


def _chisquare_pvalue(samples: np.ndarray, ref, max_bins: int = 80) -> float:
    """Chi-square test of integer samples against a scipy reference (exact CDF).

    Bins are delimited by reference quantiles (one bin per support point when the support in
    range is small); adjacent bins are merged until every expected count is >= 5.
    """
    n = samples.size
    qs = np.linspace(0, 1, max_bins + 1)[1:-1]
    edges = np.unique(ref.ppf(qs))
    edges = edges[np.isfinite(edges)]
    # Bins: (-inf, e0], (e0, e1], ..., (e_last, inf).
    cdf = np.concatenate([[0.0], ref.cdf(edges), [1.0]])
    expected = np.diff(cdf) * n
    idx = np.searchsorted(edges, samples, side="left")
    observed = np.bincount(idx, minlength=edges.size + 1).astype(float)
    obs_m, exp_m = [], []
    o_acc = e_acc = 0.0
    for o, e in zip(observed, expected, strict=True):
        o_acc += o
        e_acc += e
        if e_acc >= 5:
            obs_m.append(o_acc)
            exp_m.append(e_acc)
            o_acc = e_acc = 0.0
    if obs_m:
        obs_m[-1] += o_acc
        exp_m[-1] += e_acc
    else:
        obs_m, exp_m = [o_acc], [e_acc]
    if len(obs_m) < 2:
        return 1.0
    obs_m, exp_m = np.array(obs_m), np.array(exp_m)
    exp_m *= obs_m.sum() / exp_m.sum()
    return float(st.chisquare(obs_m, exp_m).pvalue)


def _rare_count_pvalue(count: int, n: int, prob: float) -> float:
    """Two-sided Poisson p-value of observing ``count`` events of probability ``prob``."""
    mu = n * prob
    lo = st.poisson.cdf(count, mu)
    hi = st.poisson.sf(count - 1, mu)
    return float(min(1.0, 2 * min(lo, hi)))


DISCRETE_CASES = [
    ("bern_p0.3", lambda: D.Bernoulli(probs=0.3), lambda: st.bernoulli(f32(0.3))),
    ("bern_p1e-6", lambda: D.Bernoulli(probs=1e-6), lambda: st.bernoulli(f32(1e-6))),
    ("bern_p1-1e-6", lambda: D.Bernoulli(probs=1 - 1e-6), lambda: st.bernoulli(f32(1 - 1e-6))),
    ("bern_l2", lambda: D.Bernoulli(logits=2.0), lambda: st.bernoulli(expit32(2.0))),
    ("bern_l-30", lambda: D.Bernoulli(logits=-30.0), lambda: st.bernoulli(expit32(-30.0))),
    ("bern_l30", lambda: D.Bernoulli(logits=30.0), lambda: st.bernoulli(expit32(30.0))),
    ("binom_1", lambda: D.Binomial(1, probs=0.3), lambda: st.binom(1, f32(0.3))),
    ("binom_20", lambda: D.Binomial(20, probs=0.3), lambda: st.binom(20, f32(0.3))),
    ("binom_20_l-3", lambda: D.Binomial(20, logits=-3.0), lambda: st.binom(20, expit32(-3.0))),
    ("binom_1e4", lambda: D.Binomial(10000, probs=0.3), lambda: st.binom(10000, f32(0.3))),
    ("binom_1e4_p1e-6", lambda: D.Binomial(10000, probs=1e-6), lambda: st.binom(10000, f32(1e-6))),
    (
        "binom_1e4_p1-1e-6",
        lambda: D.Binomial(10000, probs=1 - 1e-6),
        lambda: st.binom(10000, f32(1 - 1e-6)),
    ),
    ("binom_50_l30", lambda: D.Binomial(50, logits=30.0), lambda: st.binom(50, expit32(30.0))),
    ("pois_1e-3", lambda: D.Poisson(1e-3), lambda: st.poisson(f32(1e-3))),
    ("pois_5", lambda: D.Poisson(5.0), lambda: st.poisson(5.0)),
    ("pois_37.5", lambda: D.Poisson(37.5), lambda: st.poisson(37.5)),
    ("pois_1e4", lambda: D.Poisson(1e4), lambda: st.poisson(1e4)),
    ("geom_0.3", lambda: D.Geometric(probs=0.3), lambda: st.geom(f32(0.3), loc=-1)),
    ("geom_1e-6", lambda: D.Geometric(probs=1e-6), lambda: st.geom(f32(1e-6), loc=-1)),
    ("geom_1-1e-6", lambda: D.Geometric(probs=1 - 1e-6), lambda: st.geom(f32(1 - 1e-6), loc=-1)),
    ("geom_l-5", lambda: D.Geometric(logits=-5.0), lambda: st.geom(expit32(-5.0), loc=-1)),
    ("geom_l30", lambda: D.Geometric(logits=30.0), lambda: st.geom(expit32(30.0), loc=-1)),
]


@pytest.mark.parametrize("name,make,ref", DISCRETE_CASES, ids=[c[0] for c in DISCRETE_CASES])
def test_discrete_goodness_of_fit(name, make, ref):
    dist, ref = make(), ref()
    n = 200_000
    key = jax.random.fold_in(KEY, hash(name) % 2**31)
    samples = np.asarray(_sample(dist, key, n))
    assert samples.dtype == np.float32
    assert np.all(samples == np.floor(samples))
    assert _chisquare_pvalue(samples, ref) > 1e-4
    # Rare outcomes at the parameter extremes: the least likely of the two extreme events.
    lo_val = samples.min()
    assert ref.pmf(lo_val) > 0 and ref.pmf(samples.max()) > 0
    if ref.cdf(0) < 1e-3:  # few zeros expected
        assert _rare_count_pvalue(int(np.sum(samples == 0)), n, ref.pmf(0)) > 1e-4
    if ref.sf(0) < 1e-3:  # few non-zeros expected
        assert _rare_count_pvalue(int(np.sum(samples > 0)), n, ref.sf(0)) > 1e-4


@pytest.mark.parametrize(
    "make_probs",
    [
        lambda: D.Categorical(probs=jnp.array([0.1, 0.2, 0.3, 0.4])),
        lambda: D.Categorical(logits=jnp.array([0.0, -30.0, 1.0, 30.0, 29.0])),
        lambda: D.Categorical(logits=jnp.array([-30.0, 0.0, 0.5])),
        lambda: D.OneHotCategorical(probs=jnp.array([0.25, 0.0, 0.75])),
        lambda: D.Categorical(probs=jnp.array([1.0])),
    ],
)
def test_categorical_goodness_of_fit(make_probs):
    dist = make_probs()
    n = 200_000
    samples = np.asarray(_sample(dist, KEY, n))
    probs = np.asarray(dist.probs, np.float64)
    if isinstance(dist, D.OneHotCategorical):
        assert samples.shape == (n, dist.num_categories) and samples.dtype == np.float32
        assert np.all(samples.sum(-1) == 1)
        samples = samples.argmax(-1)
    else:
        assert samples.dtype == np.int32
    counts = np.bincount(samples, minlength=probs.size)
    assert counts.size == probs.size  # no out-of-range index
    assert np.all(counts[probs == 0] == 0)
    ref = st.rv_discrete(values=(np.arange(probs.size), probs / probs.sum()))
    assert _chisquare_pvalue(samples.astype(float), ref) > 1e-4
    for k in np.flatnonzero(probs < 1e-3):
        assert _rare_count_pvalue(int(counts[k]), n, probs[k]) > 1e-4


def test_batched_discrete_shapes():
    d = D.Binomial(jnp.array([[5.0], [50.0]]), probs=jnp.array([0.1, 0.5, 0.9]))
    assert d.batch_shape == (2, 3)
    x = _sample(d, KEY, 7)
    assert x.shape == (7, 2, 3)
    assert d.uniforms(KEY, (4, 5)).shape == (4, 5, 2, 3)
    assert d.log_prob(x).shape == (7, 2, 3)
    assert D.Poisson(jnp.ones(3)).log_prob(jnp.zeros((5, 1))).shape == (5, 3)
    c = D.OneHotCategorical(logits=jnp.zeros((2, 4)))
    assert c.sample(KEY, 3).shape == (3, 2, 4)
    assert c.log_prob(c.sample(KEY, 3)).shape == (3, 2)
    assert c.uniforms(KEY, 3).shape == (3, 2)


# --------------------------------------------------------------------------------------------
# Exactness of the inverse CDF at extreme uniforms and parameters
# --------------------------------------------------------------------------------------------

# Subnormal uniforms are excluded: XLA on CPU flushes them to zero (and `uniforms` never
# produces them).
EXTREME_U = np.array(
    [
        np.finfo(F32).tiny,
        1e-30,
        1e-12,
        1e-7,
        1e-3,
        0.25,
        0.5,
        np.nextafter(F32(0.5), F32(1)),
        0.75,
        1 - 1e-3,
        1 - 1e-6,
        1 - 6e-8,
        np.nextafter(F32(1), F32(0)),
    ],
    F32,
)
GRID_U = np.concatenate([EXTREME_U, np.random.default_rng(0).uniform(size=500).astype(F32)])

EXACT_CASES = [
    ("bern", lambda v: D.Bernoulli(probs=v), lambda v: st.bernoulli(f32(v)), [1e-6, 0.5, 1 - 1e-6]),
    ("bern_l", lambda v: D.Bernoulli(logits=v), lambda v: st.bernoulli(expit32(v)), [-30, 0, 30]),
    (
        "geom",
        lambda v: D.Geometric(probs=v),
        lambda v: st.geom(f32(v), loc=-1),
        [1e-6, 0.3, 1 - 1e-6],
    ),
    (
        "geom_l",
        lambda v: D.Geometric(logits=v),
        lambda v: st.geom(expit32(v), loc=-1),
        [-30, -3, 30],
    ),
    ("pois", D.Poisson, lambda v: st.poisson(f32(v)), [1e-4, 1e-3, 0.7, 5, 14.5, 30, 1e3, 1e4]),
    (
        "binom1",
        lambda v: D.Binomial(1, probs=v),
        lambda v: st.binom(1, f32(v)),
        [1e-6, 0.3, 1 - 1e-6],
    ),
    (
        "binom20",
        lambda v: D.Binomial(20, probs=v),
        lambda v: st.binom(20, f32(v)),
        [1e-6, 0.3, 1 - 1e-6],
    ),
    (
        "binom1e4",
        lambda v: D.Binomial(10000, probs=v),
        lambda v: st.binom(10000, f32(v)),
        [1e-6, 0.3, 0.5, 1 - 1e-6],
    ),
    (
        "binom_l",
        lambda v: D.Binomial(50, logits=v),
        lambda v: st.binom(50, expit32(v)),
        [-30, -2, 30],
    ),
]

# Relative tolerance on the float64 reference tails: the float32 CDFs are accurate to a few
# 1e-7 relative (Temme / continued fractions); 1e-5 leaves room for float32 rounding. Tail
# probabilities within a few ulps of float32 `tiny` (~1.2e-38) have lost relative precision to
# underflow, hence the absolute tolerance ABS_TOL on the lower tail.
REL_TOL = 1e-5
ABS_TOL = 1e-36


def _assert_exact_quantiles(k, u, ref, top=np.inf):
    k = np.asarray(k, np.float64)
    u = np.asarray(u, np.float64)
    assert np.all(np.isfinite(k))
    assert np.all(k == np.floor(k))
    assert np.all((k >= 0) & (k <= top))
    lower = u <= 0.5
    f_k, f_km1 = ref.cdf(k), ref.cdf(k - 1)
    s_k, s_km1 = ref.sf(k), ref.sf(k - 1)
    # F(k-1) < u <= F(k), checked on the small tail (1 - u is exact in float32 for u > 1/2).
    ok_lower = (f_km1 < u * (1 + REL_TOL) + ABS_TOL) & (u <= f_k * (1 + REL_TOL) + ABS_TOL)
    ok_upper = (s_k <= (1 - u) * (1 + REL_TOL)) & ((1 - u) < s_km1 * (1 + REL_TOL))
    ok = np.where(lower, ok_lower, ok_upper)
    bad = np.flatnonzero(~ok)
    assert bad.size == 0, [(u[i], k[i], f_km1[i], f_k[i]) for i in bad[:5]]


@pytest.mark.parametrize("name,make,ref,values", EXACT_CASES, ids=[c[0] for c in EXACT_CASES])
def test_icdf_exact_at_extremes(name, make, ref, values):
    for v in values:
        dist = make(v)
        k = _icdf(dist, jnp.asarray(GRID_U))
        assert k.dtype == jnp.float32 and k.shape == GRID_U.shape
        top = float(dist.total_count) if isinstance(dist, D.Binomial) else np.inf
        if isinstance(dist, D.Bernoulli):
            top = 1.0
        _assert_exact_quantiles(k, GRID_U, ref(v), top)


def test_categorical_icdf_exact_at_extremes():
    for logits in ([0.0, -30.0, 1.0, 30.0, 29.0], [-30.0, 0.0], [0.0, 30.0, -30.0]):
        dist = D.Categorical(logits=jnp.array(logits))
        k = np.asarray(_icdf(dist, jnp.asarray(GRID_U)))
        probs = sps.softmax(np.asarray(logits, np.float64))
        ref = st.rv_discrete(values=(np.arange(probs.size), probs))
        _assert_exact_quantiles(k, GRID_U, ref, probs.size - 1)


def test_walk_icdf_falls_back_to_bisection():
    """A deliberately wrong guess must still give the exact quantile (bisection fallback)."""
    rate = jnp.full(GRID_U.shape, 50.0)
    u = jnp.asarray(GRID_U)

    @jax.jit
    def walk(guess):
        return _discrete._walk_icdf(
            u,
            guess,
            jnp.full_like(rate, jnp.inf),
            lambda k: _discrete._poisson_tails(k, rate),
            lambda k: _discrete._poisson_log_pmf(k, rate),
            lambda k: jnp.log(rate) - jnp.log(k + 1),
            jnp.floor(rate + 9 * jnp.sqrt(rate) + 40),
        )

    for guess in (jnp.zeros_like(rate), jnp.full_like(rate, 300.0)):
        _assert_exact_quantiles(walk(guess), GRID_U, st.poisson(50.0))


def test_icdf_float64():
    with jax.enable_x64(True):
        u = jnp.asarray(np.concatenate([[1e-300, 1e-100, 1 - 2**-53], np.linspace(0.01, 0.99, 99)]))
        for dist, ref in [
            (D.Poisson(jnp.float64(30.0)), st.poisson(30.0)),
            (D.Poisson(jnp.float64(5000.0)), st.poisson(5000.0)),
            (D.Binomial(jnp.float64(300), probs=jnp.float64(0.2)), st.binom(300, 0.2)),
            (D.Geometric(probs=jnp.float64(0.01)), st.geom(0.01, loc=-1)),
        ]:
            assert dist.dtype == jnp.float64
            assert dist.uniforms(KEY, 3).dtype == jnp.float64
            k = dist.icdf(u)
            assert k.dtype == jnp.float64
            kk = np.asarray(k)
            uu = np.asarray(u)
            ok_lower = (ref.cdf(kk - 1) < uu * (1 + 1e-9)) & (uu <= ref.cdf(kk) * (1 + 1e-9))
            ok_upper = (ref.sf(kk) <= (1 - uu) * (1 + 1e-9)) & (
                1 - uu < ref.sf(kk - 1) * (1 + 1e-9)
            )
            assert np.all(np.where(uu <= 0.5, ok_lower, ok_upper))


# --------------------------------------------------------------------------------------------
# Monotone coupling
# --------------------------------------------------------------------------------------------

SORTED_U = jnp.asarray(np.sort(GRID_U))

MONOTONE_CASES = [
    ("bern", lambda v: D.Bernoulli(probs=v), np.linspace(1e-6, 1 - 1e-6, 41)),
    ("bern_l", lambda v: D.Bernoulli(logits=v), np.linspace(-30, 30, 41)),
    ("geom", lambda v: D.Geometric(probs=1 - v), np.linspace(1e-6, 1 - 1e-6, 41)),
    ("pois", D.Poisson, np.geomspace(1e-4, 1e4, 41)),
    ("binom20", lambda v: D.Binomial(20, probs=v), np.linspace(1e-6, 1 - 1e-6, 41)),
    ("binom1e4", lambda v: D.Binomial(10000, probs=v), np.linspace(1e-6, 1 - 1e-6, 21)),
    ("binom_l", lambda v: D.Binomial(30, logits=v), np.linspace(-30, 30, 41)),
    ("cat", lambda v: D.Categorical(logits=v * jnp.arange(5.0)), np.linspace(-5, 5, 41)),
]


@pytest.mark.parametrize("name,make,values", MONOTONE_CASES, ids=[c[0] for c in MONOTONE_CASES])
def test_icdf_monotone_coupling(name, make, values):
    """icdf is non-decreasing in u, and in the parameter for every fixed u."""
    ks = np.stack([np.asarray(_icdf(make(F32(v)), SORTED_U)) for v in values])
    assert np.all(np.diff(ks, axis=1) >= 0), "not monotone in u"
    assert np.all(np.diff(ks, axis=0) >= 0), "not monotone in the parameter"


# --------------------------------------------------------------------------------------------
# log_prob, moments, cdf and cdf derivatives against scipy
# --------------------------------------------------------------------------------------------


def _ks(lo, hi, size=24):
    """``size`` integers spanning ``[lo, hi]`` (a fixed size keeps compiled shapes shared)."""
    return np.round(np.linspace(lo, hi, size))


DISCRETE_REF = [
    (lambda: D.Bernoulli(probs=0.3), st.bernoulli(f32(0.3)), "probs", _ks(-1, 2)),
    (lambda: D.Bernoulli(logits=-2.0), st.bernoulli(expit32(-2.0)), "logits", _ks(-1, 2)),
    (lambda: D.Binomial(12, probs=0.35), st.binom(12, f32(0.35)), "probs", _ks(-1, 13)),
    (lambda: D.Binomial(12, logits=1.5), st.binom(12, expit32(1.5)), "logits", _ks(-1, 13)),
    (
        lambda: D.Binomial(3000, probs=0.4),
        st.binom(3000, f32(0.4)),
        "probs",
        _ks(1100, 1300),
    ),
    (lambda: D.Poisson(3.5), st.poisson(3.5), "rate", _ks(-1, 19)),
    (lambda: D.Poisson(0.01), st.poisson(f32(0.01)), "rate", _ks(-1, 5)),
    (lambda: D.Poisson(2500.0), st.poisson(2500.0), "rate", _ks(2300, 2699)),
    (lambda: D.Geometric(probs=0.2), st.geom(f32(0.2), loc=-1), "probs", _ks(-1, 39)),
    (lambda: D.Geometric(logits=-1.0), st.geom(expit32(-1.0), loc=-1), "logits", _ks(-1, 29)),
]


@pytest.mark.parametrize("make,ref,param,ks", DISCRETE_REF)
def test_discrete_log_prob_cdf_moments(make, ref, param, ks):
    dist = make()
    kf = jnp.asarray(ks, jnp.float32)
    lp = np.asarray(dist.log_prob(kf), np.float64)
    ref_lp = ref.logpmf(ks)
    finite = np.isfinite(ref_lp)
    np.testing.assert_array_equal(np.isfinite(lp), finite)
    np.testing.assert_allclose(lp[finite], ref_lp[finite], rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(np.asarray(dist.cdf(kf)), ref.cdf(ks), rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(float(dist.mean), ref.mean(), rtol=1e-5)
    np.testing.assert_allclose(float(dist.variance), ref.var(), rtol=1e-5)
    # Non-integer values have zero mass.
    assert np.all(np.asarray(dist.log_prob(kf + 0.5)) == -np.inf) or isinstance(dist, D.Bernoulli)


def _scipy_cdf_param(dist_name, param, value, ks):
    if dist_name == "Bernoulli":
        p = value if param == "probs" else sps.expit(value)
        return st.bernoulli(p).cdf(ks)
    if dist_name == "Binomial":
        n, v = value
        p = v if param == "probs" else sps.expit(v)
        return st.binom(n, p).cdf(ks)
    if dist_name == "Poisson":
        return st.poisson(value).cdf(ks)
    p = value if param == "probs" else sps.expit(value)
    return st.geom(p, loc=-1).cdf(ks)


@pytest.mark.parametrize("make,ref,param,ks", DISCRETE_REF)
def test_cdf_jvp_matches_finite_difference(make, ref, param, ks):
    dist = make()
    name = type(dist).__name__
    theta = getattr(dist, f"_{param}")
    kf = jnp.asarray(ks, jnp.float32)

    def cdf_of(t):
        leaves = {n: getattr(dist, f"_{n}") for n in dist._param_names}
        leaves[param] = t
        rebuilt = type(dist).tree_unflatten(None, [leaves[n] for n in dist._param_names])
        return rebuilt.cdf(kf)

    _, tangent = jax.jvp(cdf_of, (theta,), (jnp.ones_like(theta),))
    t64 = float(np.float32(theta))
    h = 1e-6 * max(abs(t64), 1.0)
    if name == "Binomial":
        n = float(dist.total_count)
        fd = (
            _scipy_cdf_param(name, param, (n, t64 + h), ks)
            - _scipy_cdf_param(name, param, (n, t64 - h), ks)
        ) / (2 * h)
    else:
        fd = (
            _scipy_cdf_param(name, param, t64 + h, ks) - _scipy_cdf_param(name, param, t64 - h, ks)
        ) / (2 * h)
    scale = max(np.abs(fd).max(), 1e-3)
    np.testing.assert_allclose(np.asarray(tangent), fd, atol=2e-4 * scale, rtol=2e-4)
    # Reverse mode works too.
    grad = jax.grad(lambda t: jnp.sum(cdf_of(t)))(theta)
    np.testing.assert_allclose(float(grad), float(jnp.sum(tangent)), rtol=1e-4, atol=1e-6)


def test_categorical_log_prob_cdf_moments():
    probs = np.array([0.1, 0.2, 0.3, 0.4])
    for dist in (D.Categorical(probs=probs), D.Categorical(logits=np.log(probs) + 3.0)):
        assert dist.num_categories == 4
        ks = np.arange(-1, 6)
        ref = st.rv_discrete(values=(np.arange(4), probs))
        lp = np.asarray(dist.log_prob(jnp.asarray(ks)))
        np.testing.assert_allclose(lp[1:5], np.log(probs), rtol=1e-5)
        assert lp[0] == -np.inf and np.all(lp[5:] == -np.inf)
        np.testing.assert_allclose(np.asarray(dist.cdf(ks)), ref.cdf(ks), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(float(dist.mean), ref.mean(), rtol=1e-5)
        np.testing.assert_allclose(float(dist.variance), ref.var(), rtol=1e-5)
        np.testing.assert_allclose(np.asarray(dist.probs), probs, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(dist.logits), np.log(probs), rtol=1e-5)
        assert dist.value_from_index(jnp.array(2.0)).dtype == jnp.int32
        assert float(dist.index_from_value(jnp.array(3))) == 3.0
    onehot = D.OneHotCategorical(probs=probs)
    x = onehot.value_from_index(jnp.array([0.0, 3.0]))
    np.testing.assert_array_equal(np.asarray(x), np.eye(4)[[0, 3]])
    np.testing.assert_array_equal(np.asarray(onehot.index_from_value(x)), [0.0, 3.0])
    np.testing.assert_allclose(np.asarray(onehot.log_prob(x)), np.log(probs[[0, 3]]), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(onehot.mean), probs, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(onehot.variance), probs * (1 - probs), rtol=1e-6)
    # jvp of the categorical cdf: d/dtheta sum_{j<=k} softmax(theta)_j.
    logits = jnp.array([0.3, -1.0, 2.0, 0.5])
    direction = jnp.array([1.0, -2.0, 0.5, 0.0])
    _, tangent = jax.jvp(
        lambda t: D.Categorical(logits=t).cdf(jnp.arange(4.0)), (logits,), (direction,)
    )
    l64, d64, h = np.asarray(logits, np.float64), np.asarray(direction, np.float64), 1e-6
    fd = (np.cumsum(sps.softmax(l64 + h * d64)) - np.cumsum(sps.softmax(l64 - h * d64))) / (2 * h)
    np.testing.assert_allclose(np.asarray(tangent), fd, atol=1e-5)


CONTINUOUS_REF = [
    (lambda: D.Normal(1.0, 2.0), st.norm(1.0, 2.0)),
    (lambda: D.LogNormal(0.5, 0.7), st.lognorm(0.7, scale=np.exp(0.5))),
    (lambda: D.Uniform(-1.0, 3.0), st.uniform(-1.0, 4.0)),
    (lambda: D.Exponential(0.5), st.expon(scale=2.0)),
    (lambda: D.Laplace(1.0, 2.0), st.laplace(1.0, 2.0)),
    (lambda: D.Logistic(-1.0, 0.5), st.logistic(-1.0, 0.5)),
    (lambda: D.Cauchy(0.0, 2.0), st.cauchy(0.0, 2.0)),
    (lambda: D.Gamma(0.1, 2.0), st.gamma(f32(0.1), scale=0.5)),
    (lambda: D.Gamma(50.0, 0.5), st.gamma(50.0, scale=2.0)),
    (lambda: D.Beta(0.3, 0.7), st.beta(f32(0.3), f32(0.7))),
    (lambda: D.Beta(20.0, 5.0), st.beta(20.0, 5.0)),
]


@pytest.mark.parametrize("make,ref", CONTINUOUS_REF)
def test_continuous_ks_log_prob_moments(make, ref):
    dist = make()
    n = 100_000
    samples = np.asarray(_sample(dist, KEY, n), np.float64)
    assert samples.shape == (n,)
    assert st.kstest(samples, ref.cdf).pvalue > 1e-4
    xs = ref.ppf(np.linspace(0.01, 0.99, 25))
    np.testing.assert_allclose(
        np.asarray(dist.log_prob(jnp.asarray(xs, jnp.float32))),
        ref.logpdf(np.float32(xs)),
        rtol=1e-4,
        atol=1e-4,
    )
    if isinstance(dist, D.Cauchy):
        assert np.isnan(dist.mean) and np.isnan(dist.variance)
    else:
        np.testing.assert_allclose(float(dist.mean), ref.mean(), rtol=1e-5)
        np.testing.assert_allclose(float(dist.variance), ref.var(), rtol=1e-5)


def test_continuous_out_of_support_log_prob():
    assert D.LogNormal(0.0, 1.0).log_prob(-1.0) == -jnp.inf
    assert D.Uniform(0.0, 1.0).log_prob(2.0) == -jnp.inf
    assert D.Exponential(1.0).log_prob(-0.5) == -jnp.inf
    assert D.Gamma(2.0, 1.0).log_prob(-0.5) == -jnp.inf
    assert D.Beta(2.0, 2.0).log_prob(1.5) == -jnp.inf


def test_dirichlet_marginals_and_log_prob():
    alpha = np.array([0.5, 1.0, 2.5])
    dist = D.Dirichlet(alpha)
    assert dist.event_shape == (3,) and dist.batch_shape == ()
    n = 100_000
    x = np.asarray(_sample(dist, KEY, n), np.float64)
    assert x.shape == (n, 3)
    np.testing.assert_allclose(x.sum(-1), 1.0, atol=1e-5)
    for i, a in enumerate(alpha):
        assert st.kstest(x[:, i], st.beta(a, alpha.sum() - a).cdf).pvalue > 1e-4
    pts = np.array([[0.2, 0.3, 0.5], [0.05, 0.15, 0.8]])
    np.testing.assert_allclose(
        np.asarray(dist.log_prob(pts)),
        [st.dirichlet(alpha).logpdf(p) for p in pts],
        rtol=1e-5,
    )
    np.testing.assert_allclose(np.asarray(dist.mean), st.dirichlet(alpha).mean(), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(dist.variance), st.dirichlet(alpha).var(), rtol=1e-5)
    batched = D.Dirichlet(jnp.ones((4, 2, 3)))
    assert batched.sample(KEY, 5).shape == (5, 4, 2, 3)
    assert batched.log_prob(batched.sample(KEY, 5)).shape == (5, 4, 2)


def test_multivariate_normal():
    loc = np.array([1.0, -2.0, 0.5])
    tril = np.array([[1.5, 0.0, 0.0], [0.6, 0.8, 0.0], [-0.4, 0.3, 2.0]])
    dist = D.MultivariateNormal(loc, tril)
    assert dist.event_shape == (3,) and dist.batch_shape == ()
    n = 100_000
    x = np.asarray(_sample(dist, KEY, n), np.float64)
    z = np.linalg.solve(tril, (x - loc).T).T
    for i in range(3):
        assert st.kstest(z[:, i], st.norm.cdf).pvalue > 1e-4
    corr = np.corrcoef(z.T)
    assert np.all(np.abs(corr - np.eye(3)) < 5 / np.sqrt(n))
    cov = tril @ tril.T
    ref = st.multivariate_normal(loc, cov)
    pts = x[:5]
    np.testing.assert_allclose(np.asarray(dist.log_prob(pts)), ref.logpdf(pts), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(dist.mean), loc)
    np.testing.assert_allclose(np.asarray(dist.variance), np.diag(cov), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(dist.covariance_matrix), cov, rtol=1e-6, atol=1e-6)
    # Batched parameters broadcast against sample dimensions.
    batched = D.MultivariateNormal(jnp.zeros((2, 1, 3)), jnp.broadcast_to(jnp.eye(3), (4, 3, 3)))
    assert batched.batch_shape == (2, 4)
    xs = batched.sample(KEY, 5)
    assert xs.shape == (5, 2, 4, 3)
    lp = batched.log_prob(xs)
    np.testing.assert_allclose(
        np.asarray(lp), st.multivariate_normal(np.zeros(3)).logpdf(np.asarray(xs)), rtol=1e-5
    )
    assert batched.log_prob(jnp.zeros(3)).shape == (2, 4)


# --------------------------------------------------------------------------------------------
# Reparameterization gradients
# --------------------------------------------------------------------------------------------


def _mc_grad(make, theta, fn, n=100_000, key=KEY):
    """Per-draw gradients of ``fn(rsample)`` w.r.t. ``theta``: returns (mean, standard error)."""
    keys = jax.random.split(key, n)

    def one(k):
        return jax.grad(lambda t: fn(make(t).rsample(k)))(theta)

    grads = np.asarray(jax.jit(jax.vmap(one))(keys), np.float64)
    return grads.mean(0), grads.std(0) / np.sqrt(n)


PSI1 = functools.partial(sps.polygamma, 1)


def _identity(x):
    return x


# name, make(theta vector), theta, statistics of one draw, exact d E[stat_i] / d theta_j,
# max standard error per entry. One compiled program per family.
REPARAM_CASES = [
    (
        "gamma",
        lambda t: D.Gamma(t[0], t[1]),
        [0.7, 1.5],
        lambda x: jnp.stack([x, jnp.log(x)]),
        [[1 / 1.5, -0.7 / 1.5**2], [PSI1(0.7), -1 / 1.5]],
        [0.01, 0.05],
    ),
    (
        "gamma_large",
        lambda t: D.Gamma(t[0], t[1]),
        [20.0, 0.5],
        lambda x: jnp.stack([x, jnp.log(x)]),
        [[1 / 0.5, -20 / 0.5**2], [PSI1(20.0), -1 / 0.5]],
        [0.1, 0.5],
    ),
    (
        "beta",
        lambda t: D.Beta(t[0], t[1]),
        [0.8, 2.0],
        lambda x: jnp.stack([x, jnp.log(x)]),
        [[2.0 / 2.8**2, -0.8 / 2.8**2], [PSI1(0.8) - PSI1(2.8), -PSI1(2.8)]],
        [0.005, 0.05],
    ),
    (
        "dirichlet",
        lambda t: D.Dirichlet(t),
        [0.9, 1.0, 2.0],
        lambda x: jnp.stack([x[0], jnp.log(x[0])]),
        [
            [3.0 / 3.9**2, -0.9 / 3.9**2, -0.9 / 3.9**2],
            [PSI1(0.9) - PSI1(3.9), -PSI1(3.9), -PSI1(3.9)],
        ],
        [0.005, 0.05],
    ),
    ("normal", lambda t: D.Normal(t[0], t[1]), [0.7, 2.0], jnp.square, [[1.4, 4.0]], [0.03]),
    (
        "lognormal",
        lambda t: D.LogNormal(t[0], t[1]),
        [0.2, 0.5],
        _identity,
        [[np.exp(0.325), 0.5 * np.exp(0.325)]],
        [0.01],
    ),
    ("exponential", lambda t: D.Exponential(t[0]), [2.0], _identity, [[-0.25]], [0.005]),
    (
        "uniform",
        lambda t: D.Uniform(t[0], t[1]),
        [-1.0, 3.0],
        jnp.square,
        [[(2 * -1.0 + 3.0) / 3, (2 * 3.0 - 1.0) / 3]],
        [0.02],
    ),
    ("laplace", lambda t: D.Laplace(t[0], t[1]), [0.5, 1.5], jnp.square, [[1.0, 6.0]], [0.05]),
    (
        "logistic",
        lambda t: D.Logistic(t[0], t[1]),
        [0.5, 1.5],
        jnp.square,
        [[1.0, 2 * 1.5 * np.pi**2 / 3]],
        [0.1],
    ),
]


@pytest.mark.parametrize(
    "name,make,theta,stats,exact,max_se", REPARAM_CASES, ids=[c[0] for c in REPARAM_CASES]
)
def test_reparameterization_gradients(name, make, theta, stats, exact, max_se):
    """Averages of pathwise gradients match closed-form d E[stat] / d theta within 5 SE."""
    n = 100_000
    theta = jnp.asarray(theta, jnp.float32)
    keys = jax.random.split(jax.random.fold_in(KEY, 7), n)

    def one(k):
        return jax.jacrev(lambda t: jnp.atleast_1d(stats(make(t).rsample(k))))(theta)

    grads = np.asarray(jax.jit(jax.vmap(one))(keys), np.float64)  # (n, stats, params)
    mean, se = grads.mean(0), grads.std(0) / np.sqrt(n)
    exact = np.asarray(exact, np.float64)
    max_se = np.asarray(max_se, np.float64)[:, None]
    assert mean.shape == exact.shape
    assert np.all(se < max_se), se
    assert np.all(np.abs(mean - exact) < 5 * se + 1e-6), (mean, exact, se)


def test_cauchy_pathwise_derivative():
    key = jax.random.key(3)
    loc, scale = jnp.float32(0.5), jnp.float32(2.0)
    x = D.Cauchy(loc, scale).rsample(key, 10)
    d_loc, d_scale = jax.jacfwd(lambda a, b: D.Cauchy(a, b).rsample(key, 10), (0, 1))(loc, scale)
    np.testing.assert_allclose(np.asarray(d_loc), 1.0)
    np.testing.assert_allclose(np.asarray(d_scale), np.asarray((x - loc) / scale), rtol=1e-5)


def test_multivariate_normal_gradients():
    loc = jnp.array([0.5, -1.0])
    tril = jnp.array([[1.0, 0.0], [0.5, 2.0]])
    key = jax.random.key(4)
    # E[x] = loc: d/dloc of mean(x) is the identity (exactly, per draw).
    jac = jax.jacfwd(lambda m: D.MultivariateNormal(m, tril).rsample(key))(loc)
    np.testing.assert_allclose(np.asarray(jac), np.eye(2), atol=1e-6)
    # d/dL E[|x - loc|^2] = d/dL trace(L L^T) = 2 L.
    mean, se = _mc_grad(
        lambda t: D.MultivariateNormal(loc, t), tril, lambda x: jnp.sum(jnp.square(x - loc))
    )
    assert np.all(se < 0.05)
    assert np.all(np.abs(np.tril(mean) - 2 * np.asarray(tril)) < 5 * se + 1e-6)


def test_discrete_sample_has_no_gradient():
    grad = jax.grad(lambda p: jnp.sum(D.Bernoulli(probs=p).sample(KEY, 10)))(0.3)
    assert float(grad) == 0.0
    grad = jax.jit(jax.grad(lambda r: jnp.sum(D.Poisson(r).sample(KEY, 4))))(3.0)
    assert float(grad) == 0.0
    grad = jax.jit(jax.grad(lambda p: jnp.sum(D.Binomial(10, probs=p).sample(KEY, 4))))(0.3)
    assert float(grad) == 0.0


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: D.Normal(0.0, -1.0), r"Normal: `scale` must be > 0, got min -1\.0"),
        (lambda: D.Normal(jnp.nan, 1.0), r"Normal: `loc` must be finite"),
        (lambda: D.LogNormal(0.0, 0.0), r"LogNormal: `scale` must be > 0"),
        (lambda: D.Laplace(0.0, [1.0, -2.0]), r"Laplace: `scale`"),
        (lambda: D.Logistic(0.0, -1.0), r"Logistic: `scale`"),
        (lambda: D.Cauchy(0.0, 0.0), r"Cauchy: `scale`"),
        (lambda: D.Uniform(1.0, 1.0), r"Uniform: `low` must be < `high`"),
        (lambda: D.Exponential(0.0), r"Exponential: `rate` must be > 0"),
        (lambda: D.Gamma(-1.0, 1.0), r"Gamma: `concentration` must be > 0"),
        (lambda: D.Gamma(1.0, -1.0), r"Gamma: `rate` must be > 0"),
        (lambda: D.Beta(0.0, 1.0), r"Beta: `concentration1`"),
        (lambda: D.Beta(1.0, -2.0), r"Beta: `concentration0`"),
        (lambda: D.Dirichlet([1.0, 0.0]), r"Dirichlet: `concentration` must be > 0"),
        (lambda: D.Dirichlet(1.0), r"Dirichlet: `concentration` must have at least one"),
        (lambda: D.MultivariateNormal(0.0, jnp.eye(2)), r"MultivariateNormal: `loc`"),
        (lambda: D.MultivariateNormal(jnp.zeros(2), jnp.ones((2, 3))), r"`scale_tril` must be"),
        (lambda: D.MultivariateNormal(jnp.zeros(3), jnp.eye(2)), r"last dimension of `loc`"),
        (lambda: D.MultivariateNormal(jnp.zeros(2), -jnp.eye(2)), r"positive diagonal"),
        (lambda: D.MultivariateNormal(jnp.zeros(2), jnp.ones((2, 2))), r"lower triangular"),
        (lambda: D.Bernoulli(probs=1.5), r"Bernoulli: `probs` must be in \[0, 1\]"),
        (lambda: D.Bernoulli(logits=jnp.inf), r"Bernoulli: `logits` must be finite"),
        (lambda: D.Geometric(probs=0.0), r"Geometric: `probs` must be in \(0, 1\]"),
        (lambda: D.Binomial(-1, probs=0.5), r"Binomial: `total_count` must be a non-negative"),
        (lambda: D.Binomial(2.5, probs=0.5), r"Binomial: `total_count` must be a non-negative"),
        (lambda: D.Binomial(5, probs=-0.1), r"Binomial: `probs` must be in \[0, 1\]"),
        (lambda: D.Poisson(-1.0), r"Poisson: `rate` must be >= 0"),
        (lambda: D.Categorical(probs=[0.5, 0.6]), r"Categorical: `probs` must sum to 1"),
        (lambda: D.Categorical(probs=[1.5, -0.5]), r"Categorical: `probs` must be non-negative"),
        (lambda: D.Categorical(probs=0.5), r"Categorical: `probs` must have at least one"),
        (lambda: D.OneHotCategorical(logits=[0.0, jnp.nan]), r"OneHotCategorical: `logits`"),
        (lambda: D.Categorical(logits=jnp.zeros((2, 0))), r"Categorical: `logits`"),
    ],
)
def test_invalid_parameters_raise(build, match):
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize(
    "build,match",
    [
        (
            lambda: D.Normal(jnp.zeros(3), jnp.ones(2)),
            r"Normal: shapes of `loc` \(3,\) and `scale`",
        ),
        (lambda: D.Gamma(jnp.ones(2), jnp.ones(3)), r"`concentration` \(2,\) and `rate` \(3,\)"),
        (lambda: D.Uniform(jnp.zeros(2), jnp.ones(4)), r"`low` \(2,\) and `high` \(4,\)"),
        (lambda: D.Binomial(jnp.ones(2), probs=jnp.ones(3) / 2), r"`total_count` .* `probs`"),
        (
            lambda: D.MultivariateNormal(
                jnp.zeros((2, 3)), jnp.broadcast_to(jnp.eye(3), (4, 3, 3))
            ),
            r"`loc` \(2,\) and `scale_tril` \(4,\)",
        ),
    ],
)
def test_non_broadcasting_shapes_raise(build, match):
    with pytest.raises(ValueError, match=match):
        build()


@pytest.mark.parametrize("cls", [D.Bernoulli, D.Categorical, D.OneHotCategorical, D.Geometric])
def test_probs_logits_exclusive(cls):
    with pytest.raises(ValueError, match="exactly one of `probs` or `logits`, got both"):
        cls(probs=jnp.array([0.5, 0.5]), logits=jnp.array([0.0, 0.0]))
    with pytest.raises(ValueError, match="got neither"):
        cls()


def test_binomial_probs_logits_exclusive():
    with pytest.raises(ValueError, match="got both"):
        D.Binomial(3, probs=0.5, logits=0.0)
    with pytest.raises(ValueError, match="got neither"):
        D.Binomial(3)


@pytest.mark.parametrize(
    "dist", [D.Normal(0.0, 1.0), D.Poisson(2.0), D.Categorical(logits=jnp.zeros(3))]
)
def test_bad_key_and_sample_shape(dist):
    for bad in (0, np.array([1, 2, 3], np.uint32), jnp.zeros(2), "key"):
        with pytest.raises(TypeError, match="`key`"):
            dist.sample(bad)
    with pytest.raises(ValueError, match="`key`"):
        dist.sample(jax.random.split(KEY, 2))
    with pytest.raises(ValueError, match="`sample_shape`"):
        dist.sample(KEY, (2, -1))
    with pytest.raises(TypeError, match="`sample_shape`"):
        dist.sample(KEY, (2.5,))
    assert dist.sample(KEY, 3).shape[:1] == (3,)
    assert dist.sample(jax.random.PRNGKey(0), (2, 1)).shape[:2] == (2, 1)
    if dist.is_discrete:
        with pytest.raises(TypeError, match="`key`"):
            dist.uniforms(1.0)
    else:
        with pytest.raises(TypeError, match="`key`"):
            dist.rsample(None)


def test_construction_under_jit_does_not_validate_values():
    @jax.jit
    def build(scale, probs, n):
        d1 = D.Normal(0.0, scale)
        d2 = D.Binomial(n, probs=probs)
        d3 = D.Categorical(probs=jnp.stack([probs, 1 - probs]))
        return d1.log_prob(0.0), d2.log_prob(1.0), d3.log_prob(0)

    out = build(-1.0, 1.5, 2.5)  # invalid values, but traced: no error
    assert len(out) == 3
    # Shape checks still apply under tracing.
    with pytest.raises(ValueError, match="do not broadcast"):
        jax.jit(lambda a, b: D.Normal(a, b).mean)(jnp.zeros(2), jnp.ones(3))


# --------------------------------------------------------------------------------------------
# Pytrees, dtypes and repr
# --------------------------------------------------------------------------------------------

ALL_DISTS = [
    D.Normal(0.0, 1.0),
    D.MultivariateNormal(jnp.zeros(2), jnp.eye(2)),
    D.LogNormal(0.0, 1.0),
    D.Uniform(0.0, 1.0),
    D.Exponential(1.0),
    D.Laplace(0.0, 1.0),
    D.Logistic(0.0, 1.0),
    D.Cauchy(0.0, 1.0),
    D.Gamma(2.0, 1.0),
    D.Beta(2.0, 3.0),
    D.Dirichlet(jnp.ones(3)),
    D.Bernoulli(probs=0.3),
    D.Bernoulli(logits=0.3),
    D.Categorical(probs=jnp.array([0.2, 0.8])),
    D.OneHotCategorical(logits=jnp.zeros(3)),
    D.Binomial(5, probs=0.3),
    D.Poisson(2.0),
    D.Geometric(logits=0.5),
]


@pytest.mark.parametrize("dist", ALL_DISTS, ids=lambda d: repr(d))
def test_pytree_jit_and_attributes(dist):
    leaves, treedef = jax.tree_util.tree_flatten(dist)
    # leaves are arrays: NumPy when built from concrete Python/NumPy values (so range checks
    # run even inside a jit trace), jax.Array otherwise
    assert all(isinstance(leaf, jax.Array | np.ndarray) for leaf in leaves)
    rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
    assert type(rebuilt) is type(dist)
    doubled = jax.tree_util.tree_map(lambda x: x, dist)
    assert repr(doubled) == repr(dist)
    # Sentinel leaves are accepted by unflatten (no validation).
    jax.tree_util.tree_unflatten(treedef, [object()] * len(leaves))
    # The distribution passes through jit as an argument.
    x = jax.jit(lambda d, k: d.sample(k, 4))(dist, KEY)
    assert x.shape == (4, *dist.batch_shape, *dist.event_shape)
    lp_eager = dist.log_prob(x)
    lp_jit = jax.jit(lambda d, v: d.log_prob(v))(dist, x)
    # op by op vs one fused program: float32 rounding (lgamma terms of Beta/Gamma)
    np.testing.assert_allclose(np.asarray(lp_jit), np.asarray(lp_eager), rtol=1e-5, atol=1e-6)
    assert lp_eager.shape == (4, *dist.batch_shape)
    assert dist.mean.shape == dist.batch_shape + dist.event_shape
    assert dist.variance.shape == dist.batch_shape + dist.event_shape
    assert isinstance(dist.is_discrete, bool) and isinstance(dist.is_reparameterized, bool)
    assert dist.is_reparameterized == (not dist.is_discrete)
    assert type(dist).__name__ in repr(dist)
    if dist.is_discrete:
        u = dist.uniforms(KEY, 4)
        assert u.dtype == dist.dtype and bool(jnp.all((u > 0) & (u < 1)))
        k = dist.icdf(u)
        assert k.dtype == dist.dtype
        np.testing.assert_array_equal(np.asarray(dist.value_from_index(k)), np.asarray(x))
        np.testing.assert_array_equal(
            np.asarray(dist.index_from_value(dist.value_from_index(k))), np.asarray(k)
        )


def test_continuous_sample_is_rsample():
    for dist in (D.Normal(0.0, 1.0), D.Uniform(0.0, 2.0), D.Exponential(3.0)):
        np.testing.assert_array_equal(
            np.asarray(dist.sample(KEY, (2, 3))), np.asarray(dist.rsample(KEY, (2, 3)))
        )


def test_vmap_over_parameters():
    locs, scales = jnp.linspace(-1, 1, 5), jnp.linspace(0.5, 2, 5)
    batched = D.Normal(locs, scales)
    lp = jax.vmap(lambda d: d.log_prob(0.3))(batched)
    np.testing.assert_allclose(np.asarray(lp), st.norm(locs, scales).logpdf(0.3), rtol=1e-5)
    rates = jnp.array([0.5, 5.0, 500.0])
    u = jnp.array([0.1, 0.5, 0.9])
    k_vmap = jax.vmap(lambda d, uu: d.icdf(uu))(D.Poisson(rates), u)
    k_batch = D.Poisson(rates).icdf(u)
    np.testing.assert_array_equal(np.asarray(k_vmap), np.asarray(k_batch))
    ns = jnp.array([3.0, 30.0, 3000.0])
    k_vmap = jax.vmap(lambda n, uu: D.Binomial(n, probs=0.4).icdf(uu))(ns, u)
    np.testing.assert_array_equal(np.asarray(k_vmap), st.binom(np.asarray(ns), f32(0.4)).ppf(u))
    keys = jax.random.split(KEY, 3)
    draws = jax.vmap(lambda d, k: d.sample(k, 2))(D.Gamma(jnp.ones(3), jnp.ones(3)), keys)
    assert draws.shape == (3, 2)


def test_dtypes():
    assert D.Normal(0, 1).dtype == jnp.float32  # integers promoted to the default float
    assert D.Poisson(3).dtype == jnp.float32
    assert D.Binomial(3, probs=1).mean.dtype == jnp.float32
    assert D.Geometric(probs=1).sample(KEY, 2).dtype == jnp.float32
    assert D.Categorical(logits=jnp.zeros(3)).sample(KEY, 2).dtype == jnp.int32
    with jax.enable_x64(True):
        d = D.Normal(jnp.float64(0.0), 1.0)
        assert d.dtype == jnp.float64 and d.sample(KEY, 2).dtype == jnp.float64
        assert D.Gamma(jnp.float64(2.0), 1).sample(KEY).dtype == jnp.float64
        assert D.Poisson(jnp.float64(2.0)).uniforms(KEY, 3).dtype == jnp.float64
        assert D.Geometric(logits=jnp.float64(0.0)).sample(KEY, 3).dtype == jnp.float64
        assert D.Bernoulli(logits=jnp.float64(0.0)).cdf(0).dtype == jnp.float64


# --------------------------------------------------------------------------------------------
# No NaN / inf at parameter extremes
# --------------------------------------------------------------------------------------------


def _finite_everywhere(make, params, values):
    def objective(t):
        return jnp.sum(make(t).log_prob(values))

    for t in params:
        t = jnp.float32(t)
        d = make(t)
        assert np.all(np.isfinite(np.asarray(d.log_prob(values))))
        assert np.all(np.isfinite(np.asarray(d.cdf(values))))
        assert np.isfinite(float(jax.grad(objective)(t)))
        _, tangent = jax.jvp(lambda s: make(s).cdf(values), (t,), (jnp.float32(1.0),))
        assert np.all(np.isfinite(np.asarray(tangent)))
        assert np.all(np.isfinite(np.asarray(d.sample(KEY, 4))))


PROB_GRID = [1e-6, 1e-3, 0.5, 1 - 1e-3, 1 - 1e-6]
LOGIT_GRID = [-30.0, -5.0, 0.0, 5.0, 30.0]


def test_no_nan_bernoulli():
    v = jnp.array([0.0, 1.0])
    _finite_everywhere(lambda t: D.Bernoulli(probs=t), PROB_GRID, v)
    _finite_everywhere(lambda t: D.Bernoulli(logits=t), LOGIT_GRID, v)


def test_no_nan_binomial():
    v = jnp.array([0.0, 1.0, 7.0, 19.0, 20.0])
    _finite_everywhere(lambda t: D.Binomial(20, probs=t), PROB_GRID, v)
    _finite_everywhere(lambda t: D.Binomial(20, logits=t), LOGIT_GRID, v)


def test_no_nan_geometric():
    v = jnp.array([0.0, 1.0, 7.0, 100.0])
    _finite_everywhere(lambda t: D.Geometric(probs=t), PROB_GRID, v)
    _finite_everywhere(lambda t: D.Geometric(logits=t), LOGIT_GRID, v)


def test_no_nan_poisson():
    v = jnp.array([0.0, 1.0, 7.0, 100.0, 10_500.0])
    _finite_everywhere(D.Poisson, [1e-4, 1e-2, 5.0, 1e3, 1e4], v)


def test_no_nan_categorical():
    v = jnp.array([0, 1, 2])
    for cls in (D.Categorical, D.OneHotCategorical):
        for t in LOGIT_GRID:
            logits = jnp.array([t, 0.0, -t])
            d = cls(logits=logits)
            value = v if cls is D.Categorical else jax.nn.one_hot(v, 3)
            assert np.all(np.isfinite(np.asarray(d.log_prob(value))))
            assert np.all(np.isfinite(np.asarray(d.cdf(v.astype(jnp.float32)))))
            g = jax.grad(lambda x: jnp.sum(cls(logits=x).log_prob(value)))(logits)
            assert np.all(np.isfinite(np.asarray(g)))
        for p in PROB_GRID:
            probs = jnp.array([p, (1 - p) / 2, (1 - p) / 2])
            value = v if cls is D.Categorical else jax.nn.one_hot(v, 3)
            g = jax.grad(lambda x: jnp.sum(cls(probs=x).log_prob(value)))(probs)
            assert np.all(np.isfinite(np.asarray(g)))
            assert np.all(np.isfinite(np.asarray(cls(probs=probs).cdf(v.astype(jnp.float32)))))


@pytest.mark.parametrize("param", ["probs", "logits"])
def test_bernoulli_sampled_log_prob_matches_log_prob(param):
    # the score function's fast path: same value and gradient at values the site can draw
    def both(theta, x):
        d = D.Bernoulli(**{param: theta})
        return d._sampled_log_prob(x), d.log_prob(x)

    thetas = [1e-6, 0.3, 0.5, 0.999] if param == "probs" else [-12.0, -0.4, 0.0, 3.0]
    for t in thetas:
        for x in (0.0, 1.0):
            fast, ref = both(jnp.float32(t), x)
            np.testing.assert_allclose(fast, ref, rtol=2e-6, atol=1e-7)
            g_fast = jax.grad(lambda th, x=x: both(th, x)[0])(jnp.float32(t))
            g_ref = jax.grad(lambda th, x=x: both(th, x)[1])(jnp.float32(t))
            np.testing.assert_allclose(g_fast, g_ref, rtol=2e-6)
    # at the boundary the drawn value's log-probability and gradient stay finite
    if param == "probs":
        assert float(jax.grad(lambda p: both(p, 0.0)[0])(jnp.float32(0.0))) == -1.0
        assert float(jax.grad(lambda p: both(p, 1.0)[0])(jnp.float32(1.0))) == 1.0
