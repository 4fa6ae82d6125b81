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

Forward mode (``mode="forward"``, the default). One forward-mode (JVP) run along ``v``
gives the primal ``f``, the pathwise tangent ``df`` (continuous sites are reparameterized)
and every discrete element's jump rates ``w_j`` with targets. Summing each jump's
contribution ``w_j (f_j - f)``, where ``f_j`` re-runs the program with only element ``j``
replaced by its target and *every other random number unchanged* (same key: downstream
sites re-sample from the same uniforms with their new parameters), gives the directional
derivative of ``E[f]``: two or more simultaneous jumps have probability ``O(eps^2)``.
Rather than re-running once per element, the *pruned* estimator draws a single ``j`` with
probability ``w_j / W`` (``W = sum_j w_j``) and returns ``df + W (f_j - f)``, which has the
same expectation ``df + sum_j w_j (f_j - f)`` -- unbiased -- at the cost of two program
runs. ``directions="coordinates"`` does this for each basis direction; ``"random"`` uses
Gaussian directions ``v_d`` and averages ``v_d * D_{v_d}``, unbiased since
``E[v v^T] = I``.

*Online selection (memory).* The jump is chosen while the program runs, by weighted
reservoir sampling of size one: a site with elements of total rate ``W_s`` first picks one
of its own candidates ``j`` with probability ``w_j / W_s``, then replaces the reservoir's
choice with probability ``W_s / (W + W_s)`` (``W`` the total rate before it). By induction
the final choice is ``j`` with probability ``w_j / W_total``. The rates depend on the
*tangents* of the CDF values, which a JAX program cannot read inside ``jax.jvp``; the
reservoir therefore lives in the tangent of a carrier array whose primal is zero, updated by
a ``jax.custom_jvp`` rule at every site (the rule sees primals and tangents). The carrier is
five numbers (total rate, the chosen element as two exact float "digits", its target, and a
flag for directions leaving the parameter space) carried through :func:`jaxestim.scan` and
branches as loop state, so per-sample memory is the program's own state plus ``O(1)``,
whatever the number of draws. Only ``jax.jvp`` evaluates this rule (the estimator never
linearizes or transposes it).

Reverse mode (``mode="reverse"``). Forward mode costs one run pair per direction, so a
gradient in ``P`` parameters costs ``O(P)`` runs. Reverse mode uses a *linear* coupling
instead. Summation by parts of ``E[f(K)] = sum_k f(k) (F(k) - F(k-1))`` (``F`` the CDF, with
``F -> 1`` at the top of the support, so ``dF = 0`` there) gives, for any parameter
direction,

    d E[f(K)] = sum_k -dF(k) (f(k+1) - f(k)) = E[ (-dF(K) / p(K)) (f(K+1) - f(K)) ]   (up)
              = sum_k dF(k-1) (f(k-1) - f(k)) = E[ (dF(K-1) / p(K)) (f(K-1) - f(K)) ] (down)

(``f(k +- 1)`` meaning the next category with positive mass for categorical sites: the
terms of zero-mass categories telescope when their probabilities stay zero). Each element
``j`` thus contributes ``g_j (f_j - f)`` with the *signed* weight vector
``g_j = -grad F(k_j) / p(k_j)`` ("up", target ``k_j + 1``) or ``grad F(k_j - 1) / p(k_j)``
("down", target ``k_j - 1``); ``p(k_j)`` is a constant (no derivative taken). For a program
with many elements, the standard argument for the StochasticAD estimator (fix every other
uniform; the elements after ``j`` re-sample from the same uniforms with their new
parameters, which is the conditional expectation given the jump; simultaneous jumps are
``O(eps^2)``) gives

    grad E[f] = E[ grad_pathwise f + sum_j g_j (f_j - f) ],

