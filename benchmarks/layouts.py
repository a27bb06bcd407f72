"""Build every layout from a PFN array, and read its ranges() back, against numpy's copy floor.

For 2^26 pages (256 GiB of 4 KiB pages; ``--quick``: 2^22) with a mean physical run of 2 pages
(the rdma-mr-1g-4k shape), prints per layout: time to build from the PFN array and to produce
``ranges()``, each as a multiple of the time numpy takes to copy the PFN array once (measured in
the same run), and the memory the built object holds per entry (tracemalloc, which sees numpy's
allocations) next to ``entry_size``. Targets: within 10x of the copy floor; memory per entry
within 10% of ``entry_size``.
"""

from __future__ import annotations

import argparse
import gc
import tracemalloc

from timing import best_of

from phyrlab.layouts import LAYOUTS
from phyrlab.memory import fragmented_pfns


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--log2-pages", type=int, default=None)
    args = ap.parse_args()
    log2 = args.log2_pages or (22 if args.quick else 26)
    pfns = fragmented_pfns(1 << log2, mean_run=2, seed=0)
    repeat = 3 if log2 <= 24 else 2
    floor = best_of(lambda: pfns.copy(), repeat)
    print(f"{pfns.size:,} pages ({pfns.size * 4096 >> 30} GiB), copy floor {floor * 1e3:.1f} ms")
    print(f"{'layout':12} {'entries':>12} {'build ms':>9} {'x floor':>8} {'ranges ms':>10} "
          f"{'x floor':>8} {'B/entry':>8} {'entry_size':>10} {'ok':>4}")
    worst = 0.0
    for name, cls in LAYOUTS.items():
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        x = cls.from_pages(pfns)
        held = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        t_build = best_of(lambda cls=cls: cls.from_pages(pfns), repeat)
        t_ranges = best_of(x.ranges, repeat)
        per_entry = held / len(x)
        ok = (t_build / floor <= 10 and t_ranges / floor <= 10
              and abs(per_entry - cls.entry_size) <= 0.1 * cls.entry_size)
        worst = max(worst, t_build / floor, t_ranges / floor)
        print(f"{name:12} {len(x):12,} {t_build * 1e3:9.1f} {t_build / floor:8.2f} "
              f"{t_ranges * 1e3:10.1f} {t_ranges / floor:8.2f} {per_entry:8.2f} "
              f"{cls.entry_size:10d} {'yes' if ok else 'NO':>4}")
        del x
    print(f"worst ratio to the copy floor: {worst:.2f}x (target <= 10x)")


if __name__ == "__main__":
    main()
