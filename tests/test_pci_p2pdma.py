"""The P2P decision held to drivers/pci/p2pdma.c (v6.2): decision tables worked out by hand.

How each table was worked out (calc_map_type_and_dist): chains are the device then each
pci_upstream_bridge(); the first provider-side ancestor found on the client's chain is the
common bridge and distance = its index on each chain; with none, distance = len(a) + len(b).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import phyrlab.pci as pci
from phyrlab.errors import RangeError
from phyrlab.pci import MapType
from phyrlab.pci.experiments import with_changes

TOPO = Path(__file__).resolve().parents[1] / "data" / "topologies"
N, B, T = MapType.NOT_SUPPORTED, MapType.BUS_ADDR, MapType.THRU_HOST_BRIDGE

# (provider, client): (map type, pci_p2pdma_distance_many() result). Symmetric pairs listed once;
# the diagonal (same function: 0, BUS_ADDR) is checked separately for every endpoint.
TABLES = {
    # chains: 01:00.0 [01:00.0, 00:1c.0] on host 0000:00 (00:00.0 = 8086:2020, whitelisted);
    # 1a [1a, 19:00.0, 18:00.0, 17:00.0] etc. on host 0000:17 (17:00.0 root port 8086:2030).
    "switch-nvme-gpu-nic": {
        ("0000:1a:00.0", "0000:1b:00.0"): (B, 4),  # meet at 18:00.0: 2 + 2
        ("0000:1a:00.0", "0000:1c:00.0"): (B, 4),
        ("0000:1a:00.0", "0000:1c:00.1"): (B, 4),
        ("0000:1b:00.0", "0000:1c:00.0"): (B, 4),
        ("0000:1b:00.0", "0000:1c:00.1"): (B, 4),
        ("0000:1c:00.0", "0000:1c:00.1"): (B, 2),  # meet at 19:10.0: 1 + 1
        ("0000:01:00.0", "0000:1a:00.0"): (T, 6),  # no common: 2 + 4; 2020 and 2030 listed
        ("0000:01:00.0", "0000:1b:00.0"): (T, 6),
        ("0000:01:00.0", "0000:1c:00.0"): (T, 6),
        ("0000:01:00.0", "0000:1c:00.1"): (T, 6),
    },
    # as above, but every downstream port has RR|CR: any path through one is redirected.
    "switch-acs-redirect": {
        ("0000:1a:00.0", "0000:1b:00.0"): (T, 4),
        ("0000:1a:00.0", "0000:1c:00.0"): (T, 4),
        ("0000:1a:00.0", "0000:1c:00.1"): (T, 4),
        ("0000:1b:00.0", "0000:1c:00.0"): (T, 4),
        ("0000:1b:00.0", "0000:1c:00.1"): (T, 4),
        ("0000:1c:00.0", "0000:1c:00.1"): (T, 2),  # common 19:10.0 itself redirects
        ("0000:01:00.0", "0000:1a:00.0"): (T, 6),
        ("0000:01:00.0", "0000:1b:00.0"): (T, 6),
        ("0000:01:00.0", "0000:1c:00.0"): (T, 6),
        ("0000:01:00.0", "0000:1c:00.1"): (T, 6),
    },
    # 2f00 / 2f01 carry REQ_SAME_HOST_BRIDGE: same socket passes, cross socket fails.
    "dual-socket-haswell": {
        ("0000:02:00.0", "0000:03:00.0"): (T, 4),
        ("0000:82:00.0", "0000:83:00.0"): (T, 4),
        ("0000:02:00.0", "0000:82:00.0"): (N, -1),
        ("0000:02:00.0", "0000:83:00.0"): (N, -1),
        ("0000:03:00.0", "0000:82:00.0"): (N, -1),
        ("0000:03:00.0", "0000:83:00.0"): (N, -1),
    },
    # AMD family 0x17: cpu_supports_p2pdma(); root ports redirect (ACS RR|CR).
    "amd-zen-rome": {
        ("0000:01:00.0", "0000:02:00.0"): (T, 4),
        ("0000:01:00.0", "0000:41:00.0"): (T, 4),
        ("0000:01:00.0", "0000:41:00.1"): (T, 4),
        ("0000:01:00.0", "0000:42:00.0"): (T, 4),
        ("0000:02:00.0", "0000:41:00.0"): (T, 4),
        ("0000:02:00.0", "0000:41:00.1"): (T, 4),
        ("0000:02:00.0", "0000:42:00.0"): (T, 4),
        ("0000:41:00.0", "0000:41:00.1"): (T, 2),  # common root port 40:01.1 redirects
        ("0000:41:00.0", "0000:42:00.0"): (T, 4),
        ("0000:41:00.1", "0000:42:00.0"): (T, 4),
    },
    # host bridge 8086:3e30 not listed, Intel CPU.
    "unlisted-host-bridge": {
        ("0000:01:00.0", "0000:04:00.0"): (N, -1),  # no common (2 + 4 hops)
        ("0000:01:00.0", "0000:05:00.0"): (N, -1),
        ("0000:04:00.0", "0000:05:00.0"): (N, -1),  # common 02:00.0, but ACS on 03:xx
    },
    # q35 host bridge 8086:29c0 not listed; 00:01.0 is on the root bus (chain of 1).
    "qemu-q35-vm": {
        ("0000:00:01.0", "0000:01:00.0"): (N, -1),
        ("0000:00:01.0", "0000:02:00.0"): (N, -1),
        ("0000:00:01.0", "0000:03:00.0"): (N, -1),
        ("0000:00:01.0", "0000:04:00.0"): (N, -1),
        ("0000:01:00.0", "0000:02:00.0"): (N, -1),
        ("0000:01:00.0", "0000:03:00.0"): (N, -1),
        ("0000:01:00.0", "0000:04:00.0"): (N, -1),
        ("0000:02:00.0", "0000:03:00.0"): (N, -1),
        ("0000:02:00.0", "0000:04:00.0"): (N, -1),
        ("0000:03:00.0", "0000:04:00.0"): (N, -1),
    },
}
# raw hop counts the kernel computes even when it refuses (*dist)
HOPS_WHEN_REFUSED = {
    ("dual-socket-haswell", "0000:02:00.0", "0000:82:00.0"): 4,
    ("unlisted-host-bridge", "0000:01:00.0", "0000:04:00.0"): 6,
    ("unlisted-host-bridge", "0000:04:00.0", "0000:05:00.0"): 4,
    ("qemu-q35-vm", "0000:00:01.0", "0000:01:00.0"): 3,
    ("qemu-q35-vm", "0000:01:00.0", "0000:02:00.0"): 4,
}


def topo(name: str) -> pci.Topology:
    return pci.load(TOPO / f"{name}.yaml")


@pytest.mark.parametrize("name", sorted(TABLES))
def test_decision_table(name):
    t = topo(name)
    table = TABLES[name]
    eps = t.endpoints()
    # the table covers every unordered pair of distinct endpoints
    assert {frozenset(k) for k in table} == {frozenset((a, b)) for a in eps for b in eps
                                              if a < b}
    for (p, c), (mt, dist) in table.items():
        for prov, cli in ((p, c), (c, p)):
            got = pci.p2pdma_distance(t, prov, cli)
            assert (got.map_type, got.distance) == (mt, dist), (name, prov, cli, got)
    for e in eps:
        assert tuple(pci.p2pdma_distance(t, e, e))[:2] == (B, 0)


@pytest.mark.parametrize("key", sorted(HOPS_WHEN_REFUSED))
def test_hops_set_even_when_refused(key):
    name, p, c = key
    mt, dist, _ = pci.calc_map_type_and_dist(topo(name), p, c)
    assert mt is N and dist == HOPS_WHEN_REFUSED[key]


def test_kernel_comment_examples():
    """The three distances calc_map_type_and_dist()'s comment names: 0, 2, 4."""
    t = topo("switch-nvme-gpu-nic")
    assert pci.calc_map_type_and_dist(t, "0000:1c:00.0", "0000:1c:00.0")[:2] == (B, 0)
    assert pci.calc_map_type_and_dist(t, "0000:1c:00.0", "0000:1c:00.1")[:2] == (B, 2)
    assert pci.calc_map_type_and_dist(t, "0000:1a:00.0", "0000:1b:00.0")[:2] == (B, 4)


