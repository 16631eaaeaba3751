"""The `pagewalk` command line (click): run, examples, trace and the explain commands.

Every PagewalkError becomes one red line on standard error and a non-zero exit status
(2: bad input, 1: the run failed as the kernel would fail it); never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from pagewalk.errors import ConfigError, PagewalkError, ScenarioError, TraceError

F = TypeVar("F", bound=Callable[..., Any])
EXIT_BAD_INPUT = 2
EXIT_RUN_FAILED = 1
EXIT_INTERNAL = 70


def fail(message: str, status: int) -> None:
    Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {message}", markup=True,
                                                soft_wrap=True)
    sys.exit(status)


def reports_errors(func: F) -> F:
    """Map pagewalk's error tree to one line and an exit status."""
    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (ScenarioError, TraceError, ConfigError) as err:
            fail(_escape(str(err)), EXIT_BAD_INPUT)
        except PagewalkError as err:
            fail(_escape(str(err)), EXIT_RUN_FAILED)
        except (KeyboardInterrupt, BrokenPipeError):
            sys.exit(130)
        except Exception as err:  # an internal bug: still one line, unless debugging
            if os.environ.get("PAGEWALK_DEBUG"):
                raise
            fail(_escape(f"internal error: {type(err).__name__}: {err} "
                         "(set PAGEWALK_DEBUG=1 for a traceback)"), EXIT_INTERNAL)
    return wrapper  # type: ignore[return-value]


def _escape(text: str) -> str:
    return text.replace("[", "\\[")


class LazyGroup(click.Group):
    """Subsystems own their commands; they are imported only when used (fast start-up)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = set(super().list_commands(ctx))
        names.update(name for name in OPTIONAL_COMMANDS if self._load(name) is not None)
        return sorted(names)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, cmd_name) or self._load(cmd_name)

    @staticmethod
    def _load(name: str) -> click.Command | None:
        import importlib
        if name not in OPTIONAL_COMMANDS:
            return None
        module_name, attribute = OPTIONAL_COMMANDS[name]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name and module_name.startswith(err.name):
                return None  # that subsystem is not part of this build
            raise
        command: click.Command = getattr(module, attribute)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pagewalk")
def main() -> None:
    """pagewalk: Linux memory management on x86_64, simulated number for number."""


def resolve_scenario(name_or_path: str) -> Path:
    """A scenario file, or the name of a built-in example."""
    from pagewalk.scenario.examples import example_path
    path = Path(name_or_path)
    if path.exists():
        return path
    found = example_path(name_or_path)
    if found is None:
        raise ScenarioError(f"no such file or built-in example: {name_or_path!r} "
                            "(see `pagewalk examples`)")
    return found


@main.command()
@click.argument("scenario")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.option("--show", "show", multiple=True, metavar="PATH",
              help="Print this view at every measure (/proc/meminfo, /proc/main/status, "
                   "/proc/vmstat, /proc/buddyinfo, sar, a /sys knob ...). Repeatable.")
@reports_errors
def run(scenario: str, as_json: bool, show: tuple[str, ...]) -> None:
    """Run SCENARIO (a YAML file or a built-in example name) and report each measure."""
    from pagewalk.scenario.runner import run_scenario
    from pagewalk.scenario.schema import load_scenario
    scen = load_scenario(resolve_scenario(scenario))
    report = run_scenario(scen, show)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
        return
    print_report(report)


def print_report(report: Any) -> None:
    console = Console()
    console.print(f"[bold]scenario[/] {report.scenario}")
    for m in report.measurements:
        console.rule(f"measure [bold]{m.label}[/] (step {m.step})")
        procs = list(m.processes)
        if procs:
            table = Table("field", *procs, title="processes (changes since scenario start)")
            for field in m.processes[procs[0]]:
                table.add_row(field, *(str(m.processes[p][field]) for p in procs))
            console.print(table)
        system = Table("field", "value", title="system")
        for key, value in m.system.items():
            system.add_row(key, str(value))
        console.print(system)
        for path, text in m.views.items():
            console.print(f"[bold]{path}[/]")
            console.out(text, end="" if text.endswith("\n") else "\n", highlight=False)
    console.rule("mappings")
    for proc, maps in report.mappings.items():
        for name, (start, length) in maps.items():
            console.print(f"{proc:>8} {name:<16} {start:#014x} {length:>14,} bytes")


@main.command()
@reports_errors
def examples() -> None:
    """List the built-in example scenarios (run one with `pagewalk run NAME`)."""
    from pagewalk.scenario.examples import list_examples
    table = Table("name", "description")
    for name, description in list_examples():
        table.add_row(name, description)
    Console().print(table)


OPTIONAL_COMMANDS = {
    "trace": ("pagewalk.trace.command", "trace_command"),
    "translate": ("pagewalk.explain.command", "translate_command"),
    "pagetable-cost": ("pagewalk.explain.command", "pagetable_cost_command"),
    "view": ("pagewalk.view.command", "view_command"),
    "sweep": ("pagewalk.sweep.command", "sweep_command"),
    "plot": ("pagewalk.sweep.command", "plot_command"),
    "verify": ("pagewalk.live.command", "verify_command"),
    "inspect": ("pagewalk.live.command", "inspect_command"),
    "fuzz": ("pagewalk.fuzz.command", "fuzz_command"),
}
