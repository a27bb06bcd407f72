"""Reliability campaign (issue 7): invariants, fault injection with complete unwind, dma-debug
as an oracle, hostile input. ``python -m phyrlab.reliability`` (``make reliability``) runs the big
campaign and prints how many cases ran, faults injected, hostile inputs tried and failures found;
``tests/test_invariants.py``, ``test_faults.py``, ``test_debug_oracle.py`` and
``test_hostile_input.py`` run the same checks with hypothesis at a size ``make test`` can afford.

What one case checks (:func:`check_case`), as the kernel's DMA-API debugging
(kernel/dma/debug.c) and fault injection (lib/fault-inject.c, ``fail_iommu``,
``failslab``) check a driver:

- map then unmap gives every resource back: ``dev.resources()`` all zero and the holdings of
  every allocator (:func:`holdings`: IOVA tree, page-table leaves, swiotlb slots, table bitmaps
  and PTEs, grant references, VDUSE bounce maps) equal to what they were before;
- every DMA segment respects ``dma_mask``/``bus_dma_limit`` (``dma_capable``), ``max_seg_size``
  and ``seg_boundary_mask`` (``check_sg_segment`` of dma-debug, which the kernel only warns on);
- the DMA-side list covers every byte of the CPU-side list exactly once: each DMA byte is
  translated back (:func:`dma_to_phys`: the backend's own page table, TCE/GATT table, grant
  table, bounce-slot ``orig_addr``...) and the result, merged, equals the CPU-side ranges;
- the CPU-side list (every array of the layout object) is byte-for-byte unchanged;
- the two-step IOVA API (``dma_map_iova``) maps the same bytes as ``dma_map`` and gives
  everything back too;
- with ``debug=True`` the calls go through :class:`~phyrlab.dma.DmaDebug` (map, sync both ways,
  unmap, driver unbind) and any dma-debug report is a failure.
A mapping may fail (``DmaMappingError`` with the kernel's errno): then nothing may be held.
Any other exception is a failure.
Simplified: ``min_align_mask`` is left 0; Xen swiotlb's direct entries are checked forward
(``xen_phys_to_dma`` of the CPU entry) because inverting its 16 GiB P2M per case is too slow.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from phyrlab import faults
from phyrlab.dma import OPS, Device, DmaDebug, dma_map, dma_map_iova, dma_unmap
from phyrlab.dma.ops import DMA_DIRECTIONS, dma_limit
from phyrlab.errors import DmaMappingError
from phyrlab.layouts import LAYOUTS
from phyrlab.memory import fragmented_pfns
from phyrlab.units import DMA_BIT_MASK, PAGE_SHIFT, PAGE_SIZE, U64_MAX

U64 = np.uint64
#: every backend: dma-direct (no ops) plus the 24 rows of the catalogue.
BACKENDS: tuple[str, ...] = ("dma_direct", *OPS)
#: fault points of :mod:`phyrlab.faults` that a DMA mapping can reach.
DMA_FAULT_POINTS = ("iova_alloc", "pt_alloc", "swiotlb_slot", "grant_alloc",
                    "iommu_area_alloc", "bounce_alloc")
#: errnos ``dma_map_sgtable`` may return (kernel/dma/mapping.c ``__dma_map_sg_attrs``).
MAP_ERRNOS = frozenset({"EINVAL", "ENOMEM", "EIO", "EREMOTEIO"})
DIRECTIONS = tuple(d for d in DMA_DIRECTIONS if d != "none")
_LOW_PFN = 0x1000          # 16 MiB: inside ps3's 240 MiB linear region
_HIGH_PFN = 0x140000       # 5 GiB: beyond a 32-bit mask, inside Xen's 16 GiB P2M


#: Segment rules a backend breaks in the kernel too (dma-debug's ``check_sg_segment`` would
#: warn): (backend, rule) -> the kernel code that breaks it. Violations are counted, not failed.
KERNEL_WAIVERS: dict[tuple[str, str], str] = {
    ("alpha_pci_ops", "boundary"): "sg_classify merges adjacent entries up to max_seg_size "
                                   "with no segment-boundary test",
    ("dma_iommu_ops", "boundary"): "ppc_iommu_map_sg merges when dma_addr == dma_next and "
                                   "the length fits max_seg_size, no boundary test",
    ("vio_dma_mapping_ops", "boundary"): "vio_dma_iommu_map_sg is ppc_iommu_map_sg (as above)",
    ("xen_grant_dma_ops", "boundary"): "gnttab_alloc_grant_reference_seq takes consecutive "
                                       "references with no boundary",
    ("s390_pci_dma_ops", "mask"): "dma_alloc_address allocates from start_dma (4 GiB) with no "
                                  "dma_mask test",
}


#: Model bugs found by this campaign, reported and pinned by strict xfail tests in
#: tests/test_faults.py: name -> text that identifies the failure. The runner counts them
#: apart from new failures.
KNOWN_BUGS: dict[str, str] = {}


class InvariantError(AssertionError):
    """An invariant did not hold; the message names the case and what broke."""


@dataclass(frozen=True)
class Case:
    """One random workload on one backend and layout."""

    backend: str
    layout: str
    seed: int = 0
    npages: int = 8
    mean_run: float = 2.0
    offset: int = 0            # bytes into the first page
    tail: int = 0              # bytes left unused in the last page
    high: bool = False         # memory above 4 GiB
    mask_bits: int = 32
    max_seg: int = 0x10000
    boundary_bits: int = 64    # seg_boundary_mask = 2^bits - 1 (64: none)
    direction: str = "bidirectional"
    untrusted: bool = False

    def memory(self) -> tuple[np.ndarray, int, int]:
        """``(pfns, offset, size)`` of the buffer."""
        base = _HIGH_PFN if self.high else _LOW_PFN
        pfns = fragmented_pfns(self.npages, self.mean_run, self.seed, base)
        size = self.npages * PAGE_SIZE - self.offset - self.tail
        return pfns, self.offset, size

    def layout_object(self) -> Any:
        return LAYOUTS[self.layout].from_pages(*self.memory())

    def device(self) -> Device:
        """A fresh device on this backend with this case's limits."""
        ops = None if self.backend == "dma_direct" else self.backend
        boundary = U64_MAX if self.boundary_bits >= 64 else (1 << self.boundary_bits) - 1
        dev = Device(ops, max_seg_size=self.max_seg, seg_boundary_mask=boundary,
                     untrusted=self.untrusted)
        for bits in (self.mask_bits, 64):                  # the driver's dma_set_mask fallback
            try:
                dev.dma_set_mask_and_coherent(DMA_BIT_MASK(bits))
                break
            except ValueError:
                continue
        _ = dev.dma_io_tlb_mem                              # swiotlb_dev_init: pool exists
        return dev


