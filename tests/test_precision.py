"""Precision: half-precision parameters, float64 (``jax_enable_x64``), integer leaves.

Claims tested: with bfloat16 / float16 parameters the transforms sum over samples in
float32 and return the parameters' dtype, so a large-``N`` estimate agrees with the exact
gradient (enumeration) within 5 standard errors, chunked or not, for site-level and
whole-program estimators, and ``value_and_grad``'s value is the float32-accumulated mean;
every estimator family runs a ``je.scan`` program under ``jax_enable_x64`` and agrees with
the exact gradient (dynamic programming over the 2^3 outcomes); integer and bool leaves
are not differentiated (``None`` gradient) by ``grad``, ``value_and_grad``,
``grad_samples``, ``compare`` and ``sweep`` alike.
"""

import itertools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _stats import assert_unbiased, mean_se

import jaxestim as je
from jaxestim import distributions as D

KEY = jax.random.key(0)
REWARD = np.array([1.0, -2.0, 3.0])
LOGITS = np.array([0.2, -0.5, 0.3])
N = 20_000


def policy(key, logits):
    """One Categorical action over 3 actions; the reward of the action."""
    a = je.sample(key, D.Categorical(logits=logits))
    return jnp.asarray(REWARD, logits.dtype)[a]


def policy_exact() -> tuple[float, np.ndarray]:
    """E[r] and its gradient in the logits by enumeration: p_j (r_j - p . r)."""
    p = np.exp(LOGITS) / np.exp(LOGITS).sum()
    return float(p @ REWARD), p * (REWARD - p @ REWARD)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_sums_over_samples_in_float32(dtype):
    value, exact = policy_exact()
    lg = jnp.asarray(LOGITS, dtype)
    sf = je.score_function("leave_one_out")
    gs = je.grad_samples(policy, sf, num_samples=N)(KEY, lg)
    assert gs.dtype == dtype
    m, se = mean_se(gs)
    assert np.all(se < 0.01)
    assert np.all(np.abs(m - exact) < 5 * se)
    for chunk in (None, 3000):
        g = je.grad(policy, sf, num_samples=N, chunk_size=chunk)(KEY, lg)
        assert g.dtype == dtype
        # the mean of the per-sample gradients, up to the rounding of the result to dtype
        np.testing.assert_allclose(np.asarray(g, np.float64), m, atol=4e-3)
        assert np.all(np.abs(np.asarray(g, np.float64) - exact) < 5 * se + 4e-3)
    v, g = jax.jit(je.value_and_grad(policy, sf, num_samples=N))(KEY, lg)
    assert v.dtype == dtype and g.dtype == dtype
    p = np.exp(LOGITS) / np.exp(LOGITS).sum()
    f_se = np.sqrt(p @ (REWARD - value) ** 2 / N)  # the exact SE of the mean reward
    assert abs(float(v) - value) < 5 * f_se + 8e-3  # + the rounding of a value near 1.2


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_half_precision_stochastic_ad(mode):
    _, exact = policy_exact()
    lg = jnp.asarray(LOGITS, jnp.bfloat16)
    est = je.stochastic_ad(mode=mode)
    gs = je.grad_samples(policy, est, num_samples=N)(KEY, lg)
    g = je.grad(policy, est, num_samples=N, chunk_size=5000)(KEY, lg)
    assert gs.dtype == g.dtype == jnp.bfloat16
    _, se = mean_se(gs)
    assert np.all(se < 0.02)
    assert np.all(np.abs(np.asarray(g, np.float64) - exact) < 5 * se + 4e-3)


# ------------------------------------------------------------------ float64 loop programs
STEPS = 3


def bern_walk(key, th):
    """A je.scan with one Bernoulli(sigmoid(th + 0.3 t)) site per step; f = (sum b_t (1+t))^2."""

    def step(c, t, k):
        b = je.sample(k, D.Bernoulli(probs=jax.nn.sigmoid(th + 0.3 * t)))
        return c + b * (1.0 + t), None

    return je.scan(step, jnp.zeros_like(th), jnp.arange(float(STEPS)), key=key)[0] ** 2


def bern_walk_exact(th: float) -> float:
    """d/dth E[f] by enumerating the 2^3 outcomes in float64: E[f sum_t (b_t - p_t)]."""
    t = np.arange(STEPS)
    p = 1 / (1 + np.exp(-(th + 0.3 * t)))
    out = 0.0
    for bits in itertools.product((0, 1), repeat=STEPS):
        b = np.array(bits)
        prob = np.prod(np.where(b == 1, p, 1 - p))
        out += prob * (b @ (1.0 + t)) ** 2 * np.sum(b - p)
    return out


