"""The DMA API model (kernel/dma/): devices, the ops catalogue, mapping, backends, dma-debug.

``pl.dma.Device(ops=name)`` picks a row of :data:`OPS` (None: dma-direct);
``pl.dma.dma_map(dev, layout, direction)`` returns a new :class:`DmaList`.
"""

from phyrlab.dma.debug import DmaDebug
from phyrlab.dma.device import BusDmaRegion, Device
from phyrlab.dma.iova_state import (
    DmaIovaState,
    dma_iova_destroy,
    dma_iova_free,
    dma_iova_link,
    dma_iova_sync,
    dma_iova_try_alloc,
    dma_iova_unlink,
    dma_map_iova,
    dma_unmap_iova,
    dma_use_iova,
)
from phyrlab.dma.mapping import (
    DmaList,
    dma_map,
    dma_map_phys,
    dma_map_sgtable,
    dma_mapping_error,
    dma_sync_for_cpu,
    dma_sync_for_device,
    dma_sync_single_for_cpu,
    dma_sync_single_for_device,
    dma_unmap,
    dma_unmap_phys,
    dma_unmap_sgtable,
    split_for_device,
)
from phyrlab.dma.ops import (
    DMA_DIRECT,
    DMA_DIRECTIONS,
    OPS,
    DmaMapOps,
    DmaStats,
    OpsEntry,
    SgCookie,
    register_family,
)

__all__ = [
    "DmaDebug", "DmaIovaState", "dma_iova_destroy", "dma_iova_free", "dma_iova_link",
    "dma_iova_sync", "dma_iova_try_alloc", "dma_iova_unlink", "dma_map_iova", "dma_unmap_iova",
    "dma_use_iova",
    "BusDmaRegion", "DMA_DIRECT", "DMA_DIRECTIONS", "Device", "DmaList", "DmaMapOps",
    "DmaStats", "OPS", "OpsEntry", "SgCookie", "dma_map", "dma_map_phys", "dma_map_sgtable",
    "dma_mapping_error", "dma_sync_for_cpu", "dma_sync_for_device", "dma_sync_single_for_cpu",
    "dma_sync_single_for_device", "dma_unmap", "dma_unmap_phys", "dma_unmap_sgtable",
    "register_family", "split_for_device",
]
