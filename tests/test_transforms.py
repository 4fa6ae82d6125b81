"""Transforms: determinism (jit/eager, chunking), vmap, dtypes, loops, and error paths."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxestim as je
from jaxestim import distributions as D

KEY = jax.random.key(1)


def mixed(key, params):
    """A pytree-parameterized program with continuous and discrete sites."""
    k1, k2 = jax.random.split(key)
    z = je.sample(k1, D.Normal(params["loc"], 1.0), (3,))
    x = je.sample(k2, D.Bernoulli(logits=params["logit"]))
    return jnp.sum(jnp.sin(z)) + 2.0 * x * params["loc"][0]


PARAMS = {"loc": jnp.array([0.3, -0.2, 1.0]), "logit": jnp.array(0.4)}

ESTIMATORS = {
    "auto": je.auto(),
    "score_loo": je.score_function("leave_one_out"),
    "gumbel": je.gumbel_softmax(0.7),
    "st": je.straight_through(),
    "fd": je.finite_difference(),
}


def _close(a, b, rtol=1e-5, atol=1e-6):
    """Allclose on pytrees (same structure, shapes and values)."""
    chex.assert_trees_all_close(a, b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_jit_eager_chunking_and_grad_samples_agree(name):
    est = ESTIMATORS[name]
    # finite differences divide float32 rounding of f by 2h: allow eps * |f| / h
    atol = 1e-4 if name == "fd" else 1e-6
    g = je.grad(mixed, est, num_samples=12)
    eager = g(KEY, PARAMS)
    jitted = jax.jit(g)(KEY, PARAMS)
    _close(eager, jitted, atol=atol)
    for c in (1, 5, 12):
        _close(
            jax.jit(je.grad(mixed, est, num_samples=12, chunk_size=c))(KEY, PARAMS),
            eager,
            atol=atol,
        )
    per = jax.jit(je.grad_samples(mixed, est, num_samples=12))(KEY, PARAMS)
    assert per["loc"].shape == (12, 3) and per["logit"].shape == (12,)
    _close(jax.tree_util.tree_map(lambda x: x.mean(0), per), eager, atol=atol)
    per_c = jax.jit(je.grad_samples(mixed, est, num_samples=12, chunk_size=5))(KEY, PARAMS)
    _close(per_c, per, atol=atol)
    assert jax.tree_util.tree_structure(eager) == jax.tree_util.tree_structure(PARAMS)


def test_value_and_grad_and_aux():
    def f(key, th):
        z = je.sample(key, D.Normal(th, 1.0))
        return z**2, z

    (v, aux), g = je.value_and_grad(f, je.pathwise(), num_samples=8, has_aux=True)(KEY, 0.5)
    assert aux.shape == (8,)
    np.testing.assert_allclose(v, np.mean(np.asarray(aux) ** 2), rtol=1e-5)
    np.testing.assert_allclose(g, np.mean(2 * np.asarray(aux)), rtol=1e-5)
    g2, aux2 = je.grad(f, je.pathwise(), num_samples=8, has_aux=True)(KEY, 0.5)
    _close(g2, g)
    _close(aux2, aux)


def test_vmap_over_parameters_matches_python_loop():
    thetas = jnp.linspace(0.05, 0.3, 4)

    def f(key, t):
        k1, k2 = jax.random.split(key)
        return 2.0 * je.sample(k1, D.Bernoulli(probs=3 * t)) + je.sample(k2, D.Bernoulli(probs=t))

    g = je.grad(f, je.score_function("leave_one_out"), num_samples=16)
    batched = jax.vmap(g, in_axes=(None, 0))(KEY, thetas)
    _close(batched, jnp.stack([g(KEY, t) for t in thetas]))


def test_vmap_over_estimator_hyperparameters():
    def f(key, t):
        return je.sample(key, D.Bernoulli(probs=t))

    temps = jnp.array([0.1, 0.5, 1.0])
    out = jax.vmap(lambda tau: je.grad(f, je.gumbel_softmax(tau), num_samples=8)(KEY, 0.3))(temps)
    loop = jnp.stack(
        [je.grad(f, je.gumbel_softmax(float(t)), num_samples=8)(KEY, 0.3) for t in temps]
    )
    _close(out, loop)
    steps = jnp.array([1e-3, 1e-2])
    out = jax.vmap(lambda h: je.grad(f, je.finite_difference(h), num_samples=8)(KEY, 0.3))(steps)
    assert out.shape == (2,)


def test_estimators_are_pytrees_that_pass_through_jit():
    f = lambda k, p: je.sample(k, D.Bernoulli(probs=p))
    g = jax.jit(lambda est, k: je.grad(f, est, num_samples=4)(k, 0.3))
    for est in (je.score_function("leave_one_out"), je.score_function(0.5), je.gumbel_softmax(0.3)):
        _close(g(est, KEY), je.grad(f, est, num_samples=4)(KEY, 0.3))
        leaves, tree = jax.tree_util.tree_flatten(est)
        assert jax.tree_util.tree_unflatten(tree, leaves) == est


def test_argnums_tuple_and_other_args():
    def f(key, a, scale, b):
        return je.sample(key, D.Normal(a * scale, 1.0)) + b**2

    ga, gb = je.grad(f, je.pathwise(), argnums=(1, 3), num_samples=4)(KEY, 1.0, 3.0, 2.0)
    np.testing.assert_allclose([ga, gb], [3.0, 4.0], rtol=1e-6)


def test_float64_enabled_locally():
    # float64 draws other random numbers than float32, so each is checked against the exact
    # 8 theta + 3 theta^2 = 28 (per-sample sd = 2 theta^2 = 8, SE = 0.057 at N = 20,000).
    f = lambda k, t: t**2 * (4.0 + je.sample(k, D.Normal(t, 2.0)))
    gs = je.grad_samples(f, je.pathwise(), num_samples=20_000)
    with jax.enable_x64(True):
        g64 = gs(KEY, jnp.asarray(2.0, jnp.float64))
        assert g64.dtype == jnp.float64
    g32 = gs(KEY, 2.0)
    assert g32.dtype == jnp.float32
    for g in (np.asarray(g64), np.asarray(g32)):
        se = float(np.std(g) / np.sqrt(g.shape[0]))
        assert se < 0.1 and abs(float(np.mean(g)) - 28.0) < 5 * se


def test_scan_and_fori_loop_agree():
    def with_scan(key, p):
        def step(n, k):
            return n + je.sample(k, D.Bernoulli(probs=p)), None

        return je.scan(step, 0.0, jax.random.split(key, 20))[0]

    def with_fori(key, p):
        keys = jax.random.split(key, 20)
        return je.fori_loop(0, 20, lambda i, n: n + je.sample(keys[i], D.Bernoulli(probs=p)), 0.0)

    for est in (je.score_function(), je.finite_difference(), je.straight_through()):
        a = je.grad_samples(with_scan, est, num_samples=16)(KEY, 0.3)
        b = je.grad_samples(with_fori, est, num_samples=16)(KEY, 0.3)
        _close(a, b)
    # outside any transform they are the plain lax loops
    assert float(with_scan(KEY, 0.3)) == float(with_fori(KEY, 0.3))


def test_plain_lax_scan_with_recording_site_raises_clear_error():
    def f(key, p):
        def step(n, k):
            return n + je.sample(k, D.Bernoulli(probs=p)), None

        return jax.lax.scan(step, 0.0, jax.random.split(key, 5))[0]

    with pytest.raises(je.EstimatorError, match=r"je\.scan"):
        je.grad(f, je.score_function(), num_samples=4)(KEY, 0.3)

    # a non-recording estimator is correct inside plain lax control flow
    def g(key, m):
        def step(s, k):
            return s + je.sample(k, D.Normal(m, 1.0)), None

        return jax.lax.scan(step, 0.0, jax.random.split(key, 5))[0]

    np.testing.assert_allclose(je.grad(g, je.pathwise(), num_samples=4)(KEY, 0.3), 5.0, rtol=1e-6)


def test_fori_loop_needs_static_bounds_under_estimator():
    def f(key, p, n):
        return je.fori_loop(0, n, lambda i, c: c + je.sample(key, D.Bernoulli(probs=p)), 0.0)

    with pytest.raises(je.EstimatorError, match="lower"):
        jax.jit(je.grad(f, je.score_function()))(KEY, 0.3, 5)


def test_compiles_long_scan_quickly():
    import time

    def walk(key, p):
        def step(n, xs):
            k, i = xs
            return n + je.sample(k, D.Bernoulli(probs=p * (1 - (n + i) / 2000))), None

        return je.scan(step, 0.0, (jax.random.split(key, 1000), jnp.arange(1.0, 1001.0)))[0]

    t = time.perf_counter()
    jax.jit(je.grad(walk, je.score_function("leave_one_out"), num_samples=4)).lower(
        KEY, 0.5
    ).compile()
    assert time.perf_counter() - t < 30.0  # unrolling 1,000 steps would take far longer


def test_moving_average_state_threads_through_jit():
    est = je.score_function(baseline=je.baselines.MovingAverage(0.5))
    g = jax.jit(je.grad(lambda k, t: je.sample(k, D.Bernoulli(probs=t)) * 3.0, est, num_samples=8))
    state = est.init()
    assert int(state.count) == 0
    grads, state = g(KEY, 0.3, estimator_state=state)
    grads, state = g(KEY, 0.3, estimator_state=state)
    assert int(state.count) == 2 and np.isfinite(grads)
    assert 0.0 < float(est.baseline.value(state)) <= 3.0


# ----------------------------------------------------------------------------- error paths
def bern(key, p):
    return je.sample(key, D.Bernoulli(probs=p))


@pytest.mark.parametrize(
    ("make", "exc", "match"),
    [
        (lambda: je.finite_difference(step=0.0), ValueError, "step"),
        (lambda: je.finite_difference(step=-1.0), ValueError, "step"),
        (lambda: je.finite_difference(scheme="sideways"), ValueError, "scheme"),
        (lambda: je.finite_difference(directions="diagonal"), ValueError, "directions"),
        (lambda: je.finite_difference(directions="spsa"), ValueError, "num_directions"),
        (lambda: je.finite_difference(num_directions=3), ValueError, "num_directions"),
        (lambda: je.gumbel_softmax(temperature=0.0), ValueError, "temperature"),
        (lambda: je.gumbel_softmax(temperature=-2.0), ValueError, "temperature"),
        (lambda: je.score_function(baseline="mean"), ValueError, "baseline"),
        (lambda: je.score_function(baseline=jnp.ones(3)), ValueError, "baseline"),
        (lambda: je.baselines.MovingAverage(1.5), ValueError, "decay"),
        (lambda: je.grad(bern, num_samples=0), ValueError, "num_samples"),
        (lambda: je.grad(bern, num_samples=2.5), ValueError, "num_samples"),
        (lambda: je.grad(bern, chunk_size=0), ValueError, "chunk_size"),
        (lambda: je.grad(bern, argnums=0), ValueError, "argnums"),
        (lambda: je.grad(bern, je.score_function("leave_one_out")), ValueError, "num_samples"),
        (lambda: je.grad(bern, estimator="pathwise"), TypeError, "estimator"),
        (lambda: je.grad(3.0), TypeError, "fun"),
    ],
)
def test_construction_errors(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_call_errors():
    with pytest.raises(TypeError, match="key"):
        je.grad(bern, je.score_function())(jnp.ones(3), 0.3)
    with pytest.raises(TypeError, match="key"):
        je.grad(bern, je.score_function())(0, 0.3)
    with pytest.raises(TypeError, match="scalar"):
        je.grad(lambda k, p: je.sample(k, D.Normal(p, 1.0), (3,)), je.pathwise())(KEY, 0.3)
    with pytest.raises(TypeError, match="floating"):
        je.grad(bern, je.score_function())(KEY, 1)
    with pytest.raises(ValueError, match="argnums"):
        je.grad(bern, je.score_function(), argnums=2)(KEY, 0.3)
    est = je.score_function(je.baselines.MovingAverage())
    with pytest.raises(TypeError, match="estimator_state"):
        je.grad(bern, est)(KEY, 0.3)
    with pytest.raises(TypeError, match="estimator_state"):
        je.grad(bern, je.score_function())(KEY, 0.3, estimator_state=est.init())


def test_site_errors():
    with pytest.raises(je.EstimatorError, match="Bernoulli"):
        je.grad(bern, je.pathwise())(KEY, 0.3)
    with pytest.raises(je.EstimatorError, match="Poisson"):
        je.grad(lambda k, r: je.sample(k, D.Poisson(r)), je.gumbel_softmax())(KEY, 2.0)

    def override(est):
        return lambda k, p: je.sample(k, D.Bernoulli(probs=p), estimator=est)

    with pytest.raises(je.EstimatorError, match="whole-program"):
        je.grad(override(je.finite_difference()), je.score_function())(KEY, 0.3)
    with pytest.raises(je.EstimatorError, match="override"):
        je.grad(override(je.score_function()), je.finite_difference())(KEY, 0.3)
    with pytest.raises(je.EstimatorError, match="MovingAverage"):
        est = je.score_function(je.baselines.MovingAverage())
        je.grad(override(est), je.pathwise())(KEY, 0.3)
    with pytest.raises(ValueError, match="num_samples"):
        je.grad(override(je.score_function("leave_one_out")), je.pathwise())(KEY, 0.3)
    with pytest.raises(TypeError, match="estimator"):
        je.sample(KEY, D.Normal(0.0, 1.0), estimator="pathwise")
    with pytest.raises(TypeError, match="dist"):
        je.sample(KEY, jnp.ones(3))
    with pytest.raises(TypeError, match="key"):
        je.sample(jnp.zeros(2), D.Normal(0.0, 1.0))
    with pytest.raises(ValueError, match="sample_shape"):
        je.sample(KEY, D.Normal(0.0, 1.0), (-1,))
    with pytest.raises(TypeError, match="sample_shape"):
        je.sample(KEY, D.Normal(0.0, 1.0), (1.5,))


def test_out_of_range_parameters_rejected_when_concrete():
    # Concrete parameters are validated at construction, also inside a program run eagerly;
    # inside a transform they are traced, so only shapes can be checked there.
    with pytest.raises(ValueError, match="probs"):
        bern(KEY, 1.5)
    with pytest.raises(ValueError, match="scale"):
        je.grad(lambda k, m: je.sample(k, D.Normal(m, -1.0)), je.pathwise())(KEY, 0.0)


def test_sample_outside_transform_is_plain_sampling():
    x = je.sample(KEY, D.Bernoulli(probs=0.3), (1000,))
    assert x.shape == (1000,) and set(np.unique(np.asarray(x))) <= {0.0, 1.0}
    np.testing.assert_array_equal(x, D.Bernoulli(probs=0.3).sample(KEY, (1000,)))


def test_select_both_representations():
    table = jnp.array([1.0, 5.0, 7.0])
    assert float(je.select(table, jnp.array(2))) == 7.0
    assert float(je.select(table, jax.nn.one_hot(1, 3))) == 5.0
    with pytest.raises(ValueError, match="trailing"):
        je.select(table, jnp.ones(4))
    # batched: row j picks column x[j], the same under both representations
    c = jnp.array([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]])
    x = jnp.array([0, 2])
    np.testing.assert_array_equal(je.select(c, x), [0.0, 5.0])
    np.testing.assert_array_equal(je.select(c, jax.nn.one_hot(x, 3)), [0.0, 5.0])
    np.testing.assert_array_equal(je.select(table, jnp.array([[0, 1], [2, 2]])), [[1, 5], [7, 7]])
    with pytest.raises(ValueError, match="broadcast"):
        je.select(c, jnp.array([0, 1, 2]))
