"""``dma_dummy_ops`` (kernel/dma/dummy.c): the ops of a device that must not do DMA.

Read in the kernel source (stored file predates v5.16): ``dma_dummy_map_page`` returns
``DMA_MAPPING_ERROR`` (which ``dma_mapping_error()`` reports as -ENOMEM),
``dma_dummy_map_sg`` returns 0 in the stored file and -EINVAL since v5.16 ("dma-mapping:
return error code from dma_dummy_map_sg()"), which is what v6.2 has and what we model;
``dma_dummy_supported`` returns 0; ``dma_dummy_mmap`` -ENXIO. There is no unmap: nothing
is ever mapped.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from phyrlab.dma.ops import DmaMapOps, OpsEntry, check_direction, register_family
from phyrlab.errors import DmaMappingError


class DummyOps(DmaMapOps):
    """Every mapping fails; nothing is ever held."""

    def map_phys(self, dev: Any, paddr: int, size: int, direction: str) -> int:
        """``dma_dummy_map_page``: ``DMA_MAPPING_ERROR`` (-ENOMEM via dma_mapping_error)."""
        check_direction(direction)
        raise DmaMappingError(
            "ENOMEM", f"{self.name}: map_page of {size:#x} bytes at {paddr:#x} returns "
            "DMA_MAPPING_ERROR (this device may not do DMA)")

    def unmap_phys(self, dev: Any, dma_addr: int, size: int, direction: str) -> None:
        """No ``unmap_page`` in the table: nothing was mapped."""
        check_direction(direction)
        raise ValueError(f"{self.name}: unmap of {dma_addr:#x}, which was never mapped")

    def map_sg(self, dev: Any, addr: np.ndarray, length: np.ndarray,
               direction: str) -> tuple[np.ndarray, np.ndarray, Any]:
        """``dma_dummy_map_sg``: -EINVAL."""
        check_direction(direction)
        raise DmaMappingError("EINVAL", f"{self.name}: map_sg of {len(addr)} entries: -EINVAL "
                              "(this device may not do DMA)")

    def unmap_sg(self, dev: Any, dma_addr: np.ndarray, dma_len: np.ndarray, direction: str,
                 cookie: Any) -> None:
        """No ``unmap_sg`` in the table: nothing was mapped."""
        raise ValueError(f"{self.name}: unmap_sg of a list that was never mapped")

    def dma_supported(self, dev: Any, mask: int) -> bool:
        """``dma_dummy_supported``: 0 for every mask."""
        return False


def _factory(entry: OpsEntry, **params: Any) -> DummyOps:
    if params:
        raise ValueError(f"{entry.name}: takes no parameters, got {sorted(params)}")
    return DummyOps(entry)


register_family("dummy", _factory)
