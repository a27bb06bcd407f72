"""ipywidgets panels that bind controls to a model and update bokeh plots in place.

The generic :class:`LivePanel` lives here; each notebook topic has its own module of panels
(``widgets.storage``...).

A panel owns its controls, its figures (shown through jupyter_bokeh's ``BokehModel``) and a
``compute(**values)`` function that returns new data for each ``ColumnDataSource``. Moving a
control calls :meth:`LivePanel.update`, which assigns ``source.data``: the plot changes in place,
the cell is not re-rendered. Sliders update on release (``continuous_update=False``), which is
the debounce for heavy models.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import ipywidgets as ipw
from bokeh.models import ColumnDataSource

from ..units import human_bytes


class LivePanel:
    """Controls + bokeh figures + a compute function; ``.widget`` is what a cell displays."""

    def __init__(self, controls: dict[str, ipw.Widget], figures: list,
                 sources: dict[str, ColumnDataSource],
                 compute: Callable[..., dict[str, dict]],
                 after: Callable[[dict], None] | None = None):
        self.controls = controls
        self.figures = figures
        self.sources = sources
        self.compute = compute
        self.after = after
        self.status = ipw.HTML()
        self.last_ms = 0.0
        self._held = False
        for w in controls.values():
            w.observe(self._on_change, names="value")
        self._widget: ipw.Widget | None = None

    def values(self) -> dict[str, Any]:
        return {k: w.value for k, w in self.controls.items()}

    def update(self, **overrides: Any) -> dict[str, dict]:
        """Recompute from the controls (or ``overrides``) and push data into the sources."""
        t0 = time.perf_counter()
        self.status.value = "<i>computing…</i>"
        data = self.compute(**{**self.values(), **overrides})
        for key, new in data.items():
            if key in self.sources:
                self.sources[key].data = new
        if self.after:
            self.after(data)
        self.last_ms = (time.perf_counter() - t0) * 1e3
        self.status.value = ""
        return data

    def _on_change(self, _change: dict) -> None:
        if not self._held:
            self.update()

    def set_values(self, **values: Any) -> None:
        """Set several controls, then recompute once."""
        self._held = True
        try:
            for k, v in values.items():
                self.controls[k].value = v
        finally:
            self._held = False
        self.update()

    @property
    def widget(self) -> ipw.Widget:
        """The panel as one ipywidgets box (built once: a bokeh model has one Document)."""
        if self._widget is None:
            from bokeh.layouts import column
            from jupyter_bokeh.widgets import BokehModel

            plot = self.figures[0] if len(self.figures) == 1 else column(*self.figures)
            box = ipw.HBox(list(self.controls.values()), layout=ipw.Layout(flex_flow="row wrap"))
            self._widget = ipw.VBox([box, self.status, BokehModel(plot)])
        return self._widget


def size_slider(value: int, lo: int = 12, hi: int = 34, description: str = "size") -> ipw.Widget:
    """A power-of-two size slider labelled in KiB/MiB/GiB."""
    options = [(plots_label(1 << e), 1 << e) for e in range(lo, hi + 1)]
    return ipw.SelectionSlider(options=options, value=value, description=description,
                               continuous_update=False, layout=ipw.Layout(width="420px"))


def plots_label(n: int) -> str:
    return human_bytes(n)


def show(obj) -> ipw.Widget:
    """A bokeh figure or layout as a widget (for static plots in a notebook cell)."""
    from jupyter_bokeh.widgets import BokehModel

    return BokehModel(obj)


from .storage import storage_panel  # noqa: E402

#: notebook stem -> (main panel factory, control values that give about 10^6 entries);
#: ``benchmarks/notebooks.py`` times one control change of each at default and large sizes.
PANELS: dict[str, tuple[str, dict[str, Any]]] = {
    # the tour's panel is 01's and 04's models at once; its slider stops at 4 MiB (1,024
    # pages): at 10^6 entries those two notebooks are timed on their own
    "00-tour": ("phyrlab.widgets.tour:tour_panel", {"size": 1 << 22,
                                                     "workload": "nvme-4k-random"}),
    "01-storage-size": ("phyrlab.widgets.storage:storage_panel",
                        {"size": 1 << 32, "mean_run_pages": 1.0}),
    "02-cpu-dma-split": ("phyrlab.widgets.dma_split:split_panel",
                         {"size": 1 << 32, "mean_run_pages": 1.0}),
    # 4 GiB, the slider's top: 10^6 pages of 4 KiB mapped in each of five formats
    "03-iommu-page-tables": ("phyrlab.widgets.iommu:mapping_panel", {"size": 1 << 32}),
    # 4 GiB at the panel's default 32-bit mask: swiotlb-backed rows fill their pool and unwind
    "04-mapping-backends": ("phyrlab.widgets.backends:backends_panel", {"size": 1 << 32}),
    "05-p2p-checks": ("phyrlab.widgets.pci:p2p_panel", {"topology": "dual-socket-haswell"}),
    # 4 GiB, the slider's top: 2^20 separate 4 KiB ranges linked
    "06-two-step-api": ("phyrlab.widgets.twostep:twostep_panel",
                        {"size": 1 << 32, "mean_run_pages": 1.0}),
    # a real buffer: 256 MiB (65,536 pages) is the slider's top
    "07-this-machine": ("phyrlab.widgets.pci:contiguity_panel", {"size": 1 << 28}),
}

__all__ = ["PANELS", "LivePanel", "size_slider", "plots_label", "show", "storage_panel"]
