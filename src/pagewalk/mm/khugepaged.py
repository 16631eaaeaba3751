"""Collapsing small pages into a THP: MADV_COLLAPSE and khugepaged (mm/khugepaged.c).

hpage_collapse_scan_pmd() checks one 2 MiB range (a PTE table, not a huge PMD, not
empty); collapse_huge_page() allocates a THP, copies the present pages (none and
zero-page PTEs become zero-filled, RSS grows by 4 KiB for each), and installs a PMD,
keeping the old PTE table as the deposit (VmPTE unchanged). MADV_COLLAPSE ignores the
sysfs `enabled` setting and the max_ptes_* limits (TVA_FORCED_COLLAPSE, is_khugepaged
false); khugepaged applies them and needs at least one referenced PTE. As in 6.18,
neither requires a writable PTE, and PROT_NONE PTEs count as present (pte_present). An
anonymous VMA without an anon_vma (never written) is refused. khugepaged is PMD-only
(mTHP collapse came later) and scans anonymous memory only.

Shared anonymous (shmem) memory goes through the page cache: hpage_collapse_scan_file()
and collapse_file() build the THP there folio by folio (an mTHP folio is checked, unmapped,
copied and freed whole; holes become zeroed subpages), unmap the small pages everywhere
and retract the empty PTE tables; MADV_COLLAPSE then maps it by PMD in the calling mm
(collapse_pte_mapped_thp with install_pmd), allocating its page tables if it has none.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

import numpy as np

from pagewalk.errors import Errno, SyscallError
from pagewalk.hw import pgtable_types as pt
from pagewalk.mm import compaction, huge_memory, memory, mlock, rmap, shmem
from pagewalk.mm.page_alloc import NO_PAGE, PageFlag
from pagewalk.mm.pgtable import OutOfMemory
from pagewalk.mm.tlb import flush_tlb_mm_range, flush_tlb_page
from pagewalk.mm.types import MmStat, MmStruct, Vma, VmFlags
from pagewalk.mm.vma import vma_lookup, vmas_in_range
from pagewalk.mm.vmstat import NodeStat, VmEvent

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
    PTE_MAPPED_HUGEPAGE = "pte_mapped_hugepage"
    TRUNCATED = "truncated"
    PAGE_COMPOUND = "page_compound"
    FAIL = "fail"
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
        # Not none: present or PROT_NONE (pte_present() is true for both; pagewalk has no
        # swap entries), so the page counts; only vm_normal_page() can refuse it.
        if pte & pt._PAGE_SPECIAL:
            return Scan.PAGE_NULL
        pfn = pt.pte_pfn(pte)
        if not memmap.flags[pfn] & PageFlag.ANON:
            return Scan.PAGE_ANON
        head = rmap.folio_head(k, pfn)
        if rmap.folio_maybe_mapped_shared(k, head):
            shared += 1
            if is_khugepaged and shared > max_shared:
                k.vm_events[VmEvent.THP_SCAN_EXCEED_SHARE_PTE] += 1
                return Scan.EXCEED_SHARED_PTE
        if pte & pt._PAGE_ACCESSED:
            referenced += 1
    if is_khugepaged and not referenced:
        return Scan.LACK_REFERENCED_PAGE
    return collapse_huge_page(k, mm, vma, haddr, pmd_paddr, table, is_khugepaged)


def alloc_charge_folio(k: Kernel, is_khugepaged: bool) -> int:
    """alloc_charge_folio(): the new THP (GFP_TRANSHUGE may compact directly: always for
    MADV_COLLAPSE, with khugepaged/defrag for khugepaged); thp_collapse_alloc[_failed]."""
    folio = rmap.folio_alloc(k, huge_memory.HPAGE_PMD_ORDER)
    may_compact = not is_khugepaged or k.knobs.get(f"{KHUGEPAGED}/defrag") == "1"
    if folio == NO_PAGE and may_compact and \
            compaction.try_to_compact_pages(k, huge_memory.HPAGE_PMD_ORDER):
        folio = rmap.folio_alloc(k, huge_memory.HPAGE_PMD_ORDER)
    if folio == NO_PAGE:
        k.vm_events[VmEvent.THP_COLLAPSE_ALLOC_FAILED] += 1
        return NO_PAGE
    k.vm_events[VmEvent.THP_COLLAPSE_ALLOC] += 1
    return folio


def collapse_huge_page(k: Kernel, mm: MmStruct, vma: Vma, haddr: int, pmd_paddr: int,
                       table: int, is_khugepaged: bool = False) -> Scan:
    """collapse_huge_page(): a new THP with the range's contents replaces the PTE table."""
    folio = alloc_charge_folio(k, is_khugepaged)
    if folio == NO_PAGE:
        return Scan.ALLOC_HUGE_PAGE_FAIL
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
    flush_tlb_mm_range(k, mm, haddr, haddr + HPAGE_PMD_SIZE)
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
    if vma.is_shmem():
        _collapse_shmem_vma(k, mm, vma, start, end)
        return
    if not vma.is_anonymous() or huge_memory.vma_thp_disabled(mm, vma) or \
            not huge_memory.thp_vma_suitable_order(vma, (vma.start + HPAGE_PMD_SIZE - 1)
                                                   & ~(HPAGE_PMD_SIZE - 1), 9):
        raise SyscallError(Errno.EINVAL, "VMA cannot hold a THP (TVA_FORCED_COLLAPSE)")
    if vma.anon_vma is None:
        # __thp_vma_allowable_orders(): outside a page fault an anonymous VMA needs its anon_vma
        raise SyscallError(Errno.EINVAL, "anonymous VMA without anon_vma (never written)")
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


