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
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxestim._errors import EstimatorError
from jaxestim._estimators import Auto, Estimator, ScoreFunction, SurrogateHandler
from jaxestim._util import check_key, tree_add, tree_scale

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
    if jnp.issubdtype(f.dtype, jnp.complexfloating):
        raise TypeError(f"{where}: `fun` must return a real scalar, got dtype {f.dtype}")
    if not jnp.issubdtype(f.dtype, jnp.floating):
        f = f.astype(jnp.result_type(float))
    return f, aux


def _scan_chunks(fn: Callable, keys: jax.Array, chunk_size: int | None) -> tuple[Any, Any]:
    """Apply ``fn(keys_chunk) -> (summable, per_sample)`` over chunks of ``keys``.

    Returns the sum of the first outputs and the per-sample outputs concatenated along
    axis 0. With ``chunk_size`` None (or >= N) it is just ``fn(keys)``.
    """
    n_total = keys.shape[0]
    if chunk_size is None or chunk_size >= n_total:
        return fn(keys)
    n, r = divmod(n_total, chunk_size)
    main = keys[: n * chunk_size].reshape((n, chunk_size, *keys.shape[1:]))
    acc_shape, _ = jax.eval_shape(fn, main[0])
    acc0 = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), acc_shape)

    def body(acc: Any, kc: jax.Array) -> tuple[Any, Any]:
        a, per = fn(kc)
        return tree_add(acc, a), per

    acc, per = jax.lax.scan(body, acc0, main)
    per = jax.tree_util.tree_map(lambda x: x.reshape((n * chunk_size, *x.shape[2:])), per)
    if r:
        a, per_r = fn(keys[n * chunk_size :])
        acc = tree_add(acc, a)
        per = jax.tree_util.tree_map(lambda x, y: jnp.concatenate([x, y]), per, per_r)
    return acc, per


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
        estimator.check(num_samples)
        self.fun = fun
        self.estimator = estimator
        self.argnums = argnums
        self._nums = nums
        self.num_samples = num_samples
        self.chunk_size = chunk_size
        self.has_aux = has_aux
        self.kind = kind
        self.where = where
        self._jitted = jax.jit(self._run, static_argnums=4)
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
        diff = tuple(args[i - 1] for i in self._nums)
        for i, d in zip(self._nums, diff, strict=True):
            for leaf in jax.tree_util.tree_leaves(d):
                if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
                    raise TypeError(
                        f"{self.where}: differentiated argument {i} must contain only floating "
                        f"arrays, got a leaf of dtype {jnp.result_type(leaf)}"
                    )
        # Compile the estimator once per (static configuration, shapes): array arguments
        # are traced, every other leaf of the non-differentiated arguments is static (as in
        # equinox's filter_jit), so eager calls run compiled code.
        others = tuple(None if i in self._nums else a for i, a in enumerate(args, 1))
        leaves, treedef = jax.tree_util.tree_flatten((others, est))
        dynamic = tuple(_is_array(x) for x in leaves)
        dyn = [x for x, d in zip(leaves, dynamic, strict=True) if d]
        static = (
            treedef,
            dynamic,
            tuple(None if d else x for x, d in zip(leaves, dynamic, strict=True)),
        )
        try:
            hash(static)
            run = self._jitted
        except TypeError:  # unhashable static leaves: trace without the compilation cache
            run = self._run
        try:
            return run(key, diff, dyn, estimator_state, static)
        except jax.errors.UnexpectedTracerError as e:
            raise EstimatorError(_LEAK_HINT) from e

    def _run(self, key, diff, dyn, state, static):
        treedef, dynamic, static_leaves = static
        it = iter(dyn)
        leaves = [next(it) if d else x for d, x in zip(dynamic, static_leaves, strict=True)]
        others, est = jax.tree_util.tree_unflatten(treedef, leaves)
        args = list(others)
        for i, d in zip(self._nums, diff, strict=True):
            args[i - 1] = d
        run = _Run(self, est, tuple(args))
        keys = jax.random.split(key, self.num_samples)
        if est.site_level:
            value, grads, aux, new_state = run.surrogate(keys, diff, state)
        else:
            value, grads, aux = run.whole_program(keys, diff)
            new_state = None
        if isinstance(self.argnums, int):
            grads = grads[0]
        if self.kind == "value_and_grad":
            out = ((value, aux), grads) if self.has_aux else (value, grads)
        else:
            out = (grads, aux) if self.has_aux else grads
        return (out, new_state) if est.has_state else out


