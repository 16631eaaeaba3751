"""The `pagewalk` command line (click): assembles the command group, nothing else.

Each command lives in its subsystem's ``command`` module and is imported only when it is
used (fast start-up); what the commands share (exit statuses, the one-red-line error
report, scenario resolution) is :mod:`pagewalk.cli_common`.
"""

from __future__ import annotations

import importlib

import click

COMMANDS = {
    "run": ("pagewalk.run.command", "run_command"),
    "examples": ("pagewalk.run.command", "examples_command"),
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


class LazyGroup(click.Group):
    """Subsystems own their commands; they are imported only when used (fast start-up)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = set(super().list_commands(ctx))
        names.update(name for name in COMMANDS if self._load(name) is not None)
        return sorted(names)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, cmd_name) or self._load(cmd_name)

    @staticmethod
    def _load(name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module_name, attribute = COMMANDS[name]
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
