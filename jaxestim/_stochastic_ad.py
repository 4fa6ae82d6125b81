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
  probability vector. Under inversion a sample moves to the nearest category *with positive
  mass* above or below (categories of zero mass are skipped: their CDF interval is empty),
  at the rates above. At the boundary of the simplex a zero-mass category ``j`` whose
  probability grows (``dpi_j > 0``) is reached too: the uniforms ``U`` leaving ``k`` are
  split among the categories between ``k`` and the next positive-mass one by the perturbed
  CDF ``F(j) + eps dF(j)``, which gives each its measure (see :func:`_categorical_rates`).
  StochasticAD.jl makes the same choice of target.

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
from jaxestim._handlers import Handler, mask_value
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

# Record tables. "s": scalar-support families (jumps to k +- 1), one row per element with
# the CDF at k and k - 1. "c": (OneHot)Categorical elements with the whole CDF row, since
# with zero-mass categories a jump may skip indices (see the module docstring).
_S_FIELDS = ("elem", "k", "cdf_k", "cdf_km1", "logpmf")
_C_FIELDS = ("elem", "k", "row", "logpmf")
# "b": support-boundary parameters of every discrete site (``_support_boundary``): a
# direction that moves one of them out of the parameter space has no derivative.
_B_FIELDS = ("q", "out", "at")


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


def _empty_tables(dtype: Any = None) -> dict[str, dict[str, jax.Array]]:
    dt = jnp.result_type(float) if dtype is None else dtype
    e = jnp.zeros((0,), dt)
    idx = jnp.zeros((0,), jnp.int32)
    return {
        "s": {"elem": idx, "k": e, "cdf_k": e, "cdf_km1": e, "logpmf": e},
        "c": {"elem": idx, "k": e, "row": jnp.zeros((0, 1), dt), "logpmf": e},
        "b": {"q": e, "out": e, "at": e},
    }


def _pad_rows(t: dict[str, jax.Array], width: int) -> dict[str, jax.Array]:
    """Categorical table with CDF rows padded to ``width`` columns (with F = 1)."""
    row = t["row"]
    if row.shape[1] < width:
        row = jnp.pad(row, ((0, 0), (0, width - row.shape[1])), constant_values=1.0)
    return {**t, "row": row}


def _concat(tables: list[dict[str, dict[str, jax.Array]]]) -> dict[str, dict[str, jax.Array]]:
    """Concatenate record tables (categorical rows padded to the widest)."""
    out = _empty_tables()
    s = [t["s"] for t in tables]
    c = [t["c"] for t in tables]
    if s:
        out["s"] = {f: jnp.concatenate([t[f] for t in s]) for f in _S_FIELDS}
        out["b"] = {f: jnp.concatenate([t["b"][f] for t in tables]) for f in _B_FIELDS}
    if c:
        width = max(t["row"].shape[1] for t in c)
        c = [_pad_rows(t, width) for t in c]
        out["c"] = {f: jnp.concatenate([t[f] for t in c]) for f in _C_FIELDS}
    return out


def _padding(shapes: dict[str, Any]) -> dict[str, dict[str, jax.Array]]:
    """Rows that record nothing (zero mass, hence zero jump rate), shaped like ``shapes``."""
    out = {}
    for name, table in shapes.items():
        out[name] = {}
        for f, sd in table.items():
            fill = {"elem": -1, "logpmf": -jnp.inf, "row": 1.0}.get(f, 0)
            out[name][f] = jnp.full(sd.shape, fill, sd.dtype)
    return out


