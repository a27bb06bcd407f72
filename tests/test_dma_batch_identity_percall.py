"""Per-call backends mapped many ranges at once give exactly what the per-call loops give.

``VduseOps.batch`` (``map_phys_many``/``unmap_phys_many`` behind ``_map_per_range``),
``XenGrantOps.batch`` (``map_sg``/``unmap_sg`` over consecutive grant runs) and
``S390Ops.batch`` (``s390_dma_map_sg`` segment cut and back-to-back IOVA runs) switch between
array operations and the per-call transcription of the kernel's loops, which
tests/test_dma_families.py holds to the kernel. Random range lists, device limits, domain and
table states and injected faults (``phyrlab.faults``) must give the same DMA lists, errnos,
messages, counters, allocator state and fault-injection counts either way.
"""

from __future__ import annotations

import identity
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from phyrlab import faults
from phyrlab.dma.device import Device
from phyrlab.dma.mapping import dma_map, dma_unmap
from phyrlab.errors import DmaMappingError
from phyrlab.units import DMA_BIT_MASK, PAGE_SIZE, ULONG_MAX

U = np.uint64
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.data_too_large])
DIRECTIONS = ["bidirectional", "to_device", "from_device"]


def range_lists(max_n: int = 60):
    """:func:`identity.range_lists` with this file's bases and lengths."""
    return identity.range_lists(max_n, [0x1_0000_0000, 0x10_0000, 0x3F00_0000],
                                [1, 512, 4096, 4096, 4096, 8192, 12288, 4096 * 5, 65536, 3000])


faults_armed = st.lists(st.tuples(st.one_of(st.integers(1, 4), st.integers(1, 80)),
                                  st.integers(1, 3)), min_size=0,
                        max_size=1)


def _drive(name: str, params: dict, limits: dict, lists, directions, unmap_every: int,
           armed: dict, batch: bool, state, fault_at: int = -1) -> list:
    """Map every list in turn through ``dma_map`` (unmapping some), the armed faults on list
    ``fault_at`` (modulo their number); everything observable after each step."""
    faults.reset()
    dev = Device(name, ops_params=params, **limits)
    ops = dev.ops
    ops.batch = batch
    seen, live = [], []
    for k, (addr, length) in enumerate(lists):
        direction = directions[k % len(directions)]
        try:
            if k == fault_at % len(lists) and armed:
                with _inject(armed):
                    m = dma_map(dev, (addr, length), direction)
            else:
                m = dma_map(dev, (addr, length), direction)
            live.append(m)
            seen.append(("ok", m.dma_addr.tobytes(), m.length.tobytes(), m.bounced.tobytes(),
                         dict(m.stats)))
        except DmaMappingError as exc:
            seen.append(("err", exc.errno, str(exc)))
        if unmap_every and live and k % unmap_every == 0:
            seen.append(dict(dma_unmap(dev, live.pop(0))))
        seen.append(state(ops))
        seen.append((dict(faults.stats.calls), dict(faults.stats.failed)))
    for m in live:
        seen.append(dict(dma_unmap(dev, m)))
    seen.append(state(ops))
    seen.append(dev.resources())
    return seen


class _inject:
    """Arm several fault points at once."""

    def __init__(self, armed: dict):
        self.armed = armed
        self.cms = []

    def __enter__(self):
        for point, (nth, times) in self.armed.items():
            cm = faults.inject(point, nth=nth, times=times)
            cm.__enter__()
            self.cms.append(cm)

    def __exit__(self, *exc):
        for cm in reversed(self.cms):
            cm.__exit__(None, None, None)


# --------------------------------------------------------------------------- VDUSE
def _vduse_state(ops) -> tuple:
    return (ops.iova_used.tobytes(), ops.bounce_page.tobytes(), ops.orig_phys.tobytes(),
            list(ops.live.items()), dict(ops.stats))


@SETTINGS
@given(lists=st.lists(range_lists(), min_size=1, max_size=4),
       bounce_pages=st.sampled_from([2, 16, 64, 200, 1024]),
       directions=st.lists(st.sampled_from(DIRECTIONS), min_size=1, max_size=3),
       max_seg=st.sampled_from([4096, 65536, 1 << 20]), unmap_every=st.integers(0, 2),
       iova=faults_armed, bounce=faults_armed, fault_at=st.integers(0, 3))
