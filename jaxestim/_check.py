"""``je.check``: find operations that silently lose the gradient of a stochastic program.

Autodiff returns a gradient of exactly zero -- without any error -- through operations that
are piecewise constant or that leave floating point, and it never differentiates a random
draw with respect to the parameters of its distribution. In a stochastic program this
happens when

* randomness is drawn with ``jax.random.bernoulli`` / ``categorical`` / ... (or a
  distribution's own ``.sample``) instead of :func:`jaxestim.sample`, with parameters that
  depend on the differentiated arguments, or
* a pathwise or relaxed sample (or the parameters themselves) only feed comparisons,
  ``argmax``, ``floor``/``round``/``sign`` or integer casts, or
* a pathwise or relaxed sample reaches the output only through ``stop_gradient`` (PyTorch's
  ``sample()`` where ``rsample()`` was meant).

It also reports a :func:`jaxestim.cost` declaration whose value the returned objective does
not depend on: the objective then excludes the cost.

:func:`check` traces the program once, under the estimator's own sample-site handler (so
every ``je.sample`` site behaves as it does in :func:`jaxestim.grad`), and reports those
operations with the line of user code that created them.

The rule (a dependence analysis on the program's jaxpr):

1. *Forward.* A value depends on the parameters when autodiff would propagate a tangent to
   it from a floating leaf of the differentiated argument(s): through every floating-point
   operation, but not through comparisons, ``floor``/``ceil``/``round``/``sign``,
   ``argmax``/``argmin``, ``stop_gradient`` or any operation with an integer, boolean or key
   result. It recurses into ``jit``, ``scan``, ``while``, ``cond``, ``remat`` and other call
   primitives (loops to a fixed point). ``custom_jvp``/``custom_vjp`` functions are opaque:
   every floating output depends on every floating input, and nothing inside them is
   reported, because their derivative is defined by their own rule.
2. *Backward.* A value is *live* when it influences the program's output (or the
   log-probabilities recorded by score-function sites), and *differentiably live* when it
   does so through operations autodiff differentiates.
3. An operation is reported when it is one of the above, an operand depends on the
   parameters and its result is live. It is an **error** when the operand reaches the
   output only through such operations (its gradient contribution is exactly zero), or for
   every ``jax.random`` draw (the dependence through its parameters is always lost), and a
   **warning** when the operand also reaches the output differentiably (then the gradient
   is right only if the output is continuous where the comparison flips, e.g.
   ``jnp.where(x > 0, x, 0.0)``).
4. ``stop_gradient`` is reported (an error) when its operand descends from a ``je.sample``
   site that carries a tangent (pathwise, straight-through, relaxed) and neither the
   operand nor any sample-derived value it is computed from is differentiably live: the
   sample's whole dependence on the parameters is dropped. Constructions that keep it
   (``x - stop_gradient(x)``, ``s + stop_gradient(h - s)``), ``stop_gradient`` of the
   parameters or of parameter-free noise, and score-function samples are not reported.
5. ``je.cost``: the program is traced once more under plain sampling, with every
   declaration marked, and a declaration is reported when its value (or the same
   operations on the same inputs) is not live for the returned value (``aux`` does not
   count). Declaring a cost never adds it to the objective.

``je.sample`` sites are library code: what happens inside a site (inverse-CDF sampling of a
discrete site, which is stop-gradiented by design; ``jnp.where`` guards in log-densities;
the hard sample of ``gumbel_softmax(hard=True)``) is never reported, but the dependence
still propagates through it exactly as the estimator makes it: a score-function or
``stochastic_ad`` discrete sample carries no tangent (its gradient comes from the
log-probability or from jumps), so comparisons on it are fine; a pathwise, straight-through
or relaxed sample does carry one. Operations are attributed by their source traceback: an
operation whose innermost non-JAX frame is inside the ``jaxestim`` package counts as library
code.

Limits: only what is traced is seen. Python control flow on concrete values (``if x > 0:``
on a non-traced value), NumPy computations on concrete arrays and host callbacks are
invisible, and a traced ``bool(x > 0)`` fails to trace in the first place. The analysis is
structural, not numeric: a comparison whose outcome never actually flips, or a jump that
cancels, is still reported, and the verdict is per operation, not a bound on the bias.
:func:`jaxestim.finite_difference` never differentiates through the program, so nothing is
reported for it. The ``je.cost`` trace samples every site plainly; a program whose sites
cannot run that way (numpyro sites) is not checked for costs.
"""

from __future__ import annotations

import dataclasses
import functools
import linecache
import os
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend import core as jcore

from jaxestim import _handlers
from jaxestim._errors import EstimatorError
from jaxestim._estimator import Estimator
from jaxestim._handlers import Handler, WholeProgramHandler
from jaxestim._surrogate import SurrogateHandler
from jaxestim._util import check_key, is_user_filename
from jaxestim.estimators import Auto, FiniteDifference

__all__ = ["CheckReport", "Finding", "check"]

_DEP = 1  # carries a tangent from the differentiated arguments
_SITE = 2  # ... and descends from a je.sample site

