"""Memory locking (mm/mlock.c): mlock, mlock2(MLOCK_ONFAULT), munlock, mlockall, munlockall.

VM_LOCKED on a VMA; PG_mlocked on the folios it maps. A folio's lock state is
``Kernel.mlock_count`` (head pfn -> folio->mlock_count; a key means PG_mlocked and the
unevictable LRU at once), NR_MLOCK counts its pages (``Mlocked``). The kernel batches
mlock/munlock per CPU (mlock_fbatch); the live runner drains those batches before it
reads Mlocked, so here every batch is applied at once.

Where folios gain and lose the lock: mlock_fixup() walks the present pages of the range
(mlock_pte_range), a fault in a VM_LOCKED VMA locks the folio it mapped
(folio_add_lru_vma -> mlock_new_folio; folio_add_*_rmap -> mlock_vma_folio), and
unmapping a VM_LOCKED VMA munlocks what it mapped (folio_remove_rmap -> munlock_vma_folio).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pagewalk.errors import Errno, SyscallError
from pagewalk.hw import pgtable_types as pt
from pagewalk.mm import huge_memory, memcontrol
from pagewalk.mm.rmap import folio_head, folio_order
from pagewalk.mm.types import VM_LOCKED_MASK, MmStruct, Vma, VmFlags
from pagewalk.mm.vma import VM_SPECIAL, VmaIterator, find_vma, vma_modify_flags
from pagewalk.mm.vmstat import NodeStat, VmEvent

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel
    from pagewalk.kernel.task import Task

PAGE_SIZE = 4096
MLOCK_ONFAULT = 1
FAULT_AROUND_BYTES = 65536      # fault_around_bytes: the window a file read fault maps
MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT = 1, 2, 4


# --- folios ---------------------------------------------------------------------------------

def _nr_pages(k: Kernel, head: int) -> int:
    return 1 << folio_order(k, head)


def folio_test_mlocked(k: Kernel, head: int) -> bool:
    return head in k.mlock_count


def mlock_folio(k: Kernel, head: int) -> None:
    """mlock_folio() + __mlock_folio(): set PG_mlocked (NR_MLOCK, unevictable_pgs_mlocked)
    and move the folio to the unevictable list, or count one more locker."""
    nr = _nr_pages(k, head)
    if head in k.mlock_count:
        k.mlock_count[head] += 1
        return
    k.mlock_count[head] = 1
    k.node_stat[NodeStat.NR_MLOCK] += nr
    k.node_stat[NodeStat.NR_UNEVICTABLE] += nr
    k.vm_events[VmEvent.UNEVICTABLE_PGMLOCKED] += nr
    k.vm_events[VmEvent.UNEVICTABLE_PGCULLED] += nr
    memcontrol.lru_mlock(k, head)


def munlock_folio(k: Kernel, head: int) -> None:
    """munlock_folio() + __munlock_folio(): one locker fewer; the last clears PG_mlocked
    (unevictable_pgs_munlocked) and rescues the folio to an evictable list."""
    count = k.mlock_count.get(head)
    if count is None:
        return
    if count > 1:
        k.mlock_count[head] = count - 1
        return
    del k.mlock_count[head]
    nr = _nr_pages(k, head)
    k.node_stat[NodeStat.NR_MLOCK] -= nr
    k.node_stat[NodeStat.NR_UNEVICTABLE] -= nr
    k.vm_events[VmEvent.UNEVICTABLE_PGMUNLOCKED] += nr
    k.vm_events[VmEvent.UNEVICTABLE_PGRESCUED] += nr
    memcontrol.lru_munlock(k, head)


def vma_mlocks_folios(vma: Vma) -> bool:
    """mlock_vma_folio()'s test: VM_LOCKED without any VM_SPECIAL bit."""
    return vma.flags & (VmFlags.LOCKED | VM_SPECIAL) == VmFlags.LOCKED


def mapped_window(k: Kernel, mm: MmStruct, vma: Vma, vaddr: int) -> dict[int, int]:
    """The present PTEs of the fault-around window of ``vaddr`` (its 64 KiB, within the
    VMA and the PTE table): address -> the pfn it maps now."""
    lo, hi = _window(vma, vaddr)
    paddr, _, shift = k.pgtables.lookup(mm, vaddr)
    if shift != 12:
        return {}
    table = paddr & ~(PAGE_SIZE - 1)
    found = {}
    for va in range(lo, hi, PAGE_SIZE):
        pte = k.pgtables.read(table + ((va >> 12) & 511) * 8)
        if pte & pt._PAGE_PRESENT:
            found[va] = pt.pte_pfn(pte)
    return found


