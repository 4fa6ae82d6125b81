"""je.perturbed: perturbation smoothing against exact derivatives of E[g(theta + sigma Z)].

Every reference is a closed form of the smoothed function (Normal / Gumbel CDFs and
densities, softmax for the Gumbel-perturbed argmax); each test draws M independent
estimates (one key each) and checks |mean - exact| < 5 SE with a bound on SE.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _stats import assert_unbiased
from scipy.stats import norm

import jaxestim as je
from jaxestim.distributions import Normal

M = 2000
KEYS = jax.random.split(jax.random.key(7), M)


def step(x):
    return x > 0


def estimates(F, theta, jit=True):
    """M independent (value, gradient) estimates of F at theta, one key each."""
    fn = jax.vmap(lambda k: jax.value_and_grad(F, argnums=1)(k, theta))
    return (jax.jit(fn) if jit else fn)(KEYS)


def test_step_normal_eager_and_jit():
    sigma, theta = 0.5, 0.3
    F = je.perturbed(step, sigma=sigma, num_samples=8)
    v, g = estimates(F, theta, jit=False)  # eager: M estimates in one vmap, op by op
    v_jit, g_jit = estimates(F, theta, jit=True)
    np.testing.assert_allclose(v_jit, v, rtol=1e-6)
    np.testing.assert_allclose(g_jit, g, rtol=1e-5, atol=1e-6)
    assert_unbiased(v, norm.cdf(theta / sigma), se_max=0.006)
    assert_unbiased(g, norm.pdf(theta / sigma) / sigma, se_max=0.008)
    # jax.grad of the step itself is zero almost everywhere
    assert jax.grad(lambda x: step(x).astype(float))(theta) == 0.0


def test_step_gumbel():
    # P(theta + sigma G > 0) = 1 - exp(-exp(theta / sigma)); its derivative is the Gumbel
    # density at -theta / sigma, over sigma
    sigma, theta = 0.8, -0.2
    F = je.perturbed(step, sigma=sigma, noise="gumbel", num_samples=8)
    v, g = estimates(F, theta)
    u = math.exp(theta / sigma)
    assert_unbiased(v, 1 - math.exp(-u), se_max=0.006)
    assert_unbiased(g, u * math.exp(-u) / sigma, se_max=0.008)


def test_floor_normal():
    # floor(x) = sum_{k>=1} 1[x >= k] - sum_{k<=0} 1[x < k]
    sigma, theta = 0.6, 0.35
    F = je.perturbed(jnp.floor, sigma=sigma, num_samples=8)
    v, g = estimates(F, theta)
    k = np.arange(-30, 31)
    exact_v = (
        norm.cdf((theta - k[k >= 1]) / sigma).sum() - norm.sf((theta - k[k <= 0]) / sigma).sum()
    )
    exact_g = (norm.pdf((theta - k) / sigma) / sigma).sum()
    assert_unbiased(v, exact_v, se_max=0.008)
    assert_unbiased(g, exact_g, se_max=0.016)


@pytest.mark.parametrize("estimator", ["pathwise", "score_function"])
def test_abs_and_relu(estimator):
    sigma, theta = 0.7, -0.25
    t = theta / sigma
    for fun, exact_v, exact_g in (
        (
            jnp.abs,
            sigma * math.sqrt(2 / math.pi) * math.exp(-(t**2) / 2) + theta * (1 - 2 * norm.cdf(-t)),
            2 * norm.cdf(t) - 1,
        ),
        (jax.nn.relu, theta * norm.cdf(t) + sigma * norm.pdf(t), norm.cdf(t)),
    ):
        F = je.perturbed(fun, sigma=sigma, num_samples=8, estimator=estimator)
        v, g = estimates(F, theta)
        assert_unbiased(v, exact_v, se_max=0.006)
        assert_unbiased(g, exact_g, se_max=0.01 if estimator == "pathwise" else 0.016)


def test_argmax_gumbel_softmax():
    # E[one_hot(argmax(theta + sigma G))] = softmax(theta / sigma) (Gumbel-max trick)
    sigma = 0.7
    theta = jnp.asarray([0.2, -0.3, 0.5])
    F = je.perturbed(
        lambda x: jax.nn.one_hot(jnp.argmax(x), 3), sigma=sigma, noise="gumbel", num_samples=16
    )
    v, J = jax.jit(jax.vmap(lambda k: (F(k, theta), jax.jacrev(F, argnums=1)(k, theta))))(KEYS)
    p = np.exp(np.asarray(theta) / sigma) / np.exp(np.asarray(theta) / sigma).sum()
    assert_unbiased(v, p, se_max=0.003)
    assert_unbiased(J, (np.diag(p) - np.outer(p, p)) / sigma, se_max=0.0055)
    # forward mode and jax.jvp give the same estimate as reverse mode (same draws)
    key, tangent = KEYS[0], jnp.asarray([1.0, -2.0, 0.5])
    fwd, (_, jvp) = jax.jit(
        lambda: (
            jax.jacfwd(F, argnums=1)(key, theta),
            jax.jvp(lambda t: F(key, t), (theta,), (tangent,)),
        )
    )()
    np.testing.assert_allclose(fwd, J[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jvp, J[0] @ tangent, rtol=1e-5, atol=1e-6)
    # the closed form is jax.jacobian of softmax(theta / sigma)
    np.testing.assert_allclose(
        jax.jit(jax.jacobian(lambda t: jax.nn.softmax(t / sigma)))(theta),
        (np.diag(p) - np.outer(p, p)) / sigma,
        rtol=1e-5,
        atol=1e-7,
    )


def test_pytree_in_and_out():
    sigma = 0.5
    theta = {"a": jnp.asarray(0.2), "b": jnp.asarray([-0.4, 0.3])}

    def g(p):
        return {"step": p["a"] > 0, "relu": jnp.sum(jax.nn.relu(p["b"]))}

    F = je.perturbed(g, sigma=sigma, num_samples=8)
    out = F(KEYS[0], theta)
    assert set(out) == {"step", "relu"} and out["step"].dtype == jnp.float32
    grads = jax.jit(jax.vmap(lambda k: jax.grad(lambda t: sum(F(k, t).values()))(theta)))(KEYS)
    assert_unbiased(grads["a"], norm.pdf(0.2 / sigma) / sigma, se_max=0.012)
    assert_unbiased(grads["b"], norm.cdf(np.array([-0.4, 0.3]) / sigma), se_max=0.016)


def test_vmap_over_theta():
    F = je.perturbed(step, sigma=0.5, num_samples=8)
    thetas = jnp.asarray([-0.5, 0.0, 0.4])
    key = jax.random.key(3)
    g = jax.jit(jax.vmap(jax.grad(F, argnums=1), in_axes=(None, 0)))(key, thetas)
    one = jax.jit(jax.grad(F, argnums=1))
    for i, t in enumerate(thetas):
        np.testing.assert_allclose(g[i], one(key, t), rtol=1e-6)


SIGMA_IN = 0.6
F_STEP = je.perturbed(step, sigma=SIGMA_IN, num_samples=4)


def in_program(key, theta):
    k1, k2 = jax.random.split(key)
    x = je.sample(k1, Normal(theta, 1.0))
    return F_STEP(k2, x)


def in_scan(key, theta):
    def body(c, _, k):
        k1, k2 = k.split(2)
        x = je.sample(k1, Normal(theta, 1.0))
        return c + F_STEP(k2, x), None

    c, _ = je.scan(body, jnp.asarray(0.0), None, length=3, key=key)
    return c


@pytest.mark.parametrize(
    "estimator",
    [je.pathwise(), je.score_function(), je.pathwise(mode="forward"), je.stochastic_ad()],
    ids=["pathwise", "score_function", "pathwise_forward", "stochastic_ad"],
)
def test_inside_program(estimator):
    # E[Phi(x / s)] with x ~ N(theta, 1) is Phi(theta / sqrt(1 + s^2))
    theta, r = 0.4, math.sqrt(1 + SIGMA_IN**2)
    exact = norm.pdf(theta / r) / r
    g = je.grad_samples(in_program, estimator, num_samples=3000)(jax.random.key(2), theta)
    assert_unbiased(g, exact, se_max=0.02)


def test_inside_scan_jit():
    theta, r = -0.3, math.sqrt(1 + SIGMA_IN**2)
    fn = jax.jit(je.grad_samples(in_scan, je.pathwise(), num_samples=2000, chunk_size=500))
    assert_unbiased(fn(jax.random.key(4), theta), 3 * norm.pdf(theta / r) / r, se_max=0.03)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("estimator", ["score_function", "pathwise"])
def test_higher_order_raises(jit, estimator):
    F = je.perturbed(jax.nn.relu, sigma=0.5, num_samples=4, estimator=estimator)
    h = jax.hessian(F, argnums=1)
    h = jax.jit(h) if jit else h
    with pytest.raises(je.EstimatorError, match="differentiated again"):
        h(jax.random.key(0), 0.3)


def test_argument_errors():
    with pytest.raises(ValueError, match="`sigma`"):
        je.perturbed(step, sigma=0.0)
    with pytest.raises(ValueError, match="`sigma`"):
        je.perturbed(step, sigma=-1.0)
    with pytest.raises(TypeError, match="`sigma`"):
        jax.jit(lambda s: je.perturbed(step, sigma=s)(jax.random.key(0), 0.1))(0.5)
    with pytest.raises(ValueError, match="`noise`"):
        je.perturbed(step, noise="laplace")
    with pytest.raises(ValueError, match="`estimator`"):
        je.perturbed(step, estimator="reinforce")
    with pytest.raises(ValueError, match=r"`num_samples`.*leave-one-out"):
        je.perturbed(step, num_samples=1)
    je.perturbed(jax.nn.relu, num_samples=1, estimator="pathwise")  # fine without a baseline
    with pytest.raises(TypeError, match="`fun`"):
        je.perturbed(3.0)
    with pytest.raises(TypeError, match="`theta`"):
        je.perturbed(step)(jax.random.key(0), jnp.asarray(1))
    with pytest.raises(TypeError, match="key"):
        je.perturbed(step)(0, 0.5)
