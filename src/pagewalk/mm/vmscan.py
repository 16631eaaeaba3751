"""Page reclaim of anonymous memory (mm/vmscan.c, mm/rmap.c try_to_unmap_one and
folio_referenced_one).

The classic two-list LRU of one memory cgroup (memcontrol.MemCgroup: inactive and active,
oldest first). Direct reclaim (try_to_free_mem_cgroup_pages -> shrink_lruvec) takes
SWAP_CLUSTER_MAX folios at a time from the oldest end of the inactive list, keeps the
inactive list at least as long as the active one (inactive_is_low, ratio 1 under 1 GiB),
and asks each folio folio_check_references: a young PTE (the hardware's accessed bit,
read and cleared through rmap) sends it round once more and sets PG_referenced, a second
reference activates it. The rest go to shrink_folio_list: add_to_swap, try_to_unmap
(swap PTEs in every page table that maps the folio), pageout when dirty (pswpout), and a
clean, unmapped swap-cache folio is freed. Writeback completes later
(folio_end_writeback -> folio_rotate_reclaimable puts the folio at the oldest end),
so a later reclaim frees what this one wrote, once WRITEBACK_INFLIGHT_PAGES newer folios
are under writeback. MADV_PAGEOUT uses shrink_folio_list too
(reclaim_pages, references ignored).
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from math import isqrt
from typing import TYPE_CHECKING

import numpy as np

from pagewalk.hw import pgtable_types as pt
from pagewalk.mm import huge_memory, memcontrol, rmap, swap_state
from pagewalk.mm.page_alloc import PageFlag
from pagewalk.mm.swapfile import _PAGE_SWP_EXCLUSIVE, swap_duplicate, swp_entry_to_pte
from pagewalk.mm.tlb import flush_tlb_page
from pagewalk.mm.types import MmStat, MmStruct, Vma, VmFlags
from pagewalk.mm.vmstat import VmEvent

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel
    from pagewalk.mm.memcontrol import MemCgroup

SWAP_CLUSTER_MAX = 32
# Swap writeback in flight while the charging task reclaims: written folios stay charged
# until this many later ones were written. Not derived from the kernel: calibrated so
# that RSS under a limit lands where the reference machine's did (1.5 MiB of a 64 MiB
# cgroup held by swap-cache folios, docs/differences.md "Memory pressure").
WRITEBACK_INFLIGHT_PAGES = 384
FOLIOREF_RECLAIM, FOLIOREF_KEEP, FOLIOREF_ACTIVATE = 0, 1, 2
FOLIOREF_MLOCKED = 3     # FOLIOREF_ACTIVATE of a VM_LOCKED mapping: mlocked, not counted
_EXCL = np.uint16(PageFlag.ANON_EXCLUSIVE)


# -- rmap --------------------------------------------------------------------------------------

def _pmds_at(k: Kernel, index: int) -> Iterator[tuple[MmStruct, Vma, int, int, int]]:
    """rmap_walk_anon()'s visit: (mm, vma, vma_address(index), PMD address, PMD) in each
    anonymous VMA of each task that covers linear page ``index`` and has a PMD there."""
    pgt = k.pgtables
    for task in list(k.tasks.values()):
        mm = task.mm
        for vma in mm.vmas:
            if vma.anon_vma is None or not vma.pgoff <= index < vma.pgoff + (vma.length >> 12):
                continue
            vaddr = vma.start + ((index - vma.pgoff) << 12)
            pmd_paddr, shift = pgt.walk(mm, vaddr, 21, alloc=False)
            if shift == 21:
                yield mm, vma, vaddr, pmd_paddr, pgt.read(pmd_paddr)


def anon_rmap_walk(k: Kernel, pfn: int,
                   index: int) -> Iterator[tuple[MmStruct, Vma, int, int, int]]:
    """rmap_walk_anon(): (mm, vma, vaddr, PTE address, PTE) of every PTE mapping ``pfn``, found
    at vma_address(index) in each anonymous VMA of each task that covers the index."""
    if index < 0:
        return
    for mm, vma, vaddr, _, pmd in _pmds_at(k, index):
        if not pmd or pmd & pt._PAGE_PSE:
            continue
        pte_paddr = (pt.pte_pfn(pmd) << 12) + ((vaddr >> 12) & 511) * 8
        pte = k.pgtables.read(pte_paddr)
        if pte & pt._PAGE_PRESENT and not pte & pt._PAGE_SPECIAL and pt.pte_pfn(pte) == pfn:
            yield mm, vma, vaddr, pte_paddr, pte


def thp_rmap_walk(k: Kernel, head: int, index: int) -> Iterator[tuple[MmStruct, Vma, int, int]]:
    """rmap_walk_anon() of a THP whose page 0 has linear index ``index``: (mm, vma, address,
    PMD address) of every VMA where a huge PMD maps it, or where PTEs do (PMD address -1)."""
    for mm, vma, vaddr, pmd_paddr, pmd in _pmds_at(k, index):
        if pmd & pt._PAGE_PSE and pt.huge_pfn(pmd, 21) == head:
            yield mm, vma, vaddr, pmd_paddr
        elif pmd and not pmd & pt._PAGE_PSE:
            pte = k.pgtables.read((pt.pte_pfn(pmd) << 12) + ((vaddr >> 12) & 511) * 8)
            if pte & pt._PAGE_PRESENT and pt.pte_pfn(pte) == head:
                yield mm, vma, vaddr, -1


def folio_referenced(k: Kernel, pfn: int, index: int) -> tuple[int, bool]:
    """folio_referenced(): how many PTEs (a THP: PMDs) mapping the folio were young; their
    accessed bits are cleared (ptep/pmdp_clear_flush_young: no TLB flush on x86). And
    whether a VM_LOCKED VMA maps it (folio_referenced_one stops there: it is mlocked)."""
    young = 0
    memcg = k.memcg
    if memcg is not None and pfn in memcg.thp:
        for mm, vma, _, pmd_paddr in list(thp_rmap_walk(k, pfn, index)):
            if vma.flags & VmFlags.LOCKED:
                return young, True
            pmd = k.pgtables.read(pmd_paddr) if pmd_paddr >= 0 else 0
            if pmd & pt._PAGE_ACCESSED:
                young += 1
                k.pgtables.set_entry(mm, pmd_paddr, pmd & ~pt._PAGE_ACCESSED)
        return young, False
    for mm, vma, _, pte_paddr, pte in list(anon_rmap_walk(k, pfn, index)):
        if vma.flags & VmFlags.LOCKED:
            return young, True
        if pte & pt._PAGE_ACCESSED:
            young += 1
            k.pgtables.set_entry(mm, pte_paddr, pte & ~pt._PAGE_ACCESSED)
    return young, False


def try_to_unmap(k: Kernel, pfn: int, index: int) -> bool:
    """try_to_unmap() -> try_to_unmap_one() of a swap-cache folio: each PTE becomes its swap
    entry (one more swap count each, exclusive bit from PageAnonExclusive), a dirty PTE
    dirties the folio, RSS moves to MM_SWAPENTS. True when no mapping is left."""
    sw = k.swap
    assert sw is not None
    offset = sw.folio_swap[pfn]
    memmap = k.memmap
    for mm, _, vaddr, pte_paddr, pte in list(anon_rmap_walk(k, pfn, index)):
        entry = swp_entry_to_pte(0, offset)
        if memmap.flags[pfn] & _EXCL:
            entry |= _PAGE_SWP_EXCLUSIVE
            memmap.flags[pfn] &= ~_EXCL
        if pte & pt._PAGE_DIRTY:
            memmap.flags[pfn] |= np.uint16(PageFlag.DIRTY)
        swap_duplicate(sw.si, offset)
        k.pgtables.set_entry(mm, pte_paddr, entry)
        flush_tlb_page(k, mm, vaddr)
        mm.stat[MmStat.MM_ANONPAGES] -= 1
        mm.stat[MmStat.MM_SWAPENTS] += 1
        rmap.folio_remove_pte_rmap(k, pfn)
        rmap.folio_put(k, pfn)
    return not memmap.mapcount[pfn]


# -- shrink_folio_list -------------------------------------------------------------------------

def split_thp_to_list(k: Kernel, head: int, index: int) -> list[tuple[int, int]] | None:
    """shrink_folio_list() on a THP: the rotational swap device has no clusters, so
    add_to_swap() fails and the folio is split (thp_swpout_fallback; a PMD mapping is
    split first, thp_split_pmd): its order-0 pages ``(pfn, index)`` join the list being
    reclaimed. None where it cannot be split (mapped by more than one VMA, pinned)."""
    maps = list(thp_rmap_walk(k, head, index))
    if len(maps) != 1 or not huge_memory.can_split_folio(k, head):
        return None
    mm, vma, vaddr, pmd_paddr = maps[0]
    if pmd_paddr >= 0:
        huge_memory.split_huge_pmd(k, mm, vma, pmd_paddr, vaddr)
    if not huge_memory.split_folio(k, mm, vma, head, vaddr):
        return None
    k.vm_events[VmEvent.THP_SWPOUT_FALLBACK] += 1
    return [(head + i, index + i) for i in range(huge_memory.HPAGE_PMD_NR)
            if k.memmap.refcount[head + i] > 0]


def shrink_folio_list(k: Kernel, folios: list[tuple[int, int]],
                      written: list[int]) -> tuple[int, list[int]]:
    """shrink_folio_list() for anonymous folios ``(pfn, index)``: returns how many pages
    were freed and the folios that could not be swapped (to activate); the pages paged
    out now are appended to ``written`` (under writeback: kept). A THP is split first."""
    freed = 0
    failed: list[int] = []
    sw = k.swap
    memcg = k.memcg
    folios = list(folios)
    for pfn, index in folios:
        if memcg is not None and pfn in memcg.thp:
            pages = split_thp_to_list(k, pfn, index) if sw is not None else None
            if pages is None:
                failed.append(pfn)
            else:
                folios.extend(pages)      # the loop goes on over them
            continue
        if sw is None or (pfn not in sw.folio_swap and not swap_state.add_to_swap(k, pfn)):
            failed.append(pfn)                # activate_locked: no swap space
            continue
        if k.memmap.mapcount[pfn] and not try_to_unmap(k, pfn, index):
            failed.append(pfn)
            continue
        if k.memmap.flags[pfn] & PageFlag.DIRTY:
            swap_state.swap_writepage(k, pfn)   # pageout(): PAGE_SUCCESS, under writeback
            written.append(pfn)
            continue
        swap_state.delete_from_swap_cache(k, pfn)   # __remove_mapping(): the last reference
        freed += 1
    return freed, failed


def reclaim_pages(k: Kernel, folios: list[tuple[int, int]]) -> None:
    """reclaim_pages() for MADV_PAGEOUT: shrink_folio_list with references ignored."""
    shrink_folio_list(k, folios, [])


# -- memory cgroup reclaim -----------------------------------------------------------------

def inactive_is_low(memcg: MemCgroup) -> bool:
    """inactive_is_low(): inactive * inactive_ratio < active, the ratio sqrt(10 * GiB) of
    the lists' size (1 below 1 GiB)."""
    inactive, active = len(memcg.inactive), len(memcg.active)
    gb = (inactive + active) >> 18
    ratio = isqrt(10 * gb) if gb else 1
    return inactive * ratio < active


