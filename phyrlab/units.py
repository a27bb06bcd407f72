"""Sizes and constants shared by every model (include/linux/sizes.h, asm/page.h).

The lab models a 64-bit kernel with 4 KiB base pages: ``PAGE_SHIFT`` 12 as on x86-64 and
the common arm64 configuration.
"""

from __future__ import annotations

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PAGE_MASK = ~(PAGE_SIZE - 1) & 0xFFFF_FFFF_FFFF_FFFF

SZ_2K = 1 << 11
SZ_4K = 1 << 12
SZ_16K = 1 << 14
SZ_64K = 1 << 16
SZ_128K = 1 << 17
SZ_256K = 1 << 18
SZ_1M = 1 << 20
SZ_2M = 1 << 21
SZ_32M = 1 << 25
SZ_64M = 1 << 26
SZ_512M = 1 << 29
SZ_1G = 1 << 30
SZ_4G = 1 << 32

U32_MAX = 0xFFFF_FFFF
UINT_MAX = U32_MAX
U64_MAX = 0xFFFF_FFFF_FFFF_FFFF
ULONG_MAX = U64_MAX

#: dma_addr_t of a failed mapping (include/linux/dma-mapping.h: DMA_MAPPING_ERROR).
DMA_MAPPING_ERROR = U64_MAX


def DMA_BIT_MASK(n: int) -> int:  # noqa: N802 - the kernel's macro name
    """``DMA_BIT_MASK(n)`` of include/linux/dma-mapping.h."""
    if not 0 <= n <= 64:
        raise ValueError(f"DMA_BIT_MASK({n}): n must be 0..64")
    return U64_MAX if n == 64 else (1 << n) - 1


def align_down(x: int, a: int) -> int:
    """``ALIGN_DOWN(x, a)`` for a power-of-two ``a``."""
    return x & ~(a - 1)


def align_up(x: int, a: int) -> int:
    """``ALIGN(x, a)`` for a power-of-two ``a``."""
    return (x + a - 1) & ~(a - 1)


def human_bytes(n: float) -> str:
    """``4096`` -> ``'4 KiB'``, ``1.5 * 2**20`` -> ``'1.5 MiB'`` (binary units)."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            text = f"{n:.1f}".rstrip("0").rstrip(".")
            return f"{text} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


_SUFFIX = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str | int) -> int:
    """Parse ``'4K'``, ``'128KiB'``, ``'2M'``, ``'1G'`` or an int into bytes."""
    if isinstance(text, int):
        return text
    s = str(text).strip().lower().removesuffix("ib").removesuffix("b")
    unit = s[-1:] if s[-1:] in _SUFFIX else ""
    number = s[: len(s) - len(unit)].strip()
    try:
        value = float(number) * _SUFFIX[unit]
    except ValueError:
        raise ValueError(f"cannot read size {text!r}: expected e.g. 4096, '4K', '2MiB'") from None
    if value != int(value) or value < 0:
        raise ValueError(f"size {text!r} is not a whole, non-negative number of bytes")
    return int(value)
