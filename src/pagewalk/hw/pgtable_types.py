"""x86_64 paging-structure entry bits and pure helpers on 64-bit entries.

Follows arch/x86/include/asm/pgtable_types.h (_PAGE_BIT_*) and Intel SDM vol. 3A
tables 4-15..4-20. Every entry is a plain ``int`` holding the architectural 64-bit word.
"""

from __future__ import annotations

_PAGE_PRESENT = 1 << 0    # P: the entry maps something
_PAGE_RW = 1 << 1         # R/W: writes allowed (ANDed over all levels)
_PAGE_USER = 1 << 2       # U/S: user-mode access allowed (ANDed over all levels)
_PAGE_PWT = 1 << 3        # page write-through
_PAGE_PCD = 1 << 4        # page cache disable
_PAGE_ACCESSED = 1 << 5   # A: set by the CPU when the entry is used for a translation
_PAGE_DIRTY = 1 << 6      # D: set by the CPU on a write through a leaf entry
_PAGE_PSE = 1 << 7        # PS: 2 MiB (PMD) or 1 GiB (PUD) leaf; PAT in a 4 KiB PTE
_PAGE_GLOBAL = 1 << 8     # G: survives CR3 loads (leaf only, with CR4.PGE)
_PAGE_PROTNONE = _PAGE_GLOBAL  # Linux reuses bit 8 in non-present PROT_NONE entries
_PAGE_SPECIAL = 1 << 9    # SOFTW1: Linux marks zero-page and pfn-map PTEs (pte_mkspecial)
_PAGE_UFFD_WP = 1 << 10   # SOFTW2
_PAGE_SOFT_DIRTY = 1 << 11  # SOFTW3
_PAGE_PAT_LARGE = 1 << 12  # PAT in 2 MiB / 1 GiB leaves
_PAGE_BIT_PKEY_BIT0 = 59  # protection key: bits 62:59 of a leaf (PTE, or PS PMD/PUD)
_PAGE_PKEY_BIT0 = 1 << 59
_PAGE_PKEY_BIT1 = 1 << 60
_PAGE_PKEY_BIT2 = 1 << 61
_PAGE_PKEY_BIT3 = 1 << 62
_PAGE_PKEY_MASK = _PAGE_PKEY_BIT0 | _PAGE_PKEY_BIT1 | _PAGE_PKEY_BIT2 | _PAGE_PKEY_BIT3
_PAGE_NX = 1 << 63        # XD: instruction fetches forbidden (with EFER.NXE)

PHYSICAL_MASK_SHIFT = 52
PTE_PFN_MASK = ((1 << PHYSICAL_MASK_SHIFT) - 1) & ~0xFFF   # bits 51:12
PMD_PFN_MASK = ((1 << PHYSICAL_MASK_SHIFT) - 1) & ~((1 << 21) - 1)  # bits 51:21
PUD_PFN_MASK = ((1 << PHYSICAL_MASK_SHIFT) - 1) & ~((1 << 30) - 1)  # bits 51:30
PAGE_SHIFT = 12

# What Linux writes (asm/pgtable_types.h, arch/x86/mm/pgprot.c protection_map[]).
_PAGE_TABLE = _PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED | _PAGE_DIRTY  # 0x067
_KERNPG_TABLE = _PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY            # 0x063
PAGE_NONE = _PAGE_ACCESSED | _PAGE_PROTNONE
PAGE_READONLY = _PAGE_PRESENT | _PAGE_USER | _PAGE_ACCESSED | _PAGE_NX
PAGE_READONLY_EXEC = _PAGE_PRESENT | _PAGE_USER | _PAGE_ACCESSED
PAGE_COPY = PAGE_READONLY             # private writable: write permission is per PTE (COW)
PAGE_COPY_EXEC = PAGE_READONLY_EXEC
PAGE_SHARED = _PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED | _PAGE_NX
PAGE_SHARED_EXEC = _PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED

# x86 page-fault error code (arch/x86/include/asm/trap_pf.h).
X86_PF_PROT = 1 << 0   # 0: not-present page, 1: protection violation
X86_PF_WRITE = 1 << 1  # the access was a write
X86_PF_USER = 1 << 2   # the access came from user mode
X86_PF_RSVD = 1 << 3   # reserved bit set in an entry
X86_PF_INSTR = 1 << 4  # the access was an instruction fetch
X86_PF_PK = 1 << 5     # the protection key (PKRU) denied the data access

