"""Timing, machine description and Markdown helpers shared by the benchmark modules."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np


def block(x: Any) -> Any:
    """Wait for every JAX array in ``x`` (a pytree) to be computed."""
    return jax.block_until_ready(x)


def compile_timed(fn: Callable[..., Any], *args: Any) -> tuple[Callable[..., Any], float]:
    """``jax.jit(fn)`` lowered and compiled for ``args``; returns (compiled, seconds).

    The seconds include tracing (which runs the jaxestim handlers), lowering and XLA
    compilation: everything a first call pays beyond running the program.
    """
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - t0


def median_times(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1
) -> dict[str, float]:
    """Median wall time (seconds) of each zero-argument callable.

    The callables are run interleaved (round-robin) so that slow drift of the machine
    (frequency scaling, other processes) affects all of them alike; each result is passed
    to ``jax.block_until_ready`` inside the timed region.
    """
    for f in fns.values():
        for _ in range(warmup):
            block(f())
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            block(f())
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ``log y`` against ``log x``."""
    return float(np.polyfit(np.log(np.asarray(xs)), np.log(np.asarray(ys)), 1)[0])


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_description() -> list[tuple[str, str]]:
    """(field, value) rows describing the machine and the library versions."""
    import jaxlib

    rows = [
        ("CPU", _cpu_model()),
        ("logical cores (os.cpu_count)", str(os.cpu_count())),
        ("usable cores (sched_getaffinity)", str(len(os.sched_getaffinity(0)))),
        ("platform", platform.platform()),
        ("python", platform.python_version()),
        ("jax / jaxlib", f"{jax.__version__} / {jaxlib.__version__}"),
        ("JAX backend / devices", f"{jax.default_backend()} / {jax.devices()}"),
        ("float dtype", "float32 (jax_enable_x64 off)"),
        ("load average at start (1/5/15 min)", " / ".join(f"{x:.1f}" for x in os.getloadavg())),
    ]
    try:
        import torch

        rows.append(("torch", f"{torch.__version__} ({torch.get_num_threads()} threads)"))
    except ImportError:
        rows.append(("torch", "not installed (PyTorch columns skipped)"))
    try:
        import numpyro

        rows.append(("numpyro", numpyro.__version__))
    except ImportError:
        rows.append(("numpyro", "not installed (NumPyro column skipped)"))
    return rows


def fmt_time(s: float | None) -> str:
    """Seconds as a short human string (ns/µs/ms/s)."""
    if s is None or not np.isfinite(s):
        return "–"
    if s < 1e-6:
        return f"{s * 1e9:.0f} ns"
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def fmt_num(x: float | None, digits: int = 3) -> str:
    """A number with ``digits`` significant digits, or an en dash for missing values."""
    if x is None:
        return "–"
    x = float(x)
    if not np.isfinite(x):
        return str(x)
    return f"{x:.{digits}g}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
