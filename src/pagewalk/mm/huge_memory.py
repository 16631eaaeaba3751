"""Transparent huge pages: eligibility, PMD faults, the huge zero page, split, zap.

Follows mm/huge_memory.c (__thp_vma_allowable_orders, do_huge_pmd_anonymous_page,
__do_huge_pmd_anonymous_page, set_huge_zero_folio, do_huge_pmd_wp_page,
do_huge_zero_wp_pmd (6.13+), __split_huge_pmd_locked, zap_huge_pmd, change_huge_pmd,
vma_thp_gfp_mask) and include/linux/huge_mm.h, as Linux 6.18 behaves (the spec's
linux-mm-notes section 4). A PMD-mapped THP always has a deposited PTE table
(pgtable_trans_huge_deposit + mm_inc_nr_ptes), kept in ``Kernel.deposit`` keyed by
the physical address of its PMD entry, and used again when the PMD is split. A shmem
THP mapped by PMD has no deposit: zap and split just clear the PMD. split_folio()
(split_huge_page_to_list_to_order) splits an anonymous large folio itself and maps its
all-zero subpages to the shared zero page (remap_page with RMP_USE_SHARED_ZEROPAGE).
The array work of a PMD fault (map_anon_folio_pmd, set_huge_zero_folio) is compiled in
mm/fastfault.py, where the compiled touch loop calls it too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from pagewalk.hw import pgtable_types as pt
from pagewalk.mm import compaction, fastfault, memcontrol, rmap
from pagewalk.mm.page_alloc import NO_PAGE, PageFlag
from pagewalk.mm.pgtable import anon_pmd
from pagewalk.mm.rmap import anon_vma_prepare
from pagewalk.mm.tlb import flush_tlb_mm_range
from pagewalk.mm.types import FaultFlags, MmStat, MmStruct, Vma, VmFault, VmFlags
from pagewalk.mm.vmstat import NodeStat, VmEvent

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel

THP = "/sys/kernel/mm/transparent_hugepage"
HPAGE_PMD_ORDER = 9
HPAGE_PMD_NR = 512
HPAGE_PMD_SIZE = 1 << 21
MTHP_ORDERS = (2, 3, 4, 5, 6, 7, 8, 9)  # THP_ORDERS_ALL_ANON: 16 KiB .. 2 MiB


def size_knob(order: int) -> str:
    return f"{THP}/hugepages-{4 << order}kB/enabled"


def order_enabled(k: Kernel, vma: Vma, order: int) -> bool:
    """The sysfs mask of __thp_vma_allowable_orders for one order: always, or madvise with
    VM_HUGEPAGE, or inherit from the global `enabled` setting."""
    setting = k.knobs.get(size_knob(order))
    madvised = bool(vma.flags & VmFlags.HUGEPAGE)
    if setting == "always":
        return True
    if setting == "madvise":
        return madvised
    if setting == "inherit":
        top = k.knobs.get(f"{THP}/enabled")
        return top == "always" or (top == "madvise" and madvised)
    return False


def vma_thp_disabled(mm: MmStruct, vma: Vma) -> bool:
    """vma_thp_disabled(): MADV_NOHUGEPAGE or prctl(PR_SET_THP_DISABLE)."""
    return bool(vma.flags & VmFlags.NOHUGEPAGE) or mm.thp_disable


def thp_vma_allowable_order(k: Kernel, mm: MmStruct, vma: Vma, order: int) -> bool:
    """thp_vma_allowable_orders(vma, TVA_PAGEFAULT, BIT(order)) for anonymous VMAs."""
    if not vma.is_anonymous() or vma.is_hugetlb() or vma_thp_disabled(mm, vma):
        return False
    if vma.flags & VmFlags.GROWSDOWN and vma.name == "[stack]":
        return False  # vma_is_temporary_stack() only matters during exec; the stack is fine
    return order_enabled(k, vma, order)


def thp_vma_allowable_pmd(k: Kernel, mm: MmStruct, vma: Vma) -> bool:
    return thp_vma_allowable_order(k, mm, vma, HPAGE_PMD_ORDER)


def thp_vma_suitable_order(vma: Vma, vaddr: int, order: int) -> bool:
    """The naturally aligned block of 2**order pages around vaddr lies inside the VMA (and,
    for a file VMA, the file offset is aligned alike)."""
    size = 4096 << order
    if not vma.is_anonymous() and ((vma.start >> 12) - vma.pgoff) % (1 << order):
        return False
    haddr = vaddr & ~(size - 1)
    return haddr >= vma.start and haddr + size <= vma.end


def use_zero_page(k: Kernel) -> bool:
    """transparent_hugepage/use_zero_page: a read fault maps the huge zero folio."""
    return k.knobs.get(f"{THP}/use_zero_page") == "1"


def count_mthp_stat(k: Kernel, order: int, item: str) -> None:
    key = (order, item)
    k.mthp_stats[key] = k.mthp_stats.get(key, 0) + 1


def khugepaged_enter_vma(k: Kernel, mm: MmStruct, vma: Vma) -> None:
    """khugepaged_enter_vma(): register the mm when some THP order is allowed for the VMA."""
    if mm.khugepaged_registered or not vma.is_anonymous():
        return
    if thp_vma_allowable_order(k, mm, vma, HPAGE_PMD_ORDER) and \
            vma.end - vma.start >= HPAGE_PMD_SIZE:
        mm.khugepaged_registered = True


# --- allocation ---------------------------------------------------------------------------

def gfp_allows_direct_compaction(k: Kernel, vma: Vma) -> bool:
    """vma_thp_gfp_mask(): does the defrag setting let this fault reclaim/compact directly?"""
    defrag = k.knobs.get(f"{THP}/defrag")
    madvised = bool(vma.flags & VmFlags.HUGEPAGE)
    if defrag == "always":
        return True
    if defrag in ("madvise", "defer+madvise"):
        return madvised
    return False


def alloc_thp(k: Kernel, vma: Vma, order: int = HPAGE_PMD_ORDER) -> int:
    """vma_alloc_folio(gfp, order): from the free lists, else direct compaction when the
    gfp mask allows it (mm/compaction.c), else NO_PAGE."""
    pfn = rmap.folio_alloc(k, order)
    if pfn != NO_PAGE or not gfp_allows_direct_compaction(k, vma):
        return pfn
    if compaction.try_to_compact_pages(k, order):
        return rmap.folio_alloc(k, order)
    return NO_PAGE


def alloc_anon_folio(k: Kernel, mm: MmStruct, vma: Vma, vaddr: int, table: int) -> tuple[int, int]:
    """alloc_anon_folio(): try the enabled mTHP orders below PMD_ORDER, highest first, whose
    aligned block fits the VMA and has only none PTEs (each failed allocation counts
    anon_fault_fallback), then order 0. Returns (pfn or NO_PAGE, order)."""
    if vma.is_anonymous() and not vma_thp_disabled(mm, vma):
        for order in sorted(MTHP_ORDERS[:-1], reverse=True):
            if not order_enabled(k, vma, order) or not thp_vma_suitable_order(vma, vaddr, order):
                continue
            nr = 1 << order
            first = (vaddr >> 12) & 511 & ~(nr - 1)
            if k.physmem.frame_words(table)[first: first + nr].any():
                continue  # pte_range_none() fails
            pfn = rmap.folio_alloc(k, order)
            if pfn != NO_PAGE:
                return pfn, order
            count_mthp_stat(k, order, "anon_fault_fallback")
    return rmap.folio_alloc(k, 0), 0


# --- PMD faults ---------------------------------------------------------------------------

def do_huge_pmd_anonymous_page(k: Kernel, mm: MmStruct, vma: Vma, vaddr: int, pmd_paddr: int,
                               flags: FaultFlags) -> VmFault:
    haddr = vaddr & ~(HPAGE_PMD_SIZE - 1)
    if not thp_vma_suitable_order(vma, haddr, HPAGE_PMD_ORDER):
        return VmFault.FALLBACK
    anon_vma_prepare(vma)
    khugepaged_enter_vma(k, mm, vma)
    if not flags & FaultFlags.WRITE and use_zero_page(k):
        table = k.pgtables.alloc_table_page(mm, "pte")   # pte_alloc_one
        if table == NO_PAGE:
            return VmFault.OOM
        zero = mm_get_huge_zero_folio(k, mm)
        if zero == NO_PAGE:
            k.pgtables.free_table_page(mm, table, "pte")
            k.vm_events[VmEvent.THP_FAULT_FALLBACK] += 1
            return VmFault.FALLBACK
        set_huge_zero_folio(k, mm, vma, pmd_paddr, table, zero)
        return VmFault.OK
    folio = alloc_thp(k, vma)
    if folio == NO_PAGE:
        k.vm_events[VmEvent.THP_FAULT_FALLBACK] += 1
        count_mthp_stat(k, HPAGE_PMD_ORDER, "anon_fault_fallback")
        return VmFault.FALLBACK
    if not memcontrol.charge(k, HPAGE_PMD_NR):       # vma_alloc_anon_folio_pmd()
        rmap.folio_put(k, folio)
        k.vm_events[VmEvent.THP_FAULT_FALLBACK] += 1
        k.vm_events[VmEvent.THP_FAULT_FALLBACK_CHARGE] += 1
        count_mthp_stat(k, HPAGE_PMD_ORDER, "anon_fault_fallback")
        count_mthp_stat(k, HPAGE_PMD_ORDER, "anon_fault_fallback_charge")
        return VmFault.FALLBACK
    table = k.pgtables.alloc_table_page(mm, "pte")
    if table == NO_PAGE:
        rmap.folio_put(k, folio)
        return VmFault.OOM
    map_anon_folio_pmd(k, mm, vma, pmd_paddr, folio)
    memcontrol.lru_add(k, folio, vma.pgoff + ((haddr - vma.start) >> 12), thp=True)
    k.deposit[pmd_paddr] = table
    k.vm_events[VmEvent.THP_FAULT_ALLOC] += 1
    count_mthp_stat(k, HPAGE_PMD_ORDER, "anon_fault_alloc")
    return VmFault.OK


def mk_huge_pmd(vma: Vma, pfn: int) -> int:
    """folio_mk_pmd + pmd_mkdirty + maybe_pmd_mkwrite."""
    return int(anon_pmd(pfn, np.uint64(vma.page_prot), bool(vma.flags & VmFlags.WRITE)))


def map_anon_folio_pmd(k: Kernel, mm: MmStruct, vma: Vma, pmd_paddr: int, folio: int) -> None:
    """map_anon_folio_pmd(): rmap, RSS and the PMD entry of a fresh exclusive THP."""
    fastfault.map_anon_folio_pmd(k.pgtables.arrays, mm.stat, pmd_paddr, folio,
                                 np.uint64(vma.page_prot), bool(vma.flags & VmFlags.WRITE))
    k.entire_mapcount[folio] = 1


def set_huge_zero_folio(k: Kernel, mm: MmStruct, vma: Vma, pmd_paddr: int, table: int,
                        zero: int) -> None:
    """set_huge_zero_folio(): the huge zero PMD, its deposited table."""
    k.deposit[pmd_paddr] = table
    fastfault.set_huge_zero_pmd(k.pgtables.arrays, pmd_paddr, zero, np.uint64(vma.page_prot))


def is_huge_zero_pmd(k: Kernel, pmd: int) -> bool:
    return k.huge_zero_pfn != NO_PAGE and pt.huge_pfn(pmd, 21) == k.huge_zero_pfn


def get_huge_zero_folio(k: Kernel) -> int:
    """get_huge_zero_folio(): allocated once (thp_zero_page_alloc), then kept (pagewalk
    keeps it for the kernel's lifetime: no shrinker runs); NO_PAGE when that fails."""
    if k.huge_zero_pfn == NO_PAGE:
        pfn = k.buddy.alloc_pages(HPAGE_PMD_ORDER)
        if pfn == NO_PAGE:
            k.vm_events[VmEvent.THP_ZERO_PAGE_ALLOC_FAILED] += 1
            return NO_PAGE
        k.memmap.flags[pfn] |= PageFlag.HEAD
        k.memmap.order[pfn] = HPAGE_PMD_ORDER
        k.huge_zero_pfn = pfn
        k.vm_events[VmEvent.THP_ZERO_PAGE_ALLOC] += 1
    return k.huge_zero_pfn


def mm_get_huge_zero_folio(k: Kernel, mm: MmStruct) -> int:
    """mm_get_huge_zero_folio(): the huge zero folio, the mm marked MMF_HUGE_ZERO_FOLIO."""
    pfn = get_huge_zero_folio(k)
    if pfn != NO_PAGE:
        k.huge_zero_mms.add(id(mm))
    return pfn


def mm_put_huge_zero_folio(k: Kernel, mm: MmStruct) -> None:
    """mm_put_huge_zero_folio(): the mm no longer holds the huge zero folio."""
    k.huge_zero_mms.discard(id(mm))


def deferred_split_folio(k: Kernel, head: int) -> None:
    """deferred_split_folio(folio, partially_mapped=true): the folio goes on the deferred
    split queue; thp_deferred_split_page counts the first time it is marked partially
    mapped."""
    flags = k.memmap.flags
    if flags[head] & PageFlag.PARTIALLY_MAPPED:
        return
    flags[head] |= PageFlag.PARTIALLY_MAPPED
    k.deferred_split.add(head)
    k.vm_events[VmEvent.THP_DEFERRED_SPLIT_PAGE] += 1
    count_mthp_stat(k, int(k.memmap.order[head]) or HPAGE_PMD_ORDER, "split_deferred")


def do_huge_pmd_wp_page(k: Kernel, mm: MmStruct, vma: Vma, vaddr: int,
                        pmd_paddr: int) -> VmFault:
    """do_huge_pmd_wp_page(): a write to a read-only huge PMD."""
    if not vma.is_anonymous():
        # wp_huge_pmd(): shmem has no ->huge_fault; split and fault the PTE level
        split_huge_pmd(k, mm, vma, pmd_paddr, vaddr)
        return VmFault.FALLBACK
    pmd = k.pgtables.read(pmd_paddr)
    if is_huge_zero_pmd(k, pmd):
        anon_vma_prepare(vma)
        folio = alloc_thp(k, vma)   # do_huge_zero_wp_pmd (6.13+)
        if folio != NO_PAGE:
            map_anon_folio_pmd(k, mm, vma, pmd_paddr, folio)
            flush_tlb_mm_range(k, mm, vaddr & ~(HPAGE_PMD_SIZE - 1),
                               (vaddr & ~(HPAGE_PMD_SIZE - 1)) + HPAGE_PMD_SIZE)
            k.vm_events[VmEvent.THP_FAULT_ALLOC] += 1
            count_mthp_stat(k, HPAGE_PMD_ORDER, "anon_fault_alloc")
            return VmFault.OK
        k.vm_events[VmEvent.THP_FAULT_FALLBACK] += 1
        split_huge_pmd(k, mm, vma, pmd_paddr, vaddr)
        return VmFault.FALLBACK
    head = pt.huge_pfn(pmd, 21)
    flags = k.memmap.flags
    if flags[head] & PageFlag.ANON_EXCLUSIVE or k.memmap.refcount[head] == 1:
        flags[head: head + HPAGE_PMD_NR] |= np.uint16(PageFlag.ANON_EXCLUSIVE)
        k.pgtables.set_entry(mm, pmd_paddr, pmd | pt._PAGE_RW | pt._PAGE_DIRTY | pt._PAGE_ACCESSED)
        return VmFault.OK
    split_huge_pmd(k, mm, vma, pmd_paddr, vaddr)
    return VmFault.FALLBACK


# --- split and zap ------------------------------------------------------------------------

def split_huge_pmd(k: Kernel, mm: MmStruct, vma: Vma, pmd_paddr: int, vaddr: int) -> None:
    """__split_huge_pmd_locked(): replace the huge PMD by the deposited PTE table filled
    with 512 PTEs of the same pages (the folio itself is not split). thp_split_pmd++."""
    pgt = k.pgtables
    pmd = pgt.read(pmd_paddr)
    if not pmd & pt._PAGE_PSE:
        return
    haddr = vaddr & ~(HPAGE_PMD_SIZE - 1)
    k.vm_events[VmEvent.THP_SPLIT_PMD] += 1
    if not vma.is_anonymous():
        _split_file_pmd(k, mm, pmd_paddr, pmd, haddr)
        return
    table = k.deposit.pop(pmd_paddr)
    head = pt.huge_pfn(pmd, 21)
    # The PTEs take the VMA's protection (PROT_NONE included), the PMD's write, young,
    # dirty and soft-dirty bits: entry = mk_pte(page, vma->vm_page_prot), then
    # pte_mkwrite / pte_wrprotect, pte_mkold, pte_mkdirty, pte_mksoft_dirty.
    base = vma.page_prot & ~pt._PAGE_ACCESSED
    base |= pmd & (pt._PAGE_RW | pt._PAGE_ACCESSED | pt._PAGE_DIRTY | pt._PAGE_SOFT_DIRTY)
    if is_huge_zero_pmd(k, pmd):
        # __split_huge_zero_page_pmd(): 512 zero-page PTEs.
        zero = pt.mk_pte(k.zero_pfn, vma.page_prot) | pt._PAGE_SPECIAL | pt._PAGE_ACCESSED
        pgt.fill_table(table, np.full(HPAGE_PMD_NR, zero, dtype=np.uint64))
        mm_put_huge_zero_folio(k, mm)
    else:
        pfns = np.arange(head, head + HPAGE_PMD_NR, dtype=np.uint64)
        pgt.fill_table(table, (pfns << np.uint64(12)) | np.uint64(base))
        k.memmap.mapcount[head: head + HPAGE_PMD_NR] += 1
        k.memmap.refcount[head] += HPAGE_PMD_NR - 1
        rmap.folio_remove_pmd_rmap(k, head)
    pgt.set_entry(mm, pmd_paddr, pt.mk_table(table))
    flush_tlb_mm_range(k, mm, haddr, haddr + HPAGE_PMD_SIZE)


def _split_file_pmd(k: Kernel, mm: MmStruct, pmd_paddr: int, pmd: int, haddr: int) -> None:
    """__split_huge_pmd_locked() for a file (shmem) THP: no deposit on x86; the PMD is just
    cleared and later faults map the pages again."""
    k.pgtables.set_entry(mm, pmd_paddr, 0)        # pmdp_huge_clear_flush
    flush_tlb_mm_range(k, mm, haddr, haddr + HPAGE_PMD_SIZE)
    head = pt.huge_pfn(pmd, 21)
    rmap.folio_remove_pmd_rmap(k, head)
    rmap.folio_put(k, head)
    mm.stat[MmStat.MM_SHMEMPAGES] -= HPAGE_PMD_NR


def huge_pmd_covered(k: Kernel, mm: MmStruct, vma: Vma, pmd_paddr: int, addr: int,
                     nxt: int) -> bool:
    """For an operation on [addr, nxt) over a huge PMD: True when it covers the whole 2 MiB
    (the caller acts on the PMD itself); otherwise the PMD is split first (__split_huge_pmd
    in zap_pmd_range, change_pmd_range, madvise_free_huge_pmd) and False is returned."""
    if addr & (HPAGE_PMD_SIZE - 1) == 0 and nxt - addr == HPAGE_PMD_SIZE:
        return True
    split_huge_pmd(k, mm, vma, pmd_paddr, addr)
    return False


def zap_huge_pmd(k: Kernel, mm: MmStruct, vma: Vma, pmd_paddr: int, pmd: int) -> None:
    """zap_huge_pmd(): clear a PMD mapping whole, free its deposited table (anonymous
    memory only: a shmem THP has none on x86)."""
    k.pgtables.set_entry(mm, pmd_paddr, 0)
    if not vma.is_anonymous():
        head = pt.huge_pfn(pmd, 21)
        mm.stat[MmStat.MM_SHMEMPAGES] -= HPAGE_PMD_NR
        rmap.folio_remove_pmd_rmap(k, head)
        rmap.folio_put(k, head)
        return
    table = k.deposit.pop(pmd_paddr)
    k.pgtables.free_table_page(mm, table, "pte")   # zap_deposited_table
    if is_huge_zero_pmd(k, pmd):
        mm_put_huge_zero_folio(k, mm)
        return
    head = pt.huge_pfn(pmd, 21)
    mm.stat[MmStat.MM_ANONPAGES] -= HPAGE_PMD_NR
    rmap.folio_remove_pmd_rmap(k, head)
    rmap.folio_put(k, head)


def change_huge_pmd(k: Kernel, mm: MmStruct, vma: Vma, pmd_paddr: int, newprot: int,
                    try_writable: bool = False) -> None:
    """change_huge_pmd(): new protection for a whole huge PMD (no split); with
    MM_CP_TRY_CHANGE_WRITABLE, can_change_pmd_writable() makes a private PMD writable in
    place when its folio is PageAnonExclusive (clean or dirty: only shared ones need dirty)."""
    pmd = k.pgtables.read(pmd_paddr)
    entry = pt.pte_modify(pmd, newprot) | pt._PAGE_PSE
    if try_writable and not entry & pt._PAGE_RW and entry & pt._PAGE_PRESENT \
            and not is_huge_zero_pmd(k, pmd):
        head = pt.huge_pfn(pmd, 21)
        if k.memmap.flags[head] & PageFlag.ANON and k.memmap.flags[head] & PageFlag.ANON_EXCLUSIVE:
            entry |= pt._PAGE_RW
    k.pgtables.set_entry(mm, pmd_paddr, entry)


# --- folio split ---------------------------------------------------------------------------

def can_split_folio(k: Kernel, head: int) -> bool:
    """can_split_folio(): no references beyond one per mapping (no GUP pin holds it)."""
    mapcount = k.entire_mapcount.get(head, 0) + int(
        k.memmap.mapcount[head: head + (1 << rmap.folio_order(k, head))].sum())
    return int(k.memmap.refcount[head]) == mapcount


def split_folio(k: Kernel, mm: MmStruct, vma: Vma, head: int, vaddr: int) -> bool:
    """split_folio() of an anonymous large folio that only PTEs of ``vma`` map, its page 0
    at ``vaddr`` (split_huge_page_to_list_to_order to order 0): unmap_folio,
    __split_huge_page, then remap_page(RMP_USE_SHARED_ZEROPAGE), where a subpage whose
    bytes are all zero gets the shared zero page instead (try_to_map_unused_to_zeropage);
    subpages left unmapped are freed. False where the kernel refuses: a folio still
    PMD-mapped or mapped elsewhere (pagewalk walks no rmap beyond this VMA; its callers
    skip such folios as folio_maybe_mapped_shared), or holding extra references
    (can_split_folio: GUP pins)."""
    memmap = k.memmap
    order = rmap.folio_order(k, head)
    nr_pages = 1 << order
    if k.entire_mapcount.get(head, 0) or not can_split_folio(k, head):
        return False
    pmd_paddr, shift = k.pgtables.walk(mm, vaddr, 21, alloc=False)
    pmd = k.pgtables.read(pmd_paddr) if shift == 21 else 0
    if not pmd or pmd & pt._PAGE_PSE:
        return False
    first = (pt.pte_pfn(pmd) << 12) + ((vaddr >> 12) & 511) * 8
    ptes = [k.pgtables.read(first + i * 8) for i in range(nr_pages)]
    mapped = [bool(pte & (pt._PAGE_PRESENT | pt._PAGE_PROTNONE)) and not pte & pt._PAGE_SPECIAL
              and pt.pte_pfn(pte) == head + i for i, pte in enumerate(ptes)]
    mapcounts = memmap.mapcount[head: head + nr_pages]
    if int(mapcounts.sum()) != sum(mapped):
        return False
    zero_ok = not vma.flags & VmFlags.LOCKED       # no zero page for mlocked memory
    zeroed = 0
    for i in range(nr_pages):
        if mapped[i] and zero_ok and k.physmem.is_zero(head + i):
            entry = pt.mk_pte(k.zero_pfn, vma.page_prot) | pt._PAGE_SPECIAL | pt._PAGE_ACCESSED
            k.pgtables.set_entry(mm, first + i * 8, entry | (ptes[i] & pt._PAGE_SOFT_DIRTY))
            mapcounts[i] = 0
            mapped[i] = False
            zeroed += 1
    mm.stat[MmStat.MM_ANONPAGES] -= zeroed               # dec_mm_counter() for each
    k.node_stat[NodeStat.NR_ANON_MAPPED] -= zeroed
    k.node_stat[NodeStat.NR_ACTIVE_ANON] -= zeroed
    # __split_huge_page_tail(): order-0 folios; the tails take the head's dirty and
    # lazyfree (!swapbacked) state, each keeps its own PageAnonExclusive.
    inherited = np.uint16(int(memmap.flags[head]) & (PageFlag.DIRTY | PageFlag.LAZYFREE))
    flags = memmap.flags[head: head + nr_pages]
    flags &= np.uint16(~(PageFlag.HEAD | PageFlag.TAIL | PageFlag.PARTIALLY_MAPPED) & 0xFFFF)
    flags |= inherited
    memmap.order[head] = 0
    memmap.head[head: head + nr_pages] = NO_PAGE
    k.deferred_split.discard(head)
    refs = memmap.refcount[head: head + nr_pages]
    refs[:] = np.array(mapped, dtype=refs.dtype)        # one reference per mapping left
    if order == HPAGE_PMD_ORDER:
        k.vm_events[VmEvent.THP_SPLIT_PAGE] += 1
    count_mthp_stat(k, order, "split")
    flush_tlb_mm_range(k, mm, vaddr, vaddr + (nr_pages << 12))
    index = vma.pgoff + ((vaddr - vma.start) >> 12)
    memcontrol.lru_split(k, head, [(head + i, index + i) for i in range(nr_pages) if mapped[i]])
    freed = np.array([head + i for i in range(nr_pages) if not mapped[i]], dtype=np.int64)
    k.physmem_drop_range_many(freed)                     # free_folio_and_swap_cache()
    k.buddy.free_pages_bulk(freed)
    return True
