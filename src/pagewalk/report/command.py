"""``pagewalk run`` and ``pagewalk examples`` (loaded lazily by pagewalk.cli)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from pagewalk.cli_common import (
    OneLineUsageErrors,
    escape,
    note,
    reports_errors,
    resolve_scenario,
)
from pagewalk.cli_output import (
    Column,
    Output,
    choose_format,
    format_option,
    grouped,
    hexadecimal,
    write_csv,
    write_json,
)
from pagewalk.cli_output import Table as OutputTable

if TYPE_CHECKING:
    from pagewalk.scenario.runner import Report


@click.command("run")
@click.argument("scenario")
@click.option("--json", "as_json", is_flag=True,
              help="Print the report as one JSON object (the same as --format json).")
@format_option
@click.option("--show", "show", multiple=True, metavar="PATH",
              help="Print this view at every measure (/proc/meminfo, /proc/main/status, "
                   "/proc/vmstat, /proc/buddyinfo, sar, a /sys knob ...); a process's files "
                   "at the measures where it lives. Repeatable.")
@reports_errors
def run_command(scenario: str, as_json: bool, output_format: str | None,
                show: tuple[str, ...]) -> None:
    """Run SCENARIO (a YAML file or a built-in example name) and report each measure."""
    from pagewalk.scenario.runner import run_scenario
    from pagewalk.scenario.schema import load_scenario
    fmt = choose_format(output_format, as_json)
    scen = load_scenario(resolve_scenario(scenario))
    report = run_scenario(scen, show)
    for path in show:
        if report.measurements and not any(path in m.views for m in report.measurements):
            note(f"--show {path}: no such process at any measure, so it was never shown")
    if show and not report.measurements:
        note("--show: the scenario has no measure step, so no view was shown")
    elif show and fmt == "csv":
        note("--show: the views are not part of --format csv (--format json carries them)")
    if fmt == "json":
        write_json(report.to_json())
    elif fmt == "csv":
        write_csv(CSV_HEADER, ((label, step, process or "system", name, value)
                               for label, step, process, name, value in report.rows()))
    else:
        print_report(report, Output(fmt))


CSV_HEADER = ("measure", "step", "process", "field", "value")


def print_report(report: Report, out: Output) -> None:
    """Each measure's figures (sizes in kB, the kernel's unit), the steps that failed as
    expected where they happened, the views of --show, then the mappings."""
    from pagewalk.scenario.runner import SIZE_FIELDS
    out.line(f"[bold]scenario[/] {escape(report.scenario)}")
    outcomes = list(report.outcomes)
    for m in report.measurements:
        while outcomes and outcomes[0].step < m.step:
            out.line(escape(outcomes.pop(0).describe()))
        out.heading(f"measure [bold]{escape(m.label)}[/] (step {m.step})")
        procs = list(m.processes)
        if procs:
            fields = list(m.processes[procs[0]])
            sizes = [f for f in fields if f in SIZE_FIELDS]
            counts = [f for f in fields if f not in SIZE_FIELDS]
            out.table(_process_table("sizes", "process sizes in kB (changes since scenario "
                                     "start)", m.processes, sizes, " (kB)"))
            out.table(_process_table("counts", "process counts (faults since the process "
                                     "started; TLB and CR3 counters)", m.processes, counts, ""))
        system = OutputTable("system", (Column("field"), Column("value", True, grouped)),
                       title="system (HugePages_* now; events since scenario start)")
        for key, value in m.system.items():
            system.add_row(f"{key} (kB)" if key in SYSTEM_KB else key, value)
        out.table(system)
        for path in m.views:
            out.line(f"[bold]{escape(path)}[/]")
            out.verbatim(m.views[path])
        for path in (p for p in report_show(report) if p not in m.views):
            out.line(f"[dim]{escape(path)}: no such process at this measure[/]")
    for outcome in outcomes:
        out.line(escape(outcome.describe()))
    out.heading("mappings")
    maps = OutputTable("mappings", (Column("process"), Column("mapping"),
                              Column("start", True, hexadecimal),
                              Column("length (bytes)", True, grouped)))
    for proc, named in report.mappings.items():
        for name, (start, length) in named.items():
            maps.add_row(proc, name, start, length)
    out.table(maps)


SYSTEM_KB = ("Mlocked",)        # meminfo's kB figures among the system ones


def report_show(report: Report) -> list[str]:
    """The --show paths of the run, in order (a process's files may miss some measures)."""
    return list(dict.fromkeys(path for m in report.measurements for path in m.views))


def _process_table(name: str, title: str, processes: dict[str, dict[str, int]],
                   fields: list[str], unit: str) -> OutputTable:
    table = OutputTable(name, (Column("field"),
                         *(Column(f"{proc}{unit}", True, grouped) for proc in processes)),
                  title=title)
    for key in fields:
        table.add_row(key, *(figures[key] for figures in processes.values()))
    return table


@click.command("examples", cls=OneLineUsageErrors)
@click.argument("name", required=False)
@reports_errors
def examples_command(name: str | None) -> None:
    """List the built-in scenarios (`pagewalk run NAME`), example sweeps (`pagewalk sweep
    NAME`) and sample traces (`pagewalk trace NAME`); with NAME, print that scenario's or
    sweep's YAML (`pagewalk examples thp-madvise-64m > mine.yaml` starts a file)."""
    from pagewalk.errors import ScenarioError
    from pagewalk.scenario.examples import (
        example_path,
        example_sweep_path,
        list_example_sweeps,
        list_examples,
        list_sample_traces,
    )
    if name is not None:
        path = example_path(name) or example_sweep_path(name)
        if path is None:
            raise ScenarioError(f"no built-in scenario or example sweep named {name!r} "
                                "(see `pagewalk examples`)")
        click.echo(path.read_text(encoding="utf-8"), nl=False)
        return
    out = Output(choose_format(None))
    for index, (title, rows) in enumerate((
            ("scenarios: pagewalk run NAME", list_examples()),
            ("sweeps: pagewalk sweep NAME", list_example_sweeps()),
            ("sample traces: pagewalk trace NAME", list_sample_traces()))):
        if index:
            out.line()
        table = OutputTable(title.partition(":")[0], (Column("name"), Column("description")),
                            title=title)
        for row in rows:
            table.add_row(*row)
        out.table(table)
