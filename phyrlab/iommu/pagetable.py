"""One radix-tree IOMMU page-table walker; formats are data (drivers/iommu/io-pgtable-arm.c,
drivers/iommu/intel/iommu.c, drivers/iommu/iommu.c).

Mirrors:
- ``iommu_map()`` / ``__iommu_map()`` with ``iommu_pgsize()`` (drivers/iommu/iommu.c): a run
  is cut into the largest page sizes of ``pgsize_bitmap`` that the alignment of ``iova | paddr``
  and the remaining length allow (v6.2's ``iommu_pgsize()`` also checks ``(iova ^ paddr)``
  before counting pages of the next size; the greedy result is the same).
- ``__arm_lpae_map()`` / VT-d ``__domain_mapping()``: walk from the root, allocate a table page
  (``should_fail("pt_alloc")``, kernel: -ENOMEM) for every empty non-leaf entry on the way, write
  the leaf. A present entry where a leaf or a table must go is a live mapping: -EEXIST
  (``arm_lpae_init_pte`` warns and refuses), raised here as ``ValueError`` naming the IOVA.
- ``iommu_unmap()`` / ``__iommu_unmap()``: clear the leaves, gather them for invalidation with
  ``iommu_iotlb_gather_add_page()`` (skipped when the gather is ``queued``, as io-pgtable-arm and
  VT-d do in v6.2), and sync (``iommu_iotlb_sync``) unless the caller passed its own gather.
- ``iommu_iova_to_phys()`` / ``arm_lpae_iova_to_phys()``: 0 where nothing is mapped.

Verified against the stored kernel files (read with the search tool): ``iommu_pgsize`` of
v5.x and the v6.2 ``count`` variant (iommu.c), ``arm_lpae_restrict_pgsizes`` and the pgd size
formula ``pgd_bits = va_bits - bits_per_level * (levels - 1)`` (io-pgtable-arm.c),
``iommu_iotlb_gather_add_page`` of v6.2 (include/linux/iommu.h).

Simplifications (each one line):
- The tree is numpy: a pool of table pages ``(n, entries)`` of uint64, a leaf is ``paddr | 1``,
  a table entry is ``child << 12 | 3``; no permission bits (``prot`` is not stored).
- A table left empty by an unmap is freed at once (VT-d frees tables an unmap covers whole,
  io-pgtable-arm only on block-sized unmaps; lazy mode defers the free until the flush).
- An unmap that would cut a leaf is refused (arm would split the block, VT-d would unmap it all).
- A map that would fail part way is refused before any write, so no entries are written and
  unwound (the kernel maps, then ``iommu_unmap()``s what it mapped: same end state, fewer writes).
- Root-table allocation also asks ``should_fail("pt_alloc")`` (the kernel's domain alloc).

Speed (issue 4): ``map_runs`` works on leaf *chunks* - the part of an IOVA-contiguous stretch
of one-leaf runs, or of one multi-leaf run, inside one table - so 16 M separate 4 KiB runs
cost a few array passes, not per-run temporaries; fresh whole tables are written as rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from phyrlab.errors import DmaMappingError
from phyrlab.faults import first_failure, should_fail
from phyrlab.iommu.iotlb import IommuIotlbGather, iommu_iotlb_gather_add_run
from phyrlab.units import human_bytes

PTE_PRESENT = np.uint64(1)
PTE_TABLE = np.uint64(2)
_CHILD_SHIFT = np.uint64(12)
_U64 = np.uint64
#: Physical address width the model accepts (52 bits: the widest of VT-d and LPAE/LPA).
OAS = 52


@dataclass(frozen=True)
class PageTableFormat:
    """A radix-tree format as data: index bits per level (root first) and leaf levels.

    Level 0 is the root (ARM's start level, VT-d's top ``agaw`` level); the last level holds
    granule-sized leaves. ``leaf_levels`` lists the levels that may hold a leaf (block/PS=1).
    """

    name: str
    granule_shift: int
    level_bits: tuple[int, ...]
    leaf_levels: tuple[int, ...]
    pte_size: int
    kernel: str

    @property
    def levels(self) -> int:
        return len(self.level_bits)

    @property
    def granule(self) -> int:
        return 1 << self.granule_shift

    @property
    def ias(self) -> int:
        """Input (IOVA) address bits."""
        return self.granule_shift + sum(self.level_bits)

    def entry_shift(self, level: int) -> int:
        """log2 of the bytes one entry of a level-``level`` table maps."""
        return self.granule_shift + sum(self.level_bits[level + 1:])

    def entries(self, level: int) -> int:
        return 1 << self.level_bits[level]

    def table_bytes(self, level: int) -> int:
        """Bytes of one table at ``level`` (the root may be smaller or larger than a page)."""
        return self.entries(level) * self.pte_size

    @property
    def pgsize_bitmap(self) -> int:
        """``domain->pgsize_bitmap``: one bit per leaf size."""
        return sum(1 << self.entry_shift(lv) for lv in self.leaf_levels)

    @property
    def leaf_sizes(self) -> tuple[int, ...]:
        """Leaf sizes in bytes, smallest first."""
        return tuple(sorted(1 << self.entry_shift(lv) for lv in self.leaf_levels))


FORMATS: dict[str, PageTableFormat] = {
    f.name: f
    for f in (
        PageTableFormat("x86_64", 12, (9, 9, 9, 9), (1, 2, 3), 8,
                        "Intel VT-d second level / AMD v2, 4-level (48-bit): 4K, 2M, 1G leaves"),
        PageTableFormat("x86_64_5lvl", 12, (9, 9, 9, 9, 9), (2, 3, 4), 8,
                        "Intel VT-d / AMD, 5-level (57-bit): 4K, 2M, 1G leaves"),
        PageTableFormat("arm_lpae_4k", 12, (9, 9, 9, 9), (1, 2, 3), 8,
                        "io-pgtable-arm 64-bit LPAE, 4K granule, ias 48: 4K, 2M, 1G"),
        PageTableFormat("arm_lpae_16k", 14, (1, 11, 11, 11), (2, 3), 8,
                        "io-pgtable-arm LPAE, 16K granule, ias 48 (pgd 2 entries): 16K, 32M"),
        PageTableFormat("arm_lpae_64k", 16, (6, 13, 13), (1, 2), 8,
                        "io-pgtable-arm LPAE, 64K granule, ias 48 (pgd 64 entries): 64K, 512M"),
        PageTableFormat("single_level_4k", 12, (20,), (0,), 8,
                        "one flat table (GART/TCE/sparc IOPTE style): 4 GiB window, 4K pages"),
    )
}


def get_format(fmt: str | PageTableFormat) -> PageTableFormat:
    """The format named ``fmt`` (or ``fmt`` itself); a clear error for an unknown name."""
    if isinstance(fmt, PageTableFormat):
        return fmt
    try:
        return FORMATS[fmt]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown page-table format {fmt!r}; known formats: {', '.join(FORMATS)}"
        ) from None


@dataclass
class PageTableStats:
    """Counters of one page table (cumulative unless said otherwise)."""

    pte_writes: int = 0
    table_pages: int = 0            # live table pages (root included)
    table_bytes: int = 0            # live bytes of table memory
    table_pages_allocated: int = 0
    table_pages_freed: int = 0
    mapped_bytes: int = 0           # live
    leaves: dict[int, int] = field(default_factory=dict)        # live leaves by size
    leaves_mapped: dict[int, int] = field(default_factory=dict)  # cumulative, by size
    iotlb_pages_gathered: int = 0   # iommu_iotlb_gather_add_page() calls
    iotlb_syncs: int = 0            # range invalidations issued (iommu_iotlb_sync)
    iotlb_flush_all: int = 0        # whole-domain flushes (flush queue, flush_iotlb_all)


class _MapPlan(NamedTuple):
    """What ``PageTable._plan_map`` found: segments, tables per level, leaf chunks."""

    lo: np.ndarray
    nbytes: np.ndarray
    lvl: np.ndarray
    pa: np.ndarray
    lv_max: int
    prefixes: list
    pools: list
    parent_pos: list
    new_masks: list
    n_new: int
    leaf_plan: list
    total: int
    iova0: int


def _table_pieces(g0: np.ndarray, g1: np.ndarray, b: int) -> tuple[np.ndarray, ...]:
    """Cut entry spans ``[g0[i], g1[i]]`` at tables of ``2**b`` entries: each piece's table
    ``t``, span index ``s``, first entry ``gs`` and entry count ``n``, and the pieces per
    span ``nt``."""
    t0 = g0 >> b
    nt = (g1 >> b) - t0 + 1
    t = _expand(t0, nt)
    s = np.repeat(np.arange(g0.size), nt)
    gs = np.maximum(t << b, g0[s])
    n = np.minimum(((t + 1) << b) - 1, g1[s]) - gs + 1
    return t, s, gs, n, nt


def _expand(starts: np.ndarray, counts: np.ndarray, step: int = 1) -> np.ndarray:
    """Concatenate ``starts[i] + step * arange(counts[i])`` for every i (int64/uint64)."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return np.empty(0, dtype=starts.dtype)
    nz = counts > 0
    starts, counts = starts[nz], counts[nz]
    excl = np.cumsum(counts) - counts
    dt = starts.dtype
    base = np.repeat(starts - (excl * step).astype(dt), counts)
    return base + np.arange(total, dtype=dt) * dt.type(step)


