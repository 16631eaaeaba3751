"""``pagewalk trace``: replay a memory trace through a TLB model and report (issue 6).

::

    pagewalk trace TRACE [--pages 4KiB|2MiB|1GiB] [--format lackey|pwt|npy] [--json]
                         [--engine fast|reference] [--tlb NAME|FILE.yaml]
                         [--scenario FILE [--process NAME] [--at LABEL] | --page-map FILE.json]
    pagewalk trace --record [OPTIONS] -- PROGRAM [ARGS]...

``--scenario`` replaces the one page size of ``--pages`` with a mix: each page is the size
the simulated kernel mapped it with in the scenario's final state (or at a measure),
so a scenario's THP coverage shows in the TLB misses; ``--page-map`` takes the mix of a
real process from ``pagewalk inspect PID --replay`` (trace/page_map.py).

The report and the JSON object are those of spec/trace-model.md. ``--record`` runs
PROGRAM under ``valgrind --tool=lackey --trace-mem=yes`` and replays its trace as it
streams from a pipe (valgrind's own ``--PID--`` notes are skipped). A long trace shows a
Rich progress bar on standard error when that is a terminal, never with ``--json``,
which prints one JSON object on standard output and nothing else there (a recorded
program's standard output goes to standard error then). Bad input is one red line on
standard error and exit status 2, never a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from pagewalk.cli_common import OneLineUsageErrors, reports_errors
from pagewalk.errors import ConfigError, TraceError
from pagewalk.trace.formats import FORMATS, iter_chunks, iter_lackey, trace_size
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
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
              help="Trace format (default: from the extension; .pwt, .npy, else lackey text).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the report as one JSON object on standard output, nothing else.")
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
                  fmt: str | None, as_json: bool, engine: str, tlb_model: str,
                  record: bool) -> None:
    """Replay a memory trace (valgrind lackey text, .pwt or .npy) through the TLBs and
    page-walk caches of a model (the reference model of spec/trace-model.md by default),
    with demand paging, and report hits, walks, walk references and faults."""
    from pagewalk.trace.presets import load_model
    model = load_model(tlb_model)
    page_map = _page_map(pages, scenario_file, process, label, page_map_file)
    pages = pages or "4KiB"
    if record:
        if not args:
            raise TraceError("--record needs a program: pagewalk trace --record -- PROGRAM "
                             "[ARGS]...")
        stats = _record(list(args), model, pages, page_map, engine, as_json)
    else:
        if len(args) != 1:
            raise TraceError("give one TRACE file (or --record -- PROGRAM [ARGS]...)"
                             if not args else f"one TRACE file expected, got {len(args)} "
                             "arguments (use --record -- PROGRAM ARGS to run a program)")
        stats = _replay_file(args[0], model, pages, page_map, fmt, engine, as_json)
    if as_json:
        click.echo(json.dumps(stats.to_json(), indent=1))
    else:
        _print_report(stats, args[0] if not record else " ".join(args))


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


def _replay_file(path: str, model: TraceModel, pages: str, page_map: PageSizeMap | None,
                 fmt: str | None, engine: str, as_json: bool) -> TraceStats:
    replayer = TraceReplayer(model, pages, page_map=page_map, engine=engine, name=path)
    if not Path(path).is_file():
        raise TraceError(f"no such trace file: {path}")
    total = trace_size(path)
    with _progress(not as_json and total >= PROGRESS_MIN_BYTES, total) as advance:
        for chunk in iter_chunks(path, fmt, model.va_bits):
            replayer.feed(chunk)
            advance(chunk.bytes_done)
    return replayer.stats()


def _record(program: list[str], model: TraceModel, pages: str, page_map: PageSizeMap | None,
            engine: str, as_json: bool) -> TraceStats:
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


def _print_report(stats: TraceStats, source: str) -> None:
    from rich.console import Console
    from rich.table import Table
    report = stats.to_json()
    table = Table("field", "value", title=f"{stats.model} model, {stats.pages} pages",
                  caption=source)
    for key, value in report.items():
        if key in ("tlb", "model", "pages"):
            continue
        if key == "pwc_hits_pml5e" and not value:
            continue
        table.add_row(key, f"{value:.6f}" if isinstance(value, float) else f"{value:,}")
    arrays = Table("TLB array", "hits", "misses", title="per array (probes)")
    for name, (hits, misses) in stats.tlb.items():
        arrays.add_row(name, f"{hits:,}", f"{misses:,}")
    console = Console()
    console.print(table)
    console.print(arrays)
