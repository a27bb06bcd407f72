"""The CPU/DMA split (notebook 02): bytes and cache lines of one combined list vs two lists.

*Combined*: ``struct scatterlist`` mapped with ``dma_map_sgtable()`` (kernel/dma/mapping.c),
which writes ``dma_address``/``dma_length`` into the table's own entries; every entry carries
those fields even when the IOMMU collapses the DMA side to one segment (``sgt->nents == 1``).
*Split*: a CPU-side layout (``phyr``, ``bio_vec``...) that the mapping never writes, plus a
DMA-side array built from the :class:`~phyrlab.dma.DmaList` that ``dma_map()`` returns, stored
as ``struct nvme_dma_vec {dma_addr_t addr; unsigned int len;}`` (drivers/nvme/host/pci.c,
v6.17, the first in-tree driver that keeps its own DMA-side array; 16 bytes with padding, the
size of ``struct dma_vec {dma_addr_t addr; size_t len;}`` of include/linux/dmaengine.h too).

Every figure is measured on the real objects: bytes are ``x.nbytes`` and the ``nbytes`` of the
DMA-side array; the entry counts are ``len(x)``, ``sgt.nents`` and ``len(dma_list)``.
Cache lines (64 bytes, ``L1_CACHE_BYTES`` on x86-64) are counted from each object's entry
offsets and field offsets (numpy dtypes with the C layout), per walk:

- *mapping walk*: combined, ``for_each_sg`` over every allocated entry (chain links too):
  it reads ``page_link``/``offset``/``length`` and writes the DMA fields (each data entry's 32
  bytes; a chain link's ``page_link``). Split: every CPU entry read, every DMA entry written.
- *driver walk* (``for_each_sgtable_dma_sg`` building PRPs, SGLs or MTTs): combined, the
  DMA fields of the first ``sgt.nents`` entries (and the chain links among them); split,
  every DMA-side entry.
Simplified: each allocation starts on a cache line (a page for full scatterlist chunks, true
of kmalloc objects of 64 bytes and more); the IOMMU path's extra passes over the same entries
(``iommu_dma_map_sg`` walks the list three times) touch no new lines and are not counted.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np

from .dma import Device, dma_map, dma_map_sgtable
from .errors import DmaMappingError
from .layouts import LAYOUTS, SCATTERLIST_MAX_SEGMENT, Layout, SgTable, sg_alloc_table_from_pages
from .layouts.scatterlist import SCATTERLIST_DTYPE, SG_CHAIN, SG_MAX_SINGLE_ALLOC
from .units import DMA_BIT_MASK, human_bytes
from .workloads import Buffer, build

#: ``L1_CACHE_BYTES`` on x86-64 (arch/x86/Kconfig.cpu: ``X86_L1_CACHE_SHIFT`` 6).
CACHE_LINE = 64
#: ``struct nvme_dma_vec`` (drivers/nvme/host/pci.c): 8 + 4 bytes, padded to 16.
DMA_VEC_DTYPE = np.dtype({"names": ["addr", "len"], "formats": ["<u8", "<u4"],
                          "offsets": [0, 8], "itemsize": 16})
#: fields of ``struct scatterlist`` that only the DMA side uses.
SG_DMA_FIELDS = ("dma_address", "dma_length", "dma_flags")
SG_CPU_FIELDS = ("page_link", "offset", "length")
#: CPU-side layouts a split list can use (every layout but the combined one).
CPU_LAYOUTS = tuple(n for n in LAYOUTS if n != "scatterlist")
BACKENDS = ("dma-direct", "swiotlb", "iommu")


# --------------------------------------------------------------------------- devices
def make_device(backend: str) -> Device:
    """The device of each column of the comparison.

    ``dma-direct``: 64-bit mask, no IOMMU. ``swiotlb``: dma-direct with the 32-bit mask a PCI
    device has until its driver widens it; the workloads sit above 4 GiB, so every range is
    bounced through the default 64 MiB pool. ``iommu``: ``iommu_dma_ops``, x86_64 page table,
    strict. ``max_seg_size`` is ``SCATTERLIST_MAX_SEGMENT`` capped by
    ``dma_max_mapping_size()`` (256 KiB with swiotlb), as drivers size their segments.
    """
    params = {"dma-direct": (None, 64), "swiotlb": (None, 32), "iommu": ("iommu_dma_ops", 64)}
    if backend not in params:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    ops, bits = params[backend]
    probe = Device(ops, dma_mask=DMA_BIT_MASK(bits))
    max_seg = int(min(SCATTERLIST_MAX_SEGMENT, probe.dma_max_mapping_size()))
    return Device(ops, dma_mask=DMA_BIT_MASK(bits), max_seg_size=max_seg)


# --------------------------------------------------------------------------- measuring
def dma_vec_array(dma_list) -> np.ndarray:
    """The DMA-side list as the driver stores it: an array of ``struct nvme_dma_vec``."""
    out = np.zeros(len(dma_list), dtype=DMA_VEC_DTYPE)
    out["addr"] = dma_list.dma_addr
    out["len"] = dma_list.length
    return out


def lines_touched(offsets: np.ndarray, sizes: np.ndarray | int, line: int = CACHE_LINE) -> int:
    """Distinct ``line``-byte cache lines covered by accesses ``[offset, offset + size)``.

    ``offsets`` ascending, accesses not overlapping (entries of one array, in order).
    """
    off = np.asarray(offsets, dtype=np.int64)
    if off.size == 0:
        return 0
    size = np.broadcast_to(np.asarray(sizes, dtype=np.int64), off.shape)
    if np.any(size <= 0):
        i = int(np.flatnonzero(size <= 0)[0])
        raise ValueError(f"access {i} has size {int(size[i])}; sizes must be positive")
    if off.size > 1 and np.any(off[1:] < off[:-1] + size[:-1]):
        i = int(np.flatnonzero(off[1:] < off[:-1] + size[:-1])[0])
        raise ValueError(f"accesses {i} and {i + 1} overlap or are out of order")
    first = off // line
    last = (off + size - 1) // line
    shared = int(np.count_nonzero(first[1:] == last[:-1]))
    return int((last - first + 1).sum()) - shared


def _field_span(dtype: np.dtype, names: tuple[str, ...]) -> tuple[int, int]:
    """(offset, size) of the bytes that fields ``names`` occupy in one entry."""
    starts = [dtype.fields[n][1] for n in names]
    ends = [dtype.fields[n][1] + dtype.fields[n][0].itemsize for n in names]
    return min(starts), max(ends) - min(starts)


def array_lines(n: int, entry_size: int, field: tuple[int, int] | None = None) -> int:
    """Lines touched walking all ``n`` entries of one array (``field``: only those bytes).

    The access pattern repeats every ``P = line / gcd(entry_size, line)`` entries, and each
    period spans whole lines of its own, so ``q`` full periods touch ``q`` times one period's
    lines: ``lines_touched`` runs on at most ``2P`` entries, not ``n``.
    """
    start, size = field if field is not None else (0, entry_size)
    period = CACHE_LINE // math.gcd(entry_size, CACHE_LINE)
    q, r = divmod(int(n), period)
    pos = np.arange(max(period, r), dtype=np.int64) * entry_size + start
    return q * lines_touched(pos[:period], size) + lines_touched(pos[:r], size)


def sg_bytes(sgt: SgTable) -> dict[str, int]:
    """``nbytes`` of a table, and the part its DMA fields take in every allocated entry."""
    dma = len(sgt.entries) * sum(SCATTERLIST_DTYPE.fields[f][0].itemsize for f in SG_DMA_FIELDS)
    return {"bytes": sgt.nbytes, "dma_bytes": dma, "cpu_bytes": sgt.nbytes - dma}


def _sg_lines(chain: np.ndarray, dma_only: bool) -> int:
    """Lines touched over entries ``0..len(chain)-1`` of one chunk (offsets from its start):
    a chain link's ``page_link``; a data entry whole, or only its DMA fields."""
    size = SCATTERLIST_DTYPE.itemsize
    pos = np.arange(chain.size, dtype=np.int64) * size
    link_size = SCATTERLIST_DTYPE.fields["page_link"][0].itemsize
    dstart, dsize = _field_span(SCATTERLIST_DTYPE, ("dma_address", "dma_length"))
    if not dma_only:
        return lines_touched(pos, np.where(chain, link_size, size))
    return lines_touched(np.where(chain, pos, pos + dstart), np.where(chain, link_size, dsize))


