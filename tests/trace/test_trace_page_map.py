"""Trace replay with a page-size mix (issue 6): ``--scenario`` takes each page's size from
the simulated kernel's page tables, ``--page-map`` from ``pagewalk inspect --replay``."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from pagewalk.explain.state import load_state
from pagewalk.trace.command import trace_command
from pagewalk.trace.formats import pack_records
from pagewalk.trace.page_map import task_page_ranges

THP_BASE, SMALL_BASE = 0x600000000000, 0x600000800000
MiB, KiB = 1 << 20, 1 << 10

SCENARIO = f"""\
name: trace-mix
description: "A 4 MiB THP-backed region and a 64 KiB region of 4 KiB pages."
system: {{sysfs: {{/sys/kernel/mm/transparent_hugepage/enabled: always}}}}
steps:
  - mmap: {{name: big, length: 4MiB, flags: [private, anonymous, fixed], addr: {THP_BASE:#x}}}
  - touch: {{region: big}}
  - measure: big
  - mmap: {{name: small, length: 64KiB, flags: [private, anonymous, fixed], addr: {SMALL_BASE:#x}}}
  - touch: {{region: small}}
  - measure: end
"""


@pytest.fixture()
def files(tmp_path: Path) -> tuple[Path, Path]:
    scenario = tmp_path / "mix.yaml"
    scenario.write_text(SCENARIO)
    pages = np.concatenate((THP_BASE + np.arange(1024) * 4096,
                            SMALL_BASE + np.arange(16) * 4096)).astype(np.uint64)
    trace = tmp_path / "mix.pwt"
    pack_records(pages, np.zeros(pages.size, dtype=np.uint64)).tofile(trace)
    return scenario, trace


def run(*args: str) -> Any:
    return CliRunner().invoke(trace_command, list(args))


def test_ranges_are_the_sizes_the_kernel_mapped(files: tuple[Path, Path]) -> None:
    run_state = load_state(str(files[0]), None)
    ranges = task_page_ranges(run_state.kernel, run_state.kernel.tasks["main"])
    assert (THP_BASE, THP_BASE + 4 * MiB, 21) in ranges
    assert (SMALL_BASE, SMALL_BASE + 64 * KiB, 12) in ranges
    starts = [r[0] for r in ranges]
    assert starts == sorted(starts)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(ranges))   # no overlap


def test_scenario_mix_faults_each_page_once_at_its_size(files: tuple[Path, Path]) -> None:
    scenario, trace = files
    mixed = json.loads(run(str(trace), "--scenario", str(scenario), "--json").output)
    small = json.loads(run(str(trace), "--json").output)
    assert mixed["faults"] == 2 + 16        # two PMD-mapped THPs, sixteen 4 KiB pages
    assert small["faults"] == 1024 + 16
    assert mixed["walks"] == 18 and mixed["accesses"] == small["accesses"] == 1040


def test_at_label_takes_the_state_of_that_measure(files: tuple[Path, Path]) -> None:
    scenario, trace = files
    report = json.loads(run(str(trace), "--scenario", str(scenario), "--at", "big",
                            "--json").output)
    assert report["faults"] == 2 + 16       # the small region not yet mapped: 4 KiB


def test_page_map_file_is_the_same_mix(files: tuple[Path, Path], tmp_path: Path) -> None:
    scenario, trace = files
    page_map = tmp_path / "map.json"
    page_map.write_text(json.dumps([
        {"start": hex(THP_BASE), "end": hex(THP_BASE + 4 * MiB), "page_shift": 21},
        {"start": hex(SMALL_BASE), "end": hex(SMALL_BASE + 64 * KiB), "page_shift": 12}]))
    by_file = json.loads(run(str(trace), "--page-map", str(page_map), "--json").output)
    by_scenario = json.loads(run(str(trace), "--scenario", str(scenario), "--json").output)
    assert by_file == by_scenario


@pytest.mark.parametrize(("args", "text"), [
    (["--pages", "2MiB", "--scenario", "S"], "--pages and --scenario"),
    (["--at", "big"], "--process and --at need --scenario"),
    (["--scenario", "S", "--process", "nobody"], "no process 'nobody'"),
    (["--scenario", "S", "--at", "nowhere"], "no measure labelled 'nowhere'"),
    (["--page-map", "MISSING.json"], "cannot read page-size map"),
])
def test_bad_mix_options_are_one_line_errors(files: tuple[Path, Path], args: list[str],
                                            text: str) -> None:
    scenario, trace = files
    args = [str(scenario) if a == "S" else a for a in args]
    result = run(str(trace), *args)
    assert result.exit_code == 2, result.output
    assert text in result.output and "Traceback" not in result.output


def test_bad_page_map_names_the_entry(files: tuple[Path, Path], tmp_path: Path) -> None:
    page_map = tmp_path / "bad.json"
    page_map.write_text(json.dumps([{"start": "0x1000", "end": "0x2000", "page_shift": 21}]))
    result = run(str(files[1]), "--page-map", str(page_map))
    assert result.exit_code == 2 and "not aligned" in result.output
