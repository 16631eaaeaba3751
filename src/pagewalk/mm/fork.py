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
from pagewalk.mm import memory, rmap
from pagewalk.mm.page_alloc import NO_PAGE, PageFlag
from pagewalk.mm.pgtable import OutOfMemory
from pagewalk.mm.types import AnonVma, MmStat, MmStruct, Vma, VmFlags
from pagewalk.mm.vma import vma_insert

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel


def is_cow_mapping(flags: VmFlags) -> bool:
    return flags & (VmFlags.SHARED | VmFlags.MAYWRITE) == VmFlags.MAYWRITE


def vma_needs_copy(vma: Vma) -> bool:
    return bool(vma.flags & (VmFlags.PFNMAP | VmFlags.MIXEDMAP)) or vma.anon_vma is not None


def dup_mmap(k: Kernel, old: MmStruct, new: MmStruct) -> None:
    """dup_mmap(): copy VMAs (and, where needed, page tables) from ``old`` into ``new``."""
    for field in ("mmap_base", "task_size", "total_vm", "data_vm", "exec_vm", "stack_vm",
                  "start_code", "end_code", "start_brk", "brk", "thp_disable"):
        setattr(new, field, getattr(old, field))
    new.hiwater_vm = old.total_vm
    for vma in old.vmas:
        if vma.flags & VmFlags.DONTCOPY:
            from pagewalk.mm.vma import vm_stat_account
            vm_stat_account(new, vma.flags, -(vma.length >> 12))
            continue
        if vma.flags & VmFlags.ACCOUNT:
            k.vm_acct_memory(vma.length >> 12)
        child = replace(vma, anon_vma=AnonVma(vma.anon_vma.root) if vma.anon_vma else None)
        if vma.is_hugetlb() and not vma.file.shared:
            from pagewalk.mm.hugetlb import ResvMap
            child.file = _child_hugetlb_file(vma.file, ResvMap())
        vma_insert(new, child)
        if vma_needs_copy(vma):
            copy_page_range(k, old, new, vma, child)
    if old.khugepaged_registered:
        new.khugepaged_registered = True  # khugepaged_fork()
    k.flush_tlb_mm(old)


def _child_hugetlb_file(file, resv):  # type: ignore[no-untyped-def]
    """A private hugetlb mapping in the child has no reservations (reset_vma_resv_huge_pages)
    but the same hstate and inode."""
    from pagewalk.mm.hugetlb import HugetlbFile
    child = HugetlbFile.__new__(HugetlbFile)
    child.hstate, child.huge_size, child.length = file.hstate, file.huge_size, file.length
    child.shared, child.resv, child.pages = False, resv, file.pages
    return child


def copy_page_range(k: Kernel, src_mm: MmStruct, dst_mm: MmStruct, src: Vma, dst: Vma) -> None:
    if src.is_hugetlb():
        copy_hugetlb_page_range(k, src_mm, dst_mm, src)
        return
    pgt = k.pgtables
    addr = src.start
    while addr < src.end:
        nxt = min((addr + (1 << 21)) & ~((1 << 21) - 1), src.end)
        pmd_paddr, shift = pgt.walk(src_mm, addr, 21, alloc=False)
        if shift != 21:
            size = 1 << shift
            addr = min((addr + size) & ~(size - 1), src.end)
            continue
        pmd = pgt.read(pmd_paddr)
        if pmd == 0:
            addr = nxt
            continue
        dst_pmd, _ = pgt.walk(dst_mm, addr, 21, alloc=True)
        if pmd & pt._PAGE_PSE:
            copy_huge_pmd(k, src_mm, dst_mm, src, pmd_paddr, dst_pmd)
        else:
            copy_pte_range(k, src_mm, dst_mm, src, pt.pte_pfn(pmd), dst_pmd, addr, nxt)
        addr = nxt


def copy_pte_range(k: Kernel, src_mm: MmStruct, dst_mm: MmStruct, vma: Vma, src_table: int,
                   dst_pmd: int, start: int, end: int) -> None:
    pgt = k.pgtables
    dst_table = memory.pte_alloc(k, dst_mm, dst_pmd)
    if dst_table == NO_PAGE:
        raise OutOfMemory(start)
    cow = is_cow_mapping(vma.flags)
    flags = k.memmap.flags
    for va in range(start, end, 4096):
        offset = ((va >> 12) & 511) * 8
        pte = pgt.read((src_table << 12) + offset)
        if pte == 0:
            continue
        child_pte = pte
        pfn = -1 if pte & pt._PAGE_SPECIAL else pt.pte_pfn(pte)
        if pfn >= 0 and pte & (pt._PAGE_PRESENT | pt._PAGE_PROTNONE):
            head = rmap.folio_head(k, pfn)
            rmap.folio_get(k, head)
            rmap.folio_add_pte_rmap(k, pfn)
            if flags[pfn] & PageFlag.ANON:
                flags[pfn] &= ~PageFlag.ANON_EXCLUSIVE   # folio_try_dup_anon_rmap_pte
                dst_mm.stat[MmStat.MM_ANONPAGES] += 1
            elif flags[pfn] & PageFlag.SHMEM:
                dst_mm.stat[MmStat.MM_SHMEMPAGES] += 1
            else:
                dst_mm.stat[MmStat.MM_FILEPAGES] += 1
        if cow and pte & pt._PAGE_RW:
            pte &= ~pt._PAGE_RW
            pgt.set_entry(src_mm, (src_table << 12) + offset, pte)   # ptep_set_wrprotect
            child_pte = pte
        if vma.flags & VmFlags.SHARED:
            child_pte &= ~pt._PAGE_DIRTY
        child_pte &= ~pt._PAGE_ACCESSED                               # pte_mkold
        pgt.set_entry(dst_mm, (dst_table << 12) + offset, child_pte)


def copy_huge_pmd(k: Kernel, src_mm: MmStruct, dst_mm: MmStruct, vma: Vma, src_pmd: int,
                  dst_pmd: int) -> None:
    """copy_huge_pmd(): deposit a table for the child, share the THP write-protected."""
    from pagewalk.mm import huge_memory
    pgt = k.pgtables
    pmd = pgt.read(src_pmd)
    table = pgt.alloc_table_page(dst_mm, "pte")
    if table == NO_PAGE:
        raise OutOfMemory(0)
    k.deposit[dst_pmd] = table
    if huge_memory.is_huge_zero_pmd(k, pmd):
        k.get_huge_zero_folio(dst_mm)
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


def copy_hugetlb_page_range(k: Kernel, src_mm: MmStruct, dst_mm: MmStruct, vma: Vma) -> None:
    """copy_hugetlb_page_range(): share every huge page, write-protected if private."""
    h = vma.file.hstate
    shift = 21 if h.size == 2 << 20 else 30
    cow = is_cow_mapping(vma.flags)
    pgt = k.pgtables
    for haddr in range(vma.start, vma.end, h.size):
        src_paddr, reached = pgt.walk(src_mm, haddr, shift, alloc=False)
        if reached != shift:
            continue
        entry = pgt.read(src_paddr)
        if not entry & pt._PAGE_PRESENT:
            continue
        dst_paddr, _ = pgt.walk(dst_mm, haddr, shift, alloc=True)
        if cow and entry & pt._PAGE_RW:
            entry &= ~pt._PAGE_RW
            pgt.set_entry(src_mm, src_paddr, entry)
        pgt.set_entry(dst_mm, dst_paddr, entry)
        k.memmap.refcount[pt.huge_pfn(entry, shift)] += 1
        dst_mm.stat[MmStat.HUGETLB_USAGE] += h.pages_per_huge_page
