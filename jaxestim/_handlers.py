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

A site whose estimator records and which runs inside *plain* JAX control flow or a
transformation inside the program (``jax.lax.cond``, ``while_loop``, ``scan``, an inner
``jax.vmap``, ``jax.jit`` or ``jax.checkpoint``) is detected at trace time -- the current
JAX trace is not the one the handler was entered in -- and raises :class:`EstimatorError`
naming the jaxestim replacement.

Keys. A PRNG key may reach at most one sample site per trace of the program, and a site
inside a loop body must use a key that varies with the iteration (split in the carry,
passed as ``xs``, or folded with the iteration index). Reusing a key makes two draws
identical, which every estimator but the pathwise one then treats as independent -- a
silently wrong gradient -- so both are :class:`EstimatorError` at trace time. Sites in
different branches of one :func:`cond` may share a key (only one of them runs).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from jax._src import core as _jax_core

from jaxestim import _validation
from jaxestim._errors import EstimatorError
from jaxestim._util import check_key, concrete
from jaxestim.distributions import Distribution
from jaxestim.distributions._base import _canonical_sample_shape

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
        self._keys: list[Any] = []
        self._ancestors: tuple[Any, ...] = ()
        self._loop_outer: tuple[Any, ...] | None = None
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
        """Record that ``key`` reached a site; raise if it was reused (see module docs)."""
        if any(k is key for k in self._keys):
            raise EstimatorError(
                "je.sample: the same PRNG key reached two sample sites; their draws would be "
                "identical, which the estimators treat as independent (a silently wrong "
                "gradient). Split the key (k1, k2 = jax.random.split(key)) and give every "
                "site its own."
            )
        if self._loop_outer is not None and (
            not isinstance(key, _jax_core.Tracer) or any(key._trace is t for t in self._loop_outer)
        ):
            raise EstimatorError(
                "je.sample: a site inside a je.scan / je.fori_loop / je.while_loop body uses a "
                "key from outside the loop, so every iteration redraws the same numbers, which "
                "the estimators treat as independent (a silently wrong gradient). Derive a key "
                "per iteration: split it in the carry, pass jax.random.split(key, T) as xs, or "
                "jax.random.fold_in(key, i) with the iteration index i."
            )
        self._keys.append(key)

    def spawn(self, child: Handler, kind: str) -> Handler:
        """Set up ``child`` for a loop body (``kind="loop"``) or a branch (``"branch"``)."""
        if child is self:
            child = copy.copy(self)
        child._ancestors = (*self._ancestors, self._trace)
        if kind == "loop":
            # every trace outside the body: the enclosing handlers' and their parents
            child._loop_outer = tuple(t for a in child._ancestors for t in _trace_chain(a))
            child._keys = []
        else:
            child._loop_outer = self._loop_outer
            child._keys = list(self._keys)
        return child

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
      dist: a :mod:`jaxestim.distributions` distribution.
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
    check_key(key, "je.sample")
    if not isinstance(dist, Distribution):
        raise TypeError(
            f"je.sample: `dist` must be a jaxestim.distributions.Distribution, got "
            f"{type(dist).__name__}"
        )
    shape = _canonical_sample_shape(sample_shape)
    _validation.check_site(dist)  # checkify checks of the parameters under validate=True
    if estimator is not None:
        from jaxestim._estimators import Estimator

        if not isinstance(estimator, Estimator):
            raise TypeError(
                f"je.sample: `estimator` must be a jaxestim estimator or None, got "
                f"{type(estimator).__name__}"
            )
    if mask is not None:
        mask = _check_mask(mask, shape + tuple(dist.batch_shape))
    handler = current_handler()
    if handler is None:
        return dist.sample(key, shape)
    handler.note_key(key)
    return handler.sample(key, dist, shape, estimator, mask)


def mask_value(x: jax.Array, mask: jax.Array | None) -> jax.Array:
    """``x`` with the derivative removed where ``mask`` is False (trailing axes broadcast)."""
    if mask is None:
        return x
    m = jnp.reshape(mask, mask.shape + (1,) * (x.ndim - mask.ndim))
    return jnp.where(m, x, jax.lax.stop_gradient(x))


# --------------------------------------------------------------------------------------
# loops
# --------------------------------------------------------------------------------------