# --- shmem (mm/khugepaged.c collapse_file and friends) -------------------------------------

def _collapse_shmem_vma(k: Kernel, mm: MmStruct, vma: Vma, start: int, end: int) -> None:
    """madvise_collapse() on shared anonymous memory: thp_vma_allowable_order() with
    TVA_FORCED_COLLAPSE (shmem_allowable_huge_orders with shmem_huge_force: only
    shmem_enabled=deny refuses), then hpage_collapse_scan_file() for each aligned 2 MiB;
    SCAN_PTE_MAPPED_HUGEPAGE goes on to collapse_pte_mapped_thp(install_pmd=true)."""
    suitable = huge_memory.thp_vma_suitable_order(
        vma, (vma.end - HPAGE_PMD_SIZE) & ~(HPAGE_PMD_SIZE - 1), huge_memory.HPAGE_PMD_ORDER)
    if huge_memory.vma_thp_disabled(mm, vma) or not suitable or \
            k.knobs.get(f"{huge_memory.THP}/shmem_enabled") == "deny":
        raise SyscallError(Errno.EINVAL, "VMA cannot hold a THP (TVA_FORCED_COLLAPSE)")
    hstart = (start + HPAGE_PMD_SIZE - 1) & ~(HPAGE_PMD_SIZE - 1)
    hend = end & ~(HPAGE_PMD_SIZE - 1)
    thps = 0
    last_fail = Scan.SUCCEED
    file = shmem.page_cache_of(vma)                   # the caller checked vma_is_shmem()
    for haddr in range(hstart, hend, HPAGE_PMD_SIZE):
        result = hpage_collapse_scan_file(k, mm, file, shmem.file_index(vma, haddr),
                                          is_khugepaged=False)
        if result is Scan.PTE_MAPPED_HUGEPAGE:
            result = collapse_pte_mapped_thp(k, mm, haddr, install_pmd=True)
        if result in (Scan.SUCCEED, Scan.PMD_MAPPED):
            thps += 1
        elif result in CONTINUE_OK:
            last_fail = result
        else:
            raise SyscallError(collapse_errno(result), f"collapse at {haddr:#x}: {result.value}")
    if thps != (hend - hstart) // HPAGE_PMD_SIZE:
        raise SyscallError(collapse_errno(last_fail), f"collapse: {last_fail.value}")


