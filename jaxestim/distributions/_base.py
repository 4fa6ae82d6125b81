"""Base classes and shared helpers for :mod:`jaxestim.distributions`.

Every distribution is an immutable JAX pytree whose leaves are its array parameters as stored.
Reconstruction from leaves (``tree_unflatten``) bypasses validation, so leaves may be tracers,
``None`` or arbitrary sentinel objects (as produced by ``jax.tree_util`` utilities).

Parameter validity. Constructors check concrete parameters and raise ``ValueError``. Traced
parameters (inside ``jax.jit``, ``jax.grad``, ``je.grad``, ...) cannot be checked there, so every
distribution also exposes traceable checks, :meth:`Distribution._param_checks` and
:meth:`Distribution._params_valid`, and *poisons* its outputs element-wise where they fail:
``log_prob``, ``cdf``, continuous ``rsample``/``sample`` and discrete ``icdf`` (hence
``sample``) return NaN for the batch elements whose parameters are out of range or NaN
(``Categorical.icdf`` returns the out-of-range label ``K`` instead; see its docstring). Valid
elements are unaffected, in value and gradient.
"""

from __future__ import annotations

import abc
import contextvars
import math
import operator
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

Array = jax.Array
Shape = tuple[int, ...]

__all__ = ["ContinuousDistribution", "DiscreteDistribution", "Distribution"]


# --------------------------------------------------------------------------------------------
# Parameter conversion and validation helpers
# --------------------------------------------------------------------------------------------


def _is_traced(x: Any) -> bool:
    """Whether ``x`` is an abstract value (a tracer) whose values cannot be inspected."""
    return isinstance(x, jax.core.Tracer)


# Set only while je.finite_difference(scheme="complex") traces the program: parameters may
# then be complex (the estimator's handler decides which sites can sample with them).
_COMPLEX_PARAMS: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "jaxestim_complex_params", default=False
)


def _float_params(*params: ArrayLike) -> list[Array]:
    """Converts parameters with ``jnp.asarray`` and casts them to one common float dtype.

    Integer and boolean inputs are promoted to the default float dtype (``jnp.result_type(float)``);
    float inputs keep their precision (float64 stays float64 when x64 is enabled).
    """
    # Python scalars and NumPy arrays stay NumPy (concrete) so that range checks still run
    # when a distribution is built inside a jit trace; JAX arrays and tracers pass through.
    arrays = [p if isinstance(p, jax.Array) else np.asarray(p) for p in params]
    complex_ok = _COMPLEX_PARAMS.get()
    for a in arrays:
        if jnp.issubdtype(a.dtype, jnp.complexfloating) and not complex_ok:
            raise TypeError(f"complex parameters are not supported, got dtype {a.dtype}")
    # Python scalars are weakly typed (as with jnp.asarray): 0.5 with a float32 array is float32.
    dtype = jnp.result_type(
        *(
            p if isinstance(p, int | float) and not isinstance(p, bool) else a
            for p, a in zip(params, arrays, strict=True)
        )
    )
    if not jnp.issubdtype(dtype, jnp.floating) and not (
        complex_ok and jnp.issubdtype(dtype, jnp.complexfloating)
    ):
        dtype = jnp.result_type(float)
    return [
        a.astype(dtype) if isinstance(a, jax.Array) else np.asarray(a, dtype=dtype) for a in arrays
    ]


def _broadcast_shapes(owner: str, **named: Array) -> Shape:
    """Broadcasts the shapes of the named arrays, naming the offending pair on failure."""
    names = list(named)
    shape: Shape = ()
    for i, name in enumerate(names):
        try:
            shape = np.broadcast_shapes(shape, named[name].shape)
        except ValueError:
            for other in names[:i]:
                try:
                    np.broadcast_shapes(named[other].shape, named[name].shape)
                except ValueError:
                    raise ValueError(
                        f"{owner}: shapes of `{other}` {named[other].shape} and `{name}` "
                        f"{named[name].shape} do not broadcast"
                    ) from None
            raise ValueError(
                f"{owner}: shape of `{name}` {named[name].shape} does not broadcast with the "
                f"shapes of {', '.join(f'`{n}`' for n in names[:i])}"
            ) from None
    return tuple(shape)


