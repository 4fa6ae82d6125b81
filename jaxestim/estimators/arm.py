r"""Antithetic augment-REINFORCE-merge estimators for Bernoulli sites: DisARM and ARM.

Yin & Zhou (2019), "ARM: Augment-REINFORCE-Merge Gradient for Stochastic Binary Networks",
ICLR (arXiv:1807.11143); Dong, Mnih & Tucker (2020), "DisARM: An Antithetic Gradient
Estimator for Binary Latent Variables", NeurIPS (arXiv:2006.10680).

Coupling. Every Bernoulli element with logit ``alpha`` (``p = sigma(alpha)``) is sampled by
inversion from one uniform ``u`` drawn from the site's key (``Bernoulli.uniforms``):
``b = 1[u > sigma(-alpha)] = 1[1 - u < sigma(alpha)]``. The *antithetic* draw uses ``1 - u``:
``b~ = 1[u < sigma(alpha)]``. Both are exact Bernoulli(``p``) draws; jointly, per element,
``P(b = b~ = 1) = max(0, 2p - 1)``, ``P(1, 0) = P(0, 1) = min(p, 1 - p)``,
``P(b = b~ = 0) = max(0, 1 - 2p)``.

Estimators, per element ``i`` of the vector of all Bernoulli elements of the program (the
multivariate form of both papers: one antithetic pair of *whole program* evaluations
``f(b)``, ``f(b~)`` serves every element at once; ``b`` and ``b~`` are the full vectors):

* DisARM: ``g_i = 1/2 (f(b) - f(b~)) (-1)^{b~_i} 1[b_i != b~_i] sigma(|alpha_i|)``
  ``= 1/2 (f(b) - f(b~)) (b_i - b~_i) sigma(|alpha_i|)``. It is ARM with the augmenting
  uniform integrated out analytically given ``(b, b~)`` (Rao-Blackwellized), so its variance
  is never above ARM's; for one Bernoulli and ``f(x) = (x - c)^2`` at ``p = 1/2`` it is
  exactly zero (``b~ = 1 - b``).
* ARM: ``g_i = (f(b) - f(b~)) (u_i - 1/2)``, Yin & Zhou's
  ``(f(1[u > sigma(-alpha)]) - f(1[u < sigma(alpha)])) (u - 1/2)``.

Both are unbiased for ``d E[f] / d alpha_i`` when the elements are independent given the
parameters. The gradient in the parameters ``theta`` follows by the chain rule through the
logits, plus the pathwise part of ``f``'s direct dependence on ``theta`` and of continuous
(reparameterized) sites, which use the same noise in both runs, averaged over the pair with
the discrete values held fixed (both runs are marginally exact samples)::

    grad = sum_i g_i grad alpha_i(theta) + 1/2 (grad f(b; theta) + grad f(b~; theta)),

computed as one vector-Jacobian product of ``(f(b), f(b~), alpha)`` with cotangent
``(1/2, 1/2, stop_grad(g))``. Cost per sample: two program evaluations and one reverse pass
(through both), independent of the number of parameters or Bernoulli elements. Under
``je.grad`` / ``je.value_and_grad`` the samples of a chunk share one reverse pass (no
per-sample gradient is formed). The value returned per sample is the antithetic mean
``(f(b) + f(b~)) / 2``; ``aux`` is the first run's.

Validity (checked at trace time). The multivariate estimators are unbiased only when no
Bernoulli site's logits depend on another Bernoulli site's *sample* (independent sites given
``theta``: a VAE's latent layer, a ``je.scan`` whose step probabilities do not depend on
earlier draws). Logits may depend on continuous samples (pathwise through them), and
continuous sites' parameters may depend on Bernoulli draws. The first run is traced once
into a jaxpr in which every Bernoulli sample is ``b + t`` for an extra input ``t = 0``; a
forward dependence analysis of that jaxpr (JAX's partial evaluation with ``t`` unknown,
which follows loop carries to a fixed point and branch indices) tells whether any recorded
logits (or mask) depend on ``t``: then :class:`jaxestim.EstimatorError` names
``je.score_function("leave_one_out")`` and ``je.stochastic_ad()``. The analysis is
structural, so it also rejects a ``je.cond`` / ``je.while_loop`` whose predicate depends on
a Bernoulli draw and whose branches contain Bernoulli sites (which sites run would depend on
a draw), and a value multiplied by zero still counts as a dependence. A draw that decides
only the predicate of a ``je.cond`` / ``je.while_loop`` without Bernoulli sites in its
branches or body is no dependence (such a cond records nothing, and empty records are left
out of the record vectors, see :mod:`jaxestim.estimators._records`): the Bernoulli sites
stay independent given ``theta``, and the estimate is unbiased.

Other discrete sites (Categorical, Binomial, Poisson, Geometric, ...) raise
:class:`jaxestim.EstimatorError`: the categorical extension (ARSM, Yin, Yue & Zhou 2019) is
not implemented. Per-site ``estimator=`` overrides are not supported (whole-program
estimator). ``mask=False`` elements are not flipped in the antithetic run and contribute no
term. A ``probs`` parameter at 0 or 1 that depends on ``theta`` gives a NaN gradient (the
pair never differs there, so the estimate would silently miss ``d p``), as for the score
function. Higher derivatives of the estimate raise :class:`jaxestim.EstimatorError`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from jax._src.interpreters import partial_eval as _pe
from jax.extend.core import ClosedJaxpr, jaxpr_as_fun

from jaxestim._errors import EstimatorError
from jaxestim._estimator import Estimator
from jaxestim._handlers import mask_value, reject_override
from jaxestim._util import pytree_dataclass
from jaxestim.distributions import Bernoulli
from jaxestim.estimators._records import FlatRecordHandler

# per Bernoulli element: logit, first-run value, antithetic value, uniform, mask (0/1);
# per boundary parameter: the parameter (differentiable where on a boundary), at-boundary
_ELEMENT_FIELDS = ("a", "b", "bt", "u", "m")
_BOUNDARY_FIELDS = ("q", "at")
_FIELDS = _ELEMENT_FIELDS + _BOUNDARY_FIELDS

_ALTERNATIVES = (
    'je.score_function("leave_one_out") (any site) or je.stochastic_ad() (Bernoulli, '
    "Binomial, Geometric, Poisson, Categorical)"
)


def _flat(x: jax.Array, dtype: Any) -> jax.Array:
    return jnp.reshape(x, (-1,)).astype(dtype)


class _PairHandler(FlatRecordHandler):
    """One run of the antithetic pair.

    Bernoulli sites return ``b = icdf(u)`` (first run) or ``b~ = 1[u < p]`` (``flip``,
    second run) and record the element fields (both runs record, so loops and branches have
    the same layout; only the first run's records are used). Continuous sites are
    reparameterized with the site's noise. ``taint`` (a scalar 0, or None) is added to every
    Bernoulli sample in the traced first run for the dependence analysis.
    """

    fields = _FIELDS

    def __init__(self, name: str, flip: bool, dtype: Any, taint: Any = None) -> None:
        super().__init__(dtype)
        self.name, self.flip, self.taint = name, flip, taint

    def _new(self) -> _PairHandler:
        return _PairHandler(self.name, self.flip, self.dtype, self.taint)

    def sample(self, key, dist, sample_shape, estimator, mask):
        reject_override(self.name, estimator)
        if not dist.is_discrete:
            return mask_value(dist.rsample(key, sample_shape), mask)
        if not isinstance(dist, Bernoulli):
            raise EstimatorError(
                f"je.{self.name}() supports only Bernoulli discrete sites (and continuous "
                f"sites, pathwise), not {type(dist).__name__}; its categorical extension "
                f"(ARSM) is not implemented. Use {_ALTERNATIVES} for this program."
            )
        self.check_recording_site(f"a Bernoulli sample site under je.{self.name}()")
        u = dist.uniforms(key, sample_shape)
        frozen = jax.tree_util.tree_map(jax.lax.stop_gradient, dist)
        b = frozen.icdf(u)
        # 1[u < p], computed like icdf (exact comparisons on either half of (0, 1))
        bt = jnp.where(u <= 0.5, u < frozen.probs, (1 - u) > frozen._f0())
        bt = frozen._poison(bt.astype(b.dtype))
        full = b.shape
        m = jnp.ones(full, bool) if mask is None else mask
        bt = jnp.where(m, bt, b)
        value = bt if self.flip else b
        if self.taint is not None:
            value = value + self.taint.astype(value.dtype)
        rec = {
            "a": _flat(jnp.broadcast_to(dist.logits, full), self.dtype),
            "b": _flat(b, self.dtype),
            "bt": _flat(bt, self.dtype),
            "u": _flat(u, self.dtype),
            "m": _flat(m, self.dtype),
        }
        sb = dist._support_boundary()
        if sb is None:
            rec["q"] = rec["at"] = jnp.zeros((0,), self.dtype)
        else:
            q, _, at = sb
            active = jnp.any(jnp.reshape(m, (-1, *dist.batch_shape)), axis=0).reshape(-1)
            at = at & active
            rec["q"] = jnp.where(at, q, jax.lax.stop_gradient(q)).astype(self.dtype)
            rec["at"] = at.astype(self.dtype)
        self.records.append(rec)
        return value


def _depends_on_taint(closed: Any, num_checked: int) -> bool:
    """Whether any of the first ``num_checked`` outputs of ``closed`` (a ClosedJaxpr whose
    last input is the taint) depends on its last input.

    Forward dependence by partial evaluation with only the taint unknown (the constants are
    made inputs first, so no outer tracer enters the analysis); should a primitive lack a
    partial-evaluation rule, backward dead-code elimination answers instead (it is more
    conservative: an effect such as ``jax.debug.print`` keeps its inputs alive).
    """
    jaxpr = _pe.convert_constvars_jaxpr(closed.jaxpr)
    n_in = len(jaxpr.invars)
    if num_checked == 0:
        return False
    try:
        unknowns = [False] * (n_in - 1) + [True]
        _, _, out_unknowns, _ = _pe.partial_eval_jaxpr_nounits(
            ClosedJaxpr(jaxpr, ()), unknowns, False
        )
        return any(out_unknowns[:num_checked])
    except Exception:  # pragma: no cover - depends on the primitives in the program
        used = [True] * num_checked + [False] * (len(jaxpr.outvars) - num_checked)
        _, used_inputs = _pe.dce_jaxpr(jaxpr, used)
        return bool(used_inputs[-1])


class _FirstRun:
    """The first run of the pair, traced once per abstract signature into a jaxpr (which
    the dependence analysis reads) and evaluated from it."""

    def __init__(self, name: str, call: Any, dtype: Any) -> None:
        self.name, self.call, self.dtype = name, call, dtype
        self.traced: dict[Any, Any] = {}

    def _prog(self, k, th, taint):
        h = _PairHandler(self.name, False, self.dtype, taint)
        with h:
            f, aux = self.call(k, th)
        rec = h.collect()
        return (rec["a"], rec["m"]), (f, aux, rec)

    def __call__(self, k, th):
        taint = jnp.zeros((), self.dtype)
        sig = (jax.typeof(k), jax.typeof(th))
        if sig not in self.traced:
            closed, shapes = jax.make_jaxpr(self._prog, return_shape=True)(k, th, taint)
            if _depends_on_taint(closed, 2):
                raise EstimatorError(
                    f"je.{self.name}(): the logits (or mask) of a Bernoulli site depend on "
                    "an earlier Bernoulli draw (directly, through the loop carry, or through "
                    "a je.cond / je.while_loop whose predicate depends on a draw and which "
                    "decides which Bernoulli sites run). The multivariate DisARM/ARM "
                    "estimator is unbiased only for Bernoulli sites that are independent "
                    "given the parameters (e.g. a VAE's latent layer, or a je.scan whose "
                    "step probabilities do not depend on earlier draws); here it would be "
                    f"biased. Use {_ALTERNATIVES} for this program."
                )
            self.traced[sig] = (jaxpr_as_fun(closed), jax.tree_util.tree_structure(shapes))
        fn, tree = self.traced[sig]
        out = jax.tree_util.tree_unflatten(tree, fn(*jax.tree_util.tree_leaves((k, th, taint))))
        return out[1]


def _mix(n: int, dtype: Any) -> jax.Array:
    """Fixed, distinct coefficients in [0.5, 2.5) (the boundary check's weights)."""
    return (1.5 + jnp.sin(jnp.arange(n, dtype=jnp.float32) * 0.7548777)).astype(dtype)


def _estimate(est: _AntitheticBernoulli, call, keys, theta, batched: bool, cache: dict):
    """``(value, gradient, aux)`` of one sample (``keys`` one key), or with ``batched`` of
    stacked ``keys``: their values and the *sum* of their gradients from one reverse pass."""
    dtype = jnp.result_type(float)
    first = cache.get("first")
    if first is None:
        first = cache["first"] = _FirstRun(est.name, call, dtype)

    def second(k, th):
        with _PairHandler(est.name, True, dtype):
            return call(k, th)[0]

    def both(th):
        if batched:
            fa, aux, rec = jax.vmap(first, in_axes=(0, None))(keys, th)
            fb = jax.vmap(second, in_axes=(0, None))(keys, th)
        else:
            fa, aux, rec = first(keys, th)
            fb = second(keys, th)
        rest = {f: rec[f] for f in ("b", "bt", "u", "m", "at")}
        return (fa, fb, rec["a"], rec["q"]), (aux, rest)

    (fa, fb, a, q), vjp_fn, (aux, r) = jax.vjp(both, theta, has_aux=True)
    diff = (fa - fb)[..., None] if batched else fa - fb
    if est.name == "disarm":
        c = 0.5 * diff * (r["b"] - r["bt"]) * jax.nn.sigmoid(jnp.abs(a))
    else:
        c = diff * (r["u"] - 0.5)
    c = jnp.where(r["m"] > 0, c, 0.0).astype(a.dtype)
    half = jnp.full_like(fa, 0.5)
    (g,) = vjp_fn((half, half, c, jnp.zeros_like(q)))
    if q.size:
        # a probs parameter at 0 or 1 that moves with theta: the pair never differs there,
        # so the estimate would miss its derivative -> NaN. One more reverse pass, only
        # when some element sits on a boundary.
        weights = _mix(q.size, q.dtype).reshape(q.shape)

        def moved() -> jax.Array:
            (gb,) = vjp_fn((jnp.zeros_like(fa), jnp.zeros_like(fb), jnp.zeros_like(a), weights))
            return jnp.any(gb != 0)

        bad = jax.lax.cond(jnp.any(r["at"] > 0), moved, lambda: jnp.asarray(False))
        g = jnp.where(bad, jnp.asarray(jnp.nan, g.dtype), g)
    return 0.5 * (fa + fb), g, aux


class _AntitheticBernoulli(Estimator):
    """Shared machinery of :class:`DisARM` and :class:`ARM` (whole-program estimators)."""

    site_level: ClassVar[bool] = False

    @property
    def sums_batch(self) -> bool:
        """Under ``je.grad`` a chunk's gradients are summed by one reverse pass."""
        return True

    def per_batch(self, call, keys, theta, cache):
        """``(values, sum of gradient estimates, aux)`` over stacked ``keys``."""
        return _estimate(self, call, keys, theta, True, cache)

    def per_sample(self, call, key, theta):
        """``(value, gradient estimate, aux)`` for one sample; ``call(key, theta_flat)``."""
        return _estimate(self, call, key, theta, False, {})


@pytree_dataclass
class DisARM(_AntitheticBernoulli):
    r"""DisARM (Dong, Mnih & Tucker, 2020): antithetic pairs for Bernoulli sites.

    With ``u`` the site's coupling uniform, ``b = 1[1 - u < sigma(alpha)]`` (first run) and
    ``b~ = 1[u < sigma(alpha)]`` (second run, uniforms ``1 - u``), per Bernoulli element::

        g_alpha = 1/2 (f(b) - f(b~)) (-1)^{b~} 1[b != b~] sigma(|alpha|),

    where ``b``, ``b~`` are the vectors of *all* the program's Bernoulli elements (one pair
    of program runs for all of them). The gradient in ``theta`` is the chain rule through the
    logits plus the pathwise gradient of ``f`` averaged over the pair (continuous sites
    reparameterized with common noise). See :mod:`jaxestim.estimators.arm` for the
    derivation and the validity check.

    Bias / variance: unbiased when no Bernoulli site's logits depend on another Bernoulli
    draw (checked at trace time: :class:`jaxestim.EstimatorError` otherwise). Variance never
    above ARM's (it is ARM Rao-Blackwellized over the uniform given the pair); zero for one
    Bernoulli with ``f(x) = (x - c)^2`` at ``p = 1/2``; on Kool et al.'s toy (three
    Bernoullis with logits 0, cost ``sum (x_i - t_i)^2``, ``t = (0.6, 0.51, 0.48)``) the exact
    per-sample variance of the gradient in the logits is (0.000125, 0.0026, 0.002525), sum
    0.00525, vs (0.001, 0.003475, 0.0034), sum 0.007875, for ARM and 0.002625 per coordinate,
    sum 0.007875, for the leave-one-out score function with 2 samples (equal evaluations);
    computed by enumerating the pair law in ``tests/test_arm.py``, which checks the
    estimators' empirical variances against them.

    Cost per sample: two program evaluations and one reverse pass (through both runs),
    independent of the number of parameters and Bernoulli elements.

    Supported sites: Bernoulli; continuous sites pathwise. Other discrete sites raise
    :class:`jaxestim.EstimatorError` (the categorical extension ARSM is not implemented).
    """

    name: ClassVar[str] = "disarm"


@pytree_dataclass
class ARM(_AntitheticBernoulli):
    r"""ARM (Yin & Zhou, 2019): augment-REINFORCE-merge for Bernoulli sites.

    With ``u`` the site's coupling uniform, per Bernoulli element::

        g_alpha = (f(1[u > sigma(-alpha)]) - f(1[u < sigma(alpha)])) (u - 1/2),

    the two arguments being the first run's sample ``b`` (uniform ``u``) and the antithetic
    run's ``b~`` (uniform ``1 - u``), vectors over *all* the program's Bernoulli elements
    (one pair of program runs for all of them). The gradient in ``theta`` is the chain rule
    through the logits plus the pathwise gradient of ``f`` averaged over the pair.

    Bias / variance: unbiased under the same independence condition as :class:`DisARM`
    (checked at trace time); its variance is at least DisARM's (DisARM integrates the
    ``u - 1/2`` factor out given ``(b, b~)``): its factor is non-zero also for elements with
    ``b_i = b~_i``, whose DisARM terms vanish. Kept for comparison.

    Cost per sample: two program evaluations and one reverse pass.
    """

    name: ClassVar[str] = "arm"


def disarm() -> DisARM:
    """DisARM: antithetic Bernoulli gradients from two program runs (see :class:`DisARM`)."""
    return DisARM()


def arm() -> ARM:
    """ARM: augment-REINFORCE-merge Bernoulli gradients (see :class:`ARM`)."""
    return ARM()