_COMPARISONS = {"lt": "<", "gt": ">", "le": "<=", "ge": ">=", "eq": "==", "ne": "!="}
_ROUNDING = frozenset({"floor", "ceil", "round", "sign"})
_ARGMAX = frozenset({"argmax", "argmin"})
_NO_TANGENT = frozenset(_COMPARISONS) | _ROUNDING | _ARGMAX | {"stop_gradient"}
_OPAQUE = frozenset({"custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr"})
# operations that pass a value through unchanged (for "is the operand used elsewhere?")
_PASS_THROUGH = frozenset(
    {"convert_element_type", "copy", "copy_p", "reshape", "broadcast_in_dim", "squeeze"}
)

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))
_FOREIGN_FILE = os.path.join(_PKG_DIR, "distributions", "_foreign.py")
_USER_FILES_IN_PKG = frozenset({"_gallery.py", "__main__.py"})
_RANDOM_DIR = os.sep.join(("jax", "_src", "random"))
_NN_DIR = os.sep.join(("jax", "_src", "nn"))

_RANDOM_SUGGEST = {
    "bernoulli": "D.Bernoulli(probs=...)",
    "categorical": "D.Categorical(logits=...)",
    "choice": "D.Categorical(probs=...)",
    "poisson": "D.Poisson(rate=...)",
    "binomial": "D.Binomial(total_count, probs=...)",
    "geometric": "D.Geometric(probs=...)",
}


# ----------------------------------------------------------------------------------------
# public types
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Finding:
    """One operation through which the gradient is silently lost.

    Attributes:
      kind: ``"comparison"``, ``"rounding"`` (floor/ceil/round/sign), ``"integer_cast"``,
        ``"argmax"``, ``"jax_random"`` (a ``jax.random`` draw with parameter-dependent
        arguments), ``"distribution_sample"`` (a distribution's ``.sample`` called outside
        ``je.sample``), ``"stop_gradient"`` (of a pathwise or relaxed sample, whose
        dependence on the parameters is dropped) or ``"unused_cost"`` (a ``je.cost``
        declaration the returned value does not depend on).
      primitive: the JAX primitive (``"gt"``, ``"floor"``, ``"convert_element_type"``, ...;
        ``"cost"`` for ``"unused_cost"``).
      source: ``"file:line (function)"`` of the user's code that created it.
      message: what happens to the gradient, in plain English.
      suggestion: which jaxestim estimator or construct to use instead.
      severity: ``"error"`` (the dependence through this operation is lost entirely) or
        ``"warning"`` (the operand also reaches the output differentiably; correct only if
        the output is continuous where the operation switches).
      code: the source line, when available.
    """

    kind: str
    primitive: str
    source: str
    message: str
    suggestion: str
    severity: str = "error"
    code: str = ""

    def __str__(self) -> str:
        lines = [f"[{self.severity}] {self.source}: {self.kind} ({self.primitive})"]
        if self.code:
            lines.append(f"    > {self.code}")
        wrap = dict(width=92, initial_indent="    ", subsequent_indent="    ")
        lines.append(textwrap.fill(self.message, **wrap))
        lines.append(textwrap.fill("suggestion: " + self.suggestion, **wrap))
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class CheckReport:
    """What :func:`check` found; prints as a readable report.

    ``ok`` is true when there is no finding at all (errors or warnings); :meth:`raise_if_any`
    raises :class:`jaxestim.EstimatorError` with the report text otherwise. The report
    deliberately defines no truth value: test ``report.ok``.
    """

    findings: tuple[Finding, ...]
    estimator: str = "auto"
    note: str = ""

    @property
    def ok(self) -> bool:
        """No findings."""
        return not self.findings

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == "error")

    @property
    def warnings(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == "warning")

    def __str__(self) -> str:
        head = f"je.check (estimator: {self.estimator}): "
        if not self.findings:
            text = head + "no problems found"
            return f"{text} ({self.note})" if self.note else text
        ne, nw = len(self.errors), len(self.warnings)
        head += f"{ne} error(s), {nw} warning(s) where the gradient is silently lost"
        return "\n".join([head, *(str(f) for f in self.findings)])

    def raise_if_any(self) -> None:
        """Raise :class:`jaxestim.EstimatorError` with the report text if anything was found."""
        if self.findings:
            raise EstimatorError(str(self))


# ----------------------------------------------------------------------------------------
# where an equation comes from
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Ctx:
    """Origin of an equation: user code, inside a je.sample site, or other library code."""

    where: str  # "user" | "site" | "dist_sample" | "cost" | "library"
    source: str = "<unknown>"
    code: str = ""
    random_fn: str | None = None  # the jax.random function the user called, if any
    in_nn: bool = False  # inside a jax.nn function (continuous activations: no warnings)
    entry: str = ""  # the jaxestim function the user called (library contexts)


_ROOT = _Ctx("user")


def _is_library(filename: str) -> bool:
    path = os.path.abspath(filename)
    return path.startswith(_PKG_DIR + os.sep) and os.path.basename(path) not in (_USER_FILES_IN_PKG)


def _is_jax_random(filename: str) -> bool:
    return _RANDOM_DIR in os.path.normpath(filename)


def _format_source(filename: str, line: int, function: str) -> tuple[str, str]:
    rel = os.path.relpath(filename) if os.path.isabs(filename) else filename
    if rel.startswith(".."):
        rel = filename
    code = linecache.getline(filename, line).strip() if line > 0 else ""
    return f"{rel}:{line} ({function})", code


