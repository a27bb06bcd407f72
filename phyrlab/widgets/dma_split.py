"""Panel of notebook 02 (CPU/DMA split): bytes and cache lines per backend, live."""

from __future__ import annotations

import ipywidgets as ipw

from .. import cpu_dma_split as cs
from ..plots import dma_split as dplots
from ..plots import fit_x
from ..units import human_bytes
from ..workloads import catalogue
from . import LivePanel, size_slider


def split_panel(workload: str = "rdma-mr-1g-4k", size: int = 1 << 23, mean_run_pages: float = 2.0,
                cpu_layout: str = "phyr", seed: int = 0) -> LivePanel:
    """Workload, size, contiguity and CPU layout -> bytes and cache lines, combined vs split.

    Each setting is measured once (dma-direct, swiotlb and IOMMU mappings of the real
    objects) and cached; the default is measured when the panel is built.
    """
    names = [n for n, w in catalogue().items() if w.model not in ("pagemap", "hugepage")]
    controls = {
        "size": size_slider(size, 16, 32),
        "workload": ipw.Dropdown(options=names, value=workload, description="workload"),
        "mean_run_pages": ipw.SelectionSlider(options=[1.0, 2.0, 4.0, 16.0, 64.0, 512.0],
                                              value=mean_run_pages, description="mean run",
                                              continuous_update=False),
        "cpu_layout": ipw.Dropdown(options=list(cs.CPU_LAYOUTS), value=cpu_layout,
                                   description="CPU list"),
    }

    def compute(size: int, workload: str, mean_run_pages: float, cpu_layout: str) -> dict:
        rows = cs.split_rows(workload, size, mean_run_pages, cpu_layout, seed)
        return {"split": cs.chart_columns(rows),
                "meta": {"workload": workload, "size": size, "cpu": len(rows) and
                         rows[1]["cpu_entries"]}}

    first = compute(size, workload, mean_run_pages, cpu_layout)
    figs, source = dplots.split_charts(first["split"])
    storage, lines = figs

    def after(data: dict) -> None:
        d = data["split"]
        fit_x(storage, d["bytes"])
        fit_x(lines, d["lines"])
        m = data["meta"]
        storage.title.text = (f"Bytes to hold the lists: {m['workload']}, "
                              f"{human_bytes(m['size'])}, {m['cpu']:,} CPU-side entries")

    panel = LivePanel(controls, figs, {"split": source}, compute, after)
    after(first)
    return panel
