"""ipywidgets panels that bind controls to a model and update bokeh plots in place.

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

from . import plots, storage
from .units import SZ_1G, SZ_2M, SZ_4K
from .workloads import build, catalogue


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
    return storage._short(n).replace(".0 ", " ")


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


def show(obj) -> ipw.Widget:
    """A bokeh figure or layout as a widget (for static plots in a notebook cell)."""
    from jupyter_bokeh.widgets import BokehModel

    return BokehModel(obj)