def _eqn_ctx(eqn: Any, parent: _Ctx) -> _Ctx:
    """Classify ``eqn`` by its traceback; inherit ``parent`` when it has no user frame.

    (Equations inside JAX's own jitted helpers, e.g. the body of ``jax.random.bernoulli``,
    carry no traceback or only JAX frames: they belong to the call that contains them.)
    """
    tb = eqn.source_info.traceback
    if tb is None:
        return parent
    try:
        codes, lastis = tb.raw_frames()  # innermost first
    except Exception:  # pragma: no cover - defensive
        return parent
    u = next((i for i, c in enumerate(codes) if is_user_filename(c.co_filename)), None)
    random_fn, in_nn = None, False
    for c in codes[: len(codes) if u is None else u]:  # JAX frames inside the user's call
        if _is_jax_random(c.co_filename):
            random_fn = c.co_name  # the outermost one: the function the user called
        in_nn = in_nn or _NN_DIR in os.path.normpath(c.co_filename)
    if u is None:  # a (cut) traceback of JAX frames only: part of the enclosing call
        if (random_fn is None or parent.random_fn is not None) and (in_nn <= parent.in_nn):
            return parent
        return dataclasses.replace(
            parent, random_fn=parent.random_fn or random_fn, in_nn=parent.in_nn or in_nn
        )
    entry, user = None, None
    # frames of a numpyro sampler run by je.sample (inside jaxestim's foreign-distribution
    # adapter) belong to the site, like jaxestim's own samplers
    foreign = any(os.path.abspath(c.co_filename) == _FOREIGN_FILE for c in codes[u:])
    for j in range(u, len(codes)):
        c = codes[j]
        if not is_user_filename(c.co_filename):
            continue
        if _is_library(c.co_filename) or foreign:
            foreign = foreign and os.path.abspath(c.co_filename) != _FOREIGN_FILE
            entry = c
            continue
        user = j
        break
    if user is None:
        return _Ctx("library")
    c = codes[user]
    line = _line_of(c, lastis[user])
    source, code = _format_source(c.co_filename, line, c.co_qualname)
    if entry is None:
        return _Ctx("user", source, code, random_fn, in_nn)
    name = entry.co_qualname
    if entry.co_name == "sample" and entry.co_filename == _handlers.sample.__code__.co_filename:
        return _Ctx("site", source, code, entry=name)
    if entry.co_name == "cost" and entry.co_filename == _handlers.cost.__code__.co_filename:
        return _Ctx("cost", source, code, entry=name)
    dist_dir = os.path.join(_PKG_DIR, "distributions")
    if entry.co_name == "sample" and os.path.abspath(entry.co_filename).startswith(dist_dir):
        return _Ctx("dist_sample", source, code, entry=name)
    return _Ctx("library", source, code, entry=name)


def _line_of(code: Any, lasti: int) -> int:
    try:
        from jax._src.source_info_util import raw_frame_to_frame

        return raw_frame_to_frame(code, lasti).start_line
    except Exception:  # pragma: no cover - defensive
        return code.co_firstlineno


# ----------------------------------------------------------------------------------------
# the dependence analysis
# ----------------------------------------------------------------------------------------


def _is_float(aval: Any) -> bool:
    dtype = getattr(aval, "dtype", None)
    try:
        return dtype is not None and jnp.issubdtype(dtype, jnp.inexact)
    except TypeError:  # extended dtypes (PRNG keys)
        return False


def _var(v: Any) -> bool:
    return isinstance(v, jcore.Var) and not isinstance(v, jcore.DropVar)


def _inner(j: Any) -> Any:
    return j.jaxpr if isinstance(j, jcore.ClosedJaxpr) else j


def _call_jaxpr(eqn: Any) -> Any:
    """The body of a call-like equation (jit, remat, closed_call, ...) with matching arity."""
    if eqn.primitive.name in _OPAQUE:
        return None
    for name in ("jaxpr", "call_jaxpr"):
        j = _inner(eqn.params.get(name))
        if (
            isinstance(j, jcore.Jaxpr)
            and len(j.invars) == len(eqn.invars)
            and len(j.outvars) == len(eqn.outvars)
        ):
            return j
    return None


def _or(a: Sequence[bool], b: Sequence[bool]) -> list[bool]:
    return [x or y for x, y in zip(a, b, strict=True)]


def _ormask(a: Sequence[int], b: Sequence[int]) -> list[int]:
    return [x | y for x, y in zip(a, b, strict=True)]


@dataclasses.dataclass
class _Pending:
    eqn: Any
    ctx: _Ctx
    kind: str
    operands: list[Any]
    site: bool


