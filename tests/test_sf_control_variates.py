"""Score-function control variates: the per-coordinate optimal baseline.

Exact references are closed forms (Normal programs) or exact enumeration in NumPy float64
(Bernoulli / Categorical programs); statistical checks are |mean - exact| < 5 SE with a
bound on the SE (tests/_stats.py), fixed keys.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _stats import assert_unbiased

import jaxestim as je
from jaxestim import distributions as D

KEY = jax.random.key(3)
OPT = je.score_function("optimal")


def sigmoid(t):
    return 1.0 / (1.0 + np.exp(-t))


# --------------------------------------------------------------------------- programs
def normal_prog(key, p):
    """x ~ N(mu, sigma), f = (x - 3)^2 + mu x: E = (mu - 3)^2 + sigma^2 + mu^2,
    dE/dmu = 2 (mu - 3) + 2 mu, dE/dsigma = 2 sigma (direct term mu x: pathwise)."""
    x = je.sample(key, D.Normal(p["mu"], p["sigma"]))
    return (x - 3.0) ** 2 + p["mu"] * x


def normal_exact(mu, sigma):
    return {"mu": 2 * (mu - 3) + 2 * mu, "sigma": 2 * sigma}


NP = {"mu": jnp.array(1.0), "sigma": jnp.array(1.0)}

W = np.array([1.0, -2.0, 0.5])


def discrete_prog(key, p):
    """x ~ Bernoulli(sigmoid(a)), y ~ Categorical(softmax(l)) (3 classes),
    f = (x + W[y] - 0.3)^2 + a y."""
    k1, k2 = jax.random.split(key)
    x = je.sample(k1, D.Bernoulli(logits=p["a"]))
    y = je.sample(k2, D.Categorical(logits=p["l"]))
    return (x + jnp.asarray(W)[y] - 0.3) ** 2 + p["a"] * y


DP = {"a": jnp.array(0.4), "l": jnp.array([0.2, -0.5, 0.1])}


def discrete_exact(a, lg):
    """Gradient of the exact expectation (enumeration, NumPy float64, central differences
    of the closed-form sum with h = 1e-6 on float64: error ~1e-9)."""

    def expect(a, lg):
        px = sigmoid(a)
        py = np.exp(lg - lg.max())
        py = py / py.sum()
        tot = 0.0
        for x, y in itertools.product((0, 1), range(3)):
            pr = (px if x else 1 - px) * py[y]
            tot += pr * ((x + W[y] - 0.3) ** 2 + a * y)
        return tot

    h = 1e-6
    ga = (expect(a + h, lg) - expect(a - h, lg)) / (2 * h)
    gl = np.array([(expect(a, lg + h * e) - expect(a, lg - h * e)) / (2 * h) for e in np.eye(3)])
    return {"a": ga, "l": gl}


# --------------------------------------------------------------------------- unbiasedness
def test_optimal_normal_unbiased_and_variance():
    """x ~ N(1, 1), f = (x - 3)^2: gradient (-4, 2). b*_mu = E[f eps^2] = 7,
    b*_sigma = E[f (eps^2 - 1)^2] / 2 = 9, per-sample variance at b*: 38 (mu), 184 (sigma)
    (moments of eps ~ N(0, 1)); plain SF: 87 / 346. The leave-one-out estimate of b* adds
    O(1/N)."""

    def f(key, p):
        return (je.sample(key, D.Normal(p["mu"], p["sigma"])) - 3.0) ** 2

    gs = je.grad_samples(f, OPT, num_samples=20000)(KEY, NP)
    assert_unbiased(gs["mu"], -4.0, se_max=0.05)
    assert_unbiased(gs["sigma"], 2.0, se_max=0.1)
    np.testing.assert_allclose(np.var(gs["mu"]), 38.0, rtol=0.1)
    np.testing.assert_allclose(np.var(gs["sigma"]), 184.0, rtol=0.15)


def test_optimal_discrete_unbiased():
    n = 4000
    gs = je.grad_samples(discrete_prog, OPT, num_samples=n)(KEY, DP)
    ex = discrete_exact(0.4, np.array([0.2, -0.5, 0.1]))
    assert_unbiased(gs["a"], ex["a"], se_max=0.03)
    assert_unbiased(gs["l"], ex["l"], se_max=0.03)


def test_optimal_mixed_with_pathwise_override():
    """The transform's estimator is pathwise; the Bernoulli site overrides with the optimal
    baseline: z ~ N(t, 1) pathwise, x ~ Bernoulli(sigmoid(t)), f = z^2 x + t x,
    E = (t^2 + 1 + t) s, s = sigmoid(t)."""

    def prog(key, t):
        k1, k2 = jax.random.split(key)
        z = je.sample(k1, D.Normal(t, 1.0))
        x = je.sample(k2, D.Bernoulli(logits=t), estimator=OPT)
        return z**2 * x + t * x

    t = 0.3
    s = sigmoid(t)
    exact = (2 * t + 1) * s + (t**2 + 1 + t) * s * (1 - s)
    gs = je.grad_samples(prog, je.pathwise(), num_samples=4000)(KEY, jnp.array(t))
    assert_unbiased(gs, exact, se_max=0.04)


def test_optimal_with_leave_one_out_site():
    """Two groups: the transform's optimal baseline at x ~ N(mu, sigma) and a leave-one-out
    override at y ~ Bernoulli(sigmoid(mu)); f = (x - 3)^2 (1 + y) + mu x,
    E = ((mu - 3)^2 + sigma^2)(1 + s) + mu^2, s = sigmoid(mu)."""

    def prog(key, p):
        k1, k2 = jax.random.split(key)
        x = je.sample(k1, D.Normal(p["mu"], p["sigma"]))
        y = je.sample(k2, D.Bernoulli(logits=p["mu"]), estimator=je.score_function("leave_one_out"))
        return (x - 3.0) ** 2 * (1 + y) + p["mu"] * x

    mu, sigma = 1.0, 1.0
    s = sigmoid(mu)
    exact = {
        "mu": 2 * (mu - 3) * (1 + s) + ((mu - 3) ** 2 + sigma**2) * s * (1 - s) + 2 * mu,
        "sigma": 2 * sigma * (1 + s),
    }
    gs = je.grad_samples(prog, OPT, num_samples=10000)(KEY, NP)
    assert_unbiased(gs["mu"], exact["mu"], se_max=0.12)
    assert_unbiased(gs["sigma"], exact["sigma"], se_max=0.25)


def test_optimal_in_scan():
    """n = sum of 4 Bernoulli(t) steps in je.scan, f = (n - 1)^2: E = Var + (E n - 1)^2
    = 4 t (1 - t) + (4 t - 1)^2, dE/dt = 4 - 8 t + 8 (4 t - 1)."""

    def walk(key, t):
        def step(n, k):
            return n + je.sample(k, D.Bernoulli(probs=t)), None

        n, _ = je.scan(step, jnp.zeros(()), jax.random.split(key, 4))
        return (n - 1.0) ** 2

    t = 0.35
    gs = je.grad_samples(walk, OPT, num_samples=4000)(KEY, jnp.array(t))
    assert_unbiased(gs, 4 - 8 * t + 8 * (4 * t - 1), se_max=0.2)


# --------------------------------------------------------------------------- invariances
def test_chunk_size_invariance_and_jit():
    """Per-sample gradients do not depend on chunk_size (4 chunks of 7 and a remainder of 2:
    the all-sample sums come from a first pass); je.value_and_grad under jax.jit, chunked,
    is their mean; dict params and a direct (pathwise) term."""
    ref = je.grad_samples(normal_prog, OPT, num_samples=30)(KEY, NP)
    out = je.grad_samples(normal_prog, OPT, num_samples=30, chunk_size=7)(KEY, NP)
    vg = jax.jit(je.value_and_grad(normal_prog, OPT, num_samples=30, chunk_size=7))
    value, g = vg(KEY, NP)
    assert np.isfinite(value)
    for k in ("mu", "sigma"):
        np.testing.assert_allclose(out[k], ref[k], rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(g[k], np.mean(ref[k]), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- errors
def test_needs_two_samples():
    with pytest.raises(ValueError, match="num_samples"):
        je.grad(normal_prog, OPT, num_samples=1)


def test_unknown_baseline():
    with pytest.raises(ValueError, match="optimal"):
        je.score_function("optimall")


@pytest.mark.parametrize("jit", [False, True])
def test_higher_order_raises(jit):
    def first(t):
        return je.grad(normal_prog, OPT, num_samples=8)(KEY, {"mu": t, "sigma": NP["sigma"]})["mu"]

    h = jax.grad(first)
    if jit:
        h = jax.jit(h)
    with pytest.raises(je.EstimatorError, match="optimal"):
        h(jnp.array(1.0))


@pytest.mark.parametrize("jit", [False, True])
def test_optimal_with_enumeration_or_cost_raises(jit):
    def with_enum(key, t):
        k1, k2 = jax.random.split(key)
        x = je.sample(k1, D.Bernoulli(probs=t), estimator=je.enumeration())
        y = je.sample(k2, D.Bernoulli(probs=t))
        return x * y

    def with_cost(key, t):
        x = je.sample(key, D.Bernoulli(probs=t))
        return je.cost(x * t)

    for prog in (with_enum, with_cost):
        g = je.grad(prog, OPT, num_samples=4)
        if jit:
            g = jax.jit(g)
        with pytest.raises(je.EstimatorError, match="leave_one_out"):
            g(KEY, jnp.array(0.3))


# =========================================================================== delta method
DELTA = je.score_function(control_variate="delta")


def quad_prog(key, p):
    """x ~ N(mu, sigma), y ~ N(2 mu, 0.5), f = (x - 3)^2 + x y + y^2 (quadratic in (x, y)):
    E = (mu - 3)^2 + sigma^2 + 2 mu^2 + 4 mu^2 + 0.25,
    dE/dmu = 2 (mu - 3) + 4 mu + 8 mu, dE/dsigma = 2 sigma."""
    k1, k2 = jax.random.split(key)
    x = je.sample(k1, D.Normal(p["mu"], p["sigma"]))
    y = je.sample(k2, D.Normal(2.0 * p["mu"], 0.5))
    return (x - 3.0) ** 2 + x * y + y**2


def test_delta_quadratic_is_exact():
    gs = je.grad_samples(quad_prog, DELTA, num_samples=64)(KEY, NP)
    mu, sigma = 1.0, 1.0
    exact = {"mu": 2 * (mu - 3) + 12 * mu, "sigma": 2 * sigma}
    for k in ("mu", "sigma"):  # zero variance: every sample is the exact gradient
        np.testing.assert_allclose(gs[k], exact[k], rtol=1e-4, atol=1e-4)


def test_delta_laplace_quadratic_is_exact():
    """x ~ Laplace(a, b) (2 elements), f = sum x^2: E = 2 (a^2 + 2 b^2) (any family with a
    closed-form mean and variance)."""

    def prog(key, p):
        return jnp.sum(je.sample(key, D.Laplace(p["a"], p["b"]), sample_shape=(2,)) ** 2)

    a, b = 0.7, 1.5
    gs = je.grad_samples(prog, DELTA, num_samples=16)(KEY, {"a": jnp.array(a), "b": jnp.array(b)})
    np.testing.assert_allclose(gs["a"], 4 * a, rtol=1e-4)
    np.testing.assert_allclose(gs["b"], 8 * b, rtol=1e-4)


def test_delta_cos_unbiased_and_lower_variance():
    """x ~ N(mu, sigma), f = cos(k x): E = cos(k mu) exp(-k^2 sigma^2 / 2)."""
    k, mu, sigma = 0.5, 1.0, 1.0

    def prog(key, p):
        return jnp.cos(k * je.sample(key, D.Normal(p["mu"], p["sigma"])))

    e = np.exp(-(k**2) * sigma**2 / 2)
    exact = {"mu": -k * np.sin(k * mu) * e, "sigma": -(k**2) * sigma * np.cos(k * mu) * e}
    n = 4000
    gs = je.grad_samples(prog, DELTA, num_samples=n)(KEY, NP)
    plain = je.grad_samples(prog, je.score_function(), num_samples=n)(KEY, NP)
    for name in ("mu", "sigma"):
        assert_unbiased(gs[name], exact[name], se_max=0.006)
        assert np.var(gs[name]) < 0.2 * np.var(plain[name])


def test_delta_chunk_jit_value_and_grad():
    ref = je.value_and_grad(quad_prog, DELTA, num_samples=10)(KEY, NP)
    out = jax.jit(je.value_and_grad(quad_prog, DELTA, num_samples=10, chunk_size=4))(KEY, NP)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), ref, out
    )


def _dependent(key, t):
    k1, k2 = jax.random.split(key)
    x = je.sample(k1, D.Normal(t, 1.0))
    return je.sample(k2, D.Normal(x, 1.0)) ** 2


def _discrete(key, t):
    return je.sample(key, D.Bernoulli(probs=t)) * t


def _in_scan(key, t):
    def step(c, k):
        return c + je.sample(k, D.Normal(t, 1.0)), None

    return je.scan(step, jnp.zeros(()), jax.random.split(key, 3))[0] ** 2


def _in_cond(key, t):
    def branch(k):
        return je.sample(k, D.Normal(t, 1.0))

    return je.cond(t > 0, branch, lambda k: jnp.zeros(()), key) ** 2


def _uniform(key, t):
    return je.sample(key, D.Uniform(0.0, 1.0 + t))


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize(
    "prog,match",
    [
        (_dependent, "depend on"),
        (_discrete, "discrete"),
        (_in_scan, "je.scan"),
        (_in_cond, "je.cond"),
        (_uniform, "support"),
    ],
)
def test_delta_unsupported_raises(prog, match, jit):
    g = je.grad(prog, DELTA, num_samples=2)
    if jit:
        g = jax.jit(g)
    with pytest.raises(je.EstimatorError, match=match):
        g(KEY, jnp.array(0.3))


def test_delta_config_errors_and_higher_order():
    with pytest.raises(ValueError, match="baseline"):
        je.score_function("leave_one_out", control_variate="delta")
    with pytest.raises(ValueError, match="control_variate"):
        je.score_function(control_variate="taylor")

    def first(t):
        return je.grad(quad_prog, DELTA, num_samples=2)(KEY, {"mu": t, "sigma": NP["sigma"]})["mu"]

    with pytest.raises(je.EstimatorError, match="differentiated again"):
        jax.grad(first)(jnp.array(1.0))
