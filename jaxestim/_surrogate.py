"""The surrogate handler of the site-level estimators.

It runs every sample site with the site's estimator (the transform's, or a per-site
override) and collects the score-function log-probabilities by baseline group, the
support-boundary records and the invalid-parameter counts; :mod:`jaxestim._transforms`
builds the DiCE surrogate from them.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxestim._errors import EstimatorError
from jaxestim._estimator import Estimator
from jaxestim._handlers import Handler, mask_value
from jaxestim.baselines import MovingAverage
from jaxestim.distributions import Distribution
from jaxestim.estimators.score_function import ScoreFunction

# keys of SurrogateHandler.logp besides the score-function groups 0, 1, ...: the
# support-boundary record (see _transforms._boundary_terms) and the number of elements with
# invalid parameters (_transforms._invalid_count)
BOUNDARY, INVALID = -1, -2
# je.cost credit assignment (see jaxestim._handlers.cost): COST_S = sum_k box(L_{<k}) c_k,
# COST_C = sum_k c_k; SITE_B = sum_i (1 - box(log p_i)) b_i over sites with a per-site
# baseline (a score-function override whose baseline is an array)
COST_S, COST_C, SITE_B = -3, -4, -5


def magic_box(x: jax.Array) -> jax.Array:
    r"""The DiCE "magic box" (Foerster et al., 2018): ``exp(x - stop_gradient(x))``.

    Its value is exactly 1 and ``grad box(L) = box(L) grad L``, so every derivative of
    ``box(log p) * f`` reproduces the score-function terms of that order.
    """
    return jnp.exp(x - jax.lax.stop_gradient(x))


def _is_site_baseline(b: Any) -> bool:
    """A per-site baseline: a number or array (not None, "leave_one_out", MovingAverage)."""
    return b is not None and not isinstance(b, str | MovingAverage)


# je.enumeration(): the product of the enumerated sites' probabilities w_c of this run's
# combination (multiplied, not added), and the per-combination objective values f_c that
# _transforms._Run.program stores next to it (see _Run.combine)
ENUM_W, ENUM_F = -6, -7


def _nan_derivative_if(bad: jax.Array, x: jax.Array, dist: Distribution) -> jax.Array:
    """``x`` unchanged in value, with a NaN derivative in every parameter of ``dist`` if
    ``bad`` (``param * 0`` has derivative 0, ``param * nan`` NaN; no ``where`` trap)."""
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        return x
    factor = jnp.where(bad, jnp.nan, 0.0)
    leaves = [v for v in jax.tree_util.tree_leaves(dist) if jnp.issubdtype(v.dtype, jnp.inexact)]
    term = sum(jnp.sum(v) for v in leaves) * factor
    return x + (term - jax.lax.stop_gradient(term)).astype(x.dtype)


class SurrogateHandler(Handler):
    """Handler for site-level estimators: runs sites, collects score-function log-probs.

    ``groups`` (shared with loop and branch children) lists the distinct score-function
    estimators met; ``logp[i]`` is the summed log-probability of this sample's sites in
    group ``i``. ``shared`` is created per trace of the program (:meth:`new_shared`).
    """

    recording = True

    def __init__(self, estimator: Estimator, num_samples: int, shared: dict | None = None):
        super().__init__()
        self.estimator = estimator
        self.name = estimator.name
        self.num_samples = num_samples
        self.shared = self.new_shared(num_samples) if shared is None else shared
        self.logp: dict[int, jax.Array] = {}
        self._mask: jax.Array | None = None
        # je.enumeration() in loop bodies: the traced mixed-radix stride of this iteration's
        # first enumerated value (None outside loops: the sites use shared["enum_K"]), the
        # static number of combinations of this iteration's sites so far, the smallest
        # max_combinations among them, and whether the handler runs a je.cond branch
        self._enum_base: jax.Array | None = None
        self._enum_m = 1
        self._enum_budget: int | None = None
        self._enum_branch = False

    @staticmethod
    def new_shared(num_samples: int) -> dict:
        """State shared by one program trace and its loop and branch children."""
        auto_baseline = "leave_one_out" if num_samples >= 2 else None
        return {"groups": [], "auto_score": ScoreFunction(baseline=auto_baseline)}

    @property
    def groups(self) -> list[ScoreFunction]:
        return self.shared["groups"]

    @property
    def auto_score(self) -> ScoreFunction:
        return self.shared["auto_score"]

    def sample(self, key, dist, sample_shape, estimator, mask):
        est = self.estimator if estimator is None else estimator
        if not est.site_level:
            raise EstimatorError(
                f"je.{est.name}() is a whole-program estimator and cannot be chosen for a "
                f"single site; per-site overrides must be je.pathwise(), "
                f"je.score_function(), je.gumbel_softmax(), je.straight_through() or "
                f"je.auto()"
            )
        self._mask = mask
        try:
            x = est.process_site(self, key, dist, sample_shape)
        finally:
            self._mask = None
        invalid = jnp.logical_not(dist._params_valid())
        if mask is not None:
            invalid = mask & invalid
        if self.in_own_trace():
            self._add(INVALID, jnp.sum(invalid).astype(jnp.result_type(float)))
        else:  # inside plain lax control flow: nothing may leave, so poison the derivative
            x = _nan_derivative_if(jnp.any(invalid), x, dist)
        return mask_value(x, mask)

    def site_log_prob(self, dist: Distribution, x: jax.Array) -> jax.Array:
        """The summed log-probability of a site's draws ``x``, without masked-out draws.

        Also records the site's support-boundary terms (see ``_transforms._boundary_terms``):
        the score function is biased where the support changes with the parameters.
        """
        lp = dist._sampled_log_prob(x)
        if self._mask is not None:
            lp = jnp.where(self._mask, lp, 0.0)
        sb = dist._support_boundary()
        if sb is not None:
            q, _, at = sb
            site = self.shared["sites"] = self.shared.get("sites", 0) + 1
            w = 1.0 + 0.5 * jnp.sin(1.7 * jnp.arange(q.shape[0], dtype=q.dtype) + 2.3 * site)
            # one record: its value counts the elements on a boundary, its gradient is that
            # of sum_e w_e q_e (zero unless a boundary parameter moves with theta)
            moving = jnp.sum(w * (q - jax.lax.stop_gradient(q)))
            self._add(BOUNDARY, jnp.sum(at).astype(q.dtype) + moving)
        return jnp.sum(lp)

    def check_score_estimator(self, est: ScoreFunction) -> None:
        if est.has_state and est is not self.estimator:
            raise EstimatorError(
                "a score_function with a stateful MovingAverage baseline can only be the "
                "transform's estimator (its state is threaded through estimator_state=); "
                "use a constant or 'leave_one_out' baseline for a per-site override"
            )
        est.check(self.num_samples)

    def add_score(self, est: ScoreFunction, logp: jax.Array) -> None:
        self.check_recording_site(f"a je.{est.name}() sample site (it records log p)")
        i = self._group(est)
        self._add(i, logp)
        if (
            est is not self.estimator
            and est is not self.auto_score
            and _is_site_baseline(est.baseline)
        ):
            # a per-site override with an array baseline (possibly state-dependent, computed
            # in the program): its DiCE baseline term is this site's alone
            self.shared.setdefault("site_baselines", set()).add(i)
            b = jax.lax.stop_gradient(jnp.asarray(est.baseline, logp.dtype))
            self._add(SITE_B, (1.0 - magic_box(logp)) * b)

    def _score_total(self) -> jax.Array:
        """``L``: the summed log-probability of this run's score-function sites so far."""
        terms = [v for i, v in self.logp.items() if i >= 0]
        return sum(terms) if terms else jnp.zeros(())

    def cost(self, value: jax.Array) -> jax.Array:
        self.check_recording_site("je.cost (it records the cost's place among the draws)")
        self._add(COST_S, magic_box(self._score_total()) * value)
        self._add(COST_C, value)
        return value

    def _group(self, est: ScoreFunction) -> int:
        i = next((j for j, g in enumerate(self.groups) if g is est), None)
        if i is None:
            self.groups.append(est)
            i = len(self.groups) - 1
        return i

    def multiply_weight(self, p: jax.Array) -> None:
        """Multiply an enumerated site's probability into this run's weight ``w_c``."""
        self.logp[ENUM_W] = self.logp[ENUM_W] * p if ENUM_W in self.logp else p

    def _add(self, i: int, logp: jax.Array) -> None:
        self.logp[i] = self.logp[i] + logp if i in self.logp else logp

    def enum_budget_error(self, total: int, budget: int, what: str) -> EstimatorError:
        return EstimatorError(
            f"je.enumeration(): {what} makes K = {total} combinations of the enumerated "
            f"sites' values, more than max_combinations={budget}; each costs one program "
            f"evaluation per sample. Raise je.enumeration(max_combinations=...) or use "
            f"je.score_function('leave_one_out') or je.stochastic_ad() (or je.auto(), the "
            f"default) for these sites."
        )

    # loops: per-iteration log-probs are stacked and summed; the loop state is the mixed-
    # radix stride of the iteration's first enumerated value (je.enumeration(): iteration
    # t of a body with M combinations per iteration starts at stride K_before * M^t)
    def loop_state(self):
        base = self.shared.get("enum_K", 1) if self._enum_base is None else None
        if base is None:
            return self._enum_base * self._enum_m
        return jnp.asarray(base, jnp.int32)

    def loop_child(self, state):
        child = SurrogateHandler(self.estimator, self.num_samples, self.shared)
        child._enum_base = state
        child._enum_branch = self._enum_branch
        return child

    def loop_outputs(self):
        state = None if self._enum_base is None else self._enum_base * self._enum_m
        return state, dict(self.logp)

    def _absorb_enum(self, child: SurrogateHandler, length: int) -> None:
        """Take in the combinations of ``length`` iterations of a body whose enumerated
        sites have ``child._enum_m`` combinations per iteration (static)."""
        if child._enum_m == 1:
            return
        m = child._enum_m**length
        budget = child._enum_budget
        if self._enum_base is not None:
            budget = budget if self._enum_budget is None else min(budget, self._enum_budget)
            self._enum_budget = budget
        before = self.shared.get("enum_K", 1) * self._enum_m
        total = before * m
        if total > budget:
            raise self.enum_budget_error(
                total,
                budget,
                f"a je.scan / je.fori_loop of {length} iterations whose body enumerates "
                f"{child._enum_m} combinations per iteration ({child._enum_m}^{length} in "
                f"all, K = {before} before the loop)",
            )
        if self._enum_base is None:
            self.shared["enum_K"] = total
        else:
            self._enum_m *= m

    def absorb_loop(self, state, stacked, child, length):
        self._absorb_enum(child, length)
        stacked = dict(stacked)
        if ENUM_W in stacked:  # the enumerated weights of the iterations multiply
            self.multiply_weight(jnp.prod(stacked.pop(ENUM_W), axis=0))
        if COST_S in stacked:
            # iteration t's costs are weighed by the sites before the loop and those of
            # iterations < t: box(L_0 + sum_{t' < t} l_t') (box(a + b) = box(a) box(b))
            ell = [v for i, v in stacked.items() if i >= 0]
            ell = sum(ell) if ell else jnp.zeros((length,))
            prefix = self._score_total() + jnp.cumsum(ell) - ell
            self._add(COST_S, jnp.sum(magic_box(prefix) * stacked[COST_S]))
        for i, v in stacked.items():
            if i != COST_S:
                self._add(i, jnp.sum(v, axis=0))

    # branches: the union of the groups any branch records, 0 where a branch records none
    def branch_child(self, state, index, layout):
        child = self.loop_child(state)
        child._enum_branch = True
        return child

    def branch_layout(self, children):
        layout: dict[int, Any] = {}
        for c in children:
            for i, v in c.probe_shapes.items():
                layout[i] = jnp.result_type(layout.get(i, v.dtype), v.dtype)
        return dict(sorted(layout.items()))

    def branch_outputs(self, layout):
        return None, {
            i: jnp.asarray(self.logp[i], dt) if i in self.logp else jnp.zeros((), dt)
            for i, dt in layout.items()
        }

    def absorb_branches(self, state, records, layout):
        for i, v in records.items():
            if i == COST_S:  # the branch's costs are also weighed by the sites before it
                v = magic_box(self._score_total()) * v
            self._add(i, v)
