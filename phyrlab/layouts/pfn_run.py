"""``pfn_run``: phyrlab's own packed 8-byte range encoding.

One ``u64`` per run of physically contiguous pages::

    bits 63..12  PFN of the run's first page (52 bits: any 64-bit physical address)
    bits 11..0   pages in the run, minus one (1 to 4096 pages: up to 16 MiB an entry)

with the first page's offset and the total length kept once, beside the array (16 bytes).

Limits, enforced with a ``RangeError`` naming the range: every range boundary inside the list
must fall on a 4 KiB page boundary (only the first range may start mid-page and only the last
may end mid-page), exactly the rule of a page list. A run longer than 4096 pages is not an
error: it takes ``ceil(pages / 4096)`` entries. So the encoding costs 8 bytes per 16 MiB of
contiguous memory where a page list costs 8 bytes per page, and half of a ``phyr``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ..units import PAGE_SHIFT, PAGE_SIZE
from .base import (
    U64,
    Layout,
    check_pages,
    check_ranges,
    merge_ranges,
    page_runs,
    pages_to_ranges,
    split_ranges,
)
from .page_list import check_page_aligned

RUN_BITS = 12
MAX_RUN_PAGES = 1 << RUN_BITS


class PfnRun(Layout):
    """Packed ``(pfn << 12) | (npages - 1)`` words, with one offset and one length."""

    name: ClassVar[str] = "pfn_run"
    c_struct: ClassVar[str] = "u64 (pfn:52, npages-1:12)"
    dtype: ClassVar[np.dtype] = np.dtype("<u8")
    entry_size: ClassVar[int] = 8
    header_size: ClassVar[int] = 16

    def __init__(self, words: np.ndarray, offset: int, length: int):
        self.words = words
        self.offset = offset
        self.length = length

    @classmethod
    def from_ranges(cls, addr: Any, length: Any) -> PfnRun:
        return cls._build(*merge_ranges(*check_ranges(addr, length)))

    @classmethod
    def from_pages(cls, pfns: Any, offset: int = 0, size: int | None = None) -> PfnRun:
        p, off, sz = check_pages(pfns, offset, size)
        starts, pages = page_runs(p)
        if int(pages.max()) > MAX_RUN_PAGES:
            return cls._build(*pages_to_ranges(p, off, sz))
        words = p[starts]
        del starts
        words <<= U64(RUN_BITS)
        pages -= U64(1)
        words |= pages
        return cls(words, off, sz)

    @classmethod
    def _build(cls, addr: np.ndarray, length: np.ndarray) -> PfnRun:
        check_page_aligned(addr, length, PAGE_SIZE, "pfn_run")
        mask = U64(PAGE_SIZE - 1)
        first = addr & ~mask
        span = (addr + length - first + mask) & ~mask  # whole pages covered
        run_addr, run_len = split_ranges(first, span, MAX_RUN_PAGES * PAGE_SIZE,
                                         MAX_RUN_PAGES * PAGE_SIZE)
        words = run_addr  # page-aligned: (pfn << 12) is the address itself
        run_len >>= U64(PAGE_SHIFT)
        run_len -= U64(1)
        words |= run_len
        return cls(words, int(addr[0] & mask), int(length.sum(dtype=U64)))

    def __len__(self) -> int:
        return self.words.size

    @property
    def nbytes(self) -> int:
        return self.header_size + self.words.size * self.entry_size

    @property
    def total_length(self) -> int:
        return self.length

    def _entry_ranges(self) -> tuple[np.ndarray, np.ndarray]:
        addr = self.words & ~U64(MAX_RUN_PAGES - 1)  # (pfn << 12) is the address
        length = self.words & U64(MAX_RUN_PAGES - 1)
        length += U64(1)
        length <<= U64(PAGE_SHIFT)
        addr[0] += U64(self.offset)
        length[0] -= U64(self.offset)
        tail = int(length.sum(dtype=U64)) - self.length
        length[-1] -= U64(tail)
        return addr, length
