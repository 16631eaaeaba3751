"""Run a scenario on the live kernel N times and combine the runs into one report.

:func:`run_live` checks that the scenario can be replayed here (:func:`refusal`),
builds the probe, takes the knob guard (knobs.py: lock, saved originals, restore on
any exit) and runs the scenario ``repeat`` times, each from the same starting state.
The combined report holds, per field, the most common value over the runs (ties: the
first run's), except the system-wide vmstat events, which take the minimum (other
processes only add to them) -- the rules of ``run_on_kernel.py --repeat``. A version 3
report (``"pressure": true``) takes the lower median of the sizes, the fault counts,
``pswpin`` and ``pswpout`` (:data:`PRESSURE_MEDIAN`): under reclaim the kernel itself
varies a little from run to run, both ways, and nothing else on the machine swaps.

A scenario with ``system.swap`` or ``system.memory_limit`` runs as root only: each run
sets up its swap file and memory cgroup after the knobs and removes them at its end,
also on failure or interruption; what a killed run left goes at the next run's start
(pressure.py).

Without root nothing is written: a scenario that sets knobs (``system.sysfs``, a
``set`` step) is refused, and so is any scenario while a live knob differs from the
value the simulator boots with (the comparison would not be fair); khugepaged cannot
be held still, which is said in a note.
"""

from __future__ import annotations

import collections
import copy
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pagewalk.errors import Location
from pagewalk.kernel.knobs import READ_AHEAD_KB
from pagewalk.live import hugetlb_state
from pagewalk.live import knobs as live_knobs
from pagewalk.live import pressure as pressure_mod
from pagewalk.live.errors import LiveError
from pagewalk.live.files import uses_disk_files
from pagewalk.live.probe import build_probe
from pagewalk.live.runner import VMSTAT_FIELDS, LiveRun, LiveRunResult
from pagewalk.scenario import schema as s
from pagewalk.scenario.runner import SIZE_FIELDS

Notify = Callable[[str], None]
FieldKey = tuple[str, str, str]          # (measure label, process or "system", field)
#: version 3: the fields a pressure report combines by their lower median over the runs
PRESSURE_MEDIAN = frozenset({*SIZE_FIELDS, "Mlocked", "minflt", "majflt", "pswpin", "pswpout"})


