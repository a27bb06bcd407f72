"""The DMA API (kernel/dma/mapping.c): map any layout, get a new DMA-side list back.

``dma_map(dev, ranges, direction)`` mirrors ``dma_map_sgtable``/``__dma_map_sg_attrs``
(kernel/dma/mapping.c) with the CPU/DMA split the phyr discussion asks for: the input is any
layout (through ``phyrlab.layouts.as_ranges``) and is never written; the result is a new
:class:`DmaList`. Before the backend sees it, the list is cut into the device's segments
(``max_seg_size``, ``seg_boundary_mask``) as the block layer's ``blk_rq_map_sg`` does for a
request. Backends without ``map_sg`` (``ps3_ioc0_dma_ops``, ``vduse_dev_dma_ops``: v6.2 has
none) are mapped range by range through ``map_phys``, which only a layout-independent API
can do; such a list has ``per_range=True``.

``dma_map_sgtable(dev, sgt, dir)`` is the old way: it writes ``dma_address``/``dma_length``
into the scatterlist's own entries (``SgTable.set_dma``), mapping the table's entries as
they are (``dma_map_sg`` does not split), so the two styles can be compared.
Errors: ``__dma_map_sg_attrs`` passes on ``-EINVAL``, ``-ENOMEM``, ``-EIO``, ``-EREMOTEIO``
from the backend (raised here as :class:`DmaMappingError`); ``dma_map_phys`` failures are
what ``dma_mapping_error()`` reports, ``-ENOMEM``. Nothing is held after a failure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from phyrlab.dma.ops import DmaStats, check_direction
from phyrlab.errors import DmaMappingError, RangeError
from phyrlab.units import DMA_MAPPING_ERROR, U64_MAX

U64 = np.uint64


@dataclass(eq=False)
class DmaList:
    """A DMA-side range list: what the device is given. The CPU-side list is untouched.

    ``bounced[i]``: entry ``i`` points into a bounce buffer; ``bus_addr[i]``: a P2P bus
    address (never set by the core backends: P2P is wired by ``phyrlab.pci``);
    ``per_range``: mapped range by range through ``map_phys``; ``stats``: counters of this
    mapping (``entries_walked``, ``pte_writes``, ``iotlb_flushes``, ``bounce_bytes``...).
    """

    dma_addr: np.ndarray
    length: np.ndarray
    direction: str
    bounced: np.ndarray
    bus_addr: np.ndarray
    stats: DmaStats
    per_range: bool = False
    device: Any = field(default=None, repr=False)
    cookie: Any = field(default=None, repr=False)
    mapped: bool = True

    def __len__(self) -> int:
        return int(self.dma_addr.size)

    @property
    def total_length(self) -> int:
        """Bytes the device may access."""
        return int(self.length.sum(dtype=U64))

    def ranges(self) -> tuple[np.ndarray, np.ndarray]:
        """``(dma_addr, length)`` copies."""
        return self.dma_addr.copy(), self.length.copy()


# --------------------------------------------------------------------------- input
def _as_ranges(x: Any) -> tuple[np.ndarray, np.ndarray]:
    """``phyrlab.layouts.as_ranges(x)``: a layout, an object with ``.ranges()`` or a pair.

    ``as_ranges`` validates a pair (zero length, overflow, overlap) and a layout's ranges are
    valid by construction; without the layouts package a pair is checked here.
    """
    try:
        from phyrlab.layouts import as_ranges
    except ImportError:  # the layouts package is optional for the DMA core
        as_ranges = None
    if as_ranges is not None:
        addr, length = as_ranges(x)
        if addr.size == 0:
            raise RangeError("cannot map an empty range list")
        return addr, length
    return _checked_pair(*(x.ranges() if hasattr(x, "ranges") else x))


def _checked_pair(addr: Any, length: Any) -> tuple[np.ndarray, np.ndarray]:
    """uint64 arrays of one shape, no zero length, no end past 2^64 (overlaps not checked)."""
    addr = np.asarray(addr)
    length = np.asarray(length)
    if addr.ndim != 1 or addr.shape != length.shape:
        raise RangeError(f"ranges must be two 1-D arrays of one length, got {addr.shape} "
                         f"and {length.shape}")
    if addr.dtype != U64 or length.dtype != U64:
        if (addr.dtype.kind == "i" and (addr < 0).any()) or (
                length.dtype.kind == "i" and (length < 0).any()):
            raise RangeError("ranges hold a negative address or length")
        addr, length = addr.astype(U64), length.astype(U64)
    if addr.size == 0:
        raise RangeError("cannot map an empty range list")
    if int(length.min()) == 0:
        raise RangeError(f"length[{int(np.argmin(length))}] is zero")
    # no end can pass 2^64 when even the largest address plus the largest length does not
    over = (np.flatnonzero(length - U64(1) > ~addr)
            if int(addr.max()) + int(length.max()) > 1 << 64 else ())
    if len(over):
        i = int(over[0])
        raise RangeError(f"range {i} (addr {int(addr[i]):#x}, length {int(length[i]):#x}) "
                         "ends past 2^64")
    return addr, length


def _cut(addr: np.ndarray, length: np.ndarray, first: np.ndarray, step: int
         ) -> tuple[np.ndarray, np.ndarray]:
    """Cut each range into a first piece of ``first`` bytes, then pieces of ``step`` bytes."""
    first = np.minimum(first, length)
    step_u = U64(step)
    counts = (U64(1) + (length - first + step_u - U64(1)) // step_u).astype(np.intp)
    if np.all(counts == 1):
        return addr, length
    idx = np.repeat(np.arange(addr.size), counts)
    k = (np.arange(idx.size) - np.repeat(np.cumsum(counts) - counts, counts)).astype(U64)
    f = first[idx]
    off = np.where(k == 0, U64(0), f + (k - U64(1)) * step_u)
    piece = np.where(k == 0, f, np.minimum(step_u, length[idx] - off))
    return addr[idx] + off, piece


def split_for_device(addr: np.ndarray, length: np.ndarray, max_seg: int, boundary: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Cut ranges so none exceeds ``max_seg`` bytes or crosses a ``boundary + 1`` line.

    What ``blk_rq_map_sg`` does with ``queue_max_segment_size`` and
    ``queue_segment_boundary`` (``get_max_segment_size``: a piece ends at the nearer of the
    next boundary line and ``max_seg`` bytes). Cutting at boundary lines first, then each
    piece into ``max_seg`` chunks, gives the same pieces as that greedy walk.
    """
    if max_seg <= 0:
        raise ValueError(f"max_seg {max_seg} must be positive")
    if int(length.max()) <= max_seg and (boundary == U64_MAX or not np.any(
            length - U64(1) > U64(boundary) - (addr & U64(boundary)))):
        return addr, length                 # nothing to cut: the common case, two passes
    if boundary != U64_MAX:
        window = boundary + 1
        addr, length = _cut(addr, length, U64(window) - (addr & U64(boundary)), window)
    if max_seg < U64_MAX:
        addr, length = _cut(addr, length, np.full(addr.shape, U64(max_seg)), max_seg)
    return addr, length


