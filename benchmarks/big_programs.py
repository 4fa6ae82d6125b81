"""Big programs: cost vs P, XLA temp memory vs loop length, variance.

Usage::

    python benchmarks/big_programs.py [--quick] [--sections abc] [--out PATH] [--seed S]

Prints three groups of Markdown tables (and writes them to ``--out`` when given):

(a) **Cost vs number of parameters.** An MLP ``4 -> H -> 32`` (tanh) whose outputs are the
    logits of 32 Bernoulli sites, ``f = -(w . a - 12)^2 / 8`` (``a`` the 32 outcomes, ``w``
    fixed), with the hidden width ``H`` chosen so that ``P ~ 100, 1,000, 10,000``; ``N = 16``.
    Time per ``je.grad`` call of forward-mode ``stochastic_ad`` (coordinate directions),
    reverse-mode ``stochastic_ad``, the leave-one-out score function and SPSA finite
    differences (16 directions), each also as a multiple of one *primal run* (the program
    ``jax.vmap``-ped over the same ``N`` keys, outside any transform), and the ratio
    ``cost(P = 10,000) / cost(P = 100)``.
(b) **XLA temp memory** (``compiled.memory_analysis().temp_size_in_bytes``; compiled, never
    run) of ``je.grad`` with ``N = 1000`` on a ``je.scan`` walk drawing ``G`` Bernoulli(σ(θ))
    elements per step from a per-step key, vs the loop length ``T`` at ``G = 100`` and vs
    ``G`` at ``T = 100``, for every estimator that applies (pathwise on a twin with Normal
    sites). A configuration whose compilation takes longer than ``--compile-limit`` seconds
    is skipped (each compilation runs in a worker process that is killed at the limit).
(c) **Work-normalized variance** (per-sample variance x time per sample) of forward and
    reverse ``stochastic_ad`` and the leave-one-out score function on the random walk, the
    SIR epidemic and the MLP policy of ``benchmarks/estimator_variance.py`` (imported, with
    their exact gradients) and an inventory model with Poisson demand and a smoothed
    base-stock policy, whose exact gradient is ``jax.grad`` (float64) of its expected profit
    computed exactly by dynamic programming over the stock level. Each estimator's mean is
    checked against the exact gradient (``|mean - exact| / SE``).

Method: every function is compiled ahead of time (``jax.jit(f).lower(...).compile()``).
Functions that are compared are timed interleaved (round-robin) in this one process, each
repeat being a batch of calls long enough (~50 ms) for the timer; medians are reported. On a
loaded machine absolute times drift: read the ratios.

``stochastic_ad(mode="reverse")`` is used where the installed jaxestim has it (else its
columns read "n/a"); ``je.scan(..., checkpoint_every=k)`` likewise for the checkpointed
rows of (b).
"""

from __future__ import annotations

import argparse
import functools
import inspect
import multiprocessing as mp
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))
sys.path.insert(1, str(_HERE.parent))

import estimator_variance as ev  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _common import (  # noqa: E402
    block,
    compile_timed,
    fmt_num,
    fmt_time,
    machine_description,
    md_table,
)

import jaxestim as je  # noqa: E402
from jaxestim import distributions as D  # noqa: E402

# --------------------------------------------------------------------------------------
# optional features that other work is adding to jaxestim
# --------------------------------------------------------------------------------------


def reverse_sad() -> Any | None:
    """``je.stochastic_ad(mode="reverse")`` if this jaxestim has it, else None."""
    try:
        return je.stochastic_ad(mode="reverse")
    except TypeError:
        return None


def scan_has_checkpoint_every() -> bool:
    """Whether ``je.scan`` takes ``checkpoint_every`` (segment-wise rematerialization)."""
    return "checkpoint_every" in inspect.signature(je.scan).parameters


# --------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------


