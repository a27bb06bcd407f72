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
from phyrlab.dma.ops import DmaMapOps, OpsEntry, SgCookie, check_direction, register_family
from phyrlab.errors import DmaMappingError
from phyrlab.faults import should_fail
from phyrlab.units import PAGE_SHIFT, PAGE_SIZE, SZ_1G, U64_MAX

ZPCI_TABLE_BITS = 11
ZPCI_PT_BITS = 8
ZPCI_ST_SHIFT = ZPCI_PT_BITS + PAGE_SHIFT  # 20: one page table maps 1 MiB
ZPCI_RT_SHIFT = ZPCI_ST_SHIFT + ZPCI_TABLE_BITS  # 31: one segment table maps 2 GiB
ZPCI_TABLE_ENTRIES = 1 << ZPCI_TABLE_BITS
ZPCI_PT_ENTRIES = 1 << ZPCI_PT_BITS

_U64 = np.uint64


class S390Ops(DmaMapOps):
    """``s390_pci_dma_ops`` over a sparse 3-level table (see the module docstring)."""

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
    def _update_trans(self, pa: int, off: int, npages: int) -> int:
        """``dma_update_trans`` (validate): -1 on success, else the page that failed."""
        dma0 = self.start_dma + (off << PAGE_SHIFT)
        dmas = dma0 + (np.arange(npages, dtype=np.int64) << PAGE_SHIFT)
        fail_at = -1
        for rtx in np.unique(dmas >> ZPCI_RT_SHIFT).tolist():
            if rtx not in self.seg_tables:
                first = int(np.searchsorted(dmas >> ZPCI_RT_SHIFT, rtx))
                if should_fail("pt_alloc"):
                    fail_at = first
                    break
                self.seg_tables.add(rtx)
                self.table_pages += 1
                self.count("table_pages")
        segs = np.unique(dmas >> ZPCI_ST_SHIFT)
        for sx in segs.tolist():
            first = int(np.searchsorted(dmas >> ZPCI_ST_SHIFT, sx))
            if fail_at >= 0 and first >= fail_at:
                break
            if sx not in self.page_tables:
                if should_fail("pt_alloc"):
                    fail_at = first
                    break
                self.page_tables.add(sx)
                self.table_pages += 1
                self.count("table_pages")
        done = npages if fail_at < 0 else fail_at
        frames = (_U64(pa & ~(PAGE_SIZE - 1)) + np.arange(done, dtype=np.uint64) *
                  _U64(PAGE_SIZE)) | _U64(1)
        self.ptes[off:off + done] = frames
        self.count("pte_writes", done)
        if fail_at >= 0:  # undo_cpu_trans
            self.ptes[off:off + done] = 0
            self.count("pte_writes", done)
        return fail_at

    def _map_run(self, dev: Any, parts: list[tuple[int, int]], size: int) -> int:
        """``__s390_dma_map_sg`` / the body of ``s390_dma_map_pages``: DMA base or raise."""
        npages = -(-size // PAGE_SIZE)
        off = self._alloc_address(dev, npages)
        if off < 0:
            raise DmaMappingError(
                "ENOMEM", f"{self.name}: no {npages} free IOVA pages in the {self.iommu_pages}"
                f"-page aperture ({self.lazy_pages} waiting for a global flush)")
        at = off
        for pa, n in parts:
            cnt = -(-n // PAGE_SIZE)
            bad = self._update_trans(pa, at, cnt)
            if bad >= 0:  # unmap: invalidate what the earlier parts wrote, free the IOVA
                self.ptes[off:at] = 0
                self.count("pte_writes", at - off)
                self._free_address(off, npages)
                raise DmaMappingError(
                    "ENOMEM", f"{self.name}: page-table allocation failed while mapping "
                    f"IOVA page {at + bad:#x}")
            at += cnt
        if self.tlb_refresh:
            self._rpcit()
        return self.start_dma + (off << PAGE_SHIFT)

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
        base = self._map_run(dev, [(paddr & ~(PAGE_SIZE - 1), npages * PAGE_SIZE)],
                             npages * PAGE_SIZE)
        return base + (paddr & (PAGE_SIZE - 1))

    def unmap_phys(self, dev: Any, dma_addr: int, size: int, direction: str) -> None:
        """``s390_dma_unmap_pages``."""
        check_direction(direction)
        self._unmap_run(dma_addr, size)

    def map_sg(self, dev: Any, addr: np.ndarray, length: np.ndarray,
               direction: str) -> tuple[np.ndarray, np.ndarray, Any]:
        """``s390_dma_map_sg``: one IOVA run per page-aligned group up to max_seg_size."""
        check_direction(direction)
        addr = np.asarray(addr, dtype=np.uint64)
        length = np.asarray(length, dtype=np.uint64)
        n = len(addr)
        if n == 0:
            raise DmaMappingError("EINVAL", f"{self.name}: map_sg of an empty list")
        self.count("entries_walked", n)
        maxseg = int(getattr(dev, "max_seg_size", 65536))
        off = (addr & _U64(PAGE_SIZE - 1)).astype(np.int64)
        ln = length.astype(np.int64)
        # segment starts: entry has an offset, running size unaligned, or too long
        starts = [0]
        size = int(off[0] + ln[0])
        for i in range(1, n):
            if off[i] or size & (PAGE_SIZE - 1) or size + int(ln[i]) > maxseg:
                starts.append(i)
                size = int(off[i])
            size += int(ln[i])
        starts.append(n)
        dma_out = np.empty(len(starts) - 1, dtype=np.uint64)
        len_out = np.empty(len(starts) - 1, dtype=np.uint64)
        for k, (a, b) in enumerate(zip(starts[:-1], starts[1:], strict=True)):
            parts = [(int(addr[i]) & ~(PAGE_SIZE - 1), int(off[i] + ln[i])) for i in range(a, b)]
            seg = int(off[a] + ln[a:b].sum())
            try:
                base = self._map_run(dev, parts, seg)
            except DmaMappingError:
                for j in range(k):
                    self._unmap_run(int(dma_out[j]), int(len_out[j]))
                raise
            dma_out[k] = base + int(off[a])
            len_out[k] = seg - int(off[a])
        return dma_out, len_out, SgCookie()

    def unmap_sg(self, dev: Any, dma_addr: np.ndarray, dma_len: np.ndarray, direction: str,
                 cookie: Any) -> None:
        """``s390_dma_unmap_sg``."""
        check_direction(direction)
        for a, n in zip(np.asarray(dma_addr).tolist(), np.asarray(dma_len).tolist(),
                        strict=True):
            self._unmap_run(a, n)


def _factory(entry: OpsEntry, **params: Any) -> S390Ops:
    return S390Ops(entry, **params)


register_family("s390", _factory)
