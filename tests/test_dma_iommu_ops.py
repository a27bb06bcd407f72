"""iommu_dma_ops held to drivers/iommu/dma-iommu.c: map_sg layout and padding, untrusted
bounce, limits, and unwinding on injected faults."""

from __future__ import annotations

import numpy as np
import pytest

from phyrlab import faults
from phyrlab.dma import Device, dma_map, dma_map_phys, dma_unmap, dma_unmap_phys
from phyrlab.dma.mapping import dma_sync_for_cpu, dma_sync_for_device
from phyrlab.errors import DmaMappingError
from phyrlab.iommu.dma_iommu import IommuDmaDomain
from phyrlab.units import DMA_BIT_MASK, SZ_1M, SZ_64K, U64_MAX

U64 = np.uint64
K = 1024


def ranges(*pairs):
    return (np.array([a for a, _ in pairs], dtype=U64), np.array([n for _, n in pairs], dtype=U64))


def iommu_dev(**kw):
    kw.setdefault("dma_mask", DMA_BIT_MASK(64))
    return Device("iommu_dma_ops", **kw)


def test_map_sg_pads_to_the_segment_boundary():
    # 48K then 32K with a 64K boundary: pad_len = (0xffff - 0xc000 + 1) & 0xffff = 16K is
    # added to the first segment, so the second starts on the boundary and is not merged.
    dev = iommu_dev(seg_boundary_mask=0xFFFF)
    m = dma_map(dev, ranges((0x10_0000, 48 * K), (0x20_0000, 32 * K)), "to_device")
    # 96K of IOVA rounds to 32 pages (< 32-page rcache sizes are powers of two), allocated
    # top-down and size-aligned below 4 GiB first: 0x1_0000_0000 - 128K.
    assert [hex(int(x)) for x in m.dma_addr] == ["0xfffe0000", "0xffff0000"]
    assert list(m.length) == [48 * K, 32 * K]
    # the pad is mapped: the first segment's IOVA covers 64K of physical memory
    pt = dev.ops.domain.pt
    assert pt.iova_to_phys(0xFFFE0000 + 60 * K) == 0x10_0000 + 60 * K
    assert dev.resources() == {"iova_pages": 32, "mapped_bytes": 96 * K}
    dma_unmap(dev, m)
    assert dev.resources() == {"iova_pages": 0, "mapped_bytes": 0}


def test_finalise_sg_merges_granule_aligned_neighbours_up_to_max_seg():
    dev = iommu_dev()
    m = dma_map(dev, ranges((0x10_0000, 48 * K), (0x30_0000, 16 * K)), "to_device")
    assert len(m) == 1 and int(m.length[0]) == SZ_64K          # one IOVA-contiguous segment
    dma_unmap(dev, m)
    # a segment that starts mid-granule keeps its offset and is never concatenated
    m = dma_map(dev, ranges((0x10_0000, 8 * K), (0x30_0200, 4 * K)), "to_device")
    assert len(m) == 2 and int(m.dma_addr[1]) & 0xFFF == 0x200
    dma_unmap(dev, m)
    # max_seg_size caps the merge: 64K + 4K does not fit in one 64K DMA segment
    m = dma_map(dev, ranges((0x10_0000, SZ_64K), (0x30_0000, 4 * K)), "to_device")
    assert list(m.length) == [SZ_64K, 4 * K]
    dma_unmap(dev, m)


def test_pci_devices_try_below_4g_first_and_32bit_masks_stay_there():
    dev = iommu_dev()
    a = dma_map_phys(dev, 0x5_0000_0000, 4096, "to_device")
    assert a < 1 << 32
    small = iommu_dev(dma_mask=DMA_BIT_MASK(32))
    b = dma_map_phys(small, 0x5_0000_0000, 4096, "to_device")
    assert b == 0xFFFF_F000
    dma_unmap_phys(dev, a, 4096, "to_device")
    dma_unmap_phys(small, b, 4096, "to_device")


