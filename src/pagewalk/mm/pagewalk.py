"""A walk over a process's user page tables (mm/pagewalk.c's walk_page_range, for the
views that read the tables whole): every table below the user half of the PGD, every
present leaf with its size, and the PMD leaves that have a deposited PTE table.

The explain and trace commands count and map what it finds (explain/cost.py,
trace/page_map.py); /proc's views walk per VMA (proc/task_mmu.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from pagewalk.hw import pgtable_types as pt
from pagewalk.mm.pgtable import USER_PGD_ENTRIES

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel
    from pagewalk.mm.types import MmStruct

_PRESENT = np.uint64(pt._PAGE_PRESENT | pt._PAGE_PROTNONE)   # pte_present()


@dataclass(slots=True)
class UserTables:
    """What :func:`walk_user_tables` found."""

    tables: list[int] = field(default_factory=list)    # per level below the PGD: tables
    leaf_starts: dict[int, npt.NDArray[np.int64]] = field(default_factory=dict)  # shift ->
    deposited: int = 0          # PMD leaves with a deposited PTE table (THP)
    table_pfns: set[int] = field(default_factory=set)   # frames of the tables below the PGD


def walk_user_tables(k: Kernel, mm: MmStruct) -> UserTables:
    """Walk ``mm``'s user page tables from its PGD: the tables at each level below it,
    the virtual address of every present leaf by page shift (sorted), the deposits."""
    shifts = k.pgtables.shifts
    out = UserTables(tables=[0] * (len(shifts) - 1))
    parts: dict[int, list[npt.NDArray[np.int64]]] = {12: [], 21: [], 30: []}

    def visit(table_pfn: int, level: int, base: int) -> None:
        shift = shifts[level]
        words = k.physmem.frame_words(table_pfn)
        if level == 0:
            words = words[:USER_PGD_ENTRIES]
        present = np.flatnonzero(words & _PRESENT)
        if shift == 12:
            parts[12].append(base + (present.astype(np.int64) << 12))
            return
        for index in present:
            entry = int(words[index])
            vaddr = base | (int(index) << shift)
            if entry & pt._PAGE_PSE:
                parts[shift].append(np.array([vaddr], dtype=np.int64))
                if shift == 21 and (table_pfn << 12) + int(index) * 8 in k.deposit:
                    out.deposited += 1
                continue
            out.tables[level] += 1
            out.table_pfns.add(pt.pte_pfn(entry))
            visit(pt.pte_pfn(entry), level + 1, vaddr)

    visit(mm.pgd_pfn, 0, 0)
    out.leaf_starts = {shift: (np.sort(np.concatenate(arrays)) if arrays
                               else np.zeros(0, dtype=np.int64))
                       for shift, arrays in parts.items()}
    return out
