"""IOMMU model speed: page-table mapping and IOVA churn, each against a per-entry baseline.

Run: ``.venv/bin/python benchmarks/iommu.py [--quick]``. Prints rates and the ratio to a
pure-Python per-entry baseline measured in the same run on a smaller size. Goals (issue 3):
64 GiB of 4 KiB pages (16 M PTEs) mapped in under 10 s and at least 50x the baseline.
"""

from __future__ import annotations

import argparse
import sys
import time

from phyrlab.iommu import IovaDomain, PageTable
from phyrlab.iommu.pagetable import get_format
from phyrlab.units import SZ_1G, SZ_2M, SZ_4K


def baseline_map(fmt_name: str, iova: int, paddr: int, size: int) -> int:
    """Per-entry pure Python: dict tables, ``iommu_pgsize`` and a walk for every leaf."""
    f = get_format(fmt_name)
    shifts = [f.entry_shift(lv) for lv in range(f.levels)]
    leaf_level = {1 << shifts[lv]: lv for lv in f.leaf_levels}
    bitmap = f.pgsize_bitmap
    root: dict = {}
    n = 0
    while size:
        addr_merge = iova | paddr
        pgsizes = bitmap & ((1 << size.bit_length()) - 1)
        pgsizes &= (addr_merge & -addr_merge) * 2 - 1 if addr_merge else -1
        pg = 1 << (pgsizes.bit_length() - 1)
        table = root
        for lv in range(leaf_level[pg]):
            idx = (iova >> shifts[lv]) & ((1 << f.level_bits[lv]) - 1)
            table = table.setdefault(idx, {})
        table[(iova >> shifts[leaf_level[pg]]) & ((1 << f.level_bits[leaf_level[pg]]) - 1)] = (
            paddr | 1)
        iova += pg
        paddr += pg
        size -= pg
        n += 1
    return n


def timed(fn, *a):
    t = time.perf_counter()
    r = fn(*a)
    return r, time.perf_counter() - t


def bench_map(label: str, page: int, sizes: list[int], base_size: int) -> None:
    # paddr offset by one page of the size: iommu_pgsize can use nothing larger than `page`
    off = page
    n_base, t_base = timed(baseline_map, "x86_64", SZ_1G, SZ_1G + off, base_size)
    base_rate = n_base / t_base
    print(f"{label}: baseline (pure Python, per PTE) {n_base} PTEs in {t_base:.3f} s = "
          f"{base_rate:,.0f} PTE/s")
    for size in sizes:
        pt = PageTable("x86_64")
        _, t = timed(pt.map, SZ_1G, SZ_1G + off, size)
        n = sum(pt.stats.leaves.values())
        assert n == size // page, (n, size // page)
        _, tu = timed(pt.unmap, SZ_1G, size)
        rate = n / t
        print(f"  map {size // SZ_1G} GiB of {page // 1024} KiB pages: {n:,} PTEs in {t:.2f} s "
              f"= {rate:,.0f} PTE/s ({rate / base_rate:.0f}x baseline); unmap {tu:.2f} s; "
              f"{pt.stats.table_pages_allocated} table pages")


def bench_iova(n: int, n_base: int) -> None:
    lim = (1 << 20) - 1
    # baseline: the same allocator's tree path per allocation (no range cache), 1000 live ranges
    d = IovaDomain(4096, 1)
    live = [d.alloc_iova(1, lim) for _ in range(1000)]
    t = time.perf_counter()
    for _ in range(n_base):
        p = d.alloc_iova(1, lim)
        d.free_iova(p)
    t_base = time.perf_counter() - t
    base_rate = n_base / t_base
    d = IovaDomain(4096, 1)
    live = [d.alloc(1, lim) for _ in range(1000)]
    for p in live[::2]:
        d.free(p, 1)
    t = time.perf_counter()
    for _ in range(n):
        p = d.alloc(1, lim)
        d.free(p, 1)
    t_fast = time.perf_counter() - t
    rate = n / t_fast
    print(f"IOVA churn: {n:,} alloc+free (rcache hits) in {t_fast:.2f} s = {rate:,.0f}/s; "
          f"baseline tree path {n_base:,} in {t_base:.2f} s = {base_rate:,.0f}/s; "
          f"ratio {rate / base_rate:.1f}x (one Python call per allocation on both sides)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="1 GiB only, 10^5 IOVA ops")
    args = ap.parse_args(argv)
    big = [SZ_1G] if args.quick else [SZ_1G, 64 * SZ_1G]
    bench_map("4 KiB pages", SZ_4K, big, 64 << 20)
    bench_map("2 MiB pages", SZ_2M, big, 8 * SZ_1G)
    bench_iova(10**5 if args.quick else 10**6, 10**5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
