"""What page tables cost: the textbook arithmetic, and the tables a simulated process holds.

Arithmetic: a flat (one-level) table needs one entry per page of the address space,
``space / page_size * entry_size`` bytes (128 TiB of 4 KiB pages with 8-byte entries:
256 GiB). A hierarchical table of ``table_size / entry_size`` entries per table needs,
for a fully populated space, ``ceil(pages / entries)`` leaf tables, then
``ceil(tables below / entries)`` at each level above, up to one root (x86_64 4-level
paging, SDM vol. 3A §4.5: 512 eight-byte entries in each 4 KiB table).

State: the tables reachable from a process's PGD (user half, entries 0..255) are
counted level by level from their words in simulated physical memory, plus the PTE
table Linux deposits under every huge PMD (mm/huge_memory.c
pgtable_trans_huge_deposit). PUD, PMD and PTE tables are what ``mm->pgtables_bytes``
counts (include/linux/mm.h mm_inc_nr_ptes/pmds/puds; fs/proc/task_mmu.c prints it as
VmPTE); the PGD (and a P4D) are counted only in NR_PAGETABLE. Both figures are
compared here, so a disagreement shows. The same present footprint is then priced with
2 MiB and 1 GiB pages: the leaves that cover the same 2 MiB or 1 GiB regions and the
tables above them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from pagewalk.errors import ConfigError
from pagewalk.hw.paging import LEVEL_NAMES, LINUX_LEVEL_NAMES
from pagewalk.mm.pagewalk import walk_user_tables
from pagewalk.mm.types import MmStat
from pagewalk.units import GiB, KiB, MiB, format_size

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel
    from pagewalk.kernel.task import Task

TABLE_BYTES = 4096
X86_LEAF_NAMES = ("PT", "PD", "PDPT", "PML4", "PML5")     # bottom up
X86_LEAF_LEVEL = {4 * KiB: 0, 2 * MiB: 1, 1 * GiB: 2}     # which level holds the leaves


# -- arithmetic ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LevelCost:
    """One level of a hierarchical table: how many tables, their bytes, entries in use."""

    name: str
    tables: int
    size: int               # bytes
    entries_used: int       # entries pointing down (or mapping pages) at this level


@dataclass(frozen=True, slots=True)
class ArithmeticCost:
    address_space: int      # bytes
    page_size: int
    entry_size: int
    table_size: int
    levels_needed: int
    flat_size: int          # bytes of a one-level table
    levels: tuple[LevelCost, ...]   # top level first

    @property
    def entries_per_table(self) -> int:
        return self.table_size // self.entry_size

    @property
    def hierarchical_size(self) -> int:
        return sum(level.size for level in self.levels)

    def to_json(self) -> dict[str, Any]:
        return {
            "address_space": self.address_space, "page_size": self.page_size,
            "entry_size": self.entry_size, "table_size": self.table_size,
            "entries_per_table": self.entries_per_table, "levels_needed": self.levels_needed,
            "flat_bytes": self.flat_size, "hierarchical_bytes": self.hierarchical_size,
            "levels": [{"name": lv.name, "tables": lv.tables, "bytes": lv.size,
                        "entries_used": lv.entries_used} for lv in self.levels],
        }


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def arithmetic_cost(address_space: int, page_size: int, levels: int | None = None,
                    entry_size: int = 8, table_size: int = TABLE_BYTES) -> ArithmeticCost:
    """Flat and fully populated hierarchical page-table sizes; ConfigError on bad geometry
    (``levels`` fewer than the space needs, sizes that do not divide)."""
    _check_geometry(address_space, page_size, entry_size, table_size)
    per_table = table_size // entry_size
    pages = _ceil_div(address_space, page_size)
    counts = []                       # bottom up: (tables, entries used)
    entries = pages
    while True:
        tables = _ceil_div(entries, per_table)
        counts.append((tables, entries))
        if tables == 1:
            break
        entries = tables
    needed = len(counts)
    if levels is not None:
        if levels < needed:
            raise ConfigError(
                f"{levels} levels of {per_table} entries map at most "
                f"{format_size(page_size * per_table ** levels)}; "
                f"{format_size(address_space)} needs {needed}")
        counts += [(1, 1)] * (levels - needed)   # single-entry roots above
    names = _level_names(len(counts), page_size, entry_size, table_size)
    out = tuple(LevelCost(names[i], tables, tables * table_size, used)
                for i, (tables, used) in reversed(list(enumerate(counts))))
    return ArithmeticCost(address_space, page_size, entry_size, table_size, needed,
                          pages * entry_size, out)


def _check_geometry(address_space: int, page_size: int, entry_size: int,
                    table_size: int) -> None:
    if min(address_space, page_size, entry_size, table_size) <= 0:
        raise ConfigError("sizes must be positive")
    if table_size % entry_size or table_size // entry_size < 2:
        raise ConfigError(f"a {table_size}-byte table must hold at least two "
                          f"{entry_size}-byte entries, a whole number of them")
    if address_space % page_size:
        raise ConfigError(f"the address space ({address_space} bytes) is not a whole number "
                          f"of {page_size}-byte pages")


def _level_names(nr_levels: int, page_size: int, entry_size: int, table_size: int) -> list[str]:
    """Bottom-up names: x86's (PT, PD, PDPT, PML4, PML5) for x86 geometry, else L1, L2 ..."""
    first = X86_LEAF_LEVEL.get(page_size)
    if entry_size == 8 and table_size == TABLE_BYTES and first is not None \
            and first + nr_levels <= len(X86_LEAF_NAMES):
        return list(X86_LEAF_NAMES[first: first + nr_levels])
    return [f"L{i + 1}" for i in range(nr_levels)]


