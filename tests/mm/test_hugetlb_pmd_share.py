"""hugetlb walks over PROT_NONE leaves and shared PMD tables (mm/hugetlb.c).

PROT_NONE leaves are pte_present() and not huge_pte_none(): zap, fork and mprotect treat
them as mapped. A shared mapping covering a whole PUD range shares its PMD table with
other mms (huge_pmd_share); zap, mprotect and VMA splits there only unshare
(huge_pmd_unshare). The measured scenarios (tests/data/measured/hugetlb-pmd-share-*,
hugetlb-protnone-fork, hugetlb-fixed-replace-enomem) are checked here step by step
against the invariants; their figures against the kernel in test_kernel_conformance."""

from __future__ import annotations

from pathlib import Path

import pytest

from pagewalk.kernel import syscalls
from pagewalk.kernel.kernel import Kernel
from pagewalk.kernel.task import Task
from pagewalk.machine import Machine, MachineConfig
from pagewalk.mm.types import MmStat
from pagewalk.mm.vmstat import NodeStat
from pagewalk.scenario.runner import ScenarioRun
from pagewalk.scenario.schema import load_scenario
from tests import invariants as inv

MEASURED = Path(__file__).resolve().parents[1] / "data" / "measured"
SCENARIOS = Path(__file__).resolve().parents[1] / "data" / "scenarios"
POOL = "/proc/sys/vm/nr_hugepages"
GiB = 1 << 30
HPAGE = 2 << 20
BASE = 0x640000000000                 # PUD-aligned
SHARED = frozenset({"shared", "anonymous", "hugetlb", "fixed"})
PRIVATE = frozenset({"private", "anonymous", "hugetlb", "fixed"})
READ, WRITE = 0, 1


@pytest.mark.parametrize("path", [
    MEASURED / "hugetlb-pmd-share-parent-munmap.yaml",
    MEASURED / "hugetlb-pmd-share-child-exit.yaml",
    MEASURED / "hugetlb-pmd-share-mprotect-part.yaml",
    MEASURED / "hugetlb-pmd-share-2g.yaml",
    MEASURED / "hugetlb-pmd-share-main-exits.yaml",
    MEASURED / "hugetlb-protnone-fork.yaml",
    MEASURED / "hugetlb-fixed-replace-enomem.yaml",
    SCENARIOS / "found-hugetlb-protnone-zap.yaml",
    SCENARIOS / "found-hugetlb-fixed-replace-reserve.yaml",
], ids=lambda p: p.stem)
def test_tables_frames_and_pools_add_up_at_every_step(path: Path) -> None:
    """After every step: each table frame is reached once per sharer, VmPTE counts the
    shared tables in every sharer, pool pages are mapped once per entry, RSS follows the
    tables (HugetlbPages does not once tables were shared: it counts faults)."""
    run = ScenarioRun(load_scenario(path))
    k = run.kernel
    for step in run.scenario.steps:
        run.run_step(step)
        walks = inv.walk_all(k)
        for walk in walks:
            inv.check_rss(k, walk, hugetlb="pmd-share" not in path.stem)
            inv.check_vmpte(k, walk)
        inv.check_frames(k, walks, inv.free_frames(k))
        inv.check_rmap(k, walks)
        inv.check_hugetlb(k, walks)
    if "pmd-share" not in path.stem:
        assert not k.pgtables.pmd_share_count, "a PMD table is shared by a private mapping"


def machine(pool: int) -> tuple[Kernel, inv.Baseline, Task]:
    k = Machine(MachineConfig(ram=4 * GiB)).kernel
    baseline = inv.Baseline.capture(k)                   # before the pool: it is cached
    k.set_knob(POOL, str(pool))
    return k, baseline, k.spawn("main")


def touch(k: Kernel, task: Task, start: int, length: int, access: int) -> None:
    for vaddr in range(start, start + length, HPAGE):
        k.user_access(task, vaddr, access)


def check_tables(k: Kernel, baseline: inv.Baseline) -> None:
    walks = inv.walk_all(k)
    inv.check_frames(k, walks, inv.free_frames(k))
    inv.check_nr_pagetable(k, walks, baseline)
    for walk in walks:
        inv.check_vmpte(k, walk)
    inv.check_hugetlb(k, walks)


