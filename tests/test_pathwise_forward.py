"""je.pathwise(mode="forward"): the pathwise gradient by forward-mode autodiff (P JVPs)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _stats import assert_unbiased

import jaxestim as je
from jaxestim.distributions import Bernoulli, Normal


def scan_program(key, p):
    """A je.scan loop with a Normal site per iteration and dict parameters."""

    def body(c, _, k):
        x = je.sample(k, Normal(p["mu"], jnp.exp(p["log_s"])))
        return 0.8 * c + jnp.sin(x + c) * p["mu"], None

    c, _ = je.scan(body, jnp.asarray(0.1), None, length=12, key=key)
    return c**2 + p["log_s"]


PARAMS = {"mu": jnp.asarray(0.3), "log_s": jnp.asarray(-0.4)}


def test_equals_reverse_mode_scan_dict_jit_chunks():
    key = jax.random.key(3)
    rev = jax.jit(je.grad(scan_program, je.pathwise(), num_samples=10, chunk_size=4))
    fwd = jax.jit(je.grad(scan_program, je.pathwise(mode="forward"), num_samples=10, chunk_size=4))
    g_rev, g_fwd = rev(key, PARAMS), fwd(key, PARAMS)
    for name in PARAMS:
        np.testing.assert_allclose(g_fwd[name], g_rev[name], rtol=2e-5, atol=1e-6)
    # per-sample estimates and values agree too (same key -> same noise)
    s_rev = je.grad_samples(scan_program, je.pathwise(), num_samples=6)(key, PARAMS)
    s_fwd = je.grad_samples(scan_program, je.pathwise(mode="forward"), num_samples=6)(key, PARAMS)
    for name in PARAMS:
        np.testing.assert_allclose(s_fwd[name], s_rev[name], rtol=2e-5, atol=1e-6)
    v_rev, _ = je.value_and_grad(scan_program, je.pathwise(), num_samples=6)(key, PARAMS)
    v_fwd, _ = je.value_and_grad(scan_program, je.pathwise(mode="forward"), num_samples=6)(
        key, PARAMS
    )
    np.testing.assert_allclose(v_fwd, v_rev, rtol=1e-6)


def test_unbiased_against_closed_form():
    # E[x^2] = mu^2 + s^2 for x ~ N(mu, s): gradient (2 mu, 2 s)
    def f(key, p):
        return je.sample(key, Normal(p[0], p[1])) ** 2

    theta = jnp.asarray([0.7, 1.3])
    g = je.grad_samples(f, je.pathwise(mode="forward"), num_samples=4000)(jax.random.key(0), theta)
    assert_unbiased(g, [1.4, 2.6], se_max=0.06)


def test_vmap_over_params():
    def f(key, mu):
        return je.sample(key, Normal(mu, 1.0)) ** 2

    mus = jnp.asarray([0.1, 0.5, -1.0])
    est = je.pathwise(mode="forward")
    g = jax.vmap(lambda m: je.grad(f, est, num_samples=8)(jax.random.key(1), m))(mus)
    g_rev = jax.vmap(lambda m: je.grad(f, je.pathwise(), num_samples=8)(jax.random.key(1), m))(mus)
    np.testing.assert_allclose(g, g_rev, rtol=1e-5, atol=1e-6)


def bernoulli_program(key, p):
    return jnp.sum(je.sample(key, Bernoulli(probs=p)) * 1.0)


@pytest.mark.parametrize("jit", [False, True])
def test_discrete_site_raises(jit):
    fn = je.grad(bernoulli_program, je.pathwise(mode="forward"), num_samples=2)
    fn = jax.jit(fn) if jit else fn
    with pytest.raises(je.EstimatorError, match=r'pathwise\(mode="forward"\).*Bernoulli'):
        fn(jax.random.key(0), jnp.asarray(0.3))


def test_site_override_rejected():
    def f(key, mu):
        return je.sample(key, Normal(mu, 1.0), estimator=je.score_function())

    with pytest.raises(je.EstimatorError, match="per-site"):
        je.grad(f, je.pathwise(mode="forward"), num_samples=2)(jax.random.key(0), 0.5)


def test_invalid_mode():
    with pytest.raises(ValueError, match="`mode`"):
        je.pathwise(mode="backward")
    assert je.pathwise() == je.Pathwise()
    assert isinstance(je.pathwise(mode="forward"), je.PathwiseForward)


def test_memory_does_not_grow_with_loop_length():
    # one Normal site, then a long deterministic je.scan: reverse mode stores a residual
    # per iteration, forward mode none (compiled temp memory, XLA's own estimate)
    def make(length):
        def prog(key, p):
            x = je.sample(key, Normal(p[0], jnp.exp(p[1])))
            c, _ = je.scan(
                lambda c, _: (0.9 * c + 0.1 * jnp.sin(x + c), None), 0.0, None, length=length
            )
            return c**2

        return prog

    theta, key = jnp.asarray([0.3, -0.5]), jax.random.key(0)

    def temp(length, est):
        fn = jax.jit(je.grad(make(length), est, num_samples=2))
        stats = fn.lower(key, theta).compile().memory_analysis()
        if stats is None:
            pytest.skip("this backend reports no memory analysis")
        return stats.temp_size_in_bytes

    fwd = je.pathwise(mode="forward")
    assert temp(4000, fwd) == temp(500, fwd)
    assert temp(4000, je.pathwise()) > temp(500, je.pathwise())


def test_higher_order_raises():
    def f(key, m):
        return je.sample(key, Normal(m, 1.0)) ** 3

    g = je.grad(f, je.pathwise(mode="forward"), num_samples=4)
    with pytest.raises(je.EstimatorError, match=r'je.pathwise\(mode="forward"\) estimates cannot'):
        jax.grad(lambda m: g(jax.random.key(0), m))(0.5)


def test_check_reports_discrete_site():
    # je.check raises the error je.grad would raise, and analyses the pathwise program
    with pytest.raises(je.EstimatorError, match=r'pathwise\(mode="forward"\).*Bernoulli'):
        je.check(bernoulli_program, jax.random.key(0), 0.3, estimator=je.pathwise(mode="forward"))

    def step(key, t):
        return (je.sample(key, Normal(t, 1.0)) > 0).astype(float)

    report = je.check(step, jax.random.key(0), 0.5, estimator=je.pathwise(mode="forward"))
    assert not report.ok
