"""Estimator transforms: ``grad``, ``value_and_grad`` and ``grad_samples``.

Given ``fun(key, *args) -> scalar`` that draws randomness through :func:`jaxestim.sample`,
the transforms return Monte Carlo estimates of ``grad_args E[fun]``. ``num_samples = N``
splits the key into ``N`` per-sample keys (``jax.random.split(key, N)``), so the estimate
does not depend on ``chunk_size``.

Site-level estimators build a per-sample surrogate ``s_i`` with ``value(s_i) = f_i`` and
``E[grad s_i] = grad E[f]`` (or the estimator's biased target), and the mean gradient is
``grad (1/N) sum_i s_i``: one reverse pass over the *batched* surrogate, so per-sample
gradients are never materialized and memory stays ``O(P + N * activations)``.
``chunk_size = C`` evaluates ``C`` samples at a time inside a ``lax.scan`` that
accumulates the gradient sum, bounding memory at ``O(P + C * activations)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify, io_callback
from jax.extend.core import jaxpr_as_fun
from jax.flatten_util import ravel_pytree

from jaxestim import _sharding, _validation
from jaxestim._errors import EstimatorError
from jaxestim._estimator import Estimator
from jaxestim._handlers import WholeProgramHandler, current_handler
from jaxestim._surrogate import (
    BOUNDARY,
    COST_C,
    COST_S,
    ENUM_F,
    ENUM_W,
    INVALID,
    SITE_B,
    SurrogateHandler,
    magic_box,
)
from jaxestim._util import check_key, tree_add, tree_scale
from jaxestim.distributions._base import _COMPLEX_PARAMS
from jaxestim.estimators import Auto, ScoreFunction

_LEAK_HINT = (
    "A traced value escaped the transformation that created it while an estimator "
    "transform was tracing the program. The usual cause is a je.sample site whose "
    "estimator records per-site quantities (score function, auto at discrete sites, "
    "stochastic_ad) running inside plain jax.lax control flow (scan, fori_loop, "
    "while_loop, cond) or an inner jax.vmap. Use je.scan / je.fori_loop for loops, "
    "give the site a sample_shape instead of an inner vmap, or choose a non-recording "
    "estimator (pathwise, gumbel_softmax, straight_through) for such sites."
)


def _split(fun_out: Any, has_aux: bool, where: str) -> tuple[jax.Array, Any]:
    if has_aux:
        if not (isinstance(fun_out, tuple | list) and len(fun_out) == 2):
            raise TypeError(
                f"{where}: with has_aux=True `fun` must return a pair (value, aux), got "
                f"{type(fun_out).__name__}"
            )
        f, aux = fun_out
    else:
        f, aux = fun_out, None
    if isinstance(f, tuple | list | dict):
        raise TypeError(
            f"{where}: `fun` must return a scalar (pass has_aux=True to return (value, aux)); "
            f"got a {type(f).__name__}"
        )
    f = jnp.asarray(f)
    if f.shape != ():
        raise TypeError(f"{where}: `fun` must return a scalar, got an array of shape {f.shape}")
    if jnp.issubdtype(f.dtype, jnp.complexfloating) and not _COMPLEX_PARAMS.get():
        # (complex values are allowed only inside je.finite_difference(scheme="complex"))
        raise TypeError(f"{where}: `fun` must return a real scalar, got dtype {f.dtype}")
    if not jnp.issubdtype(f.dtype, jnp.inexact):
        f = f.astype(jnp.result_type(float))
    return f, aux


def _trace_once(fn: Callable, *args: Any) -> tuple[Callable, Any]:
    """``fn`` traced once, for the abstract values of ``args``, into a jaxpr.

    Returns ``(call, out_shapes)``: ``call(*args)`` (arguments with the same abstract
    values) binds the jaxpr's operations, the very ones ``fn(*args)`` would bind, without
    running ``fn``'s Python again; the transforms use it so that the user's program is
    traced once however often it is evaluated (chunk bodies, remainder chunk,
    chunked leave-one-out totals). Values ``fn`` closes over (tracers of an
    enclosing trace included) become the jaxpr's constants. Site-level estimates are
    bit-identical to tracing ``fn`` at each use; the whole-program estimators' may differ
    in float32 rounding (XLA fuses the same operations differently), as they already did
    between chunk sizes.
    """
    closed, shapes = jax.make_jaxpr(fn, return_shape=True)(*args)
    out_tree = jax.tree_util.tree_structure(shapes)
    run = jaxpr_as_fun(closed)

    def call(*a: Any) -> Any:
        return jax.tree_util.tree_unflatten(out_tree, run(*jax.tree_util.tree_leaves(a)))

    return call, shapes


class _Once:
    """``fn`` traced once per abstract signature of its arguments (see :func:`_trace_once`)."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self.traced: dict[Any, Callable] = {}

    def __call__(self, *args: Any) -> Any:
        leaves, tree = jax.tree_util.tree_flatten(args)
        sig = (tree, tuple(jax.typeof(x) for x in leaves))
        if sig not in self.traced:
            self.traced[sig] = _trace_once(self.fn, *args)[0]
        return self.traced[sig](*args)


def _scan_chunks(fn: Callable, keys: jax.Array, chunk_size: int | None) -> tuple[Any, Any]:
    """Apply ``fn(keys_chunk) -> (summable, per_sample)`` over chunks of ``keys``.

    Returns the sum of the first outputs and the per-sample outputs concatenated along
    axis 0. With ``chunk_size`` None (or >= N) it is just ``fn(keys)``. ``fn`` is traced
    once for the full chunks (that trace gives the accumulator's shape and is the scan
    body) and once more for a remainder chunk of ``N mod chunk_size`` samples.
    """
    n_total = keys.shape[0]
    if chunk_size is None or chunk_size >= n_total:
        return fn(keys)
    n, r = divmod(n_total, chunk_size)
    main = keys[: n * chunk_size].reshape((n, chunk_size, *keys.shape[1:]))
    chunk, (acc_shape, _) = _trace_once(fn, main[0])
    acc0 = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), acc_shape)

    def body(acc: Any, kc: jax.Array) -> tuple[Any, Any]:
        a, per = chunk(kc)
        return tree_add(acc, a), per

    acc, per = jax.lax.scan(body, acc0, main)
    per = jax.tree_util.tree_map(lambda x: x.reshape((n * chunk_size, *x.shape[2:])), per)
    if r:
        a, per_r = fn(keys[n * chunk_size :])
        acc = tree_add(acc, a)
        per = jax.tree_util.tree_map(lambda x, y: jnp.concatenate([x, y]), per, per_r)
    return acc, per


def _is_inexact(x: Any) -> bool:
    """A differentiable leaf: a Python float/complex or a floating/complex array."""
    if isinstance(x, bool):
        return False
    if isinstance(x, float | complex):
        return True
    return _is_array(x) and jnp.issubdtype(x.dtype, jnp.inexact)


def _sum_dtype(dtype: Any) -> np.dtype:
    """The dtype in which the transforms sum over samples: at least float32.

    ``bfloat16`` / ``float16`` values and gradients are summed in ``float32`` (a sum of
    ``N`` half-precision terms accumulated in half precision loses everything beyond
    ``2^8`` to ``2^11`` times one term); wider types are summed in their own dtype.
    """
    return jnp.promote_types(dtype, jnp.float32)


