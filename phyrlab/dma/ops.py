"""The backend protocol (``struct dma_map_ops``) and the catalogue of the kernel's 24 tables.

Mirrors ``struct dma_map_ops`` of include/linux/dma-map-ops.h (read at the stored version, which
still has ``map_page``/``unmap_page`` and ``alloc_pages``, i.e. v6.2-era). Ours keeps the
streaming-mapping members; ``map_page`` is named ``map_phys`` (its later name, v6.17+) and
takes a physical address instead of ``page + offset``. Simplified: no ``alloc``/``mmap``/
``get_sgtable``/coherent allocations, no ``attrs`` except where a backend documents one.

How to add a family (for the families engineer)
------------------------------------------------
1. Write ``phyrlab/dma/<module>.py`` with a subclass of :class:`DmaMapOps` that implements
   ``map_phys``/``unmap_phys`` and, when ``supports_sg``, ``map_sg``/``unmap_sg`` on numpy
   arrays. ``map_sg`` must give back everything it took before raising
   :class:`~phyrlab.errors.DmaMappingError`; every allocation asks
   ``phyrlab.faults.should_fail("<point>")`` first. Count work with ``self.count(key, n)``
   (keys in :data:`STAT_KEYS`); ``resources()`` returns what the backend holds now.
2. At the bottom of the module call ``register_family("<family>", factory)`` where
   ``factory(entry: OpsEntry, **params) -> DmaMapOps``; ``entry.params`` holds the row's
   parameters (merged with the caller's ``params``). ``register_family(..., overrides=...)``
   lets you correct a row's parameters after you verified them in the kernel file.
3. :data:`FAMILY_MODULES` already names the module for each family; ``OpsEntry.create()``
   imports it on first use, so nothing else needs editing.

The device passed to every method is a :class:`phyrlab.dma.device.Device`; backends may read
``dev.dma_mask``, ``dev.coherent_dma_mask``, ``dev.bus_dma_limit``, ``dev.max_seg_size``,
``dev.seg_boundary_mask``, ``dev.min_align_mask``, ``dev.coherent``, ``dev.untrusted``,
``dev.is_pci``, ``dev.phys_to_dma(paddr)``/``dev.dma_to_phys(dma)`` (``dma_range_map``) and
:func:`dma_limit` (``min(dma_mask, bus_dma_limit)``). A backend that bounces uses the
device's pool ``dev.dma_io_tlb_mem`` (:class:`phyrlab.dma.swiotlb.IoTlbMem`, None when the
device has no swiotlb) and :func:`phyrlab.dma.swiotlb.swiotlb_map`; ``Device.resources()``
adds the pool's slots in use, so a backend's ``resources()`` should not count them.
``DmaList.stats`` is the change in ``backend.stats`` plus the pool's ``stats`` over one call.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from phyrlab.errors import DmaMappingError
from phyrlab.units import PAGE_SIZE, SZ_4K, SZ_64M, U64_MAX

#: ``enum dma_data_direction`` (include/linux/dma-direction.h) by the names the API uses.
DMA_DIRECTIONS = {"bidirectional": 0, "to_device": 1, "from_device": 2, "none": 3}

#: Counters a mapping reports in ``DmaList.stats`` (any backend may add its own key).
STAT_KEYS = (
    "entries_walked",  # input ranges looked at
    "pte_writes",  # IOMMU/TCE/GATT entries written (map) or cleared (unmap)
    "iotlb_flushes",  # IOTLB / STC / RPCIT invalidations issued
    "bounce_bytes",  # bytes copied to or from a bounce buffer
    "bounce_slots",  # swiotlb slots taken
    "iova_allocs",  # IOVA ranges allocated
    "hypercalls",  # hypervisor calls (Xen, sun4v, pseries)
    "cache_maint_bytes",  # bytes cleaned/invalidated for a non-coherent device
    "grants",  # Xen grant references taken
)


def sg_arrays(name: str, addr, length) -> tuple[np.ndarray, np.ndarray]:
    """A ``map_sg`` argument list as uint64 arrays: -EINVAL for an empty list (``nents`` 0
    is refused by ``__dma_map_sg_attrs``' callers), ``ValueError`` when the arrays differ."""
    addr = np.asarray(addr, dtype=np.uint64)
    length = np.asarray(length, dtype=np.uint64)
    if addr.size == 0:
        raise DmaMappingError("EINVAL", f"{name}: map_sg of an empty list")
    if length.size != addr.size:
        raise ValueError(f"{name}: {addr.size} addresses but {length.size} lengths")
    return addr, length


def check_direction(direction: str, *, allow_none: bool = False) -> int:
    """``valid_dma_direction()``: the enum value of ``direction`` or a ValueError naming it."""
    value = DMA_DIRECTIONS.get(direction)
    if value is None or (value == 3 and not allow_none):
        valid = [d for d in DMA_DIRECTIONS if allow_none or d != "none"]
        raise ValueError(f"bad DMA direction {direction!r}: expected one of {valid}")
    return value


def dma_limit(dev: Any) -> int:
    """``min_not_zero(dev->dma_mask, dev->bus_dma_limit)`` as dma_capable() uses it."""
    limit = dev.bus_dma_limit
    return dev.dma_mask if not limit else min(dev.dma_mask, limit)


class DmaStats(dict):
    """Counters of one mapping (or of a backend's lifetime): a dict with attribute access."""

    def __getattr__(self, key: str) -> int:
        if key.startswith("_"):
            raise AttributeError(key)
        return self.get(key, 0)

    def diff(self, before: dict[str, int]) -> DmaStats:
        """The counters that moved since ``before`` (a copy of this dict taken earlier)."""
        out = DmaStats()
        for k, v in self.items():
            d = v - before.get(k, 0)
            if d:
                out[k] = d
        return out


@dataclass
class SgCookie:
    """What ``map_sg`` hands back for ``unmap_sg``: backend state plus per-entry flags.

    ``bounced[i]`` is True when DMA entry ``i`` points into a bounce buffer; ``data`` is the
    backend's own state (IOVA base, slot indices...). A backend may return any object as its
    cookie; the API reads only ``bounced`` (if present) and passes the cookie back.
    """

    bounced: np.ndarray | None = None
    data: Any = None


class DmaMapOps:
    """Base of every backend: ``struct dma_map_ops`` (include/linux/dma-map-ops.h).

    Arrays are ``np.uint64``. ``map_sg`` returns the DMA-side list (which may have fewer entries
    than the input when the backend merges) and must unwind fully before raising.
    The default ``map_sg`` maps range by range through ``map_phys`` and unwinds on failure,
    which is what most per-entry backends (``jazz_dma_ops``, ``iounit_dma_ops``...) do.
    """

    name: str = "dma_map_ops"
    file: str = ""
    family: str = ""
    supports_sg: bool = True
    coalesces: bool = False

    def __init__(self, entry: OpsEntry | None = None, **params: Any):
        if entry is not None:
            self.name, self.file, self.family = entry.name, entry.file, entry.family
            self.supports_sg = entry.supports_sg
            self.coalesces = entry.coalesces
        self.params: dict[str, Any] = {**(entry.params if entry else {}), **params}
        self.stats = DmaStats()

    # -- bookkeeping -------------------------------------------------------------------------
    def count(self, key: str, n: int = 1) -> None:
        """Add ``n`` to counter ``key`` (see :data:`STAT_KEYS`)."""
        self.stats[key] = self.stats.get(key, 0) + int(n)

    def resources(self) -> dict[str, int]:
        """What the backend holds now (IOVA pages, PTEs, slots...): all zero when idle."""
        return {}

    # -- single range (map_page / map_phys) ----------------------------------------------------
    def map_phys(self, dev: Any, paddr: int, size: int, direction: str) -> int:
        """``map_page``/``map_phys``: DMA address of ``[paddr, paddr+size)`` or raise."""
        raise NotImplementedError(f"{self.name}: map_phys")

    def unmap_phys(self, dev: Any, dma_addr: int, size: int, direction: str) -> None:
        """``unmap_page``/``unmap_phys``."""
        raise NotImplementedError(f"{self.name}: unmap_phys")

    # -- lists (map_sg) ----------------------------------------------------------------------
    def map_sg(
        self, dev: Any, addr: np.ndarray, length: np.ndarray, direction: str
    ) -> tuple[np.ndarray, np.ndarray, Any]:
        """``map_sg``: ``(dma_addr, dma_len, cookie)``; nothing held when it raises."""
        if not self.supports_sg:
            raise DmaMappingError("EINVAL", f"{self.name} has no map_sg")
        n = len(addr)
        out = np.empty(n, dtype=np.uint64)
        for i in range(n):
            try:
                out[i] = self.map_phys(dev, int(addr[i]), int(length[i]), direction)
            except DmaMappingError:
                for j in range(i):
                    self.unmap_phys(dev, int(out[j]), int(length[j]), direction)
                raise
        return out, np.asarray(length, dtype=np.uint64).copy(), SgCookie()

    def unmap_sg(
        self, dev: Any, dma_addr: np.ndarray, dma_len: np.ndarray, direction: str, cookie: Any
    ) -> None:
        """``unmap_sg``: undo one ``map_sg``."""
        for a, n in zip(dma_addr.tolist(), dma_len.tolist(), strict=True):
            self.unmap_phys(dev, a, n, direction)

    # -- sync ----------------------------------------------------------------------------------
    def sync_for_cpu(self, dev: Any, dma_addr: np.ndarray, dma_len: np.ndarray,
                     direction: str) -> int:
        """``sync_single_for_cpu``/``sync_sg_for_cpu``: bytes copied from bounce buffers."""
        return 0

    def sync_for_device(self, dev: Any, dma_addr: np.ndarray, dma_len: np.ndarray,
                        direction: str) -> int:
        """``sync_single_for_device``/``sync_sg_for_device``: bytes copied to bounce buffers."""
        return 0

    def bounced_mask(self, dev: Any, dma_addr: np.ndarray, dma_len: np.ndarray) -> np.ndarray:
        """Which DMA ranges are bounce buffers (``is_swiotlb_buffer`` of their target)."""
        return np.zeros(len(dma_addr), dtype=bool)

    # -- limits --------------------------------------------------------------------------------
    def max_mapping_size(self, dev: Any) -> int:
        """``max_mapping_size``: largest single mapping (``SIZE_MAX`` when unlimited)."""
        return U64_MAX

    def dma_supported(self, dev: Any, mask: int) -> bool:
        """``dma_supported``."""
        return True

    def get_merge_boundary(self, dev: Any) -> int:
        """``get_merge_boundary``: 0 when the backend does not merge."""
        return 0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} ({self.family})>"


