"""One workload through every ``dma_map_ops`` of Linux v6.2 and dma-direct (notebook 04).

For each row of :data:`phyrlab.dma.OPS` (and ``dma_direct``, the path of a device with no
ops) :func:`map_through` does what a driver does (kernel/dma/mapping.c, read in the stored
copy, a v6.x file with ``__dma_map_sg_attrs`` and ``map_page``):

1. ``dma_set_mask_and_coherent(dev, mask)``: ``dma_set_mask`` returns ``-EIO`` when
   ``ops->dma_supported`` refuses the mask (``ibmebus_dma_ops`` takes only 64 bits,
   ``dma_dummy_ops`` none). The result is recorded (``mask_ok``); the mapping is still tried
   with the mask the device was given, as a driver that ignores the error would.
2. ``dma_map_sgtable`` -> ``__dma_map_sg_attrs`` -> ``ops->map_sg``: the list is first cut to
   the device's ``max_seg_size``/``seg_boundary_mask`` (:func:`phyrlab.dma.dma_map`). In v6.2
   ``ps3_ioc0_dma_ops`` has ``map_sg = BUG(); return -EINVAL`` and ``vduse_dev_dma_ops`` has
   no ``map_sg`` at all (``__dma_map_sg_attrs`` calls ``ops->map_sg`` without a NULL check);
   the model maps their lists range by range through ``map_phys`` (``per_range``), which only
   a layout-independent API can do. :func:`map_sg_v62` shows what v6.2's ``map_sg`` gives.
3. ``dma_unmap_sgtable``; then every resource the backend took must be back
   (``Device.resources()`` all zero), after a failure too.

Figures per row: DMA segments out, bytes bounced (map + unmap copies), PTE/TCE/GATT writes,
IOTLB/STC/RPCIT flushes, hypercalls, and modelled time of one map + unmap cycle priced by
:mod:`phyrlab.cost` (``calls`` = 1 per ``map_sg``/``unmap_sg``, 1 per range when mapped range
by range). Simplified: one fresh device per row (empty tables and pools), one mapping; no
IOVA rcache warm-up, no concurrency.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from . import cost as _cost
from . import memory
from .dma import DMA_DIRECT, OPS, Device, dma_map, dma_unmap
from .dma.mapping import split_for_device
from .dma.swiotlb import DEFAULT_START, IO_TLB_DEFAULT_SIZE
from .errors import DmaMappingError
from .layouts import LAYOUTS
from .units import DMA_BIT_MASK, PAGE_SHIFT, SZ_64K, U32_MAX, ULONG_MAX, human_bytes
from .workloads import Buffer, build

#: Families in plot order, with the label a legend shows.
FAMILIES: dict[str, str] = {
    "direct": "dma-direct + swiotlb",
    "iommu_dma": "dma-iommu (IOMMU API)",
    "s390": "s390 3-level table",
    "single_level": "single-level table",
    "linear": "linear / identity",
    "xen": "Xen",
    "vduse": "VDUSE bounce domain",
    "dummy": "dummy",
}

#: ``dma_direct`` then the 24 OPS rows, grouped by family (catalogue order within a family).
ROWS: tuple[str, ...] = ("dma_direct", *(
    name for fam in FAMILIES for name, e in OPS.items() if e.family == fam))

#: Where the workload's pages sit in physical memory: its first PFN.
#: "high" is :data:`phyrlab.memory.DEFAULT_BASE_PFN` (4 GiB: above a 32-bit mask, as most
#: RAM of a large machine); "low" is 16 MiB (inside ps3's 256 MiB linear region and below
#: 4 GiB, as on a small machine).
PLACEMENTS: dict[str, int] = {"high": memory.DEFAULT_BASE_PFN, "low": 0x1000}

#: ``max_seg_size`` choices: ``dma_get_max_seg_size``'s 64 KiB default, 1 MiB, and
#: ``UINT_MAX`` (what a driver sets with ``dma_set_max_seg_size(dev, UINT_MAX)``).
MAX_SEG_SIZES = (SZ_64K, 1 << 20, U32_MAX)

#: Counters reported per row (map + unmap).
COUNTERS = ("bounce_bytes", "pte_writes", "iotlb_flushes", "hypercalls", "iova_allocs",
            "grants", "cache_maint_bytes", "table_pages")


def family_of(name: str) -> str:
    """The family of a row of :data:`ROWS`."""
    return DMA_DIRECT.family if name == "dma_direct" else OPS[name].family


@dataclass(frozen=True)
class Limits:
    """The device limits a driver sets: ``dma_set_mask_and_coherent(DMA_BIT_MASK(dma_bits))``,
    ``dma_set_max_seg_size``, ``dma_set_seg_boundary``."""

    dma_bits: int = 32
    max_seg_size: int = SZ_64K
    seg_boundary_mask: int = ULONG_MAX

    def __post_init__(self):
        if not 12 <= self.dma_bits <= 64:
            raise ValueError(f"dma_bits {self.dma_bits}: expected 12..64")

    def device(self, name: str) -> Device:
        """A fresh device of row ``name`` with these limits."""
        return Device(None if name == "dma_direct" else name,
                      dma_mask=DMA_BIT_MASK(self.dma_bits), max_seg_size=self.max_seg_size,
                      seg_boundary_mask=self.seg_boundary_mask)


@dataclass(frozen=True)
class BackendResult:
    """One row's figures for one mapping (counters are map + unmap; zero when refused)."""

    ops: str
    family: str
    file: str
    errno: str  # "" when the mapping succeeded, else "EINVAL", "ENOMEM", "EIO"...
    error: str  # the refusal's message
    mask_ok: bool  # dma_set_mask accepted the mask
    cpu_ranges: int  # ranges handed to the backend (after the cut to device segments)
    dma_segments: int
    per_range: bool  # mapped range by range through map_phys (no map_sg in v6.2)
    bounced_segments: int
    bounce_bytes: int
    pte_writes: int
    iotlb_flushes: int
    hypercalls: int
    iova_allocs: int
    grants: int
    cache_maint_bytes: int
    table_pages: int
    map_ns: float
    unmap_ns: float
    top_cost: str  # the counter that costs most in the model, e.g. "bounce_bytes"
    held_after: int  # resources still held after unmap (or after a failure): must be 0

    @property
    def ok(self) -> bool:
        return not self.errno

    @property
    def status(self) -> str:
        return "ok" if self.ok else f"-{self.errno}"

    @property
    def total_ns(self) -> float:
        return self.map_ns + self.unmap_ns