def _window(vma: Vma, vaddr: int) -> tuple[int, int]:
    """do_fault_around()'s window: fault_around_bytes aligned down, but starting no lower
    than the VMA (then 16 pages from its start), within the VMA and the PTE table."""
    nr = FAULT_AROUND_BYTES >> 12
    pte_off = (vaddr >> 12) & 511
    vma_off = (vaddr - vma.start) >> 12
    from_pte = max(pte_off & ~(nr - 1), pte_off - min(pte_off, vma_off))
    to_pte = min(from_pte + nr, 512, pte_off + (vma.length >> 12) - vma_off)
    page = vaddr & ~(PAGE_SIZE - 1)
    return page - ((pte_off - from_pte) << 12), page + ((to_pte - pte_off) << 12)


def mlock_fault(k: Kernel, mm: MmStruct, vma: Vma, vaddr: int,
                mapped_before: dict[int, int] | None = None) -> None:
    """A fault in a VM_LOCKED VMA mapped a folio at ``vaddr``: mlock_new_folio() for a new
    anonymous folio (a THP too, via folio_add_lru_vma); in a file VMA, mlock_vma_folio()
    for every small folio the fault mapped (set_pte_range -> __folio_add_file_rmap: the
    fault-around window's pages that ``mapped_before`` did not map; each mapping in a locked VMA
    counts one more mlock_count); a PTE-mapped large file folio is left to reclaim, as the
    kernel does, but a new anonymous mTHP is locked whole."""
    if not vma_mlocks_folios(vma) or vma.is_hugetlb():
        return
    paddr, entry, shift = k.pgtables.lookup(mm, vaddr)
    if not entry & pt._PAGE_PRESENT or entry & pt._PAGE_SPECIAL:
        return
    if shift == 21:
        if huge_memory.is_huge_zero_pmd(k, entry):
            return
        head = folio_head(k, pt.huge_pfn(entry, 21))
        if not folio_test_mlocked(k, head):
            mlock_folio(k, head)
        return
    if shift != 12:
        return
    table = paddr & ~(PAGE_SIZE - 1)
    if vma.file is None or mapped_before is None:
        lo, hi = vaddr & ~(PAGE_SIZE - 1), (vaddr & ~(PAGE_SIZE - 1)) + PAGE_SIZE
        before: dict[int, int] = {}
    else:
        lo, hi = _window(vma, vaddr)
        before = mapped_before
    for va in range(lo, hi, PAGE_SIZE):
        pte = k.pgtables.read(table + ((va >> 12) & 511) * 8)
        if not pte & pt._PAGE_PRESENT or pte & pt._PAGE_SPECIAL or pt.pte_pfn(pte) == k.zero_pfn:
            continue
        if before.get(va) == pt.pte_pfn(pte):
            continue                     # mapped before this fault
        head = folio_head(k, pt.pte_pfn(pte))
        if vma.file is None:
            # a new anonymous folio, an mTHP too: folio_add_lru_vma -> mlock_new_folio
            if not folio_test_mlocked(k, head):
                mlock_folio(k, head)
        elif folio_order(k, head) == 0:
            mlock_folio(k, head)     # __folio_add_file_rmap: small folios only


