"""``--show PATH``: the text a file under /proc or /sys would hold, read from a Kernel.

Dispatch only; each view is formatted by the module that models its kernel file:
/proc/meminfo (proc/meminfo.py, fs/proc/meminfo.c), /proc/vmstat and /proc/buddyinfo
(proc/vmstat.py, mm/vmstat.c), ``sar -r ALL`` (proc/sar.py, sysstat),
/proc/PID/{status,maps,smaps,smaps_rollup} (proc/task_mmu.py, fs/proc/task_mmu.c).
sysfs and sysctl files are rendered here as their show handlers print them:
the THP choice files in bracket form (mm/huge_memory.c ``enabled_show``,
``defrag_show``, ``anon_enabled_show``, mm/shmem.c ``shmem_enabled_show``), the hugetlb
pool files from the hstates (mm/hugetlb.c ``nr_hugepages_show_common`` and friends,
``hugetlb_sysctl_handler_common``), the mTHP ``stats/`` files from the per-order
counters (``DEFINE_MTHP_STAT_ATTR``), any other knob as its value.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from pagewalk.errors import ScenarioError
from pagewalk.kernel.knobs import KNOBS, SHMEM_MTHP_SIZES_KB, Choice, knob_spec
from pagewalk.proc import task_mmu
from pagewalk.proc.meminfo import format_meminfo
from pagewalk.proc.sar import format_sar
from pagewalk.proc.vmstat import format_buddyinfo, format_vmstat

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel
    from pagewalk.kernel.task import Task
    from pagewalk.mm.hugetlb import Hstate

THP = "/sys/kernel/mm/transparent_hugepage"
HUGEPAGES = "/sys/kernel/mm/hugepages"

FIXED_VIEWS: dict[str, Callable[[Kernel], str]] = {
    "/proc/meminfo": format_meminfo,
    "/proc/vmstat": format_vmstat,
    "/proc/buddyinfo": format_buddyinfo,
    "sar": format_sar,
    "sar -r ALL": format_sar,
}

PROCESS_FILES = ("status", "maps", "smaps", "smaps_rollup")
HUGETLB_FILES = ("nr_hugepages", "free_hugepages", "resv_hugepages", "surplus_hugepages",
                 "nr_overcommit_hugepages")
#: hugepages-<N>kB/stats/ files whose counters pagewalk keeps or which are 0 because it has
#: no swap/zswap (6.18 names); hugepages-8kB exists for shmem only (its anon ones stay 0). nr_anon and nr_anon_partially_mapped are left
#: out: they are gauges pagewalk does not keep.
MTHP_STAT_ITEMS = (
    "anon_fault_alloc", "anon_fault_fallback", "anon_fault_fallback_charge",
    "zswpout", "swpin", "swpin_fallback", "swpin_fallback_charge", "swpout", "swpout_fallback",
    "shmem_alloc", "shmem_fallback", "shmem_fallback_charge",
    "split", "split_failed", "split_deferred",
)

_PROCESS_RE = re.compile(r"^/proc/([^/]+)/(" + "|".join(PROCESS_FILES) + r")$")
_HUGETLB_RE = re.compile(rf"^{HUGEPAGES}/hugepages-(\d+)kB/(" + "|".join(HUGETLB_FILES) + r")$")
_MTHP_STAT_RE = re.compile(rf"^{THP}/hugepages-(\d+)kB/stats/(\w+)$")


def known_views() -> list[str]:
    """What ``--show`` accepts: fixed views, path patterns, then every knob path."""
    return [
        *FIXED_VIEWS,
        *(f"/proc/<name|pid>/{name}" for name in PROCESS_FILES),
        f"{HUGEPAGES}/hugepages-<N>kB/{{{','.join(HUGETLB_FILES)}}}",
        f"{THP}/hugepages-<N>kB/stats/{{{','.join(MTHP_STAT_ITEMS)}}}",
        *KNOBS,
    ]


def render_path(k: Kernel, path: str) -> str:
    """The text of the file at ``path`` (or of ``sar -r ALL``) as the kernel would print it
    now. An unknown path raises ScenarioError listing what is known."""
    view = " ".join(path.split())
    fixed = FIXED_VIEWS.get(view)
    if fixed is not None:
        return fixed(k)
    for render in (_render_process_file, _render_hugetlb_file, _render_mthp_stat,
                   _render_knob):
        text = render(k, view)
        if text is not None:
            return text
    raise ScenarioError(f"unknown view {path!r}; known: " + ", ".join(known_views()))


# -- /proc/<name|pid>/... --------------------------------------------------------------------

def _render_process_file(k: Kernel, view: str) -> str | None:
    match = _PROCESS_RE.match(view)
    if match is None:
        return None
    task = _find_task(k, match[1])
    if task is None:
        processes = ", ".join(f"{t.comm} (pid {t.pid})" for t in k.tasks.values()) or "none"
        raise ScenarioError(f"unknown view {view!r}; known: /proc/<name|pid>/"
                            f"{match[2]} for the processes {processes}")
    if match[2] == "status":
        return task_mmu.format_status(task)
    if match[2] == "maps":
        return task_mmu.format_maps(task)
    if match[2] == "smaps":
        return task_mmu.format_smaps(k, task)
    return task_mmu.format_smaps_rollup(k, task)


def process_view_missing(k: Kernel, path: str) -> bool:
    """True if ``path`` is a /proc/<name|pid>/ file of a process that does not exist now
    (it has not been forked yet, or it exited)."""
    match = _PROCESS_RE.match(" ".join(path.split()))
    return match is not None and _find_task(k, match[1]) is None


def _find_task(k: Kernel, name_or_pid: str) -> Task | None:
    task = k.tasks.get(name_or_pid)
    if task is not None or not name_or_pid.isdigit():
        return task
    return next((t for t in k.tasks.values() if t.pid == int(name_or_pid)), None)


# -- hugetlb pool files ----------------------------------------------------------------------

def _render_hugetlb_file(k: Kernel, view: str) -> str | None:
    """hstate_attrs (``"%lu\\n"``) and the default hstate's /proc/sys/vm twins."""
    default = k.hugetlb.default
    if view == "/proc/sys/vm/nr_hugepages":
        # hugetlb_sysctl_handler_common shows h->max_huge_pages, the persistent pool
        # (set_max_huge_pages leaves it at persistent_huge_pages(h)); sysfs shows the total.
        return f"{default.nr_huge_pages - default.surplus_huge_pages}\n"
    if view == "/proc/sys/vm/nr_overcommit_hugepages":
        return f"{default.nr_overcommit_huge_pages}\n"
    match = _HUGETLB_RE.match(view)
    if match is None:
        return None
    h = k.hugetlb.hstates.get(int(match[1]) << 10)
    if h is None:
        return None
    return f"{_hstate_file_value(h, match[2])}\n"


