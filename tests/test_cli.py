"""The command line: runs scenarios by file or name, prints JSON only with --json, and
reports bad input as one line with the file, step and field (exit 2), never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from pagewalk.cli import main

SCENARIO = """name: small
system:
  sysfs:
    /sys/kernel/mm/transparent_hugepage/enabled: never
steps:
  - mmap: {name: a, length: 4MiB}
  - touch: {region: a}
  - measure: done
"""


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_run_json_prints_one_object_with_the_kernels_figures(tmp_path: Path) -> None:
    path = tmp_path / "small.yaml"
    path.write_text(SCENARIO)
    code, out, _ = run("run", str(path), "--json")
    assert code == 0
    report = json.loads(out)
    main_figures = report["measurements"][0]["processes"]["main"]
    assert main_figures["minflt"] == 1024          # one fault per 4 KiB page
    assert main_figures["RssAnon"] == 4096
    assert main_figures["VmPTE"] == 8              # two PTE tables for a 2 MiB-aligned 4 MiB


def test_run_by_example_name_and_examples_list() -> None:
    code, out, _ = run("examples")
    assert code == 0 and "thp-madvise-64m" in out
    code, out, _ = run("run", "thp-madvise-64m", "--json")
    assert code == 0
    assert json.loads(out)["measurements"][0]["system"]["thp_fault_alloc"] == 32


def test_show_prints_views_at_each_measure(tmp_path: Path) -> None:
    path = tmp_path / "small.yaml"
    path.write_text(SCENARIO)
    code, out, _ = run("run", str(path), "--show", "/proc/meminfo", "--show", "/proc/main/status")
    assert code == 0
    assert "MemTotal:" in out and "VmPTE:" in out and "AnonPages:" in out


def test_bad_field_is_one_line_naming_file_step_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(SCENARIO.replace("touch: {region: a}", "touch: {region: a, access: exec}"))
    code, out, err = run("run", str(path))
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert "bad.yaml" in lines[0] and "step 1" in lines[0] and "access" in lines[0]


def test_yaml_syntax_error_is_reported_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nsteps:\n  - mmap: {name: a, length: 4MiB\n")
    code, _, err = run("run", str(path))
    assert code == 2 and "broken.yaml" in err and "Traceback" not in err


def test_unexpected_errno_fails_the_run_with_its_name(tmp_path: Path) -> None:
    path = tmp_path / "enomem.yaml"
    path.write_text("name: enomem\nsteps:\n  - mmap: {name: a, length: 0x800000000000}\n")
    code, _, err = run("run", str(path))
    assert code == 1 and "ENOMEM" in err and "step 0" in err


def test_unexpected_signal_fails_the_run(tmp_path: Path) -> None:
    path = tmp_path / "segv.yaml"
    path.write_text("name: segv\nsteps:\n  - mmap: {name: a, length: 4MiB, prot: r}\n"
                    "  - touch: {region: a}\n")
    code, _, err = run("run", str(path))
    assert code == 1 and "SIGSEGV" in err


def test_missing_file_or_example() -> None:
    code, _, err = run("run", "no-such-scenario")
    assert code == 2 and "no-such-scenario" in err
