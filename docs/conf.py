"""Sphinx configuration for the jaxestim documentation (``make docs``).

Strict build: ``make docs`` runs ``sphinx-build -W --keep-going -n``, so a warning, a broken
cross-reference (nitpicky mode) or a failing executed example fails the build.

* Markdown pages are parsed by MyST-NB. Pages written as MyST notebooks (``getting_started``)
  are executed at build time (a failing cell fails the build); the tutorial notebooks in
  ``notebooks/`` are rendered **without execution** (they are executed by
  ``tests/test_notebooks.py``) and copied into ``gallery/notebooks/`` on each build.
* Math is rendered by a MathJax 3 copy shipped in the ``sphinx-mathjax-offline`` package and
  served from ``_static/mathjax``: the pages need no network.
* The API reference (``api/``) is generated from ``__all__`` by ``_ext/jaxestim_apigen.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS / "_ext"))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# The executed pages run in a kernel of *this* interpreter, importing *this* checkout's
# jaxestim, whatever kernelspecs the user has installed (as tests/test_notebooks.py does).
_KERNELS = DOCS / "_build" / ".jupyter"
(_KERNELS / "kernels" / "python3").mkdir(parents=True, exist_ok=True)
(_KERNELS / "kernels" / "python3" / "kernel.json").write_text(
    json.dumps(
        {
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (docs)",
            "language": "python",
        }
    )
)
os.environ["JUPYTER_PATH"] = os.pathsep.join(
    p for p in (str(_KERNELS), os.environ.get("JUPYTER_PATH", "")) if p
)
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
)

import jaxestim  # noqa: E402

project = "jaxestim"
author = "jaxestim developers"
copyright = "jaxestim developers"
release = jaxestim.__version__
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",
    "jaxestim_apigen",
]

exclude_patterns = [
    "_build",
    "Thumbs.db",
    ".DS_Store",
    "**.ipynb_checkpoints",
    "_ext",
]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"

# --- MyST / MyST-NB ----------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "force"  # only MyST-notebook pages; the .ipynb files are excluded below
nb_execution_excludepatterns = ["gallery/notebooks/*"]
nb_execution_raise_on_error = True
nb_execution_timeout = 120
nb_execution_show_tb = True
nb_merge_streams = True

# --- autodoc -------------------------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = True
napoleon_use_rtype = False

# --- strictness -----------------------------------------------------------------------------
nitpicky = True
# Targets outside this project (no intersphinx: the build is offline). References to names
# of jaxestim itself are never ignored, so a broken internal link fails the build.
nitpick_ignore_regex = [
    (r"py:.*", r"(jax|jaxlib|numpy|np|jnp|optax|equinox|eqx|flax|matplotlib|chex)(\..*)?"),
    (r"py:.*", r"(typing|collections|collections\.abc|types|abc|enum|dataclasses)\..*"),
    (r"py:.*", r"(Any|Callable|Sequence|Mapping|Iterable|Iterator|Hashable|Literal|Self)"),
    (r"py:.*", r"(Array|ArrayLike|PyTree|PRNGKey|Key|DTypeLike|Shape|Figure|Axes|PathLike)"),
    (r"py:.*", r"(int|float|str|bool|complex|tuple|list|dict|set|None|object|type|callable)"),
    (r"py:.*", r"(Path|pathlib\.Path|ValueError|TypeError|Exception|NamedTuple)"),
]

# --- HTML ----------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"jaxestim {release}"
html_static_path: list[str] = []
html_show_sourcelink = False


# The tutorial notebooks live in notebooks/ (where tests/test_notebooks.py runs them); copy
# them into the source tree so they render in the gallery.
def _copy_notebooks() -> None:
    dst = DOCS / "gallery" / "notebooks"
    dst.mkdir(parents=True, exist_ok=True)
    wanted = {p.name for p in (ROOT / "notebooks").glob("*.ipynb")}
    for old in dst.glob("*.ipynb"):
        if old.name not in wanted:
            old.unlink()
    for name in sorted(wanted):
        src = ROOT / "notebooks" / name
        target = dst / name
        if not target.exists() or target.read_bytes() != src.read_bytes():
            shutil.copyfile(src, target)


_copy_notebooks()


# The example scripts in examples/: one generated page each (gallery/examples/NAME.md): the
# module docstring (problem statement, exact reference, what is compared), the figure and the
# printed results of the committed full-size run (examples/figures/NAME.png / NAME.txt, made
# by `python examples/NAME.py --out examples/figures`), and how to run it. Regenerated on each
# build, so a new script appears without editing the docs.
def _example_pages() -> None:
    import ast
    import shutil

    target = DOCS / "gallery" / "examples"
    target.mkdir(parents=True, exist_ok=True)
    figures = ROOT / "examples" / "figures"
    for path in sorted((ROOT / "examples").glob("[!_]*.py")):
        name = path.stem
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or name
        title, _, body = doc.strip().partition("\n")
        lines = [f"# {title.rstrip('.')}", "", body.strip(), ""]
        png, txt = figures / f"{name}.png", figures / f"{name}.txt"
        if png.exists():
            shutil.copyfile(png, target / png.name)
            lines += ["## Full-size run", "", f"```{{image}} {png.name}", f":alt: {title}"]
            lines += ["```", ""]
        if txt.exists():
            lines += ["Printed results of that run:", "", "```text", txt.read_text().strip()]
            lines += ["```", ""]
        lines += [
            "## Run it",
            "",
            "```bash",
            f"python examples/{name}.py --out gallery-out        # full size",
            f"python examples/{name}.py --fast --out gallery-out # the few-second version",
            "```",
            "",
            f"The fast version runs in `make test` (`tests/test_examples.py::test_{name}`), which "
            "checks the figures it reports against the exact or reference gradient.",
            "",
        ]
        text = "\n".join(lines)
        page = target / f"{name}.md"
        if not page.exists() or page.read_text() != text:
            page.write_text(text)


_example_pages()

# An undefined TeX macro is a MathJax error (red "merror" box that tests/test_docs.py
# detects), not red text that passes unnoticed.
mathjax3_config = {"tex": {"packages": {"[-]": ["noundefined"]}}}
