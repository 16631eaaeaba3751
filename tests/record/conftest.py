"""The record tests' C program, compiled once for every module that records it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.record.test_record_replay import PROGRAM


@pytest.fixture(scope="session")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/record/test_record_replay.py's PROGRAM, built with gcc -O1."""
    work = tmp_path_factory.mktemp("record")
    (work / "touch.c").write_text(PROGRAM)
    subprocess.run(["gcc", "-O1", "-o", str(work / "touch"), str(work / "touch.c")],
                   check=True)
    return work / "touch"