def scan(
    f: Callable[[Any, Any], tuple[Any, Any]],
    init: Any,
    xs: Any = None,
    length: int | None = None,
    reverse: bool = False,
    unroll: int | bool = 1,
) -> tuple[Any, Any]:
    """Drop-in for :func:`jax.lax.scan` whose body may contain sample sites.

    Under an estimator transform the body runs under a child of the active handler; what
    the sites record per iteration (e.g. log-probabilities for the score function, jump
    rates for :func:`stochastic_ad`) leaves the loop as stacked scan outputs, so a
    1,000-step simulation is traced once and compiles as a single loop. Outside a
    transform it is exactly ``jax.lax.scan``.
    """
    handler = current_handler()
    if handler is None:
        return jax.lax.scan(f, init, xs, length=length, reverse=reverse, unroll=unroll)
    children: list[Handler] = []

    def body(carry: Any, x: Any) -> tuple[Any, Any]:
        user_carry, state = carry
        child = handler.spawn(handler.loop_child(state), "loop")
        with child:
            user_carry, y = f(user_carry, x)
        children.append(child)
        state_out, records = child.loop_outputs()
        return (user_carry, state_out), (y, records)

    (carry, state), (ys, records) = jax.lax.scan(
        body, (init, handler.loop_state()), xs, length=length, reverse=reverse, unroll=unroll
    )
    n = length if length is not None else jax.tree_util.tree_leaves(xs)[0].shape[0]
    handler.absorb_loop(state, records, children[-1], int(n))
    return carry, ys


def fori_loop(
    lower: int,
    upper: int,
    body_fun: Callable[[Any, Any], Any],
    init_val: Any,
    *,
    unroll: int | bool = 1,
) -> Any:
    """Drop-in for :func:`jax.lax.fori_loop` whose body may contain sample sites.

    Under an estimator transform the trip count must be static (Python ints or concrete
    arrays), because per-iteration records are stacked like :func:`scan` outputs; the loop
    then runs as ``jaxestim.scan`` over ``arange(lower, upper)``. For a data-dependent
    trip count use :func:`while_loop` with ``max_iterations`` (under
    :func:`jaxestim.finite_difference` a traced trip count runs as ``jax.lax.fori_loop``).
    """
    handler = current_handler()
    lo, hi = concrete(lower), concrete(upper)
    static = lo is not None and hi is not None and not lo.ndim and not hi.ndim
    if handler is None or (not static and not handler.needs_bounded_loops):
        return jax.lax.fori_loop(lower, upper, body_fun, init_val, unroll=unroll)
    if not static:
        raise EstimatorError(
            "je.fori_loop: under an estimator transform `lower` and `upper` must be static "
            "integers (the per-iteration records are stacked like scan outputs); got "
            f"lower={lower!r}, upper={upper!r}. For a data-dependent trip count use "
            "je.while_loop(cond_fun, body_fun, init_val, max_iterations=...)."
        )
    idx = jnp.arange(int(lo), int(hi))
    carry, _ = scan(lambda c, i: (body_fun(i, c), None), init_val, idx, unroll=unroll)
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
    body_fun: Callable[[Any], Any],
    init_val: Any,
    *,
    max_iterations: int | None = None,
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
    truncated value): raise the bound.

    Under an estimator transform ``max_iterations`` is required (reverse-mode
    differentiation and per-iteration records need a static bound), except under
    :func:`jaxestim.finite_difference`, which runs a plain ``jax.lax.while_loop``. Outside a
    transform, ``max_iterations=None`` is exactly ``jax.lax.while_loop``.

    Cost: ``max_iterations`` steps; under ``jax.vmap`` (as for the ``num_samples`` axis)
    each step evaluates the body for every sample even after it stopped, so choose a bound
    near the longest plausible run.

    Gradient caveat: pathwise derivatives do not see the iteration count change with a
    continuous parameter (the count is a step function of it); :func:`jaxestim.check`
    reports such comparisons.
    """
    handler = current_handler()
    if max_iterations is None:
        if handler is None or not handler.needs_bounded_loops:
            return jax.lax.while_loop(cond_fun, body_fun, init_val)
        raise EstimatorError(
            f"je.while_loop under je.{handler.name}(): pass max_iterations= (a static bound "
            "on the number of iterations); reverse-mode differentiation and the estimator's "
            "per-iteration records need it. A loop still running after max_iterations "
            "gives NaN."
        )
    n = _check_max_iterations(max_iterations)

    def step(x: Any, _: Any) -> tuple[Any, None]:
        return cond(cond_fun(x), body_fun, lambda v: v, x), None

    out, _ = scan(step, init_val, None, length=n)
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

    def wrap(i: int) -> Callable[..., Any]:
        def run(st: Any, ops: tuple) -> Any:
            child = handler.spawn(handler.branch_child(st, i, layout), "branch")
            with child:
                out = branches[i](*ops)
            used.append(child)
            st_out, records = child.branch_outputs(layout)
            return out, st_out, records

        return run

    wrapped = [wrap(i) for i in range(len(branches))]
    out, st_out, records = jax.lax.switch(index, wrapped, state, operands)
    handler.absorb_branches(st_out, records, layout)
    for child in used:
        for k in child._keys:
            if not any(k is j for j in handler._keys):
                handler._keys.append(k)
    return out


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
