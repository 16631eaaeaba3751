"""Page-table allocation and freeing, counted where the kernel counts them
(linux-mm-notes 2.2-2.5: mm_inc_nr_ptes/pmds/puds, free_pgd_range floor/ceiling)."""

from __future__ import annotations

from pagewalk.kernel import syscalls
from pagewalk.machine import Machine, MachineConfig
from pagewalk.mm import fastpath
from pagewalk.mm.types import MmStat
from pagewalk.mm.vmstat import NodeStat

RW = 3
ANON = frozenset({"private", "anonymous"})
FIXED = frozenset({"private", "anonymous", "fixed"})
NEVER = {"/sys/kernel/mm/transparent_hugepage/enabled": "never"}


def new(sysfs: dict[str, str] | None = None, **kw: object) -> tuple:  # type: ignore[type-arg]
    m = Machine(MachineConfig(ram=512 << 20, sysfs=sysfs or dict(NEVER), **kw))  # type: ignore[arg-type]
    k = m.kernel
    return k, k.spawn("main")


def vmpte_kb(task) -> int:  # type: ignore[no-untyped-def]
    return int(task.mm.stat[MmStat.PGTABLES_BYTES]) >> 10


def test_start_image_costs_28_kb_of_tables() -> None:
    _, t = new()
    assert vmpte_kb(t) == 28   # 2 PUD, 2 PMD and 3 PTE tables (scenario.md)


def test_first_page_in_an_empty_512g_slot_costs_pud_pmd_and_pte() -> None:
    k, t = new()
    base = vmpte_kb(t)
    tables = int(k.node_stat[NodeStat.NR_PAGETABLE])
    a = syscalls.sys_mmap(k, t, 0x600000000000, 4096, RW, FIXED)
    fastpath.touch(k, t, a, 4096, 4096, 1)
    assert vmpte_kb(t) - base == 12
    assert int(k.node_stat[NodeStat.NR_PAGETABLE]) - tables == 3
    b = syscalls.sys_mmap(k, t, 0x600000200000, 4096, RW, FIXED)   # next 2 MiB, same 1 GiB
    fastpath.touch(k, t, b, 4096, 4096, 1)
    assert vmpte_kb(t) - base == 16
    c = syscalls.sys_mmap(k, t, 0x600040000000, 4096, RW, FIXED)   # next 1 GiB
    fastpath.touch(k, t, c, 4096, 4096, 1)
    assert vmpte_kb(t) - base == 24


def test_munmap_frees_a_table_only_when_its_whole_range_is_free() -> None:
    """
    64 MiB, 4 KiB pages, 2 MiB-aligned:  |T0|T1|T2|...|T31|
    munmap 4 KiB           -> no table freed
    munmap 2 MiB aligned   -> one table freed (-4 kB)
    munmap 2 MiB straddling two tables -> none freed
    """
    k, t = new()
    a = syscalls.sys_mmap(k, t, 0, 64 << 20, RW, ANON)
    fastpath.touch(k, t, a, 64 << 20, 4096, 1)
    base = vmpte_kb(t)
    syscalls.sys_munmap(k, t, a + (8 << 20), 4096)
    assert vmpte_kb(t) == base
    syscalls.sys_munmap(k, t, a + (16 << 20), 2 << 20)
    assert vmpte_kb(t) == base - 4
    syscalls.sys_munmap(k, t, a + (33 << 20), 2 << 20)
    assert vmpte_kb(t) == base - 4


def test_madv_dontneed_reclaims_only_wholly_zapped_tables() -> None:
    k, t = new()
    a = syscalls.sys_mmap(k, t, 0, 64 << 20, RW, ANON)
    fastpath.touch(k, t, a, 64 << 20, 4096, 1)
    base = vmpte_kb(t)
    syscalls.sys_madvise(k, t, a + (4 << 20), 4 << 20, "dontneed")
    assert vmpte_kb(t) == base - 8          # PT_RECLAIM (6.18): 2 tables freed
    syscalls.sys_madvise(k, t, a + (9 << 20) + 4096, 2 << 20, "free")
    assert vmpte_kb(t) == base - 8          # MADV_FREE never frees tables


def test_exit_returns_every_page_and_table() -> None:
    k, t = new()
    free = int(k.node_stat[NodeStat.NR_FREE_PAGES])
    tables = int(k.node_stat[NodeStat.NR_PAGETABLE])
    a = syscalls.sys_mmap(k, t, 0, 32 << 20, RW, ANON)
    fastpath.touch(k, t, a, 32 << 20, 4096, 1)
    child = syscalls.sys_fork(k, t, "child")
    fastpath.touch(k, child, a, 32 << 20, 4096, 1)
    syscalls.sys_exit(k, child)
    syscalls.sys_munmap(k, t, a, 32 << 20)
    assert int(k.node_stat[NodeStat.NR_PAGETABLE]) == tables
    assert int(k.node_stat[NodeStat.NR_FREE_PAGES]) == free


def test_pgd_counts_in_pagetables_and_pti_doubles_it() -> None:
    """6.18 counts the PGD in PageTables: a fork adds VmPTE + 4 kB, + 8 kB with PTI."""
    for pti, pgd_kb in ((False, 4), (True, 8)):
        k, t = new(pti=pti)
        before = int(k.node_stat[NodeStat.NR_PAGETABLE])
        child = syscalls.sys_fork(k, t, "child")
        added_kb = (int(k.node_stat[NodeStat.NR_PAGETABLE]) - before) * 4
        assert added_kb == vmpte_kb(child) + pgd_kb
