"""REBAR / RELAX (je.rebar, je.relax): unbiasedness against exact enumeration, the learned
control-variate state update, transforms (jit, chunk_size) and trace-time errors."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _stats import assert_unbiased

import jaxestim as je
from jaxestim import distributions as D

KEY = jax.random.key(0)
P = jnp.array([0.6, 0.51, 0.48])
N = 10_000


def toy(key, logits):
    x = je.sample(key, D.Bernoulli(logits=logits))
    return jnp.sum((x - P) ** 2)


def enumerate_bits(n):
    return [jnp.array(b) for b in itertools.product([0.0, 1.0], repeat=n)]


def toy_exact(logits):
    def expectation(lg):
        p = jax.nn.sigmoid(lg)
        return sum(
            jnp.prod(jnp.where(b > 0, p, 1 - p)) * jnp.sum((b - P) ** 2) for b in enumerate_bits(3)
        )

    return np.asarray(jax.grad(expectation)(logits))


def linear_surrogate(phi, z):
    return jnp.dot(phi["w"], z) + phi["c"]


PHI = {"w": jnp.array([0.3, -0.2, 0.1]), "c": jnp.asarray(0.5)}


def test_toy_unbiased():
    th = jnp.zeros(3)

    @jax.jit  # traced (lambda, eta): one compilation for every fixed pair
    def rebar_samples(lam, eta):
        return je.grad_samples(toy, je.rebar(lam, eta, learn=False), num_samples=N)(KEY, th)

    for lam, eta in ((0.3, 0.7), (0.3, 0.0), (2.0, 1.3)):
        gs = rebar_samples(jnp.float32(lam), jnp.float32(eta))
        assert_unbiased(gs, toy_exact(th), se_max=0.006)
    est = je.relax(linear_surrogate, PHI, 0.3, 0.7, learn=False)
    gs = je.grad_samples(toy, est, num_samples=N)(KEY, th)
    assert_unbiased(gs, toy_exact(th), se_max=0.006)


def dict_program(key, params):
    logits = params["w"] * jnp.array([1.0, -2.0, 0.5]) + params["b"]
    x = je.sample(key, D.Bernoulli(logits=logits))
    return jnp.sum((x - P) ** 2) + params["b"] ** 2


def test_dict_params_unbiased():
    params = {"w": jnp.asarray(0.4), "b": jnp.asarray(-0.3)}

    def expectation(prm):
        p = jax.nn.sigmoid(prm["w"] * jnp.array([1.0, -2.0, 0.5]) + prm["b"])
        e = sum(
            jnp.prod(jnp.where(b > 0, p, 1 - p)) * jnp.sum((b - P) ** 2) for b in enumerate_bits(3)
        )
        return e + prm["b"] ** 2

    exact = jax.grad(expectation)(params)
    for est in (
        je.rebar(0.5, 1.0, learn=False),
        je.relax(linear_surrogate, PHI, 0.5, 1.0, learn=False),
    ):
        gs = je.grad_samples(dict_program, est, num_samples=N)(KEY, params)
        for k in params:
            assert_unbiased(gs[k], exact[k], se_max=0.01)


def mixed(key, params):
    k1, k2 = jax.random.split(key)
    b = je.sample(k1, D.Bernoulli(logits=params["l"]))
    # a Normal site whose mean depends on the (relaxed) Bernoulli values: pathwise
    x = je.sample(k2, D.Normal(params["mu"] + b[0], 1.0))
    return (x + jnp.sum(b) - 1.0) ** 2


def mixed_exact(params):
    def expectation(prm):
        p = jax.nn.sigmoid(prm["l"])
        # E[(x + S - 1)^2 | b] = 1 + (mu + b_0 + S - 1)^2 for x ~ N(mu + b_0, 1)
        return sum(
            jnp.prod(jnp.where(b > 0, p, 1 - p))
            * (1.0 + (prm["mu"] + b[0] + jnp.sum(b) - 1.0) ** 2)
            for b in enumerate_bits(2)
        )

    return jax.grad(expectation)(params)


def test_mixed_normal_bernoulli_unbiased():
    params = {"l": jnp.array([0.3, -0.8]), "mu": jnp.asarray(0.2)}
    exact = mixed_exact(params)
    surrogate = lambda phi, z: jnp.dot(phi, z)
    for est in (
        je.rebar(0.5, 0.8, learn=False),
        je.relax(surrogate, jnp.array([0.2, -0.1]), 0.5, 0.8, learn=False),
    ):
        gs = je.grad_samples(mixed, est, num_samples=N)(KEY, params)
        for k in params:
            assert_unbiased(gs[k], exact[k], se_max=0.045)


def _fixed(est, state):
    """The estimator with the learned state's parameters, held fixed (for measurements)."""
    prm = state["params"]
    kw = {"temperature": jnp.exp(prm["log_temperature"]), "eta": prm["eta"], "learn": False}
    if isinstance(est, je.RELAX):
        return je.relax(est.surrogate, prm["phi"], **kw)
    return je.rebar(**kw)