Factory = Callable[..., DmaMapOps]


@dataclass
class OpsEntry:
    """One row of the catalogue: a ``struct dma_map_ops`` of Linux v6.2."""

    name: str
    file: str
    family: str
    io_page_size: int | None
    coalesces: bool
    supports_sg: bool = True
    window: int | None = None  # aperture / table window in bytes, None when unbounded
    notes: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def factory(self) -> Factory | None:
        """The registered factory of this row's family (importing its module), or None."""
        _load_family(self.family)
        return _FACTORIES.get(self.family)

    def create(self, **params: Any) -> DmaMapOps:
        """Instantiate a working backend for this row."""
        factory = self.factory
        if factory is None:
            raise NotImplementedError(
                f"{self.name}: no backend registered for family {self.family!r} "
                f"(module {FAMILY_MODULES.get(self.family)!r} missing or not registering)"
            )
        return factory(self, **params)


#: Family -> module that registers it.
FAMILY_MODULES = {
    "direct": "phyrlab.dma.direct",
    "iommu_dma": "phyrlab.dma.iommu",
    "single_level": "phyrlab.dma.iommu_table",
    "linear": "phyrlab.dma.linear",
    "s390": "phyrlab.dma.s390",
    "xen": "phyrlab.dma.xen",
    "vduse": "phyrlab.dma.vduse",
    "dummy": "phyrlab.dma.dummy",
}

