"""Protection keys in the hardware: the leaf's key in bits 62:59
(arch/x86/include/asm/pgtable_types.h _PAGE_PKEY_BIT0..3), PKRU (asm/pkru.h), the walk's
check (Intel SDM vol. 3A §4.6.2: for a user-mode address, PKRU.AD of the key refuses any
data access, PKRU.WD a write; instruction fetches are not checked) and the page-fault
error code's PK bit (bit 5, §4.7); the TLB caches the key with the leaf and hits are
checked against the PKRU in force."""

from __future__ import annotations

import pytest

from pagewalk.hw import pgtable_types as pt
from pagewalk.hw.mmu import Mmu, PageFault
from pagewalk.hw.paging import PagingMode
from pagewalk.hw.physmem import PhysicalMemory
from pagewalk.hw.pkru import (
    INIT_PKRU_VALUE,
    PKRU_AD_BIT,
    PKRU_WD_BIT,
    pkru_allows_read,
    pkru_allows_write,
    set_pkey_rights,
)
from pagewalk.hw.pwc import PageWalkCaches
from pagewalk.hw.tlb import TlbHierarchy
from pagewalk.hw.walker import ACCESS_IFETCH, ACCESS_READ, ACCESS_WRITE, walk

VA = 0x7F0000000000 + (5 << 12)
SHIFTS = PagingMode(4).shifts


def _tables(physmem: PhysicalMemory, va: int, leaf_shift: int, leaf: int,
            table_entry: int = pt._PAGE_TABLE) -> int:
    """PML4 at frame 1 -> ... -> ``leaf`` at ``leaf_shift``; returns the PML4 pfn."""
    table, next_table = 1, 2
    for shift in (39, 30, 21, 12):
        slot = (table << 12) + ((va >> shift) & 511) * 8
        if shift == leaf_shift:
            physmem.write_u64(slot, leaf)
            break
        physmem.write_u64(slot, (next_table << 12) | table_entry)
        table, next_table = next_table, next_table + 1
    return 1


def test_pkey_bits_are_59_to_62() -> None:
    assert (pt._PAGE_PKEY_BIT0, pt._PAGE_PKEY_BIT1, pt._PAGE_PKEY_BIT2, pt._PAGE_PKEY_BIT3) == (
        1 << 59, 1 << 60, 1 << 61, 1 << 62)
    assert pt._PAGE_PKEY_MASK == 0x7800_0000_0000_0000
    assert pt.X86_PF_PK == 0x20
    for pkey in range(16):
        entry = pt.mk_pte(0x1234, pt.PAGE_COPY | pt.pkey_pte_bits(pkey))
        assert pt.pte_pkey(entry) == pkey
        assert pt.pte_pfn(entry) == 0x1234 and entry & pt._PAGE_NX
    with pytest.raises(ValueError, match="16"):
        pt.pkey_pte_bits(16)


def test_pte_modify_takes_the_key_from_the_new_protection() -> None:
    # pte_modify(): the key is not in _PAGE_CHG_MASK, so mprotect replaces it.
    old = pt.mk_pte(0x42, pt.PAGE_READONLY_EXEC | pt.pkey_pte_bits(1)) | pt._PAGE_DIRTY
    new = pt.pte_modify(old, pt.PAGE_READONLY)
    assert pt.pte_pkey(new) == 0 and new & pt._PAGE_DIRTY and pt.pte_pfn(new) == 0x42
    assert pt.pte_pkey(pt.pte_modify(new, pt.PAGE_READONLY_EXEC | pt.pkey_pte_bits(9))) == 9


def test_init_pkru_value_disables_access_to_every_key_but_0() -> None:
    assert INIT_PKRU_VALUE == 0x55555554
    assert pkru_allows_write(INIT_PKRU_VALUE, 0)
    assert not any(pkru_allows_read(INIT_PKRU_VALUE, pkey) for pkey in range(1, 16))
    # arch_set_user_pkey_access(PKEY_DISABLE_ACCESS) sets AD and clears WD of one key only
    pkru = set_pkey_rights(0xFFFFFFFF, 3, disable_access=True, disable_write=False)
    assert pkru == 0xFFFFFFFF & ~(PKRU_WD_BIT << 6)


def _expected(pkru: int, pkey: int, access: int) -> bool:
    """SDM §4.6.2, written out: is the user-mode access refused by the key?"""
    ad = bool(pkru >> (2 * pkey) & 1)
    wd = bool(pkru >> (2 * pkey + 1) & 1)
    if access == ACCESS_IFETCH:
        return False
    return ad or (access == ACCESS_WRITE and wd)


@pytest.mark.parametrize("leaf_shift", [12, 21, 30])
@pytest.mark.parametrize("pkey", [0, 1, 7, 15])
def test_walk_checks_ad_and_wd_of_the_leafs_key_bit_by_bit(leaf_shift: int, pkey: int) -> None:
    for rights in range(4):                 # AD, WD of the key: 00, 01, 10, 11
        for other in (0, 0xFFFFFFFF):       # every other key's bits clear, or all set
            mask = 3 << (2 * pkey)
            pkru = (other & ~mask) | (rights << (2 * pkey))
            for access in (ACCESS_READ, ACCESS_WRITE, ACCESS_IFETCH):
                physmem = PhysicalMemory(64 << 20)
                prot = pt.PAGE_SHARED_EXEC | pt.pkey_pte_bits(pkey)
                leaf = (pt.mk_huge(0x200 if leaf_shift == 21 else 0x40000, prot)
                        if leaf_shift > 12 else pt.mk_pte(0x300, prot))
                root = _tables(physmem, VA, leaf_shift, leaf)
                result = walk(physmem, SHIFTS, root, VA, access, True, pkru=pkru)
                refused = _expected(pkru, pkey, access)
                if refused:
                    write = pt.X86_PF_WRITE if access == ACCESS_WRITE else 0
                    assert result.fault_code == (pt.X86_PF_PROT | pt.X86_PF_USER | write
                                                 | pt.X86_PF_PK), (rights, other, access)
                    # the refused access sets neither A nor D in the leaf
                    assert physmem.read_u64(result.steps[-1].entry_paddr) == leaf
                else:
                    assert result.fault_code is None, (rights, other, access)
                    assert pt.pte_pkey(result.leaf) == pkey


