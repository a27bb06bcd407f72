"""Memory models, workloads (and their files), this machine's pagemap."""

import numpy as np
import pytest

import phyrlab as pl
from phyrlab import memory, workloads
from phyrlab.errors import InputFileError
from phyrlab.memory import PagemapError
from phyrlab.units import SZ_2M

P = pl.PAGE_SIZE


def test_fragmented_pfns_are_distinct_with_the_asked_mean_run():
    pfns = memory.fragmented_pfns(200_000, mean_run=8, seed=1)
    assert pfns.size == 200_000
    assert np.unique(pfns).size == pfns.size
    runs = memory.run_lengths(pfns)
    assert runs.sum() == pfns.size
    assert 7.0 < runs.mean() < 9.0
    # seeded: same seed, same memory; another seed, other memory
    assert np.array_equal(pfns, memory.fragmented_pfns(200_000, mean_run=8, seed=1))
    assert not np.array_equal(pfns, memory.fragmented_pfns(200_000, mean_run=8, seed=2))


def test_scattered_pages_never_merge():
    pfns = memory.fragmented_pfns(5000, mean_run=1, seed=0)
    assert memory.run_lengths(pfns).max() == 1


def test_hugepages_are_aligned_and_whole():
    pfns = memory.hugepage_pfns(4 * 512, SZ_2M, seed=0)
    runs = memory.run_lengths(pfns)
    assert runs.tolist() == [512] * 4
    assert np.all(pfns[::512] % 512 == 0)


def test_workload_files_all_load_and_cite_a_source():
    cat = workloads.catalogue()
    for must in ("nvme-4k-random", "nvme-128k-seq", "rdma-mr-1g-4k", "rdma-mr-1g-2m",
                 "gpu-buffer", "this-machine"):
        assert must in cat
    for w in cat.values():
        assert len(w.source) > 40, w.name


def test_build_sizes_and_page_size_override():
    b = workloads.build("nvme-128k-seq")
    assert b.size == 128 << 10 and b.pfns.size == 32
    h = workloads.build("gpu-buffer", size=8 << 20, page_size="2M")
    assert h.page_size == SZ_2M
    assert memory.run_lengths(h.pfns).min() == 512


def test_unknown_workload_names_the_choices():
    with pytest.raises(ValueError, match="unknown workload 'nvme'.*nvme-4k-random"):
        workloads.build("nvme")


@pytest.mark.parametrize("text,msg", [
    ("name: x\ntitle: t\nsource: s\nsize: 4K\ncontiguity: {model: scattered}\ncolor: red\n",
     r"unknown key\(s\) \['color'\]"),
    ("name: x\ntitle: t\nsource: s\nsize: 4K\ncontiguity: {model: buddy}\n",
     "contiguity.model must be one of"),
    ("name: x\ntitle: t\nsize: 4K\ncontiguity: {model: scattered}\n", "missing key 'source'"),
    ("name: x\ntitle: t\nsource: s\nsize: 4Q\ncontiguity: {model: scattered}\n",
     "cannot read size"),
    ("- just\n- a list\n", "is a mapping"),
    ("name: [unclosed\n", "cannot read workload"),
])
def test_bad_workload_file_names_file_and_key(tmp_path, text, msg):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(InputFileError, match=msg) as e:
        workloads.load(f)
    assert "bad.yaml" in str(e.value)


def write_sparse(path, vpn, entries):
    """A fake pagemap: ``entries`` at the buffer's virtual page numbers (a sparse file)."""
    with open(path, "wb") as f:
        f.seek(int(vpn) * 8)
        f.write(np.asarray(entries, dtype="<u8").tobytes())


def test_pagemap_hidden_pfns_give_a_clear_error(tmp_path):
    fake = tmp_path / "pagemap"
    buf = np.zeros(3 * P, dtype=np.uint8)
    vpn = buf.__array_interface__["data"][0] >> 12
    write_sparse(fake, vpn, np.full(4, 1 << 63, dtype="<u8"))  # present, PFN hidden (0)
    with pytest.raises(PagemapError, match="CAP_SYS_ADMIN"):
        memory.pagemap_ranges(buf, str(fake))


def test_pagemap_ranges_from_a_fake_pagemap(tmp_path):
    fake = tmp_path / "pagemap"
    buf = np.zeros(3 * P, dtype=np.uint8)
    base = buf.__array_interface__["data"][0]
    vpn, off = base >> 12, base & (P - 1)
    npages = ((base + buf.size - 1) >> 12) - vpn + 1
    pfns = np.array([100, 101, 200, 201][:npages], dtype=np.uint64)
    write_sparse(fake, vpn, pfns | np.uint64(1 << 63))
    addr, length = memory.pagemap_ranges(buf, str(fake))
    assert int(length.sum()) == buf.size
    assert int(addr[0]) == 100 * P + off


def test_this_machine_pagemap_when_readable():
    buf = np.ones(1 << 20, dtype=np.uint8)
    try:
        addr, length = memory.pagemap_ranges(buf)
    except PagemapError as e:
        pytest.skip(f"pagemap not readable here: {e}")
    assert int(length.sum()) == buf.size
    assert np.all(addr > 0)