def _held(dev: Device) -> int:
    return int(sum(dev.resources().values()))


class _Segments:
    """A range list already cut to one device's segments (read-only), for ``dma_map(...,
    split=False)``: what ``dma_map`` would cut it to, computed once for all rows."""

    def __init__(self, ranges: Any, max_seg: int, boundary: int):
        from .layouts import as_ranges

        self.addr, self.length = split_for_device(*as_ranges(ranges), max_seg, boundary)
        self.addr.flags.writeable = False
        self.length.flags.writeable = False

    def ranges(self) -> tuple[np.ndarray, np.ndarray]:
        return self.addr, self.length


def _segments(ranges: Any, max_seg: int, boundary: int, cuts: dict | None) -> _Segments:
    if cuts is None:
        return _Segments(ranges, max_seg, boundary)
    if (max_seg, boundary) not in cuts:
        cuts[max_seg, boundary] = _Segments(ranges, max_seg, boundary)
    return cuts[max_seg, boundary]


def map_through(name: str, ranges: Any, limits: Limits = Limits(),
                cost_model: str = "x86-default", cuts: dict | None = None) -> BackendResult:
    """Map ``ranges`` (any layout or ``(addr, length)``) through row ``name`` and unmap it.

    ``cuts``: a dict shared by the rows that map the same ``ranges``, so the cut to device
    segments (``dma_map``'s ``split_for_device``) is made once per device limit.
    """
    if name not in ROWS:
        raise ValueError(f"unknown backend {name!r}: expected 'dma_direct' or one of "
                         f"{sorted(OPS)}")
    model = _model(cost_model)
    dev = limits.device(name)
    mask_ok = bool(dev.ops.dma_supported(dev, dev.dma_mask))
    entry = DMA_DIRECT if name == "dma_direct" else OPS[name]
    base = dict(ops=name, family=entry.family, file=entry.file, mask_ok=mask_ok)
    try:
        segs = _segments(ranges, dev.max_seg_size, dev.seg_boundary_mask, cuts)
        m = dma_map(dev, segs, "bidirectional", split=False)
    except DmaMappingError as exc:
        return BackendResult(**base, errno=exc.errno, error=str(exc), cpu_ranges=0,
                             dma_segments=0, per_range=not entry.supports_sg,
                             bounced_segments=0, **dict.fromkeys(COUNTERS, 0), map_ns=0.0,
                             unmap_ns=0.0, top_cost="", held_after=_held(dev))
    n_in = len(_segments(ranges, limits.max_seg_size, limits.seg_boundary_mask, cuts).addr)
    calls = n_in if m.per_range else 1
    un = dma_unmap(dev, m)
    mp, up = model.price(m.stats, calls=calls), model.price(un, calls=calls)
    both = {k: int(m.stats.get(k, 0)) + int(un.get(k, 0)) for k in COUNTERS}
    by_key = dict(mp.by_key)
    for k, v in up.by_key.items():
        by_key[k] = by_key.get(k, 0.0) + v
    top = max(by_key, key=by_key.get) if by_key else ""
    return BackendResult(**base, errno="", error="", cpu_ranges=n_in, dma_segments=len(m),
                         per_range=m.per_range, bounced_segments=int(m.bounced.sum()), **both,
                         map_ns=mp.total_ns, unmap_ns=up.total_ns, top_cost=top,
                         held_after=_held(dev))