@pytest.mark.parametrize("kind", ["rebar", "relax"])
def test_learning_reduces_variance(kind):
    th = jnp.zeros(3)
    if kind == "rebar":
        est = je.rebar(1.0, 0.0, learning_rate=0.05)
    else:
        est = je.relax(linear_surrogate, {"w": jnp.zeros(3), "c": jnp.zeros(())}, 1.0, 0.0,
                       learning_rate=0.05)  # fmt: skip
    state = est.init()
    step = jax.jit(lambda k, s: je.grad(toy, est, num_samples=32)(k, th, estimator_state=s))

    @jax.jit
    def samples(s):
        return je.grad_samples(toy, _fixed(est, s), num_samples=N)(jax.random.key(9), th)

    def measure(s):
        gs = samples(s)
        return gs, float(np.sum(np.var(np.asarray(gs), axis=0)))

    gs0, var0 = measure(state)

    def train(s, k):
        g, s = step(k, s)
        return s, g

    state, g = jax.lax.scan(train, state, jax.random.split(jax.random.key(1), 300))
    gs1, var1 = measure(state)
    print(f"{kind}: per-sample variance (sum over 3 coords) {var0:.4f} -> {var1:.4f}")
    # the variance of the variance estimate is small at N = 20000: 2x is far beyond noise
    assert var1 < 0.5 * var0
    assert_unbiased(gs0, toy_exact(th), se_max=0.006)
    assert_unbiased(gs1, toy_exact(th), se_max=0.006)
    # the estimates returned during training (N = 32 each, state changing) average to the
    # exact gradient too
    assert_unbiased(g, toy_exact(th), se_max=0.02)


def test_state_update_is_one_adam_step_on_mean_squared_norm():
    """new_state = one Adam step on d/d(log lambda, eta) of mean_i sum_p g_ip^2; the first
    Adam step moves each parameter by -lr * sign(gradient). Reference gradient: central
    finite differences of the same per-sample estimates (same key: same u, v) at fixed
    parameters."""
    th = jnp.array([0.3, -0.2, 0.0])
    lr, n = 0.1, 64
    est = je.rebar(0.5, 0.5, learning_rate=lr)
    state = est.init()
    g, new = je.grad(toy, est, num_samples=n)(KEY, th, estimator_state=state)
    fixed = je.rebar(0.5, 0.5, learn=False)
    np.testing.assert_allclose(g, je.grad(toy, fixed, num_samples=n)(KEY, th), rtol=1e-5)

    @jax.jit  # one compilation for the four evaluations (traced hyper-parameters)
    def per_sample(log_lam, eta):
        e = je.rebar(jnp.exp(log_lam), eta, learn=False)
        return je.grad_samples(toy, e, num_samples=n)(KEY, th)

    def mean_sq(log_lam, eta):
        gs = per_sample(jnp.float32(log_lam), jnp.float32(eta))
        return float(np.mean(np.sum(np.asarray(gs, np.float64) ** 2, axis=1)))

    h, ll = 1e-2, float(np.log(0.5))
    ref = {
        "log_temperature": (mean_sq(ll + h, 0.5) - mean_sq(ll - h, 0.5)) / (2 * h),
        "eta": (mean_sq(ll, 0.5 + h) - mean_sq(ll, 0.5 - h)) / (2 * h),
    }
    for name, d in ref.items():
        assert abs(d) > 1e-3, (name, d)
        step = float(new["params"][name] - state["params"][name])
        np.testing.assert_allclose(step, -lr * np.sign(d), rtol=1e-3)
    assert int(new["opt_state"][0].count) == 1


def test_jit_and_chunk_size():
    th = jnp.array([0.2, -0.4, 0.1])
    # stateful: chunked and jitted give the same estimate and the same new state
    est = je.rebar(0.4, 0.9)
    s = est.init()
    a, sa = je.grad(toy, est, num_samples=32)(KEY, th, estimator_state=s)
    b, sb = jax.jit(je.grad(toy, est, num_samples=32, chunk_size=16))(KEY, th, estimator_state=s)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    for x, y in zip(jax.tree_util.tree_leaves(sa), jax.tree_util.tree_leaves(sb), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-6)


def categorical(key, logits):
    return je.select(jnp.array([0.0, 1.0, 3.0]), je.sample(key, D.Categorical(logits=logits)))