def _sum(x: jax.Array, axis: int | None = None) -> jax.Array:
    """``jnp.sum(x, axis)`` accumulated and returned in :func:`_sum_dtype`."""
    return jnp.sum(x, axis, dtype=_sum_dtype(x.dtype))


def _widened(diff: tuple) -> tuple[tuple, tuple]:
    """``(wide, narrow)``: the differentiated leaves in :func:`_sum_dtype` and, per leaf,
    the parameter's own dtype where it is narrower (else ``None``)."""
    narrow = tuple(
        tuple(
            jnp.result_type(x) if _sum_dtype(jnp.result_type(x)) != jnp.result_type(x) else None
            for x in sub
        )
        for sub in diff
    )
    wide = tuple(
        tuple(
            x if n is None else jnp.asarray(x, _sum_dtype(n)) for x, n in zip(sub, ns, strict=True)
        )
        for sub, ns in zip(diff, narrow, strict=True)
    )
    return wide, narrow


def _narrowed(tree: tuple, narrow: tuple) -> tuple:
    """Leaves of ``tree`` (structured like ``diff``) cast back to the parameters' dtypes."""
    return tuple(
        tuple(x if n is None else x.astype(n) for x, n in zip(sub, ns, strict=True))
        for sub, ns in zip(tree, narrow, strict=True)
    )


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _no_higher_order(msg: str, out: Any, inputs: Any) -> Any:
    """Identity on ``out``; differentiating it (w.r.t. ``out`` or ``inputs``) raises."""
    return out


@_no_higher_order.defjvp
def _no_higher_order_jvp(msg, primals, tangents):
    raise EstimatorError(msg)


def _nan_where_value_nan(value: jax.Array, grads: Any) -> Any:
    """``grads`` with every entry NaN where ``value`` (scalar, or per sample on axis 0) is NaN."""
    return _nan_where(jnp.isnan(value), grads)


def _nan_where(bad: jax.Array, grads: Any) -> Any:
    """``grads`` with every entry NaN where ``bad`` (scalar, or per sample on axis 0)."""

    def mask(g: jax.Array) -> jax.Array:
        b = jnp.reshape(bad, bad.shape + (1,) * (g.ndim - bad.ndim))
        return jnp.where(b, jnp.asarray(jnp.nan, g.dtype), g)

    return jax.tree_util.tree_map(mask, grads)


def _functional_checks(fn: Callable) -> Callable:
    """``fn(*a) -> out`` as ``(*a) -> (out, err)`` with ``validate=True`` site checks made data.

    ``checkify`` drops a check inside a ``lax.scan`` (``je.scan``) that is differentiated in
    reverse mode, so under validation the program is checkified *inside* the derivative and
    its error state leaves as an auxiliary output, to be re-raised with :func:`_rethrow`
    outside it. ``err`` is ``None`` when validation is off (no cost).
    """
    if not _validation.active():
        return lambda *a: (fn(*a), None)

    def wrapped(*a: Any) -> tuple[Any, Any]:
        err, out = checkify.checkify(fn)(*a)
        return out, err

    return wrapped


def _rethrow(err: Any) -> None:
    if err is not None:
        checkify.check_error(err)


def _value_and_grad_checked(loss: Callable, diff: Any) -> tuple[tuple[Any, Any], Any]:
    """``jax.value_and_grad(loss, has_aux=True)(diff)`` keeping ``validate=True`` checks.

    ``loss(d)`` returns ``(s, aux)``; when ``aux`` is a :class:`_Boundary` record its score
    sites touched a support boundary, and the gradient is NaN wherever the boundary
    parameters depend on ``d`` (see :func:`_boundary_terms`).
    """
    checked = _functional_checks(loss)

    def both(d: Any) -> tuple[tuple[jax.Array, jax.Array], tuple[Any, Any, Any]]:
        (s, aux), err = checked(d)
        b, count = (aux.b, aux.count) if isinstance(aux, _Boundary) else (None, None)
        aux = aux.aux if isinstance(aux, _Boundary) else aux
        return (s, jnp.zeros_like(s) if b is None else b), (aux, count, err)

    (s, b), vjp_fn, (aux, count, err) = jax.vjp(both, diff, has_aux=True)
    (g,) = vjp_fn((jnp.ones_like(s), jnp.zeros_like(b)))
    _rethrow(err)
    if count is not None:

        def moves() -> jax.Array:
            (gb,) = vjp_fn((jnp.zeros_like(s), jnp.ones_like(b)))
            leaves = jax.tree_util.tree_leaves(gb)
            return jnp.any(jnp.stack([jnp.any(x != 0) for x in leaves]))

        bad = jax.lax.cond(count > 0, moves, lambda: jnp.array(False))
        g = jax.tree_util.tree_map(lambda x: jnp.where(bad, jnp.asarray(jnp.nan, x.dtype), x), g)
    return (s, aux), g


_SAMPLES = "jaxestim_samples"  # vmap axis name of grad_samples' per-sample gradients


class _Boundary(NamedTuple):
    """Auxiliary output of a surrogate loss whose score sites report support boundaries."""

    aux: Any
    b: jax.Array
    count: jax.Array


def _invalid_count(logp: dict) -> jax.Array:
    """Number of sample-site elements with out-of-range or NaN parameters (all samples).

    Their samples and log-probabilities are NaN (the distributions poison them), so the
    value is NaN; the gradient is made NaN from this count, which depends on the
    parameters only, so XLA may still drop forward computations the gradient does not need.
    """
    if INVALID not in logp:
        return jnp.zeros(())
    return jax.lax.stop_gradient(jnp.sum(logp[INVALID]))


def _boundary_terms(logp: dict) -> tuple[jax.Array, jax.Array] | None:
    """``(b, count)`` summed over samples, or None when no site can reach a boundary.

    A score-function site whose distribution's support changes at the current parameters
    (``Bernoulli(p = 0)``, a zero-probability category, ``Uniform``; see
    ``Distribution._support_boundary``) records ``count_e + sum_e w_e (q_e - stop_grad(q_e))``
    (``q_e`` the boundary parameters, ``w_e`` fixed distinct weights): its value counts the
    elements on a boundary, its gradient is ``sum_e w_e grad q_e``. The score function is
    biased there whenever ``grad q != 0`` (it never sees the value whose mass is zero but
    growing), so the transforms make the gradient NaN when ``grad b != 0``; a parameter that
    sits on the boundary but does not move with ``theta`` (an epidemic with no infected:
    ``p = 1 - exp(-beta * 0)``) is fine and costs nothing beyond a second backward pass in
    the rare chunks where ``count > 0``.
    """
    if BOUNDARY not in logp:
        return None
    b = jnp.sum(logp[BOUNDARY])
    return b, jax.lax.stop_gradient(b)


def _throw_callback(err: Any) -> np.ndarray:
    err.throw()
    return np.asarray(True)


