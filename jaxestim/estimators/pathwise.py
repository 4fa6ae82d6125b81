"""The pathwise (reparameterization) estimator."""

from __future__ import annotations

from typing import Any, ClassVar, Literal, overload

import jax

from jaxestim._estimator import Estimator, site_error, without_derivative
from jaxestim._util import pytree_dataclass


@pytree_dataclass
class Pathwise(Estimator):
    r"""Pathwise (reparameterization) estimator.

    Writes ``x = g(eps; theta)`` with parameter-free noise ``eps`` and differentiates
    through the sampler: ``grad E[f(x)] = E[grad_theta f(g(eps; theta))]``. Gamma, Beta
    and Dirichlet use implicit reparameterization (Figurnov et al., 2018), which
    ``jax.random.gamma`` implements. Unbiased, usually the lowest variance, costs one
    forward and one backward pass per sample, but needs continuous, reparameterizable
    sites and ``f`` differentiable in ``x``.

    Discrete (and other non-reparameterized) sites: a site whose parameters do not depend on
    ``theta`` (constants, values computed from the key or from arguments that are not
    differentiated, ``jax.lax.stop_gradient``) is drawn with ``dist.sample``; its derivative
    contribution is exactly zero, so the estimate stays unbiased. A site whose parameters
    depend on ``theta`` raises :class:`EstimatorError` (its gradient would silently be
    zero) when the derivative is traced, eagerly and under ``jax.jit``: the site's value
    carries a custom JVP rule that raises as soon as a parameter carries a tangent, so the
    dependence is followed through ``je.scan`` / ``je.cond`` bodies, plain ``jax.lax``
    control flow and ``jax.vmap``, and an enclosing ``jax.grad`` of an argument the site's
    parameters depend on raises too. The test is structural: ``0 * theta`` counts as a
    dependence.
    """

    name: ClassVar[str] = "pathwise"

    def process_site(self, ctx, key, dist, sample_shape):
        if dist.is_discrete or not dist.is_reparameterized:
            error = site_error(
                "je.pathwise()",
                dist,
                "discrete samples have no reparameterization (the pathwise gradient would "
                "be silently zero)",
                "je.score_function(), je.stochastic_ad(), je.straight_through() or "
                "je.gumbel_softmax() (Bernoulli/Categorical)",
            )
            return without_derivative(dist.sample(key, sample_shape), dist, error)
        return dist.rsample(key, sample_shape)


@pytree_dataclass
class PathwiseForward(Estimator):
    r"""Pathwise estimator by forward-mode autodiff: ``je.pathwise(mode="forward")``.

    The same estimate as :class:`Pathwise` (``grad_theta f(g(eps; theta))`` for the sample's
    noise ``eps``; equal to it to float rounding for the same key), computed as the full
    Jacobian-vector product with each of the ``P`` basis vectors of the flattened parameters
    (``jax.jacfwd``: one ``jax.jvp`` per scalar parameter, vmapped) instead of one reverse
    pass. No residuals of the forward run are stored, so memory does not grow with the
    length of the program (a long :func:`jaxestim.scan` needs no checkpointing); the price
    is ``P`` tangent propagations. Use it for programs with few scalar parameters and long
    loops; :func:`jaxestim.forward_gradient` is the random-direction variant (``k`` JVPs
    instead of ``P``, unbiased but with ``~P/k`` times the variance).

    Unbiased (for ``f`` differentiable in the continuous samples), variance of the pathwise
    estimator. Cost per sample: ``P`` forward-mode runs (one vmapped JVP over the identity
    basis, each about 2-3 program evaluations) including the value. It is a whole-program
    estimator: sites take no per-site ``estimator`` override, and a discrete or
    non-reparameterized site whose parameters depend on ``theta`` raises
    :class:`EstimatorError` at trace time (one whose parameters do not is fine, as for
    :class:`Pathwise`). Its estimates
    cannot be differentiated again (an outer ``jax.grad`` raises); use reverse mode
    (``je.pathwise()``) for higher derivatives.
    """

    site_level: ClassVar[bool] = False
    name: ClassVar[str] = "pathwise"
    display: ClassVar[str] = 'je.pathwise(mode="forward")'  # in error messages

    def check_handler(self) -> Any:
        """The sample-site handler of one run (reparameterized sites; theta-dependent
        discrete ones raise)."""
        from jaxestim.estimators.forward import _PathwiseOnlyHandler

        return _PathwiseOnlyHandler(
            self.name,
            label=self.display,
            suggest="je.score_function(), je.stochastic_ad() or je.auto()",
        )

    def per_sample(self, call, key, theta):
        """``(value, gradient, aux)`` for one sample; ``call(key, theta_flat)``."""

        def prog(th: jax.Array) -> tuple[jax.Array, Any]:
            with self.check_handler():
                f, aux = call(key, th)
            return f, (f, aux)

        grad, (f, aux) = jax.jacfwd(prog, has_aux=True)(theta)
        return f, grad, aux


@overload
def pathwise(mode: Literal["reverse"] = "reverse") -> Pathwise: ...
@overload
def pathwise(mode: Literal["forward"]) -> PathwiseForward: ...


def pathwise(mode: str = "reverse") -> Pathwise | PathwiseForward:
    """The pathwise / reparameterization estimator.

    ``mode="reverse"`` (default): :class:`Pathwise`, a site-level estimator (one reverse
    pass per sample, mixable per site). ``mode="forward"``: :class:`PathwiseForward`, the
    same gradient by forward-mode autodiff over the whole program (``P`` JVPs per sample
    for ``P`` scalar parameters, no stored residuals: few parameters, long loops).
    """
    if mode == "reverse":
        return Pathwise()
    if mode == "forward":
        return PathwiseForward()
    raise ValueError(f"pathwise: unknown `mode` {mode!r}; expected 'reverse' or 'forward'")