def shrink_active_list(k: Kernel, memcg: MemCgroup, nr_to_scan: int) -> None:
    """shrink_active_list(): the oldest active folios go to the young end of the inactive
    list, their accessed bits cleared (anonymous folios are never kept active)."""
    for pfn in list(islice(memcg.active, nr_to_scan)):     # the oldest, without copying all
        index = memcg.active.pop(pfn)
        folio_referenced(k, pfn, index)
        memcg.inactive[pfn] = index
        k.vm_events[VmEvent.PGDEACTIVATE] += _nr_pages(memcg, pfn)


def folio_check_references(k: Kernel, memcg: MemCgroup, pfn: int, index: int) -> int:
    """folio_check_references(): young PTEs set PG_referenced and keep the folio, or
    activate it when it was referenced before or is young in more than one page table."""
    referenced_ptes, mlocked = folio_referenced(k, pfn, index) if k.memmap.mapcount[pfn] \
        else (0, False)
    if mlocked:
        return FOLIOREF_MLOCKED
    referenced_folio = pfn in memcg.referenced
    memcg.referenced.discard(pfn)
    if referenced_ptes:
        memcg.referenced.add(pfn)
        if referenced_folio or referenced_ptes > 1:
            return FOLIOREF_ACTIVATE
        return FOLIOREF_KEEP
    return FOLIOREF_RECLAIM


