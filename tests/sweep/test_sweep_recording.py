"""A recording as a sweep's base (issue 16): THP modes x TLB presets over one recorded
program is one `pagewalk sweep`, each run replaying the recording through the simulated
kernel, one row per run with the figures at the program's exit, and its plots.

The recording here is written with recfile.py's writer (no valgrind needed): a program
whose text page and top stack page are present at exec, that maps 8 MiB of anonymous
memory, writes it page by page, then reads its first 5 MiB (1280 pages) four times::

    0x400000  text (1 page)        ...  [8 MiB buffer: 4 x 2 MiB]  ...  [stack]
              written: 2048 pages once;  read: pages 0..1279, 4 passes

Expected, from the kernel's rules and the TLB geometries:

* THP never (and madvise: no MADV_HUGEPAGE here): 2048 faults, AnonHugePages 0. THP
  always: the 8 MiB mapping is 2 MiB aligned (thp_get_unmapped_area), 4 PMD faults,
  AnonHugePages 8192 kB.
* VmPTE is the same in both: a huge PMD keeps the PTE table it was given
  (pgtable_trans_huge_deposit and mm_inc_nr_ptes in __do_huge_pmd_anonymous_page).
* STLB misses (walks), 4 KiB pages: 2 per written page (the walk that faults and the walk
  of the restarted store), then 1280 for the first read pass (the pages left by the
  write pass are evicted, LRU, before their turn), then none with a 1536-entry 12-way
  STLB (10 pages a set) and 1280 a pass with Haswell's 1024-entry 8-way one. THP always:
  2 per huge page. The two accesses outside the buffer may add one each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from pagewalk.cli import main
from pagewalk.errors import ScenarioError
from pagewalk.record.recfile import RecordingWriter
from pagewalk.record.replay import replay_recording
from pagewalk.record.valgrind_log import Syscall
from pagewalk.sweep.execute import COUNTED_LISTS, execute_run
from pagewalk.sweep.plot import FIGURE_DPI, FIGURE_INCHES, RECORDING_FIGURES
from pagewalk.sweep.runs import RecordingConfig, expand_runs
from pagewalk.sweep.spec import example_sweeps, load_sweep, parse_sweep
from pagewalk.trace.formats import pack_records

PAGE = 4096
PROGRAM = "/synthetic/touch-8m"
TEXT = (0x400000, 0x401000)
STACK = (0x7FFFFFFDE000, 0x7FFFFFFFF000)
RECORDED_BUFFER = 0x4A00000          # where valgrind's mmap put it; the replay maps it back
BUFFER_PAGES = (8 << 20) // PAGE
REREAD_PAGES = (5 << 20) // PAGE
REREAD_PASSES = 4
LOAD, STORE, IFETCH = 0, 1, 2
THP_MODES = ("never", "madvise", "always")
TLBS = ("reference", "haswell")
KERNEL_FIGURES = ("minflt", "RssAnon", "VmPTE", "AnonHugePages")
PIXELS = (int(FIGURE_INCHES[0] * FIGURE_DPI), int(FIGURE_INCHES[1] * FIGURE_DPI))

SWEEP = f"""name: touch
base: {{recording: touch-8m.pwr}}
grid:
  thp: [{', '.join(THP_MODES)}]
  tlb: [{', '.join(TLBS)}]
