"""User accesses over a range (the `touch` step): the reference loop and the compiled one.

``touch_reference`` sends every access through Kernel.user_access (MMU, TLB, page walk,
do_user_addr_fault, handle_mm_fault): the readable path, and the definition of what the
compiled loop (mm/fastfault.py) must do. ``touch`` hands runs of accesses within one VMA
to the compiled loop and takes over for each access it hands back; tests check that
both paths leave identical page tables, counters, TLBs and page-walk caches
(tests/mm/test_fault_paths_property.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import numpy as np
import numpy.typing as npt

from pagewalk.mm import huge_memory, pkeys, shmem
from pagewalk.mm.fastfault import (
    HUGE_ZERO_ABSENT,
    HUGE_ZERO_OFF,
    NEED_DRAIN,
    NEED_KERNEL,
    NEED_SLOTS,
    FaultVma,
    MmuArrays,
    Out,
    TouchRun,
    touch_kernel,
)
from pagewalk.mm.filemap import File, PageCache
from pagewalk.mm.page_alloc import NO_PAGE
from pagewalk.mm.rmap import anon_vma_prepare
from pagewalk.mm.types import MmStruct, Vma, VmFlags
from pagewalk.mm.vma import find_vma

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel
    from pagewalk.kernel.task import Task
    from pagewalk.mm.shmem import PageCacheFile

RECORDS = 1024     # PMDs the compiled loop maps between two drains
_B = TypeVar("_B", TouchRun, FaultVma, MmuArrays)


def touch_reference(k: Kernel, task: Task, start: int, length: int, stride: int,
                    access: int) -> None:
    """One access at every ``stride`` bytes of [start, start + length)."""
    for vaddr in range(start, start + length, stride):
        user_touch(k, task, vaddr, access)


def user_touch(k: Kernel, task: Task, vaddr: int, access: int) -> None:
    """One access of the touch step; a write stores the byte the kernel runner stores
    (the spec leaves it open; physmem.TOUCH_BYTE)."""
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
    # under memory pressure faults charge the cgroup and swap in: mm/memcontrol.py
    anon = anon and k.swap is None and k.memcg is None
    return True, bool(anon)


def touch(k: Kernel, task: Task, start: int, length: int, stride: int, access: int) -> None:
    """The touch step: the compiled loop where it applies, the reference path elsewhere."""
    end = start + length
    count_total = (length + stride - 1) // stride if length > 0 else 0
    i = 0
    k.switch_to(task)
    mm = task.mm
    out = np.zeros(int(Out.SIZE), dtype=np.int64)
    records = np.zeros((RECORDS, 3), dtype=np.int64)
    run: TouchRun | None = None
    fault_vma: FaultVma | None = None
    mmu_arrays: MmuArrays | None = None
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
        # the same bundles again when nothing changed: their descriptions are reused
        run = _reuse(TouchRun(start, seg_count, stride, access), run)
        fault_vma = _reuse(_fault_vma(k, mm, vma, anon_faults), fault_vma)
        mmu_arrays = _reuse(_mmu_arrays(k), mmu_arrays)
        out[:] = 0
        out[Out.NEXT] = i
        out[Out.CACHE_REGION] = -1
        reason = NEED_SLOTS
        while reason in (NEED_SLOTS, NEED_DRAIN):
            k.physmem.reserve_slots(64)
            reason = int(touch_kernel(run, fault_vma, k.pgtables.arrays, mm.stat,
                                      mmu_arrays, out, records))
            _drain_pmd_records(k, mm, vma, out, records)
        task.min_flt += int(out[Out.FAULTS])
        if out[Out.FILE_PAGES_SEEN]:
            # filemap_map_pages: each fault's pages take the file's mmap_miss down (to 0)
            if isinstance(vma.file, File):
                ra = vma.file.ra
                ra.mmap_miss = max(0, ra.mmap_miss - int(out[Out.FILE_PAGES_SEEN]))
            out[Out.FILE_PAGES_SEEN] = 0
        if out[Out.ANON_WRITTEN]:
            anon_vma_prepare(vma)
        i = int(out[Out.NEXT])
        if reason == NEED_KERNEL:       # the MMU faulted: the kernel's part, then the retry
            vaddr = start + i * stride
            k.kernel_entry()
            try:
                k.do_user_addr_fault(task, vaddr, int(out[Out.ERROR_CODE]))
            finally:
                k.kernel_exit()
            user_touch(k, task, vaddr, access)
            i += 1


def _reuse(new: _B, old: _B | None) -> _B:
    """``old`` when each of its fields is the same as ``new``'s (arrays: the same object)."""
    if old is None or any(a is not b and (isinstance(a, np.ndarray) or a != b)
                          for a, b in zip(new, old, strict=True)):
        return new
    return old


