"""``xen_swiotlb_dma_ops`` with batched bounces gives exactly what the per-entry walk gives.

``XenSwiotlbOps.batch`` switches ``map_sg`` between windows of entries whose bounces go
through ``swiotlb_map_many`` (runs of slots at once, the unwind and ``unmap_sg`` through
``IoTlbMem.unmap_many``) and the per-entry ``xen_swiotlb_map_page`` loop (one
``swiotlb_tbl_map_single`` per bounce), which tests/test_dma_families.py holds to the kernel.
Random range lists, P2M layouts, device limits, pool sizes and states and injected
``swiotlb_slot`` faults must give the same DMA lists, errnos, messages, counters, pool state
and fault-injection counts either way.
"""

from __future__ import annotations

import identity
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from phyrlab import faults
from phyrlab.dma.device import Device
from phyrlab.dma.mapping import dma_map, dma_unmap
from phyrlab.dma.swiotlb import IoTlbMem
from phyrlab.errors import DmaMappingError
from phyrlab.units import DMA_BIT_MASK, PAGE_SIZE, ULONG_MAX

U = np.uint64
SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.data_too_large])
DIRECTIONS = ["bidirectional", "to_device", "from_device"]
NR_PAGES = 1 << 21  # 8 GiB of guest memory


def range_lists(max_n: int = 60):
    """:func:`identity.range_lists` with this file's bases and lengths."""
    return identity.range_lists(max_n, [0x1_0000_0000, 0x10_0000, 0x3F00_0000, 0x1_7FFF_0000],
                                [1, 512, 4096, 4096, 4096, 8192, 12288, 4096 * 5, 65536, 3000])


def _state(dev) -> tuple:
    pool = dev.dma_io_tlb_mem
    return ([a.tobytes() for a in pool.snapshot()], pool.area_index.tobytes(),
            dict(pool.stats), list(pool.warnings), dict(dev.ops.stats),
            list(dev.ops._p2m_fix), dev.resources())


def _device(batch: bool, params: dict, limits: dict, pool: dict) -> Device:
    mem = IoTlbMem(**pool)
    mem.batch = batch
    dev = Device("xen_swiotlb_dma_ops", ops_params=params, swiotlb=mem, **limits)
    dev.ops.batch = batch
    return dev


def _drive(batch: bool, params: dict, limits: dict, pool: dict, lists, directions,
           unmap_every: int, armed, fault_at: int) -> list:
    """Map every list in turn through ``dma_map`` (unmapping some), ``swiotlb_slot`` faults
    armed on list ``fault_at``; everything observable after each step."""
    faults.reset()
    dev = _device(batch, params, limits, pool)
    seen, live = [], []
    for k, (addr, length) in enumerate(lists):
        direction = directions[k % len(directions)]
        try:
            if armed and k == fault_at % len(lists):
                nth, times = armed
                with faults.inject("swiotlb_slot", nth=nth, times=times):
                    m = dma_map(dev, (addr, length), direction)
            else:
                m = dma_map(dev, (addr, length), direction)
            live.append(m)
            seen.append(("ok", m.dma_addr.tobytes(), m.length.tobytes(), m.bounced.tobytes(),
                         dict(m.stats)))
        except (DmaMappingError, ValueError) as exc:
            seen.append(("err", type(exc).__name__, getattr(exc, "errno", None), str(exc)))
        if unmap_every and live and k % unmap_every == 0:
            seen.append(dict(dma_unmap(dev, live.pop(0))))
        seen.append(_state(dev))
        seen.append((dict(faults.stats.calls), dict(faults.stats.failed)))
    for m in live:
        seen.append(dict(dma_unmap(dev, m)))
    seen.append(_state(dev))
    return seen


LIMITS = st.fixed_dictionaries({
    "dma_mask": st.sampled_from([DMA_BIT_MASK(32), DMA_BIT_MASK(32), DMA_BIT_MASK(33),
                                 DMA_BIT_MASK(34), DMA_BIT_MASK(64), DMA_BIT_MASK(30)]),
    # 0x6010_0000: inside the default pool; 0x4200_0000: the remapped pool half reachable
    "bus_dma_limit": st.sampled_from([0, 0, 0, 0x6010_0000, 0x4200_0000]),
    "max_seg_size": st.sampled_from([4096, 65536, 1 << 20]),
    "seg_boundary_mask": st.sampled_from([ULONG_MAX, ULONG_MAX, 0xFFFF, 0x3_FFFF]),
    "min_align_mask": st.sampled_from([0, 0, 0, 0x7FF, 0xFFF]),
    "force_bounce": st.sampled_from([False, False, False, True]),
})
PARAMS = st.fixed_dictionaries({
    "nr_pages": st.just(NR_PAGES),
    "chunk_pages": st.sampled_from([1, 3, 512, 512]),
    "seed": st.integers(0, 3),
    "pool_mfn": st.sampled_from([0x4_0000, 0x4_0000, 0x20_0000]),
})
POOLS = st.fixed_dictionaries({
    "size": st.sampled_from([128 * 2048, 512 * 2048, 1 << 22, 1 << 26]),
    "nareas": st.sampled_from([1, 1, 2, 4]),
    "cpu": st.integers(0, 3),
})
ARMED = st.one_of(st.none(), st.tuples(st.one_of(st.integers(1, 4), st.integers(1, 80)),
                                       st.integers(1, 3)))


