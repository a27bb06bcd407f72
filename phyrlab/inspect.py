"""``phyrlab inspect``: this machine's PCI tree and the physical layout of a real buffer.

The PCI tree is :func:`phyrlab.pci.from_sysfs` (read-only sysfs), judged by the same v6.2 P2P
decision as the modelled topologies; the buffer is a fresh numpy array whose page frames are
read from ``/proc/self/pagemap`` (Documentation/admin-guide/mm/pagemap.rst). Both degrade to a
sentence saying why when the machine does not expose them (no PCI bus in a container, PFNs
hidden without ``CAP_SYS_ADMIN``, no IOMMU groups without an IOMMU).
"""

from __future__ import annotations

import numpy as np

from .errors import InputFileError
from .memory import PagemapError, pagemap_pfns, run_lengths
from .pci import experiments as ex
from .pci.p2pdma import cpu_supports_p2pdma
from .pci.sysfs import from_sysfs
from .pci.topology import Topology
from .storage import storage_rows
from .tables import format_table
from .units import PAGE_SIZE, SZ_2M, human_bytes
from .workloads import Buffer

_HUGE_PAGES = SZ_2M // PAGE_SIZE


def read_topology(root: str = "/sys") -> Topology | str:
    """This machine's PCI topology, or a sentence saying why sysfs could not give it."""
    try:
        return from_sysfs(root)
    except (InputFileError, OSError) as e:
        return f"no PCI topology from {root}: {e}"


def real_buffer(size: int, pagemap_path: str = "/proc/self/pagemap"
                ) -> tuple[Buffer, np.ndarray] | str:
    """A fresh ``size``-byte buffer and its page frames: ``(Buffer, the numpy array)`` (keep
    the array alive while the frames matter), or why pagemap could not give them."""
    if int(size) != size or size < 1:
        raise ValueError(f"size {size!r} must be a positive number of bytes")
    arr = np.empty(int(size), dtype=np.uint8)
    arr[::PAGE_SIZE] = 1  # one write per page: every page is really allocated (no zero page)
    arr[-1] = 1
    try:
        pfns, off = pagemap_pfns(arr, pagemap_path)
    except PagemapError as e:
        return str(e)
    return Buffer("this-machine", pfns, off, int(size)), arr


def contiguity_stats(pfns: np.ndarray) -> dict:
    """Run-length statistics of a PFN array (runs of consecutive frames, in list order)."""
    runs = run_lengths(pfns)
    if runs.size == 0:
        raise ValueError("no pages")
    return {"pages": int(pfns.size), "runs": int(runs.size),
            "mean_run_pages": round(float(runs.mean()), 2),
            "median_run_pages": float(np.median(runs)), "longest_run_pages": int(runs.max()),
            "pages_in_2MiB_runs_pct": round(100.0 * runs[runs >= _HUGE_PAGES].sum()
                                            / pfns.size, 1)}


def topology_report(topo: Topology) -> str:
    """CPU, tree, IOMMU groups and the P2P decision over every pair of endpoints."""
    s = ex.summary(topo)
    cpu = topo.cpu
    lines = [f"CPU: {cpu.vendor} family {cpu.family:#x} ({cpu.arch}) {cpu.name}".rstrip(),
             f"cpu_supports_p2pdma(): {s['cpu_p2p']}", "",
             f"PCI tree ({topo.source}): {s['functions']} functions, {s['host_bridges']} host "
             f"bridges, {s['bridges']} bridges, {s['endpoints']} endpoints", ex.tree_text(topo),
             f"note: {topo.description}", ""]
    groups = s["iommu_groups"]
    lines.append(f"IOMMU groups: {groups}" if groups else
                 "IOMMU groups: none (no IOMMU enabled, or a VM without a vIOMMU)")
    eps = topo.endpoints()
    if len(eps) >= 2:
        counts = ex.map_type_counts(ex.decision_matrix(topo))
        pairs = len(eps) * (len(eps) - 1)
        lines.append(f"P2P decision over {pairs} ordered pairs of endpoints: "
                     + ", ".join(f"{k} {v}" for k, v in counts.items()))
    else:
        lines.append(f"P2P decision: {len(eps)} endpoint(s), no pair to judge")
    prov = ex.providers(topo)
    lines.append(f"P2P memory providers (p2pmem in sysfs): {', '.join(prov) or 'none'}")
    return "\n".join(lines)


def buffer_report(size: int, pagemap_path: str = "/proc/self/pagemap") -> str:
    """Run-length statistics and storage per layout of a real ``size``-byte buffer."""
    got = real_buffer(size, pagemap_path)
    if isinstance(got, str):
        return f"real buffer of {human_bytes(size)}: {got}"
    buf, _keep = got
    stats = contiguity_stats(buf.pfns)
    rows = [{"layout": r["layout"], "entries": r["entries"], "bytes": r["bytes"],
             "bytes_per_MiB": r["bytes_per_MiB"]} for r in storage_rows(buf)]
    return "\n".join([
        f"real buffer of {human_bytes(size)} (page frames from {pagemap_path}):",
        format_table([stats]), "", "storage to describe it, per layout:", format_table(rows)])


def inspect_machine(size: int = 64 << 20, sysfs_root: str = "/sys",
                    pagemap_path: str = "/proc/self/pagemap") -> str:
    """The whole terminal report of ``phyrlab inspect``."""
    topo = read_topology(sysfs_root)
    parts = ["== phyrlab inspect: this machine", ""]
    parts.append(topo if isinstance(topo, str) else topology_report(topo))
    parts += ["", "== Physical contiguity of a real buffer", buffer_report(size, pagemap_path)]
    return "\n".join(parts)


def summary_rows(topo: Topology | str) -> list[dict] | str:
    """:func:`phyrlab.pci.experiments.summary` of this machine as one table row."""
    if isinstance(topo, str):
        return topo
    return [{"machine": topo.cpu.name or topo.cpu.vendor, **ex.summary(topo),
             "cpu_supports_p2pdma": "yes" if cpu_supports_p2pdma(topo.cpu) else "no"}]
