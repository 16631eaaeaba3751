"""``pagewalk run`` and ``pagewalk examples`` (loaded lazily by pagewalk.cli)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click
from rich.table import Table

from pagewalk.cli_common import console, reports_errors, resolve_scenario

if TYPE_CHECKING:
    from pagewalk.scenario.runner import Report


@click.command("run")
@click.argument("scenario")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.option("--show", "show", multiple=True, metavar="PATH",
              help="Print this view at every measure (/proc/meminfo, /proc/main/status, "
                   "/proc/vmstat, /proc/buddyinfo, sar, a /sys knob ...). Repeatable.")
@reports_errors
def run_command(scenario: str, as_json: bool, show: tuple[str, ...]) -> None:
    """Run SCENARIO (a YAML file or a built-in example name) and report each measure."""
    from pagewalk.scenario.runner import run_scenario
    from pagewalk.scenario.schema import load_scenario
    scen = load_scenario(resolve_scenario(scenario))
    report = run_scenario(scen, show)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
        return
    print_report(report)


def print_report(report: Report) -> None:
    out = console()
    out.print(f"[bold]scenario[/] {report.scenario}")
    for m in report.measurements:
        out.rule(f"measure [bold]{m.label}[/] (step {m.step})")
        procs = list(m.processes)
        if procs:
            table = Table("field", *procs, title="processes (changes since scenario start)")
            for field in m.processes[procs[0]]:
                table.add_row(field, *(str(m.processes[p][field]) for p in procs))
            out.print(table)
        system = Table("field", "value", title="system")
        for key, value in m.system.items():
            system.add_row(key, str(value))
        out.print(system)
        for path, text in m.views.items():
            out.print(f"[bold]{path}[/]")
            out.out(text, end="" if text.endswith("\n") else "\n", highlight=False)
    out.rule("mappings")
    for proc, maps in report.mappings.items():
        for name, (start, length) in maps.items():
            out.print(f"{proc:>8} {name:<16} {start:#014x} {length:>14,} bytes")


@click.command("examples")
@reports_errors
def examples_command() -> None:
    """List the built-in example scenarios (run one with `pagewalk run NAME`)."""
    from pagewalk.scenario.examples import list_examples
    table = Table("name", "description")
    for name, description in list_examples():
        table.add_row(name, description)
    console().print(table)
