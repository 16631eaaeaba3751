"""The examples shipped inside the package (src/pagewalk/examples): scenarios (``*.yaml``),
sweeps (``sweeps/*.yaml``) and sample traces (``traces/``), each found by its name from
any directory.

A scenario, sweep or trace argument is a file when one of that name exists, else the
name of an example. The sample traces are what the README's trace examples and the
example sweeps replay; the repository's trace tests read the same files
(tests/data/traces links to them).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml

from pagewalk.errors import TraceError

TRACE_DESCRIPTIONS = {
    "mixed-200k.pwt": "200,000 synthetic accesses (.pwt): 70% in a hot 64 MiB set, 25% "
                      "random over 1 GiB, 5% instruction fetches in 8 MiB of code",
    "true.lackey": "valgrind lackey output of /bin/true (a real program, 167k lines)",
}


def _directory(*parts: str) -> Path:
    return Path(str(resources.files("pagewalk").joinpath("examples", *parts)))


def example_path(name: str) -> Path | None:
    """The built-in scenario called ``name``, or None."""
    path = _directory() / f"{name}.yaml"
    return path if name and "/" not in name and path.is_file() else None


def list_examples() -> list[tuple[str, str]]:
    """(name, description) of every built-in scenario, by name."""
    return [(path.stem, description(path)) for path in sorted(_directory().glob("*.yaml"))]


def example_sweep_path(name: str) -> Path | None:
    """The example sweep called ``name``, or None."""
    path = _directory("sweeps") / f"{name}.yaml"
    return path if name and "/" not in name and path.is_file() else None


def list_example_sweeps() -> list[tuple[str, str]]:
    """(name, description) of every example sweep, by name."""
    return [(path.stem, description(path))
            for path in sorted(_directory("sweeps").glob("*.yaml"))]


def description(path: Path) -> str:
    """The ``description`` of a scenario or sweep file, on one line ("" if it has none)."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, OSError, UnicodeDecodeError):
        return ""
    return " ".join(str(doc.get("description", "")).split()) if isinstance(doc, dict) else ""


def sample_trace(name: str) -> Path | None:
    """The shipped sample trace called ``name`` (its file name), or None."""
    path = _directory("traces") / name
    return path if name and "/" not in name and path.is_file() else None


def list_sample_traces() -> list[tuple[str, str]]:
    """(name, description) of every shipped sample trace, by name."""
    return [(path.name, TRACE_DESCRIPTIONS.get(path.name, ""))
            for path in sorted(_directory("traces").iterdir()) if path.is_file()]


def resolve_trace(name_or_path: str) -> Path:
    """A trace file, or the name of a shipped sample trace; TraceError when neither."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    found = sample_trace(name_or_path)
    if found is None:
        names = ", ".join(name for name, _ in list_sample_traces())
        raise TraceError(f"no such trace file: {name_or_path} (nor a sample trace: {names})")
    return found


__all__ = ["description", "example_path", "example_sweep_path", "list_example_sweeps",
           "list_examples", "list_sample_traces", "resolve_trace", "sample_trace"]
