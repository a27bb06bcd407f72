"""Panel of notebook 06 (map_sg vs the two-step IOVA API), live."""

from __future__ import annotations

import ipywidgets as ipw

from .. import twostep as ts
from ..plots import fit_x
from ..plots import twostep as tplots
from ..units import human_bytes
from ..workloads import catalogue
from . import LivePanel, size_slider


def twostep_panel(workload: str = "rdma-mr-1g-4k", size: int = 1 << 22,
                  mean_run_pages: float = 2.0, cpu_layout: str = "phyr",
                  seed: int = 0) -> LivePanel:
    """Workload, size, contiguity and CPU layout -> modelled time and list bytes, 4 bars.

    Sizes go to 4 GiB (10^6 separate 4 KiB ranges at mean run 1): ``dma_map_iova`` makes
    its ``dma_iova_link`` calls as one page-table update. Each setting is computed once and
    cached.
    """
    names = [n for n, w in catalogue().items() if w.model not in ("pagemap", "hugepage")]
    controls = {
        "size": size_slider(size, 16, 32),
        "workload": ipw.Dropdown(options=names, value=workload, description="workload"),
        "mean_run_pages": ipw.SelectionSlider(options=[1.0, 2.0, 4.0, 16.0, 64.0],
                                              value=mean_run_pages, description="mean run",
                                              continuous_update=False),
        "cpu_layout": ipw.Dropdown(options=["phyr", "bio_vec", "phys_vec", "pfn_run"],
                                   value=cpu_layout, description="CPU list"),
    }

    def compute(size: int, workload: str, mean_run_pages: float, cpu_layout: str) -> dict:
        runs = ts.compare(workload, size, mean_run_pages, cpu_layout, seed)
        return {"twostep": ts.chart_columns(runs),
                "meta": {"workload": workload, "size": size,
                         "ranges": runs[1]["cpu_entries"]}}

    first = compute(size, workload, mean_run_pages, cpu_layout)
    figs, source = tplots.twostep_charts(first["twostep"], ts.TIME_PARTS)
    tfig, bfig = figs

    def after(data: dict) -> None:
        d = data["twostep"]
        fit_x(tfig, d["total_us"])
        fit_x(bfig, d["list_bytes"])
        m = data["meta"]
        tfig.title.text = (f"Modelled map + unmap: {m['workload']}, {human_bytes(m['size'])}, "
                           f"{m['ranges']:,} CPU ranges")

    panel = LivePanel(controls, figs, {"twostep": source}, compute, after)
    after(first)
    return panel
