"""dma-iommu: the DMA API on top of an IOMMU domain (drivers/iommu/dma-iommu.c, v6.2).

Mirrors:
- ``iommu_dma_init_domain()``: IOVA granule = the smallest page size, ``start_pfn =
  max(1, base >> order)`` (IOVA 0 is never handed out), limits clipped to
  ``geometry.aperture_end`` (``force_aperture``).
- ``iommu_dma_alloc_iova()``: sizes below ``1 << (IOVA_RANGE_CACHE_MAX_SIZE - 1)`` granules are
  rounded up to a power of two; PCI devices whose mask exceeds 32 bits first try below 4 GiB
  without flushing the range caches, then the full limit with ``flush_rcache``.
- ``iommu_dma_free_iova()``: queued (lazy, flush queue) or ``free_iova_fast()``.
- ``__iommu_dma_map()`` (``map_page``/``map_phys``): keep ``paddr``'s offset in the granule,
  map the aligned span, free the IOVA if ``iommu_map()`` fails.
- ``__iommu_dma_unmap()``: ``iommu_unmap_fast()`` with a gather, ``iommu_iotlb_sync()`` unless
  the gather is queued, then free (or queue) the IOVA.
- ``iommu_dma_map_sg()``: each segment is cut back to its granule (the offset is kept for the
  DMA address) and rounded up; when a segment would cross the device's segment boundary the
  previous segment is padded up to the boundary (``pad_len``); one IOVA allocation holds the
  lot; ``iommu_map_sg()`` maps runs of physically contiguous (padded) segments with one
  ``__iommu_map`` each; ``__finalise_sg()`` merges a segment into the previous DMA segment when
  it starts on a granule, the previous one ended on its granule, the join is not on a segment
  boundary and the sum stays within ``max_seg_size``.
- ``iommu_dma_unmap_sg()``: one unmap from the first DMA address to the end of the last.

Verified by reading the stored drivers/iommu/dma-iommu.c (a v5.3-era file: the same map_sg
padding loop and ``__finalise_sg``; the v6.2 ``gather.queued`` path and ``queue_iova`` were
read from patches in the index). Padding is mapped: as in the kernel, the pad after a segment
maps the physical pages that follow it (``prev->length += pad_len``).
Vectorised: the padding loop is checked at the segment boundaries below the total length
(sequential scan only when a pad is needed); ``__finalise_sg`` cuts groups of equal-length
segments at once; both are tested against per-entry transcriptions of the kernel loops.
Simplifications: no P2P bus-address segments, no swiotlb bounce for untrusted devices, no
``bus_dma_limit``, no reserved regions (MSI window, PCI host-bridge windows); segments longer
than ``max_seg_size`` or than the boundary are refused (the kernel assumes the block layer
split them; dma-debug warns).
"""

from __future__ import annotations

import hashlib

import numpy as np

from phyrlab.errors import DmaMappingError, RangeError
from phyrlab.iommu.iotlb import FlushQueue, IommuIotlbGather, ModelClock, StrictInvalidation
from phyrlab.iommu.iova import IOVA_RANGE_CACHE_MAX_SIZE, IovaDomain, roundup_pow_of_two
from phyrlab.iommu.pagetable import PageTable
from phyrlab.units import DMA_BIT_MASK, U64_MAX

_U64 = np.uint64