@dataclass(slots=True)
class LiveResult:
    """A scenario's runs on the live kernel and the report combined from them."""

    scenario: str
    report: dict[str, Any]                       # scenario.md schema
    runs: list[LiveRunResult]
    varied: dict[FieldKey, list[int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def pgfault_bounds(self) -> dict[str, tuple[int, int]]:
        """label -> (faults the scenario processes counted, pgfault reported)."""
        bounds = {}
        for m in self.report["measurements"]:
            label = m["label"]
            accounted = _mode([n.accounted for run in self.runs for n in run.noise
                               if n.label == label])
            bounds[label] = (accounted, m["system"]["pgfault"])
        return bounds

    def background(self) -> dict[str, int]:
        """Events other processes made in the runs' idle windows, summed."""
        total: dict[str, int] = collections.Counter()
        for run in self.runs:
            total.update(run.background)
        return dict(total)

    def noise_json(self) -> list[dict[str, Any]]:
        return [{"run": index + 1, "probe_command_faults": run.probe_command_faults,
                 "idle_seconds": round(run.idle_seconds, 3),
                 "idle_window_events": run.background,
                 "measures": [{"label": n.label, "controller_faults": n.controller_faults,
                               "pgfault": n.pgfault, "accounted": n.accounted,
                               "other_processes": n.other} for n in run.noise]}
                for index, run in enumerate(self.runs)]

    def varied_json(self) -> list[dict[str, Any]]:
        return [{"label": label, "process": proc, "field": name, "values": values}
                for (label, proc, name), values in self.varied.items()]


def machine_paging_levels() -> int:
    """5 if the CPU has LA57 (and so the kernel may use 5-level tables), else 4."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return 5 if " la57" in line else 4
    except OSError:
        pass
    return 4


def machine_has_pku() -> bool:
    """True if the kernel uses protection keys here (``ospke`` in the CPU flags)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return "ospke" in line.split()
    except OSError:
        pass
    return False


def pku_refusal(scenario: s.Scenario) -> LiveError | None:
    """PROT_EXEC alone is execute-only with PKU and readable without: a scenario that
    uses it says which CPU it means (system.pku), and only that CPU can replay it."""
    live = machine_has_pku()
    if scenario.system.pku == live:
        return None
    for step in scenario.steps:
        if isinstance(step, (s.MmapStep, s.MprotectStep)) and step.prot == 0x4:
            have = "has" if live else "has no"
            return LiveError(f"system.pku is {str(scenario.system.pku).lower()}, but this "
                             f"machine's CPU {have} protection keys ('ospke' in /proc/cpuinfo), "
                             "and PROT_EXEC-only memory (prot: x) behaves differently with "
                             f"them: the live kernel cannot replay it (set system.pku: "
                             f"{str(live).lower()} to measure this machine)",
                             Location(scenario.file, step.index, f"{step.kind}.prot"))
    return None


def is_root() -> bool:
    return os.geteuid() == 0


def needs_knobs(scenario: s.Scenario) -> bool:
    return bool(scenario.system.sysfs) or any(isinstance(st, s.SetStep) for st in scenario.steps)


def refusal(scenario: s.Scenario, root: bool) -> LiveError | None:
    """Why this scenario cannot be replayed on this machine, or None."""
    for step in scenario.steps:
        if isinstance(step, s.KhugepagedStep):
            return LiveError("the khugepaged step is simulator-only: it cannot be replayed "
                             "on a live kernel (khugepaged's timing is not deterministic)",
                             Location(scenario.file, step.index, "khugepaged"))
    if scenario.system.paging == 5 and machine_paging_levels() == 4:
        return LiveError("system.paging 5: this machine has no 5-level paging (no LA57)",
                         Location(scenario.file, None, "system.paging"))
    pku_refused = pku_refusal(scenario)
    if pku_refused is not None:
        return pku_refused
    if pressure_mod.uses_pressure(scenario):
        if not root:
            return LiveError("this scenario has system.swap or system.memory_limit: run "
                             "`pagewalk verify` as root, so that it can set up (and remove) "
                             "the swap file and the memory cgroup", Location(scenario.file))
        return pressure_mod.refusal(scenario)
    if root:
        return None
    if needs_knobs(scenario):
        return LiveError("this scenario sets knobs (system.sysfs or a set step): run "
                         "`pagewalk verify` as root, so that it can set and restore them",
                         Location(scenario.file))
    differing = live_knobs.differing_from_simulator()
    if not uses_disk_files(scenario):      # the root disk's readahead changes no figure
        differing.pop(READ_AHEAD_KB, None)
    if differing:
        shown = "; ".join(f"{path} is {live} (the simulator boots with {boot})"
                          for path, (live, boot) in list(differing.items())[:3])
        return LiveError(f"this machine's knobs differ from the simulator's: {shown}; run "
                         "as root so that verify sets them for the run",
                         Location(scenario.file))
    return None


def _notes(scenario: s.Scenario, root: bool) -> list[str]:
    notes = []
    system = scenario.system
    if system.ram != s.SystemConfig().ram:
        notes.append(f"system.ram is not replayed: the live run uses this machine's memory "
                     f"({os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') >> 20} MiB)")
    if not root:
        notes.append("not root: khugepaged cannot be kept from scanning during the run")
    return notes


def run_live(scenario: s.Scenario, repeat: int = 1, notify: Notify | None = None,
             exe: Path | None = None, run_class: type[LiveRun] = LiveRun) -> LiveResult:
    """Run ``scenario`` ``repeat`` times on this machine's kernel and combine the runs.

    Raises LiveError if it cannot run here (see :func:`refusal`), and the simulator's
    error classes (SyscallError, SignalError, ExpectationFailed) if the kernel fails a
    step the scenario did not expect to fail. ``run_class`` plays each run (a LiveRun
    subclass may record outcomes instead of failing: pagewalk.fuzz's discovery mode).
    """
    notes: list[str] = []

    def note(text: str) -> None:
        if text not in notes:
            notes.append(text)
            if notify is not None:
                notify(text)

    root = is_root()
    refused = refusal(scenario, root)
    if refused is not None:
        raise refused
    for text in _notes(scenario, root):
        note(text)
    exe = exe or build_probe()
    runs: list[LiveRunResult] = []
    with live_knobs.KnobGuard(note, write=root) as guard, live_knobs.thp_disabled_here():
        hugetlb_state.check(scenario, hugetlb_state.held_outside())   # before any knob
        for text in pressure_mod.notes(scenario):      # under the lock: no other run's swap
            note(text)
        for _ in range(max(1, repeat)):
            runs.append(_run_once(scenario, exe, guard, root, run_class))
    for difference in runs[0].layout_differences:
        note(f"the probe's start layout differs from the simulator's start image: "
             f"{difference}")
    report, varied = combine([run.report for run in runs])
    return LiveResult(scenario.name, report, runs, varied, notes)


def _run_once(scenario: s.Scenario, exe: Path, guard: live_knobs.KnobGuard,
              root: bool, run_class: type[LiveRun] = LiveRun) -> LiveRunResult:
    decoy = live_knobs.Decoy(exe)
    pressure = pressure_mod.Pressure.of(scenario) if root else None
    run = run_class(scenario, exe, guard, decoy, pressure)
    try:
        if root:
            pressure_mod.clear_stale(guard.notify)     # a killed run's swap file, cgroup
            guard.prepare(dict(scenario.system.sysfs), decoy)
            if run.disk_files:
                guard.quiet_disk()      # I/O scheduler none: inflight counts every read
            if pressure is not None:
                pressure.setup()
        else:
            decoy.start()
        # under the lock, pools at their boot values, no scenario process yet
        held = hugetlb_state.held_outside()
        hugetlb_state.check(scenario, held)
        if not held.clean:
            guard.notify(f"{held.describe()}; taken out of HugePages_* (this scenario uses "
                         "no hugetlb)")
        result = run.run()
        hugetlb_state.take_out(result.report, held)
        return result
    finally:
        run.cleanup()
        decoy.stop()
        if pressure is not None:
            _teardown(pressure, guard.notify)


def _teardown(pressure: pressure_mod.Pressure, notify: Notify) -> None:
    """Remove the run's cgroup and swap file with the interrupting signals held off (a
    second Ctrl-C must not leave them half removed)."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, live_knobs.SIGNALS)
    try:
        errors = pressure.teardown()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    if errors:
        notify("WARNING: could not remove " + "; ".join(errors) + " (the next run as root "
               "tries again)")


def _flatten(report: dict[str, Any]) -> dict[FieldKey, int]:
    flat = {}
    for m in report["measurements"]:
        for proc, figures in m["processes"].items():
            for name, value in figures.items():
                flat[(m["label"], proc, name)] = value
        for name, value in m["system"].items():
            flat[(m["label"], "system", name)] = value
    return flat


def _mode(values: list[int]) -> int:
    counts = collections.Counter(values)
    top = max(counts.values())
    return next(v for v in values if counts[v] == top)


def lower_median(values: list[int]) -> int:
    """The median of ``values``, the lower of the two middle ones for an even count."""
    return sorted(values)[(len(values) - 1) // 2]


def combined_value(values: list[int], proc: str, name: str, pressure: bool) -> int:
    """One field's value over the runs (see the module docstring)."""
    if pressure and name in PRESSURE_MEDIAN:
        return lower_median(values)
    if proc == "system" and name in VMSTAT_FIELDS:
        return min(values)
    return _mode(values)


def combine(reports: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[FieldKey, list[int]]]:
    """One report from several runs, and the fields whose value varied (all values)."""
    combined = copy.deepcopy(reports[0])
    flats = [_flatten(report) for report in reports]
    pressure = bool(combined.get("pressure"))
    varied: dict[FieldKey, list[int]] = {}
    for key in flats[0]:
        values = [flat[key] for flat in flats if key in flat]
        if len(set(values)) > 1:
            varied[key] = values
        label, proc, name = key
        value = combined_value(values, proc, name, pressure)
        for m in combined["measurements"]:
            if m["label"] == label:
                (m["system"] if proc == "system" else m["processes"][proc])[name] = value
    return combined, varied


__all__ = ["PRESSURE_MEDIAN", "LiveResult", "combine", "combined_value", "is_root",
           "lower_median", "machine_paging_levels", "needs_knobs", "refusal", "run_live"]
