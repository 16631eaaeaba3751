"""``pagewalk sweep`` and ``pagewalk plot`` (loaded lazily by cli.OPTIONAL_COMMANDS).

``sweep SPEC.yaml`` checks the sweep file and every run, runs them on Dask (a local
cluster by default, ``--scheduler`` for a running one), and writes the table (``-o``
Parquet or CSV), prints it as JSON (``--json``) or as a readable summary, and draws the
sweep's plots beside the table (or into ``--plots DIR``). The progress bar goes to
standard error, and only when that is a terminal, so standard output holds the JSON
and nothing else. Failed runs are rows with an ``error``; the exit status is 0 once the
sweep ran, whatever its runs did.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console

from pagewalk.cli_common import (
    EXIT_INTERRUPTED,
    escape,
    fail,
    output_dir,
    output_file,
    reports_errors,
    require_extra,
)
from pagewalk.cli_output import Column, Output, choose_format
from pagewalk.cli_output import Table as OutputTable
from pagewalk.errors import Location, ScenarioError
from pagewalk.sweep.spec import (
    PLOT_KINDS,
    PLOT_SUFFIXES,
    PlotSpec,
    RecordingBase,
    ScenarioBase,
    Sweep,
)

if TYPE_CHECKING:
    import pandas as pd

    from pagewalk.sweep.runs import RunConfig

SUMMARY_ROWS = 40
SCENARIO_SUMMARY = ("minflt", "VmRSS", "VmPTE", "AnonHugePages")
TRACE_SUMMARY = ("accesses", "faults", "l1_miss_rate", "stlb_miss_rate", "walk_refs_per_walk")
RECORDING_SUMMARY = ("minflt", "RssAnon", "VmPTE", "AnonHugePages", "stlb_misses", "walk_refs")


@click.command("sweep")
@click.argument("spec_file", metavar="SPEC.yaml")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write the results table to this .parquet or .csv file.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the table as one JSON object on standard output.")
@click.option("--workers", type=int, default=None,
              help="Worker processes of the local cluster (default: one per core).")
@click.option("--scheduler", metavar="tcp://HOST:PORT", default=None,
              help="Run on this Dask scheduler instead of a local cluster.")
@click.option("--plots", "plot_dir", type=click.Path(file_okay=False), default=None,
              help="Draw the sweep's plots into this directory (default: beside --output).")
@click.option("--no-plots", is_flag=True, help="Draw no plots.")
@click.option("--dry-run", is_flag=True, help="List the runs and stop.")
@reports_errors
def sweep_command(spec_file: str, output: str | None, as_json: bool, workers: int | None,
                  scheduler: str | None, plot_dir: str | None, no_plots: bool,
                  dry_run: bool) -> None:
    """Run every combination of SPEC.yaml's parameters and collect the reports in a table.

    SPEC.yaml is a sweep file (docs/sweeps.md) or the name of an example sweep."""
    from pagewalk.sweep.execute import (
        TABLE_SUFFIXES,
        SweepInterrupted,
        dask_client,
        run_sweep,
        write_table,
    )
    from pagewalk.sweep.plot import write_plots
    from pagewalk.sweep.runs import expand_runs
    from pagewalk.sweep.spec import load_sweep, resolve_sweep
    if workers is not None and scheduler is not None:
        raise ScenarioError("--workers is for the local cluster; a --scheduler has its own")
    if output is not None and Path(output).suffix.lower() not in TABLE_SUFFIXES:
        raise ScenarioError(f"-o: a results file ends in {' or '.join(TABLE_SUFFIXES)}, "
                            f"got {output!r}")
    sweep = load_sweep(resolve_sweep(spec_file))
    runs = expand_runs(sweep)
    if dry_run:
        _print_runs(sweep, runs)
        return
    if output is not None:
        output_file(output)          # refused now rather than after every run
    if plot_dir is not None and not no_plots:
        output_dir(plot_dir)
    require_extra("sweep")           # Dask runs it, pandas and PyArrow hold the table
    start = time.perf_counter()
    try:
        with dask_client(workers, scheduler) as client:
            nr_workers = len(client.scheduler_info().get("workers", {}))
            table = run_sweep(runs, client, Console(stderr=True), sweep.name)
    except KeyboardInterrupt as err:     # the cluster is closed by now
        done = f" after {err.done} of {_count(err.total, 'run')}" \
            if isinstance(err, SweepInterrupted) else ""
        fail(f"interrupted: the sweep stopped{done}; nothing was written", EXIT_INTERRUPTED)
    seconds = time.perf_counter() - start
    if output is not None:
        write_table(table, output)
    directory = plot_dir or (str(Path(output).parent) if output is not None else None)
    plots = [] if no_plots or directory is None else _write_plots(sweep, table, directory,
                                                                  write_plots)
    if as_json:
        click.echo(json.dumps(table_json(sweep, table)))
        return
    _print_summary(sweep, table, seconds, nr_workers, output, plots)


def _write_plots(sweep: Sweep, table: pd.DataFrame, directory: str, write: Any) -> list[Path]:
    Path(directory).mkdir(parents=True, exist_ok=True)
    plots: list[Path] = write(sweep, table, directory)
    return plots


def table_json(sweep: Sweep, table: pd.DataFrame) -> dict[str, Any]:
    """The JSON of ``--json``: the sweep, its run count, failures and the rows."""
    rows = [{str(k): _json_value(v) for k, v in row.items()}
            for row in table.to_dict(orient="records")]
    runs = table["run"].nunique() if "run" in table.columns else 0
    failed = table[table["error"].notna()]["run"].nunique() if "error" in table.columns else 0
    return {"sweep": sweep.name, "runs": int(runs), "failed": int(failed), "rows": rows}


def _json_value(value: Any) -> Any:
    import pandas as pd
    if hasattr(value, "item"):
        value = value.item()
    if value is None or value is pd.NA or isinstance(value, float) and math.isnan(value):
        return None
    return value


def _print_runs(sweep: Sweep, runs: list[RunConfig]) -> None:
    columns = list(sweep.parameters)
    table = OutputTable("runs", (Column("run", True), *(Column(c) for c in columns)))
    for run in runs:
        table.add_row(run.index, *(str(run.params.get(c, "")) for c in columns))
    out = Output(choose_format(None))
    out.line(f"[bold]sweep[/] {escape(sweep.name)}: {_count(len(runs), 'run')}")
    out.table(table)


def _print_summary(sweep: Sweep, table: pd.DataFrame, seconds: float, nr_workers: int,
                   output: str | None, plots: list[Path]) -> None:
    out = Output(choose_format(None))
    failed = table[table["error"].notna()]
    nr_runs = table["run"].nunique()
    out.line(f"[bold]sweep[/] {escape(sweep.name)}: {_count(nr_runs, 'run')}, "
             f"{failed['run'].nunique()} failed, {seconds:.1f} s on "
             f"{_count(nr_workers, 'worker')}")
    figures, identity = _summary_columns(sweep)
    shown = ["run", *sweep.parameters, *identity, *figures]
    shown = [c for c in dict.fromkeys(shown) if c in table.columns]
    rows = OutputTable("summary", (*(Column(c, c in figures or c == "run") for c in shown),
                                   Column("error")))
    for _, row in table.head(SUMMARY_ROWS).iterrows():
        rows.add_row(*(_cell(row[c]) for c in shown), _cell(row.get("error")))
    out.table(rows)
    if len(table) > SUMMARY_ROWS:
        out.line(f"... {len(table) - SUMMARY_ROWS} more rows (all of them: --json, or -o "
                 "FILE.parquet or -o FILE.csv)")
    if output is not None:
        out.line(f"table: {escape(output)} ({len(table)} rows, {len(table.columns)} columns)")
    else:
        out.line("write the whole table with -o FILE.parquet or -o FILE.csv")
    for path in plots:
        out.line(f"plot: {escape(str(path))}")


def _summary_columns(sweep: Sweep) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The figures a summary shows for this kind of base, and the identity columns that
    tell its rows of one run apart."""
    if isinstance(sweep.base, ScenarioBase):
        return SCENARIO_SUMMARY, ("label", "process")
    if isinstance(sweep.base, RecordingBase):
        return RECORDING_SUMMARY, ("thp", "tlb")
    return TRACE_SUMMARY, ()


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _cell(value: Any) -> str:
    value = _json_value(value)
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


