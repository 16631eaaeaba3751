"""The fault path's array work, compiled once, and the compiled loop of the `touch` step.

The readable fault path (mm/memory.py, mm/huge_memory.py, mm/rmap.py) decides what a
fault does; the array work it then does is done by compiled primitives (STYLE rule 12),
which the compiled loop ``touch_kernel`` calls too, so each rule is written once:

=========================  ==============================================================
page_alloc.folio_alloc     vma_alloc_folio(): allocate, prep_compound_page, __GFP_ZERO
pgtable.walk               p4d/pud/pmd_alloc on the way down (pgtable_alloc: NR_PAGETABLE,
pgtable.pte_alloc_install  pgtables_bytes), __pte_alloc -> pmd_install
new_anon_rmap              folio_add_new_anon_rmap(): flags, mapcount, NR_ANON_*
remove_rmap_pte            folio_remove_rmap_pte() of an order-0 folio
zap_order0_pages           zap_present_folio_ptes() of order-0 pages: RSS, rmap, folio_put
set_file_ptes              set_pte_range() of order-0 page-cache pages: rmap, RSS, the PTEs
set_anon_ptes              do_anonymous_page(): rmap, references, set_ptes, MM_ANONPAGES
set_zero_pte               do_anonymous_page() on a read: the shared zero page
wp_can_reuse_anon_folio    wp_can_reuse_anon_folio()
wp_reuse_pte               wp_page_reuse(): exclusive again, writable in place, PGREUSE
wp_page_copy_pte           wp_page_copy(): copy_user_highpage, rmap, RSS by type, the PTE
map_anon_folio_pmd         map_anon_folio_pmd(): rmap, reference, the PMD, MM_ANONPAGES
set_huge_zero_pmd          set_huge_zero_folio(): the huge zero PMD
=========================  ==============================================================

``touch_kernel`` runs one access after another through the compiled MMU (hw/fastmmu.py:
TLBs, page-walk caches, the walk with A/D bits). On a page fault in a private anonymous
VMA it does what Kernel.do_user_addr_fault -> handle_mm_fault does for the common kinds,
from the same primitives: a PMD THP (do_huge_pmd_anonymous_page) or the huge zero page,
the zero page on a read and a new page on a write (do_anonymous_page), the copy of the
zero page or of a shared page on a write (wp_page_copy, with flush_tlb_page) or the reuse
of an exclusive one (wp_page_reuse); it counts the fault (mm_account_fault) and retries
the access as Kernel.user_access does. What needs a decision only Python makes goes back
with the access not yet retried: huge-PMD faults, large folios, file and shmem pages,
spurious faults, PROT_NONE, SIGSEGV, allocation failures (fallback, compaction, OOM),
the first use of the huge zero folio. Python keeps what lives in dicts (the deposited
tables, entire mapcounts, mTHP counters): the loop records each PMD it maps for it.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import numpy.typing as npt

from pagewalk.hw import pgtable_types as pt
from pagewalk.hw.compiled import bundle, compiled
from pagewalk.hw.physmem import frame_copy, frame_touch
from pagewalk.mm.page_alloc import NO_PAGE, KernelArrays, PageFlag, folio_alloc
from pagewalk.mm.pgtable import (
    WALK_OOM,
    anon_pmd,
    anon_pte,
    pfn_of,
    pgtable_alloc,
    pte_alloc_install,
    read_entry,
    set_pte,
    walk,
)
from pagewalk.mm.types import MmStat
from pagewalk.mm.vmstat import NodeStat, VmEvent

if TYPE_CHECKING:  # the MMU's compiled code: imported when Numba compiles (needs=), not here
    from pagewalk.hw.fastmmu import flush_pcid, mmu_translate, tlb_invlpg  # noqa: TC004

Ints = npt.NDArray[np.int64]
FASTMMU = "pagewalk.hw.fastmmu"


class MmuArrays(NamedTuple):
    """The MMU's state as hw/fastmmu.py takes it: TLB and page-walk-cache storage and
    statistics, the running task's translation counters."""

    tlb_layout: Ints
    tlb_routes: Ints
    tlb_tags: Ints
    tlb_stamps: Ints
    tlb_payload: npt.NDArray[np.uint64]
    tlb_clock: Ints
    tlb_stats: Ints
    pwc_layout: Ints
    pwc_top: int
    pwc_tags: Ints
    pwc_stamps: Ints
    pwc_payload: npt.NDArray[np.uint64]
    pwc_clock: Ints
    pwc_stats: Ints
    counters: Ints


