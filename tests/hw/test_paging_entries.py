"""x86_64 entry bits, address split and the hardware walk (SDM vol. 3A §4.5, §4.8;
arch/x86/include/asm/pgtable_types.h)."""

from __future__ import annotations

import pytest

from pagewalk.hw import pgtable_types as pt
from pagewalk.hw.paging import PagingMode
from pagewalk.hw.physmem import PhysicalMemory
from pagewalk.hw.walker import ACCESS_IFETCH, ACCESS_READ, ACCESS_WRITE, walk


def test_entry_bits_are_the_architectural_ones() -> None:
    assert (pt._PAGE_PRESENT, pt._PAGE_RW, pt._PAGE_USER) == (1, 2, 4)
    assert (pt._PAGE_ACCESSED, pt._PAGE_DIRTY, pt._PAGE_PSE) == (0x20, 0x40, 0x80)
    assert pt._PAGE_NX == 1 << 63
    assert pt._PAGE_TABLE == 0x067            # P|RW|US|A|D for a user table entry
    assert pt.PTE_PFN_MASK == 0x000F_FFFF_FFFF_F000


def test_a_fresh_anonymous_pte_is_what_linux_writes() -> None:
    # do_anonymous_page: folio_mk_pte(PAGE_COPY) + pte_mkwrite(pte_mkdirty()) = 0x8000000000000067
    entry = pt.mk_pte(0x1234, pt.PAGE_COPY) | pt._PAGE_DIRTY | pt._PAGE_RW
    assert entry == 0x8000000000000067 | 0x1234 << 12
    assert pt.decode_flags(entry) == ["P", "RW", "US", "A", "D", "NX"]


def test_address_split_of_the_notes_example() -> None:
    mode = PagingMode(4)
    va = 0x7F2C5C123456
    assert [mode.index(va, level) for level in range(4)] == [0xFE, 0xB1, 0xE0, 0x123]


@pytest.mark.parametrize("levels,va,canonical", [
    (4, 0x7FFFFFFFFFFF, True), (4, 0x800000000000, False), (4, 0xFFFF800000000000, True),
    (5, 0x800000000000, True), (5, 0x0100000000000000, False), (5, 0xFF00000000000000, True),
])
def test_canonical_addresses(levels: int, va: int, canonical: bool) -> None:
    assert PagingMode(levels).is_canonical(va) is canonical


def _tables(physmem: PhysicalMemory, va: int, leaf_shift: int, leaf: int) -> int:
    """Build PML4 at frame 1 -> ... -> a leaf at ``leaf_shift``; returns the PML4 pfn."""
    table, next_table = 1, 2
    for shift in (39, 30, 21, 12):
        slot = (table << 12) + ((va >> shift) & 511) * 8
        if shift == leaf_shift:
            physmem.write_u64(slot, leaf)
            break
        physmem.write_u64(slot, pt.mk_table(next_table))
        table, next_table = next_table, next_table + 1
    return 1


@pytest.mark.parametrize("leaf_shift,refs", [(12, 4), (21, 3), (30, 2)])
def test_walk_reads_one_entry_per_level_down_to_the_leaf(leaf_shift: int, refs: int) -> None:
    physmem = PhysicalMemory(64 << 20)
    va = 0x7F0000000000 + (5 << 12)
    leaf = (pt.mk_huge(0x200, pt.PAGE_SHARED) if leaf_shift > 12
            else pt.mk_pte(0x345, pt.PAGE_SHARED))
    root = _tables(physmem, va, leaf_shift, leaf)
    result = walk(physmem, (39, 30, 21, 12), root, va, ACCESS_WRITE, user=True)
    assert result.fault_code is None
    assert result.refs == refs
    assert result.leaf & pt._PAGE_DIRTY                    # D set in the leaf on a write


def test_a_write_to_a_read_only_leaf_is_a_protection_fault() -> None:
    physmem = PhysicalMemory(64 << 20)
    va = 0x400000
    root = _tables(physmem, va, 12, pt.mk_pte(0x345, pt.PAGE_READONLY))
    result = walk(physmem, (39, 30, 21, 12), root, va, ACCESS_WRITE, user=True)
    assert result.fault_code == pt.X86_PF_PROT | pt.X86_PF_WRITE | pt.X86_PF_USER
    result = walk(physmem, (39, 30, 21, 12), root, va, ACCESS_IFETCH, user=True)
    assert result.fault_code == pt.X86_PF_PROT | pt.X86_PF_USER | pt.X86_PF_INSTR  # NX


def test_a_missing_entry_stops_the_walk_with_a_not_present_fault() -> None:
    physmem = PhysicalMemory(64 << 20)
    result = walk(physmem, (39, 30, 21, 12), 1, 0x400000, ACCESS_READ, user=True)
    assert result.fault_code == pt.X86_PF_USER and result.refs == 1


def test_physical_memory_is_sparse() -> None:
    physmem = PhysicalMemory(8 << 30)
    assert physmem.read_u64(5 << 30) == 0 and physmem.stored_frames == 0
    physmem.write_bytes((7 << 30) + 10, b"abc")
    assert physmem.read_bytes((7 << 30) + 10, 3) == b"abc"
    assert physmem.stored_frames == 1
