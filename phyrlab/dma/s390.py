"""``s390_pci_dma_ops`` (arch/s390/pci/pci_dma.c): a 3-level table and a bitmap IOVA.

Read in the kernel sources (the stored pci_dma.c is v4.x; the v6.2 ``map_sg`` was read from
later copies of the file): the translation table has a region table and segment tables of
``ZPCI_TABLE_ENTRIES`` = 2048 entries and page tables of ``ZPCI_PT_ENTRIES`` = 256
(``calc_rtx = addr >> 31 & 0x7ff``, ``calc_sx = addr >> 20 & 0x7ff``, ``calc_px = addr >> 12 &
0xff``); ``dma_walk_cpu_trans`` allocates a missing segment or page table on the way
(``GFP_ATOMIC``; failure is -ENOMEM, and ``dma_update_trans`` invalidates the entries it
already wrote). Tables are only freed by ``dma_cleanup_tables`` at device exit.

``dma_alloc_address`` is ``iommu_area_alloc`` from ``next_bit`` with the device's segment
boundary; when it fails in lazy mode it issues a global RPCIT (``zpci_refresh_global``),
returns the lazily freed addresses (``lazy_bitmap``) to the bitmap and retries from 0.
``dma_free_address`` clears the bitmap in strict mode (``s390_iommu=strict``) and only marks
``lazy_bitmap`` otherwise. ``__dma_purge_tlb``: after a map, RPCIT only when the function
needs ``tlb_refresh`` (z/VM, KVM); after an unmap, RPCIT only in strict mode.

``s390_dma_map_sg`` (v4.6+) starts a new DMA segment when an entry has an offset, the running
size (which counts the first entry's offset) is not page aligned, or it would exceed
``max_seg_size``; each segment gets one IOVA run (``__s390_dma_map_sg``); on failure it
unmaps the segments already mapped and returns the error (-ENOMEM).

Simplified: the aperture is a parameter (the kernel sizes it from memory and the function's
``start_dma``/``end_dma``); RPCIT is counted in ``iotlb_flushes`` (and as a hypercall when
``tlb_refresh``, since only a hypervisor asks for it).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from phyrlab.dma.iommu_table import IommuTable, iommu_num_pages
from phyrlab.dma.ops import (
    DmaMapOps,
    OpsEntry,
    SgCookie,
    check_direction,
    register_family,
    sg_arrays,
)
from phyrlab.errors import DmaMappingError
from phyrlab.faults import first_failure, next_failure, should_fail
from phyrlab.units import PAGE_SHIFT, PAGE_SIZE, SZ_1G, U64_MAX

ZPCI_TABLE_BITS = 11
ZPCI_PT_BITS = 8
ZPCI_ST_SHIFT = ZPCI_PT_BITS + PAGE_SHIFT  # 20: one page table maps 1 MiB
ZPCI_RT_SHIFT = ZPCI_ST_SHIFT + ZPCI_TABLE_BITS  # 31: one segment table maps 2 GiB
ZPCI_TABLE_ENTRIES = 1 << ZPCI_TABLE_BITS
ZPCI_PT_ENTRIES = 1 << ZPCI_PT_BITS

_U64 = np.uint64


class S390Ops(DmaMapOps):
    """``s390_pci_dma_ops`` over a sparse 3-level table (see the module docstring).

    ``batch`` (default True): ``map_sg`` cuts the segments with array operations, only as
    far as the aperture can reach (:meth:`_map_sg_batch`), and maps the runs that
    ``dma_alloc_address`` places back to back from ``next_bit`` at once
    (:meth:`_map_runs`), every other run through :meth:`_map_run`; ``unmap_sg`` and the
    unwind clear runs at once. False is the per-run reference. IOVA, tables, PTEs,
    counters, errors and fault-injection calls are the same.
    """

    batch: bool = True

    def __init__(self, entry: OpsEntry | None = None, **params: Any):
        unknown = sorted(set(params) - {"start_dma", "iommu_size", "strict", "tlb_refresh"})
        if unknown:
            raise ValueError(f"s390_pci_dma_ops: unknown parameter {unknown[0]!r}")
        super().__init__(entry, **params)
        self.start_dma = int(self.params.get("start_dma", 1 << 32))
        size = int(self.params.get("iommu_size", SZ_1G))
        if size < 2 * PAGE_SIZE or size % PAGE_SIZE:
            raise ValueError(f"s390 iommu_size {size:#x}: need a whole number of pages >= 2")
        self.iommu_pages = size >> PAGE_SHIFT
        self.strict = bool(self.params.get("strict", False))
        self.tlb_refresh = bool(self.params.get("tlb_refresh", False))
        self.bitmap = IommuTable(self.iommu_pages)
        self.lazy = np.zeros(self.iommu_pages, dtype=bool)
        self.next_bit = 0
        self.ptes = np.zeros(self.iommu_pages, dtype=np.uint64)  # page-table entries
        self.seg_tables: set[int] = set()  # rtx with a segment table
        self.page_tables: set[int] = set()  # dma >> 20 with a page table
        self.table_pages = 1  # the region table, allocated at zpci_dma_init_device

    def resources(self) -> dict[str, int]:
        """IOVA pages mapped and valid PTEs (lazily freed IOVA is reported separately)."""
        live = int(np.count_nonzero(self.bitmap.map & ~self.lazy))
        return {"iova_pages": live, "valid_ptes": int(np.count_nonzero(self.ptes))}

    @property
    def lazy_pages(self) -> int:
        """IOVA pages freed but not reusable until the next global RPCIT."""
        return int(np.count_nonzero(self.lazy))

    # -- IOVA ---------------------------------------------------------------------------
    def _rpcit(self) -> None:
        self.count("iotlb_flushes")
        if self.tlb_refresh:
            self.count("hypercalls")

    def _alloc_address(self, dev: Any, npages: int) -> int:
        """``dma_alloc_address``: page index or -1."""
        if should_fail("iommu_area_alloc"):
            return -1
        mask = getattr(dev, "seg_boundary_mask", U64_MAX)
        boundary = ((mask + 1) >> PAGE_SHIFT) if mask < U64_MAX else 1 << 52
        shift = self.start_dma >> PAGE_SHIFT
        self.count("iova_allocs")
        off = self.bitmap.area_alloc(self.next_bit, npages, None, shift, boundary)
        if off < 0:
            if not self.strict:
                self._rpcit()  # zpci_refresh_global before addresses are reused
                self.bitmap.map &= ~self.lazy
                self.bitmap.low_free = 0
                self.lazy[:] = False
            off = self.bitmap.area_alloc(0, npages, None, shift, boundary)
            if off < 0:
                return -1
        self.next_bit = off + npages
        return off

    def _free_address(self, off: int, npages: int) -> None:
        if self.strict:
            self.bitmap.free(off, npages)
        else:
            self.lazy[off:off + npages] = True

    # -- the table ------------------------------------------------------------------------
    def _tables_for(self, dma0: int, npages: int) -> int:
        """Allocate the segment/page tables a run needs, in page order (``dma_walk_cpu_trans``).

        Returns -1, or the first page (relative to the run) whose table allocation failed.
        """
        last = dma0 + ((npages - 1) << PAGE_SHIFT)
        for sx in range(dma0 >> ZPCI_ST_SHIFT, (last >> ZPCI_ST_SHIFT) + 1):
            rtx = sx >> ZPCI_TABLE_BITS
            page = max(0, ((sx << ZPCI_ST_SHIFT) - dma0) >> PAGE_SHIFT)
            if rtx not in self.seg_tables:
                if should_fail("pt_alloc"):
                    return page
                self.seg_tables.add(rtx)
                self.table_pages += 1
                self.count("table_pages")
            if sx not in self.page_tables:
                if should_fail("pt_alloc"):
                    return page
                self.page_tables.add(sx)
                self.table_pages += 1
                self.count("table_pages")
        return -1

    def _map_run(self, dev: Any, part_addr: np.ndarray, part_pages: np.ndarray) -> int:
        """``__s390_dma_map_sg`` / the body of ``s390_dma_map_pages``: DMA base or raise.

        ``part_addr`` are page-aligned physical addresses, ``part_pages`` their page counts;
        the parts are laid out back to back in one IOVA run.
        """
        npages = int(part_pages.sum())
        off = self._alloc_address(dev, npages)
        if off < 0:
            raise DmaMappingError(
                "ENOMEM", f"{self.name}: no {npages} free IOVA pages in the {self.iommu_pages}"
                f"-page aperture ({self.lazy_pages} waiting for a global flush)")
        dma0 = self.start_dma + (off << PAGE_SHIFT)
        bad = self._tables_for(dma0, npages)
        done = npages if bad < 0 else bad
        rel = np.arange(npages, dtype=np.int64) - np.repeat(np.cumsum(part_pages) - part_pages,
                                                            part_pages)
        frames = np.repeat(part_addr, part_pages) + rel.astype(np.uint64) * _U64(PAGE_SIZE)
        self.ptes[off:off + done] = frames[:done] | _U64(1)
        self.count("pte_writes", done)
        if bad >= 0:  # undo_cpu_trans / unmap: invalidate what was written, free the IOVA
            self.ptes[off:off + done] = 0
            self.count("pte_writes", done)
            self._free_address(off, npages)
            raise DmaMappingError(
                "ENOMEM", f"{self.name}: page-table allocation failed while mapping "
                f"IOVA page {off + bad:#x}")
        if self.tlb_refresh:
            self._rpcit()
        return dma0

    def _map_runs(self, dev: Any, page_addr: np.ndarray, pages: np.ndarray,
                  run_pages: np.ndarray, run_nent: np.ndarray) -> int:
        """:meth:`_map_run` of consecutive runs (``run_pages[j]`` pages each, made of the
        next ``run_nent[j]`` entries of ``page_addr``/``pages``) while ``iommu_area_alloc``
        would place them back to back at its hint, they cross no boundary, and no fault
        fires: how many runs were mapped (their DMA bases follow from ``next_bit`` before
        the call). Fault points are peeked first, then asked exactly as often as the runs
        mapped ask them; the run that stops the batch is left to :meth:`_map_run`.
        """
        t = self.bitmap
        c = max(self.next_bit, t.low_free)
        top = t.size - 1  # last entry unusable
        ends = c + np.cumsum(run_pages)
        starts = ends - run_pages
        hi = min(top, int(ends[-1]))
        if hi <= c:
            return 0
        used = np.flatnonzero(t.map[c:hi])
        room = c + int(used[0]) if len(used) else hi
        ok = ends <= room
        mask = getattr(dev, "seg_boundary_mask", U64_MAX)
        if mask < U64_MAX:
            boundary = (mask + 1) >> PAGE_SHIFT
            shift = self.start_dma >> PAGE_SHIFT
            ok &= ((shift + starts) & (boundary - 1)) + run_pages <= boundary
        bad = np.flatnonzero(~ok)
        m = next_failure("iommu_area_alloc", int(bad[0]) if len(bad) else len(run_pages))
        if m == 0:
            return 0
        # the tables the runs need, in page order: (run, 1 MiB index) pairs
        dma0 = self.start_dma + (starts[:m] << PAGE_SHIFT)
        sx0 = dma0 >> ZPCI_ST_SHIFT
        sx1 = (dma0 + ((run_pages[:m] - 1) << PAGE_SHIFT)) >> ZPCI_ST_SHIFT
        cnt = sx1 - sx0 + 1
        run_of = np.repeat(np.arange(m), cnt)
        sx = sx0[run_of] + (np.arange(len(run_of)) - np.repeat(np.cumsum(cnt) - cnt, cnt))
        rtx = sx >> ZPCI_TABLE_BITS
        new_sx = np.ones(len(sx), dtype=bool)
        new_sx[1:] = sx[1:] != sx[:-1]  # sx never decreases: runs go up
        new_rt = np.ones(len(sx), dtype=bool)
        new_rt[1:] = rtx[1:] != rtx[:-1]
        pts, sts = self.page_tables, self.seg_tables
        idx = np.flatnonzero(new_sx)
        new_sx[idx] = [v not in pts for v in sx[idx].tolist()]
        idx = np.flatnonzero(new_rt)
        new_rt[idx] = [v not in sts for v in rtx[idx].tolist()]
        calls = np.bincount(run_of, weights=new_sx.astype(np.int64) + new_rt, minlength=m
                            ).astype(np.int64)
        cum = np.cumsum(calls)
        k = next_failure("pt_alloc", int(cum[-1]))
        if k < cum[-1]:
            m = int(np.searchsorted(cum, k, side="right"))  # that run fails: per run
        if m == 0:
            return 0
        first_failure("iommu_area_alloc", m)
        first_failure("pt_alloc", int(cum[m - 1]))
        e = int(ends[m - 1])
        t.map[c:e] = True
        if t.low_free == c:
            t.low_free = e
        self.next_bit = e
        self.count("iova_allocs", m)
        keep = run_of < m
        new_st = rtx[keep & new_rt].tolist()
        new_pt = sx[keep & new_sx].tolist()
        if new_st or new_pt:
            sts.update(new_st)
            pts.update(new_pt)
            self.table_pages += len(new_st) + len(new_pt)
            self.count("table_pages", len(new_st) + len(new_pt))
        ne = int(run_nent[:m].sum())
        page_addr, pages = page_addr[:ne], pages[:ne]
        rel = np.arange(e - c, dtype=np.int64) - np.repeat(np.cumsum(pages) - pages, pages)
        self.ptes[c:e] = (np.repeat(page_addr, pages) + rel.astype(np.uint64) * _U64(PAGE_SIZE)
                          ) | _U64(1)
        self.count("pte_writes", e - c)
        if self.tlb_refresh:
            self.count("iotlb_flushes", m)
            self.count("hypercalls", m)
        return m

    def _unmap_runs(self, dma: np.ndarray, size: np.ndarray) -> None:
        """:meth:`_unmap_run` of each run in order; at once when every run is mapped and no
        two overlap (else the per-run loop, which raises where it does)."""
        dma = np.asarray(dma, dtype=np.uint64)
        size = np.asarray(size, dtype=np.uint64)
        if not len(dma):
            return
        npages = iommu_num_pages(dma, size, PAGE_SIZE).astype(np.int64)
        lo = (dma & ~_U64(PAGE_SIZE - 1)).astype(np.int64) - self.start_dma
        off = lo >> PAGE_SHIFT
        ok = bool(np.all((dma >= _U64(self.start_dma)) & (off >= 0) & (npages > 0)
                         & (off <= self.iommu_pages - npages)))
        if ok:
            order = np.argsort(off, kind="stable")
            os_, es = off[order], (off + npages)[order]
            ok = bool(np.all(os_[1:] >= es[:-1])) and bool(np.all(self.ptes[off] != 0))
        if not ok:
            for a, n in zip(dma.tolist(), size.tolist(), strict=True):
                self._unmap_run(a, n)
            return
        rel = np.arange(int(npages.sum()), dtype=np.int64) - np.repeat(
            np.cumsum(npages) - npages, npages)
        slots = np.repeat(off, npages) + rel
        self.ptes[slots] = 0
        self.count("pte_writes", len(slots))
        if self.strict:
            self.count("iotlb_flushes", len(dma))
            if self.tlb_refresh:
                self.count("hypercalls", len(dma))
            self.bitmap.free_slots(slots)
        else:
            self.lazy[slots] = True

    def _unmap_run(self, dma: int, size: int) -> None:
        npages = int(iommu_num_pages(dma, size, PAGE_SIZE))
        off = ((dma & ~(PAGE_SIZE - 1)) - self.start_dma) >> PAGE_SHIFT
        if not 0 <= off <= self.iommu_pages - npages or not self.ptes[off]:
            raise ValueError(f"{self.name}: unmap of {dma:#x} (+{size:#x}): not mapped")
        self.ptes[off:off + npages] = 0
        self.count("pte_writes", npages)
        if self.strict:
            self._rpcit()
        self._free_address(off, npages)

    # -- the ops --------------------------------------------------------------------------
    def map_phys(self, dev: Any, paddr: int, size: int, direction: str) -> int:
        """``s390_dma_map_pages``."""
        check_direction(direction)
        self.count("entries_walked")
        npages = int(iommu_num_pages(paddr, size, PAGE_SIZE))
        base = self._map_run(dev, np.array([paddr & ~(PAGE_SIZE - 1)], np.uint64),
                             np.array([npages], np.int64))
        return base + (paddr & (PAGE_SIZE - 1))

    def unmap_phys(self, dev: Any, dma_addr: int, size: int, direction: str) -> None:
        """``s390_dma_unmap_pages``."""
        check_direction(direction)
        self._unmap_run(dma_addr, size)

    def map_sg(self, dev: Any, addr: np.ndarray, length: np.ndarray,
               direction: str) -> tuple[np.ndarray, np.ndarray, Any]:
        """``s390_dma_map_sg``: one IOVA run per page-aligned group up to max_seg_size."""
        check_direction(direction)
        addr, length = sg_arrays(self.name, addr, length)
        n = len(addr)
        self.count("entries_walked", n)
        maxseg = int(getattr(dev, "max_seg_size", 65536))
        if self.batch:
            return self._map_sg_batch(dev, addr, length, maxseg)
        off = (addr & _U64(PAGE_SIZE - 1)).astype(np.int64)
        ln = length.astype(np.int64)
        first = _segment_starts_loop(off, ln, maxseg)
        starts = [*first.tolist(), n]
        pages = ((off + ln + PAGE_SIZE - 1) >> PAGE_SHIFT).astype(np.int64)
        page_addr = addr & ~_U64(PAGE_SIZE - 1)
        seg_len = np.add.reduceat(ln, first)  # bytes from the first entry's offset
        k = len(first)
        dma_out = np.empty(k, dtype=np.uint64)
        for j in range(k):
            a, b = starts[j], starts[j + 1]
            try:
                base = self._map_run(dev, page_addr[a:b], pages[a:b])
            except DmaMappingError:
                for q in range(j):
                    self._unmap_run(int(dma_out[q]), int(seg_len[q]))
                raise
            dma_out[j] = base + int(off[a])
        return dma_out, seg_len.astype(np.uint64), SgCookie()

    def _first_unreachable(self, length: np.ndarray) -> int:
        """An entry index no segment this call maps can start at or after: a segment is
        tried only when those before it mapped, and they hold at least their bytes in pages
        of the aperture's free (or lazily freed) entries."""
        n = len(length)
        cap = (self.iommu_pages - int(np.count_nonzero(self.bitmap.map & ~self.lazy))
               ) * PAGE_SIZE
        probe = 1 << 14
        while probe < n and int(length[:probe].sum(dtype=np.uint64)) <= cap:
            probe *= 4
        if probe >= n:
            if int(length.sum(dtype=np.uint64)) <= cap:
                return n
            probe = n
        cs = np.cumsum(length[:probe], dtype=np.uint64)
        return min(n, int(np.searchsorted(cs, _U64(cap), side="right")) + 1)

    def _map_sg_batch(self, dev: Any, addr: np.ndarray, length: np.ndarray, maxseg: int
                      ) -> tuple[np.ndarray, np.ndarray, Any]:
        """:meth:`map_sg` with array operations: the segments are cut (:func:`_segment_starts`)
        only as far as the aperture can map them (the walk is sequential, so a prefix cut from
        a segment start is the walk's), the runs ``dma_alloc_address`` places back to back
        mapped at once (:meth:`_map_runs`), every other run through :meth:`_map_run`."""
        n = len(addr)
        done_dma: list[np.ndarray] = []
        done_len: list[np.ndarray] = []
        lo, target, w = 0, max(1, self._first_unreachable(length)), 64
        while lo < n:
            pad = _PAD
            while True:  # the segment starts in [lo, hi): all true ones, the last cut short
                hi = min(n, max(target, lo + 1) + pad)
                off = (addr[lo:hi] & _U64(PAGE_SIZE - 1)).astype(np.int64)
                ln = length[lo:hi].astype(np.int64)
                first = _segment_starts(off, ln, maxseg)
                if hi == n:
                    stop = hi - lo
                    break
                past = np.flatnonzero(first >= max(target, lo + 1) - lo)
                if len(past):
                    stop = int(first[past[0]])
                    first = first[:past[0]]
                    break
                pad *= 4
            off, ln = off[:stop], ln[:stop]
            starts = [*first.tolist(), stop]
            pages = ((off + ln + PAGE_SIZE - 1) >> PAGE_SHIFT).astype(np.int64)
            page_addr = addr[lo:lo + stop] & ~_U64(PAGE_SIZE - 1)
            seg_len = np.add.reduceat(ln, first)  # bytes from the first entry's offset
            k = len(first)
            dma_out = np.empty(k, dtype=np.uint64)
            run_pages = np.add.reduceat(pages, first)
            run_nent = np.diff(np.append(first, stop))
            j = 0
            while j < k:
                b = min(k, j + w)
                base0 = max(self.next_bit, self.bitmap.low_free)
                got = self._map_runs(dev, page_addr[starts[j]:starts[b]],
                                     pages[starts[j]:starts[b]], run_pages[j:b],
                                     run_nent[j:b])
                if got:
                    rs = base0 + np.cumsum(run_pages[j:j + got]) - run_pages[j:j + got]
                    dma_out[j:j + got] = (_U64(self.start_dma) + (rs.astype(np.uint64) << _U64(
                        PAGE_SHIFT))) + off[first[j:j + got]].astype(np.uint64)
                    j += got
                    if j == b:
                        w = min(4 * w, 1 << 16)
                        continue
                w = 64
                if j == k:
                    break
                a, b = starts[j], starts[j + 1]
                try:
                    base = self._map_run(dev, page_addr[a:b], pages[a:b])
                except DmaMappingError:
                    self._unmap_runs(np.concatenate([*done_dma, dma_out[:j]]),
                                     np.concatenate([*done_len, seg_len[:j]]))
                    raise
                dma_out[j] = base + int(off[a])
                j += 1
            done_dma.append(dma_out)
            done_len.append(seg_len.astype(np.uint64))
            lo, target = lo + stop, n
        if len(done_dma) == 1:
            return done_dma[0], done_len[0], SgCookie()
        return np.concatenate(done_dma), np.concatenate(done_len), SgCookie()

    def unmap_sg(self, dev: Any, dma_addr: np.ndarray, dma_len: np.ndarray, direction: str,
                 cookie: Any) -> None:
        """``s390_dma_unmap_sg``."""
        check_direction(direction)
        if self.batch:
            self._unmap_runs(dma_addr, dma_len)
            return
        for a, n in zip(np.asarray(dma_addr).tolist(), np.asarray(dma_len).tolist(),
                        strict=True):
            self._unmap_run(a, n)


