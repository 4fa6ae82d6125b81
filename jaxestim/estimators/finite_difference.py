"""Finite differences of the whole program, with or without common random numbers."""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxestim._errors import EstimatorError
from jaxestim._estimator import Estimator
from jaxestim._handlers import WholeProgramHandler
from jaxestim._util import check_positive, fold_in_str, pytree_dataclass, static_field
from jaxestim.estimators._directions import (
    check_directions,
    direction_matrix,
    gradient_from_directional,
)

_SCHEMES = ("central", "forward", "backward", "complex")


@pytree_dataclass
class FiniteDifference(Estimator):
    r"""Finite differences of the program, optionally with common random numbers.

    For a direction ``v`` and step ``h`` the directional derivative is estimated by
    ``(f(theta + h v; key) - f(theta - h v; key)) / (2h)`` (``"central"``, bias
    ``O(h^2)``) or the one-sided ``"forward"``/``"backward"`` schemes (bias ``O(h)``).
    With ``common_random_numbers=True`` every evaluation reuses the same key, and every site
    draws with a sampler that, for that key, is continuous in the site's parameters
    (:meth:`~jaxestim.distributions.ContinuousDistribution.coupled_sample`): the family's own
    sampler where it is a smooth transform of parameter-free noise (location-scale families,
    ``Uniform``, ``Exponential``, ``MultivariateNormal``, bijector transforms of them),
    inversion ``F^{-1}(u)`` for ``Gamma`` and the ``StudentT``, ``Beta`` and ``Dirichlet``
    built on it (:meth:`~jaxestim.distributions.Gamma.icdf`; their default rejection samplers
    jump as a shape parameter moves, which would bias the difference and make its variance
    grow like ``1/h``), and the monotone inverse CDF of discrete families. So the randomness
    cancels as far as the program allows: for a program that is, *for fixed random numbers*,
    continuous and (almost everywhere) differentiable in ``theta`` with a square-integrable
    derivative, the variance stays bounded as ``h -> 0``; where it jumps (discrete sites,
    comparisons of draws with thresholds), the difference is non-zero only when a uniform falls
    in a window of width ``O(h)``, where it is ``O(1/h)``, so the variance grows like ``1/h``.
    With independent keys the variance grows like ``1/h^2`` in both cases. Under common random
    numbers the draws of ``Gamma``/``StudentT``/``Beta``/``Dirichlet`` sites differ from other
    estimators' for the same key (same distribution), and each gamma draw costs several times
    a rejection draw (nine incomplete gamma functions). A site whose sampler is not known to
    be continuous in its parameters (a ``ContinuousDistribution`` subclass with ``_coupled =
    False``; numpyro's rejection-sampled families) raises :class:`EstimatorError` at trace
    time, naming the distribution.
    ``scheme="complex"`` is the complex step (Squire & Trapp 1998; Martins et al. 2003):
    ``Im f(theta + i h v; key) / h = D_v f + O(h^2)`` with no subtraction, hence no
    cancellation: with ``step=1e-20`` (its default) it is the pathwise derivative to machine
    precision (same key, so the same noise), at ``P`` (or ``num_directions``) complex program
    runs plus one real run per sample. It needs a real-analytic program: only sites of
    ``Normal``/``Laplace``/``Logistic``/``Cauchy`` (sample ``loc + scale * eps``, affine in the
    parameters) may have parameter-dependent parameters; other sites, and programs that raise a
    ``TypeError`` on complex values (comparisons, ...), raise :class:`EstimatorError`.
    ``directions="coordinates"`` perturbs each of the ``P`` parameters (``2P`` program
    runs for central differences); ``directions="spsa"`` uses ``num_directions`` random
    Rademacher vectors ``v`` and returns ``mean_d v_d * D_{v_d} f`` (Spall's SPSA),
    unbiased up to the scheme's ``O(h)``/``O(h^2)`` bias since ``E[v v^T] = I``.
    Works for any program (discrete, non-differentiable), needs no autodiff, is biased,
    and costs ``O(P)`` or ``O(num_directions)`` program runs per sample.
    """

    step: Any = None
    scheme: str = static_field(default="central")
    common_random_numbers: bool = static_field(default=True)
    directions: str = static_field(default="coordinates")
    num_directions: int | None = static_field(default=None)
    site_level: ClassVar[bool] = False
    name: ClassVar[str] = "finite_difference"
    perturbs_parameters: ClassVar[bool] = True

    @property
    def differences_only(self) -> bool:
        return self.scheme == "central"

    def __post_init__(self) -> None:
        if self.step is None:
            # 1e-20 for the complex step (no cancellation: the smaller the better, down to
            # float underflow), 1e-2 for the differences (a bias/variance compromise)
            object.__setattr__(self, "step", 1e-20 if self.scheme == "complex" else 1e-2)
        check_positive("finite_difference", "step", self.step)
        if self.scheme not in _SCHEMES:
            raise ValueError(
                f"finite_difference: unknown `scheme` {self.scheme!r}; expected one of {_SCHEMES}"
            )
        check_directions("finite_difference", self.directions, "spsa", self.num_directions)

    def site_sample(self, key: Any, dist: Any, sample_shape: tuple[int, ...]) -> jax.Array:
        """A site's draw in the program runs: coupled under common random numbers."""
        if not self.common_random_numbers or self.scheme == "complex":
            return dist.sample(key, sample_shape)
        if not dist._coupled:
            raise EstimatorError(
                f"je.finite_difference(common_random_numbers=True) cannot difference a {dist!r} "
                "sample site: its sampler is not known to be continuous in its parameters for "
                "a fixed key (a rejection sampler jumps as a parameter moves), so the "
                "difference would be biased with a variance growing like 1/step. Use "
                "je.finite_difference(common_random_numbers=False), je.pathwise() or "
                "je.score_function(), or give the distribution a coupled sampler "
                "(`_coupled = True` with a `_coupled_rsample` continuous in the parameters)"
            )
        return dist.coupled_sample(key, sample_shape)

    def per_sample(self, call, key, theta):
        """``(value, gradient estimate, aux)`` for one sample; ``call(key, theta_flat)``."""
        h = jnp.asarray(self.step, theta.dtype)
        dirs = direction_matrix(
            theta, self.num_directions, fold_in_str(key, "spsa"), jax.random.rademacher
        )
        n = dirs.shape[0]

        def prog(k: jax.Array, th: jax.Array) -> tuple[jax.Array, Any]:
            with WholeProgramHandler(self.name, self):
                return call(k, th)

        if self.scheme == "complex":
            # complex step: no difference, so no cancellation; the key is shared (common
            # random numbers) whatever common_random_numbers says
            from jaxestim.estimators.forward import ComplexStepHandler, complex_step_directional

            def cprog(k: jax.Array, th: jax.Array) -> tuple[jax.Array, Any]:
                with ComplexStepHandler(self.name):
                    return call(k, th)

            d = complex_step_directional(cprog, key, theta, h, dirs)
            f0, aux = prog(key, theta)
            return f0, gradient_from_directional(d, dirs, self.num_directions), aux

        if self.common_random_numbers:
            # Common random numbers: the key is closed over, not batched, so under jax.vmap
            # every random draw (a function of the key alone) stays unbatched: its bits are
            # generated once and shared by all perturbed runs instead of once per run. All
            # runs of a difference (the unperturbed one for one-sided schemes) share one
            # vmap, so they compile to the same arithmetic and f(theta + h v) - f(theta)
            # is exactly 0 where nothing changes.
            if self.scheme == "central":
                vals = jax.vmap(lambda s: prog(key, theta + s)[0])(
                    jnp.concatenate([h * dirs, -h * dirs])
                )
                f0, aux = prog(key, theta)
                d = (vals[:n] - vals[n:]) / (2 * h)
            else:
                sign = 1.0 if self.scheme == "forward" else -1.0
                steps = jnp.concatenate([jnp.zeros_like(dirs[:1]), sign * h * dirs])
                vals, auxs = jax.vmap(lambda s: prog(key, theta + s))(steps)
                f0, aux = vals[0], jax.tree_util.tree_map(lambda a: a[0], auxs)
                d = sign * (vals[1:] - f0) / h
            return f0, gradient_from_directional(d, dirs, self.num_directions), aux

        f0, aux = prog(key, theta)

        def run(sign: float, offset: int) -> jax.Array:
            keys = jax.vmap(lambda j: jax.random.fold_in(key, j))(jnp.arange(n) + offset)
            return jax.vmap(lambda k, v: prog(k, theta + sign * h * v)[0])(keys, dirs)

        if self.scheme == "central":
            d = (run(1.0, 1) - run(-1.0, 1 + n)) / (2 * h)
        elif self.scheme == "forward":
            d = (run(1.0, 1) - f0) / h
        else:
            d = (f0 - run(-1.0, 1)) / h
        return f0, gradient_from_directional(d, dirs, self.num_directions), aux


def finite_difference(
    step: Any = None,
    scheme: str = "central",
    common_random_numbers: bool = True,
    directions: str = "coordinates",
    num_directions: int | None = None,
) -> FiniteDifference:
    """Finite differences with optional common random numbers (see :class:`FiniteDifference`).

    ``step=None`` means ``1e-2`` for the ``"central"``/``"forward"``/``"backward"`` schemes and
    ``1e-20`` for ``scheme="complex"``.
    """
    return FiniteDifference(
        step=step,
        scheme=scheme,
        common_random_numbers=common_random_numbers,
        directions=directions,
        num_directions=num_directions,
    )
