"""Page-table pages: allocation, entry writes, walking and freeing.

Follows mm/memory.c (__p4d_alloc, __pud_alloc, __pmd_alloc, __pte_alloc/pmd_install,
free_pgd_range and the free_*_range helpers), include/linux/mm.h (mm_inc_nr_ptes/pmds/
puds, pagetable_*_ctor -> NR_PAGETABLE) and arch/x86/mm/pgtable.c (pgd_alloc, the PTI
order-1 PGD). This is the only module of the kernel that writes paging entries
(STYLE rule 4); the entries are real 64-bit words in simulated physical memory.

VmPTE (pgtables_bytes) counts PUD, PMD and PTE tables (no P4D or PGD counter);
PageTables (NR_PAGETABLE) counts every table page including the PGD and P4D.

A PMD table of a shared hugetlb mapping may be pointed at by the PUD entries of several
mms (huge_pmd_share, CONFIG_HUGETLB_PMD_PAGE_TABLE_SHARING): each sharer counts it in
its VmPTE (mm_inc_nr_pmds), NR_PAGETABLE counts the one page, and ``pmd_share_count``
is the table's ptdesc->pt_share_count (how many mms point at it besides the first).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from pagewalk.errors import Signal, SignalError
from pagewalk.hw import pgtable_types as pt
from pagewalk.hw.physmem import PhysicalMemory
from pagewalk.mm.page_alloc import NO_PAGE, BuddyAllocator, PageFlag
from pagewalk.mm.types import MmStat, MmStruct, Vma, VmFlags
from pagewalk.mm.vmstat import NodeStat

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel

PAGE_SIZE = 4096
TABLE_BYTES = 4096
# Which table a missing entry at a given level shift needs (4- and 5-level alike).
TABLE_KIND_BELOW = {48: "p4d", 39: "pud", 30: "pmd", 21: "pte"}
COUNTED_IN_VMPTE = {"pud", "pmd", "pte"}
USER_PGD_ENTRIES = 256  # pgd entries 0..255 map user space (both paging modes)


class OutOfMemory(SignalError):
    """An allocation the fault path needed failed: the kernel would run the OOM killer."""

    def __init__(self, vaddr: int) -> None:
        super().__init__(Signal.SIGBUS, vaddr, "out of memory: the OOM killer would run")


class PageTables:
    """Page-table operations of one kernel (they need its physical memory and allocator)."""

    def __init__(self, physmem: PhysicalMemory, buddy: BuddyAllocator, levels: int,
                 pti: bool) -> None:
        self.physmem = physmem
        self.buddy = buddy
        self.memmap = buddy.memmap
        self.node_stat = buddy.node_stat
        self.levels = levels
        self.shifts = (48, 39, 30, 21, 12) if levels == 5 else (39, 30, 21, 12)
        self.pti = pti
        self.kernel_pgd_entries: dict[int, int] = {}  # swapper_pg_dir's kernel half
        self.pmd_share_count: dict[int, int] = {}     # shared PMD table pfn -> pt_share_count

    # -- table pages ---------------------------------------------------------------------
    def alloc_table_page(self, mm: MmStruct | None, kind: str, order: int = 0) -> int:
        """pagetable_alloc() + pagetable_*_ctor(): a zeroed table page, NR_PAGETABLE += 1."""
        pfn = self.buddy.alloc_pages(order)
        if pfn == NO_PAGE:
            return NO_PAGE
        for i in range(1 << order):
            self.physmem.write_u64((pfn + i) << 12, 0)  # stored (page tables always are)
            self.memmap.flags[pfn + i] |= PageFlag.TABLE
        self.node_stat[NodeStat.NR_PAGETABLE] += 1 << order
        if mm is not None and kind in COUNTED_IN_VMPTE:
            mm.stat[MmStat.PGTABLES_BYTES] += TABLE_BYTES  # mm_inc_nr_{ptes,pmds,puds}
        return pfn

    def free_table_page(self, mm: MmStruct | None, pfn: int, kind: str, order: int = 0) -> None:
        """pagetable_dtor() + pagetable_free()."""
        for i in range(1 << order):
            self.physmem.drop(pfn + i)
        self.node_stat[NodeStat.NR_PAGETABLE] -= 1 << order
        if mm is not None and kind in COUNTED_IN_VMPTE:
            mm.stat[MmStat.PGTABLES_BYTES] -= TABLE_BYTES  # mm_dec_nr_*
        self.buddy.free_pages(pfn, order)

    # -- shared PMD tables (hugetlb) ---------------------------------------------------------
    def pmd_is_shared(self, table_pfn: int) -> bool:
        """ptdesc_pmd_is_shared(): another mm's PUD entry points at this PMD table too."""
        return table_pfn in self.pmd_share_count

    def share_pmd_table(self, mm: MmStruct, pud_paddr: int, table_pfn: int) -> None:
        """huge_pmd_share(): point ``mm``'s none PUD entry at another mm's PMD table
        (ptdesc_pmd_pts_inc, pud_populate, mm_inc_nr_pmds); no page is allocated, so
        NR_PAGETABLE does not change."""
        self.pmd_share_count[table_pfn] = self.pmd_share_count.get(table_pfn, 0) + 1
        self.set_entry(mm, pud_paddr, pt.mk_table(table_pfn))
        mm.stat[MmStat.PGTABLES_BYTES] += TABLE_BYTES

    def unshare_pmd_table(self, mm: MmStruct, pud_paddr: int) -> None:
        """__huge_pmd_unshare(): ``mm`` lets go of a shared PMD table (pud_clear,
        ptdesc_pmd_pts_dec, mm_dec_nr_pmds); the table lives on in the other mms."""
        table_pfn = pt.pte_pfn(self.read(pud_paddr))
        count = self.pmd_share_count[table_pfn] - 1
        if count:
            self.pmd_share_count[table_pfn] = count
        else:
            del self.pmd_share_count[table_pfn]
        self.set_entry(mm, pud_paddr, 0)
        mm.stat[MmStat.PGTABLES_BYTES] -= TABLE_BYTES

    # -- PGD ---------------------------------------------------------------------------------
    def pgd_alloc(self) -> tuple[int, int]:
        """pgd_alloc(): an order-0 PGD (order 1 with PTI: kernel PGD + user PGD) whose
        kernel half is copied from swapper_pg_dir (pgd_ctor). Returns (pfn, order)."""
        order = 1 if self.pti else 0
        pfn = self.alloc_table_page(None, "pgd", order)
        if pfn == NO_PAGE:
            return NO_PAGE, order
        for index, entry in self.kernel_pgd_entries.items():
            self.physmem.write_u64((pfn << 12) + index * 8, entry)
        return pfn, order

    def pgd_free(self, mm: MmStruct) -> None:
        self.free_table_page(None, mm.pgd_pfn, "pgd", mm.pgd_order)

    # -- entries -----------------------------------------------------------------------------
    def read(self, entry_paddr: int) -> int:
        return self.physmem.read_u64(entry_paddr)

    def set_entry(self, mm: MmStruct, entry_paddr: int, value: int) -> None:
        """set_pte/set_pmd/set_pud/set_p4d/set_pgd; a PGD write also updates PTI's user PGD
        (__pti_set_user_pgtbl: the user copy plain, the kernel copy of a user entry NX)."""
        if self.pti and entry_paddr >> 12 == mm.pgd_pfn:
            index = (entry_paddr & 0xFFF) >> 3
            if index < USER_PGD_ENTRIES:
                self.physmem.write_u64(entry_paddr + 4096, value)
                if value & pt._PAGE_PRESENT:
                    value |= pt._PAGE_NX
        self.physmem.write_u64(entry_paddr, value)

    def fill_table(self, table_pfn: int, words: np.ndarray, first: int = 0) -> None:
        """Write entries [first, first + len(words)) of a PTE table at once: a split filling
        the withdrawn deposit, or fork write-protecting a run of PTEs (the kernel's set_ptes /
        wrprotect_ptes over a batch). The caller flushes the TLB as the kernel does."""
        if int(self.physmem.slot_of[table_pfn]) < 0:
            self.physmem.write_u64(table_pfn << 12, 0)  # make sure the frame is stored
        slot = int(self.physmem.slot_of[table_pfn])
        self.physmem.pool[slot, first: first + len(words)] = words

    def table_view(self, table_pfn: int) -> np.ndarray:
        """The 512 entries of a table as a read-only array (zeros if never stored)."""
        return self.physmem.frame_words(table_pfn)

    def pgd_entry_paddr(self, mm: MmStruct, vaddr: int) -> int:
        return (mm.pgd_pfn << 12) + ((vaddr >> self.shifts[0]) & 511) * 8

    def walk(self, mm: MmStruct, vaddr: int, target_shift: int,
             alloc: bool) -> tuple[int, int]:
        """Find the entry mapping ``vaddr`` at level ``target_shift`` (30 pud, 21 pmd, 12 pte).

        Walks from the PGD, allocating missing tables when ``alloc`` (p4d_alloc, pud_alloc,
        pmd_alloc, pte_alloc). Returns ``(entry_paddr, shift)``: ``shift == target_shift``
        when found; a larger shift means the walk stopped at an entry of that level that is
        none (alloc False) or a huge leaf. Raises OutOfMemory if a table cannot be allocated.
        """
        paddr = self.pgd_entry_paddr(mm, vaddr)
        for level, shift in enumerate(self.shifts):
            if shift == target_shift:
                return paddr, shift
            entry = self.physmem.read_u64(paddr)
            if entry == 0:
                if not alloc:
                    return paddr, shift
                kind = TABLE_KIND_BELOW[shift]
                pfn = self.alloc_table_page(mm, kind)
                if pfn == NO_PAGE:
                    raise OutOfMemory(vaddr)
                entry = pt.mk_table(pfn)
                self.set_entry(mm, paddr, entry)
            elif entry & pt._PAGE_PSE:
                return paddr, shift
            next_shift = self.shifts[level + 1]
            paddr = (pt.pte_pfn(entry) << 12) + ((vaddr >> next_shift) & 511) * 8
        raise AssertionError("target level below PTE")

    def pmd_ranges(self, mm: MmStruct, start: int, end: int) -> Iterator[tuple[int, int, int]]:
        """The PMD-sized pieces [addr, next) of [start, end) that have a PMD table, with the
        physical address of their PMD entry (pmd_addr_end over walk_pmd_range); ranges whose
        upper tables are missing are skipped whole."""
        addr = start
        while addr < end:
            pmd_paddr, shift = self.walk(mm, addr, 21, alloc=False)
            size = 1 << shift
            boundary = (addr + size) & ~(size - 1)
            nxt = min(boundary, end) if boundary else end
            if shift == 21:
                yield addr, nxt, pmd_paddr
            addr = nxt

    def lookup(self, mm: MmStruct, vaddr: int) -> tuple[int, int, int]:
        """The lowest present entry mapping ``vaddr``: (entry_paddr, entry, shift).

        entry is 0 with the shift of the first missing level when nothing maps vaddr."""
        paddr = self.pgd_entry_paddr(mm, vaddr)
        for level, shift in enumerate(self.shifts):
            entry = self.physmem.read_u64(paddr)
            if shift == 12 or entry == 0 or entry & pt._PAGE_PSE:
                return paddr, entry, shift
            next_shift = self.shifts[level + 1]
            paddr = (pt.pte_pfn(entry) << 12) + ((vaddr >> next_shift) & 511) * 8
        raise AssertionError("unreachable")

    # -- freeing (free_pgd_range) ---------------------------------------------------------------
    def free_pgd_range(self, mm: MmStruct, addr: int, end: int, floor: int,
                       ceiling: int) -> None:
        """free_pgd_range(): free the tables mapping only [addr, end) within [floor, ceiling).

        A table is freed only when the whole range it maps lies inside [floor, ceiling);
        ceiling 0 means the top of the address space (USER_PGTABLES_CEILING)."""
        pmd_size = 1 << 21
        mask = ~(pmd_size - 1)
        addr &= mask
        if addr < floor:
            addr += pmd_size
            if not addr:
                return
        if ceiling:
            ceiling &= mask
            if not ceiling:
                return
        if (end - 1) % (1 << 64) > (ceiling - 1) % (1 << 64):
            end -= pmd_size
        if addr > end - 1:
            return
        self._free_level(mm, self.pgd_entry_paddr(mm, addr), 0, addr, end, floor, ceiling)

    def _free_level(self, mm: MmStruct, entry_paddr: int, level: int, addr: int, end: int,
                    floor: int, ceiling: int) -> None:
        """One level of free_p4d_range/free_pud_range/free_pmd_range over the entries that map
        [addr, end), starting at ``entry_paddr``; each non-none entry's table is freed below."""
        shift = self.shifts[level]
        size = 1 << shift
        while True:
            nxt = min((addr + size) & ~(size - 1), end) if (addr + size) & ~(size - 1) else end
            entry = self.physmem.read_u64(entry_paddr)
            if entry != 0 and not entry & pt._PAGE_PSE:
                table = pt.pte_pfn(entry)
                if shift == 21:
                    self._free_table_below(mm, entry_paddr, table, "pte")  # free_pte_range
                else:
                    child_shift = self.shifts[level + 1]
                    child = (table << 12) + ((addr >> child_shift) & 511) * 8
                    self._free_level(mm, child, level + 1, addr, nxt, floor, ceiling)
                    self._maybe_free_table(mm, entry_paddr, table, shift, addr, nxt,
                                           floor, ceiling)
            addr = nxt
            if addr == end:
                return
            entry_paddr += 8

    def _maybe_free_table(self, mm: MmStruct, entry_paddr: int, table: int, shift: int,
                          start: int, end: int, floor: int, ceiling: int) -> None:
        """The tail of free_pmd_range/free_pud_range/free_p4d_range: free the table that the
        entry at ``shift`` points to only if its whole range lies within [floor, ceiling)."""
        mask = ~((1 << shift) - 1)
        start &= mask
        if start < floor:
            return
        if ceiling:
            ceiling &= mask
            if not ceiling:
                return
        if (end - 1) % (1 << 64) > (ceiling - 1) % (1 << 64):
            return
        self._free_table_below(mm, entry_paddr, table, TABLE_KIND_BELOW[shift])

    def _free_table_below(self, mm: MmStruct, entry_paddr: int, table: int, kind: str) -> None:
        # the zap before free_pgtables unshares every shared PMD table (huge_pmd_unshare)
        assert table not in self.pmd_share_count, f"freeing shared PMD table {table:#x}"
        self.set_entry(mm, entry_paddr, 0)  # pmd_clear / pud_clear / p4d_clear / pgd_clear
        self.free_table_page(mm, table, kind)

    def free_table_if_empty(self, mm: MmStruct, pmd_paddr: int) -> bool:
        """zap_pte_table_if_empty() (PT_RECLAIM): free a PTE table whose entries are all none."""
        entry = self.physmem.read_u64(pmd_paddr)
        if entry == 0 or entry & pt._PAGE_PSE:
            return False
        table = pt.pte_pfn(entry)
        if self.physmem.is_stored(table) and self.physmem.frame_words(table).any():
            return False
        self._free_table_below(mm, pmd_paddr, table, "pte")
        return True

    def table_words(self, table_pfn: int) -> list[int]:
        return [int(x) for x in self.physmem.frame_words(table_pfn)]


def pte_alloc(k: Kernel, mm: MmStruct, pmd_paddr: int) -> int:
    """pte_alloc(): the PMD entry's PTE table, allocated (__pte_alloc -> pmd_install) when
    none; NO_PAGE when that allocation fails."""
    pgt = k.pgtables
    pmd = pgt.read(pmd_paddr)
    if pmd == 0:
        pfn = pgt.alloc_table_page(mm, "pte")
        if pfn == NO_PAGE:
            return NO_PAGE
        pmd = pt.mk_table(pfn)
        pgt.set_entry(mm, pmd_paddr, pmd)
    return pt.pte_pfn(pmd)


def mk_anon_pte(vma: Vma, pfn: int) -> int:
    """The PTE of a new anonymous page (do_anonymous_page): folio_mk_pte + pte_sw_mkyoung
    + (VM_WRITE) pte_mkwrite(pte_mkdirty())."""
    entry = pt.mk_pte(pfn, vma.page_prot) | pt._PAGE_ACCESSED
    if vma.flags & VmFlags.WRITE:
        entry |= pt._PAGE_DIRTY | pt._PAGE_RW
    return entry