class IommuDmaDomain:
    """``struct iommu_domain`` + ``struct iommu_dma_cookie``: page table, IOVA, IOTLB policy.

    ``clock`` is the model clock the flush queue's timer runs on (advance it to model time).
    """

    def __init__(self, fmt: str = "x86_64", *, strict: bool = True, fq_size: int = 256,
                 fq_timeout_ns: int = 10_000_000, aperture_end: int | None = None,
                 base: int = 0, clock: ModelClock | None = None):
        self.pt = PageTable(fmt)
        self.fmt = self.pt.fmt
        self.granule = self.fmt.granule
        self.shift = self.fmt.granule_shift
        top = (1 << self.fmt.ias) - 1
        if aperture_end is None:
            aperture_end = top
        if not 0 < aperture_end <= top:
            raise ValueError(f"aperture_end {aperture_end:#x} must be in (0, {top:#x}] for "
                             f"{self.fmt.name}")
        self.aperture_end = int(aperture_end)
        self.iovad = IovaDomain(self.granule, max(1, int(base) >> self.shift))
        self.clock = clock if clock is not None else ModelClock()
        self.strict = bool(strict)
        if self.strict:
            self.iotlb: StrictInvalidation | FlushQueue = StrictInvalidation()
        else:
            self.iotlb = FlushQueue(self.pt.flush_iotlb_all, self._fq_free, fq_size,
                                    fq_timeout_ns)

    def _fq_free(self, pfn: int, pages: int) -> None:
        self.iovad.free_iova_fast(pfn, pages)

    def advance(self, ns: int) -> None:
        """Move model time on by ``ns`` and run the flush-queue timer if it expired."""
        self.clock.advance(ns)
        self.iotlb.advance(self.clock.now_ns)

    def snapshot(self) -> dict:
        """Comparable state: IOVA ranges in use (range-cache and flush-queue entries left out),
        mapped bytes, table pages and a digest of every leaf."""
        pending = {pfn for pfn, _ in self.iotlb.pending()}
        live = tuple(r for r in self.iovad.live_ranges() if r[0] not in pending)
        i, p, s = self.pt.leaves()
        h = hashlib.sha1()
        for a in (i, p, s):
            h.update(a.tobytes())
        st = self.pt.stats
        return {"iova_live": live, "mapped_bytes": st.mapped_bytes,
                "table_pages": st.table_pages, "table_bytes": st.table_bytes,
                "leaves": int(i.size), "leaves_digest": h.hexdigest()}

    def __repr__(self) -> str:
        mode = "strict" if self.strict else "lazy"
        return f"IommuDmaDomain({self.fmt.name!r}, {mode}, {self.pt!r})"


def _iova_pages(domain: IommuDmaDomain, size: int) -> int:
    n = size >> domain.shift
    if n < 1 << (IOVA_RANGE_CACHE_MAX_SIZE - 1):
        n = roundup_pow_of_two(n)
    return n


def iommu_dma_alloc_iova(domain: IommuDmaDomain, size: int, dma_limit: int,
                         dev_is_pci: bool = True) -> int:
    """``iommu_dma_alloc_iova()``: IOVA bytes for ``size`` (granule-aligned) below ``dma_limit``.

    Raises ``DmaMappingError("ENOMEM")`` when the space below the limit is exhausted.
    """
    size, dma_limit = int(size), int(dma_limit)
    if size <= 0 or size & (domain.granule - 1):
        raise ValueError(f"iommu_dma_alloc_iova: size {size:#x} must be a positive multiple "
                         f"of the {domain.granule:#x} granule")
    if dma_limit <= 0 or dma_limit > U64_MAX:
        raise ValueError(f"iommu_dma_alloc_iova: dma_limit {dma_limit:#x} out of range")
    domain.iotlb.advance(domain.clock.now_ns)
    shift = domain.shift
    iova_len = _iova_pages(domain, size)
    dma_limit = min(dma_limit, domain.aperture_end)
    iovad = domain.iovad
    pfn = 0
    if dma_limit > DMA_BIT_MASK(32) and dev_is_pci:
        pfn = iovad.alloc_iova_fast(iova_len, DMA_BIT_MASK(32) >> shift, False)
    if not pfn:
        pfn = iovad.alloc_iova_fast(iova_len, dma_limit >> shift, True)
    if not pfn:
        raise DmaMappingError("ENOMEM", f"no IOVA space for {size:#x} bytes below "
                              f"{dma_limit:#x} ({domain.fmt.name})")
    return pfn << shift


