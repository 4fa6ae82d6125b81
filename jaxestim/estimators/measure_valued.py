r"""Measure-valued derivatives (weak derivatives) of the whole program.

Pflug (1996), "Optimization of Stochastic Models: The Interface Between Simulation and
Optimization", Kluwer; Mohamed, Rosca, Figurnov & Mnih (2020), "Monte Carlo Gradient
Estimation in Machine Learning", JMLR 21(132), section 6 (arXiv:1906.10652).

Decomposition. The derivative of a density in one scalar parameter ``phi`` is written as a
difference of two probability densities, ``d p(x; phi) / d phi = c (p+(x) - p-(x))``, so
``d/dphi E_p[f] = c (E_{p+}[f] - E_{p-}[f])``. The families and their (standard)
decompositions (verified in the tests against closed forms), with the *coupled* joint draws
of ``(x+, x-)`` used by ``coupling=True``:

* Normal ``loc`` mu: ``c = 1/(sigma sqrt(2 pi))``, ``x+- = mu +- sigma R`` with
  ``R ~ Rayleigh(1)`` (Weibull, shape 2, scale sqrt 2); coupled: the same ``R``.
* Normal ``scale`` sigma: ``c = 1/sigma``, ``x+ = mu + sigma M`` with ``M`` double-sided
  Maxwell (``|M| ~ chi_3``, random sign), ``x- = mu + sigma Z``, ``Z ~ N(0, 1)``; coupled:
  ``Z = M U``, ``U ~ Uniform(0, 1)`` (``M U`` is exactly ``N(0, 1)``).
* Exponential rate l: ``c = 1/l``, ``p+ = Exp(l)``, ``p- = Gamma(2, l)``; coupled:
  ``x- = x+ + E'/l``.
* Gamma ``rate`` b (concentration a): ``c = a/b``, ``p+ = Gamma(a, b)``,
  ``p- = Gamma(a + 1, b)``; coupled: ``x- = x+ + E/b``.
* Poisson rate l: ``c = 1``, ``x+ = X + 1``, ``x- = X``, ``X ~ Poisson(l)``; coupled: the
  same ``X`` (uncoupled: independent ``X``'s).
* Bernoulli ``probs`` p: ``c = 1``, ``x+ = 1``, ``x- = 0`` (``logits``-parameterized sites:
  the chain rule through ``dp/dtheta``).

``coupling=False`` draws ``x+`` and ``x-`` independently. Both are unbiased; which has the
lower variance depends on ``f`` and the parameter. Exact per-sample variances for
``x ~ N(1, 1)``, ``f = (x - 3)^2`` (checked in ``tests/test_measure_valued.py``): scale,
20 coupled vs 72 uncoupled; loc, ``64/pi - 16 = 4.372`` coupled vs
``36/pi - 8 = 3.459`` uncoupled (with the same ``R`` the linear part ``4 (mu - 3) R`` of
``f(x+) - f(x-)`` doubles its variance, while the quadratic parts cancel). Gamma's
``concentration`` has no standard decomposition: if it depends on the parameters (with
earlier samples held fixed, decided structurally from the program's jaxpr),
:class:`jaxestim.EstimatorError` names ``je.pathwise()`` (implicit reparameterization) and
``je.score_function()``. Every other family raises the same way.

Several sites. The joint density is a product of conditionals; by the product rule each
site's term holds the other sites' conditional laws fixed: the program is re-run with that
site's element ``e`` replaced by ``x+`` (resp. ``x-``) and every other draw from the same
keys (common random numbers downstream; a downstream site whose parameters changed draws
from its new conditional law with the same noise). With ``phi_{s,e}`` the parameter of
element ``e`` of site ``s`` as a function of ``theta`` *with the earlier samples fixed*::

    grad = d_theta f(x; theta)|_x fixed
           + sum_{s, e} c_{s,e} (f(x+_{s,e}) - f(x-_{s,e})) d phi_{s,e} / d theta,

computed as one vector-Jacobian product of the recorded run (samples under
``stop_gradient``) with cotangent ``1`` for ``f`` and ``stop_gradient(c (f+ - f-))`` for
the recorded ``phi``. Every element of ``sample_shape + batch_shape`` is its own scalar
distribution with the broadcast parameter (the chain rule sums over the broadcast).

Cost per sample: one recorded run + one reverse pass for the direct dependence of ``f`` on
``theta``, plus 2 program evaluations per scalar parameter element per sample (vmapped over
the perturbations). Parameters that do not depend on ``theta`` (structurally, with the
samples held fixed) are skipped, e.g. a Normal with a constant scale costs 2 runs per
element, not 4.

Control flow. Sites inside ``je.scan`` / ``je.fori_loop`` / ``je.while_loop`` bodies and
``je.cond`` / ``je.switch`` branches, and inside plain JAX control flow or transformations
within the program (``jax.lax`` loops, ``jax.vmap``, ...), raise
:class:`jaxestim.EstimatorError` at trace time (not supported: every draw there would need
its own replay), naming ``je.pathwise()``, ``je.score_function()`` and
``je.stochastic_ad()``. Loops and branches without sites are fine (``je.while_loop`` needs no
``max_iterations`` then). ``mask=False`` elements contribute no term. Per-site
``estimator=`` overrides are rejected (whole-program estimator).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax._src.interpreters import partial_eval as _pe
from jax.extend.core import ClosedJaxpr

from jaxestim._errors import EstimatorError
from jaxestim._estimator import Estimator
from jaxestim._handlers import Handler, reject_override
from jaxestim._util import pytree_dataclass, static_field
from jaxestim.distributions import Bernoulli, Exponential, Gamma, Normal, Poisson

# the decomposed parameters of each supported family (exact types: subclasses differ)
_KINDS: dict[type, tuple[str, ...]] = {
    Normal: ("loc", "scale"),
    Exponential: ("rate",),
    Gamma: ("rate",),
    Poisson: ("rate",),
    Bernoulli: ("probs",),
}

_ALTERNATIVES = (
    "je.pathwise() (reparameterizable continuous sites), je.score_function() (any site) or "
    "je.stochastic_ad() (discrete sites)"
)
_TAG = 0x6D7664  # "mvd": the decomposition draws' key, folded into the site's key


def _family_kinds(name: str, dist: Any) -> tuple[str, ...]:
    kinds = _KINDS.get(type(dist))
    if kinds is None:
        raise EstimatorError(
            f"je.{name}() has no measure-valued decomposition for a {type(dist).__name__} "
            "sample site (supported: Normal loc/scale, Exponential rate, Gamma rate, Poisson "
            f"rate, Bernoulli probs/logits). Use {_ALTERNATIVES} for this program."
        )
    return kinds


def _param(dist: Any, kind: str) -> jax.Array:
    return dist.probs if kind == "probs" else getattr(dist, kind)


def _weight(dist: Any, kind: str) -> jax.Array:
    """The constant ``c`` of ``dp/dphi = c (p+ - p-)``."""
    if isinstance(dist, Normal):
        s = dist.scale
        return 1.0 / (s * math.sqrt(2 * math.pi)) if kind == "loc" else 1.0 / s
    if isinstance(dist, Gamma):
        return dist.concentration / dist.rate
    if isinstance(dist, Exponential):
        return 1.0 / dist.rate
    return jnp.ones((), dist.dtype)


def _alternatives(dist: Any, kind: str, key: Any, shape: tuple, coupled: bool):
    """``(x+, x-)`` for every element of the site (full shape), from the site's key."""
    k1, k2, k3, k4 = jax.random.split(jax.random.fold_in(key, _TAG), 4)
    dt = dist.dtype
    if isinstance(dist, Normal):
        mu, s = dist.loc, dist.scale
        if kind == "loc":
            rayleigh = lambda k: jnp.sqrt(2.0 * jax.random.exponential(k, shape, dt))
            r_plus = rayleigh(k1)
            r_minus = r_plus if coupled else rayleigh(k2)
            return mu + s * r_plus, mu - s * r_minus
        chi3 = jnp.sqrt(jnp.sum(jnp.square(jax.random.normal(k1, (3, *shape), dt)), axis=0))
        m = chi3 * jax.random.rademacher(k2, shape, dt)
        if coupled:
            z = m * jax.random.uniform(k3, shape, dt)
        else:
            z = jax.random.normal(k4, shape, dt)
        return mu + s * m, mu + s * z
    if isinstance(dist, Bernoulli):
        return jnp.ones(shape, dt), jnp.zeros(shape, dt)
    if isinstance(dist, Poisson):
        x = dist.sample(k1, shape)
        return x + 1, (x if coupled else dist.sample(k2, shape))
    # Exponential (a = 1) and Gamma rate: Gamma(a, b) / Gamma(a + 1, b)
    rate = dist.rate
    if isinstance(dist, Gamma):
        a = jnp.broadcast_to(dist.concentration, dist.batch_shape)
        plus = jax.random.gamma(k1, a, shape, dt) / rate
    else:
        a = jnp.ones((), dt)
        plus = jax.random.exponential(k1, shape, dt) / rate
    if coupled:
        return plus, plus + jax.random.exponential(k2, shape, dt) / rate
    return plus, jax.random.gamma(k3, a + 1, shape, dt) / rate


