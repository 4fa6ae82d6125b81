r"""Exact enumeration of small finite discrete sites.

At an enumerated site the expectation over the site's draws is computed exactly as a sum
over its support instead of being sampled. With enumerated sites ``e_1 .. e_m`` (supports
``S_1 .. S_m``, ``K = prod_j |S_j|`` combinations; a site with several elements counts
``|S|`` per element)::

    E[f] = sum_c prod_j p_j(x_j^c; theta) E[f | x^c] = sum_c w_c(theta) E[f | x^c].

Per Monte Carlo sample of the other sites the surrogate is ``s = sum_c w_c s_c`` where
``w_c = prod_j p_j(x_j^c; theta)`` is differentiable (it carries the exact gradient of the
enumerated sites) and ``s_c`` is the usual per-sample surrogate (DiCE with the other sites'
score-function terms, pathwise derivatives) of the program run with the enumerated sites
forced to combination ``c``. Every combination uses the same key for the other sites
(common random numbers). The per-sample value is ``F = sum_c w_c f_c``; a leave-one-out
baseline of the other sites uses the other samples' ``F``. The mechanics (one trace of
the program with the combination index as an input, decoded in mixed radix over the sites
in program order; a ``jax.vmap`` over the ``K`` indices) are in ``jaxestim._transforms``
(``_Run.program`` and ``_Run.combine``) and :mod:`jaxestim._surrogate` (which also carries
the mixed-radix stride through ``je.scan`` / ``je.fori_loop`` bodies, whose iterations are
distinct enumerated sites).
"""

from __future__ import annotations

import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxestim._errors import EstimatorError
from jaxestim._estimator import Estimator, site_error
from jaxestim._util import concrete, pytree_dataclass, static_field
from jaxestim.distributions import Bernoulli, Binomial, Categorical, Distribution

_OTHERS = "je.score_function('leave_one_out') or je.stochastic_ad() (or je.auto(), the default)"


def _support_size(dist: Distribution) -> int:
    """``|S|``, the number of values one element of ``dist`` can take (static)."""
    if isinstance(dist, Bernoulli):
        return 2
    if isinstance(dist, Categorical):  # OneHotCategorical included
        return dist.num_categories
    if isinstance(dist, Binomial):
        n = concrete(dist._total_count)
        if n is None:
            raise site_error(
                "je.enumeration()",
                dist,
                "its total_count is traced, so the size of its support is not known when the "
                "program is traced (pass total_count as a concrete number, e.g. a Python int "
                "or a non-differentiated static argument)",
                _OTHERS,
            )
        if not np.all(np.isfinite(n)):
            raise site_error("je.enumeration()", dist, "its total_count is not finite", _OTHERS)
        return int(np.max(n, initial=0)) + 1
    raise site_error(
        "je.enumeration()",
        dist,
        "only finite discrete distributions (Bernoulli, Categorical, OneHotCategorical, "
        "Binomial with a concrete total_count) can be enumerated",
        _OTHERS + " for discrete sites, je.pathwise() for continuous ones",
    )


def _powers(x: jax.Array, n: int) -> jax.Array:
    """``[x^0, x^1, .., x^(n-1)]`` on a trailing axis, by repeated multiplication (exact
    derivatives at ``x = 0``, unlike ``x ** k`` whose derivative ``k x^(k-1)`` is NaN for
    ``k = 0``)."""
    out = [jnp.ones_like(x)]
    for _ in range(n - 1):
        out.append(out[-1] * x)
    return jnp.stack(out, -1)