def interleaved_medians(
    fns: dict[Any, Callable[[], Any]], repeats: dict[Any, int], batch_s: float = 0.05
) -> dict[Any, float]:
    """Median seconds per call of each zero-argument callable, timed round-robin.

    Each callable is warmed up once; a repeat is a batch of calls (each blocked on) lasting
    about ``batch_s`` so that short calls are above the timer's noise. ``repeats[k]``
    repeats of ``k`` are spread evenly over the rounds, so a slow function may be given
    fewer repeats and still be interleaved with the others.
    """
    inner = {}
    for k, f in fns.items():
        block(f())  # warm-up
        t0 = time.perf_counter()
        block(f())
        dt = time.perf_counter() - t0
        inner[k] = max(1, min(200, int(batch_s / max(dt, 1e-7))))
    rounds = max(repeats.values())
    times: dict[Any, list[float]] = {k: [] for k in fns}
    for r in range(rounds):
        for k, f in fns.items():
            # run in rounds where floor(r * reps / rounds) steps up: evenly spread
            if (r * repeats[k]) // rounds == len(times[k]) and len(times[k]) < repeats[k]:
                t0 = time.perf_counter()
                for _ in range(inner[k]):
                    block(f())
                times[k].append((time.perf_counter() - t0) / inner[k])
    return {k: statistics.median(v) for k, v in times.items()}


def fmt_mib(b: float | None) -> str:
    if b is None:
        return "–"
    mib = b / 2**20
    if mib >= 1024:
        return f"{mib / 1024:.3g} GiB"
    if mib >= 1:
        return f"{mib:.3g} MiB"
    return f"{b / 1024:.3g} KiB"


# --------------------------------------------------------------------------------------
# (a) cost vs P: an MLP whose 32 outputs are Bernoulli logits
# --------------------------------------------------------------------------------------

A_IN, A_OUT, A_TARGET = 4, 32, 12.0


def a_num_params(hidden: int) -> int:
    return A_IN * hidden + hidden + hidden * A_OUT + A_OUT


def a_hidden_for(p: int) -> int:
    """The hidden width whose parameter count is closest to ``p``."""
    return max(1, round((p - A_OUT) / (A_IN + 1 + A_OUT)))


@functools.cache
def _a_constants() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=A_IN).astype(np.float32)
    w = rng.uniform(0.5, 1.5, size=A_OUT).astype(np.float32)
    return x, w


def a_params(hidden: int) -> dict[str, jax.Array]:
    rng = np.random.default_rng(hidden)
    p = {
        "w1": rng.normal(size=(A_IN, hidden)) / np.sqrt(A_IN),
        "b1": 0.1 * rng.normal(size=hidden),
        "w2": rng.normal(size=(hidden, A_OUT)) / np.sqrt(hidden),
        "b2": 0.1 * rng.normal(size=A_OUT),
    }
    return {k: jnp.asarray(v, jnp.float32) for k, v in p.items()}


def a_mlp(key, params):
    x, w = _a_constants()
    h = jnp.tanh(jnp.asarray(x) @ params["w1"] + params["b1"])
    a = je.sample(key, D.Bernoulli(logits=h @ params["w2"] + params["b2"]))
    return -((a @ jnp.asarray(w) - A_TARGET) ** 2) / 8.0


def primal(fun: Callable[..., Any], n: int) -> Callable[..., Any]:
    """``fun`` run on the ``n`` keys ``jax.random.split(key, n)`` (vmapped), no transform."""

    def run(key, params):
        return jax.vmap(lambda k: fun(k, params))(jax.random.split(key, n))

    return run


def a_per_sample_reinforce(n: int) -> Callable[..., Any]:
    """Hand-written REINFORCE with *per-sample* gradients: ``vmap(grad)`` over the keys, summed.

    A diagnostic for (a): what materializing ``N`` per-sample gradients of size ``P`` costs
    in plain JAX (``je.grad`` for the score function does one reverse pass over the batch).
    """
    x, w = _a_constants()

    def surrogate(params, k):
        h = jnp.tanh(jnp.asarray(x) @ params["w1"] + params["b1"])
        lg = h @ params["w2"] + params["b2"]
        p = jax.nn.sigmoid(jax.lax.stop_gradient(lg))
        a = jax.random.bernoulli(k, p).astype(lg.dtype)
        f = -((a @ jnp.asarray(w) - A_TARGET) ** 2) / 8.0
        logp = a * jax.nn.log_sigmoid(lg) + (1 - a) * jax.nn.log_sigmoid(-lg)
        return jax.lax.stop_gradient(f) * jnp.sum(logp)

    def run(key, params):
        g = jax.vmap(jax.grad(surrogate), (None, 0))(params, jax.random.split(key, n))
        return jax.tree_util.tree_map(lambda v: jnp.mean(v, 0), g)

    return run


