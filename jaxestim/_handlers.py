"""Sample sites, the effect handlers that intercept them, and control flow with sites.

A stochastic program draws randomness only through :func:`sample`. With no estimator
transform active, a site simply samples. Inside a transform such as :func:`jaxestim.grad`,
the innermost active :class:`Handler` decides what the site returns (a reparameterized
sample, a relaxed sample, a stop-gradient sample whose log-probability is recorded, ...)
and what it records. Handlers are pushed only for the dynamic extent of the transform's
own tracing of the program, so no state survives a transform or leaks across ``jax.jit``
(the same pattern as numpyro's effect handlers).

Control flow. Recorded quantities (log-probabilities, jump rates) produced inside a
``jax.lax`` body would escape the body's trace. jaxestim's own control flow carries them
out explicitly:

* :func:`scan` / :func:`fori_loop` run the body under a child handler whose per-iteration
  records leave the loop as stacked scan outputs, so a long simulation compiles as one loop.
* :func:`cond` / :func:`switch` trace every branch under a child handler and give all
  branches one common record layout (the union of what each branch records, zero -- "did
  not happen" -- in the branches not taken), so the score function sees the log-probability
  of the branch actually taken and the StochasticAD estimator's replay may take another
  branch than the recorded run.
* :func:`while_loop` is a :func:`scan` over ``max_iterations`` steps whose body is
  ``cond(cond_fun(x), body_fun, identity)``: iterations after the loop has stopped record
  nothing and do not change the carry.
* Bulk randomness: ``scan(body, init, xs, key=key)`` (likewise :func:`fori_loop`,
  :func:`while_loop`) draws every iteration's random words before the loop from one key
  (one threefry hash per two words, a pure function of ``(key, iteration, position)``) and
  hands the body a :class:`LoopKey` per iteration, so a simulation does not split and hash
  a key per step. Same key, same draws, under every estimator.
* Memory: ``checkpoint=True`` (or a ``jax.checkpoint_policies`` policy) recomputes each
  iteration in the backward pass; ``checkpoint_every=k`` runs ``T / k`` checkpointed
  segments of ``k`` steps (``k ~ sqrt(T)``: memory ``O(sqrt(T))`` for one extra forward
  pass). Only reverse-mode estimators (pathwise, score function, relaxations, reverse
  ``stochastic_ad``) store per-iteration residuals; forward-mode ``stochastic_ad`` and
  finite differences are flat in ``T`` without it.

A site whose estimator records and which runs inside *plain* JAX control flow or a
transformation inside the program (``jax.lax.cond``, ``while_loop``, ``scan``, an inner
``jax.vmap``, ``jax.jit`` or ``jax.checkpoint``) is detected at trace time -- the current
JAX trace is not the one the handler was entered in -- and raises :class:`EstimatorError`
naming the jaxestim replacement.

Keys. A PRNG key may reach at most one sample site per trace of the program, and a site
inside a loop body must use a key that varies with the iteration (split in the carry,
passed as ``xs``, or folded with the iteration index; a key the body computes only from
keys outside the loop, such as ``jax.random.split(outer_key)[0]``, and carry keys that the
body returns unchanged, does not: checked once the body has returned). Reusing a
key makes two draws identical, which every estimator but the pathwise one then treats as
independent -- a silently wrong gradient -- so both are :class:`EstimatorError` at trace
time, under every estimator (pathwise included, for one rule). A key is reused when it is
the key of an earlier site or is *computed by the same operations from the same inputs*,
e.g. ``jax.random.split(key)[0]`` written twice, ``jax.random.fold_in(key, i)`` twice in
one loop body, or ``k.split(2)[0]`` twice for a :class:`LoopKey` (the check numbers the
equations that produced each key, :mod:`jaxestim._keys`: trace time only, linear in the
size of the key computations; ``jax.random.fold_in(key, i)`` with a constant ``i`` and
``jax.random.split(key, n)[i]`` are one key for threefry keys in JAX's partitionable mode,
where they are bit-equal). Keys that are equal for another reason are not detected:
separate arguments of the program holding equal keys, other operations that happen to give
the same key, inner keys of a nested loop that repeat in every outer iteration. Sites in
different branches of one :func:`cond` may share a key (only one of them runs); a
:func:`cond` passes its operands to the branches and an output computed alike by every
branch out as the same values.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from jax._src import core as _jax_core
from jax.extend.random import threefry_2x32 as _threefry_2x32

from jaxestim import _validation
from jaxestim._errors import EstimatorError
from jaxestim._estimator import Estimator
from jaxestim._keys import ValueNumbering
from jaxestim._util import check_key, concrete
from jaxestim.distributions import Distribution, _foreign
from jaxestim.distributions._base import RandomStream, _canonical_sample_shape

_LOCAL = threading.local()


def _stack() -> list[Handler]:
    if not hasattr(_LOCAL, "stack"):
        _LOCAL.stack = []
    return _LOCAL.stack


def current_handler() -> Handler | None:
    """The innermost active handler, or ``None`` outside every estimator transform."""
    stack = _stack()
    return stack[-1] if stack else None


def _current_trace() -> Any:
    """The JAX trace currently being built (an eval trace outside every transformation)."""
    return _jax_core.trace_ctx.trace


def _trace_chain(trace: Any) -> list[Any]:
    """``trace`` and the traces it was started in (JVP and batching traces link a parent)."""
    chain = []
    while trace is not None and not any(trace is t for t in chain):
        chain.append(trace)
        trace = getattr(trace, "parent_trace", None)
    return chain


_LOOP_INVARIANT_KEY = (
    "je.sample: a site inside a je.scan / je.fori_loop / je.while_loop body uses a key that "
    "does not change between iterations: a key from outside the loop, a carry key that the "
    "body returns unchanged, or one computed only from such keys (e.g. "
    "jax.random.split(key)[0]), so every iteration redraws the same numbers, which the "
    "estimators treat as independent (a silently wrong gradient). Derive a key per "
    "iteration: split it in the carry and return the new one (key, sub = "
    "jax.random.split(key)), pass jax.random.split(key, T) as xs, or "
    "jax.random.fold_in(key, i) with the iteration index i."
)
_FOREIGN_HINT = (
    "Its recorded quantities cannot leave that trace. Use je.scan / je.fori_loop / "
    "je.while_loop for loops and je.cond / je.switch for branches, give the site a "
    "sample_shape instead of an inner jax.vmap, call sub-functions without jax.jit or "
    "jax.checkpoint (the transform compiles the whole program), or choose a non-recording "
    "estimator (je.pathwise(), je.gumbel_softmax(), je.straight_through()) for this site "
    "via je.sample(..., estimator=...)."
)


class Handler:
    """Base effect handler; a context manager that intercepts :func:`sample` sites.

    Subclasses implement :meth:`sample` and, when their sites record per-site quantities
    (``recording = True``), the loop protocol (:meth:`loop_state`, :meth:`loop_child`,
    :meth:`loop_outputs`, :meth:`absorb_loop`) and the branch protocol
    (:meth:`branch_child`, :meth:`branch_layout`, :meth:`branch_outputs`,
    :meth:`absorb_branches`). The base class tracks the keys that reached sites and the JAX
    trace the handler was entered in.
    """

    #: whether sites record quantities that must leave loops/branches explicitly
    recording: ClassVar[bool] = False
    #: whether :func:`while_loop` needs ``max_iterations`` (reverse mode or records)
    needs_bounded_loops: ClassVar[bool] = True
    #: the estimator's public name, for error messages
    name: str = "estimator"

    def __init__(self) -> None:
        self._keys: set[int] = set()  # value numbers of the keys that reached sites
        self._numbering = ValueNumbering()
        self._ancestors: tuple[Any, ...] = ()
        self._loop_outer: tuple[Any, ...] | None = None
        # numbers of the keys of this loop body's sites, checked when the body has returned
        self._loop_sites: list[int] | None = None
        self._trace: Any = None

    def __enter__(self) -> Handler:
        _stack().append(self)
        self._trace = _current_trace()
        return self

    def __exit__(self, *exc: Any) -> None:
        popped = _stack().pop()
        assert popped is self, "jaxestim handler stack corrupted"

    def sample(
        self,
        key: jax.Array,
        dist: Distribution,
        sample_shape: tuple[int, ...],
        estimator: Any,
        mask: jax.Array | None,
    ) -> jax.Array:
        raise NotImplementedError

    # --- checks --------------------------------------------------------------------------
    def in_own_trace(self) -> bool:
        """Whether the current site runs directly in the trace this handler was entered in."""
        return _current_trace() is self._trace

    def check_recording_site(self, what: str) -> None:
        """Raise unless the site runs directly in the trace this handler was entered in."""
        if not self.in_own_trace():
            raise EstimatorError(
                f"{what} inside plain JAX control flow or a transformation within the "
                "program (jax.lax.cond / switch / while_loop / scan / fori_loop, jax.vmap, "
                f"jax.jit or jax.checkpoint). {_FOREIGN_HINT}"
            )

    def note_key(self, key: Any) -> None:
        """Record that ``key`` reached a site; raise if it was reused (see module docs).

        A key is reused when it is the key of an earlier site of this run or computed by the
        same operations from the same inputs (:class:`jaxestim._keys.ValueNumbering`).
        """
        probe = key
        if isinstance(key, LoopKey):
            probe = key._words
            # its iteration's words (None in je.scan's counting trace) at its position
            deps = () if probe is None else (probe,)
            number = self._numbering.combine(("loop key", key._node), *deps)
        else:
            number = self._numbering.number(key)
        if number in self._keys:
            raise EstimatorError(
                "je.sample: the same PRNG key reached two sample sites (one key, or keys "
                "computed by the same operations from the same key, e.g. "
                "jax.random.split(key)[0] twice); their draws would be identical, which the "
                "estimators treat as independent (a silently wrong gradient). Split the key "
                "(k1, k2 = jax.random.split(key)) and give every site its own."
            )
        if probe is not None and self._loop_outer is not None:
            # computed only from values outside the body (or constants): every iteration's
            if self._numbering.only_depends_on(number, self._outer_ids()) or (
                isinstance(probe, _jax_core.Tracer) and id(probe._trace) in self._outer_ids()
            ):
                raise EstimatorError(_LOOP_INVARIANT_KEY)
            self._loop_sites.append(number)
        self._keys.add(number)

    def _outer_ids(self) -> set[int]:
        return {id(t) for t in self._loop_outer}

    def check_loop_carry(self, carry_in: Any, carry_out: Any) -> None:
        """After a loop body (run under this loop child) returned: raise if a site's key
        depends only on values outside the body and carry inputs that the body returns
        unchanged at the same position (the same key in every iteration)."""
        if not self._loop_sites:
            return
        leaves_in, tree_in = jax.tree_util.tree_flatten(carry_in)
        leaves_out, tree_out = jax.tree_util.tree_flatten(carry_out)
        if tree_in != tree_out:
            return  # jax.lax.scan reports the mismatch
        vn = self._numbering
        fixed = frozenset().union(
            *(
                vn.input_of(a)
                for a, b in zip(leaves_in, leaves_out, strict=True)
                if vn.number(a) == vn.number(b)
            )
        )
        if fixed and any(vn.only_depends_on(n, self._outer_ids(), fixed) for n in self._loop_sites):
            raise EstimatorError(_LOOP_INVARIANT_KEY)

    def spawn(self, child: Handler, kind: str) -> Handler:
        """Set up ``child`` for a loop body (``kind="loop"``) or a branch (``"branch"``)."""
        if child is self:
            child = copy.copy(self)
        child._ancestors = (*self._ancestors, self._trace)
        child._numbering = self._numbering  # one table per run: numbers stay comparable
        if kind == "loop":
            # every trace outside the body: the enclosing handlers' and their parents
            child._loop_outer = tuple(t for a in child._ancestors for t in _trace_chain(a))
            child._loop_sites = []
            child._keys = set()
        else:
            child._loop_outer = self._loop_outer
            child._loop_sites = self._loop_sites  # a branch's sites are its loop body's
            child._keys = set(self._keys)
        return child

    def cost(self, value: jax.Array) -> jax.Array:
        """A :func:`cost` declaration; only the surrogate handler weighs it (identity here)."""
        return value

    # --- loop protocol -------------------------------------------------------------------
    def loop_state(self) -> Any:
        """Initial loop-carried state of this handler (a pytree)."""
        return None

    def loop_child(self, state: Any) -> Handler:
        """A handler for one loop iteration, starting from ``state``."""
        return copy.copy(self)

    def loop_outputs(self) -> tuple[Any, Any]:
        """``(state_out, records)`` after one iteration; records are stacked by the scan."""
        return None, None

    def absorb_loop(self, state: Any, stacked_records: Any, child: Handler, length: int) -> None:
        """Take in the final loop state and the records stacked over ``length`` iterations
        (``child`` is the body's handler, for static information such as element counts)."""

    # --- branch protocol ------------------------------------------------------------------
    def branch_child(self, state: Any, index: int, layout: Any) -> Handler:
        """A handler for branch ``index``; ``layout`` is ``None`` while probing."""
        return self.loop_child(state)

    def branch_layout(self, children: Sequence[Handler]) -> Any:
        """The common record layout of all branches, from their probed handlers (each has
        ``probe_shapes``: the shapes of what :meth:`loop_outputs` recorded in the branch)."""
        return None

    def branch_outputs(self, layout: Any) -> tuple[Any, Any]:
        """``(state_out, records)`` of a branch in the common ``layout``."""
        return None, None

    def absorb_branches(self, state: Any, records: Any, layout: Any) -> None:
        """Take in the state and records of the branch that ran."""


def _check_mask(mask: Any, full_shape: tuple[int, ...]) -> jax.Array:
    m = jnp.asarray(mask)
    if m.dtype != jnp.bool_:
        raise TypeError(f"je.sample: `mask` must be a boolean array, got dtype {m.dtype}")
    try:
        return jnp.broadcast_to(m, full_shape)
    except ValueError:
        raise ValueError(
            f"je.sample: `mask` of shape {m.shape} must broadcast to sample_shape + "
            f"batch_shape = {full_shape}"
        ) from None


def sample(
    key: jax.Array,
    dist: Distribution,
    sample_shape: tuple[int, ...] | int = (),
    *,
    estimator: Any = None,
    mask: Any = None,
) -> jax.Array:
    """A sample site: draw from ``dist`` using ``key``.

    Outside an estimator transform this is ``dist.sample(key, sample_shape)``. Inside one
    (:func:`jaxestim.grad` and friends) the active estimator decides what the site returns
    and records, so the same program can be differentiated by every estimator.

    Args:
      key: a single PRNG key; the site's randomness is a deterministic function of it, so
        re-running a program with the same key reproduces every draw (the basis of common
        random numbers and of the StochasticAD-style estimator). A key may reach only one
        site per run of the program, and a site in a loop body needs a per-iteration key
        (otherwise :class:`EstimatorError` under a transform; see the module docs).
      dist: a :mod:`jaxestim.distributions` distribution, or a numpyro distribution (the
        optional ``interop`` extra), used through its ``sample`` / ``rsample`` / ``log_prob``
        only: :func:`pathwise` (where ``has_rsample``), :func:`score_function`, :func:`auto`,
        :func:`finite_difference` (common random numbers: continuous reparameterized sites
        only) and :func:`forward_gradient` work with it; estimators that need jaxestim's
        inverse-CDF coupling or family structure (:func:`stochastic_ad`, DisARM/ARM,
        enumeration, the relaxations, REBAR/RELAX, :func:`measure_valued`) raise
        :class:`EstimatorError` at trace time naming the jaxestim family to use instead
        (e.g. numpyro ``Poisson`` -> :class:`jaxestim.distributions.Poisson`). Discrete
        numpyro draws keep numpyro's integer dtype.
      sample_shape: leading shape of i.i.d. draws.
      estimator: optional per-site override of the transform's estimator. Valid overrides
        are the site-level estimators (:func:`pathwise`, :func:`score_function`,
        :func:`gumbel_softmax`, :func:`straight_through`, :func:`auto`) under a transform
        whose estimator is also site-level; whole-program estimators
        (:func:`finite_difference`, :func:`stochastic_ad`) neither act per site nor accept
        overrides, and either case raises :class:`EstimatorError`. Ignored outside
        transforms.
      mask: optional boolean array broadcastable to ``sample_shape + dist.batch_shape``;
        ``False`` marks draws that "did not happen" (e.g. steps after a simulation ended in
        a fixed-horizon loop). The site still returns a sample everywhere (mask it out in
        the program as usual), but masked draws contribute nothing to any estimate: no
        log-probability (score function), no jump (stochastic_ad), no pathwise or relaxed
        derivative. Without it, a masked-out step still adds noise to the estimate.

    Returns:
      An array of shape ``sample_shape + dist.batch_shape + dist.event_shape`` (a one-hot
      vector with a trailing category axis for ``Categorical`` under relaxation estimators).
    """
    loop_key = key if isinstance(key, LoopKey) else None
    if loop_key is None:
        check_key(key, "je.sample")
    if not isinstance(dist, Distribution):
        if not _foreign.is_foreign(dist):
            raise TypeError(
                f"je.sample: `dist` must be a jaxestim.distributions.Distribution or a numpyro "
                f"distribution, got {type(dist).__name__}"
                + (
                    " (distrax / TensorFlow Probability distributions are not supported: use "
                    "the jaxestim.distributions family of the same name)"
                    if _foreign.looks_like_distribution(dist)
                    else ""
                )
            )
        dist = _foreign.ForeignDistribution(dist)
    shape = _canonical_sample_shape(sample_shape)
    _validation.check_site(dist)  # checkify checks of the parameters under validate=True
    if estimator is not None:
        if not isinstance(estimator, Estimator):
            raise TypeError(
                f"je.sample: `estimator` must be a jaxestim estimator or None, got "
                f"{type(estimator).__name__}"
            )
    if mask is not None:
        mask = _check_mask(mask, shape + tuple(dist.batch_shape))
    handler = current_handler()
    if handler is not None:
        handler.note_key(key)
        if isinstance(dist, _foreign.ForeignDistribution):
            _foreign.check_foreign_site(handler, dist, estimator)
    if loop_key is not None:
        key = loop_key._stream()
    if handler is None:
        out = dist.sample(key, shape)
    else:
        out = handler.sample(key, dist, shape, estimator, mask)
    if loop_key is not None:
        loop_key._consumed(key)
    return out


def cost(value: Any) -> jax.Array:
    r"""Declare that ``value`` is known at this point of the program: credit assignment.

    Returns ``value`` unchanged; the program's objective is still what it returns. Under a
    score-function estimator (:func:`jaxestim.score_function`, or :func:`jaxestim.auto` at
    discrete sites) the declaration changes *which draws are credited with which part of
    the objective*: a score-function site is weighed only by the declared costs that come
    after it (and by the part of the returned objective not declared as costs), not by the
    costs incurred before it was drawn -- the "reward-to-go" of policy gradients. With the
    declared costs ``c_k`` and ``L_{<k}`` the summed log-probability of the score-function
    sites drawn before declaration ``k`` (``L`` of all of them), the per-sample surrogate
    is (DiCE with costs, Foerster et al. 2018, eq. 5)::

        s = sum_k box(L_{<k}) c_k + box(L) (f - sum_k c_k) + baseline terms.

    Its value is ``f``; its gradient ``sum_k c_k grad L_{<k} + (f - sum_k c_k) grad L +
    grad f``. Unbiased for any ``f`` (a cost depends only on draws made before it, whose
    score terms are the only ones that correlate with it), with lower variance than
    weighing every site by the whole ``f`` when costs accrue along the way. Declare the
    per-step cost inside :func:`jaxestim.scan` / :func:`jaxestim.fori_loop` bodies
    (``je.cost(c_t)``) and return their total (or the total plus terminal terms). Higher
    derivatives stay unbiased (``box`` products, as in DiCE). Other estimators (pathwise,
    relaxations, finite differences, stochastic_ad) ignore the declaration: their estimates
    do not involve credit assignment. Outside a transform it is the identity.

    For a state-dependent baseline per site, give the site a score-function override with
    the baseline computed in the program, e.g.
    ``je.sample(k, policy(s), estimator=je.score_function(baseline=value_fn(s)))``: such
    a baseline (any array, also inside loops) is subtracted from that site's weight only.
    Baselines of the whole objective (``"leave_one_out"``, the default of
    :func:`jaxestim.auto`, a constant, a moving average) stay unbiased with costs but are
    subtracted from every site's reward-to-go, which is smaller for late sites: on the
    chain walk of ``tests/test_credit.py`` reward-to-go with the leave-one-out baseline
    has *more* variance (164) than the leave-one-out baseline without costs (96), while
    reward-to-go with a per-site value baseline has 28. Use per-site baselines with costs.

    Args:
      value: a real scalar (per sample) computed from what the program has drawn so far.

    Returns:
      ``value``.
    """
    value = jnp.asarray(value)
    if value.shape != () or not jnp.issubdtype(value.dtype, jnp.inexact):
        raise TypeError(
            f"je.cost: `value` must be a real floating scalar (one cost per sample), got "
            f"shape {value.shape} and dtype {value.dtype}; sum a vector of costs first"
        )
    if jnp.issubdtype(value.dtype, jnp.complexfloating):
        raise TypeError(f"je.cost: `value` must be real, got dtype {value.dtype}")
    handler = current_handler()
    return value if handler is None else handler.cost(value)


def mask_value(x: jax.Array, mask: jax.Array | None) -> jax.Array:
    """``x`` with the derivative removed where ``mask`` is False (trailing axes broadcast)."""
    if mask is None:
        return x
    m = jnp.reshape(mask, mask.shape + (1,) * (x.ndim - mask.ndim))
    return jnp.where(m, x, jax.lax.stop_gradient(x))


# --------------------------------------------------------------------------------------
# loops
# --------------------------------------------------------------------------------------


class _Node:
    """Layout of one iteration key's bulk words: its own block, then its splits' blocks."""

    def __init__(self) -> None:
        self.demand = 0  # words taken by the site(s) that consume this key (max over branches)
        self.splits: dict[int, list[_Node]] = {}
        self.offset = 0

    def assign(self, offset: int) -> int:
        """Give this node and its descendants their offsets (pre-order); return the end."""
        self.offset = offset
        offset += self.demand
        for num in sorted(self.splits):
            for kid in self.splits[num]:
                offset = kid.assign(offset)
        return offset


class LoopKey:
    """The per-iteration key that ``je.scan(..., key=key)`` hands its body.

    It stands for the iteration's share of random words that the loop drew in bulk from
    ``key`` before it started. Pass it to :func:`sample` like a PRNG key (one site per key,
    as for JAX keys), or split it for several sites with ``k1, k2 = k.split(2)`` (not
    ``jax.random.split``: it is not a JAX array). Sites draw from it exactly as from a key:
    discrete sites take one 32-bit word per element for their inverse-CDF uniform, Normal
    (and LogNormal, MultivariateNormal) sites one word per coordinate, other samplers two
    words that form a threefry key.

    It is not a JAX array: code outside jaxestim (an environment's ``step``, a jitted
    helper that calls ``jax.random``) takes the plain key :meth:`key` returns instead.
    """

    _jaxestim_loop_key = True

    def __init__(self, words: jax.Array | None, node: _Node) -> None:
        self._words = words  # uint32[W] of this iteration; None in the counting trace
        self._node = node
        self._split_cache: dict[int, tuple[LoopKey, ...]] = {}
        self._plain: jax.Array | None = None

    def split(self, num: int = 2) -> tuple[LoopKey, ...]:
        """``num`` keys for ``num`` sites, each with its own words (like ``jax.random.split``;
        splitting one key twice with the same ``num`` gives the same keys)."""
        if isinstance(num, bool) or not isinstance(num, int) or num < 1:
            raise ValueError(f"LoopKey.split: `num` must be a positive int, got {num!r}")
        if num not in self._split_cache:
            if self._words is None:
                self._node.splits.setdefault(num, [_Node() for _ in range(num)])
            elif num not in self._node.splits:
                raise EstimatorError(_LAYOUT_CHANGED)
            kids = self._node.splits[num]
            self._split_cache[num] = tuple(LoopKey(self._words, n) for n in kids)
        return self._split_cache[num]

    def key(self) -> jax.Array:
        """A plain JAX PRNG key of this iteration, for code that takes a JAX key.

        A typed threefry key (``jax.random.key_data`` gives its ``uint32[2]``) made of two
        of this iteration's words: distinct in every iteration, and the same for the same
        ``je.scan`` key, eagerly and under ``jax.jit`` and ``jax.vmap``. Like passing the
        key to a site, this uses the key up: take the key for one consumer, and split first
        (``k_env, k_site = k.split(2)``) to also pass a key to :func:`sample`; repeated
        calls return the same key.

        Draws made from it with ``jax.random`` (inside an environment's ``step``, say) are
        not sample sites: no estimator records or reweighs them, so they are treated as
        noise that does not depend on the differentiated parameters. That is exact when
        their distribution does not depend on them (``state + jax.random.normal(k)`` is
        differentiated pathwise through ``state``); a draw whose distribution does
        (``jax.random.bernoulli(k, p(theta))``) loses that dependence, which
        :func:`jaxestim.check` reports -- draw it with :func:`sample` instead.
        """
        if self._plain is None:
            handler = current_handler()
            if handler is not None:
                handler.note_key(self)
            stream = self._stream()
            self._plain = stream.jax_key()
            self._consumed(stream)
        return self._plain

    def _stream(self) -> RandomStream:
        if self._words is None:
            return RandomStream(None)
        n = self._node
        return RandomStream(self._words[n.offset : n.offset + n.demand], n.demand)

    def _consumed(self, stream: RandomStream) -> None:
        if stream.counting:
            self._node.demand = max(self._node.demand, stream.used)

    # jnp functions, jax.random and jax.jit's argument handling probe these attributes
    # (getattr and hasattr let anything but AttributeError through): fail there with the
    # explanation. Not a TypeError: jax.jit replaces those by its own message.
    @property
    def shape(self) -> Any:
        raise EstimatorError(_LOOP_KEY_MISUSE)

    __jax_array__ = dtype = ndim = shape

    def __repr__(self) -> str:
        return "LoopKey(<one iteration's bulk random words>)"


_LOOP_KEY_MISUSE = (
    "a je.scan(..., key=...) iteration key is not a JAX array: pass it to je.sample, split "
    "it for several sites with k1, k2 = k.split(2) (not jax.random.split), and hand code "
    "that takes a JAX key (jax.random, a jitted environment step) the plain key k.key()"
)
_LAYOUT_CHANGED = (
    "je.scan(..., key=...): the loop body split its iteration key differently in je.scan's "
    "counting trace and in its real trace; the body must be a pure function of its arguments"
)


def _is_threefry(key: jax.Array) -> bool:
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return str(jax.random.key_impl(key)) == "threefry2x32"
    return jax.config.jax_default_prng_impl == "threefry2x32"  # a legacy uint32[2] key


def _bulk_words(key: jax.Array, start: Any, n: int, width: int, total: int) -> jax.Array:
    """The random words of iterations ``start .. start + n - 1``, shape ``(n, width)``.

    For a threefry key, words ``2p, 2p + 1`` of iteration ``t`` are the two outputs of one
    threefry-2x32 hash of the counter pair ``(t, p)`` under the key: a pure function of
    ``(key, t, p)``, so any segment of iterations can be generated on its own (checkpointed
    loops generate each segment's words inside the segment) and gives the same words.
    Cost: one hash per two words (``jax.random.bits`` spends one per word, and splitting
    one key per iteration one more per iteration). Other key types use
    ``jax.random.bits(key, (total, width))`` (all iterations at once).
    """
    if width == 0:
        return jnp.zeros((n, 0), jnp.uint32)
    if not _is_threefry(key):
        return jax.random.bits(key, (total, width), jnp.uint32)
    data = (
        jax.random.key_data(key) if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    )
    pairs = (width + 1) // 2
    t = jnp.asarray(start, jnp.uint32) + jnp.arange(n, dtype=jnp.uint32)
    t = jnp.broadcast_to(t[:, None], (n, pairs)).reshape(-1)
    p = jnp.broadcast_to(jnp.arange(pairs, dtype=jnp.uint32)[None, :], (n, pairs)).reshape(-1)
    out = _threefry_2x32(data, jnp.concatenate([t, p]))
    h = jnp.stack([out[: n * pairs], out[n * pairs :]], -1)  # (n * pairs, 2)
    return h.reshape(n, 2 * pairs)[:, :width]


def _checkpoint_policy(checkpoint: Any, where: str) -> tuple[bool, Any]:
    """``(remat, policy)`` from the ``checkpoint`` argument (False, True or a policy)."""
    if checkpoint is False or checkpoint is None:
        return False, None
    if checkpoint is True:
        return True, None
    if callable(checkpoint):
        return True, checkpoint
    raise TypeError(
        f"{where}: `checkpoint` must be False, True or a jax.checkpoint_policies policy, got "
        f"{checkpoint!r}"
    )


def _check_every(every: Any, where: str) -> int | None:
    if every is None:
        return None
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"{where}: `checkpoint_every` must be a positive int, got {every!r}")
    return every


