"""swiotlb held to kernel/dma/swiotlb.c: slot/segment rules, alignment, areas, unwinding."""

from __future__ import annotations

import numpy as np
import pytest

from phyrlab import faults
from phyrlab.dma import Device
from phyrlab.dma.swiotlb import (
    DEFAULT_START,
    IO_TLB_SEGSIZE,
    IO_TLB_SIZE,
    IoTlbMem,
    swiotlb_max_mapping_size,
)
from phyrlab.errors import DmaMappingError
from phyrlab.units import PAGE_SIZE, SZ_1M, SZ_64M


def dev_with(mem=None, **kw):
    return Device(dma_mask=(1 << 64) - 1, swiotlb=mem or IoTlbMem(), **kw)


# --------------------------------------------------------------------------- a literal copy
def kernel_find_slots(mem, dev, orig_addr, alloc_size, alloc_align_mask):
    """swiotlb_search_pool_area (v6.9+) + swiotlb_find_slots (!CONFIG_SWIOTLB_DYNAMIC),
    transliterated line by line from kernel/dma/swiotlb.c."""
    lst = mem.list.copy()
    idx_state = mem.area_index.copy()
    used = mem.area_used.copy()

    def area_find(area_index):
        boundary_mask = dev.seg_boundary_mask
        tbl_dma_addr = dev.phys_to_dma(mem.start) & boundary_mask
        max_slots = (boundary_mask >> 11) + 1
        iotlb_align_mask = dev.min_align_mask
        nslots = -(-alloc_size // IO_TLB_SIZE)
        align_mask = alloc_align_mask
        if not align_mask and not iotlb_align_mask and alloc_size >= PAGE_SIZE:
            align_mask = PAGE_SIZE - 1
        align_mask |= IO_TLB_SIZE - 1
        iotlb_align_mask &= ~align_mask
        stride = (max(align_mask, iotlb_align_mask) >> 11) + 1
        if nslots > mem.area_nslabs - used[area_index]:
            return -1
        slot_base = area_index * mem.area_nslabs
        index = int(idx_state[area_index])
        slots_checked = 0
        while slots_checked < mem.area_nslabs:
            slot_index = slot_base + index
            tlb_addr = tbl_dma_addr + (slot_index << 11)
            if (tlb_addr & align_mask) or (orig_addr and (tlb_addr & iotlb_align_mask) != (
                    orig_addr & iotlb_align_mask)):
                index = 0 if index + 1 >= mem.area_nslabs else index + 1
                slots_checked += 1
                continue
            shift = (-(-tbl_dma_addr // IO_TLB_SIZE) + slot_index) & (max_slots - 1)
            if not shift + nslots > max_slots and lst[slot_index] >= nslots:
                return slot_index
            index = 0 if index + stride >= mem.area_nslabs else index + stride
            slots_checked += stride
        return -1

    start = mem.cpu & (mem.nareas - 1)
    i = start
    while True:
        r = area_find(i)
        if r >= 0:
            return r
        i = 0 if i + 1 >= mem.nareas else i + 1
        if i == start:
            return -1


# --------------------------------------------------------------------------- worked examples
def test_pool_geometry_and_initial_free_lists():
    mem = IoTlbMem()
    assert mem.nslabs == SZ_64M // 2048 == 32768
    assert (mem.list[0], mem.list[1], mem.list[127], mem.list[128]) == (128, 127, 1, 128)
    assert mem.end - mem.start == SZ_64M


def test_areas_round_up_and_limit():
    # swiotlb_adjust_nareas rounds 3 up to 4; 64 MiB holds 4 areas of 8192 slots.
    mem = IoTlbMem(nareas=3)
    assert (mem.nareas, mem.area_nslabs) == (4, 8192)
    # limit_nareas: a 512 KiB pool (256 slots = 2 segments) holds at most 2 areas... after
    # round_up_default_nslabs grows it to 128 * nareas slots.
    small = IoTlbMem(512 * 1024, nareas=8)
    assert small.nslabs == 128 * 8 and small.nareas == 8
    # a non power-of-two slot count is rounded up when there are several areas
    odd = IoTlbMem(3 * SZ_1M, nareas=2)
    assert odd.nslabs == 2048


def test_page_sized_mapping_is_page_aligned_and_counts_slots():
    mem = IoTlbMem()
    dev = dev_with(mem)
    tlb = mem.tbl_map_single(dev, 0x1_2345_6000, 4096, 4096, 0, "to_device")
    assert tlb == DEFAULT_START
    assert list(mem.list[:3]) == [0, 0, 126]
    assert mem.used == 2 and int(mem.area_index[0]) == 2
    # a 2 KiB mapping needs no page alignment: the very next slot
    tlb2 = mem.tbl_map_single(dev, 0x1_2345_6800, 2048, 2048, 0, "to_device")
    assert tlb2 == DEFAULT_START + 2 * IO_TLB_SIZE


def test_a_mapping_never_spans_two_segments():
    mem = IoTlbMem()
    dev = dev_with(mem)
    a = mem.tbl_map_single(dev, 0x10_0000_0000, 200 * 1024, 200 * 1024, 0, "to_device")
    b = mem.tbl_map_single(dev, 0x20_0000_0000, 200 * 1024, 200 * 1024, 0, "to_device")
    # 100 slots at 0..99; the second needs 100 but only 28 remain in segment 0: slot 128.
    assert (a - mem.start) // IO_TLB_SIZE == 0
    assert (b - mem.start) // IO_TLB_SIZE == IO_TLB_SEGSIZE


def test_max_mapping_size_is_one_segment_less_min_align():
    assert swiotlb_max_mapping_size(Device()) == 256 * 1024
    assert swiotlb_max_mapping_size(Device(min_align_mask=0xFFF)) == 256 * 1024 - 4096
    assert swiotlb_max_mapping_size(Device(min_align_mask=0x7FF)) == 256 * 1024 - 2048
    mem = IoTlbMem()
    dev = dev_with(mem)
    mem.tbl_map_single(dev, 0x10_0000_0000, 256 * 1024, 256 * 1024, 0, "to_device")
    with pytest.raises(DmaMappingError, match="swiotlb buffer is full") as e:
        mem.tbl_map_single(dev, 0x20_0000_0000, 256 * 1024 + 1, 256 * 1024 + 1, 0, "to_device")
    assert e.value.errno == "ENOMEM"


def test_min_align_mask_keeps_the_low_bits_nvme_style():
    mem = IoTlbMem()
    dev = dev_with(mem, min_align_mask=0xFFF)
    orig = 0x1_2345_6C00          # offset 0xc00 in its page: bit 11 set
    tlb = mem.tbl_map_single(dev, orig, 512, 512, 0, "to_device")
    # offset = orig & 0xfff & 0x7ff = 0x400; slot 0 has bit 11 clear, slot 1 matches.
    assert tlb == mem.start + IO_TLB_SIZE + 0x400
    assert tlb & 0xFFF == orig & 0xFFF
    # the skipped slot 0 is re-linked as a run of one free slot before the taken one
    assert (mem.list[0], mem.list[1], mem.list[2]) == (1, 0, 126)
    mem.tbl_unmap_single(dev, tlb, 512, "to_device")
    assert (mem.list[0], mem.list[1], mem.list[2]) == (128, 127, 126)


def test_orig_addr_zero_skips_the_alignment_test():
    # "if (orig_addr && ...)": physical address 0 is taken for "no original buffer"
    mem = IoTlbMem()
    dev = dev_with(mem, min_align_mask=0xFFF)
    mem.tbl_map_single(dev, 0x1_0000_0000, 2048, 2048, 0, "to_device")      # slot 0
    t = mem.tbl_map_single(dev, 0, 512, 512, 0, "to_device")
    assert t == mem.start + IO_TLB_SIZE                  # slot 1: bit 11 set, orig has 0
    t2 = mem.tbl_map_single(dev, 0x1000, 512, 512, 0, "to_device")
    assert t2 == mem.start + 2 * IO_TLB_SIZE             # slot 2 matches bit 11 of 0x1000


def test_segment_boundary_mask_moves_the_mapping():
    mem = IoTlbMem()
    dev = dev_with(mem, seg_boundary_mask=0xFFFF)     # 64 KiB = 32 slots
    mem.tbl_map_single(dev, 0x10_0000_0000, 32 * 1024, 32 * 1024, 0, "to_device")  # 0..15
    t = mem.tbl_map_single(dev, 0x20_0000_0000, 48 * 1024, 48 * 1024, 0, "to_device")
    assert (t - mem.start) // IO_TLB_SIZE == 32        # 16..39 would cross the 64 KiB line
    free = dev_with(IoTlbMem())
    m = free.dma_io_tlb_mem
    m.tbl_map_single(free, 0x10_0000_0000, 32 * 1024, 32 * 1024, 0, "to_device")
    t2 = m.tbl_map_single(free, 0x20_0000_0000, 48 * 1024, 48 * 1024, 0, "to_device")
    assert (t2 - m.start) // IO_TLB_SIZE == 16


def test_iommu_bounce_ignores_orig_bits_inside_alloc_align_mask():
    """The dma-iommu bounce of an untrusted device (v6.9+ swiotlb_search_pool_area).

    iommu_dma_map_page(phys 0x1000900, size 0xf700): iova_offset != 0, so
    swiotlb_tbl_map_single(dev, phys, 0xf700, iova_align = 0x10000, iova_mask = 0xfff).
    min_align_mask 0: offset 0; nslots 32; alloc_align_mask 0xfff (| 0x7ff), iotlb_align_mask
    0, stride 2: even slots only. 64 KiB boundary: max_slots 32, tbl_dma_addr 0x60000000 &
    0xffff = 0, so slot % 32 == 0. Slot 0 fits. (v6.6-v6.8 also compared bit 11 of 0x900 and
    wanted an odd slot: no slot, "swiotlb buffer is full ... used 0 (slots)".)
    """
    mem = IoTlbMem()
    dev = dev_with(mem, seg_boundary_mask=0xFFFF)
    t = mem.tbl_map_single(dev, 0x100_0900, 0xF700, 0x10000, 0xFFF, "to_device")
    assert t == DEFAULT_START
    assert mem.used == 32 and int(mem.area_index[0]) == 32
    assert list(mem.list[30:34]) == [0, 0, 96, 95]
    t2 = mem.tbl_map_single(dev, 0x200_0900, 0xF700, 0x10000, 0xFFF, "to_device")
    assert t2 == DEFAULT_START + 0x10000                   # slot 32: next 64 KiB window
    mem.tbl_unmap_single(dev, t, 0xF700, "to_device")
    mem.tbl_unmap_single(dev, t2, 0xF700, "to_device")
    assert mem.used == 0 and np.array_equal(mem.list, IoTlbMem().list)


def test_pre_padding_whole_slots_become_pad_slots():
    """NVMe-style min_align_mask 0xfff bounced with alloc_align_mask 0xfff (v6.9).

    offset = 0x123456c00 & 0xfff & (0xfff | 0x7ff) = 0xc00; find_slots(alloc 0x1000 + 0xc00)
    = 4 slots; iotlb_align_mask 0xfff & ~0xfff = 0, stride 2: slot 0. The search's own offset
    (align mask 0) is 0x400, so alloc_size per slot = 0x1c00 - 0x400 - i * 0x800. pad_slots =
    0xc00 >> 11 = 1, so the buffer starts in slot 1 at 0x400: tlb = start + 0xc00.
    """
    mem = IoTlbMem()
    dev = dev_with(mem, min_align_mask=0xFFF)
    orig = 0x1_2345_6C00
    t = mem.tbl_map_single(dev, orig, 0x400, 0x1000, 0xFFF, "to_device")
    assert t == DEFAULT_START + 0xC00 and t & 0xFFF == orig & 0xFFF
    assert mem.used == 4 and list(mem.list[:5]) == [0, 0, 0, 0, 124]
    assert list(mem.alloc_size[:4]) == [0x1800, 0x1000, 0x800, 0]
    assert (int(mem.pad_slots[0]), int(mem.pad_slots[1])) == (0, 1)
    assert int(mem.orig_addr[0]) == (1 << 64) - 1          # the pad slot holds no buffer
    assert [int(x) for x in mem.orig_addr[1:4]] == [orig, orig + 0x800, orig + 0x1000]
    assert mem.stats["bounce_slots"] == 4
    # swiotlb_release_slots: index (0xc00 - 0x400) >> 11 = 1, minus pad_slots = 0; 4 slots
    mem.tbl_unmap_single(dev, t, 0x400, "to_device")
    assert mem.used == 0 and np.array_equal(mem.list, IoTlbMem().list)
    assert not mem.pad_slots.any()


def test_page_alignment_only_without_any_alignment_mask():
    """"Reinstate page-alignment for mappings >= PAGE_SIZE": only when alloc_align_mask and
    min_align_mask are both 0. With min_align_mask 0x7ff a 4 KiB mapping after a 2 KiB one
    takes slot 1 (alloc_align_mask 0x7ff, iotlb_align_mask 0, stride 1); without it, slot 2."""
    mem = IoTlbMem()
    dev = dev_with(mem, min_align_mask=0x7FF)
    assert mem.tbl_map_single(dev, 0x1000, 2048, 2048, 0, "to_device") == DEFAULT_START
    t = mem.tbl_map_single(dev, 0x2000, 4096, 4096, 0, "to_device")
    assert t == DEFAULT_START + IO_TLB_SIZE
    mem2 = IoTlbMem()
    dev2 = dev_with(mem2)
    mem2.tbl_map_single(dev2, 0x1000, 2048, 2048, 0, "to_device")
    assert mem2.tbl_map_single(dev2, 0x2000, 4096, 4096, 0, "to_device") == (
        DEFAULT_START + 2 * IO_TLB_SIZE)


def test_areas_start_at_the_cpu_and_move_on_when_full():
    mem = IoTlbMem(SZ_1M, nareas=4, cpu=2)       # 512 slots: 4 areas of 128
    dev = dev_with(mem)
    t = mem.tbl_map_single(dev, 0x10_0000_0000, 256 * 1024, 256 * 1024, 0, "to_device")
    assert (t - mem.start) // IO_TLB_SIZE == 256       # area 2
    t = mem.tbl_map_single(dev, 0x11_0000_0000, 4096, 4096, 0, "to_device")
    assert (t - mem.start) // IO_TLB_SIZE == 384       # area 2 full: area 3
    mem.tbl_map_single(dev, 0x12_0000_0000, 252 * 1024, 252 * 1024, 0, "to_device")  # fill 3
    t = mem.tbl_map_single(dev, 0x13_0000_0000, 4096, 4096, 0, "to_device")
    assert (t - mem.start) // IO_TLB_SIZE == 0         # wraps to area 0


def test_buffer_full_message_names_sizes_and_leaves_state():
    mem = IoTlbMem(SZ_1M)
    dev = dev_with(mem)
    for i in range(4):
        mem.tbl_map_single(dev, (i + 1) << 32, 256 * 1024, 256 * 1024, 0, "to_device")
    before = mem.snapshot()
    with pytest.raises(DmaMappingError) as e:
        mem.tbl_map_single(dev, 0x9_0000_0000, 4096, 4096, 0, "to_device")
    assert "swiotlb buffer is full (sz: 4096 bytes), total 512 (slots), used 512 (slots)" in str(
        e.value)
    assert all(np.array_equal(a, b) for a, b in zip(before, mem.snapshot(), strict=True))


def test_injected_slot_failure_takes_nothing():
    mem = IoTlbMem()
    dev = dev_with(mem)
    before = mem.snapshot()
    with faults.inject("swiotlb_slot"), pytest.raises(DmaMappingError, match="full"):
        mem.tbl_map_single(dev, 0x1000, 4096, 4096, 0, "to_device")
    assert all(np.array_equal(a, b) for a, b in zip(before, mem.snapshot(), strict=True))


def test_bounce_bytes_follow_direction():
    mem = IoTlbMem()
    dev = dev_with(mem)
    t = mem.tbl_map_single(dev, 0x5000, 3000, 3000, 0, "from_device")
    assert mem.stats["bounce_bytes"] == 3000          # always copied in at map time
    assert mem.sync_single_for_cpu(dev, t, 3000, "from_device") == 3000
    assert mem.sync_single_for_device(dev, t, 3000, "from_device") == 0
    assert mem.tbl_unmap_single(dev, t, 3000, "from_device") == 3000
    t = mem.tbl_map_single(dev, 0x5000, 3000, 3000, 0, "to_device")
    assert mem.tbl_unmap_single(dev, t, 3000, "to_device") == 0
    # a sync past the end of the allocation is clamped, as swiotlb_bounce does
    t = mem.tbl_map_single(dev, 0x5000, 1000, 1000, 0, "bidirectional")
    assert mem.sync_single_for_device(dev, t, 5000, "bidirectional") == 1000
    assert any("Buffer overflow" in w for w in mem.warnings)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_search_visits_slots_in_the_kernels_order(seed):
    """Random map/unmap sequences: the vectorised search picks what the kernel loop picks."""
    rng = np.random.default_rng(seed)
    mem = IoTlbMem(2 * SZ_1M, nareas=2, cpu=int(rng.integers(0, 4)))
    masks = [0, 0xFFF, 0x3FFF, 0x7FF]
    boundaries = [(1 << 64) - 1, 0xFFFF, 0x3_FFFF]
    live = []
    for _ in range(300):
        dev = dev_with(mem, min_align_mask=masks[rng.integers(0, 4)],
                       seg_boundary_mask=boundaries[rng.integers(0, 3)])
        if live and rng.random() < 0.4:
            d, t, size = live.pop(int(rng.integers(0, len(live))))
            mem.tbl_unmap_single(d, t, size, "to_device")
            continue
        size = int(rng.choice([512, 2048, 3000, 4096, 8192, 20000, 65536, 130000]))
        orig = 0 if rng.random() < 0.05 else int(rng.integers(1, 1 << 40))
        align = int(rng.choice([0, 0, 0xFFF]))
        # swiotlb_tbl_map_single's pre-padding, then pad_slots in front of the buffer
        offset = orig & dev.min_align_mask & (align | (IO_TLB_SIZE - 1))
        expect = kernel_find_slots(mem, dev, orig, size + offset, align)
        try:
            t = mem.tbl_map_single(dev, orig, size, size, align, "to_device")
        except DmaMappingError:
            assert expect == -1
            continue
        assert (t - (offset & (IO_TLB_SIZE - 1)) - mem.start) // IO_TLB_SIZE == (
            expect + (offset >> 11))
        if orig:        # the kernel keeps min_align_mask bits only for a real orig_addr
            assert t & dev.min_align_mask == orig & dev.min_align_mask
        live.append((dev, t, size))
    for d, t, size in live:
        mem.tbl_unmap_single(d, t, size, "to_device")
    assert mem.used == 0
    assert np.array_equal(mem.list, IoTlbMem(2 * SZ_1M, nareas=2).list)
