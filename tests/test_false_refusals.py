"""Programs the estimators accept although a naive check would refuse them, and the
neighbouring programs they must still refuse.

* DisARM / ARM: a Bernoulli draw that only decides a ``je.cond`` / ``je.while_loop``
  predicate (no Bernoulli site inside the branches or the loop body) leaves the Bernoulli
  sites independent given the parameters; a draw that decides which Bernoulli sites run, or
  the logits of another one, does not.
* Pathwise-like estimators (``je.pathwise()`` in both modes, ``je.forward_gradient()``,
  the complex step) at a discrete site whose parameters do not depend on the differentiated
  parameters: the site's derivative contribution is exactly zero; when they do depend on
  them, the site raises.
* ``je.while_loop``'s NaN for a loop that hit ``max_iterations`` reaches every sample's
  leave-one-out baseline.

Exact references are closed forms from enumerating the Bernoulli / Poisson outcomes by hand
(NumPy float64), independent of the estimators.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _stats import assert_unbiased

import jaxestim as je
from jaxestim import distributions as D

KEY = jax.random.key(5)


def sig(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def dsig(x):
    return sig(x) * (1.0 - sig(x))


def both_ways(f, est, theta, n, *args, **kw):
    """Per-sample estimates under ``jax.jit``; the eager ``je.grad`` equals their mean."""
    s = jax.jit(je.grad_samples(f, est, num_samples=n, **kw))(KEY, theta, *args)
    g = je.grad(f, est, num_samples=n, **kw)(KEY, theta, *args)
    np.testing.assert_allclose(g, np.mean(np.asarray(s, np.float64), 0), rtol=1e-4, atol=1e-5)
    return s


# ---------------------------------------------------------------------------------------
# DisARM / ARM: a Bernoulli draw in a je.cond / je.while_loop predicate
# ---------------------------------------------------------------------------------------

ANTITHETIC = [je.disarm(), je.arm()]
ANTITHETIC_IDS = ["disarm", "arm"]


def cond_on_draw(key, t):
    """b1 ~ B(s(t0)) decides the branch; b2 ~ B(s(t1)) and z ~ N(t1, 1) are used in them."""
    k1, k2, k3 = jax.random.split(key, 3)
    b1 = je.sample(k1, D.Bernoulli(logits=t[0]))
    b2 = je.sample(k2, D.Bernoulli(logits=t[1]))
    return je.cond(
        b1 > 0.5,
        lambda: 3.0 + b2 * je.sample(k3, D.Normal(t[1], 1.0)),
        lambda: -1.0 - 2.0 * b2,
    )


def cond_on_draw_exact(t):
    # E = p1 (3 + p2 t1) + (1 - p1) (-1 - 2 p2)
    p1, p2 = sig(t[0]), sig(t[1])
    return np.array(
        [
            dsig(t[0]) * (4.0 + p2 * t[1] + 2.0 * p2),
            p1 * (dsig(t[1]) * t[1] + p2) - 2.0 * (1.0 - p1) * dsig(t[1]),
        ]
    )


@pytest.mark.parametrize("est", ANTITHETIC, ids=ANTITHETIC_IDS)
def test_antithetic_cond_predicate_on_a_draw(est):
    t = jnp.array([0.3, -0.4])
    s = both_ways(cond_on_draw, est, t, 20_000)
    assert_unbiased(s, cond_on_draw_exact(np.asarray(t)), 0.03)


def single_cond(key, t):
    b = je.sample(key, D.Bernoulli(logits=t))
    return je.cond(b > 0.5, lambda: 3.0, lambda: -1.0)


def loop_on_draw(key, t):
    """A while loop counting to 2 b (no site in the body): f = (2 b - 1/2)^2."""
    b = je.sample(key, D.Bernoulli(logits=t))
    n = je.while_loop(lambda x: x < 2.0 * b, lambda x: x + 1.0, 0.0, max_iterations=3)
    return (n - 0.5) ** 2


def walk_of_conds(key, t):
    """Three steps c += +1 or -1 as a je.cond on the step's draw: E[c] = 3 (2 p - 1)."""

    def step(c, k):
        b = je.sample(k, D.Bernoulli(logits=t))
        return c + je.cond(b > 0.5, lambda: 1.0, lambda: -1.0), None

    return je.scan(step, 0.0, jax.random.split(key, 3))[0]


