"""phyrlab: a lab for physical range lists ("phyr") and the DMA API that maps them."""

from __future__ import annotations

from . import cost, dma, iommu, layouts, memory, notebook, pci, storage, tables, units, workloads
from .errors import DmaMappingError, InputFileError, PhyrlabError, RangeError
from .layouts import LAYOUTS, SgTable, sg_alloc_table_from_pages
from .units import PAGE_SHIFT, PAGE_SIZE

__version__ = "0.1.0"

__all__ = [
    "PAGE_SHIFT", "PAGE_SIZE", "LAYOUTS", "SgTable", "sg_alloc_table_from_pages",
    "cost", "dma", "iommu", "layouts", "memory", "notebook", "pci", "storage", "tables", "units",
    "workloads",
    "PhyrlabError", "RangeError", "InputFileError", "DmaMappingError",
]
