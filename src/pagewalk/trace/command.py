"""``pagewalk trace``: replay a memory trace through a TLB model and report (issue 6).

::

    pagewalk trace TRACE [--pages 4KiB|2MiB|1GiB] [--trace-format lackey|pwt|npy]
                         [--format table|plain|csv|json] [--json]
                         [--engine fast|reference] [--tlb NAME|FILE.yaml]
                         [--scenario FILE [--process NAME] [--at LABEL] | --page-map FILE.json]
    pagewalk trace --record [OPTIONS] -- PROGRAM [ARGS]...

``--scenario`` replaces the one page size of ``--pages`` with a mix: each page is the size
the simulated kernel mapped it with in the scenario's final state (or at a measure),
so a scenario's THP coverage shows in the TLB misses; ``--page-map`` takes the mix of a
real process from ``pagewalk inspect PID --replay`` (trace/page_map.py).

The report and the JSON object are those of docs/trace-model.md. ``--record`` runs
PROGRAM under ``valgrind --tool=lackey --trace-mem=yes`` and replays its trace as it
streams from a pipe (valgrind's own ``--PID--`` notes are skipped). A long trace shows a
Rich progress bar on standard error when that is a terminal, never with ``--json``,
which prints one JSON object on standard output and nothing else there (a recorded
program's standard output goes to standard error then). Bad input is one red line on
standard error and exit status 2, never a traceback; a trace with no access, or one that
no page of ``--scenario``/``--page-map`` covers, gets a note there (it changes nothing).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from pagewalk.cli_common import OneLineUsageErrors, note, reports_errors
from pagewalk.cli_output import (
    FORMAT_HELP,
    Column,
    Output,
    choose_format,
    grouped,
    write_json,
    write_tables_csv,
)
from pagewalk.cli_output import FORMATS as OUTPUT_FORMATS
from pagewalk.cli_output import Table as OutputTable
from pagewalk.errors import ConfigError, TraceError
from pagewalk.trace.formats import FORMATS, VA_MASK, Chunk, iter_chunks, iter_lackey, trace_size
from pagewalk.trace.replay import ENGINES, PageSizeMap, TraceModel, TraceReplayer, TraceStats

PROGRESS_MIN_BYTES = 32 << 20        # smaller traces replay in well under a second
RECORD_CHUNK_BYTES = 4 << 20


@click.command("trace", cls=OneLineUsageErrors,
               context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="TRACE | -- PROGRAM [ARGS]...")
@click.option("--pages", default=None, metavar="4KiB|2MiB|1GiB",
              help="The size of every page (default 4KiB).")
@click.option("--scenario", "scenario_file", default=None, metavar="FILE|NAME",
              help="Page sizes from a scenario: each page the size the simulated kernel "
                   "mapped it with (addresses it did not map: 4 KiB).")
@click.option("--process", default="main", show_default=True,
              help="With --scenario: whose pages.")
@click.option("--at", "label", default=None, metavar="LABEL",
              help="With --scenario: the state at this measure (default: the end).")
@click.option("--page-map", "page_map_file", default=None, metavar="FILE.json",
              help="Page sizes from `pagewalk inspect PID --replay` (a real process).")
@click.option("--trace-format", "fmt", type=click.Choice(FORMATS), default=None,
              help="Trace format (default: from the extension; .pwt, .npy, else lackey text).")
@click.option("--format", "output_format", type=click.Choice((*OUTPUT_FORMATS, *FORMATS)),
              default=None, help=f"{FORMAT_HELP} (lackey, pwt or npy here name the trace "
                                 "format, as --trace-format does.)")
@click.option("--json", "as_json", is_flag=True,
              help="Print the report as one JSON object on standard output, nothing else "
                   "(the same as --format json).")
@click.option("--engine", type=click.Choice(ENGINES), default="fast", show_default=True,
              help="fast (compiled) or reference (readable Python, slow); same numbers.")
@click.option("--tlb", "tlb_model", default="reference", show_default=True,
              metavar="NAME|FILE.yaml",
              help="TLB model: a preset (reference, skylake, haswell, zen) or a model file.")
@click.option("--record", is_flag=True,
              help="Run PROGRAM under valgrind lackey and replay its trace as it streams.")
@reports_errors
def trace_command(args: tuple[str, ...], pages: str | None, scenario_file: str | None,
                  process: str, label: str | None, page_map_file: str | None,
                  fmt: str | None, output_format: str | None, as_json: bool, engine: str,
                  tlb_model: str, record: bool) -> None:
    """Replay a memory trace (valgrind lackey text, .pwt or .npy) through the TLBs and
    page-walk caches of a model (the reference model of docs/trace-model.md by default),
    with demand paging, and report hits, walks, walk references and faults."""
    from pagewalk.trace.presets import load_model
    if output_format in FORMATS:          # --format lackey|pwt|npy: the trace's format
        if fmt not in (None, output_format):
            raise ConfigError(f"--format {output_format} and --trace-format {fmt} disagree")
        fmt, output_format = output_format, None
    shown = choose_format(output_format, as_json)
    as_json = shown in ("json", "csv")    # standard output holds the data and nothing else
    model = load_model(tlb_model)
    page_map = _page_map(pages, scenario_file, process, label, page_map_file)
    coverage = MapCoverage(page_map)
    pages = pages or "4KiB"
    if record:
        if not args:
            raise TraceError("--record needs a program: pagewalk trace --record -- PROGRAM "
                             "[ARGS]...")
        stats = _record(list(args), model, pages, page_map, engine, as_json, coverage)
    else:
        if len(args) != 1:
            raise TraceError("give one TRACE file (or --record -- PROGRAM [ARGS]...)"
                             if not args else f"one TRACE file expected, got {len(args)} "
                             "arguments (use --record -- PROGRAM ARGS to run a program)")
        stats = _replay_file(args[0], model, pages, page_map, fmt, engine, as_json, coverage)
    source = args[0] if not record else " ".join(args)
    if stats.accesses == 0:
        note(f"{source}: the trace holds no access; nothing was replayed")
    elif not coverage.covered:
        chosen = f"--scenario {scenario_file} (process {process})" if scenario_file \
            else f"--page-map {page_map_file}"
        note(f"no address of the trace lies in a page of {chosen}: every access used "
             "4 KiB pages, as without it")
    if shown == "json":
        write_json(stats.to_json(), indent=1)
    elif shown == "csv":
        write_tables_csv(report_tables(stats, source))
    else:
        out = Output(shown)
        for table in report_tables(stats, source):
            out.table(table)


def _page_map(pages: str | None, scenario_file: str | None, process: str,
              label: str | None, page_map_file: str | None) -> PageSizeMap | None:
    """The page-size map of --scenario or --page-map (None: every page of --pages)."""
    chosen = [name for name, value in (("--pages", pages), ("--scenario", scenario_file),
                                       ("--page-map", page_map_file)) if value is not None]
    if len(chosen) > 1:
        raise ConfigError(f"{' and '.join(chosen)} both choose the page sizes: give one")
    if scenario_file is None and (label is not None or process != "main"):
        raise ConfigError("--process and --at need --scenario")
    if scenario_file is not None:
        from pagewalk.trace.page_map import scenario_page_map
        return scenario_page_map(scenario_file, process, label)
    if page_map_file is not None:
        from pagewalk.trace.page_map import file_page_map
        return file_page_map(page_map_file)
    return None


class MapCoverage:
    """Whether any replayed address lies in a range of the page-size map (``covered``
    stays True without a map): a map that covers nothing changes nothing."""

    def __init__(self, page_map: PageSizeMap | None) -> None:
        self.page_map = page_map
        self.covered = page_map is None

    def see(self, chunk: Chunk) -> None:
        if self.covered or self.page_map is None or not chunk.words.size:
            return
        import numpy as np
        vaddrs = (chunk.words & np.uint64(VA_MASK)).astype(np.int64)
        index = np.searchsorted(self.page_map.starts, vaddrs, side="right") - 1
        inside = (index >= 0) & (vaddrs < self.page_map.ends[np.maximum(index, 0)])
        self.covered = bool(inside.any())


def _replay_file(path: str, model: TraceModel, pages: str, page_map: PageSizeMap | None,
                 fmt: str | None, engine: str, as_json: bool,
                 coverage: MapCoverage) -> TraceStats:
    from pagewalk.scenario.examples import resolve_trace
    replayer = TraceReplayer(model, pages, page_map=page_map, engine=engine, name=path)
    path = str(resolve_trace(path))          # a file, else a sample trace's name
    total = trace_size(path)
    with _progress(not as_json and total >= PROGRESS_MIN_BYTES, total) as advance:
        for chunk in iter_chunks(path, fmt, model.va_bits):
            replayer.feed(chunk)
            coverage.see(chunk)
            advance(chunk.bytes_done)
    return replayer.stats()


def _record(program: list[str], model: TraceModel, pages: str, page_map: PageSizeMap | None,
            engine: str, as_json: bool, coverage: MapCoverage) -> TraceStats:
    """Run ``program`` under valgrind lackey, replaying its trace from a pipe."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise TraceError("--record needs valgrind, which is not installed (not on PATH)")
    if shutil.which(program[0]) is None:
        raise TraceError(f"no such program: {program[0]!r}")
    replayer = TraceReplayer(model, pages, page_map=page_map, engine=engine,
                             name=f"valgrind lackey {program[0]}")
    read_fd, write_fd = os.pipe()
    command = [valgrind, "--tool=lackey", "--trace-mem=yes", f"--log-fd={write_fd}", *program]
    process = subprocess.Popen(command, pass_fds=(write_fd,),
                               stdout=_stderr_fd() if as_json else None)
    os.close(write_fd)
    try:
        with os.fdopen(read_fd, "rb") as stream, _progress(not as_json, 0) as advance:
            for chunk in iter_lackey(stream, replayer.name, model.va_bits, RECORD_CHUNK_BYTES,
                                     skip_valgrind_notes=True):
                replayer.feed(chunk)
                coverage.see(chunk)
                advance(chunk.bytes_done)
    except BaseException:
        process.kill()
        process.wait()
        raise
    status = process.wait()
    if status != 0:
        click.echo(f"warning: {' '.join(program)} exited with status {status}", err=True)
    return replayer.stats()


