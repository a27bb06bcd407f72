"""The two-step IOVA API held to dma_iova_* in drivers/iommu/dma-iommu.c."""

from __future__ import annotations

import numpy as np
import pytest

from phyrlab import faults
from phyrlab.dma import Device, dma_map, dma_unmap
from phyrlab.dma.iova_state import (
    DMA_IOVA_USE_SWIOTLB,
    DmaIovaState,
    dma_iova_destroy,
    dma_iova_free,
    dma_iova_link,
    dma_iova_size,
    dma_iova_sync,
    dma_iova_try_alloc,
    dma_iova_unlink,
    dma_map_iova,
    dma_use_iova,
)
from phyrlab.errors import DmaMappingError
from phyrlab.iommu.dma_iommu import IommuDmaDomain
from phyrlab.units import DMA_BIT_MASK

U64 = np.uint64
K = 1024


def iommu_dev(**kw):
    kw.setdefault("dma_mask", DMA_BIT_MASK(64))
    return Device("iommu_dma_ops", **kw)


def idle(dev):
    return all(v == 0 for v in dev.resources().values())


def test_try_alloc_is_false_without_dma_iommu_and_for_bad_sizes():
    st = DmaIovaState(addr=5, size=7)
    assert not dma_iova_try_alloc(Device(), st, 0x1000, 4096)
    assert (st.addr, st.size) == (0, 0) and not dma_use_iova(st)     # memset first
    dev = iommu_dev()
    assert not dma_iova_try_alloc(dev, st, 0, 0)
    assert not dma_iova_try_alloc(dev, st, 0, DMA_IOVA_USE_SWIOTLB | 4096)
    assert idle(dev)


def test_state_keeps_the_offset_and_the_size():
    dev = iommu_dev()
    st = DmaIovaState()
    assert dma_iova_try_alloc(dev, st, 0x1_2345_6200, 0x2E00)
    assert st.addr & 0xFFF == 0x200 and dma_iova_size(st) == 0x2E00 and dma_use_iova(st)
    assert dev.resources()["iova_pages"] == 4        # iova_align(0x2e00 + 0x200) = 3 -> 4
    dma_iova_free(dev, st)
    assert idle(dev)


def test_link_rules_offset_and_merge_boundary():
    dev = iommu_dev()
    st = DmaIovaState()
    assert dma_iova_try_alloc(dev, st, 0, 64 * K)
    # only the first link may start inside a granule
    with pytest.raises(DmaMappingError, match="not aligned") as e:
        dma_iova_link(dev, st, 0x10_0200, 4096, 4096, "to_device")
    assert e.value.errno == "EIO"
    dma_iova_link(dev, st, 0x10_0000, 0, 6 * K, "to_device")      # ends mid-granule
    # the next link then starts off the merge boundary: iommu_map refuses it
    with pytest.raises(DmaMappingError, match="unaligned") as e:
        dma_iova_link(dev, st, 0x20_0000, 6 * K, 4 * K, "to_device")
    assert e.value.errno == "EINVAL"
    with pytest.raises(ValueError, match="outside"):
        dma_iova_link(dev, st, 0x20_0000, 64 * K, 4 * K, "to_device")
    dma_iova_destroy(dev, st, 6 * K, "to_device")
    assert idle(dev)


def test_links_write_ptes_but_one_sync_covers_them():
    dev = iommu_dev()
    st = DmaIovaState()
    assert dma_iova_try_alloc(dev, st, 0, 16 * 4096)
    ops = dev.ops
    before = dict(ops.stats)
    for i in range(16):
        dma_iova_link(dev, st, 0x100_0000 + i * 0x10_0000, i * 4096, 4096, "from_device")
    assert ops.stats.get("iotlb_flushes", 0) == before.get("iotlb_flushes", 0)
    dma_iova_sync(dev, st, 0, 16 * 4096)
    assert ops.stats["iotlb_flushes"] == before.get("iotlb_flushes", 0) + 1
    # the pages land at consecutive IOVAs
    pt = ops.domain.pt
    assert [pt.iova_to_phys(st.addr + i * 4096) for i in (0, 7, 15)] == [
        0x100_0000, 0x100_0000 + 7 * 0x10_0000, 0x100_0000 + 15 * 0x10_0000]
    dma_iova_unlink(dev, st, 4096, 8192, "from_device")      # unlink a middle part
    assert pt.iova_to_phys(st.addr + 4096) == 0 and pt.iova_to_phys(st.addr) != 0
    dma_iova_unlink(dev, st, 0, 4096, "from_device")
    dma_iova_unlink(dev, st, 3 * 4096, 13 * 4096, "from_device")
    assert dev.resources()["mapped_bytes"] == 0 and dev.resources()["iova_pages"] == 16
    dma_iova_free(dev, st)
    assert idle(dev)