FLAG_NAMES = (
    (_PAGE_PRESENT, "P"), (_PAGE_RW, "RW"), (_PAGE_USER, "US"), (_PAGE_PWT, "PWT"),
    (_PAGE_PCD, "PCD"), (_PAGE_ACCESSED, "A"), (_PAGE_DIRTY, "D"), (_PAGE_PSE, "PS"),
    (_PAGE_GLOBAL, "G"), (_PAGE_SPECIAL, "SPECIAL"), (_PAGE_SOFT_DIRTY, "SOFT_DIRTY"),
    (_PAGE_NX, "NX"),
)


def pte_present(entry: int) -> bool:
    return bool(entry & _PAGE_PRESENT)


def pte_none(entry: int) -> bool:
    """pte_none(): the entry is all zero (nothing mapped, not even PROT_NONE)."""
    return entry == 0


def pte_write(entry: int) -> bool:
    return bool(entry & _PAGE_RW)


def pte_dirty(entry: int) -> bool:
    return bool(entry & _PAGE_DIRTY)


def pte_young(entry: int) -> bool:
    return bool(entry & _PAGE_ACCESSED)


def pte_special(entry: int) -> bool:
    return bool(entry & _PAGE_SPECIAL)


def pte_pkey(entry: int) -> int:
    """pte_flags_pkey(): the protection key in bits 62:59 of a leaf entry."""
    return (entry & _PAGE_PKEY_MASK) >> _PAGE_BIT_PKEY_BIT0


def pkey_pte_bits(pkey: int) -> int:
    """The leaf-entry bits that hold protection key ``pkey`` (0..15)."""
    if not 0 <= pkey <= 15:
        raise ValueError(f"protection key {pkey} is not in 0..15")
    return pkey << _PAGE_BIT_PKEY_BIT0


def pte_pfn(entry: int) -> int:
    """Frame number of a 4 KiB leaf or of the next-level table."""
    return (entry & PTE_PFN_MASK) >> PAGE_SHIFT


def pmd_leaf(entry: int) -> bool:
    """pmd_leaf()/pud_leaf(): a present entry with PS set maps a huge page."""
    return bool(entry & _PAGE_PRESENT) and bool(entry & _PAGE_PSE)


def huge_pfn(entry: int, level_shift: int) -> int:
    """Frame number of the first 4 KiB frame of a 2 MiB or 1 GiB leaf."""
    mask = PMD_PFN_MASK if level_shift == 21 else PUD_PFN_MASK
    return (entry & mask) >> PAGE_SHIFT


def mk_pte(pfn: int, prot: int) -> int:
    """pfn_pte(): a 4 KiB leaf entry."""
    return (pfn << PAGE_SHIFT) | prot


def mk_huge(pfn: int, prot: int) -> int:
    """A 2 MiB / 1 GiB leaf (pfn_pmd / pfn_pud with _PAGE_PSE)."""
    return (pfn << PAGE_SHIFT) | prot | _PAGE_PSE


def mk_table(pfn: int) -> int:
    """A non-leaf user entry pointing at a table (pmd_populate etc.: _PAGE_TABLE)."""
    return (pfn << PAGE_SHIFT) | _PAGE_TABLE


def pte_mkwrite(entry: int) -> int:
    return entry | _PAGE_RW


def pte_wrprotect(entry: int) -> int:
    return entry & ~_PAGE_RW


def pte_mkdirty(entry: int) -> int:
    return entry | _PAGE_DIRTY


def pte_mkclean(entry: int) -> int:
    return entry & ~_PAGE_DIRTY


def pte_modify(entry: int, newprot: int) -> int:
    """pte_modify(): keep the pfn, A/D and software bits, take the protection (the
    protection key included: it is not in _PAGE_CHG_MASK) from newprot."""
    keep = PTE_PFN_MASK | _PAGE_ACCESSED | _PAGE_DIRTY | _PAGE_SPECIAL | _PAGE_SOFT_DIRTY | _PAGE_PSE
    prot_bits = _PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_PROTNONE | _PAGE_NX | _PAGE_PKEY_MASK
    return (entry & keep) | (newprot & prot_bits) | (entry & _PAGE_ACCESSED)


def decode_flags(entry: int) -> list[str]:
    """The names of the flag bits set in ``entry``, in bit order."""
    return [name for bit, name in FLAG_NAMES if entry & bit]
