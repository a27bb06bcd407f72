"""The P2P decision of drivers/pci/p2pdma.c, as in Linux v6.2.

Verified against a stored drivers/pci/p2pdma.c of the v6.2 era (it has the v6.2 additions:
the ``p2pmem/allocate`` mmap file and ``get_random_u32_below()``, the enum in
include/linux/dma-map-ops.h and ``pci_p2pdma_map_segment()``). What is mirrored:

- ``calc_map_type_and_dist()`` -> :func:`calc_map_type_and_dist`: walk up from the provider
  (``dist_a``); for each of its ancestors walk up from the client (``dist_b``); the first common
  one ends the search and the distance is ``dist_a + dist_b``. ``pci_bridge_has_acs_redir()`` is
  asked of every function on the provider side up to *and including* the common one, and of the
  client side below it. No ACS redirect -> ``BUS_ADDR``. ACS redirect or no common upstream
  bridge -> ``THRU_HOST_BRIDGE`` if ``cpu_supports_p2pdma()`` or ``host_bridge_whitelist()``,
  else ``NOT_SUPPORTED``. With no common bridge the distance is the full length of both chains
  (the loops ran to the end). The whitelist warns ("Host bridge not in P2PDMA whitelist") only
  on the ACS path, because v6.2 passes ``acs_redirects`` as its ``warn`` argument.
- ``cpu_supports_p2pdma()``: x86 AMD (not Hygon) family >= 0x17.
- ``pci_p2pdma_whitelist[]`` and ``__host_bridge_whitelist()``: matched against
  ``pci_host_bridge_dev()``; entries flagged ``REQ_SAME_HOST_BRIDGE`` pass only when both
  devices are under that same host bridge; ``host_bridge_whitelist()`` short-circuits.
- ``pci_p2pdma_distance_many()`` -> :func:`pci_p2pdma_distance_many`: -1 for no clients or any
  ``NOT_SUPPORTED`` client, else the *sum* of the per-client distances.
- ``pci_p2pdma_map_type()`` -> :func:`pci_p2pdma_map_type`: ``NOT_SUPPORTED`` unless the
  provider has P2P memory; else the type cached per client in the provider's ``map_types``
  xarray (key ``map_types_idx()``), computed verbosely on a miss. ``calc_map_type_and_dist()``
  stores into that cache whenever the provider has P2P memory.
- ``pci_p2pdma_add_resource()``: ``bus_offset = pci_bus_address() - pci_resource_start()``;
  ``pci_p2pdma_map_segment()`` gives ``dma_address = sg_phys(sg) + bus_offset``.

Simplifications: the kernel's 128-byte ``acs_list`` seq_buf would truncate past 9 bridges; we
keep every name. Warnings are returned (``"pci BDF: text"``) rather than printed.

What later kernels changed (not modelled): the enum gained ``PCI_P2PDMA_MAP_NONE`` (our
:attr:`MapType.NONE` borrows the name for "host memory", with a value of our own); the
whitelist gained Google SoCs (``PCI_ANY_ID``) and Intel DSA/IAX/QAT device ids; the two-step DMA
API brought ``struct pci_p2pdma_map_state`` / ``pci_p2pdma_state()`` and the provider struct;
2026 kernels refine ACS with egress vectors and P2P link descriptions.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from phyrlab.errors import RangeError
from phyrlab.pci.topology import (
    PCI_ACS_REDIR,
    PCI_VENDOR_ID_INTEL,
    Bar,
    Cpu,
    HostBridge,
    PciDev,
    Topology,
)


class MapType(enum.IntEnum):
    """``enum pci_p2pdma_map_type`` (v6.2 values), plus NONE for host memory."""

    UNKNOWN = 0
    NOT_SUPPORTED = 1
    BUS_ADDR = 2
    THRU_HOST_BRIDGE = 3
    NONE = 4  # not a P2P range (later kernels' PCI_P2PDMA_MAP_NONE; value ours)


REQ_SAME_HOST_BRIDGE = 1 << 0


class WhitelistEntry(NamedTuple):
    """One ``struct pci_p2pdma_whitelist_entry``."""

    vendor: int
    device: int
    flags: int
    comment: str


#: ``pci_p2pdma_whitelist[]`` of v6.2, in the kernel's order.
PCI_P2PDMA_WHITELIST: tuple[WhitelistEntry, ...] = (
    WhitelistEntry(PCI_VENDOR_ID_INTEL, 0x3C00, REQ_SAME_HOST_BRIDGE, "Intel Xeon E5/Core i7"),
    WhitelistEntry(PCI_VENDOR_ID_INTEL, 0x3C01, REQ_SAME_HOST_BRIDGE, "Intel Xeon E5/Core i7"),
    WhitelistEntry(PCI_VENDOR_ID_INTEL, 0x2F00, REQ_SAME_HOST_BRIDGE,
                   "Intel Xeon E7 v3/Xeon E5 v3/Core i7"),
    WhitelistEntry(PCI_VENDOR_ID_INTEL, 0x2F01, REQ_SAME_HOST_BRIDGE,
                   "Intel Xeon E7 v3/Xeon E5 v3/Core i7"),
    WhitelistEntry(PCI_VENDOR_ID_INTEL, 0x2030, 0, "Intel SkyLake-E"),
    WhitelistEntry(PCI_VENDOR_ID_INTEL, 0x2031, 0, "Intel SkyLake-E"),
    WhitelistEntry(PCI_VENDOR_ID_INTEL, 0x2032, 0, "Intel SkyLake-E"),
    WhitelistEntry(PCI_VENDOR_ID_INTEL, 0x2033, 0, "Intel SkyLake-E"),
    WhitelistEntry(PCI_VENDOR_ID_INTEL, 0x2020, 0, "Intel SkyLake-E"),
    WhitelistEntry(PCI_VENDOR_ID_INTEL, 0x09A2, 0, "Intel Ice Lake-SP (3rd gen Xeon)"),
)


@dataclass(frozen=True)
class Check:
    """One test the kernel made on the way to its decision."""

    name: str
    passed: bool
    detail: str = ""


@dataclass(frozen=True)
class P2PTrace:
    """Everything ``calc_map_type_and_dist()`` looked at for one (provider, client) pair."""

    provider: str
    client: str
    map_type: MapType
    distance: int  # *dist as the kernel sets it (hops), also for NOT_SUPPORTED
    common: str | None  # the nearest common upstream bridge (or the device itself)
    provider_path: tuple[str, ...]  # provider .. common (inclusive), or the whole chain
    client_path: tuple[str, ...]  # client .. below common, or the whole chain
    acs_list: tuple[str, ...]  # functions with ACS redirect, in the kernel's order
    checks: tuple[Check, ...]
    warnings: tuple[str, ...]  # what pci_warn() prints when verbose

    @property
    def reason(self) -> str:
        """The kernel's warnings, then a one-line summary unless it refused."""
        parts = list(self.warnings)
        if self.map_type is not MapType.NOT_SUPPORTED:
            parts.append(self.checks[-1].detail)
        return "; ".join(parts)


