"""Distributions from other JAX libraries (numpyro) at :func:`jaxestim.sample` sites.

``je.sample(key, d)`` with a numpyro distribution ``d`` wraps it in :class:`ForeignDistribution`,
a :class:`~jaxestim.distributions.Distribution` that delegates ``sample`` / ``rsample`` /
``log_prob`` / shapes to ``d`` (detected by duck typing: numpyro is never imported here).

What a foreign distribution provides is only what every probabilistic library has: draws, a
reparameterized sampler where ``d.has_rsample`` (numpyro's reparameterized families), and a
log-density. It does not provide jaxestim's inverse-CDF coupling (``uniforms`` / ``icdf`` /
``cdf``) nor a family jaxestim knows (Bernoulli/Categorical structure for relaxations, DisARM,
enumeration; the weak derivatives of measure-valued estimators). Hence at a foreign site:

* work: :func:`jaxestim.pathwise` (reparameterized continuous sites),
  :func:`jaxestim.score_function` (every site), :func:`jaxestim.auto` (pathwise where
  reparameterized, score function elsewhere),
  :func:`jaxestim.finite_difference` with independent keys (every site) or with common random
  numbers (continuous sites of a family whose numpyro sampler is a smooth transform of
  parameter-free noise: Normal, LogNormal, Laplace, Logistic, Cauchy, Uniform, Exponential,
  Gumbel, HalfNormal, HalfCauchy, the multivariate normals, and transformed distributions of
  them), :func:`jaxestim.forward_gradient` (reparameterized continuous sites) and the complex
  step when the site's parameters do not depend on ``theta``;
* raise :class:`jaxestim.EstimatorError` at trace time, naming the jaxestim family to use
  instead: every other estimator (``stochastic_ad``, common-random-number finite differences at
  discrete sites and at rejection-sampled ones -- Gamma, Beta, StudentT, Dirichlet, ... --,
  DisARM/ARM, enumeration, the relaxations, REBAR/RELAX, measure-valued, and any estimator not
  listed above), and ``pathwise`` / ``forward_gradient`` at discrete sites.

A continuous foreign site whose support depends on its parameters (numpyro ``Uniform``) reports
the support's bounds through :meth:`ForeignDistribution._support_boundary`, so the score
function gives a NaN gradient (not a silently wrong one) when they move with ``theta``.
Parameter validity is numpyro's business (``validate_args``): no jaxestim range checks or NaN
poisoning apply, and ``validate=True`` adds no checks at foreign sites.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxestim._errors import EstimatorError
from jaxestim.distributions._base import (
    Distribution,
    _boundary,
    _canonical_sample_shape,
    _validate_key,
    as_jax_key,
)

__all__ = ["ForeignDistribution", "check_foreign_site", "is_foreign"]

# Foreign family name (numpyro's class name without its Probs/Logits parameterization suffix,
# wrappers such as Independent unwrapped) -> the jaxestim family with inverse-CDF coupling.
JAXESTIM_COUNTERPART: dict[str, str] = {
    "Bernoulli": "Bernoulli",
    "Binomial": "Binomial",
    "Categorical": "Categorical",
    "OneHotCategorical": "OneHotCategorical",
    "Geometric": "Geometric",
    "Poisson": "Poisson",
    "Beta": "Beta",
    "Cauchy": "Cauchy",
    "Dirichlet": "Dirichlet",
    "Exponential": "Exponential",
    "Gamma": "Gamma",
    "Laplace": "Laplace",
    "Logistic": "Logistic",
    "LogNormal": "LogNormal",
    "MultivariateNormal": "MultivariateNormal",
    "Normal": "Normal",
    "StudentT": "StudentT",
    "Uniform": "Uniform",
}

_WRAPPERS = ("Independent", "ExpandedDistribution", "MaskedDistribution")

# numpyro families whose sampler is a smooth transform of parameter-free noise (so that for a
# fixed key the draw is continuous in every parameter, as common random numbers need); the
# others (Gamma, Beta, StudentT, Dirichlet, ... by rejection) jump as a parameter moves
_COUPLED_FAMILIES = frozenset(
    {
        "Cauchy",
        "Exponential",
        "Gumbel",
        "HalfCauchy",
        "HalfNormal",
        "Laplace",
        "LogNormal",
        "Logistic",
        "LowRankMultivariateNormal",
        "MultivariateNormal",
        "Normal",
        "Uniform",
    }
)


def is_foreign(obj: Any) -> bool:
    """Whether ``obj`` looks like a numpyro distribution (and is not a jaxestim one).

    Duck typing: callable ``sample`` and ``log_prob``, ``batch_shape`` and ``event_shape``,
    a ``support`` constraint with ``is_discrete`` and a ``has_rsample`` flag.
    """
    if isinstance(obj, Distribution):
        return False
    try:
        return (
            callable(getattr(obj, "sample", None))
            and callable(getattr(obj, "log_prob", None))
            and hasattr(obj, "batch_shape")
            and hasattr(obj, "event_shape")
            and hasattr(getattr(obj, "support", None), "is_discrete")
            and hasattr(obj, "has_rsample")
        )
    except Exception:  # a property that cannot be evaluated: not a usable distribution
        return False


def looks_like_distribution(obj: Any) -> bool:
    """Whether ``obj`` has ``sample`` and ``log_prob`` (distrax, TFP, ... : not supported)."""
    return callable(getattr(obj, "sample", None)) and callable(getattr(obj, "log_prob", None))


def family_name(base: Any) -> str:
    """The family of a foreign distribution: class name without Probs/Logits, unwrapped."""
    while type(base).__name__ in _WRAPPERS and hasattr(base, "base_dist"):
        base = base.base_dist
    name = type(base).__name__
    for suffix in ("Probs", "Logits"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _coupled_family(base: Any) -> bool:
    """Whether ``base`` (wrappers and transformed distributions unwrapped) is continuous in its
    parameters for a fixed key: a family of :data:`_COUPLED_FAMILIES`."""
    family = family_name(base)
    if family == "TransformedDistribution" and hasattr(base, "base_dist"):
        return _coupled_family(base.base_dist)
    return family in _COUPLED_FAMILIES


def describe(base: Any) -> str:
    """``numpyro Poisson`` (library and class name) for messages."""
    library = type(base).__module__.split(".")[0]
    return f"{library} {type(base).__name__}"


def suggestion(base: Any) -> str:
    """The jaxestim family to use instead of ``base``, or a generic hint."""
    family = family_name(base)
    target = JAXESTIM_COUNTERPART.get(family)
    if target is None:
        return (
            f"jaxestim.distributions has no counterpart of {family}: build it from a jaxestim "
            "family (e.g. jaxestim.distributions.TransformedDistribution of one) to use this "
            "estimator"
        )
    from jaxestim import distributions as jd

    names = list(getattr(jd, target)._param_names)
    if "probs" in names and "logits" in names:  # exactly one of them
        names = [n for n in names if n != "logits"]
        names[names.index("probs")] = "probs= or logits="
    params = ", ".join(names)
    return f"use jaxestim.distributions.{target}({params}) at this site instead"


@jax.tree_util.register_pytree_node_class
class ForeignDistribution(Distribution):
    """A numpyro distribution at a :func:`jaxestim.sample` site (see the module docstring).

    A pytree whose only child is the wrapped distribution (numpyro distributions are pytrees),
    so it flows through ``jax.jit``, ``jax.vmap`` and :func:`jaxestim.scan` carries.
    ``sample`` returns the wrapped distribution's draws unchanged (numpyro's dtype: integer
    for discrete families).
    """

    # no jaxestim parameters (code that walks ``_param_names``, such as the complex step's
    # check for complex parameters, sees none: foreign sites are checked by check_foreign_site)
    _param_names = ()

    def __init__(self, base: Any) -> None:
        self._base = base

    def tree_flatten(self) -> tuple[tuple[Any, ...], None]:
        return (self._base,), None

    @classmethod
    def tree_unflatten(cls, aux_data: None, children: Sequence[Any]) -> ForeignDistribution:
        del aux_data
        return cls(children[0])

    @property
    def base(self) -> Any:
        """The wrapped foreign distribution."""
        return self._base

    @property
    def is_discrete(self) -> bool:  # type: ignore[override]
        return bool(self._base.support.is_discrete)

    @property
    def is_reparameterized(self) -> bool:  # type: ignore[override]
        return bool(self._base.has_rsample) and not self.is_discrete

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return tuple(self._base.batch_shape)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self._base.event_shape)

    @property
    def dtype(self) -> np.dtype:
        for leaf in jax.tree_util.tree_leaves(self._base):
            dtype = jnp.result_type(leaf)
            if jnp.issubdtype(dtype, jnp.inexact):
                return jnp.dtype(dtype)
        return jnp.dtype(jnp.result_type(float))

    @property
    def mean(self) -> jax.Array:
        return self._base.mean

    @property
    def variance(self) -> jax.Array:
        return self._base.variance

    def sample(self, key: jax.Array, sample_shape: int | Sequence[int] = ()) -> jax.Array:
        """``base.sample(key, sample_shape)`` (a ``je.scan`` random stream gives a JAX key)."""
        _validate_key(key)
        return self._base.sample(as_jax_key(key), _canonical_sample_shape(sample_shape))

    def rsample(self, key: jax.Array, sample_shape: int | Sequence[int] = ()) -> jax.Array:
        """``base.rsample(key, sample_shape)``: reparameterized draws (pathwise derivative)."""
        if not self.is_reparameterized:
            raise EstimatorError(
                f"{describe(self._base)} has no reparameterized sampler (has_rsample is False "
                "or the distribution is discrete); use je.score_function() at this site"
            )
        _validate_key(key)
        return self._base.rsample(as_jax_key(key), _canonical_sample_shape(sample_shape))

    @property
    def _coupled(self) -> bool:  # type: ignore[override]
        """Reparameterized and of a family whose sampler is continuous in its parameters."""
        return self.is_reparameterized and _coupled_family(self._base)

    def coupled_sample(self, key: jax.Array, sample_shape: int | Sequence[int] = ()) -> jax.Array:
        """:meth:`sample`, for the families that are :attr:`_coupled` (checked by the caller)."""
        return self.sample(key, sample_shape)

    def log_prob(self, value: Any) -> jax.Array:
        return self._base.log_prob(value)

    def _params_valid(self) -> jax.Array:
        return jnp.ones(self.batch_shape, bool)

    def _support_boundary(self) -> tuple[jax.Array, jax.Array, jax.Array] | None:
        """Parameters where the support changes with them (see
        :meth:`Distribution._support_boundary`), so that the score function's gradient is NaN
        rather than silently biased when they move with ``theta``.

        Discrete: the ``probs`` / ``rate`` boundaries of numpyro's Bernoulli, Binomial,
        Geometric, Categorical (``probs`` parameterizations) and Poisson, as for the jaxestim
        families. Continuous: for a support that depends on the parameters (numpyro's
        ``dependent_property``, e.g. ``Uniform``) its float bounds, all flagged."""
        if self.is_discrete:
            return _discrete_boundary(self._base)
        if not isinstance(inspect.getattr_static(type(self._base), "support", None), property):
            return None
        bounds = [
            jnp.ravel(jnp.asarray(v))
            for v in vars(self._base.support).values()
            if isinstance(v, jax.Array | np.ndarray | float)
            and jnp.issubdtype(jnp.result_type(v), jnp.floating)
        ]
        if not bounds:
            return None
        q = jnp.concatenate(bounds)
        return q, jnp.zeros_like(q), jnp.ones(q.shape, bool)

    def __repr__(self) -> str:
        return f"ForeignDistribution({self._base!r})"


def _discrete_boundary(base: Any) -> tuple[jax.Array, jax.Array, jax.Array] | None:
    """``_support_boundary`` of numpyro's discrete families with a ``probs`` / ``rate``."""
    while type(base).__name__ in _WRAPPERS and hasattr(base, "base_dist"):
        base = base.base_dist
    name = type(base).__name__
    if name in ("BernoulliProbs", "BinomialProbs", "GeometricProbs"):
        p = jnp.broadcast_to(base.probs, tuple(base.batch_shape))
        active = True
        if name == "BinomialProbs":
            active = jnp.broadcast_to(base.total_count, p.shape) > 0
        low = (p == 0) & (name != "GeometricProbs") & active
        return _boundary(p, low, (p == 1) & active)
    if name == "CategoricalProbs":
        probs = base.probs
        return _boundary(probs, probs == 0, jnp.zeros(jnp.shape(probs), bool))
    if name == "Poisson" and not getattr(base, "is_sparse", False):
        rate = jnp.asarray(base.rate)
        return _boundary(rate, rate == 0, jnp.zeros(rate.shape, bool))
    return None


