"""Shared conditions of the live-kernel tests: what they need, and the reason to skip."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pagewalk.live.hugetlb_state import held_outside
from pagewalk.live.knobs import canonical_knobs, read_knob

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="sets /sys knobs and hugetlb pools: needs root")
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None,
                               reason="the probe is built with gcc, which is not installed")
SCENARIOS = Path(__file__).parents[1] / "data" / "scenarios"
_HELD = held_outside()
# A huge page reserved by no process (another user, or a reservation the kernel leaked:
# live/hugetlb_state.py) makes hugetlb figures unmeasurable here until a reboot.
needs_clean_hugetlb = pytest.mark.skipif(not _HELD.clean,
                                         reason=f"hugetlb on this kernel: {_HELD.describe()}")


def knob_values() -> dict[str, str]:
    """Every knob the live runner may touch, as the kernel holds it now."""
    return {path: read_knob(path) for path in canonical_knobs()}


def probe_pids(exe: Path) -> list[int]:
    """Processes running the probe binary ``exe``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "exe") == str(exe):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids
