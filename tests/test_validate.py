"""Invalid parameters: NaN value => NaN gradient, and the opt-in checked mode validate=True."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxestim as je
from jaxestim import distributions as D

KEY = jax.random.key(11)


@pytest.fixture(autouse=True)
def param_checks(monkeypatch):
    """Use the distributions' traceable ``_param_checks``; stub them where not present yet."""
    if "_param_checks" not in vars(D.Bernoulli):

        def bern_checks(self):
            p = self.probs
            return (("probs", (p >= 0) & (p <= 1), "in [0, 1]"),)

        monkeypatch.setattr(D.Bernoulli, "_param_checks", bern_checks, raising=False)
    if "_param_checks" not in vars(D.Normal):

        def normal_checks(self):
            s = jnp.broadcast_to(self.scale, self.batch_shape)
            loc = jnp.broadcast_to(self.loc, self.batch_shape)
            return (
                ("loc", jnp.isfinite(loc), "finite"),
                ("scale", jnp.isfinite(s) & (s > 0), "finite and > 0"),
            )

        monkeypatch.setattr(D.Normal, "_param_checks", normal_checks, raising=False)


def bern(key, t):
    return 2.0 * je.sample(key, D.Bernoulli(probs=t))


def two_sites(key, t):
    k1, k2 = jax.random.split(key)
    z = je.sample(k1, D.Normal(t, 1.0))
    x = je.sample(k2, D.Bernoulli(probs=t))
    return z + x


def walk(key, t):
    # the success probability t (1 + i / 10) leaves [0, 1] at step i > 10 (1 - t) / t
    def step(n, xs):
        k, i = xs
        return n + je.sample(k, D.Bernoulli(probs=t * (1.0 + i / 10.0))), None

    return je.scan(step, 0.0, (jax.random.split(key, 8), jnp.arange(8.0)))[0]


BERN_MSG = r"je\.sample: Bernoulli parameter `probs` must be in \[0, 1\], got 1\.5"


# ------------------------------------------------------------- NaN value => NaN gradient
@pytest.mark.parametrize(
    "est", [je.pathwise(), je.auto(), je.finite_difference(), je.stochastic_ad()]
)
def test_nan_value_gives_nan_gradient(est):
    # log(t - 1) is NaN for t < 1 while its derivative 1/(t - 1) is finite
    f = lambda k, t: je.sample(k, D.Normal(t, 1.0)) + jnp.log(t - 1.0)
    v, g = je.value_and_grad(f, est, num_samples=4)(KEY, 0.5)
    assert np.isnan(v) and np.isnan(g)
    v, g = je.value_and_grad(f, est, num_samples=4)(KEY, 1.5)
    assert np.isfinite(v) and np.isfinite(g)


def test_nan_per_sample_in_grad_samples():
    # x + log(x) is NaN exactly for the samples with x < 0
    f = lambda k, t: (lambda x: x + jnp.log(x))(je.sample(k, D.Normal(t, 1.0)))
    gs = je.grad_samples(f, je.pathwise(), num_samples=64)(KEY, 0.5)
    xs = jax.vmap(lambda k: D.Normal(0.5, 1.0).rsample(k))(jax.random.split(KEY, 64))
    np.testing.assert_array_equal(np.isnan(gs), np.asarray(xs) < 0)
    assert 0 < int(np.sum(np.isnan(gs))) < 64
    v, g = je.value_and_grad(f, je.pathwise(), num_samples=64)(KEY, 0.5)
    assert np.isnan(v) and np.isnan(g)
    # je.grad does not compute the value; its NaN rule is about the sites' parameters (a
    # NaN from the program's own arithmetic is differentiated as jax.grad would)
    bad = lambda k, t: je.sample(k, D.Normal(0.0, t)) ** 2
    assert np.isnan(je.grad(bad, je.pathwise(), num_samples=64)(KEY, -0.5))


# --------------------------------------------------------------------- validate=True
@pytest.mark.parametrize("kind", ["grad", "value_and_grad", "grad_samples"])
def test_validate_raises_eagerly_with_site_message(kind):
    transform = getattr(je, kind)
    g = transform(bern, je.score_function(), num_samples=4, validate=True)
    with pytest.raises(ValueError, match=BERN_MSG):
        g(KEY, 1.5)


