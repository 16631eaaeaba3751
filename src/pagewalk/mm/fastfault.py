"""The compiled fault loop of the `touch` step (STYLE rule 12; driver in mm/fastpath.py).

Per access: the compiled MMU (hw/fastmmu.py: TLBs, page-walk caches, the walk with A/D);
on a page fault, what the kernel's path does for a private anonymous VMA: the software
walk allocating missing tables (p4d/pud/pmd/pte_alloc), a PMD THP for a write where the
VMA is eligible (do_huge_pmd_anonymous_page), the zero page for a read and a new zeroed
page for a write (do_anonymous_page), a zero-page or shared small page copied on a write
(wp_page_copy, with flush_tlb_page), an exclusive one reused (wp_page_reuse); the same
counters as the Python path (RSS, pgtables_bytes, NR_*, PGFAULT, THP_FAULT_ALLOC), then
the access is retried as Kernel.user_access retries it. Anything else goes back to
Python: the huge zero page, huge-PMD write faults, large folios, file and shmem pages,
PROT_NONE, SIGSEGV, allocation failures (fallback, compaction, OOM).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numpy as np
import numpy.typing as npt
from numba import njit

from pagewalk.hw import pgtable_types as pt
from pagewalk.hw.fastmmu import (
    ACC,
    DIRTY,
    PF_PK,
    PFN_MASK,
    PSE,
    RW,
    P,
    flush_pcid,
    mmu_translate,
    tlb_invlpg,
)
from pagewalk.mm.page_alloc import PageFlag, rmqueue_smallest

_F = TypeVar("_F", bound=Callable[..., Any])


def compiled_without_nrt(func: _F) -> _F:
    """``njit(cache=True)`` without Numba's reference counting (``_nrt=False``): the fault
    loop allocates nothing, and reference counts on its array arguments would cost an
    atomic operation per access."""
    options: dict[str, Any] = {"cache": True, "_nrt": False}
    return cast(_F, njit(**options)(func))


# Stop reasons of the compiled loop.
DONE = 0
NEED_SLOW = 1   # this access needs the Python path
NEED_SLOTS = 2  # the physmem row pool must grow first

SPECIAL = np.uint64(pt._PAGE_SPECIAL)
TABLE = np.uint64(pt._PAGE_TABLE)
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
NEED_KERNEL = 4  # a fault only the Python kernel handles (out[4]: its error code)
TLB_FLUSH_ONE = 32
MM_ANONPAGES, PGTABLES_BYTES = 1, 4


@njit(cache=True, inline="always")
def _alloc_page(flags: Any, order_of: Any, next_: Any, prev: Any, free_head: Any, nr_free: Any,
                zonelist: Any, node_stat: Any, vm_events: Any, refcount: Any,
                order: Any = 0) -> Any:
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


@njit(cache=True, inline="always")
def _free_pages(nr_free: npt.NDArray[np.int64], zonelist: npt.NDArray[np.int64]) -> int:
    """Free pages over the zonelist's zones (any one of them serves an order-0 request)."""
    total = 0
    for i in range(zonelist.shape[0]):
        for order in range(nr_free.shape[1]):
            total += nr_free[zonelist[i], order] << order
    return total


@njit(cache=True, inline="always")
def _store_table(slot_of: Any, pool: Any, free_slots: Any, nr_free_slots: Any, pfn: Any) -> None:
    """Give a new page-table frame a zeroed row in the physmem pool."""
    top = nr_free_slots[0] - 1
    slot = free_slots[top]
    nr_free_slots[0] = top
    for word in range(512):
        pool[slot, word] = 0
    slot_of[pfn] = slot


