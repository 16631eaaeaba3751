"""shmem THPs of shared anonymous memory (mm/shmem.c shmem_get_folio_gfp, mm/memory.c
finish_fault/do_set_pmd): the counters the kernel keeps for them, and their lifetime.

The fault counts, RSS and placement are measured scenarios (tests/data/measured/shmem-*);
these tests hold the other figures to the places the kernel bumps them: thp_file_alloc in
shmem_get_folio_gfp (never thp_fault_alloc, which is anonymous memory's), thp_file_mapped
in do_set_pmd, ShmemHugePages (NR_SHMEM_THPS) while the folio is in the page cache,
ShmemPmdMapped (NR_SHMEM_PMDMAPPED) while some PMD maps it, smaps' ShmemPmdMapped.
"""

from __future__ import annotations

import pytest

from pagewalk.kernel import syscalls
from pagewalk.kernel.kernel import Kernel
from pagewalk.kernel.task import Task
from pagewalk.machine import Machine, MachineConfig
from pagewalk.mm import fastpath, shmem
from pagewalk.mm.types import MmStat
from pagewalk.mm.vmstat import VmEvent
from pagewalk.proc import task_mmu
from pagewalk.proc.meminfo import meminfo

THP = "/sys/kernel/mm/transparent_hugepage"
RW = 3
SHARED = frozenset({"shared", "anonymous"})


def machine(**sysfs: str) -> tuple[Kernel, Task]:
    """A kernel with knobs under transparent_hugepage/ (``hugepages_64kB__shmem_enabled``
    names hugepages-64kB/shmem_enabled)."""
    knobs = {f"{THP}/" + path.replace("__", "/").replace("hugepages_", "hugepages-"): value
             for path, value in sysfs.items()}
    k = Machine(MachineConfig(ram=256 << 20, sysfs=knobs)).kernel
    return k, k.spawn("main")


def test_pmd_shmem_folio_counters_from_fault_to_munmap() -> None:
    """A write fault under shmem_enabled=always allocates a 2 MiB shmem folio
    (thp_file_alloc, ShmemHugePages) and maps it by PMD (thp_file_mapped, ShmemPmdMapped,
    smaps ShmemPmdMapped, RssShmem); thp_fault_alloc stays 0. munmap unmaps it and, as the
    last mapping of the unlinked inode, frees it: every figure back to 0."""
    k, t = machine(shmem_enabled="always")
    free = meminfo(k)["MemFree"]
    a = syscalls.sys_mmap(k, t, 0, 4 << 20, RW, SHARED)
    assert a % (2 << 20) == 0
    fastpath.touch(k, t, a, 4 << 20, 4096, 1)
    assert t.min_flt == 2
    assert k.vm_events[VmEvent.THP_FILE_ALLOC] == 2
    assert k.vm_events[VmEvent.THP_FILE_MAPPED] == 2
    assert k.vm_events[VmEvent.THP_FAULT_ALLOC] == 0
    info = meminfo(k)
    assert (info["ShmemHugePages"], info["ShmemPmdMapped"], info["Shmem"]) == (4096, 4096, 4096)
    assert info["AnonHugePages"] == 0
    assert task_mmu.smaps_rollup(k, t).shmem_thp == 4 << 20
    assert int(t.mm.stat[MmStat.MM_SHMEMPAGES]) == 1024
    syscalls.sys_munmap(k, t, a, 4 << 20)
    info = meminfo(k)
    assert (info["ShmemHugePages"], info["ShmemPmdMapped"], info["Shmem"]) == (0, 0, 0)
    assert info["MemFree"] == free


def test_split_pmd_keeps_the_folio_in_the_page_cache() -> None:
    """MADV_DONTNEED of part of a PMD-mapped shmem THP splits the PMD (thp_split_pmd; the
    PMD is cleared, no PTE table takes its place): ShmemPmdMapped drops, ShmemHugePages
    stays; the next fault maps the same folio by PMD again."""
    k, t = machine(shmem_enabled="always")
    a = syscalls.sys_mmap(k, t, 0, 2 << 20, RW, SHARED)
    fastpath.touch(k, t, a, 2 << 20, 4096, 1)
    syscalls.sys_madvise(k, t, a + (64 << 10), 64 << 10, "dontneed")
    assert k.vm_events[VmEvent.THP_SPLIT_PMD] == 1
    info = meminfo(k)
    assert (info["ShmemHugePages"], info["ShmemPmdMapped"]) == (2048, 0)
    assert int(t.mm.stat[MmStat.MM_SHMEMPAGES]) == 0
    fastpath.touch(k, t, a, 4096, 4096, 0)
    assert (t.min_flt, k.vm_events[VmEvent.THP_FILE_ALLOC]) == (2, 1)
    assert meminfo(k)["ShmemPmdMapped"] == 2048


