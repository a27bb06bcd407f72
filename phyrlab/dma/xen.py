"""Xen's two ops tables: ``xen_swiotlb_dma_ops`` and ``xen_grant_dma_ops``.

Read in the kernel sources (stored versions are v6.x; the logic matches v6.2):

- drivers/xen/swiotlb-xen.c: ``xen_swiotlb_map_page`` turns the guest physical address into a
  bus address through the P2M (``xen_phys_to_bus``: ``pfn_to_bfn(pfn) << XEN_PAGE_SHIFT |
  offset``) and returns it directly when ``dma_capable()``, the range is machine-contiguous
  (``!range_straddles_page_boundary``) and no bounce is forced; otherwise it bounces through
  ``swiotlb_tbl_map_single`` and checks the bounce address is capable (else unmaps, fails).
  ``xen_swiotlb_map_sg`` maps entry by entry (no merging) and on failure unmaps what it
  mapped and returns -EIO. ``unmap`` gives slots back only for addresses in the pool
  (``is_xen_swiotlb_buffer``). ``max_mapping_size`` is ``swiotlb_max_mapping_size``.
- drivers/xen/grant-dma-ops.c: ``xen_grant_dma_map_page`` takes ``XEN_PFN_UP(offset_in_page
  + size)`` consecutive grant references (``gnttab_alloc_grant_reference_seq``), grants each
  page to the backend domain, and returns ``XEN_GRANT_DMA_ADDR_OFF (1 << 63) | grant <<
  XEN_PAGE_SHIFT`` plus the offset; ``map_sg`` per entry, -EIO after unwinding on failure;
  ``dma_supported`` only for ``DMA_BIT_MASK(64)``.

Simplified: the P2M is a numpy array built from a seed (guest memory handed out in machine-
contiguous chunks of ``chunk_pages``, in shuffled order, as a PV guest sees it) unless one is
passed; ``phys_to_dma`` is the identity on top of it; bounces use the core's swiotlb pool
(``phyrlab.dma.swiotlb``), its pages remapped machine-contiguous at ``pool_mfn`` as
``xen_swiotlb_fixup`` does (one region for the pool, not one per 128-slot segment); grant-
table growth (``gnttab_expand``) is not modelled.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from phyrlab.dma.ops import (
    DmaMapOps,
    OpsEntry,
    SgCookie,
    check_direction,
    dma_limit,
    register_family,
)
from phyrlab.dma.swiotlb import (
    is_swiotlb_force_bounce,
    swiotlb_map_many,
    swiotlb_max_mapping_size,
)
from phyrlab.errors import DmaMappingError
from phyrlab.faults import first_failure, should_fail
from phyrlab.units import DMA_BIT_MASK, PAGE_SHIFT

XEN_PAGE_SHIFT = PAGE_SHIFT
XEN_PAGE_SIZE = 1 << XEN_PAGE_SHIFT
#: ``XEN_GRANT_DMA_ADDR_OFF`` (grant-dma-ops.c): bit 63 marks a grant DMA address.
XEN_GRANT_DMA_ADDR_OFF = 1 << 63
#: ``GNTTAB_NR_RESERVED_ENTRIES`` (include/xen/interface/grant_table.h).
GNTTAB_NR_RESERVED_ENTRIES = 8

_U64 = np.uint64


def make_p2m(nr_pages: int, chunk_pages: int = 512, seed: int = 0,
             mfn_base: int = 0x10_0000) -> np.ndarray:
    """A P2M (pfn -> machine frame) of ``nr_pages``: contiguous chunks in shuffled order."""
    if nr_pages <= 0 or chunk_pages <= 0:
        raise ValueError(f"make_p2m({nr_pages}, {chunk_pages}): both must be positive")
    first = _p2m_chunks(nr_pages, chunk_pages, seed, mfn_base)
    within = np.arange(chunk_pages, dtype=np.uint64)
    return (first[:, None] + within[None, :]).ravel()[:nr_pages]


@lru_cache(maxsize=8)
def _p2m_chunks(nr_pages: int, chunk_pages: int, seed: int, mfn_base: int) -> np.ndarray:
    """First machine frame of each chunk of :func:`make_p2m` (read-only, cached)."""
    nchunks = -(-nr_pages // chunk_pages)
    order = np.random.default_rng(seed).permutation(nchunks).astype(np.uint64)
    first = _U64(mfn_base) + order * _U64(chunk_pages)
    first.flags.writeable = False
    return first


class XenSwiotlbOps(DmaMapOps):
    """``xen_swiotlb_dma_ops``: direct when machine-contiguous and capable, else bounce.

    Bounces go through the device's swiotlb pool (``dev.dma_io_tlb_mem``, the core's
    :class:`~phyrlab.dma.swiotlb.IoTlbMem`), whose pages this backend first makes machine-
    contiguous at ``pool_mfn`` below 4 GiB in the P2M, as ``xen_swiotlb_fixup`` does with
    ``xen_create_contiguous_region``.

    ``batch`` (default True): when every bounce the pool can hold is dma-capable both as the
    core sees it (``phys_to_dma``) and through the P2M remap, ``map_sg`` bounces its entries
    with :func:`~phyrlab.dma.swiotlb.swiotlb_map_many` and ``map_sg``'s unwind and
    ``unmap_sg`` give them back with :meth:`~phyrlab.dma.swiotlb.IoTlbMem.unmap_many`; False
    (or any other pool or limit) bounces entry by entry (the reference). DMA addresses,
    errors, counters, pool state and fault-injection calls are the same.
    """

    batch: bool = True

    def __init__(self, entry: OpsEntry | None = None, **params: Any):
        allowed = {"p2m", "nr_pages", "chunk_pages", "seed", "mfn_base", "pool_mfn"}
        unknown = sorted(set(params) - allowed)
        if unknown:
            raise ValueError(f"xen_swiotlb_dma_ops: unknown parameter {unknown[0]!r}")
        super().__init__(entry, **params)
        p = self.params
        p2m = p.get("p2m")
        # the P2M is never materialized: make_p2m's chunks (or the array passed), and the
        # pool's remap as an overlay (_p2m_fix), both read through _mfn
        self._p2m_base: np.ndarray | None = None
        self._p2m_chunks: np.ndarray | None = None
        if p2m is None:
            nr, chunk = int(p.get("nr_pages", 1 << 22)), int(p.get("chunk_pages", 512))
            if nr <= 0 or chunk <= 0:
                raise ValueError(f"make_p2m({nr}, {chunk}): both must be positive")
            self._p2m_chunks = _p2m_chunks(nr, chunk, int(p.get("seed", 0)),
                                           int(p.get("mfn_base", 0x10_0000)))
            self._chunk = chunk
            self._nr_pages = nr
        else:
            self._p2m_base = np.array(p2m, dtype=np.uint64)
            self._nr_pages = len(self._p2m_base)
        self._p2m_fix: list[tuple[int, int, int]] = []  # (first pfn, last pfn, first mfn)
        self.pool_mfn = int(p.get("pool_mfn", 0x4_0000))  # 1 GiB: below MAX_DMA_BITS 32
        self._fixed: Any = None

    # the pool, made machine-contiguous once (xen_swiotlb_fixup)
    def _pool(self, dev: Any) -> Any:
        pool = dev.dma_io_tlb_mem  # made on first use
        if pool is None:
            raise DmaMappingError("ENOMEM", f"{self.name}: the device has no swiotlb pool")
        if self._fixed is not pool:
            first, last = pool.start >> XEN_PAGE_SHIFT, (pool.end - 1) >> XEN_PAGE_SHIFT
            if last >= self._nr_pages:
                raise ValueError(f"{self.name}: swiotlb pool [{pool.start:#x}, {pool.end:#x}) "
                                 f"is beyond the guest's {self._nr_pages} pages")
            self._p2m_fix.append((first, last, self.pool_mfn))
            self._fixed = pool
        return pool

    @property
    def p2m(self) -> np.ndarray:
        """The P2M (pfn -> machine frame) as an array, the pool's remap applied (a copy)."""
        if self._p2m_base is None:
            within = np.arange(self._chunk, dtype=np.uint64)
            out = (self._p2m_chunks[:, None] + within[None, :]).ravel()[:self._nr_pages]
        else:
            out = self._p2m_base.copy()
        for first, last, mfn in self._p2m_fix:
            out[first:last + 1] = np.arange(mfn, mfn + last - first + 1, dtype=np.uint64)
        return out

    def _mfn(self, pfn: np.ndarray) -> np.ndarray:
        """``pfn_to_bfn`` per entry: the P2M at ``pfn`` (uint64 array)."""
        shape = np.shape(pfn)
        pfn = np.asarray(pfn).reshape(-1)  # mfn below is then a new 1-D array, written in place
        if self._p2m_base is not None:
            mfn = self._p2m_base[pfn]
        elif self._chunk & (self._chunk - 1) == 0:
            sh = _U64(self._chunk.bit_length() - 1)
            mfn = self._p2m_chunks[pfn >> sh] + (pfn & _U64(self._chunk - 1))
        else:
            mfn = self._p2m_chunks[pfn // _U64(self._chunk)] + pfn % _U64(self._chunk)
        for first, last, m0 in self._p2m_fix:
            rel = pfn - _U64(first)  # wraps below first: one unsigned compare
            inside = np.flatnonzero(rel <= _U64(last - first))
            if len(inside):
                mfn[inside] = _U64(m0) + rel[inside]
        return mfn.reshape(shape)

    def resources(self) -> dict[str, int]:
        """swiotlb slots held in the pool this backend bounced through."""
        return {"bounce_slots": int(self._fixed.used) if self._fixed is not None else 0}

    # xen_phys_to_dma / range_straddles_page_boundary, vectorized over entries
    def _check_pfns(self, addr: np.ndarray, length: np.ndarray) -> None:
        last = addr + length - _U64(1)
        if not len(last) or int(last.max()) >> XEN_PAGE_SHIFT < self._nr_pages:
            return  # (one reduction; the index only when an entry is beyond)
        bad = np.flatnonzero((last >> _U64(XEN_PAGE_SHIFT)) >= _U64(self._nr_pages))
        if len(bad):
            i = int(bad[0])
            raise ValueError(f"{self.name}: entry {i} at {int(addr[i]):#x} is beyond the "
                             f"guest's {self._nr_pages} pages (no P2M entry)")

    def phys_to_dma(self, addr: np.ndarray) -> np.ndarray:
        """``xen_phys_to_dma``: machine frame of the page plus the offset."""
        addr = np.asarray(addr, dtype=np.uint64)
        pfn = addr >> _U64(XEN_PAGE_SHIFT)
        return (self._mfn(pfn) << _U64(XEN_PAGE_SHIFT)) | (addr & _U64(XEN_PAGE_SIZE - 1))

    def straddles(self, addr: np.ndarray, length: np.ndarray) -> np.ndarray:
        """``range_straddles_page_boundary`` per entry: machine frames not consecutive."""
        pfn0 = addr >> _U64(XEN_PAGE_SHIFT)
        npg = ((addr & _U64(XEN_PAGE_SIZE - 1)) + length + _U64(XEN_PAGE_SIZE - 1)) >> _U64(
            XEN_PAGE_SHIFT)
        out = np.zeros(len(addr), dtype=bool)
        multi = np.flatnonzero(npg > _U64(1))  # a range in one page never straddles
        if not len(multi):
            return out
        npg = npg[multi].astype(np.int64)
        total = int(npg.sum())
        owner = np.repeat(np.arange(len(multi)), npg)
        k = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(npg) - npg, npg)
        pfns = pfn0[multi][owner] + k.astype(np.uint64)
        expect = self._mfn(pfn0[multi])[owner] + k.astype(np.uint64)
        bad = self._mfn(pfns) != expect
        out[multi] = np.bincount(owner, weights=bad, minlength=len(multi)) > 0
        return out

    def _pool_dma(self, pool: Any) -> tuple[int, int]:
        base = self.pool_mfn << XEN_PAGE_SHIFT
        return base, base + (pool.end - pool.start)

    def _bounce_map(self, dev: Any, paddr: int, size: int, direction: str) -> int:
        """``swiotlb_tbl_map_single`` then the capability re-check of map_page."""
        pool = self._pool(dev)  # its stats count bounce_slots / bounce_bytes
        tlb = pool.tbl_map_single(dev, paddr, size, size, 0, direction)
        dma = int(self.phys_to_dma(np.array([tlb], np.uint64))[0])
        if dma + size - 1 > dma_limit(dev):
            pool.release_slots(dev, tlb)
            raise DmaMappingError(
                "ENOMEM", f"{self.name}: bounce buffer at {dma:#x} is beyond the device's "
                f"DMA limit {dma_limit(dev):#x}")
        return dma

    def _bounce_unmap(self, dev: Any, dma: int, size: int, direction: str,
                      skip_sync: bool = False) -> None:
        pool = self._pool(dev)
        lo, _ = self._pool_dma(pool)
        pool.tbl_unmap_single(dev, pool.start + (dma - lo), size, direction, skip_sync)

    def _in_pool(self, dev: Any, dma: np.ndarray) -> np.ndarray:
        if self._fixed is None:
            return np.zeros(len(dma), dtype=bool)
        lo, hi = self._pool_dma(self._pool(dev))
        dma = np.asarray(dma, dtype=np.uint64)
        return (dma >= _U64(lo)) & (dma < _U64(hi))

    def map_phys(self, dev: Any, paddr: int, size: int, direction: str) -> int:
        """``xen_swiotlb_map_page``."""
        check_direction(direction)
        self._pool(dev)
        a = np.array([paddr], np.uint64)
        n = np.array([size], np.uint64)
        self._check_pfns(a, n)
        self.count("entries_walked")
        dma = int(self.phys_to_dma(a)[0])
        if (dma + size - 1 <= dma_limit(dev) and not bool(self.straddles(a, n)[0])
                and not is_swiotlb_force_bounce(dev)):
            return dma
        return self._bounce_map(dev, paddr, size, direction)

    def unmap_phys(self, dev: Any, dma_addr: int, size: int, direction: str) -> None:
        """``xen_swiotlb_unmap_page``: slots back only for a pool address."""
        check_direction(direction)
        if self._in_pool(dev, np.array([dma_addr], np.uint64))[0]:
            self._bounce_unmap(dev, dma_addr, size, direction)

    def map_sg(self, dev: Any, addr: np.ndarray, length: np.ndarray,
               direction: str) -> tuple[np.ndarray, np.ndarray, Any]:
        """``xen_swiotlb_map_sg``: per entry; direct decision vectorized, bounces in order."""
        check_direction(direction)
        pool = self._pool(dev)
        addr = np.asarray(addr, dtype=np.uint64)
        length = np.asarray(length, dtype=np.uint64)
        self._check_pfns(addr, length)
        self.count("entries_walked", len(addr))
        if self.batch and self._pool_capable(dev, pool):
            return self._map_sg_many(dev, pool, addr, length, direction)
        out = self.phys_to_dma(addr)  # a new array: bounced entries are written over
        ok = (out + length - _U64(1)) <= _U64(dma_limit(dev))
        ok &= ~self.straddles(addr, length)
        if is_swiotlb_force_bounce(dev):
            ok[:] = False
        done: list[int] = []
        for i in np.flatnonzero(~ok).tolist():
            try:
                out[i] = self._bounce_map(dev, int(addr[i]), int(length[i]), direction)
            except DmaMappingError as exc:
                for j in done:  # xen_swiotlb_unmap_sg(..., DMA_ATTR_SKIP_CPU_SYNC)
                    self._bounce_unmap(dev, int(out[j]), int(length[j]), direction, True)
                raise DmaMappingError(
                    "EIO", f"{self.name}: map_sg failed at entry {i}: {exc}") from None
            done.append(i)
        return out, length.copy(), SgCookie(bounced=~ok)

    def _pool_capable(self, dev: Any, pool: Any) -> bool:
        """Every bounce ``pool`` can hold passes both capability checks: ``swiotlb_map``'s
        (``dma_capable(phys_to_dma(tlb))``, identity ``phys_to_dma``) and map_page's re-check
        of the remapped address, so :func:`swiotlb_map_many` fails where the per-entry
        ``_bounce_map`` fails, with the same error (the slot search's)."""
        limit = dma_limit(dev)
        return (dev.dma_range_map is None and pool.end - 1 <= limit
                and self._pool_dma(pool)[1] - 1 <= limit)

    def _map_sg_many(self, dev: Any, pool: Any, addr: np.ndarray, length: np.ndarray,
                     direction: str) -> tuple[np.ndarray, np.ndarray, Any]:
        """``map_sg`` in windows of entries that grow from 16K: the direct decision of a
        window, then its bounces through :func:`swiotlb_map_many` (runs at once). A failed
        bounce gives back every bounce before it through :meth:`IoTlbMem.unmap_many`, in
        order, and the entries after it are never translated (the per-entry walk stops
        there too)."""
        n = len(addr)
        out = np.empty(n, dtype=np.uint64)
        ok = np.empty(n, dtype=bool)
        limit = _U64(dma_limit(dev))
        force = is_swiotlb_force_bounce(dev)
        start, lo = _U64(pool.start), _U64(self._pool_dma(pool)[0])
        tlbs: list[np.ndarray] = []  # the bounces mapped, in order, and their sizes
        sizes: list[np.ndarray] = []
        i, w = 0, 1 << 14
        while i < n:
            j = min(n, i + w)
            a, ln = addr[i:j], length[i:j]
            dma = self.phys_to_dma(a)
            if force:
                good = np.zeros(j - i, dtype=bool)
            else:
                good = (dma + ln - _U64(1)) <= limit
                good &= ~self.straddles(a, ln)
            ok[i:j] = good
            bounce = np.flatnonzero(~good)
            if len(bounce):
                b_len = ln[bounce]
                tlb, err = swiotlb_map_many(dev, a[bounce], b_len, direction)
                k = len(tlb)
                tlbs.append(tlb)
                sizes.append(b_len[:k])
                if err is not None:
                    # xen_swiotlb_unmap_sg(..., DMA_ATTR_SKIP_CPU_SYNC) of those mapped
                    pool.unmap_many(dev, np.concatenate(tlbs), np.concatenate(sizes),
                                    direction, skip_cpu_sync=True)
                    raise DmaMappingError(
                        "EIO", f"{self.name}: map_sg failed at entry {i + int(bounce[k])}: "
                               f"{err}") from None
                # identity phys_to_dma: tlb is the pool address; the pool is remapped whole
                dma[bounce] = tlb - start + lo
            out[i:j] = dma
            i, w = j, min(4 * w, 1 << 18)
        return out, length.copy(), SgCookie(bounced=~ok)

    def unmap_sg(self, dev: Any, dma_addr: np.ndarray, dma_len: np.ndarray, direction: str,
                 cookie: Any) -> None:
        """``xen_swiotlb_unmap_sg``: per entry."""
        check_direction(direction)
        inside = self._in_pool(dev, dma_addr)
        if self.batch:
            if not inside.any():
                return
            pool = self._pool(dev)
            lo, _ = self._pool_dma(pool)
            tlb = np.asarray(dma_addr, dtype=np.uint64)[inside] - _U64(lo) + _U64(pool.start)
            pool.unmap_many(dev, tlb, np.asarray(dma_len, dtype=np.uint64)[inside], direction)
            return
        for a, n in zip(np.asarray(dma_addr)[inside].tolist(),
                        np.asarray(dma_len)[inside].tolist(), strict=True):
            self._bounce_unmap(dev, a, n, direction)

    def bounced_mask(self, dev: Any, dma_addr: np.ndarray, dma_len: np.ndarray) -> np.ndarray:
        """``is_xen_swiotlb_buffer`` per entry."""
        return self._in_pool(dev, dma_addr)

    def max_mapping_size(self, dev: Any) -> int:
        """``swiotlb_max_mapping_size``."""
        return swiotlb_max_mapping_size(dev)

    def dma_supported(self, dev: Any, mask: int) -> bool:
        """``xen_swiotlb_dma_supported``: the pool's top must be reachable."""
        pool = self._pool(dev)
        return self._pool_dma(pool)[1] - 1 <= mask