"""


def write_recording(path: Path) -> None:
    """The program of the module docstring, as `pagewalk record` would have written it:
    valgrind's layout is the native one except for the buffer's address."""
    header = {
        "format": "pagewalk-recording", "version": 1, "argv": [PROGRAM],
        "native": {"maps": [[*TEXT, "r-xp", 0, PROGRAM], [*STACK, "rw-p", 0, "[stack]"]],
                   "present": [[TEXT[0], True], [STACK[1] - PAGE, False]],
                   "start_brk": TEXT[1] + PAGE},
        "valgrind": {"maps": [[*TEXT, "r-xp", 0, PROGRAM]], "stack_end": STACK[1]},
        "files": {PROGRAM: TEXT[1] - TEXT[0]},
    }
    pages = np.arange(BUFFER_PAGES, dtype=np.uint64) * np.uint64(PAGE) \
        + np.uint64(RECORDED_BUFFER)
    with path.open("wb") as stream:
        writer = RecordingWriter(stream)
        writer.header(header)
        writer.accesses_run(pack_records([TEXT[0], STACK[1] - 8], [IFETCH, STORE]))
        writer.syscall(Syscall(9, "mmap", (0, BUFFER_PAGES * PAGE, 3, 0x22, 0xFFFFFFFF, 0),
                               RECORDED_BUFFER))
        writer.accesses_run(pack_records(pages, np.full(BUFFER_PAGES, STORE)))
        for _ in range(REREAD_PASSES):
            writer.accesses_run(pack_records(pages[:REREAD_PAGES],
                                             np.full(REREAD_PAGES, LOAD)))
        writer.syscall(Syscall(231, "exit_group", (0,), 0))
        writer.end(0)


def replay_row(path: Path, thp: str, tlb: str) -> dict[str, Any]:
    """``pagewalk replay --json`` of one run done alone, lists counted as a row holds them."""
    report = replay_recording(path, thp=thp, tlb_model=tlb).to_json()
    return {key: len(value) if key in COUNTED_LISTS else value  # type: ignore[arg-type]
            for key, value in report.items()}


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("recording-sweep")
    write_recording(directory / "touch-8m.pwr")
    (directory / "sweep.yaml").write_text(SWEEP)
    return directory


@pytest.fixture(scope="module")
def alone(directory: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """Every run replayed in this process (which also compiles the replay's loop into
    Numba's cache before the workers need it)."""
    return {(thp, tlb): replay_row(directory / "touch-8m.pwr", thp, tlb)
            for thp in THP_MODES for tlb in TLBS}


@pytest.fixture(scope="module")
def swept(client: Any, directory: Path, alone: dict[tuple[str, str], dict[str, Any]]
          ) -> tuple[str, pd.DataFrame]:
    """`pagewalk sweep sweep.yaml -o out/table.parquet` on the test cluster: its summary
    and its table."""
    result = CliRunner().invoke(main, ["sweep", str(directory / "sweep.yaml"), "--scheduler",
                                       client.scheduler.address,
                                       "-o", str(directory / "out" / "table.parquet")])
    assert result.exit_code == 0, result.stderr
    return result.stdout, pd.read_parquet(directory / "out" / "table.parquet")


def rows_by_run(table: pd.DataFrame) -> dict[tuple[str, str], dict[str, Any]]:
    return {(row["thp"], row["tlb"]): row for row in table.to_dict(orient="records")}


def test_one_row_per_run_in_grid_order_without_errors(swept: tuple[str, pd.DataFrame]) -> None:
    _, table = swept
    assert list(table["run"]) == list(range(len(THP_MODES) * len(TLBS)))
    assert list(table["thp"]) == [thp for thp in THP_MODES for _ in TLBS]
    assert list(table["tlb"]) == list(TLBS) * len(THP_MODES)
    assert set(table["recording"]) == {"touch-8m.pwr"}
    assert table["error"].isna().all()
    assert list(table.columns[:4]) == ["run", "recording", "thp", "tlb"]
    assert list(table.columns[-2:]) == ["error", "seconds"]


def test_every_row_is_the_replay_of_that_run_done_alone(
        swept: tuple[str, pd.DataFrame], alone: dict[tuple[str, str], dict[str, Any]]) -> None:
    _, table = swept
    for key, row in rows_by_run(table).items():
        for name, value in alone[key].items():
            assert row[name] == value, (key, name)


def test_thp_always_maps_the_buffer_with_four_huge_pages_never_and_madvise_none(
        swept: tuple[str, pd.DataFrame]) -> None:
    rows = rows_by_run(swept[1])
    for tlb in TLBS:
        for thp in ("never", "madvise"):
            assert rows[thp, tlb]["AnonHugePages"] == 0
            assert rows[thp, tlb]["minflt"] == BUFFER_PAGES
        assert rows["always", tlb]["AnonHugePages"] == 4 * 2048
        assert rows["always", tlb]["minflt"] == 4


def test_vmpte_and_rssanon_are_the_same_with_thp_always(swept: tuple[str, pd.DataFrame]) -> None:
    """Each huge PMD keeps a deposited PTE table, counted in VmPTE: THP saves faults and
    TLB entries here, not page-table memory."""
    rows = rows_by_run(swept[1])
    for tlb in TLBS:
        assert rows["always", tlb]["VmPTE"] == rows["never", tlb]["VmPTE"] >= 4 * 4
        assert rows["always", tlb]["RssAnon"] == rows["never", tlb]["RssAnon"] >= 8 << 10


def test_stlb_misses_follow_the_page_size_and_the_stlb_size(
        swept: tuple[str, pd.DataFrame]) -> None:
    rows = rows_by_run(swept[1])
    writes = 2 * BUFFER_PAGES
    expected = {("never", "reference"): writes + REREAD_PAGES,
                ("never", "haswell"): writes + REREAD_PASSES * REREAD_PAGES,
                ("always", "reference"): 2 * 4, ("always", "haswell"): 2 * 4}
    for key, walks in expected.items():
        assert walks <= rows[key]["stlb_misses"] <= walks + 2, key
        assert rows[key]["walk_refs"] >= rows[key]["stlb_misses"]
    assert rows["always", "reference"]["walk_refs"] < rows["never", "reference"]["walk_refs"]


def test_the_tlb_preset_changes_no_kernel_figure(swept: tuple[str, pd.DataFrame]) -> None:
    rows = rows_by_run(swept[1])
    for thp in THP_MODES:
        for name in KERNEL_FIGURES:
            assert len({rows[thp, tlb][name] for tlb in TLBS}) == 1, (thp, name)


def test_the_sweep_draws_the_standard_plots_beside_the_table(
        swept: tuple[str, pd.DataFrame], directory: Path) -> None:
    for figure in RECORDING_FIGURES:
        path = directory / "out" / f"touch-{figure}.png"
        assert path.stat().st_size > 0
        with Image.open(path) as image:
            assert image.size == PIXELS


def test_the_summary_shows_the_figures_at_exit(swept: tuple[str, pd.DataFrame]) -> None:
    summary, _ = swept
    assert "touch: 6 runs, 0 failed" in summary
    header = next(line for line in summary.splitlines() if line.startswith("run"))
    assert header.split() == ["run", "thp", "tlb", "minflt", "RssAnon", "VmPTE",
                              "AnonHugePages", "stlb_misses", "walk_refs", "error"]


def test_a_recording_that_breaks_off_is_an_error_row(directory: Path, tmp_path: Path) -> None:
    """The header is read when the runs are expanded; a recording cut short fails its run
    alone, with the one line `pagewalk replay` would print."""
    whole = (directory / "touch-8m.pwr").read_bytes()
    (tmp_path / "touch-8m.pwr").write_bytes(whole[:len(whole) // 2])
    (run,) = expand_runs(parse_sweep("name: cut\nbase: {recording: touch-8m.pwr}\n"
                                     "grid: {thp: [always]}\n", str(tmp_path / "s.yaml")))
    (row,) = execute_run(run)
    assert row["run"] == 0 and row["thp"] == "always"
    assert "touch-8m.pwr" in row["error"] and "truncated" in row["error"]


def test_the_kernels_default_thp_mode_is_filled_in(directory: Path) -> None:
    """No thp in the base or the grid: the replay boots with the knob's default, madvise,
    and the column says so."""
    runs = expand_runs(parse_sweep("name: d\nbase: {recording: touch-8m.pwr}\n"
                                   "grid: {tlb: [reference, zen]}\n",
                                   str(directory / "d.yaml")))
    assert [(run.thp, run.tlb) for run in runs if isinstance(run, RecordingConfig)] == \
        [("madvise", "reference"), ("madvise", "zen")]


@pytest.mark.parametrize(("text", "field", "message"), [
    ("base: {recording: touch-8m.pwr}\ngrid: {pages: [2MiB]}\n", "grid.pages",
     "unknown recording parameter 'pages'; allowed: recording, thp, tlb"),
    ("base: {recording: touch-8m.pwr, engine: fast}\ngrid: {thp: [always]}\n",
     "base.engine", "engine"),
    ("base: {recording: missing.pwr}\ngrid: {thp: [always]}\n", "base.recording",
     "no such recording"),
    ("base: {recording: sweep.yaml}\ngrid: {thp: [always]}\n", "base.recording",
     "not a pagewalk recording"),
    ("base: {recording: null}\ngrid: {thp: [always]}\n", "base.recording", "no recording"),
    ("base: {recording: touch-8m.pwr}\ngrid: {thp: [always, sometimes]}\n", "grid.thp",
     "run 1 (thp='sometimes'): expected one of always, madvise, never"),
    ("base: {recording: touch-8m.pwr}\ngrid: {tlb: [pentium]}\n", "grid.tlb", "pentium"),
])
def test_a_bad_recording_sweep_names_the_file_and_the_field(
        directory: Path, text: str, field: str, message: str) -> None:
    path = directory / "bad.yaml"
    with pytest.raises(ScenarioError) as caught:
        expand_runs(parse_sweep("name: bad\n" + text, str(path)))
    assert caught.value.location is not None
    assert caught.value.location.file == str(path)
    assert caught.value.location.field == field
    assert message in str(caught.value)


def test_each_run_may_name_its_own_recording(directory: Path) -> None:
    runs = expand_runs(parse_sweep("name: l\nbase: {recording: null, thp: always}\n"
                                   "list:\n  - {recording: touch-8m.pwr}\n"
                                   "  - {recording: touch-8m.pwr, thp: never}\n",
                                   str(directory / "l.yaml")))
    assert [(run.path, run.thp) for run in runs if isinstance(run, RecordingConfig)] == \
        [(str(directory / "touch-8m.pwr"), "always"), (str(directory / "touch-8m.pwr"), "never")]


def test_the_shipped_example_shows_thp_never_vs_always_on_a_recorded_program() -> None:
    """recording-thp-tlb over touch-8m.pwr, a C program recorded under valgrind (docs/
    record.md): AnonHugePages, faults and STLB misses differ with THP, VmPTE does not."""
    (path,) = [p for p in example_sweeps() if p.stem == "recording-thp-tlb"]
    runs = {(run.thp, run.tlb): run for run in expand_runs(load_sweep(path))
            if isinstance(run, RecordingConfig)}
    assert len(runs) == 12
    (never,) = execute_run(runs["never", "reference"])
    (always,) = execute_run(runs["always", "reference"])
    assert never["error"] is None and always["error"] is None
    assert never["AnonHugePages"] == 0 and always["AnonHugePages"] == 8192
    assert never["minflt"] - always["minflt"] == BUFFER_PAGES - 4
    assert never["VmPTE"] == always["VmPTE"]
    assert always["stlb_misses"] * 10 < never["stlb_misses"]
