"""madvise(2) (mm/madvise.c): HUGEPAGE, NOHUGEPAGE, DONTNEED, FREE, WILLNEED, COLLAPSE,
and (version 2) POPULATE_READ/WRITE, REMOVE, COLD, PAGEOUT, RANDOM, SEQUENTIAL, NORMAL.

madvise_walk_vmas visits every VMA in the range; a hole makes the call return ENOMEM
but the VMAs on both sides are still handled (as Linux does). MADV_DONTNEED zaps with
PT_RECLAIM (6.18): a PTE table whose whole 2 MiB was zapped and is empty is freed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from pagewalk.errors import Errno, SignalError, SyscallError
from pagewalk.hw import pgtable_types as pt
from pagewalk.mm import (
    filemap,
    huge_memory,
    hugetlb,
    khugepaged,
    memcontrol,
    memory,
    rmap,
    shmem,
    vmscan,
)
from pagewalk.mm.hugetlb import vma_kernel_pagesize
from pagewalk.mm.page_alloc import PageFlag
from pagewalk.mm.tlb import flush_tlb_mm_range, flush_tlb_page
from pagewalk.mm.types import MmStruct, Vma, VmFlags
from pagewalk.mm.vma import VmaIterator, vma_modify_flags
from pagewalk.mm.vmstat import VmEvent

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel
    from pagewalk.kernel.task import Task

ADVICE = ("hugepage", "nohugepage", "dontneed", "free", "willneed", "collapse",
          "populate_read", "populate_write", "remove", "cold", "pageout", "random",
          "sequential", "normal")


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
    if advice in ("populate_read", "populate_write"):
        madvise_populate(k, task, start, end, advice == "populate_write")
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
    """The per-VMA checks of madvise_dontneed_free_valid_vma(), madvise_free_single_vma(),
    can_madv_lru_vma() (COLD, PAGEOUT) and madvise_remove(); the VMAs before this one in
    the range have been advised already."""
    if advice in ("cold", "pageout"):
        if vma.flags & (VmFlags.LOCKED | VmFlags.PFNMAP | VmFlags.HUGETLB):
            raise SyscallError(Errno.EINVAL, "locked, PFN-mapped or hugetlb VMA")
        return
    if advice == "remove":
        if vma.flags & VmFlags.LOCKED:
            raise SyscallError(Errno.EINVAL, "MADV_REMOVE on a locked VMA")
        if vma.file is None or vma.file.kind not in ("file", "shmem", "hugetlb"):
            raise SyscallError(Errno.EINVAL, "MADV_REMOVE needs a file mapping")
        if not vma.flags & VmFlags.SHARED or not vma.flags & VmFlags.MAYWRITE:
            raise SyscallError(Errno.EACCES, "MADV_REMOVE needs a shared writable mapping")
        return
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
    elif advice in ("random", "sequential", "normal"):
        new = vma.flags & ~(VmFlags.RAND_READ | VmFlags.SEQ_READ)
        new |= {"random": VmFlags.RAND_READ, "sequential": VmFlags.SEQ_READ,
                "normal": VmFlags(0)}[advice]
        if new != vma.flags:
            vma = vma_modify_flags(k, mm, vma, start, end, new)
            vma.flags = new
    elif advice == "willneed":
        madvise_willneed(k, vma, start, end)
    elif advice == "remove" and vma.is_hugetlb():
        # madvise_remove() -> vfs_fallocate(PUNCH_HOLE) on the hugetlbfs inode
        offset = (vma.pgoff << 12) + (start - vma.start)
        hugetlb.hugetlbfs_punch_hole(k, hugetlb.hugetlb_file(vma), offset, end - start)
    elif advice == "remove":
        inode = shmem.page_cache_of(vma)
        first = vma.pgoff + ((start - vma.start) >> 12)
        filemap.punch_hole(k, inode, first, first + ((end - start) >> 12))
    elif advice == "pageout":
        madvise_pageout(k, mm, vma, start, end)
    elif advice == "cold":
        madvise_cold(k, mm, start, end)


def _single_mapped_ptes(k: Kernel, mm: MmStruct, start: int, end: int,
                        huge: Callable[[int, int, int, int], None] | None = None,
                        ) -> Iterator[tuple[int, int, int, int]]:
    """madvise_cold_or_pageout_pte_range()'s walk: (address, PTE address, PTE, pfn) of
    each pte_present() entry (PROT_NONE ones map pages too) of [start, end) mapping an
    order-0 folio that only this mapping maps (large folios are not split here;
    folio_maybe_mapped_shared()). A huge PMD goes to ``huge`` first (pageout may split
    it: args PMD address, PMD, range start and end), else it is left alone."""
    pgt = k.pgtables
    for addr, nxt, pmd_paddr in pgt.pmd_ranges(mm, start, end):
        pmd = pgt.read(pmd_paddr)
        if pmd & pt._PAGE_PSE and huge is not None:
            huge(pmd_paddr, pmd, addr, nxt)
            pmd = pgt.read(pmd_paddr)
        if not pmd or pmd & pt._PAGE_PSE:
            continue
        table = pt.pte_pfn(pmd)
        for va in range(addr, nxt, 4096):
            paddr = memory.pte_paddr(table, va)
            pte = pgt.read(paddr)
            if not pte & (pt._PAGE_PRESENT | pt._PAGE_PROTNONE) or pte & pt._PAGE_SPECIAL:
                continue
            pfn = pt.pte_pfn(pte)
            if rmap.folio_head(k, pfn) == pfn and k.memmap.mapcount[pfn] <= 1:
                yield va, paddr, pte, pfn


def madvise_cold(k: Kernel, mm: MmStruct, start: int, end: int) -> None:
    """madvise_cold() -> madvise_cold_or_pageout_pte_range(!pageout): each present PTE of
    an order-0 folio only this mapping maps is made old (ptep_get_and_clear_full +
    pte_mkold, its TLB entry flushed) and the folio deactivated (folio_deactivate:
    an active one moves to the inactive list, PG_referenced cleared, pgdeactivate).
    So reclaim under a memory cgroup takes these pages before young ones. Huge PMDs and
    large folios are left as they are here (as madvise_pageout leaves them)."""
    pgt = k.pgtables
    for va, paddr, pte, pfn in _single_mapped_ptes(k, mm, start, end):
        if not k.memmap.flags[pfn] & PageFlag.ANON:
            continue
        if pte & pt._PAGE_ACCESSED:
            pgt.set_entry(mm, paddr, pte & ~pt._PAGE_ACCESSED)
            flush_tlb_page(k, mm, va)
        memcontrol.folio_deactivate(k, pfn)


def madvise_willneed(k: Kernel, vma: Vma, start: int, end: int) -> None:
    """madvise_willneed(): for a disk file, vfs_fadvise(POSIX_FADV_WILLNEED) ->
    force_page_cache_readahead over the range (even with read_ahead_kb 0); shmem and
    anonymous memory only swap in, and there is no swap."""
    if not isinstance(vma.file, filemap.File) or vma.file.inode.fs != "disk":
        return
    first = vma.pgoff + ((start - vma.start) >> 12)
    filemap.force_page_cache_ra(k, vma.file.inode, vma.file.ra, first, (end - start) >> 12)


def madvise_populate(k: Kernel, task: Task, start: int, end: int, write: bool) -> None:
    """madvise_populate() -> faultin_page_range(): GUP (FOLL_MADV_POPULATE) over the range:
    a hole is ENOMEM, a VMA GUP refuses (VM_IO/VM_PFNMAP, no write or read permission) is
    EINVAL, a fault ending in SIGBUS/SIGSEGV is EFAULT, running out of memory ENOMEM."""
    from pagewalk.mm import gup
    from pagewalk.mm.vma import find_vma
    mm = task.mm
    addr = start
    while addr < end:
        vma = find_vma(mm, addr)
        if vma is None or vma.start > addr:
            raise SyscallError(Errno.ENOMEM, "range contains unmapped memory")
        if vma.flags & (VmFlags.IO | VmFlags.PFNMAP) or \
                (write and not vma.flags & VmFlags.WRITE) or \
                (not write and not vma.flags & VmFlags.READ):
            raise SyscallError(Errno.EINVAL, "GUP refuses this mapping")
        hi = min(end, vma.end)
        try:
            error = gup.populate_vma_page_range(k, task, vma, addr, hi, write=write,
                                                honour_onfault=False, retry_tried=True)
        except SignalError:
            raise SyscallError(Errno.ENOMEM, "out of memory while populating") from None
        if error is not None:
            raise SyscallError(Errno.EFAULT, "a fault ended in SIGBUS or SIGSEGV")
        addr = hi


def madvise_pageout(k: Kernel, mm: MmStruct, vma: Vma, start: int, end: int) -> None:
    """madvise_pageout() -> madvise_cold_or_pageout_pte_range() + reclaim_pages(): the
    pages of the range that only this mapping maps are isolated and shrink_folio_list
    runs on them: with no swap an anonymous page stays (add_to_swap fails before any
    unmapping); a page-cache page is unmapped (try_to_unmap); a clean disk page then leaves
    the cache, a shmem or dirty one stays (no swap; direct reclaim writes no file page)."""
    victims: list[int] = []
    anon: list[tuple[int, int]] = []     # with swap: (pfn, linear page index)

    def split_thp(pmd_paddr: int, pmd: int, addr: int, nxt: int) -> None:
        if k.swap is not None:
            _pageout_split_thp(k, mm, vma, pmd_paddr, pmd, addr, nxt)

    for va, _, _, pfn in _single_mapped_ptes(k, mm, start, end, split_thp):
        if k.memmap.flags[pfn] & PageFlag.ANON:
            if k.swap is not None and vma.anon_vma is not None:
                anon.append((pfn, vma.pgoff + ((va - vma.start) >> 12)))
            continue                     # without swap anonymous pages stay
        victims.append(pfn)
    if anon:
        vmscan.reclaim_pages(k, anon)
    for pfn in victims:
        inode, index = _page_cache_owner(k, vma, pfn)
        if inode is None:
            continue
        filemap.unmap_mapping_range(k, inode, index, index + 1, even_cows=False)
        if inode.fs == "disk" and not k.memmap.flags[pfn] & PageFlag.DIRTY and \
                k.memmap.refcount[pfn] == 1:
            filemap.delete_from_page_cache(k, inode, pfn, index)


def _pageout_split_thp(k: Kernel, mm: MmStruct, vma: Vma, pmd_paddr: int, pmd: int,
                       addr: int, nxt: int) -> None:
    """madvise_cold_or_pageout_pte_range() on a PMD-mapped anonymous THP that only this
    mm maps: with the whole THP in the range reclaim gets it whole, and as the rotational
    swap device has no clusters add_to_swap fails and shrink_folio_list splits it
    (thp_swpout_fallback); with part of it split_folio runs first. Either way the PMD is
    split (thp_split_pmd) and the 4 KiB pages of the range are paged out."""
    if not vma.is_anonymous() or huge_memory.is_huge_zero_pmd(k, pmd):
        return
    head = pt.huge_pfn(pmd, 21)
    if rmap.folio_maybe_mapped_shared(k, head) or not huge_memory.can_split_folio(k, head):
        return
    haddr = addr & ~(huge_memory.HPAGE_PMD_SIZE - 1)
    huge_memory.split_huge_pmd(k, mm, vma, pmd_paddr, haddr)
    if huge_memory.split_folio(k, mm, vma, head, haddr) and \
            nxt - addr == huge_memory.HPAGE_PMD_SIZE:
        k.vm_events[VmEvent.THP_SWPOUT_FALLBACK] += 1


def _page_cache_owner(k: Kernel, vma: Vma, pfn: int) -> tuple[shmem.PageCacheFile | None, int]:
    """The inode and index of page ``pfn`` mapped in ``vma`` (its file's page at the
    address's offset)."""
    if vma.file is None or vma.file.kind not in ("file", "shmem"):
        return None, 0
    inode = shmem.page_cache_of(vma)
    for index in range(vma.pgoff, vma.pgoff + (vma.length >> 12)):
        if inode.pages.get(index) == pfn:
            return inode, index
    return None, 0


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
