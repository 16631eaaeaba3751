"""Sweep files (docs/sweeps.md): a base run and the parameters to vary, read and checked.

A sweep names one *base*, a scenario (scenario.md), a trace replay (trace-model.md) or
the replay of a recorded program (record.md), and the parameters that change from run to run, as a ``grid`` (every combination) and/or
a ``list`` (one run per entry; with a grid too, every entry is crossed with every grid
combination). ``names`` gives short column names to long parameter paths; ``plots``
lists the figures ``pagewalk sweep`` draws from its table.

Everything structural is checked here, before anything runs, the way the scenario
schema checks a scenario: every failure is one :class:`ScenarioError` whose
:class:`Location` names the sweep file and the field (``grid.steps[0].mmap.length``).
Whether a parameter's *value* makes a valid scenario or trace run is checked when the
runs are expanded (runs.py), still before any run starts, naming the same field.

Parameter paths, scenario base (scenario.md field names):

* ``scenario`` -- another scenario file (or built-in example name) as the base;
* ``system.ram``, ``system.paging``, ``system.pti``, ``system.pcid``;
* ``system.sysfs./sys/kernel/mm/...`` -- a knob at boot (the rest of the path is the
  knob's file path, taken verbatim);
* ``steps[N].KIND.FIELD`` -- a field of step N, which must be a KIND step
  (``steps[0].mmap.length``); ``steps[N].FIELD`` leaves the kind out;
  ``steps[N].KIND`` replaces the step's whole value (a ``measure`` label, a ``set`` map).

Trace base: ``trace`` (a trace file), ``pages`` (4KiB, 2MiB, 1GiB), ``tlb`` (a TLB
preset), ``engine`` (fast, reference) and ``format`` (lackey, pwt, npy).

Recording base: ``recording`` (a ``.pwr`` file of ``pagewalk record``), ``thp`` (the
transparent_hugepage/enabled mode the replay boots with) and ``tlb`` (a TLB preset or
model file), as ``pagewalk replay REC --thp MODE --tlb PRESET`` takes them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pagewalk.errors import Location, ScenarioError
from pagewalk.scenario.schema import _Fields, _load_yaml, _show, _Where

SWEEP_FIELDS = ("name", "description", "base", "names", "grid", "list", "plots")
SCENARIO_BASE_FIELDS = ("scenario",)
TRACE_BASE_FIELDS = ("trace", "pages", "tlb", "engine", "format")
TRACE_PARAMETERS = TRACE_BASE_FIELDS
RECORDING_BASE_FIELDS = ("recording", "thp", "tlb")
RECORDING_PARAMETERS = RECORDING_BASE_FIELDS
SYSTEM_PARAMETERS = ("ram", "paging", "pti", "pcid")
PLOT_FIELDS = ("file", "x", "y", "hue", "where", "kind", "title", "logy")
PLOT_KINDS = ("bar", "line")
PLOT_SUFFIXES = (".png", ".svg", ".pdf")
MAX_RUNS = 100_000

_SWEEP_NAME = re.compile(r"[a-z0-9._-]+")
_COLUMN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_STEP_PATH = re.compile(r"steps\[(\d+)\](?:\.([^.]+)(?:\.(.+))?)?")


# -- the sweep, as data ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ScenarioBase:
    """Runs of a scenario; ``source`` as written, ``path`` the file it names."""

    source: str
    path: Path


@dataclass(frozen=True, slots=True)
class TraceBase:
    """Replays of a trace; ``trace`` None means every run names its own."""

    trace: str | None = None               # as written (relative to the sweep file)
    pages: str = "4KiB"
    tlb: str = "reference"
    engine: str = "fast"
    format: str | None = None              # None: from the file's extension


@dataclass(frozen=True, slots=True)
class RecordingBase:
    """Replays of a recording; ``recording`` None means every run names its own."""

    recording: str | None = None           # as written (relative to the sweep file)
    thp: str | None = None                 # None: the kernel's default mode
    tlb: str = "reference"


Base = ScenarioBase | TraceBase | RecordingBase


@dataclass(frozen=True, slots=True)
class SystemField:
    """``system.ram`` and friends."""

    name: str


@dataclass(frozen=True, slots=True)
class Knob:
    """``system.sysfs.PATH``: a knob written at boot."""

    path: str


@dataclass(frozen=True, slots=True)
class StepField:
    """``steps[N][.KIND][.FIELD]``: ``first`` is KIND or a field (decided against the
    step when applied), ``rest`` the field after a KIND."""

    index: int
    first: str | None = None
    rest: str | None = None


@dataclass(frozen=True, slots=True)
class ScenarioFile:
    """``scenario``: the whole base scenario."""


@dataclass(frozen=True, slots=True)
class TraceOption:
    """``trace``, ``pages``, ``tlb``, ``engine`` or ``format`` of a trace replay."""

    name: str


@dataclass(frozen=True, slots=True)
class RecordingOption:
    """``recording``, ``thp`` or ``tlb`` of a recording's replay."""

    name: str


