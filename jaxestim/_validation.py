"""Checked mode (``validate=True``): runtime checks of sample-site parameters.

Inside an estimator transform distribution parameters are traced, so the distributions'
construction-time range checks cannot see their values; out-of-range parameters then give
NaN samples/log-probabilities (and, by the transforms' rule, NaN gradients). With
``je.grad(..., validate=True)`` (also ``value_and_grad`` and ``grad_samples``) every
:func:`jaxestim.sample` site instead emits :func:`jax.experimental.checkify.check` s built
from ``dist._param_checks()``, and the transform functionalizes them with
``checkify.checkify``; a failure names the site's distribution, the parameter and the first
offending value, e.g. ``je.sample: Bernoulli parameter `probs` must be in [0, 1], got 1.5``.

Whether checks are emitted is a thread-local flag set by :func:`validating` only for the
dynamic extent of a transform's own tracing (the transform's ``_run``), like the effect
handlers of :mod:`jaxestim._handlers`: nothing leaks across ``jax.jit`` or into programs
traced later.

Cost: one reduction (``all``) and one ``argmin`` per parameter per site per sample, plus
checkify's error bookkeeping, whose cost grows with the number of check sites in the
program (in a :func:`jaxestim.scan` body it is carried through every iteration); see
``benchmarks/validate_cost.py``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

_LOCAL = threading.local()

LOOP_LIMITATION = (
    "validate=True cannot check this program: it runs a data-dependent lax.while_loop per "
    "sample (under the estimator's vmap over samples), which jax.experimental.checkify does "
    "not support. Such loops are a plain jax.lax.while_loop (or fori_loop with traced bounds) "
    "in the program: use je.while_loop(..., max_iterations=) or static bounds; the samplers "
    "of numpyro's count distributions (Poisson, Binomial, ...) and the derivative of its "
    "gamma-based ones (Gamma, Beta, ...): use jaxestim.distributions. Otherwise run with "
    "validate=False."
)


def is_loop_limitation(e: ValueError) -> bool:
    """Whether ``e`` is checkify failing on a per-sample ``while_loop`` (see ``LOOP_LIMITATION``).

    checkify rejects a while loop with a batched predicate (checkify-of-vmap-of-while); a
    while loop checkified inside a ``jax.vmap`` (vmap-of-checkify-of-while) fails in JAX's
    batching of the ``dce_sink`` its checkified body contains, with a bare ``foreach()``
    length error.
    """
    msg = str(e)
    return "batched while-loops" in msg or msg.startswith("foreach() argument")


def active() -> bool:
    """Whether sample sites currently emit checkify checks."""
    return getattr(_LOCAL, "on", False)


@contextlib.contextmanager
def validating(on: bool) -> Iterator[None]:
    """Turn site checks on (or off) for the dynamic extent of the ``with`` block."""
    prev = active()
    _LOCAL.on = bool(on)
    try:
        yield
    finally:
        _LOCAL.on = prev


def _param_value(dist: Any, name: str) -> jax.Array | None:
    """The array behind parameter ``name`` of ``dist`` or of the distribution it transforms.

    ``None`` where there is none or it is no array (a ``TransformedDistribution``'s bijector).
    """
    while dist is not None:
        value = getattr(dist, "_" + name, None)
        if value is None:
            value = getattr(dist, name, None)
        if value is not None:
            return value if isinstance(value, jax.Array | np.ndarray | float | int) else None
        dist = getattr(dist, "_base", None)
    return None


def _first_invalid(valid: jax.Array, value: jax.Array) -> jax.Array:
    """``value`` at the first batch element where ``valid`` is False.

    ``valid`` has the distribution's batch shape; dimensions of ``value`` beyond it are event
    dimensions (``Categorical`` ``probs``, ``MultivariateNormal`` ``scale_tril``), and the
    whole offending vector or matrix is returned.
    """
    n_event = max(value.ndim - valid.ndim, 0)
    event = value.shape[value.ndim - n_event :]
    shape = jnp.broadcast_shapes(valid.shape, value.shape[: value.ndim - n_event])
    flat_ok = jnp.ravel(jnp.broadcast_to(valid, shape))
    if not flat_ok.size:
        return jnp.full(event, jnp.nan)
    flat_v = jnp.reshape(jnp.broadcast_to(value, shape + event), (-1, *event))
    return flat_v[jnp.argmin(flat_ok)]


def check_site(dist: Any) -> None:
    """Emit one ``checkify.check`` per parameter check of ``dist`` when validation is active.

    ``dist._param_checks()`` yields ``(name, valid, expected)`` with ``valid`` a boolean
    array of the batch shape (``True`` where the parameter is in range) and ``expected`` a
    description such as ``"in [0, 1]"``. The check fails when any element is invalid and
    reports the parameter's value at the first invalid batch element (a vector or matrix
    for parameters with event dimensions). No-op when validation is off or the
    distribution provides no checks.
    """
    if not active():
        return
    checks = getattr(dist, "_param_checks", None)
    if checks is None:
        return
    family = type(dist).__name__
    for name, valid, expected in checks():
        valid = jnp.asarray(valid)
        msg = f"je.sample: {family} parameter `{name}` must be {expected}"
        value = _param_value(dist, name)
        if value is None:
            checkify.check(jnp.all(valid), msg)
            continue
        bad = _first_invalid(valid, jnp.asarray(value))
        checkify.check(jnp.all(valid), msg + ", got {value}", value=jax.lax.stop_gradient(bad))
