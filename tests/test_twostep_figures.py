"""Notebook 06 figures: map_sg vs the two-step IOVA API, held to hand-counted kernel work."""

import pytest

import phyrlab as pl
from phyrlab import twostep as ts


@pytest.fixture(scope="module")
def nvme():
    # nvme-128k-seq, seed 0: 9 physical runs of 3,4,1,1,2,6,3,3,9 pages (32 pages, 128 KiB)
    return {(r["backend"], r["method"]): r
            for r in ts.compare("nvme-128k-seq", None, None, "bio_vec")}


def test_the_workload_is_what_the_counts_assume():
    a, n = pl.workloads.build("nvme-128k-seq").ranges()
    assert list(n // 4096) == [3, 4, 1, 1, 2, 6, 3, 3, 9]


def test_iommu_paths_do_the_same_page_table_work(nvme):
    old, new = nvme[("iommu", "map_sg")], nvme[("iommu", "two-step")]
    # one IOVA range of 32 pages (rounded to a power of two, below 4 GiB, inside one 2 MiB
    # leaf table): 32 leaf PTEs + 3 links to new level-3/2/1 tables on a fresh x86_64 table
    for r in (old, new):
        assert r["map"]["iova_allocs"] == 1
        assert r["map"]["pte_writes"] == 35
        assert r["unmap"]["iotlb_flushes"] == 1        # strict: one ranged invalidation
        assert r["dma_entries"] == 1
        assert r["held_after"] == 0                    # IOVA and PTEs all given back
    assert new["map"]["iotlb_flushes"] == 1           # dma_iova_sync -> iommu_sync_map


def test_calls_and_dma_side_storage(nvme):
    # two-step: dma_iova_try_alloc + 9 x dma_iova_link + dma_iova_sync, then dma_iova_destroy
    assert (nvme[("iommu", "two-step")]["map_calls"], nvme[("iommu", "two-step")]["unmap_calls"]
            ) == (11, 1)
    assert nvme[("iommu", "two-step")]["dma_side_bytes"] == 16          # struct dma_iova_state
    # fallback on dma-direct: dma_iova_try_alloc is false; 9 dma_map_phys + 9 dma_unmap_phys,
    # and the driver keeps 9 nvme_dma_vec (16 bytes each)
    fb = nvme[("dma-direct", "two-step")]
    assert not fb["iova"] and (fb["map_calls"], fb["unmap_calls"]) == (9, 9)
    assert fb["dma_entries"] == 9 and fb["dma_side_bytes"] == 9 * 16
    # the old way: the table holds both sides, 9 x 32 bytes + the 16-byte sg_table
    assert nvme[("iommu", "map_sg")]["list_bytes"] == 16 + 9 * 32


def test_modelled_time_by_hand(nvme):
    # x86-default: calls 25, entries_walked 2, pte_writes 5, iotlb_flushes 1000, iova_allocs 100
    assert nvme[("iommu", "map_sg")]["ns"]["total"] == pytest.approx(
        2 * 25 + 9 * 2 + 70 * 5 + 1 * 1000 + 100)
    assert nvme[("iommu", "two-step")]["ns"]["total"] == pytest.approx(
        12 * 25 + 9 * 2 + 70 * 5 + 2 * 1000 + 100)
    assert nvme[("dma-direct", "two-step")]["ns"]["total"] == pytest.approx(18 * 25 + 9 * 2)


def test_iova_is_only_for_dma_iommu_devices():
    assert ts.iova_available("iommu") is True
    assert ts.iova_available("dma-direct") is False


def test_rows_and_bad_input():
    rows = ts.table_rows(ts.compare("nvme-128k-seq", None, None, "phyr"))
    assert [r["method"] for r in rows] == ["map_sg", "two-step", "map_sg", "two-step (fallback)"]
    with pytest.raises(ValueError, match="'scatterlist'"):
        ts.run_two_step(pl.workloads.build("nvme-128k-seq"), "iommu", "scatterlist")
    with pytest.raises(ValueError, match="'xen'"):
        ts.make_device("xen")


def test_panel_and_site_page():
    from bokeh.embed import file_html
    from bokeh.resources import INLINE

    from phyrlab.site.twostep import site_page
    from phyrlab.widgets.twostep import twostep_panel

    panel = twostep_panel(size=1 << 20)
    before = list(panel.sources["twostep"].data["total_us"])
    panel.update(size=1 << 21)
    assert panel.sources["twostep"].data["total_us"] != before
    html = file_html(site_page(), INLINE, title="t")
    assert "cdn.bokeh.org" not in html and "customjs" in html.lower()
