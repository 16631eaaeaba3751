"""``sar -r ALL`` (sysstat >= 12.7.8): the header and row layout of pr_stats.c, the column
formulas of linux-mm-notes.md 9.4, and its 64 MiB prediction."""

from __future__ import annotations

from pagewalk.kernel import syscalls
from pagewalk.kernel.kernel import Kernel
from pagewalk.kernel.task import Task
from pagewalk.machine import Machine
from pagewalk.mm import fastpath
from pagewalk.proc.meminfo import meminfo
from pagewalk.proc.sar import SAR_COLUMNS, format_sar, sar_row

ANON_PRIVATE = frozenset({"private", "anonymous"})
MiB = 1 << 20

#: print_hdr_line(): "%-11s" time stamp, then " %9s" per name of activity.c's hdr_line.
HEADER = ("12:00:01 AM kbmemfree   kbavail kbmemused  %memused kbbuffers  kbcached  kbcommit"
          "   %commit  kbactive   kbinact   kbdirty   kbshmem  kbanonpg    kbslab  kbkstack"
          "   kbpgtbl  kbvmused")


def boot() -> tuple[Kernel, Task]:
    k = Machine().kernel
    return k, k.spawn("main")


def test_header_is_sysstats() -> None:
    k, _ = boot()
    assert format_sar(k, "12:00:01 AM").splitlines()[0] == HEADER
    assert format_sar(k, "12:00:01").splitlines()[0] == "12:00:01   " + HEADER[11:]


def test_row_is_printed_with_sysstats_formats() -> None:
    """cprintf_u64 prints " %9llu", cprintf_xpc " %9.2f"; the row starts with "%-11s"."""
    k, _ = boot()
    row = sar_row(k)
    cells = "".join((" %9.2f" if name.startswith("%") else " %9d") % row[name]
                    for name in SAR_COLUMNS)
    stamp = "%-11s" % "12:00:01 AM"  # noqa: UP031 (sysstat's printf format, verbatim)
    assert format_sar(k, "12:00:01 AM").splitlines()[1] == stamp + cells
    assert format_sar(k, "x").endswith("\n")


def test_columns_are_the_notes_formulas() -> None:
    """Notes 9.4: kbmemused = MemTotal - MemAvailable, %memused = kbmemused / MemTotal,
    %commit = Committed_AS / (MemTotal + SwapTotal); the rest are meminfo lines."""
    k, task = boot()
    syscalls.sys_mmap(k, task, 0, 64 * MiB, 3, ANON_PRIVATE)
    info, row = meminfo(k), sar_row(k)
    assert row["kbmemfree"] == info["MemFree"]
    assert row["kbavail"] == info["MemAvailable"]
    assert row["kbmemused"] == info["MemTotal"] - info["MemAvailable"]
    assert row["%memused"] == (info["MemTotal"] - info["MemAvailable"]) / info["MemTotal"] * 100
    assert row["%commit"] == info["Committed_AS"] / (info["MemTotal"] + info["SwapTotal"]) * 100
    pairs = {"kbbuffers": "Buffers", "kbcached": "Cached", "kbcommit": "Committed_AS",
             "kbactive": "Active", "kbinact": "Inactive", "kbdirty": "Dirty",
             "kbshmem": "Shmem", "kbanonpg": "AnonPages", "kbslab": "Slab",
             "kbkstack": "KernelStack", "kbpgtbl": "PageTables", "kbvmused": "VmallocUsed"}
    assert {column: row[column] for column in pairs} == {
        column: info[line] for column, line in pairs.items()}
    assert list(row) == list(SAR_COLUMNS)


def test_writing_64m_raises_kbanonpg_kbpgtbl_and_kbmemused() -> None:
    """Notes 9.4 prediction: 64 MiB written with 4 KiB pages -> kbanonpg +65536,
    kbpgtbl +128, kbmemused +65536+128 (the tables are used memory too)."""
    k, task = boot()
    k.set_knob("/sys/kernel/mm/transparent_hugepage/enabled", "never")
    addr = syscalls.sys_mmap(k, task, 0, 64 * MiB, 3, ANON_PRIVATE)
    before = sar_row(k)
    fastpath.touch(k, task, addr, 64 * MiB, 4096, 1)
    after = sar_row(k)
    assert after["kbanonpg"] - before["kbanonpg"] == 65536
    assert after["kbpgtbl"] - before["kbpgtbl"] == 128
    assert after["kbmemused"] - before["kbmemused"] == 65536 + 128
    assert after["kbcommit"] == before["kbcommit"]
