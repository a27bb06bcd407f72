"""The DMA API model (kernel/dma/): devices, the ops catalogue, mapping, backends, dma-debug."""

from phyrlab.dma.ops import DMA_DIRECTIONS, OPS, DmaMapOps, OpsEntry, register_family

__all__ = ["DMA_DIRECTIONS", "OPS", "DmaMapOps", "OpsEntry", "register_family"]
