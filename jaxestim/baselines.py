"""Control-variate baselines for the score-function (REINFORCE) estimator.

The score-function estimator for one sample is ``(f(x) - b) * grad log p(x; theta)``.
Subtracting a baseline ``b`` that does not depend on the sample ``x`` keeps it unbiased,
since ``E[grad log p(x; theta)] = 0``, and lowers its variance when ``b`` is close to
``f``. Baselines accepted by :func:`jaxestim.score_function`:

* ``None`` -- no baseline.
* a constant (float or scalar array; may be traced).
* ``"leave_one_out"`` -- for sample ``i`` of ``N``, ``b_i = (sum_j f_j - f_i) / (N - 1)``,
  the mean of the *other* samples (Kool et al., 2019, "Buy 4 REINFORCE samples, get a
  baseline for free!"). Unbiased because ``b_i`` is independent of sample ``i``; needs
  ``num_samples >= 2``.
* ``"optimal"`` -- a per-coordinate baseline: for parameter coordinate ``j``,
  ``b_ij = sum_{k != i} f_k s_kj^2 / sum_{k != i} s_kj^2`` with ``s_k = grad log p(x_k)``,
  the leave-one-out estimate of the variance-minimizing constant
  ``b_j* = E[f s_j^2] / E[s_j^2]``; the estimate is ``(f_i - b_i) (.) s_i`` elementwise.
  Unbiased (``b_i`` is independent of sample ``i``); needs ``num_samples >= 2`` and
  materializes per-sample score vectors (``O(N P)`` work, ``O(C P)`` memory); first-order
  only (an outer derivative raises ``EstimatorError``). See
  :class:`jaxestim.estimators.score_function.ScoreFunction`.
* :class:`MovingAverage` -- an exponential moving average of past batch means of ``f``,
  carried as explicit state (no hidden globals), so a jitted optax step can thread it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxestim._util import concrete, pytree_dataclass


class MovingAverageState(NamedTuple):
    """State of :class:`MovingAverage`: the (biased) running average and the update count."""

    average: jax.Array
    count: jax.Array


@pytree_dataclass
class MovingAverage:
    """Exponential moving average of the objective as a score-function baseline.

    With decay ``d``, after the ``t``-th batch with mean objective ``m_t``:
    ``a_t = d a_{t-1} + (1 - d) m_t`` and the baseline used for batch ``t + 1`` is the
    bias-corrected ``a_t / (1 - d^t)`` (zero before the first update), as in Adam's moment
    estimates. Because it only uses *past* batches it is independent of the current
    samples, so the estimator stays unbiased.

    Attributes:
      decay: in ``[0, 1)``; larger means a slower, smoother average.
    """

    decay: Any = 0.9

    def __post_init__(self) -> None:
        d = concrete(self.decay)
        if d is not None and (d.ndim != 0 or not 0.0 <= float(d) < 1.0):
            raise ValueError(f"MovingAverage: `decay` must be a scalar in [0, 1), got {d!r}")

    def init(self) -> MovingAverageState:
        """The initial state (no batches seen yet)."""
        return MovingAverageState(jnp.zeros((), jnp.result_type(float)), jnp.zeros((), jnp.int32))

    def value(self, state: MovingAverageState) -> jax.Array:
        """The baseline for the next batch: the bias-corrected average (0 before any update)."""
        corr = 1.0 - jnp.asarray(self.decay, state.average.dtype) ** state.count
        return jnp.where(state.count > 0, state.average / jnp.where(corr > 0, corr, 1.0), 0.0)

    def update(self, state: MovingAverageState, batch_mean: jax.Array) -> MovingAverageState:
        """Fold one batch's mean objective into the state."""
        d = jnp.asarray(self.decay, state.average.dtype)
        avg = d * state.average + (1.0 - d) * jax.lax.stop_gradient(batch_mean)
        return MovingAverageState(avg.astype(state.average.dtype), state.count + 1)


__all__ = ["MovingAverage", "MovingAverageState"]
