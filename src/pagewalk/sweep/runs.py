"""Expand a sweep into its runs: every grid combination (crossed with every list entry),
each applied to the base and checked before anything runs.

A scenario run is the base scenario's YAML document with each parameter written into it
(``system.ram``, a knob under ``system.sysfs``, ``steps[0].mmap.length`` ...), then read
by the scenario schema exactly as ``pagewalk run`` reads a file, so a value the schema
refuses is refused here, naming the sweep file, the parameter's field and the run. A
trace run is the base's trace, page size, TLB preset, engine and format with the
parameters put in; page sizes, engines, formats, TLB models and that the trace file
exists are checked here too (a trace or model file is looked for beside the sweep file,
then in the current directory; a trace last among the sample traces shipped with
pagewalk, by name: scenario/examples.py). A recording run is the base's recording, THP
mode and TLB model with the parameters put in; the mode (the kernel's default when none
is given), the model and that the file is a recording (its header is read) are checked
here, the file looked for like a trace's (no samples by name). What can only fail while
running (a system call the kernel refuses, a malformed record deep in a trace or a
recording) fails that run alone (execute.py).
"""

from __future__ import annotations

import copy
import itertools
from abc import ABC, abstractmethod
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pagewalk.errors import Location, PagewalkError, ScenarioError, TraceError
from pagewalk.kernel import knobs
from pagewalk.record.recfile import read_recording
from pagewalk.scenario.examples import sample_trace
from pagewalk.scenario.schema import (
    _STEP_PARSERS,
    Scenario,
    _load_yaml,
    _scenario,
    _show,
    _Where,
)
from pagewalk.sweep.spec import (
    Knob,
    Parameter,
    RecordingBase,
    RecordingOption,
    ScenarioBase,
    ScenarioFile,
    StepField,
    Sweep,
    SystemField,
    Target,
    TraceBase,
    TraceOption,
    resolve_scenario_source,
)
from pagewalk.trace.formats import FORMATS
from pagewalk.trace.replay import ENGINES, TraceModel, parse_pages
from pagewalk.units import format_size


@dataclass(frozen=True, slots=True)
class ScenarioConfig:
    """Run ``index`` of a sweep: a checked scenario; ``params`` column -> value as written."""

    index: int
    params: dict[str, Any] = field(hash=False)
    scenario: Scenario


@dataclass(frozen=True, slots=True)
class TraceConfig:
    """Run ``index`` of a sweep: one replay. ``trace`` as written, ``path`` the file."""

    index: int
    params: dict[str, Any] = field(hash=False)
    trace: str
    path: str
    pages: str                             # normalised: 4KiB, 2MiB or 1GiB
    tlb: str                               # a TLB preset name or model file, as written
    model: str                             # the preset name, or the model file's path
    engine: str
    format: str | None


@dataclass(frozen=True, slots=True)
class RecordingConfig:
    """Run ``index`` of a sweep: one replay of a recording. ``recording`` as written,
    ``path`` the file."""

    index: int
    params: dict[str, Any] = field(hash=False)
    recording: str
    path: str
    thp: str                               # transparent_hugepage/enabled at boot
    tlb: str                               # a TLB preset name or model file, as written
    model: str                             # the preset name, or the model file's path


RunConfig = ScenarioConfig | TraceConfig | RecordingConfig
THP_ENABLED = f"{knobs.THP}/enabled"


class Unapplicable(Exception):
    """A parameter's value has no place in the base (a missing step, a bad page size);
    becomes a ScenarioError naming the sweep file, the field and the run."""


# -- combinations ------------------------------------------------------------------------

def combinations(sweep: Sweep) -> list[dict[str, Any]]:
    """Column -> value for every run: list entries (outer) x the grid, the grid's first
    column varying slowest, in the order written."""
    columns = list(sweep.grid)
    grid = [dict(zip(columns, values))
            for values in itertools.product(*(sweep.grid[c] for c in columns))]
    entries = sweep.entries or ({},)
    return [{**entry, **point} for entry in entries for point in grid]


def expand_runs(sweep: Sweep) -> list[RunConfig]:
    """Every run of ``sweep``, checked; raises ScenarioError naming the sweep file and the
    field of the parameter (or base field) whose value is refused."""
    if isinstance(sweep.base, ScenarioBase):
        return _ScenarioRuns(sweep).expand()
    if isinstance(sweep.base, RecordingBase):
        return _RecordingRuns(sweep).expand()
    return _TraceRuns(sweep).expand()