def _run_scan(
    body: Callable[[Any, Any], tuple[Any, Any]],
    init: Any,
    xs: Any,
    length: int,
    reverse: bool,
    unroll: int | bool,
    remat: bool,
    policy: Any,
    every: int | None,
    words: Callable[[Any, int], Any] | None,
) -> tuple[Any, Any]:
    """``lax.scan(body, init, xs)`` with optional per-segment word generation and remat.

    ``words(start, n)`` (or None) gives the bulk random words of iterations
    ``start .. start + n - 1``; the body then receives ``(x, words_t)``. With ``every = k``
    the loop runs as an outer scan over ``length // k`` segments, each an inner scan of
    ``k`` iterations under ``jax.checkpoint`` (and a checkpointed tail of
    ``length % k``): outputs are stacked in iteration order as by one scan.
    """

    def segment(carry: Any, xs_seg: Any, start: Any, n: int) -> tuple[Any, Any]:
        if words is not None:
            xs_seg = (xs_seg, words(start, n))
        step = jax.checkpoint(body, policy=policy) if remat and every is None else body
        return jax.lax.scan(step, carry, xs_seg, length=n, reverse=reverse, unroll=unroll)

    if every is None or every >= length:
        if every is None:
            return segment(init, xs, 0, length)
        return jax.checkpoint(lambda c, x: segment(c, x, 0, length), policy=policy)(init, xs)
    q, r = divmod(length, every)
    main = jax.tree_util.tree_map(lambda a: a[: q * every].reshape(q, every, *a.shape[1:]), xs)
    tail = jax.tree_util.tree_map(lambda a: a[q * every :], xs)
    seg_k = jax.checkpoint(lambda c, x, st: segment(c, x, st, every), policy=policy)
    seg_r = jax.checkpoint(lambda c, x, st: segment(c, x, st, r), policy=policy)
    starts = jnp.arange(q, dtype=jnp.int32) * every

    def outer(carry: Any, xs_s: Any) -> tuple[Any, Any]:
        x, st = xs_s
        return seg_k(carry, x, st)

    carry, ys_tail = init, None
    if r and reverse:
        carry, ys_tail = seg_r(carry, tail, q * every)
    carry, ys = jax.lax.scan(outer, carry, (main, starts), reverse=reverse)
    ys = jax.tree_util.tree_map(lambda a: a.reshape(q * every, *a.shape[2:]), ys)
    if r and not reverse:
        carry, ys_tail = seg_r(carry, tail, q * every)
    if r:
        ys = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a, b]), ys, ys_tail)
    return carry, ys


