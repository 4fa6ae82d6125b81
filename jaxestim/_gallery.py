"""Built-in gallery of small stochastic programs with exact gradients.

Each :class:`Program` bundles a program ``fun(key, params)``, the parameter value at which
it is differentiated, the exact gradient of ``E[fun]`` there -- computed independently of
the estimators, by a closed form or by exact dynamic programming in NumPy float64 -- and
the estimators that apply to it, keyed by a readable label. ``biased`` names the
estimators that are biased on that program and why (a program-specific statement; the
general one, used when no exact gradient is known, is
:data:`jaxestim._compare.UNBIASEDNESS`). The gallery drives ``python -m jaxestim demo`` and
is handy for trying a new estimator:

    >>> from jaxestim._gallery import GALLERY
    >>> prog = GALLERY["bernoulli"]
    >>> report = je.compare(prog.fun, prog.params, prog.estimators, key=key,
    ...                     num_samples=10_000, exact=prog.exact)
    >>> print(report.recommend())  # ranks only estimators consistent with prog.exact
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxestim import distributions as D
from jaxestim._estimator import Estimator
from jaxestim._handlers import sample, scan
from jaxestim.estimators import (
    auto,
    delta_method,
    disarm,
    enumeration,
    finite_difference,
    forward_gradient,
    gumbel_softmax,
    measure_valued,
    pathwise,
    score_function,
    select,
    stochastic_ad,
    straight_through,
)

__all__ = ["GALLERY", "Program", "get_program", "program_names", "random_walk_exact"]


@dataclasses.dataclass(frozen=True)
class Program:
    """A stochastic program with its exact gradient and applicable estimators.

    Attributes:
      name: short identifier (used by ``jaxestim demo --programs``).
      description: one-line description with the exact gradient.
      fun: ``fun(key, params) -> scalar``.
      params: the parameter value (a float or a float32 array).
      exact: exact ``d/d params E[fun(key, params)]`` (float or float64 array).
      estimators: label -> estimator, the estimators that apply to this program.
      biased: label -> why that estimator is biased here (absent labels are unbiased).
      notes: label -> other remarks (e.g. a normally biased estimator that is exact here).
    """

    name: str
    description: str
    fun: Callable[..., Any]
    params: Any
    exact: Any
    estimators: dict[str, Estimator]
    biased: dict[str, str] = dataclasses.field(default_factory=dict)
    notes: dict[str, str] = dataclasses.field(default_factory=dict)


# ----------------------------------------------------------------------------- programs
def exponential_square(key: jax.Array, p: jax.Array) -> jax.Array:
    """``X**2`` with ``X ~ Exponential(scale=p)``: ``E = 2 p**2``, gradient ``4 p``."""
    x = sample(key, D.Exponential(rate=1.0 / p))
    return x * x


def gaussian_fixed(key: jax.Array, theta: jax.Array) -> jax.Array:
    """``theta**2 (z + 4)`` with ``z ~ N(1, 2**2)``: ``E = 5 theta**2``, gradient ``10 theta``."""
    z = sample(key, D.Normal(1.0, 2.0))
    return theta**2 * (z + 4.0)


def gaussian_theta(key: jax.Array, theta: jax.Array) -> jax.Array:
    """``theta**2 (4 + z)`` with ``z ~ N(theta, 2**2)``: gradient ``8 theta + 3 theta**2``."""
    z = sample(key, D.Normal(theta, 2.0))
    return theta**2 * (4.0 + z)


def two_bernoullis(key: jax.Array, theta: jax.Array) -> jax.Array:
    """``2 Bernoulli(3 theta) + Bernoulli(theta)``: ``E = 7 theta``, gradient 7."""
    k_a, k_b = jax.random.split(key)
    a = sample(k_a, D.Bernoulli(probs=3.0 * theta))
    b = sample(k_b, D.Bernoulli(probs=theta))
    return 2.0 * a + b


RANDOM_WALK_STEPS = 100
RANDOM_WALK_SIZE = 200


def random_walk(key: jax.Array, p: jax.Array) -> jax.Array:
    """``n = 0; for i in 1..100: n += Bernoulli(p (1 - (n + i) / 200))``; returns ``n``."""

    def body(n: jax.Array, inputs: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, None]:
        k, i = inputs
        prob = p * (1.0 - (n + i) / RANDOM_WALK_SIZE)
        return n + sample(k, D.Bernoulli(probs=prob)), None

    keys = jax.random.split(key, RANDOM_WALK_STEPS)
    steps = jnp.arange(1, RANDOM_WALK_STEPS + 1)
    n, _ = scan(body, jnp.zeros_like(p), (keys, steps))
    return n


def random_walk_exact(
    p: float, steps: int = RANDOM_WALK_STEPS, size: int = RANDOM_WALK_SIZE
) -> float:
    """Exact ``d/dp E[n]`` of :func:`random_walk` by dynamic programming in float64.

    Propagates the probability mass function of ``n`` after each step together with its
    derivative in ``p`` (forward-mode differentiation of the exact recursion
    ``P'(m) = P(m) (1 - q(m)) + P(m - 1) q(m - 1)``, ``q(m) = p (1 - (m + i) / size)``).
    """
    m = np.arange(steps + 1, dtype=np.float64)
    mass = np.zeros(steps + 1)
    mass[0] = 1.0
    dmass = np.zeros(steps + 1)
    for i in range(1, steps + 1):
        dq = 1.0 - (m + i) / size  # d q / d p
        q = p * dq
        up, dup = mass * q, dmass * q + mass * dq  # mass moving m -> m + 1
        mass = mass - up
        dmass = dmass - dup
        mass[1:] += up[:-1]
        dmass[1:] += dup[:-1]
    return float(np.dot(m, dmass))


CATEGORICAL_LOGITS = (0.2, -0.4, 0.6, 0.0)
CATEGORICAL_TABLE = (1.0, -2.0, 0.5, 3.0)


def categorical_square(key: jax.Array, logits: jax.Array) -> jax.Array:
    """``table[x]**2`` with ``x ~ Categorical(logits)`` (``table`` fixed, 4 categories)."""
    x = sample(key, D.Categorical(logits=logits))
    v = select(jnp.asarray(CATEGORICAL_TABLE, dtype=logits.dtype), x)
    return v * v


def categorical_exact(logits: Any, table: Any = CATEGORICAL_TABLE) -> np.ndarray:
    """``grad_logits E[table[x]**2] = pi * (g - pi . g)`` with ``g = table**2``."""
    th = np.asarray(logits, dtype=np.float64)
    pi = np.exp(th - th.max())
    pi /= pi.sum()
    g = np.asarray(table, dtype=np.float64) ** 2
    return pi * (g - pi @ g)


# ----------------------------------------------------------------------------- gallery
_FD_NOTE = "O(h²) bias of central finite differences"
_FD_EXACT = "central finite differences are unbiased on this program"


def _build() -> dict[str, Program]:
    progs = [
        Program(
            name="exponential",
            description="X**2, X ~ Exponential(scale p) at p = 10; exact d/dp E = 4p = 40",
            fun=exponential_square,
            params=10.0,
            exact=40.0,
            estimators={
                "pathwise": pathwise(),
                "score_function (LOO)": score_function("leave_one_out"),
                "finite_difference (CRN)": finite_difference(step=0.1),
                "stochastic_ad": stochastic_ad(),
                "measure_valued": measure_valued(),
                "auto": auto(),
            },
            notes={"finite_difference (CRN)": _FD_EXACT + " (E = 2p² is quadratic)"},
        ),
        Program(
            name="gaussian_fixed",
            description="θ²(z + 4), z ~ N(1, 2²) at θ = 2; exact 10θ = 20",
            fun=gaussian_fixed,
            params=2.0,
            exact=20.0,
            estimators={
                "pathwise": pathwise(),
                "score_function": score_function(),
                "score_function (LOO)": score_function("leave_one_out"),
                "finite_difference (CRN)": finite_difference(step=0.01),
                "complex_step": finite_difference(scheme="complex"),
                "forward_gradient": forward_gradient(),
                "pathwise (forward mode)": pathwise(mode="forward"),
                "score_function (optimal b*)": score_function("optimal"),
                "delta_method": delta_method(),
                "measure_valued": measure_valued(),
                "stochastic_ad": stochastic_ad(),
                "auto": auto(),
            },
            notes={
                "finite_difference (CRN)": _FD_EXACT + " (E = 5θ² is quadratic)",
                "complex_step": "O(h²) bias at h = 1e-20: the pathwise gradient to rounding",
            },
        ),
        Program(
            name="gaussian_theta",
            description=(
                "θ²(4 + z), z ~ N(θ, 2²) at θ = 2; exact 8θ + 3θ² = 28 (ignoring the "
                "sample's dependence on θ gives the wrong 24)"
            ),
            fun=gaussian_theta,
            params=2.0,
            exact=28.0,
            estimators={
                "pathwise": pathwise(),
                "score_function": score_function(),
                "score_function (LOO)": score_function("leave_one_out"),
                "finite_difference (CRN)": finite_difference(step=0.01),
                "complex_step": finite_difference(scheme="complex"),
                "forward_gradient": forward_gradient(),
                "score_function (optimal b*)": score_function("optimal"),
                "delta_method": delta_method(),
                "measure_valued": measure_valued(),
                "stochastic_ad": stochastic_ad(),
                "auto": auto(),
            },
            biased={"finite_difference (CRN)": _FD_NOTE + ": h²·E'''/6 = 1e-4 here (negligible)"},
            notes={"complex_step": "O(h²) bias at h = 1e-20: the pathwise gradient to rounding"},
        ),
        Program(
            name="bernoulli",
            description="2·Bernoulli(3θ) + Bernoulli(θ) at θ = 0.1; exact 7",
            fun=two_bernoullis,
            params=0.1,
            exact=7.0,
            estimators={
                "score_function": score_function(),
                "score_function (LOO)": score_function("leave_one_out"),
                "finite_difference (CRN)": finite_difference(step=0.01),
                "finite_difference (indep.)": finite_difference(
                    step=0.01, common_random_numbers=False
                ),
                "straight_through": straight_through(),
                "gumbel_softmax (τ=0.5)": gumbel_softmax(0.5),
                "gumbel_softmax (τ=0.5, hard)": gumbel_softmax(0.5, hard=True),
                "stochastic_ad": stochastic_ad(),
                "disarm": disarm(),
                "enumeration": enumeration(),
                "measure_valued": measure_valued(),
                "auto": auto(),
            },
            biased={
                "gumbel_softmax (τ=0.5)": "relaxation: E[σ((l + L)/τ)] ≠ p",
                "gumbel_softmax (τ=0.5, hard)": "relaxed backward pass",
            },
            notes={
                "straight_through": "exact per sample: f is linear in the samples",
                "finite_difference (CRN)": _FD_EXACT + " (E = 7θ is linear)",
                "finite_difference (indep.)": _FD_EXACT + " (E = 7θ is linear)",
            },
        ),
        Program(
            name="random_walk",
            description=(
                "100-step walk n += Bernoulli(p(1 − (n+i)/200)) (je.scan) at p = 0.5; "
                f"exact d/dp E[n] = {random_walk_exact(0.5):.10g} (dynamic programming)"
            ),
            fun=random_walk,
            params=0.5,
            exact=random_walk_exact(0.5),
            estimators={
                "score_function (LOO)": score_function("leave_one_out"),
                "score_function": score_function(),
                "finite_difference (CRN)": finite_difference(step=0.01),
                "stochastic_ad": stochastic_ad(),
            },
            biased={"finite_difference (CRN)": _FD_NOTE},
        ),
        Program(
            name="categorical",
            description=(
                "table[x]², x ~ Categorical(logits θ ∈ R⁴), table = (1, −2, 0.5, 3), "
                "θ = (0.2, −0.4, 0.6, 0); exact π ⊙ (g − π·g), g = table²"
            ),
            fun=categorical_square,
            params=jnp.asarray(CATEGORICAL_LOGITS, dtype=jnp.float32),
            exact=categorical_exact(CATEGORICAL_LOGITS),
            estimators={
                "score_function (LOO)": score_function("leave_one_out"),
                "score_function (optimal b*)": score_function("optimal"),
                "gumbel_softmax (τ=0.5)": gumbel_softmax(0.5),
                "straight_through": straight_through(),
                "stochastic_ad": stochastic_ad(),
                "enumeration": enumeration(),
                "finite_difference (CRN)": finite_difference(step=0.01),
            },
            biased={
                "gumbel_softmax (τ=0.5)": "relaxation: f evaluated off the one-hot support",
                "straight_through": "f is nonlinear in the one-hot sample",
                "finite_difference (CRN)": _FD_NOTE,
            },
        ),
    ]
    return {p.name: p for p in progs}


GALLERY: dict[str, Program] = _build()


def program_names() -> list[str]:
    """Names of the gallery programs, in display order."""
    return list(GALLERY)


def get_program(name: str) -> Program:
    """The gallery program ``name`` (``KeyError`` listing the valid names otherwise)."""
    try:
        return GALLERY[name]
    except KeyError:
        raise KeyError(f"unknown program {name!r}; valid programs: {', '.join(GALLERY)}") from None