# --------------------------------------------------------------------------- counters
def _counters(dev) -> dict[str, int]:
    c = dict(dev.ops.stats)
    if dev.has_io_tlb_mem():
        for k, v in dev.dma_io_tlb_mem.stats.items():
            c[k] = c.get(k, 0) + v
    return c


def _diff(dev, before: dict[str, int]) -> DmaStats:
    return DmaStats(_counters(dev)).diff(before)


# --------------------------------------------------------------------------- the API
def dma_map(dev, ranges: Any, direction: str = "bidirectional", *, split: bool = True
            ) -> DmaList:
    """Map any layout for ``dev``; a new :class:`DmaList`. ``split=False`` skips the cut
    into device segments (the list is passed as it is, like ``dma_map_sg``).

    A device with ``pci=(topology, bdf)`` gets the P2P decision of ``pci_p2pdma_map_type``
    per range (``phyrlab.pci.p2pdma.classify_ranges``), as ``dma_direct_map_sg`` and
    ``iommu_dma_map_sg`` ask ``pci_p2pdma_state()``: ranges in a peer's P2P BAR that the
    device reaches below a common switch get their bus address (``bus_addr`` flag) and never
    reach the backend; ``NOT_SUPPORTED`` fails the whole list with ``-EREMOTEIO``.
    """
    check_direction(direction)
    addr, length = _as_ranges(ranges)
    if split:
        addr, length = split_for_device(addr, length, dev.max_seg_size, dev.seg_boundary_mask)
    bus = _p2p_bus(dev, addr, length)
    ops = dev.ops
    before = _counters(dev)
    if bus is None:
        dma, dlen, cookie, per_range = _backend_map(dev, addr, length, direction)
        bounced = getattr(cookie, "bounced", None)
        if bounced is None:
            bounced = ops.bounced_mask(dev, dma, dlen)
        bus_addr = np.zeros(dma.size, dtype=bool)
    else:
        dma, dlen, bounced, bus_addr, cookie, per_range = _map_with_peers(
            dev, addr, length, bus, direction)
    stats = _diff(dev, before)
    stats.setdefault("entries_walked", int(addr.size))
    return DmaList(dma_addr=dma, length=dlen, direction=direction,
                   bounced=np.asarray(bounced, dtype=bool), bus_addr=bus_addr, stats=stats,
                   per_range=per_range, device=dev, cookie=cookie)


