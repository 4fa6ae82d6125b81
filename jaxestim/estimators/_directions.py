"""Probe directions of the whole-program estimators (finite differences, stochastic_ad)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def check_directions(owner: str, directions: str, random_kind: str, num: Any) -> None:
    """Validate ``directions`` ("coordinates" or ``random_kind``) and ``num_directions``."""
    allowed = ("coordinates", random_kind)
    if not isinstance(directions, str):
        raise TypeError(
            f"{owner}: `directions` must be one of the strings {allowed}, got a "
            f"{type(directions).__name__} (explicit direction matrices are not supported; "
            f"use directions={random_kind!r} with num_directions=...)"
        )
    if directions not in allowed:
        raise ValueError(f"{owner}: unknown `directions` {directions!r}; expected one of {allowed}")
    if directions == random_kind:
        if not isinstance(num, int) or isinstance(num, bool) or num < 1:
            raise ValueError(
                f"{owner}: directions={random_kind!r} needs `num_directions` to be a positive "
                f"int, got {num!r}"
            )
    elif num is not None:
        raise ValueError(
            f"{owner}: `num_directions` is only used with directions={random_kind!r}; got "
            f"num_directions={num!r} with directions={directions!r}"
        )


def direction_matrix(theta: jax.Array, num: int | None, key: jax.Array, draw: Any) -> jax.Array:
    """Rows are the probe directions: the basis (``num`` None) or ``draw(key, (num, P))``.

    Random directions must satisfy ``E[v v^T] = I`` (Rademacher, standard Gaussian), so that
    :func:`gradient_from_directional` is unbiased.
    """
    if num is None:
        return jnp.eye(theta.size, dtype=theta.dtype)
    return draw(key, (num, theta.size), theta.dtype)


def gradient_from_directional(d: jax.Array, dirs: jax.Array, num: int | None) -> jax.Array:
    """The gradient from directional derivatives ``d_i = <grad, v_i>``: ``d`` itself for the
    basis, else ``mean_i d_i v_i``."""
    return d if num is None else dirs.T @ d / dirs.shape[0]
