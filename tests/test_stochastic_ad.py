"""The StochasticAD-style estimator: unbiasedness, variance, triples and errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _stats import assert_unbiased, mean_se, random_walk_exact
from scipy import special, stats

import jaxestim as je
from jaxestim import distributions as D

KEY = jax.random.key(3)
SAD = je.stochastic_ad()


def samples(f, est, theta, n, **kw):
    return np.asarray(jax.jit(je.grad_samples(f, est, num_samples=n, **kw))(KEY, theta))


def random_walk(key, p, steps=100):
    def step(n, xs):
        k, i = xs
        return n + je.sample(k, D.Bernoulli(probs=p * (1 - (n + i) / 200))), None

    keys = jax.random.split(key, steps)
    return je.scan(step, jnp.zeros_like(p), (keys, jnp.arange(1, steps + 1)))[0]


def test_bernoulli_derivative_one():
    f = lambda k, p: je.sample(k, D.Bernoulli(probs=p))
    assert_unbiased(samples(f, SAD, 0.5, 20_000), 1.0, 0.02)
    assert_unbiased(samples(f, SAD, 0.9, 20_000), 1.0, 0.05)


def test_two_bernoullis():
    def f(key, t):
        k1, k2 = jax.random.split(key)
        return 2.0 * je.sample(k1, D.Bernoulli(probs=3 * t)) + je.sample(k2, D.Bernoulli(probs=t))

    assert_unbiased(samples(f, SAD, 0.1, 20_000), 7.0, 0.05)


def test_random_walk_matches_dynamic_program():
    _, exact = random_walk_exact(0.5)
    assert_unbiased(samples(random_walk, SAD, 0.5, 10_000), exact, 0.3)


def test_poisson_square():
    f = lambda k, lam: je.sample(k, D.Poisson(lam)) ** 2
    assert_unbiased(samples(f, SAD, 3.0, 20_000), 7.0, 0.1)
    # decreasing direction: Poisson(c / theta) exercises the downward jumps
    g = lambda k, th: je.sample(k, D.Poisson(3.0 / th)) ** 2
    assert_unbiased(samples(g, SAD, 1.0, 20_000), -3.0 * 7.0, 0.3)


def test_binomial_nonlinear():
    n, p = 12, 0.35
    f = lambda k, q: jnp.sqrt(je.sample(k, D.Binomial(n, probs=q)) + 1.0)
    k = np.arange(n + 1)
    pmf = stats.binom.pmf(k, n, p)
    exact = np.sum(pmf * (k / p - (n - k) / (1 - p)) * np.sqrt(k + 1.0))
    assert_unbiased(samples(f, SAD, p, 20_000), exact, 0.01)


def test_geometric_nonlinear():
    p = 0.3
    f = lambda k, q: jnp.log1p(je.sample(k, D.Geometric(probs=q)))
    k = np.arange(400)
    pmf = stats.geom.pmf(k + 1, p)
    exact = np.sum(pmf * (1 / p - k / (1 - p)) * np.log1p(k))
    assert_unbiased(samples(f, SAD, p, 20_000), exact, 0.02)


@pytest.mark.parametrize("onehot", [False, True])
def test_categorical_nonlinear(onehot):
    table = jnp.array([0.5, -1.0, 2.0, 0.3])
    theta = jnp.array([0.1, 0.4, -0.3, 0.2])
    dist = D.OneHotCategorical if onehot else D.Categorical
    f = lambda k, lg: je.select(table, je.sample(k, dist(logits=lg))) ** 2
    pi = np.asarray(jax.nn.softmax(theta), np.float64)
    g = np.asarray(table, np.float64) ** 2
    assert_unbiased(samples(f, SAD, theta, 20_000), pi * (g - pi @ g), 0.02)


def test_continuous_feeding_discrete():
    # z ~ N(theta, 1), x ~ Bernoulli(sigmoid(z)), f = 3x + z^2:
    # d/dtheta E[f] = 3 E[sigmoid'(z)] + 2 theta, E by Gauss-Hermite quadrature.
    theta = 0.4

    def f(key, t):
        k1, k2 = jax.random.split(key)
        z = je.sample(k1, D.Normal(t, 1.0))
        return 3.0 * je.sample(k2, D.Bernoulli(logits=z)) + z**2

    x, w = np.polynomial.hermite_e.hermegauss(80)
    s = special.expit(theta + x)
    exact = 3.0 * np.sum(w * s * (1 - s)) / np.sqrt(2 * np.pi) + 2 * theta
    assert_unbiased(samples(f, SAD, theta, 20_000), exact, 0.03)


def test_random_directions_unbiased():
    def f(key, th):
        k1, k2 = jax.random.split(key)
        x = je.sample(k1, D.Bernoulli(probs=jax.nn.sigmoid(th)))
        z = je.sample(k2, D.Normal(th, 1.0))
        return jnp.sum(x * jnp.arange(1.0, 4.0)) + jnp.sum(z)

    th = jnp.array([0.2, -0.5, 1.0])
    s = np.asarray(jax.nn.sigmoid(th))
    exact = s * (1 - s) * np.arange(1.0, 4.0) + 1.0
    est = je.stochastic_ad(directions="random", num_directions=2)
    assert_unbiased(samples(f, est, th, 40_000), exact, 0.03)


def test_variance_against_score_function_and_finite_differences():
    n = 4000
    _, se_sad = mean_se(samples(random_walk, SAD, 0.5, n))
    _, se_sf = mean_se(samples(random_walk, je.score_function(), 0.5, n))
    _, se_fd = mean_se(samples(random_walk, je.finite_difference(0.01), 0.5, n))
    assert se_sad <= 0.1 * se_sf, (se_sad, se_sf)
    assert se_sad < se_fd, (se_sad, se_fd)


def test_stochastic_triple_prints_like_stochasticad_jl():
    f = lambda k, p: je.sample(k, D.Bernoulli(probs=p))
    t = je.stochastic_triple(f)
    reprs = {repr(t(jax.random.key(i), 0.5)) for i in range(20)}
    assert reprs == {"0 + 0ε + (1 with probability 2.0ε)", "1 + 0ε"}
    tr = t(jax.random.key(0), 0.5)
    assert float(tr.derivative_contribution()) in (0.0, 2.0)
    tri = je.stochastic_triple(lambda k, p: je.sample(k, D.Normal(p, 1.0)) * 2.0)(KEY, 0.5)
    assert float(tri.delta) == 2.0 and float(tri.weight) == 0.0
    with pytest.raises(TypeError, match="theta"):
        t(KEY, jnp.ones(2))


def test_scan_and_fori_loop_and_jit_agree():
    def with_fori(key, p):
        keys = jax.random.split(key, 100)

        def body(i, n):
            return n + je.sample(keys[i], D.Bernoulli(probs=p * (1 - (n + i + 1) / 200)))

        return je.fori_loop(0, 100, body, jnp.zeros_like(p))

    a = je.grad_samples(random_walk, SAD, num_samples=32)(KEY, 0.5)
    b = jax.jit(je.grad_samples(with_fori, SAD, num_samples=32))(KEY, 0.5)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    c = je.grad(random_walk, SAD, num_samples=32, chunk_size=5)(KEY, 0.5)
    np.testing.assert_allclose(c, np.mean(a), rtol=1e-5)


def test_errors():
    with pytest.raises(ValueError, match="directions"):
        je.stochastic_ad(directions="diagonal")
    with pytest.raises(ValueError, match="num_directions"):
        je.stochastic_ad(directions="random")
    f = lambda k, p: je.sample(k, D.Bernoulli(probs=p), estimator=je.score_function())
    with pytest.raises(je.EstimatorError, match="override"):
        je.grad(f, SAD)(KEY, 0.3)

    class Custom(D.Distribution):  # a discrete family without an inverse-CDF coupling
        is_discrete = True
        is_reparameterized = False
        batch_shape = ()
        mean = variance = jnp.zeros(())

        def __init__(self):
            pass

        def sample(self, key, sample_shape=()):
            return jnp.zeros(sample_shape)

        def log_prob(self, value):
            return jnp.zeros(jnp.shape(value))

    with pytest.raises(je.EstimatorError, match="Custom"):
        je.grad(lambda k, p: je.sample(k, Custom()) * p, SAD)(KEY, 0.3)
