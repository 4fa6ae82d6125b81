"""Discrete VAE benchmark: every discrete estimator training a Bernoulli-latent VAE.

Run: ``python benchmarks/discrete_vae.py [--quick] [--out benchmarks/discrete_vae.png]
[--md PATH] [--steps N] [--arch linear,nonlinear] [--only SUBSTRING]``. Prints Markdown
tables and a ranking paragraph; writes a plot to ``--out``.

**Data.** scikit-learn's 8x8 digits (bundled, offline): pixels / 16 binarized at 0.5
(fixed threshold), 1797 images split 1500 train / 297 test with a fixed permutation
(``numpy.random.default_rng(0)``).

**Model.** 200 Bernoulli latents with prior Bernoulli(0.5); encoder
``q(z | x) = Bernoulli(logits = enc(x))`` and decoder ``p(x | z) = Bernoulli(logits = dec(z))``
on the 64 pixels. ``linear``: enc and dec are one affine layer each. ``nonlinear``: two
hidden layers of 200 LeakyReLU units (negative slope 0.3) in each, as the [200, 200]
architecture of the ARM/DisARM papers (activation: our choice among the papers'). The
decoder's output bias starts at the logit of the training pixel means.

**Program.** One data point per program: ``neg_elbo(key, params, x)`` draws
``z = je.sample(key, Bernoulli(logits=enc(params, x)))`` (all 200 latents at one site) and
returns ``-log p(x | z) - log p(z) + log q(z | x)``. ``log q`` depends on the parameters
directly (pathwise) and through ``z`` (the estimator's business). The minibatch gradient is
the mean of per-data-point estimates (the transform per image, ``lax.scan``-ned over the batch), so
every baseline / antithetic difference is per data point, as in the papers (a single
program over the whole batch would weight each data point's score by the batch-mean loss,
adding the other points' noise). Under the Concrete (Gumbel-softmax) relaxation ``z`` is
relaxed and the program's formula is evaluated at the relaxed value (the usual relaxed
objective); every evaluation below uses exact binary samples.

**Evaluations.** "Evaluations per step" counts forward runs of the program per data point
per training step: a site-level estimator (score function, Concrete, straight-through,
Gumbel-Rao, ReinMax) with ``num_samples = S`` runs the program ``S`` times (plus one
reverse pass); DisARM/ARM run it twice per sample (the antithetic pair); reverse-mode
``stochastic_ad`` runs it twice per sample (the recorded run under ``vjp`` and the replay
with the chosen jump) plus one reverse pass; REBAR/RELAX three times (hard, relaxed and
conditionally relaxed sample). The budget is ``E = 2`` evaluations per data point per step;
REBAR/RELAX at one sample exceed it (3) and are marked.

**Training.** Adam (lr 1e-3), minibatches of 64 drawn at random each step, a fixed number
of steps (``--steps``) run as jitted ``lax.scan`` chunks; every chunk the exact negative
ELBO on the whole train and test sets is evaluated with exact binary samples (2 draws per
image). Wall time is the training time only (compiled ahead of time; evaluation and
variance checkpoints excluded); the machine is shared, so times are indicative.

**Gradient variance.** At the start, middle and end of training, for a fixed batch (the
first 64 training images), the step's minibatch gradient of the encoder parameters is
computed with 32 independent keys (the step's exact estimator configuration, so each
repeat costs ``E`` evaluations per data point); the reported number is the mean over
encoder parameters of the per-parameter variance across the repeats, as log10 (Dong et
al. 2020, DisARM, Fig. 2/3 plot this quantity during training). Repeating the whole step
rather than using ``je.grad_samples`` matters for leave-one-out: its per-sample terms
share a baseline and are not independent.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE))
sys.path.insert(1, str(_HERE.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from _common import compile_timed, machine_description, md_table  # noqa: E402

import jaxestim as je  # noqa: E402
from jaxestim import distributions as D  # noqa: E402

PIX, LATENT, HIDDEN = 64, 200, (200, 200)
EVAL_BUDGET = 2  # program evaluations per data point per training step
LR = 1e-3
EVAL_DRAWS = 2  # exact latent draws per image when evaluating the ELBO
LEAKY_SLOPE = 0.3
# Final train ELBOs of one estimator over seeds 0, 1, 2 (init and batches) spread by up to
# ~0.1 nats (score function and Concrete, both architectures): smaller gaps are ties.
ELBO_TIE_NATS = 0.1


# --------------------------------------------------------------------------------------
# Estimators: (name, factory, evaluations per sample, num_samples)
# --------------------------------------------------------------------------------------


@dataclass
class Entry:
    """One estimator configuration. ``needs``: the ``je`` attribute it requires."""

    name: str
    factory: Callable[[], Any]
    evals_per_sample: int
    num_samples: int
    needs: str
    note: str = ""

    @property
    def evals(self) -> int:
        """Program evaluations per data point per training step."""
        return self.evals_per_sample * self.num_samples


RELAX_HIDDEN = 100


def relax_surrogate(phi: dict, z: jax.Array) -> jax.Array:
    """RELAX's learned part of the control variate, ``r_phi(z)``: a 200-100-1 tanh MLP of the
    relaxed latents (it does not see the image; the output layer starts at zero, so RELAX
    starts as REBAR)."""
    return jnp.tanh(z @ phi["w1"] + phi["b1"]) @ phi["w2"] + phi["b2"]


def relax_phi0() -> dict:
    w1 = jax.random.normal(jax.random.key(42), (LATENT, RELAX_HIDDEN)) / np.sqrt(LATENT)
    return {"w1": w1, "b1": jnp.zeros(RELAX_HIDDEN), "w2": jnp.zeros(RELAX_HIDDEN), "b2": 0.0}


# Entries whose ``needs`` is missing from ``je`` print "not available in this version".
# REBAR/RELAX: (log temperature, eta[, phi]) learned online (``learn=True``, the default):
# estimator state threaded through the training step (see make_batch_value_and_grad).
ESTIMATORS: list[Entry] = [
    Entry("RELAX", lambda: je.relax(relax_surrogate, relax_phi0()), 3, 1, "relax"),
    Entry("REBAR", lambda: je.rebar(), 3, 1, "rebar"),
    Entry("DisARM", lambda: je.disarm(), 2, 1, "disarm"),
    Entry("ARM", lambda: je.arm(), 2, 1, "arm"),
    Entry(
        "score function (LOO)",
        lambda: je.score_function("leave_one_out"),
        1,
        EVAL_BUDGET,
        "score_function",
    ),
    Entry(
        "stochastic_ad (reverse)", lambda: je.stochastic_ad(mode="reverse"), 2, 1, "stochastic_ad"
    ),
    Entry(
        "Gumbel-Rao (τ=0.5, K=10)",
        lambda: je.gumbel_rao(0.5, num_samples=10),
        1,
        EVAL_BUDGET,
        "gumbel_rao",
    ),
    Entry("ReinMax (τ=1)", lambda: je.reinmax(1.0), 1, EVAL_BUDGET, "reinmax"),
    Entry("straight-through", lambda: je.straight_through(), 1, EVAL_BUDGET, "straight_through"),
    Entry("Concrete (τ=0.5)", lambda: je.gumbel_softmax(0.5), 1, EVAL_BUDGET, "gumbel_softmax"),
    # je.enumeration(): not applicable (2^200 latent configurations).
]
QUICK_ESTIMATORS = ("score function (LOO)", "straight-through")


# --------------------------------------------------------------------------------------
# Data and model
# --------------------------------------------------------------------------------------


def load_data(seed: int = 0, n_train: int = 1500) -> tuple[jax.Array, jax.Array]:
    """Binarized digits (pixels / 16 > 0.5), fixed train/test split."""
    from sklearn.datasets import load_digits

    x = (load_digits().data / 16.0 > 0.5).astype(np.float32)
    perm = np.random.default_rng(seed).permutation(len(x))
    return jnp.asarray(x[perm[:n_train]]), jnp.asarray(x[perm[n_train:]])


def init_params(key: jax.Array, arch: str, train_mean: jax.Array) -> dict[str, list]:
    """Encoder and decoder layers (weights ~ N(0, 1/fan_in), zero biases)."""
    hidden = HIDDEN if arch == "nonlinear" else ()
    params: dict[str, list] = {}
    for part, sizes in (("enc", (PIX, *hidden, LATENT)), ("dec", (LATENT, *hidden, PIX))):
        layers = []
        for k, fan_in, fan_out in zip(
            jax.random.split(jax.random.fold_in(key, part == "dec"), len(sizes) - 1),
            sizes[:-1],
            sizes[1:],
            strict=True,
        ):
            w = jax.random.normal(k, (fan_in, fan_out)) / np.sqrt(fan_in)
            layers.append({"w": w, "b": jnp.zeros(fan_out)})
        params[part] = layers
    p = jnp.clip(train_mean, 1e-3, 1 - 1e-3)
    params["dec"][-1]["b"] = jnp.log(p) - jnp.log1p(-p)
    return params


def mlp(layers: list, h: jax.Array) -> jax.Array:
    for layer in layers[:-1]:
        h = jax.nn.leaky_relu(h @ layer["w"] + layer["b"], LEAKY_SLOPE)
    return h @ layers[-1]["w"] + layers[-1]["b"]


def neg_elbo(key: jax.Array, params: dict, x: jax.Array) -> jax.Array:
    """-log p(x|z) - log p(z) + log q(z|x) for one image x (64,), z ~ q(z|x) (200 latents)."""
    logits = mlp(params["enc"], x)
    z = je.sample(key, D.Bernoulli(logits=logits))  # exact {0,1}, relaxed under Concrete
    log_q = jnp.sum(z * jax.nn.log_sigmoid(logits) + (1.0 - z) * jax.nn.log_sigmoid(-logits))
    log_prior = LATENT * math.log(0.5)  # Bernoulli(0.5) prior: log p(z) is constant
    log_lik = -jnp.sum(optax.sigmoid_binary_cross_entropy(mlp(params["dec"], z), x))
    return log_q - log_prior - log_lik


def factorized_neg_elbo(x_train: jax.Array, data: jax.Array) -> float:
    """Reference: negative log-likelihood (nats/image) of independent pixels at the train means.

    The model without latents; a VAE's ELBO above it measures what the latents explain.
    """
    p = jnp.clip(x_train.mean(axis=0), 1e-3, 1 - 1e-3)
    logits = jnp.log(p) - jnp.log1p(-p)
    return float(jnp.mean(jnp.sum(optax.sigmoid_binary_cross_entropy(logits, data), axis=-1)))


def exact_neg_elbo(params: dict, key: jax.Array, data: jax.Array) -> jax.Array:
    """Negative ELBO (nats) per image, mean of ``EVAL_DRAWS`` exact binary samples.

    Outside a transform ``je.sample`` is a plain draw, so ``z`` is exactly binary.
    """
    keys = jax.random.split(key, (data.shape[0], EVAL_DRAWS))
    per = jax.vmap(jax.vmap(neg_elbo, in_axes=(0, None, None)), in_axes=(0, None, 0))
    return jnp.mean(per(keys, params, data), axis=1)


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


def tree_mean0(tree: Any) -> Any:
    """Mean over the leading axis of floating leaves; the last entry of other leaves."""
    return jax.tree.map(
        lambda g: jnp.mean(g, axis=0) if jnp.issubdtype(g.dtype, jnp.inexact) else g[-1], tree
    )


def _sum_float(acc: jax.Array, x: jax.Array) -> jax.Array:
    """Running sum of a floating state leaf; other leaves (counters) take the last value."""
    return acc + x if jnp.issubdtype(x.dtype, jnp.inexact) else x


def _div_float(a: jax.Array, n: int) -> jax.Array:
    return a / n if jnp.issubdtype(a.dtype, jnp.inexact) else a


def make_batch_value_and_grad(est: Any, num_samples: int, mode: str) -> Callable[..., Any]:
    """``(key, params, xb, state) -> (mean value, mean grads, new state)`` over a minibatch.

    Per data point: one ``je.value_and_grad`` transform per image, combined over the batch
    either by ``jax.lax.scan`` over the images (``mode="scan"``, summing the gradients) or
    by ``jax.vmap`` (``mode="vmap"``, per-image gradients materialized, then averaged).
    The two give the same estimate; on XLA:CPU the vmapped per-image weight gradients are
    batched matmuls with a contraction of size ``num_samples`` (2), which XLA runs ~10x
    slower than the scan's plain matmuls for the [200, 200] networks.
    """
    vg = je.value_and_grad(neg_elbo, est, num_samples=num_samples)
    stateful = getattr(est, "has_state", False)

    def one(k, params, x, state):
        if stateful:
            # ---- HOOK: stateful estimators (REBAR/RELAX, MovingAverage baselines) -----
            # The transform takes ``estimator_state=`` and returns ``((value, grads),
            # new_state)``. Here every image of the batch sees the same incoming state and
            # the per-image new states are averaged. This is a placeholder until the
            # REBAR/RELAX API exists: if their state holds learned control-variate
            # parameters updated inside the estimator, averaging the per-image updated
            # copies only approximates one update with the batch-mean gradient; adapt here.
            (v, g), new_state = vg(k, params, x, estimator_state=state)
            return v, g, new_state
        v, g = vg(k, params, x)
        return v, g, state

    def batch_vg(key, params, xb, state):
        keys = jax.random.split(key, xb.shape[0])
        n = xb.shape[0]
        if mode == "vmap":
            vals, grads, states = jax.vmap(one, in_axes=(0, None, 0, None))(keys, params, xb, state)
            return vals.mean(), tree_mean0(grads), tree_mean0(states)

        def body(acc, kx):
            g_acc, s_acc = acc
            v, g, s = one(kx[0], params, kx[1], state)
            return (jax.tree.map(jnp.add, g_acc, g), jax.tree.map(_sum_float, s_acc, s)), v

        zeros = jax.tree.map(jnp.zeros_like, params)
        s0 = jax.tree.map(jnp.zeros_like, state)
        (g_sum, s_sum), vals = jax.lax.scan(body, (zeros, s0), (keys, xb))
        mean = functools.partial(jax.tree.map, lambda a: _div_float(a, n))
        return vals.mean(), mean(g_sum), mean(s_sum) if stateful else state

    return batch_vg


@dataclass
class Run:
    """Results of one (architecture, estimator) training run."""

    entry: Entry
    eval_steps: list[int] = field(default_factory=list)
    train_curve: list[float] = field(default_factory=list)  # exact neg. ELBO
    test_curve: list[float] = field(default_factory=list)
    objective: np.ndarray | None = None  # per-step training objective as the estimator sees it
    var_steps: list[int] = field(default_factory=list)
    log10_var: list[float] = field(default_factory=list)
    train_s: float = 0.0
    compile_s: float = 0.0
    error: str = ""


def train_one(entry: Entry, arch: str, cfg: argparse.Namespace, data: tuple, key: jax.Array) -> Run:
    x_train, x_test = data
    run = Run(entry)
    est = entry.factory()
    stateful = getattr(est, "has_state", False)
    batch_vg = make_batch_value_and_grad(est, entry.num_samples, cfg.batch_mode)
    opt = optax.adam(LR)
    k_init, k_train, k_eval, k_var = jax.random.split(key, 4)
    params = init_params(k_init, arch, x_train.mean(axis=0))
    opt_state = opt.init(params)
    est_state = est.init() if stateful else None

    def step(carry, k):
        params, opt_state, est_state = carry
        kb, kg = jax.random.split(k)
        idx = jax.random.choice(kb, x_train.shape[0], (cfg.batch,), replace=False)
        value, grads, est_state = batch_vg(kg, params, x_train[idx], est_state)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, est_state), value

    def train_chunk(params, opt_state, est_state, k):
        carry, values = jax.lax.scan(
            step, (params, opt_state, est_state), jax.random.split(k, cfg.chunk)
        )
        return (*carry, values)

    var_batch = x_train[: cfg.var_batch]

    def encoder_grad_variance(params, est_state, k):
        def enc_grad(kr):
            return batch_vg(kr, params, var_batch, est_state)[1]["enc"]

        reps = jax.lax.map(enc_grad, jax.random.split(k, cfg.var_repeats), batch_size=8)
        flat = jnp.concatenate([g.reshape(cfg.var_repeats, -1) for g in jax.tree.leaves(reps)], 1)
        return jnp.mean(jnp.var(flat, axis=0, ddof=1))

    t0 = time.perf_counter()
    chunk_fn, _ = compile_timed(train_chunk, params, opt_state, est_state, k_train)
    run.compile_s = time.perf_counter() - t0
    var_fn = jax.jit(encoder_grad_variance)
    eval_fn = jax.jit(exact_neg_elbo)
    x_all, n_train = jnp.concatenate([x_train, x_test]), x_train.shape[0]

    n_chunks = cfg.steps // cfg.chunk
    var_at = {0, n_chunks // 2, n_chunks}

    def checkpoint(c: int) -> None:
        if c in var_at:
            v = float(var_fn(params, est_state, jax.random.fold_in(k_var, c)))
            run.var_steps.append(c * cfg.chunk)
            run.log10_var.append(math.log10(v) if v > 0 else float("nan"))
        run.eval_steps.append(c * cfg.chunk)
        per_image = np.asarray(eval_fn(params, k_eval, x_all))  # one compilation
        run.train_curve.append(float(per_image[:n_train].mean()))
        run.test_curve.append(float(per_image[n_train:].mean()))

    checkpoint(0)
    objective = []
    for c, k in enumerate(jax.random.split(k_train, n_chunks), start=1):
        t0 = time.perf_counter()
        params, opt_state, est_state, values = jax.block_until_ready(
            chunk_fn(params, opt_state, est_state, k)
        )
        run.train_s += time.perf_counter() - t0
        objective.append(np.asarray(values))
        checkpoint(c)
    run.objective = np.concatenate(objective)
    return run


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def table(runs: list[Run], cfg: argparse.Namespace) -> str:
    var_steps = next((r.var_steps for r in runs if r.var_steps), [])
    header = [
        "estimator",
        "S",
        "evals/step (per image)",
        "train ELBO",
        "test ELBO",
        *[f"log10 Var(enc. grad) @ step {s}" for s in var_steps],
        "train wall",
        "ms/step",
    ]
    rows = []
    for r in runs:
        e = r.entry
        evals = f"{e.evals}" + (" (over budget)" if e.evals > EVAL_BUDGET else "")
        if r.error:
            rows.append([e.name, e.num_samples, evals, r.error, "", *[""] * len(var_steps), "", ""])
            continue
        rows.append(
            [
                e.name,
                e.num_samples,
                evals,
                f"{-r.train_curve[-1]:.2f}",
                f"{-r.test_curve[-1]:.2f}",
                *[f"{v:.2f}" for v in r.log10_var],
                f"{r.train_s:.1f} s",
                f"{1e3 * r.train_s / cfg.steps:.2f}",
            ]
        )
    return md_table(header, rows)


def _get(runs: list[Run], name: str) -> Run | None:
    return next((r for r in runs if r.entry.name == name and not r.error), None)


def ranking(runs: list[Run]) -> list[str]:
    """The published claims, each checked against this run's numbers."""
    out = []

    def elbo_claim(a: str, b: str, text: str) -> None:
        ra, rb = _get(runs, a), _get(runs, b)
        if ra is None or rb is None:
            missing = " and ".join(n for n, r in ((a, ra), (b, rb)) if r is None)
            out.append(f"* {text}: not testable ({missing} not run).")
            return
        tr = -ra.train_curve[-1] + rb.train_curve[-1]
        te = -ra.test_curve[-1] + rb.test_curve[-1]
        verdict = (
            f"tie (|Δ| < {ELBO_TIE_NATS:.2g} nats, the seed-to-seed spread)"
            if abs(tr) < ELBO_TIE_NATS
            else ("holds" if tr > 0 else "does not hold")
        )
        out.append(
            f"* {text}: **{verdict}** (train ELBO {a} − {b} = {tr:+.2f} nats, test {te:+.2f})."
        )

    def var_claim(a: str, b: str, text: str) -> None:
        ra, rb = _get(runs, a), _get(runs, b)
        if ra is None or rb is None:
            missing = " and ".join(n for n, r in ((a, ra), (b, rb)) if r is None)
            out.append(f"* {text}: not testable ({missing} not run).")
            return
        diffs = [va - vb for va, vb in zip(ra.log10_var, rb.log10_var, strict=True)]
        n_hold = sum(d < 0 for d in diffs)
        verdict = {len(diffs): "holds", 0: "does not hold"}.get(n_hold, "holds partly")
        detail = ", ".join(f"step {s}: {d:+.2f}" for s, d in zip(ra.var_steps, diffs, strict=True))
        out.append(
            f"* {text}: **{verdict}** at {n_hold}/{len(diffs)} checkpoints "
            f"(log10 Var {a} − {b}: {detail})."
        )

    elbo_claim("RELAX", "REBAR", "RELAX ≳ REBAR (ELBO)")
    elbo_claim("REBAR", "score function (LOO)", "REBAR > score function with baseline (ELBO)")
    elbo_claim("score function (LOO)", "Concrete (τ=0.5)", "score function (LOO) > Concrete (ELBO)")
    elbo_claim("DisARM", "score function (LOO)", "DisARM ≥ LOO at equal evaluations (ELBO)")
    elbo_claim("DisARM", "ARM", "DisARM > ARM (ELBO)")
    var_claim(
        "DisARM",
        "score function (LOO)",
        "DisARM below leave-one-out in encoder-gradient variance at equal evaluations",
    )
    var_claim("DisARM", "ARM", "DisARM below ARM in encoder-gradient variance")
    var_claim(
        "score function (LOO)",
        "Concrete (τ=0.5)",
        "(not a published claim; context) LOO below Concrete in variance",
    )
    return out


