"""The hardware page walk (Intel SDM vol. 3A §4.5 "4-level and 5-level paging", §4.8 A/D).

Reads the paging-structure entries from physical memory, top level first; stops at the
first non-present entry or at a leaf (PS in a PDPTE or PDE, or any PTE); checks the
access rights accumulated over the levels (R/W and U/S ANDed, XD ORed) and, for data
accesses to user-mode addresses, the leaf's protection key against PKRU (§4.6.2: AD
refuses any data access, WD a write; a refusal sets PK, bit 5, in the error code); sets
the Accessed flag in every entry it uses and the Dirty flag in the leaf on a write.
``start_level``/``start_table`` let a page-walk-cache hit skip the levels above it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pagewalk.hw import pgtable_types as pt
from pagewalk.hw.physmem import PhysicalMemory
from pagewalk.hw.pkru import PKRU_AD_BIT, PKRU_BITS_PER_PKEY, PKRU_WD_BIT

ACCESS_READ = 0
ACCESS_WRITE = 1
ACCESS_IFETCH = 2


@dataclass(frozen=True, slots=True)
class WalkStep:
    """One entry read by a walk: level index (0 = top), its physical address and value."""

    level: int
    shift: int
    entry_paddr: int
    entry: int


@dataclass(slots=True)
class WalkResult:
    """A translation (``fault_code is None``) or the page fault the walk raises."""

    steps: list[WalkStep]
    fault_code: int | None = None
    leaf: int = 0
    leaf_shift: int = 12
    paddr: int = 0

    @property
    def refs(self) -> int:
        return len(self.steps)


def pkey_denies(leaf: int, access: int, pkru: int) -> bool:
    """SDM §4.6.2 for a user-mode address: PKRU.AD of the leaf's key refuses every data
    access, PKRU.WD a write (CR0.WP = 1); instruction fetches are not checked."""
    if access == ACCESS_IFETCH or not pkru:
        return False
    rights = pkru >> (pt.pte_pkey(leaf) * PKRU_BITS_PER_PKEY)
    return bool(rights & PKRU_AD_BIT) or (access == ACCESS_WRITE and bool(rights & PKRU_WD_BIT))


def walk(physmem: PhysicalMemory, shifts: tuple[int, ...], table_pfn: int, vaddr: int,
         access: int, user: bool, start_level: int = 0, nx_enabled: bool = True,
         pkru: int = 0) -> WalkResult:
    """Walk from the table at ``start_level`` (the PGD when 0) to the leaf mapping ``vaddr``.
    ``pkru`` is the PKRU in force (0 when CR4.PKE is clear: no key refuses anything)."""
    steps: list[WalkStep] = []
    rw = us = True
    nx = False
    write = access == ACCESS_WRITE
    fault_base = (pt.X86_PF_WRITE if write else 0) | (pt.X86_PF_USER if user else 0) | (
        pt.X86_PF_INSTR if access == ACCESS_IFETCH and nx_enabled else 0)
    table = table_pfn
    for level in range(start_level, len(shifts)):
        shift = shifts[level]
        entry_paddr = (table << 12) + ((vaddr >> shift) & 511) * 8
        entry = physmem.read_u64(entry_paddr)
        steps.append(WalkStep(level, shift, entry_paddr, entry))
        if not entry & pt._PAGE_PRESENT:
            return WalkResult(steps, fault_code=fault_base)
        rw = rw and bool(entry & pt._PAGE_RW)
        us = us and bool(entry & pt._PAGE_USER)
        nx = nx or bool(entry & pt._PAGE_NX)
        is_leaf = shift == 12 or bool(entry & pt._PAGE_PSE)
        if not is_leaf:
            if not entry & pt._PAGE_ACCESSED:
                physmem.write_u64(entry_paddr, entry | pt._PAGE_ACCESSED)
            table = pt.pte_pfn(entry)
            continue
        pk = us and pkey_denies(entry, access, pkru)
        if (user and not us) or (write and not rw) or (
                access == ACCESS_IFETCH and nx and nx_enabled) or pk:
            return WalkResult(steps, fault_code=fault_base | pt.X86_PF_PROT | (
                pt.X86_PF_PK if pk else 0))
        new = entry | pt._PAGE_ACCESSED | (pt._PAGE_DIRTY if write else 0)
        if new != entry:
            physmem.write_u64(entry_paddr, new)
        frame = pt.huge_pfn(new, shift) if shift > 12 else pt.pte_pfn(new)
        paddr = (frame << 12) + (vaddr & ((1 << shift) - 1))
        return WalkResult(steps, leaf=new, leaf_shift=shift, paddr=paddr)
    raise AssertionError("walk ran past the PTE level")
