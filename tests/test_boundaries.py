"""Distributions and estimators at the boundaries of the parameter spaces, and NaN poisoning.

For every family, at every boundary of its parameter space and 1e-7 inside it, in float32 and
float64: ``log_prob`` and its gradient with respect to every float parameter are finite and
equal to closed forms derived by hand wherever the mass / density of the observed value is
positive (``-inf`` where it is 0); discrete ``cdf`` and its JVP are finite and exact. Traced
(``jax.jit``) invalid and NaN parameters in the same batch give NaN ``log_prob``/``cdf``/
samples (the out-of-range label ``K`` for ``Categorical``), without touching the valid elements.

Each family and dtype is compiled once: every boundary case, observed value and invalid
parameter is one element of a batch (the elements are independent, so the gradient of the
summed log-probability is the element-wise gradient).

References are float64 NumPy/SciPy evaluations at the dtype-rounded parameters.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special as sps
from _stats import assert_unbiased

import jaxestim as je
import jaxestim.distributions as D

KEY = jax.random.key(7)
EPS = 1e-7  # distance from the boundary


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    if request.param == "float64":
        with jax.enable_x64(True):
            yield np.float64
    else:
        yield np.float32


def _tol(dtype):
    return 2e-5 if dtype == np.float32 else 1e-10


def _rounded(x, dtype):
    """``x`` rounded to ``dtype`` and back to float64 (what the distribution actually sees)."""
    return np.asarray(np.asarray(x, np.float64).astype(dtype), np.float64)


def _close(actual, expected, dtype, what, scale=None):
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    scale = np.abs(expected) if scale is None else np.asarray(scale, np.float64)
    tol = _tol(dtype)
    assert np.all(np.isfinite(actual)), f"{what}: non-finite {actual}"
    err = np.abs(actual - expected)
    bad = err > tol * np.maximum(scale, 1.0)
    assert not np.any(bad), f"{what}: got {actual[bad]}, expected {expected[bad]}"


def _errstate():
    return np.errstate(divide="ignore", invalid="ignore", over="ignore")


# --------------------------------------------------------------------------------------------
# Discrete families
# --------------------------------------------------------------------------------------------
#
# A case: parameter columns (the first of which is differentiated, unless `diff` says
# otherwise), the observed values, and float64 reference functions of the rounded parameters.


def _binomial_refs(n, p, k):
    """log pmf, d/dp log pmf, cdf(k) and d/dp cdf(k) of Binomial(n, p) by hand."""
    with _errstate():
        log_c = sps.gammaln(n + 1) - sps.gammaln(k + 1) - sps.gammaln(n - k + 1)
        lp = log_c + sps.xlogy(k, p) + sps.xlog1py(n - k, -p)
        lp = np.where((k >= 0) & (k <= n), lp, -np.inf)
        # d/dp = k/p - (n - k)/(1 - p), a zero count contributing 0.
        dlp = np.where(k > 0, k / p, 0.0) - np.where(n - k > 0, (n - k) / (1 - p), 0.0)
        top = np.where(np.isfinite(n), np.minimum(k, n), -1).astype(int)
        cdf = np.array(
            [
                np.sum(np.exp(_binomial_refs_pmf(nn, pp, np.arange(0, kk + 1))))
                for nn, pp, kk in zip(n, p, top, strict=True)
            ]
        )
        cdf = np.where(k < 0, 0.0, np.where(k >= n, 1.0, cdf))
        # d/dp P(K <= k) = -n pmf(k; n - 1, p) for 0 <= k < n.
        inner = (k >= 0) & (k < n)
        dcdf = np.where(
            inner, -n * np.exp(_binomial_refs_pmf(n - 1, p, np.where(inner, k, 0))), 0.0
        )
    return lp, dlp, cdf, dcdf


def _binomial_refs_pmf(n, p, k):
    with _errstate():
        log_c = sps.gammaln(n + 1) - sps.gammaln(k + 1) - sps.gammaln(n - k + 1)
        return log_c + sps.xlogy(k, p) + sps.xlog1py(n - k, -p)


def _binary_logit_refs(refs, n, logit, k):
    """References in the logits parameterization from those in p (chain rule dp/dl = p q)."""
    p = sps.expit(logit)
    q = sps.expit(-logit)
    _, _, cdf, dcdf = refs(n, p, k)
    # Exact in log space (p may underflow): k log p + (n - k) log q.
    log_c = sps.gammaln(n + 1) - sps.gammaln(k + 1) - sps.gammaln(n - k + 1)
    lp = np.where(
        (k >= 0) & (k <= n),
        log_c + k * -np.logaddexp(0, -logit) + (n - k) * -np.logaddexp(0, logit),
        -np.inf,
    )
    dlp = k - n * p  # d/dl [k log p + (n - k) log q] = k q - (n - k) p
    return lp, dlp, cdf, dcdf * p * q


def _case_ids(*grids):
    return np.array(list(itertools.product(*grids)), np.float64).T


INVALID_PROBS = [-EPS, 1 + 1e-3, 1.5, np.nan, np.inf]


def _check_discrete(make, cols, value, k, refs, dtype, *, diff=-1, invalid=()):
    """Runs log_prob/grad/cdf/JVP/sample under one jit and compares with ``refs``.

    ``cols``: parameter columns (float64, shape (B,)); ``diff``: index of the differentiated
    column; ``invalid``: boolean mask (B,) of elements with invalid parameters.
    """
    params = tuple(jnp.asarray(c, dtype) for c in cols)
    rounded = [np.asarray(c, np.float64) for c in params]
    value = jnp.asarray(value)
    k = jnp.asarray(k, dtype)

    @jax.jit
    def run(ps):
        def lp_sum(x):
            qs = list(ps)
            qs[diff] = x
            return jnp.sum(make(*qs).log_prob(value))

        d = make(*ps)
        lp = d.log_prob(value)
        grad = jax.grad(lp_sum)(ps[diff])

        def cdf_of(x):
            qs = list(ps)
            qs[diff] = x
            return make(*qs).cdf(k)

        cdf, cdf_dot = jax.jvp(cdf_of, (ps[diff],), (jnp.ones_like(ps[diff]),))
        return lp, grad, cdf, cdf_dot, d.sample(KEY)

    lp, grad, cdf, cdf_dot, sample = (np.asarray(a, np.float64) for a in run(params))
    with _errstate():
        ref_lp, ref_grad, ref_cdf, ref_dcdf = refs(*rounded, np.asarray(k, np.float64))
    invalid = np.zeros(lp.shape, bool) if len(invalid) == 0 else np.asarray(invalid)
    ok = ~invalid
    pos = ok & np.isfinite(ref_lp)
    zero_mass = ok & ~np.isfinite(ref_lp)
    _close(lp[pos], ref_lp[pos], dtype, "log_prob")
    assert np.all(lp[zero_mass] == -np.inf), f"log_prob of zero-mass values: {lp[zero_mass]}"
    _close(grad[pos], ref_grad[pos], dtype, "d log_prob")
    _close(cdf[ok], ref_cdf[ok], dtype, "cdf", scale=np.ones(ok.sum()))
    _close(cdf_dot[ok], ref_dcdf[ok], dtype, "JVP of cdf")
    assert np.all(np.isfinite(sample[ok]))
    assert np.all(np.isnan(lp[invalid])), lp[invalid]
    assert np.all(np.isnan(cdf[invalid])), cdf[invalid]
    assert np.all(np.isnan(sample[invalid])), sample[invalid]  # sample = icdf(uniforms)
    return sample


def test_bernoulli_probs(dtype):
    ps = [0.0, EPS, 1 - EPS, 1.0]
    p, x = _case_ids(ps + INVALID_PROBS, [0.0, 1.0])
    invalid = ~((p >= 0) & (p <= 1))

    def refs(p, k):
        return _binomial_refs(np.ones_like(p), p, k)

    sample = _check_discrete(
        lambda p: D.Bernoulli(probs=p), [p], x, x, refs, dtype, invalid=invalid
    )
    # Point masses.
    np.testing.assert_array_equal(sample[p == 0], 0.0)
    np.testing.assert_array_equal(sample[p == 1], 1.0)


def test_bernoulli_logits(dtype):
    logit, x = _case_ids([-100.0, -40.0, -16.2, 16.2, 40.0, 100.0, np.inf, -np.inf, np.nan], [0, 1])
    invalid = ~np.isfinite(logit)

    def refs(lg, k):
        return _binary_logit_refs(_binomial_refs, np.ones_like(lg), lg, k)

    _check_discrete(lambda t: D.Bernoulli(logits=t), [logit], x, x, refs, dtype, invalid=invalid)


BINOMIAL_KS = [0.0, 1.0, 50.0, 99.0, 100.0]


def test_binomial_probs(dtype):
    ps = [0.0, EPS, 1 - EPS, 1.0]
    n, p, k = _case_ids([100.0], ps + INVALID_PROBS, BINOMIAL_KS)
    # total_count = 0 (a point mass at 0), and invalid total counts.
    n0, p0, k0 = _case_ids([0.0, -1.0, 2.5, np.nan], [0.0, 0.5, 1.0], [0.0])
    n, p, k = (np.concatenate(a) for a in ((n, n0), (p, p0), (k, k0)))
    invalid = ~((p >= 0) & (p <= 1)) | ~((n >= 0) & (n == np.floor(n)))
    sample = _check_discrete(
        lambda n, p: D.Binomial(n, probs=p), [n, p], k, k, _binomial_refs, dtype, invalid=invalid
    )
    np.testing.assert_array_equal(sample[(p == 0) & ~invalid], 0.0)
    np.testing.assert_array_equal(sample[(p == 1) & ~invalid], n[(p == 1) & ~invalid])


def test_binomial_logits(dtype):
    logits = [-100.0, -40.0, -16.2, 16.2, 40.0, 100.0, np.inf, np.nan]
    n, logit, k = _case_ids([100.0], logits, BINOMIAL_KS)
    invalid = ~np.isfinite(logit)

    def refs(n, lg, k):
        return _binary_logit_refs(_binomial_refs, n, lg, k)

    _check_discrete(
        lambda n, t: D.Binomial(n, logits=t), [n, logit], k, k, refs, dtype, invalid=invalid
    )


def _poisson_refs(rate, k):
    with _errstate():

        def log_pmf(j):
            return sps.xlogy(j, rate) - rate - sps.gammaln(j + 1)

        lp = np.where(k >= 0, log_pmf(k), -np.inf)
        dlp = np.where(k > 0, k / rate, 0.0) - 1.0
        tops = np.maximum(k, -1).astype(int)
        cdf = np.array(
            [
                np.sum(np.exp(sps.xlogy(js, r) - r - sps.gammaln(js + 1)))
                for r, js in ((r, np.arange(kk + 1)) for r, kk in zip(rate, tops, strict=True))
            ]
        )
        dcdf = np.where(k >= 0, -np.exp(log_pmf(np.maximum(k, 0))), 0.0)
    return lp, dlp, cdf, dcdf


def test_poisson(dtype):
    rate, k = _case_ids([0.0, EPS, 1e-30, -EPS, -1.0, np.inf, np.nan], [0.0, 1.0, 2.0, 20.0])
    invalid = ~((rate >= 0) & np.isfinite(rate))
    sample = _check_discrete(D.Poisson, [rate], k, k, _poisson_refs, dtype, invalid=invalid)
    np.testing.assert_array_equal(sample[rate == 0], 0.0)


def test_poisson_constructor_accepts_zero_rate():
    with pytest.raises(ValueError, match=r"Poisson: `rate` must be >= 0"):
        D.Poisson(-EPS)


def _geometric_refs(p, k):
    with _errstate():
        lp = np.where(k >= 0, sps.xlog1py(k, -p) + np.log(p), -np.inf)
        dlp = 1 / p - np.where(k > 0, k / (1 - p), 0.0)
        ks = np.maximum(k, 0)
        cdf = np.where(k >= 0, -np.expm1((ks + 1) * np.log1p(-p)), 0.0)
        # d/dp [1 - (1 - p)**(k + 1)] = (k + 1) (1 - p)**k  (0**0 = 1).
        dcdf = np.where(k >= 0, (ks + 1) * np.power(1 - p, ks), 0.0)
    return lp, dlp, cdf, dcdf


def test_geometric_probs(dtype):
    ps = [EPS, 0.3, 0.7, 1 - EPS, 1.0, 0.0, -EPS, 1 + EPS, np.nan]
    p, k = _case_ids(ps, [-1.0, 0.0, 1.0, 7.0, 100.0])
    invalid = ~((p > 0) & (p <= 1))
    sample = _check_discrete(
        lambda p: D.Geometric(probs=p), [p], k, k, _geometric_refs, dtype, invalid=invalid
    )
    np.testing.assert_array_equal(sample[p == 1], 0.0)


def test_geometric_logits(dtype):
    logit, k = _case_ids([-16.2, 16.2, 40.0, 100.0, np.inf, np.nan], [0.0, 1.0, 7.0, 100.0])
    invalid = ~np.isfinite(logit)

    def refs(lg, k):
        p, q = sps.expit(lg), sps.expit(-lg)
        _, _, cdf, _ = _geometric_refs(p, k)
        log_q = -np.logaddexp(0, lg)
        lp = k * log_q - np.logaddexp(0, -lg)
        dlp = q - k * p
        # d/dl [1 - q**(k + 1)] = (k + 1) q**(k + 1) p, in log space.
        dcdf = (k + 1) * p * np.exp((k + 1) * log_q)
        cdf = -np.expm1((k + 1) * log_q)
        return lp, dlp, cdf, dcdf

    _check_discrete(lambda t: D.Geometric(logits=t), [logit], k, k, refs, dtype, invalid=invalid)


def test_geometric_constructor():
    assert float(D.Geometric(probs=1.0).log_prob(0.0)) == 0.0
    with pytest.raises(ValueError, match=r"Geometric: `probs` must be in \(0, 1\]"):
        D.Geometric(probs=0.0)


def test_constructors_accept_boundaries():
    for d in (
        D.Bernoulli(probs=0.0),
        D.Bernoulli(probs=1.0),
        D.Binomial(10, probs=0.0),
        D.Binomial(10, probs=1.0),
        D.Binomial(0, probs=0.5),
        D.Poisson(0.0),
        D.Geometric(probs=1.0),
        D.Categorical(probs=[1.0, 0.0, 0.0]),
        D.OneHotCategorical(probs=[0.0, 1.0]),
    ):
        assert bool(jnp.all(d._params_valid()))


# -- Categorical / OneHotCategorical ----------------------------------------------------------

CAT_PROBS = [
    [1.0, 0.0, 0.0],
    [0.0, 1.0, 0.0],
    [0.0, 0.0, 1.0],
    [0.5, 0.0, 0.5],
    [1 - 2 * EPS, EPS, EPS],
    [EPS, 1 - 2 * EPS, EPS],
    [2.0, 0.0, 1.0],  # unnormalized (traced probs are renormalized)
]
CAT_INVALID_PROBS = [
    [1.5, -0.5, 0.0],
    [np.nan, 0.5, 0.5],
    [np.inf, 0.0, 0.0],
    [0.0, 0.0, 0.0],
]
CAT_LOGITS = [
    [0.0, -16.2, -16.2],
    [0.0, -100.0, 0.0],
    [-1e4, 0.0, 3.0],
    [30.0, -30.0, 0.0],
]
CAT_INVALID_LOGITS = [[0.0, -np.inf, 0.0], [np.nan, 0.0, 0.0], [np.inf, 0.0, 0.0]]
CAT_DIRECTION = np.array([1.0, -2.0, 0.5])


def _categorical_refs_probs(p, j):
    """log(p_j / S), d/dp_i = [i = j]/p_j - 1/S, cdf and its JVP along CAT_DIRECTION."""
    s = p.sum(-1, keepdims=True)
    rows = np.arange(len(j))
    with _errstate():
        lp = np.log(p[rows, j]) - np.log(s[:, 0])
        grad = -1 / s * np.ones_like(p)
        grad[rows, j] += 1 / p[rows, j]
    cum = np.cumsum(p, -1)[rows, j]
    vcum = np.cumsum(np.broadcast_to(CAT_DIRECTION, p.shape), -1)[rows, j]
    cdf = cum / s[:, 0]
    dcdf = vcum / s[:, 0] - cum * CAT_DIRECTION.sum() / s[:, 0] ** 2
    return lp, grad, cdf, dcdf


def _categorical_refs_logits(lg, j):
    """log_softmax(l)_j, d/dl_i = [i = j] - softmax_i, cdf and its JVP along CAT_DIRECTION."""
    rows = np.arange(len(j))
    ls = sps.log_softmax(lg, -1)
    sm = np.exp(ls)
    lp = ls[rows, j]
    grad = -sm.copy()
    grad[rows, j] += 1
    cdf = np.cumsum(sm, -1)[rows, j]
    # d softmax_i = softmax_i (v_i - sum_m softmax_m v_m)
    dsm = sm * (CAT_DIRECTION - (sm * CAT_DIRECTION).sum(-1, keepdims=True))
    return lp, grad, cdf, np.cumsum(dsm, -1)[rows, j]


@pytest.mark.parametrize("cls", [D.Categorical, D.OneHotCategorical])
@pytest.mark.parametrize("param", ["probs", "logits"])
def test_categorical(dtype, cls, param):
    valid_rows = CAT_PROBS if param == "probs" else CAT_LOGITS
    bad_rows = CAT_INVALID_PROBS if param == "probs" else CAT_INVALID_LOGITS
    rows = np.array(valid_rows + bad_rows, np.float64)
    idx = np.repeat(np.arange(len(rows)), 3)
    j = np.tile(np.arange(3), len(rows))
    table = jnp.asarray(rows[idx], dtype)
    rounded = np.asarray(table, np.float64)
    invalid = idx >= len(valid_rows)
    value = jax.nn.one_hot(j, 3, dtype=dtype) if cls is D.OneHotCategorical else jnp.asarray(j)

    def make(t):
        return cls(**{param: t})

    @jax.jit
    def run(t, u):
        d = make(t)
        lp = d.log_prob(value)
        grad = jax.grad(lambda x: jnp.sum(make(x).log_prob(value)))(t)
        kf = jnp.asarray(j, dtype)
        cdf, cdf_dot = jax.jvp(
            lambda x: make(x).cdf(kf),
            (t,),
            (jnp.broadcast_to(jnp.asarray(CAT_DIRECTION, dtype), t.shape),),
        )
        return lp, grad, cdf, cdf_dot, d.icdf(u), d.sample(KEY)

    u = jnp.full(j.shape, 0.3, dtype)
    lp, grad, cdf, cdf_dot, icdf, sample = (np.asarray(a, np.float64) for a in run(table, u))
    refs = _categorical_refs_probs if param == "probs" else _categorical_refs_logits
    with _errstate():
        ref_lp, ref_grad, ref_cdf, ref_dcdf = refs(rounded, j)
    ok = ~invalid
    pos = ok & np.isfinite(ref_lp)
    _close(lp[pos], ref_lp[pos], dtype, "log_prob")
    assert np.all(lp[ok & ~np.isfinite(ref_lp)] == -np.inf)
    scale = np.abs(ref_grad[pos]).max(-1, keepdims=True) * np.ones((1, 3))
    _close(grad[pos], ref_grad[pos], dtype, "d log_prob", scale=scale)
    _close(cdf[ok], ref_cdf[ok], dtype, "cdf", scale=np.ones(ok.sum()))
    _close(cdf_dot[ok], ref_dcdf[ok], dtype, "JVP of cdf", scale=np.abs(ref_dcdf[ok]) + 1)
    assert np.all(np.isnan(lp[invalid])) and np.all(np.isnan(cdf[invalid]))
    # icdf: a category with positive mass for valid rows, the label K = 3 for invalid ones.
    with _errstate():
        ref_probs = np.exp(sps.log_softmax(rounded, -1)) if param == "logits" else rounded
        ref_probs = ref_probs / ref_probs.sum(-1, keepdims=True)
    label = icdf.astype(int)
    assert np.all(ref_probs[np.arange(len(j))[ok], label[ok]] > 0)
    np.testing.assert_array_equal(icdf[invalid], 3.0)
    if cls is D.Categorical:
        np.testing.assert_array_equal(sample[invalid], 3)
        assert np.all((sample[ok] >= 0) & (sample[ok] < 3))
    else:
        assert np.all(np.isnan(sample[invalid]))
        np.testing.assert_array_equal(sample[ok].sum(-1), 1.0)


def test_one_hot_value_from_index_out_of_range():
    d = D.OneHotCategorical(probs=[0.5, 0.5])
    v = np.asarray(d.value_from_index(jnp.array([0.0, 1.0, 2.0, -1.0])))
    np.testing.assert_array_equal(v[:2], np.eye(2))
    assert np.all(np.isnan(v[2:]))


# --------------------------------------------------------------------------------------------
# Continuous families: 1e-7 inside the (open) parameter space; the boundary itself is invalid
# --------------------------------------------------------------------------------------------


def _check_continuous(make, cols, value, refs, dtype, invalid, event_ndim=0):
    """log_prob and its gradient in every parameter against ``refs``; rsample finite / NaN."""
    params = tuple(jnp.asarray(c, dtype) for c in cols)
    value = jnp.asarray(value, dtype)
    rounded = [np.asarray(c, np.float64) for c in params]

    # Samples (rsample) only in float32: their poisoning does not depend on the dtype, and
    # compiling the gamma samplers twice would dominate the run time.
    with_samples = dtype == np.float32

    @jax.jit
    def run(ps):
        lp = make(*ps).log_prob(value)
        grads = jax.grad(lambda qs: jnp.sum(make(*qs).log_prob(value)))(ps)
        return lp, grads, make(*ps).sample(KEY, 2) if with_samples else jnp.zeros((0,))

    lp, grads, smp = run(params)
    lp = np.asarray(lp, np.float64)
    with _errstate():
        ref_lp, ref_grads = refs(*rounded, np.asarray(value, np.float64))
    ok = ~np.asarray(invalid)
    _close(lp[ok], ref_lp[ok], dtype, "log_prob")
    for i, (g, r) in enumerate(zip(grads, ref_grads, strict=True)):
        g = np.asarray(g, np.float64)[ok]
        r = np.broadcast_to(r, np.asarray(grads[i]).shape)[ok]
        scale = np.abs(r).reshape(len(r), -1).max(-1).reshape((-1,) + (1,) * (r.ndim - 1))
        _close(g, r + 0 * g, dtype, f"d log_prob / d param {i}", scale=scale * np.ones_like(r))
    assert np.all(np.isnan(lp[~ok])), lp[~ok]
    for x in np.asarray(smp) if with_samples else ():
        assert np.all(np.isfinite(x[ok])), x[ok]
        assert np.all(np.isnan(x[~ok])), x[~ok]


# A column of valid values (boundary + 1e-7 and a second point) followed by invalid ones.
def _cols(valid, invalid):
    return np.array(valid + invalid, np.float64).T, np.arange(len(valid) + len(invalid)) >= len(
        valid
    )


SCALE_INVALID = [
    (0.0, 0.0),
    (0.0, -EPS),
    (0.0, np.nan),
    (0.0, np.inf),
    (np.nan, 1.0),
    (np.inf, 1.0),
]


@pytest.mark.parametrize("family", ["Normal", "LogNormal", "Laplace", "Logistic", "Cauchy"])
def test_loc_scale(dtype, family):
    (loc, scale), invalid = _cols([(0.0, EPS), (0.0, 3 * EPS)], SCALE_INVALID)
    s = _rounded(scale, dtype)
    if family == "LogNormal":
        # x = 1 (log x = 0 exactly) and loc = -2 scale: z = 2 up to rounding.
        loc = np.where(np.isfinite(loc), -2 * scale, loc)
        value = np.ones_like(scale)
    else:
        value = np.where(np.isfinite(s), 2 * s, 1.0)  # exact in the dtype

    def refs(mu, sigma, x):
        y = np.log(x) if family == "LogNormal" else x
        z = (y - mu) / sigma
        if family in ("Normal", "LogNormal"):
            lp = (
                -0.5 * z**2
                - np.log(sigma)
                - 0.5 * np.log(2 * np.pi)
                - (y if family == "LogNormal" else 0)
            )
            dz = -z  # d lp / dz
        elif family == "Laplace":
            lp = -np.abs(z) - np.log(2 * sigma)
            dz = -np.sign(z)
        elif family == "Logistic":
            lp = -z - 2 * np.log1p(np.exp(-z)) - np.log(sigma)
            dz = -np.tanh(z / 2)
        else:
            lp = -np.log(np.pi * sigma) - np.log1p(z**2)
            dz = -2 * z / (1 + z**2)
        # dz/dmu = -1/sigma, dz/dsigma = -z/sigma, plus d(-log sigma) = -1/sigma.
        return lp, (-dz / sigma, -dz * z / sigma - 1 / sigma)

    make = getattr(D, family)
    _check_continuous(make, [loc, scale], value, refs, dtype, invalid)


def test_uniform(dtype):
    (low, high), invalid = _cols(
        [(0.0, EPS), (1.0, 1.0 + 2 * EPS)],
        [(0.0, 0.0), (1.0, 0.0), (np.nan, 1.0), (0.0, np.inf)],
    )
    lo, hi = _rounded(low, dtype), _rounded(high, dtype)
    value = np.where(invalid, 0.5, (lo + hi) / 2)

    def refs(lo, hi, x):
        w = hi - lo
        return -np.log(w), (1 / w, -1 / w)

    _check_continuous(D.Uniform, [low, high], value, refs, dtype, invalid)


def test_exponential(dtype):
    (rate, value), invalid = _cols(
        [(EPS, 1.0), (EPS, 0.0), (3 * EPS, 2.0)], [(0.0, 1.0), (-EPS, 1.0), (np.nan, 1.0)]
    )

    def refs(lam, x):
        return np.log(lam) - lam * x, (1 / lam - x,)

    _check_continuous(D.Exponential, [rate], value, refs, dtype, invalid)


def test_gamma(dtype):
    (a, r, value), invalid = _cols(
        [(EPS, 1.0, 0.5), (2.0, EPS, 1.0), (EPS, EPS, 0.5)],
        [(0.0, 1.0, 0.5), (1.0, 0.0, 0.5), (np.nan, 1.0, 0.5), (1.0, -1.0, 0.5)],
    )

    def refs(a, r, x):
        lp = a * np.log(r) + (a - 1) * np.log(x) - r * x - sps.gammaln(a)
        return lp, (np.log(r) + np.log(x) - sps.digamma(a), a / r - x)

    _check_continuous(D.Gamma, [a, r], value, refs, dtype, invalid)


def test_beta(dtype):
    (c1, c0, value), invalid = _cols(
        [(EPS, 2.0, 0.3), (2.0, EPS, 0.3), (EPS, EPS, 0.3)],
        [(0.0, 1.0, 0.3), (1.0, -EPS, 0.3), (np.nan, 1.0, 0.3), (1.0, np.inf, 0.3)],
    )

    def refs(a, b, x):
        lp = (a - 1) * np.log(x) + (b - 1) * np.log1p(-x) - sps.betaln(a, b)
        return lp, (
            np.log(x) - sps.digamma(a) + sps.digamma(a + b),
            np.log1p(-x) - sps.digamma(b) + sps.digamma(a + b),
        )

    _check_continuous(D.Beta, [c1, c0], value, refs, dtype, invalid)


def test_dirichlet(dtype):
    conc = np.array([[EPS, 2.0, 3.0], [EPS, EPS, 1.0], [0.0, 1.0, 1.0], [np.nan, 1, 1], [-1, 2, 2]])
    invalid = np.array([False, False, True, True, True])
    value = np.broadcast_to([0.2, 0.3, 0.5], conc.shape)

    def refs(a, x):
        total = a.sum(-1)
        lp = np.sum((a - 1) * np.log(x), -1) - np.sum(sps.gammaln(a), -1) + sps.gammaln(total)
        return lp, (np.log(x) - sps.digamma(a) + sps.digamma(total)[:, None],)

    _check_continuous(D.Dirichlet, [conc], value, refs, dtype, invalid, event_ndim=1)


def test_multivariate_normal(dtype):
    valid = [[EPS, 0.0], [0.3, 1.0]]
    trils = np.array(
        [
            valid,
            [[EPS, 0.0], [0.0, 2 * EPS]],
            [[0.0, 0.0], [0.3, 1.0]],  # singular
            [[-EPS, 0.0], [0.3, 1.0]],  # negative diagonal
            [[EPS, 0.0], [np.nan, 1.0]],
            [[EPS, 0.5], [0.3, 1.0]],  # not lower triangular
        ]
    )
    invalid = np.array([False, False, True, True, True, True])
    loc = np.zeros((len(trils), 2))
    t = _rounded(trils, dtype)
    value = np.where(invalid[:, None], 0.5, np.stack([2 * t[:, 0, 0], 0.5 + 0 * t[:, 0, 0]], -1))

    def refs(mu, tril, x):
        lp, d_mu, d_tril = [], [], []
        for m, lt, xx in zip(mu, tril, x, strict=True):
            lt = np.tril(lt)
            if not (np.all(np.isfinite(lt)) and np.all(np.diag(lt) > 0)):
                lp.append(np.nan), d_mu.append(np.zeros(2)), d_tril.append(np.zeros((2, 2)))
                continue
            z = np.zeros(2)
            z[0] = (xx[0] - m[0]) / lt[0, 0]
            z[1] = (xx[1] - m[1] - lt[1, 0] * z[0]) / lt[1, 1]
            w = np.zeros(2)  # L^T w = z
            w[1] = z[1] / lt[1, 1]
            w[0] = (z[0] - lt[1, 0] * w[1]) / lt[0, 0]
            lp.append(-0.5 * z @ z - np.log(np.diag(lt)).sum() - np.log(2 * np.pi))
            d_mu.append(w)
            d_tril.append(np.tril(np.outer(w, z)) - np.diag(1 / np.diag(lt)))
        return np.array(lp), (np.array(d_mu), np.array(d_tril))

    _check_continuous(D.MultivariateNormal, [loc, trils], value, refs, dtype, invalid, 1)


# --------------------------------------------------------------------------------------------
# Estimators at boundary parameters
# --------------------------------------------------------------------------------------------
#
# d/dtheta E[f] at a boundary is the one-sided derivative from inside the parameter space.
# When the support changes there (a value with zero mass but a non-zero derivative of its
# mass), the score function misses that value and is biased, and stochastic_ad is only exact
# at boundaries left by increasing theta (its jumps are computed along +theta); those
# combinations are checked for finiteness only (see `BIASED`).

EST = {
    "score": je.score_function(),
    "score_loo": je.score_function("leave_one_out"),
    "stochastic_ad": je.stochastic_ad(),
    "straight_through": je.straight_through(),
}


def _bernoulli(k, t):
    return je.sample(k, D.Bernoulli(probs=t))


def _categorical(t):
    return D.Categorical(probs=jnp.stack([1 - t, t]))


# (name, theta, exact one-sided derivative of E[x]). The program sums all sites (Categorical
# through select([0, 1], x)), so each coordinate of the gradient is one case and the whole
# table costs one compilation per estimator; sites of one family are one batched site.
BOUNDARY = [
    ("bernoulli@0", 0.0, 1.0),
    ("bernoulli@1", 1.0, 1.0),
    ("binomial@0", 0.0, 10.0),
    ("binomial@1", 1.0, 10.0),
    ("poisson@0", 0.0, 1.0),
    ("geometric@1", 1.0, -1.0),  # E = (1 - p)/p, derivative -1/p**2
    ("categorical@0", 0.0, 1.0),
]
# Where an estimator is mathematically biased at a boundary (every draw sits at the point
# mass, so each estimate would be deterministic and wrong): the score function (with or
# without baseline) never sees the value that gains mass; stochastic_ad has no jump along
# +theta at an upper boundary (the direction leaves the parameter space). Both report NaN
# there instead of a plausible number (score: 0 or n f(n) = 100; stochastic_ad: 0).
BIASED = {
    "score": {name for name, _, _ in BOUNDARY},
    "score_loo": {name for name, _, _ in BOUNDARY},
    "stochastic_ad": {"bernoulli@1", "binomial@1", "geometric@1"},
    "straight_through": set(),
}


def _boundary_program(k, theta):
    k1, k2, k3, k4, k5 = jax.random.split(k, 5)
    x = [
        je.sample(k1, D.Bernoulli(probs=theta[0:2])),
        je.sample(k2, D.Binomial(10.0, probs=theta[2:4])),
        je.sample(k3, D.Poisson(theta[4])),
        je.sample(k4, D.Geometric(probs=theta[5])),
        je.select(jnp.array([0.0, 1.0]), je.sample(k5, _categorical(theta[6]))),
    ]
    return sum(jnp.sum(v) for v in x)


# score_loo differs from score only by the (here exactly cancelling) baseline: skipped to keep
# the compile time down; it is exercised with a zero-probability category below.
@pytest.mark.parametrize("name", ["score", "stochastic_ad", "straight_through"])
def test_estimators_at_boundaries(name):
    theta = jnp.array([t for _, t, _ in BOUNDARY])
    samples = np.asarray(je.grad_samples(_boundary_program, EST[name], num_samples=8)(KEY, theta))
    assert samples.shape == (8, len(BOUNDARY))
    for i, (case, _, exact) in enumerate(BOUNDARY):
        if case in BIASED[name]:
            assert np.all(np.isnan(samples[:, i])), (case, samples[:, i])
        else:
            # Deterministic at the point mass: every per-sample estimate is exact.
            assert_unbiased(samples[:, i], exact, se_max=1e-6)


def test_issue_reproducer_binomial_probs_zero():
    # probs = 1 - exp(-b * 0) = 0 for every b: the gradient is exactly 0 (it was NaN).
    def f(k, b):
        return je.sample(k, D.Binomial(100.0, probs=1 - jnp.exp(-b * 0.0)))

    assert float(je.grad(f, je.score_function(), num_samples=4)(KEY, 0.4)) == 0.0


def test_estimators_statistical_at_boundary():
    # x1 ~ Bernoulli(theta) at theta = 0 and x2 ~ Geometric(1/3): f = x1 x2 + x2,
    # d/dtheta E[f] = E[x2] = 2; per-sample estimates x2 (stochastic_ad: jump of x1 at rate 1;
    # straight-through: df/dx1 = x2), standard deviation sqrt(6).
    def f(k, t):
        k1, k2 = jax.random.split(k)
        x1 = je.sample(k1, D.Bernoulli(probs=t))
        x2 = je.sample(k2, D.Geometric(probs=1 / 3))
        return x1 * x2 + x2

    for name in ("stochastic_ad", "straight_through"):
        samples = je.grad_samples(f, EST[name], num_samples=4000)(KEY, 0.0)
        assert_unbiased(samples, 2.0, se_max=0.06)


def test_estimators_with_zero_probability_category():
    # probs = [1 - theta, theta, 0] at theta = 0.3, f = [1, 3, 7][x]: d/dtheta E[f] = 3 - 1 = 2.
    # The zero-probability category has zero mass and zero derivative: every estimator is
    # unbiased, and the score function's log-probability gradient must stay finite.
    def f(k, t):
        x = je.sample(k, D.Categorical(probs=jnp.stack([1 - t, t, 0.0 * t])))
        return je.select(jnp.array([1.0, 3.0, 7.0]), x)

    se_max = {"score": 0.25, "score_loo": 0.2, "stochastic_ad": 0.08, "straight_through": 1e-6}
    for name, est in EST.items():
        samples = je.grad_samples(f, est, num_samples=1000)(KEY, 0.3)
        assert_unbiased(samples, 2.0, se_max=se_max[name])


@pytest.mark.parametrize("theta", [0.0, 1.0])
def test_central_finite_difference_at_boundary_is_nan(theta):
    # theta -+ h leaves [0, 1]: the program there is NaN, and so is the estimate.
    g = je.grad(_bernoulli, je.finite_difference(step=1e-2), num_samples=4)(KEY, theta)
    assert np.isnan(float(g))


# --------------------------------------------------------------------------------------------
# Estimators with invalid traced parameters: NaN values, not plausible numbers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "est",
    [
        je.score_function(),
        je.stochastic_ad(),
        je.finite_difference(),
        je.straight_through(),
        je.auto(),
    ],
    ids=lambda e: e.name,
)
@pytest.mark.parametrize("theta", [1.5, -0.5, float("nan")])
def test_invalid_bernoulli_probs_give_nan_value(est, theta):
    value, _ = je.value_and_grad(_bernoulli, est, num_samples=4)(KEY, theta)
    assert np.isnan(float(value))


@pytest.mark.parametrize("theta", [-1.0, 0.0, float("nan")])
def test_invalid_normal_scale_pathwise_gives_nan_value(theta):
    def f(k, s):
        return je.sample(k, D.Normal(0.0, s))

    value, _ = je.value_and_grad(f, je.pathwise(), num_samples=4)(KEY, theta)
    assert np.isnan(float(value))


def test_score_function_support_boundary_moving_gives_nan_not_a_biased_number():
    # Categorical([1 - t, t, 0]) at t = 0: category 1 gains mass the score function never
    # sees (true derivative f(1) - f(0) = 4); a parameter on the boundary that does not move
    # with theta stays exact.
    vals = jnp.array([1.0, 5.0, 9.0])
    cat = lambda k, t: je.select(
        vals, je.sample(k, D.Categorical(probs=jnp.stack([1 - t, t, 0 * t])))
    )
    for est in (je.score_function(), je.score_function("leave_one_out")):
        g = je.grad(cat, est, num_samples=8)
        assert np.isnan(float(g(KEY, 0.0))) and np.isfinite(float(g(KEY, 0.3)))
    gs = je.grad_samples(cat, je.auto(), num_samples=4)
    assert np.all(np.isnan(np.asarray(gs(KEY, 0.0))))
    assert np.all(np.isfinite(np.asarray(gs(KEY, 0.3))))
    # the zero-mass category 2 does not move: exact (stochastic_ad)
    assert float(je.grad(cat, je.stochastic_ad(), num_samples=8)(KEY, 0.0)) == pytest.approx(4.0)


def test_score_function_on_a_moving_uniform_support_is_nan():
    # x ~ Uniform(0, t): d/dt E[x] = 1/2, but the score function's estimate has mean -1/2.
    f = lambda k, t: je.sample(k, D.Uniform(0.0, t), estimator=je.score_function())
    assert np.isnan(float(je.grad(f, je.auto(), num_samples=8)(KEY, 2.0)))
    # pathwise is right there: every per-sample derivative is x / t, mean ~ 1/2
    h = lambda k, t: je.sample(k, D.Uniform(0.0, t))
    assert_unbiased(je.grad_samples(h, je.pathwise(), num_samples=4000)(KEY, 2.0), 0.5, 0.006)
    # fixed support, theta elsewhere: fine
    g = lambda k, t: t * je.sample(k, D.Uniform(0.0, 2.0), estimator=je.score_function())
    assert np.isfinite(float(je.grad(g, je.auto(), num_samples=8)(KEY, 2.0)))


def test_stochastic_ad_direction_leaving_the_parameter_space_is_nan():
    f = lambda k, t: je.sample(k, D.Bernoulli(probs=t))
    assert np.isnan(float(je.grad(f, je.stochastic_ad(), num_samples=4)(KEY, 1.0)))
    # decreasing p at p = 1 is inside the space: p = 1 - t at t = 0, derivative -1
    g = lambda k, t: je.sample(k, D.Bernoulli(probs=1 - t))
    assert float(je.grad(g, je.stochastic_ad(), num_samples=4)(KEY, 0.0)) == pytest.approx(-1.0)
