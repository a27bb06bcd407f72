"""swiotlb: the software IO TLB bounce-buffer pool (kernel/dma/swiotlb.c).

Models the slot search of v6.9 and later (``swiotlb_search_pool_area``, unchanged since v6.9
and read in a 2026 mainline copy of kernel/dma/swiotlb.c, Nevuly/WSL2-Linux-Kernel-Rolling at
19d79786) with the v6.9-v6.11 ``swiotlb_tbl_map_single(dev, orig_addr, mapping_size,
alloc_size, alloc_align_mask, dir, attrs)`` (pre-padding and ``pad_slots``, read in the
v6.9 patch "swiotlb: extend buffer pre-padding to alloc_align_mask if necessary"):

- slots of ``IO_TLB_SIZE`` = 2 KiB (``IO_TLB_SHIFT`` 11) grouped in segments of
  ``IO_TLB_SEGSIZE`` = 128; ``slots[i].list`` counts the free slots from ``i`` to the end of its
  segment, so no mapping spans two segments and ``swiotlb_max_mapping_size`` is 256 KiB less
  ``min_align_mask`` rounded up to a slot;
- the pool is split into ``nareas`` areas (a power of two, each a whole number of segments);
  the search starts in area ``cpu & (nareas - 1)`` at that area's ``index`` and wraps;
- alignment (``swiotlb_search_pool_area``): a streaming mapping of ``PAGE_SIZE`` or more with
  no ``alloc_align_mask`` and no ``min_align_mask`` gets ``alloc_align_mask = PAGE_SIZE - 1``;
  then ``alloc_align_mask |= IO_TLB_SIZE - 1`` and ``iotlb_align_mask = min_align_mask &
  ~alloc_align_mask``; a slot is skipped when ``tlb_addr & alloc_align_mask`` or (``orig_addr``
  non-zero and) ``tlb_addr`` differs from ``orig_addr`` in ``iotlb_align_mask``;
  ``stride = get_max_slots(max(alloc_align_mask, iotlb_align_mask))``;
- ``swiotlb_tbl_map_single``: ``offset = orig_addr & min_align_mask & (alloc_align_mask |
  (IO_TLB_SIZE - 1))`` is searched for on top of ``alloc_size``; its whole slots become
  ``pad_slots`` in front of the returned address, which keeps ``offset & (IO_TLB_SIZE - 1)``;
  ``swiotlb_release_slots`` steps back over ``pad_slots``;
- no slot found: "swiotlb buffer is full (sz: %zd bytes), total %lu (slots), used %lu
  (slots)" and ``DMA_MAPPING_ERROR`` (here :class:`DmaMappingError` ``-ENOMEM``, what
  ``dma_mapping_error()`` returns);
- the buffer is always copied in (``DMA_TO_DEVICE``) so a partial device write cannot expose
  stale data; unmap copies back for ``from_device`` and ``bidirectional``.

The other versions (read, not modelled):
- v6.2 (``swiotlb_do_find_slots``): only ``min_align_mask`` bits above 2 KiB are compared;
  page size (mappings >= ``PAGE_SIZE``) and ``alloc_align_mask`` only raise ``stride``, and
  the search starts at ``ALIGN(area->index, stride)``; ``offset`` is ``orig_addr &
  min_align_mask & (IO_TLB_SIZE - 1)``, no ``pad_slots``.
- v6.6-v6.8 (the stored torvalds/linux file, blob 009fbfc9, commit 0eee5ae10256 "swiotlb: fix
  slot alignment checks"): ``iotlb_align_mask = min_align_mask | alloc_align_mask``, ORed with
  ``~PAGE_MASK`` for mappings >= ``PAGE_SIZE``, and that whole mask is compared with
  ``orig_addr``. An IOMMU bounce (``alloc_align_mask`` = granule - 1) of a buffer with bit 11
  set then needs an odd slot, so with a 64 KiB segment boundary a 64 KiB bounce finds no slot
  in an empty pool ("used 0 (slots)"). Will Deacon's v6.9 series (04867a7a3332 "swiotlb: Fix
  double-allocation of slots due to broken alignment handling", "Fix alignment checks when
  both allocation and DMA masks are present", "Reinstate page-alignment for mappings >=
  PAGE_SIZE"; also in 6.6.y/6.8.y stable) replaced it with the rules above.
- v6.12 and later drop ``alloc_size``: ``size = ALIGN(mapping_size + offset, alloc_align_mask
  + 1)``. Callers here pass ``iova_align(size)`` as dma-iommu did up to v6.11.
Simplified: one static pool (no dynamic pools, no restricted pools); bytes copied are counted,
not moved; the search over candidate slots is vectorised but visits them in the kernel's order
(in windows that grow from the area's cursor, so it stops near the first fit as the kernel's
loop does; ``IoTlbMem.batch = False`` tests every candidate first, the reference). Lists
bounce in runs: :func:`swiotlb_map_many` takes in one step the bounces the search places one
after the other from an area's cursor (back to back, or at the next segment's start when one
does not fit in what is left of a segment) and :meth:`IoTlbMem.unmap_many` gives disjoint ones
back in one step, recounting ``slots[].list`` from the free slots of the segments touched
(what the kernel's merging with free neighbours keeps it equal to); with ``batch = False``
both are one call per bounce.
"""

from __future__ import annotations

from bisect import bisect_right

import numpy as np

from phyrlab.dma.ops import DmaStats, check_direction, dma_limit
from phyrlab.errors import DmaMappingError
from phyrlab.faults import first_failure, should_fail
from phyrlab.units import DMA_MAPPING_ERROR, PAGE_SIZE, SZ_64M, U64_MAX

