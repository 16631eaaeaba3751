"""The swap cache, swap I/O and swap-in (mm/swap_state.c, mm/page_io.c, mm/memory.c
do_swap_page, mm/swapfile.c free_swap_and_cache).

A folio that reclaim gives a slot (add_to_swap) enters the swap cache: ``cache`` maps the
slot to the folio, ``folio_swap`` the folio to its slot (folio->swap), and the cache
holds one reference. It stays there after writeback until reclaim frees it (clean and
unmapped), a write fault that owns it alone takes it out (should_try_to_free_swap), or
its last swap entry goes (free_swap_and_cache). The disk is infinitely fast: a write
(pswpout) or read (pswpin) completes at once; what a slot holds is kept in SwapInfo.data.

Swap-in follows do_swap_page: a folio found in the swap cache is a minor fault; a miss is
a major fault that reads with swap_cluster_readahead, since the swap file is on a
rotational disk (nr_rotate_swap turns VMA readahead off): the aligned block of
2**page-cluster slots around the entry, sized by swapin_nr_pages from the readahead hits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from pagewalk.hw import pgtable_types as pt
from pagewalk.mm import memcontrol, rmap
from pagewalk.mm.page_alloc import NO_PAGE, PageFlag
from pagewalk.mm.pgtable import mk_anon_pte
from pagewalk.mm.swapfile import (
    _PAGE_SWP_EXCLUSIVE,
    SwapInfo,
    get_swap_page,
    pte_swp_exclusive,
    pte_swp_offset,
    swap_duplicate,
    swap_entry_put,
    swapcache_clear,
    vm_swap_full,
)
from pagewalk.mm.tlb import flush_tlb_page
from pagewalk.mm.types import FaultFlags, MmStat, MmStruct, Vma, VmFault, VmFlags
from pagewalk.mm.vmstat import VmEvent

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel

PAGE_CLUSTER = 3                       # /proc/sys/vm/page-cluster, the kernel's default
_READAHEAD = np.uint16(PageFlag.READAHEAD)


@dataclass(slots=True, eq=False)
class SwapSpace:
    """The active swap file and its swap cache (swapper_spaces), with the global swap
    readahead state of mm/swap_state.c."""

    si: SwapInfo
    cache: dict[int, int] = field(default_factory=dict)        # slot -> folio pfn
    folio_swap: dict[int, int] = field(default_factory=dict)   # folio pfn -> slot
    prev_offset: int = 0                  # swapin_nr_pages: prev_offset
    last_readahead_pages: int = 0
    readahead_hits: int = 0               # swapin_readahead_hits


def swap_cache_pages(k: Kernel) -> int:
    """NR_SWAPCACHE: pages in the swap cache (SwapCached)."""
    return len(k.swap.cache) if k.swap is not None else 0


# -- the swap cache ------------------------------------------------------------------------

def add_to_swap(k: Kernel, pfn: int) -> bool:
    """add_to_swap(): a slot for an order-0 anonymous folio, the folio into the swap cache
    (one reference) and dirty, so that pageout writes it; False when swap is full."""
    sw = k.swap
    assert sw is not None
    offset = get_swap_page(sw.si)
    if not offset:
        return False
    sw.cache[offset] = pfn
    sw.folio_swap[pfn] = offset
    k.memmap.refcount[pfn] += 1
    k.memmap.flags[pfn] |= np.uint16(PageFlag.DIRTY)
    return True


def delete_from_swap_cache(k: Kernel, pfn: int) -> None:
    """delete_from_swap_cache(): the folio leaves the swap cache and drops its reference
    (the last one frees it)."""
    sw = k.swap
    assert sw is not None
    offset = sw.folio_swap.pop(pfn)
    del sw.cache[offset]
    swapcache_clear(sw.si, offset)
    rmap.folio_put(k, pfn)


def folio_free_swap(k: Kernel, pfn: int) -> None:
    """folio_free_swap(): no swap entry refers to the slot any more, so the folio leaves
    the swap cache and is dirty again (its only copy is in memory now)."""
    sw = k.swap
    assert sw is not None
    offset = sw.folio_swap.get(pfn)
    if offset is None or sw.si.swap_map[offset]:
        return
    k.memmap.flags[pfn] |= np.uint16(PageFlag.DIRTY)
    delete_from_swap_cache(k, pfn)


def swap_writepage(k: Kernel, pfn: int) -> None:
    """pageout() -> swap_writepage(): the slot gets the page's contents (pswpout)."""
    sw = k.swap
    assert sw is not None
    offset = sw.folio_swap[pfn]
    phys = k.physmem
    words = phys.frame_words(pfn) if phys.is_stored(pfn) else None
    sw.si.data[offset] = (int(phys.touched[pfn]), words)
    k.memmap.flags[pfn] &= np.uint16(~PageFlag.DIRTY & 0xFFFF)
    k.vm_events[VmEvent.PSWPOUT] += 1


