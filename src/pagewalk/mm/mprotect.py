"""mprotect(2) (mm/mprotect.c: do_mprotect_pkey, mprotect_fixup, change_protection).

Pages stay where they are; only VMA flags and entry protections change. A private
anonymous page that is exclusive to its mm becomes writable in place
(MM_CP_TRY_CHANGE_WRITABLE + can_change_pte_writable), so r -> rw costs no faults.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pagewalk.errors import Errno, SyscallError
from pagewalk.hw import pgtable_types as pt
from pagewalk.mm import gup, huge_memory, hugetlb, pkeys
from pagewalk.mm.mmap import PAGE_SIZE, calc_vm_prot_bits, vma_page_prot
from pagewalk.mm.page_alloc import PageFlag
from pagewalk.mm.tlb import flush_tlb_mm_range
from pagewalk.mm.types import MmStruct, Vma, VmFlags
from pagewalk.mm.util import __vm_enough_memory, vm_acct_memory, vm_unacct_memory
from pagewalk.mm.vma import VmaIterator, find_vma, vm_stat_account, vma_modify_flags

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel
    from pagewalk.kernel.task import Task

VM_MAY_SHIFT = 4


def do_mprotect(k: Kernel, task: Task, start: int, length: int, prot: int) -> None:
    """do_mprotect_pkey() of ``task`` (current): VMA by VMA from ``start`` (for_each_vma_range, which resumes at
    the end of the VMA mprotect_fixup left, merged or split); a hole or a failing VMA stops
    the walk with its error after the VMAs before it were changed (as Linux does)."""
    mm = task.mm
    if start & (PAGE_SIZE - 1):
        raise SyscallError(Errno.EINVAL, "start not page aligned")
    if not length:
        return
    end = start + ((length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1))
    if end <= start or end > 1 << 64:
        raise SyscallError(Errno.ENOMEM, "range wraps")
    first = find_vma(mm, start)
    if first is None or first.start > start:
        raise SyscallError(Errno.ENOMEM, "start not mapped")
    newbits = calc_vm_prot_bits(prot)
    vmi = VmaIterator(mm, start, end)
    nstart, tmp = start, first.start
    for vma in vmi:
        if vma.start != tmp:
            raise SyscallError(Errno.ENOMEM, "range has a hole")
        newflags = newbits | (vma.flags & ~(VmFlags.READ | VmFlags.WRITE | VmFlags.EXEC))
        newflags = pkeys.mprotect_pkey_flags(k, mm, vma, prot, newflags)
        if (newflags & ~(VmFlags(int(newflags) >> VM_MAY_SHIFT))) & (
                VmFlags.READ | VmFlags.WRITE | VmFlags.EXEC):
            raise SyscallError(Errno.EACCES, "protection exceeds VM_MAY*")
        mprotect_fixup(k, task, vma, nstart, min(vma.end, end), newflags)
        nstart = tmp = vmi.vma_iter_end()
    if tmp < end:
        raise SyscallError(Errno.ENOMEM, "range has a hole")


def mprotect_fixup(k: Kernel, task: Task, vma: Vma, start: int, end: int,
                   newflags: VmFlags) -> Vma:
    """mprotect_fixup(): charge private memory that becomes writable, give the charge back
    for an anonymous VMA that never faulted (no anon_vma) made read-only (since 6.7),
    merge or split, change the entries; a private VM_LOCKED VMA made writable is populated
    with write faults (COW broken now). Returns the VMA that now covers [start, end)."""
    mm = task.mm
    oldflags = vma.flags
    if newflags == oldflags:
        return vma
    nrpages = (end - start) >> 12
    charged = 0
    if newflags & VmFlags.WRITE:
        if not oldflags & (VmFlags.ACCOUNT | VmFlags.WRITE | VmFlags.HUGETLB | VmFlags.SHARED
                           | VmFlags.NORESERVE):
            __vm_enough_memory(k, mm, nrpages)
            vm_acct_memory(k, nrpages)
            charged = nrpages
            newflags |= VmFlags.ACCOUNT
    elif oldflags & VmFlags.ACCOUNT and vma.is_anonymous() and vma.anon_vma is None:
        newflags &= ~VmFlags.ACCOUNT
    try:
        vma = vma_modify_flags(k, mm, vma, start, end, newflags)
    except SyscallError:
        vm_unacct_memory(k, charged)
        raise
    vma.flags = newflags
    vma.page_prot = vma_page_prot(newflags, vma.file)
    # vma_wants_manual_pte_write_upgrade(): private writable mappings try to keep the write
    try_writable = bool(newflags & VmFlags.WRITE) and not newflags & VmFlags.SHARED
    change_protection(k, mm, vma, start, end, try_writable)
    if oldflags & VmFlags.ACCOUNT and not newflags & VmFlags.ACCOUNT:
        vm_unacct_memory(k, nrpages)
    if oldflags & (VmFlags.WRITE | VmFlags.SHARED | VmFlags.LOCKED) == VmFlags.LOCKED and \
            newflags & VmFlags.WRITE:
        gup.populate_vma_page_range(k, task, vma, start, end)   # avoids a COW fault later
    vm_stat_account(mm, oldflags, -nrpages)
    vm_stat_account(mm, newflags, nrpages)
    return vma


def change_protection(k: Kernel, mm: MmStruct, vma: Vma, start: int, end: int,
                      try_writable: bool) -> None:
    """change_protection() -> change_pmd_range -> change_pte_range."""
    pgt = k.pgtables
    newprot = vma.page_prot
    if vma.is_hugetlb():
        hugetlb.hugetlb_change_protection(k, mm, vma, start, end, newprot)
        return
    for addr, nxt, pmd_paddr in pgt.pmd_ranges(mm, start, end):
        pmd = pgt.read(pmd_paddr)
        if pmd & pt._PAGE_PSE:
            if huge_memory.huge_pmd_covered(k, mm, vma, pmd_paddr, addr, nxt):
                huge_memory.change_huge_pmd(k, mm, vma, pmd_paddr, newprot, try_writable)
                continue
            pmd = pgt.read(pmd_paddr)
        if pmd:
            change_pte_range(k, mm, vma, pt.pte_pfn(pmd), addr, nxt, newprot, try_writable)
    flush_tlb_mm_range(k, mm, start, end)


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