class TouchRun(NamedTuple):
    """The accesses of one run: ``start + i * stride`` for i < ``nr_accesses``, all of
    ``kind`` (0 read, 1 write), in one VMA of the running task."""

    start: int
    nr_accesses: int
    stride: int
    kind: int


class FaultVma(NamedTuple):
    """What a fault in the VMA of a run needs of the VMA, its mm and the CPU."""

    start: int
    end: int
    page_prot: np.uint64         # vm_page_prot
    writable: bool               # VM_WRITE
    anon_faults: bool            # private anonymous, no mTHP order: the loop resolves faults
    thp_pmd: bool                # thp_vma_allowable_order(PMD_ORDER) for a page fault
    huge_zero_pfn: int           # the huge zero folio; HUGE_ZERO_ABSENT, HUGE_ZERO_OFF
    zero_pfn: int
    pgd_pfn: int
    levels: int
    pcid: int
    pkru: int
    file_faults: bool            # a page-cache VMA whose read faults the loop may resolve
    file_pfns: Ints              # its page cache (i_pages: index -> pfn, NO_PAGE)
    pgoff: int                   # vm_pgoff
    file_pages: int              # DIV_ROUND_UP(i_size, PAGE_SIZE)
    file_shmem: bool             # shmem: fault-around maps large folios across i_size


bundle(MmuArrays, "q2 q3 q1 q1 Q1 q1 q2 q2 i q1 q1 Q1 q1 q2 q1")
bundle(TouchRun, "i i i i")
bundle(FaultVma, "i i u ? ? ? i i i i i i ? q1 i i ?")


class Out(enum.IntEnum):
    """Indexes of the loop's ``out`` array (its progress and what Python must finish)."""

    NEXT = 0            # the next access to do
    FAULTS = 1          # faults resolved (task.min_flt)
    ANON_WRITTEN = 2    # 1: an anonymous fault ran (the VMA needs its anon_vma)
    RECORDS = 3         # PMDs recorded in ``records``
    ERROR_CODE = 4      # the #PF error code of the fault handed back (NEED_KERNEL)
    CACHE_REGION = 5    # vaddr >> 21 of the last PTE table the loop walked to, or -1
    CACHE_TABLE = 6     # that PTE table's pfn
    FILE_PAGES_SEEN = 7  # pages fault-around considered (the file's mmap_miss goes down)
    SIZE = 8


# Stop reasons of the compiled loop.
DONE = 0
NEED_SLOTS = 2       # the physmem row pool must grow first
NEED_DRAIN = 3       # the record buffer is full
NEED_KERNEL = 4      # a fault only the Python kernel handles (out[ERROR_CODE]: its code)

HUGE_ZERO_ABSENT = -1   # use_zero_page, but the huge zero folio is not allocated yet
HUGE_ZERO_OFF = -2      # use_zero_page is 0: a read fault allocates a THP as a write does
HPAGE_PMD_NR = 512
HPAGE_PMD_SIZE = HPAGE_PMD_NR * 4096
FAULT_AROUND_PAGES = 16     # fault_around_bytes 64 KiB
PTRS_PER_PTE = 512
RESOLVED = 0
HAND_BACK = 1

P = np.uint64(pt._PAGE_PRESENT)
RW = np.uint64(pt._PAGE_RW)
ACC = np.uint64(pt._PAGE_ACCESSED)
DIRTY = np.uint64(pt._PAGE_DIRTY)
PSE = np.uint64(pt._PAGE_PSE)
SPECIAL = np.uint64(pt._PAGE_SPECIAL)
F_ANON = np.uint16(PageFlag.ANON)
F_EXCL = np.uint16(PageFlag.ANON_EXCLUSIVE)
F_DIRTY = np.uint16(PageFlag.DIRTY)
F_SHMEM = np.uint16(PageFlag.SHMEM)
F_HEAD = np.uint16(PageFlag.HEAD)
F_LARGE = np.uint16(PageFlag.HEAD | PageFlag.TAIL)
F_NOT_LAZY = np.uint16(~PageFlag.LAZYFREE & 0xFFFF)
F_READAHEAD = np.uint16(PageFlag.READAHEAD)