def _stderr_fd() -> int:
    """Where a recorded program's standard output goes with --json (standard output holds
    the JSON only): our standard error, or nowhere if that is not a file."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):   # io.UnsupportedOperation is both
        return subprocess.DEVNULL


@contextmanager
def _progress(wanted: bool, total: int) -> Iterator[Callable[[int], None]]:
    """A Rich progress bar on standard error if ``wanted`` and it is a terminal; yields
    ``advance(bytes_done)``. ``total`` 0: an open-ended count (recording)."""
    if not (wanted and sys.stderr.isatty()):
        yield lambda done: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    columns = ([TextColumn("replaying"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                TimeRemainingColumn()] if total else
               [SpinnerColumn(), TextColumn("replaying lackey output"), DownloadColumn(),
                TimeElapsedColumn()])
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("trace", total=total or None)
        yield lambda done: progress.update(task, completed=done)


def _figure(value: Any) -> str:
    return f"{value:.6f}" if isinstance(value, float) else f"{value:,}"


def report_tables(stats: TraceStats, source: str) -> list[OutputTable]:
    """The report's figures (field, value) and the probes of each TLB array."""
    report = stats.to_json()
    figures = OutputTable("report", (Column("field"), Column("value", True, _figure)),
                          title=f"{stats.model} model, {stats.pages} pages, {source}")
    for key, value in report.items():
        if key in ("tlb", "model", "pages"):
            continue
        if key == "pwc_hits_pml5e" and not value:
            continue
        figures.add_row(key, value)
    arrays = OutputTable("tlb", (Column("TLB array"), Column("hits", True, grouped),
                                 Column("misses", True, grouped)),
                         title="per array (probes)")
    for name, (hits, misses) in stats.tlb.items():
        arrays.add_row(name, hits, misses)
    return [figures, arrays]
