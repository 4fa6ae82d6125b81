"""The stochastic Game of Life (StochasticAD.jl's example): derivative in the initial density.

Model (as in the Game of Life tutorial of StochasticAD.jl, Arya et al. 2022). A square board
of ``n x n`` cells surrounded by a border of dead cells that never changes; each cell's
neighbours are the 4 adjacent cells (up, down, left, right). At the start every cell is
alive with probability ``p``, independently. Each of ``T`` turns updates all cells at once
from the previous board: the deterministic rules

    dead and 3 neighbours alive -> alive,     alive and 0, 1 or 4 neighbours alive -> dead,

(otherwise unchanged) are followed with probability ``1 - theta`` and the opposite happens
with probability ``theta``; i.e. each cell flips with probability ``1 - theta`` when the
rule says it changes and ``theta`` when it says it stays (``theta = 0.1``). The output is the
number of alive cells after ``T`` turns, ``X_T``.

What is differentiated. ``d/dp E[X_T]`` at ``p = 0.5`` (only the initial board depends on
``p``; every draw is a Bernoulli, so pathwise differentiation does not apply). Estimators:
``stochastic_ad`` (inverse-CDF coupling: one flipped initial cell, the game replayed with
the same uniforms, the pruned estimator of Arya et al.), ``score_function("leave_one_out")``
and ``finite_difference`` with common random numbers (step ``h = 0.05``: it estimates
``(E(p + h) - E(p - h)) / 2h``; ``E`` is a polynomial in ``p``, so this differs from the
derivative by O(h^2)).

Exact and reference values.

* Small board (3 x 3, ``T = 5``, ``2^9 = 512`` boards): exact, by an independent method. Given a
  board ``x``, the cells flip independently, so the transition matrix
  ``P[x, y] = prod_c P(y_c | x)`` is built by enumeration in NumPy float64;
  ``E_p[X_T] = pi_p P^T c`` with ``pi_p(x) = p^{|x|} (1 - p)^{9 - |x|}`` and ``c(y) = |y|``,
  and the derivative is ``(d pi_p / dp) P^T c`` with
  ``d pi_p(x) / dp = pi_p(x) (|x| / p - (9 - |x|) / (1 - p))``; the central difference of
  ``E_p`` at step ``h`` is computed the same way (what CRN finite differences estimate).
* Full mode also runs the tutorial's board (25 x 25, ``T = 10``), where enumeration is
  impossible (``2^625`` boards); its reference is a long independent run of the score
  function estimator (unbiased, its own standard error reported), against which the
  other estimators are compared (z-scores with both standard errors).

Figures: the estimate distributions (``je.compare``'s histograms) on the small board (and
on the 25 x 25 board in full mode), and snapshots of one game (12 x 12 for 5 turns in fast
mode, 25 x 25 for 10 turns in full mode).

Measured (full mode, 20,000 samples each on the 25 x 25 board): the per-sample standard
deviations are about 2,000 (stochastic_ad), 700 (score function, leave-one-out) and 150
(CRN finite differences, biased by O(h^2)) for a derivative of about 153: one initial cell
flipped changes the whole later game (every later draw is coupled through the same uniform,
and a cell whose flip probability moves between ``theta`` and ``1 - theta`` flips with
probability ``1 - 2 theta``), and the pruned estimator multiplies that change by the total
jump rate of the 625 initial cells.
"""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from _common import figure, progress, run_cli

import jaxestim as je
from jaxestim import distributions as D

THETA, P0, FD_STEP = 0.1, 0.5, 0.05
CHANGES_DEAD = np.array([0, 0, 0, 1, 0], bool)  # rule says "change" for 0..4 neighbours
CHANGES_ALIVE = np.array([1, 1, 0, 0, 1], bool)


def flip_probs(board, neighbours):
    """Per-cell flip probability: 1 - theta where the rule changes the cell, theta elsewhere."""
    changes = jnp.where(
        board > 0.5,
        jnp.asarray(CHANGES_ALIVE)[neighbours.astype(jnp.int32)],
        jnp.asarray(CHANGES_DEAD)[neighbours.astype(jnp.int32)],
    )
    return jnp.where(changes, 1.0 - THETA, THETA)


def make_game(n: int, turns: int, history: bool = False):
    """``game(key, p)``: the number of alive cells after ``turns`` turns on an n x n board."""

    def game(key, p):
        k0, kt = jax.random.split(key)
        board = je.sample(k0, D.Bernoulli(probs=p), (n, n))

        def turn(board, k):
            padded = jnp.pad(board, 1)  # the dead border
            nb = padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
            flip = je.sample(k, D.Bernoulli(probs=flip_probs(board, nb)))
            board = board + (1.0 - 2.0 * board) * flip
            return board, (board if history else None)

        board, boards = je.scan(turn, board, jax.random.split(kt, turns))
        return (jnp.sum(board), boards) if history else jnp.sum(board)

    return game


