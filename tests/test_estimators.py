"""Statistical correctness of every estimator on the seed examples.

Each test compares per-sample estimates from ``je.grad_samples`` against an exact gradient
computed independently (closed form, enumeration, or dynamic programming) with
|mean - exact| < 5 SE and an asserted bound on the SE, using fixed keys.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _stats import assert_unbiased, mean_se, random_walk_exact
from scipy import special, stats

import jaxestim as je
from jaxestim import distributions as D

KEY = jax.random.key(0)


def samples(f, est, theta, n, **kw):
    return np.asarray(jax.jit(je.grad_samples(f, est, num_samples=n, **kw))(KEY, theta))


# ----------------------------------------------------------------------------- programs
def expo_sq(key, p):  # X ~ Exponential(scale p), f = X^2; d/dp E = 4p
    return je.sample(key, D.Exponential(rate=1.0 / p)) ** 2


def gauss_fixed(key, theta):  # z ~ N(1, 2^2), f = theta^2 (z + 4); gradient 10 theta
    return theta**2 * (je.sample(key, D.Normal(1.0, 2.0)) + 4.0)


def gauss_theta(key, theta):  # z ~ N(theta, 2^2), f = theta^2 (4 + z); 8 theta + 3 theta^2
    return theta**2 * (4.0 + je.sample(key, D.Normal(theta, 2.0)))


def two_bern(key, theta):  # 2 Bernoulli(3 theta) + Bernoulli(theta); gradient 7
    k1, k2 = jax.random.split(key)
    return 2.0 * je.sample(k1, D.Bernoulli(probs=3 * theta)) + je.sample(
        k2, D.Bernoulli(probs=theta)
    )


def random_walk(key, p, steps=100):
    def step(n, xs):
        k, i = xs
        return n + je.sample(k, D.Bernoulli(probs=p * (1 - (n + i) / 200))), None

    n, _ = je.scan(
        step, jnp.zeros_like(p), (jax.random.split(key, steps), jnp.arange(1, steps + 1))
    )
    return n


# ----------------------------------------------------------------------------- seed examples
@pytest.mark.parametrize(
    ("est", "se_max"),
    [
        (je.pathwise(), 1.0),
        (je.score_function(baseline="leave_one_out"), 2.5),
        (je.finite_difference(step=0.1), 1.0),
        (je.auto(), 1.0),
    ],
)
def test_exponential_square(est, se_max):
    assert_unbiased(samples(expo_sq, est, 10.0, 20_000), 40.0, se_max)


@pytest.mark.parametrize("est", [je.pathwise(), je.score_function(), je.auto()])
def test_gaussian_fixed_noise(est):
    assert_unbiased(samples(gauss_fixed, est, 2.0, 20_000), 20.0, 0.1)


@pytest.mark.parametrize(
    ("est", "se_max"),
    [(je.pathwise(), 0.2), (je.score_function(), 1.0), (je.score_function("leave_one_out"), 0.6)],
)
def test_gaussian_theta_dependent_noise(est, se_max):
    assert_unbiased(samples(gauss_theta, est, 2.0, 20_000), 28.0, se_max)


def test_sample_instead_of_rsample_pitfall_is_avoided():
    # Differentiating only the explicit theta^2 factor (a stop-gradient "sample") gives
    # 2 theta (4 + theta) = 24, not 28; every estimator must include the noise's dependence.
    def detached(key, theta):
        z = jax.lax.stop_gradient(je.sample(key, D.Normal(theta, 2.0)))
        return theta**2 * (4.0 + z)

    m, _ = mean_se(samples(detached, je.pathwise(), 2.0, 20_000))
    assert abs(m - 24.0) < 0.5
    m, _ = mean_se(samples(gauss_theta, je.pathwise(), 2.0, 20_000))
    assert abs(m - 28.0) < 0.5


@pytest.mark.parametrize(
    ("est", "se_max"),
    [
        (je.score_function(), 0.1),
        (je.score_function(baseline="leave_one_out"), 0.1),
        (je.finite_difference(step=0.01), 0.3),
        (je.straight_through(), 1e-3),
        (je.auto(), 0.1),
    ],
)
def test_two_bernoullis(est, se_max):
    assert_unbiased(samples(two_bern, est, 0.1, 20_000), 7.0, se_max)


def test_straight_through_exact_for_linear_one_hot():
    c = jnp.array([1.0, -2.0, 0.5, 3.0])
    theta = jnp.array([0.2, -0.3, 0.1, 0.4])

    def f(key, logits):
        return jnp.dot(je.sample(key, D.OneHotCategorical(logits=logits)), c)

    pi = jax.nn.softmax(theta)
    exact = pi * (c - jnp.dot(pi, c))
    g = samples(f, je.straight_through(), theta, 64)
    np.testing.assert_allclose(g, np.broadcast_to(exact, g.shape), rtol=1e-5, atol=1e-6)
    # a batch of one-hot categoricals (OneHotCategorical subclasses Categorical)
    f2 = lambda key, lg: jnp.sum(je.sample(key, D.OneHotCategorical(logits=lg)) * c)
    th2 = jnp.stack([theta, -theta])
    pi2 = jax.nn.softmax(th2)
    exact2 = pi2 * (c - (pi2 @ c)[:, None])
    np.testing.assert_allclose(
        samples(f2, je.straight_through(), th2, 8)[0], exact2, rtol=1e-5, atol=1e-6
    )
    # ... and on the Bernoulli example every per-sample estimate is exactly 7.
    np.testing.assert_allclose(samples(two_bern, je.straight_through(), 0.1, 64), 7.0, rtol=1e-5)


def test_random_walk_score_function_and_finite_differences():
    _, exact = random_walk_exact(0.5)
    assert abs(exact - 56.608) < 1e-3
    assert_unbiased(
        samples(random_walk, je.score_function("leave_one_out"), 0.5, 10_000), exact, 3.0
    )
    assert_unbiased(samples(random_walk, je.finite_difference(step=0.01), 0.5, 10_000), exact, 3.0)


# ----------------------------------------------------------------------------- implicit reparam
def test_gamma_implicit_reparameterization():
    a, b = 2.5, 1.5

    def f(key, th):
        x = je.sample(key, D.Gamma(th[0], th[1]))
        return x + jnp.log(x)

    exact = [1 / b + special.polygamma(1, a), -a / b**2 - 1 / b]
    assert_unbiased(samples(f, je.pathwise(), jnp.array([a, b]), 40_000), exact, 0.02)


def test_beta_implicit_reparameterization():
    a, b = 2.0, 3.0

    def f(key, th):
        x = je.sample(key, D.Beta(th[0], th[1]))
        return x + jnp.log(x)

    tg = special.polygamma(1, a + b)
    exact = [b / (a + b) ** 2 + special.polygamma(1, a) - tg, -a / (a + b) ** 2 - tg]
    assert_unbiased(samples(f, je.pathwise(), jnp.array([a, b]), 40_000), exact, 0.02)


def test_dirichlet_implicit_reparameterization():
    alpha = jnp.array([1.5, 2.0, 3.0])
    a0 = float(alpha.sum())

    def f(key, al):
        x = je.sample(key, D.Dirichlet(al))
        return x[0] + jnp.log(x[1])

    tg = special.polygamma(1, a0)
    e_x0 = np.array([1 / a0 - alpha[0] / a0**2, -alpha[0] / a0**2, -alpha[0] / a0**2])
    e_log1 = -tg + np.array([0.0, special.polygamma(1, float(alpha[1])), 0.0])
    assert_unbiased(samples(f, je.pathwise(), alpha, 40_000), e_x0 + e_log1, 0.02)


# ----------------------------------------------------------------------------- discrete families
def _enum_grad(pmf, dpmf, fvals):
    return float(np.sum(dpmf * fvals))


def test_poisson_score_function():
    lam = 3.0
    f = lambda key, rate: je.sample(key, D.Poisson(rate)) ** 2
    assert_unbiased(samples(f, je.score_function("leave_one_out"), lam, 20_000), 1 + 2 * lam, 0.2)


def test_binomial_score_function():
    n, p = 10, 0.3
    f = lambda key, q: jnp.sqrt(je.sample(key, D.Binomial(n, probs=q)) + 1.0)
    k = np.arange(n + 1)
    pmf = stats.binom.pmf(k, n, p)
    exact = _enum_grad(pmf, pmf * (k / p - (n - k) / (1 - p)), np.sqrt(k + 1.0))
    assert_unbiased(samples(f, je.score_function("leave_one_out"), p, 20_000), exact, 0.05)


def test_geometric_score_function():
    p = 0.3
    f = lambda key, q: jnp.log1p(je.sample(key, D.Geometric(probs=q)))
    k = np.arange(400)
    pmf = stats.geom.pmf(k + 1, p)  # scipy counts trials; ours counts failures
    exact = _enum_grad(pmf, pmf * (1 / p - k / (1 - p)), np.log1p(k))
    assert_unbiased(samples(f, je.score_function("leave_one_out"), p, 20_000), exact, 0.05)


def test_categorical_score_function_with_select():
    table = jnp.array([0.5, -1.0, 2.0, 0.3])
    theta = jnp.array([0.1, 0.4, -0.3, 0.2])
    f = lambda key, lg: je.select(table, je.sample(key, D.Categorical(logits=lg))) ** 2
    pi = np.asarray(jax.nn.softmax(theta), np.float64)
    g = np.asarray(table, np.float64) ** 2
    exact = pi * (g - pi @ g)
    assert_unbiased(samples(f, je.score_function("leave_one_out"), theta, 20_000), exact, 0.02)


# ----------------------------------------------------------------------------- relaxations
def _relaxed_bernoulli_grad(theta, tau, weights=(2.0, 1.0), mults=(3.0, 1.0)):
    """d/dtheta E[sum_j w_j sigmoid((logit(m_j theta) + logit(U)) / tau)] by quadrature."""
    u = (np.arange(400_000) + 0.5) / 400_000
    lu = np.log(u) - np.log1p(-u)

    def expect(t):
        tot = 0.0
        for w, m in zip(weights, mults, strict=True):
            p = m * t
            tot += w * np.mean(special.expit((np.log(p) - np.log1p(-p) + lu) / tau))
        return tot

    h = 1e-5
    return (expect(theta + h) - expect(theta - h)) / (2 * h)


@pytest.mark.parametrize("tau", [2.0, 0.5])
def test_gumbel_softmax_matches_its_relaxed_objective(tau):
    exact_relaxed = _relaxed_bernoulli_grad(0.1, tau)
    assert_unbiased(samples(two_bern, je.gumbel_softmax(tau), 0.1, 20_000), exact_relaxed, 0.15)


def test_gumbel_softmax_bias_shrinks_with_temperature():
    biases = []
    for tau in (2.0, 1.0, 0.5, 0.25):
        m, se = mean_se(samples(two_bern, je.gumbel_softmax(tau), 0.1, 40_000))
        biases.append((abs(m - 7.0), se))
    exact = [abs(_relaxed_bernoulli_grad(0.1, t) - 7.0) for t in (2.0, 1.0, 0.5, 0.25)]
    assert exact == sorted(exact, reverse=True)  # the relaxed target approaches 7 ...
    for (b1, _s1), (b2, _s2) in itertools.pairwise(biases):  # ... and so do the estimates
        assert b2 < b1, biases
    assert biases[-1][0] < 0.25 * biases[0][0], biases


def test_gumbel_softmax_hard_forward_is_exact_sample():
    def f(key, lg):
        x = je.sample(key, D.OneHotCategorical(logits=lg), (3,))
        return jnp.sum(x * jnp.arange(4.0)), x

    th = jnp.array([0.1, 0.4, -0.3, 0.2])
    (_, x), _ = je.value_and_grad(f, je.gumbel_softmax(0.5, hard=True), has_aux=True)(KEY, th)
    assert set(np.unique(np.asarray(x))) <= {0.0, 1.0}
    np.testing.assert_array_equal(np.asarray(x).sum(-1), 1.0)


# ----------------------------------------------------------------------------- variance facts
def test_finite_difference_crn_variance_far_lower():
    _, sd_crn = mean_se(samples(expo_sq, je.finite_difference(step=0.01), 10.0, 4000))
    _, sd_ind = mean_se(
        samples(expo_sq, je.finite_difference(step=0.01, common_random_numbers=False), 10.0, 4000)
    )
    assert sd_ind > 100 * sd_crn
    # On a discrete program the CRN variance grows like 1/h but independent keys like 1/h^2.
    _, sd_crn = mean_se(samples(two_bern, je.finite_difference(step=1e-3), 0.1, 20_000))
    _, sd_ind = mean_se(
        samples(two_bern, je.finite_difference(step=1e-3, common_random_numbers=False), 0.1, 20_000)
    )
    assert sd_ind > 5 * sd_crn


def test_leave_one_out_lowers_score_function_variance():
    sd_none = np.std(samples(two_bern, je.score_function(), 0.1, 20_000))
    sd_loo = np.std(samples(two_bern, je.score_function("leave_one_out"), 0.1, 20_000))
    assert sd_loo < 0.8 * sd_none, (sd_loo, sd_none)


# ----------------------------------------------------------------------------- per-site choice
def test_per_site_override_mixes_pathwise_and_score_function():
    def f(key, th):
        k1, k2 = jax.random.split(key)
        z = je.sample(k1, D.Normal(th[0], 1.0))
        x = je.sample(k2, D.Bernoulli(probs=th[1]), estimator=je.score_function())
        return z**2 + 3.0 * x

    th = jnp.array([0.7, 0.4])
    assert_unbiased(samples(f, je.pathwise(), th, 20_000), [1.4, 3.0], 0.08)


def test_spsa_directions_unbiased():
    def f(key, th):
        z = je.sample(key, D.Normal(th, 1.0))
        return jnp.sum(z**2) + jnp.sum(th[:2])

    th = jnp.array([0.5, -1.0, 2.0, 0.1])
    est = je.finite_difference(step=0.01, directions="spsa", num_directions=4)
    assert_unbiased(samples(f, est, th, 20_000), 2 * np.asarray(th) + [1, 1, 0, 0], 0.1)
