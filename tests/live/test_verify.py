"""`pagewalk verify` runs a scenario on this machine's kernel, reports it in the schema of
`pagewalk run --json`, agrees with the simulator and with the stored kernel reports on
stable scenarios, and leaves every knob as it found it: after success, failure,
SIGINT, SIGTERM, and (on the next run) SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pagewalk.cli import main
from pagewalk.live import verify as live_verify
from pagewalk.live.compare import compare_reports
from pagewalk.live.knobs import STATE_FILE, KnobGuard, read_knob
from pagewalk.live.probe import build_probe, spawn, start_layout_differences, stop
from pagewalk.live.procfs import read_status
from pagewalk.scenario.schema import parse_scenario
from tests.live.live_support import (
    SCENARIOS,
    knob_values,
    needs_clean_hugetlb,
    needs_gcc,
    needs_root,
    probe_pids,
)

pytestmark = [needs_gcc]
MAX_PTES_NONE = "/sys/kernel/mm/transparent_hugepage/khugepaged/max_ptes_none"
STABLE = ["anon-4k-write-64m", "thp-madvise-64m", "fork-cow-write",
          pytest.param("hugetlb-2m-pool", marks=needs_clean_hugetlb), "thp-always-vs-never"]


def verify(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["verify", *args])
    return result.exit_code, result.stdout, result.stderr


@needs_root
def test_probe_starts_as_the_spec_start_image() -> None:
    """ASLR off, static: the VMAs of the simulator's start image, VmPTE 28 kB."""
    popen, channel = spawn(build_probe(), "main")
    try:
        assert start_layout_differences(channel.pid) == []
        assert read_status(channel.pid)["VmPTE"] == 28
    finally:
        stop(popen)


def _fields_of(report: dict[str, Any], stored: dict[str, Any]) -> dict[str, Any]:
    """``report`` with only the figures ``stored`` has: a version-1 kernel report lacks the
    version 2 figures (RssFile, VmLck, VmSwap, pgmajfault, Mlocked), and compare.py
    checks only the fields of the expected report."""
    old = {m["label"]: m for m in stored["measurements"]}
    out = json.loads(json.dumps(report))
    for m in out["measurements"]:
        theirs = old.get(m["label"], m)
        for proc, figures in m["processes"].items():
            keep = theirs["processes"].get(proc, figures)
            m["processes"][proc] = {k: v for k, v in figures.items() if k in keep}
        m["system"] = {k: v for k, v in m["system"].items() if k in theirs["system"]}
    return out


@needs_root
@pytest.mark.parametrize("name", STABLE)
def test_verify_agrees_with_the_simulator_and_the_stored_kernel_report(
        name: str, tmp_path: Path) -> None:
    before = knob_values()
    out = tmp_path / "kernel.json"
    code, stdout, stderr = verify(str(SCENARIOS / f"{name}.yaml"), "--repeat", "2", "--json",
                                  "-o", str(out))
    doc = json.loads(stdout)
    assert code == 0, (doc["differences"], stderr)
    assert doc["agree"] and doc["counts"]["differ"] == 0 and doc["runs"] == 2
    assert knob_values() == before
    # the live report is the oracle's: process figures exact against the stored one
    kernel = json.loads(out.read_text())
    assert kernel == doc["kernel"]
    stored = json.loads((SCENARIOS / f"{name}.kernel.json").read_text())
    # (system-wide counters of today's run may hold other processes' events: only more)
    bounds = {m["label"]: (0, m["system"]["pgfault"]) for m in kernel["measurements"]}
    background = {k: 1 for k in ("thp_fault_alloc", "thp_split_pmd", "thp_collapse_alloc",
                                 "thp_fault_fallback")}
    assert compare_reports(_fields_of(kernel, stored), stored, bounds,
                           background).differences == []
    # the noise of both runs is measured and shown
    assert [run["probe_command_faults"] for run in doc["noise"]] == [0, 0]
    assert all(m["accounted"] <= m["pgfault"] for run in doc["noise"] for m in run["measures"])


@needs_root
def test_human_output_has_the_figures_noise_and_a_summary() -> None:
    code, stdout, _ = verify("thp-madvise-64m")
    assert code == 0
    assert "AnonHugePages" in stdout and "65536" in stdout
    assert "noise: the measuring process faulted" in stdout
    assert " agree, 0 differ" in stdout.strip().splitlines()[-1]


def test_khugepaged_step_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "k.yaml"
    path.write_text("name: k\nsteps:\n  - mmap: {name: a, length: 2MiB}\n  - khugepaged: {}\n"
                    "  - measure: m\n")
    code, _, stderr = verify(str(path))
    assert code == 3
    assert "cannot be replayed on a live kernel" in stderr and "step 1" in stderr
    assert len(stderr.strip().splitlines()) == 1


