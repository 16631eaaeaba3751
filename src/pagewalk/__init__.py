"""pagewalk: a faithful and fast simulator of Linux memory management on x86_64.

The public surface: a Machine (simulated hardware + booted kernel), scenarios (load,
run, report) and the error tree. The names are imported on first use (PEP 562), so a
command that needs only part of pagewalk (``pagewalk trace``) does not load the rest.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pagewalk.errors import (
    ConfigError,
    ExpectationFailed,
    KernelError,
    NotImplementedStep,
    PagewalkError,
    ScenarioError,
    SignalError,
    SyscallError,
    TraceError,
)

if TYPE_CHECKING:
    from pagewalk.machine import Machine, MachineConfig
    from pagewalk.scenario.runner import Report, run_scenario
    from pagewalk.scenario.schema import Scenario, load_scenario, parse_scenario

__version__ = "0.1.0"

_LAZY = {
    "Machine": "pagewalk.machine", "MachineConfig": "pagewalk.machine",
    "Report": "pagewalk.scenario.runner", "run_scenario": "pagewalk.scenario.runner",
    "Scenario": "pagewalk.scenario.schema", "load_scenario": "pagewalk.scenario.schema",
    "parse_scenario": "pagewalk.scenario.schema",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pagewalk' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "ConfigError",
    "ExpectationFailed",
    "KernelError",
    "Machine",
    "MachineConfig",
    "NotImplementedStep",
    "PagewalkError",
    "Report",
    "Scenario",
    "ScenarioError",
    "SignalError",
    "SyscallError",
    "TraceError",
    "__version__",
    "load_scenario",
    "parse_scenario",
    "run_scenario",
]
