"""Compiled temp memory of je.pathwise() (reverse) vs je.pathwise(mode="forward") on long loops.

Two programs with 2 parameters and ``num_samples=4``: (a) one Normal site and a
deterministic ``je.scan`` of length T (reverse mode keeps one residual per iteration,
forward mode none); (b) a Normal site in every iteration (``je.scan(..., key=key)``, whose
bulk random words are O(T) in both modes). Prints XLA's ``temp_size_in_bytes`` and checks
that both modes give the same gradient. Run: ``python benchmarks/pathwise_forward_memory.py``.
"""

import jax
import jax.numpy as jnp
import numpy as np

import jaxestim as je
from jaxestim.distributions import Normal


def one_site(length):
    def prog(key, p):
        x = je.sample(key, Normal(p["mu"], jnp.exp(p["log_s"])))
        body = lambda c, _: (0.9 * c + 0.1 * jnp.sin(x + c), None)
        c, _ = je.scan(body, 0.0, None, length=length)
        return c**2

    return prog


def site_per_step(length):
    def prog(key, p):
        def body(c, _, k):
            x = je.sample(k, Normal(p["mu"], jnp.exp(p["log_s"])))
            return 0.9 * c + 0.1 * jnp.sin(x + c), None

        c, _ = je.scan(body, 0.0, None, length=length, key=key)
        return c**2

    return prog


def main() -> None:
    params = {"mu": jnp.asarray(0.3), "log_s": jnp.asarray(-0.5)}
    key = jax.random.key(0)
    print("program         T        reverse temp B   forward temp B")
    for make, label in ((one_site, "one site"), (site_per_step, "site per step")):
        for length in (1_000, 10_000, 100_000):
            temps, grads = [], []
            for est in (je.pathwise(), je.pathwise(mode="forward")):
                fn = jax.jit(je.grad(make(length), est, num_samples=4))
                stats = fn.lower(key, params).compile().memory_analysis()
                temps.append(stats.temp_size_in_bytes)
                grads.append(np.array([v for v in fn(key, params).values()]))
            np.testing.assert_allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)
            print(f"{label:14s} {length:8d} {temps[0]:16d} {temps[1]:16d}")


if __name__ == "__main__":
    main()
