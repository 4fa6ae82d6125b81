"""Each transform traces the user's program at most twice (compile time).

The program's Python body is counted while ``jax.jit(transform).trace(...)`` traces it,
for every transform, estimator and chunking (no chunks, chunks with and without a
remainder). Site-level estimators and finite differences trace it once; stochastic_ad
twice (its recording run and its replay run see different handlers).
"""

import jax
import jax.numpy as jnp
import pytest

import jaxestim as je
from jaxestim import distributions as D

CALLS = [0]


def continuous(key, theta):
    CALLS[0] += 1
    z = je.sample(key, D.Normal(theta[0], 1.0), (3,))
    return jnp.sum(jnp.sin(z)) * theta[1]


def mixed(key, theta):
    CALLS[0] += 1
    k1, k2 = jax.random.split(key)
    z = je.sample(k1, D.Normal(theta[0], 1.0), (3,))
    x = je.sample(k2, D.Bernoulli(logits=theta[1]))
    return jnp.sum(jnp.sin(z)) + 2.0 * x * theta[0]


def looped(key, theta):
    """A je.scan with a site whose support boundary is reachable (the boundary check)."""
    CALLS[0] += 1

    def step(c, k):
        x = je.sample(k, D.Bernoulli(probs=jnp.clip(theta[0] * c, 0.0, 1.0)))
        return c + x, None

    c, _ = je.scan(step, 1.0, jax.random.split(key, 3))
    return c * theta[1]


THETA = jnp.array([0.3, -0.2])

CASES = {
    "pathwise": (je.pathwise(), continuous, 1),
    "score": (je.score_function(), mixed, 1),
    "score_loo": (je.score_function("leave_one_out"), mixed, 1),
    "score_loo_loop": (je.score_function("leave_one_out"), looped, 1),
    "score_const": (je.score_function(baseline=0.5), mixed, 1),
    "gumbel_softmax": (je.gumbel_softmax(0.7), mixed, 1),
    "straight_through": (je.straight_through(), mixed, 1),
    "finite_difference": (je.finite_difference(), mixed, 1),
    "finite_difference_fwd": (je.finite_difference(scheme="forward"), mixed, 1),
    "stochastic_ad": (je.stochastic_ad(), mixed, 2),
    "stochastic_ad_reverse": (je.stochastic_ad(mode="reverse"), mixed, 2),
    "stochastic_ad_reverse_loop": (je.stochastic_ad(mode="reverse"), looped, 2),
    "auto": (je.auto(), mixed, 1),
    "auto_loop": (je.auto(), looped, 1),
}


def _traces(transform, est, fun, chunk_size, validate=False):
    t = transform(fun, est, num_samples=10, chunk_size=chunk_size, validate=validate)
    CALLS[0] = 0
    jax.jit(t).trace(jax.random.key(0), THETA)  # tracing only: no lowering
    return CALLS[0]


@pytest.mark.parametrize("name", list(CASES))
def test_program_traced_at_most_twice(name):
    est, fun, expected = CASES[name]
    counts = {
        (kind.__name__, chunk): _traces(kind, est, fun, chunk)
        for kind in (je.grad, je.value_and_grad, je.grad_samples)
        for chunk in (None, 4, 5)  # 10 samples: no chunks, a remainder chunk, exact chunks
    }
    assert all(c == expected for c in counts.values()), counts
    assert expected <= 2


def test_validate_and_stateful_baseline_traced_once():
    est = je.score_function("leave_one_out")
    for kind in (je.grad, je.grad_samples):
        assert _traces(kind, est, looped, 4, validate=True) == 1
    ma = je.score_function(baseline=je.baselines.MovingAverage(0.9))
    t = je.grad_samples(mixed, ma, num_samples=10, chunk_size=4)
    CALLS[0] = 0
    jax.jit(t).trace(jax.random.key(0), THETA, estimator_state=ma.init())
    assert CALLS[0] == 1


def _whiles(fn):
    """``while`` loops in the lowered StableHLO of ``fn(key, THETA)`` (not compiled)."""
    return jax.jit(fn).lower(jax.random.key(0), THETA).as_text().count("stablehlo.while")


def test_grad_samples_loo_compiles_the_program_loop_three_times():
    # Unchunked leave-one-out grad_samples takes the total from its own forward pass (a
    # psum across the samples) and its boundary check reuses that pass's pullback: the
    # je.scan loop appears as forward, backward, and the boundary check's backward (in a
    # lax.cond), as for je.grad; it used to add a forward pass for the total and a
    # forward and backward pass for the boundary check (10 loops here, not 6).
    est = je.score_function("leave_one_out")
    primal = _whiles(lambda k, t: jax.vmap(lambda kk: looped(kk, t))(jax.random.split(k, 10)))
    samples = _whiles(je.grad_samples(looped, est, num_samples=10))
    assert samples == _whiles(je.grad(looped, est, num_samples=10)) == primal + 2
