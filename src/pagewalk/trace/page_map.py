"""Page-size maps for trace replay from a simulated process or a real one (issue 6, 9).

``pagewalk trace --scenario FILE`` replays a trace with each page the size the simulated
kernel mapped it with at the end of the scenario (or at a measure): the process's page
tables are walked from its PGD (mm/pagewalk.py; a present PTE is a 4 KiB page, a PMD
or PUD leaf a 2 MiB or 1 GiB one, as smaps counts them), and runs of pages of one size
become the ranges of a :class:`PageSizeMap`. ``--page-map FILE.json`` takes the
same ranges from ``pagewalk inspect PID --replay`` (a real process's pagemap).
Addresses that no present page maps replay with 4 KiB pages, the size a fault outside
a THP-eligible range gets.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from pagewalk.errors import ConfigError, Location, ScenarioError
from pagewalk.mm.pagewalk import walk_user_tables
from pagewalk.trace.replay import PageSizeMap

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel
    from pagewalk.kernel.task import Task


def task_page_ranges(k: Kernel, task: Task) -> list[tuple[int, int, int]]:
    """``(start, end, page_shift)`` runs of ``task``'s present pages, sorted, merged
    where pages of one size are contiguous."""
    walk = walk_user_tables(k, task.mm)
    ranges = [run for shift, starts in walk.leaf_starts.items() for run in _runs(starts, shift)]
    ranges.sort()
    return ranges


def _runs(starts: npt.NDArray[np.int64], shift: int) -> list[tuple[int, int, int]]:
    """Contiguous runs of sorted page starts of one size, as (start, end, shift)."""
    if not starts.size:
        return []
    breaks = np.flatnonzero(np.diff(starts) != (1 << shift)) + 1
    firsts = np.concatenate(([0], breaks))
    lasts = np.concatenate((breaks - 1, [starts.size - 1]))
    return [(int(starts[a]), int(starts[b]) + (1 << shift), shift)
            for a, b in zip(firsts, lasts, strict=True)]


def scenario_page_map(scenario_file: str, process: str = "main",
                      label: str | None = None) -> PageSizeMap:
    """The page-size map of ``process`` at the end of a scenario (or at its measure
    ``label``); ScenarioError if the scenario fails or has no such process."""
    from pagewalk.explain.state import find_process, load_state
    run = load_state(scenario_file, label)
    ranges = task_page_ranges(run.kernel, find_process(run, process))
    if not ranges:
        where = f"at {label!r}" if label else "at the end of the scenario"
        raise ScenarioError(f"process {process!r} has no present page {where}: "
                            "nothing to take page sizes from", Location(file=scenario_file))
    return PageSizeMap.from_ranges(ranges)


def file_page_map(path: str) -> PageSizeMap:
    """The page-size map of a JSON file written by ``pagewalk inspect PID --replay``."""
    from pagewalk.live.inspect import load_page_size_map
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read page-size map: {err.strerror}",
                          Location(file=path)) from None
    except UnicodeDecodeError:
        raise ConfigError("not a page-size map: binary data, not JSON text",
                          Location(file=path)) from None
    try:
        return PageSizeMap.from_ranges(load_page_size_map(text))
    except ValueError as err:
        raise ConfigError(f"bad page-size map: {err}", Location(file=path)) from None
