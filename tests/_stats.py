"""Statistical assertions and exact references shared by the tests.

Exact references here are computed independently of jaxestim's estimators: closed forms,
exact enumeration, or dynamic programming in NumPy float64.
"""

from __future__ import annotations

import numpy as np


def mean_se(samples) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error over the leading (sample) axis."""
    x = np.asarray(samples, dtype=np.float64)
    n = x.shape[0]
    return x.mean(0), x.std(0, ddof=1) / np.sqrt(n)


def assert_unbiased(samples, exact, se_max: float, z: float = 5.0) -> None:
    """|mean - exact| < z * SE, with SE < se_max so the check has power (it can fail)."""
    m, se = mean_se(samples)
    exact = np.asarray(exact, dtype=np.float64)
    assert np.all(se < se_max), f"standard error {se} exceeds the bound {se_max}"
    assert np.all(np.abs(m - exact) < z * se + 1e-9), (
        f"mean {m} vs exact {exact}: |diff| = {np.abs(m - exact)} >= {z} * SE = {z * se}"
    )


def random_walk_exact(p: float, steps: int = 100, size: int = 200) -> tuple[float, float]:
    """E[n] and d/dp E[n] for n_0 = 0, n += Bernoulli(p (1 - (n + i) / size)), i = 1..steps.

    Forward-mode dynamic programming over the distribution of n: pi_i(n) and its
    derivative in p are propagated exactly in float64.
    """
    pi = np.zeros(steps + 1)
    dpi = np.zeros(steps + 1)
    pi[0] = 1.0
    n = np.arange(steps + 1)
    for i in range(1, steps + 1):
        dq = 1.0 - (n + i) / size
        q = p * dq
        new = pi * (1 - q)
        dnew = dpi * (1 - q) - pi * dq
        new[1:] += (pi * q)[:-1]
        dnew[1:] += (dpi * q + pi * dq)[:-1]
        pi, dpi = new, dnew
    return float(n @ pi), float(n @ dpi)
