"""The batched hot paths give exactly what the per-entry paths give.

``TableOps.batch`` and ``IoTlbMem.batch`` switch between the array-at-once decisions and the
per-entry transcription of the kernel's loops (``iommu_area_alloc`` one run at a time, the
greedy chunk cut one chunk at a time, ``swiotlb_search_pool_area`` over every candidate
slot). The per-entry paths are what tests/test_dma_families.py and tests/test_dma_swiotlb.py
hold to the kernel's worked examples; here random inputs, table states, device limits and
injected faults must give the same DMA lists, errnos, messages, counters, table entries,
hints and slots either way.
"""

from __future__ import annotations

import identity
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from phyrlab import faults
from phyrlab.dma.device import Device
from phyrlab.dma.iommu_table import IommuTable, _FreeRuns
from phyrlab.dma.ops import OPS
from phyrlab.dma.swiotlb import IO_TLB_SIZE, IoTlbMem
from phyrlab.errors import DmaMappingError
from phyrlab.units import DMA_BIT_MASK, PAGE_SIZE, ULONG_MAX

U = np.uint64
SINGLE = sorted(n for n, e in OPS.items() if e.family == "single_level")
# no shrinking: a failing example is printed as drawn (shrinking these takes minutes)
SETTINGS = settings(max_examples=12, deadline=None, derandomize=True,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.data_too_large])


def range_lists(max_n: int = 120):
    """:func:`identity.range_lists` with this file's bases and lengths."""
    return identity.range_lists(max_n, [0x1_0000_0000, 0x10_0000, 0x3F00_0000, 0x100_0000_0000],
                                [1, 512, 2048, 4096, 8192, 12288, 4096 * 17, 65536, 3000])


device_limits = st.fixed_dictionaries({
    "dma_mask": st.sampled_from([DMA_BIT_MASK(32), DMA_BIT_MASK(40), DMA_BIT_MASK(64)]),
    "max_seg_size": st.sampled_from([4096, 65536, 1 << 20]),
    "seg_boundary_mask": st.sampled_from([ULONG_MAX, 0xFFFF, 0xF_FFFF]),
})


def _table_state(ops) -> tuple:
    t = ops.table
    return (t.map.tobytes(), t.ptes.tobytes(), t.low_free, ops.next_bit, ops.need_flush,
            [(p.start, p.end, p.hint) for p in ops.pools], ops.cmo_allocated,
            ops.excess_free, dict(ops.stats))


def _drive_table(name: str, params: dict, limits: dict, lists, unmap_every: int,
                 fault_nth: int, batch: bool, first_prefix: int | None = None) -> list:
    """Map every list in turn (unmapping some), with an ``iommu_area_alloc`` fault armed;
    everything observable after each step."""
    faults.reset()
    dev = Device(name, ops_params=params, **limits)
    ops = dev.ops
    ops.batch = batch
    ops.first_prefix = first_prefix
    seen, live = [], []
    for k, (addr, length) in enumerate(lists):
        try:
            if fault_nth and k == len(lists) - 1:
                with faults.inject("iommu_area_alloc", nth=fault_nth):
                    dma, dlen, cookie = ops.map_sg(dev, addr, length, "bidirectional")
            else:
                dma, dlen, cookie = ops.map_sg(dev, addr, length, "bidirectional")
            live.append((dma, dlen, cookie))
            seen.append(("ok", dma.tobytes(), dlen.tobytes(), cookie.translated.tobytes()))
        except DmaMappingError as exc:
            seen.append(("err", exc.errno, str(exc)))
        if unmap_every and live and k % unmap_every == 0:
            dma, dlen, cookie = live.pop(0)
            ops.unmap_sg(dev, dma, dlen, "bidirectional", cookie)
        seen.append(_table_state(ops))
        seen.append(dict(faults.stats.calls))
    for dma, dlen, cookie in live:
        ops.unmap_sg(dev, dma, dlen, "bidirectional", cookie)
    seen.append(_table_state(ops))
    return seen


@pytest.mark.parametrize("name", SINGLE)
@SETTINGS
@given(lists=st.lists(range_lists(), min_size=1, max_size=4), limits=device_limits,
       entries=st.sampled_from([64, 256, 4096]), unmap_every=st.integers(0, 2),
       fault_nth=st.integers(0, 40), merge_on=st.booleans())
