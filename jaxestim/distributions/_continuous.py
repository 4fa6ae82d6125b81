"""Continuous distributions with reparameterized samplers.

Parameter boundaries. Every continuous family's parameter space is open (``scale > 0``,
``concentration > 0``, ``low < high``, ...): at the boundary itself the density is not defined.
Arbitrarily close to it (e.g. ``scale = 1e-7``, in float32 and float64) ``log_prob``, its
gradients and ``rsample`` are finite, wherever the density of the observed value is positive.

Invalid parameters. Concrete out-of-range or non-finite parameters raise ``ValueError`` in the
constructors. Traced ones (under ``jax.jit``/``jax.grad``/``je.grad``) cannot be checked there:
``log_prob`` and ``rsample``/``sample`` return NaN for the batch elements whose parameters are
invalid (see :meth:`Distribution._param_checks`).
"""

from __future__ import annotations

import functools
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy import linalg as jsp_linalg
from jax.scipy import special as jsp_special
from jax.scipy import stats as jsp_stats
from jax.tree_util import register_pytree_node_class
from jax.typing import ArrayLike

from ._base import (
    Array,
    ContinuousDistribution,
    Shape,
    _broadcast_shapes,
    _broadcasting_vmap,
    _check_finite,
    _check_positive,
    _finite,
    _float_params,
    _is_traced,
    _open_uniform,
    _positive,
    _std_normal,
)

__all__ = [
    "Beta",
    "Cauchy",
    "Dirichlet",
    "Exponential",
    "Gamma",
    "Laplace",
    "LogNormal",
    "Logistic",
    "MultivariateNormal",
    "Normal",
    "StudentT",
    "Uniform",
]


def _value(value: ArrayLike, dtype: np.dtype) -> Array:
    return jnp.asarray(value).astype(dtype)


def _betaln(a: Array, b: Array) -> Array:
    """``log B(a, b)`` as ``jax.scipy.special.betaln``, with finite gradients for tiny arguments.

    ``jax.scipy.special.betaln`` selects between ``lgamma`` differences (``max(a, b) < 8``) and
    an asymptotic branch whose gradient is NaN at tiny arguments, which leaks through its
    ``jnp.where``; here the asymptotic branch only sees safe arguments where it is not used.
    """
    lo, hi = jnp.minimum(a, b), jnp.maximum(a, b)
    small = hi < 8
    direct = jsp_special.gammaln(lo) + (jsp_special.gammaln(hi) - jsp_special.gammaln(lo + hi))
    large = jsp_special.betaln(jnp.where(small, 1, lo), jnp.where(small, 8, hi))
    return jnp.where(small, direct, large)


#: Halley steps of :func:`_gamma_log_icdf` (from its initial guesses: float64 to ~1e-14)
_GAMMA_ICDF_STEPS = 4


def _gamma_log_icdf(a: Array, u: Array) -> Array:
    r"""``log x`` with ``P(a, x) = u``: the log of the standard Gamma(``a``) inverse CDF.

    ``P(a, x)`` is the regularized lower incomplete gamma function. For ``u <= 1/2`` it solves
    ``log P(a, e^y) = log u`` (``jax.scipy.special.gammainc``), above ``log Q(a, e^y) =
    log(1 - u)`` (``gammaincc``; ``1 - u`` is exact there), so both tails keep their relative
    accuracy. Both are concave in ``y = log x`` (the log-gamma density is log-concave), with
    ``g' = ±x p_a(x) / F`` and ``g'' = g' (a - x - g')``: :data:`_GAMMA_ICDF_STEPS` Halley steps
    (each clipped to 5 in ``y``) from the initial guess

    * ``a >= 1``: Wilson-Hilferty, ``x = a (1 - 1/(9a) + z / (3 sqrt a))^3`` with
      ``z = Phi^{-1}(u)``; in the lower tail at least ``y_0`` below;
    * ``a < 1`` (or a non-positive Wilson-Hilferty cube): ``y_0 = (log u + log Gamma(a + 1))
      / a`` (from ``P(a, x) <= x^a / Gamma(a + 1)``, a lower bound on the root, exact as
      ``x -> 0``) where ``u <= P(a, 1)``, else the exponential tail
      ``x = 1 + log(Q(a, 1) / (1 - u))``.

    For large ``a`` the incomplete gamma functions lose accuracy (their prefactor
    ``exp(a log x - x - lgamma(a))`` cancels: ``|F error| ~ 2 a eps``) while the Wilson-Hilferty
    guess gains it (``|F error| ~ 5e-3 / a``): the result is ``y_WH + w (y_Halley - y_WH)``
    with the smooth weight ``w = 1 / (1 + (a / a_c)^4)``, ``a_c = sqrt(2.5e-3 / eps)`` (about
    140 in float32, 2.4e6 in float64), continuous in ``a``.

    Working in ``log x`` keeps draws below the dtype's ``tiny`` finite in ``y`` (``Beta`` and
    ``Dirichlet`` normalize in log space). Accuracy and cost: :meth:`Gamma.icdf`.
    """
    a, u = jnp.broadcast_arrays(a, u)
    one = jnp.ones_like(a)
    lower = u <= 0.5
    p = jnp.where(lower, u, 1 - u)
    log_p = jnp.log(p)
    lgamma_a = jsp_special.gammaln(a)
    y_small = (jnp.where(lower, log_p, jnp.log1p(-p)) + jsp_special.gammaln(a + 1)) / a
    q1 = jsp_special.gammaincc(a, one)
    y_tail = jnp.log1p(jnp.maximum(jnp.log(q1) - log_p, 0))
    y_left = jnp.where(lower | (p >= q1), y_small, y_tail)
    z = jnp.where(lower, one, -one) * jsp_special.ndtri(p)
    c = 1 / (9 * a)
    cube = 1 - c + z * jnp.sqrt(c)
    y_wh = jnp.log(a) + 3 * jnp.log(jnp.where(cube > 0, cube, 1))
    y_wh = jnp.where(lower, jnp.maximum(y_wh, y_small), y_wh)
    y = y_start = jnp.where((a < 1) | (cube <= 0), y_left, y_wh)
    sign = jnp.where(lower, one, -one)
    for _ in range(_GAMMA_ICDF_STEPS):
        x = jnp.exp(y)
        log_f = jnp.log(jnp.where(lower, jsp_special.gammainc(a, x), jsp_special.gammaincc(a, x)))
        g = log_f - log_p
        g1 = sign * jnp.exp(a * y - x - lgamma_a - log_f)
        g2 = g1 * (a - x - g1)
        step = 2 * g * g1 / (2 * g1 * g1 - g * g2)
        # x underflowed (F = 0) or overflowed: keep the current y
        y = y - jnp.clip(jnp.where(jnp.isfinite(step), step, 0), -5, 5)
    a_c = math.sqrt(2.5e-3 / float(jnp.finfo(a.dtype).eps))
    return y_start + (y - y_start) / (1 + jnp.square(jnp.square(a / a_c)))


