"""Sample sites and the effect handlers that intercept them.

A stochastic program draws randomness only through :func:`sample`. With no estimator
transform active, a site simply samples. Inside a transform such as :func:`jaxestim.grad`,
the innermost active :class:`Handler` decides what the site returns (a reparameterized
sample, a relaxed sample, a stop-gradient sample whose log-probability is recorded, ...)
and what it records. Handlers are pushed only for the dynamic extent of the transform's
own tracing of the program, so no state survives a transform or leaks across ``jax.jit``
(the same pattern as numpyro's effect handlers).

Loops: recorded quantities (log-probabilities, jump rates) produced inside a
``jax.lax.scan`` body would escape the body's trace. :func:`scan` and :func:`fori_loop`
run the body under a child handler and return its records as stacked scan outputs, which
the parent handler then absorbs, so a long simulation compiles as one loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

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


class Handler:
    """Base effect handler; a context manager that intercepts :func:`sample` sites.

    Subclasses implement :meth:`sample` and, when they record per-site quantities, the
    loop protocol (:meth:`loop_state`, :meth:`loop_child`, :meth:`loop_outputs`,
    :meth:`absorb_loop`).
    """

    def __enter__(self) -> Handler:
        _stack().append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        popped = _stack().pop()
        assert popped is self, "jaxestim handler stack corrupted"

    def sample(
        self, key: jax.Array, dist: Distribution, sample_shape: tuple[int, ...], estimator: Any
    ) -> jax.Array:
        raise NotImplementedError

    # --- loop protocol -------------------------------------------------------------------
    def loop_state(self) -> Any:
        """Initial loop-carried state of this handler (a pytree)."""
        return None

    def loop_child(self, state: Any) -> Handler:
        """A handler for one loop iteration, starting from ``state``."""
        return self

    def loop_outputs(self) -> tuple[Any, Any]:
        """``(state_out, records)`` after one iteration; records are stacked by the scan."""
        return None, None

    def absorb_loop(self, state: Any, stacked_records: Any) -> None:
        """Take in the final loop state and the records stacked over iterations."""


def sample(
    key: jax.Array,
    dist: Distribution,
    sample_shape: tuple[int, ...] | int = (),
    *,
    estimator: Any = None,
) -> jax.Array:
    """A sample site: draw from ``dist`` using ``key``.

    Outside an estimator transform this is ``dist.sample(key, sample_shape)``. Inside one
    (:func:`jaxestim.grad` and friends) the active estimator decides what the site returns
    and records, so the same program can be differentiated by every estimator.

    Args:
      key: a single PRNG key; the site's randomness is a deterministic function of it, so
        re-running a program with the same key reproduces every draw (the basis of common
        random numbers and of the StochasticAD-style estimator).
      dist: a :mod:`jaxestim.distributions` distribution.
      sample_shape: leading shape of i.i.d. draws.
      estimator: optional per-site override of the transform's estimator. Valid overrides
        are the site-level estimators (:func:`pathwise`, :func:`score_function`,
        :func:`gumbel_softmax`, :func:`straight_through`, :func:`auto`) under a transform
        whose estimator is also site-level; whole-program estimators
        (:func:`finite_difference`, :func:`stochastic_ad`) neither act per site nor accept
        overrides, and either case raises :class:`EstimatorError`. Ignored outside
        transforms.

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
    __import__("jaxestim._validation", fromlist=("_",)).check_site(dist)  # validate=True
    if estimator is not None:
        from jaxestim._estimators import Estimator

        if not isinstance(estimator, Estimator):
            raise TypeError(
                f"je.sample: `estimator` must be a jaxestim estimator or None, got "
                f"{type(estimator).__name__}"
            )
    handler = current_handler()
    if handler is None:
        return dist.sample(key, shape)
    return handler.sample(key, dist, shape, estimator)


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

    def body(carry: Any, x: Any) -> tuple[Any, Any]:
        user_carry, state = carry
        child = handler.loop_child(state)
        with child:
            user_carry, y = f(user_carry, x)
        state_out, records = child.loop_outputs()
        return (user_carry, state_out), (y, records)

    (carry, state), (ys, records) = jax.lax.scan(
        body, (init, handler.loop_state()), xs, length=length, reverse=reverse, unroll=unroll
    )
    handler.absorb_loop(state, records)
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
    then runs as ``jaxestim.scan`` over ``arange(lower, upper)``.
    """
    if current_handler() is None:
        return jax.lax.fori_loop(lower, upper, body_fun, init_val, unroll=unroll)
    lo, hi = concrete(lower), concrete(upper)
    if lo is None or hi is None or lo.ndim or hi.ndim:
        raise EstimatorError(
            "je.fori_loop: under an estimator transform `lower` and `upper` must be static "
            "integers (the per-iteration records are stacked like scan outputs); got "
            f"lower={lower!r}, upper={upper!r}"
        )
    idx = jnp.arange(int(lo), int(hi))
    carry, _ = scan(lambda c, i: (body_fun(i, c), None), init_val, idx, unroll=unroll)
    return carry
