"""``struct scatterlist`` in a ``struct sg_table`` (include/linux/scatterlist.h, lib/scatterlist.c).

``struct scatterlist`` on 64-bit with ``CONFIG_NEED_SG_DMA_LENGTH``: ``unsigned long page_link;
unsigned int offset, length; dma_addr_t dma_address; unsigned int dma_length, dma_flags;`` - 32
bytes. ``page_link`` holds the ``struct page *`` (vmemmap address) with ``SG_CHAIN`` (0x01) and
``SG_END`` (0x02) in its low bits. ``struct sg_table`` (``sgl, nents, orig_nents``) is 16 bytes.

Chaining as ``__sg_alloc_table`` / ``get_next_sg`` do it: a list of more than
``SG_MAX_SINGLE_ALLOC`` (128) entries is built of chunks of 128 entries whose last entry is a
chain link, so each full chunk holds 127 data entries; the last chunk holds what is left
(at most 128). ``entries`` holds every allocated entry, chain links included.
Simplification: a chain link stores the next chunk's index (``<< 12``) in place of its address.

This is the layout that does not split CPU and DMA: mapping it the old way writes
``dma_address``/``dma_length`` into its own entries (:meth:`SgTable.set_dma`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ..errors import RangeError
from ..units import PAGE_SHIFT, PAGE_SIZE, UINT_MAX, align_down
from .base import (
    MAX_U32_CHUNK,
    U64,
    Layout,
    addr_to_page_pointer,
    check_pages,
    page_pointer_to_addr,
    page_runs,
    split_ranges,
)

SCATTERLIST_DTYPE = np.dtype([
    ("page_link", "<u8"), ("offset", "<u4"), ("length", "<u4"),
    ("dma_address", "<u8"), ("dma_length", "<u4"), ("dma_flags", "<u4"),
])
SG_TABLE_SIZE = 16
SG_CHAIN = 0x01
SG_END = 0x02
SG_PAGE_LINK_MASK = SG_CHAIN | SG_END
#: ``PAGE_SIZE / sizeof(struct scatterlist)``
SG_MAX_SINGLE_ALLOC = PAGE_SIZE // SCATTERLIST_DTYPE.itemsize
#: ``UINT_MAX & PAGE_MASK``
SCATTERLIST_MAX_SEGMENT = MAX_U32_CHUNK

#: kmalloc size classes (mm/slab_common.c ``kmalloc_info``) up to a page.
_KMALLOC_SIZES = np.array([8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096])


def sg_chunks(nents: int) -> list[int]:
    """Entries allocated per chunk for ``nents`` data entries (``__sg_alloc_table``)."""
    if nents <= 0:
        return []
    # while (left > SG_MAX_SINGLE_ALLOC) { full chunk; left -= SG_MAX_SINGLE_ALLOC - 1; }
    full = max(0, -(-(nents - SG_MAX_SINGLE_ALLOC) // (SG_MAX_SINGLE_ALLOC - 1)))
    return [SG_MAX_SINGLE_ALLOC] * full + [nents - full * (SG_MAX_SINGLE_ALLOC - 1)]


def sg_kmalloc_bytes(alloc_size: int) -> int:
    """Bytes ``sg_kmalloc`` really takes for a chunk: a page for 128 entries, else kmalloc."""
    if alloc_size == SG_MAX_SINGLE_ALLOC:
        return PAGE_SIZE
    want = alloc_size * SCATTERLIST_DTYPE.itemsize
    return int(_KMALLOC_SIZES[np.searchsorted(_KMALLOC_SIZES, want)])


class SgTable(Layout):
    """A ``struct sg_table`` and its chained ``struct scatterlist`` chunks."""

    name: ClassVar[str] = "scatterlist"
    c_struct: ClassVar[str] = "struct scatterlist"
    dtype: ClassVar[np.dtype] = SCATTERLIST_DTYPE
    entry_size: ClassVar[int] = SCATTERLIST_DTYPE.itemsize
    header_size: ClassVar[int] = SG_TABLE_SIZE

    def __init__(self, entries: np.ndarray, orig_nents: int):
        self.entries = entries
        self.orig_nents = orig_nents
        #: entries the DMA mapping produced (== orig_nents until mapped, as the kernel keeps it).
        self.nents = orig_nents
        #: the live mapping of :func:`phyrlab.dma.dma_map_sgtable`, None when unmapped.
        self.mapping = None

    # -- construction
    @classmethod
    def _build(cls, addr: np.ndarray, length: np.ndarray) -> SgTable:
        addr, length = split_ranges(addr, length, SCATTERLIST_MAX_SEGMENT, SCATTERLIST_MAX_SEGMENT)
        return cls._from_entries(addr, length)

    @classmethod
    def _from_entries(cls, addr: np.ndarray, length: np.ndarray) -> SgTable:
        n = addr.size
        chunks = sg_chunks(n)
        entries = np.zeros(n + len(chunks) - 1, dtype=cls.dtype)
        link = addr_to_page_pointer(addr)
        link[-1] |= U64(SG_END)
        offset = addr & U64(PAGE_SIZE - 1)
        for field, values in (("page_link", link), ("offset", offset), ("length", length)):
            _scatter(entries[field], values, len(chunks))
        full = len(chunks) - 1
        links = np.arange(1, full + 1, dtype=U64) << U64(12)
        entries["page_link"][SG_MAX_SINGLE_ALLOC - 1: full * SG_MAX_SINGLE_ALLOC:
                             SG_MAX_SINGLE_ALLOC] = links | U64(SG_CHAIN)
        return cls(entries, n)

    @classmethod
    def from_pages(cls, pfns: Any, offset: int = 0, size: int | None = None) -> SgTable:
        """``sg_alloc_table_from_pages``: runs merged up to ``SCATTERLIST_MAX_SEGMENT``."""
        return sg_alloc_table_from_pages(pfns, offset, size, SCATTERLIST_MAX_SEGMENT)

    def copy(self) -> SgTable:
        """An unmapped copy of the entries (``nents`` back to ``orig_nents``)."""
        if self.mapping is not None:
            raise ValueError("copy() of a mapped table: unmap it first")
        return type(self)(self.entries.copy(), self.orig_nents)

    # -- the protocol
    def __len__(self) -> int:
        return self.entries.size

    @property
    def chunks(self) -> list[int]:
        """Entries allocated per chunk, chain links included."""
        return sg_chunks(self.orig_nents)

    @property
    def alloc_bytes(self) -> int:
        """Bytes the kernel's allocators really hand out: each chunk rounded to its slab size."""
        return SG_TABLE_SIZE + sum(sg_kmalloc_bytes(c) for c in self.chunks)

    def _field(self, name: str) -> np.ndarray:
        """One field of the data entries (chain links skipped), as a contiguous array."""
        return _gather(self.entries[name], self.orig_nents, len(self.chunks))

    def sg_entries(self) -> tuple[np.ndarray, np.ndarray]:
        """``(sg_phys, length)`` of each data entry as stored, unmerged: what ``dma_map_sg``
        walks (``for_each_sg``), where :meth:`ranges` merges contiguous neighbours."""
        return self._entry_ranges()

    def _entry_ranges(self) -> tuple[np.ndarray, np.ndarray]:
        addr = page_pointer_to_addr(self._field("page_link"))
        addr += self._field("offset")
        return addr, self._field("length").astype(U64)

    # -- the old, combined DMA style
    def set_dma(self, dma_addr: np.ndarray, dma_len: np.ndarray) -> None:
        """Write a mapping's result into the entries, as ``dma_map_sg`` does; set ``nents``."""
        dma_addr = np.asarray(dma_addr, dtype=U64)
        dma_len = np.asarray(dma_len, dtype=U64)
        n = dma_addr.size
        if n > self.orig_nents:
            raise RangeError(f"{n} DMA segments do not fit in {self.orig_nents} entries")
        if n and int(dma_len.max()) > UINT_MAX:
            raise RangeError(f"dma_length {int(dma_len.max()):#x} does not fit in 32 bits")
        pad = self.orig_nents - n
        for field, values in (("dma_address", dma_addr), ("dma_length", dma_len)):
            full = np.concatenate((values, np.zeros(pad, dtype=values.dtype)))
            _scatter(self.entries[field], full, len(self.chunks))
        self.nents = n

    def dma_ranges(self) -> tuple[np.ndarray, np.ndarray]:
        """``(sg_dma_address, sg_dma_len)`` of the ``nents`` mapped entries."""
        return (self._field("dma_address")[: self.nents],
                self._field("dma_length")[: self.nents].astype(U64))


