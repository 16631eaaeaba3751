"""System calls: the user/kernel boundary (mm/mmap.c ksys_mmap_pgoff, mm/mprotect.c,
mm/madvise.c, kernel/fork.c, kernel/exit.c).

Each call enters the kernel (PTI: CR3 switch), runs the mm code and returns; an errno
comes back as SyscallError. A call that Linux refuses up front changes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pagewalk.errors import Errno, SyscallError
from pagewalk.kernel.task import Task
from pagewalk.mm import gup, madvise, mlock, mmap, mprotect, mremap, pkeys
from pagewalk.mm.fork import dup_mmap
from pagewalk.mm.types import VmFlags
from pagewalk.mm.vma import vmas_in_range

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel


class _Syscall:
    """Context manager for one system call: kernel entry/exit CR3 switches under PTI."""

    def __init__(self, k: Kernel, task: Task) -> None:
        self.k = k
        self.task = task

    def __enter__(self) -> None:
        self.k.switch_to(self.task)
        self.k.kernel_entry()

    def __exit__(self, *exc: object) -> None:
        self.k.kernel_exit()


def sys_mmap(k: Kernel, task: Task, addr: int, length: int, prot: int, flags: frozenset[str],
             huge_size: int | None = None) -> int:
    """mmap(2) of anonymous memory; MAP_POPULATE faults it in (mm_populate)."""
    with _Syscall(k, task):
        start = mmap.do_mmap(k, task.mm, addr, length, prot, flags, huge_size)
        if task.mm.def_flags & VmFlags.LOCKED:
            # vm_mmap_pgoff(): a VM_LOCKED mapping is populated (mm_populate, errors ignored)
            end = start + ((length + 4095) & ~4095)
            gup.mm_populate(k, task, start, end, ignore_errors=True)
        elif "populate" in flags:
            populate(k, task, start, start + ((length + 4095) & ~4095))
        return start


def populate(k: Kernel, task: Task, start: int, end: int) -> None:
    """__mm_populate(): GUP over every VMA of the range."""
    for vma in vmas_in_range(task.mm, start, end):
        gup.populate_vma_page_range(k, task, vma, max(start, vma.start), min(end, vma.end))


def sys_munmap(k: Kernel, task: Task, addr: int, length: int) -> None:
    with _Syscall(k, task):
        mmap.do_munmap(k, task.mm, addr, length)


def sys_mprotect(k: Kernel, task: Task, addr: int, length: int, prot: int) -> None:
    with _Syscall(k, task):
        mprotect.do_mprotect(k, task, addr, length, prot)


def sys_madvise(k: Kernel, task: Task, addr: int, length: int, advice: str) -> None:
    with _Syscall(k, task):
        madvise.do_madvise(k, task, addr, length, advice)


def sys_fork(k: Kernel, parent: Task, child_name: str) -> Task:
    """fork(2): copy_process -> copy_mm -> dup_mm -> dup_mmap. min_flt starts at 0."""
    if child_name in k.tasks:
        raise SyscallError(Errno.EINVAL, f"a process named {child_name!r} exists")
    with _Syscall(k, parent):
        mm = k.new_mm()
        child = Task(k.next_pid, child_name, mm, parent=parent, stack_pfn=k.alloc_kernel_stack())
        child.pkru = pkeys.read_pkru(k)              # copy_thread(): the parent's PKRU
        k.next_pid += 1
        dup_mmap(k, parent.mm, mm)
        k.tasks[child_name] = child
        return child


def sys_exit(k: Kernel, task: Task) -> None:
    """exit(2) and the parent's wait(2): everything the task held goes back."""
    with _Syscall(k, task):
        pass
    k.free_task(task)


def sys_sbrk(k: Kernel, task: Task, delta: int) -> int:
    """sbrk(delta) as glibc calls it: brk(current break + delta); the kernel returns the
    break, unchanged when it refuses, which sbrk reports as ENOMEM."""
    with _Syscall(k, task):
        mm = task.mm
        old = mm.brk
        wanted = old + delta
        if wanted < 0:
            raise SyscallError(Errno.ENOMEM, "the break would be negative")
        got, populate_new = mmap.sys_brk(k, mm, wanted)
        if got != wanted:
            raise SyscallError(Errno.ENOMEM, f"brk({wanted:#x}) refused; the break stays at "
                                             f"{got:#x}")
        if populate_new:     # mm->def_flags & VM_LOCKED: mm_populate(oldbrk, newbrk - oldbrk)
            lo, hi = (old + 4095) & ~4095, (got + 4095) & ~4095
            gup.mm_populate(k, task, lo, hi, ignore_errors=True)
        return got


def sys_mlock(k: Kernel, task: Task, addr: int, length: int, onfault: bool) -> None:
    """mlock(2), or mlock2(2) with MLOCK_ONFAULT."""
    with _Syscall(k, task):
        mlock.sys_mlock2(k, task, addr, length, mlock.MLOCK_ONFAULT if onfault else 0)


def sys_munlock(k: Kernel, task: Task, addr: int, length: int) -> None:
    with _Syscall(k, task):
        mlock.sys_munlock(k, task, addr, length)


def sys_mlockall(k: Kernel, task: Task, flags: int) -> None:
    with _Syscall(k, task):
        mlock.sys_mlockall(k, task, flags)


def sys_munlockall(k: Kernel, task: Task) -> None:
    with _Syscall(k, task):
        mlock.sys_munlockall(k, task)


def sys_mremap(k: Kernel, task: Task, addr: int, old_len: int, new_len: int, flags: int,
               new_addr: int) -> int:
    """mremap(2); a VM_LOCKED mapping that grew is populated after (mm_populate)."""
    with _Syscall(k, task):
        result, populate_range = mremap.sys_mremap(k, task, addr, old_len, new_len, flags,
                                                   new_addr)
        if populate_range is not None:
            gup.mm_populate(k, task, populate_range[0], populate_range[1], ignore_errors=True)
        return result
