"""``--show PATH``: every known path renders the file as the kernel's show handler prints
it, views never change the kernel, and an unknown path is a ScenarioError naming what is
known (proc/render.py)."""

from __future__ import annotations

import pytest

from pagewalk.errors import ScenarioError
from pagewalk.kernel import syscalls
from pagewalk.kernel.kernel import Kernel
from pagewalk.kernel.knobs import KNOBS
from pagewalk.kernel.task import Task
from pagewalk.machine import Machine
from pagewalk.mm import fastpath
from pagewalk.proc import task_mmu
from pagewalk.proc.meminfo import format_meminfo
from pagewalk.proc.render import FIXED_VIEWS, known_views, render_path
from pagewalk.proc.sar import format_sar
from pagewalk.proc.vmstat import format_buddyinfo, format_vmstat

THP = "/sys/kernel/mm/transparent_hugepage"
POOL_2M = "/sys/kernel/mm/hugepages/hugepages-2048kB"
ANON_PRIVATE = frozenset({"private", "anonymous"})
MiB = 1 << 20


def boot() -> tuple[Kernel, Task]:
    k = Machine().kernel
    return k, k.spawn("main")


def test_fixed_views() -> None:
    k, _ = boot()
    assert render_path(k, "/proc/meminfo") == format_meminfo(k)
    assert render_path(k, "/proc/vmstat") == format_vmstat(k)
    assert render_path(k, "/proc/buddyinfo") == format_buddyinfo(k)
    assert render_path(k, "sar") == render_path(k, "sar -r ALL") == format_sar(k)
    assert render_path(k, "sar  -r ALL ") == format_sar(k)


@pytest.mark.parametrize("name", ["status", "maps", "smaps", "smaps_rollup"])
def test_process_files_by_name_or_pid(name: str) -> None:
    """/proc/main/... and /proc/<its pid>/... are the same file, task_mmu's text."""
    k, task = boot()
    expected = {
        "status": task_mmu.format_status(task), "maps": task_mmu.format_maps(task),
        "smaps": task_mmu.format_smaps(k, task),
        "smaps_rollup": task_mmu.format_smaps_rollup(k, task),
    }[name]
    assert render_path(k, f"/proc/main/{name}") == expected
    assert render_path(k, f"/proc/{task.pid}/{name}") == expected


@pytest.mark.parametrize(("path", "text"), [
    (f"{THP}/enabled", "always [madvise] never\n"),
    (f"{THP}/defrag", "always defer defer+madvise [madvise] never\n"),
    (f"{THP}/shmem_enabled", "always within_size advise [never] deny force\n"),
    (f"{THP}/hugepages-2048kB/enabled", "always [inherit] madvise never\n"),
    (f"{THP}/hugepages-64kB/enabled", "always inherit madvise [never]\n"),
    (f"{THP}/use_zero_page", "1\n"),
    (f"{THP}/khugepaged/max_ptes_none", "511\n"),
    ("/proc/sys/vm/overcommit_ratio", "50\n"),
    ("/proc/sys/vm/overcommit_memory", "0\n"),
])
def test_knob_files_at_boot(path: str, text: str) -> None:
    """Choice files print every option with the selected one in brackets
    (enabled_show, defrag_show, anon_enabled_show, shmem_enabled_show); numbers as "%lu\\n"."""
    k, _ = boot()
    assert render_path(k, path) == text


def test_a_written_choice_moves_the_brackets() -> None:
    k, _ = boot()
    k.set_knob(f"{THP}/enabled", "never")
    k.set_knob(f"{THP}/defrag", "defer+madvise")
    assert render_path(k, f"{THP}/enabled") == "always madvise [never]\n"
    assert render_path(k, f"{THP}/defrag") == "always defer [defer+madvise] madvise never\n"


def test_hugetlb_files_follow_the_pool() -> None:
    """Notes 6.2: pool 16, mmap 8 MiB private -> 4 reserved; the sysctl twins agree."""
    k, task = boot()
    k.set_knob("/proc/sys/vm/nr_hugepages", "16")
    syscalls.sys_mmap(k, task, 0, 8 * MiB, 3, ANON_PRIVATE | {"hugetlb"})
    files = {name: render_path(k, f"{POOL_2M}/{name}") for name in
             ("nr_hugepages", "free_hugepages", "resv_hugepages", "surplus_hugepages",
              "nr_overcommit_hugepages")}
    assert files == {"nr_hugepages": "16\n", "free_hugepages": "16\n",
                     "resv_hugepages": "4\n", "surplus_hugepages": "0\n",
                     "nr_overcommit_hugepages": "0\n"}
    assert render_path(k, "/proc/sys/vm/nr_hugepages") == "16\n"
    assert render_path(k, "/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages") == "0\n"