def test_bad_scenario_is_refused_as_pagewalk_run_refuses_it(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nsteps:\n  - mmap: {name: a, length: 2MiB, prot: rwz}\n")
    code, stdout, stderr = verify(str(path))
    assert code == 2 and stdout == ""
    assert "step 0" in stderr and "prot" in stderr and "Traceback" not in stderr


@needs_root
def test_a_step_both_sides_refuse_alike_is_agreement(tmp_path: Path) -> None:
    """munmap of an unaligned address: EINVAL on both sides at step 1, which is agreement
    (exit status 0), said with the step and the errno."""
    path = tmp_path / "einval.yaml"
    path.write_text("name: einval\nsteps:\n  - mmap: {name: a, length: 1MiB}\n"
                    "  - munmap: {region: a, offset: 1}\n  - measure: m\n")
    before = knob_values()
    code, stdout, stderr = verify(str(path))
    assert code == 0, stderr
    assert "fail it identically" in stdout and "step 1: EINVAL" in stdout
    assert [line for line in stderr.strip().splitlines() if not line.startswith("note:")] == []
    assert knob_values() == before


def test_without_root_scenarios_that_set_knobs_are_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live_verify, "is_root", lambda: False)
    code, _, stderr = verify(str(SCENARIOS / "anon-4k-write-64m.yaml"))
    assert code == 3 and "as root" in stderr
    scenario = parse_scenario("name: x\nsteps:\n  - mmap: {name: a, length: 4KiB}\n", "x.yaml")
    monkeypatch.setattr("pagewalk.live.knobs.differing_from_simulator",
                        lambda: {"/sys/kernel/mm/transparent_hugepage/enabled":
                                 ("always", "madvise")})
    refused = live_verify.refusal(scenario, root=False)
    assert refused is not None and "enabled is always" in str(refused)


@needs_root
def test_without_root_a_knob_free_scenario_runs_and_writes_nothing(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """As a user would: no knob written, khugepaged not frozen (said in a note)."""
    monkeypatch.setattr(live_verify, "is_root", lambda: False)
    writes: list[str] = []
    monkeypatch.setattr(KnobGuard, "_write", lambda self, path, value: writes.append(path))
    path = tmp_path / "plain.yaml"
    path.write_text("name: plain\nsteps:\n  - mmap: {name: a, length: 1MiB}\n"
                    "  - touch: {region: a}\n  - measure: m\n")
    code, stdout, stderr = verify(str(path), "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["kernel"]["measurements"][0]["processes"]["main"]["minflt"] == 256
    assert "khugepaged cannot be kept from scanning" in stderr
    assert writes == []


INTERRUPTIBLE = """name: slow
system:
  sysfs:
    {knob}: 17
    /sys/kernel/mm/transparent_hugepage/enabled: never
steps:
  - mmap: {{name: a, length: 2GiB}}
  - touch: {{region: a}}
  - munmap: {{region: a}}
  - mmap: {{name: b, length: 2GiB}}
  - touch: {{region: b}}
  - measure: m
"""


def start_verify(tmp_path: Path) -> subprocess.Popen[bytes]:
    """`pagewalk verify` in a child process, returned once it has changed a knob."""
    path = tmp_path / "slow.yaml"
    path.write_text(INTERRUPTIBLE.format(knob=MAX_PTES_NONE))
    child = subprocess.Popen([sys.executable, "-m", "pagewalk", "verify", str(path)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while read_knob(MAX_PTES_NONE) != "17":
        assert child.poll() is None and time.monotonic() < deadline, "verify set no knob"
        time.sleep(0.002)
    return child


@needs_root
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_verify_restores_every_knob(signum: int, tmp_path: Path) -> None:
    before = knob_values()
    exe = build_probe()
    child = start_verify(tmp_path)
    child.send_signal(signum)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 130, stderr
    assert knob_values() == before
    assert not STATE_FILE.exists()
    assert probe_pids(exe) == []


@needs_root
def test_knobs_left_by_a_killed_run_are_restored_by_the_next(tmp_path: Path) -> None:
    before = knob_values()
    child = start_verify(tmp_path)
    child.kill()
    child.communicate(timeout=60)
    assert read_knob(MAX_PTES_NONE) == "17" and STATE_FILE.exists()
    notes: list[str] = []
    with KnobGuard(notes.append, write=True):
        pass
    assert knob_values() == before
    assert any("interrupted run" in note for note in notes)
    assert not STATE_FILE.exists()
    deadline = time.monotonic() + 10          # the probes die with their parent (PDEATHSIG)
    while probe_pids(build_probe()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert probe_pids(build_probe()) == []


@needs_root
def test_guard_restores_knobs_written_during_a_failed_run() -> None:
    before = knob_values()
    with pytest.raises(RuntimeError), KnobGuard(lambda _: None, write=True) as guard:
        guard.set(MAX_PTES_NONE, "3")
        assert read_knob(MAX_PTES_NONE) == "3"
        raise RuntimeError("a step failed")
    assert knob_values() == before
    assert os.path.exists(STATE_FILE) is False