# --- gamma draws with their implicit-reparameterization derivative -----------------------
#
# ``jax.random.gamma``'s derivative in the concentration is the implicit reparameterization
# ``dx/da = -(dF_a/da)(x) / p_a(x)`` (Figurnov et al., 2018), computed element-wise by
# ``jax.lax.random_gamma_grad`` with data-dependent ``lax.while_loop`` s (series and continued
# fractions). Batched per sample (``je.grad_samples``, per-sample whole-program estimators)
# those loops get a batched predicate, which checked mode's ``checkify`` rejects. The draws
# below are ``jax.random.gamma`` / ``jax.random.loggamma`` themselves (same samples) with the
# same derivative, evaluated by broadcasting under ``vmap`` (:func:`_broadcasting_vmap`).


@_broadcasting_vmap
def _gamma_sample_grad(a: Array, x: Array) -> Array:
    """``dx/da`` of a ``Gamma(a, 1)`` sample ``x`` at fixed noise (element-wise)."""
    a, x = jnp.broadcast_arrays(a, x)
    return jax.lax.random_gamma_grad(a, x)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def _standard_gamma(key: Array, a: Array, shape: Shape, dtype: np.dtype, log: bool) -> Array:
    """``jax.random.gamma(key, a, shape, dtype)`` (``log``: ``jax.random.loggamma``)."""
    draw = jax.random.loggamma if log else jax.random.gamma
    return draw(key, a, shape, dtype)


@_standard_gamma.defjvp
def _standard_gamma_jvp(shape, dtype, log, primals, tangents):
    key, a = primals
    _, a_dot = tangents
    y = _standard_gamma(key, a, shape, dtype, log)
    if not log:
        return y, _gamma_sample_grad(a, y) * a_dot
    # d log x / da = (dx/da) / x, with x = exp(y) kept positive where it underflows
    x = jnp.maximum(jnp.exp(y), jnp.finfo(y.dtype).tiny)
    return y, _gamma_sample_grad(a, x) / x * a_dot


class _LocScale(ContinuousDistribution):
    """Location-scale family ``X = loc + scale * Z`` with ``Z`` a standard variate."""

    _nan_params_propagate: ClassVar[bool] = True
    _coupled: ClassVar[bool] = True

    _param_names: ClassVar[tuple[str, ...]] = ("loc", "scale")

    def __init__(self, loc: ArrayLike, scale: ArrayLike) -> None:
        owner = type(self).__name__
        loc, scale = _float_params(loc, scale)
        _broadcast_shapes(owner, loc=loc, scale=scale)
        _check_finite(owner, "loc", loc)
        _check_positive(owner, "scale", scale)
        self._loc = loc
        self._scale = scale

    @property
    def loc(self) -> Array:
        """Location parameter."""
        return self._loc

    @property
    def scale(self) -> Array:
        """Scale parameter (> 0)."""
        return self._scale

    @property
    def batch_shape(self) -> Shape:
        return tuple(jnp.broadcast_shapes(self._loc.shape, self._scale.shape))

    def _param_checks(self) -> tuple[tuple[str, Array, str], ...]:
        b = self._broadcast
        return (
            ("loc", b(_finite(self._loc)), "finite"),
            ("scale", b(_positive(self._scale)), "finite and > 0"),
        )

    def _standard(self, key: Array, shape: Shape, dtype: np.dtype) -> Array:
        raise NotImplementedError

    def _rsample(self, key: Array, shape: Shape) -> Array:
        return self._loc + self._scale * self._standard(key, shape, self.dtype)

    def _broadcast(self, x: Array) -> Array:
        return jnp.broadcast_to(x, self.batch_shape)


@register_pytree_node_class
class Normal(_LocScale):
    """Normal distribution ``N(loc, scale**2)``.

    Parameterization: ``loc`` (real), ``scale`` (> 0, the standard deviation).
    Support: the real line. Reparameterized sample: ``loc + scale * eps``, ``eps ~ N(0, 1)``.
    Finite ``log_prob``, gradients and samples arbitrarily close to the parameter boundary;
    traced invalid (out-of-range, NaN) parameters give NaN ``log_prob`` and samples.
    """

    _stream_native = True

    def _standard(self, key: Array, shape: Shape, dtype: np.dtype) -> Array:
        return _std_normal(key, shape, dtype)

    def log_prob(self, value: ArrayLike) -> Array:
        """Log density of ``value`` (NaN where the parameters are invalid)."""
        lp = jsp_stats.norm.logpdf(_value(value, self.dtype), self._loc, self._scale)
        return self._poison(lp)

    @property
    def mean(self) -> Array:
        return self._broadcast(self._loc)

    @property
    def variance(self) -> Array:
        return self._broadcast(jnp.square(self._scale))