def a_estimators(spsa_dirs: int) -> dict[str, Any]:
    est = {
        "stochastic_ad (forward)": je.stochastic_ad(),
        "stochastic_ad (reverse)": reverse_sad(),
        "score_function (LOO)": je.score_function("leave_one_out"),
        f"SPSA ({spsa_dirs} dirs)": je.finite_difference(
            directions="spsa", num_directions=spsa_dirs
        ),
    }
    return est


def section_a(cfg: argparse.Namespace, key: jax.Array) -> str:
    n, sizes = cfg.a_samples, cfg.a_sizes
    ests = a_estimators(cfg.spsa_dirs)
    diag = "hand-written REINFORCE, per-sample grads"
    names = ["primal", *ests, diag]
    res: dict[int, dict[str, Any]] = {}
    fns, reps = {}, {}
    for target in sizes:  # compile everything first, then time all sizes interleaved
        hidden = a_hidden_for(target)
        params = a_params(hidden)
        P = a_num_params(hidden)
        print(f"(a) P = {P} (hidden {hidden})", flush=True)
        comp = {}
        c, comp["primal"] = compile_timed(primal(a_mlp, n), key, params)
        fns[P, "primal"] = functools.partial(c, key, params)
        for name, est in ests.items():
            if est is None:
                continue
            c, comp[name] = compile_timed(je.grad(a_mlp, est, num_samples=n), key, params)
            fns[P, name] = functools.partial(c, key, params)
            print(f"  compiled {name} in {comp[name]:.1f} s", flush=True)
        c, comp[diag] = compile_timed(a_per_sample_reinforce(n), key, params)
        fns[P, diag] = functools.partial(c, key, params)
        for k in names:
            if (P, k) in fns:
                slow = P > cfg.a_slow_above and k == "stochastic_ad (forward)"
                reps[P, k] = cfg.slow_repeats if slow else cfg.a_repeats
        res[P] = {"hidden": hidden, "compile": comp}
    times = interleaved_medians(fns, reps)
    for P in res:
        t = res[P]["t"] = {k: v for (p, k), v in times.items() if p == P}
        for k, v in t.items():
            print(f"  P={P:6d} {k:42s} {fmt_time(v):>10s} {v / t['primal']:8.3g}x primal")

    Ps = sorted(res)
    header = ["P (hidden width)", *[f"`{k}`" if k != "primal" else "primal run" for k in names]]
    rows = []
    for P in Ps:
        t = res[P]["t"]
        row = [f"{P:,} ({res[P]['hidden']})"]
        for k in names:
            if k not in t:
                row.append("n/a")
            elif k == "primal":
                row.append(fmt_time(t[k]))
            else:
                row.append(f"{fmt_time(t[k])} ({fmt_num(t[k] / t['primal'], 3)}×)")
        rows.append(row)
    lo, hi = Ps[0], Ps[-1]
    ratio_row = [f"cost(P={hi:,}) / cost(P={lo:,})"]
    for k in names:
        tl, th = res[lo]["t"].get(k), res[hi]["t"].get(k)
        ratio_row.append("n/a" if tl is None or th is None else f"{th / tl:.3g}×")
    rows.append(ratio_row)
    comp_rows = [
        [
            f"{P:,}",
            *[f"{res[P]['compile'][k]:.1f}" if k in res[P]["compile"] else "n/a" for k in names],
        ]
        for P in Ps
    ]
    out = [
        "### (a) Cost vs number of parameters",
        "",
        f"MLP {A_IN} → H → {A_OUT} (tanh), its {A_OUT} outputs the logits of {A_OUT} Bernoulli "
        f"sites, `f = -(w·a - {A_TARGET:g})² / 8`; N = {n} samples per `je.grad` call. Cells: "
        "median time per call (and its multiple of one primal run, the program vmapped over "
        f"the same {n} keys outside any transform). All sizes and estimators timed "
        f"interleaved in one loop; {cfg.a_repeats} repeats "
        f"(forward `stochastic_ad` above P = {cfg.a_slow_above:,}: {cfg.slow_repeats}). The "
        "last column is a diagnostic, not an estimator of jaxestim: the plain-JAX score "
        "function with one gradient per sample (`vmap(grad)`, then the mean), i.e. the cost of "
        "materializing N per-sample gradients of size P.",
        "",
        md_table(header, rows),
        "",
        "Compile time (s):",
        "",
        md_table(["P", *[k if k == "primal" else f"`{k}`" for k in names]], comp_rows),
    ]
    rev = "stochastic_ad (reverse)"
    if all(rev in res[P]["t"] for P in Ps):
        growth = res[hi]["t"][rev] / res[lo]["t"][rev]
        worst = max(res[P]["t"][rev] / res[P]["t"]["primal"] for P in Ps)
        out += [
            "",
            f"Targets: reverse `stochastic_ad` cost(P={hi:,}) / cost(P={lo:,}) = {growth:.3g}× "
            f"(target ≤ 3×: {'MET' if growth <= 3 else 'MISSED'}); largest multiple of a primal "
            f"run {worst:.3g}× (target ≤ 10×: {'MET' if worst <= 10 else 'MISSED'}).",
        ]
    else:
        out += ["", "Reverse-mode `stochastic_ad` is not available in this jaxestim: n/a."]
    return "\n".join(out)


