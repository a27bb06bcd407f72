"""Pure functions behind the P2P notebooks (05, 07): decision matrix, one pair's path, tree
drawing, topology variants (ACS redirect toggled, whitelist off) and the tables and columns the
notebooks print and plot. Nothing here draws; only the loaders of named files cache
(:func:`load_named`, :func:`named_variant`), so a live control costs a dictionary lookup.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from phyrlab.pci.p2pdma import (
    PCI_P2PDMA_WHITELIST,
    Check,
    MapType,
    P2PTrace,
    classify_ranges,
    cpu_supports_p2pdma,
    trace_map_type,
)
from phyrlab.pci.topology import (
    PCI_ACS_CR,
    PCI_ACS_REDIR,
    PCI_ACS_RR,
    Cpu,
    PciDev,
    Topology,
    load,
)


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


# ---------------------------------------------------------------- notebook 05 / 07 helpers
TOPOLOGY_DIR = Path(__file__).resolve().parents[2] / "data" / "topologies"
#: the ACS settings the notebooks offer: as the file says, redirect forced on, forced off
ACS_SETTINGS = ("as booted", "on", "off")
_ORDER = (MapType.BUS_ADDR, MapType.THRU_HOST_BRIDGE, MapType.NOT_SUPPORTED)


def topology_names() -> list[str]:
    """Stems of the topology files in ``data/topologies`` (sorted)."""
    return sorted(p.stem for p in TOPOLOGY_DIR.glob("*.yaml"))


@lru_cache(maxsize=32)
def load_named(name: str) -> Topology:
    """``data/topologies/<name>.yaml`` (cached: do not mutate; use :func:`with_changes`)."""
    if name not in topology_names():
        raise ValueError(f"no topology {name!r} in {TOPOLOGY_DIR} "
                         f"(known: {', '.join(topology_names())})")
    return load(TOPOLOGY_DIR / f"{name}.yaml")


def acs_redirect_capable(topo: Topology) -> list[str]:
    """Functions whose ACS capability has Request or Completion Redirect (BDF order)."""
    return sorted(b for b, d in topo.devices.items()
                  if d.acs is not None and d.acs.cap & (PCI_ACS_RR | PCI_ACS_CR))


def variant(topo: Topology, acs: str = "as booted", whitelist: bool = True) -> Topology:
    """``topo`` with ACS redirect as booted / on / off on every capable function (what
    ``pci_enable_acs()`` with an IOMMU, or ``pci=disable_acs_redir=`` for all, would give) and
    the host-bridge whitelist on or off."""
    if acs not in ACS_SETTINGS:
        raise ValueError(f"acs setting {acs!r}: expected one of {ACS_SETTINGS}")
    redirect = None if acs == "as booted" else \
        {b: acs == "on" for b in acs_redirect_capable(topo)}
    if redirect is None and whitelist == topo.whitelist_enabled:
        return topo
    return with_changes(topo, acs_redirect=redirect, whitelist=whitelist)


@lru_cache(maxsize=256)
def named_variant(name: str, acs: str = "as booted", whitelist: bool = True
                  ) -> tuple[Topology, DecisionMatrix]:
    """Cached (topology variant, its decision matrix) for the live panels."""
    t = variant(load_named(name), acs, whitelist)
    return t, decision_matrix(t)


def short_bdf(bdf: str) -> str:
    """``"0000:1a:00.0"`` -> ``"1a:00.0"`` (domain 0 dropped, as lspci prints it)."""
    return bdf[5:] if bdf.startswith("0000:") else bdf


def device_label(topo: Topology, bdf: str, width: int = 28) -> str:
    """``"1a:00.0 Eideticom NoLoad NVMe"`` (name cut to ``width``), ``+p2pmem`` marked."""
    d = topo.dev(bdf)
    name = d.name if len(d.name) <= width else d.name[: width - 1] + "…"
    return f"{short_bdf(d.bdf)} {name}".strip() + (" [p2pmem]" if d.has_p2pmem else "")


def providers(topo: Topology) -> list[str]:
    """Endpoints that registered P2P memory (``pdev->p2pdma`` set), BDF order."""
    return [b for b in topo.endpoints() if topo.devices[b].has_p2pmem]


def default_pair(topo: Topology) -> tuple[str, str]:
    """A provider with P2P memory (else the first endpoint) and the next endpoint as client."""
    eps = topo.endpoints()
    if not eps:
        raise ValueError(f"topology {topo.name!r} has no endpoints")
    p = (providers(topo) or eps)[0]
    others = [e for e in eps if e != p]
    return p, (others[0] if others else p)


def map_type_counts(m: DecisionMatrix, off_diagonal: bool = True) -> dict[str, int]:
    """How many ordered pairs get each map type (a device with itself left out by default)."""
    mt = m.map_type.astype(np.int64)
    mask = ~np.eye(len(m.devices), dtype=bool) if off_diagonal else \
        np.ones(mt.shape, dtype=bool)
    return {t.name: int(((mt == int(t)) & mask).sum()) for t in _ORDER}


def variant_rows(names: Iterable[str] | None = None,
                 settings: Iterable[tuple[str, bool]] = (("as booted", True), ("on", True),
                                                         ("off", True), ("as booted", False))
                 ) -> list[dict]:
    """Map-type counts over all ordered pairs of endpoints, per topology and setting."""
    rows = []
    for name in names or topology_names():
        for acs, wl in settings:
            _, m = named_variant(name, acs, wl)
            rows.append({"topology": name, "acs_redirect": acs,
                         "whitelist": "on" if wl else "off", "pairs": len(m.devices) ** 2
                         - len(m.devices), **map_type_counts(m)})
    return rows


def decision_rows(topo: Topology, provider: str | PciDev | None = None) -> list[dict]:
    """The decision for one provider (default: the first with P2P memory) and every other
    endpoint: map type, ``pci_p2pdma_distance_many()`` result, where the paths meet and
    which of the kernel's checks failed."""
    p = topo.dev(provider).bdf if provider is not None else default_pair(topo)[0]
    rows = []
    for c in topo.endpoints():
        if c == p:
            continue
        t = trace_map_type(topo, p, c)
        failed = [ch.name.replace("pci_bridge_has_acs_redir", "acs_redir")
                  for ch in t.checks if not ch.passed and ch.name != "decision"]
        rows.append({"provider": short_bdf(p), "client": short_bdf(c),
                     "client_name": topo.devices[c].name[:24], "map_type": t.map_type.name,
                     "distance": -1 if t.map_type is MapType.NOT_SUPPORTED else t.distance,
                     "meet": short_bdf(t.common) if t.common else "root complex",
                     "failed_checks": ", ".join(failed) or "-"})
    return rows


