"""classify_ranges() (array lookups) against a per-range Python loop (find_p2p_bar + map type).

Prints per-range cost of each and the speed-up ratio, measured in the same run.
Usage: .venv/bin/python benchmarks/pci_classify.py
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

import phyrlab.pci as pci

TOPO = Path(__file__).resolve().parents[1] / "data" / "topologies" / "switch-nvme-gpu-nic.yaml"


def main() -> None:
    t = pci.load(TOPO)
    client = "0000:1b:00.0"
    rng = np.random.default_rng(5)
    n = 1_000_000
    cmb = 0x3FFE0000000
    p2p = rng.random(n) < 0.3  # 30 % of the ranges sit in the CMB
    addr = np.where(p2p, cmb + rng.integers(0, 65536, n) * 4096,
                    rng.integers(1, 1 << 24, n) * 4096).astype(np.uint64)
    length = np.full(n, 4096, dtype=np.uint64)
    pci.classify_ranges(t, client, addr[:10], length[:10])  # warm the caches
    t0 = time.perf_counter()
    fast = pci.classify_ranges(t, client, addr, length)
    t_fast = (time.perf_counter() - t0) / n

    m = 20_000
    t0 = time.perf_counter()
    slow = []
    for a in addr[:m].tolist():
        hit = pci.find_p2p_bar(t, a)
        slow.append(pci.MapType.NONE if hit is None
                    else pci.pci_p2pdma_map_type(t, hit[0], client))
    t_slow = (time.perf_counter() - t0) / m
    assert [int(x) for x in slow] == fast.map_type[:m].tolist()
    print(f"classify_ranges: {t_fast * 1e9:8.1f} ns/range over {n} ranges")
    print(f"per-range loop : {t_slow * 1e9:8.1f} ns/range over {m} ranges")
    print(f"ratio (loop / classify_ranges): {t_slow / t_fast:.0f}x")


if __name__ == "__main__":
    main()
