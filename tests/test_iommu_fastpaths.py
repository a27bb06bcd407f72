"""The vectorised fast paths of the page table and iommu_dma_map_sg against per-entry
transcriptions of the kernel loops (drivers/iommu/iommu.c ``iommu_pgsize``/``__iommu_map``,
drivers/iommu/dma-iommu.c ``iommu_dma_map_sg`` padding loop and ``__finalise_sg``)."""

from __future__ import annotations

import numpy as np
import pytest

from phyrlab.iommu import PageTable
from phyrlab.iommu.dma_iommu import IommuDmaDomain, _finalise_sg, _sg_padding, iommu_dma_map_sg
from phyrlab.iommu.pagetable import _end_vs_next

U = np.uint64
K4, M2, G1 = 1 << 12, 1 << 21, 1 << 30


def kernel_leaves(runs, bitmap=K4 | M2 | G1):
    """``__iommu_map``: per run, the largest ``iommu_pgsize`` page each step."""
    out = []
    for iova, paddr, size in runs:
        while size:
            addr_merge = iova | paddr
            pgsizes = bitmap & ((1 << size.bit_length()) - 1)
            pgsizes &= (addr_merge & -addr_merge) * 2 - 1 if addr_merge else -1
            pg = 1 << (pgsizes.bit_length() - 1)
            out.append((iova, paddr, pg))
            iova, paddr, size = iova + pg, paddr + pg, size - pg
    return out


def kernel_padding(slen, mask):
    """The layout loop of ``iommu_dma_map_sg``: ``pad_len`` added to the previous segment."""
    pad, iova_len = [0] * len(slen), 0
    for i, s in enumerate(slen):
        pad_len = (mask - iova_len + 1) & mask
        if pad_len and pad_len < s - 1:
            pad[i] = pad_len
            iova_len += pad_len
        iova_len += s
    return pad


def kernel_finalise(pos, off, length, ilen, seg_mask, max_len):
    """``__finalise_sg``: DMA segments (start index, length)."""
    out, cur_len = [], 0
    for i in range(len(length)):
        s_len, s_off = length[i], off[i]
        if cur_len and not s_off and (pos[i] & seg_mask) and max_len - cur_len >= s_len:
            cur_len += s_len
            out[-1][1] += s_len
        else:
            out.append([i, s_len])
            cur_len = s_len
        if s_len + s_off < ilen[i]:
            cur_len = 0
    return [pos[i] + off[i] for i, _ in out], [n for _, n in out]


def test_one_small_leaf_per_run_and_mixed_runs_match_iommu_pgsize():
    # 1000 separate 4 KiB pages, then runs that hold 2 MiB leaves between 4 KiB heads/tails
    runs = [(G1 + i * K4, (1 << 32) + 2 * i * K4, K4) for i in range(1000)]
    base = 4 * G1
    runs += [(base, 8 * G1 + 0x3000, 3 * M2),                 # iova/pa disagree: 4 KiB only
             (base + 4 * M2 - 0x5000, 16 * G1 + 4 * M2 - 0x5000, 2 * M2 + 0x9000),
             (base + 8 * M2, 20 * G1 + K4, K4),
             (G1 * 6 - M2, 30 * G1 - M2, G1 + 2 * M2 + K4)]       # 2M head, 1G, 2M, 4K
    pt = PageTable("x86_64")
    i, p, s = (np.array(c, dtype=U) for c in zip(*runs, strict=True))
    assert pt.map_runs(i, p, s) == sum(r[2] for r in runs)
    want = sorted(kernel_leaves(runs))
    li, lp, ls = pt.leaves()
    assert list(zip(li.tolist(), lp.tolist(), ls.tolist(), strict=True)) == want
    assert pt.stats.pte_writes == len(want) + pt.stats.table_pages - 1


def test_padding_fast_check_matches_the_kernel_loop():
    rng = np.random.default_rng(7)
    for _ in range(200):
        n = int(rng.integers(1, 300))
        slen = (rng.integers(1, 9, n) * K4).astype(U)
        mask = (1 << int(rng.integers(15, 20))) - 1
        pad = _sg_padding(slen, mask)
        want = kernel_padding(slen.tolist(), mask)
        assert (pad.tolist() if pad is not None else [0] * n) == want


@pytest.mark.parametrize("equal", [True, False])
def test_finalise_sg_cuts_match_the_kernel_loop(equal):
    rng = np.random.default_rng(11)
    for _ in range(100):
        n = int(rng.integers(1, 400))
        length = (np.full(n, 3000) if equal else rng.integers(1, 3 * K4, n)).astype(U)
        off = np.where(rng.random(n) < 0.9, 0, rng.integers(0, K4, n)).astype(U)
        ilen = (length + off + U(K4 - 1)) & ~U(K4 - 1)
        pos = U(G1) + np.concatenate([[U(0)], np.cumsum(ilen[:-1], dtype=U)])
        mask = [(1 << 64) - 1, (1 << 16) - 1][int(rng.integers(2))]
        max_len = int(rng.choice([3 * K4, 1 << 16, 100_000]))
        got = _finalise_sg(pos, off, length, ilen, mask, max_len)
        want = kernel_finalise(pos.tolist(), off.tolist(), length.tolist(), ilen.tolist(),
                               mask, max_len)
        assert [g.tolist() for g in got] == [want[0], want[1]]


def test_map_sg_64k_segments_of_separate_pages():
    # 40 separate pages, max_seg_size 64 KiB: DMA segments of 16, 16 and 8 pages
    d = IommuDmaDomain()
    addr = (np.arange(40, dtype=U) * U(2 * K4)) + U(1 << 32)
    dma, dlen = iommu_dma_map_sg(d, addr, np.full(40, K4, dtype=U), max_seg_size=1 << 16,
                                 seg_boundary_mask=(1 << 64) - 1, dma_limit=(1 << 64) - 1)
    assert dlen.tolist() == [1 << 16, 1 << 16, 1 << 15]
    assert (dma[1:] - dma[:-1]).tolist() == [1 << 16, 1 << 16]
    assert d.pt.stats.leaves == {K4: 40}


def test_end_vs_next_blocks():
    rng = np.random.default_rng(3)
    lo = np.sort(rng.integers(0, 5000, 101)).astype(U)
    nb = rng.integers(0, 60, 101).astype(U)
    for block in (1, 7, 100, 1 << 20):
        for op in (np.equal, np.greater):
            assert np.array_equal(_end_vs_next(op, lo, nb, block=block),
                                  op((lo + nb)[:-1], lo[1:]))
