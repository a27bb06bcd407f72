"""Physical memory: page-frame arrays of a chosen contiguity, and this machine's real memory.

The models stand in for what the buddy allocator hands a driver (mm/page_alloc.c): runs of
physically consecutive pages whose lengths follow a distribution, placed at distinct addresses.
``pagemap_ranges`` reads the truth for a real buffer from ``/proc/self/pagemap``
(Documentation/admin-guide/mm/pagemap.rst).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .errors import PhyrlabError
from .layouts.base import merge_ranges
from .units import PAGE_SHIFT, PAGE_SIZE, SZ_2M

U64 = np.uint64
#: where generated memory starts by default: 4 GiB (PFN 0x100000), above a 32-bit DMA mask.
DEFAULT_BASE_PFN = 0x100000


def contiguous_pfns(npages: int, base_pfn: int = DEFAULT_BASE_PFN) -> np.ndarray:
    """``npages`` consecutive PFNs: one physically contiguous buffer (CMA, a 1 GiB hugepage)."""
    _check_npages(npages)
    return np.arange(base_pfn, base_pfn + npages, dtype=U64)


def fragmented_pfns(npages: int, mean_run: float, seed: int = 0,
                    base_pfn: int = DEFAULT_BASE_PFN) -> np.ndarray:
    """``npages`` distinct PFNs in runs of consecutive pages, geometric lengths of ``mean_run``.

    Runs are laid out in physical memory in a seeded random order with a free gap of at least
    one page between neighbours, so no two runs of the list merge; ``mean_run=1`` gives
    scattered order-0 pages. Simplification: run lengths are i.i.d. geometric, not the buddy
    allocator's power-of-two orders.
    """
    _check_npages(npages)
    if mean_run < 1:
        raise ValueError(f"mean_run {mean_run} must be >= 1 page")
    rng = np.random.default_rng(seed)
    p = 1.0 / mean_run
    runs = rng.geometric(p, size=max(16, int(npages / mean_run * 1.2) + 16))
    while runs.sum() < npages:
        runs = np.concatenate((runs, rng.geometric(p, size=runs.size)))
    cut = int(np.searchsorted(np.cumsum(runs), npages)) + 1
    runs = runs[:cut].astype(np.int64)
    runs[-1] -= int(runs.sum()) - npages
    gaps = rng.geometric(1.0 / max(mean_run, 1.0), size=runs.size).astype(np.int64)
    order = rng.permutation(runs.size)
    slot = (runs + gaps)[order]
    start = np.empty(runs.size, dtype=np.int64)
    start[order] = base_pfn + np.cumsum(slot) - slot
    # page i of the run that begins at list index first[r] sits at start[r] + (i - first[r])
    start -= np.cumsum(runs) - runs
    pfns = np.repeat(start, runs)
    pfns += np.arange(npages, dtype=np.int64)
    return pfns.view(U64)


def hugepage_pfns(npages: int, hugepage_size: int = SZ_2M, seed: int = 0,
                  base_pfn: int = DEFAULT_BASE_PFN) -> np.ndarray:
    """4 KiB PFNs of memory backed by ``hugepage_size`` pages (2 MiB THP/hugetlb, 1 GiB hugetlb).

    Each huge page is naturally aligned and physically contiguous; huge pages are placed in a
    seeded random order with a free huge page between neighbours.
    """
    _check_npages(npages)
    per = hugepage_size // PAGE_SIZE
    if per < 1 or hugepage_size & (hugepage_size - 1):
        raise ValueError(f"hugepage_size {hugepage_size} must be a power of two >= {PAGE_SIZE}")
    nhuge = -(-npages // per)
    rng = np.random.default_rng(seed)
    first = -(-base_pfn // per) * per
    slots = rng.permutation(nhuge) * 2  # every other huge page frame
    start = first + slots.astype(np.int64) * per
    pfns = np.repeat(start, per) + np.tile(np.arange(per, dtype=np.int64), nhuge)
    return pfns[:npages].astype(U64)


def run_lengths(pfns: np.ndarray) -> np.ndarray:
    """Lengths, in pages, of the runs of consecutive PFNs in ``pfns`` (in list order)."""
    pfns = np.asarray(pfns, dtype=U64)
    if pfns.size == 0:
        return np.empty(0, dtype=np.int64)
    breaks = np.flatnonzero(pfns[1:] - pfns[:-1] != U64(1)) + 1
    return np.diff(np.concatenate(([0], breaks, [pfns.size])))


def _check_npages(npages: int) -> None:
    if int(npages) != npages or npages < 1:
        raise ValueError(f"npages {npages!r} must be a positive whole number")


# --------------------------------------------------------------------------- this machine
PM_PFN_MASK = (1 << 55) - 1
PM_PRESENT = 1 << 63
PM_SWAP = 1 << 62


class PagemapError(PhyrlabError, OSError):
    """``/proc/self/pagemap`` cannot give physical addresses here."""


def pagemap_pfns(buffer: Any, pagemap_path: str = "/proc/self/pagemap") -> tuple[np.ndarray, int]:
    """PFNs of the pages behind ``buffer`` (a numpy array or writable buffer) and its offset.

    Touches every page first so each is present. Raises :class:`PagemapError` when the kernel
    hides PFNs (reads them as 0 without ``CAP_SYS_ADMIN`` since v4.2) or a page is not present.
    """
    arr = np.frombuffer(buffer, dtype=np.uint8) if not isinstance(buffer, np.ndarray) else \
        buffer.reshape(-1).view(np.uint8)
    if arr.size == 0:
        raise ValueError("buffer is empty")
    vaddr = arr.__array_interface__["data"][0]
    first_vpn = vaddr >> PAGE_SHIFT
    last_vpn = (vaddr + arr.size - 1) >> PAGE_SHIFT
    npages = last_vpn - first_vpn + 1
    if arr.flags.writeable:
        # fault every page in without changing its contents
        idx = (np.arange(npages) << PAGE_SHIFT) - (vaddr & (PAGE_SIZE - 1))
        idx = np.clip(idx, 0, arr.size - 1)
        arr[idx] = arr[idx]
    try:
        fd = os.open(pagemap_path, os.O_RDONLY)
    except OSError as e:
        raise PagemapError(f"cannot open {pagemap_path}: {e.strerror}") from None
    try:
        raw = os.pread(fd, npages * 8, first_vpn * 8)
    finally:
        os.close(fd)
    if len(raw) != npages * 8:
        raise PagemapError(f"{pagemap_path}: short read ({len(raw)} of {npages * 8} bytes)")
    entries = np.frombuffer(raw, dtype="<u8")
    present = (entries & U64(PM_PRESENT)) != 0
    if not present.all():
        i = int(np.flatnonzero(~present)[0])
        raise PagemapError(f"{pagemap_path}: page {i} of the buffer is not present")
    pfns = entries & U64(PM_PFN_MASK)
    if not pfns.any():
        raise PagemapError(
            f"{pagemap_path}: PFNs read as 0: the kernel hides them from processes without "
            "CAP_SYS_ADMIN (run as root to read this machine's physical layout)")
    return pfns.copy(), vaddr & (PAGE_SIZE - 1)


def pagemap_ranges(buffer: Any, pagemap_path: str = "/proc/self/pagemap"
                   ) -> tuple[np.ndarray, np.ndarray]:
    """This machine's real physical ranges ``(addr, length)`` of ``buffer``, merged."""
    pfns, offset = pagemap_pfns(buffer, pagemap_path)
    nbytes = buffer.nbytes if isinstance(buffer, np.ndarray) else memoryview(buffer).nbytes
    addr = pfns << U64(PAGE_SHIFT)
    length = np.full(pfns.size, PAGE_SIZE, dtype=U64)
    addr[0] += U64(offset)
    length[0] -= U64(offset)
    length[-1] -= U64(pfns.size * PAGE_SIZE - offset - nbytes)
    return merge_ranges(addr, length)