Target = SystemField | Knob | StepField | ScenarioFile | TraceOption | RecordingOption


@dataclass(frozen=True, slots=True)
class Parameter:
    """A varied parameter: its column in the table, what it sets, and where it was read."""

    column: str
    target: Target
    field: str                             # the sweep-file field that named it (for errors)


@dataclass(frozen=True, slots=True)
class PlotSpec:
    """One figure: ``y`` against ``x``, one series per ``hue`` value, over the rows that
    match ``where`` (column -> value); several rows at one point are averaged."""

    file: str
    x: str
    y: str
    hue: str | None = None
    where: dict[str, Any] = field(default_factory=dict, hash=False)
    kind: str | None = None                # bar or line; None: bar for categories
    title: str | None = None
    logy: bool = False


@dataclass(frozen=True, slots=True)
class Sweep:
    """A checked sweep file. ``grid`` keeps the order written (the first column varies
    slowest); ``entries`` are the ``list`` items; both are keyed by column."""

    name: str
    description: str
    file: str
    base: Base
    parameters: dict[str, Parameter] = field(hash=False)
    grid: dict[str, tuple[Any, ...]] = field(hash=False)
    entries: tuple[dict[str, Any], ...]
    plots: tuple[PlotSpec, ...]

    @property
    def directory(self) -> Path:
        """Relative paths in the sweep file are relative to the file's directory."""
        return Path(self.file).resolve().parent

    @property
    def nr_runs(self) -> int:
        combinations = 1
        for values in self.grid.values():
            combinations *= len(values)
        return combinations * max(1, len(self.entries))


# -- converters --------------------------------------------------------------------------

def _string(value: object, where: _Where) -> str:
    if not isinstance(value, str) or not value:
        raise where.error(f"expected a non-empty string, got {_show(value)}")
    return value


def _sweep_name(value: object, where: _Where) -> str:
    text = _string(value, where)
    if not _SWEEP_NAME.fullmatch(text):
        raise where.error(f"a sweep name must match {_SWEEP_NAME.pattern}, got {_show(text)}")
    return text


def _column_name(value: object, where: _Where) -> str:
    text = _string(value, where)
    if not _COLUMN_NAME.fullmatch(text):
        raise where.error(f"a column name must match {_COLUMN_NAME.pattern}, got {_show(text)}")
    return text


def _description(value: object, where: _Where) -> str:
    return "" if value is None else _string(value, where)


def _optional_string(value: object, where: _Where) -> str | None:
    return None if value is None else _string(value, where)


def _bool(value: object, where: _Where) -> bool:
    if not isinstance(value, bool):
        raise where.error(f"expected true or false, got {_show(value)}")
    return value


def _choice(options: tuple[str, ...]) -> Any:
    def convert(value: object, where: _Where) -> str:
        if value not in options:
            raise where.error(f"expected one of {', '.join(options)}, got {_show(value)}")
        return str(value)
    return convert


# -- base --------------------------------------------------------------------------------

def _base(value: object, where: _Where, directory: Path) -> Base:
    if isinstance(value, dict) and "scenario" in value:
        fields = _Fields(value, where, SCENARIO_BASE_FIELDS, "a scenario base")
        source = fields.required("scenario", _string)
        return ScenarioBase(source, resolve_scenario_source(source, directory,
                                                            where.child("scenario")))
    if isinstance(value, dict) and "trace" in value:
        fields = _Fields(value, where, TRACE_BASE_FIELDS, "a trace base")
        return TraceBase(trace=fields.required("trace", _optional_string),
                         pages=str(fields.optional("pages", _scalar_text, "4KiB")),
                         tlb=fields.optional("tlb", _string, "reference"),
                         engine=fields.optional("engine", _string, "fast"),
                         format=fields.optional("format", _optional_string, None))
    if isinstance(value, dict) and "recording" in value:
        fields = _Fields(value, where, RECORDING_BASE_FIELDS, "a recording base")
        return RecordingBase(recording=fields.required("recording", _optional_string),
                             thp=fields.optional("thp", _optional_string, None),
                             tlb=fields.optional("tlb", _string, "reference"))
    raise where.error("the base is a map with 'scenario: FILE' (a scenario file or a "
                      "built-in example name), 'trace: FILE' (and pages, tlb, engine, "
                      "format) or 'recording: FILE.pwr' (and thp, tlb); "
                      f"got {_show(value)}")


