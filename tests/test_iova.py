"""IovaDomain against drivers/iommu/iova.c: placement, alignment, caches, failure, properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phyrlab import faults
from phyrlab.iommu import IovaDomain
from phyrlab.iommu.iova import IOVA_MAG_SIZE, MAX_GLOBAL_MAGS

LIM32 = (1 << 20) - 1          # DMA_BIT_MASK(32) >> 12


def test_top_down_size_aligned_placement():
    d = IovaDomain(4096, 1)
    assert d.dma_32bit_pfn == 1 << 20
    # (high_pfn - size) & align_mask, walking down from the anchor / last node
    assert d.alloc_iova(1, LIM32) == 0xFFFFF
    assert d.alloc_iova(3, LIM32) == 0xFFFFC        # (0xfffff - 3) & ~3
    assert d.alloc_iova(64, LIM32) == 0xFFF80       # (0xffffc - 64) & ~63
    assert d.alloc_iova(5, LIM32) == 0xFFF78        # (0xfff80 - 5) & ~7
    assert d.find_iova(0xFFFFE) == (0xFFFFC, 0xFFFFE)
    # a lower limit starts below it
    assert d.alloc_iova(16, 0x7FFF) == 0x7FF0
    # unaligned allocation (size_aligned=False) packs right under the last node
    assert d.alloc_iova(3, 0x7FFF, size_aligned=False) == 0x7FED


def test_freed_hole_reused_through_cached32_node():
    d = IovaDomain(4096, 1)
    pfns = [d.alloc_iova(1, LIM32) for _ in range(4)]
    assert pfns == [0xFFFFF, 0xFFFFE, 0xFFFFD, 0xFFFFC]
    d.free_iova(0xFFFFE)                  # cached32_node -> rb_next(free) = 0xfffff
    assert d.cached32_node == 0xFFFFF
    assert d.alloc_iova(1, LIM32) == 0xFFFFE


def test_max32_alloc_size_fast_fail_and_reset():
    d = IovaDomain(4096, (1 << 20) - 16)   # 16 pages below 4 GiB
    assert d.alloc_iova(8, LIM32) == 0xFFFF8
    assert d.alloc_iova(16, LIM32) is None
    assert d.max32_alloc_size == 16
    calls = faults.stats.calls.get("iova_alloc", 0)
    assert d.alloc_iova(16, LIM32) is None and d.alloc_iova(32, LIM32) is None
    assert faults.stats.calls["iova_alloc"] == calls + 2
    d.free_iova(0xFFFF8)                  # pfn_lo below dma_32bit_pfn: reset
    assert d.max32_alloc_size == 1 << 20
    assert d.alloc_iova(16, LIM32) == 0xFFFF0


def test_rcache_lifo_and_large_sizes_bypass():
    d = IovaDomain(4096, 1)
    a = d.alloc(1, LIM32)
    b = d.alloc(1, LIM32)
    d.free(a, 1)
    d.free(b, 1)
    assert d.cached_pfns() == {a, b}
    assert d.find_iova(a) is not None              # still allocated in the tree
    assert d.alloc(1, LIM32) == b                  # magazine pop takes the last one
    big = d.alloc(64, LIM32)                       # order 6 >= IOVA_RANGE_CACHE_MAX_SIZE
    d.free(big, 64)
    assert d.find_iova(big) is None


def test_rcache_pop_respects_limit():
    d = IovaDomain(4096, 1)
    hi = d.alloc(1, LIM32)
    d.free(hi, 1)
    lo = d.alloc(1, 0xFFF)                         # cached pfn is above the limit: tree
    assert lo == 0xFFF and hi == 0xFFFFF


def test_magazines_and_depot():
    d = IovaDomain(4096, 1)
    n = (MAX_GLOBAL_MAGS + 2) * IOVA_MAG_SIZE + 1
    pfns = [d.alloc(1, LIM32) for _ in range(n)]
    for p in pfns[:300]:
        d.free(p, 1)
    rc = d.rcaches[0]
    assert (len(rc.cpu[0].loaded), len(rc.cpu[0].prev), len(rc.depot)) == (44, 128, 1)
    for p in pfns[300:]:
        d.free(p, 1)
    # loaded+prev hold 256; the depot 32 magazines; the 35th full magazine went to the tree
    assert len(rc.depot) == MAX_GLOBAL_MAGS
    assert len(d.cached_pfns()) == n - IOVA_MAG_SIZE
    assert len(d.ranges()) == n - IOVA_MAG_SIZE


def test_failure_flushes_rcaches_then_retries():
    d = IovaDomain(4096, (1 << 20) - 64)          # 64 pages
    pfns = [d.alloc(1, LIM32) for _ in range(64)]
    for p in pfns:
        d.free(p, 1)
    assert len(d.cached_pfns()) == 64
    big = d.alloc(64, LIM32)                       # tree full of cached ranges: flush, retry
    assert big == (1 << 20) - 64 and d.stats["rcache_flushes"] == 1
    assert d.cached_pfns() == set()


def test_injected_node_allocation_failure_changes_nothing():
    d = IovaDomain(4096, 1)
    d.alloc(4, LIM32)
    before = (d.ranges().tolist(), d.cached32_node, d.cached_node)
    with faults.inject("iova_alloc", nth=1, times=2):
        assert d.alloc(4, LIM32) == 0
    assert (d.ranges().tolist(), d.cached32_node, d.cached_node) == before


def test_bad_input():
    with pytest.raises(ValueError, match="3000"):
        IovaDomain(3000, 1)
    d = IovaDomain(4096, 1)
    with pytest.raises(ValueError, match="power of two"):
        d.alloc(3, LIM32)
    with pytest.raises(ValueError, match="0x1234"):
        d.free(0x1234, 1)
    p = d.alloc(2, LIM32)
    d.free(p, 2)
    with pytest.raises(ValueError, match="already free"):
        d.free(p, 2)


def test_fragmentation_report():
    d = IovaDomain(4096, 1)
    d.alloc_iova(1, LIM32)                  # 0xfffff
    d.alloc_iova(16, LIM32)                 # 0xfffe0..0xfffef: a 15-page hole above
    f = d.fragmentation()
    assert f["free_ranges"] == 2
    assert f["largest_free"] == 0xFFFE0 - 1
    assert f["free_pages"] == LIM32 - 17


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.booleans(), st.sampled_from([1, 2, 4, 8, 16, 32, 33, 100, 257]),
                          st.sampled_from([LIM32, 0xFFFF, (1 << 36) - 1]),
                          st.integers(0, 1 << 30)), min_size=1, max_size=150))
def test_no_overlap_and_size_aligned(ops):
    d = IovaDomain(4096, 1)
    live: dict[int, tuple[int, int]] = {}
    for do_alloc, size, limit, pick in ops:
        if do_alloc or not live:
            p = d.alloc(size, limit)
            assert p != 0
            align = 1 << (size - 1).bit_length()
            assert p % align == 0
            assert 1 <= p and p + size - 1 <= limit
            for q, (s, _) in live.items():
                assert p + size <= q or q + s <= p
            live[p] = (size, limit)
        else:
            q = sorted(live)[pick % len(live)]
            d.free(q, live.pop(q)[0])
        r = d.ranges()
        assert all(r[i][1] < r[i + 1][0] for i in range(len(r) - 1))
    assert {lo for lo, _ in d.live_ranges()} == set(live)
