"""``pl.dma.Device``: the DMA fields of ``struct device`` and the ops it maps through.

Mirrors the fields the DMA API reads (include/linux/device.h, include/linux/dma-mapping.h,
include/linux/dma-direct.h, read at the stored versions):

- ``dma_mask`` / ``coherent_dma_mask``: default ``DMA_BIT_MASK(32)``, what ``pci_setup_device``
  gives a PCI device before its driver calls ``dma_set_mask_and_coherent()``;
- ``bus_dma_limit``: 0 means none (``min_not_zero`` in ``dma_capable``);
- ``dma_range_map``: a list of ``struct bus_dma_region {cpu_start, dma_start, size}``;
  ``translate_phys_to_dma`` gives ``DMA_MAPPING_ERROR`` for an address outside every region
  "to make sure dma_capable fails";
- ``max_seg_size`` (``dma_get_max_seg_size``: 64 KiB when ``dma_parms`` is unset),
  ``seg_boundary_mask`` (``dma_get_seg_boundary``: ``ULONG_MAX`` when unset),
  ``min_align_mask`` (``dma_get_min_align_mask``: 0 when unset);
- ``coherent`` (``dev_is_dma_coherent``: x86 is always coherent), ``untrusted``
  (``pci_dev->untrusted``: external-facing ports; dma-iommu bounces their partial pages);
- ``dma_io_tlb_mem``: the swiotlb pool (``swiotlb_dev_init`` points every device at the
  default pool). Simplified: each Device gets its own pool unless one is passed in, so tests
  are independent; pass the same :class:`~phyrlab.dma.swiotlb.IoTlbMem` to share one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from phyrlab.dma.ops import DMA_DIRECT, OPS, DmaMapOps, dma_limit
from phyrlab.units import (
    DMA_BIT_MASK,
    DMA_MAPPING_ERROR,
    PAGE_SHIFT,
    SZ_64K,
    U32_MAX,
    U64_MAX,
    ULONG_MAX,
)

U64 = np.uint64


@dataclass(frozen=True)
class BusDmaRegion:
    """``struct bus_dma_region`` (include/linux/dma-direct.h)."""

    cpu_start: int
    dma_start: int
    size: int


def _check_u64(name: str, value: int, *, low: int = 0, high: int = U64_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"Device {name} must be an integer, got {value!r}")
    value = int(value)
    if not low <= value <= high:
        raise ValueError(f"Device {name} = {value:#x} is out of range [{low:#x}, {high:#x}]")
    return value


class Device:
    """A device as the DMA API sees it; ``Device(ops=name)`` alone works for every OPS row.

    ``ops``: a name of :data:`~phyrlab.dma.ops.OPS`, a :class:`DmaMapOps` instance (to share
    one backend between devices), or None for dma-direct. ``iommu``: the
    ``IommuDmaDomain`` for ``iommu_dma_ops`` (one is made when omitted). ``ops_params``:
    extra keyword arguments for the backend's factory. ``swiotlb``: an ``IoTlbMem`` to use,
    None for a fresh default pool (64 MiB), False for none. ``max_pfn``: the highest RAM page
    frame + 1, used by ``dma_direct_get_required_mask`` (default: 1 TiB of RAM).
    """

    def __init__(
        self,
        ops: str | DmaMapOps | None = None,
        *,
        name: str = "0000:01:00.0",
        dma_mask: int = DMA_BIT_MASK(32),
        coherent_dma_mask: int | None = None,
        bus_dma_limit: int = 0,
        dma_range_map: list[BusDmaRegion] | list[tuple[int, int, int]] | None = None,
        max_seg_size: int = SZ_64K,
        seg_boundary_mask: int = ULONG_MAX,
        min_align_mask: int = 0,
        coherent: bool = True,
        untrusted: bool = False,
        is_pci: bool = True,
        iommu: Any = None,
        pci: tuple[Any, str] | None = None,
        swiotlb: Any = None,
        force_bounce: bool = False,
        max_pfn: int = (1 << 40) >> PAGE_SHIFT,
        ops_params: dict[str, Any] | None = None,
    ):
        self.name = name
        self.dma_mask = _check_u64("dma_mask", dma_mask)
        self.coherent_dma_mask = _check_u64(
            "coherent_dma_mask", self.dma_mask if coherent_dma_mask is None else coherent_dma_mask
        )
        self.bus_dma_limit = _check_u64("bus_dma_limit", bus_dma_limit)
        self.max_seg_size = _check_u64("max_seg_size", max_seg_size, low=1, high=U32_MAX)
        self.seg_boundary_mask = _check_u64("seg_boundary_mask", seg_boundary_mask, low=1)
        if self.seg_boundary_mask & (self.seg_boundary_mask + 1) & U64_MAX:
            raise ValueError(
                f"Device seg_boundary_mask = {self.seg_boundary_mask:#x} is not 2^n - 1"
            )
        self.min_align_mask = _check_u64("min_align_mask", min_align_mask, high=U32_MAX)
        self.coherent = bool(coherent)
        self.untrusted = bool(untrusted)
        self.is_pci = bool(is_pci)
        self.max_pfn = _check_u64("max_pfn", max_pfn, low=1, high=U64_MAX >> PAGE_SHIFT)
        self.pci = pci
        self.dma_range_map = self._check_range_map(dma_range_map)
        self._swiotlb_arg = swiotlb
        self._force_bounce = bool(force_bounce)
        self._io_tlb_mem = None
        if swiotlb is False and force_bounce:
            raise ValueError("Device force_bounce=True needs a swiotlb pool (swiotlb=False given)")
        self.ops_name, self.ops = self._resolve_ops(ops, iommu, ops_params or {})

    # -- construction helpers -------------------------------------------------------------
    @staticmethod
    def _check_range_map(regions: Any) -> list[BusDmaRegion] | None:
        if regions is None:
            return None
        out = []
        for i, r in enumerate(regions):
            r = r if isinstance(r, BusDmaRegion) else BusDmaRegion(*r)
            for field in ("cpu_start", "dma_start", "size"):
                _check_u64(f"dma_range_map[{i}].{field}", getattr(r, field))
            if r.size == 0:
                raise ValueError(f"Device dma_range_map[{i}] has size 0 (it ends the kernel's map)")
            out.append(r)
        return out

    def _resolve_ops(self, ops: Any, iommu: Any, params: dict[str, Any]) -> tuple[str, DmaMapOps]:
        if isinstance(ops, DmaMapOps):
            return ops.name, ops
        if ops is None:
            return DMA_DIRECT.name, DMA_DIRECT.create(**params)
        if not isinstance(ops, str) or ops not in OPS:
            raise ValueError(
                f"unknown dma_map_ops {ops!r}: expected None (dma-direct) or one of "
                f"{sorted(OPS)}"
            )
        if ops == "iommu_dma_ops" and iommu is not None:
            params = {**params, "domain": iommu}
        elif iommu is not None:
            raise ValueError(f"iommu= is only for iommu_dma_ops, not {ops!r}")
        return ops, OPS[ops].create(**params)

    # -- swiotlb ----------------------------------------------------------------------------
    @property
    def dma_io_tlb_mem(self) -> Any:
        """The swiotlb pool (``dev->dma_io_tlb_mem``), made on first use; None if disabled."""
        if self._io_tlb_mem is None and self._swiotlb_arg is not False:
            from phyrlab.dma.swiotlb import IoTlbMem

            arg = self._swiotlb_arg
            self._io_tlb_mem = arg if arg is not None else IoTlbMem()
            if self._force_bounce:
                self._io_tlb_mem.force_bounce = True
        return self._io_tlb_mem

    def has_io_tlb_mem(self) -> bool:
        """True when a pool exists already (without creating one)."""
        return self._io_tlb_mem is not None

    # -- address translation (include/linux/dma-direct.h) ----------------------------------
    def phys_to_dma(self, paddr: int) -> int:
        """``phys_to_dma``: through ``dma_range_map`` when set (no memory encryption bit)."""
        return int(self.phys_to_dma_array(np.array([paddr], dtype=U64))[0])

    def dma_to_phys(self, dma_addr: int) -> int:
        """``dma_to_phys``: ``(phys_addr_t)-1`` when no region holds ``dma_addr``."""
        return int(self.dma_to_phys_array(np.array([dma_addr], dtype=U64))[0])

    def phys_to_dma_array(self, paddr: np.ndarray) -> np.ndarray:
        """``phys_to_dma`` of every element (uint64 arrays); ``DMA_MAPPING_ERROR`` on a miss."""
        return self._translate(paddr, "cpu_start", "dma_start", DMA_MAPPING_ERROR)

    def dma_to_phys_array(self, dma_addr: np.ndarray) -> np.ndarray:
        """``dma_to_phys`` of every element (uint64 arrays); all ones on a miss."""
        return self._translate(dma_addr, "dma_start", "cpu_start", U64_MAX)

    def _translate(self, addrs, src: str, dst: str, miss: int) -> np.ndarray:
        """``translate_phys_to_dma`` / ``translate_dma_to_phys``: the first region of
        ``dma_range_map`` holding each address moves it from ``src`` to ``dst`` space."""
        addrs = np.asarray(addrs, dtype=U64)
        if self.dma_range_map is None:
            return addrs
        out = np.full(addrs.shape, U64(miss))
        todo = np.ones(addrs.shape, dtype=bool)
        for m in self.dma_range_map:
            base = U64(getattr(m, src))
            off = addrs - base
            hit = todo & (addrs >= base) & (off < U64(m.size))
            out[hit] = off[hit] + U64(getattr(m, dst))
            todo &= ~hit
        return out

    # -- limits -----------------------------------------------------------------------------
    @property
    def dma_limit(self) -> int:
        """``min_not_zero(*dev->dma_mask, dev->bus_dma_limit)``."""
        return dma_limit(self)

    def dma_get_required_mask(self) -> int:
        """``dma_direct_get_required_mask``: the mask that reaches the top of RAM."""
        phys = self.phys_to_dma(((self.max_pfn - 1) << PAGE_SHIFT) & U64_MAX)
        mask = 1 << (phys.bit_length() - 1)
        return mask + (mask - 1)

    def dma_addressing_limited(self) -> bool:
        """``dma_addressing_limited``: the device cannot reach all of RAM directly."""
        return self.dma_limit < self.dma_get_required_mask()

    def dma_set_mask(self, mask: int) -> None:
        """``dma_set_mask``: -EIO (ValueError) when the ops do not support ``mask``."""
        mask = _check_u64("dma_mask", mask)
        if not self.ops.dma_supported(self, mask):
            raise ValueError(f"-EIO: {self.ops_name} does not support dma_mask {mask:#x}")
        self.dma_mask = mask

    def dma_set_mask_and_coherent(self, mask: int) -> None:
        """``dma_set_mask_and_coherent``."""
        self.dma_set_mask(mask)
        self.coherent_dma_mask = mask

    def dma_max_mapping_size(self) -> int:
        """``dma_max_mapping_size``: the ops' ``max_mapping_size`` (``SIZE_MAX`` if none)."""
        return self.ops.max_mapping_size(self)

    def resources(self) -> dict[str, int]:
        """What the backend and the swiotlb pool hold now: all zero when nothing is mapped."""
        res = dict(self.ops.resources())
        if self._io_tlb_mem is not None:
            res["swiotlb_slots"] = res.get("swiotlb_slots", 0) + self._io_tlb_mem.used
        return res

    def __repr__(self) -> str:
        return (f"<Device {self.name} ops={self.ops_name} dma_mask={self.dma_mask:#x} "
                f"max_seg={self.max_seg_size:#x}>")