def topology_rows(names: Iterable[str] | None = None) -> list[dict]:
    """One line per topology file: CPU rule, host bridges, functions, providers, ACS."""
    rows = []
    for name in names or topology_names():
        t = load_named(name)
        rows.append(summary(t) | {"topology": name})
    return [{"topology": r.pop("topology"), **r} for r in rows]


def summary(topo: Topology) -> dict:
    """Counts that describe a topology (stable for a fixed file)."""
    kinds = [d.kind for d in topo.devices.values()]
    hb_devs = [topo.host_bridge_dev(h) for h in topo.host_bridges]
    listed = {(e.vendor, e.device) for e in PCI_P2PDMA_WHITELIST}
    return {
        "cpu_p2p": "yes" if cpu_supports_p2pdma(topo.cpu) else "no",
        "host_bridges": len(topo.host_bridges),
        "whitelisted_hb": sum(1 for d in hb_devs
                              if d is not None and (d.vendor, d.device) in listed),
        "functions": len(kinds),
        "bridges": sum(1 for k in kinds if k.is_bridge),
        "endpoints": len(topo.endpoints()),
        "p2p_providers": len(providers(topo)),
        "acs_capable": len(acs_redirect_capable(topo)),
        "acs_redirecting": sum(1 for d in topo.devices.values()
                               if d.acs is not None and d.acs.redirects),
        "iommu_groups": len({d.iommu_group for d in topo.devices.values()
                             if d.iommu_group is not None}),
    }


