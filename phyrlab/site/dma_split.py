"""Kernel-free interactive page for notebook 02 (CPU/DMA split), used by ``make report``."""

from __future__ import annotations

from bokeh.layouts import column, row
from bokeh.models import CustomJS, Select

from .. import cpu_dma_split as cs
from ..plots import dma_split as dplots

#: (workload, size) pairs the page precomputes; sizes keep swiotlb inside its 64 MiB pool.
CASES = {"nvme-128k-seq": None, "nvme-4k-random": None, "rdma-mr-1g-4k": 1 << 23}
RUNS = [1.0, 2.0, 4.0, 16.0, 64.0]
KEYS = ("cpu_bytes", "dma_bytes", "bytes", "bytes_label", "map_lines", "driver_lines", "lines",
        "lines_label", "dma_entries", "list")


def site_page(cpu_layout: str = "phyr"):
    """Workload x contiguity selectors switching between precomputed bytes and lines charts."""
    table: dict[str, dict] = {}
    for name, size in CASES.items():
        for run in RUNS:
            table[f"{name}|{run}"] = cs.chart_columns(cs.split_rows(name, size, run, cpu_layout))
    keys = list(table)
    first = table[keys[0]]
    figs, source = dplots.split_charts(dict(first))
    storage, lines = figs
    storage.x_range.end = max(max(d["bytes"]) for d in table.values()) * 1.35
    lines.x_range.end = max(max(d["lines"]) for d in table.values()) * 1.35
    wsel = Select(title="workload", value=list(CASES)[0], options=list(CASES), width=260)
    rsel = Select(title="mean run (pages)", value=str(RUNS[0]), options=[str(r) for r in RUNS],
                  width=200)
    args = {"source": source, "keys": keys, "w": wsel, "r": rsel, "names": list(KEYS),
            "bx": storage.x_range, "lx": lines.x_range,
            "cols": [[table[k][c] for c in KEYS] for k in keys]}
    cb = CustomJS(args=args, code="""
        const i = keys.indexOf(w.value + '|' + r.value);
        const d = {...source.data};
        names.forEach((n, j) => { d[n] = cols[i][j]; });
        source.data = d;
        bx.end = Math.max(...d.bytes) * 1.35;
        lx.end = Math.max(...d.lines) * 1.35;
    """)
    wsel.js_on_change("value", cb)
    rsel.js_on_change("value", cb)
    return column(row(wsel, rsel), storage, lines)
