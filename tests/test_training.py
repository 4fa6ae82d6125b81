"""Jitted optax training loops reach stated optima with each estimator family."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxestim as je
from jaxestim import distributions as D


def _train(loss_grad, params, steps, lr, state=None):
    opt = optax.adam(lr)
    opt_state = opt.init(params)

    @jax.jit
    def step(carry, key):
        params, opt_state, est_state = carry
        if est_state is None:
            g = loss_grad(key, params)
        else:
            g, est_state = loss_grad(key, params, estimator_state=est_state)
        updates, opt_state = opt.update(g, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, est_state), None

    keys = jax.random.split(jax.random.key(42), steps)
    (params, _, state), _ = jax.lax.scan(step, (params, opt_state, state), keys)
    return params, state


def test_pathwise_gaussian_reaches_optimum():
    # E[(z - 3)^2] - log sigma with z ~ N(mu, sigma): optimum mu = 3, sigma = 1/sqrt(2).
    def f(key, p):
        sigma = jnp.exp(p["log_sigma"])
        return (je.sample(key, D.Normal(p["mu"], sigma)) - 3.0) ** 2 - jnp.log(sigma)

    p, _ = _train(
        je.grad(f, je.pathwise(), num_samples=32), {"mu": 0.0, "log_sigma": 0.0}, 1500, 0.02
    )
    assert abs(float(p["mu"]) - 3.0) < 0.05
    assert abs(float(jnp.exp(p["log_sigma"])) - 2**-0.5) < 0.05


def test_score_function_moving_average_poisson_reaches_optimum():
    # E[(X - 4)^2] with X ~ Poisson(exp(theta)) = lam + (lam - 4)^2: optimum lam = 3.5.
    est = je.score_function(baseline=je.baselines.MovingAverage(0.9))
    f = lambda key, th: (je.sample(key, D.Poisson(jnp.exp(th))) - 4.0) ** 2
    th, state = _train(je.grad(f, est, num_samples=32), jnp.array(0.0), 2000, 0.01, est.init())
    assert abs(float(jnp.exp(th)) - 3.5) < 0.15
    assert int(state.count) == 2000


def test_gumbel_softmax_categorical_reaches_optimum():
    # E[<x, c>] over a one-hot categorical: optimum puts all mass on argmin c (index 1).
    c = jnp.array([3.0, 1.0, 2.0, 4.0])
    f = lambda key, lg: jnp.dot(je.sample(key, D.OneHotCategorical(logits=lg)), c)
    lg, _ = _train(je.grad(f, je.gumbel_softmax(0.5), num_samples=32), jnp.zeros(4), 500, 0.05)
    pi = np.asarray(jax.nn.softmax(lg))
    assert pi[1] > 0.95 and float(pi @ np.asarray(c)) < 1.1