def random_case(rng: np.random.Generator, backend: str | None = None,
                layout: str | None = None) -> Case:
    """A seeded random :class:`Case` (sizes, contiguity, offsets, device limits)."""
    npages = int(rng.integers(1, 65))
    offset = int(rng.choice([0, 0, int(rng.integers(1, PAGE_SIZE))]))
    room = npages * PAGE_SIZE - offset
    tail = int(rng.integers(0, min(PAGE_SIZE, room))) if rng.random() < 0.5 else 0
    return Case(
        backend=backend or str(rng.choice(BACKENDS)),
        layout=layout or str(rng.choice(list(LAYOUTS))),
        seed=int(rng.integers(0, 2**31)), npages=npages,
        mean_run=float(rng.choice([1.0, 2.0, 4.0, 16.0, 64.0])), offset=offset, tail=tail,
        high=bool(rng.random() < 0.3), mask_bits=int(rng.choice([32, 36, 40, 64])),
        max_seg=int(rng.choice([PAGE_SIZE, 0x10000, 0x20000, 0x10_0000, 0xFFFF_F000])),
        boundary_bits=int(rng.choice([16, 20, 32, 64])),
        direction=str(rng.choice(DIRECTIONS)), untrusted=bool(rng.random() < 0.2))


# --------------------------------------------------------------------------- state
def _digest(*arrays: Any) -> str:
    h = hashlib.sha1()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes() if isinstance(a, np.ndarray) else
                 repr(a).encode())
    return h.hexdigest()


def holdings(dev: Device) -> dict[str, Any]:
    """What every allocator of ``dev`` holds, comparable before/after (hints left out).

    Allocation cursors (``next_bit``, ``area_index``, IOVA cached nodes, range caches, lazily
    freed IOVA) are hints the kernel does not rewind either, so they are not holdings.
    """
    out: dict[str, Any] = {"resources": {k: v for k, v in dev.resources().items() if v}}
    ops = dev.ops
    fam = ops.family
    if dev.has_io_tlb_mem():
        out["swiotlb"] = _digest(*dev.dma_io_tlb_mem.snapshot())
    if fam == "iommu_dma":
        out["domain"] = ops.domain.snapshot()
    elif fam == "single_level":
        out["table"] = _digest(ops.table.map, ops.table.ptes, ops.cmo_allocated)
    elif fam == "s390":
        out["table"] = _digest(ops.bitmap.map & ~ops.lazy, ops.ptes)
    elif ops.name == "xen_grant_dma_ops":
        out["grants"] = _digest(ops.free)
    elif fam == "vduse":
        out["vduse"] = _digest(ops.iova_used, ops.orig_phys, sorted(ops.live.items()))
    return out


def cpu_state(x: Any) -> str:
    """Digest of every array the layout object holds (the CPU-side list, byte for byte)."""
    parts = []
    for k, v in sorted(vars(x).items()):
        parts.append(k)
        parts.append(v if isinstance(v, np.ndarray) else repr(v))
    return _digest(*parts)


