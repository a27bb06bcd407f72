"""Kernel-free page of notebook 00: the three decision summaries, and the storage chart
switching between precomputed workloads and sizes."""

from __future__ import annotations

from bokeh.layouts import column, row
from bokeh.models import CustomJS, Select

from .. import tour
from ..plots import storage_chart
from ..plots.tour import summary_grid
from ..units import human_bytes

SIZES = [1 << 16, 1 << 18, 1 << 20, 1 << 22]


def site_page():
    keys, table = [], {}
    for w in tour.WORKLOADS:
        for s in SIZES:
            keys.append(f"{w}|{s}")
            table[keys[-1]] = tour.storage_columns(w, s)
    fig, source = storage_chart(dict(table[keys[0]]))
    wsel = Select(title="workload", value=tour.WORKLOADS[0], options=tour.WORKLOADS, width=240)
    ssel = Select(title="size", value=str(SIZES[0]),
                  options=[(str(s), human_bytes(s)) for s in SIZES], width=160)
    cb = CustomJS(args={"source": source, "keys": keys, "w": wsel, "s": ssel, "x": fig.x_range,
                        "bytes": [table[k]["bytes"] for k in keys],
                        "labels": [table[k]["label"] for k in keys]},
                  code="""
        const i = keys.indexOf(w.value + '|' + s.value);
        source.data = {...source.data, bytes: bytes[i], label: labels[i]};
        x.end = Math.max(...bytes[i]) * 1.35;
    """)
    wsel.js_on_change("value", cb)
    ssel.js_on_change("value", cb)
    grid = summary_grid(tour.split_series(), tour.iommu_series(), tour.p2p_series())
    return column(grid, row(wsel, ssel), fig)
