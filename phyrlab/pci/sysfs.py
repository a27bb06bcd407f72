"""Read this machine's PCI topology from sysfs (read-only): ``from_sysfs(root="/sys")``.

What is read, per ``<root>/bus/pci/devices/<BDF>`` (a symlink into ``<root>/devices/``):

- the hierarchy from the symlink's target path (``/sys/devices/pci0000:00/0000:00:1c.0/
  0000:01:00.0``): each BDF directory's parent BDF directory is its upstream bridge, and the
  ``pciDDDD:BB`` directory is its host bridge (``drivers/pci/probe.c`` names it so);
- ``vendor``, ``device``, ``class`` (required: a missing one is an error naming the file);
- ``resource``: ``start end flags`` per resource; lines 0-5 with ``IORESOURCE_MEM`` (0x200) are
  the memory BARs, ``IORESOURCE_PREFETCH`` (0x2000) marks prefetchable ones;
- ``config``: the PCI Express capability's Device/Port Type (root port, switch ports...) and the
  ACS extended capability (``PCI_EXT_CAP_ID_ACS`` 0x0d: Capability and Control words). Without
  root only the first 64 bytes are readable, so ACS then reads as absent (said in
  ``Topology.description``);
- the ``iommu`` and ``iommu_group`` symlinks (absent in a VM without a vIOMMU), ``physfn``
  (SR-IOV VFs), and ``p2pmem/size`` (pci_p2pdma_add_resource() was called): the smallest memory
  BAR at least that big is marked as the P2P BAR (sysfs does not say which BAR it was);
- the CPU from ``/proc/cpuinfo`` (``vendor_id``, ``cpu family``) when ``root`` is ``/sys``,
  or from ``<root>/../proc/cpuinfo`` if a fake tree has one.

Simplification: host-bridge window offsets are not in sysfs; they are taken as 0 (true on x86).
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

from phyrlab.errors import InputFileError
from phyrlab.pci.topology import (
    MAX_DEVICES,
    Acs,
    Bar,
    Cpu,
    DevKind,
    HostBridge,
    PciDev,
    Topology,
    format_bdf,
    parse_bdf,
)

_MAX_READ = 1 << 16
IORESOURCE_IO = 0x100
IORESOURCE_MEM = 0x200
IORESOURCE_PREFETCH = 0x2000
PCI_CAP_ID_EXP = 0x10
PCI_EXT_CAP_ID_ACS = 0x0D
_PCIE_TYPES = {0x0: DevKind.ENDPOINT, 0x1: DevKind.ENDPOINT, 0x4: DevKind.ROOT_PORT,
               0x5: DevKind.SWITCH_UPSTREAM, 0x6: DevKind.SWITCH_DOWNSTREAM,
               0x7: DevKind.PCI_BRIDGE, 0x8: DevKind.PCI_BRIDGE, 0x9: DevKind.RCIEP,
               0xA: DevKind.RCIEP}
_BDF_DIR = re.compile(r"^[0-9a-f]{4,8}:[0-9a-f]{2}:[01][0-9a-f]\.[0-7]$")
_HB_DIR = re.compile(r"^pci([0-9a-f]{4,8}):([0-9a-f]{2})$")


def _read(path: Path, required: bool = True) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read(_MAX_READ).decode("ascii", "replace")
    except FileNotFoundError:
        if required:
            raise InputFileError(f"{path}: missing (every PCI device in sysfs has it)") from None
        return None
    except OSError as e:
        if required:
            raise InputFileError(f"{path}: cannot read: {e.strerror}") from None
        return None


def _hex(path: Path) -> int:
    text = _read(path)
    try:
        return int(text.strip(), 16)
    except ValueError:
        raise InputFileError(f"{path}: {text.strip()[:40]!r} is not a hex number") from None


def _bars(path: Path) -> list[Bar]:
    text = _read(path, required=False)
    if text is None:
        return []
    bars = []
    for i, line in enumerate(text.splitlines()[:6]):
        parts = line.split()
        if len(parts) != 3:
            raise InputFileError(f"{path}: line {i + 1}: expected 'start end flags', "
                                 f"got {line[:60]!r}")
        try:
            start, end, flags = (int(p, 16) for p in parts)
        except ValueError:
            raise InputFileError(f"{path}: line {i + 1}: not hex numbers: {line[:60]!r}") from None
        if flags & IORESOURCE_MEM and end > start:
            bars.append(Bar(i, start, end - start + 1,
                            prefetchable=bool(flags & IORESOURCE_PREFETCH)))
    return bars


def _config(path: Path) -> tuple[int | None, Acs | None, bool]:
    """(PCIe Device/Port Type, ACS, truncated) from a config-space dump; None: not readable."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            cfg = f.read(4096)
    except OSError:
        return None, None, True
    truncated = len(cfg) < min(size, 4096)
    ptype = None
    if len(cfg) >= 64 and cfg[0x06] & 0x10:  # PCI_STATUS_CAP_LIST
        pos, seen = cfg[0x34] & 0xFC, 0
        while pos and pos + 4 <= len(cfg) and seen < 48:
            if cfg[pos] == PCI_CAP_ID_EXP:
                ptype = (struct.unpack_from("<H", cfg, pos + 2)[0] >> 4) & 0xF
                break
            pos, seen = cfg[pos + 1] & 0xFC, seen + 1
    acs = None
    if len(cfg) > 0x100:
        pos, seen = 0x100, 0
        while pos and pos + 8 <= len(cfg) and seen < 128:
            hdr = struct.unpack_from("<I", cfg, pos)[0]
            if hdr in (0, 0xFFFFFFFF):
                break
            if hdr & 0xFFFF == PCI_EXT_CAP_ID_ACS:
                cap, ctrl = struct.unpack_from("<HH", cfg, pos + 4)
                acs = Acs(cap=cap & 0x7F, ctrl=ctrl & 0x7F & cap)
                break
            pos, seen = (hdr >> 20) & 0xFFC, seen + 1
    return ptype, acs, truncated


