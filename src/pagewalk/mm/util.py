"""Overcommit accounting (mm/util.c: vm_commit_limit, __vm_enough_memory;
include/linux/mman.h: vm_acct_memory, vm_unacct_memory).

vm_committed_as (Committed_AS) is ``Kernel.committed_pages``: VM_ACCOUNT mappings and
shmem_acct_size charge it; ``/proc/sys/vm/overcommit_memory`` decides what may be
committed (0: heuristic, 1: always, 2: never beyond CommitLimit).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pagewalk.errors import Errno, SyscallError

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel
    from pagewalk.mm.types import MmStruct

OVERCOMMIT_MEMORY = "/proc/sys/vm/overcommit_memory"
OVERCOMMIT_RATIO = "/proc/sys/vm/overcommit_ratio"


def vm_commit_limit(k: Kernel) -> int:
    """vm_commit_limit(): (totalram - hugetlb) * overcommit_ratio / 100 + swap, in pages."""
    ratio = int(k.knobs.get(OVERCOMMIT_RATIO))
    return (k.totalram_pages - k.hugetlb.total_pages()) * ratio // 100


def __vm_enough_memory(k: Kernel, mm: MmStruct, pages: int) -> None:
    """__vm_enough_memory(): raise ENOMEM when the overcommit policy refuses ``pages``."""
    mode = k.knobs.get(OVERCOMMIT_MEMORY)
    if mode == "1":
        return
    if mode == "0":
        if pages > k.totalram_pages:
            raise SyscallError(Errno.ENOMEM, "request exceeds total RAM (overcommit heuristic)")
        return
    allowed = vm_commit_limit(k)
    # Root (CAP_SYS_ADMIN) keeps no admin reserve; user_reserve_kbytes defaults to
    # min(3% of free memory, 128 MiB) (init_user_reserve), at most total_vm / 32 of it.
    user_reserve = min(k.totalram_pages // 32, (128 << 20) >> 12)
    allowed -= min(mm.total_vm // 32, user_reserve)
    if k.committed_pages + pages > allowed:
        raise SyscallError(Errno.ENOMEM, "over the commit limit (overcommit_memory=2)")


def vm_acct_memory(k: Kernel, pages: int) -> None:
    """vm_acct_memory(): charge Committed_AS."""
    k.committed_pages += pages


def vm_unacct_memory(k: Kernel, pages: int) -> None:
    """vm_unacct_memory(): give back a charge."""
    k.committed_pages -= pages
