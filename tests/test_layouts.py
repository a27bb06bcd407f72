"""Every layout: C struct sizes, round trips, identical ranges(), segments, bad input."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import phyrlab as pl
from phyrlab.errors import RangeError
from phyrlab.layouts import LAYOUTS, check_ranges, split_segments
from phyrlab.units import SZ_2M, SZ_64K, U64_MAX

P = pl.PAGE_SIZE
U = np.uint64

# sizeof() on 64-bit, from include/linux/scatterlist.h, bvec.h, blk-mq-dma.c (../shared/kernel)
C_SIZES = {"scatterlist": 32, "bio_vec": 16, "phyr": 16, "phys_vec": 16, "page_list": 8,
           "pfn_run": 8}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_entry_size_is_the_c_struct(name):
    cls = LAYOUTS[name]
    assert cls.entry_size == C_SIZES[name]
    assert cls.dtype.itemsize == C_SIZES[name]


def test_dtype_field_offsets_match_c():
    sg = LAYOUTS["scatterlist"].dtype
    assert [sg.fields[f][1] for f in
            ("page_link", "offset", "length", "dma_address", "dma_length", "dma_flags")] == \
        [0, 8, 12, 16, 24, 28]
    bv = LAYOUTS["bio_vec"].dtype
    assert [bv.fields[f][1] for f in ("bv_page", "bv_len", "bv_offset")] == [0, 8, 12]
    pv = LAYOUTS["phys_vec"].dtype
    assert [pv.fields[f][1] for f in ("paddr", "len")] == [0, 8]


def page_aligned_ranges():
    addr = np.array([0x10000, 0x40000, 0x7000], dtype=U)
    length = np.array([0x3000, 0x1000, 0x2000], dtype=U)
    return addr, length


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_round_trip_of_ranges(name):
    addr, length = page_aligned_ranges()
    x = LAYOUTS[name].from_ranges(addr, length)
    a, n = x.ranges()
    assert a.tolist() == addr.tolist() and n.tolist() == length.tolist()
    assert x.total_length == int(length.sum())
    assert len(x) >= 3
    assert x.nbytes >= len(x) * x.entry_size


def test_every_layout_gives_identical_ranges_for_the_same_pages():
    buf = pl.workloads.build("gpu-buffer", size=8 << 20, seed=3)
    ref = buf.ranges()
    for name in LAYOUTS:
        a, n = buf.layout(name).ranges()
        assert np.array_equal(a, ref[0]) and np.array_equal(n, ref[1]), name


def test_nbytes_counts_entries_by_layout():
    # 10 runs of 3 pages: 10 entries for range layouts, 30 for a page list
    pfns = (np.arange(10)[:, None] * 8 + np.arange(3)).ravel()
    sizes = {n: LAYOUTS[n].from_pages(pfns).nbytes for n in LAYOUTS}
    assert sizes == {"scatterlist": 16 + 10 * 32, "bio_vec": 160, "phyr": 160, "phys_vec": 160,
                     "page_list": 16 + 30 * 8, "pfn_run": 16 + 10 * 8}


def test_bio_vec_multipage_entries():
    x = LAYOUTS["bio_vec"].from_ranges([0x1000_0100], [3 * P])
    e = x.entries[0]
    assert e["bv_len"] == 3 * P and e["bv_offset"] == 0x100
    assert len(x) == 1


def test_u32_length_layouts_split_long_ranges():
    big = 6 << 30  # 6 GiB contiguous
    for name in ("scatterlist", "bio_vec", "phys_vec"):
        x = LAYOUTS[name].from_ranges([1 << 40], [big])
        assert len(x) == 2, name  # 0xfffff000 + the rest
        assert [a.tolist() for a in x.ranges()] == [[1 << 40], [big]]
    assert len(LAYOUTS["phyr"].from_ranges([1 << 40], [big])) == 1


def test_pfn_run_encoding_and_limits():
    x = LAYOUTS["pfn_run"].from_ranges([0x5000], [4097 * P])  # one run longer than 4096 pages
    assert len(x) == 2
    assert int(x.words[0]) == (5 << 12) | 4095
    assert int(x.words[1]) == ((5 + 4096) << 12) | 0
    with pytest.raises(ValueError, match=r"range 0 ends at 0x1800, inside a 4096-byte page"):
        LAYOUTS["pfn_run"].from_ranges([0x1000, 0x8000], [0x800, 0x1000])
    with pytest.raises(ValueError, match=r"range 1 starts at 0x8100"):
        LAYOUTS["page_list"].from_ranges([0x1000, 0x8100], [0x1000, 0x1000])


def test_page_list_with_huge_pages():
    buf = pl.workloads.build("rdma-mr-1g-2m", size=64 << 20)
    x = buf.layout("page_list")
    assert x.page_size == SZ_2M and len(x) == 32
    assert np.array_equal(x.ranges()[0], buf.ranges()[0])


def test_segments_split_by_max_seg_and_boundary():
    # 0x0ff000 + 0x12000: crosses the 1 MiB boundary at 0x100000; max_seg 64 KiB
    a, n = split_segments(np.array([0xFF000], U), np.array([0x12000], U), SZ_64K, 0xFFFFF)
    assert a.tolist() == [0xFF000, 0x100000, 0x110000]
    assert n.tolist() == [0x1000, 0x10000, 0x1000]
    x = LAYOUTS["phyr"].from_ranges([0xFF000], [0x12000])
    assert [v.tolist() for v in x.segments(SZ_64K, 0xFFFFF)] == [a.tolist(), n.tolist()]


@pytest.mark.parametrize("addr,length,msg", [
    ([0, 0x2000], [0x1000, 0], r"length\[1\] is zero"),
    ([U64_MAX - 0xFFF], [0x2000], "ends past 2\\^64"),
    ([0x1000, 0x1800], [0x1000, 0x1000], "ranges 0 .* and 1 .* overlap"),
    ([0x9000, 0x1000, 0x1800], [0x100, 0x1000, 0x100], "ranges 1 .* and 2 .* overlap"),
    ([-1], [5], r"addr\[0\] = -1 is negative"),
    ([1.5], [5], "integer array"),
])
def test_bad_ranges_are_refused_with_the_value(addr, length, msg):
    for cls in LAYOUTS.values():
        with pytest.raises(ValueError, match=msg):
            cls.from_ranges(np.array(addr), np.array(length))


def test_range_ending_exactly_at_2_64_is_fine():
    x = LAYOUTS["phyr"].from_ranges(np.array([U64_MAX - 0xFFF], U), np.array([0x1000], U))
    assert x.total_length == 0x1000


def test_unsorted_ranges_are_kept_in_order():
    addr = np.array([0x9000, 0x1000], U)
    length = np.array([0x1000, 0x1000], U)
    for cls in LAYOUTS.values():
        assert cls.from_ranges(addr, length).ranges()[0].tolist() == [0x9000, 0x1000]


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.integers(0, 1 << 20), min_size=1, max_size=200, unique=True),
       st.integers(0, P - 1), st.integers(0, P - 1))
def test_property_all_layouts_agree_on_random_pages(pfns, offset, trim):
    pfns = np.array(pfns, dtype=U)
    room = pfns.size * P - offset
    size = max(room - trim, room - P + 1, 1)
    ref = None
    for name, cls in LAYOUTS.items():
        x = cls.from_pages(pfns, offset, size)
        got = x.ranges()
        assert x.total_length == size, name
        if ref is None:
            ref = got
            # every byte once: sum of lengths is size, ranges do not overlap
            assert int(got[1].sum()) == size
        assert np.array_equal(got[0], ref[0]) and np.array_equal(got[1], ref[1]), name
        # rebuilding from ranges gives the same storage
        again = cls.from_ranges(*got)
        assert again.nbytes == x.nbytes or name in ("scatterlist", "page_list", "pfn_run")


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.integers(0, 1 << 40), st.integers(1, 1 << 22)), min_size=1,
                max_size=50), st.sampled_from([0xFFFF, 0xFFFFF, U64_MAX]),
       st.sampled_from([4096, SZ_64K, 1 << 20]))
def test_property_segments_respect_limits(pairs, boundary, max_seg):
    addr = np.array([a for a, _ in pairs], U) << U(12)
    length = np.array([n for _, n in pairs], U)
    try:
        x = LAYOUTS["phyr"].from_ranges(addr, length)
    except ValueError:
        return  # overlapping draw
    a, n = x.segments(max_seg, boundary)
    assert int(n.sum()) == int(length.sum())
    assert int(n.max()) <= max_seg
    if boundary != U64_MAX:
        assert np.all((a & U(~boundary & U64_MAX)) == ((a + n - U(1)) & U(~boundary & U64_MAX)))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(1, 1 << 10)), min_size=2,
                max_size=40), st.sampled_from([0, 1 << 40, (1 << 64) - (1 << 18)]))
def test_overlap_check_matches_pairwise_oracle(pairs, base):
    """check_ranges refuses exactly the lists in which two ranges share a byte, whichever of
    its paths (in order, bucketed, sorted) decides."""
    addr = np.array([base + a for a, _ in pairs], dtype=np.uint64)
    length = np.array([n for _, n in pairs], dtype=np.uint64)
    overlap = any(max(a1, a2) < min(a1 + n1, a2 + n2)
                  for i, (a1, n1) in enumerate(pairs) for (a2, n2) in pairs[i + 1:])
    if overlap:
        with pytest.raises(RangeError, match="overlap"):
            check_ranges(addr, length)
    else:
        check_ranges(addr, length)
