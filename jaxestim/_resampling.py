r"""Differentiable resampling: ``new_weight`` and ``resample`` for particle filters.

A bootstrap particle filter resamples ancestor indices from its normalized weights. Making
that draw a :func:`jaxestim.sample` ``Categorical`` site is unbiased under
:func:`jaxestim.stochastic_ad` but useless in practice: a jump moves a resampled index to
the *adjacent particle in array order*, an unrelated particle, and with ``N`` particles the
total jump rate grows like ``N^2`` per run (about ``2·10^5`` on a 1,000-particle,
20-step filter), so the estimate's std is hundreds of times larger than necessary
(``benchmarks/README.md``, "Particle filter"). The score function of those ``N·T``
categorical draws is no better. The fix used by StochasticAD.jl (Arya et al., 2022, its
``new_weight`` and particle-filter tutorial) and by Ścibior & Wood (2021, "Differentiable
particle filtering without modifying the forward pass", arXiv:2106.10314) is to draw the
indices *without* a derivative and to put the likelihood ratio of the draw into the
resampled particle's weight instead.

``new_weight`` / ``new_log_weight``. For an outcome drawn with probability ``p(θ)``
(computed from the current parameters, the draw itself not differentiated), ::

    new_weight(p)     = p / stop_gradient(p)          value 1,  derivative ∇p / p
    new_log_weight(l) = l - stop_gradient(l)          value 0,  derivative ∇l  (l = log p)

As a function of ``θ`` around the point ``θ₀`` where the draw was made, ``new_weight`` is
``p(θ) / p(θ₀)``, the importance weight that turns a draw made at ``θ₀`` into one made at
``θ``: for any ``h``, ``E_{k ~ p(θ₀)}[new_weight(p_k(θ)) h_k(θ)] = Σ_k p_k(θ) h_k(θ)``
*for every θ*, so derivatives of every order agree in expectation (the same identity as
the DiCE "magic box" of the score function; here the value is multiplied into the
program's result rather than into a surrogate, which is why the result must be *linear*
in it).

``resample``. Given unnormalized log-weights ``l_j`` (``w_j = exp l_j``, total
``S = Σ_j w_j``, normalized ``w̄_j = w_j / S``), draw ``M`` ancestors ``a_i`` with
``stop_gradient(w̄)`` (multinomial, stratified or systematic: each has expected offspring
count ``E[#{i: a_i = j}] = M w̄_j(θ₀)``) and give offspring ``i`` the log-weight ::

    l'_i = log S - log M + new_log_weight(log w̄_{a_i}),
    i.e. w'_i(θ) = S(θ) w̄_{a_i}(θ) / (M w̄_{a_i}(θ₀)) = w_{a_i}(θ) / (M w̄_{a_i}(θ₀)).

Its value is ``S / M`` for every offspring: exactly the ordinary resampled weights, so the
forward pass, hence every estimate of the likelihood, is unchanged, and the total weight
``Σ_i w'_i = S`` is preserved (the StochasticAD.jl tutorial's invariant ``ω == sum(W)``).

Why it is unbiased (the stop-gradient resampling argument). Fix everything drawn before the
resampling step (the particles ``x_j`` and their weights are differentiable functions of
``θ`` through reparameterized noise). For any function ``φ`` of a particle (and ``θ``),
using only the expected offspring counts,

    E_a[Σ_i w'_i(θ) φ(x_{a_i}(θ), θ)]
        = Σ_j M w̄_j(θ₀) · w_j(θ) / (M w̄_j(θ₀)) · φ(x_j(θ), θ)
        = Σ_j w_j(θ) φ(x_j(θ), θ)              for every θ near θ₀.

So a resampled system is, in expectation *as a function of θ*, the system it came from:
its value and all of its derivatives. A bootstrap filter's remaining steps (move each
particle with reparameterized noise, multiply its weight by the observation density
``g(y_t | x)``, resample again, ...) keep its likelihood estimate ``Ẑ = Σ_i w_{T,i}``
linear in the weights of every earlier system, so by induction backwards over the
resampling steps (tower property, the identity above at each step, reparameterization for
the moves) ``E[Ẑ(θ; θ₀)] = Z(θ)`` as a function of ``θ``. Hence, when expectation and
differentiation may be interchanged:

* **unbiased:** the derivative of ``Ẑ`` (or of any ``Σ_i w_{T,i} h(x_{T,i})``, e.g. the
  unnormalized filtering expectation of ``h``): ``E[∇Ẑ] = ∇E[Ẑ] = ∇Z``, and likewise
  higher derivatives. With ``l'`` as defined above nothing else is needed:
  ``Ẑ = exp(logsumexp(final log-weights))`` when the filter starts from log-weights
  ``-log N`` (weights ``1/N``); equivalently ``Ẑ = Π_t mean_i w_{t,i}`` of the usual
  filter, since the mass carried in the weights is the running product.
* **not unbiased:** anything *nonlinear* in the weights. ``∇ log Ẑ = ∇Ẑ / Ẑ`` (what
  StochasticAD.jl's tutorial differentiates) is a ratio estimator of ``∇ log Z``:
  consistent as ``N → ∞``, biased at finite ``N``; so are self-normalized expectations
  ``Σ w h / Σ w``. Under :func:`jaxestim.grad` the result is a gradient of ``E[f]``
  only for ``f`` linear in the weights, e.g. ``f = Ẑ / Z_ref`` with a constant
  ``Z_ref`` to keep the scale sane.

Under the estimators. ``new_weight`` is an ordinary differentiable function, so it is
correct wherever the program is differentiated by autodiff: :func:`jaxestim.pathwise`,
:func:`jaxestim.auto`, :func:`jaxestim.score_function` (the DiCE surrogate multiplies the
program's value; its derivative adds the likelihood-ratio term), :func:`jaxestim.stochastic_ad`
(the forward-mode run carries ``∇p / p``; a replayed run sees the value 1) and plain
``jax.grad`` of a program whose other randomness is reparameterized by hand. Under
:func:`jaxestim.finite_difference` the derivative of ``new_weight`` is invisible (its value
is always 1) but it is also not needed: finite differences re-run the program at ``θ ± h``,
where the draws are made with the perturbed probabilities, and ``E[Ẑ(θ ± h)] = Z(θ ± h)``
for the ordinary filter, so the estimate is that of ``(Z(θ + h) - Z(θ - h)) / 2h`` (with a
variance that grows like ``1/h``: perturbing ``θ`` flips resampled indices). This holds
because ``p`` is the probability with which *the program* drew the outcome; an outcome
drawn outside the program (passed in as an argument) would be wrong under finite
differences and is outside the contract of ``new_weight``.

Boundaries. ``p = 0`` (``log p = -inf``): the outcome cannot have been drawn, so the value
never enters a correct estimate; ``new_weight`` returns value 1 and derivative 0 there so
that evaluating it for every candidate and selecting afterwards (``jnp.where``) stays
NaN-free. An outcome whose probability is 0 at ``θ₀`` but grows with ``θ`` contributes
``∇p · h`` to ``∇E``, which no likelihood-ratio estimator sees (it is never drawn); a
log-weight of ``-inf`` must therefore be a hard zero (``-inf`` near ``θ₀`` too, e.g. a
constraint), not a support boundary that moves with ``θ``. A negative, NaN or infinite
``p`` (NaN or ``+inf`` log-weight) gives NaN.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from jaxestim._util import check_key

__all__ = ["new_log_weight", "new_weight", "resample"]

_METHODS = ("multinomial", "stratified", "systematic")


def _float(x: Any, owner: str, name: str) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        if not (jnp.issubdtype(x.dtype, jnp.integer) or x.dtype == jnp.bool_):
            raise TypeError(f"{owner}: `{name}` must be a real array, got dtype {x.dtype}")
        x = x.astype(jnp.result_type(float))
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        raise TypeError(f"{owner}: `{name}` must be real, got dtype {x.dtype}")
    return x


def new_weight(p: Any) -> jax.Array:
    r"""A weight whose value is 1 and whose derivative is the likelihood ratio ``∇p / p``.

    StochasticAD.jl's ``new_weight``. Multiply a quantity computed from an outcome that the
    program drew with probability ``p`` (a function of the parameters; the draw itself is
    made without a derivative, e.g. with ``jax.random`` on ``stop_gradient`` probabilities)
    by ``new_weight(p)``: the value is unchanged and the derivative gains the
    score-function term ``h ∇p / p``, so ``E[∇(new_weight(p_k) h_k)] = ∇ Σ_k p_k h_k``.
    Elementwise ``p / stop_gradient(p)``, i.e. ``p(θ) / p(θ₀)`` as a function of ``θ``:
    derivatives of every order are those of the importance weight.

    Unbiased only when the program's result is **linear** in the weight (a sum of weighted
    terms, a product of the filter's per-step mean weights); see the module docstring of
    :mod:`jaxestim._resampling` for the derivation and for which estimators it holds under
    (all of them; under :func:`jaxestim.finite_difference` the derivative is not needed).

    Args:
      p: probabilities (any shape), ``p >= 0``; values above 1 are allowed (the identity
        only needs ``p(θ) / p(θ₀)``). For tiny probabilities prefer
        :func:`new_log_weight` (``∇p / p`` overflows when ``p`` is subnormal).

    Returns:
      An array like ``p`` (floating) equal to exactly 1 where ``p > 0`` is finite; 1 with
      derivative 0 where ``p == 0`` (an outcome that cannot have been drawn); NaN where
      ``p`` is negative, infinite or NaN.
    """
    p = _float(p, "je.new_weight", "p")
    pos = p > 0
    safe = jnp.where(pos, p, jnp.ones_like(p))
    w = safe / jax.lax.stop_gradient(safe)  # x / x == 1 exactly in IEEE arithmetic
    w = jnp.where(pos, w, jnp.ones_like(w))
    return jnp.where((p >= 0) & (p < jnp.inf), w, jnp.full_like(w, jnp.nan))


def new_log_weight(log_p: Any) -> jax.Array:
    r"""The log of :func:`new_weight`: value 0, derivative ``∇ log p``.

    ``log_p - stop_gradient(log_p)`` elementwise, the log-space form for log-weighted
    particle systems (``exp(new_log_weight(log_p))`` is :func:`new_weight` without the
    overflow of ``∇p / p`` at tiny ``p``). Add it to the log-weight of a particle that was
    drawn with probability ``exp(log_p)``. Same contract as :func:`new_weight`: unbiased
    when the result is linear in ``exp`` of the log-weights.

    Args:
      log_p: log-probabilities (any shape).

    Returns:
      An array like ``log_p`` equal to exactly 0 where ``log_p`` is finite; 0 with
      derivative 0 where ``log_p == -inf`` (probability 0: never drawn); NaN where
      ``log_p`` is NaN or ``+inf``.
    """
    lp = _float(log_p, "je.new_log_weight", "log_p")
    neg_inf = lp == -jnp.inf
    safe = jnp.where(neg_inf, jnp.zeros_like(lp), lp)
    out = safe - jax.lax.stop_gradient(safe)  # x - x == 0 exactly
    return jnp.where(lp < jnp.inf, out, jnp.full_like(out, jnp.nan))


def _ancestors(key: jax.Array, logits: jax.Array, num: int, method: str) -> jax.Array:
    """``num`` ancestor indices with expected offspring counts ``num * softmax(logits)``.

    ``logits`` carry no derivative. All three map positions in ``[0, 1)`` (i.i.d. uniforms,
    one per stratum, or one shared offset) through the inverse CDF, ``O(M log N)``: a
    position lands in a particle whose CDF interval ``[F_{j-1}, F_j)`` is non-empty, so
    particles of weight 0 are never chosen, and positions at or above the last positive
    particle's lower end (floating-point round-off) go to that particle.
    """
    n = logits.shape[0]
    p = jnp.exp(logits - jnp.max(logits))
    cdf = jnp.cumsum(p)
    cdf = cdf / cdf[-1]
    last = n - 1 - jnp.argmax((p > 0)[::-1])
    cdf = jnp.where(jnp.arange(n) >= last, jnp.inf, cdf)
    if method == "multinomial":  # i.i.d. uniforms through the inverse CDF: O(M log N)
        idx = jnp.searchsorted(cdf, jax.random.uniform(key, (num,), logits.dtype), side="right")
        return jnp.minimum(idx, last).astype(jnp.int32)
    if method == "systematic":
        u = jax.random.uniform(key, (), logits.dtype)
    else:
        u = jax.random.uniform(key, (num,), logits.dtype)
    positions = (jnp.arange(num, dtype=logits.dtype) + u) / num
    idx = jnp.searchsorted(cdf, positions, side="right")
    return jnp.minimum(idx, last).astype(jnp.int32)


def resample(
    key: jax.Array,
    log_weights: Any,
    num: int | None = None,
    *,
    method: str = "multinomial",
) -> tuple[jax.Array, jax.Array]:
    r"""Resample a weighted particle system, with the draw's derivative in the new weights.

    Draws ``num`` ancestor indices ``a_i`` with probabilities ``w̄_j = w_j / S``
    (``w = exp(log_weights)``, ``S = Σ_j w_j``), using ``jax.random`` on
    ``stop_gradient(log_weights)`` (not a :func:`jaxestim.sample` site: the indices carry
    no derivative and nothing jumps), and returns the offspring's log-weights ::

        new_log_weights_i = log S - log num + new_log_weight(log w̄_{a_i})

    whose value is ``log(S / num)`` for every offspring (the ordinary resampled weights;
    the total ``S`` is preserved) and whose derivative carries the likelihood ratio of the
    draw, ``∇ log w̄_{a_i}``. Gather the particles with ``x[indices]`` and keep using the
    returned log-weights: a bootstrap filter that starts from log-weights ``-log N`` and
    adds ``log g(y_t | x_t)`` each step has likelihood estimate
    ``Ẑ = exp(logsumexp(log_weights))`` at the end, and ``∇Ẑ`` (not ``∇ log Ẑ``) is an
    unbiased estimate of ``∇E[Ẑ] = ∇Z`` -- under :func:`jaxestim.pathwise` /
    :func:`jaxestim.auto` / :func:`jaxestim.stochastic_ad` with reparameterized moves, or
    :func:`jaxestim.score_function` -- as long as the program's result is linear in the
    weights (derivation: module docstring of :mod:`jaxestim._resampling`; Ścibior & Wood,
    2021; StochasticAD.jl's particle-filter tutorial, Arya et al., 2022).

    Args:
      key: a PRNG key for the draw (use a fresh one per resampling step; it is not a
        sample site, so no key bookkeeping applies).
      log_weights: unnormalized log-weights of shape ``(N,)`` (``-inf`` for a particle of
        weight zero, which is never chosen; it must be a hard zero, see the module
        docstring). For batches of filters use ``jax.vmap``.
      num: number of offspring ``M`` (default ``N``).
      method: ``"multinomial"`` (i.i.d. draws), ``"stratified"`` (one uniform per
        stratum ``[i/M, (i+1)/M)``) or ``"systematic"`` (one shared uniform). All three
        give every particle ``M w̄_j`` expected offspring, which is all the derivation
        needs; the last two have lower variance.

    Returns:
      ``(indices, new_log_weights)``: int32 ancestor indices of shape ``(M,)`` and float
      log-weights of shape ``(M,)``. If every weight is zero, the indices are
      ``arange(M) % N`` and every new log-weight is ``-inf`` (``Ẑ = 0``, derivative 0); a
      NaN or ``+inf`` log-weight gives NaN log-weights.
    """
    check_key(key, "je.resample")
    if method not in _METHODS:
        raise ValueError(f"je.resample: unknown `method` {method!r}; expected one of {_METHODS}")
    lw = _float(log_weights, "je.resample", "log_weights")
    if lw.ndim != 1 or lw.shape[0] == 0:
        raise ValueError(
            f"je.resample: `log_weights` must have shape (N,) with N >= 1, got {lw.shape} "
            "(use jax.vmap for a batch of particle systems)"
        )
    n = lw.shape[0]
    if num is None:
        num = n
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"je.resample: `num` must be a positive int, got {num!r}")
    zero = jnp.all(lw == -jnp.inf)
    # all-zero system: compute on zeros so that no NaN reaches any derivative (where-trap)
    lw_safe = jnp.where(zero, jnp.zeros_like(lw), lw)
    logits = jax.lax.stop_gradient(lw_safe)
    idx = _ancestors(key, logits, num, method)
    idx = jnp.where(zero, jnp.arange(num, dtype=jnp.int32) % n, idx)
    total = jax.nn.logsumexp(lw_safe)
    log_norm = lw_safe[idx] - total
    new = (total - math.log(num)) + new_log_weight(log_norm)
    new = jnp.where(zero, jnp.full_like(new, -jnp.inf), new)
    return idx, new