def test_untrusted_bounces_partial_pages_only():
    dev = iommu_dev(untrusted=True)
    m = dma_map(dev, ranges((0x10_0000, 8 * K), (0x20_0100, 512), (0x30_0000, 4 * K + 16)),
                "bidirectional")
    assert list(m.bounced) == [False, True, True]
    assert m.stats["bounce_bytes"] == 512 + 4 * K + 16
    assert m.stats["iova_allocs"] == 3                          # one IOVA per entry
    # the bounced entry's IOVA translates into the swiotlb pool
    mem = dev.dma_io_tlb_mem
    assert mem.is_swiotlb_buffer(dev.ops.domain.pt.iova_to_phys(int(m.dma_addr[1])))
    assert dma_sync_for_cpu(dev, m) == 512 + 4 * K + 16
    assert dma_sync_for_device(dev, m) == 512 + 4 * K + 16
    assert dev.dma_max_mapping_size() == 256 * K
    assert iommu_dev().dma_max_mapping_size() == U64_MAX
    dma_unmap(dev, m)
    assert dev.resources() == {"iova_pages": 0, "mapped_bytes": 0, "swiotlb_slots": 0}


def test_min_align_mask_above_the_granule_is_refused():
    dev = iommu_dev(min_align_mask=0x1FFF)
    with pytest.raises(DmaMappingError, match="Unsupported alignment constraint"):
        dma_map_phys(dev, 0x1000, 4096, "to_device")


@pytest.mark.parametrize("point,nth,times", [("iova_alloc", 1, 3), ("pt_alloc", 1, 1),
                                             ("pt_alloc", 2, 1)])
def test_injected_faults_leave_the_domain_as_it_was(point, nth, times):
    # iommu_dma_alloc_iova asks three times: below 4 GiB, the full mask, and once more after
    # alloc_iova_fast flushed the range caches
    dev = iommu_dev()
    keep = dma_map(dev, ranges((0x90_0000, 12 * K)), "to_device")    # something already there
    snap = dev.ops.domain.snapshot()
    res = dev.resources()
    # 4 MiB of IOVA: beyond the range caches and into page-table pages not yet allocated
    many = ranges(*[(0x1_0000_0000 + i * 0x40_0000 + 0x1000, 512 * K) for i in range(8)])
    with faults.inject(point, nth=nth, times=times), pytest.raises(DmaMappingError) as e:
        dma_map(dev, many, "to_device")
    assert e.value.errno == "ENOMEM"
    assert dev.ops.domain.snapshot() == snap and dev.resources() == res
    dma_unmap(dev, keep)


def test_untrusted_failure_returns_bounce_slots_and_iovas():
    dev = iommu_dev(untrusted=True)
    mem = dev.dma_io_tlb_mem
    before, snap = mem.snapshot(), dev.ops.domain.snapshot()
    rs = ranges((0x10_0100, 512), (0x20_0000, 4 * K), (0x30_0100, 512))
    with faults.inject("pt_alloc", nth=3), pytest.raises(DmaMappingError) as e:
        dma_map(dev, rs, "to_device")
    assert e.value.errno == "EIO"                    # iommu_dma_map_sg_swiotlb
    assert all(np.array_equal(a, b) for a, b in zip(before, mem.snapshot(), strict=True))
    assert dev.ops.domain.snapshot() == snap


def test_exhausted_iova_space_is_enomem_and_takes_nothing():
    dom = IommuDmaDomain("x86_64", aperture_end=SZ_1M - 1)     # 255 usable pages
    dev = Device("iommu_dma_ops", iommu=dom, dma_mask=DMA_BIT_MASK(64))
    keep = dma_map(dev, ranges((0x10_0000, 512 * K)), "to_device")
    snap = dom.snapshot()
    with pytest.raises(DmaMappingError, match="no IOVA space") as e:
        dma_map(dev, ranges((0x20_0000, 512 * K)), "to_device")
    assert e.value.errno == "ENOMEM" and dom.snapshot() == snap
    dma_unmap(dev, keep)


def test_strict_flushes_on_unmap_lazy_queues():
    strict = iommu_dev()
    m = dma_map(strict, ranges((0x10_0000, 8 * K)), "to_device")
    assert dma_unmap(strict, m)["iotlb_flushes"] == 1
    lazy = Device("iommu_dma_ops", iommu=IommuDmaDomain(strict=False),
                  dma_mask=DMA_BIT_MASK(64))
    m = dma_map(lazy, ranges((0x10_0000, 8 * K)), "to_device")
    assert dma_unmap(lazy, m).get("iotlb_flushes", 0) == 0
    assert lazy.resources()["iova_pages"] == 0          # queued, not live
    lazy.ops.domain.advance(10_000_000)                 # IOVA_FQ_TIMEOUT
    assert lazy.ops.domain.pt.stats.iotlb_flush_all == 1
