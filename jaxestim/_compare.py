"""Research workflow: compare gradient estimators on one program, sweep hyper-parameters.

:func:`compare` runs several estimators on the same program, parameters and key and
summarizes each one's per-sample estimates (mean, spread, standard error, bias and z-score
against an exact gradient) together with its compile time and run time per sample. The
*work-normalized variance* -- per-sample variance times seconds per sample -- is the
figure of merit for choosing among unbiased estimators: to reach a standard error ``s``
an estimator needs ``N = var / s**2`` samples and so ``var * t / s**2`` seconds, so the
smallest work-normalized variance reaches a target accuracy soonest. A biased estimator
is only as good as its bias allows, so :meth:`ComparisonReport.recommend` (and
:meth:`ComparisonReport.best`) rank only the estimators consistent with the exact gradient
(when it is known) or documented to be unbiased (when it is not), and say why the others
were left out.

:func:`sweep` evaluates one estimator over a grid of parameter values (any pytree) and/or
one of its numeric hyper-parameters (a finite-difference ``step``, a Gumbel-softmax
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

from jaxestim import _sharding
from jaxestim._check import check
from jaxestim._errors import EstimatorError
from jaxestim._estimator import Estimator
from jaxestim._transforms import _is_inexact, grad_samples

__all__ = [
    "UNBIASEDNESS",
    "ComparisonReport",
    "EstimatorResult",
    "Recommendation",
    "SweepResult",
    "compare",
    "documented_unbiased",
    "sweep",
]


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


class _Layout:
    """Leaf names, shapes and flat coordinates of a parameter (or gradient) pytree.

    Coordinates are numbered as :func:`jax.flatten_util.ravel_pytree` numbers them: leaves
    in :func:`jax.tree_util.tree_flatten` order, each raveled in C order. A coordinate's
    name is the leaf's :func:`jax.tree_util.keystr` (``""`` for a bare array, ``"['a']"``
    for ``params["a"]``, ``"[1]"`` for the second element of a tuple) followed by its index
    within the leaf for non-scalar leaves (``"['b'][2]"``).
    """

    def __init__(self, tree: Any):
        with_path, self.treedef = jax.tree_util.tree_flatten_with_path(tree)
        self.leaf_names = [jax.tree_util.keystr(path) for path, _ in with_path]
        self.shapes = [tuple(np.shape(leaf)) for _, leaf in with_path]
        self.sizes = [math.prod(shape) for shape in self.shapes]
        self.size = sum(self.sizes)
        self.names: list[str] = []
        for name, shape in zip(self.leaf_names, self.shapes, strict=True):
            if shape == ():
                self.names.append(name)
            else:
                self.names.extend(
                    name + "".join(f"[{i}]" for i in idx) for idx in np.ndindex(*shape)
                )

    @property
    def is_array(self) -> bool:
        """Whether the tree is a single bare array (no containers)."""
        return self.treedef.num_leaves == 1 and self.leaf_names == [""]

    def flatten(self, tree: Any, lead_ndim: int) -> np.ndarray:
        """A tree whose leaves carry ``lead_ndim`` extra leading axes -> float64 ``(*lead, P)``."""
        leaves = self.treedef.flatten_up_to(tree)
        parts = []
        lead: tuple = ()
        for leaf, size in zip(leaves, self.sizes, strict=True):
            a = np.asarray(leaf, dtype=np.float64)
            lead = a.shape[:lead_ndim]
            parts.append(a.reshape(*lead, size))
        return np.concatenate(parts, axis=-1) if parts else np.zeros((*lead, 0))

    def unflatten(self, flat: np.ndarray | None) -> Any:
        """Inverse of :meth:`flatten`: ``(*lead, P)`` -> tree of ``(*lead, *leaf shape)``."""
        if flat is None:
            return None
        flat = np.asarray(flat)
        lead = flat.shape[:-1]
        out, start = [], 0
        for shape, size in zip(self.shapes, self.sizes, strict=True):
            out.append(flat[..., start : start + size].reshape(*lead, *shape))
            start += size
        return self.treedef.unflatten(out)

    def index(self, coord: int | str, where: str) -> int:
        """The flat index of coordinate ``coord`` (an int, or a name from :attr:`names`)."""
        if isinstance(coord, str):
            if coord in self.names:
                return self.names.index(coord)
            raise KeyError(
                f"{where}: no coordinate named {coord!r}; coordinates are {self.names[:20]}"
                + (" ..." if len(self.names) > 20 else "")
            )
        if isinstance(coord, bool) or not isinstance(coord, int | np.integer):
            raise TypeError(f"{where}: `coord` must be an int or a coordinate name, got {coord!r}")
        if not -self.size <= coord < self.size:
            raise IndexError(
                f"{where}: coord={coord!r} out of range for a gradient with {self.size} coordinates"
            )
        return int(coord) % self.size


def _theta(name: str) -> str:
    """Display label of a parameter coordinate: ``θ``, ``θ[1]``, ``θ['a']``, ..."""
    return "θ" + name


# ------------------------------------------------------------------ documented unbiasedness
UNBIASEDNESS: dict[str, tuple[bool, str]] = {
    "pathwise": (
        True,
        "pathwise is unbiased (for f differentiable in the continuous samples)",
    ),
    "score_function": (
        True,
        "score_function is unbiased with any baseline (for supports that do not depend on θ)",
    ),
    "auto": (
        True,
        "auto is unbiased (pathwise where reparameterizable, score function elsewhere)",
    ),
    "stochastic_ad": (True, "stochastic_ad is unbiased (no relaxation)"),
    "delta_method": (
        True,
        "delta_method is unbiased (the Taylor control variate's expectation is exact)",
    ),
    "disarm": (
        True,
        "disarm is unbiased (Bernoulli sites independent given θ; a dependence raises)",
    ),
    "arm": (True, "arm is unbiased (Bernoulli sites independent given θ; a dependence raises)"),
    "enumeration": (True, "enumeration is exact at the enumerated sites (zero variance there)"),
    "forward_gradient": (
        True,
        "forward_gradient is unbiased (E[Z Zᵀ] = I; pathwise at every site)",
    ),
    "rebar": (True, "rebar is unbiased (its control variate is corrected exactly)"),
    "relax": (True, "relax is unbiased (its control variate is corrected exactly)"),
    "measure_valued": (
        True,
        "measure_valued is unbiased (weak derivatives; unsupported sites raise)",
    ),
    "finite_difference": (
        False,
        "finite_difference is biased: O(h²) for central, O(h) for one-sided differences",
    ),
    "gumbel_softmax": (
        False,
        "gumbel_softmax is biased: the relaxation evaluates f off the discrete support",
    ),
    "straight_through": (
        False,
        "straight_through is biased unless f is linear in the discrete samples",
    ),
    "gumbel_rao": (
        False,
        "gumbel_rao is biased: it keeps straight-through Gumbel-softmax's mean",
    ),
    "reinmax": (
        False,
        "reinmax is biased unless f is quadratic in the discrete samples (at temperature 1)",
    ),
}
"""Estimator ``name`` (the class attribute) -> (documented unbiased?, the documented reason).

