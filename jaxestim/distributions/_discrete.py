"""Discrete distributions sampled by exact inversion of their CDFs.

Every family implements the inverse-CDF interface of :class:`DiscreteDistribution`:
``uniforms`` / ``icdf`` / ``cdf`` / ``value_from_index`` / ``index_from_value``.

Numerics. The CDFs of the Poisson and binomial families are evaluated so that *both* tails are
accurate to a few float ulps relative, which plain float32 incomplete gamma / beta functions are
not for large parameters (their ``exp(a log x - lgamma(a) ...)`` prefactor cancels
catastrophically). The probability masses use Loader's saddle-point form
(``stirlerr`` / ``bd0``); the Poisson CDF uses Temme's uniform asymptotic expansion for large
shape parameters; the binomial CDF uses the continued fraction of the incomplete beta function
scaled by the accurate mass. Inverse CDFs compare ``u`` with the lower tail where the lower tail
is below 1/2 and ``1 - u`` with the upper tail otherwise (the choice depends on ``k`` only, so
``icdf`` stays monotone in ``u``).

Parameter boundaries. ``Bernoulli``/``Binomial`` accept ``probs`` in ``[0, 1]``, ``Geometric``
``probs`` in ``(0, 1]``, ``Poisson`` ``rate >= 0`` and ``Categorical``/``OneHotCategorical``
``probs`` with zero entries: at a boundary the distribution is a (partially) degenerate point
mass. There, and arbitrarily close to it, ``log_prob`` and its gradient with respect to every
float parameter are finite and exact wherever the mass of the observed value is positive
(``-inf`` where it is 0), and ``cdf`` and its JVP are finite: logarithms of probabilities that
may be 0 go through a double ``jnp.where`` so that ``log'(0) = inf`` never reaches the
backward pass (e.g. ``d/dp log Binomial(0; n, p) = -n`` at ``p = 0``). Logits must be finite.

Invalid parameters. Concrete out-of-range or non-finite parameters raise ``ValueError`` in the
constructors. Traced ones cannot be checked there: ``log_prob``, ``cdf`` and ``icdf`` (hence
``sample``) return NaN for the batch elements whose parameters are invalid (see
:meth:`Distribution._param_checks`); ``Categorical.icdf`` returns the out-of-range label ``K``
(``OneHotCategorical`` turns it into a NaN vector).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy import special as jsp_special
from jax.tree_util import register_pytree_node_class
from jax.typing import ArrayLike

from ._base import (
    Array,
    DiscreteDistribution,
    Shape,
    _boundary,
    _broadcast_shapes,
    _broadcasting_vmap,
    _check_nonnegative,
    _check_values,
    _finite,
    _float_params,
    _is_traced,
    _nonnegative,
    _safe_log,
    _safe_log1m,
)

__all__ = ["Bernoulli", "Binomial", "Categorical", "Geometric", "OneHotCategorical", "Poisson"]

_LOG_2PI = math.log(2 * math.pi)


def _compute_dtype(dtype: np.dtype) -> np.dtype:
    """Half-precision parameters are processed in float32."""
    dtype = jnp.dtype(dtype)
    return jnp.dtype(jnp.float32) if dtype.itemsize < 4 else dtype


def _floor_value(k: ArrayLike, dtype: np.dtype) -> Array:
    return jnp.floor(jnp.asarray(k).astype(dtype))


def _is_integer(x: Array) -> Array:
    return x == jnp.floor(x)


# --------------------------------------------------------------------------------------------
# Accurate building blocks: stirlerr, bd0, probability masses
# --------------------------------------------------------------------------------------------

_STIRLERR_CUT = 16
# stirlerr(n) = log(n!) - log(sqrt(2 pi n) (n/e)**n), tabulated in float64 for n < 16.
_STIRLERR_TABLE = np.array(
    [0.0]
    + [
        math.lgamma(n + 1.0) - (n + 0.5) * math.log(n) + n - 0.5 * _LOG_2PI
        for n in range(1, _STIRLERR_CUT)
    ]
)


def _stirlerr(n: Array) -> Array:
    """Stirling-series remainder ``log(n!) - log(sqrt(2 pi n) (n / e)**n)`` for integers n >= 1."""
    table = jnp.asarray(_STIRLERR_TABLE, n.dtype)
    small = table[jnp.clip(n, 0, _STIRLERR_CUT - 1).astype(jnp.int32)]
    inv = 1 / jnp.maximum(n, _STIRLERR_CUT)
    inv2 = inv * inv
    series = inv * (1 / 12 - inv2 * (1 / 360 - inv2 * (1 / 1260 - inv2 * (1 / 1680 - inv2 / 1188))))
    return jnp.where(n < _STIRLERR_CUT, small, series)


def _bd0(x: Array, m: Array, log_m: Array | None = None) -> Array:
    """Loader's deviance term ``x log(x / m) + m - x`` without cancellation (x > 0, m >= 0).

    ``log_m`` (default ``log(m)``) is used where ``m`` is tiny (below ``sqrt(tiny)``, e.g. an
    underflowed ``n * sigmoid(logits)``): there ``x (log x - log m - 1) + m`` is accurate and its
    gradient finite. ``m = 0`` (``log_m = -inf`` with a zero gradient, see ``_safe_log``) gives
    ``+inf`` with a finite gradient.
    """
    v = (x - m) / (x + m)
    small = jnp.abs(v) < 0.25
    vs = jnp.where(small, v, 0)
    v2 = vs * vs
    # atanh(v) - v = v * sum_{j >= 1} v**(2j) / (2j + 1)
    poly = jnp.zeros_like(v2)
    for j in range(14, 0, -1):
        poly = v2 * (1 / (2 * j + 1) + poly)
    series = (x + m) * (v2 + (1 + vs) * vs * poly)
    if log_m is None:
        log_m = _safe_log(m)
    tiny = m < math.sqrt(float(jnp.finfo(jnp.dtype(m.dtype)).tiny))
    m_reg = jnp.where(tiny, 1, m)
    regular = jsp_special.xlogy(x, x / m_reg) + m_reg - x
    x_pos = x > 0
    x_safe = jnp.where(x_pos, x, 1)
    log_form = jnp.where(x_pos, x * (jnp.log(x_safe) - jnp.where(tiny, log_m, 0) - 1), 0) + m
    return jnp.where(small, series, jnp.where(tiny, log_form, regular))


@jax.jit
def _poisson_log_pmf(k: Array, rate: Array) -> Array:
    """Log mass of integer ``k >= 0`` under Poisson(rate), accurate for large rates.

    ``rate = 0`` gives 0 at ``k = 0`` (gradient -1) and ``-inf`` elsewhere, NaN-free.
    """
    positive = k > 0
    ks = jnp.where(positive, k, 1)
    general = -_stirlerr(ks) - _bd0(ks, rate) - 0.5 * (_LOG_2PI + jnp.log(ks))
    return jnp.where(positive, general, -rate)


@jax.jit
def _binomial_log_pmf(k: Array, n: Array, p: Array, q: Array, log_p: Array, log_q: Array) -> Array:
    """Log mass of integer ``0 <= k <= n`` under Binomial(n, p) (Loader's form).

    ``log_p``/``log_q`` may be ``-inf`` (``p = 0`` or ``1``) as produced by ``_safe_log``: the
    result is then exact (``0`` or ``-inf``) with a finite gradient.
    """
    inner = (k > 0) & (k < n)
    ks = jnp.where(inner, k, 1)
    ns = jnp.where(inner, n, 2)
    log_n = jnp.log(ns)
    general = (
        _stirlerr(ns)
        - _stirlerr(ks)
        - _stirlerr(ns - ks)
        - _bd0(ks, ns * p, log_n + log_p)
        - _bd0(ns - ks, ns * q, log_n + log_q)
        + 0.5 * (log_n - _LOG_2PI - jnp.log(ks) - jnp.log(ns - ks))
    )
    at_zero = jnp.where(n == 0, 0, n * log_q)
    at_n = jnp.where(n == 0, 0, n * log_p)
    return jnp.where(k == 0, at_zero, jnp.where(k == n, at_n, general))


# --------------------------------------------------------------------------------------------
# Poisson CDF: Temme's uniform expansion for large shape, jax.scipy otherwise
# --------------------------------------------------------------------------------------------

# Taylor coefficients (in eta) of Temme's c_0 ... c_3 (DLMF 8.12), derived symbolically.
_TEMME_TAYLOR = (
    (-0.3333333333333333, 0.08333333333333333, -0.014814814814814815, 0.0011574074074074073,
     0.0003527336860670194, -0.0001787551440329218, 3.919263178522438e-05,
     -2.185448510679992e-06, -1.85406221071516e-06, 8.296711340953087e-07,
     -1.7665952736826078e-07, 6.707853543401498e-09),
    (-0.001851851851851852, -0.003472222222222222, 0.0026455026455026454,
     -0.0009902263374485596, 0.00020576131687242798, -4.018775720164609e-07,
     -1.8098550334489977e-05, 7.64916091608111e-06, -1.6120900894563446e-06,
     4.647127802807434e-09, 1.378633446915721e-07, -5.752545603517705e-08),
    (0.004133597883597883, -0.0026813271604938273, 0.0007716049382716049,
     2.0093878600823047e-06, -0.0001073665322636516, 5.2923448829120125e-05,
     -1.2760635188618728e-05, 3.423578734096138e-08, 1.3721957309062934e-06,
     -6.298992138380055e-07, 1.4280614206064242e-07, -2.0477098421990866e-10),
    (0.0006494341563786008, 0.00022947209362139917, -0.0004691894943952557,
     0.00026772063206283885, -7.561801671883977e-05, -2.396505113867297e-07,
     1.1082654115347302e-05, -5.6749528269915965e-06, 1.4230900732435883e-06,
     -2.7861080291528143e-11, -1.69243912544904e-07, 8.063326498627269e-08),
)  # fmt: skip


def _temme_gamma(a: Array, x: Array) -> tuple[Array, Array]:
    """Regularized incomplete gammas ``(P(a, x), Q(a, x))`` by Temme's expansion (large a).

    ``Q = erfc(eta sqrt(a/2)) / 2 + exp(-a eta**2 / 2) / sqrt(2 pi a) * sum_k c_k(eta) a**-k``
    with ``eta = sign(x/a - 1) sqrt(2 (x/a - 1 - log(x/a)))``; four terms are kept.
    """
    dtype = jnp.dtype(a.dtype)
    taylor_cut = 1.0 if dtype.itemsize <= 4 else 0.3
    half_a_eta2 = _bd0(a, x)  # = a * (mu - log1p(mu)) = a * eta**2 / 2
    mu = (x - a) / a
    eta = jnp.sign(mu) * jnp.sqrt(2 * half_a_eta2 / a)
    near = jnp.abs(eta) <= taylor_cut
    # Taylor branch (cancellation-free near eta = 0).
    eta_t = jnp.where(near, eta, 0)
    taylor = []
    for coeffs in _TEMME_TAYLOR:
        acc = jnp.zeros_like(eta_t)
        for c in reversed(coeffs):
            acc = acc * eta_t + c
        taylor.append(acc)
    # Closed forms (away from eta = 0).
    m = jnp.where(near, 1.0, mu)
    e = jnp.where(near, 1.0, eta)
    im, ie = 1 / m, 1 / e
    closed = [
        im - ie,
        -im / 12 - im**2 - im**3 + ie**3,
        im / 288 + im**2 / 12 + 25 * im**3 / 12 + 5 * im**4 + 3 * im**5 - 3 * ie**5,
        139 * im / 51840
        - im**2 / 288
        - 49 * im**3 / 288
        - 77 * im**4 / 12
        - 105 * im**5 / 4
        - 35 * im**6
        - 15 * im**7
        + 15 * ie**7,
    ]
    inv_a = 1 / a
    series = jnp.zeros_like(a)
    for c_t, c_c in reversed(list(zip(taylor, closed, strict=True))):
        series = series * inv_a + jnp.where(near, c_t, c_c)
    r = jnp.exp(-half_a_eta2) / jnp.sqrt(2 * math.pi * a) * series
    z = eta * jnp.sqrt(a / 2)
    q = 0.5 * jsp_special.erfc(z) + r
    p = 0.5 * jsp_special.erfc(-z) - r
    return p, q


@jax.jit
def _poisson_tails(k: Array, rate: Array) -> tuple[Array, Array]:
    """``(P(K <= k), P(K > k))`` for integer ``k >= 0``, both accurate in their small tail.

    Shape ``a = k + 1`` below 15: finite sums anchored at the accurate mass (the lower tail for
    ``k <= rate``, the upper tail otherwise). Otherwise Temme's expansion (float32) or, in
    float64 for ``a < 2000``, ``jax.scipy.special.gammainc[c]``.
    """
    k, rate = jnp.broadcast_arrays(k, rate)
    dtype = jnp.dtype(rate.dtype)
    a = k + 1
    small = a < 15
    # -- small shape: sums of at most 15 (lower) or 40 (upper) terms.
    ks = jnp.where(small, k, 0)
    lower_side = ks <= rate
    rate_lo = jnp.maximum(rate, ks)  # keeps the unused lanes bounded
    rate_up = jnp.minimum(rate, ks + 1)

    def lower_term(j, state):
        term, total = state
        term = jnp.where(j <= ks, term * (ks - j + 1) / rate_lo, 0)
        return term, total + term

    def upper_term(j, state):
        term, total = state
        term = term * rate_up / (ks + 1 + j)
        return term, total + term

    ones = (jnp.ones_like(rate), jnp.ones_like(rate))
    lower_sum = jnp.exp(_poisson_log_pmf(ks, rate)) * lax.fori_loop(1, 15, lower_term, ones)[1]
    upper_sum = jnp.exp(_poisson_log_pmf(ks + 1, rate)) * lax.fori_loop(1, 41, upper_term, ones)[1]
    f_small = jnp.where(lower_side, lower_sum, 1 - upper_sum)
    s_small = jnp.where(lower_side, 1 - lower_sum, upper_sum)
    # -- large shape: Temme (accurate to ~3e-8 relative for a >= 15).
    temme_min = 15.0 if dtype.itemsize <= 4 else 2000.0
    use_temme = a >= temme_min
    p_t, q_t = _temme_gamma(jnp.where(use_temme, a, temme_min), rate)
    f_large, s_large = q_t, p_t
    if dtype.itemsize > 4:
        # float64, 15 <= a < 2000: Temme's four terms are not accurate enough; use jax.scipy
        # (trivial arguments in the other lanes make its iterations stop immediately).
        mid = ~small & ~use_temme
        a_m = jnp.where(mid, a, 1.0)
        x_m = jnp.where(mid, rate, 1.0)
        f_large = jnp.where(mid, jsp_special.gammaincc(a_m, x_m), f_large)
        s_large = jnp.where(mid, jsp_special.gammainc(a_m, x_m), s_large)
    return jnp.where(small, f_small, f_large), jnp.where(small, s_small, s_large)


def _normal_quantile(u: Array) -> Array:
    """Standard normal quantile, accurate in both tails (``1 - u`` is exact for ``u > 1/2``)."""
    return jnp.where(u <= 0.5, jsp_special.ndtri(u), -jsp_special.ndtri(1 - u))


def _walk_icdf(
    u: Array,
    guess: Array,
    top: Array,
    tails: Callable[[Array], tuple[Array, Array]],
    log_pmf: Callable[[Array], Array],
    log_ratio_up: Callable[[Array], Array],
    bracket_hi: Array,
    *,
    margin: int = 2,
    steps: int = 10,
) -> Array:
    """Exact ``min{k in [0, top] : F(k) >= u}`` from an approximate quantile ``guess``.

    One accurate tail evaluation at a point just outside the target (below it for
    ``u <= 1/2``, above it otherwise), then up to ``steps`` moves that add masses to that tail,
    so the small tail is never obtained by subtraction. Elements not resolved that way (a poor
    guess) fall back to bisection on ``[0, bracket_hi]``; that loop does not iterate when every
    element is resolved.
    """
    lower_region = u <= 0.5
    g = jnp.ceil(guess - 0.5)
    e = jnp.where(lower_region, g - 1 - margin, g + margin)
    e = jnp.clip(e, -1, top)
    e_in = jnp.clip(e, 0, jnp.maximum(top - 1, 0))
    f_e, s_e = tails(e_in)
    f_e = jnp.where(e < 0, 0, jnp.where(e >= top, 1, f_e))
    s_e = jnp.where(e < 0, 1, jnp.where(e >= top, 0, s_e))
    one_minus_u = 1 - u
    start_ok = jnp.where(lower_region, f_e < u, s_e <= one_minus_u)
    # Lower region: k = e + 1 with acc = F(k); upper region: k = e with acc = S(k - 1).
    k = jnp.where(lower_region, e + 1, e)
    log_mass = log_pmf(jnp.clip(k, 0, top))
    acc = jnp.where(lower_region, f_e, s_e) + jnp.exp(log_mass)

    def done_at(k: Array, acc: Array) -> Array:
        lower_done = (acc >= u) | (k >= top)
        upper_done = (k <= 0) | (acc > one_minus_u)
        return jnp.where(lower_region, lower_done, upper_done)

    def step(_, state):
        k, acc, log_mass = state
        move = ~done_at(k, acc)
        # Log masses of neighbours: log pmf(k + 1) = log pmf(k) + log_ratio_up(k).
        log_new = jnp.where(
            lower_region, log_mass + log_ratio_up(k), log_mass - log_ratio_up(k - 1)
        )
        k_new = jnp.where(lower_region, k + 1, k - 1)
        return (
            jnp.where(move, k_new, k),
            jnp.where(move, acc + jnp.exp(log_new), acc),
            jnp.where(move, log_new, log_mass),
        )

    k, acc, _ = lax.fori_loop(0, steps, step, (k, acc, log_mass))
    resolved = start_ok & done_at(k, acc) & jnp.isfinite(acc)
    k = jnp.clip(k, 0, top)

    def cond(kk: Array) -> Array:
        lower, upper = tails(jnp.clip(kk, 0, jnp.maximum(top - 1, 0)))
        return (kk >= top) | jnp.where(lower < 0.5, u <= lower, upper <= one_minus_u)

    lo = jnp.where(resolved, k, 0)
    hi = jnp.where(resolved, k, bracket_hi)
    return _integer_bisect(cond, lo, hi, 128)


@jax.custom_jvp
def _poisson_cdf(k: Array, rate: Array) -> Array:
    valid = k >= 0
    lower, _ = _poisson_tails(jnp.where(valid, k, 0), rate)
    return jnp.where(valid, lower, 0)


@_poisson_cdf.defjvp
def _poisson_cdf_jvp(primals, tangents):
    k, rate = primals
    _, rate_dot = tangents
    out = _poisson_cdf(k, rate)
    valid = k >= 0
    pmf = jnp.exp(_poisson_log_pmf(jnp.where(valid, k, 0), rate))
    return out, jnp.where(valid, -pmf, 0) * rate_dot


# --------------------------------------------------------------------------------------------
# Binomial CDF: continued fraction of the incomplete beta, scaled by the accurate mass
# --------------------------------------------------------------------------------------------


def _betacf(a: Array, b: Array, x: Array) -> Array:
    """Continued fraction ``h`` with ``I_x(a, b) = x**a (1-x)**b h / (a B(a, b))`` (Lentz).

    Converges quickly for ``x < (a + 1) / (a + b + 2)``; iterates until every element has
    converged (at most 4000 steps).
    """
    dtype = jnp.dtype(x.dtype)
    eps = jnp.finfo(dtype).eps
    fpmin = jnp.finfo(dtype).tiny / eps

    def clamp(v: Array) -> Array:
        return jnp.where(jnp.abs(v) < fpmin, fpmin, v)

    qab, qap, qam = a + b, a + 1, a - 1
    d = 1 / clamp(1 - qab * x / qap)
    init = (jnp.asarray(0, dtype), jnp.ones_like(x), d, d, jnp.ones(x.shape, bool))

    def step(state):
        m, c, d, h, active = state
        m = m + 1
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d_new = 1 / clamp(1 + aa * d)
        c_new = clamp(1 + aa / c)
        h_new = h * d_new * c_new
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d_new = 1 / clamp(1 + aa * d_new)
        c_new = clamp(1 + aa / c_new)
        delta = d_new * c_new
        h_new = h_new * delta
        keep = active
        return (
            m,
            jnp.where(keep, c_new, c),
            jnp.where(keep, d_new, d),
            jnp.where(keep, h_new, h),
            active & (jnp.abs(delta - 1) > eps),
        )

    def more(state):
        m, *_, active = state
        return (m < 4000) & jnp.any(active)

    return lax.while_loop(more, step, init)[3]


@jax.jit
@_broadcasting_vmap
def _binomial_tails(
    k: Array, n: Array, p: Array, q: Array, log_p: Array, log_q: Array
) -> tuple[Array, Array]:
    """``(P(K <= k), P(K > k))`` for integers ``0 <= k < n``; each accurate in its small tail.

    ``P(K <= k) = I_q(n - k, k + 1)`` and ``P(K > k) = I_p(k + 1, n - k)``; the continued fraction
    is evaluated for whichever is the smaller tail, with prefactor ``p * pmf(k)``.
    """
    k, n, p, q, log_p, log_q = jnp.broadcast_arrays(k, n, p, q, log_p, log_q)
    a_lower = n - k  # I_q(a_lower, k + 1)
    lower_side = q * (n + 3) < a_lower + 1
    aa = jnp.where(lower_side, a_lower, k + 1)
    bb = jnp.where(lower_side, k + 1, a_lower)
    xx = jnp.where(lower_side, q, p)
    h = _betacf(aa, bb, xx)
    front = p * jnp.exp(_binomial_log_pmf(k, n, p, q, log_p, log_q))
    small = jnp.where(lower_side, front * h, front * (a_lower / (k + 1)) * h)
    small = jnp.clip(small, 0, 1)
    return jnp.where(lower_side, small, 1 - small), jnp.where(lower_side, 1 - small, small)


def _integer_bisect(cond: Callable[[Array], Array], lo: Array, hi: Array, max_iter: int) -> Array:
    """Smallest integer ``k`` in ``[lo, hi]`` with ``cond(k)`` (``cond`` monotone, ``cond(hi)``).

    All arrays are integer-valued floats of one shape; iterations stop once every element's
    bracket has closed (at most ``max_iter`` halvings).
    """

    def step(state):
        i, lo, hi = state
        mid = jnp.floor(lo + (hi - lo) / 2)
        ok = cond(mid)
        open_ = lo < hi
        return i + 1, jnp.where(open_ & ~ok, mid + 1, lo), jnp.where(open_ & ok, mid, hi)

    def more(state):
        i, lo, hi = state
        return (i < max_iter) & jnp.any(lo < hi)

    return lax.while_loop(more, step, (0, lo, hi))[2]


@jax.jit
@_broadcasting_vmap
def _binomial_icdf(u: Array, n: Array, p: Array, q: Array, log_p: Array, log_q: Array) -> Array:
    """Exact binomial inverse CDF (broadcasting all arguments)."""
    shape = jnp.broadcast_shapes(u.shape, n.shape)
    u, n, p, q, log_p, log_q = (jnp.broadcast_to(v, shape) for v in (u, n, p, q, log_p, log_q))
    # Degenerate cases p = 0 and p = 1 are handled at the end.
    zero_p, one_p = p == 0, q == 0
    degenerate = zero_p | one_p
    p, q = jnp.where(degenerate, 0.5, p), jnp.where(degenerate, 0.5, q)
    log_p = jnp.where(degenerate, -math.log(2), log_p)
    log_q = jnp.where(degenerate, -math.log(2), log_q)
    # Normal approximation with the (bounded) skewness correction of Cornish-Fisher.
    z = _normal_quantile(u)
    guess = n * p + jnp.sqrt(n * p * q) * z + (q - p) * (jnp.square(z) - 1) / 6
    guess = jnp.clip(guess, -1, n + 1)
    n_safe = jnp.maximum(n, 1)

    def tails(k: Array) -> tuple[Array, Array]:
        return _binomial_tails(k, n_safe, p, q, log_p, log_q)

    def log_pmf(k: Array) -> Array:
        return _binomial_log_pmf(k, n, p, q, log_p, log_q)

    def log_ratio_up(k: Array) -> Array:
        return jnp.log(n - k) - jnp.log(k + 1) + log_p - log_q

    k = _walk_icdf(u, guess, n, tails, log_pmf, log_ratio_up, n)
    return jnp.where(zero_p, 0, jnp.where(one_p, n, k))


@jax.jit
@_broadcasting_vmap
def _poisson_icdf(u: Array, rate: Array) -> Array:
    """Exact Poisson inverse CDF (broadcasting both arguments); 0 where ``rate = 0``."""
    shape = jnp.broadcast_shapes(u.shape, rate.shape)
    u = jnp.broadcast_to(u, shape)
    zero = jnp.broadcast_to(rate == 0, shape)
    rate = jnp.where(zero, 1, jnp.broadcast_to(rate, shape))
    z = _normal_quantile(u)
    guess = rate + jnp.sqrt(rate) * z + (jnp.square(z) - 1) / 6
    # P(K > rate + 9 sqrt(rate) + 40) < 2**-53 (Chernoff bound).
    bracket_hi = jnp.floor(rate + 9 * jnp.sqrt(rate) + 40)
    guess = jnp.clip(guess, -1, bracket_hi)
    top = jnp.full(shape, jnp.inf, rate.dtype)
    log_rate = jnp.log(rate)

    def tails(k: Array) -> tuple[Array, Array]:
        return _poisson_tails(k, rate)

    def log_pmf(k: Array) -> Array:
        return _poisson_log_pmf(k, rate)

    def log_ratio_up(k: Array) -> Array:
        return log_rate - jnp.log(k + 1)

    k = _walk_icdf(u, guess, top, tails, log_pmf, log_ratio_up, bracket_hi)
    return jnp.where(zero, 0, k)


# --------------------------------------------------------------------------------------------
# probs / logits parameterization helpers
# --------------------------------------------------------------------------------------------


def _exactly_one(owner: str, probs: ArrayLike | None, logits: ArrayLike | None) -> None:
    if probs is None and logits is None:
        raise ValueError(f"{owner}: pass exactly one of `probs` or `logits`, got neither")
    if probs is not None and logits is not None:
        raise ValueError(f"{owner}: pass exactly one of `probs` or `logits`, got both")


class _BinaryProbs:
    """Shared accessors for families parameterized by a success probability or its logit."""

    _probs: Array | None
    _logits: Array | None

    @property
    def probs(self) -> Array:
        """Success probability ``p`` (``sigmoid(logits)`` when built from logits)."""
        if self._probs is not None:
            return self._probs
        return jax.nn.sigmoid(self._logits)

    @property
    def logits(self) -> Array:
        """Log-odds ``log(p) - log1p(-p)`` (``-inf`` at ``p = 0``, ``+inf`` at ``p = 1``)."""
        if self._logits is not None:
            return self._logits
        return _safe_log(self._probs) - _safe_log1m(self._probs)

    def _p_q(self) -> tuple[Array, Array]:
        """``(p, 1 - p)``, each computed accurately."""
        if self._logits is not None:
            return jax.nn.sigmoid(self._logits), jax.nn.sigmoid(-self._logits)
        return self._probs, 1 - self._probs

    def _log_p_q(self) -> tuple[Array, Array]:
        """``(log p, log(1 - p))``, each computed accurately.

        With ``probs``, ``log 0 = -inf`` comes with a zero (not infinite) gradient, so that terms
        multiplied by a zero count or selected away by ``jnp.where`` keep finite gradients.
        """
        if self._logits is not None:
            return jax.nn.log_sigmoid(self._logits), jax.nn.log_sigmoid(-self._logits)
        return _safe_log(self._probs), _safe_log1m(self._probs)

    def _probs_boundary(self, low: bool = True, high: bool = True, active: Array = True):
        """Support boundary of ``probs`` at 0 and/or 1 (none with ``logits``, which are finite)."""
        if self._logits is not None:
            return None
        p = jnp.broadcast_to(self._probs, self.batch_shape)  # type: ignore[attr-defined]
        return _boundary(p, (p == 0) & low & active, (p == 1) & high & active)

    def _binary_checks(self, *, strict_low: bool = False) -> tuple[tuple[str, Array, str], ...]:
        shape = self.batch_shape  # type: ignore[attr-defined]
        if self._logits is not None:
            return (("logits", jnp.broadcast_to(_finite(self._logits), shape), "finite"),)
        p = self._probs
        if strict_low:
            return (("probs", jnp.broadcast_to((p > 0) & (p <= 1), shape), "in (0, 1]"),)
        return (("probs", jnp.broadcast_to((p >= 0) & (p <= 1), shape), "in [0, 1]"),)


def _init_binary(
    owner: str, probs: ArrayLike | None, logits: ArrayLike | None, *, strict_low: bool = False
) -> tuple[Array | None, Array | None]:
    _exactly_one(owner, probs, logits)
    if probs is not None:
        (probs_arr,) = _float_params(probs)
        if strict_low:
            _check_values(owner, "probs", probs_arr, lambda v: (v > 0) & (v <= 1), "in (0, 1]")
        else:
            _check_values(owner, "probs", probs_arr, lambda v: (v >= 0) & (v <= 1), "in [0, 1]")
        return probs_arr, None
    (logits_arr,) = _float_params(logits)
    _check_values(owner, "logits", logits_arr, np.isfinite, "finite")
    return None, logits_arr


def _param(d: _BinaryProbs) -> Array:
    return d._probs if d._probs is not None else d._logits


# --------------------------------------------------------------------------------------------
# Bernoulli
# --------------------------------------------------------------------------------------------


@register_pytree_node_class
class Bernoulli(_BinaryProbs, DiscreteDistribution):
    """Bernoulli distribution on ``{0, 1}`` with ``P(1) = p``.

    Parameterization: exactly one of ``probs`` (``p`` in ``[0, 1]``) or ``logits``
    (``log(p / (1 - p))``, finite). Support: ``{0, 1}``; samples are float arrays.
    Inverse CDF: ``k = 1`` iff ``u > 1 - p`` (compared as ``1 - u < p`` for ``u > 1/2``).

    Boundaries: ``p = 0`` (``p = 1``) is the point mass at 0 (at 1); ``log_prob`` of the
    supported value is 0 with gradient ``-1`` (``+1``) in ``p``, the other value ``-inf``.
    Traced invalid ``probs``/``logits`` (outside ``[0, 1]``, non-finite, NaN) make ``log_prob``,
    ``cdf``, ``icdf`` and ``sample`` NaN.
    """

    _param_names: ClassVar[tuple[str, ...]] = ("probs", "logits")

    def __init__(self, probs: ArrayLike | None = None, logits: ArrayLike | None = None) -> None:
        self._probs, self._logits = _init_binary("Bernoulli", probs, logits)

    @property
    def batch_shape(self) -> Shape:
        return tuple(_param(self).shape)

    def _param_checks(self) -> tuple[tuple[str, Array, str], ...]:
        return self._binary_checks()

    def _support_boundary(self):
        return self._probs_boundary()

    def _f0(self) -> Array:
        """``P(K = 0) = 1 - p``."""
        if self._logits is not None:
            return jax.nn.sigmoid(-self._logits)
        return 1 - self._probs

    def icdf(self, u: ArrayLike) -> Array:
        """``1`` where ``u > 1 - p`` else ``0`` (float dtype)."""
        d = jax.tree_util.tree_map(lax.stop_gradient, self)
        u = jnp.asarray(u).astype(d.dtype)
        p, _ = d._p_q()
        one = jnp.where(u <= 0.5, u > d._f0(), (1 - u) < p)
        return d._poison(one.astype(d.dtype))

    def cdf(self, k: ArrayLike) -> Array:
        """``P(K <= k)``: 0 for k < 0, ``1 - p`` for 0 <= k < 1, 1 for k >= 1."""
        k = _floor_value(k, self.dtype)
        out = jnp.where(k < 0, 0, jnp.where(k < 1, self._f0(), 1)).astype(self.dtype)
        return self._poison(out)

    def log_prob(self, value: ArrayLike) -> Array:
        """Log mass of ``value`` (``-inf`` outside ``{0, 1}``)."""
        x = jnp.asarray(value).astype(self.dtype)
        log_p, log_q = self._log_p_q()
        return self._poison(jnp.where(x == 1, log_p, jnp.where(x == 0, log_q, -jnp.inf)))

    def _sampled_log_prob(self, value: ArrayLike) -> Array:
        """``log p`` or ``log(1 - p)`` of sampled values: one ``where`` on the parameter, then
        one log (a sampled value has positive mass, so its log and gradient are finite)."""
        one = jnp.asarray(value) > 0
        if self._logits is not None:
            return jax.nn.log_sigmoid(jnp.where(one, self._logits, -self._logits))
        return jnp.log(jnp.where(one, self._probs, 1 - self._probs))

    @property
    def mean(self) -> Array:
        return self.probs

    @property
    def variance(self) -> Array:
        p, q = self._p_q()
        return p * q


# --------------------------------------------------------------------------------------------
# Geometric
# --------------------------------------------------------------------------------------------


@register_pytree_node_class
class Geometric(_BinaryProbs, DiscreteDistribution):
    """Geometric distribution: the number of failures before the first success.

    Parameterization: exactly one of ``probs`` (success probability ``p`` in ``(0, 1]``) or
    ``logits`` (finite). Support: ``{0, 1, 2, ...}``; ``P(K = k) = (1 - p)**k p``,
    ``P(K <= k) = 1 - (1 - p)**(k + 1)``. Samples are integer-valued float arrays (values beyond
    ``2**nmant`` are not exactly representable).

    Boundaries: ``p = 1`` is the point mass at 0 (``log_prob(0) = 0`` with gradient 1 in ``p``;
    ``d/dp cdf(k) = (k + 1) (1 - p)**k`` is 1 at ``k = 0``); ``p = 0`` is not a distribution.
    Traced invalid ``probs``/``logits`` (outside ``(0, 1]``, non-finite, NaN) make ``log_prob``,
    ``cdf``, ``icdf`` and ``sample`` NaN.
    """

    _param_names: ClassVar[tuple[str, ...]] = ("probs", "logits")

    def __init__(self, probs: ArrayLike | None = None, logits: ArrayLike | None = None) -> None:
        self._probs, self._logits = _init_binary("Geometric", probs, logits, strict_low=True)

    @property
    def batch_shape(self) -> Shape:
        return tuple(_param(self).shape)

    def _param_checks(self) -> tuple[tuple[str, Array, str], ...]:
        return self._binary_checks(strict_low=True)

    def _support_boundary(self):
        return self._probs_boundary(low=False)  # p = 1: only 0 failures

    def icdf(self, u: ArrayLike) -> Array:
        """Closed-form inverse CDF with a one-step correction against the exact criterion.

        ``k = min{k >= 0 : (k + 1) log(1 - p) <= log1p(-u)}``.
        """
        d = jax.tree_util.tree_map(lax.stop_gradient, self)
        u = jnp.asarray(u).astype(d.dtype)
        _, log_q = d._log_p_q()
        t = jnp.log1p(-u)

        def ok(k: Array) -> Array:
            return (k + 1) * log_q <= t

        k = jnp.maximum(jnp.ceil(t / log_q) - 1, 0)
        k = jnp.where((k > 0) & ok(k - 1), k - 1, k)
        k = jnp.where(ok(k), k, k + 1)
        return d._poison(k)

    def cdf(self, k: ArrayLike) -> Array:
        """``1 - (1 - p)**(floor(k) + 1)`` for k >= 0, else 0.

        Computed as ``-expm1((k + 1) log1p(-p))`` for ``p <= 1/2`` (accurate for tiny ``p``) and
        as ``1 - q**(k + 1)`` with the exact ``q = 1 - p`` for ``p > 1/2`` (finite JVP at
        ``p = 1``); from logits always in the first form with ``log(1 - p) = log_sigmoid(-l)``.
        """
        k = _floor_value(k, self.dtype)
        valid = k >= 0
        ks = jnp.where(valid, k, 0)
        if self._logits is not None:
            _, log_q = self._log_p_q()
            out = -jnp.expm1((ks + 1) * log_q)
        else:
            p = self._probs
            high = p > 0.5
            low_form = -jnp.expm1((ks + 1) * jnp.log1p(-jnp.where(high, 0.5, p)))
            high_form = 1 - jnp.where(high, 1 - p, 0.5) ** (ks + 1)
            out = jnp.where(high, high_form, low_form)
        return self._poison(jnp.where(valid, out, 0))

    def log_prob(self, value: ArrayLike) -> Array:
        """``k log(1 - p) + log p`` for integer ``k >= 0``, else ``-inf``."""
        x = jnp.asarray(value).astype(self.dtype)
        log_p, log_q = self._log_p_q()
        valid = (x >= 0) & _is_integer(x)
        xs = jnp.where(valid, x, 0)
        lp = jnp.where(xs == 0, 0, xs * log_q) + log_p
        return self._poison(jnp.where(valid, lp, -jnp.inf))

    @property
    def mean(self) -> Array:
        if self._logits is not None:
            return jnp.exp(-self._logits)
        return (1 - self._probs) / self._probs

    @property
    def variance(self) -> Array:
        if self._logits is not None:
            odds = jnp.exp(-self._logits)
            return odds * (1 + odds)
        return (1 - self._probs) / jnp.square(self._probs)


# --------------------------------------------------------------------------------------------
# Binomial
# --------------------------------------------------------------------------------------------


@jax.custom_jvp
def _binomial_cdf(k: Array, n: Array, p: Array, q: Array, log_p: Array, log_q: Array) -> Array:
    inner = (k >= 0) & (k < n)
    ks = jnp.where(inner, k, 0)
    ns = jnp.where(inner, n, 1)
    lower, _ = _binomial_tails(ks, ns, p, q, log_p, log_q)
    return jnp.where(k < 0, 0, jnp.where(k >= n, 1, lower))


@_binomial_cdf.defjvp
def _binomial_cdf_jvp(primals, tangents):
    # Tangents flow through p (and consistently through q = 1 - p); k and n are integers.
    k, n, p, q, log_p, log_q = primals
    _, _, p_dot, q_dot, _, _ = tangents
    out = _binomial_cdf(k, n, p, q, log_p, log_q)
    inner = (k >= 0) & (k < n)
    ks = jnp.where(inner, k, 0)
    ns = jnp.where(inner, n, 1)
    # d/dp P(K <= k) = -n * pmf(k; n - 1, p)
    dens = ns * jnp.exp(_binomial_log_pmf(ks, ns - 1, p, q, log_p, log_q))
    dp = 0.5 * (p_dot - q_dot)
    return out, jnp.where(inner, -dens, 0) * dp


@register_pytree_node_class
class Binomial(_BinaryProbs, DiscreteDistribution):
    """Binomial distribution: successes in ``total_count`` independent Bernoulli(p) trials.

    Parameterization: ``total_count`` (non-negative integer, stored as a float array; not
    differentiable) and exactly one of ``probs`` (``p`` in ``[0, 1]``) or ``logits`` (finite).
    Support: ``{0, ..., total_count}``; samples are integer-valued float arrays.
    Inverse CDF by bisection on ``[0, total_count]`` with an accurate CDF.

    Boundaries: ``p = 0`` (``p = 1``) is the point mass at 0 (at ``n``): ``log_prob`` of it is 0
    with gradient ``-n`` (``+n``) in ``p`` (``d/dp log pmf(k) = k/p - (n - k)/(1 - p)``), other
    values ``-inf``; ``total_count = 0`` is the point mass at 0. Traced invalid parameters
    (``probs`` outside ``[0, 1]``, non-finite ``logits``, ``total_count`` not a non-negative
    integer, NaN) make ``log_prob``, ``cdf``, ``icdf`` and ``sample`` NaN.
    """

    _param_names: ClassVar[tuple[str, ...]] = ("total_count", "probs", "logits")

    def __init__(
        self,
        total_count: ArrayLike,
        probs: ArrayLike | None = None,
        logits: ArrayLike | None = None,
    ) -> None:
        _exactly_one("Binomial", probs, logits)
        name = "probs" if probs is not None else "logits"
        total_count, param = _float_params(total_count, probs if probs is not None else logits)
        _broadcast_shapes("Binomial", total_count=total_count, **{name: param})
        _check_values(
            "Binomial",
            "total_count",
            total_count,
            lambda v: (v >= 0) & (v == np.floor(v)),
            "a non-negative integer",
        )
        if name == "probs":
            self._probs, self._logits = _init_binary("Binomial", param, None)
        else:
            self._probs, self._logits = _init_binary("Binomial", None, param)
        self._total_count = total_count

    @property
    def total_count(self) -> Array:
        """Number of trials (integer-valued float array, broadcast to ``batch_shape``)."""
        return jnp.broadcast_to(self._total_count, self.batch_shape)

    @property
    def batch_shape(self) -> Shape:
        return tuple(jnp.broadcast_shapes(self._total_count.shape, _param(self).shape))

    def _param_checks(self) -> tuple[tuple[str, Array, str], ...]:
        n = self._total_count
        n_ok = _nonnegative(n) & (n == jnp.floor(n))
        return (
            ("total_count", jnp.broadcast_to(n_ok, self.batch_shape), "a non-negative integer"),
            *self._binary_checks(),
        )

    def _support_boundary(self):
        return self._probs_boundary(
            active=jnp.broadcast_to(self._total_count, self.batch_shape) > 0
        )

    def _work(self) -> tuple[Array, Array, Array, Array, Array]:
        shape = self.batch_shape
        p, q = self._p_q()
        log_p, log_q = self._log_p_q()
        n = jnp.broadcast_to(self._total_count, shape)
        return n, *(jnp.broadcast_to(v, shape) for v in (p, q, log_p, log_q))

    def cdf(self, k: ArrayLike) -> Array:
        """``P(K <= floor(k))``: ``I_{1-p}(n - k, k + 1)``, 0 below 0 and 1 from ``n`` on."""
        k = _floor_value(k, self.dtype)
        dtype = _compute_dtype(self.dtype)
        n, p, q, log_p, log_q = (v.astype(dtype) for v in self._work())
        shape = jnp.broadcast_shapes(k.shape, n.shape)
        args = (jnp.broadcast_to(v, shape) for v in (k.astype(dtype), n, p, q, log_p, log_q))
        return self._poison(_binomial_cdf(*args).astype(self.dtype))

    def icdf(self, u: ArrayLike) -> Array:
        """``min{k : P(K <= k) >= u}`` (exact; see :func:`_walk_icdf`)."""
        d = jax.tree_util.tree_map(lax.stop_gradient, self)
        dtype = _compute_dtype(d.dtype)
        u = jnp.asarray(u).astype(dtype)
        valid = d._params_valid()
        # Invalid elements run on harmless stand-ins (n = 1, p = 1/2) and are poisoned after.
        stand_ins = (1.0, 0.5, 0.5, -math.log(2), -math.log(2))
        n, p, q, log_p, log_q = (
            jnp.where(valid, v.astype(dtype), s) for v, s in zip(d._work(), stand_ins, strict=True)
        )
        k = _binomial_icdf(u, n, p, q, log_p, log_q).astype(d.dtype)
        return jnp.where(valid, k, jnp.nan)

    def log_prob(self, value: ArrayLike) -> Array:
        """Log mass of ``value`` (``-inf`` outside ``{0, ..., total_count}``)."""
        x = jnp.asarray(value).astype(self.dtype)
        n, p, q, log_p, log_q = self._work()
        valid = (x >= 0) & (x <= n) & _is_integer(x)
        xs = jnp.where(valid, x, 0)
        lp = jnp.where(valid, _binomial_log_pmf(xs, n, p, q, log_p, log_q), -jnp.inf)
        return self._poison(lp)

    @property
    def mean(self) -> Array:
        n, p, *_ = self._work()
        return n * p

    @property
    def variance(self) -> Array:
        n, p, q, *_ = self._work()
        return n * p * q


# --------------------------------------------------------------------------------------------
# Poisson
# --------------------------------------------------------------------------------------------


@register_pytree_node_class
class Poisson(DiscreteDistribution):
    """Poisson distribution with mass ``rate**k exp(-rate) / k!``.

    Parameterization: ``rate`` (finite, >= 0). Support: ``{0, 1, 2, ...}``; samples are
    integer-valued float arrays. Inverse CDF by bisection on ``[0, rate + 9 sqrt(rate) + 40]``
    (a bracket whose upper tail is below ``2**-53``) with an accurate CDF.

    Boundary: ``rate = 0`` is the point mass at 0 (``log_prob(0) = -rate = 0`` with gradient
    -1, ``d/d rate cdf(k) = -pmf(k)``). Traced invalid ``rate`` (negative, non-finite, NaN)
    makes ``log_prob``, ``cdf``, ``icdf`` and ``sample`` NaN.
    """

    _param_names: ClassVar[tuple[str, ...]] = ("rate",)

    def __init__(self, rate: ArrayLike) -> None:
        (rate,) = _float_params(rate)
        _check_nonnegative("Poisson", "rate", rate)
        self._rate = rate

    @property
    def rate(self) -> Array:
        """Rate (mean) parameter, >= 0."""
        return self._rate

    @property
    def batch_shape(self) -> Shape:
        return tuple(self._rate.shape)

    def _param_checks(self) -> tuple[tuple[str, Array, str], ...]:
        return (("rate", _nonnegative(self._rate), "finite and >= 0"),)

    def _support_boundary(self):
        rate = self._rate
        return _boundary(rate, rate == 0, jnp.zeros(jnp.shape(rate), bool))

    def cdf(self, k: ArrayLike) -> Array:
        """``P(K <= floor(k)) = Q(floor(k) + 1, rate)`` (0 for k < 0)."""
        dtype = _compute_dtype(self.dtype)
        k = _floor_value(k, dtype)
        rate = self._rate.astype(dtype)
        shape = jnp.broadcast_shapes(k.shape, rate.shape)
        out = _poisson_cdf(jnp.broadcast_to(k, shape), jnp.broadcast_to(rate, shape))
        return self._poison(out.astype(self.dtype))

    def icdf(self, u: ArrayLike) -> Array:
        """``min{k : P(K <= k) >= u}`` (exact; see :func:`_walk_icdf`)."""
        dtype = _compute_dtype(self.dtype)
        rate = lax.stop_gradient(self._rate).astype(dtype)
        u = jnp.asarray(u).astype(dtype)
        valid = self._params_valid()
        k = _poisson_icdf(u, jnp.where(valid, rate, 1)).astype(self.dtype)
        return jnp.where(valid, k, jnp.nan)

    def log_prob(self, value: ArrayLike) -> Array:
        """Log mass of ``value`` (``-inf`` unless a non-negative integer)."""
        x = jnp.asarray(value).astype(self.dtype)
        valid = (x >= 0) & _is_integer(x)
        xs = jnp.where(valid, x, 0)
        return self._poison(jnp.where(valid, _poisson_log_pmf(xs, self._rate), -jnp.inf))

    @property
    def mean(self) -> Array:
        return self._rate

    @property
    def variance(self) -> Array:
        return self._rate


# --------------------------------------------------------------------------------------------
# Categorical / OneHotCategorical
# --------------------------------------------------------------------------------------------


@register_pytree_node_class
class Categorical(DiscreteDistribution):
    """Categorical distribution over ``{0, ..., K-1}``.

    Parameterization: exactly one of ``probs`` (shape ``batch_shape + (K,)``, non-negative,
    summing to 1 along the last axis; renormalized internally) or ``logits`` (finite,
    unnormalized log-probabilities). Support: int32 indices ``0 <= k < K``.
    Inverse CDF: the number of categories whose cumulative probability is below ``u``.

    Boundaries: ``probs`` may contain zeros (categories that are never drawn; their
    ``log_prob`` is ``-inf``); the log-probabilities of the others and their gradients in every
    entry of ``probs`` stay finite and exact (``d/dp_i log(p_j / sum p) = [i = j]/p_j - 1/sum p``).
    ``logits`` must be finite: a ``-inf`` logit is not accepted (use ``probs`` with a zero).
    Traced invalid parameters (a negative, non-finite or NaN entry of ``probs``, a zero sum, a
    non-finite logit) make ``log_prob`` and ``cdf`` NaN for that batch element, and ``icdf``
    returns the out-of-range label ``K`` (``num_categories``; an int32 label cannot be NaN),
    so ``sample`` gives ``K``.
    """

    _param_names: ClassVar[tuple[str, ...]] = ("probs", "logits")

    def __init__(self, probs: ArrayLike | None = None, logits: ArrayLike | None = None) -> None:
        owner = type(self).__name__
        _exactly_one(owner, probs, logits)
        name = "probs" if probs is not None else "logits"
        (param,) = _float_params(probs if probs is not None else logits)
        if param.ndim < 1 or param.shape[-1] < 1:
            raise ValueError(
                f"{owner}: `{name}` must have at least one dimension with K >= 1 categories "
                f"(the last axis), got shape {param.shape}"
            )
        if name == "probs":
            _check_values(owner, "probs", param, lambda v: v >= 0, "non-negative")
            if not _is_traced(param):
                totals = np.asarray(param, np.float64).sum(-1)
                tol = max(1e-4, 8 * float(jnp.finfo(param.dtype).eps))
                if totals.size and not np.all(np.abs(totals - 1) <= tol):
                    worst = totals.ravel()[np.argmax(np.abs(totals - 1))]
                    raise ValueError(
                        f"{owner}: `probs` must sum to 1 along the last axis (within {tol:g}), "
                        f"got a sum of {worst}"
                    )
            self._probs, self._logits = param, None
        else:
            _check_values(owner, "logits", param, np.isfinite, "finite")
            self._probs, self._logits = None, param

    def _param(self) -> Array:
        return self._probs if self._probs is not None else self._logits

    def _param_checks(self) -> tuple[tuple[str, Array, str], ...]:
        if self._probs is not None:
            p = self._probs
            ok = jnp.all(_nonnegative(p), -1)
            return (
                ("probs", ok, "finite and >= 0"),
                ("probs", jnp.sum(p, -1) > 0, "with a positive sum"),
            )
        return (("logits", jnp.all(_finite(self._logits), -1), "finite"),)

    def _support_boundary(self):
        """Zero-probability categories (their mass may grow); none with ``logits``."""
        if self._probs is None:
            return None
        probs = self.probs
        zero = probs == 0
        return _boundary(probs, zero, jnp.zeros(zero.shape, bool))

    @property
    def num_categories(self) -> int:
        """Number of categories ``K``."""
        return int(self._param().shape[-1])

    @property
    def probs(self) -> Array:
        """Normalized probabilities, shape ``batch_shape + (K,)``."""
        if self._probs is not None:
            return self._probs / jnp.sum(self._probs, -1, keepdims=True)
        return jax.nn.softmax(self._logits, -1)

    @property
    def logits(self) -> Array:
        """Normalized log-probabilities (``log_softmax``), shape ``batch_shape + (K,)``."""
        if self._logits is not None:
            return jax.nn.log_softmax(self._logits, -1)
        return _safe_log(self._probs) - jnp.log(jnp.sum(self._probs, -1, keepdims=True))

    @property
    def batch_shape(self) -> Shape:
        return tuple(self._param().shape[:-1])

    def _tails(self) -> tuple[Array, Array]:
        """Cumulative ``F_j = P(K <= j)`` and ``S_j = P(K > j)``, computed separately."""
        probs = self.probs
        lower = jnp.cumsum(probs, -1)
        upper = jnp.flip(jnp.cumsum(jnp.flip(probs, -1), -1), -1)
        upper = jnp.concatenate([upper[..., 1:], jnp.zeros_like(upper[..., :1])], -1)
        return lower, upper

    def icdf(self, u: ArrayLike) -> Array:
        """``min{k : P(K <= k) >= u}`` as a float index (categories with zero mass are skipped).

        ``K`` (= ``num_categories``, out of range) for batch elements with invalid parameters.
        """
        d = jax.tree_util.tree_map(lax.stop_gradient, self)
        u = jnp.asarray(u).astype(d.dtype)[..., None]
        lower, upper = d._tails()
        passed = jnp.where(lower < 0.5, lower < u, upper > 1 - u)[..., :-1]
        k = jnp.sum(passed, -1, dtype=jnp.int32)
        k = jnp.minimum(k, self.num_categories - 1)
        return jnp.where(d._params_valid(), k, self.num_categories).astype(d.dtype)

    def cdf(self, k: ArrayLike) -> Array:
        """``P(K <= floor(k))`` (0 for k < 0, 1 for k >= K - 1)."""
        k = _floor_value(k, self.dtype)
        lower, _ = self._tails()
        num = self.num_categories
        shape = jnp.broadcast_shapes(k.shape, self.batch_shape)
        idx = jnp.clip(k, 0, num - 1).astype(jnp.int32)
        idx = jnp.broadcast_to(idx, shape)[..., None]
        table = jnp.broadcast_to(lower, (*shape, num))
        value = jnp.take_along_axis(table, idx, -1)[..., 0]
        out = jnp.where(k < 0, 0, jnp.where(k >= num - 1, 1, value)).astype(self.dtype)
        return self._poison(out)

    def value_from_index(self, k: ArrayLike) -> Array:
        """Index ``k`` as an int32 category label."""
        return jnp.asarray(k).astype(jnp.int32)

    def index_from_value(self, x: ArrayLike) -> Array:
        """Category label as a float index."""
        return jnp.asarray(x).astype(self.dtype)

    def log_prob(self, value: ArrayLike) -> Array:
        """Log probability of the integer label(s) ``value`` (``-inf`` outside ``[0, K)``)."""
        x = jnp.asarray(value)
        logits = self.logits
        valid = (x >= 0) & (x < self.num_categories) & (x == jnp.floor(x))
        idx = jnp.where(valid, x, 0).astype(jnp.int32)
        shape = jnp.broadcast_shapes(idx.shape, self.batch_shape)
        table = jnp.broadcast_to(logits, (*shape, self.num_categories))
        lp = jnp.take_along_axis(table, jnp.broadcast_to(idx, shape)[..., None], -1)[..., 0]
        return self._poison(jnp.where(valid, lp, -jnp.inf))

    @property
    def mean(self) -> Array:
        """Mean of the category index."""
        return jnp.sum(self.probs * jnp.arange(self.num_categories, dtype=self.dtype), -1)

    @property
    def variance(self) -> Array:
        """Variance of the category index."""
        ks = jnp.arange(self.num_categories, dtype=self.dtype)
        probs = self.probs
        mean = jnp.sum(probs * ks, -1, keepdims=True)
        return jnp.sum(probs * jnp.square(ks - mean), -1)


@register_pytree_node_class
class OneHotCategorical(Categorical):
    """Categorical distribution whose values are one-hot vectors of length ``K``.

    Parameterization, boundaries and invalid parameters as :class:`Categorical`. Support:
    one-hot float vectors; event shape ``(K,)``. The inverse-CDF interface works on category
    indices, as for ``Categorical``; ``value_from_index`` of an out-of-range index (the label
    ``K`` that ``icdf`` returns for invalid parameters) is a NaN vector, so ``sample`` is NaN.
    """

    @property
    def event_shape(self) -> Shape:
        return (self.num_categories,)

    def value_from_index(self, k: ArrayLike) -> Array:
        """One-hot encoding (float dtype) of the index ``k``; NaN vector if out of range."""
        index = jnp.asarray(k).astype(jnp.int32)
        inside = (index >= 0) & (index < self.num_categories)
        one_hot = jax.nn.one_hot(index, self.num_categories, dtype=self.dtype)
        return jnp.where(inside[..., None], one_hot, jnp.asarray(jnp.nan, self.dtype))

    def index_from_value(self, x: ArrayLike) -> Array:
        """Index of the hot entry (argmax over the last axis) as a float."""
        return jnp.argmax(jnp.asarray(x), -1).astype(self.dtype)

    def log_prob(self, value: ArrayLike) -> Array:
        """``sum(value * logits)`` over the last axis (entries equal to 0 contribute 0)."""
        x = jnp.asarray(value).astype(self.dtype)
        logits = self.logits
        return self._poison(jnp.sum(jnp.where(x != 0, x * logits, 0), -1))

    @property
    def mean(self) -> Array:
        return self.probs

    @property
    def variance(self) -> Array:
        probs = self.probs
        return probs * (1 - probs)
