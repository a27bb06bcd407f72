"""Fault injection, in the spirit of the kernel's fault_attr knobs (lib/fault-inject.c).

Every allocation a model makes asks :func:`should_fail` at its named *point* first, as the
kernel's ``should_fail()`` is asked by failslab, fail_page_alloc and fail_iommu. A test arms a
point with :func:`inject` to make its Nth call fail (``nth=1`` fails the first call), then checks
that the model raised the kernel's errno and gave back everything it took.

Points in use: ``"iova_alloc"`` (IOVA domain), ``"pt_alloc"`` (page-table page),
``"swiotlb_slot"`` (swiotlb slot search), ``"grant_alloc"`` (Xen grant reference),
``"iommu_area_alloc"`` (single-level IOMMU table bitmap), ``"bounce_alloc"`` (VDUSE bounce).
Simplification: one global counter per point, not per task, and no probability or interval.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class _Armed:
    nth: int
    times: int
    calls: int = 0
    failed: int = 0


@dataclass
class FaultStats:
    """How often each point was asked and how often it failed, since :func:`reset`."""

    calls: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)


_armed: dict[str, _Armed] = {}
stats = FaultStats()


def should_fail(point: str) -> bool:
    """True when the armed fault at ``point`` fires on this call (``should_fail()``)."""
    stats.calls[point] = stats.calls.get(point, 0) + 1
    armed = _armed.get(point)
    if armed is None:
        return False
    armed.calls += 1
    if armed.calls >= armed.nth and armed.failed < armed.times:
        armed.failed += 1
        stats.failed[point] = stats.failed.get(point, 0) + 1
        return True
    return False


def first_failure(point: str, n: int) -> int:
    """Ask :func:`should_fail` up to ``n`` times at ``point`` in one call, stopping at the first
    failure: returns its index (``0..n-1``), or ``n`` when none of the ``n`` calls fails.

    For batched model paths that stand for ``n`` consecutive kernel calls: counters and the
    armed fault end exactly as after the same sequence of single calls.
    """
    if n < 0:
        raise ValueError(f"first_failure({point!r}, n={n}): n must be >= 0")
    if n == 0:
        return 0
    armed = _armed.get(point)
    if armed is None or armed.failed >= armed.times:
        if armed is not None:
            armed.calls += n
        stats.calls[point] = stats.calls.get(point, 0) + n
        return n
    k = max(armed.nth - armed.calls - 1, 0)  # calls before the one that fails
    if k >= n:
        armed.calls += n
        stats.calls[point] = stats.calls.get(point, 0) + n
        return n
    armed.calls += k + 1
    armed.failed += 1
    stats.calls[point] = stats.calls.get(point, 0) + k + 1
    stats.failed[point] = stats.failed.get(point, 0) + 1
    return k


def next_failure(point: str, n: int) -> int:
    """The index (``0..n-1``) of the first of the next ``n`` calls at ``point`` that would
    fail, or ``n``; asks nothing (no counter moves). For batched paths whose calls at two
    points interleave: find where the sequence stops, then :func:`first_failure` each point
    with the exact number of calls made."""
    armed = _armed.get(point)
    if n <= 0 or armed is None or armed.failed >= armed.times:
        return max(n, 0)
    return min(max(armed.nth - armed.calls - 1, 0), n)


@contextmanager
def inject(point: str, nth: int = 1, times: int = 1) -> Iterator[_Armed]:
    """Make the ``nth`` call at ``point`` (and the ``times - 1`` after it) fail."""
    if nth < 1 or times < 1:
        raise ValueError(f"inject({point!r}, nth={nth}, times={times}): both must be >= 1")
    if point in _armed:
        raise ValueError(f"fault point {point!r} is already armed")
    armed = _armed[point] = _Armed(nth=nth, times=times)
    try:
        yield armed
    finally:
        del _armed[point]


def reset() -> None:
    """Disarm every point and zero the counters."""
    _armed.clear()
    stats.calls.clear()
    stats.failed.clear()
