"""Gradient estimators: pathwise, score function, relaxations, finite differences, auto.

Every estimator is a small frozen pytree dataclass: numeric hyper-parameters (temperature,
finite-difference step, constant baseline) are leaves and may be traced, so
``jax.vmap`` over them works; configuration (scheme, flags) is static.

Two kinds exist:

* *site-level* estimators (:func:`pathwise`, :func:`score_function`,
  :func:`gumbel_softmax`, :func:`straight_through`, :func:`auto`) act at each sample site
  and build a surrogate objective whose reverse-mode gradient is the estimate; they may be
  mixed per site with ``je.sample(..., estimator=...)``.
* *whole-program* estimators (:func:`finite_difference`, and
  :func:`jaxestim.stochastic_ad`) re-run the program at perturbed parameters; they take no
  per-site overrides.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxestim import baselines as _baselines
from jaxestim._errors import EstimatorError
from jaxestim._handlers import Handler, mask_value
from jaxestim._util import check_positive, concrete, fold_in_str, pytree_dataclass, static_field
from jaxestim.distributions import Bernoulli, Categorical, Distribution, OneHotCategorical
from jaxestim.distributions._base import as_jax_key

_RELAXABLE = (Bernoulli, Categorical, OneHotCategorical)


class Estimator:
    """Base class of all estimators."""

    site_level: ClassVar[bool] = True
    name: ClassVar[str] = "estimator"

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


def _site_error(est: str, dist: Distribution, why: str, suggest: str) -> EstimatorError:
    return EstimatorError(
        f"{est} cannot handle a {type(dist).__name__} sample site: {why}. Use {suggest}, "
        f"either for the whole program or at this site via "
        f"je.sample(key, dist, estimator=...)."
    )


def _is_index_categorical(dist: Distribution) -> bool:
    """A Categorical with integer values (not OneHotCategorical, which subclasses it)."""
    return isinstance(dist, Categorical) and not isinstance(dist, OneHotCategorical)


def _one_hot_site(dist: Distribution, x: jax.Array) -> jax.Array:
    """Categorical index samples as one-hot vectors (relaxation estimators' convention)."""
    if _is_index_categorical(dist):
        return jax.nn.one_hot(x, dist.num_categories, dtype=dist.probs.dtype)
    return x


# --------------------------------------------------------------------------------------
# site-level estimators
# --------------------------------------------------------------------------------------


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
            raise _site_error(
                "je.pathwise()",
                dist,
                "discrete samples have no reparameterization (the pathwise gradient would "
                "be silently zero)",
                "je.score_function(), je.stochastic_ad(), je.straight_through() or "
                "je.gumbel_softmax() (Bernoulli/Categorical)",
            )
        return dist.rsample(key, sample_shape)


_BASELINE_KINDS = "None, a constant, 'leave_one_out' or je.baselines.MovingAverage(decay)"


@dataclasses.dataclass(frozen=True)
class ScoreFunction(Estimator):
    r"""Score-function (REINFORCE, likelihood-ratio) estimator.

    ``grad E_{x~p(.;theta)}[f(x, theta)] = E[(f(x, theta) - b) grad log p(x; theta)
    + grad_theta f(x, theta)]``: the sample is held fixed (stop-gradient) and the gradient
    flows through its log-probability; any direct dependence of ``f`` on ``theta`` is still
    differentiated pathwise. Implemented as the DiCE surrogate (Foerster et al., 2018)
    ``box(L) f + sum_g (1 - box(log p_g)) b_g`` with ``box(x) = exp(x - stop_grad(x))``
    (value exactly 1), ``L`` the summed log-probability of the sample's score-function sites
    and ``b_g`` the stop-gradient baseline of each group: its value equals ``f``, its
    gradient is ``sum_g (f - b_g) grad log p_g + grad f``, and its derivatives of *every*
    order are unbiased, so ``jax.grad`` / ``jax.hessian`` of a ``je.grad`` (or of the value
    of ``je.value_and_grad``) give unbiased higher derivatives of ``E[f]`` (proof in
    ``jaxestim._transforms._Run.combine``).
    Unbiased for every distribution (discrete or not) and non-differentiable ``f``, but
    high variance that grows with the number of random variables; a baseline ``b``
    (see :mod:`jaxestim.baselines`) reduces it without adding bias. Cost: one forward and
    one backward pass per sample.

    Attributes:
      baseline: None, a constant, ``"leave_one_out"`` (needs ``num_samples >= 2``) or a
        :class:`jaxestim.baselines.MovingAverage` (stateful: pass ``estimator_state``).
    """

    baseline: Any = None
    name: ClassVar[str] = "score_function"

    def __post_init__(self) -> None:
        b = self.baseline
        if b is None or isinstance(b, _baselines.MovingAverage):
            return
        if isinstance(b, str):
            if b != "leave_one_out":
                raise ValueError(
                    f"score_function: unknown `baseline` {b!r}; expected {_BASELINE_KINDS}"
                )
            return
        if hasattr(b, "shape") or isinstance(b, int | float):
            if jnp.shape(b) != ():
                raise ValueError(
                    f"score_function: a constant `baseline` must be a scalar, got shape "
                    f"{jnp.shape(b)}"
                )
            return
        if concrete(b) is None and not isinstance(b, jax.core.Tracer):
            return  # placeholder leaf from a pytree utility
        raise ValueError(f"score_function: invalid `baseline` {b!r}; expected {_BASELINE_KINDS}")

    # A string baseline ("leave_one_out") is static configuration; a constant or a
    # MovingAverage is data (a leaf or sub-pytree), so it may be traced.
    def tree_flatten(self) -> tuple[tuple, Any]:
        if isinstance(self.baseline, str):
            return (), self.baseline
        return (self.baseline,), None

    @classmethod
    def tree_unflatten(cls, aux: Any, children: tuple) -> ScoreFunction:
        return cls(baseline=aux) if aux is not None else cls(baseline=children[0])

    @property
    def has_state(self) -> bool:
        return isinstance(self.baseline, _baselines.MovingAverage)

    def init(self) -> Any:
        return self.baseline.init() if self.has_state else None

    def check(self, num_samples: int) -> None:
        if isinstance(self.baseline, str) and num_samples < 2:
            raise ValueError(
                "score_function(baseline='leave_one_out') needs `num_samples` >= 2, got "
                f"{num_samples}"
            )

    def baseline_value(self, f: jax.Array, total: jax.Array, num_samples: int, state: Any):
        """The baseline for samples with objective values ``f`` (``total``: sum over all N)."""
        b = self.baseline
        if b is None:
            return jnp.zeros_like(f)
        if isinstance(b, str):
            return (total - f) / (num_samples - 1)
        if isinstance(b, _baselines.MovingAverage):
            return jnp.broadcast_to(b.value(state).astype(f.dtype), f.shape)
        return jnp.broadcast_to(jnp.asarray(b, f.dtype), f.shape)

    def process_site(self, ctx, key, dist, sample_shape):
        ctx.check_score_estimator(self)
        x = jax.lax.stop_gradient(dist.sample(key, sample_shape))
        ctx.add_score(self, ctx.site_log_prob(dist, x))
        return x


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
        if not isinstance(dist, _RELAXABLE):
            raise _site_error(
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
        x = jax.lax.stop_gradient(_one_hot_site(dist, dist.sample(key, sample_shape)))
        mean = dist.probs if _is_index_categorical(dist) else dist.mean
        mean = jnp.broadcast_to(mean, x.shape).astype(x.dtype)
        return x + (mean - jax.lax.stop_gradient(mean))


@pytree_dataclass
class Auto(Estimator):
    """Pathwise where the site is reparameterizable, score function elsewhere.

    Discrete sites use the score function with the leave-one-out baseline when
    ``num_samples >= 2`` (no baseline otherwise). All score-function sites of one program
    share one baseline group. Unbiased. This is what ``estimator=None`` means.
    """

    name: ClassVar[str] = "auto"

    def process_site(self, ctx, key, dist, sample_shape):
        if dist.is_reparameterized and not dist.is_discrete:
            return Pathwise().process_site(ctx, key, dist, sample_shape)
        return ctx.auto_score.process_site(ctx, key, dist, sample_shape)


jax.tree_util.register_pytree_node_class(ScoreFunction)


# keys of SurrogateHandler.logp besides the score-function groups 0, 1, ...: the
# support-boundary record (see _transforms._boundary_terms) and the number of elements with
# invalid parameters (_transforms._invalid_count)
BOUNDARY, INVALID = -1, -2


def _nan_derivative_if(bad: jax.Array, x: jax.Array, dist: Distribution) -> jax.Array:
    """``x`` unchanged in value, with a NaN derivative in every parameter of ``dist`` if
    ``bad`` (``param * 0`` has derivative 0, ``param * nan`` NaN; no ``where`` trap)."""
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        return x
    factor = jnp.where(bad, jnp.nan, 0.0)
    leaves = [v for v in jax.tree_util.tree_leaves(dist) if jnp.issubdtype(v.dtype, jnp.inexact)]
    term = sum(jnp.sum(v) for v in leaves) * factor
    return x + (term - jax.lax.stop_gradient(term)).astype(x.dtype)


class SurrogateHandler(Handler):
    """Handler for site-level estimators: runs sites, collects score-function log-probs.

    ``groups`` (shared with loop and branch children) lists the distinct score-function
    estimators met; ``logp[i]`` is the summed log-probability of this sample's sites in
    group ``i``. ``shared`` is created per trace of the program (:meth:`new_shared`).
    """

    recording = True

    def __init__(self, estimator: Estimator, num_samples: int, shared: dict | None = None):
        super().__init__()
        self.estimator = estimator
        self.name = estimator.name
        self.num_samples = num_samples
        self.shared = self.new_shared(num_samples) if shared is None else shared
        self.logp: dict[int, jax.Array] = {}
        self._mask: jax.Array | None = None

    @staticmethod
    def new_shared(num_samples: int) -> dict:
        """State shared by one program trace and its loop and branch children."""
        auto_baseline = "leave_one_out" if num_samples >= 2 else None
        return {"groups": [], "auto_score": ScoreFunction(baseline=auto_baseline)}

    @property
    def groups(self) -> list[ScoreFunction]:
        return self.shared["groups"]

    @property
    def auto_score(self) -> ScoreFunction:
        return self.shared["auto_score"]

    def sample(self, key, dist, sample_shape, estimator, mask):
        est = self.estimator if estimator is None else estimator
        if not est.site_level:
            raise EstimatorError(
                f"je.{est.name}() is a whole-program estimator and cannot be chosen for a "
                f"single site; per-site overrides must be je.pathwise(), "
                f"je.score_function(), je.gumbel_softmax(), je.straight_through() or "
                f"je.auto()"
            )
        self._mask = mask
        try:
            x = est.process_site(self, key, dist, sample_shape)
        finally:
            self._mask = None
        invalid = jnp.logical_not(dist._params_valid())
        if mask is not None:
            invalid = mask & invalid
        if self.in_own_trace():
            self._add(INVALID, jnp.sum(invalid).astype(jnp.result_type(float)))
        else:  # inside plain lax control flow: nothing may leave, so poison the derivative
            x = _nan_derivative_if(jnp.any(invalid), x, dist)
        return mask_value(x, mask)

    def site_log_prob(self, dist: Distribution, x: jax.Array) -> jax.Array:
        """The summed log-probability of a site's draws ``x``, without masked-out draws.

        Also records the site's support-boundary terms (see ``_transforms._boundary_terms``):
        the score function is biased where the support changes with the parameters.
        """
        lp = dist._sampled_log_prob(x)
        if self._mask is not None:
            lp = jnp.where(self._mask, lp, 0.0)
        sb = dist._support_boundary()
        if sb is not None:
            q, _, at = sb
            site = self.shared["sites"] = self.shared.get("sites", 0) + 1
            w = 1.0 + 0.5 * jnp.sin(1.7 * jnp.arange(q.shape[0], dtype=q.dtype) + 2.3 * site)
            # one record: its value counts the elements on a boundary, its gradient is that
            # of sum_e w_e q_e (zero unless a boundary parameter moves with theta)
            moving = jnp.sum(w * (q - jax.lax.stop_gradient(q)))
            self._add(BOUNDARY, jnp.sum(at).astype(q.dtype) + moving)
        return jnp.sum(lp)

    def check_score_estimator(self, est: ScoreFunction) -> None:
        if est.has_state and est is not self.estimator:
            raise EstimatorError(
                "a score_function with a stateful MovingAverage baseline can only be the "
                "transform's estimator (its state is threaded through estimator_state=); "
                "use a constant or 'leave_one_out' baseline for a per-site override"
            )
        est.check(self.num_samples)

    def add_score(self, est: ScoreFunction, logp: jax.Array) -> None:
        self.check_recording_site(f"a je.{est.name}() sample site (it records log p)")
        self._add(self._group(est), logp)

    def _group(self, est: ScoreFunction) -> int:
        i = next((j for j, g in enumerate(self.groups) if g is est), None)
        if i is None:
            self.groups.append(est)
            i = len(self.groups) - 1
        return i

    def _add(self, i: int, logp: jax.Array) -> None:
        self.logp[i] = self.logp[i] + logp if i in self.logp else logp

    # loops: per-iteration log-probs are stacked and summed
    def loop_child(self, state):
        return SurrogateHandler(self.estimator, self.num_samples, self.shared)

    def loop_outputs(self):
        return None, dict(self.logp)

    def absorb_loop(self, state, stacked, child, length):
        for i, v in stacked.items():
            self._add(i, jnp.sum(v, axis=0))

    # branches: the union of the groups any branch records, 0 where a branch records none
    def branch_child(self, state, index, layout):
        return self.loop_child(state)

    def branch_layout(self, children):
        layout: dict[int, Any] = {}
        for c in children:
            for i, v in c.probe_shapes.items():
                layout[i] = jnp.result_type(layout.get(i, v.dtype), v.dtype)
        return dict(sorted(layout.items()))

    def branch_outputs(self, layout):
        return None, {
            i: jnp.asarray(self.logp[i], dt) if i in self.logp else jnp.zeros((), dt)
            for i, dt in layout.items()
        }

    def absorb_branches(self, state, records, layout):
        for i, v in records.items():
            self._add(i, v)


# --------------------------------------------------------------------------------------
# whole-program estimators
# --------------------------------------------------------------------------------------


class WholeProgramHandler(Handler):
    """Plain sampling at every site; rejects per-site overrides. One handler per program run."""

    needs_bounded_loops = False

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def sample(self, key, dist, sample_shape, estimator, mask):
        if estimator is not None:
            raise EstimatorError(
                f"je.{self.name}() is a whole-program estimator: sites take no per-site "
                f"`estimator` override (got je.{estimator.name}())"
            )
        return dist.sample(key, sample_shape)


_SCHEMES = ("central", "forward", "backward")


@pytree_dataclass
class FiniteDifference(Estimator):
    r"""Finite differences of the program, optionally with common random numbers.

    For a direction ``v`` and step ``h`` the directional derivative is estimated by
    ``(f(theta + h v; key) - f(theta - h v; key)) / (2h)`` (``"central"``, bias
    ``O(h^2)``) or the one-sided ``"forward"``/``"backward"`` schemes (bias ``O(h)``).
    With ``common_random_numbers=True`` every evaluation reuses the same key, so the
    randomness largely cancels (discrete samplers are inverse-CDF coupled): for programs
    continuous in ``theta`` the variance stays bounded as ``h -> 0``; for discrete programs
    the difference is non-zero only when a uniform falls in a window of width ``O(h)``, where
    it is ``O(1/h)``, so the variance grows like ``1/h``. With independent keys the variance
    grows like ``1/h^2`` in both cases.
    ``directions="coordinates"`` perturbs each of the ``P`` parameters (``2P`` program
    runs for central differences); ``directions="spsa"`` uses ``num_directions`` random
    Rademacher vectors ``v`` and returns ``mean_d v_d * D_{v_d} f`` (Spall's SPSA),
    unbiased up to the scheme's ``O(h)``/``O(h^2)`` bias since ``E[v v^T] = I``.
    Works for any program (discrete, non-differentiable), needs no autodiff, is biased,
    and costs ``O(P)`` or ``O(num_directions)`` program runs per sample.
    """

    step: Any = 1e-2
    scheme: str = static_field(default="central")
    common_random_numbers: bool = static_field(default=True)
    directions: str = static_field(default="coordinates")
    num_directions: int | None = static_field(default=None)
    site_level: ClassVar[bool] = False
    name: ClassVar[str] = "finite_difference"

    @property
    def differences_only(self) -> bool:
        return self.scheme == "central"

    def __post_init__(self) -> None:
        check_positive("finite_difference", "step", self.step)
        if self.scheme not in _SCHEMES:
            raise ValueError(
                f"finite_difference: unknown `scheme` {self.scheme!r}; expected one of {_SCHEMES}"
            )
        check_directions("finite_difference", self.directions, "spsa", self.num_directions)

    def per_sample(self, call, key, theta):
        """``(value, gradient estimate, aux)`` for one sample; ``call(key, theta_flat)``."""
        h = jnp.asarray(self.step, theta.dtype)
        dirs = direction_matrix(
            theta, self.num_directions, fold_in_str(key, "spsa"), jax.random.rademacher
        )
        n = dirs.shape[0]

        def prog(k: jax.Array, th: jax.Array) -> tuple[jax.Array, Any]:
            with WholeProgramHandler(self.name):
                return call(k, th)

        if self.common_random_numbers:
            # Common random numbers: the key is closed over, not batched, so under jax.vmap
            # every random draw (a function of the key alone) stays unbatched: its bits are
            # generated once and shared by all perturbed runs instead of once per run. All
            # runs of a difference (the unperturbed one for one-sided schemes) share one
            # vmap, so they compile to the same arithmetic and f(theta + h v) - f(theta)
            # is exactly 0 where nothing changes.
            if self.scheme == "central":
                vals = jax.vmap(lambda s: prog(key, theta + s)[0])(
                    jnp.concatenate([h * dirs, -h * dirs])
                )
                f0, aux = prog(key, theta)
                d = (vals[:n] - vals[n:]) / (2 * h)
            else:
                sign = 1.0 if self.scheme == "forward" else -1.0
                steps = jnp.concatenate([jnp.zeros_like(dirs[:1]), sign * h * dirs])
                vals, auxs = jax.vmap(lambda s: prog(key, theta + s))(steps)
                f0, aux = vals[0], jax.tree_util.tree_map(lambda a: a[0], auxs)
                d = sign * (vals[1:] - f0) / h
            return f0, gradient_from_directional(d, dirs, self.num_directions), aux

        f0, aux = prog(key, theta)

        def run(sign: float, offset: int) -> jax.Array:
            keys = jax.vmap(lambda j: jax.random.fold_in(key, j))(jnp.arange(n) + offset)
            return jax.vmap(lambda k, v: prog(k, theta + sign * h * v)[0])(keys, dirs)

        if self.scheme == "central":
            d = (run(1.0, 1) - run(-1.0, 1 + n)) / (2 * h)
        elif self.scheme == "forward":
            d = (run(1.0, 1) - f0) / h
        else:
            d = (f0 - run(-1.0, 1)) / h
        return f0, gradient_from_directional(d, dirs, self.num_directions), aux


def check_directions(owner: str, directions: str, random_kind: str, num: Any) -> None:
    """Validate ``directions`` ("coordinates" or ``random_kind``) and ``num_directions``."""
    allowed = ("coordinates", random_kind)
    if not isinstance(directions, str):
        raise TypeError(
            f"{owner}: `directions` must be one of the strings {allowed}, got a "
            f"{type(directions).__name__} (explicit direction matrices are not supported; "
            f"use directions={random_kind!r} with num_directions=...)"
        )
    if directions not in allowed:
        raise ValueError(f"{owner}: unknown `directions` {directions!r}; expected one of {allowed}")
    if directions == random_kind:
        if not isinstance(num, int) or isinstance(num, bool) or num < 1:
            raise ValueError(
                f"{owner}: directions={random_kind!r} needs `num_directions` to be a positive "
                f"int, got {num!r}"
            )
    elif num is not None:
        raise ValueError(
            f"{owner}: `num_directions` is only used with directions={random_kind!r}; got "
            f"num_directions={num!r} with directions={directions!r}"
        )


def direction_matrix(theta: jax.Array, num: int | None, key: jax.Array, draw: Any) -> jax.Array:
    """Rows are the probe directions: the basis (``num`` None) or ``draw(key, (num, P))``.

    Random directions must satisfy ``E[v v^T] = I`` (Rademacher, standard Gaussian), so that
    :func:`gradient_from_directional` is unbiased.
    """
    if num is None:
        return jnp.eye(theta.size, dtype=theta.dtype)
    return draw(key, (num, theta.size), theta.dtype)


def gradient_from_directional(d: jax.Array, dirs: jax.Array, num: int | None) -> jax.Array:
    """The gradient from directional derivatives ``d_i = <grad, v_i>``: ``d`` itself for the
    basis, else ``mean_i d_i v_i``."""
    return d if num is None else dirs.T @ d / dirs.shape[0]


# --------------------------------------------------------------------------------------
# constructors (the public names)
# --------------------------------------------------------------------------------------


def pathwise() -> Pathwise:
    """The pathwise / reparameterization estimator (see :class:`Pathwise`)."""
    return Pathwise()


def score_function(baseline: Any = None) -> ScoreFunction:
    """The score-function / REINFORCE estimator with an optional baseline.

    See :class:`ScoreFunction` and :mod:`jaxestim.baselines`.
    """
    return ScoreFunction(baseline=baseline)


reinforce = score_function


def gumbel_softmax(temperature: Any = 1.0, hard: bool = False) -> GumbelSoftmax:
    """The Gumbel-softmax / Concrete relaxation (see :class:`GumbelSoftmax`)."""
    return GumbelSoftmax(temperature=temperature, hard=hard)


def straight_through() -> StraightThrough:
    """The straight-through estimator (see :class:`StraightThrough`)."""
    return StraightThrough()


def finite_difference(
    step: Any = 1e-2,
    scheme: str = "central",
    common_random_numbers: bool = True,
    directions: str = "coordinates",
    num_directions: int | None = None,
) -> FiniteDifference:
    """Finite differences with optional common random numbers (see :class:`FiniteDifference`)."""
    return FiniteDifference(
        step=step,
        scheme=scheme,
        common_random_numbers=common_random_numbers,
        directions=directions,
        num_directions=num_directions,
    )


def auto() -> Auto:
    """Pathwise where reparameterizable, score function elsewhere (see :class:`Auto`)."""
    return Auto()


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
