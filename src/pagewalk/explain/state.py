"""The state a scenario leaves at one of its measures, for the explain and view commands.

The scenario runs step by step (:meth:`ScenarioRun.run_step`) until the ``measure``
step with the label asked for, or to its end; without a scenario, a fresh machine's
``main`` process (the start image of ``kernel/exec_image.py``) is the state.
"""

from __future__ import annotations

from pagewalk.cli_common import resolve_scenario
from pagewalk.errors import ScenarioError
from pagewalk.kernel.task import Task
from pagewalk.scenario import schema as s
from pagewalk.scenario.runner import ScenarioRun

FRESH_MACHINE = "fresh machine"


def fresh_run() -> ScenarioRun:
    """A fresh machine with its one process, ``main``, as every scenario starts."""
    empty = s.Scenario(FRESH_MACHINE, "", s.SystemConfig(), (), FRESH_MACHINE)
    return ScenarioRun(empty)


def measure_labels(scenario: s.Scenario) -> list[str]:
    return [step.label for step in scenario.steps if isinstance(step, s.MeasureStep)]


def run_to_label(scenario: s.Scenario, label: str | None) -> ScenarioRun:
    """Run ``scenario`` up to and including its measure ``label`` (every step when None).

    A label the scenario does not have is a ScenarioError naming the labels it has; a
    step that fails raises the kernel's error with the step's location, as ``run`` does."""
    if label is not None and label not in measure_labels(scenario):
        known = ", ".join(measure_labels(scenario)) or "none"
        raise ScenarioError(f"no measure labelled {label!r} (labels: {known})")
    run = ScenarioRun(scenario)
    for step in scenario.steps:
        run.run_step(step)
        if isinstance(step, s.MeasureStep) and step.label == label:
            break
    return run


def load_state(scenario_file: str | None, label: str | None) -> ScenarioRun:
    """The run for ``--scenario FILE --at LABEL``; a fresh machine without a scenario."""
    if scenario_file is None:
        if label is not None:
            raise ScenarioError("--at needs --scenario")
        return fresh_run()
    return run_to_label(s.load_scenario(resolve_scenario(scenario_file)), label)


def find_process(run: ScenarioRun, name: str) -> Task:
    """A live process by name (or pid); ScenarioError naming the live ones otherwise."""
    tasks = run.kernel.tasks
    task = tasks.get(name)
    if task is None and name.isdigit():
        task = next((t for t in tasks.values() if t.pid == int(name)), None)
    if task is None:
        live = ", ".join(f"{t.comm} (pid {t.pid})" for t in tasks.values()) or "none"
        raise ScenarioError(f"no process {name!r} at this point of the scenario "
                            f"(running: {live})")
    return task
