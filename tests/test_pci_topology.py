"""Topology model and YAML loader: structure, kernel helper walks, and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

import phyrlab.pci as pci
from phyrlab.errors import InputFileError
from phyrlab.pci import DevKind

TOPO = Path(__file__).resolve().parents[1] / "data" / "topologies"
FILES = sorted(TOPO.glob("*.yaml"))


def test_at_least_six_cited_topologies():
    names = {f.stem for f in FILES}
    assert {"switch-nvme-gpu-nic", "switch-acs-redirect", "dual-socket-haswell",
            "amd-zen-rome", "unlisted-host-bridge", "qemu-q35-vm"} <= names
    for f in FILES:
        t = pci.load(f)
        assert len(t.source) > 40, f  # each cites where its facts come from
        assert t.endpoints()


def test_devices_include_bridges_and_functions():
    t = pci.load(TOPO / "switch-nvme-gpu-nic.yaml")
    assert t.devices["0000:18:00.0"].kind is DevKind.SWITCH_UPSTREAM
    assert t.devices["0000:19:08.0"].kind is DevKind.SWITCH_DOWNSTREAM
    assert t.devices["0000:1c:00.1"].devfn == 1
    assert t.upstream_chain("0000:1a:00.0") == (
        "0000:1a:00.0", "0000:19:00.0", "0000:18:00.0", "0000:17:00.0")
    assert t.upstream_bridge("0000:17:00.0") is None  # root bus: pci_upstream_bridge() NULL
    assert t.host_bridge_of("0000:1b:00.0").name == "0000:17"
    # pci_host_bridge_dev(): 00.0 on bus 0, the Root Port 17:00.0 on bus 0x17
    assert t.host_bridge_dev("0000:00").bdf == "0000:00:00.0"
    assert t.host_bridge_dev("0000:17").bdf == "0000:17:00.0"
    assert [d.bdf for d in t.children("0000:19:10.0")] == ["0000:1c:00.0", "0000:1c:00.1"]
    acs = pci.load(TOPO / "switch-acs-redirect.yaml")
    assert acs.devices["0000:19:00.0"].acs.ctrl == 0x1D  # SV|RR|CR|UF
    assert acs.iommu_of("0000:1a:00.0") == "dmar1"


def test_host_bridge_dev_needs_devfn0_or_root_port():
    base = {"name": "x", "source": "test", "host_bridges": [{"domain": 0, "bus": 0}]}
    t = pci.from_dict({**base, "devices": [{"bdf": "0000:00:02.0", "kind": "rciep"}]})
    assert t.host_bridge_dev("0000:00") is None  # first is neither 00.0 nor a root port
    t = pci.from_dict({**base, "devices": [{"bdf": "0000:00:02.0", "kind": "root_port"},
                                           {"bdf": "0000:00:03.0", "kind": "rciep"}]})
    assert t.host_bridge_dev("0000:00").bdf == "0000:00:02.0"


def test_vf_walks_up_from_its_pf():
    doc = {"name": "sriov", "source": "test", "host_bridges": [{"domain": 0, "bus": 0}],
           "devices": [
               {"bdf": "0000:00:01.0", "kind": "root_port"},
               {"bdf": "0000:01:00.0", "parent": "0000:00:01.0"},
               {"bdf": "0000:02:00.1", "physfn": "0000:01:00.0"}]}
    t = pci.from_dict(doc)
    assert t.upstream_chain("0000:02:00.1") == ("0000:02:00.1", "0000:00:01.0")
    assert pci.calc_map_type_and_dist(t, "0000:01:00.0", "0000:02:00.1")[:2] == (
        pci.MapType.BUS_ADDR, 2)


def test_copy_is_independent():
    t = pci.load(TOPO / "amd-zen-rome.yaml")
    c = t.copy()
    c.devices.pop("0000:42:00.0")
    assert "0000:42:00.0" in t.devices


GOOD = """\
name: t
source: test
host_bridges:
  - {domain: 0, bus: 0}
devices:
  - {bdf: "0000:00:00.0", kind: host_bridge, vendor: 0x8086, device: 0x2020}
  - {bdf: "0000:00:01.0", kind: root_port}
  - bdf: "0000:01:00.0"
    parent: "0000:00:01.0"
    bars:
      - {index: 0, addr: 0x100000, size: 1M}
