"""The IOMMU model: page tables, IOVA allocation, IOTLB invalidation and dma-iommu.

``pagetable`` (formats as data, one walker), ``iova`` (drivers/iommu/iova.c), ``iotlb`` (gather,
strict, flush queue), ``dma_iommu`` (drivers/iommu/dma-iommu.c), ``experiments`` (figures).
"""

from phyrlab.iommu.dma_iommu import (
    IommuDmaDomain,
    iommu_dma_alloc_iova,
    iommu_dma_free_iova,
    iommu_dma_map_phys,
    iommu_dma_map_sg,
    iommu_dma_unmap_phys,
    iommu_dma_unmap_sg,
)
from phyrlab.iommu.iotlb import (
    FlushQueue,
    IommuIotlbGather,
    ModelClock,
    StrictInvalidation,
)
from phyrlab.iommu.iova import IovaDomain
from phyrlab.iommu.pagetable import FORMATS, PageTable, PageTableFormat, get_format

__all__ = [
    "FORMATS",
    "FlushQueue",
    "IommuDmaDomain",
    "IommuIotlbGather",
    "IovaDomain",
    "ModelClock",
    "PageTable",
    "PageTableFormat",
    "StrictInvalidation",
    "get_format",
    "iommu_dma_alloc_iova",
    "iommu_dma_free_iova",
    "iommu_dma_map_phys",
    "iommu_dma_map_sg",
    "iommu_dma_unmap_phys",
    "iommu_dma_unmap_sg",
]