def plot(results: dict[str, list[Run]], cfg: argparse.Namespace, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = list(results)
    fig, axes = plt.subplots(len(archs), 2, figsize=(11, 3.8 * len(archs)), squeeze=False)
    names = [e.name for e in ESTIMATORS]
    colors = {n: f"C{i}" for i, n in enumerate(names)}
    for row, arch in zip(axes, archs, strict=True):
        ax0, ax1 = row
        for r in results[arch]:
            if r.error:
                continue
            c = colors[r.entry.name]
            ax0.plot(r.eval_steps, -np.asarray(r.train_curve), "-", color=c, label=r.entry.name)
            ax0.plot(r.eval_steps, -np.asarray(r.test_curve), ":", color=c)
            ax1.plot(r.var_steps, r.log10_var, "o-", color=c, label=r.entry.name)
        ax0.set_title(f"{arch}: ELBO, exact samples (train solid, test dotted)", fontsize=9)
        ax0.set_xlabel("training step")
        ax0.set_ylabel("ELBO (nats / image)")
        lo = min(
            (-max(r.train_curve[len(r.train_curve) // 4 :]) for r in results[arch] if not r.error),
            default=-60,
        )
        ax0.set_ylim(max(lo - 2, -80), None)
        ax1.set_title(f"{arch}: mean per-parameter variance of the encoder gradient", fontsize=9)
        ax1.set_xlabel("training step")
        ax1.set_ylabel("log10 variance")
        for ax in row:
            ax.grid(True, alpha=0.3)
        ax1.legend(fontsize=7)
    fig.suptitle(
        f"Bernoulli VAE (200 latents) on binarized 8x8 digits, {EVAL_BUDGET} program "
        f"evaluations per image per step, {cfg.steps} steps of batch {cfg.batch}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def config(args: argparse.Namespace) -> argparse.Namespace:
    cfg = argparse.Namespace(**vars(args))
    if args.quick:
        defaults = {"steps": 20, "chunk": 10, "batch": 16, "var_repeats": 4, "var_batch": 8}
        cfg.arch = "linear"
    else:
        defaults = {"steps": 1000, "chunk": 100, "batch": 64, "var_repeats": 32, "var_batch": 64}
    for k, v in defaults.items():
        if getattr(cfg, k) is None:
            setattr(cfg, k, v)
    cfg.chunk = min(cfg.chunk, cfg.steps)
    cfg.steps = cfg.steps // cfg.chunk * cfg.chunk
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: linear, 2 estimators")
    ap.add_argument("--out", default=str(_HERE / "discrete_vae.png"), help="plot path")
    ap.add_argument("--md", default=None, help="also write the Markdown report here")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--chunk", type=int, default=None, help="steps per jitted chunk")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--var-repeats", type=int, default=None)
    ap.add_argument("--var-batch", type=int, default=None)
    ap.add_argument("--arch", default="linear,nonlinear")
    ap.add_argument("--only", default=None, help="comma-separated substrings of estimator names")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--batch-mode", choices=("scan", "vmap"), default="scan", help="per-image transforms"
    )
    cfg = config(ap.parse_args())

    t_start = time.perf_counter()
    data = load_data()
    entries = []
    lines = ["# Discrete VAE benchmark", ""]
    unavailable = []
    for e in ESTIMATORS:
        if not hasattr(je, e.needs):
            print(f"{e.name}: je.{e.needs} not available in this version")
            unavailable.append(f"{e.name} (`je.{e.needs}`)")
            continue
        if cfg.quick and e.name not in QUICK_ESTIMATORS:
            continue
        if cfg.only and not any(o.strip().lower() in e.name.lower() for o in cfg.only.split(",")):
            continue
        entries.append(e)

    print(
        f"data: {data[0].shape[0]} train / {data[1].shape[0]} test images, "
        f"mean pixel {float(data[0].mean()):.3f}; {cfg.steps} steps of batch {cfg.batch}, "
        f"budget {EVAL_BUDGET} evaluations per image per step",
        flush=True,
    )
    results: dict[str, list[Run]] = {}
    for arch in cfg.arch.split(","):
        results[arch] = []
        for e in entries:
            key = jax.random.key(cfg.seed)  # same init and batches for every estimator
            try:
                run = train_one(e, arch, cfg, data, key)
            except Exception as exc:  # report, keep going with the others
                run = Run(e, error=f"failed: {type(exc).__name__}: {str(exc)[:120]}")
                print(f"{arch:9s} {e.name}: {run.error}", flush=True)
            else:
                print(
                    f"{arch:9s} {e.name:26s} train ELBO {-run.train_curve[-1]:7.2f} "
                    f"test {-run.test_curve[-1]:7.2f}  log10 Var "
                    + " ".join(f"{v:6.2f}" for v in run.log10_var)
                    + f"  train {run.train_s:5.1f} s, compile {run.compile_s:4.1f} s",
                    flush=True,
                )
            results[arch].append(run)

    total = time.perf_counter() - t_start
    lines += [
        "Machine: "
        + "; ".join(
            f"{k} {v}"
            for k, v in machine_description()
            if k.split(" ")[0] in ("CPU", "usable", "jax", "load")
        ),
        "",
        f"{cfg.steps} Adam steps (lr {LR}) of {cfg.batch} images, budget {EVAL_BUDGET} "
        f"program evaluations per image per step; ELBO in nats per image (higher is "
        f"better) with exact binary samples ({EVAL_DRAWS} per image) on all 1500 train / "
        f"297 test images; gradient variance over {cfg.var_repeats} repeats of the step's "
        f"encoder gradient on a fixed batch of {cfg.var_batch}. Total run time "
        f"{total:.0f} s.",
        "",
        f"Reference without latents (independent pixels at the train means): "
        f"log-likelihood {-factorized_neg_elbo(data[0], data[0]):.2f} train / "
        f"{-factorized_neg_elbo(data[0], data[1]):.2f} test nats per image.",
        "",
    ]
    for arch, runs in results.items():
        lines += [f"## {arch}", "", table(runs, cfg), "", "Ranking vs the published one:", ""]
        lines += ranking(runs)
        lines.append("")
    if unavailable:
        lines += ["Not available in this version: " + ", ".join(unavailable) + ".", ""]
    text = "\n".join(lines)
    print()
    print(text)
    if cfg.md:
        Path(cfg.md).write_text(text)
    plot(results, cfg, cfg.out)
    print(f"plot written to {cfg.out}")


if __name__ == "__main__":
    main()
