"""from_sysfs on a fake sysfs tree (built in tmp_path) and on this machine's /sys."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

import phyrlab.pci as pci
from phyrlab.errors import InputFileError
from phyrlab.pci import DevKind, MapType


def config(pcie_type: int | None, acs: tuple[int, int] | None = None) -> bytes:
    """A 4 KiB config space: a PCIe capability at 0x40, an ACS extended capability at 0x100."""
    cfg = bytearray(4096)
    if pcie_type is not None:
        cfg[0x06] = 0x10  # PCI_STATUS_CAP_LIST
        cfg[0x34] = 0x40
        cfg[0x40], cfg[0x41] = 0x10, 0x00  # PCI_CAP_ID_EXP, no next
        struct.pack_into("<H", cfg, 0x42, (pcie_type << 4) | 2)
    if acs is not None:
        struct.pack_into("<I", cfg, 0x100, 0x0D | (1 << 16))  # ACS, version 1, next 0
        struct.pack_into("<HH", cfg, 0x104, *acs)
    return bytes(cfg)


def make_dev(base: Path, rel: str, vendor: int, device: int, cls: int, cfg: bytes,
             resource: str = "", iommu: str | None = None, group: int | None = None,
             p2pmem: int | None = None, skip: str = "") -> Path:
    d = base / "devices" / rel
    d.mkdir(parents=True)
    files = {"vendor": f"0x{vendor:04x}\n", "device": f"0x{device:04x}\n",
             "class": f"0x{cls:06x}\n", "resource": resource}
    for name, text in files.items():
        if name != skip:
            (d / name).write_text(text)
    (d / "config").write_bytes(cfg)
    if iommu:
        (base / "devices" / "virtual" / "iommu" / iommu).mkdir(parents=True, exist_ok=True)
        os.symlink(base / "devices" / "virtual" / "iommu" / iommu, d / "iommu")
    if group is not None:
        (base / "kernel" / "iommu_groups" / str(group)).mkdir(parents=True, exist_ok=True)
        os.symlink(base / "kernel" / "iommu_groups" / str(group), d / "iommu_group")
    if p2pmem is not None:
        (d / "p2pmem").mkdir()
        (d / "p2pmem" / "size").write_text(f"{p2pmem}\n")
    links = base / "bus" / "pci" / "devices"
    links.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(d, links), links / Path(rel).name)
    return d


def res(*bars: tuple[int, int, int]) -> str:
    lines = [f"0x{a:016x} 0x{a + s - 1:016x} 0x{f:016x}" for a, s, f in bars]
    lines += ["0x0000000000000000 0x0000000000000000 0x0000000000000000"] * (13 - len(bars))
    return "\n".join(lines) + "\n"


MEM64_PREF = 0x0014220C
MEM32 = 0x00040200
SWITCH_ACS = (0x5F, 0x1D)  # cap SV|TB|RR|CR|UF|DT, ctrl SV|RR|CR|UF


@pytest.fixture
def fake(tmp_path: Path) -> Path:
    s = tmp_path / "sys"
    hb = "pci0000:00"
    make_dev(s, f"{hb}/0000:00:00.0", 0x8086, 0x2020, 0x060000, config(None))
    rp = f"{hb}/0000:00:01.0"
    make_dev(s, rp, 0x8086, 0x2030, 0x060400, config(4, (0x5F, 0)), iommu="dmar0", group=1)
    up = f"{rp}/0000:01:00.0"
    make_dev(s, up, 0x10B5, 0x9797, 0x060400, config(5), iommu="dmar0", group=2)
    for slot, (ep, vid, did, bars, p2p) in enumerate([
            ("0000:03:00.0", 0x1DE5, 0x3000,
             [(0xC5E10000, 0x4000, MEM32), (0x3FFE0000000, 256 << 20, MEM64_PREF)], 256 << 20),
            ("0000:04:00.0", 0x10DE, 0x20B0, [(0x38000000000, 64 << 30, MEM64_PREF)], None)]):
        dp = f"{up}/0000:02:{slot * 8:02x}.0"
        make_dev(s, dp, 0x10B5, 0x9797, 0x060400, config(6, SWITCH_ACS), iommu="dmar0",
                 group=3 + slot)
        make_dev(s, f"{dp}/{ep}", vid, did, 0x010802, config(0), res(*bars), iommu="dmar0",
                 group=10 + slot, p2pmem=p2p)
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "cpuinfo").write_text(
        "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel name\t: Xeon\n\n"
        "processor\t: 1\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n")
    return s


def test_fake_tree(fake):
    t = pci.from_sysfs(fake)
    assert t.cpu.vendor == "GenuineIntel" and t.cpu.family == 6  # cpu_data(0): first CPU
    k = {b: d.kind for b, d in t.devices.items()}
    assert k == {"0000:00:00.0": DevKind.HOST_BRIDGE, "0000:00:01.0": DevKind.ROOT_PORT,
                 "0000:01:00.0": DevKind.SWITCH_UPSTREAM,
                 "0000:02:00.0": DevKind.SWITCH_DOWNSTREAM,
                 "0000:02:08.0": DevKind.SWITCH_DOWNSTREAM,
                 "0000:03:00.0": DevKind.ENDPOINT, "0000:04:00.0": DevKind.ENDPOINT}
    assert t.upstream_chain("0000:03:00.0") == (
        "0000:03:00.0", "0000:02:00.0", "0000:01:00.0", "0000:00:01.0")
    nvme = t.devices["0000:03:00.0"]
    assert nvme.iommu == "dmar0" and nvme.iommu_group == 10
    assert [(b.index, b.size, b.prefetchable, b.p2pmem) for b in nvme.bars] == [
        (0, 0x4000, False, False), (1, 256 << 20, True, True)]
    assert t.devices["0000:02:00.0"].acs == pci.Acs(0x5F, 0x1D)
    assert t.devices["0000:00:01.0"].acs == pci.Acs(0x5F, 0)
    r = pci.p2pdma_distance(t, "0000:03:00.0", "0000:04:00.0")
    assert (r.map_type, r.distance) == (MapType.THRU_HOST_BRIDGE, 4)  # ACS; 2030 listed
    assert "pci=disable_acs_redir=0000:02:00.0;0000:02:08.0" in r.reason
    assert pci.find_p2p_bar(t, 0x3FFE0001000)[0].bdf == "0000:03:00.0"


def test_unreadable_config_means_no_acs(fake):
    for p in (fake / "devices").rglob("config"):
        p.write_bytes(p.read_bytes()[:64])
    t = pci.from_sysfs(fake)
    assert all(d.acs is None for d in t.devices.values())
    # kinds fall back to class codes and position
    assert t.devices["0000:00:01.0"].kind is DevKind.ROOT_PORT
    assert t.devices["0000:02:00.0"].kind is DevKind.PCI_BRIDGE


@pytest.mark.parametrize("missing", ["vendor", "device", "class"])
def test_missing_file_is_named(fake, missing):
    (fake / "devices/pci0000:00/0000:00:01.0/0000:01:00.0" / missing).unlink()
    with pytest.raises(InputFileError, match=rf"0000:01:00\.0/{missing}: missing"):
        pci.from_sysfs(fake)


def test_bad_values_are_named(fake):
    d = fake / "devices/pci0000:00/0000:00:01.0/0000:01:00.0"
    (d / "vendor").write_text("banana\n")
    with pytest.raises(InputFileError, match=r"0000:01:00\.0/vendor: 'banana' is not a hex"):
        pci.from_sysfs(fake)


def test_bad_resource_and_links(fake, tmp_path):
    ep = next((fake / "devices").rglob("0000:04:00.0"))
    (ep / "resource").write_text("0x1 0x2\n")
    with pytest.raises(InputFileError, match=r"0000:04:00\.0/resource: line 1: expected"):
        pci.from_sysfs(fake)
    with pytest.raises(InputFileError, match="no PCI bus in this sysfs tree"):
        pci.from_sysfs(tmp_path / "empty")
    (ep / "resource").write_text(res())
    links = fake / "bus/pci/devices"
    os.symlink(tmp_path / "gone", links / "0000:09:00.0")
    with pytest.raises(InputFileError, match=r"0000:09:00\.0: points to .*does not exist"):
        pci.from_sysfs(fake)


@pytest.mark.skipif(not Path("/sys/bus/pci/devices").is_dir(), reason="no /sys/bus/pci here")
def test_live_machine():
    t = pci.from_sysfs()
    assert set(t.devices) == set(os.listdir("/sys/bus/pci/devices"))
    m = pci.experiments.decision_matrix(t)
    assert m.map_type.shape == (len(m.devices), len(m.devices))