def test_vduse_map_phys_many_equals_per_call(lists, bounce_pages, directions, max_seg,
                                             unmap_every, iova, bounce, fault_at):
    params = {"bounce_size": bounce_pages * PAGE_SIZE}
    limits = {"dma_mask": DMA_BIT_MASK(64), "max_seg_size": max_seg}
    armed = dict([("iova_alloc", t) for t in iova] + [("bounce_alloc", t) for t in bounce])
    out = [_drive("vduse_dev_dma_ops", params, limits, lists, directions, unmap_every, armed,
                  b, _vduse_state, fault_at) for b in (True, False)]
    assert out[0] == out[1]


@pytest.mark.parametrize("n", [1, 5000, 20_000])
def test_vduse_fills_identically_at_scale(n):
    """Thousands of separate 4 KiB pages (and odd sizes) fill the 64 MiB domain the same way."""
    rng = np.random.default_rng(3)
    pfn = np.sort(rng.choice(1 << 22, n, replace=False)).astype(U)
    addr = U(0x1_0000_0000) + pfn * U(4 * PAGE_SIZE)
    length = np.full(n, PAGE_SIZE, U)
    length[::5] = 3 * PAGE_SIZE
    length[::11] = 100
    out = [_drive("vduse_dev_dma_ops", {}, {"dma_mask": DMA_BIT_MASK(64)},
                  [(addr, length)] * 2, ["bidirectional"], 1, {}, b, _vduse_state)
           for b in (True, False)]
    assert out[0] == out[1]


@SETTINGS
@given(pages=st.integers(2, 300), density=st.floats(0, 1), seed=st.integers(0, 2**32 - 1),
       sizes=st.lists(st.integers(1, 40), min_size=1, max_size=6),
       repeat=st.integers(1, 30), horizon_cut=st.integers(0, 5))
def test_vduse_plan_iova_equals_alloc_iova_calls(pages, density, seed, sizes, repeat,
                                                 horizon_cut):
    """The free-run plan of mixed-size requests on a random bitmap: the pfns (and where the
    first fails) of the same ``_alloc_iova`` calls, the bitmap left alone."""
    from phyrlab.dma.vduse import VduseOps

    rng = np.random.default_rng(seed)
    ops = VduseOps(bounce_size=pages * PAGE_SIZE)
    ops.iova_used[1:] = rng.random(pages - 1) < density
    npages = rng.choice(np.array(sizes, np.int64), int(rng.integers(1, 80)))
    npages = np.repeat(npages, rng.integers(1, repeat + 1, len(npages)))
    horizon = max(0, len(npages) - horizon_cut)
    before = ops.iova_used.copy()
    pfns, e = ops._plan_iova(npages, horizon)
    assert np.array_equal(ops.iova_used, before)
    ref = VduseOps(bounce_size=pages * PAGE_SIZE)
    ref.iova_used[:] = before
    want = []
    for m in npages[:horizon].tolist():
        pfn = ref._alloc_iova(m)
        if not pfn:
            break
        want.append(pfn)
    assert (e, pfns[:e].tolist()) == (len(want), want)


@pytest.mark.parametrize("workload", ["nvme-128k-seq", "rdma-mr-1g-4k"])
def test_vduse_mixed_sizes_fill_identically(workload):
    """A workload's multi-page ranges (sizes changing every few entries) fill the 64 MiB
    domain, fail and unwind the same way; with a few mappings live, and from a domain whose
    bitmap has holes."""
    from phyrlab.backends import buffer
    from phyrlab.layouts import as_ranges

    addr, length = as_ranges(buffer(workload, 1 << 26, "high", 0).layout("phyr"))
    addr, length = np.asarray(addr, U), np.asarray(length, U)
    head = (addr[:700:3].copy(), length[:700:3].copy())
    out = [_drive("vduse_dev_dma_ops", {}, {"dma_mask": DMA_BIT_MASK(64)},
                  [head, head, (addr, length), head, head, (addr, length)],
                  ["bidirectional", "to_device"], 2, {}, b, _vduse_state)
           for b in (True, False)]
    assert out[0] == out[1]


def test_vduse_unmap_phys_many_bad_list_raises_as_per_call():
    """A list holding a mapping twice: the batched unmap stops where the loop stops."""
    dev = Device("vduse_dev_dma_ops", ops_params={"bounce_size": 64 * PAGE_SIZE})
    ops = dev.ops
    a = [ops.map_phys(dev, 0x10_0000 + i * 0x3000, 5000, "to_device") for i in range(3)]
    dma = np.array([a[0], a[1], a[0], a[2]], U)
    size = np.full(4, 5000, U)
    with pytest.raises(ValueError, match="does not match a live mapping"):
        ops.unmap_phys_many(dev, dma, size, "to_device")
    assert list(ops.live) == [a[2] >> 12]