def _scatter(field: np.ndarray, values: np.ndarray, nchunks: int) -> None:
    """Write data values into a chained entry array, skipping each full chunk's chain link."""
    full = nchunks - 1
    per = SG_MAX_SINGLE_ALLOC - 1
    if full:
        field[: full * SG_MAX_SINGLE_ALLOC].reshape(full, SG_MAX_SINGLE_ALLOC)[:, :per] = \
            values[: full * per].reshape(full, per)
    field[full * SG_MAX_SINGLE_ALLOC:] = values[full * per:]


def _gather(field: np.ndarray, n: int, nchunks: int) -> np.ndarray:
    """Inverse of :func:`_scatter`: the ``n`` data values of a chained entry array."""
    full = nchunks - 1
    per = SG_MAX_SINGLE_ALLOC - 1
    out = np.empty(n, dtype=field.dtype)
    if full:
        out[: full * per].reshape(full, per)[:] = \
            field[: full * SG_MAX_SINGLE_ALLOC].reshape(full, SG_MAX_SINGLE_ALLOC)[:, :per]
    out[full * per:] = field[full * SG_MAX_SINGLE_ALLOC:]
    return out


def sg_alloc_table_from_pages(pfns: Any, offset: int = 0, size: int | None = None,
                              max_segment: int = SCATTERLIST_MAX_SEGMENT) -> SgTable:
    """``sg_alloc_table_from_pages_segment`` (lib/scatterlist.c).

    Pages with consecutive PFNs are merged into one entry, but a chunk never holds more than
    ``max_segment`` bytes of pages; ``max_segment`` is first rounded down to a page, and below a
    page it is -EINVAL (``ValueError``). ``offset`` applies to the first page; ``size`` bytes are
    described in all. Simplification: the append form (``sg_alloc_append_table_from_pages``
    with a previous table) and the ZONE_DEVICE pgmap check of ``pages_are_mergeable`` are left out.
    """
    max_segment = align_down(int(max_segment), PAGE_SIZE)
    if max_segment < PAGE_SIZE:
        raise RangeError(f"-EINVAL: max_segment {max_segment:#x} is below a page ({PAGE_SIZE})")
    pfns, offset, size = check_pages(pfns, offset, size)
    n = pfns.size
    max_pages = max_segment // PAGE_SIZE
    run_start, run_pages = page_runs(pfns)
    if int(run_pages.max()) <= max_pages:
        first_page, chunk_pages = run_start, run_pages
    else:
        # a run of L pages becomes ceil(L / max_pages) chunks of max_pages pages from its start
        run_pages = run_pages.astype(np.int64)
        per_run = -(-run_pages // max_pages)
        idx = np.repeat(np.arange(run_start.size), per_run)
        k = np.arange(idx.size) - np.repeat(np.cumsum(per_run) - per_run, per_run)
        first_page = run_start[idx] + k * max_pages
        chunk_pages = np.minimum(max_pages, run_pages[idx] - k * max_pages).astype(U64)
    addr = pfns[first_page]
    addr <<= U64(PAGE_SHIFT)
    length = chunk_pages << U64(PAGE_SHIFT)
    addr[0] += U64(offset)
    length[0] -= U64(offset)
    length[-1] -= U64(n * PAGE_SIZE - offset - size)
    return SgTable._from_entries(addr, length)