def _backend_map(dev, addr, length, direction):
    if dev.ops.supports_sg:
        return (*dev.ops.map_sg(dev, addr, length, direction), False)
    return _map_per_range(dev, addr, length, direction), length.copy(), None, True


def _p2p_bus(dev, addr: np.ndarray, length: np.ndarray) -> np.ndarray | None:
    """Bus addresses (0 where host memory) of the ranges in a reachable P2P BAR, or None."""
    if dev.pci is None:
        return None
    from phyrlab.pci.p2pdma import MapType, classify_ranges

    topo, bdf = dev.pci
    rc = classify_ranges(topo, bdf, addr, length)
    bad = np.flatnonzero(rc.map_type == MapType.NOT_SUPPORTED)
    if bad.size:
        i = int(bad[0])
        raise DmaMappingError(
            "EREMOTEIO", f"range {i} at {int(addr[i]):#x} is P2P memory of "
                         f"{rc.providers[int(rc.provider[i])]} that {bdf} cannot reach "
                         "(PCI_P2PDMA_MAP_NOT_SUPPORTED)")
    is_bus = rc.map_type == MapType.BUS_ADDR
    if not is_bus.any():
        return None
    return np.where(is_bus, addr + rc.bus_offset.astype(U64), U64(0))


@dataclass
class _PeerCookie:
    """The backend's own result for the host ranges of a list that also holds bus ranges."""

    dma: np.ndarray
    dlen: np.ndarray
    cookie: Any
    per_range: bool


def _map_with_peers(dev, addr, length, bus, direction):
    """Host ranges through the backend in one call, bus ranges as they are, in input order.

    A DMA segment never spans a bus-address range (``__finalise_sg`` restarts after one), so
    the backend's segments are cut where a bus range sat between their host ranges.
    """
    is_bus = bus != 0
    host = np.flatnonzero(~is_bus)
    if host.size == 0:
        pieces_key = np.zeros(0, dtype=np.int64)
        pd = pl = np.zeros(0, dtype=U64)
        pb = np.zeros(0, dtype=bool)
        inner = None
    else:
        hl = length[host]
        dma, dlen, cookie, per_range = _backend_map(dev, addr[host], hl, direction)
        bnc = getattr(cookie, "bounced", None)
        if bnc is None:
            bnc = dev.ops.bounced_mask(dev, dma, dlen)
        inner = _PeerCookie(dma, dlen, cookie, per_range)
        h_start = np.concatenate([[U64(0)], np.cumsum(hl, dtype=U64)[:-1]])
        h_end = h_start + hl
        o_start = np.concatenate([[U64(0)], np.cumsum(dlen, dtype=U64)[:-1]])
        # host byte offsets where a bus range interrupts the host run
        run_end = h_end[:-1][np.diff(host) > 1]
        cuts = np.union1d(o_start, run_end)
        k = np.searchsorted(o_start, cuts, side="right") - 1
        ends = np.append(cuts[1:], h_end[-1])
        pd = dma[k] + (cuts - o_start[k])
        pl = ends - cuts
        pb = np.asarray(bnc, dtype=bool)[k]
        pieces_key = host[np.searchsorted(h_start, cuts, side="right") - 1]
    bus_idx = np.flatnonzero(is_bus)
    key = np.concatenate([pieces_key, bus_idx])
    order = np.argsort(key, kind="stable")
    out_d = np.concatenate([pd, bus[bus_idx]])[order]
    out_l = np.concatenate([pl, length[bus_idx]])[order]
    out_b = np.concatenate([pb, np.zeros(bus_idx.size, dtype=bool)])[order]
    out_bus = np.concatenate([np.zeros(pd.size, dtype=bool), np.ones(bus_idx.size, dtype=bool)]
                             )[order]
    return out_d, out_l, out_b, out_bus, inner, bool(inner and inner.per_range)


