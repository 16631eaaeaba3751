"""``pagewalk replay`` options (issue 16): the time series of ``--measure-every N`` (a cut
at every N recorded accesses changes no figure; each point is the state right after its
access), the machine of ``--scenario-system`` with ``--thp``, ``--hugetlb`` and
``--paging`` over it, and their errors. The recording is the C program of
test_record_replay.py, recorded once under valgrind. Skipped where valgrind or a C
compiler is missing."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pagewalk.cli import main
from pagewalk.errors import ConfigError
from pagewalk.record.recfile import End, RecordingWriter, read_recording
from pagewalk.record.recorder import record
from pagewalk.record.replay import SERIES_FIELDS, ReplayResult, replay_recording
from pagewalk.record.system import replay_system
from pagewalk.record.valgrind_log import Syscall

pytestmark = pytest.mark.skipif(shutil.which("valgrind") is None or shutil.which("gcc") is None
                                or shutil.which("setarch") is None,
                                reason="needs valgrind, gcc and setarch")

EXIT_GROUP = Syscall(231, "exit_group", (0,), 0)
CUMULATIVE = ("minflt", "majflt", "l1_misses", "stlb_misses", "walk_refs")


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory, program: Path) -> Path:
    work = tmp_path_factory.mktemp("replay-options")
    record([str(program)], work / "touch.pwr", compare=False)
    return work / "touch.pwr"


@pytest.fixture(scope="module")
def plain(recording: Path) -> ReplayResult:
    """The replay without a series: the reference every cut replay must equal."""
    return replay_recording(recording)


def _outcome(result: ReplayResult) -> dict[str, object]:
    """Everything a replay reports except its series."""
    doc = dataclasses.asdict(result)
    doc.pop("series")
    doc.pop("measure_every")
    return doc


def _copy(source: Path, target: Path, before_exit: np.ndarray | None = None,
          stop_after: int | None = None) -> None:
    """Copy a recording; ``before_exit``: accesses added before its exit call;
    ``stop_after``: end it (exit_group) right after that many accesses."""
    written = 0
    with target.open("wb") as stream:
        writer = RecordingWriter(stream)
        for event in read_recording(source):
            if isinstance(event, dict):
                writer.header(event)
            elif isinstance(event, np.ndarray):
                if stop_after is not None and written + event.shape[0] >= stop_after:
                    writer.accesses_run(event[:stop_after - written])
                    writer.syscall(EXIT_GROUP)
                    writer.end(0)
                    return
                writer.accesses_run(event)
                written += int(event.shape[0])
            elif isinstance(event, Syscall):
                if event.name in ("exit", "exit_group") and before_exit is not None:
                    writer.accesses_run(before_exit)
                writer.syscall(event)
            elif isinstance(event, End):
                writer.end(event.exit_code)


# -- --measure-every -------------------------------------------------------------------------

@pytest.mark.parametrize("every", [997, 28_465, 100_000])
def test_cutting_the_runs_at_every_n_accesses_changes_no_figure(recording: Path,
                                                                 plain: ReplayResult,
                                                                 every: int) -> None:
    """The exit figures, TLB counts, meminfo lines and notes with --measure-every N are
    those without it: the pieces go through the same loop in the same order (997: cuts
    inside most runs, between syscalls; 28,465: the first run's length, a cut exactly at
    a run's end; 100,000: a cut in the middle of the run after the 8 MiB mmap)."""
    cut = replay_recording(recording, measure_every=every)
    assert _outcome(cut) == _outcome(plain)
    assert plain.accesses > 190_000 and plain.figures["RssAnon"] >= 8 << 10


def test_series_is_monotone_and_ends_at_the_exit_figures(recording: Path,
                                                         plain: ReplayResult) -> None:
    """A point every N accesses, at exactly k*N, then the exit point, which is the exit
    figures; the counts of faults, TLB misses and walk reads never go down."""
    every = 10_000
    series = replay_recording(recording, measure_every=every).series
    counts = [point["accesses"] for point in series]
    assert counts == [*range(every, plain.accesses, every), plain.accesses]
    assert all(list(point) == list(SERIES_FIELDS) for point in series)
    for key in CUMULATIVE:
        values = [point[key] for point in series]
        assert values == sorted(values), key
    now = {"accesses": plain.accesses, **plain.figures, **plain.tlb}
    assert series[-1] == {key: now[key] for key in SERIES_FIELDS}


def test_a_point_is_the_state_right_after_its_access(recording: Path, tmp_path: Path) -> None:
    """The point at 150,000 accesses equals the exit figures of the same recording cut
    after its 150,000th access (an exit_group there)."""
    series = replay_recording(recording, measure_every=50_000).series
    _copy(recording, tmp_path / "cut.pwr", stop_after=150_000)
    cut = replay_recording(tmp_path / "cut.pwr")
    assert cut.accesses == 150_000
    assert series[2] == cut.series[-1] and series[2]["accesses"] == 150_000


def test_stack_growth_happens_in_program_order(recording: Path, plain: ReplayResult,
                                               tmp_path: Path) -> None:
    """Stores into 16 pages from 1 MiB below valgrind's client stack top, downwards, each
    page then read back: the replayed stack grows at the first access below it, so each
    page faults once (minflt +16, RssAnon +64 kB, no signal), and a cut between the
    accesses (N = 3) changes nothing."""
    header = next(e for e in read_recording(recording) if isinstance(e, dict))
    stack_end = int(header["valgrind"]["stack_end"])
    pages = [stack_end - (1 << 20) - 4096 * i for i in range(16)]
    vaddrs = np.array([a for page in pages for a in (page + 8, page + 16)], dtype=np.uint64)
    kinds = np.tile(np.array([1, 0], dtype=np.uint64), len(pages))
    _copy(recording, tmp_path / "stack.pwr", before_exit=vaddrs | (kinds << np.uint64(62)))
    grown = replay_recording(tmp_path / "stack.pwr")
    assert grown.signals == 0 and grown.untranslated == plain.untranslated
    assert grown.figures["minflt"] == plain.figures["minflt"] + 16
    assert grown.figures["RssAnon"] == plain.figures["RssAnon"] + 64
    # each store faults once: the access, then its retry; the read hits the L1 dTLB
    assert grown.tlb["tlb_accesses"] == plain.tlb["tlb_accesses"] + 3 * 16
    assert _outcome(replay_recording(tmp_path / "stack.pwr", measure_every=3)) == \
        _outcome(grown)


def test_replay_json_and_table_carry_the_series(recording: Path) -> None:
    """``--json`` puts the series under "series" (left out without --measure-every); the
    text output prints one table row per point under a header of the field names."""
    runner = CliRunner()
    out = runner.invoke(main, ["replay", str(recording), "--measure-every", "50000",
                               "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["series"] == replay_recording(recording, measure_every=50_000).series
    assert [p["accesses"] for p in doc["series"]] == [50_000, 100_000, 150_000,
                                                     doc["accesses"]]
    out = runner.invoke(main, ["replay", str(recording), "--json"])
    assert "series" not in json.loads(out.stdout)
    out = runner.invoke(main, ["replay", str(recording), "--measure-every", "50000"])
    assert out.exit_code == 0, out.output
    lines = out.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split() == list(SERIES_FIELDS))
    rows = [line.split() for line in lines[header + 1:header + 5]]
    assert [row[0] for row in rows] == ["50,000", "100,000", "150,000",
                                        f"{doc['accesses']:,}"]


# -- the machine -----------------------------------------------------------------------------

SYSTEM = """\
name: replay-machine
system:
  ram: 256MiB
  sysfs:
    /sys/kernel/mm/transparent_hugepage/enabled: always
    /proc/sys/vm/nr_hugepages: 8
steps:
  - exit: {}
"""


def test_scenario_system_boots_its_machine(recording: Path, plain: ReplayResult,
                                           tmp_path: Path) -> None:
    """RAM, THP and the hugetlb pool of the scenario's system section: MemTotal below
    256 MiB, HugePages_Total 8, and THP always maps the 8 MiB buffer with 2 MiB pages
    as ``--thp always`` does on the default machine."""
    (tmp_path / "system.yaml").write_text(SYSTEM)
    result = replay_recording(recording, system=tmp_path / "system.yaml")
    thp = replay_recording(recording, thp="always")
    assert plain.system["MemTotal"] > 256 << 10 > result.system["MemTotal"]
    assert result.system["HugePages_Total"] == result.system["HugePages_Free"] == 8
    assert result.system["Hugetlb"] == 8 * 2048
    assert result.figures == thp.figures and result.figures["AnonHugePages"] >= 2048


def test_options_override_the_scenario_system(recording: Path, plain: ReplayResult,
                                              tmp_path: Path) -> None:
    """``--thp never`` over the scenario's always; ``--hugetlb 2MiB=16`` over its 8 (the
    option writes hugepages-2048kB/nr_hugepages after the scenario's /proc/sys/vm alias
    of it: the later name wins); ``--hugetlb 1GiB=1`` finds no free 1 GiB in 256 MiB of
    RAM, so that pool stays empty, as nr_hugepages_store leaves it."""
    (tmp_path / "system.yaml").write_text(SYSTEM)
    out = CliRunner().invoke(main, ["replay", str(recording), "--scenario-system",
                                    str(tmp_path / "system.yaml"), "--thp", "never",
                                    "--hugetlb", "2MiB=16", "--hugetlb", "1GiB=1", "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["AnonHugePages"] == 0 and doc["minflt"] == plain.figures["minflt"]
    assert doc["HugePages_Total"] == 16
    assert doc["Hugetlb"] == 16 * 2048


def test_hugetlb_option_reserves_gigantic_pages(recording: Path, plain: ReplayResult) -> None:
    """``--hugetlb 1GiB=2`` on the default 4 GiB machine: Hugetlb 2 GiB, the default
    (2 MiB) pool untouched, the program's figures unchanged, 2 GiB less free memory."""
    result = replay_recording(recording, hugetlb={1 << 30: 2})
    assert result.system["Hugetlb"] == 2 << 20
    assert result.system["HugePages_Total"] == 0
    assert result.figures == plain.figures
    assert result.system["MemFree"] <= plain.system["MemFree"] - (2 << 20)


def test_five_level_paging_adds_one_read_to_walks_from_the_root(recording: Path,
                                                                plain: ReplayResult) -> None:
    """``--paging 5``: same faults, RSS, page-table bytes (P4D tables are not in
    pgtables_bytes) and TLB misses; walks that miss every page-walk cache read a fifth
    entry, so walk_refs grows."""
    out = CliRunner().invoke(main, ["replay", str(recording), "--paging", "5", "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert replay_system(paging=5).paging == 5
    assert {key: doc[key] for key in plain.figures} == plain.figures
    assert doc["stlb_misses"] == plain.tlb["stlb_misses"]
    assert doc["l1_misses"] == plain.tlb["l1_misses"]
    assert doc["walk_refs"] > plain.tlb["walk_refs"]


@pytest.mark.parametrize(("args", "says"), [
    (["--scenario-system", "{tmp}/none.yaml"], "none.yaml: cannot read the scenario"),
    (["--scenario-system", "{tmp}/bad.yaml"], ("bad.yaml, field 'system.sysfs./sys/kernel/mm/"
                                               "transparent_hugepage/enabled': expected one of")),
    (["--scenario-system", "{tmp}/ram.yaml"], "ram.yaml, field 'system.ram'"),
    (["--hugetlb", "2MiB"], "field '--hugetlb': expected SIZE=COUNT"),
    (["--hugetlb", "4KiB=3"], "field '--hugetlb': expected a huge page size of 2MiB or 1GiB"),
    (["--hugetlb", "2MiB=-1"], "field '--hugetlb': expected SIZE=COUNT"),
    (["--paging", "3"], "'3' is not one of '4', '5'"),
    (["--measure-every", "0"], "0 is not in the range"),
])
def test_bad_options_are_one_line_naming_the_file_and_field(recording: Path, tmp_path: Path,
                                                             args: list[str], says: str) -> None:
    (tmp_path / "bad.yaml").write_text("name: x\nsystem:\n  sysfs:\n    "
                                       "/sys/kernel/mm/transparent_hugepage/enabled: sometimes\n"
                                       "steps:\n  - exit: {}\n")
    (tmp_path / "ram.yaml").write_text("name: x\nsystem: {ram: 3MiB}\nsteps:\n  - exit: {}\n")
    argv = ["replay", str(recording), *(a.format(tmp=tmp_path) for a in args)]
    out = CliRunner().invoke(main, argv)
    assert out.exit_code == 2, out.output
    assert says in out.output and "Traceback" not in out.output
    assert len(out.output.strip().splitlines()) == 1


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"measure_every": 0}, "measure_every"), ({"paging": 3}, "paging"),
    ({"thp": "sometimes"}, "thp"), ({"hugetlb": {4096: 1}}, "hugetlb"),
])
def test_replay_recording_refuses_bad_arguments_before_reading(kwargs: dict[str, object],
                                                               field: str,
                                                               tmp_path: Path) -> None:
    """The Python entry point (the sweep's) checks its arguments before it opens the file."""
    with pytest.raises(ConfigError) as err:
        replay_recording(tmp_path / "never-read.pwr", **kwargs)  # type: ignore[arg-type]
    assert err.value.location is not None and err.value.location.field == field
