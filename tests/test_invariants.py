"""Issue 7: invariants over every layout x every backend x random workloads (hypothesis).

Each example is one :class:`phyrlab.reliability.Case`; :func:`check_case` maps it one-step
(``dma_map``) and two-step (``dma_map_iova``) and holds the result to the kernel's rules:
resources all given back, segments inside mask / max_seg_size / boundary, every CPU byte
covered once (translated back through the backend's own tables), CPU-side list untouched.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phyrlab import reliability as rel
from phyrlab.dma import Device, dma_map, dma_unmap
from phyrlab.layouts import LAYOUTS
from phyrlab.units import PAGE_SIZE

SETTINGS = settings(max_examples=20, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def cases(draw, backend: str):
    npages = draw(st.integers(1, 48))
    offset = draw(st.sampled_from([0, 0, 1, 512, 2048, PAGE_SIZE - 1]))
    tail = draw(st.integers(0, min(PAGE_SIZE - 1, npages * PAGE_SIZE - offset - 1)))
    boundary_bits = draw(st.sampled_from([16, 20, 32, 64]))
    return rel.Case(
        backend=backend, layout=draw(st.sampled_from(list(LAYOUTS))),
        seed=draw(st.integers(0, 2**20)), npages=npages,
        mean_run=draw(st.sampled_from([1.0, 2.0, 8.0, 64.0])), offset=offset, tail=tail,
        high=draw(st.booleans()), mask_bits=draw(st.sampled_from([32, 40, 64])),
        max_seg=draw(st.sampled_from([PAGE_SIZE, 0x10000, 0x10_0000, 0xFFFF_F000])),
        boundary_bits=boundary_bits, direction=draw(st.sampled_from(rel.DIRECTIONS)),
        untrusted=draw(st.booleans()))


@pytest.mark.parametrize("backend", rel.BACKENDS)
def test_invariants_hold_for_every_backend(backend):
    seen = []

    @SETTINGS
    @given(cases(backend))
    def run(case):
        seen.append(rel.check_case(case).one_step)

    run()
    if backend == "dma_dummy_ops":                      # kernel/dma/dummy.c: always -EINVAL
        assert set(seen) == {"EINVAL"}
    else:
        assert "ok" in seen, seen                       # the suite really mapped something


def test_every_layout_gives_the_same_dma_list():
    """One workload, every layout: the backend cannot tell them apart (non-leaky API)."""
    for backend in ("dma_direct", "iommu_dma_ops", "gart_dma_ops", "xen_grant_dma_ops"):
        lists = []
        for name in LAYOUTS:
            case = rel.Case(backend, name, seed=5, npages=20, mean_run=2.0, offset=100,
                            tail=300, mask_bits=64)
            dev = case.device()
            dl = dma_map(dev, case.layout_object())
            lists.append((dl.dma_addr.copy(), dl.length.copy()))
            dma_unmap(dev, dl)
        for a, n in lists[1:]:
            assert np.array_equal(a, lists[0][0]) and np.array_equal(n, lists[0][1]), backend


def test_checker_catches_a_leak_and_a_bad_segment():
    """The checks can fail: a backend that keeps a slot, or ignores max_seg_size."""
    case = rel.Case("dma_direct", "phyr", npages=4, mean_run=1.0, high=True, mask_bits=32)
    dev = case.device()
    before = rel.holdings(dev)
    dl = dma_map(dev, case.layout_object())                 # bounced: slots held
    with pytest.raises(rel.InvariantError, match="not given back"):
        rel._expect_same(before, dev, "leak")
    dma_unmap(dev, dl)
    rel._expect_same(before, dev, "clean")
    dl.length = dl.length.copy()
    dl.length[0] = dev.max_seg_size + 1
    with pytest.raises(rel.InvariantError, match="max_seg_size"):
        rel.check_segments(dev, dl)


def test_checker_catches_a_wrong_translation():
    case = rel.Case("iommu_dma_ops", "phyr", npages=6, mean_run=2.0, mask_bits=64)
    dev = case.device()
    x = case.layout_object()
    addr, length = x.ranges()
    dl = dma_map(dev, x)
    rel.check_coverage(dev, dl, addr, length)
    with pytest.raises(rel.InvariantError, match="translates back"):
        rel.check_coverage(dev, dl, addr + np.uint64(PAGE_SIZE), length)
    dma_unmap(dev, dl)


def test_kernel_waivers_are_needed():
    """Each waived rule is really broken by its backend (else the waiver must go)."""
    from collections import Counter

    hit = Counter()
    rng = np.random.default_rng(3)
    for backend, rule in rel.KERNEL_WAIVERS:
        for _ in range(40):
            case = replace(rel.random_case(rng, backend, "phyr"), mask_bits=32,
                           boundary_bits=16, npages=48, mean_run=64.0)
            try:
                out = rel.check_case(case, two_step=False)
            except rel.InvariantError:
                continue
            hit.update(out.waived)
            if hit[(backend, rule)]:
                break
    assert set(hit) == set(rel.KERNEL_WAIVERS), set(rel.KERNEL_WAIVERS) - set(hit)


def test_device_limits_are_what_the_case_asked():
    d = rel.Case("dma_direct", "phyr", max_seg=0x10000, boundary_bits=16).device()
    assert isinstance(d, Device) and d.max_seg_size == 0x10000
    assert d.seg_boundary_mask == 0xFFFF