def iommu_dma_free_iova(domain: IommuDmaDomain, iova: int, size: int,
                        gather: IommuIotlbGather | None = None) -> None:
    """``iommu_dma_free_iova()``: queue the IOVA behind a flush (lazy) or free it now."""
    iova, size = int(iova), int(size)
    pfn, pages = iova >> domain.shift, size >> domain.shift
    if gather is not None and gather.queued:
        domain.iotlb.queue_iova(pfn, pages, domain.clock.now_ns)
    else:
        domain.iovad.free_iova_fast(pfn, pages)


def iommu_dma_map_phys(domain: IommuDmaDomain, paddr: int, size: int, dma_limit: int,
                       prot: int = 3, dev_is_pci: bool = True) -> int:
    """``__iommu_dma_map()``: map ``[paddr, paddr + size)``; the DMA address keeps the offset."""
    paddr, size = int(paddr), int(size)
    if paddr < 0 or size <= 0:
        raise ValueError(f"map_phys: bad range paddr {paddr:#x} size {size:#x}")
    iova_off = paddr & (domain.granule - 1)
    size = (size + iova_off + domain.granule - 1) & ~(domain.granule - 1)
    iova = iommu_dma_alloc_iova(domain, size, dma_limit, dev_is_pci)
    try:
        domain.pt.map(iova, paddr - iova_off, size, prot)
    except Exception:
        iommu_dma_free_iova(domain, iova, size)
        raise
    return iova + iova_off


def _check_unmap(domain: IommuDmaDomain, dma_addr: int, size: int) -> None:
    """The unmap must name a live allocation of this size (the kernel WARNs, then corrupts)."""
    pfn = dma_addr >> domain.shift
    if pfn in domain.iovad.cached_pfns_view() or domain.iotlb.is_pending(pfn):
        raise ValueError(f"unmap: DMA address {dma_addr:#x} is already unmapped")
    found = domain.iovad.find_iova(pfn)
    want = _iova_pages(domain, size)
    if found is None or found[0] != pfn or found[1] - found[0] + 1 != want:
        have = "nothing" if found is None else f"pfns {found[0]:#x}-{found[1]:#x}"
        raise ValueError(f"unmap: DMA address {dma_addr:#x} size {size:#x} does not match an "
                         f"IOVA allocation (found {have}); nothing was unmapped")


def iommu_dma_unmap_phys(domain: IommuDmaDomain, dma_addr: int, size: int) -> None:
    """``__iommu_dma_unmap()``: unmap, invalidate (strict) or queue (lazy), free the IOVA."""
    dma_addr, size = int(dma_addr), int(size)
    if dma_addr < 0 or size <= 0:
        raise ValueError(f"unmap: bad range {dma_addr:#x} size {size:#x}")
    now = domain.clock.now_ns
    domain.iotlb.advance(now)
    iova_off = dma_addr & (domain.granule - 1)
    dma_addr -= iova_off
    size = (size + iova_off + domain.granule - 1) & ~(domain.granule - 1)
    _check_unmap(domain, dma_addr + iova_off, size)
    gather = IommuIotlbGather(queued=not domain.strict)
    domain.pt.unmap(dma_addr, size, gather)
    if not gather.queued:
        domain.pt.iotlb_sync(gather)
        domain.iotlb.unmapped(gather.syncs, size >> domain.shift, now)
    iommu_dma_free_iova(domain, dma_addr, size, gather)


def _sg_padding_scan(slen: np.ndarray, mask: int) -> np.ndarray:
    """``pad_len`` of ``iommu_dma_map_sg``'s layout loop, per segment (added to the previous).

    Sequential in the kernel; here a window of the running length is scanned at a time.
    """
    n = slen.size
    pad = np.zeros(n, dtype=_U64)
    m = _U64(mask)
    start, base, window = 0, 0, 64
    while start < n:
        stop = min(n, start + window)
        s = slen[start:stop]
        cs = _U64(base) + np.concatenate([[_U64(0)], np.cumsum(s[:-1], dtype=_U64)])
        padlen = (m - (cs & m) + _U64(1)) & m
        need = np.nonzero((padlen != 0) & (padlen < s - _U64(1)))[0]
        if need.size == 0:
            base = int(cs[-1] + s[-1])
            start = stop
            window *= 2
            continue
        j = int(need[0])
        pad[start + j] = padlen[j]
        base = int(cs[j] + padlen[j] + s[j])
        start += j + 1
        window = max(64, 2 * (j + 1))
    return pad