def _end_vs_next(op: np.ufunc, lo: np.ndarray, nbytes: np.ndarray,
                 out: np.ndarray | None = None, block: int = 1 << 20) -> np.ndarray:
    """``op(lo[i] + nbytes[i], lo[i + 1])`` for every i, a block at a time.

    The same as ``op((lo + nbytes)[:-1], lo[1:])`` without a full-size uint64 temporary
    (fresh memory for one costs more than the arithmetic on 16 M runs).
    """
    n = lo.size - 1
    if out is None:
        out = np.empty(max(n, 0), dtype=bool)
    buf = np.empty(min(max(n, 0), block), dtype=_U64)
    for a in range(0, n, block):
        b = min(n, a + block)
        e = np.add(lo[a:b], nbytes[a:b], out=buf[:b - a])
        op(e, lo[a + 1:b + 1], out=out[a:b])
    return out


class PageTable:
    """An IOMMU page table of one format (``struct io_pgtable`` / ``struct dmar_domain``)."""

    #: Speed switch (same results either way): leaves of segments smaller than a table are
    #: planned per IOVA-contiguous stretch and their values summed from per-segment jumps
    #: (written straight into fresh consecutive tables); False: per (segment, table) chunk,
    #: the reference.
    batch_leaves: bool = True

    def __init__(self, fmt: str | PageTableFormat = "x86_64"):
        self.fmt = get_format(fmt)
        f = self.fmt
        self._W = max(f.entries(lv) for lv in range(f.levels))
        self._shift = [f.entry_shift(lv) for lv in range(f.levels)]
        self._bits = list(f.level_bits)
        self._tbytes = [f.table_bytes(lv) for lv in range(f.levels)]
        cap = max(1, min(64, (1 << 20) // self._W))
        self._pte = np.zeros((cap, self._W), dtype=np.uint64)
        self._nvalid = np.zeros(cap, dtype=np.int64)
        self._tlevel = np.full(cap, -1, dtype=np.int8)
        self._free = np.arange(cap - 1, -1, -1, dtype=np.int64)
        self.stats = PageTableStats()
        # map() of at most this many bytes walks with Python integers (one smallest-leaf size)
        sizes = f.leaf_sizes
        self._small_max = min(64 * f.granule, sizes[1] - f.granule if len(sizes) > 1
                              else 64 * f.granule)
        if should_fail("pt_alloc"):
            raise DmaMappingError("ENOMEM", f"{f.name}: cannot allocate the root table")
        root = self._alloc_tables(1, 0)
        assert int(root[0]) == 0

    # ---- table-page pool -------------------------------------------------------------
    def _alloc_tables(self, n: int, level: int) -> np.ndarray:
        if n == 0:
            return np.empty(0, dtype=np.int64)
        if self._free.size < n:
            cap = self._pte.shape[0]
            self._grow_pool(max(2 * cap, cap + n - self._free.size))
        idx = self._free[-n:][::-1].copy()
        self._free = self._free[:-n]
        self._tlevel[idx] = level
        self._nvalid[idx] = 0
        s = self.stats
        s.table_pages += n
        s.table_pages_allocated += n
        s.table_bytes += n * self._tbytes[level]
        return idx

    def _free_tables(self, idx: np.ndarray) -> None:
        if idx.size == 0:
            return
        levels = self._tlevel[idx].astype(np.int64)
        s = self.stats
        s.table_pages -= idx.size
        s.table_pages_freed += idx.size
        s.table_bytes -= int(np.asarray(self._tbytes, dtype=np.int64)[levels].sum())
        self._tlevel[idx] = -1
        self._free = np.concatenate([self._free, idx[::-1]])

    # ---- validation -----------------------------------------------------------------
    def _check_run(self, op: str, iova: int, size: int, paddr: int | None = None) -> None:
        g = self.fmt.granule
        if size <= 0:
            raise ValueError(f"{op}: size {size:#x} must be positive")
        bad = iova | size | (paddr if paddr is not None else 0)
        if bad & (g - 1) or iova < 0 or (paddr is not None and paddr < 0):
            pa = f" pa {paddr:#x}" if paddr is not None else ""
            raise ValueError(
                f"{op}: unaligned: iova {iova:#x}{pa} size {size:#x} min_pagesz {g:#x} "
                f"({self.fmt.name})")
        if iova + size > 1 << self.fmt.ias:
            raise ValueError(
                f"{op}: IOVA {iova:#x}+{size:#x} is beyond the {self.fmt.ias}-bit address "
                f"width of {self.fmt.name}")
        if paddr is not None and paddr + size > 1 << OAS:
            raise ValueError(f"{op}: physical address {paddr:#x}+{size:#x} beyond {OAS} bits")

    # ---- map --------------------------------------------------------------------------
    def map(self, iova: int, paddr: int, size: int, prot: int = 3) -> int:
        """``iommu_map()``: map ``size`` bytes at ``iova`` to ``paddr``; returns bytes mapped."""
        iova, paddr, size = int(iova), int(paddr), int(size)
        self._check_run("map", iova, size, paddr)
        if size <= self._small_max:
            return self._map_small(iova, paddr, size)
        return self._map_runs(np.array([iova], _U64), np.array([paddr], _U64),
                              np.array([size], _U64))

    def _map_small(self, iova: int, paddr: int, size: int) -> int:
        """``_map_runs`` of one run of a few smallest leaves, walked with Python integers.

        The same checks in the same order (a leaf in the way of a table, level by level in
        IOVA order; then the first leaf target in use), the same fault-point calls, table
        pages taken level by level in IOVA order, the same writes and counters.
        """
        f = self.fmt
        last = f.levels - 1
        pte = self._pte
        end = iova + size
        # ---- plan: per level, (prefix, pool or -1 = to allocate), IOVA order
        tabs: list[list[tuple[int, int]]] = [[(0, 0)]]
        n_new = 0
        for level in range(1, last + 1):
            sh, pb = self._shift[level - 1], self._bits[level - 1]
            pm = (1 << pb) - 1
            parents = dict(tabs[-1])
            cur = []
            for p in range(iova >> sh, ((end - 1) >> sh) + 1):
                pp = parents[p >> pb]
                ent = int(pte[pp, p & pm]) if pp >= 0 else 0
                if ent & 1:
                    if not ent & 2:
                        at = p << sh
                        raise ValueError(
                            f"map: IOVA {max(at, iova):#x} is already mapped (a "
                            f"{human_bytes(1 << sh)} leaf at {at:#x}, {f.name})")
                    cur.append((p, ent >> 12))
                else:
                    cur.append((p, -1))
                    n_new += 1
            tabs.append(cur)
        sh, b = self._shift[last], self._bits[last]
        em = (1 << b) - 1
        g0, g1 = iova >> sh, end >> sh                 # leaves g0 .. g1 - 1
        leaf_tabs = dict(tabs[-1])
        for gi in range(g0, g1):
            pool = leaf_tabs[gi >> b]
            if pool >= 0 and pte[pool, gi & em]:
                raise ValueError(f"map: IOVA {gi << sh:#x} is already mapped ({f.name})")
        fail = first_failure("pt_alloc", n_new)
        if fail < n_new:
            raise self._pt_alloc_error(fail, n_new, iova)
        # ---- commit
        s = self.stats
        pools = [{0: 0}]
        for level in range(1, last + 1):
            cur = tabs[level]
            new = [p for p, pool in cur if pool < 0]
            if new:
                idx = self._alloc_tables(len(new), level).tolist()
                fresh = dict(zip(new, idx, strict=True))
                cur = [(p, fresh.get(p, pool)) for p, pool in cur]
                pte = self._pte                          # the pool may have grown
                pb = self._bits[level - 1]
                pm = (1 << pb) - 1
                parents = pools[-1]
                for p, i in zip(new, idx, strict=True):
                    pp = parents[p >> pb]
                    pte[pp, p & pm] = (i << 12) | 3
                    self._nvalid[pp] += 1
                s.pte_writes += len(new)
            pools.append(dict(cur))
        step = 1 << sh
        leaf_pool = pools[-1]
        gi, pa = g0, paddr
        while gi < g1:
            t = gi >> b
            n = min(g1, (t + 1) << b) - gi
            pool = leaf_pool[t]
            s0 = gi & em
            pte[pool, s0:s0 + n] = np.arange(pa | 1, pa + n * step, step, dtype=_U64)
            self._nvalid[pool] += n
            gi += n
            pa += n * step
        nl = g1 - g0
        s.pte_writes += nl
        s.leaves[step] = s.leaves.get(step, 0) + nl
        s.leaves_mapped[step] = s.leaves_mapped.get(step, 0) + nl
        s.mapped_bytes += size
        return size

    def map_calls(self, iova: np.ndarray, paddr: np.ndarray, size: np.ndarray
                  ) -> tuple[int, DmaMappingError | None] | None:
        """``map()`` of each run in turn, stopping at the first that fails, as one update.

        For callers that stand for a loop of ``iommu_map`` calls (``dma_iova_link`` per range).
        The runs must come in increasing, non-overlapping IOVA order. Returns ``(runs mapped,
        the -ENOMEM of the run that failed or None)``: table pages (which pool page each
        table takes), PTEs, counters and the ``pt_alloc`` fault point end as after the calls
        one by one. Returns None with nothing changed and no fault point asked when some call
        would raise ``ValueError`` (bad run, live entry in the way, runs out of order): make
        the calls one by one then.
        """
        iova = np.asarray(iova, dtype=_U64).ravel()
        paddr = np.asarray(paddr, dtype=_U64).ravel()
        size = np.asarray(size, dtype=_U64).ravel()
        n = iova.size
        if not (n == paddr.size == size.size):
            raise ValueError("map_calls: iova, paddr and size must have the same length")
        if n == 0:
            return 0, None
        g = self.fmt.granule - 1
        low = int(np.bitwise_or.reduce(iova) | np.bitwise_or.reduce(paddr)
                  | np.bitwise_or.reduce(size))
        top = int(size.max())
        if low & g or int(size.min()) == 0 or int(iova.max()) + top >= 1 << 64 \
                or int(paddr.max()) + top >= 1 << 64:
            return None
        if n > 1 and _end_vs_next(np.greater, iova, size).any():
            return None
        if int(iova[-1]) + int(size[-1]) > 1 << self.fmt.ias:     # in order: the last ends last
            return None
        if int(paddr.max()) + top > 1 << OAS and np.any(paddr + size > _U64(1 << OAS)):
            return None
        try:
            plan = self._plan_map(iova, paddr, size)
        except ValueError:
            return None
        owner = self._segment_call(plan, iova)
        per_call = np.zeros(n, dtype=np.int64)
        table_owner = [self._new_table_owner(plan, owner, level)
                       for level in range(1, plan.lv_max + 1)]
        for oc in table_owner:
            if oc.size:
                per_call += np.bincount(oc, minlength=n)
        fail = first_failure("pt_alloc", plan.n_new)
        if fail == plan.n_new:
            self._commit_map(plan, owner, table_owner)
            return n, None
        cum = np.cumsum(per_call)
        k = int(np.searchsorted(cum, fail, side="right"))
        i = fail - (int(cum[k]) - int(per_call[k]))
        if k:
            head = self._plan_map(iova[:k], paddr[:k], size[:k])
            self._commit_map(head, self._segment_call(head, iova[:k]))
        return k, self._pt_alloc_error(i, int(per_call[k]), int(iova[k]))

    @staticmethod
    def _segment_call(plan: _MapPlan, iova: np.ndarray) -> np.ndarray:
        """The run (call) each planned segment belongs to."""
        if plan.lo is iova:
            return np.arange(iova.size)
        return np.searchsorted(iova, plan.lo, side="right") - 1

    def map_runs(self, iova: np.ndarray, paddr: np.ndarray, size: np.ndarray,
                 prot: int = 3) -> int:
        """Map many runs at once (``iommu_map_sg()``'s ``__iommu_map`` calls), all or none.

        Errors name the run by its index in the arrays as given.
        """
        iova = np.asarray(iova, dtype=_U64).ravel()
        paddr = np.asarray(paddr, dtype=_U64).ravel()
        size = np.asarray(size, dtype=_U64).ravel()
        if not (iova.size == paddr.size == size.size):
            raise ValueError("map_runs: iova, paddr and size must have the same length")
        if iova.size == 0:
            return 0
        order = None
        if iova.size > 1 and not np.all(iova[1:] >= iova[:-1]):
            order = np.argsort(iova, kind="stable")
            iova, paddr, size = iova[order], paddr[order], size[order]

        def bad_run(mask: np.ndarray) -> None:     # error path only: name the first bad run
            if not mask.any():
                return
            i = int(np.flatnonzero(mask)[0])
            j = i if order is None else int(order[i])
            self._check_run(f"map_runs[{j}]", int(iova[i]), int(size[i]), int(paddr[i]))

        # reductions first (no temporaries); the element-wise tests only to name a bad run
        g = self.fmt.granule - 1
        low = int(np.bitwise_or.reduce(iova) | np.bitwise_or.reduce(paddr)
                  | np.bitwise_or.reduce(size))
        if low & g or int(size.min()) == 0:
            bad_run((((iova | paddr | size) & _U64(g)) != 0) | (size == 0))
        top = int(size.max())
        if int(iova[-1]) + top > 1 << self.fmt.ias:                # sorted: iova[-1] is max
            end = iova + size
            bad_run((end < iova) | (end > _U64(1 << self.fmt.ias)))
        if int(paddr.max()) + top > 1 << OAS:
            pend = paddr + size
            bad_run((pend < paddr) | (pend > _U64(1 << OAS)))
        over = _end_vs_next(np.greater, iova, size)
        if over.any():
            i = int(np.flatnonzero(over)[0])
            raise ValueError(f"map_runs: runs at IOVA {int(iova[i]):#x} and "
                             f"{int(iova[i + 1]):#x} overlap")
        del over
        return self._map_runs(iova, paddr, size)

    def _decompose(self, iova, paddr, size):
        """``iommu_pgsize()`` applied greedily to each run, as leaf segments in IOVA order.

        Returns (lo, nbytes, lvl, pa) per segment: ``nbytes`` (uint64) of leaves of level
        ``lvl``'s size (int8) starting at IOVA ``lo`` and physical ``pa``. In the common case
        (no larger leaf anywhere) these are the input arrays themselves: read, never write.
        """
        levels = sorted(self.fmt.leaf_levels, reverse=True)   # smallest leaf first
        sizes = [1 << self._shift[lv] for lv in levels]
        n = iova.size
        if len(sizes) == 1 or int(size.max()) < sizes[1]:
            # no run can hold an aligned block of the next leaf size: iommu_pgsize() picks the
            # smallest leaf all along, one segment per run
            return iova, size, np.full(n, levels[0], np.int8), paddr
        m1 = _U64(sizes[1] - 1)
        big = ((iova ^ paddr) & m1) == 0              # V[1] below: a larger leaf fits somewhere
        big &= ((iova + m1) & ~m1) < ((iova + size) & ~m1)
        c = np.flatnonzero(big)
        if c.size == 0:
            return iova, size, np.full(n, levels[0], np.int8), paddr
        if c.size == n:
            return self._decompose_big(iova, paddr, size, levels)[:4]
        lo_c, nb_c, lvl_c, pa_c, nseg_c = self._decompose_big(iova[c], paddr[c], size[c], levels)
        # interleave: runs without a larger leaf give one segment, the others nseg_c each
        nseg = np.ones(n, dtype=np.int64)
        nseg[c] = nseg_c
        offs = np.cumsum(nseg)
        total = int(offs[-1])
        offs -= nseg
        lo = np.empty(total, dtype=_U64)
        nbytes = np.empty(total, dtype=_U64)
        lvl = np.full(total, levels[0], dtype=np.int8)
        pa = np.empty(total, dtype=_U64)
        small = ~big
        at = offs[small]
        lo[at] = iova[small]
        nbytes[at] = size[small]
        pa[at] = paddr[small]
        first = np.cumsum(nseg_c) - nseg_c
        at = np.repeat(offs[c] - first, nseg_c) + np.arange(lo_c.size)
        lo[at], nbytes[at], lvl[at], pa[at] = lo_c, nb_c, lvl_c, pa_c
        return lo, nbytes, lvl, pa

    def _decompose_big(self, iova, paddr, size, levels):
        """The general ``iommu_pgsize()`` cut: head and tail of each leaf size per run.

        Per run and leaf size k (smallest first): ``A[k]``/``B[k]`` are the run's start rounded
        up / end rounded down to the size; the size is usable (``V[k]``) when iova and paddr
        agree below it and ``A[k] < B[k]``. The run is ``[A0, A1) [A1, A2) .. [A(K-1), B(K-1))
        .. [B2, B1) [B1, B0)`` with unusable sizes folded into the next smaller one.
        Returns (lo, nbytes, lvl, pa) per segment and the number of segments per run.
        """
        sizes = [1 << self._shift[lv] for lv in levels]
        K = len(sizes)
        end = iova + size
        x = iova ^ paddr
        A, B, V = [], [], []
        for s in sizes:
            m = _U64(s - 1)
            a = (iova + m) & ~m
            b = end & ~m
            A.append(a)
            B.append(b)
            V.append(((x & m) == 0) & (a < b))
        heads, tails = [], []
        for k in range(K):
            if k + 1 < K:
                na = np.where(V[k + 1], A[k + 1], B[k])
                nb = np.where(V[k + 1], B[k + 1], B[k])
            else:
                na = nb = B[k]
            lo_h = np.where(V[k], A[k], 0)
            hi_h = np.where(V[k], na, 0)
            lo_t = np.where(V[k], nb, 0)
            hi_t = np.where(V[k], B[k], 0)
            heads.append((lo_h, hi_h, k))
            tails.append((lo_t, hi_t, k))
        cols = heads + tails[:-1][::-1]
        lo = np.stack([c[0] for c in cols], axis=1).ravel()
        hi = np.stack([c[1] for c in cols], axis=1).ravel()
        kk = np.tile(np.array([c[2] for c in cols], dtype=np.int8), iova.size)
        delta = np.repeat(paddr - iova, len(cols))
        keep = hi > lo
        nseg = keep.reshape(iova.size, len(cols)).sum(axis=1)
        lo, hi, kk, delta = lo[keep], hi[keep], kk[keep], delta[keep]
        lvl = np.array(levels, dtype=np.int8)[kk]
        return lo, hi - lo, lvl, lo + delta, nseg

    def _busy_leaf_iova(self, level, lo, nbytes, prefixes, pools) -> int:
        """Error path of ``_map_runs``: the IOVA to name for a leaf target already in use.

        Scans (segment, table) chunks of the segments at ``level`` in IOVA order: a wholly
        covered table in use is named by its start, else the first used entry.
        """
        sh, b = self._shift[level], self._bits[level]
        emask = (1 << b) - 1
        g0 = (lo >> _U64(sh)).astype(np.int64)
        g1 = g0 + (nbytes >> _U64(sh)).astype(np.int64) - 1
        t, seg, gs, n, _ = _table_pieces(g0, g1, b)
        tpool = pools[np.searchsorted(prefixes, t)]
        have = np.flatnonzero(tpool >= 0)
        busy_full = have[(n[have] == emask + 1) & (self._nvalid[tpool[have]] != 0)]
        if busy_full.size:
            return int(t[busy_full[0]]) << (b + sh)
        part = have[n[have] <= emask]
        ent = self._pte.reshape(-1)[_expand(tpool[part] * self._W + (gs[part] & emask),
                                            n[part])]
        gi = _expand(gs[part], n[part])
        return int(gi[np.flatnonzero(ent != 0)[0]]) << sh

    def _map_runs(self, iova, paddr, size) -> int:
        """Plan (walk, find tables to allocate, refuse live entries), allocate, then write.

        Leaves are handled per (IOVA-contiguous stretch of same-size segments, table) chunk,
        never per segment or per leaf: a table a stretch covers whole is written as one row.
        """
        plan = self._plan_map(iova, paddr, size)
        fail = first_failure("pt_alloc", plan.n_new)   # one should_fail per table page
        if fail < plan.n_new:
            raise self._pt_alloc_error(fail, plan.n_new, plan.iova0)
        return self._commit_map(plan)

    def _pt_alloc_error(self, i: int, n: int, iova0: int) -> DmaMappingError:
        """The -ENOMEM of table page ``i`` (0-based) of the ``n`` a map at ``iova0`` needs."""
        return DmaMappingError(
            "ENOMEM", f"{self.fmt.name}: page-table page {i + 1} of {n} could not "
            f"be allocated mapping IOVA {iova0:#x}; nothing was mapped")

    def _plan_map(self, iova, paddr, size) -> _MapPlan:
        """The read-only half of ``_map_runs``: raises ``ValueError`` for a live entry in the
        way, else returns what to allocate and write (nothing is changed)."""
        f = self.fmt
        lo, nbytes, lvl, pa = self._decompose(iova, paddr, size)
        nseg = lo.size
        lv_min, lv_max = int(lvl.min()), int(lvl.max())
        join = np.zeros(nseg, dtype=bool)              # segment i starts where i - 1 ends
        _end_vs_next(np.equal, lo, nbytes, out=join[1:])
        whole = None

        def stretches(sel: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
            """First and last segment of each IOVA-contiguous stretch of selected segments."""
            nonlocal whole
            if sel is None:
                if whole is None:
                    st = np.flatnonzero(~join)
                    en = np.empty_like(st)
                    en[:-1] = st[1:] - 1
                    en[-1] = nseg - 1
                    whole = st, en
                return whole
            js = join.copy()
            js[1:] &= sel[:-1]
            js &= sel
            st = np.flatnonzero(sel & ~js)
            nxt = np.zeros(nseg, dtype=bool)
            nxt[:-1] = js[1:]
            return st, np.flatnonzero(sel & ~nxt)

        # ---- plan: which tables exist, which must be allocated, any live mapping in the way
        prefixes = [np.zeros(1, dtype=np.int64)]      # table ids per level (iova >> span)
        pools = [np.zeros(1, dtype=np.int64)]         # pool index (or -1 = to allocate)
        parent_pos: list[np.ndarray | None] = [None]
        new_masks: list[np.ndarray | None] = [None]
        n_new_total = 0
        for level in range(1, lv_max + 1):
            sh = _U64(self._shift[level - 1])
            st, en = stretches(None if lv_min >= level else lvl >= level)
            p_lo = (lo[st] >> sh).astype(np.int64)
            p_hi = ((lo[en] + nbytes[en] - _U64(1)) >> sh).astype(np.int64)
            p_lo[1:] = np.maximum(p_lo[1:], p_hi[:-1] + 1)   # drop prefixes shared with the
            keep = p_lo <= p_hi                               # previous stretch
            p = _expand(p_lo[keep], p_hi[keep] - p_lo[keep] + 1)
            ppos = np.searchsorted(prefixes[level - 1], p >> self._bits[level - 1])
            ppool = pools[level - 1][ppos]
            slot = p & ((1 << self._bits[level - 1]) - 1)
            ent = np.zeros(p.size, dtype=_U64)
            have = ppool >= 0
            ent[have] = self._pte[ppool[have], slot[have]]
            present = (ent & PTE_PRESENT) != 0
            is_table = (ent & PTE_TABLE) != 0
            leaf_in_way = np.nonzero(present & ~is_table)[0]
            if leaf_in_way.size:
                i = int(leaf_in_way[0])
                at = int(p[i]) << int(sh)
                raise ValueError(
                    f"map: IOVA {max(at, int(iova[0])):#x} is already mapped (a "
                    f"{human_bytes(1 << int(sh))} leaf at {at:#x}, {f.name})")
            pool = np.where(is_table, (ent >> _CHILD_SHIFT).astype(np.int64), -1)
            prefixes.append(p)
            pools.append(pool)
            parent_pos.append(ppos)
            new_masks.append(~present)
            n_new_total += int((~present).sum())
        # ---- leaf targets must be empty; work per chunk, never per leaf. A chunk is the part
        # of a stretch of one-leaf segments (leaf values: their pa) or of one segment (leaf
        # values: pa + i * size) that falls in one table.
        leaf_plan = []
        for level in sorted(f.leaf_levels):
            if lv_min == lv_max:
                if level != lv_min:
                    continue
                sel = None
            else:
                sel = lvl == level
                if not sel.any():
                    continue
            sh, b = self._shift[level], self._bits[level]
            E = 1 << b
            nb_sel = nbytes if sel is None else nbytes[sel]
            one = int(nb_sel.max()) == 1 << sh
            # segments smaller than a table on average: chunk per stretch, leaf values built
            # per leaf at commit (``_leaf_values``), not per (segment, table) chunk
            many = (not one and self.batch_leaves
                    and int(nb_sel.sum()) >> sh < E * nb_sel.size)
            if one or many:
                st, en = stretches(sel)
            else:
                st = en = np.arange(nseg) if sel is None else np.flatnonzero(sel)
            g0 = (lo[st] >> _U64(sh)).astype(np.int64)
            g1 = ((lo[en] + nbytes[en]) >> _U64(sh)).astype(np.int64) - 1
            nleaf = g1 - g0 + 1
            leafoff = np.cumsum(nleaf) - nleaf        # first leaf of each stretch
            t, s, gs, n, nt = _table_pieces(g0, g1, b)
            slot0 = gs & (E - 1)
            k0 = leafoff[s] + (gs - g0[s])            # first leaf of each chunk
            pa0 = None if one or many else pa[st][s] + ((gs - g0[s]).astype(_U64) << _U64(sh))
            tpos = np.searchsorted(prefixes[level], t)
            tpool = pools[level][tpos]
            have = np.flatnonzero(tpool >= 0)
            if have.size:
                busy = np.any((n[have] == E) & (self._nvalid[tpool[have]] != 0))
                part = have[n[have] < E]
                flat = _expand(tpool[part] * self._W + slot0[part], n[part])
                if busy or np.any(self._pte.reshape(-1)[flat] != 0):
                    seg = slice(None) if sel is None else sel
                    at = self._busy_leaf_iova(level, lo[seg], nbytes[seg], prefixes[level],
                                              pools[level])
                    raise ValueError(f"map: IOVA {at:#x} is already mapped ({f.name})")
            lay = (leafoff, nleaf, np.cumsum(nt) - nt, st, en, g0) if many else None
            leaf_plan.append((level, sel, tpos, slot0, n, k0, pa0, lay))
        return _MapPlan(lo, nbytes, lvl, pa, lv_max, prefixes, pools, parent_pos, new_masks,
                        n_new_total, leaf_plan, int(size.sum()), int(iova[0]))

    def _commit_map(self, plan: _MapPlan, owner: np.ndarray | None = None,
                    table_owner: list[np.ndarray] | None = None) -> int:
        """The writing half of ``_map_runs``: allocate the planned table pages, write.

        ``owner`` (optional) is, per segment of the plan, the index of the ``map()`` call
        that stands for it: table pages are then taken from the pool in the order those
        calls would take them (call by call, level by level) and leaf counters keyed in the
        order they would first appear, so the result is that of the calls one by one.
        """
        (lo, nbytes, lvl, pa, lv_max, prefixes, pools, parent_pos, new_masks, _n,
         leaf_plan, total, _i0) = plan
        s = self.stats
        fresh_idx: list[np.ndarray | None] = [None] * (lv_max + 1)
        if owner is None:
            for level in range(1, lv_max + 1):
                n = int(new_masks[level].sum())
                if n:
                    fresh_idx[level] = self._alloc_tables(n, level)
        else:
            self._alloc_in_call_order(plan, owner, fresh_idx, table_owner)
            seen = [int(lvl.min())] if int(lvl.min()) == int(lvl.max()) else None
            if seen is None:                # leaf sizes in the order the calls meet them
                first = [(int(owner[np.argmax(lvl == lv)]), lv)
                         for lv in sorted(self.fmt.leaf_levels) if (lvl == lv).any()]
                seen = [lv for _c, lv in sorted(first)]
            for lv in seen:
                sz = 1 << self._shift[lv]
                s.leaves.setdefault(sz, 0)
                s.leaves_mapped.setdefault(sz, 0)
        for level in range(1, lv_max + 1):
            new = new_masks[level]
            ppool = pools[level - 1][parent_pos[level]]
            idx = fresh_idx[level]
            if idx is not None:
                n = idx.size
                pools[level][new] = idx
                slot = prefixes[level][new] & ((1 << self._bits[level - 1]) - 1)
                pp = ppool[new]
                self._pte[pp, slot] = (idx.astype(_U64) << _CHILD_SHIFT) | PTE_PRESENT | PTE_TABLE
                np.add.at(self._nvalid, pp, 1)
                s.pte_writes += n
        flat_pte = self._pte.reshape(-1)
        for level, sel, tpos, slot0, n, k0, pa0, lay in leaf_plan:
            tpool = pools[level][tpos]
            sz = 1 << self._shift[level]
            E = 1 << self._bits[level]
            if lay is not None:
                src = self._write_stretches(level, lo, pa, nbytes, sel, lay, tpool, slot0, n)
                if src is None:                       # written in place
                    nl = int(n.sum())
                    s.pte_writes += nl
                    s.leaves[sz] = s.leaves.get(sz, 0) + nl
                    s.leaves_mapped[sz] = s.leaves_mapped.get(sz, 0) + nl
                    continue
            else:
                src = None if pa0 is not None else pa if sel is None else pa[sel]
            full = n == E                             # whole tables: write rows at once
            if full.any():
                rows, kf = tpool[full], k0[full]
                r0, ka, nf = int(rows[0]), int(kf[0]), rows.size
                fresh = np.array_equal(rows, np.arange(r0, r0 + nf))
                view = self._pte[r0:r0 + nf, :E]     # fresh tables: write in place
                if src is None:                       # one segment per table: pa0 + i * size
                    step = np.arange(E, dtype=_U64) * _U64(sz)
                    if fresh:
                        view[:] = step
                        view += (pa0[full] | PTE_PRESENT)[:, None]
                    else:
                        self._pte[rows, :E] = (pa0[full] | PTE_PRESENT)[:, None] + step
                elif fresh and np.array_equal(kf, ka + E * np.arange(nf)):
                    np.bitwise_or(src[ka:ka + nf * E].reshape(nf, E), PTE_PRESENT, out=view)
                else:
                    self._pte[rows, :E] = src[kf[:, None] + np.arange(E)] | PTE_PRESENT
                self._nvalid[rows] += E
            part = ~full
            if part.any():
                flat = _expand(tpool[part] * self._W + slot0[part], n[part])
                if src is None:
                    flat_pte[flat] = _expand(pa0[part], n[part], sz) | PTE_PRESENT
                else:
                    flat_pte[flat] = src[_expand(k0[part], n[part])] | PTE_PRESENT
                np.add.at(self._nvalid, tpool[part], n[part])
            nl = int(n.sum())
            s.pte_writes += nl
            s.leaves[sz] = s.leaves.get(sz, 0) + nl
            s.leaves_mapped[sz] = s.leaves_mapped.get(sz, 0) + nl
        s.mapped_bytes += total
        return total

    def _write_stretches(self, level, lo, pa, nbytes, sel, lay, tpool, slot0, n
                         ) -> np.ndarray | None:
        """Leaves of a level planned per IOVA-contiguous stretch (``batch_leaves``).

        The leaf values are the running sum of their first differences: ``pa | present`` at a
        stretch's first leaf, the jump ``pa[j] - (pa[j-1] + nbytes[j-1]) + size`` at segment
        ``j``'s first leaf, ``size`` elsewhere. When every stretch's tables are consecutive
        pool rows as wide as the level's tables, the stretch is one slice of the pool: the
        differences are written there and summed in place (returns None, ``_nvalid``
        counted). Else returns the values (per leaf of the level's segments, in IOVA order)
        for the per-chunk writes.
        """
        leafoff, nleaf, c0, st, en, g0 = lay
        sh = self._shift[level]
        usz = _U64(1 << sh)
        pa_s = pa if sel is None else pa[sel]
        nb_s = nbytes if sel is None else nbytes[sel]
        jump = pa_s[1:] - pa_s[:-1]
        jump -= nb_s[:-1]
        jump += usz
        W = self._W
        if W == 1 << self._bits[level] and st.size <= 64:
            c1 = np.append(c0[1:], tpool.size)
            rows = [tpool[a:b] for a, b in zip(c0.tolist(), c1.tolist(), strict=True)]
            if all(int(r[-1]) - int(r[0]) == r.size - 1 and (r.size < 3 or np.all(
                    np.diff(r) == 1)) for r in rows):
                flat_pte = self._pte.reshape(-1)
                f0 = np.array([int(r[0]) * W + int(slot0[a])
                               for a, r in zip(c0.tolist(), rows, strict=True)], np.int64)
                lo_s = lo if sel is None else lo[sel]
                pos = (lo_s[1:] >> _U64(sh)).view(np.int64)   # leaf index of each segment
                if st.size == 1:
                    pos += int(f0[0]) - int(g0[0])
                else:
                    pos += np.repeat(f0 - g0, en - st + 1)[1:]
                for f, nl in zip(f0.tolist(), nleaf.tolist(), strict=True):
                    flat_pte[f:f + nl] = usz
                flat_pte[pos] = jump
                del pos, jump
                flat_pte[f0] = pa[st] | PTE_PRESENT
                for f, nl in zip(f0.tolist(), nleaf.tolist(), strict=True):
                    part = flat_pte[f:f + nl]
                    np.cumsum(part, out=part)
                np.add.at(self._nvalid, tpool, n)
                return None
        d = np.full(int(leafoff[-1] + nleaf[-1]), usz, dtype=_U64)
        if jump.size:
            d[np.cumsum((nb_s[:-1] >> _U64(sh)).astype(np.int64))] = jump
        del jump
        d[0] = pa_s[0] | PTE_PRESENT
        return np.cumsum(d, out=d)

    def _alloc_in_call_order(self, plan: _MapPlan, owner: np.ndarray,
                             fresh_idx: list[np.ndarray | None],
                             table_owner: list[np.ndarray] | None = None) -> None:
        """Take the plan's new table pages from the pool as one ``map()`` per call would:
        ordered by (call, level, prefix), the pool grown as those calls would grow it."""
        levels, calls, order_in = [], [], []
        for level in range(1, plan.lv_max + 1):
            oc = (self._new_table_owner(plan, owner, level) if table_owner is None
                  else table_owner[level - 1])
            if oc.size:
                levels.append(np.full(oc.size, level, dtype=np.int64))
                calls.append(oc)
                order_in.append(np.arange(oc.size))
        if not levels:
            return
        lv = np.concatenate(levels)
        oc = np.concatenate(calls)
        pos = np.concatenate(order_in)
        order = np.lexsort((pos, lv, oc))
        key = oc[order] * (plan.lv_max + 1) + lv[order]
        brk = np.flatnonzero(key[1:] != key[:-1]) + 1
        groups = np.diff(np.concatenate([[0], brk, [key.size]]))
        self._grow_for(groups.tolist())
        n = lv.size
        idx_seq = self._free[-n:][::-1].copy()
        self._free = self._free[:-n]
        idx = np.empty(n, dtype=np.int64)
        idx[order] = idx_seq
        self._tlevel[idx] = lv
        self._nvalid[idx] = 0
        s = self.stats
        s.table_pages += n
        s.table_pages_allocated += n
        s.table_bytes += int(np.asarray(self._tbytes, dtype=np.int64)[lv].sum())
        at = 0
        for level in range(1, plan.lv_max + 1):
            m = int(plan.new_masks[level].sum())
            if m:
                fresh_idx[level] = idx[at:at + m]
                at += m

    def _new_table_owner(self, plan: _MapPlan, owner: np.ndarray, level: int) -> np.ndarray:
        """For each new table of ``level`` (in prefix order), the call that first needs it:
        the owner of the first segment, in IOVA order, with a leaf at or below ``level``."""
        new = plan.new_masks[level]
        if not new.any():
            return np.empty(0, dtype=np.int64)
        p = plan.prefixes[level][new]
        sh = _U64(self._shift[level - 1])
        lo, nbytes = plan.lo, plan.nbytes
        sel = plan.lvl >= level
        if sel.all():     # the segment holding the table's first byte, or the next one
            at = p.astype(_U64) << sh
            j = np.searchsorted(lo, at, side="right") - 1
            jj = np.maximum(j, 0)
            j[(j < 0) | (lo[jj] + nbytes[jj] <= at)] += 1
            return owner[j]
        seg = np.flatnonzero(sel)
        p_hi = ((lo[seg] + nbytes[seg] - _U64(1)) >> sh).astype(np.int64)
        return owner[seg[np.searchsorted(p_hi, p, side="left")]]

    def _grow_for(self, groups: list[int]) -> None:
        """Grow the table-page pool to the size ``_alloc_tables`` calls of ``groups`` pages
        each, in turn, would leave it."""
        new_cap = self._pte.shape[0]
        free = self._free.size
        if free >= sum(groups):
            return
        for n in groups:
            if free < n:
                c = max(2 * new_cap, new_cap + n - free)
                free += c - new_cap
                new_cap = c
            free -= n
        self._grow_pool(new_cap)

    def _grow_pool(self, new_cap: int) -> None:
        """Grow the table-page pool to ``new_cap`` pages; the new pages are handed out lowest
        first (``_free`` is taken from its end)."""
        cap = self._pte.shape[0]
        pte = np.zeros((new_cap, self._W), dtype=np.uint64)
        pte[:cap] = self._pte
        self._pte = pte
        self._nvalid = np.concatenate([self._nvalid, np.zeros(new_cap - cap, np.int64)])
        self._tlevel = np.concatenate([self._tlevel, np.full(new_cap - cap, -1, np.int8)])
        self._free = np.concatenate(
            [np.arange(new_cap - 1, cap - 1, -1, dtype=np.int64), self._free])

    # ---- unmap ------------------------------------------------------------------------
    def unmap(self, iova: int, size: int, gather: IommuIotlbGather | None = None) -> int:
        """``iommu_unmap()``: clear ``[iova, iova + size)``; returns the bytes unmapped.

        Every byte must be mapped by leaves wholly inside the range. With no ``gather`` the
        invalidation is synced before returning (``iommu_unmap``); with one, the caller syncs
        (``iommu_unmap_fast`` + ``iommu_iotlb_sync``) or queues it (lazy mode).
        """
        iova, size = int(iova), int(size)
        self._check_run("unmap", iova, size)
        f = self.fmt
        end = iova + size
        own = gather is None
        if own:
            gather = IommuIotlbGather()
        # ---- walk and validate (no writes)
        g = np.arange(iova >> self._shift[0], ((end - 1) >> self._shift[0]) + 1, dtype=np.int64)
        pool = np.zeros(g.size, dtype=np.int64)
        leaf_recs = []     # (level, pool, slot, g)
        full_recs = []     # (level, table pool, first g): whole last-level tables of leaves
        table_recs = []    # (level of child, child pool, parent pool, parent slot)
        for level in range(f.levels):
            sh = self._shift[level]
            mask = (1 << self._bits[level]) - 1
            slot = g & mask
            ent = self._pte[pool, slot]
            present = (ent & PTE_PRESENT) != 0
            if not present.all():
                i = int(np.nonzero(~present)[0][0])
                at = max(int(g[i]) << sh, iova)
                raise ValueError(f"unmap: IOVA {at:#x} is not mapped ({f.name}); "
                                 f"nothing was unmapped")
            is_table = (ent & PTE_TABLE) != 0
            leaf = ~is_table
            if leaf.any():
                gl = g[leaf]
                cut = np.nonzero(((gl << sh) < iova) | (((gl + 1) << sh) > end))[0]
                if cut.size:
                    at = int(gl[cut[0]]) << sh
                    raise ValueError(
                        f"unmap: [{iova:#x}, {end:#x}) would split the {human_bytes(1 << sh)} "
                        f"leaf at {at:#x} ({f.name}); unmap whole leaves")
                leaf_recs.append((level, pool[leaf], slot[leaf], gl))
            if not is_table.any():
                break
            child = (ent[is_table] >> _CHILD_SHIFT).astype(np.int64)
            gt = g[is_table]
            table_recs.append((level + 1, child, pool[is_table], slot[is_table]))
            nb = self._bits[level + 1]
            nsh = self._shift[level + 1]
            c_lo = np.maximum(gt << nb, iova >> nsh)
            c_hi = np.minimum(((gt + 1) << nb) - 1, (end - 1) >> nsh)
            cnt = c_hi - c_lo + 1
            if level + 2 == f.levels:
                # whole last-level tables: all leaves, present iff nvalid == entries
                full = (cnt == 1 << nb) & (self._nvalid[child] == 1 << nb)
                if full.any():
                    full_recs.append((level + 1, child[full], c_lo[full]))
                    child, c_lo, cnt = child[~full], c_lo[~full], cnt[~full]
            g = _expand(c_lo, cnt)
            pool = np.repeat(child, cnt)
        # ---- commit: clear leaves
        s = self.stats
        runs = []
        flat_pte = self._pte.reshape(-1)
        for level, lpool, lslot, gl in leaf_recs:
            sz = 1 << self._shift[level]
            flat_pte[lpool * self._W + lslot] = 0
            self._nvalid -= np.bincount(lpool, minlength=self._nvalid.size)
            s.pte_writes += gl.size
            s.leaves[sz] -= gl.size
            brk = np.nonzero(np.diff(gl) != 1)[0]
            starts = np.concatenate([[0], brk + 1])
            ends = np.concatenate([brk + 1, [gl.size]])
            for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
                runs.append((int(gl[a]) * sz, (int(gl[b - 1]) + 1) * sz, sz, b - a))
        for level, rows, g0 in full_recs:
            sz = 1 << self._shift[level]
            E = 1 << self._bits[level]
            r0 = int(rows[0])
            if np.array_equal(rows, np.arange(r0, r0 + rows.size)):
                self._pte[r0:r0 + rows.size, :E] = 0
            else:
                self._pte[rows, :E] = 0
            self._nvalid[rows] = 0
            s.pte_writes += rows.size * E
            s.leaves[sz] -= rows.size * E
            brk = np.nonzero(np.diff(g0) != E)[0]
            starts = np.concatenate([[0], brk + 1])
            ends = np.concatenate([brk + 1, [g0.size]])
            for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
                runs.append((int(g0[a]) * sz, (int(g0[b - 1]) + E) * sz, sz, (b - a) * E))
        # ---- free tables left empty, deepest first (kernel: __arm_lpae_free_pgtable)
        for _level, child, ppool, pslot in reversed(table_recs):
            empty = self._nvalid[child] == 0
            if empty.any():
                flat_pte[ppool[empty] * self._W + pslot[empty]] = 0
                np.subtract.at(self._nvalid, ppool[empty], 1)
                s.pte_writes += int(empty.sum())
                self._free_tables(child[empty])
        s.mapped_bytes -= size
        # ---- IOTLB: gather the leaves in IOVA order
        if not gather.queued:
            runs.sort()
            merged: list[list[int]] = []
            for start, stop, sz, n in runs:          # coalesce pieces of one run
                if merged and merged[-1][1] == start and merged[-1][2] == sz:
                    merged[-1][1] = stop
                    merged[-1][3] += n
                else:
                    merged.append([start, stop, sz, n])
            for start, stop, sz, n in merged:
                iommu_iotlb_gather_add_run(gather, start, stop, sz, self.iotlb_sync)
                s.iotlb_pages_gathered += n
        if own:
            self.iotlb_sync(gather)
        return size

    def iotlb_sync(self, gather: IommuIotlbGather) -> None:
        """``iommu_iotlb_sync()``: issue the gathered range invalidation, reset the gather."""
        if gather.pgsize:
            self.stats.iotlb_syncs += 1
            gather.syncs += 1
        gather.reset()

    def flush_iotlb_all(self) -> None:
        """``ops->flush_iotlb_all()``: invalidate every translation of the domain."""
        self.stats.iotlb_flush_all += 1

    # ---- lookups ----------------------------------------------------------------------
    def iova_to_phys_many(self, iovas: np.ndarray) -> np.ndarray:
        """``iommu_iova_to_phys()`` for an array of IOVAs (0 where unmapped)."""
        iovas = np.asarray(iovas, dtype=_U64)
        out = np.zeros(iovas.shape, dtype=_U64)
        flat = iovas.ravel()
        res = out.reshape(-1)
        ok = flat < _U64(1 << self.fmt.ias)
        idx = np.nonzero(ok)[0]
        pool = np.zeros(idx.size, dtype=np.int64)
        for level in range(self.fmt.levels):
            sh = _U64(self._shift[level])
            slot = ((flat[idx] >> sh) & _U64((1 << self._bits[level]) - 1)).astype(np.int64)
            ent = self._pte[pool, slot]
            present = (ent & PTE_PRESENT) != 0
            table = (ent & PTE_TABLE) != 0
            leaf = present & ~table
            if leaf.any():
                off = flat[idx[leaf]] & _U64((1 << int(sh)) - 1)
                res[idx[leaf]] = (ent[leaf] & ~_U64((1 << 12) - 1)) | off
            idx = idx[table]
            pool = (ent[table] >> _CHILD_SHIFT).astype(np.int64)
            if idx.size == 0:
                break
        return out

    def iova_to_phys(self, iova: int) -> int:
        """``iommu_iova_to_phys()``: the physical address of ``iova``, 0 if not mapped."""
        iova = int(iova)
        if iova < 0 or iova >= 1 << self.fmt.ias:
            return 0
        return int(self.iova_to_phys_many(np.array([iova], dtype=_U64))[0])

    def leaves(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every live leaf as ``(iova, paddr, size)`` uint64 arrays, in IOVA order."""
        out_i, out_p, out_s = [], [], []
        pool = np.zeros(1, dtype=np.int64)
        base = np.zeros(1, dtype=np.int64)     # global entry index of slot 0 per table
        for level in range(self.fmt.levels):
            n = 1 << self._bits[level]
            rows = self._pte[pool, :n]
            t, sl = np.nonzero(rows)
            ent = rows[t, sl]
            g = base[t] + sl
            table = (ent & PTE_TABLE) != 0
            sh = self._shift[level]
            if (~table).any():
                out_i.append(g[~table].astype(_U64) << _U64(sh))
                out_p.append(ent[~table] & ~_U64((1 << 12) - 1))
                out_s.append(np.full(int((~table).sum()), 1 << sh, dtype=_U64))
            if not table.any() or level + 1 == self.fmt.levels:
                break
            pool = (ent[table] >> _CHILD_SHIFT).astype(np.int64)
            base = g[table] << self._bits[level + 1]
        if not out_i:
            e = np.empty(0, dtype=_U64)
            return e, e.copy(), e.copy()
        i, p, s = np.concatenate(out_i), np.concatenate(out_p), np.concatenate(out_s)
        o = np.argsort(i, kind="stable")
        return i[o], p[o], s[o]

    def __repr__(self) -> str:
        s = self.stats
        return (f"PageTable({self.fmt.name!r}: {human_bytes(s.mapped_bytes)} mapped, "
                f"{s.table_pages} table pages, {human_bytes(s.table_bytes)})")
