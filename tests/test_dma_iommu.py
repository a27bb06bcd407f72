"""dma-iommu: IOVA policy, map_phys, map_sg padding and merging, unwinding on failure."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phyrlab import faults
from phyrlab.errors import DmaMappingError, RangeError
from phyrlab.iommu import (
    IommuDmaDomain,
    iommu_dma_alloc_iova,
    iommu_dma_free_iova,
    iommu_dma_map_phys,
    iommu_dma_map_sg,
    iommu_dma_unmap_phys,
    iommu_dma_unmap_sg,
)
from phyrlab.units import DMA_BIT_MASK, SZ_64K, U64_MAX

M64, M32 = DMA_BIT_MASK(64), DMA_BIT_MASK(32)


def test_pci_devices_try_below_4g_first():
    d = IommuDmaDomain("x86_64")
    assert iommu_dma_alloc_iova(d, 0x1000, M64, dev_is_pci=True) == 0xFFFFF000
    # non-PCI: straight to the top of the 48-bit aperture
    assert iommu_dma_alloc_iova(d, 0x1000, M64, dev_is_pci=False) == (1 << 48) - 0x1000
    # below 32 granules the size is rounded to a power of two: 5 pages -> 8, aligned to 8
    a = iommu_dma_alloc_iova(d, 5 * 0x1000, M32)
    assert a % 0x8000 == 0
    lo, hi = d.iovad.find_iova(a >> 12)
    assert hi - lo + 1 == 8
    iommu_dma_free_iova(d, a, 5 * 0x1000)
    assert (a >> 12) in d.iovad.cached_pfns()


def test_map_phys_keeps_offset_and_unmap_restores():
    d = IommuDmaDomain("x86_64")
    before = d.snapshot()
    dma = iommu_dma_map_phys(d, 0x12345678, 0x3000, M64)
    # 0x678 + 0x3000 -> 4 pages, rounded to 4, top-down below 4 GiB
    assert dma == 0xFFFFC000 + 0x678
    assert d.pt.iova_to_phys(dma) == 0x12345678
    assert d.pt.iova_to_phys(dma + 0x2FFF) == 0x12345678 + 0x2FFF
    iommu_dma_unmap_phys(d, dma, 0x3000)
    assert d.snapshot() == before
    with pytest.raises(ValueError, match=hex(dma)):
        iommu_dma_unmap_phys(d, dma, 0x3000)


def test_map_sg_padding_and_finalise_worked_example():
    # granule 4K, boundary 64K, max_seg 64K:
    # seg0 0x800 @ off 0x800 -> 4K; seg1, seg2 4K; seg3 64K would cross 64K at IOVA offset
    # 0x3000, so seg2 is padded by 0xd000 and seg3 starts at IOVA offset 0x10000.
    d = IommuDmaDomain("x86_64")
    before = d.snapshot()
    addr = np.array([0x10000800, 0x20000000, 0x20001000, 0x30000000], np.uint64)
    ln = np.array([0x800, 0x1000, 0x1000, 0x10000], np.uint64)
    da, dl = iommu_dma_map_sg(d, addr, ln, max_seg_size=SZ_64K, seg_boundary_mask=0xFFFF,
                              dma_limit=M32)
    # 0x20000 bytes of IOVA (32 pages, 32-aligned) at the top of the 32-bit space
    base = 0x100000000 - 0x20000
    assert da.tolist() == [base + 0x800, base + 0x10000]
    assert dl.tolist() == [0x2800, 0x10000]          # seg0..2 merged, seg3 alone
    assert addr.tolist()[0] == 0x10000800            # CPU list untouched
    # the padding maps the pages after seg2, as the kernel's prev->length += pad_len does
    assert d.pt.iova_to_phys(base + 0x3000) == 0x20002000
    assert d.pt.stats.mapped_bytes == 0x20000
    iommu_dma_unmap_sg(d, da, dl)
    assert d.snapshot() == before


def test_map_sg_max_seg_size_splits_merges():
    d = IommuDmaDomain("x86_64")
    addr = np.arange(8, dtype=np.uint64) * 0x10000 + 0x40000000
    ln = np.full(8, 0x1000, np.uint64)
    da, dl = iommu_dma_map_sg(d, addr, ln, max_seg_size=0x3000, seg_boundary_mask=U64_MAX,
                              dma_limit=M64)
    assert dl.tolist() == [0x3000, 0x3000, 0x2000]
    assert np.all(np.diff(da.astype(np.int64)) == 0x3000)


def test_map_sg_offset_segment_starts_new_dma_segment():
    d = IommuDmaDomain("x86_64")
    addr = np.array([0x1000, 0x5000, 0x9100], np.uint64)
    ln = np.array([0x1000, 0x800, 0x100], np.uint64)
    da, dl = iommu_dma_map_sg(d, addr, ln, max_seg_size=1 << 20, seg_boundary_mask=U64_MAX,
                              dma_limit=M64)
    # seg1 ends short of its granule (cur_len reset); seg2 has an offset: three segments
    assert dl.tolist() == [0x1800, 0x100]
    assert int(da[1]) & 0xFFF == 0x100


@pytest.mark.parametrize("point, times", [("pt_alloc", 1), ("iova_alloc", 3)])
@pytest.mark.parametrize("strict", [True, False])
def test_map_sg_failure_unwinds_everything(point, times, strict):
    d = IommuDmaDomain("x86_64", strict=strict)
    keep = iommu_dma_map_phys(d, 0x1000, 0x1000, M64, dev_is_pci=False)  # far away
    before = d.snapshot()
    addr = np.array([0x100000000, 0x200000000, 0x300000000], np.uint64)
    ln = np.array([0x200000, 0x3000, 0x1000], np.uint64)
    with faults.inject(point, nth=1, times=times):
        with pytest.raises(DmaMappingError) as e:
            iommu_dma_map_sg(d, addr, ln, max_seg_size=1 << 30, seg_boundary_mask=U64_MAX,
                             dma_limit=M64)
    assert e.value.errno == "ENOMEM" and str(e.value).startswith("-ENOMEM")
    assert d.snapshot() == before
    assert d.pt.iova_to_phys(keep) == 0x1000


def test_iova_exhaustion_is_enomem():
    d = IommuDmaDomain("x86_64", aperture_end=0x7FFFF)     # 128 pages above pfn 1
    got = [iommu_dma_map_phys(d, 0, 0x10000, M64) for _ in range(7)]
    assert len(set(got)) == 7
    before = d.snapshot()
    with pytest.raises(DmaMappingError, match="ENOMEM"):
        iommu_dma_map_phys(d, 0, 0x10000, M64)
    assert d.snapshot() == before


def test_bad_input_names_value():
    d = IommuDmaDomain("arm_lpae_64k")
    with pytest.raises(RangeError, match="entry 1 has length 0"):
        iommu_dma_map_sg(d, [0, 0x10000], [0x10, 0], max_seg_size=SZ_64K,
                         seg_boundary_mask=U64_MAX, dma_limit=M64)
    with pytest.raises(RangeError, match="entry 0 is 0x20000 bytes"):
        iommu_dma_map_sg(d, [0], [0x20000], max_seg_size=SZ_64K, seg_boundary_mask=U64_MAX,
                         dma_limit=M64)
    with pytest.raises(ValueError, match="0x1234"):
        iommu_dma_map_sg(d, [0], [0x10], max_seg_size=SZ_64K, seg_boundary_mask=0x1234,
                         dma_limit=M64)
    with pytest.raises(ValueError, match="'nope'"):
        IommuDmaDomain("nope")
    assert d.snapshot()["iova_live"] == ()


@st.composite
def sg_lists(draw):
    n = draw(st.integers(1, 40))
    fmt = draw(st.sampled_from(["x86_64", "arm_lpae_16k", "arm_lpae_64k", "single_level_4k"]))
    boundary = draw(st.sampled_from([1 << 16, 1 << 20, 1 << 32, 1 << 64]))
    max_seg = draw(st.sampled_from([1 << 12, 1 << 16, 1 << 20, 1 << 31]))
    max_seg = min(max_seg, boundary // 2)
    addr, length = [], []
    for _ in range(n):
        contiguous = addr and draw(st.booleans())
        a = addr[-1] + length[-1] if contiguous else draw(st.integers(0, 1 << 30)) * 256
        ln = draw(st.integers(1, max(1, max_seg // 2)))
        addr.append(a)
        length.append(ln)
    return fmt, np.array(addr, np.uint64), np.array(length, np.uint64), boundary - 1, max_seg


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(sg_lists(), st.booleans())
def test_map_sg_properties(case, strict):
    fmt, addr, length, mask, max_seg = case
    d = IommuDmaDomain(fmt, strict=strict)
    before = d.snapshot()
    a0, l0 = addr.copy(), length.copy()
    limit = M32 if fmt == "single_level_4k" else M64
    da, dl = iommu_dma_map_sg(d, addr, length, max_seg_size=max_seg, seg_boundary_mask=mask,
                              dma_limit=limit)
    assert np.array_equal(addr, a0) and np.array_equal(length, l0)
    assert int(dl.sum()) == int(length.sum())
    assert np.all(dl <= np.uint64(max_seg))
    end = da + dl - np.uint64(1)
    assert np.all((da & ~np.uint64(mask)) == (end & ~np.uint64(mask)))   # no boundary crossed
    assert np.all(np.diff(da.astype(object)) > 0)
    # walk the DMA list and the CPU list together: every CPU byte at its DMA address
    cpu_off = np.concatenate([[0], np.cumsum(length)[:-1]]).astype(np.uint64)
    dma_off = np.concatenate([[0], np.cumsum(dl)[:-1]]).astype(np.uint64)
    for probe in (np.uint64(0), length - np.uint64(1)):
        pos = cpu_off + probe                       # byte index in the whole transfer
        seg = np.searchsorted(dma_off, pos, side="right") - 1
        dma = da[seg] + (pos - dma_off[seg])
        assert np.array_equal(d.pt.iova_to_phys_many(dma), addr + probe)
    iommu_dma_unmap_sg(d, da, dl)
    d.advance(10**9)
    assert d.snapshot() == before


# ---- experiments (the notebook's figures) --------------------------------------------------
def test_experiments_pagetable_cost_hand_computed():
    from phyrlab.iommu.experiments import pagetable_cost
    one_gib = (np.array([0x40000000], np.uint64), np.array([1 << 30], np.uint64))
    r = pagetable_cost("arm_lpae_64k", one_gib)
    # two 512M blocks in one L1 table: pgd 512 B + 64 KiB, one link + two leaves written
    assert r["leaf_mix"] == {1 << 29: 2}
    assert (r["table_pages"], r["table_bytes"], r["pte_writes"]) == (2, 512 + SZ_64K, 3)
    pages = (np.arange(512, dtype=np.uint64) * np.uint64(0x2000), np.full(512, 0x1000, np.uint64))
    r = pagetable_cost("x86_64", pages)
    # 512 scattered 4K pages: one 2 MiB IOVA run of 4K PTEs -> root, PDPT, PD, 1 PT
    assert r["leaf_mix"] == {0x1000: 512} and r["table_pages"] == 4
    assert r["pte_writes_per_mib"] == (512 + 3) / 2
    assert r["iotlb"]["flushes"] == 1


def test_experiments_iotlb_and_churn_are_seeded():
    from phyrlab.iommu.experiments import iotlb_cost, iova_churn
    rs = (np.array([0x100000, 0x900000], np.uint64), np.array([0x1000, 0x3000], np.uint64))
    s = iotlb_cost("x86_64", rs, strict=True, repeats=50)
    lz = iotlb_cost("x86_64", rs, strict=False, repeats=50, fq_size=16)
    assert s["flushes_per_unmap"] == 1.0 and s["stale"]["max_ns"] == 0
    assert lz["flushes"] == 100 // 15 + 1 and lz["stale"]["max_ns"] > 0
    a = iova_churn(n_ops=1500, seed=3, sample_every=100)
    b = iova_churn(n_ops=1500, seed=3, sample_every=100)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert a["step"].size == 16 and np.all(a["largest_free"] > 0)
