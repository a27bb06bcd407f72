"""Panel of notebook 00: one buffer, two decisions live (storage per layout, DMA segments per
backend); the slider picks its size, the dropdown its workload."""

from __future__ import annotations

import ipywidgets as ipw

from .. import tour
from ..plots import backends as bplots
from ..plots import fit_x, storage_chart
from . import LivePanel, size_slider


def tour_panel(workload: str = "nvme-128k-seq", size: int = 1 << 17) -> LivePanel:
    """Workload and size -> bytes per layout (01) and DMA segments per dma_map_ops (04)."""
    controls = {
        "size": size_slider(size, 14, 22),
        "workload": ipw.Dropdown(options=tour.WORKLOADS, value=workload,
                                 description="workload"),
    }

    def compute(workload: str, size: int) -> dict:
        return {"storage": dict(tour.storage_columns(workload, size)),
                "backends": bplots.with_colors(tour.backend_columns(workload, size))}

    first = compute(workload, size)
    store_fig, store_src = storage_chart(first["storage"])
    figs, srcs = bplots.backend_charts(first["backends"], "dma_segments")

    def after(data: dict) -> None:
        fit_x(store_fig, data["storage"]["bytes"])
        fit_x(figs[0], data["backends"]["value"])

    return LivePanel(controls, [store_fig, figs[0]],
                     {"storage": store_src, "backends": srcs["backends"]}, compute, after)