@lru_cache(maxsize=8)
def _model(name: str) -> _cost.CostModel:
    return _cost.load(name)


@lru_cache(maxsize=32)
def buffer(workload: str, size: int | None = None, placement: str = "high",
           seed: int = 0) -> Buffer:
    """The seeded buffer of ``workload`` placed at :data:`PLACEMENTS` ``[placement]``."""
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown placement {placement!r}: expected one of {list(PLACEMENTS)}")
    buf = build(workload, size, seed=seed, base_pfn=PLACEMENTS[placement])
    return skip_swiotlb_pool(buf)


def skip_swiotlb_pool(buf: Buffer) -> Buffer:
    """``buf`` with its pages moved out of the default swiotlb pool's physical range.

    ``swiotlb_init`` takes the pool from memblock at boot, so the page allocator never hands
    those frames to a buffer; a buffer that starts below the pool and reaches it (low
    placement, hundreds of MiB) continues above it instead. Buffers above it are unchanged.
    """
    first = DEFAULT_START >> PAGE_SHIFT
    pfns = buf.pfns
    if not pfns.size or int(pfns.min()) >= first or int(pfns.max()) < first:
        return buf
    moved = np.where(pfns >= np.uint64(first), pfns + np.uint64(IO_TLB_DEFAULT_SIZE >> PAGE_SHIFT),
                     pfns)
    return Buffer(buf.name, moved, buf.offset, buf.size, buf.page_size)