def _check_values(owner: str, name: str, x: Array, ok: Any, expected: str) -> None:
    """Raises ``ValueError`` unless ``ok(values)`` holds; skipped for traced ``x``."""
    if _is_traced(x):
        return
    values = np.asarray(x)
    if values.size == 0:
        return
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{owner}: `{name}` must be finite, got {values[~np.isfinite(values)][0]}")
    if not np.all(ok(values)):
        raise ValueError(
            f"{owner}: `{name}` must be {expected}, got min {values.min()}, max {values.max()}"
        )


def _check_nonnegative(owner: str, name: str, x: Array) -> None:
    _check_values(owner, name, x, lambda v: v >= 0, ">= 0")


def _check_finite(owner: str, name: str, x: Array) -> None:
    _check_values(owner, name, x, lambda v: np.ones(v.shape, bool), "finite")


def _check_positive(owner: str, name: str, x: Array) -> None:
    if _is_traced(x):
        return
    values = np.asarray(x)
    if values.size == 0:
        return
    if np.any(np.isnan(values)) or np.any(np.isinf(values)):
        raise ValueError(f"{owner}: `{name}` must be finite and > 0, got non-finite values")
    if not np.all(values > 0):
        raise ValueError(f"{owner}: `{name}` must be > 0, got min {values.min()}")


# --------------------------------------------------------------------------------------------
# Traceable parameter checks, value-level poisoning and boundary-safe logarithms
# --------------------------------------------------------------------------------------------


def _finite(x: Array) -> Array:
    return jnp.isfinite(x)


def _positive(x: Array) -> Array:
    """``0 < x < inf`` (False for NaN)."""
    return (x > 0) & (x < jnp.inf)


def _nonnegative(x: Array) -> Array:
    """``0 <= x < inf`` (False for NaN)."""
    return (x >= 0) & (x < jnp.inf)


def _boundary(param: Array, at_low: Array, at_high: Array) -> tuple[Array, Array, Array]:
    """``(q, outward, at)`` of :meth:`Distribution._support_boundary` for one parameter."""
    at = jnp.broadcast_to(at_low | at_high, jnp.shape(param))
    q = jnp.where(at, param, jax.lax.stop_gradient(param))
    outward = jnp.where(at_high, 1.0, jnp.where(at_low, -1.0, 0.0)).astype(q.dtype)
    flat = lambda x: jnp.reshape(jnp.broadcast_to(x, jnp.shape(param)), (-1,))
    return flat(q), flat(outward), flat(at)


def _poison(x: Array, valid: Array, event_ndim: int = 0) -> Array:
    """``x`` where ``valid`` (broadcast over ``event_ndim`` trailing axes), NaN elsewhere.

    A single ``jnp.where``: the value and the gradient of valid elements are unchanged.
    """
    valid = jnp.reshape(valid, valid.shape + (1,) * event_ndim)
    return jnp.where(valid, x, jnp.asarray(jnp.nan, x.dtype))


def _safe_log(x: Array) -> Array:
    """``log(x)`` for ``x > 0`` and ``-inf`` for ``x <= 0``, with a zero (not NaN) gradient at 0.

    The double ``jnp.where`` keeps ``log'(0) = inf`` out of the backward pass, so ``k * log(p)``
    selected away (or multiplied by ``k = 0`` inside another ``where``) has a finite gradient.
    """
    positive = x > 0
    return jnp.where(positive, jnp.log(jnp.where(positive, x, 1)), -jnp.inf)


def _safe_log1m(x: Array) -> Array:
    """``log1p(-x)`` for ``x < 1`` and ``-inf`` for ``x >= 1``, with a zero gradient at 1."""
    below = x < 1
    return jnp.where(below, jnp.log1p(-jnp.where(below, x, 0)), -jnp.inf)


# --------------------------------------------------------------------------------------------
# Argument validation for sampling
# --------------------------------------------------------------------------------------------


