"""Transparent huge pages: eligibility, PMD faults, the huge zero page, split, zap.

Follows mm/huge_memory.c (__thp_vma_allowable_orders, do_huge_pmd_anonymous_page,
__do_huge_pmd_anonymous_page, set_huge_zero_folio, do_huge_pmd_wp_page,
do_huge_zero_wp_pmd (6.13+), __split_huge_pmd_locked, zap_huge_pmd, change_huge_pmd,
vma_thp_gfp_mask) and include/linux/huge_mm.h, as Linux 6.18 behaves (the spec's
linux-mm-notes section 4). A PMD-mapped THP always has a deposited PTE table
(pgtable_trans_huge_deposit + mm_inc_nr_ptes), kept in ``Kernel.deposit`` keyed by
the physical address of its PMD entry, and used again when the PMD is split.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from pagewalk.hw import pgtable_types as pt
from pagewalk.mm import rmap
from pagewalk.mm.page_alloc import NO_PAGE, PageFlag
from pagewalk.mm.types import MmStat, MmStruct, Vma, VmFlags
from pagewalk.mm.vmstat import VmEvent

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel
    from pagewalk.mm.memory import FaultFlags, VmFault

THP = "/sys/kernel/mm/transparent_hugepage"
HPAGE_PMD_ORDER = 9
HPAGE_PMD_NR = 512
HPAGE_PMD_SIZE = 1 << 21
MTHP_ORDERS = (2, 3, 4, 5, 6, 7, 8, 9)  # THP_ORDERS_ALL_ANON: 16 KiB .. 2 MiB


def size_knob(order: int) -> str:
    return f"{THP}/hugepages-{4 << order}kB/enabled"


def order_enabled(k: Kernel, vma: Vma, order: int) -> bool:
    """The sysfs mask of __thp_vma_allowable_orders for one order: always, or madvise with
    VM_HUGEPAGE, or inherit from the global `enabled` setting."""
    setting = k.knobs.get(size_knob(order))
    madvised = bool(vma.flags & VmFlags.HUGEPAGE)
    if setting == "always":
        return True
    if setting == "madvise":
        return madvised
    if setting == "inherit":
        top = k.knobs.get(f"{THP}/enabled")
        return top == "always" or (top == "madvise" and madvised)
    return False


def vma_thp_disabled(mm: MmStruct, vma: Vma) -> bool:
    """vma_thp_disabled(): MADV_NOHUGEPAGE or prctl(PR_SET_THP_DISABLE)."""
    return bool(vma.flags & VmFlags.NOHUGEPAGE) or mm.thp_disable


def thp_vma_allowable_order(k: Kernel, mm: MmStruct, vma: Vma, order: int) -> bool:
    """thp_vma_allowable_orders(vma, TVA_PAGEFAULT, BIT(order)) for anonymous VMAs."""
    if not vma.is_anonymous() or vma.is_hugetlb() or vma_thp_disabled(mm, vma):
        return False
    if vma.flags & VmFlags.GROWSDOWN and vma.name == "[stack]":
        return False  # vma_is_temporary_stack() only matters during exec; the stack is fine
    return order_enabled(k, vma, order)


def thp_vma_allowable_pmd(k: Kernel, mm: MmStruct, vma: Vma) -> bool:
    return thp_vma_allowable_order(k, mm, vma, HPAGE_PMD_ORDER)


def thp_vma_suitable_order(vma: Vma, vaddr: int, order: int) -> bool:
    """The naturally aligned block of 2**order pages around vaddr lies inside the VMA."""
    size = 4096 << order
    haddr = vaddr & ~(size - 1)
    return haddr >= vma.start and haddr + size <= vma.end


def count_mthp_stat(k: Kernel, order: int, item: str) -> None:
    key = (order, item)
    k.mthp_stats[key] = k.mthp_stats.get(key, 0) + 1


def khugepaged_enter_vma(k: Kernel, mm: MmStruct, vma: Vma) -> None:
    """khugepaged_enter_vma(): register the mm when some THP order is allowed for the VMA."""
    if mm.khugepaged_registered or not vma.is_anonymous():
        return
    if thp_vma_allowable_order(k, mm, vma, HPAGE_PMD_ORDER) and \
            vma.end - vma.start >= HPAGE_PMD_SIZE:
        mm.khugepaged_registered = True


# --- allocation ---------------------------------------------------------------------------

def gfp_allows_direct_compaction(k: Kernel, vma: Vma) -> bool:
    """vma_thp_gfp_mask(): does the defrag setting let this fault reclaim/compact directly?"""
    defrag = k.knobs.get(f"{THP}/defrag")
    madvised = bool(vma.flags & VmFlags.HUGEPAGE)
    if defrag == "always":
        return True
    if defrag in ("madvise", "defer+madvise"):
        return madvised
    return False


def alloc_thp(k: Kernel, vma: Vma, order: int = HPAGE_PMD_ORDER) -> int:
    """vma_alloc_folio(gfp, order): from the free lists, else direct compaction when the
    gfp mask allows it (mm/compaction.c), else NO_PAGE."""
    pfn = rmap.folio_alloc(k, order)
    if pfn != NO_PAGE or not gfp_allows_direct_compaction(k, vma):
        return pfn
    from pagewalk.mm import compaction
    if compaction.try_to_compact_pages(k, order):
        return rmap.folio_alloc(k, order)
    return NO_PAGE


def alloc_anon_folio(k: Kernel, mm: MmStruct, vma: Vma, vaddr: int, table: int) -> tuple[int, int]:
    """alloc_anon_folio(): try the enabled mTHP orders below PMD_ORDER, highest first, whose
    aligned block fits the VMA and has only none PTEs (each failed allocation counts
    anon_fault_fallback), then order 0. Returns (pfn or NO_PAGE, order)."""
    if vma.is_anonymous() and not vma_thp_disabled(mm, vma):
        for order in sorted(MTHP_ORDERS[:-1], reverse=True):
            if not order_enabled(k, vma, order) or not thp_vma_suitable_order(vma, vaddr, order):
                continue
            nr = 1 << order
            first = (vaddr >> 12) & 511 & ~(nr - 1)
            if k.physmem.frame_words(table)[first: first + nr].any():
                continue  # pte_range_none() fails
            pfn = rmap.folio_alloc(k, order)
            if pfn != NO_PAGE:
                return pfn, order
            count_mthp_stat(k, order, "anon_fault_fallback")
    return rmap.folio_alloc(k, 0), 0


# --- PMD faults ---------------------------------------------------------------------------

def do_huge_pmd_anonymous_page(k: Kernel, mm: MmStruct, vma: Vma, vaddr: int, pmd_paddr: int,
                               flags: FaultFlags) -> VmFault:
    from pagewalk.mm.memory import FaultFlags, VmFault, anon_vma_prepare
    haddr = vaddr & ~(HPAGE_PMD_SIZE - 1)
    if not thp_vma_suitable_order(vma, haddr, HPAGE_PMD_ORDER):
        return VmFault.FALLBACK
    anon_vma_prepare(vma)
    khugepaged_enter_vma(k, mm, vma)
    if not flags & FaultFlags.WRITE and k.knobs.get(f"{THP}/use_zero_page") == "1":
        table = k.pgtables.alloc_table_page(mm, "pte")   # pte_alloc_one
        if table == NO_PAGE:
            return VmFault.OOM
        zero = k.get_huge_zero_folio(mm)
        if zero == NO_PAGE:
            k.pgtables.free_table_page(mm, table, "pte")
            k.vm_events[VmEvent.THP_FAULT_FALLBACK] += 1
            return VmFault.FALLBACK
        set_huge_zero_folio(k, mm, vma, pmd_paddr, table, zero)
        return VmFault.OK
    folio = alloc_thp(k, vma)
    if folio == NO_PAGE:
        k.vm_events[VmEvent.THP_FAULT_FALLBACK] += 1
        count_mthp_stat(k, HPAGE_PMD_ORDER, "anon_fault_fallback")
        return VmFault.FALLBACK
    table = k.pgtables.alloc_table_page(mm, "pte")
    if table == NO_PAGE:
        rmap.folio_put(k, folio)
        return VmFault.OOM
    map_anon_folio_pmd(k, mm, vma, pmd_paddr, folio)
    k.deposit[pmd_paddr] = table
    k.vm_events[VmEvent.THP_FAULT_ALLOC] += 1
    count_mthp_stat(k, HPAGE_PMD_ORDER, "anon_fault_alloc")
    return VmFault.OK


def mk_huge_pmd(vma: Vma, pfn: int) -> int:
    """folio_mk_pmd + pmd_mkdirty + maybe_pmd_mkwrite."""
    entry = pt.mk_huge(pfn, vma.page_prot) | pt._PAGE_ACCESSED | pt._PAGE_DIRTY
    if vma.flags & VmFlags.WRITE:
        entry |= pt._PAGE_RW
    return entry


def map_anon_folio_pmd(k: Kernel, mm: MmStruct, vma: Vma, pmd_paddr: int, folio: int) -> None:
    """map_anon_folio_pmd(): rmap, RSS and the PMD entry of a fresh exclusive THP."""
    rmap.folio_add_new_anon_rmap(k, folio, HPAGE_PMD_NR, pmd_mapped=True)
    k.memmap.refcount[folio] = 1
    k.pgtables.set_entry(mm, pmd_paddr, mk_huge_pmd(vma, folio))
    mm.stat[MmStat.MM_ANONPAGES] += HPAGE_PMD_NR


def set_huge_zero_folio(k: Kernel, mm: MmStruct, vma: Vma, pmd_paddr: int, table: int,
                        zero: int) -> None:
    entry = pt.mk_huge(zero, vma.page_prot) | pt._PAGE_ACCESSED | pt._PAGE_SPECIAL
    k.deposit[pmd_paddr] = table
    k.pgtables.set_entry(mm, pmd_paddr, entry)


def is_huge_zero_pmd(k: Kernel, pmd: int) -> bool:
    return k.huge_zero_pfn != NO_PAGE and pt.huge_pfn(pmd, 21) == k.huge_zero_pfn


def do_huge_pmd_wp_page(k: Kernel, mm: MmStruct, vma: Vma, vaddr: int,
                        pmd_paddr: int) -> VmFault:
    """do_huge_pmd_wp_page(): a write to a read-only huge PMD."""
    from pagewalk.mm.memory import VmFault, anon_vma_prepare
    pmd = k.pgtables.read(pmd_paddr)
    if is_huge_zero_pmd(k, pmd):
        anon_vma_prepare(vma)
        folio = alloc_thp(k, vma)   # do_huge_zero_wp_pmd (6.13+)
        if folio != NO_PAGE:
            map_anon_folio_pmd(k, mm, vma, pmd_paddr, folio)
            k.flush_tlb_range(mm, vaddr & ~(HPAGE_PMD_SIZE - 1),
                              (vaddr & ~(HPAGE_PMD_SIZE - 1)) + HPAGE_PMD_SIZE)
            k.vm_events[VmEvent.THP_FAULT_ALLOC] += 1
            count_mthp_stat(k, HPAGE_PMD_ORDER, "anon_fault_alloc")
            return VmFault.OK
        k.vm_events[VmEvent.THP_FAULT_FALLBACK] += 1
        split_huge_pmd(k, mm, vma, pmd_paddr, vaddr)
        return VmFault.FALLBACK
    head = pt.huge_pfn(pmd, 21)
    flags = k.memmap.flags
    if flags[head] & PageFlag.ANON_EXCLUSIVE or k.memmap.refcount[head] == 1:
        flags[head: head + HPAGE_PMD_NR] |= np.uint16(PageFlag.ANON_EXCLUSIVE)
        k.pgtables.set_entry(mm, pmd_paddr, pmd | pt._PAGE_RW | pt._PAGE_DIRTY | pt._PAGE_ACCESSED)
        return VmFault.OK
    split_huge_pmd(k, mm, vma, pmd_paddr, vaddr)
    return VmFault.FALLBACK


# --- split and zap ------------------------------------------------------------------------

def split_huge_pmd(k: Kernel, mm: MmStruct, vma: Vma, pmd_paddr: int, vaddr: int) -> None:
    """__split_huge_pmd_locked(): replace the huge PMD by the deposited PTE table filled
    with 512 PTEs of the same pages (the folio itself is not split). thp_split_pmd++."""
    pgt = k.pgtables
    pmd = pgt.read(pmd_paddr)
    if not pmd & pt._PAGE_PSE:
        return
    haddr = vaddr & ~(HPAGE_PMD_SIZE - 1)
    table = k.deposit.pop(pmd_paddr)
    k.vm_events[VmEvent.THP_SPLIT_PMD] += 1
    head = pt.huge_pfn(pmd, 21)
    # The PTEs take the VMA's protection (PROT_NONE included), the PMD's write, young,
    # dirty and soft-dirty bits: entry = mk_pte(page, vma->vm_page_prot), then
    # pte_mkwrite / pte_wrprotect, pte_mkold, pte_mkdirty, pte_mksoft_dirty.
    base = vma.page_prot & ~pt._PAGE_ACCESSED
    base |= pmd & (pt._PAGE_RW | pt._PAGE_ACCESSED | pt._PAGE_DIRTY | pt._PAGE_SOFT_DIRTY)
    if is_huge_zero_pmd(k, pmd):
        # __split_huge_zero_page_pmd(): 512 zero-page PTEs.
        zero = pt.mk_pte(k.zero_pfn, vma.page_prot) | pt._PAGE_SPECIAL | pt._PAGE_ACCESSED
        pgt.fill_table(table, np.full(HPAGE_PMD_NR, zero, dtype=np.uint64))
        k.put_huge_zero_folio(mm)
    else:
        pfns = np.arange(head, head + HPAGE_PMD_NR, dtype=np.uint64)
        pgt.fill_table(table, (pfns << np.uint64(12)) | np.uint64(base))
        k.memmap.mapcount[head: head + HPAGE_PMD_NR] += 1
        k.memmap.refcount[head] += HPAGE_PMD_NR - 1
        rmap.folio_remove_pmd_rmap(k, head)
    pgt.set_entry(mm, pmd_paddr, pt.mk_table(table))
    k.flush_tlb_range(mm, haddr, haddr + HPAGE_PMD_SIZE)


def huge_pmd_covered(k: Kernel, mm: MmStruct, vma: Vma, pmd_paddr: int, addr: int,
                     nxt: int) -> bool:
    """For an operation on [addr, nxt) over a huge PMD: True when it covers the whole 2 MiB
    (the caller acts on the PMD itself); otherwise the PMD is split first (__split_huge_pmd
    in zap_pmd_range, change_pmd_range, madvise_free_huge_pmd) and False is returned."""
    if addr & (HPAGE_PMD_SIZE - 1) == 0 and nxt - addr == HPAGE_PMD_SIZE:
        return True
    split_huge_pmd(k, mm, vma, pmd_paddr, addr)
    return False


def zap_huge_pmd(k: Kernel, mm: MmStruct, vma: Vma, pmd_paddr: int, pmd: int) -> None:
    """zap_huge_pmd(): clear a PMD mapping whole, free its deposited table."""
    k.pgtables.set_entry(mm, pmd_paddr, 0)
    table = k.deposit.pop(pmd_paddr)
    k.pgtables.free_table_page(mm, table, "pte")   # zap_deposited_table
    if is_huge_zero_pmd(k, pmd):
        k.put_huge_zero_folio(mm)
        return
    head = pt.huge_pfn(pmd, 21)
    mm.stat[MmStat.MM_ANONPAGES] -= HPAGE_PMD_NR
    rmap.folio_remove_pmd_rmap(k, head)
    rmap.folio_put(k, head)


def change_huge_pmd(k: Kernel, mm: MmStruct, vma: Vma, pmd_paddr: int, newprot: int) -> None:
    """change_huge_pmd(): new protection for a whole huge PMD (no split)."""
    pmd = k.pgtables.read(pmd_paddr)
    entry = pt.pte_modify(pmd, newprot) | pt._PAGE_PSE
    if vma.flags & VmFlags.WRITE and not is_huge_zero_pmd(k, pmd):
        head = pt.huge_pfn(pmd, 21)
        if k.memmap.flags[head] & PageFlag.ANON_EXCLUSIVE and pmd & pt._PAGE_DIRTY:
            entry |= pt._PAGE_RW
    k.pgtables.set_entry(mm, pmd_paddr, entry)
