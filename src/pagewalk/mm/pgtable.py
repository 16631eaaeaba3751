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

The array work (``pgtable_alloc``, ``set_entry``, ``walk``) is compiled once and shared
by PageTables' methods and the compiled fault path (mm/fastfault.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from pagewalk.errors import Signal, SignalError
from pagewalk.hw import pgtable_types as pt
from pagewalk.hw.compiled import compiled
from pagewalk.hw.physmem import PhysArrays, PhysicalMemory, frame_drop, frame_store
from pagewalk.mm.page_alloc import NO_PAGE, BuddyAllocator, KernelArrays, PageFlag, alloc_pages
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
WALK_OOM = -1           # walk(): a table the walk needed could not be allocated
_TABLE = np.uint16(PageFlag.TABLE)
_PTE_TABLE = np.uint64(pt._PAGE_TABLE)
_PFN_MASK = np.uint64(pt.PTE_PFN_MASK)
_PSE = np.uint64(pt._PAGE_PSE)
_PRESENT = np.uint64(pt._PAGE_PRESENT)
_NX = np.uint64(pt._PAGE_NX)
_ACCESSED = np.uint64(pt._PAGE_ACCESSED)
_DIRTY = np.uint64(pt._PAGE_DIRTY)
_RW = np.uint64(pt._PAGE_RW)


# -- compiled array work (the caller reserved the physmem rows a store may need) -------------

@compiled(entry="KernelArrays q1 i ?", result="i")
def pgtable_alloc(ka: KernelArrays, mm_stat: npt.NDArray[np.int64], order: int,
                  vmpte: bool) -> int:
    """pagetable_alloc() + pagetable_*_ctor(): zeroed table frames (stored: page tables
    always are), PG_table, NR_PAGETABLE; mm_inc_nr_{ptes,pmds,puds} when ``vmpte`` (a
    PUD, PMD or PTE table). NO_PAGE when the allocation fails."""
    pfn = alloc_pages(ka.pages, ka.vmstat, order)
    if pfn == NO_PAGE:
        return NO_PAGE
    for frame in range(pfn, pfn + (1 << order)):
        frame_drop(ka.phys, frame)
        frame_store(ka.phys, frame)
        ka.pages.flags[frame] |= _TABLE
    ka.vmstat.node[NodeStat.NR_PAGETABLE] += 1 << order
    if vmpte:
        mm_stat[MmStat.PGTABLES_BYTES] += TABLE_BYTES
    return pfn


@compiled(inline=True)
def pfn_of(entry: np.uint64) -> int:
    """pte_pfn() / pmd_pfn() of a 4 KiB or huge leaf, or of a table entry."""
    return int(np.int64((entry & _PFN_MASK) >> np.uint64(12)))


@compiled(entry="PhysArrays i", result="u", inline=True)
def read_entry(phys: PhysArrays, entry_paddr: int) -> np.uint64:
    """The entry at ``entry_paddr`` (0 in a frame never stored)."""
    slot = phys.slot_of[entry_paddr >> 12]
    return phys.pool[slot, (entry_paddr & 0xFFF) >> 3] if slot >= 0 else np.uint64(0)


@compiled(entry="PhysArrays i u", inline=True)
def set_pte(phys: PhysArrays, entry_paddr: int, value: np.uint64) -> None:
    """set_pte_at/set_pmd_at/...: one entry below the PGD (its table is stored)."""
    phys.pool[frame_store(phys, entry_paddr >> 12), (entry_paddr & 0xFFF) >> 3] = value


@compiled(entry="PhysArrays i ? i u")
def set_entry(phys: PhysArrays, pgd_pfn: int, pti: bool, entry_paddr: int,
              value: np.uint64) -> None:
    """set_pte/set_pmd/set_pud/set_p4d/set_pgd; with PTI a user PGD entry is also written
    to the user PGD (__pti_set_user_pgtbl: the user copy plain, the kernel copy NX)."""
    index = (entry_paddr & 0xFFF) >> 3
    if pti and entry_paddr >> 12 == pgd_pfn and index < USER_PGD_ENTRIES:
        set_pte(phys, entry_paddr + 4096, value)
        if value & _PRESENT:
            value |= _NX
    set_pte(phys, entry_paddr, value)


@compiled(entry="KernelArrays q1 i", result="i", inline=True)
def pte_alloc_install(ka: KernelArrays, mm_stat: npt.NDArray[np.int64], pmd_paddr: int) -> int:
    """pte_alloc(): the PTE table the PMD entry points at, allocated (__pte_alloc ->
    pmd_install) when the entry is none; NO_PAGE when that allocation fails."""
    pmd = read_entry(ka.phys, pmd_paddr)
    if pmd == 0:
        table = pgtable_alloc(ka, mm_stat, 0, True)
        if table == NO_PAGE:
            return NO_PAGE
        pmd = (np.uint64(table) << np.uint64(12)) | _PTE_TABLE
        set_pte(ka.phys, pmd_paddr, pmd)
    return pfn_of(pmd)


