"""The PCI topology model (``struct pci_dev``, ``struct pci_host_bridge``) and its YAML loader.

A :class:`Topology` holds host bridges (one per root bus, as ``struct pci_host_bridge``) and the
PCI functions below them: the ``00.0`` host-bridge function, root ports, switch upstream and
downstream ports, PCI-to-PCI bridges and endpoints, each with its BARs, its ACS capability and
control bits, and the IOMMU it sits behind. ``topo.devices`` maps a BDF string
(``"0000:03:00.0"``) to its :class:`PciDev`, bridges and functions included.

The walk the P2P code needs mirrors the kernel's helpers (include/linux/pci.h,
drivers/pci/p2pdma.c of v6.2):

- :meth:`Topology.upstream_bridge` is ``pci_upstream_bridge()``: the bridge above the device's bus
  (``dev->bus->self``), ``None`` on a root bus; an SR-IOV VF uses its PF (``pci_physfn()``).
- :meth:`Topology.host_bridge_of` is ``pci_find_host_bridge(dev->bus)``.
- :meth:`Topology.host_bridge_dev` is ``pci_host_bridge_dev()``: the first function on the root
  bus (lowest devfn, the scan order) if it is devfn 00.0 or a PCIe Root Port, else ``None``.

Simplifications: one memory-window offset per host bridge (``mem_offset`` = CPU address - PCI
bus address, what ``pci_add_resource_offset()`` records; real bridges may have several windows);
bridge windows and bus-number ranges are not modelled; ACS is its two 16-bit registers only.
The YAML format is documented in ``data/topologies/README.md``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from phyrlab.errors import InputFileError
from phyrlab.units import parse_size

MAX_FILE_BYTES = 1 << 20  # a topology file is small; refuse anything bigger than 1 MiB
MAX_DEVICES = 4096
MAX_DEPTH = 64  # no real PCI hierarchy nests 64 bridges deep

# PCI_ACS_* bits of the ACS Capability / Control registers (include/uapi/linux/pci_regs.h).
PCI_ACS_SV = 0x0001  # Source Validation
PCI_ACS_TB = 0x0002  # Translation Blocking
PCI_ACS_RR = 0x0004  # P2P Request Redirect
PCI_ACS_CR = 0x0008  # P2P Completion Redirect
PCI_ACS_UF = 0x0010  # Upstream Forwarding
PCI_ACS_EC = 0x0020  # P2P Egress Control
PCI_ACS_DT = 0x0040  # Direct Translated P2P
ACS_BITS = {"SV": PCI_ACS_SV, "TB": PCI_ACS_TB, "RR": PCI_ACS_RR, "CR": PCI_ACS_CR,
            "UF": PCI_ACS_UF, "EC": PCI_ACS_EC, "DT": PCI_ACS_DT}
#: the bits ``pci_bridge_has_acs_redir()`` tests
PCI_ACS_REDIR = PCI_ACS_RR | PCI_ACS_CR | PCI_ACS_EC

PCI_VENDOR_ID_INTEL = 0x8086
PCI_VENDOR_ID_AMD = 0x1022

_BDF_RE = re.compile(r"^([0-9a-f]{4,8}):([0-9a-f]{2}):([01][0-9a-f])\.([0-7])$")


class DevKind(str, enum.Enum):
    """What a function is (``pci_pcie_type()`` plus the host-bridge function)."""

    HOST_BRIDGE = "host_bridge"  # class 0x0600 function, usually at 00.0 of a root bus
    ROOT_PORT = "root_port"  # PCI_EXP_TYPE_ROOT_PORT
    SWITCH_UPSTREAM = "switch_upstream"  # PCI_EXP_TYPE_UPSTREAM
    SWITCH_DOWNSTREAM = "switch_downstream"  # PCI_EXP_TYPE_DOWNSTREAM
    PCI_BRIDGE = "pci_bridge"  # PCI/PCI-X bridge (PCI_EXP_TYPE_PCI_BRIDGE) or conventional
    ENDPOINT = "endpoint"  # PCI_EXP_TYPE_ENDPOINT / legacy endpoint
    RCIEP = "rciep"  # PCI_EXP_TYPE_RC_END: root-complex integrated endpoint

    @property
    def is_bridge(self) -> bool:
        return self in _BRIDGES


_BRIDGES = {DevKind.ROOT_PORT, DevKind.SWITCH_UPSTREAM, DevKind.SWITCH_DOWNSTREAM,
            DevKind.PCI_BRIDGE}


def parse_bdf(text: str) -> tuple[int, int, int, int]:
    """``"0000:03:00.1"`` -> (domain, bus, device, function); ValueError naming a bad one."""
    m = _BDF_RE.match(str(text).strip().lower())
    if not m:
        raise ValueError(f"bad BDF {text!r}: expected 'dddd:bb:dd.f' (hex), e.g. '0000:03:00.0'")
    return int(m[1], 16), int(m[2], 16), int(m[3], 16), int(m[4], 16)


def format_bdf(domain: int, bus: int, dev: int, fn: int) -> str:
    """``pci_name()``: ``"%04x:%02x:%02x.%d"``."""
    return f"{domain:04x}:{bus:02x}:{dev:02x}.{fn}"


@dataclass(frozen=True)
class Bar:
    """One memory BAR (``pdev->resource[index]``): CPU physical address and size."""

    index: int
    addr: int  # pci_resource_start(): the CPU physical address
    size: int  # pci_resource_len()
    prefetchable: bool = True
    p2pmem: bool = False  # registered with pci_p2pdma_add_resource()

    @property
    def end(self) -> int:
        """One past the last byte."""
        return self.addr + self.size


@dataclass(frozen=True)
class Acs:
    """The ACS extended capability: Capability and Control registers (PCI_ACS_CAP/CTRL)."""

    cap: int
    ctrl: int

    @property
    def redirects(self) -> bool:
        """``ctrl & (PCI_ACS_RR | PCI_ACS_CR | PCI_ACS_EC)``."""
        return bool(self.ctrl & PCI_ACS_REDIR)


@dataclass(frozen=True)
class Cpu:
    """The CPU as ``cpu_supports_p2pdma()`` sees it (``cpu_data(0)``)."""

    vendor: str = "unknown"  # "AuthenticAMD", "GenuineIntel", "HygonGenuine", "ARM", ...
    family: int = 0
    arch: str = "x86_64"
    name: str = ""


@dataclass(frozen=True)
class HostBridge:
    """``struct pci_host_bridge``: one root bus, its window offset and IOMMU."""

    domain: int
    bus: int
    mem_offset: int = 0  # CPU address - PCI bus address of its memory window
    iommu: str | None = None
    numa_node: int | None = None
    description: str = ""

    @property
    def name(self) -> str:
        """``"dddd:bb"``, the name lspci -t prints in brackets."""
        return f"{self.domain:04x}:{self.bus:02x}"


@dataclass(frozen=True)
class PciDev:
    """``struct pci_dev``: one PCI function."""

    bdf: str
    kind: DevKind
    vendor: int | None = None
    device: int | None = None
    name: str = ""
    parent: str | None = None  # BDF of the upstream bridge; None on a root bus
    physfn: str | None = None  # SR-IOV: the PF of this VF
    bars: tuple[Bar, ...] = ()
    acs: Acs | None = None
    iommu: str | None = None
    iommu_group: int | None = None
    class_code: int | None = None

    @property
    def domain(self) -> int:
        return parse_bdf(self.bdf)[0]

    @property
    def bus(self) -> int:
        return parse_bdf(self.bdf)[1]

    @property
    def devfn(self) -> int:
        """``PCI_DEVFN(slot, func)``."""
        _, _, d, f = parse_bdf(self.bdf)
        return (d << 3) | f

    @property
    def is_virtfn(self) -> bool:
        return self.physfn is not None

    @property
    def has_p2pmem(self) -> bool:
        """``pdev->p2pdma != NULL``: some BAR was given to pci_p2pdma_add_resource()."""
        return any(b.p2pmem for b in self.bars)

    @property
    def ids(self) -> str:
        """``"8086:2020"`` or ``"????:????"`` where lspci -t did not say."""
        v = "????" if self.vendor is None else f"{self.vendor:04x}"
        d = "????" if self.device is None else f"{self.device:04x}"
        return f"{v}:{d}"


@dataclass
class Topology:
    """A whole machine: CPU, host bridges and PCI functions (see the module docstring).

    Build one with :func:`load`, :func:`~phyrlab.pci.parse_lspci_tv`,
    :func:`~phyrlab.pci.from_sysfs` or :meth:`Topology.build`; it is validated on build.
    ``whitelist_enabled`` switches the kernel's host-bridge whitelist (experiments only).
    """

    name: str
    source: str
    cpu: Cpu
    host_bridges: dict[str, HostBridge]
    devices: dict[str, PciDev]
    whitelist_enabled: bool = True
    description: str = ""
    _chain: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False)
    _hb: dict[str, str] = field(default_factory=dict, repr=False)
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    # -- construction -------------------------------------------------------------------
    @classmethod
    def build(cls, *, name: str, source: str, cpu: Cpu, host_bridges: Iterable[HostBridge],
              devices: Iterable[PciDev], origin: str = "<topology>",
              line_of: Mapping[str, int] | None = None, description: str = "",
              whitelist_enabled: bool = True) -> Topology:
        """Validate and index; every problem is an InputFileError naming ``origin``/device."""
        where = _Where(origin, line_of or {})
        hbs: dict[str, HostBridge] = {}
        for hb in host_bridges:
            if hb.name in hbs:
                raise InputFileError(f"{origin}: duplicate host bridge {hb.name}")
            hbs[hb.name] = hb
        devs: dict[str, PciDev] = {}
        for i, d in enumerate(devices):
            if len(devs) >= MAX_DEVICES:
                raise InputFileError(f"{origin}: more than {MAX_DEVICES} devices")
            if d.bdf in devs:
                raise InputFileError(f"{where(d.bdf)}duplicate BDF {d.bdf} (entry {i})")
            devs[d.bdf] = d
        topo = cls(name=name, source=source, cpu=cpu, host_bridges=hbs, devices=devs,
                   description=description, whitelist_enabled=whitelist_enabled)
        topo._index(where)
        return topo

    def _index(self, where: _Where) -> None:
        devs = self.devices
        for d in devs.values():
            for ref, what in ((d.parent, "parent"), (d.physfn, "physfn")):
                if ref is not None and ref not in devs:
                    raise InputFileError(f"{where(d.bdf)}{what} {ref} is not a device in "
                                         f"this topology (dangling {what})")
            if d.parent is not None:
                p = devs[d.parent]
                if not p.kind.is_bridge:
                    raise InputFileError(f"{where(d.bdf)}parent {p.bdf} (kind {p.kind.value}) "
                                         "is not a bridge")
                if p.domain != d.domain:
                    raise InputFileError(f"{where(d.bdf)}parent {p.bdf} is in another domain")
            if d.physfn is not None and devs[d.physfn].physfn is not None:
                raise InputFileError(f"{where(d.bdf)}physfn {d.physfn} is itself a VF")
        for bdf in devs:
            chain = [bdf]
            seen = {bdf}
            while True:
                up = self._up(chain[-1])
                if up is None:
                    break
                if up in seen:
                    cyc = chain[chain.index(up):] + [up]
                    raise InputFileError(f"{where(bdf)}parent cycle: {' -> '.join(cyc)}")
                if len(chain) >= MAX_DEPTH:
                    raise InputFileError(f"{where(bdf)}hierarchy deeper than {MAX_DEPTH}")
                chain.append(up)
                seen.add(up)
            self._chain[bdf] = tuple(chain)
            root = devs[chain[-1]]
            root = devs[root.physfn] if root.physfn else root
            hb_name = f"{root.domain:04x}:{root.bus:02x}"
            if hb_name not in self.host_bridges:
                raise InputFileError(f"{where(root.bdf)}sits on root bus {hb_name} but no host "
                                     "bridge has that domain:bus (missing parent?)")
            self._hb[bdf] = hb_name
        for d in devs.values():
            if d.acs is not None and d.acs.ctrl & ~d.acs.cap:
                raise InputFileError(f"{where(d.bdf)}ACS ctrl {d.acs.ctrl:#x} enables bits the "
                                     f"capability {d.acs.cap:#x} lacks")
        _check_bars(devs, where)

    def _up(self, bdf: str) -> str | None:
        d = self.devices[bdf]
        if d.physfn is not None:  # pci_upstream_bridge() starts from pci_physfn(dev)
            d = self.devices[d.physfn]
        return d.parent

    # -- lookups ----------------------------------------------------------------------
    def dev(self, x: str | PciDev) -> PciDev:
        """The device for a BDF string or a :class:`PciDev`; ValueError naming an unknown one."""
        bdf = x.bdf if isinstance(x, PciDev) else str(x).strip().lower()
        try:
            return self.devices[bdf]
        except KeyError:
            raise ValueError(f"no PCI device {bdf!r} in topology {self.name!r}") from None

    def upstream_bridge(self, x: str | PciDev) -> PciDev | None:
        """``pci_upstream_bridge()``: the bridge above, None on a root bus (VFs use their PF)."""
        up = self._up(self.dev(x).bdf)
        return None if up is None else self.devices[up]

    def upstream_chain(self, x: str | PciDev) -> tuple[str, ...]:
        """The device, then each ``pci_upstream_bridge()`` in turn up to the root bus."""
        return self._chain[self.dev(x).bdf]

    def host_bridge_of(self, x: str | PciDev) -> HostBridge:
        """``pci_find_host_bridge(dev->bus)``."""
        return self.host_bridges[self._hb[self.dev(x).bdf]]

    def root_bus_devices(self, hb: HostBridge | str) -> list[PciDev]:
        """Functions on the host bridge's root bus in scan (devfn) order."""
        name = hb.name if isinstance(hb, HostBridge) else hb
        on_bus = [d for d in self.devices.values()
                  if d.parent is None and d.physfn is None and self._hb[d.bdf] == name]
        return sorted(on_bus, key=lambda d: d.devfn)

    def host_bridge_dev(self, hb: HostBridge | str) -> PciDev | None:
        """``pci_host_bridge_dev()``: first root-bus function if devfn 00.0 or a Root Port."""
        devs = self.root_bus_devices(hb)
        if not devs:
            return None
        root = devs[0]
        if root.devfn == 0 or root.kind is DevKind.ROOT_PORT:
            return root
        return None

    def children(self, x: str | PciDev) -> list[PciDev]:
        """Functions whose upstream bridge is this one, in BDF order."""
        bdf = self.dev(x).bdf
        return sorted((d for d in self.devices.values() if self._up(d.bdf) == bdf),
                      key=lambda d: d.bdf)

    def endpoints(self) -> list[str]:
        """BDFs of endpoints and RCiEPs (the functions that do DMA), in BDF order."""
        return sorted(b for b, d in self.devices.items()
                      if d.kind in (DevKind.ENDPOINT, DevKind.RCIEP))

    def iommu_of(self, x: str | PciDev) -> str | None:
        """The IOMMU the device sits behind: its own, else its host bridge's."""
        d = self.dev(x)
        return d.iommu if d.iommu is not None else self.host_bridge_of(d).iommu

    # -- copies -----------------------------------------------------------------------
    def replace_devices(self, changed: Mapping[str, PciDev], **changes: Any) -> Topology:
        """A validated copy with some devices replaced (and top-level fields changed)."""
        devs = [changed.get(b, d) for b, d in self.devices.items()]
        kw = dict(name=self.name, source=self.source, cpu=self.cpu,
                  host_bridges=self.host_bridges.values(), devices=devs,
                  description=self.description, whitelist_enabled=self.whitelist_enabled)
        kw.update(changes)
        return Topology.build(origin=f"<copy of {self.name}>", **kw)

    def copy(self) -> Topology:
        """An independent copy with an empty map-type cache."""
        return self.replace_devices({})

    def __deepcopy__(self, memo: dict) -> Topology:
        return self.copy()


