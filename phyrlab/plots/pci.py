"""Figures of notebooks 05 (P2P checks) and 07 (this machine's PCI tree).

Inputs are the column dicts of :mod:`phyrlab.pci.experiments` (``graph_columns``,
``heatmap_columns``); every figure is built once and updated by assigning ``source.data``
(plus :func:`fit_graph` / :func:`fit_heatmap` for the ranges when the topology changes).
"""

from __future__ import annotations

from html import escape

from bokeh.models import (
    ColumnDataSource,
    DataTable,
    Div,
    FactorRange,
    HoverTool,
    InlineStyleSheet,
    TableColumn,
)
from bokeh.plotting import figure

from . import HEIGHT, WIDTH, style

_TABLE_CSS = InlineStyleSheet(css=".slick-cell, .slick-header-column { font-size: 14px; }")
CHAR_PX = 8.2  # width of one 11pt label character, in pixels (for the label room)


def _label_columns(nodes: dict) -> dict:
    """Leaf labels right of the node, inner labels above it."""
    nodes = dict(nodes)
    nodes["lx_off"] = [10 if leaf else 0 for leaf in nodes["leaf"]]
    nodes["ly_off"] = [0 if leaf else -12 for leaf in nodes["leaf"]]
    nodes["align"] = ["left" if leaf else "center" for leaf in nodes["leaf"]]
    nodes["baseline"] = ["middle" if leaf else "bottom" for leaf in nodes["leaf"]]
    return nodes


def topology_graph(cols: dict, title: str = "PCI topology and the P2P path",
                   height: int | None = None) -> tuple[figure, dict[str, ColumnDataSource]]:
    """The PCI tree (root complex left, endpoints right) with a highlighted path.

    ``cols`` is :func:`phyrlab.pci.experiments.graph_columns` output; returns the figure and
    its sources ``nodes``, ``edges``, ``path``.
    """
    src = {"nodes": ColumnDataSource(_label_columns(cols["nodes"])),
           "edges": ColumnDataSource(cols["edges"]),
           "path": ColumnDataSource(cols["path"])}
    fig = figure(width=WIDTH, height=height or HEIGHT, title=title, tools="save",
                 name="topology", x_range=(-0.4, 4), y_range=(-4, 1))
    fig.segment("x0", "y0", "x1", "y1", source=src["edges"], color="#999999", line_width=2)
    fig.segment("x0", "y0", "x1", "y1", source=src["path"], color="color", line_width=7,
                alpha=0.75)
    nodes = fig.scatter("x", "y", source=src["nodes"], size="size", color="color",
                        line_color="#333333")
    fig.text("x", "y", text="label", source=src["nodes"], x_offset="lx_off",
             y_offset="ly_off", text_align="align", text_baseline="baseline",
             text_font_size="11pt")
    fig.add_tools(HoverTool(renderers=[nodes], tooltips=[("", "@id"), ("", "@name"),
                                                          ("kind", "@kind"), ("role", "@role")]))
    fig.axis.visible = False
    fig.grid.visible = False
    fit_graph(fig, cols["nodes"])
    return style(fig), src


def fit_graph(fig: figure, nodes: dict) -> None:
    """Ranges that hold the whole tree, the root's label and every leaf label.

    A leaf label of ``n`` characters needs about ``CHAR_PX * n`` pixels right of its node, so
    the x range is chosen to leave that room for the leaf that needs most.
    """
    xs, ys = nodes["x"] or [0], nodes["y"] or [0]
    frame = max(fig.width - 40, 200)
    left = 0.9  # tree levels left of the root, for its centred label
    need = [(x, CHAR_PX * len(t) + 14) for x, t, leaf in
            zip(xs, nodes.get("label", [""] * len(xs)), nodes.get("leaf", [True] * len(xs)),
                strict=True) if leaf] or [(max(xs), 0)]
    span = max(xs) - min(xs) + left
    room = 0.6
    for x, px in need:  # (x - start) / (end - start) * frame + px <= frame, for the end
        if px < frame:
            room = max(room, (x - min(xs) + left) * frame / (frame - px) - span)
    fig.x_range.start, fig.x_range.end = min(xs) - left, max(xs) + room
    fig.y_range.start, fig.y_range.end = min(ys) - 0.6, max(ys) + 0.9