@compiled_without_nrt
def touch_kernel(start: Any, count: Any, stride: Any, kind: Any, levels: Any, root_pfn: Any,
                 pcid: Any, vma_flags_ok_write: Any, thp_pmd_allowed: Any, anon_faults: Any,
                 page_prot: Any, zero_pfn: Any, vma_start: Any, vma_end: Any, slot_of: Any,
                 pool: Any, free_slots: Any, nr_free_slots: Any, flags: Any, order_of: Any,
                 refcount: Any, mapcount: Any, head_of: Any, next_: Any, prev: Any, free_head: Any,
                 nr_free: Any, zonelist: Any, node_stat: Any, vm_events: Any, mm_stat: Any,
                 tlb_layout: Any, tlb_routes: Any, tlb_tags: Any, tlb_stamps: Any, tlb_payload: Any,
                 tlb_clock: Any, tlb_stats: Any, pwc_layout: Any, pwc_top: Any, pwc_tags: Any,
                 pwc_stamps: Any, pwc_payload: Any, pwc_clock: Any, pwc_stats: Any,
                 mmu_counters: Any, out: Any, records: Any, pkru: Any, touched: Any) -> int:
    """Accesses ``start + i * stride`` for i in [out[0], count), each through the compiled
    MMU (hw/fastmmu.py); a page fault the kernel can resolve here is resolved and the access
    retried, as Kernel.user_access does. Returns a stop reason: NEED_KERNEL when a fault
    needs the Python kernel (out[4] holds its error code, the failed translation already
    counted), NEED_SLOW before anything of the access was done, NEED_SLOTS, NEED_DRAIN.
    out[0]: next access; out[1]: faults resolved; out[2]: 1 once an anonymous page was
    written (the VMA needs its anon_vma); out[3]: THPs recorded in ``records`` as
    (PMD entry paddr, deposited table, folio) for Python's rmap dicts. A write stores a
    byte: ``touched`` (PhysicalMemory.touched) marks its frame."""
    write = kind == 1
    shift0 = 39 if levels == 4 else 48
    i = out[0]
    while i < count:
        vaddr = start + i * stride
        if nr_free_slots[0] < levels + 1:
            out[0] = i
            return NEED_SLOTS
        if out[3] >= records.shape[0]:
            out[0] = i
            return NEED_DRAIN
        code = mmu_translate(vaddr, kind, pcid, root_pfn, levels, slot_of, pool,
                             tlb_layout, tlb_routes, tlb_tags, tlb_stamps, tlb_payload,
                             tlb_clock, tlb_stats, pwc_layout, pwc_top, pwc_tags, pwc_stamps,
                             pwc_payload, pwc_clock, pwc_stats, mmu_counters, pkru)
        if code == 0:
            if write:
                _note_touch(vaddr, root_pfn, levels, slot_of, pool, touched)
            i += 1
            continue
        # do_user_addr_fault(): what only Python handles goes back with the error code.
        out[0] = i
        out[4] = code
        if (write and not vma_flags_ok_write) or (code & 1 and not write) or not anon_faults \
                or code & PF_PK:                 # access_error(): X86_PF_PK is SIGSEGV
            return NEED_KERNEL
        # __handle_mm_fault(): the kernel's software walk (no A bits), allocating tables.
        table = root_pfn
        shift = shift0
        resolved = False
        while shift > 12:
            slot = slot_of[table]
            index = (vaddr >> shift) & 511
            entry = pool[slot, index]
            if entry & PSE:
                return NEED_KERNEL               # huge PMD: do_huge_pmd_wp_page and friends
            if entry == 0 and shift == 21 and thp_pmd_allowed:
                haddr = vaddr & ~(HPAGE_PMD_NR * 4096 - 1)
                if haddr >= vma_start and haddr + HPAGE_PMD_NR * 4096 <= vma_end:
                    if not write:
                        return NEED_KERNEL       # the huge zero page
                    if not _map_thp(slot, index, table, page_prot, vma_flags_ok_write,
                                    slot_of, pool, free_slots, nr_free_slots, flags, order_of,
                                    refcount, head_of, next_, prev, free_head, nr_free,
                                    zonelist, node_stat, vm_events, mm_stat, out, records,
                                    touched):
                        return NEED_KERNEL       # fallback or compaction: Python decides
                    resolved = True
                    break
            if entry == 0:
                new = _alloc_page(flags, order_of, next_, prev, free_head, nr_free, zonelist,
                                  node_stat, vm_events, refcount)
                if new < 0:
                    return NEED_KERNEL
                _store_table(slot_of, pool, free_slots, nr_free_slots, new)
                flags[new] |= F_TABLE
                node_stat[NR_PAGETABLE] += 1
                if shift != 48:                  # a P4D table has no VmPTE counter
                    mm_stat[PGTABLES_BYTES] += 4096
                entry = (np.uint64(new) << np.uint64(12)) | TABLE
                pool[slot, index] = entry
            table = np.int64((entry & PFN_MASK) >> np.uint64(12))
            shift -= 9
        if not resolved:
            slot = slot_of[table]
            index = (vaddr >> 12) & 511
            status = _pte_fault(vaddr, write, pcid, slot, index, page_prot, zero_pfn,
                                slot_of, pool, free_slots, nr_free_slots, flags, order_of,
                                refcount, mapcount, next_, prev, free_head, nr_free, zonelist,
                                node_stat, vm_events, mm_stat, tlb_layout, tlb_routes,
                                tlb_tags, tlb_stamps, tlb_payload, pwc_tags, pwc_stamps,
                                pwc_payload, out, touched)
            if status != 0:
                return NEED_KERNEL
        out[1] += 1                              # mm_account_fault()
        vm_events[PGFAULT] += 1
        # the access is retried (same i): the MMU translates it now
    out[0] = i
    return DONE


