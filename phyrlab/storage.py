"""How many bytes each layout takes to describe the same memory (notebook 01).

The figures are measured on the layout objects themselves (``len(x)`` and ``x.nbytes``, which
count the C structs with their padding, chain entries and headers), never computed from
formulas beside them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .layouts import LAYOUTS
from .units import SZ_1M
from .workloads import Buffer, build


def storage_rows(buffer: Buffer, layouts: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per layout: entries, entry size, bytes of storage, bytes per MiB described."""
    rows = []
    base = None
    for name in layouts or list(LAYOUTS):
        x = buffer.layout(name)
        if base is None:
            base = x.nbytes
        rows.append({
            "layout": name,
            "entry_size": x.entry_size,
            "entries": len(x),
            "bytes": x.nbytes,
            "bytes_per_MiB": round(x.nbytes / (x.total_length / SZ_1M), 2),
            "vs_" + (layouts or list(LAYOUTS))[0]: round(x.nbytes / base, 3),
        })
    return rows


def storage_columns(rows: list[dict[str, Any]]) -> dict[str, list]:
    """Rows as the columns of a bokeh ColumnDataSource (layout, bytes, entries...)."""
    return {
        "layout": [r["layout"] for r in rows],
        "bytes": [r["bytes"] for r in rows],
        "entries": [r["entries"] for r in rows],
        "entry_size": [r["entry_size"] for r in rows],
        "bytes_per_MiB": [r["bytes_per_MiB"] for r in rows],
        "label": [_short(r["bytes"]) for r in rows],
    }


def size_sweep(workload: str, sizes: list[int], seed: int = 0,
               mean_run_pages: float | None = None) -> dict[str, Any]:
    """Bytes of storage per layout for each buffer size: ``{"size": [...], layout: [...]}``."""
    out: dict[str, Any] = {"size": list(sizes)}
    for name in LAYOUTS:
        out[name] = []
    for size in sizes:
        buf = build(workload, size=size, seed=seed, mean_run_pages=mean_run_pages)
        for r in storage_rows(buf):
            out[r["layout"]].append(r["bytes"])
    return out


def _short(n: float) -> str:
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{int(n)} B"


def mean_run_pages(buffer: Buffer) -> float:
    """Mean length, in pages, of the physically contiguous runs of a buffer."""
    a, n = buffer.ranges()
    return float(np.mean(n)) / 4096


def layout_rows() -> list[dict[str, Any]]:
    """The layouts and the C structs they mirror."""
    return [{"layout": name, "c_struct": cls.c_struct, "entry_size": cls.entry_size,
             "header_size": cls.header_size} for name, cls in LAYOUTS.items()]


def contiguity_sweep(workload: str, size: int, mean_runs: list[float], seed: int = 0
                     ) -> dict[str, Any]:
    """Bytes of storage per MiB described, per layout, as the mean physical run grows."""
    out: dict[str, Any] = {"mean_run": list(mean_runs)}
    for name in LAYOUTS:
        out[name] = []
    for run in mean_runs:
        buf = build(workload, size=size, seed=seed, mean_run_pages=run, page_size=4096)
        for r in storage_rows(buf):
            out[r["layout"]].append(r["bytes_per_MiB"])
    return out


def workload_rows(names: list[str], seed: int = 0) -> list[dict[str, Any]]:
    """Bytes of storage per layout for each named workload at its default size."""
    rows = []
    for name in names:
        buf = build(name, seed=seed)
        row: dict[str, Any] = {"workload": name, "size": _short(buf.size),
                               "runs": int(buf.ranges()[0].size)}
        for r in storage_rows(buf):
            row[r["layout"]] = r["bytes"]
        rows.append(row)
    return rows


def this_machine_rows(size: int = 64 << 20) -> list[dict[str, Any]] | str:
    """Storage per layout for a real buffer of this machine, or why it cannot be read."""
    from .memory import PagemapError

    try:
        buf = build("this-machine", size=size)
    except PagemapError as e:
        return str(e)
    return storage_rows(buf)
