"""fork(): dup_mmap and copy_page_range (kernel/fork.c, mm/memory.c, mm/huge_memory.c
copy_huge_pmd, mm/hugetlb.c copy_hugetlb_page_range).

Only VMAs that need it get their page tables copied (vma_needs_copy: an anon_vma, or
VM_PFNMAP/VM_MIXEDMAP); the rest refault in the child. Private anonymous pages become
shared copy-on-write: both PTEs write-protected, PageAnonExclusive cleared, one more
reference and mapcount each. The child's fault counters start at zero.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from pagewalk.hw import pgtable_types as pt
from pagewalk.mm import pkeys, rmap, swap_state
from pagewalk.mm.huge_memory import is_huge_zero_pmd, mm_get_huge_zero_folio
from pagewalk.mm.hugetlb import HugetlbFile, ResvMap, copy_hugetlb_page_range, hugetlb_file
from pagewalk.mm.page_alloc import NO_PAGE, PageFlag
from pagewalk.mm.pgtable import OutOfMemory, pte_alloc
from pagewalk.mm.tlb import flush_tlb_mm
from pagewalk.mm.types import (
    VM_LOCKED_MASK,
    AnonVma,
    MmStat,
    MmStruct,
    Vma,
    VmFlags,
    is_cow_mapping,
)
from pagewalk.mm.util import vm_acct_memory
from pagewalk.mm.vma import vm_stat_account, vma_insert

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel


def vma_needs_copy(vma: Vma) -> bool:
    return bool(vma.flags & (VmFlags.PFNMAP | VmFlags.MIXEDMAP)) or vma.anon_vma is not None


def dup_mmap(k: Kernel, old: MmStruct, new: MmStruct) -> None:
    """dup_mmap(): copy VMAs (and, where needed, page tables) from ``old`` into ``new``."""
    for field in ("mmap_base", "task_size", "total_vm", "data_vm", "exec_vm", "stack_vm",
                  "start_code", "end_code", "start_brk", "brk", "thp_disable"):
        setattr(new, field, getattr(old, field))
    new.hiwater_vm = old.total_vm
    pkeys.arch_dup_pkeys(k, old, new)                # arch_dup_mmap()
    for vma in old.vmas:
        if vma.flags & VmFlags.DONTCOPY:
            vm_stat_account(new, vma.flags, -(vma.length >> 12))
            continue
        if vma.flags & VmFlags.ACCOUNT:
            vm_acct_memory(k, vma.length >> 12)
        # anon_vma_fork(): the child's VMA links its parent's anon_vmas and a new one of
        # its own, so it counts as a fork child (vma_had_uncowed_parents) from now on
        anon_vma = AnonVma(vma.anon_vma.root) if vma.anon_vma else None
        child = replace(vma, anon_vma=anon_vma, anon_vma_chain=vma.anon_vma_chain + (
            (anon_vma,) if anon_vma is not None else ()))
        child.flags &= ~VM_LOCKED_MASK               # dup_mmap(): locks are not inherited
        if vma.is_hugetlb() and not hugetlb_file(vma).shared:
            child.file = _child_hugetlb_file(hugetlb_file(vma), ResvMap())
            child.hugetlb_resv_unmapped = False     # hugetlb_dup_vma_private()
        vma_insert(new, child)
        if vma_needs_copy(vma):
            copy_page_range(k, old, new, vma, child)
    if old.khugepaged_registered:
        new.khugepaged_registered = True  # khugepaged_fork()
    flush_tlb_mm(k, old)


def _child_hugetlb_file(file: HugetlbFile, resv: ResvMap) -> HugetlbFile:
    """A private hugetlb mapping in the child has no reservations and owns no reservation
    map (reset_vma_resv_huge_pages) but has the same hstate and inode."""
    child = HugetlbFile(file.hstate, file.length, False, resv, owner=False)
    child.pages = file.pages
    child.inode = file.inode
    return child


def copy_page_range(k: Kernel, src_mm: MmStruct, dst_mm: MmStruct, src: Vma, dst: Vma) -> None:
    if src.is_hugetlb():
        copy_hugetlb_page_range(k, src_mm, dst_mm, src, dst)
        return
    pgt = k.pgtables
    for addr, nxt, pmd_paddr in pgt.pmd_ranges(src_mm, src.start, src.end):
        # copy_pud_range/copy_pmd_range allocate the child's PUD and PMD tables before
        # they look at the parent's entries, so an empty PMD (a PTE table freed by
        # MADV_DONTNEED's PT_RECLAIM) still costs the child its upper tables
        dst_pmd, _ = pgt.walk(dst_mm, addr, 21, alloc=True)
        pmd = pgt.read(pmd_paddr)
        if pmd == 0:
            continue
        if pmd & pt._PAGE_PSE:
            copy_huge_pmd(k, src_mm, dst_mm, src, pmd_paddr, dst_pmd)
        else:
            copy_pte_range(k, src_mm, dst_mm, src, pt.pte_pfn(pmd), dst_pmd, addr, nxt)


def copy_pte_range(k: Kernel, src_mm: MmStruct, dst_mm: MmStruct, vma: Vma, src_table: int,
                   dst_pmd: int, start: int, end: int) -> None:
    """copy_pte_range() -> copy_present_ptes() over one PTE table, as one batch of arrays:
    every mapped page gains a reference and a mapcount, anonymous pages lose
    PageAnonExclusive, a COW mapping's writable PTEs are write-protected in both mms."""
    pgt = k.pgtables
    dst_table = pte_alloc(k, dst_mm, dst_pmd)
    if dst_table == NO_PAGE:
        raise OutOfMemory(start)
    first = (start >> 12) & 511
    last = first + ((end - start) >> 12)
    src = pgt.table_view(src_table)[first:last]
    if not src.any():
        return
    present = (src & np.uint64(pt._PAGE_PRESENT | pt._PAGE_PROTNONE)) != 0
    normal = present & ((src & np.uint64(pt._PAGE_SPECIAL)) == 0)     # vm_normal_page()
    pfns = ((src[normal] & np.uint64(pt.PTE_PFN_MASK)) >> np.uint64(12)).astype(np.int64)
    memmap = k.memmap
    heads = np.where(memmap.head[pfns] >= 0, memmap.head[pfns], pfns)
    np.add.at(memmap.refcount, heads, 1)                          # folio_get
    np.add.at(memmap.mapcount, pfns, 1)                           # folio_dup_*_rmap_pte
    page_flags = memmap.flags[pfns]
    anon = (page_flags & np.uint16(PageFlag.ANON)) != 0
    shmem = ~anon & ((page_flags & np.uint16(PageFlag.SHMEM)) != 0)
    memmap.flags[pfns[anon]] &= np.uint16(~PageFlag.ANON_EXCLUSIVE & 0xFFFF)
    dst_mm.stat[MmStat.MM_ANONPAGES] += int(anon.sum())
    dst_mm.stat[MmStat.MM_SHMEMPAGES] += int(shmem.sum())
    dst_mm.stat[MmStat.MM_FILEPAGES] += int((~anon & ~shmem).sum())
    child = src.copy()
    if is_cow_mapping(vma.flags):
        writable = (src & np.uint64(pt._PAGE_RW)) != 0
        if writable.any():
            protected = np.where(writable, src & np.uint64(~pt._PAGE_RW & (2**64 - 1)), src)
            pgt.fill_table(src_table, protected, first)               # ptep_set_wrprotect
            child = protected.copy()
    if vma.flags & VmFlags.SHARED:
        child &= np.uint64(~pt._PAGE_DIRTY & (2**64 - 1))            # pte_mkclean
    child = np.where(child != 0, child & np.uint64(~pt._PAGE_ACCESSED & (2**64 - 1)), child)
    if k.swap is not None:                                            # copy_nonpresent_pte
        parent = pgt.table_view(src_table)[first:last].copy()
        swap_state.copy_swap_entries(k, src_mm, dst_mm, parent, child)
        pgt.fill_table(src_table, parent, first)
    pgt.fill_table(dst_table, child, first)                           # pte_mkold + set_ptes


