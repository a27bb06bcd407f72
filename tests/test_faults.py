"""Issue 7: fault injection at every N with complete unwind (lib/fault-inject.c style).

For small workloads on every backend, each fault point a mapping reaches is made to fail at
its 1st, 2nd ... Nth call (once, and from N on); the mapping must raise the kernel's errno
and leave every allocator as it was, or retry around the fault and still unmap cleanly.
"""

from __future__ import annotations

import pytest

from phyrlab import faults
from phyrlab import reliability as rel
from phyrlab.dma import Device, dma_map, dma_unmap
from phyrlab.errors import DmaMappingError
from phyrlab.units import DMA_BIT_MASK

# (backend, point, case): a workload that reaches the point
SWEEPS = [
    ("iommu_dma_ops", "iova_alloc", dict(mask_bits=64)),
    ("iommu_dma_ops", "pt_alloc", dict(mask_bits=64)),
    ("iommu_dma_ops", "swiotlb_slot", dict(untrusted=True, offset=512)),
    ("iommu_dma_ops", "pt_alloc", dict(untrusted=True, offset=512)),
    ("dma_direct", "swiotlb_slot", dict(high=True, mask_bits=32)),
    ("xen_swiotlb_dma_ops", "swiotlb_slot", dict(mask_bits=32, mean_run=1.0)),
    ("xen_grant_dma_ops", "grant_alloc", dict(mask_bits=64)),
    ("vduse_dev_dma_ops", "iova_alloc", dict()),
    ("vduse_dev_dma_ops", "bounce_alloc", dict()),
    ("s390_pci_dma_ops", "iommu_area_alloc", dict(mask_bits=64)),
    ("s390_pci_dma_ops", "pt_alloc", dict(mask_bits=64)),
    *[(b, "iommu_area_alloc", dict(high=True, mask_bits=32))
      for b, e in rel.OPS.items() if e.family == "single_level"],
]


@pytest.mark.parametrize("two_step", [False, True], ids=["one-step", "two-step"])
@pytest.mark.parametrize("backend,point,kw", SWEEPS,
                         ids=[f"{b}-{p}-{i}" for i, (b, p, _) in enumerate(SWEEPS)])
def test_every_nth_failure_unwinds(backend, point, kw, two_step):
    case = rel.Case(backend, "phyr", **{"seed": 9, "npages": 6, "mean_run": 2.0, **kw})
    try:
        res = rel.fault_sweep(case, point, two_step=two_step)
    finally:
        faults.reset()
    if not two_step or backend == "iommu_dma_ops":
        assert res, f"{point} never reached"                # the sweep really injected
        assert any(r.outcome != "ok" for r in res), res     # ... and something failed
    for r in res:
        assert r.outcome in rel.MAP_ERRNOS | {"ok"}


def test_expected_errnos():
    """The kernel's errno per path: map_sg -ENOMEM (iommu_dma_map_sg), -EIO
    (dma_direct_map_sg after a failed bounce), -EIO from xen_grant_dma_map_sg."""
    def first(backend, point, **kw):
        case = rel.Case(backend, "phyr", seed=9, npages=4, mean_run=1.0, **kw)
        try:
            return rel.fault_sweep(case, point, times_list=(1 << 30,))[0].outcome
        finally:
            faults.reset()

    assert first("iommu_dma_ops", "iova_alloc", mask_bits=32) == "ENOMEM"
    assert first("iommu_dma_ops", "pt_alloc", mask_bits=64) == "ENOMEM"
    assert first("dma_direct", "swiotlb_slot", high=True, mask_bits=32) == "EIO"
    assert first("xen_grant_dma_ops", "grant_alloc", mask_bits=64) == "EIO"   # map_sg -EIO


