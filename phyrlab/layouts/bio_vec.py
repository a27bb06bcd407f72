"""``struct bio_vec`` (include/linux/bvec.h): ``struct page *bv_page; unsigned int bv_len,
bv_offset;`` - 16 bytes.

Multi-page bvecs (v5.1+): one entry covers physically contiguous pages, ``bv_page`` the first
and ``bv_offset`` the offset in it, as ``bio_add_page`` / ``bvec_try_merge_page`` build them.
``bv_page`` holds the x86-64 vmemmap address of the page (``pfn_to_page``).
Simplification: a range longer than ``bv_len`` can hold is split into page-aligned pieces of
``0xfffff000`` bytes (the kernel stops merging at ``UINT_MAX``).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..units import PAGE_SIZE
from .base import (
    MAX_U32_CHUNK,
    U64,
    EntryArrayLayout,
    addr_to_page_pointer,
    page_pointer_to_addr,
    split_ranges,
)

BIO_VEC_DTYPE = np.dtype([("bv_page", "<u8"), ("bv_len", "<u4"), ("bv_offset", "<u4")])


class BioVec(EntryArrayLayout):
    """An array of multi-page ``struct bio_vec`` (what a ``struct bio``'s ``bi_io_vec`` holds)."""

    name: ClassVar[str] = "bio_vec"
    c_struct: ClassVar[str] = "struct bio_vec"
    dtype: ClassVar[np.dtype] = BIO_VEC_DTYPE
    entry_size: ClassVar[int] = BIO_VEC_DTYPE.itemsize

    @classmethod
    def _build(cls, addr: np.ndarray, length: np.ndarray) -> BioVec:
        addr, length = split_ranges(addr, length, MAX_U32_CHUNK, MAX_U32_CHUNK)
        entries = np.empty(addr.size, dtype=cls.dtype)
        entries["bv_page"] = addr_to_page_pointer(addr)
        entries["bv_len"] = length
        entries["bv_offset"] = addr & U64(PAGE_SIZE - 1)
        return cls(entries)

    def _entry_ranges(self) -> tuple[np.ndarray, np.ndarray]:
        e = self.entries
        addr = page_pointer_to_addr(e["bv_page"])
        addr += e["bv_offset"]
        return addr, e["bv_len"].astype(U64)
