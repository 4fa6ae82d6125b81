"""Probability distributions for :mod:`jaxestim`.

Continuous families expose a reparameterized ``rsample``; discrete families expose the
inverse-CDF interface (``uniforms``, ``icdf``, ``cdf``, ``value_from_index``,
``index_from_value``) used by finite-difference and stochastic-derivative estimators.
All distributions are JAX pytrees.
"""

from ._base import ContinuousDistribution, DiscreteDistribution, Distribution
from ._continuous import (
    Beta,
    Cauchy,
    Dirichlet,
    Exponential,
    Gamma,
    Laplace,
    Logistic,
    LogNormal,
    MultivariateNormal,
    Normal,
    Uniform,
)
from ._discrete import (
    Bernoulli,
    Binomial,
    Categorical,
    Geometric,
    OneHotCategorical,
    Poisson,
)

__all__ = [
    "Bernoulli",
    "Beta",
    "Binomial",
    "Categorical",
    "Cauchy",
    "ContinuousDistribution",
    "Dirichlet",
    "DiscreteDistribution",
    "Distribution",
    "Exponential",
    "Gamma",
    "Geometric",
    "Laplace",
    "LogNormal",
    "Logistic",
    "MultivariateNormal",
    "Normal",
    "OneHotCategorical",
    "Poisson",
    "Uniform",
]
