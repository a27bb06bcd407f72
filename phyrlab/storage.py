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
