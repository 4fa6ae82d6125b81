r"""The delta-method control variate for the score-function estimator.

Paisley, Blei & Jordan (2012), "Variational Bayesian Inference with Stochastic Search",
ICML, section 3 (a second-order Taylor expansion of ``f`` as control variate); Mohamed,
Rosca, Figurnov & Mnih (2020), "Monte Carlo Gradient Estimation in Machine Learning", JMLR
21(132), section 7.4 ("delta method").

Setting. Every sample site draws continuous values whose elements are independent given
``theta``, with known mean ``mu_j(theta)`` and variance ``v_j(theta)`` (``event_shape ==
()`` and the distribution's ``mean`` / ``variance``: Normal, Laplace, Logistic, Gamma,
Beta, ...). ``x`` is the vector of all sites' elements and ``f(x; theta)`` the program seen
as a function of them (the program re-run with the site values overridden; any other
randomness comes from the same key).

Control variate. With ``m = stop_gradient(mu(theta))`` and the coefficients evaluated at
``m`` and ``theta`` held fixed (stop-gradient): ``c = f(m)``, ``g = grad_x f(m)``,
``H = hess_x f(m)``::

    cv(x) = c + g^T (x - m) + 1/2 (x - m)^T H (x - m),
    E_theta[cv] = c + g^T (mu(theta) - m) + 1/2 sum_j H_jj v_j(theta)
                  + 1/2 (mu(theta) - m)^T H (mu(theta) - m)

(independence: the off-diagonal terms of ``E[(x - m)(x - m)^T]`` are
``(mu - m)(mu - m)^T``). The last term and ``g^T (mu - m)`` vanish in value at ``mu = m``
but not in gradient: ``grad_theta E_theta[cv] = J_mu^T g + 1/2 J_v^T diag(H)`` (the
quadratic term's gradient is zero at ``mu = m``). The estimate per sample is::

    (f(x) - cv(x)) grad_theta log p(x; theta) + J_mu^T g + 1/2 J_v^T diag(H)
        + grad_theta f(x; theta)  (x fixed: f's direct dependence on theta).

Unbiased: for coefficients fixed, ``E[cv(x) grad log p(x; theta)] = grad_theta E_theta[cv]``
(the score-function identity applied to ``cv``), so the two terms cancel in expectation and
what remains is the plain score-function estimate. For ``f`` quadratic in ``x`` the residual
``f - cv`` is zero and the estimate is exact (zero variance, apart from the pathwise
term of a direct dependence of ``f`` on ``theta``). It helps when ``f`` is close
to its quadratic expansion over the spread of ``x``; for strongly non-quadratic ``f`` (e.g.
``cos(k x)`` with ``k sigma >~ 1``) the residual can be larger than ``f`` and the variance
higher than the plain estimator's (measured, ``x ~ N(1, 1)``, per-sample variance for
``mu`` / ``sigma``: ``cos(x/2)`` 0.010 / 0.060 vs 0.45 / 0.78 plain; ``cos(2x)`` 16.7 / 80
vs 0.45 / 0.93 plain).

Cost per sample: one forward run (the draw), one forward and one reverse pass (the
estimate), and the Hessian of ``f`` in the ``d`` site elements at ``m`` by ``d``
forward-over-reverse passes (``jax.jacfwd`` of the gradient, which also gives ``f(m)`` and
``grad f(m)``; memory ``O(d^2)``), so it suits programs with few random elements.

Restrictions (``EstimatorError`` at trace time): discrete sites whose parameters depend on
``theta`` or on another site's draw (one whose parameters do not is part of "any other
randomness": drawn from the key, with no score and no Taylor term; the dependence is
decided as for :func:`jaxestim.pathwise`, when the derivatives are traced), sites with a non-scalar
event (Dirichlet, multivariate Normal), sites whose support moves with the parameters
(Uniform), sites whose parameters depend on another site's
draw (the independence the expectation needs; found by a dependence analysis of the
traced program, as for :func:`jaxestim.disarm`), sample sites inside ``je.scan`` /
``je.fori_loop`` / ``je.while_loop`` / ``je.cond`` or plain ``jax.lax`` control flow, and
per-site estimator overrides (it is a whole-program estimator). Higher derivatives of the
estimate raise ``EstimatorError``. It takes no baseline: the residual ``f - cv`` already has
its constant part removed.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxestim._errors import EstimatorError
from jaxestim._estimator import Estimator, without_derivative
from jaxestim._handlers import Handler, mask_value
from jaxestim._util import pytree_dataclass
from jaxestim.estimators.arm import _depends_on_taint

_WHAT = "je.score_function(control_variate='delta')"
_USE = 'Use je.score_function("leave_one_out") (or "optimal") for this program'


class _DeltaHandler(Handler):
    """Runs the sites: draws (``z`` None) or takes their values from the flat ``z``, and
    records each element's value, mean, variance and the summed log-density."""

    recording = True
    name = "delta_method"

    def __init__(self, dtype: Any, z: jax.Array | None = None, nested: bool = False) -> None:
        super().__init__()
        self.dtype, self.z, self.nested = dtype, z, nested
        self.pos = 0
        self.rec: dict[str, list[jax.Array]] = {"x": [], "m": [], "v": []}
        self.logp = jnp.zeros((), dtype)

    def sample(self, key, dist, sample_shape, estimator, mask):
        if estimator is not None:
            raise EstimatorError(
                f"{_WHAT} is a whole-program estimator: sites take no per-site `estimator` "
                f"override (got je.{estimator.name}())"
            )
        where = f"{_WHAT} at a {type(dist).__name__} site"
        if self.nested:
            raise EstimatorError(
                f"{where} inside je.scan / je.fori_loop / je.while_loop / je.cond: not "
                f"supported (the Taylor expansion needs every site's value outside control "
                f"flow). {_USE}."
            )
        self.check_recording_site(where)
        if dist.is_discrete:  # plain randomness of the program when theta-independent
            error = EstimatorError(
                f"{where}: discrete sites whose parameters depend on the parameters (or on "
                f"another site's draw) have no Taylor expansion. {_USE} (or "
                f"je.stochastic_ad() for discrete sites)."
            )
            return without_derivative(dist.sample(key, sample_shape), dist, error)
        if dist.event_shape != ():
            raise EstimatorError(
                f"{where}: only distributions with independent scalar elements "
                f"(event_shape == ()) are supported, this one has event_shape "
                f"{dist.event_shape}. {_USE}."
            )
        if dist._support_boundary() is not None:
            raise EstimatorError(
                f"{where}: its support moves with its parameters, where the score function "
                f"is biased. Use je.pathwise() for this site."
            )
        try:
            mean, var = dist.mean, dist.variance
        except (NotImplementedError, AttributeError) as e:
            raise EstimatorError(
                f"{where}: the distribution has no closed-form mean/variance. {_USE}."
            ) from e
        shape = tuple(sample_shape) + tuple(dist.batch_shape)
        if self.z is None:
            x = jax.lax.stop_gradient(dist.sample(key, sample_shape))
        else:
            n = math.prod(shape)
            x = jnp.reshape(self.z[self.pos : self.pos + n], shape).astype(dist.dtype)
            self.pos += n
        lp = dist._sampled_log_prob(x)
        if mask is not None:
            lp = jnp.where(mask, lp, 0.0)
        self.logp = self.logp + jnp.sum(lp).astype(self.dtype)
        for name, val in (("x", x), ("m", mean), ("v", var)):
            flat = jnp.reshape(jnp.broadcast_to(val, shape), (-1,)).astype(self.dtype)
            self.rec[name].append(flat)
        return mask_value(x, mask)

    def collect(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        return tuple(
            jnp.concatenate([jnp.zeros((0,), self.dtype), *self.rec[k]]) for k in ("x", "m", "v")
        )

    # sites inside loops / branches raise (see sample); loops without sites are fine
    def loop_child(self, state):
        return _DeltaHandler(self.dtype, None, nested=True)

    def branch_child(self, state, index, layout):
        return _DeltaHandler(self.dtype, None, nested=True)


@pytree_dataclass
class DeltaMethod(Estimator):
    r"""Score function with the delta-method (second-order Taylor) control variate.

    ``g = (f(x) - cv(x)) grad log p(x; theta) + J_mu^T grad f(m) + 1/2 J_v^T diag(hess f(m))
    + grad_theta f(x; theta)`` with ``cv`` the second-order Taylor expansion of ``f`` (as a
    function of all sites' values) at ``m = stop_gradient(mean)``, coefficients held fixed
    (Paisley, Blei & Jordan, 2012; Mohamed et al., 2020, section 7.4). Unbiased; exact (zero
    variance, apart from a direct pathwise term) for ``f`` quadratic in the site values;
    lower variance than the plain score function when ``f`` is close to quadratic over the
    spread of ``x``, possibly higher when it is far from it. Sites: continuous, independent
    scalar elements with a closed-form mean and variance, parameters not depending on other
    draws, outside control flow (``EstimatorError`` otherwise); discrete sites only with
    parameters that depend neither on ``theta`` nor on other draws. Cost per sample: 2 forward
    runs, 1 reverse pass, and a Hessian in the ``d`` site elements (``d``
    forward-over-reverse passes). See :mod:`jaxestim.estimators.delta`. Made by
    ``je.score_function(control_variate="delta")`` or ``je.delta_method()``.
    """

    site_level: ClassVar[bool] = False
    name: ClassVar[str] = "delta_method"
    display: ClassVar[str] = _WHAT  # in error messages

    def per_sample(self, call, key, theta):
        """``(value, gradient estimate, aux)`` for one sample; ``call(key, theta_flat)``."""
        dtype = theta.dtype

        def run(k, th, z):
            h = _DeltaHandler(dtype, z)
            with h:
                f, aux = call(k, th)
            x, m, v = h.collect()
            return f, aux, x, m, v, h.logp

        _, _, x, m, _, _ = run(key, theta, None)
        x, m0 = jax.lax.stop_gradient((x, m))
        # the expectation of cv needs independent sites: no site's mean/variance may depend
        # on another site's value (forward dependence of (m, v) on the override vector)
        closed = jax.make_jaxpr(lambda k, th, z: run(k, th, z)[3:5])(key, theta, x)
        if _depends_on_taint(closed, 2):
            raise EstimatorError(
                f"{_WHAT}: the parameters (mean or variance) of a sample site depend on "
                f"another site's draw, so the sites are not independent given the "
                f"parameters and the control variate's expectation would be wrong. {_USE}."
            )
        th0 = jax.lax.stop_gradient(theta)

        def fz(z):
            return run(key, th0, z)[0]

        def grad_and_value(z):
            v, gr = jax.value_and_grad(fz)(z)
            return gr, (v, gr)

        # one forward-over-reverse pass per site element gives H, f(m) and grad f(m)
        hess, (f_m, g) = jax.jacfwd(grad_and_value, has_aux=True)(m0)
        dx = x - m0
        cv = f_m + g @ dx + 0.5 * dx @ (hess @ dx)

        def phi(th):
            f, aux, _, mu, v, lp = run(key, th, x)
            return (f, lp, mu, v), aux

        (f, lp, mu, v), vjp_fn, aux = jax.vjp(phi, theta, has_aux=True)
        resid = jax.lax.stop_gradient(f - cv)
        (grad,) = vjp_fn(
            (
                jnp.ones_like(f),
                resid.astype(lp.dtype),
                g.astype(mu.dtype),
                (0.5 * jnp.diagonal(hess)).astype(v.dtype),
            )
        )
        return f, grad, aux


def delta_method() -> DeltaMethod:
    """Score function with the delta-method control variate (see :class:`DeltaMethod`)."""
    return DeltaMethod()
