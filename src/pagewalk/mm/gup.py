"""get_user_pages for MAP_POPULATE and MADV_POPULATE (mm/gup.c populate_vma_page_range,
__get_user_pages, faultin_page).

GUP walks the page tables in software (no TLB) and faults in what is missing through
handle_mm_fault without FAULT_FLAG_USER; those faults count in PGFAULT and min_flt
(mm_account_fault with regs == NULL).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pagewalk.errors import Errno, Signal, SignalError
from pagewalk.hw import pgtable_types as pt
from pagewalk.mm import pkeys
from pagewalk.mm.memory import handle_mm_fault
from pagewalk.mm.types import FaultFlags, Vma, VmFault, VmFlags
from pagewalk.mm.vma import vmas_in_range

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel
    from pagewalk.kernel.task import Task


def populate_vma_page_range(k: Kernel, task: Task, vma: Vma, start: int, end: int,
                            write: bool | None = None,
                            honour_onfault: bool = True,
                            retry_tried: bool = False) -> Errno | None:
    """Fault in [start, end) of one VMA; FOLL_WRITE for private writable mappings.
    A fault answered with SIGBUS or SIGSEGV stops it with -EFAULT (faultin_page), which
    callers that ignore errors (MAP_POPULATE, mprotect) drop."""
    if vma.flags & (VmFlags.IO | VmFlags.PFNMAP) or not vma.flags & (
            VmFlags.READ | VmFlags.WRITE | VmFlags.EXEC):
        return None
    if honour_onfault and vma.flags & VmFlags.LOCKONFAULT:
        return None  # populate_vma_page_range(): VM_LOCKONFAULT never breaks COW here
    if write is None:
        write = vma.flags & (VmFlags.WRITE | VmFlags.SHARED) == VmFlags.WRITE
    if not pkeys.arch_vma_access_permitted(k, vma, bool(write)):
        return Errno.EFAULT  # check_vma_flags(): a data access the VMA's key forbids (execute-only)
    addr = start
    while addr < end:
        _, entry, shift = k.pgtables.lookup(task.mm, addr)
        present = bool(entry & pt._PAGE_PRESENT)
        if present and (not write or entry & pt._PAGE_RW):
            step = 1 << shift
            addr = min((addr + step) & ~(step - 1), end)
            continue
        flags = FaultFlags.WRITE if write else FaultFlags(0)
        ret = handle_mm_fault(k, task, vma, addr, flags)
        if ret & VmFault.MAJOR and not retry_tried:
            # the read dropped the lock (VM_FAULT_RETRY, not accounted); __mm_populate's
            # loop faults again without FOLL_TRIED and finds the page cached: a minor
            # fault (faultin_page_range retries with FOLL_TRIED: major)
            task.maj_flt -= 1
            task.min_flt += 1
        if ret & VmFault.ERROR:
            if ret & VmFault.OOM:
                raise SignalError(Signal.SIGBUS, addr, "out of memory while populating")
            return Errno.EFAULT  # faultin_page: VM_FAULT_SIGBUS/SIGSEGV; later accesses fault again
    return None


def mm_populate(k: Kernel, task: Task, start: int, end: int, ignore_errors: bool) -> Errno | None:
    """__mm_populate(): populate_vma_page_range over every VMA of [start, end), skipping
    VM_IO/VM_PFNMAP ones. Its per-VMA rules: VM_LOCKONFAULT populates nothing, PROT_NONE is
    -EFAULT. The first error stops the walk and is returned unless ``ignore_errors``."""
    for vma in vmas_in_range(task.mm, start, end):
        if vma.flags & (VmFlags.IO | VmFlags.PFNMAP):
            continue
        if vma.flags & VmFlags.LOCKONFAULT:
            continue
        if not vma.flags & (VmFlags.READ | VmFlags.WRITE | VmFlags.EXEC):
            if ignore_errors:
                continue
            return Errno.EFAULT
        error = populate_vma_page_range(k, task, vma, max(start, vma.start),
                                        min(end, vma.end))
        if error is not None and not ignore_errors:
            return error
    return None
