"""Tests of the research workflow: je.compare, je.sweep and the program gallery."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from matplotlib.figure import Figure

import jaxestim as je
from jaxestim import distributions as D
from jaxestim._compare import ComparisonReport, SweepResult, compare, sweep
from jaxestim._gallery import GALLERY, categorical_exact, random_walk_exact

KEY = jax.random.key(0)


def two_bern(key, theta):  # 2 Bernoulli(3 theta) + Bernoulli(theta); gradient 7
    k1, k2 = jax.random.split(key)
    a = je.sample(k1, D.Bernoulli(probs=3 * theta))
    return 2.0 * a + je.sample(k2, D.Bernoulli(probs=theta))


def gauss_theta(key, theta):  # gradient 8 theta + 3 theta^2
    return theta**2 * (4.0 + je.sample(key, D.Normal(theta, 2.0)))


def gauss_tree(key, params):  # E = a^2 + sum(b); gradient {a: 2a, b: ones}
    z = je.sample(key, D.Normal(params["a"], 1.0))
    return z**2 - 1.0 + jnp.sum(params["b"] * (1.0 + je.sample(key, D.Normal(0.0, 1.0))))


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


def test_report_plot(report):
    fig = report.plot()
    assert isinstance(fig, Figure)
    assert len(fig.axes) == len(ESTS)
    ax = fig.axes[0]
    assert "SE" in ax.get_title() and "sf" in ax.get_title()
    assert ax.get_xlabel() and ax.get_ylabel()
    labels = ax.get_legend_handles_labels()[1]
    assert any(label.startswith("exact") for label in labels)
    assert any(label.startswith("mean") for label in labels)


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
    assert len(rep.plot(coord=2).axes) == 2
    with pytest.raises(IndexError):
        rep.table(coord=3)
    # a deterministic estimate: SE = 0 gives z = 0 (no bias) or +-inf, JSON-safe
    rep2 = compare(
        lambda k, t: 2.0 * t, 1.0, {"pw": je.pathwise()}, key=KEY, num_samples=4, exact=3.0
    )
    assert rep2["pw"].se_flat[0] == 0 and rep2["pw"].z_flat[0] == -np.inf
    assert json.loads(json.dumps(rep2.to_dict(), allow_nan=False))["estimators"]["pw"]["z"] == [
        None
    ]


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
    assert {line.get_label() for line in ax.get_lines()} == {"abs_bias", "std"}


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
    with pytest.raises(ValueError, match="no field"):
        sweep(gauss_theta, estimator=je.pathwise(), key=KEY, num_samples=4, params=1.0,
              hyper=("temperature", [1.0]))  # fmt: skip


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


def test_gallery_program_agrees_with_its_exact_gradient():
    # the categorical program and its closed form, under an unbiased estimator
    prog = GALLERY["categorical"]
    ests = {"sf": prog.estimators["score_function (LOO)"]}
    rep = compare(prog.fun, prog.params, ests, key=KEY, num_samples=2000, exact=prog.exact)
    assert rep.num_coords == 4
    assert np.all(np.abs(rep["sf"].z_flat) < 5), rep["sf"].z_flat
    assert np.all(rep["sf"].se_flat < 0.05)