# --------------------------------------------------------------------------------------
# (b) XLA temp memory vs loop length T and elements per step G
# --------------------------------------------------------------------------------------


def walk(key, theta, T, G, normal=False, checkpointed=False, split_keys=False):
    """A ``je.scan`` walk: each step draws ``G`` elements from its own key and accumulates.

    ``c <- 0.9 c + mean(tanh(x + 0.1 c))``, ``f = c_T``: nonlinear in the draws and the
    state, so a reverse pass needs per-step (and, pathwise or straight-through, per-element)
    residuals, as a real simulation would (a linear accumulation lets XLA simplify the
    pathwise gradient to a constant).

    The step key is ``jax.random.fold_in(key, t)``, made inside the body, so the program
    itself holds ``O(1)`` keys; ``split_keys=True`` passes ``jax.random.split(key, T)`` as
    ``xs`` instead (``T`` keys per sample, held for the whole loop).
    ``checkpointed``: ``je.scan(..., checkpoint_every=round(sqrt(T)))`` (the segment length
    that bounds reverse-mode residuals by ~2 sqrt(T) steps' worth).
    """

    def step(c, x):
        k = x if split_keys else jax.random.fold_in(key, x)
        if normal:
            x = je.sample(k, D.Normal(jnp.broadcast_to(theta, (G,)), 1.0))
        else:
            x = je.sample(k, D.Bernoulli(logits=jnp.broadcast_to(theta, (G,))))
        return 0.9 * c + jnp.mean(jnp.tanh(x + 0.1 * c)), None

    kw = {"checkpoint_every": max(1, round(T**0.5))} if checkpointed else {}
    xs = jax.random.split(key, T) if split_keys else jnp.arange(T)
    c, _ = je.scan(step, jnp.zeros_like(theta), xs, **kw)
    return c


def b_estimators() -> dict[str, tuple[Any, dict[str, Any]]]:
    """name -> (estimator or None when unavailable, walk keyword arguments)."""
    ck = scan_has_checkpoint_every()
    return {
        "primal run (no transform)": ("primal", {}),
        "primal run, keys `jax.random.split(key, T)` as xs": ("primal", {"split_keys": True}),
        "pathwise (Normal sites)": (je.pathwise(), {"normal": True}),
        "score_function (LOO)": (je.score_function("leave_one_out"), {}),
        "score_function (LOO), checkpoint_every=√T": (
            (je.score_function("leave_one_out"), {"checkpointed": True}) if ck else (None, {})
        ),
        "stochastic_ad (reverse), checkpoint_every=√T": (
            (reverse_sad(), {"checkpointed": True}) if ck else (None, {})
        ),
        "stochastic_ad (forward)": (je.stochastic_ad(), {}),
        "stochastic_ad (reverse)": (reverse_sad(), {}),
        "finite_difference (central, CRN)": (je.finite_difference(0.01), {}),
        "gumbel_softmax (τ = 0.5)": (je.gumbel_softmax(0.5), {}),
        "straight_through": (je.straight_through(), {}),
    }


def b_measure(name: str, T: int, G: int, n: int) -> tuple[float, float]:
    """(temp bytes, compile seconds) of configuration ``name`` at (T, G, N)."""
    est, kw = b_estimators()[name]
    fun = functools.partial(walk, T=T, G=G, **kw)
    theta = jnp.asarray(0.3, jnp.float32)
    key = jax.random.key(0)
    f = primal(fun, n) if isinstance(est, str) else je.grad(fun, est, num_samples=n)
    compiled, secs = compile_timed(f, key, theta)
    return float(compiled.memory_analysis().temp_size_in_bytes), secs


