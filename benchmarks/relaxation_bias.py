"""Bias and per-sample standard deviation of the straight-through family.

(a) the three-Bernoulli toy: x_i ~ Bernoulli(sigmoid(eta_i)), eta = 0,
    f = sum_i (x_i - p_i)^2, p = (0.6, 0.51, 0.48); exact gradient (1 - 2 p) / 4.
(b) a categorical program: y ~ Categorical(softmax(theta)), theta = (0.2, -0.4, 0.5),
    f = exp(select(v, y)), v = (1, -0.5, 2); exact gradient J(softmax theta) exp(v).
Both sites live in one program (additive f, so the gradients separate). Exact references
by enumeration; N = 20000 samples per estimator, key 0. Run:
``python benchmarks/relaxation_bias.py`` (prints the README's Markdown table).
"""

import jax
import jax.numpy as jnp
import numpy as np

import jaxestim as je
from jaxestim import distributions as D

P = np.array([0.6, 0.51, 0.48])
V = np.array([1.0, -0.5, 2.0])
THETA = np.array([0.2, -0.4, 0.5])
N = 20_000


def mixed(key, prm):
    k1, k2 = jax.random.split(key)
    x = je.sample(k1, D.Bernoulli(logits=prm["eta"]))
    y = je.sample(k2, D.Categorical(logits=prm["theta"]))
    return jnp.sum((x - P) ** 2) + jnp.exp(je.select(V, y))


def main() -> None:
    pi = np.exp(THETA) / np.exp(THETA).sum()
    exact = np.concatenate([(1 - 2 * P) / 4, (np.diag(pi) - np.outer(pi, pi)) @ np.exp(V)])
    prm = {"eta": jnp.zeros(3), "theta": jnp.asarray(THETA)}
    ests = {
        "straight_through()": je.straight_through(),
        "gumbel_softmax(0.5)": je.gumbel_softmax(0.5),
        "gumbel_softmax(0.5, hard=True)": je.gumbel_softmax(0.5, hard=True),
        "gumbel_rao(0.5, num_samples=1)": je.gumbel_rao(0.5, 1),
        "gumbel_rao(0.5, num_samples=10)": je.gumbel_rao(0.5, 10),
        "gumbel_rao(0.5, num_samples=100)": je.gumbel_rao(0.5, 100),
        "reinmax(1.0)": je.reinmax(1.0),
        "reinmax(2.0)": je.reinmax(2.0),
        "score_function() (unbiased reference)": je.score_function(),
    }
    print(
        "| estimator | toy bias (η₁, η₂, η₃) | toy sd | categorical bias (θ₁, θ₂, θ₃) | cat. sd |"
    )
    print("|---|---|---|---|---|")
    for name, est in ests.items():
        g = jax.jit(je.grad_samples(mixed, est, num_samples=N))(jax.random.key(0), prm)
        g = np.concatenate([np.asarray(g["eta"]), np.asarray(g["theta"])], axis=-1)
        m, sd = g.mean(0), g.std(0, ddof=1)
        se = sd / np.sqrt(N)
        b = m - exact

        def fmt(i):
            return ", ".join(f"{b[j]:+.4f}±{se[j]:.4f}" for j in i)

        print(
            f"| `{name}` | {fmt(range(3))} | {sd[:3].mean():.3f} | {fmt(range(3, 6))} "
            f"| {sd[3:].mean():.3f} |"
        )
    print(f"\nexact: {np.array2string(exact, precision=4)}")


if __name__ == "__main__":
    main()
