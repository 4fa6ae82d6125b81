"""The estimator families, one module each.

Two kinds exist:

* *site-level* estimators act at each sample site and build a surrogate objective whose
  reverse-mode gradient is the estimate; they may be mixed per site with
  ``je.sample(..., estimator=...)``:
  :mod:`~jaxestim.estimators.pathwise` (reparameterization),
  :mod:`~jaxestim.estimators.score_function` (REINFORCE with baselines),
  :mod:`~jaxestim.estimators.relaxations` (Gumbel-softmax, straight-through),
  :mod:`~jaxestim.estimators.enumeration` (exact sums over small finite supports) and
  :mod:`~jaxestim.estimators.auto` (pathwise where possible, score function elsewhere).
* *whole-program* estimators re-run the program (at perturbed parameters, or coupled
  alternatives of its discrete draws); they take no per-site overrides:
  :mod:`~jaxestim.estimators.finite_difference`,
  :mod:`~jaxestim.estimators.stochastic_ad`, :mod:`~jaxestim.estimators.arm` (DisARM, ARM) and
  :mod:`~jaxestim.estimators.relax` (REBAR / RELAX control variates, learned as state) and
  :mod:`~jaxestim.estimators.measure_valued` (measure-valued derivatives).

The base class is :class:`jaxestim.Estimator` (``jaxestim/_estimator.py``); the surrogate
handler that runs the site-level ones is in ``jaxestim/_surrogate.py``. Every public name
is re-exported from :mod:`jaxestim`.
"""

from jaxestim.estimators.arm import ARM, DisARM, arm, disarm
from jaxestim.estimators.auto import Auto, auto
from jaxestim.estimators.delta import DeltaMethod, delta_method
from jaxestim.estimators.enumeration import Enumeration, enumeration
from jaxestim.estimators.finite_difference import FiniteDifference, finite_difference
from jaxestim.estimators.forward import ForwardGradient, forward_gradient
from jaxestim.estimators.measure_valued import MeasureValued, measure_valued
from jaxestim.estimators.pathwise import Pathwise, PathwiseForward, pathwise
from jaxestim.estimators.relax import REBAR, RELAX, rebar, relax
from jaxestim.estimators.relaxations import (
    GumbelRao,
    GumbelSoftmax,
    ReinMax,
    StraightThrough,
    gumbel_rao,
    gumbel_softmax,
    reinmax,
    select,
    straight_through,
)
from jaxestim.estimators.score_function import ScoreFunction, reinforce, score_function
from jaxestim.estimators.stochastic_ad import (
    StochasticAD,
    StochasticTriple,
    stochastic_ad,
    stochastic_triple,
)

__all__ = [
    "ARM",
    "REBAR",
    "RELAX",
    "Auto",
    "DeltaMethod",
    "DisARM",
    "Enumeration",
    "FiniteDifference",
    "ForwardGradient",
    "GumbelRao",
    "GumbelSoftmax",
    "MeasureValued",
    "Pathwise",
    "PathwiseForward",
    "ReinMax",
    "ScoreFunction",
    "StochasticAD",
    "StochasticTriple",
    "StraightThrough",
    "arm",
    "auto",
    "delta_method",
    "disarm",
    "enumeration",
    "finite_difference",
    "forward_gradient",
    "gumbel_rao",
    "gumbel_softmax",
    "measure_valued",
    "pathwise",
    "rebar",
    "reinforce",
    "reinmax",
    "relax",
    "score_function",
    "select",
    "stochastic_ad",
    "stochastic_triple",
    "straight_through",
]