class P2PDistance(NamedTuple):
    """What :func:`p2pdma_distance` returns."""

    map_type: MapType
    distance: int  # pci_p2pdma_distance_many(): -1 when not supported
    reason: str


def cpu_supports_p2pdma(cpu: Cpu) -> bool:
    """``cpu_supports_p2pdma()``: any x86 AMD CPU whose family is Zen (0x17) or newer."""
    x86 = cpu.arch in ("x86_64", "x86", "i386", "i686")
    return x86 and cpu.vendor.lower() in ("authenticamd", "amd") and cpu.family >= 0x17


def pci_bridge_has_acs_redir(dev: PciDev) -> bool:
    """``pci_bridge_has_acs_redir()``: ACS control has RR, CR or EC set (asked of any function)."""
    return dev.acs is not None and bool(dev.acs.ctrl & PCI_ACS_REDIR)


def map_types_idx(dev: PciDev) -> int:
    """``map_types_idx()``: ``domain << 16 | bus << 8 | devfn``, the cache key."""
    return (dev.domain << 16) | (dev.bus << 8) | dev.devfn


def _whitelist_one(topo: Topology, hb: HostBridge, same: bool, warn: bool,
                   warnings: list[str]) -> tuple[bool, str]:
    """``__host_bridge_whitelist()``."""
    root = topo.host_bridge_dev(hb)
    if root is None:
        return False, f"host bridge {hb.name}: no devfn 00.0 or Root Port first on its root bus"
    if topo.whitelist_enabled:
        for e in PCI_P2PDMA_WHITELIST:
            if root.vendor != e.vendor or root.device != e.device:
                continue
            if e.flags & REQ_SAME_HOST_BRIDGE and not same:
                return False, (f"host bridge {hb.name} ({root.bdf} {root.ids}) is whitelisted "
                               "only for devices under the same host bridge")
            return True, f"host bridge {hb.name} ({root.bdf} {root.ids}) is whitelisted"
    if warn:
        warnings.append(f"pci {root.bdf}: Host bridge not in P2PDMA whitelist: {root.ids}")
    off = "" if topo.whitelist_enabled else " (whitelist switched off)"
    return False, f"host bridge {hb.name} ({root.bdf} {root.ids}) is not whitelisted{off}"


