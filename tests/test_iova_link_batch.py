"""Batched two-step links and small page-table maps give exactly the per-call results.

``dma_map_iova`` (``iova_state.LINK_BATCH``) links a whole range list with one page-table
update per stretch (``PageTable.map_calls``) and maps a dma-direct fallback at once; the
reference is one ``dma_iova_link`` / ``dma_map_phys`` per range. ``PageTable.map`` of a few
pages walks with Python integers (``_map_small``); the reference is the array path
(``_map_runs``). Random range lists, device kinds, page-table states and injected faults must
give the same DMA lists, errnos, messages, counters, PTEs, table pages, IOVA, swiotlb slots and
fault counters either way.
"""

from __future__ import annotations

from contextlib import contextmanager

import identity
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from phyrlab import faults
from phyrlab.dma import Device, iova_state
from phyrlab.dma.iova_state import dma_map_iova, dma_unmap_iova
from phyrlab.dma.swiotlb import IoTlbMem
from phyrlab.errors import DmaMappingError
from phyrlab.iommu.dma_iommu import IommuDmaDomain
from phyrlab.iommu.pagetable import FORMATS, PageTable
from phyrlab.units import DMA_BIT_MASK

U = np.uint64
K4 = 4096
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])




# --------------------------------------------------------------------------- page table
@st.composite
def pt_cases(draw):
    """A format, some maps already made (some may collide), and the map calls to compare."""
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    g = FORMATS[fmt].granule
    big = [s for s in FORMATS[fmt].leaf_sizes[1:2]]
    base = draw(st.sampled_from([0, 1 << 21, (1 << 30) - 8 * g, (1 << 31) + 5 * g]))
    n = draw(st.integers(1, 12))
    runs, at = [], base
    for _ in range(n):
        at += g * draw(st.sampled_from([0, 0, 1, 3, 511, 513, 2048]))
        pages = draw(st.sampled_from([1, 1, 2, 3, 17, 64, 65, 600]))
        size = pages * g
        if big and draw(st.integers(0, 5)) == 0:    # a run holding a larger leaf
            at = (at + big[0] - 1) // big[0] * big[0]
            size = big[0] + g * draw(st.sampled_from([0, 1, 7]))
        pa = draw(st.sampled_from([at, at + (1 << 32), 0x1234 * g]))
        runs.append((at, pa, size))
        at += size
    pre = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(-2, 3)), max_size=3))
    fault = draw(st.sampled_from([None, 1, 2, 3, 5, 9]))
    return fmt, runs, pre, fault


def _premap(pt, runs, pre):
    g = pt.fmt.granule
    for i, d in pre:
        iova = runs[i][0] + d * g
        if 0 <= iova and iova + g <= 1 << pt.fmt.ias:
            try:
                pt.map(iova, 0x777 * g, g)
            except ValueError:
                pass


def _calls_one_by_one(pt, runs):
    for k, (iova, pa, size) in enumerate(runs):
        try:
            pt.map(iova, pa, size)
        except DmaMappingError as exc:
            return k, (exc.errno, str(exc))
    return len(runs), None


@SETTINGS
@given(pt_cases())
def test_small_map_is_the_array_map(case):
    fmt, runs, pre, fault = case
    got = []
    for small in (True, False):
        faults.reset()
        pt = PageTable(fmt)
        if not small:
            pt._small_max = 0
        _premap(pt, runs, pre)
        out = []
        for iova, pa, size in runs:
            if fault:
                with faults.inject("pt_alloc", nth=fault):
                    out.append(identity.outcome(lambda a=iova, p=pa, s=size, t=pt: t.map(a, p, s)))
            else:
                out.append(identity.outcome(lambda a=iova, p=pa, s=size, t=pt: t.map(a, p, s)))
        got.append((out, identity.pt_state(pt), identity.fault_state(), pt.leaves()[0].tobytes()))
    assert got[0] == got[1]


@SETTINGS
@given(pt_cases())
def test_map_calls_is_map_one_by_one(case):
    fmt, runs, pre, fault = case
    states = []
    for batched in (True, False):
        faults.reset()
        pt = PageTable(fmt)
        _premap(pt, runs, pre)
        iova, pa, size = (np.array(c, dtype=U) for c in zip(*runs, strict=True))
        with faults.inject("pt_alloc", nth=fault or 10**9):
            if batched:
                res = pt.map_calls(iova, pa, size)
                if res is None:          # a call raises ValueError: the caller goes one by one
                    res = identity.outcome(lambda t=pt: _calls_one_by_one(t, runs))
                else:
                    res = ("ok", (res[0], None if res[1] is None
                                  else (res[1].errno, str(res[1]))))
            else:
                res = identity.outcome(lambda t=pt: _calls_one_by_one(t, runs))
        states.append((res, identity.pt_state(pt), identity.fault_state()))
    assert states[0] == states[1]