class _Transformed:
    """The callable returned by :func:`grad`, :func:`value_and_grad`, :func:`grad_samples`."""

    def __init__(
        self,
        fun: Callable[..., Any],
        estimator: Estimator | None,
        argnums: int | Sequence[int],
        num_samples: int,
        chunk_size: int | None,
        has_aux: bool,
        kind: str,
        validate: bool = False,
        mesh: Any = None,
        axis: Any = None,
    ):
        where = f"je.{kind}"
        if not callable(fun):
            raise TypeError(f"{where}: `fun` must be callable, got {type(fun).__name__}")
        estimator = Auto() if estimator is None else estimator
        if not isinstance(estimator, Estimator):
            raise TypeError(
                f"{where}: `estimator` must be a jaxestim estimator (e.g. je.pathwise()) or "
                f"None, got {type(estimator).__name__}"
            )
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"{where}: `num_samples` must be an int >= 1, got {num_samples!r}")
        if chunk_size is not None and (
            isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
        ):
            raise ValueError(
                f"{where}: `chunk_size` must be None or an int >= 1, got {chunk_size!r}"
            )
        nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
        if not nums or any(isinstance(a, bool) or not isinstance(a, int) for a in nums):
            raise TypeError(
                f"{where}: `argnums` must be an int or a tuple of ints, got {argnums!r}"
            )
        if any(a < 1 for a in nums):
            raise ValueError(
                f"{where}: `argnums` must index fun's positional arguments after the key "
                f"(>= 1); argument 0 is the PRNG key, which cannot be differentiated. Got "
                f"{argnums!r}"
            )
        if len(set(nums)) != len(nums):
            raise ValueError(f"{where}: `argnums` has repeated entries: {argnums!r}")
        if not isinstance(validate, bool):
            raise TypeError(f"{where}: `validate` must be a bool, got {validate!r}")
        estimator.check(num_samples)
        self.mesh, self.axes = _sharding.check_mesh(mesh, axis, num_samples, where)
        self.fun = fun
        self.estimator = estimator
        self.argnums = argnums
        self._nums = nums
        self.num_samples = num_samples
        self.chunk_size = chunk_size
        self.has_aux = has_aux
        self.kind = kind
        self.where = where
        self.validate = validate
        self._jitted = jax.jit(self._run, static_argnums=4)
        self._checked = checkify.checkify(self._run)
        self._checked_jitted = jax.jit(self._checked, static_argnums=4)
        functools.update_wrapper(self, fun)

    # ----------------------------------------------------------------------------------
    def __call__(self, key: jax.Array, *args: Any, estimator_state: Any = None) -> Any:
        check_key(key, self.where)
        est = self.estimator
        if est.has_state and estimator_state is None:
            raise TypeError(
                f"{self.where}: je.{est.name}() with a stateful baseline needs "
                f"`estimator_state=` (start from estimator.init()); the call then returns "
                f"(result, new_state)"
            )
        if not est.has_state and estimator_state is not None:
            raise TypeError(
                f"{self.where}: je.{est.name}() has no state; do not pass `estimator_state`"
            )
        if max(self._nums) > len(args):
            raise ValueError(
                f"{self.where}: `argnums`={self.argnums!r} but fun was called with "
                f"{len(args)} argument(s) after the key"
            )
        # Partition the leaves of (args, estimator) as equinox's filter_grad/filter_jit do:
        # "d" floating leaves of a differentiated argument (differentiated, traced),
        # "a" every other array (traced, not differentiated), "s" the rest (static: part of
        # the compilation key, so eager calls run compiled code).
        leaves, treedef = jax.tree_util.tree_flatten((tuple(args), est))
        kinds: list[str] = []
        out_spec = []
        for i, a in enumerate(args, 1):
            sub = jax.tree_util.tree_leaves(a)
            if i in self._nums:
                mask = tuple(_is_inexact(x) for x in sub)
                if sub and not any(mask):
                    raise TypeError(
                        f"{self.where}: differentiated argument {i} has no floating leaf to "
                        f"differentiate (its leaves: "
                        f"{', '.join(sorted({_leaf_kind(x) for x in sub}))}); pass floating "
                        f"arrays, e.g. 1.0 rather than 1"
                    )
                kinds.extend(
                    "d" if m else ("a" if _is_array(x) else "s")
                    for x, m in zip(sub, mask, strict=True)
                )
            else:
                kinds.extend("a" if _is_array(x) else "s" for x in sub)
        kinds.extend("a" if _is_array(x) else "s" for x in leaves[len(kinds) :])
        for i in self._nums:
            sub, sub_def = jax.tree_util.tree_flatten(args[i - 1])
            out_spec.append((sub_def, tuple(_is_inexact(x) for x in sub)))
        diff_flat = [x for x, k in zip(leaves, kinds, strict=True) if k == "d"]
        diff, pos = [], 0
        for _, mask in out_spec:
            n = sum(mask)
            diff.append(tuple(diff_flat[pos : pos + n]))
            pos += n
        diff = tuple(diff)
        dyn = [x for x, k in zip(leaves, kinds, strict=True) if k == "a"]
        static = (
            treedef,
            tuple(kinds),
            tuple(x if k == "s" else None for x, k in zip(leaves, kinds, strict=True)),
            tuple(out_spec),
        )
        try:
            hash(static)
            cached = True
        except TypeError:  # unhashable static leaves: trace without the compilation cache
            cached = False
        if _sharding.spans_processes(self.mesh):
            key, diff, dyn, estimator_state = _sharding.globalize(
                (key, diff, dyn, estimator_state), self.mesh
            )
        try:
            if not self.validate:
                run = self._jitted if cached else self._run
                return run(key, diff, dyn, estimator_state, static)
            return self._call_checked(cached, key, diff, dyn, estimator_state, static)
        except jax.errors.UnexpectedTracerError as e:
            raise EstimatorError(_LEAK_HINT) from e

    def _call_checked(self, cached, key, diff, dyn, state, static):
        """``validate=True``: run under checkify and throw the first failed site check.

        Eagerly the error is thrown here (``checkify.JaxRuntimeError``, a ``ValueError``).
        Under an enclosing trace (the user's ``jax.jit``, ``jax.vmap``, ``jax.grad``) it
        cannot be thrown at trace time: an ``io_callback`` throws it when the compiled
        code runs (the caller sees ``jax.errors.JaxRuntimeError`` whose message contains
        the check's), and the outputs depend on the callback's result (NaN if it did not
        pass), so a failed validation is never silently used.
        """
        traced = any(
            isinstance(x, jax.core.Tracer)
            for x in jax.tree_util.tree_leaves((key, diff, dyn, state))
        )
        checked = self._checked_jitted if cached else self._checked
        try:
            err, out = checked(key, diff, dyn, state, static)
        except ValueError as e:
            if isinstance(e, EstimatorError) or not _validation.is_loop_limitation(e):
                raise
            raise EstimatorError(f"{self.where}: {_validation.LOOP_LIMITATION}") from e
        if self.mesh is not None:
            # checkify stacks a shard_map's error state per device; replicate it so that
            # reducing it to the first error does not sort along a sharded axis
            err = _sharding.replicate(err, self.mesh)
        if not traced:
            err.throw()
            return out
        err = jax.tree_util.tree_map(jax.lax.stop_gradient, err)
        ok = io_callback(_throw_callback, jax.ShapeDtypeStruct((), jnp.bool_), err)

        def poison(x: Any) -> Any:
            if _is_array(x) and jnp.issubdtype(x.dtype, jnp.inexact):
                return jnp.where(ok, x, jnp.asarray(jnp.nan, x.dtype))
            return x

        return jax.tree_util.tree_map(poison, out)

    def _run(self, key, diff, dyn, state, static):
        treedef, kinds, static_leaves, out_spec = static
        with _validation.validating(self.validate):
            return self._run_body(key, diff, dyn, state, treedef, kinds, static_leaves, out_spec)

    def _run_body(self, key, diff, dyn, state, treedef, kinds, static_leaves, out_spec):
        def assemble(d: tuple) -> tuple[tuple, Estimator]:
            it_d = iter(x for sub in d for x in sub)
            it_a = iter(dyn)
            leaves = [
                next(it_d) if k == "d" else next(it_a) if k == "a" else x
                for k, x in zip(kinds, static_leaves, strict=True)
            ]
            return jax.tree_util.tree_unflatten(treedef, leaves)

        _, est = assemble(diff)
        # bfloat16 / float16 parameters: the estimator differentiates float32 copies, which
        # the program receives cast back to the parameters' dtype, so every sum over samples
        # (gradients, values, baselines' totals, chunks, devices) is accumulated in float32;
        # the gradient is returned in the parameters' dtype.
        diff, narrow = _widened(diff)
        spread = any(n is not None for ns in narrow for n in ns)
        if spread and est.perturbs_parameters:
            half = sorted({str(n) for ns in narrow for n in ns if n is not None})
            raise EstimatorError(
                f"{est.name}: the differentiated parameters include {' / '.join(half)} "
                "leaves. The program would receive theta + h v rounded to that dtype (8 or 11 "
                "significant bits), so the step actually taken is not h and the difference "
                "quotient is silently wrong (often exactly 0). Pass float32 parameters (the "
                "program may cast them to the narrow dtype itself), or use an estimator that "
                "differentiates (je.pathwise(), je.score_function(), je.stochastic_ad())."
            )
        run = _Run(self, est, lambda d: assemble(_narrowed(d, narrow))[0], spread)
        keys = jax.random.split(key, self.num_samples)

        def estimate(keys: jax.Array, diff: tuple, state: Any) -> tuple:
            if est.site_level:
                return run.surrogate(keys, diff, state)
            return run.whole_program(keys, diff, state)

        if self.mesh is None:
            value, grads, aux, f, new_state = estimate(keys, diff, state)
        else:
            per_sample = "sharded" if self.kind == "grad_samples" else "replicated"
            specs = ("replicated", per_sample, "sharded", "sharded", "replicated")
            value, grads, aux, f, new_state = _sharding.shard_samples(
                estimate, self.mesh, self.axes, keys, diff, state, specs
            )
        # Out-of-range / NaN site parameters give a NaN gradient (site-level estimators:
        # decided from the parameters in run.surrogate, so under je.grad XLA may still drop
        # a forward value the gradient does not need). Where the value is computed anyway
        # (value_and_grad, grad_samples, stochastic_ad) any NaN value also gives a NaN
        # gradient; central finite differences under je.grad skip it (an invalid theta makes
        # a perturbed run, hence the gradient, NaN; their unperturbed run stays dead code).
        if self.kind != "grad" or not (est.site_level or est.differences_only):
            grads = _nan_where_value_nan(f if self.kind == "grad_samples" else value, grads)
        if not (est.site_level and run.higher_order_ok):
            inputs = [x for x in jax.tree_util.tree_leaves((diff, dyn)) if _is_inexact(x)]
            value, grads = _no_higher_order(run.higher_order_message(), (value, grads), inputs)
        value = value.astype(f.dtype)  # summed in _sum_dtype, returned in fun's dtype
        grads = _narrowed(grads, narrow)
        grads = tuple(
            jax.tree_util.tree_unflatten(sub_def, [next(it) if m else None for m in mask])
            for (sub_def, mask), it in zip(out_spec, (iter(g) for g in grads), strict=True)
        )
        if isinstance(self.argnums, int):
            grads = grads[0]
        if self.kind == "value_and_grad":
            out = ((value, aux), grads) if self.has_aux else (value, grads)
        else:
            out = (grads, aux) if self.has_aux else grads
        return (out, new_state) if est.has_state else out


