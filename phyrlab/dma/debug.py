"""dma-debug: the misuse checks of kernel/dma/debug.c (``CONFIG_DMA_API_DEBUG``).

:class:`DmaDebug` wraps one device's DMA API calls, keeps a ``struct dma_debug_entry`` per
mapped DMA segment and reports misuse with the kernel's ``err_printk`` wording
("DMA-API: <driver> <device>: ..."), read in the stored kernel/dma/debug.c:

- ``check_unmap``: "tries to free DMA memory it has not allocated" (never mapped, or a double
  unmap), "tries to free an invalid DMA memory address" (``DMA_MAPPING_ERROR``), "frees DMA
  memory with different size", "with wrong function" (single vs scather-gather, the
  kernel's spelling), "DMA sg list with different entry count", "with different direction",
  "failed to check map error" (``dma_mapping_error()`` never called on a ``dma_map_phys``);
- ``check_sync``: "tries to sync DMA memory it has not allocated" (also for a sync running
  past the mapping: ``bucket_find_contain`` only finds an entry holding the whole sync, so the
  "syncs DMA memory outside allocated range" branch cannot fire), "with different
  direction", "device read-only DMA memory for cpu", "device write-only DMA memory to device";
- ``add_dma_entry``: "cacheline tracking EEXIST, overlapping mappings aren't supported"
  (two live mappings that the device may write start in the same cacheline);
- ``check_sg_segment`` (``CONFIG_DMA_API_DEBUG_SG``): "mapping sg segment longer than device
  claims to support", "mapping sg segment across boundary";
- ``dma_debug_device_change`` on driver unbind: "device driver has pending DMA allocations
  while released from device [count=%d]" with one leaked entry's details.
Entries are found as ``__hash_bucket_find`` does: several entries at one DMA address are
told apart by size, type, direction and entry count; with no perfect fit and more than one
candidate, none is found. Unlike the kernel, which unmaps whatever it is told, a reported
misuse never corrupts the model: an unmap of something not mapped does nothing, and a wrong
size or direction is reported and then the recorded mapping is undone.
Simplified: one device per wrapper; ``L1_CACHE_SHIFT`` 6; every error is kept (the kernel
prints the first only unless ``all_errors`` is set).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from phyrlab.dma import mapping
from phyrlab.dma.ops import check_direction
from phyrlab.errors import DmaMappingError
from phyrlab.units import DMA_MAPPING_ERROR, PAGE_SHIFT

L1_CACHE_SHIFT = 6
DIR2NAME = {"bidirectional": "DMA_BIDIRECTIONAL", "to_device": "DMA_TO_DEVICE",
            "from_device": "DMA_FROM_DEVICE", "none": "DMA_NONE"}
TYPE2NAME = {"single": "single", "sg": "scather-gather"}   # sic, as in debug.c


@dataclass(eq=False)
class DmaDebugEntry:
    """``struct dma_debug_entry``."""

    dev_addr: int
    size: int
    type: str
    direction: str
    paddr: int
    sg_call_ents: int = 0
    sg_mapped_ents: int = 0
    map_err_checked: bool | None = None     # None: MAP_ERR_CHECK_NOT_APPLICABLE
    owner: Any = field(default=None, repr=False, compare=False)   # the DmaList of an sg entry

    @property
    def cacheline(self) -> int:
        """``to_cacheline_number``."""
        pfn, off = self.paddr >> PAGE_SHIFT, self.paddr & ((1 << PAGE_SHIFT) - 1)
        return (pfn << (PAGE_SHIFT - L1_CACHE_SHIFT)) + (off >> L1_CACHE_SHIFT)


class DmaDebug:
    """The DMA API of ``dev`` with dma-debug's bookkeeping and checks."""

    def __init__(self, dev, driver: str = "phyrlab"):
        self.dev = dev
        self.driver = driver
        self.entries: dict[int, list[DmaDebugEntry]] = {}
        self.active_cachelines: dict[int, int] = {}    # cacheline -> overlap count
        self.errors: list[str] = []

    # -- reporting -------------------------------------------------------------------------
    @property
    def error_count(self) -> int:
        """``error_count`` (debugfs dma-api/error_count)."""
        return len(self.errors)

    def _err(self, text: str) -> None:
        self.errors.append(f"DMA-API: {self.driver} {self.dev.name}: {text}")

    def __len__(self) -> int:
        return sum(len(v) for v in self.entries.values())

    # -- the hash ----------------------------------------------------------------------------
    def _add(self, e: DmaDebugEntry) -> None:
        self.entries.setdefault(e.dev_addr, []).append(e)
        if e.direction != "to_device":                 # active_cacheline_insert
            cln = e.cacheline
            if cln in self.active_cachelines:
                self.active_cachelines[cln] += 1
                self._err("cacheline tracking EEXIST, overlapping mappings aren't supported")
            else:
                self.active_cachelines[cln] = 0

    def _del(self, e: DmaDebugEntry) -> None:
        lst = self.entries[e.dev_addr]
        lst.remove(e)
        if not lst:
            del self.entries[e.dev_addr]
        if e.direction != "to_device":                 # active_cacheline_remove
            cln = e.cacheline
            if self.active_cachelines[cln] == 0:
                del self.active_cachelines[cln]
            else:
                self.active_cachelines[cln] -= 1

    @staticmethod
    def _best(cands: list[DmaDebugEntry], ref: DmaDebugEntry) -> DmaDebugEntry | None:
        """``__hash_bucket_find``: perfect fit, else the only match, else nothing."""
        best, last = None, -1
        for e in cands:
            lvl = ((e.size == ref.size) + (e.type == ref.type) + (e.direction == ref.direction)
                   + (e.sg_call_ents == ref.sg_call_ents))
            if lvl == 4:
                return e
            if lvl > last:
                best, last = e, lvl
        return best if len(cands) == 1 else None

    def _find_exact(self, ref: DmaDebugEntry) -> DmaDebugEntry | None:
        return self._best(self.entries.get(ref.dev_addr, []), ref)

    def _find_contain(self, ref: DmaDebugEntry) -> DmaDebugEntry | None:
        cands = [e for lst in self.entries.values() for e in lst
                 if e.dev_addr <= ref.dev_addr and e.dev_addr + e.size >= ref.dev_addr + ref.size]
        return self._best(cands, ref) if cands else None

    # -- checks ------------------------------------------------------------------------------
    def _check_unmap(self, ref: DmaDebugEntry) -> DmaDebugEntry | None:
        """``check_unmap``: report, and give back the entry to undo (or None)."""
        e = self._find_exact(ref)
        a = f"0x{ref.dev_addr:016x}"
        if e is None:
            if ref.dev_addr == DMA_MAPPING_ERROR:
                self._err("device driver tries to free an invalid DMA memory address")
            else:
                self._err(f"device driver tries to free DMA memory it has not allocated "
                          f"[device address={a}] [size={ref.size} bytes]")
            return None
        if ref.size != e.size:
            self._err(f"device driver frees DMA memory with different size [device address={a}]"
                      f" [map size={e.size} bytes] [unmap size={ref.size} bytes]")
        if ref.type != e.type:
            self._err(f"device driver frees DMA memory with wrong function [device address={a}]"
                      f" [size={ref.size} bytes] [mapped as {TYPE2NAME[e.type]}] "
                      f"[unmapped as {TYPE2NAME[ref.type]}]")
        if ref.sg_call_ents and ref.type == "sg" and ref.sg_call_ents != e.sg_call_ents:
            self._err(f"device driver frees DMA sg list with different entry count "
                      f"[map count={e.sg_call_ents}] [unmap count={ref.sg_call_ents}]")
        if ref.direction != e.direction:
            self._err(f"device driver frees DMA memory with different direction "
                      f"[device address={a}] [size={ref.size} bytes] "
                      f"[mapped with {DIR2NAME[e.direction]}] "
                      f"[unmapped with {DIR2NAME[ref.direction]}]")
        if e.map_err_checked is False:
            self._err(f"device driver failed to check map error[device address={a}] "
                      f"[size={ref.size} bytes] [mapped as {TYPE2NAME[e.type]}]")
        self._del(e)
        return e

    def _check_sync(self, ref: DmaDebugEntry, to_cpu: bool) -> None:
        """``check_sync``."""
        e = self._find_contain(ref)
        a = f"0x{ref.dev_addr:016x}"
        if e is None:
            self._err(f"device driver tries to sync DMA memory it has not allocated "
                      f"[device address={a}] [size={ref.size} bytes]")
            return
        if ref.size > e.size:
            self._err(f"device driver syncs DMA memory outside allocated range "
                      f"[device address=0x{e.dev_addr:016x}] [allocation size={e.size} bytes]"
                      f" [sync offset+size={ref.size}]")
        if e.direction == "bidirectional":
            return
        tail = (f"[device address={a}] [size={e.size} bytes] [mapped with "
                f"{DIR2NAME[e.direction]}] [synced with {DIR2NAME[ref.direction]}]")
        if ref.direction != e.direction:
            self._err(f"device driver syncs DMA memory with different direction {tail}")
        if to_cpu and e.direction != "from_device" and ref.direction != "to_device":
            self._err(f"device driver syncs device read-only DMA memory for cpu {tail}")
        if not to_cpu and e.direction != "to_device" and ref.direction != "from_device":
            self._err(f"device driver syncs device write-only DMA memory to device {tail}")
        if ref.sg_call_ents and ref.type == "sg" and ref.sg_call_ents != e.sg_call_ents:
            self._err(f"device driver syncs DMA sg list with different entry count "
                      f"[map count={e.sg_call_ents}] [sync count={ref.sg_call_ents}]")

    def _check_sg_segment(self, dma_addr: int, length: int) -> None:
        """``check_sg_segment`` (``CONFIG_DMA_API_DEBUG_SG``)."""
        max_seg, boundary = self.dev.max_seg_size, self.dev.seg_boundary_mask
        if length > max_seg:
            self._err(f"mapping sg segment longer than device claims to support "
                      f"[len={length}] [max={max_seg}]")
        end = dma_addr + length - 1
        if (dma_addr ^ end) & ~boundary & ((1 << 64) - 1):
            self._err(f"mapping sg segment across boundary [start=0x{dma_addr:016x}] "
                      f"[end=0x{end:016x}] [boundary=0x{boundary:016x}]")

    # -- single ranges -----------------------------------------------------------------------
    def dma_map_phys(self, paddr: int, size: int, direction: str = "bidirectional") -> int:
        """``dma_map_phys`` + ``debug_dma_map_phys``: ``DMA_MAPPING_ERROR`` on failure."""
        try:
            dma = mapping.dma_map_phys(self.dev, paddr, size, direction)
        except DmaMappingError:
            return DMA_MAPPING_ERROR
        self._add(DmaDebugEntry(dma, int(size), "single", direction, int(paddr),
                                map_err_checked=False))
        return dma

    def dma_mapping_error(self, dma_addr: int) -> int:
        """``dma_mapping_error`` + ``debug_dma_mapping_error``: mark the entry checked."""
        for e in self.entries.get(int(dma_addr), []):
            if e.map_err_checked is False:
                e.map_err_checked = True
                break
        return mapping.dma_mapping_error(self.dev, dma_addr)

    def dma_unmap_phys(self, dma_addr: int, size: int, direction: str = "bidirectional") -> None:
        """``dma_unmap_phys`` + ``debug_dma_unmap_phys``."""
        check_direction(direction)
        e = self._check_unmap(DmaDebugEntry(int(dma_addr), int(size), "single", direction, 0))
        if e is None:
            return
        if e.type == "single":
            mapping.dma_unmap_phys(self.dev, e.dev_addr, e.size, e.direction)
        else:                                    # undo the whole list it belonged to
            self._unmap_owner(e)

    def dma_sync_single_for_cpu(self, dma_addr: int, size: int, direction: str) -> int:
        """``dma_sync_single_for_cpu`` + ``debug_dma_sync_single_for_cpu``."""
        check_direction(direction)
        self._check_sync(DmaDebugEntry(int(dma_addr), int(size), "single", direction, 0), True)
        return mapping.dma_sync_single_for_cpu(self.dev, dma_addr, size, direction)

    def dma_sync_single_for_device(self, dma_addr: int, size: int, direction: str) -> int:
        """``dma_sync_single_for_device`` + ``debug_dma_sync_single_for_device``."""
        check_direction(direction)
        self._check_sync(DmaDebugEntry(int(dma_addr), int(size), "single", direction, 0), False)
        return mapping.dma_sync_single_for_device(self.dev, dma_addr, size, direction)

    # -- lists -------------------------------------------------------------------------------
    def dma_map(self, ranges, direction: str = "bidirectional") -> mapping.DmaList:
        """``dma_map_sgtable`` + ``debug_dma_map_sg``: one entry per mapped DMA segment."""
        check_direction(direction)
        addr, length = mapping._as_ranges(ranges)
        addr, length = mapping.split_for_device(addr, length, self.dev.max_seg_size,
                                                self.dev.seg_boundary_mask)
        dl = mapping.dma_map(self.dev, (addr, length), direction, split=False)
        nents, mapped = int(addr.size), len(dl)
        for i in range(mapped):
            d, n = int(dl.dma_addr[i]), int(dl.length[i])
            # debug_dma_map_sg records the CPU side of sg entry i for DMA segment i
            e = DmaDebugEntry(d, n, "sg", direction, int(addr[min(i, nents - 1)]), nents, mapped,
                              owner=dl)
            self._check_sg_segment(d, n)
            self._add(e)
        return dl

    def dma_unmap(self, dl: mapping.DmaList, direction: str | None = None,
                  nents: int | None = None) -> None:
        """``dma_unmap_sgtable`` + ``debug_dma_unmap_sg`` (``direction``/``nents`` as passed)."""
        direction = dl.direction if direction is None else direction
        check_direction(direction)
        found = []
        mapped_ents = 0
        for i in range(len(dl)):
            ref = DmaDebugEntry(int(dl.dma_addr[i]), int(dl.length[i]), "sg", direction, 0,
                                nents if nents is not None else self._nents(dl))
            if mapped_ents and i >= mapped_ents:
                break
            if i == 0:
                first = self._find_exact(ref)
                mapped_ents = first.sg_mapped_ents if first else 0
            e = self._check_unmap(ref)
            if e is not None:
                found.append(e)
        if found and dl.mapped:
            for e in self._entries_of(dl):     # a partial unmap still undoes the whole list
                self._del(e)
            mapping.dma_unmap(self.dev, dl)

    def _nents(self, dl) -> int:
        for lst in self.entries.values():
            for e in lst:
                if e.owner is dl:
                    return e.sg_call_ents
        return len(dl)

    def _entries_of(self, dl) -> list[DmaDebugEntry]:
        return [e for lst in self.entries.values() for e in lst
                if e.owner is dl]

    def _unmap_owner(self, e: DmaDebugEntry) -> None:
        dl = e.owner
        for other in self._entries_of(dl):
            self._del(other)
        if dl.mapped:
            mapping.dma_unmap(self.dev, dl)

    def dma_sync_for_cpu(self, dl: mapping.DmaList, direction: str | None = None) -> int:
        """``dma_sync_sgtable_for_cpu`` + ``debug_dma_sync_sg_for_cpu``."""
        return self._sync_list(dl, direction, True)

    def dma_sync_for_device(self, dl: mapping.DmaList, direction: str | None = None) -> int:
        """``dma_sync_sgtable_for_device`` + ``debug_dma_sync_sg_for_device``."""
        return self._sync_list(dl, direction, False)

    def _sync_list(self, dl, direction, to_cpu: bool) -> int:
        direction = dl.direction if direction is None else direction
        check_direction(direction)
        nents = self._nents(dl)
        for i in range(len(dl)):
            self._check_sync(DmaDebugEntry(int(dl.dma_addr[i]), int(dl.length[i]), "sg",
                                           direction, 0, nents), to_cpu)
        if not dl.mapped:
            return 0
        fn = self.dev.ops.sync_for_cpu if to_cpu else self.dev.ops.sync_for_device
        return fn(self.dev, dl.dma_addr, dl.length, dl.direction)

    # -- teardown ----------------------------------------------------------------------------
    def driver_unbind(self) -> int:
        """``dma_debug_device_change(BUS_NOTIFY_UNBOUND_DRIVER)``: report leaks; their count."""
        live = [e for lst in self.entries.values() for e in lst]
        if live:
            e = live[-1]
            self._err(f"device driver has pending DMA allocations while released from device "
                      f"[count={len(live)}]\nOne of leaked entries details: "
                      f"[device address=0x{e.dev_addr:016x}] [size={e.size} bytes] "
                      f"[mapped with {DIR2NAME[e.direction]}] [mapped as {TYPE2NAME[e.type]}]")
        return len(live)

    def dump_mappings(self) -> list[str]:
        """``debug_dma_dump_mappings``: one line per live entry."""
        return [f"{TYPE2NAME[e.type]} P={e.paddr:x} D={e.dev_addr:x} L={e.size:x} "
                f"{DIR2NAME[e.direction]}"
                for lst in self.entries.values() for e in lst]


__all__ = ["DmaDebug", "DmaDebugEntry"]
