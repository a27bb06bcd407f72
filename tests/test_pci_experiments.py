"""experiments.py: decision matrix, path report, tree layout, topology variants."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import phyrlab.pci as pci
from phyrlab.pci import MapType
from phyrlab.pci.experiments import (
    decision_matrix,
    p2p_path,
    toggle_acs_redirect,
    tree_layout,
    with_changes,
    without_whitelist,
)

TOPO = Path(__file__).resolve().parents[1] / "data" / "topologies"


def topo(name):
    return pci.load(TOPO / f"{name}.yaml")


def test_decision_matrix_dual_socket():
    m = decision_matrix(topo("dual-socket-haswell"))
    assert m.devices == ("0000:02:00.0", "0000:03:00.0", "0000:82:00.0", "0000:83:00.0")
    n, b, t = MapType.NOT_SUPPORTED, MapType.BUS_ADDR, MapType.THRU_HOST_BRIDGE
    assert m.map_type.tolist() == [[b, t, n, n], [t, b, n, n], [n, n, b, t], [n, n, t, b]]
    assert m.distance.tolist() == [[0, 4, -1, -1], [4, 0, -1, -1], [-1, -1, 0, 4],
                                   [-1, -1, 4, 0]]
    assert (m.hops == m.hops.T).all() and m.hops[0, 2] == 4
    cols = m.columns()
    assert len(cols["provider"]) == 16 and cols["map_type"][1] == "THRU_HOST_BRIDGE"
    assert "do not share an upstream bridge" in m.reason[0][2]


def test_path_bus_addr_and_redirected():
    p = p2p_path(topo("switch-nvme-gpu-nic"), "0000:1a:00.0", "0000:1b:00.0")
    assert p.nodes == ("0000:1a:00.0", "0000:19:00.0", "0000:18:00.0", "0000:19:08.0",
                       "0000:1b:00.0")
    assert not p.via_root_complex and p.map_type is MapType.BUS_ADDR
    r = p2p_path(topo("switch-acs-redirect"), "0000:1a:00.0", "0000:1b:00.0")
    assert r.via_root_complex and r.nodes[4] == "root complex"
    assert r.nodes[:4] == ("0000:1a:00.0", "0000:19:00.0", "0000:18:00.0", "0000:17:00.0")
    failed = [c.name for c in r.checks if not c.passed]
    assert failed == ["pci_bridge_has_acs_redir(0000:19:00.0)",
                      "pci_bridge_has_acs_redir(0000:19:08.0)", "cpu_supports_p2pdma()"]
    x = p2p_path(topo("unlisted-host-bridge"), "0000:01:00.0", "0000:04:00.0")
    assert [(c.name, c.passed) for c in x.checks] == [
        ("common upstream bridge", False), ("pci_bridge_has_acs_redir(0000:03:00.0)", False),
        ("cpu_supports_p2pdma()", False), ("host_bridge_whitelist()", False),
        ("decision", False)]


def test_tree_layout_is_tidy():
    t = topo("switch-nvme-gpu-nic")
    lay = tree_layout(t)
    assert len(lay.nodes["id"]) == len(t.devices) + len(t.host_bridges) + 1
    assert len(lay.edges["child"]) == len(lay.nodes["id"]) - 1  # a tree
    pos = dict(zip(lay.nodes["id"], zip(lay.nodes["x"], lay.nodes["y"], strict=True),
                   strict=True))
    # a parent sits midway between its first and last child, one level up
    kids = [pos[c] for c in ("0000:19:00.0", "0000:19:08.0", "0000:19:10.0", "0000:19:18.0")]
    assert pos["0000:18:00.0"] == ((kids[0][0] + kids[-1][0]) / 2, kids[0][1] + 1)
    leaves = sorted(x for i, x in zip(lay.nodes["id"], lay.nodes["x"], strict=True)
                    if i in t.devices and not t.children(i))
    assert len(set(leaves)) == len(leaves)  # no two leaves overlap


def test_variants_are_copies():
    t = topo("switch-nvme-gpu-nic")
    a = toggle_acs_redirect(t, ["0000:19:00.0"])
    assert pci.p2pdma_distance(a, "0000:1a:00.0", "0000:1b:00.0").map_type is \
        MapType.THRU_HOST_BRIDGE
    assert pci.p2pdma_distance(t, "0000:1a:00.0", "0000:1b:00.0").map_type is MapType.BUS_ADDR
    assert a.devices["0000:19:00.0"].acs.ctrl == pci.PCI_ACS_RR | pci.PCI_ACS_CR
    off = toggle_acs_redirect(topo("switch-acs-redirect"), ["0000:19:00.0", "0000:19:08.0"],
                              on=False)
    assert pci.p2pdma_distance(off, "0000:1a:00.0", "0000:1b:00.0").map_type is \
        MapType.BUS_ADDR
    w = without_whitelist(t)
    assert not w.whitelist_enabled and t.whitelist_enabled
    assert pci.p2pdma_distance(w, "0000:01:00.0", "0000:1a:00.0").map_type is \
        MapType.NOT_SUPPORTED
    with pytest.raises(ValueError, match="0000:1b:00.0 \\(endpoint\\) has no ACS"):
        with_changes(t, acs_redirect={"0000:1b:00.0": True})
    assert np.array_equal(decision_matrix(with_changes(t)).map_type,
                          decision_matrix(t).map_type)
