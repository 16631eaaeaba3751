"""Discovery: run a scenario recording what each step got, then write it into the steps.

A generated scenario carries no expectations, since the generator does not know the
kernel's answers. Discovery runs it on the live kernel (through verify.run_live, with
its lock and knob restoration, each run played by :class:`LiveDiscoveryRun`) or in the
simulator (:class:`SimDiscoveryRun`) and records per step ``ok``, the errno
(``err EINVAL``), the signal (``sig SIGSEGV``) or ``skip`` -- a step whose mapping or
process is gone by then (its mmap or fork failed, a munmap covered the mapping), which
both runners refuse. Every other step goes on as the kernel left it.

:func:`annotate` turns the outcomes into ``expect_error``/``expect_signal`` fields (and
a read's ``expect`` where the bytes are unambiguous) and leaves out the skipped steps;
the annotated scenario then runs as it is, on the kernel and in the simulator, with
the same answers -- unless the simulator disagrees, which is what the fuzzer looks for.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pagewalk.errors import Errno, ScenarioError, SignalError, SyscallError
from pagewalk.fuzz.document import ACCESS_STEPS, CALL_STEPS, Doc, step_item
from pagewalk.hw.physmem import TOUCH_BYTE
from pagewalk.live.errors import ProbeError
from pagewalk.live.runner import LiveRun
from pagewalk.live.verify import LiveResult, Notify, run_live
from pagewalk.scenario import schema as s
from pagewalk.scenario.runner import ScenarioRun

OK, ERR, SIG, SKIP = "ok", "err", "sig", "skip"
EXPECTABLE_SIGNALS = frozenset(sig.name for sig in s.EXPECTABLE_SIGNALS)
# version 2 file steps, which may carry expect_error like the calls of document.CALL_STEPS
FILE_CALL_STEPS = ("file", "truncate", "fadvise", "msync", "unlink")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one step got: OK, ERR with an errno name, SIG with a signal name, or SKIP."""

    kind: str
    name: str = ""

    def __str__(self) -> str:
        return f"{self.kind} {self.name}".strip()


@dataclass(slots=True)
class Discovery:
    """Per step index: the outcome, and the bytes a successful read returned."""

    outcomes: dict[int, Outcome] = field(default_factory=dict)
    data: dict[int, bytes] = field(default_factory=dict)

    def record(self, index: int, outcome: Outcome) -> None:
        self.outcomes.setdefault(index, outcome)        # a write's first failing chunk wins

    def refused(self, doc: Doc) -> list[str]:
        """``step errno`` (``madvise EINVAL``) of each step of ``doc`` that failed."""
        return [f"{step_item(doc['steps'][index])[0]} {o.name}"
                for index, o in sorted(self.outcomes.items()) if o.kind in (ERR, SIG)]


class Unannotatable(Exception):
    """The kernel answered in a way a scenario cannot expect (an errno on an access step,
    a signal other than SIGSEGV/SIGBUS, an errno the probe could not name)."""


# -- the live kernel --------------------------------------------------------------------------

class LiveDiscoveryRun(LiveRun):
    """A live run that records each step's reply instead of failing on it."""

    found: ClassVar[Discovery]

    def run_step(self, step: s.Step) -> None:
        try:
            super().run_step(step)
        except ScenarioError as err:          # its mapping or process is gone
            self.found.record(step.index, Outcome(SKIP, err.message))
            return
        self.found.record(step.index, Outcome(OK))

    def outcome(self, reply: str, step: s.Step) -> bool:
        parts = reply.split()
        if parts and parts[0] == "ok":
            return True
        if len(parts) >= 2 and parts[0] in ("err", "sig"):
            self.found.record(step.index, Outcome(ERR if parts[0] == "err" else SIG, parts[1]))
            return False
        raise ProbeError(f"the probe answered {reply!r}", self.location(step))

    def do_read(self, step: s.ReadStep) -> None:
        got = self.read_bytes(step)
        if got is not None:
            self.found.data[step.index] = got


