"""DisARM and ARM: unbiasedness against exact gradients, exact variances, errors.

Exact references are computed here in NumPy float64, independently of the estimators:
enumeration of the Bernoulli outcomes, closed forms, Gauss-Hermite quadrature, and the
joint law of the antithetic pair ``(b, b~)`` per coordinate: with ``b = 1[u > 1 - p]`` and
``b~ = 1[u < p]``, the uniform ``u`` falls in one of at most three intervals, giving
``P(1, 1) = max(0, 2p - 1)``, ``P(1, 0) = P(0, 1) = min(p, 1 - p)``,
``P(0, 0) = max(0, 1 - 2p)`` (and the conditional moments of ``u - 1/2`` that ARM needs).
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _stats import assert_unbiased

import jaxestim as je
from jaxestim import distributions as D

KEY = jax.random.key(11)
DISARM, ARM = je.disarm(), je.arm()
LOO = je.score_function("leave_one_out")


def sig(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def samples(f, est, theta, n, **kw):
    return jax.jit(je.grad_samples(f, est, num_samples=n, **kw))(KEY, theta)


# ---------------------------------------------------------------------------------------
# exact laws
# ---------------------------------------------------------------------------------------


def pair_law(p):
    """Per coordinate: ``(b, b~, probability, E[(u - 1/2)^2 | outcome])``."""
    out = []
    cuts = sorted({0.0, p, 1.0 - p, 1.0})
    for lo, hi in itertools.pairwise(cuts):
        if hi <= lo:
            continue
        mid = 0.5 * (lo + hi)
        m2 = ((hi - 0.5) ** 3 - (lo - 0.5) ** 3) / (3 * (hi - lo))
        out.append((int(mid > 1 - p), int(mid < p), hi - lo, m2))
    return out


def exact_variances(f, alpha):
    """Exact per-sample mean and variance (per coordinate, gradient in the logits) of DisARM,
    ARM and the leave-one-out score function with 2 samples (equal evaluations)."""
    alpha = np.asarray(alpha, np.float64)
    p, n = sig(alpha), alpha.size
    m_d, s_d, s_a = np.zeros(n), np.zeros(n), np.zeros(n)
    values = [set() for _ in range(n)]
    for combo in itertools.product(*(pair_law(pi) for pi in p)):
        b = np.array([c[0] for c in combo])
        bt = np.array([c[1] for c in combo])
        pr = np.prod([c[2] for c in combo])
        d = f(b) - f(bt)
        g = 0.5 * d * (b - bt) * sig(np.abs(alpha))
        m_d += pr * g
        s_d += pr * g**2
        s_a += pr * d**2 * np.array([c[3] for c in combo])
        for i in range(n):
            values[i].add(round(float(g[i]), 12))
    m_l, s_l = np.zeros(n), np.zeros(n)
    outs = [np.array(x) for x in itertools.product([0, 1], repeat=n)]
    for x1 in outs:
        for x2 in outs:
            pr = np.prod(np.where(x1, p, 1 - p)) * np.prod(np.where(x2, p, 1 - p))
            g = 0.5 * (f(x1) - f(x2)) * (x1 - x2)  # the mean of the two LOO estimates
            m_l += pr * g
            s_l += pr * g**2
    return {
        "mean": m_d,
        "disarm": s_d - m_d**2,
        "arm": s_a - m_d**2,
        "loo2": s_l - m_l**2,
        "disarm_values": [np.array(sorted(v)) for v in values],
    }


def assert_variance(x, exact, rel_se_max=0.05):
    """The empirical variance of ``x`` (per column) is within 5 SE of ``exact``."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    c = (x - x.mean(0)) ** 2
    v, se = c.mean(0) * len(x) / (len(x) - 1), c.std(0) / np.sqrt(len(x))
    exact = np.asarray(exact, np.float64)
    assert np.all(se < rel_se_max * exact + 1e-15), (se, exact)
    assert np.all(np.abs(v - exact) < 5 * se + 1e-12), (v, exact, se)