class _Analysis:
    def __init__(self) -> None:
        self._fwd: dict[tuple, tuple[list[int], dict]] = {}
        self._ctx: dict[tuple[int, _Ctx], _Ctx] = {}
        self._keep: list[Any] = []
        self.findings: dict[tuple[str, str, str], Finding] = {}
        # je.cost declarations marked by _CostProbe: id(eqn) -> (eqn, ctx); those whose
        # declared value reaches the output
        self.costs: dict[int, tuple[Any, _Ctx]] = {}
        self.costs_used: set[int] = set()

    def ctx(self, eqn: Any, parent: _Ctx) -> _Ctx:
        key = (id(eqn), parent)
        if key not in self._ctx:
            self._keep.append(eqn)
            self._ctx[key] = _eqn_ctx(eqn, parent)
        return self._ctx[key]

    # -- forward: which values carry a tangent --------------------------------------------
    def forward(self, jaxpr: Any, in_masks: Sequence[int], ctx: _Ctx) -> tuple[list[int], dict]:
        key = (id(jaxpr), tuple(in_masks), ctx)
        if key in self._fwd:
            return self._fwd[key]
        self._keep.append(jaxpr)
        env: dict[Any, int] = {}
        for v, m in zip(jaxpr.invars, in_masks, strict=True):
            env[v] = m
        for eqn in jaxpr.eqns:
            ectx = self.ctx(eqn, ctx)
            if ectx.where == "cost" and eqn.primitive.name == "optimization_barrier":
                self.costs[id(eqn)] = (eqn, ectx)
            ins = [env.get(v, 0) if _var(v) else 0 for v in eqn.invars]
            outs = self._eqn_forward(eqn, ins, ectx)
            for v, m in zip(eqn.outvars, outs, strict=True):
                if not _is_float(v.aval):
                    m = 0
                elif ectx.where == "site" and m & _DEP:
                    m |= _SITE
                env[v] = m
        out = [env.get(v, 0) if _var(v) else 0 for v in jaxpr.outvars]
        self._fwd[key] = (out, env)
        return out, env

    def _eqn_forward(self, eqn: Any, ins: list[int], ctx: _Ctx) -> list[int]:
        n_out = len(eqn.outvars)
        name = eqn.primitive.name
        if name in _NO_TANGENT:
            return [0] * n_out
        sub = _call_jaxpr(eqn)
        if sub is not None:
            return self.forward(sub, ins, ctx)[0]
        if name == "cond":
            out = [0] * n_out
            for br in eqn.params["branches"]:
                out = _ormask(out, self.forward(_inner(br), ins[1:], ctx)[0])
            return out
        if name == "scan":
            body_in = self._scan_in(eqn, ins, ctx)
            return self.forward(_inner(eqn.params["jaxpr"]), body_in, ctx)[0]
        if name == "while":
            return self._while_carry(eqn, ins, ctx)
        m = 0
        for x in ins:
            m |= x
        return [m] * n_out

    def _scan_in(self, eqn: Any, ins: list[int], ctx: _Ctx) -> list[int]:
        """Body input masks of a scan at the fixed point of the carry."""
        nc, ncar = eqn.params["num_consts"], eqn.params["num_carry"]
        body = _inner(eqn.params["jaxpr"])
        consts, carry, xs = ins[:nc], list(ins[nc : nc + ncar]), ins[nc + ncar :]
        while True:
            out = self.forward(body, [*consts, *carry, *xs], ctx)[0]
            new = _ormask(carry, out[:ncar])
            if new == carry:
                return [*consts, *carry, *xs]
            carry = new

    def _while_carry(self, eqn: Any, ins: list[int], ctx: _Ctx) -> list[int]:
        p = eqn.params
        cn, bn = p["cond_nconsts"], p["body_nconsts"]
        body = _inner(p["body_jaxpr"])
        bconsts, carry = ins[cn : cn + bn], list(ins[cn + bn :])
        while True:
            out = self.forward(body, [*bconsts, *carry], ctx)[0]
            new = _ormask(carry, out)
            if new == carry:
                return carry
            carry = new

    # -- backward: which values reach the output (differentiably) --------------------------
    def backward(
        self,
        jaxpr: Any,
        in_masks: Sequence[int],
        ctx: _Ctx,
        out_live: Sequence[bool],
        out_dlive: Sequence[bool],
        collect: bool,
    ) -> tuple[list[bool], list[bool]]:
        _, env = self.forward(jaxpr, in_masks, ctx)
        live: set[Any] = set()
        dlive: set[Any] = set()
        for v, lv, dl in zip(jaxpr.outvars, out_live, out_dlive, strict=True):
            if _var(v):
                if lv:
                    live.add(v)
                if dl and _is_float(v.aval):
                    dlive.add(v)
        pending: list[_Pending] = []
        costs: list[Any] = []
        for eqn in reversed(jaxpr.eqns):
            if id(eqn) in self.costs:
                costs.append(eqn)
            ol = [v in live for v in eqn.outvars]
            if not any(ol):
                continue
            od = [v in dlive for v in eqn.outvars]
            ectx = self.ctx(eqn, ctx)
            ins = [env.get(v, 0) if _var(v) else 0 for v in eqn.invars]
            il, idl = self._eqn_backward(eqn, ins, ectx, ol, od, collect)
            for v, a, b in zip(eqn.invars, il, idl, strict=True):
                if _var(v):
                    if a:
                        live.add(v)
                    if b and _is_float(v.aval):
                        dlive.add(v)
            if collect:
                p = self._candidate(eqn, ins, ectx)
                if p is not None:
                    pending.append(p)
        defs = {v: e for e in jaxpr.eqns for v in e.outvars} if pending or costs else {}
        for eqn in costs:  # the declared value is used (whether or not je.cost's return is),
            (v,) = eqn.invars  # or recomputed by the same operations for what is used
            if not _var(v) or v in live or any(_same(v, u, defs) for u in live):
                self.costs_used.add(id(eqn))
        if pending:
            for p in pending:
                self._report(p, dlive, defs, env)
        return [v in live for v in jaxpr.invars], [v in dlive for v in jaxpr.invars]

    def _eqn_backward(
        self,
        eqn: Any,
        ins: list[int],
        ctx: _Ctx,
        ol: list[bool],
        od: list[bool],
        collect: bool,
    ) -> tuple[list[bool], list[bool]]:
        n = len(eqn.invars)
        name = eqn.primitive.name
        any_l, any_d = any(ol), any(od)
        if name in _NO_TANGENT:
            return [any_l] * n, [False] * n
        if name == "select_n":
            return [any_l] * n, [False] + [any_d] * (n - 1)
        sub = _call_jaxpr(eqn)
        if sub is not None:
            return self.backward(sub, ins, ctx, ol, od, collect)
        if name == "cond":
            il, idl = [False] * (n - 1), [False] * (n - 1)
            for br in eqn.params["branches"]:
                a, b = self.backward(_inner(br), ins[1:], ctx, ol, od, collect)
                il, idl = _or(il, a), _or(idl, b)
            return [any_l, *il], [False, *idl]
        if name == "scan":
            return self._scan_backward(eqn, ins, ctx, ol, od, collect)
        if name == "while":
            return self._while_backward(eqn, ins, ctx, ol, od, collect)
        return [any_l] * n, [any_d] * n

    def _scan_backward(self, eqn, ins, ctx, ol, od, collect):
        nc, ncar = eqn.params["num_consts"], eqn.params["num_carry"]
        body = _inner(eqn.params["jaxpr"])
        body_in = self._scan_in(eqn, ins, ctx)
        cl, cd = list(ol[:ncar]), list(od[:ncar])
        yl, yd = ol[ncar:], od[ncar:]
        while True:
            il, idl = self.backward(body, body_in, ctx, [*cl, *yl], [*cd, *yd], False)
            nl, nd = _or(cl, il[nc : nc + ncar]), _or(cd, idl[nc : nc + ncar])
            if nl == cl and nd == cd:
                break
            cl, cd = nl, nd
        if collect:
            il, idl = self.backward(body, body_in, ctx, [*cl, *yl], [*cd, *yd], True)
        return (
            [*il[:nc], *cl, *il[nc + ncar :]],
            [*idl[:nc], *cd, *idl[nc + ncar :]],
        )

    def _while_backward(self, eqn, ins, ctx, ol, od, collect):
        p = eqn.params
        cn, bn = p["cond_nconsts"], p["body_nconsts"]
        cond, body = _inner(p["cond_jaxpr"]), _inner(p["body_jaxpr"])
        carry = self._while_carry(eqn, ins, ctx)
        cconsts, bconsts = ins[:cn], ins[cn : cn + bn]
        cl, cd = list(ol), list(od)
        any_l = any(ol)

        def run(collect_now: bool):
            a, _ = self.backward(cond, [*cconsts, *carry], ctx, [any_l], [False], collect_now)
            b, bd = self.backward(body, [*bconsts, *carry], ctx, cl, cd, collect_now)
            return a, b, bd

        while True:
            a, b, bd = run(False)
            nl = _or(_or(cl, b[bn:]), a[cn:])
            nd = _or(cd, bd[bn:])
            if nl == cl and nd == cd:
                break
            cl, cd = nl, nd
        if collect:
            a, b, bd = run(True)
        return [*a[:cn], *b[:bn], *cl], [False] * cn + [*bd[:bn], *cd]

    # -- findings -------------------------------------------------------------------------
    def _candidate(self, eqn: Any, ins: list[int], ctx: _Ctx) -> _Pending | None:
        if ctx.where not in ("user", "dist_sample"):
            return None
        ops = [v for v, m in zip(eqn.invars, ins, strict=True) if m & _DEP]
        if not ops:
            return None
        name = eqn.primitive.name
        if ctx.where == "dist_sample":
            kind = "distribution_sample" if name == "stop_gradient" else None
        elif name in _COMPARISONS:
            kind = "comparison"
        elif name in _ROUNDING:
            kind = "rounding"
        elif name in _ARGMAX:
            kind = "argmax"
        elif name == "convert_element_type" and not _is_float(eqn.outvars[0].aval):
            kind = "integer_cast"
        elif name == "stop_gradient" and any(m & _SITE for m in ins):
            kind = "stop_gradient"
        else:
            kind = None
        if kind is None or (kind == "comparison" and _is_guard(eqn)):
            return None
        if ctx.where == "user" and ctx.random_fn is not None:
            kind = "jax_random"
        site = any(m & _SITE for m in ins)
        return _Pending(eqn, ctx, kind, ops, site)

    def _report(
        self, p: _Pending, dlive: set[Any], defs: dict[Any, Any], env: dict[Any, int]
    ) -> None:
        severity = "error"
        if p.kind == "stop_gradient" and _sample_kept(p.operands, dlive, defs, env):
            return
        if p.kind in ("comparison", "rounding", "argmax", "integer_cast"):
            if any(_reaches(v, dlive, defs) for v in p.operands):
                if p.ctx.in_nn:  # jax.nn's piecewise activations are continuous
                    return
                severity = "warning"
        key = (p.ctx.source, p.kind, p.ctx.random_fn or p.ctx.entry or "")
        old = self.findings.get(key)
        if old is not None and (old.severity == "error" or severity == "warning"):
            return
        message, suggestion = _describe(p, severity)
        self.findings[key] = Finding(
            kind=p.kind,
            primitive=p.eqn.primitive.name,
            source=p.ctx.source,
            message=message,
            suggestion=suggestion,
            severity=severity,
            code=p.ctx.code,
        )


