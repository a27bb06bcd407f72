"""IOTLB gather and flush-queue policy against include/linux/iommu.h and dma-iommu.c (v6.2)."""

from __future__ import annotations

import pytest

from phyrlab.iommu import IommuDmaDomain, iommu_dma_map_phys, iommu_dma_unmap_phys
from phyrlab.iommu.iotlb import (
    FlushQueue,
    IommuIotlbGather,
    ModelClock,
    iommu_iotlb_gather_add_page,
)
from phyrlab.units import DMA_BIT_MASK, ULONG_MAX


def test_gather_add_page_decision_table():
    synced = []

    def sync(g):
        synced.append((g.start, g.end, g.pgsize))
        g.reset()

    g = IommuIotlbGather()
    assert (g.start, g.end, g.pgsize) == (ULONG_MAX, 0, 0)
    iommu_iotlb_gather_add_page(g, 0x1000, 0x1000, sync)      # first page: no sync
    iommu_iotlb_gather_add_page(g, 0x2000, 0x1000, sync)      # adjacent, same size: merge
    iommu_iotlb_gather_add_page(g, 0x0000, 0x1000, sync)      # adjacent below: merge
    assert synced == [] and (g.start, g.end) == (0x0, 0x2FFF)
    iommu_iotlb_gather_add_page(g, 0x5000, 0x1000, sync)      # disjoint: sync first
    assert synced == [(0x0, 0x2FFF, 0x1000)]
    iommu_iotlb_gather_add_page(g, 0x6000, 0x200000, sync)    # other size: sync first
    assert synced[-1] == (0x5000, 0x5FFF, 0x1000) and g.pgsize == 0x200000


def _fq(size=4, timeout=1000):
    flushed, freed = [], []
    fq = FlushQueue(lambda: flushed.append(1), lambda p, n: freed.append((p, n)), size, timeout)
    return fq, flushed, freed


def test_flush_queue_ring_keeps_one_slot_free():
    fq, flushed, freed = _fq(size=4, timeout=10_000)
    for t, pfn in enumerate([10, 20, 30]):
        fq.queue_iova(pfn, 1, now_ns=t * 100)
    assert flushed == [] and freed == [] and len(fq.entries) == 3   # (tail+1)%4 == head
    fq.queue_iova(40, 2, now_ns=500)                                # full: flush, free 3
    assert len(flushed) == 1 and freed == [(10, 1), (20, 1), (30, 1)]
    assert fq.pending() == [(40, 2)]
    s = fq.stats()["stale"]
    assert s["max_ns"] == 500 and s["entries"] == 3 and s["page_ns"] == 500 + 400 + 300


def test_flush_queue_timer_is_one_shot_from_first_queue():
    fq, flushed, freed = _fq(size=256, timeout=1000)
    fq.queue_iova(1, 1, now_ns=100)         # arms the timer for t=1100
    fq.queue_iova(2, 1, now_ns=900)         # timer already armed
    fq.advance(1099)
    assert flushed == []
    fq.advance(5000)                        # fires at its deadline, not at 5000
    assert len(flushed) == 1 and freed == [(1, 1), (2, 1)]
    assert fq.stats()["stale"]["max_ns"] == 1000 and fq.stats()["stale"]["pages"] == 2
    fq.queue_iova(3, 1, now_ns=6000)        # re-armed for 7000
    assert fq.timer_deadline_ns == 7000


def test_model_clock_and_bad_params():
    c = ModelClock()
    assert c.advance(5) == 5
    with pytest.raises(ValueError, match="-1"):
        c.advance(-1)
    with pytest.raises(ValueError, match="fq_size 1"):
        FlushQueue(lambda: None, lambda p, n: None, 1)


def _churn(domain, n):
    for i in range(n):
        a = iommu_dma_map_phys(domain, 0x100000 + i * 0x1000, 0x1000, DMA_BIT_MASK(64))
        domain.advance(1000)
        iommu_dma_unmap_phys(domain, a, 0x1000)


def test_strict_flushes_every_unmap_lazy_batches():
    strict = IommuDmaDomain("x86_64", strict=True)
    _churn(strict, 600)
    assert strict.iotlb.flushes == 600 and strict.pt.stats.iotlb_syncs == 600
    assert strict.iotlb.stats()["stale"]["max_ns"] == 0
    lazy = IommuDmaDomain("x86_64", strict=False)
    _churn(lazy, 600)
    # 255 per full ring: flushes at the 256th and 511th unmap; the rest waits for the timer
    assert lazy.iotlb.flushes == 2 and lazy.iotlb.flushes_full == 2
    assert lazy.pt.stats.iotlb_syncs == 0 and lazy.pt.stats.iotlb_flush_all == 2
    assert len(lazy.iotlb.pending()) == 600 - 510
    lazy.advance(10_000_000)
    assert lazy.iotlb.flushes_timeout == 1 and lazy.iotlb.pending() == []
    # the oldest entry waited from its unmap (t=1000 ns) to the first full flush (256000)
    assert lazy.iotlb.stats()["stale"]["max_ns"] > 255_000
    assert lazy.snapshot() == strict.snapshot()