def _scan_length(xs: Any, length: int | None, where: str) -> int:
    leaves = jax.tree_util.tree_leaves(xs)
    if length is None:
        if not leaves:
            raise ValueError(f"{where}: pass `length` when `xs` is None")
        return int(leaves[0].shape[0])
    return int(length)


def scan(
    f: Callable[..., tuple[Any, Any]],
    init: Any,
    xs: Any = None,
    length: int | None = None,
    reverse: bool = False,
    unroll: int | bool = 1,
    *,
    key: jax.Array | None = None,
    checkpoint: Any = False,
    checkpoint_every: int | None = None,
) -> tuple[Any, Any]:
    """Drop-in for :func:`jax.lax.scan` whose body may contain sample sites.

    Under an estimator transform the body runs under a child of the active handler; what
    the sites record per iteration (e.g. log-probabilities for the score function, jump
    rates for :func:`stochastic_ad`) leaves the loop as stacked scan outputs, so a
    1,000-step simulation is traced once and compiles as a single loop. Outside a
    transform (and without ``key``/checkpointing) it is exactly ``jax.lax.scan``.

    Args:
      key: optional PRNG key for all iterations' randomness, drawn in bulk. The body is
        then called as ``f(carry, x, k)`` with a per-iteration :class:`LoopKey` ``k`` to
        pass to :func:`sample` (``k.split(n)`` for several sites). The body is first traced
        abstractly to learn how many random words each site takes (one 32-bit word per
        discrete element or Normal coordinate, two for other samplers); the words of all
        iterations are then drawn from ``key`` outside the loop, one threefry hash per two
        words, instead of splitting one key per iteration and hashing again per draw
        (about 4x fewer hashes for one scalar site per step). Same key gives the same draws
        under every estimator, eagerly, under ``jax.jit`` and ``jax.vmap``, with and without
        checkpointing (the basis of common random numbers and of :func:`stochastic_ad`'s
        replay). The draws differ from those of ``jax.random.split(key, T)`` passed as
        ``xs``. Memory: ``T x (words per iteration)`` uint32 per sample (with
        ``checkpoint_every`` only one segment's worth at a time, for threefry keys).
      checkpoint: ``True`` or a :mod:`jax.checkpoint_policies` policy rematerializes each
        iteration in reverse mode (the loop stores only each iteration's carry, not the
        body's intermediates). Results are bit-identical; reverse-mode estimators (score
        function, pathwise) then run the body's forward pass twice.
      checkpoint_every: ``k`` splits the loop into segments of ``k`` iterations, each
        under ``jax.checkpoint`` (an outer scan over ``T // k`` segments, plus a tail):
        reverse mode stores ``T / k`` carries plus one segment's intermediates while it
        recomputes that segment, ``O(T / k + k)`` instead of ``O(T)`` -- ``k ~ sqrt(T)``
        bounds the memory of a 10,000-step simulation by ``~2 sqrt(T)`` steps' worth, at
        the price of one extra forward pass of the loop. Records leave the loop in the same
        iteration order and values are bit-identical to the unsegmented loop.
    """
    handler = current_handler()
    every = _check_every(checkpoint_every, "je.scan")
    remat, policy = _checkpoint_policy(checkpoint, "je.scan")
    if handler is None and key is None and not remat and every is None:
        return jax.lax.scan(f, init, xs, length=length, reverse=reverse, unroll=unroll)
    n = _scan_length(xs, length, "je.scan")
    root: _Node | None = None
    words: Callable[[Any, int], Any] | None = None
    if key is not None:
        check_key(key, "je.scan `key`")
        if isinstance(key, LoopKey):
            raise TypeError(f"je.scan: `key` must be a JAX PRNG key. {_LOOP_KEY_MISUSE}")
        root = _probe_words(f, init, xs, handler)
        width = root.assign(0)
        if n * ((width + 1) // 2) >= 2**32:
            raise ValueError("je.scan(key=...): more than 2**32 random word pairs per loop")
        if _is_threefry(key):
            words = lambda start, m: _bulk_words(key, start, m, width, n)
        else:
            xs = (xs, _bulk_words(key, 0, n, width, n))

    def call(user_carry: Any, x: Any) -> tuple[Any, Any]:
        if root is None:
            return f(user_carry, x)
        x, w = x
        return f(user_carry, x, LoopKey(w, root))

    if handler is None:
        return _run_scan(call, init, xs, n, reverse, unroll, remat, policy, every, words)
    children: list[Handler] = []

    def body(carry: Any, x: Any) -> tuple[Any, Any]:
        user_carry, state = carry
        child = handler.spawn(handler.loop_child(state), "loop")
        with child:
            carry_out, y = call(user_carry, x)
        child.check_loop_carry(user_carry, carry_out)
        children.append(child)
        user_carry = carry_out
        state_out, records = child.loop_outputs()
        return (user_carry, state_out), (y, records)

    (carry, state), (ys, records) = _run_scan(
        body, (init, handler.loop_state()), xs, n, reverse, unroll, remat, policy, every, words
    )
    handler.absorb_loop(state, records, children[-1], n)
    return carry, ys


def _probe_words(f: Callable[..., Any], init: Any, xs: Any, handler: Handler | None) -> _Node:
    """Trace the body once abstractly with a counting :class:`LoopKey`: the word layout."""
    root = _Node()
    x0 = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), xs)

    def run(state: Any, carry: Any, x: Any) -> Any:
        if handler is None:
            return f(carry, x, LoopKey(None, root))
        child = handler.spawn(handler.loop_child(state), "loop")
        with child:
            return f(carry, x, LoopKey(None, root))

    state = None if handler is None else handler.loop_state()
    jax.eval_shape(run, state, init, x0)
    return root


