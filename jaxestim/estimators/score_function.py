"""The score-function (REINFORCE) estimator and its baselines."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxestim import baselines as _baselines
from jaxestim._estimator import Estimator
from jaxestim._util import concrete

_BASELINE_KINDS = "None, a constant, 'leave_one_out' or je.baselines.MovingAverage(decay)"


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

    Attributes:
      baseline: None, a constant, ``"leave_one_out"`` (needs ``num_samples >= 2``) or a
        :class:`jaxestim.baselines.MovingAverage` (stateful: pass ``estimator_state``).
    """

    baseline: Any = None
    name: ClassVar[str] = "score_function"

    def __post_init__(self) -> None:
        b = self.baseline
        if b is None or isinstance(b, _baselines.MovingAverage):
            return
        if isinstance(b, str):
            if b != "leave_one_out":
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
                "score_function(baseline='leave_one_out') needs `num_samples` >= 2, got "
                f"{num_samples}"
            )

    def baseline_value(self, f: jax.Array, total: jax.Array, num_samples: int, state: Any):
        """The baseline for samples with objective values ``f`` (``total``: sum over all N)."""
        b = self.baseline
        if b is None:
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


def score_function(baseline: Any = None) -> ScoreFunction:
    """The score-function / REINFORCE estimator with an optional baseline.

    See :class:`ScoreFunction` and :mod:`jaxestim.baselines`.
    """
    return ScoreFunction(baseline=baseline)


reinforce = score_function