def _fault_vma(k: Kernel, mm: MmStruct, vma: Vma, anon_faults: bool) -> FaultVma:
    """What the compiled loop needs of the VMA, its mm and the CPU (the decisions that
    read Python state made here, by the reference path's own functions)."""
    if huge_memory.use_zero_page(k):
        huge_zero = HUGE_ZERO_ABSENT if k.huge_zero_pfn == NO_PAGE else k.huge_zero_pfn
    else:
        huge_zero = HUGE_ZERO_OFF
    thp = anon_faults and huge_memory.thp_vma_allowable_pmd(k, mm, vma)
    inode = _page_cache_faults(k, vma)
    pfns = inode.pages.pfns if inode is not None else NO_FILE
    return FaultVma(vma.start, vma.end, np.uint64(vma.page_prot), bool(vma.flags & VmFlags.WRITE),
                    anon_faults, thp, huge_zero, k.zero_pfn, mm.pgd_pfn, k.levels, k.mmu.pcid,
                    k.mmu.active_pkru, inode is not None, pfns, vma.pgoff,
                    inode.size_pages if inode is not None else 0,
                    inode is not None and inode.kind == "shmem")


NO_FILE = np.zeros(0, dtype=np.int64)


def _page_cache_faults(k: Kernel, vma: Vma) -> PageCacheFile | None:
    """The inode whose cached pages the compiled loop may map on a read fault
    (mm/fastfault.py _file_read_fault): a page-cache VMA (shmem, a scenario file, the
    program) that is not locked (faults there mlock: mm/mlock.py)."""
    if vma.file is None or vma.file.kind not in ("file", "shmem") or vma.is_hugetlb() or \
            vma.flags & VmFlags.LOCKED:
        return None
    inode = shmem.page_cache_of(vma)
    return inode if isinstance(inode.pages, PageCache) else None


def _mmu_arrays(k: Kernel) -> MmuArrays:
    mmu = k.mmu
    tlb, pwc = mmu.tlb, mmu.pwc
    return MmuArrays(tlb.layout, tlb.routes, tlb.storage.tags, tlb.storage.stamps,
                     tlb.storage.payload, tlb.storage.clock, tlb.stats, pwc.layout, pwc.top_row,
                     pwc.storage.tags, pwc.storage.stamps, pwc.storage.payload,
                     pwc.storage.clock, pwc.stats, mmu.counters)


def _drain_pmd_records(k: Kernel, mm: MmStruct, vma: Vma, out: npt.NDArray[np.int64],
                       records: npt.NDArray[np.int64]) -> None:
    """The dict side of the PMDs the compiled loop mapped (pgtable_trans_huge_deposit, the
    entire mapcount, mTHP counters, MMF_HUGE_ZERO_FOLIO, khugepaged_enter_vma)."""
    count = int(out[Out.RECORDS])
    if not count:
        return
    for pmd_paddr, table, folio in records[:count].tolist():
        k.deposit[pmd_paddr] = table
        if folio == NO_PAGE:
            huge_memory.mm_get_huge_zero_folio(k, mm)
        else:
            k.entire_mapcount[folio] = 1
            huge_memory.count_mthp_stat(k, huge_memory.HPAGE_PMD_ORDER, "anon_fault_alloc")
    huge_memory.khugepaged_enter_vma(k, mm, vma)
    out[Out.RECORDS] = 0
