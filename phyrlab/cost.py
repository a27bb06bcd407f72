"""Modelled time from counted operations: a cost table per machine, loaded from YAML.

A mapping's counters (``DmaStats``: PTE writes, IOTLB flushes, bounce bytes, hypercalls...,
the keys of :data:`phyrlab.dma.ops.STAT_KEYS`) are priced by a :class:`CostModel` whose
constants live in ``data/cost-models/<name>.yaml``, each with the published figure it comes
from. The model is linear: ``ns = sum(count[k] * ns_per[k])``, the way the papers that
measured these costs report them (cycles per operation). Simplified: no overlap between
operations, no contention, no cache effects beyond what a constant already averages.

File format (``yaml.safe_load``)::

    name: x86-default            # required
    description: ...             # required
    cpu_ghz: 2.0                 # optional, used to print cycles
    costs:                       # required: every key of COST_KEYS
      pte_writes: {ns: 2.0, per: "entry", source: "..."}

Unknown keys, a missing field, a cost that is negative or not a number raise
:class:`~phyrlab.errors.InputFileError` naming the file and the key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from phyrlab.errors import InputFileError

#: Counters the model prices: the keys of ``phyrlab.dma.ops.STAT_KEYS`` plus the fixed
#: cost of one map/unmap call and a page-table page allocation.
COST_KEYS = (
    "calls",  # one map_* / unmap_* call into the ops table (indirect call, locking)
    "entries_walked",  # input ranges looked at
    "pte_writes",  # IOMMU/TCE/GATT entries written or cleared
    "iotlb_flushes",  # IOTLB / STC / RPCIT invalidations issued
    "bounce_bytes",  # bytes copied to or from a bounce buffer
    "bounce_slots",  # swiotlb slots taken (slot search)
    "iova_allocs",  # IOVA ranges allocated (allocator search)
    "hypercalls",  # hypervisor calls
    "cache_maint_bytes",  # bytes cleaned/invalidated for a non-coherent device
    "grants",  # Xen grant references taken
    "table_pages",  # page-table pages allocated
)

_TOP_KEYS = {"name", "description", "cpu_ghz", "costs"}
_REQUIRED_TOP = ("name", "description", "costs")
_COST_FIELDS = {"ns", "per", "source"}
_REQUIRED_COST = ("ns", "source")

#: Directory of the shipped models (``data/cost-models`` at the repository root).
DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "cost-models"


@dataclass(frozen=True)
class Cost:
    """One constant: nanoseconds per unit of a counter, and where the figure comes from."""

    key: str
    ns: float
    source: str
    per: str = ""


@dataclass(frozen=True)
class Priced:
    """The modelled time of a set of counters: total and per counter."""

    total_ns: float
    by_key: dict[str, float] = field(default_factory=dict)
    unpriced: tuple[str, ...] = ()

    def top(self, n: int = 3) -> list[tuple[str, float]]:
        """The ``n`` counters that cost most, largest first."""
        return sorted(self.by_key.items(), key=lambda kv: -kv[1])[:n]


@dataclass(frozen=True)
class CostModel:
    """A machine's cost table: ``price(stats)`` turns counters into modelled nanoseconds."""

    name: str
    description: str
    costs: dict[str, Cost]
    cpu_ghz: float | None = None
    path: str = ""

    def ns_per(self, key: str) -> float:
        """Nanoseconds per unit of counter ``key``."""
        try:
            return self.costs[key].ns
        except KeyError:
            raise KeyError(f"cost model {self.name!r} has no cost {key!r}") from None

    def price(self, stats: Mapping[str, int | float], calls: int = 0) -> Priced:
        """Modelled time of ``stats`` (a ``DmaStats`` or any counter mapping).

        ``calls`` adds the fixed per-call cost (or pass a ``"calls"`` counter). Counters the
        model has no constant for are listed in ``unpriced`` and not guessed.
        """
        counts = dict(stats)
        if calls:
            counts["calls"] = counts.get("calls", 0) + calls
        by_key: dict[str, float] = {}
        unpriced = []
        for key, n in counts.items():
            if not isinstance(n, (int, float)) or isinstance(n, bool) or n < 0:
                raise ValueError(f"counter {key!r} = {n!r}: expected a non-negative number")
            if key in self.costs:
                if n:
                    by_key[key] = n * self.costs[key].ns
            elif n:
                unpriced.append(key)
        return Priced(math.fsum(by_key.values()), by_key, tuple(sorted(unpriced)))

    def ns(self, stats: Mapping[str, int | float], calls: int = 0) -> float:
        """Total modelled nanoseconds of ``stats``."""
        return self.price(stats, calls).total_ns

    @classmethod
    def load(cls, path: str | Path) -> CostModel:
        """Load and check a cost-model YAML file."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise InputFileError(f"{path}: cannot read cost model: {exc.strerror}") from None
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise InputFileError(f"{path}:{where} not valid YAML: {exc}") from None
        return cls.from_dict(doc, str(path))

    @classmethod
    def from_dict(cls, doc: Any, where: str = "<dict>") -> CostModel:
        """Build from a parsed document; ``where`` names the file in errors."""
        if not isinstance(doc, dict):
            raise InputFileError(f"{where}: a cost model is a mapping, got {type(doc).__name__}")
        unknown = sorted(set(doc) - _TOP_KEYS)
        if unknown:
            raise InputFileError(
                f"{where}: unknown key {unknown[0]!r} (expected {sorted(_TOP_KEYS)})")
        for key in _REQUIRED_TOP:
            if key not in doc:
                raise InputFileError(f"{where}: missing field {key!r}")
        cpu_ghz = doc.get("cpu_ghz")
        if cpu_ghz is not None and (not _is_number(cpu_ghz) or cpu_ghz <= 0):
            raise InputFileError(f"{where}: cpu_ghz = {cpu_ghz!r}: expected a positive number")
        raw = doc["costs"]
        if not isinstance(raw, dict):
            raise InputFileError(f"{where}: costs must be a mapping of counter -> cost")
        unknown = sorted(set(raw) - set(COST_KEYS))
        if unknown:
            raise InputFileError(
                f"{where}: unknown key costs.{unknown[0]} (expected one of {list(COST_KEYS)})")
        costs = {}
        for key in COST_KEYS:
            if key not in raw:
                raise InputFileError(f"{where}: missing field costs.{key}")
            costs[key] = _cost(raw[key], key, where)
        return cls(str(doc["name"]), str(doc["description"]), costs, cpu_ghz, where)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _cost(item: Any, key: str, where: str) -> Cost:
    if not isinstance(item, dict):
        raise InputFileError(f"{where}: costs.{key} must be a mapping with ns and source")
    unknown = sorted(set(item) - _COST_FIELDS)
    if unknown:
        raise InputFileError(f"{where}: unknown key costs.{key}.{unknown[0]}")
    for f in _REQUIRED_COST:
        if f not in item:
            raise InputFileError(f"{where}: missing field costs.{key}.{f}")
    ns = item["ns"]
    if not _is_number(ns):
        raise InputFileError(f"{where}: costs.{key}.ns = {ns!r}: expected a number")
    if ns < 0:
        raise InputFileError(f"{where}: costs.{key}.ns = {ns!r}: a cost cannot be negative")
    source = item["source"]
    if not isinstance(source, str) or not source.strip():
        raise InputFileError(f"{where}: costs.{key}.source must cite where the figure comes from")
    return Cost(key, float(ns), source.strip(), str(item.get("per", "")))


def available() -> list[str]:
    """Names of the shipped cost models (files in ``data/cost-models``)."""
    return sorted(p.stem for p in DATA_DIR.glob("*.yaml"))


def load(name_or_path: str | Path = "x86-default") -> CostModel:
    """Load a shipped model by name (``"x86-default"``) or any YAML file by path."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return CostModel.load(p)
    path = DATA_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise InputFileError(
            f"{path}: no cost model {str(name_or_path)!r} (available: {available()})")
    return CostModel.load(path)
