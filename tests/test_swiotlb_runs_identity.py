"""swiotlb bounces of mixed sizes, many at a time, give exactly what one call per bounce gives.

``swiotlb_map_many`` (with ``IoTlbMem.batch``) takes in one step the bounces the slot search
places one after the other from the cursor: back to back, or at the start of the next segment
when a bounce does not fit in what is left of the current one (``IoTlbMem._run_slots``).
Lists of mixed sizes (1 to 32 pages, some below a page or at an offset) jump segments all the
time, fill the pool, wrap the cursor and meet holes; here they must give the same DMA
addresses, errors, messages, counters, slots, cursor and fault-point calls as one
``swiotlb_map`` per bounce (``batch = False``), and give back the same way. dma-direct's and
Xen's ``map_sg`` (which bounce through ``swiotlb_map_many``) are held to the same.
"""

from __future__ import annotations

from contextlib import nullcontext

import identity
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from phyrlab import faults
from phyrlab.dma.device import Device
from phyrlab.dma.mapping import dma_map, dma_unmap
from phyrlab.dma.swiotlb import IO_TLB_SIZE, IoTlbMem, swiotlb_map_many
from phyrlab.errors import DmaMappingError
from phyrlab.units import DMA_BIT_MASK, PAGE_SIZE, ULONG_MAX

U = np.uint64
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.data_too_large])




