"""Notebook 03 (IOMMU page tables): its figures against hand-worked kernel examples, its panels
and its offline site page."""

import numpy as np
import pytest

from phyrlab.iommu import experiments as ix
from phyrlab.iommu.iotlb import IOVA_FQ_SIZE, IOVA_FQ_TIMEOUT_NS
from phyrlab.units import SZ_1M, SZ_2M, SZ_4K, SZ_16K, SZ_64K, SZ_64M
from phyrlab.workloads import build


def test_format_rows_root_sizes_follow_io_pgtable_arm():
    rows = {r["format"]: r for r in ix.format_rows()}
    # pgd_bits = va_bits - bits_per_level * (levels - 1); va_bits = 48 - granule shift
    assert rows["arm_lpae_16k"]["root_bytes"] == 8 * (1 << (48 - 14 - 11 * 3))   # 2 entries
    assert rows["arm_lpae_64k"]["root_bytes"] == 8 * (1 << (48 - 16 - 13 * 2))   # 64 entries
    assert rows["x86_64"]["root_bytes"] == 4096 and rows["x86_64_5lvl"]["levels"] == 5
    assert rows["arm_lpae_16k"]["leaf_sizes"] == "16 KiB, 32 MiB"


def test_workload_ranges_are_rebuilt_in_the_granules_pages():
    a4, n4 = build("rdma-mr-1g-4k", size=4 * SZ_1M, seed=0).ranges()
    a, n = ix.workload_ranges("rdma-mr-1g-4k", "arm_lpae_64k", 64 * SZ_1M)
    # same runs counted in pages, pages of 64 KiB: 16 x the 4 KiB model's addresses
    assert np.array_equal(a, a4 * np.uint64(16)) and np.array_equal(n, n4 * np.uint64(16))
    assert int(n.sum()) == 64 * SZ_1M and not np.any((a | n) % np.uint64(SZ_64K))
    # huge pages keep their size and alignment on every granule
    a, n = ix.workload_ranges("rdma-mr-1g-2m", "arm_lpae_16k", 64 * SZ_1M)
    assert n.size == 32 and np.all(n == SZ_2M) and not np.any(a % np.uint64(SZ_2M))
    with pytest.raises(ValueError, match="unknown page-table format"):
        ix.workload_ranges("rdma-mr-1g-4k", "sparc", SZ_1M)


def test_costs_match_hand_walked_tables():
    # 1024 scattered 4K pages -> one 4 MiB IOVA range (size-aligned): root, PDPT, PD and two
    # 2 MiB page tables; 1024 leaves + 4 table links written
    c = ix.workload_cost("nvme-4k-random", "x86_64", 4 * SZ_1M)
    assert (c["table_pages"], c["table_bytes"], c["pte_writes"]) == (5, 5 * SZ_4K, 1028)
    assert c["leaf_mix"] == {SZ_4K: 1024} and c["dma_segments"] == 1
    # 32 naturally aligned 2 MiB huge pages: 32 PD leaves, links to PDPT and PD
    c = ix.workload_cost("rdma-mr-1g-2m", "x86_64", SZ_64M)
    assert (c["table_bytes"], c["pte_writes"], c["leaf_mix"]) == (3 * SZ_4K, 34, {SZ_2M: 32})
    # 16K granule, 4096 pages in a 64 MiB IOVA range: pgd (2 entries, 16 B), L1, L2 and two
    # L3 tables of 2048 x 16 KiB = 32 MiB each; 4 links + 4096 leaves
    c = ix.workload_cost("nvme-4k-random", "arm_lpae_16k", SZ_64M)
    assert (c["table_bytes"], c["pte_writes"]) == (16 + 4 * SZ_16K, 4100)
    assert c["leaf_mix"] == {SZ_16K: 4096}


def test_rows_and_columns_say_the_same_as_the_costs():
    rows = ix.cost_rows(["rdma-mr-1g-2m"], size=SZ_64M)
    r = next(x for x in rows if x["format"] == "x86_64")
    assert r["pte_writes_per_MiB"] == round(34 / 64, 2) and r["leaves"] == "32 x 2 MiB"
    assert r["dma_segs"] == 1 and r["cpu_segs"] == 32 and r["unmap_invalidations"] == 1
    cols = ix.format_columns("rdma-mr-1g-2m", SZ_64M)
    assert cols["format"] == list(ix.NOTEBOOK_FORMATS) and cols["table_bytes"][0] == 3 * SZ_4K
    mix = ix.leaf_mix_columns("rdma-mr-1g-2m", SZ_64M, "x86_64")
    assert mix["leaf"] == ["4 KiB", "2 MiB", "1 GiB"] and mix["count"] == [0, 32, 0]
    assert mix["share"] == [0.0, 100.0, 0.0]
    # the cached result is handed out as a copy
    ix.workload_cost("rdma-mr-1g-2m", "x86_64", SZ_64M)["leaf_mix"].clear()
    assert ix.workload_cost("rdma-mr-1g-2m", "x86_64", SZ_64M)["leaf_mix"] == {SZ_2M: 32}