@lru_cache(maxsize=64)
def run_all(workload: str, size: int | None = None, limits: Limits = Limits(),
            placement: str = "high", seed: int = 0, cost_model: str = "x86-default"
            ) -> tuple[BackendResult, ...]:
    """Every row of :data:`ROWS` on one buffer; cached per (workload, size, limits...) key.

    The buffer is held as a ``phyr`` list built from its (distinct) page frames, so the 25
    mappings do not each re-check a raw ``(addr, length)`` pair for overlaps.
    """
    ranges = buffer(workload, size, placement, seed).layout("phyr")
    cuts: dict = {}
    return tuple(map_through(name, ranges, limits, cost_model, cuts) for name in ROWS)


def columns(results: tuple[BackendResult, ...], metric: str = "dma_segments") -> dict:
    """Plot columns, one entry per row: ``ops``, ``family``, ``value`` (of ``metric``),
    ``label``, ``us`` (modelled µs per map + unmap), ``us_label``, ``error``."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}: expected one of {list(METRICS)}")
    cols: dict[str, list] = {k: [] for k in (
        "ops", "family", "value", "label", "us", "us_label", "error")}
    for r in results:
        cols["ops"].append(r.ops)
        cols["family"].append(FAMILIES[r.family])
        cols["error"].append(r.error or "ok")
        if not r.ok:
            refusal = f"refused: -{r.errno}"
            cols["value"].append(0)
            cols["label"].append(refusal)
            cols["us"].append(0.0)
            cols["us_label"].append(refusal)
            continue
        v = metric_value(r, metric)
        cols["value"].append(v)
        text = human_bytes(int(v)) if metric == "bounce_bytes" else (
            f"{v:,.1f}" if isinstance(v, float) else f"{v:,}")
        if r.per_range:
            text += " (range by range)"
        cols["label"].append(text)
        us = r.total_ns / 1e3
        cols["us"].append(us)
        cols["us_label"].append(f"{us:,.1f} µs" + (f" ({COST_NAMES[r.top_cost]})"
                                                   if r.top_cost else ""))
    return cols


#: Plot metrics: key -> axis label.
METRICS: dict[str, str] = {
    "dma_segments": "DMA segments the device gets",
    "bounce_bytes": "bytes copied through bounce buffers (map + unmap)",
    "pte_writes": "IOMMU/TCE/GATT entries written + cleared",
    "iotlb_flushes": "IOTLB / STC / RPCIT flushes (map + unmap)",
    "hypercalls": "hypervisor calls (map + unmap)",
    "total_us": "modelled µs per map + unmap",
}

#: Short names of the cost counters, for labels.
COST_NAMES = {"calls": "calls", "entries_walked": "list walk", "pte_writes": "PTE writes",
              "iotlb_flushes": "flushes", "bounce_bytes": "bounce copy",
              "bounce_slots": "slot search", "iova_allocs": "IOVA allocs",
              "hypercalls": "hypercalls", "cache_maint_bytes": "cache maintenance",
              "grants": "grants", "table_pages": "table pages"}


def metric_value(r: BackendResult, metric: str) -> int | float:
    """One figure of a row (``total_us`` in µs)."""
    if metric == "total_us":
        return round(r.total_ns / 1e3, 3)
    return int(getattr(r, metric))


def table_rows(results: tuple[BackendResult, ...]) -> list[dict]:
    """Rounded rows for ``pl.tables.print_table``."""
    out = []
    for r in results:
        out.append({
            "ops": r.ops, "family": r.family, "result": r.status,
            "segs_in": r.cpu_ranges if r.ok else "-",
            "segs_out": r.dma_segments if r.ok else "-",
            "bounced": human_bytes(r.bounce_bytes) if r.bounce_bytes else "0",
            "pte_writes": r.pte_writes, "flushes": r.iotlb_flushes,
            "hcalls": r.hypercalls, "us": round(r.total_ns / 1e3, 1),
            "set_mask": "ok" if r.mask_ok else "-EIO",
            "per_range": "yes" if r.per_range and r.ok else "",
        })
    return out


def refusal_rows(results: tuple[BackendResult, ...]) -> list[dict]:
    """The rows that refused, with their errno and the model's reason."""
    return [{"ops": r.ops, "errno": f"-{r.errno}",
             "dma_set_mask": "ok" if r.mask_ok else "-EIO", "held_after": r.held_after,
             "reason": _reason(r.error, r.ops)} for r in results if not r.ok]


