"""Single-level IOMMU tables with a bitmap allocator: one engine for 15 of the 24 ops tables.

Every row of family ``single_level`` in :data:`phyrlab.dma.ops.OPS` is a :class:`TableOps`
configured by a :class:`TableParams` (table geometry, allocator, how ``map_sg`` merges, when
the device bypasses the table, when the IOTLB is flushed, hypercall batching, CMO
entitlement). The table itself is :class:`IommuTable`: a numpy bool bitmap (``it_map``,
``iommu_gart_bitmap``, ``arena->ptes != 0``...) and a uint64 PTE array.

Read in the kernel sources (stored versions; several are older than v6.2, noted per item):

- lib/iommu-helper.c ``iommu_area_alloc``: first aligned index >= ``start`` whose ``nr`` bits
  are free and that does not cross ``boundary_size`` (``iommu_is_span_boundary`` with
  ``shift``); the last entry of the map is never handed out (``end >= size`` fails; later
  kernels write it as ``size -= 1``). Modelled exactly by :meth:`IommuTable.area_alloc`.
- arch/x86/kernel/amd_gart_64.c (stored file is 2.6-era; v6.2's logic is the same):
  ``alloc_iommu`` next-fit from ``next_bit``, retry from 0 and ``need_flush`` on failure or
  wrap; ``iommu_fullflush = 1`` so ``flush_gart()`` flushes after every map call;
  ``free_iommu`` moves ``next_bit`` past a freed range above it; ``need_iommu()`` = forced or
  ``!dma_capable``; ``gart_map_sg`` merges only with ``iommu_merge`` (0 by default in
  arch/x86/kernel/pci-dma.c; ``iommu=merge`` sets it and ``force_iommu``), and then an entry
  joins the previous chunk only when both need the IOMMU, the entry has no offset, the
  previous ends on a page and ``seg_size + length <= max_seg_size``; on overflow it unmaps
  and retries per entry (``dma_map_sg_nonforce``); 32 ``EMERGENCY_PAGES`` are reserved at
  the aperture start.
- arch/powerpc/kernel/iommu.c (v6.x): ``ppc_iommu_map_sg`` allocates per entry with a
  ``handle`` so neighbours land contiguously, merges when ``dma_addr == dma_next`` and
  ``dma_length + length <= max_seg_size``, fails with -EIO after freeing what it took;
  ``iommu_range_alloc``: entries > 15 pages go to the large pool (top quarter), small ones
  bump the hint to the next ``it_blocksize`` block; entry 0 is reserved
  (``iommu_table_reserve_pages``); the boundary is honoured by the allocator only.
- arch/powerpc/platforms/pseries/vio.c: ``vio_cmo_alloc`` (-ENOMEM when the device's free
  entitlement plus the bus's excess pool is short), ``vio_dma_iommu_map_sg`` reserves
  ``roundup(length, IOMMU_PAGE_SIZE)`` per entry and gives back what merging saved; on
  failure it returns 0, which ``dma_map_sgtable`` reports as -EIO.
- arch/sparc/kernel/iommu.c (stored file predates v6.2's ``iommu_tbl_range_alloc``):
  ``dma_4u_map_sg`` as powerpc plus a segment-boundary check on the merged segment;
  ``strbuf_flush`` on every unmap when the streaming cache is enabled.
- arch/alpha/kernel/pci_iommu.c: ``sg_classify`` (physically adjacent entries merge; page
  aligned ends merge virtually; ``max_seg_size`` caps a leader), ``sg_fill`` direct-maps a
  physically contiguous leader that lies in the direct-map window, ``iommu_arena_find_pages``
  next-fit with one wrap that flushes (``mv_pci_tbi``), unmap above ``next_entry`` flushes.

- drivers/parisc/iommu-helpers.h ``iommu_coalesce_chunks`` (stored torvalds/linux blob
  51459361, the same since v5.x and in a 2026 tree; an older 2.6 copy lacks the boundary):
  ``max_seg_size = min(dma_get_max_seg_size(dev), DMA_CHUNK_SIZE)``, then ``min(...,
  dma_get_seg_boundary(dev) + 1)`` unless that ``unsigned int`` sum wrapped to 0; an entry
  joins the chunk only when ``ALIGN(dma_len + dma_offset + length, IOVP_SIZE) <=
  max_seg_size`` (``dma_offset`` = the first entry's offset in its page), it starts exactly
  where the previous entry ended and both sides are page aligned; each chunk takes
  ``ALIGN(dma_len + dma_offset, IOVP_SIZE)`` of I/O pdir. ``DMA_CHUNK_SIZE`` is
  ``BITS_PER_LONG * PAGE_SIZE`` (arch/parisc/include/asm/dma.h); modelled 64-bit: 256 KiB.
  ``ccio_map_sg`` / ``sba_map_sg`` map a one-entry list with ``map_single``.
Not verified in a stored file (taken from memory of v6.2, to re-check): sparc's lazy flush
on allocator wrap (``iommu_tbl_range_alloc`` in lib/iommu-common.c), the per-segment IOC purge
on unmap of parisc ccio/sba and ia64 sba, sun4u/sun4v ``map_sg`` returning -EINVAL and jazz
-EIO (the v5.16 "return error code from map_sg" series), the table geometries in
:data:`ROW_PARAMS` (typical values, not read from firmware). ``VIO_CMO_MIN_ENT`` = 1562624
was read in arch/powerpc/include/asm/vio.h.

Simplified (one line each): powerpc/sparc use one small-allocation pool (no per-CPU pools);
ia64 and arm chunking use the GART rule (page-aligned joins, ``max_seg_size``) with their own
size accounting; parisc compares physical, not virtual, addresses (no highmem on parisc); a
full parisc pdir fails with -ENOMEM where ``ccio_alloc_range`` / ``sba_alloc_range``
``panic()`` ("out of mapping resources", read); sun4v counts one hypercall per batch of
contiguous pages (``iommu_batch_*``); pseries TCE writes are ``H_PUT_TCE_INDIRECT``
batches of 512; alpha's "break up and retry" after a failed virtual merge and its DAC path
are not modelled; flushes are counted, not timed (see :mod:`phyrlab.cost`).

Speed (``TableOps.batch``, exact): the greedy chunk cut and the allocations that the kernel's
search places back to back from its hint (free space, no boundary crossing, no alignment gap)
are decided with array operations; any other allocation, and every one with
``batch = False``, goes through :meth:`IommuTable.area_alloc` one at a time, asking the
``iommu_area_alloc`` fault point once per allocation either way. A list much longer than the
table is cut from a growing prefix until the outcome is decided (the prefix's chunks need more
pages than the table has free, or one lies beyond GART's ``max_phys``): the failing chunk, the
message, the counters and the unwind are those of the whole-list walk, which ``batch = False``
still does.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from phyrlab.dma.ops import (
    DmaMapOps,
    OpsEntry,
    check_direction,
    dma_limit,
    register_family,
    sg_arrays,
)
from phyrlab.errors import DmaMappingError
from phyrlab.faults import first_failure, next_failure, should_fail
from phyrlab.units import U64_MAX

#: ``VIO_CMO_MIN_ENT`` (arch/powerpc/include/asm/vio.h): a CMO device's minimum entitlement.
VIO_CMO_MIN_ENT = 1562624
#: parisc ``DMA_CHUNK_SIZE`` = ``BITS_PER_LONG * PAGE_SIZE`` for a 64-bit kernel.
PARISC_DMA_CHUNK_SIZE = 64 * 4096
#: ``EMERGENCY_PAGES`` of amd_gart_64.c: reserved at the aperture start.
GART_EMERGENCY_PAGES = 32

_U64 = np.uint64


@dataclass(frozen=True)
class TableParams:
    """How one ops table uses its single-level table (one row of the catalogue)."""

    io_page_shift: int = 12
    entries: int = 16384  # table entries (aperture / window size in I/O pages)
    dma_base: int = 0  # bus address of entry 0
    reserved: tuple[int, int] = (0, 0)  # [first, last) entries reserved at init
    alloc: str = "next_fit"  # "next_fit" | "first_fit" | "ppc_pools"
    align_order_max: int = 0  # arm: align to get_order(size), capped (ARM_DMA_IOMMU_ALIGNMENT)
    bump_on_free: bool = False  # gart/s390: free above the hint moves the hint past it
    last_entry_usable: bool = False  # iommu_area_alloc never hands out the last entry
    merge: str = "none"  # "vmerge" | "parisc" | "dma_contig" | "classify" | "none"
    size_counts_offset: bool = False  # arm/s390: a chunk's size includes its first offset
    merge_boundary: bool = False  # sparc: a merged segment may not cross the boundary
    bypass: str | None = None  # "per_entry" | "whole" | "window" | None
    force: bool = False  # gart: force_iommu (map even what the device reaches)
    window: tuple[int, int] = (0, 0)  # alpha direct-map window (bus base, size)
    flush: frozenset[str] = frozenset()  # "alloc", "map_call", "wrap", "unmap_seg", "page"
    hcall_batch: int = 0  # entries per hypercall (sun4v 1024, pseries 512); 0 = none
    entitlement: int | None = None  # vio CMO entitlement in bytes (None = not CMO)
    excess_free: int = 0  # vio_cmo.excess.free available to the device
    coherent: bool = True  # False: arm non-coherent cache maintenance per byte
    blocksize: int = 16  # ppc it_blocksize
    sg_errno: str = "ENOMEM"  # errno map_sg returns when the table is full
    retry_nonforce: bool = False  # gart: after a merged overflow, retry entry by entry
    iommu_merge: bool = True  # gart: x86 ``iommu_merge`` (0 unless ``iommu=merge``)
    max_phys: int = 0  # gart: GART_MAX_PHYS_ADDR (1 TiB); 0 = no limit

    @property
    def io_page(self) -> int:
        return 1 << self.io_page_shift


# Per-row geometry and behaviour, verified as the module docstring says.
ROW_PARAMS: dict[str, TableParams] = {
    "gart_dma_ops": TableParams(
        entries=16384, dma_base=0xC000_0000, reserved=(0, GART_EMERGENCY_PAGES),
        merge="vmerge", bypass="per_entry", flush=frozenset({"map_call"}), bump_on_free=True,
        retry_nonforce=True, iommu_merge=False, max_phys=1 << 40),
    "dma_iommu_ops": TableParams(
        entries=65536, reserved=(0, 1), alloc="ppc_pools", last_entry_usable=False,
        merge="dma_contig", bypass="whole", sg_errno="EIO"),
    "vio_dma_mapping_ops": TableParams(
        entries=8192, reserved=(0, 1), alloc="ppc_pools", merge="dma_contig", hcall_batch=512,
        entitlement=VIO_CMO_MIN_ENT, sg_errno="EIO"),
    "sun4u_dma_ops": TableParams(
        io_page_shift=13, entries=16384, dma_base=0xC000_0000, merge="dma_contig",
        merge_boundary=True, flush=frozenset({"wrap", "unmap_seg"}), sg_errno="EINVAL"),
    "sun4v_dma_ops": TableParams(
        io_page_shift=13, entries=16384, dma_base=0x8000_0000, merge="dma_contig",
        merge_boundary=True, flush=frozenset({"wrap"}), hcall_batch=1024, sg_errno="EINVAL"),
    "alpha_pci_ops": TableParams(
        io_page_shift=13, entries=16384, dma_base=0x0800_0000, last_entry_usable=True,
        merge="classify", bypass="window", window=(0x4000_0000, 0x4000_0000),
        flush=frozenset({"wrap"})),
    "iommu_ops": TableParams(
        entries=32768, dma_base=0x1000_0000, alloc="first_fit", align_order_max=8,
        merge="vmerge", size_counts_offset=True, flush=frozenset({"unmap_seg"}),
        coherent=False),
    "iommu_coherent_ops": TableParams(
        entries=32768, dma_base=0x1000_0000, alloc="first_fit", align_order_max=8,
        merge="vmerge", size_counts_offset=True, flush=frozenset({"unmap_seg"})),
    "sba_dma_ops": TableParams(
        entries=65536, dma_base=0x4000_0000, merge="vmerge", bypass="whole",
        flush=frozenset({"unmap_seg"})),
    "ccio_ops": TableParams(
        entries=65536, dma_base=0, merge="parisc", flush=frozenset({"unmap_seg"})),
    "sba_ops": TableParams(
        entries=65536, dma_base=0, merge="parisc", flush=frozenset({"unmap_seg"})),
    "jazz_dma_ops": TableParams(
        entries=4096, dma_base=0, alloc="first_fit", last_entry_usable=True,
        flush=frozenset({"alloc"}), sg_errno="EIO"),
    "iounit_dma_ops": TableParams(
        entries=3584, dma_base=0xFC10_0000, last_entry_usable=True, sg_errno="EINVAL"),
    "sbus_iommu_dma_gflush_ops": TableParams(
        entries=16384, dma_base=0xFC00_0000, last_entry_usable=True,
        flush=frozenset({"alloc", "unmap_seg"}), sg_errno="EINVAL"),
    "sbus_iommu_dma_pflush_ops": TableParams(
        entries=16384, dma_base=0xFC00_0000, last_entry_usable=True,
        flush=frozenset({"page"}), sg_errno="EINVAL"),
}


def iommu_num_pages(addr: Any, length: Any, io_page: int) -> Any:
    """``iommu_num_pages()`` (include/linux/iommu-helper.h), scalar or array."""
    off = addr & (io_page - 1) if isinstance(addr, int) else addr & _U64(io_page - 1)
    size = off + length
    return (size + io_page - 1) // io_page


def iommu_is_span_boundary(index: int, nr: int, shift: int, boundary_size: int) -> bool:
    """``iommu_is_span_boundary()``: does ``[index, index+nr)`` cross a boundary?"""
    s = (shift + index) & (boundary_size - 1)
    return s + nr > boundary_size


class IommuTable:
    """A single-level table: allocation bitmap (numpy bool) plus PTEs (numpy uint64)."""

    def __init__(self, entries: int, reserved: tuple[int, int] = (0, 0),
                 last_entry_usable: bool = False):
        if entries < 2:
            raise ValueError(f"table of {entries} entries: need at least 2")
        self.size = entries
        self.map = np.zeros(entries, dtype=bool)
        self.ptes = np.zeros(entries, dtype=np.uint64)
        lo, hi = reserved
        self.map[lo:hi] = True
        self.reserved = hi - lo
        self.last_entry_usable = last_entry_usable
        #: every entry below ``low_free`` is in use, so a search may start there and find
        #: what the kernel's search from 0 finds. Writers of ``map`` must lower it.
        self.low_free = hi if lo == 0 else 0

    def in_use(self) -> int:
        """Entries allocated beyond the reserved ones."""
        return int(np.count_nonzero(self.map)) - self.reserved

    def area_alloc(self, start: int, nr: int, limit: int | None = None, shift: int = 0,
                   boundary_size: int = 0, align_mask: int = 0) -> int:
        """``iommu_area_alloc(map, limit, start, nr, shift, boundary_size, align_mask)``.

        Returns the first index or -1, and marks it used. The search is done in numpy,
        in windows that double from ``start``; the answer is the kernel's (first fit).
        """
        size = self.size if limit is None else min(limit, self.size)
        top = size if self.last_entry_usable else size - 1  # end must be <= top
        start = max(start, self.low_free)
        if nr <= 0 or start + nr > top:
            return -1
        first = (start + align_mask) & ~align_mask  # fast path: the hint itself fits
        if first + nr <= top and not self.map[first:first + nr].any() and not (
                boundary_size and ((shift + first) & (boundary_size - 1)) + nr > boundary_size):
            return self._take(first, nr)
        # a fit starts on a free entry: skip the used ones after start in one scan
        skip = int(self.map[start:top].argmin())
        if self.map[start + skip]:
            return -1
        span = max(4 * nr, 1024)
        lo = start + skip
        while lo + nr <= top:
            hi = min(top, lo + span + nr)
            idx = self._first_fit(lo, hi, nr, shift, boundary_size, align_mask)
            if idx >= 0:
                return self._take(idx, nr)
            if hi >= top:
                break
            lo = hi - nr + 1
            span *= 4
        return -1

    def _first_fit(self, lo: int, hi: int, nr: int, shift: int, boundary: int,
                   align_mask: int) -> int:
        used = self.map[lo:hi].astype(np.int32)
        cs = np.concatenate(([0], np.cumsum(used)))
        cand = np.arange(lo, hi - nr + 1)
        if len(cand) == 0:
            return -1
        ok = (cs[nr:] - cs[:-nr]) == 0
        if align_mask:
            ok &= (cand & align_mask) == 0
        if boundary:
            ok &= ((shift + cand) & (boundary - 1)) + nr <= boundary
        hit = np.flatnonzero(ok)
        return int(cand[hit[0]]) if len(hit) else -1

    def _take(self, idx: int, nr: int) -> int:
        self.map[idx:idx + nr] = True
        if idx == self.low_free:
            self.low_free = idx + nr
        return idx

    def free(self, index: int, nr: int) -> None:
        """``iommu_area_free`` / ``bitmap_clear``."""
        self.map[index:index + nr] = False
        self.low_free = min(self.low_free, index)

    def free_slots(self, slots: np.ndarray) -> None:
        """Clear the entries ``slots`` (an index array)."""
        if len(slots):
            self.map[slots] = False
            self.low_free = min(self.low_free, int(slots.min()))


class _FreeRuns:
    """:meth:`IommuTable.area_alloc` for a run of allocations with nothing freed between
    them (one batched ``map_sg``): the same answers, found in a sorted list of the table's
    free runs, and the same writes (``map``, ``low_free``).

    Within such a run the table only fills, so where a search for ``(nr, top, align)``
    found nothing stays empty: each such stretch of start positions is remembered and
    jumped over, so a first-fit allocator does not rescan the holes below its answers.
    ``shift`` and ``boundary_size`` are those of the run's device (asserted per call).
    """

    def __init__(self, table: IommuTable, shift: int, boundary_size: int,
                 known: dict[tuple[int, int, int], tuple[list[int], list[int]]] | None = None):
        self.table = table
        self.shift = shift
        self.boundary = boundary_size
        free = np.zeros(table.size + 2, dtype=bool)
        free[1:-1] = ~table.map
        edges = np.flatnonzero(free[1:] != free[:-1])
        self.starts: list[int] = edges[0::2].tolist()
        self.ends: list[int] = edges[1::2].tolist()
        #: per (nr, top, align_mask): sorted disjoint [lo, hi) of starts with no fit
        self.known = {} if known is None else known
        self.floors: dict[int, list[int]] = {}

    def area_alloc(self, start: int, nr: int, limit: int | None = None, shift: int = 0,
                   boundary_size: int = 0, align_mask: int = 0) -> int:
        """:meth:`IommuTable.area_alloc`, same signature and result."""
        assert shift == self.shift and boundary_size == self.boundary
        t = self.table
        size = t.size if limit is None else min(limit, t.size)
        return self.alloc(start, nr, size if t.last_entry_usable else size - 1, align_mask)

    def alloc(self, start: int, nr: int, top: int, align_mask: int) -> int:
        """:meth:`area_alloc` with the end bound ``top`` (the last entry excluded or not)."""
        if nr <= 0 or start + nr > top:
            return -1
        key = (nr, top, align_mask)
        known = self.known.get(key)
        if known is None:
            known = self.known[key] = ([], [])
        los, his = known
        q = start
        j = bisect_right(los, q) - 1
        if j >= 0 and his[j] >= q:
            q = his[j]
        idx = self._search(q, nr, top, align_mask)
        hi = idx if idx >= 0 else top
        if hi > start:  # remember: no fit starts in [start, hi)
            j0 = bisect_left(his, start)
            j1 = bisect_right(los, hi)
            lo = min(start, los[j0]) if j0 < j1 else start
            hi = max(hi, his[j1 - 1]) if j0 < j1 else hi
            los[j0:j1] = [lo]
            his[j0:j1] = [hi]
        if idx >= 0:
            self.take(idx, nr)
        return idx

    def alloc_first(self, nr: int, top: int, align_mask: int) -> int:
        """:meth:`alloc` from 0 for a first-fit allocator whose alignment grows with ``nr``
        (as a mask: ``align(nr) & align(nr') == align(nr)`` for ``nr <= nr'``). A start
        that fits nothing of ``nr`` entries then fits nothing longer either, so what one
        search learnt serves every longer one (``floors[top][nr]``: no fit below it)."""
        if nr <= 0 or nr > top:
            return -1
        fl = self.floors.get(top)
        if fl is None:
            fl = self.floors[top] = [0]
        while len(fl) <= nr:
            fl.append(fl[-1])
        idx = self._search(fl[nr], nr, top, align_mask)
        hi = idx if idx >= 0 else top
        j = nr
        while j < len(fl) and fl[j] < hi:
            fl[j] = hi
            j += 1
        if idx >= 0:
            self.take(idx, nr)
        return idx

    def _search(self, q: int, nr: int, top: int, align: int) -> int:
        """The first index >= ``q`` that is aligned, has ``nr`` free entries, ends at or
        before ``top`` and crosses no boundary; -1 if none."""
        bs, shift = self.boundary, self.shift
        if q + nr > top or (bs and nr > bs):
            return -1
        starts, ends = self.starts, self.ends
        i = bisect_right(starts, q) - 1
        if i < 0 or ends[i] <= q:
            i += 1
        n = len(starts)
        while i < n:
            s = starts[i]
            if s < q:
                s = q
            if s + nr > top:
                return -1
            e = ends[i]
            if e > top:
                e = top
            p = (s + align) & ~align
            while p + nr <= e:
                if not bs:
                    return p
                r = (shift + p) & (bs - 1)
                if r + nr <= bs:
                    return p
                p = (p + bs - r + align) & ~align  # the next boundary, aligned
            i += 1
        return -1

    def take(self, idx: int, nr: int) -> None:
        """Mark ``[idx, idx + nr)`` used (it is free): the table as ``IommuTable._take``."""
        self.table._take(idx, nr)
        self.cut(idx, idx + nr)

    def cut(self, idx: int, end: int) -> None:
        """Drop ``[idx, end)`` (free, and already marked used in the table) from the runs."""
        nr = end - idx
        i = bisect_right(self.starts, idx) - 1
        s, e = self.starts[i], self.ends[i]
        assert s <= idx and idx + nr <= e
        new_s = ([s] if s < idx else []) + ([idx + nr] if idx + nr < e else [])
        new_e = ([idx] if s < idx else []) + ([e] if idx + nr < e else [])
        self.starts[i:i + 1] = new_s
        self.ends[i:i + 1] = new_e


def _coalesce(addr: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Join physically adjacent neighbours (alpha's ``-1`` followers share pages)."""
    if len(addr) < 2:
        return addr, length
    start = np.ones(len(addr), dtype=bool)
    start[1:] = addr[1:] != addr[:-1] + length[:-1]
    idx = np.flatnonzero(start)
    return addr[idx], np.add.reduceat(length, idx).astype(np.uint64)


@dataclass
class _Pool:
    start: int
    end: int
    hint: int


@dataclass
class _SgCookie:
    """The DMA list plus, per DMA entry, whether it went through the table."""

    translated: np.ndarray
    bounced: np.ndarray | None = None
    data: Any = None


class TableOps(DmaMapOps):
    """A ``dma_map_ops`` over one :class:`IommuTable` (see the module docstring).

    ``batch`` (default True): decide runs of entries with array operations where the
    answer is the per-entry one (see :meth:`_chunks`, :meth:`_alloc_batch`); False takes
    the per-entry path, which tests compare it with.
    """

    batch: bool = True
    #: entries in the first prefix :meth:`_map_sg_chunks` cuts (None: what the free
    #: entries suggest); tests set it small to walk the prefix through every growth step.
    first_prefix: int | None = None

    def __init__(self, entry: OpsEntry | None = None, table: TableParams | None = None,
                 **params: Any):
        super().__init__(entry, **params)
        base = table or ROW_PARAMS.get(self.name, TableParams())
        fields = set(TableParams.__dataclass_fields__)
        unknown = sorted(set(params) - fields)
        if unknown:
            raise ValueError(f"{self.name}: unknown parameter {unknown[0]!r} "
                             f"(expected one of {sorted(fields)})")
        row = {k: v for k, v in self.params.items() if k in fields}
        overrides = {k: v for k, v in row.items() if k in params or table is None}
        for key in ("flush",):
            if key in overrides and not isinstance(overrides[key], frozenset):
                f = overrides[key]
                overrides[key] = frozenset([f] if isinstance(f, str) else f)
        for key in ("reserved", "window"):
            if key in overrides:
                overrides[key] = tuple(overrides[key])
        if base.retry_nonforce and overrides.get("iommu_merge") and "force" not in overrides:
            overrides["force"] = True  # iommu=merge sets force_iommu too (pci-dma.c)
        p = self.p = replace(base, **overrides)
        if p.merge not in ("vmerge", "parisc", "dma_contig", "classify", "none"):
            raise ValueError(f"{self.name}: unknown merge policy {p.merge!r}")
        if p.alloc not in ("next_fit", "first_fit", "ppc_pools"):
            raise ValueError(f"{self.name}: unknown allocator {p.alloc!r}")
        self.table = IommuTable(p.entries, p.reserved, p.last_entry_usable)
        self.next_bit = 0
        self.need_flush = False
        poolsize = (p.entries * 3 // 4)
        self.pools = [_Pool(0, poolsize, 0), _Pool(poolsize, p.entries, poolsize)]
        self.cmo_allocated = 0
        self.excess_free = p.excess_free

    # -- geometry -------------------------------------------------------------------------
    @property
    def aperture(self) -> tuple[int, int]:
        """Bus addresses ``[start, end)`` the table translates."""
        return self.p.dma_base, self.p.dma_base + (self.p.entries << self.p.io_page_shift)

    def _translated(self, dma: int) -> bool:
        lo, hi = self.aperture
        return lo <= dma < hi

    def resources(self) -> dict[str, int]:
        """Table entries in use, valid PTEs, CMO bytes allocated: all zero when idle."""
        return {
            "table_entries": self.table.in_use(),
            "valid_ptes": int(np.count_nonzero(self.table.ptes)),
            "cmo_allocated": self.cmo_allocated,
        }

    # -- allocator ------------------------------------------------------------------------
    def _boundary(self, dev: Any) -> int:
        # dma_get_seg_boundary_nr_pages(): (boundary >> shift) + 1, as a power of two
        mask = getattr(dev, "seg_boundary_mask", U64_MAX)
        return ((mask >> self.p.io_page_shift) + 1) if mask < U64_MAX else 1 << 52

    def _limit(self, dev: Any) -> int:
        last = (dma_limit(dev) - self.p.dma_base) >> self.p.io_page_shift
        return int(max(0, min(self.p.entries, last + 1)))

    def _alloc(self, dev: Any, npages: int, handle: int | None = None) -> int:
        """One allocation: ``alloc_iommu`` / ``iommu_range_alloc`` / ``__alloc_iova``."""
        if should_fail("iommu_area_alloc"):
            return -1
        off = self._alloc_index(dev, npages, handle)
        if off >= 0:
            if "alloc" in self.p.flush:
                self.count("iotlb_flushes")
            if "map_call" in self.p.flush:
                self.need_flush = True  # iommu_fullflush
        return off

    def _alloc_index(self, dev: Any, npages: int, handle: int | None) -> int:
        p = self.p
        area = self.table.area_alloc
        limit = self._limit(dev)
        boundary = self._boundary(dev)
        shift = p.dma_base >> p.io_page_shift
        self.count("iova_allocs")
        if p.alloc == "first_fit":
            order = max(0, int(npages - 1).bit_length()) if p.align_order_max else 0
            align = (1 << min(order, p.align_order_max)) - 1 if p.align_order_max else 0
            return area(0, npages, limit, shift, boundary, align)
        if p.alloc == "ppc_pools":
            return self._ppc_alloc(npages, limit, shift, boundary, handle)
        off = area(self.next_bit, npages, limit, shift, boundary)
        if off < 0:
            self._wrap()
            off = area(0, npages, limit, shift, boundary)
        if off >= 0:
            self.next_bit = off + npages
            if self.next_bit >= p.entries:
                self.next_bit = 0
                self._wrap()
        return off

    def _flush_gart(self) -> None:
        """``flush_gart()``: one flush at the end of a map call if one is pending."""
        if "map_call" in self.p.flush and self.need_flush:
            self.count("iotlb_flushes")
            self.need_flush = False

    def _wrap(self) -> None:
        self.need_flush = True
        if "wrap" in self.p.flush:
            self.count("iotlb_flushes")
            self.need_flush = False

    def _ppc_alloc(self, npages: int, limit: int, shift: int, boundary: int,
                   handle: int | None) -> int:
        small, large = self.pools
        area = self.table.area_alloc
        pool = large if npages > 15 else small
        tries = [(pool, True), (pool, False), (small, False), (large, False)]
        for pl, use_hint in tries:
            if use_hint:
                start = handle if handle and pl.start <= handle < pl.end else pl.hint
            else:
                pl.hint = pl.start
                start = pl.start
            if start >= pl.end:
                start = pl.start
            n = area(start, npages, min(pl.end, limit), shift, boundary)
            if n >= 0:
                end = n + npages
                bs = self.p.blocksize
                pl.hint = end if npages > 15 else (end + bs - 1) & ~(bs - 1)
                return n
        return -1

    def _free(self, index: int, npages: int) -> None:
        self.table.free(index, npages)
        self._after_free(index, npages)

    def _alloc_seq(self, dev: Any, pages: np.ndarray, handles: bool = False) -> np.ndarray:
        """``_alloc`` of ``pages[0]``, ``pages[1]``... in order, stopping at the first that
        fails; the table indices of those that succeeded.

        With :attr:`batch`, runs of allocations that the kernel's search would place back to
        back (each at the hint, in free space, crossing no boundary, unaligned) are decided
        at once (:meth:`_alloc_run`), tried first and again after a streak of allocations
        that landed where such a run starts; every other allocation takes the per-entry
        path with :class:`_FreeRuns` as its ``iommu_area_alloc``. Counters, hints, flushes
        and fault-injection calls are those of the per-entry loop. ``handles``: each
        allocation after the first gets the previous one's end as its ``handle`` (powerpc's
        ``iommu_range_alloc`` hint in ``ppc_iommu_map_sg``).
        """
        pages = np.asarray(pages, dtype=np.int64)
        k = len(pages)
        out = np.empty(k, dtype=np.int64)
        if not self.batch:
            for i in range(k):
                handle = int(out[i - 1] + pages[i - 1]) if handles and i else 0
                idx = self._alloc(dev, int(pages[i]), handle if handles else None)
                if idx < 0:
                    return out[:i]
                out[i] = idx
            return out
        t, alloc = self.table, self.p.alloc
        ppc = alloc == "ppc_pools"
        runs: _FreeRuns | None = None
        i, w, need = 0, 64, 32
        streak = need  # try a run first
        while i < k:
            handle = int(out[i - 1] + pages[i - 1]) if handles and i else 0
            if streak >= need and (handles or not ppc):
                part = pages[i:i + w]
                m, faulted = self._alloc_run(dev, part, out[i:i + w], handle)
                if m and runs is not None:
                    if ppc:  # two streams: find the free runs again (what was learnt holds)
                        runs = _FreeRuns(t, runs.shift, runs.boundary, runs.known)
                    else:
                        runs.cut(int(out[i]), int(out[i + m - 1] + pages[i + m - 1]))
                i += m
                if faulted:
                    return out[:i]
                if m == len(part):
                    w = min(4 * w, 1 << 14 if ppc else 1 << 16)
                    continue
                w, streak = 64, 0
                need = 32 if m >= 16 else min(2 * need, 1024)
            if runs is None:
                runs = _FreeRuns(t, self.p.dma_base >> self.p.io_page_shift,
                                 self._boundary(dev))
            i, failed = self._alloc_each(dev, pages, out, i, handles, runs, need)
            if failed:
                return out[:i]
            streak = need
        return out

    def _alloc_each(self, dev: Any, pages: np.ndarray, out: np.ndarray, i: int, handles: bool,
                    runs: _FreeRuns, need: int) -> tuple[int, bool]:
        """:meth:`_alloc` of ``pages[i]``, ``pages[i + 1]``... one at a time, written out for speed
        with ``runs`` as ``iommu_area_alloc`` (the same steps as :meth:`_alloc_index` and
        :meth:`_ppc_alloc`), until one fails (``(i, True)``: ``i`` placed in all) or
        ``need`` in a row landed where :meth:`_alloc_run` would start (``(i, False)``).
        The fault point is asked once per allocation, as :meth:`_alloc` asks it."""
        p, t = self.p, self.table
        k = len(pages)
        limit = self._limit(dev)
        size = min(limit, t.size)
        adj = 0 if t.last_entry_usable else 1
        top = size - adj
        fault = i + next_failure("iommu_area_alloc", k - i)
        alloc, alloc_first = runs.alloc, runs.alloc_first
        mode = p.alloc
        amax = p.align_order_max
        small, large = self.pools
        bs = p.blocksize
        i0, allocs, streak, failed = i, 0, 0, False
        prev_end = int(out[i - 1] + pages[i - 1]) if i else -1
        block, pl = i, pages[i:i + 256].tolist()  # the sizes, a block at a time
        while i < k:
            if i - block >= len(pl):
                block, pl = i, pages[i:i + 4096].tolist()
            n = pl[i - block]
            if i == fault:
                failed = True
                break
            allocs += 1
            if mode == "first_fit":
                c = t.low_free
                align = (1 << min(max(0, (n - 1).bit_length()), amax)) - 1 if amax else 0
                idx = alloc_first(n, top, align)
            elif mode == "ppc_pools":
                handle = prev_end if handles and i else (0 if handles else None)
                pool = large if n > 15 else small
                c = handle if handle and pool.start <= handle < pool.end else pool.hint
                c = max(pool.start if c >= pool.end else c, t.low_free)
                idx = -1
                for pt, use_hint in ((pool, True), (pool, False), (small, False),
                                     (large, False)):
                    if use_hint:
                        start = handle if handle and pt.start <= handle < pt.end else pt.hint
                    else:
                        pt.hint = start = pt.start
                    if start >= pt.end:
                        start = pt.start
                    idx = alloc(start, n, min(pt.end, size) - adj, 0)
                    if idx >= 0:
                        e = idx + n
                        pt.hint = e if n > 15 else (e + bs - 1) & ~(bs - 1)
                        break
            else:
                c = max(self.next_bit, t.low_free)
                idx = alloc(self.next_bit, n, top, 0)
                if idx < 0:
                    self._wrap()
                    idx = alloc(0, n, top, 0)
                if idx >= 0:
                    self.next_bit = idx + n
                    if self.next_bit >= p.entries:
                        self.next_bit = 0
                        self._wrap()
            if idx < 0:
                failed = True
                break
            out[i] = idx
            # a run may follow: this one landed at the hint, or right after the last one
            streak = streak + 1 if idx == c or idx == prev_end else 0
            prev_end = idx + n
            i += 1
            if streak >= need:
                break
        calls = allocs + (i == fault and failed)
        got = first_failure("iommu_area_alloc", calls)
        assert got == calls - (i == fault and failed)
        if allocs:
            self.count("iova_allocs", allocs)
        placed = i - i0
        if placed:
            if "alloc" in p.flush:
                self.count("iotlb_flushes", placed)
            if "map_call" in p.flush:
                self.need_flush = True
        return i, failed

    def _alloc_run(self, dev: Any, pages: np.ndarray, out: np.ndarray,
                   handle: int = 0) -> tuple[int, bool]:
        """Place the longest prefix of ``pages`` that the allocator puts back to back from
        its hint: how many were placed (their indices in ``out``), and whether the next
        one failed by fault injection."""
        p, t = self.p, self.table
        limit = self._limit(dev)
        pool = spill = None
        if p.alloc == "ppc_pools":
            small, large = self.pools
            runs = {}
            for pl in self.pools:
                size = min(pl.end, limit, t.size)
                runs[pl.start] = self._free_stretches(
                    pl.start, size if t.last_entry_usable else size - 1)
            longest = {k: int((e - s).max(initial=0)) for k, (s, e) in runs.items()}
            # a full pool: no large entry (16 pages or more) fits in the large pool, or the
            # small one fits only entries shorter than 16 pages (which the run leaves to
            # the per-entry path)
            spill = large if longest[large.start] < 16 else (
                small if longest[small.start] < 16 else None)
            if spill is None:
                return self._alloc_run_ppc(dev, pages, out, handle, limit)
            # every try in the full pool fails (whatever the handle), so its class ends in
            # the other pool searched from its start, and the other class starts at the
            # handle: back to back in the other pool while no free stretch below the first
            # holds one of the searching entries
            pool = large if spill is small else small
            searching = (pages <= 15) if spill is small else (pages > 15)
            fits_full = searching & (pages <= longest[spill.start])
            limit = min(pool.end, limit)
            run_s, run_e = runs[pool.start]
            if searching[0]:
                fits = np.flatnonzero(run_e - run_s >= pages[0])
                if not len(fits):
                    return 0, False
                c = int(run_s[fits[0]])
            else:
                c = handle if handle and pool.start <= handle < pool.end else pool.hint
                c = max(pool.start if c >= pool.end else c, t.low_free)
            below = np.minimum(run_e, c) - run_s
            gap = int(below.max(initial=0))
        elif p.alloc == "first_fit":
            c = t.low_free
        else:
            c = max(self.next_bit, t.low_free)
        size = min(limit, t.size)
        top = size if t.last_entry_usable else size - 1
        ends = c + np.cumsum(pages)
        starts = ends - pages
        hi = min(top, int(ends[-1]))
        if hi <= c:
            return 0, False
        used = np.flatnonzero(t.map[c:hi])
        room = c + int(used[0]) if len(used) else hi
        ok = (ends <= room) & (pages > 0)
        if pool is not None:  # the next handle stays in the pool; a search finds nothing below
            ok &= (ends < pool.end) & (~searching | (pages > gap)) & ~fits_full
        boundary = self._boundary(dev)
        shift = p.dma_base >> p.io_page_shift
        ok &= ((shift + starts) & (boundary - 1)) + pages <= boundary
        if p.alloc == "first_fit" and p.align_order_max:
            # order = fls(npages - 1), capped: the run must start aligned to it
            order = np.zeros(len(pages), dtype=np.int64)
            v = pages - 1
            while v.any():
                order += v > 0
                v >>= 1
            align = (np.int64(1) << np.minimum(order, p.align_order_max)) - 1
            ok &= (starts & align) == 0
        bad = np.flatnonzero(~ok)
        m = int(bad[0]) if len(bad) else len(pages)
        # the fault point is asked once per allocation, as per entry, up to the first failure
        j = first_failure("iommu_area_alloc", m)
        m, faulted = j, j < m
        if m == 0:
            return 0, faulted
        e = int(ends[m - 1])
        t.map[c:e] = True
        if t.low_free == c:
            t.low_free = e
        self.count("iova_allocs", m)
        out[:m] = starts[:m]
        if "alloc" in p.flush:
            self.count("iotlb_flushes", m)
        if "map_call" in p.flush:
            self.need_flush = True
        if p.alloc == "next_fit":
            self.next_bit = e
            if self.next_bit >= p.entries:
                self.next_bit = 0
                self._wrap()
        elif pool is not None and spill is not None:
            bs = p.blocksize
            pool.hint = e if pages[m - 1] > 15 else (e + bs - 1) & ~(bs - 1)
            if searching[:m].any():
                spill.hint = spill.start  # the failed tries searched it from the start
        return m, faulted

    def _alloc_run_ppc(self, dev: Any, pages: np.ndarray, out: np.ndarray, handle: int,
                       limit: int) -> tuple[int, bool]:
        """:meth:`_alloc_run` for ``ppc_iommu_map_sg``: the list's small and large entries
        as two streams, each in its own pool and placed where ``iommu_range_alloc`` starts
        its search. An entry that follows one of its own class starts at the handle (the
        previous end); one that follows the other class starts at its pool's hint, which
        the pool's last allocation left at its end (large) or the next ``it_blocksize``
        block (small). The prefix whose every entry fits at that start (free, below the
        pool's top, no boundary crossed, its end still inside the pool) is placed."""
        p, t = self.p, self.table
        bs = p.blocksize
        if bs <= 0 or bs & (bs - 1):
            return 0, False
        n = len(pages)
        big = pages > 15
        starts = np.empty(n, dtype=np.int64)
        ok = pages > 0
        boundary = self._boundary(dev)
        shift = p.dma_base >> p.io_page_shift
        size = t.size
        for cls, pool in ((False, self.pools[0]), (True, self.pools[1])):
            idx = np.flatnonzero(big == cls)
            if not len(idx):
                continue
            pg = pages[idx]
            if idx[0] == 0:
                s0 = handle if handle and pool.start <= handle < pool.end else pool.hint
            else:
                s0 = pool.hint
            if s0 >= pool.end:
                s0 = pool.start
            if idx[0] == 0:
                s0 = max(s0, t.low_free)  # the search skips the used entries below
            # segments: entries of this class that follow one another in the list
            seg = np.ones(len(idx), dtype=bool)
            seg[1:] = idx[1:] != idx[:-1] + 1
            first = np.flatnonzero(seg)
            cs = np.cumsum(pg) - pg  # pages before each entry in the stream
            seg_len = np.diff(np.append(cs[first], cs[-1] + pg[-1]))
            if cls:  # the large hint is the previous end
                seg_start = s0 + cs[first]
            else:  # the small hint is rounded up to the next block
                rounded = (seg_len + bs - 1) & ~(bs - 1)
                seg_start = np.empty(len(first), dtype=np.int64)
                seg_start[0] = s0
                if len(first) > 1:
                    s1 = (s0 + int(seg_len[0]) + bs - 1) & ~(bs - 1)
                    seg_start[1:] = s1 + np.cumsum(rounded[1:]) - rounded[1:]
            counts = np.diff(np.append(first, len(idx)))
            st = np.repeat(seg_start - cs[first], counts) + cs
            en = st + pg
            top = min(pool.end, limit, size)
            top = top if t.last_entry_usable else top - 1
            good = (en <= top) & (en < pool.end)
            good &= ((shift + st) & (boundary - 1)) + pg <= boundary
            lo, hi = int(st[0]), min(int(en.max()), size)
            if hi > lo:
                used = lo + np.flatnonzero(t.map[lo:hi])
                if len(used):
                    good &= np.searchsorted(used, st) == np.searchsorted(used, en)
            starts[idx] = st
            ok[idx] &= good
        bad = np.flatnonzero(~ok)
        m = int(bad[0]) if len(bad) else n
        j = first_failure("iommu_area_alloc", m)
        m, faulted = j, j < m
        if m == 0:
            return 0, faulted
        st, pg = starts[:m], pages[:m]
        en = st + pg
        rel = np.arange(int(pg.sum()), dtype=np.int64) - np.repeat(np.cumsum(pg) - pg, pg)
        t.map[np.repeat(st, pg) + rel] = True
        # low_free follows the allocations that start where it stands, in list order
        order = np.argsort(st)
        so, eo = st[order], en[order]
        hit = np.flatnonzero(so == t.low_free)
        if len(hit):
            h = int(hit[0])
            link = (eo[h:-1] == so[h + 1:]) & (order[h + 1:] > order[h:-1])
            brk = np.flatnonzero(~link)
            t.low_free = int(eo[h + int(brk[0])] if len(brk) else eo[-1])
        self.count("iova_allocs", m)
        out[:m] = st
        if "alloc" in p.flush:
            self.count("iotlb_flushes", m)
        if "map_call" in p.flush:
            self.need_flush = True
        for cls, pool in ((False, self.pools[0]), (True, self.pools[1])):
            last = np.flatnonzero(big[:m] == cls)
            if len(last):
                e = int(en[int(last[-1])])
                pool.hint = e if cls else (e + bs - 1) & ~(bs - 1)
        return m, faulted

    def _free_stretches(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """Starts and ends of the runs of free entries in ``[lo, hi)``."""
        free = np.zeros(max(hi - lo, 0) + 2, dtype=bool)
        free[1:-1] = ~self.table.map[lo:max(hi, lo)]
        edges = np.flatnonzero(free[1:] != free[:-1]) + lo
        return edges[0::2], edges[1::2]

    def _free_seq(self, index: np.ndarray, npages: np.ndarray) -> None:
        """``_free`` of each ``(index[i], npages[i])`` in order (the unwind of a map)."""
        if not self.batch:
            for i0, n0 in zip(index.tolist(), npages.tolist(), strict=True):
                self._free(i0, n0)
            return
        if len(index):
            total = int(npages.sum())
            rel = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(npages) - npages, npages)
            self.table.free_slots(np.repeat(index, npages) + rel)
            self._after_free_seq(index, npages)

    def _after_free_seq(self, index: np.ndarray, npages: np.ndarray) -> None:
        """``_after_free`` of each entry in order: ascending runs (an unwind) and alpha's
        fixed hint at once, anything else in a scalar loop (the hint only moves up)."""
        bump = self.p.bump_on_free
        alpha = (self.p.alloc == "next_fit" and "wrap" in self.p.flush
                 and self.p.merge == "classify")
        if not (bump or alpha):
            return
        nb, flushes = self.next_bit, 0
        if len(index) and not (bump and alpha):
            ends = index + npages
            if bump and len(index) > 1 and (index[1:] >= ends[:-1]).all():
                # ascending runs: from the first at or above the hint, each moves it
                if int(index[-1]) >= nb:
                    self.next_bit = int(ends[-1])
                return
            if alpha:  # the hint does not move: count the runs freed at or above it
                flushes = int(np.count_nonzero(index >= nb))
                if flushes:
                    self.count("iotlb_flushes", flushes)
                return
        for i0, n0 in zip(index.tolist(), npages.tolist(), strict=True):
            if bump and i0 >= nb:
                nb = i0 + n0
            if alpha and i0 >= nb:
                flushes += 1
        self.next_bit = nb
        if flushes:
            self.count("iotlb_flushes", flushes)

    def _after_free(self, index: int, npages: int) -> None:
        if self.p.bump_on_free and index >= self.next_bit:
            self.next_bit = index + npages
        if self.p.alloc == "next_fit" and "wrap" in self.p.flush and self.p.merge == "classify":
            # alpha_pci_unmap_page: freeing above next_entry flushes the TLB
            if index >= self.next_bit:
                self.count("iotlb_flushes")

    # -- PTEs -----------------------------------------------------------------------------
    def _write_ptes(self, index: int, addr: np.ndarray, length: np.ndarray) -> int:
        """Write the PTEs of entries ``addr/length`` from table index ``index``; pages used."""
        io = self.p.io_page
        npg = iommu_num_pages(addr, length, io).astype(np.int64)
        total = int(npg.sum())
        first = (addr & ~_U64(io - 1)).astype(np.uint64)
        starts = np.repeat(first, npg)
        within = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(npg) - npg, npg)
        pages = starts + within.astype(np.uint64) * _U64(io)
        self.table.ptes[index:index + total] = pages | _U64(1)
        self.count("pte_writes", total)
        if "page" in self.p.flush:
            self.count("iotlb_flushes", total)
        self._hcalls(total)
        return total

    def _clear_ptes(self, index: int, npages: int) -> None:
        self.table.ptes[index:index + npages] = 0
        self.count("pte_writes", npages)
        if "page" in self.p.flush:
            self.count("iotlb_flushes", npages)
        if self.p.hcall_batch:
            self.count("hypercalls", 1)

    def _hcalls(self, npages: int) -> None:
        if self.p.hcall_batch:
            self.count("hypercalls", -(-npages // self.p.hcall_batch))

    def _cache(self, nbytes: int) -> None:
        if not self.p.coherent:
            self.count("cache_maint_bytes", nbytes)

    # -- CMO entitlement (vio) --------------------------------------------------------------
    def _cmo_alloc(self, size: int) -> bool:
        """``vio_cmo_alloc``: False (the kernel's -ENOMEM) when entitlement is short."""
        ent = self.p.entitlement
        if ent is None:
            return True
        reserve_free = max(0, ent - self.cmo_allocated)
        if reserve_free + self.excess_free < size:
            return False
        self.cmo_allocated += size
        self.excess_free -= size - min(reserve_free, size)
        return True

    def _cmo_dealloc(self, size: int) -> None:
        """``vio_cmo_dealloc`` (the device side; excess returns to its pool)."""
        ent = self.p.entitlement
        if ent is None or size == 0:
            return
        excess_freed = min(size, max(0, self.cmo_allocated - ent))
        self.cmo_allocated -= size
        self.excess_free += excess_freed

    def _roundup_io(self, n: Any) -> Any:
        io = self.p.io_page
        return (n + io - 1) // io * io

    # -- map_page -------------------------------------------------------------------------
    def _reachable(self, dev: Any, paddr: int, size: int) -> bool:
        return paddr + size - 1 <= dma_limit(dev)

    def _in_window(self, dev: Any, paddr: int, size: int) -> bool:
        wbase, wsize = self.p.window
        return wsize > 0 and paddr + size <= wsize and paddr + size + wbase - 1 <= dma_limit(dev)

    def _in_window_array(self, dev: Any, paddr: np.ndarray, size: np.ndarray) -> np.ndarray:
        """:meth:`_in_window` of every element."""
        wbase, wsize = self.p.window
        end = paddr + size
        ok = end <= _U64(wsize)
        return ok & (np.where(ok, end, 0) + _U64(wbase) - _U64(1) <= _U64(dma_limit(dev)))

    def _bypass_one(self, dev: Any, paddr: int, size: int) -> int | None:
        b = self.p.bypass
        if b in ("per_entry", "whole") and not self.p.force and self._reachable(dev, paddr, size):
            return paddr
        if b == "window" and self._in_window(dev, paddr, size):
            return paddr + self.p.window[0]
        return None

    def map_phys(self, dev: Any, paddr: int, size: int, direction: str) -> int:
        """``map_page``: bypass, or allocate ``iommu_num_pages`` entries and write them."""
        check_direction(direction)
        self.count("entries_walked")
        if size <= 0:
            raise ValueError(f"{self.name}: map of {size} bytes at {paddr:#x}")
        self._cache(size)
        direct = self._bypass_one(dev, paddr, size)
        if direct is not None:
            return direct
        io = self.p.io_page
        npages = int(iommu_num_pages(paddr, size, io))
        self._check_max_phys(paddr, size)
        cmo = int(self._roundup_io(size))
        if not self._cmo_alloc(cmo):
            raise DmaMappingError(
                "ENOMEM", f"{self.name}: vio_cmo_alloc of {cmo} bytes exceeds the entitlement "
                f"({self.p.entitlement} entitled, {self.cmo_allocated} allocated)")
        idx = self._alloc(dev, npages)
        if idx < 0:
            self._cmo_dealloc(cmo)
            self._flush_gart()
            raise DmaMappingError(
                "ENOMEM", f"{self.name}: no room for {npages} I/O pages of {io} bytes "
                f"(DMA_MAPPING_ERROR); {self.table.in_use()} of {self.p.entries} in use")
        self._write_ptes(idx, np.array([paddr], np.uint64), np.array([size], np.uint64))
        self._flush_gart()
        return self.p.dma_base + (idx << self.p.io_page_shift) + (paddr & (io - 1))

    def _check_max_phys(self, paddr: int, size: int) -> None:
        if self.p.max_phys and paddr + size > self.p.max_phys:
            raise DmaMappingError(
                "ENOMEM", f"{self.name}: [{paddr:#x}, +{size:#x}) is beyond "
                f"GART_MAX_PHYS_ADDR {self.p.max_phys:#x} (bad_dma_addr)")

    def unmap_phys(self, dev: Any, dma_addr: int, size: int, direction: str) -> None:
        """``unmap_page``: clear and free the entries (nothing for a bypassed address)."""
        check_direction(direction)
        if direction in ("from_device", "bidirectional"):
            self._cache(size)
        if not self._translated(dma_addr):
            return
        self._unmap_seg(dma_addr, size)
        self._cmo_dealloc(int(self._roundup_io(size)))

    def _unmap_seg(self, dma_addr: int, size: int) -> None:
        io = self.p.io_page
        npages = int(iommu_num_pages(dma_addr, size, io))
        idx = (dma_addr - self.p.dma_base) >> self.p.io_page_shift
        self._clear_ptes(idx, npages)
        self._free(idx, npages)
        if "unmap_seg" in self.p.flush:
            self.count("iotlb_flushes")

    # -- map_sg ---------------------------------------------------------------------------
    def map_sg(self, dev: Any, addr: np.ndarray, length: np.ndarray,
               direction: str) -> tuple[np.ndarray, np.ndarray, Any]:
        """The row's ``map_sg``; merges as the kernel does; unwinds fully on failure."""
        check_direction(direction)
        addr, length = sg_arrays(self.name, addr, length)
        n = len(addr)
        zero = np.flatnonzero(length == 0)
        if len(zero):
            raise ValueError(f"{self.name}: entry {int(zero[0])} has length 0")
        self.count("entries_walked", n)
        if not self.p.coherent:
            self._cache(int(length.sum()))
        cmo = int(self._roundup_io(length).sum()) if self.p.entitlement is not None else 0
        if not self._cmo_alloc(cmo):
            raise DmaMappingError(
                "EIO", f"{self.name}: vio_cmo_alloc of {cmo} bytes failed (-ENOMEM: "
                f"{self.p.entitlement} entitled, {self.cmo_allocated} allocated); "
                "vio_dma_iommu_map_sg returns 0, reported as -EIO")
        if self.p.bypass == "whole" and not self.p.force and \
                int((addr + length - _U64(1)).max()) <= dma_limit(dev):
            return addr.copy(), length.copy(), _SgCookie(np.zeros(n, bool))
        try:
            if self.p.merge == "dma_contig":
                out = self._map_sg_contig(dev, addr, length)
            else:
                out = self._map_sg_chunks(
                    dev, addr, length, lambda m: self._chunks(dev, addr[:m], length[:m]))
        except DmaMappingError:
            self._cmo_dealloc(cmo)
            raise
        dma, dlen, tr = out
        if cmo:
            used = int(self._roundup_io(dlen[tr]).sum())
            self._cmo_dealloc(cmo - used)
        return dma, dlen, _SgCookie(tr)

    def unmap_sg(self, dev: Any, dma_addr: np.ndarray, dma_len: np.ndarray, direction: str,
                 cookie: Any) -> None:
        """``unmap_sg``: walk the DMA list, free what lies in the aperture."""
        check_direction(direction)
        dma_addr = np.asarray(dma_addr, dtype=np.uint64)
        dma_len = np.asarray(dma_len, dtype=np.uint64)
        if direction in ("from_device", "bidirectional"):
            self._cache(int(dma_len.sum()))
        lo, hi = self.aperture
        inside = (dma_addr >= _U64(lo)) & (dma_addr < _U64(hi))
        a, n = dma_addr[inside], dma_len[inside]
        if len(a):
            npages = iommu_num_pages(a, n, self.p.io_page).astype(np.int64)
            idx = ((a - _U64(lo)) >> _U64(self.p.io_page_shift)).astype(np.int64)
            total = int(npages.sum())
            rel = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(npages) - npages, npages)
            slots = np.repeat(idx, npages) + rel
            self.table.ptes[slots] = 0
            self.table.free_slots(slots)
            self.count("pte_writes", total)
            if "page" in self.p.flush:
                self.count("iotlb_flushes", total)
            if self.p.hcall_batch:
                self.count("hypercalls", len(a))
            if "unmap_seg" in self.p.flush:
                self.count("iotlb_flushes", len(a))
            if self.batch:
                self._after_free_seq(idx, npages)
            elif self.p.bump_on_free or self.p.merge == "classify":
                for i0, n0 in zip(idx.tolist(), npages.tolist(), strict=True):
                    self._after_free(i0, n0)
        if self.p.entitlement is not None:
            self._cmo_dealloc(int(self._roundup_io(dma_len).sum()))

    # chunking (gart / parisc / ia64 / arm vmerge, alpha sg_classify, per-entry)
    def _need(self, dev: Any, addr: np.ndarray, length: np.ndarray) -> np.ndarray:
        if self.p.bypass != "per_entry" or self.p.force:
            return np.ones(len(addr), dtype=bool)
        return (addr + length - _U64(1)) > _U64(dma_limit(dev))

    def _chunks(self, dev: Any, addr: np.ndarray, length: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(first, end, translate)`` arrays: runs of input entries that become one DMA
        segment. Mergeable runs are cut greedily at the segment budget (``max_seg_size``,
        less the first entry's offset where the row counts it)."""
        n = len(addr)
        maxseg = int(getattr(dev, "max_seg_size", 65536))
        io = _U64(self.p.io_page - 1)
        merge = self.p.merge
        need = self._need(dev, addr, length)
        if merge == "none" or n == 1 or (merge == "vmerge" and not self.p.iommu_merge):
            if self.batch:  # every entry is its own chunk
                first = np.arange(n, dtype=np.int64)
                return first, first + 1, need
            brk = np.ones(n, dtype=bool)
        elif merge == "vmerge":
            end = addr + length
            brk = np.ones(n, dtype=bool)
            brk[1:] = ((addr[1:] & io) != 0) | ((end[:-1] & io) != 0) | ~need[1:] | ~need[:-1]
        elif merge == "parisc":  # iommu_coalesce_chunks: prev_end == sg_start, page aligned
            end = addr + length
            brk = np.ones(n, dtype=bool)
            brk[1:] = (addr[1:] != end[:-1]) | (((end[:-1] | addr[1:]) & _U64(4095)) != 0)
        else:  # classify: physically adjacent, or page-aligned both sides (virt_ok)
            end = addr + length
            phys = addr[1:] == end[:-1]
            virt = ((end[:-1] | addr[1:]) & io) == 0
            brk = np.ones(n, dtype=bool)
            brk[1:] = ~(phys | virt)
        off0 = (addr & io).astype(np.int64) if self.p.size_counts_offset else None
        if merge == "parisc":
            # ALIGN(dma_len + dma_offset + length, IOVP_SIZE) <= cap, i.e. dma_len + length
            # <= ALIGN_DOWN(cap, IOVP_SIZE) - dma_offset
            cap = self._parisc_max_seg_size(dev)
            maxseg = cap // self.p.io_page * self.p.io_page
            off0 = (addr & io).astype(np.int64)
        starts = np.flatnonzero(brk)
        if not self.batch:
            return self._chunks_per_run(starts, length, maxseg, off0, need)
        if len(starts) == n:  # every entry is its own run, so its own chunk
            first = np.arange(n, dtype=np.int64)
            return first, first + 1, need.copy()
        cs = np.concatenate(([0], np.cumsum(length.astype(np.int64))))
        ends = np.append(starts[1:], n)
        budget = maxseg - (off0[starts] if off0 is not None else 0)
        # one chunk when the run fits its budget (or has one entry); the greedy cut's
        # first step then ends at the run's end
        split = (cs[ends] > cs[starts] + budget) & (ends - starts > 1)
        is_first = np.zeros(n, dtype=bool)
        is_first[starts] = True
        sr = np.flatnonzero(split)
        if len(sr):
            # every position inside a run to cut: where a chunk starting there would end
            la, lb = starts[sr], ends[sr]
            cnt = lb - la
            pos = np.repeat(la - np.cumsum(cnt) + cnt, cnt) + np.arange(int(cnt.sum()))
            run_end = np.repeat(lb, cnt)
            bud = maxseg - (off0[pos] if off0 is not None else 0)
            j = np.searchsorted(cs, cs[pos] + bud, side="right") - 1
            j = np.minimum(np.maximum(j, pos + 1), run_end)
            # the greedy cut follows its own chain from each run's start (one step a
            # chunk): mark the chains by pointer doubling, over the positions in local
            # numbering with one sink (the run's end) after them
            tot = len(pos)
            jump = np.searchsorted(pos, j)
            jump[j >= run_end] = tot
            jump = np.append(jump, tot)
            on = np.zeros(tot + 1, dtype=bool)
            heads = np.searchsorted(pos, la)
            on[heads] = True
            while True:  # ``on``: the first 2**t steps of each chain; ``jump``: 2**t steps
                on[jump[np.flatnonzero(on)]] = True
                jump = jump[jump]
                if (jump[heads] == tot).all():
                    break
            is_first[pos[on[:tot]]] = True
        first = np.flatnonzero(is_first)
        return first, np.append(first[1:], n), need[first]

    def _chunks_per_run(self, starts: np.ndarray, length: np.ndarray, maxseg: int,
                        off0: np.ndarray | None, need: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The greedy cut chunk by chunk (the reference :meth:`_chunks` is checked against)."""
        n = len(length)
        runs = starts.tolist() + [n]
        cs = np.concatenate(([0], np.cumsum(length.astype(np.int64))))
        out: list[int] = []
        for a, b in zip(runs[:-1], runs[1:], strict=True):
            pos = a
            while pos < b:
                budget = maxseg - (int(off0[pos]) if off0 is not None else 0)
                j = int(np.searchsorted(cs, cs[pos] + budget, side="right")) - 1
                j = min(max(j, pos + 1), b)
                out.append(pos)
                pos = j
        first = np.array(out, dtype=np.int64)
        return first, np.append(first[1:], n), need[first]

    @staticmethod
    def _parisc_max_seg_size(dev: Any) -> int:
        """``iommu_coalesce_chunks``' chunk limit: ``min(max_seg_size, DMA_CHUNK_SIZE,
        seg_boundary + 1)``, the boundary term skipped when its ``unsigned int`` wraps to 0."""
        cap = min(int(getattr(dev, "max_seg_size", 65536)) & 0xFFFF_FFFF, PARISC_DMA_CHUNK_SIZE)
        boundary = (int(getattr(dev, "seg_boundary_mask", U64_MAX)) + 1) & 0xFFFF_FFFF
        return min(cap, boundary) if boundary else cap

    def _map_sg_chunks(self, dev: Any, addr: np.ndarray, length: np.ndarray,
                       chunker: Any, retried: bool = False):
        """Allocate one table run per chunk (``dma_map_cont`` / ``sg_fill`` /
        ``__map_sg_chunk``), then write every PTE in one array operation.

        ``chunker(m)`` gives the ``(first, end, translate)`` chunks of the first ``m`` entries.
        With :attr:`batch` the list is cut from a prefix that grows until the outcome is
        decided: every chunk but the prefix's last is a chunk of the whole list (the cut is
        greedy from each run's start), allocations only take entries, so once the translated
        chunks of the prefix need more pages than the table has free (or one lies beyond
        ``max_phys``) the map fails at or before that chunk, as the whole-list walk does.
        """
        n = len(addr)
        free = self.table.size - int(np.count_nonzero(self.table.map))
        m = min(n, self.first_prefix or free + free // 8 + 64) if self.batch else n
        while True:
            first, ends, translate = chunker(m)
            if m < n:  # the prefix's last chunk may go on past it
                first, ends, translate = first[:-1], ends[:-1], translate[:-1]
            plan = self._plan_chunks(dev, addr, length, first, ends, translate)
            tpages, stop = plan["tpages"], plan["stop"]
            if m == n or stop < len(tpages) or int(tpages.sum()) > free:
                break
            total = int(tpages.sum())
            m = n if total == 0 else min(n, max(2 * m, m * (free + 1) // total * 5 // 4 + 64))
        k = len(first)
        tc, win = plan["tc"], plan["win"]
        got = self._alloc_seq(dev, tpages[:stop])
        if len(got) < len(tc):
            g = len(got)
            c = int(tc[g])
            tp = tpages[:g]
            self.count("pte_writes", 2 * int(tp.sum()))  # written, then cleared
            self._free_seq(got, tp)
            self._flush_gart()
            if self.p.retry_nonforce and not retried and (self.p.force or self.p.iommu_merge):
                def per(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
                    one = np.arange(m, dtype=np.int64)
                    return one, one + 1, self._need_nonforce(dev, addr[:m], length[:m])
                return self._map_sg_chunks(dev, addr, length, per, retried=True)
            a, b = int(first[c]), int(ends[c])
            raise DmaMappingError(
                self.p.sg_errno, f"{self.name}: map_sg: no room for {int(tpages[g])} I/O "
                f"pages at DMA segment {c} (input entries {a}..{b - 1}); "
                f"{self.table.in_use()} of {self.p.entries} entries in use")
        assert m == n, "a decided prefix always fails"
        io_mask = _U64(self.p.io_page - 1)
        p0, seg_len = plan["p0"], plan["seg_len"]
        dma = p0.copy()
        if len(win):
            dma[win] = p0[win] + _U64(self.p.window[0])
        tr = np.zeros(k, dtype=bool)
        if len(tc):
            tr[tc] = True
            dma[tc] = (_U64(self.p.dma_base)
                       + (got.astype(np.uint64) << _U64(self.p.io_page_shift))
                       + (p0[tc] & io_mask))
            if plan["single"]:  # one sub-run per chunk
                self._write_runs(got, p0[tc], tpages)
            else:
                # table index of each sub-run: its chunk's base plus the pages before it
                sub_chunk, sub_addr, sub_pages = plan["subs"]
                idx_of = np.full(k, -1, dtype=np.int64)
                idx_of[tc] = got
                s_tr = tr[sub_chunk]
                before = np.cumsum(sub_pages) - sub_pages
                chunk_first_sub = np.searchsorted(sub_chunk, np.arange(k))
                base = idx_of[sub_chunk] + before - before[chunk_first_sub[sub_chunk]]
                self._write_runs(base[s_tr], sub_addr[s_tr], sub_pages[s_tr])
            self._hcalls_per(tpages)
        self._flush_gart()
        return dma, seg_len.copy() if plan["single"] else seg_len, tr

    def _plan_chunks(self, dev: Any, addr: np.ndarray, length: np.ndarray, first: np.ndarray,
                     ends: np.ndarray, translate: np.ndarray) -> dict[str, Any]:
        """What :meth:`_map_sg_chunks` needs of chunks ``first..ends``: each chunk's first
        address ``p0`` and length; ``tc``, the chunks that need a table run, in order, and
        ``tpages`` their I/O pages; ``stop``, how many of them come before the first that
        GART refuses (beyond ``max_phys``); ``win``, alpha's direct-mapped chunks."""
        io = self.p.io_page
        k = len(first)
        e = int(ends[-1]) if k else 0
        a, ln = addr[:e], length[:e]
        single = k == e  # every chunk is one entry
        plan: dict[str, Any] = {"single": single, "subs": None}
        if single:
            p0, seg_len = a, ln
        else:
            p0 = a[first]
            seg_len = np.add.reduceat(ln, first).astype(np.uint64)
        tc = np.flatnonzero(translate)
        win = tc[:0]
        if single:
            subs_of_tc = None
            tpages = iommu_num_pages(p0[tc], seg_len[tc], io).astype(np.int64)
        else:
            # sub-runs: physically contiguous pieces of a chunk share their boundary pages
            end_addr = a + ln
            sub = np.zeros(e, dtype=bool)
            sub[first] = True
            sub[1:] |= a[1:] != end_addr[:-1]
            sub_idx = np.flatnonzero(sub)
            sub_addr = a[sub_idx]
            sub_len = np.add.reduceat(ln, sub_idx).astype(np.uint64)
            sub_pages = iommu_num_pages(sub_addr, sub_len, io).astype(np.int64)
            sub_chunk = np.searchsorted(first, sub_idx, side="right") - 1
            chunk_pages = np.bincount(sub_chunk, weights=sub_pages, minlength=k).astype(np.int64)
            subs_of_tc = np.bincount(sub_chunk, minlength=k)[tc]
            tpages = chunk_pages[tc]
            plan["subs"] = (sub_chunk, sub_addr, sub_pages)
        if self.p.merge == "classify" and self.p.window[1] > 0 and len(tc):
            # alpha's window maps a physically contiguous chunk directly (an address test)
            w = self._in_window_array(dev, p0[tc], seg_len[tc])
            if subs_of_tc is not None:
                w &= subs_of_tc == 1
            win, tc, tpages = tc[w], tc[~w], tpages[~w]
        stop = len(tc)
        if self.p.max_phys and len(tc):
            last = ends[tc] - 1
            beyond = np.flatnonzero(a[last] + ln[last] > _U64(self.p.max_phys))
            stop = int(beyond[0]) if len(beyond) else stop
        plan.update(p0=p0, seg_len=seg_len, tc=tc, win=win, tpages=tpages, stop=stop)
        return plan

    def _write_runs(self, index: np.ndarray, addr: np.ndarray, npages: np.ndarray) -> None:
        """Write ``npages[i]`` PTEs from table index ``index[i]`` for the run at ``addr[i]``."""
        io = self.p.io_page
        total = int(npages.sum())
        if total == 0:
            return
        rel = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(npages) - npages, npages)
        slots = np.repeat(index, npages) + rel
        frames = np.repeat(addr & ~_U64(io - 1), npages) + rel.astype(np.uint64) * _U64(io)
        self.table.ptes[slots] = frames | _U64(1)
        self.count("pte_writes", total)
        if "page" in self.p.flush:
            self.count("iotlb_flushes", total)

    def _hcalls_per(self, pages_per_call: np.ndarray) -> None:
        if self.p.hcall_batch and len(pages_per_call):
            b = self.p.hcall_batch
            self.count("hypercalls", int(((pages_per_call + b - 1) // b).sum()))

    def _need_nonforce(self, dev: Any, addr: np.ndarray, length: np.ndarray) -> np.ndarray:
        # dma_map_sg_nonforce(): map only what the device cannot reach
        return (addr + length - _U64(1)) > _U64(dma_limit(dev))

    def _map_sg_contig(self, dev: Any, addr: np.ndarray, length: np.ndarray):
        """``ppc_iommu_map_sg`` / ``dma_4u_map_sg``: allocate per entry, merge contiguous."""
        io = self.p.io_page
        shift_io = self.p.io_page_shift
        maxseg = int(getattr(dev, "max_seg_size", 65536))
        boundary = self._boundary(dev)
        shift = self.p.dma_base >> shift_io
        npg = iommu_num_pages(addr, length, io).astype(np.int64)
        # each entry is allocated with the previous one's end as its handle (hint)
        got = self._alloc_seq(dev, npg, handles=True)
        i = len(got)
        if i < len(npg):
            self.count("pte_writes", 2 * int(npg[:i].sum()))  # written, then cleared
            self._free_seq(got, npg[:i])
            raise DmaMappingError(
                self.p.sg_errno, f"{self.name}: map_sg: iommu_alloc failed at entry {i} "
                f"({int(npg[i])} I/O pages); {self.table.in_use()} of {self.p.entries} in use")
        a_l, n_l, idx_l = addr.tolist(), length.tolist(), got.tolist()
        dma_out: list[int] = []
        len_out: list[int] = []
        dma_next = 0
        out_entry = 0
        base = self.p.dma_base
        for a, n, idx in zip(a_l, n_l, idx_l, strict=True):
            d = base + (idx << shift_io) + (a & (io - 1))
            merge = bool(dma_out) and d == dma_next and len_out[-1] + n <= maxseg
            if merge and self.p.merge_boundary:
                nr = -(-((dma_out[-1] & (io - 1)) + len_out[-1] + n) // io)
                merge = not iommu_is_span_boundary(out_entry, nr, shift, boundary)
            if merge:
                len_out[-1] += n
            else:
                dma_out.append(d)
                len_out.append(n)
                out_entry = idx
            dma_next = d + n
        self._write_runs(got, addr, npg)
        self._hcalls_per(npg)
        self._flush_gart()
        k = len(dma_out)
        return (np.array(dma_out, np.uint64), np.array(len_out, np.uint64),
                np.ones(k, dtype=bool))

    # -- limits ---------------------------------------------------------------------------
    def dma_supported(self, dev: Any, mask: int) -> bool:
        """The table's window must fit in ``mask`` (sparc: ``dma_addr_mask`` check)."""
        return self.aperture[0] <= mask

    def get_merge_boundary(self, dev: Any) -> int:
        """Tables that merge across pages report their I/O page size."""
        return self.p.io_page if self.p.merge in ("vmerge", "parisc", "classify") else 0


def _row_params(tp: TableParams) -> dict[str, Any]:
    """The fields of ``tp`` that differ from the defaults, as plain values for the catalogue."""
    default = TableParams()
    out: dict[str, Any] = {}
    for name in TableParams.__dataclass_fields__:
        v = getattr(tp, name)
        if v != getattr(default, name):
            out[name] = sorted(v) if isinstance(v, frozenset) else v
    return out


def _factory(entry: OpsEntry, **params: Any) -> TableOps:
    return TableOps(entry, **params)


_OVERRIDES: dict[str, dict[str, Any]] = {
    name: {"params": _row_params(tp)} for name, tp in ROW_PARAMS.items()
}
_OVERRIDES["gart_dma_ops"]["notes"] = (
    "GATT aperture; maps only what the device cannot reach unless forced; merges page-"
    "aligned neighbours only with iommu=merge (iommu_merge, default 0); flushes the GART "
    "after every map (iommu_fullflush = 1); 32 EMERGENCY_PAGES reserved")
_OVERRIDES["vio_dma_mapping_ops"]["notes"] = (
    "TCE table + CMO entitlement: map_page beyond the entitlement fails (vio_cmo_alloc "
    "-ENOMEM); map_sg then returns 0, reported as -EIO")
register_family("single_level", _factory, overrides=_OVERRIDES)