def tree_text(topo: Topology) -> str:
    """The hierarchy as indented text (host bridge, then each function's children), in the
    spirit of ``lspci -tv``: BDF, kind, vendor:device ids and name."""
    lines = [f"{topo.name}  (CPU: {topo.cpu.vendor} family {topo.cpu.family:#x}"
             f"{', ' + topo.cpu.name if topo.cpu.name else ''})"]
    lay = tree_layout(topo)
    kids: dict[str, list[str]] = {}
    for parent, child in zip(lay.edges["parent"], lay.edges["child"], strict=True):
        kids.setdefault(parent, []).append(child)

    def walk(node: str, prefix: str, last: bool) -> None:
        if node in topo.host_bridges:
            hb = topo.host_bridges[node]
            text = f"[{node}] host bridge" + (f", IOMMU {hb.iommu}" if hb.iommu else "")
        else:
            d = topo.devices[node]
            extra = []
            if d.acs is not None:
                extra.append(f"ACS ctrl {d.acs.ctrl:#x}" + (" (redirect)" if d.acs.redirects
                                                            else ""))
            if d.iommu_group is not None:
                extra.append(f"group {d.iommu_group}")
            if d.has_p2pmem:
                extra.append("p2pmem")
            text = f"{d.bdf} {d.kind.value} [{d.ids}] {d.name}".rstrip() + \
                (f"  ({'; '.join(extra)})" if extra else "")
        lines.append(f"{prefix}{'`-' if last else '+-'}{text}")
        ch = kids.get(node, [])
        for i, c in enumerate(ch):
            walk(c, prefix + ("  " if last else "| "), i == len(ch) - 1)

    hbs = kids.get("machine", [])
    for i, hb in enumerate(hbs):
        walk(hb, "", i == len(hbs) - 1)
    return "\n".join(lines)


def tree_path(topo: Topology, report: PathReport) -> tuple[str, ...]:
    """``report.nodes`` as nodes of :func:`tree_layout`: "root complex" becomes the host
    bridge(s) (and the machine node between two host bridges)."""
    out: list[str] = []
    nodes = report.nodes
    for k, node in enumerate(nodes):
        if node != "root complex":
            out.append(node)
            continue
        hb_a = topo.host_bridge_of(nodes[k - 1]).name
        hb_b = topo.host_bridge_of(nodes[k + 1]).name
        out += [hb_a] if hb_a == hb_b else [hb_a, "machine", hb_b]
    return tuple(out)


