"""The kernel's memory-management objects (include/linux/mm_types.h, include/linux/mm.h).

``Vma`` is a vm_area_struct, ``MmStruct`` an mm_struct. Per-mm counters that compiled
code bumps (RSS by type, pgtables_bytes) live in one small NumPy array, ``MmStruct.stat``.
"""

from __future__ import annotations

import enum
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel


class VmFlags(enum.IntFlag):
    """vm_flags bits (include/linux/mm.h)."""

    NONE = 0
    READ = 0x1
    WRITE = 0x2
    EXEC = 0x4
    SHARED = 0x8
    MAYREAD = 0x10
    MAYWRITE = 0x20
    MAYEXEC = 0x40
    MAYSHARE = 0x80
    GROWSDOWN = 0x100
    PFNMAP = 0x400
    LOCKED = 0x2000
    SEQ_READ = 0x8000              # VM_SEQ_READ: MADV_SEQUENTIAL
    RAND_READ = 0x10000            # VM_RAND_READ: MADV_RANDOM
    IO = 0x4000
    DONTCOPY = 0x20000
    DONTEXPAND = 0x40000
    LOCKONFAULT = 0x80000          # VM_LOCKONFAULT: mlock2(MLOCK_ONFAULT), mlockall(MCL_ONFAULT)
    ACCOUNT = 0x100000
    NORESERVE = 0x200000
    HUGETLB = 0x400000
    MIXEDMAP = 0x10000000
    HUGEPAGE = 0x20000000
    NOHUGEPAGE = 0x40000000
    SOFTDIRTY = 0x8000000
    DONTDUMP = 0x4000000
    PKEY_BIT0 = 1 << 32              # VM_HIGH_ARCH_0..3: the VMA's protection key (x86)
    PKEY_BIT1 = 1 << 33
    PKEY_BIT2 = 1 << 34
    PKEY_BIT3 = 1 << 35


VM_STACK = VmFlags.GROWSDOWN
VM_LOCKED_MASK = VmFlags.LOCKED | VmFlags.LOCKONFAULT
VM_ACCESS_FLAGS = VmFlags.READ | VmFlags.WRITE | VmFlags.EXEC
VM_PKEY_SHIFT = 32
ARCH_VM_PKEY_FLAGS = VmFlags.PKEY_BIT0 | VmFlags.PKEY_BIT1 | VmFlags.PKEY_BIT2 | VmFlags.PKEY_BIT3
# VMA_IGNORE_MERGE_FLAGS: flags that do not stop two VMAs from merging (mm/vma.h).
VMA_IGNORE_MERGE_FLAGS = VmFlags.SOFTDIRTY


def is_cow_mapping(flags: VmFlags) -> bool:
    """is_cow_mapping() (include/linux/mm.h): private and may be written."""
    return flags & (VmFlags.SHARED | VmFlags.MAYWRITE) == VmFlags.MAYWRITE


class FaultFlags(enum.IntFlag):
    """enum fault_flag (include/linux/mm_types.h)."""

    WRITE = 1 << 0
    USER = 1 << 6
    INSTRUCTION = 1 << 8
    REMOTE = 1 << 7       # GUP on behalf of another path (populate): no perf accounting


class VmFault(enum.IntFlag):
    """vm_fault_t results (include/linux/mm_types.h)."""

    OK = 0
    OOM = 1 << 0
    SIGBUS = 1 << 1
    MAJOR = 1 << 2
    SIGSEGV = 1 << 6
    NOPAGE = 1 << 8
    RETRY = 1 << 10              # the handler dropped the lock: the fault runs again
    FALLBACK = 1 << 11
    ERROR = OOM | SIGBUS | SIGSEGV


class MmStat(enum.IntEnum):
    """Indexes of MmStruct.stat: the rss_stat counters (enum MM_*) and pgtables_bytes."""

    MM_FILEPAGES = 0
    MM_ANONPAGES = 1
    MM_SWAPENTS = 2
    MM_SHMEMPAGES = 3
    PGTABLES_BYTES = 4   # mm->pgtables_bytes (VmPTE)
    HUGETLB_USAGE = 5    # mm->hugetlb_usage, in 4 KiB pages
    NR_STATS = 6


class AnonVma:
    """An anon_vma: identity only (two VMAs merge only with compatible anon_vmas)."""

    __slots__ = ("root",)

    def __init__(self, root: AnonVma | None = None) -> None:
        self.root = root or self


