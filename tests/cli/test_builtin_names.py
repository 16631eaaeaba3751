"""A built-in example's name is accepted wherever a scenario file is: ``run``, ``view``,
``verify``, ``translate --scenario``, ``pagetable-cost --scenario``, ``trace
--scenario``, a sweep's base and its ``scenario`` parameter, and the Python API. A file
of that name wins; an unknown name is one line naming it, exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pagewalk.cli import main
from pagewalk.trace.formats import pack_records

NAME = "thp-madvise-64m"
HEAP = 0x7FFFF3E00000        # its 64 MiB mapping, THP-backed after its touch
UNKNOWN = "no-such-example"


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_run_takes_a_name() -> None:
    code, out, _ = cli("run", NAME, "--json")
    assert code == 0
    assert json.loads(out)["measurements"][0]["system"]["thp_fault_alloc"] == 32


def test_view_static_takes_a_name(tmp_path: Path) -> None:
    code, _, err = cli("view", NAME, "--static", str(tmp_path / "site"))
    assert code == 0, err
    assert (tmp_path / "site" / "index.html").is_file()
    assert any(NAME in path.read_text(errors="replace")
               for path in (tmp_path / "site").rglob("*") if path.is_file())


def test_verify_takes_a_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """The name reaches the live runner as that scenario (the live kernel is not run
    here: the runner answers that it cannot, exit status 3)."""
    import pagewalk.live.verify
    from pagewalk.live.errors import LiveError
    seen = []

    def no_kernel(scenario: object, *args: object, **kwargs: object) -> None:
        seen.append(scenario)
        raise LiveError("no live kernel in this test")

    monkeypatch.setattr(pagewalk.live.verify, "run_live", no_kernel)
    code, _, err = cli("verify", NAME)
    assert code == 3 and "no live kernel in this test" in err
    assert [getattr(s, "name", None) for s in seen] == [NAME]


def test_translate_scenario_takes_a_name() -> None:
    code, out, _ = cli("translate", "heap+0x201000", "--scenario", NAME, "--at", "after-touch",
                       "--json")
    assert code == 0
    walk = json.loads(out)
    assert (walk["scenario"], walk["page_size"], walk["refs"]) == (NAME, 2 << 20, 3)


def test_pagetable_cost_scenario_takes_a_name() -> None:
    code, out, _ = cli("pagetable-cost", "--scenario", NAME, "--json")
    assert code == 0
    assert json.loads(out)["scenario"] == NAME


def test_trace_scenario_takes_a_name(tmp_path: Path) -> None:
    """Page sizes from the named scenario: one store per 4 KiB page of its heap faults
    once per 2 MiB page."""
    addresses = np.arange(HEAP, HEAP + (64 << 20), 4096, dtype=np.uint64)
    path = tmp_path / "heap.npy"
    np.save(path, pack_records(addresses, np.ones(addresses.size, dtype=np.uint64)))
    code, out, err = cli("trace", str(path), "--scenario", NAME, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert (report["pages"], report["faults"], report["walks"]) == ("mix", 32, 32)


def test_sweep_base_and_scenario_parameter_take_names(tmp_path: Path) -> None:
    spec = tmp_path / "names.yaml"
    spec.write_text(f"name: names\nbase:\n  scenario: {NAME}\n"
                    "grid:\n  scenario: [anon-4k-write-64m, populate]\n")
    code, out, err = cli("sweep", str(spec), "--dry-run")
    assert code == 0, err
    assert "2 runs" in out
    from pagewalk.sweep.runs import expand_runs
    from pagewalk.sweep.spec import load_sweep
    runs = expand_runs(load_sweep(spec))
    assert [run.scenario.name for run in runs] == ["anon-4k-write-64m", "populate"]  # type: ignore[union-attr]


def test_api_takes_a_name() -> None:
    import pagewalk
    assert pagewalk.run(NAME).scenario == NAME
    assert pagewalk.translate("heap", scenario=NAME, at="after-touch").page_shift == 21


@pytest.mark.parametrize("args", [
    ("run", UNKNOWN), ("view", UNKNOWN, "--static", "out"), ("verify", UNKNOWN),
    ("translate", "0x1000", "--scenario", UNKNOWN), ("pagetable-cost", "--scenario", UNKNOWN),
    ("trace", "unused.npy", "--scenario", UNKNOWN),
])
def test_an_unknown_name_is_one_line_and_exit_2(args: tuple[str, ...], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(*args)
    assert code == 2
    assert err.count("\n") == 1 and "no such file or built-in example" in err and UNKNOWN in err
    assert "Traceback" not in out + err
    assert not (tmp_path / "out").exists()


def test_a_file_of_the_same_name_wins_and_a_directory_does_not(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / NAME).write_text("name: local\nsteps:\n  - measure: start\n")
    code, out, _ = cli("run", NAME, "--json")
    assert code == 0 and json.loads(out)["scenario"] == "local"
    (tmp_path / "populate").mkdir()
    code, out, _ = cli("run", "populate", "--json")
    assert code == 0 and json.loads(out)["scenario"] == "populate"
    code, _, err = cli("run", "./no-such-dir-or-file")
    assert code == 2 and "no such file or built-in example" in err