def test_a_shared_table_is_freed_by_its_last_user() -> None:
    """Three mms share one PMD table: NR_PAGETABLE counts its frame once, each sharer's
    VmPTE counts it (mm_inc_nr_pmds); exits unshare it until the last user frees it."""
    k, baseline, main = machine(512)
    syscalls.sys_mmap(k, main, BASE, GiB, 3, SHARED)
    touch(k, main, BASE, GiB, WRITE)
    tables = int(k.node_stat[NodeStat.NR_PAGETABLE])
    children = [syscalls.sys_fork(k, main, name) for name in ("c1", "c2")]
    forked = int(k.node_stat[NodeStat.NR_PAGETABLE])
    for child in children:
        touch(k, child, BASE, GiB, READ)
        assert child.min_flt == 1                        # the fault that shares the table
        assert child.mm.stat[MmStat.HUGETLB_USAGE] == 0
        assert child.mm.stat[MmStat.PGTABLES_BYTES] == main.mm.stat[MmStat.PGTABLES_BYTES]
    # a PUD table each (fork copies no table of a shared hugetlb VMA), no PMD table
    assert int(k.node_stat[NodeStat.NR_PAGETABLE]) == forked + 2 and forked > tables
    (pmd_table, sharers), = k.pgtables.pmd_share_count.items()
    assert sharers == 2
    check_tables(k, baseline)
    syscalls.sys_exit(k, main)                           # the table's first user goes first
    assert k.pgtables.pmd_share_count == {pmd_table: 1}
    syscalls.sys_exit(k, children[1])
    assert not k.pgtables.pmd_share_count
    check_tables(k, baseline)
    assert k.hugetlb.default.free_huge_pages == 0        # c1 still maps every page
    syscalls.sys_exit(k, children[0])
    assert k.hugetlb.default.free_huge_pages == 512
    inv.check_all_freed(k, baseline)


def test_only_a_shared_mapping_covering_the_pud_range_shares() -> None:
    """want_pmd_share(): VM_MAYSHARE and the whole PUD range inside the VMA. A private
    mapping, and a shared one 2 MiB off the PUD boundary, fault every page in the child."""
    k, baseline, main = machine(1024)
    syscalls.sys_mmap(k, main, BASE, GiB, 3, PRIVATE)
    syscalls.sys_mmap(k, main, BASE + 2 * GiB + HPAGE, GiB, 3, SHARED)
    touch(k, main, BASE, GiB, WRITE)
    touch(k, main, BASE + 2 * GiB + HPAGE, GiB, WRITE)
    child = syscalls.sys_fork(k, main, "c")
    touch(k, child, BASE, GiB, READ)                     # copied at fork: no fault
    touch(k, child, BASE + 2 * GiB + HPAGE, GiB, READ)
    assert child.min_flt == 512
    assert not k.pgtables.pmd_share_count
    check_tables(k, baseline)
    syscalls.sys_exit(k, child)
    syscalls.sys_exit(k, main)
    inv.check_all_freed(k, baseline)


def test_prot_none_pages_are_zapped_and_copied() -> None:
    """PROT_NONE huge leaves are not none: fork copies them (the child's HugetlbPages
    counts them), MADV_DONTNEED and munmap free them, mprotect makes them usable again."""
    k, baseline, main = machine(4)
    syscalls.sys_mmap(k, main, BASE, 4 * HPAGE, 3, PRIVATE)
    touch(k, main, BASE, 4 * HPAGE, WRITE)
    syscalls.sys_mprotect(k, main, BASE, 4 * HPAGE, 0)
    child = syscalls.sys_fork(k, main, "c")
    assert child.mm.stat[MmStat.HUGETLB_USAGE] == 4 * 512
    syscalls.sys_mprotect(k, child, BASE, 4 * HPAGE, 1)
    touch(k, child, BASE, 4 * HPAGE, READ)
    assert child.min_flt == 0                            # the copied leaves are present now
    syscalls.sys_exit(k, child)
    syscalls.sys_madvise(k, main, BASE, HPAGE, "dontneed")
    assert k.hugetlb.default.free_huge_pages == 1
    syscalls.sys_munmap(k, main, BASE, 4 * HPAGE)
    assert k.hugetlb.default.free_huge_pages == 4
    check_tables(k, baseline)
    syscalls.sys_exit(k, main)
    inv.check_all_freed(k, baseline)