def test_contiguity_needs_alignment_not_length():
    sw = ix.contiguity_sweep(size=SZ_64M, formats=("x86_64", "arm_lpae_64k"))
    pte = sw["pte_writes_per_mib"]
    runs = [i for i, b in enumerate(pte["backing"]) if b.startswith("run")]
    # iommu_pgsize(): a 2 MiB leaf needs iova ^ paddr aligned to 2 MiB; unaligned runs of any
    # length map 4 KiB leaves: 16,384 leaves + PDPT, PD and 32 PT links per 64 MiB
    assert {pte["x86_64"][i] for i in runs} == {round((16384 + 2 + 32) / 64, 3)}
    assert pte["x86_64"][pte["backing"].index("2M aligned")] == round(34 / 64, 3)
    # 64 KiB pages: 1024 leaves + L2 link + one L3 table link per 64 MiB, aligned or not
    assert {pte["arm_lpae_64k"][i] for i in runs} == {round((1024 + 2) / 64, 3)}
    # table KiB per GiB: x86 root + PDPT + PD + 32 PTs (35 x 4 KiB per 64 MiB); 64K: pgd of
    # 512 B + L2 + one L3 table (8192 x 64 KiB = 512 MiB) per 64 MiB
    rows = ix.sweep_rows(sw["table_bytes_per_gib"], scale=1024, digits=1)
    assert rows[0] == {"backing": "run 1 pg", "x86_64": 35 * 4 * 16.0,
                       "arm_lpae_64k": (512 + 2 * SZ_64K) * 16 / 1024}


def test_strict_and_lazy_churn_follow_the_flush_queue():
    s = ix.churn(True, 128, 1_000)
    lz = ix.churn(False, 128, 1_000)
    unmaps = int(s["unmaps"][-1])
    assert unmaps == int(lz["unmaps"][-1]) > 0
    # strict: one iommu_iotlb_sync per unmap (one leaf size), no stale window
    assert np.array_equal(s["flushes"], s["unmaps"]) and s["stale_max_ns"][-1] == 0
    # lazy, one op per us (the 10 ms timer never fires in 1.5 ms): a flush each time the
    # 256-slot ring holds IOVA_FQ_SIZE - 1 entries when the next one comes
    assert int(lz["flushes"][-1]) == (unmaps - 1) // (IOVA_FQ_SIZE - 1) >= 2
    assert 0 < int(lz["stale_max_ns"][-1]) < IOVA_FQ_TIMEOUT_NS
    # one op per 100 us: the timer flushes first; the oldest entry waited the full timeout
    slow = ix.churn(False, 128, 100_000, n_ops=600)
    assert int(slow["stale_max_ns"][-1]) == IOVA_FQ_TIMEOUT_NS
    # 600 ops span 60 ms: a timer flush at most every 10 ms, and the ring never fills
    assert 5 <= int(slow["flushes"][-1]) <= 6
    assert np.array_equal(slow["time_us"], (slow["step"] + 1) * 100.0)


def test_mapping_panel_first_slider_changes_the_plots():
    import ipywidgets as ipw

    from phyrlab.widgets.iommu import mapping_panel

    p = mapping_panel(size=SZ_64M)
    first = next(w for w in p.controls.values() if isinstance(w, ipw.SelectionSlider))
    assert first is p.controls["size"] and first.continuous_update is False
    before = dict(p.sources["formats"].data)
    first.value = 4 * SZ_64M
    after = p.sources["formats"].data
    assert after["table_bytes"] != before["table_bytes"]
    assert after["table_bytes"][0] == ix.workload_cost("rdma-mr-1g-4k", "x86_64",
                                                       4 * SZ_64M)["table_bytes"]
    p.controls["fmt"].value = "arm_lpae_64k"
    assert list(p.figures[2].x_range.factors) == ["64 KiB", "512 MiB"]
    assert p.sources["formats"].data["alpha"] == [0.35, 0.35, 0.35, 0.35, 1.0]


def test_churn_panel_mode_switch_changes_the_iova_plot():
    from phyrlab.widgets.iommu import churn_panel

    p = churn_panel(max_live=32)
    strict = list(p.sources["frag"].data["holes"])
    p.controls["strict"].value = False
    assert p.sources["frag"].data["holes"] != strict
    assert "lazy" in p.figures[0].title.text


def test_site_page_is_offline():
    from bokeh.embed import file_html
    from bokeh.resources import INLINE

    from phyrlab.site.iommu import site_page

    html = file_html(site_page(), INLINE, title="t")
    assert "cdn.bokeh.org" not in html and "CustomJS" in html
