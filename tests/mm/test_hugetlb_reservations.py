"""hugetlb reservations given back when the owner's private pages are zapped
(__unmap_hugepage_range -> hugetlb_restore_reserve, free_huge_folio), checked at every
step of the measured scenarios against the pool invariants, and the figures the
kernel showed (tests/data/measured/hugetlb-restore-reserve*.kernel.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pagewalk.scenario import schema as s
from pagewalk.scenario.runner import ScenarioRun, run_scenario
from pagewalk.scenario.schema import load_scenario
from tests import invariants as inv

MEASURED = Path(__file__).resolve().parents[1] / "data" / "measured"
WRAPPED = (1 << 64) - 1


@pytest.mark.parametrize("name", ["hugetlb-restore-reserve", "hugetlb-restore-reserve-child",
                                  "errno-hugetlb-args", "hugetlb-fork", "hugetlb-cow-steal",
                                  "hugetlb-surplus-no-restore", "hugetlb-shared-fork-data"])
def test_pool_counters_add_up_at_every_step(name: str) -> None:
    """Pool counters, frames, rmap, RSS and VmPTE of every process after every step (the
    NR_PAGETABLE check needs a baseline before the runner's first process: not here)."""
    run = ScenarioRun(load_scenario(MEASURED / f"{name}.yaml"))
    k = run.kernel
    for step in run.scenario.steps:
        run.run_step(step)
        walks = inv.walk_all(k)
        for walk in walks:
            inv.check_rss(k, walk)
            inv.check_vmpte(k, walk)
        inv.check_frames(k, walks, inv.free_frames(k))
        inv.check_rmap(k, walks)
        inv.check_hugetlb(k, walks)


def rsvd_by_label(name: str) -> dict[str, int]:
    """HugePages_Rsvd at each measure, as pagewalk reports it; checked against what the
    kernel reported in the same file."""
    report = run_scenario(load_scenario(MEASURED / f"{name}.yaml")).to_json()
    kernel = json.loads((MEASURED / f"{name}.kernel.json").read_text())
    ours = {m["label"]: m["system"]["HugePages_Rsvd"] for m in report["measurements"]}
    assert ours == {m["label"]: m["system"]["HugePages_Rsvd"] for m in kernel["measurements"]}
    return ours


def test_the_kernel_figures_this_rule_gives() -> None:
    """Linux 6.18: a DONTNEED in the owner gives one reservation back; an owner's munmap
    of pages a child still maps releases their reservations before the child frees them,
    so HugePages_Rsvd reads 2**64 - 2 until the child exits."""
    assert rsvd_by_label("hugetlb-restore-reserve") == {
        "touched": 0, "dontneed-one": 1, "refault": 0, "dontneed-shared": 0,
        "munmap-shared": WRAPPED - 1, "child-gone": 1, "refault-after": 0, "all-gone": 0}
    assert rsvd_by_label("hugetlb-restore-reserve-child")["parent-gone"] == WRAPPED


def test_meminfo_prints_the_wrapped_count() -> None:
    run = ScenarioRun(load_scenario(MEASURED / "hugetlb-restore-reserve.yaml"))
    for step in run.scenario.steps:
        run.run_step(step)
        if isinstance(step, s.MeasureStep) and step.label == "munmap-shared":
            break
    from pagewalk.proc.meminfo import format_meminfo
    assert f"HugePages_Rsvd:    {WRAPPED - 1}" in format_meminfo(run.kernel)