# --------------------------------------------------------------------------- translation
def _pieces(dma: np.ndarray, length: np.ndarray, step: int = 1 << 11
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut DMA segments at every ``step`` line: (start, length, segment index) per piece."""
    first = np.minimum(U64(step) - (dma & U64(step - 1)), length)
    counts = (1 + (length - first + U64(step - 1)) // U64(step)).astype(np.intp)
    idx = np.repeat(np.arange(dma.size), counts)
    k = (np.arange(idx.size) - np.repeat(np.cumsum(counts) - counts, counts)).astype(U64)
    f = first[idx]
    off = np.where(k == 0, U64(0), f + (k - U64(1)) * U64(step))
    piece = np.where(k == 0, f, np.minimum(U64(step), length[idx] - off))
    return dma[idx] + off, piece, idx


def _pool_to_orig(mem: Any, view: Any, t: np.ndarray) -> np.ndarray:
    """swiotlb bounce-buffer address -> the original physical address (``orig_addr``)."""
    from phyrlab.dma.swiotlb import INVALID_PHYS_ADDR, IO_TLB_SHIFT, swiotlb_align_offset

    rel = t - U64(mem.start)
    slot = (rel >> U64(IO_TLB_SHIFT)).astype(np.int64)
    orig = mem.orig_addr[slot]
    if np.any(orig == U64(INVALID_PHYS_ADDR)):
        raise InvariantError("a DMA address points into a free swiotlb slot")
    align = np.array([swiotlb_align_offset(view, int(o)) for o in orig], dtype=U64)
    return orig + (rel & U64((1 << IO_TLB_SHIFT) - 1)) - align


def dma_to_phys(dev: Device, dma: np.ndarray, length: np.ndarray, *, two_step: bool = False,
                translated: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Where each DMA byte lands in physical memory, as the backend's own tables say.

    Returns ``(phys, length)`` pieces in DMA-list order (at most 2 KiB each, unmerged).
    """
    ops, fam = dev.ops, dev.ops.family
    d, n, seg = _pieces(np.asarray(dma, dtype=U64), np.asarray(length, dtype=U64))
    mem = dev.dma_io_tlb_mem if dev.has_io_tlb_mem() else None
    view = dev
    if fam == "direct":
        p = dev.dma_to_phys_array(d)
    elif fam == "iommu_dma":
        p = ops.domain.pt.iova_to_phys_many(d)
        if np.any(p == 0):
            raise InvariantError("a DMA address is not mapped in the IOMMU page table")
        if two_step:
            from phyrlab.dma.iova_state import _GranuleAligned
            view = _GranuleAligned(dev, ops.granule)
    elif fam == "single_level":
        lo, hi = ops.aperture
        io = ops.p.io_page
        inside = (d >= U64(lo)) & (d < U64(hi))
        if translated is not None:               # the cookie says which went through the table
            inside &= np.asarray(translated, dtype=bool)[seg]
        idx = ((d[inside] - U64(lo)) >> U64(ops.p.io_page_shift)).astype(np.int64)
        pte = ops.table.ptes[idx]
        if np.any(pte == 0):
            raise InvariantError("a DMA address hits an invalid IOMMU table entry")
        p = d.copy()
        p[inside] = (pte & ~U64(io - 1)) + (d[inside] & U64(io - 1))
        wbase, wsize = ops.p.window
        win = ~inside & (d >= U64(wbase)) & (d < U64(wbase + wsize)) if wsize else None
        if win is not None:
            p[win] = d[win] - U64(wbase)
    elif fam == "s390":
        idx = ((d - U64(ops.start_dma)) >> U64(PAGE_SHIFT)).astype(np.int64)
        pte = ops.ptes[idx]
        if np.any(pte == 0):
            raise InvariantError("a DMA address hits an invalid s390 page-table entry")
        p = (pte & ~U64(PAGE_SIZE - 1)) + (d & U64(PAGE_SIZE - 1))
    elif fam == "linear":
        p = d - U64(ops.bus_base)
    elif ops.name == "xen_grant_dma_ops":
        from phyrlab.dma.xen import XEN_GRANT_DMA_ADDR_OFF
        ref = ((d & ~U64(XEN_GRANT_DMA_ADDR_OFF)) >> U64(PAGE_SHIFT)).astype(np.int64)
        if np.any(ops.free[ref]):
            raise InvariantError("a DMA address names a free grant reference")
        p = (ops.frames[ref] << U64(PAGE_SHIFT)) + (d & U64(PAGE_SIZE - 1))
    elif fam == "vduse":
        pfn = (d >> U64(PAGE_SHIFT)).astype(np.int64)
        orig = ops.orig_phys[pfn]
        if np.any(orig == U64(U64_MAX)):
            raise InvariantError("a DMA address hits a VDUSE page with no bounce map")
        p = orig + (d & U64(PAGE_SIZE - 1))
    elif ops.name == "xen_swiotlb_dma_ops":   # pool addresses only, see module doc
        lo, _ = ops._pool_dma(ops._pool(dev))
        p = d - U64(lo) + U64(ops._pool(dev).start)
    else:
        raise InvariantError(f"no DMA->phys translation for family {fam!r}")
    if mem is not None:
        in_pool = (p >= U64(mem.start)) & (p < U64(mem.end))
        if in_pool.any():
            p = p.copy()
            p[in_pool] = _pool_to_orig(mem, view, p[in_pool])
    return p, n


def _merged(addr: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from phyrlab.layouts import merge_ranges

    return merge_ranges(np.asarray(addr, dtype=U64), np.asarray(length, dtype=U64))


def _device_segments(dev: Device, addr: np.ndarray, length: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    from phyrlab.dma.mapping import split_for_device

    return split_for_device(addr, length, dev.max_seg_size, dev.seg_boundary_mask)


def _translated(dev: Device, dl: Any, seg_a: np.ndarray, seg_n: np.ndarray
                ) -> np.ndarray | None:
    """Single-level tables: which DMA entries went through the table (else bypassed)."""
    ops = dev.ops
    if ops.family != "single_level":
        return None
    flags = getattr(dl.cookie, "translated", None)
    if flags is not None:
        return flags
    if seg_a.size != len(dl):                # per range: one DMA entry per device segment
        raise InvariantError(f"{len(dl)} DMA entries for {seg_a.size} device segments")
    return np.array([ops._bypass_one(dev, int(a), int(n)) is None
                     for a, n in zip(seg_a.tolist(), seg_n.tolist(), strict=True)], dtype=bool)


def check_coverage(dev: Device, dl: Any, addr: np.ndarray, length: np.ndarray, *,
                   two_step: bool = False) -> None:
    """Every byte of the CPU list is covered exactly once by the DMA list, in order.

    ``two_step``: ``dl`` is one linked IOVA range of :func:`dma_map_iova`.
    """
    total = int(length.sum(dtype=U64))
    if dl.total_length != total:
        raise InvariantError(f"DMA list covers {dl.total_length} bytes, CPU list {total}")
    seg_a, seg_n = _device_segments(dev, addr, length)
    if dev.ops.name == "xen_swiotlb_dma_ops":
        # one DMA entry per device segment (xen_swiotlb_map_sg); direct ones checked forward
        if seg_a.size != len(dl):
            raise InvariantError(f"{len(dl)} DMA entries for {seg_a.size} device segments")
        bounced = np.asarray(dl.bounced, dtype=bool)
        keep = ~bounced
        if np.any(keep) and not np.array_equal(dev.ops.phys_to_dma(seg_a[keep]),
                                               dl.dma_addr[keep]):
            raise InvariantError("xen_swiotlb direct entries are not xen_phys_to_dma of "
                                 "their CPU segments")
        if np.any(bounced):
            p, n = dma_to_phys(dev, dl.dma_addr[bounced], dl.length[bounced])
            _same(_merged(p, n), _merged(seg_a[bounced], seg_n[bounced]), "bounced entries")
        return
    flags = None if two_step else _translated(dev, dl, seg_a, seg_n)
    p, n = dma_to_phys(dev, dl.dma_addr, dl.length, two_step=two_step, translated=flags)
    _same(_merged(p, n), _merged(addr, length), "DMA list")


def _same(got, want, what: str) -> None:
    if not (np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])):
        raise InvariantError(
            f"{what} translates back to {got[0].size} physical ranges "
            f"{list(zip(got[0][:4].tolist(), got[1][:4].tolist(), strict=False))}... but the "
            f"CPU list is {want[0].size} ranges "
            f"{list(zip(want[0][:4].tolist(), want[1][:4].tolist(), strict=False))}...")


def check_segments(dev: Device, dl: Any, waived: Counter | None = None) -> None:
    """Each DMA segment is below the DMA limit, within ``max_seg_size`` and the boundary.

    A rule in :data:`KERNEL_WAIVERS` for this backend is counted in ``waived``, not raised.
    """
    d, n = dl.dma_addr, dl.length
    if d.size == 0 or np.any(n == 0):
        raise InvariantError("empty DMA list or a zero-length DMA segment")
    end = d + (n - U64(1))
    if np.any(end < d):
        raise InvariantError("a DMA segment wraps past 2^64")
    limit = dma_limit(dev)
    m = U64(dev.seg_boundary_mask)
    rules = (
        ("mask", end > U64(limit), f"is beyond the DMA limit {limit:#x}"),
        ("max_seg", n > U64(dev.max_seg_size), f"is longer than max_seg_size "
                                               f"{dev.max_seg_size:#x}"),
        ("boundary", ((d ^ end) & ~m) != 0, f"crosses the {dev.seg_boundary_mask + 1:#x} "
                                            "boundary"),
    )
    for rule, bad, text in rules:
        idx = np.flatnonzero(bad)
        if not idx.size:
            continue
        if (dev.ops_name, rule) in KERNEL_WAIVERS and waived is not None:
            waived[(dev.ops_name, rule)] += int(idx.size)
            continue
        i = int(idx[0])
        raise InvariantError(f"DMA segment {i} [{int(d[i]):#x}, +{int(n[i]):#x}) {text}")


# --------------------------------------------------------------------------- one case
@dataclass
class Outcome:
    """What :func:`check_case` saw: ``"ok"`` or the errno, for one-step and two-step."""

    one_step: str
    two_step: str
    checks: int = 0
    one_step_error: str = ""
    waived: Counter = field(default_factory=Counter)


def _expect_same(before: dict, dev: Device, what: str) -> None:
    after = holdings(dev)
    if after != before:
        diff = {k: (before.get(k), after.get(k)) for k in set(before) | set(after)
                if before.get(k) != after.get(k)}
        raise InvariantError(f"{what}: resources not given back: {diff}")


def check_case(case: Case, *, debug: bool = False, two_step: bool = True) -> Outcome:
    """Run every invariant on ``case``; raise :class:`InvariantError` naming what broke."""
    try:
        return _check_case(case, debug, two_step)
    except InvariantError as exc:
        raise InvariantError(f"{case}: {exc}") from None


def _check_case(case: Case, debug: bool, two_step: bool) -> Outcome:
    x = case.layout_object()
    addr, length = (a.copy() for a in x.ranges())
    cpu0 = cpu_state(x)
    dev = case.device()
    dbg = DmaDebug(dev) if debug else None
    before = holdings(dev)
    out = Outcome("ok", "-")
    try:
        dl = (dbg.dma_map(x, case.direction) if dbg is not None
              else dma_map(dev, x, case.direction))
    except DmaMappingError as exc:
        if exc.errno not in MAP_ERRNOS:
            raise InvariantError(f"map failed with {exc.errno}, not a DMA API errno") from None
        out.one_step, out.one_step_error = exc.errno, str(exc)
        _expect_same(before, dev, f"failed map ({exc})")
        dl = None
    if dl is not None:
        check_segments(dev, dl, out.waived)
        check_coverage(dev, dl, addr, length)
        if dbg is not None:
            dbg.dma_sync_for_cpu(dl)
            dbg.dma_sync_for_device(dl)
            dbg.dma_unmap(dl)
        else:
            dma_unmap(dev, dl)
        out.checks += 3
        _expect_same(before, dev, "map then unmap")
    if dbg is not None:
        dbg.driver_unbind()
        reports = [e for e in dbg.errors if not _waived_report(dev, e, out.waived)]
        if reports:
            raise InvariantError("dma-debug reported: " + " | ".join(reports))
        out.checks += 1
    if cpu_state(x) != cpu0 or not all(np.array_equal(a, b) for a, b in
                                       zip(x.ranges(), (addr, length), strict=True)):
        raise InvariantError("the CPU-side list changed")
    out.checks += 2
    if two_step:
        out.two_step = _check_two_step(case, x, addr, length, out)
        out.checks += 1
    return out


def _waived_report(dev: Device, report: str, waived: Counter) -> bool:
    """A dma-debug ``check_sg_segment`` report for a rule the backend breaks in the kernel."""
    rule = ("boundary" if "across boundary" in report else
            "max_seg" if "longer than device claims" in report else None)
    return rule is not None and (dev.ops_name, rule) in KERNEL_WAIVERS and \
        waived[(dev.ops_name, rule)] > 0


def _check_two_step(case: Case, x: Any, addr, length, out: Outcome) -> str:
    dev = case.device()
    before = holdings(dev)
    try:
        dl = dma_map_iova(dev, x, case.direction)
    except DmaMappingError as exc:
        _expect_same(before, dev, f"failed two-step map ({exc})")
        if out.one_step == "ok":
            raise InvariantError(f"dma_map succeeded but dma_map_iova failed: {exc}") from None
        return exc.errno
    iova = type(dl.cookie).__name__ == "DmaIovaState"
    if out.one_step != "ok" and iova:
        raise InvariantError(f"dma_map failed ({out.one_step_error}) but dma_map_iova linked "
                             "one IOVA range")
    if iova:          # one range for the request: only the DMA limit applies to it
        if int(dl.dma_addr[0]) + int(dl.length[0]) - 1 > dma_limit(dev):
            raise InvariantError("the two-step IOVA range is beyond the DMA limit")
    else:
        check_segments(dev, dl, out.waived)
    check_coverage(dev, dl, addr, length, two_step=iova)
    dma_unmap(dev, dl)
    _expect_same(before, dev, "two-step map then unmap")
    return "ok"


# --------------------------------------------------------------------------- faults
@dataclass
class FaultResult:
    """One fault-injection run: the point, N, times, and what happened."""

    point: str
    nth: int
    times: int
    outcome: str          # errno, or "ok" when the model retried around the fault


def fault_sweep(case: Case, point: str, *, times_list: tuple[int, ...] = (1, 1 << 30),
                two_step: bool = False) -> list[FaultResult]:
    """Make the Nth call at ``point`` fail for every N the mapping reaches, and check unwind.

    The calls are counted with a clean run first (``faults.stats``); each N then runs on a
    fresh device. A failure must be a :class:`DmaMappingError` with a DMA API errno and leave
    :func:`holdings` as before; a mapping that retries around the fault must still unmap
    cleanly and cover its list.
    """
    x = case.layout_object()
    addr, length = (a.copy() for a in x.ranges())
    mapper = dma_map_iova if two_step else dma_map
    dev = case.device()
    faults.stats.calls.pop(point, None)
    try:
        dl = mapper(dev, x, case.direction)
    except DmaMappingError:
        dl = None
    calls = faults.stats.calls.get(point, 0)
    if dl is not None:
        dma_unmap(dev, dl)
    results = []
    for times in times_list:
        for nth in range(1, calls + 1):
            dev = case.device()
            before = holdings(dev)
            what = f"{case}: {point} nth={nth} times={times}"
            with faults.inject(point, nth=nth, times=times):
                try:
                    dl = mapper(dev, x, case.direction)
                except DmaMappingError as exc:
                    if exc.errno not in MAP_ERRNOS:
                        raise InvariantError(f"{what}: errno {exc.errno}") from None
                    _expect_same(before, dev, f"{what} ({exc})")
                    results.append(FaultResult(point, nth, times, exc.errno))
                    continue
                except InvariantError:
                    raise
                except Exception as exc:
                    raise InvariantError(f"{what}: {type(exc).__name__}: {exc}") from exc
            try:
                iova = type(dl.cookie).__name__ == "DmaIovaState"
                if not iova:
                    check_segments(dev, dl, Counter())
                check_coverage(dev, dl, addr, length, two_step=iova)
                dma_unmap(dev, dl)
                _expect_same(before, dev, f"{what} (retried, then unmapped)")
            except InvariantError as exc:
                raise InvariantError(f"{what}: {exc}") from None
            results.append(FaultResult(point, nth, times, "ok"))
    return results


# --------------------------------------------------------------------------- dma-debug misuse
def _misuse_dev() -> tuple[Device, DmaDebug]:
    dev = Device(dma_mask=DMA_BIT_MASK(64), max_seg_size=0x10000, seg_boundary_mask=0xFFFF)
    return dev, DmaDebug(dev, driver="wrong_driver")


def _ranges(*pairs: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([a for a, _ in pairs], dtype=U64), np.array([n for _, n in pairs], dtype=U64))


def _drv_never_mapped(d: DmaDebug) -> None:
    d.dma_unmap_phys(0x1234_5000, 4096)


def _drv_invalid_addr(d: DmaDebug) -> None:
    d.dma_unmap_phys(0xFFFF_FFFF_FFFF_FFFF, 4096)


def _drv_double_unmap(d: DmaDebug) -> None:
    a = d.dma_map_phys(0x10_0000, 4096)
    d.dma_mapping_error(a)
    d.dma_unmap_phys(a, 4096)
    d.dma_unmap_phys(a, 4096)


def _drv_wrong_size(d: DmaDebug) -> None:
    a = d.dma_map_phys(0x10_0000, 8192)
    d.dma_mapping_error(a)
    d.dma_unmap_phys(a, 4096)


def _drv_wrong_direction(d: DmaDebug) -> None:
    a = d.dma_map_phys(0x10_0000, 4096, "to_device")
    d.dma_mapping_error(a)
    d.dma_unmap_phys(a, 4096, "from_device")


def _drv_wrong_function(d: DmaDebug) -> None:
    dl = d.dma_map(_ranges((0x10_0000, 4096)))
    d.dma_unmap_phys(int(dl.dma_addr[0]), 4096)


def _drv_wrong_nents(d: DmaDebug) -> None:
    dl = d.dma_map(_ranges((0x10_0000, 4096), (0x30_0000, 4096)))
    d.dma_unmap(dl, nents=1)


def _drv_unchecked_error(d: DmaDebug) -> None:
    a = d.dma_map_phys(0x10_0000, 4096)
    d.dma_unmap_phys(a, 4096)


def _drv_sync_unmapped(d: DmaDebug) -> None:
    d.dma_sync_single_for_cpu(0x5555_0000, 4096, "from_device")


def _drv_sync_wrong_direction(d: DmaDebug) -> None:
    a = d.dma_map_phys(0x10_0000, 4096, "to_device")
    d.dma_mapping_error(a)
    d.dma_sync_single_for_device(a, 4096, "from_device")
    d.dma_unmap_phys(a, 4096, "to_device")


def _drv_sync_read_only_for_cpu(d: DmaDebug) -> None:
    a = d.dma_map_phys(0x10_0000, 4096, "to_device")
    d.dma_mapping_error(a)
    d.dma_sync_single_for_cpu(a, 4096, "from_device")
    d.dma_unmap_phys(a, 4096, "to_device")


def _drv_overlap(d: DmaDebug) -> None:
    for _ in range(2):
        a = d.dma_map_phys(0x10_0000, 4096, "from_device")
        d.dma_mapping_error(a)


def _drv_leak(d: DmaDebug) -> None:
    a = d.dma_map_phys(0x10_0000, 4096)
    d.dma_mapping_error(a)


class _IgnoresLimits:
    """A backend that ignores the device's segment limits: merges everything into one."""

    def __init__(self, ops: Any):
        self._ops = ops

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ops, name)

    def map_sg(self, dev, addr, length, direction):
        return (np.array([addr[0]], dtype=U64), np.array([length.sum(dtype=U64)], dtype=U64),
                None)

    def unmap_sg(self, dev, dma, dlen, direction, cookie):
        return None