def _probability_table(dist: Distribution, size: int) -> jax.Array:
    """``P(X = k)`` for ``k = 0 .. size-1``: shape ``batch_shape + (size,)``, differentiable.

    Computed as probabilities (not ``exp(log_prob)``), so a value with zero mass has weight
    exactly 0 *and* the exact derivative of its mass (``exp(-inf)`` would give a NaN one).
    Batch elements with invalid parameters are NaN.
    """
    if isinstance(dist, Bernoulli):
        p, q = dist._p_q()
        table = jnp.stack([q, p], -1)
    elif isinstance(dist, Categorical):
        table = dist.probs
    else:  # Binomial: C(n, k) p^k q^(n - k), zero for k > n
        n, p, q, _, _ = dist._work()
        k = np.arange(size)
        n_int = np.broadcast_to(np.asarray(concrete(dist._total_count)), n.shape).astype(int)
        comb = np.array(
            [math.comb(m, j) if j <= m else 0 for m in n_int.reshape(-1) for j in k], np.float64
        ).reshape((*n.shape, size))
        pk = _powers(p, size)
        qpow = _powers(q, size)
        rest = np.clip(n_int[..., None] - k, 0, size - 1)
        qk = jnp.take_along_axis(qpow, jnp.asarray(rest), -1)
        table = jnp.asarray(comb, p.dtype) * pk * qk
    valid = dist._params_valid()
    return jnp.where(valid[..., None], table, jnp.asarray(jnp.nan, table.dtype))


