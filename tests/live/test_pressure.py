"""Version 3 on the live kernel: `pagewalk verify` sets up the scenario's swap file and
memory cgroup and removes them (also when interrupted, and after a killed run at the next
start), a probe the OOM killer takes ends its step with SIGKILL, repeats combine by the
lower median, and the comparison allows the spec's spread under pressure.

The rules are tested without root; the runs on the kernel need root, gcc, the cgroup v1
memory controller and util-linux's swap tools."""

from __future__ import annotations

import copy
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pagewalk.cli import main
from pagewalk.errors import Location, Signal, SignalError
from pagewalk.live import pressure as pressure_mod
from pagewalk.live import verify as live_verify
from pagewalk.live.compare import (
    AGREE,
    DIFFER,
    compare_reports,
    describe_failure,
    failure_json,
    pressure_tolerance,
)
from pagewalk.live.files import disk_idle
from pagewalk.live.knobs import STATE_FILE, KnobGuard
from pagewalk.live.pressure import (
    CGROUP_MEMORY,
    CGROUP_PREFIX,
    SWAP_DIR,
    Pressure,
    active_swaps,
    death_cause,
    memcg_of,
    ours,
    stale_cgroups,
)
from pagewalk.live.verify import combine, lower_median
from pagewalk.scenario.schema import parse_scenario
from tests.live.live_support import ROOT, SCENARIOS, knob_values


def _missing_for_live_runs() -> str | None:
    """Why the live version 3 runs cannot run here, or None."""
    if not ROOT:
        return "sets up a swap file and a memory cgroup: needs root"
    if shutil.which("gcc") is None:
        return "the probe is built with gcc, which is not installed"
    if not (CGROUP_MEMORY / "memory.limit_in_bytes").exists():
        return f"no cgroup v1 memory controller at {CGROUP_MEMORY}"
    if any(shutil.which(tool, path=pressure_mod.SYS_PATH["PATH"]) is None
           for tool in pressure_mod.SWAP_TOOLS):
        return "mkswap, swapon or swapoff is not installed"
    return None


_MISSING = _missing_for_live_runs()
needs_live_pressure = pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")

SWAPS = """Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority
/dev/vdb                                partition\t1048572\t\t0\t\t-2
/var/tmp/pagewalk-live-swap/run-77-x/swapfile file\t\t131068\t\t0\t\t-3
/var/tmp/my\\040swap                      file\t\t1020\t\t0\t\t-4
"""


# -- the rules, without root -------------------------------------------------------------------

def test_proc_swaps_names_the_active_areas_and_which_are_a_runs() -> None:
    """A killed run's swap file is found among the active areas by its directory; the
    kernel writes a space in a name as \\040."""
    areas = active_swaps(SWAPS)
    assert areas == ["/dev/vdb", f"{SWAP_DIR}/run-77-x/swapfile", "/var/tmp/my swap"]
    assert [area for area in areas if ours(area)] == [f"{SWAP_DIR}/run-77-x/swapfile"]
    assert not ours(f"{SWAP_DIR}-other/swapfile") and active_swaps(SWAPS.splitlines()[0]) == []


def test_stale_cgroups_are_the_ones_a_run_named() -> None:
    names = ["process_api", f"{CGROUP_PREFIX}4242", "pagewalk-oracle-17", f"{CGROUP_PREFIX}7"]
    assert stale_cgroups(names) == [f"{CGROUP_PREFIX}4242", f"{CGROUP_PREFIX}7"]


def test_the_memory_cgroup_of_a_process_is_its_v1_memory_line() -> None:
    text = "9:name=systemd:/\n4:memory:/process_api/ab12\n1:cpu:/\n0::/\n"
    assert memcg_of(text) == CGROUP_MEMORY / "process_api" / "ab12"
    assert memcg_of("4:cpuacct,memory:/\n") == CGROUP_MEMORY
    assert memcg_of("0::/user.slice\n") == CGROUP_MEMORY        # cgroup v2 only


