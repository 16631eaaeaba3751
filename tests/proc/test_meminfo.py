"""/proc/meminfo: Linux 6.18's lines, order and layout (fs/proc/meminfo.c show_val_kb,
mm/hugetlb.c hugetlb_report_meminfo, arch/x86 arch_report_meminfo), every value from a
kernel counter, and the predictions of linux-mm-notes.md 9.1, 9.4, 4.6 and 6.1."""

from __future__ import annotations

from pagewalk.kernel import syscalls
from pagewalk.kernel.kernel import Kernel
from pagewalk.kernel.task import Task
from pagewalk.machine import Machine, MachineConfig
from pagewalk.mm import fastpath
from pagewalk.mm.page_alloc import min_free_kbytes, zone_watermarks
from pagewalk.mm.util import vm_commit_limit
from pagewalk.proc.meminfo import (
    MEMINFO_FIELDS,
    format_meminfo,
    meminfo,
    meminfo_line,
    totalreserve_pages,
)
from pagewalk.proc.vmstat import format_buddyinfo

THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"
ANON_PRIVATE = frozenset({"private", "anonymous"})
MiB = 1 << 20

#: The format strings of meminfo_proc_show (6.18; show_val_kb is "%s%8lu kB"),
#: hugetlb_report_meminfo and arch_report_meminfo, "%lu" written as Python's "%d".
LINUX_FORMATS = {
    "MemTotal": "MemTotal:       %8d kB", "MemFree": "MemFree:        %8d kB",
    "MemAvailable": "MemAvailable:   %8d kB", "Buffers": "Buffers:        %8d kB",
    "Cached": "Cached:         %8d kB", "SwapCached": "SwapCached:     %8d kB",
    "Active": "Active:         %8d kB", "Inactive": "Inactive:       %8d kB",
    "Active(anon)": "Active(anon):   %8d kB", "Inactive(anon)": "Inactive(anon): %8d kB",
    "Active(file)": "Active(file):   %8d kB", "Inactive(file)": "Inactive(file): %8d kB",
    "Unevictable": "Unevictable:    %8d kB", "Mlocked": "Mlocked:        %8d kB",
    "SwapTotal": "SwapTotal:      %8d kB", "SwapFree": "SwapFree:       %8d kB",
    "Zswap": "Zswap:          %8d kB", "Zswapped": "Zswapped:       %8d kB",
    "Dirty": "Dirty:          %8d kB", "Writeback": "Writeback:      %8d kB",
    "AnonPages": "AnonPages:      %8d kB", "Mapped": "Mapped:         %8d kB",
    "Shmem": "Shmem:          %8d kB", "KReclaimable": "KReclaimable:   %8d kB",
    "Slab": "Slab:           %8d kB", "SReclaimable": "SReclaimable:   %8d kB",
    "SUnreclaim": "SUnreclaim:     %8d kB", "KernelStack": "KernelStack:    %8d kB",
    "PageTables": "PageTables:     %8d kB", "SecPageTables": "SecPageTables:  %8d kB",
    "NFS_Unstable": "NFS_Unstable:   %8d kB", "Bounce": "Bounce:         %8d kB",
    "WritebackTmp": "WritebackTmp:   %8d kB", "CommitLimit": "CommitLimit:    %8d kB",
    "Committed_AS": "Committed_AS:   %8d kB", "VmallocTotal": "VmallocTotal:   %8d kB",
    "VmallocUsed": "VmallocUsed:    %8d kB", "VmallocChunk": "VmallocChunk:   %8d kB",
    "Percpu": "Percpu:         %8d kB", "AnonHugePages": "AnonHugePages:  %8d kB",
    "ShmemHugePages": "ShmemHugePages: %8d kB", "ShmemPmdMapped": "ShmemPmdMapped: %8d kB",
    "FileHugePages": "FileHugePages:  %8d kB", "FilePmdMapped": "FilePmdMapped:  %8d kB",
    "Balloon": "Balloon:        %8d kB",
    "HugePages_Total": "HugePages_Total:   %5d", "HugePages_Free": "HugePages_Free:    %5d",
    "HugePages_Rsvd": "HugePages_Rsvd:    %5d", "HugePages_Surp": "HugePages_Surp:    %5d",
    "Hugepagesize": "Hugepagesize:   %8d kB", "Hugetlb": "Hugetlb:        %8d kB",
    "DirectMap4k": "DirectMap4k:    %8d kB", "DirectMap2M": "DirectMap2M:    %8d kB",
    "DirectMap1G": "DirectMap1G:    %8d kB",
}


