r"""StochasticAD-style estimator: stochastic triples and the pruned perturbation estimator.

Arya, Schauer, Schäfer & Rackauckas (2022), "Automatic Differentiation of Programs with
Discrete Randomness", NeurIPS (arXiv:2210.08572).

Coupling. Every discrete site samples by inversion, ``k = F^{-1}(U; theta) =
min{k : F(k; theta) >= U}`` with one uniform ``U`` per element drawn from the site's key.
Fix ``U`` and move ``theta`` by ``eps`` along a direction ``v``: the sample stays ``k``
unless a CDF boundary crosses ``U``. Conditional on ``K = k`` (so ``U`` is uniform on
``(F(k-1), F(k)]``), with ``dF`` the directional derivative of the CDF along ``v``:

* it jumps *up* to ``k + 1`` with probability ``eps * max(-dF(k), 0) / p(k)``
  (the upper boundary ``F(k)`` moved below ``U``);
* it jumps *down* to ``k - 1`` with probability ``eps * max(dF(k-1), 0) / p(k)``.

Per family this gives (``p`` the success probability, ``dp`` its directional derivative):

* Bernoulli: ``F(0) = 1 - p``; at ``k = 0`` up at rate ``max(dp, 0) / (1 - p)``; at ``k = 1``
  down at rate ``max(-dp, 0) / p``.
* Binomial(n, p): ``dF(k) = -dp * n * C(n-1, k) p^k (1-p)^(n-1-k)``; increasing ``p`` only
  jumps up, at rate ``dp * (n - k) / (1 - p)``; decreasing ``p`` only down, rate
  ``-dp * k / p``.
* Poisson(rate ``l``): ``dF(k) = -dl * p(k)``, so up at rate ``max(dl, 0)`` (independent of
  ``k``) and down at rate ``max(-dl, 0) * k / l``.
* Geometric(p) (failures before the first success): ``F(k) = 1 - (1-p)^(k+1)``; increasing
  ``p`` jumps *down* at rate ``dp * k / (p (1 - p))``, decreasing ``p`` jumps up at rate
  ``-dp * (k + 1) / p``.
* Categorical / OneHotCategorical: ``F(k) = sum_{j <= k} pi_j`` in the order of the
  probability vector, so under inversion a sample can only move to the *adjacent indices*
  ``k - 1`` and ``k + 1`` (never directly to a distant category), at the rates above.

These are computed generically from forward-mode derivatives of each family's ``cdf``.

Estimator. One forward-mode (JVP) run along ``v`` gives the primal ``f``, the pathwise
tangent ``df`` (continuous sites are reparameterized) and every discrete element's jump
rates ``w_j`` with targets. Summing each jump's contribution ``w_j (f_j - f)``, where
``f_j`` re-runs the program with only element ``j`` replaced by its target and *every
other random number unchanged* (same key: downstream sites re-sample from the same
uniforms with their new parameters), gives the directional derivative of ``E[f]``: two
or more simultaneous jumps have probability ``O(eps^2)``. Rather than re-running once per
element, the *pruned* estimator draws a single ``j`` with probability ``w_j / W``
(``W = sum_j w_j``) and returns ``df + W (f_j - f)``, which has the same expectation
``df + sum_j w_j (f_j - f)`` -- unbiased -- at the cost of two program runs.
``directions="coordinates"`` does this for each basis direction; ``"random"`` uses
Gaussian directions ``v_d`` and averages ``v_d * D_{v_d}``, unbiased since
``E[v v^T] = I``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxestim._errors import EstimatorError
from jaxestim._estimators import (
    Estimator,
    check_directions,
    direction_matrix,
    gradient_from_directional,
)
from jaxestim._handlers import Handler
from jaxestim._util import check_key, fold_in_str, pytree_dataclass, static_field
from jaxestim.distributions import (
    Bernoulli,
    Binomial,
    Categorical,
    Geometric,
    OneHotCategorical,
    Poisson,
)

_SUPPORTED = (Bernoulli, Binomial, Categorical, Geometric, OneHotCategorical, Poisson)
_FIELDS = ("cdf_k", "cdf_km1", "logpmf", "k")


def _check_site(dist, estimator) -> None:
    if estimator is not None:
        raise EstimatorError(
            "je.stochastic_ad() is a whole-program estimator: sites take no per-site "
            f"`estimator` override (got je.{estimator.name}())"
        )
    if dist.is_discrete and not isinstance(dist, _SUPPORTED):
        raise EstimatorError(
            f"je.stochastic_ad() does not support {type(dist).__name__} sample sites (it needs "
            "an inverse-CDF coupling; supported: Bernoulli, Binomial, Geometric, Poisson, "
            "Categorical, OneHotCategorical). Use je.score_function() for this program."
        )


def _flat(x: jax.Array) -> jax.Array:
    return jnp.reshape(x, (-1,))


class _RecordHandler(Handler):
    """Pass 1: sample, and record each discrete element's CDF values and log-pmf."""

    def __init__(self) -> None:
        self.items: list[dict[str, jax.Array]] = []

    def sample(self, key, dist, sample_shape, estimator):
        _check_site(dist, estimator)
        if not dist.is_discrete:
            return dist.rsample(key, sample_shape)
        u = dist.uniforms(key, sample_shape)
        k = jax.lax.stop_gradient(dist.icdf(u))
        value = dist.value_from_index(k)
        self.items.append(
            {
                "cdf_k": _flat(dist.cdf(k)),
                "cdf_km1": _flat(dist.cdf(k - 1)),
                "logpmf": _flat(dist.log_prob(value)),
                "k": _flat(k),
            }
        )
        return value

    def records(self) -> dict[str, jax.Array]:
        """All elements' records in program order, loops iteration-major, as 1-D arrays."""
        if not self.items:
            z = jnp.zeros((0,), jnp.result_type(float))
            return dict.fromkeys(_FIELDS, z)
        return {f: jnp.concatenate([it[f] for it in self.items]) for f in _FIELDS}

    def loop_child(self, state):
        return _RecordHandler()

    def loop_outputs(self):
        return None, (self.records() if self.items else None)

    def absorb_loop(self, state, stacked):
        if stacked is not None:  # (T, per-iteration size) -> iteration-major flat
            self.items.append({f: _flat(v) for f, v in stacked.items()})


