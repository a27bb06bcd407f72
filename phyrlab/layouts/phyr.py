"""``struct phyr`` and ``struct phys_vec``: an address and a length per entry.

- ``phyr`` (Matthew Wilcox's phyr branch, 2023): ``phys_addr_t addr; size_t len;``, 16 bytes.
- ``phys_vec`` (block/blk-mq-dma.c, v6.17; later moved to include/linux/types.h for VFIO):
  ``phys_addr_t paddr; u32 len;`` - 12 bytes of fields padded to 16 by the 8-byte alignment of
  ``paddr`` (verified in the blk-mq-dma patches; a later patch proposed ``size_t len``).
  A range longer than a ``u32`` is stored as several entries of at most ``0xfffff000`` bytes
  (page-aligned pieces).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from .base import MAX_U32_CHUNK, U64, EntryArrayLayout, split_ranges

PHYR_DTYPE = np.dtype([("addr", "<u8"), ("len", "<u8")])
PHYS_VEC_DTYPE = np.dtype({"names": ["paddr", "len"], "formats": ["<u8", "<u4"],
                           "offsets": [0, 8], "itemsize": 16})


class Phyr(EntryArrayLayout):
    """An array of ``struct phyr`` (Wilcox): one physical range per entry, any length."""

    name: ClassVar[str] = "phyr"
    c_struct: ClassVar[str] = "struct phyr"
    dtype: ClassVar[np.dtype] = PHYR_DTYPE
    entry_size: ClassVar[int] = PHYR_DTYPE.itemsize

    @classmethod
    def _build(cls, addr: np.ndarray, length: np.ndarray) -> Phyr:
        entries = np.empty(addr.size, dtype=cls.dtype)
        entries["addr"] = addr
        entries["len"] = length
        return cls(entries)

    def _entry_ranges(self) -> tuple[np.ndarray, np.ndarray]:
        return self.entries["addr"], self.entries["len"]


class PhysVec(EntryArrayLayout):
    """An array of ``struct phys_vec`` (block layer, v6.17+): ``u32`` lengths, 16-byte entries."""

    name: ClassVar[str] = "phys_vec"
    c_struct: ClassVar[str] = "struct phys_vec"
    dtype: ClassVar[np.dtype] = PHYS_VEC_DTYPE
    entry_size: ClassVar[int] = PHYS_VEC_DTYPE.itemsize

    @classmethod
    def _build(cls, addr: np.ndarray, length: np.ndarray) -> PhysVec:
        addr, length = split_ranges(addr, length, MAX_U32_CHUNK, MAX_U32_CHUNK)
        entries = np.zeros(addr.size, dtype=cls.dtype)
        entries["paddr"] = addr
        entries["len"] = length
        return cls(entries)

    def _entry_ranges(self) -> tuple[np.ndarray, np.ndarray]:
        return self.entries["paddr"], self.entries["len"].astype(U64)