def _drv_segment_too_long(d: DmaDebug) -> None:
    d.dev.ops = _IgnoresLimits(d.dev.ops)
    dl = d.dma_map(_ranges((0x10_0000, 0x10000), (0x11_0000, 0x10000)))
    d.dma_unmap(dl)


#: One deliberately wrong driver per misuse class of kernel/dma/debug.c, and the report
#: wording it must produce.
MISUSE_DRIVERS: dict[str, tuple[Any, str]] = {
    "free never mapped": (_drv_never_mapped, "tries to free DMA memory it has not allocated"),
    "free DMA_MAPPING_ERROR": (_drv_invalid_addr, "tries to free an invalid DMA memory address"),
    "double unmap": (_drv_double_unmap, "tries to free DMA memory it has not allocated"),
    "wrong size": (_drv_wrong_size, "frees DMA memory with different size"),
    "wrong direction": (_drv_wrong_direction, "frees DMA memory with different direction"),
    "wrong function": (_drv_wrong_function, "frees DMA memory with wrong function"),
    "wrong entry count": (_drv_wrong_nents, "frees DMA sg list with different entry count"),
    "unchecked map error": (_drv_unchecked_error, "failed to check map error"),
    "sync of unmapped": (_drv_sync_unmapped, "tries to sync DMA memory it has not allocated"),
    "sync wrong direction": (_drv_sync_wrong_direction,
                             "syncs DMA memory with different direction"),
    "sync read-only for cpu": (_drv_sync_read_only_for_cpu,
                               "syncs device read-only DMA memory for cpu"),
    "overlapping writable": (_drv_overlap, "cacheline tracking EEXIST"),
    "leak at unbind": (_drv_leak, "has pending DMA allocations while released from device"),
    "segment too long / across boundary": (_drv_segment_too_long,
                                           "mapping sg segment longer than device claims"),
}


