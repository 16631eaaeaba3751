"""The TLB hierarchy (hw/tlb.py) and the page-walk caches (hw/pwc.py): the reference model
of docs/trace-model.md and the hardware interface the scenario MMU uses (PCIDs, payloads,
INVLPG, flushes; SDM vol. 3A §4.10)."""

from __future__ import annotations

import pytest

from pagewalk.hw.pwc import PageWalkCaches, PwcGeometry
from pagewalk.hw.tlb import (
    KIND_IFETCH,
    KIND_LOAD,
    KIND_STORE,
    REFERENCE_TLB,
    TlbArray,
    TlbGeometry,
    TlbHierarchy,
)
from pagewalk.units import GiB, KiB, MiB

BASE = 0x7F0000000000


def test_reference_geometry_is_the_spec_table() -> None:
    """docs/trace-model.md: entries and ways of every structure; sets = entries / ways."""
    table = {(a.name, a.page_shifts, a.nr_entries, a.nr_ways, a.nr_sets)
             for a in REFERENCE_TLB.arrays}
    assert table == {
        ("L1 dTLB 4K", (12,), 64, 4, 16), ("L1 dTLB 2M", (21,), 32, 4, 8),
        ("L1 dTLB 1G", (30,), 4, 4, 1), ("L1 iTLB 4K", (12,), 128, 8, 16),
        ("L1 iTLB 2M", (21,), 8, 8, 1), ("STLB 4K+2M", (12, 21), 1536, 12, 128),
        ("STLB 1G", (30,), 16, 4, 4),
    }


def test_a_walked_translation_hits_the_l1_next_time() -> None:
    tlb = TlbHierarchy()
    assert tlb.lookup(BASE, KIND_LOAD).level is None
    tlb.fill(BASE, KIND_LOAD, 12, 0, payload=0x1234)
    hit = tlb.lookup(BASE + 8, KIND_STORE)          # loads and stores share the dTLB
    assert (hit.level, hit.page_shift, hit.payload) == ("l1", 12, 0x1234)


def test_an_l1_eviction_leaves_an_stlb_hit_that_refills_the_l1() -> None:
    """Five 4 KiB pages in one L1 dTLB set (16 sets, 4 ways) evict the first from the L1;
    it is still in the STLB (128 sets), whose hit copies it back into the L1."""
    tlb = TlbHierarchy()
    pages = [BASE + i * 16 * 4 * KiB for i in range(5)]
    for vaddr in pages:
        tlb.fill(vaddr, KIND_LOAD, 12)
    assert tlb.lookup(pages[0], KIND_LOAD).level == "stlb"
    assert tlb.lookup(pages[0], KIND_LOAD).level == "l1"


def test_instruction_fetches_use_the_itlb_and_data_the_dtlb() -> None:
    tlb = TlbHierarchy()
    tlb.fill(BASE, KIND_IFETCH, 12)
    assert tlb.lookup(BASE, KIND_IFETCH).level == "l1"
    assert tlb.lookup(BASE, KIND_LOAD).level == "stlb"       # not in the dTLB: the STLB
    assert tlb.lookup(BASE, KIND_LOAD).level == "l1"


def test_a_1g_instruction_page_is_looked_up_in_the_stlb_alone() -> None:
    """The reference L1 iTLB holds no 1 GiB entries: every fetch after the walk is an
    STLB hit, and nothing is copied into an L1."""
    tlb = TlbHierarchy()
    tlb.fill(BASE, KIND_IFETCH, 30)
    for _ in range(3):
        assert tlb.lookup(BASE, KIND_IFETCH, page_shift=30).level == "stlb"
    assert tlb.counters()["L1 dTLB 1G"] == (0, 0)


def test_entries_of_different_pcids_never_hit_each_other() -> None:
    tlb = TlbHierarchy()
    tlb.fill(BASE, KIND_LOAD, 12, pcid=1, payload=11)
    assert tlb.lookup(BASE, KIND_LOAD, pcid=2).level is None
    tlb.fill(BASE, KIND_LOAD, 12, pcid=2, payload=22)
    assert tlb.lookup(BASE, KIND_LOAD, pcid=1).payload == 11
    assert tlb.lookup(BASE, KIND_LOAD, pcid=2).payload == 22