class XenGrantOps(DmaMapOps):
    """``xen_grant_dma_ops``: consecutive grant references per range, address bit 63 set.

    ``batch`` (default True): ``map_sg``/``unmap_sg`` place the ranges that
    ``gnttab_alloc_grant_reference_seq`` puts back to back at ``low_free`` with array
    operations and take the per-call path for any other; False maps range by range (the
    reference). Grants, counters, errors and fault-injection calls are the same.
    """

    batch: bool = True

    def __init__(self, entry: OpsEntry | None = None, **params: Any):
        unknown = sorted(set(params) - {"nr_grants"})
        if unknown:
            raise ValueError(f"xen_grant_dma_ops: unknown parameter {unknown[0]!r}")
        super().__init__(entry, **params)
        # 64 grant frames of 512 v1 entries (gnttab_max_grant_frames default 64).
        n = int(self.params.get("nr_grants", 64 * 512))
        self.free = np.ones(n, dtype=bool)
        self.free[:GNTTAB_NR_RESERVED_ENTRIES] = False
        self.frames = np.zeros(n, dtype=np.uint64)
        self.low_free = GNTTAB_NR_RESERVED_ENTRIES  # no free reference below this

    def resources(self) -> dict[str, int]:
        """Grant references held."""
        return {"grants": int(np.count_nonzero(~self.free)) - GNTTAB_NR_RESERVED_ENTRIES}

    def _alloc_seq(self, count: int) -> int:
        """``gnttab_alloc_grant_reference_seq``: first run of ``count`` free references."""
        if should_fail("grant_alloc"):
            return -1
        lf = self.low_free
        if self.free[lf:lf + count].all() and lf + count <= len(self.free):
            g = lf
        else:
            tail = self.free[lf:]
            cs = np.concatenate(([0], np.cumsum(tail.astype(np.int32))))
            cand = np.flatnonzero((cs[count:] - cs[:-count]) == count)
            if not len(cand):
                return -1
            g = lf + int(cand[0])
        self.free[g:g + count] = False
        if g == lf:
            self.low_free = g + count
        return g

    def map_phys(self, dev: Any, paddr: int, size: int, direction: str) -> int:
        """``xen_grant_dma_map_page``."""
        check_direction(direction)
        self.count("entries_walked")
        off = paddr & (XEN_PAGE_SIZE - 1)
        n_pages = -(-(off + size) // XEN_PAGE_SIZE)
        g = self._alloc_seq(n_pages)
        if g < 0:
            raise DmaMappingError(
                "ENOMEM", f"{self.name}: no {n_pages} consecutive grant references free "
                f"(DMA_MAPPING_ERROR); {int((~self.free).sum())} of {len(self.free)} in use")
        pfn = paddr >> XEN_PAGE_SHIFT
        self.frames[g:g + n_pages] = np.arange(pfn, pfn + n_pages, dtype=np.uint64)
        self.count("grants", n_pages)
        return XEN_GRANT_DMA_ADDR_OFF | (g << XEN_PAGE_SHIFT) | off

    def unmap_phys(self, dev: Any, dma_addr: int, size: int, direction: str) -> None:
        """``xen_grant_dma_unmap_page``: end foreign access, free the references."""
        check_direction(direction)
        off = dma_addr & (XEN_PAGE_SIZE - 1)
        n_pages = -(-(off + size) // XEN_PAGE_SIZE)
        g = (dma_addr & ~XEN_GRANT_DMA_ADDR_OFF) >> XEN_PAGE_SHIFT
        if not dma_addr & XEN_GRANT_DMA_ADDR_OFF or g + n_pages > len(self.free) or \
                self.free[g:g + n_pages].any():
            raise ValueError(f"{self.name}: unmap of {dma_addr:#x}: not a granted address")
        self.free[g:g + n_pages] = True
        self.frames[g:g + n_pages] = 0
        self.low_free = min(self.low_free, g)

    def map_sg(self, dev: Any, addr: np.ndarray, length: np.ndarray,
               direction: str) -> tuple[np.ndarray, np.ndarray, Any]:
        """``xen_grant_dma_map_sg``: per entry, -EIO after unwinding."""
        try:
            if self.batch and len(addr):
                return self._map_sg_batch(dev, addr, length, direction)
            return super().map_sg(dev, addr, length, direction)
        except DmaMappingError as exc:
            raise DmaMappingError("EIO", f"{self.name}: map_sg: {exc}") from None

    def _map_sg_batch(self, dev: Any, addr: np.ndarray, length: np.ndarray,
                      direction: str) -> tuple[np.ndarray, np.ndarray, Any]:
        """``map_phys`` of every entry in order (unwinding on failure), at once where the
        grants go back to back from ``low_free``."""
        check_direction(direction)
        addr = np.asarray(addr, dtype=np.uint64)
        length = np.asarray(length, dtype=np.uint64)
        n = len(addr)
        off = addr & _U64(XEN_PAGE_SIZE - 1)
        npg = ((off + length + _U64(XEN_PAGE_SIZE - 1)) >> _U64(XEN_PAGE_SHIFT)).astype(np.int64)
        out = np.empty(n, dtype=np.uint64)
        total = len(self.free)
        i, w = 0, 64
        while i < n:
            c = self.low_free
            pages = npg[i:i + w]
            ends = c + np.cumsum(pages)
            hi = min(total, int(ends[-1]))
            used = np.flatnonzero(~self.free[c:hi]) if hi > c else np.zeros(0, np.int64)
            room = c + int(used[0]) if len(used) else hi
            bad = np.flatnonzero(ends > room)
            m = int(bad[0]) if len(bad) else len(pages)
            j = first_failure("grant_alloc", m)  # asked once per call, before the search
            if j:
                e = int(ends[j - 1])
                starts = ends[:j] - pages[:j]
                self.free[c:e] = False
                self.low_free = e
                rel = np.arange(e - c, dtype=np.int64) - np.repeat(starts - c, pages[:j])
                self.frames[c:e] = np.repeat(addr[i:i + j] >> _U64(XEN_PAGE_SHIFT),
                                             pages[:j]) + rel.astype(np.uint64)
                self.count("entries_walked", j)
                self.count("grants", e - c)
                out[i:i + j] = _U64(XEN_GRANT_DMA_ADDR_OFF) | (
                    starts.astype(np.uint64) << _U64(XEN_PAGE_SHIFT)) | off[i:i + j]
            if j < m:  # the fault: this call's DMA_MAPPING_ERROR
                self.count("entries_walked")
                msg = (f"{self.name}: no {int(npg[i + j])} consecutive grant references "
                       f"free (DMA_MAPPING_ERROR); {int((~self.free).sum())} of {total} in use")
                self._unmap_many(dev, out[:i + j], length[:i + j], direction)
                raise DmaMappingError("ENOMEM", msg)
            i += m
            if m == len(pages):
                w = min(4 * w, 1 << 16)
                continue
            w = 64
            try:  # not back to back at low_free: the per-call search
                out[i] = self.map_phys(dev, int(addr[i]), int(length[i]), direction)
            except DmaMappingError:
                self._unmap_many(dev, out[:i], length[:i], direction)
                raise
            i += 1
        return out, length.copy(), SgCookie()

    def _unmap_many(self, dev: Any, dma_addr: np.ndarray, size: np.ndarray,
                    direction: str) -> None:
        """``unmap_phys`` of each entry in order; at once when every entry is a granted
        address and no two share a reference (else the per-call loop, which raises where
        the kernel model does)."""
        dma_addr = np.asarray(dma_addr, dtype=np.uint64)
        size = np.asarray(size, dtype=np.uint64)
        if not len(dma_addr):
            return
        check_direction(direction)
        off = dma_addr & _U64(XEN_PAGE_SIZE - 1)
        npg = ((off + size + _U64(XEN_PAGE_SIZE - 1)) >> _U64(XEN_PAGE_SHIFT)).astype(np.int64)
        g = ((dma_addr & ~_U64(XEN_GRANT_DMA_ADDR_OFF)) >> _U64(XEN_PAGE_SHIFT)).astype(np.int64)
        total = len(self.free)
        valid = bool(np.all(dma_addr & _U64(XEN_GRANT_DMA_ADDR_OFF))) and bool(
            np.all(g + npg <= total))
        if valid:
            order = np.argsort(g, kind="stable")
            gs, es = g[order], (g + npg)[order]
            valid = bool(np.all(gs[1:] >= es[:-1]))
        if valid:
            rel = np.arange(int(npg.sum()), dtype=np.int64) - np.repeat(np.cumsum(npg) - npg,
                                                                        npg)
            refs = np.repeat(g, npg) + rel
            valid = not self.free[refs].any()
        if not valid:
            for a, n in zip(dma_addr.tolist(), size.tolist(), strict=True):
                self.unmap_phys(dev, a, n, direction)
            return
        self.free[refs] = True
        self.frames[refs] = 0
        self.low_free = min(self.low_free, int(g.min()))

    def unmap_sg(self, dev: Any, dma_addr: np.ndarray, dma_len: np.ndarray, direction: str,
                 cookie: Any) -> None:
        """``xen_grant_dma_unmap_sg``: ``unmap_phys`` per entry."""
        if self.batch:
            self._unmap_many(dev, dma_addr, dma_len, direction)
        else:
            super().unmap_sg(dev, dma_addr, dma_len, direction, cookie)

    def dma_supported(self, dev: Any, mask: int) -> bool:
        """``xen_grant_dma_supported``: only a 64-bit mask."""
        return mask == DMA_BIT_MASK(64)


def _factory(entry: OpsEntry, **params: Any) -> DmaMapOps:
    if entry.name == "xen_grant_dma_ops":
        return XenGrantOps(entry, **params)
    return XenSwiotlbOps(entry, **params)


register_family("xen", _factory)
