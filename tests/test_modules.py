"""Parameters that are modules: equinox Modules and pytrees with non-array leaves.

Floating leaves are differentiated; every other leaf (functions such as ``jax.nn.relu``, a
``custom_jvp`` object, strings, ints, integer/bool arrays) passes through and gets ``None``
in the gradient, as with ``equinox.filter_grad``.
"""

import itertools

import chex
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _stats import assert_unbiased

import jaxestim as je
from jaxestim import distributions as D

KEY = jax.random.key(3)
X = jnp.array([[0.5, -1.0], [1.5, 0.3], [-0.7, 0.8]])  # 3 inputs -> 3 Bernoulli sites
W = jnp.array([1.0, -2.0, 3.0])


def make_mlp(seed=0):
    return eqx.nn.MLP(2, 1, width_size=4, depth=1, activation=jax.nn.relu, key=jax.random.key(seed))


def prog(key, model, x):
    """Bernoulli(sigmoid(mlp(x_i))) sites; f = sum_i w_i b_i + (sum_i b_i)^2."""
    logits = jax.vmap(model)(x)[:, 0]
    b = je.sample(key, D.Bernoulli(logits=logits))
    return jnp.dot(W, b) + jnp.sum(b) ** 2


def as_plain(model):
    return [(layer.weight, layer.bias) for layer in model.layers]


def plain_forward(params, x):
    (w0, b0), (w1, b1) = params
    return w1 @ jax.nn.relu(w0 @ x + b0) + b1


def plain_prog(key, params, x):
    logits = jax.vmap(lambda xi: plain_forward(params, xi))(x)[:, 0]
    b = je.sample(key, D.Bernoulli(logits=logits))
    return jnp.dot(W, b) + jnp.sum(b) ** 2


def exact_grad(model):
    """grad E[f] by enumerating the 2^3 Bernoulli outcomes (autodiff of the exact sum)."""

    def expectation(m):
        p = jax.nn.sigmoid(jax.vmap(m)(X)[:, 0])
        total = 0.0
        for bits in itertools.product((0.0, 1.0), repeat=3):
            b = jnp.array(bits)
            prob = jnp.prod(jnp.where(b == 1, p, 1 - p))
            total = total + prob * (jnp.dot(W, b) + jnp.sum(b) ** 2)
        return total

    return eqx.filter_grad(expectation)(model)


def model_leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


ESTIMATORS = {
    "sf_loo": je.score_function("leave_one_out"),
    "auto": je.auto(),
    "st": je.straight_through(),
    "fd": je.finite_difference(1e-2),
    "sad": je.stochastic_ad(),
}


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_module_gradient_equals_plain_array_gradient(name):
    est = ESTIMATORS[name]
    model = make_mlp()
    g_mod = je.grad(prog, est, num_samples=16)(KEY, model, X)
    g_plain = je.grad(plain_prog, est, num_samples=16)(KEY, as_plain(model), X)
    # the gradient is a Module of the same structure; non-array leaves come back as None
    assert isinstance(g_mod, eqx.nn.MLP)
    assert g_mod.activation is None and g_mod.final_activation is None
    flat_mod = [(layer.weight, layer.bias) for layer in g_mod.layers]
    if name == "fd":  # same float ops up to fusion: FD divides rounding by 2h
        chex.assert_trees_all_close(flat_mod, g_plain, atol=2e-3)
    else:
        chex.assert_trees_all_equal(flat_mod, g_plain)


def test_module_gradient_is_unbiased_against_exact_enumeration():
    model = make_mlp()
    exact = model_leaves(exact_grad(model))
    for est, se_max in ((je.score_function("leave_one_out"), 0.25), (je.stochastic_ad(), 0.1)):
        per = je.grad_samples(prog, est, num_samples=4000)(KEY, model, X)
        for s, e in zip(model_leaves(per), exact, strict=True):
            assert s.shape == (4000, *e.shape)
            assert_unbiased(s, e, se_max=se_max)


