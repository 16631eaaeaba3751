"""Field-by-field comparison of the live kernel's report with the simulator's.

The kernel's report is the expectation: every field it has is checked, with the
oracle's rules (shared/oracle/compare.py, whose evidence is repeated kernel runs):

* every process figure, ``HugePages_*``, the ``thp_*`` counters and ``step``: exact;
* ``pgfault`` is system-wide, so other processes can only add to it: within 2. When
  the run measured noise (:class:`pagewalk.live.runner.MeasureNoise`), a simulator
  figure between the scenario processes' own fault count and the measured figure
  (each widened by 2) is consistent with the kernel: verdict ``noise``, not ``differ``;
* the ``thp_*`` counters are system-wide too, with no per-process count to bound them:
  a kernel figure above the simulator's is ``noise`` when the run's idle windows saw
  other processes move any THP counter (their THP work faults, splits and collapses
  together), else ``differ``;
* mappings: the length exactly, the alignment class of the start (an expected 1 GiB
  start must be 1 GiB-aligned, 2 MiB at least 2 MiB-aligned, 4 KiB not 2 MiB-aligned),
  and every pair of mappings adjacent in the kernel's layout adjacent in the same order;
  never the absolute address;
* version 3: a kernel report with ``"pressure": true`` (a swap file or a memory limit)
  comes from a kernel that varies a little under reclaim, so sizes agree within
  max(64 kB, 3 % of the kernel's value) and the counts ``minflt``, ``majflt``,
  ``pgfault``, ``pgmajfault``, ``pswpin``, ``pswpout`` within max(16, 3 %)
  (:func:`pressure_tolerance`); ``oom_kill``, ``thp_*``, ``HugePages_*`` and ``step`` stay
  exact, and the simulator's report must say ``"pressure": true`` too.

Figures the simulator has and the kernel's report has not (the ``tlb_*`` figures,
extra vmstat events) are not compared.

A side that failed the scenario (a step refused with an errno or answered with a signal
it did not expect) has a report of the scenario and its ``failure`` only
(:func:`failure_json`); an identical failure on both sides -- the same errno, or the same
signal at the same address, at the same step -- is agreement. A SIGKILL (the OOM killer)
has no address: the kernel does not say where it struck.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pagewalk.errors import ExpectationFailed, KernelError, Signal, SignalError, SyscallError
from pagewalk.scenario.runner import SIZE_FIELDS
from pagewalk.units import GiB, MiB

PGFAULT_TOLERANCE = 2
#: version 3 (reports with "pressure": true): the oracle's compare.py, from 5 runs each
PRESSURE_SIZES = frozenset({*SIZE_FIELDS, "Mlocked"})                      # kB
PRESSURE_COUNTS = frozenset({"minflt", "majflt", "pgfault", "pgmajfault", "pswpin", "pswpout"})
PRESSURE_SIZE_FLOOR_KB = 64
PRESSURE_COUNT_FLOOR = 16
PRESSURE_RELATIVE = 0.03
AGREE, DIFFER, NOISE = "agree", "differ", "noise"
MISSING = "missing"


@dataclass(frozen=True, slots=True)
class FieldCheck:
    """One checked field. ``label`` is a measure label or ``mappings``; ``process`` a
    process name, ``system`` or ``-``."""

    label: str
    process: str
    field: str
    kernel: Any
    simulator: Any
    verdict: str               # AGREE, DIFFER or NOISE
    note: str = ""

    def line(self) -> str:
        """The oracle's one-line form: ``LABEL PROCESS FIELD: kernel K, simulator S``."""
        text = f"{self.label} {self.process} {self.field}: kernel {self.kernel}, " \
               f"simulator {self.simulator}"
        return f"{text} ({self.note})" if self.note else text

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "process": self.process, "field": self.field,
                "kernel": self.kernel, "simulator": self.simulator, "verdict": self.verdict,
                "note": self.note}


@dataclass(slots=True)
class Comparison:
    checks: list[FieldCheck] = field(default_factory=list)

    def count(self, verdict: str) -> int:
        return sum(1 for check in self.checks if check.verdict == verdict)

    @property
    def differences(self) -> list[FieldCheck]:
        return [check for check in self.checks if check.verdict == DIFFER]

    @property
    def agrees(self) -> bool:
        return not self.differences

    def add(self, label: str, process: str, name: str, kernel: Any, simulator: Any,
            verdict: str | None = None, note: str = "") -> None:
        if verdict is None:
            verdict = AGREE if kernel == simulator else DIFFER
        self.checks.append(FieldCheck(label, process, name, kernel, simulator, verdict, note))

    def summary(self) -> str:
        text = f"{self.count(AGREE)} agree, {self.count(DIFFER)} differ"
        noisy = self.count(NOISE)
        return text + (f", {noisy} within measured noise" if noisy else "")


def align_class(addr: int) -> str:
    if addr % GiB == 0:
        return "1GiB"
    if addr % (2 * MiB) == 0:
        return "2MiB"
    return "4KiB"