def run_misuse_driver(name: str) -> list[str]:
    """Run one wrong driver under dma-debug (then unbind); its reports."""
    drv, _ = MISUSE_DRIVERS[name]
    dev, d = _misuse_dev()
    drv(d)
    d.driver_unbind()
    return d.errors


def run_misuse(t: Tally) -> int:
    """Every misuse class must be reported with the kernel's wording; count those detected."""
    found = 0
    for name, (_, want) in MISUSE_DRIVERS.items():
        try:
            errors = run_misuse_driver(name)
        except Exception as exc:  # noqa: BLE001
            _fail(t, f"misuse {name}", exc)
            continue
        if any(want in e for e in errors):
            found += 1
        else:
            t.failures.append(f"misuse {name}: not detected ({errors})")
    return found


# --------------------------------------------------------------------------- hostile input
def _data_dir() -> Any:
    from pathlib import Path

    return Path(__file__).resolve().parent.parent


def seed_files() -> dict[str, list[Any]]:
    """The real input files each loader is fuzzed from, by loader."""
    root = _data_dir()
    return {"topology": sorted((root / "data" / "topologies").glob("*.yaml")),
            "workload": sorted((root / "data" / "workloads").glob("*.yaml")),
            "lspci": sorted((root / "tests" / "data" / "lspci").glob("*.txt"))}


