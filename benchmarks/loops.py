"""Loops: bulk randomness for je.scan (``key=``), FD with common random numbers, checkpointing.

Run: ``python benchmarks/loops.py [--quick] [--repeats R]``. Prints two Markdown tables.

1. **Speed**, the W3 random walk (100 steps, ``p = 0.5``, ``N`` samples): every estimator on
   the walk written two ways -- per-key (``jax.random.split(key, 100)`` passed as ``xs``,
   one key per step; the layout before ``key=`` existed) and bulk (``je.scan(..., key=key)``)
   -- against two hand-written JAX score-function gradients with the leave-one-out baseline:
   the best layout (one bulk ``jax.random.uniform(key, (N, 100))``, a ``lax.scan`` over the
   steps on ``(N,)`` vectors) and the per-key layout (``benchmarks/workloads.py::w3_hand``).
   Ratios are ``time / time(hand, bulk uniforms)``. "FD CRN (key broadcast)" re-creates the
   former finite-difference code, which broadcast the key to every perturbed run so that
   ``jax.vmap`` generated the random bits once per run. All functions are jitted and
   compiled first, then timed interleaved (round-robin), medians of ``R`` repeats, in one
   process.
2. **Memory**: XLA temp allocation (``jax.jit(g).lower(...).compile().memory_analysis()
   .temp_size_in_bytes``) of the leave-one-out score function through a ``je.scan`` of
   ``T`` steps with ``G = 100`` Bernoulli elements per step (``N = 100``), without
   checkpointing, with ``checkpoint=True`` (per step) and with ``checkpoint_every=
   round(sqrt(T))``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workloads as W
from _common import compile_timed, fmt_time, md_table, median_times

import jaxestim as je
from jaxestim import distributions as D
from jaxestim._handlers import WholeProgramHandler
from jaxestim._util import pytree_dataclass
from jaxestim.estimators import FiniteDifference

sg = jax.lax.stop_gradient


def walk_bulk(key, p, steps: int = 100):
    """W3 with ``je.scan(..., key=key)``: the same walk, randomness drawn in bulk."""

    def step(n, i, k):
        return n + je.sample(k, D.Bernoulli(probs=p * (1 - (n + i) / 200))), None

    return je.scan(step, jnp.zeros_like(p), jnp.arange(1, steps + 1), key=key)[0]


def hand_bulk(n: int, steps: int = 100):
    """Hand-written LOO score function, one ``jax.random.uniform(key, (n, steps))``."""

    def hand(key, p):
        u = jax.random.uniform(key, (n, steps), p.dtype)

        def surrogate(pp):
            def step(carry, xs):
                m, lp = carry
                ui, i = xs
                q = pp * (1 - (m + i) / 200)
                b = (ui < q).astype(q.dtype)
                return (m + b, lp + b * jnp.log(q) + (1 - b) * jnp.log1p(-q)), None

            zero = jnp.zeros((n,), p.dtype)
            (f, lp), _ = jax.lax.scan(step, (zero, zero), (u.T, jnp.arange(1, steps + 1)))
            f = sg(f)
            b = (jnp.sum(f) - f) / (n - 1)
            return jnp.mean(sg(f - b) * lp)

        return jax.grad(surrogate)(p)

    return hand


@pytree_dataclass
class BroadcastKeyFD(FiniteDifference):
    """The former CRN finite differences: the key broadcast to every perturbed run (so
    ``jax.vmap`` batches the random-bit generation); central, coordinates only."""

    def per_sample(self, call, key, theta):
        h = jnp.asarray(self.step, theta.dtype)
        dirs = jnp.eye(theta.size, dtype=theta.dtype)
        n = dirs.shape[0]

        def prog(k, th):
            with WholeProgramHandler(self.name):
                return call(k, th)

        f0, aux = prog(key, theta)
        keys = jnp.broadcast_to(key, (n, *key.shape))
        run = lambda s: jax.vmap(lambda k, v: prog(k, theta + s * h * v)[0])(keys, dirs)
        return f0, (run(1.0) - run(-1.0)) / (2 * h), aux


def speed_table(n: int, repeats: int) -> str:
    p = jnp.asarray(0.5, jnp.float32)
    key = jax.random.key(0)
    ests = [
        ("score_function(LOO)", je.score_function("leave_one_out")),
        ("stochastic_ad", je.stochastic_ad()),
        ("FD CRN", je.finite_difference(0.01)),
        ("FD no CRN", je.finite_difference(0.01, common_random_numbers=False)),
    ]
    fns = {
        "hand, bulk uniforms": hand_bulk(n),
        "hand, per-key": W.w3_hand(n, True),
        "FD CRN (key broadcast), per-key": je.grad(
            W.w3_prog, BroadcastKeyFD(step=0.01), num_samples=n
        ),
    }
    for label, est in ests:
        fns[f"{label}, per-key"] = je.grad(W.w3_prog, est, num_samples=n)
        fns[f"{label}, key="] = je.grad(walk_bulk, est, num_samples=n)
    compiled = {k: compile_timed(f, key, p)[0] for k, f in fns.items()}
    t = median_times({k: (lambda c=c: c(key, p)) for k, c in compiled.items()}, repeats)
    ref = t["hand, bulk uniforms"]
    rows = [
        ["hand-written LOO score function, bulk uniforms (reference)", fmt_time(ref), "1.00"],
        [
            "hand-written LOO score function, per-key",
            fmt_time(t["hand, per-key"]),
            f"{t['hand, per-key'] / ref:.2f}",
        ],
    ]
    rows.append(
        [
            "je FD CRN, per-key walk, key broadcast (former code)",
            fmt_time(t["FD CRN (key broadcast), per-key"]),
            f"{t['FD CRN (key broadcast), per-key'] / ref:.2f}",
        ]
    )
    for label, _ in ests:
        for form in ("per-key", "key="):
            v = t[f"{label}, {form}"]
            name = "per-key walk" if form == "per-key" else "je.scan(..., key=key)"
            rows.append([f"je {label}, {name}", fmt_time(v), f"**{v / ref:.2f}**"])
    return (
        f"W3 random walk, 100 steps, N = {n}, median of {repeats} interleaved repeats\n\n"
        + md_table(["gradient", "time", "÷ hand bulk"], rows)
    )


def grid_prog(steps: int, **loop):
    """``steps`` steps of G = 100 Bernoulli(sigmoid(theta + 0.01 s)) elements each."""

    def prog(key, theta):
        def step(s, i, k):
            x = je.sample(k, D.Bernoulli(logits=theta + 0.01 * s))
            return s + jnp.mean(x) - 0.5, None

        return je.scan(step, jnp.zeros(()), jnp.arange(steps), key=key, **loop)[0] ** 2

    return prog


def memory_table(lengths: list[int], n: int) -> str:
    theta = jnp.zeros((100,), jnp.float32)
    key = jax.random.key(0)
    est = je.score_function("leave_one_out")
    rows = []
    for steps in lengths:
        every = max(1, round(math.sqrt(steps)))
        row = [str(steps)]
        for loop in ({}, {"checkpoint": True}, {"checkpoint_every": every}):
            g = je.grad(grid_prog(steps, **loop), est, num_samples=n)
            mem = jax.jit(g).lower(key, theta).compile().memory_analysis().temp_size_in_bytes
            row.append(f"{mem / 2**20:.2f} MiB")
        row.append(str(every))
        rows.append(row)
    return (
        f"LOO score function, G = 100 Bernoulli elements per step, N = {n}: XLA temp memory\n\n"
        + md_table(
            ["T", "no checkpoint", "checkpoint=True", "checkpoint_every=k", "k"],
            rows,
        )
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args(argv)
    if args.quick:
        n, repeats, lengths = 64, args.repeats or 2, [10, 100]
    else:
        n, repeats, lengths = 10_000, args.repeats or 15, [100, 1000, 10_000]
    print("## Speed\n")
    print(speed_table(n, repeats))
    print("\n## Memory\n")
    print(memory_table(lengths, 100 if not args.quick else 8))


if __name__ == "__main__":
    main()