def test_validate_raises_under_user_jit_and_vmap():
    g = je.grad(bern, je.score_function(), num_samples=4, validate=True)
    # Under the user's jit the check cannot fail at trace time: an io_callback throws at
    # run time and the caller sees jax.errors.JaxRuntimeError containing the message.
    with pytest.raises(jax.errors.JaxRuntimeError, match=BERN_MSG):
        jax.block_until_ready(jax.jit(g)(KEY, 1.5))
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"Bernoulli parameter `probs`"):
        jax.block_until_ready(jax.vmap(g, in_axes=(None, 0))(KEY, jnp.array([0.3, 1.5])))
    ok = jax.jit(g)(KEY, 0.3)
    np.testing.assert_array_equal(ok, g(KEY, 0.3))


def test_validate_inside_scan_reports_the_offending_value():
    # t = 0.5: step i = 2 has probs 0.6 (fine) ... step 7 has 0.85; t = 0.8: step 3 -> 1.04
    g = je.grad(walk, je.score_function("leave_one_out"), num_samples=4, validate=True)
    assert np.isfinite(g(KEY, 0.5))
    with pytest.raises(ValueError, match=r"Bernoulli parameter `probs` must be in \[0, 1\]"):
        g(KEY, 0.8)
    for est in (je.stochastic_ad(), je.finite_difference()):
        with pytest.raises(ValueError, match="Bernoulli parameter `probs`"):
            je.grad(walk, est, num_samples=2, validate=True)(KEY, 0.8)


def test_validate_names_only_the_offending_site():
    g = je.grad(two_sites, je.auto(), num_samples=4, validate=True)
    with pytest.raises(ValueError) as info:
        g(KEY, 1.5)
    assert "Bernoulli parameter `probs`" in str(info.value)
    assert "Normal" not in str(info.value)

    def bad_scale(key, t):
        k1, k2 = jax.random.split(key)
        return je.sample(k1, D.Normal(0.0, t - 1.0)) + je.sample(k2, D.Bernoulli(probs=t))

    with pytest.raises(ValueError) as info:
        je.grad(bad_scale, je.auto(), num_samples=4, validate=True)(KEY, 0.5)
    msg = str(info.value)
    assert "je.sample: Normal parameter `scale` must be" in msg and "got -0.5" in msg
    assert "Bernoulli" not in msg


ESTIMATORS = {
    "auto": je.auto(),
    "sf_loo": je.score_function("leave_one_out"),
    "st": je.straight_through(),
    "gumbel": je.gumbel_softmax(0.5),
    "fd": je.finite_difference(),
    "sad": je.stochastic_ad(),
}


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_valid_programs_identical_with_and_without_validate(name):
    est = ESTIMATORS[name]
    for fun, kind in ((two_sites, "value_and_grad"), (walk, "grad_samples")):
        transform = getattr(je, kind)
        plain = transform(fun, est, num_samples=6, chunk_size=4)(KEY, 0.3)
        checked = transform(fun, est, num_samples=6, chunk_size=4, validate=True)(KEY, 0.3)
        jax.tree_util.tree_map(np.testing.assert_array_equal, checked, plain)
    jitted = jax.jit(je.grad(two_sites, est, num_samples=6, validate=True))(KEY, 0.3)
    np.testing.assert_array_equal(jitted, je.grad(two_sites, est, num_samples=6)(KEY, 0.3))


def test_validate_composes_with_higher_derivatives():
    g = je.grad(bern, je.score_function("leave_one_out"), num_samples=64, validate=True)
    d2 = jax.grad(lambda t: g(KEY, t))(0.3)
    plain = je.grad(bern, je.score_function("leave_one_out"), num_samples=64)
    np.testing.assert_array_equal(d2, jax.grad(lambda t: plain(KEY, t))(0.3))


def test_validation_flag_does_not_leak():
    from jaxestim import _validation

    je.grad(bern, je.score_function(), num_samples=2, validate=True)(KEY, 0.3)
    with pytest.raises(ValueError):
        je.grad(bern, je.score_function(), num_samples=2, validate=True)(KEY, 1.5)
    assert not _validation.active()
    # a later unchecked transform of the same program runs without checks
    g = je.grad(bern, je.score_function(), num_samples=2)(KEY, 1.5)
    assert g.shape == ()
    with pytest.raises(TypeError, match="validate"):
        je.grad(bern, validate="yes")
