"""je.sweep / je.compare with ``mesh=`` / ``axis=``: grid or samples sharded over devices.

The multi-device checks run in one subprocess with ``JAX_NUM_CPU_DEVICES=4`` (the device
count is fixed when JAX starts); it compares every sharded result with the unsharded call
for the same key and prints the largest relative differences as JSON.
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import pytest

import jaxestim as je
from jaxestim import distributions as D
from jaxestim._compare import compare, sweep

KEY = jax.random.key(0)

SCRIPT = textwrap.dedent(
    """
    import json
    import jax
    import jax.numpy as jnp
    import numpy as np
    import jaxestim as je
    from jaxestim import distributions as D
    from jaxestim._compare import compare, sweep

    assert jax.device_count() == 4, jax.devices()
    KEY = jax.random.key(0)

    def prog(key, theta):  # a Normal and a Bernoulli site
        k1, k2 = jax.random.split(key)
        x = je.sample(k1, D.Normal(theta, 1.0))
        b = je.sample(k2, D.Bernoulli(probs=jax.nn.sigmoid(theta)))
        return x**2 + 2.0 * b

    def rel(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        assert a.shape == b.shape, (a.shape, b.shape)
        return float(np.max(np.abs(a - b) / (np.abs(b) + 1e-6)))

    def diff(a, b):
        return max(rel(a.mean_flat, b.mean_flat), rel(a.std_flat, b.std_flat))

    out = {}
    mesh = jax.make_mesh((4,), ("d",))  # explicit axes (the default)
    mesh2 = jax.make_mesh((2, 2), ("a", "b"))
    sf = je.score_function("leave_one_out")
    fd = je.finite_difference()

    # params grid, G = 6 on 4 devices: padded to 8 points, the copies dropped
    grid = jnp.linspace(-1.0, 1.0, 6)
    kw = dict(estimator=sf, key=KEY, num_samples=16)
    a, b = sweep(prog, grid, **kw), sweep(prog, grid, mesh=mesh, **kw)
    out["grid_shape"] = list(b.mean_flat.shape)
    out["grid"] = diff(b, a)
    out["grid_se"] = rel(b.se_flat, a.se_flat)

    # hyper-parameter sweep (3 steps, padded to 4) x params grid of 2, on axis "b" of 2x2
    kw = dict(estimator=fd, key=KEY, num_samples=8, hyper=("step", [0.1, 0.03, 0.01]))
    a, b = sweep(prog, grid[:2], **kw), sweep(prog, grid[:2], mesh=mesh2, axis="b", **kw)
    out["hyper_shape"] = list(b.mean_flat.shape)
    out["hyper"] = diff(b, a)

    # num_samples sweep at fixed params: no grid axis, the samples are sharded
    kw = dict(estimator=sf, key=KEY, num_samples=8, params=0.3, hyper=("num_samples", [8, 16]))
    a, b = sweep(prog, **kw), sweep(prog, mesh=mesh, **kw)
    out["nsweep"] = diff(b, a)
    try:
        sweep(prog, estimator=sf, key=KEY, num_samples=8, params=0.3,
              hyper=("num_samples", [8, 6]), mesh=mesh)
        out["nsweep_error"] = "no error"
    except ValueError as e:
        out["nsweep_error"] = str(e)

    # compare: samples sharded; per-sample estimates, means and stds as unsharded
    ests = {"sf": sf, "fd": fd}
    kw = dict(key=KEY, num_samples=16, repeats=1)
    a, b = compare(prog, 0.3, ests, **kw), compare(prog, 0.3, ests, mesh=mesh, **kw)
    out["compare"] = {
        n: [rel(b[n].mean_flat, a[n].mean_flat), rel(b[n].std_flat, a[n].std_flat),
            rel(b[n].samples, a[n].samples)]
        for n in ests
    }
    try:
        compare(prog, 0.3, ests, key=KEY, num_samples=6, repeats=1, mesh=mesh)
        out["compare_error"] = "no error"
    except ValueError as e:
        out["compare_error"] = str(e)
    print("RESULT " + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def multi():
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "4"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    return json.loads(line[len("RESULT ") :])


TOL = 1e-5


def test_sweep_params_grid_padded_equals_unsharded(multi):
    assert multi["grid_shape"] == [6, 1]  # the two padded points are dropped
    assert multi["grid"] < TOL and multi["grid_se"] < TOL


def test_sweep_hyper_axis_sharded_equals_unsharded(multi):
    assert multi["hyper_shape"] == [3, 2, 1]
    assert multi["hyper"] < TOL


def test_sweep_num_samples_shards_the_samples(multi):
    assert multi["nsweep"] < TOL
    msg = multi["nsweep_error"]
    assert "num_samples`=6 is not a multiple of the 4 device(s)" in msg and "sweep" in msg


def test_compare_sharded_equals_unsharded(multi):
    for name, errs in multi["compare"].items():
        assert max(errs) < TOL, (name, errs)
    msg = multi["compare_error"]
    assert msg.startswith("compare:") and "not a multiple of the 4 device(s)" in msg


def two_bern(key, theta):
    return je.sample(key, D.Bernoulli(probs=theta))


@pytest.mark.parametrize("fn", ["sweep", "compare"])
def test_bad_mesh_and_axis(fn):
    def call(**kw):
        if fn == "sweep":
            return sweep(two_bern, [0.1, 0.2], estimator=je.finite_difference(), key=KEY,
                         num_samples=4, **kw)  # fmt: skip
        return compare(two_bern, 0.1, {"fd": je.finite_difference()}, key=KEY, num_samples=4,
                       repeats=1, **kw)  # fmt: skip

    mesh = jax.make_mesh((1,), ("d",))
    with pytest.raises(ValueError, match=r"`axis` names \['zz'\] not among the mesh's axes"):
        call(mesh=mesh, axis="zz")
    with pytest.raises(TypeError, match=r"`mesh` must be a jax\.sharding\.Mesh"):
        call(mesh="devices")
    with pytest.raises(ValueError, match="`axis`='d' needs `mesh=`"):
        call(axis="d")
