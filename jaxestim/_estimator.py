"""The estimator base class and helpers shared by the site-level estimator families.

Every estimator is a small frozen pytree dataclass: numeric hyper-parameters (temperature,
finite-difference step, constant baseline) are leaves and may be traced, so
``jax.vmap`` over them works; configuration (scheme, flags) is static. The families live in
:mod:`jaxestim.estimators`; this module imports none of them (nor the handlers), so
:mod:`jaxestim._handlers` can check ``je.sample(..., estimator=...)`` against the base class
without an import cycle.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, ClassVar

import jax
import jax.numpy as jnp

from jaxestim._errors import EstimatorError
from jaxestim.distributions import Bernoulli, Categorical, Distribution, OneHotCategorical

if TYPE_CHECKING:
    from jaxestim._surrogate import SurrogateHandler

RELAXABLE = (Bernoulli, Categorical, OneHotCategorical)


class Estimator:
    """Base class of all estimators."""

    site_level: ClassVar[bool] = True
    name: ClassVar[str] = "estimator"
    #: whether the estimate evaluates the program at perturbed parameters ``theta + h v``
    #: (finite differences): then the parameters must resolve ``h``, so ``bfloat16`` /
    #: ``float16`` parameters are refused
    perturbs_parameters: ClassVar[bool] = False

    @property
    def differences_only(self) -> bool:
        """Whether the gradient uses only perturbed runs (central finite differences)."""
        return False

    @property
    def has_state(self) -> bool:
        """Whether the estimator carries state between calls (see :meth:`init`)."""
        return False

    def init(self) -> Any:
        """Initial estimator state; ``None`` for stateless estimators."""
        return None

    def check(self, num_samples: int) -> None:
        """Validate against the transform's configuration (raises ``ValueError``)."""

    def process_site(
        self, ctx: SurrogateHandler, key: jax.Array, dist: Distribution, sample_shape: tuple
    ) -> jax.Array:
        raise NotImplementedError


def site_error(est: str, dist: Distribution, why: str, suggest: str) -> EstimatorError:
    return EstimatorError(
        f"{est} cannot handle a {type(dist).__name__} sample site: {why}. Use {suggest}, "
        f"either for the whole program or at this site via "
        f"je.sample(key, dist, estimator=...)."
    )


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _underivable(msg: str, x: jax.Array, params: list) -> jax.Array:
    return x


@_underivable.defjvp
def _underivable_jvp(msg, primals, tangents):
    raise EstimatorError(msg)


def without_derivative(x: jax.Array, dist: Distribution, error: EstimatorError) -> jax.Array:
    """A sample ``x`` of ``dist`` whose derivative in ``dist``'s parameters is lost.

    For a site that a differentiating estimator cannot differentiate (a discrete sample under
    ``je.pathwise()``): the value is ``x``, and differentiating it raises ``error`` as soon
    as some floating parameter of ``dist`` carries a tangent, that is, depends on what is
    being differentiated (the transform's parameters, or an argument an enclosing
    ``jax.grad`` / ``jax.jvp`` differentiates, also through ``jax.jit``, ``jax.vmap``,
    ``je.scan`` / ``je.cond`` and plain ``jax.lax`` control flow). Parameters that do not
    depend on it (constants, values computed from the key or from other arguments,
    ``jax.lax.stop_gradient``) carry symbolic-zero tangents: the site's derivative
    contribution is exactly zero and nothing is raised. Forward (``jax.jvp``) and reverse
    (``jax.vjp``) differentiation both pass through the custom JVP rule, so the error is
    raised while the derivative is traced (at trace time, eagerly and under ``jax.jit``).
    """
    params = [
        v
        for v in jax.tree_util.tree_leaves(dist)
        if jnp.issubdtype(jnp.result_type(v), jnp.inexact)
    ]
    return _underivable(str(error), x, params) if params else x


def is_index_categorical(dist: Distribution) -> bool:
    """A Categorical with integer values (not OneHotCategorical, which subclasses it)."""
    return isinstance(dist, Categorical) and not isinstance(dist, OneHotCategorical)


def one_hot_site(dist: Distribution, x: jax.Array) -> jax.Array:
    """Categorical index samples as one-hot vectors (relaxation estimators' convention)."""
    if is_index_categorical(dist):
        return jax.nn.one_hot(x, dist.num_categories, dtype=dist.probs.dtype)
    return x