@pytest.mark.parametrize(
    ("f", "exact", "se_max"),
    [
        (single_cond, 4.0 * dsig(0.3), 0.02),
        (loop_on_draw, 2.0 * dsig(0.3), 0.02),
        (walk_of_conds, 6.0 * dsig(0.3), 0.04),
    ],
    ids=["cond", "while_loop", "scan"],
)
def test_disarm_single_bernoulli_predicate(f, exact, se_max):
    # E[f] = 3 p - (1 - p), 1/4 + 2 p and 3 (2 p - 1)
    s = both_ways(f, je.disarm(), 0.3, 4000)
    assert_unbiased(s, exact, se_max)


def cond_then_site_in_branch(key, t):
    k1, k2 = jax.random.split(key)
    b1 = je.sample(k1, D.Bernoulli(logits=t))
    return je.cond(b1 > 0, lambda: je.sample(k2, D.Bernoulli(logits=t)), lambda: 0.5)


def logits_on_draw(key, t):
    k1, k2 = jax.random.split(key)
    b1 = je.sample(k1, D.Bernoulli(logits=t))
    y = je.cond(b1 > 0.5, lambda: 1.0, lambda: -1.0)  # a branch without sites, then
    return b1 + je.sample(k2, D.Bernoulli(logits=t * y))  # logits from its result


def trials_until_success(key, t):
    def body(c, k):
        return c[0] + 1.0, je.sample(k, D.Bernoulli(logits=t))

    out = je.while_loop(lambda c: c[1] < 0.5, body, (0.0, 0.0), max_iterations=8, key=key)
    return out[0]


def test_rebar_names_the_discontinuity_of_a_cond_on_a_draw():
    # REBAR shares the record layout: the cond is not a dependence between Bernoulli sites,
    # but its predicate on the relaxed value is a jump the control variate misses
    with pytest.raises(je.EstimatorError, match="reach gt"):
        je.grad(single_cond, je.rebar(learn=False), num_samples=4)(KEY, 0.3)


@pytest.mark.parametrize("est", ANTITHETIC, ids=ANTITHETIC_IDS)
@pytest.mark.parametrize(
    "f",
    [cond_then_site_in_branch, logits_on_draw, trials_until_success],
    ids=["site_in_branch", "logits", "while_body_site"],
)
def test_antithetic_still_refuses_dependent_sites(f, est):
    match = "depend on an earlier Bernoulli draw"
    with pytest.raises(je.EstimatorError, match=match):
        je.grad(f, est, num_samples=4)(KEY, 0.3)
    with pytest.raises(je.EstimatorError, match=match):
        jax.jit(je.grad_samples(f, est, num_samples=4))(KEY, 0.3)


# ---------------------------------------------------------------------------------------
# pathwise-like estimators at discrete sites whose parameters do not depend on theta
# ---------------------------------------------------------------------------------------

PATHWISE_LIKE = [
    je.pathwise(),
    je.pathwise(mode="forward"),
    je.forward_gradient(),
    je.finite_difference(scheme="complex"),
]
PATHWISE_IDS = ["reverse", "forward", "forward_gradient", "complex_step"]


def constant_discrete(key, t, rate):
    """b ~ B(1/2) (constant), n ~ Categorical(logits (0, 0, rate)) (another argument),
    x ~ N(t, 1): f = b t + n t / 10 + x^2, E[f] = t / 2 + E[n] t / 10 + t^2 + 1."""
    k1, k2, k3 = jax.random.split(key, 3)
    b = je.sample(k1, D.Bernoulli(probs=0.5))
    n = je.sample(k2, D.Categorical(logits=jnp.stack([0.0, 0.0, rate])))
    x = je.sample(k3, D.Normal(t, 1.0))
    return b * t + 0.1 * n * t + x**2