def _refusal(sweep: Sweep, at_field: str, index: int, params: dict[str, Any],
             reason: str) -> ScenarioError:
    shown = ", ".join(f"{k}={_show(v)}" for k, v in params.items())
    return ScenarioError(f"run {index} ({shown}): {reason}", Location(sweep.file, None, at_field))


# -- scenario runs -----------------------------------------------------------------------

class _ScenarioRuns:
    """Scenario documents by source (read once), and the parameters written into them."""

    def __init__(self, sweep: Sweep) -> None:
        assert isinstance(sweep.base, ScenarioBase)
        self.sweep = sweep
        self.base = sweep.base
        self.documents: dict[Path, object] = {}

    def expand(self) -> list[RunConfig]:
        return [self.config(index, params)
                for index, params in enumerate(combinations(self.sweep))]

    def config(self, index: int, params: dict[str, Any]) -> ScenarioConfig:
        path = self.base.path
        at_field = "base.scenario"
        scenario_params = [p for p in self._parameters(params)
                           if isinstance(p.target, ScenarioFile)]
        for parameter in scenario_params:
            at_field = parameter.field
            path = self._scenario_path(params[parameter.column], index, params, parameter)
        document = copy.deepcopy(self._document(path))
        for parameter in self._parameters(params):
            if isinstance(parameter.target, ScenarioFile):
                continue
            at_field = parameter.field
            try:
                document = apply_to_scenario(document, parameter.target,
                                             params[parameter.column])
            except Unapplicable as err:
                raise _refusal(self.sweep, at_field, index, params, str(err)) from None
        try:
            scenario = _scenario(document, str(path))
        except ScenarioError as err:
            culprit = _culprit(err, self._parameters(params))
            raise _refusal(self.sweep, culprit.field if culprit else at_field, index, params,
                           str(err)) from None
        return ScenarioConfig(index, params, scenario)

    def _parameters(self, params: dict[str, Any]) -> list[Parameter]:
        return [self.sweep.parameters[column] for column in params]

    def _scenario_path(self, value: object, index: int, params: dict[str, Any],
                       parameter: Parameter) -> Path:
        if not isinstance(value, str):
            raise _refusal(self.sweep, parameter.field, index, params,
                           f"a scenario is a file or example name, got {_show(value)}")
        return resolve_scenario_source(value, self.sweep.directory,
                                       _Where(self.sweep.file, None, parameter.field))

    def _document(self, path: Path) -> object:
        if path not in self.documents:
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as err:
                raise ScenarioError(f"cannot read the scenario: {err}",
                                    Location(str(path))) from None
            self.documents[path] = _load_yaml(text, str(path))
        return self.documents[path]


def _culprit(err: ScenarioError, parameters: list[Parameter]) -> Parameter | None:
    """The parameter that wrote the value the schema refused: the one whose path holds
    the error's field (``system.ram``), or else one that set a field of the error's step."""
    field_path = err.location.field if err.location and err.location.field else ""
    step = err.location.step if err.location else None
    for parameter in parameters:
        path = _document_path(parameter)
        if path and (field_path == path or field_path.startswith((path + ".", path + "["))
                     or path.startswith(field_path + ".") and field_path):
            return parameter
    for parameter in parameters:
        if isinstance(parameter.target, StepField) and parameter.target.index == step:
            return parameter
    return None


def _document_path(parameter: Parameter) -> str | None:
    """Where the scenario schema would name the value a parameter writes."""
    target = parameter.target
    if isinstance(target, SystemField):
        return f"system.{target.name}"
    if isinstance(target, Knob):
        return f"system.sysfs.{target.path}"
    if isinstance(target, StepField):
        parts = [f"steps[{target.index}]", target.first, target.rest]
        return ".".join(part for part in parts if part)
    return None


def apply_to_scenario(document: object, target: Target, value: Any) -> object:
    """Write ``value`` at ``target`` in a scenario's YAML document (changed in place and
    returned); raises Unapplicable if the document has no such place."""
    if not isinstance(document, dict):
        raise Unapplicable("the scenario is not a map of fields")
    if isinstance(target, SystemField):
        _system(document)[target.name] = value
    elif isinstance(target, Knob):
        system = _system(document)
        sysfs = system.get("sysfs")
        if sysfs is None:
            sysfs = system["sysfs"] = {}
        if not isinstance(sysfs, dict):
            raise Unapplicable("system.sysfs of the scenario is not a map")
        sysfs[target.path] = value
    elif isinstance(target, StepField):
        _apply_to_step(document, target, value)
    else:
        raise Unapplicable(f"{type(target).__name__} is not a scenario parameter")
    return document