@register_pytree_node_class
class LogNormal(_LocScale):
    """Log-normal distribution: ``exp(Y)`` with ``Y ~ N(loc, scale**2)``.

    Parameterization: ``loc`` (real) and ``scale`` (> 0) of the underlying normal.
    Support: ``(0, inf)``. Reparameterized sample: ``exp(loc + scale * eps)``.
    Finite ``log_prob``, gradients and samples arbitrarily close to the parameter boundary;
    traced invalid (out-of-range, NaN) parameters give NaN ``log_prob`` and samples.
    """

    _stream_native = True

    def _standard(self, key: Array, shape: Shape, dtype: np.dtype) -> Array:
        return _std_normal(key, shape, dtype)

    def _rsample(self, key: Array, shape: Shape) -> Array:
        return jnp.exp(super()._rsample(key, shape))

    def log_prob(self, value: ArrayLike) -> Array:
        """Log density of ``value`` (``-inf`` for ``value <= 0``)."""
        x = _value(value, self.dtype)
        positive = x > 0
        safe = jnp.where(positive, x, 1)
        log_x = jnp.log(safe)
        lp = jsp_stats.norm.logpdf(log_x, self._loc, self._scale) - log_x
        return self._poison(jnp.where(positive, lp, -jnp.inf))

    @property
    def mean(self) -> Array:
        return self._broadcast(jnp.exp(self._loc + 0.5 * jnp.square(self._scale)))

    @property
    def variance(self) -> Array:
        s2 = jnp.square(self._scale)
        return self._broadcast(jnp.expm1(s2) * jnp.exp(2 * self._loc + s2))


@register_pytree_node_class
class Laplace(_LocScale):
    """Laplace (double exponential) distribution.

    Parameterization: ``loc`` (real), ``scale`` (> 0); density ``exp(-|x-loc|/scale)/(2 scale)``.
    Support: the real line. Reparameterized sample: ``loc + scale * eps``, standard Laplace eps.
    Finite ``log_prob``, gradients and samples arbitrarily close to the parameter boundary;
    traced invalid (out-of-range, NaN) parameters give NaN ``log_prob`` and samples.
    """

    def _standard(self, key: Array, shape: Shape, dtype: np.dtype) -> Array:
        return jax.random.laplace(key, shape, dtype)

    def log_prob(self, value: ArrayLike) -> Array:
        """Log density of ``value`` (NaN where the parameters are invalid)."""
        lp = jsp_stats.laplace.logpdf(_value(value, self.dtype), self._loc, self._scale)
        return self._poison(lp)

    @property
    def mean(self) -> Array:
        return self._broadcast(self._loc)

    @property
    def variance(self) -> Array:
        return self._broadcast(2 * jnp.square(self._scale))


@register_pytree_node_class
class Logistic(_LocScale):
    """Logistic distribution.

    Parameterization: ``loc`` (real), ``scale`` (> 0); CDF ``sigmoid((x - loc) / scale)``.
    Support: the real line. Reparameterized sample: ``loc + scale * eps``, standard logistic eps.
    Finite ``log_prob``, gradients and samples arbitrarily close to the parameter boundary;
    traced invalid (out-of-range, NaN) parameters give NaN ``log_prob`` and samples.
    """

    def _standard(self, key: Array, shape: Shape, dtype: np.dtype) -> Array:
        return jax.random.logistic(key, shape, dtype)

    def log_prob(self, value: ArrayLike) -> Array:
        """Log density of ``value`` (NaN where the parameters are invalid)."""
        lp = jsp_stats.logistic.logpdf(_value(value, self.dtype), self._loc, self._scale)
        return self._poison(lp)

    @property
    def mean(self) -> Array:
        return self._broadcast(self._loc)

    @property
    def variance(self) -> Array:
        return self._broadcast(jnp.square(self._scale) * (math.pi**2 / 3))


@register_pytree_node_class
class Cauchy(_LocScale):
    """Cauchy distribution.

    Parameterization: ``loc`` (real, the median), ``scale`` (> 0, the half width at half maximum).
    Support: the real line. Reparameterized sample: ``loc + scale * eps``, standard Cauchy eps.
    The mean and variance are undefined and reported as NaN.
    Finite ``log_prob``, gradients and samples arbitrarily close to the parameter boundary;
    traced invalid (out-of-range, NaN) parameters give NaN ``log_prob`` and samples.
    """

    def _standard(self, key: Array, shape: Shape, dtype: np.dtype) -> Array:
        return jax.random.cauchy(key, shape, dtype)

    def log_prob(self, value: ArrayLike) -> Array:
        """Log density of ``value`` (NaN where the parameters are invalid)."""
        lp = jsp_stats.cauchy.logpdf(_value(value, self.dtype), self._loc, self._scale)
        return self._poison(lp)

    @property
    def mean(self) -> Array:
        return jnp.full(self.batch_shape, jnp.nan, self.dtype)

    @property
    def variance(self) -> Array:
        return jnp.full(self.batch_shape, jnp.nan, self.dtype)