def test_acs_warnings_are_the_kernels_words():
    t = topo("switch-acs-redirect")
    r = pci.p2pdma_distance(t, "0000:1a:00.0", "0000:1b:00.0")
    assert r.reason.startswith(
        "pci 0000:1b:00.0: ACS redirect is set between the client and provider (0000:1a:00.0); "
        "pci 0000:1b:00.0: to disable ACS redirect for this path, add the kernel parameter: "
        "pci=disable_acs_redir=0000:19:00.0;0000:19:08.0")
    tr = pci.trace_map_type(t, "0000:1a:00.0", "0000:1b:00.0")
    # provider side first (up to the common bridge), then the client side
    assert tr.acs_list == ("0000:19:00.0", "0000:19:08.0") and tr.common == "0000:18:00.0"


def test_whitelist_warning_only_on_acs_path():
    """v6.2 passes acs_redirects as host_bridge_whitelist()'s warn argument."""
    t = topo("unlisted-host-bridge")
    acs = pci.p2pdma_distance(t, "0000:04:00.0", "0000:05:00.0").reason
    plain = pci.p2pdma_distance(t, "0000:04:00.0", "0000:01:00.0").reason
    refusal = ("cannot be used for peer-to-peer DMA as the client and provider (0000:04:00.0) "
               "do not share an upstream bridge or whitelisted host bridge")
    assert "pci 0000:00:00.0: Host bridge not in P2PDMA whitelist: 8086:3e30" in acs
    assert refusal in acs and refusal in plain
    assert "whitelist: 8086" not in plain


