"""The IOVA allocator of drivers/iommu/iova.c: top-down, size-aligned, with range caches.

Mirrors (``struct iova_domain``):
- ``init_iova_domain(granule, start_pfn)``: ``dma_32bit_pfn = 1 << (32 - iova_shift)``,
  ``max32_alloc_size``, the anchor node at ``IOVA_ANCHOR`` (~0UL), cached nodes at the anchor.
- ``alloc_iova()`` -> ``__alloc_and_insert_iova_range()``: walk the allocated ranges downwards
  from the cached node (``cached32_node`` for limits at or below 4 GiB), place the range at
  ``(high_pfn - size) & align_mask`` (aligned to ``roundup_pow_of_two(size)``), retry once
  above the cached node (v6.2 with the January 2023 ``retry_pfn`` fix), remember
  ``max32_alloc_size`` on failure; ``__cached_rbnode_insert_update`` / ``_delete_update``.
- ``alloc_iova_fast()`` / ``free_iova_fast()`` with the per-CPU range caches: magazines of
  ``IOVA_MAG_SIZE`` (128) pfns, ``loaded``/``prev`` per CPU, a depot of ``MAX_GLOBAL_MAGS`` (32)
  per size, for sizes below ``1 << (IOVA_RANGE_CACHE_MAX_SIZE - 1)`` pages (log2 order 0..5);
  ``iova_magazine_pop()`` takes the last pfn that fits the limit; on failure with
  ``flush_rcache`` every cached range goes back to the tree and the allocation is retried.

Verified by reading drivers/iommu/iova.c (the stored file is a v5.11-era version: same walk,
rcache and magazine code; the v6.2 ``retry_pfn``/``iova_find_limit`` change was read from the
stable patch) and include/linux/iova.h.
Simplifications: the rbtree is a sorted Python list (same order, same walk); ``reserve_iova``
and best-fit are not modelled; allocations of tree nodes ask ``should_fail("iova_alloc")``
(``alloc_iova_mem``), magazine allocations never fail; granules up to 64 KiB are accepted
(the kernel BUG()s above its own ``PAGE_SIZE``: a 16K/64K granule means a 16K/64K-page kernel).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np

from phyrlab.faults import should_fail

IOVA_ANCHOR = (1 << 64) - 1
IOVA_RANGE_CACHE_MAX_SIZE = 6
MAX_GLOBAL_MAGS = 32
IOVA_MAG_SIZE = 128
_M64 = (1 << 64) - 1


def fls_long(x: int) -> int:
    """``fls_long()``: 1-based index of the highest set bit, 0 for 0."""
    return int(x).bit_length()


def order_base_2(n: int) -> int:
    """``order_base_2()``: log2 rounded up (0 for 0 and 1)."""
    return 0 if n <= 1 else (n - 1).bit_length()


def roundup_pow_of_two(n: int) -> int:
    return 1 << order_base_2(n)


@dataclass
class _CpuRcache:
    loaded: list[int] = field(default_factory=list)
    prev: list[int] = field(default_factory=list)


@dataclass
class _Rcache:
    depot: list[list[int]] = field(default_factory=list)
    cpu: list[_CpuRcache] = field(default_factory=list)


class IovaDomain:
    """``struct iova_domain``: IOVA page-frame allocation for one IOMMU domain."""

    def __init__(self, granule: int = 4096, start_pfn: int = 1, *, ncpus: int = 1):
        granule, start_pfn = int(granule), int(start_pfn)
        if granule <= 0 or granule & (granule - 1) or granule > 1 << 16:
            raise ValueError(f"IOVA granule {granule} must be a power of two <= 64 KiB")
        if start_pfn < 0:
            raise ValueError(f"start_pfn {start_pfn} must be >= 0")
        if ncpus < 1:
            raise ValueError(f"ncpus {ncpus} must be >= 1")
        self.granule = granule
        self.shift = granule.bit_length() - 1
        self.start_pfn = start_pfn
        self.dma_32bit_pfn = 1 << (32 - self.shift)
        self.max32_alloc_size = self.dma_32bit_pfn
        self._lo: list[int] = [IOVA_ANCHOR]          # sorted pfn_lo, anchor last
        self._hi: dict[int, int] = {IOVA_ANCHOR: IOVA_ANCHOR}
        self.cached_node = IOVA_ANCHOR
        self.cached32_node = IOVA_ANCHOR
        self.ncpus = ncpus
        self.rcaches = [_Rcache(cpu=[_CpuRcache() for _ in range(ncpus)])
                        for _ in range(IOVA_RANGE_CACHE_MAX_SIZE)]
        self._cached: set[int] = set()           # pfn_lo of every range parked in a cache
        self.stats = {"tree_allocs": 0, "tree_frees": 0, "rcache_hits": 0, "rcache_misses": 0,
                      "rcache_inserts": 0, "failures": 0, "rcache_flushes": 0}

    # ---- the tree ---------------------------------------------------------------------
    def _cached_node(self, limit_pfn: int) -> int:
        """``__get_cached_rbnode()``."""
        return self.cached32_node if limit_pfn <= self.dma_32bit_pfn else self.cached_node

    def _find_limit(self, limit_pfn: int) -> int:
        """``iova_find_limit()``: the lowest node whose range reaches ``limit_pfn``."""
        i = bisect.bisect_left(self._lo, limit_pfn)
        if i > 0 and self._hi[self._lo[i - 1]] >= limit_pfn:
            i -= 1
        return self._lo[i]

    def _alloc_and_insert_iova_range(self, size: int, limit_pfn: int,
                                     size_aligned: bool) -> int | None:
        """``__alloc_and_insert_iova_range()``; ``limit_pfn`` is exclusive here."""
        align_mask = (_M64 << fls_long(size - 1)) & _M64 if size_aligned else _M64
        high_pfn, low_pfn = limit_pfn, self.start_pfn
        if limit_pfn <= self.dma_32bit_pfn and size >= self.max32_alloc_size:
            return None
        lo = self._lo
        curr = bisect.bisect_left(lo, self._cached_node(limit_pfn))
        retry_pfn = self._hi[lo[curr]]
        while True:
            while True:
                high_pfn = min(high_pfn, lo[curr])
                new_pfn = ((high_pfn - size) & _M64) & align_mask
                curr -= 1
                if not (curr >= 0 and new_pfn <= self._hi[lo[curr]] and new_pfn >= low_pfn):
                    break
            if high_pfn < size or new_pfn < low_pfn:
                if low_pfn == self.start_pfn and retry_pfn < limit_pfn:
                    high_pfn = limit_pfn
                    low_pfn = retry_pfn + 1
                    curr = bisect.bisect_left(lo, self._find_limit(limit_pfn))
                    continue
                self.max32_alloc_size = size
                return None
            break
        bisect.insort(lo, new_pfn)
        self._hi[new_pfn] = new_pfn + size - 1
        # __cached_rbnode_insert_update
        if new_pfn + size - 1 < self.dma_32bit_pfn:
            self.cached32_node = new_pfn
        else:
            self.cached_node = new_pfn
        return new_pfn

    def alloc_iova(self, size: int, limit_pfn: int, size_aligned: bool = True) -> int | None:
        """``alloc_iova()``: a range of ``size`` pfns ending at or below ``limit_pfn``.

        Returns ``pfn_lo`` or None (the kernel's NULL) when no range fits or the node
        allocation fails (``should_fail("iova_alloc")``).
        """
        size, limit_pfn = int(size), int(limit_pfn)
        if size <= 0:
            raise ValueError(f"alloc_iova: size {size} pages must be positive")
        if limit_pfn < 0:
            raise ValueError(f"alloc_iova: limit_pfn {limit_pfn:#x} must be >= 0")
        if should_fail("iova_alloc"):
            self.stats["failures"] += 1
            return None
        pfn = self._alloc_and_insert_iova_range(size, limit_pfn + 1, size_aligned)
        if pfn is None:
            self.stats["failures"] += 1
        else:
            self.stats["tree_allocs"] += 1
        return pfn

    def find_iova(self, pfn: int) -> tuple[int, int] | None:
        """``find_iova()``: ``(pfn_lo, pfn_hi)`` of the allocated range holding ``pfn``."""
        i = bisect.bisect_right(self._lo, int(pfn)) - 1
        if i < 0 or i == len(self._lo) - 1:
            return None
        lo = self._lo[i]
        hi = self._hi[lo]
        return (lo, hi) if pfn <= hi else None

    def _private_free(self, lo: int) -> None:
        """``private_free_iova()`` with ``__cached_rbnode_delete_update()``."""
        hi = self._hi[lo]
        i = bisect.bisect_left(self._lo, lo)
        nxt = self._lo[i + 1]
        c32 = self.cached32_node
        if lo == c32 or (hi < self.dma_32bit_pfn and lo >= c32):
            self.cached32_node = nxt
        if lo < self.dma_32bit_pfn:
            self.max32_alloc_size = self.dma_32bit_pfn
        if lo >= self.cached_node:
            self.cached_node = nxt
        del self._lo[i]
        del self._hi[lo]
        self.stats["tree_frees"] += 1

    def free_iova(self, pfn: int) -> None:
        """``free_iova()``: find the range holding ``pfn`` and free it."""
        found = self.find_iova(pfn)
        if found is None:
            raise ValueError(f"free_iova: pfn {int(pfn):#x} is not allocated")
        self._private_free(found[0])

    # ---- range caches -----------------------------------------------------------------
    def _rcache_insert(self, pfn: int, size: int, cpu: int) -> bool:
        """``iova_rcache_insert()`` / ``__iova_rcache_insert()``."""
        log_size = order_base_2(size)
        if log_size >= IOVA_RANGE_CACHE_MAX_SIZE:
            return False
        rc = self.rcaches[log_size]
        c = rc.cpu[cpu]
        if len(c.loaded) < IOVA_MAG_SIZE:
            pass
        elif len(c.prev) < IOVA_MAG_SIZE:
            c.loaded, c.prev = c.prev, c.loaded
        else:
            full = c.loaded
            if len(rc.depot) < MAX_GLOBAL_MAGS:
                rc.depot.append(full)
            else:
                for p in full:                   # iova_magazine_free_pfns()
                    self._cached.discard(p)
                    self._private_free(p)
            c.loaded = []
        c.loaded.append(pfn)
        self._cached.add(pfn)
        self.stats["rcache_inserts"] += 1
        return True

    def _rcache_get(self, size: int, limit_pfn: int, cpu: int) -> int:
        """``iova_rcache_get()``: ``limit_pfn`` inclusive, as ``alloc_iova_fast`` passes it."""
        log_size = order_base_2(size)
        if log_size >= IOVA_RANGE_CACHE_MAX_SIZE:
            return 0
        rc = self.rcaches[log_size]
        c = rc.cpu[cpu]
        if c.loaded:
            pass
        elif c.prev:
            c.loaded, c.prev = c.prev, c.loaded
        elif rc.depot:
            c.loaded = rc.depot.pop()
        else:
            return 0
        mag = c.loaded
        lim = limit_pfn + 1 - size               # __iova_rcache_get(rcache, limit_pfn - size)
        i = len(mag) - 1
        while mag[i] > lim:                      # iova_magazine_pop()
            if i == 0:
                return 0
            i -= 1
        pfn = mag[i]
        mag[i] = mag[-1]
        mag.pop()
        self._cached.discard(pfn)
        return pfn

    def free_cpu_cached_iovas(self, cpu: int) -> None:
        """``free_cpu_cached_iovas()``: return one CPU's cached ranges to the tree."""
        for rc in self.rcaches:
            c = rc.cpu[cpu]
            for p in c.loaded + c.prev:
                self._cached.discard(p)
                self._private_free(p)
            c.loaded, c.prev = [], []

    def free_global_cached_iovas(self) -> None:
        """``free_global_cached_iovas()``: return the depots' ranges to the tree."""
        for rc in self.rcaches:
            for mag in rc.depot:
                for p in mag:
                    self._cached.discard(p)
                    self._private_free(p)
            rc.depot = []

    def alloc_iova_fast(self, size: int, limit_pfn: int, flush_rcache: bool = True,
                        cpu: int = 0) -> int:
        """``alloc_iova_fast()``: from the range cache, else the tree; 0 on failure."""
        size, limit_pfn = int(size), int(limit_pfn)
        if size <= 0:
            raise ValueError(f"alloc_iova_fast: size {size} pages must be positive")
        pfn = self._rcache_get(size, limit_pfn, cpu)
        if pfn:
            self.stats["rcache_hits"] += 1
            return pfn
        self.stats["rcache_misses"] += 1
        while True:
            pfn = self.alloc_iova(size, limit_pfn, True)
            if pfn is not None:
                return pfn
            if not flush_rcache:
                return 0
            flush_rcache = False
            self.stats["rcache_flushes"] += 1
            for c in range(self.ncpus):
                self.free_cpu_cached_iovas(c)
            self.free_global_cached_iovas()

    def free_iova_fast(self, pfn: int, size: int, cpu: int = 0) -> None:
        """``free_iova_fast()``: into the range cache, else back to the tree."""
        pfn, size = int(pfn), int(size)
        found = self.find_iova(pfn)
        if found is None or found[0] != pfn:
            raise ValueError(f"free_iova_fast: pfn {pfn:#x} does not start an allocated range")
        if found[1] - found[0] + 1 < size:
            raise ValueError(f"free_iova_fast: {size} pages at pfn {pfn:#x} exceed the "
                             f"allocation of {found[1] - found[0] + 1} pages")
        if pfn in self._cached:
            raise ValueError(f"free_iova_fast: pfn {pfn:#x} is already free (in the rcache)")
        if self._rcache_insert(pfn, size, cpu):
            return
        self._private_free(pfn)

    # design.md names
    def alloc(self, npages: int, limit_pfn: int, cpu: int = 0) -> int:
        """Allocate ``npages`` below ``limit_pfn`` (inclusive): ``alloc_iova_fast``; 0 = none.

        Cacheable sizes (below 32 pages) must be powers of two, as dma-iommu rounds them:
        a cached range is handed out again for any size of the same order.
        """
        npages = int(npages)
        if 0 < npages < 1 << (IOVA_RANGE_CACHE_MAX_SIZE - 1) and npages & (npages - 1):
            raise ValueError(f"alloc: {npages} pages is not a power of two; the range cache "
                             f"would reuse it for {roundup_pow_of_two(npages)}-page requests "
                             f"(round up, as iommu_dma_alloc_iova does)")
        return self.alloc_iova_fast(npages, limit_pfn, True, cpu)

    def free(self, pfn: int, npages: int, cpu: int = 0) -> None:
        """Free what :meth:`alloc` returned: ``free_iova_fast``."""
        self.free_iova_fast(pfn, npages, cpu)

    # ---- inspection -------------------------------------------------------------------
    def _cached_set(self) -> set[int]:
        return set(self._cached)

    def cached_pfns_view(self) -> set[int]:
        """The live set of cached ``pfn_lo`` (do not modify)."""
        return self._cached

    def cached_pfns(self) -> set[int]:
        """Ranges (by ``pfn_lo``) held in the range caches: allocated in the tree, unused."""
        return self._cached_set()

    def ranges(self) -> np.ndarray:
        """Every range the tree holds (cached ones included) as ``(n, 2)`` pfn_lo/pfn_hi."""
        lo = np.array(self._lo[:-1], dtype=np.uint64)
        hi = np.array([self._hi[x] for x in self._lo[:-1]], dtype=np.uint64)
        return np.stack([lo, hi], axis=1) if lo.size else np.empty((0, 2), np.uint64)

    def live_ranges(self) -> list[tuple[int, int]]:
        """Ranges in use (tree ranges that are not parked in a range cache)."""
        cached = self._cached_set()
        return [(lo, self._hi[lo]) for lo in self._lo[:-1] if lo not in cached]

    def fragmentation(self, limit_pfn: int | None = None, *, cached_as_free: bool = False
                      ) -> dict:
        """Free space between ``start_pfn`` and ``limit_pfn`` (default: 4 GiB boundary - 1).

        ``largest_free`` and ``free_ranges`` count pfns as the tree sees them (cached
        ranges are allocated) unless ``cached_as_free``.
        """
        if limit_pfn is None:
            limit_pfn = self.dma_32bit_pfn - 1
        r = self.ranges()
        if cached_as_free and r.size:
            cached = self._cached_set()
            r = r[[int(x) not in cached for x in r[:, 0]]]
        lo = r[:, 0].astype(np.int64) if r.size else np.empty(0, np.int64)
        hi = r[:, 1].astype(np.int64) if r.size else np.empty(0, np.int64)
        keep = (hi >= self.start_pfn) & (lo <= limit_pfn)
        lo = np.clip(lo[keep], self.start_pfn, limit_pfn)
        hi = np.clip(hi[keep], self.start_pfn, limit_pfn)
        starts = np.concatenate([[self.start_pfn], hi + 1])
        ends = np.concatenate([lo, [limit_pfn + 1]])
        gaps = ends - starts
        gaps = gaps[gaps > 0]
        used = int((hi - lo + 1).sum())
        return {"free_ranges": int(gaps.size), "largest_free": int(gaps.max()) if gaps.size
                else 0, "free_pages": int(gaps.sum()), "used_pages": used,
                "allocated_ranges": int(lo.size)}

    def __repr__(self) -> str:
        return (f"IovaDomain(granule={self.granule}, start_pfn={self.start_pfn}, "
                f"{len(self._lo) - 1} ranges)")
