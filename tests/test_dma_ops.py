"""ops.py: the catalogue's structure, family registration, counters."""

from __future__ import annotations

import numpy as np
import pytest

from phyrlab.dma import OPS, Device, DmaMapOps, OpsEntry, dma_map, dma_unmap
from phyrlab.dma.ops import (
    DMA_DIRECT,
    FAMILY_MODULES,
    DmaStats,
    check_direction,
    register_family,
)
from phyrlab.errors import DmaMappingError


def test_every_row_names_a_file_a_known_family_and_a_factory():
    for name, e in OPS.items():
        assert e.name == name and e.file.endswith(".c") and e.family in FAMILY_MODULES
        assert e.factory is not None, f"{name}: family {e.family} registers nothing"
        ops = e.create()
        assert isinstance(ops, DmaMapOps) and ops.name == name and ops.family == e.family
        assert ops.supports_sg == e.supports_sg
        assert all(v == 0 for v in ops.resources().values())
    assert DMA_DIRECT.create().name == "dma_direct"


def test_register_family_checks_its_arguments():
    with pytest.raises(ValueError, match="unknown DMA ops family 'nope'"):
        register_family("nope", lambda e: None)
    factory = OPS["dma_dummy_ops"].factory
    with pytest.raises(ValueError, match="not a 'dummy' row"):
        register_family("dummy", factory, overrides={"gart_dma_ops": {"window": 1}})
    with pytest.raises(ValueError, match="cannot set 'name'"):
        register_family("dummy", factory, overrides={"dma_dummy_ops": {"name": "x"}})


def test_missing_factory_is_a_clear_error():
    e = OpsEntry("made_up_ops", "x.c", "linear", None, False)
    e.family = "made_up"
    with pytest.raises(NotImplementedError, match="no backend registered for family 'made_up'"):
        e.create()


def test_direction_names_and_stats_diff():
    assert check_direction("to_device") == 1 and check_direction("none", allow_none=True) == 3
    with pytest.raises(ValueError, match="'none'"):
        check_direction("none")
    s = DmaStats(pte_writes=5, iotlb_flushes=1)
    assert s.pte_writes == 5 and s.bounce_bytes == 0
    assert s.diff({"pte_writes": 2, "iotlb_flushes": 1}) == {"pte_writes": 3}


def test_dummy_ops_refuse_and_take_nothing():
    dev = Device("dma_dummy_ops")
    with pytest.raises(DmaMappingError) as e:
        dma_map(dev, (np.array([0x1000], dtype=np.uint64), np.array([4096], dtype=np.uint64)))
    assert e.value.errno == "EINVAL"
    assert all(v == 0 for v in dev.resources().values())


def test_stats_of_a_list_are_its_own():
    dev = Device("iommu_dma_ops", dma_mask=(1 << 64) - 1)
    a = (np.array([0x1000], dtype=np.uint64), np.array([8192], dtype=np.uint64))
    m1 = dma_map(dev, a)
    m2 = dma_map(dev, a)
    assert m1.stats["pte_writes"] >= 2 and m2.stats["iova_allocs"] == 1
    assert dev.ops.stats["iova_allocs"] == 2
    dma_unmap(dev, m1)
    dma_unmap(dev, m2)