def sg_walk_lines(sgt: SgTable) -> dict[str, int]:
    """Cache lines of the mapping walk and of the driver's DMA walk of a mapped table.

    A full chunk (``SG_MAX_SINGLE_ALLOC`` entries, one page) starts on a line of its own, so
    the walks are counted on one full chunk and the partial one, then multiplied out.
    """
    per = SG_MAX_SINGLE_ALLOC
    full = len(sgt.chunks) - 1
    chunk_chain = (sgt.entries["page_link"][:per] & np.uint64(SG_CHAIN)) != 0
    tail_chain = (sgt.entries["page_link"][full * per:] & np.uint64(SG_CHAIN)) != 0
    map_lines = full * _sg_lines(chunk_chain, False) + _sg_lines(tail_chain, False)
    if sgt.nents == 0:
        return {"map_lines": map_lines, "driver_lines": 0}
    # where data entry nents - 1 sits: a full chunk holds per - 1 data entries and a link
    d = sgt.nents - 1
    c, k = divmod(d, per - 1) if d < full * (per - 1) else (full, d - full * (per - 1))
    last_chain = chunk_chain if c < full else tail_chain
    driver = c * _sg_lines(chunk_chain, True) + _sg_lines(last_chain[: k + 1], True)
    return {"map_lines": map_lines, "driver_lines": driver}


