"""The range-list protocol every layout offers, and the array helpers behind it.

A *layout* is how a list of physical ranges is stored (``struct scatterlist``, ``bio_vec``, a
page array...). Nothing outside :mod:`phyrlab.layouts` looks at a layout's fields: a DMA backend
asks for :meth:`Layout.ranges` or :meth:`Layout.segments` and never learns which layout it was
given. That is the non-leaky API the phyr discussion asks for.

``ranges()`` is canonical: neighbouring entries that are physically contiguous are merged, so
every layout describing the same memory returns identical arrays, however it stores them.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ..errors import RangeError
from ..units import PAGE_SHIFT, PAGE_SIZE, U64_MAX

U64 = np.uint64
#: page-aligned largest chunk a 32-bit length field holds (``SCATTERLIST_MAX_SEGMENT``).
MAX_U32_CHUNK = 0xFFFF_F000


# --------------------------------------------------------------------------- validation
def as_u64(name: str, values: Any) -> np.ndarray:
    """``values`` as a 1-D uint64 array; integers only, never negative (else ``RangeError``)."""
    arr = np.asarray(values)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise RangeError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.dtype == np.uint64:
        return arr
    if arr.size == 0:
        return arr.astype(U64)
    if arr.dtype.kind not in "iu" or arr.dtype == np.bool_:
        raise RangeError(f"{name} must be an integer array, got dtype {arr.dtype}")
    if arr.dtype.kind == "i":
        bad = np.flatnonzero(arr < 0)
        if bad.size:
            i = int(bad[0])
            raise RangeError(f"{name}[{i}] = {int(arr[i])} is negative")
    return arr.astype(U64)


def check_ranges(addr: Any, length: Any, *, overlap: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Validate a physical range list and return it as uint64 arrays.

    Refuses a zero length, a range whose end passes 2^64, and (unless ``overlap``) two ranges
    that share a byte: a range list describes each byte of memory at most once.
    """
    addr = as_u64("addr", addr)
    length = as_u64("length", length)
    if addr.shape != length.shape:
        raise RangeError(f"addr has {addr.size} entries but length has {length.size}")
    if length.size and int(length.min()) == 0:
        i = int(np.argmin(length))
        raise RangeError(f"length[{i}] is zero (range at addr {int(addr[i]):#x})")
    # addr + length <= 2**64  <=>  length - 1 <= ~addr; no need to look when even the
    # largest address plus the largest length stays within 2**64
    over = (np.flatnonzero((length - U64(1)) > ~addr)
            if addr.size and int(addr.max()) + int(length.max()) > 1 << 64 else ())
    if len(over):
        i = int(over[0])
        raise RangeError(
            f"range {i} (addr {int(addr[i]):#x}, length {int(length[i]):#x}) ends past 2^64"
        )
    if not overlap and addr.size > 1:
        _check_no_overlap(addr, length)
    return addr, length


def _check_no_overlap(addr: np.ndarray, length: np.ndarray) -> None:
    nxt, cur, clen = addr[1:], addr[:-1], length[:-1]
    if np.all(nxt >= cur) and np.all(nxt - cur >= clen):
        return
    if _disjoint_by_buckets(addr, length):
        return
    order = np.argsort(addr, kind="stable")
    sa, sl = addr[order], length[order]
    bad = np.flatnonzero(sa[1:] - sa[:-1] < sl[:-1])
    if bad.size:
        k = int(bad[0])
        i, j = sorted((int(order[k]), int(order[k + 1])))
        raise RangeError(
            f"ranges {i} (addr {int(addr[i]):#x}, length {int(length[i]):#x}) and "
            f"{j} (addr {int(addr[j]):#x}, length {int(length[j]):#x}) overlap"
        )


