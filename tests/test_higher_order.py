"""Higher derivatives: DiCE score function and pathwise are unbiased; the rest raise.

Exact references are closed forms (and their derivatives, written out by hand). Statistical
checks use per-sample second derivatives (``jax.jacfwd`` of ``grad_samples``, one per
Monte Carlo sample) or ``jax.vmap`` over independent keys of the second derivative of
``je.grad``: |mean - exact| < 5 SE with SE below a stated bound (tests/_stats.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _stats import assert_unbiased

import jaxestim as je
from jaxestim import distributions as D

KEY = jax.random.key(7)
T = 0.3


def sigmoid(t):
    return 1.0 / (1.0 + np.exp(-t))


# --------------------------------------------------------------------------- programs
def bern_t2(key, t):
    """x ~ Bernoulli(t), f = x t^2: E = t^3, second derivative 6 t."""
    return je.sample(key, D.Bernoulli(probs=t)) * t**2


def bern_sq(key, t):
    """x ~ Bernoulli(t), f = x^2: E = t, second derivative 0."""
    return je.sample(key, D.Bernoulli(probs=t)) ** 2


def bern_logit(key, t):
    """x ~ Bernoulli(sigmoid(t)), f = 3 x: E = 3 s, second derivative 3 s (1 - s)(1 - 2 s)."""
    return 3.0 * je.sample(key, D.Bernoulli(logits=t))


def normal_cube(key, t):
    """x ~ Normal(t, 1), f = x^3: E = t^3 + 3 t, second derivative 6 t."""
    return je.sample(key, D.Normal(t, 1.0)) ** 3


def mixed(key, t):
    """z ~ Normal(t, 1) (pathwise under auto), x ~ Bernoulli(sigmoid(t)) (score function),
    f = z^2 x + t x:  E = (t^2 + 1 + t) s with s = sigmoid(t)."""
    k1, k2 = jax.random.split(key)
    z = je.sample(k1, D.Normal(t, 1.0))
    x = je.sample(k2, D.Bernoulli(logits=t))
    return z**2 * x + t * x


def walk(key, t):
    """n = sum of 5 Bernoulli(t) steps in je.scan, f = n^2: E = 5 t + 20 t^2, d2 = 40."""

    def step(n, k):
        return n + je.sample(k, D.Bernoulli(probs=t)), None

    return je.scan(step, 0.0, jax.random.split(key, 5))[0] ** 2


def _d2_mixed(t):
    s = sigmoid(t)
    ds = s * (1 - s)
    d2s = ds * (1 - 2 * s)
    a, da, d2a = t**2 + 1 + t, 2 * t + 1, 2.0
    return d2a * s + 2 * da * ds + a * d2s


EXACT_D2 = {
    "bern_t2": (bern_t2, 6 * T),
    "bern_logit": (bern_logit, 3 * sigmoid(T) * (1 - sigmoid(T)) * (1 - 2 * sigmoid(T))),
    "mixed": (mixed, _d2_mixed(T)),
    "walk": (walk, 40.0),
}
EXACT_D1 = {"bern_t2": 3 * T**2, "walk": 5 + 40 * T, "normal_cube": 3 * T**2 + 3}

SCORE = {
    "sf": je.score_function(),
    "sf_loo": je.score_function("leave_one_out"),
    "sf_const": je.score_function(0.5),
    "auto": je.auto(),
}

# Measured standard errors (key 7, N = 4,000; walk N = 20,000) over the four estimators:
# bern_t2 0.044, bern_logit <= 0.0015, mixed <= 0.16, walk (per-sample sd ~320) ~2.3.
SE_MAX = {"bern_t2": 0.06, "bern_logit": 0.003, "mixed": 0.25, "walk": 3.0}
NUM = {"walk": 20_000}


def per_sample_d2(fun, est, n, chunk_size=None, t=T):
    """One second-derivative estimate per Monte Carlo sample: d/dt of grad_samples."""
    gs = je.grad_samples(fun, est, num_samples=n, chunk_size=chunk_size)
    return jax.jacfwd(lambda th: gs(KEY, th))(jnp.asarray(t))


@pytest.mark.parametrize("prog", list(EXACT_D2))
@pytest.mark.parametrize("name", list(SCORE))
def test_dice_second_derivative_unbiased(prog, name):
    fun, exact = EXACT_D2[prog]
    n = NUM.get(prog, 4000)
    d2 = per_sample_d2(fun, SCORE[name], n)
    assert d2.shape == (n,)
    assert_unbiased(d2, exact, se_max=SE_MAX[prog])


def test_issue_case_second_derivative_is_zero_for_every_sample():
    # f = x^2 = x for x in {0, 1} and p(x; t) is linear in t: the DiCE second derivative
    # f p''/p - b p''/p vanishes sample by sample (the old surrogate gave -1.9 / -3.3).
    for est in (je.score_function(), je.score_function("leave_one_out"), je.auto()):
        d2 = jax.grad(lambda t, est=est: je.grad(bern_sq, est, num_samples=20_000)(KEY, t))(T)
        assert abs(float(d2)) < 1e-4


def test_pathwise_and_score_second_derivative_of_normal_cube():
    # pathwise per sample: 6 x, sd 6 -> SE 0.095 at N = 4,000
    for est, se_max in ((je.pathwise(), 0.12), (je.auto(), 0.12), (je.score_function(), 1.0)):
        d2 = per_sample_d2(normal_cube, est, 4000)
        assert_unbiased(d2, 6 * T, se_max=se_max)


def test_second_derivative_of_je_grad_over_independent_keys():
    # je.grad's mean estimate differentiated again, vmapped over 200 independent keys
    keys = jax.random.split(KEY, 200)
    for est in (je.score_function("leave_one_out"), je.score_function(0.5), je.auto()):
        g = je.grad(bern_t2, est, num_samples=50)
        d2 = jax.vmap(lambda k, g=g: jax.grad(lambda t: g(k, t))(T))(keys)
        # per-sample sd < 2.2 -> per-key sd < 0.32 -> SE < 0.023
        assert_unbiased(d2, 6 * T, se_max=0.03)
        h = jax.vmap(lambda k, g=g: jax.hessian(lambda t: g(k, t))(T))(keys)
        assert h.shape == (200,)  # third derivative of E = t^3 is 6
        assert_unbiased(h, 6.0, se_max=0.5)


def test_mixed_program_under_auto_over_keys():
    keys = jax.random.split(KEY, 100)
    g = je.grad(mixed, je.auto(), num_samples=100)
    d2 = jax.vmap(lambda k: jax.grad(lambda t: g(k, t))(T))(keys)
    assert_unbiased(d2, _d2_mixed(T), se_max=0.2)


@pytest.mark.parametrize("est", [je.score_function("leave_one_out"), je.pathwise()])
def test_chunk_size_gives_the_same_second_derivative(est):
    fun = normal_cube if isinstance(est, je.Pathwise) else walk
    g = lambda c: jax.grad(lambda t: je.grad(fun, est, num_samples=60, chunk_size=c)(KEY, t))
    ref = g(None)(T)
    np.testing.assert_allclose(g(7)(T), ref, rtol=1e-4, atol=1e-4)
    per = per_sample_d2(fun, est, 60, chunk_size=7)
    np.testing.assert_allclose(per, per_sample_d2(fun, est, 60), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.mean(per), ref, rtol=1e-4, atol=1e-4)


LOO_EST = je.score_function("leave_one_out")


def test_value_of_value_and_grad_differentiates_to_the_estimator_gradient():
    # jax.grad of the returned value is the score-function gradient itself (not the
    # pathwise-only derivative, which would be t^2-free here: 2 t x)
    for name, est in (("bern_t2", je.score_function()), ("walk", LOO_EST)):
        fun = EXACT_D2[name][0]
        vg = je.value_and_grad(fun, est, num_samples=500)
        dv = jax.grad(lambda t, vg=vg: vg(KEY, t)[0])(T)
        np.testing.assert_allclose(dv, vg(KEY, T)[1], rtol=1e-5, atol=1e-5)
        # the value itself is unchanged: the mean of f
        v = vg(KEY, T)[0]
        np.testing.assert_allclose(v, jnp.mean(_values(fun, 500)), rtol=1e-6)
    vg = je.value_and_grad(normal_cube, je.pathwise(), num_samples=500)
    np.testing.assert_allclose(
        jax.grad(lambda t: vg(KEY, t)[0])(T), vg(KEY, T)[1], rtol=1e-5, atol=1e-5
    )


def _values(fun, n):
    return jax.vmap(lambda k: fun(k, T))(jax.random.split(KEY, n))


def test_first_order_unchanged_and_unbiased():
    for name, fun in (("bern_t2", bern_t2), ("walk", walk)):
        g = je.grad_samples(fun, je.score_function("leave_one_out"), num_samples=4000)(KEY, T)
        assert_unbiased(g, EXACT_D1[name], se_max={"bern_t2": 0.02, "walk": 0.5}[name])


def test_vmap_and_jit_around_second_derivative():
    g = je.grad(bern_t2, je.score_function("leave_one_out"), num_samples=64)
    d2 = lambda t: jax.grad(lambda s: g(KEY, s))(t)
    ts = jnp.array([0.2, 0.3, 0.5])
    batched = jax.vmap(d2)(ts)
    np.testing.assert_allclose(batched, jnp.stack([d2(t) for t in ts]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jax.jit(d2)(T), d2(T), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jax.grad(jax.jit(lambda s: g(KEY, s)))(T), d2(T), rtol=1e-5)


def test_gumbel_and_straight_through_at_continuous_sites_are_pathwise():
    # continuous sites are reparameterized under the relaxations: higher orders are fine
    for est in (je.gumbel_softmax(0.5), je.straight_through()):
        d2 = per_sample_d2(normal_cube, est, 2000)
        assert_unbiased(d2, 6 * T, se_max=0.2)


# ----------------------------------------------------------------------------- errors
def _st_override(key, t):
    k1, k2 = jax.random.split(key)
    x = je.sample(k1, D.Bernoulli(probs=t), estimator=je.straight_through())
    return x * t + je.sample(k2, D.Normal(t, 1.0))


def _gumbel_in_scan(key, t):
    def step(n, k):
        return n + je.sample(k, D.Bernoulli(probs=t), estimator=je.gumbel_softmax(0.5)), None

    return je.scan(step, 0.0, jax.random.split(key, 3))[0]


NO_HIGHER = {
    "straight_through": (bern_sq, je.straight_through(), "straight_through"),
    "gumbel_softmax": (bern_sq, je.gumbel_softmax(0.5), "gumbel_softmax"),
    "gumbel_hard": (bern_sq, je.gumbel_softmax(0.5, hard=True), "gumbel_softmax"),
    "finite_difference": (bern_sq, je.finite_difference(), "finite_difference"),
    "fd_normal": (normal_cube, je.finite_difference(), "finite_difference"),
    "stochastic_ad": (bern_sq, je.stochastic_ad(), "stochastic_ad"),
    "sad_normal": (normal_cube, je.stochastic_ad(), "stochastic_ad"),
    "score_with_st_site": (_st_override, je.score_function(), "score_function"),
    "auto_with_gumbel_site_in_scan": (_gumbel_in_scan, je.auto(), "auto"),
}


@pytest.mark.parametrize("name", list(NO_HIGHER))
def test_non_dice_estimators_raise_under_outer_derivatives(name):
    fun, est, ename = NO_HIGHER[name]
    g = je.grad(fun, est, num_samples=8)
    vg = je.value_and_grad(fun, est, num_samples=8)
    gs = je.grad_samples(fun, est, num_samples=8)
    first = lambda t: g(KEY, t)
    match = rf"je\.{ename}\(\) estimates cannot be differentiated again"
    for outer in (
        lambda: jax.grad(first)(T),
        lambda: jax.grad(jax.jit(first))(T),
        lambda: jax.jit(jax.grad(first))(T),
        lambda: jax.hessian(first)(T),
        lambda: jax.jacfwd(lambda t: gs(KEY, t))(T),
        lambda: jax.jvp(first, (T,), (1.0,)),
        lambda: jax.grad(lambda t: vg(KEY, t)[0])(T),
        lambda: jax.grad(jax.jit(lambda t: vg(KEY, t)[1]))(T),
    ):
        with pytest.raises(je.EstimatorError, match=match):
            outer()
    # first-order use is unaffected: eager, jit, vmap
    a = first(T)
    np.testing.assert_allclose(jax.jit(first)(T), a, rtol=1e-5, atol=1e-5)
    assert jax.vmap(first)(jnp.array([0.2, T]))[1] == pytest.approx(float(a), rel=1e-5, abs=1e-5)


def test_error_names_the_alternatives():
    g = je.grad(bern_sq, je.straight_through(), num_samples=4)
    with pytest.raises(je.EstimatorError, match=r"je\.score_function\(\).*je\.pathwise\(\)"):
        jax.grad(lambda t: g(KEY, t))(T)
