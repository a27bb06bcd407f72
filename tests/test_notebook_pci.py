"""Notebook 05/07 support: topology variants, tables, graph columns, panels and the site page.

Expected answers are worked by hand from calc_map_type_and_dist() (drivers/pci/p2pdma.c, v6.2)
on the topology files, not read back from the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest

import phyrlab.pci as pci
from phyrlab.pci import MapType
from phyrlab.pci import experiments as ex

B, T, N = MapType.BUS_ADDR, MapType.THRU_HOST_BRIDGE, MapType.NOT_SUPPORTED
SWITCH = "switch-nvme-gpu-nic"
# endpoints of switch-nvme-gpu-nic in BDF order: I210 on bus 00 (via root port 00:1c.0),
# then NVMe, GPU and the two NIC ports below the PEX 9797 (upstream port 18:00.0)
EPS = ("0000:01:00.0", "0000:1a:00.0", "0000:1b:00.0", "0000:1c:00.0", "0000:1c:00.1")


def test_switch_as_booted_matrix_by_hand():
    _, m = ex.named_variant(SWITCH)
    assert m.devices == EPS
    # below the switch the chains meet at 18:00.0 (2 up + 2 up = 4), the NIC ports at their
    # downstream port 19:10.0 (1 + 1); the I210 shares no bridge: both chains in full
    # (01:00.0, 00:1c.0) + (1x, 19:xx, 18:00.0, 17:00.0) = 2 + 4 = 6, through two whitelisted
    # Skylake host bridges (00:00.0 8086:2020, root port 17:00.0 8086:2030; flags 0)
    assert m.map_type.tolist() == [[B, T, T, T, T], [T, B, B, B, B], [T, B, B, B, B],
                                   [T, B, B, B, B], [T, B, B, B, B]]
    assert m.hops.tolist() == [[0, 6, 6, 6, 6], [6, 0, 4, 4, 4], [6, 4, 0, 4, 4],
                               [6, 4, 4, 0, 2], [6, 4, 4, 2, 0]]
    assert ex.map_type_counts(m) == {"BUS_ADDR": 12, "THRU_HOST_BRIDGE": 8, "NOT_SUPPORTED": 0}


def test_acs_on_and_whitelist_off_by_hand():
    t, m = ex.named_variant(SWITCH, "on", True)
    # pci_std_enable_acs() sets RR and CR where the capability has them
    for bdf in ("0000:19:00.0", "0000:19:08.0", "0000:19:10.0", "0000:19:18.0"):
        assert t.devices[bdf].acs.ctrl == pci.PCI_ACS_RR | pci.PCI_ACS_CR
    off_diag = ~np.eye(5, dtype=bool)
    assert (m.map_type[off_diag] == T).all()  # redirect, then the whitelist lets it through
    assert m.hops.tolist() == ex.named_variant(SWITCH)[1].hops.tolist()  # distance unchanged
    _, m2 = ex.named_variant(SWITCH, "on", False)
    assert (m2.map_type[off_diag] == N).all() and (m2.distance[off_diag] == -1).all()
    # ACS redirect off on the redirecting twin gives the switch pairs BUS_ADDR back
    _, m3 = ex.named_variant("switch-acs-redirect", "off", True)
    assert ex.map_type_counts(m3)["BUS_ADDR"] == 12
    # the AMD CPU rule ignores the whitelist
    _, z = ex.named_variant("amd-zen-rome", "as booted", False)
    assert ex.map_type_counts(z) == {"BUS_ADDR": 0, "THRU_HOST_BRIDGE": 20, "NOT_SUPPORTED": 0}


def test_variant_leaves_the_original_and_rejects_bad_settings():
    base = ex.load_named(SWITCH)
    assert ex.variant(base) is base
    v = ex.variant(base, "on")
    assert v is not base and base.devices["0000:19:00.0"].acs.ctrl == 0
    with pytest.raises(ValueError, match="'sideways'"):
        ex.variant(base, "sideways")
    with pytest.raises(ValueError, match="'no-such-machine'"):
        ex.load_named("no-such-machine")
    assert ex.acs_redirect_capable(ex.load_named("dual-socket-haswell")) == []


def test_decision_rows_name_the_failed_checks():
    rows = ex.decision_rows(ex.variant(ex.load_named(SWITCH), "on"))
    by_client = {r["client"]: r for r in rows}
    assert set(by_client) == {"01:00.0", "1b:00.0", "1c:00.0", "1c:00.1"}
    gpu = by_client["1b:00.0"]
    assert (gpu["map_type"], gpu["distance"], gpu["meet"]) == ("THRU_HOST_BRIDGE", 4, "18:00.0")
    assert gpu["failed_checks"] == ("acs_redir(0000:19:00.0), acs_redir(0000:19:08.0), "
                                    "cpu_supports_p2pdma()")
    q = ex.decision_rows(ex.load_named("qemu-q35-vm"))
    assert all(r["map_type"] == "NOT_SUPPORTED" and r["distance"] == -1 for r in q)


def test_tree_path_and_graph_columns_cross_socket():
    t = ex.load_named("dual-socket-haswell")
    rep = ex.p2p_path(t, "0000:02:00.0", "0000:82:00.0")
    assert ex.tree_path(t, rep) == ("0000:02:00.0", "0000:00:02.0", "0000:00", "machine",
                                    "0000:80", "0000:80:02.0", "0000:82:00.0")
    cols = ex.graph_columns(t, "0000:02:00.0", "0000:82:00.0")
    assert len(cols["path"]["x0"]) == 6
    assert set(cols["path"]["color"]) == {ex.MAP_TYPE_COLOURS["NOT_SUPPORTED"]}
    roles = dict(zip(cols["nodes"]["id"], cols["nodes"]["role"], strict=True))
    assert roles["0000:02:00.0"] == "provider" and roles["0000:82:00.0"] == "client"
    assert roles["machine"] == "on path" and roles["0000:03:00.0"] == ""
    assert cols["checks"]["result"][-1] == "FAILED"
    # every edge of the drawing joins a node one level deeper
    e = cols["edges"]
    assert all(x1 == x0 + 1 for x0, x1 in zip(e["x0"], e["x1"], strict=True))


def test_classify_rows_per_variant():
    t = ex.load_named(SWITCH)
    rows = ex.classify_rows({"booted": t, "acs": ex.variant(t, "on")}, "0000:1b:00.0",
                            [0x1_0000_0000, 0x3FF_E000_0000], [4096, 4096])
    assert [(r["memory"], r["booted"], r["acs"]) for r in rows] == [
        ("host", "NONE", "NONE"), ("BAR of 1a:00.0", "BUS_ADDR", "THRU_HOST_BRIDGE")]


def test_summary_and_tree_text_of_a_file():
    t = ex.load_named("qemu-q35-vm")
    s = ex.summary(t)
    assert (s["functions"], s["host_bridges"], s["whitelisted_hb"], s["p2p_providers"]) == \
        (len(t.devices), 1, 0, 1)
    assert s["endpoints"] == 5 and s["cpu_p2p"] == "no"
    text = ex.tree_text(ex.load_named(SWITCH))
    assert "[0000:17] host bridge" in text
    assert "0000:1a:00.0 endpoint [1de5:3000]" in text and "p2pmem" in text
    assert len(text.splitlines()) == 1 + len(ex.load_named(SWITCH).devices) + 2


# ------------------------------------------------------------------------------ panels
def test_p2p_panel_follows_every_control():
    from phyrlab.widgets import pci as panels

    p = panels.p2p_panel()
    calls = []
    inner = p.compute
    p.compute = lambda **v: calls.append(v) or inner(**v)
    heat = p.sources["heatmap"]
    before = list(heat.data["map_type"])
    p.controls["acs"].value = "on"
    assert heat.data["map_type"] != before and p.sources["path"].data["color"][0] == \
        ex.MAP_TYPE_COLOURS["THRU_HOST_BRIDGE"]
    p.controls["whitelist"].value = False
    assert "NOT_SUPPORTED" in heat.data["map_type"]
    p.controls["topology"].value = "dual-socket-haswell"
    assert len(calls) == 3  # one recompute per move, also when the pair drop-downs change
    opts = [v for _, v in p.controls["provider"].options]
    assert opts == ex.load_named("dual-socket-haswell").endpoints()
    assert set(heat.data["provider"]) == set(opts)
    assert p.controls["provider"].value == "0000:82:00.0"  # the P2P-memory provider
    assert list(p.figures[0].children[-1].children[0].x_range.factors) == \
        [ex.short_bdf(b) for b in opts]


def test_panel_labels_fit_in_the_graph():
    from phyrlab.plots import pci as pci_plots
    from phyrlab.widgets import pci as panels

    p = panels.p2p_panel()
    graph = p.figures[0].children[0]
    n = p.sources["nodes"].data
    start, end = graph.x_range.start, graph.x_range.end
    frame = graph.width - 40
    for x, label, leaf in zip(n["x"], n["label"], n["leaf"], strict=True):
        if leaf:
            px = pci_plots.CHAR_PX * len(label) + 14
            assert (x - start) / (end - start) * frame + px <= frame + 1e-6, label


def test_contiguity_panel_and_hidden_pfns(monkeypatch):
    from phyrlab.widgets import pci as panels

    assert panels.run_histogram(np.array([10, 11, 12, 20, 30, 31], dtype=np.uint64)) == {
        "run": ["1", "2-3"], "pages": [1, 5], "label": ["1", "5"],
        "color": [panels.plots.palette(["1", "2-3"])[0]] * 2}
    monkeypatch.setattr(panels, "real_buffer", lambda size: "PFNs read as 0 (test)")
    panels.probe_buffer.cache_clear()
    try:
        c = panels.contiguity_panel(size=1 << 20)
        assert "PFNs read as 0 (test)" in c.figures[0].children[0].text
        assert "seeded geometric model" in c.figures[0].children[0].text
        b1 = list(c.sources["storage"].data["bytes"])
        c.controls["size"].value = 1 << 22
        assert c.sources["storage"].data["bytes"] != b1
        assert sum(c.sources["runs"].data["pages"]) == (1 << 22) // 4096
    finally:
        panels.probe_buffer.cache_clear()


def test_machine_figures_say_why_when_there_is_nothing():
    from bokeh.models import Div

    from phyrlab.widgets import pci as panels

    d = panels.machine_graph("no PCI topology from /nowhere: missing")
    assert isinstance(d, Div) and "/nowhere" in d.text
    assert isinstance(panels.machine_heatmap("x"), Div)
    assert not isinstance(panels.machine_graph(ex.load_named(SWITCH)), Div)


def test_site_page_is_offline_and_has_every_topology():
    from bokeh.embed import file_html
    from bokeh.resources import INLINE

    from phyrlab.site.pci import precompute, site_page

    html = file_html(site_page(), INLINE, title="t")
    assert "cdn.bokeh.org" not in html and "customjs" in html.lower()
    graphs, heats, clients = precompute()
    assert len(heats) == len(ex.topology_names()) * 3 * 2
    assert len(graphs) == sum(len(c) for c in clients.values()) * 3 * 2
    # the site shows the same answer as the notebook's matrix
    _, m = ex.named_variant("dual-socket-haswell", "as booted", False)
    assert heats["dual-socket-haswell|as booted|off"]["map_type"] == m.columns()["map_type"]
