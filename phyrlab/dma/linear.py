"""Linear (static) mappings: ``ps3_sb_dma_ops``, ``ps3_ioc0_dma_ops``, ``ibmebus_dma_ops``.

One engine, :class:`LinearOps`: a DMA address is the physical address moved by a constant
(``dma = paddr - region_base + bus_base``), per entry, never merged, nothing allocated.

Read in the kernel sources:

- arch/powerpc/platforms/ps3/system-bus.c (the stored file is the 2.6.2x version; the v6.2
  tables keep the same shape): ``ps3_sb_map_sg`` calls ``ps3_dma_map()`` per entry and
  returns -EINVAL when one fails; ``ps3_ioc0_map_sg`` is ``BUG()`` (v6.2: ``BUG(); return
  -EINVAL``), while ``ps3_ioc0_map_single``/``map_page`` work (IOPTE flags by direction);
  ``ps3_dma_supported`` is ``mask >= DMA_BIT_MASK(32)``.
- arch/powerpc/platforms/pseries/ibmebus.c (read, current): ``ibmebus_map_page`` returns
  ``page_address(page) + offset`` (the kernel virtual address: ``paddr + PAGE_OFFSET``),
  ``ibmebus_map_sg`` does the same per entry, unmaps do nothing, ``ibmebus_dma_supported``
  is ``mask == DMA_BIT_MASK(64)``.

Simplified: the PS3 static region is one linear window ``[0, region_size)`` mapped at
``bus_base`` (``dma_sb_map_area_linear``); an address outside it fails with -EINVAL instead of
falling back to a dynamic IOPTE mapping. IOPTE protection flags are not modelled.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from phyrlab.dma.ops import DmaMapOps, OpsEntry, SgCookie, check_direction, register_family
from phyrlab.errors import DmaMappingError
from phyrlab.units import DMA_BIT_MASK, SZ_256K, U64_MAX

#: ``PAGE_OFFSET`` of ppc64 (arch/powerpc/include/asm/page.h): kernel linear map base.
PPC64_PAGE_OFFSET = 0xC000_0000_0000_0000

_DEFAULTS: dict[str, dict[str, Any]] = {
    # PS3: 256 MiB of XDR RAM in the static region, at bus address 0x8000_0000 (illustrative).
    "ps3_sb_dma_ops": {"region_size": 1024 * SZ_256K, "bus_base": 0x8000_0000,
                       "min_mask": DMA_BIT_MASK(32)},
    "ps3_ioc0_dma_ops": {"region_size": 1024 * SZ_256K, "bus_base": 0x8000_0000,
                         "min_mask": DMA_BIT_MASK(32)},
    "ibmebus_dma_ops": {"region_size": None, "bus_base": PPC64_PAGE_OFFSET,
                        "exact_mask": DMA_BIT_MASK(64)},
}


class LinearOps(DmaMapOps):
    """``dma = paddr + (bus_base - region_base)`` per entry (see the module docstring)."""

    def __init__(self, entry: OpsEntry | None = None, **params: Any):
        defaults = dict(_DEFAULTS.get(entry.name if entry else "", {}))
        unknown = sorted(set(params) - {"region_size", "bus_base", "min_mask", "exact_mask"})
        if unknown:
            raise ValueError(f"{entry.name if entry else 'linear'}: unknown parameter "
                             f"{unknown[0]!r}")
        super().__init__(entry, **{**defaults, **params})
        self.region_size: int | None = self.params.get("region_size")
        self.bus_base: int = int(self.params.get("bus_base", 0))

    def _translate(self, paddr: int, size: int) -> int:
        if self.region_size is not None and paddr + size > self.region_size:
            raise DmaMappingError(
                "EINVAL", f"{self.name}: ps3_dma_map of [{paddr:#x}, +{size:#x}) lies outside "
                f"the linear region of {self.region_size:#x} bytes")
        dma = paddr + self.bus_base
        if dma > U64_MAX:
            raise DmaMappingError("EINVAL", f"{self.name}: {paddr:#x} overflows dma_addr_t")
        return dma

    def map_phys(self, dev: Any, paddr: int, size: int, direction: str) -> int:
        """``ps3_*_map_page`` / ``ibmebus_map_page``: a constant offset, nothing taken."""
        check_direction(direction)
        self.count("entries_walked")
        return self._translate(paddr, size)

    def unmap_phys(self, dev: Any, dma_addr: int, size: int, direction: str) -> None:
        """Nothing to give back (``ps3_unmap_single`` of a static region, ``ibmebus``)."""
        check_direction(direction)

    def map_sg(self, dev: Any, addr: np.ndarray, length: np.ndarray,
               direction: str) -> tuple[np.ndarray, np.ndarray, Any]:
        """``ps3_sb_map_sg`` / ``ibmebus_map_sg`` per entry; ``ps3_ioc0_map_sg`` is BUG()."""
        check_direction(direction)
        if not self.supports_sg:
            raise DmaMappingError(
                "EINVAL", f"{self.name}: map_sg is not supported (BUG(); return -EINVAL); "
                "map the ranges one at a time with map_phys")
        addr = np.asarray(addr, dtype=np.uint64)
        length = np.asarray(length, dtype=np.uint64)
        self.count("entries_walked", len(addr))
        if self.region_size is not None and len(addr):
            bad = np.flatnonzero(addr + length > np.uint64(self.region_size))
            if len(bad):
                i = int(bad[0])
                raise DmaMappingError(
                    "EINVAL", f"{self.name}: entry {i} [{int(addr[i]):#x}, +{int(length[i]):#x})"
                    f" lies outside the linear region of {self.region_size:#x} bytes")
        return addr + np.uint64(self.bus_base), length.copy(), SgCookie()

    def unmap_sg(self, dev: Any, dma_addr: np.ndarray, dma_len: np.ndarray, direction: str,
                 cookie: Any) -> None:
        """Nothing to give back."""
        check_direction(direction)

    def dma_supported(self, dev: Any, mask: int) -> bool:
        """``ps3_dma_supported`` (``>= 32 bits``) / ``ibmebus_dma_supported`` (``== 64``)."""
        if "exact_mask" in self.params:
            return mask == self.params["exact_mask"]
        return mask >= self.params.get("min_mask", 0)


def _factory(entry: OpsEntry, **params: Any) -> LinearOps:
    return LinearOps(entry, **params)


register_family("linear", _factory)