linear in the direction, so all ``P`` components come from one reverse pass. Pruning: choose
one element ``J`` with a probability ``pi_J`` that does not depend on the direction and
return ``grad_pathwise f + g_J (f_J - f) / pi_J``; conditional on the run its expectation
over ``J`` is ``grad_pathwise f + sum_j g_j (f_j - f)`` whenever ``pi_j > 0`` for every
element with ``g_j != 0`` -- unbiased. Here ``J`` is uniform over the *eligible* elements
(positive mass, and a value above, resp. below, in the support; the others have
``g_j = 0``), chosen online by reservoir sampling exactly as in forward mode (weight 1 per
eligible element), so ``pi_J = 1 / M`` with ``M`` the number of eligible elements. The run
carries ``a = -F(k_J) / p(k_J)`` (resp. ``F(k_J - 1) / p(k_J)``) of the chosen element as a
differentiable value; then with ``c = M (f_J - f)`` from one replay run,

    estimate = vjp of (f, a) with cotangent (1, c) = grad_pathwise f + M (f_J - f) grad a.

Cost per sample: one run with residuals, one replay run and one reverse pass, independent of
``P``. Memory: the reverse pass stores the program's residuals (``O(T)`` through a
``T``-step loop; bound it with the checkpointing option of :func:`jaxestim.scan`).
Variance: the weights are the signed linear ones, not the forward mode's positive rates, and
the uniform choice ignores their size, so per direction it is higher than forward mode's
on a program with a few parameters; it is the estimator to use when ``P`` is large
(``benchmarks/README.md`` has the measured cost and variance). ``coupling="down"`` is the
mirror image (better for Bernoulli-like sites with ``p > 1/2``, where the up weight
``1 / (1 - p)`` is large).

Parameter-space boundaries. Forward mode gives NaN along a direction that leaves the
parameter space (``p = 1`` increasing). Reverse mode gives a NaN gradient when a
support-boundary parameter sitting at its boundary (``probs`` at 0 or 1, a Poisson rate of
0, a zero category probability) depends on ``theta``, as the score function does: at such a
point some one-sided derivative is missed by a one-sided coupling. Detecting it takes a
second reverse pass, which runs only when some element of the chunk is at a boundary
(``je.grad`` differentiates a chunk of samples in one pass; under ``je.grad_samples``'s
per-sample ``vmap`` both passes are evaluated). Programs whose sites use ``logits`` have no
boundary and skip it statically.

