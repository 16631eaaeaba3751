"""What the commands print: nothing is ever cut. At 80 columns and when piped (CliRunner's
standard output is not a terminal) every number, address and label appears whole, with
no ellipsis and, piped, no box drawing; ``--format csv`` parses into rows whose numbers
are the ``--json`` report's; ``run`` says kB and groups digits, shows the steps that
failed as expected, and shows a process's files where that process lives; ``verify``
counts an identical failure on both sides as agreement."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pagewalk import cli_output
from pagewalk.cli import main
from pagewalk.cli_output import Column, Output, Table
from pagewalk.errors import Errno, Location, Signal, SignalError, SyscallError
from pagewalk.live import verify as live_verify
from pagewalk.live.compare import AGREE, DIFFER, compare_reports, failure_json
from tests.oracle.compare import Cmp, compare

BOX = set("┃│━─┏┓┗┛┡┩╇┳┻┠┨╭╮╰╯")
ELLIPSIS = "…"

SCENARIO = """name: output-check
steps:
  - mmap: {name: a, length: 64MiB}
  - touch: {region: a}
  - munmap: {region: a, offset: 1, expect_error: EINVAL}
  - measure: before-fork
  - fork: {name: child}
  - measure: after-fork
  - exit: {process: child}
  - mmap: {name: read-only-page, length: 4KiB, prot: r}
  - touch: {region: read-only-page, expect_signal: SIGSEGV}
  - measure: after-the-child-exited
"""


def invoke(*args: str, columns: int = 80) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env={"COLUMNS": str(columns)})
    return result.exit_code, result.stdout, result.stderr


def whole(out: str, *values: str) -> None:
    """Each value appears whole in ``out``, and nothing is cut."""
    assert ELLIPSIS not in out
    missing = [value for value in values if value not in out]
    assert not missing, f"cut or missing: {missing}\n{out}"


def plain(out: str) -> None:
    assert ELLIPSIS not in out and not BOX & set(out), out


def parse_csv(out: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(out)))


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("output") / "output-check.yaml"
    path.write_text(SCENARIO)
    return path


@pytest.fixture(scope="module")
def report(scenario: Path) -> dict[str, Any]:
    code, out, err = invoke("run", str(scenario), "--json")
    assert code == 0, err
    doc: dict[str, Any] = json.loads(out)
    return doc


# -- the rendering module ------------------------------------------------------------------------

def wide_table() -> Table:
    table = Table("t", (Column("label"), Column("address", True), Column("bytes", True),
                        Column("what")), title="a table wider than 80 columns")
    table.add_row("a-label-that-is-long", "0x7ffff7a00000ffff", f"{1 << 60:,}",
                  "words that may wrap between them but not inside 0xdeadbeefcafe")
    return table


@pytest.mark.parametrize("fmt", ["table", "plain"])
@pytest.mark.parametrize("columns", [40, 80])
def test_a_table_too_wide_keeps_every_value_whole(fmt: str, columns: int,
                                                  capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich would fold or cut with an ellipsis; a number or address never breaks, a label
    only between words, and plain text never wraps at all."""
    monkeypatch.setenv("COLUMNS", str(columns))
    Output(fmt).table(wide_table())
    out = capsys.readouterr().out
    whole(out, "a-label-that-is-long", "0x7ffff7a00000ffff", "1,152,921,504,606,846,976",
          "0xdeadbeefcafe")
    if fmt == "plain":
        plain(out)
        assert "words that may wrap between them but not inside 0xdeadbeefcafe" in out
    else:
        assert all(len(line) <= columns for line in out.splitlines())


def test_the_format_is_table_on_a_terminal_plain_when_piped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli_output.choose_format(None) == "plain"          # pytest's stdout: no terminal
    assert cli_output.choose_format(None, as_json=True) == "json"
    monkeypatch.setattr(cli_output, "stdout_is_terminal", lambda: True)
    assert cli_output.choose_format(None) == "table"
    assert cli_output.choose_format("csv") == "csv"