IO_TLB_SHIFT = 11
IO_TLB_SIZE = 1 << IO_TLB_SHIFT
IO_TLB_SEGSIZE = 128
IO_TLB_DEFAULT_SIZE = SZ_64M
INVALID_PHYS_ADDR = U64_MAX
_U32 = 0xFFFF_FFFF          # ``unsigned int`` masks
#: where the default pool sits: low memory (``memblock_alloc_low``), here 1.5 GiB.
DEFAULT_START = 0x6000_0000


def nr_slots(val: int) -> int:
    """``nr_slots``: ``DIV_ROUND_UP(val, IO_TLB_SIZE)``."""
    return -(-int(val) // IO_TLB_SIZE)


def io_tlb_offset(val: int) -> int:
    """``io_tlb_offset``: position of slot ``val`` in its segment."""
    return val & (IO_TLB_SEGSIZE - 1)


def _roundup_pow_of_two(n: int) -> int:
    return 1 << (n - 1).bit_length()


def swiotlb_align_offset(dev, addr: int, align_mask: int = 0) -> int:
    """``swiotlb_align_offset(dev, align_mask, addr)`` (v6.9+): the bits of ``addr`` in
    ``min_align_mask`` below ``align_mask | (IO_TLB_SIZE - 1)``, kept by an offset into the
    allocation (argument order differs from the kernel's; ``align_mask`` defaults to 0)."""
    return int(addr) & dev.min_align_mask & ((int(align_mask) | (IO_TLB_SIZE - 1)) & _U32)


def iommu_is_span_boundary(index, nr, shift, boundary_size):
    """``iommu_is_span_boundary`` (include/linux/iommu-helper.h); works on arrays too."""
    shift = (shift + index) & (boundary_size - 1)
    return shift + nr > boundary_size


class IoTlbMem:
    """``struct io_tlb_mem`` with its default ``struct io_tlb_pool`` (slots in numpy arrays).

    ``size``: bytes (rounded as ``setup_io_tlb_npages``/``swiotlb_adjust_nareas`` do: slots
    aligned to a segment, rounded up to a power of two when there are several areas);
    ``nareas``: rounded up to a power of two then limited to one segment each
    (``limit_nareas``); ``cpu``: the CPU the next mapping runs on (picks the first area).
    ``batch`` (default True): test candidate slots in growing windows and stop at the first
    fit; False tests every candidate of the area first (the per-entry reference the tests
    compare with). Both return the kernel's slot.
    """

    batch: bool = True

    def __init__(self, size: int = IO_TLB_DEFAULT_SIZE, *, start: int = DEFAULT_START,
                 nareas: int = 1, force_bounce: bool = False, cpu: int = 0):
        if size < IO_TLB_SIZE * IO_TLB_SEGSIZE:
            raise ValueError(f"swiotlb size {size} is below one segment ({IO_TLB_SIZE * 128})")
        if start % PAGE_SIZE:
            raise ValueError(f"swiotlb start {start:#x} is not page aligned")
        if nareas < 1:
            raise ValueError(f"swiotlb nareas {nareas} must be >= 1")
        nslabs = -(-(size >> IO_TLB_SHIFT) // IO_TLB_SEGSIZE) * IO_TLB_SEGSIZE
        nareas = _roundup_pow_of_two(nareas)
        # round_up_default_nslabs()
        if nareas > 1:
            if nslabs < IO_TLB_SEGSIZE * nareas:
                nslabs = IO_TLB_SEGSIZE * nareas
            elif nslabs & (nslabs - 1):
                nslabs = _roundup_pow_of_two(nslabs)
        # limit_nareas()
        if nslabs < nareas * IO_TLB_SEGSIZE:
            nareas = nslabs // IO_TLB_SEGSIZE
        self.nslabs = nslabs
        self.start = start
        self.end = start + (nslabs << IO_TLB_SHIFT)
        self.nareas = nareas
        self.area_nslabs = nslabs // nareas
        self.force_bounce = force_bounce
        self.cpu = cpu
        self.stats = DmaStats()
        self.warnings: list[str] = []
        # swiotlb_init_io_tlb_pool()
        i = np.arange(nslabs, dtype=np.int64)
        self.list = (IO_TLB_SEGSIZE - (i & (IO_TLB_SEGSIZE - 1))).astype(np.int64)
        self.orig_addr = np.full(nslabs, INVALID_PHYS_ADDR, dtype=np.uint64)
        self.alloc_size = np.zeros(nslabs, dtype=np.int64)
        self.pad_slots = np.zeros(nslabs, dtype=np.int64)
        self.area_index = np.zeros(nareas, dtype=np.int64)
        self.area_used = np.zeros(nareas, dtype=np.int64)

    @property
    def used(self) -> int:
        """Slots in use (``mem_used``)."""
        return int(self.area_used.sum())

    def snapshot(self) -> tuple:
        """Copies of what the pool holds, to compare before and after an operation.

        The search cursor ``area_index`` is left out: the kernel does not rewind it when it
        gives slots back, so it is a hint, not a holding.
        """
        return (self.list.copy(), self.orig_addr.copy(), self.alloc_size.copy(),
                self.pad_slots.copy(), self.area_used.copy())

    def is_swiotlb_buffer(self, paddr: int) -> bool:
        """``is_swiotlb_buffer``."""
        return self.start <= int(paddr) < self.end

    def is_swiotlb_buffer_array(self, paddr: np.ndarray) -> np.ndarray:
        """``is_swiotlb_buffer`` of every element."""
        paddr = np.asarray(paddr, dtype=np.uint64)
        return (paddr >= np.uint64(self.start)) & (paddr < np.uint64(self.end))

    def _slot_addr(self, start: int, idx: int) -> int:
        return start + (idx << IO_TLB_SHIFT)

    # -- slot search ------------------------------------------------------------------------
    def _candidate_runs(self, index: int, stride: int, align_mask: int, target: int,
                        base_addr: int) -> list[tuple[int, int]]:
        """Area-relative slots the kernel's loop tests for space, in its order, as
        ``(first, count)`` runs spaced ``stride`` apart.

        The loop steps by one over slots whose address does not match ``orig_addr`` in
        ``align_mask`` (each costing one of ``area_nslabs`` checks), by ``stride`` over those
        that do, and wraps to 0 (not modulo) when it passes the end of the area.
        """
        n = self.area_nslabs
        checked, idx, runs = 0, index, []
        while checked < n:
            sa = (base_addr + (idx << IO_TLB_SHIFT)) & align_mask
            d = ((target - sa) & align_mask) >> IO_TLB_SHIFT
            if d:
                steps = min(d, n - idx)
                if checked + steps > n:
                    break
                checked += steps
                if d >= n - idx:
                    idx = 0
                    continue
                idx += d
                if checked >= n:
                    break
            r = min(-(-(n - idx) // stride), -(-(n - checked) // stride))
            runs.append((idx, r))
            checked += r * stride
            idx = 0
        return runs

    def _candidates(self, index: int, stride: int, align_mask: int, target: int,
                    base_addr: int) -> np.ndarray:
        """:meth:`_candidate_runs` as one index array."""
        runs = [np.arange(i, i + r * stride, stride, dtype=np.int64)
                for i, r in self._candidate_runs(index, stride, align_mask, target, base_addr)]
        return np.concatenate(runs) if runs else np.zeros(0, dtype=np.int64)

    def _first_fit_in_runs(self, runs: list[tuple[int, int]], stride: int, slot_base: int,
                           nslots: int, boundary_shift: int, max_slots: int) -> int:
        """The first candidate of ``runs`` with room and no boundary crossing (area-relative),
        or -1; tested in windows that grow from 16, so a pool with room near its cursor
        costs a few array operations, not one per slot of the area."""
        lst = self.list
        for first, count in runs:
            slot = slot_base + first  # the cursor itself first, in scalars
            if not iommu_is_span_boundary(slot, nslots, boundary_shift, max_slots) \
                    and int(lst[slot]) >= nslots:
                return first
            lo, w = 1, 16
            while lo < count:
                hi = min(count, lo + w)
                cand = first + stride * np.arange(lo, hi, dtype=np.int64)
                slot = slot_base + cand
                ok = ~iommu_is_span_boundary(slot, nslots, boundary_shift, max_slots)
                ok &= lst[slot] >= nslots
                hits = np.flatnonzero(ok)
                if hits.size:
                    return int(cand[hits[0]])
                lo, w = hi, w * 8
        return -1

    def _first_fit_stepping(self, area: int, mask: int, target: int, stride: int,
                            slot_base: int, base_addr: int, nslots: int, boundary_shift: int,
                            max_slots: int) -> int:
        """The kernel's loop literally, stopping at the first slot with room (area-relative
        index or -1): +1 past a slot failing the alignment test, +stride past one that
        passes."""
        n, idx, checked = self.area_nslabs, int(self.area_index[area]), 0
        lst = self.list
        while checked < n:
            if ((base_addr + (idx << IO_TLB_SHIFT)) & mask) != target:
                idx = 0 if idx + 1 >= n else idx + 1
                checked += 1
                continue
            slot = slot_base + idx
            if not iommu_is_span_boundary(slot, nslots, boundary_shift, max_slots) \
                    and lst[slot] >= nslots:
                return idx
            idx = 0 if idx + stride >= n else idx + stride
            checked += stride
        return -1

    def _search_pool_area(self, dev, area: int, orig_addr: int, alloc_size: int,
                          alloc_align_mask: int) -> int:
        """``swiotlb_search_pool_area`` (v6.9+; v6.6 ``swiotlb_area_find_slots``): first slot
        index, or -1 (nothing changed)."""
        boundary_mask = dev.seg_boundary_mask
        tbl_dma_addr = dev.phys_to_dma(self.start) & boundary_mask
        max_slots = (boundary_mask >> IO_TLB_SHIFT) + 1
        iotlb_align_mask = dev.min_align_mask & _U32
        nslots = nr_slots(alloc_size)
        offset = swiotlb_align_offset(dev, orig_addr)
        alloc_align_mask = int(alloc_align_mask) & _U32
        # streaming mappings >= PAGE_SIZE with no other requirement stay page aligned
        if not alloc_align_mask and not iotlb_align_mask and alloc_size >= PAGE_SIZE:
            alloc_align_mask = PAGE_SIZE - 1
        # at least slot aligned; min_align_mask bits inside the alignment are kept by offset
        alloc_align_mask |= IO_TLB_SIZE - 1
        iotlb_align_mask &= ~alloc_align_mask & _U32
        stride = (max(alloc_align_mask, iotlb_align_mask) >> IO_TLB_SHIFT) + 1
        if nslots > self.area_nslabs - int(self.area_used[area]):
            return -1
        slot_base = area * self.area_nslabs
        # a slot is skipped when (tlb_addr & alloc_align_mask) or, for a non-zero orig_addr,
        # (tlb_addr & iotlb_align_mask) != (orig_addr & iotlb_align_mask): one masked compare
        mask = alloc_align_mask | (iotlb_align_mask if orig_addr else 0)
        target = orig_addr & iotlb_align_mask if orig_addr else 0
        if tbl_dma_addr & (IO_TLB_SIZE - 1):
            return -1               # every slot fails the alloc_align_mask test
        base_addr = tbl_dma_addr + (slot_base << IO_TLB_SHIFT)
        high = mask & ~(IO_TLB_SIZE - 1)
        bshift = nr_slots(tbl_dma_addr)
        periodic = high == (stride - 1) << IO_TLB_SHIFT   # stride is the period of the mask
        if self.batch and periodic:
            runs = self._candidate_runs(int(self.area_index[area]), stride, high, target,
                                        base_addr)
            index = self._first_fit_in_runs(runs, stride, slot_base, nslots, bshift, max_slots)
        elif self.batch:  # stride and mask period differ (orig_addr 0, mixed masks)
            index = self._first_fit_stepping(area, high, target, stride, slot_base, base_addr,
                                             nslots, bshift, max_slots)
        else:  # per entry: every candidate of the area, then the first with room
            if periodic:
                cand = self._candidates(int(self.area_index[area]), stride, high, target,
                                        base_addr)
            else:
                cand = self._candidates_slow(area, high, target, stride, base_addr)
            slot = slot_base + cand
            # max_slots <= 2^53, so int64 arithmetic is exact here
            ok = ~iommu_is_span_boundary(slot, nslots, bshift, max_slots)
            ok &= self.list[slot] >= nslots
            hits = np.flatnonzero(ok)
            index = int(cand[hits[0]]) if hits.size else -1
        if index < 0:
            return -1
        slot_index = slot_base + index
        # found:
        rel = np.arange(nslots, dtype=np.int64)
        self.list[slot_index:slot_index + nslots] = 0
        self.alloc_size[slot_index:slot_index + nslots] = (
            alloc_size - (offset + (rel << IO_TLB_SHIFT)))
        self._relink_before(slot_index, 0)
        nxt = index + nslots
        self.area_index[area] = 0 if nxt >= self.area_nslabs else nxt
        self.area_used[area] += nslots
        return slot_index

    def _candidates_slow(self, area: int, mask: int, target: int, stride: int,
                         base_addr: int) -> np.ndarray:
        """The kernel's loop literally: +1 past a slot failing the alignment test, +stride
        past one that passes; area-relative indices of the slots that pass, in order."""
        n, idx, checked, out = self.area_nslabs, int(self.area_index[area]), 0, []
        while checked < n:
            if ((base_addr + (idx << IO_TLB_SHIFT)) & mask) != target:
                idx = 0 if idx + 1 >= n else idx + 1
                checked += 1
                continue
            out.append(idx)
            idx = 0 if idx + stride >= n else idx + stride
            checked += stride
        return np.array(out, dtype=np.int64)

    def _relink_before(self, index: int, count: int) -> None:
        """The free slots just before ``index`` in its segment count on from ``count``:
        the kernel's ``for (i = index - 1; io_tlb_offset(i) != IO_TLB_SEGSIZE - 1 &&
        slots[i].list; i--) slots[i].list = ++count;``."""
        if not self.batch:
            i = index - 1
            while i >= 0 and io_tlb_offset(i) != IO_TLB_SEGSIZE - 1 and self.list[i]:
                count += 1
                self.list[i] = count
                i -= 1
            return
        seg0 = index & ~(IO_TLB_SEGSIZE - 1)
        if seg0 == index or not self.list[index - 1]:
            return
        zero = np.flatnonzero(self.list[seg0:index] == 0)
        lo = seg0 + int(zero[-1]) + 1 if zero.size else seg0
        if lo < index:
            self.list[lo:index] = count + index - np.arange(lo, index, dtype=np.int64)

    def find_slots(self, dev, orig_addr: int, alloc_size: int, alloc_align_mask: int) -> int:
        """``swiotlb_pool_find_slots``: try every area from ``cpu & (nareas - 1)``."""
        start = self.cpu & (self.nareas - 1)
        i = start
        while True:
            index = self._search_pool_area(dev, i, orig_addr, alloc_size, alloc_align_mask)
            if index >= 0:
                return index
            i = 0 if i + 1 >= self.nareas else i + 1
            if i == start:
                return -1

    # -- map / unmap ------------------------------------------------------------------------
    def tbl_map_single(self, dev, orig_addr: int, mapping_size: int, alloc_size: int,
                       alloc_align_mask: int, direction: str) -> int:
        """``swiotlb_tbl_map_single`` (v6.9-v6.11 arguments): the bounce buffer's physical
        address, or raise."""
        check_direction(direction)
        if mapping_size > alloc_size:
            raise DmaMappingError("ENOMEM", f"Invalid sizes (mapping: {mapping_size} bytes, "
                                            f"alloc: {alloc_size} bytes)")
        # pre-padding: min_align_mask bits of orig_addr up to alloc_align_mask or a slot
        offset = swiotlb_align_offset(dev, orig_addr, alloc_align_mask)
        index = -1 if should_fail("swiotlb_slot") else self.find_slots(
            dev, orig_addr, alloc_size + offset, alloc_align_mask)
        if index == -1:
            raise DmaMappingError(
                "ENOMEM", f"{dev.name}: swiotlb buffer is full (sz: {alloc_size} bytes), "
                          f"total {self.nslabs} (slots), used {self.used} (slots)")
        pad_slots = offset >> IO_TLB_SHIFT
        offset &= IO_TLB_SIZE - 1
        index += pad_slots
        self.pad_slots[index] = pad_slots
        n = nr_slots(alloc_size + offset)
        self.orig_addr[index:index + n] = (
            np.uint64(orig_addr) + (np.arange(n, dtype=np.uint64) << np.uint64(IO_TLB_SHIFT)))
        tlb_addr = self._slot_addr(self.start, index) + offset
        # slots taken, pre-padding included (what mem_used() counts)
        self.stats["bounce_slots"] = self.stats.get("bounce_slots", 0) + pad_slots + n
        self.bounce(dev, tlb_addr, mapping_size, "to_device")
        return tlb_addr

    def release_slots(self, dev, tlb_addr: int) -> None:
        """``swiotlb_release_slots``: give the slots (and ``pad_slots`` before them) back,
        merging with free neighbours."""
        offset = swiotlb_align_offset(dev, tlb_addr)
        index = (tlb_addr - offset - self.start) >> IO_TLB_SHIFT
        index -= int(self.pad_slots[index])
        nslots = nr_slots(int(self.alloc_size[index]) + offset)
        aindex = index // self.area_nslabs
        seg_end = -(-(index + 1) // IO_TLB_SEGSIZE) * IO_TLB_SEGSIZE
        count = int(self.list[index + nslots]) if index + nslots < seg_end else 0
        # list[i] counts the free slots from i to the end of the segment's free run
        self.list[index:index + nslots] = count + nslots - np.arange(nslots, dtype=np.int64)
        count += nslots
        self.orig_addr[index:index + nslots] = INVALID_PHYS_ADDR
        self.alloc_size[index:index + nslots] = 0
        self.pad_slots[index:index + nslots] = 0
        self._relink_before(index, count)
        self.area_used[aindex] -= nslots

    def tbl_unmap_single(self, dev, tlb_addr: int, mapping_size: int, direction: str,
                         skip_cpu_sync: bool = False) -> int:
        """``swiotlb_tbl_unmap_single``: copy back if needed, free the slots; bytes copied."""
        if not self.is_swiotlb_buffer(tlb_addr):
            raise ValueError(f"{tlb_addr:#x} is not a swiotlb buffer address")
        copied = 0
        if not skip_cpu_sync and direction in ("from_device", "bidirectional"):
            copied = self.bounce(dev, tlb_addr, mapping_size, "from_device")
        self.release_slots(dev, tlb_addr)
        return copied

    # -- many at once ---------------------------------------------------------------------
    def _map_run(self, dev, orig: np.ndarray, size: np.ndarray
                 ) -> tuple[int, int, np.ndarray]:
        """Place the longest prefix of the bounces ``(orig[i], size[i])`` (``swiotlb_map``
        with ``alloc_align_mask`` 0) that the slot search puts, one after the other, in the
        area it tries first without wrapping past the area's end: each at the previous one's
        end, or at the start of the next segment when it does not fit in what is left of
        the current one (:meth:`_run_slots`), in a dma-capable slot; the slots are taken as
        the single calls take them. Returns ``(placed, m, dma)``: ``m`` bounces qualified,
        the first ``placed`` were mapped at DMA addresses ``dma``, and the fault point failed
        the call after them when ``placed < m``."""
        n_area = self.area_nslabs
        boundary_mask = dev.seg_boundary_mask
        tbl_dma_addr = dev.phys_to_dma(self.start) & boundary_mask
        if tbl_dma_addr & (IO_TLB_SIZE - 1):
            return 0, 0, orig[:0]
        max_slots = (boundary_mask >> IO_TLB_SHIFT) + 1
        bshift = nr_slots(tbl_dma_addr)
        min_align = dev.min_align_mask & _U32
        o = orig.astype(np.int64)
        sz = size.astype(np.int64)
        # swiotlb_tbl_map_single: offset, then swiotlb_search_pool_area's masks
        offset = o & (min_align & (IO_TLB_SIZE - 1))
        alloc = sz + offset
        nsl = (alloc + IO_TLB_SIZE - 1) >> IO_TLB_SHIFT
        # swiotlb_pool_find_slots: areas from cpu & (nareas - 1) on; one too full for the
        # first bounce (the search's first test) is skipped, and must be for all of the run
        free = n_area - self.area_used
        area, skipped = self.cpu & (self.nareas - 1), -1
        for _ in range(self.nareas):
            if int(nsl[0]) <= int(free[area]):
                break
            skipped = max(skipped, int(free[area]))
            area = 0 if area + 1 >= self.nareas else area + 1
        else:
            return 0, 0, orig[:0]
        slot_base = area * n_area
        # what does not depend on the slot: a size the search takes, room left in the area
        # (the search's first test), no skipped area with room for it
        ends = np.cumsum(nsl)
        ok = (sz >= 1) & (nsl >= 1) & (nsl <= IO_TLB_SEGSIZE)
        ok &= orig != np.uint64(INVALID_PHYS_ADDR)
        ok &= (int(self.area_used[area]) + ends <= n_area) & (nsl > skipped)
        bad = np.flatnonzero(~ok)
        k = int(bad[0]) if bad.size else len(o)
        if k == 0:
            return 0, 0, orig[:0]
        o, sz, offset, alloc, nsl, ends = o[:k], sz[:k], offset[:k], alloc[:k], nsl[:k], ends[:k]
        if min_align:
            aam = np.full(k, IO_TLB_SIZE - 1, dtype=np.int64)
        else:
            aam = np.where(alloc >= PAGE_SIZE, PAGE_SIZE - 1, 0) | (IO_TLB_SIZE - 1)
        iotlb = min_align & ~aam & _U32
        nz = o != 0
        high = (aam | np.where(nz, iotlb, 0)) & ~(IO_TLB_SIZE - 1)
        target = np.where(nz, o & iotlb, 0)
        # only the low 32 bits meet the masks below
        base_addr = (tbl_dma_addr + (slot_base << IO_TLB_SHIFT)) & _U32
        cursor = int(self.area_index[area])
        c, k = self._run_slots(cursor, nsl, ends, n_area)
        if k == 0:
            return 0, 0, orig[:0]
        nsl, sz, offset, high, target = nsl[:k], sz[:k], offset[:k], high[:k], target[:k]
        # where each search starts: the cursor the previous bounce left
        prev_end = np.empty(k, dtype=np.int64)
        prev_end[0] = cursor
        prev_end[1:] = c[:-1] + nsl[:-1]
        slot = slot_base + c
        ok = c + nsl <= n_area
        ok &= ((base_addr + (c << IO_TLB_SHIFT)) & high) == target
        # a bounce past its search's start: the slots before it were tested and crossed a
        # segment end, each a stride on from the last, which reaches the segment's start
        # only when the stride is the period of the alignment test
        stride = (np.maximum(aam[:k], iotlb[:k]) >> IO_TLB_SHIFT) + 1
        ok &= (c == prev_end) | (high == (stride - 1) << IO_TLB_SHIFT)
        ok &= ~iommu_is_span_boundary(slot, nsl, bshift, max_slots)
        ok &= self.list[slot] >= nsl
        tlb = (np.uint64(self.start) + (slot.astype(np.uint64) << np.uint64(IO_TLB_SHIFT))
               + offset.astype(np.uint64))
        dma = dev.phys_to_dma_array(tlb)
        ok &= _capable_array(dev, dma, sz)
        bad = np.flatnonzero(~ok)
        m = int(bad[0]) if bad.size else k
        placed = first_failure("swiotlb_slot", m)
        if placed == 0:
            return 0, m, orig[:0]
        c, nsl, sz, slot = c[:placed], nsl[:placed], sz[:placed], slot[:placed]
        total = int(ends[placed - 1])
        first = int(slot[0])
        nxt = int(c[-1] + nsl[-1])
        rel = np.arange(total, dtype=np.int64) - np.repeat(ends[:placed] - nsl, nsl)
        # found: (the later ones' relink is a no-op: the slot before each was just taken,
        # or ends the previous segment)
        taken = slice(first, slot_base + nxt) if nxt - int(c[0]) == total else (
            np.repeat(slot, nsl) + rel)
        self.list[taken] = 0
        self.alloc_size[taken] = np.repeat(sz, nsl) - (rel << IO_TLB_SHIFT)
        self._relink_before(first, 0)
        self.area_index[area] = 0 if nxt >= n_area else nxt
        self.area_used[area] += total
        # tbl_map_single: no pad slots (offset < IO_TLB_SIZE), orig_addr per slot, bounce in
        self.pad_slots[slot] = 0
        self.orig_addr[taken] = (np.repeat(orig[:placed], nsl)
                                 + (rel.astype(np.uint64) << np.uint64(IO_TLB_SHIFT)))
        self.stats["bounce_slots"] = self.stats.get("bounce_slots", 0) + total
        self.stats["bounce_bytes"] = self.stats.get("bounce_bytes", 0) + int(sz.sum())
        return placed, m, dma[:placed]

    @staticmethod
    def _run_slots(cursor: int, nsl: np.ndarray, ends: np.ndarray, n_area: int
                   ) -> tuple[np.ndarray, int]:
        """Area-relative first slot of the first ``k`` bounces of a run (``nsl[i]`` slots
        each, ``ends = cumsum(nsl)``, ``1 <= nsl <= IO_TLB_SEGSIZE``) and ``k``: each at the
        previous one's end (the cursor for the first), or at the start of the next segment
        when it would cross the current one's end (every slot the search tests before that
        has less room than it needs: ``slots[].list`` never counts past a segment end); the
        run stops where the search would wrap past the area's end. :meth:`_map_run` then
        checks each slot is the one the search takes (aligned, free, within the boundary, in
        reach, and reached by the search's strides)."""
        starts = ends - nsl
        first, delta = [], []       # the bounces that open a stretch and its offset
        i, c, k = 0, cursor, len(nsl)
        ends_l = ends.tolist()
        while i < k and c < n_area:
            seg_end = (c // IO_TLB_SEGSIZE + 1) * IO_TLB_SEGSIZE
            base = ends_l[i - 1] if i else 0
            # the bounces from i that fit back to back in [c, seg_end)
            j = bisect_right(ends_l, base + seg_end - c, i)
            if j > i:
                first.append(i)
                delta.append(c - base)
                i = j
            c = seg_end
        if not first:
            return starts[:0], 0
        first.append(i)
        return starts[:i] + np.repeat(np.array(delta, dtype=np.int64),
                                      np.diff(np.array(first, dtype=np.int64))), i

    def unmap_many(self, dev, tlb_addr: np.ndarray, mapping_size: np.ndarray, direction: str,
                   skip_cpu_sync: bool = False) -> int:
        """``swiotlb_tbl_unmap_single`` of each ``(tlb_addr[i], mapping_size[i])`` in order;
        bytes copied. With :attr:`batch`, disjoint allocations each inside one segment (any
        list of live bounces) are given back at once: the copies are summed and every
        touched segment's ``list`` is recounted from its free slots, which is what the
        kernel's merging with free neighbours keeps it equal to; anything else (a double
        free, a warning from ``swiotlb_bounce``, an address outside the pool) goes one call
        at a time."""
        tlb_addr = np.asarray(tlb_addr, dtype=np.uint64)
        mapping_size = np.asarray(mapping_size, dtype=np.uint64)
        k = len(tlb_addr)
        if not self.batch or k < 2 or not self._unmap_many_batched(
                dev, tlb_addr, mapping_size, direction, skip_cpu_sync):
            return sum(self.tbl_unmap_single(dev, int(t), int(z), direction, skip_cpu_sync)
                       for t, z in zip(tlb_addr.tolist(), mapping_size.tolist(), strict=True))
        return int(mapping_size.sum()) if self._copies_back(direction, skip_cpu_sync) else 0

    @staticmethod
    def _copies_back(direction: str, skip_cpu_sync: bool) -> bool:
        return not skip_cpu_sync and direction in ("from_device", "bidirectional")

    def _unmap_many_batched(self, dev, tlb_addr: np.ndarray, size: np.ndarray,
                            direction: str, skip_cpu_sync: bool) -> bool:
        """:meth:`unmap_many` at once, or False (nothing changed) when it must go per call."""
        if not self.is_swiotlb_buffer_array(tlb_addr).all():
            return False
        t = (tlb_addr - np.uint64(self.start)).astype(np.int64)
        offset = tlb_addr.astype(np.int64) & (dev.min_align_mask & (IO_TLB_SIZE - 1))
        index0 = (t - offset) >> IO_TLB_SHIFT
        if (index0 < 0).any():
            return False
        index = index0 - self.pad_slots[index0]
        if (index < 0).any():
            return False
        nsl = (self.alloc_size[index] + offset + IO_TLB_SIZE - 1) >> IO_TLB_SHIFT
        end = index + nsl
        if (nsl < 1).any() or (index0 >= end).any() or ((end - 1) >> 7 != index >> 7).any():
            return False  # nothing held there, or a range across segments
        order = np.argsort(index, kind="stable")
        if (index[order][1:] < end[order][:-1]).any():
            return False  # overlapping (a double free): the calls see each other
        copy = self._copies_back(direction, skip_cpu_sync)
        if copy:
            # swiotlb_bounce's checks, on the slot of tlb_addr, before its release
            bidx = t >> IO_TLB_SHIFT
            if ((bidx < index) | (bidx >= end)).any():
                return False
            orig = self.orig_addr[bidx]
            if (orig == np.uint64(INVALID_PHYS_ADDR)).any():
                return False
            tlb_off = t & (IO_TLB_SIZE - 1)
            orig_off = orig.astype(np.int64) & (dev.min_align_mask & (IO_TLB_SIZE - 1))
            left = self.alloc_size[bidx] - (tlb_off - orig_off)
            if ((tlb_off < orig_off) | (tlb_off - orig_off > self.alloc_size[bidx])
                    | (size.astype(np.int64) > left)).any():
                return False  # a warning: per call, in order
            self.stats["bounce_bytes"] = self.stats.get("bounce_bytes", 0) + int(size.sum())
        # swiotlb_release_slots of each: clear the slots, recount the touched segments
        # (in the block of whole segments from the first to the last slot given back)
        lo = (int(index.min()) >> 7) << 7
        hi = ((int(end.max()) + IO_TLB_SEGSIZE - 1) >> 7) << 7
        edge = np.zeros(hi - lo + 1, dtype=np.int8)
        edge[index - lo] = 1
        edge[end - lo] -= 1      # disjoint: no two starts, no two ends alike
        back = np.cumsum(edge[:-1], dtype=np.int8).view(bool)
        self.orig_addr[lo:hi][back] = INVALID_PHYS_ADDR
        self.alloc_size[lo:hi][back] = 0
        self.pad_slots[lo:hi][back] = 0
        seg_back = back.reshape(-1, IO_TLB_SEGSIZE)
        touched = seg_back.any(axis=1)
        view = self.list[lo:hi].reshape(-1, IO_TLB_SEGSIZE)
        free = (view[touched] > 0) | seg_back[touched]
        pos = np.arange(IO_TLB_SEGSIZE, dtype=np.int64)
        # the first used slot at or after each slot (IO_TLB_SEGSIZE if none)
        nxt = np.where(free, IO_TLB_SEGSIZE, pos)[:, ::-1]
        nxt = np.minimum.accumulate(nxt, axis=1)[:, ::-1]
        view[touched] = np.where(free, nxt - pos, 0)
        np.subtract.at(self.area_used, index // self.area_nslabs, nsl)
        return True

    def bounce(self, dev, tlb_addr: int, size: int, direction: str) -> int:
        """``swiotlb_bounce``: the bytes it would copy (its overflow checks included)."""
        index = (tlb_addr - self.start) >> IO_TLB_SHIFT
        orig_addr = int(self.orig_addr[index])
        alloc_size = int(self.alloc_size[index])
        if orig_addr == INVALID_PHYS_ADDR:
            return 0
        tlb_offset = tlb_addr & (IO_TLB_SIZE - 1)
        orig_addr_offset = swiotlb_align_offset(dev, orig_addr)
        if tlb_offset < orig_addr_offset:
            self.warnings.append(f"Access before mapping start detected. orig offset "
                                 f"{orig_addr_offset}, requested offset {tlb_offset}.")
            return 0
        tlb_offset -= orig_addr_offset
        if tlb_offset > alloc_size:
            self.warnings.append(f"Buffer overflow detected. Allocation size: {alloc_size}. "
                                 f"Mapping size: {size}+{tlb_offset}.")
            return 0
        alloc_size -= tlb_offset
        if size > alloc_size:
            self.warnings.append(f"Buffer overflow detected. Allocation size: {alloc_size}. "
                                 f"Mapping size: {size}.")
            size = alloc_size
        self.stats["bounce_bytes"] = self.stats.get("bounce_bytes", 0) + size
        return size

    def sync_single_for_device(self, dev, tlb_addr: int, size: int, direction: str) -> int:
        """``swiotlb_sync_single_for_device``: copies for to_device/bidirectional."""
        if direction in ("to_device", "bidirectional"):
            return self.bounce(dev, tlb_addr, size, "to_device")
        if direction != "from_device":
            raise ValueError(f"BUG: swiotlb sync for device with direction {direction!r}")
        return 0

    def sync_single_for_cpu(self, dev, tlb_addr: int, size: int, direction: str) -> int:
        """``swiotlb_sync_single_for_cpu``: copies for from_device/bidirectional."""
        if direction in ("from_device", "bidirectional"):
            return self.bounce(dev, tlb_addr, size, "from_device")
        if direction != "to_device":
            raise ValueError(f"BUG: swiotlb sync for cpu with direction {direction!r}")
        return 0

    def sync_bounced(self, dev, phys: np.ndarray, dma_len: np.ndarray, direction: str,
                     for_cpu: bool) -> int:
        """Sync the entries of a list whose physical address lies in this pool (the
        ``is_swiotlb_buffer`` test of ``dma_direct_sync_sg_*`` and ``iommu_dma_sync_sg_*``);
        returns the bytes copied."""
        fn = self.sync_single_for_cpu if for_cpu else self.sync_single_for_device
        return sum(fn(dev, int(phys[i]), int(dma_len[i]), direction)
                   for i in np.flatnonzero(self.is_swiotlb_buffer_array(phys)).tolist())


def swiotlb_max_mapping_size(dev) -> int:
    """``swiotlb_max_mapping_size``: 256 KiB less ``min_align_mask`` rounded up to a slot."""
    min_align = 0
    if dev.min_align_mask:
        min_align = -(-dev.min_align_mask // IO_TLB_SIZE) * IO_TLB_SIZE
    return IO_TLB_SIZE * IO_TLB_SEGSIZE - min_align


def is_swiotlb_active(dev) -> bool:
    """``is_swiotlb_active``: the device has a pool with slots."""
    return dev.dma_io_tlb_mem is not None


def is_swiotlb_force_bounce(dev) -> bool:
    """``is_swiotlb_force_bounce``: ``mem && mem->force_bounce``."""
    mem = dev.dma_io_tlb_mem
    return bool(mem is not None and mem.force_bounce)


def dma_capable(dev, addr: int, size: int, is_ram: bool = True) -> bool:
    """``dma_capable`` (include/linux/dma-direct.h, 64-bit ``dma_addr_t``)."""
    if addr == DMA_MAPPING_ERROR:
        return False
    end = addr + size - 1
    return end <= dma_limit(dev)


def swiotlb_map(dev, paddr: int, size: int, direction: str) -> int:
    """``swiotlb_map``: bounce ``[paddr, paddr+size)``; the DMA address of the bounce buffer."""
    mem = dev.dma_io_tlb_mem
    if mem is None:
        raise DmaMappingError("ENOMEM", "Can not allocate SWIOTLB buffer earlier and can't now "
                                        "provide you with the DMA bounce buffer")
    tlb_addr = mem.tbl_map_single(dev, paddr, size, size, 0, direction)
    dma_addr = dev.phys_to_dma(tlb_addr)
    if not dma_capable(dev, dma_addr, size, True):
        mem.tbl_unmap_single(dev, tlb_addr, size, direction, skip_cpu_sync=True)
        raise DmaMappingError(
            "ENOMEM", f"swiotlb addr {dma_addr:#x}+{size} overflow (mask {dev.dma_mask:#x}, "
                      f"bus limit {dev.bus_dma_limit:#x}).")
    return dma_addr


def _capable_array(dev, dma_addr: np.ndarray, size: np.ndarray) -> np.ndarray:
    """:func:`dma_capable` of every ``(dma_addr, size)`` pair with ``size >= 1``."""
    limit = np.uint64(dma_limit(dev))
    size = np.asarray(size, dtype=np.uint64)
    return (dma_addr != np.uint64(DMA_MAPPING_ERROR)) & (dma_addr <= limit) & (
        size - np.uint64(1) <= limit - np.minimum(dma_addr, limit))


def swiotlb_map_many(dev, paddr: np.ndarray, size: np.ndarray, direction: str
                     ) -> tuple[np.ndarray, DmaMappingError | None]:
    """:func:`swiotlb_map` of each ``(paddr[i], size[i])`` in order, stopping at the first
    that fails: the DMA addresses of those mapped, and the error of the one that failed
    (None when all were mapped).

    With ``IoTlbMem.batch``, runs of bounces the slot search places one after the other
    from the cursor (back to back, or at the next segment's start) are taken at once
    (:meth:`IoTlbMem._map_run`: same slots, cursor, counters and fault-point calls as the
    single calls); every other bounce, and all of them with ``batch = False``, is one
    :func:`swiotlb_map` (after a short run, a few of them before the next try).
    """
    paddr = np.asarray(paddr, dtype=np.uint64)
    size = np.asarray(size, dtype=np.uint64)
    k = len(paddr)
    out = np.empty(k, dtype=np.uint64)
    mem = dev.dma_io_tlb_mem
    if k and mem is not None:
        check_direction(direction)
    i, w, single_until, backoff = 0, 64, 0, 1
    while i < k:
        if mem is not None and mem.batch and i >= single_until:
            n = min(w, k - i)
            placed, m, dma = mem._map_run(dev, paddr[i:i + n], size[i:i + n])
            out[i:i + placed] = dma
            i += placed
            if placed < m:  # the fault point failed the next call
                return out[:i], DmaMappingError(
                    "ENOMEM", f"{dev.name}: swiotlb buffer is full (sz: {int(size[i])} bytes), "
                              f"total {mem.nslabs} (slots), used {mem.used} (slots)")
            w = min(4 * w, 1 << 16) if placed == n else 64
            if placed == n or placed >= 16:
                backoff = 1
            else:  # the search goes elsewhere: a few single calls before the next try
                single_until, backoff = i + backoff, min(2 * backoff, 64)
            continue
        try:
            out[i] = swiotlb_map(dev, int(paddr[i]), int(size[i]), direction)
        except DmaMappingError as exc:
            return out[:i], exc.with_traceback(None)  # no frame cycle
        i += 1
    return out, None