"""


def write(tmp_path, text, name="t.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_good_file_loads(tmp_path):
    t = pci.load(write(tmp_path, GOOD))
    assert t.devices["0000:01:00.0"].bars[0].size == 1 << 20


@pytest.mark.parametrize("edit,match", [
    (("  - {bdf: \"0000:00:01.0\", kind: root_port}",
      "  - {bdf: \"0000:00:01.0\", kind: root_port, parent: \"0000:02:00.0\"}\n"
      "  - {bdf: \"0000:02:00.0\", kind: pci_bridge, parent: \"0000:00:01.0\"}"),
     r"t\.yaml: line 7: device 0000:00:01\.0: parent cycle: 0000:00:01\.0 -> 0000:02:00\.0 "
     r"-> 0000:00:01\.0"),
    (('parent: "0000:00:01.0"', 'parent: "0000:00:07.0"'),
     r"t\.yaml: line 8: device 0000:01:00\.0: parent 0000:00:07\.0 is not a device .*dangling"),
    (("  - {bdf: \"0000:00:01.0\", kind: root_port}",
      "  - {bdf: \"0000:00:01.0\", kind: root_port}\n  - {bdf: \"0000:00:01.0\"}"),
     r"t\.yaml: line 7: device 0000:00:01\.0: duplicate BDF 0000:00:01\.0 \(entry 2\)"),
    (("      - {index: 0, addr: 0x100000, size: 1M}",
      "      - {index: 0, addr: 0x100000, size: 1M}\n"
      "      - {index: 2, addr: 0x180000, size: 512K}"),
     r"device 0000:01:00\.0: BAR 2 at 0x180000 overlaps BAR 0 of 0000:01:00\.0"),
    (("kind: host_bridge,", "kind: host_bridge, colour: red,"),
     r"t\.yaml: line 6: device 0000:00:00\.0: unknown field 'colour'"),
    (("source: test", "source: test\nsockets: 2"), r"t\.yaml: top level: unknown field 'sockets'"),
    (("size: 1M}", "size: 1M, cached: true}"), r"device 0000:01:00\.0: bars\[0\]: unknown field"),
    (("0000:00:01.0\", kind", "0000:00:21.0\", kind"), r"bad BDF '0000:00:21\.0'"),
    (("size: 1M}", "size: 3M}"), r"BAR 0 size 0x300000 is not a power of two"),
    (("addr: 0x100000", "addr: 0x180000"), r"BAR 0 address 0x180000 is not aligned"),
    (("kind: root_port}", "kind: root_port, acs: {cap: [SV], ctrl: [SV, RR]}}"),
     r"device 0000:00:01\.0: ACS ctrl 0x5 enables bits the capability 0x1 lacks"),
    (("kind: root_port}", "kind: root_port, acs: {cap: [XX]}}"), r"unknown ACS bit 'XX'"),
    (("kind: root_port}", "kind: switch}"), r"unknown kind 'switch'"),
    (('parent: "0000:00:01.0"', 'parent: "0000:00:00.0"'),
     r"line 8: device 0000:01:00\.0: parent 0000:00:00\.0 \(kind host_bridge\) is not a bridge"),
    (("- {domain: 0, bus: 0}", "- {domain: 0, bus: 1}"),
     r"device 0000:00:00\.0: sits on root bus 0000:00 but no host bridge"),
    (("addr: 0x100000", "addr: lots"), r"bars\[0\]\.addr: 'lots' is not an integer"),
])
def test_bad_yaml_is_named(tmp_path, edit, match):
    old, new = edit
    assert old in GOOD
    p = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(InputFileError, match=match):
        pci.load(p)


def test_yaml_syntax_error_has_line(tmp_path):
    p = write(tmp_path, GOOD.replace("bars:", "bars: [unclosed"))
    with pytest.raises(InputFileError, match=r"t\.yaml: line \d+: not valid YAML"):
        pci.load(p)


def test_only_safe_yaml(tmp_path):
    p = write(tmp_path, "!!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(InputFileError, match="not valid YAML"):
        pci.load(p)


def test_size_bound(tmp_path):
    p = write(tmp_path, GOOD + "#" * (1 << 20))
    with pytest.raises(InputFileError, match="more than the 1048576 allowed"):
        pci.load(p)


def test_missing_file_and_required_fields(tmp_path):
    with pytest.raises(InputFileError, match="nope.yaml: cannot read"):
        pci.load(tmp_path / "nope.yaml")
    with pytest.raises(InputFileError, match="missing required field 'source'"):
        pci.load(write(tmp_path, GOOD.replace("source: test\n", "")))
    with pytest.raises(InputFileError, match="top level must be a mapping"):
        pci.load(write(tmp_path, "- 1\n- 2\n"))


def test_bdf_helpers():
    assert pci.parse_bdf("0000:1C:00.1") == (0, 0x1C, 0, 1)
    assert pci.format_bdf(0x10000, 1, 0x1F, 7) == "10000:01:1f.7"
    with pytest.raises(ValueError, match="bad BDF"):
        pci.parse_bdf("00:1c.0")
