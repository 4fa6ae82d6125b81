"""Scaling out: ``je.grad(..., mesh=)`` step time and samples/second versus device count.

Run: ``python benchmarks/scaling.py [--quick] [--devices 1,2,4,8] [--repeats R]``. Prints a
Markdown table.

For every device count ``D`` the script runs a worker copy of itself in a fresh process with
``JAX_NUM_CPU_DEVICES=D`` (and ``JAX_PLATFORMS=cpu``): ``D`` simulated CPU devices (any
``--xla_force_host_platform_device_count`` in ``XLA_FLAGS`` is removed from the worker's
environment, so only ``JAX_NUM_CPU_DEVICES`` decides). In each worker, for each case (a
workload of ``benchmarks/workloads.py`` with one estimator):

* ``jax.jit(je.grad(prog, est, num_samples=N, mesh=jax.make_mesh((D,), ("samples",))))``
  and the unsharded ``jax.jit(je.grad(prog, est, num_samples=N))`` (``mesh=None``) are
  compiled ahead of time, warmed up, then timed interleaved (round-robin,
  ``jax.block_until_ready``), medians of ``R`` repeats;
* the sharded and the unsharded gradient for the same key are compared: the largest
  absolute difference must be within float32 summation-order tolerance
  (``TOL_REL * max|unsharded|``, ``TOL_REL = 1e-4``); otherwise the script fails.

``--real-devices`` skips the simulation: the workers use the first ``D`` devices of the
default backend (e.g. GPUs), for a machine that has them.

On a CPU machine the simulated devices share the same cores (here 2), so a sharded call
does the same arithmetic as the unsharded one plus the ``shard_map`` bookkeeping and the
cross-device ``psum``; the table then measures correctness and overhead, not speed-up
from more hardware (at most the cores a single XLA:CPU device leaves idle).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TOL_REL = 1e-4  # |sharded - unsharded| <= TOL_REL * max|unsharded|: summation order only
MARK = "SCALING_JSON "


# --------------------------------------------------------------------------------------
# Worker: one process, one device count
# --------------------------------------------------------------------------------------


def cases(quick: bool) -> list[tuple[str, str, Any, Any, int]]:
    """``(workload name, estimator label, estimator, Workload, N)`` for every case."""
    import workloads as W

    import jaxestim as je

    if quick:
        n = 64
        w1 = W.make_w1(100, n, extras=False)
        w2 = W.make_w2(50, n, whole_program=False)
        return [
            ("W1", "pathwise", je.pathwise(), w1, n),
            ("W2", "score_function(LOO)", je.score_function("leave_one_out"), w2, n),
        ]
    w1 = W.make_w1(1000, 4096, extras=False)
    w2 = W.make_w2(200, 4096, whole_program=False)
    w3 = W.make_w3(10_000, extras=False)
    w4 = W.make_w4(4096, whole_program=False, extras=False)
    return [
        ("W1", "pathwise", je.pathwise(), w1, 4096),
        ("W2", "score_function(LOO)", je.score_function("leave_one_out"), w2, 4096),
        ("W3", "score_function(LOO)", je.score_function("leave_one_out"), w3, 10_000),
        ("W3", "stochastic_ad", je.stochastic_ad(), w3, 10_000),
        ("W4", "gumbel_softmax(0.5)", je.gumbel_softmax(0.5), w4, 4096),
    ]


def worker(ndev: int, quick: bool, repeats: int, real: bool) -> None:
    """Time every case sharded over ``ndev`` devices and unsharded; print one JSON line."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from _common import compile_timed, median_times

    import jaxestim as je

    devices = jax.devices()
    if real:
        if len(devices) < ndev:
            raise SystemExit(f"--real-devices: {ndev} devices asked for, {len(devices)} present")
        devices = devices[:ndev]
    elif len(devices) != ndev:
        raise SystemExit(
            f"expected {ndev} simulated CPU devices (JAX_NUM_CPU_DEVICES="
            f"{os.environ.get('JAX_NUM_CPU_DEVICES')}), got {len(devices)}: {devices}"
        )
    mesh = jax.make_mesh((ndev,), ("samples",), devices=devices)
    key = jax.random.key(0)
    results = []
    for wname, label, est, wl, n in cases(quick):
        theta = wl.theta
        sharded, t_compile = compile_timed(
            je.grad(wl.prog, est, num_samples=n, mesh=mesh), key, theta
        )
        plain, t_compile_plain = compile_timed(je.grad(wl.prog, est, num_samples=n), key, theta)
        g_sh = np.asarray(sharded(key, theta))
        g_un = np.asarray(plain(key, theta))
        diff = float(np.max(np.abs(g_sh - g_un)))
        scale = float(np.max(np.abs(g_un)))
        finite = bool(np.all(np.isfinite(g_sh)) and np.all(np.isfinite(g_un)))
        t = median_times(
            {"sharded": lambda: sharded(key, theta), "plain": lambda: plain(key, theta)},
            repeats,
        )
        results.append(
            {
                "workload": wname,
                "estimator": label,
                "n": n,
                "devices": ndev,
                "compile_sharded": t_compile,
                "compile_plain": t_compile_plain,
                "t_sharded": t["sharded"],
                "t_plain": t["plain"],
                "max_abs_diff": diff,
                "max_abs_grad": scale,
                "finite": finite,
                "output_sharding": str(jnp.asarray(sharded(key, theta)).sharding.spec),
            }
        )
    print(MARK + json.dumps({"devices": [str(d) for d in devices], "results": results}))