def test_value_and_grad_chunking_and_grad_samples_with_modules():
    model = make_mlp()
    est = je.score_function("leave_one_out")
    v, g = je.value_and_grad(prog, est, num_samples=12)(KEY, model, X)
    g_c = je.grad(prog, est, num_samples=12, chunk_size=5)(KEY, model, X)
    chex.assert_trees_all_close(eqx.filter(g, eqx.is_array), eqx.filter(g_c, eqx.is_array))
    per = je.grad_samples(prog, est, num_samples=12, chunk_size=5)(KEY, model, X)
    mean = jax.tree_util.tree_map(lambda x: x.mean(0), per)
    chex.assert_trees_all_close(mean, g, atol=1e-5)
    assert per.activation is None
    assert np.isfinite(float(v))


def test_filter_jit_and_optax_adam_step():
    model = make_mlp()
    opt = optax.adam(1e-2)
    state = opt.init(eqx.filter(model, eqx.is_inexact_array))
    grad_fn = je.grad(prog, je.score_function("leave_one_out"), num_samples=16)

    @eqx.filter_jit
    def step(model, state, key):
        g = grad_fn(key, model, X)
        updates, state = opt.update(g, state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), state

    new, state = step(model, state, KEY)
    new, state = step(new, state, jax.random.key(4))
    assert new.activation is jax.nn.relu
    a, b = eqx.filter(new, eqx.is_array), eqx.filter(model, eqx.is_array)
    diff = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))), a, b)
    assert 0 < max(jax.tree_util.tree_leaves(diff)) < 0.1
    # the eager transform and the one under filter_jit agree
    chex.assert_trees_all_close(
        eqx.filter(eqx.filter_jit(grad_fn)(KEY, model, X), eqx.is_array),
        eqx.filter(grad_fn(KEY, model, X), eqx.is_array),
        atol=1e-6,
    )


def test_non_array_and_integer_leaves_get_none():
    def f(key, p):
        scale = p["act"](p["w"]) * p["n"]
        x = je.sample(key, D.Normal(scale, 1.0), (2,))
        return jnp.sum(x) if p["tag"] == "sum" else jnp.mean(x)

    p = {"w": jnp.array([0.5, 2.0]), "n": jnp.array(3), "tag": "sum", "act": jax.nn.relu}
    p["none"] = None
    for est in (je.pathwise(), je.finite_difference(), je.stochastic_ad()):
        g = je.grad(f, est, num_samples=4)(KEY, p)
        assert g["n"] is None and g["tag"] is None and g["act"] is None and g["none"] is None
        np.testing.assert_allclose(g["w"], [6.0, 6.0], rtol=1e-3)  # 2 draws x n = 3
    gs = je.grad_samples(f, je.pathwise(), num_samples=4)(KEY, p)
    assert gs["w"].shape == (4, 2) and gs["n"] is None
    # user's jax.jit: integer arrays are traced, strings/functions must be closed over
    g = jax.jit(lambda q: je.grad(f, je.pathwise(), num_samples=4)(KEY, {**p, **q}))(
        {"w": p["w"], "n": p["n"]}
    )
    assert g["n"] is None


def test_argument_without_floating_leaves_raises():
    bern = lambda k, p: je.sample(k, D.Bernoulli(probs=0.5))
    with pytest.raises(TypeError, match="no floating leaf"):
        je.grad(bern, je.score_function())(KEY, {"n": jnp.array(3), "f": jax.nn.relu})


def test_compile_cache_with_static_leaves_and_fallback_for_unhashable():
    traces = []

    def f(key, model, x):
        traces.append(1)
        return prog(key, model, x)

    g = je.grad(f, je.score_function("leave_one_out"), num_samples=8)
    g(KEY, make_mlp(), X)
    n = len(traces)
    g(KEY, make_mlp(5), X)  # new weights, same structure: no retrace
    assert len(traces) == n

    class Unhashable:
        __hash__ = None

        def __init__(self, s):
            self.s = s

    def h(key, p):
        return je.sample(key, D.Normal(p["m"] * p["obj"].s, 1.0))

    out = je.grad(h, je.pathwise(), num_samples=4)(KEY, {"m": 1.0, "obj": Unhashable(2.0)})
    np.testing.assert_allclose(out["m"], 2.0, rtol=1e-6)
    assert out["obj"] is None
