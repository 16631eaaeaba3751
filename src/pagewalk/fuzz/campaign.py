"""A fuzzing campaign: per seed generate, run both sides, classify; shrink each new class.

Two sides evaluate a scenario document:

* :class:`LiveSide` -- discovery on the live kernel (discover.py), the steps annotated
  with the kernel's answers, the simulator run on the annotated scenario, and the two
  reports compared with the oracle's tolerances (live/compare.py compare_reports);
* :class:`SimulatorSide` -- the simulator alone (``--simulator-only``): the scenario
  must load with the schema, run with each step's outcome recorded, and, annotated
  with those outcomes, run again to the same report. What it finds is a simulator
  fault (a crash, a malformed scenario, a run that does not replay), never a
  disagreement with the kernel.

A mismatch has a *class*: the first differing field of the comparison
(``field:VmPTE``, ``field:mapping.alignment``) or the disagreement on a step's outcome
(``kernel-error:madvise:EINVAL``: the kernel refused, the simulator did not;
``sim-error:touch:SIGSEGV``: the other way round; ``errno:mmap:ENOMEM/EINVAL``: both
refused, differently), or how the simulator failed (``sim-crash:KeyError``). The first
scenario of each class is shrunk (shrink.py) while it mismatches in the same class, and
kept: on the live side as ``fuzz-<short-class>-<seed>.yaml`` with the kernel report of a
fresh run of it (``.kernel.json``, as ``pagewalk verify -o`` writes it), at most one per
class in the output directory.
"""

from __future__ import annotations

import copy
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pagewalk.errors import (
    ConfigError,
    ExpectationFailed,
    NotImplementedStep,
    PagewalkError,
    ScenarioError,
    SignalError,
    SyscallError,
)
from pagewalk.fuzz import discover
from pagewalk.fuzz.document import Doc, canonical, load, step_item, strip_expectations, to_yaml
from pagewalk.fuzz.generate import generate
from pagewalk.fuzz.shrink import shrink
from pagewalk.live.compare import DIFFER, PGFAULT_TOLERANCE, Comparison, FieldCheck, compare_reports
from pagewalk.live.errors import LiveError

AGREE, MISMATCH, UNAVAILABLE = "agree", "mismatch", "unavailable"
FINAL_REPEAT = 3           # runs combined into the kept kernel report (as verify --repeat 3)


@dataclass(slots=True)
class Evaluation:
    """One scenario on one side."""

    verdict: str                               # AGREE, MISMATCH or UNAVAILABLE
    cls: str | None = None                     # the mismatch class
    detail: str = ""
    annotated: Doc | None = None               # the scenario with the discovered answers
    kernel_report: dict[str, Any] | None = None
    refused: list[str] = field(default_factory=list)   # steps that failed: "mmap EINVAL"

    @property
    def short(self) -> str:
        return short_class(self.cls or "")


def short_class(cls: str) -> str:
    """``field:thp_split_pmd`` -> ``thp-split-pmd``; ``kernel-error:madvise:EINVAL`` ->
    ``kernel-einval-madvise``: a file-name part."""
    parts = cls.split(":")
    if parts[0] == "field":
        text = parts[1]
    elif parts[0] in ("kernel-error", "sim-error") and len(parts) == 3:
        text = f"{parts[0].split('-')[0]}-{parts[2]}-{parts[1]}"
    elif parts[0] == "errno" and len(parts) == 3:
        text = f"errno-{parts[1]}-{parts[2].replace('/', '-')}"
    else:
        text = "-".join(parts)
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48] or "unknown"


def field_class(check: FieldCheck) -> str:
    """The class of a differing field: its name, mapping names left out."""
    name = check.field
    if name.startswith("mapping:"):
        rest = name.split(":", 1)[1]
        name = "mapping." + rest.rsplit(".", 1)[1] if "." in rest else "mapping"
    elif name.startswith("adjacency:"):
        name = "adjacency"
    return f"field:{name}"


