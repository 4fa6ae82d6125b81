"""Element-wise bijections of the real line for :class:`TransformedDistribution`.

A bijector ``f`` maps base draws ``x`` to ``y = f(x)`` and provides ``forward``, ``inverse`` and
``forward_log_det_jacobian(x) = log |f'(x)|`` (element-wise; the distribution sums it over
event axes), written in numerically stable forms. Bijectors are JAX pytrees whose leaves are
their array parameters (only :class:`Affine` has any).

``inverse`` of a value outside the image of ``f`` is NaN; :meth:`Bijector._inverse_checked`
returns the inverse computed at a safe in-range point there together with the in-range mask,
so that ``log_prob`` is ``-inf`` (with finite gradients) outside the support.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import register_pytree_node_class
from jax.typing import ArrayLike

from ._base import Array, _check_finite, _finite, _float_params, _is_traced

__all__ = ["Affine", "Bijector", "Chain", "Exp", "Sigmoid", "Softplus", "Tanh"]


class Bijector(abc.ABC):
    """Base class: a smooth, strictly monotone, element-wise map of the real line."""

    #: whether the image of the real line is the whole real line (so the support of a
    #: transformed real-supported distribution stays the real line)
    onto_reals: bool = False

    @abc.abstractmethod
    def forward(self, x: ArrayLike) -> Array:
        """``y = f(x)``."""

    @abc.abstractmethod
    def inverse(self, y: ArrayLike) -> Array:
        """``x = f^{-1}(y)`` (NaN outside the image of ``f``)."""

    @abc.abstractmethod
    def forward_log_det_jacobian(self, x: ArrayLike) -> Array:
        """``log |f'(x)|``, element-wise (same shape as ``forward(x)``)."""

    def inverse_log_det_jacobian(self, y: ArrayLike) -> Array:
        """``log |(f^{-1})'(y)| = -log |f'(f^{-1}(y))|``."""
        return -self.forward_log_det_jacobian(self.inverse(y))

    def _in_range(self, y: Array) -> Array:
        """Whether ``y`` lies in the open image of ``f`` (all True by default)."""
        return jnp.ones(jnp.shape(y), bool)

    def _safe_point(self, y: Array) -> Array:
        """A point in the image of ``f`` (used where ``y`` is out of range)."""
        return jnp.zeros_like(y)

    def _inverse_checked(self, y: Array) -> tuple[Array, Array]:
        """``(inverse(y'), ok)``: ``y' = y`` where ``ok`` (``y`` in range), else a safe point."""
        ok = self._in_range(y)
        return self.inverse(jnp.where(ok, y, self._safe_point(y))), ok

    def _params_valid(self) -> Array:
        """Traceable validity of the parameters (broadcastable boolean array)."""
        return jnp.asarray(True)

    def _affine(self) -> tuple[Array, Array] | None:
        """``(shift, scale)`` if ``f`` is affine, else None (used for moments)."""
        return None

    def tree_flatten(self) -> tuple[tuple[Any, ...], None]:
        return (), None

    @classmethod
    def tree_unflatten(cls, aux_data: None, children: Sequence[Any]) -> Bijector:
        del aux_data, children
        return object.__new__(cls)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@register_pytree_node_class
class Affine(Bijector):
    """``y = shift + scale * x`` with ``scale != 0`` (finite); ``log |f'(x)| = log |scale|``.

    Concrete invalid parameters raise ``ValueError``; traced ones (NaN, infinite, zero scale)
    make the transformed distribution's samples and ``log_prob`` NaN.
    """

    onto_reals = True

    def __init__(self, shift: ArrayLike = 0.0, scale: ArrayLike = 1.0) -> None:
        shift, scale = _float_params(shift, scale)
        _check_finite("Affine", "shift", shift)
        _check_finite("Affine", "scale", scale)
        if not _is_traced(scale) and bool(np.any(np.asarray(scale) == 0)):
            raise ValueError("Affine: `scale` must be non-zero")
        self.shift = shift
        self.scale = scale

    def forward(self, x: ArrayLike) -> Array:
        return self.shift + self.scale * jnp.asarray(x)

    def inverse(self, y: ArrayLike) -> Array:
        return (jnp.asarray(y) - self.shift) / self.scale

    def forward_log_det_jacobian(self, x: ArrayLike) -> Array:
        x = jnp.asarray(x)
        ldj = jnp.log(jnp.abs(self.scale))
        return jnp.broadcast_to(ldj, jnp.broadcast_shapes(x.shape, ldj.shape)).astype(
            jnp.result_type(x, ldj)
        )

    def _params_valid(self) -> Array:
        return _finite(self.shift) & _finite(self.scale) & (self.scale != 0)

    def _affine(self) -> tuple[Array, Array]:
        return self.shift, self.scale

    def tree_flatten(self) -> tuple[tuple[Any, ...], None]:
        return (self.shift, self.scale), None

    @classmethod
    def tree_unflatten(cls, aux_data: None, children: Sequence[Any]) -> Affine:
        obj = object.__new__(cls)
        obj.shift, obj.scale = children
        return obj

    def __repr__(self) -> str:
        shape = lambda a: list(getattr(a, "shape", ()))
        return f"Affine(shift={shape(self.shift)}, scale={shape(self.scale)})"


@register_pytree_node_class
class Exp(Bijector):
    """``y = exp(x)`` onto ``(0, inf)``; ``log |f'(x)| = x``."""

    def forward(self, x: ArrayLike) -> Array:
        return jnp.exp(x)

    def inverse(self, y: ArrayLike) -> Array:
        return jnp.log(y)

    def forward_log_det_jacobian(self, x: ArrayLike) -> Array:
        return jnp.asarray(x)

    def _in_range(self, y: Array) -> Array:
        return (y > 0) & (y < jnp.inf)

    def _safe_point(self, y: Array) -> Array:
        return jnp.ones_like(y)