def _is_array(x: Any) -> bool:
    return isinstance(x, jax.Array | np.ndarray | np.generic | jax.core.Tracer)


def _leaf_kind(x: Any) -> str:
    if _is_array(x):
        return str(x.dtype)
    return type(x).__name__


class _SiteProgram(NamedTuple):
    """The per-sample program of a site-level estimator, traced once (:meth:`_Run.program`).

    ``call(key, diff) -> (f, logp, aux)``; ``groups`` are its score-function groups (the
    keys of ``logp`` index them); ``boundary``: some site records a support-boundary term;
    ``site_baselines``: the groups whose baselines are per-site (recorded in ``SITE_B``).
    """

    call: Callable
    groups: list
    boundary: bool
    site_baselines: frozenset = frozenset()
    records: frozenset = frozenset()  # the keys of logp (groups and special records)


def _enumerated(call3: Callable, num: int, k: jax.Array, d: tuple):
    """One sample of a program with je.enumeration() sites: all ``num`` combinations.

    ``call3(k, d, c)`` runs the program with the enumerated sites forced to combination
    ``c`` (decoded in mixed radix by the sites, see ``jaxestim.estimators.enumeration``);
    every combination uses the same key ``k`` for the other sites (common random numbers).
    Returns ``(F, logp, aux)``: ``F = sum_c w_c f_c`` (the sample's exact conditional
    expectation over the enumerated sites: its value, and the ``f`` that leave-one-out
    baselines of the other sites see), ``logp`` with a trailing combination axis on every
    record plus ``logp[ENUM_F] = f_c``, and ``aux`` with a leading combination axis.
    """
    f, logp, aux = jax.vmap(lambda c: call3(k, d, c))(jnp.arange(num, dtype=jnp.int32))
    logp = {**logp, ENUM_F: f}
    return jnp.sum(logp[ENUM_W] * f), logp, aux


def _group_scores(f, logp, pullback, opt) -> list:
    """Per-sample score vectors ``grad log p_g`` of the groups ``opt`` from the pullback
    of ``(f, logp)`` (a unit cotangent on ``logp[g]``, zero elsewhere)."""
    out = []
    for i in opt:
        ct = {j: (jnp.ones_like(v) if j == i else jnp.zeros_like(v)) for j, v in logp.items()}
        out.append(pullback((jnp.zeros_like(f), ct))[0])
    return out