def _validate_key(key: Any) -> None:
    """Checks that ``key`` is a single JAX PRNG key (typed, or legacy ``uint32[2]``) or a
    :class:`RandomStream` (one sample site's share of randomness drawn in bulk)."""
    if isinstance(key, RandomStream):
        return
    if getattr(key, "_jaxestim_loop_key", False):
        raise TypeError(
            "a je.scan(..., key=...) iteration key can only be passed to je.sample (or split "
            "with its .split(n) method); distributions' own sample methods need a JAX PRNG key"
        )
    dtype = getattr(key, "dtype", None)
    shape = getattr(key, "shape", None)
    if dtype is None or shape is None:
        raise TypeError(f"`key` must be a JAX PRNG key, got {type(key).__name__}")
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if shape != ():
            raise ValueError(f"`key` must be a single PRNG key, got a key array of shape {shape}")
        return
    if dtype == np.uint32 and len(shape) >= 1 and shape[-1] == 2:
        if len(shape) != 1:
            raise ValueError(
                f"`key` must be a single PRNG key, got a legacy key array of shape {shape}"
            )
        return
    raise TypeError(
        "`key` must be a JAX PRNG key (jax.random.key(...) or a legacy uint32 key of shape "
        f"(2,)), got {type(key).__name__} with dtype {dtype} and shape {shape}"
    )


def _canonical_sample_shape(sample_shape: int | Sequence[int]) -> Shape:
    """Converts ``sample_shape`` to a tuple of non-negative Python ints."""
    if isinstance(sample_shape, bool):
        raise TypeError("`sample_shape` must be an int or a tuple of ints, got bool")
    try:
        dims = (operator.index(sample_shape),)  # type: ignore[arg-type]
    except TypeError:
        if not isinstance(sample_shape, Sequence) or isinstance(sample_shape, str):
            raise TypeError(
                f"`sample_shape` must be an int or a tuple of ints, got {sample_shape!r}"
            ) from None
        try:
            dims = tuple(operator.index(d) for d in sample_shape)
        except TypeError:
            raise TypeError(
                f"`sample_shape` must be a tuple of ints, got {sample_shape!r}"
            ) from None
    if any(d < 0 for d in dims):
        raise ValueError(f"`sample_shape` must contain non-negative ints, got {dims}")
    return dims


def _shape_repr(x: Any) -> str:
    if x is None:
        return "None"
    dtype = getattr(x, "dtype", None)
    shape = getattr(x, "shape", None)
    if dtype is None or shape is None:
        return repr(x)
    return f"{jnp.dtype(dtype).name}{list(shape)}"


# --------------------------------------------------------------------------------------------
# Base classes
# --------------------------------------------------------------------------------------------


