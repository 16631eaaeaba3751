"""madvise(2) (mm/madvise.c): HUGEPAGE, NOHUGEPAGE, DONTNEED, FREE, WILLNEED, COLLAPSE.

madvise_walk_vmas visits every VMA in the range; a hole makes the call return ENOMEM
but the VMAs on both sides are still handled (as Linux does). MADV_DONTNEED zaps with
PT_RECLAIM (6.18): a PTE table whose whole 2 MiB was zapped and is empty is freed.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from pagewalk.errors import Errno, SyscallError
from pagewalk.hw import pgtable_types as pt
from pagewalk.mm import huge_memory, khugepaged, memory, rmap
from pagewalk.mm.hugetlb import vma_kernel_pagesize
from pagewalk.mm.page_alloc import PageFlag
from pagewalk.mm.tlb import flush_tlb_mm_range
from pagewalk.mm.types import MmStruct, Vma, VmFlags
from pagewalk.mm.vma import VmaIterator, vma_modify_flags
from pagewalk.mm.vmstat import VmEvent

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel
    from pagewalk.kernel.task import Task

ADVICE = ("hugepage", "nohugepage", "dontneed", "free", "willneed", "collapse")


def do_madvise(k: Kernel, task: Task, start: int, length: int, advice: str) -> None:
    mm = task.mm
    if advice not in ADVICE:
        raise SyscallError(Errno.EINVAL, f"unknown advice {advice!r}")
    if start & 4095:
        raise SyscallError(Errno.EINVAL, "start not page aligned")
    end = start + ((length + 4095) & ~4095)
    if length and end == start:
        raise SyscallError(Errno.EINVAL, "length overflows")
    if end < start:
        raise SyscallError(Errno.EINVAL, "range wraps")
    if end == start:
        return
    if advice == "collapse":
        khugepaged.madvise_collapse(k, task, start, end)
        return
    # madvise_walk_vmas(): a gap makes the call ENOMEM but the VMAs after it are still
    # advised; an error stops the walk there; after each VMA the walk resumes at the end
    # of the VMA the advice left (merged or split), found afresh.
    unmapped_error = False
    vmi = VmaIterator(mm, start, end)
    for vma in vmi:
        if start < vma.start:
            unmapped_error = True
            start = vma.start
        hi = min(vma.end, end)
        _check_vma(vma, advice, start)
        _apply(k, task, vma, start, hi, advice)
        start = vmi.vma_iter_end()
    if start < end or unmapped_error:
        raise SyscallError(Errno.ENOMEM, "range contains unmapped memory")


def _check_vma(vma: Vma, advice: str, start: int) -> None:
    """The per-VMA checks of madvise_dontneed_free_valid_vma() and madvise_free_single_vma();
    the VMAs before this one in the range have been advised already."""
    if advice not in ("dontneed", "free"):
        return
    if vma.flags & (VmFlags.LOCKED | VmFlags.PFNMAP):
        raise SyscallError(Errno.EINVAL, "locked or PFN-mapped VMA")
    if vma.is_hugetlb():
        if advice == "free":
            raise SyscallError(Errno.EINVAL, "MADV_FREE on hugetlb")
        if start & (vma_kernel_pagesize(vma) - 1):
            raise SyscallError(Errno.EINVAL, "MADV_DONTNEED start not huge-page aligned")
    if advice == "free" and not vma.is_anonymous():
        raise SyscallError(Errno.EINVAL, "MADV_FREE needs private anonymous memory")


def _apply(k: Kernel, task: Task, vma: Vma, start: int, end: int, advice: str) -> None:
    mm = task.mm
    if advice in ("hugepage", "nohugepage"):
        hugepage_madvise(k, mm, vma, start, end, advice == "hugepage")
    elif advice == "dontneed":
        if vma.is_hugetlb():
            mask = vma_kernel_pagesize(vma) - 1
            end &= ~mask       # the end rounds down to whole huge pages (start is aligned)
            if start >= end:
                return
        memory.unmap_page_range(k, mm, vma, start, end, reclaim_pt=True)
        if vma.is_hugetlb():
            return
    elif advice == "free":
        madvise_free_single_vma(k, mm, vma, start, end)
    # willneed: only swap and page-cache readahead, nothing to do for anonymous memory


def hugepage_madvise(k: Kernel, mm: MmStruct, vma: Vma, start: int, end: int,
                     enable: bool) -> None:
    """hugepage_madvise() + madvise_update_vma(): set/clear VM_HUGEPAGE on [start, end) by
    vma_modify_flags (merge, or split: EINVAL where the VMA refuses, as hugetlb does off a
    huge page boundary). Any VMA takes the flag, hugetlb and special ones too."""
    new = vma.flags
    if enable:
        new = (new & ~VmFlags.NOHUGEPAGE) | VmFlags.HUGEPAGE
        # khugepaged_enter_vma(vma, *vm_flags): the whole VMA as it is, with the new flags
        huge_memory.khugepaged_enter_vma(k, mm, replace(vma, flags=new))
    else:
        new = (new & ~VmFlags.HUGEPAGE) | VmFlags.NOHUGEPAGE
    if new == vma.flags:
        return
    vma = vma_modify_flags(k, mm, vma, start, end, new)
    vma.flags = new


def madvise_free_single_vma(k: Kernel, mm: MmStruct, vma: Vma, start: int, end: int) -> None:
    """madvise_free_pte_range(): exclusive anonymous pages become clean and lazily freeable;
    a large folio only partly covered is split first (split_folio: its all-zero subpages
    become the shared zero page). RSS does not change otherwise."""
    pgt = k.pgtables
    for addr, nxt, pmd_paddr in pgt.pmd_ranges(mm, start, end):
        pmd = pgt.read(pmd_paddr)
        if pmd & pt._PAGE_PSE:
            if _madvise_free_huge_pmd(k, mm, vma, pmd_paddr, pmd, addr, nxt):
                continue
            pmd = pgt.read(pmd_paddr)
            if pmd & pt._PAGE_PSE:
                continue                 # pte_offset_map_lock() fails on a huge PMD
        if not pmd:
            continue
        table = pt.pte_pfn(pmd)
        va = addr
        while va < nxt:
            va += _madvise_free_pte(k, mm, vma, table, va, nxt) << 12
    flush_tlb_mm_range(k, mm, start, end)


def _madvise_free_huge_pmd(k: Kernel, mm: MmStruct, vma: Vma, pmd_paddr: int, pmd: int,
                           addr: int, nxt: int) -> bool:
    """madvise_free_huge_pmd(): True when the whole THP was marked lazyfree. A THP mapped
    elsewhere too is left alone; one only partly in the range is split (split_folio splits
    the PMD first: unmap_folio's TTU_SPLIT_HUGE_PMD) and its PTEs are walked next."""
    if huge_memory.is_huge_zero_pmd(k, pmd):
        return False
    head = pt.huge_pfn(pmd, 21)
    if rmap.folio_maybe_mapped_shared(k, head):
        return False
    if nxt - addr != huge_memory.HPAGE_PMD_SIZE:
        if huge_memory.can_split_folio(k, head):
            haddr = addr & ~(huge_memory.HPAGE_PMD_SIZE - 1)
            huge_memory.split_huge_pmd(k, mm, vma, pmd_paddr, haddr)
            huge_memory.split_folio(k, mm, vma, head, haddr)
        return False
    k.pgtables.set_entry(mm, pmd_paddr, pmd & ~pt._PAGE_DIRTY & ~pt._PAGE_ACCESSED)
    _mark_lazyfree(k, head, huge_memory.HPAGE_PMD_NR)
    return True


def _madvise_free_pte(k: Kernel, mm: MmStruct, vma: Vma, table: int, va: int, end: int) -> int:
    """One step of madvise_free_pte_range() at ``va``: returns how many PTEs it dealt with
    (0 after splitting a large folio: the same PTE is looked at again)."""
    pgt = k.pgtables
    paddr = (table << 12) + ((va >> 12) & 511) * 8
    pte = pgt.read(paddr)
    if not pte & (pt._PAGE_PRESENT | pt._PAGE_PROTNONE) or pte & pt._PAGE_SPECIAL:
        return 1
    pfn = pt.pte_pfn(pte)
    if not k.memmap.flags[pfn] & PageFlag.ANON:
        return 1
    head = rmap.folio_head(k, pfn)
    nr_pages = 1 << rmap.folio_order(k, head)
    if nr_pages == 1:
        if k.memmap.mapcount[pfn] == 1:
            pgt.set_entry(mm, paddr, pte & ~pt._PAGE_DIRTY & ~pt._PAGE_ACCESSED)
            _mark_lazyfree(k, pfn, 1)
        return 1
    nr = _folio_pte_batch(k, table, va, end, pte, head + nr_pages)
    if nr < nr_pages:
        # not wholly in the range: split it unless it may be mapped shared
        if not rmap.folio_maybe_mapped_shared(k, head) and \
                huge_memory.split_folio(k, mm, vma, head, va - ((pfn - head) << 12)):
            return 0
        return nr
    if rmap.folio_maybe_mapped_shared(k, head):
        return nr                        # folio_mapcount() != folio_nr_pages()
    for i in range(nr):
        entry = pgt.read(paddr + i * 8)
        pgt.set_entry(mm, paddr + i * 8, entry & ~pt._PAGE_DIRTY & ~pt._PAGE_ACCESSED)
    _mark_lazyfree(k, head, nr_pages)
    return nr


def _folio_pte_batch(k: Kernel, table: int, va: int, end: int, pte: int, folio_end: int) -> int:
    """folio_pte_batch() as madvise_folio_pte_batch() calls it: the PTEs from ``va`` (not
    past ``end`` or the folio's last page) that map the following pages of the folio with
    the same bits, accessed, dirty and soft-dirty aside."""
    ignore = pt._PAGE_ACCESSED | pt._PAGE_DIRTY | pt._PAGE_SOFT_DIRTY
    pfn = pt.pte_pfn(pte)
    words = k.pgtables.table_view(table)
    first = (va >> 12) & 511
    nr = 1
    while va + (nr << 12) < end and pfn + nr < folio_end and first + nr < 512:
        expected = (pte & ~ignore & ~pt.PTE_PFN_MASK) | ((pfn + nr) << 12)
        if int(words[first + nr]) & ~ignore != expected:
            break
        nr += 1
    return nr


def _mark_lazyfree(k: Kernel, pfn: int, nr_pages: int) -> None:
    """folio_mark_lazyfree(): clean, !swapbacked (kept on every page of the folio, as smaps
    reads them page by page); PGLAZYFREE counts the pages."""
    flags = k.memmap.flags
    if flags[pfn] & PageFlag.LAZYFREE:
        return
    flags[pfn: pfn + nr_pages] |= np.uint16(PageFlag.LAZYFREE)
    flags[pfn: pfn + nr_pages] &= np.uint16(~PageFlag.DIRTY & 0xFFFF)
    k.vm_events[VmEvent.PGLAZYFREE] += nr_pages