def hpage_collapse_scan_file(k: Kernel, mm: MmStruct, file: shmem.PageCacheFile, start: int,
                             is_khugepaged: bool) -> Scan:
    """hpage_collapse_scan_file(): the page cache of [start, start + 512), folio by folio
    (a large folio is one multi-index entry): a PMD-sized folio at ``start`` is
    SCAN_PTE_MAPPED_HUGEPAGE; a folio with references beyond the cache's (one a page) and
    its mappings is SCAN_PAGE_COUNT; khugepaged wants enough pages (max_ptes_none); then
    collapse_file()."""
    present = 0
    for _, head, nr in _cached_folios(k, file, start):
        if nr == huge_memory.HPAGE_PMD_NR:
            return Scan.PTE_MAPPED_HUGEPAGE        # folio->index == start: it is aligned
        # folio_expected_ref_count() + the scan's own == folio_ref_count()
        if int(k.memmap.refcount[head]) != nr + _folio_mapcount(k, head, nr):
            return Scan.PAGE_COUNT
        present += nr
    max_none = int(k.knobs.get(f"{KHUGEPAGED}/max_ptes_none"))
    if is_khugepaged and present < huge_memory.HPAGE_PMD_NR - max_none:
        k.vm_events[VmEvent.THP_SCAN_EXCEED_NONE_PTE] += 1
        return Scan.EXCEED_NONE_PTE
    return collapse_file(k, file, start, is_khugepaged)


def _cached_folios(k: Kernel, file: shmem.PageCacheFile,
                   start: int) -> list[tuple[int, int, int]]:
    """xas_for_each() over [start, start + 512): (index, head pfn, nr_pages) of each cached
    folio, in index order. shmem folios are naturally aligned: none straddles the range."""
    folios: list[tuple[int, int, int]] = []
    index, end = start, start + huge_memory.HPAGE_PMD_NR
    while index < end:
        pfn = file.pages.get(index, NO_PAGE)
        if pfn == NO_PAGE:
            index += 1
            continue
        head = rmap.folio_head(k, pfn)
        nr = 1 << rmap.folio_order(k, head)
        folios.append((index - (pfn - head), head, nr))
        index += nr - (pfn - head)
    return folios


def _folio_mapcount(k: Kernel, head: int, nr: int) -> int:
    """folio_mapcount(): every PTE mapping of its pages and every PMD mapping of it."""
    return int(k.memmap.mapcount[head: head + nr].sum()) + k.entire_mapcount.get(head, 0)


def collapse_file(k: Kernel, file: shmem.PageCacheFile, start: int, is_khugepaged: bool) -> Scan:
    """collapse_file() for shmem: the THP is allocated first; a range with no page at all
    is SCAN_TRUNCATED. Each cached folio (small or large) is unmapped everywhere
    (try_to_unmap) and must then hold only the cache's references, one a page (else
    SCAN_PAGE_COUNT; folios unmapped so far stay unmapped). The THP takes the contents of
    every page of every folio at its index, holes become zeroed subpages (MADV_COLLAPSE
    ignores max_ptes_none), it replaces them in the cache, and retract_page_tables() frees
    the empty PTE tables of every mapping that may map it by PMD."""
    new = alloc_charge_folio(k, is_khugepaged)
    if new == NO_PAGE:
        return Scan.ALLOC_HUGE_PAGE_FAIL
    nr = huge_memory.HPAGE_PMD_NR
    folios = _cached_folios(k, file, start)
    if not folios:
        rmap.folio_put(k, new)
        return Scan.TRUNCATED
    memmap = k.memmap
    for index, head, folio_nr in folios:
        for i in range(folio_nr):
            _try_to_unmap_file_page(k, file, index + i, head + i)
        if int(memmap.refcount[head]) != folio_nr:    # 2 + folio_nr_pages() with the pin
            rmap.folio_put(k, new)
            return Scan.PAGE_COUNT
    for index, head, folio_nr in folios:
        for i in range(folio_nr):
            k.physmem.copy_frame(new + index - start + i, head + i)
    nr_none = nr - sum(folio_nr for _, _, folio_nr in folios)
    memmap.flags[new: new + nr] |= np.uint16(PageFlag.SHMEM)
    memmap.flags[new] |= PageFlag.DIRTY          # folio_mark_dirty()
    memmap.refcount[new] = nr                    # folio_ref_add(nr - 1): the cache's references
    k.node_stat[NodeStat.NR_FILE_PAGES] += nr_none
    k.node_stat[NodeStat.NR_SHMEM] += nr_none
    k.node_stat[NodeStat.NR_SHMEM_THPS] += nr    # collapse_file: __lruvec_stat_mod_folio
    k.node_stat[NodeStat.NR_INACTIVE_ANON] += nr_none   # the new folio on the LRU, the old off
    for i in range(nr):
        file.pages[start + i] = new + i
    for _, head, folio_nr in folios:
        rmap.folio_put(k, head, folio_nr)        # the cache's references: freed
    retract_page_tables(k, file, start)
    return Scan.SUCCEED if is_khugepaged else Scan.PTE_MAPPED_HUGEPAGE