class Distribution(abc.ABC):
    """Base class of all distributions.

    Subclasses store their array parameters as attributes ``_<name>`` for every ``name`` in
    ``_param_names``; those arrays (some possibly ``None``) are the pytree children.

    Shapes: a distribution has a ``batch_shape`` (independent, non-identical copies) and an
    ``event_shape`` (the shape of one draw). ``sample(key, sample_shape)`` returns an array of
    shape ``sample_shape + batch_shape + event_shape`` and ``log_prob(value)`` reduces the event
    dimensions.
    """

    is_reparameterized: ClassVar[bool] = False
    is_discrete: ClassVar[bool] = False
    _param_names: ClassVar[tuple[str, ...]] = ()

    # -- pytree ---------------------------------------------------------------------------

    def tree_flatten(self) -> tuple[tuple[Any, ...], None]:
        """Returns the stored parameters (the pytree children) and no auxiliary data."""
        return tuple(getattr(self, f"_{n}") for n in self._param_names), None

    @classmethod
    def tree_unflatten(cls, aux_data: None, children: Sequence[Any]) -> Distribution:
        """Rebuilds a distribution from its children without validation."""
        del aux_data
        obj = object.__new__(cls)
        for name, child in zip(cls._param_names, children, strict=True):
            setattr(obj, f"_{name}", child)
        return obj

    # -- shapes and moments -----------------------------------------------------------------

    @property
    @abc.abstractmethod
    def batch_shape(self) -> Shape:
        """Shape of the batch of independent distributions."""

    @property
    def event_shape(self) -> Shape:
        """Shape of a single draw (``()`` for scalar distributions)."""
        return ()

    @property
    def dtype(self) -> np.dtype:
        """The float dtype of the parameters (and of float-valued samples)."""
        for name in self._param_names:
            value = getattr(self, f"_{name}")
            if value is not None:
                return jnp.dtype(value.dtype)
        raise AttributeError("distribution has no parameters")

    @property
    @abc.abstractmethod
    def mean(self) -> Array:
        """Mean, of shape ``batch_shape + event_shape``."""

    @property
    @abc.abstractmethod
    def variance(self) -> Array:
        """Variance (element-wise), of shape ``batch_shape + event_shape``."""

    @property
    def stddev(self) -> Array:
        """Standard deviation (element-wise), of shape ``batch_shape + event_shape``."""
        return jnp.sqrt(self.variance)

    # -- sampling and density ----------------------------------------------------------------

    @abc.abstractmethod
    def sample(self, key: Array, sample_shape: int | Sequence[int] = ()) -> Array:
        """Draws samples of shape ``sample_shape + batch_shape + event_shape``."""

    #: whether the family has a ``coupled_sample`` whose draws, for a fixed key, are continuous
    #: (for discrete families: monotone, by inversion) in the parameters, as common random
    #: numbers need (see :meth:`ContinuousDistribution.coupled_sample`)
    _coupled: ClassVar[bool] = False

    @abc.abstractmethod
    def log_prob(self, value: ArrayLike) -> Array:
        """Log density / mass of ``value``, of shape ``broadcast(sample dims) + batch_shape``."""

    # -- traceable parameter checks --------------------------------------------------------

    def _sampled_log_prob(self, value: ArrayLike) -> Array:
        """``log_prob`` of values this distribution *sampled* (the score function's terms).

        Such values have positive mass, and invalid parameters are caught by the caller
        (the surrogate's invalid-parameter record makes the gradient NaN), so a family may
        drop the boundary and validity guards of :meth:`log_prob` here: each guard is a
        ``jnp.where`` whose predicate the reverse pass keeps per draw. Same value and
        derivatives as :meth:`log_prob` at sampled values with valid parameters.
        """
        return self.log_prob(value)

    def _param_checks(self) -> tuple[tuple[str, Array, str], ...]:
        """Traceable range checks of the parameters, one per constraint.

        Returns:
            A tuple of ``(name, valid, expected)``: the parameter name, a boolean array of shape
            ``batch_shape`` that is True where the parameter satisfies the constraint (and is
            not NaN), and a human description of the expected range (e.g. ``"in [0, 1]"``).
            Works on traced parameters (it is what the concrete constructor checks cannot do).
        """
        return ()

    def _params_valid(self) -> Array:
        """Boolean array of shape ``batch_shape``: the AND of all :meth:`_param_checks`.

        Outputs of batch elements where this is False are poisoned with NaN (see the module
        docstring).
        """
        valid = jnp.ones(self.batch_shape, bool)
        for _, ok, _ in self._param_checks():
            valid = valid & ok
        return valid

    def _support_boundary(self) -> tuple[Array, Array, Array] | None:
        """Parameters at a point where the *support* changes with them, or None.

        The score function ``E[f grad log p]`` sums only over values of positive mass, so it
        misses a value whose probability is 0 at ``theta`` but grows with it (``Bernoulli``
        at ``p = 0``), and for a support that moves with the parameters (``Uniform``) it is
        wrong altogether; :func:`jaxestim.stochastic_ad` cannot jump along a direction that
        leaves the parameter space (``p = 1`` increasing). The estimators use this to turn
        such cases into NaN gradients instead of silently wrong ones.

        Returns:
            ``(q, outward, at)``, flat arrays of one length: ``q`` the parameters, with the
            gradient stopped where ``at`` is False; ``outward`` the sign of a tangent that
            leaves the parameter space (+1 at an upper bound, -1 at a lower bound, 0 when
            the support moves in both directions); ``at`` whether the element is at such a
            point. ``None`` for families whose support does not depend on the parameters.
        """
        return None

    def _poison(self, x: Array, event_ndim: int = 0) -> Array:
        """``x`` (shape ``... + batch_shape + event_shape[-event_ndim:]``), NaN where invalid."""
        return _poison(x, self._params_valid(), event_ndim)

    def _full_shape(self, sample_shape: int | Sequence[int]) -> Shape:
        return _canonical_sample_shape(sample_shape) + self.batch_shape + self.event_shape

    def __repr__(self) -> str:
        params = ", ".join(
            f"{n}={_shape_repr(getattr(self, f'_{n}', None))}" for n in self._param_names
        )
        return f"{type(self).__name__}({params})"