def test_table_map_sg_batched_equals_per_entry(name, lists, limits, entries, unmap_every,
                                               fault_nth, merge_on):
    params = {"entries": entries}
    if name == "alpha_pci_ops":
        params["window"] = (0x4000_0000, 0x4000_0000)
    if name == "gart_dma_ops" and merge_on:  # iommu=merge: force, merge, retry per entry
        params["iommu_merge"] = True
    batched = _drive_table(name, params, limits, lists, unmap_every, fault_nth, True)
    per_entry = _drive_table(name, params, limits, lists, unmap_every, fault_nth, False)
    assert batched == per_entry


@pytest.mark.parametrize("name", ["jazz_dma_ops", "sba_ops", "gart_dma_ops", "alpha_pci_ops",
                                  "iommu_ops", "sbus_iommu_dma_gflush_ops"])
@pytest.mark.parametrize("high", [False, True])
def test_table_fills_identically_at_scale(name, high):
    """20,000 scattered pages: the table fills (or the device bypasses) the same way."""
    rng = np.random.default_rng(7)
    base = 0x1_0000_0000 if high else 0x10_0000
    pfn = np.sort(rng.choice(1 << 22, 20_000, replace=False))
    addr = (U(base) + pfn.astype(U) * U(PAGE_SIZE))
    length = np.full(len(addr), PAGE_SIZE, U)
    length[::7] = 1000
    out = [_drive_table(name, {}, {"dma_mask": DMA_BIT_MASK(32)}, [(addr, length)], 0, 0, b)
           for b in (True, False)]
    assert out[0] == out[1]


@SETTINGS
@given(n=st.integers(1, 400), maxseg=st.sampled_from([4096, 10000, 65536, 1 << 18]),
       seed=st.integers(0, 2**32 - 1),
       name=st.sampled_from(["ccio_ops", "iommu_ops", "alpha_pci_ops", "sba_dma_ops"]))