@pytest.mark.parametrize("est", PATHWISE_LIKE, ids=PATHWISE_IDS)
def test_pathwise_like_constant_discrete_sites(est):
    t, rate = 0.3, 2.0
    s = both_ways(constant_discrete, est, t, 4000, rate)
    w = np.exp([0.0, 0.0, rate])
    assert_unbiased(s, 0.5 + 0.1 * (w[1] + 2 * w[2]) / w.sum() + 2 * t, 0.08)


def scan_of_constant_sites(key, t):
    """Three steps c += B(1/2) t + B(s(stop_gradient(t))) + N(c t, 1): E[c] = 1.5 t + 3 s(t)
    (the second site's parameter is cut from the derivative by the user)."""

    def step(c, k):
        k1, k2, k3 = jax.random.split(k, 3)
        b = je.sample(k1, D.Bernoulli(probs=0.5))
        d = je.sample(k2, D.Bernoulli(logits=jax.lax.stop_gradient(t)))
        return c + b * t + d + 0.0 * je.sample(k3, D.Normal(c * t, 1.0)), None

    return je.scan(step, 0.0, jax.random.split(key, 3))[0]


def test_pathwise_constant_sites_in_scan_and_chunks():
    s = both_ways(scan_of_constant_sites, je.pathwise(), 0.3, 512)
    assert_unbiased(s, 1.5, 0.05)  # d/dt E[c] with s(t) held fixed
    # determinism: the same key gives the same estimate for any chunk size
    ref = je.grad(scan_of_constant_sites, je.pathwise(), num_samples=512)(KEY, 0.3)
    chunked = je.grad(scan_of_constant_sites, je.pathwise(), num_samples=512, chunk_size=100)
    np.testing.assert_allclose(chunked(KEY, 0.3), ref, rtol=1e-6)


def test_pathwise_override_at_a_constant_site():
    # the constant site overrides with pathwise, the theta-dependent one is score function:
    # E = t / 2 + s(t)
    def f(key, t):
        k1, k2 = jax.random.split(key)
        b = je.sample(k1, D.Bernoulli(probs=0.5), estimator=je.pathwise())
        return b * t + je.sample(k2, D.Bernoulli(logits=t))

    s = both_ways(f, je.score_function("leave_one_out"), 0.3, 8000)
    assert_unbiased(s, 0.5 + dsig(0.3), 0.01)


def test_delta_method_constant_discrete_site():
    # x ~ N(t, 1), b ~ B(1/2): f = x^2 + b x is quadratic in x for each b, so the estimate
    # is exactly 2 t + b per sample (E = t^2 + 1 + t / 2)
    def f(key, t):
        k1, k2 = jax.random.split(key)
        x = je.sample(k1, D.Normal(t, 1.0))
        return x**2 + je.sample(k2, D.Bernoulli(probs=0.5)) * x

    s = both_ways(f, je.delta_method(), 0.3, 2000)
    assert_unbiased(s, 2 * 0.3 + 0.5, 0.02)
    np.testing.assert_allclose(np.unique(np.round(np.asarray(s), 4)), [0.6, 1.6], atol=1e-4)


def _delta_on_theta(key, t):
    return je.sample(key, D.Bernoulli(logits=t))


def _delta_on_draw(key, t):
    k1, k2 = jax.random.split(key)
    x = je.sample(k1, D.Normal(t, 1.0))
    return x * je.sample(k2, D.Bernoulli(logits=x))


@pytest.mark.parametrize("f", [_delta_on_theta, _delta_on_draw], ids=["theta", "draw"])
def test_delta_method_still_refuses_dependent_discrete_sites(f):
    match = "discrete sites whose parameters depend"
    with pytest.raises(je.EstimatorError, match=match):
        je.grad(f, je.delta_method(), num_samples=4)(KEY, 0.3)
    with pytest.raises(je.EstimatorError, match=match):
        jax.jit(je.grad_samples(f, je.delta_method(), num_samples=4))(KEY, 0.3)


def dependent_discrete(key, t):
    return je.sample(key, D.Bernoulli(probs=jax.nn.sigmoid(t))) * 1.0


