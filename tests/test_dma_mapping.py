"""The DMA API (mapping.py): a new DMA-side list, the old sg way, bad input, the catalogue."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import phyrlab.dma as dma
from phyrlab.dma import OPS, Device, DmaMapOps, dma_map, dma_unmap
from phyrlab.dma.direct import DmaDirect
from phyrlab.dma.mapping import dma_map_sgtable, dma_unmap_sgtable, split_for_device
from phyrlab.errors import DmaMappingError, RangeError
from phyrlab.units import DMA_BIT_MASK, SZ_4G, SZ_64K

U64 = np.uint64
DMA_DIR = Path(dma.__file__).parent


def pages(pfns, size=None):
    pfns = np.asarray(pfns, dtype=U64)
    addr = pfns << U64(12)
    length = np.full(pfns.size, 4096, dtype=U64)
    return addr, length


def test_catalogue_has_the_24_tables_of_v62():
    assert len(OPS) == 24
    assert {"iommu_dma_ops", "gart_dma_ops", "dma_dummy_ops", "vduse_dev_dma_ops",
            "ps3_ioc0_dma_ops", "xen_grant_dma_ops", "s390_pci_dma_ops"} <= set(OPS)
    assert [n for n, e in OPS.items() if not e.supports_sg] == [
        "ps3_ioc0_dma_ops", "vduse_dev_dma_ops"]
    assert OPS["iommu_dma_ops"].file == "drivers/iommu/dma-iommu.c"


def test_unknown_ops_lists_the_names():
    with pytest.raises(ValueError, match="unknown dma_map_ops 'nope'.*gart_dma_ops"):
        Device(ops="nope")


@pytest.mark.parametrize("kw", [dict(dma_mask=-1), dict(max_seg_size=0),
                                dict(seg_boundary_mask=0x1234), dict(dma_mask=1 << 64)])
def test_bad_device_fields_are_named(kw):
    name = next(iter(kw))
    with pytest.raises(ValueError, match=name):
        Device(**kw)


def test_cpu_list_is_never_written_and_result_is_new():
    dev = Device(dma_mask=DMA_BIT_MASK(64))
    addr, length = pages([5, 9, 10, 11, 40])
    a0, l0 = addr.copy(), length.copy()
    m = dma_map(dev, (addr, length), "to_device")
    assert np.array_equal(addr, a0) and np.array_equal(length, l0)
    assert m.dma_addr is not addr and not np.shares_memory(m.dma_addr, addr)
    # a bare pair is mapped as given, entry for entry, 1:1 by dma-direct
    assert np.array_equal(m.dma_addr, addr) and np.array_equal(m.length, length)
    assert m.stats["entries_walked"] == 5 and not m.per_range
    dma_unmap(dev, m)
    # a layout gives canonical ranges(): pfns 9..11 are one range
    layouts = pytest.importorskip("phyrlab.layouts")
    m = dma_map(dev, layouts.Phyr.from_ranges(addr, length), "to_device")
    assert list(m.dma_addr) == [5 << 12, 9 << 12, 40 << 12]
    assert list(m.length) == [4096, 3 * 4096, 4096]
    dma_unmap(dev, m)


def test_device_segments_are_cut_before_the_backend():
    dev = Device(dma_mask=DMA_BIT_MASK(64), max_seg_size=SZ_64K, seg_boundary_mask=0xF_FFFF)
    # 300 KiB starting 16 KiB below a 1 MiB line: 16K | 64K 64K 64K 64K 28K  (the 1 MiB
    # line cuts first, then 64 KiB pieces from each piece's start)
    start = (1 << 20) - 0x4000
    m = dma_map(dev, (np.array([start], dtype=U64), np.array([300 * 1024], dtype=U64)))
    assert list(m.length) == [0x4000, SZ_64K, SZ_64K, SZ_64K, SZ_64K, 300 * 1024 - 0x4000
                              - 4 * SZ_64K]
    assert int(m.dma_addr[1]) == 1 << 20


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.integers(0, 1 << 36), st.integers(1, 1 << 22)), min_size=1,
                max_size=20),
       st.integers(1, 1 << 20), st.sampled_from([0xFFF, 0xFFFF, 0xF_FFFF, (1 << 64) - 1]))
def test_split_matches_the_layouts_segments(rs, max_seg, boundary):
    layouts = pytest.importorskip("phyrlab.layouts")
    addr = np.array([a for a, _ in rs], dtype=U64)
    length = np.array([n for _, n in rs], dtype=U64)
    mine = split_for_device(addr, length, max_seg, boundary)
    theirs = layouts.split_segments(addr, length, max_seg, boundary)
    assert np.array_equal(mine[0], theirs[0]) and np.array_equal(mine[1], theirs[1])
    assert int(mine[1].sum()) == int(length.sum())


@pytest.mark.parametrize("bad", ["sideways", "none", None, 1])
def test_bad_direction_is_named(bad):
    dev = Device()
    with pytest.raises(ValueError, match="bad DMA direction"):
        dma_map(dev, pages([1]), bad)


def test_bad_ranges_name_the_index():
    dev = Device()
    with pytest.raises(RangeError, match=r"length\[1\] is zero"):
        dma_map(dev, (np.array([0, 8192]), np.array([4096, 0])))
    with pytest.raises(RangeError):
        dma_map(dev, (np.array([], dtype=U64), np.array([], dtype=U64)))


def test_unmap_checks_device_direction_and_double_unmap():
    dev, other = Device(), Device()
    m = dma_map(dev, pages([1, 3]), "from_device")
    with pytest.raises(ValueError, match="does not match the mapping's 'from_device'"):
        dma_unmap(dev, m, "to_device")
    with pytest.raises(ValueError, match="was mapped for"):
        dma_unmap(other, m)
    dma_unmap(dev, m)
    with pytest.raises(ValueError, match="already unmapped"):
        dma_unmap(dev, m)


class NoSgDirect(DmaDirect):
    """dma-direct without map_sg, as ps3_ioc0_dma_ops/vduse_dev_dma_ops are in v6.2."""

    name = "test_no_sg"
    supports_sg = False


def test_backend_without_map_sg_is_mapped_range_by_range():
    dev = Device(NoSgDirect())
    m = dma_map(dev, pages([1, 3, 4, 9]), "to_device")
    assert m.per_range
    assert list(m.dma_addr) == [1 << 12, 3 << 12, 4 << 12, 9 << 12]
    assert list(m.length) == [4096] * 4
    with pytest.raises(DmaMappingError, match="no map_sg"):
        DmaMapOps.map_sg(dev.ops, dev, m.dma_addr, m.length, "to_device")
    dma_unmap(dev, m)


def test_per_range_failure_unwinds_the_ranges_already_mapped():
    from phyrlab import faults
    dev = Device(NoSgDirect())          # 32-bit mask: the three high ranges bounce
    addr = np.array([SZ_4G, SZ_4G + 0x10000, SZ_4G + 0x20000], dtype=U64)
    before = dev.dma_io_tlb_mem.snapshot()
    with faults.inject("swiotlb_slot", nth=3), pytest.raises(DmaMappingError, match="range 2"):
        dma_map(dev, (addr, np.full(3, 4096, dtype=U64)))
    after = dev.dma_io_tlb_mem.snapshot()
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))


def test_sgtable_old_way_writes_its_own_entries_and_agrees():
    layouts = pytest.importorskip("phyrlab.layouts")
    pfns = np.array([7, 8, 9, 20, 21, 50], dtype=U64)
    sgt = layouts.sg_alloc_table_from_pages(pfns, 0, 6 * 4096, 1 << 31)
    dev = Device(dma_mask=DMA_BIT_MASK(64), max_seg_size=1 << 20)
    m_old = dma_map_sgtable(dev, sgt, "to_device")
    d, n = sgt.dma_ranges()
    assert sgt.nents == 3
    assert list(d) == [7 << 12, 20 << 12, 50 << 12] and list(n) == [3 * 4096, 8192, 4096]
    dma_unmap_sgtable(dev, sgt, "to_device")
    new = dma_map(dev, layouts.BioVec.from_pages(pfns), "to_device")
    assert np.array_equal(new.dma_addr, m_old.dma_addr)
    dma_unmap(dev, new)


def test_sgtable_may_repeat_a_page_as_the_kernel_allows_but_a_range_list_may_not():
    """dma_map_sg walks what the table holds: a bio may carry ZERO_PAGE twice. A phyr range
    list describes each byte once, so dma_map of the same pair is refused."""
    layouts = pytest.importorskip("phyrlab.layouts")
    pfns = np.array([0x1234, 0x99, 0x1234], dtype=U64)   # the same page twice
    sgt = layouts.sg_alloc_table_from_pages(pfns, 0, 3 * 4096, 1 << 31)
    dev = Device(dma_mask=DMA_BIT_MASK(64))
    m = dma_map_sgtable(dev, sgt, "to_device")
    assert list(m.dma_addr) == [0x1234 << 12, 0x99 << 12, 0x1234 << 12]
    dma_unmap_sgtable(dev, sgt, "to_device")
    with pytest.raises(RangeError, match="ranges 0 .* and 2 .* overlap"):
        dma_map(dev, sgt.sg_entries(), "to_device")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = "phyrlab.dma".split(".")[: 2 - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}
    return out


def test_no_backend_imports_a_layout_module():
    files = sorted(DMA_DIR.glob("*.py"))
    assert len(files) >= 6
    for f in files:
        mods = _imports(f)
        leaked = {m for m in mods if m.startswith("phyrlab.layouts.")
                  and m != "phyrlab.layouts.as_ranges"}
        assert not leaked, f"{f.name} imports layout modules {leaked}"
        if f.name != "mapping.py":
            assert "phyrlab.layouts" not in mods, f"{f.name} imports phyrlab.layouts"


def test_import_parser_sees_relative_and_absolute_imports(tmp_path):
    p = tmp_path / "x.py"
    p.write_text("from ..layouts import scatterlist\nimport phyrlab.layouts.bio_vec\n")
    mods = _imports(p)
    assert "phyrlab.layouts.scatterlist" in mods and "phyrlab.layouts.bio_vec" in mods
