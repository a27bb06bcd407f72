"""map_sg + unmap_sg through every non-core dma_map_ops row, against per-entry Python floors.

For a list of N ranges (default 4096; ``--quick``: 1024) of 1-4 pages at random page frames
above 4 GiB (so every table row must translate), prints per row the time to map and unmap the
list as a multiple of two baselines measured in the same run: ``loop``, a plain Python loop
doing one dict store per range (the cheapest conceivable per-entry engine), and ``copy``, numpy
copying the two input arrays. Also times ``IommuTable.area_alloc`` against a line-by-line
transcription of lib/iommu-helper.c on a half-full 64Ki-entry bitmap. Nothing is asserted:
read the ratios (rows that allocate per entry, as the kernel does, pay one Python call each).
"""

from __future__ import annotations

import argparse

import numpy as np
from timing import best_of

from phyrlab.dma.device import Device
from phyrlab.dma.iommu_table import IommuTable
from phyrlab.dma.ops import OPS
from phyrlab.units import DMA_BIT_MASK


def scalar_area_alloc(m, size, start, nr):  # lib/iommu-helper.c, no numpy
    while True:
        idx = start
        while idx < size and m[idx]:
            idx += 1
        end = idx + nr
        if end >= size:
            return -1
        busy = [i for i in range(idx, end) if m[i]]
        if busy:
            start = busy[0] + 1
            continue
        return idx


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("-n", type=int, default=None)
    args = ap.parse_args()
    n = args.n or (1024 if args.quick else 4096)
    rng = np.random.default_rng(0)
    addr = (rng.integers(1 << 20, 1 << 22, n) << 12).astype(np.uint64)  # 4-16 GiB
    length = (rng.integers(1, 5, n) << 12).astype(np.uint64)

    def loop():
        d = {}
        for i, (a, b) in enumerate(zip(addr.tolist(), length.tolist(), strict=True)):
            d[i] = a + b
        return d

    t_loop = best_of(loop)
    t_copy = best_of(lambda: (addr.copy(), length.copy()))
    print(f"{n} ranges; python loop floor {t_loop * 1e3:.2f} ms, numpy copy {t_copy * 1e6:.1f} us")
    print(f"{'ops':28} {'out':>6} {'map+unmap ms':>13} {'x loop':>7} {'x copy':>8}")
    for name, entry in OPS.items():
        if entry.family not in ("single_level", "s390", "xen", "linear"):
            continue
        mask = DMA_BIT_MASK(64) if name in ("xen_grant_dma_ops", "ibmebus_dma_ops") else \
            DMA_BIT_MASK(32)
        params = {"entries": 1 << 18} if entry.family == "single_level" else {}
        if name in ("ps3_sb_dma_ops", "ps3_ioc0_dma_ops"):
            params = {"region_size": 1 << 40}
        if name == "vio_dma_mapping_ops":
            params["entitlement"] = 1 << 40
        if name == "jazz_dma_ops":
            params["entries"] = 1 << 18
        dev = Device(name, dma_mask=mask, ops_params=params)
        if not dev.ops.supports_sg:
            continue
        out = [0]

        def run(dev=dev, out=out):
            dma, dlen, cookie = dev.ops.map_sg(dev, addr, length, "to_device")
            out[0] = len(dma)
            dev.ops.unmap_sg(dev, dma, dlen, "to_device", cookie)

        t = best_of(run)
        print(f"{name:28} {out[0]:6} {t * 1e3:13.2f} {t / t_loop:7.1f} {t / t_copy:8.0f}")

    for fill in (0.5, 0.995):
        m = rng.random(1 << 16) < fill
        t = IommuTable(1 << 16)
        t.map[:] = m  # setting bits keeps low_free = 0 a valid bound
        starts = rng.integers(0, 1 << 15, 200).tolist()

        def vec(t=t, m=m, starts=starts):
            for s in starts:
                t.area_alloc(s, 4)
                t.map[:] = m
                t.low_free = 0

        ml = m.tolist()
        t_vec = best_of(vec, 1)
        t_sca = best_of(lambda ml=ml, starts=starts: [scalar_area_alloc(ml, 1 << 16, s, 4)
                                                      for s in starts], 1)
        print(f"area_alloc x200, 64Ki entries {fill:.1%} full: numpy {t_vec * 1e3:.1f} ms, "
              f"scalar transcription {t_sca * 1e3:.1f} ms, scalar/numpy {t_sca / t_vec:.1f}x")


if __name__ == "__main__":
    main()