def swap_read_folio(k: Kernel, pfn: int, offset: int) -> None:
    """swap_read_folio(): the slot's contents into the new folio (pswpin)."""
    sw = k.swap
    assert sw is not None
    touched, words = sw.si.data.get(offset, (0, None))
    _restore(k, pfn, touched, words)
    k.vm_events[VmEvent.PSWPIN] += 1


def _restore(k: Kernel, pfn: int, touched: int, words: npt.NDArray[np.uint64] | None) -> None:
    phys = k.physmem
    if words is not None:
        phys.write_u64(pfn << 12, 0)                  # store the frame, then fill it
        phys.pool[int(phys.slot_of[pfn])] = words
    phys.touched[pfn] = touched


def free_swap_and_cache(k: Kernel, offset: int) -> None:
    """free_swap_and_cache(): a swap entry left a page table (zap); when only the swap
    cache holds the slot and no page table maps its folio, the folio goes too
    (__try_to_reclaim_swap with TTRS_UNMAPPED)."""
    sw = k.swap
    assert sw is not None
    swap_entry_put(sw.si, offset)
    pfn = sw.cache.get(offset)
    if pfn is None or sw.si.swap_map[offset]:
        return
    if not k.memmap.mapcount[pfn]:
        delete_from_swap_cache(k, pfn)


def copy_swap_entries(k: Kernel, src_mm: MmStruct, dst_mm: MmStruct,
                      src: npt.NDArray[np.uint64], child: npt.NDArray[np.uint64]) -> None:
    """copy_nonpresent_pte() for swap entries: the child gets each one (swap_duplicate,
    MM_SWAPENTS), and neither entry is exclusive any more (pte_swp_clear_exclusive in
    both page tables). ``src`` and ``child`` are PTE words, changed in place."""
    sw = k.swap
    assert sw is not None
    nonpresent = (src != 0) & ((src & np.uint64(pt._PAGE_PRESENT | pt._PAGE_PROTNONE)) == 0)
    count = int(nonpresent.sum())
    if not count:
        return
    for word in src[nonpresent].tolist():
        swap_duplicate(sw.si, pte_swp_offset(int(word)))
    clear = np.uint64(~_PAGE_SWP_EXCLUSIVE & ((1 << 64) - 1))
    src[nonpresent] &= clear
    child[nonpresent] = src[nonpresent]
    dst_mm.stat[MmStat.MM_SWAPENTS] += count


def zap_swap_entries(k: Kernel, mm: MmStruct, words: npt.NDArray[np.uint64]) -> None:
    """zap_nonpresent_ptes(): the swap entries among zapped PTE words leave MM_SWAPENTS and
    give their slots back."""
    nonpresent = (words != 0) & ((words & np.uint64(pt._PAGE_PRESENT | pt._PAGE_PROTNONE)) == 0)
    for word in words[nonpresent].tolist():
        mm.stat[MmStat.MM_SWAPENTS] -= 1
        free_swap_and_cache(k, pte_swp_offset(int(word)))


# -- swap-in ---------------------------------------------------------------------------------

def swap_cache_get_folio(k: Kernel, offset: int) -> int:
    """swap_cache_get_folio(): the cached folio or NO_PAGE; a hit on a folio readahead
    brought in counts a readahead hit (swapin_readahead_hits)."""
    sw = k.swap
    assert sw is not None
    pfn = sw.cache.get(offset, NO_PAGE)
    if pfn != NO_PAGE and k.memmap.flags[pfn] & _READAHEAD:
        k.memmap.flags[pfn] &= ~_READAHEAD
        sw.readahead_hits += 1
    return pfn


