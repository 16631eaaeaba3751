"""The MMU of the one simulated CPU: CR3 with PCID, translate(), INVLPG and flushes.

Follows Intel SDM vol. 3A §4.5 (translation), §4.10 (TLBs, paging-structure caches,
PCIDs, INVLPG, CR3 loads) and arch/x86/mm/tlb.c for how Linux drives them. A page
fault invalidates the TLB entries of the faulting address (§4.10.4.1). Counters go
to ``counters``, an array the kernel points at the running task's (context switch).
Protection keys (§4.6.2): with CR4.PKE, PKRU (the running task's, switched with it) is
checked against the key a TLB entry caches with its leaf, on hits as on walks.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from pagewalk.hw import pgtable_types as pt
from pagewalk.hw.paging import PagingMode
from pagewalk.hw.physmem import PhysicalMemory
from pagewalk.hw.walker import ACCESS_WRITE, WalkResult, pkey_denies, walk

X86_CR3_PCID_MASK = 0xFFF
X86_CR3_PCID_NOFLUSH = 1 << 63
X86_CR3_ADDR_MASK = ((1 << 52) - 1) & ~0xFFF


class MmuStat(enum.IntEnum):
    """Per-context translation counters (extra report fields)."""

    ACCESSES = 0
    L1_HITS = 1
    STLB_HITS = 2
    WALKS = 3
    WALK_REFS = 4
    PAGE_FAULTS = 5     # #PF raised by the hardware (a kernel fault may count differently)
    CR3_LOADS = 6
    TLB_FLUSHES = 7
    NR = 8


def new_mmu_counters() -> npt.NDArray[np.int64]:
    return np.zeros(int(MmuStat.NR), dtype=np.int64)


class PageFault(Exception):
    """#PF: the access at ``vaddr`` faulted with x86 error code ``code``."""

    def __init__(self, vaddr: int, code: int) -> None:
        super().__init__(f"#PF at {vaddr:#x} error code {code:#x}")
        self.vaddr = vaddr
        self.code = code


class GeneralProtection(Exception):
    """#GP: a non-canonical address (no page fault, no walk)."""

    def __init__(self, vaddr: int) -> None:
        super().__init__(f"#GP: non-canonical address {vaddr:#x}")
        self.vaddr = vaddr


@dataclass(frozen=True, slots=True)
class Translation:
    paddr: int
    page_shift: int
    leaf: int
    source: str      # "l1", "stlb" or "walk"
    walk: WalkResult | None = None