def test_a_probe_that_vanished_was_oom_killed_only_by_the_kernels_word() -> None:
    """main: its exit status (we are its parent); a child, reaped by the kernel: SIGKILL
    exactly when /proc/vmstat oom_kill rose during the step."""
    assert death_cause(-signal.SIGKILL, oom_killed=False) == "SIGKILL"
    assert death_cause(-signal.SIGSEGV, oom_killed=True) == "SIGSEGV"
    assert death_cause(3, oom_killed=True) == "exit status 3"
    assert death_cause(None, oom_killed=True) == "SIGKILL"
    assert death_cause(None, oom_killed=False) == "an unknown cause"


def test_the_disk_is_idle_with_no_read_and_with_writes_no_write_in_flight() -> None:
    assert disk_idle("0 5\n", writes=False) and not disk_idle("0 5\n", writes=True)
    assert disk_idle("0 0\n", writes=True) and not disk_idle("1 0\n", writes=False)


def test_a_sigkill_failure_has_no_address_and_matches_by_step() -> None:
    """The kernel does not say where the OOM killer struck: a SIGKILL is compared by its
    step alone, wherever the simulator's faulting access was."""
    err = SignalError(Signal.SIGKILL, 0x7FFFF0000000, location=Location("s.yaml", 5))
    assert failure_json(err) == {"step": 5, "signal": "SIGKILL"}
    assert describe_failure(failure_json(err)) == "step 5: SIGKILL"
    live = {"scenario": "s", "failure": {"step": 5, "signal": "SIGKILL"}}
    assert compare_reports(live, {"scenario": "s", "failure": failure_json(err)}).agrees
    segv = SignalError(Signal.SIGSEGV, 0x1000, location=Location("s.yaml", 5))
    assert failure_json(segv)["address"] == "0x1000"


PROC = {"minflt": 32768, "majflt": 0, "VmRSS": 62204, "RssAnon": 62204, "VmPTE": 256,
        "VmSwap": 68868}
SYSTEM = {"pgfault": 32768, "pgmajfault": 0, "pswpin": 0, "pswpout": 17078, "oom_kill": 0,
          "thp_split_pmd": 0, "HugePages_Free": 0, "Mlocked": 0}
PRESSURED: dict[str, Any] = {
    "scenario": "p", "pressure": True,
    "measurements": [{"label": "m", "step": 3, "processes": {"main": PROC}, "system": SYSTEM}],
    "mappings": {},
}


def changed(report: dict[str, Any], proc: str, name: str, value: int) -> dict[str, Any]:
    out = copy.deepcopy(report)
    figures = out["measurements"][0]
    (figures["system"] if proc == "system" else figures["processes"][proc])[name] = value
    return out


def verdict_of(kernel: dict[str, Any], simulator: dict[str, Any], name: str) -> str:
    (check,) = [c for c in compare_reports(kernel, simulator).checks if c.field == name]
    return check.verdict


@pytest.mark.parametrize(("proc", "name", "inside", "outside"), [
    ("main", "VmRSS", 62204 + 1866, 62204 + 1867),       # 3 % of 62204 kB is 1866.1
    ("main", "VmPTE", 256 + 64, 256 + 68),               # the 64 kB floor
    ("main", "VmSwap", 68868 - 2066, 68868 - 2070),
    ("main", "minflt", 32768 + 983, 32768 + 984),        # 3 % of 32768 is 983.04
    ("main", "majflt", 16, 17),                          # the floor of 16
    ("system", "pswpout", 17078 - 512, 17078 - 513),
    ("system", "pswpin", 16, 17),
    ("system", "pgmajfault", 16, 17),
    ("system", "Mlocked", -64, -65),
])
def test_under_pressure_sizes_and_counts_agree_within_the_specs_spread(
        proc: str, name: str, inside: int, outside: int) -> None:
    """The spec: sizes within max(64 kB, 3 %), counts within max(16, 3 %) of the kernel's."""
    sim_inside = changed(PRESSURED, proc, name, inside)
    assert verdict_of(PRESSURED, sim_inside, name) == AGREE
    assert verdict_of(PRESSURED, changed(PRESSURED, proc, name, outside), name) == DIFFER
    plain = {key: value for key, value in PRESSURED.items() if key != "pressure"}
    assert verdict_of(plain, sim_inside, name) == DIFFER      # without pressure: exact


