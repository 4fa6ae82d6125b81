"""Smoke test: ``benchmarks/run.py --quick`` runs and writes a report with every section.

No timing assertions: the quick sizes are too small for the numbers to mean anything.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

HEADINGS = (
    "# jaxestim benchmark results",
    "## Machine",
    "## Speed vs hand-written JAX",
    "## Variance per unit time",
    "## Memory",
    "## Peers: PyTorch and NumPyro",
    "## Compile time",
    "## Scaling",
    "## StochasticAD cost",
    "## Targets",
    "## Notes",
)


def test_quick_benchmark_writes_report(tmp_path):
    out = tmp_path / "results.md"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = out.read_text()
    for heading in HEADINGS:
        assert f"\n{heading}\n" in f"\n{text}", f"missing section {heading!r}"
    assert "no accelerator was lent" in text
    assert "| W1 | pathwise |" in text
