"""Huge pages that no scenario process holds: what the live hugetlb figures start from.

``HugePages_*`` are absolute figures of /proc/meminfo, so a scenario's report on the live
kernel is exact only if, before it starts, no huge page is reserved. While the live runner
holds its lock no scenario process exists, so a reservation seen then belongs to another
process or was leaked by the kernel (Linux 6.18.44 here kept two reserved surplus pages
after a fuzz scenario that moved part of a private hugetlb mapping with mremap, with no
process left mapping them; only a reboot gives them back). Surplus pages held by such a
reservation outlive every pool write, so the pools cannot be restored below them either.

A scenario that uses hugetlb (a pool knob or a MAP_HUGETLB mapping) cannot be measured
then: the reserved pages change which of its reservations fail. Any other scenario leaves
the pools alone, so the pages held outside it are a constant that is taken out of its
report, as other processes' events are taken out of ``pgfault``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pagewalk.live import procfs
from pagewalk.live.errors import LiveError
from pagewalk.scenario import schema as s

FIELDS = ("HugePages_Total", "HugePages_Free", "HugePages_Rsvd", "HugePages_Surp")
POOL_KNOB_NAMES = ("nr_hugepages", "nr_overcommit_hugepages")


@dataclass(frozen=True, slots=True)
class HeldOutside:
    """The default hugetlb size's figures when no scenario process exists."""

    figures: dict[str, int]

    @property
    def reserved(self) -> int:
        return self.figures.get("HugePages_Rsvd", 0)

    @property
    def clean(self) -> bool:
        return self.reserved == 0

    def describe(self) -> str:
        return (f"{self.reserved} huge pages are reserved by no scenario process "
                f"(/proc/meminfo before the run: " +
                ", ".join(f"{k} {v}" for k, v in self.figures.items()) +
                "): another process holds them, or the kernel leaked the reservation "
                "(then only a reboot frees them)")


def held_outside() -> HeldOutside:
    meminfo = procfs.read_meminfo()
    return HeldOutside({key: meminfo.get(key, 0) for key in FIELDS})


def uses_hugetlb(scenario: s.Scenario) -> bool:
    """True if the scenario sets a pool or maps hugetlb memory."""
    knobs = list(scenario.system.sysfs)
    for step in scenario.steps:
        if isinstance(step, s.SetStep):
            knobs.extend(step.knobs)
        if isinstance(step, s.MmapStep) and "hugetlb" in step.flags:
            return True
    return any(path.rsplit("/", 1)[-1] in POOL_KNOB_NAMES for path in knobs)


def check(scenario: s.Scenario, held: HeldOutside) -> None:
    """Refuse a hugetlb scenario while pages are held outside it (LiveError)."""
    if not held.clean and uses_hugetlb(scenario):
        raise LiveError(f"hugetlb figures cannot be measured on this kernel now: "
                        f"{held.describe()}")


def take_out(report: dict[str, Any], held: HeldOutside) -> None:
    """Subtract the pages held outside from every measurement of a non-hugetlb run."""
    if held.clean:
        return
    for measurement in report.get("measurements", []):
        system = measurement.get("system", {})
        for key, value in held.figures.items():
            if key in system:
                system[key] -= value
