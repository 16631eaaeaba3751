"""pagewalk: a faithful and fast simulator of Linux memory management on x86_64.

The public surface: the functions of docs/api.md (``run``, ``replay``, ``translate``), a
Machine (simulated hardware + booted kernel), scenarios (load, run, report), trace
replay and the error tree. The names are imported on first use (PEP 562), so
``import pagewalk`` stays fast and a command that needs only part of pagewalk
(``pagewalk trace``) does not load the rest.
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
    from pagewalk.api import replay, run, translate
    from pagewalk.machine import Machine, MachineConfig
    from pagewalk.scenario.runner import Report, run_scenario
    from pagewalk.scenario.schema import Scenario, load_scenario, parse_scenario
    from pagewalk.trace.replay import TraceStats, replay_trace

__version__ = "0.1.0"

_LAZY = {
    "Machine": "pagewalk.machine", "MachineConfig": "pagewalk.machine",
    "Report": "pagewalk.scenario.runner", "run_scenario": "pagewalk.scenario.runner",
    "Scenario": "pagewalk.scenario.schema", "load_scenario": "pagewalk.scenario.schema",
    "parse_scenario": "pagewalk.scenario.schema",
    "run": "pagewalk.api", "replay": "pagewalk.api", "translate": "pagewalk.api",
    "TraceStats": "pagewalk.trace.replay", "replay_trace": "pagewalk.trace.replay",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pagewalk' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


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
    "TraceStats",
    "__version__",
    "load_scenario",
    "parse_scenario",
    "replay",
    "replay_trace",
    "run",
    "run_scenario",
    "translate",
]
