"""Figures for the IOMMU notebook (03-iommu-page-tables): pure functions, plain dicts/arrays.

Each function builds a fresh :class:`IommuDmaDomain`, maps a workload's physical ranges the
way ``iommu_dma_map_sg`` does, and reports what the model counted: table memory, PTE writes per
MiB, the leaf-size mix, IOTLB flushes and stale windows (strict or lazy), and IOVA
fragmentation over a seeded map/unmap churn. Ranges are ``(addr, length)`` arrays or anything
``phyrlab.layouts.as_ranges`` accepts.
"""

from __future__ import annotations

import copy
from functools import lru_cache

import numpy as np

from phyrlab.iommu.dma_iommu import (
    IommuDmaDomain,
    iommu_dma_map_phys,
    iommu_dma_map_sg,
    iommu_dma_unmap_phys,
    iommu_dma_unmap_sg,
)
from phyrlab.iommu.pagetable import get_format
from phyrlab.units import DMA_BIT_MASK, PAGE_MASK, U64_MAX, UINT_MAX, human_bytes

#: ``SCATTERLIST_MAX_SEGMENT``: the default largest segment the experiments hand to map_sg.
MAX_SEGMENT = UINT_MAX & PAGE_MASK


def _ranges(ranges) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(ranges, tuple) and len(ranges) == 2:
        addr, length = ranges
    else:
        from phyrlab.layouts import as_ranges  # the lead's module; imported when needed
        addr, length = as_ranges(ranges)
    return np.asarray(addr, dtype=np.uint64).ravel(), np.asarray(length, dtype=np.uint64).ravel()