# -- rmap (mm/rmap.c) -------------------------------------------------------------------------

@compiled(entry="KernelArrays i i ?", inline=True)
def new_anon_rmap(ka: KernelArrays, head: int, nr_pages: int, pmd_mapped: bool) -> None:
    """folio_add_new_anon_rmap(): a fresh folio, exclusive to one mm, dirty; PTE-mapped
    pages get a mapcount of 1 (a PMD mapping's entire mapcount is Kernel.entire_mapcount,
    Python's); NR_ANON_MAPPED (and the LRU's NR_ACTIVE_ANON) count the folio's pages,
    NR_ANON_THPS a PMD-mapped one."""
    pages, node = ka.pages, ka.vmstat.node
    nr = 1 << np.int64(pages.order[head]) if pages.flags[head] & F_HEAD else 1
    for page in range(head, head + nr):
        pages.flags[page] |= F_ANON | F_EXCL
    pages.flags[head] |= F_DIRTY
    if pmd_mapped:
        node[NodeStat.NR_ANON_THPS] += HPAGE_PMD_NR
    else:
        for page in range(head, head + nr_pages):
            pages.mapcount[page] = 1
    node[NodeStat.NR_ANON_MAPPED] += nr
    node[NodeStat.NR_ACTIVE_ANON] += nr


@compiled(entry="KernelArrays i")
def remove_rmap_pte(ka: KernelArrays, pfn: int) -> None:
    """folio_remove_rmap_pte() of an order-0 folio: its last mapping gone, it leaves
    NR_ANON_MAPPED (and NR_ACTIVE_ANON) or NR_FILE_MAPPED."""
    pages, node = ka.pages, ka.vmstat.node
    pages.mapcount[pfn] -= 1
    if pages.mapcount[pfn] != 0:
        return
    if pages.flags[pfn] & F_ANON:
        node[NodeStat.NR_ANON_MAPPED] -= 1
        node[NodeStat.NR_ACTIVE_ANON] -= 1
    else:
        node[NodeStat.NR_FILE_MAPPED] -= 1


@compiled(inline=True)
def mm_counter(flags: int) -> int:
    """mm_counter(): the RSS counter of a page with these flags (RssAnon, RssShmem,
    RssFile)."""
    if flags & F_ANON:
        return MmStat.MM_ANONPAGES
    if flags & F_SHMEM:
        return MmStat.MM_SHMEMPAGES
    return MmStat.MM_FILEPAGES


@compiled(entry="KernelArrays q1 q1 B1")
def zap_order0_pages(ka: KernelArrays, mm_stat: Ints, pfns: Ints, freed: npt.NDArray[np.uint8]) -> None:
    """zap_present_folio_ptes() for order-0 pages whose PTEs were just cleared, in order:
    RSS by type (mm_counter), folio_remove_rmap_pte, folio_put; ``freed[i]`` is set when
    the last reference of ``pfns[i]`` went (the caller frees them: free_unref_folios)."""
    pages = ka.pages
    for i in range(pfns.shape[0]):
        pfn = pfns[i]
        mm_stat[mm_counter(pages.flags[pfn])] -= 1
        remove_rmap_pte(ka, pfn)
        pages.refcount[pfn] -= 1
        freed[i] = pages.refcount[pfn] == 0


@compiled(entry="KernelArrays q1 i q1 u")
def set_file_ptes(ka: KernelArrays, mm_stat: Ints, pte_paddr: int, pfns: Ints,
                  entry_bits: np.uint64) -> None:
    """set_pte_range() of filemap_map_pages/finish_fault for order-0 page-cache pages:
    ``pfns[i]`` (NO_PAGE: leave that PTE) at the PTE ``pte_paddr + 8 * i``, each with
    ``entry_bits`` (vm_page_prot, accessed, dirty and writable on a write fault); a
    reference and a mapcount per page (folio_add_file_rmap_ptes: NR_FILE_MAPPED when it
    was unmapped), MM_SHMEMPAGES or MM_FILEPAGES (mm_counter_file)."""
    for i in range(pfns.shape[0]):
        if pfns[i] != NO_PAGE:
            set_file_pte(ka, mm_stat, pte_paddr + 8 * i, pfns[i], entry_bits)


