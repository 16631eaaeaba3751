"""The live kernel as a target: run scenarios on this machine's Linux, inspect processes.

``pagewalk verify`` replays a scenario on the kernel the machine runs and compares its
report with the simulator's; ``pagewalk inspect`` reads a real process's mappings and
prices its page tables. Modules, from the bottom:

* errors.py   LiveError, ProbeError, ProbeDied (a branch of pagewalk's error tree)
* procfs.py   /proc readers (status, stat, smaps_rollup, meminfo, vmstat, maps)
* probe.py    builds probe.c (static, cached) and speaks its line protocol
* knobs.py    knob save/restore under the machine-wide lock; the khugepaged decoy
* files.py    version 2 files: where a run keeps them, waiting for the root disk
* pressure.py version 3: the swap file, the memory cgroup, leftovers, OOM deaths
* runner.py   one run of a scenario on probe processes, measured from outside
* verify.py   preconditions, repeated runs, the combined report
* compare.py  the kernel's report against the simulator's, with the oracle's rules
* pagemap.py  present pages and their sizes (PAGEMAP_SCAN, or pagemap itself)
* inspect.py  per-VMA RSS, THP/hugetlb, page-table cost, the 2 MiB estimate, page-size maps
* command.py  the two click commands

Nothing here imports the oracle in shared/: probe.c is this package's copy.
"""

from pagewalk.live.errors import LiveError, ProbeError

__all__ = ["LiveError", "ProbeError"]