def dependent_in_scan(key, t):
    def step(c, k):  # the probability depends on theta through the carry
        return c + je.sample(k, D.Bernoulli(logits=c)), None

    return je.scan(step, t, jax.random.split(key, 3))[0]


def dependent_in_cond(key, t):
    k1, k2 = jax.random.split(key)
    x = je.sample(k1, D.Normal(t, 1.0))
    return je.cond(x > 0, lambda: je.sample(k2, D.Poisson(jnp.exp(t))), lambda: x)


def dependent_in_lax_scan(key, t):
    def step(c, k):  # plain jax.lax.scan: the site is not recorded, its derivative would be
        return c + je.sample(k, D.Bernoulli(logits=t)), None  # lost all the same

    return jax.lax.scan(step, 0.0, jax.random.split(key, 3))[0]


DEPENDENT = [dependent_discrete, dependent_in_scan, dependent_in_cond, dependent_in_lax_scan]
DEPENDENT_IDS = ["top", "scan", "cond", "lax_scan"]
MESSAGES = {
    "reverse": r"je\.pathwise\(\) cannot handle a (Bernoulli|Poisson) sample site: discrete "
    "samples have no reparameterization",
    "forward": r'je\.pathwise\(mode="forward"\) cannot handle a (Bernoulli|Poisson) sample site',
    "forward_gradient": r"je\.forward_gradient\(\) cannot handle a (Bernoulli|Poisson) sample",
}


@pytest.mark.parametrize("est_id", list(MESSAGES))
@pytest.mark.parametrize("f", DEPENDENT, ids=DEPENDENT_IDS)
def test_pathwise_like_still_refuse_dependent_discrete_sites(f, est_id):
    est = PATHWISE_LIKE[PATHWISE_IDS.index(est_id)]
    match = MESSAGES[est_id]
    with pytest.raises(je.EstimatorError, match=match):
        je.grad(f, est, num_samples=4)(KEY, 0.3)
    with pytest.raises(je.EstimatorError, match=match):
        jax.jit(je.grad_samples(f, est, num_samples=4))(KEY, 0.3)
    with pytest.raises(je.EstimatorError, match=match):
        je.check(f, KEY, 0.3, estimator=est)


def test_pathwise_refuses_outer_derivative_through_a_discrete_site():
    # the Categorical logits do not depend on theta but on `rate`, which an outer jax.grad
    # differentiates (also through jax.jit): its derivative would be silently lost
    g = je.grad(constant_discrete, je.pathwise(), num_samples=4)
    with pytest.raises(je.EstimatorError, match="Categorical sample site"):
        jax.grad(lambda r: g(KEY, 0.3, r))(2.0)
    with pytest.raises(je.EstimatorError, match="Categorical sample site"):
        jax.grad(jax.jit(lambda r: g(KEY, 0.3, r)))(2.0)


# ---------------------------------------------------------------------------------------
# je.while_loop: a loop that hit max_iterations and the leave-one-out baseline
# ---------------------------------------------------------------------------------------


def test_unfinished_loop_nan_reaches_every_leave_one_out_sample():
    # a sample that fails all 3 trials (its loop is still running) has a NaN value, and so
    # is every other sample's leave-one-out baseline
    def f(key, t):
        def body(c, k):
            return c[0] + 1.0, je.sample(k, D.Bernoulli(logits=t))

        n, _ = je.while_loop(lambda c: c[1] < 0.5, body, (0.0, 0.0), max_iterations=3, key=key)
        return n

    t = -1.5
    plain = je.grad_samples(f, je.score_function(), num_samples=8)(KEY, t)
    nan = np.isnan(np.asarray(plain))
    assert nan.any() and not nan.all()  # some, not all, loops hit the bound
    for baseline in ("leave_one_out", "optimal"):
        est = je.score_function(baseline)
        assert np.isnan(np.asarray(je.grad_samples(f, est, num_samples=8)(KEY, t))).all()
        assert np.isnan(je.grad(f, est, num_samples=8, chunk_size=3)(KEY, t))