@compiled(inline=True)
def set_file_pte(ka: KernelArrays, mm_stat: Ints, pte_paddr: int, pfn: int,
                 entry_bits: np.uint64) -> None:
    """One order-0 page-cache page mapped (set_pte_range for one page)."""
    pages = ka.pages
    set_pte(ka.phys, pte_paddr, (np.uint64(pfn) << np.uint64(12)) | entry_bits)
    pages.refcount[pfn] += 1
    pages.mapcount[pfn] += 1
    if pages.mapcount[pfn] == 1:
        ka.vmstat.node[NodeStat.NR_FILE_MAPPED] += 1
    mm_stat[mm_counter(pages.flags[pfn])] += 1


# -- PTE faults (mm/memory.c) -----------------------------------------------------------------

@compiled(entry="KernelArrays q1 i i i u ?", inline=True)
def set_anon_ptes(ka: KernelArrays, mm_stat: Ints, pte_paddr: int, pfn: int, nr_pages: int,
                  page_prot: np.uint64, writable: bool) -> None:
    """The tail of do_anonymous_page() for a new folio of ``nr_pages`` pages mapped from
    ``pte_paddr`` on: folio_add_new_anon_rmap, one reference per PTE (folio_ref_add),
    set_ptes, add_mm_counter(MM_ANONPAGES)."""
    new_anon_rmap(ka, pfn, nr_pages, False)
    ka.pages.refcount[pfn] = nr_pages
    for i in range(nr_pages):
        set_pte(ka.phys, pte_paddr + 8 * i, anon_pte(pfn + i, page_prot, writable))
    mm_stat[MmStat.MM_ANONPAGES] += nr_pages


@compiled(entry="KernelArrays i i u", inline=True)
def set_zero_pte(ka: KernelArrays, pte_paddr: int, zero_pfn: int, page_prot: np.uint64) -> None:
    """do_anonymous_page() on a read: a special, young, read-only PTE of the zero page
    (no reference, no RSS)."""
    set_pte(ka.phys, pte_paddr, (np.uint64(zero_pfn) << np.uint64(12)) | page_prot | SPECIAL | ACC)


@compiled(entry="KernelArrays i", result="?", inline=True)
def wp_can_reuse_anon_folio(ka: KernelArrays, pfn: int) -> bool:
    """wp_can_reuse_anon_folio(): PageAnonExclusive, or an order-0 folio whose only
    reference is this mapping (__wp_can_reuse_large_anon_folio: a large folio that is not
    exclusive is not reused here)."""
    flags = ka.pages.flags[pfn]
    if flags & F_EXCL:
        return True
    return not flags & F_LARGE and ka.pages.refcount[pfn] == 1


@compiled(entry="KernelArrays i u i")
def wp_reuse_pte(ka: KernelArrays, pte_paddr: int, pte: np.uint64, pfn: int) -> None:
    """wp_page_reuse(): the page becomes exclusive (a lazily freed one is dirty again) and
    the PTE writable, dirty and young in place; PGREUSE."""
    ka.pages.flags[pfn] |= F_EXCL
    ka.pages.flags[pfn] &= F_NOT_LAZY
    set_pte(ka.phys, pte_paddr, pte | RW | DIRTY | ACC)
    ka.vmstat.events[VmEvent.PGREUSE] += 1