class ContinuousDistribution(Distribution):
    """A continuous distribution with a reparameterized (pathwise differentiable) sampler."""

    is_reparameterized: ClassVar[bool] = True
    is_discrete: ClassVar[bool] = False
    #: whether ``_rsample`` turns NaN parameters into NaN samples by arithmetic alone (then
    #: invalid parameters are set to NaN before sampling rather than the samples after)
    _nan_params_propagate: ClassVar[bool] = False
    #: whether ``_rsample`` draws from a :class:`RandomStream` itself (via
    #: :func:`_std_normal` / :func:`_open_uniform`); other families get ``stream.jax_key()``
    _stream_native: ClassVar[bool] = False

    def _with_nan_params(self) -> ContinuousDistribution:
        """This distribution with every parameter NaN in invalid batch elements.

        Only for families whose parameters all broadcast to ``batch_shape`` (no event axes).
        """
        valid = self._params_valid()
        children, aux = self.tree_flatten()
        nan = lambda c: jnp.where(valid, c, jnp.asarray(jnp.nan, c.dtype))
        return self.tree_unflatten(aux, [None if c is None else nan(c) for c in children])

    @abc.abstractmethod
    def _rsample(self, key: Array, shape: Shape) -> Array:
        """Reparameterized draws of shape ``shape`` (= sample + batch + event shape)."""

    def _coupled_rsample(self, key: Array, shape: Shape) -> Array:
        """Draws that, for a fixed key, are continuous in every parameter (see
        :meth:`coupled_sample`): :meth:`_rsample` itself for the families whose sampler is a
        smooth transform of parameter-free noise (``_coupled = True``); rejection samplers
        override it."""
        return self._rsample(key, shape)

    def rsample(self, key: Array, sample_shape: int | Sequence[int] = ()) -> Array:
        """Reparameterized samples, differentiable w.r.t. all float parameters.

        Args:
            key: a JAX PRNG key (``jax.random.key`` or a legacy ``uint32[2]`` key).
            sample_shape: leading sample dimensions (an int or a tuple of non-negative ints).

        Returns:
            Array of shape ``sample_shape + batch_shape + event_shape`` in the parameter dtype;
            NaN for batch elements whose (traced) parameters are invalid.
        """
        return self._draw(key, sample_shape, coupled=False)

    def coupled_sample(self, key: Array, sample_shape: int | Sequence[int] = ()) -> Array:
        """Samples that, for a fixed ``key``, are continuous functions of the parameters.

        What common random numbers need (:func:`jaxestim.finite_difference`): the same key
        at ``theta`` and ``theta + h`` gives draws ``O(h)`` apart. Same distribution, shapes
        and NaN poisoning as :meth:`rsample`, and the same draws for the families whose
        sampler already is such a transform (location-scale families, ``Uniform``,
        ``Exponential``, ``MultivariateNormal``). ``Gamma`` (and ``StudentT``, ``Beta``,
        ``Dirichlet``, built on it), whose :meth:`rsample` is a rejection sampler that jumps
        as the concentration moves, sample by inversion here instead
        (:meth:`jaxestim.distributions.Gamma.icdf`).
        Raises ``NotImplementedError`` for a family that is not known to be coupled
        (``_coupled = False``, the default of subclasses outside jaxestim).
        """
        if not self._coupled:
            raise NotImplementedError(
                f"{type(self).__name__} has no sampler known to be continuous in its parameters "
                "for a fixed key (set `_coupled = True` if `_rsample` is one, or override "
                "`_coupled_rsample`)"
            )
        return self._draw(key, sample_shape, coupled=True)

    def _draw(self, key: Array, sample_shape: int | Sequence[int], coupled: bool) -> Array:
        """:meth:`rsample` (``coupled=False``) or :meth:`coupled_sample` (``coupled=True``)."""
        _validate_key(key)
        if isinstance(key, RandomStream) and not self._stream_native:
            key = key.jax_key()  # samplers that need more than one word per draw
        shape = self._full_shape(sample_shape)
        if self._nan_params_propagate:
            # NaN parameters where invalid: O(batch) work instead of O(sample x batch)
            d = self._with_nan_params()
            return (d._coupled_rsample if coupled else d._rsample)(key, shape)
        x = self._coupled_rsample(key, shape) if coupled else self._rsample(key, shape)
        return self._poison(x, len(self.event_shape))

    def sample(self, key: Array, sample_shape: int | Sequence[int] = ()) -> Array:
        """Same as :meth:`rsample` (continuous families are reparameterized)."""
        return self.rsample(key, sample_shape)


