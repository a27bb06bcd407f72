"""Notebook 02 figures held to hand-computed kernel layouts (struct sizes, chunking, lines)."""

import numpy as np
import pytest

import phyrlab as pl
from phyrlab import cpu_dma_split as cs
from phyrlab.layouts import sg_alloc_table_from_pages
from phyrlab.units import DMA_BIT_MASK


def test_struct_sizes_are_the_kernels():
    # struct scatterlist: page_link 8, offset 4, length 4 | dma_address 8, dma_length 4, flags 4
    rows = {r["struct"]: r for r in cs.struct_rows()}
    assert rows["struct scatterlist"]["bytes"] == 32
    assert rows["struct scatterlist"]["dma_fields"] == 16
    # struct nvme_dma_vec {dma_addr_t addr; unsigned int len;}: 12 bytes padded to 16
    assert cs.DMA_VEC_DTYPE.itemsize == 16
    assert cs.DMA_VEC_DTYPE.fields["len"][1] == 8


def test_lines_touched_worked_examples():
    # four 32-byte entries, whole: bytes 0..127 -> lines 0 and 1
    assert cs.lines_touched(np.arange(4) * 32, 32) == 2
    # DMA fields only (bytes 16..27 of each 32-byte entry) of three entries: lines 0, 0, 1
    assert cs.lines_touched(np.arange(3) * 32 + 16, 12) == 2
    # one access straddling a line boundary
    assert cs.lines_touched(np.array([60]), 8) == 2
    assert cs.lines_touched(np.array([], dtype=np.int64), 8) == 0


def test_lines_touched_rejects_bad_input():
    with pytest.raises(ValueError, match="accesses 0 and 1 overlap"):
        cs.lines_touched(np.array([0, 8]), 16)
    with pytest.raises(ValueError, match="access 1 has size 0"):
        cs.lines_touched(np.array([0, 8]), np.array([8, 0]))


def test_sg_walk_of_1024_pages_through_the_iommu():
    # 1024 scattered pages: 8 chunks of 128 (127 data + chain link) + 8 = 1032 entries
    buf = pl.workloads.build("nvme-4k-random")
    rows = {(r["backend"], r["list"]): r for r in cs.split_rows("nvme-4k-random")}
    comb = rows[("iommu", "scatterlist")]
    assert comb["cpu_entries"] == 1024 and comb["dma_entries"] == 1
    assert comb["bytes"] == 16 + 1032 * 32
    assert comb["dma_bytes"] == 1032 * 16            # DMA fields carried by every entry
    assert comb["map_lines"] == 1032 * 32 // 64      # 516: every line of the chunks
    assert comb["driver_lines"] == 1                 # nents == 1: entry 0 only
    spl = rows[("iommu", "phyr + dma_vec")]
    assert spl["dma_entries"] == 1 and spl["bytes"] == 1024 * 16 + 16
    assert spl["map_lines"] == 1024 * 16 // 64 + 1   # CPU list read + one dma_vec written
    assert spl["driver_lines"] == 1
    assert buf.size == 4 << 20


def test_direct_and_swiotlb_keep_one_dma_entry_per_range():
    rows = {(r["backend"], r["list"]): r for r in cs.split_rows("nvme-4k-random")}
    for backend in ("dma-direct", "swiotlb"):
        comb = rows[(backend, "scatterlist")]
        spl = rows[(backend, "phyr + dma_vec")]
        assert comb["dma_entries"] == spl["dma_entries"] == 1024
        assert comb["driver_lines"] == 516           # DMA fields of all 1032 entries
        assert spl["driver_lines"] == 1024 * 16 // 64
    # a 32-bit device and memory above 4 GiB: every byte is bounced
    assert rows[("swiotlb", "scatterlist")]["bounce_bytes"] == 4 << 20
    assert rows[("dma-direct", "scatterlist")]["bounce_bytes"] == 0


def test_swiotlb_device_segments_stop_at_its_max_mapping_size():
    # swiotlb_max_mapping_size: IO_TLB_SIZE (2 KiB) * IO_TLB_SEGSIZE (128) = 256 KiB
    assert cs.make_device("swiotlb").max_seg_size == 256 << 10
    # 2 MiB huge pages: the table is cut at 256 KiB and each entry bounces on its own
    buf = pl.workloads.build("rdma-mr-1g-2m", size=4 << 20)
    comb = cs.measure_combined(buf, "swiotlb")
    assert comb["error"] == "" and comb["cpu_entries"] == comb["dma_entries"] == 16


def test_swiotlb_pool_exhaustion_is_an_error_row():
    buf = pl.workloads.build("rdma-mr-1g-4k", size=128 << 20, mean_run_pages=64)
    row = cs.measure_split(buf, "swiotlb")
    assert row["error"] == "-EIO" and row["dma_entries"] == 0   # 64 MiB pool < 128 MiB


