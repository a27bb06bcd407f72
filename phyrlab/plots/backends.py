"""Figures of notebook 04 (one workload through every DMA backend): one bar per backend row,
grouped and coloured by family, a refusal drawn as its errno.

Pure builders: columns from :func:`phyrlab.backends.columns` in, figures and
``ColumnDataSource`` out. Callers update ``source.data`` in place.
"""

from __future__ import annotations

from bokeh.models import ColumnDataSource, HoverTool, Legend, LegendItem, NumeralTickFormatter
from bokeh.plotting import figure

from ..backends import FAMILIES, METRICS, ROWS
from . import WIDTH, fit_x, palette, style

#: Height of one backend chart: 25 rows at about 22 px each plus title and axis.
CHART_HEIGHT = 640
#: Room on the right for the family legend.
LEGEND_WIDTH = 230

#: Short chart titles per metric of :data:`phyrlab.backends.METRICS`.
TITLES = {"dma_segments": "DMA segments out", "bounce_bytes": "Bytes bounced",
          "pte_writes": "PTE writes + clears", "iotlb_flushes": "IOTLB flushes",
          "hypercalls": "Hypercalls", "total_us": "Modelled µs"}

_FAMILY_COLORS = dict(zip(FAMILIES.values(), palette(list(FAMILIES)), strict=True))


def with_colors(cols: dict) -> dict:
    """Add ``color``: one colour per family (the same in every chart and on the site)."""
    out = dict(cols)
    out["color"] = [_FAMILY_COLORS[f] for f in cols["family"]]
    return out


def backend_bars(source: ColumnDataSource, *, x: str, label: str, title: str, x_label: str,
                 name: str, bytes_axis: bool = False) -> figure:
    """One horizontal bar per backend row (``dma_direct`` first), coloured by family."""
    fig = figure(y_range=list(reversed(ROWS)), width=WIDTH + LEGEND_WIDTH, height=CHART_HEIGHT,
                 title=title, tools="save", name=name, x_range=(0, 1))
    bars = fig.hbar(y="ops", right=x, height=0.72, source=source, color="color")
    fig.text(x=x, y="ops", text=label, source=source, x_offset=6, text_baseline="middle",
             text_font_size="11pt")
    fig.add_layout(Legend(items=[LegendItem(label={"field": "family"}, renderers=[bars])],
                          location="top_left", label_text_font_size="12pt"), "right")
    fig.add_tools(HoverTool(renderers=[bars], tooltips=[
        ("backend", "@ops"), ("family", "@family"), ("value", f"@{{{label}}}"),
        ("result", "@error")]))
    fig.xaxis.formatter = NumeralTickFormatter(format="0.[0] b" if bytes_axis else "0,0.[0]")
    fit_x(fig, source.data[x])
    style(fig, x_label, "")
    fig.yaxis.major_label_text_font_size = "11pt"
    return fig


def backend_charts(cols: dict, metric: str = "dma_segments"
                   ) -> tuple[list[figure], dict[str, ColumnDataSource]]:
    """Notebook 04's panel: the chosen metric per backend, and modelled time per backend."""
    src = ColumnDataSource(with_colors(cols))
    top = backend_bars(src, x="value", label="label", name="backend_metric",
                       title=f"{TITLES[metric]} per backend", x_label=METRICS[metric],
                       bytes_axis=metric == "bounce_bytes")
    time_fig = backend_bars(src, x="us", label="us_label", name="backend_time",
                            title="Modelled time of one map + unmap, per backend",
                            x_label="µs (phyrlab.cost x86-default; largest cost in brackets)")
    return [top, time_fig], {"backends": src}


def retitle(fig, metric: str, subtitle: str = "") -> None:
    """Title and axis of the metric chart after the metric changed."""
    fig.title.text = f"{TITLES[metric]} per backend" + (f": {subtitle}" if subtitle else "")
    fig.xaxis.axis_label = METRICS[metric]
    fig.xaxis.formatter = NumeralTickFormatter(
        format="0.[0] b" if metric == "bounce_bytes" else "0,0.[0]")
