"""Structural equality of PRNG keys at trace time: value numbering of traced values.

Two sample sites whose keys are *equal* draw identical numbers, which the estimators treat
as independent draws. The sites see keys as tracers, so equality of values is not known
when the program is traced; what is known is how each key was computed. This module gives
every traced value a *value number* (hash-consing of the equations that produced it):
two values get the same number when they are the same object, equal concrete arrays, or
outputs (at the same position) of the same primitive with the same parameters applied to
inputs with the same numbers, recursively. Equal numbers imply equal values; unequal
numbers say nothing (keys passed as separate arguments of the program are different
inputs, whatever their values).

The structure is read from JAX internals, used here only: a jaxpr tracer's producing
equation (``DynamicJaxprTracer.parent``: primitive, params, input tracers), the values of
its constants (``frame.constvar_to_val``: a concrete array, or a tracer of an enclosing
trace that the body closed over) and literals, and a ``jax.vmap`` tracer's unbatched value
(``BatchTracer.val``). Anything else -- another tracer type, an equation with effects, a
large constant -- gets a number of its own ("unknown": never equal to anything else).
``tests/test_key_equality.py`` checks that the internals are still readable (if JAX
changes them, detection would stop silently otherwise).

Cost: trace time only, each traced value and equation numbered once (memoized), so linear
in the size of the computation that produced the keys; nothing is added to the program.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import jax
import numpy as np

try:  # private JAX: the only place jaxestim reads a tracer's producing equation
    from jax._src.core import Literal as _Literal
    from jax._src.interpreters.batching import BatchTracer as _BatchTracer
    from jax._src.interpreters.partial_eval import DynamicJaxprTracer as _JaxprTracer
    from jax._src.interpreters.partial_eval import TracingEqn as _TracingEqn
except ImportError:  # pragma: no cover - other JAX versions: every tracer is "unknown"
    _Literal = _BatchTracer = _JaxprTracer = _TracingEqn = ()

#: concrete arrays up to this many elements are numbered by value, larger ones by identity
_MAX_VALUE_ELEMENTS = 1 << 12


class ValueNumbering:
    """Value numbers of traced values (see the module docs); one table per program trace.

    :meth:`number` returns an int; equal ints mean equal values. :meth:`inputs` tells which
    traces' inputs a value depends on (a key in a loop body that depends on no input of the
    body is the same in every iteration). The table keeps every numbered object alive while
    it lives, so object ids stay unique.
    """

    def __init__(self) -> None:
        self._memo: dict[int, tuple[Any, int]] = {}  # id(obj) -> (obj, number)
        self._table: dict[Hashable, int] = {}
        self._inputs: list[frozenset[int]] = []  # by number: ids of the traces of its inputs

    def number(self, x: Any) -> int:
        """The value number of ``x`` (a tracer, a concrete array, or any other object)."""
        memo = self._memo
        stack = [x]
        while stack:  # iterative post-order walk: key chains may be longer than the C stack
            y = stack[-1]
            if id(y) in memo:
                stack.pop()
                continue
            tag, deps, own = _structure(y)
            missing = [d for d in deps if id(d) not in memo]
            if missing:
                stack.extend(missing)
                continue
            stack.pop()
            nums = tuple(memo[id(d)][1] for d in deps)
            n = nums[0] if tag is _ALIAS else self._intern(tag, nums, own)
            memo[id(y)] = (y, n)
        return memo[id(x)][1]

    def combine(self, tag: Hashable, *deps: Any) -> int:
        """The number of a value made by ``tag`` (hashable, compared by ``==``) from ``deps``."""
        return self._intern(tag, tuple(self.number(d) for d in deps), frozenset())

    def inputs(self, number: int) -> frozenset[int]:
        """The ids of the traces whose inputs (function arguments) the value depends on;
        :data:`UNKNOWN_INPUT` among them where the structure could not be read."""
        return self._inputs[number]

    def _intern(self, tag: Hashable, nums: tuple[int, ...], own: frozenset[int]) -> int:
        n = self._table.get((tag, nums))
        if n is None:
            n = self._table[(tag, nums)] = len(self._inputs)
            self._inputs.append(own.union(*(self._inputs[m] for m in nums)))
        return n


_ALIAS = object()  # tag: the value is its single dependency (a lifted constant)
#: in :meth:`ValueNumbering.inputs`: the value may depend on inputs that could not be read
UNKNOWN_INPUT = -1
_NONE: frozenset[int] = frozenset()
_UNKNOWN = frozenset({UNKNOWN_INPUT})


def _structure(x: Any) -> tuple[Any, list[Any], frozenset[int]]:
    """``(tag, deps, inputs)``: ``x``'s number is that of ``(tag, numbers of deps)``;
    ``inputs``: the traces of the inputs that ``x`` is itself (besides its deps')."""
    if isinstance(x, _JaxprTracer):
        eqn = x.parent
        if eqn is not None:
            return ("out", eqn.outvars.index(x.val)), [eqn], _NONE  # Vars compare by id
        atom = x.val
        if isinstance(atom, _Literal):
            return _value_tag(atom.val, x, str(x.aval)), [], _NONE
        const = x._trace.frame.constvar_to_val.get(atom, _MISSING)
        if const is not _MISSING:
            return _ALIAS, [const], _NONE
        # an argument of the traced function
        return ("input", id(atom)), [], frozenset({id(x._trace)})
    if isinstance(x, _BatchTracer):
        return ("batched", str(x.batch_dim)), [x.val], _NONE
    if isinstance(x, _TracingEqn):
        if x.effects:
            return ("unknown", id(x)), [], _UNKNOWN
        return ("eqn", x.primitive, _freeze(x.params)), list(x.in_tracers), _NONE
    if isinstance(x, jax.core.Tracer):
        return ("unknown", id(x)), [], _UNKNOWN
    return _value_tag(x, x), [], _NONE


_MISSING = object()


def _value_tag(value: Any, owner: Any, aval: str | None = None) -> Hashable:
    """Tag of a concrete value: equal small arrays get equal tags, anything else its own.

    ``aval`` (a literal's abstract value) overrides the type read from ``value``.
    """
    try:
        if isinstance(value, jax.Array) and jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
            kind = str(jax.typeof(value))  # names the PRNG implementation
            value = jax.random.key_data(value)
        else:
            kind = aval or str(jax.typeof(value))
        arr = np.asarray(value)
        if arr.size <= _MAX_VALUE_ELEMENTS and arr.dtype != object:
            return ("value", kind, arr.tobytes())
    except Exception:  # not readable (a deleted or non-addressable array, an object)
        pass
    return ("unknown", id(owner))


def _freeze(v: Any) -> Hashable:
    """A hashable stand-in for an equation parameter (equal for equal parameters)."""
    try:
        hash(v)
        return (type(v), v)  # 1, 1.0 and True hash alike
    except TypeError:
        pass
    if isinstance(v, dict):
        return ("dict", tuple(sorted((str(k), _freeze(w)) for k, w in v.items())))
    if isinstance(v, list | tuple):
        return (type(v).__name__, tuple(_freeze(w) for w in v))
    if isinstance(v, np.ndarray):
        return ("ndarray", str(v.dtype), v.shape, v.tobytes())
    return ("id", id(v))