def discover_live(scenario: s.Scenario, notify: Notify | None = None) -> tuple[LiveResult,
                                                                               Discovery]:
    """One discovery run on the live kernel: its report and each step's outcome. Raises
    LiveError if this machine cannot run it (root, a pool the kernel would not fill)."""
    found = Discovery()
    run_class = type("BoundLiveDiscoveryRun", (LiveDiscoveryRun,), {"found": found})
    result = run_live(scenario, 1, notify=notify, run_class=run_class)
    return result, found


# -- the simulator ---------------------------------------------------------------------------

class SimDiscoveryRun(ScenarioRun):
    """A simulator run that records each step's outcome instead of failing on it."""

    def __init__(self, scenario: s.Scenario) -> None:
        super().__init__(scenario)
        self.found = Discovery()

    def run_step(self, step: s.Step) -> None:
        try:
            self.do_step(step)
        except SyscallError as err:
            self.found.record(step.index, Outcome(ERR, err.errno.name))
        except SignalError as err:
            self.found.record(step.index, Outcome(SIG, err.signal.name))
        except ScenarioError as err:          # its mapping or process is gone
            self.found.record(step.index, Outcome(SKIP, err.message))
        else:
            self.found.record(step.index, Outcome(OK))


def discover_sim(scenario: s.Scenario) -> tuple[dict[str, Any], Discovery]:
    """One discovery run in the simulator: its report (JSON) and each step's outcome.
    Anything but a recorded step outcome (a crash, a knob the simulator refuses)
    propagates."""
    run = SimDiscoveryRun(scenario)
    return run.run().to_json(), run.found


# -- annotation --------------------------------------------------------------------------------

def _readable(data: bytes) -> str | None:
    """``data`` as the text of a read's ``expect``, unless it is no plain ASCII text (but
    for zeros and the byte a touch stores)."""
    if any(b > 0x7E or (b < 0x20 and b not in (0, TOUCH_BYTE)) for b in data):
        return None
    return data.decode("ascii")


def annotate(doc: Doc, found: Discovery) -> tuple[Doc, dict[int, int]]:
    """``doc`` with each step's discovered outcome as its expectation, skipped steps left
    out; and the map from old step indices to new ones."""
    out = copy.deepcopy(doc)
    steps: list[Doc] = []
    index_map: dict[int, int] = {}
    for index, step in enumerate(out["steps"]):
        outcome = found.outcomes.get(index, Outcome(OK))
        kind, fields = step_item(step)
        if outcome.kind == SKIP:
            continue
        if outcome.kind == ERR:
            if kind not in CALL_STEPS + FILE_CALL_STEPS or outcome.name not in Errno.__members__:
                raise Unannotatable(f"step {index} ({kind}) failed with {outcome.name}")
            fields["expect_error"] = outcome.name
        elif outcome.kind == SIG:
            # version 3: the OOM killer's SIGKILL ends whatever step charged the memory
            if outcome.name not in EXPECTABLE_SIGNALS or (kind not in ACCESS_STEPS and
                                                          outcome.name != "SIGKILL"):
                raise Unannotatable(f"step {index} ({kind}) got {outcome.name}")
            fields["expect_signal"] = outcome.name
        elif kind == "read" and index in found.data:
            text = _readable(found.data[index])
            if text is not None and len(text) == fields["length"]:
                fields["expect"] = text
        index_map[index] = len(steps)
        steps.append(step)
    out["steps"] = steps
    return out, index_map


def remap_report(report: dict[str, Any], index_map: dict[int, int]) -> dict[str, Any]:
    """``report`` with each measure's ``step`` as the annotated scenario numbers it."""
    out = copy.deepcopy(report)
    for m in out["measurements"]:
        m["step"] = index_map.get(m["step"], m["step"])
    return out


__all__ = ["ERR", "OK", "SIG", "SKIP", "Discovery", "LiveDiscoveryRun", "Outcome",
           "SimDiscoveryRun", "Unannotatable", "annotate", "discover_live", "discover_sim",
           "remap_report"]