class Side(Protocol):
    """What evaluates a scenario: the live kernel and the simulator, or the simulator."""

    name: str

    def evaluate(self, doc: Doc) -> Evaluation: ...


# -- the simulator's verdict on an annotated scenario ------------------------------------------

def _step_of(doc: Doc, err: PagewalkError) -> tuple[str, Doc]:
    index = err.location.step if err.location is not None else None
    if index is None or not 0 <= index < len(doc["steps"]):
        return "?", {}
    kind, fields = step_item(doc["steps"][index])
    return kind, fields if isinstance(fields, dict) else {}


def simulator_verdict(annotated: Doc) -> tuple[dict[str, Any] | None, str | None, str]:
    """Run the annotated scenario in the simulator: (report, None, "") or (None, class,
    detail) when the simulator disagreed with an answer or failed."""
    from pagewalk.scenario.runner import run_scenario
    try:
        return run_scenario(load(annotated)).to_json(), None, ""
    except ExpectationFailed as err:
        kind, fields = _step_of(annotated, err)
        expected = fields.get("expect_error") or fields.get("expect_signal")
        if expected and "but the step succeeded" in err.message:
            return None, f"kernel-error:{kind}:{expected}", str(err)
        return None, f"data:{kind}", str(err)
    except (SyscallError, SignalError) as err:
        kind, fields = _step_of(annotated, err)
        got = err.errno.name if isinstance(err, SyscallError) else err.signal.name
        expected = fields.get("expect_error") or fields.get("expect_signal")
        if expected:
            return None, f"errno:{kind}:{expected}/{got}", str(err)
        return None, f"sim-error:{kind}:{got}", str(err)
    except ScenarioError as err:
        return None, "sim-scenario-error", str(err)
    except NotImplementedStep as err:
        return None, "sim-not-implemented", str(err)
    except ConfigError as err:
        return None, "sim-config", str(err)
    except PagewalkError as err:
        return None, f"sim-{type(err).__name__}", str(err)
    except Exception as err:  # noqa: BLE001 (a simulator bug: the finding is the crash)
        return None, f"sim-crash:{type(err).__name__}", f"{type(err).__name__}: {err}"


def first_difference(comparison: Comparison) -> FieldCheck | None:
    return next((c for c in comparison.checks if c.verdict == DIFFER), None)


# -- the sides -------------------------------------------------------------------------------

def fit_machine(doc: Doc) -> Doc:
    """``doc`` as this machine can replay it: PROT_EXEC-only memory is readable on a CPU
    without protection keys, so a scenario using it says ``system.pku: false`` here."""
    from pagewalk.live.verify import machine_has_pku
    uses_exec_only = any(isinstance(fields, dict) and fields.get("prot") == "x"
                         for fields in (step_item(step)[1] for step in doc["steps"]))
    if not uses_exec_only or machine_has_pku():
        return doc
    out = copy.deepcopy(doc)
    out.setdefault("system", {})["pku"] = False
    return out


class LiveSide:
    """The live kernel (discovery) against the simulator (annotated scenario)."""

    name = "kernel"

    def __init__(self, notify: Callable[[str], None] | None = None) -> None:
        self.notify = notify

    def evaluate(self, doc: Doc) -> Evaluation:
        doc = fit_machine(strip_expectations(doc))
        try:
            live, found = discover.discover_live(load(doc), self.notify)
        except LiveError as err:
            return Evaluation(UNAVAILABLE, detail=str(err))
        try:
            annotated, index_map = discover.annotate(doc, found)
        except discover.Unannotatable as err:
            return Evaluation(UNAVAILABLE, detail=f"the kernel answered what a scenario "
                              f"cannot expect: {err}", refused=found.refused(doc))
        report = discover.remap_report(live.report, index_map)
        evaluation = Evaluation(AGREE, annotated=annotated, kernel_report=report,
                                refused=found.refused(doc))
        simulated, cls, detail = simulator_verdict(annotated)
        if simulated is None:
            evaluation.verdict, evaluation.cls, evaluation.detail = MISMATCH, cls, detail
            return evaluation
        comparison = compare_reports(report, simulated, live.pgfault_bounds(),
                                     live.background())
        first = first_difference(comparison)
        if first is not None:
            evaluation.verdict, evaluation.cls = MISMATCH, field_class(first)
            evaluation.detail = first.line()
        return evaluation