def swapin_nr_pages(sw: SwapSpace, offset: int) -> int:
    """swapin_nr_pages() / __swapin_nr_pages(): 2 + hits rounded up to a power of two (at
    least 4) with hits; with none, 2 for an offset next to the last one, else 1; never
    more than 2**page-cluster nor less than half the last window."""
    max_pages = 1 << PAGE_CLUSTER
    hits, sw.readahead_hits = sw.readahead_hits, 0
    pages = hits + 2
    if pages == 2:
        if offset not in (sw.prev_offset + 1, sw.prev_offset - 1):
            pages = 1
    else:
        roundup = 4
        while roundup < pages:
            roundup <<= 1
        pages = roundup
    pages = max(min(pages, max_pages), sw.last_readahead_pages // 2)
    if not hits:
        sw.prev_offset = offset
    sw.last_readahead_pages = pages
    return pages


def swap_cluster_readahead(k: Kernel, offset: int) -> None:
    """swap_cluster_readahead(): read the aligned window of swapin_nr_pages slots around
    ``offset`` (never the header, never past the file) into the swap cache; the pages
    other than ``offset`` are marked PG_readahead. Free or cached slots are skipped."""
    sw = k.swap
    assert sw is not None
    mask = swapin_nr_pages(sw, offset) - 1
    start, end = offset & ~mask, offset | mask
    start = max(start, 1)
    end = min(end, sw.si.max - 1)
    for slot in range(start, end + 1):
        if read_swap_cache_async(k, slot) and slot != offset:
            k.memmap.flags[sw.cache[slot]] |= _READAHEAD


def read_swap_cache_async(k: Kernel, offset: int) -> bool:
    """__read_swap_cache_async() + swap_read_folio(): a new folio for a slot in use that
    has none in the cache, charged to the memory cgroup; True if it was read."""
    sw = k.swap
    assert sw is not None
    if offset in sw.cache or not sw.si.swap_map[offset]:
        return False
    memcontrol.charge(k, 1)
    if offset in sw.cache or not sw.si.swap_map[offset]:   # reclaim ran meanwhile
        return False
    pfn = rmap.folio_alloc(k, 0)
    if pfn == NO_PAGE:
        return False
    k.memmap.flags[pfn] |= np.uint16(PageFlag.ANON)
    k.memmap.refcount[pfn] = 1                              # the swap cache's reference
    sw.cache[offset] = pfn
    sw.folio_swap[pfn] = offset
    sw.si.has_cache[offset] = True
    swap_read_folio(k, pfn, offset)
    memcontrol.lru_add(k, pfn, -1)
    return True


def do_swap_page(k: Kernel, mm: MmStruct, vma: Vma, vaddr: int, pte_paddr: int, pte: int,
                 flags: FaultFlags) -> VmFault:
    """do_swap_page(): map the folio of a swap PTE again. In the swap cache: a minor
    fault; else swap readahead reads it: VM_FAULT_MAJOR, pgmajfault. The PTE is writable
    when the page was exclusive (the swap PTE's exclusive bit) or only this mapping and
    the cache hold it, dirty on a write; a write on a shared one goes on to do_wp_page.
    The slot is let go when swap is over half full, the VMA is locked, or a write fault
    owns the folio alone (should_try_to_free_swap)."""
    sw = k.swap
    if sw is None:
        return VmFault.SIGSEGV           # no swap: what handle_pte_fault answered before
    offset = pte_swp_offset(pte)
    ret = VmFault.OK
    pfn = swap_cache_get_folio(k, offset)
    if pfn == NO_PAGE:
        swap_cluster_readahead(k, offset)
        pfn = sw.cache.get(offset, NO_PAGE)
        if pfn == NO_PAGE and read_swap_cache_async(k, offset):
            pfn = sw.cache[offset]
        if k.pgtables.read(pte_paddr) != pte:
            return VmFault.MAJOR             # reclaim changed the PTE: the access retries
        if pfn == NO_PAGE:
            return VmFault.OOM
        ret = VmFault.MAJOR
        k.vm_events[VmEvent.PGMAJFAULT] += 1
    memmap = k.memmap
    memmap.refcount[pfn] += 1
    rmap.folio_add_pte_rmap(k, pfn)
    memcontrol.lru_set_index(k, pfn, vma.pgoff + ((vaddr - vma.start) >> 12))
    mm.stat[MmStat.MM_ANONPAGES] += 1
    mm.stat[MmStat.MM_SWAPENTS] -= 1
    swap_entry_put(sw.si, offset)
    exclusive = pte_swp_exclusive(pte) or int(memmap.refcount[pfn]) == 2
    write = bool(flags & FaultFlags.WRITE)
    if vm_swap_full(sw.si) or vma.flags & VmFlags.LOCKED or \
            (write and int(memmap.refcount[pfn]) == 2):
        folio_free_swap(k, pfn)
    entry = mk_anon_pte(vma, pfn) & ~(pt._PAGE_RW | pt._PAGE_DIRTY)
    if exclusive:
        memmap.flags[pfn] |= np.uint16(PageFlag.ANON_EXCLUSIVE)
        if vma.flags & VmFlags.WRITE:
            entry |= pt._PAGE_RW | (pt._PAGE_DIRTY if write else 0)
    k.pgtables.set_entry(mm, pte_paddr, entry)
    flush_tlb_page(k, mm, vaddr)
    if write and not exclusive:
        from pagewalk.mm.memory import do_wp_page
        ret |= do_wp_page(k, mm, vma, vaddr, pte_paddr, entry)
    return ret