def test_cpu_list_is_not_written_by_the_split_mapping():
    buf = pl.workloads.build("nvme-128k-seq")
    x = buf.layout("bio_vec")
    before = x.entries.copy()
    dev = cs.make_device("iommu")
    dl = pl.dma.dma_map(dev, x)
    assert np.array_equal(x.entries, before)
    assert cs.dma_vec_array(dl)["len"].sum() == buf.size
    pl.dma.dma_unmap(dev, dl)


def test_map_sgtable_maps_entries_unmerged_and_sets_nents():
    pfns = np.array([0x100000, 0x100001, 0x100002, 0x100003])    # one 16 KiB run
    sgt = sg_alloc_table_from_pages(pfns, 0, 4 * 4096, 8192)   # cut into 2 x 8 KiB entries
    dev = pl.dma.Device(None, dma_mask=DMA_BIT_MASK(64))
    dl = pl.dma.dma_map_sgtable(dev, sgt)   # for_each_sg: entries as stored, not merged
    assert sgt.nents == 2 and list(dl.length) == [8192, 8192]
    assert list(sgt.dma_ranges()[0]) == [0x100000 << 12, (0x100000 << 12) + 8192]
    pl.dma.dma_unmap_sgtable(dev, sgt)
    assert sgt.mapping is None


def test_bad_names_are_refused():
    with pytest.raises(ValueError, match="'nope'"):
        cs.make_device("nope")
    buf = pl.workloads.build("nvme-128k-seq")
    with pytest.raises(ValueError, match="scatterlist"):
        cs.measure_split(buf, "iommu", "scatterlist")


def test_panel_and_site_page():
    from bokeh.embed import file_html
    from bokeh.resources import INLINE

    from phyrlab.site.dma_split import site_page
    from phyrlab.widgets.dma_split import split_panel

    panel = split_panel(size=1 << 20)
    before = list(panel.sources["split"].data["bytes"])
    panel.update(size=1 << 21)
    assert panel.sources["split"].data["bytes"] != before
    html = file_html(site_page(), INLINE, title="t")
    assert "cdn.bokeh.org" not in html and "customjs" in html.lower()


def _sg_walk_lines_every_entry(sgt) -> dict[str, int]:
    """The walks entry by entry over the whole table (the reference for the chunked count)."""
    from phyrlab.layouts.scatterlist import SCATTERLIST_DTYPE, SG_CHAIN

    size = SCATTERLIST_DTYPE.itemsize
    chain = (sgt.entries["page_link"] & np.uint64(SG_CHAIN)) != 0
    pos = np.arange(len(sgt.entries), dtype=np.int64)
    link = SCATTERLIST_DTYPE.fields["page_link"][0].itemsize
    map_lines = cs.lines_touched(pos * size, np.where(chain, link, size))
    if sgt.nents == 0:
        return {"map_lines": map_lines, "driver_lines": 0}
    last = int(np.flatnonzero(~chain)[sgt.nents - 1])
    dstart = SCATTERLIST_DTYPE.fields["dma_address"][1]
    dsize = SCATTERLIST_DTYPE.fields["dma_length"][1] + 4 - dstart
    c = chain[: last + 1]
    off = np.where(c, pos[: last + 1] * size, pos[: last + 1] * size + dstart)
    return {"map_lines": map_lines,
            "driver_lines": cs.lines_touched(off, np.where(c, link, dsize))}


@pytest.mark.parametrize("n", [1, 2, 127, 128, 129, 254, 255, 256, 300, 5000])
def test_sg_walk_lines_chunked_equals_entry_by_entry(n):
    pfns = np.arange(0, 2 * n, 2, dtype=np.uint64) + 0x100000
    sgt = sg_alloc_table_from_pages(pfns)
    for nents in sorted({0, 1, min(2, n), n // 3, n - 1, n}):
        sgt.nents = nents
        assert cs.sg_walk_lines(sgt) == _sg_walk_lines_every_entry(sgt), (n, nents)


@pytest.mark.parametrize("entry_size", [8, 12, 16, 24, 32, 40, 48, 96])
def test_array_lines_by_period_equals_every_entry(entry_size):
    for n in [0, 1, 3, 7, 8, 9, 100, 1001]:
        for start, size in [(0, entry_size), (entry_size // 2, entry_size // 2), (4, 4)]:
            every = cs.lines_touched(np.arange(n, dtype=np.int64) * entry_size + start, size)
            assert cs.array_lines(n, entry_size, (start, size)) == every, (entry_size, n, start)
