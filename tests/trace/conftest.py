"""Shared fixtures of the trace tests: the reference traces of docs/trace-model.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

TRACES = Path(__file__).resolve().parents[1] / "data" / "traces"


@pytest.fixture(scope="session")
def traces() -> Path:
    """tests/data/traces: copies of ../shared/traces (mixed-200k.pwt, true.lackey)."""
    return TRACES


@pytest.fixture(scope="session")
def expected() -> dict[str, dict[str, Any]]:
    """expected.json: the reference model's report, keyed ``FILE --pages SIZE``."""
    return json.loads((TRACES / "expected.json").read_text())