def _is_array(x: Any) -> bool:
    return isinstance(x, jax.Array | np.ndarray | np.generic | jax.core.Tracer)


class _Run:
    """One trace of a transform: the program, its estimator and its fixed arguments."""

    def __init__(self, t: _Transformed, est: Estimator, args: tuple):
        self.t, self.est, self.args = t, est, args
        self.num_samples = t.num_samples
        self.chunk_size = t.chunk_size
        self.kind = t.kind

    def eval(self, key: jax.Array, diff: tuple) -> tuple[jax.Array, Any]:
        full = list(self.args)
        for i, d in zip(self.t._nums, diff, strict=True):
            full[i - 1] = d
        return _split(self.t.fun(key, *full), self.t.has_aux, self.t.where)

    def terms(self, keys: jax.Array, diff: tuple):
        """Per-sample objective, score-function log-probs by group, aux, and the groups."""
        shared = SurrogateHandler.new_shared(self.num_samples)

        def one(k: jax.Array):
            h = SurrogateHandler(self.est, self.num_samples, shared)
            with h:
                f, aux = self.eval(k, diff)
            return f, h.logp, aux

        f, logp, aux = jax.vmap(one)(keys)
        return f, logp, aux, shared["groups"]

    def combine(self, f, logp, groups: list[ScoreFunction], total, state):
        """Per-sample surrogate ``f + sum_g stop_grad(f - b_g) (log p_g - stop_grad(log p_g))``."""
        s = f
        for i, g in enumerate(groups):
            w = jax.lax.stop_gradient(f - g.baseline_value(f, total, self.num_samples, state))
            s = s + w * (logp[i] - jax.lax.stop_gradient(logp[i]))
        return s

    def needs_total(self, keys, diff) -> bool:
        """Whether a leave-one-out baseline occurs (found by tracing one sample abstractly)."""
        groups: list = []

        def probe(k):
            *_, g = self.terms(k[None], diff)
            groups.extend(g)

        jax.eval_shape(probe, keys[0])
        return any(isinstance(g.baseline, str) for g in groups)

    def total(self, keys, diff):
        def fwd(kc):
            f, *_ = self.terms(kc, diff)
            return jnp.sum(f), None

        return jax.lax.stop_gradient(_scan_chunks(fwd, keys, self.chunk_size)[0])

    def surrogate(self, keys, diff, state):
        n = self.num_samples
        chunked = self.chunk_size is not None and self.chunk_size < n
        per_sample = self.kind == "grad_samples"
        total = None
        if (chunked or per_sample) and self.needs_total(keys, diff):
            total = self.total(keys, diff)

        if per_sample:

            def fn(kc):
                def one(k):
                    def loss(d):
                        f, logp, aux, groups = self.terms(k[None], d)
                        s = self.combine(f, logp, groups, total, state)
                        return s[0], (f[0], jax.tree_util.tree_map(lambda a: a[0], aux))

                    return jax.grad(loss, has_aux=True)(diff)

                g, (f, aux) = jax.vmap(one)(kc)
                return None, (g, f, aux)

            _, (grads, f, aux) = _scan_chunks(fn, keys, self.chunk_size)
        else:

            def fn(kc):
                def loss(d):
                    f, logp, aux, groups = self.terms(kc, d)
                    tot = jax.lax.stop_gradient(jnp.sum(f)) if total is None else total
                    return jnp.sum(self.combine(f, logp, groups, tot, state)), (f, aux)

                g, (f, aux) = jax.grad(loss, has_aux=True)(diff)
                return g, (f, aux)

            gsum, (f, aux) = _scan_chunks(fn, keys, self.chunk_size)
            grads = tree_scale(gsum, 1.0 / n)
        value = jnp.mean(f)
        new_state = self.est.baseline.update(state, value) if self.est.has_state else None
        return value, grads, aux, new_state

    def whole_program(self, keys, diff):
        theta, unravel = ravel_pytree(diff)
        est = self.est

        def call(k, th):
            return self.eval(k, unravel(th))

        def fn(kc):
            f, g, aux = jax.vmap(lambda k: est.per_sample(call, k, theta))(kc)
            if self.kind == "grad_samples":
                return None, (g, f, aux)
            return jnp.sum(g, axis=0), (f, aux)

        if self.kind == "grad_samples":
            _, (g, f, aux) = _scan_chunks(fn, keys, self.chunk_size)
            grads = jax.vmap(unravel)(g)
        else:
            gsum, (f, aux) = _scan_chunks(fn, keys, self.chunk_size)
            grads = unravel(gsum / self.num_samples)
        return jnp.mean(f), grads, aux


