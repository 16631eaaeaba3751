"""A task (include/linux/sched.h task_struct): pid, name, mm, fault counters, PKRU."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from pagewalk.hw.mmu import new_mmu_counters
from pagewalk.mm.types import MmStruct


@dataclass(slots=True, eq=False)
class Task:
    """One single-threaded process."""

    pid: int
    comm: str
    mm: MmStruct
    parent: Task | None = None
    min_flt: int = 0            # getrusage ru_minflt
    maj_flt: int = 0
    stack_pfn: int = -1         # the 16 KiB kernel stack (order 2)
    mmu_counters: npt.NDArray[np.int64] = field(default_factory=new_mmu_counters)
    alive: bool = True
    pkru: int = 0               # thread.pkru: PKRU saved while the task is switched out
