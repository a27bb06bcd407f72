"""Helpers of the batch-identity tests: a batched model path against its per-call reference.

``range_lists`` draws DMA range lists; ``pt_state``, ``fault_state`` and ``outcome`` reduce a
page table, the fault-injection counters and a call's result or error to comparable values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from hypothesis import strategies as st

from phyrlab import faults
from phyrlab.errors import DmaMappingError
from phyrlab.iommu.pagetable import PageTable
from phyrlab.units import PAGE_SIZE

U = np.uint64


@st.composite
def range_lists(draw, max_n: int, bases: Sequence[int], sizes: Sequence[int]):
    """Entries contiguous with the previous one, page aligned elsewhere, or at an offset;
    lengths from ``sizes``; the list starts at one of ``bases``."""
    n = draw(st.integers(1, max_n))
    base = draw(st.sampled_from(list(bases)))
    kinds = draw(st.lists(st.sampled_from("cpo"), min_size=n, max_size=n))
    lens = draw(st.lists(st.sampled_from(list(sizes)), min_size=n, max_size=n))
    gaps = draw(st.lists(st.integers(1, 64), min_size=n, max_size=n))
    offs = draw(st.lists(st.integers(1, 4095), min_size=n, max_size=n))
    addr, length, pos = [], [], base
    for i in range(n):
        if kinds[i] == "c" and i:
            a = pos
        else:
            a = ((pos + PAGE_SIZE - 1) // PAGE_SIZE + gaps[i]) * PAGE_SIZE
            if kinds[i] == "o":
                a += offs[i]
        addr.append(a)
        length.append(lens[i])
        pos = a + lens[i]
    return np.array(addr, U), np.array(length, U)


def pt_state(pt: PageTable) -> tuple:
    """Every PTE, table page and counter of a page table."""
    s = pt.stats
    return (pt._pte.tobytes(), pt._pte.shape, pt._nvalid.tobytes(), pt._tlevel.tobytes(),
            pt._free.tobytes(), s.pte_writes, s.table_pages, s.table_bytes,
            s.table_pages_allocated, s.table_pages_freed, s.mapped_bytes,
            list(s.leaves.items()), list(s.leaves_mapped.items()), s.iotlb_syncs)


def fault_state() -> tuple:
    """Calls and failures at every fault point, and the armed points' counts."""
    return (sorted(faults.stats.calls.items()), sorted(faults.stats.failed.items()),
            sorted((k, a.calls, a.failed) for k, a in faults._armed.items()))


def outcome(fn: Callable[[], Any]) -> tuple:
    """``("ok", result)``, or the error's type, errno and message."""
    try:
        return ("ok", fn())
    except (DmaMappingError, ValueError) as exc:
        return (type(exc).__name__, getattr(exc, "errno", None), str(exc))


def pool_state(mem) -> tuple:
    """Every slot, area cursor, counter and warning of a swiotlb pool (``IoTlbMem``)."""
    return tuple(a.tobytes() for a in mem.snapshot()) + (
        mem.area_index.tobytes(), dict(mem.stats), tuple(mem.warnings))


def map_sg_rounds(dev, mem, rng, next_list: Callable[[], tuple], reach32: float,
                  fault_nth: int) -> list:
    """Three rounds of ``dev.ops.map_sg`` of ``next_list()`` (a ``reach32`` share of entries
    moved below 4 GiB; ``fault_nth`` arms the swiotlb slot search in the second round), each
    followed half the time by the ``unmap_sg`` of the oldest live list: what each gave, and
    the pool, counters and fault calls after it."""
    from contextlib import nullcontext

    ops = dev.ops
    seen: list = []
    live = []
    for k in range(3):
        paddr, size = next_list()
        paddr[rng.random(paddr.size) < reach32] &= U(0xFFFF_FFFF)
        armed = (faults.inject("swiotlb_slot", nth=fault_nth) if fault_nth and k == 1
                 else nullcontext())
        try:
            with armed:
                dma, dlen, cookie = ops.map_sg(dev, paddr, size, "bidirectional")
            live.append((dma, dlen, cookie))
            seen.append((dma.tobytes(), dlen.tobytes(), cookie.bounced.tobytes()))
        except DmaMappingError as exc:
            seen.append((exc.errno, str(exc)))
        seen += [pool_state(mem), dict(ops.stats), dict(faults.stats.calls)]
        if live and rng.random() < 0.5:
            dma, dlen, cookie = live.pop(0)
            ops.unmap_sg(dev, dma, dlen, "from_device", cookie)
            seen += [pool_state(mem), dict(ops.stats)]
    return seen