@pytest.mark.parametrize(("mode", "madvise", "pmd"), [
    ("always", None, True), ("within_size", None, True), ("advise", None, False),
    ("advise", "hugepage", True), ("never", "hugepage", False), ("deny", "hugepage", False),
    ("force", None, True), ("always", "nohugepage", False),
])
def test_shmem_enabled_decides_the_pmd_folio(mode: str, madvise: str | None, pmd: bool) -> None:
    """shmem_allowable_huge_orders() with hugepages-2048kB inheriting: always, force and
    within_size (2 MiB inside i_size) allow it; advise with VM_HUGEPAGE; never and deny
    never; VM_NOHUGEPAGE forbids it (vma_thp_disabled)."""
    k, t = machine(shmem_enabled=mode)
    a = syscalls.sys_mmap(k, t, 0, 2 << 20, RW, SHARED)
    if madvise is not None:
        syscalls.sys_madvise(k, t, a, 2 << 20, madvise)
    fastpath.touch(k, t, a, 2 << 20, 4096, 1)
    assert t.min_flt == (1 if pmd else 512)
    assert meminfo(k)["ShmemHugePages"] == (2048 if pmd else 0)


def test_allowable_orders_follow_the_per_size_knobs() -> None:
    """Anonymous shmem: always, within_size (when the order's block ends within i_size),
    advise (with VM_HUGEPAGE) and inherit (when the top level allows) add their sizes;
    force gives the inheriting sizes only; deny none (shmem_allowable_huge_orders)."""
    k, t = machine(hugepages_64kB__shmem_enabled="always",
                   hugepages_32kB__shmem_enabled="within_size",
                   hugepages_16kB__shmem_enabled="advise")
    a = syscalls.sys_mmap(k, t, 0, 2 << 20, RW, SHARED)
    vma = t.mm.vmas[[v.start for v in t.mm.vmas].index(a)]
    file = vma.file
    orders = shmem.shmem_allowable_huge_orders
    assert orders(k, file, vma, 0) == 1 << 4 | 1 << 3            # 2048kB inherits never
    assert orders(k, file, vma, 511) == 1 << 4 | 1 << 3           # 32 KiB block ends at 512
    file.size = 511 << 12                                          # i_size cuts the last block
    assert orders(k, file, vma, 511) == 1 << 4
    file.size = 2 << 20
    syscalls.sys_madvise(k, t, a, 2 << 20, "hugepage")
    assert orders(k, file, vma, 0) == 1 << 4 | 1 << 3 | 1 << 2
    k.set_knob(f"{THP}/shmem_enabled", "always")
    assert orders(k, file, vma, 0) == 1 << 9 | 1 << 4 | 1 << 3 | 1 << 2
    k.set_knob(f"{THP}/shmem_enabled", "force")
    assert orders(k, file, vma, 0) == 1 << 9
    k.set_knob(f"{THP}/shmem_enabled", "deny")
    assert orders(k, file, vma, 0) == 0


def test_child_maps_the_parents_thp_by_pmd() -> None:
    """fork copies no page table of a shared VMA without anon_vma; the child's read fault
    finds the PMD-sized folio in the page cache (filemap_map_pmd): one fault per 2 MiB,
    ShmemPmdMapped counts the folio once, the folio holds a reference per PMD mapping."""
    k, t = machine(shmem_enabled="always")
    a = syscalls.sys_mmap(k, t, 0, 2 << 20, RW, SHARED)
    fastpath.touch(k, t, a, 2 << 20, 4096, 1)
    child = syscalls.sys_fork(k, t, "child")
    fastpath.touch(k, child, a, 2 << 20, 4096, 0)
    assert child.min_flt == 1
    assert int(child.mm.stat[MmStat.MM_SHMEMPAGES]) == 512
    assert meminfo(k)["ShmemPmdMapped"] == 2048
    head = next(iter(t.mm.vmas[[v.start for v in t.mm.vmas].index(a)].file.pages.values()))
    assert k.entire_mapcount[head] == 2 and int(k.memmap.refcount[head]) == 512 + 2


@pytest.mark.parametrize(("mode", "eligible", "pmd_mapped_kb"),
                         [("always", 1, 4096), ("advise", 0, 0), ("never", 0, 0)])
def test_smaps_of_a_shmem_mapping(mode: str, eligible: int, pmd_mapped_kb: int) -> None:
    """/proc/PID/smaps of a written 4 MiB shared anonymous mapping, as the reference machine
    printed it: ShmemPmdMapped (smaps_pmd_entry, swap-backed folio) and THPeligible
    ("%8u": __thp_vma_allowable_orders -> shmem_allowable_huge_orders at vm_pgoff)."""
    k, t = machine(shmem_enabled=mode)
    a = syscalls.sys_mmap(k, t, 0, 4 << 20, RW, SHARED)
    fastpath.touch(k, t, a, 4 << 20, 4096, 1)
    lines = task_mmu.format_smaps(k, t).split("\n")
    first = next(i for i, line in enumerate(lines) if line.startswith(f"{a:08x}-"))
    block = lines[first: first + 30]
    assert f"ShmemPmdMapped: {pmd_mapped_kb:>8} kB" in block
    assert f"THPeligible:    {eligible:>8}" in block
    assert "Rss:                4096 kB" in block