def override(key, logits):
    x = je.sample(key, D.Bernoulli(logits=logits), estimator=je.score_function())
    return jnp.sum(x)


def poisson(key, logits):
    return je.sample(key, D.Poisson(jnp.exp(logits[0])))


def sequential(key, logits):
    k1, k2 = jax.random.split(key)
    b1 = je.sample(k1, D.Bernoulli(logits=logits[0]))
    b2 = je.sample(k2, D.Bernoulli(logits=logits[1] + 2.0 * b1))
    return b1 + b2


def walk(key, logits):
    # step probabilities depend on the position: a sequential model through the carry
    def body(pos, k):
        b = je.sample(k, D.Bernoulli(logits=logits[0] - 0.5 * pos))
        return pos + 2.0 * b - 1.0, None

    return je.scan(body, 0.0, jax.random.split(key, 4))[0]


def walk_bulk(key, logits):
    def body(pos, _, k):
        b = je.sample(k, D.Bernoulli(logits=logits[1] + 0.1 * pos))
        return pos + b, None

    return je.scan(body, 0.0, None, length=4, key=key)[0] ** 2


def cond_on_draw(key, logits):
    # which Bernoulli site runs depends on an earlier Bernoulli draw
    k1, k2 = jax.random.split(key)
    b = je.sample(k1, D.Bernoulli(logits=logits[0]))
    one = lambda: je.sample(k2, D.Bernoulli(logits=logits[1]))
    return b + je.cond(b > 0.5, one, lambda: jnp.asarray(0.0))


@pytest.mark.parametrize(
    "prog, match",
    [
        (categorical, "score_function"),
        (override, "override"),
        (poisson, "stochastic_ad"),
        (sequential, "depend on the value of another Bernoulli"),
        (walk, "through a je.scan carry"),
        (walk_bulk, "through a je.scan carry"),
        (cond_on_draw, "predicate depends on a Bernoulli value"),
    ],
)
@pytest.mark.parametrize("jit", [False, True])
def test_errors(prog, match, jit):
    # eagerly with je.rebar, under jax.jit with je.relax (both share the handler)
    est = je.relax(linear_surrogate, PHI, learn=False) if jit else je.rebar(learn=False)
    fn = je.grad(prog, est, num_samples=4)
    if jit:
        fn = jax.jit(fn)
    with pytest.raises(je.EstimatorError, match=match):
        fn(KEY, jnp.zeros(3))


def test_higher_order_raises_and_state_required():
    th = jnp.zeros(3)
    fn = je.grad(toy, je.rebar(learn=False), num_samples=4)
    with pytest.raises(je.EstimatorError, match="cannot be differentiated again"):
        jax.grad(lambda t: jnp.sum(fn(KEY, t)))(th)
    with pytest.raises(je.EstimatorError, match="cannot be differentiated again"):
        jax.jit(jax.jacfwd(lambda t: fn(KEY, t)))(th)
    with pytest.raises(TypeError, match="estimator_state"):
        je.grad(toy, je.rebar(), num_samples=4)(KEY, th)
    with pytest.raises(ValueError, match="temperature"):
        je.rebar(0.0)


# a je.scan of T independent Bernoulli draws, logits theta_t, nonlinear f of the draws
T = 6
W = np.array([1.0, -0.5, 0.8, 0.3, -1.2, 0.6])
TH6 = jnp.array([0.3, -0.5, 1.0, 0.0, -1.2, 0.7])


def _scan_f(s):
    return (s[0] - 0.4) ** 2 + s[1]


def _scan_step(carry, logit, w, k):
    s, prev = carry
    b = je.sample(k, D.Bernoulli(logits=logit))
    s = s + jnp.stack([w * b, 0.5 * b * prev])  # pairwise interaction with the last draw
    return (s, b), None


def scan_keys(key, theta):
    body = lambda c, x: _scan_step(c, x[1], x[2], x[0])
    xs = (jax.random.split(key, T), theta, jnp.asarray(W, jnp.float32))
    (s, _), _ = je.scan(body, (jnp.zeros(2), 0.0), xs)
    return _scan_f(s)


