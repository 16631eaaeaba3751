"""Sweep files (docs/sweeps.md): every malformed file is one ScenarioError naming the sweep
file and the field; grids and lists expand in the documented order; parameters land in
the scenario where their path says, and a value the scenario schema refuses is refused
before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from pagewalk.errors import ScenarioError
from pagewalk.scenario.schema import MeasureStep, MmapStep, TouchStep
from pagewalk.sweep.runs import ScenarioConfig, TraceConfig, combinations, expand_runs
from pagewalk.sweep.spec import (
    Knob,
    StepField,
    SystemField,
    example_sweeps,
    load_sweep,
    parse_sweep,
)
from pagewalk.units import MiB

DATA = Path(__file__).resolve().parent.parent / "data"
SCENARIO = DATA / "scenarios" / "thp-madvise-64m.yaml"
TRACE = DATA / "traces" / "mixed-200k.pwt"
THP = "/sys/kernel/mm/transparent_hugepage/enabled"


def sweep_file(tmp_path: Path, body: str) -> Path:
    """A sweep file beside copies of a test scenario and a test trace."""
    (tmp_path / "thp.yaml").write_text(SCENARIO.read_text())
    (tmp_path / "mixed.pwt").symlink_to(TRACE)
    path = tmp_path / "sweep.yaml"
    path.write_text(body)
    return path


def refused(tmp_path: Path, body: str) -> ScenarioError:
    path = sweep_file(tmp_path, body)
    with pytest.raises(ScenarioError) as info:
        expand_runs(parse_sweep(path.read_text(), str(path)))
    assert info.value.location is not None and info.value.location.file == str(path)
    return info.value


# -- structure ---------------------------------------------------------------------------

@pytest.mark.parametrize("body, field, words", [
    ("name: s\nbase: {trace: mixed.pwt}\ngrid: {pages: [4KiB]}\ncolour: red\n",
     "colour", "unknown field"),
    ("name: s\ngrid: {pages: [4KiB]}\n", "base", "missing required field"),
    ("name: s\nbase: {file: x}\ngrid: {pages: [4KiB]}\n", "base", "scenario: FILE"),
    ("name: S!\nbase: {trace: mixed.pwt}\ngrid: {pages: [4KiB]}\n", "name", "must match"),
    ("name: s\nbase: {trace: mixed.pwt}\n", None, "grid"),
    ("name: s\nbase: {trace: mixed.pwt}\ngrid: {page: [4KiB]}\n", "grid.page",
     "unknown trace parameter"),
    ("name: s\nbase: {trace: mixed.pwt}\ngrid: {pages: 4KiB}\n", "grid.pages",
     "non-empty list"),
    ("name: s\nbase: {trace: mixed.pwt}\ngrid: {pages: []}\n", "grid.pages", "non-empty list"),
    ("name: s\nbase: {trace: mixed.pwt}\ngrid: {pages: [4KiB]}\nlist: [{pages: 2MiB}]\n",
     "list[0].pages", "either in the grid or in the list"),
    ("name: s\nbase: {trace: mixed.pwt}\nlist: [{}]\n", "list.0", "non-empty map"),
    ("name: s\nbase: {scenario: thp.yaml}\ngrid: {system.rom: [1GiB]}\n", "grid.system.rom",
     "unknown system field"),
    ("name: s\nbase: {scenario: thp.yaml}\ngrid: {heap.length: [1GiB]}\n", "grid.heap.length",
     "unknown scenario parameter"),
    ("name: s\nbase: {scenario: thp.yaml}\ngrid: {system.sysfs.enabled: [never]}\n",
     "grid.system.sysfs.enabled", "file path"),
    ("name: s\nbase: {scenario: nowhere.yaml}\ngrid: {system.ram: [1GiB]}\n", "base.scenario",
     "no scenario file"),
    (("name: s\nnames: {a: system.ram, b: system.ram}\nbase: {scenario: thp.yaml}\n"
      "grid: {a: [1GiB], b: [2GiB]}\n"), None, "set the same parameter"),
    (("name: s\nbase: {trace: mixed.pwt}\ngrid: {pages: [4KiB]}\n"
      "plots: [{file: a.jpg, x: a, y: b}]\n"), "plots.[0].file", "a plot file ends in"),
    ("name: s\nbase: {trace: mixed.pwt}\ngrid: {pages: [4KiB]}\nplots: [{file: a.png, x: a}]\n",
     "plots.[0].y", "missing required field"),
    ("name: s\nname: t\nbase: {trace: mixed.pwt}\ngrid: {pages: [4KiB]}\n", None,
     "duplicate key"),
])
def test_a_malformed_sweep_file_names_the_file_and_the_field(
        tmp_path: Path, body: str, field: str | None, words: str) -> None:
    err = refused(tmp_path, body)
    assert err.location is not None
    assert err.location.field == field
    assert words in err.message


# -- values, checked per run before anything runs ----------------------------------------

@pytest.mark.parametrize("grid, field, words", [
    ("system.ram: [1GiB, 3MiB]", "grid.system.ram", "run 1 (system.ram='3MiB')"),
    ("steps[0].mmap.length: [1MiB, lots]", "grid.steps[0].mmap.length", "bad size"),
    ("steps[9].mmap.length: [1MiB]", "grid.steps[9].mmap.length", "has no step 9"),
    ("steps[0].touch.length: [1MiB]", "grid.steps[0].touch.length",
     "step 0 is a mmap step, not touch"),
    ("steps[0].size: [1MiB]", "grid.steps[0].size", "unknown field 'size'"),
    (f"system.sysfs.{THP}: [sometimes]", f"grid.system.sysfs.{THP}", "sometimes"),
])
def test_a_value_the_scenario_schema_refuses_names_the_sweep_field_and_the_run(
        tmp_path: Path, grid: str, field: str, words: str) -> None:
    err = refused(tmp_path, f"name: s\nbase: {{scenario: thp.yaml}}\ngrid:\n  {grid}\n")
    assert err.location is not None and err.location.field == field
    assert words in err.message


def test_of_several_parameters_the_one_whose_value_is_refused_is_named(tmp_path: Path) -> None:
    err = refused(tmp_path, "name: s\nbase: {scenario: thp.yaml}\ngrid:\n"
                            "  system.ram: [3MiB]\n  steps[2].touch.stride: [8KiB]\n"
                            f"  system.sysfs.{THP}: [never]\n")
    assert err.location is not None and err.location.field == "grid.system.ram"
    (tmp_path / "x").mkdir()
    err = refused(tmp_path / "x", "name: s\nbase: {scenario: thp.yaml}\ngrid:\n"
                                  "  steps[0].mmap.length: [1MiB]\n  steps[2].stride: [0]\n"
                                  "  system.ram: [1GiB]\n")
    assert err.location is not None and err.location.field == "grid.steps[2].stride"


@pytest.mark.parametrize("body, field, words", [
    ("grid: {pages: [4KiB, 3KiB]}", "grid.pages", "pages must be 4KiB, 2MiB or 1GiB"),
    ("grid: {trace: [mixed.pwt, missing.pwt]}", "grid.trace", "no such trace file"),
    ("grid: {engine: [turbo]}", "grid.engine", "engine must be one of"),
    ("grid: {format: [csv]}", "grid.format", "format must be one of"),
    ("grid: {tlb: [no-such-preset]}", "grid.tlb", "no-such-preset"),
])
def test_a_bad_trace_option_names_the_sweep_field(
        tmp_path: Path, body: str, field: str, words: str) -> None:
    err = refused(tmp_path, f"name: s\nbase: {{trace: mixed.pwt}}\n{body}\n")
    assert err.location is not None and err.location.field == field
    assert words in err.message


def test_a_trace_base_without_a_trace_needs_every_run_to_name_one(tmp_path: Path) -> None:
    err = refused(tmp_path, "name: s\nbase: {trace: null}\ngrid: {pages: [4KiB]}\n")
    assert err.location is not None and err.location.field == "base.trace"


# -- expansion ---------------------------------------------------------------------------

def test_list_entries_are_crossed_with_the_grid_whose_first_column_varies_slowest(
        tmp_path: Path) -> None:
    path = sweep_file(tmp_path, "name: s\nbase: {trace: mixed.pwt}\n"
                                "grid: {pages: [4KiB, 2MiB], tlb: [reference]}\n"
                                "list: [{engine: fast}, {engine: reference}]\n")
    sweep = parse_sweep(path.read_text(), str(path))
    assert sweep.nr_runs == 4
    assert combinations(sweep) == [
        {"engine": "fast", "pages": "4KiB", "tlb": "reference"},
        {"engine": "fast", "pages": "2MiB", "tlb": "reference"},
        {"engine": "reference", "pages": "4KiB", "tlb": "reference"},
        {"engine": "reference", "pages": "2MiB", "tlb": "reference"},
    ]
    runs = expand_runs(sweep)
    assert all(isinstance(run, TraceConfig) for run in runs)
    assert [(run.index, run.pages, run.engine) for run in runs if isinstance(run, TraceConfig)] \
        == [(0, "4KiB", "fast"), (1, "2MiB", "fast"), (2, "4KiB", "reference"),
            (3, "2MiB", "reference")]
    assert runs[0].path == str(tmp_path / "mixed.pwt")    # relative to the sweep file


def test_parameters_land_where_their_paths_say(tmp_path: Path) -> None:
    """steps[0].mmap.length and the shorthand steps[2].stride, a knob at boot, a system
    field, and steps[3].measure (a measure's label is its whole value)."""
    path = sweep_file(tmp_path, f"""name: s
base: {{scenario: thp.yaml}}
names: {{thp: system.sysfs.{THP}, length: "steps[0].mmap.length"}}
list:
  - {{thp: never, length: 8MiB, "steps[2].stride": 2MiB, system.ram: 1GiB,
     "steps[3].measure": x}}
""")
    sweep = parse_sweep(path.read_text(), str(path))
    assert sweep.parameters["thp"].target == Knob(THP)
    assert sweep.parameters["length"].target == StepField(0, "mmap", "length")
    assert sweep.parameters["system.ram"].target == SystemField("ram")
    (run,) = expand_runs(sweep)
    assert isinstance(run, ScenarioConfig)
    scenario = run.scenario
    assert scenario.system.sysfs[THP] == "never"
    assert scenario.system.ram == 1024 * MiB
    mmap, _, touch, measure = scenario.steps
    assert isinstance(mmap, MmapStep) and mmap.length == 8 * MiB
    assert isinstance(touch, TouchStep) and touch.stride == 2 * MiB
    assert isinstance(measure, MeasureStep) and measure.label == "x"
    assert run.params == {"thp": "never", "length": "8MiB", "steps[2].stride": "2MiB",
                          "system.ram": "1GiB", "steps[3].measure": "x"}


def test_the_scenario_parameter_swaps_the_base_before_the_others_apply(tmp_path: Path) -> None:
    path = sweep_file(tmp_path, "name: s\nbase: {scenario: thp.yaml}\ngrid:\n"
                                "  steps[0].mmap.length: [4MiB]\n"
                                "  scenario: [thp.yaml, anon-4k-write-64m]\n")
    runs = expand_runs(parse_sweep(path.read_text(), str(path)))
    names = [run.scenario.name for run in runs if isinstance(run, ScenarioConfig)]
    assert names == ["thp-madvise-64m", "anon-4k-write-64m"]
    for run in runs:
        assert isinstance(run, ScenarioConfig)
        mmap = run.scenario.steps[0]
        assert isinstance(mmap, MmapStep) and mmap.length == 4 * MiB


def test_example_sweeps_are_shipped_with_the_package() -> None:
    assert {path.stem for path in example_sweeps()} >= {"thp-pte-cost", "stlb-by-page-size"}


@pytest.mark.parametrize("path", example_sweeps(), ids=lambda p: p.stem)
def test_every_shipped_example_sweep_is_valid(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from the top of the repository, as the trace examples say."""
    monkeypatch.chdir(DATA.parent.parent)
    sweep = load_sweep(path)
    assert len(expand_runs(sweep)) == sweep.nr_runs > 1


def test_a_trace_not_beside_the_sweep_file_is_looked_for_in_the_current_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = sweep_file(tmp_path, "name: s\nbase: {trace: elsewhere.pwt}\ngrid: {pages: [2MiB]}\n")
    other = tmp_path / "cwd"
    other.mkdir()
    (other / "elsewhere.pwt").symlink_to(TRACE)
    monkeypatch.chdir(other)
    (run,) = expand_runs(parse_sweep(path.read_text(), str(path)))
    assert isinstance(run, TraceConfig) and run.path == str(other / "elsewhere.pwt")