# ---------------------------------------------------------------------------------------
# unbiasedness
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("est", [DISARM, ARM], ids=["disarm", "arm"])
def test_single_bernoullis_with_direct_dependence(est):
    # x ~ Bernoulli(sigmoid(t0)), f = (x - t0)^2: the logit term and the pathwise term;
    # y ~ Bernoulli(probs=t1), d/dt1 E[(y - 1.5)^2] = 0.25 - 2.25 = -2
    def f(k, th):
        k1, k2 = jax.random.split(k)
        x = je.sample(k1, D.Bernoulli(logits=th[0]))
        y = je.sample(k2, D.Bernoulli(probs=th[1]))
        return (x - th[0]) ** 2 + (y - 1.5) ** 2

    t = 0.4
    p, dp = sig(t), sig(t) * (1 - sig(t))
    exact = [dp * ((1 - t) ** 2 - t**2) - 2 * p * (1 - t) + 2 * (1 - p) * t, -2.0]
    assert_unbiased(samples(f, est, jnp.array([t, 0.3]), 20_000), exact, 0.02)


def _vector_program(key, params):
    k1, k2 = jax.random.split(key)
    x = jnp.array([0.5, -1.0])
    logits = params["W"] @ x + params["c"]
    b = je.sample(k1, D.Bernoulli(logits=logits))
    b2 = je.sample(k2, D.Bernoulli(logits=params["c2"]))
    return (b @ jnp.array([1.0, -2.0, 0.7]) + 1.5 * b2 - 0.4) ** 2 + params["c2"] * b[0]


def test_vector_sites_dict_params_linear_logits():
    rng = np.random.default_rng(0)
    params = {
        "W": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
        "c": jnp.asarray(rng.normal(size=3), jnp.float32),
        "c2": jnp.asarray(0.3, jnp.float32),
    }
    W, c, c2 = (np.asarray(params[k], np.float64) for k in ("W", "c", "c2"))
    x = np.array([0.5, -1.0])
    alpha = np.append(W @ x + c, c2)
    p = sig(alpha)
    ga, gc2 = np.zeros(4), 0.0
    for bits in itertools.product([0, 1], repeat=4):
        bb = np.array(bits, np.float64)
        pr = np.prod(np.where(bb > 0, p, 1 - p))
        val = (bb[:3] @ np.array([1.0, -2.0, 0.7]) + 1.5 * bb[3] - 0.4) ** 2 + c2 * bb[0]
        ga += pr * (bb - p) * val  # d/d alpha of the enumerated expectation
        gc2 += pr * bb[0]
    exact = {"W": np.outer(ga[:3], x), "c": ga[:3], "c2": ga[3] + gc2}
    for est in (DISARM, ARM):
        s = samples(_vector_program, est, params, 20_000)
        for name, se_max in (("W", 0.03), ("c", 0.03), ("c2", 0.03)):
            assert_unbiased(s[name], exact[name], se_max)
        if est is DISARM:
            # je.grad (one reverse pass per chunk, chunks of 8192 and a remainder) is the
            # mean of the per-sample estimates
            g = je.grad(_vector_program, est, num_samples=20_000, chunk_size=8192)(KEY, params)
            for name in params:
                np.testing.assert_allclose(g[name], np.mean(s[name], 0), rtol=1e-3, atol=1e-5)


def test_normal_and_bernoulli_sites():
    # z ~ N(t0 + b1, 1) (a continuous site whose parameter depends on a Bernoulli draw),
    # f = (z - b2)^2 + t0 b2:  E[f | b] = 1 + (t0 + b1 - b2)^2 + t0 b2
    def f(key, t):
        k1, k2, k3 = jax.random.split(key, 3)
        b1 = je.sample(k1, D.Bernoulli(logits=t[1]))
        b2 = je.sample(k2, D.Bernoulli(logits=t[2]))
        z = je.sample(k3, D.Normal(t[0] + b1, 1.0))
        return (z - b2) ** 2 + t[0] * b2

    t = np.array([0.3, -0.5, 0.8])
    p1, p2 = sig(t[1]), sig(t[2])
    exact = np.zeros(3)
    for b1, b2 in itertools.product([0, 1], repeat=2):
        pr = (p1 if b1 else 1 - p1) * (p2 if b2 else 1 - p2)
        val = 1 + (t[0] + b1 - b2) ** 2 + t[0] * b2
        exact[0] += pr * (2 * (t[0] + b1 - b2) + b2)
        exact[1] += pr * (b1 - p1) * val
        exact[2] += pr * (b2 - p2) * val
    for est in (DISARM, ARM):
        assert_unbiased(samples(f, est, jnp.asarray(t, jnp.float32), 20_000), exact, 0.05)

    # logits that depend on a continuous sample (pathwise through it): z ~ N(t, 1),
    # b ~ Bernoulli(sigmoid(z)), f = b + z^2; d/dt E = E[sigmoid'(t + e)] + 2t
    def h(key, th):
        k1, k2 = jax.random.split(key)
        z = je.sample(k1, D.Normal(th, 1.0))
        return je.sample(k2, D.Bernoulli(logits=z)) + z**2

    x, w = np.polynomial.hermite_e.hermegauss(80)
    exact_h = np.sum(w * sig(0.2 + x) * (1 - sig(0.2 + x))) / np.sqrt(2 * np.pi) + 0.4
    assert_unbiased(samples(h, DISARM, 0.2, 20_000), exact_h, 0.02)