class _Run:
    """One trace of a transform: the program, its estimator and its fixed arguments."""

    def __init__(
        self,
        t: _Transformed,
        est: Estimator,
        assemble: Callable[[tuple], tuple],
        spread: bool = False,
    ):
        self.t, self.est, self.assemble = t, est, assemble
        # half-precision parameters: each sample gets its own copy of the (float32)
        # parameters (see terms), so its gradients are summed over the samples in float32
        self.spread = spread
        self.num_samples = t.num_samples
        self.chunk_size = t.chunk_size
        self.axes = t.axes  # mesh axes the samples are sharded over (see _sharding)
        self.kind = t.kind
        # False once a site whose estimate is not differentiable again (straight-through,
        # Gumbel-softmax at a discrete site) has been traced.
        self.higher_order_ok = True
        self.higher_order_reason: str | None = None
        self._program: _SiteProgram | None = None

    @property
    def program_site_baselines(self) -> frozenset:
        """Groups with per-site baselines (known once the program has been traced)."""
        return frozenset() if self._program is None else self._program.site_baselines

    def higher_order_message(self) -> str:
        name = self.est.name
        why = (
            "they are not derivatives of a differentiable surrogate of E[f]"
            if not self.est.site_level
            else self.higher_order_reason
            if self.higher_order_reason
            else "the program has a je.straight_through() or je.gumbel_softmax() discrete "
            "site, whose relaxed/straight-through derivatives are not unbiased to any order"
        )
        fix = (
            "Use je.score_function() with baseline None, a constant or 'leave_one_out' "
            "(DiCE, unbiased higher derivatives) for higher derivatives."
            if self.higher_order_reason
            else "Use je.score_function() (DiCE, unbiased higher derivatives) or "
            "je.pathwise() (or je.auto(), which combines them)."
        )
        return (
            f"{getattr(self.est, 'display', f'je.{name}()')} estimates cannot be "
            f"differentiated again ({why}); differentiating "
            f"them with an outer jax.grad / jax.jacfwd / jax.hessian / jax.jvp would silently "
            f"give wrong higher derivatives. {fix}"
        )

    def eval(self, key: jax.Array, diff: tuple) -> tuple[jax.Array, Any]:
        return _split(self.t.fun(key, *self.assemble(diff)), self.t.has_aux, self.t.where)

    def program(self, key: jax.Array, diff: tuple) -> _SiteProgram:
        """The program for one sample under the estimator's site handler, traced once.

        ``key`` is one per-sample key (only its abstract value matters). Every later
        evaluation (:meth:`terms`: chunks, the remainder chunk, a chunked leave-one-out
        total) binds the operations of this one trace; what the
        trace learned in Python (the score-function groups, whether a relaxed site was
        met, whether a site can reach a support boundary) comes with it.
        """
        if self._program is None:
            shared = SurrogateHandler.new_shared(self.num_samples)

            def one(k: jax.Array, d: tuple, c: jax.Array):
                shared["enum_index"] = c  # je.enumeration(): the combination to run
                h = SurrogateHandler(self.est, self.num_samples, shared)
                with h:
                    f, aux = self.eval(k, d)
                return f, h.logp, aux

            call3, (_, logp, _) = _trace_once(one, key, diff, jnp.zeros((), jnp.int32))
            call = lambda k, d: call3(k, d, jnp.zeros((), jnp.int32))
            if ENUM_W in logp:
                call = functools.partial(_enumerated, call3, shared["enum_K"])
            if not shared.get("higher_order_ok", True):
                self.higher_order_ok = False
            self._program = _SiteProgram(
                call,
                list(shared["groups"]),
                BOUNDARY in logp,
                frozenset(shared.get("site_baselines", ())),
                frozenset(logp),
            )
        return self._program

    def terms(self, keys: jax.Array, diff: tuple):
        """Per-sample objective, score-function log-probs by group, aux, and the groups."""
        prog = self.program(keys[0], diff)
        if self.spread:
            # per-sample copies of the float32 parameters, cast to the parameters' dtype
            # inside each sample: the transpose of the copy sums the samples' gradients in
            # float32, whereas the program's own transposed operations (a gather's
            # scatter-add, a broadcast's reduction) would sum them in half precision
            n = keys.shape[0]
            copies = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), diff)
            f, logp, aux = jax.vmap(prog.call)(keys, copies)
        else:
            f, logp, aux = jax.vmap(lambda k: prog.call(k, diff))(keys)
        return f, logp, aux, prog.groups

    def combine(self, f, logp, groups: list[ScoreFunction], total, state, f_baseline=None):
        r"""Per-sample DiCE surrogate with baselines (Foerster et al., 2018; Mao et al., 2019).

        With ``box(L) = exp(L - stop_gradient(L))`` (value exactly 1), ``L = sum_g log p_g``
        the summed log-probability of this sample's score-function sites and ``b_g`` the
        (stop-gradient) baseline of group ``g``::

            s = box(L) * f + sum_g (1 - box(log p_g)) * b_g.

        Value: ``s == f`` exactly (``box = 1``, ``1 - box = 0``), so the mean of ``s`` is
        the Monte Carlo value. First derivative: ``grad s = f grad L + grad f -
        sum_g b_g grad log p_g = sum_g (f - b_g) grad log p_g + grad f``, the usual
        score-function estimate with baselines.

        Higher derivatives are unbiased. ``E_x[box(L(x)) f(x)]`` has the same value and the
        same derivatives of every order as ``E[f]``: under ``x ~ p(.; theta_0)``,
        ``box(L)`` behaves as ``p(x; theta) / p(x; theta_0)``, so
        ``E[grad^n (box(L) f)] = grad^n integral p(x; theta) f(x, theta) dx``
        (differentiation under the integral). For the baseline term, ``b_g`` is a
        stop-gradient constant independent of sample ``i`` (leave-one-out uses only the
        other samples; constant and moving-average baselines do not depend on the
        samples), so for ``n >= 1``
        ``E[grad^n ((1 - box(log p_g)) b_g)] = -E[b_g] E[grad^n box(log p_g)]
        = -E[b_g] grad^n integral p_g(x; theta) dx = -E[b_g] grad^n 1 = 0``:
        it changes no derivative in expectation, only the variance.
        """
        if ENUM_W in logp:  # je.enumeration(): s = sum_c w_c s_c (see _enumerated); the
            # other sites' baselines see the sample's enumerated value F = f
            rest = {i: v for i, v in logp.items() if i not in (ENUM_W, ENUM_F)}
            s_c = self.combine(logp[ENUM_F], rest, groups, total, state, f[..., None])
            return jnp.sum(logp[ENUM_W] * s_c, -1)
        fb = f if f_baseline is None else f_baseline
        costs = COST_S in logp
        if not groups and not costs:
            return f
        box_all = magic_box(sum(logp[i] for i in range(len(groups))))
        if costs:  # je.cost declarations: each cost weighed by the sites drawn before it
            s = box_all * (f - logp[COST_C]) + logp[COST_S]
        else:
            s = box_all * f
        if SITE_B in logp:  # per-site baselines (score-function overrides with an array)
            s = s + logp[SITE_B]
        site_baselines = self.program_site_baselines
        for i, g in enumerate(groups):
            if i in site_baselines:
                continue
            b = jax.lax.stop_gradient(g.baseline_value(fb, total, self.num_samples, state))
            s = s + (1.0 - magic_box(logp[i])) * b
        return s

    def sample_grad(self, k, diff, total, loo, state, opt=(), opt_totals=None):
        """One sample's ``(grad, s, f, aux)`` for :func:`grad_samples`, under
        ``jax.vmap(..., axis_name=_SAMPLES)`` over the samples of a chunk (all samples when
        unchunked).

        One ``jax.vjp`` of the sample's program gives ``f``, the log-probabilities and the
        pullback. The surrogate (:meth:`combine`) is built after it, so a leave-one-out
        baseline needs no separate forward pass when unchunked: ``total`` None means the
        sum of the stop-gradient ``f`` over the vmapped samples (``jax.lax.psum``). The
        gradient is the pullback of the surrogate's cotangents (the operations of
        ``jax.grad`` of the composition). The support-boundary check (see
        :func:`_boundary_terms`) calls the same pullback with the boundary term's
        cotangent, inside a ``lax.cond`` on the chunk's boundary count (a psum: the
        predicate is not batched, so the check runs only in chunks where some sample
        touched a boundary), rather than differentiating the program a second time.
        """
        checked = _functional_checks(lambda d: self.terms(k[None], d)[:3])

        def fwd(d):
            (f, logp, aux), err = checked(d)
            return (f, logp), (aux, err)

        (f, logp), pullback, (aux, err) = jax.vjp(fwd, diff, has_aux=True)
        _rethrow(err)
        groups = self.program(k, diff).groups
        if loo and total is None:
            f0 = jax.lax.stop_gradient(f[0]).astype(_sum_dtype(f.dtype))
            total = self.psum(jax.lax.psum(f0, _SAMPLES))
        s, surrogate_vjp = jax.vjp(
            lambda f, logp: self.combine(f, logp, groups, total, state), f, logp
        )
        (g,) = pullback(surrogate_vjp(jnp.ones_like(s)))
        if opt:  # baseline="optimal": per-coordinate leave-one-out baselines
            g = tree_add(g, self.optimal_correction(f, logp, pullback, opt, opt_totals))
        g = _nan_where(_invalid_count(logp) > 0, g)
        bt = _boundary_terms(logp)
        if bt is not None:

            def moves() -> jax.Array:
                ct = {i: jnp.zeros_like(v) for i, v in logp.items()}
                ct[BOUNDARY] = jnp.ones_like(logp[BOUNDARY])
                (gb,) = pullback((jnp.zeros_like(f), ct))
                leaves = jax.tree_util.tree_leaves(gb)
                return jnp.any(jnp.stack([jnp.any(x != 0) for x in leaves]))

            touched = jax.lax.psum(bt[1], _SAMPLES) > 0
            bad = jax.lax.cond(touched, moves, lambda: jnp.array(False))
            g = _nan_where(bad, g)
        aux0 = jax.tree_util.tree_map(lambda a: a[0], aux)
        return g, s[0], f[0], aux0

    def psum(self, x: Any) -> Any:
        """Complete a sum over this device's samples to all ``N`` (identity unsharded)."""
        return _sharding.psum(x, self.axes)

    def needs_total(self, keys, diff) -> bool:
        """Whether a leave-one-out baseline occurs (known from the program's one trace)."""
        return any(
            isinstance(g.baseline, str) and g.baseline == "leave_one_out"
            for g in self.program(keys[0], diff).groups
        )

    def optimal_groups(self, keys, diff) -> tuple[int, ...]:
        """The score-function groups with ``baseline="optimal"`` (per-coordinate baselines
        from per-sample score vectors, see :meth:`optimal_correction`)."""
        prog = self.program(keys[0], diff)
        opt = tuple(
            i
            for i, g in enumerate(prog.groups)
            if isinstance(g.baseline, str) and g.baseline == "optimal"
        )
        if opt and prog.records & {ENUM_W, COST_S}:
            what = "je.enumeration() sites" if ENUM_W in prog.records else "je.cost declarations"
            raise EstimatorError(
                f"je.score_function(baseline='optimal') cannot be combined with {what} "
                f"(their surrogate weighs each site's score by a different objective); use "
                f"baseline='leave_one_out' for these score-function sites"
            )
        return opt

    def scores(self, k, diff, opt):
        """One sample's ``(f, [grad log p_g for g in opt])`` (stop-gradient): one forward
        and ``len(opt)`` reverse passes (the chunked totals of the optimal baseline)."""
        prog = self.program(k, diff)
        (f, logp), pullback = jax.vjp(lambda d: prog.call(k, d)[:2], diff)
        return jax.lax.stop_gradient((f, _group_scores(f, logp, pullback, opt)))

    def optimal_totals(self, keys, diff, opt):
        """``[(sum_i f_i s_gi^2, sum_i s_gi^2) for g in opt]`` over all ``N`` samples
        (elementwise over the parameter pytree): a separate pass for chunked runs."""

        def fwd(kc):
            f, sc = jax.vmap(lambda k: self.scores(k, diff, opt))(kc)
            sums = [
                (
                    jax.tree_util.tree_map(lambda s: jnp.tensordot(f, s * s, 1), s_g),
                    jax.tree_util.tree_map(lambda s: jnp.sum(s * s, 0), s_g),
                )
                for s_g in sc
            ]
            return sums, None

        return self.psum(_scan_chunks(fwd, keys, self.chunk_size)[0])

    def optimal_correction(self, f, logp, pullback, opt, totals):
        """``-sum_g b_g (.) s_g`` for one sample, under ``vmap(axis_name=_SAMPLES)``.

        ``s_g`` is the sample's score of group ``g`` (the pullback of a unit cotangent on
        ``log p_g``: the same reverse pass as the gradient's, another cotangent),
        ``b_gj = (T1_j - f s_gj^2) / (T2_j - s_gj^2)`` with ``T1 = sum_k f_k s_gk^2`` and
        ``T2 = sum_k s_gk^2`` over all ``N`` samples (``totals``; None: psums over the
        vmapped samples), i.e. ``sum_{k != i} f_k s_gkj^2 / sum_{k != i} s_gkj^2``, the
        leave-one-out estimate of ``E[f s_j^2] / E[s_j^2]`` (0 where the other samples'
        scores all vanish in coordinate ``j``).
        """
        fi = jax.lax.stop_gradient(f[0])
        sc = jax.lax.stop_gradient(_group_scores(f, logp, pullback, opt))
        if totals is None:
            totals = [
                (
                    jax.tree_util.tree_map(lambda s: fi * s * s, s_g),
                    jax.tree_util.tree_map(lambda s: s * s, s_g),
                )
                for s_g in sc
            ]
            totals = self.psum(jax.lax.psum(totals, _SAMPLES))

        def term(s, t1, t2):
            num = t1 - fi * s * s
            den = t2 - s * s
            ok = den > 0
            return -jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0) * s

        corr = [jax.tree_util.tree_map(term, s_g, *t) for s_g, t in zip(sc, totals, strict=True)]
        return functools.reduce(tree_add, corr)

    def total(self, keys, diff):
        def fwd(kc):
            f, *_ = self.terms(kc, diff)
            return _sum(f), None

        return jax.lax.stop_gradient(self.psum(_scan_chunks(fwd, keys, self.chunk_size)[0]))

    def surrogate(self, keys, diff, state):
        """``(value, mean or per-sample grads, aux, per-sample f, new_state)``.

        The value is the mean of the surrogate (numerically the mean of ``f``) taken from
        the same ``jax.value_and_grad`` as the gradient, so an outer derivative of the
        value is the score-function/pathwise gradient and an outer derivative of the
        gradient is the DiCE second derivative.
        """
        n = self.num_samples
        chunked = self.chunk_size is not None and self.chunk_size < n
        per_sample = self.kind == "grad_samples"
        self.program(keys[0], diff)  # the one trace of the program, at the top level
        total = None
        loo = self.needs_total(keys, diff)
        if chunked and loo:
            # the chunks need the leave-one-out total before they start: one forward pass
            # over all samples. Unchunked, grad_samples takes it from its own forward pass
            # (a psum across the samples, see sample_grad) and je.grad from the batched f.
            total = self.total(keys, diff)

        opt = self.optimal_groups(keys, diff)
        opt_totals = None
        if opt:
            # per-sample score vectors are needed: the per-sample path (summed for
            # je.grad), and for chunks a first pass for the all-sample sums
            self.higher_order_ok = False
            self.higher_order_reason = (
                "score_function(baseline='optimal') adds a per-coordinate baseline term "
                "that is only a first-order correction"
            )
            if chunked:
                opt_totals = self.optimal_totals(keys, diff, opt)
        if per_sample or opt:

            def fn(kc):
                g, s, f, aux = jax.vmap(
                    lambda k: self.sample_grad(k, diff, total, loo, state, opt, opt_totals),
                    axis_name=_SAMPLES,
                )(kc)
                if not per_sample:  # je.grad / value_and_grad: sum the chunk's gradients
                    return (_sum(s), jax.tree_util.tree_map(lambda x: _sum(x, 0), g)), (
                        f,
                        aux,
                    )
                return _sum(s), (g, f, aux)

            if per_sample:
                ssum, (grads, f, aux) = _scan_chunks(fn, keys, self.chunk_size)
                ssum = self.psum(ssum)
            else:
                (ssum, gsum), (f, aux) = _scan_chunks(fn, keys, self.chunk_size)
                ssum, gsum = self.psum((ssum, gsum))
                grads = tree_scale(gsum, 1.0 / n)
        else:

            def fn(kc):
                def loss(d):
                    f, logp, aux, groups = self.terms(kc, d)
                    tot = total
                    if total is None:
                        tot = self.psum(jax.lax.stop_gradient(_sum(f)))
                    s = _sum(self.combine(f, logp, groups, tot, state))
                    bt = _boundary_terms(logp)
                    out = (f, aux, _invalid_count(logp))
                    return s, (out if bt is None else _Boundary(out, *bt))

                (s, (f, aux, inv)), g = _value_and_grad_checked(loss, diff)
                return (_nan_where(inv > 0, g), s), (f, aux)

            (gsum, ssum), (f, aux) = _scan_chunks(fn, keys, self.chunk_size)
            gsum, ssum = self.psum((gsum, ssum))
            grads = tree_scale(gsum, 1.0 / n)
        value = ssum / n
        new_state = (
            self.est.baseline.update(state, jax.lax.stop_gradient(value))
            if self.est.has_state
            else None
        )
        return value, grads, aux, f, new_state

    def whole_program(self, keys, diff, state=None):
        """``(value, grads, aux, f, new_state)``. A stateful whole-program estimator
        (``je.rebar`` / ``je.relax`` with learned control variates) gets ``state`` in
        ``per_sample(..., state=state)``, which returns a fourth output (a gradient w.r.t.
        the state's parameters); its mean over the ``N`` samples goes to
        ``est.update_state(state, mean)``, which gives ``new_state`` (else ``None``)."""
        theta, unravel = ravel_pytree(diff)
        est = self.est
        stateful = est.has_state

        def plain(k, th):
            with WholeProgramHandler(est.name, est):
                return self.eval(k, unravel(th))

        plain = _Once(plain)

        def call(k, th):
            # Plain runs (finite differences evaluate the program at several thetas) are
            # traced once; handlers that record or replay (stochastic_ad) must see their
            # own run of the program.
            if type(current_handler()) is WholeProgramHandler:
                return plain(k, th)
            return self.eval(k, unravel(th))

        def one(k):
            if stateful:
                ps = lambda k: est.per_sample(call, k, theta, state=state)
            else:
                ps = lambda k: (*est.per_sample(call, k, theta), None)
            out, err = _functional_checks(ps)(k)
            _rethrow(err)
            return out

        one = _Once(one)
        batch_cache: dict[str, Any] = {}

        def fn(kc):
            if (
                self.kind != "grad_samples"
                and getattr(est, "sums_batch", False)
                and not self.spread
            ):
                # one reverse pass for the chunk (reverse-mode stochastic_ad): no per-sample
                # gradient of size P is formed (half-precision parameters: per-sample
                # gradients, summed in float32, as in terms)
                out, err = _functional_checks(
                    lambda ks: est.per_batch(call, ks, theta, batch_cache)
                )(kc)
                _rethrow(err)
                f, gsum, aux = out
                return (gsum, None), (f, aux)
            f, g, aux, sg = jax.vmap(one)(kc)
            sg = jax.tree_util.tree_map(lambda x: _sum(x, 0), sg)
            if self.kind == "grad_samples":
                return (None, sg), (g, f, aux)
            return (_sum(g, 0), sg), (f, aux)

        if self.kind == "grad_samples":
            (_, sgsum), (g, f, aux) = _scan_chunks(fn, keys, self.chunk_size)
            grads = jax.vmap(unravel)(g)
        else:
            (gsum, sgsum), (f, aux) = _scan_chunks(fn, keys, self.chunk_size)
            grads = unravel(self.psum(gsum) / self.num_samples)
        new_state = None
        if stateful:
            new_state = est.update_state(
                state, tree_scale(self.psum(sgsum), 1.0 / self.num_samples)
            )
        return self.psum(_sum(f)) / self.num_samples, grads, aux, f, new_state


