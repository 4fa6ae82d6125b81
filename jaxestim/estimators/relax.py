r"""REBAR and RELAX: control variates from the continuous relaxation of Bernoulli sites.

For a Bernoulli site with logits ``alpha`` (``p = sigmoid(alpha)``) and uniforms ``u, v``:

* ``z = alpha + log u - log(1 - u)`` (logistic reparameterization) and ``b = H(z) =
  1[z > 0]``, so ``b ~ Bernoulli(p)`` and ``z ~ p(z)``;
* ``z~ ~ p(z | b)`` by conditional reparameterization: ``u' = (1 - p) + v p`` if ``b = 1``,
  ``u' = v (1 - p)`` if ``b = 0``, and ``z~ = alpha + log u' - log(1 - u')`` (the uniform
  ``u`` given ``b`` is uniform on ``(1 - p, 1)`` resp. ``(0, 1 - p)``); ``z~`` is
  differentiated with ``b`` held fixed;
* ``sigma_lambda(z) = sigmoid(z / lambda)``, the Concrete relaxation at temperature
  ``lambda``.

With several Bernoulli sites ``z``, ``z~`` and ``b`` are the concatenation of all sites'
elements (the multivariate form used for VAEs), including every iteration's elements of
Bernoulli sites in ``je.scan`` / ``je.fori_loop`` / ``je.while_loop`` bodies (recorded per
iteration, stacked by the loop, flattened iteration-major) and the elements of the branch
of a ``je.cond`` / ``je.switch`` that ran (the other branches' slots are 0 and contribute
no ``log p(b)`` term). With a control variate ``c(z)``
differentiable in ``z`` the per-sample estimate (Grathwohl et al., 2018, eq. 6) is::

    g = [f(b) - c(z~)] grad log p(b) + grad_theta f(b) + grad c(z) - grad c(z~)

where ``grad_theta f(b)`` is the derivative through everything but ``b`` (direct dependence
on ``theta``, reparameterized continuous sites), and ``grad c(z)``, ``grad c(z~)`` are the
total derivatives through ``z(theta, u)`` and ``z~(theta, v, b)``. It is unbiased for every
``c``: ``E[grad c(z)] = grad E[c(z)] = grad E_b[E[c(z~) | b]] = E[c(z~) grad log p(b) +
grad c(z~)]``. REBAR (Tucker et al., 2017) takes ``c(z) = eta f(sigma_lambda(z))``, RELAX
``c(z) = eta f(sigma_lambda(z)) + r_phi(z)`` with a user function ``r = surrogate(phi, z)``;
both are unbiased for every ``eta``, ``lambda > 0`` and ``phi``.

Learning the control variate. With ``learn=True`` (the default) ``(log lambda, eta)`` and,
for RELAX, ``phi`` are *estimator state*: the transform takes ``estimator_state=`` (start
from ``estimator.init()``) and returns ``(result, new_state)``. Since ``E[g]`` does not
depend on them, ``grad Var(g) = grad E[sum_p g_p^2]``: each sample computes
``jax.grad`` w.r.t. the state parameters of ``sum_p g_p^2`` (its own gradient estimate,
differentiated through the program a second time), the transform averages these over the
``N`` samples and :meth:`REBAR.update_state` applies one ``optax.adam(learning_rate)``
step to them (the Adam state is part of the estimator state), all inside the same jitted
call. The returned gradient is the one computed with the *old* state.

Cost per sample: three program evaluations (``f(b)``, ``f(sigma_lambda(z))``,
``f(sigma_lambda(z~))``) each with a backward pass (two pullbacks for the first); with
``learn=True`` the whole estimate is differentiated once more w.r.t. the state (about
twice to three times that). The program must accept relaxed values in ``[0, 1]`` at its
Bernoulli sites (as under :func:`jaxestim.gumbel_softmax`) and be a continuous function of
them (``c`` must be differentiable: branching on a Bernoulli value, e.g. ``je.cond(b >
0.5, ...)`` or ``jnp.where(b > 0.5, ...)``, makes the relaxed runs jump and the estimate
biased; write such programs arithmetically, ``b * x + (1 - b) * y``). Continuous sites are
reparameterized with the same noise in all three runs (also under ``je.scan(...,
key=)``: every run draws ``u`` and ``v`` at every site, so the bulk words are laid out
alike). Other discrete sites, Categorical sites, masks at Bernoulli sites, and programs
whose Bernoulli logits depend on another Bernoulli site's value (directly or through a
loop carry, e.g. a random walk whose step probabilities depend on the position) or in
which a Bernoulli value decides through a ``je.cond`` / ``je.while_loop`` predicate which
Bernoulli sites run raise :class:`jaxestim.EstimatorError` at trace time (the same forward
dependence analysis as :mod:`jaxestim.estimators.arm`). A ``je.scan`` whose step
probabilities do not depend on earlier draws is supported.

References: G. Tucker, A. Mnih, C. J. Maddison, D. Lawson, J. Sohl-Dickstein, "REBAR:
Low-variance, unbiased gradient estimates for discrete latent variable models", NeurIPS
2017; W. Grathwohl, D. Choi, Y. Wu, G. Roeder, D. Duvenaud, "Backpropagation through the
Void: Optimizing control variates for black-box gradient estimation", ICLR 2018.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import optax

from jaxestim._errors import EstimatorError
from jaxestim._estimator import Estimator, site_error
from jaxestim._handlers import mask_value, reject_override
from jaxestim._util import check_positive, fold_in_str, pytree_dataclass, static_field
from jaxestim.distributions import Bernoulli
from jaxestim.distributions._base import RandomStream
from jaxestim.estimators._records import FlatRecordHandler
from jaxestim.estimators._sinks import discontinuities
from jaxestim.estimators.arm import _depends_on_taint

_ALTERNATIVES = "je.score_function(...) or je.stochastic_ad()"


def _logistic(u: jax.Array) -> jax.Array:
    return jnp.log(u) - jnp.log1p(-u)


def conditional_z(alpha: jax.Array, b: jax.Array, v: jax.Array) -> jax.Array:
    r"""``z~ ~ p(z | b)`` for ``z = alpha + log u - log(1 - u)``, from a uniform ``v``.

    ``b = 1``: ``u' = (1 - p) + v p``, ``1 - u' = p (1 - v)``; ``b = 0``: ``u' = v (1 - p)``,
    ``1 - u' = 1 - v (1 - p)``; ``z~ = alpha + log u' - log(1 - u')``, computed in log space
    (``log p = log_sigmoid(alpha)``, ``log(1 - p) = log_sigmoid(-alpha)``). Differentiable in
    ``alpha`` with ``b`` fixed.
    """
    log_p, log_q = jax.nn.log_sigmoid(alpha), jax.nn.log_sigmoid(-alpha)
    q = jax.nn.sigmoid(-alpha)
    z1 = alpha + jnp.log(q + v * (1.0 - q)) - log_p - jnp.log1p(-v)
    z0 = alpha + jnp.log(v) + log_q - jnp.log1p(-v * q)
    return jnp.where(b > 0, z1, z0)


class _RelaxHandler(FlatRecordHandler):
    """One run of the program for REBAR/RELAX.

    ``mode``: ``"b"`` (Bernoulli sites return ``b = H(z)``, no derivative), ``"z"``
    (``sigma_lambda(z)``) or ``"zt"`` (``sigma_lambda(z~)``). All runs draw ``u`` (the
    site's coupling uniforms) and ``v`` from the site key, so the three runs share their
    random numbers; continuous sites are reparameterized from the same key. Every Bernoulli
    element records (flat, see :mod:`jaxestim.estimators._records`, so the records of
    ``je.scan`` iterations and ``je.cond`` branches reach the top level) its logit ``a``,
    ``b``, the relaxed variable ``z`` (``z`` or ``z~``; held fixed in mode ``"b"``) and
    ``m`` (1; 0 in the slots of branches not taken). ``taint`` (a scalar 0, or None) is
    added to every Bernoulli value for the trace-time dependence analysis.
    """

    fields = ("a", "b", "z", "m")

    def __init__(self, name: str, mode: str, lam: Any = None, taint: Any = None) -> None:
        super().__init__(jnp.result_type(float))
        self.name, self.mode, self.lam, self.taint = name, mode, lam, taint

    def _new(self) -> _RelaxHandler:
        return _RelaxHandler(self.name, self.mode, self.lam, self.taint)

    def sample(self, key, dist, sample_shape, estimator, mask):
        reject_override(self.name, estimator)
        if not dist.is_discrete:
            if not dist.is_reparameterized:
                raise site_error(
                    f"je.{self.name}()",
                    dist,
                    "it has no reparameterization",
                    "je.score_function(...)",
                )
            return mask_value(dist.rsample(key, sample_shape), mask)
        if not isinstance(dist, Bernoulli):
            raise EstimatorError(
                f"je.{self.name}() supports Bernoulli discrete sites only (the logistic "
                f"relaxation), got a {type(dist).__name__} site. Use {_ALTERNATIVES} for "
                f"this program."
            )
        self.check_recording_site(f"a Bernoulli sample site under je.{self.name}()")
        if mask is not None:
            raise EstimatorError(
                f"je.{self.name}(): `mask=` at Bernoulli sites is not supported. Use "
                f"{_ALTERNATIVES}."
            )
        shape = tuple(sample_shape) + tuple(dist.batch_shape)
        alpha = jnp.broadcast_to(dist.logits, shape).astype(self.dtype)
        u = dist.uniforms(key, sample_shape).astype(self.dtype)
        # v is drawn in every mode so that all runs take the same random words (under
        # je.scan(..., key=) the words are laid out by what each site draws): u first, then
        # v (the next words of a bulk stream, or a key folded from the site key)
        kv = key if isinstance(key, RandomStream) else fold_in_str(key, "rebar")
        v = dist.uniforms(kv, sample_shape).astype(self.dtype)
        z = alpha + _logistic(u)
        b = jax.lax.stop_gradient((z > 0).astype(self.dtype))
        if self.mode == "b":
            z, value = jax.lax.stop_gradient(z), b
            if self.taint is not None:
                value = value + self.taint.astype(value.dtype)
        else:
            if self.mode == "zt":
                z = conditional_z(alpha, b, v)
            value = jax.nn.sigmoid(z / self.lam.astype(self.dtype))
            if self.taint is not None:
                value = value + self.taint.astype(value.dtype)
        self.records.append(
            {
                "a": jnp.ravel(alpha),
                "b": jnp.ravel(b),
                "z": jnp.ravel(z),
                "m": jnp.ones((b.size,), self.dtype),
            }
        )
        return value

    def log_prob(self) -> jax.Array:
        """``log p(b)`` summed over all Bernoulli elements that ran (differentiable in the
        logits)."""
        r = self.collect()
        a, b = r["a"], r["b"]
        lp = b * jax.nn.log_sigmoid(a) + (1.0 - b) * jax.nn.log_sigmoid(-a)
        return jnp.sum(r["m"] * lp)

    def zvec(self) -> jax.Array:
        """All elements' relaxed variables, flat in site order (loop iterations
        iteration-major; 0 in the slots of branches not taken)."""
        return self.collect()["z"]


@pytree_dataclass
class REBAR(Estimator):
    r"""REBAR (Tucker et al., 2017): ``c(z) = eta f(sigma_lambda(z))`` as control variate.

    Per-sample estimate, for Bernoulli sites with logistic noise ``z`` and its conditional
    ``z~ ~ p(z | b)`` (see :mod:`jaxestim.estimators.relax`)::

        g = [f(b) - eta f(sigma_lambda(z~))] grad log p(b) + grad_theta f(b)
            + eta grad f(sigma_lambda(z)) - eta grad f(sigma_lambda(z~)),

    ``sigma_lambda(z) = sigmoid(z / lambda)``. Unbiased for every ``eta`` and
    ``lambda > 0``; the variance is lowest near the optimal ``(eta, lambda)``, which
    ``learn=True`` tunes online by one Adam step per call on ``E[sum_p g_p^2]`` (the
    state, from :meth:`init`, holds ``log lambda``, ``eta`` and the Adam state; pass it as
    ``estimator_state=`` and the transform returns ``(result, new_state)``).
    Continuous sites: pathwise, same noise in the three runs. The program must accept
    relaxed values in ``[0, 1]`` at Bernoulli sites (and be continuous in them). Bernoulli
    sites may sit in ``je.scan`` / ``je.fori_loop`` / ``je.while_loop`` bodies and
    ``je.cond`` / ``je.switch`` branches as long as no Bernoulli logits depend on another
    Bernoulli value (checked at trace time, through loop carries). Cost per sample: three program
    evaluations with backward passes (``f(b)``, ``f(sigma_lambda(z))``,
    ``f(sigma_lambda(z~))``); with ``learn=True`` plus a second-order pass for the state
    gradient.

    Attributes:
      temperature: ``lambda > 0`` (initial value when ``learn=True``).
      eta: control-variate scale (initial value when ``learn=True``); ``eta = 0`` is the
        plain score function.
      learn: tune ``(log lambda, eta)`` as estimator state (default) or keep them fixed.
      learning_rate: Adam step size for the state update.
      check_continuity: at trace time, raise ``EstimatorError`` where the relaxed values
        reach a comparison, rounding, ``sign``, ``argmax``, an integer cast or a
        ``cond`` / ``while`` predicate in the user's program (see
        :mod:`jaxestim.estimators._sinks`): the control variate's reparameterization
        gradient misses the jump there, so the estimate would be silently biased. Set
        ``False`` only for a false alarm (an operation that is discontinuous in isolation
        but not in the program's output).
    """

    temperature: Any = 0.5
    eta: Any = 1.0
    learn: bool = static_field(default=True)
    learning_rate: float = static_field(default=1e-2)
    check_continuity: bool = static_field(default=True)
    site_level: ClassVar[bool] = False
    name: ClassVar[str] = "rebar"

    def __post_init__(self) -> None:
        check_positive(f"{self.name}", "temperature", self.temperature)
        check_positive(f"{self.name}", "learning_rate", self.learning_rate)

    @property
    def has_state(self) -> bool:
        return self.learn

    def fixed_params(self) -> dict:
        """The control-variate parameters given to the constructor."""
        return {
            "log_temperature": jnp.log(jnp.asarray(self.temperature, jnp.result_type(float))),
            "eta": jnp.asarray(self.eta, jnp.result_type(float)),
        }

    def _optimizer(self) -> optax.GradientTransformation:
        return optax.adam(self.learning_rate)

    def init(self) -> Any:
        """``{"params": {"log_temperature", "eta"[, "phi"]}, "opt_state": Adam state}``."""
        if not self.learn:
            return None
        params = self.fixed_params()
        return {"params": params, "opt_state": self._optimizer().init(params)}

    def update_state(self, state: Any, grad: Any) -> Any:
        """One Adam step on the state parameters given the mean gradient of ``sum g^2``."""
        updates, opt_state = self._optimizer().update(grad, state["opt_state"], state["params"])
        return {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state}

    def residual(self, params: dict, z: jax.Array) -> jax.Array:
        """The learned part ``r_phi(z)`` of the control variate (none for REBAR)."""
        return jnp.zeros((), z.dtype)

    def _check_independent(self, call: Callable, key: jax.Array, theta: jax.Array) -> None:
        """Trace-time check that no Bernoulli logits depend on a Bernoulli site's value.

        The ``"b"`` run is traced with a taint (a scalar 0) added to every Bernoulli value;
        the forward dependence analysis of :mod:`jaxestim.estimators.arm` (partial
        evaluation, following je.scan carries to a fixed point and je.cond predicates)
        tells whether the recorded logits, or which Bernoulli elements ran, depend on it.
        """
        dtype = jnp.result_type(float)

        def prog(k, th, taint):
            h = _RelaxHandler(self.name, "b", taint=taint)
            with h:
                call(k, th)
            rec = h.collect()
            return rec["a"], rec["m"]

        closed = jax.make_jaxpr(prog)(key, theta, jnp.zeros((), dtype))
        if _depends_on_taint(closed, 2):
            raise EstimatorError(
                f"je.{self.name}(): the logits of a Bernoulli site depend on the value of "
                f"another Bernoulli site (a sequential / multi-layer model, directly or "
                f"through a je.scan carry such as a random walk whose step probabilities "
                f"depend on the position), or a je.cond / je.while_loop whose predicate "
                f"depends on a Bernoulli value decides which Bernoulli sites run. This "
                f"implementation relaxes sites that are independent given the parameters "
                f"(e.g. a je.scan whose step probabilities do not depend on earlier draws); "
                f"here it would be biased. Use {_ALTERNATIVES}."
            )

    def _check_continuous(self, call: Callable, key: jax.Array, theta: jax.Array) -> None:
        """Trace-time check that the program is continuous in the relaxed values.

        The ``"z"`` run is traced with a taint (a scalar 0) added to every relaxed value and
        :func:`jaxestim.estimators._sinks.discontinuities` lists the user-level operations
        it reaches that have a jump or a zero derivative (comparisons, rounding, integer
        casts, control-flow predicates): there ``grad f(sigma_lambda(z))`` misses the jump
        and the control variate no longer cancels in expectation.
        """
        dtype = jnp.result_type(float)

        def prog(k, th, taint):
            with _RelaxHandler(self.name, "z", jnp.ones((), dtype), taint=taint):
                f, _ = call(k, th)
            return f

        found = discontinuities(jax.make_jaxpr(prog)(key, theta, jnp.zeros((), dtype)))
        if found:
            raise EstimatorError(
                f"je.{self.name}() differentiates the program at relaxed values "
                f"sigmoid(z / lambda) of its Bernoulli sites, which must reach the output "
                f"continuously; here they reach {'; '.join(found[:4])}. A jump in the "
                f"relaxed values makes the control variate biased (its reparameterization "
                f"gradient misses the jump). Write the program as a smooth function of the "
                f"Bernoulli values (e.g. b * x + (1 - b) * y instead of a comparison or "
                f"je.cond on b), or use {_ALTERNATIVES}. (If this is a false alarm, pass "
                f"check_continuity=False.)"
            )

    def per_sample(self, call, key, theta, state=None):
        """``(value, gradient estimate, aux)``, plus with ``learn=True`` the gradient of
        ``sum_p g_p^2`` w.r.t. the state parameters (averaged and applied by the transform
        through :meth:`update_state`)."""
        self._check_independent(call, key, theta)
        if self.check_continuity:
            self._check_continuous(call, key, theta)
        params = state["params"] if self.learn else self.fixed_params()

        def run(mode, th, lam):
            h = _RelaxHandler(self.name, mode, lam)
            with h:
                f, aux = call(key, th)
            return f, aux, h

        def estimate(p):
            lam = jnp.exp(p["log_temperature"])
            eta = p["eta"]

            def discrete(th):
                f, aux, h = run("b", th, lam)
                return (f, h.log_prob()), aux

            (fb, logp), pull, aux = jax.vjp(discrete, theta, has_aux=True)
            (g_f,) = pull((jnp.ones_like(fb), jnp.zeros_like(logp)))
            (g_logp,) = pull((jnp.zeros_like(fb), jnp.ones_like(logp)))

            def control(mode):
                def c(th):
                    f, _, h = run(mode, th, lam)
                    return eta.astype(f.dtype) * f + self.residual(p, h.zvec()).astype(f.dtype)

                return jax.value_and_grad(c)(theta)

            _, g_cz = control("z")
            c_zt, g_czt = control("zt")
            g = (fb - c_zt) * g_logp + g_f + g_cz - g_czt
            return g, (fb, aux)

        if not self.learn:
            g, (fb, aux) = estimate(params)
            return fb, g, aux

        def loss(p):
            g, (fb, aux) = estimate(p)
            return jnp.sum(g**2), (g, fb, aux)

        (_, (g, fb, aux)), state_grad = jax.value_and_grad(loss, has_aux=True)(params)
        g, fb = jax.lax.stop_gradient((g, fb))
        return fb, g, aux, state_grad


@pytree_dataclass
class RELAX(REBAR):
    r"""RELAX (Grathwohl et al., 2018): ``c(z) = eta f(sigma_lambda(z)) + r_phi(z)``.

    The REBAR estimate (see :class:`REBAR`) with a learned control variate: ``surrogate(phi,
    z)`` is a user function returning a scalar, differentiable in ``phi`` and ``z``, where
    ``z`` is the flat concatenation (in site order; loop iterations iteration-major,
    branches not taken as zeros) of every Bernoulli element's relaxed variable (``z`` or
    ``z~``). Unbiased for every ``phi``, ``eta``, ``lambda``. With
    ``learn=True`` (default) ``(log lambda, eta, phi)`` are estimator state trained by one
    Adam step per call on ``E[sum_p g_p^2]``; start from :meth:`init`. Cost: as REBAR plus
    the surrogate's evaluations.

    Attributes:
      surrogate: ``r(phi, z) -> scalar`` (static: a hashable callable).
      phi: its initial parameters (any pytree of floating arrays).
    """

    surrogate: Callable[[Any, jax.Array], jax.Array] | None = static_field(default=None)
    phi: Any = None
    name: ClassVar[str] = "relax"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.surrogate is not None and not callable(self.surrogate):
            raise TypeError(
                f"relax: `surrogate` must be a callable r(phi, z), got "
                f"{type(self.surrogate).__name__}"
            )

    def fixed_params(self) -> dict:
        params = super().fixed_params()
        params["phi"] = self.phi
        return params

    def residual(self, params: dict, z: jax.Array) -> jax.Array:
        if self.surrogate is None:
            return jnp.zeros((), z.dtype)
        r = jnp.asarray(self.surrogate(params["phi"], z))
        if r.shape != ():
            raise TypeError(f"relax: `surrogate(phi, z)` must return a scalar, got {r.shape}")
        return r


def rebar(
    temperature: Any = 0.5,
    eta: Any = 1.0,
    *,
    learn: bool = True,
    learning_rate: float = 1e-2,
    check_continuity: bool = True,
) -> REBAR:
    """The REBAR estimator for Bernoulli sites (see :class:`REBAR`)."""
    return REBAR(
        temperature=temperature,
        eta=eta,
        learn=learn,
        learning_rate=learning_rate,
        check_continuity=check_continuity,
    )


def relax(
    surrogate: Callable[[Any, jax.Array], jax.Array],
    phi: Any,
    temperature: Any = 0.5,
    eta: Any = 1.0,
    *,
    learn: bool = True,
    learning_rate: float = 1e-2,
    check_continuity: bool = True,
) -> RELAX:
    """The RELAX estimator with control variate ``eta f(sigma_lambda(z)) + surrogate(phi, z)``
    (see :class:`RELAX`)."""
    return RELAX(
        temperature=temperature,
        eta=eta,
        learn=learn,
        learning_rate=learning_rate,
        check_continuity=check_continuity,
        surrogate=surrogate,
        phi=phi,
    )
