"""dma-iommu: the DMA API on top of an IOMMU domain (drivers/iommu/dma-iommu.c).

Interface committed first so the DMA backends can code against it; the bodies follow.
"""

from __future__ import annotations

import numpy as np


class IommuDmaDomain:
    """``struct iommu_domain`` + ``struct iommu_dma_cookie`` (page table, IOVA domain, IOTLB)."""

    def __init__(self, fmt: str = "x86_64", *, strict: bool = True, fq_size: int = 256,
                 fq_timeout_ns: int = 10_000_000, aperture_end: int | None = None):
        raise NotImplementedError("in progress (issue 3)")

    def snapshot(self) -> dict:
        raise NotImplementedError


def iommu_dma_alloc_iova(domain: IommuDmaDomain, size: int, dma_limit: int,
                         dev_is_pci: bool = True) -> int:
    raise NotImplementedError


def iommu_dma_free_iova(domain: IommuDmaDomain, iova: int, size: int) -> None:
    raise NotImplementedError


def iommu_dma_map_phys(domain: IommuDmaDomain, paddr: int, size: int, dma_limit: int,
                       prot: int = 3) -> int:
    raise NotImplementedError


def iommu_dma_unmap_phys(domain: IommuDmaDomain, dma_addr: int, size: int) -> None:
    raise NotImplementedError


def iommu_dma_map_sg(domain: IommuDmaDomain, addr: np.ndarray, length: np.ndarray, *,
                     max_seg_size: int, seg_boundary_mask: int, dma_limit: int,
                     dev_is_pci: bool = True) -> tuple[np.ndarray, np.ndarray]:
    raise NotImplementedError


def iommu_dma_unmap_sg(domain: IommuDmaDomain, dma_addr: np.ndarray,
                       dma_len: np.ndarray) -> None:
    raise NotImplementedError


__iommu_dma_map = iommu_dma_map_phys
__iommu_dma_unmap = iommu_dma_unmap_phys