@register_pytree_node_class
class Uniform(ContinuousDistribution):
    """Continuous uniform distribution on ``[low, high)``.

    Parameterization: ``low < high`` (both finite). Support: ``[low, high]``.
    Reparameterized sample: ``low + (high - low) * u`` with ``u ~ U[0, 1)``.
    Finite ``log_prob``, gradients and samples arbitrarily close to the parameter boundary;
    traced invalid (out-of-range, NaN) parameters give NaN ``log_prob`` and samples.
    """

    _nan_params_propagate: ClassVar[bool] = True
    _coupled: ClassVar[bool] = True

    _param_names: ClassVar[tuple[str, ...]] = ("low", "high")

    def __init__(self, low: ArrayLike, high: ArrayLike) -> None:
        low, high = _float_params(low, high)
        _broadcast_shapes("Uniform", low=low, high=high)
        _check_finite("Uniform", "low", low)
        _check_finite("Uniform", "high", high)
        if not (_is_traced(low) or _is_traced(high)):
            gap = np.asarray(high) - np.asarray(low)
            if gap.size and not np.all(gap > 0):
                raise ValueError(
                    f"Uniform: `low` must be < `high` element-wise, got min(high - low) {gap.min()}"
                )
        self._low = low
        self._high = high

    @property
    def low(self) -> Array:
        """Lower end of the support."""
        return self._low

    @property
    def high(self) -> Array:
        """Upper end of the support."""
        return self._high

    @property
    def batch_shape(self) -> Shape:
        return tuple(jnp.broadcast_shapes(self._low.shape, self._high.shape))

    def _param_checks(self) -> tuple[tuple[str, Array, str], ...]:
        shape = self.batch_shape
        return (
            ("low", jnp.broadcast_to(_finite(self._low), shape), "finite"),
            ("high", jnp.broadcast_to(_finite(self._high), shape), "finite"),
            ("high", jnp.broadcast_to(self._low < self._high, shape), "> `low` element-wise"),
        )

    def _support_boundary(self):
        """The support ``[low, high]`` moves with both parameters (everywhere)."""
        low, high = jnp.broadcast_arrays(self._low, self._high)
        q = jnp.concatenate([jnp.reshape(low, (-1,)), jnp.reshape(high, (-1,))])
        return q, jnp.zeros_like(q), jnp.ones(q.shape, bool)

    def _rsample(self, key: Array, shape: Shape) -> Array:
        u = jax.random.uniform(key, shape, self.dtype)
        return self._low + (self._high - self._low) * u

    def log_prob(self, value: ArrayLike) -> Array:
        """Log density of ``value`` (``-inf`` outside ``[low, high]``)."""
        x = _value(value, self.dtype)
        width = self._high - self._low
        inside = (x >= self._low) & (x <= self._high)
        return self._poison(jnp.where(inside, -jnp.log(width), -jnp.inf))

    @property
    def mean(self) -> Array:
        return jnp.broadcast_to((self._low + self._high) / 2, self.batch_shape)

    @property
    def variance(self) -> Array:
        return jnp.broadcast_to(jnp.square(self._high - self._low) / 12, self.batch_shape)


@register_pytree_node_class
class Exponential(ContinuousDistribution):
    """Exponential distribution with density ``rate * exp(-rate * x)``.

    Parameterization: ``rate`` (> 0). Support: ``[0, inf)``.
    Reparameterized sample: ``E / rate`` with ``E`` a standard exponential variate.
    Finite ``log_prob``, gradients and samples arbitrarily close to the parameter boundary;
    traced invalid (out-of-range, NaN) parameters give NaN ``log_prob`` and samples.
    """

    _nan_params_propagate: ClassVar[bool] = True
    _coupled: ClassVar[bool] = True

    _param_names: ClassVar[tuple[str, ...]] = ("rate",)

    def __init__(self, rate: ArrayLike) -> None:
        (rate,) = _float_params(rate)
        _check_positive("Exponential", "rate", rate)
        self._rate = rate

    @property
    def rate(self) -> Array:
        """Rate parameter (inverse scale, > 0)."""
        return self._rate

    @property
    def batch_shape(self) -> Shape:
        return tuple(self._rate.shape)

    def _param_checks(self) -> tuple[tuple[str, Array, str], ...]:
        return (("rate", _positive(self._rate), "finite and > 0"),)

    def _rsample(self, key: Array, shape: Shape) -> Array:
        return jax.random.exponential(key, shape, self.dtype) / self._rate

    def log_prob(self, value: ArrayLike) -> Array:
        """Log density of ``value`` (``-inf`` for ``value < 0``)."""
        x = _value(value, self.dtype)
        return self._poison(jnp.where(x >= 0, jnp.log(self._rate) - self._rate * x, -jnp.inf))

    @property
    def mean(self) -> Array:
        return 1 / self._rate

    @property
    def variance(self) -> Array:
        return 1 / jnp.square(self._rate)