def fori_loop(
    lower: int,
    upper: int,
    body_fun: Callable[..., Any],
    init_val: Any,
    *,
    unroll: int | bool = 1,
    key: jax.Array | None = None,
    checkpoint: Any = False,
    checkpoint_every: int | None = None,
) -> Any:
    """Drop-in for :func:`jax.lax.fori_loop` whose body may contain sample sites.

    Under an estimator transform the trip count must be static (Python ints or concrete
    arrays), because per-iteration records are stacked like :func:`scan` outputs; the loop
    then runs as ``jaxestim.scan`` over ``arange(lower, upper)``. For a data-dependent
    trip count use :func:`while_loop` with ``max_iterations`` (under
    :func:`jaxestim.finite_difference` a traced trip count runs as ``jax.lax.fori_loop``).

    ``key``, ``checkpoint`` and ``checkpoint_every`` are as in :func:`scan` (static trip
    count required); with ``key`` the body is called as ``body_fun(i, carry, k)``.
    """
    handler = current_handler()
    lo, hi = concrete(lower), concrete(upper)
    static = lo is not None and hi is not None and not lo.ndim and not hi.ndim
    extras = key is not None or checkpoint not in (False, None) or checkpoint_every is not None
    if not extras and (handler is None or (not static and not handler.needs_bounded_loops)):
        return jax.lax.fori_loop(lower, upper, body_fun, init_val, unroll=unroll)
    if not static:
        raise EstimatorError(
            "je.fori_loop: under an estimator transform (and with key= or checkpointing) "
            "`lower` and `upper` must be static integers (the per-iteration records are "
            f"stacked like scan outputs); got lower={lower!r}, upper={upper!r}. For a "
            "data-dependent trip count use je.while_loop(cond_fun, body_fun, init_val, "
            "max_iterations=...)."
        )
    idx = jnp.arange(int(lo), int(hi))
    if key is None:
        step = lambda c, i: (body_fun(i, c), None)
    else:
        step = lambda c, i, k: (body_fun(i, c, k), None)
    carry, _ = scan(
        step,
        init_val,
        idx,
        unroll=unroll,
        key=key,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
    )
    return carry