def _try_to_unmap_file_page(k: Kernel, file: shmem.PageCacheFile, index: int, pfn: int) -> None:
    """try_to_unmap(): clear every PTE that maps this page-cache page, in every mm."""
    pgt = k.pgtables
    for task in k.tasks.values():
        mm = task.mm
        for vma in mm.vmas:
            if not _maps_file(vma, file) or not vma.pgoff <= index < vma.pgoff + (vma.length >> 12):
                continue
            vaddr = vma.start + ((index - vma.pgoff) << 12)
            pmd_paddr, shift = pgt.walk(mm, vaddr, 21, alloc=False)
            pmd = pgt.read(pmd_paddr) if shift == 21 else 0
            if not pmd or pmd & pt._PAGE_PSE:
                continue
            paddr = (pt.pte_pfn(pmd) << 12) + ((vaddr >> 12) & 511) * 8
            pte = pgt.read(paddr)
            if pte & (pt._PAGE_PRESENT | pt._PAGE_PROTNONE) and pt.pte_pfn(pte) == pfn:
                pgt.set_entry(mm, paddr, 0)
                memory.zap_present_page(k, mm, pfn)
                if vma.flags & VmFlags.LOCKED:   # folio_remove_rmap_pte -> munlock_vma_folio
                    mlock.munlock_folio(k, rmap.folio_head(k, pfn))
                flush_tlb_page(k, mm, vaddr)


def retract_page_tables(k: Kernel, file: shmem.PageCacheFile, pgoff: int) -> None:
    """retract_page_tables(): in every VMA of the file over ``pgoff`` without an anon_vma
    whose aligned 2 MiB there lies inside it, free the (now empty) PTE table, so the THP can
    be mapped by PMD."""
    pgt = k.pgtables
    for task in k.tasks.values():
        mm = task.mm
        for vma in mm.vmas:
            if not _maps_file(vma, file) or vma.anon_vma is not None or \
                    not vma.pgoff <= pgoff < vma.pgoff + (vma.length >> 12):
                continue
            addr = vma.start + ((pgoff - vma.pgoff) << 12)
            if addr & (HPAGE_PMD_SIZE - 1) or vma.end < addr + HPAGE_PMD_SIZE:
                continue
            pmd_paddr, shift = pgt.walk(mm, addr, 21, alloc=False)
            pmd = pgt.read(pmd_paddr) if shift == 21 else 0
            if not pmd or pmd & pt._PAGE_PSE or pgt.table_view(pt.pte_pfn(pmd)).any():
                continue
            pgt.set_entry(mm, pmd_paddr, 0)      # pmdp_collapse_flush
            pgt.free_table_page(mm, pt.pte_pfn(pmd), "pte")
            flush_tlb_mm_range(k, mm, addr, addr + HPAGE_PMD_SIZE)


