"""``iommu_dma_ops`` (drivers/iommu/dma-iommu.c): the DMA API through an IOMMU domain.

Wraps :mod:`phyrlab.iommu.dma_iommu` (page table, IOVA allocator, IOTLB policy) with the
device-facing parts of dma-iommu.c, read at the stored file (a 2026 version with
``iommu_dma_map_phys``) and checked against v6.2's ``iommu_dma_map_page``:

- ``dev_use_swiotlb`` (untrusted devices, ``pci_dev->untrusted``) and ``iova_unaligned(iovad,
  phys, size)``: the buffer is bounced through swiotlb into a granule-aligned slot
  (v6.2: ``swiotlb_tbl_map_single(dev, phys, size, iova_align(size), iova_mask, dir)``) so the
  device never sees the rest of a partly used page; if mapping the bounce buffer fails the
  slots are given back;
- ``iommu_dma_map_sg``: untrusted devices take ``iommu_dma_map_sg_swiotlb`` (one
  ``map_phys`` per entry, -EIO after unwinding); others get one IOVA range for the whole list;
- ``__iommu_dma_map``: "Unsupported alignment constraint" when ``min_align_mask`` exceeds the
  IOVA granule mask;
- ``iommu_dma_max_mapping_size``: ``swiotlb_max_mapping_size`` for untrusted devices;
  ``iommu_dma_get_merge_boundary``: the granule - 1;
- syncs (``iommu_dma_sync_single_for_*``) look the physical address up
  (``iommu_iova_to_phys``) and copy only for swiotlb buffers.
Counters: ``pte_writes`` and ``iotlb_flushes`` (range syncs + whole-domain flushes) come from
the domain's page table; ``iova_allocs`` counts IOVA ranges taken.
Simplified: no P2P bus-address segments; ``dma_kmalloc_needs_bounce`` (non-coherent small
kmalloc buffers) is not modelled, only untrusted devices bounce.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from phyrlab.dma.ops import DmaMapOps, SgCookie, check_direction, dma_limit, register_family
from phyrlab.dma.swiotlb import swiotlb_max_mapping_size
from phyrlab.errors import DmaMappingError
from phyrlab.units import U64_MAX

U64 = np.uint64
_PROT = {"bidirectional": 3, "to_device": 1, "from_device": 2}   # IOMMU_READ 1, IOMMU_WRITE 2


def _dma_iommu():
    from phyrlab.iommu import dma_iommu

    return dma_iommu


class IommuDma(DmaMapOps):
    """``iommu_dma_ops`` over one ``IommuDmaDomain`` (``domain=``, or ``fmt=``/``strict=``)."""

    name = "iommu_dma_ops"
    file = "drivers/iommu/dma-iommu.c"
    family = "iommu_dma"
    coalesces = True

    def __init__(self, entry=None, *, domain: Any = None, fmt: str = "x86_64",
                 strict: bool = True, **params: Any):
        super().__init__(entry, **params)
        self.domain = domain if domain is not None else _dma_iommu().IommuDmaDomain(
            fmt, strict=strict)
        self.granule = int(self.domain.granule)

    # -- bookkeeping -----------------------------------------------------------------------
    def _pt_counts(self) -> tuple[int, int, int]:
        s = self.domain.pt.stats
        return s.pte_writes, s.iotlb_syncs, s.iotlb_flush_all

    def _account(self, before: tuple[int, int, int]) -> None:
        after = self._pt_counts()
        if after[0] != before[0]:
            self.count("pte_writes", after[0] - before[0])
        flushes = (after[1] - before[1]) + (after[2] - before[2])
        if flushes:
            self.count("iotlb_flushes", flushes)

    def resources(self) -> dict[str, int]:
        """Live IOVA pages (range caches and flush-queue entries left out), mapped bytes."""
        d = self.domain
        pending = {pfn for pfn, _ in d.iotlb.pending()}
        pages = sum(hi - lo + 1 for lo, hi in d.iovad.live_ranges() if lo not in pending)
        return {"iova_pages": pages, "mapped_bytes": int(d.pt.stats.mapped_bytes)}

    def _unaligned(self, paddr: int, size: int) -> bool:
        return bool((paddr | size) & (self.granule - 1))

    # -- single range ----------------------------------------------------------------------
    def map_phys(self, dev, paddr: int, size: int, direction: str) -> int:
        """``iommu_dma_map_phys`` (v6.2 ``iommu_dma_map_page``)."""
        check_direction(direction)
        di = _dma_iommu()
        if dev.min_align_mask > self.granule - 1:
            raise DmaMappingError("ENOMEM", f"{dev.name}: Unsupported alignment constraint "
                                            f"(min_align_mask {dev.min_align_mask:#x})")
        phys, mem = paddr, None
        if dev.untrusted and self._unaligned(paddr, size):
            mem = dev.dma_io_tlb_mem
            if mem is None:
                raise DmaMappingError("ENOMEM", f"{dev.name}: DMA bounce buffers are inactive, "
                                                "unable to map unaligned transaction.")
            aligned = (size + self.granule - 1) & ~(self.granule - 1)
            phys = mem.tbl_map_single(dev, paddr, size, aligned, self.granule - 1, direction)
        if not dev.coherent:
            self.count("cache_maint_bytes", size)
        before = self._pt_counts()
        try:
            dma = di.iommu_dma_map_phys(self.domain, phys, size, dma_limit(dev),
                                        _PROT[direction], dev.is_pci)
        except DmaMappingError:
            if mem is not None:
                mem.tbl_unmap_single(dev, phys, size, direction, skip_cpu_sync=True)
            raise
        finally:
            self._account(before)
        self.count("iova_allocs")
        return dma

    def unmap_phys(self, dev, dma_addr: int, size: int, direction: str) -> None:
        """``iommu_dma_unmap_phys``: unmap, then release a bounce buffer."""
        check_direction(direction)
        phys = self.domain.pt.iova_to_phys(dma_addr)
        if not phys:
            raise ValueError(f"{dev.name}: unmap of DMA address {dma_addr:#x}, which is not "
                             "mapped")
        if not dev.coherent:
            self.count("cache_maint_bytes", size)
        before = self._pt_counts()
        try:
            _dma_iommu().iommu_dma_unmap_phys(self.domain, dma_addr, size)
        finally:
            self._account(before)
        if dev.has_io_tlb_mem() and dev.dma_io_tlb_mem.is_swiotlb_buffer(phys):
            dev.dma_io_tlb_mem.tbl_unmap_single(dev, phys, size, direction)

    # -- lists -----------------------------------------------------------------------------
    def map_sg(self, dev, addr: np.ndarray, length: np.ndarray, direction: str
               ) -> tuple[np.ndarray, np.ndarray, Any]:
        """``iommu_dma_map_sg``: one IOVA range, or per entry for an untrusted device."""
        check_direction(direction)
        addr = np.asarray(addr, dtype=U64)
        length = np.asarray(length, dtype=U64)
        self.count("entries_walked", addr.size)
        if dev.untrusted:
            return self._map_sg_swiotlb(dev, addr, length, direction)
        if not dev.coherent:
            self.count("cache_maint_bytes", int(length.sum(dtype=U64)))
        before = self._pt_counts()
        try:
            dma, dlen = _dma_iommu().iommu_dma_map_sg(
                self.domain, addr, length, max_seg_size=dev.max_seg_size,
                seg_boundary_mask=dev.seg_boundary_mask, dma_limit=dma_limit(dev),
                dev_is_pci=dev.is_pci)
        finally:
            self._account(before)
        self.count("iova_allocs")
        return dma, dlen, SgCookie(bounced=np.zeros(dma.size, dtype=bool), data="iova")

    def _map_sg_swiotlb(self, dev, addr, length, direction):
        """``iommu_dma_map_sg_swiotlb``: each entry through ``map_phys``; -EIO on failure."""
        out = np.empty(addr.size, dtype=U64)
        bounced = np.zeros(addr.size, dtype=bool)
        for i in range(addr.size):
            a, n = int(addr[i]), int(length[i])
            try:
                out[i] = self.map_phys(dev, a, n, direction)
            except DmaMappingError as exc:
                for j in range(i):   # iommu_dma_unmap_sg_swiotlb(..., SKIP_CPU_SYNC)
                    self._unmap_skip_sync(dev, int(out[j]), int(length[j]), direction)
                raise DmaMappingError("EIO", f"entry {i}: {exc}") from exc
            bounced[i] = self._unaligned(a, n)
        return out, length.copy(), SgCookie(bounced=bounced, data="swiotlb")

    def _unmap_skip_sync(self, dev, dma_addr, size, direction):
        phys = self.domain.pt.iova_to_phys(dma_addr)
        before = self._pt_counts()
        _dma_iommu().iommu_dma_unmap_phys(self.domain, dma_addr, size)
        self._account(before)
        if dev.has_io_tlb_mem() and dev.dma_io_tlb_mem.is_swiotlb_buffer(phys):
            dev.dma_io_tlb_mem.tbl_unmap_single(dev, phys, size, direction, skip_cpu_sync=True)

    def unmap_sg(self, dev, dma_addr: np.ndarray, dma_len: np.ndarray, direction: str,
                 cookie: Any) -> None:
        """``iommu_dma_unmap_sg``: one unmap over the IOVA range, or per entry (swiotlb)."""
        check_direction(direction)
        if getattr(cookie, "data", None) == "swiotlb":
            for a, n in zip(dma_addr.tolist(), dma_len.tolist(), strict=True):
                self.unmap_phys(dev, a, n, direction)
            return
        if not dev.coherent:
            self.count("cache_maint_bytes", int(np.asarray(dma_len).sum(dtype=U64)))
        before = self._pt_counts()
        try:
            _dma_iommu().iommu_dma_unmap_sg(self.domain, dma_addr, dma_len)
        finally:
            self._account(before)

    # -- sync ------------------------------------------------------------------------------
    def _sync(self, dev, dma_addr, dma_len, direction, for_cpu: bool) -> int:
        check_direction(direction)
        dma_addr = np.atleast_1d(np.asarray(dma_addr, dtype=U64))
        dma_len = np.atleast_1d(np.asarray(dma_len, dtype=U64))
        if not dev.coherent:
            self.count("cache_maint_bytes", int(dma_len.sum(dtype=U64)))
        if not dev.untrusted or not dev.has_io_tlb_mem():
            return 0
        phys = self.domain.pt.iova_to_phys_many(dma_addr)
        return dev.dma_io_tlb_mem.sync_bounced(dev, phys, dma_len, direction, for_cpu)

    def sync_for_cpu(self, dev, dma_addr, dma_len, direction) -> int:
        """``iommu_dma_sync_single_for_cpu`` / ``iommu_dma_sync_sg_for_cpu``."""
        return self._sync(dev, dma_addr, dma_len, direction, True)

    def sync_for_device(self, dev, dma_addr, dma_len, direction) -> int:
        """``iommu_dma_sync_single_for_device`` / ``iommu_dma_sync_sg_for_device``."""
        return self._sync(dev, dma_addr, dma_len, direction, False)

    def bounced_mask(self, dev, dma_addr: np.ndarray, dma_len: np.ndarray) -> np.ndarray:
        """Entries whose IOVA translates into the device's swiotlb pool."""
        if not dev.has_io_tlb_mem():
            return np.zeros(len(dma_addr), dtype=bool)
        phys = self.domain.pt.iova_to_phys_many(np.asarray(dma_addr, dtype=U64))
        return dev.dma_io_tlb_mem.is_swiotlb_buffer_array(phys)

    def max_mapping_size(self, dev) -> int:
        """``iommu_dma_max_mapping_size``."""
        return swiotlb_max_mapping_size(dev) if dev.untrusted else U64_MAX

    def get_merge_boundary(self, dev) -> int:
        """``iommu_dma_get_merge_boundary``: smallest page size - 1."""
        return self.granule - 1


def _factory(entry, **params) -> IommuDma:
    return IommuDma(entry, **params)


register_family("iommu_dma", _factory)