def _check_max_iterations(max_iterations: Any) -> int:
    if (
        isinstance(max_iterations, bool)
        or not isinstance(max_iterations, int)
        or max_iterations < 1
    ):
        raise ValueError(
            f"je.while_loop: `max_iterations` must be a positive int (a static bound on the "
            f"number of iterations), got {max_iterations!r}"
        )
    return max_iterations


def while_loop(
    cond_fun: Callable[[Any], Any],
    body_fun: Callable[..., Any],
    init_val: Any,
    *,
    max_iterations: int | None = None,
    key: jax.Array | None = None,
    checkpoint: Any = False,
    checkpoint_every: int | None = None,
) -> Any:
    """Drop-in for :func:`jax.lax.while_loop` whose body may contain sample sites.

    A random-length simulation (a queue until it empties, trials until the first success,
    a branching process until extinction) under every estimator. With ``max_iterations``
    the loop runs as :func:`scan` over ``max_iterations`` steps of
    ``cond(cond_fun(x), body_fun, identity)(x)``: once ``cond_fun`` is False the carry stops
    changing and the steps' sites record nothing, so the score function uses the
    log-probabilities of the iterations actually run, and in the StochasticAD replay a jump
    may lengthen or shorten the loop. If the loop has not stopped after
    ``max_iterations`` steps, every floating leaf of the result is NaN (never a silently
    truncated value): raise the bound. The NaN reaches the estimates as any NaN value
    does: that sample's gradient, hence the mean (``je.grad``), is NaN, and with a
    ``"leave_one_out"`` or ``"optimal"`` score-function baseline (built from the other
    samples' values) every other sample's gradient too, so ``je.grad_samples`` rows cannot
    be filtered to recover an estimate.

    Under an estimator transform ``max_iterations`` is required (reverse-mode
    differentiation and per-iteration records need a static bound), except under
    :func:`jaxestim.finite_difference`, which runs a plain ``jax.lax.while_loop``. Outside a
    transform, ``max_iterations=None`` is exactly ``jax.lax.while_loop``.

    ``key``, ``checkpoint`` and ``checkpoint_every`` are as in :func:`scan` and need
    ``max_iterations``; with ``key`` the body is called as ``body_fun(carry, k)`` (words
    are drawn for all ``max_iterations`` steps).

    Cost: ``max_iterations`` steps; under ``jax.vmap`` (as for the ``num_samples`` axis)
    each step evaluates the body for every sample even after it stopped, so choose a bound
    near the longest plausible run.

    Gradient caveat: pathwise derivatives do not see the iteration count change with a
    continuous parameter (the count is a step function of it); :func:`jaxestim.check`
    reports such comparisons.
    """
    handler = current_handler()
    extras = key is not None or checkpoint not in (False, None) or checkpoint_every is not None
    if max_iterations is None:
        if extras:
            raise EstimatorError(
                "je.while_loop: key= and checkpointing need max_iterations= (a static bound: "
                "the random words of every step are drawn before the loop, and checkpoints "
                "are placed along a fixed-length scan)"
            )
        if handler is None or not handler.needs_bounded_loops:
            return jax.lax.while_loop(cond_fun, body_fun, init_val)
        raise EstimatorError(
            f"je.while_loop under je.{handler.name}(): pass max_iterations= (a static bound "
            "on the number of iterations); reverse-mode differentiation and the estimator's "
            "per-iteration records need it. A loop still running after max_iterations "
            "gives NaN."
        )
    n = _check_max_iterations(max_iterations)

    if key is None:

        def step(x: Any, _: Any) -> tuple[Any, None]:
            return cond(cond_fun(x), body_fun, lambda v: v, x), None

    else:

        def step(x: Any, _: Any, k: LoopKey) -> tuple[Any, None]:
            return cond(cond_fun(x), lambda v: body_fun(v, k), lambda v: v, x), None

    out, _ = scan(
        step,
        init_val,
        None,
        length=n,
        key=key,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
    )
    finished = jnp.logical_not(cond_fun(out))

    def poison(leaf: Any) -> Any:
        leaf = jnp.asarray(leaf)
        if jnp.issubdtype(leaf.dtype, jnp.inexact):
            return jnp.where(finished, leaf, jnp.nan)
        return leaf

    return jax.tree_util.tree_map(poison, out)