@pytree_dataclass
class Enumeration(Estimator):
    r"""Exact enumeration of a site's finite support (zero variance for the enumerated part).

    ``E[f] = sum_c w_c(theta) E[f | x^c]`` with ``w_c = prod_j p_j(x_j^c; theta)`` over the
    ``K = prod_j |S_j|`` combinations of the enumerated sites' values (each element of a
    vector-valued site is a separate variable: ``|S|^elements`` combinations). The
    per-sample surrogate ``sum_c w_c s_c`` (``s_c`` the other sites' DiCE/pathwise
    surrogate with the enumerated values forced to combination ``c``) has value
    ``sum_c w_c f_c`` and, in expectation over the other sites, the exact gradient, and its
    derivatives of every order are unbiased (``w_c`` is an exact differentiable
    probability; the rest is DiCE), so ``jax.hessian`` of the estimate works. A program
    whose sites are all enumerated gives the exact gradient from every sample.

    Supported sites: ``Bernoulli``, ``Categorical``, ``OneHotCategorical`` and ``Binomial``
    with a concrete (non-traced) ``total_count``; any other site raises
    :class:`EstimatorError` (choose another estimator for it with
    ``je.sample(key, dist, estimator=...)``). Use it per site
    (``je.sample(key, dist, estimator=je.enumeration())``) inside a transform whose
    estimator is site-level (``je.auto()``, ``je.score_function(...)``, ``je.pathwise()``,
    relaxations), or as the transform's estimator when every site is finite.

    Loops: a site in a ``je.scan`` / ``je.fori_loop`` body (static trip count ``T``; the
    body is traced once) is a distinct enumerated site per iteration: a body with ``M``
    combinations per iteration contributes ``M^T`` (iteration ``t``'s digit of the
    combination index ``c`` is ``(c // (K_before * M^t)) % M``; the loop carries the stride
    ``K_before * M^t``), and ``w_c`` multiplies the iterations' probabilities (a product of
    probabilities, so a zero-mass value keeps weight exactly 0). Nested loops compose (an
    inner loop's ``M^T_in`` is part of the outer body's ``M``), ``je.scan(..., key=key)``
    iteration keys work, and the total ``K`` is checked against ``max_combinations`` when
    the loop has been traced. Sites in ``je.cond`` / ``je.switch`` branches and
    ``je.while_loop`` bodies (unbounded trip count, run as branches) raise
    :class:`EstimatorError` naming ``je.score_function`` / ``je.stochastic_ad``.

    Boundaries: a value of zero mass (``p = 0``, a zero-probability category) has weight 0
    with the exact derivative of its mass, so the gradient is exact there (no NaN, unlike
    the score function, which never sees such values). Out-of-range or NaN parameters give
    NaN weights, hence a NaN value and gradient. A combination of weight 0 whose program
    value is infinite or NaN makes the estimate NaN (``0 * inf``). ``mask=False`` elements
    are not enumerated over in effect: their weight is 1 for the drawn value and 0 for the
    others (no derivative), as the other estimators treat masked draws.

    Bias / variance: unbiased; the enumerated sites add no variance (the others' variance
    remains). Cost per sample: ``K`` evaluations of the program (vectorized with
    ``jax.vmap`` over the combinations; memory ``K`` times a plain run) plus one backward
    pass over them.

    ``has_aux``: the program's auxiliary output gains an axis of size ``K`` after the
    sample axis (one entry per combination, mixed-radix order: the first enumerated
    element varies fastest).

    Attributes:
      max_combinations: the budget for ``K``; a program exceeding it raises
        :class:`EstimatorError` at trace time naming ``K``.

    References: exact marginalization of discrete latent variables as in Pyro's
    ``TraceEnum_ELBO`` / NumPyro's ``config_enumerate`` (Obermeyer et al., 2019, "Tensor
    variable elimination for plated factor graphs"), here by brute-force summation over
    the joint support combined with DiCE (Foerster et al., 2018) for the other sites.
    """

    max_combinations: int = static_field(default=1024)
    name: ClassVar[str] = "enumeration"

    def __post_init__(self) -> None:
        m = self.max_combinations
        if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m < 2**31:
            raise ValueError(
                f"enumeration: `max_combinations` must be an int in [1, 2**31), got {m!r}"
            )

    def process_site(self, ctx, key, dist, sample_shape):
        if ctx._enum_branch:
            raise site_error(
                "je.enumeration()",
                dist,
                "the site is inside a je.cond / je.switch branch or a je.while_loop body (run "
                "as branches of an unbounded trip count), where the enumerated combinations "
                "would depend on the branch taken; enumeration supports sites at the top "
                "level and in je.scan / je.fori_loop bodies (static trip count)",
                "je.score_function('leave_one_out') or je.stochastic_ad() for sites in "
                "branches and while loops",
            )
        ctx.check_recording_site("a je.enumeration() sample site (it records its weights)")
        size = _support_size(dist)
        shape = tuple(sample_shape) + tuple(dist.batch_shape)
        elements = int(np.prod(shape, dtype=np.int64))
        per = size**elements
        in_loop = ctx._enum_base is not None
        before = ctx._enum_m if in_loop else ctx.shared.get("enum_K", 1)
        # in a loop body: a lower bound on K (the loop's other iterations come on top; the
        # full count is checked when the loop ends, see SurrogateHandler.absorb_loop)
        total = before * per * (ctx.shared.get("enum_K", 1) if in_loop else 1)
        if total > self.max_combinations:
            raise EstimatorError(
                f"je.enumeration(): enumerating this {type(dist).__name__} site ({elements} "
                f"element(s), {size} value(s) each) makes K = {total} combinations of the "
                f"enumerated sites' values (K = {total // per} before it), more than "
                f"max_combinations={self.max_combinations}; each costs one program "
                f"evaluation per sample. Raise je.enumeration(max_combinations=...) or "
                f"use {_OTHERS} for this site."
            )
        if in_loop:  # the iteration's stride base (traced: it depends on the iteration)
            ctx._enum_m = before * per
            b = ctx._enum_budget
            ctx._enum_budget = self.max_combinations if b is None else min(b, self.max_combinations)
            base = ctx._enum_base * before
        else:
            ctx.shared["enum_K"] = total
            base = before
        # the traced combination index (see _Run.program); handlers that only trace the
        # program (je.check) set none: combination 0 stands for all
        c = jnp.asarray(ctx.shared.get("enum_index", 0), jnp.int32)
        strides = base * jnp.asarray(size ** np.arange(elements, dtype=np.int64), jnp.int32)
        digits = ((c // strides) % size).reshape(shape)
        table = jnp.broadcast_to(_probability_table(dist, size), (*shape, size))
        p = jnp.take_along_axis(table, digits[..., None], -1)[..., 0]
        if ctx._mask is not None:  # masked draws did not happen: keep the drawn value only
            drawn = dist.index_from_value(jax.lax.stop_gradient(dist.sample(key, sample_shape)))
            p = jnp.where(ctx._mask, p, (digits == drawn).astype(p.dtype))
        ctx.multiply_weight(jnp.prod(p))
        x = dist.value_from_index(digits)
        if not isinstance(dist, Categorical):
            x = x.astype(dist.dtype)
        return jax.lax.stop_gradient(x)


def enumeration(max_combinations: int = 1024) -> Enumeration:
    """Exact enumeration of small finite discrete sites (see :class:`Enumeration`)."""
    return Enumeration(max_combinations=max_combinations)
