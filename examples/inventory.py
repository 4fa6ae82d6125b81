r"""Pricing a perishable season: an inventory model with a random horizon (``je.while_loop``).

**Problem.** A shop sells one product through a season of random length: after each day the
season goes on with probability ``q = 0.7`` (a ``Bernoulli`` site, so the number of days is
geometric, mean 3.3), which the program runs as a ``je.while_loop``. Each day the demand is
``D ~ Poisson(lambda(p))`` with ``lambda(p) = 6 exp(-p / 2)`` at the price ``p`` (the
parameter); the shop sells ``min(D, h)`` of its ``h`` units on hand, pays ``c = 1`` per unit
to replace what it sold (a base-stock policy: the order arriving overnight brings the stock
back to ``S = 8``) and ``0.1`` per unsold unit held overnight. The objective is the expected
season profit ``J(p) = E[sum_days (p - c) sales - 0.1 (h - sales)]``, to be maximized over
``p``. Higher prices sell less but earn more per unit; the stock limit caps sales.

**Exact gradient.** The horizon is independent of the stock, so
``J = sum_t q^t E[r_t]``; the stock ``h_t = S - sales_{t-1}`` is a Markov chain on
``{0..S}`` whose law is propagated exactly (Poisson pmf and tail), a differentiable function
of ``p`` in float64 (the loop's bound is 60 days, where ``q^60 = 5e-10``: a longer season,
which the program would report as NaN, never occurs in practice); ``jax.grad`` of it is
the exact ``dJ/dp``.

**Estimators compared**: StochasticAD (the Poisson jumps through ``min(D, h)`` and the loop),
the score function with a leave-one-out baseline, central finite differences with common
random numbers (biased), and pathwise, which raises: the demand is discrete. **Training**:
Adam on ``-J`` with StochasticAD under ``jax.jit``; the figure shows the exact ``J(p)`` curve
with the optimizer's path.

Run: ``python examples/inventory.py [--fast] [--out DIR]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxestim as je
from jaxestim import distributions as D

try:
    from _common import figure, progress, run_cli
except ImportError:  # imported as examples.inventory
    from examples._common import figure, progress, run_cli

STOCK, CONTINUE, UNIT_COST, HOLD = 8, 0.7, 1.0, 0.1
MAX_DAYS = 60


def demand_rate(price: jax.Array) -> jax.Array:
    return 6.0 * jnp.exp(-0.5 * price)


def season(key: jax.Array, params: dict) -> jax.Array:
    """One season's profit (a random number of days, run by ``je.while_loop``)."""
    price = params["price"]
    lam = demand_rate(price)

    def body(carry, k):
        on_hand, profit, _ = carry
        k_demand, k_season = k.split(2)  # a je.while_loop(key=) iteration key
        demand = je.sample(k_demand, D.Poisson(lam))
        sales = jnp.minimum(demand, on_hand)
        profit = profit + (price - UNIT_COST) * sales - HOLD * (on_hand - sales)
        goes_on = je.sample(k_season, D.Bernoulli(probs=CONTINUE)) > 0.5
        return STOCK - sales, profit, goes_on

    init = (jnp.asarray(float(STOCK)), jnp.zeros_like(price), jnp.asarray(True))
    _, profit, _ = je.while_loop(lambda c: c[2], body, init, max_iterations=MAX_DAYS, key=key)
    return profit


