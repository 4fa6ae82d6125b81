"""Relaxations of discrete sites: Gumbel-softmax (Concrete) and straight-through.

Their gradients are biased (``f`` is differentiated off the discrete support or at the
mean); they are cheap and low-variance. :func:`select` indexes tables with categorical
samples in either representation (integer or one-hot), so one program runs under every
estimator.
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxestim._estimator import RELAXABLE, Estimator, is_index_categorical, one_hot_site, site_error
from jaxestim._util import check_positive, pytree_dataclass, static_field
from jaxestim.distributions import Bernoulli
from jaxestim.distributions._base import as_jax_key
from jaxestim.estimators.pathwise import Pathwise


@pytree_dataclass
class GumbelSoftmax(Estimator):
    r"""Gumbel-softmax / Concrete relaxation (Jang et al., 2017; Maddison et al., 2017).

    At a Categorical/OneHotCategorical site with logits ``l`` returns
    ``y = softmax((l + g) / tau)`` with i.i.d. Gumbel noise ``g``; at a Bernoulli site the
    binary Concrete ``y = sigmoid((l + log u - log(1 - u)) / tau)``. The gradient is the
    pathwise gradient of ``f`` at the relaxed sample: *biased* (``f`` is evaluated off the
    discrete support), the bias vanishing as ``tau -> 0`` while the variance grows.
    ``hard=True`` is straight-through Gumbel: the forward value is the exact discrete
    sample ``one_hot(argmax(l + g))`` (resp. ``l + logistic noise > 0``) and the backward
    pass uses the relaxed ``y``.

    ``Categorical`` sites return the (relaxed) one-hot vector with a trailing category
    axis, not an integer: an index cannot carry a gradient. Index a table with
    :func:`jaxestim.select`, which accepts both integer and one-hot samples, so the same
    program runs under every estimator. Continuous sites are reparameterized (pathwise);
    other discrete sites raise :class:`EstimatorError`.

    Attributes:
      temperature: ``tau > 0`` (may be traced, e.g. under ``jax.vmap`` or annealed).
      hard: straight-through variant.
    """

    temperature: Any = 1.0
    hard: bool = static_field(default=False)
    name: ClassVar[str] = "gumbel_softmax"

    def __post_init__(self) -> None:
        check_positive("gumbel_softmax", "temperature", self.temperature)

    def process_site(self, ctx, key, dist, sample_shape):
        if not dist.is_discrete:
            return Pathwise().process_site(ctx, key, dist, sample_shape)
        ctx.shared["higher_order_ok"] = False  # relaxed gradients: no unbiased higher orders
        if not isinstance(dist, RELAXABLE):
            raise site_error(
                "je.gumbel_softmax()",
                dist,
                "the Concrete relaxation is defined for Bernoulli and (OneHot)Categorical",
                "je.score_function(), je.stochastic_ad() or je.straight_through()",
            )
        logits = dist.logits
        tau = jnp.asarray(self.temperature, logits.dtype)
        if isinstance(dist, Bernoulli):
            u = dist.uniforms(key, sample_shape)
            z = logits + (jnp.log(u) - jnp.log1p(-u))
            y = jax.nn.sigmoid(z / tau)
            hard = (z > 0).astype(y.dtype)
        else:
            shape = sample_shape + dist.batch_shape + (dist.num_categories,)
            z = logits + jax.random.gumbel(as_jax_key(key), shape, logits.dtype)
            y = jax.nn.softmax(z / tau, axis=-1)
            hard = jax.nn.one_hot(jnp.argmax(z, axis=-1), dist.num_categories, dtype=y.dtype)
        if self.hard:
            return hard + (y - jax.lax.stop_gradient(y))
        return y


@pytree_dataclass
class StraightThrough(Estimator):
    r"""Straight-through estimator (Bengio, Leonard & Courville, 2013).

    The forward value is an exact discrete sample ``x``; the backward pass treats it as if
    it were its mean: the site returns ``x + m - stop_grad(m)`` with ``m = E[x]``
    (``probs`` for one-hot categorical, ``n p`` for Binomial, ``rate`` for Poisson, ...).
    Exact when ``f`` is linear in ``x`` (then ``grad E[f] = grad f(E[x])``), biased
    otherwise; low variance and the cost of one forward and backward pass. Categorical
    sites return one-hot vectors (see :func:`jaxestim.select`); continuous sites are
    reparameterized.
    """

    name: ClassVar[str] = "straight_through"

    def process_site(self, ctx, key, dist, sample_shape):
        if not dist.is_discrete:
            return Pathwise().process_site(ctx, key, dist, sample_shape)
        ctx.shared["higher_order_ok"] = False  # straight-through: no unbiased higher orders
        x = jax.lax.stop_gradient(one_hot_site(dist, dist.sample(key, sample_shape)))
        mean = dist.probs if is_index_categorical(dist) else dist.mean
        mean = jnp.broadcast_to(mean, x.shape).astype(x.dtype)
        return x + (mean - jax.lax.stop_gradient(mean))


def gumbel_softmax(temperature: Any = 1.0, hard: bool = False) -> GumbelSoftmax:
    """The Gumbel-softmax / Concrete relaxation (see :class:`GumbelSoftmax`)."""
    return GumbelSoftmax(temperature=temperature, hard=hard)


def straight_through() -> StraightThrough:
    """The straight-through estimator (see :class:`StraightThrough`)."""
    return StraightThrough()


def select(values: jax.Array, x: jax.Array) -> jax.Array:
    """Look up ``values[..., x]`` for a categorical sample ``x`` in either representation.

    An integer ``x`` (a ``Categorical`` sample under the score-function, finite-difference
    or stochastic_ad estimators) picks, element by element, the entry of the last axis of
    ``values`` (batch axes broadcast: ``values`` of shape ``(J, K)`` and ``x`` of shape
    ``(J,)`` give ``values[j, x[j]]``); a floating ``x``
    with a trailing category axis (a one-hot or relaxed one-hot sample under
    :func:`gumbel_softmax` / :func:`straight_through`) gives ``sum_k x_k values[..., k]``,
    which equals the lookup at a one-hot vector and is differentiable in ``x``. Write
    programs with ``select`` and they run under every estimator.
    """
    values = jnp.asarray(values)
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.integer):
        try:
            batch = jnp.broadcast_shapes(values.shape[:-1], x.shape)
        except ValueError:
            raise ValueError(
                f"select: index `x` of shape {x.shape} does not broadcast with the batch shape "
                f"{values.shape[:-1]} of `values`"
            ) from None
        table = jnp.broadcast_to(values, (*batch, values.shape[-1]))
        idx = jnp.broadcast_to(x, batch)[..., None]
        return jnp.take_along_axis(table, idx, axis=-1)[..., 0]
    if x.ndim == 0 or x.shape[-1] != values.shape[-1]:
        raise ValueError(
            f"select: a one-hot `x` must have a trailing axis of size {values.shape[-1]} "
            f"(values.shape[-1]); got x.shape={x.shape}"
        )
    return jnp.sum(values * x, axis=-1)