_COMMON_DOC = """
    Args:
      fun: ``fun(key, *args)`` returning a scalar (or ``(scalar, aux)`` with
        ``has_aux=True``); it must draw randomness only through :func:`jaxestim.sample`
        (loops through :func:`jaxestim.scan` / :func:`jaxestim.fori_loop`).
      estimator: a jaxestim estimator; ``None`` means :func:`jaxestim.auto`.
      argnums: which positional argument(s) of ``fun`` to differentiate (``>= 1``; 0 is
        the key). Any pytree of floating arrays.
      num_samples: ``N`` Monte Carlo samples; the key is split into ``N`` per-sample keys.
      chunk_size: evaluate at most this many samples at once (``lax.scan`` over chunks);
        the result does not depend on it beyond floating-point summation order.
      has_aux: ``fun`` returns ``(value, aux)``; per-sample ``aux`` is returned stacked on
        a leading axis of size ``N``.

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
) -> Callable[..., Any]:
    """Monte Carlo estimate of ``grad_args E[fun(key, *args)]``, shaped like the arguments.

    The estimate is the mean over ``num_samples`` per-sample estimates, computed without
    materializing them (for site-level estimators, one reverse pass over the batched
    surrogate). Equals ``mean(grad_samples(...))`` for the same key. Returns grads, or
    ``(grads, aux)`` with ``has_aux``.
    """
    return _Transformed(fun, estimator, argnums, num_samples, chunk_size, has_aux, "grad")


def value_and_grad(
    fun: Callable[..., Any],
    estimator: Estimator | None = None,
    *,
    argnums: int | Sequence[int] = 1,
    num_samples: int = 1,
    chunk_size: int | None = None,
    has_aux: bool = False,
) -> Callable[..., Any]:
    """Like :func:`grad` but returns ``(mean value, grads)``.

    With ``has_aux`` it returns ``((mean value, aux), grads)`` as :func:`jax.value_and_grad`.
    The mean value is the unbiased Monte Carlo estimate of ``E[fun]`` from the same samples.
    """
    return _Transformed(fun, estimator, argnums, num_samples, chunk_size, has_aux, "value_and_grad")


def grad_samples(
    fun: Callable[..., Any],
    estimator: Estimator | None = None,
    *,
    argnums: int | Sequence[int] = 1,
    num_samples: int = 1,
    chunk_size: int | None = None,
    has_aux: bool = False,
) -> Callable[..., Any]:
    """The ``num_samples`` per-sample gradient estimates, stacked on a leading axis.

    Their mean is :func:`grad`'s result for the same key; their spread is the estimator's
    per-sample variance (divide the standard deviation by ``sqrt(N)`` for the standard
    error of the mean). Materializes ``N`` gradients: a diagnostic tool.
    """
    return _Transformed(fun, estimator, argnums, num_samples, chunk_size, has_aux, "grad_samples")


for _f in (grad, value_and_grad, grad_samples):
    _f.__doc__ = (_f.__doc__ or "") + _COMMON_DOC