def _disjoint_by_buckets(addr: np.ndarray, length: np.ndarray) -> bool:
    """True when the ranges are proven disjoint without a sort (False: not proven).

    Buckets of ``2^k <= min(length)`` bytes hold at most one start of disjoint ranges, so when
    the address span needs at most ``8 * n`` buckets, scattering each range into the bucket of
    its start orders them (a counting sort) and neighbours are compared as after a sort.
    """
    n = addr.size
    lo = int(addr.min())
    span = int(addr.max()) - lo
    shift = int(length.min()).bit_length() - 1
    nb = (span >> shift) + 1
    if nb > 8 * n:
        return False
    key = ((addr - U64(lo)) >> U64(shift)).astype(np.intp)
    slot = np.full(nb, -1, dtype=np.intp)
    slot[key] = np.arange(n, dtype=np.intp)
    order = slot[slot >= 0]
    if order.size != n:  # two starts share a bucket: the ranges overlap (sort to name them)
        return False
    sa, sl = addr[order], length[order]
    return bool(np.all(sa[1:] - sa[:-1] >= sl[:-1]))


def check_pages(pfns: Any, offset: int, size: int | None, page_size: int = PAGE_SIZE
                ) -> tuple[np.ndarray, int, int]:
    """Validate ``(pfns, offset, size)`` as ``sg_alloc_table_from_pages`` takes them."""
    arr = np.asarray(pfns)
    if arr.ndim != 1:
        raise RangeError(f"pfns must be one-dimensional, got shape {arr.shape}")
    if arr.size and (arr.dtype.kind not in "iu" or arr.dtype == np.bool_):
        raise RangeError(f"pfns must be an integer (PFN) array, got dtype {arr.dtype}")
    pfns = as_u64("pfns", arr)
    n = pfns.size
    if n == 0:
        raise RangeError("pfns is empty: a range list needs at least one page")
    offset = int(offset)
    if not 0 <= offset < page_size:
        raise RangeError(f"offset {offset} is beyond the first page (page size {page_size})")
    room = n * page_size - offset
    size = room if size is None else int(size)
    if size <= 0:
        raise RangeError(f"size {size} must be positive")
    if size > room:
        raise RangeError(f"size {size} needs more than the {n} pages given (room {room} bytes)")
    if size <= room - page_size:
        raise RangeError(f"size {size} leaves page {n - 1} unused: pass only the pages it covers")
    top = np.flatnonzero(pfns > U64(U64_MAX >> PAGE_SHIFT))
    if top.size:
        i = int(top[0])
        raise RangeError(f"pfns[{i}] = {int(pfns[i]):#x} is beyond a 64-bit physical address")
    return pfns, offset, size