def test_req_same_host_bridge_gives_no_warning():
    t = topo("dual-socket-haswell")
    r = pci.p2pdma_distance(t, "0000:82:00.0", "0000:02:00.0")
    assert r.map_type is N and "Host bridge not in" not in r.reason


@pytest.mark.parametrize("vendor,family,arch,ok", [
    ("AuthenticAMD", 0x17, "x86_64", True), ("AuthenticAMD", 0x19, "x86_64", True),
    ("AuthenticAMD", 0x16, "x86_64", False), ("HygonGenuine", 0x18, "x86_64", False),
    ("GenuineIntel", 6, "x86_64", False), ("AuthenticAMD", 0x17, "aarch64", False)])
def test_cpu_supports_p2pdma(vendor, family, arch, ok):
    assert pci.cpu_supports_p2pdma(pci.Cpu(vendor, family, arch)) is ok


def test_cpu_rule_skips_the_whitelist():
    t = with_changes(topo("unlisted-host-bridge"), cpu=pci.Cpu("AuthenticAMD", 0x17))
    assert tuple(pci.p2pdma_distance(t, "0000:01:00.0", "0000:04:00.0"))[:2] == (T, 6)
    assert tuple(pci.p2pdma_distance(t, "0000:04:00.0", "0000:05:00.0"))[:2] == (T, 4)


def test_whitelist_off():
    t = with_changes(topo("switch-nvme-gpu-nic"), whitelist=False)
    assert pci.p2pdma_distance(t, "0000:01:00.0", "0000:1a:00.0").map_type is N
    assert pci.p2pdma_distance(t, "0000:1a:00.0", "0000:1b:00.0").map_type is B  # no root cx


def test_distance_many_sums_and_fails_as_kernel():
    t = topo("switch-nvme-gpu-nic")
    assert pci.pci_p2pdma_distance_many(t, "0000:1a:00.0",
                                        ["0000:1b:00.0", "0000:1c:00.0", "0000:1a:00.0"]) == 8
    r = pci.p2pdma_distance(t, "0000:1a:00.0", ["0000:1b:00.0", "0000:01:00.0"])
    assert (r.map_type, r.distance) == (T, 10)  # 4 + 6; worst type wins
    assert pci.pci_p2pdma_distance_many(t, "0000:1a:00.0", []) == -1
    u = topo("unlisted-host-bridge")
    assert pci.pci_p2pdma_distance_many(u, "0000:04:00.0", ["0000:04:00.0", "0000:05:00.0"]) == -1
    quiet = pci.p2pdma_distance(u, "0000:04:00.0", ["0000:05:00.0", "0000:01:00.0"],
                                verbose=False)
    assert quiet.distance == -1 and "0000:01:00.0" not in quiet.reason  # loop broke early