def _error_row(base: dict, exc: DmaMappingError) -> dict:
    return {**base, "dma_entries": 0, "dma_bytes": 0, "map_lines": 0, "driver_lines": 0,
            "bounce_bytes": 0, "error": f"-{exc.errno}"}


def measure_combined(buffer: Buffer, backend: str, sgt: SgTable | None = None
                     ) -> dict[str, Any]:
    """Map ``buffer`` the old way (``sg_alloc_table_from_pages`` + ``dma_map_sgtable``).

    ``sgt``: the unmapped table of ``buffer`` for this backend's ``max_seg_size``, when the
    caller built it already (it is mapped, so pass a copy to keep one).
    """
    dev = make_device(backend)
    if sgt is None:
        sgt = sg_alloc_table_from_pages(buffer.pfns, buffer.offset, buffer.size,
                                        dev.max_seg_size)
    b = sg_bytes(sgt)
    base = {"backend": backend, "list": "scatterlist", "cpu_entries": sgt.orig_nents,
            "bytes": b["bytes"], "cpu_bytes": b["cpu_bytes"]}
    try:
        mapped = dma_map_sgtable(dev, sgt)
    except DmaMappingError as exc:
        return {**_error_row(base, exc), "dma_bytes": b["dma_bytes"]}
    row = {**base, "dma_entries": sgt.nents, "dma_bytes": b["dma_bytes"], **sg_walk_lines(sgt),
           "bounce_bytes": int(mapped.stats.get("bounce_bytes", 0)), "error": ""}
    return row              # the device is private to this measurement: no unmap needed


