"""Reverse-mode stochastic_ad and the online (reservoir) forward mode.

Every estimate is checked against an exact gradient computed independently of jaxestim's
estimators (closed forms, enumeration with ``jax.grad`` of the exact expectation, dynamic
programming), with |mean - exact| < 5 SE and a bound on the SE.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _stats import assert_unbiased, random_walk_exact
from scipy import stats

import jaxestim as je
from jaxestim import distributions as D

KEY = jax.random.key(11)
REV = je.stochastic_ad(mode="reverse")
REV_DOWN = je.stochastic_ad(mode="reverse", coupling="down")
BOTH = pytest.mark.parametrize("est", [REV, REV_DOWN], ids=["up", "down"])


def samples(f, est, theta, n, **kw):
    return np.asarray(jax.jit(je.grad_samples(f, est, num_samples=n, **kw))(KEY, theta))


@BOTH
def test_bernoulli(est):
    f = lambda k, p: 3.0 * je.sample(k, D.Bernoulli(probs=p))
    for p in (0.2, 0.5, 0.8):
        assert_unbiased(samples(f, est, p, 20_000), 3.0, 0.1)


@BOTH
def test_binomial_nonlinear(est):
    n, p = 12, 0.35
    f = lambda k, q: jnp.sqrt(je.sample(k, D.Binomial(n, probs=q)) + 1.0)
    k = np.arange(n + 1)
    pmf = stats.binom.pmf(k, n, p)
    exact = np.sum(pmf * (k / p - (n - k) / (1 - p)) * np.sqrt(k + 1.0))
    assert_unbiased(samples(f, est, p, 20_000), exact, 0.03)


@BOTH
def test_geometric_nonlinear(est):
    p = 0.3
    f = lambda k, q: jnp.log1p(je.sample(k, D.Geometric(probs=q)))
    k = np.arange(400)
    pmf = stats.geom.pmf(k + 1, p)
    exact = np.sum(pmf * (1 / p - k / (1 - p)) * np.log1p(k))
    assert_unbiased(samples(f, est, p, 20_000), exact, 0.05)


@BOTH
def test_poisson_square_decreasing_rate(est):
    g = lambda k, th: je.sample(k, D.Poisson(3.0 / th)) ** 2
    assert_unbiased(samples(g, est, 1.0, 20_000), -3.0 * 7.0, 0.4)


@BOTH
@pytest.mark.parametrize("onehot", [False, True], ids=["index", "onehot"])
def test_categorical_with_a_zero_mass_category(est, onehot):
    # probs (from a softmax, plus a fixed zero-mass category in the middle)
    table = jnp.array([0.5, -1.0, 7.0, 2.0, 0.3])
    theta = jnp.array([0.1, 0.4, -0.3, 0.2])

    def probs(t):
        pi = jax.nn.softmax(t)
        return jnp.concatenate([pi[:2], jnp.zeros(1), pi[2:]])

    dist = D.OneHotCategorical if onehot else D.Categorical
    f = lambda k, t: je.select(table, je.sample(k, dist(probs=probs(t)))) ** 2
    exact = jax.grad(lambda t: jnp.sum(probs(t) * table**2))(theta)
    assert_unbiased(samples(f, est, theta, 20_000), np.asarray(exact), 0.05)


def test_random_walk_matches_dynamic_program():
    def walk(key, p):
        def step(n, xs):
            k, i = xs
            return n + je.sample(k, D.Bernoulli(probs=p * (1 - (n + i) / 200))), None

        keys = jax.random.split(key, 100)
        return je.scan(step, jnp.zeros_like(p), (keys, jnp.arange(1, 101)))[0]

    _, exact = random_walk_exact(0.5)
    assert_unbiased(samples(walk, REV, 0.5, 10_000), exact, 1.0)


def test_continuous_and_discrete_sites_with_pytree_params():
    # z ~ N(mu, 1); x_i ~ Bernoulli(sigmoid(w_i z + b_i)), i = 1..3; f = (sum c_i x_i)^2 + z^2
    # exact: enumerate the 2^3 outcomes, Gauss-Hermite quadrature over z, jax.grad in f64
    c = np.array([1.0, -2.0, 0.5])
    params = {
        "mu": jnp.asarray(0.3),
        "w": jnp.array([0.5, -1.0, 2.0]),
        "b": jnp.array([0.1, 0.2, -0.4]),
    }

    def f(key, p):
        k1, k2 = jax.random.split(key)
        z = je.sample(k1, D.Normal(p["mu"], 1.0))
        x = je.sample(k2, D.Bernoulli(logits=p["w"] * z + p["b"]))
        return jnp.sum(jnp.asarray(c, jnp.float32) * x) ** 2 + z**2

    nodes, weights = np.polynomial.hermite_e.hermegauss(60)
    outcomes = np.array(list(itertools.product([0.0, 1.0], repeat=3)))
    values = (outcomes @ c) ** 2

    with jax.enable_x64(True):

        def expectation(p):
            z = p["mu"] + jnp.asarray(nodes)
            s = jax.nn.sigmoid(p["w"][None] * z[:, None] + p["b"][None])  # (Q, 3)
            o = jnp.asarray(outcomes)
            prob = jnp.prod(jnp.where(o[None] > 0, s[:, None], 1 - s[:, None]), -1)  # (Q, 8)
            inner = prob @ jnp.asarray(values) + z**2
            return jnp.sum(jnp.asarray(weights) * inner) / jnp.sqrt(2 * jnp.pi)

        p64 = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), params)
        exact = jax.tree_util.tree_map(np.asarray, jax.grad(expectation)(p64))
    g = jax.jit(je.grad_samples(f, REV, num_samples=20_000))(KEY, params)
    assert_unbiased(np.asarray(g["mu"]), exact["mu"], 0.05)
    assert_unbiased(np.asarray(g["w"]), exact["w"], 0.05)
    assert_unbiased(np.asarray(g["b"]), exact["b"], 0.05)


def test_branch_taken_depends_on_a_jump():
    # x ~ Bernoulli(t); if x: y ~ Poisson(3t) and f = y, else f = Bernoulli(1 - t) * 2
    def f(key, t):
        k1, k2 = jax.random.split(key)
        x = je.sample(k1, D.Bernoulli(probs=t))
        return je.cond(
            x > 0,
            lambda: je.sample(k2, D.Poisson(3.0 * t)),
            lambda: 2.0 * je.sample(k2, D.Bernoulli(probs=1.0 - t)),
        )

    t = 0.4
    # E f = t * 3t + (1 - t) * 2 (1 - t)
    exact = 6 * t - 4 * (1 - t)
    assert_unbiased(samples(f, REV, t, 20_000), exact, 0.1)


def test_masked_draws_do_not_jump():
    # the masked-out element would change f a lot if it jumped; it must contribute nothing
    def f(key, p):
        x = je.sample(key, D.Bernoulli(probs=jnp.full(2, p)), mask=jnp.array([True, False]))
        return x[0] + 100.0 * x[1] * 0.0

    assert_unbiased(samples(f, REV, 0.3, 5_000), 1.0, 0.05)


def test_same_key_same_estimate_for_any_chunk_size():
    f = lambda k, p: jnp.sum((je.sample(k, D.Bernoulli(probs=p)) + p) ** 2)
    p = jnp.array([0.2, 0.7])
    a = jax.jit(je.grad(f, REV, num_samples=64))(KEY, p)
    b = jax.jit(je.grad(f, REV, num_samples=64, chunk_size=24))(KEY, p)
    np.testing.assert_allclose(a, b, rtol=1e-5)
    # je.grad sums the batch in one reverse pass; grad_samples keeps per-sample estimates
    c = jax.jit(je.grad_samples(f, REV, num_samples=64))(KEY, p)
    np.testing.assert_allclose(a, np.mean(c, 0), rtol=1e-5)


def test_boundaries():
    f = lambda k, p: je.sample(k, D.Bernoulli(probs=p))
    # p = theta at 0: the derivative is one-sided (NaN, as for the score function)
    assert np.isnan(je.grad(f, REV, num_samples=16)(KEY, 0.0))
    assert np.isnan(je.grad(f, REV, num_samples=16)(KEY, 1.0))
    # a boundary parameter that does not depend on theta (an extinct epidemic) is fine
    g = lambda k, b: je.sample(k, D.Binomial(100.0, probs=1.0 - jnp.exp(-b * 0.0)))
    assert float(je.grad(g, REV, num_samples=16)(KEY, 0.7)) == 0.0
    # a Poisson rate at 0 whose rate depends on theta: NaN
    h = lambda k, lam: je.sample(k, D.Poisson(lam))
    assert np.isnan(je.grad(h, REV, num_samples=16)(KEY, 0.0))


def test_sir_matches_dynamic_programming():
    from test_realistic import PARAMS, sir, sir_exact

    _, exact = sir_exact(PARAMS["beta"], PARAMS["gamma"])
    params = {k: jnp.asarray(v) for k, v in PARAMS.items()}
    g = jax.jit(je.grad_samples(sir, REV, num_samples=8000))(jax.random.key(5), params)
    assert_unbiased(np.asarray(g["beta"]), exact[0], 0.2)
    assert_unbiased(np.asarray(g["gamma"]), exact[1], 0.6)


def test_forward_mode_memory_does_not_grow_with_the_number_of_draws():
    def walk(steps):
        def prog(key, p):
            def step(carry, _):  # the key travels in the carry: the program's own memory is flat
                n, k = carry
                k, sub = jax.random.split(k)
                return (n + jnp.sum(je.sample(sub, D.Bernoulli(probs=jnp.full(50, p)))), k), None

            return je.scan(step, (jnp.zeros_like(p), key), None, length=steps)[0][0]

        return prog

    def temp(steps):
        fn = jax.jit(je.grad(walk(steps), je.stochastic_ad(), num_samples=100))
        mem = fn.lower(KEY, 0.5).compile().memory_analysis()
        return mem.temp_size_in_bytes

    small, large = temp(100), temp(3000)
    assert large <= 1.3 * small, (small, large)


def test_stochastic_triple_on_pytrees_along_a_direction():
    # f = sum(x) with x_i ~ Bernoulli(p_i): the derivative along v is sum(v)
    f = lambda k, p: jnp.sum(je.sample(k, D.Bernoulli(probs=p["a"]))) + p["b"] ** 2
    theta = {"a": jnp.array([0.2, 0.6]), "b": jnp.asarray(1.5)}
    v = {"a": jnp.array([1.0, -2.0]), "b": jnp.asarray(0.5)}
    t = je.stochastic_triple(f)
    keys = jax.random.split(KEY, 20_000)
    d = jax.jit(jax.vmap(lambda k: t(k, theta, direction=v).derivative_contribution()))(keys)
    assert_unbiased(np.asarray(d), 1.0 - 2.0 + 2 * 1.5 * 0.5, 0.05)
    with pytest.raises(TypeError, match="direction"):
        t(KEY, theta)
    with pytest.raises(ValueError, match="direction"):
        t(KEY, theta, direction={"a": jnp.ones(3), "b": jnp.asarray(0.0)})


def test_errors():
    with pytest.raises(ValueError, match="mode"):
        je.stochastic_ad(mode="sideways")
    with pytest.raises(ValueError, match="coupling"):
        je.stochastic_ad(mode="reverse", coupling="left")
    with pytest.raises(ValueError, match="directions"):
        je.stochastic_ad(directions="random", num_directions=2, mode="reverse")
    with pytest.raises(ValueError, match="coupling"):
        je.stochastic_ad(coupling="down")
    f = lambda k, p: jax.lax.cond(p > 0, lambda: je.sample(k, D.Bernoulli(probs=p)), lambda: p)
    with pytest.raises(je.EstimatorError, match=r"je\.cond|control flow"):
        je.grad(f, REV)(KEY, 0.3)
    with pytest.raises(je.EstimatorError, match=r"je\.cond|control flow"):
        jax.jit(je.grad(f, REV))(KEY, 0.3)


def test_mlp_policy_trained_in_a_jitted_optax_loop():
    # A contextual bandit: an MLP (dict-of-arrays params, P = 166) maps each of 6 contexts to
    # the logits of a Categorical over 4 actions; reward r[x, a]. Exact gradient of the
    # expected reward by enumeration over actions (jax.grad of sum_a pi_a r_a).
    import optax

    rng = np.random.default_rng(0)
    ctx = jnp.asarray(rng.normal(size=(6, 3)), jnp.float32)
    reward = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
    init = {
        "w1": jnp.asarray(0.5 * rng.normal(size=(3, 16)), jnp.float32),
        "b1": jnp.zeros(16),
        "w2": jnp.asarray(0.5 * rng.normal(size=(16, 4)), jnp.float32),
        "b2": jnp.zeros(4),
    }

    def logits(p):
        return jnp.tanh(ctx @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]

    def episode(key, p):
        a = je.sample(key, D.Categorical(logits=logits(p)))  # one action per context
        return -jnp.sum(jnp.take_along_axis(reward, a[:, None].astype(jnp.int32), 1))

    def exact_loss(p):
        return -jnp.sum(jax.nn.softmax(logits(p)) * reward)

    exact = jax.grad(exact_loss)(init)
    g = jax.jit(je.grad_samples(episode, REV, num_samples=20_000))(KEY, init)
    for name in init:
        assert_unbiased(np.asarray(g[name]), np.asarray(exact[name]), 0.05)

    opt = optax.adam(0.05)
    grad_fn = je.grad(episode, REV, num_samples=32)

    @jax.jit
    def step(p, state, key):
        updates, state = opt.update(grad_fn(key, p), state, p)
        return optax.apply_updates(p, updates), state

    p, state = init, opt.init(init)
    for k in jax.random.split(jax.random.key(1), 60):
        p, state = step(p, state, k)
    best = -float(jnp.sum(jnp.max(reward, 1)))
    before, after = float(exact_loss(init)), float(exact_loss(p))
    assert after < before - 0.5 * (before - best), (before, after, best)


def test_bulk_loop_keys_and_checkpointing():
    # the walk with je.scan(..., key=) (bulk randomness) and checkpoint_every (bounded
    # memory of the reverse pass): same draws with and without checkpointing, unbiased
    def walk(every):
        def prog(key, p):
            def step(n, i, k):
                return n + je.sample(k, D.Bernoulli(probs=p * (1 - (n + i) / 200))), None

            xs = jnp.arange(1, 101)
            return je.scan(step, jnp.zeros_like(p), xs, key=key, checkpoint_every=every)[0]

        return prog

    _, exact = random_walk_exact(0.5)
    a = samples(walk(None), REV, 0.5, 4000)
    b = samples(walk(10), REV, 0.5, 4000)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
    assert_unbiased(a, exact, 1.0)
