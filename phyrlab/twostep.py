"""Scatterlist ``dma_map_sgtable`` vs the two-step IOVA API (notebook 06).

*map_sg* (the old way): ``sg_alloc_table_from_pages`` then ``dma_map_sgtable`` (one call; the
DMA result is written into the table) and ``dma_unmap_sgtable``.
*two-step*: the CPU list (any layout) mapped with ``phyrlab.dma.dma_map_iova`` and unmapped
with ``dma_unmap_iova``, which drive the API as block/blk-mq-dma.c's
``blk_rq_dma_map_iter_start`` does: ``dma_iova_try_alloc`` once, ``dma_iova_link`` per range,
``dma_iova_sync`` once, and ``dma_iova_destroy`` to unmap; when no IOVA can be had (a
dma-direct device: ``dma_iova_try_alloc`` returns false) it falls back to ``dma_map_phys`` /
``dma_unmap_phys`` per range, and the driver keeps the DMA addresses itself (``struct
nvme_dma_vec`` per range, as nvme-pci does when ``!dma_use_iova()``). ``dma_map_iova`` makes
those per-range calls as batched model updates with the results of the calls one by one.

Counters are the mappings' own ``DmaStats`` (map and unmap); ``calls`` counts the API entry
points each path made: map_sg 1 + 1; two-step with IOVA 1 (try_alloc) + one link per range +
1 (sync), then 1 (destroy); fallback one ``dma_map_phys`` and one ``dma_unmap_phys`` per
range. Modelled time is ``phyrlab.cost.load(model).price(counters, calls=...)``: the
constants and their sources are in data/cost-models/.
Simplified: the cost of allocating the scatterlist itself (``sg_alloc_table``) is not priced;
its size is reported instead.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from . import cost
from .cpu_dma_split import DMA_VEC_DTYPE
from .dma import (
    Device,
    DmaIovaState,
    dma_iova_try_alloc,
    dma_map_iova,
    dma_map_sgtable,
    dma_unmap_iova,
    dma_unmap_sgtable,
)
from .layouts import LAYOUTS, SCATTERLIST_MAX_SEGMENT, sg_alloc_table_from_pages
from .units import DMA_BIT_MASK
from .workloads import Buffer, build

#: ``struct dma_iova_state {dma_addr_t addr; u64 __size;}`` (include/linux/dma-mapping.h).
DMA_IOVA_STATE_DTYPE = np.dtype([("addr", "<u8"), ("__size", "<u8")])
BACKENDS = ("iommu", "dma-direct")
METHODS = ("map_sg", "two-step")
#: the cases of the notebook: workload -> (size, CPU-side layout the two-step user keeps).
CASES = {"rdma-mr-1g-4k": (1 << 23, "phyr"), "nvme-128k-seq": (None, "bio_vec")}


def make_device(backend: str) -> Device:
    """``iommu``: ``iommu_dma_ops``, x86_64 table, strict; ``dma-direct``: no IOMMU, 64-bit.

    Both with ``max_seg_size`` = ``SCATTERLIST_MAX_SEGMENT`` (so the IOMMU collapses the list).
    """
    if backend == "iommu":
        ops = "iommu_dma_ops"
    elif backend == "dma-direct":
        ops = None
    else:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    return Device(ops, dma_mask=DMA_BIT_MASK(64), max_seg_size=SCATTERLIST_MAX_SEGMENT)


def iova_available(backend: str, phys: int = 1 << 32, size: int = 1 << 20) -> bool:
    """What ``dma_iova_try_alloc`` answers for a fresh device of ``backend``."""
    return dma_iova_try_alloc(make_device(backend), DmaIovaState(), phys, size)


def _merge(a: dict, b: dict) -> dict[str, int]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + v
    return out


def run_map_sg(buffer: Buffer, backend: str) -> dict[str, Any]:
    """The old way: build the scatterlist, ``dma_map_sgtable``, ``dma_unmap_sgtable``."""
    dev = make_device(backend)
    sgt = sg_alloc_table_from_pages(buffer.pfns, buffer.offset, buffer.size, dev.max_seg_size)
    dl = dma_map_sgtable(dev, sgt)
    mapped, entries = dict(dl.stats), sgt.nents
    unmapped = dict(dma_unmap_sgtable(dev, sgt))
    return {"method": "map_sg", "list": "scatterlist", "cpu_entries": sgt.orig_nents,
            "dma_entries": entries, "list_bytes": sgt.nbytes, "dma_side_bytes": 0,
            "iova": backend == "iommu", "map_calls": 1, "unmap_calls": 1,
            "map": mapped, "unmap": unmapped, "held_after": _held(dev)}


def run_two_step(buffer: Buffer, backend: str, cpu_layout: str = "phyr") -> dict[str, Any]:
    """The two-step API through ``dma_map_iova`` (IOVA, or per-range fallback)."""
    if cpu_layout not in LAYOUTS or cpu_layout == "scatterlist":
        raise ValueError(f"cpu_layout {cpu_layout!r}: expected a layout other than scatterlist")
    dev = make_device(backend)
    x = buffer.layout(cpu_layout)
    dl = dma_map_iova(dev, x)
    iova = isinstance(dl.cookie, DmaIovaState)
    links = int(dl.stats.get("entries_walked", 0))
    dma_side = (DMA_IOVA_STATE_DTYPE.itemsize if iova
                else np.zeros(len(dl), dtype=DMA_VEC_DTYPE).nbytes)
    mapped, entries = dict(dl.stats), len(dl)
    unmapped = dict(dma_unmap_iova(dev, dl))
    return {"method": "two-step", "list": cpu_layout + (" + dma_iova_state" if iova
                                                        else " + dma_vec"),
            "cpu_entries": len(x), "dma_entries": entries, "list_bytes": x.nbytes + dma_side,
            "dma_side_bytes": dma_side, "iova": iova,
            "map_calls": 2 + links if iova else links, "unmap_calls": 1 if iova else links,
            "map": mapped, "unmap": unmapped, "held_after": _held(dev)}


def _held(dev: Device) -> int:
    """Anything the device still holds (IOVA pages, mapped bytes, swiotlb slots): must be 0."""
    return sum(v for k, v in dev.resources().items())


@lru_cache(maxsize=8)
def _cost_model(model: str) -> cost.CostModel:
    """``cost.load(model)``, parsed once per model (it is only read)."""
    return cost.load(model)


def priced(run: dict[str, Any], model: str = "x86-default") -> dict[str, float]:
    """Modelled ns of map + unmap, per counter (``calls`` included), and ``total``."""
    cm = _cost_model(model)
    p = cm.price(_merge(run["map"], run["unmap"]), calls=run["map_calls"] + run["unmap_calls"])
    out = dict(p.by_key)
    out["total"] = p.total_ns
    return out


@lru_cache(maxsize=32)
def _compare(workload: str, size: int | None, mean_run: float | None, cpu_layout: str,
             seed: int) -> tuple:
    buf = build(workload, size=size, seed=seed, mean_run_pages=mean_run)
    out = []
    for backend in BACKENDS:
        for run in (run_map_sg(buf, backend), run_two_step(buf, backend, cpu_layout)):
            run["backend"] = backend
            run["ns"] = priced(run)
            out.append(run)
    return tuple(out)


def compare(workload: str, size: int | None = None, mean_run: float | None = None,
            cpu_layout: str = "phyr", seed: int = 0) -> list[dict[str, Any]]:
    """map_sg and two-step, on an IOMMU device and a dma-direct one (cached per setting)."""
    return [dict(r) for r in _compare(workload, size, mean_run, cpu_layout, seed)]


def table_rows(runs: list[dict[str, Any]], workload: str = "") -> list[dict[str, Any]]:
    """The printed figures of each run."""
    rows = []
    for r in runs:
        m, u = r["map"], r["unmap"]
        row = {"workload": workload} if workload else {}
        row.update({
            "device": r["backend"], "method": r["method"] + ("" if r["iova"] or
                                                              r["backend"] == "dma-direct"
                                                              and r["method"] == "map_sg"
                                                              else " (fallback)"),
            "calls": r["map_calls"] + r["unmap_calls"],
            "iova_allocs": m.get("iova_allocs", 0),
            "pte_writes": m.get("pte_writes", 0) + u.get("pte_writes", 0),
            "iotlb_map": m.get("iotlb_flushes", 0), "iotlb_unmap": u.get("iotlb_flushes", 0),
            "dma_entries": r["dma_entries"], "list_bytes": r["list_bytes"],
            "model_us": round(r["ns"]["total"] / 1000, 2),
        })
        rows.append(row)
    return rows


def case_rows(cases: dict[str, tuple[int | None, str]] | None = None, seed: int = 0
              ) -> list[dict[str, Any]]:
    """:func:`table_rows` for every case of the notebook (RDMA registration, block request)."""
    out = []
    for name, (size, layout) in (cases or CASES).items():
        out += table_rows(compare(name, size, None, layout, seed), name)
    return out


def time_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Modelled µs per counter for each run (where the time goes)."""
    keys = [k for k in cost.COST_KEYS if any(r["ns"].get(k) for r in runs)]
    return [{"device": r["backend"], "method": r["method"],
             **{k: round(r["ns"].get(k, 0.0) / 1000, 2) for k in keys},
             "total": round(r["ns"]["total"] / 1000, 2)} for r in runs]


