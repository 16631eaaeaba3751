"""Version 2 files on the live kernel: the runner creates them as the kernel oracle does
(4 KiB write(2)s + fsync on the root disk's ext4, tmpfs, memfd), keeps them open so that
every process reaches them after an unlink, honours read_ahead_kb per mmap, and cleans
up: files, directories of killed runs, the root disk's readahead knob and I/O scheduler.
The figures asserted are the kernel's (shared/oracle/README.md, "Version 2")."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pagewalk.fuzz.discover import ERR, Outcome, annotate, discover_live
from pagewalk.fuzz.document import load
from pagewalk.kernel.knobs import READ_AHEAD_KB
from pagewalk.live.compare import compare_reports
from pagewalk.live.files import FILES_DISK, FILES_TMPFS, real_knob, root_disk, scheduler_knob
from pagewalk.live.knobs import read_knob
from pagewalk.live.verify import refusal, run_live
from pagewalk.scenario.schema import parse_scenario
from tests.live.live_support import SCENARIOS, knob_values, needs_gcc, needs_root

pytestmark = [needs_gcc]
FILE_SCENARIOS = ["v2-file-read-fault-around", "v2-file-dontneed-readahead",
                  "v2-file-private-cow", "v2-file-shared-write-truncate",
                  "v2-madvise-file-advices", "v2-tmpfs-memfd", "v2-unlink-mapped-fork"]


def machine_state() -> dict[str, str]:
    """Every knob the runner may touch, and the root disk's I/O scheduler."""
    state = knob_values()
    scheduler = scheduler_knob()
    if scheduler is not None:
        state[scheduler] = read_knob(scheduler)
    return state


def run(text: str, repeat: int = 1) -> dict[str, Any]:
    before = machine_state()
    report = run_live(parse_scenario(text, "files.yaml"), repeat).report
    assert machine_state() == before
    assert _our_run_dirs() == []
    return report


def _our_run_dirs() -> list[Path]:
    """The file directories this process's runs left (other helpers' runs may be busy)."""
    return [entry for parent in (FILES_DISK, FILES_TMPFS) if parent.is_dir()
            for entry in parent.iterdir() if entry.name.startswith(f"run-{os.getpid()}-")]


def figures(report: dict[str, Any], label: str, proc: str = "main") -> dict[str, int]:
    (m,) = [m for m in report["measurements"] if m["label"] == label]
    return dict(m["processes"][proc]) | {"sys." + k: v for k, v in m["system"].items()}


@pytest.mark.skipif(root_disk() is None, reason="the files' file system has no block device")
def test_read_ahead_kb_names_the_disk_that_holds_the_files() -> None:
    real = real_knob(READ_AHEAD_KB)
    assert real.startswith("/sys/devices/") and real.endswith("/queue/read_ahead_kb")
    disk_major = int(Path(real).parents[1].joinpath("dev").read_text().split(":")[0])
    assert os.major(os.stat(FILES_DISK.parent).st_dev) == disk_major


