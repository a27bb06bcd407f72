"""Issue 7: dma-debug (kernel/dma/debug.c) as an oracle.

The invariant suite runs through the :class:`~phyrlab.dma.DmaDebug` wrapper (map, sync for
cpu and device, unmap, driver unbind): a correct driver on a correct backend gets no report.
Each misuse class has a deliberately wrong driver that must be reported in the kernel's words.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phyrlab import reliability as rel
from phyrlab.layouts import LAYOUTS


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(backend=st.sampled_from(rel.BACKENDS), layout=st.sampled_from(list(LAYOUTS)),
       seed=st.integers(0, 2**20), npages=st.integers(1, 32),
       offset=st.sampled_from([0, 100, 3000]), high=st.booleans(),
       mask_bits=st.sampled_from([32, 64]), max_seg=st.sampled_from([4096, 0x10000, 1 << 20]),
       boundary_bits=st.sampled_from([16, 32, 64]),
       direction=st.sampled_from(rel.DIRECTIONS))
def test_correct_driver_gets_no_dma_debug_report(backend, layout, seed, npages, offset, high,
                                                  mask_bits, max_seg, boundary_bits,
                                                  direction):
    case = rel.Case(backend, layout, seed=seed, npages=npages, offset=offset, high=high,
                    mask_bits=mask_bits, max_seg=max_seg, boundary_bits=boundary_bits,
                    direction=direction)
    rel.check_case(case, debug=True, two_step=False)     # raises on any dma-debug report


@pytest.mark.parametrize("name", list(rel.MISUSE_DRIVERS))
def test_each_misuse_class_is_detected(name):
    _, want = rel.MISUSE_DRIVERS[name]
    errors = rel.run_misuse_driver(name)
    assert any(want in e for e in errors), errors
    assert all(e.startswith("DMA-API: wrong_driver 0000:01:00.0: ") for e in errors)


def test_a_clean_driver_is_not_reported():
    """The misuse harness itself is quiet for correct use (the oracle has no false alarm)."""
    dev, d = rel._misuse_dev()
    a = d.dma_map_phys(0x10_0000, 4096, "from_device")
    assert d.dma_mapping_error(a) == 0
    d.dma_sync_single_for_cpu(a, 4096, "from_device")
    d.dma_unmap_phys(a, 4096, "from_device")
    dl = d.dma_map(rel._ranges((0x10_0000, 0x8000), (0x30_0000, 0x1000)), "to_device")
    d.dma_sync_for_device(dl)
    d.dma_unmap(dl)
    assert d.driver_unbind() == 0 and d.errors == []


def test_a_backend_breaking_the_boundary_is_reported_by_dma_debug():
    """ppc's map_sg merge breaks the segment boundary in the kernel too; dma-debug says so
    ("mapping sg segment across boundary"), and the oracle only lets it pass as a waiver."""
    case = rel.Case("dma_iommu_ops", "phyr", seed=1, npages=48, mean_run=64.0, high=True,
                    mask_bits=32, boundary_bits=16, max_seg=1 << 20)
    out = rel.check_case(case, debug=True, two_step=False)
    assert out.waived[("dma_iommu_ops", "boundary")] > 0