def normal_walk(key, th):
    """A je.scan with one Normal(th + 0.1 t, 1) site per step; f = sum_t z_t^2."""

    def step(c, t, k):
        z = je.sample(k, D.Normal(th + 0.1 * t, 1.0))
        return c + z * z, None

    return je.scan(step, jnp.zeros_like(th), jnp.arange(float(STEPS)), key=key)[0]


TH = 0.2
# unbiased estimators of each family, on the program whose sites they accept
UNBIASED_X64 = {
    "score_function": (bern_walk, je.score_function("leave_one_out"), 0.3),
    "score_function_optimal": (bern_walk, je.score_function("optimal"), 0.3),
    "auto": (bern_walk, je.auto(), 0.3),
    "stochastic_ad_forward": (bern_walk, je.stochastic_ad(), 0.25),
    "stochastic_ad_reverse": (bern_walk, je.stochastic_ad(mode="reverse"), 0.25),
    "enumeration": (bern_walk, je.enumeration(), 1e-6),
    "arm": (bern_walk, je.arm(), 0.35),
    "disarm": (bern_walk, je.disarm(), 0.3),
    "rebar": (bern_walk, je.rebar(0.5, 1.0, learn=False), 0.25),
    "pathwise": (normal_walk, je.pathwise(), 0.1),
    "pathwise_forward": (normal_walk, je.pathwise("forward"), 0.1),
    "forward_gradient": (normal_walk, je.forward_gradient(), 0.2),
    "finite_difference": (normal_walk, je.finite_difference(1e-4), 0.1),
}


@pytest.mark.parametrize("name", list(UNBIASED_X64))
def test_every_estimator_runs_a_loop_program_under_x64(name):
    fun, est, se_max = UNBIASED_X64[name]
    exact = bern_walk_exact(TH) if fun is bern_walk else 2 * (STEPS * TH + 0.3)
    with jax.enable_x64(True):
        th = jnp.float64(TH)
        gs = jax.jit(je.grad_samples(fun, est, num_samples=2000))(KEY, th)
        assert gs.dtype == jnp.float64
    assert_unbiased(gs, exact, se_max=se_max)


@pytest.mark.parametrize(
    "est", [je.gumbel_softmax(0.5), je.straight_through()], ids=["gumbel_softmax", "st"]
)
def test_biased_estimators_under_x64_match_float32(est):
    """Relaxed estimators are biased: their float64 and float32 means (independent draws
    of the same target) agree within 5 combined standard errors."""
    g32 = je.grad_samples(bern_walk, est, num_samples=4000)(KEY, jnp.float32(TH))
    with jax.enable_x64(True):
        g64 = je.grad_samples(bern_walk, est, num_samples=4000)(KEY, jnp.float64(TH))
        assert g64.dtype == jnp.float64
    (m32, se32), (m64, se64) = mean_se(g32), mean_se(g64)
    assert se32 < 0.1 and se64 < 0.1
    assert abs(m64 - m32) < 5 * np.hypot(se32, se64)


# ------------------------------------------------------------------ integer leaves
def scaled_normal(key, p):
    """x ~ Normal(w * imm, 1): the pathwise gradient in w is exactly imm (every sample)."""
    return je.sample(key, D.Normal(p["w"] * p["imm"], 1.0))


@pytest.mark.parametrize("imm", [2, jnp.array(2), True], ids=["int", "int_array", "bool"])
def test_integer_leaves_are_not_differentiated_by_every_transform(imm):
    p = {"w": 0.5, "imm": imm}
    want = float(imm)
    for jit in (False, True):
        wrap = jax.jit if jit else (lambda f: f)
        # under the user's jax.jit only arrays are traced: a Python int/bool is closed over
        q = {"w": jnp.float32(0.5)} if jit and not isinstance(imm, jax.Array) else p
        extra = {} if q is p else {"imm": imm}

        def call(t, q=q, extra=extra):
            return wrap(lambda q: t(KEY, {**q, **extra}))(q)

        g = call(je.grad(scaled_normal, je.pathwise(), num_samples=4))
        _, g2 = call(je.value_and_grad(scaled_normal, je.pathwise(), num_samples=4))
        gs = call(je.grad_samples(scaled_normal, je.pathwise(), num_samples=4))
        assert g["imm"] is None and g2["imm"] is None and gs["imm"] is None
        np.testing.assert_allclose(g["w"], want, rtol=1e-6)
        np.testing.assert_allclose(g2["w"], want, rtol=1e-6)
        np.testing.assert_allclose(gs["w"], np.full(4, want), rtol=1e-6)
    rep = je.compare(scaled_normal, p, {"pw": je.pathwise()}, key=KEY, num_samples=4, repeats=1)
    assert rep.coord_names == ("['w']",)
    np.testing.assert_allclose(rep["pw"].mean["w"], want, rtol=1e-6)