def split_segments(addr: np.ndarray, length: np.ndarray, max_seg: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Cut every range into pieces of at most ``max_seg`` bytes (what the block layer does)."""
    if (addr.dtype == length.dtype == np.uint64 and addr.size == length.size and length.size
            and 0 < int(length.min()) and int(length.max()) <= max_seg):
        return addr.copy(), length.copy()       # one piece per range: nothing to cut
    n = (length + np.uint64(max_seg - 1)) // np.uint64(max_seg)
    idx = np.repeat(np.arange(addr.size), n.astype(np.int64))
    first = np.concatenate([[0], np.cumsum(n)[:-1]]).astype(np.int64)
    k = (np.arange(idx.size) - np.repeat(first, n.astype(np.int64))).astype(np.uint64)
    a = addr[idx] + k * np.uint64(max_seg)
    ln = np.minimum(np.uint64(max_seg), length[idx] - k * np.uint64(max_seg))
    return a, ln


def pagetable_cost(fmt: str, ranges, *, strict: bool = True,
                   max_seg_size: int = MAX_SEGMENT) -> dict:
    """Map one workload with ``iommu_dma_map_sg`` and report the page table's cost.

    Returns ``table_pages``, ``table_bytes``, ``mapped_bytes`` (IOVA bytes mapped, padding
    included), ``pte_writes``, ``pte_writes_per_mib``, ``table_bytes_per_gib``, ``leaf_mix``
    (leaf size -> count), ``dma_segments`` and, after the unmap, ``iotlb`` (the policy's counts).
    """
    addr, length = _ranges(ranges)
    addr, length = split_segments(addr, length, max_seg_size)
    d = IommuDmaDomain(fmt, strict=strict)
    root_writes = d.pt.stats.pte_writes
    da, dl = iommu_dma_map_sg(d, addr, length, max_seg_size=max_seg_size,
                              seg_boundary_mask=U64_MAX, dma_limit=DMA_BIT_MASK(64))
    st = d.pt.stats
    mapped = st.mapped_bytes
    out = {
        "format": d.fmt.name,
        "bytes": int(length.sum()),
        "mapped_bytes": mapped,
        "table_pages": st.table_pages,
        "table_bytes": st.table_bytes,
        "table_bytes_per_gib": st.table_bytes * (1 << 30) / mapped,
        "pte_writes": st.pte_writes - root_writes,
        "pte_writes_per_mib": (st.pte_writes - root_writes) * (1 << 20) / mapped,
        "leaf_mix": {k: v for k, v in sorted(st.leaves.items()) if v},
        "dma_segments": int(da.size),
        "cpu_segments": int(addr.size),
    }
    iommu_dma_unmap_sg(d, da, dl)
    out["iotlb"] = d.iotlb.stats()
    out["iotlb_syncs"] = d.pt.stats.iotlb_syncs
    return out


def compare_formats(ranges, formats: list[str] | None = None, **kw) -> dict[str, dict]:
    """:func:`pagetable_cost` for several formats (default: every registered format that fits)."""
    from phyrlab.iommu.pagetable import FORMATS
    names = formats or [f for f in FORMATS if f != "single_level_4k"]
    return {f: pagetable_cost(f, ranges, **kw) for f in names}


def iotlb_cost(fmt: str, ranges, *, strict: bool, repeats: int = 1000,
               interval_ns: int = 2_000, fq_size: int = 256,
               fq_timeout_ns: int = 10_000_000, per_range: bool = True) -> dict:
    """Map and unmap a workload ``repeats`` times, ``interval_ns`` apart in model time.

    ``per_range``: one ``map_phys``/``unmap_phys`` per range (a NIC's or NVMe's pattern);
    else one ``map_sg``/``unmap_sg`` per repeat. Returns flushes, flushes per unmap, and the
    stale-window summary (``max_ns``, ``mean_ns``, ``page_ns``) of the invalidation policy.
    """
    addr, length = _ranges(ranges)
    d = IommuDmaDomain(fmt, strict=strict, fq_size=fq_size, fq_timeout_ns=fq_timeout_ns)
    lim = DMA_BIT_MASK(64)
    for _ in range(repeats):
        if per_range:
            dmas = [iommu_dma_map_phys(d, int(a), int(n), lim)
                    for a, n in zip(addr.tolist(), length.tolist(), strict=True)]
            d.advance(interval_ns)
            for dma, n in zip(dmas, length.tolist(), strict=True):
                iommu_dma_unmap_phys(d, dma, int(n))
        else:
            a, n = split_segments(addr, length, MAX_SEGMENT)
            da, dl = iommu_dma_map_sg(d, a, n, max_seg_size=MAX_SEGMENT,
                                      seg_boundary_mask=U64_MAX, dma_limit=lim)
            d.advance(interval_ns)
            iommu_dma_unmap_sg(d, da, dl)
    end_pending = len(d.iotlb.pending())
    d.advance(fq_timeout_ns)
    s = d.iotlb.stats()
    unmaps = max(1, s["unmaps"])
    return {"mode": s["mode"], "unmaps": s["unmaps"], "flushes": s["flushes"],
            "flushes_per_unmap": s["flushes"] / unmaps, "pending_at_end": end_pending,
            "stale": s["stale"], "iotlb_syncs": d.pt.stats.iotlb_syncs,
            "flush_all": d.pt.stats.iotlb_flush_all}


def iova_churn(fmt: str = "x86_64", *, n_ops: int = 20_000, seed: int = 0,
               max_live: int = 512, pages=(1, 2, 4, 8, 16, 64, 256),
               weights=(40, 15, 15, 10, 10, 6, 4), strict: bool = True,
               sample_every: int = 200, dma_limit: int = DMA_BIT_MASK(32),
               dev_is_pci: bool = True, interval_ns: int = 1_000,
               unmap_prob: float = 0.5) -> dict[str, np.ndarray]:
    """Seeded map/unmap churn through dma-iommu; IOVA fragmentation sampled over time.

    One operation every ``interval_ns`` of model time (the flush-queue timer runs on it).

    Each step maps a buffer of a random size (granules, drawn with ``weights``) or unmaps a
    random live one (with probability ``unmap_prob``; forced when ``max_live`` are live).
    Returns arrays ``step``, ``largest_free`` and ``free_ranges`` (tree view below
    ``dma_limit``), ``live``, ``cached`` (ranges parked in the range caches), and the IOTLB
    policy's running counts:
    ``unmaps``, ``flushes`` (strict: range invalidations; lazy: whole-IOTLB flushes) and
    ``stale_max_ns`` (longest unmap-to-flush window so far).
    """
    rng = np.random.default_rng(seed)
    d = IommuDmaDomain(fmt, strict=strict)
    g = d.granule
    p = np.asarray(weights, dtype=float)
    p /= p.sum()
    sizes = rng.choice(np.asarray(pages), size=n_ops, p=p)
    coins = rng.random(n_ops)
    picks = rng.integers(0, 1 << 30, n_ops)
    live: list[tuple[int, int]] = []
    rec = {k: [] for k in ("step", "largest_free", "free_ranges", "live", "cached",
                           "unmaps", "flushes", "stale_max_ns")}
    limit_pfn = min(dma_limit, d.aperture_end) >> d.shift
    for i in range(n_ops):
        if live and (len(live) >= max_live or coins[i] < unmap_prob):
            j = int(picks[i]) % len(live)
            dma, size = live[j]
            live[j] = live[-1]
            live.pop()
            iommu_dma_unmap_phys(d, dma, size)
        else:
            size = int(sizes[i]) * g
            live.append((iommu_dma_map_phys(d, (i % 4096) * g, size, dma_limit,
                                            dev_is_pci=dev_is_pci), size))
        d.advance(interval_ns)
        if i % sample_every == 0 or i == n_ops - 1:
            f = d.iovad.fragmentation(limit_pfn)
            rec["step"].append(i)
            rec["largest_free"].append(f["largest_free"])
            rec["free_ranges"].append(f["free_ranges"])
            rec["live"].append(len(live))
            rec["cached"].append(len(d.iovad.cached_pfns_view()))
            rec["unmaps"].append(d.iotlb.unmaps)
            rec["flushes"].append(d.iotlb.flushes)
            rec["stale_max_ns"].append(d.iotlb.stale.max_ns)
    return {k: np.asarray(v, dtype=np.int64) for k, v in rec.items()}


# ---- notebook 03: cached figures per setting ---------------------------------------------
#: The formats the notebook compares (every registered one but the flat 4 GiB table).
NOTEBOOK_FORMATS = ("x86_64", "x86_64_5lvl", "arm_lpae_4k", "arm_lpae_16k", "arm_lpae_64k")


def per_data(c: dict) -> dict:
    """Costs of one :func:`pagetable_cost` result per byte of the buffer (not of IOVA).

    ``pte_writes_per_mib`` and ``table_bytes_per_gib`` of :func:`pagetable_cost` divide by the
    IOVA bytes mapped, which a large granule inflates (a 4 KiB page maps a whole 64 KiB
    granule); per byte of the buffer the driver asked to map, the costs compare fairly.
    """
    data = max(1, c["bytes"])
    return {"pte_writes_per_mib": c["pte_writes"] * (1 << 20) / data,
            "table_bytes_per_gib": c["table_bytes"] * (1 << 30) / data,
            "iova_per_byte": c["mapped_bytes"] / data}


def format_rows(formats=NOTEBOOK_FORMATS) -> list[dict]:
    """The formats as data: granule, levels, leaf sizes, root table bytes, IOVA bits."""
    rows = []
    for name in formats:
        f = get_format(name)
        rows.append({"format": f.name, "granule": human_bytes(f.granule), "levels": f.levels,
                     "leaf_sizes": ", ".join(human_bytes(s) for s in f.leaf_sizes),
                     "root_bytes": f.table_bytes(0), "iova_bits": f.ias})
    return rows


@lru_cache(maxsize=64)
def _buffer_ranges(workload: str, size: int | None, seed: int, mean_run_pages: float | None,
                   page_size: int | None, granule: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    from phyrlab.workloads import build, catalogue
    k = granule // 4096
    huge = (page_size or 0) > 4096 or (page_size is None
                                       and catalogue()[workload].model == "hugepage")
    if k > 1 and not huge:
        full = catalogue()[workload].size if size is None else size
        buf = build(workload, size=max(1, full // k), seed=seed, mean_run_pages=mean_run_pages,
                    page_size=page_size)
    else:
        k = 1
        buf = build(workload, size=size, seed=seed, mean_run_pages=mean_run_pages,
                    page_size=page_size)
    addr, length = buf.ranges()
    addr = np.array(addr, dtype=np.uint64) * np.uint64(k)
    length = np.array(length, dtype=np.uint64) * np.uint64(k)
    addr.flags.writeable = length.flags.writeable = False
    return addr, length


def workload_ranges(workload: str, fmt: str, size: int | None = None, *, seed: int = 0,
                    mean_run_pages: float | None = None, page_size: int | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The seeded buffer of ``workload`` as the kernel that uses ``fmt`` would hold it.

    ``arm_lpae_restrict_pgsizes()`` picks the granule that matches the CPU's ``PAGE_SIZE``
    ("Aim to match the CPU page size if possible, otherwise prefer smaller sizes"), and
    ``init_iova_domain()`` refuses a granule above ``PAGE_SIZE``: a 16K/64K-granule domain
    belongs to a 16K/64K-page kernel. So for those formats a page-based workload is rebuilt in
    that kernel's pages: same size in bytes, same run lengths counted in pages (the model's
    4 KiB page frames scaled by ``granule / 4 KiB``). Huge-page backings keep their sizes.
    Simplification: an I/O smaller than a page (nvme-4k-random) becomes a whole page.
    """
    g = get_format(fmt).granule
    return _buffer_ranges(workload, size, seed, mean_run_pages, page_size, g)


@lru_cache(maxsize=1024)
def _workload_cost(workload: str, size: int | None, fmt: str, seed: int,
                   mean_run_pages: float | None, page_size: int | None) -> dict:
    return pagetable_cost(fmt, workload_ranges(workload, fmt, size, seed=seed,
                                               mean_run_pages=mean_run_pages,
                                               page_size=page_size))


def workload_cost(workload: str, fmt: str, size: int | None = None, *, seed: int = 0,
                  mean_run_pages: float | None = None, page_size: int | None = None) -> dict:
    """:func:`pagetable_cost` of :func:`workload_ranges` (cached per setting; a copy)."""
    return copy.deepcopy(_workload_cost(workload, size, fmt, seed, mean_run_pages, page_size))


def _leaf_text(mix: dict) -> str:
    return " + ".join(f"{n:,} x {human_bytes(s)}" for s, n in sorted(mix.items())) or "-"


def cost_rows(workloads, formats=NOTEBOOK_FORMATS, size: int | None = None,
              seed: int = 0) -> list[dict]:
    """One row per (workload, format): segments in and out, table memory, PTE writes, leaves.

    ``size`` None: each workload's own default size.
    """
    rows = []
    for w in workloads:
        for f in formats:
            c = _workload_cost(w, size, f, seed, None, None)
            rows.append({
                "workload": w, "size": human_bytes(c["bytes"]), "format": f,
                "cpu_segs": c["cpu_segments"], "dma_segs": c["dma_segments"],
                "iova_mapped": human_bytes(c["mapped_bytes"]),
                "table": human_bytes(c["table_bytes"]),
                "pte_writes_per_MiB": round(per_data(c)["pte_writes_per_mib"], 2),
                "leaves": _leaf_text(c["leaf_mix"]),
                "unmap_invalidations": c["iotlb"]["flushes"],
            })
    return rows


def format_columns(workload: str, size: int | None, formats=NOTEBOOK_FORMATS,
                   seed: int = 0) -> dict[str, list]:
    """Per-format columns for the bar charts: table bytes and PTE writes per MiB of the
    buffer, labelled."""
    cs = [_workload_cost(workload, size, f, seed, None, None) for f in formats]
    return {
        "format": list(formats),
        "table_bytes": [c["table_bytes"] for c in cs],
        "table_label": [f"{human_bytes(c['table_bytes'])} ({c['table_pages']} tables)"
                        for c in cs],
        "pte_per_mib": [round(per_data(c)["pte_writes_per_mib"], 2) for c in cs],
        "pte_label": [f"{per_data(c)['pte_writes_per_mib']:,.1f}" for c in cs],
        "iova_label": [f"{human_bytes(c['mapped_bytes'])} of IOVA" for c in cs],
        "dma_segments": [c["dma_segments"] for c in cs],
        "mapped_bytes": [c["mapped_bytes"] for c in cs],
    }


def leaf_mix_columns(workload: str, size: int | None, fmt: str, seed: int = 0
                     ) -> dict[str, list]:
    """The leaf-size mix of one mapping: every leaf size of ``fmt``, its count and its share
    of the IOVA bytes mapped (percent)."""
    c = _workload_cost(workload, size, fmt, seed, None, None)
    sizes = get_format(fmt).leaf_sizes
    counts = [int(c["leaf_mix"].get(s, 0)) for s in sizes]
    mapped = max(1, c["mapped_bytes"])
    return {"leaf": [human_bytes(s) for s in sizes], "count": counts,
            "share": [round(100.0 * n * s / mapped, 2) for n, s in zip(counts, sizes,
                                                                    strict=True)],
            "count_label": [f"{n:,} leaves" for n in counts]}


#: Physical backings of the contiguity sweep: (label, mean run in pages, huge page size).
BACKINGS = (("run 1 pg", 1.0, None), ("run 2 pg", 2.0, None), ("run 4 pg", 4.0, None),
            ("run 16 pg", 16.0, None), ("run 64 pg", 64.0, None), ("run 512 pg", 512.0, None),
            ("2M aligned", None, 2 << 20), ("1G aligned", None, 1 << 30))


def contiguity_sweep(size: int = 1 << 30, formats=NOTEBOOK_FORMATS, seed: int = 0,
                     workload: str = "rdma-mr-1g-4k") -> dict[str, dict[str, list]]:
    """Table bytes per GiB and PTE writes per MiB of the buffer, per format, per backing.

    ``run N pg``: pages (of the format's granule, see :func:`workload_ranges`) in physically
    contiguous runs of mean N pages, at no particular alignment; ``2M aligned`` /
    ``1G aligned``: naturally aligned 2 MiB / 1 GiB blocks (huge pages). Returns
    ``{"pte_writes_per_mib": {"backing": [...], fmt: [...]}, "table_bytes_per_gib": {...}}``.
    """
    labels = [b[0] for b in BACKINGS]
    out = {k: {"backing": list(labels)} for k in ("pte_writes_per_mib", "table_bytes_per_gib")}
    for f in formats:
        for k in out:
            out[k][f] = []
        for _label, run, page in BACKINGS:
            c = per_data(_workload_cost(workload, size, f, seed, run, page))
            for k in out:
                out[k][f].append(round(float(c[k]), 3))
    return out


#: The notebook's churn maps more often than it unmaps until ``max_live`` buffers are in
#: flight (a driver filling its ring), then every map waits for an unmap.
CHURN_UNMAP_PROB = 0.3
#: Model time between two churn operations (the flush queue's 10 ms timer runs on it).
CHURN_INTERVALS_NS = (1_000, 10_000, 100_000)


@lru_cache(maxsize=64)
def _churn(fmt: str, strict: bool, max_live: int, n_ops: int, seed: int,
           interval_ns: int) -> dict:
    r = iova_churn(fmt, n_ops=n_ops, seed=seed, max_live=max_live, strict=strict,
                   sample_every=max(1, n_ops // 60), interval_ns=interval_ns,
                   unmap_prob=CHURN_UNMAP_PROB)
    for v in r.values():
        v.flags.writeable = False
    return r


def churn(strict: bool = True, max_live: int = 128, interval_ns: int = 1_000, *,
          fmt: str = "x86_64", n_ops: int = 1500, seed: int = 0) -> dict[str, np.ndarray]:
    """:func:`iova_churn` sampled about 60 times, plus ``time_us`` (cached; arrays are copies).

    The allocator counts in granules, so every format of one granule gives the same churn.
    """
    r = {k: v.copy() for k, v in _churn(fmt, bool(strict), int(max_live), int(n_ops),
                                         int(seed), int(interval_ns)).items()}
    r["time_us"] = (r["step"] + 1) * interval_ns / 1000.0
    return r


def churn_rows(intervals_ns=CHURN_INTERVALS_NS, max_live: int = 128, n_ops: int = 1500,
               seed: int = 0, fmt: str = "x86_64") -> list[dict]:
    """Strict vs lazy over the same seeded churn: invalidations, stale windows, IOVA holes."""
    rows = []
    for ns in intervals_ns:
        for strict in (True, False):
            r = _churn(fmt, strict, int(max_live), int(n_ops), int(seed), int(ns))
            unmaps = max(1, int(r["unmaps"][-1]))
            rows.append({
                "op_every_us": round(ns / 1000.0, 1), "mode": "strict" if strict else "lazy",
                "unmaps": int(r["unmaps"][-1]),
                "invalidations": int(r["flushes"][-1]),
                "per_1000_unmaps": round(1000.0 * int(r["flushes"][-1]) / unmaps, 2),
                "max_stale_us": round(int(r["stale_max_ns"][-1]) / 1000.0, 1),
                "iova_holes_max": int(r["free_ranges"].max()),
                "iova_holes_end": int(r["free_ranges"][-1]),
                "rcache_end": int(r["cached"][-1]),
            })
    return rows


def sweep_rows(series: dict[str, list], scale: float = 1.0, digits: int = 3) -> list[dict]:
    """One :func:`contiguity_sweep` metric as table rows (one per backing), values / ``scale``."""
    keys = [k for k in series if k != "backing"]
    return [{"backing": b, **{k: round(series[k][i] / scale, digits) for k in keys}}
            for i, b in enumerate(series["backing"])]
