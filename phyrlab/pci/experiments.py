"""Pure functions behind the P2P notebook: decision matrix, one pair's path, tree drawing, and
topology variants (ACS redirect toggled, whitelist off). Nothing here draws or caches.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

import numpy as np

from phyrlab.pci.p2pdma import Check, MapType, P2PTrace, trace_map_type
from phyrlab.pci.topology import PCI_ACS_CR, PCI_ACS_REDIR, PCI_ACS_RR, Cpu, PciDev, Topology


@dataclass(frozen=True)
class DecisionMatrix:
    """``calc_map_type_and_dist()`` for every (provider, client) pair of ``devices``.

    Row ``i`` is the provider, column ``j`` the client. ``distance`` is what
    ``pci_p2pdma_distance_many()`` returns for that single client (-1 when NOT_SUPPORTED);
    ``hops`` is the raw ``*dist``.
    """

    devices: tuple[str, ...]
    map_type: np.ndarray  # int8 (n, n) MapType values
    distance: np.ndarray  # int64 (n, n)
    hops: np.ndarray  # int64 (n, n)
    reason: tuple[tuple[str, ...], ...]

    def columns(self) -> dict[str, list]:
        """Flat columns (one row per pair), ready for a bokeh ColumnDataSource."""
        n = len(self.devices)
        out: dict[str, list] = {k: [] for k in ("provider", "client", "i", "j", "map_type",
                                                "distance", "hops", "reason")}
        for i in range(n):
            for j in range(n):
                out["provider"].append(self.devices[i])
                out["client"].append(self.devices[j])
                out["i"].append(i)
                out["j"].append(j)
                out["map_type"].append(MapType(int(self.map_type[i, j])).name)
                out["distance"].append(int(self.distance[i, j]))
                out["hops"].append(int(self.hops[i, j]))
                out["reason"].append(self.reason[i][j])
        return out


def decision_matrix(topo: Topology, devices: Iterable[str | PciDev] | None = None
                    ) -> DecisionMatrix:
    """The decision for every ordered pair (default: all endpoints, in BDF order)."""
    devs = tuple(topo.dev(d).bdf for d in devices) if devices is not None \
        else tuple(topo.endpoints())
    n = len(devs)
    mt = np.zeros((n, n), dtype=np.int8)
    dist = np.zeros((n, n), dtype=np.int64)
    hops = np.zeros((n, n), dtype=np.int64)
    reasons = []
    for i, p in enumerate(devs):
        row = []
        for j, c in enumerate(devs):
            t = trace_map_type(topo, p, c)
            mt[i, j] = t.map_type
            hops[i, j] = t.distance
            dist[i, j] = -1 if t.map_type is MapType.NOT_SUPPORTED else t.distance
            row.append(t.reason)
        reasons.append(tuple(row))
    return DecisionMatrix(devs, mt, dist, hops, tuple(reasons))


@dataclass(frozen=True)
class PathReport:
    """The route a TLP takes between two devices and each check the kernel made on it."""

    nodes: tuple[str, ...]  # provider ... common ... client; "root complex" where it turns
    via_root_complex: bool
    checks: tuple[Check, ...]
    map_type: MapType
    distance: int
    reason: str
    trace: P2PTrace


def p2p_path(topo: Topology, provider: str | PciDev, client: str | PciDev) -> PathReport:
    """Path and checks for one pair (``calc_map_type_and_dist()`` step by step)."""
    t = trace_map_type(topo, provider, client)
    if t.common is not None:
        nodes = t.provider_path + tuple(reversed(t.client_path))
        via = t.map_type is MapType.THRU_HOST_BRIDGE
        if via:  # ACS redirect: up to the root complex and back down
            up = topo.upstream_chain(t.common)
            nodes = t.provider_path[:-1] + up + ("root complex",) + tuple(reversed(up)) \
                + tuple(reversed(t.client_path))
    else:
        via = True
        nodes = t.provider_path + ("root complex",) + tuple(reversed(t.client_path))
    return PathReport(nodes, via, t.checks, t.map_type, t.distance, t.reason, t)


@dataclass(frozen=True)
class TreeLayout:
    """Node and edge coordinates of a tidy tree: machine -> host bridges -> functions."""

    nodes: dict[str, list]  # id, label, kind, depth, x, y
    edges: dict[str, list]  # parent, child, x0, y0, x1, y1


def tree_layout(topo: Topology) -> TreeLayout:
    """A simple tidy tree: leaves on consecutive x in DFS order, parents centred above."""
    kids: dict[str, list[str]] = {"machine": sorted(topo.host_bridges)}
    for hb in topo.host_bridges:
        kids[hb] = [d.bdf for d in topo.root_bus_devices(hb)]
    for bdf, d in sorted(topo.devices.items()):
        up = topo.upstream_bridge(d)
        if up is not None:
            kids.setdefault(up.bdf, []).append(bdf)
        elif d.physfn is not None:  # a VF on a root bus sits next to its PF
            kids[topo.host_bridge_of(d).name].append(bdf)
    pos: dict[str, tuple[float, int]] = {}
    next_x = [0.0]

    def place(node: str, depth: int) -> float:
        ch = kids.get(node, [])
        if not ch:
            x = next_x[0]
            next_x[0] += 1.0
        else:
            xs = [place(c, depth + 1) for c in ch]
            x = (xs[0] + xs[-1]) / 2
        pos[node] = (x, depth)
        return x

    place("machine", 0)
    nodes: dict[str, list] = {k: [] for k in ("id", "label", "kind", "depth", "x", "y")}
    for node, (x, depth) in pos.items():
        if node == "machine":
            label, kind = topo.name, "machine"
        elif node in topo.host_bridges:
            label, kind = f"host bridge {node}", "host_bridge_bus"
        else:
            d = topo.devices[node]
            label, kind = f"{node} {d.name}".strip(), d.kind.value
        for k, v in (("id", node), ("label", label), ("kind", kind), ("depth", depth),
                     ("x", x), ("y", -depth)):
            nodes[k].append(v)
    edges: dict[str, list] = {k: [] for k in ("parent", "child", "x0", "y0", "x1", "y1")}
    for parent, ch in kids.items():
        for c in ch:
            for k, v in (("parent", parent), ("child", c), ("x0", pos[parent][0]),
                         ("y0", -pos[parent][1]), ("x1", pos[c][0]), ("y1", -pos[c][1])):
                edges[k].append(v)
    return TreeLayout(nodes, edges)


def with_changes(topo: Topology, *, acs_redirect: Mapping[str, bool] | None = None,
                 whitelist: bool | None = None, cpu: Cpu | None = None) -> Topology:
    """A validated copy with ACS redirect switched on/off on chosen functions, the host-bridge
    whitelist on/off, or another CPU. The original is untouched.

    Switching redirect on sets Request and Completion Redirect (as ``pci_std_enable_acs()``
    would); off clears RR, CR and EC. A function without those ACS bits is a ValueError.
    """
    changed: dict[str, PciDev] = {}
    for bdf, on in (acs_redirect or {}).items():
        d = topo.dev(bdf)
        if d.acs is None or not d.acs.cap & (PCI_ACS_RR | PCI_ACS_CR):
            raise ValueError(f"{d.bdf} ({d.kind.value}) has no ACS Request/Completion "
                             "Redirect capability to toggle")
        bits = (PCI_ACS_RR | PCI_ACS_CR) & d.acs.cap
        ctrl = d.acs.ctrl | bits if on else d.acs.ctrl & ~PCI_ACS_REDIR
        changed[d.bdf] = replace(d, acs=replace(d.acs, ctrl=ctrl))
    extra = {}
    if whitelist is not None:
        extra["whitelist_enabled"] = bool(whitelist)
    if cpu is not None:
        extra["cpu"] = cpu
    return topo.replace_devices(changed, **extra)


def toggle_acs_redirect(topo: Topology, bridges: Iterable[str], on: bool = True) -> Topology:
    """A copy with ACS redirect switched ``on`` (or off) on each of ``bridges``."""
    return with_changes(topo, acs_redirect={b: on for b in bridges})


def without_whitelist(topo: Topology) -> Topology:
    """A copy whose host-bridge whitelist is switched off (the CPU rule still applies)."""
    return with_changes(topo, whitelist=False)
