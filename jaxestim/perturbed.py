r"""Perturbation smoothing of deterministic, possibly non-differentiable functions.

:func:`perturbed` turns ``g: R^d -> R^m`` (a step function, ``floor``, an ``argmax``, a
combinatorial solver) into the Monte Carlo estimate of its smoothed version

    F_sigma(theta) = E[g(theta + sigma Z)],

which is differentiable for every ``g`` with bounded values, and gives ``F_sigma``'s
derivative a Monte Carlo estimator through :func:`jax.custom_jvp`, so ``jax.grad``,
``jax.jacrev``, ``jax.jacfwd``, ``jax.jvp``, ``jax.jit`` and ``jax.vmap`` work on it.

References: Berthet, Blondel, Teboul, Cuturi, Vert & Bach (2020), "Learning with
Differentiable Perturbed Optimizers", NeurIPS (arXiv:2002.08676); Abernethy, Lee, Sinha &
Tewari (2014), "Online linear optimization via smoothing", COLT; the design follows
``optax.perturbations.make_perturbed_fun`` (which uses the unperturbed ``g(theta)`` as
its baseline; here the baseline is leave-one-out, which keeps the estimate unbiased).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxestim._errors import EstimatorError
from jaxestim._util import check_key, concrete

NOISES = ("normal", "gumbel")
ESTIMATORS = ("score_function", "pathwise")

_HIGHER_ORDER = (
    "je.perturbed: the derivative of a perturbed function is a Monte Carlo estimate that "
    "cannot be differentiated again (an outer jax.grad / jax.hessian / jax.jacfwd would "
    "differentiate g itself, pathwise, and silently give wrong higher derivatives of "
    "E[g(theta + sigma Z)] for a non-smooth g). Only first derivatives are supported."
)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _first_order_only(msg: str, x: Any) -> Any:
    """Identity; differentiating through it raises (guards the custom rule's own inputs)."""
    return x


@_first_order_only.defjvp
def _first_order_only_jvp(msg, primals, tangents):
    raise EstimatorError(msg)


def _draw(noise: str, key: jax.Array, shape: tuple, dtype: Any) -> jax.Array:
    if noise == "normal":
        return jax.random.normal(key, shape, dtype)
    return jax.random.gumbel(key, shape, dtype)


def _grad_nu(noise: str, z: jax.Array) -> jax.Array:
    """``grad nu(z)``, ``nu = -log density``: ``z`` (Normal), ``1 - exp(-z)`` (Gumbel)."""
    return z if noise == "normal" else -jnp.expm1(-z)


def _jax_key(key: Any) -> jax.Array:
    """A JAX PRNG key from ``key``: a JAX key, or a jaxestim loop key / random stream."""
    from jaxestim._handlers import LoopKey
    from jaxestim.distributions._base import RandomStream

    if isinstance(key, LoopKey):  # a je.scan(..., key=...) iteration key: two of its words
        return key.key()
    if isinstance(key, RandomStream):
        return key.jax_key()
    check_key(key, "je.perturbed(...)(key, theta)")
    return key


def _check_args(fun: Any, sigma: Any, noise: Any, num_samples: Any, estimator: Any) -> float:
    if not callable(fun):
        raise TypeError(f"je.perturbed: `fun` must be callable, got {type(fun).__name__}")
    if isinstance(sigma, bool) or isinstance(sigma, jax.core.Tracer):
        raise TypeError(
            "je.perturbed: `sigma` must be a concrete positive number (it is fixed when the "
            f"perturbed function is built), got {sigma!r}"
        )
    s = concrete(sigma)
    if (
        s is None
        or s.shape != ()
        or not (jnp.issubdtype(s.dtype, jnp.floating) or jnp.issubdtype(s.dtype, jnp.integer))
    ):
        raise TypeError(f"je.perturbed: `sigma` must be a positive scalar, got {sigma!r}")
    s = float(s)
    if not (s > 0 and math.isfinite(s)):
        raise ValueError(f"je.perturbed: `sigma` must be > 0 and finite, got {s!r}")
    if noise not in NOISES:
        raise ValueError(f"je.perturbed: unknown `noise` {noise!r}; expected one of {NOISES}")
    if estimator not in ESTIMATORS:
        raise ValueError(
            f"je.perturbed: unknown `estimator` {estimator!r}; expected one of {ESTIMATORS}"
        )
    least = 2 if estimator == "score_function" else 1
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < least:
        why = (
            " (the leave-one-out baseline of estimator='score_function' needs two)"
            if estimator == "score_function"
            else ""
        )
        raise ValueError(
            f"je.perturbed: `num_samples` must be an int >= {least}{why}, got {num_samples!r}"
        )
    return s


def perturbed(
    fun: Callable[[Any], Any],
    sigma: float = 1.0,
    noise: str = "normal",
    num_samples: int = 100,
    estimator: str = "score_function",
) -> Callable[[Any, Any], Any]:
    r"""Perturbation smoothing: ``F(key, theta) = (1/N) sum_i g(theta + sigma Z_i)``.

    ``fun`` is a deterministic ``g`` from a pytree of floating arrays ``theta`` to a pytree
    of arrays (booleans and integers allowed: outputs are cast to ``theta``'s floating
    dtype). The returned ``F(key, theta)`` draws ``Z_1..Z_N`` i.i.d. with ``jax.random``
    from ``key`` (``N = num_samples``; ``Z ~ N(0, I)`` for ``noise="normal"``, standard
    Gumbel for ``noise="gumbel"``, one coordinate per scalar of ``theta``) and returns the
    Monte Carlo estimate of ``F_sigma(theta) = E[g(theta + sigma Z)]`` (unbiased).

    Derivatives of ``F`` (``jax.grad``, ``jax.jacrev``, ``jax.jacfwd``, ``jax.jvp``) are
    Monte Carlo estimates of ``grad F_sigma(theta)`` from the same ``N`` draws:

    * ``estimator="score_function"`` (default; any ``g``, also discontinuous or piecewise
      constant, whose plain derivative is zero almost everywhere): with ``nu = -log`` of
      the noise density (``grad nu(z) = z`` for the Normal, ``1 - exp(-z)`` for the Gumbel),
      ``grad F_sigma(theta) = E[g(theta + sigma Z) grad nu(Z)^T] / sigma`` (Berthet et al.,
      2020, Prop. 3.1), estimated with a leave-one-out baseline
      ``(1/N) sum_i (g_i - mean_{j != i} g_j) grad nu(Z_i)^T / sigma``
      ``= 1/(N-1) sum_i (g_i - mean_j g_j) grad nu(Z_i)^T / sigma``. Unbiased (the baseline
      of draw ``i`` is independent of ``Z_i`` and ``E[grad nu(Z)] = 0``); variance
      ``~ Var[g] E[|grad nu|^2] / (N sigma^2)``: it grows as ``sigma -> 0`` (while the bias
      ``F_sigma - g`` of the smoothing itself shrinks) and with the dimension ``d``. Needs
      ``N >= 2``. Costs no evaluation of ``g`` beyond the ``N`` of the value.
    * ``estimator="pathwise"``: ``E[grad g(theta + sigma Z)]`` by differentiating ``g`` at
      each perturbed point (``N`` JVPs of ``g`` per tangent direction). Unbiased only for
      ``g`` continuous and differentiable almost everywhere (``|x|``, ``relu``, ``max``);
      usually lower variance than the score function. For a discontinuous ``g`` (a step,
      ``floor``, ``argmax``) it is silently wrong (zero almost everywhere): use the
      score function there.

    ``F_sigma`` itself differs from ``g``: it is ``g`` convolved with the noise density
    (e.g. ``E[1[theta + sigma Z > 0]] = Phi(theta / sigma)``; for the one-hot ``argmax``
    with Gumbel noise, ``softmax(theta / sigma)``). Cost per call: ``N`` evaluations of
    ``g`` (vmapped), plus ``N`` JVPs of ``g`` per direction for ``estimator="pathwise"``.
    Only first derivatives: differentiating a derivative of ``F`` again raises
    :class:`~jaxestim.EstimatorError`.

    **Inside a jaxestim program** (``f(key, params)`` under :func:`jaxestim.grad`): call
    ``F(k, x)`` with a key ``k`` split from the program's key (``jax.random.split``, or
    ``LoopKey.split`` in a :func:`jaxestim.scan` body: ``F`` takes two of that key's words).
    Its noise is drawn with ``jax.random``, not through :func:`jaxestim.sample`, so the
    program's estimator never sees it: the estimators that differentiate the program
    (pathwise, score function, ``auto``, relaxations, ``stochastic_ad``, ``forward_gradient``,
    ``pathwise(mode="forward")``) use ``F``'s own estimator (above) for the derivative
    through ``F``, and each program sample has its own ``N`` draws, so the result is an
    unbiased estimate of ``grad E[F_sigma(...)]`` when the outer estimator is unbiased.
    ``je.finite_difference`` instead differences ``F``'s Monte Carlo value at nearby
    parameters with the same draws, which for a piecewise-constant ``g`` is mostly zero
    with rare huge jumps: use a derivative-based estimator.

    Args:
      fun: the deterministic function ``g(theta)``.
      sigma: the noise scale, a concrete number ``> 0``.
      noise: ``"normal"`` or ``"gumbel"``.
      num_samples: ``N``, the number of perturbations per call (``>= 2`` for
        ``"score_function"``).
      estimator: ``"score_function"`` or ``"pathwise"``.

    Returns:
      ``F(key, theta)`` with ``g``'s output structure.

    Raises:
      TypeError: naming the argument, for an argument of the wrong type.
      ValueError: naming the argument, for an argument with an invalid value.
    """
    s = _check_args(fun, sigma, noise, num_samples, estimator)
    n = num_samples

    def apply(theta: Any, key: Any) -> Any:
        key = _jax_key(key)
        flat, unravel = ravel_pytree(theta)
        if not jnp.issubdtype(flat.dtype, jnp.floating):
            raise TypeError(
                "je.perturbed(...)(key, theta): `theta` must hold floating arrays, got "
                f"dtype {flat.dtype} (pass e.g. jnp.asarray(theta, float))"
            )
        z = _draw(noise, key, (n, flat.size), flat.dtype)

        def values(x: jax.Array) -> Any:
            """``g`` at the ``N`` perturbed points (rows of ``x``), floating outputs."""
            out = jax.vmap(lambda xi: fun(unravel(xi)))(x)
            return jax.tree_util.tree_map(lambda y: jnp.asarray(y, flat.dtype), out)

        def mean(ys: Any) -> Any:
            return jax.tree_util.tree_map(lambda y: jnp.mean(y, axis=0), ys)

        @jax.custom_jvp
        def smooth(th: jax.Array, z: jax.Array) -> Any:
            return mean(values(th + s * z))

        @smooth.defjvp
        def smooth_jvp(primals, tangents):
            # z is parameter-free noise (drawn from the key): its tangent is zero
            (th, z), (dth, _) = primals, tangents
            x = _first_order_only(_HIGHER_ORDER, th + s * z)
            if estimator == "pathwise":
                ys, dys = jax.jvp(values, (x,), (jnp.broadcast_to(dth, x.shape),))
                return mean(ys), mean(dys)
            ys = values(x)
            score = (_grad_nu(noise, z) @ dth) / s  # <grad nu(Z_i), v> / sigma, shape (N,)

            def loo(y: jax.Array) -> jax.Array:
                centred = y - jnp.mean(y, axis=0)
                return jnp.tensordot(score, centred, axes=1) / (n - 1)

            return mean(ys), jax.tree_util.tree_map(loo, ys)

        return smooth(flat, z)

    def smoothed(key: Any, theta: Any) -> Any:
        return apply(theta, key)

    smoothed.__doc__ = (
        f"E[g(theta + {s} Z)] (noise={noise!r}, num_samples={n}, estimator={estimator!r}) "
        f"for g = {getattr(fun, '__name__', repr(fun))}; see jaxestim.perturbed."
    )
    return smoothed
