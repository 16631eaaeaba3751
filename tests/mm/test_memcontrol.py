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


OOM_TWO = """
name: oom-two
system: {memory_limit: 8MiB}
steps:
  - mmap: {name: small, length: 1MiB}
  - madvise: {region: small, advice: nohugepage}
  - touch: {region: small, access: write}
  - fork: {name: big}
  - mmap: {name: buf, length: 16MiB, process: big}
  - madvise: {region: buf, advice: nohugepage, process: big}
  - touch: {region: buf, access: write, process: big, expect_signal: SIGKILL}
  - measure: after
"""


def test_no_swap_reclaim_scans_no_anon_list() -> None:
    """can_reclaim_anon_pages() is false without a free swap slot: reclaim leaves the
    anonymous LRU alone, so the survivor's PTEs keep their accessed bits."""
    from pagewalk.hw import pgtable_types as pt
    from pagewalk.scenario.runner import ScenarioRun

    run = ScenarioRun(parse_scenario(OOM_TWO, "oom-two.yaml"))
    report = run.run()
    assert set(report.measurements[0].processes) == {"main"}
    assert report.measurements[0].system["oom_kill"] == 1
    k = run.kernel
    mm = k.tasks[min(k.tasks)].mm
    vma = next(v for v in mm.vmas if v.length == 1 << 20)       # "small"
    young = 0
    for vaddr in range(vma.start, vma.end, 4096):
        pmd_paddr, _ = k.pgtables.walk(mm, vaddr, 21, alloc=False)
        pte = k.pgtables.read((pt.pte_pfn(k.pgtables.read(pmd_paddr)) << 12)
                              + ((vaddr >> 12) & 511) * 8)
        young += bool(pte & pt._PAGE_ACCESSED)
    assert young == 256


OOM_OTHER = """
name: oom-other
system: {memory_limit: 8MiB}
steps:
  - mmap: {name: small, length: 1MiB}
  - madvise: {region: small, advice: nohugepage}
  - touch: {region: small, access: write}
  - fork: {name: child}
  - mmap: {name: big, length: 6MiB, process: child}
  - madvise: {region: big, advice: nohugepage, process: child}
  - touch: {region: big, access: write, process: child}
  - mmap: {name: more, length: 4MiB}
  - madvise: {region: more, advice: nohugepage}
  - touch: {region: more, access: write, expect_signal: SIGKILL}
  - measure: after
"""


def test_oom_kill_of_another_process_ends_the_step_with_sigkill() -> None:
    """The OOM killer takes the largest process (the child, 7 MiB with the shared 1 MiB),
    not main, whose charge failed; the kernel runner sees the child die during main's
    step, which ends with SIGKILL; main goes on and finishes its writes."""
    report = run_scenario(parse_scenario(OOM_OTHER, "oom-other.yaml"))
    measure = report.measurements[0]
    assert set(measure.processes) == {"main"}
    assert measure.system["oom_kill"] == 1
    assert measure.processes["main"]["RssAnon"] == 5120
    assert report.outcomes[-1].failure == "SIGKILL"


THP_OVER_LIMIT = """
name: thp-over-limit
system: {swap: 64MiB, memory_limit: 16MiB}
steps:
  - mmap: {name: buf, length: 32MiB}
  - madvise: {region: buf, advice: hugepage}
  - touch: {region: buf, access: write}
  - measure: after-write
"""


def test_thp_charges_whole_and_reclaim_splits_it_to_swap() -> None:
    """A THP fault charges HPAGE_PMD_NR pages; reclaim splits the oldest THP (the swap
    device has no clusters: thp_swpout_fallback, thp_split_pmd) and writes its 512 pages.
    Every page stays resident or in swap, the resident ones still THPs under the limit;
    no fault falls back (measured on Linux 6.18: 64 MiB cgroup, 128 MiB written, every
    fault a THP, every split THP written whole)."""
    report = run_scenario(parse_scenario(THP_OVER_LIMIT, "thp-over-limit.yaml"))
    main = report.measurements[0].processes["main"]
    system = report.measurements[0].system
    assert main["minflt"] == 16 and system["thp_fault_alloc"] == 16
    assert system["thp_fault_fallback"] == 0
    assert main["VmRSS"] + main["VmSwap"] == 32768
    assert main["AnonHugePages"] == main["VmRSS"] < 16384
    assert main["VmSwap"] == system["thp_split_pmd"] * 2048 == system["pswpout"] * 4


def test_reclaim_counters_match_the_kernel() -> None:
    """/proc/vmstat after 128 MiB written in a 64 MiB cgroup, measured on Linux 6.18
    (2026-12-07): pgscan_anon 65949 (each page scanned about four times: young once,
    written, then under writeback, then freed), pgsteal_anon 16463, no activation, no
    deactivation; pgscan_direct and pgsteal_direct stay 0 (a cgroup's reclaim counts them
    in the cgroup's events only)."""
    from pathlib import Path

    from pagewalk.proc.vmstat import vmstat
    from pagewalk.scenario.runner import ScenarioRun
    from pagewalk.scenario.schema import load_scenario

    path = Path(__file__).parents[1] / "data/scenarios/v3-swapout-write-over-limit.yaml"
    run = ScenarioRun(load_scenario(path))
    run.run()
    stat = vmstat(run.kernel)
    assert abs(stat["pgscan_anon"] - 65949) <= 0.03 * 65949
    assert abs(stat["pgsteal_anon"] - 16463) <= 0.03 * 16463
    assert stat["pgactivate"] == stat["pgdeactivate"] == 0
    assert "pgscan_direct" not in stat or stat["pgscan_direct"] == 0


