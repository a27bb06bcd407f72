"""The IOMMU model: page tables, IOVA allocation, IOTLB invalidation and dma-iommu."""

from phyrlab.iommu.dma_iommu import (
    IommuDmaDomain,
    iommu_dma_alloc_iova,
    iommu_dma_free_iova,
    iommu_dma_map_phys,
    iommu_dma_map_sg,
    iommu_dma_unmap_phys,
    iommu_dma_unmap_sg,
)

__all__ = [
    "IommuDmaDomain",
    "iommu_dma_alloc_iova",
    "iommu_dma_free_iova",
    "iommu_dma_map_phys",
    "iommu_dma_map_sg",
    "iommu_dma_unmap_phys",
    "iommu_dma_unmap_sg",
]
