"""Keep committed notebooks small and regression-checked.

nbval compares only cells saved with an execution count, so each notebook is committed with
outputs kept on exactly the cells that print figures (cells whose metadata has
``"keep_output": true``, nbstripout's convention) and stripped everywhere else. ``regen``
executes a notebook headless and writes it back that way; ``check`` is the test that nothing
else (no plot, no inline BokehJS) was committed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
#: a committed notebook larger than this carries outputs it should not.
MAX_BYTES = 200_000


def notebook_paths(root: Path = NOTEBOOKS) -> list[Path]:
    return sorted(root.glob("[0-9][0-9]-*.ipynb"))


def keeps(cell) -> bool:
    return bool(cell.get("metadata", {}).get("keep_output"))


def execute(path: Path, timeout: int = 600) -> nbformat.NotebookNode:
    """Run every cell headless in a fresh kernel (working directory: the notebook's folder)."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return nb


def strip(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Drop outputs and execution counts of every code cell not marked ``keep_output``."""
    count = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if keeps(cell):
            count += 1
            cell.execution_count = count
            for out in cell.outputs:
                if "execution_count" in out:
                    out["execution_count"] = count
        else:
            cell.outputs = []
            cell.execution_count = None
    nb.metadata.pop("widgets", None)
    return nb


def regen(path: Path) -> None:
    """Execute ``path`` and write it back with only the kept figure outputs."""
    nb = strip(execute(path))
    nbformat.write(nb, path)


def problems(path: Path) -> list[str]:
    """What is wrong with a committed notebook (empty when it is clean)."""
    out = []
    text = path.read_text()
    nb = nbformat.reads(text, as_version=4)
    if len(text.encode()) > MAX_BYTES:
        out.append(f"{path.name}: {len(text.encode())} bytes; more than {MAX_BYTES}")
    kept = 0
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if keeps(cell):
            kept += 1
            if not cell.outputs:
                out.append(f"{path.name}: cell {i} keeps output but has none (run make strip)")
            for o in cell.outputs:
                if o.get("output_type") == "error":
                    out.append(f"{path.name}: cell {i} was saved with an error")
                data = json.dumps(o.get("data", {}))
                if "Bokeh" in data or "application/javascript" in data:
                    out.append(f"{path.name}: cell {i} carries BokehJS / JavaScript output")
        elif cell.outputs or cell.execution_count is not None:
            out.append(f"{path.name}: cell {i} has outputs but is not marked keep_output")
    if kept == 0:
        out.append(f"{path.name}: no cell keeps its output, so nbval compares nothing")
    if not nb.cells or "setup()" not in "".join(c.source for c in nb.cells[:3]):
        out.append(f"{path.name}: the first code cell must call pl.notebook.setup()")
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m phyrlab.nbtools regen|check [notebook ...]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd = argv.pop(0) if argv else "check"
    paths = [Path(p) for p in argv] or notebook_paths()
    if cmd == "regen":
        for p in paths:
            print(f"executing {p.name} ...", flush=True)
            regen(p)
        return 0
    bad = [msg for p in paths for msg in problems(p)]
    for msg in bad:
        print(msg)
    print(f"{len(paths)} notebooks checked, {len(bad)} problems")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