def test_pk_is_set_besides_a_rights_violation_and_not_for_a_missing_page() -> None:
    pkru = PKRU_AD_BIT << 2                       # key 1 access-disabled
    physmem = PhysicalMemory(64 << 20)
    root = _tables(physmem, VA, 12, pt.mk_pte(0x300, pt.PAGE_READONLY | pt.pkey_pte_bits(1)))
    result = walk(physmem, SHIFTS, root, VA, ACCESS_WRITE, True, pkru=pkru)
    assert result.fault_code == pt.X86_PF_PROT | pt.X86_PF_WRITE | pt.X86_PF_USER | pt.X86_PF_PK
    # not present: no leaf, so no key; the error code has neither P nor PK
    result = walk(physmem, SHIFTS, root, VA + 4096, ACCESS_READ, True, pkru=pkru)
    assert result.fault_code == pt.X86_PF_USER


def test_keys_apply_to_user_mode_addresses_only() -> None:
    # A supervisor page (U/S clear at one level) is no user-mode address: PKRU is not
    # consulted, even for a supervisor-mode access.
    physmem = PhysicalMemory(64 << 20)
    leaf = pt.mk_pte(0x300, (pt.PAGE_SHARED & ~pt._PAGE_USER) | pt.pkey_pte_bits(2))
    root = _tables(physmem, VA, 12, leaf)
    assert walk(physmem, SHIFTS, root, VA, ACCESS_READ, False, pkru=0xFFFFFFFF).fault_code is None
    physmem = PhysicalMemory(64 << 20)
    root = _tables(physmem, VA, 12, pt.mk_pte(0x300, pt.PAGE_SHARED | pt.pkey_pte_bits(2)),
                   table_entry=pt._KERNPG_TABLE)
    result = walk(physmem, SHIFTS, root, VA, ACCESS_READ, True, pkru=0xFFFFFFFF)
    assert result.fault_code == pt.X86_PF_PROT | pt.X86_PF_USER      # U/S, not PK
    # ... while a supervisor-mode read of a user-mode address is checked (CR0.WP = 1)
    physmem = PhysicalMemory(64 << 20)
    root = _tables(physmem, VA, 12, pt.mk_pte(0x300, pt.PAGE_SHARED | pt.pkey_pte_bits(2)))
    result = walk(physmem, SHIFTS, root, VA, ACCESS_READ, False, pkru=PKRU_AD_BIT << 4)
    assert result.fault_code == pt.X86_PF_PROT | pt.X86_PF_PK


def _mmu(pku: bool = True) -> tuple[Mmu, PhysicalMemory]:
    physmem = PhysicalMemory(64 << 20)
    mmu = Mmu(physmem, PagingMode(4), pcid=True, tlb=TlbHierarchy(),
              pwc=PageWalkCaches(paging_levels=4), pku=pku)
    mmu.cr4_pke = pku
    root = _tables(physmem, VA, 12, pt.mk_pte(0x300, pt.PAGE_SHARED_EXEC | pt.pkey_pte_bits(1)
                                              | pt._PAGE_DIRTY))
    mmu.load_cr3((root << 12) | 1)
    return mmu, physmem


def test_tlb_hits_are_checked_against_pkru() -> None:
    mmu, _ = _mmu()
    assert mmu.translate(VA, ACCESS_READ).source == "walk"
    assert pt.pte_pkey(mmu.translate(VA, ACCESS_READ).leaf) == 1   # the key is cached
    assert mmu.translate(VA, ACCESS_WRITE).source == "l1"
    mmu.pkru = PKRU_WD_BIT << 2                  # WRPKRU: key 1 write-disabled
    assert mmu.translate(VA, ACCESS_READ).source == "l1"
    with pytest.raises(PageFault) as fault:
        mmu.translate(VA, ACCESS_WRITE)
    assert fault.value.code == pt.X86_PF_PROT | pt.X86_PF_WRITE | pt.X86_PF_USER | pt.X86_PF_PK
    mmu.pkru = PKRU_AD_BIT << 2                  # key 1 access-disabled
    with pytest.raises(PageFault) as fault:
        mmu.translate(VA, ACCESS_READ)
    assert fault.value.code == pt.X86_PF_PROT | pt.X86_PF_USER | pt.X86_PF_PK
    assert mmu.translate(VA, ACCESS_IFETCH).paddr == 0x300 << 12   # fetches pass
    mmu.pkru = 0
    assert mmu.translate(VA, ACCESS_READ).paddr == 0x300 << 12


def test_without_cr4_pke_pkru_is_not_applied() -> None:
    mmu, _ = _mmu(pku=False)
    mmu.pkru = 0xFFFFFFFF
    assert mmu.active_pkru == 0
    assert mmu.translate(VA, ACCESS_WRITE).paddr == 0x300 << 12
