"""Kernel-free interactive page for notebook 04 (one workload through every DMA backend).

Every (workload, size, DMA mask) of the grid below is mapped through the 25 rows in Python
(``phyrlab.backends.run_all``, 64 KiB ``max_seg_size``, RAM above 4 GiB); bokeh ``Select``
widgets switch between the precomputed columns with ``CustomJS``.
"""

from __future__ import annotations

from bokeh.layouts import column, row
from bokeh.models import CustomJS, Select

from .. import backends as bx
from ..plots import backends as bplots
from ..units import SZ_1M, SZ_256K, human_bytes
from ..widgets.iommu import workload_names

SIZES = (SZ_256K, 4 * SZ_1M)
DMA_BITS = (32, 64)


def site_page(seed: int = 0):
    """Metric and modelled time per backend, switchable by workload, size, mask and metric."""
    names = workload_names()
    metrics = list(bx.METRICS)
    keys, values, labels, us, us_labels, errors, titles = [], [], [], [], [], [], []
    for w in names:
        for size in SIZES:
            for bits in DMA_BITS:
                res = bx.run_all(w, size, bx.Limits(bits), "high", seed)
                per = [bx.columns(res, m) for m in metrics]
                keys.append(f"{w}|{size}|{bits}")
                values.append([c["value"] for c in per])
                labels.append([c["label"] for c in per])
                us.append(per[0]["us"])
                us_labels.append(per[0]["us_label"])
                errors.append(per[0]["error"])
                titles.append(f"{w}, {human_bytes(size)}, {bits}-bit, "
                              f"{sum(not r.ok for r in res)} refused")
    first = bx.columns(bx.run_all(names[0], SIZES[0], bx.Limits(DMA_BITS[0]), "high", seed),
                       metrics[0])
    figs, sources = bplots.backend_charts(first, metrics[0])
    top, time_fig = figs
    bplots.retitle(top, metrics[0], titles[0])
    wsel = Select(title="workload", value=names[0], options=names, width=220)
    ssel = Select(title="size", value=str(SIZES[0]),
                  options=[(str(s), human_bytes(s)) for s in SIZES], width=120)
    bsel = Select(title="dma_mask", value=str(DMA_BITS[0]),
                  options=[(str(b), f"{b}-bit") for b in DMA_BITS], width=120)
    msel = Select(title="metric", value=metrics[0],
                  options=[(k, v) for k, v in bx.METRICS.items()], width=380)
    cb = CustomJS(args={
        "src": sources["backends"], "keys": keys, "metrics": metrics, "values": values,
        "labels": labels, "us": us, "us_labels": us_labels, "errors": errors,
        "titles": titles, "axis_labels": list(bx.METRICS.values()),
        "short": [bplots.TITLES[k] for k in metrics], "w": wsel, "s": ssel,
        "b": bsel, "m": msel, "top": top, "tx": top.x_range, "ux": time_fig.x_range,
        "xaxis": top.xaxis[0], "fmt": top.xaxis[0].formatter,
    }, code="""
        const i = keys.indexOf(w.value + '|' + s.value + '|' + b.value);
        const j = metrics.indexOf(m.value);
        src.data = {...src.data, value: values[i][j], label: labels[i][j], us: us[i],
                    us_label: us_labels[i], error: errors[i]};
        const top_v = Math.max(...values[i][j]);
        tx.end = top_v > 0 ? top_v * 1.35 : 1;
        const top_u = Math.max(...us[i]);
        ux.end = top_u > 0 ? top_u * 1.35 : 1;
        top.title.text = short[j] + ' per backend: ' + titles[i];
        xaxis.axis_label = axis_labels[j];
        fmt.format = m.value === 'bounce_bytes' ? '0.[0] b' : '0,0.[0]';
    """)
    for sel in (wsel, ssel, bsel, msel):
        sel.js_on_change("value", cb)
    return column(row(wsel, ssel, bsel, msel), *figs)
