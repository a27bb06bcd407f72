"""Figures of notebook 00 (the tour): small grouped bar charts, one per decision."""

from __future__ import annotations

from bokeh.layouts import gridplot
from bokeh.models import ColumnDataSource, FactorRange, NumeralTickFormatter
from bokeh.plotting import figure

from . import palette, style

SMALL_W = 520
SMALL_H = 330


def grouped_bars(data: dict, key: str, title: str, y_label: str, *, bytes_axis: bool = False,
                 log: bool = False, name: str = "grouped") -> figure:
    """One group of bars per ``data[key]`` category, one bar per other series of ``data``."""
    series = [k for k in data if k != key]
    factors = [(str(c), s) for c in data[key] for s in series]
    values = [data[s][i] for i in range(len(data[key])) for s in series]
    colors = palette(series) * len(data[key])
    if log:
        values = [max(v, 0.1) for v in values]
    source = ColumnDataSource({"x": factors, "value": values, "color": colors,
                               "series": [s for _c in data[key] for s in series]})
    fig = figure(x_range=FactorRange(*factors), width=SMALL_W, height=SMALL_H, title=title,
                 tools="save,hover", name=name, y_axis_type="log" if log else "linear",
                 tooltips=[("", "@x"), ("value", "@value{0,0.[00]}")])
    fig.vbar(x="x", top="value", width=0.85, source=source, color="color",
             legend_field="series", bottom=0.1 if log else 0)
    fig.xaxis.major_label_orientation = 0.9
    fig.xaxis.major_label_text_font_size = "0pt"  # the group labels say it; bars are coloured
    fig.xaxis.group_label_orientation = 0.5
    fig.yaxis.formatter = NumeralTickFormatter(format="0.[0] b" if bytes_axis else "0,0.[0]")
    style(fig, "", y_label)
    fig.title.text_font_size = "13pt"
    fig.legend.label_text_font_size = "10pt"
    fig.legend.location = "top_right"
    fig.xaxis.group_text_font_size = "10pt"
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