@njit(cache=True, inline="always")
def _note_touch(vaddr: int, root_pfn: int, levels: int, slot_of: npt.NDArray[np.int32],
                pool: npt.NDArray[np.uint64], touched: npt.NDArray[np.uint8]) -> None:
    """The store of a write access that translated: mark the frame it reached (a walk of
    the tables the MMU has just used; every entry on the way is present)."""
    table = np.int64(root_pfn)
    shift = 39 if levels == 4 else 48
    while True:
        entry = pool[slot_of[table], (vaddr >> shift) & 511]
        pfn = np.int64((entry & PFN_MASK) >> np.uint64(12))
        if shift == 12 or entry & PSE:
            span = (1 << (shift - 12)) - 1       # 4 KiB frames in the leaf, less one
            touched[(pfn & ~span) + ((vaddr >> 12) & span)] = 1
            return
        table = pfn
        shift -= 9


@compiled_without_nrt
def _map_thp(slot: Any, index: Any, table: Any, page_prot: Any, writable: Any, slot_of: Any,
             pool: Any, free_slots: Any, nr_free_slots: Any, flags: Any, order_of: Any,
             refcount: Any, head_of: Any, next_: Any, prev: Any, free_head: Any, nr_free: Any,
             zonelist: Any, node_stat: Any, vm_events: Any, mm_stat: Any, out: Any, records: Any,
             touched: Any) -> int:
    """do_huge_pmd_anonymous_page() -> __do_huge_pmd_anonymous_page() for a write."""
    # The kernel allocates the folio, then the deposit (pte_alloc_one); when that fails it
    # puts the folio and answers VM_FAULT_OOM. A fault that fails is Python's: hand it back
    # before allocating anything when no page would be left for the deposit.
    if _free_pages(nr_free, zonelist) <= HPAGE_PMD_NR:
        return False
    folio = _alloc_page(flags, order_of, next_, prev, free_head, nr_free, zonelist,
                        node_stat, vm_events, refcount, 9)
    if folio < 0:
        return False
    deposit = _alloc_page(flags, order_of, next_, prev, free_head, nr_free, zonelist,
                          node_stat, vm_events, refcount, 0)
    _store_table(slot_of, pool, free_slots, nr_free_slots, deposit)
    flags[deposit] |= F_TABLE
    node_stat[NR_PAGETABLE] += 1
    mm_stat[PGTABLES_BYTES] += 4096
    _new_anon_thp(folio, flags, order_of, head_of, slot_of, free_slots, nr_free_slots,
                  node_stat, mm_stat, touched)
    pool[slot, index] = (np.uint64(folio) << np.uint64(12)) | page_prot | PSE | ACC | DIRTY | (
        RW if writable else np.uint64(0))
    r = out[3]
    records[r, 0] = (np.int64(table) << 12) + index * 8
    records[r, 1] = deposit
    records[r, 2] = folio
    out[3] = r + 1
    out[2] = 1
    vm_events[THP_FAULT_ALLOC] += 1
    return True


