"""System calls: the user/kernel boundary (mm/mmap.c ksys_mmap_pgoff, mm/mprotect.c,
mm/madvise.c, kernel/fork.c, kernel/exit.c).

Each call enters the kernel (PTI: CR3 switch), runs the mm code and returns; an errno
comes back as SyscallError. A call that Linux refuses up front changes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pagewalk.errors import Errno, SyscallError
from pagewalk.kernel.task import Task
from pagewalk.mm import filemap, gup, madvise, mlock, mmap, mprotect, mremap, pkeys
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
             huge_size: int | None = None, file: str | None = None, offset: int = 0) -> int:
    """mmap(2) of anonymous memory, or of the scenario file ``file`` (opened afresh: its own
    readahead state) from byte ``offset``; MAP_POPULATE faults it in (mm_populate)."""
    with _Syscall(k, task):
        opened = None
        if file is not None:
            if offset & 4095:
                raise SyscallError(Errno.EINVAL, "offset not page aligned")   # ksys_mmap_pgoff
            opened = filemap.file_open(k, k.inodes[file])
        start = mmap.do_mmap(k, task.mm, addr, length, prot, flags, huge_size,
                             file=opened, pgoff=offset >> 12)
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


# --- files (version 2) -------------------------------------------------------------------------

MS_ASYNC, MS_INVALIDATE, MS_SYNC = 1, 2, 4
#: s_maxbytes: ext4 with extents (4 KiB blocks), tmpfs MAX_LFS_FILESIZE
EXT4_MAXBYTES = (1 << 44) - 4096
MAX_LFS_FILESIZE = (1 << 63) - 1


def sys_file_create(k: Kernel, task: Task, name: str, size: int, fs: str) -> None:
    """open(O_CREAT|O_RDWR) + write(2) + fsync, or memfd_create + ftruncate: the file stays
    open for the rest of the scenario."""
    with _Syscall(k, task):
        if size > (EXT4_MAXBYTES if fs == "disk" else MAX_LFS_FILESIZE):
            raise SyscallError(Errno.EFBIG, f"{size} bytes is beyond the file system's limit")
        inode = filemap.create_file(k, name, size, fs, k.next_ino)
        k.next_ino += 1
        k.inodes[name] = inode
        if fs != "memfd":
            k.dentries.add(name)


def sys_ftruncate(k: Kernel, task: Task, name: str, size: int) -> None:
    """ftruncate(2) through the open file (do_truncate -> notify_change -> ext4_setattr /
    shmem_setattr): EINVAL for a negative length, EFBIG past s_maxbytes."""
    inode = k.inodes[name]
    with _Syscall(k, task):
        if size >= 1 << 63:
            raise SyscallError(Errno.EINVAL, "negative length")
        if size > (EXT4_MAXBYTES if inode.fs == "disk" else MAX_LFS_FILESIZE):
            raise SyscallError(Errno.EFBIG, f"{size} bytes is beyond the file system's limit")
        filemap.truncate_pagecache(k, inode, size)


def sys_fadvise_dontneed(k: Kernel, task: Task, name: str) -> None:
    """fsync(2), then posix_fadvise(POSIX_FADV_DONTNEED) of the whole file
    (generic_fadvise: nothing for shmem, whose backing device is noop_backing_dev_info)."""
    inode = k.inodes[name]
    with _Syscall(k, task):
        if inode.fs != "disk":
            return
        filemap.file_write_and_wait(k, inode)
        filemap.mapping_try_invalidate(k, inode)


def sys_unlink(k: Kernel, task: Task, name: str) -> None:
    """unlink(2): the name goes (ENOENT the second time); the open file keeps the inode."""
    with _Syscall(k, task):
        if name not in k.dentries:
            raise SyscallError(Errno.ENOENT, f"no file named {name!r}")
        k.dentries.discard(name)
        k.inodes[name].unlinked = True


def sys_msync(k: Kernel, task: Task, start: int, length: int, flags: int) -> None:
    """msync(2) (mm/msync.c): MS_SYNC writes back the dirty pages of the shared file
    mappings in the range (vfs_fsync_range); MS_ASYNC does nothing; MS_INVALIDATE is EBUSY
    on a locked VMA; a hole is ENOMEM (after the VMAs before it, unless MS_ASYNC alone)."""
    from pagewalk.mm.shmem import page_cache_of
    from pagewalk.mm.vma import find_vma
    with _Syscall(k, task):
        mm = task.mm
        if flags & ~(MS_ASYNC | MS_INVALIDATE | MS_SYNC) or start & 4095 or \
                (flags & MS_ASYNC and flags & MS_SYNC):
            raise SyscallError(Errno.EINVAL, "bad flags or unaligned start")
        end = start + ((length + 4095) & ~4095)
        if end < start or end >= 1 << 64:
            raise SyscallError(Errno.ENOMEM, "range wraps")
        if end == start:
            return
        unmapped = False
        vma = find_vma(mm, start)
        while True:
            if vma is None:
                raise SyscallError(Errno.ENOMEM, "range contains unmapped memory")
            if start < vma.start:
                if flags == MS_ASYNC:
                    raise SyscallError(Errno.ENOMEM, "range contains unmapped memory")
                start = vma.start
                if start >= end:
                    raise SyscallError(Errno.ENOMEM, "range contains unmapped memory")
                unmapped = True
            if flags & MS_INVALIDATE and vma.flags & VmFlags.LOCKED:
                raise SyscallError(Errno.EBUSY, "MS_INVALIDATE on a locked mapping")
            fstart = vma.pgoff + ((start - vma.start) >> 12)
            fend = fstart + ((min(end, vma.end) - start) >> 12)
            start = vma.end
            if flags & MS_SYNC and vma.file is not None and vma.flags & VmFlags.SHARED and \
                    vma.file.kind in ("file", "shmem"):
                filemap.file_write_and_wait(k, page_cache_of(vma), fstart, fend)
            if start >= end:
                break
            vma = find_vma(mm, start)
        if unmapped:
            raise SyscallError(Errno.ENOMEM, "range contains unmapped memory")