class SimulatorSide:
    """The simulator alone: valid by construction, no crash, annotated runs replay."""

    name = "simulator"

    def evaluate(self, doc: Doc) -> Evaluation:
        doc = strip_expectations(doc)
        try:
            scenario = load(doc)
        except ScenarioError as err:
            return Evaluation(MISMATCH, "malformed", str(err))
        try:
            report, found = discover.discover_sim(scenario)
        except ConfigError as err:
            return Evaluation(MISMATCH, "sim-config", str(err))
        except PagewalkError as err:
            return Evaluation(MISMATCH, f"sim-{type(err).__name__}", str(err))
        except Exception as err:  # noqa: BLE001 (a simulator bug: the finding is the crash)
            return Evaluation(MISMATCH, f"sim-crash:{type(err).__name__}",
                              f"{type(err).__name__}: {err}")
        try:
            annotated, index_map = discover.annotate(doc, found)
        except discover.Unannotatable as err:
            return Evaluation(MISMATCH, "sim-unannotatable", str(err),
                              refused=found.refused(doc))
        replayed, cls, detail = simulator_verdict(annotated)
        evaluation = Evaluation(AGREE, annotated=annotated, refused=found.refused(doc))
        if replayed is None:
            evaluation.verdict, evaluation.cls = MISMATCH, f"replay-{cls}"
            evaluation.detail = detail
        elif canonical(_figures(replayed)) != \
                canonical(_figures(discover.remap_report(report, index_map))):
            evaluation.verdict, evaluation.cls = MISMATCH, "replay-differs"
            evaluation.detail = "the annotated scenario's report differs from the discovery run's"
        return evaluation


def _figures(report: dict[str, Any]) -> dict[str, Any]:
    """A report without its ``outcomes``: the annotated run expects the failures that the
    discovery run found, so only it lists them."""
    return {key: value for key, value in report.items() if key != "outcomes"}


# -- the campaign --------------------------------------------------------------------------------

@dataclass(slots=True)
class SeedResult:
    seed: int
    gen_class: str
    verdict: str
    cls: str | None
    detail: str
    steps: int
    seconds: float
    same_as: int | None = None        # the seed whose failure has this class


@dataclass(slots=True)
class Failure:
    """A mismatch class: its first scenario, shrunk, and every seed that showed it."""

    cls: str
    seed: int
    detail: str
    steps_before: int
    doc: Doc
    evaluation: Evaluation
    seeds: list[int] = field(default_factory=list)
    steps_after: int | None = None
    shrink_runs: int = 0
    shrink_exhausted: bool = False
    flaky: bool = False
    path: str | None = None
    kept_note: str = ""

    @property
    def short(self) -> str:
        return short_class(self.cls)

    def to_json(self) -> dict[str, Any]:
        return {"class": self.cls, "short": self.short, "seed": self.seed, "seeds": self.seeds,
                "detail": self.detail, "steps_before": self.steps_before,
                "steps_after": self.steps_after, "shrink_runs": self.shrink_runs,
                "shrink_exhausted": self.shrink_exhausted, "flaky": self.flaky,
                "path": self.path, "note": self.kept_note}


class Listener(Protocol):
    def seed_started(self, seed: int, gen_class: str) -> None: ...
    def seed_done(self, result: SeedResult) -> None: ...
    def shrinking(self, failure: Failure, tried: int, steps: int) -> None: ...
    def note(self, text: str) -> None: ...


