"""Shared plumbing of the gallery examples: command line, progress bars and figures.

Every example is a script ``examples/NAME.py`` with a ``main(fast: bool, out: Path) -> dict``
that runs the example (``fast=True``: a few-second version for ``make test``; ``False``: the
full-size run, by hand), writes its figure(s) under ``out`` and returns the figures it measured
(the test checks them against the exact or reference values).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def run_cli(main: Callable[..., dict[str, Any]], doc: str | None) -> None:
    """``python examples/NAME.py [--fast] [--out DIR]``: run ``main`` and print its results."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--fast", action="store_true", help="the few-second version")
    parser.add_argument("--out", default="gallery-out", help="folder for the figures")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = main(fast=args.fast, out=out)
    lines = format_results(results)
    lines.append(f"({'fast' if args.fast else 'full size'}, {time.perf_counter() - t0:.0f} s)")
    print("\n".join(lines))
    script = Path(sys.argv[0]).stem
    (out / f"{script}.txt").write_text("\n".join(lines) + "\n")
    print(f"figures and results in {out}/")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def format_results(results: dict[str, Any], indent: str = "") -> list[str]:
    """One line per result (floats to 6 significant digits), nested dicts indented."""
    lines = []
    for name, value in results.items():
        if isinstance(value, dict):
            lines.append(f"{indent}{name}:")
            lines += format_results(value, indent + "    ")
        else:
            lines.append(f"{indent}{name}: {_fmt(value)}")
    return lines


def progress(items: Iterable[T], total: int | None = None, desc: str = "") -> Iterator[T]:
    """``items`` with a tqdm progress bar (elapsed / remaining time) on stderr."""
    from tqdm.auto import tqdm

    yield from tqdm(items, total=total, desc=desc, leave=False, mininterval=1.0)


def figure(out: Path, name: str, fig: Any) -> Path:
    """Save a matplotlib figure as ``out/name.png`` and close it."""
    import matplotlib.pyplot as plt

    path = Path(out) / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
