"""dma-direct: the path of a device with no ``dma_map_ops`` (kernel/dma/direct.c, direct.h).

Mirrors ``dma_direct_map_page`` / ``dma_direct_unmap_page`` (kernel/dma/direct.h, stored
copy of the v6.x form with ``is_swiotlb_force_bounce``), ``dma_direct_map_sg`` /
``dma_direct_unmap_sg``, ``dma_direct_sync_single_for_{cpu,device}`` and
``dma_direct_max_mapping_size`` (kernel/dma/direct.c, as of v6.2). The stored
include/linux/dma-direct.h is an old (``dma_pfn_offset``) copy; ``translate_phys_to_dma`` and
the 64-bit ``dma_capable`` were read in a v5.10+ copy of that header found by search:

- the DMA address is ``phys_to_dma(dev, phys)`` (``dma_range_map`` offsets, else identity);
- bounce through swiotlb when ``is_swiotlb_force_bounce(dev)`` or when ``dma_capable()``
  fails (``addr + size - 1 > min_not_zero(dma_mask, bus_dma_limit)``, or no
  ``dma_range_map`` region holds the address) and the device has a swiotlb pool;
- not capable and no swiotlb: "DMA addr %pad+%zu overflow (mask %llx, bus limit %llx)." and
  ``DMA_MAPPING_ERROR`` (``-ENOMEM`` from ``dma_mapping_error``); ``dma_direct_map_sg``
  unmaps what it mapped and returns ``-EIO``;
- non-coherent devices: ``arch_sync_dma_for_device`` on every byte mapped (counted as
  ``cache_maint_bytes``).
Simplified: no P2P (``pci_p2pdma_map_segment``), no memory-encryption bit; the capable check
and address translation are vectorised over the list; bounces are taken and given back in
runs (``swiotlb_map_many``, ``IoTlbMem.unmap_many``) with the per-entry outcome.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from phyrlab.dma.ops import DmaMapOps, SgCookie, check_direction, dma_limit, register_family
from phyrlab.dma.swiotlb import (
    dma_capable,
    is_swiotlb_active,
    is_swiotlb_force_bounce,
    swiotlb_map,
    swiotlb_map_many,
    swiotlb_max_mapping_size,
)
from phyrlab.errors import DmaMappingError
from phyrlab.units import DMA_MAPPING_ERROR, U64_MAX

U64 = np.uint64


def dma_capable_array(dev, dma_addr: np.ndarray, size: np.ndarray) -> np.ndarray:
    """``dma_capable`` of every (address, size) pair, without uint64 wrap-around."""
    dma_addr = np.asarray(dma_addr, dtype=U64)
    size = np.asarray(size, dtype=U64)
    if dma_addr.size:
        top = int(dma_addr.max())
        if top != DMA_MAPPING_ERROR and top + int(size.max()) - 1 <= dma_limit(dev):
            return np.ones(dma_addr.size, dtype=bool)     # every end is below the limit
        if int(dma_addr.min()) > dma_limit(dev):
            return np.zeros(dma_addr.size, dtype=bool)    # every start is above it
    limit = U64(dma_limit(dev))
    # end = addr + size - 1 <= limit  <=>  size - 1 <= limit - addr  (when addr <= limit)
    return (dma_addr != U64(DMA_MAPPING_ERROR)) & (dma_addr <= limit) & (
        size - U64(1) <= limit - np.minimum(dma_addr, limit))


class DmaDirect(DmaMapOps):
    """dma-direct with swiotlb (kernel/dma/direct.c): ``dev->dma_ops == NULL``."""

    name = "dma_direct"
    file = "kernel/dma/direct.c"
    family = "direct"

    def map_phys(self, dev, paddr: int, size: int, direction: str) -> int:
        """``dma_direct_map_page`` (``dma_direct_map_phys`` in later kernels)."""
        check_direction(direction)
        dma_addr = dev.phys_to_dma(paddr)
        if is_swiotlb_force_bounce(dev):
            return self._bounce(dev, paddr, size, direction)
        if not dma_capable(dev, dma_addr, size, True):
            if is_swiotlb_active(dev):
                return self._bounce(dev, paddr, size, direction)
            raise DmaMappingError("ENOMEM", self._overflow(dev, dma_addr, size))
        if not dev.coherent:
            self.count("cache_maint_bytes", size)
        return dma_addr

    def _bounce(self, dev, paddr: int, size: int, direction: str) -> int:
        dma_addr = swiotlb_map(dev, paddr, size, direction)
        if not dev.coherent:
            self.count("cache_maint_bytes", size)
        return dma_addr

    @staticmethod
    def _overflow(dev, dma_addr: int, size: int) -> str:
        return (f"{dev.name}: DMA addr {dma_addr:#x}+{size} overflow (mask {dev.dma_mask:#x}, "
                f"bus limit {dev.bus_dma_limit:#x}).")

    def unmap_phys(self, dev, dma_addr: int, size: int, direction: str) -> None:
        """``dma_direct_unmap_page``: sync for the CPU, release a bounce buffer."""
        check_direction(direction)
        phys = dev.dma_to_phys(dma_addr)
        if not dev.coherent:
            self.count("cache_maint_bytes", size)
        mem = dev.dma_io_tlb_mem if dev.has_io_tlb_mem() else None
        if mem is not None and mem.is_swiotlb_buffer(phys):
            mem.tbl_unmap_single(dev, phys, size, direction)

    def map_sg(self, dev, addr: np.ndarray, length: np.ndarray, direction: str
               ) -> tuple[np.ndarray, np.ndarray, Any]:
        """``dma_direct_map_sg``: one DMA entry per input entry; -EIO after unwinding."""
        check_direction(direction)
        addr = np.asarray(addr, dtype=U64)
        length = np.asarray(length, dtype=U64)
        self.count("entries_walked", len(addr))
        dma = dev.phys_to_dma_array(addr)
        if is_swiotlb_force_bounce(dev):
            need = np.ones(len(addr), dtype=bool)
        else:
            need = ~dma_capable_array(dev, dma, length)
        nb = int(np.count_nonzero(need))
        out = dma.copy() if (0 < nb < len(addr) or (nb == 0 and dma is addr)) else dma
        if nb:
            if not is_swiotlb_active(dev):
                i = int(np.argmax(need))
                raise DmaMappingError("EIO", f"entry {i}: " + self._overflow(
                    dev, int(dma[i]), int(length[i])))
            # swiotlb_map of each in order (runs of them at once, see swiotlb_map_many)
            idx = np.flatnonzero(need) if nb < len(addr) else None
            b_addr, b_len = (addr, length) if idx is None else (addr[idx], length[idx])
            dma_b, exc = swiotlb_map_many(dev, b_addr, b_len, direction)
            if exc is not None:
                # dma_direct_unmap_sg(..., DMA_ATTR_SKIP_CPU_SYNC) of what was mapped
                k = len(dma_b)
                dev.dma_io_tlb_mem.unmap_many(dev, dev.dma_to_phys_array(dma_b), b_len[:k],
                                              direction, skip_cpu_sync=True)
                i = k if idx is None else int(idx[k])
                raise DmaMappingError("EIO", f"entry {i}: {exc}") from exc
            if idx is None:
                out = dma_b
            else:
                out[idx] = dma_b
        if not dev.coherent:
            self.count("cache_maint_bytes", int(length.sum(dtype=U64)))
        return out, length.copy(), SgCookie(bounced=need)

    def unmap_sg(self, dev, dma_addr: np.ndarray, dma_len: np.ndarray, direction: str,
                 cookie: Any) -> None:
        """``dma_direct_unmap_sg``: release the bounce buffers, sync non-coherent memory."""
        check_direction(direction)
        if not dev.coherent:
            self.count("cache_maint_bytes", int(np.asarray(dma_len).sum(dtype=U64)))
        if not dev.has_io_tlb_mem():
            return
        mem = dev.dma_io_tlb_mem
        phys = dev.dma_to_phys_array(dma_addr)
        sel = mem.is_swiotlb_buffer_array(phys)
        if sel.any():
            mem.unmap_many(dev, phys[sel], np.asarray(dma_len, dtype=U64)[sel], direction)

    def _sync(self, dev, dma_addr, dma_len, direction, for_cpu: bool) -> int:
        check_direction(direction)
        dma_addr = np.atleast_1d(np.asarray(dma_addr, dtype=U64))
        dma_len = np.atleast_1d(np.asarray(dma_len, dtype=U64))
        if not dev.coherent:
            self.count("cache_maint_bytes", int(dma_len.sum(dtype=U64)))
        if not dev.has_io_tlb_mem():
            return 0
        phys = dev.dma_to_phys_array(dma_addr)
        return dev.dma_io_tlb_mem.sync_bounced(dev, phys, dma_len, direction, for_cpu)

    def sync_for_cpu(self, dev, dma_addr, dma_len, direction) -> int:
        """``dma_direct_sync_single_for_cpu`` / ``dma_direct_sync_sg_for_cpu``."""
        return self._sync(dev, dma_addr, dma_len, direction, True)

    def sync_for_device(self, dev, dma_addr, dma_len, direction) -> int:
        """``dma_direct_sync_single_for_device`` / ``dma_direct_sync_sg_for_device``."""
        return self._sync(dev, dma_addr, dma_len, direction, False)

    def bounced_mask(self, dev, dma_addr: np.ndarray, dma_len: np.ndarray) -> np.ndarray:
        """``is_swiotlb_buffer(dma_to_phys(addr))`` of every entry."""
        if not dev.has_io_tlb_mem():
            return np.zeros(len(dma_addr), dtype=bool)
        return dev.dma_io_tlb_mem.is_swiotlb_buffer_array(dev.dma_to_phys_array(dma_addr))

    def max_mapping_size(self, dev) -> int:
        """``dma_direct_max_mapping_size``: the swiotlb limit if it may have to bounce."""
        if is_swiotlb_active(dev) and (dev.dma_addressing_limited()
                                       or is_swiotlb_force_bounce(dev)):
            return swiotlb_max_mapping_size(dev)
        return U64_MAX


def _factory(entry, **params) -> DmaDirect:
    return DmaDirect(entry, **params)


register_family("direct", _factory)