def _control_flow_error(name: str) -> EstimatorError:
    return EstimatorError(
        f"je.{name}() does not support sample sites inside je.scan / je.fori_loop / "
        "je.while_loop bodies, je.cond / je.switch branches, or plain JAX control flow or "
        "transformations within the program (jax.lax loops and branches, jax.vmap, jax.jit, "
        "jax.checkpoint): every draw there would need its own replay. Use "
        f"{_ALTERNATIVES} for this program, or unroll the loop in Python."
    )


class _NoSites(Handler):
    """A loop body's or branch's handler: sites there are not supported."""

    needs_bounded_loops = False

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def sample(self, key, dist, sample_shape, estimator, mask):
        raise _control_flow_error(self.name)


class _Base(Handler):
    """Shared by the recorded run and the replays: site counting, family checks."""

    recording = True  # loops/branches get a child (which rejects sites)
    needs_bounded_loops = False  # a je.while_loop without sites may run unbounded

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.count = 0

    def loop_child(self, state):
        return _NoSites(self.name)

    def branch_child(self, state, index, layout):
        return _NoSites(self.name)

    def _site(self, dist, estimator) -> tuple[int, tuple[str, ...]]:
        reject_override(self.name, estimator)
        kinds = _family_kinds(self.name, dist)
        if not self.in_own_trace():
            raise _control_flow_error(self.name)
        i = self.count
        self.count += 1
        return i, kinds


