"""Test-session settings.

The suite is bound by XLA compile time (hundreds of small programs, each compiled once), not
by run time. LLVM's backend optimizations are switched off for the test processes (and the
subprocesses they start, which inherit the environment), and fusions use XLA's classic
elemental emitters. Compilation then takes about 40 % (and another 20 %) less time. The
compiled code performs the same IEEE operations, only less optimized; there
is no fast-math. Tests that compare two computations compile both under the same flags.
Benchmarks are never timed under these flags: ``benchmarks/`` scripts run outside pytest,
and the benchmark smoke tests only check that those scripts run. Set ``JAXESTIM_TEST_XLA_OPT=1``
to test with XLA's default optimization level.
"""

from __future__ import annotations

import os

_FAST_COMPILE = (
    "--xla_backend_optimization_level=0",
    "--xla_llvm_disable_expensive_passes=true",
    # the classic elemental emitters compile fusions ~20 % faster than the MLIR fusion
    # emitters on the Binomial/Poisson programs (same operations)
    "--xla_cpu_use_fusion_emitters=false",
)

if os.environ.get("JAXESTIM_TEST_XLA_OPT") != "1":
    _flags = os.environ.get("XLA_FLAGS", "").split()
    _flags += [f for f in _FAST_COMPILE if f.split("=")[0] not in " ".join(_flags)]
    os.environ["XLA_FLAGS"] = " ".join(_flags)