def measure_split(buffer: Buffer, backend: str, cpu_layout: str = "phyr",
                  x: Layout | None = None) -> dict[str, Any]:
    """Map ``buffer`` stored in ``cpu_layout`` with ``dma_map()``; DMA side as dma_vecs.

    ``x``: the buffer already in ``cpu_layout`` (``dma_map`` never writes it, so the
    measurements of one buffer can share it).
    """
    if cpu_layout not in CPU_LAYOUTS:
        raise ValueError(f"cpu_layout {cpu_layout!r}: expected one of {CPU_LAYOUTS}")
    dev = make_device(backend)
    x = buffer.layout(cpu_layout) if x is None else x
    base = {"backend": backend, "list": f"{cpu_layout} + dma_vec", "cpu_entries": len(x),
            "bytes": x.nbytes, "cpu_bytes": x.nbytes}
    try:
        dl = dma_map(dev, x)
    except DmaMappingError as exc:
        return _error_row(base, exc)
    vec = dma_vec_array(dl)
    dfield = _field_span(DMA_VEC_DTYPE, ("addr", "len"))
    cpu_lines = array_lines(len(x), x.entry_size)
    row = {**base, "bytes": x.nbytes + vec.nbytes, "dma_entries": len(dl), "dma_bytes": vec.nbytes,
           "map_lines": cpu_lines + array_lines(vec.size, vec.itemsize, dfield),
           "driver_lines": array_lines(vec.size, vec.itemsize, dfield),
           "bounce_bytes": int(dl.stats.get("bounce_bytes", 0)), "error": ""}
    return row


@lru_cache(maxsize=48)
def _rows(workload: str, size: int | None, mean_run: float | None, cpu_layout: str,
          seed: int) -> tuple[tuple[tuple[str, Any], ...], ...]:
    buf = build(workload, size=size, seed=seed, mean_run_pages=mean_run)
    x = buf.layout(cpu_layout) if cpu_layout in CPU_LAYOUTS else None
    seg = {b: make_device(b).max_seg_size for b in BACKENDS}
    last = {m: b for b, m in seg.items()}     # the last backend of each max_seg_size
    tables: dict[int, SgTable] = {}
    out = []
    for backend in BACKENDS:               # one table per max_seg_size; the last user maps it
        m = seg[backend]
        if m not in tables:
            tables[m] = sg_alloc_table_from_pages(buf.pfns, buf.offset, buf.size, m)
        sgt = tables.pop(m) if last[m] == backend else tables[m].copy()
        out.append(measure_combined(buf, backend, sgt))
        out.append(measure_split(buf, backend, cpu_layout, x))
    return tuple(tuple(r.items()) for r in out)


def split_rows(workload: str, size: int | None = None, mean_run: float | None = None,
               cpu_layout: str = "phyr", seed: int = 0) -> list[dict[str, Any]]:
    """Combined and split rows for each backend (cached per setting)."""
    return [dict(r) for r in _rows(workload, size, mean_run, cpu_layout, seed)]


# --------------------------------------------------------------------------- tables and columns
def struct_rows() -> list[dict[str, Any]]:
    """The C structs compared, with the bytes each side of the split uses per entry."""
    from .layouts import Phyr
    from .layouts.bio_vec import BIO_VEC_DTYPE

    sg_dma = sum(SCATTERLIST_DTYPE.fields[f][0].itemsize for f in SG_DMA_FIELDS)
    return [
        {"struct": "struct scatterlist", "side": "CPU + DMA", "bytes": SCATTERLIST_DTYPE.itemsize,
         "cpu_fields": SCATTERLIST_DTYPE.itemsize - sg_dma, "dma_fields": sg_dma},
        {"struct": "struct phyr", "side": "CPU", "bytes": Phyr.entry_size,
         "cpu_fields": Phyr.entry_size, "dma_fields": 0},
        {"struct": "struct bio_vec", "side": "CPU", "bytes": BIO_VEC_DTYPE.itemsize,
         "cpu_fields": BIO_VEC_DTYPE.itemsize, "dma_fields": 0},
        {"struct": "struct nvme_dma_vec", "side": "DMA", "bytes": DMA_VEC_DTYPE.itemsize,
         "cpu_fields": 0, "dma_fields": DMA_VEC_DTYPE.itemsize},
    ]


def device_rows() -> list[dict[str, Any]]:
    """The three devices: ops, mask, max segment, and what mapping a workload does."""
    what = {"dma-direct": "DMA address = physical address",
            "swiotlb": "every range above 4 GiB is bounced (64 MiB pool)",
            "iommu": "one IOVA range; the DMA list collapses"}
    rows = []
    for b in BACKENDS:
        dev = make_device(b)
        rows.append({"backend": b, "ops": dev.ops_name, "dma_mask": f"{dev.dma_mask:#x}",
                     "max_seg_size": human_bytes(dev.max_seg_size), "mapping": what[b]})
    return rows


