"""Worker for ``tests/test_sharding.py``: runs in a subprocess with simulated CPU devices.

``python tests/_multidevice.py devices``: the process was started with
``JAX_NUM_CPU_DEVICES=D``; every check compares ``mesh=`` transforms with the single-device
transform for the same key and prints one JSON object ``{check: max abs error}`` (or a
boolean / message) on its last line.

``python tests/_multidevice.py process PID PORT``: one of two processes of a
``jax.distributed`` run on localhost (2 CPU devices each, gloo collectives); prints the
sharded and single-process estimates as JSON.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np


def program(loop: bool = True):
    import jax
    import jax.numpy as jnp

    import jaxestim as je
    from jaxestim.distributions import Bernoulli, Normal

    def f(key, p):
        """Normal and Bernoulli sites (a je.scan random walk with ``loop``), dict params."""
        k1, k2, k3 = jax.random.split(key, 3)
        x = je.sample(k1, Normal(p["mu"], 1.0))
        b = je.sample(k2, Bernoulli(logits=p["eta"]))
        out = (x - 1.0) ** 2 + 3.0 * b * x
        if not loop:
            return out

        def step(pos, k):
            s = je.sample(k, Bernoulli(logits=p["eta"] - 0.3))
            return pos + 2.0 * s - 1.0, None

        pos, _ = je.scan(step, 0.0, jax.random.split(k3, 5))
        return out + 0.5 * pos**2

    return f, {"mu": jnp.array(0.3), "eta": jnp.array(0.2)}


def max_err(a, b) -> float:
    import jax

    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb), (a, b)
    return max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(la, lb, strict=True)
    )


def sir_training(mesh) -> tuple[float, float]:
    """A realistic use: a stochastic SIR epidemic (Binomial transitions in a je.scan)
    calibrated to observed counts with optax inside the user's jitted step (score function
    with leave-one-out baseline, dict params). Returns how far the parameters moved and the
    largest difference between the parameters after 4 steps with mesh= and without."""
    import jax
    import jax.numpy as jnp
    import optax

    import jaxestim as je
    from jaxestim.distributions import Binomial

    observed = jnp.array([8.0, 12.0, 16.0, 18.0, 17.0, 14.0, 11.0, 8.0])

    def sir(key, p):
        def step(carry, k):
            s, i = carry
            k1, k2 = jax.random.split(k)
            new = je.sample(k1, Binomial(s, probs=1.0 - jnp.exp(-jnp.exp(p["log_beta"]) * i / 60)))
            rec = je.sample(k2, Binomial(i, probs=jax.nn.sigmoid(p["gamma_logit"])))
            return (s - new, i + new - rec), i + new - rec

        _, infected = je.scan(step, (55.0, 5.0), jax.random.split(key, observed.size))
        return jnp.mean((infected - observed) ** 2)

    grads = {
        m: je.grad(sir, je.score_function("leave_one_out"), num_samples=64, mesh=m)
        for m in (None, mesh)
    }
    opt = optax.adam(0.05)
    finals = []
    for g in grads.values():

        @jax.jit
        def train_step(p, state, key, g=g):
            updates, state = opt.update(g(key, p), state)
            return optax.apply_updates(p, updates), state

        p = {"log_beta": jnp.array(0.0), "gamma_logit": jnp.array(-1.0)}
        state = opt.init(p)
        for i in range(4):
            p, state = train_step(p, state, jax.random.key(i))
        finals.append(p)
    moved = max_err(finals[0], {"log_beta": 0.0, "gamma_logit": -1.0})
    return moved, max_err(finals[1], finals[0])


def devices() -> dict:
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    import jaxestim as je

    d = jax.device_count()
    f, params = program(loop=False)
    f_loop, _ = program(loop=True)
    key = jax.random.key(3)
    n = 24  # a multiple of 2, 4 and 8; chunk_size 2 leaves remainders on some counts
    mesh = jax.make_mesh((d,), ("x",))
    out: dict = {"device_count": d}
    t0 = time.perf_counter()

    def check(name, kind, est, chunk=None, fun=f, jit=False):
        t = getattr(je, kind)
        ref = t(fun, est, num_samples=n, chunk_size=chunk)(key, params)
        sharded = t(fun, est, num_samples=n, chunk_size=chunk, mesh=mesh)
        res = (jax.jit(sharded) if jit else sharded)(key, params)
        out[f"{name}/{kind}/{chunk}" + ("/jit" if jit else "")] = max_err(res, ref)
        return res

    ests = {
        "auto": je.auto(),
        "sf": je.score_function(),
        "sf_loo": je.score_function("leave_one_out"),
        "gumbel": je.gumbel_softmax(0.5),
        "st": je.straight_through(),
        "sad": je.stochastic_ad(),
        "sad_reverse": je.stochastic_ad(mode="reverse"),
        "fd": je.finite_difference(),
    }
    if d != 4:  # the gradient of a few estimators on 2 and 8 devices
        check("sf_loo", "grad", ests["sf_loo"], chunk=2)
        check("sad_reverse", "grad", ests["sad_reverse"], fun=f_loop)
        check("fd", "grad", ests["fd"])
        check("sf_loo", "grad_samples", ests["sf_loo"])
        if d == 8:
            out["sir_training_moved"], out["sir_training/params"] = sir_training(mesh)
        return out
    # 4 devices: every estimator (chunked within devices), every transform for three
    for name, est in ests.items():
        check(name, "grad", est, chunk=2)
    for name in ("sf_loo", "sad_reverse"):
        check(name, "value_and_grad", ests[name])
        gs = check(name, "grad_samples", ests[name])
    # the optimal per-coordinate baseline: its leave-one-out sums over all N samples are psums
    sf_opt = je.score_function("optimal")
    check("sf_opt", "grad", sf_opt, chunk=2)
    check("sf_opt", "grad_samples", sf_opt)
    # replicated gradient, sharded per-sample gradients
    g = check("sf_loo", "grad", ests["sf_loo"], fun=f_loop, jit=True)
    out["grad_replicated"] = bool(g["mu"].sharding.is_fully_replicated)
    out["grad_samples_spec"] = str(gs["mu"].sharding.spec)
    check("sad", "grad_samples", ests["sad"], chunk=5, fun=f_loop)

    # a moving-average baseline: state threaded, replicated, equal
    ma = je.score_function(je.baselines.MovingAverage(0.9))
    s0 = ma.init()
    step_ref = jax.jit(je.grad(f, ma, num_samples=n))
    step_sh = jax.jit(je.grad(f, ma, num_samples=n, mesh=mesh))
    s_ref = s_sh = s0
    errs = []
    for i in range(3):
        k = jax.random.fold_in(key, i)
        g_ref, s_ref = step_ref(k, params, estimator_state=s_ref)
        g_sh, s_sh = step_sh(k, params, estimator_state=s_sh)
        errs.append(max_err((g_sh, s_sh), (g_ref, s_ref)))
    out["moving_average"] = max(errs)

    # derivatives through the transform (DiCE higher order), under jit
    vg_ref = je.value_and_grad(f, je.score_function("leave_one_out"), num_samples=n)
    vg_sh = je.value_and_grad(f, je.score_function("leave_one_out"), num_samples=n, mesh=mesh)

    def outer(vg):
        return jax.jit(jax.grad(lambda p: vg(key, p)[0]))(params)

    out["outer_grad_of_value"] = max_err(outer(vg_sh), outer(vg_ref))
    h_ref = jax.hessian(lambda p: je.grad(f, je.score_function(), num_samples=n)(key, p)["mu"])
    h_sh = jax.hessian(
        lambda p: je.grad(f, je.score_function(), num_samples=n, mesh=mesh)(key, p)["mu"]
    )
    out["hessian_row"] = max_err(h_sh(params), h_ref(params))

    # vmap over keys of a sharded transform
    keys = jax.random.split(key, 3)
    gv_ref = jax.vmap(lambda k: je.grad(f, je.auto(), num_samples=n)(k, params))(keys)
    gv_sh = jax.vmap(lambda k: je.grad(f, je.auto(), num_samples=n, mesh=mesh)(k, params))(keys)
    out["vmap_keys"] = max_err(gv_sh, gv_ref)

    # validate=True: same values on valid parameters; the site check still fires
    gv = je.grad(f, je.score_function(), num_samples=n, mesh=mesh, validate=True)
    ref = je.grad(f, je.score_function(), num_samples=n)(key, params)
    out["validate"] = max_err(gv(key, params), ref)
    try:
        gv(key, {"mu": jnp.array(0.3), "eta": jnp.array(jnp.nan)})
        out["validate_error"] = "no error"
    except Exception as e:  # the message is checked by the test
        out["validate_error"] = f"{type(e).__name__}: {e}"

    # a 2-D mesh: samples over one axis (replicated over the other) or over both
    mesh2 = jax.make_mesh((2, d // 2), ("a", "b"))
    ref = je.grad(f, je.score_function("leave_one_out"), num_samples=n)(key, params)
    for axis in ("b", ("a", "b")):
        g2 = je.grad(f, je.score_function("leave_one_out"), num_samples=n, mesh=mesh2, axis=axis)(
            key, params
        )
        out[f"mesh2d/{axis}"] = max_err(g2, ref)
    # a mesh with Auto axes (jax.sharding.Mesh): sharding constraints instead of reshard
    auto_mesh = Mesh(np.array(jax.devices()), ("x",))
    out["auto_axes_mesh"] = max_err(
        jax.jit(je.grad(f, je.stochastic_ad(), num_samples=n, mesh=auto_mesh))(key, params),
        je.grad(f, je.stochastic_ad(), num_samples=n)(key, params),
    )
    # num_samples not a multiple of the device count: a clear error at construction
    try:
        je.grad(f, je.auto(), num_samples=n + 1, mesh=mesh)
        out["indivisible"] = "no error"
    except ValueError as e:
        out["indivisible"] = str(e)

    # memory: each device holds its shard of the samples' temporaries (a 64-dim site)
    def wide(k, p):
        z = je.sample(k, je.distributions.Normal(p["mu"] + jnp.zeros(64), 1.0))
        return jnp.sum(jnp.tanh(z) ** 2)

    for kind in ("grad", "grad_samples"):
        temp = []
        for m in (None, mesh):
            t = getattr(je, kind)(
                wide, je.score_function("leave_one_out"), num_samples=1024, mesh=m
            )
            compiled = jax.jit(t).lower(key, params).compile()
            temp.append(compiled.memory_analysis().temp_size_in_bytes)
        out[f"temp_ratio_{kind}"] = temp[1] / temp[0]

    # the naive route: je.grad per device inside shard_map on replicated parameters,
    # averaged with pmean, is off by the device count (JAX transposes the replicated
    # input's broadcast into a sum); mesh= is not. f = x ~ Normal(mu, 1): every per-sample
    # pathwise gradient is exactly 1.
    def lin(k, p):
        return je.sample(k, je.distributions.Normal(p["mu"], 1.0))

    def naive(k, p):
        def local(kk, pp):
            vg = je.value_and_grad(lin, je.pathwise(), num_samples=n // d)
            g = jax.grad(lambda q: vg(kk[0], q)[0])(pp)
            return jax.lax.pmean(g, "x")

        ks = jax.sharding.reshard(jax.random.split(k, d), NamedSharding(mesh, P("x")))
        return jax.shard_map(local, mesh=mesh, in_specs=(P("x"), P()), out_specs=P())(ks, p)

    out["naive_mu"] = float(naive(key, params)["mu"])
    out["mesh_mu"] = float(je.grad(lin, je.pathwise(), num_samples=n, mesh=mesh)(key, params)["mu"])
    out["seconds"] = time.perf_counter() - t0
    return out


def process(pid: int, port: int) -> dict:
    os.environ["JAX_NUM_CPU_DEVICES"] = "2"
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid
    )
    from jax.experimental import multihost_utils

    import jaxestim as je

    f, params = program(loop=False)
    key = jax.random.key(7)
    n = 16
    mesh = jax.make_mesh((jax.device_count(),), ("x",))  # 4 devices, 2 per process
    out: dict = {"process": jax.process_index(), "devices": jax.device_count()}
    ests = {"sf_loo": je.score_function("leave_one_out"), "sad": je.stochastic_ad()}
    for name, est in ests.items():
        ref = je.grad(f, est, num_samples=n)(key, params)
        g = je.grad(f, est, num_samples=n, mesh=mesh)(key, params)  # eager: inputs made global
        out[f"{name}/grad"] = max_err(g, ref)
        out[f"{name}/value"] = {k: float(np.asarray(v)) for k, v in g.items()}
    # under the user's jit, and per-sample gradients gathered across the processes
    est = ests["sf_loo"]
    gs = jax.jit(je.grad_samples(f, est, num_samples=n, mesh=mesh))(key, params)
    gs = multihost_utils.process_allgather(gs, tiled=True)
    out["sf_loo/grad_samples/jit"] = max_err(
        gs, je.grad_samples(f, est, num_samples=n)(key, params)
    )
    jax.distributed.shutdown()
    return out


if __name__ == "__main__":
    mode = sys.argv[1]
    result = devices() if mode == "devices" else process(int(sys.argv[2]), int(sys.argv[3]))
    print(json.dumps(result), flush=True)