def checks_html(cols: dict) -> str:
    """The kernel's checks for one pair as an HTML table (wraps long details; big font)."""
    rows = []
    for name, result, detail in zip(cols["check"], cols["result"], cols["detail"], strict=True):
        colour = "#2ca02c" if result == "passed" else "#d62728"
        rows.append(f"<tr><td style='padding:2px 10px 2px 0'><code>{escape(name)}</code></td>"
                    f"<td style='color:{colour};font-weight:bold;padding-right:10px'>{result}"
                    f"</td><td>{escape(detail)}</td></tr>")
    return ("<table style='font-size:14px;border-collapse:collapse'><tr><th align=left>check"
            "</th><th align=left>result</th><th align=left>detail</th></tr>"
            + "".join(rows) + "</table>")


def checks_div(cols: dict) -> Div:
    """A Div showing :func:`checks_html` (update with ``div.text = checks_html(...)``)."""
    return Div(text=checks_html(cols), width=WIDTH)


def checks_table(cols: dict) -> tuple[DataTable, ColumnDataSource]:
    """The kernel's checks for one pair: name, passed/FAILED, detail."""
    source = ColumnDataSource(cols)
    table = DataTable(source=source, width=WIDTH, height=230, index_position=None,
                      row_height=28, stylesheets=[_TABLE_CSS], name="checks",
                      columns=[TableColumn(field="check", title="check", width=260),
                               TableColumn(field="result", title="result", width=70),
                               TableColumn(field="detail", title="detail", width=470)])
    return table, source


def path_div(text: str) -> Div:
    """A one-line caption (route, map type, distance) under the graph."""
    return Div(text=path_html(text), width=WIDTH)


def path_html(text: str) -> str:
    return f"<div style='font-size: 15px; padding: 4px 0'><b>path:</b> {text}</div>"


def map_type_heatmap(cols: dict, title: str = "Map type for every provider/client pair"
                     ) -> tuple[figure, ColumnDataSource]:
    """Provider (rows) x client (columns), coloured by map type, distance in the cell."""
    source = ColumnDataSource(cols)
    fig = figure(width=WIDTH, height=HEIGHT + 60, title=title, tools="save",
                 name="heatmap", x_range=FactorRange(), y_range=FactorRange(),
                 x_axis_location="above")
    fig.rect("client_label", "provider_label", 0.95, 0.95, source=source, color="color",
             legend_field="map_type")
    fig.text("client_label", "provider_label", text="text", source=source,
             text_align="center", text_baseline="middle", text_font_size="14pt",
             color="white")
    fig.add_tools(HoverTool(tooltips=[("provider", "@provider @provider_name"),
                                      ("client", "@client @client_name"),
                                      ("map type", "@map_type"), ("distance", "@distance"),
                                      ("why", "@reason")]))
    fig.grid.visible = False
    fig.xaxis.major_label_orientation = 0.6
    fig.legend.location = "bottom_left"
    fig.add_layout(fig.legend[0], "right")
    fit_heatmap(fig, cols)
    return style(fig, "client (distance in the cell; – = not supported)", "provider"), source


def fit_heatmap(fig: figure, cols: dict) -> None:
    """Categorical ranges for the devices of ``cols`` (providers top to bottom)."""
    devs = list(dict.fromkeys(cols["client_label"]))
    fig.x_range.factors = devs
    fig.y_range.factors = list(reversed(devs))


def run_length_chart(cols: dict) -> tuple[figure, ColumnDataSource]:
    """Pages of a buffer by the length class of the physically contiguous run they are in."""
    source = ColumnDataSource(cols)
    fig = figure(width=WIDTH, height=HEIGHT - 60, title="Where the pages sit: pages per run "
                 "length", tools="save,hover", name="runs", x_range=FactorRange(),
                 y_range=(0, 1),
                 tooltips=[("run length", "@run pages"), ("pages", "@label")])
    fig.vbar(x="run", top="pages", width=0.8, source=source, color="color")
    fig.text("run", "pages", text="label", source=source, text_align="center",
             text_baseline="bottom", y_offset=-4, text_font_size="11pt")
    fig.xaxis.major_label_orientation = 0.5
    fit_runs(fig, cols)
    return style(fig, "length of the physically contiguous run (4 KiB pages)",
                 "pages in such runs"), source


def fit_runs(fig: figure, cols: dict) -> None:
    """Categories for the run-length classes present, y from 0 to 1.2x the tallest bar."""
    fig.x_range.factors = list(cols["run"])
    top = max(cols["pages"] or [1])
    fig.y_range.start, fig.y_range.end = 0, top * 1.2