def exact_profit(price: jax.Array) -> jax.Array:
    """``J(price)`` by propagating the law of the stock on hand (differentiable)."""
    lam = demand_rate(price)
    k = jnp.arange(STOCK + 1)
    pmf = jnp.exp(jax.scipy.stats.poisson.logpmf(k, lam))  # P(D = k), k = 0..S
    # P(sales = k | h) = P(D = k) for k < h, P(D >= h) for k = h, 0 above
    below = jnp.tril(jnp.ones((STOCK + 1, STOCK + 1)), -1)  # [h, k] = 1 if k < h
    tail = 1.0 - jnp.cumsum(pmf) + pmf  # P(D >= h)
    p_sales = below * pmf[None, :] + jnp.diag(tail)  # (h, k)
    reward = (price - UNIT_COST) * k[None, :] - HOLD * (k[:, None] - k[None, :])
    day_reward = jnp.sum(p_sales * jnp.where(k[None, :] <= k[:, None], reward, 0.0), axis=1)
    move = p_sales[:, ::-1]  # next stock S - sales: column j is stock j

    def day(t, state):
        dist, total = state
        return dist @ move, total + CONTINUE**t * dist @ day_reward

    dist = jnp.zeros(STOCK + 1, price.dtype).at[STOCK].set(1.0)
    return jax.lax.fori_loop(0, MAX_DAYS, day, (dist, jnp.zeros((), price.dtype)))[1]


_exact = jax.jit(jax.value_and_grad(exact_profit))


def exact(price: float) -> tuple[float, float]:
    """``(J, dJ/dp)`` in float64."""
    with jax.enable_x64(True):
        v, g = _exact(jnp.asarray(price, jnp.float64))
        return float(v), float(g)


ESTIMATORS = {
    "stochastic_ad": je.stochastic_ad(),
    "score_function (LOO)": je.score_function("leave_one_out"),
    "finite_difference (CRN)": je.finite_difference(step=0.05),
}


def main(fast: bool = False, out: Path = Path("gallery-out")) -> dict[str, Any]:
    num_samples = 2000 if fast else 20000
    steps, batch = (12, 32) if fast else (150, 64)
    price0 = 1.5
    j0, g0 = exact(price0)
    results: dict[str, Any] = {"J(1.5) exact": j0, "dJ/dp(1.5) exact": g0}

    params = {"price": jnp.asarray(price0)}
    # the fast mode (make test) compares only stochastic_ad: each Poisson program in a
    # 60-step while loop takes seconds to compile
    ests = {n: e for n, e in ESTIMATORS.items() if not fast or n == "stochastic_ad"}
    rep = je.compare(season, params, ests, key=jax.random.key(0), num_samples=num_samples, exact=g0)
    for name in ests:
        r = rep[name]
        results[name] = {
            "mean": float(r.mean_flat[0]),
            "SE": float(r.se_flat[0]),
            "z": float(r.z_flat[0]),
            "per-sample var": float(r.std_flat[0] ** 2),
        }
    try:
        je.grad(season, je.pathwise(), num_samples=2)(jax.random.key(0), params)
        results["pathwise"] = "no error (unexpected)"
    except je.EstimatorError as e:
        results["pathwise"] = f"EstimatorError: {str(e)[:80]}..."

    opt = optax.adam(0.1)
    grad_fn = je.grad(lambda k, p: -season(k, p), je.stochastic_ad(), num_samples=batch)

    @jax.jit
    def step(p, s, k):
        g = grad_fn(k, p)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s

    state, path = opt.init(params), [price0]
    for k in progress(jax.random.split(jax.random.key(1), steps), steps, "adam"):
        params, state = step(params, state, k)
        path.append(float(params["price"]))
    grid = np.linspace(0.5, 6.0, 111)
    curve = np.array([exact(p)[0] for p in grid])
    results["best price (grid)"] = float(grid[np.argmax(curve)])
    results["J best (grid)"] = float(curve.max())
    results["price after training"] = path[-1]
    results["J after training exact"] = exact(path[-1])[0]

    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    ax.plot(grid, curve, color="k", label="exact J(p)")
    ax.plot(path, [exact(p)[0] for p in path], "o-", ms=3, label="Adam + stochastic_ad")
    ax.set_xlabel("price p")
    ax.set_ylabel("expected season profit")
    ax.legend()
    ax.set_title("Inventory with a geometric season (je.while_loop)")
    figure(out, "inventory", fig)
    return results


if __name__ == "__main__":
    run_cli(main, __doc__)