# --------------------------------------------------------------------------- array helpers
def merge_ranges(addr: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge neighbours that are physically contiguous (``addr[i] + len[i] == addr[i+1]``)."""
    if addr.size <= 1:
        return addr, length
    step = np.subtract(addr[1:], addr[:-1])
    joins = step == length[:-1]
    del step
    if not joins.any():
        return addr, length
    starts = np.flatnonzero(np.concatenate(([True], ~joins)))
    ends = np.concatenate((starts[1:], [addr.size])) - 1
    new_len = (addr[ends] - addr[starts]) + length[ends]
    return addr[starts], new_len


def split_ranges(addr: np.ndarray, length: np.ndarray, first: np.ndarray | int, step: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Cut each range into a first piece of ``first`` bytes, then pieces of ``step`` bytes.

    ``first`` may be per range (e.g. the distance to the next boundary); pieces never exceed
    what is left of the range.
    """
    if np.isscalar(first) and length.size and int(length.max()) <= int(first):
        return addr, length
    first = np.minimum(np.broadcast_to(U64(first) if np.isscalar(first) else first,
                                       length.shape), length)
    rest = length - first
    step_u = U64(step)
    counts = (1 + (rest + step_u - U64(1)) // step_u).astype(np.intp)
    if np.all(counts == 1):
        return addr.copy(), length.copy()
    total = int(counts.sum())
    idx = np.repeat(np.arange(addr.size), counts)
    start_of = np.cumsum(counts) - counts
    k = (np.arange(total) - np.repeat(start_of, counts)).astype(U64)
    a = addr[idx]
    f = first[idx]
    # piece 0 starts at addr; piece k>=1 at addr + first + (k-1)*step
    off = np.where(k == 0, U64(0), f + (k - U64(1)) * step_u)
    end = length[idx]
    piece = np.where(k == 0, f, np.minimum(step_u, end - off))
    return a + off, piece


def split_segments(addr: np.ndarray, length: np.ndarray, max_seg: int, boundary: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Split ranges so that none exceeds ``max_seg`` or crosses a ``boundary + 1`` line.

    What the block layer's ``blk_rq_map_sg`` / ``get_max_segment_size`` does for a device with
    ``max_segment_size`` and ``segment_boundary_mask``.
    """
    max_seg = int(max_seg)
    boundary = int(boundary)
    if max_seg <= 0:
        raise RangeError(f"max_seg {max_seg} must be positive")
    if boundary < 0 or boundary > U64_MAX or (boundary & (boundary + 1)):
        raise RangeError(f"boundary {boundary:#x} must be a mask of the form 2^n - 1")
    if boundary != U64_MAX:
        window = boundary + 1
        if window < PAGE_SIZE:
            raise RangeError(f"boundary {boundary:#x} is smaller than a page")
        first = U64(window) - (addr & U64(boundary))
        addr, length = split_ranges(addr, length, first, window)
    if max_seg < U64_MAX:
        addr, length = split_ranges(addr, length, max_seg, max_seg)
    return addr, length


def page_runs(pfns: np.ndarray, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """First index and length in entries of each run of PFNs ``stride`` apart."""
    n = pfns.size
    starts_mask = np.empty(n, dtype=bool)
    starts_mask[0] = True
    if n > 1:
        step = np.subtract(pfns[1:], pfns[:-1])
        np.not_equal(step, U64(stride), out=starts_mask[1:])
        del step
    starts = np.flatnonzero(starts_mask)
    del starts_mask
    pages = np.empty(starts.size, dtype=U64)
    np.subtract(starts[1:], starts[:-1], out=pages[:-1], casting="unsafe")
    pages[-1] = n - starts[-1]
    return starts, pages


def pages_to_ranges(pfns: np.ndarray, offset: int, size: int, page_size: int = PAGE_SIZE
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Merged physical ranges of validated ``(pfns, offset, size)`` (runs of consecutive PFNs).

    With ``page_size`` above 4 KiB, ``pfns`` are the 4 KiB PFNs of each large page's start.
    """
    starts, length = page_runs(pfns, page_size // PAGE_SIZE)
    addr = pfns[starts]
    del starts
    addr <<= U64(PAGE_SHIFT)
    length *= U64(page_size)
    addr[0] += U64(offset)
    length[0] -= U64(offset)
    tail = pfns.size * page_size - offset - size
    length[-1] -= U64(tail)
    return addr, length


def page_pointer(pfns: np.ndarray) -> np.ndarray:
    """``struct page *`` of each PFN in the x86-64 vmemmap (``pfn_to_page``: 64-byte pages)."""
    out = pfns << U64(6)
    out += U64(VMEMMAP_START)
    return out


def addr_to_page_pointer(addr: np.ndarray) -> np.ndarray:
    """``virt_to_page``-style: the ``struct page *`` of the page holding each address."""
    out = addr >> U64(PAGE_SHIFT - 6)
    out &= ~U64(STRUCT_PAGE_SIZE - 1)
    out += U64(VMEMMAP_START)
    return out


def page_pointer_to_addr(ptrs: np.ndarray) -> np.ndarray:
    """Physical address of each page pointer's page (``page_to_phys``); low flag bits ignored."""
    out = ptrs & ~U64(STRUCT_PAGE_SIZE - 1)
    out -= U64(VMEMMAP_START)
    out <<= U64(PAGE_SHIFT - 6)
    return out


def pointer_pfn(ptrs: np.ndarray) -> np.ndarray:
    """Inverse of :func:`page_pointer` (``page_to_pfn``)."""
    return (ptrs - U64(VMEMMAP_START)) // U64(STRUCT_PAGE_SIZE)


#: x86-64 ``VMEMMAP_START`` with 4-level paging (Documentation/arch/x86/x86_64/mm.rst).
VMEMMAP_START = 0xFFFF_EA00_0000_0000
#: ``sizeof(struct page)`` on 64-bit.
STRUCT_PAGE_SIZE = 64


# --------------------------------------------------------------------------- the protocol
class Layout:
    """One way to store a physical range list; see the module docstring for the protocol."""

    name: ClassVar[str]
    #: bytes of one entry, as ``sizeof`` the C struct.
    entry_size: ClassVar[int]
    #: bytes of the header that holds the list (e.g. ``struct sg_table``), 0 if none.
    header_size: ClassVar[int] = 0
    #: the C struct the entries mirror, for labels.
    c_struct: ClassVar[str]

    @classmethod
    def from_ranges(cls, addr: Any, length: Any) -> Layout:
        """Build from arrays of physical address and length in bytes."""
        a, n = check_ranges(addr, length)
        return cls._build(a, n)

    @classmethod
    def from_pages(cls, pfns: Any, offset: int = 0, size: int | None = None) -> Layout:
        """Build from a page-frame array, first-page ``offset`` and ``size`` bytes in all."""
        p, off, sz = check_pages(pfns, offset, size)
        return cls._build(*pages_to_ranges(p, off, sz))

    @classmethod
    def _build(cls, addr: np.ndarray, length: np.ndarray) -> Layout:
        raise NotImplementedError

    def _entry_ranges(self) -> tuple[np.ndarray, np.ndarray]:
        """The ranges of the stored entries, one per entry, unmerged."""
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def nbytes(self) -> int:
        """Bytes of storage: entries (with the C struct's padding) plus the header."""
        return self.header_size + len(self) * self.entry_size

    @property
    def total_length(self) -> int:
        """Bytes of memory described."""
        return int(self._entry_ranges()[1].sum(dtype=U64))

    def ranges(self) -> tuple[np.ndarray, np.ndarray]:
        """The physical ranges ``(addr, length)`` in order, contiguous neighbours merged.

        Read-only arrays: a caller (a DMA backend) cannot write the CPU-side list through them.
        """
        addr, length = merge_ranges(*self._entry_ranges())
        addr.flags.writeable = False
        length.flags.writeable = False
        return addr, length

    def segments(self, max_seg: int = U64_MAX, boundary: int = U64_MAX
                 ) -> tuple[np.ndarray, np.ndarray]:
        """The same memory split as a device with these limits needs it."""
        return split_segments(*self.ranges(), max_seg, boundary)

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {len(self)} entries, {self.nbytes} bytes, "
                f"{self.total_length} bytes described>")


class EntryArrayLayout(Layout):
    """A layout whose whole state is one structured array of entries (``self.entries``).

    The entries are read-only once built, so the merged :meth:`ranges` are computed once.
    """

    dtype: ClassVar[np.dtype]

    def __init__(self, entries: np.ndarray):
        entries.flags.writeable = False
        self.entries = entries
        self._ranges: tuple[np.ndarray, np.ndarray] | None = None

    def ranges(self) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`Layout.ranges`, computed on the first call."""
        if self._ranges is None:
            self._ranges = super().ranges()
        return self._ranges

    def __len__(self) -> int:
        return self.entries.size


def as_ranges(x: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(addr, length)`` uint64 arrays of a layout, an object with ``.ranges()``, or a pair.

    A pair is validated like :meth:`Layout.from_ranges` (zero length, overflow, overlap).
    """
    if hasattr(x, "ranges"):
        return x.ranges()
    if isinstance(x, tuple) and len(x) == 2:
        return check_ranges(*x)
    raise TypeError(f"expected a layout or an (addr, length) pair, got {type(x).__name__}")
