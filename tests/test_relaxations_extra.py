"""Gumbel-Rao (Rao-Blackwellized straight-through Gumbel-softmax) and ReinMax.

Both are biased, so each is checked against the exact mean *of the estimator*, computed
independently in NumPy float64: ReinMax's gradient is a function of the discrete sample
alone, so its mean is an enumeration over the samples (and equals the exact gradient when
``f`` is quadratic and ``tau = 1``, the paper's second-order claim); Gumbel-Rao keeps the
mean of straight-through Gumbel-softmax, computed by quadrature. The conditional Gumbel
sampler is checked against rejection sampling; temperature schedules drive the traced
temperature of a jitted training step without retracing.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _stats import assert_unbiased, mean_se
from scipy import integrate, special, stats

import jaxestim as je
from jaxestim import distributions as D
from jaxestim.estimators.relaxations import conditional_gumbel

KEY = jax.random.key(0)
P = np.array([0.6, 0.51, 0.48])  # the three-Bernoulli toy's targets
V = np.array([1.0, -0.5, 2.0])  # categorical values
W = np.array([0.3, 1.0, -0.4])
ETA = np.array([0.3, -0.7, 1.1])
THETA = np.array([0.2, -0.4, 0.5])
N = 20_000


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def jac(p):  # Jacobian of softmax at probabilities p: diag(p) - p p^T
    return np.diag(p) - np.outer(p, p)


def mixed(key, prm):
    """Three Bernoulli sites (the toy) plus one Categorical site with a nonlinear f."""
    k1, k2 = jax.random.split(key)
    x = je.sample(k1, D.Bernoulli(logits=prm["eta"]))
    y = je.sample(k2, D.Categorical(logits=prm["theta"]))
    return jnp.sum((x - P) ** 2) + jnp.exp(je.select(V, y))


def exact_mixed(eta, theta):
    s = special.expit(eta)
    return {"eta": (1 - 2 * P) * s * (1 - s), "theta": jac(softmax(theta)) @ np.exp(V)}


def flat(g):
    return jnp.concatenate([g["eta"], g["theta"]], axis=-1)


def gs_mean_bernoulli(eta, tau):
    """E[2 (x - p) sigmoid'((eta + L)/tau) / tau], x = 1[eta + L > 0], L logistic: the mean
    of straight-through Gumbel-softmax (and of Gumbel-Rao) on the toy, by 1-D quadrature."""
    out = []
    for e, p in zip(eta, P, strict=True):

        def h(u, x, e=e, p=p):
            s = special.expit((e + special.logit(u)) / tau)
            return 2 * (x - p) * s * (1 - s) / tau

        cut = special.expit(-e)  # x = 1 iff u > cut
        out.append(
            integrate.quad(h, 0, cut, args=(0.0,), epsabs=1e-12)[0]
            + integrate.quad(h, cut, 1, args=(1.0,), epsabs=1e-12)[0]
        )
    return np.array(out)


def gs_mean_categorical(theta, tau, grad_f, n=64):
    """E[J_tau(theta + G)^T grad_f(D)] by Gauss-Legendre quadrature, conditioning on D = i:
    the max is Gumbel(logsumexp theta), the others Gumbel(theta_j) truncated below it (a
    smooth integrand in the uniforms; the sampler's law is checked separately below)."""
    x, w = np.polynomial.legendre.leggauss(n)
    u, w = (x + 1) / 2, w / 2
    pi = softmax(theta)
    lse = np.log(np.exp(theta).sum())
    total = np.zeros(3)
    for i in range(3):
        o = [j for j in range(3) if j != i]
        top = lse - np.log(-np.log(u))[:, None, None]
        e1 = -np.log(u)[None, :, None]
        e2 = -np.log(u)[None, None, :]
        z = np.empty((n, n, n, 3))
        z[..., i] = np.broadcast_to(top, (n, n, n))
        z[..., o[0]] = -np.log(np.exp(-theta[o[0]]) * e1 + np.exp(-top))
        z[..., o[1]] = -np.log(np.exp(-theta[o[1]]) * e2 + np.exp(-top))
        s = softmax(z / tau)
        g = grad_f(np.eye(3)[i])
        jg = (s * g - s * (s @ g)[..., None]) / tau  # J_tau(z) g (J symmetric)
        ww = w[:, None, None] * w[None, :, None] * w[None, None, :]
        total += pi[i] * np.einsum("abc,abcj->j", ww, jg)
    return total


# ------------------------------------------------------------------ conditional Gumbel law
def test_conditional_gumbel_matches_rejection_sampling():
    logits = jnp.array([0.5, -0.3, 1.2])
    z = logits + jax.random.gumbel(jax.random.key(1), (200_000, 3))
    idx = np.asarray(jnp.argmax(z, -1))
    z = np.asarray(z)
    for i in range(3):
        cond = np.asarray(conditional_gumbel(jax.random.key(2 + i), logits, jnp.asarray(i), 20_000))
        assert np.all(np.argmax(cond, -1) == i)
        for j in range(3):  # every coordinate's marginal, and the max's known law
            p = stats.ks_2samp(cond[:, j], z[idx == i, j]).pvalue
            assert p > 1e-3, (i, j, p)
        lse = float(jax.nn.logsumexp(logits))
        assert stats.kstest(cond[:, i], stats.gumbel_r(loc=lse).cdf).pvalue > 1e-3


# ------------------------------------------------------------------ Gumbel-Rao
@pytest.fixture(scope="module")
def rao_samples():
    prm = {"eta": jnp.zeros(3), "theta": jnp.asarray(THETA)}

    def run(est):
        return np.asarray(flat(jax.jit(je.grad_samples(mixed, est, num_samples=N))(KEY, prm)))

    return {
        "gs": run(je.gumbel_softmax(0.5, hard=True)),
        1: run(je.gumbel_rao(0.5, num_samples=1)),
        10: run(je.gumbel_rao(0.5, num_samples=10)),
    }


def test_gumbel_rao_k1_is_straight_through_gumbel_sample_for_sample(rao_samples):
    np.testing.assert_allclose(rao_samples[1], rao_samples["gs"], rtol=1e-6, atol=1e-7)


def test_gumbel_rao_mean_is_straight_through_gumbel_mean(rao_samples):
    # The conditional expectation keeps ST-Gumbel's mean, computed here by quadrature.
    exact = np.concatenate(
        [
            gs_mean_bernoulli(np.zeros(3), 0.5),
            gs_mean_categorical(THETA, 0.5, lambda y: np.exp(V @ y) * V),
        ]
    )
    for k in (1, 10):
        assert_unbiased(rao_samples[k], exact, se_max=np.array([0.003] * 3 + [0.02] * 3))
    # ... which is biased: 5 SE away from the exact gradient on the toy's first logit
    m, se = mean_se(rao_samples[10])
    bias = m - flat(exact_mixed(np.zeros(3), THETA))
    assert abs(bias[0]) > 3 * se[0], (bias, se)


def test_quadrature_reference_converged():
    g = lambda y: np.exp(V @ y) * V
    np.testing.assert_allclose(
        gs_mean_categorical(THETA, 0.5, g, 64), gs_mean_categorical(THETA, 0.5, g, 96), atol=2e-4
    )


def test_gumbel_rao_variance_decreases_with_k(rao_samples):
    sd1, sd10 = rao_samples[1].std(0), rao_samples[10].std(0)
    # N = 20000: the relative SE of a standard deviation is about 0.5 %
    assert np.all(sd10 < 0.9 * sd1), (sd1, sd10)


def test_per_site_in_scan_with_bulk_keys_and_chunks():
    # f = sum_t (x_t + 2 z_t) in je.scan with key= (RandomStream words, including the
    # conditional draws): x_t ~ Bernoulli(logits=e[0]) under gumbel_rao, mean
    # T E[sigmoid'((e0 + L)/tau)/tau] by quadrature; z_t ~ Bernoulli(logits=e[1]) under
    # reinmax(1), exact for this linear f: 2 T sigmoid'(e1). The transform's estimator is
    # the score function (per-site overrides).
    T, tau, e0, e1 = 5, 0.7, 0.4, -0.6

    def walk(key, e):
        def step(n, _x, k):
            ka, kb = k.split(2)
            x = je.sample(ka, D.Bernoulli(logits=e[0]), estimator=je.gumbel_rao(tau, 4))
            z = je.sample(kb, D.Bernoulli(logits=e[1]), estimator=je.reinmax(1.0))
            return n + x + 2 * z, None

        return je.scan(step, jnp.zeros(()), None, length=T, key=key)[0]

    def h(u):
        s = special.expit((e0 + special.logit(u)) / tau)
        return s * (1 - s) / tau

    q = special.expit(e1)
    exact = [T * integrate.quad(h, 0, 1, epsabs=1e-12)[0], 2 * T * q * (1 - q)]
    gs = je.grad_samples(walk, je.score_function(), num_samples=8000, chunk_size=2000)
    g = np.asarray(jax.jit(gs)(KEY, jnp.array([e0, e1])))
    assert_unbiased(g, exact, se_max=0.01)


# ------------------------------------------------------------------ ReinMax
def quad_prog(key, prm):
    """f quadratic in the Bernoulli and one-hot samples (with a cross term)."""
    k1, k2 = jax.random.split(key)
    x = je.sample(k1, D.Bernoulli(logits=prm["eta"]))
    y = je.sample(k2, D.Categorical(logits=prm["theta"]))
    return jnp.sum((x - P) ** 2) + x[0] * x[1] + je.select(V, y) ** 2 + je.select(W, y)


def quad_exact(eta, theta):
    q = special.expit(eta)
    geta = np.zeros(3)
    for xs in itertools.product([0.0, 1.0], repeat=3):
        x = np.array(xs)
        f = np.sum((x - P) ** 2) + x[0] * x[1]
        pr = np.prod(np.where(x == 1, q, 1 - q))
        geta += pr * f * (x - q)  # d log p(x) / d eta = x - sigmoid(eta)
    fy = V**2 + W
    return np.concatenate([geta, jac(softmax(theta)) @ fy])


def reinmax_mean(eta, theta, tau):
    """E over the samples of ReinMax's gradient, by enumeration (the paper's formula)."""
    q = special.expit(eta)
    geta = np.zeros(3)
    for xs in itertools.product([0.0, 1.0], repeat=3):
        x = np.array(xs)
        pr = np.prod(np.where(x == 1, q, 1 - q))
        df = 2 * (x - P) + np.array([x[1], x[0], 0.0])
        pi1 = (x + special.expit(eta / tau)) / 2
        geta += pr * df * (2 * pi1 * (1 - pi1) - q * (1 - q) / 2)
    pi0 = softmax(theta)
    gth = np.zeros(3)
    for i in range(3):
        e = np.eye(3)[i]
        pi1 = (e + softmax(theta / tau)) / 2
        gth += pi0[i] * (2 * jac(pi1) - jac(pi0) / 2) @ (2 * (V @ e) * V + W)
    return np.concatenate([geta, gth])


def test_reinmax_exact_for_quadratic_f_at_tau_1_and_its_mean_otherwise():
    prm = {"eta": jnp.asarray(ETA), "theta": jnp.asarray(THETA)}
    run = jax.jit(lambda k, p, t: je.grad_samples(quad_prog, je.reinmax(t), num_samples=N)(k, p))
    exact = quad_exact(ETA, THETA)
    np.testing.assert_allclose(reinmax_mean(ETA, THETA, 1.0), exact, rtol=1e-10, atol=1e-12)
    assert_unbiased(np.asarray(flat(run(KEY, prm, 1.0))), exact, se_max=0.02)
    # tau = 2: biased; the estimates match the enumerated mean, not the exact gradient
    g2 = np.asarray(flat(run(KEY, prm, 2.0)))
    assert_unbiased(g2, reinmax_mean(ETA, THETA, 2.0), se_max=0.02)
    m, se = mean_se(g2)
    assert np.max(np.abs(m - exact) / se) > 10
    assert run._cache_size() == 1  # the traced temperature did not recompile


def test_reinmax_forward_value_is_an_exact_sample():
    def f(key, th):
        y = je.sample(key, D.OneHotCategorical(logits=th), (4,))
        return jnp.sum(y * jnp.arange(3.0)), y

    (_, y), _ = je.value_and_grad(f, je.reinmax(), has_aux=True)(KEY, jnp.asarray(THETA))
    assert set(np.unique(np.asarray(y))) <= {0.0, 1.0}
    np.testing.assert_array_equal(np.asarray(y).sum(-1), 1.0)


# ------------------------------------------------------------------ vmap over temperature
def test_vmap_over_temperature_matches_separate_runs():
    prm = {"eta": jnp.asarray(ETA), "theta": jnp.asarray(THETA)}
    taus = jnp.array([0.5, 1.0, 2.0])

    def g(t):  # both estimators in one compiled program
        return jnp.stack(
            [
                flat(je.grad(mixed, est, num_samples=64)(KEY, prm))
                for est in (je.gumbel_rao(t, 3), je.reinmax(t))
            ]
        )

    batched, single = jax.jit(jax.vmap(g))(taus), jax.jit(g)
    for i in (0, 2):
        np.testing.assert_allclose(batched[i], single(taus[i]), rtol=1e-5, atol=1e-6)
    assert not np.allclose(batched[0], batched[2])


# ------------------------------------------------------------------ temperature schedules
@pytest.mark.parametrize(
    "make",
    [
        lambda t: je.gumbel_softmax(t),
        lambda t: je.gumbel_rao(t, 4),
        je.reinmax,
    ],
    ids=["gumbel_softmax", "gumbel_rao", "reinmax"],
)
def test_optax_schedule_drives_traced_temperature_without_retracing(make):
    traces = []

    def prog(key, prm):
        traces.append(1)  # counts Python traces of the program body
        return mixed(key, prm)

    schedule = optax.exponential_decay(2.0, transition_steps=1, decay_rate=0.7, end_value=0.3)
    opt = optax.sgd(0.5)

    @jax.jit
    def step(prm, state, key, i):
        tau = schedule(i)  # traced: a new temperature every step, one compiled program
        g = je.grad(prog, make(tau), num_samples=16)(key, prm)
        upd, state = opt.update(g, state, prm)
        return optax.apply_updates(prm, upd), state

    prm = {"eta": jnp.zeros(3), "theta": jnp.zeros(3)}
    state = opt.init(prm)
    prm, state = step(prm, state, KEY, 0)
    first = len(traces)
    for i in range(1, 6):
        prm, state = step(prm, state, jax.random.fold_in(KEY, i), i)
    assert len(traces) == first and step._cache_size() == 1
    assert all(np.all(np.isfinite(v)) for v in jax.tree.leaves(prm))


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "make", [lambda: je.gumbel_rao(0.5), je.reinmax], ids=["gumbel_rao", "reinmax"]
)
def test_unsupported_sites_and_higher_derivatives_raise(make):
    def pois(key, r):
        return je.sample(key, D.Poisson(r))

    g = je.grad(pois, make(), num_samples=4)
    for call in (lambda: g(KEY, 2.0), lambda: jax.jit(g)(KEY, 2.0)):
        with pytest.raises(je.EstimatorError, match=r"je\.score_function\(\)"):
            call()

    def bern_sq(key, t):
        return (je.sample(key, D.Bernoulli(logits=t)) + t) ** 2

    first = lambda t: je.grad(bern_sq, make(), num_samples=8)(KEY, t)
    for outer in (lambda: jax.grad(first)(0.3), lambda: jax.jit(jax.grad(first))(0.3)):
        with pytest.raises(je.EstimatorError, match="cannot be differentiated again"):
            outer()
    np.testing.assert_allclose(jax.jit(first)(0.3), first(0.3), rtol=1e-5)


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="temperature"):
        je.gumbel_rao(0.0)
    with pytest.raises(ValueError, match="num_samples"):
        je.gumbel_rao(0.5, num_samples=0)
    with pytest.raises(ValueError, match="temperature"):
        je.reinmax(-1.0)
