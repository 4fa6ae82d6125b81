"""Research workflow: compare gradient estimators on one program, sweep hyper-parameters.

:func:`compare` runs several estimators on the same program, parameters and key and
summarizes each one's per-sample estimates (mean, spread, standard error, bias and z-score
against an exact gradient) together with its compile time and run time per sample. The
*work-normalized variance* -- per-sample variance times seconds per sample -- is the
figure of merit for choosing an estimator: to reach a standard error ``s`` an estimator
needs ``N = var / s**2`` samples and so ``var * t / s**2`` seconds, so the smallest
work-normalized variance reaches a target accuracy soonest (among unbiased estimators;
a biased one is only as good as its bias allows).

:func:`sweep` evaluates one estimator over a grid of parameter values and/or one of its
numeric hyper-parameters (a finite-difference ``step``, a Gumbel-softmax
``temperature``) in a single compiled :func:`jax.vmap`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxestim._errors import EstimatorError
from jaxestim._estimators import Estimator
from jaxestim._transforms import grad_samples

__all__ = ["ComparisonReport", "EstimatorResult", "SweepResult", "compare", "sweep"]


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def _new_figure(**kwargs: Any) -> Any:
    """A matplotlib Figure not registered with pyplot (no global state, no GUI needed).

    matplotlib is imported lazily (it is the optional ``plot`` extra). When no display is
    available and pyplot has not been imported yet, the non-interactive "Agg" backend is
    selected; saving with ``fig.savefig`` and inline display in Jupyter work either way.
    """
    try:
        import matplotlib
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "plotting needs matplotlib: pip install 'jaxestim[plot]' (or matplotlib)"
        ) from e
    headless = sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )
    if headless and "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _fmt(x: float | None, digits: int = 4) -> str:
    """Compact number formatting for tables (``-`` for missing values)."""
    if x is None:
        return "-"
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    return f"{x:.{digits}g}"


def _json_float(x: Any) -> float | None:
    """A plain Python float, with non-finite values (e.g. ``z`` when SE = 0) as ``None``."""
    x = float(x)
    return x if math.isfinite(x) else None


def _json_list(a: np.ndarray | None) -> list | None:
    if a is None:
        return None
    a = np.asarray(a, dtype=np.float64)
    return np.vectorize(_json_float, otypes=[object])(a).tolist() if a.size else []


def _flatten_exact(exact: Any, size: int, where: str) -> np.ndarray:
    """``exact`` (a scalar or a pytree shaped like the parameters) as a float64 ``(P,)``."""
    leaves = jax.tree_util.tree_leaves(exact)
    if len(leaves) == 1 and np.ndim(leaves[0]) == 0:
        return np.full(size, float(np.asarray(leaves[0])), dtype=np.float64)
    flat = np.concatenate([np.ravel(np.asarray(leaf, dtype=np.float64)) for leaf in leaves])
    if flat.size != size:
        raise ValueError(
            f"{where}: `exact` has {flat.size} coordinates but the gradient has {size}; pass "
            "a scalar or a pytree shaped like the differentiated argument(s)"
        )
    return flat


def _call_args(params: Any, argnums: int | Sequence[int]) -> tuple:
    """The positional arguments after the key: ``(params,)`` for ``argnums=1``."""
    if argnums == 1:
        return (params,)
    if not isinstance(params, tuple | list):
        raise TypeError(
            "with `argnums` other than 1, `params` must be the tuple of all positional "
            "arguments of fun after the key"
        )
    return tuple(params)


# --------------------------------------------------------------------------------------
# compare
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class EstimatorResult:
    """Summary of one estimator's per-sample gradient estimates (see :func:`compare`).

    Flat arrays have one entry per gradient coordinate (``P`` of them, in
    :func:`jax.flatten_util.ravel_pytree` order). When the estimator does not apply to
    the program, ``applicable`` is False, ``message`` says why and the statistics are None.

    Attributes:
      name: the key given in ``estimators``.
      estimator: the estimator object.
      applicable: whether the estimator ran.
      message: the :class:`jaxestim.EstimatorError` message when not applicable.
      samples: per-sample estimates, float64 ``(N, P)``.
      mean: the mean estimate shaped like the differentiated argument(s).
      mean_flat, std_flat, se_flat: per-coordinate mean, standard deviation (``ddof=1``)
        and standard error ``std / sqrt(N)``.
      std_rms: root-mean-square of ``std_flat`` (a scalar spread summary).
      bias_flat, z_flat: ``mean - exact`` and ``bias / SE`` (None without ``exact``).
      compile_s: seconds to lower and compile the jitted ``grad_samples``.
      seconds_per_sample: median wall time of the compiled function / ``N``.
      work_normalized_variance: mean per-coordinate variance times ``seconds_per_sample``.
    """

    name: str
    estimator: Any
    applicable: bool
    message: str | None = None
    samples: np.ndarray | None = None
    mean: Any = None
    mean_flat: np.ndarray | None = None
    std_flat: np.ndarray | None = None
    se_flat: np.ndarray | None = None
    std_rms: float | None = None
    bias_flat: np.ndarray | None = None
    z_flat: np.ndarray | None = None
    compile_s: float | None = None
    seconds_per_sample: float | None = None
    work_normalized_variance: float | None = None


_COLUMNS = (
    "estimator",
    "mean",
    "std",
    "SE",
    "bias",
    "z",
    "compile s",
    "µs/sample",
    "work-norm var",
)


@dataclasses.dataclass
class ComparisonReport:
    """The result of :func:`compare`: one :class:`EstimatorResult` per estimator.

    ``str(report)`` is an aligned table; :meth:`to_markdown`, :meth:`to_dict` and
    :meth:`plot` give the same information as GitHub markdown, plain JSON-serializable
    Python objects, and histograms. For a multi-coordinate gradient the table shows
    coordinate ``coord`` (default 0) in the mean/std/SE/bias/z columns and adds the
    RMS-over-coordinates std; the work-normalized variance always averages all
    coordinates.

    Attributes:
      results: estimator name -> :class:`EstimatorResult`, in the order given.
      num_samples: ``N``.
      num_coords: ``P``, the number of gradient coordinates.
      exact_flat: the exact gradient, float64 ``(P,)``, or None.
      title: optional heading used by the printers.
    """

    results: dict[str, EstimatorResult]
    num_samples: int
    num_coords: int
    exact_flat: np.ndarray | None = None
    title: str | None = None

    # --- access -----------------------------------------------------------------------
    def __getitem__(self, name: str) -> EstimatorResult:
        return self.results[name]

    @property
    def applicable(self) -> dict[str, EstimatorResult]:
        """The results of the estimators that ran."""
        return {k: r for k, r in self.results.items() if r.applicable}

    def best(self, max_abs_z: float | None = None) -> str:
        """Name of the estimator with the smallest work-normalized variance.

        With ``max_abs_z`` (and an exact gradient), estimators whose ``|z|`` exceeds it in
        any coordinate (detectably biased at this sample size) are skipped.
        """
        cands = self.applicable
        if max_abs_z is not None and self.exact_flat is not None:
            cands = {
                k: r
                for k, r in cands.items()
                if np.all(np.nan_to_num(np.abs(r.z_flat), nan=0.0) <= max_abs_z)
            }
        if not cands:
            raise ValueError("no estimator satisfies the criterion")
        return min(cands, key=lambda k: cands[k].work_normalized_variance)

    # --- tables -----------------------------------------------------------------------
    def _rows(self, coord: int) -> tuple[list[str], list[list[str]], list[str]]:
        multi = self.num_coords > 1
        header = list(_COLUMNS)
        if multi:
            header.insert(3, "RMS std")
        rows, notes = [], []
        for name, r in self.results.items():
            if not r.applicable:
                notes.append(f"{name}: not applicable: {r.message}")
                row = [name, "not applicable"] + ["-"] * (len(header) - 2)
                rows.append(row)
                continue
            bias = None if r.bias_flat is None else r.bias_flat[coord]
            z = None if r.z_flat is None else r.z_flat[coord]
            row = [
                name,
                _fmt(r.mean_flat[coord]),
                _fmt(r.std_flat[coord]),
                _fmt(r.se_flat[coord], 3),
                _fmt(bias, 3),
                _fmt(z, 3),
                f"{r.compile_s:.2f}",
                _fmt(r.seconds_per_sample * 1e6, 3),
                _fmt(r.work_normalized_variance, 3),
            ]
            if multi:
                row.insert(3, _fmt(r.std_rms))
            rows.append(row)
        return header, rows, notes

    def _preamble(self, coord: int) -> list[str]:
        lines = []
        if self.title:
            lines.append(self.title)
        info = f"N = {self.num_samples} samples per estimator"
        if self.exact_flat is not None:
            info += f"; exact gradient = {_fmt(self.exact_flat[coord], 6)}"
            if self.num_coords > 1:
                info += f" (coordinate {coord})"
        lines.append(info)
        if self.num_coords > 1:
            lines.append(
                f"gradient has {self.num_coords} coordinates: mean/std/SE/bias/z show "
                f"coordinate {coord}; 'RMS std' is the root-mean-square std over all "
                "coordinates; work-norm var uses the mean variance over all coordinates"
            )
        return lines

    def table(self, coord: int = 0) -> str:
        """The aligned plain-text table, showing gradient coordinate ``coord``."""
        self._check_coord(coord)
        header, rows, notes = self._rows(coord)
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

        def line(cells: list[str]) -> str:
            first = cells[0].ljust(widths[0])
            rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
            return "  ".join([first, *rest]).rstrip()

        out = self._preamble(coord)
        out.append(line(header))
        out.append("  ".join("-" * w for w in widths))
        out.extend(line(r) for r in rows)
        out.extend(notes)
        out.append(
            "work-norm var = per-sample variance x seconds per sample (smaller reaches a "
            "target standard error sooner)"
        )
        return "\n".join(out)

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        return self.table()

    def to_markdown(self, coord: int = 0) -> str:
        """A GitHub-flavoured markdown table (one row per estimator) with notes below it."""
        self._check_coord(coord)
        header, rows, notes = self._rows(coord)

        def line(cells: list[str]) -> str:
            return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

        out = [line(header), "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
        out.extend(line(r) for r in rows)
        pre = self._preamble(coord)
        text = "\n".join(out)
        extra = [*(f"- {n}" for n in notes)]
        parts = ["\n\n".join(pre), text]
        if extra:
            parts.append("\n".join(extra))
        return "\n\n".join(parts) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """Plain Python floats, lists and strings (``json.dumps``-able).

        Non-finite numbers (``z`` when the standard error is 0) become ``None``.
        """
        ests = {}
        for name, r in self.results.items():
            d: dict[str, Any] = {
                "estimator": type(r.estimator).__name__,
                "estimator_name": getattr(r.estimator, "name", None),
                "applicable": r.applicable,
                "message": r.message,
            }
            if r.applicable:
                d.update(
                    mean=_json_list(r.mean_flat),
                    std=_json_list(r.std_flat),
                    se=_json_list(r.se_flat),
                    std_rms=_json_float(r.std_rms),
                    bias=_json_list(r.bias_flat),
                    z=_json_list(r.z_flat),
                    compile_s=_json_float(r.compile_s),
                    seconds_per_sample=_json_float(r.seconds_per_sample),
                    work_normalized_variance=_json_float(r.work_normalized_variance),
                )
            ests[name] = d
        return {
            "title": self.title,
            "num_samples": int(self.num_samples),
            "num_coords": int(self.num_coords),
            "exact": _json_list(self.exact_flat),
            "estimators": ests,
        }

    def _check_coord(self, coord: int) -> None:
        if not isinstance(coord, int) or not -self.num_coords <= coord < self.num_coords:
            raise IndexError(
                f"coord={coord!r} out of range for a gradient with {self.num_coords} coordinates"
            )

    # --- plot -------------------------------------------------------------------------
    def plot(
        self, coord: int = 0, *, bins: int = 40, ncols: int = 3, figsize: tuple | None = None
    ) -> Any:
        """Histograms of the per-sample estimates of gradient coordinate ``coord``.

        One axes per estimator (a not-applicable one shows its message), with the exact
        gradient (when known) and the mean marked by vertical lines; titles give the
        estimator's name and standard error. Returns a ``matplotlib.figure.Figure``.
        """
        self._check_coord(coord)
        names = list(self.results)
        ncols = max(1, min(ncols, len(names)))
        nrows = math.ceil(len(names) / ncols)
        fig = _new_figure(figsize=figsize or (4.2 * ncols, 3.3 * nrows), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax in axes[len(names) :]:
            fig.delaxes(ax)
        which = f"∂E[f]/∂θ[{coord}]" if self.num_coords > 1 else "∂E[f]/∂θ"
        for ax, name in zip(axes, names, strict=False):
            r = self.results[name]
            if not r.applicable:
                ax.set_title(f"{name}: not applicable", fontsize=10)
                ax.text(
                    0.5,
                    0.5,
                    _wrap(r.message or "", 40),
                    ha="center",
                    va="center",
                    fontsize=7,
                    transform=ax.transAxes,
                    wrap=True,
                )
                ax.set_xticks([])
                ax.set_yticks([])
                continue
            x = r.samples[:, coord]
            # heavy tails or rare large values (score function, finite differences at
            # discrete sites) are invisible in a linear histogram: use a log density axis
            # when the kurtosis is large (a Gaussian has 3)
            marks = [r.mean_flat[coord]]
            if self.exact_flat is not None:
                marks.append(self.exact_flat[coord])
            lo, hi = min(float(np.min(x)), *marks), max(float(np.max(x)), *marks)
            if hi - lo < 1e-12 * max(1.0, abs(hi)):
                lo, hi = lo - 0.5, hi + 0.5
            centered = x - np.mean(x)
            var = np.mean(centered**2)
            log_y = bool(var > 0 and np.mean(centered**4) / var**2 > 20.0)  # kurtosis
            ax.hist(
                x,
                bins=bins,
                range=(lo, hi),
                density=True,
                log=log_y,
                color="C0",
                alpha=0.7,
                label=f"{self.num_samples} samples",
            )
            ax.axvline(
                r.mean_flat[coord], color="C3", lw=1.5, label=f"mean = {_fmt(r.mean_flat[coord])}"
            )
            if self.exact_flat is not None:  # drawn last: dashed, visible over the mean
                ax.axvline(
                    self.exact_flat[coord],
                    color="k",
                    ls="--",
                    lw=1.5,
                    label=f"exact = {_fmt(self.exact_flat[coord])}",
                )
            ax.set_title(f"{name}\nSE = {_fmt(r.se_flat[coord], 3)}", fontsize=10)
            ax.set_xlabel(f"per-sample estimate of {which}")
            ax.set_ylabel("density (log scale)" if log_y else "density")
            ax.legend(fontsize=7)
        if self.title:
            fig.suptitle(self.title)
        return fig


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def _median_time(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def compare(
    fun: Callable[..., Any],
    params: Any,
    estimators: Mapping[str, Estimator],
    *,
    key: jax.Array,
    num_samples: int,
    exact: Any = None,
    argnums: int | Sequence[int] = 1,
    chunk_size: int | None = None,
    repeats: int = 3,
    title: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> ComparisonReport:
    """Run several estimators on one program and summarize their per-sample estimates.

    For each estimator, ``je.grad_samples(fun, est, argnums=argnums,
    num_samples=num_samples, chunk_size=chunk_size)`` is jitted; its compile time is
    measured (``lower(...).compile()``) and then its run time (median of ``repeats``
    runs of the compiled function, ``block_until_ready``). All estimators use the same
    ``key``, so their per-sample estimates match those of ``je.grad_samples`` called
    with that key.

    Args:
      fun: the program ``fun(key, params)`` (or ``fun(key, *params)``, see ``argnums``).
      params: the argument after the key. With ``argnums`` other than 1, the tuple of all
        positional arguments after the key.
      estimators: name -> estimator (names label the table rows).
      key: PRNG key.
      num_samples: ``N`` per-sample estimates per estimator (``>= 2``).
      exact: the exact gradient: a scalar or a pytree like the differentiated
        argument(s); enables the bias and z-score columns.
      argnums: which argument(s) to differentiate (as in :func:`jaxestim.grad`).
      chunk_size: passed to ``grad_samples`` (bounds memory for large ``N``).
      repeats: timed runs after compilation (the median is reported). For small ``N``
        the time per sample (and so the work-normalized variance) is dominated by the
        fixed dispatch overhead of a call; use thousands of samples to compare costs.
      title: optional heading for the printed table and the plot.
      progress: called with the estimator's name before it runs (e.g. for a progress line).

    Returns:
      A :class:`ComparisonReport`. Estimators that raise :class:`jaxestim.EstimatorError`
      for this program (e.g. pathwise at a discrete site) are recorded as not applicable
      with the error message; if every estimator fails, an ``EstimatorError`` listing the
      messages is raised.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f"compare: `num_samples` must be an int >= 2, got {num_samples!r}")
    if not isinstance(estimators, Mapping) or not estimators:
        raise ValueError("compare: `estimators` must be a non-empty dict name -> estimator")
    if repeats < 1:
        raise ValueError(f"compare: `repeats` must be >= 1, got {repeats!r}")
    args = _call_args(params, argnums)
    results: dict[str, EstimatorResult] = {}
    exact_flat = None
    num_coords = None
    for name, est in estimators.items():
        if progress is not None:
            progress(name)
        try:
            gs = jax.jit(
                grad_samples(
                    fun, est, argnums=argnums, num_samples=num_samples, chunk_size=chunk_size
                )
            )
            t0 = time.perf_counter()
            compiled = gs.lower(key, *args).compile()
            compile_s = time.perf_counter() - t0
        except EstimatorError as e:
            results[name] = EstimatorResult(name, est, applicable=False, message=str(e))
            continue
        out = jax.block_until_ready(compiled(key, *args))
        seconds = _median_time(lambda: compiled(key, *args), repeats)
        one = jax.tree_util.tree_map(lambda a: a[0], out)
        _, unravel = ravel_pytree(one)
        flat = jax.vmap(lambda t: ravel_pytree(t)[0])(out)
        x = np.asarray(flat, dtype=np.float64).reshape(num_samples, -1)
        p = x.shape[1]
        if num_coords is None:
            num_coords = p
            if exact is not None:
                exact_flat = _flatten_exact(exact, p, "compare")
        mean = x.mean(axis=0)
        std = x.std(axis=0, ddof=1)
        se = std / math.sqrt(num_samples)
        bias = z = None
        if exact_flat is not None:
            bias = mean - exact_flat
            # z = bias / SE; with SE = 0 (a deterministic estimate) it is 0 or +-inf
            safe_se = np.where(se > 0, se, 1.0)
            degenerate = np.where(bias == 0, 0.0, np.copysign(np.inf, bias))
            z = np.where(se > 0, bias / safe_se, degenerate)
        per_sample_s = seconds / num_samples
        results[name] = EstimatorResult(
            name=name,
            estimator=est,
            applicable=True,
            samples=x,
            mean=jax.tree_util.tree_map(np.asarray, unravel(jnp.asarray(mean))),
            mean_flat=mean,
            std_flat=std,
            se_flat=se,
            std_rms=float(np.sqrt(np.mean(std**2))),
            bias_flat=bias,
            z_flat=z,
            compile_s=compile_s,
            seconds_per_sample=per_sample_s,
            work_normalized_variance=float(np.mean(std**2)) * per_sample_s,
        )
    if num_coords is None:
        msgs = "; ".join(f"{n}: {r.message}" for n, r in results.items())
        raise EstimatorError(f"compare: no estimator applies to this program ({msgs})")
    return ComparisonReport(results, num_samples, num_coords, exact_flat, title)


