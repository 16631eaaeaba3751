"""mprotect(2) (mm/mprotect.c: do_mprotect_pkey, mprotect_fixup, change_protection).

Pages stay where they are; only VMA flags and entry protections change. A private
anonymous page that is exclusive to its mm becomes writable in place
(MM_CP_TRY_CHANGE_WRITABLE + can_change_pte_writable), so r -> rw costs no faults.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pagewalk.errors import Errno, SyscallError
from pagewalk.hw import pgtable_types as pt
from pagewalk.mm import huge_memory
from pagewalk.mm.mmap import PAGE_SIZE, accountable_mapping, calc_vm_prot_bits, vm_get_page_prot
from pagewalk.mm.page_alloc import PageFlag
from pagewalk.mm.types import MmStruct, Vma, VmFlags
from pagewalk.mm.vma import find_vma, merge_with_neighbours, vm_stat_account, vma_modify

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel

VM_MAY_SHIFT = 4


def do_mprotect(k: Kernel, mm: MmStruct, start: int, length: int, prot: int) -> None:
    """do_mprotect_pkey(): VMA by VMA from ``start``; a hole stops it with ENOMEM after the
    VMAs before the hole were changed (as Linux does)."""
    if start & (PAGE_SIZE - 1):
        raise SyscallError(Errno.EINVAL, "start not page aligned")
    if not length:
        return
    end = start + ((length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1))
    if end <= start or end > 1 << 64:
        raise SyscallError(Errno.ENOMEM, "range wraps")
    vma = find_vma(mm, start)
    if vma is None or vma.start > start:
        raise SyscallError(Errno.ENOMEM, "start not mapped")
    _check_hugetlb_alignment(mm, start, end)
    newbits = calc_vm_prot_bits(prot)
    nstart = start
    while True:
        newflags = newbits | (vma.flags & ~(VmFlags.READ | VmFlags.WRITE | VmFlags.EXEC))
        if (newflags & ~(VmFlags(int(newflags) >> VM_MAY_SHIFT))) & (
                VmFlags.READ | VmFlags.WRITE | VmFlags.EXEC):
            raise SyscallError(Errno.EACCES, "protection exceeds VM_MAY*")
        tmp = min(vma.end, end)
        vma = mprotect_fixup(k, mm, vma, nstart, tmp, newflags)
        nstart = tmp
        if nstart >= end:
            return
        vma = find_vma(mm, nstart)
        if vma is None or vma.start != nstart:
            raise SyscallError(Errno.ENOMEM, "range has a hole")


def _check_hugetlb_alignment(mm: MmStruct, start: int, end: int) -> None:
    for vma in mm.vmas:
        if vma.is_hugetlb() and vma.start < end and vma.end > start:
            mask = vma.file.huge_size - 1
            if (start > vma.start and start & mask) or (end < vma.end and end & mask):
                raise SyscallError(Errno.EINVAL, "hugetlb range not huge-page aligned")


def mprotect_fixup(k: Kernel, mm: MmStruct, vma: Vma, start: int, end: int,
                   newflags: VmFlags) -> Vma:
    """mprotect_fixup(): charge newly writable private memory, split/merge, change entries."""
    oldflags = vma.flags
    if newflags == oldflags:
        return vma
    nrpages = (end - start) >> 12
    if accountable_mapping(newflags) and not oldflags & VmFlags.ACCOUNT:
        k.vm_enough_memory(mm, nrpages)
        k.vm_acct_memory(nrpages)
        newflags |= VmFlags.ACCOUNT
    elif oldflags & VmFlags.ACCOUNT and not newflags & VmFlags.WRITE and False:
        pass  # Linux keeps VM_ACCOUNT when write is removed
    vma = vma_modify(k, mm, vma, start, end)
    vma.flags = newflags
    vma.page_prot = vm_get_page_prot(newflags)
    vm_stat_account(mm, oldflags, -nrpages)
    vm_stat_account(mm, newflags, nrpages)
    try_writable = bool(newflags & VmFlags.WRITE) and not newflags & VmFlags.SHARED
    change_protection(k, mm, vma, start, end, try_writable)
    return merge_with_neighbours(mm, vma)


def change_protection(k: Kernel, mm: MmStruct, vma: Vma, start: int, end: int,
                      try_writable: bool) -> None:
    """change_protection() -> change_pmd_range -> change_pte_range."""
    pgt = k.pgtables
    newprot = vma.page_prot
    if vma.is_hugetlb():
        from pagewalk.mm import hugetlb
        hugetlb.hugetlb_change_protection(k, mm, vma, start, end, newprot)
        return
    for addr, nxt, pmd_paddr in pgt.pmd_ranges(mm, start, end):
        pmd = pgt.read(pmd_paddr)
        if pmd & pt._PAGE_PSE:
            if huge_memory.huge_pmd_covered(k, mm, vma, pmd_paddr, addr, nxt):
                huge_memory.change_huge_pmd(k, mm, vma, pmd_paddr, newprot)
                continue
            pmd = pgt.read(pmd_paddr)
        if pmd:
            change_pte_range(k, mm, vma, pt.pte_pfn(pmd), addr, nxt, newprot, try_writable)
    k.flush_tlb_range(mm, start, end)


def change_pte_range(k: Kernel, mm: MmStruct, vma: Vma, table: int, start: int, end: int,
                     newprot: int, try_writable: bool) -> None:
    pgt = k.pgtables
    flags = k.memmap.flags
    for va in range(start, end, 4096):
        paddr = (table << 12) + ((va >> 12) & 511) * 8
        old = pgt.read(paddr)
        if old == 0:
            continue
        new = pt.pte_modify(old, newprot)
        if not newprot & pt._PAGE_PRESENT:
            new &= ~pt._PAGE_PRESENT
        if try_writable and not new & pt._PAGE_RW and new & pt._PAGE_PRESENT:
            pfn = -1 if old & pt._PAGE_SPECIAL else pt.pte_pfn(old)
            # can_change_pte_writable(): an exclusive anonymous page of a private mapping.
            if pfn >= 0 and flags[pfn] & PageFlag.ANON and flags[pfn] & PageFlag.ANON_EXCLUSIVE:
                new |= pt._PAGE_RW
        if new != old:
            pgt.set_entry(mm, paddr, new)