_FACTORIES: dict[str, Factory] = {}


def register_family(
    family: str, factory: Factory, *, overrides: dict[str, dict[str, Any]] | None = None
) -> None:
    """Register ``factory(entry, **params)`` for every row of ``family``.

    ``overrides`` maps a struct name to attributes to correct on its row (``io_page_size``,
    ``window``, ``coalesces``, ``notes``, or ``params`` which is merged).
    """
    if family not in FAMILY_MODULES:
        raise ValueError(
            f"unknown DMA ops family {family!r}: expected one of {list(FAMILY_MODULES)}"
        )
    _FACTORIES[family] = factory
    for name, changes in (overrides or {}).items():
        entry = OPS.get(name)
        if entry is None or entry.family != family:
            raise ValueError(f"override for {name!r}: not a {family!r} row of OPS")
        for key, value in changes.items():
            if key == "params":
                entry.params.update(value)
            elif hasattr(entry, key) and key not in ("name", "family"):
                setattr(entry, key, value)
            else:
                raise ValueError(f"override for {name!r}: cannot set {key!r}")


def _load_family(family: str) -> None:
    if family in _FACTORIES:
        return
    module = FAMILY_MODULES.get(family)
    if module is None:
        return
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise


def _row(name, file, family, page, coalesces, notes, *, sg=True, window=None, **params):
    return OpsEntry(name, file, family, page, coalesces, sg, window, notes, dict(params))


_8K = 8192