def _mixed_list(rng, n: int, odd: float, zero: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Page-multiple bounces of 1 to 32 pages (small ones most often, as in the block and
    RDMA workloads), page aligned; a fraction ``odd`` of them below a page, a page and a
    half, at an offset or at address 0, and a further fraction ``zero`` at address 0."""
    pages = np.minimum(rng.geometric(0.25, n), 32)
    size = pages.astype(U) * U(PAGE_SIZE)
    paddr = rng.integers(1, 1 << 22, n).astype(U) * U(PAGE_SIZE)
    pick = rng.random(n) < odd
    size[pick] = rng.choice([1, 512, 2048, 2049, 6144, 5000, 65536 + 2048], int(pick.sum()))
    off = rng.random(n) < odd
    paddr[off] += rng.integers(1, 4096, int(off.sum())).astype(U)
    paddr[rng.random(n) < odd / 4 + zero] = 0
    return paddr, size


def _prefill(mem: IoTlbMem, dev, rng, steps: int) -> list:
    """Single bounces and frees: holes and a moved cursor before the many-at-once call."""
    live = []
    for _ in range(steps):
        if live and rng.random() < 0.4:
            t, z = live.pop(int(rng.integers(0, len(live))))
            mem.tbl_unmap_single(dev, t, z, "bidirectional")
            continue
        z = int(rng.choice([1, 2048, 4096, 9000, 65536, 131072]))
        mem.cpu = int(rng.integers(0, 8))
        try:
            live.append((mem.tbl_map_single(dev, int(rng.integers(0, 1 << 34)), z, z,
                                            int(rng.choice([0, 0, PAGE_SIZE - 1])),
                                            "to_device"), z))
        except DmaMappingError:
            pass
    return live


def _drive_many(seed: int, n: int, odd: float, zero: float, mem_kw: dict, dev_kw: dict,
                prefill: int, fault_nth: int, direction: str, skip: bool, batch: bool) -> list:
    faults.reset()
    rng = np.random.default_rng(seed)
    mem = IoTlbMem(**mem_kw)
    mem.batch = batch
    dev = Device(None, swiotlb=mem, **dev_kw)
    live = _prefill(mem, dev, rng, prefill)
    seen: list = [identity.pool_state(mem)]
    for k in range(2):  # the second list meets what the first left (and its cursor)
        mem.cpu = int(rng.integers(0, 8))
        paddr, size = _mixed_list(rng, n, odd, zero)
        armed = (faults.inject("swiotlb_slot", nth=fault_nth) if fault_nth and k == 0
                 else nullcontext())
        with armed:
            dma, exc = swiotlb_map_many(dev, paddr, size, "to_device")
        seen += [dma.tobytes(), exc and (exc.errno, str(exc)), identity.pool_state(mem),
                 dict(faults.stats.calls), dict(faults.stats.failed)]
        phys = dev.dma_to_phys_array(dma)
        order = rng.permutation(len(dma))
        part = order[:int(rng.integers(0, len(dma) + 1))]
        seen.append(mem.unmap_many(dev, phys[part], size[part], direction, skip))
        seen.append(identity.pool_state(mem))
        live += [(int(t), int(z)) for t, z in zip(phys[order[len(part):]].tolist(),
                                                  size[order[len(part):]].tolist(),
                                                  strict=True)]
    if live:
        seen.append(mem.unmap_many(dev, np.array([t for t, _ in live], U),
                                   np.array([z for _, z in live], U), direction, skip))
    seen.append(identity.pool_state(mem))
    return seen


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 1500),
       odd=st.sampled_from([0.0, 0.0, 0.02, 0.2]), zero=st.sampled_from([0.0, 0.0, 0.3]),
       size=st.sampled_from([IO_TLB_SIZE * 128 * 2, IO_TLB_SIZE * 128 * 8, 1 << 21, 1 << 22]),
       nareas=st.sampled_from([1, 1, 2, 4]),
       start=st.sampled_from([0x6000_0000, 0x6000_0000, 0x6000_0000 + PAGE_SIZE,
                              0x6004_0000 + 0x800 * 64]),
       dev_kw=st.fixed_dictionaries({
           "min_align_mask": st.sampled_from([0, 0, 0, 0xFFF, 0x7FF, 0x3FFF]),
           # 0x3_FFFF / 0x7_FFFF: boundaries on segment ends (or some of them); 0xFFFF inside
           "seg_boundary_mask": st.sampled_from([ULONG_MAX, ULONG_MAX, 0xFFFF, 0x3_FFFF,
                                                 0x7_FFFF]),
           "dma_mask": st.sampled_from([DMA_BIT_MASK(32), DMA_BIT_MASK(64)]),
           "bus_dma_limit": st.sampled_from([0, 0, 0, 0x6008_0000, 0x6030_0fff]),
           "dma_range_map": st.sampled_from([None, None, [(0, 0x1000_0000, 1 << 40)],
                                             [(0, 0x4_0000, 1 << 40)]])}),
       prefill=st.sampled_from([0, 0, 5, 40]), fault_nth=st.sampled_from([0, 0, 1, 7, 300]),
       direction=st.sampled_from(["to_device", "from_device", "bidirectional"]),
       skip=st.booleans())
def test_swiotlb_many_mixed_sizes_equals_single_calls(seed, n, odd, zero, size, nareas,
                                                      start, dev_kw, prefill, fault_nth,
                                                      direction, skip):
    """Mixed-size lists that cross segment ends, fill and wrap the pool: slots, cursor,
    counters, errors (pool full, overflow past the device's limit, injected faults) and
    the pool after giving back, against one call per bounce."""
    mem_kw = {"size": size, "nareas": nareas, "start": start}
    args = (seed, n, odd, zero, mem_kw, dev_kw, prefill, fault_nth, direction, skip)
    assert _drive_many(*args, True) == _drive_many(*args, False)


def test_a_run_continues_at_the_next_segment_start():
    """Bounces of 3, 5 and 7 pages from an empty pool: each that does not fit in what is
    left of a segment goes to the next segment's start (the slots before it are tested and
    cross the segment end), as single calls put them, and all of them in one run."""
    sizes = np.array([3, 5, 7] * 12, U) * U(PAGE_SIZE)
    paddr = U(0x1_0000_0000) + np.arange(len(sizes), dtype=U) * U(1 << 20)
    got = {}
    for batch in (True, False):
        mem = IoTlbMem(IO_TLB_SIZE * 128 * 8)
        mem.batch = batch
        dev = Device(None, swiotlb=mem, dma_mask=DMA_BIT_MASK(32))
        runs = []
        orig = mem._map_run
        mem._map_run = lambda d, o, s, orig=orig, runs=runs: runs.append(len(o)) or orig(d, o, s)
        dma, exc = swiotlb_map_many(dev, paddr, sizes, "to_device")
        assert exc is None
        slots = ((dma - U(mem.start)) // U(IO_TLB_SIZE)).tolist()
        got[batch] = slots, identity.pool_state(mem), runs
    slots, state, runs = got[True]
    assert (slots, state) == got[False][:2]
    # 6 + 10 + 14 slots = 30 per group; four groups fill 120 slots of a segment, the fifth
    # group's 6 slots fit (126), its 10 do not: slot 128
    assert slots[:15] == [0, 6, 16, 30, 36, 46, 60, 66, 76, 90, 96, 106, 120, 128, 138]
    assert runs == [len(sizes)]


@pytest.mark.parametrize("batch", [True, False])
def test_a_stride_longer_than_the_alignment_passes_the_segment_start(batch):
    """``orig_addr`` 0 with ``min_align_mask`` 0x3fff: every slot passes the alignment test
    but the search steps 8 slots (``stride``) past one without room. After 125 slots, a
    5-slot bounce is tested at 125, then 133 (not the next segment's 128)."""
    mem = IoTlbMem(IO_TLB_SIZE * 128 * 4)
    mem.batch = batch
    dev = Device(None, swiotlb=mem, dma_mask=DMA_BIT_MASK(64), min_align_mask=0x3FFF)
    paddr = np.zeros(3, U)
    size = np.array([125, 5, 5], U) * U(IO_TLB_SIZE)
    dma, exc = swiotlb_map_many(dev, paddr, size, "to_device")
    assert exc is None
    assert ((dma - U(mem.start)) // U(IO_TLB_SIZE)).tolist() == [0, 133, 138]


# ----------------------------------------------------------- whole lists through map_sg
def _drive_direct(seed: int, n: int, odd: float, dev_kw: dict, fault_nth: int,
                  batch: bool) -> list:
    faults.reset()
    rng = np.random.default_rng(seed)
    mem = IoTlbMem()
    mem.batch = batch
    dev = Device(None, swiotlb=mem, **dev_kw)
    return identity.map_sg_rounds(dev, mem, rng, lambda: _mixed_list(rng, n, odd), 0.3,
                                  fault_nth)


@pytest.mark.parametrize("seed,n,odd,fault_nth", [
    (1, 4000, 0.0, 0), (2, 4000, 0.0, 2500), (3, 3000, 0.01, 0), (4, 6000, 0.0, 0),
    (5, 1500, 0.05, 1)])
@pytest.mark.parametrize("dev_kw", [
    {"dma_mask": DMA_BIT_MASK(32)},
    {"dma_mask": DMA_BIT_MASK(32), "min_align_mask": 0xFFF, "coherent": False},
    {"dma_mask": DMA_BIT_MASK(64), "force_bounce": True, "seg_boundary_mask": 0x3_FFFF}])
def test_direct_map_sg_mixed_sizes_fills_the_pool_identically(seed, n, odd, fault_nth,
                                                              dev_kw):
    """dma-direct over the default 64 MiB pool with thousands of mixed-size bounces: the
    pool fills (some lists fail with -EIO and unwind), a later list meets the holes."""
    args = (seed, n, odd, dev_kw, fault_nth)
    assert _drive_direct(*args, True) == _drive_direct(*args, False)


def _drive_xen(batch: bool, addr: np.ndarray, length: np.ndarray, nth: int) -> list:
    faults.reset()
    mem = IoTlbMem()
    mem.batch = batch
    dev = Device("xen_swiotlb_dma_ops", ops_params={"nr_pages": 1 << 21}, swiotlb=mem,
                 dma_mask=DMA_BIT_MASK(32), max_seg_size=1 << 20)
    dev.ops.batch = batch
    seen, live = [], []
    for k, (a, ln) in enumerate([(addr[::3], length[::3]), (addr, length),
                                 (addr[1::4], length[1::4])]):
        try:
            with faults.inject("swiotlb_slot", nth=nth) if nth and k == 2 else nullcontext():
                m = dma_map(dev, (a, ln), "bidirectional")
            live.append(m)
            seen.append((m.dma_addr.tobytes(), m.bounced.tobytes(), dict(m.stats)))
        except DmaMappingError as exc:
            seen.append((exc.errno, str(exc)))
        pool = dev.dma_io_tlb_mem
        seen.append(([x.tobytes() for x in pool.snapshot()], pool.area_index.tobytes(),
                     dict(pool.stats), dict(dev.ops.stats), dict(faults.stats.calls)))
    for m in live:
        seen.append(dict(dma_unmap(dev, m)))
    seen.append([x.tobytes() for x in dev.dma_io_tlb_mem.snapshot()])
    return seen


@pytest.mark.parametrize("nth", [0, 900])
def test_xen_swiotlb_mixed_sizes_fills_the_pool_identically(nth):
    """xen_swiotlb_dma_ops at 32 bits with mixed-size entries above 4 GiB: every one
    bounces; the pool fills, unwinds, and a smaller list maps around what is left."""
    rng = np.random.default_rng(11)
    n = 5000
    pages = np.minimum(rng.geometric(0.2, n), 16).astype(U)
    gaps = rng.integers(1, 4, n).astype(U)
    pfn = U(0x10_0000) + np.cumsum(pages + gaps) - pages
    addr, length = pfn * U(PAGE_SIZE), pages * U(PAGE_SIZE)
    out = [_drive_xen(b, addr, length, nth) for b in (True, False)]
    assert out[0] == out[1]
