"""4- and 5-level x86_64 address split and canonical checks.

Follows arch/x86/include/asm/pgtable_64_types.h (PGDIR_SHIFT, P4D_SHIFT, PUD_SHIFT,
PMD_SHIFT, PTRS_PER_*) and SDM vol. 3A §4.5.
"""

from __future__ import annotations

from dataclasses import dataclass

PTRS_PER_TABLE = 512
LEVEL_SHIFTS = {5: (48, 39, 30, 21, 12), 4: (39, 30, 21, 12)}
LEVEL_NAMES = {5: ("PML5", "PML4", "PDPT", "PD", "PT"), 4: ("PML4", "PDPT", "PD", "PT")}
# Linux's names for the same levels (pgd is always the top one).
LINUX_LEVEL_NAMES = {5: ("pgd", "p4d", "pud", "pmd", "pte"), 4: ("pgd", "pud", "pmd", "pte")}


@dataclass(frozen=True, slots=True)
class PagingMode:
    """The paging mode of the CPU: 4 levels (48-bit VAs) or 5 levels (LA57, 57-bit VAs)."""

    levels: int = 4

    @property
    def va_bits(self) -> int:
        return 48 if self.levels == 4 else 57

    @property
    def shifts(self) -> tuple[int, ...]:
        """Shift of each level's index, top level first, the PTE level (12) last."""
        return LEVEL_SHIFTS[self.levels]

    @property
    def task_size_max(self) -> int:
        """TASK_SIZE_MAX: the top user page is an unmapped guard."""
        return (1 << (self.va_bits - 1)) - 4096

    def is_canonical(self, vaddr: int) -> bool:
        """Bits 63..va_bits-1 all equal (SDM §3.3.7.1)."""
        top = vaddr >> (self.va_bits - 1)
        return top == 0 or top == (1 << (64 - self.va_bits + 1)) - 1

    def index(self, vaddr: int, level: int) -> int:
        """Index into the table at ``level`` (0 = top) for ``vaddr``."""
        return (vaddr >> self.shifts[level]) & (PTRS_PER_TABLE - 1)


def pgd_index(vaddr: int, levels: int = 4) -> int:
    return (vaddr >> LEVEL_SHIFTS[levels][0]) & 511


def pud_index(vaddr: int) -> int:
    return (vaddr >> 30) & 511


def pmd_index(vaddr: int) -> int:
    return (vaddr >> 21) & 511


def pte_index(vaddr: int) -> int:
    return (vaddr >> 12) & 511