def _many(ops, what: str):
    """The backend's batched ``map_phys_many``/``unmap_phys_many`` when its ``batch`` is on."""
    return getattr(ops, what, None) if getattr(ops, "batch", False) else None


def _map_per_range(dev, addr: np.ndarray, length: np.ndarray, direction: str) -> np.ndarray:
    """``map_phys`` range by range; on failure unmap the mapped ones in reverse order.

    A backend with ``batch`` on and ``map_phys_many``/``unmap_phys_many`` makes the same
    calls at once (the loop below is the reference).
    """
    ops = dev.ops
    many = _many(ops, "map_phys_many")
    if many is not None:
        out, exc = many(dev, addr, length, direction)
        if exc is None:
            return out
        i = len(out)
        ops.unmap_phys_many(dev, out[::-1], length[:i][::-1], direction)
        raise DmaMappingError(exc.errno, f"range {i}: {str(exc).split(': ', 1)[-1]}"
                              ) from exc
    out = np.empty(addr.size, dtype=U64)
    for i in range(addr.size):
        try:
            out[i] = ops.map_phys(dev, int(addr[i]), int(length[i]), direction)
        except DmaMappingError as exc:
            for j in range(i - 1, -1, -1):
                ops.unmap_phys(dev, int(out[j]), int(length[j]), direction)
            raise DmaMappingError(exc.errno, f"range {i}: {str(exc).split(': ', 1)[-1]}"
                                  ) from exc
    return out


def _check_live(dev, dma_list: DmaList, direction: str | None, what: str) -> None:
    if not isinstance(dma_list, DmaList):
        raise TypeError(f"{what} expects a DmaList, got {type(dma_list).__name__}")
    if dma_list.device is not dev:
        raise ValueError(f"{what}: this DmaList was mapped for {dma_list.device!r}, not {dev!r}")
    if not dma_list.mapped:
        raise ValueError(f"{what}: this DmaList is already unmapped")
    if direction is not None:
        check_direction(direction)
        if direction != dma_list.direction:
            raise ValueError(f"{what}: direction {direction!r} does not match the mapping's "
                             f"{dma_list.direction!r}")


def dma_unmap(dev, dma_list: DmaList, direction: str | None = None) -> DmaStats:
    """``dma_unmap_sgtable``: undo :func:`dma_map`; the counters of the unmap."""
    _check_live(dev, dma_list, direction, "dma_unmap")
    if type(dma_list.cookie).__name__ == "DmaIovaState":
        from phyrlab.dma.iova_state import dma_unmap_iova

        return dma_unmap_iova(dev, dma_list)
    before = _counters(dev)
    ops = dev.ops
    dma, dlen, cookie, per_range = (dma_list.dma_addr, dma_list.length, dma_list.cookie,
                                    dma_list.per_range)
    if dma_list.bus_addr.any():           # bus ranges hold nothing; undo the host part
        if cookie is None:
            dma_list.mapped = False
            return _diff(dev, before)
        dma, dlen, cookie, per_range = cookie.dma, cookie.dlen, cookie.cookie, cookie.per_range
    if per_range and _many(ops, "unmap_phys_many") is not None:
        ops.unmap_phys_many(dev, dma, dlen, dma_list.direction)
    elif per_range:
        for a, n in zip(dma.tolist(), dlen.tolist(), strict=True):
            ops.unmap_phys(dev, a, n, dma_list.direction)
    else:
        ops.unmap_sg(dev, dma, dlen, dma_list.direction, cookie)
    dma_list.mapped = False
    return _diff(dev, before)


def _check_single(paddr: int, size: int) -> None:
    if int(size) <= 0:
        raise RangeError(f"size {size} must be positive")
    if int(paddr) < 0 or int(paddr) + int(size) > U64_MAX + 1:
        raise RangeError(f"range at {int(paddr):#x} + {int(size):#x} is outside 2^64")


