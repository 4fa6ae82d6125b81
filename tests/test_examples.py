"""The gallery examples (``examples/*.py``) run in their fast mode and reproduce their references.

Each example's ``main(fast=True, out=...)`` returns the figures it measured; the checks here
are the example's own claims (estimators within 5 SE of the exact or reference gradient, the
calibration or training loop improving the exact objective, a figure written).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str):
    sys.path.insert(0, str(EXAMPLES))
    try:
        spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(EXAMPLES))
    return mod


def run(name: str, tmp_path: Path) -> dict:
    res = load(name).main(fast=True, out=tmp_path)
    assert list(tmp_path.glob("*.png")), f"{name} wrote no figure"
    return res


def test_every_example_is_tested():
    names = {p.stem for p in EXAMPLES.glob("[a-z]*.py")}
    tested = {n[len("test_") :] for n in globals() if n.startswith("test_") and n[5:] in names}
    assert names and names == tested, names - tested


def test_policy_gradient(tmp_path):
    res = run("policy_gradient", tmp_path)
    # every unbiased estimator agrees with the exact (dynamic-programming) policy gradient on
    # all 64 coordinates, at a standard error small against |grad J| = 0.02
    for name in res["unbiased"]:
        assert res[name]["max |z|"] < 5 and res[name]["max SE"] < 0.01, (name, res[name])
    # the relaxations are biased here: Gumbel-softmax's mean is far from the exact gradient
    assert res["gumbel_softmax (τ=0.5)"]["max |z|"] > 10
    # training with REINFORCE + leave-one-out improves the exact expected return
    assert res["J after training (REINFORCE + LOO)"] > res["J(theta0) exact"] + 0.15


def test_bayesian_logistic_regression(tmp_path):
    res = run("bayesian_logistic_regression", tmp_path)
    for when in ("start", "end"):
        for name, r in res[when].items():
            # every estimator within 5 SE of the quadrature gradient on all 62 coordinates
            assert r["max |z|"] < 5, (when, name, r)
        # the score function is the noisiest; measure-valued is far below it (Mohamed et al.)
        sf, mv = res[when]["score_function (LOO)"], res[when]["measure_valued (coupled)"]
        assert mv["mean var (mu)"] < 0.1 * sf["mean var (mu)"], res[when]
    # a bound on every estimator's standard error, so the 5 SE checks above can fail
    # (fast mode measures 0.50 / 5.8 / 0.89 at the start, 0.11 / 0.45 / 0.11 at the end)
    se_max = {
        "start": {"pathwise": 1.0, "score_function (LOO)": 10.0, "measure_valued (coupled)": 1.5},
        "end": {"pathwise": 0.3, "score_function (LOO)": 0.8, "measure_valued (coupled)": 0.2},
    }
    for when, bounds in se_max.items():
        for name, bound in bounds.items():
            assert res[when][name]["max SE"] < bound, (when, name, res[when][name])
    assert res["ELBO end"] > res["ELBO start"] + 50  # exact ELBO: -134 -> about -30


def test_inventory(tmp_path):
    res = run("inventory", tmp_path)
    r = res["stochastic_ad"]  # fast mode compares only stochastic_ad (compile time)
    assert abs(r["z"]) < 5 and r["SE"] < 0.3, r  # exact dJ/dp = 6.55
    assert res["pathwise"].startswith("EstimatorError")  # Poisson demand: no silent zero
    # Adam + stochastic_ad moves the price from 1.5 towards the exact optimum (2.85)
    assert res["J after training exact"] > res["J(1.5) exact"] + 2.5
    assert abs(res["price after training"] - res["best price (grid)"]) < 0.6


def _within(mean, se, exact, se_max, z=5.0):
    """|mean - exact| < z SE coordinatewise, with every SE below its bound (the check has power)."""
    mean, se, exact = (np.asarray(v, np.float64) for v in (mean, se, exact))
    assert np.all(se < se_max), f"standard error {se} exceeds the bound {se_max}"
    assert np.all(np.abs(mean - exact) < z * se), (mean, exact, se)


def test_sir_calibration(tmp_path):
    r = run("sir_calibration", tmp_path)
    # the unbiased estimators agree with the DP's exact gradient
    _within(r["sad_mean"], r["sad_se"], r["exact_grad"], [0.6, 0.6])
    if "loo_mean" in r:  # full mode only (each Binomial program compiles for seconds)
        _within(r["loo_mean"], r["loo_se"], r["exact_grad"], [0.9, 0.9])
    # CRN finite differences (full mode only) estimate the DP's central difference of step h
    if "fd_mean" in r:
        _within(r["fd_mean"], r["fd_se"], r["fd_target"], [0.8, 0.8])
    # the adam loop reduces the exact loss to near the loss at the true rates
    assert r["loss_after"] < 0.3 * r["loss_before"], r
    assert r["loss_after"] < 1.5 * r["loss_true"], r


def test_particle_filter(tmp_path):
    r = run("particle_filter", tmp_path)
    exact = r["exact"]
    ratio = np.abs(np.asarray(r["new_weight_mean"]) - exact)
    se = np.asarray(r["new_weight_se"])
    # grad log Z-hat is a ratio estimator: consistent, with a bias that shrinks with m ...
    assert np.all(np.diff(ratio) < 0), ratio
    assert ratio[0] > 5 * se[0], (ratio, se)  # ... visible at the smallest m
    _within(r["new_weight_mean"][-1], se[-1], exact, 0.03)  # ... and gone at the largest
    # grad (Z-hat / Z_ref) is unbiased at every m
    _within(r["unbiased_mean"], r["unbiased_se"], [exact] * len(r["particles"]), 0.1)
    # stop-gradient resampling is biased, and more particles do not fix it
    sg = np.abs(np.asarray(r["stop_gradient_mean"]) - exact)
    assert sg[-1] > 10 * r["stop_gradient_se"][-1] and sg[-1] > 5 * ratio[-1], sg
    # je.compare: no discrete site is left, so stochastic_ad equals pathwise
    assert abs(r["compare_pathwise_mean"] - r["compare_stochastic_ad_mean"]) < 1e-4


def test_game_of_life(tmp_path):
    r = run("game_of_life", tmp_path)
    # 3x3 board: exact by enumerating the 512 boards
    _within(r["small_sad_mean"], r["small_sad_se"], r["small_exact"], 0.2)
    _within(r["small_loo_mean"], r["small_loo_se"], r["small_exact"], 0.2)
    # CRN finite differences estimate the exact central difference of step h
    _within(r["small_fd_mean"], r["small_fd_se"], r["small_fd_target"], 0.2)
