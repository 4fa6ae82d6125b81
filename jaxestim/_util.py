"""Small private helpers shared by the library's modules."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

try:  # private, but the only way to tell JAX-internal frames from the user's
    from jax._src.source_info_util import is_user_filename
except ImportError:  # pragma: no cover - fallback for other JAX versions

    def is_user_filename(filename: str) -> bool:
        """Whether a traceback frame's file is outside JAX (the user's or jaxestim's)."""
        parts = filename.replace("\\", "/").split("/")
        return "jax" not in parts and "jaxlib" not in parts


T = TypeVar("T")


def static_field(**kwargs: Any) -> Any:
    """A dataclass field that is part of the pytree's static structure (not a leaf)."""
    return dataclasses.field(metadata={"static": True}, **kwargs)


def pytree_dataclass(cls: type[T]) -> type[T]:
    """Frozen dataclass registered as a pytree; fields made with :func:`static_field` are static.

    Numeric fields are leaves, so they may be traced (``jax.vmap`` over a temperature or a
    finite-difference step works); configuration strings and flags are static.
    """
    cls = dataclasses.dataclass(frozen=True)(cls)
    data, meta = [], []
    for f in dataclasses.fields(cls):
        (meta if f.metadata.get("static", False) else data).append(f.name)
    jax.tree_util.register_dataclass(cls, data_fields=data, meta_fields=meta)
    return cls


def concrete(x: Any) -> np.ndarray | None:
    """``x`` as a NumPy array when its value is known at trace time, else ``None``.

    Tracers and non-numeric placeholders (which pytree utilities pass through constructors)
    give ``None``, so validation is skipped for them.
    """
    if isinstance(x, jax.core.Tracer):
        return None
    if isinstance(x, bool | int | float | np.ndarray | np.number | jax.Array):
        try:
            return np.asarray(x)
        except Exception:  # e.g. a deleted or non-addressable array
            return None
    return None


def check_positive(owner: str, name: str, value: Any, *, allow_zero: bool = False) -> None:
    """Raise ``ValueError`` naming ``name`` when a concrete ``value`` is not (strictly) positive."""
    v = concrete(value)
    if v is None:
        return
    bad = np.any(v < 0) if allow_zero else np.any(v <= 0)
    if bad or np.any(np.isnan(v)):
        rel = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{owner}: `{name}` must be {rel}, got {v.tolist()!r}")


def check_key(key: Any, where: str) -> None:
    """Raise (naming ``key`` and the caller) unless ``key`` is a single PRNG key.

    Delegates to the distributions' key validation so both report the same way: a
    ``TypeError`` for a non-key, a ``ValueError`` for a batch of keys.
    """
    from jaxestim.distributions._base import _validate_key

    try:
        _validate_key(key)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{where}: {e} (e.g. pass jax.random.key(0))") from None


def tree_scale(tree: Any, s: Any) -> Any:
    return jax.tree_util.tree_map(lambda x: x * s, tree)


def tree_add(a: Any, b: Any) -> Any:
    return jax.tree_util.tree_map(jnp.add, a, b)


def fold_in_str(key: jax.Array, tag: str) -> jax.Array:
    """Derive an auxiliary key, statistically independent of ``key``'s own stream."""
    return jax.random.fold_in(key, int.from_bytes(tag.encode()[:4].ljust(4, b"\0"), "little"))


def identity(x: T) -> T:
    return x


Fn = Callable[..., Any]