def test_a_lookup_without_a_size_probes_every_size() -> None:
    """The MMU does not know the page size before the walk: a 2 MiB entry answers any
    address in its page."""
    tlb = TlbHierarchy()
    tlb.fill(BASE, KIND_LOAD, 21, payload=0x2000)
    hit = tlb.lookup(BASE + 2 * MiB - 1, KIND_LOAD)
    assert (hit.level, hit.page_shift, hit.payload) == ("l1", 21, 0x2000)


def test_4k_and_2m_pages_share_the_stlb_array_with_their_own_sets() -> None:
    """The mixed STLB array: the set is the page number at the page's own size."""
    tlb = TlbHierarchy()
    stlb = REFERENCE_TLB.arrays.index(next(a for a in REFERENCE_TLB.arrays
                                           if a.name == "STLB 4K+2M"))
    tlb.fill(BASE + 5 * 2 * MiB, KIND_LOAD, 21)
    tlb.fill(BASE + 7 * 4 * KiB, KIND_LOAD, 12)
    table = tlb.tables[stlb]
    assert table.valid_tags(((BASE >> 21) + 5) % 128) != []
    assert table.valid_tags(((BASE >> 12) + 7) % 128) != []


def test_invlpg_drops_every_size_covering_the_address_for_its_pcid_only() -> None:
    """SDM §4.10.4.1: INVLPG invalidates the entries of every page size for the address."""
    tlb = TlbHierarchy()
    tlb.fill(BASE, KIND_LOAD, 12, pcid=1)
    tlb.fill(BASE, KIND_LOAD, 21, pcid=1)
    tlb.fill(BASE, KIND_LOAD, 12, pcid=2)
    tlb.fill(BASE + 4 * KiB, KIND_LOAD, 12, pcid=1)
    tlb.invlpg(BASE + 100, pcid=1)
    assert tlb.lookup(BASE, KIND_LOAD, pcid=1).level is None
    assert tlb.lookup(BASE, KIND_LOAD, pcid=2).level == "l1"
    assert tlb.lookup(BASE + 4 * KiB, KIND_LOAD, pcid=1).page_shift == 12


def test_flush_pcid_keeps_other_pcids_and_flush_all_keeps_nothing() -> None:
    tlb = TlbHierarchy()
    for pcid in (1, 2):
        tlb.fill(BASE, KIND_LOAD, 12, pcid=pcid)
        tlb.fill(BASE, KIND_IFETCH, 21, pcid=pcid)
    tlb.flush_pcid(1)
    assert tlb.lookup(BASE, KIND_LOAD, pcid=1).level is None
    assert tlb.lookup(BASE, KIND_LOAD, pcid=2).level == "l1"
    tlb.flush_all()
    assert tlb.lookup(BASE, KIND_LOAD, pcid=2).level is None


def test_hits_and_misses_are_counted_per_array() -> None:
    tlb = TlbHierarchy()
    tlb.lookup(BASE, KIND_LOAD, page_shift=12)
    tlb.fill(BASE, KIND_LOAD, 12)
    tlb.lookup(BASE, KIND_LOAD, page_shift=12)
    counters = tlb.counters()
    assert counters["L1 dTLB 4K"] == (1, 1)
    assert counters["STLB 4K+2M"] == (0, 1)


