"""Control flow with sample sites (je.cond / je.switch / je.while_loop), masks, key rules,
and sites inside plain JAX control flow. Exact references by enumeration, closed form and
dynamic programming (NumPy float64), independent of the estimators."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _stats import assert_unbiased
from scipy import stats

import jaxestim as je
from jaxestim import distributions as D

KEY = jax.random.key(11)
SF = je.score_function()
LOO = je.score_function("leave_one_out")
SAD = je.stochastic_ad()


def samples(f, est, theta, n, key=KEY):
    return np.asarray(jax.jit(je.grad_samples(f, est, num_samples=n))(key, theta))


# --------------------------------------------------------------------------------------
# je.cond on a discrete sample: E[f] = t (3t) + (1 - t)(2t + 1) = t^2 + t + 1, d/dt = 2t + 1
# --------------------------------------------------------------------------------------


def cond_program(key, t, shared_key=False):
    k1, k2, k3 = jax.random.split(key, 3)
    x = je.sample(k1, D.Bernoulli(probs=t))
    kb = k2 if shared_key else k3
    return je.cond(
        x > 0,
        lambda: je.sample(k2, D.Poisson(3 * t)),
        lambda: 2.0 * je.sample(kb, D.Bernoulli(probs=t)) + 1.0,
    )


T0 = 0.3
COND_EXACT = 2 * T0 + 1


def test_cond_outside_transforms_is_lax_cond():
    v = jax.jit(cond_program)(KEY, T0)
    assert np.isfinite(float(v))


@pytest.mark.parametrize(
    "est, se_max",
    [(SF, 0.1), (LOO, 0.06), (je.auto(), 0.06), (SAD, 0.05)],
    ids=["score", "loo", "auto", "stochastic_ad"],
)
@pytest.mark.parametrize("shared_key", [False, True], ids=["own_keys", "shared_key"])
def test_cond_on_discrete_sample(est, se_max, shared_key):
    f = lambda k, t: cond_program(k, t, shared_key)
    assert_unbiased(samples(f, est, T0, 8000), COND_EXACT, se_max)


def test_cond_finite_differences_exact_for_quadratic_expectation():
    # E[f] is quadratic in t, so the central difference of the expectation is exact.
    est = je.finite_difference(step=0.05)
    assert_unbiased(samples(cond_program, est, T0, 8000), COND_EXACT, 0.2)


def test_switch_on_categorical_by_enumeration():
    probs = lambda t: jnp.stack([1 - t - t**2, t**2, t])

    def f(key, t):
        k1, k2 = jax.random.split(key)
        i = je.sample(k1, D.Categorical(probs=probs(t)))
        return je.switch(
            i,
            [
                lambda: 1.0,
                lambda: 4.0 * je.sample(k2, D.Bernoulli(probs=t)),
                lambda: je.sample(k2, D.Poisson(2 * t)) + 2.0,
            ],
        )

    t = 0.2
    # E = t^2 * 4t + t (2t + 2) + (1 - t - t^2)
    exact = 12 * t**2 + 4 * t + 2 - 1 - 2 * t
    for est, se in [(LOO, 0.18), (SAD, 0.3)]:
        assert_unbiased(samples(f, est, t, 2000), exact, se)


def test_cond_with_pathwise_branch_under_auto():
    # x ~ Bernoulli(t); y ~ N(t, 1) in one branch only: E = t (t^2 + 1) + (1 - t) * 2t
    def f(key, t):
        k1, k2 = jax.random.split(key)
        x = je.sample(k1, D.Bernoulli(probs=t))
        return je.cond(x > 0, lambda: je.sample(k2, D.Normal(t, 1.0)) ** 2, lambda: 2 * t)

    t = 0.4
    exact = 3 * t**2 + 1 + 2 - 4 * t
    assert_unbiased(samples(f, je.auto(), t, 8000), exact, 0.05)


# --------------------------------------------------------------------------------------
# je.while_loop: number of trials until the first success, E[n] = 1/t, d/dt = -1/t^2
# --------------------------------------------------------------------------------------


def trials(key, t, max_iterations=80):
    def body(c):
        key, n, _ = c
        key, sub = jax.random.split(key)
        x = je.sample(sub, D.Bernoulli(probs=t))
        return key, n + 1.0, x > 0

    _, n, _ = je.while_loop(
        lambda c: ~c[2], body, (key, jnp.zeros(()), jnp.array(False)), max_iterations=max_iterations
    )
    return n


@pytest.mark.parametrize("est, se_max", [(LOO, 0.15), (SAD, 0.13)], ids=["loo", "stochastic_ad"])
def test_while_loop_geometric_trial_count(est, se_max):
    t = 0.5
    assert_unbiased(samples(trials, est, t, 8000), -1 / t**2, se_max)


def test_while_loop_finite_differences_and_plain_lax_loop():
    t, h = 0.5, 0.05
    # central difference of the exact expectation 1/t
    exact_fd = (1 / (t + h) - 1 / (t - h)) / (2 * h)
    est = je.finite_difference(step=h)
    assert_unbiased(samples(trials, est, t, 8000), exact_fd, 0.5)
    # finite differences do not need max_iterations (plain jax.lax.while_loop)
    unbounded = lambda k, t: trials(k, t, max_iterations=None)
    assert_unbiased(samples(unbounded, est, t, 8000), exact_fd, 0.5)


def test_while_loop_unfinished_gives_nan_not_a_truncated_value():
    v = je.value_and_grad(lambda k, t: trials(k, t, max_iterations=2), LOO, num_samples=64)(
        KEY, 0.05
    )
    assert np.isnan(float(v[0]))
    # outside transforms too
    assert np.isnan(float(trials(KEY, 0.01, max_iterations=1)))


def test_while_loop_needs_max_iterations_under_reverse_mode_estimators():
    f = lambda k, t: trials(k, t, max_iterations=None)
    for est in [SF, SAD, je.pathwise()]:
        with pytest.raises(je.EstimatorError, match="max_iterations"):
            je.grad(f, est, num_samples=4)(KEY, 0.5)
    with pytest.raises(ValueError, match="max_iterations"):
        je.grad(lambda k, t: trials(k, t, max_iterations=0), SF, num_samples=4)(KEY, 0.5)


# --------------------------------------------------------------------------------------
# A queue until it empties: q' = q + Poisson(lam) - Bernoulli(mu), from q = 2, T = steps.
# Reference by dynamic programming over the queue length (forward-mode in lam).
# --------------------------------------------------------------------------------------

Q0, MU, LAM, HORIZON = 2, 0.7, 0.3, 80


def queue_exact(lam=LAM, mu=MU, q0=Q0, horizon=HORIZON, qmax=80):
    pi = np.zeros(qmax + 1)
    dpi = np.zeros(qmax + 1)
    pi[q0] = 1.0
    a = np.arange(qmax + 1)
    pa = stats.poisson.pmf(a, lam)
    dpa = pa * (a / lam - 1)
    e_t = de_t = 0.0
    for _ in range(horizon):
        alive, dalive = pi[1:].sum(), dpi[1:].sum()
        e_t += alive
        de_t += dalive
        new, dnew = np.zeros_like(pi), np.zeros_like(pi)
        new[0], dnew[0] = pi[0], dpi[0]
        for q in range(1, qmax + 1):
            for s, ps in ((1, mu), (0, 1 - mu)):
                base = q - s
                hi = qmax - base
                new[base : base + hi + 1] += pi[q] * ps * pa[: hi + 1]
                dnew[base : base + hi + 1] += ps * (dpi[q] * pa[: hi + 1] + pi[q] * dpa[: hi + 1])
        pi, dpi = new, dnew
    return e_t, de_t, pi[1:].sum()


def queue_while(key, lam):
    def body(c):
        key, q, t = c
        key, ka, ks = jax.random.split(key, 3)
        a = je.sample(ka, D.Poisson(lam))
        s = je.sample(ks, D.Bernoulli(probs=MU))
        return key, q + a - s, t + 1.0

    init = (key, jnp.asarray(float(Q0)), jnp.zeros(()))
    return je.while_loop(lambda c: c[1] > 0, body, init, max_iterations=HORIZON)[2]


def queue_masked(key, lam, use_mask=True):
    def step(c, k):
        q, t = c
        active = q > 0
        ka, ks = jax.random.split(k)
        m = active if use_mask else None
        a = je.sample(ka, D.Poisson(lam), mask=m)
        s = je.sample(ks, D.Bernoulli(probs=MU), mask=m)
        return (jnp.where(active, q + a - s, q), t + active), None

    init = (jnp.asarray(float(Q0)), jnp.zeros(()))
    return je.scan(step, init, jax.random.split(key, HORIZON))[0][1]


def test_queue_reference_is_converged():
    e_t, de_t, unfinished = queue_exact()
    assert unfinished < 1e-6
    # skip-free random walk: E[T] = q0 / (mu - lam), d/dlam = q0 / (mu - lam)^2
    assert abs(e_t - Q0 / (MU - LAM)) < 1e-3
    assert abs(de_t - Q0 / (MU - LAM) ** 2) < 1e-2


@pytest.mark.parametrize("est, se_max", [(LOO, 1.5), (SAD, 0.6)], ids=["loo", "stochastic_ad"])
def test_queue_until_empty_while_loop(est, se_max):
    _, exact, _ = queue_exact()
    assert_unbiased(samples(queue_while, est, LAM, 2000), exact, se_max)


@pytest.mark.parametrize("est, se_max", [(LOO, 1.5), (SAD, 0.6)], ids=["loo", "stochastic_ad"])
def test_queue_masked_scan_is_exact_and_less_noisy(est, se_max):
    _, exact, _ = queue_exact()
    masked = samples(queue_masked, est, LAM, 2000)
    assert_unbiased(masked, exact, se_max)
    unmasked = samples(lambda k, lam: queue_masked(k, lam, use_mask=False), est, LAM, 2000)
    assert_unbiased(unmasked, exact, 3 * se_max)
    # the steps after the queue emptied add noise only without the mask
    assert np.std(masked) < 0.85 * np.std(unmasked)


def test_mask_removes_pathwise_derivative_of_inactive_draws():
    def f(key, t):
        x = je.sample(key, D.Normal(t, 1.0), (4,), mask=jnp.array([True, False, True, False]))
        return jnp.sum(x)

    g = je.grad(f, je.pathwise(), num_samples=3)(KEY, 0.5)
    assert float(g) == pytest.approx(2.0)


def test_mask_errors():
    f = lambda k, t: je.sample(k, D.Normal(t, 1.0), (3,), mask=jnp.ones((2,), bool))
    with pytest.raises(ValueError, match="mask"):
        je.grad(f, je.pathwise())(KEY, 0.5)
    g = lambda k, t: je.sample(k, D.Normal(t, 1.0), mask=1.0)
    with pytest.raises(TypeError, match="mask"):
        je.grad(g, je.pathwise())(KEY, 0.5)


# --------------------------------------------------------------------------------------
# sites inside plain JAX control flow: a clear error at trace time, also under the user's jit
# --------------------------------------------------------------------------------------


def lax_cond_program(key, t):
    x = je.sample(key, D.Bernoulli(probs=t))
    return jax.lax.cond(
        x > 0, lambda: je.sample(jax.random.fold_in(key, 1), D.Bernoulli(probs=t)), lambda: 0.0
    )


def lax_while_program(key, t):
    def body(c):
        k, n, _ = c
        k, sub = jax.random.split(k)
        return k, n + 1.0, je.sample(sub, D.Bernoulli(probs=t)) > 0

    return jax.lax.while_loop(lambda c: ~c[2], body, (key, 0.0, jnp.array(False)))[1]


@pytest.mark.parametrize("program", [lax_cond_program, lax_while_program], ids=["cond", "while"])
@pytest.mark.parametrize("est", [SF, je.auto(), SAD], ids=["score", "auto", "stochastic_ad"])
@pytest.mark.parametrize("wrap", ["eager", "user_jit", "user_vmap", "user_scan"])
def test_sites_in_plain_lax_control_flow_raise(program, est, wrap):
    g = je.grad(program, est, num_samples=4)
    if wrap == "eager":
        call = lambda: g(KEY, 0.5)
    elif wrap == "user_jit":
        call = lambda: jax.jit(g)(KEY, 0.5)
    elif wrap == "user_vmap":
        call = lambda: jax.vmap(g, in_axes=(None, 0))(KEY, jnp.array([0.3, 0.5]))
    else:

        def train(t):
            return jax.lax.scan(lambda t, _: (t - 0.1 * g(KEY, t), None), t, None, length=2)[0]

        call = lambda: train(0.5)
    with pytest.raises(je.EstimatorError, match=r"je\.cond|je\.while_loop"):
        call()


def test_sites_in_inner_vmap_raise_but_pathwise_is_allowed():
    def f(key, t):
        keys = jax.random.split(key, 3)
        return jnp.sum(jax.vmap(lambda k: je.sample(k, D.Bernoulli(probs=t)))(keys))

    with pytest.raises(je.EstimatorError, match="sample_shape"):
        je.grad(f, SF, num_samples=4)(KEY, 0.5)

    def g(key, t):
        keys = jax.random.split(key, 3)
        return jnp.sum(jax.vmap(lambda k: je.sample(k, D.Normal(t, 1.0)))(keys))

    assert float(je.grad(g, je.pathwise(), num_samples=4)(KEY, 0.5)) == pytest.approx(3.0)


# --------------------------------------------------------------------------------------
# reused keys
# --------------------------------------------------------------------------------------


def reused_key_program(key, t):
    x = je.sample(key, D.Bernoulli(probs=t))
    y = je.sample(key, D.Bernoulli(probs=t))
    return 2 * x - y  # reduces to x: true gradient 1.0


@pytest.mark.parametrize(
    "est",
    [SF, LOO, SAD, je.finite_difference(), je.straight_through(), je.auto()],
    ids=["score", "loo", "stochastic_ad", "fd", "straight_through", "auto"],
)
def test_reused_key_raises(est):
    with pytest.raises(je.EstimatorError, match="same PRNG key"):
        je.grad(reused_key_program, est, num_samples=4)(KEY, 0.5)
    with pytest.raises(je.EstimatorError, match="same PRNG key"):
        jax.jit(je.grad(reused_key_program, est, num_samples=4))(KEY, 0.5)


def test_loop_invariant_key_raises():
    def f(key, t):
        def step(c, _):
            return c + je.sample(key, D.Bernoulli(probs=t)), None

        return je.scan(step, 0.0, None, length=5)[0]

    for est in [SF, SAD]:
        with pytest.raises(je.EstimatorError, match="outside the loop"):
            je.grad(f, est, num_samples=4)(KEY, 0.5)


def test_fold_in_per_iteration_key_is_fine():
    def f(key, t):
        def step(c, i):
            return c + je.sample(jax.random.fold_in(key, i), D.Bernoulli(probs=t)), None

        return je.scan(step, 0.0, jnp.arange(5))[0]

    assert_unbiased(samples(f, SAD, 0.5, 4000), 5.0, 0.1)


# --------------------------------------------------------------------------------------
# stochastic_ad: zero-probability categories
# --------------------------------------------------------------------------------------


def test_issue_reproducer_zero_mass_categories_in_the_middle():
    def f(k, p):
        z = 0 * p
        probs = jnp.stack([z, p**2, z, z, 1 - p**2])
        return je.select(jnp.arange(1.0, 6.0), je.sample(k, D.Categorical(probs=probs)))

    # E = 2 p^2 + 5 (1 - p^2): derivative -6 p = -3 at p = 0.5
    assert_unbiased(samples(f, SAD, 0.5, 20_000), -3.0, 0.05)


@pytest.mark.parametrize("onehot", [False, True], ids=["Categorical", "OneHotCategorical"])
@pytest.mark.parametrize(
    "layout",
    [
        # (probability vector as a function of t, values, derivative at t0, t0)
        ("ends", lambda t, z: jnp.stack([z, t, 1 - t, z]), [7.0, 1.0, 3.0, 9.0], 0.4),
        ("middle", lambda t, z: jnp.stack([t, z, z, 1 - t]), [1.0, 7.0, 9.0, 4.0], 0.4),
        ("mixed", lambda t, z: jnp.stack([z, t / 2, z, t / 2, z, 1 - t]), [0, 2, 8, 4, 9, 1], 0.3),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_zero_mass_categories(layout, onehot):
    _, probs, values, t0 = layout
    values = jnp.asarray(values, jnp.float32)
    cls = D.OneHotCategorical if onehot else D.Categorical

    def f(k, t):
        x = je.sample(k, cls(probs=probs(t, 0 * t)))
        return je.select(values, x) if not onehot else jnp.sum(values * x)

    dp = np.asarray(jax.jacfwd(lambda t: probs(t, 0 * t))(t0))
    exact = float(dp @ np.asarray(values))
    assert_unbiased(samples(f, SAD, t0, 10_000), exact, 0.06)


def test_zero_mass_categories_whose_probability_grows_at_the_boundary():
    # probs [1 - 2t, t, t] at t = 0: the mass leaving category 0 splits between 1 and 2.
    values = jnp.array([0.0, 3.0, 10.0])
    f = lambda k, t: je.select(
        values, je.sample(k, D.Categorical(probs=jnp.stack([1 - 2 * t, t, t])))
    )
    assert_unbiased(samples(f, SAD, 0.0, 2000), 13.0, 0.2)
    g = lambda k, t: je.select(
        values, je.sample(k, D.Categorical(probs=jnp.stack([1 - t - t**2, t**2, t])))
    )
    assert_unbiased(samples(g, SAD, 0.0, 2000), 10.0, 0.05)


def test_stochastic_triple_prints_the_change():
    # Binomial(10, p) with dp = +1 only jumps up, by one, at rate 2 (10 - k): the triple
    # prints the change (+1), not the alternative value (k + 1).
    f = lambda k, p: je.sample(k, D.Binomial(10.0, probs=p))
    for i in range(8):
        r = repr(je.stochastic_triple(f)(jax.random.key(i), 0.5))
        k = int(r.split(" ")[0])
        assert r == f"{k} + 0ε + (1 with probability {2.0 * (10 - k)}ε)", r


def test_stochastic_ad_directions_array_is_a_clear_error():
    with pytest.raises(TypeError, match="directions"):
        je.stochastic_ad(directions=np.array([[1.0, 0.0]]))
    with pytest.raises(TypeError, match="directions"):
        je.finite_difference(directions=np.eye(2))


def test_pathwise_and_relaxations_under_control_flow():
    # pathwise through a while loop with a data-independent trip count: x = sum of 5 draws
    # of N(t, 1), so d/dt E[x^2 / 5] = d/dt (5 t^2 + 1) = 10 t (per sample: 2 x, std 2 sqrt 5)
    def f(key, t):
        def body(c):
            key, i, x = c
            key, sub = jax.random.split(key)
            return key, i + 1, x + je.sample(sub, D.Normal(t, 1.0))

        _, _, x = je.while_loop(lambda c: c[1] < 5, body, (key, 0, 0.0), max_iterations=8)
        return x**2 / 5

    g = np.asarray(je.grad_samples(f, je.pathwise(), num_samples=4000)(KEY, 0.3))
    assert_unbiased(g, 3.0, 0.08)
    # relaxations run inside je.cond (biased by design: they ignore the branch switch)
    v, grad = je.value_and_grad(cond_program, je.straight_through(), num_samples=64)(KEY, T0)
    assert np.isfinite(float(v)) and np.isfinite(float(grad))

    def bern_cond(key, t):
        k1, k2 = jax.random.split(key)
        x = je.sample(k1, D.Bernoulli(probs=t))
        return je.cond(x > 0.5, lambda: 3.0 * je.sample(k2, D.Bernoulli(probs=t)), lambda: 1.0)

    v, grad = je.value_and_grad(bern_cond, je.gumbel_softmax(0.5), num_samples=64)(KEY, T0)
    assert np.isfinite(float(v)) and np.isfinite(float(grad))


def test_second_derivative_through_je_cond_is_unbiased():
    # E[f] = t^2 + t + 1 (cond_program): second derivative 2 under the DiCE surrogate
    def d2(key):
        return jax.grad(lambda t: je.grad(cond_program, LOO, num_samples=200)(key, t))(T0)

    vals = np.asarray(jax.vmap(d2)(jax.random.split(KEY, 40)))
    assert_unbiased(vals, 2.0, 0.6)


def test_fori_loop_traced_trip_count():
    def f(key, t, n):
        body = lambda i, c: c + je.sample(jax.random.fold_in(key, i), D.Normal(t, 1.0))
        return je.fori_loop(0, n, body, 0.0)

    n = jnp.int32(4)  # traced inside the transform
    g = je.grad(f, je.finite_difference(), num_samples=8)(KEY, 0.5, n)
    assert float(g) == pytest.approx(4.0, rel=1e-4)  # common random numbers: exact
    with pytest.raises(je.EstimatorError, match="while_loop"):
        je.grad(f, je.pathwise(), num_samples=8)(KEY, 0.5, n)


def test_pathwise_site_in_plain_lax_scan_with_invalid_parameter_has_nan_gradient():
    def h(key, s):
        def step(c, k):
            return c + je.sample(k, D.Normal(0.0, s)), None

        return jax.lax.scan(step, 0.0, jax.random.split(key, 5))[0]

    g = je.grad(h, je.pathwise(), num_samples=4)
    assert np.isnan(float(g(KEY, -1.0))) and np.isfinite(float(g(KEY, 1.0)))
