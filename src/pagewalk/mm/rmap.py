"""Folio reference and mapping counts (mm/rmap.c, include/linux/mm.h folio_get/folio_put).

Each mapping of a page holds one reference (refcount) and one mapcount. Large folios
(THP, mTHP) keep their refcount on the head page; PMD mappings count in
``Kernel.entire_mapcount[head]``, PTE mappings in the per-page ``mapcount``.
NR_ANON_MAPPED / NR_ANON_THPS / NR_FILE_MAPPED change here, when a folio gains its
first or loses its last mapping (__folio_add_rmap / __folio_remove_rmap).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from pagewalk.mm import fastfault, memcontrol, page_alloc
from pagewalk.mm.page_alloc import PageFlag
from pagewalk.mm.types import AnonVma, Vma
from pagewalk.mm.vma import find_mergeable_anon_vma
from pagewalk.mm.vmstat import NodeStat, VmEvent

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel

HPAGE_PMD_NR = 512


def anon_vma_prepare(vma: Vma) -> None:
    """anon_vma_prepare() -> __anon_vma_prepare(): the first anonymous fault (through
    vmf_anon_prepare) gives the VMA an anon_vma, a neighbour's where
    find_mergeable_anon_vma() allows, else a new one."""
    if vma.anon_vma is None:
        anon_vma = find_mergeable_anon_vma(vma) or AnonVma()
        vma.anon_vma, vma.anon_vma_chain = anon_vma, (anon_vma,)


def folio_head(k: Kernel, pfn: int) -> int:
    """page_folio(): the head pfn of the folio containing ``pfn`` (compound_head)."""
    head = int(k.memmap.head[pfn])
    return pfn if head < 0 else head


_HEAD = int(PageFlag.HEAD)     # a plain int: IntFlag member lookups are slow in hot loops


def folio_order(k: Kernel, head: int) -> int:
    return int(k.memmap.order[head]) if int(k.memmap.flags[head]) & _HEAD else 0


def folio_alloc(k: Kernel, order: int, anon: bool = True) -> int:
    """vma_alloc_folio()/folio_prealloc(): a zeroed folio of 2**order pages, or -1
    (page_alloc.folio_alloc, the compiled fault path's too)."""
    return int(page_alloc.folio_alloc(k.pgtables.arrays, order))


def folio_get(k: Kernel, head: int, nr: int = 1) -> None:
    k.memmap.refcount[head] += nr


def folio_put(k: Kernel, head: int, nr: int = 1) -> None:
    """Drop references; the last one frees the folio (free_unref_folios)."""
    mm = k.memmap
    mm.refcount[head] -= nr
    assert mm.refcount[head] >= 0, f"folio {head:#x} refcount underflow"
    if mm.refcount[head] == 0:
        free_folio(k, head)


def free_folio(k: Kernel, head: int) -> None:
    order = folio_order(k, head)
    if k.memcg is not None:
        memcontrol.uncharge(k, head)
    if k.mlock_count:
        folio_clear_mlocked_on_free(k, head, order)
    k.physmem.drop_range(head, 1 << order)
    k.entire_mapcount.pop(head, None)
    k.deferred_split.discard(head)
    k.buddy.free_pages(head, order)


def folio_add_new_anon_rmap(k: Kernel, head: int, nr_pages: int, pmd_mapped: bool) -> None:
    """folio_add_new_anon_rmap(): a fresh anonymous folio, exclusive to one mm (the
    arrays: fastfault.new_anon_rmap, the compiled fault path's too)."""
    fastfault.new_anon_rmap(k.pgtables.arrays, head, nr_pages, pmd_mapped)
    if pmd_mapped:
        k.entire_mapcount[head] = 1


def folio_mapped_pages(k: Kernel, head: int) -> int:
    """How many pages of the folio are mapped at least once (for NR_*_MAPPED)."""
    mm = k.memmap
    order = folio_order(k, head)
    if k.entire_mapcount.get(head, 0) > 0:
        return 1 << order
    return int(np.count_nonzero(mm.mapcount[head: head + (1 << order)] > 0))


def folio_maybe_mapped_shared(k: Kernel, head: int) -> bool:
    """folio_maybe_mapped_shared(): some page of the folio is mapped more than once (PMD and
    PTE mappings count alike). A folio whose pages are mapped once each but by two mms is
    the callers' business: pagewalk keeps no mm ids."""
    entire = k.entire_mapcount.get(head, 0)
    pages = k.memmap.mapcount[head: head + (1 << folio_order(k, head))]
    return entire > 1 or bool(entire and pages.any()) or bool((pages > 1).any())


def folio_add_pte_rmap(k: Kernel, pfn: int) -> None:
    """folio_add_anon_rmap_pte()/folio_add_file_rmap_pte() for one more PTE mapping."""
    mm = k.memmap
    head = folio_head(k, pfn)
    was_mapped = mm.mapcount[pfn] > 0 or k.entire_mapcount.get(head, 0) > 0
    mm.mapcount[pfn] += 1
    if not was_mapped:
        _account_mapped(k, head, +1)


def folio_remove_pte_rmap(k: Kernel, pfn: int) -> None:
    """folio_remove_rmap_pte(): one PTE mapping of ``pfn`` is gone."""
    mm = k.memmap
    head = folio_head(k, pfn)
    assert mm.mapcount[pfn] > 0, f"page {pfn:#x} mapcount underflow"
    if folio_order(k, head) == 0:       # the compiled fault path's rule for order 0
        fastfault.remove_rmap_pte(k.pgtables.arrays, pfn)
        return
    mm.mapcount[pfn] -= 1
    if mm.mapcount[pfn] == 0 and k.entire_mapcount.get(head, 0) == 0:
        _account_mapped(k, head, -1)
        # An anonymous large folio that lost part of its mappings goes on the deferred split
        # queue (deferred_split_folio(folio, true)); thp_deferred_split_page counts it once.
        if folio_order(k, head) and folio_mapped_pages(k, head) and \
                mm.flags[head] & PageFlag.ANON:
            _deferred_split_folio(k, head)


def folio_add_pmd_rmap(k: Kernel, head: int) -> None:
    """folio_add_anon_rmap_pmd(): one more PMD mapping (fork's copy_huge_pmd)."""
    k.entire_mapcount[head] = k.entire_mapcount.get(head, 0) + 1


def folio_add_file_rmap_pmd(k: Kernel, head: int) -> None:
    """folio_add_file_rmap_pmd(): a page-cache THP mapped by one more PMD; its pages not
    mapped before count in NR_FILE_MAPPED."""
    before = folio_mapped_pages(k, head)
    entire = k.entire_mapcount.get(head, 0)
    k.entire_mapcount[head] = entire + 1
    k.node_stat[NodeStat.NR_FILE_MAPPED] += HPAGE_PMD_NR - before
    if not entire:                                  # __folio_add_rmap: nr_pmdmapped
        k.node_stat[NodeStat.NR_SHMEM_PMDMAPPED if k.memmap.flags[head] & PageFlag.SHMEM
                    else NodeStat.NR_FILE_PMDMAPPED] += HPAGE_PMD_NR


def folio_remove_pmd_rmap(k: Kernel, head: int) -> None:
    """folio_remove_rmap_pmd(): a PMD mapping is gone (zap or split)."""
    count = k.entire_mapcount.get(head, 0) - 1
    assert count >= 0
    k.entire_mapcount[head] = count
    if count == 0 and not k.memmap.flags[head] & PageFlag.ANON:
        still = int(np.count_nonzero(k.memmap.mapcount[head: head + HPAGE_PMD_NR] > 0))
        k.node_stat[NodeStat.NR_FILE_MAPPED] -= HPAGE_PMD_NR - still
        k.node_stat[NodeStat.NR_SHMEM_PMDMAPPED if k.memmap.flags[head] & PageFlag.SHMEM
                    else NodeStat.NR_FILE_PMDMAPPED] -= HPAGE_PMD_NR
        return
    if count == 0:
        k.node_stat[NodeStat.NR_ANON_THPS] -= HPAGE_PMD_NR
        mm = k.memmap
        order = folio_order(k, head)
        still = int(np.count_nonzero(mm.mapcount[head: head + (1 << order)] > 0))
        k.node_stat[NodeStat.NR_ANON_MAPPED] -= (1 << order) - still
        k.node_stat[NodeStat.NR_ACTIVE_ANON] -= (1 << order) - still
        if 0 < still < 1 << order:       # __folio_remove_rmap(): partially_mapped
            _deferred_split_folio(k, head)


def _account_mapped(k: Kernel, head: int, delta: int) -> None:
    flags = int(k.memmap.flags[head])
    if flags & PageFlag.ANON:
        k.node_stat[NodeStat.NR_ANON_MAPPED] += delta
        k.node_stat[NodeStat.NR_ACTIVE_ANON] += delta
    else:
        k.node_stat[NodeStat.NR_FILE_MAPPED] += delta


def _deferred_split_folio(k: Kernel, head: int) -> None:
    # mm/rmap.c and mm/huge_memory.c call each other (huge_memory maps folios through
    # rmap; rmap queues partly unmapped ones for huge_memory's deferred split): this
    # direction imports at call time, which is rare (a large folio partly unmapped).
    from pagewalk.mm.huge_memory import deferred_split_folio
    deferred_split_folio(k, head)


def folio_clear_mlocked_on_free(k: Kernel, head: int, order: int) -> None:
    """__page_cache_release()/folios_put_refs(): a folio freed while still PG_mlocked
    (its locked VMA lost VM_LOCKED without munlocking it, as MREMAP_DONTUNMAP leaves the
    old VMA) leaves NR_MLOCK and the unevictable list: unevictable_pgs_cleared."""
    if k.mlock_count.pop(head, None) is None:
        return
    nr = 1 << order
    k.node_stat[NodeStat.NR_MLOCK] -= nr
    k.node_stat[NodeStat.NR_UNEVICTABLE] -= nr
    k.vm_events[VmEvent.UNEVICTABLE_PGCLEARED] += nr
