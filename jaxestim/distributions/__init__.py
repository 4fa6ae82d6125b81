"""Probability distributions for :mod:`jaxestim`.

Continuous families expose a reparameterized ``rsample``; discrete families expose the
inverse-CDF interface (``uniforms``, ``icdf``, ``cdf``, ``value_from_index``,
``index_from_value``) used by finite-difference and stochastic-derivative estimators.
All distributions are JAX pytrees.

Boundaries and invalid parameters: degenerate boundary parameters are accepted where the
distribution is a (partial) point mass (``probs`` 0 or 1, Poisson ``rate = 0``, zero-probability
categories), with finite and exact ``log_prob`` gradients and ``cdf`` JVPs there; continuous
families stay finite arbitrarily close to their open boundaries. Constructors reject concrete
invalid parameters; traced invalid or NaN parameters make ``log_prob``, ``cdf``, samples and
discrete ``icdf`` NaN element-wise (``Categorical.icdf``: the label ``K``), see
``Distribution._param_checks`` / ``Distribution._params_valid``.
"""

from ._base import ContinuousDistribution, DiscreteDistribution, Distribution
from ._bijectors import Affine, Bijector, Chain, Exp, Sigmoid, Softplus, Tanh
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
    StudentT,
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
from ._transformed import TransformedDistribution

__all__ = [
    "Affine",
    "Bernoulli",
    "Beta",
    "Bijector",
    "Binomial",
    "Categorical",
    "Cauchy",
    "Chain",
    "ContinuousDistribution",
    "Dirichlet",
    "DiscreteDistribution",
    "Distribution",
    "Exp",
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
    "Sigmoid",
    "Softplus",
    "StudentT",
    "Tanh",
    "TransformedDistribution",
    "Uniform",
]