@register_pytree_node_class
class Gamma(ContinuousDistribution):
    """Gamma distribution with density ``rate**a x**(a-1) exp(-rate x) / Gamma(a)``.

    Parameterization: ``concentration`` ``a`` (> 0, shape) and ``rate`` (> 0, inverse scale).
    Support: ``(0, inf)``. Reparameterized sample:
    ``jax.random.gamma(key, concentration) / rate`` (implicit reparameterization in the
    concentration). In low precision, draws smaller than the dtype's ``tiny`` round to 0.
    That rejection sampler jumps as the concentration moves (for a fixed key), so
    :meth:`coupled_sample` (common random numbers) samples by inversion, :meth:`icdf`.
    Finite ``log_prob``, gradients and samples arbitrarily close to the parameter boundary;
    traced invalid (out-of-range, NaN) parameters give NaN ``log_prob`` and samples.
    """

    _param_names: ClassVar[tuple[str, ...]] = ("concentration", "rate")
    _coupled: ClassVar[bool] = True

    def __init__(self, concentration: ArrayLike, rate: ArrayLike) -> None:
        concentration, rate = _float_params(concentration, rate)
        _broadcast_shapes("Gamma", concentration=concentration, rate=rate)
        _check_positive("Gamma", "concentration", concentration)
        _check_positive("Gamma", "rate", rate)
        self._concentration = concentration
        self._rate = rate

    @property
    def concentration(self) -> Array:
        """Shape parameter (> 0)."""
        return self._concentration

    @property
    def rate(self) -> Array:
        """Rate parameter (> 0)."""
        return self._rate

    @property
    def batch_shape(self) -> Shape:
        return tuple(jnp.broadcast_shapes(self._concentration.shape, self._rate.shape))

    def _param_checks(self) -> tuple[tuple[str, Array, str], ...]:
        shape = self.batch_shape
        return (
            (
                "concentration",
                jnp.broadcast_to(_positive(self._concentration), shape),
                "finite and > 0",
            ),
            ("rate", jnp.broadcast_to(_positive(self._rate), shape), "finite and > 0"),
        )

    def _rsample(self, key: Array, shape: Shape) -> Array:
        a = jnp.broadcast_to(self._concentration, self.batch_shape)
        return _standard_gamma(key, a, shape, self.dtype, False) / self._rate

    def _coupled_rsample(self, key: Array, shape: Shape) -> Array:
        """Inversion ``F^{-1}(u) / rate``, ``u`` uniform from ``key`` (see :meth:`icdf`)."""
        y = _gamma_log_icdf(self._concentration, _open_uniform(key, shape, self.dtype))
        return jnp.exp(y) / self._rate

    def icdf(self, u: ArrayLike) -> Array:
        """The quantile function ``F^{-1}(u)`` for ``u`` in ``(0, 1)``.

        ``x = P^{-1}(a, u) / rate``, ``P`` the regularized lower incomplete gamma function,
        by four safeguarded Halley steps in ``log x`` on ``log P`` (``u <= 1/2``) or ``log Q``
        (``Q = 1 - P``, above) from a Wilson-Hilferty (``a >= 1``) or small-``a`` guess.
        Continuous, and increasing, in ``a`` and ``u``: the coupling common random numbers
        use (:meth:`coupled_sample`). Accuracy: in float64 ``|F(x) - u| / min(u, 1 - u)`` is
        about ``1e-14`` for ``a`` in ``[1e-3, 1e3]`` (``1e-10`` at ``a = 1e5``); in float32,
        where ``jax.scipy.special.gammainc`` itself is less accurate, about ``1e-5`` for
        ``a`` in ``[0.1, 3]``, and ``|F(x) - u| < 3e-5`` for ``a <= 1e4`` (``1e-4`` at
        ``a = 1e5``, ``3e-4`` at ``1e6``; in the upper tail of ``a < 0.01`` the relative
        error reaches ``1e-3``). Quantiles below
        the dtype's ``tiny`` round to 0. Cost: nine incomplete gamma functions, one ``ndtri``
        and two ``lgamma`` per value, several times a rejection draw. NaN where the parameters
        are invalid.
        """
        y = _gamma_log_icdf(self._concentration, _value(u, self.dtype))
        return self._poison(jnp.exp(y) / self._rate)

    def log_prob(self, value: ArrayLike) -> Array:
        """Log density of ``value`` (``-inf`` for ``value < 0``; NaN where parameters are invalid).

        ``a log(rate) + (a - 1) log(x) - rate x - lgamma(a)``: the gradient in ``rate`` is
        ``a / rate - x`` without cancellation (exact as ``a -> 0``).
        """
        x = _value(value, self.dtype)
        a, rate = self._concentration, self._rate
        negative = x < 0
        xs = jnp.where(negative, 1, x)
        lp = a * jnp.log(rate) + jsp_special.xlogy(a - 1, xs) - rate * xs - jsp_special.gammaln(a)
        return self._poison(jnp.where(negative, -jnp.inf, lp))

    @property
    def mean(self) -> Array:
        return jnp.broadcast_to(self._concentration / self._rate, self.batch_shape)

    @property
    def variance(self) -> Array:
        return jnp.broadcast_to(self._concentration / jnp.square(self._rate), self.batch_shape)


