"""A memory cgroup limit: direct reclaim to swap, and the OOM killer
(mm/memcontrol.py, mm/vmscan.py, mm/oom_kill.py)."""

from __future__ import annotations

from pagewalk.scenario.runner import run_scenario
from pagewalk.scenario.schema import parse_scenario

OVER_LIMIT = """
name: over-limit
system: {swap: 64MiB, memory_limit: 8MiB}
steps:
  - mmap: {name: buf, length: 16MiB}
  - madvise: {region: buf, advice: nohugepage}
  - touch: {region: buf, access: write}
  - measure: after-write
"""


def test_writing_past_the_limit_swaps_the_rest_out() -> None:
    """Every page is either resident or in swap (RSS + VmSwap = 16 MiB), RSS stays under
    the limit, every page written out counted once in pswpout, no swap-in."""
    report = run_scenario(parse_scenario(OVER_LIMIT, "over-limit.yaml"))
    main = report.measurements[0].processes["main"]
    system = report.measurements[0].system
    assert main["VmRSS"] + main["VmSwap"] == 16384
    assert main["VmRSS"] < 8192
    assert system["pswpout"] * 4 >= main["VmSwap"]
    assert system["pswpin"] == 0 and main["majflt"] == 0 and main["minflt"] == 4096


OOM = """
name: oom
system: {memory_limit: 8MiB}
steps:
  - mmap: {name: buf, length: 16MiB}
  - madvise: {region: buf, advice: nohugepage}
  - touch: {region: buf, access: write, expect_signal: SIGKILL}
  - measure: gone
"""


def test_no_swap_over_limit_kills_the_faulting_process() -> None:
    """Without swap nothing anonymous can be reclaimed: the OOM killer kills the only
    (so the largest) process, oom_kill is 1, the process is gone."""
    report = run_scenario(parse_scenario(OOM, "oom.yaml"))
    measure = report.measurements[0]
    assert measure.processes == {}
    assert measure.system["oom_kill"] == 1
    assert report.outcomes[0].failure == "SIGKILL"