def foreign_error(
    est: str, dist: ForeignDistribution, why: str, site_level: bool
) -> EstimatorError:
    """An :class:`EstimatorError` for estimator ``est`` at the foreign site ``dist``."""
    base = dist.base
    alternatives = "je.score_function() or je.auto()"
    if dist.is_reparameterized:
        alternatives = "je.pathwise(), je.score_function() or je.auto()"
    override = (
        f", or keep the {describe(base)} and choose {alternatives} for this site with "
        "je.sample(key, dist, estimator=...)"
        if site_level
        else f", or keep the {describe(base)} and differentiate the program with {alternatives}"
    )
    hint = suggestion(base)
    if not dist.is_reparameterized and est.startswith(("je.pathwise(", "je.forward_gradient(")):
        # the jaxestim family would not help this estimator: lead with the working ones
        return EstimatorError(
            f"{est} cannot handle a {describe(base)} sample site: {why}. Use {alternatives} "
            f"{'at this site' if site_level else 'for the program'}; for je.stochastic_ad() "
            f"and the other estimators that need jaxestim's coupling, {hint}."
        )
    return EstimatorError(
        f"{est} cannot handle a {describe(base)} sample site: {why}. "
        f"{hint[0].upper()}{hint[1:]}{override}."
    )


_COUPLING = (
    "it needs jaxestim's inverse-CDF coupling (dist.uniforms / dist.icdf) or the structure of "
    "a jaxestim family, which a foreign distribution does not provide"
)


