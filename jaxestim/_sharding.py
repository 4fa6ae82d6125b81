"""Monte Carlo samples sharded over the devices of a :class:`jax.sharding.Mesh`.

``je.grad(..., mesh=mesh, axis=axes)`` splits the key into the same ``N`` per-sample keys
as on one device, shards them along the mesh axes ``axes`` (``N / D`` consecutive keys per
device, ``D`` the product of the axes' sizes) and runs the single-device estimator body
on each device inside one :func:`jax.shard_map`; the sums it forms over samples (the
gradient and value sums, the leave-one-out total) are completed with one
:func:`jax.lax.psum` over ``axes``. Hence:

* the estimate equals the single-device estimate for the same key, up to the order of
  floating-point summation;
* every estimator keeps its exact semantics: a leave-one-out baseline uses the total of
  all ``N`` samples, a moving-average baseline's state stays replicated, stochastic_ad and
  finite differences shard their samples;
* each device holds only its shard of per-sample values; the returned gradient and value
  are replicated, ``grad_samples``' per-sample gradients and ``aux`` stay sharded along
  the sample axis.

The per-device body is the single-device code, run under ``shard_map`` with
``check_vma=False``: the user's program (its own ``lax.scan`` loops with constant initial
carries, ``lax.cond`` branches) and the library's loops need no device-varying type
annotations (``jax.lax.pcast``), and the gradients the body takes with respect to the
replicated parameters are each device's own. (With ``check_vma=True`` JAX would type the
parameters as device-invariant and transpose their implicit broadcast into a sum over
devices, so each device's "local" gradient would already be the total and the final
``psum`` would multiply it by ``D`` -- the factor-``D`` error of calling ``jax.grad``
inside ``shard_map`` on replicated parameters and averaging with ``pmean``.) Outer
derivatives through the transform (higher-order score-function derivatives, the
derivative of ``value_and_grad``'s value) transpose the ``psum`` correctly; the tests
check them against the single-device transform.

Several processes (``jax.distributed.initialize``): the mesh may span every process's
devices. Concrete host-local inputs (the key, the parameters) are assumed equal on every
process -- as for any multi-controller JAX program -- and are made global replicated
arrays before the call (:func:`globalize`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def check_mesh(mesh: Any, axis: Any, num_samples: int, where: str) -> tuple[Any, tuple]:
    """Validate ``mesh=`` / ``axis=`` of a transform; returns ``(mesh, axes)``.

    ``axis`` None means all of the mesh's axes. ``num_samples`` must be a multiple of the
    number of shards (the product of the sizes of ``axes``), so every device evaluates the
    same number of samples and the per-sample keys are those of the single-device call.
    """
    if mesh is None:
        if axis is not None:
            raise ValueError(f"{where}: `axis`={axis!r} needs `mesh=` (a jax.sharding.Mesh)")
        return None, ()
    if not isinstance(mesh, Mesh):
        raise TypeError(
            f"{where}: `mesh` must be a jax.sharding.Mesh (e.g. jax.make_mesh((4,), "
            f"('samples',))), got {type(mesh).__name__}"
        )
    names = tuple(mesh.axis_names)
    if axis is None:
        axes = names
    else:
        axes = (axis,) if isinstance(axis, str) else axis
        if not isinstance(axes, tuple | list) or not axes:
            raise TypeError(
                f"{where}: `axis` must be a mesh axis name or a tuple of them, got {axis!r}"
            )
        axes = tuple(axes)
        bad = [a for a in axes if a not in names]
        if bad:
            raise ValueError(f"{where}: `axis` names {bad!r} not among the mesh's axes {names!r}")
        if len(set(axes)) != len(axes):
            raise ValueError(f"{where}: `axis` has repeated names: {axis!r}")
    shards = num_shards(mesh, axes)
    if num_samples % shards:
        raise ValueError(
            f"{where}: `num_samples`={num_samples} is not a multiple of the {shards} "
            f"device(s) along mesh axes {axes!r}; every device evaluates num_samples / "
            f"{shards} samples, so choose num_samples as a multiple of {shards} (e.g. "
            f"{(num_samples // shards + 1) * shards})"
        )
    return mesh, axes


def psum(x: Any, axes: tuple) -> Any:
    """``jax.lax.psum`` over the sample-sharding mesh axes (identity without a mesh)."""
    return jax.lax.psum(x, axes) if axes else x


def shard_samples(
    body: Callable[[jax.Array, Any, Any], Any],
    mesh: Mesh,
    axes: tuple,
    keys: jax.Array,
    diff: Any,
    state: Any,
    out_specs: Any,
) -> Any:
    """``body(local_keys, diff, state)`` on every device of ``mesh`` (see the module doc).

    ``keys`` (leading axis ``N``) are sharded along ``axes``; ``diff`` and ``state`` are
    replicated, and ``diff`` is cast to device-varying before ``body`` differentiates it.
    ``out_specs`` is a prefix of ``body``'s outputs: ``"replicated"`` or ``"sharded"``
    (along the sample axis) per entry.
    """
    spec = P(axes)

    specs = jax.tree_util.tree_map(lambda o: spec if o == "sharded" else P(), out_specs)
    keys = _place(keys, mesh, spec)
    diff, state = jax.tree_util.tree_map(lambda x: _place(x, mesh, P()), (diff, state))
    return jax.shard_map(
        body, mesh=mesh, in_specs=(spec, P(), P()), out_specs=specs, check_vma=False
    )(keys, diff, state)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """The arrays of ``tree`` replicated over ``mesh``."""
    return jax.tree_util.tree_map(lambda x: _place(x, mesh, P()), tree)


def _place(x: jax.Array, mesh: Mesh, spec: P) -> jax.Array:
    """``x`` laid out as ``spec`` on ``mesh`` (``shard_map``'s input layout).

    Meshes with explicit axes (the default of :func:`jax.make_mesh`) carry shardings in the
    types, and ``shard_map`` requires its inputs to have the ``in_specs`` layout:
    :func:`jax.sharding.reshard`. Otherwise a sharding constraint.
    """
    sharding = NamedSharding(mesh, spec)
    if any(t == AxisType.Explicit for t in mesh.axis_types):
        return jax.sharding.reshard(x, sharding)
    return jax.lax.with_sharding_constraint(x, sharding)


def spans_processes(mesh: Mesh | None) -> bool:
    """Whether ``mesh`` has devices of other processes (multi-controller JAX)."""
    if mesh is None:
        return False
    me = jax.process_index()
    return any(d.process_index != me for d in mesh.devices.flat)


def globalize(tree: Any, mesh: Mesh) -> Any:
    """Concrete host-local arrays in ``tree`` as global arrays replicated over ``mesh``.

    Multi-process only: every process passes the same values (the same key and
    parameters), and each process puts its copy on its own devices of the mesh
    (:func:`jax.make_array_from_process_local_data`). Tracers (a call under the user's
    ``jax.jit``) and arrays that are already global pass through.
    """
    sharding = NamedSharding(mesh, P())

    def one(x: Any) -> Any:
        if isinstance(x, jax.core.Tracer):
            return x
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return x
        if not isinstance(x, jax.Array | np.ndarray | np.generic):
            return x
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            impl = jax.random.key_impl(x)
            data = globalize(jax.random.key_data(x), mesh)
            return jax.random.wrap_key_data(data, impl=impl)
        return jax.make_array_from_process_local_data(sharding, np.asarray(x))

    return jax.tree_util.tree_map(one, tree)


def num_shards(mesh: Mesh, axes: tuple) -> int:
    """The number of shards along ``axes`` (the product of their sizes on ``mesh``)."""
    return math.prod(mesh.shape[a] for a in axes)


def shard_leading(
    body: Callable[[Any, Any], Any], mesh: Mesh, axes: tuple, sharded: Any, replicated: Any
) -> Any:
    """``body(local, replicated)`` on every device of ``mesh``, outputs sharded on axis 0.

    Every leaf of ``sharded`` has a leading axis whose length is a multiple of
    ``num_shards(mesh, axes)``; it is split into consecutive blocks along ``axes``
    (``local``). ``replicated`` is the same on every device. Every output leaf has a
    leading axis (the device's block) and the blocks are concatenated in device order
    along ``axes``. Used by :func:`jaxestim.sweep` for a grid sharded over devices; nothing
    is differentiated through it, hence ``check_vma=False``.
    """
    spec = P(axes)
    sharded = jax.tree_util.tree_map(lambda x: _place(x, mesh, spec), sharded)
    replicated = jax.tree_util.tree_map(lambda x: _place(x, mesh, P()), replicated)
    return jax.shard_map(body, mesh=mesh, in_specs=(spec, P()), out_specs=spec, check_vma=False)(
        sharded, replicated
    )


def to_host(x: Any) -> np.ndarray:
    """``x`` as a NumPy array holding the whole (global) array.

    An array sharded over devices of this process only is read directly; a global array
    that is not fully addressable (a mesh spanning several processes) is gathered with
    :func:`jax.experimental.multihost_utils.process_allgather` (a collective: every
    process must call it).
    """
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
