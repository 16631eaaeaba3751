"""madvise(2) (mm/madvise.c): HUGEPAGE, NOHUGEPAGE, DONTNEED, FREE, WILLNEED, COLLAPSE.

madvise_walk_vmas visits every VMA in the range; a hole makes the call return ENOMEM
but the VMAs on both sides are still handled (as Linux does). MADV_DONTNEED zaps with
PT_RECLAIM (6.18): a PTE table whose whole 2 MiB was zapped and is empty is freed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pagewalk.errors import Errno, SyscallError
from pagewalk.hw import pgtable_types as pt
from pagewalk.mm import huge_memory, memory
from pagewalk.mm.page_alloc import PageFlag
from pagewalk.mm.types import MmStruct, Vma, VmFlags
from pagewalk.mm.vma import merge_with_neighbours, vma_modify, vmas_in_range
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
        from pagewalk.mm import khugepaged
        khugepaged.madvise_collapse(k, task, start, end)
        return
    vmas = vmas_in_range(mm, start, end)
    covered = sum(min(v.end, end) - max(v.start, start) for v in vmas)
    for vma in vmas:   # madvise_walk_vmas(): VMA by VMA; an EINVAL stops the walk there
        lo, hi = max(vma.start, start), min(vma.end, end)
        _check_vma(vma, advice, lo)
        _apply(k, task, vma, lo, hi, advice)
    if covered != end - start:
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
        if start & (vma.file.huge_size - 1):
            raise SyscallError(Errno.EINVAL, "MADV_DONTNEED start not huge-page aligned")
    if advice == "free" and not vma.is_anonymous():
        raise SyscallError(Errno.EINVAL, "MADV_FREE needs private anonymous memory")


def _apply(k: Kernel, task: Task, vma: Vma, start: int, end: int, advice: str) -> None:
    mm = task.mm
    if advice in ("hugepage", "nohugepage"):
        hugepage_madvise(k, mm, vma, start, end, advice == "hugepage")
    elif advice == "dontneed":
        if vma.is_hugetlb():
            mask = vma.file.huge_size - 1
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
    """hugepage_madvise() + madvise_update_vma(): set/clear VM_HUGEPAGE, split/merge."""
    if vma.is_hugetlb() or vma.special:
        return
    new = vma.flags
    if enable:
        new = (new & ~VmFlags.NOHUGEPAGE) | VmFlags.HUGEPAGE
    else:
        new = (new & ~VmFlags.HUGEPAGE) | VmFlags.NOHUGEPAGE
    if new == vma.flags:
        return
    vma = vma_modify(k, mm, vma, start, end)
    vma.flags = new
    vma = merge_with_neighbours(mm, vma)
    if enable:
        huge_memory.khugepaged_enter_vma(k, mm, vma)


def madvise_free_single_vma(k: Kernel, mm: MmStruct, vma: Vma, start: int, end: int) -> None:
    """madvise_free_pte_range(): exclusive anonymous pages become clean and lazily freeable;
    a THP only partly covered is split first. RSS does not change."""
    pgt = k.pgtables
    flags = k.memmap.flags
    for addr, nxt, pmd_paddr in pgt.pmd_ranges(mm, start, end):
        pmd = pgt.read(pmd_paddr)
        if pmd & pt._PAGE_PSE:
            if huge_memory.is_huge_zero_pmd(k, pmd):
                continue
            if huge_memory.huge_pmd_covered(k, mm, vma, pmd_paddr, addr, nxt):
                pgt.set_entry(mm, pmd_paddr, pmd & ~pt._PAGE_DIRTY)   # madvise_free_huge_pmd
                _mark_lazyfree(k, pt.huge_pfn(pmd, 21), 512)
                continue
            pmd = pgt.read(pmd_paddr)
        if not pmd:
            continue
        table = pt.pte_pfn(pmd)
        for va in range(addr, nxt, 4096):
            paddr = (table << 12) + ((va >> 12) & 511) * 8
            pte = pgt.read(paddr)
            if not pte & pt._PAGE_PRESENT or pte & pt._PAGE_SPECIAL:
                continue
            pfn = pt.pte_pfn(pte)
            if not flags[pfn] & PageFlag.ANON or k.memmap.mapcount[pfn] != 1:
                continue
            pgt.set_entry(mm, paddr, pte & ~pt._PAGE_DIRTY & ~pt._PAGE_ACCESSED)
            _mark_lazyfree(k, pfn, 1)
    k.flush_tlb_range(mm, start, end)


def _mark_lazyfree(k: Kernel, pfn: int, nr_pages: int) -> None:
    """folio_mark_lazyfree(): clean, !swapbacked; PGLAZYFREE counts the pages."""
    flags = k.memmap.flags
    if flags[pfn] & PageFlag.LAZYFREE:
        return
    flags[pfn] |= PageFlag.LAZYFREE
    flags[pfn] &= ~PageFlag.DIRTY
    k.vm_events[VmEvent.PGLAZYFREE] += nr_pages
