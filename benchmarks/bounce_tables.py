"""Batched vs per-entry hot paths of the single-level IOMMU tables and of swiotlb.

Baseline, measured in the same run: the per-entry paths (``TableOps.batch = False``,
``IoTlbMem.batch = False``), which transcribe the kernel's loops one entry at a time and are
what tests/test_dma_batch_identity.py holds the batched paths to. Prints seconds and the
speed-up (per-entry / batched) for:

- ``map_sg`` + ``unmap_sg`` of ``--entries`` scattered 4 KiB pages through every
  single-level row (most fill their table and refuse; GART/sba/ppc bypass with a 64-bit
  mask);
- swiotlb bounces (``swiotlb_tbl_map_single`` + unmap) into the default 64 MiB pool, plain
  and with an NVMe-like ``min_align_mask`` that makes the slot search step slot by slot;
- notebook 04's rows (``phyrlab.backends.map_through``) on the same buffer, the figure a
  user waits for (includes work outside these two modules: layout checks, other backends).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from phyrlab import backends as bx
from phyrlab.dma.device import Device
from phyrlab.dma.iommu_table import ROW_PARAMS, TableOps
from phyrlab.dma.swiotlb import IoTlbMem
from phyrlab.units import DMA_BIT_MASK, PAGE_SIZE

TABLE_ROWS = ("alpha_pci_ops", "jazz_dma_ops", "iounit_dma_ops", "sbus_iommu_dma_gflush_ops",
              "sbus_iommu_dma_pflush_ops", "gart_dma_ops", "ccio_ops", "sba_ops", "iommu_ops")


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def both(fn: Callable[[bool], object]) -> tuple[float, float]:
    """Seconds with the per-entry path, then with the batched path."""
    return timed(lambda: fn(False)), timed(lambda: fn(True))


def scattered(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pfn = np.sort(rng.choice(8 * n, n, replace=False)).astype(np.uint64) + np.uint64(1 << 21)
    return pfn * np.uint64(PAGE_SIZE), np.full(n, PAGE_SIZE, np.uint64)


def table_map(name: str, addr, length, bits: int) -> Callable[[bool], object]:
    def run(batch: bool) -> None:
        dev = Device(name, dma_mask=DMA_BIT_MASK(bits))
        dev.ops.batch = batch
        try:
            dma, dlen, cookie = dev.ops.map_sg(dev, addr, length, "bidirectional")
        except Exception:  # noqa: BLE001 - a refusal is the expected outcome for most rows
            return
        dev.ops.unmap_sg(dev, dma, dlen, "bidirectional", cookie)
    return run


def bounces(n: int, min_align_mask: int) -> Callable[[bool], object]:
    def run(batch: bool) -> None:
        mem = IoTlbMem()
        mem.batch = batch
        dev = Device(None, swiotlb=mem, dma_mask=DMA_BIT_MASK(32),
                     min_align_mask=min_align_mask)
        tlb = [mem.tbl_map_single(dev, 0x1_0000_0000 + i * 3 * PAGE_SIZE + 512, PAGE_SIZE,
                                  PAGE_SIZE, 0, "to_device") for i in range(n)]
        for t in tlb:
            mem.tbl_unmap_single(dev, t, PAGE_SIZE, "bidirectional")
    return run


def notebook04(ranges, bits: int) -> Callable[[bool], object]:
    def run(batch: bool) -> None:
        TableOps.batch = batch
        IoTlbMem.batch = batch
        try:
            for name in bx.ROWS:
                bx.map_through(name, ranges, bx.Limits(bits))
        finally:
            TableOps.batch = True
            IoTlbMem.batch = True
    return run


def line(label: str, per: float, bat: float) -> None:
    print(f"  {label:40} {per:9.3f} {bat:9.3f} {per / bat:8.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--entries", type=int, default=1 << 20, help="pages in the buffer")
    ap.add_argument("--bounces", type=int, default=8192, help="swiotlb bounces per run")
    ap.add_argument("--skip-notebook", action="store_true", help="skip notebook 04's rows")
    args = ap.parse_args()
    addr, length = scattered(args.entries)
    head = f"  {'':40} {'per-entry':>9} {'batched':>9} {'speed-up':>9}"
    for bits in (32, 64):
        print(f"map_sg + unmap_sg, {args.entries} scattered 4 KiB pages, {bits}-bit mask (s):")
        print(head)
        tot = [0.0, 0.0]
        for name in TABLE_ROWS:
            assert name in ROW_PARAMS
            per, bat = both(table_map(name, addr, length, bits))
            tot[0] += per
            tot[1] += bat
            line(name, per, bat)
        line("all of the above", *tot)
    print(f"swiotlb: {args.bounces} bounces of 4 KiB into 64 MiB, map + unmap (s):")
    print(head)
    line("min_align_mask 0", *both(bounces(args.bounces, 0)))
    # 16 KiB-aligned slots: the pool holds 4,096 of these
    n = min(args.bounces, 4000)
    line(f"min_align_mask 0x3fff, {n} (stepping search)", *both(bounces(n, 0x3FFF)))
    if not args.skip_notebook:
        ranges = bx.buffer("nvme-4k-random", args.entries * PAGE_SIZE, "high", 0).ranges()
        print(f"notebook 04: every row's map_through, nvme-4k-random, "
              f"{args.entries * PAGE_SIZE >> 20} MiB (s):")
        print(head)
        for bits in (64, 32):
            line(f"{bits}-bit mask, all {len(bx.ROWS)} rows", *both(notebook04(ranges, bits)))


if __name__ == "__main__":
    main()
