"""IOTLB invalidation: the gather, strict mode and the lazy flush queue.

Mirrors:
- ``struct iommu_iotlb_gather`` with ``iommu_iotlb_gather_init()`` and
  ``iommu_iotlb_gather_add_page()`` of v6.2 (include/linux/iommu.h): a page of another size than
  the gathered ones, or disjoint from the gathered range, first syncs what was gathered.
- Strict mode: ``__iommu_dma_unmap()`` calls ``iommu_iotlb_sync()`` before freeing the IOVA, so
  no stale translation outlives the unmap.
- Lazy mode: the flush queue of drivers/iommu/dma-iommu.c (v6.2; in drivers/iommu/iova.c before
  v5.17, the stored file read): ``queue_iova()`` first frees entries whose flush finished
  (``fq_ring_free``), flushes the whole IOTLB when the ring is full (``fq_full``:
  ``(tail + 1) % IOVA_FQ_SIZE == head``, so a 256-slot ring holds 255 entries), records the
  entry with ``fq_flush_start_cnt``, and arms a one-shot timer of ``IOVA_FQ_TIMEOUT`` (10 ms)
  if none is pending; ``fq_flush_timeout()`` flushes and frees everything. The IOVA goes back to
  the allocator only after the flush that covers it.

Time is explicit: every call takes ``now_ns``; nothing reads a wall clock.
Simplifications: one CPU's queue (the kernel has one per CPU, flushed together by the timer);
timer expiry at exactly ``armed + timeout`` (no jiffies rounding); a flush takes no time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from phyrlab.units import ULONG_MAX

#: v6.2 ``IOVA_FQ_SIZE`` (later ``IOVA_DEFAULT_FQ_SIZE``) and ``IOVA_FQ_TIMEOUT`` (ms).
IOVA_FQ_SIZE = 256
IOVA_FQ_TIMEOUT_NS = 10_000_000
#: Later kernels' single shared queue for costly invalidation (``IOVA_SINGLE_FQ_*``).
IOVA_SINGLE_FQ_SIZE = 32768
IOVA_SINGLE_FQ_TIMEOUT_NS = 1_000_000_000


@dataclass
class IommuIotlbGather:
    """``struct iommu_iotlb_gather``: the range and page size gathered, not yet invalidated."""

    start: int = ULONG_MAX
    end: int = 0
    pgsize: int = 0
    queued: bool = False
    syncs: int = 0            # model counter: invalidations this gather has issued

    def reset(self) -> None:
        """``iommu_iotlb_gather_init()`` (keeps ``queued`` and the counter)."""
        self.start, self.end, self.pgsize = ULONG_MAX, 0, 0


def iommu_iotlb_gather_is_disjoint(gather: IommuIotlbGather, iova: int, size: int) -> bool:
    """``iommu_iotlb_gather_is_disjoint()`` (v6.2)."""
    end = iova + size - 1
    return gather.end != 0 and (end + 1 < gather.start or iova > gather.end + 1)


def iommu_iotlb_gather_add_page(gather: IommuIotlbGather, iova: int, size: int,
                                sync: Callable[[IommuIotlbGather], None]) -> None:
    """``iommu_iotlb_gather_add_page()``: sync first if ``size`` differs or the page is apart."""
    if (gather.pgsize and gather.pgsize != size) or iommu_iotlb_gather_is_disjoint(
            gather, iova, size):
        sync(gather)
    gather.pgsize = size
    gather.start = min(gather.start, iova)
    gather.end = max(gather.end, iova + size - 1)


def iommu_iotlb_gather_add_run(gather: IommuIotlbGather, start: int, stop: int, pgsize: int,
                               sync: Callable[[IommuIotlbGather], None]) -> None:
    """``add_page`` for every ``pgsize`` page of ``[start, stop)`` in order, in O(1).

    Pages of one size that follow each other never sync, so only the first can.
    """
    iommu_iotlb_gather_add_page(gather, start, pgsize, sync)
    gather.end = max(gather.end, stop - 1)


@dataclass
class ModelClock:
    """An injectable model clock: ``now_ns`` only moves when told to."""

    now_ns: int = 0

    def advance(self, ns: int) -> int:
        if ns < 0:
            raise ValueError(f"cannot move the model clock backwards by {ns} ns")
        self.now_ns += int(ns)
        return self.now_ns


@dataclass
class StaleWindows:
    """How long unmapped translations stayed usable in the IOTLB (unmap -> flush)."""

    entries: int = 0
    pages: int = 0
    total_ns: int = 0
    max_ns: int = 0
    page_ns: int = 0          # sum over pages of their stale time

    def add(self, pages: int, ns: int) -> None:
        self.entries += 1
        self.pages += pages
        self.total_ns += ns
        self.page_ns += pages * ns
        self.max_ns = max(self.max_ns, ns)

    def as_dict(self) -> dict:
        mean = self.total_ns / self.entries if self.entries else 0.0
        return {"entries": self.entries, "pages": self.pages, "max_ns": self.max_ns,
                "mean_ns": mean, "page_ns": self.page_ns}


class StrictInvalidation:
    """Strict mode: every unmap's gather is synced before its IOVA is freed."""

    mode = "strict"

    def __init__(self) -> None:
        self.flushes = 0          # range invalidations (iommu_iotlb_sync with a range)
        self.unmaps = 0
        self.stale = StaleWindows()

    def unmapped(self, syncs: int, pages: int, now_ns: int) -> None:
        """Record one strict unmap that issued ``syncs`` invalidations (stale window 0)."""
        self.unmaps += 1
        self.flushes += syncs
        self.stale.add(pages, 0)

    def advance(self, now_ns: int) -> None:
        """Nothing is pending in strict mode."""

    def pending(self) -> list[tuple[int, int]]:
        return []

    def is_pending(self, pfn: int) -> bool:
        return False

    def stats(self) -> dict:
        return {"mode": self.mode, "flushes": self.flushes, "unmaps": self.unmaps,
                "flush_all": 0, "stale": self.stale.as_dict()}


