"""__finalise_sg's greedy cut of joinable segments at max_len: the vectorised cut gives what
the kernel's walk gives (one segment at a time: join while max_len - cur_len >= s_length)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from phyrlab.iommu.dma_iommu import _greedy_cut, _greedy_cut_per_segment


def _walk(length: list[int], groups: list[tuple[int, int]], max_len: int):
    starts, lens = [], []
    for a, b in groups:
        cur = None
        for i in range(a, b):
            if cur is not None and max_len - cur >= length[i]:
                cur += length[i]
                lens[-1] = cur
            else:
                starts.append(i)
                cur = length[i]
                lens.append(cur)
    return starts, lens


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=120), st.integers(40, 20000),
       st.lists(st.integers(0, 119), max_size=10))
def test_greedy_cut_is_the_kernel_walk(length, max_len, cuts):
    n = len(length)
    bounds = sorted({0, n, *(c for c in cuts if c < n)})
    groups = list(zip(bounds[:-1], bounds[1:], strict=True))
    arr = np.array(length, dtype=np.uint64)
    g = np.array(groups, dtype=np.int64)
    ws, wl = _walk(length, groups, max_len)
    s, ln = _greedy_cut(arr, g[:, 0], g[:, 1], max_len)
    assert (s.tolist(), ln.tolist()) == (ws, wl)
    cum = np.cumsum(arr)
    s, ln = _greedy_cut_per_segment(cum, cum - arr, g[:, 0], g[:, 1], max_len)
    assert (s.tolist(), ln.tolist()) == (ws, wl)
