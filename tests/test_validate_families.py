"""Checked mode (validate=True) with every distribution family under every estimator.

Each group below is one program whose sites cover the families an estimator accepts (site
parameters are entries of one parameter vector ``theta``; site-level estimators are mixed per
site with ``je.sample(..., estimator=...)``). For every transform of the group: (a) at valid
parameters the checked estimate equals the unchecked one for the same key, up to float32
rounding (the checks' extra reads of the parameters can change how XLA fuses the program;
with checks emitted but not read the two are bit-identical);
(b) making one site's parameter invalid raises a checkify error naming that site's
distribution, parameter and value, eagerly and under the caller's ``jax.jit``. A program is
compiled once per transform and checked mode; the invalid parameters reuse that compilation.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxestim as je
from jaxestim import distributions as D

KEY = jax.random.key(5)
N = 4


class Family(NamedTuple):
    make: Any  # theta_i -> distribution
    valid: float
    invalid: float
    message: str  # regex of the checkify message at `invalid`


FAMILIES = {
    "Bernoulli": Family(
        lambda t: D.Bernoulli(probs=t),
        0.3,
        1.5,
        r"Bernoulli parameter `probs` must be in \[0, 1\], got 1\.5",
    ),
    "Geometric": Family(
        lambda t: D.Geometric(probs=t),
        0.4,
        1.5,
        r"Geometric parameter `probs` must be .*, got 1\.5",
    ),
    "Categorical": Family(
        lambda t: D.Categorical(probs=jnp.stack([t, 0.5, 0.5 - t])),
        0.3,
        -0.5,
        r"Categorical parameter `probs` must be finite and >= 0, got \[-0\.5 +0\.5 +1\.? *\]",
    ),
    "OneHotCategorical": Family(
        lambda t: D.OneHotCategorical(logits=jnp.stack([t, 0.0, -t])),
        0.3,
        jnp.inf,
        r"OneHotCategorical parameter `logits` must be finite, got \[ *inf +0\.? +-inf\]",
    ),
    "Binomial": Family(
        lambda t: D.Binomial(4, probs=t),
        0.3,
        -0.5,
        r"Binomial parameter `probs` must be in \[0, 1\], got -0\.5",
    ),
    "Poisson": Family(
        lambda t: D.Poisson(t),
        0.7,
        -0.5,
        r"Poisson parameter `rate` must be finite and >= 0, got -0\.5",
    ),
    "Normal": Family(
        lambda t: D.Normal(0.2, t),
        0.8,
        -0.5,
        r"Normal parameter `scale` must be finite and > 0, got -0\.5",
    ),
    "LogNormal": Family(
        lambda t: D.LogNormal(t, 0.5),
        0.1,
        jnp.nan,
        r"LogNormal parameter `loc` must be finite, got nan",
    ),
    "Laplace": Family(
        lambda t: D.Laplace(0.0, t),
        0.8,
        0.0,
        r"Laplace parameter `scale` must be finite and > 0, got 0\.0",
    ),
    "Logistic": Family(
        lambda t: D.Logistic(0.0, t), 0.8, -1.0, r"Logistic parameter `scale` must be .*, got -1\.0"
    ),
    "Cauchy": Family(
        lambda t: D.Cauchy(0.0, t), 0.8, -1.0, r"Cauchy parameter `scale` must be .*, got -1\.0"
    ),
    "StudentT": Family(
        lambda t: D.StudentT(t, 0.0, 1.0),
        3.0,
        -1.0,
        r"StudentT parameter `df` must be finite and > 0, got -1\.0",
    ),
    "Uniform": Family(
        lambda t: D.Uniform(0.0, t),
        2.0,
        -1.0,
        r"Uniform parameter `high` must be > `low` element-wise, got -1\.0",
    ),
    "Exponential": Family(
        lambda t: D.Exponential(t),
        1.5,
        -1.0,
        r"Exponential parameter `rate` must be finite and > 0, got -1\.0",
    ),
    "Gamma": Family(
        lambda t: D.Gamma(2.0, t),
        1.5,
        -1.0,
        r"Gamma parameter `rate` must be finite and > 0, got -1\.0",
    ),
    "Beta": Family(
        lambda t: D.Beta(t, 2.0),
        1.5,
        -1.0,
        r"Beta parameter `concentration1` must be .*, got -1\.0",
    ),
    "Dirichlet": Family(
        lambda t: D.Dirichlet(jnp.stack([t, 1.0])),
        1.5,
        -1.0,
        r"Dirichlet parameter `concentration` must be finite and > 0, got \[-1\.? +1\.?\]",
    ),
    "MultivariateNormal": Family(
        lambda t: D.MultivariateNormal(jnp.stack([t, 0.0]), scale_tril=jnp.eye(2)),
        0.5,
        jnp.inf,
        r"MultivariateNormal parameter `loc` must be finite, got \[inf +0\.?\]",
    ),
    "TransformedDistribution": Family(
        lambda t: D.TransformedDistribution(D.Normal(0.0, t), D.Exp()),
        0.5,
        -1.0,
        r"TransformedDistribution parameter `scale` must be finite and > 0, got -1\.0",
    ),
}

CONTINUOUS = [
    "Normal", "LogNormal", "Laplace", "Logistic", "Cauchy", "StudentT", "Uniform",
    "Exponential", "Gamma", "Beta", "Dirichlet", "MultivariateNormal", "TransformedDistribution",
]  # fmt: skip
LOC_SCALE = ["Normal", "Laplace", "Logistic", "Cauchy"]


def _scalar(x: jax.Array) -> jax.Array:
    x = jnp.asarray(x, jnp.float32)
    return jnp.sum(x * jnp.arange(1.0, x.size + 1).reshape(x.shape)) if x.ndim else x


def program(sites: list[tuple[str, Any]], loop: str | None = None):
    """``f(key, theta)``: one site per entry of ``sites`` (family, per-site estimator or None)
    with parameter ``theta[i]``; ``loop`` puts the sites into a je.scan or je.while_loop body."""

    def draw(key: Any, theta: jax.Array) -> jax.Array:
        total = jnp.zeros(())
        n = len(sites)
        keys = key.split(n) if isinstance(key, je.LoopKey) else jax.random.split(key, n)
        for i, ((fam, est), k) in enumerate(zip(sites, keys, strict=True)):
            x = je.sample(k, FAMILIES[fam].make(theta[i]), estimator=est)
            total = total + (i + 1) * _scalar(x)
        return total

    def f(key: jax.Array, theta: jax.Array) -> jax.Array:
        if loop is None:
            return jnp.sin(draw(key, theta))
        if loop == "scan":
            step = lambda c, k: (c + jnp.sin(draw(k, theta)), None)
            return je.scan(step, jnp.zeros(()), jax.random.split(key, 3))[0]
        # while loops run until the sum of the draws exceeds 2 (at most 4 iterations)
        more = lambda c: (c[0] < 4) & (c[1] < 2.0)
        if loop == "plain_while":  # jax.lax.while_loop under je.finite_difference
            body = lambda c: (c[0] + 1, c[1] + jnp.abs(draw(jax.random.fold_in(key, c[0]), theta)))
            return je.while_loop(more, body, (0, jnp.zeros(())))[1]
        body = lambda c, k: (c[0] + 1, c[1] + jnp.abs(draw(k, theta)))
        return je.while_loop(more, body, (0, jnp.zeros(())), max_iterations=4, key=key)[1]

    return f


class Group(NamedTuple):
    estimator: Any
    sites: list[tuple[str, Any]]
    kind: str
    jit: bool = False
    loop: str | None = None


def _sites(names: list[str], est: Any = None) -> list[tuple[str, Any]]:
    return [(n, est) for n in names]


SF, LOO, PW = je.score_function(), je.score_function("leave_one_out"), je.pathwise()
RELAXED = [je.gumbel_softmax(0.5), je.straight_through(), je.gumbel_rao(0.5), je.reinmax()]
# Beta, Dirichlet and StudentT draw jax.random.gamma with a differentiated concentration:
# per-sample differentiation of those is outside checked mode (test_loop_limitation)
GAMMA_GRAD = ["Beta", "Dirichlet", "StudentT"]
# One transform kind per group (each costs two compilations, checked and unchecked); the
# kinds rotate so that each runs under site-level and whole-program estimators, with
# count sites and in loop bodies.
GROUPS = {
    # site-level estimators, mixed per site in one program
    "site_grad": Group(
        je.auto(),
        [("Bernoulli", est) for est in (SF, LOO, je.score_function(0.5), *RELAXED)]
        + [("OneHotCategorical", je.gumbel_softmax(0.5)), ("Categorical", je.straight_through())]
        + [("Geometric", LOO)]
        + [*_sites(GAMMA_GRAD, PW), ("Normal", SF), ("Gamma", LOO)],
        "grad",
    ),
    "site_samples": Group(
        je.auto(),
        [
            *_sites([c for c in CONTINUOUS if c not in GAMMA_GRAD], PW),
            ("Bernoulli", LOO),
            ("OneHotCategorical", je.straight_through()),
        ],
        "grad_samples",
    ),
    "sf_optimal": Group(
        je.score_function("optimal"), _sites(["Bernoulli", "Normal", "Categorical"]), "grad_samples"
    ),
    "sf_moving_average": Group(
        je.score_function(je.baselines.MovingAverage(0.9)),
        _sites(["Bernoulli", "Dirichlet"]),
        "grad",
        jit=True,
    ),
    "enumeration": Group(je.enumeration(), _sites(["Bernoulli", "Categorical"]), "value_and_grad"),
    # whole-program estimators
    "fd_crn": Group(
        je.finite_difference(),
        _sites(["Bernoulli", "OneHotCategorical", "Geometric", "Beta"]),
        "value_and_grad",
    ),
    "fd_independent": Group(
        je.finite_difference(common_random_numbers=False),
        _sites(["Categorical", "Gamma", "Uniform"]),
        "grad_samples",
    ),
    "sad_forward": Group(
        je.stochastic_ad(),
        _sites(["Bernoulli", "Categorical", "Geometric", "Normal"]),
        "grad_samples",
    ),
    "sad_reverse": Group(
        je.stochastic_ad(mode="reverse"),
        _sites(["OneHotCategorical", "Geometric", "Laplace"]),
        "grad",
    ),
    "disarm": Group(je.disarm(), _sites(["Bernoulli", "Normal"]), "value_and_grad"),
    "arm": Group(je.arm(), _sites(["Bernoulli", "Exponential"]), "grad_samples"),
    "rebar": Group(je.rebar(learn=False), _sites(["Bernoulli", "Logistic"]), "grad"),
    "relax": Group(
        je.relax(lambda phi, z: phi * jnp.sum(z), jnp.float32(0.1)),
        _sites(["Bernoulli"]),
        "value_and_grad",
    ),
    "measure_valued": Group(
        je.measure_valued(), _sites(["Bernoulli", "Normal", "Exponential", "Gamma"]), "grad"
    ),
    "delta_method": Group(
        je.delta_method(), _sites(["Normal", "Laplace", "Gamma"]), "grad_samples"
    ),
    "forward_gradient": Group(je.forward_gradient(), _sites(LOC_SCALE), "value_and_grad"),
    # gamma-based sites whose concentration derivative is taken per sample
    "gamma_pathwise_samples": Group(
        PW, _sites(["Gamma", "Beta", "Dirichlet", "StudentT"]), "grad_samples"
    ),
    "gamma_sad": Group(je.stochastic_ad(), _sites(["StudentT", "Beta"]), "grad", jit=True),
    # count sites (the Poisson and Binomial samplers' data-dependent loops)
    "counts_sad": Group(je.stochastic_ad(), _sites(["Poisson"]), "grad"),
    "counts_sad_reverse": Group(
        je.stochastic_ad(mode="reverse"), _sites(["Binomial"]), "value_and_grad"
    ),
    "counts_sf": Group(SF, _sites(["Poisson"]), "grad"),
    "counts_sf_samples": Group(LOO, _sites(["Binomial"]), "grad_samples", jit=True),
    "counts_fd": Group(je.finite_difference(), _sites(["Poisson"]), "grad"),
    "counts_measure_valued": Group(je.measure_valued(), _sites(["Poisson"]), "value_and_grad"),
    # sites inside loop bodies
    "scan_sf": Group(LOO, _sites(["Bernoulli", "Poisson"]), "value_and_grad", loop="scan"),
    "scan_sad": Group(
        je.stochastic_ad(), _sites(["Geometric", "Normal"]), "grad", jit=True, loop="scan"
    ),
    "while_fd": Group(
        je.finite_difference(), _sites(["Categorical", "Gamma"]), "grad_samples", loop="while"
    ),
    "while_sf": Group(SF, _sites(["Bernoulli", "OneHotCategorical"]), "grad", loop="while"),
}


def _same(a: Any, b: Any, rtol: float = 1e-5) -> None:
    jax.tree_util.tree_map(
        lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol / 10), a, b
    )


def _rtol(est: Any) -> float:
    # a difference quotient divides the float32 rounding of the differently fused checked
    # program by 2h (h = 1e-2 by default)
    return 1e-3 if isinstance(est, je.FiniteDifference) else 1e-5


def _thetas(sites: list[tuple[str, Any]]) -> tuple[jax.Array, list[tuple[jax.Array, str]]]:
    valid = jnp.array([FAMILIES[f].valid for f, _ in sites], jnp.float32)
    bad = [
        (valid.at[i].set(FAMILIES[f].invalid), FAMILIES[f].message)
        for i, (f, _) in enumerate(sites)
    ]
    return valid, bad


@pytest.mark.parametrize("name", list(GROUPS))
def test_checked_mode(name):
    est, sites, kind, jit, loop = GROUPS[name]
    f = program(sites, loop)
    theta, bad = _thetas(sites)
    transform = getattr(je, kind)
    state = {"estimator_state": est.init()} if est.has_state else {}
    plain = transform(f, est, num_samples=N)(KEY, theta, **state)
    assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(plain))
    checked = transform(f, est, num_samples=N, validate=True)
    _same(checked(KEY, theta, **state), plain, _rtol(est))
    for theta_bad, message in bad:
        with pytest.raises(ValueError, match=r"je\.sample: " + message):
            checked(KEY, theta_bad, **state)
    if jit:  # under the caller's jit the check throws when the compiled code runs
        jitted = jax.jit(lambda k, t: checked(k, t, **state))
        _same(jitted(KEY, theta), plain, _rtol(est))
        for theta_bad, message in bad:
            with pytest.raises(jax.errors.JaxRuntimeError, match=message):
                jax.block_until_ready(jitted(KEY, theta_bad))


def test_numpyro_sites_unchanged():
    # numpyro sites carry no jaxestim checks; checked mode leaves their estimates unchanged
    nd = pytest.importorskip("numpyro.distributions")

    def f(key, theta):
        k1, k2 = jax.random.split(key)
        z = je.sample(k1, nd.Normal(theta[0], 1.0), estimator=PW)
        return jnp.sin(z + je.sample(k2, nd.Bernoulli(probs=theta[1])))

    theta = jnp.array([0.5, 0.3])
    plain = je.value_and_grad(f, je.auto(), num_samples=N)(KEY, theta)
    checked = je.value_and_grad(f, je.auto(), num_samples=N, validate=True)(KEY, theta)
    _same(checked, plain)


@pytest.mark.parametrize(
    "fam, est, kind, loop",
    [
        ("Normal", je.finite_difference(), "grad", "plain_while"),
        ("numpyro.Poisson", SF, "grad", None),
    ],
)
def test_loop_limitation(fam, est, kind, loop):
    # checkify cannot check a data-dependent loop run per sample: a clear error at trace
    # time (eagerly and under jit) instead of checkify's internal one
    if fam.startswith("numpyro."):
        nd = pytest.importorskip("numpyro.distributions")
        f = lambda key, theta: je.sample(key, nd.Poisson(theta[0])) * 1.0
        theta = jnp.array([FAMILIES["Poisson"].valid])
    else:
        f = program([(fam, None)], loop)
        theta = jnp.array([FAMILIES[fam].valid])
    g = getattr(je, kind)(f, est, num_samples=N, validate=True)
    for call in (g, jax.jit(g)):
        with pytest.raises(je.EstimatorError, match="validate=True cannot check this program"):
            call(KEY, theta)
    assert np.all(np.isfinite(getattr(je, kind)(f, est, num_samples=N)(KEY, theta)))


def test_count_samplers_vmap_by_broadcasting():
    # the samplers' vmap rule broadcasts batched against unbatched arguments of any rank
    # (nested vmaps included) and gives what the unbatched call on the full arrays gives
    u = jax.random.uniform(KEY, (2, 5, 3))
    n, p = jnp.array([3.0, 40.0]), jnp.array([0.2, 0.5, 0.9])
    binom = jax.vmap(lambda v, m: jax.vmap(D.Binomial(m, probs=p).icdf)(v))(u, n)
    np.testing.assert_array_equal(binom, D.Binomial(n[:, None, None], probs=p).icdf(u))