# -- a process's page tables -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Alternative:
    """The same footprint mapped with one page size."""

    page_size: int
    pages: int                  # leaves
    mapped: int                 # bytes the leaves map (rounded up to whole pages)
    tables: dict[str, int]      # Linux level name -> tables (pud, pmd, pte)
    vmpte: int                  # bytes: PUD + PMD + PTE tables
    vmpte_thp: int | None       # bytes with a deposited PTE table per 2 MiB leaf (THP)


@dataclass(slots=True)
class ProcessCost:
    process: str
    pid: int
    levels: int
    tables: dict[str, int] = field(default_factory=dict)   # pgd, p4d, pud, pmd, pte, deposited
    leaves: dict[int, int] = field(default_factory=dict)   # page shift -> present leaves
    vmpte_kernel: int = 0       # mm->pgtables_bytes
    alternatives: list[Alternative] = field(default_factory=list)

    @property
    def vmpte_counted(self) -> int:
        """Bytes of the tables VmPTE counts, found by walking: PUD + PMD + PTE + deposits."""
        t = self.tables
        return TABLE_BYTES * (t.get("pud", 0) + t.get("pmd", 0) + t.get("pte", 0)
                              + t.get("deposited", 0))

    @property
    def footprint(self) -> int:
        return sum(count << shift for shift, count in self.leaves.items())

    @property
    def agrees(self) -> bool:
        return self.vmpte_counted == self.vmpte_kernel

    def to_json(self) -> dict[str, Any]:
        return {
            "process": self.process, "pid": self.pid, "paging_levels": self.levels,
            "tables": dict(self.tables),
            "table_bytes": {name: count * TABLE_BYTES for name, count in self.tables.items()},
            "leaves": {format_size(1 << shift): count for shift, count in self.leaves.items()},
            "footprint_bytes": self.footprint,
            "vmpte_counted_bytes": self.vmpte_counted, "VmPTE_bytes": self.vmpte_kernel,
            "agrees_with_VmPTE": self.agrees,
            "alternatives": [{"page_size": a.page_size, "pages": a.pages, "mapped_bytes": a.mapped,
                              "tables": a.tables, "vmpte_bytes": a.vmpte,
                              "vmpte_thp_bytes": a.vmpte_thp} for a in self.alternatives],
        }