@compiled(entry="KernelArrays q1 i i ? i i ?", result="ii")
def walk(ka: KernelArrays, mm_stat: npt.NDArray[np.int64], pgd_pfn: int, levels: int,
         pti: bool, vaddr: int, target_shift: int, alloc: bool) -> tuple[int, int]:
    """The entry mapping ``vaddr`` at level ``target_shift`` (30 pud, 21 pmd, 12 pte),
    walking from the PGD and, when ``alloc``, allocating missing tables (p4d_alloc,
    pud_alloc, pmd_alloc, __pte_alloc): ``(entry_paddr, shift)``, ``shift`` larger than
    ``target_shift`` where the walk stopped at a none entry (not ``alloc``) or a huge
    leaf; shift WALK_OOM when a table could not be allocated."""
    shift = 39 if levels == 4 else 48
    paddr = (pgd_pfn << 12) + ((vaddr >> shift) & 511) * 8
    while shift != target_shift:
        entry = read_entry(ka.phys, paddr)
        if entry == 0:
            if not alloc:
                return paddr, shift
            # a P4D table has no VmPTE counter (mm_inc_nr_puds etc. start below)
            table = pgtable_alloc(ka, mm_stat, 0, shift != 48)
            if table == NO_PAGE:
                return paddr, WALK_OOM
            entry = (np.uint64(table) << np.uint64(12)) | _PTE_TABLE
            set_entry(ka.phys, pgd_pfn, pti, paddr, entry)
        elif entry & _PSE:
            return paddr, shift
        shift -= 9
        paddr = pfn_of(entry) * 4096 + ((vaddr >> shift) & 511) * 8
    return paddr, shift


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
        self._no_mm_stat = np.zeros(int(MmStat.NR_STATS), dtype=np.int64)  # PGD: no mm yet
        self._arrays: KernelArrays | None = None
        self.pmd_share_count: dict[int, int] = {}     # shared PMD table pfn -> pt_share_count

    @property
    def arrays(self) -> KernelArrays:
        """The kernel's arrays for compiled code (physmem's pool as it is now)."""
        phys = self.physmem.arrays
        if self._arrays is None or self._arrays.phys is not phys:
            self._arrays = KernelArrays(phys, self.buddy.arrays, self.buddy.vmstat)
        return self._arrays

    # -- table pages ---------------------------------------------------------------------
    def alloc_table_page(self, mm: MmStruct | None, kind: str, order: int = 0) -> int:
        """pagetable_alloc() + pagetable_*_ctor(): a zeroed table page, NR_PAGETABLE += 1."""
        self.physmem.reserve_slots(1 << order)
        vmpte = mm is not None and kind in COUNTED_IN_VMPTE
        mm_stat = mm.stat if mm is not None else self._no_mm_stat
        return int(pgtable_alloc(self.arrays, mm_stat, order, vmpte))

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
        self.physmem.reserve_slots(2)
        set_entry(self.physmem.arrays, mm.pgd_pfn, self.pti, entry_paddr, np.uint64(value))

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
        if alloc:
            self.physmem.reserve_slots(2 * self.levels)
        paddr, shift = walk(self.arrays, mm.stat, mm.pgd_pfn, self.levels, self.pti, vaddr,
                            target_shift, alloc)
        if shift == WALK_OOM:
            raise OutOfMemory(vaddr)
        return int(paddr), int(shift)

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
    k.physmem.reserve_slots(1)
    return int(pte_alloc_install(k.pgtables.arrays, mm.stat, pmd_paddr))


@compiled(entry="i u ?", result="u", inline=True)
def anon_pte(pfn: int, page_prot: np.uint64, writable: bool) -> np.uint64:
    """The PTE of a new anonymous page (do_anonymous_page): folio_mk_pte + pte_sw_mkyoung
    + (VM_WRITE) pte_mkwrite(pte_mkdirty())."""
    entry = (np.uint64(pfn) << np.uint64(12)) | page_prot | _ACCESSED
    if writable:
        entry |= _DIRTY | _RW
    return entry


@compiled(entry="i u ?", result="u")
def anon_pmd(pfn: int, page_prot: np.uint64, writable: bool) -> np.uint64:
    """The PMD of a new anonymous THP: folio_mk_pmd + pmd_mkdirty (+ young) +
    maybe_pmd_mkwrite (VM_WRITE)."""
    entry = (np.uint64(pfn) << np.uint64(12)) | page_prot | _PSE | _ACCESSED | _DIRTY
    if writable:
        entry |= _RW
    return entry


def mk_anon_pte(vma: Vma, pfn: int) -> int:
    """anon_pte() for ``vma``'s protection and VM_WRITE."""
    return int(anon_pte(pfn, np.uint64(vma.page_prot), bool(vma.flags & VmFlags.WRITE)))
