"""The documentation's executable code: fenced blocks, their expected output, and figures.

A page's code is its fenced ```` ```python ```` blocks, run in order in one namespace. A
```` ```text ```` block that follows a python block directly (nothing but blank lines
between them) is that block's expected standard output. A python block whose first line
is ``# figure: PATH`` writes the image ``PATH`` (relative to the docs directory, and to
the working directory it runs in) and depends on no earlier block.

As an MkDocs hook (``hooks:`` in ``mkdocs.yml``), this module runs every figure block
of every page at build time, in a temporary directory, and adds the images it writes
to the site, so the figures always come from the code the page shows and are never
committed. ``tests/test_docs.py`` runs every block and checks the outputs; it passes
the figures it made to its own site build through ``$FNN_DOCS_FIGURES``, a directory
of images named by the hash of the block that drew them (:func:`cached`), so that the
build does not draw them a second time.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pathlib
import re
import shutil
import tempfile
from typing import NamedTuple

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
FIGURE = re.compile(r"#\s*figure:\s*(\S+)")


class Block(NamedTuple):
    """One python block of a page: its code, its line, its expected output, its figure."""

    code: str
    line: int
    expected: str | None
    figure: str | None


def blocks(markdown: str) -> list[Block]:
    """The python blocks of a page, in order, each with the text block that follows it."""
    fences = [(m.group(1), m.group(2), m.start(), m.end()) for m in FENCE.finditer(markdown)]
    found = []
    for i, (lang, code, start, _) in enumerate(fences):
        if lang != "python":
            continue
        expected = None
        if i + 1 < len(fences):
            next_lang, next_code, next_start, _ = fences[i + 1]
            if next_lang == "text" and not markdown[fences[i][3]:next_start].strip():
                expected = next_code
        first = code.splitlines()[0] if code.strip() else ""
        figure = FIGURE.fullmatch(first.strip())
        line = markdown.count("\n", 0, start) + 2
        found.append(Block(code, line, expected, figure.group(1) if figure else None))
    return found


def run_block(block: Block, namespace: dict, filename: str) -> str:
    """Execute one block in ``namespace``; returns what it printed."""
    out = io.StringIO()
    code = compile("\n" * (block.line - 1) + block.code, filename, "exec", dont_inherit=True)
    with contextlib.redirect_stdout(out):
        exec(code, namespace)
    return out.getvalue()


def cached(block: Block, cache: pathlib.Path) -> pathlib.Path:
    """Where a figure cache keeps the image of ``block``: named by a hash of its code."""
    digest = hashlib.sha256(block.code.encode()).hexdigest()[:20]
    return cache / f"{digest}{pathlib.Path(block.figure).suffix}"


def make_figures(
    markdown: str, filename: str, directory: pathlib.Path, cache: pathlib.Path | None = None
) -> list[str]:
    """Run a page's figure blocks with ``directory`` as working directory; the paths written.

    A figure already in ``cache`` (made by the same code) is copied instead of drawn again.
    """
    written = []
    cwd = os.getcwd()
    try:
        os.chdir(directory)
        for block in blocks(markdown):
            if block.figure is None:
                continue
            target = directory / block.figure
            target.parent.mkdir(parents=True, exist_ok=True)
            if cache is not None and cached(block, cache).is_file():
                shutil.copyfile(cached(block, cache), target)
            else:
                run_block(block, {"__name__": "__docs__"}, filename)
            if not target.is_file():
                raise RuntimeError(f"{filename}:{block.line}: the block did not write {block.figure}")
            written.append(block.figure)
    finally:
        os.chdir(cwd)
    return written


_figures_dir: tempfile.TemporaryDirectory | None = None


def on_files(files, config):
    """MkDocs hook: make every page's figures and add them to the site's files."""
    from mkdocs.structure.files import File

    global _figures_dir
    _figures_dir = tempfile.TemporaryDirectory(prefix="fnn-docs-figures-")
    directory = pathlib.Path(_figures_dir.name)
    cache = pathlib.Path(os.environ["FNN_DOCS_FIGURES"]) if os.environ.get("FNN_DOCS_FIGURES") else None
    for page in [f for f in files if f.src_uri.endswith(".md")]:
        markdown = pathlib.Path(page.abs_src_path).read_text()
        for path in make_figures(markdown, page.abs_src_path, directory, cache):
            if files.get_file_from_path(path) is not None:
                files.remove(files.get_file_from_path(path))
            files.append(File.generated(config, path, abs_src_path=str(directory / path)))
    return files


def on_post_build(config):
    """MkDocs hook: drop the temporary figures once the site has them."""
    global _figures_dir
    if _figures_dir is not None:
        _figures_dir.cleanup()
        _figures_dir = None