class _Where:
    """Formats ``file: line N: device X: `` prefixes for error messages."""

    def __init__(self, origin: str, line_of: Mapping[str, int]):
        self.origin = origin
        self.line_of = line_of

    def __call__(self, bdf: str) -> str:
        line = self.line_of.get(bdf)
        at = f" line {line}:" if line else ""
        return f"{self.origin}:{at} device {bdf}: "


def _check_bars(devs: Mapping[str, PciDev], where: _Where) -> None:
    bars = []
    for d in devs.values():
        seen = set()
        for b in d.bars:
            if b.index in seen:
                raise InputFileError(f"{where(d.bdf)}BAR {b.index} given twice")
            seen.add(b.index)
            if not 0 <= b.index <= 5:
                raise InputFileError(f"{where(d.bdf)}BAR index {b.index} is not 0..5")
            if b.size <= 0 or b.size & (b.size - 1):
                raise InputFileError(f"{where(d.bdf)}BAR {b.index} size {b.size:#x} is not a "
                                     "power of two")
            if b.addr < 0 or b.addr % b.size:
                raise InputFileError(f"{where(d.bdf)}BAR {b.index} address {b.addr:#x} is not "
                                     f"aligned to its size {b.size:#x}")
            if b.end > 1 << 64:
                raise InputFileError(f"{where(d.bdf)}BAR {b.index} ends beyond 2^64")
            bars.append((b.addr, b.end, d.bdf, b.index))
    bars.sort()
    for (a0, e0, d0, i0), (a1, _e1, d1, i1) in zip(bars, bars[1:], strict=False):
        if a1 < e0:
            raise InputFileError(f"{where(d1)}BAR {i1} at {a1:#x} overlaps BAR {i0} of {d0} "
                                 f"({a0:#x}-{e0 - 1:#x})")


