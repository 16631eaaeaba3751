"""pagewalk: a faithful and fast simulator of Linux memory management on x86_64.

The public surface: a Machine (simulated hardware + booted kernel), scenarios (load,
run, report) and the error tree.
"""

from pagewalk.errors import (
    ConfigError, ExpectationFailed, KernelError, NotImplementedStep, PagewalkError,
    ScenarioError, SignalError, SyscallError, TraceError,
)
from pagewalk.machine import Machine, MachineConfig
from pagewalk.scenario.runner import Report, run_scenario
from pagewalk.scenario.schema import Scenario, load_scenario, parse_scenario

__version__ = "0.1.0"

__all__ = [
    "ConfigError", "ExpectationFailed", "KernelError", "Machine", "MachineConfig",
    "NotImplementedStep", "PagewalkError", "Report", "Scenario", "ScenarioError",
    "SignalError", "SyscallError", "TraceError", "load_scenario", "parse_scenario",
    "run_scenario", "__version__",
]