The entries restate the estimators' docstrings; they describe the estimator under its
documented conditions, not a check of any particular program (a per-site ``estimator=``
override inside the program is not seen here). Give ``exact`` to :func:`compare` for a
check against the program's true gradient. Add an entry for a new estimator class.
"""


def documented_unbiased(estimator: Any) -> tuple[bool, str]:
    """``(True, reason)`` if ``estimator``'s class is documented unbiased, else ``(False, reason)``.

    Looks up the estimator's ``name`` class attribute in :data:`UNBIASEDNESS`; estimators
    not listed there are treated as not known to be unbiased.
    """
    name = getattr(estimator, "name", None)
    if isinstance(name, str) and name in UNBIASEDNESS:
        return UNBIASEDNESS[name]
    return (
        False,
        f"{type(estimator).__name__} (name {name!r}) is not known to be unbiased (not listed "
        "in jaxestim._compare.UNBIASEDNESS)",
    )


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


def _floating_args(fun: Callable[..., Any], args: tuple, argnums: Any) -> tuple[Callable, tuple]:
    """``(fun', args')`` for :func:`jaxestim.check`, which requires floating arguments: the
    differentiated arguments' other leaves (integer, bool, ...: not differentiated by the
    transforms, see :func:`jaxestim.grad`'s ``argnums``) are closed over."""
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    parts = {}
    for i in nums:
        leaves, treedef = jax.tree_util.tree_flatten(args[i - 1])
        mask = [_is_inexact(x) for x in leaves]
        if not all(mask):
            parts[i] = (treedef, leaves, mask)
    if not parts:
        return fun, args
    new = list(args)
    for i, (_, leaves, mask) in parts.items():
        new[i - 1] = [x for x, m in zip(leaves, mask, strict=True) if m]

    def floating(key: jax.Array, *a: Any) -> Any:
        a = list(a)
        for i, (treedef, leaves, mask) in parts.items():
            it = iter(a[i - 1])
            a[i - 1] = treedef.unflatten(
                [next(it) if m else x for x, m in zip(leaves, mask, strict=True)]
            )
        return fun(key, *a)

    return floating, tuple(new)


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
      check: the :func:`jaxestim.check` report of the program under this estimator
        (parameter-dependent values reaching comparisons, rounding, integer casts, argmax
        or ``jax.random`` draws, where the gradient is silently lost).
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
    check: Any = None


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


@dataclasses.dataclass(frozen=True)
class Recommendation:
    """Which estimator :meth:`ComparisonReport.recommend` chose, and why.

    ``str(rec)`` is a readable explanation (one line per estimator).

    Attributes:
      name: the recommended estimator (smallest work-normalized variance among the
        qualifying ones), or None when no estimator qualifies.
      ranking: the qualifying estimators, smallest work-normalized variance first.
      included: qualifying estimator -> why it qualifies, in ranking order.
      excluded: left-out estimator -> why (not applicable; inconsistent with the exact
        gradient; documented biased; not documented unbiased), in the report's order.
      criterion: the rule that was applied, in words.
    """

    name: str | None
    ranking: tuple[str, ...]
    included: dict[str, str]
    excluded: dict[str, str]
    criterion: str

    def __str__(self) -> str:
        if self.name is None:
            head = f"no estimator qualifies ({self.criterion})"
        else:
            head = (
                f"recommended: {self.name} (smallest work-normalized variance among "
                f"{len(self.ranking)} qualifying; {self.criterion})"
            )
        lines = [head]
        lines += [f"  {name}: {why}" for name, why in self.included.items()]
        lines += [f"  {name} excluded: {why}" for name, why in self.excluded.items()]
        return "\n".join(lines)


