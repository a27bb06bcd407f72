"""Named workloads: the memory a driver hands the DMA API, built from ``data/workloads/*.yaml``.

Each YAML file names a workload, cites where its shape comes from, and gives its default size,
backing page size and contiguity model; :func:`build` makes its PFN array, seeded.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from . import memory
from .errors import InputFileError
from .layouts import LAYOUTS, Layout
from .layouts.base import pages_to_ranges
from .units import PAGE_SIZE, parse_size

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "workloads"
MODELS = ("contiguous", "scattered", "geometric", "hugepage", "pagemap")
_KEYS = {"name", "title", "source", "size", "page_size", "contiguity", "offset"}
_CONTIGUITY_KEYS = {"model", "mean_run_pages", "hugepage_size"}


@dataclass(frozen=True)
class Workload:
    """A workload as its YAML file describes it."""

    name: str
    title: str
    source: str
    size: int
    page_size: int
    model: str
    mean_run_pages: float = 1.0
    hugepage_size: int = 0
    offset: int = 0


@dataclass
class Buffer:
    """One buffer of a workload: 4 KiB PFNs, first-page offset, size, and backing page size."""

    name: str
    pfns: np.ndarray
    offset: int
    size: int
    page_size: int = PAGE_SIZE

    def ranges(self) -> tuple[np.ndarray, np.ndarray]:
        """Merged physical ranges ``(addr, length)``."""
        return pages_to_ranges(self.pfns, self.offset, self.size)

    def layout(self, name: str) -> Layout:
        """This buffer stored in layout ``name`` (a page list uses the backing page size)."""
        cls = LAYOUTS[name]
        if name == "page_list":
            return cls.from_pages(self.pfns, self.offset, self.size, page_size=self.page_size)
        return cls.from_pages(self.pfns, self.offset, self.size)


def load(path: str | Path) -> Workload:
    """Read one workload file; an :class:`InputFileError` names the file and the bad key."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise InputFileError(f"{path}: cannot read workload: {e}") from None
    if not isinstance(doc, dict):
        raise InputFileError(f"{path}: a workload file is a mapping, got {type(doc).__name__}")
    unknown = set(doc) - _KEYS
    if unknown:
        raise InputFileError(f"{path}: unknown key(s) {sorted(map(str, unknown))}; known: "
                             f"{sorted(_KEYS)}")
    for key in ("name", "title", "source", "size", "contiguity"):
        if key not in doc:
            raise InputFileError(f"{path}: missing key {key!r}")
    cont = doc["contiguity"]
    if not isinstance(cont, dict) or cont.get("model") not in MODELS:
        raise InputFileError(f"{path}: contiguity.model must be one of {MODELS}, got {cont!r}")
    if set(cont) - _CONTIGUITY_KEYS:
        bad = sorted(map(str, set(cont) - _CONTIGUITY_KEYS))
        raise InputFileError(f"{path}: unknown contiguity key(s) {bad}")
    try:
        w = Workload(
            name=str(doc["name"]), title=str(doc["title"]), source=str(doc["source"]),
            size=parse_size(doc["size"]), page_size=parse_size(doc.get("page_size", PAGE_SIZE)),
            model=cont["model"], mean_run_pages=float(cont.get("mean_run_pages", 1)),
            hugepage_size=parse_size(cont.get("hugepage_size", 0)),
            offset=int(doc.get("offset", 0)),
        )
    except (TypeError, ValueError) as e:
        raise InputFileError(f"{path}: {e}") from None
    if w.size <= 0:
        raise InputFileError(f"{path}: size {w.size} must be positive")
    if w.model == "hugepage" and w.hugepage_size < PAGE_SIZE:
        raise InputFileError(f"{path}: the hugepage model needs contiguity.hugepage_size")
    return w


@cache
def catalogue() -> dict[str, Workload]:
    """Every workload in ``data/workloads``, by name."""
    out = {}
    for path in sorted(DATA_DIR.glob("*.yaml")):
        w = load(path)
        if w.name in out:
            raise InputFileError(f"{path}: workload name {w.name!r} is used twice")
        out[w.name] = w
    return out


def names() -> list[str]:
    """Names of the workloads, in file order."""
    return list(catalogue())


def build(name: str, size: int | str | None = None, seed: int = 0,
          mean_run_pages: float | None = None, offset: int | None = None,
          page_size: int | str | None = None,
          base_pfn: int = memory.DEFAULT_BASE_PFN) -> Buffer:
    """One buffer of workload ``name``, ``size`` bytes (default: the file's), seeded.

    ``mean_run_pages`` overrides the contiguity of a geometric/scattered workload; a
    ``page_size`` above 4 KiB backs the buffer with huge pages of that size instead.
    """
    cat = catalogue()
    if name not in cat:
        raise ValueError(f"unknown workload {name!r}; known: {', '.join(cat)}")
    w = cat[name]
    size = w.size if size is None else parse_size(size)
    offset = w.offset if offset is None else offset
    if size <= 0:
        raise ValueError(f"size {size} must be positive")
    npages = -(-(offset + size) // PAGE_SIZE)
    mean = w.mean_run_pages if mean_run_pages is None else mean_run_pages
    backing = w.page_size if page_size is None else parse_size(page_size)
    model, huge = w.model, w.hugepage_size
    if page_size is not None and backing > PAGE_SIZE:
        model, huge = "hugepage", backing
    elif page_size is not None and model == "hugepage":
        model = "geometric"
    if model == "pagemap":
        buf = np.zeros(size, dtype=np.uint8)
        pfns, off = memory.pagemap_pfns(buf)
        return Buffer(name, pfns, off, size, PAGE_SIZE)
    if model == "contiguous":
        pfns = memory.contiguous_pfns(npages, base_pfn)
    elif model == "scattered" and mean_run_pages is None:
        pfns = memory.fragmented_pfns(npages, 1.0, seed, base_pfn)
    elif model in ("geometric", "scattered"):
        pfns = memory.fragmented_pfns(npages, mean, seed, base_pfn)
    else:
        pfns = memory.hugepage_pfns(npages, huge, seed, base_pfn)
    return Buffer(name, pfns, offset, size, backing)


def describe(name: str) -> dict[str, Any]:
    """The workload's file contents as a dict, for tables."""
    w = catalogue()[name]
    return {k: getattr(w, k) for k in w.__dataclass_fields__}