_COMMON_DOC = """
    Args:
      fun: ``fun(key, *args)`` returning a scalar (or ``(scalar, aux)`` with
        ``has_aux=True``); it must draw randomness only through :func:`jaxestim.sample`
        (loops through :func:`jaxestim.scan` / :func:`jaxestim.fori_loop`).
      estimator: a jaxestim estimator; ``None`` means :func:`jaxestim.auto`.
      argnums: which positional argument(s) of ``fun`` to differentiate (``>= 1``; 0 is
        the key). Any pytree, e.g. an ``equinox.Module``: as with ``equinox.filter_grad``
        its floating leaves (floating/complex arrays and Python floats) are differentiated
        and every other leaf (functions such as ``jax.nn.relu``, strings, ``None``, Python
        ints, bools, integer/bool arrays) passes through unchanged and is ``None`` in the
        returned gradient pytree (write ``1.0``, not ``1``, to differentiate a number). An
        argument with no floating leaf at all raises ``TypeError``. Non-array leaves of all
        arguments are static (part of the compilation key; unhashable ones disable the
        cache).
      num_samples: ``N`` Monte Carlo samples; the key is split into ``N`` per-sample keys.
      chunk_size: evaluate at most this many samples at once (``lax.scan`` over chunks);
        the result does not depend on it beyond floating-point summation order.
      has_aux: ``fun`` returns ``(value, aux)``; per-sample ``aux`` is returned stacked on
        a leading axis of size ``N``.
      validate: checked mode. Every :func:`jaxestim.sample` site checks its distribution's
        parameters at run time (``jax.experimental.checkify``) and a failure raises an error
        naming the site, e.g. ``je.sample: Bernoulli parameter `probs` must be in [0, 1],
        got 1.5``: eagerly a ``ValueError`` (``checkify.JaxRuntimeError``); under an
        enclosing ``jax.jit`` / ``vmap`` / ``grad`` a ``jax.errors.JaxRuntimeError`` raised
        when the compiled code runs (its message contains the check's), with the outputs
        NaN-poisoned so a failed validation is never silently used. Valid programs give
        the same results up to float32 rounding (the checks can change how XLA fuses the
        program); the cost is reported by ``benchmarks/validate_cost.py``.
        Every family works under every estimator; a data-dependent loop run per sample
        (see ``docs/concepts.md``) raises :class:`~jaxestim.EstimatorError` at trace time.
      mesh: a :class:`jax.sharding.Mesh` (e.g. ``jax.make_mesh((4,), ("samples",))``,
        also one spanning several processes under ``jax.distributed.initialize``) over
        whose devices the ``num_samples`` samples are sharded: each device evaluates
        ``N / D`` of the per-sample keys of the single-device call (chunked by
        ``chunk_size`` within the device) and the sums over samples are completed with one
        ``psum``, so the estimate equals the single-device one for the same key up to
        floating-point summation order, for every estimator (a leave-one-out baseline
        uses the total of all ``N`` samples; a moving-average state stays replicated).
        The gradient and value come back replicated over the mesh; per-sample outputs
        (``grad_samples``' gradients, ``aux``) sharded along the sample axis. ``N`` must
        be a multiple of ``D`` (``ValueError`` otherwise). See ``jaxestim/_sharding.py``.
      axis: the mesh axis name (or tuple of names) to shard the samples over; default
        all of the mesh's axes. Requires ``mesh``.

    Precision: every sum over samples (gradient, value, leave-one-out total, chunks,
    devices) is accumulated in at least float32 (float64 for float64 inputs); the gradient
    is returned in each parameter's dtype, the value in ``fun``'s output dtype. Each sample
    runs in the dtypes it is given; ``bfloat16`` / ``float16`` parameters are differentiated
    through per-sample float32 copies, which forms each chunk's per-sample gradients
    (memory ``O(chunk_size * P)``). See the getting-started guide, "Dtypes".

    Invalid parameters: out-of-range or NaN parameters at a sample site give a NaN value
    and a NaN gradient (per sample for :func:`grad_samples`, for the mean otherwise), never
    a finite number. :func:`value_and_grad` and :func:`grad_samples`, which compute the
    value anyway, also make the gradient NaN whenever the value is NaN for any other reason
    (the program's own arithmetic); :func:`grad` does not compute the value just for that.
    Score-function gradients are also NaN where a site's support moves with the
    parameters (a zero-mass value gaining mass, ``Uniform`` bounds), where the estimator
    is biased; :func:`jaxestim.stochastic_ad` is NaN along a direction that leaves the
    parameter space.

    Higher derivatives: the result may be differentiated again (``jax.grad``,
    ``jax.hessian``, ``jax.jacfwd``, ``jax.jvp``, also through ``jax.jit``) when the estimator
    is :func:`jaxestim.score_function` (a DiCE surrogate: unbiased derivatives of every
    order, see ``_Run.combine``), :func:`jaxestim.pathwise`, :func:`jaxestim.enumeration`
    (exact weights times DiCE) or :func:`jaxestim.auto` --
    including the value of :func:`value_and_grad`, whose derivative is the estimator's
    gradient. Estimates of :func:`jaxestim.straight_through`,
    :func:`jaxestim.gumbel_softmax` (at discrete sites, also as per-site overrides),
    :func:`jaxestim.finite_difference`, :func:`jaxestim.stochastic_ad`,
    ``je.score_function(baseline="optimal")`` and ``je.score_function(control_variate=
    "delta")`` (first-order control variates) raise
    :class:`jaxestim.EstimatorError` at trace time when differentiated again (their
    derivatives would be silently biased); first-order use, ``jax.jit`` and ``jax.vmap``
    are unaffected. Cost of a second derivative: about one more forward-over-reverse pass.

    The returned function is ``g(key, *args, estimator_state=None)``. When the estimator
    is stateful (a score function with a :class:`jaxestim.baselines.MovingAverage`
    baseline) pass ``estimator_state`` (from ``estimator.init()``) and it returns
    ``(result, new_state)``.
"""