def mlock_vma_pages_range(k: Kernel, mm: MmStruct, vma: Vma, start: int, end: int) -> None:
    """mlock_vma_pages_range() -> mlock_pte_range(): mlock (VM_LOCKED set) or munlock every
    folio mapped in [start, end); a PTE-mapped large folio is mlocked only when the range
    maps all of it (allow_mlock_munlock), munlocked whenever part of it is here."""
    locked = bool(vma.flags & VmFlags.LOCKED)
    for addr, nxt, pmd_paddr in list(k.pgtables.pmd_ranges(mm, start, end)):
        pmd = k.pgtables.read(pmd_paddr)
        if not pmd & pt._PAGE_PRESENT:
            continue
        if pmd & pt._PAGE_PSE:
            if huge_memory.is_huge_zero_pmd(k, pmd):
                continue
            head = folio_head(k, pt.huge_pfn(pmd, 21))
            _lock_or_unlock(k, head, locked)
            continue
        table = pt.pte_pfn(pmd)
        va = addr
        while va < nxt:
            pte = k.pgtables.read((table << 12) + ((va >> 12) & 511) * 8)
            if not pte & pt._PAGE_PRESENT or pte & pt._PAGE_SPECIAL or \
                    pt.pte_pfn(pte) == k.zero_pfn:
                va += PAGE_SIZE
                continue
            pfn = pt.pte_pfn(pte)
            head = folio_head(k, pfn)
            nr = 1 << folio_order(k, head)
            step = 1
            if nr > 1:   # folio_pte_batch(): consecutive PTEs of this folio up to nxt
                while va + step * PAGE_SIZE < nxt and pfn + step < head + nr:
                    following = k.pgtables.read((table << 12) + (((va >> 12) + step) & 511) * 8)
                    if not following & pt._PAGE_PRESENT or pt.pte_pfn(following) != pfn + step:
                        break
                    step += 1
            if _allow_mlock_munlock(locked, vma, va, pfn, head, nr, step, start, end):
                _lock_or_unlock(k, head, locked)
            va += step * PAGE_SIZE


def _lock_or_unlock(k: Kernel, head: int, locked: bool) -> None:
    if locked:
        mlock_folio(k, head)
    else:
        munlock_folio(k, head)


def _allow_mlock_munlock(locked: bool, vma: Vma, va: int, pfn: int, head: int, nr: int,
                         step: int, start: int, end: int) -> bool:
    """allow_mlock_munlock(): munlock always; mlock a large folio only when it lies within
    [start, end) of the VMA (folio_within_range) and all of it is mapped here."""
    if not locked or nr == 1:
        return True
    folio_start = va - (pfn - head) * PAGE_SIZE
    lo, hi = max(start, vma.start), min(end, vma.end)
    if folio_start < lo or folio_start + nr * PAGE_SIZE > hi:
        return False
    return step == nr


def munlock_vma_range(k: Kernel, mm: MmStruct, vma: Vma, start: int, end: int) -> None:
    """Unmapping [start, end) of a VM_LOCKED VMA: folio_remove_rmap_*() ->
    munlock_vma_folio() for each folio mapped there."""
    if not vma.flags & VmFlags.LOCKED or vma.is_hugetlb():
        return
    saved = vma.flags
    vma.flags = saved & ~VmFlags.LOCKED
    try:
        mlock_vma_pages_range(k, mm, vma, start, end)
    finally:
        vma.flags = saved


# --- VMAs -----------------------------------------------------------------------------------

def vma_supports_mlock(vma: Vma) -> bool:
    """vma_supports_mlock(): never VM_SPECIAL (vvar, vdso: VM_DONTEXPAND) nor hugetlb."""
    return not (vma.flags & VM_SPECIAL or vma.special or vma.is_hugetlb())


def mlock_fixup(k: Kernel, mm: MmStruct, vma: Vma, start: int, end: int,
                newflags: VmFlags) -> Vma:
    """mlock_fixup(): split or merge [start, end) into one VMA with ``newflags``, adjust
    mm->locked_vm, and mlock or munlock the pages already there."""
    oldflags = vma.flags
    if newflags == oldflags or not vma_supports_mlock(vma):
        return vma
    vma = vma_modify_flags(k, mm, vma, start, end, newflags)
    nr_pages = (end - start) >> 12
    if not newflags & VmFlags.LOCKED:
        nr_pages = -nr_pages
    elif oldflags & VmFlags.LOCKED:
        nr_pages = 0
    mm.locked_vm += nr_pages
    vma.flags = newflags
    if not (newflags & VmFlags.LOCKED and oldflags & VmFlags.LOCKED):
        mlock_vma_pages_range(k, mm, vma, start, end)
    return vma


def apply_vma_lock_flags(k: Kernel, mm: MmStruct, start: int, length: int,
                         flags: VmFlags) -> None:
    """apply_vma_lock_flags(): every VMA of the range gets ``flags`` in place of its lock
    bits; a hole is ENOMEM, raised when reached (the VMAs before it stay changed)."""
    end = start + length
    if end < start:
        raise SyscallError(Errno.EINVAL, "range wraps")
    if end == start:
        return
    vma = find_vma(mm, start)
    if vma is None or vma.start > start:   # vma_iter_load(): nothing at start
        raise SyscallError(Errno.ENOMEM, "range starts in unmapped memory")
    nstart = start
    tmp = vma.start
    vmi = VmaIterator(mm, start, end)
    for vma in vmi:
        if vma.start != tmp:
            raise SyscallError(Errno.ENOMEM, "range contains unmapped memory")
        newflags = (vma.flags & ~VM_LOCKED_MASK) | flags
        tmp = min(vma.end, end)
        mlock_fixup(k, mm, vma, nstart, tmp, newflags)
        tmp = vmi.vma_iter_end()
        nstart = tmp
    if tmp < end:
        raise SyscallError(Errno.ENOMEM, "range ends in unmapped memory")