def _system(document: dict[str, Any]) -> dict[str, Any]:
    system = document.get("system")
    if system is None:
        system = document["system"] = {}
    if not isinstance(system, dict):
        raise Unapplicable("the scenario's system is not a map")
    return system


def _apply_to_step(document: dict[str, Any], target: StepField, value: Any) -> None:
    steps = document.get("steps")
    if not isinstance(steps, list) or not 0 <= target.index < len(steps):
        count = len(steps) if isinstance(steps, list) else 0
        raise Unapplicable(f"the scenario has no step {target.index} (it has {count} steps)")
    item = steps[target.index]
    if not isinstance(item, dict) or len(item) != 1:
        raise Unapplicable(f"step {target.index} is not a one-key map")
    ((kind, body),) = item.items()
    if target.first is None:
        steps[target.index] = value
        return
    if target.first in _STEP_PARSERS:
        if target.first != kind:
            raise Unapplicable(f"step {target.index} is a {kind} step, not {target.first}")
        if target.rest is None:
            item[kind] = value
            return
        key = target.rest
    else:
        key = target.first if target.rest is None else f"{target.first}.{target.rest}"
    if body is None:
        body = item[kind] = {}
    if not isinstance(body, dict):
        raise Unapplicable(f"step {target.index} ({kind}: {_show(body)}) has no fields; "
                         f"set steps[{target.index}].{kind} itself")
    body[key] = value


# -- trace and recording runs -----------------------------------------------------------

