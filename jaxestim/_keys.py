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

Two rewrites make different spellings of one key number alike: a ``slice`` with
``strides=None`` is the slice with unit strides (``split(key)[1]`` and ``_, k = split(key)``
take the same row), and, for threefry keys in JAX's partitionable mode
(``jax_threefry_partitionable``, read when the value is numbered), ``fold_in(key, i)`` with a
static ``i`` and row ``i`` of ``split(key, n)`` are one value (they are bit-equal there, for
typed and raw ``uint32[2]`` keys; in the other mode they differ and are not rewritten).
:meth:`ValueNumbering.alias` lets control flow say that a traced value is another one (a
branch's input is its operand).

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
#: an input that could not be read (never among the inputs a value is allowed to depend on)
UNKNOWN_INPUT = (-1, -1)
_NO_INPUTS: frozenset[tuple[int, int]] = frozenset()
_UNKNOWN = frozenset({UNKNOWN_INPUT})


class ValueNumbering:
    """Value numbers of traced values (see the module docs); one table per program trace.

    :meth:`number` returns an int; equal ints mean equal values. :meth:`only_depends_on`
    tells whether a value depends only on given inputs (a key in a loop body that depends on
    no input of the body that changes between iterations is the same in every iteration).
    The table keeps every numbered object alive while it lives, so object ids stay unique.
    """

    def __init__(self) -> None:
        self._memo: dict[int, tuple[Any, int]] = {}  # id(obj) -> (obj, number)
        self._table: dict[Hashable, int] = {}
        # by number: the inputs it depends on, as (id of the trace, id of the input variable)
        self._inputs: list[frozenset[tuple[int, int]]] = []

    def number(self, x: Any) -> int:
        """The value number of ``x`` (a tracer, a concrete array, or any other object)."""
        memo = self._memo
        stack = [x]
        seen: dict[int, tuple[Any, list[Any], frozenset]] = {}  # structures read on the way
        while stack:  # iterative post-order walk: key chains may be longer than the C stack
            y = stack[-1]
            if id(y) in memo:
                stack.pop()
                continue
            if id(y) not in seen:  # read once: a rewritten structure has deps made afresh
                seen[id(y)] = _structure(y)
            tag, deps, own = seen[id(y)]
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

    def alias(self, x: Any, of: Any) -> None:
        """Number ``x`` (not numbered yet) as ``of``: the caller knows they are equal values."""
        if id(x) not in self._memo:
            self._memo[id(x)] = (x, self.number(of))

    def input_of(self, x: Any) -> frozenset[tuple[int, int]]:
        """The inputs (arguments of traced functions) that ``x`` depends on, for
        :meth:`only_depends_on`'s ``inputs``."""
        return self._inputs[self.number(x)]

    def only_depends_on(
        self, number: int, traces: set[int], inputs: frozenset[tuple[int, int]] = _NO_INPUTS
    ) -> bool:
        """Whether the value depends on no inputs but those of the traces with ids ``traces``
        and ``inputs`` (from :meth:`input_of`); False where the structure could not be read."""
        return all(i[0] in traces or i in inputs for i in self._inputs[number])

    def _intern(self, tag: Hashable, nums: tuple[int, ...], own: frozenset) -> int:
        n = self._table.get((tag, nums))
        if n is None:
            n = self._table[(tag, nums)] = len(self._inputs)
            self._inputs.append(own.union(*(self._inputs[m] for m in nums)))
        return n


_ALIAS = object()  # tag: the value is its single dependency (a lifted constant)


class _Made:
    """A value that the program computes in another spelling: numbered as ``(tag, deps)``."""

    def __init__(self, tag: Hashable, deps: list[Any]) -> None:
        self.tag, self.deps = tag, deps


def _structure(x: Any) -> tuple[Any, list[Any], frozenset]:
    """``(tag, deps, inputs)``: ``x``'s number is that of ``(tag, numbers of deps)``;
    ``inputs``: the inputs that ``x`` is itself (besides its deps')."""
    if isinstance(x, _JaxprTracer):
        eqn = x.parent
        if eqn is not None:
            row = _threefry_row(eqn)
            if row is not None:
                return row.tag, row.deps, _NO_INPUTS
            return ("out", eqn.outvars.index(x.val)), [eqn], _NO_INPUTS  # Vars compare by id
        atom = x.val
        if isinstance(atom, _Literal):
            return _value_tag(atom.val, x, str(x.aval)), [], _NO_INPUTS
        const = x._trace.frame.constvar_to_val.get(atom, _MISSING)
        if const is not _MISSING:
            return _ALIAS, [const], _NO_INPUTS
        # an argument of the traced function
        return ("input", id(atom)), [], frozenset({(id(x._trace), id(atom))})
    if isinstance(x, _BatchTracer):
        return ("batched", str(x.batch_dim)), [x.val], _NO_INPUTS
    if isinstance(x, _TracingEqn):
        if x.effects:
            return ("unknown", id(x)), [], _UNKNOWN
        params = x.params
        if x.primitive.name == "slice" and params.get("strides") is None:
            params = {**params, "strides": (1,) * len(params["start_indices"])}
        return ("eqn", x.primitive, _freeze(params)), list(x.in_tracers), _NO_INPUTS
    if isinstance(x, _Made):
        return x.tag, x.deps, _NO_INPUTS
    if isinstance(x, jax.core.Tracer):
        return ("unknown", id(x)), [], _UNKNOWN
    return _value_tag(x, x), [], _NO_INPUTS


_MISSING = object()


def _threefry_row(eqn: Any) -> _Made | None:
    """``fold_in(key, i)`` (static ``i``) or row ``i`` of ``split(key, n)`` (typed, or raw
    behind ``random_unwrap``) as one value ``("threefry row", i)`` of ``key``, for a scalar
    threefry key in JAX's partitionable mode, where the two are bit-equal; else None."""
    name = eqn.primitive.name
    if name == "random_fold_in":
        key, data = eqn.in_tracers
        i = _static_int(data)
        return None if i is None else _row(key, i)
    if name != "squeeze" or eqn.params["dimensions"] != (0,):
        return None
    (sliced,) = eqn.in_tracers
    sl = getattr(sliced, "parent", None)
    if sl is None or sl.primitive.name != "slice":
        return None
    start, limit, strides = (sl.params[p] for p in ("start_indices", "limit_indices", "strides"))
    (rows,) = sl.in_tracers
    shape = rows.aval.shape
    whole = tuple(start[1:]) == (0,) * (len(shape) - 1) and tuple(limit[1:]) == shape[1:]
    if not whole or limit[0] != start[0] + 1 or (strides is not None and set(strides) != {1}):
        return None
    unwrap = None
    src = getattr(rows, "parent", None)
    if src is not None and src.primitive.name == "random_unwrap":
        unwrap = src
        src = getattr(src.in_tracers[0], "parent", None)
    if src is None or src.primitive.name != "random_split" or len(src.params["shape"]) != 1:
        return None
    row = _row(src.in_tracers[0], int(start[0]))
    if row is None or unwrap is None:
        return row
    # unwrap(split(k)[i]) = unwrap(k_i): the output of one unwrap equation of the row
    tag = ("eqn", unwrap.primitive, _freeze(unwrap.params))
    return _Made(("out", 0), [_Made(tag, [row])])


def _row(key: Any, i: int) -> _Made | None:
    aval = getattr(key, "aval", None)
    if (
        aval is None
        or aval.shape != ()
        or not jax.dtypes.issubdtype(aval.dtype, jax.dtypes.prng_key)
        or str(jax.random.key_impl(key)) != "threefry2x32"
        or not jax.config.jax_threefry_partitionable
    ):
        return None
    return _Made(("threefry row", i), [key])


def _static_int(x: Any) -> int | None:
    """The value of a scalar integer tracer known at trace time (a literal or a constant)."""
    if not isinstance(x, _JaxprTracer) or x.parent is not None or x.aval.shape != ():
        return None
    atom = x.val
    value = atom.val if isinstance(atom, _Literal) else x._trace.frame.constvar_to_val.get(atom)
    if value is None or isinstance(value, jax.core.Tracer):
        return None
    value = np.asarray(value)
    return int(value) if value.dtype.kind in "iu" else None


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