@compiled(entry="KernelArrays q1 i i i u ?")
def wp_page_copy_pte(ka: KernelArrays, mm_stat: Ints, pte_paddr: int, new: int, old: int,
                     page_prot: np.uint64, writable: bool) -> None:
    """wp_page_copy() once the new folio is allocated: copy_user_highpage (``old`` -1: the
    zero page, whose copy is the zeroed folio as allocated; the caller reserved a physmem
    row), folio_add_new_anon_rmap, the RSS moves to MM_ANONPAGES from the old page's type,
    the new PTE (ptep_clear_flush + set_pte_at). The old page's rmap and reference are
    the caller's (folio_remove_rmap_pte, folio_put), after the flush."""
    if old >= 0:
        frame_copy(ka.phys, new, old)
    new_anon_rmap(ka, new, 1, False)
    mm_stat[MmStat.MM_ANONPAGES] += 1
    if old >= 0:
        mm_stat[mm_counter(ka.pages.flags[old])] -= 1
    set_pte(ka.phys, pte_paddr, anon_pte(new, page_prot, writable))


# -- PMD faults (mm/huge_memory.c) ------------------------------------------------------------

@compiled(entry="KernelArrays q1 i i u ?")
def map_anon_folio_pmd(ka: KernelArrays, mm_stat: Ints, pmd_paddr: int, folio: int,
                       page_prot: np.uint64, writable: bool) -> None:
    """map_anon_folio_pmd(): rmap, one reference, the PMD (folio_mk_pmd, pmd_mkdirty,
    maybe_pmd_mkwrite; young), add_mm_counter(MM_ANONPAGES, HPAGE_PMD_NR)."""
    new_anon_rmap(ka, folio, HPAGE_PMD_NR, True)
    ka.pages.refcount[folio] = 1
    set_pte(ka.phys, pmd_paddr, anon_pmd(folio, page_prot, writable))
    mm_stat[MmStat.MM_ANONPAGES] += HPAGE_PMD_NR


@compiled(entry="KernelArrays i i u")
def set_huge_zero_pmd(ka: KernelArrays, pmd_paddr: int, zero: int, page_prot: np.uint64) -> None:
    """set_huge_zero_folio(): a special, young, read-only PMD of the huge zero folio."""
    set_pte(ka.phys, pmd_paddr,
            (np.uint64(zero) << np.uint64(12)) | page_prot | PSE | ACC | SPECIAL)


@compiled(inline=True)
def _free_pages_total(ka: KernelArrays) -> int:
    """Free pages over the zonelist's zones."""
    total = 0
    for zone in ka.pages.zonelist:
        for order in range(ka.pages.nr_free.shape[1]):
            total += ka.pages.nr_free[zone, order] << order
    return total


# -- the compiled fault handler -----------------------------------------------------------------

@compiled(needs=(f"{FASTMMU}:tlb_invlpg", f"{FASTMMU}:flush_pcid"))
def _flush_tlb_page(vaddr: int, vma: FaultVma, mmu: MmuArrays, events: Ints) -> None:
    """flush_tlb_page() of the running mm -> INVLPG: the TLB entries of vaddr and the
    page-walk caches (mm/tlb.py flush_tlb_page, hw/mmu.py invlpg)."""
    tlb_invlpg(vaddr, vma.pcid, mmu.tlb_layout, mmu.tlb_routes, mmu.tlb_tags, mmu.tlb_stamps,
               mmu.tlb_payload)
    flush_pcid(vma.pcid, mmu.pwc_tags, mmu.pwc_stamps, mmu.pwc_payload, 48)
    events[VmEvent.TLB_FLUSH_ONE] += 1