MLOCK_OVER_LIMIT = """
name: mlock-over-limit
system: {swap: 64MiB, memory_limit: 8MiB}
steps:
  - mmap: {name: buf, length: 12MiB}
  - madvise: {region: buf, advice: nohugepage}
  - mlock: {region: buf, expect_signal: SIGKILL}
  - measure: after
"""


def test_mlocked_pages_are_never_reclaimed() -> None:
    """Mlocked folios sit on the unevictable list: locking more than the limit leaves
    reclaim nothing, even with swap, and the OOM killer ends the mlock (seen by random
    runs on Linux 6.18: 67 MiB locked in a 64 MiB cgroup with 256 MiB of swap)."""
    report = run_scenario(parse_scenario(MLOCK_OVER_LIMIT, "mlock-over-limit.yaml"))
    measure = report.measurements[0]
    assert measure.processes == {}
    assert measure.system["oom_kill"] == 1 and measure.system["pswpout"] == 0


COW_UNDER_RECLAIM = """
name: cow-under-reclaim
system: {swap: 256MiB, memory_limit: 32MiB, sysfs: {/sys/kernel/mm/transparent_hugepage/enabled: never}}
steps:
  - mmap: {name: m1, length: 32MiB, prot: w, flags: [private, anonymous]}
  - touch: {region: m1, stride: 8KiB}
  - fork: {name: c1}
  - touch: {region: m1}
  - touch: {region: m1, offset: 3244KiB, process: c1, access: read}
  - measure: end
"""


def test_cow_fault_whose_page_reclaim_swapped_out_meanwhile_retries() -> None:
    """wp_page_copy() charges before it copies; the reclaim that charge runs may swap out
    the very page being copied (found by random runs as a mapcount underflow): the PTE is
    no longer the one faulted on (!pte_same), so the fault returns and the access
    faults again, now on the swap entry."""
    report = run_scenario(parse_scenario(COW_UNDER_RECLAIM, "cow-under-reclaim.yaml"))
    main = report.measurements[0].processes["main"]
    assert main["VmRSS"] + main["VmSwap"] >= 32768       # every page of m1: main wrote all
    assert report.measurements[0].system["pswpout"] > 0


COLD = """
name: madv-cold
system: {swap: 128MiB, memory_limit: 32MiB}
steps:
  - mmap: {name: a, length: 12MiB}
  - madvise: {region: a, advice: nohugepage}
  - touch: {region: a}
  - mmap: {name: b, length: 12MiB}
  - madvise: {region: b, advice: nohugepage}
  - touch: {region: b}
  - touch: {region: a, access: read}
  - touch: {region: b, access: read}
%s
  - mmap: {name: c, length: 12MiB}
  - madvise: {region: c, advice: nohugepage}
  - touch: {region: c}
  - measure: after-c
  - touch: {region: b, access: read}
  - measure: after-b
"""


def test_madv_cold_makes_its_pages_reclaims_first_choice() -> None:
    """MADV_COLD makes the range's PTEs old, so the reclaim that writing C needs takes B
    before the young A: reading B back then takes major faults. Without the advice A and
    B are equally young and B stays. Measured on Linux 6.18 (2026-12-08, this scenario):
    B's re-read took 145 major faults after MADV_COLD and none without it."""
    cold = run_scenario(parse_scenario(COLD % "  - madvise: {region: b, advice: cold}",
                                       "cold.yaml")).measurements
    warm = run_scenario(parse_scenario(COLD % "", "warm.yaml")).measurements
    assert cold[1].processes["main"]["majflt"] > 0
    assert warm[1].processes["main"]["majflt"] == 0
    assert warm[1].system["pswpout"] == warm[0].system["pswpout"]


def test_madv_cold_makes_prot_none_ptes_old_too() -> None:
    """madvise_cold_or_pageout_pte_range() takes pte_present() entries, PROT_NONE ones
    included (they map pages too), as MADV_PAGEOUT does."""
    from pagewalk.hw import pgtable_types as pt
    from pagewalk.scenario.runner import ScenarioRun

    doc = """
name: cold-prot-none
system: {swap: 16MiB, memory_limit: 8MiB}
steps:
  - mmap: {name: a, length: 64KiB}
  - touch: {region: a}
  - mprotect: {region: a, prot: none}
  - madvise: {region: a, advice: cold}
"""
    run = ScenarioRun(parse_scenario(doc, "cold-prot-none.yaml"))
    run.run()
    k = run.kernel
    mm = k.tasks["main"].mm
    start, length = run.maps["main"]["a"]
    for vaddr in range(start, start + length, 4096):
        pmd_paddr, _ = k.pgtables.walk(mm, vaddr, 21, alloc=False)
        pte = k.pgtables.read((pt.pte_pfn(k.pgtables.read(pmd_paddr)) << 12)
                              + ((vaddr >> 12) & 511) * 8)
        assert pte & pt._PAGE_PROTNONE and not pte & pt._PAGE_ACCESSED
