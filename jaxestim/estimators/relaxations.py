"""Relaxations of discrete sites: Gumbel-softmax (Concrete), straight-through, Gumbel-Rao, ReinMax.

Their gradients are biased (``f`` is differentiated off the discrete support or at the
mean); they are cheap and low-variance. :func:`select` indexes tables with categorical
samples in either representation (integer or one-hot), so one program runs under every
estimator.
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from jaxestim._estimator import RELAXABLE, Estimator, is_index_categorical, one_hot_site, site_error
from jaxestim._util import check_positive, pytree_dataclass, static_field
from jaxestim.distributions import Bernoulli
from jaxestim.distributions._base import RandomStream, as_jax_key
from jaxestim.estimators.pathwise import Pathwise


def _relaxable_site(ctx: Any, dist: Any, est: str, why: str) -> None:
    """A discrete site under a relaxation: no unbiased higher derivatives, and only
    Bernoulli / (OneHot)Categorical have one (``EstimatorError`` naming alternatives)."""
    ctx.shared["higher_order_ok"] = False  # relaxed gradients: no unbiased higher orders
    if not isinstance(dist, RELAXABLE):
        raise site_error(
            est, dist, why, "je.score_function(), je.stochastic_ad() or je.straight_through()"
        )


@pytree_dataclass
class GumbelSoftmax(Estimator):
    r"""Gumbel-softmax / Concrete relaxation (Jang et al., 2017; Maddison et al., 2017).

    At a Categorical/OneHotCategorical site with logits ``l`` returns
    ``y = softmax((l + g) / tau)`` with i.i.d. Gumbel noise ``g``; at a Bernoulli site the
    binary Concrete ``y = sigmoid((l + log u - log(1 - u)) / tau)``. The gradient is the
    pathwise gradient of ``f`` at the relaxed sample: *biased* (``f`` is evaluated off the
    discrete support), the bias vanishing as ``tau -> 0`` while the variance grows.
    ``hard=True`` is straight-through Gumbel: the forward value is the exact discrete
    sample ``one_hot(argmax(l + g))`` (resp. ``l + logistic noise > 0``) and the backward
    pass uses the relaxed ``y``.

    ``Categorical`` sites return the (relaxed) one-hot vector with a trailing category
    axis, not an integer: an index cannot carry a gradient. Index a table with
    :func:`jaxestim.select`, which accepts both integer and one-hot samples, so the same
    program runs under every estimator. Continuous sites are reparameterized (pathwise);
    other discrete sites raise :class:`EstimatorError`.

    Temperature schedules: ``temperature`` is a pytree leaf, so a traced value (e.g. an optax
    schedule evaluated at the step count inside a jitted training step,
    ``je.gumbel_softmax(optax.exponential_decay(2.0, 100, 0.9)(i))``) anneals it without
    retracing or recompiling the step; the same holds for :class:`GumbelRao` and
    :class:`ReinMax`.

    Attributes:
      temperature: ``tau > 0`` (may be traced, e.g. under ``jax.vmap`` or annealed).
      hard: straight-through variant.
    """

    temperature: Any = 1.0
    hard: bool = static_field(default=False)
    name: ClassVar[str] = "gumbel_softmax"

    def __post_init__(self) -> None:
        check_positive("gumbel_softmax", "temperature", self.temperature)

    def process_site(self, ctx, key, dist, sample_shape):
        if not dist.is_discrete:
            return Pathwise().process_site(ctx, key, dist, sample_shape)
        _relaxable_site(
            ctx,
            dist,
            "je.gumbel_softmax()",
            "the Concrete relaxation is defined for Bernoulli and (OneHot)Categorical",
        )
        logits = dist.logits
        tau = jnp.asarray(self.temperature, logits.dtype)
        if isinstance(dist, Bernoulli):
            u = dist.uniforms(key, sample_shape)
            z = logits + (jnp.log(u) - jnp.log1p(-u))
            y = jax.nn.sigmoid(z / tau)
            hard = (z > 0).astype(y.dtype)
        else:
            shape = sample_shape + dist.batch_shape + (dist.num_categories,)
            z = logits + jax.random.gumbel(as_jax_key(key), shape, logits.dtype)
            y = jax.nn.softmax(z / tau, axis=-1)
            hard = jax.nn.one_hot(jnp.argmax(z, axis=-1), dist.num_categories, dtype=y.dtype)
        if self.hard:
            return hard + (y - jax.lax.stop_gradient(y))
        return y


@pytree_dataclass
class StraightThrough(Estimator):
    r"""Straight-through estimator (Bengio, Leonard & Courville, 2013).

    The forward value is an exact discrete sample ``x``; the backward pass treats it as if
    it were its mean: the site returns ``x + m - stop_grad(m)`` with ``m = E[x]``
    (``probs`` for one-hot categorical, ``n p`` for Binomial, ``rate`` for Poisson, ...).
    Exact when ``f`` is linear in ``x`` (then ``grad E[f] = grad f(E[x])``), biased
    otherwise; low variance and the cost of one forward and backward pass. Categorical
    sites return one-hot vectors (see :func:`jaxestim.select`); continuous sites are
    reparameterized.
    """

    name: ClassVar[str] = "straight_through"

    def process_site(self, ctx, key, dist, sample_shape):
        if not dist.is_discrete:
            return Pathwise().process_site(ctx, key, dist, sample_shape)
        ctx.shared["higher_order_ok"] = False  # straight-through: no unbiased higher orders
        x = jax.lax.stop_gradient(one_hot_site(dist, dist.sample(key, sample_shape)))
        mean = dist.probs if is_index_categorical(dist) else dist.mean
        mean = jnp.broadcast_to(mean, x.shape).astype(x.dtype)
        return x + (mean - jax.lax.stop_gradient(mean))


def _tangent(logits: jax.Array) -> jax.Array:
    """``logits - stop_grad(logits)``: value 0, derivative the identity (0 at ``-inf`` logits)."""
    d = logits - jax.lax.stop_gradient(logits)
    return jnp.where(jnp.isfinite(jax.lax.stop_gradient(logits)), d, jnp.zeros_like(d))


def _softmax_jvp(p: jax.Array, dtheta: jax.Array) -> jax.Array:
    """``J_softmax(p) dtheta = p * (dtheta - <p, dtheta>)``: the tangent of softmax at ``p``."""
    return p * (dtheta - jnp.sum(p * dtheta, axis=-1, keepdims=True))


def _log_exponential(key: jax.Array, shape: tuple, dtype: Any) -> jax.Array:
    """``log E`` for i.i.d. ``E ~ Exponential(1)``, finite (``E = -log u``, ``u`` in ``(0, 1)``)."""
    u = jax.random.uniform(key, shape, dtype, minval=jnp.finfo(dtype).tiny, maxval=1.0)
    return jnp.log(-jnp.log(u))


def conditional_gumbel(key: jax.Array, logits: jax.Array, index: jax.Array, num: int) -> jax.Array:
    r"""``num`` draws of ``z = logits + G`` (standard Gumbel ``G``) given ``argmax z = index``.

    The top-down construction (Maddison et al., 2014; Paulus et al., 2021, App. B): with
    ``E_i`` i.i.d. Exponential(1), the maximum is ``z_D = logsumexp(l) - log E_D`` (it is
    Gumbel(logsumexp l) and independent of the argmax ``D``) and every other coordinate is
    Gumbel(``l_i``) truncated below the maximum, ``z_i = -log(exp(-l_i) E_i + exp(-z_D))``,
    computed in log space (``-logaddexp(log E_i - l_i, -z_D)``). ``logits`` has shape
    ``(..., C)``, ``index`` the matching integer shape ``(...)``; returns
    ``(num, ..., C)`` perturbed logits (not the noise), ``-inf`` where ``l_i = -inf``.
    """
    shape = (num, *logits.shape)
    log_e = _log_exponential(key, shape, logits.dtype)
    is_top = jnp.arange(logits.shape[-1]) == index[..., None]
    log_e_top = jnp.sum(jnp.where(is_top, log_e, 0.0), axis=-1, keepdims=True)
    top = jax.nn.logsumexp(logits, axis=-1, keepdims=True) - log_e_top
    others = -jnp.logaddexp(log_e - logits, -top)
    return jnp.where(is_top, top, others)


@pytree_dataclass
class GumbelRao(Estimator):
    r"""Rao-Blackwellized straight-through Gumbel-softmax (Paulus, Maddison & Krause, 2021).

    "Rao-Blackwellizing the Straight-Through Gumbel-Softmax Gradient Estimator" (ICLR 2021).
    At a Categorical/OneHotCategorical site with logits ``l`` the forward value is the exact
    sample ``D = one_hot(argmax(l + G))``; the backward pass is straight-through
    Gumbel-softmax's Jacobian averaged over ``K`` draws of the noise *given* ``D``:

    .. math::
        y = D + \bar s - \mathrm{sg}(\bar s), \qquad
        \bar s = \frac1K \sum_{k=1}^K \mathrm{softmax}\big((l + \mathrm{sg}(G^{(k)}))/\tau\big),
        \quad G^{(k)} \sim p(G \mid \arg\max(l + G) = D)

    (the derivative is taken through ``l`` only, with each ``G^{(k)}`` held fixed). The
    conditional draws use the top-down construction (:func:`conditional_gumbel`).
    ``G^{(1)}`` is the noise ``G`` that produced ``D`` (itself a draw from
    ``p(G | D)``), ``G^{(2..K)}`` are fresh conditional draws (the paper draws all ``K``
    afresh; the joint law of ``(D, G^{(1..K)})`` is the same). So ``num_samples=1`` is
    straight-through Gumbel-softmax (``je.gumbel_softmax(tau, hard=True)``), sample for
    sample under the same key.

    Bias and variance: the conditional expectation keeps the mean of straight-through
    Gumbel-softmax (the same bias, which vanishes only as ``tau -> 0`` and ``f``
    becomes linear between vertices) and lowers the variance, down to that of
    ``E[J | D]`` as ``K -> infinity``. Bernoulli sites are the two-logit case ``(l, 0)``:
    ``x = 1[l + L > 0]`` with logistic ``L``, and ``sbar = mean_k sigmoid((l + L^(k))/tau)``
    with ``L^(k)`` logistic noise conditioned on the sign of ``l + L``.

    Cost per sample: one program evaluation and one backward pass; ``K`` softmax (sigmoid)
    evaluations and ``K - 1`` conditional noise draws per site. ``Categorical`` sites return
    one-hot vectors (see :func:`jaxestim.select`); continuous sites are reparameterized;
    other discrete sites raise :class:`EstimatorError`. Higher derivatives of the estimate
    raise :class:`EstimatorError` (the relaxed gradient has no unbiased derivative).

    Attributes:
      temperature: ``tau > 0`` (may be traced: ``jax.vmap`` over it, or annealed by a
        schedule inside a jitted loop without recompiling).
      num_samples: ``K >= 1`` conditional noise draws per site (static).
    """

    temperature: Any = 1.0
    num_samples: int = static_field(default=10)
    name: ClassVar[str] = "gumbel_rao"

    def __post_init__(self) -> None:
        check_positive("gumbel_rao", "temperature", self.temperature)
        if not isinstance(self.num_samples, int) or self.num_samples < 1:
            raise ValueError(
                f"gumbel_rao: `num_samples` must be an int >= 1, got {self.num_samples!r}"
            )

    def process_site(self, ctx, key, dist, sample_shape):
        if not dist.is_discrete:
            return Pathwise().process_site(ctx, key, dist, sample_shape)
        _relaxable_site(
            ctx,
            dist,
            "je.gumbel_rao()",
            "the Gumbel-softmax relaxation is defined for Bernoulli and (OneHot)Categorical",
        )
        logits = dist.logits
        tau = jnp.asarray(self.temperature, logits.dtype)
        k_extra = self.num_samples - 1
        sl = jax.lax.stop_gradient(logits)
        # The forward draw uses the site key as je.gumbel_softmax does (K = 1 reproduces it
        # sample for sample); extra conditional draws get an independent key: a split of a
        # JAX key, or the next words of a je.scan RandomStream.
        kd, kc = key, None
        if k_extra and not isinstance(key, RandomStream):
            kd, kc = jax.random.split(key)
        if isinstance(dist, Bernoulli):
            # Two logits (l, 0): x = 1[z > 0], z = z_1 - z_0 = l + logistic noise.
            u = dist.uniforms(kd, sample_shape)
            z = jax.lax.stop_gradient(sl + (jnp.log(u) - jnp.log1p(-u)))
            hard = (z > 0).astype(z.dtype)
            zs = z[None]
            if k_extra:
                kc = as_jax_key(key) if kc is None else kc
                pair = jnp.stack([jnp.broadcast_to(sl, z.shape), jnp.zeros_like(z)], axis=-1)
                zc = conditional_gumbel(kc, pair, jnp.where(z > 0, 0, 1), k_extra)
                zs = jnp.concatenate([zs, zc[..., 0] - zc[..., 1]], axis=0)
            sbar = jnp.mean(jax.nn.sigmoid((zs + _tangent(logits)) / tau), axis=0)
        else:
            c = dist.num_categories
            shape = sample_shape + dist.batch_shape + (c,)
            z = sl + jax.random.gumbel(as_jax_key(kd), shape, logits.dtype)
            idx = jnp.argmax(z, axis=-1)
            hard = jax.nn.one_hot(idx, c, dtype=z.dtype)
            zs = z[None]
            if k_extra:
                kc = as_jax_key(key) if kc is None else kc
                zc = conditional_gumbel(kc, jnp.broadcast_to(sl, shape), idx, k_extra)
                zs = jnp.concatenate([zs, zc], axis=0)
            # softmax((l + G^(k)) / tau) with G^(k) = zs - l held fixed: value softmax(zs / tau)
            sbar = jnp.mean(jax.nn.softmax((zs + _tangent(logits)) / tau, axis=-1), axis=0)
        return hard + (sbar - jax.lax.stop_gradient(sbar))


@pytree_dataclass
class ReinMax(Estimator):
    r"""ReinMax: second-order straight-through (Liu, Zhu, Gao, Chen, Han & Zhao, 2023).

    "Bridging Discrete and Backpropagation: Straight-Through and Beyond" (NeurIPS 2023),
    Algorithm 2. At a Categorical/OneHotCategorical site with logits ``theta`` the forward
    value is an exact sample ``D ~ Categorical(softmax(theta))`` (one-hot); with
    ``pi_0 = softmax(theta)`` and ``pi_1 = (D + softmax(theta / tau)) / 2`` (both held
    fixed) the backward pass is

    .. math::
        \frac{\partial y}{\partial \theta}^{\top} g
          = 2\, J(\pi_1)\, g - \tfrac12\, J(\pi_0)\, g,
        \qquad J(\pi) = \mathrm{diag}(\pi) - \pi \pi^{\top},

    i.e. the algorithm's ``pi_2 = 2 softmax(sg(log pi_1 - theta) + theta) - pi_0 / 2`` and
    ``y = D + pi_2 - sg(pi_2)`` (implemented through the Jacobians, so no ``log 0``). This
    is Heun's method for the integral ``f(D) - f(D')`` where straight-through is Euler's:
    at ``tau = 1`` the mean is *exact* when ``f`` is quadratic in the one-hot sample (in
    the Bernoulli sample), biased otherwise. The gradient is a function of ``D`` alone
    (its variance is that of ``f``'s gradient at the sample; no noise beyond ``D``).
    Bernoulli sites are the two-category case with logits ``(l, 0)``:
    ``dx/dl = 2 pi_1 (1 - pi_1) - pi_0 (1 - pi_0) / 2`` with ``pi_0 = sigmoid(l)``,
    ``pi_1 = (x + sigmoid(l / tau)) / 2``.

    The paper recommends ``tau >= 1`` (its reference implementation rejects ``tau < 1``);
    any ``tau > 0`` is accepted here. Cost per sample: one program evaluation and one
    backward pass (two softmax Jacobian-vector products per site). ``Categorical`` sites
    return one-hot vectors (see :func:`jaxestim.select`); continuous sites are
    reparameterized; other discrete sites raise :class:`EstimatorError`; higher
    derivatives raise :class:`EstimatorError`.

    Attributes:
      temperature: ``tau > 0`` (may be traced).
    """

    temperature: Any = 1.0
    name: ClassVar[str] = "reinmax"

    def __post_init__(self) -> None:
        check_positive("reinmax", "temperature", self.temperature)

    def process_site(self, ctx, key, dist, sample_shape):
        if not dist.is_discrete:
            return Pathwise().process_site(ctx, key, dist, sample_shape)
        _relaxable_site(
            ctx, dist, "je.reinmax()", "ReinMax is defined for Bernoulli and (OneHot)Categorical"
        )
        logits = dist.logits
        tau = jnp.asarray(self.temperature, logits.dtype)
        sl = jax.lax.stop_gradient(logits)
        x = jax.lax.stop_gradient(one_hot_site(dist, dist.sample(key, sample_shape)))
        x = x.astype(logits.dtype)
        dl = _tangent(logits)
        if isinstance(dist, Bernoulli):
            pi0 = jax.nn.sigmoid(sl)
            pi1 = (x + jax.nn.sigmoid(sl / tau)) / 2
            return x + dl * (2 * pi1 * (1 - pi1) - pi0 * (1 - pi0) / 2)
        pi0 = jax.nn.softmax(sl, axis=-1)
        pi1 = (x + jax.nn.softmax(sl / tau, axis=-1)) / 2
        return x + (2 * _softmax_jvp(pi1, dl) - _softmax_jvp(pi0, dl) / 2)


def gumbel_softmax(temperature: Any = 1.0, hard: bool = False) -> GumbelSoftmax:
    """The Gumbel-softmax / Concrete relaxation (see :class:`GumbelSoftmax`)."""
    return GumbelSoftmax(temperature=temperature, hard=hard)


def straight_through() -> StraightThrough:
    """The straight-through estimator (see :class:`StraightThrough`)."""
    return StraightThrough()


def gumbel_rao(temperature: Any = 1.0, num_samples: int = 10) -> GumbelRao:
    """Rao-Blackwellized straight-through Gumbel-softmax (see :class:`GumbelRao`)."""
    return GumbelRao(temperature=temperature, num_samples=num_samples)


def reinmax(temperature: Any = 1.0) -> ReinMax:
    """The ReinMax second-order straight-through estimator (see :class:`ReinMax`)."""
    return ReinMax(temperature=temperature)


def select(values: jax.Array, x: jax.Array) -> jax.Array:
    """Look up ``values[..., x]`` for a categorical sample ``x`` in either representation.

    An integer ``x`` (a ``Categorical`` sample under the score-function, finite-difference
    or stochastic_ad estimators) picks, element by element, the entry of the last axis of
    ``values`` (batch axes broadcast: ``values`` of shape ``(J, K)`` and ``x`` of shape
    ``(J,)`` give ``values[j, x[j]]``); a floating ``x``
    with a trailing category axis (a one-hot or relaxed one-hot sample under
    :func:`gumbel_softmax` / :func:`straight_through`) gives ``sum_k x_k values[..., k]``,
    which equals the lookup at a one-hot vector and is differentiable in ``x``. Write
    programs with ``select`` and they run under every estimator.
    """
    values = jnp.asarray(values)
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.integer):
        try:
            batch = jnp.broadcast_shapes(values.shape[:-1], x.shape)
        except ValueError:
            raise ValueError(
                f"select: index `x` of shape {x.shape} does not broadcast with the batch shape "
                f"{values.shape[:-1]} of `values`"
            ) from None
        table = jnp.broadcast_to(values, (*batch, values.shape[-1]))
        idx = jnp.broadcast_to(x, batch)[..., None]
        return jnp.take_along_axis(table, idx, axis=-1)[..., 0]
    if x.ndim == 0 or x.shape[-1] != values.shape[-1]:
        raise ValueError(
            f"select: a one-hot `x` must have a trailing axis of size {values.shape[-1]} "
            f"(values.shape[-1]); got x.shape={x.shape}"
        )
    return jnp.sum(values * x, axis=-1)
