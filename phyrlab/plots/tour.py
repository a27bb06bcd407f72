"""Figures of notebook 00 (the tour): small grouped bar charts, one per decision."""

from __future__ import annotations

from bokeh.layouts import gridplot
from bokeh.models import ColumnDataSource, NumeralTickFormatter
from bokeh.plotting import figure
from bokeh.transform import dodge

from . import palette, style

SMALL_W = 490
SMALL_H = 360


def grouped_bars(data: dict, key: str, title: str, y_label: str, *, bytes_axis: bool = False,
                 log: bool = False, name: str = "grouped") -> figure:
    """One group of bars per ``data[key]`` category, one dodged bar per other series."""
    series = [k for k in data if k != key]
    cats = [str(c) for c in data[key]]
    width = 0.8 / len(series)
    fig = figure(x_range=cats, width=SMALL_W, height=SMALL_H, title=title, tools="save,hover",
                 name=name, y_axis_type="log" if log else "linear",
                 tooltips=[("", "@cat"), ("value", "@value{0,0.[00]}")])
    for k, (s, color) in enumerate(zip(series, palette(series), strict=True)):
        values = [max(float(v), 0.1) if log else v for v in data[s]]
        src = ColumnDataSource({"cat": cats, "value": values})
        offset = -0.4 + width * (k + 0.5)
        fig.vbar(x=dodge("cat", offset, range=fig.x_range), top="value", width=width * 0.95,
                 source=src, color=color, legend_label=s, bottom=0.1 if log else 0)
    fig.xaxis.major_label_orientation = 0.6
    fig.yaxis.formatter = NumeralTickFormatter(format="0.[0] b" if bytes_axis else "0,0.[0]")
    style(fig, "", y_label)
    fig.title.text_font_size = "13pt"
    fig.xaxis.major_label_text_font_size = "10pt"
    legend = fig.legend[0]
    legend.label_text_font_size = "10pt"
    legend.orientation = "horizontal"
    legend.location = "top_left"
    fig.add_layout(legend, "above")  # above the bars, never over them
    return fig


def summary_grid(split: dict, iommu: dict, p2p: dict):
    """The three static decision summaries side by side (two a row)."""
    figs = [
        grouped_bars(split, "backend", "02 · one list or two? (8 MiB MR)", "bytes of lists",
                     bytes_axis=True, name="tour_split"),
        grouped_bars(iommu, "format", "03 · PTE writes per MiB mapped", "PTE writes / MiB",
                     log=True, name="tour_iommu"),
        grouped_bars(p2p, "topology", "05 · P2P map type of device pairs", "pairs",
                     name="tour_p2p"),
    ]
    return gridplot([figs[:2], figs[2:]], toolbar_location=None)