@register_pytree_node_class
class Beta(ContinuousDistribution):
    """Beta distribution with density ``x**(c1-1) (1-x)**(c0-1) / B(c1, c0)``.

    Parameterization: ``concentration1`` (> 0, exponent of ``x``) and ``concentration0``
    (> 0, exponent of ``1 - x``). Support: ``(0, 1)``. Reparameterized sample:
    ``jax.random.beta`` (implicitly reparameterized through its gamma draws).
    :meth:`coupled_sample` (common random numbers) draws ``G1 / (G1 + G0)`` from gammas
    sampled by inversion (:meth:`Gamma.icdf`), continuous in both concentrations.
    Finite ``log_prob``, gradients and samples arbitrarily close to the parameter boundary;
    traced invalid (out-of-range, NaN) parameters give NaN ``log_prob`` and samples.
    """

    _param_names: ClassVar[tuple[str, ...]] = ("concentration1", "concentration0")
    _coupled: ClassVar[bool] = True

    def __init__(self, concentration1: ArrayLike, concentration0: ArrayLike) -> None:
        c1, c0 = _float_params(concentration1, concentration0)
        _broadcast_shapes("Beta", concentration1=c1, concentration0=c0)
        _check_positive("Beta", "concentration1", c1)
        _check_positive("Beta", "concentration0", c0)
        self._concentration1 = c1
        self._concentration0 = c0

    @property
    def concentration1(self) -> Array:
        """Concentration of ``x`` (often called ``alpha``)."""
        return self._concentration1

    @property
    def concentration0(self) -> Array:
        """Concentration of ``1 - x`` (often called ``beta``)."""
        return self._concentration0

    @property
    def batch_shape(self) -> Shape:
        return tuple(jnp.broadcast_shapes(self._concentration1.shape, self._concentration0.shape))

    def _param_checks(self) -> tuple[tuple[str, Array, str], ...]:
        shape = self.batch_shape
        return tuple(
            (name, jnp.broadcast_to(_positive(c), shape), "finite and > 0")
            for name, c in (
                ("concentration1", self._concentration1),
                ("concentration0", self._concentration0),
            )
        )

    def _rsample(self, key: Array, shape: Shape) -> Array:
        # jax.random.beta's construction (same draws) from log-gamma draws whose derivative
        # is taken by _standard_gamma's rule
        key_a, key_b = jax.random.split(key)
        a = jnp.broadcast_to(jnp.asarray(self._concentration1, self.dtype), shape)
        b = jnp.broadcast_to(jnp.asarray(self._concentration0, self.dtype), shape)
        log_a = _standard_gamma(key_a, a, shape, self.dtype, True)
        log_b = _standard_gamma(key_b, b, shape, self.dtype, True)
        log_max = jnp.maximum(log_a, log_b)
        ga, gb = jnp.exp(log_a - log_max), jnp.exp(log_b - log_max)
        return ga / (ga + gb)

    def _coupled_rsample(self, key: Array, shape: Shape) -> Array:
        """``sigmoid(log G1 - log G0)``, ``G_i ~ Gamma(c_i)`` by inversion (:meth:`Gamma.icdf`)."""
        k1, k0 = jax.random.split(key)
        y1 = _gamma_log_icdf(self._concentration1, _open_uniform(k1, shape, self.dtype))
        y0 = _gamma_log_icdf(self._concentration0, _open_uniform(k0, shape, self.dtype))
        return jax.nn.sigmoid(y1 - y0)

    def log_prob(self, value: ArrayLike) -> Array:
        """Log density of ``value`` (NaN where the parameters are invalid)."""
        x = _value(value, self.dtype)
        a, b = self._concentration1, self._concentration0
        inside = (x >= 0) & (x <= 1)
        xs = jnp.where(inside, x, 0.5)
        lp = jsp_special.xlogy(a - 1, xs) + jsp_special.xlog1py(b - 1, -xs) - _betaln(a, b)
        return self._poison(jnp.where(inside, lp, -jnp.inf))

    @property
    def mean(self) -> Array:
        total = self._concentration1 + self._concentration0
        return jnp.broadcast_to(self._concentration1 / total, self.batch_shape)

    @property
    def variance(self) -> Array:
        a, b = self._concentration1, self._concentration0
        total = a + b
        return jnp.broadcast_to(a * b / (jnp.square(total) * (total + 1)), self.batch_shape)


@register_pytree_node_class
class Dirichlet(ContinuousDistribution):
    """Dirichlet distribution on the probability simplex.

    Parameterization: ``concentration`` of shape ``batch_shape + (K,)`` with entries > 0.
    Support: the simplex ``{x : x_i >= 0, sum_i x_i = 1}``; event shape ``(K,)``.
    Reparameterized sample: ``jax.random.dirichlet`` (normalized gammas drawn in log space,
    implicitly reparameterized). :meth:`coupled_sample` (common random numbers) normalizes
    gammas sampled by inversion (:meth:`Gamma.icdf`), continuous in the concentrations.
    Finite ``log_prob``, gradients and samples arbitrarily close to the parameter boundary;
    traced invalid (out-of-range, NaN) parameters give NaN ``log_prob`` and samples.
    """

    _param_names: ClassVar[tuple[str, ...]] = ("concentration",)
    _coupled: ClassVar[bool] = True

    def __init__(self, concentration: ArrayLike) -> None:
        (concentration,) = _float_params(concentration)
        if concentration.ndim < 1 or concentration.shape[-1] < 1:
            raise ValueError(
                "Dirichlet: `concentration` must have at least one dimension of size >= 1 "
                f"(the event dimension K), got shape {concentration.shape}"
            )
        _check_positive("Dirichlet", "concentration", concentration)
        self._concentration = concentration

    @property
    def concentration(self) -> Array:
        """Concentrations, shape ``batch_shape + (K,)``."""
        return self._concentration

    @property
    def batch_shape(self) -> Shape:
        return tuple(self._concentration.shape[:-1])

    @property
    def event_shape(self) -> Shape:
        return tuple(self._concentration.shape[-1:])

    def _param_checks(self) -> tuple[tuple[str, Array, str], ...]:
        ok = jnp.all(_positive(self._concentration), -1)
        return (("concentration", ok, "finite and > 0"),)

    def _rsample(self, key: Array, shape: Shape) -> Array:
        # jax.random.dirichlet's construction (same draws): normalized log-gamma draws
        alpha = jnp.asarray(self._concentration, self.dtype)
        y = _standard_gamma(key, jnp.broadcast_to(alpha, shape), shape, self.dtype, True)
        e = jnp.exp(y - jax.lax.stop_gradient(y.max(-1, keepdims=True)))
        return e / e.sum(-1, keepdims=True)

    def _coupled_rsample(self, key: Array, shape: Shape) -> Array:
        """``softmax(log G)``, ``G_i ~ Gamma(a_i)`` by inversion (:meth:`Gamma.icdf`)."""
        y = _gamma_log_icdf(self._concentration, _open_uniform(key, shape, self.dtype))
        return jax.nn.softmax(y, axis=-1)

    def log_prob(self, value: ArrayLike) -> Array:
        """Log density of ``value`` (last axis = event axis; not checked to lie on the simplex)."""
        x = _value(value, self.dtype)
        a = self._concentration
        log_norm = jnp.sum(jsp_special.gammaln(a), -1) - jsp_special.gammaln(jnp.sum(a, -1))
        return self._poison(jnp.sum(jsp_special.xlogy(a - 1, x), -1) - log_norm)

    @property
    def mean(self) -> Array:
        a = self._concentration
        return a / jnp.sum(a, -1, keepdims=True)

    @property
    def variance(self) -> Array:
        a = self._concentration
        total = jnp.sum(a, -1, keepdims=True)
        return a * (total - a) / (jnp.square(total) * (total + 1))