Batching. Under ``je.grad`` / ``je.value_and_grad`` the samples of a chunk go through one
``jax.vjp`` of the vmapped record run with per-sample cotangents ``(1, c_i)``, so the summed
gradient comes from one reverse pass and no ``P``-sized per-sample gradient is formed
(:meth:`StochasticAD.per_batch`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jaxestim._errors import EstimatorError
from jaxestim._estimator import Estimator
from jaxestim._handlers import Handler, mask_value, reject_override
from jaxestim._util import check_key, fold_in_str, pytree_dataclass, static_field
from jaxestim.distributions import (
    Bernoulli,
    Binomial,
    Categorical,
    Geometric,
    OneHotCategorical,
    Poisson,
)
from jaxestim.estimators._directions import (
    check_directions,
    direction_matrix,
    gradient_from_directional,
)

_SUPPORTED = (Bernoulli, Binomial, Categorical, Geometric, OneHotCategorical, Poisson)
_MODES = ("forward", "reverse")
_COUPLINGS = ("up", "down")
# element numbers travel in float tangents as two exact "digits" base 2**12 (exact for up
# to 2**36 elements in float32)
_DIGIT = 4096


def _check_site(dist, estimator) -> None:
    reject_override("stochastic_ad", estimator)
    if dist.is_discrete and not isinstance(dist, _SUPPORTED):
        raise EstimatorError(
            f"je.stochastic_ad() does not support {type(dist).__name__} sample sites (it needs "
            "an inverse-CDF coupling; supported: Bernoulli, Binomial, Geometric, Poisson, "
            "Categorical, OneHotCategorical). Use je.score_function() for this program."
        )


def _flat(x: jax.Array) -> jax.Array:
    return jnp.reshape(x, (-1,))


def _pick(weights: jax.Array, u: jax.Array) -> jax.Array:
    """Index ``i`` with probability ``weights[i] / sum(weights)`` from one uniform ``u``."""
    c = jnp.cumsum(weights)
    i = jnp.searchsorted(c, u * c[-1], side="right")
    return jnp.clip(i, 0, weights.shape[0] - 1)


def _fmix32(x: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finalizer (a bijective avalanche mix of uint32)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def _site_uniforms(select_key: jax.Array, base: Any, dtype: Any) -> jax.Array:
    """Two uniforms for one site's reservoir step (within-site pick, replacement)."""
    seed = jax.random.key_data(select_key).astype(jnp.uint32)
    b = jnp.asarray(base, jnp.uint32) * jnp.uint32(2) + jnp.arange(2, dtype=jnp.uint32)
    x = _fmix32(_fmix32(b ^ seed[0]) + seed[1])
    return (x >> 8).astype(dtype) * jnp.asarray(2.0**-24, dtype)


def _discrete_draw(dist, key, sample_shape, mask):
    """``(k, value, pmf)`` of a discrete site by inversion (``pmf = 0`` where masked)."""
    u = dist.uniforms(key, sample_shape)
    k = jax.lax.stop_gradient(dist.icdf(u))
    value = dist.value_from_index(k)
    logpmf = jax.lax.stop_gradient(dist.log_prob(value))
    if mask is not None:
        logpmf = jnp.where(mask, logpmf, -jnp.inf)
    return k, value, jnp.exp(logpmf)


def _cdf_rows(dist, k: jax.Array) -> jax.Array:
    """Per element of a (OneHot)Categorical site, its CDF row ``(n, K)`` (last column 1)."""
    num = dist.num_categories
    row = jnp.cumsum(dist.probs, -1)
    row = jnp.where(jnp.arange(num) >= num - 1, jnp.ones_like(row), row)
    return jnp.broadcast_to(row, (*k.shape, num)).reshape(k.size, num)


def _below_top(dist, k: jax.Array) -> jax.Array:
    """Whether ``k + 1`` is in the support of a scalar-support family."""
    if isinstance(dist, Bernoulli):
        return k < 1
    if isinstance(dist, Binomial):
        return k < jax.lax.stop_gradient(jnp.broadcast_to(dist.total_count, k.shape))
    return jnp.ones(k.shape, bool)


class _Counting(Handler):
    """Numbers discrete elements in program order: ``base`` (traced in loops) + ``count``.

    Loops add ``length * (elements per iteration)``; branches reserve the elements of every
    branch (branch ``i`` starts after those of branches ``< i``), so record and replay
    number elements identically whichever branch each takes. The loop/branch state is
    ``(next element number, reservoir)``; the reservoir (``None`` in the replay) is what the
    record passes carry online instead of storing per-element records.
    """

    recording = True  # both passes need the common branch layout
    name = "stochastic_ad"

    def __init__(self, base: Any = 0, res: Any = None) -> None:
        super().__init__()
        self.base, self.count, self.res = base, 0, res
        self.branch_index: int | None = None

    def next_index(self) -> Any:
        return self.base + self.count

    def child(self, base: Any, res: Any) -> _Counting:
        raise NotImplementedError

    def loop_state(self):
        return jnp.asarray(self.next_index(), jnp.int32), self.res

    def loop_child(self, state):
        return self.child(*state)

    def loop_outputs(self):
        return (jnp.asarray(self.next_index(), jnp.int32), self.res), None

    def absorb_loop(self, state, stacked, child, length):
        self.res = state[1]
        self.count += length * child.count

    def branch_child(self, state, index, layout):
        start = 0 if layout is None else layout["starts"][index]
        c = self.child(self.next_index() + start, state[1])
        c.branch_index = index
        return c

    def branch_layout(self, children):
        starts, total = [], 0
        for c in children:
            starts.append(total)
            total += c.count
        return {"starts": starts, "total": total}

    def branch_outputs(self, layout):
        return self.res, None

    def absorb_branches(self, state, records, layout):
        self.res = state
        self.count += layout["total"]


# ----------------------------------------------------------------------------------------
# forward mode: the reservoir in the tangent of a carrier
# ----------------------------------------------------------------------------------------


def _empty_forward_state(dtype: Any) -> jax.Array:
    """Carrier ``[W, element // 4096, element % 4096, target, outward]`` (primal zeros)."""
    return jnp.zeros((5,), dtype)


@partial(jax.custom_jvp, nondiff_argnums=(0,))
def _forward_site(kind: str, carrier, diff, consts):
    """Primal: ``carrier`` unchanged. Its JVP rule performs one site's reservoir step."""
    del kind, diff, consts
    return carrier


@_forward_site.defjvp
def _forward_site_jvp(kind, primals, tangents):
    carrier, diff, consts = primals
    state, ddiff, _ = tangents
    dtype = state.dtype
    pmf = consts["pmf"]
    ok = pmf > 0
    safe = jnp.where(ok, pmf, 1.0)
    k = consts["k"]
    n = k.shape[0]
    if kind == "scalar":
        up = jnp.where(ok, jnp.maximum(-ddiff["cdf_k"], 0.0) / safe, 0.0)
        down = jnp.where(ok, jnp.maximum(ddiff["cdf_km1"], 0.0) / safe, 0.0)
        rates = jnp.concatenate([up, down])
        local = jnp.concatenate([jnp.arange(n), jnp.arange(n)])
        targets = jnp.concatenate([k + 1, k - 1])
    else:
        table = {"row": diff["row"], "k": k, "pmf": pmf}
        cat = _categorical_rates(table, ddiff["row"])
        num = cat.shape[1]
        rates = cat.reshape(-1)
        local = jnp.repeat(jnp.arange(n), num)
        targets = jnp.tile(jnp.arange(num, dtype=k.dtype), n)
    rates = rates.astype(dtype)
    total, hi, lo, target, outward = state[0], state[1], state[2], state[3], state[4]
    site_total = jnp.sum(rates)
    u = consts["u"].astype(dtype)
    j = _pick(rates, u[0])
    replace = u[1] * (total + site_total) < site_total
    elem = consts["base"] + local[j].astype(jnp.int32)
    hi = jnp.where(replace, (elem // _DIGIT).astype(dtype), hi)
    lo = jnp.where(replace, (elem % _DIGIT).astype(dtype), lo)
    target = jnp.where(replace, targets[j].astype(dtype), target)
    if "q" in diff:
        leaving = jnp.any(consts["at"] & (ddiff["q"] * consts["out"] > 0))
        outward = jnp.maximum(outward, leaving.astype(dtype))
    new = jnp.stack([total + site_total, hi, lo, target, outward])
    return carrier, new


class _Record(_Counting):
    """A record pass: continuous sites pathwise, discrete sites by inversion, each discrete
    site handed to :meth:`record` (which updates the reservoir ``self.res``)."""

    def sample(self, key, dist, sample_shape, estimator, mask):
        _check_site(dist, estimator)
        if not dist.is_discrete:
            return mask_value(dist.rsample(key, sample_shape), mask)
        self.check_recording_site("a discrete sample site under je.stochastic_ad()")
        k, value, pmf = _discrete_draw(dist, key, sample_shape, mask)
        self.record(dist, k, pmf)
        self.count += k.size
        return value

    def record(self, dist, k: jax.Array, pmf: jax.Array) -> None:
        raise NotImplementedError


class _ForwardRecord(_Record):
    """Pass 1 of forward mode (under ``jax.jvp``): sample, and choose the jump online."""

    def __init__(self, select_key: jax.Array, base: Any = 0, res: Any = None) -> None:
        super().__init__(base, res)
        self.select_key = select_key

    def child(self, base, res):
        return _ForwardRecord(self.select_key, base, res)

    def record(self, dist, k, pmf):
        base = self.next_index()
        consts = {
            "k": _flat(k),
            "pmf": _flat(pmf),
            "base": jnp.asarray(base, jnp.int32),
            "u": _site_uniforms(self.select_key, base, self.res.dtype),
        }
        if isinstance(dist, Categorical):
            kind, diff = "categorical", {"row": _cdf_rows(dist, k)}
        else:
            kind = "scalar"
            diff = {"cdf_k": _flat(dist.cdf(k)), "cdf_km1": _flat(dist.cdf(k - 1))}
        sb = dist._support_boundary()
        if sb is not None:
            q, out, at = sb
            diff["q"] = q
            consts["out"], consts["at"] = out, at
        self.res = _forward_site(kind, self.res, diff, consts)


# ----------------------------------------------------------------------------------------
# reverse mode: a primal reservoir carrying the chosen element's differentiable weight
# ----------------------------------------------------------------------------------------


def _empty_reverse_state(dtype: Any) -> dict[str, jax.Array]:
    """``M`` eligible elements so far, the chosen element and target, its weight ``a``;
    ``b``, a fixed combination of the boundary parameters at their boundary, and ``nat``,
    their number (for the boundary check)."""
    zero = jnp.zeros((), dtype)
    i0 = jnp.zeros((), jnp.int32)
    return {"m": i0, "elem": i0 - 1, "target": zero, "a": zero, "b": zero, "nat": i0}


def _mix(index: jax.Array, dtype: Any) -> jax.Array:
    """Fixed, distinct-looking coefficients in [0.5, 2.5) per element (boundary check)."""
    return (1.5 + jnp.sin(index.astype(jnp.float32) * 0.7548777)).astype(dtype)


class _ReverseRecord(_Record):
    """Pass 1 of reverse mode (under ``jax.vjp``): sample, choose an eligible element
    uniformly online and carry its weight ``a`` (see the module docstring)."""

    def __init__(self, select_key: jax.Array, coupling: str, base: Any = 0, res: Any = None):
        super().__init__(base, res)
        self.select_key, self.coupling = select_key, coupling
        self.has_boundary = False

    def child(self, base, res):
        return _ReverseRecord(self.select_key, self.coupling, base, res)

    # whether any site (also in a loop body or branch) has a support boundary
    def absorb_loop(self, state, stacked, child, length):
        super().absorb_loop(state, stacked, child, length)
        self.has_boundary |= child.has_boundary

    def branch_layout(self, children):
        layout = super().branch_layout(children)
        return {**layout, "boundary": any(c.has_boundary for c in children)}

    def absorb_branches(self, state, records, layout):
        super().absorb_branches(state, records, layout)
        self.has_boundary |= layout["boundary"]

    def _weights(self, dist, k, pmf):
        """Per element: the signed weight ``a`` (differentiable), target and eligibility."""
        up = self.coupling == "up"
        safe = jnp.where(pmf > 0, pmf, 1.0)
        if isinstance(dist, Categorical):
            num = dist.num_categories
            probs = jnp.broadcast_to(dist.probs, (*k.shape, num)).reshape(k.size, num)
            row = jnp.cumsum(probs, -1)
            kk = k.astype(jnp.int32)[:, None]
            j = jnp.arange(num)[None, :]
            pos = jax.lax.stop_gradient(probs) > 0
            if up:
                cand = pos & (j > kk)
                target = jnp.argmax(cand, -1)
                f = jnp.take_along_axis(row, kk, 1)[:, 0]
            else:
                cand = pos & (j < kk)
                target = num - 1 - jnp.argmax(cand[:, ::-1], -1)
                f = jnp.take_along_axis(row - probs, kk, 1)[:, 0]
            ok = jnp.any(cand, -1)
            target = target.astype(k.dtype)
        elif up:
            f, target, ok = _flat(dist.cdf(k)), k + 1, _flat(_below_top(dist, k))
        else:
            f, target, ok = _flat(dist.cdf(k - 1)), k - 1, k > 0
        a = (-f if up else f) / safe
        return a, target, ok & (pmf > 0)

    def record(self, dist, k, pmf):
        k, pmf = _flat(k), _flat(pmf)
        a, target, eligible = self._weights(dist, k, pmf)
        res = dict(self.res)
        dtype = res["a"].dtype
        base = self.next_index()
        u = _site_uniforms(self.select_key, base, dtype)
        m_site = jnp.sum(eligible, dtype=jnp.int32)
        j = _pick(eligible.astype(dtype), u[0])
        total = (res["m"] + m_site).astype(dtype)
        replace = u[1] * total < m_site.astype(dtype)
        res["elem"] = jnp.where(replace, jnp.asarray(base, jnp.int32) + j, res["elem"])
        res["target"] = jnp.where(replace, target[j].astype(dtype), res["target"])
        res["a"] = jnp.where(replace, a[j].astype(dtype), res["a"])
        res["m"] = res["m"] + m_site
        sb = dist._support_boundary()
        if sb is not None:
            q, _, at = sb
            self.has_boundary = True
            idx = jnp.asarray(base, jnp.int32) + jnp.arange(q.shape[0], dtype=jnp.int32)
            res["b"] = res["b"] + jnp.sum(jnp.where(at, q * _mix(idx, q.dtype), 0)).astype(dtype)
            res["nat"] = res["nat"] + jnp.sum(at, dtype=jnp.int32)
        self.res = res


class _ReplayHandler(_Counting):
    """Pass 2: the same randomness, with discrete element ``elem`` set to index ``target``."""

    def __init__(self, elem: jax.Array, target: jax.Array, base: Any = 0, res: Any = None):
        super().__init__(base, res)
        self.elem, self.target = elem, target

    def child(self, base, res):
        return _ReplayHandler(self.elem, self.target, base, res)

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
    row, k, pmf = t["row"], t["k"], t["pmf"]
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
    pmf = pmf[:, None]
    return jnp.where(pmf > 0, measure / jnp.where(pmf > 0, pmf, 1.0), 0.0)


def _triple(call, key, theta, v, select_key) -> tuple[StochasticTriple, Any]:
    """One pruned stochastic-triple evaluation of ``call`` along direction ``v``."""
    dtype = jnp.result_type(float)

    def prog(th):
        h = _ForwardRecord(select_key, res=_empty_forward_state(dtype))
        with h:
            f, aux = call(key, th)
        return (f, h.res), (aux, h.count)

    (f, _), (df, state), (aux, count) = jax.jvp(prog, (theta,), (v,), has_aux=True)
    # a direction leaving the parameter space (p = 1 increasing) has no derivative
    df = jnp.where(state[4] > 0, jnp.asarray(jnp.nan, df.dtype), df)
    if count == 0:
        return StochasticTriple(f, df, f, jnp.zeros_like(f)), aux
    total = state[0]
    elem = state[1].astype(jnp.int32) * _DIGIT + state[2].astype(jnp.int32)
    elem = jnp.where(total > 0, elem, -1)
    with _ReplayHandler(elem, state[3]):
        f_alt, _ = call(key, theta)
    f_alt = jnp.where(total > 0, f_alt, f)
    return StochasticTriple(f, df, f_alt, total.astype(f.dtype)), aux


def _reverse(call, keys, theta, coupling, batched, cache=None):
    """Reverse mode: ``(value, gradient estimate, aux)`` of one sample (``keys`` one key), or
    with ``batched=True`` of ``keys`` stacked, returning the *sum* of their gradient
    estimates from one reverse pass over the batch (no per-sample gradient is formed).

    ``cache`` (a dict kept by the caller across chunks) holds the record and replay runs
    traced once each (``_Once``), so chunks of any size do not trace the program again."""
    dtype = jnp.result_type(float)
    flags = {} if cache is None else cache.setdefault("flags", {})

    def prog_one(key, th):
        select = fold_in_str(key, "stochastic_ad")
        h = _ReverseRecord(select, coupling, res=_empty_reverse_state(dtype))
        with h:
            f, aux = call(key, th)
        flags["boundary"] = h.has_boundary
        r = h.res
        return (f, r["a"], r["b"]), (aux, r["m"], r["elem"], r["target"], r["nat"])

    def replay(key, elem, target, th):
        with _ReplayHandler(elem, target):
            return call(key, th)[0]

    if cache is not None:
        from jaxestim._transforms import _Once

        prog_one = cache.setdefault("record", _Once(prog_one))
        replay = cache.setdefault("replay", _Once(replay))
    if batched:
        prog = lambda th: jax.vmap(prog_one, in_axes=(0, None))(keys, th)
        replay_batch = jax.vmap(replay, in_axes=(0, 0, 0, None))
    else:
        prog = lambda th: prog_one(keys, th)
    (f, a, b), vjp_fn, (aux, m, elem, target, nat) = jax.vjp(prog, theta, has_aux=True)
    elem = jnp.where(m > 0, elem, -1)
    f_alt = (replay_batch if batched else replay)(keys, elem, target, theta)
    c = jnp.where(m > 0, m.astype(f.dtype) * (f_alt - f), 0.0)
    (g,) = vjp_fn((jnp.ones_like(f), c.astype(a.dtype), jnp.zeros_like(b)))
    if flags["boundary"]:
        # a boundary parameter at its boundary that depends on theta: no derivative. In a
        # batch, samples get distinct fixed weights so their boundary terms cannot cancel.
        weights = _mix(jnp.arange(jnp.size(b), dtype=jnp.int32), b.dtype).reshape(jnp.shape(b))

        def moved():
            (gb,) = vjp_fn((jnp.zeros_like(f), jnp.zeros_like(a), weights))
            return jnp.any(gb != 0)

        bad = jax.lax.cond(jnp.any(nat > 0), moved, lambda: jnp.asarray(False))
        g = jnp.where(bad, jnp.asarray(jnp.nan, g.dtype), g)
    return f, g, aux


@pytree_dataclass
class StochasticAD(Estimator):
    r"""StochasticAD-style estimator for programs with discrete randomness.

    Unbiased and without relaxation; continuous sites are differentiated pathwise. See the
    module docstring for the derivations and the per-family jump rules. Supported discrete
    sites: Bernoulli, Binomial, Geometric, Poisson, Categorical, OneHotCategorical.

    ``mode="forward"`` (default): per sample and direction one forward-mode (JVP) run
    collects the pathwise tangent and chooses one discrete element with probability
    proportional to its jump rate (online, so memory does not grow with the number of
    draws), then one more run with that element jumped gives ``df + W (f_alt - f)``. Cost:
    ``P`` (or ``num_directions``) run pairs per sample, so use it for few parameters.

    ``mode="reverse"``: one run under ``jax.vjp`` chooses an eligible element uniformly
    online and carries its signed weight, one replay run, one reverse pass: the full
    gradient at a cost independent of ``P`` (about ``3-4x`` a plain run). Its per-direction
    variance is higher than forward mode's (uniform choice, signed weights); use it for
    many parameters (neural networks). ``coupling`` picks the one-sided coupling: ``"up"``
    (every element may only jump to the next value above) or ``"down"``.

    When it wins (``benchmarks/VARIANCE.md``): on programs with few parameters whose
    discrete decisions each move the output a little (a random walk, a queue) forward
    mode's per-sample variance is several times below the leave-one-out score function's;
    on programs where one jump changes the output a lot (an SIR epidemic) it is not lower.
    At a parameter on the boundary of its space, a direction that leaves the space gives
    NaN (forward mode); reverse mode gives NaN when a boundary parameter at its boundary
    depends on ``theta`` (as the score function).

    Attributes:
      directions: forward mode: ``"coordinates"`` (one direction per parameter) or
        ``"random"`` (``num_directions`` standard Gaussian directions; unbiased).
      num_directions: number of random directions (only with ``"random"``).
      mode: ``"forward"`` or ``"reverse"``.
      coupling: reverse mode's one-sided coupling, ``"up"`` or ``"down"``.
    """

    directions: str = static_field(default="coordinates")
    num_directions: int | None = static_field(default=None)
    mode: str = static_field(default="forward")
    coupling: str = static_field(default="up")
    site_level: ClassVar[bool] = False
    name: ClassVar[str] = "stochastic_ad"

    def __post_init__(self) -> None:
        check_directions("stochastic_ad", self.directions, "random", self.num_directions)
        if self.mode not in _MODES:
            raise ValueError(
                f"stochastic_ad: unknown `mode` {self.mode!r}; expected one of {_MODES}"
            )
        if self.coupling not in _COUPLINGS:
            raise ValueError(
                f"stochastic_ad: unknown `coupling` {self.coupling!r}; expected one of {_COUPLINGS}"
            )
        if self.mode == "reverse" and (self.directions != "coordinates"):
            raise ValueError(
                "stochastic_ad: `directions` only applies to mode='forward' (reverse mode "
                "computes the full gradient in one reverse pass)"
            )
        if self.mode == "forward" and self.coupling != "up":
            raise ValueError(
                "stochastic_ad: `coupling` only applies to mode='reverse' (forward mode jumps "
                "both ways at the rates of the inversion coupling)"
            )

    @property
    def sums_batch(self) -> bool:
        """Whether :meth:`per_batch` gives the summed gradient of a batch directly (reverse
        mode: one reverse pass for the batch, so the cost of a ``P``-parameter gradient is
        not multiplied by the number of samples). Forward mode has only per-sample runs."""
        return self.mode == "reverse"

    def per_batch(self, call, keys, theta, cache):
        """``(values, sum of gradient estimates, aux)`` over stacked ``keys`` (reverse mode);
        ``cache``: a dict the caller keeps across chunks (the traced record/replay runs)."""
        return _reverse(call, keys, theta, self.coupling, batched=True, cache=cache)

    def per_sample(self, call, key, theta):
        """``(value, gradient estimate, aux)`` for one sample; ``call(key, theta_flat)``."""
        if self.mode == "reverse":
            return _reverse(call, key, theta, self.coupling, batched=False)
        select = fold_in_str(key, "stochastic_ad")
        num = self.num_directions
        dirs = direction_matrix(theta, num, fold_in_str(key, "sad-directions"), jax.random.normal)
        n = dirs.shape[0]
        sel = jax.random.split(select, n)
        trip, aux = jax.vmap(lambda v, s: _triple(call, key, theta, v, s))(dirs, sel)
        d = trip.derivative_contribution()
        aux = jax.tree_util.tree_map(lambda a: a[0], aux)
        return trip.value[0], gradient_from_directional(d, dirs, num), aux


def stochastic_ad(
    directions: str = "coordinates",
    num_directions: int | None = None,
    *,
    mode: str = "forward",
    coupling: str = "up",
) -> StochasticAD:
    """The StochasticAD-style estimator for discrete randomness (see :class:`StochasticAD`).

    ``mode="forward"`` (default) costs one run pair per parameter (or random direction) and
    has the lower variance; ``mode="reverse"`` gives the whole gradient from one run, one
    replay and one reverse pass, at a cost independent of the number of parameters.
    """
    return StochasticAD(
        directions=directions, num_directions=num_directions, mode=mode, coupling=coupling
    )


def stochastic_triple(fun: Any) -> Any:
    """Run ``fun(key, theta, *args)`` along one direction and return its :class:`StochasticTriple`.

    The returned function ``t(key, theta, *args, direction=None)`` propagates
    ``d theta = direction`` through the program (forward mode): ``t(key, 0.5)`` for
    ``fun = lambda k, p: je.sample(k, Bernoulli(probs=p))`` prints like StochasticAD.jl,
    e.g. ``0 + 0ε + (1 with probability 2.0ε)``. ``theta`` may be a float scalar (default
    direction 1) or any pytree of float arrays, with ``direction`` a pytree of the same
    structure and shapes (required then). Its ``derivative_contribution()`` is one unbiased
    sample of the directional derivative ``d/d eps E[fun(theta + eps * direction)]`` at the
    cost of one run pair (``key`` also drives the choice of jump); average it over keys
    (``jax.vmap``) for an estimate.
    """

    def triple(key: jax.Array, theta: Any, *args: Any, direction: Any = None) -> StochasticTriple:
        check_key(key, "je.stochastic_triple")
        leaves = jax.tree_util.tree_leaves(theta)
        if not leaves or not all(jnp.issubdtype(jnp.result_type(x), jnp.floating) for x in leaves):
            raise TypeError(
                "je.stochastic_triple: `theta` must be a float scalar or a pytree of float "
                f"arrays, got {jax.tree_util.tree_map(lambda x: jnp.result_type(x), theta)}"
            )
        flat, unravel = ravel_pytree(theta)
        if direction is None:
            if flat.shape != (1,) or jnp.ndim(leaves[0]) != 0:
                raise TypeError(
                    "je.stochastic_triple: `direction` is required when `theta` is not a "
                    "scalar (a pytree like theta: the directional derivative along it)"
                )
            v = jnp.ones_like(flat)
        else:
            if jax.tree_util.tree_structure(direction) != jax.tree_util.tree_structure(
                theta
            ) or any(
                jnp.shape(a) != jnp.shape(b)
                for a, b in zip(jax.tree_util.tree_leaves(direction), leaves, strict=True)
            ):
                raise ValueError(
                    "je.stochastic_triple: `direction` must have the structure and shapes "
                    "of `theta`"
                )
            v = ravel_pytree(direction)[0].astype(flat.dtype)
        from jaxestim._transforms import _split

        def call(k, th):
            return _split(fun(k, unravel(th), *args), False, "je.stochastic_triple")

        trip, _ = _triple(call, key, flat, v, fold_in_str(key, "stochastic_ad"))
        return trip

    return triple