@SETTINGS
@given(lists=st.lists(range_lists(), min_size=1, max_size=5), params=PARAMS, limits=LIMITS,
       pool=POOLS, directions=st.lists(st.sampled_from(DIRECTIONS), min_size=1, max_size=3),
       unmap_every=st.integers(0, 2), armed=ARMED, fault_at=st.integers(0, 4))
def test_xen_swiotlb_map_sg_batched_equals_per_entry(lists, params, limits, pool, directions,
                                                     unmap_every, armed, fault_at):
    out = [_drive(b, params, limits, pool, lists, directions, unmap_every, armed, fault_at)
           for b in (True, False)]
    assert out[0] == out[1]


@pytest.mark.parametrize("mask_bits,n", [(32, 40_000), (33, 40_000), (64, 3000)])
def test_xen_swiotlb_fills_identically_at_scale(mask_bits, n):
    """Thousands of pages (some straddling chunk boundaries): the 64 MiB pool fills, or
    not, and unwinds the same way; a smaller list maps and unmaps around the failure."""
    rng = np.random.default_rng(7)
    pfn = np.sort(rng.choice(NR_PAGES // 4 - 8, n, replace=False)).astype(U)
    addr = pfn * U(4 * PAGE_SIZE)
    length = np.full(n, PAGE_SIZE, U)
    length[::5] = 3 * PAGE_SIZE
    addr[::7] += U(100)
    small = (addr[:9000:2].copy(), length[:9000:2].copy())
    params = {"nr_pages": NR_PAGES, "chunk_pages": 4, "seed": 1}
    limits = {"dma_mask": DMA_BIT_MASK(mask_bits), "max_seg_size": 1 << 20}
    out = [_drive(b, params, limits, {"size": 1 << 26}, [small, (addr, length), small],
                  ["bidirectional", "to_device"], 2, None, 0) for b in (True, False)]
    assert out[0] == out[1]


@pytest.mark.parametrize("nth", [1, 2, 16_000, 16_384])
def test_xen_swiotlb_fault_at_scale(nth):
    """A slot fault part way through a 20,000-bounce list: same entry, message, unwind."""
    n = 20_000
    addr = U(0x1_0000_0000) + np.arange(n, dtype=U) * U(2 * PAGE_SIZE)
    length = np.full(n, PAGE_SIZE, U)
    out = [_drive(b, {"nr_pages": NR_PAGES}, {"dma_mask": DMA_BIT_MASK(32)}, {},
                  [(addr, length)], ["from_device"], 0, (nth, 1), 0) for b in (True, False)]
    assert out[0] == out[1]
    assert out[0][0][0] == "err"


@pytest.mark.parametrize("batch", [True, False])
def test_xen_swiotlb_map_sg_direct_ops(batch):
    """``map_sg``/``unmap_sg`` called directly: the pool is given back whole either way, and
    a list beyond the guest's pages is refused before anything is mapped."""
    dev = _device(batch, {"nr_pages": NR_PAGES}, {"dma_mask": DMA_BIT_MASK(32)}, {})
    ops, pool = dev.ops, dev.dma_io_tlb_mem
    before = pool.snapshot()
    addr = U(0x1_0000_0000) + np.arange(100, dtype=U) * U(3 * PAGE_SIZE)
    length = np.full(100, 5000, U)
    dma, dlen, cookie = ops.map_sg(dev, addr, length, "bidirectional")
    assert bool(cookie.bounced.all()) and pool.used == 3 * 100  # 3 page-aligned slots each
    ops.unmap_sg(dev, dma, dlen, "bidirectional", cookie)
    assert all(np.array_equal(a, b) for a, b in zip(pool.snapshot(), before, strict=True))
    bad = np.append(addr, U(NR_PAGES * PAGE_SIZE))
    with pytest.raises(ValueError, match="beyond the guest"):
        ops.map_sg(dev, bad, np.append(length, U(1)), "to_device")
    assert pool.used == 0