# --------------------------------------------------------------------------------------
# branches
# --------------------------------------------------------------------------------------


def switch(index: Any, branches: Sequence[Callable[..., Any]], *operands: Any) -> Any:
    """Drop-in for :func:`jax.lax.switch` whose branches may contain sample sites.

    Under an estimator transform each branch runs under a child handler and all branches
    return their records in one common layout (what every branch records, zero in the
    branches not taken): the score function adds the log-probabilities of the branch taken
    only, and the StochasticAD replay re-evaluates the index, so a jump that changes it runs
    the other branch with the same random numbers. Every branch is traced twice (once to
    learn its records). Outside a transform it is exactly ``jax.lax.switch``.
    """
    branches = list(branches)
    if not branches or not all(callable(b) for b in branches):
        raise TypeError("je.switch: `branches` must be a non-empty sequence of callables")
    handler = current_handler()
    if handler is None:
        return jax.lax.switch(index, branches, *operands)
    state = handler.loop_state()
    layout = None
    if handler.recording:
        probed: list[Handler | None] = [None] * len(branches)

        def probe(i: int) -> Callable[..., Any]:
            def run(st: Any, ops: tuple) -> Any:
                child = handler.spawn(handler.branch_child(st, i, None), "branch")
                _same_values(handler._numbering, ops, operands)
                with child:
                    out = branches[i](*ops)
                # what the branch records, as shapes (its tracers die with this trace)
                child.probe_shapes = jax.tree_util.tree_map(
                    lambda v: jax.ShapeDtypeStruct(jnp.shape(v), jnp.result_type(v)),
                    child.loop_outputs()[1],
                )
                probed[i] = child
                return out

            return run

        for i in range(len(branches)):
            jax.eval_shape(probe(i), state, operands)
        layout = handler.branch_layout(probed)
    used: list[Handler] = []
    outs: list[Any] = []

    def wrap(i: int) -> Callable[..., Any]:
        def run(st: Any, ops: tuple) -> Any:
            child = handler.spawn(handler.branch_child(st, i, layout), "branch")
            _same_values(handler._numbering, ops, operands)
            with child:
                out = branches[i](*ops)
            used.append(child)
            outs.append(out)
            st_out, records = child.branch_outputs(layout)
            return out, st_out, records

        return run

    wrapped = [wrap(i) for i in range(len(branches))]
    out, st_out, records = jax.lax.switch(index, wrapped, state, operands)
    handler.absorb_branches(st_out, records, layout)
    for child in used:
        handler._keys |= child._keys
    # an output that every branch computes alike (a key passed through) is that value
    vn = handler._numbering
    for leaf, *alike in zip(*map(jax.tree_util.tree_leaves, (out, *outs)), strict=True):
        if len({vn.number(a) for a in alike}) == 1:
            vn.alias(leaf, alike[0])
    return out


