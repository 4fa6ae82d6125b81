"""The score-function (REINFORCE) estimator and its baselines."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxestim import baselines as _baselines
from jaxestim._estimator import Estimator
from jaxestim._util import concrete

_BASELINE_KINDS = (
    "None, a constant, 'leave_one_out', 'optimal' or je.baselines.MovingAverage(decay)"
)
_STRING_BASELINES = ("leave_one_out", "optimal")


@dataclasses.dataclass(frozen=True)
class ScoreFunction(Estimator):
    r"""Score-function (REINFORCE, likelihood-ratio) estimator.

    ``grad E_{x~p(.;theta)}[f(x, theta)] = E[(f(x, theta) - b) grad log p(x; theta)
    + grad_theta f(x, theta)]``: the sample is held fixed (stop-gradient) and the gradient
    flows through its log-probability; any direct dependence of ``f`` on ``theta`` is still
    differentiated pathwise. Implemented as the DiCE surrogate (Foerster et al., 2018)
    ``box(L) f + sum_g (1 - box(log p_g)) b_g`` with ``box(x) = exp(x - stop_grad(x))``
    (value exactly 1), ``L`` the summed log-probability of the sample's score-function sites
    and ``b_g`` the stop-gradient baseline of each group: its value equals ``f``, its
    gradient is ``sum_g (f - b_g) grad log p_g + grad f``, and its derivatives of *every*
    order are unbiased, so ``jax.grad`` / ``jax.hessian`` of a ``je.grad`` (or of the value
    of ``je.value_and_grad``) give unbiased higher derivatives of ``E[f]`` (proof in
    ``jaxestim._transforms._Run.combine``).
    Unbiased for every distribution (discrete or not) and non-differentiable ``f``, but
    high variance that grows with the number of random variables; a baseline ``b``
    (see :mod:`jaxestim.baselines`) reduces it without adding bias. Cost: one forward and
    one backward pass per sample.

    ``baseline="optimal"``: a per-coordinate baseline ``b_j ~ E[f s_j^2] / E[s_j^2]``
    (``s = grad_theta log p(x; theta)`` the sample's score over the flattened parameters,
    the sum over this group's sites), the variance-minimizing constant per coordinate:
    ``Var((f - b_j) s_j) = E[f^2 s_j^2] - 2 b_j E[f s_j^2] + b_j^2 E[s_j^2] - (E[f s_j])^2``
    is minimal at ``b_j* = E[f s_j^2] / E[s_j^2]`` (= ``Cov(s_j, f s_j) / Var(s_j)``
    since ``E[s] = 0``). It is estimated leave-one-out so it stays unbiased:
    ``b_ij = sum_{k != i} f_k s_kj^2 / sum_{k != i} s_kj^2`` (0 where that denominator is
    0) and ``g_i = (f_i - b_i) (.) s_i + grad_theta f_i`` (elementwise; ``b_i`` does not
    depend on sample ``i``, so ``E[b_ij s_ij] = E[b_ij] E[s_ij] = 0``). Its variance is
    that with ``b*`` plus an ``O(1/N)`` excess from estimating it; it helps most when the
    coordinates' scores have different scales (a Normal's ``mu`` and ``sigma``). Cost: the
    per-sample score vectors are materialized: one forward and ``1 + G`` reverse passes
    per sample (``G`` the number of groups with this baseline, usually 1; the score is the
    same pullback with another cotangent), memory ``O(C P)`` for a chunk of ``C`` samples
    and ``P`` parameters (``je.grad`` sums them per chunk); with ``chunk_size < N`` one
    extra forward and ``G`` reverse passes per sample first compute the all-sample sums
    (with ``mesh=`` they are psums), so the estimate does not depend on the chunking. Needs
    ``num_samples >= 2``. Not combinable with ``je.enumeration()`` sites or ``je.cost``
    (``EstimatorError``). The estimate is first-order only: differentiating it again
    (``jax.grad`` / ``jax.hessian`` of a ``je.grad``) raises ``EstimatorError`` at trace
    time rather than give a biased higher derivative. (Per-coordinate optimal baselines:
    Weaver & Tao, 2001; Greensmith et al., 2004; Mohamed et al., 2020, section 7.)

    Attributes:
      baseline: None, a constant, ``"leave_one_out"`` (needs ``num_samples >= 2``),
        ``"optimal"`` (per-coordinate, see above; needs ``num_samples >= 2``) or a
        :class:`jaxestim.baselines.MovingAverage` (stateful: pass ``estimator_state``).
    """

    baseline: Any = None
    name: ClassVar[str] = "score_function"

    def __post_init__(self) -> None:
        b = self.baseline
        if b is None or isinstance(b, _baselines.MovingAverage):
            return
        if isinstance(b, str):
            if b not in _STRING_BASELINES:
                raise ValueError(
                    f"score_function: unknown `baseline` {b!r}; expected {_BASELINE_KINDS}"
                )
            return
        if hasattr(b, "shape") or isinstance(b, int | float):
            if jnp.shape(b) != ():
                raise ValueError(
                    f"score_function: a constant `baseline` must be a scalar, got shape "
                    f"{jnp.shape(b)}"
                )
            return
        if concrete(b) is None and not isinstance(b, jax.core.Tracer):
            return  # placeholder leaf from a pytree utility
        raise ValueError(f"score_function: invalid `baseline` {b!r}; expected {_BASELINE_KINDS}")

    # A string baseline ("leave_one_out") is static configuration; a constant or a
    # MovingAverage is data (a leaf or sub-pytree), so it may be traced.
    def tree_flatten(self) -> tuple[tuple, Any]:
        if isinstance(self.baseline, str):
            return (), self.baseline
        return (self.baseline,), None

    @classmethod
    def tree_unflatten(cls, aux: Any, children: tuple) -> ScoreFunction:
        return cls(baseline=aux) if aux is not None else cls(baseline=children[0])

    @property
    def has_state(self) -> bool:
        return isinstance(self.baseline, _baselines.MovingAverage)

    def init(self) -> Any:
        return self.baseline.init() if self.has_state else None

    def check(self, num_samples: int) -> None:
        if isinstance(self.baseline, str) and num_samples < 2:
            raise ValueError(
                f"score_function(baseline={self.baseline!r}) needs `num_samples` >= 2, got "
                f"{num_samples}"
            )

    def baseline_value(self, f: jax.Array, total: jax.Array, num_samples: int, state: Any):
        """The baseline for samples with objective values ``f`` (``total``: sum over all N)."""
        b = self.baseline
        if b is None:
            return jnp.zeros_like(f)
        if b == "optimal":  # per-coordinate: added by _transforms._Run.optimal_correction
            return jnp.zeros_like(f)
        if isinstance(b, str):
            return (total - f) / (num_samples - 1)
        if isinstance(b, _baselines.MovingAverage):
            return jnp.broadcast_to(b.value(state).astype(f.dtype), f.shape)
        return jnp.broadcast_to(jnp.asarray(b, f.dtype), f.shape)

    def process_site(self, ctx, key, dist, sample_shape):
        ctx.check_score_estimator(self)
        x = jax.lax.stop_gradient(dist.sample(key, sample_shape))
        ctx.add_score(self, ctx.site_log_prob(dist, x))
        return x


jax.tree_util.register_pytree_node_class(ScoreFunction)


def score_function(baseline: Any = None, control_variate: str | None = None) -> Estimator:
    """The score-function / REINFORCE estimator with an optional baseline.

    See :class:`ScoreFunction` and :mod:`jaxestim.baselines`. ``control_variate="delta"``
    gives :class:`jaxestim.estimators.delta.DeltaMethod` (the delta-method / second-order
    Taylor control variate of Paisley et al., 2012, for continuous sites with independent
    elements; a whole-program estimator) and takes no ``baseline`` (``ValueError``): its
    residual ``f - cv`` already has its constant part removed.
    """
    if control_variate is not None:
        if control_variate != "delta":
            raise ValueError(
                f"score_function: unknown `control_variate` {control_variate!r}; expected "
                f"None or 'delta'"
            )
        if baseline is not None:
            raise ValueError(
                "score_function: control_variate='delta' takes no `baseline` (the residual "
                "f - cv of the Taylor control variate has no constant part left to remove)"
            )
        from jaxestim.estimators.delta import DeltaMethod

        return DeltaMethod()
    return ScoreFunction(baseline=baseline)


reinforce = score_function