def _hstate_file_value(h: Hstate, name: str) -> int:
    values = {
        "nr_hugepages": h.nr_huge_pages,
        "free_hugepages": h.free_huge_pages,
        "resv_hugepages": h.resv_huge_pages_shown,
        "surplus_hugepages": h.surplus_huge_pages,
        "nr_overcommit_hugepages": h.nr_overcommit_huge_pages,
    }
    return values[name]


# -- mTHP stats, knobs -----------------------------------------------------------------------

def _render_mthp_stat(k: Kernel, view: str) -> str | None:
    """hugepages-<N>kB/stats/<item>: the per-order counter (sum over CPUs), ``"%lu\\n"``."""
    match = _MTHP_STAT_RE.match(view)
    if match is None or int(match[1]) not in SHMEM_MTHP_SIZES_KB or \
            match[2] not in MTHP_STAT_ITEMS:
        return None
    if int(match[1]) == 8 and match[2].startswith(("anon_", "split_deferred")):
        return None     # order 1 is a file order only: no anonymous stats (stats_attrs)
    order = (int(match[1]) // 4).bit_length() - 1
    return f"{k.mthp_stats.get((order, match[2]), 0)}\n"


def _render_knob(k: Kernel, view: str) -> str | None:
    """A knob file: a choice in bracket form (``always [madvise] never``), else the value."""
    if view not in KNOBS:
        return None
    value = k.knobs.get(view)
    kind = knob_spec(k.knobs.resolve(view)).kind
    if isinstance(kind, Choice):
        return " ".join(f"[{option}]" if option == value else option
                        for option in kind.options) + "\n"
    return f"{value}\n"