def dma_map_phys(dev, paddr: int, size: int, direction: str = "bidirectional") -> int:
    """``dma_map_phys`` (``dma_map_page_attrs`` in v6.2): one range; raises on failure."""
    check_direction(direction)
    _check_single(paddr, size)
    return int(dev.ops.map_phys(dev, int(paddr), int(size), direction))


def dma_unmap_phys(dev, dma_addr: int, size: int, direction: str = "bidirectional") -> None:
    """``dma_unmap_phys`` (``dma_unmap_page_attrs``)."""
    check_direction(direction)
    if int(dma_addr) == DMA_MAPPING_ERROR:
        raise ValueError("dma_unmap_phys of DMA_MAPPING_ERROR")
    dev.ops.unmap_phys(dev, int(dma_addr), int(size), direction)


def dma_mapping_error(dev, dma_addr: int) -> int:
    """``dma_mapping_error``: ``-ENOMEM`` (as -12) for ``DMA_MAPPING_ERROR``, else 0."""
    return -12 if int(dma_addr) == DMA_MAPPING_ERROR else 0


def dma_sync_single_for_cpu(dev, dma_addr: int, size: int, direction: str) -> int:
    """``dma_sync_single_for_cpu``: bytes copied out of bounce buffers."""
    check_direction(direction)
    return dev.ops.sync_for_cpu(dev, np.array([dma_addr], dtype=U64),
                                np.array([size], dtype=U64), direction)


def dma_sync_single_for_device(dev, dma_addr: int, size: int, direction: str) -> int:
    """``dma_sync_single_for_device``: bytes copied into bounce buffers."""
    check_direction(direction)
    return dev.ops.sync_for_device(dev, np.array([dma_addr], dtype=U64),
                                   np.array([size], dtype=U64), direction)


def dma_sync_for_cpu(dev, dma_list: DmaList, direction: str | None = None) -> int:
    """``dma_sync_sgtable_for_cpu`` on a :class:`DmaList`: bytes copied."""
    _check_live(dev, dma_list, direction, "dma_sync_for_cpu")
    return dev.ops.sync_for_cpu(dev, dma_list.dma_addr, dma_list.length, dma_list.direction)


def dma_sync_for_device(dev, dma_list: DmaList, direction: str | None = None) -> int:
    """``dma_sync_sgtable_for_device`` on a :class:`DmaList`: bytes copied."""
    _check_live(dev, dma_list, direction, "dma_sync_for_device")
    return dev.ops.sync_for_device(dev, dma_list.dma_addr, dma_list.length, dma_list.direction)


# --------------------------------------------------------------------------- the old way


class _SgEntries:
    """A table's entries as ``dma_map_sg`` walks them: checked, overlaps allowed."""

    def __init__(self, sgt: Any):
        self.sgt = sgt

    def ranges(self) -> tuple[np.ndarray, np.ndarray]:
        return _checked_pair(*self.sgt.sg_entries())


def dma_map_sgtable(dev, sgt: Any, direction: str = "bidirectional") -> DmaList:
    """``dma_map_sgtable``: map the table's entries and write the DMA fields into them.

    The entries go to the backend as stored (``sgt.sg_entries()``, as ``for_each_sg`` walks
    them), not merged. Entries may overlap, as in the kernel (a bio can carry ``ZERO_PAGE``
    more than once); dma-debug's cacheline check is what objects to overlapping mappings the
    device may write. Zero lengths and ends past 2^64 are refused. Sets ``sgt.nents`` through
    ``sgt.set_dma``; the live mapping is kept in ``sgt.mapping`` and returned (for its counters).
    """
    if getattr(sgt, "mapping", None) is not None:
        raise ValueError("dma_map_sgtable: this table is already mapped")
    dma_list = dma_map(dev, _SgEntries(sgt), direction, split=False)
    try:
        sgt.set_dma(dma_list.dma_addr, dma_list.length)
    except Exception:
        dma_unmap(dev, dma_list)
        raise
    sgt.mapping = dma_list
    return dma_list


def dma_unmap_sgtable(dev, sgt: Any, direction: str = "bidirectional") -> DmaStats:
    """``dma_unmap_sgtable``."""
    dma_list = getattr(sgt, "mapping", None)
    if dma_list is None or not dma_list.mapped:
        raise ValueError("dma_unmap_sgtable: this table is not mapped")
    stats = dma_unmap(dev, dma_list, direction)
    sgt.mapping = None
    return stats