def test_under_pressure_oom_kills_thp_and_hugetlb_stay_exact() -> None:
    for name in ("oom_kill", "thp_split_pmd", "HugePages_Free"):
        assert pressure_tolerance(name, 100) == 0
        assert verdict_of(PRESSURED, changed(PRESSURED, "system", name, 1), name) == DIFFER
    assert pressure_tolerance("VmRSS", 10000) == 300 and pressure_tolerance("majflt", 0) == 16


def test_a_pressure_report_needs_a_pressure_simulation() -> None:
    simulated = {key: value for key, value in PRESSURED.items() if key != "pressure"}
    result = compare_reports(PRESSURED, simulated)
    assert [(c.field, c.kernel, c.simulator) for c in result.differences] == \
        [("pressure", True, "missing")]


def test_repeats_under_pressure_take_the_lower_median_of_sizes_and_counts() -> None:
    """Under reclaim the kernel varies both ways: sizes, faults, pswpin and pswpout take
    the median (the lower middle one), oom_kill and pgfault the minimum as before."""
    values = {"VmRSS": [62204, 61000, 63632, 62900], "minflt": [32768, 32770, 32769, 32768],
              "pswpout": [17078, 16860, 17300, 17001], "oom_kill": [1, 2, 1, 1],
              "pgfault": [32800, 32770, 32790, 32771]}
    runs = []
    for index in range(4):
        run = copy.deepcopy(PRESSURED)
        for name, series in values.items():
            proc = "system" if name in SYSTEM else "main"
            run = changed(run, proc, name, series[index])
        runs.append(run)
    combined, varied = combine(runs)
    main, system = combined["measurements"][0]["processes"]["main"], \
        combined["measurements"][0]["system"]
    assert (main["VmRSS"], main["minflt"], system["pswpout"]) == (62204, 32768, 17001)
    assert (system["oom_kill"], system["pgfault"]) == (1, 32770)
    assert varied[("m", "main", "VmRSS")] == values["VmRSS"]
    plain = [{k: v for k, v in run.items() if k != "pressure"} for run in runs]
    assert combine(plain)[0]["measurements"][0]["processes"]["main"]["VmRSS"] == 62204  # mode
    assert combine(plain)[0]["measurements"][0]["system"]["pswpout"] == 16860         # min
    assert lower_median([3, 1, 2]) == 2 and lower_median([4, 1, 3, 2]) == 2


V3_YAML = """name: v3
system:
  {field}: 64MiB
steps:
  - mmap: {{name: a, length: 4MiB}}
  - measure: m
"""


@pytest.mark.parametrize("field", ["swap", "memory_limit"])
def test_without_root_a_pressure_scenario_is_refused(
        field: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live_verify, "is_root", lambda: False)
    scenario = parse_scenario(V3_YAML.format(field=field), "v3.yaml")
    refused = live_verify.refusal(scenario, root=False)
    assert refused is not None and "as root" in str(refused) and "memory cgroup" in str(refused)


def test_a_kernel_that_swaps_unlike_the_reference_machine_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """page-cluster other than 3, zswap on, or no cgroup v1 memory controller: the
    comparison would not be fair; the message says what to change."""
    cluster, zswap = tmp_path / "page-cluster", tmp_path / "zswap"
    cluster.write_text("3\n")
    zswap.write_text("N\n")
    monkeypatch.setattr(pressure_mod, "PAGE_CLUSTER_KNOB", str(cluster))
    monkeypatch.setattr(pressure_mod, "ZSWAP_KNOB", str(zswap))
    monkeypatch.setattr(pressure_mod, "SWAP_TOOLS", ())
    swap = parse_scenario(V3_YAML.format(field="swap"), "v3.yaml")
    assert pressure_mod.refusal(swap) is None
    cluster.write_text("0\n")
    refused = pressure_mod.refusal(swap)
    assert refused is not None and "page-cluster is 0" in str(refused) \
        and "field 'system.swap'" in str(refused)
    cluster.write_text("3\n")
    zswap.write_text("Y\n")
    assert "zswap is on" in str(pressure_mod.refusal(swap))
    monkeypatch.setattr(pressure_mod, "CGROUP_MEMORY", tmp_path / "no-memory-controller")
    limit = parse_scenario(V3_YAML.format(field="memory_limit"), "v3.yaml")
    assert "no cgroup v1 memory controller" in str(pressure_mod.refusal(limit))