def _is_guard(eqn: Any) -> bool:
    """``x != x`` (isnan) or a comparison with an infinite or NaN constant (isinf)."""
    a, b = eqn.invars
    if a is b:
        return True
    for v in (a, b):
        if isinstance(v, jcore.Literal):
            try:
                val = float(v.val)
            except (TypeError, ValueError):
                continue
            if val != val or val in (float("inf"), float("-inf")):
                return True
    return False


def _sample_kept(
    operands: list[Any], dlive: set[Any], defs: dict[Any, Any], env: dict[Any, int]
) -> bool:
    """Whether a sample-derived value that ``operands`` are computed from (or an operand
    itself) is differentiably live: then the stop-gradient only removes part of the
    dependence on purpose (``x + stop_gradient(h - x)``, ``x - stop_gradient(x)``)."""
    stack, seen = [v for v in operands if _var(v)], set()
    while stack:
        v = stack.pop()
        if v in seen or not env.get(v, 0) & _SITE:
            continue
        if v in dlive:
            return True
        seen.add(v)
        e = defs.get(v)
        if e is not None and e.primitive.name not in _NO_TANGENT:
            stack.extend(u for u in e.invars if _var(u))
    return False


def _same(a: Any, b: Any, defs: dict[Any, Any], depth: int = 8) -> bool:
    """Whether ``a`` and ``b`` are computed by the same operations from the same inputs."""
    if a is b:
        return True
    if isinstance(a, jcore.Literal) and isinstance(b, jcore.Literal):
        return a.aval == b.aval and bool(jnp.all(jnp.asarray(a.val) == jnp.asarray(b.val)))
    if depth == 0 or not (_var(a) and _var(b)):
        return False
    ea, eb = defs.get(a), defs.get(b)
    if ea is None or eb is None or ea.primitive is not eb.primitive:
        return False
    if a.aval != b.aval or ea.outvars.index(a) != eb.outvars.index(b):
        return False
    try:
        if ea.params != eb.params:
            return False
    except Exception:  # params without a usable equality
        return False
    return len(ea.invars) == len(eb.invars) and all(
        _same(x, y, defs, depth - 1) for x, y in zip(ea.invars, eb.invars, strict=True)
    )