def test_scan_of_independent_bernoullis():
    # n = sum_t b_t, b_t ~ Bernoulli(p (1 - t / 20)) independent; f = n^2 (nonlinear)
    T = 10

    def f(key, p):
        def step(n, xs):
            k, i = xs
            return n + je.sample(k, D.Bernoulli(probs=p * (1 - i / 20))), None

        keys = jax.random.split(key, T)
        return je.scan(step, jnp.zeros_like(p), (keys, jnp.arange(T, dtype=jnp.float32)))[0] ** 2

    def f_bulk(key, p):  # the same law, je.scan(key=...) bulk randomness, logits sites
        def step(n, i, k):
            lg = jnp.log(p * (1 - i / 20)) - jnp.log1p(-p * (1 - i / 20))
            return n + je.sample(k, D.Bernoulli(logits=lg)), None

        return je.scan(step, jnp.zeros_like(p), jnp.arange(T, dtype=jnp.float32), key=key)[0] ** 2

    p = 0.4
    # dynamic program over the law of n and its derivative in p
    pi, dpi = np.zeros(T + 1), np.zeros(T + 1)
    pi[0] = 1.0
    for i in range(T):
        q, dq = p * (1 - i / 20), 1 - i / 20
        new, dnew = pi * (1 - q), dpi * (1 - q) - pi * dq
        new[1:] += (pi * q)[:-1]
        dnew[1:] += (dpi * q + pi * dq)[:-1]
        pi, dpi = new, dnew
    exact = float(np.arange(T + 1) ** 2 @ dpi)
    assert_unbiased(samples(f, DISARM, p, 20_000), exact, 1.0)
    assert_unbiased(samples(f_bulk, ARM, p, 20_000), exact, 1.0)


# ---------------------------------------------------------------------------------------
# exact variances
# ---------------------------------------------------------------------------------------


def _loo_pairs(f, theta, m):
    """``m`` leave-one-out estimates with 2 samples each (2 evaluations, as one DisARM pair)."""
    g = je.grad(f, LOO, num_samples=2)
    keys = jax.random.split(jax.random.key(5), m)
    return jax.jit(jax.vmap(lambda k: g(k, theta)))(keys)


def test_single_bernoulli_exact_variance():
    c = 0.499
    f = lambda k, eta: (je.sample(k, D.Bernoulli(logits=eta)) - c) ** 2
    delta = (1 - c) ** 2 - c**2
    grad = jax.jit(je.grad_samples(f, DISARM, num_samples=20_000))
    # p = 1/2: b~ = 1 - b always, every per-sample estimate is the exact gradient
    s0 = np.asarray(grad(KEY, 0.0), np.float64)
    np.testing.assert_allclose(s0, delta / 4, rtol=1e-4)
    rows = []
    for eta in (0.7, -1.5):
        ex = exact_variances(lambda x: (x[0] - c) ** 2, [eta])
        s = np.asarray(grad(KEY, eta), np.float64)
        # every per-sample value is one of the pair law's outcome values, 0 or
        # delta sigma(|eta|) / 2, and the outcome frequencies match the law
        vals = ex["disarm_values"][0]
        assert vals.size == 2 and np.isclose(vals[1], delta * sig(abs(eta)) / 2)
        nz = np.abs(s) > vals[1] / 2
        np.testing.assert_allclose(s[nz], vals[1], rtol=1e-3)
        np.testing.assert_allclose(s[~nz], 0.0, atol=1e-9)
        m = min(sig(eta), 1 - sig(eta))
        freq, se = nz.mean(), np.sqrt(2 * m * (1 - 2 * m) / s.size)
        assert abs(freq - 2 * m) < 5 * se
        assert_variance(s, ex["disarm"])
        assert np.isclose(ex["disarm"][0], (delta * sig(abs(eta)) / 2) ** 2 * 2 * m * (1 - 2 * m))
        loo = np.asarray(_loo_pairs(f, eta, 20_000), np.float64)
        assert_variance(loo, ex["loo2"])
        rows.append((eta, ex["disarm"][0], ex["arm"][0], ex["loo2"][0]))
        assert ex["disarm"][0] < ex["loo2"][0]
    print("\nsingle Bernoulli, f = (x - 0.499)^2, exact per-sample variance (2 evaluations)")
    for r in rows:
        print("eta {:5.2f}  disarm {:.4g}  arm {:.4g}  loo(N=2) {:.4g}".format(*r))


