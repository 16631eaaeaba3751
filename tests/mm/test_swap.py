"""Swap entries, slots and the swap cache (mm/swapfile.py, mm/swap_state.py)."""

from __future__ import annotations

from pagewalk.hw import pgtable_types as pt
from pagewalk.machine import Machine
from pagewalk.mm import swap_state, swapfile
from pagewalk.mm.swapfile import (
    get_swap_page,
    is_swap_pte,
    pte_swp_offset,
    pte_swp_type,
    swap_duplicate,
    swap_entry_put,
    swapcache_clear,
    swapon,
    swp_entry_to_pte,
)
from pagewalk.mm.vmstat import VmEvent
from pagewalk.proc.meminfo import meminfo
from pagewalk.scenario.runner import run_scenario
from pagewalk.scenario.schema import parse_scenario


def test_swap_pte_encodes_inverted_offset_above_protnone_bit() -> None:
    """pgtable_64.h __swp_entry: type in bits 59-63, ~offset in bits 9-58, bits 0-8 clear."""
    entry = swp_entry_to_pte(0, 1)
    assert entry == 0x07FF_FFFF_FFFF_FC00     # ~1 = ...1110 at bit 9: bit 9 clear
    assert entry & 0x1FF == 0                 # present, PROT_NONE (bit 8) and A/D clear
    assert pte_swp_offset(entry) == 1 and pte_swp_type(entry) == 0
    entry = swp_entry_to_pte(3, 0x12345)
    assert entry >> 59 == 3
    assert (entry >> 9) & ((1 << 50) - 1) == ~0x12345 & ((1 << 50) - 1)
    assert pte_swp_offset(entry) == 0x12345 and pte_swp_type(entry) == 3


def test_swap_pte_is_not_present_and_not_prot_none() -> None:
    entry = swp_entry_to_pte(0, 77) | swapfile._PAGE_SWP_EXCLUSIVE
    assert not entry & pt._PAGE_PRESENT and not entry & pt._PAGE_PROTNONE
    assert is_swap_pte(entry) and swapfile.pte_swp_exclusive(entry)
    assert pte_swp_offset(entry) == 77        # the exclusive bit (3) is below the offset
    assert not is_swap_pte(0) and not is_swap_pte(pt._PAGE_PRESENT | 0x1000)
    assert not is_swap_pte(pt._PAGE_PROTNONE | 0x1000)


def test_swap_file_header_page_is_not_a_slot() -> None:
    """mkswap: a 16 MiB file holds 4095 pages; slot 0 is the header."""
    si = swapon(16 << 20)
    assert si.pages == 4095
    assert get_swap_page(si) == 1
    assert get_swap_page(si) == 2
    assert si.inuse_pages == 2 and si.nr_free == 4093


def test_slot_is_free_only_when_entries_and_cache_let_go() -> None:
    si = swapon(1 << 20)
    offset = get_swap_page(si)                # SWAP_HAS_CACHE
    swap_duplicate(si, offset)                # one PTE
    swap_duplicate(si, offset)                # fork's copy
    swapcache_clear(si, offset)
    swap_entry_put(si, offset)
    assert si.inuse_pages == 1
    swap_entry_put(si, offset)
    assert si.inuse_pages == 0
    assert get_swap_page(si) == offset + 1    # allocation goes on from cluster_next


def test_swap_full_gives_no_slot() -> None:
    si = swapon(40 << 10)                     # 10 pages: 9 slots
    assert [get_swap_page(si) for _ in range(9)] == list(range(1, 10))
    assert get_swap_page(si) == 0


SCENARIO = """
name: swap-unit
system: {swap: 16MiB}
steps:
  - mmap: {name: buf, length: 64KiB}
  - touch: {region: buf, access: write}
  - write: {region: buf, offset: 4096, data: "swapped"}
  - madvise: {region: buf, advice: pageout}
  - measure: out
  - read: {region: buf, offset: 4096, length: 7, expect: "swapped"}
  - measure: back
"""


def test_pageout_then_read_hits_swap_cache_and_keeps_data() -> None:
    """MADV_PAGEOUT writes 16 pages (pswpout 16, VmSwap 64 kB); the data comes back from
    the swap cache with a minor fault and no pswpin."""
    report = run_scenario(parse_scenario(SCENARIO, "swap-unit.yaml"))
    out, back = report.measurements
    assert out.processes["main"]["VmSwap"] == 64
    assert out.system["pswpout"] == 16
    assert back.processes["main"]["VmSwap"] == 60
    assert back.system["pswpin"] == 0 and back.processes["main"]["majflt"] == 0
    assert back.processes["main"]["minflt"] == out.processes["main"]["minflt"] + 1
    assert report.to_json()["pressure"] is True


def test_meminfo_swap_lines_count_slots_and_cache() -> None:
    machine = Machine()
    k = machine.kernel
    k.swap = swap_state.SwapSpace(swapon(16 << 20))
    assert meminfo(k)["SwapTotal"] == 4095 * 4
    pfn = k.buddy.alloc_pages(0)
    k.memmap.refcount[pfn] = 1
    assert swap_state.add_to_swap(k, pfn)
    info = meminfo(k)
    assert info["SwapFree"] == 4094 * 4 and info["SwapCached"] == 4
    swap_state.swap_writepage(k, pfn)
    assert k.vm_events[VmEvent.PSWPOUT] == 1
    swap_state.delete_from_swap_cache(k, pfn)       # the last reference: freed
    info = meminfo(k)
    assert info["SwapFree"] == 4095 * 4 and info["SwapCached"] == 0


def test_swapin_readahead_window_grows_with_hits() -> None:
    """swapin_nr_pages: a lone fault reads 1 page, a neighbouring one 2, then with hits
    the window rounds up to 4 and 8 (page-cluster 3), never more."""
    sw = swap_state.SwapSpace(swapon(1 << 20))
    assert swap_state.swapin_nr_pages(sw, 100) == 1
    assert swap_state.swapin_nr_pages(sw, 101) == 2
    sw.readahead_hits = 1
    assert swap_state.swapin_nr_pages(sw, 103) == 4
    sw.readahead_hits = 3
    assert swap_state.swapin_nr_pages(sw, 107) == 8
    sw.readahead_hits = 7
    assert swap_state.swapin_nr_pages(sw, 115) == 8