def test_map_types_idx_and_cache():
    t = topo("switch-nvme-gpu-nic")
    assert pci.map_types_idx(t.dev("0000:1c:00.1")) == 0x1C01
    assert pci.map_types_idx(t.dev("0000:19:08.0")) == 0x1940
    # no P2P memory on the GPU: pci_p2pdma_map_type() says NOT_SUPPORTED whatever the path
    assert pci.pci_p2pdma_map_type(t, "0000:1b:00.0", "0000:1a:00.0") is N
    assert pci.pci_p2pdma_map_type(t, "0000:1a:00.0", "0000:1b:00.0") is B
    # the type is cached per client, so a later ACS change is not seen (as in the kernel)
    d = t.devices["0000:19:08.0"]
    t.devices["0000:19:08.0"] = pci.topology.with_device(d, acs=pci.Acs(0x3F, pci.PCI_ACS_RR))
    assert pci.pci_p2pdma_map_type(t, "0000:1a:00.0", "0000:1b:00.0") is B
    assert pci.trace_map_type(t, "0000:1a:00.0", "0000:1b:00.0").map_type is T
    assert pci.pci_p2pdma_map_type(t.copy(), "0000:1a:00.0", "0000:1b:00.0") is T


def test_bus_offset():
    t = topo("switch-nvme-gpu-nic")
    assert pci.p2pdma_bus_offset(t, "0000:1a:00.0") == 0
    with pytest.raises(ValueError, match=r"0000:1b:00\.0 has no P2P memory BAR"):
        pci.p2pdma_bus_offset(t, "0000:1b:00.0")
    # a host bridge whose window sits at CPU 0x40_0000_0000 for bus address 0:
    hb = {"domain": 0, "bus": 0, "mem_offset": 0x40_0000_0000}
    doc = {"name": "arm", "source": "test", "host_bridges": [hb], "devices": [
        {"bdf": "0000:00:00.0", "kind": "root_port"},
        {"bdf": "0000:01:00.0", "parent": "0000:00:00.0",
         "bars": [{"addr": 0x40_1000_0000, "size": "1M", "p2pmem": True}]}]}
    a = pci.from_dict(doc)
    off = pci.p2pdma_bus_offset(a, "0000:01:00.0")
    assert off == -0x40_0000_0000 and 0x40_1000_0000 + off == 0x1000_0000


def test_find_p2p_bar():
    t = topo("switch-nvme-gpu-nic")
    d, b = pci.find_p2p_bar(t, 0x3FFE0000000)
    assert d.bdf == "0000:1a:00.0" and b.index == 4
    assert pci.find_p2p_bar(t, 0x3FFE0000000 + (256 << 20) - 1)[0].bdf == "0000:1a:00.0"
    assert pci.find_p2p_bar(t, 0x3FFE0000000 + (256 << 20)) is None
    assert pci.find_p2p_bar(t, 0x38000000000) is None  # GPU BAR, not P2P memory
    got = pci.find_p2p_bars(t, [0, 0x3FFE0000000, 0x3FFE0001000, 0x3FFDFFFFFFF])
    assert got.tolist() == [-1, 0, 0, -1]


def test_classify_ranges():
    t = topo("switch-nvme-gpu-nic")
    cmb = 0x3FFE0000000
    addr = np.array([0x1000, cmb, cmb + 0x10000, 0x200000], dtype=np.uint64)
    length = np.array([4096, 8192, 4096, 4096], dtype=np.uint64)
    r = pci.classify_ranges(t, "0000:1b:00.0", addr, length)
    assert r.providers == ("0000:1a:00.0",)
    assert r.provider.tolist() == [-1, 0, 0, -1]
    assert r.map_type.tolist() == [MapType.NONE, B, B, MapType.NONE]
    a = pci.classify_ranges(topo("switch-acs-redirect"), "0000:1b:00.0", addr, length)
    assert a.map_type.tolist() == [MapType.NONE, T, T, MapType.NONE]
    u = pci.classify_ranges(topo("unlisted-host-bridge"), "0000:01:00.0",
                            [0x4000000000], [4096])
    assert u.map_type.tolist() == [N]