def _reason(msg: str, ops: str, width: int = 70) -> str:
    """The refusal message without its errno, range index and ops-name prefixes."""
    text = re.sub(r"^-E[A-Z]+: ", "", msg)
    text = re.sub(r"^range \d+: ", "", text)
    text = text.removeprefix(f"{ops}: ").removeprefix("map_sg: ")
    return text if len(text) <= width else text[: width - 1] + "…"


def catalogue_rows(limits: Limits = Limits()) -> list[dict]:
    """The rows of :data:`ROWS` as the catalogue describes them (v6.2), with the
    ``dma_max_mapping_size()`` of a fresh device of each ("-" when unlimited)."""
    out = []
    for name in ROWS:
        e = DMA_DIRECT if name == "dma_direct" else OPS[name]
        e.factory  # noqa: B018 - loads the family module, which may correct the row
        sg = ("none: per range" if not e.supports_sg else "always -EINVAL"
              if e.family == "dummy" else "merges" if e.coalesces else "per entry")
        mms = limits.device(name).dma_max_mapping_size()
        out.append({"ops": name, "family": e.family, "file": e.file,
                    "io_page": human_bytes(e.io_page_size) if e.io_page_size else "-",
                    "map_sg": sg, "max_mapping": "-" if mms >= U32_MAX else human_bytes(mms)})
    return out


def compare_rows(a: tuple[BackendResult, ...], b: tuple[BackendResult, ...],
                 label_a: str, label_b: str) -> list[dict]:
    """Rows whose result, segments, bounce bytes, PTE writes or flushes differ between two runs."""
    out = []
    for x, y in zip(a, b, strict=True):
        fx = (x.status, x.dma_segments, x.bounce_bytes, x.pte_writes, x.iotlb_flushes)
        fy = (y.status, y.dma_segments, y.bounce_bytes, y.pte_writes, y.iotlb_flushes)
        if fx != fy:
            out.append({"ops": x.ops,
                        label_a: _summary(x), label_b: _summary(y)})
    return out


def _summary(r: BackendResult) -> str:
    if not r.ok:
        return f"-{r.errno}"
    parts = [f"{r.dma_segments:,} seg" + ("s" if r.dma_segments != 1 else "")]
    if r.bounce_bytes:
        parts.append(f"{human_bytes(r.bounce_bytes)} bounced")
    if r.pte_writes:
        parts.append(f"{r.pte_writes:,} PTEs")
    if r.iotlb_flushes:
        parts.append(f"{r.iotlb_flushes:,} flush" + ("es" if r.iotlb_flushes != 1 else ""))
    return ", ".join(parts)


# --------------------------------------------------------------------------- the non-leaky claim
def _dma_key(name: str, x: Any, limits: Limits) -> tuple:
    """What a mapping of ``x`` through ``name`` gives: the DMA list (or the errno)."""
    dev = limits.device(name)
    try:
        m = dma_map(dev, x, "bidirectional")
    except DmaMappingError as exc:
        return ("error", exc.errno)
    key = ("ok", m.dma_addr.tobytes(), m.length.tobytes(), m.bounced.tobytes(), m.per_range)
    dma_unmap(dev, m)
    return key