class _Counting(Handler):
    """Numbers discrete elements in program order: ``base`` (traced in loops) + ``count``.

    Loops add ``length * (elements per iteration)``; branches reserve the elements of every
    branch (branch ``i`` starts after those of branches ``< i``), so record and replay
    number elements identically whichever branch each takes.
    """

    recording = True  # both passes need the common branch layout
    name = "stochastic_ad"

    def __init__(self, base: Any = 0) -> None:
        super().__init__()
        self.base, self.count = base, 0
        self.branch_index: int | None = None

    def next_index(self) -> Any:
        return self.base + self.count

    def child(self, base: Any) -> _Counting:
        raise NotImplementedError

    def loop_state(self):
        return jnp.asarray(self.next_index(), jnp.int32)

    def loop_child(self, state):
        return self.child(state)

    def branch_child(self, state, index, layout):
        start = 0 if layout is None else layout["starts"][index]
        c = self.child(self.next_index() + start)
        c.branch_index = index
        return c

    def absorb_loop(self, state, stacked, child, length):
        self.count += length * child.count

    def branch_layout(self, children):
        starts, total = [], 0
        for c in children:
            starts.append(total)
            total += c.count
        return {"starts": starts, "total": total}

    def absorb_branches(self, state, records, layout):
        self.count += layout["total"]


class _RecordHandler(_Counting):
    """Pass 1: sample, and record each discrete element's CDF values and log-pmf."""

    def __init__(self, base: Any = 0) -> None:
        super().__init__(base)
        self.parts: list[dict[str, dict[str, jax.Array]]] = []

    def child(self, base):
        return _RecordHandler(base)

    def sample(self, key, dist, sample_shape, estimator, mask):
        _check_site(dist, estimator)
        if not dist.is_discrete:
            return mask_value(dist.rsample(key, sample_shape), mask)
        self.check_recording_site("a discrete sample site under je.stochastic_ad()")
        u = dist.uniforms(key, sample_shape)
        k = jax.lax.stop_gradient(dist.icdf(u))
        value = dist.value_from_index(k)
        logpmf = dist.log_prob(value)
        if mask is not None:
            logpmf = jnp.where(mask, logpmf, -jnp.inf)
        n = k.size
        part = _empty_tables(logpmf.dtype)
        elem = self.next_index() + jnp.arange(n, dtype=jnp.int32)
        if isinstance(dist, Categorical):
            num = dist.num_categories
            row = jnp.cumsum(dist.probs, -1)
            row = jnp.where(jnp.arange(num) >= num - 1, jnp.ones_like(row), row)
            row = jnp.broadcast_to(row, (*k.shape, num)).reshape(n, num)
            part["c"] = {"elem": elem, "k": _flat(k), "row": row, "logpmf": _flat(logpmf)}
        else:
            part["s"] = {
                "elem": elem,
                "k": _flat(k),
                "cdf_k": _flat(dist.cdf(k)),
                "cdf_km1": _flat(dist.cdf(k - 1)),
                "logpmf": _flat(logpmf),
            }
        sb = dist._support_boundary()
        if sb is not None:
            q, out, at = sb
            part["b"] = {"q": q, "out": out, "at": at.astype(q.dtype)}
        self.parts.append(part)
        self.count += n
        return value

    def records(self) -> dict[str, dict[str, jax.Array]]:
        """All elements' records in program order (loops iteration-major)."""
        return _concat(self.parts)

    def loop_outputs(self):
        return jnp.asarray(self.next_index(), jnp.int32), self.records()

    def absorb_loop(self, state, stacked, child, length):
        flat = jax.tree_util.tree_map(lambda v: v.reshape((-1, *v.shape[2:])), stacked)
        self.parts.append(flat)
        super().absorb_loop(state, stacked, child, length)

    def branch_layout(self, children):
        shapes = [c.probe_shapes for c in children]
        width = max(sh["c"]["row"].shape[1] for sh in shapes)
        dtype = jnp.result_type(*(sh["s"]["logpmf"].dtype for sh in shapes))
        return {**super().branch_layout(children), "shapes": shapes, "width": width, "dtype": dtype}

    def branch_outputs(self, layout):
        own = self.records()
        parts = []
        for i, sh in enumerate(layout["shapes"]):
            parts.append(own if i == self.branch_index else _padding(sh))
        out = _concat(parts)
        out["c"] = _pad_rows(out["c"], layout["width"])
        out = jax.tree_util.tree_map(
            lambda v: v if v.dtype == jnp.int32 else v.astype(layout["dtype"]), out
        )
        return None, out

    def absorb_branches(self, state, records, layout):
        self.parts.append(records)
        super().absorb_branches(state, records, layout)