def boot() -> tuple[Kernel, Task]:
    k = Machine().kernel
    return k, k.spawn("main")


def write_64m(k: Kernel, task: Task) -> None:
    addr = syscalls.sys_mmap(k, task, 0, 64 * MiB, 3, ANON_PRIVATE)
    fastpath.touch(k, task, addr, 64 * MiB, 4096, 1)


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {name: after[name] - before[name] for name in after if after[name] != before[name]}


# -- layout ----------------------------------------------------------------------------------

def test_lines_are_those_of_6_18_in_order() -> None:
    """The reference machine's line set (notes 9.1), in meminfo_proc_show's order."""
    k, _ = boot()
    names = [line.split(":")[0] for line in format_meminfo(k).splitlines()]
    assert names == list(MEMINFO_FIELDS) == list(LINUX_FORMATS)


def test_every_line_is_printed_with_the_kernels_format_string() -> None:
    """Each line equals the kernel's printf format applied to the value, newline-ended."""
    k, _ = boot()
    k.set_knob("/proc/sys/vm/nr_hugepages", "16")
    values = meminfo(k)
    expected = "".join(LINUX_FORMATS[name] % value + "\n" for name, value in values.items())
    assert format_meminfo(k) == expected


def test_literal_lines() -> None:
    """Byte-exact lines as Linux prints them: the value right-aligned in 8 columns after a
    16-column label, wider values pushing out; HugePages counts in 5 after 19."""
    assert meminfo_line("MemTotal", 4094976) == "MemTotal:        4094976 kB"
    assert meminfo_line("Inactive(anon)", 0) == "Inactive(anon):        0 kB"
    assert meminfo_line("VmallocTotal", 34359738367) == "VmallocTotal:   34359738367 kB"
    assert meminfo_line("HugePages_Total", 16) == "HugePages_Total:      16"
    assert meminfo_line("HugePages_Free", 123456) == "HugePages_Free:    123456"
    assert meminfo_line("Hugepagesize", 2048) == "Hugepagesize:       2048 kB"


# -- values and invariants ----------------------------------------------------------------------

def test_memfree_is_the_sum_of_buddyinfo_blocks() -> None:
    """MemFree = sum over zones and orders of free blocks * 2^order * 4 kB: pagewalk has no
    per-CPU lists, so nothing sits outside the buddy free lists (notes 10.2)."""
    k, task = boot()
    for step in range(2):
        free_kb = 0
        for line in format_buddyinfo(k).splitlines():
            counts = [int(word) for word in line.split()[4:]]
            free_kb += sum(blocks << order for order, blocks in enumerate(counts)) * 4
        assert meminfo(k)["MemFree"] == free_kb
        if step == 0:
            write_64m(k, task)


def test_writing_64m_with_4k_pages_raises_anonpages_and_pagetables() -> None:
    """Notes 9.4 / 12 #1: 64 MiB written with 4 KiB pages (THP never) adds 65536 kB of
    AnonPages (all active) and 32 PTE tables, 128 kB of PageTables; MemFree and
    MemAvailable fall by both; mmap charged Committed_AS with the 64 MiB beforehand."""
    k, task = boot()
    k.set_knob(THP_ENABLED, "never")
    start = meminfo(k)
    addr = syscalls.sys_mmap(k, task, 0, 64 * MiB, 3, ANON_PRIVATE)
    mapped = meminfo(k)
    assert delta(start, mapped) == {"Committed_AS": 65536}
    fastpath.touch(k, task, addr, 64 * MiB, 4096, 1)
    assert delta(mapped, meminfo(k)) == {
        "AnonPages": 65536, "Active(anon)": 65536, "Active": 65536, "PageTables": 128,
        "MemFree": -65536 - 128, "MemAvailable": -65536 - 128,
    }


def test_thps_show_in_anonhugepages() -> None:
    """Notes 4.6: 32 PMD-mapped THPs -> AnonHugePages +65536 kB, AnonPages +65536 kB; the
    deposited PTE tables keep PageTables at +128 kB."""
    k, task = boot()
    k.set_knob(THP_ENABLED, "always")
    before = meminfo(k)
    write_64m(k, task)
    change = delta(before, meminfo(k))
    assert change["AnonHugePages"] == 65536
    assert change["AnonPages"] == 65536
    assert change["PageTables"] == 128


