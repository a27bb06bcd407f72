"""The non-core dma_map_ops families, held to worked examples computed from the kernel code.

Each expected value below is derived by hand from the kernel function named next to it
(lib/iommu-helper.c, amd_gart_64.c, powerpc iommu.c/vio.c, sparc iommu.c, alpha
pci_iommu.c, arm dma-mapping.c, s390 pci_dma.c, swiotlb-xen.c, grant-dma-ops.c, VDUSE
iova_domain.c, ps3 system-bus.c, ibmebus.c, dummy.c), never from the model's own output.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phyrlab import faults
from phyrlab.dma.device import Device
from phyrlab.dma.iommu_table import (
    GART_EMERGENCY_PAGES,
    VIO_CMO_MIN_ENT,
    IommuTable,
    iommu_is_span_boundary,
    iommu_num_pages,
)
from phyrlab.dma.mapping import dma_map, dma_unmap
from phyrlab.dma.ops import OPS
from phyrlab.dma.xen import XEN_GRANT_DMA_ADDR_OFF
from phyrlab.errors import DmaMappingError
from phyrlab.units import DMA_BIT_MASK, PAGE_SIZE, U64_MAX

U = np.uint64
HIGH = 0x1_0000_0000  # above a 32-bit mask


def arr(*xs: int) -> np.ndarray:
    return np.array(xs, dtype=U)


def dev_for(name: str, **kw) -> Device:
    return Device(name, **kw)


def map_sg(dev: Device, addr, length, direction="bidirectional"):
    return dev.ops.map_sg(dev, arr(*addr), arr(*length), direction)


# ------------------------------------------------------------------ lib/iommu-helper.c
class TestIommuAreaAlloc:
    def test_first_fit_from_start(self):
        t = IommuTable(16)
        assert t.area_alloc(0, 3) == 0
        assert t.area_alloc(0, 3) == 3
        assert t.area_alloc(10, 2) == 10

    def test_last_entry_is_never_handed_out(self):
        # find_next_zero_area: end = index + nr; if (end >= size) return -1
        t = IommuTable(8)
        t.map[:4] = True
        assert t.area_alloc(0, 4) == -1  # 4 + 4 = 8 >= 8
        assert t.area_alloc(0, 3) == 4  # 4 + 3 = 7 < 8

    def test_boundary_with_shift(self):
        # iommu_is_span_boundary: ((shift + index) & (bs - 1)) + nr > bs
        assert iommu_is_span_boundary(2, 3, 0, 4)
        assert not iommu_is_span_boundary(0, 3, 1, 4)
        t = IommuTable(16)
        assert t.area_alloc(2, 3, boundary_size=4) == 4  # 2 and 3 span, 4 does not
        t2 = IommuTable(16)
        assert t2.area_alloc(0, 3, shift=2, boundary_size=4) == 2  # 0: 2+3>4, 1: 3+3>4

    def test_alignment_and_limit(self):
        t = IommuTable(64)
        assert t.area_alloc(1, 2, align_mask=3) == 4  # 4, 5 taken
        # limit 10: end must stay < 10; 0..4 hits 4, 6 + 5 = 11 >= 10
        assert t.area_alloc(0, 5, limit=10) == -1
        assert t.area_alloc(0, 4, limit=10) == 0
        assert t.area_alloc(0, 3, limit=10) == 6  # 6 + 3 = 9 < 10

    def test_matches_a_scalar_transcription_on_random_bitmaps(self):
        rng = np.random.default_rng(7)

        def kernel(m, size, start, nr, shift, bs, align):  # lib/iommu-helper.c, line by line
            while True:
                idx = start
                while idx < size and m[idx]:
                    idx += 1
                idx = (idx + align) & ~align
                end = idx + nr
                if end >= size:
                    return -1
                busy = [i for i in range(idx, end) if m[i]]
                if busy:
                    start = busy[0] + 1
                    continue
                if ((shift + idx) & (bs - 1)) + nr > bs:
                    start = idx + 1
                    continue
                return idx

        for _ in range(300):
            size = int(rng.integers(8, 200))
            t = IommuTable(size)
            t.map[:] = rng.random(size) < rng.random()
            ref = t.map.copy()
            start = int(rng.integers(0, size))
            nr = int(rng.integers(1, 9))
            shift = int(rng.integers(0, 16))
            bs = 1 << int(rng.integers(3, 7))
            align = (1 << int(rng.integers(0, 3))) - 1
            want = kernel(list(ref), size, start, nr, shift, bs, align) if nr <= bs else -1
            got = t.area_alloc(start, nr, None, shift, bs, align)
            assert got == want

    def test_iommu_num_pages(self):
        assert iommu_num_pages(0x1010, 4096, 4096) == 2
        assert iommu_num_pages(0x1000, 4096, 4096) == 1
        assert iommu_num_pages(0x1000, 4096, 8192) == 1
        assert iommu_num_pages(0x1000, 8192, 8192) == 2


# ------------------------------------------------------------------ x86 GART
class TestGart:
    BASE = 0xC000_0000

    def test_reachable_memory_is_not_mapped(self):
        dev = dev_for("gart_dma_ops")  # 32-bit mask
        dma, dlen, _ = map_sg(dev, [0x1000], [4096])
        assert dma.tolist() == [0x1000]
        assert dev.ops.stats.get("pte_writes", 0) == 0
        assert dev.ops.stats.get("iotlb_flushes", 0) == 0  # flush_gart: need_flush unset

    def test_unreachable_memory_goes_through_the_aperture(self):
        dev = dev_for("gart_dma_ops")
        d = dev.ops.map_phys(dev, HIGH + 0x10, 4096, "to_device")
        # first free entry after EMERGENCY_PAGES; 0x10 + 4096 spans two GATT entries
        assert d == self.BASE + GART_EMERGENCY_PAGES * PAGE_SIZE + 0x10
        assert dev.ops.stats["pte_writes"] == 2
        assert dev.ops.stats["iotlb_flushes"] == 1  # iommu_fullflush
        gpte = int(dev.ops.table.ptes[GART_EMERGENCY_PAGES])
        assert gpte & ~1 == HIGH
        dev.ops.unmap_phys(dev, d, 4096, "to_device")
        assert dev.ops.resources()["table_entries"] == 0

    def test_forced_maps_reachable_memory_too(self):
        dev = dev_for("gart_dma_ops", ops_params={"force": True})
        assert dev.ops.map_phys(dev, 0x2000, 100, "to_device") == \
            self.BASE + GART_EMERGENCY_PAGES * PAGE_SIZE

    def test_gart_cannot_remap_above_1tib(self):
        dev = dev_for("gart_dma_ops")
        with pytest.raises(DmaMappingError) as exc:
            dev.ops.map_phys(dev, (1 << 40) - 100, 4096, "to_device")  # GART_MAX_PHYS_ADDR
        assert exc.value.errno == "ENOMEM"
        assert dev.ops.resources()["table_entries"] == 0

    def test_no_merge_without_iommu_merge(self):
        dev = dev_for("gart_dma_ops")
        dma, dlen, _ = map_sg(dev, [HIGH, 2 * HIGH], [4096, 4096])
        e = GART_EMERGENCY_PAGES
        assert dma.tolist() == [self.BASE + e * 4096, self.BASE + (e + 1) * 4096]
        assert dlen.tolist() == [4096, 4096]

    def test_iommu_merge_joins_page_aligned_chunks(self):
        dev = dev_for("gart_dma_ops", ops_params={"iommu_merge": True})
        # 2nd joins (no offset, 1st ends on a page); 3rd has an offset: new chunk
        dma, dlen, _ = map_sg(dev, [HIGH, 2 * HIGH, 3 * HIGH + 0x80], [4096, 4096, 256])
        e = GART_EMERGENCY_PAGES
        assert dma.tolist() == [self.BASE + e * 4096, self.BASE + (e + 2) * 4096 + 0x80]
        assert dlen.tolist() == [8192, 256]
        assert dev.ops.stats["iotlb_flushes"] == 1  # one flush_gart per map_sg

    def test_merge_stops_at_max_seg_size(self):
        dev = dev_for("gart_dma_ops", max_seg_size=8192, ops_params={"iommu_merge": True})
        _, dlen, _ = map_sg(dev, [HIGH, 2 * HIGH, 3 * HIGH], [4096, 4096, 4096])
        assert dlen.tolist() == [8192, 4096]

    def test_overflow_retries_per_entry_then_fails_clean(self):
        dev = dev_for("gart_dma_ops", ops_params={"iommu_merge": True, "entries": 36})
        # 36 entries, 32 reserved, the last never handed out: 3 usable
        ops = dev.ops
        # merged (forced) needs 4 pages; the nonforce retry maps only the high entry
        dma, dlen, _ = map_sg(dev, [0x1000, HIGH, 2 * HIGH, 0x9000],
                              [4096, 4096, 4096, 4096])
        assert dma.tolist()[0] == 0x1000 and dma.tolist()[3] == 0x9000
        assert ops.resources()["table_entries"] == 2
        ops.unmap_sg(dev, dma, dlen, "bidirectional", None)
        before = ops.resources()
        with pytest.raises(DmaMappingError) as exc:
            map_sg(dev, [HIGH, 2 * HIGH, 3 * HIGH, 4 * HIGH], [4096] * 4)
        assert exc.value.errno == "ENOMEM"
        assert ops.resources() == before


# ------------------------------------------------------------------ powerpc TCE / VIO
class TestPowerpcTce:
    def test_entry_zero_reserved_and_handle_merges(self):
        dev = dev_for("dma_iommu_ops")
        dma, dlen, _ = map_sg(dev, [HIGH, 5 * HIGH, 3 * HIGH], [4096, 4096, 4096])
        # entries 1, 2, 3 via the sg handle: contiguous DMA, merged
        assert dma.tolist() == [0x1000] and dlen.tolist() == [12288]

    def test_max_seg_size_splits(self):
        dev = dev_for("dma_iommu_ops", max_seg_size=8192)
        dma, dlen, _ = map_sg(dev, [HIGH, 5 * HIGH, 3 * HIGH], [4096, 4096, 4096])
        assert dma.tolist() == [0x1000, 0x3000] and dlen.tolist() == [8192, 4096]

    def test_small_allocations_bump_hint_to_next_block(self):
        dev = dev_for("dma_iommu_ops")
        a = dev.ops.map_phys(dev, HIGH, 100, "to_device")
        b = dev.ops.map_phys(dev, HIGH, 100, "to_device")
        assert a == 0x1000  # entry 1
        assert b == 16 * 0x1000  # hint = ALIGN(2, it_blocksize 16)

    def test_large_allocations_use_the_large_pool(self):
        dev = dev_for("dma_iommu_ops")
        d = dev.ops.map_phys(dev, HIGH, 16 * 4096, "to_device")  # 16 pages > 15
        assert d == (65536 * 3 // 4) * 4096

    def test_bypass_when_the_mask_covers_the_list(self):
        dev = dev_for("dma_iommu_ops", dma_mask=DMA_BIT_MASK(64))
        dma, _, _ = map_sg(dev, [HIGH], [4096])
        assert dma.tolist() == [HIGH]

    def test_table_full_is_eio_and_unwinds(self):
        dev = dev_for("dma_iommu_ops", ops_params={"entries": 8})
        before = dev.ops.resources()
        with pytest.raises(DmaMappingError) as exc:
            map_sg(dev, [HIGH] * 8, [4096] * 8)
        assert exc.value.errno == "EIO"
        assert dev.ops.resources() == before


class TestVio:
    def test_entitlement_rounds_up_to_the_tce_page(self):
        dev = dev_for("vio_dma_mapping_ops")
        ops = dev.ops
        # VIO_CMO_MIN_ENT = 1562624 = 381.5 pages: rounded up to 382 pages it does not fit
        with pytest.raises(DmaMappingError) as exc:
            ops.map_phys(dev, HIGH, VIO_CMO_MIN_ENT, "to_device")
        assert exc.value.errno == "ENOMEM"
        assert ops.resources() == {"table_entries": 0, "valid_ptes": 0, "cmo_allocated": 0}
        d = ops.map_phys(dev, HIGH, 381 * 4096, "to_device")
        assert ops.cmo_allocated == 381 * 4096
        with pytest.raises(DmaMappingError):
            ops.map_phys(dev, HIGH, 4096, "to_device")  # 4096 > 2048 left
        ops.unmap_phys(dev, d, 381 * 4096, "to_device")
        assert ops.cmo_allocated == 0

    def test_map_sg_beyond_entitlement_is_eio(self):
        dev = dev_for("vio_dma_mapping_ops", ops_params={"entitlement": 8192})
        with pytest.raises(DmaMappingError) as exc:
            map_sg(dev, [HIGH, 2 * HIGH, 3 * HIGH], [4096] * 3)
        assert exc.value.errno == "EIO" and "-ENOMEM" in str(exc.value)

    def test_merging_gives_entitlement_back(self):
        # 2048 bytes ending a page + 2048 starting the next TCE: ppc merges them (dma_next);
        # vio reserved 2 * 4096 and gives back 8192 - roundup(4096) = 4096
        dev = dev_for("vio_dma_mapping_ops")
        dma, dlen, _ = map_sg(dev, [HIGH + 0x800, 2 * HIGH], [2048, 2048])
        assert dma.tolist() == [0x1800] and dlen.tolist() == [4096]
        assert dev.ops.cmo_allocated == 4096
        assert dev.ops.resources()["table_entries"] == 2
        assert dev.ops.stats["hypercalls"] == 2  # one H_PUT_TCE(_INDIRECT) per entry


# ------------------------------------------------------------------ sparc
class TestSparc:
    def test_8k_io_pages_break_dma_contiguity(self):
        dev = dev_for("sun4u_dma_ops")
        dma, dlen, _ = map_sg(dev, [HIGH, HIGH + 0x1000], [4096, 4096])
        # entry 0 -> IOPTE 0; entry 1 sits at offset 0x1000 of its 8K page -> IOPTE 1
        assert dma.tolist() == [0xC000_0000, 0xC000_3000]

    def test_merge_and_boundary(self):
        dev = dev_for("sun4u_dma_ops", seg_boundary_mask=0x3FFF)  # 16K = 2 IOPTEs
        dma, dlen, _ = map_sg(dev, [HIGH, 2 * HIGH, 3 * HIGH], [8192] * 3)
        assert dma.tolist() == [0xC000_0000, 0xC000_4000]
        assert dlen.tolist() == [16384, 8192]
        dev.ops.unmap_sg(dev, dma, dlen, "bidirectional", None)
        assert dev.ops.stats["iotlb_flushes"] == 2  # strbuf_flush per segment

    def test_sun4v_counts_hypercalls(self):
        dev = dev_for("sun4v_dma_ops")
        map_sg(dev, [HIGH], [1025 * 8192])
        assert dev.ops.stats["hypercalls"] == 2  # 1025 IOPTEs in batches of 1024


# ------------------------------------------------------------------ alpha
class TestAlpha:
    def test_direct_map_window(self):
        dev = dev_for("alpha_pci_ops")
        dma, dlen, _ = map_sg(dev, [0x2000, 0x4000], [8192, 8192])  # physically adjacent
        assert dma.tolist() == [0x4000_2000] and dlen.tolist() == [16384]
        assert dev.ops.stats.get("pte_writes", 0) == 0

    def test_sg_classify_physical_and_virtual_merges(self):
        dev = dev_for("alpha_pci_ops")
        base = 0x5000_0000  # above the 1 GiB window
        dma, dlen, _ = map_sg(
            dev, [base, base + 0x2000, base + 0x10_0000, base + 0x20_1000],
            [8192, 8192, 8192, 4096])
        # 0,1 adjacent (-1); 2 page aligned both sides (-2, virtual); 3 is 4K-aligned only
        assert dlen.tolist() == [24576, 4096]
        assert dma.tolist() == [0x0800_0000, 0x0800_0000 + 3 * 8192 + 0x1000]
        assert dev.ops.stats["pte_writes"] == 4


# ------------------------------------------------------------------ parisc ccio / sba
PARISC = ["ccio_ops", "sba_ops"]


def _in_one_window(dma, dlen, mask: int) -> bool:
    return all((int(a) & ~mask) == ((int(a) + int(n) - 1) & ~mask)
               for a, n in zip(dma, dlen, strict=True))


class TestParisc:
    """drivers/parisc/iommu-helpers.h iommu_coalesce_chunks, worked by hand."""

    @pytest.mark.parametrize("name", PARISC)
    def test_chunk_capped_at_segment_boundary(self, name):
        # max_seg_size 1 MiB, DMA_CHUNK_SIZE 256 KiB, boundary 0xffff + 1: cap 64 KiB.
        # contiguous, page aligned: 48K; +48K -> ALIGN(96K) > 64K: break; 48K + 16K ->
        # ALIGN(64K) <= 64K: join. Chunks 48K (12 pdir pages) and 64K (16 pages).
        dev = dev_for(name, dma_mask=DMA_BIT_MASK(32), max_seg_size=1 << 20,
                      seg_boundary_mask=0xFFFF)
        dma, dlen, _ = map_sg(dev, [0x100_0000, 0x100_C000, 0x101_8000],
                              [0xC000, 0xC000, 0x4000])
        assert dlen.tolist() == [0xC000, 0x10000]
        assert dev.ops.stats["pte_writes"] == 12 + 16
        assert _in_one_window(dma, dlen, 0xFFFF)
        dev.ops.unmap_sg(dev, dma, dlen, "bidirectional", None)
        assert dev.ops.resources()["table_entries"] == 0

    @pytest.mark.parametrize("name", PARISC)
    def test_first_offset_counts_in_the_aligned_size(self, name):
        # max_seg_size 64K, no boundary (0xffffffff + 1 wraps the unsigned int to 0).
        # dma_offset 0x800: ALIGN(0x7800 + 0x800 + 0x8400, 4K) = 0x11000 > 0x10000: break,
        # although 0x7800 + 0x8400 = 0xfc00 fits max_seg_size.
        dev = dev_for(name, dma_mask=DMA_BIT_MASK(32), max_seg_size=0x10000,
                      seg_boundary_mask=0xFFFF_FFFF)
        dma, dlen, _ = map_sg(dev, [0x100_0800, 0x100_8000], [0x7800, 0x8400])
        assert dlen.tolist() == [0x7800, 0x8400]
        assert int(dma[0]) & 0xFFF == 0x800
        assert dev.ops.stats["pte_writes"] == 8 + 9

    @pytest.mark.parametrize("name", PARISC)
    def test_only_contiguous_page_aligned_entries_join(self, name):
        # prev_end != sg_start: no join, even page aligned on both sides
        dev = dev_for(name, dma_mask=DMA_BIT_MASK(32), max_seg_size=1 << 20)
        dma, dlen, _ = map_sg(dev, [0x100_0000, 0x200_0000, 0x200_1000, 0x200_2800],
                              [0x1000, 0x1000, 0x1800, 0x800])
        # 0|1: not contiguous; 1+2 contiguous and aligned; 2|3 contiguous, not page aligned
        assert dlen.tolist() == [0x1000, 0x2800, 0x800]

    @pytest.mark.parametrize("name", PARISC)
    def test_dma_chunk_size_caps_a_chunk(self, name):
        # 80 contiguous pages, max_seg_size 1 MiB, no boundary: DMA_CHUNK_SIZE =
        # BITS_PER_LONG * PAGE_SIZE = 256 KiB -> 64 + 16 pages
        dev = dev_for(name, dma_mask=DMA_BIT_MASK(32), max_seg_size=1 << 20)
        addr = [0x100_0000 + i * 4096 for i in range(80)]
        dma, dlen, _ = map_sg(dev, addr, [4096] * 80)
        assert dlen.tolist() == [0x40000, 0x10000]

    @pytest.mark.parametrize("name", PARISC)
    def test_non_contiguous_pieces_map_on_an_empty_table(self, name):
        # the case the reliability campaign found: two 48K pieces, 64K boundary
        dev = dev_for(name, dma_mask=DMA_BIT_MASK(32), max_seg_size=1 << 20,
                      seg_boundary_mask=0xFFFF)
        dl = dma_map(dev, (arr(0x100_0000, 0x200_0000), arr(0xC000, 0xC000)))
        assert dl.length.tolist() == [0xC000, 0xC000]
        dma_unmap(dev, dl)
        assert dev.ops.resources()["table_entries"] == 0


# ------------------------------------------------------------------ arm, per-entry tables
class TestArmAndPerEntry:
    def test_arm_alignment_order(self):
        dev = dev_for("iommu_coherent_ops")
        a = dev.ops.map_phys(dev, HIGH, 4096, "to_device")
        b = dev.ops.map_phys(dev, HIGH, 3 * 4096, "to_device")
        assert a == 0x1000_0000
        assert b == 0x1000_0000 + 4 * 4096  # get_order(3 pages) = 2: 4-page aligned

    def test_arm_noncoherent_cache_maintenance(self):
        dev = dev_for("iommu_ops")
        dma, dlen, _ = map_sg(dev, [HIGH, 2 * HIGH], [4096, 4096], "from_device")
        assert dlen.tolist() == [8192]
        dev.ops.unmap_sg(dev, dma, dlen, "from_device", None)
        assert dev.ops.stats["cache_maint_bytes"] == 2 * 8192
        assert dev.ops.stats["iotlb_flushes"] == 1

    def test_jazz_is_per_entry_and_flushes_per_alloc(self):
        dev = dev_for("jazz_dma_ops")
        dma, dlen, _ = map_sg(dev, [HIGH, HIGH + 4096], [4096, 4096])
        assert dma.tolist() == [0, 4096] and dlen.tolist() == [4096, 4096]
        assert dev.ops.stats["iotlb_flushes"] == 2

    def test_sbus_gflush_vs_pflush(self):
        g, p = dev_for("sbus_iommu_dma_gflush_ops"), dev_for("sbus_iommu_dma_pflush_ops")
        for d in (g, p):
            map_sg(d, [HIGH], [3 * 4096])
        assert g.ops.stats["iotlb_flushes"] == 1
        assert p.ops.stats["iotlb_flushes"] == 3


# ------------------------------------------------------------------ s390
class TestS390:
    def test_segments_and_tables(self):
        dev = dev_for("s390_pci_dma_ops")
        dma, dlen, _ = map_sg(dev, [HIGH + 0x100, 2 * HIGH, 3 * HIGH + 0x80],
                              [0xF00, 4096, 100])
        # entry 1 joins (no offset, size 0x1000 aligned); entry 2 has an offset
        assert dlen.tolist() == [0x1F00, 100]
        assert dma.tolist() == [(1 << 32) + 0x100, (1 << 32) + 2 * 4096 + 0x80]
        assert dev.ops.stats["table_pages"] == 2  # one segment table, one page table

    def test_lazy_unmap_needs_a_global_flush_at_wrap(self):
        dev = dev_for("s390_pci_dma_ops", ops_params={"iommu_size": 16 * 4096})
        ops = dev.ops
        for _ in range(15):  # entries 0..14 (the last is never handed out)
            d = ops.map_phys(dev, HIGH, 4096, "to_device")
            ops.unmap_phys(dev, d, 4096, "to_device")
        assert ops.lazy_pages == 15 and ops.stats.get("iotlb_flushes", 0) == 0
        d = ops.map_phys(dev, HIGH, 4096, "to_device")
        assert d == 1 << 32 and ops.stats["iotlb_flushes"] == 1 and ops.lazy_pages == 0

    def test_strict_flushes_every_unmap(self):
        dev = dev_for("s390_pci_dma_ops", ops_params={"strict": True})
        d = dev.ops.map_phys(dev, HIGH, 4096, "to_device")
        dev.ops.unmap_phys(dev, d, 4096, "to_device")
        assert dev.ops.stats["iotlb_flushes"] == 1
        assert dev.ops.resources() == {"iova_pages": 0, "valid_ptes": 0}

    def test_page_table_allocation_failure_unwinds(self):
        dev = dev_for("s390_pci_dma_ops")
        before = dev.ops.resources()
        with faults.inject("pt_alloc", nth=2):
            with pytest.raises(DmaMappingError) as exc:
                map_sg(dev, [HIGH], [4096])
        assert exc.value.errno == "ENOMEM"
        assert dev.ops.resources() == before


# ------------------------------------------------------------------ Xen
class TestXen:
    def test_grant_address_has_bit_63(self):
        dev = dev_for("xen_grant_dma_ops", dma_mask=DMA_BIT_MASK(64))
        d = dev.ops.map_phys(dev, 0x12_3F00, 0x200, "to_device")
        # offset 0xF00 + 0x200 crosses a page: 2 grants, first free ref 8 (8 reserved)
        assert d == XEN_GRANT_DMA_ADDR_OFF | (8 << 12) | 0xF00
        assert dev.ops.stats["grants"] == 2
        dev.ops.unmap_phys(dev, d, 0x200, "to_device")
        assert dev.ops.resources() == {"grants": 0}
        assert dev.ops.dma_supported(dev, DMA_BIT_MASK(64))
        assert not dev.ops.dma_supported(dev, DMA_BIT_MASK(32))

    def test_grant_failure_is_eio_and_unwinds(self):
        dev = dev_for("xen_grant_dma_ops", dma_mask=DMA_BIT_MASK(64))
        with faults.inject("grant_alloc", nth=3):
            with pytest.raises(DmaMappingError) as exc:
                map_sg(dev, [0x1000, 0x3000, 0x5000], [4096] * 3)
        assert exc.value.errno == "EIO"
        assert dev.ops.resources() == {"grants": 0}

    def _swiotlb(self, **kw):
        # pfn -> machine frame: 0, 1 contiguous (5, 6); 2 jumps to 9; 4 sits at 8 GiB;
        # everything else machine-contiguous from 4 GiB; the pool (0x6000_0000, 64 MiB) is
        # remapped to machine frames from 0x40000 (1 GiB) by the xen_swiotlb_fixup model
        p2m = np.arange(0x70000, dtype=U) + U(0x10_0000)
        p2m[:5] = [5, 6, 9, 10, 0x200000]
        return dev_for("xen_swiotlb_dma_ops", ops_params={"p2m": p2m}, **kw)

    def test_machine_contiguous_is_direct(self):
        dev = self._swiotlb()
        assert dev.ops.map_phys(dev, 0x10, 8000, "to_device") == 0x5010  # mfn 5, 6

    def test_straddling_machine_frames_bounces(self):
        dev = self._swiotlb()
        d = dev.ops.map_phys(dev, 0x1000, 8192, "to_device")  # mfn 6 then 9
        assert d == 0x4000_0000  # first slot of the pool, machine frame 0x40000
        pool = dev.dma_io_tlb_mem
        assert pool.stats["bounce_bytes"] == 8192 and pool.stats["bounce_slots"] == 4
        dev.ops.unmap_phys(dev, d, 8192, "to_device")
        assert dev.ops.resources() == {"bounce_slots": 0}

    def test_unreachable_machine_frame_bounces(self):
        dev = self._swiotlb()  # 32-bit mask; pfn 4 -> mfn 0x200000 (8 GiB)
        dma, _, cookie = map_sg(dev, [0x10, 0x4000], [100, 100], "from_device")
        assert dma.tolist() == [0x5010, 0x4000_0000]
        assert cookie.bounced.tolist() == [False, True]
        dev.ops.unmap_sg(dev, dma, arr(100, 100), "from_device", cookie)
        # v6.2 swiotlb_tbl_map_single copies even for FROM_DEVICE; unmap copies back
        assert dev.dma_io_tlb_mem.stats["bounce_bytes"] == 200

    def test_bounce_failure_is_eio_and_unwinds(self):
        dev = self._swiotlb()
        with faults.inject("swiotlb_slot", nth=2):
            with pytest.raises(DmaMappingError) as exc:
                map_sg(dev, [0x1000, 0x4000], [8192, 100])
        assert exc.value.errno == "EIO"
        assert dev.ops.resources() == {"bounce_slots": 0}

    def test_max_mapping_size(self):
        dev = self._swiotlb(min_align_mask=0xFFF)
        assert dev.ops.max_mapping_size(dev) == 256 * 1024 - 4096


# ------------------------------------------------------------------ VDUSE
class TestVduse:
    def test_iova_top_down_and_offset_dropped(self):
        dev = dev_for("vduse_dev_dma_ops", dma_mask=DMA_BIT_MASK(64))
        a = dev.ops.map_phys(dev, 0x1234, 100, "to_device")
        b = dev.ops.map_phys(dev, 0x5000, 3 * 4096, "to_device")
        assert a == 0x3FFF000  # highest page below 64 MiB; data at offset 0
        assert b == 0x3FFC000  # 3 pages, size-aligned to 4
        assert dev.ops.stats["bounce_bytes"] == 100 + 3 * 4096
        assert dev.ops.max_mapping_size(dev) == 64 << 20

    def test_no_map_sg_but_per_range_mapping_works(self):
        dev = dev_for("vduse_dev_dma_ops", dma_mask=DMA_BIT_MASK(64))
        with pytest.raises(DmaMappingError) as exc:
            map_sg(dev, [0x1000], [4096])
        assert exc.value.errno == "EINVAL"
        dl = dma_map(dev, (arr(0x1000, 0x8000), arr(4096, 4096)), "from_device")
        assert dl.dma_addr.tolist() == [0x3FFF000, 0x3FFE000]
        dma_unmap(dev, dl)
        assert dev.ops.resources() == {"iova_pages": 0, "bounce_maps": 0}
        assert dev.ops.stats["bounce_bytes"] == 8192  # copied back on unmap only

    def test_bounce_page_failure_unwinds(self):
        dev = dev_for("vduse_dev_dma_ops", dma_mask=DMA_BIT_MASK(64))
        with faults.inject("bounce_alloc", nth=2):
            with pytest.raises(DmaMappingError) as exc:
                dev.ops.map_phys(dev, 0x1000, 3 * 4096, "to_device")
        assert exc.value.errno == "ENOMEM"
        assert dev.ops.resources() == {"iova_pages": 0, "bounce_maps": 0}
        assert dev.ops.bounce_pages_allocated == 1  # the kernel keeps what it allocated


# ------------------------------------------------------------------ linear and dummy
class TestLinearAndDummy:
    def test_ps3_ioc0_has_no_map_sg(self):
        dev = dev_for("ps3_ioc0_dma_ops")
        with pytest.raises(DmaMappingError) as exc:
            map_sg(dev, [0x1000], [4096])
        assert exc.value.errno == "EINVAL"
        assert dev.ops.map_phys(dev, 0x1000, 4096, "to_device") == 0x8000_1000
        dl = dma_map(dev, (arr(0x1000, 0x3000), arr(4096, 4096)), "to_device")
        assert dl.dma_addr.tolist() == [0x8000_1000, 0x8000_3000] and dl.per_range

    def test_ps3_sb_per_entry_and_region_limit(self):
        dev = dev_for("ps3_sb_dma_ops")
        dma, dlen, _ = map_sg(dev, [0x1000, 0x2000], [4096, 4096])
        assert dma.tolist() == [0x8000_1000, 0x8000_2000] and len(dlen) == 2  # no merge
        with pytest.raises(DmaMappingError) as exc:
            map_sg(dev, [0x1000, 256 << 20], [4096, 4096])
        assert exc.value.errno == "EINVAL" and "entry 1" in str(exc.value)

    def test_ibmebus_identity_to_kernel_virtual(self):
        dev = dev_for("ibmebus_dma_ops", dma_mask=DMA_BIT_MASK(64))
        dma, _, _ = map_sg(dev, [0x1000], [4096])
        assert dma.tolist() == [0xC000_0000_0000_1000]
        assert dev.ops.dma_supported(dev, DMA_BIT_MASK(64))
        assert not dev.ops.dma_supported(dev, DMA_BIT_MASK(63))

    def test_dummy_always_fails(self):
        dev = dev_for("dma_dummy_ops")
        with pytest.raises(DmaMappingError) as exc:
            dev.ops.map_phys(dev, 0x1000, 4096, "to_device")
        assert exc.value.errno == "ENOMEM" and "DMA_MAPPING_ERROR" in str(exc.value)
        with pytest.raises(DmaMappingError) as exc:
            map_sg(dev, [0x1000], [4096])
        assert exc.value.errno == "EINVAL"
        assert not dev.ops.dma_supported(dev, U64_MAX)


# ------------------------------------------------------------------ every table row
TABLE_ROWS = sorted(n for n, e in OPS.items() if e.family == "single_level")
ERRNO = {"dma_iommu_ops": "EIO", "vio_dma_mapping_ops": "EIO", "jazz_dma_ops": "EIO",
         "sun4u_dma_ops": "EINVAL", "sun4v_dma_ops": "EINVAL", "iounit_dma_ops": "EINVAL",
         "sbus_iommu_dma_gflush_ops": "EINVAL", "sbus_iommu_dma_pflush_ops": "EINVAL"}


@pytest.mark.parametrize("name", TABLE_ROWS)
def test_injected_allocation_failure_unwinds(name):
    dev = dev_for(name, ops_params={"force": True} if name == "gart_dma_ops" else None)
    addr = [HIGH + 0x4000_0000, 2 * HIGH + 0x4000_0000, 3 * HIGH + 0x4000_0100]
    length = [8192, 4096, 100]
    before = dev.ops.resources()
    with faults.inject("iommu_area_alloc", nth=2, times=10):
        with pytest.raises(DmaMappingError) as exc:
            map_sg(dev, addr, length)
    assert exc.value.errno == ERRNO.get(name, "ENOMEM")
    assert dev.ops.resources() == before


@pytest.mark.parametrize("name", TABLE_ROWS + ["s390_pci_dma_ops"])
@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_map_unmap_returns_everything(name, data):
    n = data.draw(st.integers(1, 12))
    pages = data.draw(st.lists(st.integers(0x10_0000, 0x40_0000), min_size=n, max_size=n))
    offs = data.draw(st.lists(st.integers(0, 4095), min_size=n, max_size=n))
    lens = data.draw(st.lists(st.integers(1, 3 * 4096), min_size=n, max_size=n))
    addr = np.array([p * 4096 + o for p, o in zip(pages, offs, strict=True)], dtype=U)
    length = np.array(lens, dtype=U)
    dev = dev_for(name)
    before = dev.ops.resources()
    dma, dlen, cookie = dev.ops.map_sg(dev, addr, length, "bidirectional")
    assert int(dlen.sum()) == int(length.sum())  # merging never loses or adds bytes
    assert int(dlen.max()) <= max(dev.max_seg_size, int(length.max()))
    dev.ops.unmap_sg(dev, dma, dlen, "bidirectional", cookie)
    assert dev.ops.resources() == before


# ------------------------------------------------------------------ layout independence
FAMILY_ROWS = sorted(n for n, e in OPS.items()
                     if e.family in ("single_level", "s390", "xen", "vduse", "linear")
                     and n not in ("ps3_sb_dma_ops", "ps3_ioc0_dma_ops"))


@pytest.mark.parametrize("name", FAMILY_ROWS)
def test_same_dma_list_from_every_layout(name):
    from phyrlab.layouts import LAYOUTS

    # page-aligned ranges (page_list / pfn_run hold whole pages), some physically adjacent
    addr = arr(0x1_2000_0000, 0x1_2000_1000, 0x3_0000_0000, 0x5000, 0x2_0000_8000)
    length = arr(4096, 8192, 12288, 4096, 4096)
    mask = DMA_BIT_MASK(64) if name in ("xen_grant_dma_ops", "ibmebus_dma_ops",
                                        "vduse_dev_dma_ops") else DMA_BIT_MASK(32)
    got = {}
    for lname, cls in LAYOUTS.items():
        x = cls.from_ranges(addr, length)
        dev = dev_for(name, dma_mask=mask)
        dl = dma_map(dev, x, "to_device")
        got[lname] = (dl.dma_addr.tolist(), dl.length.tolist())
        dma_unmap(dev, dl)
    first = next(iter(got.values()))
    assert all(v == first for v in got.values()), got
