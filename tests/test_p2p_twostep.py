"""P2P through the two-step API, as blk_rq_dma_map_iter_start asks pci_p2pdma_state():
bus addresses with no IOVA below a common switch, host-bridge P2P linked like host memory,
-EREMOTEIO when unreachable, and nothing left behind in any case."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import phyrlab as pl
from phyrlab.dma import Device
from phyrlab.dma.iova_state import dma_map_iova, dma_unmap_iova
from phyrlab.errors import DmaMappingError
from phyrlab.units import DMA_BIT_MASK

U64 = np.uint64
TOPOS = Path(__file__).parents[1] / "data" / "topologies"
CMB = 0x3FFE0000000            # BAR 4 (p2pmem) of the NVMe 0000:1a:00.0 below the switch
GPU = "0000:1b:00.0"           # below the same switch
I210 = "0000:01:00.0"          # below the PCH: reaches the CMB through the host bridge


def rs(*pairs):
    return (np.array([a for a, _ in pairs], dtype=U64), np.array([n for _, n in pairs], dtype=U64))


@functools.cache
def _switch():
    return pl.pci.load(TOPOS / "switch-nvme-gpu-nic.yaml")


def idle(dev) -> bool:
    return all(v == 0 for v in dev.resources().values())


@pytest.mark.parametrize("ops", [None, "iommu_dma_ops"])
def test_bus_addr_request_gets_bus_addresses_and_no_iova(ops):
    topo = pl.pci.load(TOPOS / "switch-nvme-gpu-nic.yaml")
    dev = Device(ops, dma_mask=DMA_BIT_MASK(64), pci=(topo, GPU))
    off = pl.pci.p2pdma_bus_offset(topo, "0000:1a:00.0")
    m = dma_map_iova(dev, rs((CMB, 65536), (CMB + 0x10000, 4096)), "from_device")
    assert m.bus_addr.all()
    assert m.dma_addr.tolist() == [CMB + off, CMB + 0x10000 + off]
    assert m.stats.get("iova_allocs", 0) == 0 and m.stats.get("pte_writes", 0) == 0
    dma_unmap_iova(dev, m)
    assert idle(dev)


def test_host_bridge_p2p_is_linked_into_one_iova_like_host_memory():
    topo = pl.pci.load(TOPOS / "switch-nvme-gpu-nic.yaml")
    dev = Device("iommu_dma_ops", dma_mask=DMA_BIT_MASK(64), pci=(topo, I210))
    m = dma_map_iova(dev, rs((CMB, 8192), (CMB + 8192, 4096)), "to_device")
    assert not m.bus_addr.any() and m.dma_addr.size == 1
    assert dev.ops.domain.pt.iova_to_phys(int(m.dma_addr[0]) + 8192) == CMB + 8192
    dma_unmap_iova(dev, m)
    assert idle(dev)


def test_unreachable_peer_is_eremoteio_and_takes_nothing():
    topo = pl.pci.load(TOPOS / "unlisted-host-bridge.yaml")
    dev = Device("iommu_dma_ops", dma_mask=DMA_BIT_MASK(64), pci=(topo, "0000:01:00.0"))
    with pytest.raises(DmaMappingError) as e:
        dma_map_iova(dev, rs((0x40_0000_0000, 4096),), "to_device")
    assert e.value.errno == "EREMOTEIO"
    assert idle(dev)


def test_a_request_never_mixes_peer_and_host_memory():
    topo = pl.pci.load(TOPOS / "switch-nvme-gpu-nic.yaml")
    dev = Device("iommu_dma_ops", dma_mask=DMA_BIT_MASK(64), pci=(topo, GPU))
    with pytest.raises(DmaMappingError, match="range 0 at 0x100000 is host memory") as e:
        dma_map_iova(dev, rs((0x10_0000, 4096), (CMB, 4096)), "to_device")
    assert e.value.errno == "EINVAL"
    assert idle(dev)


def test_one_step_and_two_step_agree_on_bus_addresses():
    topo = pl.pci.load(TOPOS / "switch-nvme-gpu-nic.yaml")
    dev = Device("iommu_dma_ops", dma_mask=DMA_BIT_MASK(64), pci=(topo, GPU))
    lst = rs((CMB, 4096), (CMB + 0x3000, 4096))
    one = pl.dma.dma_map(dev, lst, "to_device")
    two = dma_map_iova(dev, lst, "to_device")
    assert one.dma_addr.tolist() == two.dma_addr.tolist() and one.bus_addr.all()
    pl.dma.dma_unmap(dev, one)
    dma_unmap_iova(dev, two)
    assert idle(dev)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 63), st.integers(1, 4)), min_size=1,
                max_size=12, unique_by=lambda t: (t[0], t[1])))
def test_property_bus_addr_ranges_never_touch_the_iommu(picks):
    """Random lists of host pages and CMB pages: no page-table entry ever points into the BAR,
    each peer range gets exactly its bus address, and unmap leaves nothing."""
    topo = _switch()
    dev = Device("iommu_dma_ops", dma_mask=DMA_BIT_MASK(64), pci=(topo, GPU))
    off = pl.pci.p2pdma_bus_offset(topo, "0000:1a:00.0")
    base = {True: CMB, False: 0x1_0000_0000}
    # slots 8 pages apart, so ranges never overlap and never merge
    lst = rs(*[(base[peer] + slot * 8 * 4096, pages * 4096) for peer, slot, pages in picks])
    m = pl.dma.dma_map(dev, lst, "to_device")
    _iova, paddr, size = dev.ops.domain.pt.leaves()
    bar_end = CMB + (256 << 20)  # BAR 4 is 256 MiB
    assert not np.any((paddr + size > CMB) & (paddr < bar_end))
    peers = [a + off for (peer, _s, _p), a in zip(picks, lst[0].tolist(), strict=True) if peer]
    assert sorted(m.dma_addr[m.bus_addr].tolist()) == sorted(peers)
    pl.dma.dma_unmap(dev, m)
    assert idle(dev)