def test_surplus_pages_count_in_sysfs_but_not_in_the_sysctl() -> None:
    """Notes 6.2: pool 0, nr_overcommit_hugepages=4, mmap 4 MiB private -> 2 surplus pages.
    sysfs nr_hugepages shows h->nr_huge_pages (2); /proc/sys/vm/nr_hugepages shows
    max_huge_pages, the persistent pool (0)."""
    k, task = boot()
    k.set_knob("/proc/sys/vm/nr_overcommit_hugepages", "4")
    syscalls.sys_mmap(k, task, 0, 4 * MiB, 3, ANON_PRIVATE | {"hugetlb"})
    assert render_path(k, f"{POOL_2M}/nr_hugepages") == "2\n"
    assert render_path(k, f"{POOL_2M}/surplus_hugepages") == "2\n"
    assert render_path(k, f"{POOL_2M}/resv_hugepages") == "2\n"
    assert render_path(k, "/proc/sys/vm/nr_hugepages") == "0\n"
    assert render_path(k, "/proc/sys/vm/nr_overcommit_hugepages") == "4\n"


def test_mthp_stats() -> None:
    """Notes 12 #14: hugepages-64kB=always, 16 MiB written -> 64kB anon_fault_alloc 256;
    counters nothing bumped read 0."""
    k, task = boot()
    k.set_knob(f"{THP}/enabled", "never")
    k.set_knob(f"{THP}/hugepages-64kB/enabled", "always")
    addr = syscalls.sys_mmap(k, task, 0, 16 * MiB, 3, ANON_PRIVATE)
    fastpath.touch(k, task, addr, 16 * MiB, 4096, 1)
    assert render_path(k, f"{THP}/hugepages-64kB/stats/anon_fault_alloc") == "256\n"
    assert render_path(k, f"{THP}/hugepages-2048kB/stats/anon_fault_alloc") == "0\n"
    assert render_path(k, f"{THP}/hugepages-64kB/stats/swpout") == "0\n"


@pytest.mark.parametrize("path", [
    "/proc/nope",
    "/proc/meminfo/",
    "/proc/main/pagemap",
    f"{THP}/hugepages-8kB/stats/anon_fault_alloc",
    f"{THP}/hugepages-64kB/stats/nr_anon",
    "/sys/kernel/mm/hugepages/hugepages-4096kB/nr_hugepages",
    "sar -u",
])
def test_unknown_paths_name_what_is_known(path: str) -> None:
    k, _ = boot()
    with pytest.raises(ScenarioError) as err:
        render_path(k, path)
    assert str(err.value).startswith(f"unknown view {path!r}; known: /proc/meminfo, ")


def test_unknown_process_names_the_processes() -> None:
    k, task = boot()
    with pytest.raises(ScenarioError, match=r"unknown view '/proc/ghost/status'; known: "
                                            rf".*main \(pid {task.pid}\)"):
        render_path(k, "/proc/ghost/status")
    with pytest.raises(ScenarioError):
        render_path(k, "/proc/99999/maps")


def test_known_views_cover_fixed_views_patterns_and_every_knob() -> None:
    views = known_views()
    assert set(FIXED_VIEWS) <= set(views)
    assert set(KNOBS) <= set(views)
    assert "/proc/<name|pid>/smaps_rollup" in views


def test_rendering_every_view_changes_nothing() -> None:
    """Views only read: node counters, events, knobs and mTHP stats are as they were."""
    k, task = boot()
    addr = syscalls.sys_mmap(k, task, 0, 8 * MiB, 3, ANON_PRIVATE)
    fastpath.touch(k, task, addr, 8 * MiB, 4096, 1)
    stats, events = k.node_stat.copy(), k.vm_events.copy()
    knobs, mthp = list(k.knobs.items()), dict(k.mthp_stats)
    paths = [*FIXED_VIEWS, *KNOBS, "/proc/main/status", "/proc/main/maps", "/proc/main/smaps",
             "/proc/main/smaps_rollup", f"{POOL_2M}/free_hugepages",
             f"{THP}/hugepages-2048kB/stats/split_deferred"]
    for path in paths:
        assert render_path(k, path)
    assert (k.node_stat == stats).all() and (k.vm_events == events).all()
    assert list(k.knobs.items()) == knobs and k.mthp_stats == mthp
