"""A realistic program end to end: a discrete-time SIR epidemic with Binomial transitions.

The epidemic dies out in many runs (I = 0 makes the infection probability exactly 0, a
parameter boundary), the parameters are a dict, and it is calibrated in a jitted optax loop
under the user's own ``jax.jit``. The exact gradient comes from dynamic programming over
the (S, I) state in NumPy float64, with the derivative propagated forward in (beta, gamma).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _stats import assert_unbiased
from scipy import special

import jaxestim as je
from jaxestim import distributions as D

POP, I0, STEPS = 10, 2, 8
PARAMS = {"beta": 1.2, "gamma": 0.3}


def sir(key, params):
    beta, gamma = params["beta"], params["gamma"]

    def step(state, k):
        s, i = state
        k1, k2 = jax.random.split(k)
        p_inf = 1.0 - jnp.exp(-beta * i / POP)
        new_inf = je.sample(k1, D.Binomial(s, probs=p_inf))
        new_rec = je.sample(k2, D.Binomial(i, probs=gamma))
        return (s - new_inf, i + new_inf - new_rec), None

    init = (jnp.asarray(POP - I0, jnp.float32), jnp.asarray(I0, jnp.float32))
    (s, _), _ = je.scan(step, init, jax.random.split(key, STEPS))
    return s  # final number of susceptibles


def _binom_and_derivative(n, p, dp):
    """pmf of Binomial(n, p) over a = 0..n and its derivative for dp/dtheta = dp."""
    a = np.arange(n + 1)
    c = special.comb(n, a)
    pa = np.where(a > 0, p ** np.maximum(a - 1, 0), 0.0)  # p^(a-1), 0 for a = 0
    q = 1 - p
    qa = np.where(n - a > 0, q ** np.maximum(n - a - 1, 0), 0.0)  # q^(n-a-1)
    pmf = c * p**a * q ** (n - a)
    dpmf = c * (a * pa * q ** (n - a) - (n - a) * p**a * qa) * dp
    return pmf, dpmf


def sir_exact(beta, gamma, g=lambda s: s):
    """E[g(S_T)] and its gradient in (beta, gamma) by forward dynamic programming."""
    pi = {(POP - I0, I0): (1.0, np.zeros(2))}
    for _ in range(STEPS):
        new = {}
        for (s, i), (w, dw) in pi.items():
            e = np.exp(-beta * i / POP)
            p_inf, dp_inf = 1 - e, e * i / POP
            pin, dpin = _binom_and_derivative(s, p_inf, dp_inf)
            prec, dprec = _binom_and_derivative(i, gamma, 1.0)
            for a in range(s + 1):
                for r in range(i + 1):
                    pr = pin[a] * prec[r]
                    dpr = np.array([dpin[a] * prec[r], pin[a] * dprec[r]])
                    key = (s - a, i + a - r)
                    v, dv = new.get(key, (0.0, np.zeros(2)))
                    new[key] = (v + w * pr, dv + dw * pr + w * dpr)
        pi = new
    mean = sum(w * g(s) for (s, _), (w, _) in pi.items())
    grad = sum(dw * g(s) for (s, _), (_, dw) in pi.items())
    return mean, grad


def test_sir_reference_sanity():
    # the DP's derivative matches a central difference of its own expectation
    m, g = sir_exact(PARAMS["beta"], PARAMS["gamma"])
    h = 1e-5
    fd = (sir_exact(1.2 + h, 0.3)[0] - sir_exact(1.2 - h, 0.3)[0]) / (2 * h)
    assert abs(fd - g[0]) < 1e-6 and 0 < m < POP - I0


@pytest.mark.parametrize(
    "est, se_max",
    [(je.stochastic_ad(), (0.1, 0.35)), (je.score_function("leave_one_out"), (0.1, 0.35))],
    ids=["stochastic_ad", "loo"],
)
def test_sir_gradient_matches_dynamic_programming(est, se_max):
    _, exact = sir_exact(PARAMS["beta"], PARAMS["gamma"])
    params = {k: jnp.asarray(v) for k, v in PARAMS.items()}
    g = jax.jit(je.grad_samples(sir, est, num_samples=4000))(jax.random.key(5), params)
    for j, name in enumerate(["beta", "gamma"]):
        assert_unbiased(np.asarray(g[name]), exact[j], se_max[j])


def test_sir_calibration_in_a_jitted_optax_loop_stays_finite_when_the_epidemic_dies_out():
    # Fit E[(S_T - observed)^2]: in many runs I hits 0 and p_inf = 0 exactly (a boundary).
    # Unconstrained parameters (log beta, logit gamma) keep the rates in range; a raw gamma
    # pushed below 0 by the optimizer gives NaN (never a plausible number).
    observed = 3.0

    def loss(k, p):
        rates = {"beta": jnp.exp(p["log_beta"]), "gamma": jax.nn.sigmoid(p["logit_gamma"])}
        return (sir(k, rates) - observed) ** 2

    opt = optax.adam(0.05)
    grad_fn = je.grad(loss, je.score_function("leave_one_out"), num_samples=64)

    @jax.jit
    def train_step(params, opt_state, key):
        g = grad_fn(key, params)
        updates, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, g

    params = {"log_beta": jnp.log(0.3), "logit_gamma": jnp.asarray(-0.85)}
    state = opt.init(params)
    for k in jax.random.split(jax.random.key(0), 30):
        params, state, g = train_step(params, state, k)
        assert all(np.isfinite(float(v)) for v in jax.tree_util.tree_leaves(g))
    beta = float(jnp.exp(params["log_beta"]))
    gamma = float(jax.nn.sigmoid(params["logit_gamma"]))
    sq = lambda s: (s - observed) ** 2
    before, _ = sir_exact(0.3, float(jax.nn.sigmoid(-0.85)), sq)
    after, _ = sir_exact(beta, gamma, sq)
    assert after < 0.7 * before, (before, after)


def test_out_of_range_rate_gives_nan_not_a_number():
    params = {"beta": jnp.asarray(0.4), "gamma": jnp.asarray(-0.01)}
    v, g = je.value_and_grad(sir, je.score_function("leave_one_out"), num_samples=8)(
        jax.random.key(0), params
    )
    assert np.isnan(float(v)) and np.isnan(float(g["beta"])) and np.isnan(float(g["gamma"]))