def host_bridge_whitelist(topo: Topology, a: PciDev, b: PciDev, warn: bool,
                          warnings: list[str] | None = None) -> tuple[bool, str]:
    """``host_bridge_whitelist()``: same host bridge, or both whitelisted (short-circuit)."""
    warnings = [] if warnings is None else warnings
    host_a, host_b = topo.host_bridge_of(a), topo.host_bridge_of(b)
    if host_a == host_b:
        return _whitelist_one(topo, host_a, True, warn, warnings)
    ok_a, why_a = _whitelist_one(topo, host_a, False, warn, warnings)
    if not ok_a:
        return False, why_a
    ok_b, why_b = _whitelist_one(topo, host_b, False, warn, warnings)
    return ok_b, f"{why_a}; {why_b}"


def trace_map_type(topo: Topology, provider: str | PciDev, client: str | PciDev) -> P2PTrace:
    """``calc_map_type_and_dist()`` with every step recorded; does not touch the cache."""
    p, c = topo.dev(provider), topo.dev(client)
    a_chain = topo.upstream_chain(p)
    b_chain = topo.upstream_chain(c)
    b_pos = {bdf: i for i, bdf in enumerate(b_chain)}
    checks: list[Check] = []
    warnings: list[str] = []
    acs_list: list[str] = []
    common = None
    dist_a, dist_b = len(a_chain), len(b_chain)  # what the loops leave when nothing is shared
    for i, a in enumerate(a_chain):
        if pci_bridge_has_acs_redir(topo.devices[a]):
            acs_list.append(a)
        if a in b_pos:
            common, dist_a, dist_b = a, i, b_pos[a]
            break
    if common is not None:
        for bb in b_chain[:dist_b]:
            if pci_bridge_has_acs_redir(topo.devices[bb]):
                acs_list.append(bb)
        prov_path, cli_path = a_chain[: dist_a + 1], b_chain[:dist_b]
        checks.append(Check("common upstream bridge", True,
                            f"{common} ({dist_a} up from the provider, {dist_b} from the client)"))
    else:
        prov_path, cli_path = a_chain, b_chain
        checks.append(Check("common upstream bridge", False,
                            "none: the paths meet only in the root complex"))
    dist = dist_a + dist_b
    for bdf in (*prov_path, *reversed(cli_path)):
        d = topo.devices[bdf]
        if d.acs is not None:
            redir = pci_bridge_has_acs_redir(d)
            checks.append(Check(f"pci_bridge_has_acs_redir({bdf})", not redir,
                                f"ACS ctrl {d.acs.ctrl:#06x}"
                                + (" redirects (RR/CR/EC)" if redir else "")))
    acs_redirects = False
    if common is not None:
        if not acs_list:
            checks.append(Check("decision", True,
                                "same function" if dist == 0 else
                                f"BUS_ADDR: switch path through {common}, no ACS redirect"))
            return P2PTrace(p.bdf, c.bdf, MapType.BUS_ADDR, dist, common, prov_path, cli_path,
                            (), tuple(checks), ())
        acs_redirects = True
        names = ";".join(acs_list)
        warnings.append(f"pci {c.bdf}: ACS redirect is set between the client and provider "
                        f"({p.bdf})")
        warnings.append(f"pci {c.bdf}: to disable ACS redirect for this path, add the kernel "
                        f"parameter: pci=disable_acs_redir={names}")
    cpu_ok = cpu_supports_p2pdma(topo.cpu)
    checks.append(Check("cpu_supports_p2pdma()", cpu_ok,
                        f"{topo.cpu.vendor} family {topo.cpu.family:#x} ({topo.cpu.arch})"))
    if cpu_ok:
        ok, why = True, f"THRU_HOST_BRIDGE: {topo.cpu.vendor} family {topo.cpu.family:#x} " \
                        "supports P2P through the root complex"
    else:
        ok, why = host_bridge_whitelist(topo, p, c, acs_redirects, warnings)
        checks.append(Check("host_bridge_whitelist()", ok, why))
        why = f"THRU_HOST_BRIDGE: {why}"
    if not ok:
        warnings.append(f"pci {c.bdf}: cannot be used for peer-to-peer DMA as the client and "
                        f"provider ({p.bdf}) do not share an upstream bridge or whitelisted "
                        "host bridge")
        checks.append(Check("decision", False, "NOT_SUPPORTED"))
        mt = MapType.NOT_SUPPORTED
    else:
        checks.append(Check("decision", True, why))
        mt = MapType.THRU_HOST_BRIDGE
    return P2PTrace(p.bdf, c.bdf, mt, dist, common, prov_path, cli_path, tuple(acs_list),
                    tuple(checks), tuple(warnings))