class _ReplayHandler(Handler):
    """Pass 2: the same randomness, with flat discrete element ``elem`` set to ``target``."""

    def __init__(self, elem: jax.Array, target: jax.Array, base: Any = 0) -> None:
        self.elem, self.target = elem, target
        self.base, self.offset = base, 0

    def sample(self, key, dist, sample_shape, estimator):
        _check_site(dist, estimator)
        if not dist.is_discrete:
            return dist.rsample(key, sample_shape)
        k = jax.lax.stop_gradient(dist.icdf(dist.uniforms(key, sample_shape)))
        local = self.elem - (self.base + self.offset)
        idx = jnp.arange(k.size).reshape(k.shape)
        k = jnp.where(idx == local, jnp.asarray(self.target, k.dtype), k)
        self.offset += k.size
        return dist.value_from_index(k)

    def loop_state(self):
        return jnp.asarray(self.base + self.offset, jnp.int32)

    def loop_child(self, state):
        return _ReplayHandler(self.elem, self.target, state)

    def loop_outputs(self):
        return jnp.asarray(self.base + self.offset, jnp.int32), None

    def absorb_loop(self, state, stacked):
        self.base, self.offset = state, 0


@jax.tree_util.register_pytree_node_class
@dataclass(frozen=True)
class StochasticTriple:
    r"""A stochastic triple ``value + delta*eps + (alternative with probability weight*eps)``.

    The derivative information of one run of a program with discrete randomness along one
    direction: ``value`` is the primal output, ``delta`` its infinitesimal (pathwise)
    change, and with probability ``weight * eps`` the output instead jumps to
    ``alternative``. :meth:`derivative_contribution` is the unbiased single-run estimate
    ``delta + weight * (alternative - value)`` of the derivative of the expectation.
    """

    value: jax.Array
    delta: jax.Array
    alternative: jax.Array
    weight: jax.Array

    def tree_flatten(self):
        return (self.value, self.delta, self.alternative, self.weight), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)

    def derivative_contribution(self) -> jax.Array:
        """``delta + weight * (alternative - value)``, an unbiased derivative estimate."""
        return self.delta + self.weight * (self.alternative - self.value)

    def __repr__(self) -> str:
        try:
            v, d, a, w = (float(x) for x in (self.value, self.delta, self.alternative, self.weight))
        except (TypeError, ValueError, jax.errors.ConcretizationTypeError):
            return (
                f"StochasticTriple(value={self.value}, delta={self.delta}, "
                f"alternative={self.alternative}, weight={self.weight})"
            )
        s = f"{_num(v)} + {_num(d)}ε"
        if w != 0.0:
            ws = f"{w:.6g}"
            if not any(c in ws for c in ".en"):
                ws += ".0"
            s += f" + ({_num(a)} with probability {ws}ε)"
        return s


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.6g}"