def table_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The printed figures: entries, bytes, cache lines, bounce bytes (error if it failed)."""
    return [{"backend": r["backend"], "list": r["list"], "cpu_entries": r["cpu_entries"],
             "dma_entries": r["dma_entries"] if not r["error"] else r["error"],
             "bytes": r["bytes"], "dma_bytes": r["dma_bytes"],
             "map_lines": r["map_lines"], "driver_lines": r["driver_lines"],
             "bounced": human_bytes(r["bounce_bytes"]) if r["bounce_bytes"] else "-"}
            for r in rows]


def workload_rows(names: list[str], sizes: dict[str, int] | None = None,
                  cpu_layout: str = "phyr", seed: int = 0) -> list[dict[str, Any]]:
    """Split vs combined per workload and backend: bytes, cache lines, ratio split/combined.

    Lines are the mapping walk plus the driver's walk; a failed mapping shows its errno.
    """
    out = []
    for name in names:
        rows = split_rows(name, (sizes or {}).get(name), None, cpu_layout, seed)
        for comb, spl in zip(rows[0::2], rows[1::2], strict=True):
            err = comb["error"] or spl["error"]
            sg_lines = comb["map_lines"] + comb["driver_lines"]
            split_lines = spl["map_lines"] + spl["driver_lines"]
            out.append({
                "workload": name, "backend": comb["backend"], "sg_entries": comb["cpu_entries"],
                "cpu_entries": spl["cpu_entries"], "dma_entries": err or spl["dma_entries"],
                "sg_bytes": comb["bytes"], "split_bytes": err or spl["bytes"],
                "bytes_ratio": err or f"{spl['bytes'] / comb['bytes']:.2f}",
                "sg_lines": err or sg_lines, "split_lines": err or split_lines,
                "lines_ratio": err or f"{split_lines / sg_lines:.2f}",
            })
    return out


def chart_columns(rows: list[dict[str, Any]]) -> dict[str, list]:
    """Rows as ColumnDataSource columns: one bar per (backend, list), two stacked parts."""
    label = [f"{r['backend']} · {'combined' if r['list'] == 'scatterlist' else 'split'}"
             for r in rows]
    return {
        "bar": label,
        "list": [r["list"] for r in rows],
        "cpu_bytes": [r["cpu_bytes"] for r in rows],
        "dma_bytes": [r["dma_bytes"] for r in rows],
        "bytes": [r["bytes"] for r in rows],
        "bytes_label": [r["error"] or _short(r["bytes"]) for r in rows],
        "map_lines": [r["map_lines"] for r in rows],
        "driver_lines": [r["driver_lines"] for r in rows],
        "lines": [r["map_lines"] + r["driver_lines"] for r in rows],
        "lines_label": [r["error"] or f"{r['map_lines'] + r['driver_lines']:,} lines"
                        for r in rows],
        "dma_entries": [r["dma_entries"] for r in rows],
    }


def _short(n: int) -> str:
    return human_bytes(n)


def contiguity_sweep(workload: str, size: int, mean_runs: list[float], backend: str = "iommu",
                     cpu_layout: str = "phyr", seed: int = 0) -> list[dict[str, Any]]:
    """Split/combined bytes and cache lines for one backend as the physical runs lengthen."""
    out = []
    i = BACKENDS.index(backend) * 2
    for run in mean_runs:
        comb, spl = split_rows(workload, size, run, cpu_layout, seed)[i: i + 2]
        out.append({"mean_run": run, "cpu_entries": spl["cpu_entries"],
                    "dma_entries": spl["dma_entries"], "sg_bytes": comb["bytes"],
                    "split_bytes": spl["bytes"],
                    "sg_lines": comb["map_lines"] + comb["driver_lines"],
                    "split_lines": spl["map_lines"] + spl["driver_lines"]})
    return out
