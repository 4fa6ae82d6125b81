"""Flat per-element records of whole-program Bernoulli estimators through je.scan / je.cond.

Shared by :mod:`jaxestim.estimators.arm` (DisARM, ARM) and
:mod:`jaxestim.estimators.relax` (REBAR, RELAX): every Bernoulli site appends a dict of
flat 1-D arrays (one entry per element, fields ``fields``); a loop body's handler returns
its records concatenated over its sites, the scan stacks them over iterations and the
parent appends them flattened (iteration-major), so the program's element vectors contain
every iteration's elements; every branch of a ``je.cond`` / ``je.switch`` returns its
records in one common layout (its own slot, zeros in the other branches' slots, so a
``"m"`` (mask) field of 0 marks the elements of branches not taken).
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxestim._handlers import Handler


class FlatRecordHandler(Handler):
    """A handler whose sites append ``{field: flat array}`` records (see the module docs).

    Subclasses set ``fields`` and ``dtype`` and implement :meth:`_new` (a fresh handler of
    the same configuration, for a loop body or a branch).
    """

    recording = True
    fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, dtype: Any) -> None:
        super().__init__()
        self.dtype = dtype
        self.records: list[dict[str, jax.Array]] = []
        self.branch_index = 0

    def _new(self) -> FlatRecordHandler:
        raise NotImplementedError

    def collect(self) -> dict[str, jax.Array]:
        """Every record of this run, each field concatenated over sites (flat).

        Empty parts (a ``je.cond`` or loop whose branches or body record nothing) are left
        out: they carry no element, and keeping them would make the result look dependent,
        to a dependence analysis of the traced program, on whatever such a cond's predicate
        depends on.
        """
        return {
            f: jnp.concatenate(
                [jnp.zeros((0,), self.dtype)] + [r[f] for r in self.records if r[f].size]
            )
            for f in self.fields
        }

    # loops: each iteration's records leave as stacked scan outputs
    def loop_child(self, state):
        return self._new()

    def loop_outputs(self):
        return None, self.collect()

    def absorb_loop(self, state, stacked, child, length):
        self.records.append({f: jnp.reshape(v, (-1,)) for f, v in stacked.items()})

    # branches: every branch has its own slot of the common layout (zeros when not taken)
    def branch_child(self, state, index, layout):
        child = self._new()
        child.branch_index = index
        return child

    def branch_layout(self, children):
        return {f: [int(c.probe_shapes[f].shape[0]) for c in children] for f in self.fields}

    def branch_outputs(self, layout):
        mine = self.collect()
        out = {}
        for f in self.fields:
            sizes = layout[f]
            start = sum(sizes[: self.branch_index])
            parts = [
                jnp.zeros((start,), self.dtype),
                mine[f],
                jnp.zeros((sum(sizes) - start - sizes[self.branch_index],), self.dtype),
            ]
            out[f] = jnp.concatenate(parts)
        return None, out

    def absorb_branches(self, state, records, layout):
        self.records.append(records)
