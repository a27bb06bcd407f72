"""Storage layouts for physical range lists, all behind one protocol (see :mod:`.base`)."""

from __future__ import annotations

from .base import Layout, as_ranges, check_ranges, merge_ranges, split_segments
from .bio_vec import BioVec
from .page_list import PageList
from .pfn_run import PfnRun
from .phyr import Phyr, PhysVec
from .scatterlist import (
    SCATTERLIST_MAX_SEGMENT,
    SG_MAX_SINGLE_ALLOC,
    SgTable,
    sg_alloc_table_from_pages,
)

#: layout name -> class, in the order plots show them (largest entry first).
LAYOUTS: dict[str, type[Layout]] = {
    cls.name: cls for cls in (SgTable, BioVec, Phyr, PhysVec, PageList, PfnRun)
}

__all__ = [
    "LAYOUTS", "Layout", "SgTable", "BioVec", "Phyr", "PhysVec", "PageList", "PfnRun",
    "as_ranges", "check_ranges", "merge_ranges", "split_segments",
    "sg_alloc_table_from_pages", "SCATTERLIST_MAX_SEGMENT", "SG_MAX_SINGLE_ALLOC",
]