def _cpu(cpuinfo: Path | None) -> Cpu:
    if cpuinfo is None:
        return Cpu()
    text = _read(cpuinfo, required=False)
    if text is None:
        return Cpu()
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # first processor only: cpu_data(0)
        k, _, v = line.partition(":")
        fields[k.strip()] = v.strip()
    try:
        family = int(fields.get("cpu family", "0"))
    except ValueError:
        raise InputFileError(f"{cpuinfo}: bad 'cpu family' {fields['cpu family']!r}") from None
    arch = "x86_64" if "vendor_id" in fields else os.uname().machine
    return Cpu(vendor=fields.get("vendor_id", fields.get("CPU implementer", "unknown")),
               family=family, arch=arch, name=fields.get("model name", ""))


def from_sysfs(root: str | Path = "/sys", *, cpu: Cpu | None = None,
               cpuinfo: str | Path | None = None, name: str | None = None) -> Topology:
    """This machine's topology (or a sysfs tree rooted at ``root``); read-only.

    Missing required files, unparsable values or a device directory outside any
    ``pciDDDD:BB`` host bridge are :class:`~phyrlab.errors.InputFileError` naming the path.
    """
    root = Path(root)
    devdir = root / "bus" / "pci" / "devices"
    if not devdir.is_dir():
        raise InputFileError(f"{devdir}: missing (no PCI bus in this sysfs tree)")
    entries = sorted(os.listdir(devdir))
    if len(entries) > MAX_DEVICES:
        raise InputFileError(f"{devdir}: {len(entries)} devices, more than {MAX_DEVICES}")
    if cpuinfo is None:
        cands = [Path("/proc/cpuinfo")] if root.resolve() == Path("/sys") else \
            [root.parent / "proc" / "cpuinfo"]
        cpuinfo = next((c for c in cands if c.exists()), None)
    hbs: dict[str, HostBridge] = {}
    devs: list[PciDev] = []
    acs_unreadable = 0
    for entry in entries:
        link = devdir / entry
        if not _BDF_DIR.match(entry):
            raise InputFileError(f"{link}: {entry!r} is not a PCI device name (dddd:bb:dd.f)")
        real = Path(os.path.realpath(link))
        if not real.is_dir():
            raise InputFileError(f"{link}: points to {real}, which does not exist")
        parts = real.parts
        hb_i = max((i for i, p in enumerate(parts) if _HB_DIR.match(p)), default=None)
        if hb_i is None:
            raise InputFileError(f"{link}: {real} is not below a pciDDDD:BB host bridge")
        m = _HB_DIR.match(parts[hb_i])
        hb = HostBridge(domain=int(m[1], 16), bus=int(m[2], 16))
        hbs.setdefault(hb.name, hb)
        between = [p for p in parts[hb_i + 1:-1] if _BDF_DIR.match(p)]
        parent = between[-1] if between else None
        bdf = format_bdf(*parse_bdf(entry))
        cls = _hex(real / "class")
        ptype, acs, truncated = _config(real / "config")
        acs_unreadable += truncated
        if ptype in _PCIE_TYPES:
            kind = _PCIE_TYPES[ptype]
        elif cls >> 8 == 0x0604:
            kind = DevKind.ROOT_PORT if parent is None else DevKind.PCI_BRIDGE
        elif cls >> 8 == 0x0600:
            kind = DevKind.HOST_BRIDGE
        else:
            kind = DevKind.RCIEP if parent is None else DevKind.ENDPOINT
        bars = _bars(real / "resource")
        p2p_size = _read(real / "p2pmem" / "size", required=False)
        if p2p_size is not None and p2p_size.strip().isdigit() and int(p2p_size) > 0:
            fit = [b for b in bars if b.size >= int(p2p_size)]
            if fit:
                best = min(fit, key=lambda b: b.size)
                bars = [Bar(b.index, b.addr, b.size, b.prefetchable, b is best) for b in bars]
        iommu = real / "iommu"
        group = real / "iommu_group"
        physfn = real / "physfn"
        devs.append(PciDev(
            bdf=bdf, kind=kind, vendor=_hex(real / "vendor"), device=_hex(real / "device"),
            parent=parent, bars=tuple(bars), acs=acs, class_code=cls,
            physfn=os.path.basename(os.path.realpath(physfn)) if physfn.is_symlink() else None,
            iommu=os.path.basename(os.path.realpath(iommu)) if iommu.is_symlink() else None,
            iommu_group=int(os.path.basename(os.path.realpath(group)))
            if group.is_symlink() else None))
    note = ("ACS read from config space" if not acs_unreadable else
            f"config space only partly readable for {acs_unreadable} devices (not root?): "
            "their ACS reads as absent")
    return Topology.build(name=name or f"sysfs:{root}", source=f"sysfs at {root}",
                          cpu=cpu or _cpu(Path(cpuinfo) if cpuinfo else None),
                          host_bridges=hbs.values(), devices=devs, origin=str(devdir),
                          description=note)
