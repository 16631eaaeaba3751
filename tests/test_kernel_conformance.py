"""Every scenario with a report from the live kernel (Linux 6.18) must match it field by
field, with the oracle's own comparison rules (tests/oracle/compare.py, a copy of
shared/oracle/compare.py: exact figures, pgfault within 2, mapping alignment classes,
version 3 pressure reports within the kernel's spread)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pagewalk.scenario.runner import run_scenario
from pagewalk.scenario.schema import load_scenario
from tests.oracle.compare import Cmp, compare

DATA = Path(__file__).parent / "data"
CASES = sorted(p for d in ("scenarios", "measured") for p in (DATA / d).glob("*.yaml")
               if p.with_suffix(".kernel.json").exists())


@pytest.mark.parametrize("path", CASES, ids=[f"{p.parent.name}/{p.stem}" for p in CASES])
def test_scenario_matches_the_kernel(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expected = json.loads(path.with_suffix(".kernel.json").read_text())
    actual = json.loads(json.dumps(run_scenario(load_scenario(path)).to_json()))
    # version 3: a report with "pressure": true compares within the spec's spreads
    checker = Cmp(expected["scenario"], pressure=expected.get("pressure") is True)
    compare(expected, actual, checker)
    printed = capsys.readouterr().out
    assert checker.failed == 0, printed
    assert checker.passed > 0


def test_there_are_kernel_reports_to_check() -> None:
    assert len(CASES) >= 30