@dataclasses.dataclass
class ComparisonReport:
    """The result of :func:`compare`: one :class:`EstimatorResult` per estimator.

    ``str(report)`` is an aligned table; :meth:`to_markdown`, :meth:`to_dict` and
    :meth:`plot` give the same information as GitHub markdown, plain JSON-serializable
    Python objects, and histograms. For a multi-coordinate gradient the table shows
    coordinate ``coord`` (default 0; an index or a name from ``coord_names``) in the
    mean/std/SE/bias/z columns and adds the RMS-over-coordinates std; the work-normalized
    variance always averages all coordinates. :meth:`recommend` and :meth:`best` pick an
    estimator.

    Attributes:
      results: estimator name -> :class:`EstimatorResult`, in the order given.
      num_samples: ``N``.
      num_coords: ``P``, the number of gradient coordinates.
      exact_flat: the exact gradient, float64 ``(P,)``, or None.
      title: optional heading used by the printers.
      coord_names: the ``P`` coordinate names: :func:`jax.tree_util.keystr` of the
        gradient leaf plus the index within the leaf, e.g. ``"['b'][1]"`` (``""`` for a
        scalar gradient). None means unnamed.
    """

    results: dict[str, EstimatorResult]
    num_samples: int
    num_coords: int
    exact_flat: np.ndarray | None = None
    title: str | None = None
    coord_names: tuple[str, ...] | None = None

    # --- access -----------------------------------------------------------------------
    def __getitem__(self, name: str) -> EstimatorResult:
        return self.results[name]

    @property
    def applicable(self) -> dict[str, EstimatorResult]:
        """The results of the estimators that ran."""
        return {k: r for k, r in self.results.items() if r.applicable}

    def recommend(
        self, z_threshold: float = 3.0, *, rtol: float = 1e-5, atol: float = 1e-7
    ) -> Recommendation:
        """Rank the estimators that qualify by work-normalized variance, and say why.

        Only unbiased estimators can be ranked by variance: a biased one converges to the
        wrong gradient however many samples it is given. Which estimators qualify:

        * **with an exact gradient** (``exact`` given to :func:`compare`): those
          *consistent* with it, i.e. in every coordinate ``i``

              ``|mean_i - exact_i| <= z_threshold * SE_i + rtol * max(|exact_i|, |mean_i|)
              + atol``

          (``SE_i = std_i / sqrt(N)``), by default ``z_threshold = 3``: an unbiased
          estimator is wrongly excluded with probability about 0.3 % per coordinate
          (normal approximation), while a bias between 3 and 5 SE -- detectable, but
          passed by a 5 SE rule -- is not ranked. The tolerance term only matters for
          zero-variance estimators: an estimator with ``SE = 0`` qualifies only if its
          mean equals the exact value to float tolerance. A non-finite mean or SE never
          qualifies. An estimator documented *biased* in :data:`UNBIASEDNESS` (finite
          differences, ``O(h²)``/``O(h)``; Gumbel-softmax and the other relaxations;
          straight-through) is excluded however close its mean is -- a bias below the
          noise at this ``N`` is still a bias -- unless its estimate is exact on this
          program (zero variance, equal to the exact value to float tolerance; its
          reason says so). Estimators not listed in :data:`UNBIASEDNESS` are judged by
          the consistency check alone.
        * **without an exact gradient**: those whose class is documented unbiased
          (:func:`documented_unbiased`: pathwise, score function with any baseline, auto,
          stochastic_ad); finite differences (bias ``O(h²)``/``O(h)``), Gumbel-softmax,
          straight-through and estimators not listed in :data:`UNBIASEDNESS` are excluded.
          This trusts the documentation, not the program: it cannot see a per-site
          ``estimator=`` override or a program that breaks an estimator's conditions.

        Not-applicable estimators are always excluded. The qualifying ones are ranked by
        ``work_normalized_variance`` (mean per-coordinate variance x seconds per sample),
        smallest first (ties keep the report's order).

        Args:
          z_threshold: how many standard errors a mean may lie from the exact value
            (default 3).
          rtol, atol: the float tolerance of the consistency check (see above).

        Returns:
          A :class:`Recommendation`; its ``name`` is None when nothing qualifies (this
          method never raises for that; :meth:`best` does).
        """
        if not z_threshold >= 0:
            raise ValueError(f"recommend: `z_threshold` must be >= 0, got {z_threshold!r}")
        included: dict[str, str] = {}
        excluded: dict[str, str] = {}
        exact = self.exact_flat
        n = self.num_samples
        if exact is not None:
            criterion = (
                f"ranked: estimators whose mean is within {_fmt(z_threshold, 3)} SE of the "
                f"exact gradient (N = {n}), except those documented biased unless exact here"
            )
        else:
            criterion = "ranked: estimators documented unbiased (no exact gradient given)"
        for name, r in self.results.items():
            if not r.applicable:
                excluded[name] = f"not applicable: {r.message}"
                continue
            if r.check is not None and r.check.errors:
                f0 = r.check.errors[0]
                excluded[name] = (
                    f"je.check found {len(r.check.errors)} place(s) where the gradient is "
                    f"silently lost under this estimator (first: {f0.kind} at {f0.source})"
                )
                continue
            unbiased, doc = documented_unbiased(r.estimator)
            if exact is None:
                if unbiased:
                    included[name] = doc
                else:
                    excluded[name] = doc
                continue
            why_not, why = self._consistency(r, z_threshold, rtol, atol)
            known_biased = not unbiased and getattr(r.estimator, "name", None) in UNBIASEDNESS
            if why_not is not None:
                excluded[name] = why_not
            elif known_biased and not np.all(r.se_flat == 0):
                excluded[name] = (
                    f"{doc}; its mean is within {_fmt(z_threshold, 3)} SE of the exact value "
                    f"at N = {n}, which bounds the bias by the noise, not by zero"
                )
            else:
                if known_biased:
                    why += f"; exact on this program, but {doc}"
                elif not unbiased:
                    why += f"; {doc}: judged by this check alone"
                included[name] = why

        def cost(name: str) -> float:
            w = self.results[name].work_normalized_variance
            return w if w is not None and math.isfinite(w) else math.inf

        ranking = tuple(sorted(included, key=cost))  # stable: ties keep the report's order
        included = {k: included[k] for k in ranking}
        for k in ranking:
            included[k] += f"; work-norm var {_fmt(self.results[k].work_normalized_variance, 3)}"
        return Recommendation(
            name=ranking[0] if ranking else None,
            ranking=ranking,
            included=included,
            excluded=excluded,
            criterion=criterion,
        )

    def _consistency(
        self, r: EstimatorResult, z_threshold: float, rtol: float, atol: float
    ) -> tuple[str | None, str]:
        """``(None, why it is consistent)`` or ``(why it is not, "")`` against the exact value."""
        exact = self.exact_flat
        mean, se = r.mean_flat, r.se_flat
        bias = mean - exact
        multi = self.num_coords > 1

        def where(i: int) -> str:
            return f" in coordinate {self._coord_label(i)}" if multi else ""

        bad = ~(np.isfinite(mean) & np.isfinite(se))
        if bad.any():
            i = int(np.argmax(bad))
            return f"non-finite estimate{where(i)} (mean {_fmt(mean[i])}, SE {_fmt(se[i])})", ""
        tol = rtol * np.maximum(np.abs(exact), np.abs(mean)) + atol
        allowed = z_threshold * se + tol
        over = np.abs(bias) > allowed
        zero = se == 0
        if over.any():
            # the worst offender: largest |bias| / allowed
            i = int(np.argmax(np.where(over, np.abs(bias) / allowed, -1.0)))
            if zero[i]:
                return (
                    f"zero-variance estimate {_fmt(mean[i], 6)}{where(i)} differs from the "
                    f"exact value {_fmt(exact[i], 6)} (bias {_fmt(bias[i], 3)}; with SE = 0 "
                    "only float tolerance is allowed)",
                    "",
                )
            return (
                f"bias {_fmt(bias[i], 3)}{where(i)} is {_fmt(abs(bias[i]) / se[i], 3)} SE "
                f"from the exact value (threshold {_fmt(z_threshold, 3)} SE)",
                "",
            )
        if zero.all():
            return None, "zero variance; equals the exact value to float tolerance"
        z = np.where(zero, 0.0, np.abs(bias) / np.where(zero, 1.0, se))
        return None, f"|bias| <= {_fmt(float(np.max(z)), 3)} SE of the exact value"

    def best(self, z_threshold: float = 3.0, *, rtol: float = 1e-5, atol: float = 1e-7) -> str:
        """Name of the qualifying estimator with the smallest work-normalized variance.

        The same rule as :meth:`recommend` (which also says why each estimator was
        included or excluded): with an exact gradient only estimators consistent with it
        (within ``z_threshold`` standard errors; zero-variance ones to float tolerance)
        and not documented biased (unless exact on the program) are ranked, without one
        only those documented unbiased.

        Raises:
          ValueError: if no estimator qualifies; the message lists why each was excluded.
        """
        rec = self.recommend(z_threshold, rtol=rtol, atol=atol)
        if rec.name is None:
            raise ValueError(f"best: {rec}")
        return rec.name

    def _coord_label(self, i: int) -> str:
        if self.coord_names is None:
            return str(i)
        return f"{i} ({_theta(self.coord_names[i])})"

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
            if r.check is not None and r.check.findings:
                for fd in r.check.findings:
                    notes.append(
                        f"{name}: je.check {fd.severity}: {fd.kind} ({fd.primitive}) at "
                        f"{fd.source}; {fd.suggestion}"
                    )
        return header, rows, notes

    def _preamble(self, coord: int) -> list[str]:
        lines = []
        if self.title:
            lines.append(self.title)
        info = f"N = {self.num_samples} samples per estimator"
        if self.exact_flat is not None:
            info += f"; exact gradient = {_fmt(self.exact_flat[coord], 6)}"
            if self.num_coords > 1:
                info += f" (coordinate {self._coord_label(coord)})"
        lines.append(info)
        if self.num_coords > 1:
            lines.append(
                f"gradient has {self.num_coords} coordinates: mean/std/SE/bias/z show "
                f"coordinate {self._coord_label(coord)}; 'RMS std' is the root-mean-square "
                "std over all "
                "coordinates; work-norm var uses the mean variance over all coordinates"
            )
        return lines

    def table(self, coord: int | str = 0) -> str:
        """The aligned plain-text table, showing gradient coordinate ``coord``."""
        coord = self._check_coord(coord)
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
            "work-norm var = per-sample variance x seconds per sample (among unbiased "
            "estimators, smaller reaches a target standard error sooner; .recommend() ranks "
            "only those consistent with the exact value or documented unbiased)"
        )
        return "\n".join(out)

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        return self.table()

    def to_markdown(self, coord: int | str = 0) -> str:
        """A GitHub-flavoured markdown table (one row per estimator) with notes below it."""
        coord = self._check_coord(coord)
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
        ``"recommendation"`` is :meth:`recommend` with its default arguments.
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
            "coord_names": None if self.coord_names is None else list(self.coord_names),
            "estimators": ests,
            "recommendation": dataclasses.asdict(self.recommend()),
        }

    def _check_coord(self, coord: int | str) -> int:
        """The flat index of ``coord`` (an index, or a name from ``coord_names``)."""
        names = self.coord_names
        if isinstance(coord, str) and names is not None and coord in names:
            return names.index(coord)
        if isinstance(coord, bool) or not isinstance(coord, int | np.integer):
            raise IndexError(
                f"coord={coord!r} is neither an index nor a coordinate name "
                f"(names: {list(names or [])[:20]})"
            )
        if not -self.num_coords <= coord < self.num_coords:
            raise IndexError(
                f"coord={coord!r} out of range for a gradient with {self.num_coords} coordinates"
            )
        return int(coord) % self.num_coords

    # --- plot -------------------------------------------------------------------------
    def plot(
        self,
        coord: int | str = 0,
        *,
        bins: int = 40,
        ncols: int = 3,
        figsize: tuple | None = None,
        work: bool = True,
        title: str | None = None,
        xlim: tuple[float, float] | None = None,
    ) -> Any:
        """Histograms of the per-sample estimates of gradient coordinate ``coord``.

        One panel per estimator, all with the same ``bins`` over one x range and one
        density axis (``sharex``/``sharey``), so spreads and offsets compare at a glance.
        The range is ``xlim`` if given (each panel's legend then counts its samples
        outside it; densities stay normalized by all ``N`` samples), else the pooled range
        of every estimator's samples, the means and the exact value -- so one heavy-tailed
        estimator widens every panel; pass ``xlim`` to zoom in.
        The density axis is logarithmic when a panel is heavy-tailed (kurtosis > 20) or
        the panels' peak densities differ by more than 20x (e.g. a zero-variance spike
        beside a wide histogram). Each panel marks the mean with an error bar of ±1
        standard error (drawn near the top of the panel) and the exact gradient (when
        known) with a dashed line; its title gives the mean ± SE. A not-applicable
        estimator's panel shows its message instead.

        With ``work=True`` a last panel shows each estimator's work-normalized variance
        (mean per-coordinate variance x seconds per sample, log scale when all are
        positive), the recommended estimator (:meth:`recommend`) highlighted and the
        excluded ones grey. The figure's title is ``title`` (default: the report's
        title) above a line stating what is plotted and ``N``. Returns a
        ``matplotlib.figure.Figure``.
        """
        coord = self._check_coord(coord)
        names = list(self.results)
        ncols = max(1, min(ncols, len(names)))
        nrows = math.ceil(len(names) / ncols)
        height = 3.0 * nrows + (2.2 if work else 0.0)
        fig = _new_figure(figsize=figsize or (4.2 * ncols, height), layout="constrained")
        ratios = [1.0] * nrows + ([0.75] if work else [])
        gs = fig.add_gridspec(len(ratios), ncols, height_ratios=ratios)
        cname = "" if self.coord_names is None else self.coord_names[coord]
        if self.coord_names is None and self.num_coords > 1:
            cname = f"[{coord}]"
        which = f"∂E[f]/∂{_theta(cname)}"

        # one set of bins for every panel
        applicable = {k: r for k, r in self.results.items() if r.applicable}
        pooled = [r.samples[:, coord] for r in applicable.values()]
        marks = [r.mean_flat[coord] for r in applicable.values()]
        if self.exact_flat is not None:
            marks.append(self.exact_flat[coord])
        values = np.concatenate([*pooled, np.asarray(marks, dtype=np.float64)])
        values = values[np.isfinite(values)]
        if xlim is not None:
            lo, hi = float(xlim[0]), float(xlim[1])
            if not lo < hi:
                raise ValueError(f"plot: `xlim` must be (low, high) with low < high, got {xlim}")
        elif values.size:
            lo, hi = float(values.min()), float(values.max())
        else:
            lo, hi = -1.0, 1.0
        if hi - lo < 1e-12 * max(1.0, abs(hi)):
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, bins + 1)
        hists, outside, heavy = {}, {}, False
        for name, r in applicable.items():
            x = r.samples[:, coord]
            x = x[np.isfinite(x)]
            counts = np.histogram(x, bins=edges)[0]
            outside[name] = x.size - int(counts.sum())
            # density with respect to all N samples (also those outside an `xlim`)
            hists[name] = counts / (self.num_samples * np.diff(edges)) if x.size else None
            centered = x - np.mean(x) if x.size else x
            var = np.mean(centered**2) if x.size else 0.0
            heavy |= bool(var > 0 and np.mean(centered**4) / var**2 > 20.0)  # kurtosis
        peaks = [float(h.max()) for h in hists.values() if h is not None and h.max() > 0]
        log_y = heavy or (len(peaks) > 1 and max(peaks) > 20.0 * min(peaks))

        first = None
        for i, name in enumerate(names):
            r = self.results[name]
            spec = gs[i // ncols, i % ncols]
            if not r.applicable:  # not shared: its blank axes must not hide the others' ticks
                ax = fig.add_subplot(spec)
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
            ax = fig.add_subplot(spec, sharex=first, sharey=first)
            first = first or ax
            h = hists[name]
            if h is not None:
                lab = "per-sample estimates"
                if outside[name]:
                    lab += f" ({outside[name]} outside the range)"
                ax.stairs(h, edges, fill=True, color="C0", alpha=0.7, label=lab)
            mean, se = r.mean_flat[coord], r.se_flat[coord]
            ax.axvline(mean, color="C3", lw=1.0, alpha=0.6)
            ax.errorbar(
                [mean],
                [0.93],
                xerr=[se],
                fmt="o",
                ms=4,
                color="C3",
                capsize=4,
                lw=1.5,
                transform=ax.get_xaxis_transform(),  # y in axes fraction: the panel's top
                label=f"mean ± SE = {_fmt(mean)} ± {_fmt(se, 2)}",
            )
            if self.exact_flat is not None:  # drawn last: dashed, visible over the mean
                ax.axvline(
                    self.exact_flat[coord],
                    color="k",
                    ls="--",
                    lw=1.5,
                    label=f"exact = {_fmt(self.exact_flat[coord])}",
                )
            ax.set_title(f"{name}\nmean {_fmt(mean)} ± SE {_fmt(se, 3)}", fontsize=10)
            ax.set_xlabel(f"per-sample estimate of {which}")
            ax.set_ylabel("density (log scale)" if log_y else "density")
            ax.legend(fontsize=7, loc="center right")
        if first is not None:
            pad = 0.0 if xlim is not None else 0.02 * (hi - lo)
            first.set_xlim(lo - pad, hi + pad)
            if log_y:
                first.set_yscale("log")
            else:
                first.set_ylim(0, max(peaks or [1.0]) * 1.25)  # room for the mean ± SE bar
        if work:
            self._plot_work(fig.add_subplot(gs[nrows, :]))
        suptitle = (
            f"per-sample estimates of {which}: N = {self.num_samples} per estimator, "
            "same bins and density scale in every panel"
        )
        heading = self.title if title is None else title
        fig.suptitle(f"{heading}\n{suptitle}" if heading else suptitle, fontsize=10)
        return fig

    def _plot_work(self, ax: Any) -> None:
        """Horizontal bars of the work-normalized variance, coloured by :meth:`recommend`."""
        rec = self.recommend()
        names = [k for k, r in self.results.items() if r.applicable]
        w = np.asarray([self.results[k].work_normalized_variance for k in names], np.float64)
        colors = ["C2" if k == rec.name else ("C0" if k in rec.included else "0.7") for k in names]
        y = np.arange(len(names))
        positive = w[np.isfinite(w) & (w > 0)]
        log_x = positive.size > 0 and positive.size == w.size
        ax.barh(y, w, color=colors)
        for j, v in enumerate(w):
            ax.annotate(
                f" {_fmt(v, 3)}" + (" (zero variance)" if v == 0 else ""),
                (v if np.isfinite(v) else 0.0, j),
                va="center",
                fontsize=7,
            )
        ax.set_yticks(y, [f"{k} (excluded)" if k in rec.excluded else k for k in names])
        ax.invert_yaxis()
        if log_x:
            ax.set_xscale("log")
            ax.set_xlim(positive.min() / 3, positive.max() * 30)
        elif positive.size:
            ax.set_xlim(0, positive.max() * 1.4)
        ax.set_xlabel(
            "work-normalized variance = per-sample variance (mean over coordinates) × "
            "seconds per sample"
        )
        best = "none qualifies" if rec.name is None else rec.name
        rule = (
            "consistent with the exact value"
            if self.exact_flat is not None
            else "documented unbiased"
        )
        ax.set_title(
            f"smaller reaches a target SE sooner; ranked only if {rule} (grey: excluded); "
            f"recommended: {best}",
            fontsize=9,
        )


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
    mesh: jax.sharding.Mesh | None = None,
    axis: str | Sequence[str] | None = None,
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
      mesh: a :class:`jax.sharding.Mesh` over whose devices each estimator's ``N``
        samples are sharded: passed to ``grad_samples`` (see :func:`jaxestim.grad`), so
        each of the ``D`` devices evaluates ``N / D`` of the per-sample keys of the
        single-device call and the per-sample estimates -- hence every statistic --
        equal the unsharded ``compare``'s for the same key up to floating-point
        rounding. The per-sample gradients come back sharded along the sample axis and
        are read into host memory for the statistics (gathered with
        :func:`jax.experimental.multihost_utils.process_allgather` when the mesh spans
        several processes; then every process runs ``compare`` with the same arguments
        and gets the whole report). Compile and run times are those of the sharded
        function, so the time per sample and the work-normalized variance describe the
        sharded run (about ``1/D`` of the single-device time per sample for large ``N``,
        plus the ``psum`` of the sharded sums). ``N`` must be a multiple of ``D``
        (``ValueError`` otherwise). :func:`jaxestim.check` still inspects the unsharded
        program. None (default): one device.
      axis: the mesh axis name (or tuple of names) to shard the samples over; default all
        of the mesh's axes (``D`` is the product of their sizes). Requires ``mesh``.

    Each estimator's program is also inspected by :func:`jaxestim.check`; its findings
    are listed under the table and an estimator with a finding of severity "error" is
    never recommended (:meth:`ComparisonReport.recommend`).

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
    check_fun, check_args = _floating_args(fun, args, argnums)
    mesh, _ = _sharding.check_mesh(mesh, axis, num_samples, "compare")
    run_key, run_args = key, args  # the inputs of the (sharded) grad_samples calls
    if _sharding.spans_processes(mesh):
        run_key, run_args = _sharding.globalize((key, args), mesh)
    results: dict[str, EstimatorResult] = {}
    exact_flat = None
    num_coords = None
    coord_names: tuple[str, ...] | None = None
    for name, est in estimators.items():
        if progress is not None:
            progress(name)
        try:
            gs = jax.jit(
                grad_samples(
                    fun,
                    est,
                    argnums=argnums,
                    num_samples=num_samples,
                    chunk_size=chunk_size,
                    mesh=mesh,
                    axis=axis,
                )
            )
            t0 = time.perf_counter()
            compiled = gs.lower(run_key, *run_args).compile()
            compile_s = time.perf_counter() - t0
        except EstimatorError as e:
            results[name] = EstimatorResult(name, est, applicable=False, message=str(e))
            continue
        report = check(check_fun, key, *check_args, estimator=est, argnums=argnums)
        out = jax.block_until_ready(compiled(run_key, *run_args))
        seconds = _median_time(lambda: compiled(run_key, *run_args), repeats)
        if mesh is not None:  # per-sample gradients sharded over the mesh: the whole array
            out = jax.tree_util.tree_map(_sharding.to_host, out)
        one = jax.tree_util.tree_map(lambda a: a[0], out)
        _, unravel = ravel_pytree(one)
        flat = jax.vmap(lambda t: ravel_pytree(t)[0])(out)
        x = np.asarray(flat, dtype=np.float64).reshape(num_samples, -1)
        p = x.shape[1]
        if num_coords is None:
            num_coords = p
            coord_names = tuple(_Layout(one).names)
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
            check=report,
        )
    if num_coords is None:
        msgs = "; ".join(f"{n}: {r.message}" for n, r in results.items())
        raise EstimatorError(f"compare: no estimator applies to this program ({msgs})")
    return ComparisonReport(results, num_samples, num_coords, exact_flat, title, coord_names)