def _b_worker(conn) -> None:
    while True:
        try:
            task = conn.recv()
        except EOFError:  # the parent is gone
            return
        if task is None:
            return
        try:
            out = ("ok", b_measure(*task))
        except Exception as e:  # reported as a note
            out = ("error", f"{type(e).__name__}: {str(e).splitlines()[0][:120]}")
        try:
            conn.send(out)
        except OSError:
            return


class _Compiler:
    """Compiles in a worker process, killed (and restarted) past a time limit."""

    def __init__(self, limit: float, in_process: bool) -> None:
        self.limit, self.in_process = limit, in_process
        self.proc = self.conn = None

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_b_worker, args=(child,), daemon=True)
        self.proc.start()

    def measure(self, task: tuple) -> tuple[str, Any]:
        if self.in_process:
            try:
                return "ok", b_measure(*task)
            except Exception as e:
                return "error", f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
        if self.proc is None:
            self._start()
        self.conn.send(task)
        # the first task also pays the worker's start-up (importing jax): allow for it
        if self.conn.poll(self.limit + 30):
            return self.conn.recv()
        self.proc.kill()
        self.proc.join()
        self.proc = None
        return "timeout", f"compilation > {self.limit:.0f} s, skipped"

    def close(self) -> None:
        if self.proc is not None:
            self.conn.send(None)
            self.proc.join(timeout=10)


def section_b(cfg: argparse.Namespace) -> str:
    n, G0, T0 = cfg.b_samples, cfg.b_fixed_g, cfg.b_fixed_t
    configs = [(T, G0) for T in cfg.b_lengths] + [(T0, G) for G in cfg.b_widths]
    configs = list(dict.fromkeys(configs))
    names = [k for k in b_estimators() if cfg.b_only is None or k in cfg.b_only]
    comp = _Compiler(cfg.compile_limit, in_process=cfg.quick)
    res: dict[tuple[str, int, int], tuple[str, Any]] = {}
    try:
        for name in names:
            est, _ = b_estimators()[name]
            if est is None:
                continue
            skip = False
            for T, G in configs:
                if skip:  # a smaller configuration already timed out
                    res[name, T, G] = ("timeout", "skipped (a smaller size timed out)")
                    continue
                status, val = comp.measure((name, T, G, n))
                res[name, T, G] = (status, val)
                msg = f"{fmt_mib(val[0])} ({val[1]:.1f} s)" if status == "ok" else val
                print(f"(b) {name:42s} T={T:6d} G={G:5d}: {msg}", flush=True)
                skip = status == "timeout"
    finally:
        comp.close()

    notes: list[str] = []

    def cell(name, T, G):
        if (name, T, G) not in res:
            return "n/a"
        status, val = res[name, T, G]
        if status == "ok":
            return f"{fmt_mib(val[0])} ({val[1]:.1f} s)"
        notes.append(f"`{name}` at T = {T}, G = {G}: {val}")
        return "skipped" if status == "timeout" else "error"

    def ratio(name, a, b):
        ra, rb = res.get((name, *a)), res.get((name, *b))
        if not ra or not rb or ra[0] != "ok" or rb[0] != "ok" or ra[1][0] == 0:
            return "–"
        return f"{rb[1][0] / ra[1][0]:.3g}×"

    Ts, Gs = cfg.b_lengths, cfg.b_widths
    rows_t = [
        [
            f"`{k}`" if not k.startswith("primal") else k,
            *[cell(k, T, G0) for T in Ts],
            ratio(k, (Ts[0], G0), (Ts[-1], G0)),
        ]
        for k in names
    ]
    rows_g = [
        [
            f"`{k}`" if not k.startswith("primal") else k,
            *[cell(k, T0, G) for G in Gs],
            ratio(k, (T0, Gs[0]), (T0, Gs[-1])),
        ]
        for k in names
    ]
    out = [
        "### (b) XLA temp memory vs loop length and grid size",
        "",
        f"`je.grad(walk, estimator, num_samples={n})` compiled (never run) for a `je.scan` walk "
        "whose step draws G Bernoulli(σ(θ)) elements (scalar θ) from the step's key and "
        "updates `c ← 0.9 c + mean(tanh(x + 0.1 c))`, `f = c_T` (nonlinear, so reverse passes "
        "need per-step residuals); pathwise runs on the same walk with G Normal(θ, 1) "
        "elements. "
        "Cells: `compiled.memory_analysis().temp_size_in_bytes` (compile time in seconds, "
        "including tracing). The primal row is the program vmapped over the N keys outside "
        f"any transform. A compilation over {cfg.compile_limit:.0f} s is skipped.",
        "",
        f"Vs loop length T (G = {G0}):",
        "",
        md_table(["estimator", *[f"T = {T:,}" for T in Ts], f"T={Ts[-1]:,} / T={Ts[0]:,}"], rows_t),
        "",
        f"Vs elements per step G (T = {T0}):",
        "",
        md_table(["estimator", *[f"G = {G:,}" for G in Gs], f"G={Gs[-1]:,} / G={Gs[0]:,}"], rows_g),
    ]
    fwd = "stochastic_ad (forward)"
    if (fwd, Ts[0], G0) in res and res[fwd, Ts[0], G0][0] == "ok":
        r = ratio(fwd, (Ts[0], G0), (Ts[-1], G0))
        out += [
            "",
            f"Target: forward `stochastic_ad` temp memory T={Ts[-1]:,} / T={Ts[0]:,} = {r} "
            "(≤ 1.3× wanted).",
        ]
    if not scan_has_checkpoint_every():
        out += ["", "`je.scan` has no `checkpoint_every` option in this jaxestim: n/a."]
    if notes:
        out += ["", "Notes: " + "; ".join(dict.fromkeys(notes)) + "."]
    return "\n".join(out)