# --------------------------------------------------------------------------- Xen grants
def _grant_state(ops) -> tuple:
    return (ops.free.tobytes(), ops.frames.tobytes(), ops.low_free, dict(ops.stats))


@SETTINGS
@given(lists=st.lists(range_lists(), min_size=1, max_size=5),
       nr_grants=st.sampled_from([12, 40, 100, 400]),
       directions=st.lists(st.sampled_from(DIRECTIONS), min_size=1, max_size=3),
       max_seg=st.sampled_from([4096, 65536, 1 << 20]), unmap_every=st.integers(0, 2),
       grant=faults_armed, fault_at=st.integers(0, 4))
def test_xen_grant_map_sg_batched_equals_per_call(lists, nr_grants, directions, max_seg,
                                                  unmap_every, grant, fault_at):
    params = {"nr_grants": nr_grants}
    limits = {"dma_mask": DMA_BIT_MASK(64), "max_seg_size": max_seg}
    armed = dict(("grant_alloc", t) for t in grant)
    out = [_drive("xen_grant_dma_ops", params, limits, lists, directions, unmap_every, armed,
                  b, _grant_state, fault_at) for b in (True, False)]
    assert out[0] == out[1]


def test_xen_grant_fills_identically_at_scale():
    rng = np.random.default_rng(5)
    n = 40_000
    pfn = np.sort(rng.choice(1 << 22, n, replace=False)).astype(U)
    addr = U(0x1_0000_0000) + pfn * U(4 * PAGE_SIZE)
    length = np.full(n, PAGE_SIZE, U)
    length[::3] = 2 * PAGE_SIZE + 7
    addr[::7] += U(100)
    small = (addr[:9000:2].copy(), length[:9000:2].copy())
    out = [_drive("xen_grant_dma_ops", {}, {"dma_mask": DMA_BIT_MASK(64)},
                  [small, (addr, length), small], ["to_device"], 1, {}, b, _grant_state)
           for b in (True, False)]
    assert out[0] == out[1]


def test_xen_grant_unmap_sg_bad_list_raises_as_per_call():
    dev = Device("xen_grant_dma_ops")
    ops = dev.ops
    addr = np.array([0x10_0000, 0x20_0000, 0x30_0000], U)
    length = np.full(3, PAGE_SIZE, U)
    dma, dlen, cookie = ops.map_sg(dev, addr, length, "to_device")
    bad = np.array([dma[0], dma[1], dma[0], dma[2]], U)
    with pytest.raises(ValueError, match="not a granted address"):
        ops.unmap_sg(dev, bad, np.full(4, PAGE_SIZE, U), "to_device", cookie)
    assert ops.resources() == {"grants": 1}


# --------------------------------------------------------------------------- s390
def _s390_state(ops) -> tuple:
    return (ops.bitmap.map.tobytes(), ops.bitmap.low_free, ops.lazy.tobytes(), ops.next_bit,
            ops.ptes.tobytes(), sorted(ops.seg_tables), sorted(ops.page_tables),
            ops.table_pages, dict(ops.stats))


@settings(SETTINGS, max_examples=150)
@given(lists=st.lists(range_lists(), min_size=1, max_size=5),
       iommu_pages=st.sampled_from([16, 64, 300, 4096, 4096]),
       start_dma=st.sampled_from([1 << 32, 0xFFF0_0000, 0x7FF0_0000]),
       strict=st.booleans(), tlb_refresh=st.booleans(),
       max_seg=st.sampled_from([4096, 10000, 65536, 1 << 20]),
       boundary=st.sampled_from([ULONG_MAX, 0xFFFF, 0xF_FFFF]),
       unmap_every=st.integers(0, 2), area=faults_armed,
       pt=st.lists(st.tuples(st.integers(1, 6), st.integers(1, 3)), max_size=1),
       fault_at=st.integers(0, 4))