def test_sweep_keeps_integer_grid_leaves_as_settings():
    """An integer grid leaf is swept as an integer setting (no gradient coordinate), as
    je.grad treats it; a float grid leaf of the same values is differentiated."""
    res = je.sweep(
        scaled_normal,
        {"w": [0.5, 1.0, 1.5], "imm": [1, 2, 3]},
        estimator=je.pathwise(),
        key=KEY,
        num_samples=4,
        exact_fn=lambda q: q["imm"],
    )
    assert res.coord_names == ("['w']",) and res.grid_flat.shape == (3, 1)
    np.testing.assert_allclose(res.mean_flat[:, 0], [1.0, 2.0, 3.0], rtol=1e-6)
    np.testing.assert_allclose(res.bias_flat, 0.0, atol=1e-6)
    res_f = je.sweep(
        scaled_normal,
        {"w": [0.5, 1.0, 1.5], "imm": [1.0, 2.0, 3.0]},
        estimator=je.pathwise(),
        key=KEY,
        num_samples=4,
    )
    assert res_f.coord_names == ("['imm']", "['w']")
    np.testing.assert_allclose(res_f.mean_flat[:, 0], [0.5, 1.0, 1.5], rtol=1e-6)
    with pytest.raises(TypeError, match="no floating leaf"):
        je.sweep(
            scaled_normal,
            {"w": [1, 2], "imm": [1, 2]},
            estimator=je.pathwise(),
            key=KEY,
            num_samples=4,
        )


_MESH_CHECK = """
import json, jax, jax.numpy as jnp, numpy as np
import test_precision as T
lg = jnp.asarray(T.LOGITS, jnp.bfloat16)
mesh = jax.make_mesh((2,), ("s",))
sf = T.je.score_function("leave_one_out")
g = T.je.grad(T.policy, sf, num_samples=T.N, chunk_size=5000, mesh=mesh)(T.KEY, lg)
gs = T.je.grad_samples(T.policy, sf, num_samples=T.N, mesh=mesh)(T.KEY, lg)
x = np.asarray(gs, np.float64)
print(json.dumps({"dtype": str(g.dtype), "g": np.asarray(g, np.float64).tolist(),
                  "se": (x.std(0, ddof=1) / np.sqrt(len(x))).tolist()}))
"""


def test_half_precision_sums_over_devices_in_float32():
    """mesh= on 2 simulated CPU devices: the psum of the devices' float32 partial sums."""
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "2", "JAX_PLATFORMS": "cpu"}
    flags = os.environ.get("XLA_FLAGS", "").split()
    env["XLA_FLAGS"] = " ".join(f for f in flags if "host_platform_device_count" not in f)
    out = subprocess.run(
        [sys.executable, "-c", _MESH_CHECK],
        cwd=os.path.dirname(__file__),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    res = json.loads(out.stdout.strip().splitlines()[-1])
    _, exact = policy_exact()
    se = np.asarray(res["se"])
    assert res["dtype"] == "bfloat16" and np.all(se < 0.01)
    assert np.all(np.abs(np.asarray(res["g"]) - exact) < 5 * se + 4e-3)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("scheme", ["central", "forward"])
def test_finite_differences_refuse_half_precision_parameters(dtype, scheme):
    # theta + h would be rounded to the parameter's dtype inside the program: the step taken
    # is not h, so the quotient would be silently wrong
    def f(key, theta):
        return jnp.sum(theta**2) + je.sample(key, D.Normal(0.0, 1.0))

    g = je.grad(f, je.finite_difference(step=1e-3, scheme=scheme), num_samples=8)
    theta = jnp.array([0.3, 1.7], dtype)
    with pytest.raises(je.EstimatorError, match="float32 parameters"):
        g(jax.random.key(0), theta)
    with pytest.raises(je.EstimatorError, match="float32 parameters"):
        jax.jit(g)(jax.random.key(0), theta)
    # float32 parameters cast inside the program are fine
    g32 = je.grad(
        lambda k, t: f(k, t.astype(dtype)).astype(jnp.float32),
        je.finite_difference(step=1e-2, scheme=scheme),
        num_samples=8,
    )
    assert jnp.all(jnp.isfinite(g32(jax.random.key(0), theta.astype(jnp.float32))))
