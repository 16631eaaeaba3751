"""``sar -r ALL``: one row of memory utilisation as sysstat >= 12.7.8 prints it.

Follows sysstat's rd_stats.c ``read_meminfo`` (every column comes from /proc/meminfo,
in kB; a missing or zero MemAvailable is taken as MemFree), pr_stats.c
``print_ram_memory_stats`` (the column arithmetic, ``SP_VALUE`` of common.h), activity.c
``hdr_line`` (the column names, kbshmem after kbdirty since commit e52c7ae2) and
pr_stats.c ``print_hdr_line`` (``"%-11s"`` time stamp, then ``" %9s"`` per name).
kbmemused is ``MemTotal - MemAvailable`` (sysstat 12.7.8, commit 6f34da35).
The formulas are those of linux-mm-notes.md 9.4.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pagewalk.proc.meminfo import meminfo

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel

#: activity.c memory hdr_line with -r ALL ("&" part shown), sysstat >= 12.7.8.
SAR_COLUMNS: tuple[str, ...] = (
    "kbmemfree", "kbavail", "kbmemused", "%memused", "kbbuffers", "kbcached", "kbcommit",
    "%commit", "kbactive", "kbinact", "kbdirty", "kbshmem", "kbanonpg", "kbslab",
    "kbkstack", "kbpgtbl", "kbvmused",
)
PERCENT_COLUMNS = frozenset({"%memused", "%commit"})
COLUMN_WIDTH = 9            # print_hdr_line(..., vwidth = 9); cprintf_u64(unit, n, 9, ...)
TIMESTAMP_WIDTH = 11        # "%-11s"


def sp_value(m: float, n: float, p: float) -> float:
    """SP_VALUE(m, n, p) = (n - m) / p * 100 (common.h)."""
    return (n - m) / p * 100


def sar_row(k: Kernel) -> dict[str, float]:
    """The columns of one ``sar -r ALL`` row: kB values (ints), and the two percentages."""
    info = meminfo(k)
    total = info["MemTotal"]
    available = info["MemAvailable"] or info["MemFree"]
    swap_total = info["SwapTotal"]
    return {
        "kbmemfree": info["MemFree"],
        "kbavail": available,
        "kbmemused": total - available,
        "%memused": sp_value(available, total, total) if total else 0.0,
        "kbbuffers": info["Buffers"],
        "kbcached": info["Cached"],
        "kbcommit": info["Committed_AS"],
        "%commit": (sp_value(0, info["Committed_AS"], total + swap_total)
                    if total + swap_total else 0.0),
        "kbactive": info["Active"],
        "kbinact": info["Inactive"],
        "kbdirty": info["Dirty"],
        "kbshmem": info["Shmem"],
        "kbanonpg": info["AnonPages"],
        "kbslab": info["Slab"],
        "kbkstack": info["KernelStack"],
        "kbpgtbl": info["PageTables"],
        "kbvmused": info["VmallocUsed"],
    }


def format_sar(k: Kernel, label: str = "00:00:00") -> str:
    """The header line and one data row, each starting with ``label`` in 11 columns."""
    header = "".join(f" {name:>{COLUMN_WIDTH}}" for name in SAR_COLUMNS)
    row = sar_row(k)
    cells = "".join(_cell(name, row[name]) for name in SAR_COLUMNS)
    return f"{label:<{TIMESTAMP_WIDTH}}{header}\n{label:<{TIMESTAMP_WIDTH}}{cells}\n"


def _cell(name: str, value: float) -> str:
    """cprintf_xpc(..., 9, 2) prints ``" %9.2f"``; cprintf_u64(..., 9) prints ``" %9llu"``."""
    if name in PERCENT_COLUMNS:
        return f" {value:>{COLUMN_WIDTH}.2f}"
    return f" {value:>{COLUMN_WIDTH}}"
