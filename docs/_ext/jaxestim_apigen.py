"""Generate the API reference from ``__all__`` at build time.

Nothing in ``docs/api/`` is written by hand: on every build this extension imports
:mod:`jaxestim` and writes one page per public namespace (``jaxestim``,
``jaxestim.estimators``, ``jaxestim.distributions``, ``jaxestim.baselines``) plus an index
table, from the modules' ``__all__``. A name added to ``__all__`` therefore appears in the
reference (and its docstring is checked by the strict build) without editing any page;
``tests/test_docs.py`` checks the built index against ``jaxestim.__all__``.

Names that are not in one of the curated sections below land in a section chosen from their
module (estimators) or in "Other public names", so they are never dropped. A public name
without a docstring of its own is a build warning (an error under ``make docs``'s ``-W``).
Docstring references written relative to the defining module (``:func:`select``` inside
``jaxestim/estimators/relaxations.py``) are resolved to where the object is documented
(``jaxestim.select``); references to private names (``_walk_icdf``) render as plain text.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import types
from pathlib import Path

# Curated sections of the top-level namespace, in display order. A name listed here but
# absent from ``jaxestim.__all__`` is ignored (so renames do not break the build).
SECTIONS: list[tuple[str, str, list[str]]] = [
    (
        "transforms",
        "Gradient transforms",
        ["grad", "value_and_grad", "grad_samples", "perturbed"],
    ),
    (
        "sites",
        "Sample sites, costs and control flow",
        [
            "sample",
            "select",
            "cost",
            "scan",
            "fori_loop",
            "while_loop",
            "cond",
            "switch",
            "LoopKey",
        ],
    ),
    (
        "resampling",
        "Particle filters: resampling and likelihood-ratio weights",
        ["resample", "new_weight", "new_log_weight"],
    ),
    (
        "research",
        "Research workflow: compare, sweep, check",
        [
            "compare",
            "sweep",
            "ComparisonReport",
            "Recommendation",
            "SweepResult",
            "check",
            "CheckReport",
            "Finding",
        ],
    ),
    ("base", "Base class and errors", ["Estimator", "EstimatorError"]),
]
ESTIMATOR_SECTION = ("estimators", "Estimators (constructors and classes)")
OTHER_SECTION = ("other", "Other public names")

# Objects that public docstrings refer to (result types, helpers) but that are not exported.
# They are documented under their defining module on the "Supporting objects" page, so the
# references resolve; a missing one fails the strict build.
SUPPORTING = [
    "jaxestim._compare.EstimatorResult",
    "jaxestim._compare.documented_unbiased",
    "jaxestim._compare.UNBIASEDNESS",
    "jaxestim.estimators.relaxations.conditional_gumbel",
]

NAMESPACES = [
    ("jaxestim.estimators", "estimators", "jaxestim.estimators"),
    ("jaxestim.distributions", "distributions", "jaxestim.distributions"),
    ("jaxestim.baselines", "baselines", "jaxestim.baselines"),
]


def _kind(obj: object) -> str:
    if isinstance(obj, types.ModuleType):
        return "module"
    if inspect.isclass(obj):
        if issubclass(obj, BaseException):
            return "exception"
        return "class"
    if callable(obj):
        return "function"
    return "data"


def _summary(obj: object) -> str:
    doc = inspect.getdoc(obj) or ""
    first = doc.strip().split("\n\n")[0].replace("\n", " ").strip()
    # Keep the table cell simple: roles become literals (their targets may be relative to
    # the documented module, which the index page is not).
    first = re.sub(r":[\w:]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`", r"``\1``", first)
    return first.replace("|", "\\|")


def _directive(qualname: str, obj: object) -> list[str]:
    kind = _kind(obj)
    if kind == "module":
        return [f"See :mod:`{obj.__name__}`.", ""]
    if kind == "exception":
        return [f".. autoexception:: {qualname}", ""]
    if kind == "class":
        return [f".. autoclass:: {qualname}", "   :members:", ""]
    if kind == "function":
        return [f".. autofunction:: {qualname}", ""]
    return [f".. autodata:: {qualname}", ""]


def _heading(text: str, char: str) -> list[str]:
    return [text, char * len(text), ""]


def _public_names(modname: str) -> list[str]:
    mod = importlib.import_module(modname)
    names = getattr(mod, "__all__", None)
    if names is None:
        names = [
            n
            for n, o in vars(mod).items()
            if not n.startswith("_") and getattr(o, "__module__", None) == modname
        ]
    return list(names)


def _top_level_sections(je: types.ModuleType) -> list[tuple[str, str, list[str]]]:
    names = list(je.__all__)
    placed: set[str] = set()
    out = []
    for key, title, members in SECTIONS:
        present = [n for n in members if n in names]
        placed.update(present)
        out.append((key, title, present))
    est, other, modules = [], [], []
    for n in names:
        if n in placed:
            continue
        obj = getattr(je, n)
        if isinstance(obj, types.ModuleType):
            modules.append(n)
        elif str(getattr(obj, "__module__", "")).startswith("jaxestim.estimators"):
            est.append(n)
        else:
            other.append(n)
    # Estimators: constructor functions first (alphabetical), then classes.
    est.sort(key=lambda n: (inspect.isclass(getattr(je, n)), n.lower()))
    out.insert(1, (ESTIMATOR_SECTION[0], ESTIMATOR_SECTION[1], est))
    out.append(("submodules", "Submodules", modules))
    out.append((OTHER_SECTION[0], OTHER_SECTION[1], other))
    return [s for s in out if s[2]]


def _own_doc(name: str, obj: object) -> str:
    """The object's own docstring ('' if missing or generated by ``dataclasses``)."""
    doc = obj.__doc__ if isinstance(obj.__doc__, str) else ""
    if inspect.isclass(obj) and doc.startswith(f"{obj.__name__}("):
        return ""  # dataclasses' generated signature, not documentation
    return doc.strip()


