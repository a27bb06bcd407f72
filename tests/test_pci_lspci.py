"""parse_lspci_tv on lspci -t/-tv/-tvnn/-tvv samples (tests/data/lspci/, pciutils ls-tree.c)."""

from __future__ import annotations

from pathlib import Path

import pytest

import phyrlab.pci as pci
from phyrlab.errors import InputFileError
from phyrlab.pci import DevKind, MapType

DATA = Path(__file__).resolve().parent / "data" / "lspci"
TOPO = Path(__file__).resolve().parents[1] / "data" / "topologies"


def sample(name: str) -> str:
    return (DATA / name).read_text()


def test_switch_sample_structure():
    t = pci.parse_lspci_tv(sample("skylake-pex9797.tv.txt"), cpu=pci.Cpu("GenuineIntel", 6))
    assert sorted(t.host_bridges) == ["0000:00", "0000:17"]
    assert t.upstream_chain("0000:1c:00.1") == (
        "0000:1c:00.1", "0000:19:10.0", "0000:18:00.0", "0000:17:00.0")
    kinds = {b: d.kind for b, d in t.devices.items()}
    assert kinds["0000:17:00.0"] is DevKind.ROOT_PORT
    assert kinds["0000:18:00.0"] is DevKind.SWITCH_UPSTREAM
    assert kinds["0000:19:18.0"] is DevKind.SWITCH_DOWNSTREAM  # empty port "-[1d]--"
    assert kinds["0000:00:00.0"] is DevKind.HOST_BRIDGE
    assert kinds["0000:00:1f.0"] is DevKind.RCIEP
    assert t.devices["0000:00:00.0"].ids == "8086:2020"  # known host-bridge name
    assert t.devices["0000:1b:00.0"].vendor == 0x10DE
    assert len(t.devices) == 15


def test_switch_sample_decides_like_the_yaml():
    """Without ACS bits (lspci -t has none) the decisions equal switch-nvme-gpu-nic.yaml's,
    once the caller names the Skylake root port whose ids -tv does not print."""
    t = pci.parse_lspci_tv(sample("skylake-pex9797.tv.txt"), cpu=pci.Cpu("GenuineIntel", 6),
                           host_bridge_ids={"0000:17": "8086:2030"})
    y = pci.load(TOPO / "switch-nvme-gpu-nic.yaml")
    for p in y.endpoints():
        for c in y.endpoints():
            assert pci.trace_map_type(t, p, c).map_type == pci.trace_map_type(y, p, c).map_type
    # not naming it: 17:00.0 ids unknown -> not whitelisted -> NOT_SUPPORTED to the I210
    bare = pci.parse_lspci_tv(sample("skylake-pex9797.tv.txt"))
    assert pci.p2pdma_distance(bare, "0000:1a:00.0", "0000:01:00.0").map_type is \
        MapType.NOT_SUPPORTED


def test_plain_t_and_nn_agree_on_structure():
    tv = pci.parse_lspci_tv(sample("skylake-pex9797.tv.txt"))
    t = pci.parse_lspci_tv(sample("skylake-pex9797.t.txt"),
                           host_bridge_ids={"0000:00": "8086:2020", "0000:17": (0x8086, 0x2030)})
    nn = pci.parse_lspci_tv(sample("skylake-pex9797.tvnn.txt"))
    assert set(t.devices) == set(tv.devices) == set(nn.devices)
    for b in t.devices:
        assert t.upstream_chain(b) == tv.upstream_chain(b) == nn.upstream_chain(b)
    assert t.devices["0000:00:00.0"].ids == "8086:2020"
    assert t.devices["0000:17:00.0"].ids == "8086:2030"
    assert nn.devices["0000:1c:00.1"].ids == "15b3:101b"
    assert nn.devices["0000:00:1f.0"].ids == "8086:a1c1"


def test_tvv_bars_and_amd():
    t = pci.parse_lspci_tv(sample("epyc-rome.tvv.txt"), cpu=pci.Cpu("AuthenticAMD", 0x17))
    gpu = t.devices["0000:42:00.0"]
    assert [(b.index, b.addr, b.size, b.prefetchable) for b in gpu.bars] == [
        (0, 0xE4000000, 16 << 20, False), (1, 0x28000000000, 64 << 30, True),
        (3, 0x24000000000, 32 << 20, True)]
    assert t.devices["0000:40:00.0"].ids == "1022:1480"
    assert t.devices["0000:40:01.0"].kind is DevKind.HOST_BRIDGE  # "Dummy Host Bridge"
    assert pci.p2pdma_distance(t, "0000:01:00.0", "0000:42:00.0")[:2] == (
        MapType.THRU_HOST_BRIDGE, 4)


def test_vm_and_vmd_samples():
    vm = pci.parse_lspci_tv(sample("qemu-q35.tv.txt"))
    assert vm.devices["0000:00:00.0"].ids == "8086:29c0"
    assert vm.devices["0000:00:01.0"].ids == "1234:1111"  # "Device 1234:1111"
    assert vm.children("0000:00:02.4") == []
    assert pci.p2pdma_distance(vm, "0000:03:00.0", "0000:04:00.0").map_type is \
        MapType.NOT_SUPPORTED
    vmd = pci.parse_lspci_tv(sample("vmd-domain.tv.txt"))
    assert "10000:00" in vmd.host_bridges
    assert vmd.upstream_chain("10000:02:00.0") == ("10000:02:00.0", "10000:00:03.0")


@pytest.mark.parametrize("text,match", [
    ("", r"no lspci -t tree found"),
    ("hello world\n", r"line 1: cannot parse 'hello world' at column 1"),
    ("-[0000:00]-+-00.0\n           +-zz.0\n", r"line 2: cannot parse 'zz\.0' at column 14"),
    ("-[0000:00]-+-00.0\n     +-01.0\n", r"line 2: .*column 6: expected a connector under an "
                                         r"open bus"),
    ("-[0000:00]-+-00.0\n           +-00.0\n", r"already listed on line 1"),
    ("-[0000:00]-+-00.0-[01]-x\n", r"expected '-' after the bridge's bus range"),
    ("-[0000:00]-+-00.0 name\n", r"expected two spaces and a name"),
    ("-[0000:00]-+-00.0\n           \\-01.0\n           +-02.0\n", r"line 3: .*no '\+' above"),
])
def test_bad_text_names_line_and_column(text, match):
    with pytest.raises(InputFileError, match=match):
        pci.parse_lspci_tv(text, origin="x.txt")


def test_bad_host_bridge_ids_and_size():
    with pytest.raises(ValueError, match="no root bus '0000:99'"):
        pci.parse_lspci_tv(sample("qemu-q35.tv.txt"), host_bridge_ids={"0000:99": "8086:2020"})
    with pytest.raises(ValueError, match="are not 'vvvv:dddd'"):
        pci.parse_lspci_tv(sample("qemu-q35.tv.txt"), host_bridge_ids={"0000:00": "intel"})
    with pytest.raises(InputFileError, match="larger than"):
        pci.parse_lspci_tv("-" * (2 << 20))