def _reaches(v: Any, dlive: set[Any], defs: dict[Any, Any]) -> bool:
    """Whether ``v`` (or the value it is a pass-through copy of) is differentiably live."""
    seen = 0
    while _var(v) and seen < 64:
        if v in dlive:
            return True
        e = defs.get(v)
        if e is None or e.primitive.name not in _PASS_THROUGH or not e.invars:
            return False
        if not _is_float(e.outvars[0].aval):
            return False
        v = e.invars[0]
        seen += 1
    return False


def _describe(p: _Pending, severity: str) -> tuple[str, str]:
    name = p.eqn.primitive.name
    dep = "a value that depends on the differentiated argument(s)"
    only = (
        " That value reaches the output only through this operation, so its gradient "
        "contribution is exactly zero."
    )
    also = (
        " The value also reaches the output through differentiable operations, so the "
        "gradient is right only if the output is continuous where this switches (like "
        "jnp.where(x > 0, x, 0.0)); a jump there is ignored."
    )
    tail = only if severity == "error" else also
    if p.kind == "jax_random":
        fn = p.ctx.random_fn
        d = _RANDOM_SUGGEST.get(fn or "", "the matching je.distributions family")
        return (
            f"jax.random.{fn} draws with parameters that depend on the differentiated "
            "argument(s); autodiff never differentiates a draw with respect to its "
            "distribution's parameters, so this dependence is lost (the gradient through the "
            "draw is silently zero).",
            f"Draw it with je.sample(key, {d}) and differentiate with je.score_function() or "
            "je.stochastic_ad() (or the biased je.straight_through() / je.gumbel_softmax() "
            "relaxations).",
        )
    if p.kind == "distribution_sample":
        return (
            f"A distribution's .sample() ({p.ctx.entry}) is called directly, outside "
            "je.sample: discrete families stop the gradient at their parameters there, so "
            "the dependence of the draw on the differentiated argument(s) is lost (the "
            "gradient through it is zero).",
            "Draw it with je.sample(key, dist) so the transform's estimator handles the site "
            "(e.g. je.score_function() or je.stochastic_ad()).",
        )
    if p.kind == "stop_gradient":
        return (
            "stop_gradient of a value computed from a je.sample site that the estimator "
            "differentiates pathwise or through a relaxation: the sample's dependence on the "
            "differentiated argument(s) is dropped, and the sample reaches the output only "
            "through this operation, so the gradient ignores how it moves with them (like "
            "PyTorch's sample() where rsample() was meant).",
            "Use the sample directly (without stop_gradient) so that the pathwise gradient "
            "includes it; if the dependence is meant to enter through the log-probability, "
            "differentiate the site with the score function (je.sample(key, dist, "
            "estimator=je.score_function('leave_one_out')), or je.score_function() for the "
            "program).",
        )
    if p.kind == "comparison":
        what = (
            f"The comparison `{_COMPARISONS[name]}` ({name}) of {dep} returns a boolean, which "
            "carries no derivative: the gradient does not see where its outcome flips."
        )
    elif p.kind == "rounding":
        what = (
            f"`{name}` of {dep} is piecewise constant: its derivative is zero wherever it "
            "exists, and the jumps are ignored."
        )
    elif p.kind == "argmax":
        what = (
            f"`{name}` of {dep} returns an integer index, which carries no derivative: the "
            "gradient ignores which index is selected."
        )
    else:
        dtype = p.eqn.params.get("new_dtype", p.eqn.outvars[0].aval.dtype)
        what = (
            f"Converting {dep} to {jnp.dtype(dtype).name} drops its derivative (integer and "
            "boolean arrays carry none)."
        )
    what += tail
    if p.site:
        what += (
            " The value comes from a je.sample site that the estimator differentiates "
            "pathwise or through a relaxation, which assumes the program is differentiable "
            "in the sample."
        )
        suggestion = (
            "Differentiate that site with the score function (je.sample(key, dist, "
            "estimator=je.score_function('leave_one_out')), or je.score_function() for the "
            "program; je.stochastic_ad() also works for discrete sites), or smooth the step "
            "(e.g. jax.nn.sigmoid(x / tau) instead of x > 0)."
        )
    elif severity == "warning":
        suggestion = (
            "Harmless if the output is continuous where this switches; otherwise smooth the "
            "switch (e.g. a sigmoid) or use je.finite_difference(), which does not rely on "
            "autodiff."
        )
    else:
        suggestion = (
            "Keep the dependence differentiable (stay in floating point, smooth the step), or, "
            "if the value is random, draw it with je.sample(key, dist) and use "
            "je.score_function() / je.stochastic_ad(); je.finite_difference() handles any "
            "program."
        )
    return what, suggestion