def test_s390_map_sg_batched_equals_per_run(lists, iommu_pages, start_dma, strict, tlb_refresh,
                                            max_seg, boundary, unmap_every, area, pt,
                                            fault_at):
    params = {"iommu_size": iommu_pages * PAGE_SIZE, "start_dma": start_dma, "strict": strict,
              "tlb_refresh": tlb_refresh}
    limits = {"dma_mask": DMA_BIT_MASK(64), "max_seg_size": max_seg,
              "seg_boundary_mask": boundary}
    armed = dict([("iommu_area_alloc", t) for t in area] + [("pt_alloc", t) for t in pt])
    out = [_drive("s390_pci_dma_ops", params, limits, lists, ["bidirectional"], unmap_every,
                  armed, b, _s390_state, fault_at) for b in (True, False)]
    assert out[0] == out[1]


@settings(SETTINGS, max_examples=60)
@given(lists=st.lists(range_lists(), min_size=1, max_size=4),
       iommu_pages=st.sampled_from([16, 64, 300, 4096]), strict=st.booleans(),
       max_seg=st.sampled_from([4096, 10000, 65536, 1 << 20]),
       boundary=st.sampled_from([ULONG_MAX, 0xFFFF]), unmap_every=st.integers(0, 2),
       area=faults_armed, pt=st.lists(st.tuples(st.integers(1, 6), st.integers(1, 3)),
                                      max_size=1),
       fault_at=st.integers(0, 3), reach=st.integers(1, 40), pad=st.integers(1, 4))
def test_s390_map_sg_chunks_equal_per_run(lists, iommu_pages, strict, max_seg, boundary,
                                          unmap_every, area, pt, fault_at, reach, pad):
    """The batched map_sg cuts segments a chunk at a time from the aperture's reach; with a
    reach too short (each chunk continues from the last true segment start) the DMA lists,
    state, counters and fault calls are still the per-run loop's."""
    from phyrlab.dma import s390

    params = {"iommu_size": iommu_pages * PAGE_SIZE, "strict": strict}
    limits = {"dma_mask": DMA_BIT_MASK(64), "max_seg_size": max_seg,
              "seg_boundary_mask": boundary}
    armed = dict([("iommu_area_alloc", t) for t in area] + [("pt_alloc", t) for t in pt])
    saved = s390.S390Ops._first_unreachable, s390._PAD
    s390.S390Ops._first_unreachable = lambda self, length: min(len(length), reach)
    s390._PAD = pad
    try:
        got = _drive("s390_pci_dma_ops", params, limits, lists, ["bidirectional"],
                     unmap_every, armed, True, _s390_state, fault_at)
    finally:
        s390.S390Ops._first_unreachable, s390._PAD = saved
    assert got == _drive("s390_pci_dma_ops", params, limits, lists, ["bidirectional"],
                         unmap_every, armed, False, _s390_state, fault_at)


@SETTINGS
@given(n=st.integers(1, 300), maxseg=st.sampled_from([1, 4096, 10000, 65536, 1 << 20]),
       seed=st.integers(0, 2**32 - 1), uniform=st.floats(0, 1))
def test_s390_segment_cut_equals_walk(n, maxseg, seed, uniform):
    """The segment starts of ``s390_dma_map_sg``: arrays vs the entry walk."""
    from phyrlab.dma.s390 import _segment_starts, _segment_starts_loop

    rng = np.random.default_rng(seed)
    off = np.where(rng.random(n) < 0.1, rng.integers(1, PAGE_SIZE, n), 0).astype(np.int64)
    ln = rng.choice([0, 1, 512, 4096, 8192, 12288, 65536, 3 << 20], n).astype(np.int64)
    ln = np.where(rng.random(n) < uniform, 4096, ln)
    assert _segment_starts(off, ln, maxseg).tolist() == \
        _segment_starts_loop(off, ln, maxseg).tolist()


@SETTINGS
@given(n=st.integers(1, 400), maxseg=st.sampled_from([1, 4096, 10000, 65536, 1 << 20]),
       seed=st.integers(0, 2**32 - 1), offsets=st.sampled_from([0, 0.005, 0.1]),
       zeros=st.sampled_from([0, 0.05]), pages=st.sampled_from([2, 20, 300]),
       piece=st.sampled_from([1, 2, 64]), rounds=st.sampled_from([0, 1, 2, 24]))
