"""Notebook 04's figures (phyrlab.backends), held to what the kernel does.

Expected values are worked out by hand from the kernel functions named next to them
(kernel/dma/mapping.c, kernel/dma/swiotlb.c, drivers/iommu/dma-iommu.c, kernel/dma/dummy.c,
drivers/xen/grant-dma-ops.c, arch/powerpc/platforms/pseries/ibmebus.c), never from the
model's own output.
"""

from __future__ import annotations

import numpy as np
import pytest

from phyrlab import backends as bx
from phyrlab import faults
from phyrlab.dma import OPS
from phyrlab.units import SZ_1M, SZ_64K, U32_MAX

U = np.uint64
SCATTERED_16 = ("nvme-4k-random", SZ_64K)  # 16 order-0 pages, no two adjacent


def row(results, name):
    return next(r for r in results if r.ops == name)


def pages(n: int, base: int = 0x1_0000_0000) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 4 KiB pages two pages apart (never adjacent) from ``base``."""
    addr = U(base) + np.arange(n, dtype=U) * U(0x2000)
    return addr, np.full(n, 0x1000, dtype=U)


# ----------------------------------------------------------------------- the rows
def test_rows_are_dma_direct_then_the_24_tables_grouped_by_family():
    assert len(bx.ROWS) == 25 and bx.ROWS[0] == "dma_direct"
    assert sorted(bx.ROWS[1:]) == sorted(OPS)
    fams = [bx.family_of(n) for n in bx.ROWS]
    seen = []
    for f in fams:                       # each family is one contiguous block
        if not seen or seen[-1] != f:
            assert f not in seen, f"family {f} split in ROWS"
            seen.append(f)
    assert seen == list(bx.FAMILIES)


# ----------------------------------------------------------------------- worked examples
def test_dma_direct_bounces_every_page_above_a_32_bit_mask():
    # dma_direct_map_page: dma_capable() fails above 4 GiB -> swiotlb_map; BIDIRECTIONAL
    # copies to the bounce slot at map and back at unmap (swiotlb_bounce both ways).
    r = bx.map_through("dma_direct", pages(16), bx.Limits(32))
    assert r.ok and r.dma_segments == 16 and r.bounced_segments == 16
    assert r.bounce_bytes == 2 * 16 * 4096
    r64 = bx.map_through("dma_direct", pages(16), bx.Limits(64))
    assert r64.ok and r64.bounce_bytes == 0 and r64.bounced_segments == 0


def test_iommu_dma_merges_up_to_max_seg_size():
    # iommu_dma_map_sg lays 256 pages back to back in one IOVA range; __finalise_sg joins
    # them while the segment stays <= dma_get_max_seg_size: 1 MiB / 64 KiB = 16 segments,
    # one with UINT_MAX.
    x = pages(256)
    assert bx.map_through("iommu_dma_ops", x, bx.Limits(64, SZ_64K)).dma_segments == 16
    assert bx.map_through("iommu_dma_ops", x, bx.Limits(64, U32_MAX)).dma_segments == 1
    # dma-direct never merges: one segment per page whatever max_seg_size
    assert bx.map_through("dma_direct", x, bx.Limits(64, U32_MAX)).dma_segments == 256


def test_dma_set_mask_refusals_follow_dma_supported():
    # dma_set_mask returns -EIO when ops->dma_supported(dev, mask) is 0:
    # ibmebus_dma_supported and xen_grant_dma_supported: mask == DMA_BIT_MASK(64);
    # dma_dummy_supported: always 0.
    x = pages(4)
    for name in ("ibmebus_dma_ops", "xen_grant_dma_ops"):
        assert not bx.map_through(name, x, bx.Limits(32)).mask_ok
        assert bx.map_through(name, x, bx.Limits(64)).mask_ok
    assert not bx.map_through("dma_dummy_ops", x, bx.Limits(64)).mask_ok
    assert bx.map_through("iommu_dma_ops", x, bx.Limits(32)).mask_ok


def test_dummy_refuses_with_einval_and_holds_nothing():
    # dma_dummy_map_sg returns -EINVAL (v5.16+, so v6.2)
    r = bx.map_through("dma_dummy_ops", pages(4))
    assert r.errno == "EINVAL" and r.status == "-EINVAL" and r.held_after == 0
    assert r.dma_segments == 0 and r.total_ns == 0


def test_ps3_linear_region_refuses_memory_above_256_mib():
    # ps3_dma_map fails outside the static region: ps3_sb_map_sg returns -EINVAL
    high = bx.map_through("ps3_sb_dma_ops", pages(4))
    assert high.errno == "EINVAL"
    low = bx.map_through("ps3_sb_dma_ops", pages(4, base=0x100_0000))
    assert low.ok and low.dma_segments == 4


def test_bypass_rows_write_no_pte_when_the_mask_covers_memory():
    # sba_dma_ops (ALLOW_IOV_BYPASS), powerpc dma_iommu_ops (dma_iommu_map_bypass) and
    # gart_dma_ops (need_iommu() false): a 64-bit mask maps physical addresses as they are
    x = pages(8)
    for name in ("sba_dma_ops", "dma_iommu_ops", "gart_dma_ops"):
        r64 = bx.map_through(name, x, bx.Limits(64))
        assert r64.ok and r64.pte_writes == 0 and r64.dma_segments == 8, name
        r32 = bx.map_through(name, x, bx.Limits(32))
        assert r32.pte_writes == 2 * 8, name   # 8 I/O pages written at map, cleared at unmap


def test_modelled_time_prices_calls_and_walks():
    # ibmebus: no table, nothing copied: one map_sg + one unmap_sg call and 4 entries walked
    model = bx._model("x86-default")
    r = bx.map_through("ibmebus_dma_ops", pages(4), bx.Limits(64))
    expect = 2 * model.ns_per("calls") + 4 * model.ns_per("entries_walked")
    assert r.total_ns == pytest.approx(expect)


def test_rows_without_map_sg_pay_one_call_per_range():
    # ps3_ioc0 has no working map_sg: dma_map goes through map_phys, one call per range
    model = bx._model("x86-default")
    x = pages(5, base=0x100_0000)
    r = bx.map_through("ps3_ioc0_dma_ops", x, bx.Limits(64))
    assert r.ok and r.per_range and r.cpu_ranges == 5
    expect = 2 * 5 * model.ns_per("calls") + 5 * model.ns_per("entries_walked")
    assert r.total_ns == pytest.approx(expect)
    sg = bx.map_through("ps3_sb_dma_ops", x, bx.Limits(64))
    assert not sg.per_range and sg.total_ns < r.total_ns


def test_a_failure_part_way_gives_everything_back():
    # iommu_dma_map_sg: iommu_dma_alloc_iova failure -> -ENOMEM, nothing held
    # (alloc_iova_fast retries once after flushing the rcaches: fail both tries)
    with faults.inject("iova_alloc", nth=1, times=4):
        r = bx.map_through("iommu_dma_ops", pages(8), bx.Limits(32))
    assert r.errno == "ENOMEM" and r.held_after == 0
    # a window too small: jazz's VDMA table holds 16 MiB; 32 MiB of scattered pages fail
    big = bx.map_through("jazz_dma_ops", pages(8192), bx.Limits(64))
    assert not big.ok and big.held_after == 0


def test_refusals_use_only_the_errnos_dma_map_sgtable_returns():
    # __dma_map_sg_attrs lets -EINVAL, -ENOMEM and -EIO through (anything else is -EIO)
    res = bx.run_all("gpu-buffer", 32 * SZ_1M, bx.Limits(64))
    refused = [r for r in res if not r.ok]
    assert refused, "a 32 MiB buffer must not fit every window"
    assert {r.errno for r in refused} <= {"EINVAL", "ENOMEM", "EIO"}
    assert all(r.held_after == 0 for r in res)
    assert {"jazz_dma_ops", "dma_dummy_ops"} <= {r.ops for r in refused}
    rows = bx.refusal_rows(res)
    assert [r["ops"] for r in rows] == [r.ops for r in refused]
    assert all(r["errno"].startswith("-E") and r["held_after"] == 0 for r in rows)


# ----------------------------------------------------------------------- tables and columns
def test_columns_show_a_refusal_as_its_errno():
    res = bx.run_all(*SCATTERED_16, bx.Limits(32))
    for metric in bx.METRICS:
        cols = bx.columns(res, metric)
        assert cols["ops"] == list(bx.ROWS)
        assert all(len(v) == 25 for v in cols.values())
        i = cols["ops"].index("dma_dummy_ops")
        assert cols["value"][i] == 0 and cols["label"][i] == "refused: -EINVAL"
    cols = bx.columns(res, "bounce_bytes")
    assert cols["value"][0] == 2 * SZ_64K                       # dma_direct, 32-bit mask
    assert "(range by range)" in cols["label"][cols["ops"].index("vduse_dev_dma_ops")]
    with pytest.raises(ValueError, match="'nope'"):
        bx.columns(res, "nope")


def test_compare_rows_name_only_what_changed():
    a = bx.run_all(*SCATTERED_16, bx.Limits(32))
    b = bx.run_all(*SCATTERED_16, bx.Limits(64))
    changed = {r["ops"] for r in bx.compare_rows(a, b, "32", "64")}
    assert {"dma_direct", "xen_swiotlb_dma_ops", "sba_dma_ops"} <= changed
    assert "iommu_dma_ops" not in changed                      # translates whatever the mask


def test_catalogue_rows_mark_the_rows_without_map_sg():
    rows = {r["ops"]: r for r in bx.catalogue_rows()}
    assert set(bx.NO_MAP_SG) == {"ps3_ioc0_dma_ops", "vduse_dev_dma_ops"}
    for name in bx.NO_MAP_SG:
        assert rows[name]["map_sg"] == "none: per range"
    # swiotlb_max_mapping_size: IO_TLB_SEGSIZE (128) slots of 2 KiB; VDUSE: its 64 MiB domain
    assert rows["dma_direct"]["max_mapping"] == "256 KiB"
    assert rows["vduse_dev_dma_ops"]["max_mapping"] == "64 MiB"


def test_every_layout_gives_the_same_dma_list():
    rows = bx.nonleaky_rows("nvme-128k-seq", placement="low")
    assert len(rows) >= 5
    assert all(r["same_dma_list"] == r["rows_compared"] == 25 and r["equal"] == "yes"
               for r in rows)


def test_per_range_rows_map_what_v62_map_sg_refuses():
    rows = {r["ops"]: r for r in bx.per_range_rows("nvme-128k-seq", placement="low")}
    for name in bx.NO_MAP_SG:
        r = rows[name]
        assert r["map_sg_v6.2"] == "-EINVAL" and r["dma_map"] == "ok"
        assert r["via"] == "map_phys per range" and r["calls"] == r["segs_in"] == r["segs_out"]
    assert rows["ps3_ioc0_dma_ops"]["same_as_ps3_sb"] == "yes"   # same linear translation
    assert rows["ps3_sb_dma_ops"]["map_sg_v6.2"] == "ok"


def test_bad_input_names_the_value():
    with pytest.raises(ValueError, match="'no_such_ops'"):
        bx.map_through("no_such_ops", pages(1))
    with pytest.raises(ValueError, match="dma_bits 7"):
        bx.Limits(7)
    with pytest.raises(ValueError, match="'middle'"):
        bx.buffer("nvme-4k-random", SZ_64K, "middle")


# ----------------------------------------------------------------------- panel and site
def test_panel_moves_the_bars_when_the_size_changes():
    from phyrlab.widgets.backends import backends_panel

    panel = backends_panel(size=SZ_64K)
    src = panel.sources["backends"]
    before = list(src.data["value"])
    panel.update(size=2 * SZ_64K)
    assert list(src.data["value"]) != before
    assert src.data["ops"] == list(bx.ROWS) and len(src.data["color"]) == 25


def test_site_page_is_offline():
    from bokeh.embed import file_html
    from bokeh.resources import INLINE

    from phyrlab.site.backends import site_page

    html = file_html(site_page(), INLINE, title="04")
    assert "cdn.bokeh.org" not in html
    assert "customjs" in html.lower()


def test_no_buffer_page_sits_in_the_swiotlb_pool():
    """The default pool is memblock-reserved at boot: a low buffer large enough to reach it
    continues above it (no dma_unmap may mistake a buffer page for a bounce slot)."""
    from phyrlab.dma.swiotlb import DEFAULT_START, IO_TLB_DEFAULT_SIZE
    from phyrlab.units import PAGE_SHIFT

    lo, hi = DEFAULT_START >> PAGE_SHIFT, (DEFAULT_START + IO_TLB_DEFAULT_SIZE) >> PAGE_SHIFT
    for size in (1 << 20, 1 << 30, 1 << 32):
        for placement in bx.PLACEMENTS:
            pfns = bx.buffer("nvme-4k-random", size, placement).pfns
            assert not np.any((pfns >= lo) & (pfns < hi)), (size, placement)
            assert np.unique(pfns).size == pfns.size
    small = bx.buffer("nvme-4k-random", 1 << 20, "low")
    assert np.array_equal(small.pfns, bx.build("nvme-4k-random", 1 << 20, base_pfn=0x1000).pfns)
