"""The two-step IOVA API: allocate IOVA once, link ranges into it, sync once.

Mirrors, as read in the stored drivers/iommu/dma-iommu.c (2026) and the v9 series that
added it (include/linux/dma-mapping.h, merged for v6.17):

- ``struct dma_iova_state {dma_addr_t addr; u64 __size;}``; bit 63 of ``__size`` is
  ``DMA_IOVA_USE_SWIOTLB``; ``dma_iova_size()`` masks it; ``dma_use_iova()`` is
  ``__size != 0``;
- ``dma_iova_try_alloc(dev, state, phys, size)``: zero the state; false unless the device
  uses dma-iommu, ``size`` is non-zero and below bit 63, and IOVA space for
  ``iova_align(size + iova_offset(phys))`` below the mask exists; ``state->addr`` keeps
  ``phys``'s offset in the granule;
- ``dma_iova_link(dev, state, phys, offset, size, dir)``: ``-EIO`` when ``phys`` is not
  granule aligned and ``offset > 0`` (only the first link may start mid-granule); maps
  ``iova_align(size + pad)`` at ``addr + offset - pad`` with ``iommu_map_nosync`` (no IOTLB
  work); for an untrusted device and a range not granule aligned at either end
  (``iommu_dma_iova_link_swiotlb``) the partial granules are bounced through swiotlb and
  ``DMA_IOVA_USE_SWIOTLB`` is set; a failure unlinks what this call linked;
- ``dma_iova_sync``: one ``iommu_sync_map`` for the linked span (counted as one IOTLB flush);
- ``dma_iova_unlink`` / ``dma_iova_destroy``: unmap with a gather, sync it (strict) or queue
  the IOVA behind the flush queue (``destroy`` on a lazy domain), release bounce slots
  granule by granule (``iommu_dma_iova_unlink_range_slow``); ``destroy`` frees the IOVA,
  ``dma_iova_free`` frees it without unlinking.
The docs' rule that every link but the first must start, and every link but the last end, on
``dma_get_merge_boundary()`` is enforced by ``iommu_map``'s alignment check (-EINVAL), as in
the kernel. Simplified: the bounce of a partial granule keeps the buffer's offset inside the
granule (as a ``min_align_mask`` covering the granule would), so the link stays aligned.

:func:`dma_map_iova` / :func:`dma_unmap_iova` drive the API the way block/blk-mq-dma.c's
``blk_rq_dma_map_iter_start`` does: IOVA when the ranges join on the merge boundary and the
device uses dma-iommu, else ``dma_map_phys`` range by range (dma-direct, swiotlb, or any
other ops). P2P follows ``pci_p2pdma_state()`` as the block layer asks it: a request of a peer's
memory reachable below a common switch gets bus addresses (``blk_dma_map_bus``), one through the
host bridge is mapped like host memory, and an unreachable one fails with -EREMOTEIO.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from phyrlab.dma.mapping import (
    DmaList,
    _as_ranges,
    _counters,
    _diff,
    _p2p_bus,
    dma_map_phys,
    split_for_device,
)
from phyrlab.dma.ops import DmaStats, check_direction, dma_limit
from phyrlab.errors import DmaMappingError

U64 = np.uint64
DMA_IOVA_USE_SWIOTLB = 1 << 63
_PROT = {"bidirectional": 3, "to_device": 1, "from_device": 2}


@dataclass
class DmaIovaState:
    """``struct dma_iova_state``."""

    addr: int = 0
    size: int = 0   # __size: bytes, with DMA_IOVA_USE_SWIOTLB in bit 63


def dma_iova_size(state: DmaIovaState) -> int:
    """``dma_iova_size``: the IOVA size without the swiotlb flag."""
    return state.size & ~DMA_IOVA_USE_SWIOTLB


def dma_use_iova(state: DmaIovaState) -> bool:
    """``dma_use_iova``: the IOVA path is in use for this state."""
    return state.size != 0


def _iommu(dev):
    from phyrlab.dma.iommu import IommuDma

    ops = dev.ops
    return ops if isinstance(ops, IommuDma) else None


class _GranuleAligned:
    """The device as swiotlb sees it for a partial-granule bounce (see module docstring)."""

    def __init__(self, dev, granule: int):
        self._dev = dev
        self.min_align_mask = dev.min_align_mask | (granule - 1)

    def __getattr__(self, name):
        return getattr(self._dev, name)


def dma_iova_try_alloc(dev, state: DmaIovaState, phys: int, size: int) -> bool:
    """``dma_iova_try_alloc``: True when IOVA space for ``size`` bytes was reserved."""
    state.addr, state.size = 0, 0
    ops = _iommu(dev)
    if ops is None or size <= 0 or size & DMA_IOVA_USE_SWIOTLB:
        return False
    from phyrlab.iommu.dma_iommu import iommu_dma_alloc_iova

    g = ops.granule
    iova_off = phys & (g - 1)
    try:
        addr = iommu_dma_alloc_iova(ops.domain, (size + iova_off + g - 1) & ~(g - 1),
                                    dma_limit(dev), dev.is_pci)
    except DmaMappingError:
        return False
    ops.count("iova_allocs")
    state.addr, state.size = addr + iova_off, int(size)
    return True


def dma_iova_free(dev, state: DmaIovaState) -> None:
    """``dma_iova_free``: give the IOVA space back (every link undone first)."""
    from phyrlab.iommu.dma_iommu import iommu_dma_free_iova

    ops = _iommu(dev)
    g = ops.granule
    pad = state.addr & (g - 1)
    iommu_dma_free_iova(ops.domain, state.addr - pad,
                        (dma_iova_size(state) + pad + g - 1) & ~(g - 1))


def _link(dev, ops, iova: int, phys: int, size: int, direction: str) -> None:
    """``__dma_iova_link``: ``iommu_map_nosync``, cache maintenance for non-coherent."""
    if not dev.coherent:
        ops.count("cache_maint_bytes", size)
    g = ops.granule
    if (iova | phys | size) & (g - 1):
        raise DmaMappingError("EINVAL", f"{dev.name}: unaligned: iova {iova:#x} pa {phys:#x} "
                                        f"size {size:#x} min_pagesz {g:#x}")
    before = ops._pt_counts()
    try:
        ops.domain.pt.map(iova, phys, size, _PROT[direction])
    finally:
        ops._account(before)


def _bounce_and_link(dev, ops, addr: int, phys: int, bounce_len: int, direction: str,
                     pad: int) -> None:
    """``iommu_dma_iova_bounce_and_link``."""
    g = ops.granule
    mem = dev.dma_io_tlb_mem
    if mem is None:
        raise DmaMappingError("ENOMEM", f"{dev.name}: DMA bounce buffers are inactive, "
                                        "unable to map unaligned transaction.")
    view = _GranuleAligned(dev, g)
    bounce = mem.tbl_map_single(view, phys, bounce_len, bounce_len, g - 1, direction)
    try:
        _link(dev, ops, addr - pad, bounce - pad, (bounce_len + pad + g - 1) & ~(g - 1),
              direction)
    except DmaMappingError:
        mem.tbl_unmap_single(view, bounce, bounce_len, direction)
        raise


def _link_swiotlb(dev, ops, state: DmaIovaState, phys: int, offset: int, size: int,
                  direction: str) -> None:
    """``iommu_dma_iova_link_swiotlb``: bounce the partial granules at either end."""
    g = ops.granule
    start_pad = phys & (g - 1)
    end_pad = (phys + size) & (g - 1)
    addr = state.addr + offset
    mapped = 0
    try:
        if start_pad:
            bounce_len = min(size, g - start_pad)
            _bounce_and_link(dev, ops, addr, phys, bounce_len, direction, start_pad)
            state.size |= DMA_IOVA_USE_SWIOTLB
            mapped += bounce_len
            size -= bounce_len
            if not size:
                return
        size -= end_pad
        if size:
            _link(dev, ops, addr + mapped, phys + mapped, size, direction)
            mapped += size
        if end_pad:
            _bounce_and_link(dev, ops, addr + mapped, phys + mapped, end_pad, direction, 0)
            state.size |= DMA_IOVA_USE_SWIOTLB
    except DmaMappingError:
        if mapped:
            dma_iova_unlink(dev, state, offset, mapped, direction)
        raise


def dma_iova_link(dev, state: DmaIovaState, phys: int, offset: int, size: int,
                  direction: str) -> None:
    """``dma_iova_link``: map ``[phys, phys+size)`` at ``state.addr + offset``, no IOTLB sync."""
    check_direction(direction)
    ops = _iommu(dev)
    if ops is None or not dma_use_iova(state):
        raise ValueError("dma_iova_link: no IOVA allocated (dma_iova_try_alloc returned False)")
    if size <= 0 or offset < 0 or offset + size > dma_iova_size(state):
        raise ValueError(f"dma_iova_link: offset {offset:#x} + size {size:#x} is outside the "
                         f"{dma_iova_size(state):#x} bytes allocated")
    g = ops.granule
    pad = phys & (g - 1)
    if pad and offset > 0:
        raise DmaMappingError("EIO", f"dma_iova_link: phys {phys:#x} is not aligned to the "
                                     f"{g:#x} granule but offset {offset:#x} > 0")
    if dev.untrusted and (phys | size) & (g - 1):
        _link_swiotlb(dev, ops, state, phys, offset, size, direction)
        return
    _link(dev, ops, state.addr + offset - pad, phys - pad, (size + pad + g - 1) & ~(g - 1),
          direction)


def dma_iova_sync(dev, state: DmaIovaState, offset: int, size: int) -> None:
    """``dma_iova_sync``: one ``iommu_sync_map`` over the linked span."""
    ops = _iommu(dev)
    if not dev.coherent:
        ops.count("cache_maint_bytes", 0)   # arch_sync_dma_flush(): one barrier, no bytes
    ops.count("iotlb_flushes", 1)


def _unlink(dev, state: DmaIovaState, offset: int, size: int, direction: str,
            free_iova: bool) -> None:
    """``__iommu_dma_iova_unlink``."""
    from phyrlab.iommu.dma_iommu import iommu_dma_free_iova
    from phyrlab.iommu.iotlb import IommuIotlbGather

    ops = _iommu(dev)
    d, g = ops.domain, ops.granule
    addr = state.addr + offset
    pad = addr & (g - 1)
    if (state.size & DMA_IOVA_USE_SWIOTLB) or not dev.coherent:
        _unlink_range_slow(dev, ops, addr, size, direction)
    gather = IommuIotlbGather(queued=free_iova and not d.strict)
    span = (size + pad + g - 1) & ~(g - 1)
    addr -= pad
    now = d.clock.now_ns
    d.iotlb.advance(now)
    before = ops._pt_counts()
    try:
        d.pt.unmap(addr, span, gather)
        if not gather.queued:
            d.pt.iotlb_sync(gather)
            d.iotlb.unmapped(gather.syncs, span // g, now)
    finally:
        ops._account(before)
    if free_iova:
        iommu_dma_free_iova(d, addr, span, gather)


def _unlink_range_slow(dev, ops, addr: int, size: int, direction: str) -> None:
    """``iommu_dma_iova_unlink_range_slow``: per granule, release bounce buffers."""
    g = ops.granule
    end = addr + size
    pad = addr & (g - 1)
    mem = dev.dma_io_tlb_mem if dev.has_io_tlb_mem() else None
    view = _GranuleAligned(dev, g)
    while addr < end:
        phys = ops.domain.pt.iova_to_phys(addr)
        if not phys:
            raise ValueError(f"dma_iova_unlink: IOVA {addr:#x} is not linked")
        length = min(end - addr, g - pad)
        if not dev.coherent:
            ops.count("cache_maint_bytes", length)
        if mem is not None and mem.is_swiotlb_buffer(phys):
            mem.tbl_unmap_single(view, phys, length, direction)
        addr += length
        pad = 0


def dma_iova_unlink(dev, state: DmaIovaState, offset: int, size: int, direction: str) -> None:
    """``dma_iova_unlink``: unmap a linked span and sync the IOTLB; the IOVA stays reserved."""
    check_direction(direction)
    _unlink(dev, state, offset, size, direction, False)


def dma_iova_destroy(dev, state: DmaIovaState, mapped_len: int, direction: str) -> None:
    """``dma_iova_destroy``: unlink ``[0, mapped_len)`` and free the IOVA in one go."""
    check_direction(direction)
    if mapped_len:
        _unlink(dev, state, 0, mapped_len, direction, True)
    else:
        dma_iova_free(dev, state)


# --------------------------------------------------------------------------- batched links
#: :func:`dma_map_iova` links its ranges as one page-table update per batch (True) or with one
#: :func:`dma_iova_link` per range (False: the reference the batch is tested against).
LINK_BATCH = True


def _link_ranges(dev, ops, state: DmaIovaState, addr: np.ndarray, length: np.ndarray,
                 direction: str) -> tuple[int, DmaMappingError | None]:
    """``dma_iova_link(dev, state, addr[k], offset_k, length[k], dir)`` for k = 0, 1, ... in
    turn (``offset_k`` the bytes before), stopping at the first that fails: returns the bytes
    linked and that call's error (None when all were linked).

    Ranges a call handles specially - a swiotlb bounce (untrusted device, a range not on the
    granule), ``-EIO`` (mid-granule start at a non-zero offset), ``-EINVAL`` (IOVA off the
    granule) - are made as single calls; the stretches between them go to the page table in
    one update (:meth:`PageTable.map_calls`), with the counters of the calls one by one.
    """
    g = ops.granule
    gm = U64(g - 1)
    offset = np.cumsum(length, dtype=U64)
    offset -= length
    pad = addr & gm
    iova = (offset + U64(state.addr)) - pad
    phys = addr - pad
    size = length + pad
    size += gm
    size &= ~gm
    special = (pad != 0) & (offset != 0)
    special |= (iova & gm) != 0
    if dev.untrusted:
        special |= ((addr | length) & gm) != 0
    cut = np.flatnonzero(special).tolist()
    n = addr.size
    mapped, start = 0, 0
    for stop in cut + [n]:
        if stop > start:
            done, exc = _link_batch(dev, ops, state, iova[start:stop], phys[start:stop],
                                    size[start:stop], addr[start:stop], length[start:stop],
                                    int(offset[start]), direction)
            mapped += int(length[start:start + done].sum(dtype=U64))
            if exc is not None:
                return mapped, exc
        if stop < n:
            try:
                dma_iova_link(dev, state, int(addr[stop]), mapped, int(length[stop]),
                              direction)
            except DmaMappingError as exc:
                return mapped, exc.with_traceback(None)  # no frame cycle
            mapped += int(length[stop])
        start = stop + 1
    return mapped, None


def _link_batch(dev, ops, state, iova, phys, size, addr, length, offset: int,
                direction: str) -> tuple[int, DmaMappingError | None]:
    """Plain ``__dma_iova_link`` calls (``iova``, ``phys``, ``size`` already granule-padded)
    as one page-table update; ``(calls that linked, the failing call's error)``."""
    pt = ops.domain.pt
    before = ops._pt_counts()
    res = pt.map_calls(iova, phys, size)
    if res is None:     # some call raises ValueError: make the calls one by one
        done = 0
        try:
            for a, n in zip(addr.tolist(), length.tolist(), strict=True):
                dma_iova_link(dev, state, a, offset, n, direction)
                offset += n
                done += 1
        except DmaMappingError as exc:
            return done, exc.with_traceback(None)  # no frame cycle
        return done, None
    done, exc = res
    if not dev.coherent:   # __dma_iova_link: arch_sync_dma_for_device before iommu_map
        ops.count("cache_maint_bytes", int(size[:done + (exc is not None)].sum(dtype=U64)))
    ops._account(before)
    return done, exc


# --------------------------------------------------------------------------- a block-style user
def _joins_on_boundary(addr: np.ndarray, length: np.ndarray, mask: int) -> bool:
    """``blk_can_dma_map_iova``: no gap at the merge boundary between ranges."""
    if addr.size < 2:
        return True
    m = U64(mask)
    return not (((addr[1:] & m) != 0).any() or (((addr[:-1] + length[:-1]) & m) != 0).any())


def dma_map_iova(dev, ranges, direction: str = "bidirectional") -> DmaList:
    """Map like ``blk_rq_dma_map_iter_start``: one linked IOVA range, or per-range fallback.

    The IOVA result is one DMA entry (``iter->addr = state->addr``, ``iter->len =
    dma_iova_size(state)``); the fallback (dma-direct, other ops, ranges that do not join on
    the merge boundary, no IOVA space) maps each device segment (``max_seg_size``, boundary)
    with ``dma_map_phys``.
    """
    check_direction(direction)
    addr, length = _as_ranges(ranges)
    before = _counters(dev)
    bus = _p2p_bus(dev, addr, length)  # -EREMOTEIO for PCI_P2PDMA_MAP_NOT_SUPPORTED
    if bus is not None:
        return _map_bus(dev, addr, length, bus, direction, before)
    ops = _iommu(dev)
    state = DmaIovaState()
    total = int(length.sum(dtype=U64))
    if ops is not None and _joins_on_boundary(addr, length, ops.get_merge_boundary(dev)) \
            and dma_iova_try_alloc(dev, state, int(addr[0]), total):
        mapped = 0
        try:
            if LINK_BATCH:
                mapped, exc = _link_ranges(dev, ops, state, addr, length, direction)
                if exc is not None:
                    try:
                        raise exc
                    finally:
                        exc = None  # the frame must not keep its own traceback alive
            else:
                for a, n in zip(addr.tolist(), length.tolist(), strict=True):
                    dma_iova_link(dev, state, a, mapped, n, direction)
                    mapped += n
        except DmaMappingError:
            dma_iova_destroy(dev, state, mapped, direction)
            raise
        dma_iova_sync(dev, state, 0, mapped)
        stats = _diff(dev, before)
        stats["entries_walked"] = int(addr.size)
        bounced = np.array([bool(state.size & DMA_IOVA_USE_SWIOTLB)])
        return DmaList(dma_addr=np.array([state.addr], dtype=U64),
                       length=np.array([total], dtype=U64), direction=direction,
                       bounced=bounced, bus_addr=np.zeros(1, dtype=bool), stats=stats,
                       device=dev, cookie=state)
    # blk_map_iter_next clips each phys_vec to get_max_segment_size (max_segment_size and
    # the segment boundary) before blk_dma_map_direct maps it
    addr, length = split_for_device(addr, length, dev.max_seg_size, dev.seg_boundary_mask)
    out = _map_phys_ranges(dev, addr, length, direction)
    stats = _diff(dev, before)
    stats["entries_walked"] = int(addr.size)
    return DmaList(dma_addr=out, length=length.copy(), direction=direction,
                   bounced=dev.ops.bounced_mask(dev, out, length),
                   bus_addr=np.zeros(addr.size, dtype=bool), stats=stats, per_range=True,
                   device=dev, cookie=None)


def _direct(dev):
    from phyrlab.dma.direct import DmaDirect

    return LINK_BATCH and type(dev.ops) is DmaDirect


def _map_phys_ranges(dev, addr: np.ndarray, length: np.ndarray, direction: str) -> np.ndarray:
    """``dma_map_phys`` range by range; a failure unmaps the mapped ones in reverse order.

    On dma-direct (with :data:`LINK_BATCH`) the leading ranges that need no bounce
    (``!is_swiotlb_force_bounce``, ``dma_capable``) are mapped at once: their DMA address is
    ``phys_to_dma`` and the only work is the cache maintenance of a non-coherent device; the
    rest, from the first range that would bounce or fail, goes call by call.
    """
    out = np.empty(addr.size, dtype=U64)
    start = 0
    if _direct(dev):
        from phyrlab.dma.direct import dma_capable_array
        from phyrlab.dma.swiotlb import is_swiotlb_force_bounce

        if not is_swiotlb_force_bounce(dev):
            dma = dev.phys_to_dma_array(addr)
            ok = dma_capable_array(dev, dma, length)
            start = addr.size if ok.all() else int(np.argmin(ok))
            out[:start] = dma[:start]
            if start and not dev.coherent:
                dev.ops.count("cache_maint_bytes", int(length[:start].sum(dtype=U64)))
    for i in range(start, addr.size):
        try:
            out[i] = dma_map_phys(dev, int(addr[i]), int(length[i]), direction)
        except DmaMappingError as exc:
            for j in range(i - 1, -1, -1):
                dev.ops.unmap_phys(dev, int(out[j]), int(length[j]), direction)
            raise DmaMappingError(exc.errno, f"range {i}: {str(exc).split(': ', 1)[-1]}"
                                  ) from exc
    return out


def _map_bus(dev, addr, length, bus, direction, before) -> DmaList:
    """``blk_dma_map_bus``: a request of a peer's P2P memory (``PCI_P2PDMA_MAP_BUS_ADDR``)
    gets its PCI bus addresses, with no IOVA and no page-table write.

    The block layer never builds a request that mixes P2P and host pages (``bio_add_page``
    stops at ``zone_device_pages_have_same_pgmap``), so such a list is refused (-EINVAL).
    """
    is_bus = bus != 0
    if not is_bus.all():
        i = int(np.flatnonzero(~is_bus)[0])
        raise DmaMappingError(
            "EINVAL", f"range {i} at {int(addr[i]):#x} is host memory in a request of P2P "
                      "bus-address ranges; a block request never mixes pgmaps")
    stats = _diff(dev, before)
    stats["entries_walked"] = int(addr.size)
    return DmaList(dma_addr=bus.copy(), length=length.copy(), direction=direction,
                   bounced=np.zeros(addr.size, dtype=bool),
                   bus_addr=np.ones(addr.size, dtype=bool), stats=stats, per_range=True,
                   device=dev, cookie=None)


def dma_unmap_iova(dev, dma_list: DmaList) -> DmaStats:
    """Undo :func:`dma_map_iova`: ``dma_iova_destroy`` or ``dma_unmap_phys`` per range."""
    from phyrlab.dma.mapping import _check_live, dma_unmap

    _check_live(dev, dma_list, None, "dma_unmap_iova")
    if dma_list.bus_addr.all():  # bus addresses hold nothing (blk_rq_dma_unmap skips them)
        dma_list.mapped = False
        return DmaStats()
    state = dma_list.cookie
    if not isinstance(state, DmaIovaState):
        if dma_list.per_range and not dma_list.bus_addr.any() and _direct(dev):
            # dma_direct_unmap_phys per range, in order: cache maintenance of a non-coherent
            # device, and the bounce slots given back (dma_direct_unmap_sg does the same)
            before = _counters(dev)
            dev.ops.unmap_sg(dev, dma_list.dma_addr, dma_list.length, dma_list.direction,
                             None)
            dma_list.mapped = False
            return _diff(dev, before)
        return dma_unmap(dev, dma_list)
    before = _counters(dev)
    dma_iova_destroy(dev, state, dma_iova_size(state), dma_list.direction)
    dma_list.mapped = False
    return _diff(dev, before)