# ---------------------------------------------------------------------------- YAML loader
_TOP_KEYS = {"name", "source", "description", "cpu", "host_bridges", "devices"}
_CPU_KEYS = {"vendor", "family", "arch", "name", "model"}
_HB_KEYS = {"domain", "bus", "mem_offset", "iommu", "numa_node", "description", "name"}
_DEV_KEYS = {"bdf", "kind", "vendor", "device", "name", "parent", "physfn", "bars", "acs",
             "iommu", "iommu_group", "class", "comment"}
_BAR_KEYS = {"index", "addr", "size", "prefetchable", "p2pmem"}
_ACS_KEYS = {"cap", "ctrl"}


def load(path: str | Path) -> Topology:
    """Load a topology YAML file (format: ``data/topologies/README.md``).

    Every problem - unknown field, duplicate BDF, dangling parent, cycle, overlapping BAR,
    bad number - is an :class:`~phyrlab.errors.InputFileError` naming the file and the device
    (and its line where it can be found).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InputFileError(f"{path}: cannot read topology file: {e.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise InputFileError(f"{path}: {len(raw)} bytes, more than the {MAX_FILE_BYTES} allowed")
    try:
        text = raw.decode("utf-8")
        doc = yaml.safe_load(text)
    except UnicodeDecodeError:
        raise InputFileError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark is not None else ""
        raise InputFileError(f"{path}:{at}: not valid YAML: {getattr(e, 'problem', e)}") from None
    return from_dict(doc, origin=str(path), text=text)


def from_dict(doc: Any, origin: str = "<dict>", text: str = "") -> Topology:
    """Build a topology from the parsed YAML document (a dict), validating every field."""
    if not isinstance(doc, dict):
        raise InputFileError(f"{origin}: top level must be a mapping, got {type(doc).__name__}")
    _no_unknown(doc, _TOP_KEYS, f"{origin}: top level")
    for key in ("name", "source", "host_bridges", "devices"):
        if key not in doc:
            raise InputFileError(f"{origin}: missing required field {key!r}")
    line_of = _lines_of_bdfs(text)
    cpu_doc = doc.get("cpu") or {}
    if not isinstance(cpu_doc, dict):
        raise InputFileError(f"{origin}: cpu: must be a mapping")
    _no_unknown(cpu_doc, _CPU_KEYS, f"{origin}: cpu")
    cpu = Cpu(vendor=str(cpu_doc.get("vendor", "unknown")),
              family=_int(cpu_doc.get("family", 0), f"{origin}: cpu.family"),
              arch=str(cpu_doc.get("arch", "x86_64")), name=str(cpu_doc.get("name", "")))
    hbs = [_host_bridge(h, f"{origin}: host_bridges[{i}]")
           for i, h in enumerate(_list(doc["host_bridges"], f"{origin}: host_bridges"))]
    dev_docs = _list(doc["devices"], f"{origin}: devices")
    if len(dev_docs) > MAX_DEVICES:
        raise InputFileError(f"{origin}: {len(dev_docs)} devices, more than {MAX_DEVICES}")
    devs = [_device(d, origin, i, line_of) for i, d in enumerate(dev_docs)]
    return Topology.build(name=str(doc["name"]), source=str(doc["source"]), cpu=cpu,
                          host_bridges=hbs, devices=devs, origin=origin, line_of=line_of,
                          description=str(doc.get("description", "")))


def _lines_of_bdfs(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for n, line in enumerate(text.splitlines(), 1):
        m = re.match(r"\s*-?\s*\{?\s*bdf:\s*['\"]?([0-9a-fA-F:.]+)", line)
        if m and m[1].lower() not in out:
            out[m[1].lower()] = n
    return out


def _no_unknown(d: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(str(k) for k in d if k not in allowed)
    if unknown:
        raise InputFileError(f"{where}: unknown field {unknown[0]!r} "
                             f"(allowed: {', '.join(sorted(allowed))})")


def _list(x: Any, where: str) -> list:
    if not isinstance(x, list):
        raise InputFileError(f"{where}: must be a list")
    return x


def _int(x: Any, where: str, size: bool = False) -> int:
    if isinstance(x, bool):
        raise InputFileError(f"{where}: {x!r} is not a number")
    if isinstance(x, int):
        return x
    if isinstance(x, str):
        try:
            return parse_size(x) if size else int(x, 0)
        except ValueError:
            pass
    raise InputFileError(f"{where}: {x!r} is not a{' size' if size else 'n integer'}")


def _bool(x: Any, where: str) -> bool:
    if not isinstance(x, bool):
        raise InputFileError(f"{where}: {x!r} is not true/false")
    return x


def _host_bridge(h: Any, where: str) -> HostBridge:
    if not isinstance(h, dict):
        raise InputFileError(f"{where}: must be a mapping")
    _no_unknown(h, _HB_KEYS, where)
    for k in ("domain", "bus"):
        if k not in h:
            raise InputFileError(f"{where}: missing {k!r}")
    hb = HostBridge(domain=_int(h["domain"], f"{where}.domain"),
                    bus=_int(h["bus"], f"{where}.bus"),
                    mem_offset=_int(h.get("mem_offset", 0), f"{where}.mem_offset"),
                    iommu=None if h.get("iommu") is None else str(h["iommu"]),
                    numa_node=None if h.get("numa_node") is None
                    else _int(h["numa_node"], f"{where}.numa_node"),
                    description=str(h.get("description", "")))
    if not 0 <= hb.bus <= 0xFF or not 0 <= hb.domain <= 0xFFFFFFFF:
        raise InputFileError(f"{where}: bus {hb.bus:#x} / domain {hb.domain:#x} out of range")
    if "name" in h and str(h["name"]).lower() != hb.name:
        raise InputFileError(f"{where}: name {h['name']!r} does not match domain:bus {hb.name}")
    return hb


def _acs(a: Any, where: str) -> Acs:
    if not isinstance(a, dict):
        raise InputFileError(f"{where}: must be a mapping with cap and ctrl")
    _no_unknown(a, _ACS_KEYS, where)

    def bits(v: Any, w: str) -> int:
        if isinstance(v, list):
            out = 0
            for name in v:
                if str(name).upper() not in ACS_BITS:
                    raise InputFileError(f"{w}: unknown ACS bit {name!r} "
                                         f"(known: {', '.join(ACS_BITS)})")
                out |= ACS_BITS[str(name).upper()]
            return out
        n = _int(v, w)
        if not 0 <= n <= 0xFFFF:
            raise InputFileError(f"{w}: {n:#x} is not a 16-bit register value")
        return n

    return Acs(cap=bits(a.get("cap", []), f"{where}.cap"),
               ctrl=bits(a.get("ctrl", []), f"{where}.ctrl"))


def _device(d: Any, origin: str, i: int, line_of: Mapping[str, int]) -> PciDev:
    where = f"{origin}: devices[{i}]"
    if not isinstance(d, dict):
        raise InputFileError(f"{where}: must be a mapping")
    if "bdf" not in d:
        raise InputFileError(f"{where}: missing 'bdf'")
    try:
        bdf = format_bdf(*parse_bdf(d["bdf"]))
    except ValueError as e:
        raise InputFileError(f"{where}: {e}") from None
    line = line_of.get(bdf)
    where = f"{origin}:{f' line {line}:' if line else ''} device {bdf}"
    _no_unknown(d, _DEV_KEYS, where)
    try:
        kind = DevKind(str(d.get("kind", "endpoint")))
    except ValueError:
        raise InputFileError(f"{where}: unknown kind {d.get('kind')!r} (known: "
                             f"{', '.join(k.value for k in DevKind)})") from None
    refs = {}
    for k in ("parent", "physfn"):
        if d.get(k) is not None:
            try:
                refs[k] = format_bdf(*parse_bdf(d[k]))
            except ValueError as e:
                raise InputFileError(f"{where}: {k}: {e}") from None
    bars = []
    for j, b in enumerate(_list(d.get("bars", []), f"{where}: bars")):
        w = f"{where}: bars[{j}]"
        if not isinstance(b, dict):
            raise InputFileError(f"{w}: must be a mapping")
        _no_unknown(b, _BAR_KEYS, w)
        for k in ("addr", "size"):
            if k not in b:
                raise InputFileError(f"{w}: missing {k!r}")
        bars.append(Bar(index=_int(b.get("index", j), f"{w}.index"),
                        addr=_int(b["addr"], f"{w}.addr"),
                        size=_int(b["size"], f"{w}.size", size=True),
                        prefetchable=_bool(b.get("prefetchable", True), f"{w}.prefetchable"),
                        p2pmem=_bool(b.get("p2pmem", False), f"{w}.p2pmem")))
    ids = {}
    for k in ("vendor", "device"):
        if d.get(k) is not None:
            ids[k] = _int(d[k], f"{where}: {k}")
            if not 0 <= ids[k] <= 0xFFFF:
                raise InputFileError(f"{where}: {k} {ids[k]:#x} is not a 16-bit id")
    return PciDev(bdf=bdf, kind=kind, vendor=ids.get("vendor"), device=ids.get("device"),
                  name=str(d.get("name", "")), parent=refs.get("parent"),
                  physfn=refs.get("physfn"), bars=tuple(bars),
                  acs=None if d.get("acs") is None else _acs(d["acs"], f"{where}: acs"),
                  iommu=None if d.get("iommu") is None else str(d["iommu"]),
                  iommu_group=None if d.get("iommu_group") is None
                  else _int(d["iommu_group"], f"{where}: iommu_group"),
                  class_code=None if d.get("class") is None
                  else _int(d["class"], f"{where}: class"))


def with_device(dev: PciDev, **changes: Any) -> PciDev:
    """A copy of ``dev`` with fields changed (``dataclasses.replace``)."""
    return replace(dev, **changes)


__all__ = [
    "ACS_BITS", "Acs", "Bar", "Cpu", "DevKind", "HostBridge", "PCI_ACS_CR", "PCI_ACS_EC",
    "PCI_ACS_REDIR", "PCI_ACS_RR", "PciDev", "Topology", "format_bdf", "from_dict", "load",
    "parse_bdf", "with_device",
]
