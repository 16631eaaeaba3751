"""User accesses over a range (the `touch` step): the reference loop and the compiled one.

``touch_reference`` sends every access through Kernel.user_access (MMU, TLB, page walk,
do_user_addr_fault, handle_mm_fault): the readable path, and the definition of what the
compiled loop must do.

``touch`` runs the common case in one Numba loop over the simulated physical memory
arrays (STYLE rule 12): per access it walks the page tables as the MMU does (setting A/D),
and on a page fault it does what the kernel's path does for a private anonymous VMA
without a THP decision pending: allocate missing page tables (p4d/pud/pmd/pte_alloc),
map the zero page on a read, a new zeroed page on a write (do_anonymous_page), replace
a zero-page PTE on a write (wp_page_copy), reuse an exclusive anonymous page
(wp_page_reuse), bump the same counters (RSS, pgtables_bytes, NR_*, PGFAULT, min_flt).
It stops and hands back to Python at the first access that needs anything else: a
huge PMD or a THP-eligible empty PMD, a COW copy of a shared page, a permission problem,
an allocation failure, a VMA edge. Tests check both paths leave identical state.
The TLBs are flushed (for this mm's PCIDs) before the compiled loop runs, so the loop
works with an empty TLB view; it does not fill the TLBs (documented in docs/differences.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numba import njit

from pagewalk.hw import pgtable_types as pt
from pagewalk.mm import huge_memory
from pagewalk.mm.page_alloc import free_one_page, rmqueue_smallest  # noqa: F401 (jitted)
from pagewalk.mm.page_alloc import PageFlag
from pagewalk.mm.types import VmFlags
from pagewalk.mm.vma import find_vma

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel
    from pagewalk.kernel.task import Task

# Stop reasons of the compiled loop.
DONE = 0
NEED_SLOW = 1   # this access needs the Python path
NEED_SLOTS = 2  # the physmem row pool must grow first

P = np.uint64(pt._PAGE_PRESENT)
RW = np.uint64(pt._PAGE_RW)
US = np.uint64(pt._PAGE_USER)
ACC = np.uint64(pt._PAGE_ACCESSED)
DIRTY = np.uint64(pt._PAGE_DIRTY)
PSE = np.uint64(pt._PAGE_PSE)
SPECIAL = np.uint64(pt._PAGE_SPECIAL)
TABLE = np.uint64(pt._PAGE_TABLE)
PFN_MASK = np.uint64(pt.PTE_PFN_MASK)
F_ANON = np.uint16(PageFlag.ANON)
F_EXCL = np.uint16(PageFlag.ANON_EXCLUSIVE)
F_TABLE = np.uint16(PageFlag.TABLE)
F_DIRTY = np.uint16(PageFlag.DIRTY)
F_LAZY = np.uint16(PageFlag.LAZYFREE)
F_HEAD = np.uint16(PageFlag.HEAD)
F_TAIL = np.uint16(PageFlag.TAIL)
HPAGE_PMD_NR = 512

# Indexes into the small parameter/counter arrays (kept in step with mm/vmstat.py, mm/types.py).
NR_FREE_PAGES, NR_ANON_MAPPED, NR_ANON_THPS, NR_PAGETABLE, NR_ACTIVE_ANON = 0, 1, 5, 6, 10
PGALLOC_BASE, PGFAULT, THP_FAULT_ALLOC, PGREUSE = 0, 4, 6, 42
NEED_DRAIN = 3  # the THP record buffer is full
MM_ANONPAGES, PGTABLES_BYTES = 1, 4


@njit(cache=True)
def _alloc_page(flags, order_of, next_, prev, free_head, nr_free, zonelist, node_stat,
                vm_events, refcount, order=0):
    """alloc_pages(order) over the zonelist; -1 when every zone is empty."""
    for i in range(zonelist.shape[0]):
        zone = zonelist[i]
        pfn = rmqueue_smallest(flags, order_of, next_, prev, free_head, nr_free, zone, order)
        if pfn >= 0:
            node_stat[NR_FREE_PAGES] -= 1 << order
            vm_events[PGALLOC_BASE + zone] += 1 << order
            refcount[pfn] = 1
            return pfn
    return -1


@njit(cache=True)
def _store_table(slot_of, pool, free_slots, nr_free_slots, pfn):
    """Give a new page-table frame a zeroed row in the physmem pool."""
    top = nr_free_slots[0] - 1
    slot = free_slots[top]
    nr_free_slots[0] = top
    pool[slot, :] = 0
    slot_of[pfn] = slot


@njit(cache=True)
def touch_kernel(start, count, stride, write, levels, root_pfn, vma_flags_ok_write,
                 thp_pmd_allowed, anon_faults, page_prot, zero_pfn, vma_start, vma_end,
                 slot_of, pool, free_slots, nr_free_slots,
                 flags, order_of, refcount, mapcount, head_of, next_, prev, free_head, nr_free,
                 zonelist, node_stat, vm_events, mm_stat, out, records):
    """Accesses ``start + i * stride`` for i in [out[0], count). Returns a stop reason;
    out[0] is the index of the next access, out[1] counts faults, out[2] is 1 once a
    write fault allocated an anonymous page (the VMA needs its anon_vma); out[3] counts the
    THPs mapped, each recorded in ``records`` as (PMD entry paddr, deposited table, folio)
    for Python to enter into Kernel.deposit and Kernel.entire_mapcount."""
    shift0 = 39 if levels == 4 else 48
    i = out[0]
    while i < count:
        vaddr = start + i * stride
        if nr_free_slots[0] < levels + 1:
            out[0] = i
            return NEED_SLOTS
        # --- the hardware walk (SDM §4.5), allocating on the kernel's fault path -----------
        table = root_pfn
        shift = shift0
        faulted = False
        while True:
            slot = slot_of[table]
            index = (vaddr >> shift) & 511
            entry = pool[slot, index] if slot >= 0 else np.uint64(0)
            if shift == 12:
                break
            if entry & PSE:                      # a 2 MiB / 1 GiB leaf
                if entry & P and (not write or entry & RW):
                    new_leaf = entry | ACC | (DIRTY if write else np.uint64(0))
                    if new_leaf != entry:
                        pool[slot, index] = new_leaf
                    break
                out[0] = i
                return NEED_SLOW                 # huge PMD fault: THP or hugetlb paths
            if entry == 0 and not anon_faults:
                out[0] = i
                return NEED_SLOW                 # only private anonymous faults are inlined
            if entry == 0 and shift == 21 and thp_pmd_allowed:
                haddr = vaddr & ~(HPAGE_PMD_NR * 4096 - 1)
                if haddr >= vma_start and haddr + HPAGE_PMD_NR * 4096 <= vma_end:
                    if not write or out[3] >= records.shape[0]:
                        out[0] = i
                        return NEED_SLOW if not write else NEED_DRAIN  # huge zero page: Python
                    # do_huge_pmd_anonymous_page -> __do_huge_pmd_anonymous_page
                    folio = _alloc_page(flags, order_of, next_, prev, free_head, nr_free,
                                        zonelist, node_stat, vm_events, refcount, 9)
                    if folio < 0:
                        out[0] = i
                        return NEED_SLOW             # fallback / compaction: Python decides
                    deposit = _alloc_page(flags, order_of, next_, prev, free_head, nr_free,
                                          zonelist, node_stat, vm_events, refcount, 0)
                    if deposit < 0:
                        out[0] = i
                        return NEED_SLOW
                    _store_table(slot_of, pool, free_slots, nr_free_slots, deposit)
                    flags[deposit] |= F_TABLE
                    node_stat[NR_PAGETABLE] += 1
                    mm_stat[PGTABLES_BYTES] += 4096
                    _new_anon_thp(folio, flags, order_of, head_of, slot_of, free_slots,
                                  nr_free_slots, node_stat, mm_stat)
                    pool[slot, index] = (np.uint64(folio) << np.uint64(12)) | page_prot | PSE | \
                        ACC | DIRTY | (RW if vma_flags_ok_write else np.uint64(0))
                    r = out[3]
                    records[r, 0] = (np.int64(table) << 12) + index * 8
                    records[r, 1] = deposit
                    records[r, 2] = folio
                    out[3] = r + 1
                    vm_events[THP_FAULT_ALLOC] += 1
                    out[1] += 1
                    out[2] = 1
                    vm_events[PGFAULT] += 1
                    faulted = False
                    break
            if entry == 0:
                if not faulted:
                    faulted = True
                new = _alloc_page(flags, order_of, next_, prev, free_head, nr_free, zonelist,
                                  node_stat, vm_events, refcount)
                if new < 0:
                    out[0] = i
                    return NEED_SLOW
                _store_table(slot_of, pool, free_slots, nr_free_slots, new)
                flags[new] |= F_TABLE
                node_stat[NR_PAGETABLE] += 1
                if shift != 48:                  # a P4D table has no VmPTE counter
                    mm_stat[PGTABLES_BYTES] += 4096
                entry = (np.uint64(new) << np.uint64(12)) | TABLE
                pool[slot, index] = entry
            elif not entry & ACC:
                pool[slot, index] = entry | ACC
            table = np.int64((entry & PFN_MASK) >> np.uint64(12))
            shift -= 9
        if shift != 12:                          # translated by a huge leaf (or a new THP)
            if faulted:
                out[1] += 1
                vm_events[PGFAULT] += 1
            i += 1
            continue
        # shift == 12: the PTE itself, at pool[slot, index] of PTE table ``table``.
        slot = slot_of[table]
        index = (vaddr >> 12) & 511
        pte = pool[slot, index]
        if pte & P and (not write or pte & RW):
            new_pte = pte | ACC | (DIRTY if write else np.uint64(0))
            if new_pte != pte:
                pool[slot, index] = new_pte
            if faulted:                          # a table was allocated: a counted fault
                out[1] += 1
                vm_events[PGFAULT] += 1
            i += 1
            continue
        if (write and not vma_flags_ok_write) or not anon_faults:
            out[0] = i
            return NEED_SLOW                     # SIGSEGV, or a fault of another kind of VMA
        if pte == 0:
            if not write:                        # do_anonymous_page: the zero page
                pool[slot, index] = (np.uint64(zero_pfn) << np.uint64(12)) | page_prot | SPECIAL | ACC
            else:                                # do_anonymous_page: a new page
                pfn = _alloc_page(flags, order_of, next_, prev, free_head, nr_free, zonelist,
                                  node_stat, vm_events, refcount)
                if pfn < 0:
                    out[0] = i
                    return NEED_SLOW
                _new_anon_page(pfn, flags, mapcount, slot_of, free_slots, nr_free_slots,
                               node_stat, mm_stat)
                pool[slot, index] = (np.uint64(pfn) << np.uint64(12)) | page_prot | ACC | DIRTY | RW
                out[2] = 1
        elif not pte & P:
            out[0] = i
            return NEED_SLOW                     # PROT_NONE or another non-present entry
        elif pte & SPECIAL:                      # wp_page_copy from the zero page
            if (pte & PFN_MASK) >> np.uint64(12) != np.uint64(zero_pfn):
                out[0] = i
                return NEED_SLOW
            pfn = _alloc_page(flags, order_of, next_, prev, free_head, nr_free, zonelist,
                              node_stat, vm_events, refcount)
            if pfn < 0:
                out[0] = i
                return NEED_SLOW
            _new_anon_page(pfn, flags, mapcount, slot_of, free_slots, nr_free_slots,
                           node_stat, mm_stat)
            pool[slot, index] = (np.uint64(pfn) << np.uint64(12)) | page_prot | ACC | DIRTY | RW
            out[2] = 1
        else:
            pfn = np.int64((pte & PFN_MASK) >> np.uint64(12))
            small = not flags[pfn] & (F_HEAD | F_TAIL)
            if not flags[pfn] & F_ANON or not (small or flags[pfn] & F_EXCL):
                out[0] = i
                return NEED_SLOW                 # file pages, large folios: Python decides
            if flags[pfn] & F_EXCL or refcount[pfn] == 1:   # wp_can_reuse_anon_folio
                flags[pfn] |= F_EXCL
                flags[pfn] &= ~F_LAZY
                pool[slot, index] = pte | RW | DIRTY | ACC
                vm_events[PGREUSE] += 1
            else:                                # wp_page_copy of a shared order-0 page
                new = _alloc_page(flags, order_of, next_, prev, free_head, nr_free, zonelist,
                                  node_stat, vm_events, refcount)
                if new < 0:
                    out[0] = i
                    return NEED_SLOW
                _new_anon_page(new, flags, mapcount, slot_of, free_slots, nr_free_slots,
                               node_stat, mm_stat)
                mm_stat[MM_ANONPAGES] -= 1       # an anonymous page replaces another
                old_slot = slot_of[pfn]
                if old_slot >= 0:                # copy_user_highpage(): the data moves along
                    _store_table(slot_of, pool, free_slots, nr_free_slots, new)
                    pool[slot_of[new], :] = pool[old_slot, :]
                pool[slot, index] = (np.uint64(new) << np.uint64(12)) | page_prot | ACC | DIRTY | RW
                mapcount[pfn] -= 1               # folio_remove_rmap_pte + folio_put
                if mapcount[pfn] == 0:
                    node_stat[NR_ANON_MAPPED] -= 1
                    node_stat[NR_ACTIVE_ANON] -= 1
                refcount[pfn] -= 1
                if refcount[pfn] == 0:
                    out[0] = i
                    return NEED_SLOW             # cannot happen for a shared page; be safe
        out[1] += 1
        vm_events[PGFAULT] += 1
        i += 1
    out[0] = i
    return DONE


@njit(cache=True)
def _new_anon_page(pfn, flags, mapcount, slot_of, free_slots, nr_free_slots, node_stat, mm_stat):
    """folio_add_new_anon_rmap() + add_mm_counter(MM_ANONPAGES) for an order-0 folio."""
    slot = slot_of[pfn]
    if slot >= 0:                                # __GFP_ZERO: forget old contents
        slot_of[pfn] = -1
        free_slots[nr_free_slots[0]] = slot
        nr_free_slots[0] += 1
    flags[pfn] |= F_ANON | F_EXCL | F_DIRTY
    mapcount[pfn] = 1
    node_stat[NR_ANON_MAPPED] += 1
    node_stat[NR_ACTIVE_ANON] += 1
    mm_stat[MM_ANONPAGES] += 1


@njit(cache=True)
def _new_anon_thp(folio, flags, order_of, head_of, slot_of, free_slots, nr_free_slots,
                  node_stat, mm_stat):
    """folio_alloc(order 9) + map_anon_folio_pmd(): flags, counters (not the rmap dicts)."""
    for page in range(folio, folio + HPAGE_PMD_NR):
        slot = slot_of[page]
        if slot >= 0:
            slot_of[page] = -1
            free_slots[nr_free_slots[0]] = slot
            nr_free_slots[0] += 1
        flags[page] |= F_ANON | F_EXCL
        if page != folio:
            flags[page] |= F_TAIL
            head_of[page] = folio
    flags[folio] |= F_HEAD | F_DIRTY
    order_of[folio] = 9
    node_stat[NR_ANON_THPS] += HPAGE_PMD_NR
    node_stat[NR_ANON_MAPPED] += HPAGE_PMD_NR
    node_stat[NR_ACTIVE_ANON] += HPAGE_PMD_NR
    mm_stat[MM_ANONPAGES] += HPAGE_PMD_NR


def touch_reference(k: Kernel, task: Task, start: int, length: int, stride: int,
                    access: int) -> None:
    """One access at every ``stride`` bytes of [start, start + length)."""
    for vaddr in range(start, start + length, stride):
        k.user_access(task, vaddr, access)


def _fast_path_applies(k: Kernel, task: Task, vaddr: int, access: int) -> tuple[bool, bool]:
    """Can the compiled loop run from ``vaddr``? Returns (ok, whether it may resolve faults
    itself: private anonymous memory without mTHP orders enabled)."""
    vma = find_vma(task.mm, vaddr)
    if vma is None or vma.start > vaddr or k.pti or access not in (0, 1):
        return False, False
    if not vma.flags & (VmFlags.READ | VmFlags.WRITE) or not k.mmu.mode.is_canonical(vaddr):
        return False, False
    anon = (vma.is_anonymous() and not vma.flags & VmFlags.SHARED and not any(
        huge_memory.order_enabled(k, vma, o) for o in huge_memory.MTHP_ORDERS[:-1]))
    return True, bool(anon)


def touch(k: Kernel, task: Task, start: int, length: int, stride: int, access: int) -> None:
    """The touch step: the compiled loop where it applies, the reference path elsewhere."""
    end = start + length
    count_total = (length + stride - 1) // stride if length > 0 else 0
    i = 0
    k.switch_to(task)
    mm = task.mm
    out = np.zeros(4, dtype=np.int64)
    records = np.zeros((1024, 3), dtype=np.int64)
    zonelist = np.array(k.buddy.zonelist(), dtype=np.int64)
    flushed = False
    while i < count_total:
        vaddr = start + i * stride
        ok, anon_faults = _fast_path_applies(k, task, vaddr, access)
        if not ok:
            k.user_access(task, vaddr, access)
            i += 1
            continue
        if not flushed:
            k.flush_tlb_mm(mm)  # the loop does not keep the TLB in step: start it empty
            flushed = True
        vma = find_vma(mm, vaddr)
        assert vma is not None
        seg_count = min(count_total, (min(end, vma.end) - start + stride - 1) // stride)
        thp = huge_memory.thp_vma_allowable_pmd(k, mm, vma)
        out[:] = (i, 0, 0, 0)
        reason = NEED_SLOTS
        while reason in (NEED_SLOTS, NEED_DRAIN):
            k.physmem.reserve_slots(64)
            reason = _run_kernel(k, mm, vma, start, seg_count, stride, access, thp,
                                 anon_faults, out, zonelist, records)
            _drain_thp_records(k, mm, vma, out, records)
        task.min_flt += int(out[1])
        if out[2]:
            from pagewalk.mm.memory import anon_vma_prepare
            anon_vma_prepare(vma)
        i = int(out[0])
        if reason == NEED_SLOW and i < count_total:
            k.user_access(task, start + i * stride, access)
            i += 1
            flushed = False


def _drain_thp_records(k: Kernel, mm, vma, out: np.ndarray, records: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    """The rmap side of the THPs the compiled loop mapped (kept in dicts, not arrays)."""
    count = int(out[3])
    if not count:
        return
    for pmd_paddr, table, folio in records[:count].tolist():
        k.deposit[pmd_paddr] = table
        k.entire_mapcount[folio] = 1
    key = (huge_memory.HPAGE_PMD_ORDER, "anon_fault_alloc")
    k.mthp_stats[key] = k.mthp_stats.get(key, 0) + count
    huge_memory.khugepaged_enter_vma(k, mm, vma)
    out[3] = 0


def _run_kernel(k: Kernel, mm, vma, start: int, count: int, stride: int, access: int,  # type: ignore[no-untyped-def]
                thp: bool, anon_faults: bool, out: np.ndarray, zonelist: np.ndarray,
                records: np.ndarray) -> int:
    pm, memmap, buddy = k.physmem, k.memmap, k.buddy
    return int(touch_kernel(
        start, count, stride, access == 1, k.levels, mm.pgd_pfn,
        bool(vma.flags & VmFlags.WRITE), thp and anon_faults, anon_faults,
        np.uint64(vma.page_prot), k.zero_pfn, vma.start, vma.end,
        pm.slot_of, pm.pool, pm.free_slots, pm.nr_free_slots,
        memmap.flags, memmap.order, memmap.refcount, memmap.mapcount, memmap.head, memmap.next,
        memmap.prev, buddy.free_head, buddy.nr_free, zonelist,
        k.node_stat, k.vm_events, mm.stat, out, records))
