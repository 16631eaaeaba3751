"""The machine a replay boots (record/replay.py): a scenario's ``system`` section
(scenario/schema.py SystemConfig: RAM, paging levels, PTI, PCID, PKU, sysfs knobs, swap,
a memory cgroup limit) with the replay's options written over it: THP's
transparent_hugepage/enabled (mm/huge_memory.c enabled_store), the hugetlb pools'
hugepages-<N>kB/nr_hugepages (mm/hugetlb.c nr_hugepages_store) and the paging levels
(5: LA57). The knobs themselves are checked where the machine boots (kernel/knobs.py).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from pagewalk.errors import ConfigError, Location
from pagewalk.kernel.knobs import HUGEPAGES
from pagewalk.scenario.schema import (
    HUGETLB_PAGE_SIZES,
    PAGING_LEVELS,
    SystemConfig,
    load_scenario,
)
from pagewalk.units import format_size, parse_size

THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"
THP_MODES = ("always", "madvise", "never")


def replay_system(system: SystemConfig | str | os.PathLike[str] | None = None,
                  thp: str | None = None, hugetlb: Mapping[int, int] | None = None,
                  paging: int | None = None,
                  sysfs: Mapping[str, str] | None = None) -> SystemConfig:
    """The machine a replay boots: ``system`` (a SystemConfig, or the path of a scenario
    file whose ``system`` section is taken; None: the defaults), then ``sysfs`` knobs,
    ``thp`` (transparent_hugepage/enabled), ``hugetlb`` pools ({page size in bytes:
    nr_hugepages}) and ``paging`` levels written over it, in that order. Bad values:
    ScenarioError naming the file and field, or ConfigError naming the option."""
    if system is None:
        system = SystemConfig()
    elif not isinstance(system, SystemConfig):
        system = load_scenario(Path(system)).system
    knobs = dict(system.sysfs)
    overrides = dict(sysfs or {})
    if thp is not None:
        if thp not in THP_MODES:
            raise ConfigError(f"expected one of {', '.join(THP_MODES)}, got {thp!r}",
                              Location(field="thp"))
        overrides[THP_ENABLED] = thp
    for size, nr_pages in (hugetlb or {}).items():
        overrides[hugetlb_knob(size, nr_pages, "hugetlb")] = str(nr_pages)
    for path, value in overrides.items():
        knobs.pop(path, None)              # moved last: of two names for one file it wins
        knobs[path] = value
    if paging is not None and paging not in PAGING_LEVELS:
        raise ConfigError(f"expected 4 or 5 (page-table levels), got {paging!r}",
                          Location(field="paging"))
    return replace(system, sysfs=knobs, paging=paging or system.paging)


def hugetlb_knob(size: int, nr_pages: int, option: str) -> str:
    """The nr_hugepages knob of the pool of ``size`` bytes (mm/hugetlb.c hstate_attrs);
    ConfigError naming ``option`` if there is no such pool or the count is negative."""
    if size not in HUGETLB_PAGE_SIZES:
        raise ConfigError(f"expected a huge page size of 2MiB or 1GiB, got "
                          f"{format_size(size)}", Location(field=option))
    if isinstance(nr_pages, bool) or not isinstance(nr_pages, int) or nr_pages < 0:
        raise ConfigError(f"expected a count of huge pages >= 0, got {nr_pages!r}",
                          Location(field=option))
    return f"{HUGEPAGES}/hugepages-{size >> 10}kB/nr_hugepages"


def parse_hugetlb(text: str) -> tuple[int, int]:
    """``SIZE=COUNT`` of ``--hugetlb`` (``2MiB=64``) -> (page size in bytes, nr_hugepages)."""
    size_text, sep, count_text = text.partition("=")
    where = Location(field="--hugetlb")
    if not sep or not count_text.strip().isdigit():
        raise ConfigError(f"expected SIZE=COUNT with a count >= 0 (e.g. 2MiB=64), got "
                          f"{text!r}", where)
    try:
        size = parse_size(size_text)
    except ValueError as err:
        raise ConfigError(f"{text!r}: {err}", where) from None
    nr_pages = int(count_text)
    hugetlb_knob(size, nr_pages, "--hugetlb")
    return size, nr_pages