def do_mlock(k: Kernel, task: Task, start: int, length: int, flags: VmFlags) -> None:
    """do_mlock(): as root (CAP_IPC_LOCK) RLIMIT_MEMLOCK does not apply; lock, then
    __mm_populate(ignore_errors=0): -EFAULT (PROT_NONE) becomes ENOMEM, -ENOMEM EAGAIN."""
    from pagewalk.mm import gup  # gup -> memory -> mlock: the fault hook's cycle
    length = (length + (start & (PAGE_SIZE - 1)) + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
    start &= ~(PAGE_SIZE - 1)
    apply_vma_lock_flags(k, task.mm, start, length, flags)
    error = gup.mm_populate(k, task, start, start + length, ignore_errors=False)
    if error == Errno.EFAULT:
        raise SyscallError(Errno.ENOMEM, "mlock could not populate the range (PROT_NONE, or a fault answered SIGBUS: __mlock_posix_error_return)")
    if error == Errno.ENOMEM:
        raise SyscallError(Errno.EAGAIN, "mlock ran out of memory while populating")


def sys_mlock2(k: Kernel, task: Task, start: int, length: int, flags: int) -> None:
    """mlock2(2): MLOCK_ONFAULT adds VM_LOCKONFAULT (mlock(2) is flags 0)."""
    if flags & ~MLOCK_ONFAULT:
        raise SyscallError(Errno.EINVAL, "unknown mlock2 flags")
    vm_flags = VmFlags.LOCKED
    if flags & MLOCK_ONFAULT:
        vm_flags |= VmFlags.LOCKONFAULT
    do_mlock(k, task, start, length, vm_flags)


def sys_munlock(k: Kernel, task: Task, start: int, length: int) -> None:
    """munlock(2)."""
    length = (length + (start & (PAGE_SIZE - 1)) + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
    start &= ~(PAGE_SIZE - 1)
    apply_vma_lock_flags(k, task.mm, start, length, VmFlags.NONE)


def apply_mlockall_flags(k: Kernel, mm: MmStruct, flags: int) -> None:
    """apply_mlockall_flags(): MCL_FUTURE sets mm->def_flags; MCL_CURRENT (or 0, from
    munlockall) sets every VMA's lock bits; a VMA's error is ignored."""
    mm.def_flags &= ~VM_LOCKED_MASK
    if flags & MCL_FUTURE:
        mm.def_flags |= VmFlags.LOCKED
        if flags & MCL_ONFAULT:
            mm.def_flags |= VmFlags.LOCKONFAULT
        if not flags & MCL_CURRENT:
            return
    to_add = VmFlags.NONE
    if flags & MCL_CURRENT:
        to_add = VmFlags.LOCKED
        if flags & MCL_ONFAULT:
            to_add |= VmFlags.LOCKONFAULT
    vmi = VmaIterator(mm, 0, mm.task_size + PAGE_SIZE)
    for vma in vmi:
        newflags = (vma.flags & ~VM_LOCKED_MASK) | to_add
        try:
            mlock_fixup(k, mm, vma, vma.start, vma.end, newflags)
        except SyscallError:
            continue


def sys_mlockall(k: Kernel, task: Task, flags: int) -> None:
    """mlockall(2): EINVAL for no flags, unknown flags or MCL_ONFAULT alone; with
    MCL_CURRENT everything is populated (mm_populate(0, TASK_SIZE), errors ignored)."""
    if not flags or flags & ~(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) or flags == MCL_ONFAULT:
        raise SyscallError(Errno.EINVAL, "bad mlockall flags")
    from pagewalk.mm import gup
    apply_mlockall_flags(k, task.mm, flags)
    if flags & MCL_CURRENT:
        gup.mm_populate(k, task, 0, task.mm.task_size, ignore_errors=True)


def sys_munlockall(k: Kernel, task: Task) -> None:
    """munlockall(2)."""
    apply_mlockall_flags(k, task.mm, 0)
