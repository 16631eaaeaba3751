"""The `pagewalk` command line (click): assembles the command group and its shell
completion, nothing else.

Each command lives in its subsystem's ``command`` module and is imported only when it is
used (fast start-up); what the commands share (exit statuses, the one-red-line error
report, scenario resolution) is :mod:`pagewalk.cli_common`.

Shell completion is Click's (README "Shell completion": ``_PAGEWALK_COMPLETE=bash_source
pagewalk``); beyond commands and options it completes, by parameter name in any command
(:data:`COMPLETERS`), the built-in scenario, sweep and trace names, the ``--show`` views
and the TLB presets, each with file names as well.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import click
from click.shell_completion import CompletionItem

Completer = Callable[[click.Context, click.Parameter, str], list[CompletionItem]]

COMMANDS = {
    "run": ("pagewalk.report.command", "run_command"),
    "examples": ("pagewalk.report.command", "examples_command"),
    "trace": ("pagewalk.trace.command", "trace_command"),
    "translate": ("pagewalk.explain.command", "translate_command"),
    "pagetable-cost": ("pagewalk.explain.command", "pagetable_cost_command"),
    "view": ("pagewalk.view.command", "view_command"),
    "sweep": ("pagewalk.sweep.command", "sweep_command"),
    "plot": ("pagewalk.sweep.command", "plot_command"),
    "verify": ("pagewalk.live.command", "verify_command"),
    "inspect": ("pagewalk.live.command", "inspect_command"),
    "fuzz": ("pagewalk.fuzz.command", "fuzz_command"),
    "record": ("pagewalk.record.command", "record_command"),
    "replay": ("pagewalk.record.command", "replay_command"),
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
        except KeyboardInterrupt:
            # Ctrl-C while the command's modules load: the same stop as during its run
            # (click would say "Aborted!" and exit 1)
            from pagewalk.cli_common import EXIT_INTERRUPTED, fail
            fail("interrupted", EXIT_INTERRUPTED)
        command: click.Command = getattr(module, attribute)
        for param in command.params:
            if param.name in COMPLETERS and param._custom_shell_complete is None:
                param._custom_shell_complete = COMPLETERS[param.name]
        return command


# -- shell completion ----------------------------------------------------------------------

def _names(names: list[str], incomplete: str, files: bool = True) -> list[CompletionItem]:
    """The ``names`` starting with ``incomplete``; after a "file" item, which lets the shell
    complete file names too (bash: when no name matches; Click's bash script clears what
    came before a "file" item, so it comes first)."""
    items = [CompletionItem(incomplete, type="file")] if files else []
    return items + [CompletionItem(name) for name in names if name.startswith(incomplete)]


def complete_scenario(ctx: click.Context, param: click.Parameter,
                      incomplete: str) -> list[CompletionItem]:
    """A built-in scenario's name, or a file."""
    from pagewalk.scenario.examples import list_examples
    return _names([name for name, _ in list_examples()], incomplete)


def complete_sweep(ctx: click.Context, param: click.Parameter,
                   incomplete: str) -> list[CompletionItem]:
    """An example sweep's name, or a file."""
    from pagewalk.scenario.examples import list_example_sweeps
    return _names([name for name, _ in list_example_sweeps()], incomplete)


def complete_example(ctx: click.Context, param: click.Parameter,
                     incomplete: str) -> list[CompletionItem]:
    """A built-in scenario's or example sweep's name (`pagewalk examples NAME`)."""
    from pagewalk.scenario.examples import list_example_sweeps, list_examples
    names = [name for name, _ in list_examples() + list_example_sweeps()]
    return _names(names, incomplete, files=False)


def complete_trace(ctx: click.Context, param: click.Parameter,
                   incomplete: str) -> list[CompletionItem]:
    """A sample trace's name, or a file."""
    from pagewalk.scenario.examples import list_sample_traces
    return _names([name for name, _ in list_sample_traces()], incomplete)


def complete_tlb(ctx: click.Context, param: click.Parameter,
                 incomplete: str) -> list[CompletionItem]:
    """A TLB preset's name, or a model file."""
    from pagewalk.trace.presets import preset_names
    return _names(preset_names(), incomplete)


def complete_view(ctx: click.Context, param: click.Parameter,
                  incomplete: str) -> list[CompletionItem]:
    """What ``--show`` prints: the fixed views, the /proc files of the scenario's processes
    (``main`` and every child a fork step names, if the scenario reads), the hugetlb pool
    files of the 2 MiB and 1 GiB pools, and every knob."""
    from pagewalk.kernel.knobs import KNOBS
    from pagewalk.proc.render import FIXED_VIEWS, HUGEPAGES, HUGETLB_FILES, PROCESS_FILES
    views = [view for view in FIXED_VIEWS if " " not in view]
    views += [f"/proc/{process}/{name}" for process in _processes(ctx)
              for name in PROCESS_FILES]
    views += [f"{HUGEPAGES}/hugepages-{size_kb}kB/{name}" for size_kb in (2048, 1048576)
              for name in HUGETLB_FILES]
    views += sorted(KNOBS)
    return _names(views, incomplete, files=False)


def _processes(ctx: click.Context) -> list[str]:
    """``main`` and the children the fork steps of the command's scenario name."""
    from pagewalk.errors import PagewalkError
    from pagewalk.scenario.schema import ForkStep, load_scenario
    processes = ["main"]
    # the option being completed ends the command line, so Click has not assigned the
    # positional arguments before it: they are its leftovers
    scenario = ctx.params.get("scenario") or next(iter(ctx.args), None)
    if not isinstance(scenario, str):
        return processes
    try:
        from pagewalk.cli_common import resolve_scenario
        steps = load_scenario(resolve_scenario(scenario)).steps
    except PagewalkError:
        return processes
    processes += [step.name for step in steps if isinstance(step, ForkStep)]
    return list(dict.fromkeys(processes))


#: parameter name (in any command) -> its completion
COMPLETERS: dict[str, Completer] = {
    "scenario": complete_scenario,         # run, view, verify SCENARIO
    "scenario_file": complete_scenario,    # --scenario of trace, translate, pagetable-cost
    "spec_file": complete_sweep,           # sweep SPEC.yaml
    "name": complete_example,              # examples NAME
    "args": complete_trace,                # trace TRACE
    "tlb_model": complete_tlb,             # trace --tlb
    "show": complete_view,                 # run --show
}


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(None, "-V", "--version", package_name="pagewalk")
def main() -> None:
    """pagewalk: Linux memory management on x86_64, simulated number for number."""
