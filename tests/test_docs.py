"""The documentation runs as written, and the site builds without a warning.

Every page of ``docs/`` is read for fenced code blocks (the parser is
``docs/hooks/figures.py``, the same one the site build uses for its figures):

* the ```` ```python ```` blocks of a page run in order, in one namespace, in a fresh
  working directory;
* a ```` ```text ```` block that directly follows a python block (only blank lines
  between them) is the output that block must print, compared line by line after
  trailing spaces are stripped; a python block with no text block after it may print
  anything;
* a python block whose first line is ``# figure: PATH`` must write the image ``PATH``
  (the site build runs these blocks and publishes the images they write).

Blocks in other languages (``bash``, ``text`` on its own) are shown, not run. The site
is built with ``mkdocs build --strict`` into a temporary directory; the figures the page
tests drew are handed to it (``$FNN_DOCS_FIGURES``, keyed by a hash of the drawing code)
so that it does not draw them again, and it draws any that are missing.
"""

import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

_spec = importlib.util.spec_from_file_location("docs_figures", DOCS / "hooks" / "figures.py")
figures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(figures)

PAGES = sorted(p for p in DOCS.rglob("*.md") if figures.blocks(p.read_text()))


@pytest.fixture(scope="session")
def figure_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("figures")


def _normal(text: str) -> list[str]:
    return [line.rstrip() for line in text.strip("\n").splitlines()]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_page_code_runs_and_prints_what_the_page_shows(page, tmp_path, monkeypatch, figure_cache):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__docs__"}
    for block in figures.blocks(page.read_text()):
        if block.figure:
            (tmp_path / block.figure).parent.mkdir(parents=True, exist_ok=True)
        printed = figures.run_block(block, namespace, str(page))
        where = f"{page.relative_to(ROOT)}:{block.line}"
        if block.expected is not None:
            assert _normal(printed) == _normal(block.expected), f"{where} printed:\n{printed}"
        if block.figure:
            assert (tmp_path / block.figure).stat().st_size > 10_000, f"{where} wrote no {block.figure}"
            shutil.copyfile(tmp_path / block.figure, figures.cached(block, figure_cache))


def test_the_overview_and_the_getting_started_page_have_checked_code():
    for name in ("overview.md", "getting-started.md"):
        found = figures.blocks((DOCS / name).read_text())
        assert len([b for b in found if b.expected is not None]) >= 3, name
    overview = figures.blocks((DOCS / "overview.md").read_text())
    assert {b.figure for b in overview} >= {"img/activations.png", "img/optimizers.png"}


def test_the_block_parser_pairs_outputs_and_figures():
    page = (
        "text\n\n```python\nprint(1)\n```\n\n```text\n1\n```\n\n```python\n# figure: img/a.png\nx = 2\n```\n"
        "\nbetween\n\n```text\nnot an output\n```\n```bash\nls\n```\n"
    )
    first, second = figures.blocks(page)
    assert (first.code, first.expected, first.figure, first.line) == ("print(1)\n", "1\n", None, 4)
    assert (second.expected, second.figure) == (None, "img/a.png")


def test_mkdocs_builds_the_site_strictly_and_offline(tmp_path, figure_cache):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "FNN_DOCS_FIGURES": str(figure_cache)}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert "WARNING" not in log, log
    site = tmp_path / "site"
    for figure in ("img/activations.png", "img/optimizers.png"):
        assert (site / figure).stat().st_size > 10_000
    overview = (site / "overview" / "index.html").read_text()
    assert "activations.png" in overview and "optimizers.png" in overview
    reference = (site / "layers" / "conv" / "index.html").read_text()
    assert "ConvTranspose" in reference and "kernel_size" in reference
    assert "fonts.googleapis.com" not in overview
