"""Figures of notebook 06 (two-step IOVA API): modelled time by counter, list bytes.

One bar per (device, method); data from :func:`phyrlab.twostep.chart_columns`. Callers
update ``source.data`` in place.
"""

from __future__ import annotations

from bokeh.models import ColumnDataSource, NumeralTickFormatter
from bokeh.plotting import figure

from . import HEIGHT, WIDTH, fit_x, palette, style
from .dma_split import PART_COLORS


def twostep_charts(data: dict, parts: tuple[str, ...]) -> tuple[list[figure], ColumnDataSource]:
    """Modelled µs of map + unmap stacked by counter; bytes of the lists the driver keeps."""
    source = ColumnDataSource(data)
    bars = list(data["bar"])
    t = figure(y_range=list(reversed(bars)), width=WIDTH, height=HEIGHT, x_range=(0, 1),
               title="Modelled time of map + unmap, by counter (data/cost-models)",
               tools="save,hover", name="twostep_time",
               tooltips=[("bar", "@bar"), ("total", "@time_label")])
    t.hbar_stack(list(parts), y="bar", height=0.7, source=source, color=palette(parts),
                 legend_label=list(parts))
    t.text(x="total_us", y="bar", text="time_label", source=source, x_offset=6,
           text_baseline="middle", text_font_size="12pt")
    t.xaxis.formatter = NumeralTickFormatter(format="0,0.[0]")
    t.legend.location = "bottom_right"
    fit_x(t, data["total_us"])
    style(t, "modelled µs (map + unmap)", "")
    b = figure(y_range=list(reversed(bars)), width=WIDTH, height=HEIGHT, x_range=(0, 1),
               title="Bytes the driver keeps: CPU list + DMA side", tools="save,hover",
               name="twostep_bytes", tooltips=[("list", "@list"), ("bytes", "@list_bytes")])
    b.hbar_stack(["cpu_bytes", "dma_bytes"], y="bar", height=0.7, source=source,
                 color=list(PART_COLORS), legend_label=["CPU list (or scatterlist)",
                                                        "DMA side kept apart"])
    b.text(x="list_bytes", y="bar", text="bytes_label", source=source, x_offset=6,
           text_baseline="middle", text_font_size="12pt")
    b.xaxis.formatter = NumeralTickFormatter(format="0.[0] b")
    b.legend.location = "bottom_right"
    fit_x(b, data["list_bytes"])
    style(b, "bytes of storage", "")
    return [t, b], source