# -- on the live kernel --------------------------------------------------------------------------

def leftovers() -> list[str]:
    """Swap areas and memory cgroups of pagewalk runs that exist now."""
    found = [area for area in active_swaps(Path("/proc/swaps").read_text()) if ours(area)]
    return found + stale_cgroups(entry.name for entry in CGROUP_MEMORY.iterdir())


def verify(*args: str) -> tuple[int, dict[str, Any], str]:
    result = CliRunner().invoke(main, ["verify", *args, "--json"])
    return result.exit_code, json.loads(result.stdout or "{}"), result.stderr


V3_SCENARIOS = ["v3-swapout-write-over-limit", "v3-swapin-readahead", "v3-oom-kill-no-swap",
                "v3-pageout-then-touch", "v3-pageout-thp"]
# No reclaim under a limit with swap: the kernel's figures do not depend on the machine's
# load. (Reclaim under a limit does: on this machine under a load of 3, the oracle itself
# gave v3-swapout-write-over-limit a VmRSS median of 64312 kB, its stored report 62204.)
TIMING_FREE = ("v3-oom-kill-no-swap", "v3-pageout-then-touch", "v3-pageout-thp")


@needs_live_pressure
@pytest.mark.parametrize("name", V3_SCENARIOS)
def test_v3_scenarios_agree_with_the_simulator_and_leave_nothing(
        name: str, tmp_path: Path) -> None:
    """Three runs, combined by the median, agree with the simulator within the spec's
    spread; the swap file and the cgroup are gone afterwards, every knob is as before;
    where no reclaim timing is involved, the figures land in the stored kernel report's
    spread too."""
    before = knob_values()
    out = tmp_path / "kernel.json"
    code, doc, stderr = verify(str(SCENARIOS / f"{name}.yaml"), "--repeat", "3", "-o", str(out))
    assert code == 0, (doc.get("differences"), stderr)
    kernel = json.loads(out.read_text())
    assert kernel["pressure"] is True and doc["simulator"]["pressure"] is True
    assert leftovers() == [] and knob_values() == before
    if name not in TIMING_FREE:
        return
    stored = json.loads((SCENARIOS / f"{name}.kernel.json").read_text())
    # system-wide counters of today's run may hold other processes' events: only more
    bounds = {m["label"]: (0, m["system"]["pgfault"]) for m in kernel["measurements"]}
    background = {"thp_fault_alloc": 1, "locked_by_others_kb": 1}
    assert [c.line() for c in compare_reports(kernel, stored, bounds, background).differences] \
        == []


OOM_UNEXPECTED = """name: oom-unexpected
system:
  memory_limit: 16MiB
steps:
  - mmap: {name: big, length: 32MiB}
  - madvise: {region: big, advice: nohugepage}
  - touch: {region: big, access: write}
  - measure: never
"""


@needs_live_pressure
def test_an_unexpected_oom_kill_is_a_sigkill_at_its_step_on_both_sides(tmp_path: Path) -> None:
    """main writes twice its limit without swap: the OOM killer takes it at step 2, the
    simulator's too; an identical failure is agreement (exit status 0)."""
    path = tmp_path / "oom.yaml"
    path.write_text(OOM_UNEXPECTED)
    code, doc, stderr = verify(str(path))
    assert code == 0, stderr
    assert doc["kernel"]["failure"] == {"step": 2, "signal": "SIGKILL"} == \
        doc["simulator"]["failure"]
    assert leftovers() == []


