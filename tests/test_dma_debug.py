"""dma-debug: every misuse class of kernel/dma/debug.c, reported with the kernel's words,
and the model's state left consistent."""

from __future__ import annotations

import numpy as np
import pytest

from phyrlab.dma import Device
from phyrlab.dma.debug import DmaDebug
from phyrlab.units import DMA_BIT_MASK, DMA_MAPPING_ERROR, SZ_4G

U64 = np.uint64
PFX = "DMA-API: nvme 0000:01:00.0: "


def dbg(**kw):
    kw.setdefault("dma_mask", DMA_BIT_MASK(64))
    return DmaDebug(Device(**kw), driver="nvme")


def rs(*pairs):
    return (np.array([a for a, _ in pairs], dtype=U64), np.array([n for _, n in pairs], dtype=U64))


def idle(d):
    return len(d) == 0 and all(v == 0 for v in d.dev.resources().values())


def test_clean_use_reports_nothing():
    d = dbg()
    a = d.dma_map_phys(0x10_0000, 4096, "to_device")
    assert d.dma_mapping_error(a) == 0
    d.dma_sync_single_for_device(a, 4096, "to_device")
    d.dma_unmap_phys(a, 4096, "to_device")
    m = d.dma_map(rs((0x20_0000, 8192), (0x40_0000, 4096)), "from_device")
    d.dma_sync_for_cpu(m)
    d.dma_unmap(m)
    assert d.errors == [] and d.driver_unbind() == 0 and idle(d)


def test_unmap_of_memory_never_mapped_and_of_the_error_cookie():
    d = dbg()
    d.dma_unmap_phys(0x1234_0000, 4096, "to_device")
    d.dma_unmap_phys(DMA_MAPPING_ERROR, 4096, "to_device")
    assert d.errors == [
        PFX + "device driver tries to free DMA memory it has not allocated "
              "[device address=0x0000000012340000] [size=4096 bytes]",
        PFX + "device driver tries to free an invalid DMA memory address"]


def test_double_unmap_is_reported_and_does_no_harm():
    d = dbg(dma_mask=DMA_BIT_MASK(32))
    a = d.dma_map_phys(SZ_4G, 4096, "from_device")        # bounced
    d.dma_mapping_error(a)
    d.dma_unmap_phys(a, 4096, "from_device")
    slots = d.dev.dma_io_tlb_mem.snapshot()
    d.dma_unmap_phys(a, 4096, "from_device")
    assert d.errors == [PFX + f"device driver tries to free DMA memory it has not allocated "
                              f"[device address=0x{a:016x}] [size=4096 bytes]"]
    assert all(np.array_equal(x, y)
               for x, y in zip(slots, d.dev.dma_io_tlb_mem.snapshot(), strict=True))


def test_wrong_size_direction_and_unchecked_error_then_clean_state():
    d = dbg()
    a = d.dma_map_phys(0x10_0000, 4096, "to_device")       # dma_mapping_error never called
    d.dma_unmap_phys(a, 2048, "from_device")
    addr = f"0x{a:016x}"
    assert d.errors == [
        PFX + f"device driver frees DMA memory with different size [device address={addr}] "
              f"[map size=4096 bytes] [unmap size=2048 bytes]",
        PFX + f"device driver frees DMA memory with different direction [device address="
              f"{addr}] [size=2048 bytes] [mapped with DMA_TO_DEVICE] "
              f"[unmapped with DMA_FROM_DEVICE]",
        PFX + f"device driver failed to check map error[device address={addr}] "
              f"[size=2048 bytes] [mapped as single]"]
    assert idle(d)


def test_wrong_function_and_entry_count():
    d = dbg()
    m = d.dma_map(rs((0x20_0000, 4096), (0x40_0000, 4096)), "bidirectional")
    d.dma_unmap(m, nents=3)
    assert d.errors[0].endswith("device driver frees DMA sg list with different entry count "
                                "[map count=2] [unmap count=3]")
    m = d.dma_map(rs((0x20_0000, 4096)), "bidirectional")
    d.dma_unmap_phys(int(m.dma_addr[0]), 4096, "bidirectional")
    assert d.errors[-1].endswith("[mapped as scather-gather] [unmapped as single]")
    assert idle(d)


