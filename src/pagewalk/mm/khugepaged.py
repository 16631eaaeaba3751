"""Collapsing small pages into a THP: MADV_COLLAPSE and khugepaged (mm/khugepaged.c).

hpage_collapse_scan_pmd() checks one 2 MiB range (a PTE table, not a huge PMD, not
empty); collapse_huge_page() allocates a THP, copies the present pages (none and
zero-page PTEs become zero-filled, RSS grows by 4 KiB for each), and installs a PMD,
keeping the old PTE table as the deposit (VmPTE unchanged). MADV_COLLAPSE ignores the
sysfs `enabled` setting and the max_ptes_* limits (TVA_FORCED_COLLAPSE, is_khugepaged
false); khugepaged applies them and needs at least one referenced PTE. As in 6.18,
neither requires a writable PTE. khugepaged is PMD-only (mTHP collapse came later).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from pagewalk.errors import Errno, SyscallError
from pagewalk.hw import pgtable_types as pt
from pagewalk.mm import huge_memory, rmap
from pagewalk.mm.page_alloc import NO_PAGE, PageFlag
from pagewalk.mm.types import MmStat, MmStruct, Vma, VmFlags
from pagewalk.mm.vma import vmas_in_range
from pagewalk.mm.vmstat import VmEvent

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel
    from pagewalk.kernel.task import Task

KHUGEPAGED = "/sys/kernel/mm/transparent_hugepage/khugepaged"
HPAGE_PMD_SIZE = 1 << 21


class Scan(enum.Enum):
    """enum scan_result (the ones pagewalk can produce)."""

    SUCCEED = "succeed"
    PMD_NULL = "pmd_null"
    PMD_NONE = "pmd_none"
    PMD_MAPPED = "pmd_mapped"
    EXCEED_NONE_PTE = "exceed_none_pte"
    EXCEED_SHARED_PTE = "exceed_shared_pte"
    PAGE_NULL = "page_null"
    PAGE_ANON = "page_anon"
    PAGE_COUNT = "page_count"
    LACK_REFERENCED_PAGE = "lack_referenced_page"
    ALLOC_HUGE_PAGE_FAIL = "alloc_huge_page_fail"
    VMA_CHECK = "vma_check"


# madvise_collapse(): results after which it goes on with the next 2 MiB.
CONTINUE_OK = {Scan.PMD_NULL, Scan.PAGE_NULL, Scan.PAGE_COUNT, Scan.LACK_REFERENCED_PAGE}


def collapse_errno(result: Scan) -> Errno:
    """madvise_collapse_errno()."""
    if result is Scan.ALLOC_HUGE_PAGE_FAIL:
        return Errno.ENOMEM
    if result is Scan.EXCEED_NONE_PTE:
        return Errno.EBUSY
    if result is Scan.PAGE_COUNT:
        return Errno.EAGAIN
    return Errno.EINVAL


def scan_pmd(k: Kernel, mm: MmStruct, vma: Vma, haddr: int, is_khugepaged: bool) -> Scan:
    """hpage_collapse_scan_pmd(): may [haddr, haddr + 2 MiB) be collapsed? Collapses it."""
    pgt = k.pgtables
    pmd_paddr, shift = pgt.walk(mm, haddr, 21, alloc=False)
    if shift != 21:
        return Scan.PMD_NULL
    pmd = pgt.read(pmd_paddr)
    if pmd == 0:
        return Scan.PMD_NONE
    if pmd & pt._PAGE_PSE:
        return Scan.PMD_MAPPED
    table = pt.pte_pfn(pmd)
    words = k.physmem.frame_words(table)
    max_none = int(k.knobs.get(f"{KHUGEPAGED}/max_ptes_none"))
    max_shared = int(k.knobs.get(f"{KHUGEPAGED}/max_ptes_shared"))
    none_or_zero = shared = referenced = 0
    memmap = k.memmap
    for word in words:
        pte = int(word)
        if pte == 0 or (pte & pt._PAGE_SPECIAL and pt.pte_pfn(pte) == k.zero_pfn):
            none_or_zero += 1
            if not is_khugepaged or none_or_zero <= max_none:
                continue
            k.vm_events[VmEvent.THP_SCAN_EXCEED_NONE_PTE] += 1
            return Scan.EXCEED_NONE_PTE
        if not pte & pt._PAGE_PRESENT or pte & pt._PAGE_SPECIAL:
            return Scan.PAGE_NULL
        pfn = pt.pte_pfn(pte)
        if not memmap.flags[pfn] & PageFlag.ANON:
            return Scan.PAGE_ANON
        head = rmap.folio_head(k, pfn)
        if _maybe_mapped_shared(k, head):
            shared += 1
            if is_khugepaged and shared > max_shared:
                k.vm_events[VmEvent.THP_SCAN_EXCEED_SHARE_PTE] += 1
                return Scan.EXCEED_SHARED_PTE
        if pte & pt._PAGE_ACCESSED:
            referenced += 1
    if is_khugepaged and not referenced:
        return Scan.LACK_REFERENCED_PAGE
    return collapse_huge_page(k, mm, vma, haddr, pmd_paddr, table, is_khugepaged)


def _maybe_mapped_shared(k: Kernel, head: int) -> bool:
    """folio_maybe_mapped_shared(): some page of the folio is mapped more than once."""
    order = rmap.folio_order(k, head)
    if k.entire_mapcount.get(head, 0) > 1:
        return True
    return bool((k.memmap.mapcount[head: head + (1 << order)] > 1).any())


def collapse_huge_page(k: Kernel, mm: MmStruct, vma: Vma, haddr: int, pmd_paddr: int,
                       table: int, is_khugepaged: bool = False) -> Scan:
    """collapse_huge_page(): a new THP with the range's contents replaces the PTE table."""
    folio = rmap.folio_alloc(k, huge_memory.HPAGE_PMD_ORDER)
    if folio == NO_PAGE and (not is_khugepaged or k.knobs.get(f"{KHUGEPAGED}/defrag") == "1"):
        # alloc_charge_folio(): GFP_TRANSHUGE may compact directly
        from pagewalk.mm import compaction
        if compaction.try_to_compact_pages(k, huge_memory.HPAGE_PMD_ORDER):
            folio = rmap.folio_alloc(k, huge_memory.HPAGE_PMD_ORDER)
    if folio == NO_PAGE:
        k.vm_events[VmEvent.THP_COLLAPSE_ALLOC_FAILED] += 1
        return Scan.ALLOC_HUGE_PAGE_FAIL
    k.vm_events[VmEvent.THP_COLLAPSE_ALLOC] += 1
    pgt = k.pgtables
    for i in range(512):
        paddr = (table << 12) + i * 8
        pte = pgt.read(paddr)
        if pte == 0 or pte & pt._PAGE_SPECIAL:
            mm.stat[MmStat.MM_ANONPAGES] += 1    # a none or zero-page PTE becomes a real page
        else:
            old = pt.pte_pfn(pte)
            k.physmem.copy_frame(folio + i, old)
            rmap.folio_remove_pte_rmap(k, old)
            rmap.folio_put(k, rmap.folio_head(k, old))
        k.physmem.write_u64(paddr, 0)
    rmap.folio_add_new_anon_rmap(k, folio, huge_memory.HPAGE_PMD_NR, pmd_mapped=True)
    k.memmap.refcount[folio] = 1
    k.deposit[pmd_paddr] = table               # the old table is the deposit
    pgt.set_entry(mm, pmd_paddr, huge_memory.mk_huge_pmd(vma, folio))
    k.flush_tlb_range(mm, haddr, haddr + HPAGE_PMD_SIZE)
    return Scan.SUCCEED