@register_pytree_node_class
class Sigmoid(Bijector):
    """``y = 1 / (1 + exp(-x))`` onto ``(0, 1)``; ``log |f'(x)| = -softplus(-x) - softplus(x)``.

    Inverse ``logit(y) = log(y) - log1p(-y)``. In float32, ``sigmoid(x)`` rounds to 1 for
    ``x > ~17`` and such draws have ``log_prob = -inf``.
    """

    def forward(self, x: ArrayLike) -> Array:
        return jax.nn.sigmoid(x)

    def inverse(self, y: ArrayLike) -> Array:
        y = jnp.asarray(y)
        return jnp.log(y) - jnp.log1p(-y)

    def forward_log_det_jacobian(self, x: ArrayLike) -> Array:
        x = jnp.asarray(x)
        return -jax.nn.softplus(-x) - jax.nn.softplus(x)

    def _in_range(self, y: Array) -> Array:
        return (y > 0) & (y < 1)

    def _safe_point(self, y: Array) -> Array:
        return jnp.full_like(y, 0.5)


@register_pytree_node_class
class Tanh(Bijector):
    """``y = tanh(x)`` onto ``(-1, 1)``; ``log |f'(x)| = 2 (log 2 - x - softplus(-2x))``.

    Inverse ``atanh(y) = (log1p(y) - log1p(-y)) / 2``.
    """

    def forward(self, x: ArrayLike) -> Array:
        return jnp.tanh(x)

    def inverse(self, y: ArrayLike) -> Array:
        y = jnp.asarray(y)
        return 0.5 * (jnp.log1p(y) - jnp.log1p(-y))

    def forward_log_det_jacobian(self, x: ArrayLike) -> Array:
        x = jnp.asarray(x)
        return 2.0 * (jnp.log(2.0).astype(x.dtype) - x - jax.nn.softplus(-2.0 * x))

    def _in_range(self, y: Array) -> Array:
        return (y > -1) & (y < 1)


@register_pytree_node_class
class Softplus(Bijector):
    """``y = log(1 + exp(x))`` onto ``(0, inf)``; ``log |f'(x)| = log sigmoid(x) = -softplus(-x)``.

    Inverse ``y + log(-expm1(-y))``.
    """

    def forward(self, x: ArrayLike) -> Array:
        return jax.nn.softplus(x)

    def inverse(self, y: ArrayLike) -> Array:
        y = jnp.asarray(y)
        return y + jnp.log(-jnp.expm1(-y))

    def forward_log_det_jacobian(self, x: ArrayLike) -> Array:
        return -jax.nn.softplus(-jnp.asarray(x))

    def _in_range(self, y: Array) -> Array:
        return (y > 0) & (y < jnp.inf)

    def _safe_point(self, y: Array) -> Array:
        return jnp.ones_like(y)


@register_pytree_node_class
class Chain(Bijector):
    """Composition applied in list order: ``Chain([f1, f2]).forward(x) = f2(f1(x))``.

    (The order of ``torch``'s ``ComposeTransform``; TensorFlow Probability's ``Chain`` applies
    its list in reverse.) ``log |J| = sum_i log |f_i'(x_{i-1})|`` with ``x_i = f_i(x_{i-1})``.
    """

    def __init__(self, bijectors: Sequence[Bijector]) -> None:
        bijectors = tuple(bijectors)
        for b in bijectors:
            if not isinstance(b, Bijector):
                raise TypeError(f"Chain: expected Bijector instances, got {type(b).__name__}")
        self.bijectors = bijectors

    @property
    def onto_reals(self) -> bool:  # type: ignore[override]
        return all(b.onto_reals for b in self.bijectors)

    def forward(self, x: ArrayLike) -> Array:
        x = jnp.asarray(x)
        for b in self.bijectors:
            x = b.forward(x)
        return x

    def inverse(self, y: ArrayLike) -> Array:
        y = jnp.asarray(y)
        for b in reversed(self.bijectors):
            y = b.inverse(y)
        return y

    def forward_log_det_jacobian(self, x: ArrayLike) -> Array:
        x = jnp.asarray(x)
        total = jnp.zeros_like(x)
        for b in self.bijectors:
            total = total + b.forward_log_det_jacobian(x)
            x = b.forward(x)
        return total

    def _inverse_checked(self, y: Array) -> tuple[Array, Array]:
        ok = jnp.ones(jnp.shape(y), bool)
        for b in reversed(self.bijectors):
            y, ok_b = b._inverse_checked(y)
            ok = ok & ok_b
        return y, ok

    def _params_valid(self) -> Array:
        valid = jnp.asarray(True)
        for b in self.bijectors:
            valid = valid & b._params_valid()
        return valid

    def _affine(self) -> tuple[Array, Array] | None:
        shift, scale = jnp.asarray(0.0), jnp.asarray(1.0)
        for b in self.bijectors:
            a = b._affine()
            if a is None:
                return None
            shift, scale = a[0] + a[1] * shift, a[1] * scale
        return shift, scale

    def tree_flatten(self) -> tuple[tuple[Any, ...], None]:
        return self.bijectors, None

    @classmethod
    def tree_unflatten(cls, aux_data: None, children: Sequence[Any]) -> Chain:
        obj = object.__new__(cls)
        obj.bijectors = tuple(children)
        return obj

    def __repr__(self) -> str:
        return f"Chain([{', '.join(map(repr, self.bijectors))}])"