def test_without_root_only_disk_file_scenarios_need_the_readahead_knob(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """read_ahead_kb changes no figure of a scenario without a disk file: a user's run of
    one is not refused for it (most disks read ahead 128 kB, the spec's vda 8192)."""
    monkeypatch.setattr("pagewalk.live.knobs.differing_from_simulator",
                        lambda: {READ_AHEAD_KB: ("128", "8192")})
    anon = parse_scenario("name: a\nsteps:\n  - mmap: {name: a, length: 4KiB}\n", "a.yaml")
    disk = parse_scenario("name: d\nsteps:\n  - file: {name: f, size: 4KiB}\n", "d.yaml")
    tmpfs = parse_scenario("name: t\nsteps:\n  - file: {name: f, size: 4KiB, fs: tmpfs}\n",
                           "t.yaml")
    assert refusal(anon, root=False) is None and refusal(tmpfs, root=False) is None
    refused = refusal(disk, root=False)
    assert refused is not None and "read_ahead_kb is 128" in str(refused)


@needs_root
def test_cached_disk_file_read_faults_map_a_64k_window() -> None:
    """filemap_map_pages (fault-around, fault_around_bytes 65536): 16 cached 4 KiB folios
    per read fault, all minor, the window aligned on the virtual address (64 KiB-aligned
start here); the file step left every page cached and clean."""
    report = run("""name: fault-around
steps:
  - file: {name: f, size: 1MiB}
  - mmap: {name: m, length: 1MiB, prot: r, flags: [shared], file: f, addr: 0x600000000000}
  - touch: {region: m, access: read}
  - measure: read
""")
    got = figures(report, "read")
    assert (got["minflt"], got["majflt"], got["RssFile"], got["sys.pgmajfault"]) == \
        (16, 0, 1024, 0)


@needs_root
def test_read_ahead_kb_zero_is_taken_at_each_mmap() -> None:
    """A file takes read_ahead_kb when it is opened: each mmap opens it afresh, so a map
    made after `set ... 0` reads one page per fault (do_sync_mmap_readahead returns at
    ra_pages 0), all major; the knob and the disk's scheduler are restored after."""
    report = run(f"""name: ra-zero
steps:
  - file: {{name: f, size: 1MiB}}
  - fadvise: {{file: f, advice: dontneed}}
  - set: {{{READ_AHEAD_KB}: 0}}
  - mmap: {{name: m, length: 1MiB, prot: r, flags: [shared], file: f}}
  - touch: {{region: m, access: read, length: 64KiB}}
  - measure: no-readahead
""")
    got = figures(report, "no-readahead")
    assert (got["minflt"], got["majflt"], got["RssFile"]) == (0, 16, 64)
    assert 16 <= got["sys.pgmajfault"] <= 18


@needs_root
def test_memfd_unlink_and_truncate_reach_the_file_the_run_holds() -> None:
    """shmem read faults on holes allocate a zeroed page each, no fault-around; unlink
    removes the name once (then ENOENT), yet truncate still reaches the open file, and a
    page past the new end is SIGBUS."""
    report = run("""name: unlinked
steps:
  - file: {name: m, size: 1MiB, fs: memfd}
  - mmap: {name: a, length: 1MiB, flags: [shared], file: m}
  - touch: {region: a, access: read, length: 256KiB}
  - measure: holes
  - file: {name: t, size: 1MiB, fs: tmpfs}
  - mmap: {name: b, length: 1MiB, flags: [shared], file: t}
  - unlink: {file: t}
  - unlink: {file: t, expect_error: ENOENT}
  - truncate: {file: t, size: 64KiB}
  - touch: {region: b, offset: 64KiB, length: 4KiB, access: read, expect_signal: SIGBUS}
  - write: {region: b, data: "kept"}
  - read: {region: b, expect: "kept"}
  - measure: end
""")
    holes = figures(report, "holes")
    assert (holes["minflt"], holes["majflt"], holes["RssShmem"]) == (64, 0, 256)


@needs_root
def test_stale_run_directories_go_at_the_next_start(tmp_path: Path) -> None:
    """A killed run's directory (its PID gone) is removed; a live run's is not touched."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    FILES_TMPFS.mkdir(parents=True, exist_ok=True)
    stale = FILES_TMPFS / f"run-{dead.pid}-stale"
    alive = FILES_TMPFS / f"run-{os.getppid()}-alive"
    stale.mkdir()
    alive.mkdir()
    (stale / "f0-x").write_bytes(b"\0" * 4096)
    try:
        parse = parse_scenario("name: s\nsteps:\n  - file: {name: f, size: 4KiB, fs: tmpfs}\n"
                               "  - measure: m\n", "s.yaml")
        run_live(parse)
        assert not stale.exists() and alive.is_dir()
    finally:
        for directory in (stale, alive):
            if directory.exists():
                for entry in directory.iterdir():
                    entry.unlink()
                directory.rmdir()


@needs_root
def test_discovery_records_the_errno_of_file_steps() -> None:
    """The fuzzer's discovery run gets each file step's errno; annotated, the scenario
    replays on the kernel with the same answers."""
    doc = {"name": "disc", "steps": [
        {"file": {"name": "f", "size": 64 * 1024}},
        {"mmap": {"name": "m", "length": 64 * 1024, "flags": ["shared"], "file": "f",
                  "file_offset": 1}},
        {"mmap": {"name": "n", "length": 64 * 1024, "flags": ["shared"], "file": "f"}},
        {"msync": {"region": "n", "flags": ["sync", "async"]}},
        {"unlink": {"file": "f"}},
        {"unlink": {"file": "f"}},
        {"truncate": {"file": "f", "size": 4096}},
        {"measure": "end"}]}
    _, found = discover_live(load(doc))
    assert {i: o for i, o in found.outcomes.items() if o.kind == ERR} == {
        1: Outcome(ERR, "EINVAL"), 3: Outcome(ERR, "EINVAL"), 5: Outcome(ERR, "ENOENT")}
    annotated, _ = annotate(doc, found)
    assert annotated["steps"][5] == {"unlink": {"file": "f", "expect_error": "ENOENT"}}
    run_live(load(annotated))                    # raises if an answer is not the same


@needs_root
@pytest.mark.parametrize("name", FILE_SCENARIOS)
def test_file_scenarios_match_the_oracles_kernel_reports(name: str) -> None:
    """The live runner measures what shared/oracle/run_on_kernel.py measured (three runs,
    most common value: Mlocked moves by -4 kB now and then with PID 1's mlockall)."""
    path = SCENARIOS / f"{name}.yaml"
    if not path.exists():
        pytest.skip(f"{name} is not in tests/data/scenarios yet (copy it from "
                    "/work/shared/scenarios with its .kernel.json)")
    stored = json.loads((SCENARIOS / f"{name}.kernel.json").read_text())
    before = machine_state()
    live = run_live(parse_scenario(path.read_text(), "files.yaml"), 3)
    assert machine_state() == before
    assert _our_run_dirs() == []
    # as `pagewalk verify` judges: the stored report's pgfault may lie anywhere between
    # the faults this run's processes counted and the pgfault it read (other processes
    # on this machine add to the system-wide counter), THP events by the idle background
    # (the stored reports predate version 3: its system figures, pswpin ..., are not in them)
    comparison = compare_reports(_only_stored_fields(live.report, stored), stored,
                                 live.pgfault_bounds(), live.background())
    assert comparison.differences == []


def _only_stored_fields(report: dict[str, Any], stored: dict[str, Any]) -> dict[str, Any]:
    """``report`` with each measure's system figures cut to those ``stored`` has."""
    out = json.loads(json.dumps(report))
    for measure, kept in zip(out["measurements"], stored["measurements"], strict=False):
        measure["system"] = {key: value for key, value in measure["system"].items()
                             if key in kept["system"]}
    return out
