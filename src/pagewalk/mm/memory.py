"""The page-fault path and page zapping (mm/memory.c).

handle_mm_fault -> __handle_mm_fault -> (THP: mm/huge_memory.c) -> handle_pte_fault ->
do_anonymous_page / do_fault (shmem) / do_wp_page; mm_account_fault counts the fault.
zap_page_range_single / unmap_page_range -> zap_pte_range take pages out of page tables.

This is the readable reference path: it decides, and the array work of each decision is
a compiled primitive of mm/fastfault.py (set_anon_ptes, set_zero_pte, wp_reuse_pte,
wp_page_copy_pte, ...) that the compiled touch loop calls too (mm/fastpath.py runs the
common kinds of fault there); tests check both leave identical machines.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from pagewalk.hw import pgtable_types as pt
from pagewalk.mm import (
    fastfault,
    filemap,
    huge_memory,
    hugetlb,
    memcontrol,
    mlock,
    rmap,
    shmem,
    swap_state,
    swapfile,
)
from pagewalk.mm.oom_kill import OomKilled
from pagewalk.mm.page_alloc import NO_PAGE, PageFlag
from pagewalk.mm.pgtable import OutOfMemory, mk_anon_pte, pte_alloc
from pagewalk.mm.rmap import anon_vma_prepare
from pagewalk.mm.tlb import flush_tlb_mm_range, flush_tlb_page
from pagewalk.mm.types import FaultFlags, MmStat, MmStruct, Vma, VmFault, VmFlags
from pagewalk.mm.vmstat import NodeStat, VmEvent

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel
    from pagewalk.kernel.task import Task


# FaultFlags/VmFault live in mm/types.py, anon_vma_prepare in mm/rmap.py, pte_alloc and
# mk_anon_pte in mm/pgtable.py; callers that predate the move still import them from here.
__all__ = ["FaultFlags", "VmFault", "anon_vma_prepare", "mk_anon_pte", "pte_alloc"]


def handle_mm_fault(k: Kernel, task: Task, vma: Vma, vaddr: int, flags: FaultFlags) -> VmFault:
    """handle_mm_fault(): resolve a fault the VMA permits, then mm_account_fault()."""
    # a fault in a locked file VMA may map a window of pages (fault-around): which were
    # mapped before tells which ones this fault's set_pte_range mlocks
    before = mlock.mapped_window(k, task.mm, vma, vaddr) \
        if vma.flags & VmFlags.LOCKED and vma.file is not None else None
    try:
        if vma.is_hugetlb():
            ret = hugetlb.hugetlb_fault(k, task.mm, vma, vaddr, flags)
        else:
            ret = __handle_mm_fault(k, task.mm, vma, vaddr, flags)
    except OomKilled:
        # the memcg OOM killer took this task: the charge failed, VM_FAULT_OOM, still counted
        mm_account_fault(k, task, VmFault.OOM)
        raise
    if vma.flags & VmFlags.LOCKED and not ret & VmFault.ERROR:
        mlock.mlock_fault(k, task.mm, vma, vaddr, before)   # mlock_new/vma_folio
    mm_account_fault(k, task, ret)
    return ret


def mm_account_fault(k: Kernel, task: Task, ret: VmFault) -> None:
    """mm_account_fault(): PGFAULT for every completed fault (errors included), then
    min_flt unless the fault failed."""
    k.vm_events[VmEvent.PGFAULT] += 1
    if ret & VmFault.ERROR:
        return
    if ret & VmFault.MAJOR:
        task.maj_flt += 1
    else:
        task.min_flt += 1


def __handle_mm_fault(k: Kernel, mm: MmStruct, vma: Vma, vaddr: int,
                      flags: FaultFlags) -> VmFault:
    pgt = k.pgtables
    try:
        pmd_paddr, _ = pgt.walk(mm, vaddr, 21, alloc=True)   # p4d/pud/pmd_alloc
    except OutOfMemory:
        return VmFault.OOM
    pmd = pgt.read(pmd_paddr)
    if pmd == 0 and huge_memory.thp_vma_allowable_pmd(k, mm, vma):
        ret = huge_memory.do_huge_pmd_anonymous_page(k, mm, vma, vaddr, pmd_paddr, flags)
        if not ret & VmFault.FALLBACK:
            return ret
    elif pmd & pt._PAGE_PSE:
        if flags & FaultFlags.WRITE and not pmd & pt._PAGE_RW:
            ret = huge_memory.do_huge_pmd_wp_page(k, mm, vma, vaddr, pmd_paddr)
            if not ret & VmFault.FALLBACK:
                return ret
        else:
            pgt.set_entry(mm, pmd_paddr, pmd | pt._PAGE_ACCESSED)  # huge_pmd_set_accessed
            return VmFault.OK
    return handle_pte_fault(k, mm, vma, vaddr, pmd_paddr, flags)


def handle_pte_fault(k: Kernel, mm: MmStruct, vma: Vma, vaddr: int, pmd_paddr: int,
                     flags: FaultFlags) -> VmFault:
    pgt = k.pgtables
    pmd = pgt.read(pmd_paddr)
    pte_paddr = -1
    pte = 0
    if pmd != 0:
        pte_paddr = (pt.pte_pfn(pmd) << 12) + ((vaddr >> 12) & 511) * 8
        pte = pgt.read(pte_paddr)
    if pte == 0:
        if vma.is_anonymous():
            return do_anonymous_page(k, mm, vma, vaddr, pmd_paddr, flags)
        if vma.file is None:
            return special_mapping_fault(k, mm, vma, vaddr, pmd_paddr)
        return shmem.do_fault(k, mm, vma, vaddr, pmd_paddr, flags)
    if swapfile.is_swap_pte(pte):
        return swap_state.do_swap_page(k, mm, vma, vaddr, pte_paddr, pte, flags)
    if not pte & pt._PAGE_PRESENT:
        return VmFault.SIGSEGV  # PROT_NONE entries never reach here (access_error)
    if flags & FaultFlags.WRITE:
        if not pte & pt._PAGE_RW:
            return do_wp_page(k, mm, vma, vaddr, pte_paddr, pte)
        pte |= pt._PAGE_DIRTY
    pgt.set_entry(mm, pte_paddr, pte | pt._PAGE_ACCESSED)  # spurious: ptep_set_access_flags
    return VmFault.OK


def special_mapping_fault(k: Kernel, mm: MmStruct, vma: Vma, vaddr: int,
                          pmd_paddr: int) -> VmFault:
    """do_fault() on a special mapping without pages ([vvar], [vvar_vclock]): no
    ->map_pages, so no fault-around; special_mapping_fault -> vvar_fault inserts the
    kernel's data page (vmf_insert_pfn: a special PTE, no refcount, no RSS: NOPAGE) or
    answers VM_FAULT_SIGBUS."""
    from pagewalk.kernel.exec_image import vvar_fault_pfn
    pfn = vvar_fault_pfn(vma.name, (vaddr - vma.start) >> 12)
    if pfn is None:
        return VmFault.SIGBUS
    table = pte_alloc(k, mm, pmd_paddr)
    if table == NO_PAGE:
        return VmFault.OOM
    entry = pt.mk_pte(pfn, vma.page_prot) | pt._PAGE_SPECIAL   # insert_pfn: pte_mkspecial
    k.pgtables.set_entry(mm, (table << 12) + ((vaddr >> 12) & 511) * 8, entry)
    return VmFault.NOPAGE


def do_anonymous_page(k: Kernel, mm: MmStruct, vma: Vma, vaddr: int, pmd_paddr: int,
                      flags: FaultFlags) -> VmFault:
    """do_anonymous_page(): the zero page on a read, a new zeroed folio on a write."""
    if vma.flags & VmFlags.SHARED:
        return VmFault.SIGBUS
    table = pte_alloc(k, mm, pmd_paddr)
    if table == NO_PAGE:
        return VmFault.OOM
    prot = np.uint64(vma.page_prot)
    if not flags & FaultFlags.WRITE:
        fastfault.set_zero_pte(k.pgtables.arrays, pte_paddr(table, vaddr), k.zero_pfn, prot)
        return VmFault.OK
    anon_vma_prepare(vma)
    memcontrol.charge(k, 1)                 # mem_cgroup_charge (THPs: huge_memory.py)
    pfn, order = huge_memory.alloc_anon_folio(k, mm, vma, vaddr, table)
    nr_pages = 1 << order
    if pfn == NO_PAGE:
        return VmFault.OOM
    if k.memcg is not None and not order:
        memcontrol.lru_add(k, pfn, vma.pgoff + ((vaddr - vma.start) >> 12))
    first = pte_paddr(table, vaddr & ~((nr_pages << 12) - 1))
    fastfault.set_anon_ptes(k.pgtables.arrays, mm.stat, first, pfn, nr_pages, prot,
                            bool(vma.flags & VmFlags.WRITE))
    if order:
        huge_memory.count_mthp_stat(k, order, "anon_fault_alloc")
    return VmFault.OK


def pte_paddr(table: int, vaddr: int) -> int:
    """pte_offset_map(): where the PTE of ``vaddr`` is in PTE table ``table``."""
    return (table << 12) + ((vaddr >> 12) & 511) * 8


def vm_normal_page(k: Kernel, pte: int) -> int:
    """vm_normal_page(): the pfn behind a present PTE, or -1 for special mappings."""
    if pte & pt._PAGE_SPECIAL:
        return -1
    return pt.pte_pfn(pte)


def do_wp_page(k: Kernel, mm: MmStruct, vma: Vma, vaddr: int, pte_paddr: int,
               pte: int) -> VmFault:
    """do_wp_page(): a write to a present read-only PTE in a writable VMA."""
    pfn = vm_normal_page(k, pte)
    if vma.flags & (VmFlags.SHARED | VmFlags.MAYSHARE) and vma.flags & VmFlags.SHARED:
        # wp_page_shared(): shared mappings are written in place; a disk file's
        # ->page_mkwrite (write-notify) dirties the folio first.
        if pfn >= 0 and vma.file is not None and vma.file.kind == "file":
            inode = shmem.page_cache_of(vma)
            if inode.fs == "disk":
                filemap.folio_mark_dirty(k, inode, rmap.folio_head(k, pfn))
        k.pgtables.set_entry(mm, pte_paddr, pte | pt._PAGE_RW | pt._PAGE_DIRTY | pt._PAGE_ACCESSED)
        flush_tlb_page(k, mm, vaddr)
        return VmFault.OK
    if pfn >= 0 and k.memmap.flags[pfn] & PageFlag.ANON and wp_can_reuse_anon_folio(k, pfn):
        return wp_page_reuse(k, mm, vaddr, pte_paddr, pte, pfn)
    return wp_page_copy(k, mm, vma, vaddr, pte_paddr, pte, pfn)


def wp_can_reuse_anon_folio(k: Kernel, pfn: int) -> bool:
    """PageAnonExclusive, or a folio whose only reference is this mapping
    (wp_can_reuse_anon_folio / __wp_can_reuse_large_anon_folio)."""
    return bool(fastfault.wp_can_reuse_anon_folio(k.pgtables.arrays, pfn))


def wp_page_reuse(k: Kernel, mm: MmStruct, vaddr: int, pte_paddr: int, pte: int,
                  pfn: int) -> VmFault:
    """wp_page_reuse(): make the PTE writable+dirty in place; the page becomes exclusive."""
    fastfault.wp_reuse_pte(k.pgtables.arrays, pte_paddr, np.uint64(pte), pfn)
    return VmFault.OK


def wp_page_copy(k: Kernel, mm: MmStruct, vma: Vma, vaddr: int, pte_paddr: int, pte: int,
                 old_pfn: int) -> VmFault:
    """wp_page_copy(): a new private copy (zeroed when the old page is the zero page)."""
    anon_vma_prepare(vma)
    memcontrol.charge(k, 1)
    if k.pgtables.read(pte_paddr) != pte:
        return VmFault.OK      # reclaim under the charge swapped the page out: !pte_same, retry
    new = rmap.folio_alloc(k, 0)
    if new == NO_PAGE:
        return VmFault.OOM
    memcontrol.lru_add(k, new, vma.pgoff + ((vaddr - vma.start) >> 12))
    k.physmem.reserve_slots(1)                  # the copy may need a row
    fastfault.wp_page_copy_pte(k.pgtables.arrays, mm.stat, pte_paddr, new, old_pfn,
                               np.uint64(vma.page_prot), bool(vma.flags & VmFlags.WRITE))
    flush_tlb_page(k, mm, vaddr)
    if old_pfn >= 0:
        rmap.folio_remove_pte_rmap(k, old_pfn)
        if vma.flags & VmFlags.LOCKED:   # __folio_remove_rmap() -> munlock_vma_folio()
            mlock.munlock_folio(k, rmap.folio_head(k, old_pfn))
        rmap.folio_put(k, rmap.folio_head(k, old_pfn))
    return VmFault.OK


# --- zapping ------------------------------------------------------------------------------

def zap_pte_range(k: Kernel, mm: MmStruct, vma: Vma, table: int, start: int, end: int) -> None:
    """zap_pte_range(): clear the PTEs of [start, end) in one PTE table and drop the pages,
    as one batch: RSS by type, rmap counts, references; pages whose last reference goes are
    freed in address order (free_unref_folios). Pages of large folios take the per-page path
    (their rmap bookkeeping and the deferred split queue live in Python); order-0 pages
    go through fastfault.zap_order0_pages, the rule the fault path's COW copy uses."""
    pgt = k.pgtables
    first = (start >> 12) & 511
    last = first + ((end - start) >> 12)
    words = pgt.table_view(table)[first:last]
    if not words.any():
        return
    pgt.fill_table(table, np.zeros(last - first, dtype=np.uint64), first)   # ptep_get_and_clear
    if k.swap is not None:
        swap_state.zap_swap_entries(k, mm, words)
    present = (words & np.uint64(pt._PAGE_PRESENT | pt._PAGE_PROTNONE)) != 0
    normal = present & ((words & np.uint64(pt._PAGE_SPECIAL)) == 0)
    pfns = ((words[normal] & np.uint64(pt.PTE_PFN_MASK)) >> np.uint64(12)).astype(np.int64)
    if pfns.size == 0:
        return
    memmap = k.memmap
    large = (memmap.flags[pfns] & np.uint16(PageFlag.HEAD | PageFlag.TAIL)) != 0
    for pfn in pfns[large].tolist():
        zap_present_page(k, mm, pfn)
    small = pfns[~large]
    if small.size == 0:
        return
    freed = np.zeros(small.size, dtype=np.uint8)
    fastfault.zap_order0_pages(pgt.arrays, mm.stat, np.ascontiguousarray(small), freed)
    gone = small[freed != 0]
    if k.memcg is not None:
        for pfn in gone.tolist():
            memcontrol.uncharge(k, pfn)
    if k.mlock_count:
        for pfn in gone.tolist():
            rmap.folio_clear_mlocked_on_free(k, pfn, 0)
    k.physmem_drop_range_many(gone)
    k.buddy.free_pages_bulk(gone)


