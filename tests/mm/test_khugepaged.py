"""khugepaged's collapse rules (linux-mm-notes 4.5, measured on 6.18 with
scan_sleep_millisecs=100): 8 MiB with one written page per 2 MiB is collapsed when
max_ptes_none=511 and not when 510 (thp_scan_exceed_none_pte grows); two pages per 2 MiB
(510 none) collapse with 510. The `khugepaged` scenario step runs full passes."""

from __future__ import annotations

from pathlib import Path

import pytest

from pagewalk.kernel import syscalls
from pagewalk.machine import Machine, MachineConfig
from pagewalk.mm import fastpath
from pagewalk.mm.types import MmStat
from pagewalk.mm.vmstat import VmEvent
from pagewalk.scenario.runner import run_scenario
from pagewalk.scenario.schema import parse_scenario

RW = 3
ANON = frozenset({"private", "anonymous"})
MAX_NONE = "/sys/kernel/mm/transparent_hugepage/khugepaged/max_ptes_none"


def eight_mib(pages_per_2m: int, max_ptes_none: str):  # type: ignore[no-untyped-def]
    m = Machine(MachineConfig(ram=256 << 20, sysfs={MAX_NONE: max_ptes_none}))
    k = m.kernel
    t = k.spawn("main")
    a = syscalls.sys_mmap(k, t, 0, 8 << 20, RW, ANON)
    for block in range(4):
        fastpath.touch(k, t, a + (block << 21), pages_per_2m * 4096, 4096, 1)
    syscalls.sys_madvise(k, t, a, 8 << 20, "hugepage")
    return k, t


@pytest.mark.parametrize("pages,max_none,collapsed", [(1, "511", 4), (1, "510", 0), (2, "510", 4)])
def test_max_ptes_none_decides(pages: int, max_none: str, collapsed: int) -> None:
    from pagewalk.mm import khugepaged
    k, t = eight_mib(pages, max_none)
    rss = int(t.mm.stat[MmStat.MM_ANONPAGES])
    khugepaged.run_scans(k, 1)
    assert k.vm_events[VmEvent.THP_COLLAPSE_ALLOC] == collapsed
    assert k.vm_events[VmEvent.THP_SCAN_EXCEED_NONE_PTE] == (4 if not collapsed else 0)
    # a collapse fills the none PTEs: RSS grows by 4 KiB for each of them
    assert int(t.mm.stat[MmStat.MM_ANONPAGES]) - rss == collapsed * (512 - pages)


def test_khugepaged_ignores_vmas_thp_is_not_enabled_for() -> None:
    from pagewalk.mm import khugepaged
    k, _ = eight_mib(512, "511")
    k.set_knob("/sys/kernel/mm/transparent_hugepage/enabled", "never")
    khugepaged.run_scans(k, 2)
    assert k.vm_events[VmEvent.THP_COLLAPSE_ALLOC] == 0


def test_khugepaged_step_in_a_scenario() -> None:
    text = """name: khugepaged-step
steps:
  - mmap: {name: a, length: 8MiB}
  - touch: {region: a}
  - madvise: {region: a, advice: hugepage}
  - measure: before
  - khugepaged: {scans: 1}
  - measure: after
"""
    report = run_scenario(parse_scenario(text, "khugepaged-step.yaml")).to_json()
    before, after = (m["processes"]["main"] for m in report["measurements"])
    assert before["AnonHugePages"] == 0 and after["AnonHugePages"] == 8192
    assert after["VmPTE"] == before["VmPTE"]       # the old PTE tables become the deposits
    assert report["measurements"][1]["system"]["thp_collapse_alloc"] == 4


def test_docs_describe_the_simulator_only_step() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert "khugepaged: {scans: N}" in readme


SHMEM_32K = "/sys/kernel/mm/transparent_hugepage/hugepages-32kB/shmem_enabled"
SHARED_FIXED = frozenset({"shared", "anonymous", "fixed"})


def test_collapse_of_mthp_shmem_folios_frees_each_whole_folio() -> None:
    """MADV_COLLAPSE of 2 MiB of shmem held in 32 KiB folios (hpage_collapse_scan_file's
    refcount check is per folio: nr_pages for the cache plus one per mapping): each old
    folio is unmapped whole and freed with all its references, so MemFree only gains the
    retracted PTE table (the THP in, 64 folios of 8 pages out), Shmem stays at
    2 MiB, ShmemHugePages becomes 2 MiB, and every page's data is at its index."""
    from pagewalk.proc.meminfo import meminfo
    k = Machine(MachineConfig(ram=256 << 20, sysfs={SHMEM_32K: "always"})).kernel
    t = k.spawn("main")
    a = syscalls.sys_mmap(k, t, 0x600000000000, 2 << 20, RW, SHARED_FIXED)
    fastpath.touch(k, t, a, 2 << 20, 4096, 0)
    for i in range(0, 512, 37):                        # a mark in some pages of many folios
        k.physmem.write_bytes(k.user_access(t, a + i * 4096 + 8, 1), bytes([i % 251 + 1]))
    before = meminfo(k)
    assert (before["Shmem"], before["ShmemHugePages"]) == (2048, 0)
    syscalls.sys_madvise(k, t, a, 2 << 20, "collapse")
    after = meminfo(k)
    assert (after["Shmem"], after["ShmemHugePages"], after["ShmemPmdMapped"]) == (2048, 2048, 2048)
    assert before["MemFree"] - after["MemFree"] == -4   # only the retracted PTE table freed
    assert k.vm_events[VmEvent.THP_COLLAPSE_ALLOC] == 1
    assert int(t.mm.stat[MmStat.MM_SHMEMPAGES]) == 512
    for i in range(0, 512, 37):
        assert k.physmem.read_bytes(k.user_access(t, a + i * 4096 + 8, 0), 1) == \
            bytes([i % 251 + 1])


def test_collapse_in_a_child_without_page_tables_maps_by_pmd() -> None:
    """fork copies no page tables for a shared mapping without anon_vma; the child's
    MADV_COLLAPSE unmaps the parent's pages, retracts its PTE table, and (6.18, measured:
    collapse-shmem-child-no-tables) allocates the child's missing PUD and PMD tables to map
    the THP by PMD (set_huge_pmd)."""
    k = Machine(MachineConfig(ram=256 << 20)).kernel
    t = k.spawn("main")
    a = syscalls.sys_mmap(k, t, 0x600000200000, 2 << 20, RW,
                          frozenset({"shared", "anonymous", "fixed", "populate"}))
    child = syscalls.sys_fork(k, t, "child")
    parent_pte = int(t.mm.stat[MmStat.PGTABLES_BYTES])
    child_pte = int(child.mm.stat[MmStat.PGTABLES_BYTES])
    syscalls.sys_madvise(k, child, a, 2 << 20, "collapse")
    assert int(t.mm.stat[MmStat.PGTABLES_BYTES]) == parent_pte - 4096
    assert int(child.mm.stat[MmStat.PGTABLES_BYTES]) == child_pte + 2 * 4096
    assert int(child.mm.stat[MmStat.MM_SHMEMPAGES]) == 512
    assert int(t.mm.stat[MmStat.MM_SHMEMPAGES]) == 0