def test_long_csv_names_table_row_field() -> None:
    rows = wide_table().long_rows()
    assert rows[0] == ("t", "a-label-that-is-long", "address", "0x7ffff7a00000ffff")
    fields = cli_output.fields_table("f", [("VmPTE", 28)])
    assert fields.long_rows() == [("f", "", "VmPTE", 28)]


# -- run -------------------------------------------------------------------------------------------

def test_run_piped_prints_every_figure_whole_in_kb_with_grouped_digits(
        scenario: Path, report: dict[str, Any]) -> None:
    code, out, _ = invoke("run", str(scenario))
    assert code == 0
    plain(out)
    first = report["measurements"][0]["processes"]["main"]
    assert first["VmRSS"] == 65536                          # 64 MiB in the kernel's kB
    whole(out, "main (kB)", "child (kB)", "65,536", "Mlocked (kB)",
          *(m["label"] for m in report["measurements"]))
    for maps in report["mappings"].values():
        for name, mapping in maps.items():
            whole(out, name, mapping["start"], f"{mapping['length']:,}")


def test_run_shows_the_steps_that_failed_as_expected(scenario: Path,
                                                     report: dict[str, Any]) -> None:
    """The munmap of an unaligned address gets EINVAL (mm/vma.c do_vmi_munmap); a write to
    a PROT_READ page SIGSEGV at the page's address."""
    signal = report["outcomes"][1]
    assert report["outcomes"][0] == {"step": 2, "kind": "munmap", "process": "main",
                                     "error": "EINVAL"}
    assert signal["step"] == 8 and signal["signal"] == "SIGSEGV"
    assert signal["address"] == report["mappings"]["main"]["read-only-page"]["start"]
    code, out, _ = invoke("run", str(scenario), "--format", "table")
    assert code == 0
    whole(out, "step 2 munmap: EINVAL as expected",
          f"step 8 touch: SIGSEGV at {signal['address']} as expected")
    lines = out.splitlines()          # each where it happened: before the measure after it
    einval = next(i for i, line in enumerate(lines) if "EINVAL as expected" in line)
    assert einval < next(i for i, line in enumerate(lines) if "before-fork" in line)


def test_the_oracle_compare_tolerates_the_outcomes_key(report: dict[str, Any]) -> None:
    expected = {key: value for key, value in report.items() if key != "outcomes"}
    result = Cmp("output-check", quiet=True)
    compare(expected, report, result)
    assert result.failed == 0 and result.passed > 0


def test_run_at_80_columns_as_a_table_cuts_nothing(scenario: Path,
                                                   report: dict[str, Any]) -> None:
    code, out, _ = invoke("run", str(scenario), "--format", "table")
    assert code == 0
    whole(out, "main (kB)", "65,536", "after-the-child-exited",
          report["mappings"]["main"]["read-only-page"]["start"])
    assert all(len(line) <= 80 for line in out.splitlines())


def test_run_csv_has_one_row_per_measure_process_and_field(scenario: Path,
                                                           report: dict[str, Any]) -> None:
    code, out, _ = invoke("run", str(scenario), "--format", "csv")
    assert code == 0
    assert out.splitlines()[0] == "measure,step,process,field,value"
    rows = parse_csv(out)
    expected = []
    for m in report["measurements"]:
        for proc, figures in m["processes"].items():
            expected += [(m["label"], str(m["step"]), proc, k, v) for k, v in figures.items()]
        expected += [(m["label"], str(m["step"]), "system", k, v) for k, v in m["system"].items()]
    got = [(r["measure"], r["step"], r["process"], r["field"], int(r["value"])) for r in rows]
    assert got == expected


def test_format_json_is_the_json_flag_and_the_two_must_agree(scenario: Path) -> None:
    assert invoke("run", str(scenario), "--format", "json")[1] == \
        invoke("run", str(scenario), "--json")[1]
    code, out, err = invoke("run", str(scenario), "--json", "--format", "csv")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1