class _ReplayHandler(_Counting):
    """Pass 2: the same randomness, with discrete element ``elem`` set to index ``target``."""

    def __init__(self, elem: jax.Array, target: jax.Array, base: Any = 0) -> None:
        super().__init__(base)
        self.elem, self.target = elem, target

    def child(self, base):
        return _ReplayHandler(self.elem, self.target, base)

    def sample(self, key, dist, sample_shape, estimator, mask):
        _check_site(dist, estimator)
        if not dist.is_discrete:
            return dist.rsample(key, sample_shape)
        k = jax.lax.stop_gradient(dist.icdf(dist.uniforms(key, sample_shape)))
        local = self.elem - self.next_index()
        idx = jnp.arange(k.size).reshape(k.shape)
        k = jnp.where(idx == local, jnp.asarray(self.target, k.dtype), k)
        self.count += k.size
        return dist.value_from_index(k)

    def loop_outputs(self):
        return jnp.asarray(self.next_index(), jnp.int32), None


@jax.tree_util.register_pytree_node_class
@dataclass(frozen=True)
class StochasticTriple:
    r"""A stochastic triple ``value + delta*eps + (change with probability weight*eps)``.

    The derivative information of one run of a program with discrete randomness along one
    direction: ``value`` is the primal output, ``delta`` its infinitesimal (pathwise)
    change, and with probability ``weight * eps`` the output instead jumps to
    ``alternative`` (by ``change = alternative - value``, which is what it prints, as
    StochasticAD.jl does: ``3 + 0ε + (1 with probability 2.0ε)`` is 3 jumping to 4).
    :meth:`derivative_contribution` is the unbiased single-run estimate
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

    @property
    def change(self) -> jax.Array:
        """The jump ``alternative - value`` (StochasticAD.jl prints this)."""
        return self.alternative - self.value

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
            s += f" + ({_num(a - v)} with probability {ws}ε)"
        return s


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.6g}"


def _categorical_rates(t: dict[str, jax.Array], drow: jax.Array) -> jax.Array:
    """Jump rates ``(M, K)`` from each categorical element to every category.

    With the CDF row ``F`` and its directional derivative ``D``, an up-jump from ``k``
    lands in ``j > k`` (all categories strictly between them of zero mass) for a set of
    uniforms of measure ``max(0, min(0, D_j if p_j = 0 else inf) - max(D_k, D_{j-1}))``, a
    down-jump in ``j < k`` for ``max(0, min(D_{k-1}, D_j) - max(0, D_{j-1} if p_j = 0 else
    -inf))``; divided by ``p_k``. Without zero-mass categories only ``k +- 1`` are reached.
    """
    row, k, logpmf = t["row"], t["k"], t["logpmf"]
    m, num = row.shape
    j = jnp.arange(num, dtype=k.dtype)[None, :]
    kk = k[:, None].astype(jnp.int32)
    zeros = jnp.zeros((m, 1), row.dtype)
    f_prev = jnp.concatenate([zeros, row[:, :-1]], 1)
    d_prev = jnp.concatenate([zeros, drow[:, :-1]], 1)
    zero_mass = row == f_prev
    f_k = jnp.take_along_axis(row, kk, 1)
    d_k = jnp.take_along_axis(drow, kk, 1)
    f_km1 = jnp.take_along_axis(f_prev, kk, 1)
    d_km1 = jnp.take_along_axis(d_prev, kk, 1)
    upper = jnp.where(zero_mass, drow, jnp.inf)
    up = jnp.maximum(0.0, jnp.minimum(0.0, upper) - jnp.maximum(d_k, d_prev))
    lower = jnp.where(zero_mass, d_prev, -jnp.inf)
    down = jnp.maximum(0.0, jnp.minimum(d_km1, drow) - jnp.maximum(0.0, lower))
    measure = jnp.where(
        (j > k[:, None]) & (f_prev == f_k),
        up,
        jnp.where((j < k[:, None]) & (row == f_km1), down, 0),
    )
    pmf = jnp.exp(logpmf)[:, None]
    return jnp.where(pmf > 0, measure / jnp.where(pmf > 0, pmf, 1.0), 0.0)


def _triple(call, key, theta, v, select_key) -> tuple[StochasticTriple, Any]:
    """One pruned stochastic-triple evaluation of ``call`` along direction ``v``."""

    def prog(th):
        h = _RecordHandler()
        with h:
            f, aux = call(key, th)
        r = h.records()
        s, c = r["s"], r["c"]
        return (f, s["cdf_k"], s["cdf_km1"], c["row"], r["b"]["q"]), (aux, r)

    (f, *_), (df, dfk, dfkm1, drow, dq), (aux, r) = jax.jvp(prog, (theta,), (v,), has_aux=True)
    s, c, b = r["s"], r["c"], r["b"]
    # a direction leaving the parameter space (p = 1 increasing) has no derivative
    outward = jnp.any((b["at"] > 0) & (dq * b["out"] > 0))
    df = jnp.where(outward, jnp.asarray(jnp.nan, df.dtype), df)
    if s["k"].shape[0] + c["k"].shape[0] == 0:
        return StochasticTriple(f, df, f, jnp.zeros_like(f)), aux
    pmf = jnp.exp(s["logpmf"])
    safe = jnp.where(pmf > 0, pmf, 1.0)
    up = jnp.where(pmf > 0, jnp.maximum(-dfk, 0.0) / safe, 0.0)
    down = jnp.where(pmf > 0, jnp.maximum(dfkm1, 0.0) / safe, 0.0)
    cat = _categorical_rates(c, drow)
    num = cat.shape[1]
    rates = jnp.concatenate([up, down, cat.reshape(-1)])
    elems = jnp.concatenate([s["elem"], s["elem"], jnp.repeat(c["elem"], num)])
    targets = jnp.concatenate(
        [s["k"] + 1, s["k"] - 1, jnp.tile(jnp.arange(num, dtype=c["k"].dtype), c["k"].shape[0])]
    )
    total = jnp.sum(rates)
    u = jax.random.uniform(select_key, (), rates.dtype)
    j = jnp.clip(jnp.searchsorted(jnp.cumsum(rates), u * total, side="right"), 0, rates.size - 1)
    elem = jnp.where(total > 0, elems[j], -1)
    target = targets[j]
    with _ReplayHandler(elem, target):
        f_alt, _ = call(key, theta)
    f_alt = jnp.where(total > 0, f_alt, f)
    return StochasticTriple(f, df, f_alt, total.astype(f.dtype)), aux


@pytree_dataclass
class StochasticAD(Estimator):
    r"""StochasticAD-style estimator for programs with discrete randomness.

    Unbiased and without relaxation. Per sample and direction it runs the program once in
    forward mode (collecting the pathwise tangent and each discrete element's jump rate)
    and once more with a single, randomly chosen element jumped, returning
    ``df + W (f_alt - f)``. See the module docstring for the derivation and the
    per-family jump rules. Continuous sites are differentiated pathwise in forward mode.
    Supported discrete sites: Bernoulli, Binomial, Geometric, Poisson, Categorical,
    OneHotCategorical. Cost per sample: ``P`` (or ``num_directions``) JVP runs plus as
    many plain runs.

    When it wins (``benchmarks/VARIANCE.md``): on programs with few parameters whose
    discrete decisions each move the output a little (a random walk, a queue) its
    per-sample variance is several times below the leave-one-out score function's; on
    programs where one jump changes the output a lot (an SIR epidemic) it is not lower, and
    with many parameters (an MLP policy) its cost, linear in ``P``, dominates. At a
    parameter on the boundary of its space, a direction that leaves the space gives NaN.

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