def test_three_bernoulli_toy_exact_variance():
    target = np.array([0.6, 0.51, 0.48])
    f = lambda k, th: jnp.sum((je.sample(k, D.Bernoulli(logits=th)) - target) ** 2)
    fn = lambda x: np.sum((x - target) ** 2)
    ex = exact_variances(fn, np.zeros(3))
    np.testing.assert_allclose(ex["mean"], 0.25 * (1 - 2 * target), atol=1e-12)
    # closed forms at p = 1/2 (b~ = 1 - b): d = 1 - 2 target,
    # DisARM var_i = sum_{j != i} d_j^2 / 16, ARM var_i = sum_j d_j^2 / 12 - d_i^2 / 16
    d = 1 - 2 * target
    np.testing.assert_allclose(ex["disarm"], (np.sum(d**2) - d**2) / 16, atol=1e-12)
    np.testing.assert_allclose(ex["arm"], np.sum(d**2) / 12 - d**2 / 16, atol=1e-12)
    theta = jnp.zeros(3)
    sd = np.asarray(samples(f, DISARM, theta, 20_000), np.float64)
    sa = np.asarray(samples(f, ARM, theta, 20_000), np.float64)
    sl = np.asarray(_loo_pairs(f, theta, 20_000), np.float64)
    for i in range(3):  # DisARM's values are the pair law's outcome values exactly
        dist = np.min(np.abs(sd[:, i, None] - ex["disarm_values"][i][None, :]), axis=1)
        assert np.all(dist < 1e-6)
    assert_variance(sd, ex["disarm"])
    assert_variance(sa, ex["arm"])
    assert_variance(sl, ex["loo2"])
    for s in (sd, sa, sl):
        assert_unbiased(s, ex["mean"], 0.001)
    print("\nthree-Bernoulli toy, exact per-sample variance per coordinate (sum)")
    for name in ("disarm", "arm", "loo2"):
        print(f"{name:7s} {np.array2string(ex[name], precision=6)}  sum {ex[name].sum():.6f}")
    assert ex["disarm"].sum() < ex["arm"].sum()
    np.testing.assert_allclose(
        [ex["disarm"].sum(), ex["arm"].sum(), ex["loo2"].sum()], [0.00525, 0.007875, 0.007875]
    )


# ---------------------------------------------------------------------------------------
# errors and edge cases
# ---------------------------------------------------------------------------------------


def _dependent(key, t):
    k1, k2 = jax.random.split(key)
    b1 = je.sample(k1, D.Bernoulli(logits=t))
    return b1 + je.sample(k2, D.Bernoulli(logits=t + b1))


def _walk(key, p):  # step probabilities depend on the carry, hence on earlier draws
    def step(n, k):
        return n + je.sample(k, D.Bernoulli(probs=p * (1 - n / 20))), None

    return je.scan(step, jnp.zeros_like(p), jax.random.split(key, 5))[0]


def _branch(key, t):  # which Bernoulli site runs depends on a draw
    k1, k2 = jax.random.split(key)
    b1 = je.sample(k1, D.Bernoulli(logits=t))
    return je.cond(b1 > 0, lambda: je.sample(k2, D.Bernoulli(logits=t)), lambda: 0.5)


def _categorical(key, t):
    return je.sample(key, D.Categorical(logits=jnp.stack([t, -t])))


def _poisson(key, t):
    return je.sample(key, D.Poisson(t))


def _override(key, t):
    return je.sample(key, D.Bernoulli(logits=t), estimator=je.score_function())