def test_show_prints_a_process_file_only_where_the_process_lives(scenario: Path) -> None:
    """The child lives at after-fork only: its status shows there, the other measures
    say it is not there, and the run does not fail."""
    code, out, err = invoke("run", str(scenario), "--show", "/proc/child/status")
    assert code == 0, err
    assert out.count("Name:\tchild") == 1
    assert out.count("/proc/child/status: no such process at this measure") == 2
    code, out, err = invoke("run", str(scenario), "--show", "/proc/ghost/status")
    assert code == 0 and "/proc/ghost/status" in err and "no such process" in err


# -- translate, pagetable-cost, trace --------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["plain", "table"])
def test_translate_prints_every_address_whole(fmt: str) -> None:
    args = ("translate", "0x7ffff7ff0000", "--scenario", "thp-madvise-64m")
    doc = json.loads(invoke(*args, "--json")[1])
    code, out, _ = invoke(*args, "--format", fmt)
    assert code == 0
    if fmt == "plain":
        plain(out)
    whole(out, doc["vaddr"], doc["cr3"], *(w["entry_paddr"] for w in doc["walk"]),
          *(w["entry"] for w in doc["walk"]),
          *(w["target_paddr"] for w in doc["walk"] if w["role"] == "table"),
          *(p["key"].split()[-1] for p in doc["tlb"]), *(p["array"] for p in doc["tlb"]))


def test_translate_csv_holds_the_json_figures() -> None:
    args = ("translate", "[heap]", "--access", "write")
    doc = json.loads(invoke(*args, "--json")[1])
    rows = parse_csv(invoke(*args, "--format", "csv")[1])
    summary = {r["field"]: r["value"] for r in rows if r["table"] == "translation"}
    assert summary["paddr"] == doc["paddr"] and int(summary["refs"]) == doc["refs"] == 4
    walk = {(r["row"], r["field"]): r["value"] for r in rows if r["table"] == "walk"}
    for w in doc["walk"]:
        assert walk[(w["level"], "entry")] == w["entry"]
        assert int(walk[(w["level"], "index")]) == w["index"]


def test_pagetable_cost_takes_pib_and_speaks_iec_units() -> None:
    """57-bit (5-level) user space: 128 PiB; a flat table of 4 KiB pages, 8-byte entries,
    is 2^57 / 2^12 * 8 = 256 TiB."""
    code, out, _ = invoke("pagetable-cost", "--address-space", "128PiB", "--levels", "5")
    assert code == 0
    plain(out)
    whole(out, "128 PiB", "256 TiB", "281,474,976,710,656", "68,719,476,736")
    code, out, _ = invoke("pagetable-cost", "--scenario", "fork-cow-write")
    assert code == 0 and " kB" not in out and "KiB" in out


def test_pagetable_cost_csv_numbers_are_the_json_numbers() -> None:
    args = ("pagetable-cost", "--address-space", "128TiB")
    doc = json.loads(invoke(*args, "--json")[1])
    rows = parse_csv(invoke(*args, "--format", "csv")[1])
    summary = {r["field"]: int(r["value"]) for r in rows if r["table"] == "arithmetic"}
    assert summary["flat_bytes"] == doc["flat_bytes"] == 256 << 30
    tables = [int(r["value"]) for r in rows if r["table"] == "levels" and r["field"] == "tables"]
    assert tables[:-1] == [lv["tables"] for lv in doc["levels"]] == [1, 256, 131072, 67108864]


@pytest.fixture()
def lackey(tmp_path: Path) -> Path:
    """Accesses far apart: addresses and counts wider than a narrow column."""
    path = tmp_path / "far.lackey"
    path.write_text("".join(f" L {(i << 21) + 0x7f0000000000:x},8\n" for i in range(3000)))
    return path


