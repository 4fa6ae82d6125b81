"""Loops: je.scan(key=...) bulk randomness, checkpointing, and CRN finite differences.

Claims tested: same key gives the same draws (eagerly, under jax.jit / jax.vmap, under every
estimator, with and without checkpointing); checkpointed loops give bit-identical
gradients; misuse raises clear errors (eagerly and under jax.jit); the score function and
stochastic_ad on a bulk-key random walk are unbiased.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _stats import assert_unbiased, random_walk_exact

import jaxestim as je
from jaxestim import distributions as D

KEY = jax.random.key(7)
STEPS = 10


def walk(key, p, steps=STEPS, **loop):
    """The random walk with bulk randomness (je.scan(..., key=key))."""

    def step(n, i, k):
        return n + je.sample(k, D.Bernoulli(probs=p * (1 - (n + i) / 200))), None

    return je.scan(step, jnp.zeros_like(p), jnp.arange(1, steps + 1), key=key, **loop)[0]


def walk_keys(key, p, steps=STEPS, **loop):
    """The same walk with one split key per step (the per-key layout)."""

    def step(n, xs):
        k, i = xs
        return n + je.sample(k, D.Bernoulli(probs=p * (1 - (n + i) / 200))), None

    xs = (jax.random.split(key, steps), jnp.arange(1, steps + 1))
    return je.scan(step, jnp.zeros_like(p), xs, **loop)[0]


def mixed(key, th, **loop):
    """Two sites per step (k.split), a continuous and a discrete one, in a reversed scan."""

    def step(c, x, k):
        k1, k2 = k.split(2)
        z = je.sample(k1, D.Normal(th[0] + 0.1 * c, 1.0), (2,))
        b = je.sample(k2, D.Bernoulli(logits=th[1] + 0.05 * x))
        return c + jnp.sum(z) * 0.3 + b, c

    c, ys = je.scan(step, 0.0, jnp.arange(7.0), reverse=True, key=key, **loop)
    return c**2 + jnp.sum(ys) * 0.1


def normal_walk(key, th, **loop):
    def step(c, _, k):
        return c + jnp.tanh(je.sample(k, D.Normal(th * c + 0.2, 1.0))), None

    return je.scan(step, 0.0, None, length=7, key=key, **loop)[0]


TH = jnp.array([0.2, -0.3])


def test_same_key_same_draws_eager_jit_vmap():
    p = jnp.float32(0.5)
    a = walk(KEY, p)
    assert a == walk(KEY, p) == jax.jit(walk)(KEY, p)
    keys = jax.random.split(KEY, 64)
    v = jax.vmap(lambda k: walk(k, p))(keys)
    assert np.array_equal(v, np.array([walk(k, p) for k in keys[:4]] + list(v[4:])))
    assert len(np.unique(v)) > 3  # different keys, different walks
    # with and without checkpointing, and through a two-site reversed body
    assert walk(KEY, p, checkpoint_every=3) == a
    assert mixed(KEY, TH) == mixed(KEY, TH, checkpoint_every=2)


@pytest.mark.parametrize(
    "est",
    [
        je.score_function("leave_one_out"),
        je.stochastic_ad(),
        je.finite_difference(0.01),
        je.finite_difference(0.01, scheme="forward"),
    ],
    ids=lambda e: e.name,
)
def test_estimators_see_the_same_draws(est):
    """The value each estimator reports is the mean of the plain forward runs."""
    n, p = 32, jnp.float32(0.4)
    forward = jax.vmap(lambda k: walk(k, p))(jax.random.split(KEY, n))
    value, _ = je.value_and_grad(walk, est, num_samples=n)(KEY, p)
    np.testing.assert_allclose(value, np.mean(forward), rtol=1e-6)


@pytest.mark.parametrize(
    "est",
    [
        je.score_function("leave_one_out"),
        je.pathwise(),
        je.stochastic_ad(),
        je.finite_difference(0.01),
    ],
    ids=lambda e: e.name,
)
def test_checkpointing_is_bit_identical(est):
    """Per-step checkpointing: bit-identical gradients. Segments (checkpoint_every): the
    same draws and values, gradients equal up to float rounding (reverse mode sums a
    closed-over parameter's cotangent per segment first, and XLA compiles the nested loop
    with a different operation order: ~1 ulp)."""
    prog, arg = {
        "pathwise": (normal_walk, jnp.float32(0.3)),
        "score_function": (mixed, TH),
    }.get(est.name, (walk, jnp.float32(0.5)))
    g = lambda **loop: np.asarray(
        je.grad(lambda k, t: prog(k, t, **loop), est, num_samples=16)(KEY, arg)
    )
    base = g()
    np.testing.assert_array_equal(g(checkpoint=True), base)
    np.testing.assert_allclose(g(checkpoint_every=3), base, rtol=1e-6)
    if est.name == "score_function":  # the per-key layout too
        pk = lambda **loop: je.grad(lambda k, t: walk_keys(k, t, **loop), est, num_samples=16)(
            KEY, jnp.float32(0.5)
        )
        np.testing.assert_allclose(pk(checkpoint_every=3), pk(), rtol=1e-6)


def test_checkpointed_while_and_fori_loops():
    def queue(key, lam, **loop):
        def body(c, k):
            q, t = c
            ka, ks = k.split(2)
            q = q + je.sample(ka, D.Poisson(lam)) - je.sample(ks, D.Bernoulli(probs=0.7))
            return q, t + 1.0

        out = je.while_loop(
            lambda c: c[0] > 0, body, (2.0, 0.0), max_iterations=12, key=key, **loop
        )
        return jnp.nan_to_num(out[1])

    def fori(key, p, **loop):
        body = lambda i, c, k: c + je.sample(k, D.Bernoulli(probs=p)) * i
        return je.fori_loop(0, 9, body, 0.0, key=key, **loop)

    lam = jnp.float32(0.3)
    keys = jax.random.split(KEY, 8)
    q = jax.vmap(lambda k: queue(k, lam))(keys)
    np.testing.assert_array_equal(jax.vmap(lambda k: queue(k, lam, checkpoint_every=5))(keys), q)
    g = lambda **loop: je.grad(
        lambda k, t: fori(k, t, **loop), je.score_function("leave_one_out"), num_samples=8
    )(KEY, jnp.float32(0.4))
    np.testing.assert_allclose(g(checkpoint_every=4), g(), rtol=1e-6)


def test_fd_crn_shares_the_draws():
    """CRN: every perturbed run sees the same draws (the key is not batched), so a parameter
    no site depends on gets ~0 (float rounding of the vectorized runs), unlike without CRN."""

    def prog(key, th):
        z = je.sample(key, D.Normal(th[0], 1.0), (5,))
        return jnp.sum(z**2) + 0.0 * th[1]

    for scheme in ("central", "forward", "backward"):
        g = je.grad(prog, je.finite_difference(0.01, scheme=scheme), num_samples=8)(KEY, TH)
        assert abs(g[1]) < 1e-4, scheme
    indep = je.finite_difference(0.01, common_random_numbers=False)
    assert abs(je.grad(prog, indep, num_samples=8)(KEY, TH)[1]) > 1.0


def _raises(fn, exc, match):
    with pytest.raises(exc, match=match):
        fn()
    with pytest.raises(exc, match=match):
        jax.jit(fn)()


def test_errors():
    p = jnp.float32(0.5)
    sf = je.score_function("leave_one_out")

    def reuse(key, p):
        def step(n, _, k):
            return n + je.sample(k, D.Bernoulli(probs=p)) + je.sample(k, D.Bernoulli(probs=p)), None

        return je.scan(step, 0.0, None, length=3, key=key)[0]

    _raises(lambda: je.grad(reuse, sf, num_samples=4)(KEY, p), je.EstimatorError, "same PRNG key")

    def jax_split(key, p):
        def step(n, _, k):
            k1, _ = jax.random.split(k)
            return n + je.sample(k1, D.Bernoulli(probs=p)), None

        return je.scan(step, 0.0, None, length=3, key=key)[0]

    _raises(lambda: jax_split(KEY, p), je.EstimatorError, "k.split")

    def direct(key, p):
        return je.scan(
            lambda n, _, k: (D.Bernoulli(probs=p).sample(k), None), 0.0, None, 3, key=key
        )

    _raises(lambda: direct(KEY, p), TypeError, "only be passed to je.sample")

    def outer_key(key, p):  # an outer iteration key used in an inner loop's body
        def step(n, _, k):
            inner = lambda m, _: (m + je.sample(k, D.Bernoulli(probs=p)), None)
            return je.scan(inner, n, None, length=2)[0], None

        return je.scan(step, 0.0, None, length=3, key=key)[0]

    _raises(
        lambda: je.grad(outer_key, sf, num_samples=4)(KEY, p), je.EstimatorError, "outside the loop"
    )
    with pytest.raises(ValueError, match="length"):
        je.scan(lambda c, x, k: (c, None), 0.0, None, key=KEY)
    with pytest.raises(ValueError, match="checkpoint_every"):
        je.scan(lambda c, x: (c, None), 0.0, None, length=3, checkpoint_every=0)
    with pytest.raises(TypeError, match="checkpoint"):
        je.scan(lambda c, x: (c, None), 0.0, None, length=3, checkpoint="yes")
    with pytest.raises(je.EstimatorError, match="max_iterations"):
        je.while_loop(lambda c: c < 3, lambda c, k: c + 1, 0.0, key=KEY)
    with pytest.raises(je.EstimatorError, match="static"):
        jax.jit(lambda hi: je.fori_loop(0, hi, lambda i, c, k: c, 0.0, key=KEY))(3)
    with pytest.raises(TypeError, match="PRNG key"):
        je.scan(lambda c, x, k: (c, None), 0.0, None, length=3, key=1.0)


@pytest.mark.parametrize(
    "est", [je.score_function("leave_one_out"), je.stochastic_ad()], ids=lambda e: e.name
)
def test_unbiased_on_bulk_key_walk(est):
    p, steps = 0.5, 20
    exact = random_walk_exact(p, steps)[1]
    g = je.grad_samples(lambda k, q: walk(k, q, steps), est, num_samples=4000)(KEY, jnp.float32(p))
    se_max = 0.25 if est.name == "stochastic_ad" else 0.6
    assert_unbiased(np.asarray(g, np.float64), exact, se_max)
