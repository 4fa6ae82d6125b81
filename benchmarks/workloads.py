"""Benchmark workloads W1-W4: jaxestim programs, exact gradients, hand-written JAX baselines.

Every hand-written baseline ``hand(key, theta)`` implements the *same estimator* as the
jaxestim case it is compared with, in the most direct batched JAX we could write: split
``key`` into ``N`` per-sample keys exactly as ``je.grad`` does, draw the noise with
``jax.vmap`` over those keys, and take ``jax.grad`` of the batched mean of the surrogate.
See ``benchmarks/README.md`` for the workload definitions and exact gradients.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxestim as je
from jaxestim import distributions as D

sg = jax.lax.stop_gradient
Array = jax.Array


@dataclass
class Case:
    """One estimator applied to one workload."""

    label: str
    estimator: Any
    hand: Callable[[Array, Array], Array] | None = None
    hand_label: str = ""
    extra_hand: dict[str, Callable[[Array, Array], Array]] = field(default_factory=dict)
    compare: bool = False  # part of the "<= 1.10x hand-written" target
    num_samples: int | None = None  # overrides the workload's N (costly estimators)


@dataclass
class Workload:
    """A stochastic program with its parameter, sample count and exact gradient."""

    name: str
    title: str
    prog: Callable[..., Array]
    theta: Array
    num_samples: int
    exact: np.ndarray
    cases: list[Case]


# --------------------------------------------------------------------------------------
# W1: pathwise, Gaussian
# --------------------------------------------------------------------------------------


def w1_f(z: Array) -> Array:
    """``f(z) = (sum z^2 + sum sin z) / D`` over the last axis."""
    return (jnp.sum(z**2, -1) + jnp.sum(jnp.sin(z), -1)) / z.shape[-1]


def w1_prog(key: Array, theta: Array) -> Array:
    """z ~ N(theta, I), return f(z)."""
    return w1_f(je.sample(key, D.Normal(theta, 1.0)))


def w1_theta(dim: int) -> Array:
    """The W1 parameter: ``linspace(-2, 2, dim)``."""
    return jnp.linspace(-2.0, 2.0, dim, dtype=jnp.float32)


def w1_exact(theta: Array) -> np.ndarray:
    """``(2 theta + cos(theta) e^{-1/2}) / D`` in float64."""
    t = np.asarray(theta, np.float64)
    return (2 * t + np.cos(t) * np.exp(-0.5)) / t.size


def w1_hand(n: int) -> Callable[[Array, Array], Array]:
    """Hand-written pathwise gradient of the batched mean."""

    def hand(key: Array, theta: Array) -> Array:
        keys = jax.random.split(key, n)
        eps = jax.vmap(lambda k: jax.random.normal(k, theta.shape, theta.dtype))(keys)
        return jax.grad(lambda t: jnp.mean(w1_f(t + eps)))(theta)

    return hand


def make_w1(dim: int, n: int, extras: bool = True) -> Workload:
    """W1 at dimension ``dim`` with ``n`` samples."""
    th = w1_theta(dim)
    return Workload(
        "W1",
        f"pathwise, Gaussian (D={dim}, N={n})",
        w1_prog,
        th,
        n,
        w1_exact(th),
        [
            Case("pathwise", je.pathwise(), w1_hand(n), "jax.grad of batched mean", compare=True),
            Case("score_function(LOO)", je.score_function("leave_one_out")),
            Case("score_function", je.score_function()),
            Case("stochastic_ad", je.stochastic_ad(), num_samples=max(2, n // 64)),
            Case(
                "finite_difference(0.01, CRN)",
                je.finite_difference(0.01),
                num_samples=max(2, n // 64),
            ),
        ][: None if extras else 1],
    )


# --------------------------------------------------------------------------------------
# W2: score function, independent Bernoullis
# --------------------------------------------------------------------------------------


def w2_f(x: Array) -> Array:
    """``f(x) = (sum x - D/3)^2 / D`` over the last axis."""
    d = x.shape[-1]
    return (jnp.sum(x, -1) - d / 3.0) ** 2 / d


def w2_prog(key: Array, theta: Array) -> Array:
    """x_i ~ Bernoulli(sigmoid(theta_i)) independently, return f(x)."""
    return w2_f(je.sample(key, D.Bernoulli(logits=theta)))


def w2_theta(dim: int) -> Array:
    """The W2 logits: ``linspace(-2, 2, dim)``."""
    return jnp.linspace(-2.0, 2.0, dim, dtype=jnp.float32)


def w2_exact(theta: Array) -> np.ndarray:
    """``p(1-p)[(1-2p) + 2(sum p - D/3)] / D`` in float64."""
    t = np.asarray(theta, np.float64)
    p = 1.0 / (1.0 + np.exp(-t))
    d = t.size
    return p * (1 - p) * ((1 - 2 * p) + 2 * (p.sum() - d / 3.0)) / d


def w2_hand(n: int, loo: bool, sampler: str = "jax") -> Callable[[Array, Array], Array]:
    """Hand-written score function: surrogate ``mean(stop_grad(f - b) * log p)``.

    ``sampler="jax"`` draws with ``jax.random.bernoulli`` (one uniform per element);
    ``sampler="je"`` draws with ``jaxestim.distributions.Bernoulli.sample`` (inverse CDF
    of one open-interval uniform per draw), isolating the transform's overhead from the sampler's.
    """

    def hand(key: Array, theta: Array) -> Array:
        keys = jax.random.split(key, n)
        if sampler == "jax":
            p = jax.nn.sigmoid(theta)
            x = jax.vmap(lambda k: jax.random.bernoulli(k, p))(keys).astype(theta.dtype)
        else:
            x = jax.vmap(lambda k: D.Bernoulli(logits=theta).sample(k))(keys)
        fx = w2_f(x)
        b = (jnp.sum(fx) - fx) / (n - 1) if loo else 0.0
        w = sg(fx - b)

        def surrogate(t: Array) -> Array:
            logp = jnp.sum(x * jax.nn.log_sigmoid(t) + (1 - x) * jax.nn.log_sigmoid(-t), -1)
            return jnp.mean(w * logp)

        return jax.grad(surrogate)(theta)

    return hand


def _whole_program_cases(n: int) -> list[Case]:
    """stochastic_ad and CRN finite differences (O(P) program runs each) with ``n`` samples."""
    n = max(2, n)
    return [
        Case("stochastic_ad", je.stochastic_ad(), num_samples=n),
        Case("finite_difference(0.01, CRN)", je.finite_difference(0.01), num_samples=n),
    ]


def make_w2(dim: int, n: int, whole_program: bool = True) -> Workload:
    """W2 at dimension ``dim`` with ``n`` samples."""
    th = w2_theta(dim)
    cases = [
        Case(
            "score_function",
            je.score_function(),
            w2_hand(n, False),
            "vmap surrogate, jax.random.bernoulli",
            {"hand, je sampler": w2_hand(n, False, "je")},
            compare=True,
        ),
        Case(
            "score_function(LOO)",
            je.score_function("leave_one_out"),
            w2_hand(n, True),
            "vmap surrogate + LOO, jax.random.bernoulli",
            {"hand, je sampler": w2_hand(n, True, "je")},
            compare=True,
        ),
        Case("straight_through", je.straight_through()),
        Case("gumbel_softmax(0.5)", je.gumbel_softmax(0.5)),
    ]
    if whole_program:
        cases += _whole_program_cases(n // 16)
    return Workload(
        "W2", f"score function, Bernoulli (D={dim}, N={n})", w2_prog, th, n, w2_exact(th), cases
    )


# --------------------------------------------------------------------------------------
# W3: the lecture's random walk
# --------------------------------------------------------------------------------------

W3_EXACT = 56.60787062628192


def w3_prog(key: Array, p: Array, steps: int = 100) -> Array:
    """n = 0; for i = 1..steps: n += Bernoulli(p (1 - (n + i) / 200)); return n."""

    def step(n: Array, xs: tuple[Array, Array]) -> tuple[Array, None]:
        k, i = xs
        return n + je.sample(k, D.Bernoulli(probs=p * (1 - (n + i) / 200))), None

    keys = jax.random.split(key, steps)
    return je.scan(step, jnp.zeros_like(p), (keys, jnp.arange(1, steps + 1)))[0]


def w3_prog_steps(steps: int) -> Callable[[Array, Array], Array]:
    """The random walk with ``steps`` steps."""
    return lambda key, p: w3_prog(key, p, steps)


def w3_hand(
    n: int, loo: bool, steps: int = 100, sampler: str = "jax"
) -> Callable[[Array, Array], Array]:
    """Hand-written score function for the walk: lax.scan accumulating log p, vmap over N.

    ``sampler="jax"``: ``uniform < q`` (one uniform per step); ``"je"``: jaxestim's
    ``Bernoulli(probs=q).sample`` (inverse CDF of one open-interval uniform per draw).
    """

    def hand(key: Array, p: Array) -> Array:
        keys = jax.random.split(key, n)

        def surrogate(pp: Array) -> Array:
            def sim(k: Array) -> tuple[Array, Array]:
                def step(carry, xs):
                    m, lp = carry
                    kk, i = xs
                    q = pp * (1 - (m + i) / 200)
                    if sampler == "jax":
                        b = (jax.random.uniform(kk, (), q.dtype) < q).astype(q.dtype)
                    else:
                        b = D.Bernoulli(probs=sg(q)).sample(kk)
                    return (m + b, lp + b * jnp.log(q) + (1 - b) * jnp.log1p(-q)), None

                zero = jnp.zeros_like(pp)
                xs = (jax.random.split(k, steps), jnp.arange(1, steps + 1))
                return jax.lax.scan(step, (zero, zero), xs)[0]

            f, lp = jax.vmap(sim)(keys)
            f = sg(f)
            b = (jnp.sum(f) - f) / (n - 1) if loo else 0.0
            return jnp.mean(sg(f - b) * lp)

        return jax.grad(surrogate)(p)

    return hand


def w3_forward(n: int, steps: int = 100) -> Callable[[Array, Array], Array]:
    """``n`` plain forward simulations of the walk (no transform): the cost reference."""

    def fwd(key: Array, p: Array) -> Array:
        return jax.vmap(lambda k: w3_prog(k, p, steps))(jax.random.split(key, n))

    return fwd


def make_w3(n: int, extras: bool = True) -> Workload:
    """W3 with ``n`` samples at p = 0.5."""
    return Workload(
        "W3",
        f"100-step random walk at p=0.5 (N={n})",
        w3_prog,
        jnp.asarray(0.5, jnp.float32),
        n,
        np.asarray(W3_EXACT),
        [
            Case(
                "score_function",
                je.score_function(),
                w3_hand(n, False),
                "lax.scan surrogate",
                {"hand, je sampler": w3_hand(n, False, sampler="je")},
                compare=True,
            ),
            Case(
                "score_function(LOO)",
                je.score_function("leave_one_out"),
                w3_hand(n, True),
                "lax.scan surrogate + LOO",
                compare=True,
            ),
            Case("finite_difference(0.01, CRN)", je.finite_difference(0.01)),
            Case(
                "finite_difference(0.01, no CRN)",
                je.finite_difference(0.01, common_random_numbers=False),
            ),
            Case("stochastic_ad", je.stochastic_ad()),
        ][: None if extras else 1],
    )


# --------------------------------------------------------------------------------------
# W4: independent categoricals
# --------------------------------------------------------------------------------------

W4_SHAPE = (20, 10)


@functools.cache
def _fixed_normal(seed: int) -> np.ndarray:
    with jax.ensure_compile_time_eval():
        return np.asarray(jax.random.normal(jax.random.key(seed), W4_SHAPE, jnp.float32))


def w4_costs() -> Array:
    """The fixed cost table ``c`` (standard normal, ``jax.random.key(4)``), shape (20, 10).

    Computed once, eagerly, so jitted programs close over a constant.
    """
    return jnp.asarray(_fixed_normal(4))


def w4_theta() -> Array:
    """The W4 logits (standard normal, ``jax.random.key(5)``), shape (20, 10)."""
    return jnp.asarray(_fixed_normal(5))


def row_select(c: Array, x: Array) -> Array:
    """``c[j, x_j]`` for integer ``x`` of shape (J,), or ``sum_k x_jk c_jk`` for one-hot x."""
    if jnp.issubdtype(x.dtype, jnp.integer):
        return jnp.take_along_axis(c, x[..., None], axis=-1)[..., 0]
    return jnp.sum(c * x, axis=-1)


def w4_prog(key: Array, theta: Array) -> Array:
    """x_j ~ Categorical(softmax(theta_j)), j = 1..20; return sum_j c[j, x_j]."""
    x = je.sample(key, D.Categorical(logits=theta))
    return jnp.sum(row_select(w4_costs(), x))


def w4_exact(theta: Array) -> np.ndarray:
    """``pi_jk (c_jk - <pi_j, c_j>)`` in float64."""
    t = np.asarray(theta, np.float64)
    c = np.asarray(w4_costs(), np.float64)
    pi = np.exp(t - t.max(-1, keepdims=True))
    pi /= pi.sum(-1, keepdims=True)
    return pi * (c - (pi * c).sum(-1, keepdims=True))


def w4_hand_gumbel(n: int, tau: float) -> Callable[[Array, Array], Array]:
    """Hand-written Gumbel-softmax: ``softmax((theta + g) / tau)``, pathwise gradient."""
    c = w4_costs()

    def hand(key: Array, theta: Array) -> Array:
        keys = jax.random.split(key, n)
        g = jax.vmap(lambda k: jax.random.gumbel(k, theta.shape, theta.dtype))(keys)

        def loss(t: Array) -> Array:
            y = jax.nn.softmax((t + g) / tau, axis=-1)
            return jnp.mean(jnp.sum(y * c, axis=(-2, -1)))

        return jax.grad(loss)(theta)

    return hand


def _cat_draws(keys: Array, theta: Array, sampler: str) -> Array:
    if sampler == "jax":
        return jax.vmap(lambda k: jax.random.categorical(k, theta, axis=-1))(keys)
    return jax.vmap(lambda k: D.Categorical(logits=theta).sample(k))(keys)


def w4_hand_st(n: int, sampler: str = "jax") -> Callable[[Array, Array], Array]:
    """Hand-written straight-through: ``one_hot(x) + pi - stop_grad(pi)``.

    ``sampler="jax"``: ``jax.random.categorical``; ``"je"``: jaxestim's Categorical.
    """
    c = w4_costs()

    def hand(key: Array, theta: Array) -> Array:
        keys = jax.random.split(key, n)
        x = _cat_draws(keys, theta, sampler)
        oh = jax.nn.one_hot(x, theta.shape[-1], dtype=theta.dtype)

        def loss(t: Array) -> Array:
            pi = jax.nn.softmax(t, axis=-1)
            return jnp.mean(jnp.sum((oh + pi - sg(pi)) * c, axis=(-2, -1)))

        return jax.grad(loss)(theta)

    return hand


def w4_hand_sf(n: int, sampler: str = "jax") -> Callable[[Array, Array], Array]:
    """Hand-written score function with the leave-one-out baseline (samplers as above)."""
    c = w4_costs()

    def hand(key: Array, theta: Array) -> Array:
        keys = jax.random.split(key, n)
        x = _cat_draws(keys, theta, sampler)
        oh = jax.nn.one_hot(x, theta.shape[-1], dtype=theta.dtype)
        fx = jnp.sum(oh * c, axis=(-2, -1))
        w = sg(fx - (jnp.sum(fx) - fx) / (n - 1))

        def loss(t: Array) -> Array:
            logp = jnp.sum(oh * jax.nn.log_softmax(t, axis=-1), axis=(-2, -1))
            return jnp.mean(w * logp)

        return jax.grad(loss)(theta)

    return hand


def make_w4(n: int, whole_program: bool = True, extras: bool = True) -> Workload:
    """W4 with ``n`` samples."""
    th = w4_theta()
    cases = [
        Case(
            "gumbel_softmax(0.5)",
            je.gumbel_softmax(0.5),
            w4_hand_gumbel(n, 0.5),
            "softmax((θ+g)/τ) by hand",
            compare=True,
        ),
        Case(
            "straight_through",
            je.straight_through(),
            w4_hand_st(n),
            "one_hot + π − sg(π)",
            {"hand, je sampler": w4_hand_st(n, "je")},
            compare=True,
        ),
        Case(
            "score_function(LOO)",
            je.score_function("leave_one_out"),
            w4_hand_sf(n),
            "vmap surrogate + LOO",
            {"hand, je sampler": w4_hand_sf(n, "je")},
            compare=True,
        ),
        Case("gumbel_softmax(0.5, hard)", je.gumbel_softmax(0.5, hard=True)),
        Case("score_function", je.score_function()),
    ][: None if extras else 3]
    if whole_program:
        cases += _whole_program_cases(n // 16)
    return Workload(
        "W4", f"20 categoricals × 10 classes (N={n})", w4_prog, th, n, w4_exact(th), cases
    )