def cost_rows(model: str = "x86-default") -> list[dict[str, Any]]:
    """The cost constants used (ns per unit), as loaded from data/cost-models/."""
    cm = cost.load(model)
    return [{"counter": k, "ns": c.ns, "per": c.per} for k, c in cm.costs.items()]


def chart_columns(runs: list[dict[str, Any]]) -> dict[str, list]:
    """One bar per (device, method): modelled ns stacked by counter, and list bytes."""
    cols: dict[str, list] = {"bar": [f"{r['backend']} · {r['method']}" for r in runs]}
    for k in TIME_PARTS:
        cols[k] = [r["ns"].get(k, 0.0) / 1000 for r in runs]
    cols["total_us"] = [r["ns"]["total"] / 1000 for r in runs]
    cols["time_label"] = [f"{r['ns']['total'] / 1000:,.1f} µs" for r in runs]
    cols["cpu_bytes"] = [r["list_bytes"] - r["dma_side_bytes"] for r in runs]
    cols["dma_bytes"] = [r["dma_side_bytes"] for r in runs]
    cols["list_bytes"] = [r["list_bytes"] for r in runs]
    cols["bytes_label"] = [f"{r['list_bytes']:,} B, {r['dma_entries']:,} DMA entr"
                           f"{'y' if r['dma_entries'] == 1 else 'ies'}" for r in runs]
    cols["list"] = [r["list"] for r in runs]
    return cols


#: counters drawn as stacked parts of the time bars (every priced key that a run can move).
TIME_PARTS = ("calls", "entries_walked", "pte_writes", "iotlb_flushes", "iova_allocs")
