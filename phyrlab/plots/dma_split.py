"""Figures of notebook 02 (CPU/DMA split): stacked bars of bytes and of cache lines.

One bar per (backend, list): the combined scatterlist and the split CPU + DMA lists for
dma-direct, swiotlb and the IOMMU. Data comes from
:func:`phyrlab.cpu_dma_split.chart_columns`; callers update ``source.data`` in place.
"""

from __future__ import annotations

from bokeh.models import ColumnDataSource, NumeralTickFormatter
from bokeh.plotting import figure

from . import HEIGHT, WIDTH, fit_x, style

#: colours of the two stacked parts (CPU side / DMA side; mapping walk / driver walk).
PART_COLORS = ("#1f77b4", "#ff7f0e")


def _stacked(source: ColumnDataSource, parts: tuple[str, str], names: tuple[str, str], *,
             total: str, label: str, title: str, x_label: str, name: str,
             bytes_axis: bool) -> figure:
    bars = list(source.data["bar"])
    fig = figure(y_range=list(reversed(bars)), width=WIDTH, height=HEIGHT, title=title,
                 tools="save,hover", name=name, x_range=(0, 1),
                 tooltips=[("bar", "@bar"), ("list", "@list"), (names[0], f"@{parts[0]}{{0,0}}"),
                           (names[1], f"@{parts[1]}{{0,0}}"), ("DMA entries", "@dma_entries")])
    fig.hbar_stack(list(parts), y="bar", height=0.7, source=source, color=list(PART_COLORS),
                   legend_label=list(names))
    fig.text(x=total, y="bar", text=label, source=source, x_offset=6, text_baseline="middle",
             text_font_size="12pt")
    fig.xaxis.formatter = NumeralTickFormatter(format="0.[0] b" if bytes_axis else "0,0")
    fig.legend.location = "bottom_right"
    fit_x(fig, source.data[total])
    return style(fig, x_label, "")


def split_charts(data: dict) -> tuple[list[figure], ColumnDataSource]:
    """Bytes of storage (CPU part + DMA part) and cache lines (map walk + driver walk)."""
    source = ColumnDataSource(data)
    storage = _stacked(source, ("cpu_bytes", "dma_bytes"), ("CPU-side bytes", "DMA-side bytes"),
                       total="bytes", label="bytes_label", name="split_bytes",
                       title="Bytes to hold the CPU list and the DMA list",
                       x_label="bytes of storage (C structs, padding, chain entries)",
                       bytes_axis=True)
    lines = _stacked(source, ("map_lines", "driver_lines"), ("mapping walk", "driver walk"),
                     total="lines", label="lines_label", name="split_lines",
                     title="64-byte cache lines touched: mapping walk + driver's DMA walk",
                     x_label="distinct cache lines touched (64 bytes each)", bytes_axis=False)
    return [storage, lines], source


def sweep_chart(rows: list[dict], *, title: str, name: str = "split_sweep") -> figure:
    """Bytes of the combined and the split lists as the mean physical run grows (log-log)."""
    x = [r["mean_run"] for r in rows]
    fig = figure(width=WIDTH, height=HEIGHT, title=title, x_axis_type="log", y_axis_type="log",
                 tools="save,hover", name=name)
    for key, label, color in (("sg_bytes", "combined scatterlist", PART_COLORS[1]),
                              ("split_bytes", "split: phyr + dma_vec", PART_COLORS[0])):
        y = [r[key] for r in rows]
        fig.line(x, y, legend_label=label, color=color, line_width=3)
        fig.scatter(x, y, color=color, size=8)
    fig.xaxis.formatter = NumeralTickFormatter(format="0.[0]")
    fig.yaxis.formatter = NumeralTickFormatter(format="0.[0] b")
    fig.legend.location = "top_right"
    return style(fig, "mean physical run (4 KiB pages)", "bytes of storage")