def _segment_starts_loop(off: np.ndarray, ln: np.ndarray, maxseg: int) -> np.ndarray:
    """``s390_dma_map_sg``'s walk: a new segment when an entry has an offset, the running
    size (from the first entry's offset) is not page aligned, or it would pass max_seg."""
    off_l, ln_l = off.tolist(), ln.tolist()
    starts = [0]
    size = off_l[0] + ln_l[0]
    for i in range(1, len(off_l)):
        if off_l[i] or size & (PAGE_SIZE - 1) or size + ln_l[i] > maxseg:
            starts.append(i)
            size = off_l[i]
        size += ln_l[i]
    return np.array(starts, dtype=np.int64)


def _segment_starts(off: np.ndarray, ln: np.ndarray, maxseg: int) -> np.ndarray:
    """:func:`_segment_starts_loop` with array operations.

    The running size is unaligned before entry ``i`` exactly when entry ``i - 1`` ends
    unaligned (an entry joins only an aligned size, at offset 0), so the first two causes cut
    the list into stretches independently of max_seg. Within a stretch the max_seg cut is
    greedy; where every entry after the stretch's first has one length ``L`` it is
    arithmetic (the first segment takes ``(max_seg - size0) // L`` more entries, the others
    ``max_seg // L``); other stretches take :func:`_greedy_starts`.
    """
    n = len(off)
    forced = np.ones(n, dtype=bool)
    forced[1:] = (off[1:] != 0) | (((off[:-1] + ln[:-1]) & (PAGE_SIZE - 1)) != 0)
    s = np.flatnonzero(forced)
    e = np.append(s[1:], n)
    # an entry after the stretch's second one whose length differs from its predecessor's
    change = np.zeros(n + 1, dtype=np.int64)
    change[3:] = np.cumsum(ln[2:] != ln[1:-1])
    # changes at positions s+2 .. e-1 (position i counts ln[i] != ln[i-1])
    mixed = (e - s > 2) & (change[e] - change[np.minimum(s + 2, e)] > 0)
    mixed |= (e - s > 1) & (ln[np.minimum(s + 1, n - 1)] == 0)
    out = []
    uni = np.flatnonzero(~mixed)
    if len(uni):
        su, eu = s[uni], e[uni]
        count = eu - su
        size0 = off[su] + ln[su]
        lng = ln[np.minimum(su + 1, n - 1)]
        lng = np.where(count > 1, lng, 1)
        c0 = 1 + np.where(maxseg >= size0, (maxseg - size0) // lng, 0)
        c = np.maximum(1, maxseg // lng)
        rem = np.maximum(0, count - c0)
        nseg = 1 + (rem + c - 1) // c
        rep = np.repeat(np.arange(len(su)), nseg)
        kk = np.arange(len(rep)) - np.repeat(np.cumsum(nseg) - nseg, nseg)
        out.append(su[rep] + np.where(kk == 0, 0, c0[rep] + (kk - 1) * c[rep]))
    mix = np.flatnonzero(mixed)
    if len(mix):
        out.append(_greedy_starts(off, ln, maxseg, s[mix], e[mix]))
    return np.sort(np.concatenate(out)) if len(out) > 1 else out[0]


#: Entries past the aperture's reach a chunk's segment cut looks at first (times 4 until a
#: segment start shows past the reach).
_PAD = 1024
#: Greedy segments a piece of a stretch spans at most (its bytes are ``_PIECE * max_seg``).
_PIECE = 64
#: Rounds of entry corrections before the stretches still unsettled take the walk.
_ROUNDS = 24


def _greedy_starts(off: np.ndarray, ln: np.ndarray, maxseg: int, ms: np.ndarray,
                   me: np.ndarray) -> np.ndarray:
    """The max_seg cut of the stretches ``[ms[q], me[q])`` (a segment starts at each
    stretch's first entry; within one, entry ``t`` starts a new segment when the running size
    plus ``ln[t]`` passes max_seg): the segment starts, ascending.

    A segment from ``i`` ends before the first ``t > i`` with ``off[i] + P[t + 1] - P[i] >
    max_seg`` (``P`` the prefix sums of ``ln``): ``f(i)``, found by one ``searchsorted``, is
    non-decreasing in ``i``. Each stretch is cut into pieces of about ``_PIECE * max_seg``
    bytes, and every piece walks ``f`` from its own first entry, all pieces in lockstep. A
    piece's true entry is where its predecessor's walk leaves it; where that differs, the
    piece walks again from there until it meets a start its old walk visited (from there the
    two walks are one) or leaves the piece, and its successor is corrected in the next round.
    A stretch's first piece is exact, so every round settles at least one more piece; after
    ``_ROUNDS`` rounds the stretches still unsettled take :func:`_segment_starts_loop`.
    """
    n = len(off)
    p = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(ln, out=p[1:])
    width = _PIECE * max(int(maxseg), 1)
    npc = np.clip(1 + (p[me] - p[ms] - 1) // width, 1, me - ms)  # pieces per stretch
    sid = np.repeat(np.arange(len(ms)), npc)
    k = np.arange(len(sid)) - np.repeat(np.cumsum(npc) - npc, npc)
    ps = np.where(k == 0, ms[sid], np.searchsorted(p, p[ms[sid]] + k * width, side="left"))
    ps = np.minimum(ps, me[sid])
    keep = np.ones(len(ps), dtype=bool)
    keep[1:] = (ps[1:] != ps[:-1]) & (ps[1:] < me[sid[1:]]) | (k[1:] == 0)
    ps, sid = ps[keep], sid[keep]
    first = np.ones(len(ps), dtype=bool)  # a stretch's first piece: its entry is exact
    first[1:] = sid[1:] != sid[:-1]
    pe = np.where(np.append(first[1:], True), me[sid], np.append(ps[1:], 0))
    is_start = np.zeros(n, dtype=bool)

    def walk(chain: np.ndarray, cur: np.ndarray, merge: bool
             ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """Walk ``f`` from ``cur`` for each piece in ``chain``: marks the starts visited;
        returns each piece's stop (the start where it met its old walk, or where it left
        the piece), whether it left, and the starts it visited."""
        stop = np.empty(len(ps), dtype=np.int64)
        left = np.zeros(len(ps), dtype=bool)
        visited = []
        end, last = pe[chain], me[sid[chain]]
        while True:
            out_ = cur >= end
            done = out_ | is_start[np.minimum(cur, n - 1)] if merge else out_
            if done.any():
                stop[chain[done]] = cur[done]
                left[chain[out_]] = True
                keep = ~done
                chain, cur, end, last = chain[keep], cur[keep], end[keep], last[keep]
                if not len(chain):
                    break
            visited.append(cur)
            t = np.searchsorted(p, p[cur] - off[cur] + maxseg, side="right") - 1
            cur = np.minimum(np.maximum(t, cur + 1), last)
        return stop, left, visited

    chain = np.arange(len(ps))
    stop, left, visited = walk(chain, ps, False)
    if visited:
        is_start[np.concatenate(visited)] = True
    exit_ = stop.copy()  # where each piece's walk leaves it
    todo = np.flatnonzero(~first[1:] & (exit_[:-1] != ps[1:])) + 1 if len(ps) > 1 else \
        np.zeros(0, dtype=np.int64)
    for _ in range(_ROUNDS):
        if not len(todo):
            break
        stop, left, visited = walk(todo, exit_[todo - 1], True)
        # forget the old walk up to where the new one met it (or the whole piece)
        lo, hi = ps[todo], np.where(left[todo], pe[todo], stop[todo])
        cnt = hi - lo
        if cnt.sum():
            rel = np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt)
            is_start[np.repeat(lo, cnt) + rel] = False
        if visited:
            is_start[np.concatenate(visited)] = True
        moved = todo[left[todo] & (stop[todo] != exit_[todo])]
        exit_[moved] = stop[moved]
        nxt = moved + 1
        todo = nxt[(nxt < len(ps))]
        todo = todo[~first[todo]]
    if len(todo):  # still unsettled: the walk, stretch by stretch
        for q in np.unique(sid[todo]).tolist():
            a, b = int(ms[q]), int(me[q])
            is_start[a:b] = False
            is_start[a + _segment_starts_loop(off[a:b], ln[a:b], maxseg)] = True
    return np.flatnonzero(is_start)


def _factory(entry: OpsEntry, **params: Any) -> S390Ops:
    return S390Ops(entry, **params)


register_family("s390", _factory)
