"""The documentation site (``make docs``) opened in a real headless browser.

``make test`` builds the site first (``make docs``: strict Sphinx build into
``docs/_build/html``); run alone, this module builds it if it is missing. Each page that
contains math is loaded in headless Chromium (``/usr/bin/chromium``, Debian's package;
``.ci/run`` installs it) with ``--dump-dom``, i.e. the DOM after the page's scripts ran, and
must show MathJax output for every math element, no MathJax error and no raw TeX delimiters.
The MathJax copy is served from the built site itself (``_static/mathjax``), and the browser
runs without network, so this also checks that math renders offline. The API index must
list, and link to the documentation of, every name in ``jaxestim.__all__`` (and in the
``__all__`` of ``jaxestim.estimators``, ``jaxestim.distributions``, ``jaxestim.baselines``).
"""

from __future__ import annotations

import fcntl
import html
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import jaxestim

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "docs" / "_build" / "html"
BROWSER_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-extensions",
    "--virtual-time-budget=20000",
]
# Pages of the user guide and reference whose math must render (a page from the generated
# API reference and the hand-written estimator pages included). Every other page with math
# is checked too; these must exist.
REQUIRED_MATH_PAGES = ["index.html", "concepts.html", "estimators/score_function.html"]


def _browser() -> str | None:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chrome")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


@pytest.fixture(scope="module")
def site() -> Path:
    """The built site; built here (once, under a lock for xdist) when it is missing."""
    lock_path = ROOT / "docs" / ".build.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (HTML / "api" / "index.html").exists():
            cmd = [sys.executable, "-m", "sphinx", "-E", "-W", "--keep-going", "-n", "-q"]
            subprocess.run(
                [*cmd, "-b", "html", str(ROOT / "docs"), str(HTML)], check=True, cwd=ROOT
            )
    return HTML


@pytest.fixture(scope="module")
def browser() -> str:
    path = _browser()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
        pytest.skip("chromium not installed: apt-get install -y chromium")
    return path