@compiled
def _huge_pmd_fault(write: bool, vma: FaultVma, ka: KernelArrays, mm_stat: Ints,
                    pmd_paddr: int, out: Ints, records: Ints) -> int:
    """do_huge_pmd_anonymous_page() for a suitable range: the huge zero page on a read
    (use_zero_page), else a new THP with its deposited PTE table. Anything that could
    fail goes back before it changes anything."""
    if not write and vma.huge_zero_pfn != HUGE_ZERO_OFF:
        if vma.huge_zero_pfn == HUGE_ZERO_ABSENT:
            return HAND_BACK                 # get_huge_zero_folio() allocates it: Python
        table = pgtable_alloc(ka, mm_stat, 0, True)  # pte_alloc_one
        if table == NO_PAGE:
            return HAND_BACK
        set_huge_zero_pmd(ka, pmd_paddr, vma.huge_zero_pfn, vma.page_prot)
        folio = NO_PAGE
    else:
        # The kernel allocates the folio, then the deposit; when that fails it puts the
        # folio and answers VM_FAULT_OOM: Python's, so go back unless both will succeed.
        if _free_pages_total(ka) <= HPAGE_PMD_NR:
            return HAND_BACK
        folio = folio_alloc(ka, 9)
        if folio == NO_PAGE:
            return HAND_BACK                 # fallback or compaction: Python decides
        table = pgtable_alloc(ka, mm_stat, 0, True)
        map_anon_folio_pmd(ka, mm_stat, pmd_paddr, folio, vma.page_prot, vma.writable)
        ka.vmstat.events[VmEvent.THP_FAULT_ALLOC] += 1
    row = out[Out.RECORDS]
    records[row, 0] = pmd_paddr
    records[row, 1] = table
    records[row, 2] = folio
    out[Out.RECORDS] = row + 1
    out[Out.ANON_WRITTEN] = 1                # anon_vma_prepare() ran
    return RESOLVED


@compiled
def _wp_fault(vaddr: int, vma: FaultVma, ka: KernelArrays, mm_stat: Ints, mmu: MmuArrays,
              pte_paddr: int, pte: np.uint64, out: Ints) -> int:
    """do_wp_page() in a private anonymous VMA: reuse an exclusive page (wp_page_reuse),
    copy the zero page or an order-0 page others map too (wp_page_copy)."""
    old = NO_PAGE
    if not pte & SPECIAL:                    # vm_normal_page(): none for special PTEs
        old = pfn_of(pte)
        flags = ka.pages.flags[old]
        if not flags & F_ANON:
            return HAND_BACK                 # a file page: Python
        if wp_can_reuse_anon_folio(ka, old):
            wp_reuse_pte(ka, pte_paddr, pte, old)
            return RESOLVED
        if flags & F_LARGE:
            return HAND_BACK                 # a large folio: Python
    new = folio_alloc(ka, 0)
    if new == NO_PAGE:
        return HAND_BACK
    out[Out.ANON_WRITTEN] = 1                # anon_vma_prepare() ran
    wp_page_copy_pte(ka, mm_stat, pte_paddr, new, old, vma.page_prot, vma.writable)
    _flush_tlb_page(vaddr, vma, mmu, ka.vmstat.events)
    if old != NO_PAGE:
        remove_rmap_pte(ka, old)
        ka.pages.refcount[old] -= 1          # folio_put(): others map it (a sole one is reused)
    return RESOLVED


@compiled(inline=True)
def _anon_fault(vaddr: int, write: bool, vma: FaultVma, ka: KernelArrays, mm_stat: Ints,
                mmu: MmuArrays, out: Ints, records: Ints) -> int:
    """__handle_mm_fault() -> handle_pte_fault() for a private anonymous VMA: RESOLVED, or
    HAND_BACK for Python to handle the fault (what was allocated on the way, tables, it
    finds in place, as the kernel would after a retry)."""
    region = vaddr >> 21
    if out[Out.CACHE_REGION] == region:      # the walk below was done for this 2 MiB
        table = out[Out.CACHE_TABLE]
    else:
        pmd_paddr, shift = walk(ka, mm_stat, vma.pgd_pfn, vma.levels, False, vaddr, 21, True)
        if shift == WALK_OOM:
            return HAND_BACK
        pmd = read_entry(ka.phys, pmd_paddr)
        if pmd == 0 and vma.thp_pmd:
            haddr = vaddr & ~(HPAGE_PMD_SIZE - 1)
            if haddr >= vma.start and haddr + HPAGE_PMD_SIZE <= vma.end:
                return _huge_pmd_fault(write, vma, ka, mm_stat, pmd_paddr, out, records)
        elif pmd & PSE:
            return HAND_BACK                 # huge PMD: do_huge_pmd_wp_page and friends
        table = pte_alloc_install(ka, mm_stat, pmd_paddr)
        if table == NO_PAGE:
            return HAND_BACK
        out[Out.CACHE_REGION] = region
        out[Out.CACHE_TABLE] = table
    pte_paddr = table * 4096 + ((vaddr >> 12) & 511) * 8
    pte = read_entry(ka.phys, pte_paddr)
    if pte == 0:                             # do_anonymous_page()
        if not write:
            set_zero_pte(ka, pte_paddr, vma.zero_pfn, vma.page_prot)
            return RESOLVED
        pfn = folio_alloc(ka, 0)
        if pfn == NO_PAGE:
            return HAND_BACK
        set_anon_ptes(ka, mm_stat, pte_paddr, pfn, 1, vma.page_prot, vma.writable)
        out[Out.ANON_WRITTEN] = 1
        return RESOLVED
    if not pte & P or not write or pte & RW:
        return HAND_BACK                     # PROT_NONE, spurious: the Python path
    return _wp_fault(vaddr, vma, ka, mm_stat, mmu, pte_paddr, pte, out)


