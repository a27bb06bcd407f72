"""Figures of notebook 03 (IOMMU page tables): format bars, leaf mix, churn, contiguity sweep.

Pure builders: data in (columns from :mod:`phyrlab.iommu.experiments`), figures and
``ColumnDataSource`` out. Callers update ``source.data`` in place.
"""

from __future__ import annotations

from bokeh.models import ColumnDataSource, NumeralTickFormatter
from bokeh.plotting import figure

from . import HEIGHT, WIDTH, fit_x, palette, style

#: Height of each stacked figure of the mapping panel: controls and three figures fit in ~800 px.
PANEL_HEIGHT = 240
#: The churn figures carry their legend above the plot, so they are taller.
CHURN_HEIGHT = 350


def with_colors(data: dict, selected: str | None = None, key: str = "format") -> dict:
    """Add ``color`` (one per category, stable) and ``alpha`` (the selected one opaque)."""
    cats = list(data[key])
    out = dict(data)
    out["color"] = palette(cats)
    out["alpha"] = [1.0 if selected is None or c == selected else 0.35 for c in cats]
    return out


def format_bars(source: ColumnDataSource, *, x: str, label: str, title: str, x_label: str,
                name: str, bytes_axis: bool) -> figure:
    """Horizontal bars, one per page-table format; the selected format is drawn opaque."""
    cats = list(source.data["format"])
    fig = figure(y_range=list(reversed(cats)), width=WIDTH, height=PANEL_HEIGHT, title=title,
                 tools="save", name=name, x_range=(0, 1))
    fig.hbar(y="format", right=x, height=0.7, source=source, color="color", fill_alpha="alpha",
             line_alpha="alpha")
    fig.text(x=x, y="format", text=label, source=source, x_offset=6, text_baseline="middle",
             text_font_size="12pt")
    fig.xaxis.formatter = NumeralTickFormatter(format="0.[0] b" if bytes_axis else "0,0.[0]")
    fit_x(fig, source.data[x])
    return style(fig, x_label, "")


def mapping_charts(formats: dict, leaves: dict) -> tuple[list[figure], dict[str, ColumnDataSource]]:
    """Notebook 03's mapping panel: table memory, PTE writes per MiB, leaf-size mix.

    ``formats`` holds :func:`~phyrlab.iommu.experiments.format_columns` plus colours;
    ``leaves`` :func:`~phyrlab.iommu.experiments.leaf_mix_columns`.
    """
    src = ColumnDataSource(formats)
    tables = format_bars(src, x="table_bytes", label="table_label", name="iommu_tables",
                         title="Page-table memory to map the buffer, by format",
                         x_label="bytes of page tables (every level, root included)",
                         bytes_axis=True)
    ptes = format_bars(src, x="pte_per_mib", label="pte_label", name="iommu_ptes",
                       title="PTE writes per MiB of the buffer (leaves + table links)",
                       x_label="page-table entries written per MiB of buffer",
                       bytes_axis=False)
    lsrc = ColumnDataSource(leaves)
    leaf = figure(x_range=list(leaves["leaf"]), width=WIDTH, height=PANEL_HEIGHT,
                  title="Leaf-size mix of the selected format", tools="save",
                  name="iommu_leaves", y_range=(0, 118))
    leaf.vbar(x="leaf", top="share", width=0.6, source=lsrc, color="#1f77b4")
    leaf.text(x="leaf", y="share", text="count_label", source=lsrc, y_offset=-4,
              text_align="center", text_font_size="12pt")
    style(leaf, "leaf (page) size", "% of IOVA bytes mapped")
    return [tables, ptes, leaf], {"formats": src, "leaves": lsrc}


def churn_charts(frag: dict, flush: dict) -> tuple[list[figure], dict[str, ColumnDataSource]]:
    """Notebook 03's churn panel: IOVA holes over time, and IOTLB invalidations, strict vs lazy.

    ``frag``: ``time_us``, ``holes``, ``live``, ``cached``; ``flush``: ``time_us``, ``strict``,
    ``lazy`` (cumulative invalidations).
    """
    fsrc = ColumnDataSource(frag)
    f1 = figure(width=WIDTH, height=CHURN_HEIGHT, tools="save,hover", name="iommu_frag",
                title="IOVA space below 4 GiB during the churn")
    for key, label, color in (("holes", "free holes", "#d62728"),
                              ("live", "live mappings", "#1f77b4"),
                              ("cached", "ranges parked in the range caches", "#2ca02c")):
        f1.line("time_us", key, source=fsrc, legend_label=label, color=color, line_width=3)
    _legend_above(f1)
    style(f1, "model time (µs)", "count")
    ssrc = ColumnDataSource(flush)
    f2 = figure(width=WIDTH, height=CHURN_HEIGHT, tools="save,hover", name="iommu_flush",
                title="IOTLB invalidations so far")
    f2.line("time_us", "strict", source=ssrc, legend_label="strict: range invalidations",
            color="#9467bd", line_width=3)
    f2.line("time_us", "lazy", source=ssrc, legend_label="lazy: whole-IOTLB flushes",
            color="#ff7f0e", line_width=3)
    _legend_above(f2)
    style(f2, "model time (µs)", "invalidations issued")
    return [f1, f2], {"frag": fsrc, "flush": ssrc}


def _legend_above(fig) -> None:
    """Legend in one row above the plot (the lines fill the plot area); plain time ticks."""
    legend = fig.legend[0]
    legend.orientation = "horizontal"
    legend.location = "top_left"
    fig.add_layout(legend, "above")
    fig.xaxis.formatter = NumeralTickFormatter(format="0,0")


def contiguity_chart(sweep: dict, *, title: str, y_label: str, name: str = "contiguity",
                     bytes_axis: bool = False) -> figure:
    """One line per format over the physical backings (categorical x), log y."""
    cats = list(sweep["backing"])
    fig = figure(x_range=cats, width=WIDTH, height=HEIGHT, title=title, y_axis_type="log",
                 tools="save,hover", name=name)
    series = [k for k in sweep if k != "backing"]
    dashes = ["solid", "dashed", "dotted", "solid", "solid"]
    for i, (key, color) in enumerate(zip(series, palette(series), strict=True)):
        fig.line(cats, sweep[key], legend_label=key, color=color, line_width=3,
                 line_dash=dashes[i % len(dashes)])
        fig.scatter(cats, sweep[key], color=color, size=8)
    fig.yaxis.formatter = NumeralTickFormatter(format="0.[0] b" if bytes_axis else "0,0.[000]")
    fig.legend.location = "bottom_left"
    fig.legend.click_policy = "hide"
    return style(fig, "physical backing (runs of mean N pages of the granule, or aligned blocks)",
                 y_label)
