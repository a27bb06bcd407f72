"""Page lists: one 8-byte word per page of a single page size.

What RDMA (``struct ib_umem`` walked with ``rdma_umem_for_each_dma_block`` into a device's
page list, ``ib_umem_find_best_pgsz``), DRM (``struct page **``) and HMM (``unsigned long *pfns``)
keep. The list has one page size (4 KiB, or 2 MiB / 1 GiB for hugepage-backed memory); only the
first page may start at an offset and only the last may end early, so every range boundary inside
the list must fall on a page boundary. A range list that breaks that rule cannot be a page list:
``from_ranges`` says which range and why.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ..errors import RangeError
from ..units import PAGE_SHIFT, PAGE_SIZE
from .base import U64, Layout, check_pages, check_ranges, merge_ranges, pages_to_ranges


def check_page_aligned(addr: np.ndarray, length: np.ndarray, page_size: int, what: str) -> None:
    """Refuse an interior range boundary that is not ``page_size``-aligned."""
    mask = U64(page_size - 1)
    bad_start = np.flatnonzero(addr[1:] & mask) + 1
    end = addr[:-1] + length[:-1]
    bad_end = np.flatnonzero(end & mask)
    if bad_start.size or bad_end.size:
        if bad_end.size and (not bad_start.size or bad_end[0] < bad_start[0]):
            i = int(bad_end[0])
            raise RangeError(
                f"{what}: range {i} ends at {int(end[i]):#x}, inside a {page_size}-byte page; "
                "only the last range may end mid-page")
        i = int(bad_start[0])
        raise RangeError(
            f"{what}: range {i} starts at {int(addr[i]):#x}, inside a {page_size}-byte page; "
            "only the first range may start mid-page")


class PageList(Layout):
    """A PFN array with one page size, plus the first page's offset and the total length."""

    name: ClassVar[str] = "page_list"
    c_struct: ClassVar[str] = "u64 pfn[]"
    dtype: ClassVar[np.dtype] = np.dtype("<u8")
    entry_size: ClassVar[int] = 8
    #: ``offset`` and ``length`` kept beside the array (as ``struct ib_umem`` keeps them).
    header_size: ClassVar[int] = 16

    def __init__(self, pfns: np.ndarray, offset: int, length: int, page_size: int = PAGE_SIZE):
        self.pfns = pfns
        self.offset = offset
        self.length = length
        self.page_size = page_size

    @classmethod
    def from_ranges(cls, addr: Any, length: Any, page_size: int = PAGE_SIZE) -> PageList:
        a, n = merge_ranges(*check_ranges(addr, length))
        return cls._build(a, n, page_size)

    @classmethod
    def from_pages(cls, pfns: Any, offset: int = 0, size: int | None = None,
                   page_size: int = PAGE_SIZE) -> PageList:
        """From 4 KiB PFNs; with ``page_size`` > 4 KiB the runs must form whole large pages."""
        p, off, sz = check_pages(pfns, offset, size)
        if page_size == PAGE_SIZE:
            return cls(p.copy(), off, sz, page_size)
        return cls._build(*pages_to_ranges(p, off, sz), page_size)

    @classmethod
    def _build(cls, addr: np.ndarray, length: np.ndarray, page_size: int = PAGE_SIZE) -> PageList:
        if page_size < PAGE_SIZE or page_size & (page_size - 1):
            raise RangeError(f"page_size {page_size} must be a power of two >= {PAGE_SIZE}")
        check_page_aligned(addr, length, page_size, "page_list")
        mask = U64(page_size - 1)
        first = addr & ~mask
        npages = (((addr + length - first) + mask) // U64(page_size)).astype(np.intp)
        idx = np.repeat(np.arange(addr.size), npages)
        k = (np.arange(idx.size) - np.repeat(np.cumsum(npages) - npages, npages)).astype(U64)
        pfns = (first[idx] + k * U64(page_size)) >> U64(PAGE_SHIFT)
        total = int(length.sum(dtype=U64))
        return cls(pfns, int(addr[0] & mask), total, page_size)

    def __len__(self) -> int:
        return self.pfns.size

    @property
    def nbytes(self) -> int:
        return self.header_size + self.pfns.size * self.entry_size

    @property
    def total_length(self) -> int:
        return self.length

    def ranges(self) -> tuple[np.ndarray, np.ndarray]:
        addr, length = pages_to_ranges(self.pfns, self.offset, self.length, self.page_size)
        addr.flags.writeable = False
        length.flags.writeable = False
        return addr, length

    def _entry_ranges(self) -> tuple[np.ndarray, np.ndarray]:
        ps = U64(self.page_size)
        addr = self.pfns << U64(PAGE_SHIFT)
        length = np.full(addr.size, ps, dtype=U64)
        addr[0] += U64(self.offset)
        length[0] -= U64(self.offset)
        tail = self.pfns.size * self.page_size - self.offset - self.length
        length[-1] -= U64(tail)
        return addr, length
