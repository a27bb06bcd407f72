"""Bokeh figure builders: model results in, figures and ColumnDataSources out.

Shared styling lives here; each notebook topic has its own module (``plots.storage``...).

Pure functions: no widgets, no model code. Every figure is sized for a 1024x768 projector
(fixed width, large fonts, axis labels with units) and is built once; callers update its
``ColumnDataSource`` in place.
"""

from __future__ import annotations

from collections.abc import Sequence

from bokeh.models import ColumnDataSource, NumeralTickFormatter
from bokeh.palettes import Category10_10
from bokeh.plotting import figure

WIDTH = 800
HEIGHT = 400
FONT = "14pt"
TITLE_FONT = "16pt"


def style(fig, x_label: str = "", y_label: str = ""):
    """Projector styling: large fonts, labelled axes, no toolbar clutter."""
    fig.title.text_font_size = TITLE_FONT
    for axis in (fig.xaxis, fig.yaxis):
        axis.axis_label_text_font_size = FONT
        axis.major_label_text_font_size = "12pt"
    if x_label:
        fig.xaxis.axis_label = x_label
    if y_label:
        fig.yaxis.axis_label = y_label
    fig.toolbar.logo = None
    if fig.legend:
        fig.legend.label_text_font_size = "12pt"
    return fig


def palette(names: Sequence[str]) -> list[str]:
    """A stable colour per name (same layout, same colour, in every notebook)."""
    return [Category10_10[i % 10] for i in range(len(names))]


def hbar_chart(source: ColumnDataSource, *, y: str, x: str, title: str, x_label: str,
               label: str | None = None, name: str = "chart") -> figure:
    """Horizontal bars, one per category of ``y`` (e.g. a layout), length ``x``."""
    cats = list(source.data[y])
    fig = figure(y_range=list(reversed(cats)), width=WIDTH, height=HEIGHT, title=title,
                 tools="save", name=name, x_range=(0, 1))
    if "color" not in source.data:
        source.data["color"] = palette(cats)
    fig.hbar(y=y, right=x, height=0.7, source=source, color="color")
    if label:
        fig.text(x=x, y=y, text=label, source=source, x_offset=6, text_baseline="middle",
                 text_font_size="12pt")
    fig.xaxis.formatter = NumeralTickFormatter(format="0.[0] b")
    fit_x(fig, source.data[x])
    return style(fig, x_label, "")


def fit_x(fig, values) -> None:
    """Keep room for the bar labels: x from 0 to 1.35x the largest value."""
    top = max([float(v) for v in values] or [1.0])
    fig.x_range.start = 0
    fig.x_range.end = top * 1.35 if top > 0 else 1.0


def sweep_chart(sweep: dict, *, x: str = "size", title: str, x_label: str, y_label: str,
                name: str = "sweep", bytes_x: bool = True) -> figure:
    """One line per series of ``sweep`` (all keys but ``x``), both axes log."""
    fig = figure(width=WIDTH, height=HEIGHT, title=title, x_axis_type="log", y_axis_type="log",
                 tools="save,hover", name=name)
    series = [k for k in sweep if k != x]
    for key, color in zip(series, palette(series), strict=True):
        fig.line(sweep[x], sweep[key], legend_label=key, color=color, line_width=3)
        fig.scatter(sweep[x], sweep[key], color=color, size=7)
    fig.xaxis.formatter = NumeralTickFormatter(format="0 b" if bytes_x else "0.[0]")
    fig.yaxis.formatter = NumeralTickFormatter(format="0.[0] b")
    fig.legend.location = "top_right" if not bytes_x else "top_left"
    fig.legend.click_policy = "hide"
    return style(fig, x_label, y_label)


from .storage import storage_chart  # noqa: E402

__all__ = ["WIDTH", "HEIGHT", "style", "palette", "hbar_chart", "fit_x", "sweep_chart",
           "storage_chart"]