@click.command("plot")
@click.argument("results", metavar="RESULTS")
@click.option("--x", "x", required=True, help="Column on the x axis.")
@click.option("--y", "y", required=True, help="Column on the y axis (averaged per point).")
@click.option("--hue", default=None, help="One series per value of this column.")
@click.option("--where", "where", multiple=True, metavar="COLUMN=VALUE",
              help="Keep only the rows where COLUMN equals VALUE. Repeatable.")
@click.option("--kind", type=click.Choice(PLOT_KINDS), default=None,
              help="bar or line (default: bars for categories, lines for numbers).")
@click.option("--title", default=None)
@click.option("--logy", is_flag=True, help="Logarithmic y axis.")
@click.option("-o", "--output", required=True, metavar="FILE.png|svg|pdf")
@reports_errors
def plot_command(results: str, x: str, y: str, hue: str | None, where: tuple[str, ...],
                 kind: str | None, title: str | None, logy: bool, output: str) -> None:
    """Plot a sweep's RESULTS table (.parquet or .csv): y by x, per hue."""
    require_extra("sweep")           # pandas reads the table, Matplotlib draws
    from pagewalk.sweep.execute import read_table
    from pagewalk.sweep.plot import plot_table
    if Path(output).suffix.lower() not in PLOT_SUFFIXES:
        raise ScenarioError(f"-o: a plot file ends in {', '.join(PLOT_SUFFIXES)}, "
                            f"got {output!r}")
    spec = PlotSpec(file=output, x=x, y=y, hue=hue, where=_where(where), kind=kind,
                    title=title, logy=logy)
    if not Path(results).is_file():
        raise ScenarioError("no such results file", Location(results))
    output_file(output)              # its directory made, or refused before any drawing
    try:
        table = read_table(results)
        plot_table(table, spec, output)
    except ScenarioError as err:
        raise err.at(Location(results)) from None
    Console(highlight=False).print(f"plot: {output}")


def _where(pairs: tuple[str, ...]) -> dict[str, str]:
    where: dict[str, str] = {}
    for pair in pairs:
        column, sep, value = pair.partition("=")
        if not sep or not column:
            raise ScenarioError(f"--where takes COLUMN=VALUE, got {pair!r}")
        where[column] = value
    return where


__all__ = ["plot_command", "sweep_command", "table_json"]