class VmaFile(Protocol):
    """What a VMA's file offers the VMA code: a struct file with its inode's page cache
    and the vm_operations_struct hooks pagewalk models. mm/shmem.py PageCacheFile (shmem,
    the program file, the vdso), mm/filemap.py File (an open scenario file) and
    mm/hugetlb.py HugetlbFile implement it."""

    @property
    def kind(self) -> str:
        """"shmem", "file", "vdso" or "hugetlb"."""
        ...

    @property
    def pages(self) -> MutableMapping[int, int]:
        """The inode's page cache: file index -> pfn."""
        ...

    @property
    def map_name(self) -> str:
        """What /proc/PID/maps prints in the path column of a new mapping."""
        ...

    def vma_close(self, k: Kernel, vma: Vma) -> None:
        """vm_ops->close: ``vma`` is gone (munmap, a replacing MAP_FIXED, exit)."""
        ...

    def may_split(self, vma: Vma, addr: int) -> None:
        """vm_ops->may_split: raise EINVAL if ``vma`` may not be cut at ``addr``."""
        ...


@dataclass(slots=True, eq=False)
class Vma:
    """A vm_area_struct: the half-open range [start, end) of one mapping."""

    start: int
    end: int
    flags: VmFlags
    pgoff: int                       # in pages; anonymous private: start >> PAGE_SHIFT
    page_prot: int                   # vm_page_prot: PTE protection bits (hw/pgtable_types)
    anon_vma: AnonVma | None = None  # set on the first anonymous write fault (anon_vma_prepare)
    file: VmaFile | None = None      # None: anonymous (or a special mapping without pages)
    name: str = ""                   # what /proc/PID/maps prints in the path column
    special: bool = False            # vdso/vvar: _install_special_mapping
    # hugetlb HPAGE_RESV_UNMAPPED: the reservation owner took a page from this (child's)
    # private mapping to complete its COW; a later no-page fault here is SIGBUS
    hugetlb_resv_unmapped: bool = False
    # anon_vma_chain: every anon_vma this VMA's pages may belong to; more than one once the
    # VMA was forked from a parent (vma_had_uncowed_parents)
    anon_vma_chain: tuple[AnonVma, ...] = ()
    vm_mm: MmStruct | None = field(default=None, repr=False)   # set by vma_insert

    @property
    def length(self) -> int:
        return self.end - self.start

    def is_anonymous(self) -> bool:
        """vma_is_anonymous(): no file and no vm_ops (private anonymous memory)."""
        return self.file is None and not self.special

    def is_hugetlb(self) -> bool:
        return bool(self.flags & VmFlags.HUGETLB)

    def is_shmem(self) -> bool:
        return self.file is not None and self.file.kind == "shmem"

    def contains(self, vaddr: int) -> bool:
        return self.start <= vaddr < self.end


@dataclass(slots=True, eq=False)
class MmStruct:
    """An mm_struct: the VMAs of one address space, its PGD and its counters."""

    pgd_pfn: int                     # kernel-mode PGD (with PTI the user PGD is pgd_pfn + 1)
    pgd_order: int                   # 0, or 1 with PTI (pgd_allocation_order())
    mmap_base: int
    task_size: int                   # TASK_SIZE: the top of user space (128 TiB or 64 PiB - 4 KiB)
    vmas: list[Vma] = field(default_factory=list)   # sorted by start, non-overlapping
    stat: npt.NDArray[np.int64] = field(
        default_factory=lambda: np.zeros(int(MmStat.NR_STATS), dtype=np.int64))
    total_vm: int = 0                # pages
    data_vm: int = 0
    exec_vm: int = 0
    stack_vm: int = 0
    locked_vm: int = 0
    pinned_vm: int = 0
    hiwater_rss: int = 0             # pages
    hiwater_vm: int = 0              # pages
    start_code: int = 0
    end_code: int = 0
    start_brk: int = 0
    brk: int = 0
    thp_disable: bool = False        # MMF_DISABLE_THP (prctl)
    khugepaged_registered: bool = False
    users: int = 1
    # mm->context (init_new_context_pkeys): key 0 is allocated implicitly; -1: no key yet
    pkey_allocation_map: int = 0x1
    execute_only_pkey: int = -1
    def_flags: VmFlags = VmFlags.NONE   # mm->def_flags: VM_LOCKED(|VM_LOCKONFAULT) after MCL_FUTURE

    def get_rss(self) -> int:
        """get_mm_rss(): resident pages (file + anon + shmem)."""
        s = self.stat
        return int(s[MmStat.MM_FILEPAGES] + s[MmStat.MM_ANONPAGES] + s[MmStat.MM_SHMEMPAGES])

    def update_hiwater_rss(self) -> None:
        """update_hiwater_rss(): called before RSS drops."""
        rss = self.get_rss()
        self.hiwater_rss = max(self.hiwater_rss, rss)

    def update_hiwater_vm(self) -> None:
        self.hiwater_vm = max(self.hiwater_vm, self.total_vm)