def _scalar_text(value: object, where: _Where) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise where.error(f"expected a size like 4KiB, got {_show(value)}")
    return str(value)


def resolve_scenario_source(source: str, directory: Path, where: _Where) -> Path:
    """A scenario file relative to the sweep file, or a built-in example by name."""
    from pagewalk.scenario.examples import example_path
    path = directory / source
    if path.is_file():
        return path
    found = example_path(source)
    if found is None:
        raise where.error(f"no scenario file {str(path)!r} and no built-in example named "
                          f"{source!r} (see `pagewalk examples`)")
    return found


# -- parameters --------------------------------------------------------------------------

def parse_target(path: str, base: Base, where: _Where) -> Target:
    """What the parameter ``path`` sets, for this kind of base."""
    if isinstance(base, RecordingBase):
        if path not in RECORDING_PARAMETERS:
            raise where.error(f"unknown recording parameter {_show(path)}; allowed: "
                              f"{', '.join(RECORDING_PARAMETERS)}")
        return RecordingOption(path)
    if isinstance(base, TraceBase):
        if path not in TRACE_PARAMETERS:
            raise where.error(f"unknown trace parameter {_show(path)}; allowed: "
                              f"{', '.join(TRACE_PARAMETERS)}")
        return TraceOption(path)
    if path == "scenario":
        return ScenarioFile()
    if path.startswith("system.sysfs."):
        knob = path[len("system.sysfs."):]
        if not knob.startswith("/"):
            raise where.error(f"a knob is its file path, like system.sysfs./sys/kernel/mm/"
                              f"transparent_hugepage/enabled; got {_show(path)}")
        return Knob(knob)
    if path.startswith("system."):
        name = path[len("system."):]
        if name not in SYSTEM_PARAMETERS:
            raise where.error(f"unknown system field {_show(name)}; allowed: "
                              f"{', '.join(SYSTEM_PARAMETERS)}, sysfs./PATH")
        return SystemField(name)
    match = _STEP_PATH.fullmatch(path)
    if match:
        return StepField(int(match.group(1)), match.group(2), match.group(3))
    raise where.error(f"unknown scenario parameter {_show(path)}; use scenario, "
                      "system.ram, system.paging, system.pti, system.pcid, "
                      "system.sysfs./PATH or steps[N].KIND.FIELD")


def _names(value: object, where: _Where) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise where.error(f"expected a map of column name to parameter path, got {_show(value)}")
    names: dict[str, str] = {}
    for alias, path in value.items():
        at = where.child(alias)
        names[_column_name(alias, at)] = _string(path, at)
    return names


def _parameter(column: object, where: _Where, names: dict[str, str],
               base: Base) -> Parameter:
    text = _string(column, where)
    path = names.get(text, text)
    return Parameter(text, parse_target(path, base, where), where.field)


