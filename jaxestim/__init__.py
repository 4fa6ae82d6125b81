"""jaxestim: Monte Carlo gradient estimators for stochastic programs in JAX.

Write ``f(key, params, *args) -> scalar`` that draws randomness through
:func:`jaxestim.sample`, then differentiate its expectation like ``jax.grad``::

    import jaxestim as je

    g = je.grad(f, je.score_function(baseline="leave_one_out"), num_samples=64)(key, params)

The same program runs under every estimator (pathwise, score function, Gumbel-softmax,
straight-through, finite differences, StochasticAD-style), composes with ``jax.jit``,
``jax.vmap`` and :func:`jaxestim.scan`, and runs on CPU/GPU/TPU.
"""

from jaxestim import baselines, distributions
from jaxestim._check import CheckReport, Finding, check
from jaxestim._compare import ComparisonReport, Recommendation, SweepResult, compare, sweep
from jaxestim._errors import EstimatorError
from jaxestim._estimator import Estimator
from jaxestim._handlers import LoopKey, cond, cost, fori_loop, sample, scan, switch, while_loop
from jaxestim._resampling import new_log_weight, new_weight, resample
from jaxestim._transforms import grad, grad_samples, value_and_grad
from jaxestim.estimators import (
    ARM,
    Auto,
    DisARM,
    Enumeration,
    FiniteDifference,
    ForwardGradient,
    GumbelRao,
    GumbelSoftmax,
    Pathwise,
    PathwiseForward,
    ReinMax,
    ScoreFunction,
    StochasticAD,
    StochasticTriple,
    StraightThrough,
    arm,
    auto,
    disarm,
    enumeration,
    finite_difference,
    forward_gradient,
    gumbel_rao,
    gumbel_softmax,
    pathwise,
    reinforce,
    reinmax,
    score_function,
    select,
    stochastic_ad,
    stochastic_triple,
    straight_through,
)
from jaxestim.estimators.delta import DeltaMethod, delta_method
from jaxestim.estimators.measure_valued import MeasureValued, measure_valued
from jaxestim.estimators.relax import REBAR, RELAX, rebar, relax
from jaxestim.perturbed import perturbed

__version__ = "0.1.0"

__all__ = [
    "ARM",
    "REBAR",
    "RELAX",
    "Auto",
    "CheckReport",
    "ComparisonReport",
    "DeltaMethod",
    "DisARM",
    "Enumeration",
    "Estimator",
    "EstimatorError",
    "Finding",
    "FiniteDifference",
    "ForwardGradient",
    "GumbelRao",
    "GumbelSoftmax",
    "LoopKey",
    "MeasureValued",
    "Pathwise",
    "PathwiseForward",
    "Recommendation",
    "ReinMax",
    "ScoreFunction",
    "StochasticAD",
    "StochasticTriple",
    "StraightThrough",
    "SweepResult",
    "arm",
    "auto",
    "baselines",
    "check",
    "compare",
    "cond",
    "cost",
    "delta_method",
    "disarm",
    "distributions",
    "enumeration",
    "finite_difference",
    "fori_loop",
    "forward_gradient",
    "grad",
    "grad_samples",
    "gumbel_rao",
    "gumbel_softmax",
    "measure_valued",
    "new_log_weight",
    "new_weight",
    "pathwise",
    "perturbed",
    "rebar",
    "reinforce",
    "reinmax",
    "relax",
    "resample",
    "sample",
    "scan",
    "score_function",
    "select",
    "stochastic_ad",
    "stochastic_triple",
    "straight_through",
    "sweep",
    "switch",
    "value_and_grad",
    "while_loop",
]
