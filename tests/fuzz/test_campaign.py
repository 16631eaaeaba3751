"""Discovery's annotation, the classification of mismatches, and the campaign loop:
the kernel's answers become expect_error/expect_signal (skipped steps left out, measure
indices renumbered); a step the kernel refused but the simulator accepts (or the other
way round) and a differing field each make their own class; the first scenario of a
class is shrunk and kept once, later seeds of the class are counted against it. The
live side is driven here by a fake discovery (no kernel, no root)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from pagewalk.fuzz import campaign as c
from pagewalk.fuzz import discover as d
from pagewalk.fuzz.document import is_valid, load, step_item
from pagewalk.live.compare import FieldCheck

Doc = dict[str, Any]
MiB = 1 << 20

DOC: Doc = {"name": "fuzz-basic-1", "steps": [
    {"mmap": {"name": "a", "length": 4 * MiB}},
    {"mmap": {"name": "z", "length": 0}},
    {"touch": {"region": "z"}},
    {"madvise": {"region": "a", "offset": 1, "advice": "dontneed"}},
    {"touch": {"region": "a", "offset": 8 * MiB, "length": 4096}},   # past the end: SIGSEGV
    {"write": {"region": "a", "data": "hi"}},
    {"read": {"region": "a", "length": 2}},
    {"measure": "end"},
]}


def _found(**outcomes: d.Outcome) -> d.Discovery:
    found = d.Discovery()
    for key, outcome in outcomes.items():
        found.record(int(key.removeprefix("s")), outcome)
    return found


def test_annotate_writes_the_answers_and_leaves_out_skipped_steps() -> None:
    found = _found(s1=d.Outcome(d.ERR, "EINVAL"), s2=d.Outcome(d.SKIP, "gone"),
                   s3=d.Outcome(d.ERR, "EINVAL"), s4=d.Outcome(d.SIG, "SIGSEGV"))
    found.data[6] = b"hi"
    annotated, index_map = d.annotate(DOC, found)
    steps = [step_item(step) for step in annotated["steps"]]
    assert [kind for kind, _ in steps] == ["mmap", "mmap", "madvise", "touch", "write",
                                           "read", "measure"]
    assert steps[1][1]["expect_error"] == "EINVAL"
    assert steps[2][1]["expect_error"] == "EINVAL"
    assert steps[3][1]["expect_signal"] == "SIGSEGV"
    assert steps[5][1]["expect"] == "hi"
    assert index_map[7] == 6 and 2 not in index_map
    assert is_valid(annotated)
    report = {"measurements": [{"label": "end", "step": 7}]}
    assert d.remap_report(report, index_map)["measurements"][0]["step"] == 6
    assert "expect_error" not in step_item(DOC["steps"][1])[1]      # the input is unchanged


def test_read_bytes_not_text_are_not_expected() -> None:
    for data in (b"\x02\x00", b"\xff\x00"):
        found = _found()
        found.data[6] = data
        annotated, _ = d.annotate(DOC, found)
        assert "expect" not in step_item(annotated["steps"][6])[1]


def test_read_bytes_a_touch_stored_are_expected() -> None:
    """The simulator stores the touch byte (0x01) as the kernel runner does."""
    found = _found()
    found.data[6] = b"\x01\x00"
    annotated, _ = d.annotate(DOC, found)
    assert step_item(annotated["steps"][6])[1]["expect"] == "\x01\x00"


def test_an_answer_no_scenario_can_expect_is_unannotatable() -> None:
    for outcome, index in ((d.Outcome(d.ERR, "EINVAL"), 4), (d.Outcome(d.SIG, "SIGOTHER"), 4),
                           (d.Outcome(d.ERR, "EUNKNOWN"), 0)):
        with pytest.raises(d.Unannotatable):
            d.annotate(DOC, _found(**{f"s{index}": outcome}))


def test_short_and_field_classes() -> None:
    assert c.short_class("field:thp_split_pmd") == "thp-split-pmd"
    assert c.short_class("kernel-error:madvise:EINVAL") == "kernel-einval-madvise"
    assert c.short_class("sim-error:touch:SIGSEGV") == "sim-sigsegv-touch"
    assert c.short_class("errno:mmap:ENOMEM/EINVAL") == "errno-mmap-enomem-einval"
    assert c.short_class("sim-crash:KeyError") == "sim-crash-keyerror"
    check = FieldCheck("mappings", "main", "mapping:m3.alignment", "2MiB", "4KiB", "differ")
    assert c.field_class(check) == "field:mapping.alignment"
    check = FieldCheck("mappings", "c1", "adjacency:m1->m2", "adjacent", "not", "differ")
    assert c.field_class(check) == "field:adjacency"


def _annotated(**changes: Any) -> Doc:
    doc = copy.deepcopy(DOC)
    doc["steps"] = [{"mmap": {"name": "a", "length": 4 * MiB, **changes}}, {"measure": "end"}]
    return doc


def test_simulator_verdicts_on_annotated_scenarios() -> None:
    report, cls, _ = c.simulator_verdict(_annotated())
    assert report is not None and cls is None
    _, cls, _ = c.simulator_verdict(_annotated(expect_error="ENOMEM"))
    assert cls == "kernel-error:mmap:ENOMEM"            # the kernel refused, not the simulator
    _, cls, _ = c.simulator_verdict(_annotated(length=0))
    assert cls == "sim-error:mmap:EINVAL"               # the simulator refused, not the kernel
    _, cls, _ = c.simulator_verdict(_annotated(length=0, expect_error="ENOMEM"))
    assert cls == "errno:mmap:ENOMEM/EINVAL"


class FakeLive:
    """What discover_live returns, from the simulator's report with one figure changed."""

    def __init__(self, report: dict[str, Any]) -> None:
        self.report = report

    def pgfault_bounds(self) -> dict[str, tuple[int, int]]:
        return {}

    def background(self) -> dict[str, int]:
        return {}


