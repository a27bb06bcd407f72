"""Panel of notebook 04: one workload through every DMA backend, with device limits.

A new (workload, size, limits, placement) setting maps the buffer through all 25 rows
(``phyrlab.backends.run_all``, cached per setting); every backend maps a list at once, so a
4 GiB buffer of 4 KiB pages (10^6 entries) takes about 0.2-0.3 s (`benchmarks/notebooks.py`
prints the figure). Sliders update on release; a setting seen before, or a metric change,
is a cache hit (under 1 ms).
"""

from __future__ import annotations

import ipywidgets as ipw

from .. import backends as bx
from ..plots import backends as bplots
from ..plots import fit_x
from ..units import SZ_1M, U32_MAX, human_bytes
from . import LivePanel, size_slider
from .iommu import workload_names


def _seg_label(n: int) -> str:
    return "UINT_MAX" if n == U32_MAX else human_bytes(n)


def backends_panel(workload: str = "nvme-4k-random", size: int = SZ_1M, dma_bits: int = 32,
                   max_seg_size: int = bx.MAX_SEG_SIZES[0], placement: str = "high",
                   metric: str = "dma_segments", seed: int = 0) -> LivePanel:
    """Workload, size, DMA mask, max_seg_size, placement and metric -> bars per backend."""
    controls = {
        "workload": ipw.Dropdown(options=workload_names(), value=workload,
                                 description="workload"),
        "size": size_slider(size, 16, 32),
        "dma_bits": ipw.ToggleButtons(options=[("32-bit", 32), ("40-bit", 40), ("64-bit", 64)],
                                      value=dma_bits, description="dma_mask",
                                      style={"button_width": "70px"}),
        "max_seg_size": ipw.Dropdown(options=[(_seg_label(n), n) for n in bx.MAX_SEG_SIZES],
                                     value=max_seg_size, description="max_seg"),
        "placement": ipw.Dropdown(options=[("RAM above 4 GiB", "high"),
                                           ("low RAM, from 16 MiB", "low")],
                                  value=placement, description="memory"),
        "metric": ipw.Dropdown(options=[(v, k) for k, v in bx.METRICS.items()], value=metric,
                               description="metric", layout=ipw.Layout(width="420px")),
    }

    def compute(workload: str, size: int, dma_bits: int, max_seg_size: int, placement: str,
                metric: str) -> dict:
        res = bx.run_all(workload, size, bx.Limits(dma_bits, max_seg_size), placement, seed)
        return {"backends": bplots.with_colors(bx.columns(res, metric)),
                "meta": {"workload": workload, "size": size, "metric": metric,
                         "refused": sum(not r.ok for r in res), "dma_bits": dma_bits}}

    first = compute(workload, size, dma_bits, max_seg_size, placement, metric)
    figs, sources = bplots.backend_charts(first["backends"], metric)
    top, time_fig = figs

    def after(data: dict) -> None:
        cols, v = data["backends"], data["meta"]
        fit_x(top, cols["value"])
        fit_x(time_fig, cols["us"])
        bplots.retitle(top, v["metric"], f"{v['workload']}, {human_bytes(v['size'])}, "
                       f"{v['dma_bits']}-bit, {v['refused']} refused")

    panel = LivePanel(controls, figs, sources, compute, after)
    after(first)
    return panel