# --------------------------------------------------------------------------------------
# Driver: one worker process per device count, then the table
# --------------------------------------------------------------------------------------


def worker_env(ndev: int, real: bool) -> dict[str, str]:
    """The environment of the worker for ``ndev`` simulated CPU devices."""
    env = dict(os.environ)
    flags = re.sub(r"--xla_force_host_platform_device_count=\S*", "", env.get("XLA_FLAGS", ""))
    if flags.strip():
        env["XLA_FLAGS"] = flags.strip()
    else:
        env.pop("XLA_FLAGS", None)
    if not real:
        env["JAX_NUM_CPU_DEVICES"] = str(ndev)
        env["JAX_PLATFORMS"] = "cpu"
    return env


def start_worker(ndev: int, quick: bool, repeats: int, real: bool) -> subprocess.Popen:
    """Start the worker process for ``ndev`` devices (see :func:`worker`)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(ndev)]
    cmd += ["--repeats", str(repeats)] + (["--quick"] if quick else [])
    cmd += ["--real-devices"] if real else []
    return subprocess.Popen(
        cmd,
        env=worker_env(ndev, real),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_worker(ndev: int, proc: subprocess.Popen) -> dict:
    """Wait for a worker; its JSON result, or exit with its output if it failed."""
    out, err = proc.communicate()
    lines = [ln for ln in out.splitlines() if ln.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        raise SystemExit(
            f"worker for D={ndev} failed (exit {proc.returncode}):\n" + out[-3000:] + err[-3000:]
        )
    return json.loads(lines[-1][len(MARK) :])


def run_workers(devs: list[int], quick: bool, repeats: int, real: bool) -> dict[int, dict]:
    """One worker per device count: one after the other, or all at once with ``--quick``.

    The full run times one process at a time; the smoke run (whose numbers mean nothing)
    starts them together to keep its wall time short.
    """
    if quick:
        procs = {d: start_worker(d, quick, repeats, real) for d in devs}
        return {d: finish_worker(d, p) for d, p in procs.items()}
    return {d: finish_worker(d, start_worker(d, quick, repeats, real)) for d in devs}


def header(quick: bool, devs: list[int], repeats: int, real: bool) -> str:
    import jax
    import jaxlib
    from _common import _cpu_model

    cores = len(os.sched_getaffinity(0))
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        "# Scaling out: je.grad(..., mesh=) vs number of devices",
        "",
        f"Machine: {_cpu_model()}, {cores} usable cores, load average {load}; "
        f"jax / jaxlib {jax.__version__} / {jaxlib.__version__}; float32.",
    ]
    if real:
        lines.append(f"Devices: the first D devices of the default backend, D in {devs}.")
    else:
        lines += [
            f"Devices: D in {devs} **simulated** CPU devices (`JAX_NUM_CPU_DEVICES=D`, one "
            "fresh process per D).",
            "",
            f"**Note:** on this {cores}-core CPU machine the simulated devices share the same "
            f"{cores} cores, so a sharded call does the same arithmetic as the unsharded one "
            "plus the shard_map bookkeeping and the cross-device psum: this table shows "
            "correctness and overhead, not speed-up from more hardware. The most it can "
            f"show is the {cores} cores' worth: one XLA:CPU device may leave cores idle (a "
            "sequential loop such as W3's scan runs on one core), and D simulated devices "
            "run concurrently. Real speed-ups need real devices (GPU/TPU): see the README "
            'section "Scaling out" (`python benchmarks/scaling.py --real-devices` on such a '
            "machine).",
        ]
    lines += [
        "",
        f"Step time: jitted `je.grad(prog, est, num_samples=N, mesh=jax.make_mesh((D,), "
        f'("samples",)))` compiled ahead of time, median of {repeats} interleaved repeats '
        "(with the unsharded call of the same process), `jax.block_until_ready`. "
        '"÷ mesh=None": sharded time / unsharded time in the same process. '
        f'"max |Δ|": largest absolute difference between the sharded and the unsharded '
        f"gradient for the same key (must be ≤ {TOL_REL:g} · max |grad|).",
        "",
    ]
    if quick:
        lines += ["(--quick: tiny sizes, workers run concurrently: the numbers mean nothing)", ""]
    return "\n".join(lines)


def table_rows(runs: dict[int, dict], devs: list[int]) -> tuple[list[list[str]], list[str]]:
    """Table rows (a ``mesh=None`` row first when D = 1 ran) and the failed checks."""
    from _common import fmt_num, fmt_time

    rows, failures = [], []
    for i, base in enumerate(runs[devs[0]]["results"]):
        ref = base["t_sharded"] if base["devices"] == 1 else None
        n = base["n"]
        name = [base["workload"], base["estimator"], str(n)]
        if ref is not None:
            t = base["t_plain"]
            plain = ["1 (mesh=None)", fmt_time(t), fmt_num(n / t), "–", "1.00", "–"]
            rows.append([*name, *plain, f"{base['compile_plain']:.1f} s"])
        for d in devs:
            r = runs[d]["results"][i]
            assert (r["workload"], r["estimator"]) == (base["workload"], base["estimator"])
            t, diff, scale = r["t_sharded"], r["max_abs_diff"], r["max_abs_grad"]
            ok = r["finite"] and diff <= TOL_REL * scale
            if not ok:
                failures.append(
                    f"{r['workload']} {r['estimator']} D={d}: max |sharded - unsharded| = "
                    f"{diff:.3g} > {TOL_REL * scale:.3g} (all finite: {r['finite']})"
                )
            rel = diff / scale if scale > 0 else 0.0
            cells = [
                str(d),
                fmt_time(t),
                fmt_num(n / t),
                f"{ref / t:.2f}×" if ref else "–",
                f"{t / r['t_plain']:.2f}",
                f"{diff:.2g} ({rel:.1g} rel)" + ("" if ok else " **FAIL**"),
                f"{r['compile_sharded']:.1f} s",
            ]
            rows.append([*name, *cells])
    return rows, failures


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="D in (1, 2), tiny N (smoke test)")
    ap.add_argument("--devices", default=None, help="comma-separated device counts (1,2,4,8)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats (median)")
    ap.add_argument(
        "--real-devices",
        action="store_true",
        help="use the default backend's devices instead of simulated CPU devices",
    )
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 21)
    sys.path.insert(0, str(HERE))
    if args.worker is not None:
        worker(args.worker, args.quick, repeats, args.real_devices)
        return

    from _common import md_table

    default = "1,2" if args.quick else "1,2,4,8"
    devs = [int(d) for d in (args.devices or default).split(",")]
    print(header(args.quick, devs, repeats, args.real_devices), flush=True)
    t0 = time.perf_counter()
    runs = run_workers(devs, args.quick, repeats, args.real_devices)
    elapsed = time.perf_counter() - t0

    rows, failures = table_rows(runs, devs)
    print(
        md_table(
            [
                "workload",
                "estimator",
                "N",
                "devices D",
                "step time",
                "samples/s",
                "speed-up vs D=1",
                "÷ mesh=None",
                "max \\|Δ\\| vs mesh=None",
                "compile",
            ],
            rows,
        )
    )
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"\nWall time of the {len(devs)} worker processes: {elapsed:.0f} s; "
        f"load average at the end {load}."
    )
    if failures:
        print("\nFAILED: sharded estimate differs from the unsharded one:", file=sys.stderr)
        for f in failures:
            print("  " + f, file=sys.stderr)
        raise SystemExit(1)
    print("All sharded estimates equal the unsharded ones within float32 tolerance.")


if __name__ == "__main__":
    main()