@dataclass
class _FqEntry:
    iova_pfn: int
    pages: int
    counter: int
    queued_ns: int


@dataclass
class FlushQueue:
    """Lazy mode: the IOVA flush queue (``struct iova_fq`` and its timer)."""

    flush_iotlb_all: Callable[[], None]
    free_iova: Callable[[int, int], None]
    fq_size: int = IOVA_FQ_SIZE
    fq_timeout_ns: int = IOVA_FQ_TIMEOUT_NS
    mode: str = "lazy"
    entries: deque = field(default_factory=deque)
    fq_flush_start_cnt: int = 0
    fq_flush_finish_cnt: int = 0
    timer_deadline_ns: int | None = None
    flushes_full: int = 0
    flushes_timeout: int = 0
    unmaps: int = 0
    stale: StaleWindows = field(default_factory=StaleWindows)
    _pending_pfns: set = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.fq_size < 2:
            raise ValueError(f"fq_size {self.fq_size} must be >= 2 (the ring keeps one slot free)")
        if self.fq_timeout_ns <= 0:
            raise ValueError(f"fq_timeout_ns {self.fq_timeout_ns} must be positive")

    @property
    def flushes(self) -> int:
        """Whole-IOTLB flushes issued by the queue."""
        return self.fq_flush_finish_cnt

    def _fq_full(self) -> bool:
        return len(self.entries) == self.fq_size - 1

    def _flush(self, now_ns: int) -> None:
        """``fq_flush_iotlb()``."""
        self.fq_flush_start_cnt += 1
        self.flush_iotlb_all()
        self.fq_flush_finish_cnt += 1

    def _ring_free(self, now_ns: int) -> None:
        """``fq_ring_free()``: give back entries queued before the last finished flush."""
        while self.entries and self.entries[0].counter < self.fq_flush_finish_cnt:
            e = self.entries.popleft()
            self._pending_pfns.discard(e.iova_pfn)
            self.stale.add(e.pages, now_ns - e.queued_ns)
            self.free_iova(e.iova_pfn, e.pages)

    def advance(self, now_ns: int) -> None:
        """Run the timer if it expired by ``now_ns`` (``fq_flush_timeout()`` at its deadline)."""
        if self.timer_deadline_ns is not None and self.timer_deadline_ns <= now_ns:
            t = self.timer_deadline_ns
            self.timer_deadline_ns = None
            self._flush(t)
            self.flushes_timeout += 1
            self._ring_free(t)

    def queue_iova(self, iova_pfn: int, pages: int, now_ns: int) -> None:
        """``queue_iova()``: defer the IOVA's free until an IOTLB flush covers it."""
        self.advance(now_ns)
        self.unmaps += 1
        self._ring_free(now_ns)
        if self._fq_full():
            self._flush(now_ns)
            self.flushes_full += 1
            self._ring_free(now_ns)
        self.entries.append(_FqEntry(iova_pfn, pages, self.fq_flush_start_cnt, now_ns))
        self._pending_pfns.add(iova_pfn)
        if self.timer_deadline_ns is None:
            self.timer_deadline_ns = now_ns + self.fq_timeout_ns

    def flush_all(self, now_ns: int) -> None:
        """Flush now and free everything queued (as the timer would)."""
        self.advance(now_ns)
        if self.entries:
            self._flush(now_ns)
            self._ring_free(now_ns)

    def pending(self) -> list[tuple[int, int]]:
        """(pfn, pages) still waiting for a flush."""
        return [(e.iova_pfn, e.pages) for e in self.entries]

    def is_pending(self, pfn: int) -> bool:
        return pfn in self._pending_pfns

    def stats(self) -> dict:
        return {"mode": self.mode, "flushes": self.flushes, "unmaps": self.unmaps,
                "flush_all": self.flushes, "flushes_full": self.flushes_full,
                "flushes_timeout": self.flushes_timeout, "pending": len(self.entries),
                "stale": self.stale.as_dict()}