def _sg_padding(slen: np.ndarray, mask: int, cs: np.ndarray | None = None
                ) -> np.ndarray | None:
    """``pad_len`` per segment (added to the previous one), or None when no segment needs one.

    The kernel pads when ``pad_len && pad_len < s_length - 1``, ``pad_len`` being the distance
    from the running length ``cs`` to the next multiple of ``mask + 1``: that is, when a
    boundary lies strictly between ``cs`` and ``cs + s_length - 1``. Until the first pad the
    running length is the plain prefix sum ``cs`` (pass it if you have it), so one check over
    the boundaries below the total length settles the common case; lists that need padding
    are scanned window by window (:func:`_sg_padding_scan`).
    """
    n = slen.size
    if mask >= U64_MAX or n == 0:
        return None
    if cs is None:
        cs = np.cumsum(slen, dtype=_U64)
        cs -= slen
    span = mask + 1
    nb = (int(cs[-1]) + int(slen[-1]) - 1) // span          # boundaries below the total
    if nb == 0:
        return None
    if nb < n:
        bound = np.arange(1, nb + 1, dtype=_U64) * _U64(span)
        j = np.searchsorted(cs, bound, side="left") - 1     # segment holding the boundary
        need = bool(np.any(bound < cs[j] + slen[j] - _U64(1)))
    else:
        m = _U64(mask)
        padlen = (m - (cs & m) + _U64(1)) & m
        need = bool(np.any((padlen != 0) & (padlen < slen - _U64(1))))
    return _sg_padding_scan(slen, mask) if need else None


