"""Kernel-free interactive page for notebook 03 (IOMMU page tables), used by ``make report``.

Two views, each switching with ``CustomJS`` between results precomputed here: the mapping
cost per format (workload x size x selected format) and the strict vs lazy churn
(operation interval x mode).
"""

from __future__ import annotations

from bokeh.layouts import column, row
from bokeh.models import CustomJS, Div, Select

from ..iommu import experiments as ix
from ..plots import iommu as iplots
from ..units import SZ_1M, SZ_64M, human_bytes
from ..widgets.iommu import workload_names

SIZES = (SZ_1M, 16 * SZ_1M, SZ_64M, 256 * SZ_1M)


def _mapping_view(seed: int = 0):
    names = workload_names()
    keys, fmt_cols, leaf_cols = [], [], {}
    for w in names:
        for size in SIZES:
            keys.append(f"{w}|{size}")
            fmt_cols.append(ix.format_columns(w, size, seed=seed))
            for f in ix.NOTEBOOK_FORMATS:
                leaf_cols[f"{w}|{size}|{f}"] = ix.leaf_mix_columns(w, size, f, seed=seed)
    fmt0 = ix.NOTEBOOK_FORMATS[0]
    first = iplots.with_colors(fmt_cols[0], fmt0)
    figs, sources = iplots.mapping_charts(first, leaf_cols[f"{keys[0]}|{fmt0}"])
    tables, ptes, leaf = figs
    wsel = Select(title="workload", value=names[0], options=names, width=240)
    ssel = Select(title="size", value=str(SIZES[0]),
                  options=[(str(s), human_bytes(s)) for s in SIZES], width=140)
    fsel = Select(title="format", value=fmt0, options=list(ix.NOTEBOOK_FORMATS), width=180)
    lkeys = list(leaf_cols)
    cb = CustomJS(args={
        "fsrc": sources["formats"], "lsrc": sources["leaves"], "keys": keys, "lkeys": lkeys,
        "w": wsel, "s": ssel, "f": fsel, "formats": list(ix.NOTEBOOK_FORMATS),
        "lx": leaf.x_range, "tx": tables.x_range, "px": ptes.x_range,
        "table_bytes": [c["table_bytes"] for c in fmt_cols],
        "table_label": [c["table_label"] for c in fmt_cols],
        "pte": [c["pte_per_mib"] for c in fmt_cols],
        "pte_label": [c["pte_label"] for c in fmt_cols],
        "leaf": [leaf_cols[k]["leaf"] for k in lkeys],
        "share": [leaf_cols[k]["share"] for k in lkeys],
        "count_label": [leaf_cols[k]["count_label"] for k in lkeys],
        "count": [leaf_cols[k]["count"] for k in lkeys],
    }, code="""
        const i = keys.indexOf(w.value + '|' + s.value);
        const j = lkeys.indexOf(w.value + '|' + s.value + '|' + f.value);
        const alpha = formats.map(x => x === f.value ? 1.0 : 0.35);
        fsrc.data = {...fsrc.data, table_bytes: table_bytes[i], table_label: table_label[i],
                     pte_per_mib: pte[i], pte_label: pte_label[i], alpha: alpha};
        lx.factors = leaf[j];
        tx.end = Math.max(...table_bytes[i]) * 1.35;
        px.end = Math.max(...pte[i]) * 1.35;
        lsrc.data = {leaf: leaf[j], share: share[j], count_label: count_label[j],
                     count: count[j]};
    """)
    for sel in (wsel, ssel, fsel):
        sel.js_on_change("value", cb)
    return column(row(wsel, ssel, fsel), *figs)


def _churn_view(seed: int = 0):
    keys, frags, flushes, stale = [], [], [], []
    for ns in ix.CHURN_INTERVALS_NS:
        s = ix.churn(True, 128, ns, seed=seed)
        lz = ix.churn(False, 128, ns, seed=seed)
        flushes.append({"time_us": s["time_us"].tolist(), "strict": s["flushes"].tolist(),
                        "lazy": lz["flushes"].tolist()})
        stale.append(int(lz["stale_max_ns"][-1]) / 1000)
        for mode, r in (("strict", s), ("lazy", lz)):
            keys.append(f"{ns}|{mode}")
            frags.append({"time_us": r["time_us"].tolist(), "holes": r["free_ranges"].tolist(),
                          "live": r["live"].tolist(), "cached": r["cached"].tolist()})
    figs, sources = iplots.churn_charts(frags[0], flushes[0])
    isel = Select(title="one operation every", value=str(ix.CHURN_INTERVALS_NS[0]),
                  options=[(str(ns), f"{ns / 1000:g} µs") for ns in ix.CHURN_INTERVALS_NS],
                  width=200)
    msel = Select(title="unmap", value="strict", options=["strict", "lazy"], width=140)
    note = Div(text="", width=800)
    cb = CustomJS(args={"frag": sources["frag"], "flush": sources["flush"], "keys": keys,
                        "frags": frags, "flushes": flushes, "stale": stale,
                        "intervals": [str(ns) for ns in ix.CHURN_INTERVALS_NS],
                        "i": isel, "m": msel, "note": note}, code="""
        const k = keys.indexOf(i.value + '|' + m.value);
        const n = intervals.indexOf(i.value);
        frag.data = {...frags[k]};
        flush.data = {...flushes[n]};
        const f = flushes[n];
        note.text = 'IOTLB invalidations: strict ' + f.strict[f.strict.length - 1] +
            ', lazy ' + f.lazy[f.lazy.length - 1] + '; lazy keeps a translation usable up to ' +
            stale[n].toLocaleString() + ' µs after its unmap.';
    """)
    isel.js_on_change("value", cb)
    msel.js_on_change("value", cb)
    f = flushes[0]
    note.text = (f"IOTLB invalidations: strict {f['strict'][-1]}, lazy {f['lazy'][-1]}; lazy "
                 f"keeps a translation usable up to {stale[0]:,.0f} µs after its unmap.")
    return column(row(isel, msel), note, *figs)


def site_page():
    """Mapping cost per format and the strict/lazy churn, switchable without a kernel."""
    return column(_mapping_view(), _churn_view())