def _grid(value: object, where: _Where) -> dict[str, tuple[Any, ...]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise where.error(f"expected a map of parameter to a list of values, got {_show(value)}")
    grid: dict[str, tuple[Any, ...]] = {}
    for key, values in value.items():
        at = where.child(key)
        if not isinstance(values, list) or not values:
            raise at.error(f"expected a non-empty list of values, got {_show(values)}")
        grid[str(key)] = tuple(values)
    return grid


def _entries(value: object, where: _Where) -> tuple[dict[str, Any], ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not value:
        raise where.error(f"expected a non-empty list of runs (maps of parameter to value), "
                          f"got {_show(value)}")
    for position, entry in enumerate(value):
        if not isinstance(entry, dict) or not entry:
            raise where.child(position).error(
                f"a run is a non-empty map of parameter to value, got {_show(entry)}")
    return tuple({str(k): v for k, v in entry.items()} for entry in value)


def _collect_parameters(where: _Where, names: dict[str, str],
                        base: Base, grid: dict[str, tuple[Any, ...]],
                        entries: tuple[dict[str, Any], ...]) -> dict[str, Parameter]:
    """Every column named by the grid or the list, with its target; a column in both, or
    two columns setting one thing, is refused."""
    parameters: dict[str, Parameter] = {}
    for key in grid:
        parameters[key] = _parameter(key, where.child("grid").child(key), names, base)
    for position, entry in enumerate(entries):
        for key in entry:
            at = where.child(f"list[{position}]").child(key)
            if key in grid:
                raise at.error(f"{_show(key)} is varied by the grid already; a parameter is "
                               "either in the grid or in the list")
            parameters.setdefault(key, _parameter(key, at, names, base))
    _refuse_duplicates(parameters, where)
    return parameters


def _refuse_duplicates(parameters: dict[str, Parameter], where: _Where) -> None:
    seen: dict[Target, str] = {}
    for column, parameter in parameters.items():
        if parameter.target in seen:
            raise where.error(f"{_show(column)} and {_show(seen[parameter.target])} set the "
                              "same parameter")
        seen[parameter.target] = column


# -- plots -------------------------------------------------------------------------------

def _where_filter(value: object, where: _Where) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise where.error(f"expected a map of column to value, got {_show(value)}")
    return {str(k): v for k, v in value.items()}


def _plot_file(value: object, where: _Where) -> str:
    text = _string(value, where)
    if Path(text).suffix.lower() not in PLOT_SUFFIXES:
        raise where.error(f"a plot file ends in {', '.join(PLOT_SUFFIXES)}, got {_show(text)}")
    return text


def _plot(value: object, where: _Where) -> PlotSpec:
    fields = _Fields(value, where, PLOT_FIELDS, "a plot")
    return PlotSpec(file=fields.required("file", _plot_file),
                    x=fields.required("x", _string), y=fields.required("y", _string),
                    hue=fields.optional("hue", _optional_string, None),
                    where=fields.optional("where", _where_filter, {}),
                    kind=fields.optional("kind", _choice(PLOT_KINDS), None),
                    title=fields.optional("title", _optional_string, None),
                    logy=fields.optional("logy", _bool, False))


def _plots(value: object, where: _Where) -> tuple[PlotSpec, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise where.error(f"expected a list of plots, got {_show(value)}")
    return tuple(_plot(item, where.child(f"[{i}]")) for i, item in enumerate(value))


# -- top level ---------------------------------------------------------------------------

def _sweep(document: object, file: str) -> Sweep:
    where = _Where(file, None, "")
    if document is None:
        raise where.error("the sweep is empty; it needs 'name', 'base' and 'grid' or 'list'")
    fields = _Fields(document, where, SWEEP_FIELDS, "the sweep")
    directory = Path(file).resolve().parent
    base = fields.required("base", lambda v, w: _base(v, w, directory))
    names = fields.optional("names", _names, {})
    grid = fields.optional("grid", _grid, {})
    entries = fields.optional("list", _entries, ())
    if not grid and not entries:
        raise where.error("a sweep varies something: give 'grid' (every combination) "
                          "or 'list' (one run each)")
    parameters = _collect_parameters(where, names, base, grid, entries)
    sweep = Sweep(name=fields.required("name", _sweep_name),
                  description=fields.optional("description", _description, ""),
                  file=file, base=base, parameters=parameters, grid=grid, entries=entries,
                  plots=fields.optional("plots", _plots, ()))
    if sweep.nr_runs > MAX_RUNS:
        raise where.child("grid").error(f"{sweep.nr_runs} runs; a sweep has at most {MAX_RUNS}")
    return sweep


def parse_sweep(text: str, file: str) -> Sweep:
    """The sweep in ``text`` (YAML or JSON); ``file`` names it in errors and anchors
    its relative paths."""
    return _sweep(_load_yaml(text, file), file)


def example_sweeps() -> list[Path]:
    """The sweep files shipped in src/pagewalk/examples/sweeps."""
    from importlib import resources
    directory = Path(str(resources.files("pagewalk") / "examples" / "sweeps"))
    return sorted(directory.glob("*.yaml"))


def resolve_sweep(name_or_path: str) -> Path:
    """A sweep file, or the name of a shipped example sweep."""
    path = Path(name_or_path)
    if path.exists():
        return path
    for example in example_sweeps():
        if example.stem == name_or_path:
            return example
    names = ", ".join(example.stem for example in example_sweeps())
    raise ScenarioError(f"no such file or example sweep: {name_or_path!r} (examples: {names})")


def load_sweep(path: str | Path) -> Sweep:
    """Read and check the sweep file at ``path``."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ScenarioError(f"cannot read the sweep: {err}", Location(file)) from None
    return parse_sweep(text, file)


__all__ = [
    "Base", "Knob", "Parameter", "PlotSpec", "RecordingBase", "RecordingOption", "ScenarioBase",
    "ScenarioFile", "StepField", "Sweep", "SystemField", "Target", "TraceBase", "TraceOption",
    "example_sweeps", "load_sweep",
    "parse_sweep", "parse_target", "resolve_scenario_source", "resolve_sweep",
]
