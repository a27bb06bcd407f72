"""``vduse_dev_dma_ops`` (drivers/vdpa/vdpa_user/vduse_dev.c): bounce into an IOVA domain.

Read in the kernel sources: in v6.2 the table is ``{map_page, unmap_page, alloc, free,
max_mapping_size}`` (no ``map_sg``: ``dma_map_sg_attrs`` would call a NULL ``ops->map_sg``);
``max_mapping_size`` is ``domain->bounce_size`` (``VDUSE_BOUNCE_SIZE``, 64 MiB). From
drivers/vdpa/vdpa_user/iova_domain.c (stored file is later than v6.2; the streaming path is
the same): ``vduse_domain_map_page`` allocates the IOVA with ``alloc_iova_fast(iovad,
iova_align(size) >> shift, (bounce_size - 1) >> shift, true)`` in ``stream_iovad``
(``init_iova_domain(PAGE_SIZE, IOVA_START_PFN = 1)``), points one ``bounce_maps[]`` entry per
page at the original (``orig_phys = pa``, then ``+ PAGE_SIZE``), allocates a bounce page
lazily for each (``alloc_page(GFP_ATOMIC)``, kept until the domain is released), copies to the
bounce pages for ``DMA_TO_DEVICE``/``BIDIRECTIONAL`` and returns ``iova`` itself: the DMA
address is page aligned and the data starts at its offset 0, whatever ``pa``'s offset.
``vduse_domain_unmap_page`` copies back for ``FROM_DEVICE``/``BIDIRECTIONAL``, resets the
maps and frees the IOVA. Since v6.17 VDUSE maps through ``virtio_map_ops`` instead.

Simplified: the IOVA allocator is a top-down, size-aligned first fit over a numpy bitmap of
the bounce region (``alloc_iova`` with ``size_aligned``), without the per-CPU rcache; on a
failed bounce-page allocation the pages already given ``orig_phys`` are reset (the kernel
leaves them stale, harmlessly); bounce pages stay allocated, as in the kernel.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Any

import numpy as np

from phyrlab.dma.ops import DmaMapOps, OpsEntry, check_direction, register_family
from phyrlab.errors import DmaMappingError
from phyrlab.faults import first_failure, next_failure, should_fail
from phyrlab.units import PAGE_SHIFT, PAGE_SIZE, SZ_64M

#: ``VDUSE_BOUNCE_SIZE`` (v6.2 vduse_dev.c).
VDUSE_BOUNCE_SIZE = SZ_64M
#: ``IOVA_START_PFN`` (drivers/vdpa/vdpa_user/iova_domain.h).
IOVA_START_PFN = 1


class VduseOps(DmaMapOps):
    """Per-range bounce through the VDUSE domain; no ``map_sg``.

    ``batch`` (default True): :meth:`map_phys_many`/:meth:`unmap_phys_many` stand for
    consecutive :meth:`map_phys`/:meth:`unmap_phys` calls with array operations;
    ``_map_per_range`` (phyrlab.dma.mapping) uses them. False keeps the per-call reference.
    """

    batch: bool = True

    def __init__(self, entry: OpsEntry | None = None, **params: Any):
        unknown = sorted(set(params) - {"bounce_size"})
        if unknown:
            raise ValueError(f"vduse_dev_dma_ops: unknown parameter {unknown[0]!r}")
        super().__init__(entry, **params)
        size = int(self.params.get("bounce_size", VDUSE_BOUNCE_SIZE))
        if size < 2 * PAGE_SIZE:
            raise ValueError(f"vduse bounce_size {size}: need at least two pages")
        self.bounce_size = (size + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        n = self.bounce_size >> PAGE_SHIFT
        self.iova_used = np.zeros(n, dtype=bool)
        self.iova_used[:IOVA_START_PFN] = True
        self.bounce_page = np.zeros(n, dtype=bool)  # map->bounce_page allocated
        self.orig_phys = np.full(n, np.iinfo(np.uint64).max, dtype=np.uint64)
        self.live: dict[int, int] = {}  # iova pfn -> pages

    @property
    def bounce_pages_allocated(self) -> int:
        """Bounce pages the domain holds (a cache, freed only at domain release)."""
        return int(np.count_nonzero(self.bounce_page))

    def resources(self) -> dict[str, int]:
        """IOVA pages and bounce maps in use."""
        return {"iova_pages": int(np.count_nonzero(self.iova_used)) - IOVA_START_PFN,
                "bounce_maps": int(np.count_nonzero(self.orig_phys != np.iinfo(np.uint64).max))}

    def _alloc_iova(self, npages: int) -> int:
        """``alloc_iova_fast(..., size_aligned=true)``: highest size-aligned free run."""
        if should_fail("iova_alloc"):
            return 0
        align = 1 << max(0, (npages - 1).bit_length())
        n = len(self.iova_used)
        top = (n - npages) // align * align
        if top < 0:
            return 0
        cand = np.arange(top, -1, -align)
        cs = np.concatenate(([0], np.cumsum(self.iova_used.astype(np.int32))))
        free = (cs[cand + npages] - cs[cand]) == 0
        hit = np.flatnonzero(free)
        if not len(hit):
            return 0
        pfn = int(cand[hit[0]])
        self.iova_used[pfn:pfn + npages] = True
        self.count("iova_allocs")
        return pfn

    def map_phys(self, dev: Any, paddr: int, size: int, direction: str) -> int:
        """``vduse_dev_map_page`` -> ``vduse_domain_map_page``."""
        check_direction(direction)
        self.count("entries_walked")
        if size <= 0:
            raise ValueError(f"{self.name}: map of {size} bytes at {paddr:#x}")
        npages = -(-size // PAGE_SIZE)  # iova_align(size) >> shift
        pfn = self._alloc_iova(npages)
        if not pfn:
            raise DmaMappingError(
                "ENOMEM", f"{self.name}: no IOVA for {npages} pages below the bounce limit "
                f"{self.bounce_size:#x} (DMA_MAPPING_ERROR)")
        pages = np.arange(pfn, pfn + npages)
        need = pages[~self.bounce_page[pages]]
        for k, pg in enumerate(need.tolist()):
            if should_fail("bounce_alloc"):
                self.bounce_page[need[:k]] = True  # the kernel keeps what it allocated
                self.iova_used[pfn:pfn + npages] = False
                raise DmaMappingError(
                    "ENOMEM", f"{self.name}: bounce page allocation failed at IOVA page "
                    f"{pg:#x} (DMA_MAPPING_ERROR)")
        self.bounce_page[need] = True
        self.orig_phys[pages] = np.uint64(paddr) + np.arange(npages, dtype=np.uint64) * \
            np.uint64(PAGE_SIZE)
        self.live[pfn] = npages
        if direction in ("to_device", "bidirectional"):
            self.count("bounce_bytes", size)
        return pfn << PAGE_SHIFT

    def unmap_phys(self, dev: Any, dma_addr: int, size: int, direction: str) -> None:
        """``vduse_dev_unmap_page`` -> ``vduse_domain_unmap_page``."""
        check_direction(direction)
        pfn = dma_addr >> PAGE_SHIFT
        npages = -(-size // PAGE_SIZE)
        if self.live.get(pfn) != npages:
            raise ValueError(f"{self.name}: unmap of {dma_addr:#x} (+{size:#x}) does not "
                             "match a live mapping")
        if direction in ("from_device", "bidirectional"):
            self.count("bounce_bytes", size)
        del self.live[pfn]
        self.orig_phys[pfn:pfn + npages] = np.iinfo(np.uint64).max
        self.iova_used[pfn:pfn + npages] = False

    # -- many calls at once (exactly the per-call sequence) ---------------------------------
    def _plan_iova(self, npages: np.ndarray, horizon: int) -> tuple[np.ndarray, int]:
        """IOVA pfns of consecutive fault-free ``_alloc_iova(npages[i])`` calls, ``i <
        horizon``, leaving the bitmap alone: ``(pfns, e)`` with ``e`` the first that fails.

        Over the free runs of the bitmap (highest first): a request of ``m`` pages (alignment
        ``a``) takes the highest run ``[s, e)`` whose top candidate ``(e - m) // a * a`` is
        ``>= s``, and that candidate, as the top-down search does. A run unfit for ``m`` stays
        unfit as runs only shrink, and is unfit for every larger size too (its alignment is a
        multiple of ``a``), so each size scans on from where it last stopped (``ptr``). A
        stretch of ``r`` equal requests takes the run's next ``r`` candidates at once (their
        windows, ``a`` apart, never overlap); the ``a - m`` pages above each are unfit runs.
        """
        if horizon == 0:
            return np.zeros(0, dtype=np.int64), 0
        used = self.iova_used
        n = len(used)
        hz = min(horizon, n - int(np.count_nonzero(used)) + 1)  # each success takes a page
        d = np.diff(used.view(np.int8), prepend=np.int8(1), append=np.int8(1))
        negs = (-np.flatnonzero(d == -1)[::-1]).tolist()  # run starts, negated: ascending
        ends = np.flatnonzero(d == 1)[::-1].tolist()  # run ends, descending
        change = np.flatnonzero(npages[1:hz] != npages[:hz - 1]) + 1
        bounds = [0, *change.tolist(), hz]
        ptr: dict[int, int] = {}  # size -> no run at or above this pfn fits it
        out: list[int] = []
        for q, m in enumerate(npages[bounds[:-1]].tolist()):
            r = bounds[q + 1] - bounds[q]  # equal requests left in this stretch
            a = 1 << (m - 1).bit_length()
            idx = bisect_right(negs, -ptr.get(m, n))
            while r:
                while idx < len(ends):
                    e, s = ends[idx], -negs[idx]
                    c = (e - m) // a * a
                    if c >= s:
                        break
                    idx += 1
                else:
                    return np.array(out, dtype=np.int64), len(out)
                if r == 1 or c - a < s:  # one request here: the run loses [c, c + m)
                    out.append(c)
                    r -= 1
                    ptr[m] = c + m
                    if c > s:
                        if e > c + m:
                            negs[idx] = -(c + m)
                            negs.insert(idx + 1, -s)
                            ends.insert(idx + 1, c)
                            idx += 1
                        else:
                            ends[idx] = c
                    elif e > c + m:
                        negs[idx] = -(c + m)
                        idx += 1
                    else:
                        del negs[idx], ends[idx]
                    continue
                cnt = min(r, (c - s) // a + 1)
                last = c - (cnt - 1) * a
                out.extend(range(c, last - 1, -a))
                r -= cnt
                ns: list[int] = []
                ne: list[int] = []
                if e > c + m:
                    ns.append(-(c + m))
                    ne.append(e)
                if a > m:
                    ns.extend(range(a - c - m, cnt * a - c - m, a))
                    ne.extend(range(c, last, -a))
                if last > s:
                    ns.append(-s)
                    ne.append(last)
                negs[idx:idx + 1] = ns
                ends[idx:idx + 1] = ne
                ptr[m] = last + m
                idx += len(ns) - (last > s)
        return np.array(out, dtype=np.int64), len(out)

    def map_phys_many(self, dev: Any, addr: np.ndarray, length: np.ndarray, direction: str
                      ) -> tuple[np.ndarray, DmaMappingError | None]:
        """Consecutive :meth:`map_phys` of ``(addr[i], length[i])`` until one fails: the DMA
        addresses of the ``k`` mapped and the failing call's error (None when all mapped).

        State, counters and fault-injection calls end as after those ``k + 1`` calls.
        """
        check_direction(direction)
        addr = np.asarray(addr, dtype=np.uint64)
        length = np.asarray(length, dtype=np.uint64)
        zero = np.flatnonzero(length == 0)
        n = int(zero[0]) if zero.size else len(addr)
        npages = ((length[:n] + np.uint64(PAGE_SIZE - 1)) >> np.uint64(PAGE_SHIFT)
                  ).astype(np.int64)
        h = next_failure("iova_alloc", n)
        pfns, e = self._plan_iova(npages, h)
        m = npages[:e]
        rel = np.arange(int(m.sum()), dtype=np.int64) - np.repeat(np.cumsum(m) - m, m)
        pages = np.repeat(pfns, m) + rel
        need = ~self.bounce_page[pages]
        b = np.bincount(np.repeat(np.arange(e), m), weights=need, minlength=e
                        ).astype(np.int64) if e else np.zeros(0, np.int64)
        cb = np.cumsum(b)
        kb = next_failure("bounce_alloc", int(cb[-1]) if e else 0)
        if e and kb < cb[-1]:  # a bounce page fails in range jb, after its IOVA
            jb = int(np.searchsorted(cb, kb, side="right"))
            first_failure("iova_alloc", jb + 1)
            first_failure("bounce_alloc", kb + 1)
            ok = jb
        else:
            first_failure("iova_alloc", min(e + 1, n))
            first_failure("bounce_alloc", int(cb[-1]) if e else 0)
            ok = e
        fails = ok < n
        if ok + fails:
            self.count("entries_walked", ok + fails)
        exc = None
        if ok < e:  # bounce failure: the pages before the failing one keep their bounce page
            q = int(kb - (cb[ok] - b[ok]))  # the q-th page of range ok lacking one fails
            lo = int(m[:ok].sum())
            win = slice(lo, lo + int(m[ok]))
            nw = pages[win][need[win]]
            self.bounce_page[nw[:q]] = True
            self.count("iova_allocs", ok + 1)
            exc = DmaMappingError(
                "ENOMEM", f"{self.name}: bounce page allocation failed at IOVA page "
                f"{int(nw[q]):#x} (DMA_MAPPING_ERROR)")
        else:
            if ok:
                self.count("iova_allocs", ok)
            if fails:
                exc = DmaMappingError(
                    "ENOMEM", f"{self.name}: no IOVA for {int(npages[ok])} pages below the "
                    f"bounce limit {self.bounce_size:#x} (DMA_MAPPING_ERROR)")
        np_ok = int(m[:ok].sum())
        done = pages[:np_ok]
        self.iova_used[done] = True
        self.bounce_page[done] = True
        self.orig_phys[done] = np.repeat(addr[:ok], m[:ok]) + rel[:np_ok].astype(np.uint64) \
            * np.uint64(PAGE_SIZE)
        self.live.update(zip(pfns[:ok].tolist(), m[:ok].tolist(), strict=True))
        if ok and direction in ("to_device", "bidirectional"):
            self.count("bounce_bytes", int(length[:ok].sum(dtype=np.uint64)))
        if exc is None and n < len(addr):  # map_phys of a zero size
            self.count("entries_walked")
            raise ValueError(f"{self.name}: map of 0 bytes at {int(addr[n]):#x}")
        return (pfns[:ok].astype(np.uint64) << np.uint64(PAGE_SHIFT)), exc

    def unmap_phys_many(self, dev: Any, dma_addr: np.ndarray, size: np.ndarray,
                        direction: str) -> None:
        """Consecutive :meth:`unmap_phys` calls (the per-call loop when one would raise)."""
        check_direction(direction)
        dma_addr = np.asarray(dma_addr, dtype=np.uint64)
        size = np.asarray(size, dtype=np.uint64)
        pfn = (dma_addr >> np.uint64(PAGE_SHIFT)).astype(np.int64)
        npages = ((size + np.uint64(PAGE_SIZE - 1)) >> np.uint64(PAGE_SHIFT)).astype(np.int64)
        live = self.live
        pl = pfn.tolist()
        if (len(set(pl)) != len(pl) or (size == 0).any()
                or [live.get(p) for p in pl] != npages.tolist()):
            for a, s in zip(dma_addr.tolist(), size.tolist(), strict=True):
                self.unmap_phys(dev, a, s, direction)
            return
        if len(pl) and direction in ("from_device", "bidirectional"):
            self.count("bounce_bytes", int(size.sum(dtype=np.uint64)))
        for p in pl:
            del live[p]
        rel = np.arange(int(npages.sum()), dtype=np.int64) - np.repeat(
            np.cumsum(npages) - npages, npages)
        pages = np.repeat(pfn, npages) + rel
        self.orig_phys[pages] = np.iinfo(np.uint64).max
        self.iova_used[pages] = False

    def map_sg(self, dev: Any, addr: np.ndarray, length: np.ndarray,
               direction: str) -> tuple[np.ndarray, np.ndarray, Any]:
        """Not in the v6.2 table: -EINVAL (the kernel would call a NULL ``map_sg``)."""
        raise DmaMappingError(
            "EINVAL", f"{self.name} has no map_sg in v6.2 (dma_map_sg_attrs would call a NULL "
            "ops->map_sg); map the ranges one at a time with map_phys")

    def max_mapping_size(self, dev: Any) -> int:
        """``vduse_dev_max_mapping_size``: the bounce region."""
        return self.bounce_size


def _factory(entry: OpsEntry, **params: Any) -> VduseOps:
    return VduseOps(entry, **params)


register_family("vduse", _factory)
