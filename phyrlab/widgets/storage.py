"""Panels of notebook 01 (storage size)."""

from __future__ import annotations

import ipywidgets as ipw

from .. import plots, storage
from ..units import SZ_1G, SZ_2M, SZ_4K
from ..workloads import build, catalogue
from . import LivePanel, size_slider


def storage_panel(workload: str = "rdma-mr-1g-4k", size: int = 1 << 26,
                  mean_run_pages: float = 2.0, page_size: int = SZ_4K,
                  seed: int = 0) -> LivePanel:
    """Notebook 01: workload, size, backing page size and contiguity -> bytes per layout."""
    names = [n for n, w in catalogue().items() if w.model != "pagemap"]
    controls = {
        "workload": ipw.Dropdown(options=names, value=workload, description="workload"),
        "size": size_slider(size, 12, 34),
        "page_size": ipw.Dropdown(options=[("4 KiB", SZ_4K), ("2 MiB", SZ_2M), ("1 GiB", SZ_1G)],
                                  value=page_size, description="page size"),
        "mean_run_pages": ipw.FloatLogSlider(value=mean_run_pages, base=2, min=0, max=10,
                                             step=0.5, description="mean run",
                                             continuous_update=False),
    }

    def compute(workload: str, size: int, page_size: int, mean_run_pages: float) -> dict:
        buf = build(workload, size=size, seed=seed, mean_run_pages=mean_run_pages,
                    page_size=page_size)
        data = storage.storage_columns(storage.storage_rows(buf))
        data["color"] = plots.palette(data["layout"])
        return {"storage": data}

    first = compute(workload, size, page_size, mean_run_pages)["storage"]
    fig, source = plots.storage_chart(first)

    def after(data: dict) -> None:
        plots.fit_x(fig, data["storage"]["bytes"])

    panel = LivePanel(controls, [fig], {"storage": source}, compute, after)

    def workload_defaults(change: dict) -> None:
        w = catalogue()[change["new"]]
        panel.set_values(size=min(max(w.size, 1 << 12), 1 << 34) if w.size & (w.size - 1) == 0
                         else controls["size"].value,
                         page_size=w.page_size if w.page_size in (SZ_4K, SZ_2M, SZ_1G) else SZ_4K,
                         mean_run_pages=max(1.0, w.mean_run_pages))

    controls["workload"].observe(workload_defaults, names="value")
    return panel