@dataclass(slots=True)
class Settings:
    gen_class: str = "all"
    keep_going: bool = False
    shrink: bool = True
    out_dir: Path | None = None
    shrink_runs: int = 150
    shrink_seconds: float = 900.0
    hugetlb: bool = True           # False (--no-hugetlb): scenarios without hugetlb


@dataclass(slots=True)
class CampaignResult:
    side: str
    results: list[SeedResult] = field(default_factory=list)
    failures: dict[str, Failure] = field(default_factory=dict)
    refused: Counter[str] = field(default_factory=Counter)   # "mmap EINVAL" -> steps

    @property
    def mismatches(self) -> int:
        """Mismatching seeds, those of classes that did not reproduce left out."""
        flaky = {cls for cls, f in self.failures.items() if f.flaky}
        return sum(1 for r in self.results if r.verdict == MISMATCH and r.cls not in flaky)

    @property
    def flaky(self) -> int:
        return sum(1 for f in self.failures.values() if f.flaky)

    def to_json(self) -> dict[str, Any]:
        return {"side": self.side, "seeds": len(self.results),
                "agree": sum(1 for r in self.results if r.verdict == AGREE),
                "mismatches": self.mismatches, "flaky_classes": self.flaky,
                "unavailable": sum(1 for r in self.results if r.verdict == UNAVAILABLE),
                "results": [{"seed": r.seed, "class": r.gen_class, "verdict": r.verdict,
                             "mismatch_class": r.cls, "detail": r.detail, "steps": r.steps,
                             "seconds": round(r.seconds, 2), "same_as": r.same_as}
                            for r in self.results],
                "refused": dict(self.refused.most_common()),
                "failures": [f.to_json() for f in self.failures.values()]}


def run_campaign(seeds: Iterable[int], side: Side, settings: Settings,
                 listener: Listener) -> CampaignResult:
    result = CampaignResult(side.name)
    for seed in seeds:
        doc = generate(seed, settings.gen_class, hugetlb=settings.hugetlb)
        gen_class = doc["name"].split("-")[1]
        listener.seed_started(seed, gen_class)
        started = time.monotonic()
        evaluation = side.evaluate(doc)
        outcome = SeedResult(seed, gen_class, evaluation.verdict, evaluation.cls,
                             evaluation.detail, len(doc["steps"]), 0.0)
        result.refused.update(evaluation.refused)
        stop = False
        if evaluation.verdict == MISMATCH and evaluation.cls is not None:
            known = result.failures.get(evaluation.cls)
            if known is not None and not known.flaky:
                known.seeds.append(seed)
                outcome.same_as = known.seed
            else:                          # a new class, or one that did not reproduce
                failure = Failure(evaluation.cls, seed, evaluation.detail, len(doc["steps"]),
                                  doc, evaluation, seeds=[*(known.seeds if known else []), seed])
                result.failures[failure.cls] = failure
                _settle(failure, side, settings, listener)
                stop = not failure.flaky
        outcome.seconds = time.monotonic() - started
        result.results.append(outcome)
        listener.seed_done(outcome)
        if stop and not settings.keep_going:
            break
    return result


def _settle(failure: Failure, side: Side, settings: Settings, listener: Listener) -> None:
    """Shrink a new failure (if asked, and if it reproduces) and keep it."""
    if settings.shrink:
        again = side.evaluate(failure.doc)
        if again.cls != failure.cls:
            failure.flaky = True
            failure.kept_note = (f"not shrunk: a second run gave {again.cls or again.verdict}"
                                 f" ({again.detail})")
        else:
            _shrink(failure, side, settings, listener)
    if settings.out_dir is not None and not failure.flaky:
        keep(failure, side, settings.out_dir, listener)