def _triple(call, key, theta, v, select_key) -> tuple[StochasticTriple, Any]:
    """One pruned stochastic-triple evaluation of ``call`` along direction ``v``."""

    def prog(th):
        h = _RecordHandler()
        with h:
            f, aux = call(key, th)
        r = h.records()
        return (f, r["cdf_k"], r["cdf_km1"]), (aux, r["logpmf"], r["k"])

    (f, _, _), (df, dfk, dfkm1), (aux, logpmf, k) = jax.jvp(prog, (theta,), (v,), has_aux=True)
    m = k.shape[0]
    if m == 0:
        return StochasticTriple(f, df, f, jnp.zeros_like(f)), aux
    pmf = jnp.exp(logpmf)
    safe = jnp.where(pmf > 0, pmf, 1.0)
    up = jnp.where(pmf > 0, jnp.maximum(-dfk, 0.0) / safe, 0.0)
    down = jnp.where(pmf > 0, jnp.maximum(dfkm1, 0.0) / safe, 0.0)
    rates = jnp.concatenate([up, down])
    total = jnp.sum(rates)
    u = jax.random.uniform(select_key, (), rates.dtype)
    j = jnp.clip(jnp.searchsorted(jnp.cumsum(rates), u * total, side="right"), 0, 2 * m - 1)
    elem = jnp.where(total > 0, j % m, -1)
    target = jnp.where(j < m, k[j % m] + 1, k[j % m] - 1)
    with _ReplayHandler(elem, target):
        f_alt, _ = call(key, theta)
    f_alt = jnp.where(total > 0, f_alt, f)
    return StochasticTriple(f, df, f_alt, total.astype(f.dtype)), aux


@pytree_dataclass
class StochasticAD(Estimator):
    r"""StochasticAD-style estimator for programs with discrete randomness.

    Unbiased, no relaxation, and usually far lower variance than the score function: per
    sample and direction it runs the program once in forward mode (collecting the pathwise
    tangent and each discrete element's jump rate) and once more with a single, randomly
    chosen element jumped, returning ``df + W (f_alt - f)``. See the module docstring for
    the derivation and the per-family jump rules. Continuous sites are differentiated
    pathwise in forward mode. Supported discrete sites: Bernoulli, Binomial, Geometric,
    Poisson, Categorical, OneHotCategorical. Cost per sample: ``P`` (or
    ``num_directions``) JVP runs plus as many plain runs.

    Attributes:
      directions: ``"coordinates"`` (one direction per parameter) or ``"random"``
        (``num_directions`` standard Gaussian directions; unbiased, for large ``P``).
      num_directions: number of random directions (only with ``"random"``).
    """

    directions: str = static_field(default="coordinates")
    num_directions: int | None = static_field(default=None)
    site_level: ClassVar[bool] = False
    name: ClassVar[str] = "stochastic_ad"

    def __post_init__(self) -> None:
        check_directions("stochastic_ad", self.directions, "random", self.num_directions)

    def per_sample(self, call, key, theta):
        """``(value, gradient estimate, aux)`` for one sample; ``call(key, theta_flat)``."""
        num = self.num_directions
        dirs = direction_matrix(theta, num, fold_in_str(key, "sad-directions"), jax.random.normal)
        n = dirs.shape[0]
        sel = jax.random.split(fold_in_str(key, "stochastic_ad"), n)
        trip, aux = jax.vmap(lambda v, s: _triple(call, key, theta, v, s))(dirs, sel)
        d = trip.derivative_contribution()
        aux = jax.tree_util.tree_map(lambda a: a[0], aux)
        return trip.value[0], gradient_from_directional(d, dirs, num), aux


def stochastic_ad(
    directions: str = "coordinates", num_directions: int | None = None
) -> StochasticAD:
    """The StochasticAD-style estimator for discrete randomness (see :class:`StochasticAD`)."""
    return StochasticAD(directions=directions, num_directions=num_directions)


def stochastic_triple(fun: Any) -> Any:
    """Run ``fun(key, theta)`` for scalar ``theta`` and return its :class:`StochasticTriple`.

    The returned function ``t(key, theta, *args)`` propagates the direction ``d theta = 1``
    through the program: ``t(key, 0.5)`` for ``fun = lambda k, p: je.sample(k,
    Bernoulli(probs=p))`` prints like StochasticAD.jl, e.g.
    ``0 + 0ε + (1 with probability 2.0ε)``. Its ``derivative_contribution()`` is one
    unbiased sample of ``d/d theta E[fun]`` (``key`` also drives the choice of jump).
    """

    def triple(key: jax.Array, theta: Any, *args: Any) -> StochasticTriple:
        check_key(key, "je.stochastic_triple")
        theta = jnp.asarray(theta)
        if theta.shape != () or not jnp.issubdtype(theta.dtype, jnp.floating):
            raise TypeError(
                f"je.stochastic_triple: `theta` must be a float scalar, got "
                f"{theta.dtype}{list(theta.shape)} (use je.grad(f, je.stochastic_ad()) for "
                "arrays and pytrees)"
            )
        from jaxestim._transforms import _split

        def call(k, th):
            return _split(fun(k, th, *args), False, "je.stochastic_triple")

        trip, _ = _triple(call, key, theta, jnp.ones_like(theta), fold_in_str(key, "stochastic_ad"))
        return trip

    return triple