def _map_types(topo: Topology, provider: PciDev) -> dict[int, MapType]:
    return topo._cache.setdefault("map_types", {}).setdefault(provider.bdf, {})


def calc_map_type_and_dist(topo: Topology, provider: str | PciDev,
                           client: str | PciDev) -> tuple[MapType, int, str]:
    """``calc_map_type_and_dist()``: (map type, distance, reason); caches as the kernel does."""
    t = trace_map_type(topo, provider, client)
    p = topo.dev(provider)
    if p.has_p2pmem:  # xa_store(&p2pdma->map_types, map_types_idx(client), ...)
        _map_types(topo, p)[map_types_idx(topo.dev(client))] = t.map_type
    return t.map_type, t.distance, t.reason


def _as_clients(clients: str | PciDev | Iterable[str | PciDev]) -> list[str | PciDev]:
    if isinstance(clients, (str, PciDev)):
        return [clients]
    return list(clients)


def pci_p2pdma_distance_many(topo: Topology, provider: str | PciDev,
                             clients: str | PciDev | Iterable[str | PciDev],
                             verbose: bool = True) -> int:
    """``pci_p2pdma_distance_many()``: -1 if any client is not supported, else the sum."""
    return p2pdma_distance(topo, provider, clients, verbose=verbose).distance


def p2pdma_distance(topo: Topology, provider: str | PciDev,
                    clients: str | PciDev | Iterable[str | PciDev],
                    verbose: bool = True) -> P2PDistance:
    """The P2P decision for a provider and one or more clients: ``(map_type, distance, reason)``.

    ``distance`` is exactly ``pci_p2pdma_distance_many()``'s result: -1 when there are no
    clients or any client is ``NOT_SUPPORTED``, else the sum of the per-client distances.
    ``map_type`` is the worst per-client type (NOT_SUPPORTED > THRU_HOST_BRIDGE > BUS_ADDR).
    With ``verbose=False`` the loop stops at the first unsupported client, as the kernel's does.
    """
    p = topo.dev(provider)
    cl = [topo.dev(c) for c in _as_clients(clients)]
    if not cl:
        return P2PDistance(MapType.NOT_SUPPORTED, -1,
                           "no clients: pci_p2pdma_distance_many() returns -1 for num_clients 0")
    total, not_supported, worst, reasons = 0, False, MapType.BUS_ADDR, []
    for c in cl:
        mt, dist, why = calc_map_type_and_dist(topo, p, c)
        reasons.append(why if len(cl) == 1 else f"{c.bdf}: {why}")
        if mt is MapType.NOT_SUPPORTED:
            not_supported = True
            worst = mt
        elif worst is not MapType.NOT_SUPPORTED and mt > worst:
            worst = mt
        if not_supported and not verbose:
            break
        total += dist
    return P2PDistance(worst, -1 if not_supported else total, " | ".join(reasons))


