"""`pagewalk fuzz` on the live kernel: a discovery run records the kernel's answers, and
the scenario annotated with them runs plainly on the kernel (`pagewalk verify`'s
runner) with the same answers. (Knob restoration is verify's, tested in test_verify.py.)"""

from __future__ import annotations

import pytest

from pagewalk.fuzz.campaign import LiveSide, fit_machine
from pagewalk.fuzz.discover import annotate, discover_live, remap_report
from pagewalk.fuzz.document import load, strip_expectations
from pagewalk.fuzz.generate import generate
from pagewalk.live.hugetlb_state import held_outside, uses_hugetlb
from pagewalk.live.verify import run_live
from tests.live.live_support import needs_gcc, needs_root

pytestmark = [needs_gcc, needs_root]


@pytest.mark.parametrize(("seed", "cls"), [(3, "basic"), (5, "hugetlb"), (2, "processes")])
def test_annotated_scenario_replays_on_the_kernel(seed: int, cls: str) -> None:
    doc = fit_machine(generate(seed, cls))
    if uses_hugetlb(load(doc)) and not held_outside().clean:
        pytest.skip(f"hugetlb on this kernel: {held_outside().describe()}")
    live, found = discover_live(load(doc))
    annotated, index_map = annotate(doc, found)
    replay = run_live(load(annotated))            # raises if an answer is not the same
    first = remap_report(live.report, index_map)
    assert [m["step"] for m in replay.report["measurements"]] == \
        [m["step"] for m in first["measurements"]]
    assert replay.report["mappings"].keys() == first["mappings"].keys()
    assert strip_expectations(annotated)["steps"] == [
        step for index, step in enumerate(doc["steps"]) if index in index_map]


def test_live_side_evaluates_a_scenario() -> None:
    evaluation = LiveSide().evaluate(generate(4, "thp"))
    assert evaluation.verdict in ("agree", "mismatch")
    assert evaluation.kernel_report is not None and evaluation.annotated is not None