def _valid(k: Kernel, memcg: MemCgroup, pfn: int) -> bool:
    """Still a charged anonymous folio: order 0, or a THP's head where the entry is one
    (a stale LRU entry is dropped)."""
    flags = int(k.memmap.flags[pfn])
    large = PageFlag.HEAD if pfn in memcg.thp else 0
    return bool(flags & PageFlag.ANON) and flags & (PageFlag.BUDDY | PageFlag.HEAD |
                                                   PageFlag.TAIL) == large \
        and int(k.memmap.refcount[pfn]) > 0


def _nr_pages(memcg: MemCgroup, pfn: int) -> int:
    return memcontrol.HPAGE_PMD_NR if pfn in memcg.thp else 1


def _isolate_lru_folios(memcg: MemCgroup) -> tuple[list[tuple[int, int]], int]:
    """isolate_lru_folios(): the oldest inactive folios until SWAP_CLUSTER_MAX pages are
    taken (a THP counts its HPAGE_PMD_NR pages: it is a batch alone), and their pages."""
    batch: list[tuple[int, int]] = []
    pages = 0
    for pfn, index in islice(memcg.inactive.items(), SWAP_CLUSTER_MAX):
        batch.append((pfn, index))
        pages += _nr_pages(memcg, pfn)
        if pages >= SWAP_CLUSTER_MAX:
            break
    return batch, pages