def test_hugepages_lines_follow_nr_hugepages() -> None:
    """Notes 6.1: a pool of 16 2 MiB pages shows as HugePages_Total/Free 16, Hugetlb
    32768 kB, comes out of MemFree, stays inside MemTotal, and lowers CommitLimit by
    overcommit_ratio (50%) of its size."""
    k, _ = boot()
    before = meminfo(k)
    k.set_knob("/proc/sys/vm/nr_hugepages", "16")
    after = meminfo(k)
    assert (after["HugePages_Total"], after["HugePages_Free"], after["HugePages_Rsvd"],
            after["HugePages_Surp"]) == (16, 16, 0, 0)
    assert after["Hugepagesize"] == 2048
    assert after["Hugetlb"] == 32768
    assert after["MemTotal"] == before["MemTotal"]
    assert before["MemFree"] - after["MemFree"] == 32768
    assert before["CommitLimit"] - after["CommitLimit"] == 16384


def test_hugetlb_counts_every_hstate_and_totals_the_default_one() -> None:
    """hugetlb_report_meminfo: HugePages_* are the 2 MiB pool only; Hugetlb sums all sizes
    (notes 6.1: 2 x 2 MiB + 1 x 1 GiB -> 1052672 kB)."""
    k, _ = boot()
    k.set_knob("/proc/sys/vm/nr_hugepages", "2")
    k.set_knob("/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages", "1")
    info = meminfo(k)
    assert info["HugePages_Total"] == 2
    assert info["Hugetlb"] == 1052672


def test_memtotal_is_totalram_and_commitlimit_is_vm_commit_limit() -> None:
    k, _ = boot()
    info = meminfo(k)
    assert info["MemTotal"] == k.totalram_pages * 4
    assert info["CommitLimit"] == vm_commit_limit(k) * 4 == info["MemTotal"] // 2
    assert info["Slab"] == info["SReclaimable"] + info["SUnreclaim"]
    assert info["KReclaimable"] == info["SReclaimable"]


def test_vmalloc_total_depends_on_paging_levels() -> None:
    """VMALLOC_SIZE_TB is 32 with 4-level paging, 12800 with 5-level."""
    assert meminfo(Machine().kernel)["VmallocTotal"] == 34359738367
    assert meminfo(Machine(MachineConfig(paging=5)).kernel)["VmallocTotal"] == 13743895347199


def test_direct_map_is_1g_pages_covering_ram() -> None:
    """Boot maps RAM with 1 GiB pages (direct_gbpages): DirectMap1G covers 4 GiB."""
    info = meminfo(Machine().kernel)
    assert (info["DirectMap4k"], info["DirectMap2M"], info["DirectMap1G"]) == (0, 0, 4194304)


# -- MemAvailable --------------------------------------------------------------------------------

def test_min_free_kbytes_follows_khugepaged_recommendation() -> None:
    """With PMD THPs enabled khugepaged raises min_free_kbytes to 11 pageblocks per zone
    (67584 kB with three zones, the familiar x86_64 value); with THP never it is
    int_sqrt(lowmem_kbytes * 16)."""
    k = Machine(MachineConfig(ram=8 << 30)).kernel
    assert min_free_kbytes(k) == 67584
    k, _ = boot()                       # 4 GiB: DMA and DMA32 only
    assert min_free_kbytes(k) == 45056
    k.set_knob(THP_ENABLED, "never")
    assert min_free_kbytes(k) == 8094   # int_sqrt(4094976 * 16)


def test_memavailable_is_si_mem_available() -> None:
    """free - totalreserve + (file LRU - min(half, low)) + (reclaimable slab - min(half, low))."""
    k, _ = boot()
    info = meminfo(k)
    marks = zone_watermarks(k)
    low = sum(mark.low for mark in marks)
    file_kb = info["Active(file)"] + info["Inactive(file)"]
    expected = (info["MemFree"] - totalreserve_pages(k, marks) * 4
                + file_kb - min(file_kb // 8 * 4, low * 4)
                + info["SReclaimable"] - min(info["SReclaimable"] // 8 * 4, low * 4))
    assert info["MemAvailable"] == expected
    assert all(mark.min <= mark.low <= mark.high for mark in marks)


def test_views_do_not_change_the_kernel() -> None:
    k, task = boot()
    write_64m(k, task)
    stats, events = k.node_stat.copy(), k.vm_events.copy()
    format_meminfo(k)
    assert (k.node_stat == stats).all() and (k.vm_events == events).all()