def exact_small(n: int, turns: int, p: float, h: float = FD_STEP):
    """E[X_T], d/dp E[X_T] and the central difference of step h, by enumerating 2^(n*n) boards."""
    cells = n * n
    states = (np.arange(2**cells)[:, None] >> np.arange(cells)[None, :]) & 1  # (S, cells)
    boards = states.reshape(-1, n, n).astype(np.float64)
    padded = np.pad(boards, ((0, 0), (1, 1), (1, 1)))
    nb = padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:]
    nb = nb.reshape(-1, cells).astype(int)
    changes = np.where(states == 1, CHANGES_ALIVE[nb], CHANGES_DEAD[nb])
    f = np.where(changes, 1 - THETA, THETA)  # (S, cells) flip probabilities from board x
    # P[x, x XOR z] = prod_c f^z (1 - f)^(1 - z) over flip patterns z
    logp = states @ np.log(f).T + (1 - states) @ np.log1p(-f).T  # (z, x)
    S = 2**cells
    P = np.zeros((S, S))
    idx = np.arange(S)
    for z in range(S):
        P[idx, idx ^ z] = np.exp(logp[z])
    v = states.sum(1).astype(np.float64)  # alive count
    for _ in range(turns):
        v = P @ v  # v(x) = E[X_T | X_t = x]
    k = states.sum(1)

    def pi(q):
        return q**k * (1 - q) ** (cells - k)

    dpi = pi(p) * (k / p - (cells - k) / (1 - p))
    return float(pi(p) @ v), float(dpi @ v), float((pi(p + h) - pi(p - h)) @ v / (2 * h))


def estimators():
    return {
        "stochastic_ad": je.stochastic_ad(),
        "score_function(loo)": je.score_function("leave_one_out"),
        f"finite_difference(h={FD_STEP}, CRN)": je.finite_difference(step=FD_STEP),
    }


def main(fast: bool, out: Path) -> dict:
    p = jnp.float32(P0)
    small_n, small_t = 3, 5
    mean_s, exact_s, fd_target = exact_small(small_n, small_t, P0)
    print(
        f"3x3 board, T={small_t}: E[X_T] = {mean_s:.5f}, d/dp = {exact_s:.5f} (exact), "
        f"central difference h={FD_STEP}: {fd_target:.5f}"
    )
    report = je.compare(
        make_game(small_n, small_t),
        p,
        estimators(),
        key=jax.random.key(0),
        num_samples=4000 if fast else 200_000,
        exact=exact_s,
        chunk_size=None if fast else 50_000,
        repeats=1,
        title=f"d/dp E[alive cells], {small_n}x{small_n} board, T={small_t}",
    )
    print(report)
    figure(out, "game_of_life", report.plot())
    res = {"small_exact": exact_s, "small_fd_target": fd_target}
    for name, key in zip(estimators(), ("sad", "loo", "fd"), strict=True):
        res[f"small_{key}_mean"] = float(report[name].mean_flat[0])
        res[f"small_{key}_se"] = float(report[name].se_flat[0])

    import matplotlib.pyplot as plt

    n, turns = (12, 5) if fast else (25, 10)
    _, boards = jax.jit(make_game(n, turns, history=True))(jax.random.key(3), p)
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
    for ax, t in zip(axes, (0, turns // 2, turns - 1), strict=True):
        ax.imshow(np.asarray(boards[t]), cmap="Greys", vmin=0, vmax=1)
        ax.set(title=f"after turn {t + 1}: {int(boards[t].sum())} alive", xticks=[], yticks=[])
    fig.suptitle(f"one {n}x{n} stochastic Game of Life, p = {P0}, theta = {THETA}")
    figure(out, "game_of_life_board", fig)

    if not fast:  # the tutorial's board: reference by a long score-function run
        big = make_game(25, 10)
        chunks, per = 8, 25_000
        g = jax.jit(je.grad_samples(big, je.score_function("leave_one_out"), num_samples=per))
        ref = np.concatenate(
            [
                np.asarray(g(k, p), np.float64)
                for k in progress(jax.random.split(jax.random.key(99), chunks), chunks, "reference")
            ]
        )
        ref_mean, ref_se = float(ref.mean()), float(ref.std(ddof=1) / math.sqrt(ref.size))
        print(
            f"25x25, T=10: reference (score function, {ref.size} samples) "
            f"d/dp E = {ref_mean:.3f} ± {ref_se:.3f}"
        )
        big_report = je.compare(
            big,
            p,
            estimators(),
            key=jax.random.key(1),
            num_samples=20_000,
            chunk_size=5_000,
            repeats=1,
            title="d/dp E[alive cells], 25x25 board, T=10",
        )
        print(big_report)
        figure(out, "game_of_life_big", big_report.plot())
        res.update(big_reference=ref_mean, big_reference_se=ref_se)
        for name, key in zip(estimators(), ("sad", "loo", "fd"), strict=True):
            m, se = float(big_report[name].mean_flat[0]), float(big_report[name].se_flat[0])
            res[f"big_{key}_mean"], res[f"big_{key}_se"] = m, se
            res[f"big_{key}_z"] = (m - ref_mean) / math.hypot(se, ref_se)
    return res


if __name__ == "__main__":
    run_cli(main, __doc__)
