"""The pathwise (reparameterization) estimator."""

from __future__ import annotations

from typing import ClassVar

from jaxestim._estimator import Estimator, site_error
from jaxestim._util import pytree_dataclass


@pytree_dataclass
class Pathwise(Estimator):
    r"""Pathwise (reparameterization) estimator.

    Writes ``x = g(eps; theta)`` with parameter-free noise ``eps`` and differentiates
    through the sampler: ``grad E[f(x)] = E[grad_theta f(g(eps; theta))]``. Gamma, Beta
    and Dirichlet use implicit reparameterization (Figurnov et al., 2018), which
    ``jax.random.gamma`` implements. Unbiased, usually the lowest variance, costs one
    forward and one backward pass per sample, but needs continuous, reparameterizable
    sites and ``f`` differentiable in ``x``. At a discrete site it raises
    :class:`EstimatorError` (its gradient would silently be zero).
    """

    name: ClassVar[str] = "pathwise"

    def process_site(self, ctx, key, dist, sample_shape):
        if dist.is_discrete or not dist.is_reparameterized:
            raise site_error(
                "je.pathwise()",
                dist,
                "discrete samples have no reparameterization (the pathwise gradient would "
                "be silently zero)",
                "je.score_function(), je.stochastic_ad(), je.straight_through() or "
                "je.gumbel_softmax() (Bernoulli/Categorical)",
            )
        return dist.rsample(key, sample_shape)


def pathwise() -> Pathwise:
    """The pathwise / reparameterization estimator (see :class:`Pathwise`)."""
    return Pathwise()