class DiscreteDistribution(Distribution):
    """A discrete distribution sampled by inversion: ``value_from_index(icdf(uniforms))``.

    The *index* of an outcome is an integer in the family's natural ordering, represented as
    an integer-valued float array of the parameter dtype. ``cdf(k) = P(index <= k)``;
    ``icdf(u) = min{k : cdf(k) >= u}`` is non-decreasing in ``u`` and is coupled monotonically
    across parameter values, which makes common random numbers effective.
    """

    is_reparameterized: ClassVar[bool] = False
    is_discrete: ClassVar[bool] = True

    def uniforms(self, key: Array, sample_shape: int | Sequence[int] = ()) -> Array:
        """One uniform per draw, strictly inside ``(0, 1)``.

        The uniforms are generated at twice the resolution of a single float draw near zero
        (``hi + lo * 2**-nmant``), so lower-tail events with probability far below float epsilon
        are represented; they are clipped to ``[tiny, 1 - epsneg]``.

        Returns:
            Array of shape ``sample_shape + batch_shape`` in the parameter float dtype.
        """
        _validate_key(key)
        shape = _canonical_sample_shape(sample_shape) + self.batch_shape
        return _open_uniform(key, shape, self.dtype)

    @abc.abstractmethod
    def icdf(self, u: ArrayLike) -> Array:
        """Inverse CDF ``min{k : cdf(k) >= u}`` as an integer-valued float array."""

    @abc.abstractmethod
    def cdf(self, k: ArrayLike) -> Array:
        """``P(index <= k)`` for integer-valued ``k`` (floored), differentiable in parameters."""

    def value_from_index(self, k: ArrayLike) -> Array:
        """Maps outcome indices to sample values (identity, as a float array, by default)."""
        return jnp.asarray(k, self.dtype)

    def index_from_value(self, x: ArrayLike) -> Array:
        """Maps sample values to outcome indices (integer-valued floats)."""
        return jnp.asarray(x, self.dtype)

    _coupled: ClassVar[bool] = True

    def coupled_sample(self, key: Array, sample_shape: int | Sequence[int] = ()) -> Array:
        """Same as :meth:`sample`: inversion is monotone in the parameters for a fixed key."""
        return self.sample(key, sample_shape)

    def sample(self, key: Array, sample_shape: int | Sequence[int] = ()) -> Array:
        """Samples ``value_from_index(icdf(uniforms(key, sample_shape)))``.

        Parameters are wrapped in ``jax.lax.stop_gradient``: discrete samples carry no
        pathwise derivative. Batch elements with invalid (traced) parameters give NaN
        (``icdf`` is poisoned; for ``Categorical`` the label ``K``).
        """
        frozen = jax.tree_util.tree_map(jax.lax.stop_gradient, self)
        return frozen.value_from_index(frozen.icdf(frozen.uniforms(key, sample_shape)))


def _open_uniform(key: Array, shape: Shape, dtype: Any) -> Array:
    """Uniform draws strictly inside ``(0, 1)``, one random word per draw.

    A ``w``-bit word ``b`` (w = 32 for float32, 64 for float64) maps to
    ``(b + 1/2) 2^-w`` rounded to ``dtype``: the uniform distribution rounded to the
    float grid, with resolution ``2^-w`` near 0 (finer than ``jax.random.uniform``'s
    ``2^-24``, so lower-tail events down to probability ``~2^-w`` are sampled) and the
    grid spacing near 1. It costs the same random bits as ``jax.random.bernoulli``.
    Values are clipped to ``[tiny, 1 - epsneg]``.
    """
    dtype = jnp.dtype(dtype)
    work = jnp.dtype(jnp.float64) if dtype.itemsize == 8 else jnp.dtype(jnp.float32)
    width = 8 * work.itemsize
    if isinstance(key, RandomStream):
        bits = key.bits(shape, width)
    else:
        bits = jax.random.bits(key, shape, jnp.uint64 if width == 64 else jnp.uint32)
    u = (bits.astype(work) + jnp.asarray(0.5, work)) * jnp.asarray(math.ldexp(1.0, -width), work)
    finfo = jnp.finfo(dtype)
    u = u.astype(dtype)
    return jnp.clip(u, jnp.asarray(finfo.tiny, dtype), jnp.asarray(1.0 - finfo.epsneg, dtype))


def _std_normal(key: Any, shape: Shape, dtype: Any) -> Array:
    """Standard normal draws: ``jax.random.normal`` for a JAX key; for a :class:`RandomStream`
    ``sqrt(2) erfinv(2u - 1)`` of one open uniform ``u`` per draw (one random word each)."""
    if not isinstance(key, RandomStream):
        return jax.random.normal(key, shape, dtype)
    u = _open_uniform(key, shape, dtype)
    two = jnp.asarray(2.0, u.dtype)
    return jnp.sqrt(two) * jax.lax.erf_inv(two * u - jnp.asarray(1.0, u.dtype))