# --------------------------------------------------------------------------------------
# sweep
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class SweepResult:
    """The result of :func:`sweep`.

    Statistics are kept flat -- ``(*grid, P)`` arrays, grid axes first: ``(H, G)`` when
    both a hyper-parameter (``H`` values) and a parameter grid (``G`` points) are swept,
    ``(H,)`` or ``(G,)`` when only one is; then the ``P`` gradient coordinates, named by
    ``coord_names`` -- and the properties :attr:`mean`, :attr:`std`, :attr:`se`,
    :attr:`exact` and :attr:`bias` give them shaped like the parameters (a pytree whose
    leaves have the grid axes in front; a plain array for array parameters).

    Attributes:
      estimator: the base estimator.
      num_samples: ``N`` (an array of values when swept over ``"num_samples"``).
      params_grid: the parameter grid (a pytree of NumPy arrays with leading axis ``G``)
        or None.
      params: the fixed parameters of a sweep over ``hyper`` only, else None.
      hyper_name, hyper_values: the swept hyper-parameter, or None.
      coord_names: the ``P`` coordinate names: :func:`jax.tree_util.keystr` of the leaf
        plus the index within the leaf (``""`` for a scalar parameter, ``"[1]"`` for an
        array's second entry, ``"['b'][1]"`` for ``params["b"][1]``).
      grid_flat: the parameter grid as float64 ``(G, P)`` (None without a grid).
      mean_flat, std_flat, se_flat: per-grid-point mean, standard deviation (``ddof=1``)
        and standard error ``std / sqrt(N)`` of the per-sample estimates.
      std_se_flat: the standard error of ``std_flat`` (delta method from the sample
        fourth central moment ``m4``: ``sqrt((m4 - std**4 (N-3)/(N-1)) / N) / (2 std)``;
        no normality assumed); the error bars of ``std`` plots.
      exact_flat, bias_flat: exact gradients (broadcast over the grid axes) and
        ``mean - exact`` when ``exact_fn`` was given, else None.
    """

    estimator: Any
    num_samples: Any
    params_grid: Any
    params: Any
    hyper_name: str | None
    hyper_values: np.ndarray | None
    coord_names: tuple[str, ...]
    grid_flat: np.ndarray | None
    mean_flat: np.ndarray
    std_flat: np.ndarray
    se_flat: np.ndarray
    std_se_flat: np.ndarray
    exact_flat: np.ndarray | None = None
    bias_flat: np.ndarray | None = None
    layout: _Layout | None = dataclasses.field(default=None, repr=False, compare=False)

    # --- shaped views -----------------------------------------------------------------
    def _tree(self, flat: np.ndarray | None) -> Any:
        return None if flat is None else self.layout.unflatten(flat)

    @property
    def mean(self) -> Any:
        """Mean estimate per grid point, shaped like the parameters (grid axes first)."""
        return self._tree(self.mean_flat)

    @property
    def std(self) -> Any:
        """Per-sample standard deviation (``ddof=1``) per grid point, like :attr:`mean`."""
        return self._tree(self.std_flat)

    @property
    def se(self) -> Any:
        """Standard error of the mean per grid point, like :attr:`mean`."""
        return self._tree(self.se_flat)

    @property
    def exact(self) -> Any:
        """Exact gradient per grid point (None without ``exact_fn``), like :attr:`mean`."""
        return self._tree(self.exact_flat)

    @property
    def bias(self) -> Any:
        """``mean - exact`` per grid point (None without ``exact_fn``), like :attr:`mean`."""
        return self._tree(self.bias_flat)

    def _json(self, flat: np.ndarray | None) -> Any:
        if flat is None:
            return None
        if self.layout.is_array:
            return _json_list(self.layout.unflatten(flat))
        names = self.layout.leaf_names
        leaves = self.layout.treedef.flatten_up_to(self.layout.unflatten(flat))
        return {n: _json_list(leaf) for n, leaf in zip(names, leaves, strict=True)}

    def to_dict(self) -> dict[str, Any]:
        """Plain Python lists and floats (``json.dumps``-able; non-finite -> None).

        For array parameters each statistic is a nested list (grid axes, then the
        parameter's shape); for pytree parameters a dict leaf name (``keystr``) -> nested
        list. ``coord_names`` names the flat coordinates.
        """
        grid = None
        if self.grid_flat is not None:
            if self.layout.is_array:
                grid = _json_list(self.params_grid)
            else:
                grid = self._json(self.grid_flat)
        return {
            "estimator": type(self.estimator).__name__,
            "num_samples": np.asarray(self.num_samples).tolist(),
            "params_grid": grid,
            "hyper_name": self.hyper_name,
            "hyper_values": _json_list(self.hyper_values),
            "coord_names": list(self.coord_names),
            "mean": self._json(self.mean_flat),
            "std": self._json(self.std_flat),
            "se": self._json(self.se_flat),
            "exact": self._json(self.exact_flat),
            "bias": self._json(self.bias_flat),
        }

    # --- plot -------------------------------------------------------------------------
    _STATS = ("mean", "std", "se", "bias", "abs_bias", "exact")

    def _stat(self, name: str, coord: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Statistic ``name`` of coordinate ``coord`` and its ±1 standard-error bar."""
        if name in ("bias", "abs_bias", "exact") and self.bias_flat is None:
            raise ValueError(f"SweepResult.plot: {name!r} needs `exact_fn` in sweep()")
        if name not in self._STATS:
            raise ValueError(
                f"SweepResult.plot: unknown statistic {name!r}; expected 'mean', 'std', "
                "'se', 'bias', 'abs_bias' or 'exact'"
            )
        se, std_se = self.se_flat[..., coord], self.std_se_flat[..., coord]
        if name == "mean":
            return self.mean_flat[..., coord], se
        if name == "bias":
            return self.bias_flat[..., coord], se
        if name == "abs_bias":
            return np.abs(self.bias_flat[..., coord]), se
        if name == "exact":
            return self.exact_flat[..., coord], None
        if name == "std":
            return self.std_flat[..., coord], std_se
        n = np.asarray(self.num_samples, dtype=np.float64)
        if n.ndim:  # a num_samples sweep: N varies along the first grid axis
            n = n.reshape((-1,) + (1,) * (se.ndim - 1))
        return se, std_se / np.sqrt(n)

    def _default_x(self, coord: int) -> int:
        """The grid coordinate on the x axis: ``coord`` if it varies, else the first that does."""
        g = self.grid_flat
        varies = [j for j in range(g.shape[1]) if np.ptp(g[:, j]) > 0]
        if coord in varies or not varies:
            return coord
        return varies[0]

    def plot(
        self,
        ax: Any = None,
        *,
        stats: Sequence[str] | None = None,
        coord: int | str = 0,
        x: int | str | None = None,
        logx: bool | None = None,
        logy: bool | None = None,
        label: str | None = None,
    ) -> Any:
        """Plot statistics of gradient coordinate ``coord`` against the swept axis.

        The x axis is the hyper-parameter when one was swept (one line per parameter grid
        point if a parameter grid was swept too), otherwise the parameter grid's
        coordinate ``x`` (an index or a name from ``coord_names``; by default ``coord``
        when that coordinate varies over the grid, else the first one that does).
        ``coord`` is an index or a name from ``coord_names``.

        ``stats`` chooses among ``"mean"``, ``"std"``, ``"se"``, ``"bias"``,
        ``"abs_bias"`` and ``"exact"``. Every statistic but ``exact`` is drawn with ±1
        standard-error bars: ``SE = std/sqrt(N)`` for mean, bias and ``|bias|``; the
        delta-method SE of the standard deviation (``std_se_flat``) for std, divided by
        ``sqrt(N)`` for se. Defaults: ``("se",)`` -- the standard error of the mean vs
        ``N`` with a dashed ``std/sqrt(N)`` reference through the largest ``N`` -- for a
        ``num_samples`` sweep; ``("abs_bias", "std")`` for another hyper-parameter sweep
        with ``exact_fn`` (bias and spread vs temperature), ``("std",)`` without it;
        ``("mean", "exact")`` or ``("mean",)`` for a parameter sweep. Logarithmic axes are
        the default for a ``step``/``temperature``/``num_samples`` x axis and for positive
        statistics (std, se, abs_bias) -- e.g. std vs finite-difference step on log-log
        axes. The title names the estimator, what is plotted, and the sample size. Pass
        ``ax`` to draw into existing axes (e.g. to overlay CRN and no-CRN sweeps) and
        ``label`` to prefix the legend entries. Returns the Figure.
        """
        layout = self.layout
        c = layout.index(coord, "SweepResult.plot")
        hyper = self.hyper_name is not None
        n_sweep = self.hyper_name == "num_samples"
        if stats is None:
            if n_sweep:
                stats = ("se",)
            elif hyper:
                stats = ("abs_bias", "std") if self.bias_flat is not None else ("std",)
            else:
                stats = ("mean", "exact") if self.bias_flat is not None else ("mean",)
        stats = tuple(stats)
        if ax is None:
            fig = _new_figure(figsize=(6, 4.3), layout="constrained")
            ax = fig.add_subplot()
        else:
            fig = ax.figure
        names = self.coord_names
        if hyper:
            xs = np.asarray(self.hyper_values, dtype=np.float64)
            xlabel = "N (samples per estimate)" if n_sweep else self.hyper_name
        else:
            if x is not None:
                xi = layout.index(x, "SweepResult.plot")
            else:
                xi = self._default_x(c)
            xs = self.grid_flat[:, xi]
            xlabel = _theta(names[xi])
        pos_only = {"std", "se", "abs_bias"}
        if logx is None:
            logx = hyper and self.hyper_name in ("step", "temperature", "num_samples")
        if logy is None:
            logy = set(stats) <= pos_only
        prefix = f"{label}: " if label else ""
        two_d = hyper and self.grid_flat is not None
        for s in stats:
            y, err = self._stat(s, c)
            if s == "exact":
                style: dict[str, Any] = {"ls": "--", "color": "k"}
            else:
                style = {"marker": "o", "ms": 3, "capsize": 3}
            if two_d:  # hyper x params grid: one line per parameter value
                xg = self._default_x(c) if x is None else layout.index(x, "SweepResult.plot")
                for j in range(y.shape[1]):
                    at = f"{_theta(names[xg])}={_fmt(self.grid_flat[j, xg], 3)}"
                    e = None if err is None else err[:, j]
                    lab = f"{prefix}{s} ({at})"
                    if s == "exact":
                        ax.plot(xs, y[:, j], label=lab, **style)
                    else:
                        ax.errorbar(xs, y[:, j], yerr=e, label=lab, **style)
            elif s == "exact":
                ax.plot(xs, y, label=f"{prefix}{s}", **style)
            else:
                ax.errorbar(xs, y, yerr=err, label=f"{prefix}{s} ± SE", **style)
        if n_sweep and "se" in stats and not two_d:
            ref = self.std_flat[-1, c] / np.sqrt(xs)
            ax.plot(xs, ref, ls=":", color="0.4", label=f"{prefix}std(N={xs[-1]:g}) / √N")
        if logx:
            ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        which = f"∂E[f]/∂{_theta(names[c])}"
        ax.set_ylabel(f"{', '.join(stats)} of the estimate of {which}")
        name = getattr(self.estimator, "name", type(self.estimator).__name__)
        what = ", ".join("|bias|" if s == "abs_bias" else s for s in stats)
        if n_sweep:
            ns = np.asarray(self.num_samples)
            size = f"one run of N samples per point, N = {ns.min()}…{ns.max()}"
        else:
            size = f"N = {self.num_samples} samples per point"
        ax.set_title(
            f"{name}: {what} of {which} vs {xlabel}\n{size}; error bars ±1 SE", fontsize=10
        )
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        return fig


def _as_grid(params_grid: Any) -> Any:
    """The parameter grid as a pytree of arrays sharing a non-empty leading axis."""
    leaves = jax.tree_util.tree_leaves(params_grid)
    if not leaves:
        raise ValueError("sweep: `params_grid` has no array leaves")
    if isinstance(params_grid, list | tuple) and all(np.ndim(leaf) == 0 for leaf in leaves):
        # a (nested) list or tuple of numbers is one array, not a pytree of scalars
        params_grid = np.asarray(params_grid)

    def numbers(x: Any) -> bool:  # inside the tree, a list of numbers is one array leaf
        return isinstance(x, list) and all(np.ndim(v) == 0 for v in jax.tree_util.tree_leaves(x))

    def leaf(path: Any, a: Any) -> jax.Array:
        a = jnp.asarray(a)
        if a.ndim == 0:
            raise ValueError(
                f"sweep: `params_grid` leaf {jax.tree_util.keystr(path) or '(root)'} is a "
                "scalar; every leaf needs a leading grid axis"
            )
        return a

    grid = jax.tree_util.tree_map_with_path(leaf, params_grid, is_leaf=numbers)
    with_path = jax.tree_util.tree_flatten_with_path(grid)[0]
    lengths = {jax.tree_util.keystr(p) or "(root)": a.shape[0] for p, a in with_path}
    if len(set(lengths.values())) != 1:
        raise ValueError(
            "sweep: every `params_grid` leaf needs the same leading length (the number of "
            f"grid points); got {lengths}"
        )
    if next(iter(lengths.values())) == 0:
        raise ValueError("sweep: `params_grid` needs a non-empty leading grid axis")
    return grid


def _differentiated(tree: Any) -> Any:
    """``tree`` with ``None`` in place of the leaves the transforms do not differentiate
    (the structure of their gradients, see :func:`jaxestim.grad`'s ``argnums``)."""
    return jax.tree_util.tree_map(lambda x: x if _is_inexact(x) else None, tree)


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
    mesh: jax.sharding.Mesh | None = None,
    axis: str | Sequence[str] | None = None,
) -> SweepResult:
    """Evaluate one estimator over a grid of parameters and/or of one hyper-parameter.

    The whole grid runs as one compiled :func:`jax.vmap` (nested when both axes are
    swept): every grid point uses the same ``key``, i.e. the same per-sample keys, so
    curves are smooth in the swept quantity (common random numbers across the grid).
    Each point's statistics equal those of ``je.grad_samples(fun, est_i,
    num_samples=num_samples)(key, params_i)``.

    Args:
      fun: the program ``fun(key, params)``; ``params`` may be any pytree (dicts,
        tuples, nested containers of arrays).
      params_grid: the grid of parameter values: a pytree shaped like ``params`` whose
        every leaf has one extra leading axis of the same length ``G`` (grid point ``i``
        is ``tree_map(lambda a: a[i], params_grid)``), e.g. ``{"a": a_values, "b":
        b_values}``; or an array whose leading axis is the grid for scalar or array
        parameters. A (nested) list of numbers counts as one array, at the top or as a
        leaf (``{"a": [0.5, 1.0]}``); use tuples and dicts as containers. As in
        :func:`jaxestim.grad`, only floating leaves are differentiated: an integer leaf
        (``[1, 2, 3]``) is swept as an integer setting with no gradient coordinate; write
        ``[1.0, 2.0, 3.0]`` to differentiate it.
      estimator: the estimator (the base for a hyper-parameter sweep).
      key: PRNG key.
      num_samples: per-sample estimates per grid point (``>= 2``).
      params: the parameter value (any pytree) for a sweep over ``hyper`` only.
      hyper: ``(name, values)`` for a numeric field of the estimator, e.g.
        ``("temperature", [...])`` for :func:`jaxestim.gumbel_softmax` or
        ``("step", [...])`` for :func:`jaxestim.finite_difference`; the estimator of
        each grid point is ``dataclasses.replace(estimator, name=value)`` built inside
        the vmapped function. ``("num_samples", [...])`` is also accepted: sample sizes
        change shapes, so that axis is a Python loop with one compilation per value.
      exact_fn: ``exact_fn(params) -> exact gradient`` (a scalar, broadcast to every
        coordinate, or a pytree shaped like ``params``), called outside JAX once per grid
        point with NumPy leaves holding the grid point's values (floating leaves as
        float64), or with ``params`` itself for a sweep over ``hyper`` only; enables
        ``bias``.
      argnums: must be 1 (``fun(key, params)``).
      chunk_size: passed to ``grad_samples``.
      mesh: a :class:`jax.sharding.Mesh` to spread the grid over its devices (a parameter
        grid sharded over devices is the other common way to fill a machine, besides
        sharding the samples of one estimate). The outermost vmapped grid axis is
        sharded -- the hyper-parameter values when ``hyper`` is given and is not
        ``"num_samples"``, else the parameter grid's leading axis -- in consecutive
        blocks along ``axis`` (one :func:`jax.shard_map`); the other arguments are
        replicated and each device vmaps over its own grid points, running the same
        computation as the unsharded sweep, so the results equal the unsharded
        sweep's for the same key up to floating-point rounding. A grid of length ``G``
        that is not a multiple of the number of devices ``D`` along ``axis`` is padded
        to ``ceil(G / D) * D`` points by repeating its last point, and the padded
        points' results are dropped: up to ``D - 1`` wasted grid-point evaluations, so
        prefer ``G`` a multiple of ``D``; a grid shorter than ``D`` leaves devices
        computing only copies. The cost per device is ``ceil(G / D)`` grid points (times
        the parameter-grid length when both axes are swept). A sweep over
        ``hyper=("num_samples", ...)`` at fixed ``params`` has no grid axis to shard, so
        its samples are sharded instead (``mesh``/``axis`` passed to
        ``grad_samples``): every swept ``N`` must then be a multiple of ``D``
        (``ValueError`` otherwise). With a mesh spanning several processes, every process
        calls ``sweep`` with the same arguments and gets the whole result (gathered with
        :func:`jax.experimental.multihost_utils.process_allgather`). None (default): one
        device.
      axis: the mesh axis name (or tuple of names) to shard over; default all of the
        mesh's axes (``D`` is the product of their sizes). Requires ``mesh``.

    Returns:
      A :class:`SweepResult` of NumPy arrays; its statistics are named by coordinate
      (``coord_names``) and available flat or shaped like ``params``.
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
    # num_samples=0: the divisibility of the samples is checked below, only where the
    # samples (not a grid axis) are sharded
    mesh, axes = _sharding.check_mesh(mesh, axis, 0, "sweep")
    if params_grid is not None:
        params_grid = _as_grid(params_grid)
        point = jax.tree_util.tree_map(lambda a: a[0], params_grid)
    else:
        point = params
    layout = _Layout(_differentiated(point))
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

    # what the mesh shards: the outermost vmapped grid axis (hyper-parameter values, else
    # the parameter grid), or the samples when there is no grid axis (a num_samples sweep
    # at fixed params)
    shard = None
    if mesh is not None:
        if hyper_name not in (None, "num_samples"):
            shard = "hyper"
        elif params_grid is not None:
            shard = "grid"
        else:
            shard = "samples"
            for n in [int(v) for v in hyper_values]:
                _sharding.check_mesh(
                    mesh, axis, n, "sweep (hyper='num_samples' at fixed `params`: samples sharded)"
                )
    values = None
    if hyper_name not in (None, "num_samples"):
        values = jnp.asarray(hyper_values, dtype=jnp.result_type(float))
    if shard is not None:
        # inputs of the sharded computation (global arrays when the mesh spans processes)
        s_grid, s_params, s_key, s_values = params_grid, params, key, values
        if _sharding.spans_processes(mesh):
            s_grid, s_params, s_key, s_values = _sharding.globalize(
                (params_grid, params, key, values), mesh
            )

    def stats_at(est: Estimator, p: Any, n: int, k: jax.Array) -> tuple[Any, Any, Any]:
        by_sample = {"mesh": mesh, "axis": axis} if shard == "samples" else {}
        g = grad_samples(fun, est, num_samples=n, chunk_size=chunk_size, **by_sample)(k, p)
        mean = jax.tree_util.tree_map(lambda a: jnp.mean(a, axis=0), g)
        std = jax.tree_util.tree_map(lambda a: jnp.std(a, axis=0, ddof=1), g)
        m4 = jax.tree_util.tree_map(lambda a, m: jnp.mean((a - m) ** 4, axis=0), g, mean)
        return mean, std, m4

    def run(n: int) -> tuple[Any, Any, Any]:
        def at_params(est: Estimator, grid: Any, p: Any, k: jax.Array) -> Any:
            if grid is None:
                return stats_at(est, p, n, k)
            return jax.vmap(lambda q: stats_at(est, q, n, k))(grid)

        def one_hyper(v: jax.Array, grid: Any, p: Any, k: jax.Array) -> Any:
            return at_params(dataclasses.replace(estimator, **{hyper_name: v}), grid, p, k)

        if shard is None:
            if hyper_name is None or hyper_name == "num_samples":
                return jax.jit(lambda: at_params(estimator, params_grid, params, key))()
            return jax.jit(jax.vmap(lambda v: one_hyper(v, params_grid, params, key)))(values)
        if shard == "samples":
            out = jax.jit(lambda p, k: stats_at(estimator, p, n, k))(s_params, s_key)
            return jax.tree_util.tree_map(_sharding.to_host, out)
        if shard == "hyper":
            outer = s_values

            def local(vs: jax.Array, rep: tuple) -> Any:
                grid, p, k = rep
                return jax.vmap(lambda v: one_hyper(v, grid, p, k))(vs)

        else:
            outer = s_grid

            def local(qs: Any, rep: tuple) -> Any:
                k = rep[2]
                return jax.vmap(lambda q: stats_at(estimator, q, n, k))(qs)

        length = jax.tree_util.tree_leaves(outer)[0].shape[0]
        pad = -length % _sharding.num_shards(mesh, axes)

        def padded(a: jax.Array) -> jax.Array:  # repeat the last grid point
            return jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]) if pad else a

        def sharded(outer: Any, rep: tuple) -> Any:
            outer = jax.tree_util.tree_map(padded, outer)
            return _sharding.shard_leading(local, mesh, axes, outer, rep)

        out = jax.jit(sharded)(outer, (s_grid if shard == "hyper" else None, s_params, s_key))
        return jax.tree_util.tree_map(lambda a: _sharding.to_host(a)[:length], out)

    lead = (0 if params_grid is None else 1) + (0 if hyper_name in (None, "num_samples") else 1)

    def flat(outs: tuple[Any, Any, Any]) -> tuple[np.ndarray, ...]:
        return tuple(layout.flatten(o, lead) for o in outs)

    if hyper_name == "num_samples":
        ns = [int(v) for v in hyper_values]
        if any(v < 2 for v in ns):
            raise ValueError("sweep: every swept `num_samples` must be >= 2")
        outs = [flat(run(v)) for v in ns]
        mean, std, m4 = (np.stack([o[i] for o in outs]) for i in range(3))
        n_arr = np.asarray(ns, dtype=np.float64).reshape((-1,) + (1,) * (mean.ndim - 1))
        num_out: Any = np.asarray(ns)
    else:
        mean, std, m4 = flat(run(num_samples))
        n_arr = np.float64(num_samples)
        num_out = num_samples
    se = std / np.sqrt(n_arr)
    # SE of the sample std by the delta method: Var(s^2) ~ (m4 - s^4 (N-3)/(N-1)) / N
    var_s2 = np.maximum(m4 - std**4 * (n_arr - 3) / (n_arr - 1), 0.0) / n_arr
    std_se = np.where(std > 0, np.sqrt(var_s2) / (2 * np.where(std > 0, std, 1.0)), 0.0)

    grid_np = grid_flat = None
    if params_grid is not None:
        grid_np = jax.tree_util.tree_map(np.asarray, params_grid)
        grid_flat = layout.flatten(_differentiated(grid_np), 1)
    exact = bias = None
    if exact_fn is not None:
        if params_grid is None:
            ex = _flatten_exact(exact_fn(params), layout.size, "sweep")
        else:
            points = [
                jax.tree_util.tree_map(
                    lambda a, i=i: np.asarray(a[i], np.float64 if _is_inexact(a) else None),
                    grid_np,
                )
                for i in range(grid_flat.shape[0])
            ]
            ex = np.stack([_flatten_exact(exact_fn(p), layout.size, "sweep") for p in points])
        exact = np.broadcast_to(ex, mean.shape).copy()
        bias = mean - exact
    return SweepResult(
        estimator=estimator,
        num_samples=num_out,
        params_grid=grid_np,
        params=None if params_grid is not None else params,
        hyper_name=hyper_name,
        hyper_values=hyper_values,
        coord_names=tuple(layout.names),
        grid_flat=grid_flat,
        mean_flat=mean,
        std_flat=std,
        se_flat=se,
        std_se_flat=std_se,
        exact_flat=exact,
        bias_flat=bias,
        layout=layout,
    )
