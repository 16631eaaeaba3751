"""`pagewalk trace` (trace/command.py): the options and JSON of docs/trace-model.md and
issue 6; bad input is one red line and exit status 2, never a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pagewalk.trace import command
from pagewalk.trace.command import trace_command

REPORT_FIELDS = {"accesses", "loads", "stores", "ifetches", "l1_hits", "stlb_hits", "walks",
                 "walk_refs", "pwc_hits_pml4e", "pwc_hits_pdpte", "pwc_hits_pde", "faults",
                 "l1_miss_rate", "stlb_miss_rate", "walk_refs_per_walk"}


def run(*args: str) -> Any:
    return CliRunner().invoke(trace_command, list(args))


def assert_one_line_error(result: Any, text: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and text in lines[0], result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("pages", ["4KiB", "2MiB", "1GiB"])
def test_json_is_one_object_with_every_report_field(traces: Path, expected: dict[str, Any],
                                                    pages: str) -> None:
    result = run(str(traces / "true.lackey"), "--pages", pages, "--json")
    assert result.exit_code == 0
    report = json.loads(result.output)              # the whole output is one object
    assert REPORT_FIELDS <= set(report)
    assert {k: report[k] for k in expected[f"true.lackey --pages {pages}"]} == \
        expected[f"true.lackey --pages {pages}"]


def test_without_json_a_table_is_printed(traces: Path) -> None:
    result = run(str(traces / "mixed-200k.pwt"), "--pages", "2MiB")
    assert result.exit_code == 0
    assert "stlb_hits" in result.output and "96,648" in result.output
    assert "STLB 4K+2M" in result.output


def test_the_reference_engine_prints_the_same_report(traces: Path) -> None:
    fast = json.loads(run(str(traces / "true.lackey"), "--json").output)
    slow = json.loads(run(str(traces / "true.lackey"), "--json", "--engine", "reference").output)
    assert fast == slow


def test_format_overrides_the_extension(traces: Path, tmp_path: Path) -> None:
    shutil.copy(traces / "mixed-200k.pwt", tmp_path / "mixed.bin")
    result = run(str(tmp_path / "mixed.bin"), "--format", "pwt", "--json")
    assert json.loads(result.output)["accesses"] == 200_000
    assert_one_line_error(run(str(tmp_path / "mixed.bin")), "line 1: not a lackey line")


@pytest.mark.parametrize("preset", ["reference", "skylake", "haswell", "zen"])
def test_tlb_presets_are_accepted(traces: Path, preset: str) -> None:
    result = run(str(traces / "true.lackey"), "--tlb", preset, "--json")
    assert result.exit_code == 0
    assert json.loads(result.output)["model"] == preset


def test_a_tlb_model_file_is_accepted(traces: Path, tmp_path: Path) -> None:
    (tmp_path / "tiny.yaml").write_text(
        "name: tiny\ntlb:\n"
        "  - {level: 1, serves: unified, pages: [4KiB, 2MiB, 1GiB], entries: 4, ways: 4}\n"
        "pwc: {pml4e: 1, pdpte: 1, pde: 1}\n")
    result = run(str(traces / "true.lackey"), "--tlb", str(tmp_path / "tiny.yaml"), "--json")
    report = json.loads(result.output)
    assert report["model"] == "tiny" and report["stlb_hits"] == 0


@pytest.mark.parametrize("args, text", [
    (("--pages", "3KiB", "x.pwt"), "pages must be 4KiB, 2MiB or 1GiB"),
    (("nope.pwt",), "no such trace file: nope.pwt"),
    ((), "give one TRACE file"),
    (("a.pwt", "b.pwt"), "one TRACE file expected"),
    (("--bogus", "a.pwt"), "No such option"),
    (("--engine", "turbo", "a.pwt"), "Invalid value for '--engine'"),
    (("--tlb", "pentium", "a.pwt"), "no such TLB model 'pentium'"),
])
def test_bad_options_are_one_red_line(args: tuple[str, ...], text: str) -> None:
    assert_one_line_error(run(*args), text)


def test_a_bad_trace_line_is_named(tmp_path: Path) -> None:
    (tmp_path / "t.lackey").write_text("I  0401ab70,3\n L 0401ab70\n")
    assert_one_line_error(run(str(tmp_path / "t.lackey")), "line 2: not a lackey line")


def test_a_bad_model_file_names_the_field(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text(
        "tlb:\n  - {level: 1, serves: data, pages: [4KiB], entries: 10, ways: 4}\n")
    result = run("--tlb", str(tmp_path / "m.yaml"), "x.pwt")
    assert_one_line_error(result, "field 'tlb[0]'")


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_record_runs_a_program_under_lackey_and_replays_it() -> None:
    """`pagewalk trace --record -- /bin/true`: a real program's accesses, streamed."""
    result = run("--record", "--json", "--", "/bin/true")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["accesses"] > 10_000
    assert report["loads"] + report["stores"] + report["ifetches"] == report["accesses"]
    assert 0 < report["faults"] <= report["walks"]


def test_record_without_valgrind_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(command.shutil, "which", lambda name: None)
    assert_one_line_error(run("--record", "--", "/bin/true"), "needs valgrind")


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_record_of_a_missing_program_is_a_clear_error() -> None:
    assert_one_line_error(run("--record", "--", "/no/such/program"), "no such program")
    assert_one_line_error(run("--record"), "--record needs a program")


def test_no_progress_bar_unless_asked_for_and_on_a_terminal() -> None:
    """With --json (wanted=False) or without a terminal, advancing does nothing."""
    for wanted in (False, True):          # pytest's stderr is not a terminal
        with command._progress(wanted, 100) as advance:
            advance(50)
