"""Notebook 00's figures: one headline per design decision, each computed by the model of the
notebook that studies it (nothing here is a number of its own)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from . import backends, cpu_dma_split, storage, twostep
from .iommu import experiments as iommu_x
from .pci import experiments as pci_x
from .units import human_bytes
from .workloads import build

#: the notebooks, in reading order, with the question each answers.
NOTEBOOKS = [
    ("01-storage-size", "What does it cost to store a range list, per layout?"),
    ("02-cpu-dma-split", "What does keeping the CPU list apart from the DMA list buy?"),
    ("03-iommu-page-tables", "What does an IOMMU pay to make a long list one DMA range?"),
    ("04-mapping-backends", "Can one range list map through all 24 dma_map_ops?"),
    ("05-p2p-checks", "How does the kernel decide peer-to-peer DMA, with all its checks?"),
    ("06-two-step-api", "map_sg or the two-step IOVA API the kernel adopted?"),
    ("07-this-machine", "What does this machine's own memory and PCI tree look like?"),
]

#: the storage/backends summary's workloads and sizes (the live panel's choices).
WORKLOADS = ["nvme-4k-random", "nvme-128k-seq", "rdma-mr-1g-4k", "gpu-buffer"]


@lru_cache(maxsize=32)
def storage_columns(workload: str, size: int) -> dict[str, list]:
    """Bytes of storage per layout for one buffer (notebook 01's model); the buffer is the one
    :func:`backend_columns` maps (``backends.buffer``, cached), built once."""
    return storage.storage_columns(storage.storage_rows(backends.buffer(workload, size)))


def backend_columns(workload: str, size: int) -> dict[str, list]:
    """DMA segments the device gets from each of the 24 dma_map_ops and dma-direct (04)."""
    return backends.columns(backends.run_all(workload, size), "dma_segments")


def iommu_series(size: int = 64 << 20) -> dict[str, list]:
    """PTE writes per MiB mapped, per page-table format, for 4 KiB- and 2 MiB-backed memory."""
    rows = iommu_x.cost_rows(["rdma-mr-1g-4k", "rdma-mr-1g-2m"], size=size)
    formats = list(dict.fromkeys(r["format"] for r in rows))
    out: dict[str, list] = {"format": formats}
    for label, w in (("4 KiB pages", "rdma-mr-1g-4k"), ("2 MiB pages", "rdma-mr-1g-2m")):
        by = {r["format"]: r["pte_writes_per_MiB"] for r in rows if r["workload"] == w}
        out[label] = [by[f] for f in formats]
    return out


def split_series(size: int = 8 << 20) -> dict[str, list]:
    """Bytes of the combined scatterlist vs phyr + DMA list, per mapping backend (02)."""
    rows = cpu_dma_split.split_rows("rdma-mr-1g-4k", size)
    names = list(dict.fromkeys(r["backend"] for r in rows))
    out: dict[str, list] = {"backend": names}
    for lst in dict.fromkeys(r["list"] for r in rows):
        by = {r["backend"]: r["bytes"] for r in rows if r["list"] == lst}
        out[lst] = [by[n] for n in names]
    return out


def p2p_series() -> dict[str, list]:
    """Map types of every provider/client pair, per topology file, as booted (05)."""
    rows = [r for r in pci_x.variant_rows() if r["acs_redirect"] == "as booted"
            and r["whitelist"] == "on"]
    out: dict[str, list] = {"topology": [r["topology"] for r in rows]}
    for kind in ("BUS_ADDR", "THRU_HOST_BRIDGE", "NOT_SUPPORTED"):
        out[kind] = [r[kind] for r in rows]
    return out


def headline_rows() -> list[dict[str, Any]]:
    """One row per decision: the notebook and the figure that answers its question."""
    st = {r["layout"]: r["bytes"]
          for r in storage.storage_rows(build("rdma-mr-1g-4k"))}
    split = split_series()
    io = iommu_series()
    # RAM below 256 MiB, so the PS3's linear region can hold it too
    res = backends.run_all("nvme-128k-seq", 128 << 10, placement="low")
    mapped = sum(r.ok for r in res)
    per_range = [r.ops for r in res if r.ok and r.per_range]
    refused = [f"{r.ops} -{r.errno}" for r in res if not r.ok]
    p2p = p2p_series()
    two = twostep.compare("rdma-mr-1g-4k", 8 << 20)
    calls = {r["method"]: r["map_calls"] for r in two if r["backend"] == "iommu"}
    return [
        {"notebook": "01", "decision": "storage size",
         "figure": f"1 GiB RDMA MR: scatterlist {human_bytes(st['scatterlist'])}, "
                   f"phyr {human_bytes(st['phyr'])}, pfn_run {human_bytes(st['pfn_run'])}"},
        {"notebook": "02", "decision": "CPU/DMA split",
         "figure": "8 MiB MR behind an IOMMU: "
                   f"{human_bytes(split['scatterlist'][split['backend'].index('iommu')])} "
                   "combined vs "
                   f"{human_bytes(split['phyr + dma_vec'][split['backend'].index('iommu')])}"
                   " split"},
        {"notebook": "03", "decision": "IOMMU page tables",
         "figure": f"x86_64: {io['4 KiB pages'][0]:.1f} PTE writes/MiB on 4 KiB pages, "
                   f"{io['2 MiB pages'][0]:.2f} on 2 MiB pages"},
        {"notebook": "04", "decision": "24 dma_map_ops",
         "figure": f"128 KiB NVMe read in low RAM: {mapped} of {len(res)} map it "
                   f"({', '.join(per_range)} range by range); refused: {', '.join(refused)}"},
        {"notebook": "05", "decision": "P2P checks",
         "figure": f"{sum(p2p['BUS_ADDR'])} BUS_ADDR, {sum(p2p['THRU_HOST_BRIDGE'])} "
                   f"THRU_HOST_BRIDGE, {sum(p2p['NOT_SUPPORTED'])} NOT_SUPPORTED pairs "
                   f"in {len(p2p['topology'])} topologies"},
        {"notebook": "06", "decision": "two-step IOVA API",
         "figure": f"8 MiB MR: {calls.get('map_sg', 0)} calls with map_sg, "
                   f"{calls.get('two-step', 0)} with dma_iova_link"},
    ]
