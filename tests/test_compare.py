"""Tests of the research workflow: je.compare, je.sweep and the program gallery."""

import dataclasses
import json
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _stats import assert_unbiased
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure

import jaxestim as je
from jaxestim import distributions as D
from jaxestim._compare import (
    UNBIASEDNESS,
    ComparisonReport,
    Recommendation,
    SweepResult,
    compare,
    documented_unbiased,
    sweep,
)
from jaxestim._gallery import GALLERY, categorical_exact, random_walk_exact

KEY = jax.random.key(0)


def two_bern(key, theta):  # 2 Bernoulli(3 theta) + Bernoulli(theta); gradient 7
    k1, k2 = jax.random.split(key)
    a = je.sample(k1, D.Bernoulli(probs=3 * theta))
    return 2.0 * a + je.sample(k2, D.Bernoulli(probs=theta))


def gauss_theta(key, theta):  # gradient 8 theta + 3 theta^2
    return theta**2 * (4.0 + je.sample(key, D.Normal(theta, 2.0)))


def gauss_tree(key, params):  # E = a^2 + sum(b); gradient {a: 2a, b: ones}
    # pathwise per-sample gradient: {a: 2 z = 2a + 2 eps (std 2), b: 1 + eps' (std 1)}
    k1, k2 = jax.random.split(key)
    z = je.sample(k1, D.Normal(params["a"], 1.0))
    return z**2 - 1.0 + jnp.sum(params["b"] * (1.0 + je.sample(k2, D.Normal(0.0, 1.0))))


def bern_square(key, theta):
    """(x + theta)^2, x ~ Bernoulli(theta): E = theta + 3 theta^2, gradient 1 + 6 theta.

    Straight-through differentiates (x + theta)^2 as if dx/dtheta = 1: per sample
    4 (x + theta), whose mean is 8 theta (0.8 at theta = 0.1, exact 1.6) and whose std is
    4 sqrt(theta (1 - theta)) (1.2): biased, by 13 SE at N = 400.
    """
    x = je.sample(key, D.Bernoulli(probs=theta))
    return (x + theta) ** 2


ESTS = {
    "sf": je.score_function("leave_one_out"),
    "pathwise": je.pathwise(),
    "sad": je.stochastic_ad(),
}
N = 400


@pytest.fixture(scope="module")
def report():
    return compare(two_bern, 0.1, ESTS, key=KEY, num_samples=N, exact=7.0, repeats=1)


