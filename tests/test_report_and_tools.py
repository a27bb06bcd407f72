"""The notebook hygiene check, the storage figures, the site and the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

import phyrlab as pl
from phyrlab import nbtools

ROOT = Path(__file__).resolve().parent.parent


def test_committed_notebooks_are_clean():
    paths = nbtools.notebook_paths()
    assert paths, "no notebooks found"
    assert [m for p in paths for m in nbtools.problems(p)] == []


def test_check_catches_a_committed_plot(tmp_path):
    src = nbtools.notebook_paths()[0]
    nb = nbformat.read(src, as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code" and not nbtools.keeps(c))
    cell.execution_count = 3
    cell.outputs = [nbformat.v4.new_output("display_data",
                                           data={"application/javascript": "Bokeh.embed()"})]
    bad = tmp_path / src.name
    nbformat.write(nb, bad)
    msgs = nbtools.problems(bad)
    assert any("not marked keep_output" in m for m in msgs)


def test_storage_rows_come_from_the_layouts():
    buf = pl.workloads.build("nvme-4k-random")  # 1024 scattered pages
    rows = {r["layout"]: r for r in pl.storage.storage_rows(buf)}
    assert rows["bio_vec"]["bytes"] == 1024 * 16
    # 1024 entries need 8 chunks of 128 (127 data + 1 chain), then 8 entries: 1032 in all
    assert rows["scatterlist"]["bytes"] == 16 + 1032 * 32
    assert rows["page_list"]["bytes"] == 16 + 1024 * 8


def test_site_page_is_offline(tmp_path):
    from bokeh.embed import file_html
    from bokeh.resources import INLINE

    from phyrlab.site.storage import site_page

    html = file_html(site_page(), INLINE, title="t")
    assert "cdn.bokeh.org" not in html
    assert "CustomJS" in html or "customjs" in html.lower()


def test_cli_help_lists_the_commands():
    out = subprocess.run([sys.executable, "-m", "phyrlab.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for cmd in ("lab", "report", "inspect", "bench"):
        assert cmd in out


def test_notebooks_are_valid_json_with_slides():
    for p in nbtools.notebook_paths():
        nb = json.loads(p.read_text())
        assert any("slideshow" in c.get("metadata", {}) for c in nb["cells"]), p.name


@pytest.mark.parametrize("path", nbtools.notebook_paths(), ids=lambda p: p.stem)
def test_no_model_code_in_notebooks(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert "def " not in cell.source and "class " not in cell.source, path.name
            assert len(cell.source.splitlines()) <= 8, (path.name, cell.source)
