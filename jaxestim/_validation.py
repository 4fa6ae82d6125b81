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
from jax.experimental import checkify

_LOCAL = threading.local()


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


def _param_value(dist: Any, name: str) -> Any:
    value = getattr(dist, "_" + name, None)
    if value is None:
        value = getattr(dist, name, None)
    return value


def check_site(dist: Any) -> None:
    """Emit one ``checkify.check`` per parameter check of ``dist`` when validation is active.

    ``dist._param_checks()`` yields ``(name, valid, expected)`` with ``valid`` a boolean
    array (``True`` where the parameter is in range) and ``expected`` a description such as
    ``"in [0, 1]"``. The check fails when any element is invalid and reports the first
    invalid element's value. No-op when validation is off or the distribution provides no
    checks.
    """
    if not active():
        return
    checks = getattr(dist, "_param_checks", None)
    if checks is None:
        return
    family = type(dist).__name__
    for name, valid, expected in checks():
        valid = jnp.asarray(valid)
        value = _param_value(dist, name)
        if value is None:
            bad = jnp.asarray(jnp.nan)
        else:
            value = jnp.asarray(value)
            shape = jnp.broadcast_shapes(valid.shape, value.shape)
            flat_ok = jnp.ravel(jnp.broadcast_to(valid, shape))
            flat_v = jnp.ravel(jnp.broadcast_to(value, shape))
            bad = flat_v[jnp.argmin(flat_ok)] if flat_v.size else jnp.asarray(jnp.nan)
        checkify.check(
            jnp.all(valid),
            f"je.sample: {family} parameter `{name}` must be {expected}, got {{value}}",
            value=jax.lax.stop_gradient(bad),
        )