def scan_bulk(key, theta):
    # the same T draws as T/2 iterations of two sites each, from bulk words: the runs of
    # the estimator must lay the words out identically (the second site's u)
    def body(c, x, k):
        k1, k2 = k.split(2)
        c, _ = _scan_step(c, x[0][0], x[1][0], k1)
        return _scan_step(c, x[0][1], x[1][1], k2)

    xs = (theta.reshape(T // 2, 2), jnp.asarray(W, jnp.float32).reshape(T // 2, 2))
    (s, _), _ = je.scan(body, (jnp.zeros(2), 0.0), xs, key=key)
    return _scan_f(s)


def scan_exact(theta):
    """d/dtheta E[f] by enumerating the 2^T outcomes in float64 (score identity)."""
    p = 1.0 / (1.0 + np.exp(-np.asarray(theta, np.float64)))
    grad = np.zeros(T)
    for bits in itertools.product([0.0, 1.0], repeat=T):
        b = np.array(bits)
        prob = np.prod(np.where(b > 0, p, 1.0 - p))
        s0 = np.sum(W * b)
        s1 = 0.5 * np.sum(b[1:] * b[:-1])
        grad += prob * (b - p) * ((s0 - 0.4) ** 2 + s1)
    return grad


@pytest.mark.parametrize("prog", [scan_keys, scan_bulk])
def test_scan_unbiased(prog):
    exact = scan_exact(TH6)
    surrogate = lambda phi, z: jnp.dot(phi, z)  # z: every iteration's element (T of them)
    for est in (
        je.rebar(0.5, 0.9, learn=False),
        je.relax(surrogate, 0.1 * jnp.arange(T, dtype=jnp.float32), 0.5, 0.9, learn=False),
    ):
        gs = jax.jit(je.grad_samples(prog, est, num_samples=N))(KEY, TH6)
        assert_unbiased(gs, exact, se_max=0.012)


def branches(key, theta):
    # the predicate comes from a continuous site (x ~ N(0, 1), P(x > 0) = 1/2); the two
    # branches hold Bernoulli sites of different sizes
    k0, k1, k2 = jax.random.split(key, 3)
    x = je.sample(k0, D.Normal(0.0, 1.0))
    three = lambda: toy(k1, theta)
    one = lambda: 2.0 * je.sample(k2, D.Bernoulli(logits=theta[0]))
    return je.cond(x > 0, three, one)


def test_cond_unbiased():
    th = jnp.array([0.4, -0.3, 0.2])
    p0 = 1.0 / (1.0 + np.exp(-0.4))
    exact = 0.5 * toy_exact(th) + 0.5 * np.array([2.0 * p0 * (1 - p0), 0.0, 0.0])
    # RELAX only (REBAR runs the same handler): z has 4 slots, 3 + 1 for the two branches
    est = je.relax(linear_surrogate, {"w": jnp.full(4, 0.1), "c": 0.0}, 0.5, 0.8, learn=False)
    gs = jax.jit(je.grad_samples(branches, est, num_samples=N))(KEY, th)
    assert_unbiased(gs, exact, se_max=0.006)


def _jumpy_where(key, eta):
    b = je.sample(key, D.Bernoulli(logits=eta))
    return jnp.where(b > 0.5, 3.0, 1.0)  # a comparison: piecewise constant in relaxed b


def _jumpy_cond(key, eta):
    b = je.sample(key, D.Bernoulli(logits=eta))
    return je.cond(b, lambda: 3.0 * eta, lambda: eta)  # the predicate is the relaxed value


def _jumpy_round(key, eta):
    b = je.sample(key, D.Bernoulli(logits=eta))
    return jnp.round(b) * 2.0 + b.astype(jnp.int32)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("prog", [_jumpy_where, _jumpy_cond, _jumpy_round])
def test_discontinuous_programs_raise(prog, jit):
    """A relaxed value reaching a comparison / je.cond predicate / rounding would make the
    control variate silently biased: EstimatorError at trace time, eagerly and under jit."""
    wrap = jax.jit if jit else (lambda g: g)
    g = je.grad(prog, je.rebar(learn=False), num_samples=4)
    with pytest.raises(
        je.EstimatorError, match=r"(must reach the output\s+continuously|here it would be biased)"
    ):
        wrap(g)(jax.random.key(0), 0.3)
    if prog is not _jumpy_cond:  # (a je.cond on a draw also fails the independence check)
        # the check can be switched off (then the estimate is the user's responsibility)
        je.grad(prog, je.rebar(learn=False, check_continuity=False), num_samples=4)(
            jax.random.key(0), 0.3
        )


def test_continuous_activations_pass_the_continuity_check():
    """leaky_relu / elu / relu6 are written with a comparison and a select but are
    continuous: no false alarm (the nonlinear VAE of benchmarks/discrete_vae.py uses them)."""

    def prog(key, w):
        b = je.sample(key, D.Bernoulli(logits=w[:3]))
        h = jax.nn.leaky_relu(b @ jnp.ones((3, 4)) * w[3] - 0.5, 0.3)
        return jnp.sum((jax.nn.elu(h) + jax.nn.relu6(h)) ** 2)

    g = jax.jit(je.grad(prog, je.rebar(learn=False), num_samples=8))(jax.random.key(0), jnp.ones(4))
    assert bool(jnp.all(jnp.isfinite(g)))