#: The 24 ``struct dma_map_ops`` of Linux v6.2 by struct name (shared/kernel/dma-ops.md).
OPS: dict[str, OpsEntry] = {
    e.name: e
    for e in (
        _row("alpha_pci_ops", "arch/alpha/kernel/pci_iommu.c", "single_level", _8K, True,
             "arena table; sg_classify merges; direct-map window bypass"),
        _row("iommu_ops", "arch/arm/mm/dma-mapping.c", "single_level", SZ_4K, True,
             "own IOVA bitmap + IOMMU API; __map_sg_chunk up to max_seg_size; non-coherent",
             coherent=False),
        _row("iommu_coherent_ops", "arch/arm/mm/dma-mapping.c", "single_level", SZ_4K, True,
             "as iommu_ops, coherent: no cache maintenance", coherent=True),
        _row("sba_dma_ops", "arch/ia64/hp/common/sba_iommu.c", "single_level", PAGE_SIZE, True,
             "HP zx1 pdir; 64-bit devices bypass (ALLOW_IOV_BYPASS)", bypass=True),
        _row("jazz_dma_ops", "arch/mips/jazz/jazzdma.c", "single_level", SZ_4K, False,
             "VDMA table, one translation per entry", window=4096 * SZ_4K, entries=4096),
        _row("ccio_ops", "drivers/parisc/ccio-dma.c", "single_level", SZ_4K, True,
             "U2/Uturn I/O pdir; coalesces (iommu-helpers.h); bitmap resource map"),
        _row("sba_ops", "drivers/parisc/sba_iommu.c", "single_level", SZ_4K, True,
             "Astro/Ike/Pluto I/O pdir; coalesces (iommu-helpers.h)"),
        _row("dma_iommu_ops", "arch/powerpc/kernel/dma-iommu.c", "single_level", SZ_4K, True,
             "TCE table; ppc_iommu_map_sg merges, honours boundary; bypass when mask covers RAM",
             bypass=True),
        _row("ps3_sb_dma_ops", "arch/powerpc/platforms/ps3/system-bus.c", "linear", None, False,
             "static linear region; ps3_dma_map per entry"),
        _row("ps3_ioc0_dma_ops", "arch/powerpc/platforms/ps3/system-bus.c", "linear", None, False,
             "linear region with IOPTE flags; map_sg is BUG(); -EINVAL", sg=False),
        _row("vio_dma_mapping_ops", "arch/powerpc/platforms/pseries/vio.c", "single_level", SZ_4K,
             True, "TCE table + CMO entitlement: beyond entitlement -ENOMEM", entitlement=True),
        _row("ibmebus_dma_ops", "arch/powerpc/platforms/pseries/ibmebus.c", "linear", None, False,
             "identity to kernel virtual; dma_supported only for a 64-bit mask"),
        _row("s390_pci_dma_ops", "arch/s390/pci/pci_dma.c", "s390", SZ_4K, True,
             "3-level table (region/segment/page); bitmap IOVA; lazy global RPCIT flush"),
        _row("sun4u_dma_ops", "arch/sparc/kernel/iommu.c", "single_level", _8K, True,
             "IOPTE table + streaming cache; STC flush on unmap"),
        _row("sun4v_dma_ops", "arch/sparc/kernel/pci_sun4v.c", "single_level", _8K, True,
             "hypervisor-mapped table; mappings batched per hypercall", hypervisor=True),
        _row("iounit_dma_ops", "arch/sparc/mm/io-unit.c", "single_level", SZ_4K, False,
             "sun4d IOUPTE table, per entry"),
        _row("sbus_iommu_dma_gflush_ops", "arch/sparc/mm/iommu.c", "single_level", SZ_4K, False,
             "sun4m table, per entry; flushes the whole IOTLB", flush="global"),
        _row("sbus_iommu_dma_pflush_ops", "arch/sparc/mm/iommu.c", "single_level", SZ_4K, False,
             "sun4m table, per entry; flushes per page", flush="page"),
        _row("gart_dma_ops", "arch/x86/kernel/amd_gart_64.c", "single_level", SZ_4K, False,
             "GATT aperture; maps only what the device cannot reach unless forced; "
             "flush on allocator wrap", window=SZ_64M, bypass=True),
        _row("iommu_dma_ops", "drivers/iommu/dma-iommu.c", "iommu_dma", SZ_4K, True,
             "multi-level page table; one IOVA for the list; segments padded to the granule"),
        _row("xen_swiotlb_dma_ops", "drivers/xen/swiotlb-xen.c", "xen", SZ_4K, False,
             "machine-contiguous and in mask: direct; else bounced through swiotlb"),
        _row("xen_grant_dma_ops", "drivers/xen/grant-dma-ops.c", "xen", SZ_4K, False,
             "a grant per page; DMA address = grant ref << PAGE_SHIFT | 1 << 63"),
        _row("vduse_dev_dma_ops", "drivers/vdpa/vdpa_user/vduse_dev.c", "vduse", SZ_4K, False,
             "bounce into an IOVA domain; no map_sg; max_mapping_size = bounce size",
             sg=False, window=SZ_64M),
        _row("dma_dummy_ops", "kernel/dma/dummy.c", "dummy", None, False,
             "always fails: map_page DMA_MAPPING_ERROR, map_sg -EINVAL, dma_supported 0"),
    )
}

#: Not a table: the path a device with no ops takes (kernel/dma/direct.c, with swiotlb).
DMA_DIRECT = _row("dma_direct", "kernel/dma/direct.c", "direct", None, False,
                  "no ops: phys_to_dma + dma_capable, swiotlb bounce when not capable or forced")
