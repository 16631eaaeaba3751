"""Machine: the one root object. It owns the simulated hardware (physical memory, the MMU
with its TLBs and page-walk caches) and the kernel booted on it (STYLE rule 6)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pagewalk.hw.mmu import Mmu
from pagewalk.hw.paging import PagingMode
from pagewalk.hw.physmem import PhysicalMemory
from pagewalk.kernel.kernel import Kernel
from pagewalk.kernel.knobs import KnobValues
from pagewalk.units import GiB


@dataclass(frozen=True, slots=True)
class MachineConfig:
    """What the scenario's ``system`` section chooses."""

    ram: int = 4 * GiB
    paging: int = 4
    pti: bool = False
    pcid: bool = True
    pku: bool = True                 # protection keys (the reference machine's CPU has PKU)
    sysfs: dict[str, str] = field(default_factory=dict)


def _make_tlb(paging: PagingMode):  # type: ignore[no-untyped-def]
    """The reference TLB hierarchy and page-walk caches of trace-model.md, if available."""
    try:
        from pagewalk.hw.pwc import PageWalkCaches
        from pagewalk.hw.tlb import TlbHierarchy
    except ImportError:
        return None, None
    return TlbHierarchy(), PageWalkCaches(paging_levels=paging.levels)


class Machine:
    """An x86_64 machine with ``config.ram`` of memory running a booted kernel."""

    def __init__(self, config: MachineConfig | None = None) -> None:
        self.config = config or MachineConfig()
        self.paging = PagingMode(self.config.paging)
        self.physmem = PhysicalMemory(self.config.ram)
        tlb, pwc = _make_tlb(self.paging)
        self.mmu = Mmu(self.physmem, self.paging, pcid=self.config.pcid, tlb=tlb, pwc=pwc,
                       pku=self.config.pku)
        knobs = KnobValues()
        for path, value in self.config.sysfs.items():
            knobs.set(path, value)
        self.kernel = Kernel(self.physmem, self.mmu, self.config.paging, self.config.pti, knobs)
