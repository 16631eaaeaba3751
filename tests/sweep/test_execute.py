"""A sweep on a local Dask cluster of 2 workers gives the same table as its runs done one
by one in this process with the public APIs (run_scenario, replay_trace); a run that
fails is a row with its error, and the sweep goes on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from pagewalk.errors import PagewalkError
from pagewalk.scenario.runner import run_scenario
from pagewalk.scenario.schema import parse_scenario
from pagewalk.sweep import execute
from pagewalk.sweep.execute import execute_run, results_table, run_sweep
from pagewalk.sweep.runs import TraceConfig, expand_runs
from pagewalk.sweep.spec import parse_sweep
from pagewalk.trace.replay import replay_trace

DATA = Path(__file__).resolve().parent.parent / "data"
SCENARIO = DATA / "scenarios" / "thp-madvise-64m.yaml"
TRACE = DATA / "traces" / "mixed-200k.pwt"
EXPECTED_TRACES = DATA / "traces" / "expected.json"
THP = "/sys/kernel/mm/transparent_hugepage/enabled"
THP_MODES = ("always", "never")
LENGTHS = ("4MiB", "6MiB", "64GiB")      # 64 GiB: mmap fails with ENOMEM (overcommit heuristic)
PAGES = ("4KiB", "2MiB", "1GiB")

SCENARIO_SWEEP = f"""name: thp-by-length
base: {{scenario: thp.yaml}}
names:
  thp: system.sysfs.{THP}
  length: steps[0].mmap.length
grid:
  thp: [{', '.join(THP_MODES)}]
  length: [{', '.join(LENGTHS)}]
"""

TRACE_SWEEP = f"""name: pages
base: {{trace: mixed.pwt}}
grid:
  trace: [mixed.pwt, broken.pwt]
  pages: [{', '.join(PAGES)}]