@compiled(inline=True)
def _file_page(vma: FaultVma, index: int) -> int:
    if index < 0 or index >= vma.file_pfns.shape[0]:
        return NO_PAGE
    return int(vma.file_pfns[index])


@compiled
def _file_read_fault(vaddr: int, vma: FaultVma, ka: KernelArrays, mm_stat: Ints,
                     out: Ints) -> int:
    """do_read_fault() -> do_fault_around() for a page that is cached, order 0 and not
    PG_readahead, when the 64 KiB window holds no large folio: filemap_map_pages maps
    every cached, unmarked page of the window whose PTE is none (mm/shmem.py
    do_fault_around, the readable path). What needs more goes back: SIGBUS past i_size,
    a page to read or allocate, async readahead, large folios, a huge PMD, a fault-around
    that would map nothing (a PMD none and a first page that reaches i_size)."""
    index = vma.pgoff + ((vaddr - vma.start) >> 12)
    if index >= vma.file_pages:
        return HAND_BACK
    pfn = _file_page(vma, index)
    if pfn == NO_PAGE or ka.pages.flags[pfn] & (F_LARGE | F_READAHEAD):
        return HAND_BACK
    pte_off = (vaddr >> 12) & 511
    vma_off = (vaddr - vma.start) >> 12
    from_pte = max(pte_off & ~(FAULT_AROUND_PAGES - 1), pte_off - min(pte_off, vma_off))
    to_pte = min(from_pte + FAULT_AROUND_PAGES, PTRS_PER_PTE,
                 pte_off + ((vma.end - vma.start) >> 12) - vma_off) - 1
    start_pgoff = index + from_pte - pte_off
    end_pgoff = min(index + to_pte - pte_off, vma.file_pages - 1)
    first = NO_PAGE
    for i in range(start_pgoff, end_pgoff + 1):
        page = _file_page(vma, i)
        if page == NO_PAGE:
            continue
        if ka.pages.flags[page] & F_LARGE:
            return HAND_BACK
        if first == NO_PAGE and not ka.pages.flags[page] & F_READAHEAD:
            first = i
    pmd_paddr, shift = walk(ka, mm_stat, vma.pgd_pfn, vma.levels, False, vaddr, 21, True)
    if shift == WALK_OOM:
        return HAND_BACK
    pmd = read_entry(ka.phys, pmd_paddr)
    if pmd & PSE:
        return HAND_BACK
    if pmd == 0 and not vma.file_shmem and first == vma.file_pages - 1:
        return HAND_BACK                 # can_map_large false: no table, nothing mapped
    table = pte_alloc_install(ka, mm_stat, pmd_paddr)
    if table == NO_PAGE:
        return HAND_BACK
    bits = vma.page_prot | ACC
    seen = 0
    for i in range(start_pgoff, end_pgoff + 1):
        page = _file_page(vma, i)
        if page == NO_PAGE or ka.pages.flags[page] & F_READAHEAD:
            continue
        seen += 1
        pte_paddr = table * 4096 + (pte_off + i - index) * 8
        if read_entry(ka.phys, pte_paddr) == 0:
            set_file_pte(ka, mm_stat, pte_paddr, page, bits)
    out[Out.FILE_PAGES_SEEN] += seen
    return RESOLVED