def test_the_sweep_detects_an_incomplete_unwind(monkeypatch):
    """A backend that forgets to free on failure is caught (the check can fail)."""
    from phyrlab.dma.xen import XenGrantOps

    real = XenGrantOps.unmap_phys
    monkeypatch.setattr(XenGrantOps, "unmap_phys", lambda *a, **k: None)
    monkeypatch.setattr(XenGrantOps, "batch", False)  # the per-call unwind, through unmap_phys
    case = rel.Case("xen_grant_dma_ops", "phyr", seed=9, npages=6, mean_run=1.0, mask_bits=64)
    try:
        with pytest.raises(rel.InvariantError, match="not given back"):
            rel.fault_sweep(case, "grant_alloc", times_list=(1,))
    finally:
        faults.reset()
        monkeypatch.setattr(XenGrantOps, "unmap_phys", real)


def test_inject_counts_and_refuses_bad_arguments():
    faults.reset()
    with faults.inject("grant_alloc", nth=2, times=2) as armed:
        assert [faults.should_fail("grant_alloc") for _ in range(4)] == [False, True, True, False]
        assert armed.failed == 2
    assert faults.stats.calls["grant_alloc"] == 4 and faults.stats.failed["grant_alloc"] == 2
    with pytest.raises(ValueError, match="nth=0"):
        with faults.inject("pt_alloc", nth=0):
            pass
    faults.reset()
    assert faults.stats.calls == {}


def test_swiotlb_alignment_check_ignores_alloc_align_mask():
    """Untrusted device, 64 KiB boundary, buffer at page offset 0x900: the 64 KiB bounce
    (alloc_align_mask 0xfff) fits slot 0 of an empty pool (v6.9+ swiotlb_search_pool_area)."""
    dev = Device("iommu_dma_ops", dma_mask=DMA_BIT_MASK(64), untrusted=True,
                 max_seg_size=1 << 20, seg_boundary_mask=0xFFFF)
    import numpy as np

    dl = dma_map(dev, (np.array([0x100_0900], np.uint64), np.array([0xF700], np.uint64)))
    dma_unmap(dev, dl)


def test_parisc_coalesce_caps_chunks_at_the_segment_boundary():
    """iommu_coalesce_chunks: a chunk is at most min(max_seg_size, DMA_CHUNK_SIZE,
    seg_boundary + 1) counted as ALIGN(offset + length, IOVP_SIZE), so it always fits."""
    import numpy as np

    dev = Device("ccio_ops", dma_mask=DMA_BIT_MASK(32), max_seg_size=1 << 20,
                 seg_boundary_mask=0xFFFF)
    addr = np.array([0x100_0000, 0x200_0000], np.uint64)        # two page-aligned 48K pieces
    length = np.array([0xC000, 0xC000], np.uint64)
    try:
        dl = dma_map(dev, (addr, length))
    except DmaMappingError as exc:
        pytest.fail(f"kernel maps this: {exc}")
    dma_unmap(dev, dl)


@pytest.mark.parametrize("nth,times,n", [(1, 1, 5), (3, 1, 5), (5, 1, 5), (6, 1, 5), (2, 3, 4),
                                         (1, 2, 0), (4, 2, 10)])
def test_first_failure_is_a_run_of_should_fail(nth, times, n):
    """first_failure(point, n) ends in the state n single should_fail calls (stopping at the
    first failure) leave, and returns the failing index."""
    def run(batched: bool) -> tuple[list[int], dict, dict]:
        faults.reset()
        out = []
        with faults.inject("pt_alloc", nth=nth, times=times) as armed:
            for _ in range(3):  # three batches in a row: the armed state carries over
                if batched:
                    out.append(faults.first_failure("pt_alloc", n))
                else:
                    k = next((i for i in range(n) if faults.should_fail("pt_alloc")), n)
                    out.append(k)
            state = (armed.calls, armed.failed)
        return out, dict(faults.stats.calls), {"state": state, **faults.stats.failed}

    assert run(True) == run(False)
    faults.reset()


def test_first_failure_unarmed_counts_calls():
    faults.reset()
    assert faults.first_failure("iova_alloc", 7) == 7
    assert faults.stats.calls["iova_alloc"] == 7
    with pytest.raises(ValueError, match="n=-1"):
        faults.first_failure("iova_alloc", -1)
    faults.reset()