class Mmu:
    """CR3, the TLB hierarchy and the page-walk caches of one CPU."""

    def __init__(self, physmem: PhysicalMemory, mode: PagingMode, pcid: bool = True,
                 tlb: Any = None, pwc: Any = None, pku: bool = False) -> None:
        self.physmem = physmem
        self.mode = mode
        self.pcid_enabled = pcid
        self.tlb = tlb
        self.pwc = pwc
        self.cr3 = 0
        self.counters = new_mmu_counters()
        self.pku = pku          # CPUID.(EAX=7,ECX=0):ECX.PKU: the CPU has protection keys
        self.cr4_pke = False    # CR4.PKE: the kernel turns it on at boot (setup_pku)
        self.pkru = 0           # PKRU: the running task's rights per key (WRPKRU/XRSTOR)

    @property
    def active_pkru(self) -> int:
        """The PKRU the access checks apply: 0 (no key refuses) while CR4.PKE is clear."""
        return self.pkru if self.cr4_pke else 0

    @property
    def pcid(self) -> int:
        return self.cr3 & X86_CR3_PCID_MASK if self.pcid_enabled else 0

    @property
    def root_pfn(self) -> int:
        return (self.cr3 & X86_CR3_ADDR_MASK) >> 12

    # -- CR3 and flushes ---------------------------------------------------------------------
    def load_cr3(self, value: int) -> None:
        """MOV to CR3: without PCID flush everything non-global; with PCID keep the new
        PCID's entries only if bit 63 (NOFLUSH) is set (SDM §4.10.4.1)."""
        self.counters[MmuStat.CR3_LOADS] += 1
        noflush = bool(value & X86_CR3_PCID_NOFLUSH)
        self.cr3 = value & ~X86_CR3_PCID_NOFLUSH
        if not self.pcid_enabled:
            self.flush_all()
        elif not noflush:
            self.flush_pcid(self.pcid)

    def flush_all(self) -> None:
        self.counters[MmuStat.TLB_FLUSHES] += 1
        if self.tlb is not None:
            self.tlb.flush_all()
        if self.pwc is not None:
            self.pwc.flush()

    def flush_pcid(self, pcid: int) -> None:
        """INVPCID single-context: drop every entry tagged ``pcid`` (TLB and PWC)."""
        self.counters[MmuStat.TLB_FLUSHES] += 1
        if self.tlb is not None:
            self.tlb.flush_pcid(pcid)
        if self.pwc is not None:
            self.pwc.flush_pcid(pcid)

    def invlpg(self, vaddr: int, pcid: int | None = None) -> None:
        """INVLPG / INVPCID individual-address: the TLB entries of every page size that map
        ``vaddr`` and all paging-structure-cache entries (SDM §4.10.4.1)."""
        tag = self.pcid if pcid is None else pcid
        if self.tlb is not None:
            self.tlb.invlpg(vaddr, tag)
        if self.pwc is not None:
            self.pwc.flush_pcid(tag)

    # -- translation -------------------------------------------------------------------------
    def translate(self, vaddr: int, access: int, user: bool = True) -> Translation:
        """Translate one access; raises PageFault or GeneralProtection."""
        if not self.mode.is_canonical(vaddr):
            raise GeneralProtection(vaddr)
        counters = self.counters
        counters[MmuStat.ACCESSES] += 1
        pcid = self.pcid
        pkru = self.active_pkru
        if self.tlb is not None:
            hit = self.tlb.lookup(vaddr, access, pcid)
            if hit.level is not None and self._tlb_entry_allows(hit.payload, access, user,
                                                                pkru):
                counters[MmuStat.L1_HITS if hit.level == "l1" else MmuStat.STLB_HITS] += 1
                shift = hit.page_shift
                frame = pt.huge_pfn(hit.payload, shift) if shift > 12 else pt.pte_pfn(hit.payload)
                return Translation((frame << 12) + (vaddr & ((1 << shift) - 1)), shift,
                                   hit.payload, hit.level)
        result = self._walk(vaddr, access, user, pcid, pkru)
        if result.fault_code is not None:
            counters[MmuStat.PAGE_FAULTS] += 1
            if self.tlb is not None:
                self.tlb.invlpg(vaddr, pcid)
            raise PageFault(vaddr, result.fault_code)
        if self.tlb is not None:
            self.tlb.fill(vaddr, access, result.leaf_shift, pcid, result.leaf)
        return Translation(result.paddr, result.leaf_shift, result.leaf, "walk", result)

    @staticmethod
    def _tlb_entry_allows(leaf: int, access: int, user: bool, pkru: int = 0) -> bool:
        """A TLB hit serves the access only if the cached rights and protection key allow
        it and, for a write, the cached entry is already dirty (else the CPU walks to set D)."""
        if user and not leaf & pt._PAGE_USER:
            return False
        if leaf & pt._PAGE_USER and pkey_denies(leaf, access, pkru):
            return False
        if access == ACCESS_WRITE:
            return bool(leaf & pt._PAGE_RW) and bool(leaf & pt._PAGE_DIRTY)
        return not (access == 2 and leaf & pt._PAGE_NX)

    def _walk(self, vaddr: int, access: int, user: bool, pcid: int, pkru: int = 0) -> WalkResult:
        shifts = self.mode.shifts
        start_level, table = 0, self.root_pfn
        if self.pwc is not None:
            start_level, table = self.pwc.lookup(vaddr, pcid, start_level, table)
        result = walk(self.physmem, shifts, table, vaddr, access, user, start_level, pkru=pkru)
        self.counters[MmuStat.WALKS] += 1
        self.counters[MmuStat.WALK_REFS] += result.refs
        if self.pwc is not None:
            for step in result.steps:
                is_leaf = step.shift == 12 or bool(step.entry & pt._PAGE_PSE)
                if step.entry & pt._PAGE_PRESENT and not is_leaf:
                    self.pwc.fill(vaddr, pcid, step.level, pt.pte_pfn(step.entry))
        return result
