"""Figures for the IOMMU notebook (03-iommu-page-tables): pure functions, plain dicts/arrays.

Each function builds a fresh :class:`IommuDmaDomain`, maps a workload's physical ranges the
way ``iommu_dma_map_sg`` does, and reports what the model counted: table memory, PTE writes per
MiB, the leaf-size mix, IOTLB flushes and stale windows (strict or lazy), and IOVA
fragmentation over a seeded map/unmap churn. Ranges are ``(addr, length)`` arrays or anything
``phyrlab.layouts.as_ranges`` accepts.
"""

from __future__ import annotations

import numpy as np

from phyrlab.iommu.dma_iommu import (
    IommuDmaDomain,
    iommu_dma_map_phys,
    iommu_dma_map_sg,
    iommu_dma_unmap_phys,
    iommu_dma_unmap_sg,
)
from phyrlab.units import DMA_BIT_MASK, PAGE_MASK, U64_MAX, UINT_MAX

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
               dev_is_pci: bool = True) -> dict[str, np.ndarray]:
    """Seeded map/unmap churn through dma-iommu; IOVA fragmentation sampled over time.

    Each step maps a buffer of a random size (granules, drawn with ``weights``) or unmaps a
    random live one (forced when ``max_live`` are live). Returns arrays ``step``,
    ``largest_free`` and ``free_ranges`` (tree view below ``dma_limit``), ``live``, and
    ``cached`` (ranges parked in the range caches).
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
    rec = {k: [] for k in ("step", "largest_free", "free_ranges", "live", "cached")}
    limit_pfn = min(dma_limit, d.aperture_end) >> d.shift
    for i in range(n_ops):
        if live and (len(live) >= max_live or coins[i] < 0.5):
            j = int(picks[i]) % len(live)
            dma, size = live[j]
            live[j] = live[-1]
            live.pop()
            iommu_dma_unmap_phys(d, dma, size)
        else:
            size = int(sizes[i]) * g
            live.append((iommu_dma_map_phys(d, (i % 4096) * g, size, dma_limit,
                                            dev_is_pci=dev_is_pci), size))
        d.advance(1_000)
        if i % sample_every == 0 or i == n_ops - 1:
            f = d.iovad.fragmentation(limit_pfn)
            rec["step"].append(i)
            rec["largest_free"].append(f["largest_free"])
            rec["free_ranges"].append(f["free_ranges"])
            rec["live"].append(len(live))
            rec["cached"].append(len(d.iovad.cached_pfns_view()))
    return {k: np.asarray(v, dtype=np.int64) for k, v in rec.items()}