class _Record(_Base):
    """The recorded run: plain samples (under ``stop_gradient``), or ``given`` ones (the
    dependence analysis); records each site's parameters, weights, masks, shapes."""

    def __init__(self, name: str, given: list | None = None) -> None:
        super().__init__(name)
        self.given = given
        self.sites: list[dict[str, Any]] = []

    def sample(self, key, dist, sample_shape, estimator, mask):
        i, kinds = self._site(dist, estimator)
        full = tuple(sample_shape) + tuple(dist.batch_shape)
        if self.given is not None:
            x = self.given[i]
        else:
            x = jax.lax.stop_gradient(dist.sample(key, sample_shape))
        flat = lambda v: jnp.reshape(jnp.broadcast_to(v, full), (-1,))
        m = jnp.ones(full, bool) if mask is None else mask
        self.sites.append(
            {
                "kinds": kinds,
                "size": int(np.prod(full, dtype=int)),
                "x": x,
                "phi": [flat(_param(dist, k)) for k in kinds],
                "c": [jax.lax.stop_gradient(flat(_weight(dist, k))) for k in kinds],
                "m": flat(m),
                "conc": flat(dist.concentration) if isinstance(dist, Gamma) else None,
            }
        )
        return x


class _Replay(_Base):
    """A replay: site ``site``'s element ``elem`` is replaced by ``x+`` (``sign > 0``) or
    ``x-`` of its parameter ``kind``; every other draw is the recorded run's (same keys)."""

    def __init__(self, name: str, coupled: bool, row: tuple, active: dict) -> None:
        super().__init__(name)
        self.coupled = coupled
        self.row = row
        self.active = active  # site -> the kinds (indices) perturbed in some replay

    def sample(self, key, dist, sample_shape, estimator, mask):
        i, kinds = self._site(dist, estimator)
        site, kind, elem, sign = self.row
        x = dist.sample(key, sample_shape)
        full = x.shape
        alt = jnp.zeros(full, x.dtype)
        if i not in self.active:
            return x
        for j in self.active[i]:
            k = kinds[j]
            plus, minus = _alternatives(dist, k, key, full, self.coupled)
            pick = jnp.where(sign > 0, plus, minus).astype(x.dtype)
            alt = jnp.where(kind == j, pick, alt)
        hit = (site == i) & (jnp.arange(x.size).reshape(full) == elem)
        return jnp.where(hit, alt, x)