def copy_huge_pmd(k: Kernel, src_mm: MmStruct, dst_mm: MmStruct, vma: Vma, src_pmd: int,
                  dst_pmd: int) -> None:
    """copy_huge_pmd(): deposit a table for the child, share the THP write-protected."""
    pgt = k.pgtables
    pmd = pgt.read(src_pmd)
    table = pgt.alloc_table_page(dst_mm, "pte")
    if table == NO_PAGE:
        raise OutOfMemory(0)
    k.deposit[dst_pmd] = table
    if is_huge_zero_pmd(k, pmd):
        mm_get_huge_zero_folio(k, dst_mm)
        pgt.set_entry(dst_mm, dst_pmd, pmd)
        return
    head = pt.huge_pfn(pmd, 21)
    rmap.folio_get(k, head)
    rmap.folio_add_pmd_rmap(k, head)
    k.memmap.flags[head: head + 512] &= np.uint16(~PageFlag.ANON_EXCLUSIVE & 0xFFFF)
    dst_mm.stat[MmStat.MM_ANONPAGES] += 512
    pmd &= ~pt._PAGE_RW
    pgt.set_entry(src_mm, src_pmd, pmd)
    pgt.set_entry(dst_mm, dst_pmd, pmd & ~pt._PAGE_ACCESSED)