@register_pytree_node_class
class MultivariateNormal(ContinuousDistribution):
    """Multivariate normal ``N(loc, scale_tril @ scale_tril.T)``.

    Parameterization: ``loc`` of shape ``(..., d)`` and ``scale_tril`` of shape ``(..., d, d)``,
    lower triangular with a positive diagonal (the Cholesky factor of the covariance; only its
    lower triangle is used). Support: ``R^d``; event shape ``(d,)``.
    Reparameterized sample: ``loc + scale_tril @ eps`` with ``eps ~ N(0, I_d)``.
    Finite ``log_prob``, gradients and samples arbitrarily close to the parameter boundary;
    traced invalid (out-of-range, NaN) parameters give NaN ``log_prob`` and samples.
    """

    _param_names: ClassVar[tuple[str, ...]] = ("loc", "scale_tril")
    _coupled: ClassVar[bool] = True

    def __init__(self, loc: ArrayLike, scale_tril: ArrayLike) -> None:
        owner = "MultivariateNormal"
        loc, scale_tril = _float_params(loc, scale_tril)
        if loc.ndim < 1:
            raise ValueError(
                f"{owner}: `loc` must have at least one dimension (the event dimension), "
                f"got shape {loc.shape}"
            )
        if scale_tril.ndim < 2 or scale_tril.shape[-1] != scale_tril.shape[-2]:
            raise ValueError(
                f"{owner}: `scale_tril` must be square in its last two axes, "
                f"got shape {scale_tril.shape}"
            )
        if loc.shape[-1] != scale_tril.shape[-1]:
            raise ValueError(
                f"{owner}: the last dimension of `loc` ({loc.shape[-1]}) must match the size of "
                f"`scale_tril` ({scale_tril.shape[-1]}); got shapes {loc.shape} and "
                f"{scale_tril.shape}"
            )
        _broadcast_shapes(
            owner,
            loc=jax.ShapeDtypeStruct(loc.shape[:-1], loc.dtype),
            scale_tril=jax.ShapeDtypeStruct(scale_tril.shape[:-2], scale_tril.dtype),
        )
        _check_finite(owner, "loc", loc)
        _check_finite(owner, "scale_tril", scale_tril)
        if not _is_traced(scale_tril):
            matrix = np.asarray(scale_tril)
            diag = np.diagonal(matrix, axis1=-2, axis2=-1)
            if diag.size and not np.all(diag > 0):
                raise ValueError(
                    f"{owner}: `scale_tril` must have a positive diagonal, got min {diag.min()}"
                )
            upper = np.triu(matrix, k=1)
            if upper.size and np.any(upper != 0):
                raise ValueError(
                    f"{owner}: `scale_tril` must be lower triangular, got a nonzero entry above "
                    f"the diagonal (max abs {np.abs(upper).max()})"
                )
        self._loc = loc
        self._scale_tril = scale_tril

    @property
    def loc(self) -> Array:
        """Mean vector(s), shape ``(..., d)``."""
        return self._loc

    @property
    def scale_tril(self) -> Array:
        """Lower-triangular Cholesky factor(s) of the covariance, shape ``(..., d, d)``."""
        return jnp.tril(self._scale_tril)

    @property
    def covariance_matrix(self) -> Array:
        """Covariance ``scale_tril @ scale_tril.T``, shape ``batch_shape + (d, d)``."""
        tril = self.scale_tril
        cov = tril @ jnp.swapaxes(tril, -1, -2)
        return jnp.broadcast_to(cov, self.batch_shape + self.event_shape * 2)

    @property
    def batch_shape(self) -> Shape:
        return tuple(jnp.broadcast_shapes(self._loc.shape[:-1], self._scale_tril.shape[:-2]))

    @property
    def event_shape(self) -> Shape:
        return tuple(self._loc.shape[-1:])

    def _param_checks(self) -> tuple[tuple[str, Array, str], ...]:
        shape = self.batch_shape
        m = self._scale_tril
        diag = jnp.diagonal(m, axis1=-2, axis2=-1)
        upper = jnp.triu(m, k=1)
        return (
            ("loc", jnp.broadcast_to(jnp.all(_finite(self._loc), -1), shape), "finite"),
            ("scale_tril", jnp.broadcast_to(jnp.all(_finite(m), (-2, -1)), shape), "finite"),
            (
                "scale_tril",
                jnp.broadcast_to(jnp.all(diag > 0, -1), shape),
                "with a positive diagonal",
            ),
            (
                "scale_tril",
                jnp.broadcast_to(jnp.all(upper == 0, (-2, -1)), shape),
                "lower triangular",
            ),
        )

    _stream_native = True

    def _rsample(self, key: Array, shape: Shape) -> Array:
        eps = _std_normal(key, shape, self.dtype)
        return self._loc + jnp.matmul(self.scale_tril, eps[..., None])[..., 0]

    def log_prob(self, value: ArrayLike) -> Array:
        """Log density of ``value`` (last axis = event axis), via a triangular solve."""
        d = self.event_shape[0]
        batch = self.batch_shape
        diff = _value(value, self.dtype) - self._loc
        diff = jnp.broadcast_to(diff, jnp.broadcast_shapes(diff.shape, (*batch, d)))
        sample_shape = diff.shape[: diff.ndim - 1 - len(batch)]
        n = math.prod(sample_shape)
        # Move the sample dimensions to the right so that one solve handles all draws.
        flat = diff.reshape((n, *batch, d))
        rhs = jnp.moveaxis(flat, 0, -1)  # batch + (d, n)
        tril = jnp.broadcast_to(self.scale_tril, (*batch, d, d))
        z = jsp_linalg.solve_triangular(tril, rhs, lower=True)
        maha = jnp.moveaxis(jnp.sum(jnp.square(z), axis=-2), -1, 0).reshape(sample_shape + batch)
        log_det = jnp.sum(jnp.log(jnp.diagonal(tril, axis1=-2, axis2=-1)), -1)
        return self._poison(-0.5 * maha - log_det - 0.5 * d * math.log(2 * math.pi))

    @property
    def mean(self) -> Array:
        return jnp.broadcast_to(self._loc, self.batch_shape + self.event_shape)

    @property
    def variance(self) -> Array:
        var = jnp.sum(jnp.square(self.scale_tril), -1)
        return jnp.broadcast_to(var, self.batch_shape + self.event_shape)