# --------------------------------------------------------------------------------------
# (c) an inventory model with Poisson demand and a smoothed base-stock policy
# --------------------------------------------------------------------------------------

INV_T, INV_CAP, INV_I0, INV_LAM0, INV_COST, INV_HOLD = 12, 15, 4, 8.0, 1.0, 0.2
INV_PARAMS = {"S": 6.0, "kappa": 1.0, "price": 2.0}


def inventory(key, params):
    """Profit of ``INV_T`` periods of a store with capacity ``INV_CAP`` and lost sales.

    Each period the store orders ``Q ~ Poisson(softplus(kappa (S - I)))`` units (a smoothed
    base-stock policy: order up to ``S``, more sharply for larger ``kappa``), paying
    ``INV_COST`` each; stock beyond the capacity is discarded. Demand is
    ``Poisson(INV_LAM0 exp(-price / 2))``; the store sells ``min(stock, demand)`` at
    ``price`` and pays ``INV_HOLD`` per unit left over.
    """
    S, kappa, price = params["S"], params["kappa"], params["price"]
    lam = INV_LAM0 * jnp.exp(-0.5 * price)

    def step(carry, k):
        stock, profit = carry
        k1, k2 = jax.random.split(k)
        q = je.sample(k1, D.Poisson(jax.nn.softplus(kappa * (S - stock))))
        y = jnp.minimum(stock + q, INV_CAP)
        d = je.sample(k2, D.Poisson(lam))
        sales = jnp.minimum(y, d)
        left = y - sales
        return (left, profit + price * sales - INV_COST * q - INV_HOLD * left), None

    init = (jnp.asarray(float(INV_I0), jnp.float32), jnp.zeros((), jnp.float32))
    (_, profit), _ = je.scan(step, init, jax.random.split(key, INV_T))
    return profit


def _poisson_pmf(k: jax.Array, rate: jax.Array) -> jax.Array:
    return jnp.exp(k * jnp.log(rate) - rate - jax.scipy.special.gammaln(k + 1))