@pytest.mark.parametrize("arrays, message", [
    ((TlbArray("x", 1, "data", (12,), 10, 4),), "whole number"),
    ((TlbArray("x", 3, "data", (12,), 8, 4),), "level"),
    ((TlbArray("x", 1, "data", (13,), 8, 4),), "page sizes"),
    ((TlbArray("a", 1, "data", (12,), 8, 4), TlbArray("b", 1, "unified", (12,), 8, 4)),
     "both hold"),
])
def test_impossible_geometries_are_refused(arrays: tuple[TlbArray, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TlbHierarchy(TlbGeometry("bad", arrays))


# -- page-walk caches (docs/trace-model.md "Page-walk caches") ------------------------------
def test_a_cold_walk_reads_every_level_and_caches_the_upper_ones() -> None:
    """4 KiB page, 4 levels: PML4E, PDPTE, PDE, PTE read; the three upper ones cached."""
    pwc = PageWalkCaches()
    assert pwc.walk(BASE, 0, 12) == 4
    assert pwc.walk(BASE + 4 * KiB, 0, 12) == 1                 # PDE cache hit
    assert pwc.walk(BASE + 2 * MiB, 0, 12) == 2                 # PDPTE hit: PDE, PTE
    assert pwc.walk(BASE + GiB, 0, 12) == 3                     # PML4E hit
    assert pwc.counters() == {"pml4e": (1, 1), "pdpte": (1, 2), "pde": (1, 3)}


def test_the_first_hit_stops_the_lookups() -> None:
    """A PDE hit does not look up (or refresh) the PDPTE and PML4E caches."""
    pwc = PageWalkCaches()
    pwc.walk(BASE, 0, 12)
    pwc.walk(BASE, 0, 12)
    assert pwc.counters() == {"pml4e": (0, 1), "pdpte": (0, 1), "pde": (1, 1)}


def test_huge_page_walks_skip_the_caches_of_their_leaf() -> None:
    """A 2 MiB leaf is a PDE: PDPTE and PML4E caches only, at most 3 reads; a 1 GiB leaf
    is a PDPTE: the PML4E cache only, at most 2 reads. Leaves are never cached."""
    pwc = PageWalkCaches()
    assert pwc.walk(BASE, 0, 21) == 3
    assert pwc.walk(BASE + 2 * MiB, 0, 21) == 1
    assert pwc.counters()["pde"] == (0, 0)
    assert pwc.walk(BASE + 8 * GiB, 0, 30) == 1                 # same PML4E
    assert pwc.walk(BASE + 512 * GiB, 0, 30) == 2
    assert pwc.counters()["pdpte"] == (1, 1)                    # the two 2 MiB walks only


def test_a_pde_cache_of_32_entries_holds_32_pdes() -> None:
    pwc = PageWalkCaches()
    for i in range(33):
        pwc.walk(BASE + i * 2 * MiB, 0, 12)
    assert pwc.walk(BASE + 32 * 2 * MiB, 0, 12) == 1
    assert pwc.walk(BASE, 0, 12) == 2                           # the oldest PDE was evicted


def test_pwc_entries_are_tagged_with_their_pcid() -> None:
    pwc = PageWalkCaches()
    pwc.walk(BASE, 1, 12)
    assert pwc.walk(BASE, 2, 12) == 4
    pwc.flush_pcid(2)
    assert pwc.walk(BASE, 1, 12) == 1
    pwc.flush()
    assert pwc.walk(BASE, 1, 12) == 4


def test_the_mmu_interface_numbers_walk_levels_from_the_top() -> None:
    """lookup() gives the level to start the walk at and the table to read there."""
    pwc = PageWalkCaches()
    assert pwc.lookup(BASE, 0, 0, 0x999) == (0, 0x999)
    pwc.fill(BASE, 0, 0, 0x111)      # PML4E -> PDPT at pfn 0x111
    pwc.fill(BASE, 0, 1, 0x222)      # PDPTE -> PD
    assert pwc.lookup(BASE, 0) == (2, 0x222)
    pwc.fill(BASE, 0, 2, 0x333)      # PDE -> PT
    assert pwc.lookup(BASE, 0) == (3, 0x333)
    pwc.invalidate(BASE, 0)
    assert pwc.lookup(BASE, 0, 0, 0x999) == (0, 0x999)


def test_five_level_paging_can_cache_pml5es() -> None:
    """LA57: a cold 4 KiB walk reads 5 entries; with a PML5E cache a far walk reads 4."""
    pwc = PageWalkCaches(PwcGeometry(pml5e_entries=2), paging_levels=5)
    assert pwc.walk(BASE, 0, 12) == 5
    assert pwc.walk(BASE + 512 * GiB, 0, 12) == 4               # other PML4E, same PML5E
    assert pwc.counters()["pml5e"] == (1, 1)
    assert pwc.lookup(BASE, 0) == (4, 0)                         # the PDE (level 3) cached