"""


def one_scenario_by_hand(path: Path, thp: str, length: str) -> dict[str, Any]:
    """The report of the scenario at ``path`` with the knob and the length written in by
    hand (or the error ``pagewalk run`` would print)."""
    document = yaml.safe_load(path.read_text())
    document.setdefault("system", {}).setdefault("sysfs", {})[THP] = thp
    document["steps"][0]["mmap"]["length"] = length
    scenario = parse_scenario(yaml.safe_dump(document, sort_keys=False), str(path))
    try:
        return run_scenario(scenario).to_json()
    except PagewalkError as err:
        return {"error": str(err)}


def write_broken_trace(path: Path) -> None:
    """1,000 good records, then one with the reserved kind 3."""
    words = np.fromfile(TRACE, dtype="<u8", count=1000).copy()
    words[-1] |= np.uint64(3 << 62)
    words.tofile(path)


@pytest.fixture(scope="module")
def scenario_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scenario-sweep") / "thp.yaml"
    path.write_text(SCENARIO.read_text())
    return path


@pytest.fixture(scope="module")
def scenario_table(client: Any, scenario_path: Path) -> pd.DataFrame:
    sweep = parse_sweep(SCENARIO_SWEEP, str(scenario_path.parent / "sweep.yaml"))
    return run_sweep(expand_runs(sweep), client)


@pytest.fixture(scope="module")
def trace_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    directory = tmp_path_factory.mktemp("trace-sweep")
    (directory / "mixed.pwt").symlink_to(TRACE)
    write_broken_trace(directory / "broken.pwt")
    return expand_runs(parse_sweep(TRACE_SWEEP, str(directory / "sweep.yaml")))


@pytest.fixture(scope="module")
def trace_table(client: Any, trace_runs: list[Any]) -> pd.DataFrame:
    return run_sweep(trace_runs, client)


def test_every_scenario_row_holds_the_report_of_that_run_done_alone(
        scenario_table: pd.DataFrame, scenario_path: Path) -> None:
    combinations = [(thp, length) for thp in THP_MODES for length in LENGTHS]
    assert sorted(scenario_table["run"].unique()) == list(range(len(combinations)))
    for run, (thp, length) in enumerate(combinations):
        rows = scenario_table[scenario_table["run"] == run]
        assert (rows["thp"] == thp).all() and (rows["length"] == length).all()
        assert (rows["scenario"] == "thp-madvise-64m").all()
        report = one_scenario_by_hand(scenario_path, thp, length)
        if "error" in report:
            assert len(rows) == 1 and rows["error"].iloc[0] == report["error"]
            continue
        expected = [(m, process, figures) for m in report["measurements"]
                    for process, figures in m["processes"].items()]
        assert len(rows) == len(expected)
        for (_, row), (measurement, process, figures) in zip(rows.iterrows(), expected):
            assert (row["label"], row["step"], row["process"]) == \
                (measurement["label"], measurement["step"], process)
            for name, value in {**figures, **measurement["system"]}.items():
                assert row[name] == value, (run, name)
            assert pd.isna(row["error"])


def test_the_scenario_figures_are_the_kernels(scenario_table: pd.DataFrame) -> None:
    """64 MiB under madvise+MADV_HUGEPAGE is 32 THP faults (thp-madvise-64m.kernel.json);
    at 4 MiB and enabled=always, 2 THPs; under never, 1024 small faults."""
    ok = scenario_table[scenario_table["error"].isna()].set_index(["thp", "length"])
    assert ok.loc[("always", "4MiB"), "thp_fault_alloc"] == 2
    assert ok.loc[("always", "4MiB"), "AnonHugePages"] == 4096
    assert ok.loc[("never", "4MiB"), "minflt"] == 1024
    assert ok.loc[("never", "6MiB"), "AnonHugePages"] == 0


def test_a_run_the_kernel_refuses_is_an_error_row_and_the_sweep_goes_on(
        scenario_table: pd.DataFrame) -> None:
    failed = scenario_table[scenario_table["error"].notna()]
    assert list(failed["length"]) == ["64GiB", "64GiB"]
    assert all("ENOMEM" in message and "step 0" in message for message in failed["error"])
    assert failed["minflt"].isna().all() and failed["label"].isna().all()
    assert scenario_table["error"].isna().sum() == 4


def test_every_trace_row_is_the_report_of_replay_trace_done_alone(
        trace_table: pd.DataFrame, trace_runs: list[Any]) -> None:
    expected_reference = pd.read_json(EXPECTED_TRACES, typ="series")
    assert list(trace_table["run"]) == list(range(6))
    for run in trace_runs:
        assert isinstance(run, TraceConfig)
        row = trace_table.iloc[run.index]
        assert (row["trace"], row["pages"], row["tlb"], row["engine"]) == \
            (run.trace, run.pages, "reference", "fast")
        if run.trace == "broken.pwt":
            assert "record 999" in row["error"] and pd.isna(row["accesses"])
            continue
        report = replay_trace(TRACE, pages=run.pages).to_json()
        for name, value in report.items():
            if isinstance(value, dict):
                for array, counts in value.items():
                    assert row[f"tlb.{array}.hits"] == counts["hits"]
                    assert row[f"tlb.{array}.misses"] == counts["misses"]
            else:
                assert row[name] == value, name
        for name, value in expected_reference[f"mixed-200k.pwt --pages {run.pages}"].items():
            assert row[name] == value


def test_the_cluster_table_equals_the_table_of_runs_done_one_by_one(
        trace_table: pd.DataFrame, trace_runs: list[Any]) -> None:
    rows = [row for run in trace_runs for row in execute_run(run)]
    alone = results_table(trace_runs, rows)
    pd.testing.assert_frame_equal(trace_table.drop(columns="seconds"),
                                  alone.drop(columns="seconds"))


def test_an_internal_error_is_a_row_too(trace_runs: list[Any],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(run: Any) -> dict[str, Any]:
        raise RuntimeError("model bug")
    monkeypatch.setattr(execute, "run_report", broken)
    (row,) = execute_run(trace_runs[0])
    assert row["error"] == "internal error: RuntimeError: model bug"
    assert row["run"] == 0 and row["pages"] == "4KiB" and row["seconds"] >= 0


def test_whole_number_columns_with_gaps_stay_integers(trace_table: pd.DataFrame) -> None:
    assert str(trace_table["accesses"].dtype) == "Int64"
    assert trace_table["stlb_miss_rate"].dtype == np.float64
    assert trace_table["error"].notna().sum() == 3
