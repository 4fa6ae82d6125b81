"""LoopKey.key(): a je.scan iteration key handed to code that takes a plain JAX key."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _stats import assert_unbiased

import jaxestim as je
from jaxestim import distributions as D

KEY = jax.random.key(3)
T = 4
THETA = 0.5


@jax.jit
def env_step(key, state):
    """A third-party jitted step that draws its own noise with jax.random."""
    return state + jax.random.normal(key)


def rollout(key, theta):
    # s_T = sum_t (x_t + e_t), x_t ~ N(theta, 1) a site, e_t ~ N(0, 1) drawn by env_step:
    # E[s_T^2] = T^2 theta^2 + 2T, d/dtheta = 2 T^2 theta
    def body(s, _, k):
        k_site, k_env = k.split(2)
        x = je.sample(k_site, D.Normal(theta, 1.0))
        plain = k_env.key()
        return env_step(plain, s + x), jax.random.key_data(plain)

    s, words = je.scan(body, 0.0, None, length=T, key=key)
    return s**2, words


def objective(key, theta):
    return rollout(key, theta)[0]


@pytest.mark.parametrize(
    ("estimator", "se_max"),
    [(je.pathwise(), 0.45), (je.score_function("leave_one_out"), 1.0)],
    ids=["pathwise", "score_function"],
)
def test_gradient_through_third_party_draws(estimator, se_max):
    g = je.grad_samples(objective, estimator, num_samples=4000)(KEY, THETA)
    assert_unbiased(g, 2 * T**2 * THETA, se_max=se_max)


def test_plain_key_distinct_per_iteration_and_deterministic():
    value, words = rollout(KEY, THETA)
    assert words.shape == (T, 2) and words.dtype == jnp.uint32
    assert len({tuple(w) for w in np.asarray(words).tolist()}) == T
    value_jit, words_jit = jax.jit(rollout)(KEY, THETA)
    np.testing.assert_array_equal(words, words_jit)
    np.testing.assert_allclose(value, value_jit, rtol=1e-6)  # same draws, XLA's rounding
    # the same key gives the same estimate eagerly, under jax.jit and for any chunk_size
    grad = lambda **kw: je.grad(objective, je.pathwise(), num_samples=8, **kw)
    g = grad()(KEY, THETA)
    np.testing.assert_allclose(jax.jit(grad())(KEY, THETA), g, rtol=1e-6)
    np.testing.assert_allclose(grad(chunk_size=4)(KEY, THETA), g, rtol=1e-6)
    # ... and different iterations of different samples get different keys
    per_sample = jax.vmap(lambda k: rollout(k, THETA)[1])(jax.random.split(KEY, 3))
    assert len({tuple(w) for w in np.asarray(per_sample).reshape(-1, 2).tolist()}) == 3 * T


def _raises(fn, match):
    with pytest.raises(je.EstimatorError, match=match):
        fn()
    with pytest.raises(je.EstimatorError, match=match):
        jax.jit(fn)()


def test_loop_key_itself_passed_to_jitted_code_raises():
    def bad(key, theta):
        def body(s, _, k):
            return env_step(k, s + theta), None

        return je.scan(body, 0.0, None, length=T, key=key)[0]

    _raises(lambda: bad(KEY, THETA), r"plain key k\.key\(\)")
    _raises(lambda: je.grad(bad, je.pathwise(), num_samples=2)(KEY, THETA), r"k\.key\(\)")


def test_key_and_site_on_the_same_loop_key_raises():
    def reuse(key, theta):
        def body(s, _, k):
            s = env_step(k.key(), s)
            return s + je.sample(k, D.Normal(theta, 1.0)), None

        return je.scan(body, 0.0, None, length=T, key=key)[0]

    _raises(lambda: je.grad(reuse, je.pathwise(), num_samples=2)(KEY, THETA), "same PRNG key")


def test_check_reports_parameter_dependent_third_party_draw():
    @jax.jit
    def coin(key, p):
        return jax.random.bernoulli(key, p).astype(jnp.float32)

    def prog(key, theta):
        def body(s, _, k):
            return s + coin(k.key(), jax.nn.sigmoid(theta)), None

        return je.scan(body, 0.0, None, length=T, key=key)[0]

    report = je.check(prog, KEY, THETA)
    assert [f.kind for f in report.findings] == ["jax_random"], str(report)
    assert "bernoulli" in report.findings[0].message