@needs_live_pressure
def test_expecting_sigkill_where_nothing_is_killed_fails_on_both_sides(tmp_path: Path) -> None:
    path = tmp_path / "none.yaml"
    path.write_text("name: none\nsystem:\n  memory_limit: 64MiB\nsteps:\n"
                    "  - mmap: {name: a, length: 4MiB}\n"
                    "  - touch: {region: a, access: write, expect_signal: SIGKILL}\n"
                    "  - measure: m\n")
    result = CliRunner().invoke(main, ["verify", str(path)])
    assert result.exit_code == 1
    assert "expected SIGKILL, but the step succeeded" in result.stderr
    assert result.stderr.count("step 1") == 2 and leftovers() == []


@needs_live_pressure
def test_discovery_records_the_oom_kill_as_the_steps_sigkill() -> None:
    """pagewalk fuzz's discovery run sees an OOM kill as it sees any signal."""
    from pagewalk.fuzz.discover import SIG, Outcome, discover_live
    text = (SCENARIOS / "v3-oom-kill-no-swap.yaml").read_text()
    scenario = parse_scenario(text.replace(", expect_signal: SIGKILL", ""), "oom.yaml")
    result, found = discover_live(scenario)
    assert found.outcomes[5] == Outcome(SIG, "SIGKILL")
    (m,) = result.report["measurements"]
    assert list(m["processes"]) == ["main"] and m["system"]["oom_kill"] == 1
    assert leftovers() == []


@needs_live_pressure
def test_leftovers_of_a_killed_run_go_at_the_next_start() -> None:
    """A swap file left on and a cgroup left with a task in it (a run killed outright):
    the next run's clear_stale turns the file off, moves the task home, removes both."""
    notes: list[str] = []
    sleeper = subprocess.Popen(["sleep", "60"])
    left = Pressure(swap=1 << 20, limit=16 << 20)
    try:
        left.setup()
        left.join(sleeper.pid)
        assert len(leftovers()) == 2
        pressure_mod.clear_stale(notes.append)
        assert leftovers() == [] and list(SWAP_DIR.iterdir()) == []
        assert sleeper.poll() is None               # moved out, not killed
        home = memcg_of(Path(f"/proc/{sleeper.pid}/cgroup").read_text())
        assert not home.name.startswith(CGROUP_PREFIX)
        assert any("interrupted run" in note for note in notes)
        pressure_mod.clear_stale(notes.append)      # idempotent: nothing more to do
        assert len(notes) == 1
    finally:
        sleeper.kill()
        sleeper.wait()
        left.teardown()


def start_verify(name: str) -> subprocess.Popen[bytes]:
    """`pagewalk verify` in a child process, returned once its cgroup holds the probe
    and its swap file is on (both are named by the child's PID)."""
    child = subprocess.Popen([sys.executable, "-m", "pagewalk", "verify",
                              str(SCENARIOS / f"{name}.yaml")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    cgroup = CGROUP_MEMORY / f"{CGROUP_PREFIX}{child.pid}"
    deadline = time.monotonic() + 120          # another live run may hold the lock
    while True:
        swap_on = any(f"/run-{child.pid}-" in area for area in leftovers())
        try:
            joined = bool((cgroup / "cgroup.procs").read_text().strip())
        except OSError:
            joined = False
        if swap_on and joined:
            return child
        assert child.poll() is None and time.monotonic() < deadline, "no swap file or cgroup"
        time.sleep(0.01)


@needs_live_pressure
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_v3_verify_removes_its_swap_file_and_cgroup(signum: int) -> None:
    before = knob_values()
    child = start_verify("v3-swapin-readahead")
    child.send_signal(signum)
    _, stderr = child.communicate(timeout=120)
    assert child.returncode == 130, stderr
    assert leftovers() == [] and knob_values() == before and not STATE_FILE.exists()


@needs_live_pressure
def test_a_killed_v3_verify_leaves_them_to_the_next_run() -> None:
    before = knob_values()
    child = start_verify("v3-swapin-readahead")
    child.kill()
    child.communicate(timeout=60)
    assert len(leftovers()) == 2
    notes: list[str] = []
    with KnobGuard(notes.append, write=True) as guard:
        pressure_mod.clear_stale(guard.notify)
    assert leftovers() == [] and knob_values() == before
    assert any("interrupted run" in note for note in notes)