def pci_p2pdma_map_type(topo: Topology, provider: str | PciDev,
                        client: str | PciDev) -> MapType:
    """``pci_p2pdma_map_type()`` (v6.2): the cached type, computed (verbosely) on a miss.

    NOT_SUPPORTED when the provider registered no P2P memory (``!provider->p2pdma``). The cache
    lives on the topology (the provider's ``map_types`` xarray); copies start empty.
    """
    p, c = topo.dev(provider), topo.dev(client)
    if not p.has_p2pmem:
        return MapType.NOT_SUPPORTED
    cached = _map_types(topo, p).get(map_types_idx(c), MapType.UNKNOWN)
    if cached is MapType.UNKNOWN:
        return calc_map_type_and_dist(topo, p, c)[0]
    return cached


def p2pdma_bus_offset(topo: Topology, provider: str | PciDev, bar: int | None = None) -> int:
    """``p2p_pgmap->bus_offset = pci_bus_address(pdev, bar) - pci_resource_start(pdev, bar)``.

    Add it to a CPU physical address in the BAR to get the PCI bus address a peer uses for
    ``BUS_ADDR`` (``pci_p2pdma_map_segment()``). Here it is minus the host bridge's window
    offset. ``bar`` defaults to the provider's first P2P BAR.
    """
    p = topo.dev(provider)
    p2p = [b for b in p.bars if b.p2pmem and (bar is None or b.index == bar)]
    if not p2p:
        what = "P2P memory BAR" if bar is None else f"P2P memory in BAR {bar}"
        raise ValueError(f"{p.bdf} has no {what} (pci_p2pdma_add_resource() was not called)")
    return -topo.host_bridge_of(p).mem_offset


# ------------------------------------------------------------------ address -> provider
@dataclass(frozen=True)
class P2PBarTable:
    """Every P2P BAR of a topology, sorted by address, as arrays."""

    start: np.ndarray  # uint64
    end: np.ndarray  # uint64, one past the end
    provider: np.ndarray  # int64 index into providers
    bars: tuple[tuple[PciDev, Bar], ...]
    providers: tuple[str, ...]


def p2p_bar_table(topo: Topology) -> P2PBarTable:
    """The (cached) sorted table :func:`find_p2p_bar` and :func:`classify_ranges` search."""
    t = topo._cache.get("p2p_bars")
    if t is None:
        pairs = sorted(((d, b) for d in topo.devices.values() for b in d.bars if b.p2pmem),
                       key=lambda x: x[1].addr)
        providers = tuple(sorted({d.bdf for d, _ in pairs}))
        pidx = {bdf: i for i, bdf in enumerate(providers)}
        t = P2PBarTable(
            start=np.array([b.addr for _, b in pairs], dtype=np.uint64),
            end=np.array([b.end & 0xFFFF_FFFF_FFFF_FFFF for _, b in pairs], dtype=np.uint64),
            provider=np.array([pidx[d.bdf] for d, _ in pairs], dtype=np.int64),
            bars=tuple(pairs), providers=providers)
        topo._cache["p2p_bars"] = t
    return t


def _lookup(t: P2PBarTable, addr: np.ndarray) -> np.ndarray:
    """Index into t.bars of the BAR holding each address, -1 where none."""
    if len(t.start) == 0:
        return np.full(addr.shape, -1, dtype=np.int64)
    i = np.searchsorted(t.start, addr, side="right").astype(np.int64) - 1
    ic = np.maximum(i, 0)
    end = t.end[ic]
    inside = (i >= 0) & ((addr < end) | (end == 0))  # end 0: BAR reaching 2^64
    return np.where(inside, i, -1)