@pytest.mark.parametrize("addr,length,match", [
    ([0x3FFE0000000 + (256 << 20) - 4096], [8192], r"range 0 .* partly in P2P BAR 4 of "
                                                   r"0000:1a:00\.0"),
    ([0x1000, 0x3FFE0000000 - 4096], [1, 8192], r"range 1 .*partly"),
    ([0x1000, 0x2000], [4096, 0], r"length\[1\] is 0"),
    ([2**64 - 4096], [8192], r"range 0 .* overflows"),
    ([-1], [4096], r"addr\[0\] = -1 is negative"),
])
def test_classify_ranges_bad_input(addr, length, match):
    with pytest.raises(RangeError, match=match):
        pci.classify_ranges(topo("switch-nvme-gpu-nic"), "0000:1b:00.0",
                            np.array(addr), np.array(length))


def test_unknown_device_named():
    with pytest.raises(ValueError, match="no PCI device '0000:99:00.0'"):
        pci.p2pdma_distance(topo("qemu-q35-vm"), "0000:99:00.0", "0000:01:00.0")


# ------------------------------------------------------------------- properties
@st.composite
def random_topology(draw):
    """A random tree of bridges and endpoints under one or two host bridges."""
    n_hb = draw(st.integers(1, 2))
    hbs = [{"domain": 0, "bus": 0x40 * i} for i in range(n_hb)]
    devs = []
    bridges = []
    bus_next = [1]
    vendor = draw(st.sampled_from([(0x8086, 0x2020), (0x8086, 0x2F00), (0x8086, 0x3E30)]))
    for i in range(n_hb):
        devs.append({"bdf": f"0000:{0x40 * i:02x}:00.0", "kind": "host_bridge",
                     "vendor": vendor[0], "device": vendor[1]})
    slot = [1]

    def add(parent, bus, kind, acs):
        bdf = f"0000:{bus:02x}:{slot[0]:02x}.0"
        slot[0] = slot[0] % 31 + 1
        d = {"bdf": bdf, "kind": kind}
        if parent:
            d["parent"] = parent
        if acs is not None:
            d["acs"] = {"cap": ["SV", "RR", "CR", "UF"], "ctrl": acs}
        devs.append(d)
        return bdf

    for _ in range(draw(st.integers(2, 9))):
        kind = draw(st.sampled_from(["bridge", "endpoint"]))
        where = draw(st.integers(0, len(bridges) + n_hb - 1))
        if where < n_hb:
            parent, bus = None, 0x40 * where
        else:
            parent, bus = bridges[where - n_hb]
        acs = draw(st.sampled_from([None, [], ["SV", "RR", "CR", "UF"]]))
        if kind == "bridge":
            k = "root_port" if parent is None else "switch_downstream"
            b = add(parent, bus, k, acs)
            bridges.append((b, 0x40 * (where if where < n_hb else 0) + bus_next[0]))
            bus_next[0] += 1
        else:
            add(parent, bus, "endpoint", None)
    cpu = draw(st.sampled_from([{"vendor": "GenuineIntel", "family": 6},
                                {"vendor": "AuthenticAMD", "family": 0x17}]))
    # make bdfs unique per bus by construction; drop duplicates hypothesis may still make
    seen, uniq = set(), []
    for d in devs:
        if d["bdf"] not in seen:
            seen.add(d["bdf"])
            uniq.append(d)
    return pci.from_dict({"name": "rand", "source": "hypothesis", "cpu": cpu,
                          "host_bridges": hbs, "devices": uniq})


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(random_topology())
def test_decision_is_symmetric(t):
    devs = sorted(t.devices)
    for p in devs:
        for c in devs:
            a, b = pci.trace_map_type(t, p, c), pci.trace_map_type(t, c, p)
            assert (a.map_type, a.distance) == (b.map_type, b.distance)


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(random_topology(), st.data())
def test_acs_redirect_never_enables_bus_addr(t, data):
    with_acs = [b for b, d in t.devices.items() if d.acs is not None]
    if not with_acs:
        return
    chosen = data.draw(st.lists(st.sampled_from(with_acs), min_size=1, unique=True))
    t2 = with_changes(t, acs_redirect={b: True for b in chosen})
    for p in t.devices:
        for c in t.devices:
            before, after = pci.trace_map_type(t, p, c), pci.trace_map_type(t2, p, c)
            assert after.distance == before.distance
            if before.map_type is N:
                assert after.map_type is N
            if after.map_type is B:
                assert before.map_type is B