def load_input(kind: str, data: bytes, path: Any) -> Any:
    """Write ``data`` to ``path`` and load it with the project's loader for ``kind``."""
    from phyrlab import pci, workloads

    if kind == "lspci":
        text = data.decode("utf-8", "replace")
        return pci.parse_lspci_tv(text, origin=str(path))
    path.write_bytes(data)
    if kind == "topology":
        return pci.load(path)
    return workloads.load(path)


def mutate(rng: np.random.Generator, data: bytes) -> bytes:
    """One random mutation: truncate, flip/insert/delete bytes, duplicate or drop a line,
    swap a number for a huge, negative or non-numeric one, or splice YAML syntax in."""
    op = int(rng.integers(0, 8))
    b = bytearray(data)
    if not b:
        return bytes(rng.integers(0, 256, 8, dtype=np.uint8))
    i = int(rng.integers(0, len(b)))
    if op == 0:
        return bytes(b[:i])
    if op == 1:
        b[i] = int(rng.integers(0, 256))
        return bytes(b)
    if op == 2:
        return bytes(b[:i] + bytes(rng.integers(0, 256, int(rng.integers(1, 9)),
                                                dtype=np.uint8)) + b[i:])
    if op == 3:
        return bytes(b[:i] + b[i + int(rng.integers(1, 40)):])
    lines = bytes(b).split(b"\n")
    j = int(rng.integers(0, len(lines)))
    if op == 4:
        lines.insert(j, lines[j])
    elif op == 5:
        del lines[j]
    elif op == 6:
        import re

        repl = [b"-1", b"0", b"0x" + b"f" * 40, b"1e999", b"nan", b"[]", b"{}", b"~", b"yes",
                b"99999999999999999999999", b"!!binary AAAA", b"&a [*a]"][int(rng.integers(0, 12))]
        lines[j] = re.sub(rb"[0-9a-fx]+", lambda m: repl, lines[j], count=1)
    else:
        junk = [b"- ", b": ", b"  ", b"\t", b"{", b"[", b"'", b'"', b"*x", b"&y ", b"? ",
                b"!!python/object:os.system ", b"---", b"..."][int(rng.integers(0, 14))]
        k = int(rng.integers(0, len(lines[j]) + 1))
        lines[j] = lines[j][:k] + junk + lines[j][k:]
    return b"\n".join(lines)