def undocumented() -> list[str]:
    """Public names (in any documented ``__all__``) without a docstring of their own."""
    out = []
    for modname in ["jaxestim"] + [m for m, _, _ in NAMESPACES]:
        mod = importlib.import_module(modname)
        for n in _public_names(modname):
            if not _own_doc(n, getattr(mod, n)):
                out.append(f"{modname}.{n}")
    return out


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def generate(outdir: Path) -> None:
    """Write the API pages into ``outdir`` (created if needed)."""
    je = importlib.import_module("jaxestim")
    outdir.mkdir(parents=True, exist_ok=True)
    top = set(je.__all__)

    # --- jaxestim (top level) -------------------------------------------------------
    lines = [".. This file is generated by docs/_ext/jaxestim_apigen.py; do not edit.", ""]
    lines += _heading("jaxestim", "=")
    lines += [".. automodule:: jaxestim", "   :no-members:", ""]
    lines += [".. currentmodule:: jaxestim", ""]
    for _key, title, members in _top_level_sections(je):
        lines += _heading(title, "-")
        for n in members:
            lines += _directive(f"jaxestim.{n}", getattr(je, n))
    _write_if_changed(outdir / "jaxestim.rst", "\n".join(lines) + "\n")

    # --- sub-namespaces -----------------------------------------------------------------
    for modname, page, title in NAMESPACES:
        mod = importlib.import_module(modname)
        lines = [".. This file is generated by docs/_ext/jaxestim_apigen.py; do not edit.", ""]
        lines += _heading(title, "=")
        lines += [f".. automodule:: {modname}", "   :no-members:", ""]
        lines += [f".. currentmodule:: {modname}", ""]
        reexported, own = [], []
        for n in _public_names(modname):
            obj = getattr(mod, n)
            if n in top and getattr(je, n) is obj:
                reexported.append(n)
            else:
                own.append(n)
        if reexported:
            lines += _heading("Also available as ``jaxestim.<name>``", "-")
            lines += [
                "These names are the same objects as the top-level ones and are documented there:",
                "",
            ]
            lines += [f"* :obj:`{modname}.{n} <jaxestim.{n}>`" for n in reexported] + [""]
        if own:
            lines += _heading("Members", "-")
            for n in own:
                lines += _directive(f"{modname}.{n}", getattr(mod, n))
        if modname == "jaxestim.estimators":
            subs = sorted(
                m.name for m in pkgutil.iter_modules(mod.__path__) if not m.name.startswith("_")
            )
            lines += _heading("Estimator modules", "-")
            lines += [
                "Each family's module docstring holds its derivation; the classes and "
                "constructors are documented under :mod:`jaxestim`.",
                "",
            ]
            for s in subs:
                lines += _heading(f"jaxestim.estimators.{s}", "~")
                lines += [f".. automodule:: jaxestim.estimators.{s}", "   :no-members:", ""]
        _write_if_changed(outdir / f"{page}.rst", "\n".join(lines) + "\n")

    # --- supporting objects ------------------------------------------------------------
    lines = [".. This file is generated by docs/_ext/jaxestim_apigen.py; do not edit.", ""]
    lines += _heading("Supporting objects", "=")
    lines += [
        "Result types and helpers that the public API returns or its docstrings refer to, "
        "documented where they are defined. They are not part of ``jaxestim.__all__``; "
        "import them from the public objects that produce them.",
        "",
    ]
    for path in SUPPORTING:
        obj = _import_path(path)
        if obj is None:
            raise ImportError(f"docs/_ext/jaxestim_apigen.py: SUPPORTING name {path} not found")
        modname = path.rpartition(".")[0]
        lines += [f".. currentmodule:: {modname}", ""]
        if _kind(obj) == "data":
            lines += [f".. autodata:: {path}", "   :no-value:", ""]
        else:
            lines += _directive(path, obj)
    _write_if_changed(outdir / "supporting.rst", "\n".join(lines) + "\n")

    # --- index table ------------------------------------------------------------------
    lines = [".. This file is generated by docs/_ext/jaxestim_apigen.py; do not edit.", ""]
    lines += _heading("API reference", "=")
    lines += [
        "Generated at build time from ``__all__`` of each namespace: every public name "
        "is listed here and documented from its docstring.",
        "",
        ".. toctree::",
        "   :maxdepth: 1",
        "",
        "   jaxestim",
        "   estimators",
        "   distributions",
        "   baselines",
        "   supporting",
        "",
    ]
    tables = [("jaxestim", list(je.__all__))] + [
        (modname, _public_names(modname)) for modname, _, _ in NAMESPACES
    ]
    for modname, names in tables:
        mod = importlib.import_module(modname)
        lines += _heading(f"``{modname}``", "-")
        lines += [
            ".. list-table::",
            "   :header-rows: 1",
            "   :widths: 25 12 63",
            f"   :class: api-index api-index-{modname.replace('.', '-')}",
            "",
            "   * - name",
            "     - kind",
            "     - summary",
        ]
        for n in sorted(names, key=str.lower):
            obj = getattr(mod, n)
            target = f"jaxestim.{n}" if n in top and getattr(je, n) is obj else f"{modname}.{n}"
            if isinstance(obj, types.ModuleType):
                ref = f":mod:`{n} <{obj.__name__}>`"
            else:
                ref = f":obj:`{n} <{target}>`"
            summary = _summary(obj) or " "
            lines += [f"   * - {ref}", f"     - {_kind(obj)}", f"     - {summary}"]
        lines.append("")
    _write_if_changed(outdir / "index.rst", "\n".join(lines) + "\n")