def _depends_on_last(closed: Any) -> list[bool]:
    """Per output of ``closed`` (a ClosedJaxpr): whether it depends on the last input
    (forward dependence by partial evaluation; backward dead-code elimination per output as
    a conservative fallback, see :func:`jaxestim.estimators.arm._depends_on_taint`)."""
    jaxpr = _pe.convert_constvars_jaxpr(closed.jaxpr)
    n_in, n_out = len(jaxpr.invars), len(jaxpr.outvars)
    try:
        unknowns = [False] * (n_in - 1) + [True]
        _, _, out_unknowns, _ = _pe.partial_eval_jaxpr_nounits(
            ClosedJaxpr(jaxpr, ()), unknowns, False
        )
        return [bool(u) for u in out_unknowns]
    except Exception:  # pragma: no cover - depends on the primitives in the program
        out = []
        for j in range(n_out):
            _, used_inputs = _pe.dce_jaxpr(jaxpr, [i == j for i in range(n_out)])
            out.append(bool(used_inputs[-1]))
        return out


@pytree_dataclass
class MeasureValued(Estimator):
    r"""Measure-valued derivatives (Pflug 1996; Mohamed et al. 2020, section 6).

    For each site element with parameter ``phi`` (with the earlier samples fixed),
    ``d p / d phi = c (p+ - p-)`` and the program is re-run with that element replaced by
    ``x+ ~ p+`` and by ``x- ~ p-`` (every other draw from the same keys)::

        grad = d_theta f|_samples fixed + sum_{site, e} c_e (f(x+_e) - f(x-_e)) d phi_e/d theta.

    Supported sites: Normal (``loc``: Rayleigh pair, ``c = 1/(sigma sqrt(2 pi))``;
    ``scale``: double-sided Maxwell vs Normal, ``c = 1/sigma``), Exponential (rate:
    ``Exp`` vs ``Gamma(2)``, ``c = 1/rate``), Gamma (rate: ``Gamma(a)`` vs ``Gamma(a + 1)``,
    ``c = a/rate``; a parameter-dependent concentration raises), Poisson (``X + 1`` vs
    ``X``, ``c = 1``), Bernoulli (``1`` vs ``0``, ``c = 1``, logits by the chain rule).
    Other families, and sites inside ``je.scan`` / ``je.fori_loop`` / ``je.while_loop`` /
    ``je.cond``, raise :class:`jaxestim.EstimatorError` at trace time naming
    ``je.pathwise()`` / ``je.score_function()`` / ``je.stochastic_ad()``.

    Bias / variance: unbiased (no relaxation; ``f`` need not be differentiable in the
    samples, only in ``theta`` directly). The variance of each term is bounded by
    ``c^2 Var(f(x+) - f(x-))``, small when the pair is coupled and ``f`` smooth
    (``coupling=True``, the default); ``coupling=False`` draws ``x+`` and ``x-``
    independently; for ``x ~ N(1, 1)``, ``f = (x - 3)^2`` the exact per-sample variances
    are 20 (coupled) vs 72 (uncoupled) for the scale, 4.372 vs 3.459 for the loc.

    Cost per sample: 1 recorded run + 1 reverse pass (direct dependence of ``f`` on
    ``theta``) + 2 program evaluations per scalar parameter element that depends on
    ``theta`` (per element of ``sample_shape + batch_shape``), vmapped.
    """

    coupling: bool = static_field(default=True)
    site_level: ClassVar[bool] = False
    name: ClassVar[str] = "measure_valued"

    def per_sample(self, call, key, theta):
        """``(value, gradient estimate, aux)`` for one sample; ``call(key, theta_flat)``."""
        name = self.name

        def record(k, th, given=None):
            h = _Record(name, given)
            with h:
                f, aux = call(k, th)
            return f, aux, h.sites

        # 1. structure: the sites and which recorded parameters depend on theta with the
        #    samples held fixed (the samples are inputs of the analysed jaxpr)
        info: list[dict[str, Any]] = []

        def shapes(k, th):
            _, _, sites = record(k, th)
            info.extend({"kinds": s["kinds"], "size": s["size"]} for s in sites)
            return [s["x"] for s in sites]

        xs = jax.eval_shape(shapes, key, theta)

        def analysed(k, given, th):
            _, _, sites = record(k, th, list(given))
            phis = [p for s in sites for p in s["phi"]]
            concs = [s["conc"] for s in sites if s["conc"] is not None]
            return phis, concs

        closed, out_shapes = jax.make_jaxpr(analysed, return_shape=True)(key, xs, theta)
        dep = _depends_on_last(closed)
        n_phi = len(out_shapes[0])
        if any(dep[n_phi:]):
            raise EstimatorError(
                f"je.{name}(): a Gamma site's concentration depends on the parameters; it "
                "has no standard measure-valued decomposition (only the rate has). Use "
                "je.pathwise() (implicit reparameterization) or je.score_function() for "
                "this program."
            )
        pairs = []  # (site, kind, size) of the parameters that depend on theta
        j = 0
        for s, site in enumerate(info):
            for kind in range(len(site["kinds"])):
                if dep[j]:
                    pairs.append((s, kind, site["size"]))
                j += 1

        # 2. the recorded run, differentiated only where f depends on theta directly
        def fwd(th):
            f, aux, sites = record(key, th)
            phis = [p for s in sites for p in s["phi"]]
            cs = [c for s in sites for c in s["c"]]
            ms = [s["m"] for s in sites for _ in s["kinds"]]
            return (f, phis), (aux, cs, ms)

        (f0, phis), vjp_fn, (aux, cs, ms) = jax.vjp(fwd, theta, has_aux=True)
        cot = [jnp.zeros_like(p) for p in phis]
        if pairs:
            # 3. replays: for each dependent parameter, x+ for every element, then x-
            rows = []
            for s, kind, size in pairs:
                for sign in (1, -1):
                    for e in range(size):
                        rows.append((s, kind, e, sign))
            rows = jnp.asarray(np.asarray(rows, np.int32))
            th0 = jax.lax.stop_gradient(theta)

            active: dict[int, list[int]] = {}
            for s, kind, _ in pairs:
                active.setdefault(s, []).append(kind)

            def replay(row):
                with _Replay(name, self.coupling, tuple(row), active):
                    return call(key, th0)[0]

            vals = jax.vmap(replay)(rows)
            start = 0
            flat_index = {}
            j = 0
            for s, site in enumerate(info):
                for kind in range(len(site["kinds"])):
                    flat_index[(s, kind)] = j
                    j += 1
            for s, kind, size in pairs:
                plus = vals[start : start + size]
                minus = vals[start + size : start + 2 * size]
                start += 2 * size
                idx = flat_index[(s, kind)]
                w = cs[idx] * (plus - minus).astype(cs[idx].dtype)
                cot[idx] = jnp.where(ms[idx], w, 0.0).astype(phis[idx].dtype)
        (g,) = vjp_fn((jnp.ones_like(f0), cot))
        return f0, g, aux


def measure_valued(coupling: bool = True) -> MeasureValued:
    """Measure-valued derivatives of the whole program (see :class:`MeasureValued`)."""
    return MeasureValued(coupling=coupling)
