"""Page-cache backed mappings: shared anonymous memory (shmem), the program file, the vdso.

Follows mm/shmem.c (shmem_zero_setup, shmem_fault -> shmem_get_folio_gfp,
shmem_allowable_huge_orders, shmem_huge_global_enabled, shmem_suitable_orders,
shmem_alloc_and_add_folio, shmem_get_unmapped_area, shmem_acct_size), mm/filemap.c
(filemap_map_pages, filemap_map_pmd) and mm/memory.c (do_fault, do_read_fault with
do_fault_around, do_shared_fault, do_cow_fault, finish_fault, do_set_pmd).

A page-cache folio holds one reference per page for the cache (on its head) and one per
mapping; shmem pages count in Shmem and RssShmem. A large shmem folio (an mTHP, or a
PMD-sized THP made by a fault or by MADV_COLLAPSE's collapse_file) sits in ``pages`` as
its subpages. A fault where the PMD is none maps a PMD-sized folio by PMD (do_set_pmd,
no deposited table on x86); finish_fault maps the whole of a large folio of anonymous
shmem by PTEs when it fits the VMA and the PTE table; fault-around maps up to 16 cached
pages. Which folio sizes a fault allocates is the shmem_enabled knobs' decision: the
top-level ``shmem_enabled`` (the shm_mnt ``huge=`` policy, with ``deny``/``force``) and,
for anonymous shmem, the per-size ``hugepages-<N>kB/shmem_enabled`` (``inherit`` takes
the top-level answer).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from pagewalk.hw import pgtable_types as pt
from pagewalk.mm import fastfault, filemap, huge_memory, rmap
from pagewalk.mm.page_alloc import NO_PAGE, PageFlag
from pagewalk.mm.pgtable import mk_anon_pte, pte_alloc
from pagewalk.mm.rmap import anon_vma_prepare
from pagewalk.mm.types import FaultFlags, MmStat, MmStruct, Vma, VmFault, VmFlags
from pagewalk.mm.util import vm_acct_memory, vm_unacct_memory
from pagewalk.mm.vmstat import NodeStat, VmEvent

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel

FAULT_AROUND_PAGES = 16  # fault_around_bytes 64 KiB
_READAHEAD = int(PageFlag.READAHEAD)   # a plain int: IntFlag lookups are slow in hot loops
THP = "/sys/kernel/mm/transparent_hugepage"
SHMEM_ENABLED = f"{THP}/shmem_enabled"
#: the sizes with a hugepages-<N>kB/shmem_enabled file (kernel/knobs.py has them too)
SHMEM_MTHP_SIZES_KB = (8, 16, 32, 64, 128, 256, 512, 1024, 2048)
HPAGE_PMD_ORDER = 9
HPAGE_PMD_NR = 512
HPAGE_PMD_SIZE = 1 << 21
PTRS_PER_PTE = 512
#: THP_ORDERS_ALL_FILE_DEFAULT on x86-64: orders 1 .. PMD_ORDER (MAX_PAGECACHE_ORDER)
SHMEM_ORDERS = tuple(range(1, HPAGE_PMD_ORDER + 1))


class PageCacheFile:
    """An inode and its page cache (address_space): index -> pfn. ``kind`` is "shmem",
    "file" or "vdso"; ``fs`` is the scenario file system of a ``file`` step's inode
    ("disk": ext4, "tmpfs", "memfd"), None for the kernel's own (shared anonymous memory,
    the program, the vdso)."""

    def __init__(self, name: str, kind: str, size: int = 0, accounted_pages: int = 0,
                 fs: str | None = None, ino: int = 0) -> None:
        self.name = name                          # the path /proc/PID/maps shows
        self.kind = kind
        self.size = size                          # i_size in bytes
        self.pages = filemap.PageCache()          # i_pages: index -> pfn
        self.accounted_pages = accounted_pages   # shmem_acct_size() charge (Committed_AS)
        self.fs = fs
        self.ino = ino
        self.unlinked = fs == "memfd"             # no name in any directory

    @property
    def map_name(self) -> str:
        if self.kind == "shmem" and self.fs is None:
            return "/dev/zero (deleted)"
        return f"{self.name} (deleted)" if self.unlinked else self.name

    @property
    def anon_shmem(self) -> bool:
        """vma_is_anon_shmem(): the shmem file of a shared anonymous mapping."""
        return self.kind == "shmem" and self.fs is None

    @property
    def size_pages(self) -> int:
        """DIV_ROUND_UP(i_size_read(inode), PAGE_SIZE)."""
        return (self.size + 4095) >> 12

    def find_or_create_page(self, k: Kernel, index: int) -> int:
        """filemap_grab_folio() for the program file and the vdso: the cached page, or a
        new zeroed order-0 one (shmem goes through :func:`shmem_get_folio`)."""
        pfn = int(self.pages.get(index, NO_PAGE))
        if pfn != NO_PAGE:
            return pfn
        pfn = rmap.folio_alloc(k, 0)
        if pfn == NO_PAGE:
            return NO_PAGE
        if self.kind == "shmem":
            self.add_folio(k, pfn, 0, index)
            return pfn
        k.memmap.flags[pfn] |= PageFlag.FILE
        if self.kind == "file":
            k.node_stat[NodeStat.NR_FILE_PAGES] += 1
            k.node_stat[NodeStat.NR_ACTIVE_FILE] += 1
        self.pages[index] = pfn
        return pfn

    def add_folio(self, k: Kernel, head: int, order: int, index: int) -> None:
        """shmem_add_to_page_cache() + shmem_update_stats() + folio_add_lru() for a new
        shmem folio of 2**order pages at ``index`` (aligned): the cache takes one reference
        per page (the allocation's own becomes the first)."""
        nr = 1 << order
        memmap = k.memmap
        memmap.flags[head: head + nr] |= np.uint16(PageFlag.SHMEM)
        memmap.refcount[head] = nr
        if self.fs in ("tmpfs", "memfd"):
            vm_acct_memory(k, nr)     # shmem_acct_blocks(): VM_NORESERVE inodes, per page
        if order == HPAGE_PMD_ORDER:                  # folio_test_pmd_mappable
            k.node_stat[NodeStat.NR_SHMEM_THPS] += nr
        k.node_stat[NodeStat.NR_SHMEM] += nr
        k.node_stat[NodeStat.NR_FILE_PAGES] += nr
        k.node_stat[NodeStat.NR_INACTIVE_ANON] += nr   # swap-backed: the anon LRU
        for i in range(nr):
            self.pages[index + i] = head + i

    def vma_close(self, k: Kernel, vma: Vma) -> None:
        """The last mapping of an unlinked shmem inode went away: truncate it."""
        if not self.anon_shmem:
            return
        for task in k.tasks.values():
            if any(v.file is self for v in task.mm.vmas):
                return
        for pfn in self.pages.values():
            head = rmap.folio_head(k, pfn)
            if head == pfn and rmap.folio_order(k, head) == HPAGE_PMD_ORDER:
                k.node_stat[NodeStat.NR_SHMEM_THPS] -= HPAGE_PMD_NR
            k.node_stat[NodeStat.NR_SHMEM] -= 1
            k.node_stat[NodeStat.NR_FILE_PAGES] -= 1
            k.node_stat[NodeStat.NR_INACTIVE_ANON] -= 1
            rmap.folio_put(k, head)   # a large folio: one reference a page
        self.pages.clear()
        if self.accounted_pages:
            vm_unacct_memory(k, self.accounted_pages)
            self.accounted_pages = 0

    def may_split(self, vma: Vma, addr: int) -> None:
        """shmem and file mappings have no vm_ops->may_split: any page boundary will do."""


def shmem_zero_setup(k: Kernel, length: int, vm_flags: VmFlags) -> PageCacheFile:
    """shmem_zero_setup(): an unlinked shmem inode of ``length`` bytes; shmem_acct_size
    charges Committed_AS unless VM_NORESERVE."""
    pages = 0 if vm_flags & VmFlags.NORESERVE else length >> 12
    if pages:
        vm_acct_memory(k, pages)
    return PageCacheFile("/dev/zero", "shmem", length, pages)


def page_cache_of(vma: Vma) -> PageCacheFile:
    """The inode (page cache) behind a VMA that faults through do_fault (vm_file->f_mapping):
    shmem, a scenario file, the program, the vdso."""
    file = vma.file
    if isinstance(file, filemap.File):
        return file.inode
    assert isinstance(file, PageCacheFile), f"{vma.name}: no page cache behind this VMA"
    return file


def file_index(vma: Vma, vaddr: int) -> int:
    return vma.pgoff + ((vaddr - vma.start) >> 12)


# --- which folio sizes (mm/shmem.c) ---------------------------------------------------------

def _order_of(size_kb: int) -> int:
    return (size_kb // 4).bit_length() - 1


def shmem_size_knob(size_kb: int) -> str:
    return f"{THP}/hugepages-{size_kb}kB/shmem_enabled"


def huge_shmem_orders(k: Kernel, setting: str) -> int:
    """huge_shmem_orders_{always,inherit,within_size,madvise}: the orders whose
    hugepages-<N>kB/shmem_enabled holds ``setting`` (``advise`` is the madvise set)."""
    mask = 0
    for size_kb in SHMEM_MTHP_SIZES_KB:
        if k.knobs.get(shmem_size_knob(size_kb)) == setting:
            mask |= 1 << _order_of(size_kb)
    return mask


def shmem_huge_global_enabled(k: Kernel, file: PageCacheFile, index: int,
                              vm_flags: VmFlags, force: bool = False) -> bool:
    """shmem_huge_global_enabled(): may the top-level policy use a PMD-sized folio at
    ``index``? deny never, force always; otherwise the shm_mnt ``huge=`` policy, which
    shmem_enabled_store sets to the same word: always; within_size when the aligned
    2 MiB ends within i_size (else as advise); advise with VM_HUGEPAGE."""
    huge = k.knobs.get(SHMEM_ENABLED)
    if huge == "deny":
        return False
    if force or huge == "force":
        return True
    huge = shmem_sb_huge(k, file)
    if huge == "always":
        return True
    if huge == "within_size":
        aligned_end = (index + 1 + HPAGE_PMD_NR - 1) & ~(HPAGE_PMD_NR - 1)   # round_up
        if file.size_pages >= aligned_end:
            return True
    if huge in ("within_size", "advise"):
        return bool(vm_flags & VmFlags.HUGEPAGE)
    return False


def vma_is_anon_shmem(vma: Vma) -> bool:
    """vma_is_anon_shmem(): shmem_anon_vm_ops, which shmem_mmap gives a mapping of an
    inode without links: shared anonymous memory, a memfd, an unlinked tmpfs file (the
    per-size hugepages-<N>kB/shmem_enabled knobs then choose its folio sizes)."""
    if isinstance(vma.file, filemap.File):
        return vma.file.anon_vm_ops
    return isinstance(vma.file, PageCacheFile) and vma.file.anon_shmem


def shmem_sb_huge(k: Kernel, file: PageCacheFile) -> str:
    """SHMEM_SB(inode->i_sb)->huge: the internal shm_mnt (shared anonymous memory, memfd)
    follows shmem_enabled (shmem_enabled_store sets it); a tmpfs file lives on /dev/shm,
    mounted without huge=, so never."""
    return "never" if file.fs == "tmpfs" else k.knobs.get(SHMEM_ENABLED)


def shmem_allowable_huge_orders(k: Kernel, file: PageCacheFile, vma: Vma | None, index: int,
                                force: bool = False) -> int:
    """shmem_allowable_huge_orders(): the bitmask of large orders a new folio at ``index``
    may have. The VMA may forbid THPs (vma_thp_disabled); for anonymous shmem the per-size
    knobs decide, ``inherit`` taking the top-level answer; with ``force`` only the sizes
    that inherit, with ``deny`` none."""
    vm_flags = vma.flags if vma is not None else VmFlags(0)
    if vma is not None and vma.vm_mm is not None and huge_memory.vma_thp_disabled(vma.vm_mm, vma):
        return 0
    global_pmd = shmem_huge_global_enabled(k, file, index, vm_flags, force)
    if vma is None or not vma_is_anon_shmem(vma) or force:
        return 1 << HPAGE_PMD_ORDER if global_pmd else 0
    huge = k.knobs.get(SHMEM_ENABLED)
    if huge == "deny":
        return 0
    if huge == "force":
        return huge_shmem_orders(k, "inherit")
    mask = huge_shmem_orders(k, "always")
    within = huge_shmem_orders(k, "within_size")
    for order in sorted((o for o in SHMEM_ORDERS if within >> o & 1), reverse=True):
        aligned_end = (index + 1 + (1 << order) - 1) & ~((1 << order) - 1)
        if file.size_pages >= aligned_end:
            mask |= within & ((2 << order) - 1)   # this order and the smaller ones left
            break
    if vm_flags & VmFlags.HUGEPAGE:
        mask |= huge_shmem_orders(k, "advise")
    if global_pmd:
        mask |= huge_shmem_orders(k, "inherit")
    return mask & sum(1 << o for o in SHMEM_ORDERS)


def shmem_suitable_orders(k: Kernel, vma: Vma, vaddr: int, file: PageCacheFile, index: int,
                          orders: int) -> list[int]:
    """shmem_suitable_orders(): the orders whose aligned block fits the VMA
    (thp_vma_suitable_orders), from the highest whose range of the page cache is still
    empty down (a cached page in the block rules that order out)."""
    candidates = [o for o in sorted(SHMEM_ORDERS, reverse=True)
                  if orders >> o & 1 and huge_memory.thp_vma_suitable_order(vma, vaddr, o)]
    for i, order in enumerate(candidates):
        start = index & ~((1 << order) - 1)
        if not any(start + j in file.pages for j in range(1 << order)):
            return candidates[i:]
    return []


def shmem_alloc_and_add_folio(k: Kernel, vma: Vma, vaddr: int, file: PageCacheFile, index: int,
                              orders: int) -> int:
    """shmem_alloc_and_add_folio() then shmem_get_folio_gfp()'s counters: the largest
    suitable order that allocates (vma_thp_gfp_mask: direct compaction as the defrag knob
    allows) joins the page cache; a failed order counts thp_file_fallback (2 MiB) and the
    size's shmem_fallback. Returns the pfn of page ``index``, or NO_PAGE."""
    for order in shmem_suitable_orders(k, vma, vaddr, file, index, orders):
        head = huge_memory.alloc_thp(k, vma, order)
        if head == NO_PAGE:
            if order == HPAGE_PMD_ORDER:
                k.vm_events[VmEvent.THP_FILE_FALLBACK] += 1
            huge_memory.count_mthp_stat(k, order, "shmem_fallback")
            continue
        start = index & ~((1 << order) - 1)
        file.add_folio(k, head, order, start)
        if order == HPAGE_PMD_ORDER:
            k.vm_events[VmEvent.THP_FILE_ALLOC] += 1
        huge_memory.count_mthp_stat(k, order, "shmem_alloc")
        return head + index - start
    return NO_PAGE


def shmem_get_folio(k: Kernel, vma: Vma, vaddr: int, file: PageCacheFile, index: int) -> int:
    """shmem_get_folio_gfp(SGP_CACHE) from a fault: the cached page at ``index``, or a new
    folio as shmem_allowable_huge_orders allows (order 0 when no large one fits or
    allocates). The caller checked index < i_size. Returns the pfn or NO_PAGE (OOM)."""
    pfn = file.pages.get(index, NO_PAGE)
    if pfn != NO_PAGE or file.kind != "shmem":
        return pfn if pfn != NO_PAGE else file.find_or_create_page(k, index)
    orders = shmem_allowable_huge_orders(k, file, vma, index)
    if orders:
        pfn = shmem_alloc_and_add_folio(k, vma, vaddr, file, index, orders)
        if pfn != NO_PAGE:
            return pfn
    return file.find_or_create_page(k, index)


def shmem_get_unmapped_area(k: Kernel, mm: MmStruct, addr: int, length: int,
                            window: int, pgoff: int | None = None,
                            sb_huge: str | None = None) -> int:
    """shmem_get_unmapped_area() for a new shared anonymous mapping (pgoff 0, no
    MAP_FIXED): the plain search, then, unless the hint was taken or no large folio can
    be used, a search for length + size - 4 KiB rounded up to the size of the highest
    order anonymous shmem may use (per-size always/within_size/advise, inherit unless
    shmem_enabled is never; 2 MiB under force, and when no size is in use but
    shmem_enabled is not never). -1 when nothing fits. ``pgoff`` given: the VMA's shmem file
    (mremap, a memfd or tmpfs file), whose sb skips the mTHP orders and whose offset the
    alignment keeps; ``sb_huge`` the sb's huge= policy when it is not shmem_enabled's."""
    from pagewalk.mm.mmap import arch_get_unmapped_area_topdown
    found = arch_get_unmapped_area_topdown(mm, addr, length, 0, window)
    huge = k.knobs.get(SHMEM_ENABLED)
    if found < 0 or found > mm.task_size - length or huge == "deny" or addr == found:
        return found
    hpage_size = HPAGE_PMD_SIZE
    if huge != "force":
        orders = 0
        if pgoff is None:                # no file: the highest anonymous shmem mTHP order
            orders = huge_shmem_orders(k, "always") | huge_shmem_orders(k, "within_size") | \
                huge_shmem_orders(k, "advise")
            if huge != "never":
                orders |= huge_shmem_orders(k, "inherit")
        if orders:
            hpage_size = 4096 << (orders.bit_length() - 1)
        elif (sb_huge or huge) == "never":
            return found                 # the mount's huge=never and no size in use
    if length < hpage_size:
        return found
    offset = ((pgoff or 0) << 12) & (hpage_size - 1)
    if offset and offset + length < 2 * hpage_size:
        return found
    if found & (hpage_size - 1) == offset:
        return found
    inflated = arch_get_unmapped_area_topdown(mm, addr, length + hpage_size - 4096, 0, window)
    if inflated < 0:
        return found
    inflated_offset = inflated & (hpage_size - 1)
    inflated += offset - inflated_offset
    if inflated_offset > offset:
        inflated += hpage_size
    return found if inflated > mm.task_size - length else inflated


# --- mapping the page cache (mm/memory.c, mm/filemap.c) ---------------------------------------

def map_file_page(k: Kernel, mm: MmStruct, vma: Vma, vaddr: int, pfn: int, write: bool) -> None:
    """set_pte_range() for one page-cache page: a reference, a mapcount, RSS."""
    pmd_paddr, _ = k.pgtables.walk(mm, vaddr, 21, alloc=True)
    table = pte_alloc(k, mm, pmd_paddr)
    entry = pt.mk_pte(pfn, vma.page_prot) | pt._PAGE_ACCESSED
    if write:
        entry |= pt._PAGE_DIRTY | (pt._PAGE_RW if vma.flags & VmFlags.WRITE else 0)
    k.pgtables.set_entry(mm, (table << 12) + ((vaddr >> 12) & 511) * 8, entry)
    rmap.folio_get(k, rmap.folio_head(k, pfn))
    rmap.folio_add_pte_rmap(k, pfn)
    mm.stat[mm_counter_file(k, pfn)] += 1


def mm_counter_file(k: Kernel, pfn: int) -> MmStat:
    """mm_counter_file(): shmem pages count in RssShmem, other page-cache pages in RssFile."""
    return MmStat.MM_SHMEMPAGES if k.memmap.flags[pfn] & PageFlag.SHMEM else MmStat.MM_FILEPAGES


def do_fault(k: Kernel, mm: MmStruct, vma: Vma, vaddr: int, pmd_paddr: int,
             flags: FaultFlags) -> VmFault:
    """do_fault(): read -> do_read_fault (fault-around), write to a shared mapping ->
    do_shared_fault, write to a private mapping -> do_cow_fault. The ->fault handler
    refuses an index at or beyond i_size (shmem_fault SGP_CACHE, filemap_fault: SIGBUS),
    after a read fault's fault-around mapped the cached pages of its window below i_size."""
    if not flags & FaultFlags.WRITE:
        return do_read_fault(k, mm, vma, vaddr, pmd_paddr)
    if vma.flags & VmFlags.SHARED:
        return do_shared_fault(k, mm, vma, vaddr, pmd_paddr)
    return do_cow_fault(k, mm, vma, vaddr)


def __do_fault(k: Kernel, vma: Vma, vaddr: int, retry: bool = False) -> tuple[int, VmFault]:
    """__do_fault() -> vma->vm_ops->fault: filemap_fault for a disk file (may read it:
    VM_FAULT_MAJOR), shmem_fault (a hole gets a new zeroed folio) or the program's page."""
    file = page_cache_of(vma)
    index = file_index(vma, vaddr)
    if (file.kind == "shmem" or file.fs is not None) and index >= file.size_pages:
        return NO_PAGE, VmFault.SIGBUS       # shmem_fault / filemap_fault: past i_size
    if file.fs == "disk":
        assert isinstance(vma.file, filemap.File)
        pfn, ret = filemap.filemap_fault(k, vma, vma.file, index)
        return pfn, ret if retry else ret & ~VmFault.RETRY
    pfn = shmem_get_folio(k, vma, vaddr, file, index)
    return pfn, VmFault.OOM if pfn == NO_PAGE else VmFault.OK


def do_read_fault(k: Kernel, mm: MmStruct, vma: Vma, vaddr: int, pmd_paddr: int) -> VmFault:
    """do_read_fault(): do_fault_around() first (filemap_map_pages over the 64 KiB-aligned
    window around vaddr, clamped to the VMA and the PTE table); when that did not map
    vaddr, __do_fault and finish_fault."""
    ret = do_fault_around(k, mm, vma, vaddr, pmd_paddr)
    if ret:
        return ret
    pfn, ret = __do_fault(k, vma, vaddr, retry=True)
    if ret & VmFault.ERROR:
        return ret
    if ret & (VmFault.MAJOR | VmFault.RETRY):
        # filemap_fault dropped the lock for I/O (maybe_unlock_mmap_for_io):
        # VM_FAULT_RETRY, and the fault runs again (FAULT_FLAG_TRIED, accounted once, as
        # major after a read), fault-around now finding the pages just read around it
        ret &= ~VmFault.RETRY
        again = do_fault_around(k, mm, vma, vaddr, pmd_paddr)
        if again:
            return again | ret
    return finish_fault(k, mm, vma, vaddr, pmd_paddr, pfn, write=False) | ret


def do_shared_fault(k: Kernel, mm: MmStruct, vma: Vma, vaddr: int, pmd_paddr: int) -> VmFault:
    """do_shared_fault(): __do_fault (no fault-around), ->page_mkwrite (ext4 dirties the
    folio; shmem has none), then finish_fault with write."""
    pfn, ret = __do_fault(k, vma, vaddr)
    if ret & VmFault.ERROR:
        return ret
    file = page_cache_of(vma)
    if file.fs == "disk":
        filemap.folio_mark_dirty(k, file, rmap.folio_head(k, pfn))   # ext4_page_mkwrite
    return finish_fault(k, mm, vma, vaddr, pmd_paddr, pfn, write=True) | ret


def do_fault_around(k: Kernel, mm: MmStruct, vma: Vma, vaddr: int, pmd_paddr: int) -> VmFault:
    """do_fault_around() -> filemap_map_pages(): the window of fault_around_pages around
    vaddr (clamped to the VMA, the PTE table and i_size). next_uptodate_folio skips
    folios marked PG_readahead. Its first folio may be mapped by PMD (filemap_map_pmd: a
    PMD already huge, or a PMD-sized folio where the PMD is none and do_set_pmd accepts the
    VMA; for a disk file only a folio that ends before the file's last page); otherwise a
    PTE table is installed (the preallocated one) and every cached page with a none PTE
    is mapped, a large folio whole where it lies inside the VMA and one PTE table (6.18).
    NOPAGE when vaddr got mapped, else OK (0) and the fault goes on."""
    file = page_cache_of(vma)
    pte_off = (vaddr >> 12) & 511
    vma_off = (vaddr - vma.start) >> 12
    from_pte = max(pte_off & ~(FAULT_AROUND_PAGES - 1), pte_off - min(pte_off, vma_off))
    to_pte = min(from_pte + FAULT_AROUND_PAGES, PTRS_PER_PTE,
                 pte_off + (vma.length >> 12) - vma_off) - 1
    index = file_index(vma, vaddr)
    start_pgoff, end_pgoff = index + from_pte - pte_off, index + to_pte - pte_off
    sized = file.kind == "shmem" or file.fs is not None or file.size
    file_end = file.size_pages - 1
    if sized:
        end_pgoff = min(end_pgoff, file_end)
    flags, heads, pages = k.memmap.flags, k.memmap.head, file.pages
    cached = []
    for i in range(start_pgoff, end_pgoff + 1):
        pfn = pages.get(i, NO_PAGE)
        if pfn == NO_PAGE:
            continue
        head = int(heads[pfn])
        if not int(flags[pfn if head < 0 else head]) & _READAHEAD:
            cached.append(i)
    if not cached:
        return VmFault.OK
    first_head = rmap.folio_head(k, file.pages[cached[0]])
    first_index = cached[0] - (file.pages[cached[0]] - first_head)
    folio_next = first_index + (1 << rmap.folio_order(k, first_head))
    # filemap_map_pages: file_end (the last index) >= folio_next_index, so a folio that
    # reaches i_size is not mapped large here, nor is a PTE table installed for it
    # (finish_fault maps it whole); shmem maps across i_size
    can_map_large = file.kind == "shmem" or not sized or file_end >= folio_next
    pmd = k.pgtables.read(pmd_paddr)
    if can_map_large and pmd & pt._PAGE_PSE:
        return VmFault.NOPAGE
    if can_map_large and not pmd and try_set_pmd(k, mm, vma, vaddr, pmd_paddr, first_head,
                                                 write=False):
        return VmFault.NOPAGE
    if pmd & pt._PAGE_PSE or (not pmd and not can_map_large):
        return VmFault.OK                # pte_offset_map_lock() finds no table: nothing
    table = pte_alloc(k, mm, pmd_paddr)
    if table == NO_PAGE:
        return VmFault.OOM
    base = (vaddr & ~4095) - ((index - start_pgoff) << 12)   # the address of start_pgoff
    mapped_self = False
    considered = 0
    done: set[int] = set()
    words = k.physmem.frame_words(table)
    small: dict[int, int] = {}                   # PTE slot -> order-0 page, set at once
    for i in cached:
        if i in done:
            continue
        pfn = file.pages[i]
        head = rmap.folio_head(k, pfn)
        nr = 1 << rmap.folio_order(k, head)
        lo, hi = i, min(i - (pfn - head) + nr - 1, end_pgoff)
        if nr > 1 and can_map_large:
            folio_first = i - (pfn - head)
            addr0 = base + ((folio_first - start_pgoff) << 12)
            if addr0 >= vma.start and addr0 + (nr << 12) <= vma.end and \
                    addr0 >> 21 == (addr0 + (nr << 12) - 1) >> 21:
                lo, hi = folio_first, folio_first + nr - 1   # the whole folio (6.18)
        for j in range(lo, hi + 1):
            done.add(j)
            considered += 1                      # !folio_test_workingset: mmap_miss++
            va = base + ((j - start_pgoff) << 12)
            slot = (va >> 12) & 511
            if words[slot]:
                continue
            if nr == 1:
                small[slot] = file.pages[j]
            else:
                map_file_page(k, mm, vma, va, file.pages[j], write=False)
            mapped_self = mapped_self or j == index
    if small:
        first = min(small)
        pfns = np.full(max(small) - first + 1, NO_PAGE, dtype=np.int64)
        for slot, pfn in small.items():
            pfns[slot - first] = pfn
        k.physmem.reserve_slots(1)
        fastfault.set_file_ptes(k.pgtables.arrays, mm.stat, (table << 12) + first * 8, pfns,
                                np.uint64(vma.page_prot | pt._PAGE_ACCESSED))
    if isinstance(vma.file, filemap.File):
        ra = vma.file.ra
        ra.mmap_miss = max(0, ra.mmap_miss - considered)
    return VmFault.NOPAGE if mapped_self else VmFault.OK


def try_set_pmd(k: Kernel, mm: MmStruct, vma: Vma, vaddr: int, pmd_paddr: int, head: int,
                write: bool) -> bool:
    """do_set_pmd()'s checks, then the mapping: THPs allowed for the VMA
    (vma_thp_disabled), its aligned 2 MiB inside the VMA with the file offset aligned alike
    (thp_vma_suitable_order), a PMD-sized folio. False is VM_FAULT_FALLBACK."""
    haddr = vaddr & ~(HPAGE_PMD_SIZE - 1)
    if huge_memory.vma_thp_disabled(mm, vma) or \
            not huge_memory.thp_vma_suitable_order(vma, haddr, HPAGE_PMD_ORDER) or \
            rmap.folio_order(k, head) != HPAGE_PMD_ORDER:
        return False
    do_set_pmd(k, mm, vma, pmd_paddr, head, write)
    return True


def do_set_pmd(k: Kernel, mm: MmStruct, vma: Vma, pmd_paddr: int, head: int,
               write: bool) -> None:
    """do_set_pmd() (mm/memory.c): map a page-cache THP by one PMD (no deposited table on
    x86): RssShmem or RssFile grows by 2 MiB, the mapping holds a reference;
    thp_file_mapped."""
    entry = pt.mk_huge(head, vma.page_prot)       # mk_huge_pmd(page, vma->vm_page_prot)
    if write:
        entry |= pt._PAGE_DIRTY | (pt._PAGE_RW if vma.flags & VmFlags.WRITE else 0)
    mm.stat[mm_counter_file(k, head)] += HPAGE_PMD_NR
    rmap.folio_add_file_rmap_pmd(k, head)
    rmap.folio_get(k, head)
    k.pgtables.set_entry(mm, pmd_paddr, entry)
    k.vm_events[VmEvent.THP_FILE_MAPPED] += 1


def finish_fault(k: Kernel, mm: MmStruct, vma: Vma, vaddr: int, pmd_paddr: int, pfn: int,
                 write: bool) -> VmFault:
    """finish_fault(): a PMD-sized folio where the PMD is none goes in by PMD (do_set_pmd);
    else a PTE table is made sure of and the folio is mapped by PTEs: the whole folio when
    it is large and lies inside the VMA, this PTE table (and, for a disk file, i_size)
    with all its PTEs none (measured on 6.18: a large readahead folio is mapped whole by
    the fault that finds it), otherwise the one page. A private mapping's write never gets
    here (do_cow_fault)."""
    head = rmap.folio_head(k, pfn)
    if not k.pgtables.read(pmd_paddr):
        if try_set_pmd(k, mm, vma, vaddr, pmd_paddr, head, write):
            return VmFault.OK
    elif k.pgtables.read(pmd_paddr) & pt._PAGE_PSE:
        return VmFault.NOPAGE          # pte_offset_map_lock() found no table: retry
    table = pte_alloc(k, mm, pmd_paddr)
    if table == NO_PAGE:
        return VmFault.OOM
    nr_pages = 1 << rmap.folio_order(k, head)
    addr, first = vaddr & ~4095, pfn
    file = page_cache_of(vma)
    if nr_pages > 1 and (vma.is_shmem() or file.fs is not None):
        idx = pfn - head
        vma_off = (vaddr - vma.start) >> 12
        pte_off = (vaddr >> 12) & 511
        beyond_eof = file.fs == "disk" and \
            file_index(vma, vaddr) - idx + nr_pages > file.size_pages
        if vma_off < idx or vma_off + nr_pages - idx > vma.length >> 12 or \
                pte_off < idx or pte_off + nr_pages - idx > PTRS_PER_PTE or beyond_eof:
            nr_pages = 1
        else:
            addr, first = (vaddr & ~4095) - (idx << 12), head
            words = k.physmem.frame_words(table)[(addr >> 12) & 511:][:nr_pages]
            if words.any():                   # !pte_range_none(): fall back to one page
                nr_pages, addr, first = 1, vaddr & ~4095, pfn
    else:
        nr_pages = 1
    if nr_pages == 1 and k.pgtables.read((table << 12) + ((addr >> 12) & 511) * 8):
        return VmFault.NOPAGE                 # vmf_pte_changed()
    for i in range(nr_pages):
        map_file_page(k, mm, vma, addr + (i << 12), first + i, write)
    return VmFault.OK


def do_cow_fault(k: Kernel, mm: MmStruct, vma: Vma, vaddr: int) -> VmFault:
    """do_cow_fault(): a private anonymous copy of a file page (which __do_fault may have
    to read first: VM_FAULT_MAJOR)."""
    anon_vma_prepare(vma)
    src, ret = __do_fault(k, vma, vaddr)
    if ret & VmFault.ERROR:
        return ret
    new = rmap.folio_alloc(k, 0)
    if new == NO_PAGE:
        return VmFault.OOM
    k.physmem.copy_frame(new, src)
    rmap.folio_add_new_anon_rmap(k, new, 1, pmd_mapped=False)
    pmd_paddr, _ = k.pgtables.walk(mm, vaddr, 21, alloc=True)
    table = pte_alloc(k, mm, pmd_paddr)
    k.pgtables.set_entry(mm, (table << 12) + ((vaddr >> 12) & 511) * 8, mk_anon_pte(vma, new))
    mm.stat[MmStat.MM_ANONPAGES] += 1
    return ret
