"""Distributions of ``Y = f(X)`` for a continuous base ``X`` and a bijector ``f``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import register_pytree_node_class
from jax.typing import ArrayLike

from ._base import Array, ContinuousDistribution, Shape, _validate_key
from ._bijectors import Bijector
from ._continuous import Cauchy, Laplace, Logistic, MultivariateNormal, Normal, StudentT

__all__ = ["TransformedDistribution"]

_REAL_SUPPORT = (Cauchy, Laplace, Logistic, MultivariateNormal, Normal, StudentT)


def _has_real_support(dist: ContinuousDistribution) -> bool:
    """Whether the support of ``dist`` is all of ``R^event_shape`` (so it cannot move)."""
    if isinstance(dist, TransformedDistribution):
        return _has_real_support(dist.base) and dist.bijector.onto_reals
    return isinstance(dist, _REAL_SUPPORT)


@register_pytree_node_class
class TransformedDistribution(ContinuousDistribution):
    """The distribution of ``Y = f(X)``, ``X ~ base`` continuous, ``f`` an element-wise bijector.

    Sampling: ``f(base.rsample(key))``, pathwise differentiable in the base's parameters and
    the bijector's (the reparameterization trick through ``f``). Density by the change of
    variables: ``log p_Y(y) = log p_X(f^{-1}(y)) - sum_event log |f'(f^{-1}(y))|``, ``-inf``
    outside the image of ``f``; the score-function estimator uses it like any ``log_prob``
    (its bias check knows that an :class:`Affine` bijector moves the support of a base whose
    support is not the whole real line, e.g. ``Exponential``).

    ``batch_shape`` and ``event_shape`` are those of ``base``; the bijector's parameters must
    broadcast to ``batch_shape + event_shape``. ``mean``/``variance`` are exact for affine
    bijectors and raise ``NotImplementedError`` otherwise (no closed form in general).
    Invalid traced parameters (of the base or the bijector) give NaN samples and ``log_prob``.
    Cost: one base draw and one bijector evaluation per sample.
    """

    _param_names: ClassVar[tuple[str, ...]] = ("base", "bijector")

    def __init__(self, base: ContinuousDistribution, bijector: Bijector) -> None:
        if not isinstance(base, ContinuousDistribution) or not base.is_reparameterized:
            raise TypeError(
                "TransformedDistribution: `base` must be a continuous (reparameterized) "
                f"distribution, got {type(base).__name__}; a discrete base has no density to "
                "transform"
            )
        if not isinstance(bijector, Bijector):
            raise TypeError(
                f"TransformedDistribution: `bijector` must be a Bijector, got "
                f"{type(bijector).__name__}"
            )
        shape = base.batch_shape + base.event_shape
        out = jax.eval_shape(bijector.forward, jax.ShapeDtypeStruct(shape, base.dtype))
        if tuple(out.shape) != shape:
            raise ValueError(
                f"TransformedDistribution: the bijector's parameters must broadcast to the "
                f"base's batch_shape + event_shape {shape}, but they map it to {out.shape}"
            )
        self._base = base
        self._bijector = bijector

    @property
    def base(self) -> ContinuousDistribution:
        """The base distribution of ``X``."""
        return self._base

    @property
    def bijector(self) -> Bijector:
        """The bijector ``f``."""
        return self._bijector

    @property
    def batch_shape(self) -> Shape:
        return self._base.batch_shape

    @property
    def event_shape(self) -> Shape:
        return self._base.event_shape

    @property
    def dtype(self) -> np.dtype:
        return self._base.dtype

    def _event_sum(self, x: Array) -> Array:
        n = len(self.event_shape)
        return jnp.sum(x, axis=tuple(range(-n, 0))) if n else x

    def _event_all(self, x: Array) -> Array:
        n = len(self.event_shape)
        return jnp.all(x, axis=tuple(range(-n, 0))) if n else x

    def _params_valid(self) -> Array:
        full = jnp.broadcast_to(self._bijector._params_valid(), self.batch_shape + self.event_shape)
        return self._base._params_valid() & self._event_all(full)

    def _param_checks(self) -> tuple[tuple[str, Array, str], ...]:
        full = jnp.broadcast_to(self._bijector._params_valid(), self.batch_shape + self.event_shape)
        return (
            *self._base._param_checks(),
            ("bijector", self._event_all(full), "finite, with a non-zero Affine scale"),
        )

    def _support_boundary(self):
        """The base's support boundary, plus the bijector's parameters if they move the support."""
        parts = []
        sb = self._base._support_boundary()
        if sb is not None:
            parts.append(sb)
        leaves = jax.tree_util.tree_leaves(self._bijector)
        if leaves and not _has_real_support(self._base):
            flat = [jnp.reshape(jnp.asarray(leaf, self.dtype), (-1,)) for leaf in leaves]
            q = jnp.concatenate(flat)
            parts.append((q, jnp.zeros_like(q), jnp.ones(q.shape, bool)))
        if not parts:
            return None
        return tuple(jnp.concatenate([p[i] for p in parts]) for i in range(3))

    def _rsample(self, key: Array, shape: Shape) -> Array:
        return self._bijector.forward(self._base._rsample(key, shape))

    @property
    def _coupled(self) -> bool:  # type: ignore[override]
        """Bijectors are continuous: coupled exactly when the base is."""
        return self._base._coupled

    def _draw(self, key: Array, sample_shape: int | Sequence[int], coupled: bool) -> Array:
        """``f(base.rsample(key, sample_shape))`` (``f(base.coupled_sample(...))`` when
        ``coupled``); NaN where parameters are invalid."""
        _validate_key(key)
        y = self._bijector.forward(self._base._draw(key, sample_shape, coupled))
        return self._poison(y, len(self.event_shape))

    def log_prob(self, value: ArrayLike) -> Array:
        """``log p_X(f^{-1}(y)) - sum_event log |f'(f^{-1}(y))|``; ``-inf`` outside f's image."""
        y = jnp.asarray(value).astype(self.dtype)
        x, ok = self._bijector._inverse_checked(y)
        ldj = self._event_sum(self._bijector.forward_log_det_jacobian(x))
        lp = self._base.log_prob(x) - ldj
        return self._poison(jnp.where(self._event_all(ok), lp, -jnp.inf))

    def _moments(self) -> tuple[Array, Array]:
        affine = self._bijector._affine()
        if affine is None:
            raise NotImplementedError(
                f"{self!r}: mean/variance have no closed form for a non-affine bijector; "
                "estimate them from samples"
            )
        return affine

    @property
    def mean(self) -> Array:
        shift, scale = self._moments()
        shape = self.batch_shape + self.event_shape
        return jnp.broadcast_to(shift + scale * self._base.mean, shape).astype(self.dtype)

    @property
    def variance(self) -> Array:
        _, scale = self._moments()
        shape = self.batch_shape + self.event_shape
        return jnp.broadcast_to(jnp.square(scale) * self._base.variance, shape).astype(self.dtype)

    def __repr__(self) -> str:
        return f"TransformedDistribution({self._base!r}, {self._bijector!r})"