def test_chunk_cut_batched_equals_per_run(n, maxseg, seed, name):
    """Long mergeable runs with offsets: the greedy cut, run at once or chunk by chunk."""
    rng = np.random.default_rng(seed)
    length = rng.choice([512, 4096, 8192, 3000, 70000], n).astype(U)
    contiguous = rng.random(n) < 0.8
    addr = np.empty(n, U)
    pos = 0x1_0000_0000 + int(rng.integers(0, 4096))
    for i in range(n):
        if not contiguous[i]:
            pos = (pos // PAGE_SIZE + int(rng.integers(1, 9))) * PAGE_SIZE
        addr[i] = pos
        pos += int(length[i])
    dev = Device(name, dma_mask=DMA_BIT_MASK(64), max_seg_size=maxseg)
    ops = dev.ops
    got = ops._chunks(dev, addr, length)
    ops.batch = False
    want = ops._chunks(dev, addr, length)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
    assert int(got[1][-1]) == n and (got[1][:-1] == got[0][1:]).all()


def _iommu_area_alloc_ref(used: np.ndarray, size: int, start: int, nr: int, shift: int,
                          boundary: int, align_mask: int) -> int:
    """lib/iommu-helper.c ``iommu_area_alloc`` entry by entry: ``size -= 1`` (the last entry
    is never handed out), the first ``align_mask``-aligned index >= ``start`` whose ``nr``
    entries are free, skipping those ``iommu_is_span_boundary`` rejects."""
    size -= 1
    for index in range(start, size - nr + 1):
        if index & align_mask or used[index:index + nr].any():
            continue
        if ((shift + index) & (boundary - 1)) + nr > boundary:
            continue
        return index
    return -1


@SETTINGS
@given(entries=st.integers(8, 3000), seed=st.integers(0, 2**32 - 1),
       boundary=st.sampled_from([1 << 52, 16, 64, 1024]),
       align=st.sampled_from([0, 1, 3, 15]), shift=st.integers(0, 100))
def test_area_alloc_is_first_fit(entries, seed, boundary, align, shift):
    """The windowed search (hint fast path, skip to the first free entry, doubling windows)
    against the kernel's loop on tables filled and holed at random."""
    rng = np.random.default_rng(seed)
    t = IommuTable(entries, reserved=(0, int(rng.integers(0, 3))))
    held = []
    for _ in range(int(rng.integers(1, 120))):
        if held and rng.random() < 0.3:
            i0, n0 = held.pop(int(rng.integers(0, len(held))))
            t.free(i0, n0)
            continue
        nr = int(rng.choice([1, 1, 2, 3, 8, 40]))
        start = int(rng.integers(0, entries))
        limit = int(rng.integers(entries // 2, entries + 1))
        want = _iommu_area_alloc_ref(t.map.copy(), min(limit, entries), start, nr, shift,
                                     boundary, align)
        got = t.area_alloc(start, nr, limit, shift, boundary, align)
        assert got == want
        if got >= 0:
            held.append((got, nr))
        assert t.map[:t.low_free].all()


@SETTINGS
@given(entries=st.integers(8, 3000), seed=st.integers(0, 2**32 - 1),
       boundary=st.sampled_from([1 << 52, 16, 64, 1024]), shift=st.integers(0, 100),
       last_usable=st.booleans(), first_fit=st.booleans())
def test_free_runs_answer_as_area_alloc(entries, seed, boundary, shift, last_usable,
                                        first_fit):
    """``_FreeRuns`` (free stretches, remembered misses, first-fit floors) against the
    table's own search, allocation after allocation with nothing freed between (a batched
    map): same index, same bitmap and ``low_free``."""
    rng = np.random.default_rng(seed)
    ref = IommuTable(entries, reserved=(0, int(rng.integers(0, 3))),
                     last_entry_usable=last_usable)
    for _ in range(int(rng.integers(0, 60))):  # holes left by earlier maps
        i0 = int(rng.integers(0, entries))
        ref.map[i0:i0 + int(rng.integers(1, 9))] = True
    ref.low_free = 0
    t = IommuTable(entries, last_entry_usable=last_usable)
    t.map[:] = ref.map
    t.low_free, t.reserved = ref.low_free, ref.reserved
    runs = _FreeRuns(t, shift, boundary)
    limit = int(rng.integers(entries // 2, entries + 1))
    top = min(limit, entries) - (0 if last_usable else 1)
    for _ in range(int(rng.integers(1, 200))):
        nr = int(rng.choice([1, 1, 2, 3, 5, 8, 11, 16, 17, 40]))
        if first_fit:  # arm: aligned to the order of the size, from 0
            align = (1 << min(max(0, (nr - 1).bit_length()), 8)) - 1
            want = ref.area_alloc(0, nr, limit, shift, boundary, align)
            got = runs.alloc_first(nr, top, align)
        else:
            start = int(rng.integers(0, entries))
            align = int(rng.choice([0, 0, 1, 3, 15]))
            want = ref.area_alloc(start, nr, limit, shift, boundary, align)
            got = runs.area_alloc(start, nr, limit, shift, boundary, align)
        assert got == want
        assert t.low_free == ref.low_free
    assert (t.map == ref.map).all()


def _sized_list(rng, pages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One entry per element of ``pages``, spanning that many I/O pages: page aligned or at
    an offset, apart from or contiguous with the previous entry."""
    n = len(pages)
    addr = np.empty(n, U)
    length = np.empty(n, U)
    pos = 0x1_0000_0000
    for i in range(n):
        kind = rng.random()
        if kind < 0.6 or i == 0:  # a new page, maybe at an offset
            pos = (pos // PAGE_SIZE + int(rng.integers(1, 9))) * PAGE_SIZE
            if kind < 0.25:
                pos += int(rng.integers(1, PAGE_SIZE))
        off = pos % PAGE_SIZE
        want = int(pages[i])
        lo = (want - 1) * PAGE_SIZE - off + 1  # the shortest length that spans ``want`` pages
        hi = want * PAGE_SIZE - off
        addr[i] = pos
        length[i] = int(rng.integers(max(lo, 1), hi + 1))
        pos += int(length[i])
    return addr, length


@pytest.mark.parametrize("name", ["dma_iommu_ops", "vio_dma_mapping_ops", "iommu_ops",
                                  "iommu_coherent_ops", "sun4v_dma_ops", "alpha_pci_ops",
                                  "jazz_dma_ops", "gart_dma_ops"])
@settings(SETTINGS, max_examples=25)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(20, 3000),
       mix=st.sampled_from(["small", "large", "mixed", "ones"]),
       entries=st.sampled_from([64, 512, 4096]), limits=device_limits,
       unmap_every=st.integers(0, 2), fault_nth=st.integers(0, 3000),
       lists=st.integers(1, 3))
def test_table_mixed_sizes_batched_equals_per_entry(name, seed, n, mix, entries, limits,
                                                    unmap_every, fault_nth, lists):
    """Entries of 1 to 17 I/O pages (NVMe-, GPU-, RDMA-like lists) through tables that the
    earlier lists left holed: powerpc's two pools filling in either order, arm's aligned
    first fit among the holes, next-fit wraps; a fault anywhere in the last list."""
    rng = np.random.default_rng(seed)
    p = {"small": [0.7, 0.2, 0.1], "large": [0.1, 0.2, 0.7], "mixed": [0.35, 0.3, 0.35],
         "ones": [0.97, 0.02, 0.01]}[mix]
    made = []
    for k in range(lists):
        m = max(1, n // (2 * k + 1))
        kind = rng.choice(3, m, p=p)
        pages = np.where(kind == 0, rng.integers(1, 4, m),
                         np.where(kind == 1, rng.integers(4, 16, m), rng.integers(16, 18, m)))
        if mix == "ones":
            pages = np.where(kind == 0, 1, pages)
        made.append(_sized_list(rng, pages))
    params = {"entries": entries}
    if name == "alpha_pci_ops":
        params["window"] = (0x4000_0000, 0x4000_0000)
    batched = _drive_table(name, params, limits, made, unmap_every, fault_nth, True)
    per_entry = _drive_table(name, params, limits, made, unmap_every, fault_nth, False)
    assert batched == per_entry


@pytest.mark.parametrize("name", ["dma_iommu_ops", "vio_dma_mapping_ops"])
@settings(SETTINGS, max_examples=150)
@given(seed=st.integers(0, 2**32 - 1), entries=st.sampled_from([512, 1024]),
       unmap_every=st.integers(0, 2), fault_nth=st.integers(0, 600))
def test_ppc_pools_fill_identically(name, seed, entries, unmap_every, fault_nth):
    """``ppc_iommu_map_sg`` over three lists of 1 to 39 I/O pages in random proportions,
    some unmapped between: the pools fill in either order, so the batched runs meet a
    full pool (its class searching the other pool from the start, past holes that may or
    may not hold it) and a small pool whose holes still fit the shortest entries."""
    rng = np.random.default_rng(seed)
    made = []
    for _ in range(3):
        m = int(rng.integers(10, 400))
        kind = rng.choice(3, m, p=rng.dirichlet([1, 1, 1]))
        pages = np.where(kind == 0, rng.integers(1, 4, m),
                         np.where(kind == 1, rng.integers(4, 16, m), rng.integers(16, 40, m)))
        made.append(_sized_list(rng, pages))
    limits = {"dma_mask": DMA_BIT_MASK(32), "max_seg_size": 1 << 20,
              "seg_boundary_mask": ULONG_MAX}
    params = {"entries": entries}
    if name == "vio_dma_mapping_ops":
        params["entitlement"] = 1 << 40  # the table, not the entitlement, runs out
    batched = _drive_table(name, params, limits, made, unmap_every, fault_nth, True)
    per_entry = _drive_table(name, params, limits, made, unmap_every, fault_nth, False)
    assert batched == per_entry


def _map_on_state(name: str, entries: int, seed: int, pages: np.ndarray, fault_nth: int,
                  batch: bool) -> list:
    """One ``map_sg`` of entries of ``pages`` I/O pages on a table put in a random state
    first: dense with holes of 1 to 40 entries, one pool maybe left with less than 16
    free in a row, random hints."""
    faults.reset()
    dev = Device(name, ops_params={"entries": entries}, dma_mask=DMA_BIT_MASK(32),
                 max_seg_size=1 << 20)
    ops = dev.ops
    ops.batch = batch
    rng = np.random.default_rng(seed)
    t = ops.table
    small, large = ops.pools
    used = rng.random(entries) < rng.choice([0.0, 0.5, 0.9, 0.99])
    for _ in range(int(rng.integers(0, 8))):
        a = int(rng.integers(0, entries))
        used[a:a + int(rng.integers(1, 41))] = False
    for pool in ops.pools:
        if rng.random() < 0.4:  # this pool holds nothing of 16 entries or more
            used[pool.start:pool.end] = True
            for _ in range(int(rng.integers(0, 4))):
                a = int(rng.integers(pool.start, pool.end))
                used[a:min(a + int(rng.integers(1, 16)), pool.end)] = False
        pool.hint = int(rng.integers(pool.start, pool.end))
    used[0] = True  # reserved
    t.map[:] = used
    t.low_free = 0
    addr, length = _sized_list(rng, pages)
    seen: list = [_table_state(ops)]
    try:
        if fault_nth:
            with faults.inject("iommu_area_alloc", nth=fault_nth):
                dma, dlen, cookie = ops.map_sg(dev, addr, length, "bidirectional")
        else:
            dma, dlen, cookie = ops.map_sg(dev, addr, length, "bidirectional")
        seen.append(("ok", dma.tobytes(), dlen.tobytes()))
    except DmaMappingError as exc:
        seen.append(("err", exc.errno, str(exc)))
    seen += [_table_state(ops), dict(faults.stats.calls)]
    return seen


@pytest.mark.parametrize("name", ["dma_iommu_ops", "vio_dma_mapping_ops"])
@settings(SETTINGS, max_examples=120)
@given(seed=st.integers(0, 2**32 - 1), entries=st.sampled_from([512, 1024]),
       n=st.integers(1, 600), p=st.sampled_from([(0.6, 0.2, 0.2), (0.2, 0.2, 0.6),
                                                   (0.34, 0.33, 0.33)]),
       fault_nth=st.integers(0, 300))
def test_ppc_runs_on_holed_pools(name, seed, entries, n, p, fault_nth):
    """``ppc_iommu_map_sg`` on pools already used (holes of every size, a full pool, hints
    anywhere): a full pool's class searches the other pool from its start and may land in
    a hole below the handle; a small pool with short holes still takes short entries."""
    rng = np.random.default_rng(seed ^ 0x5A5A)
    kind = rng.choice(3, n, p=list(p))
    pages = np.where(kind == 0, rng.integers(1, 6, n),
                     np.where(kind == 1, rng.integers(6, 16, n), rng.integers(16, 41, n)))
    batched = _map_on_state(name, entries, seed, pages, fault_nth, True)
    per_entry = _map_on_state(name, entries, seed, pages, fault_nth, False)
    assert batched == per_entry


# ------------------------------------------------------------------------------- swiotlb


def _drive_pool(ops_list, mem_kw: dict, dev_kw: dict, fault_nth: int, batch: bool) -> list:
    faults.reset()
    mem = IoTlbMem(**mem_kw)
    mem.batch = batch
    dev = Device(None, swiotlb=mem, **dev_kw)
    seen, live = [], []
    for k, (paddr, size, align, free_first) in enumerate(ops_list):
        if free_first and live:
            tlb, sz = live.pop(free_first % len(live))
            mem.tbl_unmap_single(dev, tlb, sz, "bidirectional")
        mem.cpu = k
        try:
            if fault_nth and k == fault_nth:
                with faults.inject("swiotlb_slot"):
                    tlb = mem.tbl_map_single(dev, paddr, size, size, align, "to_device")
            else:
                tlb = mem.tbl_map_single(dev, paddr, size, size, align, "to_device")
            live.append((tlb, size))
            seen.append(("ok", tlb))
        except DmaMappingError as exc:
            seen.append(("err", exc.errno, str(exc)))
        seen.append(identity.pool_state(mem))
    seen.append(dict(faults.stats.calls))
    return seen


swiotlb_ops = st.lists(st.tuples(
    st.integers(0, 1 << 34).map(lambda a: a if a % 3 else 0),
    st.sampled_from([1, 100, 2048, 2049, 4096, 5000, 16384, 65536, 131072, 262144]),
    st.sampled_from([0, 0, PAGE_SIZE - 1, 0xFFFF]),
    st.integers(0, 3)), min_size=1, max_size=60)


@SETTINGS
@given(ops_list=swiotlb_ops,
       size=st.sampled_from([IO_TLB_SIZE * 128 * 2, IO_TLB_SIZE * 128 * 8, 1 << 22]),
       nareas=st.sampled_from([1, 2, 4]),
       start=st.sampled_from([0x6000_0000, 0x6000_0000 + PAGE_SIZE, 0x6001_0800 - 0x800]),
       dev_kw=st.fixed_dictionaries({
           "min_align_mask": st.sampled_from([0, 0xFFF, 0x7FF, 0x3FFF]),
           "seg_boundary_mask": st.sampled_from([ULONG_MAX, 0xFFFF, 0x1_FFFF]),
           "dma_mask": st.just(DMA_BIT_MASK(64))}),
       fault_nth=st.integers(0, 30))
def test_swiotlb_batched_equals_per_entry(ops_list, size, nareas, start, dev_kw, fault_nth):
    mem_kw = {"size": size, "nareas": nareas, "start": start}
    batched = _drive_pool(ops_list, mem_kw, dev_kw, fault_nth, True)
    per_entry = _drive_pool(ops_list, mem_kw, dev_kw, fault_nth, False)
    assert batched == per_entry


def _long_list(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` entries: contiguous runs, page-aligned and offset entries, sizes from 512 bytes
    to 17 pages; the list climbs from below 4 GiB to past GART_MAX_PHYS_ADDR (1 TiB) at a
    random point, so the cut, the allocations and the max_phys stop meet anywhere."""
    rng = np.random.default_rng(seed)
    kinds = rng.choice(3, n, p=[0.4, 0.45, 0.15])
    sizes = rng.choice([512, 3000, 4096, 4096, 8192, 4096 * 17], n)
    gaps = rng.integers(1, 64, n)
    offs = rng.integers(1, 4096, n)
    jump = int(rng.integers(0, n + 1))
    addr = np.empty(n, U)
    pos = int(rng.choice([0x10_0000, 0x1_0000_0000, 0xFF_FFF0_0000]))
    for i in range(n):
        if i == jump:
            pos = max(pos, 0x100_0000_0000 - int(rng.integers(0, 4)) * PAGE_SIZE)
        if kinds[i] != 0 or i == 0:
            pos = ((pos + PAGE_SIZE - 1) // PAGE_SIZE + int(gaps[i])) * PAGE_SIZE
            if kinds[i] == 2:
                pos += int(offs[i])
        addr[i] = pos
        pos += int(sizes[i])
    return addr, sizes.astype(U)


@pytest.mark.parametrize("name", SINGLE)
@settings(SETTINGS, max_examples=40)
@given(seeds=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=3),
       n=st.integers(20, 2500), limits=device_limits, entries=st.sampled_from([32, 64, 512]),
       unmap_every=st.integers(0, 2), fault_nth=st.integers(0, 400), merge_on=st.booleans(),
       first_prefix=st.sampled_from([None, 1, 7]))
def test_table_long_lists_batched_equals_per_entry(name, seeds, n, limits, entries,
                                                   unmap_every, fault_nth, merge_on,
                                                   first_prefix):
    """Lists much longer than the table: the batched map decides failures from a prefix of
    the list; the whole-list walk must agree on everything (holes left by earlier maps,
    faults late in the list, the GART max_phys stop, iommu=merge's per-entry retry)."""
    params = {"entries": entries}
    if name == "alpha_pci_ops":
        params["window"] = (0x4000_0000, 0x4000_0000)
    if name == "gart_dma_ops" and merge_on:
        params["iommu_merge"] = True
    lists = [_long_list(s, n if i == 0 else max(1, n // (3 * i))) for i, s in enumerate(seeds)]
    batched = _drive_table(name, params, limits, lists, unmap_every, fault_nth, True,
                           first_prefix)
    per_entry = _drive_table(name, params, limits, lists, unmap_every, fault_nth, False)
    assert batched == per_entry


# ----------------------------------------------------- swiotlb bounces many at a time
def _bounce_list(rng, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Mostly 4 KiB pages (page aligned or at an offset, some at address 0), with sizes from
    1 byte to more than a segment holds."""
    size = rng.choice([4096, 1, 512, 2048, 2049, 5000, 65536, 262144, 300000, 1 << 62], n,
                      p=[0.8, 0.03, 0.03, 0.03, 0.03, 0.03, 0.03, 0.015, 0.004, 0.001])
    paddr = rng.integers(1, 1 << 22, n).astype(U) * U(PAGE_SIZE)
    off = rng.random(n) < 0.2
    paddr[off] += rng.integers(1, 4096, int(off.sum())).astype(U)
    paddr[rng.random(n) < 0.03] = 0
    return paddr, size.astype(U)


def _prefill(mem: IoTlbMem, dev, rng, steps: int) -> list:
    """Single bounces and frees, so the many-at-once calls meet holes and a moved cursor."""
    live = []
    for _ in range(steps):
        if live and rng.random() < 0.4:
            t, z = live.pop(int(rng.integers(0, len(live))))
            mem.tbl_unmap_single(dev, t, z, "bidirectional")
            continue
        z = int(rng.choice([1, 2048, 4096, 9000, 65536]))
        align = int(rng.choice([0, 0, PAGE_SIZE - 1]))
        p = int(rng.integers(0, 1 << 34))
        mem.cpu = int(rng.integers(0, 8))
        try:
            live.append((mem.tbl_map_single(dev, p, z, z, align, "to_device"), z))
        except DmaMappingError:
            pass
    return live


def _drive_many(seed: int, n: int, mem_kw: dict, dev_kw: dict, prefill: int, fault_nth: int,
                direction: str, skip: bool, batch: bool) -> list:
    from contextlib import nullcontext

    from phyrlab.dma.swiotlb import swiotlb_map_many

    faults.reset()
    rng = np.random.default_rng(seed)
    mem = IoTlbMem(**mem_kw)
    mem.batch = batch
    dev = Device(None, swiotlb=mem, **dev_kw)
    live = _prefill(mem, dev, rng, prefill)
    mem.cpu = int(rng.integers(0, 8))
    paddr, size = _bounce_list(rng, n)
    seen: list = [identity.pool_state(mem)]
    armed = faults.inject("swiotlb_slot", nth=fault_nth) if fault_nth else nullcontext()
    with armed:
        dma, exc = swiotlb_map_many(dev, paddr, size, "to_device")
    seen += [dma.tobytes(), exc and (exc.errno, str(exc)), identity.pool_state(mem),
             dict(faults.stats.calls), dict(faults.stats.failed)]
    # give back a random part of what was mapped, then the rest with the prefilled ones
    phys = dev.dma_to_phys_array(dma)
    order = rng.permutation(len(dma))
    part = order[:int(rng.integers(0, len(dma) + 1))]
    seen.append(mem.unmap_many(dev, phys[part], size[part], direction, skip))
    seen.append(identity.pool_state(mem))
    rest = np.concatenate([phys[order[len(part):]], np.array([t for t, _ in live], U)])
    rest_size = np.concatenate([size[order[len(part):]], np.array([z for _, z in live], U)])
    if len(rest) > 2 and rng.random() < 0.3:  # one given back twice in the same call
        j = int(rng.integers(1, len(rest)))
        rest = np.insert(rest, j, rest[0])
        rest_size = np.insert(rest_size, j, rest_size[0])
    seen.append(mem.unmap_many(dev, rest, rest_size, direction, skip))
    seen.append(identity.pool_state(mem))
    if len(dma):  # a double free goes call by call (and corrupts the pool alike)
        try:
            seen.append(mem.unmap_many(dev, phys[:2], size[:2], direction, skip))
        except (ValueError, IndexError) as err:
            seen.append(repr(err))
        seen.append(identity.pool_state(mem))
    return seen


@settings(SETTINGS, max_examples=100)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 700),
       size=st.sampled_from([IO_TLB_SIZE * 128 * 2, IO_TLB_SIZE * 128 * 8, 1 << 21]),
       nareas=st.sampled_from([1, 2, 4]),
       start=st.sampled_from([0x6000_0000, 0x6000_0000 + PAGE_SIZE]),
       dev_kw=st.fixed_dictionaries({
           "min_align_mask": st.sampled_from([0, 0, 0xFFF, 0x7FF, 0x3FFF]),
           "seg_boundary_mask": st.sampled_from([ULONG_MAX, 0xFFFF, 0x1_FFFF]),
           "dma_mask": st.sampled_from([DMA_BIT_MASK(32), DMA_BIT_MASK(64)]),
           "bus_dma_limit": st.sampled_from([0, 0, 0x6008_0000, 0x6010_0fff]),
           "dma_range_map": st.sampled_from([None, [(0, 0x1000_0000, 1 << 40)],
                                             [(0, 0x800, 1 << 40)]])}),
       prefill=st.integers(0, 40), fault_nth=st.integers(0, 60),
       direction=st.sampled_from(["to_device", "from_device", "bidirectional"]),
       skip=st.booleans())
def test_swiotlb_many_equals_single_calls(seed, n, size, nareas, start, dev_kw, prefill,
                                          fault_nth, direction, skip):
    """``swiotlb_map_many`` / ``IoTlbMem.unmap_many`` against one ``swiotlb_map`` /
    ``swiotlb_tbl_unmap_single`` per entry: slots, cursor, counters, errors (pool full,
    overflow past the device's limit, injected faults) and the pool after giving back."""
    mem_kw = {"size": size, "nareas": nareas, "start": start}
    args = (seed, n, mem_kw, dev_kw, prefill, fault_nth, direction, skip)
    assert _drive_many(*args, True) == _drive_many(*args, False)


def _drive_direct(seed: int, n: int, mem_size: int, dev_kw: dict, fault_nth: int,
                  batch: bool) -> list:
    faults.reset()
    rng = np.random.default_rng(seed)
    mem = IoTlbMem(mem_size)
    mem.batch = batch
    dev = Device(None, swiotlb=mem, **dev_kw)
    return identity.map_sg_rounds(dev, mem, rng, lambda: _bounce_list(rng, n), 0.5, fault_nth)


@settings(SETTINGS, max_examples=30)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 600),
       mem_size=st.sampled_from([IO_TLB_SIZE * 128 * 2, 1 << 21]),
       dev_kw=st.fixed_dictionaries({
           "dma_mask": st.sampled_from([DMA_BIT_MASK(32), DMA_BIT_MASK(64)]),
           "force_bounce": st.booleans(),
           "coherent": st.booleans(),
           "min_align_mask": st.sampled_from([0, 0xFFF])}),
       fault_nth=st.integers(0, 100))
def test_direct_map_sg_bounces_batched_equals_per_entry(seed, n, mem_size, dev_kw, fault_nth):
    """dma-direct's list map bounces in runs and unwinds (or unmaps) in one call; the DMA
    list, the -EIO message, counters and the pool are those of one bounce per entry."""
    args = (seed, n, mem_size, dev_kw, fault_nth)
    assert _drive_direct(*args, True) == _drive_direct(*args, False)


@pytest.mark.parametrize("batch", [True, False])
def test_swiotlb_many_skips_a_full_area_per_bounce(batch):
    """Two areas, the first with one slot left: a 4 KiB bounce (2 slots) skips it for the
    second area, a 512-byte one (1 slot) takes that last slot, as single calls do."""
    from phyrlab.dma.swiotlb import swiotlb_map_many

    mem = IoTlbMem(IO_TLB_SIZE * 128 * 2, nareas=2)
    mem.batch = batch
    dev = Device(None, swiotlb=mem, dma_mask=DMA_BIT_MASK(64))
    for i in range(127):
        mem.tbl_map_single(dev, 0x10_0000 + i * PAGE_SIZE, 512, 512, 0, "to_device")
    assert int(mem.area_used[0]) == 127
    paddr = np.array([0x1000_0000, 0x2000_0000, 0x3000_0000, 0x4000_0000], U)
    size = np.array([4096, 4096, 512, 4096], U)
    dma, exc = swiotlb_map_many(dev, paddr, size, "to_device")
    assert exc is None
    assert [(int(d) - mem.start) // IO_TLB_SIZE for d in dma] == [128, 130, 127, 132]
    assert list(mem.area_used) == [128, 6]
