"""The generator: the same seed gives the same scenario; every scenario is valid by
construction (the schema loads it, the simulator runs it to the end with each step's
outcome recorded, and annotated with those outcomes it replays to the same report);
over a few hundred seeds every step kind, mmap flag, prot, advice and writable knob
appears; no scenario uses the simulator-only khugepaged step."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from pagewalk.fuzz.campaign import AGREE, SimulatorSide
from pagewalk.fuzz.discover import SKIP, discover_sim
from pagewalk.fuzz.document import load, step_item, to_yaml
from pagewalk.fuzz.generate import ALL, CLASSES, KNOB_PATHS, UNWRITABLE, generate
from pagewalk.kernel import knobs as registry
from pagewalk.scenario import schema as s

SEEDS = range(400)
SIM_SEEDS = range(0, 400, 10)        # 40 scenarios through the simulator, every class


def _steps(doc: dict[str, Any]) -> list[tuple[str, Any]]:
    return [step_item(step) for step in doc["steps"]]


def test_same_seed_same_scenario_and_seeds_differ() -> None:
    for cls in (*CLASSES, ALL):
        assert generate(7, cls) == generate(7, cls)
        assert to_yaml(generate(7, cls)) == to_yaml(generate(7, cls))
    assert len({to_yaml(generate(seed)) for seed in range(50)}) == 50


def test_all_picks_every_class_from_the_seed() -> None:
    picked = Counter(generate(seed, ALL)["name"].split("-")[1] for seed in range(120))
    assert set(picked) == set(CLASSES)


def test_unknown_class_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown class"):
        generate(1, "swap")


def test_every_scenario_of_400_seeds_loads_with_the_schema() -> None:
    for seed in SEEDS:
        scenario = load(generate(seed), f"seed-{seed}")
        assert scenario.steps, seed
        assert isinstance(scenario.steps[-1], s.MeasureStep)
        assert not any(isinstance(step, s.KhugepagedStep) for step in scenario.steps)
        assert not any(st.expect_error or st.expect_signal for st in scenario.steps)


@pytest.mark.parametrize("seed", SIM_SEEDS)
def test_the_simulator_runs_every_scenario_and_its_annotation_replays(seed: int) -> None:
    """Valid by construction: no format error, no crash; a step is skipped only because
    its mapping or process is gone (an mmap failed, a munmap covered it); the scenario
    annotated with the simulator's own answers runs plainly to the same report."""
    doc = generate(seed)
    _, found = discover_sim(load(doc))
    for outcome in found.outcomes.values():
        if outcome.kind == SKIP:
            assert "is not a mapping of process" in outcome.name \
                or "is not running" in outcome.name, outcome
    evaluation = SimulatorSide().evaluate(doc)
    assert evaluation.verdict == AGREE, (evaluation.cls, evaluation.detail)


def test_coverage_of_steps_flags_prots_advice_and_knobs() -> None:
    kinds: set[str] = set()
    flags: set[str] = set()
    prots: set[str] = set()
    advice: set[str] = set()
    knobs: set[str] = set()
    page_sizes: set[int] = set()
    accesses: set[str] = set()
    omitted_flags = children_act = False
    for seed in SEEDS:
        doc = generate(seed)
        knobs.update(doc.get("system", {}).get("sysfs", {}))
        for kind, fields in _steps(doc):
            kinds.add(kind)
            if kind == "set":
                knobs.update(fields)
                continue
            if not isinstance(fields, dict):
                continue
            children_act |= fields.get("process", "main") != "main" and kind != "exit"
            if kind == "mmap":
                flags.update(fields.get("flags", []))
                omitted_flags |= "flags" not in fields
                page_sizes.add(fields.get("page_size", 0))
            if "prot" in fields:
                prots.add(fields["prot"])
            if kind == "madvise":
                advice.add(fields["advice"])
            if kind == "touch":
                accesses.add(fields.get("access", "write"))
    assert kinds == {"mmap", "munmap", "mprotect", "madvise", "touch", "write", "read",
                     "fork", "exit", "set", "measure",
                     "brk", "mremap", "mlock", "munlock", "mlockall", "munlockall",
                     "file", "truncate", "fadvise", "msync", "unlink"}
    assert flags == set(s.MMAP_FLAGS)
    assert prots == {"none", "r", "w", "x", "rw", "rx", "wx", "rwx"}
    assert advice == set(s.MADVISE_ADVICE)
    assert accesses == set(s.ACCESS_KINDS)
    assert {0, 2 << 20, 1 << 30} <= page_sizes
    assert omitted_flags and children_act
    writable = {spec.path for spec in registry.KNOB_SPECS} - UNWRITABLE
    assert knobs == writable == set(KNOB_PATHS)


def test_ranges_reach_across_vmas_holes_and_unaligned_offsets() -> None:
    """Over many seeds the kernel's answers include the range errors and both signals."""
    answers: Counter[str] = Counter()
    for seed in range(1, 400, 20):
        doc = generate(seed)
        _, found = discover_sim(load(doc))
        answers.update(found.refused(doc))
    for expected in ("touch SIGSEGV", "mmap ENOMEM", "mmap EINVAL", "madvise EINVAL"):
        assert answers[expected] > 0, answers