def _shrink(failure: Failure, side: Side, settings: Settings, listener: Listener) -> None:
    last: dict[str, Evaluation] = {}

    def holds(candidate: Doc) -> bool:
        evaluation = side.evaluate(candidate)
        if evaluation.cls == failure.cls:
            last["ok"] = evaluation
            return True
        return False

    def progress(tried: int, current: Doc) -> None:
        listener.shrinking(failure, tried, len(current["steps"]))

    listener.shrinking(failure, 0, len(failure.doc["steps"]))
    shrunk = shrink(failure.doc, holds, max_tries=settings.shrink_runs,
                    max_seconds=settings.shrink_seconds, progress=progress)
    failure.doc = shrunk.doc
    failure.steps_after = len(shrunk.doc["steps"])
    failure.shrink_runs = shrunk.tried
    failure.shrink_exhausted = shrunk.exhausted
    if "ok" in last:
        failure.evaluation = last["ok"]
        failure.detail = last["ok"].detail


def keep(failure: Failure, side: Side, out_dir: Path, listener: Listener) -> None:
    """Write the failure's scenario (annotated, renamed) into ``out_dir``; on the live
    side with the kernel report of a fresh run, unless a scenario of its class is there."""
    out_dir.mkdir(parents=True, exist_ok=True)
    existing = sorted(out_dir.glob(f"fuzz-{failure.short}-*.yaml"))
    if existing:
        failure.path = str(existing[0])
        failure.kept_note = f"a scenario of this class is already kept: {existing[0].name}"
        return
    annotated = failure.evaluation.annotated or failure.doc
    name = f"fuzz-{failure.short}-{failure.seed}"
    doc = dict(annotated)
    doc["name"] = name
    shrunk = (f", shrunk from {failure.steps_before} to {failure.steps_after} steps"
              if failure.steps_after is not None else "")
    doc["description"] = (f"Found by pagewalk fuzz (seed {failure.seed}{shrunk}); "
                          f"class {failure.cls}: {failure.detail}")
    yaml_path = out_dir / f"{name}.yaml"
    if isinstance(side, LiveSide):
        report = _fresh_report(doc, listener)
        if report is None:
            failure.flaky = True
            failure.kept_note = "not kept: a fresh kernel run did not give the same answers"
            return
        yaml_path.with_suffix(".kernel.json").write_text(json.dumps(report, indent=2) + "\n")
        failure.kept_note = _still_differs(doc, report)
    yaml_path.write_text(to_yaml(doc))
    failure.path = str(yaml_path)


def _still_differs(doc: Doc, report: dict[str, Any]) -> str:
    """What the simulator says to the kept kernel report (the oracle's strict rules)."""
    simulated, cls, detail = simulator_verdict(doc)
    if simulated is None:
        return f"the kept scenario fails in the simulator: {cls}: {detail}"
    first = first_difference(compare_reports(report, simulated))
    if first is None:
        return "the simulator agrees with the kept kernel report (the mismatch was noise?)"
    return f"kept report differs first at: {first.line()}"


def _fresh_report(doc: Doc, listener: Listener) -> dict[str, Any] | None:
    """The kernel's report of the annotated scenario, run plainly (as ``pagewalk verify
    -o``), combined from FINAL_REPEAT runs; None if the kernel now answers otherwise."""
    from pagewalk.live.verify import run_live
    try:
        live = run_live(load(doc), FINAL_REPEAT)
    except (LiveError, PagewalkError) as err:
        # under memory pressure the OOM killer's victim and moment may differ from run to
        # run: a step of a process it took earlier this time is refused (ScenarioError)
        listener.note(f"{doc['name']}: the fresh kernel run failed: {err}")
        return None
    report = live.report
    for m in report["measurements"]:
        accounted, measured = live.pgfault_bounds()[m["label"]]
        if measured - accounted > PGFAULT_TOLERANCE:
            # other processes faulted during every run: keep what the scenario's processes
            # counted, as tests/data/measured/README.md does for noisy reports
            m["system"]["pgfault"] = accounted
    return report


__all__ = ["AGREE", "MISMATCH", "UNAVAILABLE", "CampaignResult", "Evaluation", "Failure",
           "LiveSide", "SeedResult", "Settings", "SimulatorSide", "field_class", "keep",
           "run_campaign", "short_class", "simulator_verdict"]