@pytest.mark.parametrize("fmt", ["plain", "table"])
def test_trace_report_is_whole_and_its_csv_is_its_json(lackey: Path, fmt: str) -> None:
    doc = json.loads(invoke("trace", str(lackey), "--json")[1])
    code, out, _ = invoke("trace", str(lackey), "--format", fmt)
    assert code == 0
    whole(out, str(lackey), f"{doc['accesses']:,}", *doc["tlb"])
    rows = parse_csv(invoke("trace", str(lackey), "--format", "csv")[1])
    report = {r["field"]: r["value"] for r in rows if r["table"] == "report"}
    assert int(report["accesses"]) == doc["accesses"] == 3000
    assert float(report["l1_miss_rate"]) == doc["l1_miss_rate"]
    arrays = {(r["row"], r["field"]): int(r["value"]) for r in rows if r["table"] == "tlb"}
    assert all(arrays[(name, "misses")] == counts["misses"] for name, counts in doc["tlb"].items())


def test_trace_format_still_names_the_trace_format(lackey: Path) -> None:
    code, out, _ = invoke("trace", str(lackey), "--format", "lackey", "--json")
    assert code == 0 and json.loads(out)["accesses"] == 3000
    code, _, err = invoke("trace", str(lackey), "--format", "pwt", "--trace-format", "lackey")
    assert code == 2 and len(err.strip().splitlines()) == 1


# -- inspect ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sleeper() -> Iterator[int]:
    process = subprocess.Popen(["sleep", "120"])
    try:
        yield process.pid
    finally:
        process.kill()
        process.wait()


@pytest.mark.parametrize("fmt", ["plain", "table"])
def test_inspect_prints_every_vma_whole(sleeper: int, fmt: str) -> None:
    doc = json.loads(invoke("inspect", str(sleeper), "--json")[1])
    code, out, _ = invoke("inspect", str(sleeper), "--format", fmt)
    assert code == 0
    if fmt == "plain":
        plain(out)
    else:
        assert all(len(line) <= 80 for line in out.splitlines())
    whole(out, *(vma["start"] for vma in doc["vmas"]),
          *(vma["name"] for vma in doc["vmas"] if vma["name"]))
    rows = parse_csv(invoke("inspect", str(sleeper), "--format", "csv")[1])
    rss = {r["row"]: int(r["value"]) for r in rows if r["table"] == "vmas" and r["field"] == "rss"}
    assert rss == {vma["start"]: vma["rss_bytes"] for vma in doc["vmas"]}


# -- the sweep summary -----------------------------------------------------------------------------

