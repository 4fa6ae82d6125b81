"""``mesh=`` / ``axis=``: Monte Carlo samples sharded over devices and processes.

The multi-device checks run in subprocesses (``tests/_multidevice.py``) with simulated
CPU devices (``JAX_NUM_CPU_DEVICES``), and the multi-process check as two processes of a
``jax.distributed`` run on localhost with gloo CPU collectives. Each compares the sharded
estimate with the single-device estimate for the same key.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

import jaxestim as je
from jaxestim.distributions import Bernoulli, Normal

WORKER = Path(__file__).with_name("_multidevice.py")
TOL = 1e-5  # float32 summation order; the estimates are O(1)


def _run(args: list[str], devices: int, timeout: float) -> subprocess.Popen:
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": str(devices), "JAX_PLATFORMS": "cpu"}
    # the device count comes from JAX_NUM_CPU_DEVICES alone
    flags = os.environ.get("XLA_FLAGS", "").split()
    env["XLA_FLAGS"] = " ".join(f for f in flags if "host_platform_device_count" not in f)
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _result(proc: subprocess.Popen, timeout: float) -> dict:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"worker timed out after {timeout} s:\n{out[-3000:]}")
    assert proc.returncode == 0, out[-3000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("devices", [2, 4, 8])
def test_sharded_equals_single_device(devices):
    """Every estimator (4 devices: also every transform, chunking, jit, state, 2-D meshes,
    derivatives through the transform, validate=True) equals the single-device estimate."""
    res = _result(_run(["devices"], devices, timeout=300), timeout=300)
    assert res["device_count"] == devices
    errors = {k: v for k, v in res.items() if isinstance(v, float) and "/" in k}
    assert errors, res
    for name, err in errors.items():
        assert err < TOL, (name, err)
    if devices == 8:  # the SIR calibration trained (and identically with mesh=)
        assert res["sir_training_moved"] > 0.05, res
    if devices != 4:
        return
    for name in ("moving_average", "outer_grad_of_value", "hessian_row", "vmap_keys"):
        assert res[name] < TOL, (name, res[name])
    assert res["validate"] < TOL and res["auto_axes_mesh"] < TOL
    assert "Bernoulli parameter `logits` must be finite" in res["validate_error"]
    assert res["grad_replicated"] is True
    assert res["grad_samples_spec"] == "P('x',)"
    assert "`num_samples`=25 is not a multiple of the 4 device(s)" in res["indivisible"]
    # per-device temporaries: about 1/4 of the single-device program's
    assert res["temp_ratio_grad"] < 0.35 and res["temp_ratio_grad_samples"] < 0.35, res
    # the naive shard_map + pmean route is off by the device count; mesh= is exact
    assert res["naive_mu"] == pytest.approx(4.0)
    assert res["mesh_mu"] == pytest.approx(1.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_jax_distributed():
    """A mesh over 2 processes x 2 CPU devices (jax.distributed, gloo): each process holds
    half the samples and gets the single-process estimate."""
    port = _free_port()
    procs = [_run(["process", str(i), str(port)], 2, timeout=180) for i in range(2)]
    results = [_result(p, timeout=180) for p in procs]
    assert sorted(r["process"] for r in results) == [0, 1]
    for r in results:
        assert r["devices"] == 4
        for name, err in r.items():
            if isinstance(err, float):
                assert err < TOL, (name, err)
    assert results[0]["sf_loo/value"] == results[1]["sf_loo/value"]


def _f(key, p):
    k1, k2 = jax.random.split(key)
    x = je.sample(k1, Normal(p, 1.0))
    return x**2 + je.sample(k2, Bernoulli(logits=p)) * x


def test_one_device_mesh_equals_unsharded():
    mesh = jax.make_mesh((1,), ("x",))
    for est in (je.auto(), je.stochastic_ad(mode="reverse")):
        ref = je.value_and_grad(_f, est, num_samples=8)(jax.random.key(0), 0.3)
        out = jax.jit(je.value_and_grad(_f, est, num_samples=8, mesh=mesh, axis="x"))(
            jax.random.key(0), 0.3
        )
        assert jnp.allclose(jnp.stack(out), jnp.stack(ref), atol=TOL)


@pytest.mark.parametrize("jit", [False, True])
def test_bad_mesh_arguments(jit):
    mesh = jax.make_mesh((1,), ("x",))
    wrap = jax.jit if jit else (lambda g: g)
    with pytest.raises(TypeError, match=r"`mesh` must be a jax\.sharding\.Mesh"):
        wrap(je.grad(_f, num_samples=4, mesh="x"))(jax.random.key(0), 0.3)
    with pytest.raises(ValueError, match="`axis`='x' needs `mesh=`"):
        wrap(je.grad(_f, num_samples=4, axis="x"))(jax.random.key(0), 0.3)
    with pytest.raises(ValueError, match=r"`axis` names \['y'\] not among the mesh's axes"):
        wrap(je.grad_samples(_f, num_samples=4, mesh=mesh, axis="y"))(jax.random.key(0), 0.3)
    with pytest.raises(ValueError, match="`axis` has repeated names"):
        je.value_and_grad(_f, num_samples=4, mesh=mesh, axis=("x", "x"))
    with pytest.raises(TypeError, match="`axis` must be a mesh axis name"):
        je.grad(_f, num_samples=4, mesh=mesh, axis=3)