def grad(
    fun: Callable[..., Any],
    estimator: Estimator | None = None,
    *,
    argnums: int | Sequence[int] = 1,
    num_samples: int = 1,
    chunk_size: int | None = None,
    has_aux: bool = False,
    validate: bool = False,
    mesh: jax.sharding.Mesh | None = None,
    axis: str | Sequence[str] | None = None,
) -> Callable[..., Any]:
    """Monte Carlo estimate of ``grad_args E[fun(key, *args)]``, shaped like the arguments.

    The estimate is the mean over ``num_samples`` per-sample estimates, computed without
    materializing them (for site-level estimators, one reverse pass over the batched
    surrogate). Equals ``mean(grad_samples(...))`` for the same key. Returns grads, or
    ``(grads, aux)`` with ``has_aux``. Bias/variance: those of the estimator, variance
    divided by ``N``. Cost: ``N`` times the estimator's per-sample cost (about one forward
    and one backward pass for site-level estimators), memory ``O(P + C * activations)``
    with ``C = chunk_size or N``.
    """
    return _Transformed(
        fun, estimator, argnums, num_samples, chunk_size, has_aux, "grad", validate, mesh, axis
    )


def value_and_grad(
    fun: Callable[..., Any],
    estimator: Estimator | None = None,
    *,
    argnums: int | Sequence[int] = 1,
    num_samples: int = 1,
    chunk_size: int | None = None,
    has_aux: bool = False,
    validate: bool = False,
    mesh: jax.sharding.Mesh | None = None,
    axis: str | Sequence[str] | None = None,
) -> Callable[..., Any]:
    """Like :func:`grad` but returns ``(mean value, grads)``.

    With ``has_aux`` it returns ``((mean value, aux), grads)`` as :func:`jax.value_and_grad`.
    The mean value is the unbiased Monte Carlo estimate of ``E[fun]`` from the same samples.
    """
    return _Transformed(
        fun,
        estimator,
        argnums,
        num_samples,
        chunk_size,
        has_aux,
        "value_and_grad",
        validate,
        mesh,
        axis,
    )


def grad_samples(
    fun: Callable[..., Any],
    estimator: Estimator | None = None,
    *,
    argnums: int | Sequence[int] = 1,
    num_samples: int = 1,
    chunk_size: int | None = None,
    has_aux: bool = False,
    validate: bool = False,
    mesh: jax.sharding.Mesh | None = None,
    axis: str | Sequence[str] | None = None,
) -> Callable[..., Any]:
    """The ``num_samples`` per-sample gradient estimates, stacked on a leading axis.

    Their mean is :func:`grad`'s result for the same key; their spread is the estimator's
    per-sample variance (divide the standard deviation by ``sqrt(N)`` for the standard
    error of the mean). Materializes ``N`` gradients: a diagnostic tool.
    """
    return _Transformed(
        fun,
        estimator,
        argnums,
        num_samples,
        chunk_size,
        has_aux,
        "grad_samples",
        validate,
        mesh,
        axis,
    )


for _f in (grad, value_and_grad, grad_samples):
    _f.__doc__ = (_f.__doc__ or "") + _COMMON_DOC