# ----------------------------------------------------------------------------------------
# je.check
# ----------------------------------------------------------------------------------------


class _CostProbe(Handler):
    """Plain sampling at every site; marks each :func:`jaxestim.cost` declaration with an
    identity equation (``optimization_barrier``) that the analysis finds by its source."""

    needs_bounded_loops = False
    name = "check"

    def sample(self, key, dist, sample_shape, estimator, mask):
        return dist.sample(key, sample_shape)

    def cost(self, value: jax.Array) -> jax.Array:
        return jax.lax.optimization_barrier(value)


def _unused_costs(trace: Callable[..., Any], key: jax.Array, diff: tuple) -> list[Finding]:
    """A finding per ``je.cost`` line whose declared value does not reach the output."""
    try:
        jaxpr = jax.make_jaxpr(trace)(key, diff).jaxpr
    except EstimatorError:  # a site this plain-sampling trace cannot run (numpyro's)
        return []
    analysis = _Analysis()
    n_out = len(jaxpr.outvars)
    analysis.backward(jaxpr, [0] * len(jaxpr.invars), _ROOT, [True] * n_out, [False] * n_out, False)
    found: dict[str, Finding] = {}
    for i, (_, ctx) in analysis.costs.items():
        if i in analysis.costs_used or ctx.source in found:
            continue
        found[ctx.source] = Finding(
            kind="unused_cost",
            primitive="cost",
            source=ctx.source,
            message=(
                "This je.cost declaration's value does not reach the value the program "
                "returns, so the objective excludes the cost: its contribution to the "
                "gradient is exactly zero (declaring a cost does not add it to the objective)."
            ),
            suggestion=(
                "Return the total of the declared costs (plus any terminal terms), e.g. "
                "accumulate je.cost(c_t) in the loop carry; drop the declaration if the cost "
                "is not part of the objective."
            ),
            code=ctx.code,
        )
    return list(found.values())


def _handler(est: Estimator) -> Any:
    if est.site_level:
        return SurrogateHandler(est, num_samples=2)
    make = getattr(est, "check_handler", None)  # a whole-program estimator's own site rules
    return make() if make is not None else WholeProgramHandler(est.name, est)