def try_to_free_mem_cgroup_pages(k: Kernel, nr_to_reclaim: int) -> int:
    """try_to_free_mem_cgroup_pages() -> shrink_lruvec(): scan the inactive list oldest
    first, SWAP_CLUSTER_MAX at a time, until ``nr_to_reclaim`` folios were freed or written,
    or every folio was looked at twice. Returns that progress."""
    memcg = k.memcg
    assert memcg is not None
    # can_reclaim_anon_pages(): with no free swap slot get_scan_count() scans no anon LRU
    if k.swap is None or k.swap.si.nr_free <= 0:
        return 0
    progress = 0
    scanned = 0
    budget = 2 * (len(memcg.inactive) + len(memcg.active)) + SWAP_CLUSTER_MAX
    written: list[int] = []
    while progress < nr_to_reclaim and scanned < budget:
        if inactive_is_low(memcg):
            shrink_active_list(k, memcg, SWAP_CLUSTER_MAX)
        batch, pages = _isolate_lru_folios(memcg)
        if not batch:
            break
        scanned += len(batch)
        k.vm_events[VmEvent.PGSCAN_ANON] += pages
        to_reclaim: list[tuple[int, int]] = []
        for pfn, index in batch:
            if not _valid(k, memcg, pfn):
                memcontrol.uncharge(k, pfn)
                continue
            if pfn in k.mlock_count:          # folio_test_mlocked(): culled, never reclaimed
                memcontrol.lru_mlock(k, pfn)
                continue
            ref = folio_check_references(k, memcg, pfn, index)
            if ref == FOLIOREF_RECLAIM:
                to_reclaim.append((pfn, index))
                continue
            memcg.inactive.pop(pfn)
            (memcg.inactive if ref == FOLIOREF_KEEP else memcg.active)[pfn] = index
            if ref == FOLIOREF_ACTIVATE:
                k.vm_events[VmEvent.PGACTIVATE] += _nr_pages(memcg, pfn)
        before = len(written)
        freed, failed = shrink_folio_list(k, to_reclaim, written)
        k.vm_events[VmEvent.PGSTEAL_ANON] += freed
        for pfn in failed:                        # activate_locked
            if pfn in memcg.inactive:
                k.vm_events[VmEvent.PGACTIVATE] += _nr_pages(memcg, pfn)
                memcg.active[pfn] = memcg.inactive.pop(pfn)
        for pfn in written[before:]:              # under writeback: kept, at the young end
            if pfn in memcg.inactive:
                memcg.inactive.move_to_end(pfn)
        progress += freed + len(written) - before
    memcg.writeback.extend(written)
    while len(memcg.writeback) > WRITEBACK_INFLIGHT_PAGES:
        pfn = memcg.writeback.popleft()           # folio_end_writeback() ->
        if pfn in memcg.inactive:                 # folio_rotate_reclaimable()
            memcg.inactive.move_to_end(pfn, last=False)
    return progress