def test_map_calls_refuses_what_a_call_would_refuse():
    pt = PageTable("x86_64")
    pt.map(0x3000, 0x9000, K4)
    snap = identity.pt_state(pt), identity.fault_state()
    a = np.array([0x1000, 0x3000], dtype=U)
    assert pt.map_calls(a, a, np.array([K4, K4], dtype=U)) is None        # live entry
    assert pt.map_calls(a[::-1].copy(), a, np.array([K4, K4], dtype=U)) is None  # order
    assert pt.map_calls(a, a + U(1), np.array([K4, K4], dtype=U)) is None   # unaligned
    assert (identity.pt_state(pt), identity.fault_state()) == snap


# --------------------------------------------------------------------------- dma_map_iova
@st.composite
def request(draw):
    """A range list that joins on the granule (an IOVA link) or, sometimes, does not."""
    n = draw(st.integers(1, 40))
    base = draw(st.sampled_from([0x1_0000_0000, 0x10_0000, 0xFFF0_0000, 0x7_0000_0000]))
    head = draw(st.sampled_from([0, 0, 0x200, 0xFFF]))
    tail = draw(st.sampled_from([0, 0, 0x100, 0x801]))
    pages = draw(st.lists(st.sampled_from([1, 1, 2, 3, 16, 512, 513]), min_size=n, max_size=n))
    gaps = draw(st.lists(st.sampled_from([0, 0, 1, 7, 511, 1 << 10]), min_size=n, max_size=n))
    addr, length, at = [], [], base
    for i in range(n):
        at += gaps[i] * K4
        a = at + (head if i == 0 else 0)
        ln = pages[i] * K4 - (head if i == 0 else 0) - (tail if i == n - 1 else 0)
        if ln <= 0:
            ln = 0x80
        addr.append(a)
        length.append(ln)
        at = a + ln
        at = (at + K4 - 1) // K4 * K4
    if draw(st.integers(0, 6)) == 0 and n > 1:         # a gap at the merge boundary
        length[0] -= 0x40
    return np.array(addr, dtype=U), np.array(length, dtype=U)


devices = st.fixed_dictionaries({
    "kind": st.sampled_from(["iommu", "iommu", "iommu", "direct"]),
    "coherent": st.booleans(),
    "untrusted": st.sampled_from([False, False, True]),
    "strict": st.booleans(),
    "mask_bits": st.sampled_from([32, 36, 64]),
    "pool_slots": st.sampled_from([None, 128]),
    "fmt": st.sampled_from(["x86_64", "arm_lpae_4k", "x86_64", "arm_lpae_16k"]),
})


def _device(d) -> Device:
    swiotlb = IoTlbMem(d["pool_slots"] * 2048) if d["pool_slots"] else None
    kw = {"dma_mask": DMA_BIT_MASK(d["mask_bits"]), "coherent": d["coherent"],
          "swiotlb": swiotlb, "max_seg_size": 1 << 20}
    if d["kind"] == "direct":
        return Device(None, **kw)
    dom = IommuDmaDomain(d["fmt"], strict=d["strict"])
    return Device("iommu_dma_ops", iommu=dom, untrusted=d["untrusted"], **kw)


def _dev_state(dev) -> tuple:
    out = [sorted(dev.ops.stats.items()), sorted(dev.resources().items())]
    if hasattr(dev.ops, "domain"):
        d = dev.ops.domain
        out += [d.snapshot(), identity.pt_state(d.pt), d.iovad.live_ranges(), d.iotlb.pending()]
    if dev.has_io_tlb_mem():
        m = dev.dma_io_tlb_mem
        out += [[a.tobytes() for a in m.snapshot()], sorted(m.stats.items())]
    return tuple(out)


def _map_outcome(dev, ranges):
    try:
        m = dma_map_iova(dev, ranges, "to_device")
    except (DmaMappingError, ValueError) as exc:
        return (type(exc).__name__, getattr(exc, "errno", None), str(exc)), None
    return ("ok", m.dma_addr.tobytes(), m.length.tobytes(), m.bounced.tobytes(),
            sorted(m.stats.items()), m.per_range), m


@SETTINGS
@given(request(), devices, st.sampled_from([None, "pt_alloc", "iova_alloc", "swiotlb_slot"]),
       st.integers(1, 6), st.booleans())