def process_cost(k: Kernel, task: Task) -> ProcessCost:
    """Count ``task``'s page tables from its PGD and price its footprint with larger pages."""
    names = LINUX_LEVEL_NAMES[k.levels]
    out = ProcessCost(task.comm, task.pid, k.levels)
    out.tables = {name: 0 for name in names}
    out.tables["pgd"] = 1 << task.mm.pgd_order      # the PTI pair is two pages
    walk = walk_user_tables(k, task.mm)
    for level, count in enumerate(walk.tables):
        out.tables[names[level + 1]] = count
    out.tables["deposited"] = walk.deposited
    starts = walk.leaf_starts
    out.leaves = {shift: int(arr.size) for shift, arr in starts.items()}
    out.vmpte_kernel = int(task.mm.stat[MmStat.PGTABLES_BYTES])
    out.alternatives = [_alternative(starts, shift) for shift in (12, 21, 30)]
    return out


def page_tables_total(k: Kernel) -> tuple[int, int]:
    """(bytes of every table of every live process, found by walking; NR_PAGETABLE in
    bytes, the kernel's /proc/meminfo PageTables). The walk counts PGD pages and P4D
    tables too, which NR_PAGETABLE also counts (pagetable_*_ctor for every level); a
    table shared by several processes (hugetlb huge_pmd_share) is one page, counted once,
    though each sharer's VmPTE counts it."""
    from pagewalk.mm.pagewalk import walk_user_tables
    from pagewalk.mm.vmstat import NodeStat
    pgds = sum(1 << task.mm.pgd_order for task in k.tasks.values())
    table_pfns: set[int] = set()
    deposited = 0
    for task in k.tasks.values():
        walk = walk_user_tables(k, task.mm)
        table_pfns |= walk.table_pfns
        deposited += walk.deposited
    counted = pgds + len(table_pfns) + deposited
    return counted * TABLE_BYTES, int(k.node_stat[NodeStat.NR_PAGETABLE]) * TABLE_BYTES


def _alternative(starts: dict[int, npt.NDArray[np.int64]], page_shift: int) -> Alternative:
    """Map every present leaf's range with pages of ``page_shift``: the distinct pages
    needed, then the distinct tables above them (PTE per 2 MiB, PMD per 1 GiB, PUD per
    512 GiB of address space touched)."""
    if page_shift == 12:      # leaves never overlap: every 4 KiB page is counted once
        nr_pages = sum(int(arr.size) << (shift - 12) for shift, arr in starts.items())
    else:
        nr_pages = int(_regions(starts, page_shift).size)
    tables = {}
    for name, table_shift in (("pud", 39), ("pmd", 30), ("pte", 21)):
        tables[name] = int(_regions(starts, table_shift).size) if table_shift > page_shift else 0
    vmpte = TABLE_BYTES * sum(tables.values())
    thp = vmpte + TABLE_BYTES * nr_pages if page_shift == 21 else None
    return Alternative(1 << page_shift, nr_pages, nr_pages << page_shift, tables, vmpte, thp)


def _regions(starts: dict[int, npt.NDArray[np.int64]], shift: int) -> npt.NDArray[np.int64]:
    """The distinct ``1 << shift``-aligned regions of the address space the leaves touch."""
    parts = []
    for leaf_shift, arr in starts.items():
        if not arr.size:
            continue
        first = arr >> shift
        if leaf_shift > shift:    # a larger leaf spans several regions
            span = np.arange(1 << (leaf_shift - shift), dtype=np.int64)
            parts.append((first[:, None] + span[None, :]).ravel())
        else:
            parts.append(first)
    if not parts:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.concatenate(parts))


def level_label(levels: int, linux_name: str) -> str:
    """``pmd`` -> ``PD (pmd)`` for display."""
    names = LINUX_LEVEL_NAMES[levels]
    if linux_name in names:
        return f"{LEVEL_NAMES[levels][names.index(linux_name)]} ({linux_name})"
    return linux_name
