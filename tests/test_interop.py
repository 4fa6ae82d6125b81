"""numpyro distributions at je.sample sites (the optional ``interop`` extra).

What needs only sample/rsample/log_prob works and is unbiased against exact gradients (closed
forms, exact enumeration); what needs jaxestim's inverse-CDF coupling or family structure
raises EstimatorError at trace time, eagerly and under jax.jit, naming the jaxestim family.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
import pytest
from _stats import assert_unbiased

import jaxestim as je
import jaxestim.distributions as jd
from jaxestim.distributions._foreign import ForeignDistribution

KEY = jax.random.key(20261129)


def batches(fun, est, params, reps=40, n=100, key=KEY):
    """``reps`` independent je.grad estimates (``n`` samples each), jitted, as float64."""
    keys = jax.random.split(key, reps)
    g = jax.jit(jax.vmap(lambda k: je.grad(fun, est, num_samples=n)(k, params)))(keys)
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), g)


# --------------------------------------------------------------------------------------------
# Reparameterized families under pathwise, against the same program with jaxestim families
# --------------------------------------------------------------------------------------------


def test_pathwise_reparameterized():
    """Normal, Gamma and Beta sites from numpyro and from jaxestim in one program (one
    compilation): both unbiased against the closed forms."""
    libs = {"np": (nd.Normal, nd.Gamma, nd.Beta), "je": (jd.Normal, jd.Gamma, jd.Beta)}

    def prog(key, p):
        total = 0.0
        for lib, (normal, gamma, beta) in libs.items():
            key, k1, k2, k3 = jax.random.split(key, 4)
            x = je.sample(k1, normal(p[lib]["loc"], 1.3))
            y = je.sample(k2, gamma(p[lib]["conc"], 2.0))
            z = je.sample(k3, beta(p[lib]["a"], 2.5))
            total = total + x**2 + y**2 + z
        return total

    theta = {"loc": 0.7, "conc": 1.5, "a": 1.5}
    g = batches(prog, je.pathwise(), {"np": theta, "je": dict(theta)})
    for lib in libs:
        # E[x^2] = loc^2 + s^2; E[y^2] = c (c + 1) / r^2; E[z] = a / (a + b)
        assert_unbiased(g[lib]["loc"], 2 * 0.7, se_max=0.05)
        assert_unbiased(g[lib]["conc"], (2 * 1.5 + 1) / 4.0, se_max=0.05)
        assert_unbiased(g[lib]["a"], 2.5 / 4.0**2, se_max=0.02)


def test_auto_and_forward_and_crn_finite_differences_at_continuous_sites():
    def prog(key, p):
        x = je.sample(key, nd.Normal(p["a"], 1.0), (2,))
        return jnp.sum(jnp.sin(x))

    # E[sin(x)] = sin(a) exp(-1/2) per coordinate
    exact = 2 * math.cos(0.4) * math.exp(-0.5)
    forward = (je.pathwise(mode="forward"), je.forward_gradient())
    for est in (None, *forward, je.finite_difference(step=1e-3)):
        g = batches(prog, est, {"a": 0.4})
        assert_unbiased(g["a"], exact, se_max=0.05)


# --------------------------------------------------------------------------------------------
# Discrete families under the score function, against exact enumeration
# --------------------------------------------------------------------------------------------


def test_score_function_bernoulli_against_enumeration():
    p, c = 0.35, np.array([0.5, -1.0, 2.0])

    def prog(key, params):
        x = je.sample(key, nd.Bernoulli(probs=params["p"]), (3,))
        return (jnp.dot(x.astype(jnp.float32), c) - 0.8) ** 2

    exact = 0.0
    for bits in range(8):
        x = np.array([(bits >> i) & 1 for i in range(3)], float)
        k = x.sum()
        dpmf = k * p ** (k - 1) * (1 - p) ** (3 - k) - (3 - k) * p**k * (1 - p) ** (2 - k)
        exact += dpmf * (x @ c - 0.8) ** 2
    g = batches(prog, je.score_function("leave_one_out"), {"p": p})
    assert_unbiased(g["p"], exact, se_max=0.1)


def test_score_function_poisson_against_enumeration():
    lam = 2.5

    def prog(key, params):
        return jnp.cos(je.sample(key, nd.Poisson(params["rate"])).astype(jnp.float32))

    k = np.arange(80)
    pmf = np.exp(k * np.log(lam) - lam - np.array([math.lgamma(i + 1) for i in k]))
    exact = float(np.sum(pmf * (k / lam - 1) * np.cos(k)))
    g = batches(prog, je.score_function("leave_one_out"), {"rate": lam})
    assert_unbiased(g["rate"], exact, se_max=0.05)


def test_score_function_categorical_against_enumeration():
    logits = np.array([0.2, -0.4, 0.9])
    values = np.array([1.0, -2.0, 3.0])

    def prog(key, params):
        i = je.sample(key, nd.Categorical(logits=params["logits"]))
        return jnp.asarray(values, jnp.float32)[i]

    pr = np.exp(logits) / np.exp(logits).sum()
    exact = pr * (values - pr @ values)  # d/dlogits of sum_i softmax_i v_i
    g = batches(prog, je.score_function("leave_one_out"), {"logits": logits})
    assert_unbiased(g["logits"], exact, se_max=0.1)


def test_score_function_in_scan_with_loop_key():
    p = 0.3

    def prog(key, params):
        def body(c, _, k):
            return c + je.sample(k, nd.Bernoulli(probs=params["p"])), None

        s, _ = je.scan(body, 0, None, length=5, key=key)
        return s.astype(jnp.float32) ** 2

    # S ~ Binomial(5, p): E[S^2] = 5p + 20p^2
    g = batches(prog, je.score_function("leave_one_out"), {"p": p}, n=200)
    assert_unbiased(g["p"], 5 + 40 * p, se_max=0.5)


def test_uniform_support_moving_with_theta_is_nan_under_score_function():
    def prog(key, th):
        return je.sample(key, nd.Uniform(0.0, th))

    assert np.isnan(je.grad(prog, je.score_function(), num_samples=8)(KEY, 2.0))
    g = batches(prog, je.pathwise(), 2.0, reps=20)
    assert_unbiased(g, 0.5, se_max=0.05)


def test_pytree_validate_and_check():
    d = ForeignDistribution(nd.Normal(jnp.zeros(3), 1.0))
    leaves, tree = jax.tree_util.tree_flatten(d)
    assert isinstance(jax.tree_util.tree_unflatten(tree, leaves), ForeignDistribution)
    assert d.batch_shape == (3,) and not d.is_discrete and d.is_reparameterized
    assert ForeignDistribution(nd.Poisson(1.0)).is_discrete
    out = jax.jit(lambda k, d: je.sample(k, d, 2))(KEY, nd.Normal(jnp.zeros(3), 1.0))
    assert out.shape == (2, 3)

    def prog(key, th):
        k1, k2 = jax.random.split(key)
        b = je.sample(k1, nd.Bernoulli(probs=0.5))
        return je.sample(k2, nd.Normal(th, 1.0)) * b

    g = je.grad(prog, None, num_samples=4, validate=True)(KEY, 0.3)
    assert np.isfinite(g)
    assert "no problems" in str(je.check(prog, KEY, 0.3))

    def site(key, th):  # numpyro's sampler inside je.sample belongs to the site
        return je.sample(key, nd.Bernoulli(probs=th)).astype(jnp.float32)

    assert "no problems" in str(je.check(site, KEY, 0.3))

    def bypass(key, th):  # ... but sampling with numpyro directly is still reported
        return nd.Bernoulli(probs=th).sample(key).astype(jnp.float32)

    assert "no problems" not in str(je.check(bypass, KEY, 0.3))


def test_unsupported_library_raises_type_error():
    class DistraxLike:
        def sample(self, *, seed, sample_shape=()):
            return jnp.zeros(sample_shape)

        def log_prob(self, x):
            return x

    with pytest.raises(TypeError, match="distrax"):
        je.sample(KEY, DistraxLike())


# --------------------------------------------------------------------------------------------
# Estimators that need jaxestim's coupling or family structure: EstimatorError at trace time
# --------------------------------------------------------------------------------------------


def _relax():
    return je.relax(lambda phi, z: phi * jnp.sum(z), jnp.zeros(()))


_COUPLED = {
    "stochastic_ad": je.stochastic_ad,
    "finite_difference(crn)": je.finite_difference,
    "disarm": je.disarm,
    "arm": je.arm,
    "enumeration": je.enumeration,
    "gumbel_softmax": je.gumbel_softmax,
    "straight_through": je.straight_through,
    "gumbel_rao": je.gumbel_rao,
    "reinmax": je.reinmax,
    "rebar": je.rebar,
    "relax": _relax,
    "measure_valued": je.measure_valued,
    "pathwise": je.pathwise,
    "pathwise(forward)": lambda: je.pathwise(mode="forward"),
    "forward_gradient": je.forward_gradient,
}


def _bernoulli_prog(key, p):
    return jnp.sum(je.sample(key, nd.Bernoulli(probs=p), (2,)).astype(jnp.float32))


@pytest.mark.parametrize("name", sorted(_COUPLED))
@pytest.mark.parametrize("jit", [False, True])
def test_coupling_estimators_raise_naming_the_family(name, jit):
    est = _COUPLED[name]()
    grad = je.grad(_bernoulli_prog, est, num_samples=2)
    if est.has_state:  # REBAR / RELAX learn their control variate
        grad = functools.partial(grad, estimator_state=est.init())
    if jit:
        grad = jax.jit(grad)
    with pytest.raises(je.EstimatorError, match=r"jaxestim\.distributions\.Bernoulli\(probs"):
        grad(KEY, 0.3)


@pytest.mark.parametrize(
    ("dist", "family"),
    [
        (nd.Poisson(2.0), "Poisson"),
        (nd.Categorical(logits=jnp.zeros(3)), "Categorical"),
        (nd.Binomial(4, probs=0.3), "Binomial"),
        (nd.Geometric(probs=0.3), "Geometric"),
    ],
)
def test_message_maps_numpyro_family(dist, family):
    def prog(key, th):
        return je.sample(key, dist).astype(jnp.float32) * th

    with pytest.raises(je.EstimatorError, match=rf"jaxestim\.distributions\.{family}\("):
        jax.jit(je.grad(prog, je.stochastic_ad(), num_samples=2))(KEY, 1.0)


def test_continuous_sites_under_coupling_estimators_and_generic_message():
    def prog(key, th):
        return je.sample(key, nd.HalfNormal(th)) ** 2

    with pytest.raises(je.EstimatorError, match="no counterpart of HalfNormal"):
        je.grad(prog, je.stochastic_ad(), num_samples=2)(KEY, 1.0)

    def normal_prog(key, th):
        return je.sample(key, nd.Normal(th, 1.0)) ** 2

    with pytest.raises(je.EstimatorError, match=r"jaxestim\.distributions\.Normal\(loc, scale"):
        je.grad(normal_prog, je.finite_difference(scheme="complex"), num_samples=2)(KEY, 1.0)
    with pytest.raises(je.EstimatorError, match=r"estimator=\.\.\."):
        je.grad(normal_prog, je.gumbel_softmax(), num_samples=2)(KEY, 1.0)


def test_per_site_override_and_independent_key_finite_differences():
    # a relaxation for the jaxestim site, the score function at the numpyro site
    def prog(key, p):
        k1, k2 = jax.random.split(key)
        a = je.sample(k1, jd.Bernoulli(p))
        b = je.sample(k2, nd.Bernoulli(probs=p), estimator=je.score_function("leave_one_out"))
        return a * b.astype(jnp.float32)

    g = je.grad(prog, je.straight_through(), num_samples=8)(KEY, 0.4)
    assert np.isfinite(g)
    fd = je.finite_difference(step=0.1, common_random_numbers=False)
    assert np.isfinite(je.grad(_bernoulli_prog, fd, num_samples=4)(KEY, 0.3))


@pytest.mark.parametrize(
    "make",
    [
        lambda t: nd.Bernoulli(probs=t),
        lambda t: nd.Poisson(t),
        lambda t: nd.Categorical(probs=jnp.stack([t, 1 - t])),
    ],
    ids=["Bernoulli", "Poisson", "Categorical"],  # Binomial: same code path as Bernoulli
)
def test_score_function_at_support_boundary_is_nan_not_biased(make):
    # at theta = 0 the value 1 has zero mass but growing: the score function never sees it
    def prog(key, th):
        return je.sample(key, make(th)).astype(jnp.float32)

    grad = jax.jit(je.grad(prog, je.score_function(), num_samples=4))
    assert np.isnan(grad(KEY, 0.0))
    assert np.isfinite(grad(KEY, 0.3))

    def fixed(key, th):  # on the boundary, but not moving with theta: exact, not NaN
        return je.sample(key, make(jnp.zeros(()))).astype(jnp.float32) * th

    deterministic = float(make(jnp.zeros(())).sample(KEY))  # the boundary's point mass
    assert je.grad(fixed, je.score_function(), num_samples=4)(KEY, 1.0) == deterministic


def test_complex_step_with_theta_free_numpyro_site():
    def prog(key, th):
        return je.sample(key, nd.Normal(0.0, 1.0)) * th + th**2

    g = je.grad_samples(prog, je.finite_difference(scheme="complex"), num_samples=64)(KEY, 1.5)
    assert_unbiased(g, 3.0, se_max=0.2)  # d/dth E[x th + th^2] = 2 th (per sample: x + 2 th)