@register_pytree_node_class
class StudentT(_LocScale):
    """Student's t distribution with ``df`` degrees of freedom, location ``loc``, scale ``scale``.

    Density ``Gamma((df+1)/2) / (Gamma(df/2) sqrt(df pi) scale) (1 + z**2/df)**(-(df+1)/2)``
    with ``z = (x - loc) / scale``. Parameterization: ``df`` (> 0), ``loc`` (finite), ``scale``
    (> 0). Support: the real line.

    Reparameterized sample: ``loc + scale * N * sqrt(df / (2 G))`` with ``N ~ N(0, 1)`` and
    ``G ~ Gamma(df / 2, 1)`` drawn by ``jax.random.gamma``, whose implicit reparameterization
    (Figurnov et al., 2018) makes the draw pathwise differentiable in ``df`` too.
    :meth:`coupled_sample` (common random numbers) draws ``G`` by inversion
    (:meth:`Gamma.icdf`) instead of by rejection, so it is continuous in ``df``. The mean is
    ``loc`` for ``df > 1`` (NaN otherwise), the variance ``scale**2 df / (df - 2)`` for
    ``df > 2`` (``inf`` for ``1 < df <= 2``, NaN for ``df <= 1``). Traced invalid (out-of-range,
    NaN) parameters give NaN ``log_prob``, ``cdf`` and samples.
    """

    _nan_params_propagate: ClassVar[bool] = True

    _param_names: ClassVar[tuple[str, ...]] = ("df", "loc", "scale")

    def __init__(self, df: ArrayLike, loc: ArrayLike = 0.0, scale: ArrayLike = 1.0) -> None:
        df, loc, scale = _float_params(df, loc, scale)
        _broadcast_shapes("StudentT", df=df, loc=loc, scale=scale)
        _check_positive("StudentT", "df", df)
        _check_finite("StudentT", "loc", loc)
        _check_positive("StudentT", "scale", scale)
        self._df = df
        self._loc = loc
        self._scale = scale

    @property
    def df(self) -> Array:
        """Degrees of freedom (> 0)."""
        return self._df

    @property
    def batch_shape(self) -> Shape:
        return tuple(jnp.broadcast_shapes(self._df.shape, self._loc.shape, self._scale.shape))

    def _param_checks(self) -> tuple[tuple[str, Array, str], ...]:
        b = self._broadcast
        return (("df", b(_positive(self._df)), "finite and > 0"), *super()._param_checks())

    def _rsample(self, key: Array, shape: Shape) -> Array:
        key_n, key_g = jax.random.split(key)
        half_df = jnp.broadcast_to(self._df / 2, self.batch_shape)
        n = jax.random.normal(key_n, shape, self.dtype)
        g = _standard_gamma(key_g, half_df, shape, self.dtype, False)
        return self._loc + self._scale * n * jnp.sqrt(half_df / g)

    def _coupled_rsample(self, key: Array, shape: Shape) -> Array:
        """As :meth:`_rsample` with ``G`` sampled by inversion (:meth:`Gamma.icdf`)."""
        key_n, key_g = jax.random.split(key)
        half_df = self._df / 2
        n = jax.random.normal(key_n, shape, self.dtype)
        y = _gamma_log_icdf(half_df, _open_uniform(key_g, shape, self.dtype))
        return self._loc + self._scale * n * jnp.exp(0.5 * (jnp.log(half_df) - y))

    def log_prob(self, value: ArrayLike) -> Array:
        """Log density of ``value`` (``jax.scipy.stats.t.logpdf``; NaN where invalid)."""
        lp = jsp_stats.t.logpdf(_value(value, self.dtype), self._df, self._loc, self._scale)
        return self._poison(lp)

    def cdf(self, value: ArrayLike) -> Array:
        """``P(X <= value) = 1/2 + sign(z)/2 (1 - I_{df/(df+z^2)}(df/2, 1/2))``, ``z`` standardized.

        ``I`` is the regularized incomplete beta function (``jax.scipy.special.betainc``);
        differentiable in ``value``, ``loc`` and ``scale`` (JAX does not differentiate
        ``betainc`` in ``df``). NaN where the parameters are invalid.
        """
        z = (_value(value, self.dtype) - self._loc) / self._scale
        df = self._df
        tail = 0.5 * jsp_special.betainc(df / 2, jnp.asarray(0.5, self.dtype), df / (df + z * z))
        return self._poison(jnp.where(z > 0, 1 - tail, tail))

    @property
    def mean(self) -> Array:
        return self._broadcast(jnp.where(self._df > 1, self._loc, jnp.nan))

    @property
    def variance(self) -> Array:
        df = self._df
        ratio = df / jnp.where(df > 2, df - 2, 1)
        var = jnp.where(df > 2, jnp.square(self._scale) * ratio, jnp.inf)
        return self._broadcast(jnp.where(df > 1, var, jnp.nan))
