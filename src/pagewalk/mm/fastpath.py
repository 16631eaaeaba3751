"""User accesses over a range (the `touch` step): the reference loop and the compiled one.

``touch_reference`` sends every access through Kernel.user_access (MMU, TLB, page walk,
do_user_addr_fault, handle_mm_fault): the readable path, and the definition of what the
compiled loop (mm/fastfault.py) must do. ``touch`` hands runs of accesses within one VMA
to the compiled loop and takes over for each access it hands back; tests check that
both paths leave identical page tables, counters, TLBs and page-walk caches.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from pagewalk.mm import huge_memory, pkeys
from pagewalk.mm.fastfault import NEED_DRAIN, NEED_KERNEL, NEED_SLOTS, NEED_SLOW, touch_kernel
from pagewalk.mm.rmap import anon_vma_prepare
from pagewalk.mm.types import VmFlags
from pagewalk.mm.vma import find_vma

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel
    from pagewalk.kernel.task import Task


def touch_reference(k: Kernel, task: Task, start: int, length: int, stride: int,
                    access: int) -> None:
    """One access at every ``stride`` bytes of [start, start + length)."""
    for vaddr in range(start, start + length, stride):
        user_touch(k, task, vaddr, access)


def user_touch(k: Kernel, task: Task, vaddr: int, access: int) -> None:
    """One access of the touch step; a write stores a byte whose value the spec leaves
    open, kept only as PhysicalMemory.touched (the frame is no longer all zeros)."""
    paddr = k.user_access(task, vaddr, access)
    if access == 1:
        k.physmem.note_touch(paddr)


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
    # access_error() refuses by protection key first: then every fault is Python's
    anon = anon and pkeys.arch_vma_access_permitted(k, vma, access == 1)
    anon = anon and not vma.flags & VmFlags.LOCKED   # faults there mlock: mm/mlock.py
    return True, bool(anon)


def touch(k: Kernel, task: Task, start: int, length: int, stride: int, access: int) -> None:
    """The touch step: the compiled loop where it applies, the reference path elsewhere."""
    end = start + length
    count_total = (length + stride - 1) // stride if length > 0 else 0
    i = 0
    k.switch_to(task)
    mm = task.mm
    out = np.zeros(5, dtype=np.int64)
    records = np.zeros((1024, 3), dtype=np.int64)
    zonelist = np.array(k.buddy.zonelist(), dtype=np.int64)
    while i < count_total:
        vaddr = start + i * stride
        ok, anon_faults = _fast_path_applies(k, task, vaddr, access)
        if not ok:
            user_touch(k, task, vaddr, access)
            i += 1
            continue
        vma = find_vma(mm, vaddr)
        assert vma is not None
        seg_count = min(count_total, (min(end, vma.end) - start + stride - 1) // stride)
        thp = huge_memory.thp_vma_allowable_pmd(k, mm, vma)
        out[:] = (i, 0, 0, 0, 0)
        reason = NEED_SLOTS
        while reason in (NEED_SLOTS, NEED_DRAIN):
            k.physmem.reserve_slots(64)
            reason = _run_kernel(k, mm, vma, start, seg_count, stride, access, thp,
                                 anon_faults, out, zonelist, records)
            _drain_thp_records(k, mm, vma, out, records)
        task.min_flt += int(out[1])
        if out[2]:
            anon_vma_prepare(vma)
        i = int(out[0])
        if reason == NEED_KERNEL:       # the MMU faulted: the kernel's part, then the retry
            vaddr = start + i * stride
            k.kernel_entry()
            try:
                k.do_user_addr_fault(task, vaddr, int(out[4]))
            finally:
                k.kernel_exit()
            user_touch(k, task, vaddr, access)
            i += 1
        elif reason == NEED_SLOW and i < count_total:
            user_touch(k, task, start + i * stride, access)
            i += 1
        

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
    pm, memmap, buddy, mmu = k.physmem, k.memmap, k.buddy, k.mmu
    tlb, pwc = mmu.tlb, mmu.pwc
    return int(touch_kernel(
        start, count, stride, access, k.levels, mm.pgd_pfn, mmu.pcid,
        bool(vma.flags & VmFlags.WRITE), thp and anon_faults, anon_faults,
        np.uint64(vma.page_prot), k.zero_pfn, vma.start, vma.end,
        pm.slot_of, pm.pool, pm.free_slots, pm.nr_free_slots,
        memmap.flags, memmap.order, memmap.refcount, memmap.mapcount, memmap.head, memmap.next,
        memmap.prev, buddy.free_head, buddy.nr_free, zonelist,
        k.node_stat, k.vm_events, mm.stat,
        tlb.layout, tlb.routes, tlb.storage.tags, tlb.storage.stamps, tlb.storage.payload,
        tlb.storage.clock, tlb.stats,
        pwc.layout, pwc.top_row, pwc.storage.tags, pwc.storage.stamps, pwc.storage.payload,
        pwc.storage.clock, pwc.stats, mmu.counters, out, records, mmu.active_pkru,
        pm.touched))