def check_foreign_site(handler: Any, dist: ForeignDistribution, estimator: Any) -> None:
    """Raise :class:`EstimatorError` unless the active estimator is valid at ``dist``.

    An allow-list of (handler, estimator) pairs known to need only ``sample`` / ``rsample`` /
    ``log_prob``; anything else (including estimators added later) raises.
    """
    from jaxestim._handlers import WholeProgramHandler
    from jaxestim._surrogate import SurrogateHandler
    from jaxestim.estimators.auto import Auto
    from jaxestim.estimators.finite_difference import FiniteDifference
    from jaxestim.estimators.forward import ComplexStepHandler, _PathwiseOnlyHandler
    from jaxestim.estimators.pathwise import Pathwise
    from jaxestim.estimators.score_function import ScoreFunction

    if isinstance(handler, SurrogateHandler):
        est = handler.estimator if estimator is None else estimator
        if type(est) is Pathwise and not dist.is_reparameterized:
            raise foreign_error(
                "je.pathwise()",
                dist,
                "its samples are discrete or not reparameterized (the pathwise gradient would "
                "be silently zero)",
                site_level=True,
            )
        if type(est) in (Pathwise, ScoreFunction, Auto):
            return
        raise foreign_error(f"je.{est.name}()", dist, _COUPLING, site_level=est.site_level)
    if type(handler) is _PathwiseOnlyHandler:
        if not dist.is_reparameterized:
            raise foreign_error(
                getattr(handler, "label", f"je.{handler.name}()"),
                dist,
                "it differentiates the program with forward-mode autodiff, and a discrete or "
                "non-reparameterized sample has no derivative",
                site_level=False,
            )
        return
    if type(handler) is ComplexStepHandler:
        leaves = jax.tree_util.tree_leaves(dist.base)
        if any(jnp.issubdtype(jnp.result_type(v), jnp.complexfloating) for v in leaves):
            raise foreign_error(
                'je.finite_difference(scheme="complex")',
                dist,
                "its parameters depend on theta, and only jaxestim's Normal/Laplace/Logistic/"
                "Cauchy sites sample with the complex step's complex parameters",
                site_level=False,
            )
        return
    if type(handler) is WholeProgramHandler:
        est = getattr(handler, "estimator", None)
        if isinstance(est, FiniteDifference):
            # scheme="complex": this is its real run; ComplexStepHandler checks the others
            if est.scheme == "complex" or not est.common_random_numbers or dist._coupled:
                return
            why = (
                "its sampler (rejection sampling) is not continuous in the parameters for a "
                "fixed key, so the common-random-number difference is biased and its variance "
                "grows like 1/step (common_random_numbers=False also works, with variance "
                "growing like 1/step^2)"
                if dist.is_reparameterized
                else "common random numbers need jaxestim's monotone inverse-CDF coupling at "
                "discrete (and non-reparameterized) sites; without it the variance grows like "
                "1/step^2"
            )
            raise foreign_error(
                "je.finite_difference(common_random_numbers=True)", dist, why, site_level=False
            )
    name = getattr(handler, "name", None) or "this estimator"
    raise foreign_error(
        f"je.{name}()" if name.isidentifier() else name, dist, _COUPLING, site_level=False
    )