def zap_present_page(k: Kernel, mm: MmStruct, pfn: int) -> None:
    """The rmap and RSS side of zapping one present PTE (zap_present_folio_ptes)."""
    flags = int(k.memmap.flags[pfn])
    if flags & PageFlag.ANON:
        mm.stat[MmStat.MM_ANONPAGES] -= 1
    elif flags & PageFlag.SHMEM:
        mm.stat[MmStat.MM_SHMEMPAGES] -= 1
    else:
        mm.stat[MmStat.MM_FILEPAGES] -= 1
    rmap.folio_remove_pte_rmap(k, pfn)
    rmap.folio_put(k, rmap.folio_head(k, pfn))


def unmap_page_range(k: Kernel, mm: MmStruct, vma: Vma, start: int, end: int,
                     reclaim_pt: bool = False, even_cows: bool = True) -> None:
    """unmap_page_range(): zap_pmd_range over [start, end) of one VMA (huge PMDs inside the
    range are zapped whole, huge PMDs straddling an edge are split first). Without
    ``even_cows`` (a punched hole: zap_details) anonymous pages stay."""
    if vma.is_hugetlb():
        hugetlb.unmap_hugepage_range(k, mm, vma, start, end)
        return
    pgt = k.pgtables
    mm.update_hiwater_rss()
    for addr, nxt, pmd_paddr in pgt.pmd_ranges(mm, start, end):
        pmd = pgt.read(pmd_paddr)
        if pmd & pt._PAGE_PSE:
            if huge_memory.huge_pmd_covered(k, mm, vma, pmd_paddr, addr, nxt):
                huge_memory.zap_huge_pmd(k, mm, vma, pmd_paddr, pmd)
                continue
            pmd = pgt.read(pmd_paddr)
        if pmd != 0 and not even_cows:
            if not pmd & pt._PAGE_PSE:
                zap_file_ptes(k, mm, pt.pte_pfn(pmd), addr, nxt)
        elif pmd != 0:
            zap_pte_range(k, mm, vma, pt.pte_pfn(pmd), addr, nxt)
            # PT_RECLAIM: only a PTE table whose whole 2 MiB was zapped may be freed
            # (zap_pte_range: reclaim_pt_is_enabled() needs end - start >= PMD_SIZE).
            if reclaim_pt and nxt - addr == 1 << 21:
                pgt.free_table_if_empty(mm, pmd_paddr)
    flush_tlb_mm_range(k, mm, start, end)


def zap_file_ptes(k: Kernel, mm: MmStruct, table: int, start: int, end: int) -> None:
    """zap_pte_range() with zap_details.even_cows false (should_zap_folio): the page-cache
    pages of [start, end) in one PTE table leave it, private anonymous copies stay."""
    pgt = k.pgtables
    for va in range(start, end, 4096):
        paddr = pte_paddr(table, va)
        pte = pgt.read(paddr)
        if not pte & (pt._PAGE_PRESENT | pt._PAGE_PROTNONE) or pte & pt._PAGE_SPECIAL:
            continue
        pfn = pt.pte_pfn(pte)
        if k.memmap.flags[pfn] & PageFlag.ANON:
            continue
        pgt.set_entry(mm, paddr, 0)
        zap_present_page(k, mm, pfn)


def count_present_ptes(k: Kernel, table: int) -> int:
    return sum(1 for word in k.pgtables.table_words(table) if word & pt._PAGE_PRESENT)


def node_anon_pages(k: Kernel) -> int:
    return int(k.node_stat[NodeStat.NR_ANON_MAPPED])
