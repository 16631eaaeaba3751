"""Sizes, shifts and alignment helpers (include/linux/sizes.h, arch/x86/include/asm/page_types.h).

Sizes are bytes unless the name says otherwise; ``parse_size`` reads the
scenario format's sizes (``4096``, ``4KiB``, ``2MiB``, ``0x200000``).
"""

from __future__ import annotations

import re

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40
PiB = 1 << 50

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PAGE_MASK = ~(PAGE_SIZE - 1)
PMD_SHIFT = 21
PMD_SIZE = 1 << PMD_SHIFT
PMD_MASK = ~(PMD_SIZE - 1)
PUD_SHIFT = 30
PUD_SIZE = 1 << PUD_SHIFT
PUD_MASK = ~(PUD_SIZE - 1)
P4D_SHIFT = 39
PGDIR_SHIFT_L4 = 39
PGDIR_SHIFT_L5 = 48
PTRS_PER_TABLE = 512
HPAGE_PMD_ORDER = PMD_SHIFT - PAGE_SHIFT
HPAGE_PMD_NR = 1 << HPAGE_PMD_ORDER
HPAGE_PUD_ORDER = PUD_SHIFT - PAGE_SHIFT

_UNITS = {
    "": 1, "b": 1,
    "k": KiB, "kb": KiB, "kib": KiB,
    "m": MiB, "mb": MiB, "mib": MiB,
    "g": GiB, "gb": GiB, "gib": GiB,
    "t": TiB, "tb": TiB, "tib": TiB,
    "p": PiB, "pb": PiB, "pib": PiB,
}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([a-zA-Z]*)\s*$")


def parse_size(value: object) -> int:
    """Bytes from an int, a decimal/hex string, or a number with a binary unit.

    Raises ValueError with a short reason on anything else (bools, negatives, floats):
    a wrong type is bad input like a wrong value (callers turn ValueError into ConfigError).
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a size, got {value!r}")  # noqa: TRY004
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must not be negative, got {value}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a size (bytes or a string like '2MiB'), got {value!r}")  # noqa: TRY004
    text = value.strip()
    if text.lower().startswith("0x"):
        try:
            return int(text, 16)
        except ValueError:
            raise ValueError(f"bad hexadecimal size {value!r}") from None
    match = _SIZE_RE.match(text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"bad size {value!r} (use bytes or a unit: KiB, MiB, GiB, TiB, PiB)")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def parse_addr(value: object) -> int:
    """An address from an int or a hex/decimal string."""
    if isinstance(value, bool):
        raise ValueError(f"expected an address, got {value!r}")  # noqa: TRY004
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"address must not be negative, got {value}")
        return value
    if isinstance(value, str):
        try:
            addr = int(value.strip(), 0)
        except ValueError:
            raise ValueError(f"bad address {value!r}") from None
        if addr < 0:
            raise ValueError(f"address must not be negative, got {value!r}")
        return addr
    raise ValueError(f"expected an address, got {value!r}")


def format_size(size: int) -> str:
    """The largest binary unit that divides ``size`` exactly ("2MiB", "5000")."""
    for unit, name in ((PiB, "PiB"), (TiB, "TiB"), (GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if size and size % unit == 0:
            return f"{size // unit}{name}"
    return str(size)


def align_down(value: int, align: int) -> int:
    return value & ~(align - 1)


def align_up(value: int, align: int) -> int:
    return (value + align - 1) & ~(align - 1)


def is_aligned(value: int, align: int) -> bool:
    return value & (align - 1) == 0


def page_align(value: int) -> int:
    """PAGE_ALIGN(): round a length up to whole pages."""
    return align_up(value, PAGE_SIZE)
