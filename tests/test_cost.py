"""The cost model: loading and checking YAML, and pricing counted operations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from phyrlab import cost
from phyrlab.dma.device import Device
from phyrlab.dma.ops import STAT_KEYS
from phyrlab.errors import InputFileError


def _doc() -> dict:
    return yaml.safe_load((cost.DATA_DIR / "x86-default.yaml").read_text())


def _write(tmp_path: Path, doc: dict, name: str = "m.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(doc))
    return p


def test_default_model_is_complete_and_cited():
    m = cost.load()
    assert m.name == "x86-default"
    assert set(m.costs) == set(cost.COST_KEYS)
    for c in m.costs.values():
        assert c.ns >= 0 and len(c.source) > 20  # every constant names where it comes from
    assert "x86-default" in cost.available()


def test_every_backend_counter_can_be_priced():
    assert set(STAT_KEYS) <= set(cost.COST_KEYS)


def test_price_is_the_linear_sum():
    m = cost.load()
    p = m.price({"pte_writes": 10, "iotlb_flushes": 2, "bounce_bytes": 4096}, calls=1)
    want = 10 * m.ns_per("pte_writes") + 2 * m.ns_per("iotlb_flushes") \
        + 4096 * m.ns_per("bounce_bytes") + m.ns_per("calls")
    assert p.total_ns == pytest.approx(want)
    # x86-default: 10 * 5 + 2 * 1000 + 4096 * 0.1 + 25
    assert p.total_ns == pytest.approx(50 + 2000 + 409.6 + 25)
    assert p.top(1) == [("iotlb_flushes", 2000.0)]


def test_unknown_counters_are_reported_not_guessed():
    p = cost.load().price({"pte_writes": 1, "stc_mystery": 3})
    assert p.unpriced == ("stc_mystery",)
    assert p.total_ns == pytest.approx(5.0)


def test_bad_counter_value():
    with pytest.raises(ValueError, match="pte_writes"):
        cost.load().price({"pte_writes": -1})


def test_prices_a_real_mapping():
    dev = Device("gart_dma_ops")
    dma, dlen, _ = dev.ops.map_sg(dev, np.array([1 << 33], np.uint64),
                                  np.array([8192], np.uint64), "to_device")
    m = cost.load()
    ns = m.ns(dev.ops.stats)
    # 1 entry walked, 1 allocation, 2 GATT entries written, 1 flush_gart
    assert ns == pytest.approx(2 + 100 + 2 * 5 + 1000)


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda d: d.update(colour="red"), "colour"),
        (lambda d: d["costs"].update(pte_reads={"ns": 1, "source": "x"}), "costs.pte_reads"),
        (lambda d: d["costs"]["pte_writes"].update(ns=-1), "costs.pte_writes.ns"),
        (lambda d: d["costs"]["pte_writes"].update(ns="fast"), "costs.pte_writes.ns"),
        (lambda d: d["costs"].pop("grants"), "costs.grants"),
        (lambda d: d["costs"]["hypercalls"].pop("source"), "costs.hypercalls.source"),
        (lambda d: d["costs"]["hypercalls"].update(source="  "), "costs.hypercalls.source"),
        (lambda d: d["costs"]["hypercalls"].update(unit="ns"), "costs.hypercalls.unit"),
        (lambda d: d.pop("name"), "name"),
        (lambda d: d.update(cpu_ghz=0), "cpu_ghz"),
    ],
)
def test_bad_files_name_the_file_and_key(tmp_path, mutate, key):
    doc = _doc()
    mutate(doc)
    path = _write(tmp_path, doc)
    with pytest.raises(InputFileError) as exc:
        cost.CostModel.load(path)
    assert str(path) in str(exc.value)
    assert key in str(exc.value)


def test_not_yaml_and_not_a_mapping(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("name: [unclosed\n")
    with pytest.raises(InputFileError, match="broken.yaml.*line"):
        cost.CostModel.load(p)
    p.write_text("- 1\n- 2\n")
    with pytest.raises(InputFileError, match="mapping"):
        cost.CostModel.load(p)


def test_missing_model():
    with pytest.raises(InputFileError, match="no-such-model"):
        cost.load("no-such-model")
    with pytest.raises(InputFileError, match="cannot read"):
        cost.CostModel.load("/nonexistent/x.yaml")


def test_a_copy_loads_by_path(tmp_path):
    doc = _doc()
    doc["name"] = "mine"
    doc["costs"]["iotlb_flushes"]["ns"] = 250
    m = cost.load(_write(tmp_path, doc))
    assert m.name == "mine" and m.ns_per("iotlb_flushes") == 250
