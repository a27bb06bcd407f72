"""Kernel-free interactive page for notebook 01 (used by ``make report``)."""

from __future__ import annotations

from bokeh.layouts import column, row
from bokeh.models import CustomJS, Select

from .. import plots, storage
from ..workloads import build, catalogue

RUNS = [1, 2, 4, 16, 64]


def site_page():
    """A workload x contiguity selector switching between precomputed storage charts."""
    names = [n for n, w in catalogue().items() if w.model != "pagemap"]
    table: dict[str, dict] = {}
    for name in names:
        for run in RUNS:
            buf = build(name, mean_run_pages=run if catalogue()[name].model != "hugepage" else None)
            data = storage.storage_columns(storage.storage_rows(buf))
            data["color"] = plots.palette(data["layout"])
            table[f"{name}|{run}"] = data
    first = table[f"{names[0]}|{RUNS[0]}"]
    fig, source = plots.storage_chart(dict(first))
    wsel = Select(title="workload", value=names[0], options=names, width=260)
    rsel = Select(title="mean run (pages)", value=str(RUNS[0]), options=[str(r) for r in RUNS],
                  width=200)
    keys = list(table)
    cb = CustomJS(args={"source": source, "keys": keys, "w": wsel, "r": rsel, "x": fig.x_range,
                        "bytes": [table[k]["bytes"] for k in keys],
                        "labels": [table[k]["label"] for k in keys],
                        "entries": [table[k]["entries"] for k in keys]},
                  code="""
        const i = keys.indexOf(w.value + '|' + r.value);
        source.data = {...source.data, bytes: bytes[i], label: labels[i], entries: entries[i]};
        x.end = Math.max(...bytes[i]) * 1.35;
    """)
    wsel.js_on_change("value", cb)
    rsel.js_on_change("value", cb)
    return column(row(wsel, rsel), fig)