@pytest.mark.parametrize(
    ("fun", "match"),
    [
        (_dependent, "depend on an earlier Bernoulli draw"),
        (_walk, "depend on an earlier Bernoulli draw"),
        (_branch, "depend on an earlier Bernoulli draw"),
        (_categorical, "ARSM"),
        (_poisson, "Poisson"),
        (_override, "override"),
    ],
)
def test_errors_eager_and_jit(fun, match):
    for est in (DISARM, ARM):
        t = 0.3
        with pytest.raises(je.EstimatorError, match=match) as e:
            je.grad(fun, est, num_samples=4)(KEY, t)
        if "override" not in match:
            assert "score_function" in str(e.value) and "stochastic_ad" in str(e.value)
        with pytest.raises(je.EstimatorError, match=match):
            jax.jit(je.grad_samples(fun, est, num_samples=4))(KEY, t)


def test_allowed_control_flow_and_transforms():
    # a je.cond on the parameter (not a draw), and a draw used after all Bernoulli sites
    def f(key, t):
        k1, k2 = jax.random.split(key)
        b = je.sample(k1, D.Bernoulli(logits=t))
        y = je.cond(t > 0, lambda: je.sample(k2, D.Bernoulli(logits=-t)), lambda: 0.0)
        return (b + 2 * y - 0.5) ** 2

    t = 0.6
    p, q = sig(t), sig(-t)
    ex = sum(
        (p if b else 1 - p) * (q if y else 1 - q) * (b + 2 * y - 0.5) ** 2
        for b in (0, 1)
        for y in (0, 1)
    )
    exact = sum(
        (p if b else 1 - p) * (q if y else 1 - q) * ((b - p) - (y - q)) * (b + 2 * y - 0.5) ** 2
        for b in (0, 1)
        for y in (0, 1)
    )
    s = samples(f, DISARM, t, 20_000)
    assert_unbiased(s, exact, 0.02)
    # jax.vmap over the parameter; value_and_grad's value is the antithetic mean of f
    vg = jax.vmap(lambda th: je.value_and_grad(f, DISARM, num_samples=20_000)(KEY, th))
    v, g = vg(jnp.array([t, 0.9]))
    assert abs(float(v[0]) - ex) < 0.04
    assert abs(float(g[0]) - exact) < 5 * np.std(s) / np.sqrt(20_000)
    assert np.isfinite(g[1])


def test_higher_order_raises_and_boundaries():
    f = lambda k, t: je.sample(k, D.Bernoulli(logits=t)) ** 2
    g = je.grad(f, DISARM, num_samples=8)
    with pytest.raises(je.EstimatorError, match="cannot be differentiated again"):
        jax.grad(lambda t: g(KEY, t))(0.3)
    with pytest.raises(je.EstimatorError, match="cannot be differentiated again"):
        jax.jit(jax.grad(lambda t: g(KEY, t)))(0.3)
    # probs at the boundary 0 that moves with theta: NaN (never a silent 0); a constant
    # boundary parameter is fine
    moving = lambda k, t: je.sample(k, D.Bernoulli(probs=t))
    assert np.isnan(je.grad(moving, ARM, num_samples=8)(KEY, 0.0))
    assert np.isnan(je.grad(moving, DISARM, num_samples=8)(KEY, 0.0))

    def fixed(key, t):
        k1, k2 = jax.random.split(key)
        return je.sample(k1, D.Bernoulli(probs=0.0 * t)) + je.sample(k2, D.Bernoulli(logits=t))

    assert_unbiased(samples(fixed, DISARM, 0.3, 4000), sig(0.3) * (1 - sig(0.3)), 0.01)


def test_mask_and_aux():
    # a masked element is not flipped in the antithetic run and adds no term: the estimate
    # is the gradient of the two active elements' cost (and of E[z^2] = t^2 + 1)
    def f(k, t):
        k1, k2 = jax.random.split(k)
        mask = jnp.array([True, False, True])
        b = je.sample(k1, D.Bernoulli(logits=t), sample_shape=(3,), mask=mask)
        z = je.sample(k2, D.Normal(t, 1.0))
        return jnp.sum((b - 0.3) ** 2) + z**2, b

    t = 0.2
    s, b = samples(f, DISARM, t, 20_000, has_aux=True)
    assert b.shape == (20_000, 3)
    exact = 2 * sig(t) * (1 - sig(t)) * (0.49 - 0.09) + 2 * t
    assert_unbiased(s, exact, 0.02)