def inventory_expected_profit(params: dict[str, jax.Array]) -> jax.Array:
    """Exact ``E[profit]`` of :func:`inventory` by dynamic programming over the stock level.

    Nothing is truncated: orders that overflow the capacity and demand beyond the stock are
    lumped into tail masses ``P(>= m)``, and the expected order cost is ``INV_COST * rate``.
    """
    S, kappa, price = params["S"], params["kappa"], params["price"]
    lam = INV_LAM0 * jnp.exp(-0.5 * price)
    lv = jnp.arange(INV_CAP + 1, dtype=jnp.float64)
    i, y = lv[:, None], lv[None, :]  # stock before ordering, stock after the delivery
    rate = jax.nn.softplus(kappa * (S - lv))
    pq = jnp.where(y >= i, _poisson_pmf(jnp.maximum(y - i, 0), rate[:, None]), 0.0)
    pq = pq.at[:, -1].set(1.0 - jnp.sum(pq[:, :-1], 1))  # P(y | i), orders overflowing
    s = lv[None, :]  # sales given y: demand d < y, or y with P(d >= y)
    pmf_d = _poisson_pmf(lv, lam)
    cdf_before = jnp.concatenate([jnp.zeros(1), jnp.cumsum(pmf_d)[:-1]])  # P(d < y)
    ps = jnp.where(s < y.T, pmf_d[None, :], jnp.where(s == y.T, 1.0 - cdf_before[:, None], 0.0))
    gain = jnp.sum(ps * (price * s - INV_HOLD * (y.T - s)), 1)  # E[period gain | y]
    reward = -INV_COST * rate + pq @ gain
    # stock left j = y - s: A[y, j] = ps[y, y - j]
    idx = jnp.clip(y.T - y, 0, INV_CAP).astype(jnp.int32)
    left = jnp.where(y <= y.T, jnp.take_along_axis(ps, idx, 1), 0.0)
    trans = pq @ left
    dist = jnp.zeros(INV_CAP + 1, jnp.float64).at[INV_I0].set(1.0)
    total = jnp.zeros((), jnp.float64)
    for _ in range(INV_T):
        total = total + dist @ reward
        dist = dist @ trans
    return total


def inventory_exact() -> dict[str, float]:
    """``jax.grad`` of the exact expected profit, in float64."""
    with jax.enable_x64(True):
        p64 = {k: jnp.asarray(v, jnp.float64) for k, v in INV_PARAMS.items()}
        g = jax.jit(jax.grad(inventory_expected_profit))(p64)
        return {k: float(v) for k, v in g.items()}


C_PROGRAMS = ("walk", "sir", "mlp", "inv")


def c_program(tag: str, cfg: argparse.Namespace) -> tuple[ev.Program, dict[str, int]]:
    """(program, N per estimator) for ``tag``; walk, SIR and MLP from estimator_variance.py."""
    ests = {
        "stochastic_ad (forward)": je.stochastic_ad(),
        "stochastic_ad (reverse)": reverse_sad(),
        "score_function (LOO)": je.score_function("leave_one_out"),
    }
    ests = {k: v for k, v in ests.items() if v is not None}
    f32 = lambda tree: jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.float32), tree)
    n = cfg.c_samples
    fwd_n = cfg.c_mlp_fwd_samples if tag == "mlp" else n
    ns = {k: (fwd_n if k == "stochastic_ad (forward)" else n) for k in ests}
    if tag == "walk":
        prog = ev.Program("random walk (100 Bernoulli steps)", tag, ev.random_walk, f32(0.5),
                          ev.WALK_EXACT, ests)  # fmt: skip
    elif tag == "sir":
        exact = dict(zip(["beta", "gamma"], ev.sir_exact(1.2, 0.3), strict=True))
        prog = ev.Program("SIR epidemic (Binomial)", tag, ev.sir, f32(ev.SIR_PARAMS), exact, ests)
    elif tag == "mlp":
        params = f32(ev._mlp_constants()[2])
        prog = ev.Program("MLP policy (P = 424, 8 Bernoulli actions)", tag, ev.mlp_policy,
                          params, ev.mlp_exact(params), ests)  # fmt: skip
    else:
        prog = ev.Program(f"inventory ({INV_T} periods, Poisson orders and demand)", tag,
                          inventory, f32(INV_PARAMS), inventory_exact(), ests)  # fmt: skip
    return prog, ns


def c_measure(prog: ev.Program, ns: dict[str, int], cfg, key) -> list[ev.Row]:
    exact = ev.flat(jax.tree_util.tree_map(lambda v: np.asarray(v, np.float64), prog.exact))
    fns, samples, comp = {}, {}, {}
    for name, est in prog.estimators.items():
        n = ns[name]
        try:
            cg, t_g = compile_timed(je.grad(prog.fun, est, num_samples=n), key, prog.params)
            cs, t_s = compile_timed(je.grad_samples(prog.fun, est, num_samples=n), key, prog.params)
        except je.EstimatorError as e:
            print(f"  {name}: not applicable ({str(e).splitlines()[0][:100]})", flush=True)
            continue
        samples[name] = ev.per_sample_matrix(block(cs(key, prog.params)), n)
        fns[name] = functools.partial(cg, key, prog.params)
        comp[name] = t_g + t_s
    times = interleaved_medians(fns, {k: cfg.repeats for k in fns})
    rows = []
    for name, x in samples.items():
        n = x.shape[0]
        row = ev.make_row(prog, name, x, exact, times[name] / n, comp[name])
        rows.append(row)
        print(
            f"  {name:26s} N={n:5d} std={row.std:9.4g} max|z|={row.max_z:6.2f} "
            f"µs/sample={row.sec_per_sample * 1e6:9.3g} compile={comp[name]:5.1f}s",
            flush=True,
        )
    best = min(r.wnv for r in rows)
    for r in rows:
        r.best = r.wnv == best
        r.ratio = r.wnv / best if best > 0 else float("inf")
    return rows


