"""Credit assignment: ``je.cost`` (reward-to-go) and per-site state-dependent baselines.

The reference is exact: every action sequence of a short chain walk is enumerated in NumPy
float64 (probability, total cost, score), independently of jaxestim.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _stats import assert_unbiased

import jaxestim as je
from jaxestim.distributions import Bernoulli, Normal

T, K, GOAL = 7, 5, 3
THETA = np.array([0.4, -0.3, 0.2, 0.1, -0.5])


def _move(s, a):
    return min(max(s + 2 * a - 1, 0), K - 1)


def _cost(s):
    return 0.5 * (s - GOAL) ** 2


def exact():
    """E[total cost], its gradient, and the expected cost-to-go V[t, s] (by enumeration)."""
    sig = 1.0 / (1.0 + np.exp(-THETA))
    value, grad = 0.0, np.zeros(K)
    for acts in itertools.product((0, 1), repeat=T):
        s, p, total, score = 0, 1.0, 0.0, np.zeros(K)
        for a in acts:
            p *= sig[s] if a else 1.0 - sig[s]
            score[s] += a - sig[s]
            s = _move(s, a)
            total += _cost(s)
        value += p * total
        grad += p * total * score
    v = np.zeros((T + 1, K))  # V[t, s]: expected cost of steps t..T-1 from state s
    for t in range(T - 1, -1, -1):
        for s in range(K):
            up, down = _move(s, 1), _move(s, 0)
            v[t, s] = sig[s] * (_cost(up) + v[t + 1, up]) + (1 - sig[s]) * (
                _cost(down) + v[t + 1, down]
            )
    return value, grad, v


VALUE, GRAD, V = exact()


def chain(declare: bool, baseline: bool):
    table = jnp.asarray(V, jnp.float32)

    def f(key, theta):
        def step(carry, xs):
            s, total = carry
            k, t = xs
            site = je.score_function(baseline=table[t, s]) if baseline else None
            a = je.sample(k, Bernoulli(logits=theta[s]), estimator=site)
            s = jnp.clip(s + 2 * a.astype(jnp.int32) - 1, 0, K - 1)
            c = 0.5 * (s - GOAL).astype(jnp.float32) ** 2
            if declare:
                je.cost(c)
            return (s, total + c), None

        (_, total), _ = je.scan(step, (0, 0.0), (jax.random.split(key, T), jnp.arange(T)))
        return total

    return f


def test_reward_to_go_is_unbiased_and_reduces_variance():
    key = jax.random.key(0)
    theta = jnp.asarray(THETA, jnp.float32)
    n = 10_000
    stds = {}
    for name, declare, baseline in (
        ("plain", False, False),
        ("reward_to_go", True, False),
        ("reward_to_go+V", True, True),
    ):
        g = jax.jit(je.grad_samples(chain(declare, baseline), je.score_function(), num_samples=n))
        samples = np.asarray(g(key, theta), np.float64)
        assert_unbiased(samples, GRAD, se_max=0.3)
        stds[name] = samples.std(0, ddof=1)
    # per-coordinate variance: reward-to-go below the plain score function, the state
    # baseline below both (the measured ratios are recorded in the README)
    ratio_rtg = np.sum(stds["reward_to_go"] ** 2) / np.sum(stds["plain"] ** 2)
    ratio_v = np.sum(stds["reward_to_go+V"] ** 2) / np.sum(stds["plain"] ** 2)
    assert ratio_rtg < 0.8, ratio_rtg
    assert ratio_v < 0.5 * ratio_rtg, (ratio_v, ratio_rtg)


def test_value_unchanged_and_other_estimators_ignore_costs():
    key = jax.random.key(1)

    def walk(declare):
        def f(key, eta):
            def step(c, k):
                x = je.sample(k, Bernoulli(logits=eta))
                return c + (je.cost(x * c) if declare else x * c) + x, None

            return je.scan(step, 0.0, jax.random.split(key, 3))[0]

        return f

    v1, g1 = je.value_and_grad(walk(True), je.score_function(), num_samples=64)(key, 0.2)
    v0, _ = je.value_and_grad(walk(False), je.score_function(), num_samples=64)(key, 0.2)
    np.testing.assert_array_equal(v1, v0)
    assert jnp.isfinite(g1)
    for est in (je.stochastic_ad(), je.straight_through()):
        a = je.grad(walk(True), est, num_samples=16)(key, 0.2)
        b = je.grad(walk(False), est, num_samples=16)(key, 0.2)
        np.testing.assert_array_equal(a, b)
    # outside a transform je.cost is the identity
    assert float(je.cost(2.5)) == 2.5


def test_costs_in_branches_and_mixed_sites():
    """A cost inside je.cond and a pathwise site: unbiased against the closed form.

    x ~ Normal(mu, 1), b ~ Bernoulli(sigmoid(eta)); cost 1: x^2 (declared before b is
    drawn); then if b: cost 2 = 3 x, else cost 2 = 1. E = mu^2 + 1 + s (3 mu) + (1 - s).
    """

    def f(key, p):
        k1, k2 = jax.random.split(key)
        x = je.sample(k1, Normal(p["mu"], 1.0))
        c1 = je.cost(x**2)
        b = je.sample(k2, Bernoulli(logits=p["eta"]))
        c2 = je.cond(b > 0, lambda: je.cost(3.0 * x), lambda: je.cost(jnp.float32(1.0)))
        return c1 + c2

    mu, eta = 0.7, -0.4
    s = 1 / (1 + np.exp(-eta))
    exact = {"mu": 2 * mu + 3 * s, "eta": s * (1 - s) * (3 * mu - 1)}
    p = {"mu": jnp.float32(mu), "eta": jnp.float32(eta)}
    g = jax.jit(je.grad_samples(f, je.auto(), num_samples=40_000))(jax.random.key(2), p)
    for name in ("mu", "eta"):
        assert_unbiased(np.asarray(g[name]), exact[name], se_max=0.03)


def test_second_derivative_with_costs_is_unbiased():
    """d^2/deta^2 E[f] for f = c1 + c2, c1 = 2 b1 (before b2), c2 = b1 b2 + 3 b2."""

    def f(key, eta):
        k1, k2 = jax.random.split(key)
        b1 = je.sample(k1, Bernoulli(logits=eta))
        c1 = je.cost(2.0 * b1)
        b2 = je.sample(k2, Bernoulli(logits=-eta))
        return c1 + je.cost(b1 * b2 + 3.0 * b2)

    eta = 0.3
    s = jax.nn.sigmoid

    def expect(e):  # E = 2 s(e) + s(e) s(-e) + 3 s(-e)
        return 2 * s(e) + s(e) * s(-e) + 3 * s(-e)

    exact = float(jax.grad(jax.grad(expect))(eta))
    g = je.grad(f, je.score_function(), num_samples=1)
    d2 = jax.jit(jax.vmap(lambda k: jax.grad(lambda e: g(k, e))(eta)))(
        jax.random.split(jax.random.key(3), 40_000)
    )
    assert_unbiased(np.asarray(d2), exact, se_max=0.02)


@pytest.mark.parametrize("jit", [False, True])
def test_cost_errors(jit):
    wrap = jax.jit if jit else (lambda h: h)

    def vector_cost(key, eta):
        x = je.sample(key, Bernoulli(logits=eta))
        return jnp.sum(je.cost(jnp.stack([x, x])))

    with pytest.raises(TypeError, match=r"je\.cost: `value` must be a real floating scalar"):
        wrap(je.grad(vector_cost, je.score_function(), num_samples=2))(jax.random.key(0), 0.1)

    def in_lax_scan(key, eta):
        def body(c, k):
            x = je.sample(k, Normal(eta, 1.0))  # pathwise: records nothing
            return c + je.cost(x), None

        return jax.lax.scan(body, 0.0, jax.random.split(key, 3))[0]

    with pytest.raises(je.EstimatorError, match=r"je\.cost \(it records"):
        wrap(je.grad(in_lax_scan, je.auto(), num_samples=2))(jax.random.key(0), 0.1)