def test_sync_misuse():
    d = dbg()
    a = d.dma_map_phys(0x10_0000, 8192, "to_device")
    d.dma_mapping_error(a)
    d.dma_sync_single_for_cpu(0x9999_0000, 512, "to_device")
    d.dma_sync_single_for_device(a, 16384, "to_device")
    d.dma_sync_single_for_cpu(a + 4096, 4096, "from_device")
    tail = f"[device address=0x{a + 4096:016x}] [size=8192 bytes] [mapped with DMA_TO_DEVICE]" \
           " [synced with DMA_FROM_DEVICE]"
    assert d.errors == [
        PFX + "device driver tries to sync DMA memory it has not allocated "
              "[device address=0x0000000099990000] [size=512 bytes]",
        # bucket_find_contain only finds an entry that holds the whole sync, so a sync past
        # the end is "not allocated" (check_sync's "outside allocated range" cannot fire)
        PFX + f"device driver tries to sync DMA memory it has not allocated "
              f"[device address=0x{a:016x}] [size=16384 bytes]",
        PFX + "device driver syncs DMA memory with different direction " + tail,
        PFX + "device driver syncs device read-only DMA memory for cpu " + tail]
    b = d.dma_map_phys(0x30_0000, 4096, "from_device")
    d.dma_mapping_error(b)
    d.dma_sync_single_for_device(b, 4096, "to_device")
    assert "device write-only DMA memory to device" in d.errors[-1]
    d.dma_unmap_phys(a, 8192, "to_device")
    d.dma_unmap_phys(b, 4096, "from_device")
    m = d.dma_map(rs((0x50_0000, 4096)), "from_device")
    d.dma_unmap(m)
    n = len(d.errors)
    d.dma_sync_for_cpu(m)                                    # sync after unmap
    assert "tries to sync DMA memory it has not allocated" in d.errors[n]
    assert idle(d)


def test_overlapping_writable_mappings_and_read_only_overlap():
    d = dbg()
    a = d.dma_map_phys(0x10_0000, 4096, "from_device")
    b = d.dma_map_phys(0x10_0020, 64, "bidirectional")       # same 64-byte cacheline
    assert d.errors == [PFX + "cacheline tracking EEXIST, overlapping mappings aren't "
                              "supported"]
    c = d.dma_map_phys(0x10_0000, 4096, "to_device")         # device only reads: allowed
    assert len(d.errors) == 1
    for x, n, dr in ((a, 4096, "from_device"), (b, 64, "bidirectional"),
                     (c, 4096, "to_device")):
        d.dma_mapping_error(x)
        d.dma_unmap_phys(x, n, dr)
    assert not d.active_cachelines and idle(d)


def test_leaks_at_driver_unbind():
    d = dbg()
    d.dma_map(rs((0x20_0000, 4096), (0x40_0000, 4096)), "to_device")
    a = d.dma_map_phys(0x60_0000, 512, "from_device")
    assert d.driver_unbind() == 3
    assert d.errors[-1] == (
        PFX + "device driver has pending DMA allocations while released from device "
              "[count=3]\nOne of leaked entries details: "
              f"[device address=0x{a:016x}] [size=512 bytes] [mapped with DMA_FROM_DEVICE] "
              "[mapped as single]")


def test_sg_segment_checks_catch_a_backend_that_ignores_limits():
    d = dbg(max_seg_size=4096, seg_boundary_mask=0xFFFF)
    # dma_map cuts the list for the device, so a correct backend passes the checks
    m = d.dma_map(rs((0xF000, 0x3000)), "to_device")
    assert d.errors == [] and list(m.length) == [4096, 4096, 4096]
    d.dma_unmap(m)
    d.dev.max_seg_size = 2048                                # limits shrink after mapping
    m = d.dma_map(rs((0x20_0000, 2048)), "to_device")
    d.dev.max_seg_size = 1024
    d._check_sg_segment(int(m.dma_addr[0]), 2048)
    d._check_sg_segment(0xFF00, 0x200)
    assert d.errors == [
        PFX + "mapping sg segment longer than device claims to support [len=2048] [max=1024]",
        PFX + "mapping sg segment across boundary [start=0x000000000000ff00] "
              "[end=0x00000000000100ff] [boundary=0x000000000000ffff]"]
    d.dma_unmap(m)


@pytest.mark.parametrize("bad", ["sideways", 7])
def test_bad_direction_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="bad DMA direction"):
        dbg().dma_unmap_phys(0x1000, 4096, bad)