def _import_path(path: str) -> object | None:
    """The object named by a dotted path (module attributes and class members), or None."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except Exception:
            continue
        try:
            for p in parts[i:]:
                obj = getattr(obj, p)
        except AttributeError:
            return None
        return obj
    return None


def _documented_by_id(env) -> dict[int, str]:
    """``id(object) -> documented full name`` for every object in the Python domain."""
    cache = getattr(env, "_jaxestim_documented", None)
    if cache is None:
        cache = {}
        for name, _entry in env.get_domain("py").objects.items():
            obj = _import_path(name)
            if obj is not None and not isinstance(obj, (int, float, str, bool, type(None))):
                cache.setdefault(id(obj), name)
        env._jaxestim_documented = cache
    return cache


def _on_missing_reference(app, env, node, contnode):
    """Resolve a docstring's reference written relative to the *defining* module.

    Docstrings say ``:func:`select``` or ``:meth:`init``` relative to where the code lives
    (``jaxestim.estimators.relaxations``), while the reference documents the object where
    users import it (``jaxestim.select``). If the target names an importable object that is
    documented under another name, link there. Anything else stays unresolved and fails the
    strict build, except targets with a private component (``_name``), which are
    implementation details that docstrings may mention for readers of the source.
    """
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"].lstrip(".~")
    if any(part.startswith("_") and not part.startswith("__") for part in target.split(".")):
        return contnode  # private implementation detail: plain text, no link
    modname, clsname = node.get("py:module"), node.get("py:class")
    candidates = []
    # The module that defines the documented object whose docstring holds the reference.
    match = re.search(r"docstring of ([\w.]+)", str(node.source or ""))
    if match:
        parts = match.group(1).split(".")
        for i in range(len(parts) - 1, 0, -1):
            owner = ".".join(parts[:i])
            candidates.append(f"{owner}.{target}")
    if modname and clsname:
        candidates.append(f"{modname}.{clsname}.{target}")
    if modname:
        candidates.append(f"{modname}.{target}")
    candidates.append(target)
    documented = _documented_by_id(env)
    domain = env.get_domain("py")
    for cand in candidates:
        obj = _import_path(cand)
        if obj is None:
            continue
        name = documented.get(id(obj))
        if name is None:
            continue
        return domain.resolve_xref(env, node["refdoc"], app.builder, "obj", name, node, contnode)
    return None


def _on_builder_inited(app) -> None:
    from sphinx.util import logging

    generate(Path(app.srcdir) / "api")
    log = logging.getLogger(__name__)
    for name in undocumented():
        log.warning("public name %s has no docstring (the API reference needs one)", name)


def setup(app):
    app.connect("builder-inited", _on_builder_inited)
    app.connect("missing-reference", _on_missing_reference)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
