"""sg_alloc_table_from_pages against the kernel's own test (tools/testing/scatterlist/main.c)."""

import numpy as np
import pytest

import phyrlab as pl
from phyrlab.layouts.scatterlist import (
    SCATTERLIST_MAX_SEGMENT,
    SG_CHAIN,
    SG_END,
    SG_MAX_SINGLE_ALLOC,
    sg_chunks,
    sg_kmalloc_bytes,
)

P = pl.PAGE_SIZE
SGMAX = SCATTERLIST_MAX_SEGMENT

# (alloc_ret, pfns, size, max_seg, expected nents): every row of the kernel's table
KERNEL_TESTS = [
    ("EINVAL", [0], P, 0, 1),
    (0, [0], P, P + 1, 1),
    (0, [0], P, SGMAX + 1, 1),
    (0, [0], P, SGMAX, 1),
    (0, [0], 1, SGMAX, 1),
    (0, [0, 1], 2 * P, SGMAX, 1),
    (0, [1, 0], 2 * P, SGMAX, 2),
    (0, [0, 1, 2], 3 * P, SGMAX, 1),
    (0, [0, 2, 1], 3 * P, SGMAX, 3),
    (0, [0, 1, 3], 3 * P, SGMAX, 2),
    (0, [1, 2, 4], 3 * P, SGMAX, 2),
    (0, [1, 3, 4], 3 * P, SGMAX, 2),
    (0, [0, 1, 3, 4], 4 * P, SGMAX, 2),
    (0, [0, 1, 3, 4, 5], 5 * P, SGMAX, 2),
    (0, [0, 1, 3, 4, 6], 5 * P, SGMAX, 3),
    (0, [0, 1, 2, 3, 4], 5 * P, SGMAX, 1),
    (0, [0, 1, 2, 3, 4], 5 * P, 2 * P, 3),
    (0, [0, 1, 2, 3, 4, 5], 6 * P, 2 * P, 3),
    (0, [0, 2, 3, 4, 5, 6], 6 * P, 2 * P, 4),
    (0, [0, 1, 3, 4, 5, 6], 6 * P, 2 * P, 3),
]


@pytest.mark.parametrize("ret,pfns,size,max_seg,nents", KERNEL_TESTS)
def test_kernel_worked_examples(ret, pfns, size, max_seg, nents):
    if ret == "EINVAL":
        with pytest.raises(ValueError, match="EINVAL"):
            pl.sg_alloc_table_from_pages(np.array(pfns), 0, size, max_seg)
        return
    sgt = pl.sg_alloc_table_from_pages(np.array(pfns), 0, size, max_seg)
    assert sgt.nents == nents
    assert sgt.orig_nents == nents
    assert sgt.total_length == size


def test_entries_hold_the_pages_and_lengths():
    # PFNs 0,1 | 3,4,5,6 with max_seg 2 pages -> [0-1], [3-4], [5-6]
    sgt = pl.sg_alloc_table_from_pages(np.array([0, 1, 3, 4, 5, 6]), 0, 6 * P, 2 * P)
    addr, length = sgt._entry_ranges()
    assert addr.tolist() == [0, 3 * P, 5 * P]
    assert length.tolist() == [2 * P] * 3
    # ranges() merges what max_segment split: 3..6 is one physical range
    assert [a.tolist() for a in sgt.ranges()] == [[0, 3 * P], [2 * P, 4 * P]]


def test_offset_and_short_size():
    sgt = pl.sg_alloc_table_from_pages(np.array([7, 8]), 100, 2 * P - 300)
    addr, length = sgt._entry_ranges()
    assert addr.tolist() == [7 * P + 100]
    assert length.tolist() == [2 * P - 300]


def test_max_segment_is_rounded_down_to_a_page():
    a = pl.sg_alloc_table_from_pages(np.arange(8), 0, 8 * P, 3 * P - 1)  # -> 2 pages
    assert a.nents == 4


def test_chaining_matches_sg_alloc_table():
    # 128 entries fit one chunk; 129 need a chain: 127 + link, then 2
    assert sg_chunks(128) == [128]
    assert sg_chunks(129) == [128, 2]
    assert sg_chunks(255) == [128, 128]
    assert sg_chunks(256) == [128, 128, 2]
    pfns = np.arange(0, 2 * 300, 2)  # 300 non-contiguous pages -> 300 entries
    sgt = pl.sg_alloc_table_from_pages(pfns)
    assert sgt.nents == 300
    assert sgt.chunks == [128, 128, 46]
    assert len(sgt) == 302  # two chain entries
    assert sgt.nbytes == 16 + 302 * 32
    links = sgt.entries["page_link"]
    assert np.flatnonzero(links & SG_CHAIN).tolist() == [127, 255]
    assert np.flatnonzero(links & SG_END).tolist() == [301]
    assert sgt.alloc_bytes == 16 + 4096 + 4096 + 2048  # 46 * 32 = 1472 -> kmalloc-2k


def test_struct_sizes():
    assert pl.SgTable.entry_size == 32
    assert SG_MAX_SINGLE_ALLOC == 128
    assert SCATTERLIST_MAX_SEGMENT == 0xFFFFF000
    assert sg_kmalloc_bytes(128) == 4096
    assert sg_kmalloc_bytes(3) == 96


def test_bad_input_names_the_value():
    with pytest.raises(ValueError, match="offset 4096"):
        pl.sg_alloc_table_from_pages(np.array([0]), 4096, 1)
    with pytest.raises(ValueError, match="dtype float64"):
        pl.sg_alloc_table_from_pages(np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"pfns\[1\] = -3"):
        pl.sg_alloc_table_from_pages(np.array([0, -3]))
    with pytest.raises(ValueError, match="size 8193"):
        pl.sg_alloc_table_from_pages(np.array([0, 1]), 0, 8193)


def test_sg_chunks_closed_form_is_the_kernel_loop():
    """__sg_alloc_table: while (left > SG_MAX_SINGLE_ALLOC) take a full chunk whose last
    entry is the chain link (left -= SG_MAX_SINGLE_ALLOC - 1); the rest is the last chunk."""
    from phyrlab.layouts.scatterlist import SG_MAX_SINGLE_ALLOC as MAX

    for n in [*range(0, 1200), 10**6 - 1, 10**6, 10**6 + 127]:
        chunks, left = [], n
        while n > 0 and left > MAX:
            chunks.append(MAX)
            left -= MAX - 1
        if n > 0:
            chunks.append(left)
        assert sg_chunks(n) == chunks, n