def _finalise_sg(pos: np.ndarray, off: np.ndarray, length: np.ndarray, ilen: np.ndarray,
                 seg_mask: int, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """``__finalise_sg()``: merge mapped segments into DMA segments (vectorised).

    A segment joins the previous DMA segment when ``cur_len`` is not 0 (the previous one
    filled its IOVA span), it starts on a granule (``!s_iova_off``), its DMA address is not
    on a segment boundary and ``max_len - cur_len >= s_length``. Groups of joinable segments
    longer than ``max_len`` are cut greedily: at once when all their lengths are equal, else
    one searchsorted per DMA segment.
    """
    n = length.size
    cand = np.zeros(n, dtype=bool)
    if n > 1:
        c = cand[1:]
        if off.any():
            np.greater_equal(length[:-1] + off[:-1], ilen[:-1], out=c)   # cur_len kept
            c &= off[1:] == 0
        else:
            np.greater_equal(length[:-1], ilen[:-1], out=c)
        c &= (pos[1:] & _U64(seg_mask)) != 0 if seg_mask < U64_MAX else pos[1:] != 0
    starts = np.flatnonzero(~cand)
    gsum = np.add.reduceat(length, starts)
    over = np.flatnonzero(gsum > _U64(max_len))
    if over.size == 0:
        return pos[starts] + off[starts], gsum
    ends = np.append(starts[1:], n)
    keep = np.ones(starts.size, dtype=bool)
    keep[over] = False
    out_s, out_l = [starts[keep]], [gsum[keep]]
    lmin = np.minimum.reduceat(length, starts)[over]
    lmax = np.maximum.reduceat(length, starts)[over]
    uni = over[lmin == lmax]
    if uni.size:                     # equal lengths: every q-th segment starts a DMA segment
        seg_len = length[starts[uni]].astype(np.int64)
        q = max_len // seg_len
        cnt = ends[uni] - starts[uni]
        nout = -(-cnt // q)
        first = np.cumsum(nout) - nout
        k = np.arange(int(nout.sum())) - np.repeat(first, nout)
        g = np.repeat(np.arange(uni.size), nout)
        out_s.append(starts[uni][g] + q[g] * k)
        out_l.append((np.minimum(q[g], cnt[g] - q[g] * k) * seg_len[g]).astype(_U64))
    mixed = over[lmin != lmax]
    if mixed.size:                   # greedy cut: each DMA segment takes what fits in max_len
        rest_s, rest_l = _greedy_cut(length, starts[mixed], ends[mixed], max_len)
        out_s.append(rest_s)
        out_l.append(rest_l)
    idx = np.concatenate(out_s)
    dlen = np.concatenate(out_l)
    order = np.argsort(idx, kind="stable")
    idx, dlen = idx[order], dlen[order]
    return pos[idx] + off[idx], dlen


def _greedy_cut(length: np.ndarray, g_start: np.ndarray, g_end: np.ndarray, max_len: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """First entry and length of each DMA segment when groups ``[g_start, g_end)`` of joinable
    segments are cut greedily at ``max_len``: where a segment starting at each entry would
    end is one searchsorted for all groups, then each group's chain of starts is followed.
    Simplified: an entry longer than ``max_len`` stands alone (``max_seg_size`` keeps entries
    within it; the kernel's unsigned ``max_len - cur_len`` would wrap there)."""
    cum = np.cumsum(length, dtype=_U64)
    before = cum - length
    sizes = g_end - g_start
    # few DMA segments per entry (a long max_len): one searchsorted per DMA segment is cheaper
    est = int(((cum[g_end - 1] - before[g_start]) // _U64(max_len)).sum()) + g_start.size
    if est * 64 < int(sizes.sum()):
        return _greedy_cut_per_segment(cum, before, g_start, g_end, max_len)
    first = np.cumsum(sizes) - sizes            # each group's offset in the packed arrays
    idx = np.repeat(g_start - first, sizes) + np.arange(int(sizes.sum()))
    nxt = np.searchsorted(cum, before[idx] + _U64(max_len), side="right")
    # at least one entry per segment; never past the group's end
    nxt = np.minimum(np.maximum(nxt, idx + 1), np.repeat(g_end, sizes)).tolist()
    chain: list[int] = []
    ends: list[int] = []
    for a, b, o in zip(g_start.tolist(), g_end.tolist(), first.tolist(), strict=True):
        k, shift = a, o - a
        while k < b:
            chain.append(k)
            k = nxt[k + shift]
            ends.append(k)
    s = np.array(chain, dtype=np.int64)
    return s, cum[np.array(ends, dtype=np.int64) - 1] - before[s]


def _greedy_cut_per_segment(cum: np.ndarray, before: np.ndarray, g_start: np.ndarray,
                            g_end: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_greedy_cut` one DMA segment at a time (a searchsorted each)."""
    starts: list[int] = []
    ends: list[int] = []
    for a, b in zip(g_start.tolist(), g_end.tolist(), strict=True):
        k = a
        while k < b:
            j = int(np.searchsorted(cum, before[k] + _U64(max_len), side="right"))
            starts.append(k)
            k = min(max(j, k + 1), b)
            ends.append(k)
    s = np.array(starts, dtype=np.int64)
    return s, cum[np.array(ends, dtype=np.int64) - 1] - before[s]


def iommu_dma_map_sg(domain: IommuDmaDomain, addr: np.ndarray, length: np.ndarray, *,
                     max_seg_size: int, seg_boundary_mask: int, dma_limit: int,
                     dev_is_pci: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``iommu_dma_map_sg()`` + ``__finalise_sg()``: one IOVA range for the whole list.

    Returns the DMA-side list ``(dma_addr, dma_len)``; the input arrays are not written.
    On failure nothing stays mapped or allocated.
    """
    addr = np.asarray(addr, dtype=_U64).ravel()
    length = np.asarray(length, dtype=_U64).ravel()
    if addr.size != length.size:
        raise RangeError(f"map_sg: {addr.size} addresses but {length.size} lengths")
    if addr.size == 0:
        raise RangeError("map_sg: empty range list")
    if int(length.min()) == 0:
        raise RangeError(f"map_sg: entry {int(np.flatnonzero(length == 0)[0])} has length 0")
    max_seg_size, mask = int(max_seg_size), int(seg_boundary_mask)
    if max_seg_size <= 0:
        raise ValueError(f"map_sg: max_seg_size {max_seg_size} must be positive")
    if mask < 0 or mask > U64_MAX or (mask & (mask + 1)):
        raise ValueError(f"map_sg: seg_boundary_mask {mask:#x} must be 2^n - 1")
    g = domain.granule
    if mask < g - 1:
        raise ValueError(f"map_sg: seg_boundary_mask {mask:#x} is below the {g:#x} granule")
    if int(length.max()) > max_seg_size:
        i = int(np.flatnonzero(length > _U64(max_seg_size))[0])
        raise RangeError(f"map_sg: entry {i} is {int(length[i]):#x} bytes, more than "
                         f"max_seg_size {max_seg_size:#x}; split the list first")
    if int(addr.max()) + int(length.max()) > U64_MAX and np.any(addr + length < addr):
        i = int(np.flatnonzero(addr + length < addr)[0])
        raise RangeError(f"map_sg: entry {i} at {int(addr[i]):#x} wraps past 2^64")
    gm = _U64(g - 1)
    off = addr & gm
    slen = length + off                                   # IOVA span: granules touched
    slen += gm
    slen &= ~gm
    if mask < U64_MAX and int(slen.max()) > mask + 1:
        i = int(np.flatnonzero(slen > _U64(mask + 1))[0])
        raise RangeError(f"map_sg: entry {i} spans {int(slen[i]):#x} bytes of IOVA, more "
                         f"than the {mask + 1:#x} segment boundary; split the list first")
    rel = np.cumsum(slen, dtype=_U64)                     # running IOVA length before each
    rel -= slen
    pad = _sg_padding(slen, mask, rel)
    if pad is None:
        ilen = slen
    else:
        ilen = slen.copy()
        ilen[:-1] += pad[1:]                              # prev->length += pad_len
        rel = np.cumsum(ilen, dtype=_U64)
        rel -= ilen
    iova_len = int(rel[-1]) + int(ilen[-1])
    iova = iommu_dma_alloc_iova(domain, (iova_len + g - 1) & ~(g - 1), dma_limit, dev_is_pci)
    pos = rel
    pos += _U64(iova)
    aligned = not off.any()
    phys = addr if aligned else addr - off
    # iommu_map_sg(): one __iommu_map per run of physically contiguous (padded) segments
    joined = phys[:-1] + ilen[:-1]
    cont = phys[1:] == joined
    del joined
    if not cont.any():
        run_iova, run_phys, rlen = pos, phys, ilen
    else:
        rs = np.flatnonzero(np.concatenate([[True], ~cont]))
        run_iova, run_phys = pos[rs], phys[rs]
        rlen = np.diff(run_iova, append=_U64(iova + iova_len))
    del cont
    try:
        domain.pt.map_runs(run_iova, run_phys, rlen)
    except Exception:
        iommu_dma_free_iova(domain, iova, iova_len)
        raise
    return _finalise_sg(pos, off, length, ilen, mask, max_seg_size)


def iommu_dma_unmap_sg(domain: IommuDmaDomain, dma_addr: np.ndarray,
                       dma_len: np.ndarray) -> None:
    """``iommu_dma_unmap_sg()``: unmap from the first DMA address to the end of the last."""
    dma_addr = np.asarray(dma_addr, dtype=_U64).ravel()
    dma_len = np.asarray(dma_len, dtype=_U64).ravel()
    if dma_addr.size == 0 or dma_addr.size != dma_len.size:
        raise RangeError(f"unmap_sg: bad DMA list ({dma_addr.size} addresses, "
                         f"{dma_len.size} lengths)")
    start = int(dma_addr[0])
    end = int(dma_addr[-1]) + int(dma_len[-1])
    iommu_dma_unmap_phys(domain, start, end - start)


# The kernel's names (double underscores make awkward imports; the names above are the main ones)
__iommu_dma_map = iommu_dma_map_phys
__iommu_dma_unmap = iommu_dma_unmap_phys