def _fake_kernel(monkeypatch: pytest.MonkeyPatch, vmpte_delta: int,
                 refuse: dict[int, d.Outcome] | None = None) -> None:
    def discover_live(scenario: Any, notify: Any = None) -> tuple[FakeLive, d.Discovery]:
        report, found = d.discover_sim(scenario)
        for index, outcome in (refuse or {}).items():
            found.outcomes[index] = outcome
        for m in report["measurements"]:
            m["processes"]["main"]["VmPTE"] += vmpte_delta
        return FakeLive(report), found
    monkeypatch.setattr(d, "discover_live", discover_live)


SMALL: Doc = {"name": "fuzz-basic-9", "steps": [
    {"mmap": {"name": "a", "length": 4 * MiB}},
    {"touch": {"region": "a"}},
    {"mprotect": {"region": "a", "prot": "r"}},
    {"measure": "end"},
]}


def test_live_side_agrees_and_classifies_a_field_and_a_refusal(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_kernel(monkeypatch, 0)
    assert c.LiveSide().evaluate(SMALL).verdict == c.AGREE
    _fake_kernel(monkeypatch, 4)
    evaluation = c.LiveSide().evaluate(SMALL)
    assert (evaluation.verdict, evaluation.cls) == (c.MISMATCH, "field:VmPTE")
    assert "end main VmPTE" in evaluation.detail
    _fake_kernel(monkeypatch, 0, {2: d.Outcome(d.ERR, "EACCES")})
    evaluation = c.LiveSide().evaluate(SMALL)
    assert evaluation.cls == "kernel-error:mprotect:EACCES"
    assert evaluation.refused == ["mprotect EACCES"]


class Recorder:
    def __init__(self) -> None:
        self.done: list[c.SeedResult] = []
        self.shrunk: list[int] = []

    def seed_started(self, seed: int, gen_class: str) -> None: ...
    def seed_done(self, result: c.SeedResult) -> None:
        self.done.append(result)
    def shrinking(self, failure: c.Failure, tried: int, steps: int) -> None:
        self.shrunk.append(steps)
    def note(self, text: str) -> None: ...


class PredicateSide:
    """A fake side: a scenario mismatches (class by the first fork's presence) when it
    has a touch step."""

    name = "simulator"

    def evaluate(self, doc: Doc) -> c.Evaluation:
        kinds = [step_item(step)[0] for step in doc["steps"]]
        if "touch" not in kinds:
            return c.Evaluation(c.AGREE)
        cls = "field:minflt" if "fork" in kinds else "field:VmRSS"
        return c.Evaluation(c.MISMATCH, cls, "fake", annotated=copy.deepcopy(doc))


def test_campaign_shrinks_each_class_once_and_keeps_it_once(tmp_path: Path) -> None:
    listener = Recorder()
    settings = c.Settings(gen_class="processes", keep_going=True, out_dir=tmp_path)
    result = c.run_campaign(range(6), PredicateSide(), settings, listener)
    assert [r.seed for r in listener.done] == list(range(6))
    assert set(result.failures) <= {"field:minflt", "field:VmRSS"} and result.failures
    for failure in result.failures.values():
        assert failure.steps_after is not None and failure.steps_after <= 4
        assert failure.path is not None and Path(failure.path).exists()
        kept = load(yaml.safe_load(Path(failure.path).read_text()))
        assert kept.name == f"fuzz-{failure.short}-{failure.seed}"
        assert failure.seeds[0] == failure.seed
    repeats = [r for r in result.results if r.same_as is not None]
    assert all(result.failures[r.cls or ""].seed == r.same_as for r in repeats)
    assert result.mismatches == sum(len(f.seeds) for f in result.failures.values())
    again = c.run_campaign(range(6), PredicateSide(), settings, Recorder())
    assert all(f.kept_note.startswith("a scenario of this class is already kept")
               for f in again.failures.values())
    assert len(list(tmp_path.glob("*.yaml"))) == len(result.failures)
    json.dumps(result.to_json())


def test_campaign_stops_at_the_first_mismatch_unless_asked_to_keep_going() -> None:
    settings = c.Settings(gen_class="processes", shrink=False)
    result = c.run_campaign(range(10), PredicateSide(), settings, Recorder())
    assert result.results[-1].verdict == c.MISMATCH
    assert sum(r.verdict == c.MISMATCH for r in result.results) == 1


def test_fresh_kernel_run_refusing_a_step_is_a_note_not_an_abort(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Under pressure the OOM killer may take another process, or at another step, in the
    fresh run than in discovery: the runner then refuses a step of a process that is gone
    (ScenarioError). The campaign notes it and goes on (it once ended a 300-seed run)."""
    from pagewalk.errors import ScenarioError
    from pagewalk.live import verify

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise ScenarioError("process 'main' is not running")

    monkeypatch.setattr(verify, "run_live", refuse)
    notes: list[str] = []

    class Notes(Recorder):
        def note(self, text: str) -> None:
            notes.append(text)

    assert c._fresh_report(DOC, Notes()) is None
    assert notes and "not running" in notes[0]
