"""``phyrlab inspect``: the CLI on this machine, and the report on fake sysfs / pagemap files."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from phyrlab import inspect as machine

ROOT = Path(__file__).resolve().parent.parent


def _dev(sys_root: Path, rel: str, vendor: int, device: int, cls: int, pcie_type: int | None,
         acs: tuple[int, int] | None = None) -> None:
    """One function in a fake sysfs tree (config space with PCIe and ACS capabilities)."""
    d = sys_root / "devices" / rel
    d.mkdir(parents=True)
    (d / "vendor").write_text(f"0x{vendor:04x}\n")
    (d / "device").write_text(f"0x{device:04x}\n")
    (d / "class").write_text(f"0x{cls:06x}\n")
    cfg = bytearray(4096)
    if pcie_type is not None:
        cfg[0x06], cfg[0x34], cfg[0x40] = 0x10, 0x40, 0x10
        struct.pack_into("<H", cfg, 0x42, (pcie_type << 4) | 2)
    if acs is not None:
        struct.pack_into("<I", cfg, 0x100, 0x0D | (1 << 16))
        struct.pack_into("<HH", cfg, 0x104, *acs)
    (d / "config").write_bytes(bytes(cfg))
    links = sys_root / "bus" / "pci" / "devices"
    links.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.relpath(d, links), links / Path(rel).name)


@pytest.fixture
def fake_sys(tmp_path: Path) -> Path:
    """Intel host bridge 8086:2020 (whitelisted), a root port, a switch with two NVMe below
    two downstream ports whose ACS redirects; no IOMMU groups."""
    s = tmp_path / "sys"
    hb = "pci0000:00"
    _dev(s, f"{hb}/0000:00:00.0", 0x8086, 0x2020, 0x060000, None)
    rp = f"{hb}/0000:00:01.0"
    _dev(s, rp, 0x8086, 0x2030, 0x060400, 4)
    up = f"{rp}/0000:01:00.0"
    _dev(s, up, 0x10B5, 0x9797, 0x060400, 5)
    for slot in (0, 1):
        dp = f"{up}/0000:02:0{slot}.0"
        _dev(s, dp, 0x10B5, 0x9797, 0x060400, 6, acs=(0x1D, 0x0C))  # RR|CR on
        _dev(s, f"{dp}/0000:0{3 + slot}:00.0", 0x144D, 0xA808, 0x010802, 0)
    return s


def test_report_on_a_fake_tree_without_iommu_and_pagemap(fake_sys, tmp_path):
    out = machine.inspect_machine(size=1 << 20, sysfs_root=str(fake_sys),
                                  pagemap_path=str(tmp_path / "no-pagemap"))
    assert "7 functions, 1 host bridges" in out
    assert "0000:02:00.0 switch_downstream [10b5:9797]  (ACS ctrl 0xc (redirect))" in out
    assert "IOMMU groups: none" in out
    # 03 and 04 meet at the switch upstream port but ACS redirects: through the host bridge,
    # which is whitelisted (8086:2020) -> THRU_HOST_BRIDGE both ways
    assert "over 2 ordered pairs of endpoints: BUS_ADDR 0, THRU_HOST_BRIDGE 2, " \
        "NOT_SUPPORTED 0" in out
    assert "P2P memory providers (p2pmem in sysfs): none" in out
    assert f"cannot open {tmp_path / 'no-pagemap'}" in out


def test_report_without_pci_and_with_hidden_pfns(tmp_path):
    zeros = tmp_path / "pagemap"
    zeros.write_bytes(b"")  # a short read, as a pagemap that gives nothing
    out = machine.inspect_machine(size=1 << 16, sysfs_root=str(tmp_path / "empty"),
                                  pagemap_path=str(zeros))
    assert "no PCI topology from" in out and "missing (no PCI bus" in out
    assert "short read" in out


def test_contiguity_stats_by_hand():
    pfns = np.array([100, 101, 102, 200, 300, 301], dtype=np.uint64)  # runs 3, 1, 2
    assert machine.contiguity_stats(pfns) == {
        "pages": 6, "runs": 3, "mean_run_pages": 2.0, "median_run_pages": 2.0,
        "longest_run_pages": 3, "pages_in_2MiB_runs_pct": 0.0}
    huge = np.arange(1024, 1024 + 600, dtype=np.uint64)  # one run of 600 >= 512 pages
    assert machine.contiguity_stats(huge)["pages_in_2MiB_runs_pct"] == 100.0
    with pytest.raises(ValueError, match="size 0"):
        machine.real_buffer(0)


def test_cli_inspect_on_this_machine():
    r = subprocess.run([sys.executable, "-m", "phyrlab.cli", "inspect", "--size", "4194304"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.startswith("== phyrlab inspect: this machine")
    assert "PCI tree (sysfs at /sys)" in out or "no PCI topology from /sys" in out
    got = machine.real_buffer(4 << 20)
    if isinstance(got, str):  # PFNs hidden here: the report says why instead of failing
        assert "real buffer of 4 MiB:" in out
    else:
        assert "real buffer of 4 MiB (page frames from /proc/self/pagemap)" in out
        assert "pfn_run" in out and "pages_in_2MiB_runs_pct" in out
        buf, _ = got
        assert machine.contiguity_stats(buf.pfns)["pages"] in (1024, 1025)