def test_untrusted_links_bounce_the_partial_granules():
    dev = iommu_dev(untrusted=True)
    st = DmaIovaState()
    assert dma_iova_try_alloc(dev, st, 0x10_0200, 0x2E00 + 0x1100)
    dma_iova_link(dev, st, 0x10_0200, 0, 0x2E00, "bidirectional")   # head 0xe00 bounced
    assert st.size & DMA_IOVA_USE_SWIOTLB
    dma_iova_link(dev, st, 0x20_0000, 0x2E00, 0x1100, "bidirectional")  # tail 0x100 bounced
    mem = dev.dma_io_tlb_mem
    assert mem.stats["bounce_bytes"] == 0xE00 + 0x100
    pt = dev.ops.domain.pt
    # the bounce keeps the offset: IOVA addr still points at the first byte of data
    head = pt.iova_to_phys(st.addr)
    assert mem.is_swiotlb_buffer(head) and head & 0xFFF == 0x200
    assert pt.iova_to_phys(st.addr + 0xE00) == 0x10_1000           # the aligned middle
    dma_iova_sync(dev, st, 0, dma_iova_size(st))
    dma_iova_destroy(dev, st, dma_iova_size(st), "bidirectional")
    assert mem.stats["bounce_bytes"] == 2 * (0xE00 + 0x100)          # copied back too
    assert idle(dev)


def test_failed_link_unlinks_what_it_linked():
    dev = iommu_dev(untrusted=True)
    st = DmaIovaState()
    assert dma_iova_try_alloc(dev, st, 0x10_0200, 0x3000)
    snap, slots = dev.ops.domain.snapshot(), dev.dma_io_tlb_mem.snapshot()
    # head bounce works, middle link works, tail bounce finds the pool "full"
    with faults.inject("swiotlb_slot", nth=2), pytest.raises(DmaMappingError):
        dma_iova_link(dev, st, 0x10_0200, 0, 0x3000, "to_device")
    assert dev.ops.domain.snapshot() == snap
    assert all(np.array_equal(a, b)
               for a, b in zip(slots, dev.dma_io_tlb_mem.snapshot(), strict=True))
    dma_iova_free(dev, st)
    assert idle(dev)


def test_destroy_on_a_lazy_domain_queues_the_iova():
    dom = IommuDmaDomain(strict=False)
    dev = Device("iommu_dma_ops", iommu=dom, dma_mask=DMA_BIT_MASK(64))
    st = DmaIovaState()
    assert dma_iova_try_alloc(dev, st, 0, 8192)
    dma_iova_link(dev, st, 0x40_0000, 0, 8192, "to_device")
    dma_iova_destroy(dev, st, 8192, "to_device")
    assert dom.pt.stats.iotlb_syncs == 0 and len(dom.iotlb.pending()) == 1
    dom.advance(10_000_000)
    assert dom.pt.stats.iotlb_flush_all == 1 and not dom.iotlb.pending()
    assert idle(dev)


def test_block_style_user_gives_one_segment_and_falls_back_per_range():
    dev = iommu_dev()
    addr = np.array([0x10_0800, 0x30_0000, 0x50_0000], dtype=U64)
    length = np.array([0x800, 0x2000, 0x1234], dtype=U64)
    m = dma_map_iova(dev, (addr, length), "to_device")
    assert len(m) == 1 and int(m.length[0]) == int(length.sum()) and not m.per_range
    assert int(m.dma_addr[0]) & 0xFFF == 0x800
    # map_sg gives the same IOVA-contiguous bytes for this list, in one entry too
    assert m.stats["iotlb_flushes"] == 1 and m.stats["iova_allocs"] == 1
    dma_unmap(dev, m)
    assert idle(dev)
    sg = dma_map(dev, (addr, length), "to_device")
    assert len(sg) == 1 and int(sg.length[0]) == int(length.sum())
    dma_unmap(dev, sg)
    # a gap at the merge boundary (first range ends mid-page): per range
    gap = (np.array([0x10_0000, 0x30_0000], dtype=U64), np.array([0x800, 0x1000], dtype=U64))
    m = dma_map_iova(dev, gap, "to_device")
    assert m.per_range and len(m) == 2
    dma_unmap(dev, m)
    # dma-direct: no IOVA, per range
    d = Device(dma_mask=DMA_BIT_MASK(64))
    m = dma_map_iova(d, (addr, length), "to_device")
    assert m.per_range and list(m.dma_addr) == list(addr)
    dma_unmap(d, m)
    assert idle(dev) and idle(d)


def test_no_iova_space_falls_back_and_a_failed_link_destroys():
    dev = iommu_dev()
    addr = np.array([0x10_0000, 0x30_0000], dtype=U64)
    length = np.array([0x1000, 0x1000], dtype=U64)
    with faults.inject("iova_alloc", nth=1, times=3):   # dma_iova_try_alloc gives up
        m = dma_map_iova(dev, (addr, length), "to_device")
    assert m.per_range
    dma_unmap(dev, m)
    snap = dev.ops.domain.snapshot()
    big = (np.array([0x1_0000_0000, 0x2_0000_0000], dtype=U64),
           np.array([0x40_0000, 0x40_0000], dtype=U64))
    with faults.inject("pt_alloc", nth=2), pytest.raises(DmaMappingError):
        dma_map_iova(dev, big, "to_device")
    assert dev.ops.domain.snapshot() == snap and idle(dev)