def find_p2p_bar(topo: Topology, paddr: int) -> tuple[PciDev, Bar] | None:
    """Which provider's P2P BAR holds CPU physical address ``paddr`` (None: host memory)."""
    if not 0 <= int(paddr) <= 0xFFFF_FFFF_FFFF_FFFF:
        raise ValueError(f"physical address {paddr!r} is not a u64")
    t = p2p_bar_table(topo)
    i = int(_lookup(t, np.array([paddr], dtype=np.uint64))[0])
    return None if i < 0 else t.bars[i]


def find_p2p_bars(topo: Topology, paddr: Sequence[int] | np.ndarray) -> np.ndarray:
    """Vectorised :func:`find_p2p_bar`: index into ``p2p_bar_table(topo).bars``, -1 if none."""
    return _lookup(p2p_bar_table(topo), np.asarray(paddr, dtype=np.uint64))


@dataclass(frozen=True)
class RangeClass:
    """Per-range answer of :func:`classify_ranges`."""

    provider: np.ndarray  # int64: index into providers, -1 for host memory
    map_type: np.ndarray  # int8: MapType values (NONE for host memory)
    bus_offset: np.ndarray  # int64: add to addr for BUS_ADDR ranges, else 0
    providers: tuple[str, ...]


def classify_ranges(topo: Topology, client: str | PciDev, addr: Sequence[int] | np.ndarray,
                    length: Sequence[int] | np.ndarray) -> RangeClass:
    """For each physical range: which provider's P2P BAR holds it and how ``client`` maps it.

    The map type per provider comes from :func:`pci_p2pdma_map_type` (cached), so the work
    per range is array operations only. A range that runs off the end of a P2P BAR, or starts
    in host memory and ends in one, is a :class:`~phyrlab.errors.RangeError` naming its index.
    """
    c = topo.dev(client)
    a = np.asarray(addr)
    n = np.asarray(length)
    if a.shape != n.shape or a.ndim != 1:
        raise RangeError(f"addr and length must be 1-D arrays of one shape, got {a.shape} "
                         f"and {n.shape}")
    for name, x in (("addr", a), ("length", n)):
        if x.dtype.kind == "i" and x.size and x.min() < 0:
            j = int(np.argmax(x < 0))
            raise RangeError(f"{name}[{j}] = {int(x[j])} is negative")
        if x.dtype.kind not in "iu" and x.size:
            raise RangeError(f"{name} must hold integers, got dtype {x.dtype}")
    a = a.astype(np.uint64)
    n = n.astype(np.uint64)
    if n.size and (n == 0).any():
        j = int(np.argmax(n == 0))
        raise RangeError(f"length[{j}] is 0")
    last = a + (n - np.uint64(1))
    if (last < a).any():
        j = int(np.argmax(last < a))
        raise RangeError(f"range {j} ({int(a[j]):#x} + {int(n[j]):#x}) overflows 2^64")
    t = p2p_bar_table(topo)
    first_bar = _lookup(t, a)
    last_bar = _lookup(t, last)
    bad = first_bar != last_bar
    if bad.any():
        j = int(np.argmax(bad))
        k = max(int(first_bar[j]), int(last_bar[j]))
        d, b = t.bars[k]
        raise RangeError(f"range {j} ({int(a[j]):#x}, {int(n[j]):#x} bytes) is partly in P2P "
                         f"BAR {b.index} of {d.bdf} ({b.addr:#x}-{b.end - 1:#x}) and partly "
                         "outside it")
    prov = np.where(first_bar >= 0, t.provider[np.maximum(first_bar, 0)], -1) \
        if len(t.start) else np.full(a.shape, -1, dtype=np.int64)
    per_prov = np.array([pci_p2pdma_map_type(topo, bdf, c) for bdf in t.providers] + [0],
                        dtype=np.int8)
    offs = np.array([p2pdma_bus_offset(topo, bdf) for bdf in t.providers] + [0],
                    dtype=np.int64)
    mt = np.where(prov >= 0, per_prov[prov], np.int8(MapType.NONE)).astype(np.int8)
    off = np.where(mt == MapType.BUS_ADDR, offs[prov], 0).astype(np.int64)
    return RangeClass(provider=prov.astype(np.int64), map_type=mt, bus_offset=off,
                      providers=t.providers)