# --------------------------------------------------------------------------------------
# sweep
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class SweepResult:
    """The result of :func:`sweep`.

    Grid axes come first: ``(H, G)`` when both a hyper-parameter (``H`` values) and a
    parameter grid (``G`` points) are swept, ``(H,)`` or ``(G,)`` when only one is; then
    the parameter's own shape.

    Attributes:
      estimator: the base estimator.
      num_samples: ``N`` (an array of values when swept over ``"num_samples"``).
      params_grid: the parameter grid (leading axis ``G``) or None.
      hyper_name, hyper_values: the swept hyper-parameter, or None.
      mean, std, se: per-grid-point mean, standard deviation (``ddof=1``) and standard
        error of the per-sample estimates.
      exact, bias: exact gradients and ``mean - exact`` when ``exact_fn`` was given.
    """

    estimator: Any
    num_samples: Any
    params_grid: np.ndarray | None
    hyper_name: str | None
    hyper_values: np.ndarray | None
    mean: np.ndarray
    std: np.ndarray
    se: np.ndarray
    exact: np.ndarray | None = None
    bias: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain Python lists and floats (``json.dumps``-able; non-finite -> None)."""
        return {
            "estimator": type(self.estimator).__name__,
            "num_samples": np.asarray(self.num_samples).tolist(),
            "params_grid": _json_list(self.params_grid),
            "hyper_name": self.hyper_name,
            "hyper_values": _json_list(self.hyper_values),
            "mean": _json_list(self.mean),
            "std": _json_list(self.std),
            "se": _json_list(self.se),
            "exact": _json_list(self.exact),
            "bias": _json_list(self.bias),
        }

    def _stat(self, name: str) -> np.ndarray:
        if name in ("bias", "abs_bias", "exact") and self.bias is None:
            raise ValueError(f"SweepResult.plot: {name!r} needs `exact_fn` in sweep()")
        if name == "abs_bias":
            return np.abs(self.bias)
        if name not in ("mean", "std", "se", "bias", "exact"):
            raise ValueError(
                f"SweepResult.plot: unknown statistic {name!r}; expected 'mean', 'std', "
                "'se', 'bias', 'abs_bias' or 'exact'"
            )
        return np.broadcast_to(getattr(self, name), self.mean.shape)

    def plot(
        self,
        ax: Any = None,
        *,
        stats: Sequence[str] | None = None,
        coord: int = 0,
        logx: bool | None = None,
        logy: bool | None = None,
        label: str | None = None,
    ) -> Any:
        """Plot statistics against the swept axis; returns the Figure.

        The x axis is the hyper-parameter when one was swept (one line per parameter grid
        point if a parameter grid was swept too), otherwise the parameter grid (its
        coordinate ``coord`` for array parameters). ``stats`` chooses among ``"mean"``,
        ``"std"``, ``"se"``, ``"bias"``, ``"abs_bias"`` and ``"exact"``; by default
        ``("abs_bias", "std")`` for a hyper-parameter sweep with ``exact_fn`` (bias and
        spread vs temperature), ``("std",)`` for one without, and ``("mean", "exact")`` or
        ``("mean",)`` for a parameter sweep. Logarithmic axes are the default for a
        ``step``/``temperature``/``num_samples`` x axis and for positive statistics
        (std, se, abs_bias) -- e.g. std vs finite-difference step on log-log axes. Pass
        ``ax`` to draw into existing axes (e.g. to overlay CRN and no-CRN sweeps) and
        ``label`` to prefix the legend entries.
        """
        hyper = self.hyper_name is not None
        if stats is None:
            if hyper:
                stats = ("abs_bias", "std") if self.bias is not None else ("std",)
            else:
                stats = ("mean", "exact") if self.bias is not None else ("mean",)
        stats = tuple(stats)
        if ax is None:
            fig = _new_figure(figsize=(5.5, 4), layout="constrained")
            ax = fig.add_subplot()
        else:
            fig = ax.figure
        coord_ix = (slice(None),) * (2 if hyper and self.params_grid is not None else 1)
        if hyper:
            x = np.asarray(self.hyper_values, dtype=np.float64)
            xlabel = self.hyper_name
        else:
            g = np.asarray(self.params_grid, dtype=np.float64)
            x = g.reshape(g.shape[0], -1)[:, coord]
            xlabel = "θ" if g.ndim == 1 else f"θ[{coord}]"
        pos_only = {"std", "se", "abs_bias"}
        if logx is None:
            logx = hyper and self.hyper_name in ("step", "temperature", "num_samples")
        if logy is None:
            logy = set(stats) <= pos_only
        prefix = f"{label}: " if label else ""
        for s in stats:
            y = self._stat(s)
            y = y.reshape(*y.shape[: len(coord_ix)], -1)[(*coord_ix, coord)]
            style = {"ls": "--", "color": "k"} if s == "exact" else {"marker": "o", "ms": 3}
            if y.ndim == 2:  # hyper x params grid: one line per parameter value
                grid = np.asarray(self.params_grid).reshape(y.shape[1], -1)[:, coord]
                for j in range(y.shape[1]):
                    ax.plot(x, y[:, j], label=f"{prefix}{s} (θ={_fmt(grid[j], 3)})", **style)
            else:
                ax.plot(x, y, label=f"{prefix}{s}", **style)
        if logx:
            ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(", ".join(stats) + " of the gradient estimate")
        name = getattr(self.estimator, "name", type(self.estimator).__name__)
        ax.set_title(f"{name}: N = {_fmt(np.max(self.num_samples))} samples per point")
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        return fig


def sweep(
    fun: Callable[..., Any],
    params_grid: Any = None,
    *,
    estimator: Estimator,
    key: jax.Array,
    num_samples: int,
    params: Any = None,
    hyper: tuple[str, Any] | None = None,
    exact_fn: Callable[[Any], Any] | None = None,
    argnums: int = 1,
    chunk_size: int | None = None,
) -> SweepResult:
    """Evaluate one estimator over a grid of parameters and/or of one hyper-parameter.

    The whole grid runs as one compiled :func:`jax.vmap` (nested when both axes are
    swept): every grid point uses the same ``key``, i.e. the same per-sample keys, so
    curves are smooth in the swept quantity (common random numbers across the grid).
    Each point's statistics equal those of ``je.grad_samples(fun, est_i,
    num_samples=num_samples)(key, params_i)``.

    Args:
      fun: the program ``fun(key, params)``.
      params_grid: array whose leading axis is the grid of parameter values (scalar or
        array parameters).
      estimator: the estimator (the base for a hyper-parameter sweep).
      key: PRNG key.
      num_samples: per-sample estimates per grid point (``>= 2``).
      params: the parameter value for a sweep over ``hyper`` only.
      hyper: ``(name, values)`` for a numeric field of the estimator, e.g.
        ``("temperature", [...])`` for :func:`jaxestim.gumbel_softmax` or
        ``("step", [...])`` for :func:`jaxestim.finite_difference`; the estimator of
        each grid point is ``dataclasses.replace(estimator, name=value)`` built inside
        the vmapped function. ``("num_samples", [...])`` is also accepted: sample sizes
        change shapes, so that axis is a Python loop with one compilation per value.
      exact_fn: ``exact_fn(params) -> exact gradient`` (any NumPy/float function, called
        outside JAX once per parameter value); enables ``bias``.
      argnums: must be 1 (``fun(key, params)``).
      chunk_size: passed to ``grad_samples``.

    Returns:
      A :class:`SweepResult` of NumPy arrays.
    """
    if argnums != 1:
        raise ValueError("sweep: only argnums=1 (fun(key, params)) is supported")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f"sweep: `num_samples` must be an int >= 2, got {num_samples!r}")
    if params_grid is None and hyper is None:
        raise ValueError("sweep: give `params_grid`, `hyper=(name, values)`, or both")
    if params_grid is not None and params is not None:
        raise ValueError("sweep: give either `params_grid` or `params`, not both")
    if params_grid is None and params is None:
        raise ValueError("sweep: a sweep over `hyper` only needs `params`")
    if params_grid is not None:
        params_grid = jnp.asarray(params_grid)
        if params_grid.ndim == 0 or params_grid.shape[0] == 0:
            raise ValueError("sweep: `params_grid` needs a non-empty leading grid axis")
        if not jnp.issubdtype(params_grid.dtype, jnp.floating):
            params_grid = params_grid.astype(jnp.result_type(float))
    hyper_name = hyper_values = None
    if hyper is not None:
        if not (isinstance(hyper, tuple | list) and len(hyper) == 2):
            raise TypeError("sweep: `hyper` must be a pair (name, values)")
        hyper_name, hyper_values = hyper[0], np.asarray(hyper[1])
        if hyper_values.ndim != 1 or hyper_values.size == 0:
            raise ValueError("sweep: hyper-parameter values must be a non-empty 1-D sequence")
        fields = {f.name for f in dataclasses.fields(estimator)} | {"num_samples"}
        if hyper_name not in fields:
            raise ValueError(
                f"sweep: {type(estimator).__name__} has no field {hyper_name!r}; sweepable: "
                f"{sorted(fields)}"
            )

    def stats_at(est: Estimator, p: Any, n: int) -> tuple[jax.Array, jax.Array]:
        g = grad_samples(fun, est, num_samples=n, chunk_size=chunk_size)(key, p)
        return jnp.mean(g, axis=0), jnp.std(g, axis=0, ddof=1)

    def run(n: int) -> tuple[jax.Array, jax.Array]:
        def at_params(est: Estimator) -> Callable[..., Any]:
            if params_grid is None:
                return stats_at(est, params, n)
            return jax.vmap(lambda p: stats_at(est, p, n))(params_grid)

        if hyper_name is None or hyper_name == "num_samples":
            return jax.jit(lambda: at_params(estimator))()

        def one_hyper(v: jax.Array):
            return at_params(dataclasses.replace(estimator, **{hyper_name: v}))

        values = jnp.asarray(hyper_values, dtype=jnp.result_type(float))
        return jax.jit(jax.vmap(one_hyper))(values)

    if hyper_name == "num_samples":
        ns = [int(v) for v in hyper_values]
        if any(v < 2 for v in ns):
            raise ValueError("sweep: every swept `num_samples` must be >= 2")
        outs = [run(v) for v in ns]
        mean = np.stack([np.asarray(o[0], dtype=np.float64) for o in outs])
        std = np.stack([np.asarray(o[1], dtype=np.float64) for o in outs])
        n_arr = np.asarray(ns).reshape((-1,) + (1,) * (mean.ndim - 1))
        se = std / np.sqrt(n_arr)
        num_out: Any = np.asarray(ns)
    else:
        m, s = run(num_samples)
        mean, std = np.asarray(m, dtype=np.float64), np.asarray(s, dtype=np.float64)
        se = std / math.sqrt(num_samples)
        num_out = num_samples
    exact = bias = None
    if exact_fn is not None:
        if params_grid is None:
            ex = np.asarray(exact_fn(params), dtype=np.float64)
        else:
            ex = np.stack(
                [
                    np.asarray(exact_fn(params_grid[i]), dtype=np.float64)
                    for i in range(params_grid.shape[0])
                ]
            )
        exact = np.broadcast_to(ex, mean.shape[mean.ndim - ex.ndim :]).copy()
        bias = mean - exact
    return SweepResult(
        estimator=estimator,
        num_samples=num_out,
        params_grid=None if params_grid is None else np.asarray(params_grid),
        hyper_name=hyper_name,
        hyper_values=hyper_values,
        mean=mean,
        std=std,
        se=se,
        exact=exact,
        bias=bias,
    )
