"""A mapping that fails part way frees its arrays at once: no exception-frame reference cycle.

A batched path that returns a caught exception instead of raising it keeps the exception's
traceback; the traceback's frames point back (``f_back``) at the caller that holds the
exception, and the cycle keeps every frame's 10^6-entry arrays alive until the cyclic GC
runs. In a notebook that is hundreds of MB per control change, paid again as page faults.
"""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

from phyrlab import faults
from phyrlab.dma import Device, dma_map
from phyrlab.dma.iova_state import dma_map_iova
from phyrlab.errors import DmaMappingError
from phyrlab.units import DMA_BIT_MASK, SZ_4G

U = np.uint64


def _fails_without_cycles(map_fn, dev, n: int) -> None:
    addr = (np.arange(n, dtype=U) * U(2 * 4096)) + U(SZ_4G)
    length = np.full(n, 4096, dtype=U)
    probe = weakref.ref(addr)
    gc.collect()
    gc.disable()
    try:
        with pytest.raises(DmaMappingError):
            map_fn(dev, (addr, length))
        del addr, length
        assert probe() is None, "the input array outlived the failed mapping"
        assert gc.collect() == 0, "the failed mapping left a reference cycle"
    finally:
        gc.enable()


def test_swiotlb_full_leaves_no_cycle():
    # a 32-bit device above 4 GiB bounces every page: the 64 MiB pool fills at 16,384
    _fails_without_cycles(dma_map, Device(dma_mask=DMA_BIT_MASK(32)), 20_000)


def test_two_step_link_failure_leaves_no_cycle():
    # a 32-bit dma-direct device takes dma_map_iova's fallback path, bouncing each range
    _fails_without_cycles(dma_map_iova, Device(dma_mask=DMA_BIT_MASK(32)), 20_000)


@pytest.mark.parametrize("nth", [1, 3, 40])
def test_two_step_page_table_fault_leaves_no_cycle(nth):
    dev = Device("iommu_dma_ops", dma_mask=DMA_BIT_MASK(64))
    with faults.inject("pt_alloc", nth=nth):
        _fails_without_cycles(dma_map_iova, dev, 20_000)


def test_xen_grant_exhaustion_leaves_no_cycle():
    from phyrlab.dma.xen import XenGrantOps

    dev = Device("xen_grant_dma_ops", dma_mask=DMA_BIT_MASK(64))
    assert isinstance(dev.ops, XenGrantOps)
    with faults.inject("grant_alloc", nth=500):
        _fails_without_cycles(dma_map, dev, 2_000)


@pytest.mark.parametrize("batch", [True, False])
def test_xen_swiotlb_full_leaves_no_cycle(batch):
    # every page above 4 GiB bounces for a 32-bit device: the 64 MiB pool fills at 16,384
    dev = Device("xen_swiotlb_dma_ops", dma_mask=DMA_BIT_MASK(32))
    dev.ops.batch = batch
    _fails_without_cycles(dma_map, dev, 20_000)
