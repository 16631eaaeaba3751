"""`pagewalk fuzz`: without root it says why in one line and exits 2; with
--simulator-only it needs no kernel, prints one JSON object with --json, and exits 0
when the simulator ran every scenario; seeds are chosen by --seed/--count or --seeds."""

from __future__ import annotations

import json
import os

import click
import pytest
from click.testing import CliRunner

from pagewalk.cli import main
from pagewalk.fuzz.command import DEFAULT_COUNT, parse_seeds


def fuzz(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["fuzz", *args])
    return result.exit_code, result.stdout, result.stderr


def test_without_root_it_says_why_and_exits_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    code, out, err = fuzz("--seed", "3")
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "root" in lines[0] and "--simulator-only" in lines[0]
    assert "Traceback" not in err


def test_simulator_only_needs_no_root_and_prints_one_json_object(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    code, out, err = fuzz("--simulator-only", "--seeds", "3..5", "--class", "basic", "--json")
    doc = json.loads(out)
    assert code == 0, err
    assert doc["side"] == "simulator" and doc["seeds"] == 3 and doc["mismatches"] == 0
    assert [r["seed"] for r in doc["results"]] == [3, 4, 5]
    assert all(r["class"] == "basic" for r in doc["results"])
    assert "seed 3 (basic): ok" in err


def test_seed_choices() -> None:
    assert parse_seeds(None, None, None) == list(range(DEFAULT_COUNT))
    assert parse_seeds(7, None, None) == [7]
    assert parse_seeds(7, None, 3) == [7, 8, 9]
    assert parse_seeds(None, None, 2) == [0, 1]
    assert parse_seeds(None, "10..12", None) == [10, 11, 12]
    for bad in ("12..10", "1-3", "a..b"):
        with pytest.raises(click.BadParameter):
            parse_seeds(None, bad, None)
    with pytest.raises(click.UsageError):
        parse_seeds(1, "1..2", None)


def test_bad_options_exit_2() -> None:
    assert fuzz("--seeds", "5..1", "--simulator-only")[0] == 2
    assert fuzz("--class", "swap", "--simulator-only")[0] == 2
    assert fuzz("--count", "0", "--simulator-only")[0] == 2
