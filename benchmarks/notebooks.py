"""Whole-suite headless execution time, and control-to-data time of each notebook's main panel.

Prints the wall time of executing every notebook headless (nbclient, as ``make report`` does)
and, per notebook, the median time from a control change to updated plot data, calling the
panel's ``update()`` directly (what an ipywidgets ``observe`` callback runs), at the default
settings and at settings that give about 10^6 entries (``phyrlab.widgets.PANELS``).
Targets: suite under 60 s; control-to-data under 50 ms at default sizes, under 250 ms at 10^6.
"""

from __future__ import annotations

import argparse
import importlib
import time

from timing import median_ms

from phyrlab.nbtools import execute, notebook_paths
from phyrlab.widgets import PANELS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="skip executing the suite")
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
    print("control-to-data, ms: 'cold' is the first update at a setting (what a user waits for")
    print("after moving a control to a new value), 'warm' the median of repeats (cached).")
    print(f"{'notebook':22} {'build':>8} {'default':>8} {'10^6 cold':>10} {'10^6 warm':>10}  ok")
    for stem, (target, large) in PANELS.items():
        module, func = target.split(":")
        t0 = time.perf_counter()
        panel = getattr(importlib.import_module(module), func)()
        build = (time.perf_counter() - t0) * 1e3
        default = median_ms(panel.update, 7)
        t0 = time.perf_counter()
        panel.update(**large)
        cold = (time.perf_counter() - t0) * 1e3
        warm = median_ms(lambda p=panel, kw=large: p.update(**kw), 3)
        ok = default < 50 and cold < 250
        print(f"{stem:22} {build:8.0f} {default:8.1f} {cold:10.1f} {warm:10.1f}  "
              f"{'yes' if ok else 'NO'}")


if __name__ == "__main__":
    main()
