"""Complex-step finite differences and the randomized forward gradient."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _stats import assert_unbiased

import jaxestim as je
from jaxestim import distributions as D

# ---------------------------------------------------------------------------- complex step


def analytic(key, theta):
    """Real-analytic in theta: a Normal site with theta-dependent loc and scale."""
    k1, k2 = jax.random.split(key)
    x = je.sample(k1, D.Normal(theta[0], 1.5), (3,))
    y = je.sample(k2, D.Normal(jnp.sin(theta[1]), jnp.exp(0.3 * theta[0])))
    return jnp.sum(jnp.exp(0.2 * x) * jnp.cos(theta[1] * x)) + y**3 + theta[0] * theta[1]


def test_complex_step_equals_pathwise_float64():
    with jax.enable_x64(True):
        key = jax.random.key(3)
        theta = jnp.array([0.4, -0.7], jnp.float64)
        cs = je.grad_samples(
            analytic, je.finite_difference(step=1e-20, scheme="complex"), num_samples=8
        )
        pw = je.grad_samples(analytic, je.pathwise(), num_samples=8)
        g_cs, g_pw = cs(key, theta), pw(key, theta)
        assert g_cs.dtype == jnp.float64
        np.testing.assert_allclose(g_cs, g_pw, rtol=1e-12, atol=1e-12)
        assert float(jnp.max(jnp.abs(g_pw))) > 0.1
        # under jit, with random directions: mean_d v_d <grad, v_d>, same key -> same directions
        est = je.finite_difference(
            step=1e-20, scheme="complex", directions="spsa", num_directions=3
        )
        g1 = jax.jit(je.grad_samples(analytic, est, num_samples=4))(key, theta)
        g2 = je.grad_samples(analytic, est, num_samples=4)(key, theta)
        np.testing.assert_allclose(g1, g2, rtol=1e-12, atol=1e-12)


def test_complex_step_dict_params_chunks():
    with jax.enable_x64(True):
        key = jax.random.key(0)

        def f(key, p):
            x = je.sample(key, D.Normal(p["a"], 1.0), (2,))
            return jnp.sum(jnp.tanh(x * p["b"]))

        p = {"a": jnp.array([0.3, -0.2]), "b": jnp.array(1.3)}
        cs = je.grad(
            f, je.finite_difference(step=1e-20, scheme="complex"), num_samples=6, chunk_size=2
        )
        pw = je.grad(f, je.pathwise(), num_samples=6)
        a, b = cs(key, p), pw(key, p)
        for k in p:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-12, atol=1e-13)


def bernoulli_program(key, p):
    return je.sample(key, D.Bernoulli(probs=p)) * 2.0


def comparison_program(key, t):
    x = je.sample(key, D.Normal(t, 1.0))
    return jnp.where(x > 0.0, x, 0.0)


def gamma_program(key, t):
    return je.sample(key, D.Gamma(jnp.exp(t), 1.0))


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize(
    "prog, arg, match",
    [
        (bernoulli_program, 0.3, "Bernoulli"),
        (comparison_program, 0.3, "non-analytic operations to complex values"),
        (gamma_program, 0.3, "Gamma"),
    ],
)
def test_complex_step_errors(prog, arg, match, jit):
    est = je.finite_difference(step=1e-20, scheme="complex")
    fn = je.grad(prog, est, num_samples=2)
    if jit:
        fn = jax.jit(fn)
    with pytest.raises(je.EstimatorError, match=match) as info:
        fn(jax.random.key(0), arg)
    msg = str(info.value)
    assert "je.pathwise()" in msg and 'scheme="central"' in msg


def test_complex_step_real_output_error():
    def f(key, t):
        x = je.sample(key, D.Normal(t, 1.0))
        return jnp.real(x) ** 2

    with pytest.raises(je.EstimatorError, match="non-analytic operations to complex values: real"):
        je.grad(f, je.finite_difference(step=1e-20, scheme="complex"))(jax.random.key(0), 0.3)


# ------------------------------------------------------------------------ forward gradient

A = np.array([[2.0, 0.5, 0.0], [0.5, 1.0, -0.3], [0.0, -0.3, 1.5]])
B = np.array([0.2, -1.0, 0.5])
THETA = np.array([0.3, -0.4, 0.8], np.float32)


def quadratic(key, theta):
    """f = 0.5 x^T A x + b^T x with x ~ N(theta, I): E f = 0.5 th^T A th + 0.5 tr A + b^T th."""
    x = je.sample(key, D.Normal(theta, 1.0))
    return 0.5 * x @ jnp.asarray(A, x.dtype) @ x + jnp.asarray(B, x.dtype) @ x


def test_forward_gradient_unbiased_and_variance():
    n, k = 40_000, 2
    fg = je.grad_samples(
        quadratic, je.forward_gradient(num_directions=k), num_samples=n, chunk_size=10_000
    )
    g = np.asarray(fg(jax.random.key(1), jnp.asarray(THETA)), np.float64)
    exact = A @ THETA + B
    assert_unbiased(g, exact, se_max=0.03)
    # Closed-form per-sample variance. Pathwise gradient m + A eps (m = A theta + b, eps ~ N(0, I));
    # for fixed g the forward gradient has Var_i = (||g||^2 + g_i^2) / k, so over eps
    # Var_i = (||m||^2 + tr(A A^T) + m_i^2 + (A A^T)_ii) / k + (A A^T)_ii.
    aat = A @ A.T
    var_exact = (exact @ exact + np.trace(aat) + exact**2 + np.diag(aat)) / k + np.diag(aat)
    c = g - g.mean(0)
    var_hat = (c**2).mean(0) * n / (n - 1)
    se_var = (c**2).std(0, ddof=1) / np.sqrt(n)  # SE of the variance estimate
    assert np.all(se_var < 0.03 * var_exact), (se_var, var_exact)
    assert np.all(np.abs(var_hat - var_exact) < 5 * se_var), (var_hat, var_exact, se_var)


def test_forward_gradient_variance_deterministic():
    """No program noise: Cov = (||g||^2 I + g g^T) / k exactly."""
    n, k = 40_000, 3

    def f(key, theta):
        th = theta
        return 0.5 * th @ jnp.asarray(A, th.dtype) @ th + jnp.asarray(B, th.dtype) @ th

    g = np.asarray(
        je.grad_samples(f, je.forward_gradient(num_directions=k), num_samples=n)(
            jax.random.key(2), jnp.asarray(THETA)
        ),
        np.float64,
    )
    gt = A @ THETA + B
    assert_unbiased(g, gt, se_max=0.02)
    var_exact = (gt @ gt + gt**2) / k
    c = g - g.mean(0)
    var_hat = (c**2).mean(0) * n / (n - 1)
    se_var = (c**2).std(0, ddof=1) / np.sqrt(n)
    assert np.all(se_var < 0.03 * var_exact)
    assert np.all(np.abs(var_hat - var_exact) < 5 * se_var), (var_hat, var_exact, se_var)
    cov_hat = c.T @ c / (n - 1)
    np.testing.assert_allclose(cov_hat, (gt @ gt * np.eye(3) + np.outer(gt, gt)) / k, atol=0.1)


def test_forward_gradient_jit_dict_chunks():
    def f(key, p):
        x = je.sample(key, D.Normal(p["a"], jnp.exp(p["s"])), (2,))
        return jnp.sum(x**2)

    p = {"a": jnp.array([0.5, -1.0]), "s": jnp.array(0.1)}
    est = je.forward_gradient(num_directions=4)
    key = jax.random.key(5)
    g1 = jax.jit(je.grad(f, est, num_samples=8_000, chunk_size=2_000))(key, p)
    g2 = je.grad(f, est, num_samples=8_000)(key, p)
    for name in p:
        np.testing.assert_allclose(g1[name], g2[name], rtol=1e-4, atol=1e-5)
    # E sum x^2 = 2 (a^2 + s'^2) summed: d/da = 4 a (two draws each), d/ds = 4 * 2 e^{2s}
    samples = je.grad_samples(f, est, num_samples=8_000)(key, p)
    assert_unbiased(samples["a"], 4 * np.asarray(p["a"]), se_max=0.2)
    assert_unbiased(samples["s"], 8 * np.exp(0.2), se_max=0.5)
    val, _ = je.value_and_grad(f, est, num_samples=100)(key, p)
    assert np.isfinite(val)


@pytest.mark.parametrize("jit", [False, True])
def test_forward_gradient_discrete_error(jit):
    fn = je.grad(bernoulli_program, je.forward_gradient(num_directions=2), num_samples=2)
    if jit:
        fn = jax.jit(fn)
    with pytest.raises(je.EstimatorError, match="stochastic_ad") as info:
        fn(jax.random.key(0), 0.3)
    assert "score_function" in str(info.value)


def test_forward_gradient_bad_num_directions():
    with pytest.raises(ValueError, match="num_directions"):
        je.forward_gradient(num_directions=0)


def test_complex_still_rejected_outside_complex_step():
    with pytest.raises(TypeError, match="complex parameters"):
        D.Normal(jnp.array(1.0 + 1.0j), 1.0)

    def f(key, t):
        return je.sample(key, D.Normal(t, 1.0)) * (1.0 + 1.0j)

    with pytest.raises(TypeError, match="real scalar"):
        je.grad(f, je.finite_difference(scheme="central"))(jax.random.key(0), 0.3)


def test_complex_step_default_step():
    # the complex scheme defaults to h = 1e-20 (the real schemes keep 1e-2)
    assert float(je.finite_difference(scheme="complex").step) == 1e-20
    assert float(je.finite_difference().step) == 1e-2
    key, theta = jax.random.key(5), jnp.array([0.4, -0.7])
    pw = je.grad_samples(analytic, je.pathwise(), num_samples=4)(key, theta)
    # float32: still no cancellation at h = 1e-20 (complex64 holds it as a normal number)
    cs = je.grad_samples(analytic, je.finite_difference(scheme="complex"), num_samples=4)
    np.testing.assert_allclose(cs(key, theta), pw, rtol=1e-5, atol=1e-5)
    with jax.enable_x64(True):
        theta64 = theta.astype(jnp.float64)
        g = je.grad_samples(analytic, je.finite_difference(scheme="complex"), num_samples=4)
        g_pw = je.grad_samples(analytic, je.pathwise(), num_samples=4)(key, theta64)
        np.testing.assert_allclose(g(key, theta64), g_pw, rtol=1e-12, atol=1e-12)