class _ReplayRuns(ABC):
    """What trace and recording runs share: options from the base with the parameters
    put in, each checked by :meth:`check`; TLB models and files found beside the sweep
    file, then in the current directory."""

    def __init__(self, sweep: Sweep) -> None:
        self.sweep = sweep
        self.models: set[str] = set()             # model specs already checked

    def expand(self) -> list[RunConfig]:
        return [self.config(index, params)
                for index, params in enumerate(combinations(self.sweep))]

    @abstractmethod
    def config(self, index: int, params: dict[str, Any]) -> RunConfig:
        """Run ``index`` with the column -> value ``params``, checked."""

    @abstractmethod
    def check(self, name: str, value: Any) -> Any:
        """``value`` of option ``name`` checked (and normalised); Unapplicable or a
        PagewalkError says why not."""

    def options(self, index: int, params: dict[str, Any], base: dict[str, Any]
                ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The run's options as written and as checked; a refused value names the field
        that gave it (the parameter's, or ``base.NAME``)."""
        options = dict(base)
        fields = {name: f"base.{name}" for name in options}
        for column, value in params.items():
            parameter = self.sweep.parameters[column]
            assert isinstance(parameter.target, (TraceOption, RecordingOption))
            options[parameter.target.name] = value
            fields[parameter.target.name] = parameter.field
        checked: dict[str, Any] = {}
        for name, value in options.items():
            try:
                checked[name] = self.check(name, value)
            except (Unapplicable, PagewalkError) as err:
                reason = err.message if isinstance(err, PagewalkError) else str(err)
                raise _refusal(self.sweep, fields[name], index, params, reason) from None
        return options, checked

    def model(self, value: Any) -> str:
        """A preset name as it is; a model file relative to the sweep file. Loaded once
        here to check it (each worker loads it again)."""
        if not isinstance(value, str) or not value:
            raise Unapplicable(f"a TLB model is a preset name or a file, got {_show(value)}")
        path = self.sweep.directory / value
        spec = str(path) if Path(value).suffix and path.is_file() else value   # else: cwd
        if spec not in self.models:
            trace_model(spec)
            self.models.add(spec)
        return spec

    def local_file(self, value: str) -> str | None:
        """``value`` beside the sweep file, else in the current directory, else None."""
        path = self.sweep.directory / value
        if path.is_file():
            return str(path)
        if Path(value).is_file():
            return str(Path(value).absolute())
        return None


class _TraceRuns(_ReplayRuns):
    def config(self, index: int, params: dict[str, Any]) -> TraceConfig:
        assert isinstance(self.sweep.base, TraceBase)
        base = self.sweep.base
        options, checked = self.options(index, params, {
            "trace": base.trace, "pages": base.pages, "tlb": base.tlb, "engine": base.engine,
            "format": base.format})
        return TraceConfig(index, params, trace=str(options["trace"]), path=checked["trace"],
                           pages=checked["pages"], tlb=str(options["tlb"]),
                           model=checked["tlb"], engine=checked["engine"],
                           format=checked["format"])

    def check(self, name: str, value: Any) -> Any:
        if name == "trace":
            return self._trace_path(value)
        if name == "pages":
            return format_size(1 << parse_pages(value))
        if name == "tlb":
            return self.model(value)
        if name == "engine":
            if value not in ENGINES:
                raise Unapplicable(f"engine must be one of {', '.join(ENGINES)}, "
                                   f"got {_show(value)}")
            return value
        if value is not None and value not in FORMATS:
            raise Unapplicable(f"format must be one of {', '.join(FORMATS)}, "
                               f"got {_show(value)}")
        return value

    def _trace_path(self, value: Any) -> str:
        if value is None:
            raise Unapplicable("no trace: give base.trace or vary 'trace'")
        if not isinstance(value, str):
            raise Unapplicable(f"a trace is a file name, got {_show(value)}")
        found = self.local_file(value)
        if found is not None:
            return found
        sample = sample_trace(value)        # a trace shipped with pagewalk, by name
        if sample is not None:
            return str(sample)
        raise Unapplicable(f"no such trace file: {str(self.sweep.directory / value)!r} (nor "
                           f"{value!r} in the current directory, nor a sample trace of that "
                           "name)")


class _RecordingRuns(_ReplayRuns):
    def __init__(self, sweep: Sweep) -> None:
        super().__init__(sweep)
        self.recordings: set[str] = set()         # files whose header was read

    def config(self, index: int, params: dict[str, Any]) -> RecordingConfig:
        assert isinstance(self.sweep.base, RecordingBase)
        base = self.sweep.base
        options, checked = self.options(index, params, {
            "recording": base.recording, "thp": base.thp, "tlb": base.tlb})
        return RecordingConfig(index, params, recording=str(options["recording"]),
                               path=checked["recording"], thp=checked["thp"],
                               tlb=str(options["tlb"]), model=checked["tlb"])

    def check(self, name: str, value: Any) -> Any:
        if name == "recording":
            return self._recording_path(value)
        if name == "thp":
            if value is None:                # as `pagewalk replay` without --thp
                return knobs.knob_spec(THP_ENABLED).default
            return knobs.normalise(THP_ENABLED, value)
        return self.model(value)             # tlb

    def _recording_path(self, value: Any) -> str:
        if value is None:
            raise Unapplicable("no recording: give base.recording or vary 'recording'")
        if not isinstance(value, str):
            raise Unapplicable(f"a recording is a file name, got {_show(value)}")
        found = self.local_file(value)
        if found is None:
            raise Unapplicable(f"no such recording: {str(self.sweep.directory / value)!r} "
                               f"(nor {value!r} in the current directory)")
        if found not in self.recordings:
            try:
                recording_header(found)
            except TraceError as err:
                raise Unapplicable(f"{found}: {err.message}") from None
            self.recordings.add(found)
        return found


def recording_header(path: str) -> dict[str, Any]:
    """The header of the recording at ``path``, read without the rest; TraceError naming
    the file if it is not a recording."""
    events = read_recording(path)
    first = next(events, None)
    if isinstance(events, Generator):        # closing it closes the file now
        events.close()
    if not isinstance(first, dict) or first.get("format") != "pagewalk-recording":
        raise TraceError("not a recording: its first frame is not a recording header",
                         Location(file=path))
    return first


def trace_model(spec: str) -> TraceModel:
    """The TraceModel of a TLB preset name (``reference``, ``skylake`` ...) or of a model
    file (trace/presets.py), as ``pagewalk trace --tlb`` loads it."""
    from pagewalk.trace.presets import load_model
    return load_model(spec)


__all__ = ["RecordingConfig", "RunConfig", "ScenarioConfig", "TraceConfig", "apply_to_scenario",
           "combinations", "expand_runs", "recording_header", "trace_model"]