def graph_columns(topo: Topology, provider: str, client: str
                  ) -> dict[str, dict[str, list]]:
    """Columns for the topology graph (depth across, one row per leaf) with the P2P path of
    ``provider`` -> ``client`` highlighted: ``nodes``, ``edges``, ``path`` and ``checks``."""
    lay = tree_layout(topo)
    rep = p2p_path(topo, provider, client)
    tpath = tree_path(topo, rep)
    pos = {i: (-y, -x) for i, x, y in zip(lay.nodes["id"], lay.nodes["x"], lay.nodes["y"],
                                          strict=True)}
    kids = set(lay.edges["parent"])
    colour = MAP_TYPE_COLOURS[rep.map_type.name]
    role = {rep.trace.provider: "provider", rep.trace.client: "client"}
    nodes: dict[str, list] = {k: [] for k in ("id", "x", "y", "label", "name", "kind", "role",
                                               "color", "size", "leaf")}
    for i, label, kind in zip(lay.nodes["id"], lay.nodes["label"], lay.nodes["kind"],
                              strict=True):
        leaf = i not in kids
        if i in topo.devices:
            text = device_label(topo, i) if leaf else short_bdf(i)
        else:
            text = "root complex" if i == "machine" else f"[{i}]"
        r = role.get(i, "on path" if i in tpath else "")
        x, y = pos[i]
        for k, v in (("id", i), ("x", x), ("y", y), ("label", text), ("name", label),
                     ("kind", kind), ("role", r), ("leaf", leaf),
                     ("color", colour if r else "#bbbbbb"), ("size", 18 if r in role.values()
                                                             else 12)):
            nodes[k].append(v)
    edges = {"x0": [pos[p][0] for p in lay.edges["parent"]],
             "y0": [pos[p][1] for p in lay.edges["parent"]],
             "x1": [pos[c][0] for c in lay.edges["child"]],
             "y1": [pos[c][1] for c in lay.edges["child"]]}
    pairs = list(zip(tpath, tpath[1:], strict=False))
    path = {"x0": [pos[a][0] for a, _ in pairs], "y0": [pos[a][1] for a, _ in pairs],
            "x1": [pos[b][0] for _, b in pairs], "y1": [pos[b][1] for _, b in pairs],
            "color": [colour] * len(pairs)}
    checks = {"check": [c.name for c in rep.checks],
              "result": ["passed" if c.passed else "FAILED" for c in rep.checks],
              "detail": [c.detail for c in rep.checks]}
    return {"nodes": nodes, "edges": edges, "path": path, "checks": checks}


def path_summary(topo: Topology, provider: str, client: str) -> str:
    """One line: the route, the map type and ``pci_p2pdma_distance_many()``'s answer."""
    rep = p2p_path(topo, provider, client)
    route = " → ".join(short_bdf(n) for n in rep.nodes)
    dist = -1 if rep.map_type is MapType.NOT_SUPPORTED else rep.distance
    return f"{route}: {rep.map_type.name}, distance {dist}"


#: one colour per map type, the same in every figure
MAP_TYPE_COLOURS = {"BUS_ADDR": "#2ca02c", "THRU_HOST_BRIDGE": "#ff7f0e",
                    "NOT_SUPPORTED": "#d62728", "UNKNOWN": "#7f7f7f", "NONE": "#1f77b4"}


def heatmap_columns(topo: Topology, m: DecisionMatrix) -> dict[str, list]:
    """:meth:`DecisionMatrix.columns` with short labels, colours and a cell text (distance)."""
    cols = m.columns()
    cols["provider_label"] = [short_bdf(b) for b in cols["provider"]]
    cols["client_label"] = [short_bdf(b) for b in cols["client"]]
    cols["color"] = [MAP_TYPE_COLOURS[t] for t in cols["map_type"]]
    cols["text"] = ["–" if d < 0 else str(d) for d in cols["distance"]]
    cols["provider_name"] = [topo.devices[b].name for b in cols["provider"]]
    cols["client_name"] = [topo.devices[b].name for b in cols["client"]]
    return cols


def classify_rows(topos: Mapping[str, Topology], client: str,
                  addr: Iterable[int], length: Iterable[int]) -> list[dict]:
    """Per range of one list: the P2P provider whose BAR holds it and how ``client`` would
    map it (``classify_ranges()``, i.e. ``pci_p2pdma_map_type()`` per provider) under each
    labelled topology variant (e.g. ``{"as booted": t, "ACS on": variant(t, "on")}``)."""
    a = np.asarray(list(addr), dtype=np.uint64)
    n = np.asarray(list(length), dtype=np.uint64)
    answers = {label: classify_ranges(t, client, a, n) for label, t in topos.items()}
    rows = []
    for i in range(a.size):
        first = next(iter(answers.values()))
        p = int(first.provider[i])
        row = {"range": i, "addr": f"{int(a[i]):#x}", "length": int(n[i]),
               "memory": "host" if p < 0 else f"BAR of {short_bdf(first.providers[p])}"}
        for label, rc in answers.items():
            row[label] = MapType(int(rc.map_type[i])).name
        rows.append(row)
    return rows
