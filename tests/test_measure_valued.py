"""Measure-valued derivatives: unbiasedness against exact gradients, exact variances, errors.

Exact references are computed here independently of the estimator: closed forms (Normal,
Exponential, Gamma moments and characteristic functions) and enumeration (Bernoulli
outcomes; Poisson masses truncated far in the tail, NumPy float64).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _stats import assert_unbiased

import jaxestim as je
from jaxestim import distributions as D
from jaxestim._compare import documented_unbiased

KEY = jax.random.key(5)
MVD, MVD_U = je.measure_valued(), je.measure_valued(coupling=False)


def samples(f, est, theta, n, **kw):
    g = jax.jit(je.grad_samples(f, est, num_samples=n, **kw))(KEY, theta)
    return jax.tree_util.tree_map(np.asarray, g)


def quad(x, th):
    return (x - 3.0) ** 2


# ---------------------------------------------------------------------------------------
# Normal: loc and scale, closed forms and exact per-sample variances
# ---------------------------------------------------------------------------------------


def normal_prog(fx):
    def f(key, th):
        return fx(je.sample(key, D.Normal(th["mu"], th["sigma"])), th)

    return f


# x ~ N(1, 1), f = (x - 3)^2: grad (mu, sigma) = (2 (mu - 3), 2 sigma) = (-4, 2).
# Per-sample variances (sigma = 1, a = mu - 3 = -2, c_mu = 1/sqrt(2 pi)):
#   loc, coupled:   c^2 Var(4 a R) = 16 a^2 (2 - pi/2) / (2 pi) = 64/pi - 16
#   loc, uncoupled: c^2 Var(2a (R1 + R2) + R1^2 - R2^2) = (8 a^2 (2 - pi/2) + 8) / (2 pi)
#                   = 36/pi - 8   (R^2 ~ Exp(mean 2): Var 4)
#   scale, coupled: E[(2a M (1 - U) + M^2 (1 - U^2))^2] - 4 = 4a^2 3 / 3 + 15 * 8/15 - 4 = 20
#                   (E M^2 = 3, E M^4 = 15 for the double-sided Maxwell)
#   scale, uncoupled: E[(2a (M - Z) + M^2 - Z^2)^2] - 4 = 4a^2 (3 + 1) + (15 - 6 + 3) - 4 = 72
EXACT_VAR = {
    True: {"mu": 64 / math.pi - 16, "sigma": 20.0},
    False: {"mu": 36 / math.pi - 8, "sigma": 72.0},
}


@pytest.mark.parametrize("coupling", [True, False])
def test_normal_quadratic_mean_and_exact_variance(coupling):
    n = 40_000
    g = samples(normal_prog(quad), je.measure_valued(coupling), {"mu": 1.0, "sigma": 1.0}, n)
    assert_unbiased(g["mu"], -4.0, se_max=0.015)
    assert_unbiased(g["sigma"], 2.0, se_max=0.045)
    for k in ("mu", "sigma"):
        v, exact = float(np.var(g[k], ddof=1)), EXACT_VAR[coupling][k]
        # the variance's own standard error here is < 3 % of it (fourth moments)
        assert abs(v - exact) < 0.08 * exact, (k, v, exact)
    # coupling lowers the scale variance 3.6-fold; for the loc it is higher (4.37 vs 3.46)


def test_normal_cos():
    # E cos(k x) = cos(k mu) exp(-k^2 sigma^2 / 2)
    kk, mu, s = 1.5, 0.4, 0.8
    e = math.exp(-(kk**2) * s**2 / 2)
    exact = {"mu": -kk * math.sin(kk * mu) * e, "sigma": -(kk**2) * s * math.cos(kk * mu) * e}
    g = samples(normal_prog(lambda x, th: jnp.cos(kk * x)), MVD, {"mu": mu, "sigma": s}, 20_000)
    assert_unbiased(g["mu"], exact["mu"], se_max=0.01)
    assert_unbiased(g["sigma"], exact["sigma"], se_max=0.02)


def test_normal_vector_site_elementwise():
    # loc of shape (3,), f = sum_i w_i x_i^2: d/dmu_i = 2 w_i mu_i, d/dsigma = 2 sigma sum w
    w = jnp.array([1.0, -0.5, 2.0])

    def f(key, th):
        x = je.sample(key, D.Normal(th["mu"], th["sigma"]))
        return jnp.sum(w * x**2)

    th = {"mu": jnp.array([0.3, -1.0, 0.5]), "sigma": jnp.asarray(0.7)}
    g = samples(f, MVD, th, 10_000)
    assert_unbiased(g["mu"], 2 * np.asarray(w) * np.asarray(th["mu"]), se_max=0.03)
    assert_unbiased(g["sigma"], 2 * 0.7 * float(jnp.sum(w)), se_max=0.06)


# ---------------------------------------------------------------------------------------
# Exponential, Gamma rate, Poisson, Bernoulli
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("coupling", [True, False])
def test_exponential_rate(coupling):
    # rate = exp(t); E cos(x) = l^2 / (l^2 + 1), d/dl = 2 l / (l^2 + 1)^2, times dl/dt = l
    def f(key, t):
        return jnp.cos(je.sample(key, D.Exponential(jnp.exp(t))))

    t = 0.2
    lam = math.exp(t)
    exact = 2 * lam / (lam**2 + 1) ** 2 * lam
    assert_unbiased(samples(f, je.measure_valued(coupling), t, 20_000), exact, se_max=0.006)


def test_gamma_rate():
    # x ~ Gamma(2.5, b): E exp(-x) = (b / (b + 1))^a, d/db = a (b/(b+1))^(a-1) / (b+1)^2
    a, b = 2.5, 1.3

    def f(key, b):
        return jnp.exp(-je.sample(key, D.Gamma(a, b)))

    exact = a * (b / (b + 1)) ** (a - 1) / (b + 1) ** 2
    assert_unbiased(samples(f, MVD, b, 20_000), exact, se_max=0.003)


def poisson_exact(lam, fk, kmax=80):
    k = np.arange(kmax)
    lg = np.array([math.lgamma(i + 1.0) for i in k])
    pmf = np.exp(k * np.log(lam) - lam - lg)
    return float(np.sum(pmf * (k / lam - 1.0) * fk(k)))


@pytest.mark.parametrize("coupling", [True, False])
def test_poisson_rate(coupling):
    lam = 2.5

    def f(key, lam):
        x = je.sample(key, D.Poisson(lam))
        return 1.0 / (1.0 + x) + jnp.sqrt(x)

    exact = poisson_exact(lam, lambda k: 1.0 / (1.0 + k) + np.sqrt(k))
    assert_unbiased(samples(f, je.measure_valued(coupling), lam, 4_000), exact, se_max=0.01)


def test_bernoulli_logits_vector():
    # two Bernoulli elements with logits eta, f = (x . w - 0.7)^2, exact by enumeration
    w = np.array([1.0, -2.0])
    eta = np.array([0.3, -0.8])

    def f(key, eta):
        x = je.sample(key, D.Bernoulli(logits=eta))
        return (jnp.dot(x, jnp.asarray(w, jnp.float32)) - 0.7) ** 2

    p = 1 / (1 + np.exp(-eta))
    exact = np.zeros(2)
    for b0 in (0, 1):
        for b1 in (0, 1):
            b = np.array([b0, b1])
            prob = np.prod(np.where(b == 1, p, 1 - p))
            exact += prob * (b - p) * (b @ w - 0.7) ** 2  # d log p / d eta = b - p
    g = samples(f, MVD, jnp.asarray(eta, jnp.float32), 5_000)
    # the MVD term is deterministic given the other element: small variance
    assert_unbiased(g, exact, se_max=0.01)


# ---------------------------------------------------------------------------------------
# several sites, pytree params with direct dependence
# ---------------------------------------------------------------------------------------


def test_two_sites_dependent_parameters():
    # x1 ~ N(t, 1), x2 ~ N(t x1, 1), f = x2^2: E = t^2 (t^2 + 1) + 1, grad = 4 t^3 + 2 t
    def f(key, t):
        k1, k2 = jax.random.split(key)
        x1 = je.sample(k1, D.Normal(t, 1.0))
        return je.sample(k2, D.Normal(t * x1, 1.0)) ** 2

    t = 0.8
    assert_unbiased(samples(f, MVD, t, 20_000), 4 * t**3 + 2 * t, se_max=0.04)


def test_continuous_to_discrete_chain():
    # x1 ~ Exp(t), x2 ~ Bernoulli(exp(-x1)), f = x2 + x1: E = t / (t + 1) + 1 / t,
    # grad = 1 / (t + 1)^2 - 1 / t^2
    def f(key, t):
        k1, k2 = jax.random.split(key)
        x1 = je.sample(k1, D.Exponential(t))
        return je.sample(k2, D.Bernoulli(probs=jnp.exp(-x1))) + x1

    t = 2.0
    assert_unbiased(samples(f, MVD, t, 10_000), 1 / (t + 1) ** 2 - 1 / t**2, se_max=0.01)


def test_gamma_concentration_from_sample_is_fine():
    # concentration depends on theta only through x1's law: x1 ~ N(t, 1),
    # x2 ~ Gamma(1 + x1^2, 1): E x2 = 2 + t^2, grad = 2 t
    def f(key, t):
        k1, k2 = jax.random.split(key)
        x1 = je.sample(k1, D.Normal(t, 1.0))
        return je.sample(k2, D.Gamma(1.0 + x1**2, 1.0))

    assert_unbiased(samples(f, MVD, 0.6, 20_000), 1.2, se_max=0.03)


def dict_prog(key, p):
    # x ~ N(v, 0.5^2), f = w x^2 + w v: E = w (v^2 + 1/4) + w v
    x = je.sample(key, D.Normal(p["v"], 0.5))
    return p["w"] * x**2 + p["w"] * p["v"]


def test_dict_params_direct_dependence_jit_chunks():
    p = {"w": 1.5, "v": -0.4}
    exact = {"w": 0.16 + 0.25 - 0.4, "v": 2 * 1.5 * -0.4 + 1.5}
    g = samples(dict_prog, MVD, p, 20_000)
    assert_unbiased(g["w"], exact["w"], se_max=0.01)
    assert_unbiased(g["v"], exact["v"], se_max=0.02)
    # the mean: eager == jit == chunked, up to summation order
    est = je.grad(dict_prog, MVD, num_samples=8)
    eager = est(KEY, p)
    jitted = jax.jit(est)(KEY, p)
    chunked = jax.jit(je.grad(dict_prog, MVD, num_samples=8, chunk_size=2))(KEY, p)
    for k in p:
        np.testing.assert_allclose(eager[k], jitted[k], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(eager[k], chunked[k], rtol=1e-5, atol=1e-6)
    value, _ = jax.jit(je.value_and_grad(dict_prog, MVD, num_samples=8))(KEY, p)
    assert np.isfinite(value)


def test_constant_site_and_sites_without_parameters_dependence():
    # a site whose parameters do not depend on theta contributes no replay and no term
    def f(key, t):
        k1, k2 = jax.random.split(key)
        x = je.sample(k1, D.Normal(0.0, 1.0))
        y = je.sample(k2, D.Bernoulli(probs=t))
        return x * y + t * x

    # E = t E[x] E[y] + t E[x] = 0, grad 0 in expectation; pathwise part t x has mean 0
    g = samples(f, MVD, 0.3, 5_000)
    assert_unbiased(g, 0.0, se_max=0.03)


# ---------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------


def beta_prog(key, t):
    return je.sample(key, D.Beta(t, 2.0))


def cat_prog(key, t):
    return je.sample(key, D.Categorical(logits=jnp.stack([t, -t]))).astype(jnp.float32)


def gamma_conc_prog(key, t):
    return je.sample(key, D.Gamma(1.0 + t**2, 2.0))


def loop_prog(key, t):
    def body(c, k):
        return c + je.sample(k, D.Normal(t, 1.0)), None

    return je.scan(body, 0.0, jax.random.split(key, 3))[0]


def cond_prog(key, t):
    return je.cond(t > 0, lambda: je.sample(key, D.Normal(t, 1.0)), lambda: t)


def while_prog(key, t):
    # an unbounded je.while_loop runs as jax.lax.while_loop: the site is caught there too
    def body(c):
        i, k, s = c
        k, k1 = jax.random.split(k)
        return i + 1, k, s + je.sample(k1, D.Normal(t, 1.0))

    return je.while_loop(lambda c: c[0] < 3, body, (0, key, 0.0))[2]


def override_prog(key, t):
    return je.sample(key, D.Normal(t, 1.0), estimator=je.pathwise())


def lax_vmap_prog(key, t):
    keys = jax.random.split(key, 2)
    return jnp.sum(jax.vmap(lambda k: je.sample(k, D.Normal(t, 1.0)))(keys))


@pytest.mark.parametrize(
    "prog, match",
    [
        (beta_prog, "Beta.*je.pathwise"),
        (cat_prog, "Categorical.*je.score_function"),
        (gamma_conc_prog, "concentration.*je.pathwise"),
        (loop_prog, "je.scan.*je.pathwise"),
        (cond_prog, "je.cond.*je.pathwise"),
        (while_prog, "je.while_loop.*je.pathwise"),
        (lax_vmap_prog, "jax.vmap.*je.pathwise"),
        (override_prog, "whole-program estimator"),
    ],
)
@pytest.mark.parametrize("jit", [False, True])
def test_errors(prog, match, jit):
    g = je.grad(prog, MVD, num_samples=4)
    g = jax.jit(g) if jit else g
    with pytest.raises(je.EstimatorError, match=match):
        g(KEY, 0.5)


def test_loop_without_sites_is_fine():
    def f(key, t):
        x = je.sample(key, D.Normal(t, 1.0))
        y = je.fori_loop(0, 3, lambda i, c: c * x, 1.0)  # x^3: d/dt E = 3 (t^2 + 1)
        # an unbounded while loop without sites (adds 0) and a branch without sites
        y = y + je.while_loop(lambda c: c < 2.0, lambda c: c + 1.0, 0.0) - 2.0
        return je.cond(t > 0, lambda: y, lambda: -y)

    assert_unbiased(samples(f, MVD, 0.5, 20_000), 3 * 1.25, se_max=0.05)


def test_mask_and_sample_shape():
    # two draws of N(t, 1) (sample_shape (2,)), the second masked out: it contributes no
    # term, so the estimate is that of E[x_0^2] alone: 2 t
    def f(key, t):
        x = je.sample(key, D.Normal(t, 1.0), (2,), mask=jnp.array([True, False]))
        return jnp.sum(x**2)

    assert_unbiased(samples(f, MVD, 0.7, 10_000), 1.4, se_max=0.03)


def test_higher_order_raises_boundary_and_documented_unbiased():
    f = lambda k, t: (je.sample(k, D.Bernoulli(probs=t)) - 0.25) ** 2
    g = je.grad(f, MVD, num_samples=8)
    with pytest.raises(je.EstimatorError, match="cannot be differentiated again"):
        jax.grad(lambda t: g(KEY, t))(0.3)
    # probs on the boundary 0: the weak derivative is still exact, f(1) - f(0), in every
    # sample (x+ = 1, x- = 0 are deterministic)
    np.testing.assert_allclose(g(KEY, 0.0), 0.75**2 - 0.25**2, rtol=1e-6)
    assert documented_unbiased(MVD)[0]