def collapse_pte_mapped_thp(k: Kernel, mm: MmStruct, addr: int, install_pmd: bool) -> Scan:
    """collapse_pte_mapped_thp(): where the page cache holds a THP for this 2 MiB, take
    away the PTEs that map its pages (all must be none or map the right subpage) and their
    table, then (install_pmd, MADV_COLLAPSE) map it by PMD: set_huge_pmd -> do_set_pmd.
    In 6.18 an mm with no PMD table there (a fork child whose tables for a shared mapping
    were never copied) goes to the PMD install too, which allocates the missing tables
    (measured: the child's VmPTE grows by the PUD and PMD tables it needed)."""
    haddr = addr & ~(HPAGE_PMD_SIZE - 1)
    vma = vma_lookup(mm, haddr)
    if vma is None or vma.file is None or haddr + HPAGE_PMD_SIZE > vma.end:
        return Scan.VMA_CHECK
    pgt = k.pgtables
    pmd_paddr, shift = pgt.walk(mm, haddr, 21, alloc=False)
    pmd = pgt.read(pmd_paddr) if shift == 21 else 0
    if pmd & pt._PAGE_PSE:
        return Scan.PMD_MAPPED
    if huge_memory.vma_thp_disabled(mm, vma) or \
            not huge_memory.thp_vma_suitable_order(vma, haddr, huge_memory.HPAGE_PMD_ORDER):
        return Scan.VMA_CHECK
    pfn = vma.file.pages.get(shmem.file_index(vma, haddr), NO_PAGE)
    if pfn == NO_PAGE:
        return Scan.PAGE_NULL
    head = rmap.folio_head(k, pfn)
    if rmap.folio_order(k, head) != huge_memory.HPAGE_PMD_ORDER:
        return Scan.PAGE_COMPOUND
    if pmd:
        table = pt.pte_pfn(pmd)
        words = pgt.table_view(table)
        for i, word in enumerate(words.tolist()):   # step 1: only this THP's pages mapped
            if word and (not word & (pt._PAGE_PRESENT | pt._PAGE_PROTNONE) or
                         word & pt._PAGE_SPECIAL or pt.pte_pfn(word) != head + i):
                return Scan.FAIL
        for i, word in enumerate(words.tolist()):   # step 2: clear them, adjust rmap
            if word:
                memory.zap_present_page(k, mm, head + i)
        pgt.set_entry(mm, pmd_paddr, 0)           # step 4: pmdp_collapse_flush
        pgt.free_table_page(mm, table, "pte")
        flush_tlb_mm_range(k, mm, haddr, haddr + HPAGE_PMD_SIZE)
    if not install_pmd:
        return Scan.SUCCEED
    if shift != 21:
        try:                                      # set_huge_pmd: p4d/pud/pmd_alloc
            pmd_paddr, _ = pgt.walk(mm, haddr, 21, alloc=True)
        except OutOfMemory:
            return Scan.FAIL
    shmem.do_set_pmd(k, mm, vma, pmd_paddr, head, write=False)
    return Scan.SUCCEED


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
        if not vma.is_anonymous() or vma.flags & VmFlags.HUGETLB or vma.anon_vma is None or \
                not huge_memory.thp_vma_allowable_pmd(k, mm, vma):
            continue
        hstart = (vma.start + HPAGE_PMD_SIZE - 1) & ~(HPAGE_PMD_SIZE - 1)
        hend = vma.end & ~(HPAGE_PMD_SIZE - 1)
        for haddr in range(hstart, hend, HPAGE_PMD_SIZE):
            if scan_pmd(k, mm, vma, haddr, is_khugepaged=True) is Scan.SUCCEED:
                k.khugepaged_pages_collapsed += 1


def _maps_file(vma: Vma, file: shmem.PageCacheFile) -> bool:
    """vma->vm_file->f_mapping is the inode's (an open file or the inode itself)."""
    return vma.file is not None and vma.file.kind in ("file", "shmem") and \
        shmem.page_cache_of(vma) is file
