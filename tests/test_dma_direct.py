"""dma-direct held to kernel/dma/direct.h and include/linux/dma-direct.h."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phyrlab import faults
from phyrlab.dma import BusDmaRegion, Device, dma_map, dma_map_phys, dma_unmap, dma_unmap_phys
from phyrlab.dma.direct import dma_capable_array
from phyrlab.dma.mapping import dma_sync_for_cpu, dma_sync_for_device
from phyrlab.dma.swiotlb import DEFAULT_START, IoTlbMem, dma_capable
from phyrlab.errors import DmaMappingError
from phyrlab.units import DMA_BIT_MASK, DMA_MAPPING_ERROR, SZ_1G, SZ_4G, U64_MAX

U64 = np.uint64


def test_dma_capable_worked_examples():
    d32 = Device()                                            # PCI default: 32-bit mask
    assert dma_capable(d32, 0xFFFF_F000, 0x1000)             # ends at 0xffffffff
    assert not dma_capable(d32, 0xFFFF_F000, 0x1001)
    assert not dma_capable(d32, DMA_MAPPING_ERROR, 1)
    lim = Device(dma_mask=DMA_BIT_MASK(64), bus_dma_limit=0x3FFF_FFFF)
    assert dma_capable(lim, 0x3FFF_F000, 0x1000) and not dma_capable(lim, 0x4000_0000, 1)
    # min_not_zero: a bus limit above the mask does not widen it
    assert not dma_capable(Device(bus_dma_limit=DMA_BIT_MASK(40)), SZ_4G, 1)
    # the array form agrees, including an end that would wrap past 2^64
    a = np.array([0xFFFF_F000, 0xFFFF_F000, 0, U64_MAX - 10], dtype=U64)
    n = np.array([0x1000, 0x1001, SZ_4G, 100], dtype=U64)
    assert list(dma_capable_array(d32, a, n)) == [True, False, True, False]
    assert not dma_capable_array(Device(dma_mask=U64_MAX), a[3:], n[3:])[0]


def test_in_reach_maps_to_itself_and_beyond_reach_bounces():
    dev = Device()
    assert dma_map_phys(dev, 0x1234_5000, 0x3000, "to_device") == 0x1234_5000
    dma = dma_map_phys(dev, 0x1_0000_0000, 0x1000, "to_device")   # above 4 GiB
    assert dma == DEFAULT_START                                    # the first swiotlb slot
    assert dev.resources()["swiotlb_slots"] == 2
    dma_unmap_phys(dev, dma, 0x1000, "to_device")
    assert dev.resources()["swiotlb_slots"] == 0


def test_no_swiotlb_no_reach_is_an_error_naming_mask_and_limit():
    dev = Device(swiotlb=False)
    with pytest.raises(DmaMappingError, match=r"DMA addr 0x100000000\+4096 overflow "
                                              r"\(mask 0xffffffff, bus limit 0x0\)") as e:
        dma_map_phys(dev, SZ_4G, 4096, "to_device")
    assert e.value.errno == "ENOMEM"
    addr = np.array([0x1000, SZ_4G], dtype=U64)
    with pytest.raises(DmaMappingError, match="entry 1") as e:
        dma_map(dev, (addr, np.array([4096, 4096], dtype=U64)))
    assert e.value.errno == "EIO"                                 # dma_direct_map_sg


def test_dma_range_map_offsets_and_missing_translation():
    # a bus that sees CPU memory at 0x8000_0000.. as DMA 0..; swiotlb lies outside the window
    dev = Device(dma_mask=DMA_BIT_MASK(32),
                 dma_range_map=[BusDmaRegion(0x8000_0000, 0, SZ_1G)])
    assert dev.phys_to_dma(0x8000_1000) == 0x1000
    assert dev.dma_to_phys(0x1000) == 0x8000_1000
    assert dev.phys_to_dma(0x1000) == DMA_MAPPING_ERROR
    assert dma_map_phys(dev, 0x8000_1000, 512, "from_device") == 0x1000
    # not translatable: bounced, but the pool itself is not translatable either: its DMA
    # address is DMA_MAPPING_ERROR, whose low bits fail every slot's alignment test in
    # swiotlb_search_pool_area (v6.9+), so the search finds no slot and takes nothing
    with pytest.raises(DmaMappingError, match="swiotlb buffer is full") as e:
        dma_map_phys(dev, 0x1000, 512, "from_device")
    assert e.value.errno == "ENOMEM"
    assert dev.resources()["swiotlb_slots"] == 0
    # with the pool inside the window it works and dma_to_phys finds the bounce buffer
    dev2 = Device(dma_range_map=[BusDmaRegion(0x4000_0000, 0x1000_0000, SZ_1G)],
                  swiotlb=IoTlbMem(start=0x5000_0000))
    dma = dma_map_phys(dev2, 0x1000, 512, "from_device")
    assert dma == 0x1000_0000 + (0x5000_0000 - 0x4000_0000)
    assert dev2.ops.bounced_mask(dev2, np.array([dma], dtype=U64), np.array([512]))[0]


def test_force_bounce_bounces_everything():
    dev = Device(dma_mask=DMA_BIT_MASK(64), force_bounce=True)
    addr = np.array([0x1000, 0x10_0000], dtype=U64)
    length = np.array([0x800, 0x3000], dtype=U64)
    m = dma_map(dev, (addr, length), "bidirectional")
    assert m.bounced.all()
    assert m.stats["bounce_bytes"] == 0x3800
    assert dev.dma_max_mapping_size() == 256 * 1024
    assert dma_sync_for_cpu(dev, m) == 0x3800
    assert dma_sync_for_device(dev, m) == 0x3800
    stats = dma_unmap(dev, m)
    assert stats["bounce_bytes"] == 0x3800
    assert dev.resources()["swiotlb_slots"] == 0


def test_max_mapping_size_follows_addressing_limits():
    assert Device().dma_max_mapping_size() == 256 * 1024         # 32-bit mask, 1 TiB RAM
    assert Device(dma_mask=DMA_BIT_MASK(64)).dma_max_mapping_size() == U64_MAX
    small_ram = Device(max_pfn=(2 * SZ_1G) >> 12)
    assert small_ram.dma_get_required_mask() == DMA_BIT_MASK(31)
    assert small_ram.dma_max_mapping_size() == U64_MAX
    assert Device(swiotlb=False).dma_max_mapping_size() == U64_MAX


def test_failure_part_way_gives_back_every_bounce_slot():
    dev = Device()
    addr = np.array([SZ_4G, SZ_4G + 0x10000, 0x1000, SZ_4G + 0x20000], dtype=U64)
    length = np.full(4, 0x1000, dtype=U64)
    mem = dev.dma_io_tlb_mem
    before = mem.snapshot()
    with faults.inject("swiotlb_slot", nth=3), pytest.raises(DmaMappingError) as e:
        dma_map(dev, (addr, length))
    assert e.value.errno == "EIO" and "entry 3" in str(e.value)
    assert all(np.array_equal(a, b) for a, b in zip(before, mem.snapshot(), strict=True))


def test_non_coherent_counts_cache_maintenance():
    dev = Device(dma_mask=DMA_BIT_MASK(64), coherent=False)
    m = dma_map(dev, (np.array([0x1000], dtype=U64), np.array([0x3000], dtype=U64)))
    assert m.stats["cache_maint_bytes"] == 0x3000
    assert dma_unmap(dev, m)["cache_maint_bytes"] == 0x3000


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.integers(0, (1 << 36) - 1), st.integers(1, 60000)), min_size=1,
                max_size=30, unique_by=lambda t: t[0] >> 17),
       st.sampled_from([32, 34, 36]), st.sampled_from([0, 0xFFF]), st.booleans())
def test_property_bounce_exactly_what_is_out_of_reach(rs, bits, min_align, force):
    rs = [(a & ~0x1FFFF, n) for a, n in rs]                  # 128 KiB apart: no overlap
    addr = np.array([a for a, _ in rs], dtype=U64)
    length = np.array([n for _, n in rs], dtype=U64)
    dev = Device(dma_mask=DMA_BIT_MASK(bits), min_align_mask=min_align, force_bounce=force,
                 max_seg_size=1 << 16)
    pristine = dev.dma_io_tlb_mem.list.copy()
    m = dma_map(dev, (addr, length), "from_device")
    assert np.array_equal(m.length, length)                  # all under 64 KiB: no cuts
    for a, n, d, b in zip(addr.tolist(), length.tolist(), m.dma_addr.tolist(),
                          m.bounced.tolist(), strict=True):
        assert b == (force or not dma_capable(dev, a, n))
        if b:
            assert dev.dma_io_tlb_mem.is_swiotlb_buffer(d)
            if a:   # swiotlb_area_find_slots skips the alignment test when orig_addr == 0
                assert d & min_align == a & min_align        # min_align_mask keeps low bits
        else:
            assert d == a
    dma_unmap(dev, m)
    assert np.array_equal(dev.dma_io_tlb_mem.list, pristine) and dev.dma_io_tlb_mem.used == 0
