"""The code stays within its rules: ruff finds nothing in src/ and tests/, mypy --strict
finds nothing in src/pagewalk, and no module imports a layer above its own (the
import-linter contract in pyproject.toml: hw -> mm/kernel -> proc -> scenario -> tools ->
cli, function-local and TYPE_CHECKING imports included).

Each check runs its tool as CI does; a tool that is not installed skips its test with
the reason (``pip install '.[test]'`` installs all three)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run_tool(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install '.[test]' installs it)")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, check=False)


def test_ruff_finds_nothing_in_src_and_tests() -> None:
    """`ruff check src tests` with the rules of pyproject.toml's [tool.ruff]."""
    result = _run_tool("ruff", "check", "--output-format", "concise", "src", "tests")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_finds_nothing_in_src() -> None:
    """`mypy --strict src/pagewalk`: every function typed, no Any leaking out."""
    result = _run_tool("mypy", "--strict", "src/pagewalk")
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_module_imports_a_layer_above_its_own() -> None:
    """The import-linter layers contract of pyproject.toml is kept."""
    if importlib.util.find_spec("importlinter") is None:
        pytest.skip("import-linter is not installed (pip install '.[test]' installs it)")
    script = "from importlinter.cli import lint_imports_command; lint_imports_command()"
    result = subprocess.run([sys.executable, "-c", script, "--no-cache"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