# ----------------------------------------------------------------------------- compare
def test_compare_statistics_match_grad_samples(report):
    assert isinstance(report, ComparisonReport)
    assert report.num_samples == N and report.num_coords == 1
    for name in ("sf",):  # one compilation; every estimator goes through the same code
        gs = jax.jit(je.grad_samples(two_bern, ESTS[name], num_samples=N))
        g = np.asarray(gs(KEY, 0.1), np.float64)
        r = report[name]
        assert r.applicable and r.samples.shape == (N, 1)
        np.testing.assert_allclose(r.samples[:, 0], g, rtol=1e-6, atol=1e-6)
        mean, std = g.mean(), g.std(ddof=1)
        np.testing.assert_allclose(r.mean_flat, [mean], rtol=1e-6)
        np.testing.assert_allclose(float(r.mean), mean, rtol=1e-5)
        np.testing.assert_allclose(r.std_flat, [std], rtol=1e-6)
        np.testing.assert_allclose(r.se_flat, [std / np.sqrt(N)], rtol=1e-6)
        np.testing.assert_allclose(r.std_rms, std, rtol=1e-6)
        np.testing.assert_allclose(r.bias_flat, [mean - 7.0], rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(r.z_flat, [(mean - 7.0) / (std / np.sqrt(N))], rtol=1e-5)
        assert r.compile_s > 0 and r.seconds_per_sample > 0
        np.testing.assert_allclose(
            r.work_normalized_variance, std**2 * r.seconds_per_sample, rtol=1e-6
        )
    # both estimators are unbiased: the z-scores are moderate
    assert abs(report["sf"].z_flat[0]) < 5 and abs(report["sad"].z_flat[0]) < 5
    assert report.best() in ("sf", "sad")


def test_compare_records_not_applicable(report):
    r = report["pathwise"]
    assert not r.applicable and r.mean_flat is None
    assert "pathwise" in r.message and "Bernoulli" in r.message
    assert set(report.applicable) == {"sf", "sad"}
    assert "not applicable" in str(report)


def test_compare_all_not_applicable_raises():
    with pytest.raises(je.EstimatorError, match="no estimator applies"):
        compare(two_bern, 0.1, {"pw": je.pathwise()}, key=KEY, num_samples=4)


def test_compare_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_samples"):
        compare(two_bern, 0.1, ESTS, key=KEY, num_samples=1)
    with pytest.raises(ValueError, match="estimators"):
        compare(two_bern, 0.1, {}, key=KEY, num_samples=4)


def test_report_printers(report):
    text = str(report)
    assert repr(report) == text
    for col in ("estimator", "mean", "std", "SE", "bias", "z", "compile s", "µs/sample"):
        assert col in text
    assert all(name in text for name in ESTS)
    md = report.to_markdown()
    rows = [line for line in md.splitlines() if line.startswith("|")]
    assert len(rows) == 2 + len(ESTS)  # header, separator, one per estimator
    assert rows[0].startswith("| estimator | mean |") and set(rows[1]) <= set("|-: ")
    assert sum(len(row.split("|")) for row in rows) == len(rows) * len(rows[0].split("|"))


def test_report_to_dict_is_json(report):
    d = report.to_dict()
    back = json.loads(json.dumps(d, allow_nan=False))
    assert back["num_samples"] == N and back["exact"] == [7.0]
    assert back["estimators"]["pathwise"]["applicable"] is False
    sf = back["estimators"]["sf"]
    assert isinstance(sf["mean"][0], float) and isinstance(sf["work_normalized_variance"], float)
    np.testing.assert_allclose(sf["se"][0], report["sf"].se_flat[0])


def _hist_axes(fig):
    return [ax for ax in fig.axes if ax.patches and "density" in ax.get_ylabel()]


def test_report_plot(report):
    fig = report.plot()
    assert isinstance(fig, Figure)
    # one panel per estimator plus the work-normalized variance panel
    assert len(fig.axes) == len(ESTS) + 1
    ax = fig.axes[0]
    assert "SE" in ax.get_title() and "sf" in ax.get_title()
    assert ax.get_xlabel() and ax.get_ylabel()
    labels = ax.get_legend_handles_labels()[1]
    assert any(label.startswith("exact") for label in labels)
    assert any(label.startswith("mean ± SE") for label in labels)
    assert f"N = {N}" in fig.get_suptitle()
    # histogram panels share the x axis, the density axis and the bins
    hists = _hist_axes(fig)
    assert [a.get_title().split("\n")[0] for a in hists] == ["sf", "sad"]
    h0, h1 = hists
    assert h0.get_shared_x_axes().joined(h0, h1) and h0.get_shared_y_axes().joined(h0, h1)
    np.testing.assert_array_equal(h0.patches[0].get_data().edges, h1.patches[0].get_data().edges)
    # the mean carries a ±1 SE error bar, as wide as the estimator's SE
    for a, name in zip(hists, ["sf", "sad"], strict=True):
        (bar,) = [c for c in a.containers if isinstance(c, ErrorbarContainer)]
        (segment,) = bar.lines[2][0].get_segments()
        np.testing.assert_allclose(np.ptp(segment[:, 0]), 2 * report[name].se_flat[0], rtol=1e-6)
    # the not-applicable panel is not shared (its blank ticks would hide the others')
    na = next(a for a in fig.axes if "not applicable" in a.get_title())
    assert not h0.get_shared_x_axes().joined(h0, na)
    # the work-normalized variance panel: one bar per applicable estimator, the values
    work = fig.axes[-1]
    assert "work-normalized variance" in work.get_xlabel()
    widths = [p.get_width() for p in work.patches]
    expected = [report[k].work_normalized_variance for k in ("sf", "sad")]
    np.testing.assert_allclose(widths, expected, rtol=1e-12)
    assert f"recommended: {report.best()}" in work.get_title()
    assert len(report.plot(work=False).axes) == len(ESTS)
    # zooming in: the bins span xlim and each legend counts the samples outside it
    fig = report.plot(xlim=(0.0, 10.0), bins=10)
    h0 = _hist_axes(fig)[0]
    np.testing.assert_allclose(h0.patches[0].get_data().edges, np.linspace(0, 10, 11))
    x = report["sf"].samples[:, 0]
    n_out = int(np.sum((x < 0) | (x > 10)))
    assert n_out > 0 and f"({n_out} outside the range)" in h0.get_legend_handles_labels()[1][0]


def test_compare_pytree_params_and_zero_variance():
    params = {"a": jnp.asarray(0.5), "b": jnp.asarray([1.0, -2.0])}
    exact = {"a": 1.0, "b": np.ones(2)}
    rep = compare(
        gauss_tree,
        params,
        {"pathwise": je.pathwise(), "st": je.straight_through()},
        key=KEY,
        num_samples=64,
        exact=exact,
        repeats=1,
    )
    assert rep.num_coords == 3
    r = rep["pathwise"]
    assert set(r.mean) == {"a", "b"} and r.mean["b"].shape == (2,)
    g = jax.jit(je.grad_samples(gauss_tree, je.pathwise(), num_samples=64))(KEY, params)
    np.testing.assert_allclose(r.mean["b"], np.mean(np.asarray(g["b"]), 0), rtol=1e-5)
    np.testing.assert_allclose(r.std_rms, np.sqrt(np.mean(r.std_flat**2)))
    assert "RMS std" in rep.table(coord=1) and "coordinate 1" in rep.table(coord=1)
    assert rep.coord_names == ("['a']", "['b'][0]", "['b'][1]")
    assert "θ['b'][0]" in rep.table(coord="['b'][0]")
    fig = rep.plot(coord="['b'][1]")
    assert len(fig.axes) == 3 and "∂θ['b'][1]" in fig.axes[0].get_xlabel()
    assert rep.to_dict()["coord_names"] == list(rep.coord_names)
    with pytest.raises(IndexError):
        rep.table(coord=3)
    with pytest.raises(IndexError):
        rep.table(coord="['c']")
    # a deterministic estimate: SE = 0 gives z = 0 (no bias) or +-inf, JSON-safe
    rep2 = compare(
        lambda k, t: 2.0 * t, 1.0, {"pw": je.pathwise()}, key=KEY, num_samples=4, exact=3.0
    )
    assert rep2["pw"].se_flat[0] == 0 and rep2["pw"].z_flat[0] == -np.inf
    back = json.loads(json.dumps(rep2.to_dict(), allow_nan=False))
    assert back["estimators"]["pw"]["z"] == [None]
    assert back["recommendation"]["name"] is None


# ----------------------------------------------------------------------------- best
@pytest.fixture(scope="module")
def bern_report():
    ests = {
        "st": je.straight_through(),
        "sf": je.score_function("leave_one_out"),
        "sad": je.stochastic_ad(),
        "fd": je.finite_difference(step=0.01),
    }
    return compare(bern_square, 0.1, ests, key=KEY, num_samples=N, exact=1.6, repeats=1)


def test_best_with_exact_excludes_biased_estimator(bern_report):
    rep = bern_report
    # the estimates against their closed forms (independent of jaxestim): straight-through
    # converges to 8 theta = 0.8, the unbiased estimators to 1 + 6 theta = 1.6
    assert_unbiased(rep["st"].samples, 0.8, se_max=0.08)
    assert_unbiased(rep["sf"].samples, 1.6, se_max=0.3)
    assert_unbiased(rep["sad"].samples, 1.6, se_max=0.05)
    rec = rep.recommend()
    assert isinstance(rec, Recommendation)
    assert "st" in rec.excluded and "st" not in rec.ranking
    assert "SE from the exact value" in rec.excluded["st"] and "-0.8" in rec.excluded["st"]
    assert {"sf", "sad"} <= set(rec.ranking)
    # ranked by work-normalized variance; best() is the first of the ranking
    wnv = [rep[k].work_normalized_variance for k in rec.ranking]
    assert wnv == sorted(wnv)
    assert rep.best() == rec.name == rec.ranking[0]
    assert "recommended: " + rec.name in str(rec) and "st excluded: bias" in str(rec)
    # finite differences are biased in general: never ranked, whatever their z-score
    assert "fd" not in rec.ranking and "finite_difference is biased" in rec.excluded["fd"]
    # straight-through is documented biased: not ranked even with a very loose threshold
    assert "straight_through is biased" in rep.recommend(z_threshold=20).excluded["st"]
    with pytest.raises(ValueError, match="z_threshold"):
        rep.recommend(z_threshold=-1)


def test_recommend_skips_a_biased_or_inconsistent_winner(bern_report):
    rep = dataclasses.replace(bern_report)
    exact, sf = 1.6, bern_report["sf"]

    def fake(name, z, wnv):  # sf's spread, the mean z SE from the exact value
        mean = np.asarray([exact + z * sf.se_flat[0]])
        return dataclasses.replace(
            sf, name=name, estimator=bern_report[name].estimator, mean_flat=mean,
            bias_flat=mean - exact, z_flat=np.asarray([z]), work_normalized_variance=wnv,
        )  # fmt: skip

    rep.results = dict(bern_report.results)
    # finite differences with the smallest work-normalized variance and |z| = 0.5: biased
    # (O(h^2)) whatever the z-score, so not ranked
    rep.results["fd"] = fake("fd", 0.5, 1e-12)
    # an unbiased estimator 4 SE from the exact value: inconsistent at the 3 SE default
    rep.results["sad"] = fake("sad", 4.0, 1e-11)
    rec = rep.recommend()
    assert rec.name == "sf" and rec.ranking == ("sf",)
    assert "finite_difference is biased" in rec.excluded["fd"]
    assert "within 3 SE" in rec.excluded["fd"] and "not by zero" in rec.excluded["fd"]
    assert "is 4 SE from the exact value (threshold 3 SE)" in rec.excluded["sad"]
    assert "within 3 SE" in rec.criterion and "documented biased" in rec.criterion
    assert rep.best() == "sf"
    # a looser threshold admits the 4 SE estimate, never the biased one
    loose = rep.recommend(z_threshold=5)
    assert loose.name == "sad" and "fd" in loose.excluded
    # an estimator the library knows nothing about is judged by the consistency check alone
    mystery = dataclasses.replace(rep["sf"], name="mystery", estimator=SimpleNamespace(name="m"))
    rep.results["mystery"] = mystery
    assert "judged by this check alone" in rep.recommend().included["mystery"]


def test_best_without_exact_ranks_documented_unbiased_only(bern_report):
    rep = dataclasses.replace(bern_report, exact_flat=None)
    rep.results = dict(rep.results)
    rep.results["mystery"] = dataclasses.replace(
        rep["sad"], name="mystery", estimator=SimpleNamespace(name="mystery")
    )
    rec = rep.recommend()
    assert set(rec.ranking) == {"sf", "sad"}
    assert "straight_through is biased" in rec.excluded["st"]
    assert "O(h²)" in rec.excluded["fd"]
    assert "not known to be unbiased" in rec.excluded["mystery"]
    assert "documented unbiased" in rec.criterion
    assert rep.best() in ("sf", "sad")
    # the mapping itself
    for name in ("pathwise", "score_function", "auto", "stochastic_ad"):
        assert UNBIASEDNESS[name][0]
    for name in ("finite_difference", "gumbel_softmax", "straight_through"):
        assert not UNBIASEDNESS[name][0]
    assert documented_unbiased(je.score_function(3.0))[0]
    assert documented_unbiased(je.auto())[0]
    assert not documented_unbiased(je.gumbel_softmax(0.1, hard=True))[0]
    assert not documented_unbiased(object())[0]


def test_best_no_qualifier_and_zero_variance():
    # f = 2 theta: the pathwise estimate is exactly 2 in every sample (SE = 0)
    rep = compare(lambda k, t: 2.0 * t, 1.0, {"pw": je.pathwise()}, key=KEY, num_samples=4,
                  exact=3.0, repeats=1)  # fmt: skip
    rec = rep.recommend()
    assert rec.name is None and rec.ranking == ()
    assert "zero-variance" in rec.excluded["pw"] and "float tolerance" in rec.excluded["pw"]
    assert str(rec).startswith("no estimator qualifies")
    with pytest.raises(ValueError, match="no estimator qualifies"):
        rep.best()
    # a zero-SE estimate qualifies when it equals the exact value to float tolerance only
    for exact, ok in [(2.0, True), (2.0 + 1e-6, True), (2.001, False)]:
        r = dataclasses.replace(rep, exact_flat=np.asarray([exact]))
        assert (r.recommend().name == "pw") is ok, exact
    assert "zero variance" in dataclasses.replace(rep, exact_flat=np.asarray([2.0])).recommend(
    ).included["pw"]  # fmt: skip
    # a non-finite mean never qualifies (nan used to pass as z = 0)
    bad = dataclasses.replace(rep, exact_flat=np.asarray([2.0]))
    bad.results = {"pw": dataclasses.replace(rep["pw"], mean_flat=np.asarray([np.nan]))}
    assert "non-finite" in bad.recommend().excluded["pw"]
    # not-applicable estimators are excluded with their message
    rep3 = compare(two_bern, 0.1, {"pw": je.pathwise(), "st": je.straight_through()}, key=KEY,
                   num_samples=4, exact=7.0, repeats=1)  # fmt: skip
    rec3 = rep3.recommend()
    assert rec3.excluded["pw"].startswith("not applicable") and rec3.name == "st"


# ----------------------------------------------------------------------------- sweep
def test_sweep_params_grid_matches_grad_loop():
    grid = jnp.asarray([0.5, 1.0, 2.0])
    est = je.pathwise()
    res = sweep(
        gauss_theta,
        grid,
        estimator=est,
        key=KEY,
        num_samples=200,
        exact_fn=lambda t: 8 * t + 3 * t**2,
    )
    assert isinstance(res, SweepResult) and res.mean.shape == (3,)
    g = jax.jit(je.grad(gauss_theta, est, num_samples=200))
    loop = [float(g(KEY, t)) for t in grid]
    np.testing.assert_allclose(res.mean, loop, rtol=1e-5)
    exact = 8 * np.asarray(grid) + 3 * np.asarray(grid) ** 2
    np.testing.assert_allclose(res.bias, res.mean - exact, rtol=1e-6)
    assert np.all(np.abs(res.bias) < 5 * res.se)
    fig = res.plot()
    assert isinstance(fig, Figure) and fig.axes[0].get_xlabel() == "θ"


def test_sweep_temperature_matches_gumbel_loop():
    temps = [0.1, 0.5, 2.0]
    res = sweep(
        two_bern,
        estimator=je.gumbel_softmax(),
        key=KEY,
        num_samples=300,
        params=0.1,
        hyper=("temperature", temps),
        exact_fn=lambda t: 7.0,
    )
    for i, t in [(0, temps[0]), (2, temps[2])]:
        gs = je.grad_samples(two_bern, je.gumbel_softmax(t), num_samples=300)
        g = np.asarray(jax.jit(gs)(KEY, 0.1))
        np.testing.assert_allclose(res.mean[i], g.mean(), rtol=1e-4)
        np.testing.assert_allclose(res.std[i], g.std(ddof=1), rtol=1e-4)
    np.testing.assert_allclose(res.bias, res.mean - 7.0)
    # the relaxation's bias grows with the temperature
    assert abs(res.bias[2]) > abs(res.bias[0])
    fig = res.plot()
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "temperature"
    assert ax.get_legend_handles_labels()[1] == ["abs_bias ± SE", "std ± SE"]
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 2 and all(c.has_yerr for c in bars)
    assert "N = 300 samples per point" in ax.get_title()


def test_sweep_both_axes_and_num_samples_loop():
    res = sweep(
        gauss_theta,
        jnp.asarray([1.0, 2.0]),
        estimator=je.finite_difference(),
        key=KEY,
        num_samples=16,
        hyper=("step", [0.1, 0.01]),
    )
    assert res.mean.shape == (2, 2) and res.std.shape == (2, 2)
    assert isinstance(res.plot(), Figure)
    res_n = sweep(
        gauss_theta,
        estimator=je.pathwise(),
        key=KEY,
        num_samples=2,
        params=2.0,
        hyper=("num_samples", [8, 32]),
    )
    g = jax.jit(je.grad(gauss_theta, je.pathwise(), num_samples=32))(KEY, 2.0)
    np.testing.assert_allclose(res_n.mean[1], g, rtol=1e-5)
    np.testing.assert_allclose(res_n.se, res_n.std / np.sqrt([8, 32]))
    json.dumps(res_n.to_dict(), allow_nan=False)
    # the num_samples sweep plots the standard error of the mean against N, with bars,
    # and its title says so (not "N = 32 samples per point")
    ax = res_n.plot().axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert ax.get_xlabel().startswith("N")
    title = ax.get_title()
    assert "se of ∂E[f]/∂θ vs N" in title and "N = 8…32" in title
    assert "samples per point, N = 8" in title and "N = 32 samples" not in title
    (bar,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    np.testing.assert_allclose(bar.lines[0].get_ydata(), res_n.se)
    np.testing.assert_allclose(bar.lines[0].get_xdata(), [8, 32])
    with pytest.raises(ValueError, match="no field"):
        sweep(gauss_theta, estimator=je.pathwise(), key=KEY, num_samples=4, params=1.0,
              hyper=("temperature", [1.0]))  # fmt: skip


def test_sweep_dict_params_and_dict_grid():
    # gauss_tree: pathwise per-sample gradient {a: 2a + 2 eps (std 2), b: 1 + eps' (std 1)};
    # exact gradient {a: 2a, b: (1, 1)} for every b
    grid = {"a": [0.5, 1.0, 2.0], "b": jnp.asarray([[1.0, -2.0], [0.0, 0.0], [3.0, 1.0]])}
    n = 400
    res = sweep(gauss_tree, grid, estimator=je.pathwise(), key=KEY, num_samples=n,
                exact_fn=lambda p: {"a": 2.0 * p["a"], "b": np.ones(2)})  # fmt: skip
    assert res.coord_names == ("['a']", "['b'][0]", "['b'][1]")
    assert res.mean["a"].shape == (3,) and res.mean["b"].shape == (3, 2)
    assert res.mean_flat.shape == (3, 3) and res.grid_flat.shape == (3, 3)
    np.testing.assert_allclose(res.grid_flat[:, 0], [0.5, 1.0, 2.0])
    np.testing.assert_allclose(res.exact["a"], [1.0, 2.0, 4.0])
    np.testing.assert_allclose(res.exact["b"], np.ones((3, 2)))
    # closed forms, with power: SE bounded by the known std / sqrt(N) (2/20, 1/20)
    a_grid = np.asarray([0.5, 1.0, 2.0])
    for i in range(3):
        assert abs(res.mean["a"][i] - 2 * a_grid[i]) < 5 * res.se["a"][i]
        assert np.all(np.abs(res.mean["b"][i] - 1.0) < 5 * res.se["b"][i])
    assert np.all(res.se["a"] < 0.13) and np.all(res.se["b"] < 0.07)
    # the std of the per-sample estimates is the closed-form 2 and 1 (within 5 SE of std)
    assert np.all(np.abs(res.std_flat - [2.0, 1.0, 1.0]) < 5 * res.std_se_flat)
    assert np.all(res.std_se_flat < 0.15)
    # each grid point equals the per-point transform
    p1 = {"a": jnp.asarray(1.0), "b": jnp.asarray([0.0, 0.0])}
    g = jax.jit(je.grad(gauss_tree, je.pathwise(), num_samples=n))(KEY, p1)
    np.testing.assert_allclose(res.mean["a"][1], g["a"], rtol=1e-5)
    np.testing.assert_allclose(res.mean["b"][1], g["b"], rtol=1e-5, atol=1e-6)
    d = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    assert set(d["mean"]) == {"['a']", "['b']"} and d["coord_names"] == list(res.coord_names)
    # plots name the leaves; x defaults to the plotted coordinate when it varies
    ax = res.plot(coord="['a']").axes[0]
    assert ax.get_xlabel() == "θ['a']" and "∂θ['a']" in ax.get_title()
    assert any(isinstance(c, ErrorbarContainer) for c in ax.containers)
    ax = res.plot(coord="['b'][1]", x="['a']").axes[0]
    assert ax.get_xlabel() == "θ['a']" and "∂θ['b'][1]" in ax.get_ylabel()
    (bar,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    np.testing.assert_allclose(bar.lines[0].get_ydata(), res.mean["b"][:, 1])
    with pytest.raises(ValueError, match="same leading length"):
        sweep(gauss_tree, {"a": [1.0, 2.0], "b": jnp.ones((3, 2))}, estimator=je.pathwise(),
              key=KEY, num_samples=4)  # fmt: skip
    with pytest.raises(ValueError, match="scalar"):
        sweep(gauss_tree, {"a": 1.0, "b": jnp.ones((3, 2))}, estimator=je.pathwise(),
              key=KEY, num_samples=4)  # fmt: skip


def test_sweep_tuple_params_over_a_hyper_parameter():
    # (a, {"b": b}) with the same program: central differences with common random numbers
    # are exactly the pathwise estimate here (E is quadratic in a and linear in b)
    def prog(key, params):
        a, rest = params
        return gauss_tree(key, {"a": a, "b": rest["b"]})

    params = (jnp.asarray(1.5), {"b": jnp.asarray([2.0, -1.0])})
    res = sweep(prog, estimator=je.finite_difference(), key=KEY, num_samples=400,
                params=params, hyper=("step", [0.1, 0.01]),
                exact_fn=lambda p: (3.0, {"b": np.ones(2)}))  # fmt: skip
    assert res.coord_names == ("[0]", "[1]['b'][0]", "[1]['b'][1]")
    mean_a, mean_rest = res.mean
    assert mean_a.shape == (2,) and mean_rest["b"].shape == (2, 2)
    assert np.all(np.abs(res.bias_flat) < 5 * res.se_flat) and np.all(res.se_flat < 0.13)
    np.testing.assert_allclose(res.exact_flat, [[3.0, 1.0, 1.0]] * 2)
    ax = res.plot(coord="[1]['b'][0]").axes[0]
    assert "∂θ[1]['b'][0]" in ax.get_title() and ax.get_xlabel() == "step"


def test_fd_step_sweep_with_and_without_crn():
    steps = [0.03, 0.01, 0.003, 0.001]
    kw = dict(key=KEY, num_samples=4000, hyper=("step", steps))
    crn = sweep(two_bern, estimator=je.finite_difference(), params=0.1, **kw).std
    ind = sweep(
        two_bern, estimator=je.finite_difference(common_random_numbers=False), params=0.1, **kw
    ).std
    # independent noise: std ~ 1/h (30x over the range); CRN on this discrete program:
    # the samples differ only when a uniform falls in an O(h) window, std ~ h^(-1/2) (5.5x)
    assert ind[-1] / ind[0] > 15
    assert 2 < crn[-1] / crn[0] < 10
    assert np.all(crn < ind)
    # on a continuous program CRN keeps the std bounded as the step shrinks
    kw["hyper"] = ("step", [0.1, 0.01, 0.001])
    kw["num_samples"] = 1000
    crn_c = sweep(gauss_theta, estimator=je.finite_difference(), params=2.0, **kw).std
    ind_c = sweep(
        gauss_theta, estimator=je.finite_difference(common_random_numbers=False), params=2.0, **kw
    ).std
    assert np.all(np.abs(crn_c / crn_c[0] - 1) < 0.05)
    assert ind_c[-1] / ind_c[0] > 50


# ----------------------------------------------------------------------------- gallery
def test_gallery_exact_gradients():
    assert random_walk_exact(0.5) == pytest.approx(56.60787062628192, rel=1e-12)
    # the categorical closed form against central differences of E = pi(theta) . g
    th = np.asarray([0.2, -0.4, 0.6, 0.0])
    g = np.asarray([1.0, -2.0, 0.5, 3.0]) ** 2

    def expect(t):
        pi = np.exp(t) / np.exp(t).sum()
        return pi @ g

    fd = [(expect(th + 1e-6 * e) - expect(th - 1e-6 * e)) / 2e-6 for e in np.eye(4)]
    np.testing.assert_allclose(categorical_exact(th), fd, rtol=1e-6)
    assert set(GALLERY) == {
        "exponential",
        "gaussian_fixed",
        "gaussian_theta",
        "bernoulli",
        "random_walk",
        "categorical",
    }
    for prog in GALLERY.values():
        assert prog.description and prog.estimators
        assert set(prog.biased) <= set(prog.estimators)
        assert set(prog.notes) <= set(prog.estimators)
        # every estimator not documented unbiased is explained for this program, and no
        # documented-unbiased one is called biased
        for label, est in prog.estimators.items():
            unbiased = documented_unbiased(est)[0]
            assert unbiased or label in prog.biased or label in prog.notes, (prog.name, label)
            assert not (unbiased and label in prog.biased), (prog.name, label)


def test_gallery_program_agrees_with_its_exact_gradient():
    # the categorical program and its closed form, under an unbiased estimator
    prog = GALLERY["categorical"]
    ests = {"sf": prog.estimators["score_function (LOO)"]}
    rep = compare(prog.fun, prog.params, ests, key=KEY, num_samples=2000, exact=prog.exact)
    assert rep.num_coords == 4
    assert np.all(np.abs(rep["sf"].z_flat) < 5), rep["sf"].z_flat
    assert np.all(rep["sf"].se_flat < 0.05)


def test_compare_shows_check_findings_and_never_recommends_them():
    # f = 1[x > 0], x ~ N(theta, 1): pathwise gives exactly 0 (true: pdf(theta) = 0.352 at 0.5)
    def step(key, theta):
        x = je.sample(key, D.Normal(theta, 1.0))
        return (x > 0).astype(float)

    est = {"pw": je.pathwise(), "loo": je.score_function("leave_one_out")}
    rep = je.compare(step, 0.5, est, key=jax.random.key(0), num_samples=500)
    assert rep["pw"].check.errors and not rep["loo"].check.findings
    assert "je.check error: comparison" in str(rep)
    rec = rep.recommend()  # no exact value: pathwise is documented unbiased, but not here
    assert rec.name == "loo" and "je.check" in rec.excluded["pw"]
