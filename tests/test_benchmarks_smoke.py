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


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``benchmarks/<name>`` with ``args``; fail with its output tail if it fails."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / name), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_quick_benchmark_writes_report(tmp_path):
    out = tmp_path / "results.md"
    run_script("run.py", "--quick", "--out", str(out))
    text = out.read_text()
    for heading in HEADINGS:
        assert f"\n{heading}\n" in f"\n{text}", f"missing section {heading!r}"
    assert "no accelerator was lent" in text
    assert "| W1 | pathwise |" in text


def test_quick_particle_filter_benchmark_prints_table():
    proc = run_script("particle_filter.py", "--quick")
    text = proc.stdout
    assert "| Categorical site | stochastic_ad |" in text
    assert "| je.resample + new_weight | pathwise | stratified |" in text
    assert "| Kalman filter (exact) |" in text


def test_big_programs_quick(tmp_path):
    """``benchmarks/big_programs.py --quick``: all three sections of the study run."""
    out = tmp_path / "big.md"
    run_script("big_programs.py", "--quick", "--out", str(out))
    text = out.read_text()
    for heading in (
        "### (a) Cost vs number of parameters",
        "### (b) XLA temp memory vs loop length and grid size",
        "### (c) Work-normalized variance",
    ):
        assert heading in text, f"missing section {heading!r}"
    a, rest = text.split("### (b)")
    b, c = rest.split("### (c)")
    assert "| 106 (2) | " in a  # P = 106 (hidden width 2)
    assert "| `stochastic_ad (forward)` | " in b
    assert "| random walk (100 Bernoulli steps) | 1 | `score_function (LOO)` |" in c


def test_quick_loops_benchmark():
    """``benchmarks/loops.py --quick`` prints its speed and memory tables."""
    proc = run_script("loops.py", "--quick")
    assert "## Speed" in proc.stdout and "## Memory" in proc.stdout
    assert "je.scan(..., key=key)" in proc.stdout and "checkpoint_every=k" in proc.stdout


def test_quick_compile_time_benchmark_runs():
    """``benchmarks/compile_time.py --quick`` prints its table and the je.compare timing."""
    proc = run_script("compile_time.py", "--quick")
    assert "| W1 | je.grad, pathwise | 16 | 1 |" in proc.stdout
    assert "je.grad_samples, score_function(LOO)" in proc.stdout
    assert "je.compare on the SIR model" in proc.stdout


def test_quick_scaling_benchmark():
    """``benchmarks/scaling.py --quick``: D = 1, 2 simulated devices, sharded == unsharded."""
    proc = run_script("scaling.py", "--quick")
    text = proc.stdout
    assert "simulated devices share the same" in text and "not speed-up" in text
    assert "| W1 | pathwise | 64 | 1 (mesh=None) |" in text
    assert "| W1 | pathwise | 64 | 2 |" in text
    assert "| W2 | score_function(LOO) | 64 | 2 |" in text
    assert "All sharded estimates equal the unsharded ones" in text
    assert "FAIL" not in text


def test_quick_discrete_vae_benchmark(tmp_path):
    """``benchmarks/discrete_vae.py --quick``: linear VAE, 2 estimators, table + plot."""
    png = tmp_path / "dvae.png"
    proc = run_script("discrete_vae.py", "--quick", "--out", str(png))
    text = proc.stdout
    assert "## linear" in text and "Ranking vs the published one:" in text
    assert "| score function (LOO) | 2 | 2 | " in text
    assert "| straight-through | 2 | 2 | " in text
    assert "failed:" not in text
    assert png.stat().st_size > 0


def test_variance_table_prints_exact_and_empirical_tables():
    """``benchmarks/variance_table.py``: the quad table (paper's (x - 3)^2 row) and the
    empirical table of the jaxestim estimators that exist (tiny N: no accuracy claim)."""
    text = run_script("variance_table.py", "--num-samples", "1000").stdout
    assert "| `(x - 3)^2` | 87.0 | 346 | 38.0 | 184 | 4.00 | 24.0 | 4.37 | 20.0 |" in text
    assert "### Empirical per-sample variance, jaxestim, N = 1000" in text
    assert "* `pathwise`: largest relative deviation" in text