def align_ok(expected_class: str, addr: int) -> bool:
    if expected_class == "1GiB":
        return addr % GiB == 0
    if expected_class == "2MiB":
        return addr % (2 * MiB) == 0
    return addr % (2 * MiB) != 0


def compare_reports(kernel: dict[str, Any], simulator: dict[str, Any],
                    pgfault_bounds: dict[str, tuple[int, int]] | None = None,
                    background: dict[str, int] | None = None) -> Comparison:
    """Check every field of the kernel's report against the simulator's.

    ``pgfault_bounds`` maps a measure label to (faults the scenario processes counted,
    pgfault measured); ``background`` holds the vmstat events other processes made
    while the runs stood idle. Both come from the live run (verify.LiveResult).
    """
    result = Comparison()
    result.add("-", "-", "scenario", kernel.get("scenario"), simulator.get("scenario"))
    if "failure" in kernel or "failure" in simulator:
        _compare_failures(kernel.get("failure"), simulator.get("failure"), result)
        return result
    pressure = kernel.get("pressure") is True
    if pressure:
        result.add("-", "-", "pressure", True, simulator.get("pressure", MISSING))
    _compare_measurements(kernel.get("measurements", []), simulator.get("measurements", []),
                          pgfault_bounds or {}, background or {}, pressure, result)
    _compare_mappings(kernel.get("mappings", {}), simulator.get("mappings", {}), result)
    return result


def failure_json(err: KernelError) -> dict[str, Any]:
    """Where and how a run failed: ``{"step", "error"}`` for an errno, ``{"step", "signal",
    "address"}`` for a signal (SIGKILL: no address), ``{"step", "expectation"}`` for an
    unmet expectation."""
    step = err.location.step if err.location is not None else None
    if isinstance(err, SyscallError):
        return {"step": step, "error": err.errno.name}
    if isinstance(err, SignalError) and err.signal is Signal.SIGKILL:
        return {"step": step, "signal": err.signal.name}
    if isinstance(err, SignalError):
        return {"step": step, "signal": err.signal.name, "address": f"{err.vaddr:#x}"}
    what = err.message if isinstance(err, ExpectationFailed) else str(err)
    return {"step": step, "expectation": what}


def describe_failure(failure: dict[str, Any] | None) -> str:
    """``step 6: SIGBUS at 0x7ffff7a00000``, ``step 1: EINVAL``, or ``ran it``."""
    if failure is None:
        return "ran it"
    if "signal" in failure:
        where = failure.get("address")
        what = failure["signal"] + (f" at {where}" if where is not None else "")
    else:
        what = failure.get("error") or failure.get("expectation", "failed")
    return f"step {failure.get('step')}: {what}"


def _compare_failures(kernel: dict[str, Any] | None, simulator: dict[str, Any] | None,
                      result: Comparison) -> None:
    """Both failed: step, errno or signal and address must be the same (one check each);
    one side failed: a difference."""
    if kernel is None or simulator is None:
        result.add("failure", "-", "failure", describe_failure(kernel),
                   describe_failure(simulator), DIFFER)
        return
    for name in ("step", *sorted((kernel.keys() | simulator.keys()) - {"step"})):
        result.add("failure", "-", name, kernel.get(name, MISSING), simulator.get(name, MISSING))


#: how far another mlocking program was seen to move Mlocked during a run (kB)
MLOCKED_NOISE_KB = 64


def pressure_tolerance(name: str, kernel: Any) -> float:
    """How far a figure of a pressure report may be from the kernel's (0: exact)."""
    if not isinstance(kernel, int) or isinstance(kernel, bool):
        return 0
    if name in PRESSURE_SIZES:
        return max(PRESSURE_SIZE_FLOOR_KB, PRESSURE_RELATIVE * abs(kernel))
    if name in PRESSURE_COUNTS:
        return max(PRESSURE_COUNT_FLOOR, PRESSURE_RELATIVE * abs(kernel))
    return 0


def _within_pressure(name: str, kernel: Any, simulator: Any) -> str | None:
    """The note of a pressure figure that differs from the kernel's within its tolerance,
    else None."""
    tolerance = pressure_tolerance(name, kernel)
    if tolerance and isinstance(simulator, int) and not isinstance(simulator, bool) \
            and simulator != kernel and abs(simulator - kernel) <= tolerance:
        return f"within the pressure tolerance of {tolerance:g}"
    return None


def _add_figure(result: Comparison, label: str, proc: str, name: str, kernel: Any,
                simulator: Any, pressure: bool) -> None:
    """An exact figure, or under pressure one within its tolerance (agreement, noted)."""
    note = _within_pressure(name, kernel, simulator) if pressure else None
    if note is not None:
        result.add(label, proc, name, kernel, simulator, AGREE, note)
    else:
        result.add(label, proc, name, kernel, simulator)