def _same_values(numbering: ValueNumbering, inner: Any, outer: Any) -> None:
    """Number the leaves of ``inner`` (a traced function's inputs) as those of ``outer``
    (the values passed in for them)."""
    for a, b in zip(
        jax.tree_util.tree_leaves(inner), jax.tree_util.tree_leaves(outer), strict=True
    ):
        numbering.alias(a, b)


def cond(pred: Any, true_fun: Callable[..., Any], false_fun: Callable[..., Any], *operands: Any):
    """Drop-in for :func:`jax.lax.cond` whose branches may contain sample sites.

    ``switch(pred, [false_fun, true_fun], *operands)``; see :func:`switch`. ``pred`` may
    depend on earlier discrete samples: the StochasticAD replay follows the branch its
    jumped run takes.
    """
    if not (callable(true_fun) and callable(false_fun)):
        raise TypeError("je.cond: `true_fun` and `false_fun` must be callable")
    if current_handler() is None:
        return jax.lax.cond(pred, true_fun, false_fun, *operands)
    p = jnp.asarray(pred)
    if p.shape != ():
        raise TypeError(f"je.cond: `pred` must be a scalar, got shape {p.shape}")
    return switch((p != 0).astype(jnp.int32), [false_fun, true_fun], *operands)


def reject_override(name: str, estimator: Any) -> None:
    """Raise if a site asks for a per-site ``estimator`` under whole-program ``je.name()``."""
    if estimator is not None:
        raise EstimatorError(
            f"je.{name}() is a whole-program estimator: sites take no per-site "
            f"`estimator` override (got je.{estimator.name}())"
        )


class WholeProgramHandler(Handler):
    """Plain sampling at every site; rejects per-site overrides. One handler per program run."""

    needs_bounded_loops = False

    def __init__(self, name: str, estimator: Estimator | None = None):
        super().__init__()
        self.name = name
        self.estimator = estimator  # consulted at foreign (numpyro) sites

    def sample(self, key, dist, sample_shape, estimator, mask):
        reject_override(self.name, estimator)
        # an estimator may choose how its runs draw (finite differences: coupled samplers)
        site_sample = getattr(self.estimator, "site_sample", None)
        if site_sample is not None:
            return site_sample(key, dist, sample_shape)
        return dist.sample(key, sample_shape)