def test_s390_segment_cut_mixed_sizes_equals_walk(n, maxseg, seed, offsets, zeros, pages,
                                                  piece, rounds):
    """Stretches of page multiples whose sizes keep changing (the greedy max_seg cut walked
    piece by piece, entries corrected in rounds, the walk past the last round) and the odd
    offset, unaligned end or empty entry: the same starts as the entry walk."""
    from phyrlab.dma import s390

    rng = np.random.default_rng(seed)
    off = np.where(rng.random(n) < offsets, rng.integers(1, PAGE_SIZE, n), 0).astype(np.int64)
    ln = rng.integers(1, pages, n).astype(np.int64) * PAGE_SIZE
    ln[rng.random(n) < offsets] -= 100
    ln[rng.random(n) < zeros] = 0
    saved = s390._PIECE, s390._ROUNDS
    s390._PIECE, s390._ROUNDS = piece, rounds
    try:
        got = s390._segment_starts(off, ln, maxseg)
    finally:
        s390._PIECE, s390._ROUNDS = saved
    assert got.tolist() == s390._segment_starts_loop(off, ln, maxseg).tolist()


@pytest.mark.parametrize("workload", ["nvme-128k-seq", "rdma-mr-1g-4k"])
def test_s390_mixed_sizes_fill_identically(workload):
    """A workload's multi-page ranges fill a 64 MiB aperture, fail and unwind the same way."""
    from phyrlab.backends import buffer
    from phyrlab.layouts import as_ranges

    addr, length = as_ranges(buffer(workload, 1 << 28, "high", 0).layout("phyr"))
    addr, length = np.asarray(addr, U), np.asarray(length, U)
    head = (addr[:3000:2].copy(), length[:3000:2].copy())
    out = [_drive("s390_pci_dma_ops", {"iommu_size": 1 << 26},
                  {"dma_mask": DMA_BIT_MASK(64), "max_seg_size": 65536},
                  [head, (addr, length), head, head, (addr, length)], ["bidirectional"], 2,
                  {}, b, _s390_state) for b in (True, False)]
    assert out[0] == out[1]


@pytest.mark.parametrize("max_seg", [65536, 1 << 20])
def test_s390_fills_identically_at_scale(max_seg):
    rng = np.random.default_rng(11)
    n = 30_000
    pfn = np.sort(rng.choice(1 << 22, n, replace=False)).astype(U)
    addr = U(0x1_0000_0000) + pfn * U(4 * PAGE_SIZE)
    length = np.full(n, PAGE_SIZE, U)
    length[::9] = 3 * PAGE_SIZE
    small = (addr[:6000:3].copy(), length[:6000:3].copy())
    out = [_drive("s390_pci_dma_ops", {"iommu_size": 1 << 26},
                  {"dma_mask": DMA_BIT_MASK(64), "max_seg_size": max_seg},
                  [small, (addr, length), small, small], ["bidirectional"], 2, {}, b,
                  _s390_state) for b in (True, False)]
    assert out[0] == out[1]


# --------------------------------------------------------------------------- Xen swiotlb
@pytest.mark.parametrize("chunk", [512, 300])
def test_xen_swiotlb_p2m_reads_as_make_p2m(chunk):
    """The P2M read through chunks and the pool overlay is make_p2m's array, remapped."""
    from phyrlab.dma.xen import make_p2m

    nr = 0x70000
    dev = Device("xen_swiotlb_dma_ops", dma_mask=DMA_BIT_MASK(32),
                 ops_params={"nr_pages": nr, "chunk_pages": chunk, "seed": 4})
    ops = dev.ops
    ref = make_p2m(nr, chunk, 4)
    assert np.array_equal(ops.p2m, ref)
    pool = ops._pool(dev)
    first, last = pool.start >> 12, (pool.end - 1) >> 12
    ref[first:last + 1] = np.arange(ops.pool_mfn, ops.pool_mfn + last - first + 1, dtype=U)
    pfn = np.arange(nr, dtype=U)
    assert np.array_equal(ops.p2m, ref) and np.array_equal(ops._mfn(pfn), ref)
    rng = np.random.default_rng(1)
    addr = rng.integers(0, (nr - 8) * PAGE_SIZE, 5000).astype(U)
    length = rng.integers(1, 5 * PAGE_SIZE, 5000).astype(U)
    pfn0, npg = addr >> U(12), ((addr & U(4095)) + length + U(4095)) >> U(12)
    straddle = [bool(np.any(ref[p:p + n] != ref[p] + np.arange(n, dtype=U)))
                for p, n in zip(pfn0.tolist(), npg.tolist(), strict=True)]
    assert ops.straddles(addr, length).tolist() == straddle
