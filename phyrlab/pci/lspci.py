"""Read ``lspci -t`` / ``-tv`` / ``-tvnn`` / ``-tvv`` text into a :class:`Topology`.

The grammar is the one pciutils' ``ls-tree.c`` prints (``show_tree_bridge``/``_bus``/``_dev``,
read in the pciutils repository): the host level starts with ``-``; a root bus is
``[dddd:bb]-``, several root buses hang from ``+-``/``\\-`` connectors; a device is ``dd.f``;
a bridge adds ``-[ss]-`` or ``-[ss-ee]-`` and then ``-`` and its bus; a bus of one device is
``--dev``, of several ``+-dev`` ... ``\\-dev``; a continuation line repeats ``|`` under every
open ``+`` and blanks elsewhere; with ``-v`` a leaf is followed by two spaces and its name
(bridges never get names); ``-vv`` adds ``Memory at`` lines. Every child's connector sits two
columns left of its ``dd.f``; the parser keys open buses by that column.

What the text lacks, the parser infers and says so (``PciDev.name`` keeps lspci's words):
bridges on a root bus are root ports; a bridge below one with bridges under it is a switch
upstream port and those are downstream ports; other bridges are PCI bridges; a leaf on a root
bus at 00.0 (or named "Host Bridge") is a host-bridge function, other root-bus leaves RCiEPs.
Vendor ids come from ``[vvvv:dddd]`` (``-nn``), else from the vendor name (a small table);
device ids only from ``-nn`` or a table of whitelist-relevant host bridges. Plain ``lspci -t``
has no names at all: pass ``host_bridge_ids={"0000:00": "8086:2020"}`` (root bus, or a BDF) and
``cpu=Cpu("AuthenticAMD", 0x17)`` to say what the machine is. Host-bridge window offsets are 0
(lspci does not show them) and there are no IOMMUs or ACS bits (lspci -t does not show them).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from phyrlab.errors import InputFileError
from phyrlab.pci.topology import (
    Bar,
    Cpu,
    DevKind,
    HostBridge,
    PciDev,
    Topology,
    format_bdf,
    parse_bdf,
)
from phyrlab.units import parse_size

MAX_TEXT_BYTES = 1 << 20
MAX_LINES = 20000

_LABEL = re.compile(r"\[([0-9a-f]{4,8}):([0-9a-f]{2})\]-")
_DEV = re.compile(r"([01][0-9a-f])\.([0-7])")
_MARKER = re.compile(r"-\[([0-9a-f]{2})(?:-([0-9a-f]{2}))?\]-")
_IDS_NN = re.compile(r"^(.*?)\s*\[([0-9a-f]{4}):([0-9a-f]{4})\]\s*$", re.I)
_IDS_N = re.compile(r"^(?:Device )?([0-9a-f]{4}):([0-9a-f]{4})\s*$", re.I)
_BASES = re.compile(
    r"^(?:Region (\d): )?(?:\[virtual\] |\[enhanced\] )?(Memory at|I/O ports at) "
    r"(\S+)(?: \(([^)]*)\))?(?: \[disabled\])?(?: \[size=(\d+[KMGT]?)\])?\s*$")

#: pci.ids vendor names as ``lspci -v`` prints them (only unambiguous ones).
VENDOR_NAMES = {
    "Intel Corporation": 0x8086,
    "Advanced Micro Devices, Inc. [AMD]": 0x1022,
    "Advanced Micro Devices, Inc. [AMD/ATI]": 0x1002,
    "NVIDIA Corporation": 0x10DE,
    "Mellanox Technologies": 0x15B3,
    "Samsung Electronics Co Ltd": 0x144D,
    "PLX Technology, Inc.": 0x10B5,
    "Broadcom / LSI": 0x1000,
    "ASMedia Technology Inc.": 0x1B21,
    "Eideticom, Inc": 0x1DE5,
    "Microsemi / PMC / IDT": 0x11F8,
}

#: host-bridge functions whose ids decide the P2PDMA whitelist, by their pci.ids device name.
HOST_BRIDGE_NAMES = {
    "Sky Lake-E DMI3 Registers": (0x8086, 0x2020),
    "Xeon E7 v3/Xeon E5 v3/Core i7 DMI2": (0x8086, 0x2F00),
    "Xeon E5/Core i7 DMI2": (0x8086, 0x3C00),
    "Ice Lake Memory Map/VT-d": (0x8086, 0x09A2),
    "Family 17h (Models 00h-0fh) Root Complex": (0x1022, 0x1450),
    "Starship/Matisse Root Complex": (0x1022, 0x1480),
    "82G33/G31/P35/P31 Express DRAM Controller": (0x8086, 0x29C0),
    "440FX - 82441FX PMC [Natoma]": (0x8086, 0x1237),
}


@dataclass
class _Bus:
    parent: str | None  # bridge BDF, None for a root bus
    domain: int
    number: int
    host_level: bool = False  # the list of root buses itself


@dataclass
class _Node:
    bdf: str
    parent: str | None
    line: int
    bridge: bool
    name: str = ""
    bars: list | None = None


class _Parser:
    def __init__(self, text: str, origin: str):
        self.origin = origin
        self.text = text
        self.open: dict[int, _Bus] = {}
        self.nodes: dict[str, _Node] = {}
        self.last_leaf: _Node | None = None
        self.slot = 0
        self.lineno = 0
        self.line = ""

    def fail(self, col: int, expected: str) -> InputFileError:
        snippet = self.line[col:col + 20]
        return InputFileError(f"{self.origin}: line {self.lineno}: cannot parse {snippet!r} at "
                              f"column {col + 1}: expected {expected} (line: {self.line!r})")

    def run(self) -> dict[str, _Node]:
        started = False
        for lineno, raw in enumerate(self.text.splitlines(), 1):
            line = raw.rstrip()
            self.lineno, self.line = lineno, line
            if not line.strip():
                continue
            i = len(line) - len(line.lstrip(" |"))
            rest = line[i:]
            if self.last_leaf is not None and started and _BASES.match(rest.strip()):
                self.bases(rest.strip())
                continue
            if not started:
                if i != 0 or not line.startswith("-"):
                    raise self.fail(i, "the tree to start with '-' at column 1")
                started = True
                self.host_level(1)
                continue
            if line[i:i + 2] not in ("+-", "\\-"):
                raise self.fail(i, "'+-' or '\\-' after the '|' columns")
            if i not in self.open:
                raise self.fail(i, "a connector under an open bus (no '+' above this column)")
            self.child(i)
        if not started:
            raise InputFileError(f"{self.origin}: no lspci -t tree found (empty text)")
        return self.nodes

    def host_level(self, col: int) -> None:
        line = self.line
        if line[col:col + 1] == "[":
            self.label(col, _Bus(None, 0, 0, host_level=True))
        elif line[col:col + 2] in ("+-", "\\-"):
            self.open[col] = _Bus(None, 0, 0, host_level=True)
            self.child(col)
        else:
            raise self.fail(col, "'[dddd:bb]' or '+-[dddd:bb]' after the leading '-'")

    def close_deeper(self, col: int) -> None:
        for c in [c for c in self.open if c > col]:
            del self.open[c]

    def child(self, col: int) -> None:
        """A connector at ``col`` (``+-``, ``\\-`` or ``--``) followed by a label or device."""
        bus = self.open[col]
        self.close_deeper(col)
        if self.line[col] == "\\" or self.line[col] == "-":
            del self.open[col]  # last (or only) child of that bus
        tok = col + 2
        if bus.host_level:
            self.label(tok, bus)
        else:
            self.device(tok, bus)

    def label(self, col: int, bus: _Bus) -> None:
        m = _LABEL.match(self.line, col)
        if not m:
            raise self.fail(col, "a root bus '[dddd:bb]-'")
        root = _Bus(None, int(m[1], 16), int(m[2], 16))
        self.bus(m.end(), root)

    def bus(self, col: int, bus: _Bus) -> None:
        """Bus contents start at ``col``: nothing, or a connector and a device."""
        line = self.line
        if col >= len(line):
            return  # an empty bus (a bridge with nothing below)
        if line[col:col + 2] not in ("+-", "\\-", "--"):
            raise self.fail(col, "'+-', '\\-' or '--' before a device")
        self.open[col] = bus
        self.child(col)

    def device(self, col: int, bus: _Bus) -> None:
        m = _DEV.match(self.line, col)
        if not m:
            raise self.fail(col, "a device 'dd.f'")
        bdf = format_bdf(bus.domain, bus.number, int(m[1], 16), int(m[2]))
        if bdf in self.nodes:
            raise self.fail(col, f"a new device, but {bdf} was already listed on line "
                                 f"{self.nodes[bdf].line}")
        if len(self.nodes) >= 4096:
            raise self.fail(col, "at most 4096 devices")
        end = m.end()
        mk = _MARKER.match(self.line, end)
        if mk:
            node = _Node(bdf, bus.parent, self.lineno, bridge=True)
            self.nodes[bdf] = node
            self.last_leaf = None
            after = mk.end()
            if self.line[after:after + 1] != "-":
                raise self.fail(after, "'-' after the bridge's bus range")
            self.bus(after + 1, _Bus(bdf, bus.domain, int(mk[1], 16)))
            return
        tail = self.line[end:]
        if tail and not tail.startswith("  "):
            raise self.fail(end, "two spaces and a name, a bridge '-[bb]-', or end of line")
        node = _Node(bdf, bus.parent, self.lineno, bridge=False, name=tail.strip(), bars=[])
        self.nodes[bdf] = node
        self.last_leaf = node
        self.slot = 0

    def bases(self, text: str) -> None:
        m = _BASES.match(text)
        assert m and self.last_leaf is not None and self.last_leaf.bars is not None
        if m[2] != "Memory at" or not m[5]:
            return
        try:
            addr = int(m[3], 16)
        except ValueError:
            return  # <unassigned> / <ignored>
        # show_bases() skips empty slots and a 64-bit BAR takes two: best-effort index
        index = int(m[1]) if m[1] else self.slot
        self.slot = index + (2 if m[4] and "64-bit" in m[4] else 1)
        pref = bool(m[4]) and "non-prefetchable" not in m[4]
        self.last_leaf.bars.append(Bar(index, addr, parse_size(m[5]), prefetchable=pref))


def _ids(name: str) -> tuple[int | None, int | None, str]:
    m = _IDS_N.match(name)
    if m:
        return int(m[1], 16), int(m[2], 16), ""
    m = _IDS_NN.match(name)
    if m:
        return int(m[2], 16), int(m[3], 16), m[1]
    for vname, vid in VENDOR_NAMES.items():
        if name.startswith(vname + " ") or name == vname:
            dname = name[len(vname):].strip()
            hb = HOST_BRIDGE_NAMES.get(dname)
            if hb and hb[0] == vid:
                return vid, hb[1], name
            return vid, None, name
    return None, None, name


def _as_ids(x: str | tuple[int, int], where: str) -> tuple[int, int]:
    if isinstance(x, tuple) and len(x) == 2:
        return int(x[0]), int(x[1])
    m = _IDS_N.match(str(x))
    if not m:
        raise ValueError(f"{where}: ids {x!r} are not 'vvvv:dddd'")
    return int(m[1], 16), int(m[2], 16)


def parse_lspci_tv(text: str, *, cpu: Cpu | None = None,
                   host_bridge_ids: Mapping[str, str | tuple[int, int]] | None = None,
                   name: str = "lspci", source: str = "lspci -tv output",
                   origin: str = "<lspci -t text>") -> Topology:
    """Parse ``lspci -t`` / ``-tv`` / ``-tvnn`` / ``-tvv`` output (see the module docstring).

    ``host_bridge_ids`` maps a root bus (``"0000:00"``) or a BDF to ``"vvvv:dddd"``: for a root
    bus it sets the ids of the function ``pci_host_bridge_dev()`` would pick (its first). Text
    that does not parse is an :class:`~phyrlab.errors.InputFileError` naming line and column.
    """
    if not isinstance(text, str):
        raise InputFileError(f"{origin}: expected lspci text (str), got {type(text).__name__}")
    if len(text.encode("utf-8", "replace")) > MAX_TEXT_BYTES:
        raise InputFileError(f"{origin}: text larger than {MAX_TEXT_BYTES} bytes")
    if text.count("\n") > MAX_LINES:
        raise InputFileError(f"{origin}: more than {MAX_LINES} lines")
    nodes = _Parser(text, origin).run()
    kids: dict[str | None, list[_Node]] = {}
    for n in nodes.values():
        kids.setdefault(n.parent, []).append(n)

    def kind(n: _Node) -> DevKind:
        if n.bridge:
            if n.parent is None:
                return DevKind.ROOT_PORT
            pk = kinds[n.parent]
            if pk is DevKind.SWITCH_UPSTREAM:
                return DevKind.SWITCH_DOWNSTREAM
            if any(k.bridge for k in kids.get(n.bdf, [])) and pk in (
                    DevKind.ROOT_PORT, DevKind.SWITCH_DOWNSTREAM):
                return DevKind.SWITCH_UPSTREAM
            return DevKind.PCI_BRIDGE
        if n.parent is None:
            if n.bdf.endswith(":00.0") or "host bridge" in n.name.lower():
                return DevKind.HOST_BRIDGE
            return DevKind.RCIEP
        return DevKind.ENDPOINT

    kinds: dict[str, DevKind] = {}
    for n in nodes.values():  # parents come before children in lspci order
        kinds[n.bdf] = kind(n)
    devs: dict[str, PciDev] = {}
    for n in nodes.values():
        vid, did, _ = _ids(n.name) if n.name else (None, None, "")
        devs[n.bdf] = PciDev(bdf=n.bdf, kind=kinds[n.bdf], vendor=vid, device=did,
                             name=n.name, parent=n.parent, bars=tuple(n.bars or ()))
    roots = sorted({(d.domain, d.bus) for d in devs.values() if d.parent is None})
    hbs = [HostBridge(domain=dom, bus=bus) for dom, bus in roots]
    for key, ids in (host_bridge_ids or {}).items():
        vid, did = _as_ids(ids, f"host_bridge_ids[{key!r}]")
        key = str(key).lower()
        if key.count(":") == 1:
            first = sorted((d for d in devs.values() if d.parent is None
                            and f"{d.domain:04x}:{d.bus:02x}" == key), key=lambda d: d.devfn)
            if not first:
                raise ValueError(f"host_bridge_ids: no root bus {key!r} in the lspci text "
                                 f"(root buses: {', '.join(h.name for h in hbs)})")
            bdf = first[0].bdf
        else:
            bdf = format_bdf(*parse_bdf(key))
            if bdf not in devs:
                raise ValueError(f"host_bridge_ids: no device {bdf} in the lspci text")
        devs[bdf] = replace(devs[bdf], vendor=vid, device=did)
    line_of = {b: n.line for b, n in nodes.items()}
    return Topology.build(name=name, source=source, cpu=cpu or Cpu(), host_bridges=hbs,
                          devices=devs.values(), origin=origin, line_of=line_of)