def madvise_collapse(k: Kernel, task: Task, start: int, end: int) -> None:
    """MADV_COLLAPSE over [start, end): every VMA, every whole aligned 2 MiB inside."""
    mm = task.mm
    vmas = vmas_in_range(mm, start, end)
    covered = sum(min(v.end, end) - max(v.start, start) for v in vmas)
    for vma in vmas:
        _collapse_vma(k, mm, vma, max(start, vma.start), min(end, vma.end))
    if covered != end - start:
        raise SyscallError(Errno.ENOMEM, "range contains unmapped memory")


def _collapse_vma(k: Kernel, mm: MmStruct, vma: Vma, start: int, end: int) -> None:
    if not vma.is_anonymous() or huge_memory.vma_thp_disabled(mm, vma) or \
            not huge_memory.thp_vma_suitable_order(vma, (vma.start + HPAGE_PMD_SIZE - 1)
                                                   & ~(HPAGE_PMD_SIZE - 1), 9):
        raise SyscallError(Errno.EINVAL, "VMA cannot hold a THP (TVA_FORCED_COLLAPSE)")
    hstart = (start + HPAGE_PMD_SIZE - 1) & ~(HPAGE_PMD_SIZE - 1)
    hend = end & ~(HPAGE_PMD_SIZE - 1)
    thps = 0
    last_fail = Scan.SUCCEED
    for haddr in range(hstart, hend, HPAGE_PMD_SIZE):
        result = scan_pmd(k, mm, vma, haddr, is_khugepaged=False)
        if result in (Scan.SUCCEED, Scan.PMD_MAPPED):
            thps += 1
        elif result in CONTINUE_OK:
            last_fail = result
        else:
            raise SyscallError(collapse_errno(result), f"collapse at {haddr:#x}: {result.value}")
    if thps != (hend - hstart) // HPAGE_PMD_SIZE:
        raise SyscallError(collapse_errno(last_fail), f"collapse: {last_fail.value}")


def run_scans(k: Kernel, scans: int) -> None:
    """The `khugepaged` step: ``scans`` full passes over every registered mm
    (khugepaged_do_scan with pages_to_scan large enough)."""
    for _ in range(scans):
        for task in list(k.tasks.values()):
            mm = task.mm
            if mm.khugepaged_registered:
                khugepaged_scan_mm(k, mm)
        k.khugepaged_full_scans += 1


def khugepaged_scan_mm(k: Kernel, mm: MmStruct) -> None:
    """khugepaged_scan_mm_slot(): every eligible VMA, every aligned 2 MiB inside it."""
    for vma in list(mm.vmas):
        if not vma.is_anonymous() or vma.flags & VmFlags.HUGETLB or \
                not huge_memory.thp_vma_allowable_pmd(k, mm, vma):
            continue
        hstart = (vma.start + HPAGE_PMD_SIZE - 1) & ~(HPAGE_PMD_SIZE - 1)
        hend = vma.end & ~(HPAGE_PMD_SIZE - 1)
        for haddr in range(hstart, hend, HPAGE_PMD_SIZE):
            if scan_pmd(k, mm, vma, haddr, is_khugepaged=True) is Scan.SUCCEED:
                k.khugepaged_pages_collapsed += 1