@compiled(inline=True)
def _frame_of(vaddr: int, vma: FaultVma, ka: KernelArrays, out: Ints) -> int:
    """The 4 KiB frame an access that just translated reached (the tables it used are all
    present): through the PTE table of the last fault when the address is in its 2 MiB."""
    if out[Out.CACHE_REGION] == vaddr >> 21:
        return pfn_of(read_entry(ka.phys, out[Out.CACHE_TABLE] * 4096 + ((vaddr >> 12) & 511) * 8))
    table = vma.pgd_pfn
    shift = 39 if vma.levels == 4 else 48
    while True:
        entry = read_entry(ka.phys, table * 4096 + ((vaddr >> shift) & 511) * 8)
        pfn = pfn_of(entry)
        if shift == 12 or entry & PSE:
            span = (1 << (shift - 12)) - 1   # 4 KiB frames in the leaf, less one
            return (pfn & ~span) + ((vaddr >> 12) & span)
        table = pfn
        shift -= 9


@compiled(entry="TouchRun FaultVma KernelArrays q1 MmuArrays q1 q2", result="i",
          needs=(f"{FASTMMU}:mmu_translate",))
def touch_kernel(run: TouchRun, vma: FaultVma, ka: KernelArrays, mm_stat: Ints,
                 mmu: MmuArrays, out: Ints, records: Ints) -> int:
    """Accesses ``run.start + i * run.stride`` for i in [out[NEXT], run.nr_accesses), each
    through the compiled MMU; a page fault the loop can resolve is resolved and the access
    retried, as Kernel.user_access does. Returns a stop reason: NEED_KERNEL when a fault
    needs the Python kernel (out[ERROR_CODE] holds its error code, the failed translation
    already counted), NEED_SLOTS or NEED_DRAIN before the access. A write stores the
    touch byte (physmem.frame_touch). ``records`` gets (PMD entry
    paddr, deposited table, folio or NO_PAGE for the huge zero page) per PMD mapped."""
    write = run.kind == 1
    i = out[Out.NEXT]
    while i < run.nr_accesses:
        vaddr = run.start + i * run.stride
        if ka.phys.nr_free_slots[0] < vma.levels + 2:    # new tables, a copied page, a byte
            out[Out.NEXT] = i
            return NEED_SLOTS
        if out[Out.RECORDS] >= records.shape[0]:
            out[Out.NEXT] = i
            return NEED_DRAIN
        code = mmu_translate(vaddr, run.kind, vma.pcid, vma.pgd_pfn, vma.levels,
                             ka.phys.slot_of, ka.phys.pool, mmu.tlb_layout, mmu.tlb_routes,
                             mmu.tlb_tags, mmu.tlb_stamps, mmu.tlb_payload, mmu.tlb_clock,
                             mmu.tlb_stats, mmu.pwc_layout, mmu.pwc_top, mmu.pwc_tags,
                             mmu.pwc_stamps, mmu.pwc_payload, mmu.pwc_clock, mmu.pwc_stats,
                             mmu.counters, vma.pkru)
        if code == 0:
            if write:
                frame_touch(ka.phys, _frame_of(vaddr, vma, ka, out) << 12 | (vaddr & 0xFFF))
            i += 1
            continue
        # do_user_addr_fault(): what only Python handles goes back with the error code.
        out[Out.NEXT] = i
        out[Out.ERROR_CODE] = code
        if (write and not vma.writable) or (code & pt.X86_PF_PROT and not write) \
                or code & pt.X86_PF_PK:                          # access_error(), X86_PF_PK
            return NEED_KERNEL
        if vma.anon_faults:
            if _anon_fault(vaddr, write, vma, ka, mm_stat, mmu, out, records) != RESOLVED:
                return NEED_KERNEL
        elif not vma.file_faults or write or code & pt.X86_PF_PROT or \
                _file_read_fault(vaddr, vma, ka, mm_stat, out) != RESOLVED:
            return NEED_KERNEL
        out[Out.FAULTS] += 1                 # mm_account_fault()
        ka.vmstat.events[VmEvent.PGFAULT] += 1
        # the access is retried (same i): the MMU translates it now
    out[Out.NEXT] = i
    return DONE
