"""The memory cgroup OOM killer (mm/oom_kill.c out_of_memory, oom_badness, oom_kill_process).

When a charge cannot be reclaimed, the task of the cgroup with the highest badness is
killed with SIGKILL: RSS + swap entries + page-table pages (oom_badness, oom_score_adj 0;
shared pages count in each process that maps them). oom_kill is counted, the victim
exits and its memory is freed at once (the OOM reaper and exit_mmap). When the victim
is the task whose charge failed, its access ends in SIGKILL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pagewalk.errors import Signal, SignalError
from pagewalk.mm.types import MmStat
from pagewalk.mm.vmstat import VmEvent

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel
    from pagewalk.kernel.task import Task


class OomKilled(SignalError):
    """The task whose charge failed was the OOM killer's victim: SIGKILL (the fault entry
    names the address, kernel.do_user_addr_fault)."""

    def __init__(self) -> None:
        super().__init__(Signal.SIGKILL, 0, "killed by the memory cgroup OOM killer")


def oom_badness(task: Task) -> int:
    """oom_badness(): get_mm_rss + MM_SWAPENTS + pgtables_bytes / PAGE_SIZE."""
    mm = task.mm
    return mm.get_rss() + int(mm.stat[MmStat.MM_SWAPENTS]) + \
        int(mm.stat[MmStat.PGTABLES_BYTES]) // 4096


def select_bad_process(k: Kernel) -> Task | None:
    """select_bad_process() over the cgroup's tasks (mem_cgroup_scan_tasks): the highest
    badness; of equal ones the first found."""
    best: Task | None = None
    for task in k.tasks.values():
        if best is None or oom_badness(task) > oom_badness(best):
            best = task
    return best


def mem_cgroup_out_of_memory(k: Kernel) -> None:
    """mem_cgroup_out_of_memory(): kill the worst task; SignalError(SIGKILL) when it is
    the one running (k.current), else its memory is simply gone and the charge retries."""
    victim = select_bad_process(k)
    if victim is None:
        raise OomKilled()
    k.vm_events[VmEvent.OOM_KILL] += 1
    current = k.current
    k.free_task(victim)                      # oom_kill_process -> do_exit -> exit_mmap
    if victim is current or current is None:
        raise OomKilled()