def as_jax_key(key: Any) -> Array:
    """``key`` itself, or for a :class:`RandomStream` a JAX key made of two of its words."""
    return key.jax_key() if isinstance(key, RandomStream) else key


class RandomStream:
    """One sample site's share of random words drawn in bulk (``je.scan(..., key=...)``).

    Key-like: distributions accept it wherever they take a key. Discrete families sample
    by inversion from :meth:`DiscreteDistribution.uniforms`, which takes one 32-bit word per
    draw (two for float64) from the stream; ``Normal``, ``LogNormal`` and
    ``MultivariateNormal`` take one word per coordinate (``sqrt(2) erfinv(2u - 1)``); every
    other sampler (Gamma's rejection sampler, ...) takes two words that form a threefry
    key (:meth:`jax_key`) and samples from it as usual. Words are consumed in request
    order, so the same stream contents give the same draws.

    ``words=None`` is the *counting* mode used while ``je.scan`` traces its body abstractly
    to learn how many words each site needs: requests return zeros and are counted.
    """

    def __init__(self, words: Array | None, size: int | None = None) -> None:
        self._words = words
        self._size = None if words is None else int(words.shape[0]) if size is None else size
        self.used = 0

    @property
    def counting(self) -> bool:
        return self._words is None

    def take(self, n: int) -> Array:
        """The next ``n`` uint32 words of the stream."""
        start, self.used = self.used, self.used + n
        if self._words is None:
            return jnp.zeros((n,), jnp.uint32)
        if self.used > self._size:
            raise RuntimeError(
                f"jaxestim: a sample site asked for {self.used} random words but its bulk "
                f"draw holds {self._size}; the loop body drew differently in je.scan's "
                "counting trace and in its real trace (is the body a pure function of its "
                "arguments?)"
            )
        return self._words[start : self.used]

    def bits(self, shape: Shape, width: int) -> Array:
        """Random ``width``-bit unsigned integers of ``shape`` (``width`` 32 or 64)."""
        n = math.prod(shape)
        if width == 32:
            return self.take(n).reshape(shape)
        w = self.take(2 * n).astype(jnp.uint64).reshape((n, 2))
        return ((w[:, 0] << jnp.uint64(32)) | w[:, 1]).reshape(shape)

    def jax_key(self) -> Array:
        """A threefry JAX key from the next two words (for samplers that need a key)."""
        return jax.random.wrap_key_data(self.take(2), impl="threefry2x32")


_T = TypeVar("_T")


def _broadcasting_vmap(fn: Callable[..., _T]) -> Callable[..., _T]:
    """``fn`` (element-wise, broadcasting all its array arguments) vmapped by broadcasting.

    Under ``jax.vmap`` the batch axis becomes a leading axis of the arrays and ``fn`` runs
    once on them (the rule re-enters the wrapped function, so nested vmaps broadcast too),
    instead of vmap's batching of ``fn``'s data-dependent ``lax.while_loop`` s. Batching
    would give those loops a batched predicate, which ``checkify`` (checked mode,
    ``validate=True``, around the transforms' per-sample ``vmap``) rejects; with the rule a
    loop keeps one scalar predicate (``jnp.any`` over all elements, batch included) inside
    a ``custom_vmap`` call that checkify leaves alone. The results are the same: every
    element stops updating once converged, under either batching. Forward-mode
    differentiable only (no caller differentiates through these samplers).
    """
    wrapped = jax.custom_batching.custom_vmap(fn)

    @wrapped.def_vmap
    def rule(axis_size: int, in_batched: tuple[bool, ...], *args: Array) -> tuple[_T, Any]:
        # per-example rank of the broadcast; the batch axis goes in front of all of it
        rank = max(jnp.ndim(a) - b for a, b in zip(args, in_batched, strict=True))
        args = tuple(
            jnp.reshape(a, (axis_size,) + (1,) * (rank + 1 - a.ndim) + a.shape[1:]) if b else a
            for a, b in zip(args, in_batched, strict=True)
        )
        out = wrapped(*args)
        return out, jax.tree_util.tree_map(lambda _: True, out)

    return wrapped
