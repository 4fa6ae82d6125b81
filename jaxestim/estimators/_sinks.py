"""Where a traced value reaches an operation with no useful derivative.

Estimators that differentiate the program at *relaxed* (continuous) values of discrete
sites and claim to be unbiased -- REBAR and RELAX's control variates -- are unbiased only
if the program is a continuous function of those values: reparameterization gradients of
a function with a jump miss the jump. :func:`discontinuities` walks a jaxpr forward from
a tainted input (the relaxed values plus a traced zero) and lists the user-level
operations that the taint reaches and that make the program discontinuous or piecewise
constant in it: comparisons, rounding, ``sign``, ``argmax`` / ``argmin``, casts to
integers or booleans, and the predicates of ``cond`` / ``while``.

Operations inside jaxestim's own distributions and estimators (parameter validity checks,
samplers) and inside continuous ``jax.nn`` activations written with a comparison and a
select (``leaky_relu``, ``elu``, ``relu6``, ...) are not reported; ``je.cond`` /
``je.switch`` / ``je.while_loop`` predicates are (they implement the user's branches).
Custom-derivative functions (``jax.custom_jvp`` / ``custom_vjp``, e.g. ``jax.nn.relu``) are
treated as opaque: their derivative rule is trusted.
"""

from __future__ import annotations

import os
from typing import Any

import jax.numpy as jnp
from jax.extend.core import Var

from jaxestim._util import is_user_filename

_PKG = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_HANDLERS = os.path.join(_PKG, "_handlers.py")
_SINKS = frozenset({"lt", "gt", "le", "ge", "eq", "ne", "floor", "ceil", "round", "sign"})
_SINKS |= frozenset({"argmax", "argmin"})
_OPAQUE = frozenset({"custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr"})
# jax.nn activations that are continuous although written with a comparison and a select
_NN = os.path.join("jax", "_src", "nn")
_CONTINUOUS_NN = frozenset(
    {"leaky_relu", "elu", "celu", "selu", "gelu", "relu6", "hard_tanh", "hard_sigmoid"}
    | {"hard_silu", "hard_swish", "sparse_plus", "sparse_sigmoid", "squareplus", "mish"}
    | {"silu", "swish", "soft_sign", "log_sigmoid", "softplus", "relu"}
)


def _where(eqn: Any) -> str | None:
    """The user-level source of ``eqn`` ("file:line"), or None inside jaxestim's internals."""
    tb = eqn.source_info.traceback
    if tb is None:
        return "<unknown>"
    try:
        codes, _ = tb.raw_frames()  # innermost first
    except Exception:  # pragma: no cover - defensive
        return "<unknown>"
    for c in codes:
        f = c.co_filename
        if not is_user_filename(f):
            if _NN in os.path.normpath(f) and c.co_name in _CONTINUOUS_NN:
                return None  # a continuous activation's internal select (leaky_relu, elu..)
            continue
        path = os.path.abspath(f)
        if path.startswith(_PKG + os.sep) and path != _HANDLERS:
            return None  # jaxestim's distributions / estimators / validation
        return f"{os.path.basename(f)}:{c.co_firstlineno} ({c.co_name})"
    return "<unknown>"


def _jaxpr(j: Any) -> Any:
    return j.jaxpr if hasattr(j, "jaxpr") and hasattr(j, "consts") else j


def _walk(jaxpr: Any, tainted_in: list[bool], found: list[str]) -> list[bool]:
    """Forward taint through ``jaxpr``; returns the outputs' taint, appends sinks."""
    tainted = {v for v, t in zip(jaxpr.invars, tainted_in, strict=True) if t}

    def is_t(v: Any) -> bool:
        return isinstance(v, Var) and v in tainted

    for eqn in jaxpr.eqns:
        ins = [is_t(v) for v in eqn.invars]
        if not any(ins):
            continue
        name = eqn.primitive.name
        outs = [True] * len(eqn.outvars)
        params = eqn.params
        if name in _SINKS or (
            name == "convert_element_type" and not jnp.issubdtype(params["new_dtype"], jnp.inexact)
        ):
            where = _where(eqn)
            if where is not None:
                found.append(f"{name} at {where}")
        elif name == "cond":
            if ins[0] and (where := _where(eqn)) is not None:
                found.append(f"a cond/switch predicate at {where}")
            outs = [False] * len(eqn.outvars)
            for br in params["branches"]:
                o = _walk(_jaxpr(br), ins[1:], found)
                outs = [a or b for a, b in zip(outs, o, strict=True)]
        elif name == "while":
            nc, nb = params["cond_nconsts"], params["body_nconsts"]
            cconst, bconst, carry = ins[:nc], ins[nc : nc + nb], ins[nc + nb :]
            for _ in range(len(carry) + 1):  # fixed point over the carry
                o = _walk(_jaxpr(params["body_jaxpr"]), bconst + carry, [])
                new = [a or b for a, b in zip(carry, o, strict=True)]
                if new == carry:
                    break
                carry = new
            _walk(_jaxpr(params["body_jaxpr"]), bconst + carry, found)
            pred = _walk(_jaxpr(params["cond_jaxpr"]), cconst + carry, found)
            if any(pred) and (where := _where(eqn)) is not None:
                found.append(f"a while-loop condition at {where}")
            outs = carry
        elif name == "scan":
            nc, ncar = params["num_consts"], params["num_carry"]
            consts, carry, xs = ins[:nc], ins[nc : nc + ncar], ins[nc + ncar :]
            body = _jaxpr(params["jaxpr"])
            for _ in range(len(carry) + 1):
                o = _walk(body, consts + carry + xs, [])
                new = [a or b for a, b in zip(carry, o[:ncar], strict=True)]
                if new == carry:
                    break
                carry = new
            outs = _walk(body, consts + carry + xs, found)
            outs = [a or b for a, b in zip(carry, outs[:ncar], strict=True)] + outs[ncar:]
        elif name in _OPAQUE:
            pass  # a custom derivative rule: trusted
        else:
            sub = params.get("jaxpr", params.get("call_jaxpr"))
            if sub is not None:  # pjit, closed_call, remat, ...
                outs = _walk(_jaxpr(sub), ins, found)
        for v, t in zip(eqn.outvars, outs, strict=True):
            if t:
                tainted.add(v)
    return [is_t(v) for v in jaxpr.outvars]


def discontinuities(closed: Any) -> list[str]:
    """User-level discontinuous operations reached by the last input of ``closed``."""
    jaxpr = closed.jaxpr
    found: list[str] = []
    _walk(jaxpr, [False] * (len(jaxpr.invars) - 1) + [True], found)
    return list(dict.fromkeys(found))
