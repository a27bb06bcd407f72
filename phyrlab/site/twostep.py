"""Kernel-free interactive page for notebook 06 (two-step IOVA API), used by ``make report``."""

from __future__ import annotations

from bokeh.layouts import column, row
from bokeh.models import CustomJS, Select

from .. import twostep as ts
from ..plots import twostep as tplots

#: workload -> (sizes precomputed, CPU layout); sizes stay small (the model links per range).
CASES = {"nvme-128k-seq": ([1 << 17, 1 << 20], "bio_vec"),
         "rdma-mr-1g-4k": ([1 << 20, 1 << 22, 1 << 23], "phyr")}
RUNS = [1.0, 4.0, 64.0]


def site_page():
    """Workload/size and contiguity selectors switching between precomputed charts."""
    table: dict[str, dict] = {}
    for name, (sizes, layout) in CASES.items():
        for size in sizes:
            for run in RUNS:
                cols = ts.chart_columns(ts.compare(name, size, run, layout))
                table[f"{name} {size >> 10} KiB|{run}"] = cols
    keys = list(table)
    cases = list(dict.fromkeys(k.split("|")[0] for k in keys))
    names = [c for c in table[keys[0]] if c != "bar"]
    figs, source = tplots.twostep_charts(dict(table[keys[0]]), ts.TIME_PARTS)
    tfig, bfig = figs
    tfig.x_range.end = max(max(d["total_us"]) for d in table.values()) * 1.35
    bfig.x_range.end = max(max(d["list_bytes"]) for d in table.values()) * 1.35
    csel = Select(title="request", value=cases[0], options=cases, width=300)
    rsel = Select(title="mean run (pages)", value=str(RUNS[0]), options=[str(r) for r in RUNS],
                  width=200)
    cb = CustomJS(args={"source": source, "keys": keys, "c": csel, "r": rsel, "names": names,
                        "tx": tfig.x_range, "bx": bfig.x_range,
                        "cols": [[table[k][n] for n in names] for k in keys]}, code="""
        const i = keys.indexOf(c.value + '|' + r.value);
        const d = {...source.data};
        names.forEach((n, j) => { d[n] = cols[i][j]; });
        source.data = d;
        tx.end = Math.max(...d.total_us) * 1.35;
        bx.end = Math.max(...d.list_bytes) * 1.35;
    """)
    csel.js_on_change("value", cb)
    rsel.js_on_change("value", cb)
    return column(row(csel, rsel), tfig, bfig)