def section_c(cfg: argparse.Namespace, key: jax.Array) -> str:
    rows: list[ev.Row] = []
    for tag in cfg.c_programs:
        prog, ns = c_program(tag, cfg)
        print(f"(c) {prog.name}", flush=True)
        rows += c_measure(prog, ns, cfg, key)
    missing = "" if reverse_sad() else " Reverse-mode `stochastic_ad` is not available: n/a."
    return "\n".join(
        [
            "### (c) Work-normalized variance",
            "",
            "Per-sample gradient estimates from `je.grad_samples` (same key for every "
            "estimator); **std per sample**: RMS over coordinates of the per-coordinate std "
            "(± its SE); **µs / sample**: median time of a `je.grad` call (timed interleaved "
            "with the other estimators of the program) / N; **work-norm. var** = std² × "
            "seconds per sample; **× best** its ratio to the program's best; **RMS z / max "
            "|z|**: z = (mean − exact) / SE per coordinate (≈ 1 and ≲ 3.5 for an unbiased "
            "estimator). Exact gradients: dynamic programming (walk, SIR, inventory: `jax.grad` "
            "in float64 of the exact expected profit) or enumeration (MLP policy)." + missing,
            "",
            ev.to_markdown(rows),
        ]
    )


# --------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------


def config(args: argparse.Namespace) -> argparse.Namespace:
    q = args.quick
    args.a_samples = 4 if q else 16
    args.a_sizes = [100] if q else [100, 1_000, 10_000]
    args.a_slow_above = 150 if q else 3_000
    args.spsa_dirs = 16
    args.repeats = args.repeats or (1 if q else 9)
    args.slow_repeats = 1 if q else 3
    args.a_repeats = 1 if q else 21
    args.b_samples = 8 if q else 1000
    args.b_fixed_g, args.b_fixed_t = (4, 10) if q else (100, 100)
    args.b_lengths = [5, 10] if q else [100, 1_000, 10_000]
    # quick: a subset (the other rows run the same code)
    args.b_only = ("primal run (no transform)", "stochastic_ad (forward)") if q else None
    args.b_widths = [4] if q else [10, 100, 1_000]
    args.c_samples = 32 if q else 4000
    args.c_mlp_fwd_samples = 32 if q else 1000
    args.c_programs = ("walk",) if q else C_PROGRAMS
    return args


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    ap.add_argument("--sections", default="abc", help="which of a, b, c to run")
    ap.add_argument("--out", default=None, help="also write the Markdown here")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--compile-limit", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=0)
    args = config(ap.parse_args(argv))
    command = "python benchmarks/big_programs.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    machine = dict(machine_description())  # the load average at the start
    t0 = time.perf_counter()
    key = jax.random.key(args.seed)
    parts = []
    sections = {"a": lambda: section_a(args, key), "b": lambda: section_b(args)}
    sections["c"] = lambda: section_c(args, key)
    for name, run in sections.items():
        if name in args.sections:
            t1 = time.perf_counter()
            parts.append(run())
            print(f"section ({name}): {time.perf_counter() - t1:.0f} s", flush=True)
    head = (
        f"Generated by `{command.strip()}` in {time.perf_counter() - t0:.0f} s: jax "
        f"{jax.__version__}, {machine['CPU']}, {machine['usable cores (sched_getaffinity)']} "
        f"usable cores, load average at start {machine['load average at start (1/5/15 min)']}, "
        f"float32, key `jax.random.key({args.seed})`."
    )
    md = head + "\n\n" + "\n\n".join(parts) + "\n"
    print()
    print(md)
    if args.out:
        Path(args.out).write_text(md)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
