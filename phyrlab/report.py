"""``make report``: execute every notebook headless and write an offline HTML site.

Each notebook becomes one standalone page built with bokeh's ``file_html(..., INLINE)``: its
text (markdown and the printed figure tables of this run) and, where the notebook registers
one in :data:`SITE_PAGES`, a kernel-free interactive view whose bokeh widgets switch between
results precomputed for each setting (``CustomJS``). No CDN, no kernel: it works on a
projector with no network. nbconvert's HTML export is not used, because it loads the widget
manager from a CDN.
"""

from __future__ import annotations

import html
import importlib
from collections.abc import Callable
from pathlib import Path

import mistune
import nbformat
from bokeh.embed import file_html
from bokeh.layouts import column
from bokeh.models import Div
from bokeh.resources import INLINE

from .nbtools import execute, notebook_paths

#: notebook stem -> "module:function" returning a kernel-free bokeh layout for the site.
SITE_PAGES: dict[str, str] = {
    "00-tour": "phyrlab.site.tour:site_page",
    "01-storage-size": "phyrlab.site.storage:site_page",
    "02-cpu-dma-split": "phyrlab.site.dma_split:site_page",
    "03-iommu-page-tables": "phyrlab.site.iommu:site_page",
    "04-mapping-backends": "phyrlab.site.backends:site_page",
    "05-p2p-checks": "phyrlab.site.pci:site_page",
    "06-two-step-api": "phyrlab.site.twostep:site_page",
}

WIDTH = 900
CSS = ("font-family: DejaVu Sans, sans-serif; font-size: 15px; line-height: 1.45; "
       f"width: {WIDTH}px;")


def _page_builder(stem: str) -> Callable | None:
    target = SITE_PAGES.get(stem)
    if not target:
        return None
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def notebook_blocks(nb: nbformat.NotebookNode) -> list[Div]:
    """Markdown cells as HTML and printed outputs as preformatted text, in order."""
    blocks = []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            blocks.append(Div(text=f"<div style='{CSS}'>{mistune.html(cell.source)}</div>",
                              width=WIDTH))
        elif cell.cell_type == "code":
            for out in cell.get("outputs", []):
                text = None
                if out.get("output_type") == "stream":
                    text = out.get("text", "")
                elif out.get("output_type") == "execute_result":
                    text = out.get("data", {}).get("text/plain")
                    if text and ("Widget" in text or "BokehModel" in text or "VBox" in text):
                        text = None
                if text:
                    pre = f"<pre style='font-size: 13px'>{html.escape(text)}</pre>"
                    blocks.append(Div(text=pre, width=WIDTH))
    return blocks


def title_of(nb: nbformat.NotebookNode, fallback: str) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return fallback


def build_page(path: Path, out_dir: Path) -> tuple[str, Path]:
    """Execute one notebook and write its page; returns (title, page path)."""
    nb = execute(path)
    title = title_of(nb, path.stem)
    parts: list = notebook_blocks(nb)
    builder = _page_builder(path.stem)
    if builder is not None:
        parts.append(Div(text=f"<h2 style='{CSS}'>Interactive (no kernel needed)</h2>",
                         width=WIDTH))
        parts.append(builder())
    page = out_dir / f"{path.stem}.html"
    page.write_text(file_html(column(*parts), INLINE, title=title))
    return title, page


def build_site(out_dir: Path, only: list[str] | None = None) -> Path:
    """Write ``out_dir/index.html`` and one page per notebook."""
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for path in notebook_paths():
        if only and path.stem not in only:
            continue
        print(f"executing {path.name} ...", flush=True)
        title, page = build_page(path, out_dir)
        entries.append((title, page.name))
    items = "\n".join(f"<li><a href='{html.escape(href)}'>{html.escape(t)}</a></li>"
                      for t, href in entries)
    index = out_dir / "index.html"
    index.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>phyrlab</title></head>"
        f"<body style='{CSS}'><h1>phyrlab: physical range lists and the DMA API</h1>"
        "<p>Each page is one notebook, executed headless, with plots that work offline.</p>"
        f"<ol>{items}</ol></body></html>")
    return index
