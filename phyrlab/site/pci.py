"""Kernel-free interactive page for notebook 05 (P2P checks), used by ``make report``.

Every (topology, ACS setting, whitelist, client) is computed here in Python; the bokeh
``Select`` widgets only switch between those results with ``CustomJS``. The provider is each
topology's P2P-memory provider (the device whose BAR ``pci_p2pdma_map_type()`` is asked about).
"""

from __future__ import annotations

from bokeh.layouts import column, row
from bokeh.models import CustomJS, Select

from ..pci import experiments as ex
from ..plots import pci as pci_plots
from ..widgets.pci import topology_options

WHITELIST = {"on": True, "off": False}


def precompute() -> tuple[dict[str, dict], dict[str, dict], dict[str, list[list[str]]]]:
    """(graph data per ``topo|acs|wl|client``, heatmap per ``topo|acs|wl``, clients per topo)."""
    graphs: dict[str, dict] = {}
    heats: dict[str, dict] = {}
    clients: dict[str, list[list[str]]] = {}
    for name in topology_options():
        base = ex.load_named(name)
        prov = ex.default_pair(base)[0]
        clients[name] = [[b, ex.device_label(base, b)] for b in base.endpoints() if b != prov]
        for acs in ex.ACS_SETTINGS:
            for wl_name, wl in WHITELIST.items():
                topo, m = ex.named_variant(name, acs, wl)
                key = f"{name}|{acs}|{wl_name}"
                heats[key] = ex.heatmap_columns(topo, m)
                for c, _ in clients[name]:
                    cols = ex.graph_columns(topo, prov, c)
                    cols["nodes"] = pci_plots._label_columns(cols["nodes"])
                    cols["caption"] = pci_plots.path_html(ex.path_summary(topo, prov, c))
                    cols["checks"] = pci_plots.checks_html(cols["checks"])
                    graphs[f"{key}|{c}"] = cols
    return graphs, heats, clients


def site_page():
    """Topology, ACS redirect, whitelist and client selectors over precomputed results."""
    graphs, heats, clients = precompute()
    names = topology_options()
    first = names[0]
    c0 = clients[first][0][0]
    g0 = graphs[f"{first}|as booted|on|{c0}"]
    graph, gsrc = pci_plots.topology_graph(g0)
    heat, hsrc = pci_plots.map_type_heatmap(heats[f"{first}|as booted|on"])
    caption = pci_plots.path_div("")
    caption.text = g0["caption"]
    checks = pci_plots.checks_div({"check": [], "result": [], "detail": []})
    checks.text = g0["checks"]
    tsel = Select(title="topology", value=first, options=names, width=240)
    asel = Select(title="ACS redirect", value="as booted", options=list(ex.ACS_SETTINGS),
                  width=150)
    wsel = Select(title="host-bridge whitelist", value="on", options=list(WHITELIST),
                  width=170)
    csel = Select(title="client (provider: the P2P-memory device)", value=c0,
                  options=[(b, label) for b, label in clients[first]], width=380)
    # ranges per topology, computed as the notebook does (fit_graph)
    ranges = {}
    for name in names:
        cols = graphs[f"{name}|as booted|on|{clients[name][0][0]}"]["nodes"]
        pci_plots.fit_graph(graph, cols)
        ranges[name] = [graph.x_range.start, graph.x_range.end, graph.y_range.start,
                        graph.y_range.end]
    pci_plots.fit_graph(graph, g0["nodes"])
    gkeys = list(graphs)
    hkeys = list(heats)
    cb = CustomJS(args={
        "t": tsel, "a": asel, "w": wsel, "c": csel, "nodes": gsrc["nodes"],
        "edges": gsrc["edges"], "path": gsrc["path"], "heat": hsrc, "caption": caption,
        "checks": checks, "gx": graph.x_range, "gy": graph.y_range, "hx": heat.x_range,
        "hy": heat.y_range, "gkeys": gkeys, "hkeys": hkeys,
        "clients": [clients[n] for n in names], "names": names,
        "ranges": [ranges[n] for n in names],
        "gnodes": [graphs[k]["nodes"] for k in gkeys],
        "gedges": [graphs[k]["edges"] for k in gkeys],
        "gpath": [graphs[k]["path"] for k in gkeys],
        "gcaption": [graphs[k]["caption"] for k in gkeys],
        "gchecks": [graphs[k]["checks"] for k in gkeys],
        "hdata": [heats[k] for k in hkeys]}, code="""
        const ti = names.indexOf(t.value);
        const cl = clients[ti];
        if (!cl.some(x => x[0] === c.value)) {
            c.options = cl.map(x => [x[0], x[1]]);
            c.value = cl[0][0];
            return;  // setting c.value runs this callback again
        }
        const base = t.value + '|' + a.value + '|' + w.value;
        const g = gkeys.indexOf(base + '|' + c.value);
        const h = hkeys.indexOf(base);
        nodes.data = gnodes[g];
        edges.data = gedges[g];
        path.data = gpath[g];
        caption.text = gcaption[g];
        checks.text = gchecks[g];
        heat.data = hdata[h];
        const devs = [...new Set(hdata[h].client_label)];
        hx.factors = devs;
        hy.factors = [...devs].reverse();
        [gx.start, gx.end, gy.start, gy.end] = ranges[ti];
    """)
    for sel in (tsel, asel, wsel, csel):
        sel.js_on_change("value", cb)
    return column(row(tsel, asel, wsel, csel), graph, caption, checks, column(heat))
