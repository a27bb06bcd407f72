"""Leaves planned per IOVA-contiguous stretch give exactly the per-chunk results.

``PageTable.batch_leaves`` (on by default) plans the leaves of segments smaller than a table
per stretch of IOVA-contiguous segments and sums their values from per-segment jumps, written
straight into fresh consecutive tables or, else, through the chunk writes. The reference is
``batch_leaves = False``: one chunk per (segment, table), values ``pa + i * size``. Random run
lists (contiguous or not, some holding larger leaves), formats, tables already present (some
in the way), and injected ``pt_alloc`` faults must give the same outcome, errors, PTEs, table
pages, counters and fault counters, through ``map_runs``, ``map`` and ``map_calls``.
"""

from __future__ import annotations

import identity
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from phyrlab import faults
from phyrlab.iommu.dma_iommu import IommuDmaDomain, iommu_dma_map_sg, iommu_dma_unmap_sg
from phyrlab.iommu.experiments import split_segments
from phyrlab.iommu.pagetable import FORMATS, PageTable
from phyrlab.units import DMA_BIT_MASK, U64_MAX

U = np.uint64
SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])




@st.composite
def run_lists(draw):
    """A format, runs in IOVA order (mostly joined), earlier maps, a fault to inject."""
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    f = FORMATS[fmt]
    g = f.granule
    E = 1 << f.level_bits[-1]
    big = list(f.leaf_sizes[1:])
    base = draw(st.sampled_from([0, 1 << 21, (1 << 30) - 8 * g, (1 << 31) + 5 * g,
                                 (1 << 32) - E * g // 2]))
    n = draw(st.integers(1, 90))
    runs, at = [], base
    for _ in range(n):
        at += g * draw(st.sampled_from([0, 0, 0, 0, 0, 1, 3, E - 1, E + 1]))
        pages = draw(st.sampled_from([1, 1, 2, 3, 5, 17, 64, 65, E - 1, E + 3]))
        size = pages * g
        if big and draw(st.integers(0, 7)) == 0:     # a run holding larger leaves
            b = draw(st.sampled_from(big))
            at = (at + b - 1) // b * b
            size = b * draw(st.sampled_from([1, 2, 3])) + g * draw(st.sampled_from([0, 1, 7]))
        pa = draw(st.sampled_from([at, at + (1 << 32), 0x1234 * g, (1 << 40) + 3 * g]))
        if at + size > 1 << f.ias:
            break
        runs.append((at, pa, size))
        at += size
    if not runs:
        runs = [(0, 0, g)]
    # maps made before: single pages near the runs (may be in the way) and whole runs
    # elsewhere (existing tables, so fresh tables are not consecutive)
    pre = draw(st.lists(st.tuples(st.integers(0, len(runs) - 1), st.integers(-2, 3)),
                        max_size=2))
    other = draw(st.sampled_from([None, 1 << 33, base - E * g, runs[-1][0] + runs[-1][2]]))
    other = None if other is None else (other, draw(st.booleans()))
    fault = draw(st.sampled_from([None, None, 1, 2, 3, 5, 9]))
    return fmt, runs, pre, other, fault


def _premap(pt: PageTable, runs, pre, other) -> None:
    """Single pages near the runs, and 3 pages at ``other`` (first or last: tables taken
    between the runs' old and new tables make them not consecutive)."""
    g = pt.fmt.granule
    at, last = other if other is not None else (None, False)
    maps = [(runs[i][0] + d * g, 0x777 * g, g) for i, d in pre]
    if at is not None and last:          # a page just below the runs: their first table
        maps.insert(0, (runs[0][0] - g, 0x999 * g, g))
    if at is not None:
        maps.insert(len(maps) if last else 0, (at, 0x555 * g, 3 * g))
    for iova, pa, size in maps:
        if 0 <= iova and iova + size <= 1 << pt.fmt.ias:
            try:
                pt.map(iova, pa, size)
            except ValueError:
                pass


def _both(fn) -> None:
    """``fn(pt)`` with stretch leaves and with the per-chunk reference: the same end."""
    got = []
    for batch in (True, False):
        faults.reset()
        old = PageTable.batch_leaves
        PageTable.batch_leaves = batch
        try:
            got.append(fn())
        finally:
            PageTable.batch_leaves = old
    assert got[0] == got[1]


@SETTINGS
@given(run_lists())
def test_map_runs_stretch_leaves_are_the_chunk_writes(case):
    fmt, runs, pre, other, fault = case

    def go():
        pt = PageTable(fmt)
        _premap(pt, runs, pre, other)
        i, p, s = (np.array(c, dtype=U) for c in zip(*runs, strict=True))
        with faults.inject("pt_alloc", nth=fault or 10**9):
            res = identity.outcome(lambda: pt.map_runs(i, p, s))
        li, lp, ls = pt.leaves()
        return (res, identity.pt_state(pt), identity.fault_state(), li.tobytes(), lp.tobytes(),
                ls.tobytes())
    _both(go)


@SETTINGS
@given(run_lists())
def test_map_calls_stretch_leaves_are_the_chunk_writes(case):
    fmt, runs, pre, other, fault = case

    def go():
        pt = PageTable(fmt)
        _premap(pt, runs, pre, other)
        i, p, s = (np.array(c, dtype=U) for c in zip(*runs, strict=True))
        with faults.inject("pt_alloc", nth=fault or 10**9):
            res = pt.map_calls(i, p, s)
        if res is not None:
            res = (res[0], None if res[1] is None else (res[1].errno, str(res[1])))
        return res, identity.pt_state(pt), identity.fault_state()
    _both(go)


@SETTINGS
@given(run_lists(), st.booleans())
def test_map_runs_twice_and_unmap(case, shuffle):
    """A second stretch next to (or into) the first one's tables, runs given out of order."""
    fmt, runs, _pre, _other, fault = case
    g = FORMATS[fmt].granule

    def go():
        pt = PageTable(fmt)
        i, p, s = (np.array(c, dtype=U) for c in zip(*runs, strict=True))
        out = [identity.outcome(lambda: pt.map_runs(i, p, s))]
        end = int(i[-1] + s[-1])
        i2 = np.arange(4, dtype=U) * U(3 * g) + U(end - g * (fault or 0) % (2 * g))
        s2 = np.full(4, 3 * g, dtype=U)
        p2 = i2 + U(7 << 30)
        if shuffle:
            i2, p2 = i2[::-1].copy(), p2[::-1].copy()
        if int(i2.max()) + 3 * g <= 1 << pt.fmt.ias:
            with faults.inject("pt_alloc", nth=fault or 10**9):
                out.append(identity.outcome(lambda: pt.map_runs(i2, p2, s2)))
        if out[0][0] == "ok":
            out.append(identity.outcome(lambda: pt.unmap(int(i[0]), end - int(i[0]))))
        return out, identity.pt_state(pt), identity.fault_state()
    _both(go)


def test_many_stretches_and_one_long_stretch():
    """Past 64 stretches (values summed into a buffer) and one stretch over many tables."""
    g = 4096
    sizes = np.tile(np.array([1, 2, 3, 5, 7], dtype=U), 400) * U(g)
    gaps = np.where(np.arange(sizes.size) % 7 == 6, U(g), U(0))
    iova = np.cumsum(sizes + gaps) - sizes - gaps + U(1 << 30)
    pa = (np.arange(sizes.size, dtype=U) * U(11 * g)) + U(1 << 35)
    joined = np.cumsum(sizes) - sizes + U(1 << 30)
    for it, ps in ((iova, pa), (joined, pa)):
        _both(lambda it=it, ps=ps: (lambda pt: (pt.map_runs(it, ps, sizes), identity.pt_state(pt)))(
            PageTable("x86_64")))


def test_map_sg_of_a_fragmented_buffer_is_the_same_either_way():
    rng = np.random.default_rng(3)
    pages = rng.integers(1, 20, 5000).astype(U)
    pfn = np.cumsum(pages + rng.integers(1, 4, 5000).astype(U))
    addr, length = pfn * U(4096), pages * U(4096)
    for fmt in ("x86_64", "x86_64_5lvl", "arm_lpae_16k"):
        def go(fmt=fmt):
            d = IommuDmaDomain(fmt)
            da, dl = iommu_dma_map_sg(d, addr, length, max_seg_size=1 << 31,
                                      seg_boundary_mask=U64_MAX, dma_limit=DMA_BIT_MASK(64))
            st_ = identity.pt_state(d.pt)
            iommu_dma_unmap_sg(d, da, dl)
            return da.tobytes(), dl.tobytes(), st_, identity.pt_state(d.pt)
        _both(go)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("seed", range(4))
def test_stretch_over_old_and_new_tables(fmt, seed):
    """A stretch whose first table exists and whose other tables are not the next pool rows
    (another mapping took a page between): leaf values go through the chunk writes."""
    f = FORMATS[fmt]
    g, E = f.granule, 1 << f.level_bits[-1]
    rng = np.random.default_rng(seed)
    pages = rng.integers(1, 9, min(3 * E // 4, 3000)).astype(U)
    start = (E * 5 + E // 2) * g % (1 << f.ias)
    iova = np.cumsum(pages) * U(g) - pages * U(g) + U(start)
    pa = np.cumsum(pages + U(1)) * U(g) + U(1 << 36)
    size = pages * U(g)
    fault = [None, None, 1, 3][seed]

    def go():
        pt = PageTable(fmt)
        pt.map(start - g, 0x999 * g, g)
        pt.map(0 if start > E * g * 2 else (1 << f.ias) - E * g, 0x555 * g, g)
        with faults.inject("pt_alloc", nth=fault or 10**9):
            res = identity.outcome(lambda: pt.map_runs(iova, pa, size))
        return res, identity.pt_state(pt), identity.fault_state()
    _both(go)


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 1 << 40), st.integers(0, 1 << 22)), min_size=1,
                max_size=30), st.sampled_from([4096, 12288, 1 << 16, 1 << 22, (1 << 32) - 4096]))
def test_split_segments_is_the_per_range_cut(ranges, max_seg):
    """Pieces of at most ``max_seg`` per range, in order (a range of 0 bytes gives none);
    the copies returned when nothing is cut are the inputs' values, not the inputs."""
    addr = np.array([a for a, _ in ranges], dtype=U)
    length = np.array([n for _, n in ranges], dtype=U)
    want_a, want_n = [], []
    for a, n in ranges:
        for k in range(0, n, max_seg):
            want_a.append(a + k)
            want_n.append(min(max_seg, n - k))
    got_a, got_n = split_segments(addr, length, max_seg)
    assert got_a.dtype == got_n.dtype == U
    assert got_a.tolist() == want_a and got_n.tolist() == want_n
    assert not np.shares_memory(got_a, addr) and not np.shares_memory(got_n, length)
