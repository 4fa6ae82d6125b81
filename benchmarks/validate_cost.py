"""Cost of the checked mode: time per call of je.grad(..., validate=False) vs validate=True.

Run: ``python benchmarks/validate_cost.py [--repeats R]``. One process; every configuration
is jitted, warmed up (compiled and run once), then timed as the median of ``R`` repeats of
``block_until_ready(g(key, theta))`` with a fresh key per repeat. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxestim as je
from jaxestim import distributions as D


def walk(key, p):
    """The 100-step Bernoulli random walk of the README (je.scan)."""

    def step(n, xs):
        k, i = xs
        return n + je.sample(k, D.Bernoulli(probs=p * (1 - (n + i) / 200))), None

    keys = jax.random.split(key, 100)
    return je.scan(step, 0.0, (keys, jnp.arange(1.0, 101.0)))[0]


def gaussian(key, theta):
    """20 Normal(theta_j, exp(theta_j / 2)) draws, f = sum z^2 sin(theta)."""
    z = je.sample(key, D.Normal(theta, jnp.exp(theta / 2)))
    return jnp.sum(z**2 * jnp.sin(theta))


def two_sites(key, t):
    k1, k2 = jax.random.split(key)
    z = je.sample(k1, D.Normal(t, 1.0), (8,))
    x = je.sample(k2, D.Bernoulli(logits=t), (8,))
    return jnp.sum(z * x)


CASES = [
    (
        "score_function(LOO), 100-step Bernoulli walk in je.scan",
        walk,
        0.5,
        je.score_function("leave_one_out"),
        1000,
    ),
    (
        "pathwise, Normal with 20 parameters",
        gaussian,
        jnp.linspace(-1, 1, 20),
        je.pathwise(),
        10_000,
    ),
    ("auto, 8 Normal + 8 Bernoulli sites", two_sites, 0.3, je.auto(), 10_000),
]


def time_call(g, theta, repeats: int) -> float:
    jax.block_until_ready(g(jax.random.key(0), theta))  # compile + warm-up
    jax.block_until_ready(g(jax.random.key(1), theta))
    ts = []
    for r in range(repeats):
        k = jax.random.key(100 + r)
        t0 = time.perf_counter()
        jax.block_until_ready(g(k, theta))
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, median of {args.repeats}\n")
    print("| program | N | validate=False ms | validate=True ms | ratio |")
    print("|---|---:|---:|---:|---:|")
    for name, fun, theta, est, n in CASES:
        times = []
        for validate in (False, True):
            g = jax.jit(je.grad(fun, est, num_samples=n, validate=validate))
            times.append(time_call(g, theta, args.repeats))
        off, on = times
        print(f"| {name} | {n} | {off * 1e3:.2f} | {on * 1e3:.2f} | {on / off:.2f} |")


if __name__ == "__main__":
    main()