@pytest.mark.parametrize("terminal", [False, True])
def test_sweep_summary_cuts_nothing(terminal: bool, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    pd = pytest.importorskip("pandas")
    from pagewalk.sweep.command import _print_summary
    from pagewalk.sweep.spec import load_sweep
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr(cli_output, "stdout_is_terminal", lambda: terminal)
    sweep = load_sweep(Path(__file__).parents[2] / "src/pagewalk/examples/sweeps"
                       / "thp-modes-scenarios.yaml")
    table = pd.DataFrame([{
        "run": 0, **{name: f"value-of-{name}-that-is-long" for name in sweep.parameters},
        "label": "after-the-whole-mapping-was-touched", "process": "main",
        "minflt": 16384, "VmRSS": 1048576, "VmPTE": 2052, "AnonHugePages": 1046528,
        "error": None}])
    _print_summary(sweep, table, 1.0, 2, None, [])
    out = capsys.readouterr().out
    whole(out, "after-the-whole-mapping-was-touched", "1,048,576", "1,046,528", "16,384",
          *(f"value-of-{name}-that-is-long" for name in sweep.parameters))
    if not terminal:
        plain(out)


# -- verify: an identical failure is agreement --------------------------------------------------

def failed(err: SyscallError | SignalError, step: int) -> dict[str, Any]:
    return {"scenario": "s", "failure": failure_json(err.at(Location("s.yaml", step)))}


def test_identical_failures_agree_and_any_difference_differs() -> None:
    sigbus = failed(SignalError(Signal.SIGBUS, 0x7ffff7a00000), 6)
    assert sigbus["failure"] == {"step": 6, "signal": "SIGBUS", "address": "0x7ffff7a00000"}
    same = compare_reports(sigbus, failed(SignalError(Signal.SIGBUS, 0x7ffff7a00000), 6))
    assert same.agrees and same.count(AGREE) == 4          # scenario, step, signal, address
    for other in (failed(SignalError(Signal.SIGBUS, 0x7ffff7a01000), 6),
                  failed(SignalError(Signal.SIGSEGV, 0x7ffff7a00000), 6),
                  failed(SignalError(Signal.SIGBUS, 0x7ffff7a00000), 5),
                  failed(SyscallError(Errno.EINVAL), 6)):
        assert not compare_reports(sigbus, other).agrees
    einval = failed(SyscallError(Errno.EINVAL, "addr not page aligned"), 1)
    assert compare_reports(einval, failed(SyscallError(Errno.EINVAL), 1)).agrees
    ran = {"scenario": "s", "measurements": [], "mappings": {}}
    one_side = compare_reports(einval, ran)
    assert [c.verdict for c in one_side.checks if c.field == "failure"] == [DIFFER]


ENOMEM_SCENARIO = "name: enomem\nsteps:\n  - mmap: {name: a, length: 0x800000000000}\n"


@pytest.mark.parametrize("errno, code", [(Errno.ENOMEM, 0), (Errno.EINVAL, 1)])
def test_verify_counts_the_same_failure_on_both_sides_as_agreement(
        errno: Errno, code: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An mmap larger than the 47-bit user space: ENOMEM in the simulator (get_unmapped_area);
    the live kernel is stood in for by a run that fails with ``errno`` at the same step."""
    path = tmp_path / "enomem.yaml"
    path.write_text(ENOMEM_SCENARIO)

    def kernel_fails(*_: Any, **__: Any) -> None:
        raise SyscallError(errno).at(Location(str(path), 0))

    monkeypatch.setattr(live_verify, "run_live", kernel_fails)
    status, out, err = invoke("verify", str(path))
    assert status == code
    if code == 0:
        assert "fail it identically" in out and "step 0: ENOMEM" in out and err == ""
    else:
        assert out == "" and "EINVAL" in err and "ENOMEM" in err
    status, out, _ = invoke("verify", str(path), "--json")
    if code == 0:
        doc = json.loads(out)
        assert doc["agree"] and doc["kernel"]["failure"] == doc["simulator"]["failure"] == {
            "step": 0, "error": "ENOMEM"}


def test_verify_prints_every_figure_and_difference_whole(
        report: dict[str, Any], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel report one figure off (VmRSS 4 kB more) and otherwise the simulator's: the
    difference and every mapping start show whole at 80 columns, table or plain."""
    from types import SimpleNamespace

    from pagewalk.live.command import print_verify
    kernel = json.loads(json.dumps(report))
    kernel["measurements"][0]["processes"]["main"]["VmRSS"] += 4
    comparison = compare_reports(kernel, report)
    run = SimpleNamespace(noise=[], background={}, probe_command_faults=0, idle_seconds=0.5)
    live = live_verify.LiveResult("output-check", kernel, [run])  # type: ignore[list-item]
    monkeypatch.setenv("COLUMNS", "80")
    for terminal in (False, True):
        monkeypatch.setattr(cli_output, "stdout_is_terminal", lambda t=terminal: t)
        print_verify(live, report, comparison)
        out = capsys.readouterr().out
        whole(out, "65540 ≠ sim 65536", "1 differ", *(m["label"] for m in report["measurements"]),
              *(mp["start"] for maps in report["mappings"].values() for mp in maps.values()))
        if not terminal:
            plain(out)
