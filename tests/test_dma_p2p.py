"""P2P in dma_map: bus addresses below a common switch, -EREMOTEIO when unreachable
(``pci_p2pdma_state`` in dma_direct_map_sg / iommu_dma_map_sg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from phyrlab.dma import Device, dma_map, dma_unmap
from phyrlab.errors import DmaMappingError
from phyrlab.units import DMA_BIT_MASK

pci = pytest.importorskip("phyrlab.pci")
U64 = np.uint64
TOPO = Path(__file__).parents[1] / "data" / "topologies" / "switch-nvme-gpu-nic.yaml"
CMB = 0x3FFE0000000            # BAR 4 of the NVMe 0000:1a:00.0, p2pmem
GPU = "0000:1b:00.0"


def rs(*pairs):
    return (np.array([a for a, _ in pairs], dtype=U64), np.array([n for _, n in pairs], dtype=U64))


@pytest.mark.parametrize("ops", [None, "iommu_dma_ops"])
def test_bus_address_ranges_skip_the_backend_and_split_host_segments(ops):
    topo = pci.load(TOPO)
    dev = Device(ops, dma_mask=DMA_BIT_MASK(64), pci=(topo, GPU))
    lst = rs((0x10_0000, 8192), (CMB + 0x1000, 4096), (0x20_0000, 4096), (0x30_0000, 4096))
    m = dma_map(dev, lst, "to_device")
    off = pci.p2pdma_bus_offset(topo, "0000:1a:00.0")
    i = int(np.flatnonzero(m.bus_addr)[0])
    assert int(m.dma_addr[i]) == CMB + 0x1000 + off and int(m.length[i]) == 4096
    if ops == "iommu_dma_ops":
        # host segments 2 and 3 are IOVA-contiguous and merge; nothing merges across the
        # bus-address segment, so the first stays alone: [host 8K] [bus] [host 8K]
        assert list(m.bus_addr) == [False, True, False]
        assert list(m.length) == [8192, 4096, 8192]
        assert dev.resources()["mapped_bytes"] == 16384
    else:
        assert list(m.dma_addr[[0, 2, 3]]) == [0x10_0000, 0x20_0000, 0x30_0000]
    dma_unmap(dev, m)
    assert all(v == 0 for v in dev.resources().values())


def test_unreachable_peer_memory_is_eremoteio_and_takes_nothing():
    # an unlisted Intel host bridge between the GPU and the NVMe CMB: NOT_SUPPORTED
    topo = pci.load(TOPO.with_name("unlisted-host-bridge.yaml"))
    dev = Device("iommu_dma_ops", dma_mask=DMA_BIT_MASK(64), pci=(topo, "0000:01:00.0"))
    with pytest.raises(DmaMappingError, match="range 1 .* 0000:04:00.0 that 0000:01:00.0 "
                                              "cannot reach") as e:
        dma_map(dev, rs((0x10_0000, 4096), (0x40_0000_0000, 4096)), "to_device")
    assert e.value.errno == "EREMOTEIO"
    assert all(v == 0 for v in dev.resources().values())


def test_only_peer_memory_holds_nothing():
    topo = pci.load(TOPO)
    dev = Device("iommu_dma_ops", dma_mask=DMA_BIT_MASK(64), pci=(topo, GPU))
    m = dma_map(dev, rs((CMB, 65536), (CMB + 0x20_0000, 4096)), "from_device")
    assert m.bus_addr.all() and m.stats.get("iova_allocs", 0) == 0
    dma_unmap(dev, m)


def test_through_the_host_bridge_is_mapped_like_host_memory():
    topo = pci.load(TOPO)                     # I210 below the PCH: THRU_HOST_BRIDGE (listed)
    dev = Device("iommu_dma_ops", dma_mask=DMA_BIT_MASK(64), pci=(topo, "0000:01:00.0"))
    m = dma_map(dev, rs((CMB, 8192)), "to_device")
    assert not m.bus_addr.any() and m.stats["iova_allocs"] == 1
    assert dev.ops.domain.pt.iova_to_phys(int(m.dma_addr[0])) == CMB
    dma_unmap(dev, m)
