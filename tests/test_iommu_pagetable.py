"""PageTable: formats, iommu_pgsize() page-size choice, table memory, unmap, errors, unwinding.

Expected numbers are worked by hand from the kernel's algorithms (iommu_pgsize, the radix
walk of io-pgtable-arm / VT-d, iommu_iotlb_gather_add_page), not taken from the model.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phyrlab import faults
from phyrlab.errors import DmaMappingError
from phyrlab.iommu import FORMATS, PageTable
from phyrlab.iommu.iotlb import IommuIotlbGather, iommu_iotlb_gather_add_page
from phyrlab.units import SZ_1G, SZ_2M, SZ_4K, SZ_16K, SZ_32M, SZ_64K, SZ_512M

K4, M2 = SZ_4K, SZ_2M


def state(pt: PageTable):
    i, p, s = pt.leaves()
    st_ = pt.stats
    return (i.tolist(), p.tolist(), s.tolist(), st_.table_pages, st_.table_bytes,
            st_.mapped_bytes, pt._nvalid[pt._tlevel >= 0].tolist())


# ---- formats as data ----------------------------------------------------------------------
def test_format_names_and_geometry():
    assert list(FORMATS) == ["x86_64", "x86_64_5lvl", "arm_lpae_4k", "arm_lpae_16k",
                             "arm_lpae_64k", "single_level_4k"]
    f = FORMATS
    assert (f["x86_64"].levels, f["x86_64"].ias) == (4, 48)
    assert (f["x86_64_5lvl"].levels, f["x86_64_5lvl"].ias) == (5, 57)
    assert f["x86_64"].pgsize_bitmap == SZ_4K | SZ_2M | SZ_1G
    assert f["arm_lpae_4k"].pgsize_bitmap == SZ_4K | SZ_2M | SZ_1G
    # arm_lpae_restrict_pgsizes(): 16K -> 16K|32M, 64K -> 64K|512M
    assert f["arm_lpae_16k"].pgsize_bitmap == SZ_16K | SZ_32M
    assert f["arm_lpae_64k"].pgsize_bitmap == SZ_64K | SZ_512M
    # levels = DIV_ROUND_UP(ias - pg_shift, pg_shift - 3); pgd = 8 << pgd_bits
    assert (f["arm_lpae_16k"].levels, f["arm_lpae_16k"].table_bytes(0)) == (4, 16)
    assert (f["arm_lpae_64k"].levels, f["arm_lpae_64k"].table_bytes(0)) == (3, 512)
    assert f["arm_lpae_4k"].table_bytes(0) == 4096
    assert f["arm_lpae_64k"].table_bytes(1) == SZ_64K
    assert f["single_level_4k"].levels == 1 and f["single_level_4k"].pgsize_bitmap == SZ_4K


def test_unknown_format_names_value():
    with pytest.raises(ValueError, match="'x86_65'"):
        PageTable("x86_65")


# ---- iommu_pgsize(): page-size choice ------------------------------------------------------
def test_pgsize_choice_head_body_tail():
    # [0x1000, 0x40004000): 4K up to 2M (511), 2M up to 1G (511), no 1G fits, 4K tail (4)
    pt = PageTable("x86_64")
    pt.map(0x1000, 0x1000, SZ_1G + 0x3000)
    i, p, s = pt.leaves()
    assert np.array_equal(i, p)
    assert int((s == K4).sum()) == 511 + 4 and int((s == M2).sum()) == 511
    assert pt.stats.leaves == {K4: 515, M2: 511}
    # root + 1 PDPT + 2 PD (1G regions 0 and 1) + 2 PT (first and last 2M) = 6 tables
    assert pt.stats.table_pages == 6 and pt.stats.table_bytes == 6 * 4096
    assert pt.stats.pte_writes == 515 + 511 + 5


def test_pgsize_1g_leaf_needs_two_tables():
    pt = PageTable("x86_64")
    pt.map(SZ_1G, 3 * SZ_1G, SZ_1G)
    assert pt.stats.leaves == {SZ_1G: 1}
    assert (pt.stats.table_pages, pt.stats.table_bytes, pt.stats.pte_writes) == (2, 8192, 2)
    assert pt.iova_to_phys(SZ_1G + 0x12345) == 3 * SZ_1G + 0x12345


def test_pgsize_iova_paddr_offset_forces_small_pages():
    # iova ^ paddr is not 2M-aligned: iommu_pgsize never finds both 2M-aligned
    pt = PageTable("x86_64")
    pt.map(0x200000, 0x201000, 4 * M2)
    assert pt.stats.leaves == {K4: 2048}
    # root, PDPT, PD, 4 PT
    assert pt.stats.table_pages == 7
    assert pt.stats.pte_writes == 2048 + 6


def test_table_memory_4mib_of_4k_pages():
    pt = PageTable("x86_64")
    pt.map(0, 0x7000, 4 << 20)
    assert (pt.stats.table_pages, pt.stats.table_bytes) == (5, 20480)
    assert pt.stats.pte_writes == 1024 + 4


def test_arm_16k_and_64k_blocks():
    pt = PageTable("arm_lpae_16k")
    pt.map(SZ_32M, 5 * SZ_32M, 2 * SZ_32M)
    assert pt.stats.leaves == {SZ_32M: 2}
    assert (pt.stats.table_pages, pt.stats.table_bytes) == (3, 16 + 2 * SZ_16K)
    pt = PageTable("arm_lpae_64k")
    pt.map(SZ_512M, SZ_512M * 3, SZ_512M + SZ_64K)
    assert pt.stats.leaves == {SZ_512M: 1, SZ_64K: 1}
    # root (512 B) + L1 (64K) + one L2 (64K) for the 64K tail
    assert (pt.stats.table_pages, pt.stats.table_bytes) == (3, 512 + 2 * SZ_64K)
    assert pt.iova_to_phys(2 * SZ_512M + 5) == 4 * SZ_512M + 5


def test_single_level_table():
    pt = PageTable("single_level_4k")
    assert pt.stats.table_bytes == 8 << 20
    pt.map(0x5000, 0x9000, 0x2000)
    assert pt.stats.pte_writes == 2 and pt.stats.table_pages == 1
    assert pt.iova_to_phys(0x6abc) == 0xaabc
    with pytest.raises(ValueError, match="32-bit"):
        pt.map(1 << 32, 0, K4)


def test_iova_to_phys_unmapped_is_zero():
    pt = PageTable("x86_64_5lvl")
    assert pt.iova_to_phys(0x1000) == 0
    pt.map(1 << 50, 0x40000000, M2)
    assert pt.iova_to_phys((1 << 50) + 0x1234) == 0x40001234
    assert pt.iova_to_phys((1 << 50) + M2) == 0
    assert pt.iova_to_phys(1 << 60) == 0


# ---- unmap, gather, freeing -----------------------------------------------------------------
def test_unmap_frees_tables_and_counts_gather_syncs():
    pt = PageTable("x86_64")
    pt.map(0x1000, 0x1000, SZ_1G + 0x3000)
    g = IommuIotlbGather()
    assert pt.unmap(0x1000, SZ_1G + 0x3000, g) == SZ_1G + 0x3000
    # 4K run, then 2M run (size change: sync), then 4K run (size change: sync); one pending
    assert g.syncs == 2 and g.pgsize == K4
    assert (g.start, g.end) == (0x40000000, 0x40003fff)
    pt.iotlb_sync(g)
    assert pt.stats.iotlb_syncs == 3 and pt.stats.iotlb_pages_gathered == 1026
    assert (pt.stats.table_pages, pt.stats.table_bytes, pt.stats.mapped_bytes) == (1, 4096, 0)
    assert pt.stats.table_pages_freed == 5


def test_gather_runs_match_per_page_add_page():
    pt = PageTable("x86_64")
    pt.map(0x3000, 0x3000, 3 * M2 + 0x5000)
    pt.map(0x10000000, 0x20000000, M2)
    pt.map(0x40000000, 0x40001000, 2 * M2 + 0x3000)      # two whole PT tables + a partial
    i, _, s = pt.leaves()
    ref = IommuIotlbGather()
    syncs = []
    for a, b in zip(i.tolist(), s.tolist(), strict=True):
        iommu_iotlb_gather_add_page(ref, a, b, lambda g: (syncs.append(1), g.reset()))
    g = IommuIotlbGather()
    pt.unmap(0x3000, 3 * M2 + 0x5000, g)
    pt.unmap(0x10000000, M2, g)
    pt.unmap(0x40000000, 2 * M2 + 0x3000, g)
    assert g.syncs == len(syncs)
    assert (g.start, g.end, g.pgsize) == (ref.start, ref.end, ref.pgsize)


def test_queued_gather_skips_add_page():
    pt = PageTable("x86_64")
    pt.map(0, 0, 4 * K4)
    g = IommuIotlbGather(queued=True)
    pt.unmap(0, 4 * K4, g)
    assert g.pgsize == 0 and pt.stats.iotlb_pages_gathered == 0


# ---- bad input leaves the table exactly as it was -------------------------------------------
@pytest.mark.parametrize("args, match", [
    ((0x1800, 0x2000, K4), "iova 0x1800"),
    ((0x2000, 0x2800, K4), "pa 0x2800"),
    ((0x2000, 0x3000, 0x1800), "size 0x1800"),
    ((1 << 48, 0, K4), "48-bit"),
    (((1 << 48) - K4, 0, 2 * K4), "48-bit"),
    ((0x200000, 0x5000, K4), "already mapped"),
    ((0x1ff000, 0x5000, 2 * K4), "already mapped"),
    ((0x400000, 0x400000, M2), "already mapped"),
])
def test_map_errors_name_value_and_change_nothing(args, match):
    pt = PageTable("x86_64")
    pt.map(0x200000, 0x600000, M2)          # a 2M leaf
    pt.map(0x400000, 0x800000, K4)          # a 4K leaf under a PT at 4M
    before = state(pt)
    with pytest.raises(ValueError, match=match):
        pt.map(*args)
    assert state(pt) == before


@pytest.mark.parametrize("args, match", [
    ((0x800000, K4), "not mapped"),
    ((0x400000, 2 * K4), "not mapped"),
    ((0x200000, K4), "split"),
    ((0x1000, 0x800), "size 0x800"),
])
def test_unmap_errors_change_nothing(args, match):
    pt = PageTable("x86_64")
    pt.map(0x200000, 0x600000, M2)
    pt.map(0x400000, 0x800000, K4)
    before = state(pt)
    with pytest.raises(ValueError, match=match):
        pt.unmap(*args)
    assert state(pt) == before


@pytest.mark.parametrize("nth", [1, 2])
def test_pt_alloc_failure_unwinds(nth):
    """The 1st or 2nd table-page allocation fails: -ENOMEM and the tree as before."""
    pt = PageTable("x86_64")
    pt.map(0, 0, K4)
    before = state(pt)
    writes = pt.stats.pte_writes
    with faults.inject("pt_alloc", nth=nth):
        with pytest.raises(DmaMappingError) as e:
            pt.map(SZ_1G * 7, 0, M2 + K4)      # needs a new PD and a new PT
    assert e.value.errno == "ENOMEM"
    assert state(pt) == before and pt.stats.pte_writes == writes


def test_map_runs_rejects_overlap():
    pt = PageTable("x86_64")
    with pytest.raises(ValueError, match="overlap"):
        pt.map_runs([0, 0x1000], [0, 0x9000], [0x2000, 0x1000])
    assert pt.stats.mapped_bytes == 0


# ---- properties ---------------------------------------------------------------------------
@st.composite
def runs(draw):
    fmt = draw(st.sampled_from(list(FORMATS)))
    f = FORMATS[fmt]
    g = f.granule
    n = draw(st.integers(1, 6))
    top = min(f.ias, 40) - f.granule_shift
    starts = sorted(set(draw(st.lists(st.integers(0, (1 << top) - 1), min_size=n,
                                      max_size=n))))
    out = []
    for a, b in zip(starts, starts[1:] + [1 << top], strict=True):
        room = b - a
        npages = draw(st.integers(1, max(1, min(room, 3000))))
        big = draw(st.sampled_from([0, 0, 1]))
        if big and room > npages + (SZ_1G // g) * 2:
            npages += SZ_1G // g
        npages = min(npages, room)
        pshift = draw(st.sampled_from([0, 0, 1, 7]))
        paddr_pfn = draw(st.integers(0, 1 << 20)) << pshift
        if draw(st.booleans()):
            paddr_pfn = a
        out.append((a * g, paddr_pfn * g, npages * g))
    return fmt, out


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(runs())
def test_every_byte_translates_and_unmap_restores_empty_tree(case):
    fmt, rs = case
    pt = PageTable(fmt)
    root_bytes = pt.stats.table_bytes
    if len(rs) > 1 and rs[0][0] % 2 == 0:
        pt.map_runs(*[np.array(c, dtype=np.uint64) for c in zip(*rs, strict=True)])
    else:
        for r in rs:
            pt.map(*r)
    rng = np.random.default_rng(0)
    for iova, paddr, size in rs:
        off = np.concatenate([[0, size - 1], rng.integers(0, size, 64)]).astype(np.uint64)
        got = pt.iova_to_phys_many(np.uint64(iova) + off)
        assert np.array_equal(got, np.uint64(paddr) + off)
    i, p, s = pt.leaves()
    assert int(s.sum()) == sum(r[2] for r in rs) == pt.stats.mapped_bytes
    # leaves obey iommu_pgsize: aligned iova and paddr, size in the bitmap
    assert np.all((i % s) == 0) and np.all((p % s) == 0)
    assert np.all((s & np.uint64(FORMATS[fmt].pgsize_bitmap)) == s)
    for iova, _, size in rs:
        pt.unmap(iova, size)
    assert pt.stats.table_pages == 1 and pt.stats.table_bytes == root_bytes
    assert pt.stats.mapped_bytes == 0 and pt.leaves()[0].size == 0
    assert int(pt._nvalid[0]) == 0 and not pt._pte.any()