def check_hostile(kind: str, data: bytes, path: Any, *, time_limit: float = 5.0) -> str:
    """Load hostile ``data``: ``"loaded"`` or ``"refused"`` (``InputFileError`` naming the
    file); anything else raises :class:`InvariantError`."""
    from phyrlab.errors import InputFileError

    t0 = time.perf_counter()
    try:
        load_input(kind, data, path)
        outcome = "loaded"
    except InputFileError as exc:
        if str(path) not in str(exc):
            raise InvariantError(f"{kind}: InputFileError does not name the file: {exc}"
                                 ) from None
        outcome = "refused"
    except Exception as exc:
        raise InvariantError(f"{kind}: {type(exc).__name__} (not InputFileError): {exc} "
                             f"on input {data[:200]!r}") from exc
    if time.perf_counter() - t0 > time_limit:
        raise InvariantError(f"{kind}: took {time.perf_counter() - t0:.1f} s on "
                             f"{len(data)} bytes")
    return outcome


def run_hostile(t: Tally, n: int, seed: int) -> None:
    """``n`` mutated (1-4 mutations) inputs per loader from the real files, plus random text."""
    import tempfile
    from pathlib import Path

    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hostile.yaml"
        for kind, files in seed_files().items():
            seeds = [f.read_bytes() for f in files]
            for i in range(n):
                if i % 10 == 9:
                    data = bytes(rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8))
                else:
                    data = seeds[i % len(seeds)]
                    for _ in range(int(rng.integers(1, 5))):
                        data = mutate(rng, data)
                t.hostile_inputs += 1
                try:
                    t.hostile_outcomes[f"{kind} {check_hostile(kind, data, path)}"] += 1
                except Exception as exc:  # noqa: BLE001
                    _fail(t, "hostile", exc)


