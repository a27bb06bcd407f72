"""Whole-suite headless execution time, and control-to-data time of each notebook's main panel.

Prints the wall time of executing every notebook headless (nbclient, as ``make report`` does)
and, per notebook, the median time from a control change to updated plot data, calling the
panel's ``update()`` directly (what an ipywidgets ``observe`` callback runs), at the default
settings and at settings that give about 10^6 entries (``phyrlab.widgets.PANELS``).

'cold' is what a user waits for after moving a control to a value not seen before: every
``functools`` cache in phyrlab is cleared, the panel is updated at its default settings (which
warms what does not depend on the setting: cost models, catalogues), then the update to the
10^6 setting is timed; the median of ``--repeat`` such runs is printed. 'default' is the same
for the move back to the default settings, caches cleared. 'warm' is a setting seen before
(a cache hit). Targets: suite under 60 s; control-to-data under 50 ms at default
sizes, under 250 ms at 10^6 entries (cold).
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time

from timing import median_ms

from phyrlab.nbtools import execute, notebook_paths
from phyrlab.widgets import PANELS


def clear_caches() -> int:
    """``cache_clear()`` every lru_cache of every loaded phyrlab module; returns how many."""
    n = 0
    for name, mod in list(sys.modules.items()):
        if not (name == "phyrlab" or name.startswith("phyrlab.")):
            continue
        for obj in list(vars(mod).values()):
            if callable(obj) and callable(getattr(obj, "cache_clear", None)):
                obj.cache_clear()
                n += 1
    return n


def cold_ms(panel, large: dict, repeat: int) -> float:
    """Median ms of the update from the default setting to ``large`` with caches cleared."""
    times = []
    for _ in range(repeat):
        clear_caches()
        panel.update()
        t0 = time.perf_counter()
        panel.update(**large)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def default_cold_ms(panel, large: dict, repeat: int) -> float:
    """Median ms of the update back to the default setting, caches cleared, from ``large``."""
    times = []
    for _ in range(repeat):
        panel.update(**large)
        clear_caches()
        t0 = time.perf_counter()
        panel.update()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="skip executing the suite")
    ap.add_argument("--repeat", type=int, default=3, help="cold runs per notebook (median)")
    ap.add_argument("--only", default="", help="notebook stems to time, comma-separated")
    args = ap.parse_args()
    if not args.quick:
        t0 = time.perf_counter()
        for path in notebook_paths():
            t1 = time.perf_counter()
            execute(path)
            print(f"  {path.name:32} {time.perf_counter() - t1:6.1f} s")
        total = time.perf_counter() - t0
        print(f"whole suite headless: {total:.1f} s (target < 60 s) "
              f"{'ok' if total < 60 else 'OVER'}")
    print("control-to-data, ms (median): 'default' and '10^6 cold' = first update at that setting,")
    print("caches cleared; 'warm' = a setting seen before. Targets: default < 50, 10^6 < 250.")
    print(f"{'notebook':22} {'build':>8} {'default':>8} {'10^6 cold':>10} {'10^6 warm':>10}  ok")
    only = {s for s in args.only.split(",") if s}
    for stem, (target, large) in PANELS.items():
        if only and stem not in only:
            continue
        module, func = target.split(":")
        t0 = time.perf_counter()
        panel = getattr(importlib.import_module(module), func)()
        build = (time.perf_counter() - t0) * 1e3
        default = default_cold_ms(panel, large, args.repeat)
        cold = cold_ms(panel, large, args.repeat)
        panel.update(**large)
        warm = median_ms(lambda p=panel, kw=large: p.update(**kw), 3)
        ok = default < 50 and cold < 250
        print(f"{stem:22} {build:8.0f} {default:8.1f} {cold:10.1f} {warm:10.1f}  "
              f"{'yes' if ok else 'NO'}", flush=True)


if __name__ == "__main__":
    main()