def check(
    fun: Callable[..., Any],
    key: jax.Array,
    *args: Any,
    estimator: Estimator | None = None,
    argnums: int | Sequence[int] = 1,
    has_aux: bool = False,
) -> CheckReport:
    """Report operations through which ``je.grad(fun, estimator)`` silently loses gradient.

    Traces ``fun(key, *args)`` once (no compilation, nothing is run) under ``estimator``'s
    sample-site handler, exactly as :func:`jaxestim.grad` would, and reports parameter-
    dependent values that reach the output only through operations autodiff cannot
    differentiate: comparisons, ``floor``/``ceil``/``round``/``sign``, ``argmax``/``argmin``,
    casts to integer or boolean dtypes, ``jax.random`` draws whose parameters (not the key)
    depend on the parameters, a distribution's ``.sample`` called outside ``je.sample``,
    and ``stop_gradient`` of a pathwise or relaxed sample (its dependence on the parameters
    is dropped). It also reports ``je.cost`` declarations whose value the returned value
    does not depend on (the objective excludes the cost); this costs a second trace of the
    program. Parameter-free noise (``theta + jax.random.normal(key)``) and everything
    inside ``je.sample`` sites are fine and not reported. See the module docstring for the
    exact rule and its limits (Python control flow on concrete values and NumPy code are
    invisible).

    Args:
      fun: the program ``fun(key, *args)``, as given to :func:`jaxestim.grad`.
      key: a PRNG key (only traced; its value does not matter).
      *args: the program's arguments.
      estimator: the estimator to check the program under; ``None`` means
        :func:`jaxestim.auto`. :func:`jaxestim.finite_difference` never differentiates
        through the program, so the report is always empty for it.
      argnums: which argument(s) of ``fun`` are differentiated (``>= 1``; 0 is the key).
        Every floating leaf of these (pytree) arguments is a source.
      has_aux: ``fun`` returns ``(value, aux)``; only ``value`` counts as output.

    Returns:
      A :class:`CheckReport` (``report.ok``, ``print(report)``, ``report.raise_if_any()``).

    Raises:
      EstimatorError: when the program cannot run under ``estimator`` at all (the same
        error :func:`jaxestim.grad` raises, e.g. a discrete site whose parameters depend on
        the differentiated arguments under ``je.pathwise()``).
    """
    where = "je.check"
    if not callable(fun):
        raise TypeError(f"{where}: `fun` must be callable, got {type(fun).__name__}")
    check_key(key, where)
    est = Auto() if estimator is None else estimator
    if not isinstance(est, Estimator):
        raise TypeError(
            f"{where}: `estimator` must be a jaxestim estimator (e.g. je.pathwise()) or None, "
            f"got {type(est).__name__}"
        )
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    if not nums or any(isinstance(a, bool) or not isinstance(a, int) for a in nums):
        raise TypeError(f"{where}: `argnums` must be an int or a tuple of ints, got {argnums!r}")
    if any(a < 1 for a in nums):
        raise ValueError(
            f"{where}: `argnums` must index fun's positional arguments after the key (>= 1); "
            f"got {argnums!r}"
        )
    if len(set(nums)) != len(nums):
        raise ValueError(f"{where}: `argnums` has repeated entries: {argnums!r}")
    if max(nums) > len(args):
        raise ValueError(
            f"{where}: `argnums`={argnums!r} but fun was called with {len(args)} argument(s) "
            f"after the key"
        )
    diff = tuple(args[i - 1] for i in nums)
    for i, d in zip(nums, diff, strict=True):
        for leaf in jax.tree_util.tree_leaves(d):
            if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
                raise TypeError(
                    f"{where}: differentiated argument {i} must contain only floating arrays, "
                    f"got a leaf of dtype {jnp.result_type(leaf)}"
                )

    def traced(k: jax.Array, d: tuple, make_handler: Callable[[], Any]) -> Any:
        full = list(args)
        for i, x in zip(nums, d, strict=True):
            full[i - 1] = x
        h = make_handler()
        with h:
            out = fun(k, *full)
        if has_aux:
            if not (isinstance(out, tuple | list) and len(out) == 2):
                raise TypeError(
                    f"{where}: with has_aux=True `fun` must return a pair (value, aux), got "
                    f"{type(out).__name__}"
                )
            out = out[0]
        records = h.logp if isinstance(h, SurrogateHandler) else {}
        return out, records

    try:
        closed = jax.make_jaxpr(functools.partial(traced, make_handler=lambda: _handler(est)))(
            key, diff
        )
    except jax.errors.UnexpectedTracerError as e:
        from jaxestim._transforms import _LEAK_HINT

        raise EstimatorError(_LEAK_HINT) from e

    if isinstance(est, FiniteDifference) or est.name == "finite_difference":
        return CheckReport(
            (),
            est.name,
            "finite differences do not differentiate through the program",
        )

    _raise_derivative_errors(closed, key, diff)
    n_key = len(jax.tree_util.tree_leaves(key))
    in_masks = [0] * n_key + [_DEP] * len(jax.tree_util.tree_leaves(diff))
    jaxpr = closed.jaxpr
    if len(in_masks) != len(jaxpr.invars):  # pragma: no cover - defensive
        raise RuntimeError("je.check: unexpected jaxpr signature")
    n_out = len(jaxpr.outvars)
    analysis = _Analysis()
    analysis.backward(jaxpr, in_masks, _ROOT, [True] * n_out, [True] * n_out, True)
    costs = _unused_costs(functools.partial(traced, make_handler=_CostProbe), key, diff)
    findings = sorted([*analysis.findings.values(), *costs], key=_order)
    return CheckReport(tuple(findings), est.name)


def _raise_derivative_errors(closed: Any, key: jax.Array, diff: tuple) -> None:
    """Raise the error that differentiating the traced program raises, if any.

    Some sites raise only when a derivative passes them (a discrete site under
    ``je.pathwise()`` whose parameters depend on ``diff``, see
    :func:`jaxestim._estimator.without_derivative`); one forward-mode derivative of the
    program's jaxpr is traced abstractly (nothing is compiled or run). A program that forward
    mode cannot differentiate for another reason (a ``jax.custom_vjp`` function) is left to
    the analysis.
    """
    run = jcore.jaxpr_as_fun(closed)
    keys = jax.tree_util.tree_leaves(key)
    primals = [jnp.asarray(x) for x in jax.tree_util.tree_leaves(diff)]
    try:
        jax.eval_shape(lambda *p: jax.jvp(lambda *q: run(*keys, *q), p, p), *primals)
    except EstimatorError:
        raise
    except Exception:  # not differentiable in forward mode: the analysis still runs
        pass


def _order(f: Finding) -> tuple:
    file, _, rest = f.source.rpartition(":")
    line = rest.split(" ", 1)[0]
    return (f.severity != "error", file, int(line) if line.isdigit() else 0, f.kind)
