"""je.enumeration(): exact expectation over small finite discrete sites.

Exact references are computed independently in NumPy float64 (sums over the supports,
closed-form Gaussian moments, central differences of those exact expectations) or with
jax.grad of a hand-written enumeration of the same program.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _stats import assert_unbiased

import jaxestim as je
from jaxestim import distributions as D

KEY = jax.random.key(0)


def sigmoid(t):
    return 1.0 / (1.0 + np.exp(-t))


def exact_grad(fun, theta, h=1e-5):
    """Central differences of an exact float64 expectation (error ~h^2)."""
    theta = np.asarray(theta, np.float64)
    g = np.zeros_like(theta)
    for i in range(theta.size):
        e = np.zeros_like(theta)
        e.flat[i] = h
        g.flat[i] = (fun(theta + e) - fun(theta - e)) / (2 * h)
    return g


def assert_zero_variance(samples, exact, rtol=2e-5, atol=2e-6):
    s = np.asarray(samples, np.float64)
    np.testing.assert_allclose(s, np.broadcast_to(s[0], s.shape), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(s[0], exact, rtol=rtol, atol=atol)


# --- zero variance: every site enumerated -----------------------------------------------


def bernoulli_prog(key, theta):
    k1, k2 = jax.random.split(key)
    x = je.sample(k1, D.Bernoulli(logits=theta[0]))
    y = je.sample(k2, D.Bernoulli(probs=jax.nn.sigmoid(theta[1] + x)))
    return (x - 0.3) ** 2 * (1 + y) + x * y * theta[0]


def bernoulli_exact(t):
    total = 0.0
    for x, y in itertools.product((0.0, 1.0), repeat=2):
        px = sigmoid(t[0]) if x else 1 - sigmoid(t[0])
        q = sigmoid(t[1] + x)
        py = q if y else 1 - q
        total += px * py * ((x - 0.3) ** 2 * (1 + y) + x * y * t[0])
    return total


def test_bernoulli_zero_variance():
    th = jnp.array([0.2, -0.5])
    gs = je.grad_samples(bernoulli_prog, je.enumeration(), num_samples=8)(KEY, th)
    assert_zero_variance(gs, exact_grad(bernoulli_exact, th))
    v, g = je.value_and_grad(bernoulli_prog, je.enumeration(), num_samples=8)(KEY, th)
    np.testing.assert_allclose(v, bernoulli_exact(np.asarray(th, np.float64)), rtol=1e-6)
    np.testing.assert_allclose(g, gs[0], rtol=1e-6)


TABLE = np.array([1.5, -2.0, 0.7, 3.0])


def categorical_prog(key, logits):
    return (
        je.select(jnp.asarray(TABLE, jnp.float32), je.sample(key, D.Categorical(logits=logits)))
        ** 2
    )


def test_categorical_select_zero_variance():
    logits = jnp.array([0.3, -0.2, 0.5, 0.0])

    def exact(t):
        p = np.exp(t) / np.exp(t).sum()
        return float(p @ TABLE**2)

    gs = je.grad_samples(categorical_prog, je.enumeration(), num_samples=6)(KEY, logits)
    assert_zero_variance(gs, exact_grad(exact, logits))


def test_one_hot_categorical_zero_variance_and_zero_probability_category():
    def prog(key, probs):
        x = je.sample(key, D.OneHotCategorical(probs=probs))
        return jnp.sum(x * jnp.array([1.0, 4.0, -2.0])) ** 2

    def exact(p):
        p = p / p.sum()
        return float(p @ np.array([1.0, 16.0, 4.0]))

    # the middle category has probability 0: its weight is 0 with the exact derivative
    for probs in (jnp.array([0.2, 0.5, 0.3]), jnp.array([0.6, 0.0, 0.4])):
        gs = je.grad_samples(prog, je.enumeration(), num_samples=4)(KEY, probs)
        assert np.all(np.isfinite(gs))
        assert_zero_variance(gs, exact_grad(exact, probs))


def test_binomial_zero_variance():
    def prog(key, p):
        k = je.sample(key, D.Binomial(4, probs=p))
        return jnp.sin(k) + k**2 * p

    def exact(p):
        ks = np.arange(5)
        pmf = np.array([math.comb(4, k) for k in ks]) * p[0] ** ks * (1 - p[0]) ** (4 - ks)
        return float(pmf @ (np.sin(ks) + ks**2 * p[0]))

    for p in (0.3, 0.0):  # p = 0: the point mass at 0, exact derivative (no boundary NaN)
        gs = je.grad_samples(prog, je.enumeration(), num_samples=4)(KEY, jnp.float32(p))
        assert_zero_variance(gs, exact_grad(exact, [p], h=1e-6 if p == 0 else 1e-5)[0])


def test_three_bernoulli_toy_exact():
    target = jnp.array([0.6, 0.51, 0.48])

    def cost(key, theta):
        x = je.sample(key, D.Bernoulli(logits=theta))
        return jnp.sum((x - target) ** 2)

    # d/dtheta_i E = sigma'(0) ((1 - p_i)^2 - p_i^2) = (1 - 2 p_i) / 4
    exact = (1 - 2 * np.array([0.6, 0.51, 0.48])) / 4
    gs = je.grad_samples(cost, je.enumeration(), num_samples=4)(KEY, jnp.zeros(3))
    assert_zero_variance(gs, exact)
    # the sign of the tiny middle component is right in every sample
    assert np.all(np.asarray(gs)[:, 1] < 0) and np.all(np.asarray(gs)[:, 2] > 0)


# --- mixed: enumerated + score function + pathwise ---------------------------------------


def mixed_prog(key, theta):
    a, b = theta[0], theta[1]
    k1, k2, k3 = jax.random.split(key, 3)
    x = je.sample(k1, D.Bernoulli(logits=a), estimator=je.enumeration())
    y = je.sample(k2, D.Bernoulli(logits=b + x))  # the transform's estimator
    z = je.sample(k3, D.Normal(a * y + b, 1.0), estimator=je.pathwise())
    return jnp.sin(z) + x * y + z**2 * x


def mixed_exact(t):
    a, b = t
    total = 0.0
    for x, y in itertools.product((0.0, 1.0), repeat=2):
        px = sigmoid(a) if x else 1 - sigmoid(a)
        py = sigmoid(b + x) if y else 1 - sigmoid(b + x)
        m = a * y + b  # E sin z = sin(m) e^{-1/2}, E z^2 = m^2 + 1
        total += px * py * (np.sin(m) * np.exp(-0.5) + x * y + (m**2 + 1) * x)
    return total


@pytest.mark.parametrize("est", [je.score_function("leave_one_out"), je.auto()])
def test_mixed_unbiased(est):
    th = jnp.array([0.4, -0.3])
    exact = exact_grad(mixed_exact, th)
    gs = je.grad_samples(mixed_prog, est, num_samples=4000)(KEY, th)
    assert_unbiased(gs, exact, se_max=0.03)
    if isinstance(est, je.ScoreFunction):
        g = je.grad(mixed_prog, est, num_samples=4000)(KEY, th)
        np.testing.assert_allclose(g, np.mean(np.asarray(gs), 0), rtol=1e-4, atol=1e-5)
    else:  # enumerating x lowers the variance against the score function at x
        gs_sf = je.grad_samples(mixed_prog_sf, est, num_samples=4000)(KEY, th)
        assert np.all(np.std(np.asarray(gs), 0) < np.std(np.asarray(gs_sf), 0))


def mixed_prog_sf(key, theta):
    a, b = theta[0], theta[1]
    k1, k2, k3 = jax.random.split(key, 3)
    x = je.sample(k1, D.Bernoulli(logits=a))
    y = je.sample(k2, D.Bernoulli(logits=b + x))
    z = je.sample(k3, D.Normal(a * y + b, 1.0), estimator=je.pathwise())
    return jnp.sin(z) + x * y + z**2 * x


# --- transformations ---------------------------------------------------------------------


def test_jit_vmap_chunks_dict_params():
    th = jnp.array([0.2, -0.5])
    base = je.grad(bernoulli_prog, je.enumeration(), num_samples=6)(KEY, th)
    jitted = jax.jit(je.grad(bernoulli_prog, je.enumeration(), num_samples=6))(KEY, th)
    chunked = je.grad(bernoulli_prog, je.enumeration(), num_samples=6, chunk_size=4)(KEY, th)
    np.testing.assert_allclose(jitted, base, rtol=1e-6)
    np.testing.assert_allclose(chunked, base, rtol=1e-6)
    ths = jnp.array([[0.2, -0.5], [1.0, 0.3]])
    batched = jax.vmap(je.grad(bernoulli_prog, je.enumeration(), num_samples=2), (None, 0))(
        KEY, ths
    )
    for t, g in zip(np.asarray(ths, np.float64), np.asarray(batched), strict=True):
        np.testing.assert_allclose(g, exact_grad(bernoulli_exact, t), rtol=2e-5, atol=2e-6)

    def dict_prog(key, params):
        return bernoulli_prog(key, jnp.stack([params["a"], params["b"]]))

    gd = je.grad(dict_prog, je.enumeration(), num_samples=3)(KEY, {"a": 0.2, "b": -0.5})
    np.testing.assert_allclose([gd["a"], gd["b"]], base, rtol=1e-5)
    # mixed program, chunked leave-one-out (the baseline uses the enumerated values)
    th2 = jnp.array([0.4, -0.3])
    est = je.score_function("leave_one_out")
    full = je.grad(mixed_prog, est, num_samples=50)(KEY, th2)
    part = jax.jit(je.grad(mixed_prog, est, num_samples=50, chunk_size=16))(KEY, th2)
    np.testing.assert_allclose(part, full, rtol=1e-4, atol=1e-6)


def test_second_derivative_exact():
    th = jnp.array([0.2, -0.5])

    def exact_value(t):
        px, total = jax.nn.sigmoid(t[0]), 0.0
        for x, y in itertools.product((0.0, 1.0), repeat=2):
            q = jax.nn.sigmoid(t[1] + x)
            w = (px if x else 1 - px) * (q if y else 1 - q)
            total = total + w * ((x - 0.3) ** 2 * (1 + y) + x * y * t[0])
        return total

    h = jax.jacfwd(je.grad(bernoulli_prog, je.enumeration(), num_samples=2), argnums=1)(KEY, th)
    np.testing.assert_allclose(h, jax.hessian(exact_value)(th), rtol=1e-4, atol=1e-6)


def test_aux_has_a_combination_axis():
    def prog(key, theta):
        x = je.sample(key, D.Bernoulli(logits=theta), (2,))
        return jnp.sum(x), x

    (_, aux), _ = je.value_and_grad(prog, je.enumeration(), num_samples=3, has_aux=True)(KEY, 0.0)
    assert aux.shape == (3, 4, 2)
    np.testing.assert_array_equal(aux[0], [[0, 0], [1, 0], [0, 1], [1, 1]])


def test_masked_elements_are_not_enumerated():
    def prog(key, theta):
        x = je.sample(key, D.Bernoulli(logits=theta), mask=jnp.array([True, False]))
        return jnp.sum(x * jnp.array([2.0, 5.0]))

    th = jnp.array([0.3, -0.2])
    keys = jax.random.split(KEY, 4)
    v, g = je.value_and_grad(prog, je.enumeration(), num_samples=4)(KEY, th)
    x1 = np.asarray(jax.vmap(lambda k: D.Bernoulli(logits=th).sample(k))(keys))[:, 1]
    s = sigmoid(0.3)
    np.testing.assert_allclose(v, 2 * s + 5 * x1.mean(), rtol=1e-5)
    np.testing.assert_allclose(g, [2 * s * (1 - s), 0.0], rtol=1e-5, atol=1e-7)


def test_invalid_parameters_give_nan():
    def prog(key, p):
        return je.sample(key, D.Bernoulli(probs=p)) * 2.0

    v, g = je.value_and_grad(prog, je.enumeration(), num_samples=2)(KEY, jnp.float32(1.5))
    assert np.isnan(v) and np.isnan(g)
    assert np.isnan(je.grad(prog, je.enumeration(), num_samples=2)(KEY, jnp.float32(-0.1)))


# --- errors ------------------------------------------------------------------------------


def test_budget_error():
    def prog(key, theta):
        return jnp.sum(je.sample(key, D.Bernoulli(logits=theta), (11,)))

    with pytest.raises(je.EstimatorError, match=r"K = 2048 .*max_combinations=1024"):
        je.grad(prog, je.enumeration(), num_samples=2)(KEY, 0.1)
    with pytest.raises(je.EstimatorError, match=r"K = 2048"):
        jax.jit(je.grad(prog, je.enumeration(), num_samples=2))(KEY, 0.1)
    g = je.grad(prog, je.enumeration(max_combinations=2048), num_samples=1)(KEY, 0.1)
    np.testing.assert_allclose(g, 11 * sigmoid(0.1) * (1 - sigmoid(0.1)), rtol=1e-4)
    with pytest.raises(ValueError, match="max_combinations"):
        je.enumeration(max_combinations=0)


def test_unsupported_sites_raise():
    def traced_n(key, p, n):
        return je.sample(key, D.Binomial(n, probs=p))

    with pytest.raises(je.EstimatorError, match="total_count is traced"):
        je.grad(traced_n, je.enumeration(), num_samples=2)(KEY, 0.3, jnp.float32(4))
    with pytest.raises(je.EstimatorError, match="total_count is traced"):
        jax.jit(je.grad(traced_n, je.enumeration(), num_samples=2))(KEY, 0.3, 4.0)

    def poisson(key, r):
        return je.sample(key, D.Poisson(r))

    with pytest.raises(je.EstimatorError, match="score_function"):
        je.grad(poisson, je.enumeration())(KEY, 1.0)

    def in_while(key, p):
        def body(c):
            k, n, s = c
            k, sub = jax.random.split(k)
            x = je.sample(sub, D.Bernoulli(probs=p), estimator=je.enumeration())
            return k, n + 1, s + x

        return je.while_loop(lambda c: c[1] < 3, body, (key, 0, 0.0), max_iterations=5)[2]

    def in_cond(key, p):
        return je.cond(
            p > 0,
            lambda: je.sample(key, D.Bernoulli(probs=p), estimator=je.enumeration()),
            lambda: 0.0,
        )

    for run in (lambda f: f, jax.jit):
        for prog in (in_while, in_cond):
            with pytest.raises(je.EstimatorError, match=r"je.while_loop.*je.stochastic_ad"):
                run(je.grad(prog, je.score_function(), num_samples=2))(KEY, 0.3)

    def in_lax_cond(key, p):
        return jax.lax.cond(
            p > 0,
            lambda: je.sample(key, D.Bernoulli(probs=p), estimator=je.enumeration()),
            lambda: 0.0,
        )

    with pytest.raises(je.EstimatorError, match="plain JAX control flow"):
        je.grad(in_lax_cond, je.auto(), num_samples=2)(KEY, 0.3)

    def override(key, p):
        return je.sample(key, D.Bernoulli(probs=p), estimator=je.enumeration())

    with pytest.raises(je.EstimatorError, match="whole-program"):
        je.grad(override, je.stochastic_ad(), num_samples=2)(KEY, 0.3)


def test_program_traced_once_and_check():
    calls = [0]

    def prog(key, theta):
        calls[0] += 1
        return mixed_prog(key, theta)

    th = jnp.array([0.4, -0.3])
    for kind in (je.grad, je.grad_samples, je.value_and_grad):
        for chunk in (None, 3):
            calls[0] = 0
            jax.jit(kind(prog, je.auto(), num_samples=8, chunk_size=chunk)).trace(KEY, th)
            assert calls[0] == 1
    assert "no problems" in str(je.check(mixed_prog, KEY, th))


def test_binomial_batch_with_different_counts():
    # total_count (1, 3): values above an element's count get weight exactly 0
    def prog(key, p):
        k = je.sample(key, D.Binomial(np.array([1.0, 3.0]), probs=p))
        return jnp.sum(k**2 * jnp.array([1.0, 2.0]))

    v, g = je.value_and_grad(prog, je.enumeration(), num_samples=2)(KEY, 0.3)
    # E k^2 = n p (1 - p) + n^2 p^2
    np.testing.assert_allclose(v, 0.3 * 0.7 + 0.09 + 2 * (3 * 0.3 * 0.7 + 9 * 0.09), rtol=1e-5)
    np.testing.assert_allclose(
        g, (1 - 2 * 0.3 + 2 * 0.3) + 2 * (3 * (1 - 0.6) + 18 * 0.3), rtol=1e-5
    )


# --- enumerated sites in je.scan / je.fori_loop bodies ------------------------------------

T = 4
W = np.array([1.0, -2.0, 0.5, 1.5])


def scan_prog(key, theta, bulk=False, fori=False):
    """T Bernoulli draws, step t with logit theta[t]; f = (sum_t W_t x_t)^2."""

    def step(carry, k):
        t, s = carry
        x = je.sample(k, D.Bernoulli(logits=theta[t]), estimator=je.enumeration())
        return (t + 1, s + jnp.asarray(W, jnp.float32)[t] * x), None

    if fori:
        (_, s) = je.fori_loop(0, T, lambda t, c: step(c, jax.random.fold_in(key, t))[0], (0, 0.0))
    elif bulk:
        # bulk iteration keys, in checkpointed segments of 3 + 1 iterations
        (_, s), _ = je.scan(
            lambda c, _, k: step(c, k), (0, 0.0), None, length=T, key=key, checkpoint_every=3
        )
    else:
        (_, s), _ = je.scan(step, (0, 0.0), jax.random.split(key, T))
    return s**2


def scan_exact_grad(theta):
    """d/dtheta_t sum_x prod_t p_t(x_t) f(x) = sum_x p(x) f(x) (x_t - sigmoid(theta_t))."""
    theta = np.asarray(theta, np.float64)
    p = sigmoid(theta)
    g = np.zeros(T)
    for xs in itertools.product((0.0, 1.0), repeat=T):
        x = np.array(xs)
        px = np.prod(np.where(x == 1, p, 1 - p))
        g += px * (W @ x) ** 2 * (x - p)
    return g


def test_scan_bernoulli_zero_variance():
    th = jnp.array([0.3, -0.5, 1.0, 0.2])
    exact = scan_exact_grad(th)
    for kw, run in (({}, jax.jit), ({}, None), ({"bulk": True}, jax.jit), ({"fori": True}, None)):
        prog = lambda k, t, kw=kw: scan_prog(k, t, **kw)
        est = je.grad_samples(prog, je.score_function(), num_samples=3)
        gs = (est if run is None else run(est))(KEY, th)
        assert_zero_variance(gs, exact)
    # the whole-program estimator is je.enumeration() itself; chunked; K = 2^T combinations
    (v, aux), g = je.value_and_grad(
        lambda k, t: (scan_prog(k, t), 0.0), je.enumeration(), num_samples=2, has_aux=True
    )(KEY, th)
    assert aux.shape == (2, 2**T)
    p = sigmoid(np.asarray(th, np.float64))
    exact_v = sum(
        np.prod(np.where(np.array(x) == 1, p, 1 - p)) * (W @ np.array(x)) ** 2
        for x in itertools.product((0.0, 1.0), repeat=T)
    )
    np.testing.assert_allclose(v, exact_v, rtol=1e-5)
    np.testing.assert_allclose(g, exact, rtol=2e-5, atol=2e-6)
    gc = je.grad(scan_prog, je.enumeration(), num_samples=5, chunk_size=2)(KEY, th)
    np.testing.assert_allclose(gc, exact, rtol=2e-5, atol=2e-6)


def test_scan_zero_probability_step_exact():
    # step 1 has p = 0 exactly: weight 0 with the exact derivative of its mass (no NaN)
    def prog(key, p):
        def step(s, kt):
            k, t = kt
            x = je.sample(k, D.Bernoulli(probs=p[t]), estimator=je.enumeration())
            return s + jnp.asarray(W, jnp.float32)[t] * x, None

        return je.scan(step, 0.0, (jax.random.split(key, T), jnp.arange(T)))[0] ** 2

    p = np.array([0.3, 0.0, 0.6, 0.9])
    g = np.zeros(T)  # d/dp_t sum_x prod p(x) f(x) = sum_x prod_{s != t} p_s(x_s) f (+/- 1)
    for xs in itertools.product((0.0, 1.0), repeat=T):
        x = np.array(xs)
        px = np.where(x == 1, p, 1 - p)
        for t in range(T):
            g[t] += np.prod(np.delete(px, t)) * (W @ x) ** 2 * (1 if x[t] else -1)
    gs = je.grad_samples(prog, je.auto(), num_samples=2)(KEY, jnp.asarray(p, jnp.float32))
    assert np.all(np.isfinite(gs))
    assert_zero_variance(gs, g)


def test_scan_categorical_select_zero_variance():
    logits = jnp.array([[0.3, -0.2, 0.5, 0.0], [1.0, 0.0, -1.0, 0.2], [0.0, 0.4, 0.1, -0.3]])

    def prog(key, lg):
        def step(s, kl):
            k, row = kl
            i = je.sample(k, D.Categorical(logits=row), estimator=je.enumeration())
            return s + je.select(jnp.asarray(TABLE, jnp.float32), i), None

        return jnp.sin(je.scan(step, 0.0, (jax.random.split(key, 3), lg))[0])

    def exact(t):
        p = np.exp(t) / np.exp(t).sum(-1, keepdims=True)
        return sum(
            p[0, a] * p[1, b] * p[2, c] * np.sin(TABLE[a] + TABLE[b] + TABLE[c])
            for a, b, c in itertools.product(range(4), repeat=3)
        )

    ref = exact_grad(exact, logits)
    for run in (lambda f: f, jax.jit):
        gs = run(je.grad_samples(prog, je.auto(), num_samples=3))(KEY, logits)
        assert_zero_variance(gs, ref)


def test_scan_mixed_with_score_site_outside_and_nested_loops():
    # z ~ Bernoulli(sigmoid(a)) by the score function before the loop; the loop's T = 3
    # steps (two nested loops of 1 + 2 sites) are enumerated with logit b + z
    def prog(key, th):
        k0, k1 = jax.random.split(key)
        z = je.sample(k0, D.Bernoulli(logits=th[0]), estimator=je.score_function("leave_one_out"))

        def inner(s, k):
            return s + je.sample(k, D.Bernoulli(logits=th[1] + z), estimator=je.enumeration()), None

        def outer(s, k):
            ka, kb = jax.random.split(k)
            s = s + 2.0 * je.sample(ka, D.Bernoulli(logits=th[1] - z), estimator=je.enumeration())
            return je.scan(inner, s, jax.random.split(kb, 2))[0], None

        s = je.scan(outer, 0.0, jax.random.split(k1, 2))[0]
        return (s - 2.0 * z) ** 2

    def exact(t):
        pz, total = sigmoid(t[0]), 0.0
        for z in (0.0, 1.0):
            q_in, q_out = sigmoid(t[1] + z), sigmoid(t[1] - z)
            for xs in itertools.product((0.0, 1.0), repeat=6):
                x = np.array(xs)  # outer draws at 0 and 3, inner draws at 1, 2, 4, 5
                q = np.array([q_out, q_in, q_in, q_out, q_in, q_in])
                w = np.prod(np.where(x == 1, q, 1 - q)) * (pz if z else 1 - pz)
                s = 2 * x[0] + x[1] + x[2] + 2 * x[3] + x[4] + x[5]
                total += w * (s - 2.0 * z) ** 2
        return total

    th = jnp.array([0.4, -0.3])
    ref = exact_grad(exact, th)
    gs = jax.jit(je.grad_samples(prog, je.auto(), num_samples=4000))(KEY, th)
    assert_unbiased(gs, ref, se_max=0.1)  # measured SE (0.015, 0.066)


def test_scan_budget_error():
    def prog(key, theta, n):
        def step(s, k):
            return s + je.sample(k, D.Bernoulli(logits=theta), estimator=je.enumeration()), None

        return je.scan(step, 0.0, jax.random.split(key, n))[0]

    for run in (lambda f: f, jax.jit):
        with pytest.raises(je.EstimatorError, match=r"11 iterations.*K = 2048 .*max_combin"):
            run(je.grad(lambda k, t: prog(k, t, 11), je.auto(), num_samples=2))(KEY, 0.1)

    # a site before the loop counts too: 4 * 2^9 = 2048
    def before(key, theta):
        k0, k1 = jax.random.split(key)
        x = je.sample(k0, D.Categorical(logits=jnp.zeros(4)), estimator=je.enumeration())
        return prog(k1, theta, 9) + x

    with pytest.raises(je.EstimatorError, match=r"K = 2048"):
        je.grad(before, je.auto(), num_samples=2)(KEY, 0.1)
    s = sigmoid(0.1) * (1 - sigmoid(0.1))
    g = je.grad(lambda k, t: prog(k, t, 10), je.auto(), num_samples=1)(KEY, 0.1)
    np.testing.assert_allclose(g, 10 * s, rtol=1e-4)


def test_scan_score_site_in_the_same_body_unbiased():
    # per step: x enumerated, y ~ Bernoulli(sigmoid(theta_t - x)) by the score function
    def prog(key, theta):
        def step(s, kt):
            k, t = kt
            k1, k2 = jax.random.split(k)
            x = je.sample(k1, D.Bernoulli(logits=theta[t]), estimator=je.enumeration())
            sf = je.score_function("leave_one_out")
            y = je.sample(k2, D.Bernoulli(logits=theta[t] - x), estimator=sf)
            return s + x * y + x, None

        return je.scan(step, 0.0, (jax.random.split(key, 2), jnp.arange(2)))[0] ** 2

    def exact(t):
        total = 0.0
        for x0, y0, x1, y1 in itertools.product((0, 1), repeat=4):
            w = 1.0
            for x, y, tt in ((x0, y0, t[0]), (x1, y1, t[1])):
                p, q = sigmoid(tt), sigmoid(tt - x)
                w *= (p if x else 1 - p) * (q if y else 1 - q)
            total += w * (x0 * y0 + x0 + x1 * y1 + x1) ** 2
        return total

    th = jnp.array([0.3, -0.5])
    gs = jax.jit(je.grad_samples(prog, je.auto(), num_samples=4000))(KEY, th)
    assert_unbiased(gs, exact_grad(exact, th), se_max=0.03)  # measured SE (0.017, 0.017)