def dump_dom(browser: str, page: Path, *flags: str) -> str:
    """The page's DOM after its scripts (MathJax) ran, from headless Chromium."""
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run(
            [
                browser,
                *BROWSER_FLAGS,
                *flags,
                f"--user-data-dir={profile}",
                "--dump-dom",
                page.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    assert "<html" in out.stdout, out.stderr[-2000:]
    return out.stdout


def _math_pages(site: Path) -> list[Path]:
    pages = [
        p
        for p in sorted(site.rglob("*.html"))
        if "_static" not in p.parts
        and 'class="math' in p.read_text(encoding="utf-8", errors="replace")
    ]
    return pages


# One browser process loads every page with math in an iframe of a small harness page (file
# URLs may read each other with --allow-file-access-from-files), waits for each page's
# MathJax to finish typesetting and writes what it found into the harness's DOM as JSON.
HARNESS = """<!DOCTYPE html><html><body><pre id="result">pending</pre><script>
const pages = %s;
function inspect(doc) {
  const maths = Array.from(doc.querySelectorAll(".math"));
  const rendered = maths.filter(m => m.querySelector("mjx-container")).length;
  const errors = doc.querySelectorAll("mjx-merror, [data-mjx-error]").length;
  const body = doc.body.cloneNode(true);
  body.querySelectorAll("script, style, pre, code, mjx-container, textarea")
      .forEach(n => n.remove());
  return {math: maths.length, rendered: rendered, errors: errors, text: body.textContent,
          mathjax: !!(doc.defaultView.MathJax && doc.defaultView.MathJax.version)};
}
function load(page) {
  return new Promise(resolve => {
    const frame = document.createElement("iframe");
    frame.onload = () => {
      const win = frame.contentWindow;
      let tries = 0;
      const wait = () => {
        const mj = win.MathJax;
        if (mj && mj.startup && mj.startup.promise) {
          mj.startup.promise.then(() => resolve([page, inspect(frame.contentDocument)]));
        } else if (++tries > 400) {
          resolve([page, inspect(frame.contentDocument)]);
        } else {
          setTimeout(wait, 25);
        }
      };
      wait();
    };
    frame.src = page;
    document.body.appendChild(frame);
  });
}
Promise.all(pages.map(load)).then(r => {
  document.getElementById("result").textContent = JSON.stringify(Object.fromEntries(r));
}).catch(e => { document.getElementById("result").textContent = "ERROR " + e; });
</script></body></html>"""


def test_math_renders_offline(site: Path, browser: str) -> None:
    pages = _math_pages(site)
    rel = [p.relative_to(site).as_posix() for p in pages]
    missing = [p for p in REQUIRED_MATH_PAGES if p not in rel]
    assert not missing, f"pages expected to contain math: {missing}"
    # MathJax must be the local copy: no page may load anything from the network.
    for p in pages:
        src = p.read_text(encoding="utf-8")
        assert "_static/mathjax/tex-chtml.js" in src, p
        assert not re.search(r"<script[^>]+src=\"https?://", src), f"{p} loads a remote script"

    with tempfile.TemporaryDirectory() as tmp:
        harness = Path(tmp) / "harness.html"
        harness.write_text(HARNESS % json.dumps([p.as_uri() for p in pages]))
        dom = dump_dom(browser, harness, "--allow-file-access-from-files")
    match = re.search(r'<pre id="result">(.*?)</pre>', dom, flags=re.S)
    assert match and match.group(1).startswith("{"), dom[-2000:]
    results = json.loads(html.unescape(match.group(1)))
    for page in pages:
        name = page.relative_to(site).as_posix()
        r = results[page.as_uri()]
        assert r["mathjax"], f"{name}: MathJax did not load"
        assert r["math"] > 0, f"{name}: no math element found in the browser"
        assert r["rendered"] == r["math"], f"{name}: {r['rendered']} of {r['math']} rendered"
        assert r["errors"] == 0, f"{name}: {r['errors']} MathJax (TeX) errors"
        for raw in ("$$", "\\(", "\\)", "\\[", "\\]", "\\begin{"):
            assert raw not in r["text"], f"{name}: raw TeX {raw!r} left in the rendered page"


def _index_names(dom: str, module: str) -> list[str]:
    cls = "api-index-" + module.replace(".", "-")
    table = re.search(rf"<table[^>]*\b{re.escape(cls)}\b.*?</table>", dom, flags=re.S)
    assert table, f"no API index table for {module}"
    rows = re.findall(r"<tr\b.*?</tr>", table.group(0), flags=re.S)
    names = []
    for row in rows[1:]:  # skip the header row
        pattern = r'<a class="reference internal" href="([^"]+)"[^>]*>.*?<span class="pre">([^<]+)<'
        link = re.search(pattern, row, flags=re.S)
        assert link, f"{module}: a row of the API index has no link: {row[:300]}"
        names.append((html.unescape(link.group(2)), link.group(1)))
    return names


@pytest.fixture(scope="module")
def index_dom(site: Path, browser: str) -> str:
    return dump_dom(browser, site / "api" / "index.html")


@pytest.mark.parametrize(
    "module",
    ["jaxestim", "jaxestim.estimators", "jaxestim.distributions", "jaxestim.baselines"],
)
def test_api_index_lists_every_public_name(index_dom: str, site: Path, module: str) -> None:
    index = site / "api" / "index.html"
    listed = _index_names(index_dom, module)
    assert listed, f"{module}: empty API index table"
    mod = importlib.import_module(module)
    expected = set(jaxestim.__all__) if module == "jaxestim" else getattr(mod, "__all__", None)
    if expected is not None:
        missing = set(expected) - {n for n, _ in listed}
        assert not missing, f"API index lacks {sorted(missing)}: rebuild with `make docs`"
    # Every link lands on a documented object (or a module) on a built page.
    pages: dict[str, str] = {}
    for name, href in listed:
        file, _, anchor = href.partition("#")
        target = (index.parent / file).resolve()
        assert target.exists(), f"{name}: link to missing page {href}"
        text = pages.setdefault(file, target.read_text(encoding="utf-8"))
        if anchor:
            assert f'id="{anchor}"' in text, f"{name}: {href} has no anchor on its page"