def _compare_measurements(kernel: list[dict[str, Any]], simulator: list[dict[str, Any]],
                          bounds: dict[str, tuple[int, int]], background: dict[str, int],
                          pressure: bool, result: Comparison) -> None:
    by_label = {m.get("label"): m for m in simulator}
    thp_background = sum(v for k, v in background.items() if k.startswith("thp_"))
    for m in kernel:
        label = m["label"]
        other = by_label.pop(label, None)
        if other is None:
            result.add(label, "-", "measurement", "present", MISSING)
            continue
        result.add(label, "-", "step", m.get("step"), other.get("step", MISSING))
        for proc, figures in m.get("processes", {}).items():
            theirs = other.get("processes", {}).get(proc)
            if theirs is None:
                result.add(label, proc, "process", "alive", MISSING)
                continue
            for name, value in figures.items():
                _add_figure(result, label, proc, name, value, theirs.get(name, MISSING),
                            pressure)
        for proc in other.get("processes", {}):
            if proc not in m.get("processes", {}):
                result.add(label, proc, "process", "not alive", "alive")
        for name, value in m.get("system", {}).items():
            theirs = other.get("system", {}).get(name, MISSING)
            if pressure and _within_pressure(name, value, theirs) is not None:
                _add_figure(result, label, "system", name, value, theirs, pressure)
            elif name == "pgfault":
                _check_pgfault(label, value, theirs, bounds.get(label), result)
            elif name == "pgmajfault" and isinstance(theirs, int) \
                    and abs(theirs - value) <= PGFAULT_TOLERANCE:
                # system-wide like pgfault: the oracle's compare.py allows 2 (version 2)
                result.add(label, "system", name, value, theirs, AGREE)
            elif name == "Mlocked" and isinstance(theirs, int) and theirs != value and \
                    background.get("locked_by_others_kb", 0) and \
                    abs(value - theirs) <= MLOCKED_NOISE_KB:
                result.add(label, "system", name, value, theirs, NOISE,
                           f"another program locks {background['locked_by_others_kb']} kB "
                           "of memory and moves the system-wide Mlocked")
            elif name.startswith("thp_") and isinstance(theirs, int) and value > theirs \
                    and thp_background:
                result.add(label, "system", name, value, theirs, NOISE,
                           f"other processes made {thp_background} THP events while the "
                           "run stood idle")
            else:
                result.add(label, "system", name, value, theirs)
    for extra in by_label:
        result.add(str(extra), "-", "measurement", "absent", "present")


def _check_pgfault(label: str, kernel: int, simulator: Any, bounds: tuple[int, int] | None,
                   result: Comparison) -> None:
    if not isinstance(simulator, int):
        result.add(label, "system", "pgfault", kernel, simulator, DIFFER)
        return
    if abs(simulator - kernel) <= PGFAULT_TOLERANCE:
        result.add(label, "system", "pgfault", kernel, simulator, AGREE)
        return
    if bounds is not None:
        accounted, measured = bounds
        if accounted - PGFAULT_TOLERANCE <= simulator <= measured + PGFAULT_TOLERANCE:
            note = (f"other processes added up to {measured - accounted} faults; the "
                    f"scenario's processes counted {accounted}")
            result.add(label, "system", "pgfault", kernel, simulator, NOISE, note)
            return
    result.add(label, "system", "pgfault", kernel, simulator, DIFFER,
               f"allowed: within {PGFAULT_TOLERANCE}")


def _compare_mappings(kernel: dict[str, Any], simulator: dict[str, Any],
                      result: Comparison) -> None:
    for proc, maps in kernel.items():
        theirs = simulator.get(proc, {})
        placed: dict[str, tuple[int, int, int, int]] = {}
        for name, mapping in maps.items():
            where = f"mapping:{name}"
            other = theirs.get(name)
            if other is None:
                result.add("mappings", proc, where, "present", MISSING)
                continue
            result.add("mappings", proc, where + ".length", mapping["length"], other["length"])
            start, their_start = int(mapping["start"], 0), int(other["start"], 0)
            cls = align_class(start)
            result.add("mappings", proc, where + ".alignment", f"{cls}-aligned",
                       f"{align_class(their_start)}-aligned",
                       AGREE if align_ok(cls, their_start) else DIFFER)
            placed[name] = (start, mapping["length"], their_start, other["length"])
        for name in theirs:
            if name not in maps:
                result.add("mappings", proc, f"mapping:{name}", "absent", "present")
        _compare_adjacency(proc, placed, result)


def _compare_adjacency(proc: str, placed: dict[str, tuple[int, int, int, int]],
                       result: Comparison) -> None:
    """Every pair adjacent in the kernel's layout must be adjacent, same order, in the
    simulator's."""
    for first, (start, length, their_start, their_length) in sorted(placed.items()):
        for second, (start2, _, their_start2, _) in sorted(placed.items()):
            if first == second or start + length != start2:
                continue
            ok = their_start + their_length == their_start2
            result.add("mappings", proc, f"adjacency:{first}->{second}", "adjacent",
                       "adjacent" if ok else "not adjacent")


__all__ = ["AGREE", "DIFFER", "NOISE", "PGFAULT_TOLERANCE", "PRESSURE_COUNTS", "PRESSURE_SIZES",
           "Comparison", "FieldCheck", "align_class", "compare_reports", "describe_failure",
           "failure_json", "pressure_tolerance"]