def test_dma_map_iova_batch_is_per_call(ranges, d, point, nth, busy):
    results = []
    for batch in (True, False):
        with _link_batch(batch):
            results.append(_map_and_unmap(ranges, d, point, nth, busy))
    assert results[0] == results[1]


@contextmanager
def _link_batch(flag: bool):
    old = iova_state.LINK_BATCH
    iova_state.LINK_BATCH = flag
    try:
        yield
    finally:
        iova_state.LINK_BATCH = old


def _map_and_unmap(ranges, d, point, nth, busy):
    if True:
        faults.reset()
        dev = _device(d)
        if busy:                          # an earlier mapping holds IOVA and table pages
            other = dma_map_iova(dev, (np.array([0x5_0000_0000], U), np.array([3 * K4], U)))
        if point:
            with faults.inject(point, nth=nth):
                out, m = _map_outcome(dev, ranges)
        else:
            out, m = _map_outcome(dev, ranges)
        after_map = _dev_state(dev)
        unmapped = None if m is None else sorted(dma_unmap_iova(dev, m).items())
        if busy:
            dma_unmap_iova(dev, other)
        return out, after_map, unmapped, _dev_state(dev), identity.fault_state()


def test_notebook_case_is_per_call(monkeypatch):
    """Notebook 06's IOVA row at 2,048 separate pages, batched and per call."""
    from phyrlab import twostep as ts
    from phyrlab.workloads import build

    buf = build("rdma-mr-1g-4k", size=1 << 23, seed=0, mean_run_pages=1.0)
    runs = []
    for batch in (True, False):
        monkeypatch.setattr(iova_state, "LINK_BATCH", batch)
        runs.append([ts.run_two_step(buf, b) for b in ts.BACKENDS])
    assert runs[0] == runs[1]
    assert runs[0][0]["map_calls"] == 2 + runs[0][0]["cpu_entries"]


@pytest.mark.parametrize("nth", [1, 3, 4, 5, 70, 150, 157, 302, 303])
@pytest.mark.parametrize("fmt", ["x86_64", "arm_lpae_16k"])
def test_map_calls_across_many_tables_and_a_fault_part_way(fmt, nth):
    """Each run needs its own last-level table (and every few a new one above): the pool
    grows past its first size, and the fault hits some call part way through."""
    pt_cls = FORMATS[fmt]
    stride = 1 << pt_cls.entry_shift(pt_cls.levels - 2)       # one last-level table apart
    runs = [(i * stride + (i % 3) * pt_cls.granule, (7 + 5 * i) * pt_cls.granule,
             pt_cls.granule * (1 + i % 2)) for i in range(300)]
    states = []
    for batched in (True, False):
        faults.reset()
        pt = PageTable(fmt)
        with faults.inject("pt_alloc", nth=nth):
            if batched:
                iova, pa, size = (np.array(c, dtype=U) for c in zip(*runs, strict=True))
                k, exc = pt.map_calls(iova, pa, size)
                res = (k, None if exc is None else (exc.errno, str(exc)))
            else:
                res = _calls_one_by_one(pt, runs)
        states.append((res, identity.pt_state(pt), identity.fault_state()))
    assert states[0] == states[1]
    k = states[0][0][0]
    assert (k == len(runs)) if nth == 303 else (0 < k < len(runs) or nth <= 3)


@pytest.mark.parametrize("nth", [2, 4, 5, 9])
@pytest.mark.parametrize("untrusted", [False, True])
def test_dma_map_iova_fault_part_way_unwinds_like_per_call(nth, untrusted):
    """Many 4 KiB ranges scattered in memory: IOVA tables fill as links go; a table-page fault
    part way destroys what was linked, batched as per call (and on an untrusted device the
    bounced head and tail are single calls around the batch)."""
    n = 5000
    addr = (np.arange(n, dtype=U) * U(3 * K4)) + U(0x2_0000_0000)
    length = np.full(n, K4, dtype=U)
    addr[0] += U(0x300)
    length[0] -= U(0x300)
    length[-1] -= U(0x80)
    d = {"kind": "iommu", "coherent": False, "untrusted": untrusted, "strict": True,
         "mask_bits": 64, "pool_slots": None, "fmt": "x86_64"}
    for point in ("pt_alloc", "swiotlb_slot"):
        results = []
        for batch in (True, False):
            with _link_batch(batch):
                results.append(_map_and_unmap((addr, length), d, point, nth, False))
        assert results[0] == results[1]
        if point == "pt_alloc" or (untrusted and nth <= 2):
            assert results[0][0][0] == "DmaMappingError"
