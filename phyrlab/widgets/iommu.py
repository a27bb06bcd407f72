"""Panels of notebook 03 (IOMMU page tables)."""

from __future__ import annotations

import ipywidgets as ipw

from ..iommu import experiments as ix
from ..plots import fit_x
from ..plots import iommu as iplots
from ..units import SZ_64M, human_bytes
from ..workloads import catalogue
from . import LivePanel, size_slider


def workload_names() -> list[str]:
    """Every seeded workload (the live-machine one is left out: not reproducible)."""
    return [n for n, w in catalogue().items() if w.model != "pagemap"]


def mapping_panel(workload: str = "rdma-mr-1g-4k", size: int = SZ_64M, fmt: str = "x86_64",
                  seed: int = 0) -> LivePanel:
    """Workload, size and format -> table memory and PTE writes per format, leaf mix."""
    controls = {
        "workload": ipw.Dropdown(options=workload_names(), value=workload,
                                 description="workload"),
        "size": size_slider(size, 16, 32),
        "fmt": ipw.Dropdown(options=list(ix.NOTEBOOK_FORMATS), value=fmt,
                            description="format"),
    }

    def compute(workload: str, size: int, fmt: str) -> dict:
        cols = ix.format_columns(workload, size, seed=seed)
        return {"formats": iplots.with_colors(cols, fmt),
                "leaves": ix.leaf_mix_columns(workload, size, fmt, seed=seed),
                "meta": {"workload": workload, "size": size, "fmt": fmt}}

    first = compute(workload, size, fmt)
    figs, sources = iplots.mapping_charts(first["formats"], first["leaves"])
    tables, ptes, leaf = figs

    def after(data: dict) -> None:
        cols = data["formats"]
        fit_x(tables, cols["table_bytes"])
        fit_x(ptes, cols["pte_per_mib"])
        leaf.x_range.factors = list(data["leaves"]["leaf"])
        v = data["meta"]
        i = cols["format"].index(v["fmt"])
        leaf.title.text = (f"Leaves of {v['fmt']}: {cols['dma_segments'][i]:,} DMA segment(s), "
                           f"{human_bytes(cols['mapped_bytes'][i])} of IOVA")

    panel = LivePanel(controls, figs, sources, compute, after)
    after(first)
    return panel


def _flush_columns(max_live: int, interval_ns: int, seed: int) -> dict:
    s = ix.churn(True, max_live, interval_ns, seed=seed)
    lz = ix.churn(False, max_live, interval_ns, seed=seed)
    return {"time_us": s["time_us"].tolist(), "strict": s["flushes"].tolist(),
            "lazy": lz["flushes"].tolist()}


def churn_panel(strict: bool = True, max_live: int = 128, interval_ns: int = 1_000,
                seed: int = 0) -> LivePanel:
    """Strict vs lazy over a seeded map/unmap churn: IOVA holes and IOTLB invalidations.

    Each setting's churn (about 0.3 s of model work) is cached; the default setting is
    computed for both modes when the panel is built, so switching the mode is instant.
    """
    controls = {
        "strict": ipw.ToggleButtons(options=[("strict", True), ("lazy", False)], value=strict,
                                    description="unmap"),
        "max_live": ipw.SelectionSlider(options=[8, 32, 128, 512], value=max_live,
                                        description="in flight", continuous_update=False),
        "interval_ns": ipw.Dropdown(options=[(f"{ns / 1000:g} µs", ns)
                                             for ns in ix.CHURN_INTERVALS_NS],
                                    value=interval_ns, description="op every"),
    }

    def compute(strict: bool, max_live: int, interval_ns: int) -> dict:
        r = ix.churn(strict, max_live, interval_ns, seed=seed)
        frag = {"time_us": r["time_us"].tolist(), "holes": r["free_ranges"].tolist(),
                "live": r["live"].tolist(), "cached": r["cached"].tolist()}
        lazy = ix.churn(False, max_live, interval_ns, seed=seed)
        return {"frag": frag, "flush": _flush_columns(max_live, interval_ns, seed),
                "meta": {"mode": "strict" if strict else "lazy",
                         "stale_us": int(lazy["stale_max_ns"][-1]) / 1000}}

    first = compute(strict, max_live, interval_ns)
    figs, sources = iplots.churn_charts(first["frag"], first["flush"])
    frag_fig, flush_fig = figs

    def after(data: dict) -> None:
        f = data["flush"]
        mode = data["meta"]["mode"]
        frag_fig.title.text = f"IOVA space below 4 GiB during the churn ({mode} unmap)"
        flush_fig.title.text = (f"IOTLB invalidations: strict {f['strict'][-1]:,}, lazy "
                                f"{f['lazy'][-1]:,} (lazy: a translation stays usable up to "
                                f"{data['meta']['stale_us']:,.0f} µs after its unmap)")

    panel = LivePanel(controls, figs, sources, compute, after)
    after(first)
    return panel
