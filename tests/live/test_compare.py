"""The comparison of a kernel report with the simulator's follows the oracle's rules: exact
figures, pgfault within 2 (or inside the noise the run measured), THP counters above the
simulator's only excused by measured background activity, mappings by length, alignment
class and adjacency, never by address."""

from __future__ import annotations

import copy
from typing import Any

from pagewalk.live.compare import AGREE, DIFFER, NOISE, compare_reports
from pagewalk.live.verify import combine

PROC = {"minflt": 32, "majflt": 0, "VmRSS": 65536, "RssAnon": 65536, "RssShmem": 0,
        "VmPTE": 128, "VmSize": 65536, "AnonHugePages": 65536, "HugetlbPages": 0}
SYSTEM = {"HugePages_Total": 0, "HugePages_Free": 0, "HugePages_Rsvd": 0, "HugePages_Surp": 0,
          "thp_fault_alloc": 32, "thp_fault_fallback": 0, "thp_split_pmd": 0,
          "thp_collapse_alloc": 0, "pgfault": 32}
KERNEL: dict[str, Any] = {
    "scenario": "s",
    "measurements": [{"label": "m", "step": 3, "processes": {"main": PROC}, "system": SYSTEM}],
    "mappings": {"main": {"a": {"start": "0x7ffff3dff000", "length": 0x201000},
                          "b": {"start": "0x7ffff4000000", "length": 2 << 20}}},
}


def simulator(**system: int) -> dict[str, Any]:
    """The kernel's report with some system figures changed, and the simulator's extras."""
    report = copy.deepcopy(KERNEL)
    m = report["measurements"][0]
    m["system"].update(system)
    m["processes"]["main"]["tlb_walks"] = 7          # the simulator's own figures
    return report


def verdict(result: Any, field: str) -> str:
    (check,) = [c for c in result.checks if c.field == field]
    return str(check.verdict)


def test_identical_reports_agree_on_every_field() -> None:
    result = compare_reports(KERNEL, simulator())
    assert result.agrees and result.count(DIFFER) == 0
    assert result.count(AGREE) == 1 + 1 + 9 + 9 + 2 * 2 + 1   # scenario, step, figures, maps
    assert "tlb_walks" not in {c.field for c in result.checks}


def test_pgfault_may_differ_by_two_and_no_more() -> None:
    assert verdict(compare_reports(KERNEL, simulator(pgfault=30)), "pgfault") == AGREE
    assert verdict(compare_reports(KERNEL, simulator(pgfault=35)), "pgfault") == DIFFER


def test_pgfault_inside_the_measured_noise_is_noise_not_a_difference() -> None:
    """The kernel measured 500 faults but the scenario's processes counted 32: other
    processes added the rest, so a simulator figure of 32 is consistent."""
    kernel = copy.deepcopy(KERNEL)
    kernel["measurements"][0]["system"]["pgfault"] = 500
    assert verdict(compare_reports(kernel, simulator(), {"m": (32, 500)}), "pgfault") == NOISE
    assert verdict(compare_reports(kernel, simulator(pgfault=20), {"m": (32, 500)}),
                   "pgfault") == DIFFER
    assert verdict(compare_reports(kernel, simulator()), "pgfault") == DIFFER


def test_thp_counter_above_the_simulator_is_noise_only_with_background_activity() -> None:
    lower = simulator(thp_fault_alloc=30)
    assert verdict(compare_reports(KERNEL, lower), "thp_fault_alloc") == DIFFER
    assert verdict(compare_reports(KERNEL, lower, background={"thp_fault_alloc": 3}),
                   "thp_fault_alloc") == NOISE
    higher = simulator(thp_fault_alloc=33)       # noise never takes events away
    assert verdict(compare_reports(KERNEL, higher, background={"thp_fault_alloc": 3}),
                   "thp_fault_alloc") == DIFFER
    split = simulator(thp_split_pmd=0)
    split["measurements"][0]["system"]["thp_split_pmd"] = 0
    kernel = copy.deepcopy(KERNEL)
    kernel["measurements"][0]["system"]["thp_split_pmd"] = 2    # others' THP work of any kind
    assert verdict(compare_reports(kernel, split, background={"thp_fault_alloc": 1}),
                   "thp_split_pmd") == NOISE
    assert verdict(compare_reports(kernel, split, background={"pgfault": 900}),
                   "thp_split_pmd") == DIFFER


def test_mapping_alignment_classes_and_adjacency() -> None:
    """kernel:  a [4 KiB-aligned, 2 MiB + 4 KiB] b [2 MiB-aligned, 2 MiB]: adjacent, a then b."""
    sim = simulator()
    sim["mappings"]["main"]["a"]["start"] = "0x7fff801ff000"     # 4 KiB class
    sim["mappings"]["main"]["b"]["start"] = "0x7fff80400000"     # 2 MiB class, adjacent
    result = compare_reports(KERNEL, sim)
    assert result.agrees
    sim["mappings"]["main"]["b"]["start"] = "0x7fff80000000"     # 1 GiB: "at least 2 MiB"
    result = compare_reports(KERNEL, sim)
    assert verdict(result, "mapping:b.alignment") == AGREE
    assert verdict(result, "adjacency:a->b") == DIFFER
    sim["mappings"]["main"]["a"]["start"] = "0x7fff7fe00000"     # 2 MiB: kernel's was not
    result = compare_reports(KERNEL, sim)
    assert verdict(result, "mapping:a.alignment") == DIFFER


def test_missing_and_extra_measurements_and_processes_are_differences() -> None:
    sim = simulator()
    sim["measurements"][0]["processes"]["child"] = dict(PROC)
    sim["measurements"].append({"label": "extra", "step": 9, "processes": {}, "system": {}})
    result = compare_reports(KERNEL, sim)
    assert {c.field for c in result.differences} == {"process", "measurement"}
    assert len(compare_reports(KERNEL, {"scenario": "s"}).differences) > 1


def test_repeats_take_the_mode_and_the_minimum_of_event_counters() -> None:
    runs = [copy.deepcopy(KERNEL) for _ in range(3)]
    for run, pgfault, rss in zip(runs, (40, 33, 35), (65536, 65532, 65536)):
        run["measurements"][0]["system"]["pgfault"] = pgfault
        run["measurements"][0]["processes"]["main"]["VmRSS"] = rss
    combined, varied = combine(runs)
    m = combined["measurements"][0]
    assert m["system"]["pgfault"] == 33 and m["processes"]["main"]["VmRSS"] == 65536
    assert varied == {("m", "system", "pgfault"): [40, 33, 35],
                      ("m", "main", "VmRSS"): [65536, 65532, 65536]}
