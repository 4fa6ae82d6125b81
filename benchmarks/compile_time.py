"""Compile time of jaxestim transforms against hand-written JAX for the same estimator.

    python benchmarks/compile_time.py            # full sizes, median of 5 compilations
    python benchmarks/compile_time.py --quick    # tiny sizes, one compilation each (smoke test)
    python benchmarks/compile_time.py --only "SIR.*grad_samples" --no-compare  # one row

Compile time is the wall time of ``jax.jit(fn).lower(*args).compile()`` (tracing, which
runs jaxestim's handlers, plus lowering and XLA compilation). Each measurement starts
from ``jax.clear_caches()`` and a freshly built function (a new transform object and a new
closure), so no trace or executable is reused; jaxestim and its hand-written twin are
compiled interleaved and the median over ``--repeats`` is reported, with the ratio.
Cases: the "<= 1.10x hand-written" cases of workloads W1-W4 (``benchmarks/workloads.py``)
and a 60-step SIR epidemic (Binomial transitions) under the leave-one-out score function,
as ``je.grad`` and as ``je.grad_samples``. The "traces" column counts how often the
program's Python body ran while jaxestim compiled it. Last, the wall time of
``je.compare`` on the SIR model with five estimators (each compiled and run once, plus
``je.check``). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workloads as W
from _common import fmt_time, md_table

import jaxestim as je
from jaxestim import distributions as D

sg = jax.lax.stop_gradient
KEY = jax.random.key(0)

# --------------------------------------------------------------------------------------
# SIR epidemic: S, I after `steps` Binomial infection/recovery steps; returns final S
# --------------------------------------------------------------------------------------

POP, I0 = 100.0, 3.0
SIR_PARAMS = {"beta": jnp.float32(1.2), "gamma": jnp.float32(0.3)}


def _transition(n: jax.Array, p: jax.Array, binomial: bool) -> D.Distribution:
    """How many of ``n`` move on, each with probability ``p``: Binomial, or for ``--quick``
    a Bernoulli (at most one per step; XLA compiles it far faster than the Binomial sampler)."""
    return D.Binomial(n, probs=p) if binomial else D.Bernoulli(probs=p)


def make_sir(
    steps: int, calls: list[int], binomial: bool = True
) -> Callable[[jax.Array, dict], jax.Array]:
    """The SIR program; ``calls[0]`` counts executions of its Python body."""

    def sir(key: jax.Array, params: dict) -> jax.Array:
        calls[0] += 1
        beta, gamma = params["beta"], params["gamma"]

        def step(state, k):
            s, i = state
            k1, k2 = jax.random.split(k)
            new_inf = je.sample(k1, _transition(s, 1.0 - jnp.exp(-beta * i / POP), binomial))
            new_rec = je.sample(k2, _transition(i, gamma, binomial))
            return (s - new_inf, i + new_inf - new_rec), None

        init = (jnp.float32(POP - I0), jnp.float32(I0))
        (s, _), _ = je.scan(step, init, jax.random.split(key, steps))
        return s

    return sir


def _sir_sim(
    key: jax.Array, params: dict, steps: int, binomial: bool
) -> tuple[jax.Array, jax.Array]:
    """Hand-written score-function run: (final S, summed log-probability of the draws)."""
    beta, gamma = params["beta"], params["gamma"]

    def step(carry, k):
        s, i, lp = carry
        k1, k2 = jax.random.split(k)
        p_inf = 1.0 - jnp.exp(-beta * i / POP)
        new_inf = _transition(sg(s), sg(p_inf), binomial).sample(k1)
        new_rec = _transition(sg(i), sg(gamma), binomial).sample(k2)
        lp = lp + _transition(s, p_inf, binomial).log_prob(new_inf)
        lp = lp + _transition(i, gamma, binomial).log_prob(new_rec)
        return (s - new_inf, i + new_inf - new_rec, lp), None

    init = (jnp.float32(POP - I0), jnp.float32(I0), jnp.float32(0.0))
    (s, _, lp), _ = jax.lax.scan(step, init, jax.random.split(key, steps))
    return sg(s), lp


def sir_hand_grad(n: int, steps: int, binomial: bool) -> Callable[[jax.Array, dict], Any]:
    """Hand-written leave-one-out score function, mean gradient (lax.scan, vmap over N)."""

    def hand(key: jax.Array, params: dict) -> Any:
        keys = jax.random.split(key, n)

        def surrogate(p: dict) -> jax.Array:
            f, lp = jax.vmap(lambda k: _sir_sim(k, p, steps, binomial))(keys)
            b = (jnp.sum(f) - f) / (n - 1)
            return jnp.mean(sg(f - b) * lp)

        return jax.grad(surrogate)(params)

    return hand


def sir_hand_samples(n: int, steps: int, binomial: bool) -> Callable[[jax.Array, dict], Any]:
    """Hand-written leave-one-out score function, the N per-sample gradients."""

    def hand(key: jax.Array, params: dict) -> Any:
        keys = jax.random.split(key, n)
        f = jax.vmap(lambda k: _sir_sim(k, params, steps, binomial)[0])(keys)
        b = (jnp.sum(f) - f) / (n - 1)

        def one(k: jax.Array, bk: jax.Array) -> Any:
            def surrogate(p: dict) -> jax.Array:
                fk, lp = _sir_sim(k, p, steps, binomial)
                return sg(fk - bk) * lp

            return jax.grad(surrogate)(params)

        return jax.vmap(one)(keys, b)

    return hand


# --------------------------------------------------------------------------------------
# measurement
# --------------------------------------------------------------------------------------


def _compile_seconds(make: Callable[[], Callable], args: tuple) -> float:
    """Seconds to compile a freshly made function after clearing every JAX cache."""
    jax.clear_caches()
    fn = make()
    t0 = time.perf_counter()
    jax.jit(lambda *a: fn(*a)).lower(*args).compile()
    return time.perf_counter() - t0


def compare_pair(
    make_je: Callable[[], Callable], make_hand: Callable[[], Callable], args: tuple, repeats: int
) -> tuple[float, float]:
    """Median compile seconds of (jaxestim, hand-written), compiled interleaved."""
    tj, th = [], []
    for _ in range(repeats):
        tj.append(_compile_seconds(make_je, args))
        th.append(_compile_seconds(make_hand, args))
    return statistics.median(tj), statistics.median(th)


def workload_cases(quick: bool) -> list[tuple[W.Workload, W.Case]]:
    """The cases of W1-W4 compared with hand-written JAX (``benchmarks/run.py``'s sizes)."""
    n = 16 if quick else 4096
    wls = [
        W.make_w1(8 if quick else 1000, n, extras=False),
        W.make_w2(8 if quick else 200, n, whole_program=False),
        W.make_w3(16 if quick else 10_000),
        W.make_w4(n, whole_program=False, extras=False),
    ]
    cases = [[c for c in wl.cases if c.compare and c.hand is not None] for wl in wls]
    # --quick: one case per workload (the smoke test only checks that every path runs)
    return [(wl, c) for wl, cs in zip(wls, cases, strict=True) for c in cs[: 1 if quick else None]]


def _rebuild_hand(wl: W.Workload, label: str) -> Callable:
    """A freshly built hand-written baseline of ``wl``'s case ``label`` (new closures)."""
    fresh = {
        "W1": lambda: W.make_w1(wl.theta.shape[0], wl.num_samples, extras=False),
        "W2": lambda: W.make_w2(wl.theta.shape[0], wl.num_samples, whole_program=False),
        "W3": lambda: W.make_w3(wl.num_samples),
        "W4": lambda: W.make_w4(wl.num_samples, whole_program=False, extras=False),
    }[wl.name]()
    return next(c.hand for c in fresh.cases if c.label == label)


def main() -> None:
    """Parse the options, print the compile-time table and the je.compare timing."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one compilation each")
    ap.add_argument("--repeats", type=int, default=None, help="compilations per function")
    ap.add_argument("--no-compare", action="store_true", help="skip the je.compare timing")
    ap.add_argument("--only-compare", action="store_true", help="only the je.compare timing")
    ap.add_argument(
        "--only",
        default=None,
        metavar="REGEX",
        help="only the rows whose 'workload transform, estimator' matches REGEX (re.search), "
        "e.g. 'SIR.*grad_samples'",
    )
    opts = ap.parse_args()
    only = re.compile(opts.only) if opts.only else None
    repeats = opts.repeats or (1 if opts.quick else 5)
    steps = 3 if opts.quick else 60
    n_sir = 8 if opts.quick else 1000

    rows = []
    ratios = []
    for wl, case in [] if opts.only_compare else workload_cases(opts.quick):
        wname, label, est, prog = wl.name, case.label, case.estimator, wl.prog
        if only and not only.search(f"{wname} je.grad, {label}"):
            continue
        calls = [0]

        def counted(key, theta, prog=prog, calls=calls):
            calls[0] += 1
            return prog(key, theta)

        def make_je(est=est, counted=counted, n=wl.num_samples):
            return je.grad(counted, est, num_samples=n)

        def make_hand(wl=wl, label=label):
            return _rebuild_hand(wl, label)

        tj, th = compare_pair(make_je, make_hand, (KEY, wl.theta), repeats)
        traces = calls[0] // repeats
        rows.append((wname, f"je.grad, {label}", wl.num_samples, traces, tj, th))

    binomial = not opts.quick
    sir_calls = [0]
    sir_cases = (("grad", sir_hand_grad), ("grad_samples", sir_hand_samples))
    sites = "Binomial" if binomial else "Bernoulli"
    for kind, hand_factory in () if opts.only_compare else sir_cases:
        if only and not only.search(f"SIR ({steps} steps, {sites}) je.{kind}, score_function(LOO)"):
            continue
        sir_calls[0] = 0

        def make_je(kind=kind):
            prog = make_sir(steps, sir_calls, binomial)
            return getattr(je, kind)(prog, je.score_function("leave_one_out"), num_samples=n_sir)

        def make_hand(hand_factory=hand_factory):
            return hand_factory(n_sir, steps, binomial)

        tj, th = compare_pair(make_je, make_hand, (KEY, SIR_PARAMS), repeats)
        rows.append(
            (
                f"SIR ({steps} steps, {sites})",
                f"je.{kind}, score_function(LOO)",
                n_sir,
                sir_calls[0] // repeats,
                tj,
                th,
            )
        )

    table = []
    for w, est, n, traces, tj, th in rows:
        ratios.append(tj / th)
        table.append([w, est, n, traces, fmt_time(tj), fmt_time(th), f"{tj / th:.2f}×"])
    if rows:
        _print_table(table, ratios, repeats)
    if not opts.no_compare:
        _time_compare(steps, n_sir, binomial)


def _print_table(table: list, ratios: list[float], repeats: int) -> None:
    print(
        md_table(
            [
                "workload",
                "transform, estimator",
                "N",
                "traces",
                "jaxestim",
                "hand-written",
                "ratio",
            ],
            table,
        )
    )
    print(
        f"\nCompile time: median of {repeats} fresh compilation(s); ratio = jaxestim / "
        f"hand-written (largest {max(ratios):.2f}×, target ≤ 1.2×)."
    )


def _time_compare(steps: int, n_sir: int, binomial: bool) -> None:
    """Wall time of ``je.compare`` on the SIR model with five estimators (two for the
    quick Bernoulli variant), caches cleared."""
    estimators = {
        "score_function": je.score_function(),
        "score_function(LOO)": je.score_function("leave_one_out"),
        "stochastic_ad": je.stochastic_ad(),
        "finite_difference(0.01, CRN)": je.finite_difference(0.01),
        "straight_through": je.straight_through(),
    }
    if not binomial:
        estimators = {k: estimators[k] for k in ("score_function(LOO)", "straight_through")}
    jax.clear_caches()
    calls = [0]
    t0 = time.perf_counter()
    report = je.compare(
        make_sir(steps, calls, binomial),
        SIR_PARAMS,
        estimators,
        key=KEY,
        num_samples=n_sir,
        repeats=1,
    )
    wall = time.perf_counter() - t0
    compile_s = sum(r.compile_s or 0.0 for r in report.results.values())
    print(
        f"\nje.compare on the SIR model ({steps} steps, N = {n_sir}, {len(estimators)} "
        f"estimators): {wall:.2f} s wall, of which {compile_s:.2f} s compiling; the "
        f"program's Python body ran {calls[0]} times."
    )


if __name__ == "__main__":
    main()