@compiled_without_nrt
def _pte_fault(vaddr: Any, write: Any, pcid: Any, slot: Any, index: Any, page_prot: Any,
               zero_pfn: Any, slot_of: Any, pool: Any, free_slots: Any, nr_free_slots: Any,
               flags: Any, order_of: Any, refcount: Any, mapcount: Any, next_: Any, prev: Any,
               free_head: Any, nr_free: Any, zonelist: Any, node_stat: Any, vm_events: Any,
               mm_stat: Any, tlb_layout: Any, tlb_routes: Any, tlb_tags: Any, tlb_stamps: Any,
               tlb_payload: Any, pwc_tags: Any, pwc_stamps: Any, pwc_payload: Any, out: Any,
               touched: Any) -> int:
    """handle_pte_fault() for private anonymous memory: 0 when resolved, 1 for Python."""
    pte = pool[slot, index]
    if pte == 0:
        if not write:                            # do_anonymous_page: the zero page
            pool[slot, index] = (np.uint64(zero_pfn) << np.uint64(12)) | page_prot | SPECIAL | ACC
            return 0
        pfn = _alloc_page(flags, order_of, next_, prev, free_head, nr_free, zonelist,
                          node_stat, vm_events, refcount)
        if pfn < 0:
            return 1
        _new_anon_page(pfn, flags, mapcount, slot_of, free_slots, nr_free_slots, node_stat,
                       mm_stat, touched)
        pool[slot, index] = (np.uint64(pfn) << np.uint64(12)) | page_prot | ACC | DIRTY | RW
        out[2] = 1
        return 0
    if not pte & P or not write or pte & RW:
        return 1                                 # PROT_NONE, spurious: the Python path
    if pte & SPECIAL:                            # wp_page_copy from the zero page
        if (pte & PFN_MASK) >> np.uint64(12) != np.uint64(zero_pfn):
            return 1
        pfn = _alloc_page(flags, order_of, next_, prev, free_head, nr_free, zonelist,
                          node_stat, vm_events, refcount)
        if pfn < 0:
            return 1
        _new_anon_page(pfn, flags, mapcount, slot_of, free_slots, nr_free_slots, node_stat,
                       mm_stat, touched)
        pool[slot, index] = (np.uint64(pfn) << np.uint64(12)) | page_prot | ACC | DIRTY | RW
        _flush_tlb_page(vaddr, pcid, tlb_layout, tlb_routes, tlb_tags, tlb_stamps, tlb_payload,
                        pwc_tags, pwc_stamps, pwc_payload, vm_events)
        out[2] = 1
        return 0
    pfn = np.int64((pte & PFN_MASK) >> np.uint64(12))
    small = not flags[pfn] & (F_HEAD | F_TAIL)
    if not flags[pfn] & F_ANON or not (small or flags[pfn] & F_EXCL):
        return 1                                 # file pages, large folios: Python decides
    if flags[pfn] & F_EXCL or refcount[pfn] == 1:   # wp_can_reuse_anon_folio -> wp_page_reuse
        flags[pfn] |= F_EXCL
        flags[pfn] &= ~F_LAZY
        pool[slot, index] = pte | RW | DIRTY | ACC
        vm_events[PGREUSE] += 1
        return 0
    if refcount[pfn] < 2:
        return 1
    new = _alloc_page(flags, order_of, next_, prev, free_head, nr_free, zonelist, node_stat,
                      vm_events, refcount)
    if new < 0:
        return 1
    _new_anon_page(new, flags, mapcount, slot_of, free_slots, nr_free_slots, node_stat, mm_stat,
                   touched)
    mm_stat[MM_ANONPAGES] -= 1                   # an anonymous page replaces another
    old_slot = slot_of[pfn]
    if old_slot >= 0:                            # copy_user_highpage(): the data moves along
        _store_table(slot_of, pool, free_slots, nr_free_slots, new)
        new_slot = slot_of[new]
        for word in range(512):
            pool[new_slot, word] = pool[old_slot, word]
    touched[new] = touched[pfn]
    pool[slot, index] = (np.uint64(new) << np.uint64(12)) | page_prot | ACC | DIRTY | RW
    _flush_tlb_page(vaddr, pcid, tlb_layout, tlb_routes, tlb_tags, tlb_stamps, tlb_payload,
                    pwc_tags, pwc_stamps, pwc_payload, vm_events)
    mapcount[pfn] -= 1                           # folio_remove_rmap_pte + folio_put
    if mapcount[pfn] == 0:
        node_stat[NR_ANON_MAPPED] -= 1
        node_stat[NR_ACTIVE_ANON] -= 1
    refcount[pfn] -= 1
    out[2] = 1
    return 0


@compiled_without_nrt
def _flush_tlb_page(vaddr: Any, pcid: Any, tlb_layout: Any, tlb_routes: Any, tlb_tags: Any,
                    tlb_stamps: Any, tlb_payload: Any, pwc_tags: Any, pwc_stamps: Any,
                    pwc_payload: Any, vm_events: Any) -> None:
    """flush_tlb_page() -> INVLPG: the TLB entries of vaddr and the page-walk caches."""
    tlb_invlpg(vaddr, pcid, tlb_layout, tlb_routes, tlb_tags, tlb_stamps, tlb_payload)
    flush_pcid(pcid, pwc_tags, pwc_stamps, pwc_payload, 48)
    vm_events[TLB_FLUSH_ONE] += 1


@njit(cache=True, inline="always")
def _new_anon_page(pfn: Any, flags: Any, mapcount: Any, slot_of: Any, free_slots: Any,
                   nr_free_slots: Any, node_stat: Any, mm_stat: Any, touched: Any) -> None:
    """folio_add_new_anon_rmap() + add_mm_counter(MM_ANONPAGES) for an order-0 folio."""
    touched[pfn] = 0
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


@compiled_without_nrt
def _new_anon_thp(folio: Any, flags: Any, order_of: Any, head_of: Any, slot_of: Any,
                  free_slots: Any, nr_free_slots: Any, node_stat: Any, mm_stat: Any,
                  touched: Any) -> None:
    """folio_alloc(order 9) + map_anon_folio_pmd(): flags, counters (not the rmap dicts)."""
    for page in range(folio, folio + HPAGE_PMD_NR):
        touched[page] = 0
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


