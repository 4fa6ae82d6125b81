r"""Forward-mode whole-program estimators: the randomized forward gradient and the complex step.

* :class:`ForwardGradient` -- Baydin, Pearlmutter, Syme, Wood & Torr (2022), "Gradients
  without Backpropagation" (arXiv:2202.08587): ``g_hat = mean_d <grad f, Z_d> Z_d`` with
  ``Z_d ~ N(0, I)``, one ``jax.jvp`` per direction and no reverse pass.
* the complex step of :func:`jaxestim.finite_difference` (``scheme="complex"``): Squire &
  Trapp (1998), "Using complex variables to estimate derivatives of real functions", SIAM
  Review 40(1); Martins, Sturdza & Alonso (2003), "The complex-step derivative
  approximation", ACM TOMS 29(3). ``Im f(theta + i h v) / h = <grad f, v> + O(h^2)`` for a
  real-analytic ``f``, with no subtraction, so ``h = 1e-20`` gives the derivative to machine
  precision.
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.extend
import jax.numpy as jnp

from jaxestim._errors import EstimatorError
from jaxestim._estimator import Estimator, site_error, without_derivative
from jaxestim._handlers import WholeProgramHandler, reject_override
from jaxestim._util import fold_in_str, pytree_dataclass, static_field
from jaxestim.distributions import Cauchy, Laplace, Logistic, Normal
from jaxestim.distributions import _base as _dist_base
from jaxestim.estimators._directions import gradient_from_directional

# Families whose reparameterized sample is ``loc + scale * eps`` with parameter-free real noise
# ``eps``: affine (hence complex-analytic) in the parameters, so they accept complex ``loc`` /
# ``scale`` with the same noise as a real run (common random numbers).
COMPLEX_SITES = (Normal, Laplace, Logistic, Cauchy)


class _PathwiseOnlyHandler(WholeProgramHandler):
    """Reparameterized sampling at every site; discrete / non-reparameterized sites raise
    when differentiated in parameters that depend on theta (see
    :func:`jaxestim._estimator.without_derivative`).

    ``label`` and ``suggest`` word the error (defaults: :func:`jaxestim.forward_gradient`'s).
    """

    def __init__(
        self,
        name: str,
        label: str = "je.forward_gradient()",
        suggest: str = "je.stochastic_ad() (forward mode, directions='random' for the same "
        "random-direction estimator) or je.score_function()",
    ):
        super().__init__(name)
        self.label, self.suggest = label, suggest

    def sample(self, key, dist, sample_shape, estimator, mask):
        reject_override(self.name, estimator)
        if dist.is_discrete or not dist.is_reparameterized:
            error = site_error(
                self.label,
                dist,
                "it differentiates the program with forward-mode autodiff (pathwise at each "
                "site), and a discrete sample has no derivative (the estimate would silently "
                "miss its contribution)",
                self.suggest,
            )
            return without_derivative(dist.sample(key, sample_shape), dist, error)
        return dist.rsample(key, sample_shape)


def _has_complex_params(dist) -> bool:
    for name in dist._param_names:
        value = getattr(dist, f"_{name}", None)
        if value is not None and jnp.issubdtype(value.dtype, jnp.complexfloating):
            return True
    return False


class ComplexStepHandler(WholeProgramHandler):
    """Plain sampling; sites with complex parameters sample ``loc + scale * eps`` (real eps)."""

    def sample(self, key, dist, sample_shape, estimator, mask):
        reject_override(self.name, estimator)
        if not _has_complex_params(dist):
            return dist.sample(key, sample_shape)
        if type(dist) not in COMPLEX_SITES:
            why = (
                "its samples are discrete, so the program is not complex-analytic in the parameters"
                if dist.is_discrete
                else "its sampler is not affine in the parameters, so it cannot take the "
                "complex parameters of the complex step"
            )
            raise site_error(
                'je.finite_difference(scheme="complex")',
                dist,
                why + " (complex-step sites: " + ", ".join(c.__name__ for c in COMPLEX_SITES) + ")",
                'je.pathwise() or je.finite_difference(scheme="central")',
            )
        _dist_base._validate_key(key)
        if isinstance(key, _dist_base.RandomStream) and not dist._stream_native:
            key = key.jax_key()
        shape = dist._full_shape(sample_shape)
        loc, scale = dist._loc, dist._scale
        real = jnp.finfo(loc.dtype).dtype
        eps = dist._standard(key, shape, real)  # the real run's noise (same key)
        x = loc + scale * eps
        # validity of the real parts (the range checks compare, which complex numbers cannot)
        with jax.named_scope(_SCOPE):  # exempt from the non-analytic-operation check
            valid = type(dist)(jnp.real(loc), jnp.real(scale))._params_valid()
        return jnp.where(valid, x, jnp.asarray(jnp.nan, x.dtype))


_SCOPE = "jaxestim_complex_step_site"
# primitives that are not complex-analytic (JAX orders complex numbers lexicographically, so
# comparisons do not raise: they would silently give a wrong complex step at ties and, with
# real/imag/abs/conj, a wrong one everywhere)
_NON_ANALYTIC = frozenset(
    "eq ne gt ge lt le max min clamp sign abs real imag conj floor ceil round "
    "reduce_max reduce_min argmax argmin cummax cummin sort".split()
)


def _is_complex(v: Any) -> bool:
    aval = getattr(v, "aval", None)
    dtype = getattr(aval, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.complexfloating)


def _sub_jaxprs(value: Any):
    if isinstance(value, jax.extend.core.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jax.extend.core.Jaxpr):
        yield value
    elif isinstance(value, tuple | list):
        for v in value:
            yield from _sub_jaxprs(v)


def _non_analytic_ops(jaxpr: Any, found: set[str]) -> set[str]:
    """Names of non-complex-analytic primitives applied to complex values in ``jaxpr``."""
    for eqn in jaxpr.eqns:
        if _SCOPE in str(eqn.source_info.name_stack):
            continue
        name = eqn.primitive.name
        if any(_is_complex(v) for v in eqn.invars):
            if name in _NON_ANALYTIC:
                found.add(name)
            elif name == "convert_element_type" and not jnp.issubdtype(
                eqn.params["new_dtype"], jnp.complexfloating
            ):
                found.add("convert_element_type (complex -> real)")
        for value in eqn.params.values():
            for sub in _sub_jaxprs(value):
                _non_analytic_ops(sub, found)
    return found


_NOT_ANALYTIC = (
    'je.finite_difference(scheme="complex") runs the program on complex parameters '
    "theta + i h v, which needs every operation between the parameters and the output to be "
    "complex-analytic; the program raised a TypeError on complex inputs ({err}). Comparisons, "
    "jnp.maximum/minimum/abs/where on parameter-dependent values, integer casts and discrete "
    "sample sites are not. Use je.pathwise() (reparameterizable programs) or "
    'je.finite_difference(scheme="central") instead.'
)


def complex_step_directional(prog, key, theta, h, dirs) -> jax.Array:
    """``Im prog(key, theta + i h v)[0] / h`` for each row ``v`` of ``dirs`` (one vmap)."""
    cdtype = jnp.result_type(theta.dtype, jnp.complex64)
    ctheta = theta.astype(cdtype)
    step = (h * dirs).astype(cdtype) * 1j
    token = _dist_base._COMPLEX_PARAMS.set(True)
    one = lambda s: prog(key, ctheta + s)[0]
    try:
        bad = _non_analytic_ops(jax.make_jaxpr(one)(step[0]).jaxpr, set())
        vals = jax.vmap(one)(step)
    except TypeError as e:
        raise EstimatorError(_NOT_ANALYTIC.format(err=e)) from e
    finally:
        _dist_base._COMPLEX_PARAMS.reset(token)
    if bad:
        raise EstimatorError(
            _NOT_ANALYTIC.replace(
                "raised a TypeError on complex inputs ({err})", "applies {err}"
            ).format(err="non-analytic operations to complex values: " + ", ".join(sorted(bad)))
        )
    if not jnp.issubdtype(vals.dtype, jnp.complexfloating):
        raise EstimatorError(
            'je.finite_difference(scheme="complex"): the program returned a real value of dtype '
            f"{vals.dtype} from complex parameters, i.e. it discarded the imaginary part "
            "(jnp.real, an astype to a real dtype, ...), so the complex step would be silently "
            'zero. Use je.pathwise() or je.finite_difference(scheme="central") instead.'
        )
    return jnp.imag(vals).astype(theta.dtype) / h


@pytree_dataclass
class ForwardGradient(Estimator):
    r"""Randomized forward-mode gradient ("forward gradient"), Baydin et al. (2022).

    For ``k = num_directions`` standard Gaussian directions ``Z_1..Z_k ~ N(0, I_P)`` (drawn
    from the sample's key) the estimate is

        g_hat = (1/k) sum_d <grad_theta f(theta; eps), Z_d> Z_d,

    each directional derivative ``<grad f, Z_d>`` coming from one ``jax.jvp`` of the program
    (pathwise at its continuous, reparameterizable sites; the same noise ``eps`` for every
    direction). Unbiased since ``E[Z Z^T] = I``. Variance: for a fixed gradient ``g`` (no
    program noise) ``Cov[g_hat] = (||g||^2 I + g g^T) / k`` (Gaussian fourth moments:
    ``E[(g.Z)^2 Z Z^T] = ||g||^2 I + 2 g g^T``), so per coordinate ``(||g||^2 + g_i^2) / k``;
    program noise adds the pathwise estimator's covariance on top. The ``P``-fold variance
    over the pathwise estimator is the price of needing no reverse pass (memory ``O(1)`` in
    the program length beyond the forward run). Cost per sample: ``k`` forward-mode runs
    (about ``2-3`` program evaluations each) plus one plain run for the value.
    At a discrete sample site whose parameters depend on ``theta`` it raises
    :class:`EstimatorError` (use :func:`jaxestim.stochastic_ad` in forward mode or
    :func:`jaxestim.score_function`); one whose parameters do not is fine, with a zero
    derivative contribution (the rule of :class:`jaxestim.Pathwise`).
    """

    num_directions: int = static_field(default=1)
    site_level: ClassVar[bool] = False
    name: ClassVar[str] = "forward_gradient"

    def __post_init__(self) -> None:
        k = self.num_directions
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(
                f"forward_gradient: `num_directions` must be a positive int, got {k!r}"
            )

    def check_handler(self) -> _PathwiseOnlyHandler:
        """The sample-site handler of one run (reparameterized sites; theta-dependent
        discrete ones raise)."""
        return _PathwiseOnlyHandler(self.name)

    def per_sample(self, call, key, theta):
        """``(value, gradient estimate, aux)`` for one sample; ``call(key, theta_flat)``."""
        dirs = jax.random.normal(
            fold_in_str(key, "forward_gradient"), (self.num_directions, theta.size), theta.dtype
        )

        def prog(th: jax.Array) -> tuple[jax.Array, Any]:
            with _PathwiseOnlyHandler(self.name):
                return call(key, th)

        f0, aux = prog(theta)
        d = jax.vmap(lambda v: jax.jvp(lambda th: prog(th)[0], (theta,), (v,))[1])(dirs)
        return f0, gradient_from_directional(d, dirs, self.num_directions), aux


def forward_gradient(num_directions: int = 1) -> ForwardGradient:
    """Randomized forward-mode gradient with ``num_directions`` Gaussian directions per sample
    (see :class:`ForwardGradient`)."""
    return ForwardGradient(num_directions=num_directions)