@lru_cache(maxsize=8)
def nonleaky_rows(workload: str = "nvme-128k-seq", size: int | None = None,
                  limits: Limits = Limits(), placement: str = "low", seed: int = 0
                  ) -> list[dict]:
    """For each layout: does every row give the same DMA list as from the phyr layout?

    The buffer is stored in each layout of :data:`phyrlab.layouts.LAYOUTS`
    (``Buffer.layout``), mapped through all of :data:`ROWS`, and each DMA list (addresses,
    lengths, bounce flags, range-by-range flag; or the errno of a refusal) compared with the
    one mapped from the ``phyr`` layout.
    """
    buf = buffer(workload, size, placement, seed)
    ref_layout = buf.layout("phyr")
    ref = {n: _dma_key(n, ref_layout, limits) for n in ROWS}
    out = []
    for lname in LAYOUTS:
        x = buf.layout(lname)
        same = sum(_dma_key(n, x, limits) == ref[n] for n in ROWS)
        out.append({"layout": lname, "entries": len(x), "bytes": int(x.nbytes),
                    "rows_compared": len(ROWS), "same_dma_list": same,
                    "equal": "yes" if same == len(ROWS) else "NO"})
    return out


# --------------------------------------------------------------------------- no map_sg in v6.2
#: The rows whose v6.2 table has no working ``map_sg``.
NO_MAP_SG = tuple(n for n, e in OPS.items() if not e.supports_sg)


def map_sg_v62(name: str, ranges: Any, limits: Limits = Limits()) -> str:
    """What v6.2's ``ops->map_sg`` gives for this list: ``"-EINVAL"``... or ``"ok"``."""
    from .layouts import as_ranges

    addr, length = as_ranges(ranges)
    addr, length = split_for_device(addr, length, limits.max_seg_size, limits.seg_boundary_mask)
    dev = limits.device(name)
    try:
        dma, dlen, cookie = dev.ops.map_sg(dev, addr, length, "bidirectional")
    except DmaMappingError as exc:
        return f"-{exc.errno}"
    dev.ops.unmap_sg(dev, dma, dlen, "bidirectional", cookie)
    return "ok"


@lru_cache(maxsize=8)
def per_range_rows(workload: str = "nvme-128k-seq", size: int | None = None,
                   limits: Limits = Limits(), placement: str = "low", seed: int = 0
                   ) -> list[dict]:
    """``ps3_ioc0_dma_ops`` and ``vduse_dev_dma_ops``: v6.2's ``map_sg`` against the list
    mapped range by range through ``map_phys``; ``ps3_sb_dma_ops`` (same linear region, with a
    ``map_sg``) for comparison."""
    buf = buffer(workload, size, placement, seed)
    x = buf.layout("phyr")
    ref = _dma_key("ps3_sb_dma_ops", x, limits)
    out = []
    for name in ("ps3_sb_dma_ops", *NO_MAP_SG):
        r = map_through(name, x, limits)
        out.append({"ops": name, "map_sg_v6.2": map_sg_v62(name, x, limits),
                    "dma_map": r.status, "via": "map_phys per range" if r.per_range else "map_sg",
                    "calls": (r.cpu_ranges if r.per_range else 1) if r.ok else "-",
                    "segs_in": r.cpu_ranges, "segs_out": r.dma_segments,
                    "same_as_ps3_sb": "yes" if _dma_key(name, x, limits)[1:3] == ref[1:3]
                    else "no",
                    "bounced": human_bytes(r.bounce_bytes) if r.bounce_bytes else "0",
                    "us": round(r.total_ns / 1e3, 1)})
    return out


def result_dicts(results: tuple[BackendResult, ...]) -> list[dict]:
    """Every field of every row (for ad-hoc analysis)."""
    return [asdict(r) for r in results]


__all__ = ["BackendResult", "COUNTERS", "FAMILIES", "Limits", "MAX_SEG_SIZES", "METRICS",
           "NO_MAP_SG", "catalogue_rows", "PLACEMENTS", "ROWS", "buffer", "columns", "compare_rows",
           "family_of", "map_sg_v62", "map_through", "metric_value", "nonleaky_rows",
           "per_range_rows", "refusal_rows", "result_dicts", "run_all", "table_rows"]