# --------------------------------------------------------------------------- the campaign
@dataclass
class Tally:
    """The figures ``make reliability`` prints."""

    cases: int = 0
    debug_cases: int = 0
    checks: int = 0
    outcomes: Counter = field(default_factory=Counter)
    faults_injected: int = 0
    fault_outcomes: Counter = field(default_factory=Counter)
    misuse_classes: int = 0
    hostile_inputs: int = 0
    hostile_outcomes: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    known: Counter = field(default_factory=Counter)
    waived: Counter = field(default_factory=Counter)


def _fail(t: Tally, what: str, exc: BaseException) -> None:
    for name, sign in KNOWN_BUGS.items():
        if sign in str(exc):
            t.known[name] += 1
            return
    t.failures.append(f"{what}: {type(exc).__name__}: {exc}"[:600])


def run_invariants(t: Tally, n: int, seed: int, debug_every: int = 3) -> None:
    """``n`` random cases per backend (every layout in turn), every ``debug_every``th under
    dma-debug."""
    rng = np.random.default_rng(seed)
    layouts = list(LAYOUTS)
    for b in BACKENDS:
        for i in range(n):
            case = random_case(rng, b, layouts[i % len(layouts)])
            debug = i % debug_every == 0
            try:
                o = check_case(case, debug=debug)
                t.checks += o.checks
                t.waived.update(o.waived)
                t.outcomes[(b, o.one_step)] += 1
            except Exception as exc:  # noqa: BLE001 - every failure is counted and printed
                _fail(t, "invariant", exc)
            t.cases += 1
            t.debug_cases += debug


def run_faults(t: Tally, n_workloads: int, seed: int) -> None:
    """Every point x every N x (once, from N on) for small workloads on every backend."""
    rng = np.random.default_rng(seed)
    for b in BACKENDS:
        for i in range(n_workloads):
            case = random_case(rng, b, "phyr")
            case = Case(**{**asdict(case), "npages": min(case.npages, 12),
                           "untrusted": case.untrusted or i % 2 == 1,
                           "offset": case.offset or (0 if i % 3 else 512), "tail": 0})
            for point in DMA_FAULT_POINTS:
                for two in (False, True):
                    try:
                        res = fault_sweep(case, point, two_step=two)
                    except Exception as exc:  # noqa: BLE001
                        _fail(t, "fault", exc)
                        continue
                    t.faults_injected += len(res)
                    for r in res:
                        t.fault_outcomes[(b, point, r.outcome)] += 1
    faults.reset()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m phyrlab.reliability", description=__doc__
                                 .split("\n")[0])
    ap.add_argument("--cases", type=int, default=60, help="random cases per backend")
    ap.add_argument("--fault-workloads", type=int, default=4, help="workloads per backend "
                    "swept at every N of every fault point")
    ap.add_argument("--hostile", type=int, default=400, help="hostile inputs per loader")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    t = Tally()
    t0 = time.perf_counter()
    run_invariants(t, args.cases, args.seed)
    t1 = time.perf_counter()
    run_faults(t, args.fault_workloads, args.seed + 1)
    t2 = time.perf_counter()
    t.misuse_classes = run_misuse(t)
    run_hostile(t, args.hostile, args.seed + 2)
    t3 = time.perf_counter()
    print(f"phyrlab reliability (seed {args.seed})")
    print(f"  invariant cases: {t.cases} ({len(BACKENDS)} backends x {len(LAYOUTS)} layouts, "
          f"{t.debug_cases} under dma-debug), {t.checks} checks, {t1 - t0:.1f} s")
    ok = sum(v for (b, o), v in t.outcomes.items() if o == "ok")
    errs = Counter(o for (b, o), v in t.outcomes.items() for _ in range(v) if o != "ok")
    print(f"    mapped: {ok}; refused with errno (nothing held after): {dict(errs)}")
    for (b, rule), v in sorted(t.waived.items()):
        print(f"    kernel-faithful {rule} violations, {b}: {v} segments "
              f"({KERNEL_WAIVERS[(b, rule)]})")
    print(f"  faults injected: {t.faults_injected} over {', '.join(DMA_FAULT_POINTS)} "
          f"(every N, once and from N on, one-step and two-step), {t2 - t1:.1f} s")
    by_point = Counter()
    for (_b, p, o), v in t.fault_outcomes.items():
        by_point[(p, o)] += v
    for (p, o), v in sorted(by_point.items()):
        print(f"    {p:17s} -> {o:7s} {v}")
    print(f"  dma-debug misuse classes detected: {t.misuse_classes}")
    print(f"  hostile inputs tried: {t.hostile_inputs}, {t3 - t2:.1f} s")
    for k, v in sorted(t.hostile_outcomes.items()):
        print(f"    {k:34s} {v}")
    for name, v in t.known.items():
        print(f"  known model bug (reported, strict xfail): {name}: {v} cases")
    print(f"  failures found: {len(t.failures)}")
    for f in t.failures[:20]:
        print(f"    {f}")
    return 1 if t.failures else 0


if __name__ == "__main__":
    sys.exit(main())
