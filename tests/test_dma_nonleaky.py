"""The non-leaky claim: every backend gives the same DMA-side list for the same memory in
every layout, and gives everything back on unmap."""

from __future__ import annotations

import numpy as np
import pytest

from phyrlab.dma import OPS, Device, dma_map, dma_unmap
from phyrlab.errors import DmaMappingError

layouts = pytest.importorskip("phyrlab.layouts")
U64 = np.uint64


def memory():
    """Seeded page-aligned runs of 1..8 pages in a shuffled order, below 240 MiB (inside
    ps3's linear region) and under 1 MiB in all (inside vio's default entitlement)."""
    rng = np.random.default_rng(2023)
    starts = rng.choice(np.arange(0x10, 0xF00), size=24, replace=False).astype(U64) * U64(16)
    pages = rng.integers(1, 9, size=24).astype(U64)
    return starts << U64(12), pages << U64(12)


def build(cls, addr, length):
    pfns = np.concatenate([np.arange(int(a) >> 12, (int(a) + int(n)) >> 12, dtype=U64)
                           for a, n in zip(addr, length, strict=True)])
    try:
        return cls.from_ranges(addr, length)
    except Exception:     # layouts that only take pages
        return cls.from_pages(pfns)


def map_all(name):
    addr, length = memory()
    out = {}
    for lname, cls in layouts.LAYOUTS.items():
        try:
            dev = Device(ops=name) if name != "-" else Device()
        except NotImplementedError as exc:
            pytest.skip(f"{name}: {exc}")
        x = build(cls, addr, length)
        try:
            m = dma_map(dev, x, "bidirectional")
        except DmaMappingError as exc:
            out[lname] = ("error", exc.errno, str(exc))
            assert all(v == 0 for v in dev.resources().values()), dev.resources()
            continue
        out[lname] = ("ok", m.dma_addr.copy(), m.length.copy(), m.bounced.copy(),
                      np.array([m.per_range]))
        dma_unmap(dev, m)
        assert all(v == 0 for v in dev.resources().values()), (lname, dev.resources())
    return out


@pytest.mark.parametrize("name", ["-", *OPS])
def test_same_memory_same_dma_list_in_every_layout(name):
    out = map_all(name)
    first_name, first = next(iter(out.items()))
    assert len(out) == len(layouts.LAYOUTS) >= 5
    for lname, got in out.items():
        assert got[0] == first[0], (lname, first_name)
        if got[0] == "error":
            assert got[1:] == first[1:]
            continue
        for a, b in zip(got[1:], first[1:], strict=True):
            assert np.array_equal(a, b), (name, lname, first_name)
    if name == "dma_dummy_ops":                                # kernel/dma/dummy.c
        assert first[:2] == ("error", "EINVAL")
        return
    assert first[0] == "ok", first                             # this memory suits every row
    addr, length = memory()
    assert int(first[2].sum()) == int(length.sum())           # every byte is mapped once
    # rows without map_sg in v6.2 are mapped range by range, the others through map_sg
    assert bool(first[4][0]) == (name != "-" and not OPS[name].supports_sg)
