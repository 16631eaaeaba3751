"""hugetlb: per-size pools, reservations and faults (mm/hugetlb.c).

Pools are filled from the buddy allocator (order 9; 1 GiB pages by alloc_contig_range
over a free, 1 GiB-aligned range) by writing nr_hugepages; surplus pages come and go
within nr_overcommit_hugepages. mmap reserves (hugetlb_reserve_pages ->
hugetlb_acct_memory -> gather_surplus_pages) unless MAP_NORESERVE; a fault consumes a
reservation or needs an unreserved free page or a surplus page, else SIGBUS
(alloc_hugetlb_folio -> -ENOSPC). 2 MiB pages map as PMD leaves, 1 GiB pages as PUD
leaves; they count in HugetlbPages (mm->hugetlb_usage), never in RSS.

PROT_NONE leaves are not present for the CPU but are pte_present() and not
huge_pte_none() for the kernel: every walk (zap, fork, mprotect) treats them as mapped.
PMD tables of shared mappings are shared between mms over PUD-aligned ranges the VMA
covers whole (want_pmd_share, huge_pmd_share); a zap, mprotect or VMA split of such a
range only unshares it (huge_pmd_unshare): hugetlb_usage follows the faults each mm
took, not what its page tables map.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pagewalk.errors import Errno, SyscallError
from pagewalk.hw import pgtable_types as pt
from pagewalk.mm import compaction, page_alloc
from pagewalk.mm.page_alloc import MAX_PAGE_ORDER, NO_PAGE, PageFlag, list_del
from pagewalk.mm.rmap import anon_vma_prepare
from pagewalk.mm.tlb import flush_tlb_mm_range, flush_tlb_page
from pagewalk.mm.types import (
    FaultFlags,
    MmStat,
    MmStruct,
    Vma,
    VmFault,
    VmFlags,
    is_cow_mapping,
)
from pagewalk.mm.vmstat import NodeStat, VmEvent

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel

SIZES = {2 << 20: "hugepages-2048kB", 1 << 30: "hugepages-1048576kB"}
SYS = "/sys/kernel/mm/hugepages"
PMD_SIZE = 1 << 21
PUD_SIZE = 1 << 30
P4D_SIZE = 1 << 39


@dataclass(slots=True)
class Hstate:
    """struct hstate: one huge page size and its pool counters."""

    size: int
    order: int
    nr_huge_pages: int = 0
    free_huge_pages: int = 0
    resv_huge_pages: int = 0
    surplus_huge_pages: int = 0
    nr_overcommit_huge_pages: int = 0
    free_list: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        return SIZES[self.size]

    @property
    def pages_per_huge_page(self) -> int:
        return self.size >> 12

    @property
    def shift(self) -> int:
        """huge_page_shift(): the level of the leaf, 21 (PMD) or 30 (PUD)."""
        return self.size.bit_length() - 1

    @property
    def last_addr_mask(self) -> int:
        """hugetlb_mask_last_page(): or-ed into an address whose table is missing, it
        makes the walk's next step the first address of the next table."""
        return PUD_SIZE - PMD_SIZE if self.size == PMD_SIZE else P4D_SIZE - PUD_SIZE

    @property
    def resv_huge_pages_shown(self) -> int:
        """resv_huge_pages as /proc and /sys print it: an unsigned long, which the kernel
        lets wrap below zero (see unmap_hugepage_range)."""
        return self.resv_huge_pages & ((1 << 64) - 1)


@dataclass(slots=True, eq=False)
class ResvMap:
    """A reservation map: huge page indexes reserved and not yet instantiated."""

    reserved: set[int] = field(default_factory=set)


class HugetlbFile:
    """The unlinked hugetlbfs inode behind a MAP_HUGETLB mapping."""

    kind = "hugetlb"

    def __init__(self, hstate: Hstate, length: int, shared: bool, resv: ResvMap,
                 owner: bool = False) -> None:
        self.hstate = hstate
        self.huge_size = hstate.size
        self.length = length
        self.shared = shared
        self.resv = resv                  # inode map (shared) or the owner VMA's (private)
        # A private mapping with a reservation map of its own (HPAGE_RESV_OWNER): the
        # process that made it without MAP_NORESERVE; never a child after fork.
        self.owner = owner
        self.inode: HugetlbFile = self    # a child's private copy keeps its parent's inode
        self.pages: dict[int, int] = {}   # page cache of a shared mapping: index -> pfn

    @property
    def map_name(self) -> str:
        return "/anon_hugepage (deleted)"

    def vma_close(self, k: Kernel, vma: Vma) -> None:
        """hugetlb_vm_op_close(): give back this range's unused reservations; a shared inode
        without mappings is truncated (its pages go back to the pool)."""
        h = self.hstate
        first, last = self.index(vma, vma.start), self.index(vma, vma.end)
        unused = {i for i in self.resv.reserved if first <= i < last} if not self.shared else set()
        if not self.shared and unused:
            self.resv.reserved -= unused
            k.hugetlb.acct_memory(h, -len(unused))
        for task in k.tasks.values():
            if any(v.file is self for v in task.mm.vmas):
                return
        if self.shared:
            k.hugetlb.acct_memory(h, -len(self.resv.reserved))
            self.resv.reserved.clear()
            for pfn in self.pages.values():
                k.hugetlb.put_page(h, pfn)
            self.pages.clear()

    def may_split(self, vma: Vma, addr: int) -> None:
        """hugetlb_vm_op_split(): a cut off a huge page boundary is EINVAL."""
        if addr & (self.huge_size - 1):
            raise SyscallError(Errno.EINVAL, "hugetlb VMA split off a huge page boundary")

    def index(self, vma: Vma, vaddr: int) -> int:
        return (vma.pgoff << 12) // self.huge_size + (vaddr - vma.start) // self.huge_size


class HugetlbState:
    """The hstates of one kernel (default 2 MiB; 1 GiB with pdpe1gb)."""

    def __init__(self, k: Kernel) -> None:
        self.k = k
        self.hstates = {size: Hstate(size, (size >> 12).bit_length() - 1) for size in SIZES}
        self.default = self.hstates[2 << 20]

    def total_pages(self) -> int:
        """hugetlb_total_pages(): every pool page, in 4 KiB pages."""
        return sum(h.nr_huge_pages * h.pages_per_huge_page for h in self.hstates.values())

    # -- knobs -----------------------------------------------------------------------------
    def _knob_hstate(self, path: str) -> tuple[Hstate, str] | None:
        if path == "/proc/sys/vm/nr_hugepages":
            return self.default, "nr_hugepages"
        if path == "/proc/sys/vm/nr_overcommit_hugepages":
            return self.default, "nr_overcommit_hugepages"
        for h in self.hstates.values():
            prefix = f"{SYS}/{h.name}/"
            if path.startswith(prefix):
                return h, path[len(prefix):]
        return None

    def sync_from_knobs(self) -> None:
        for h in self.hstates.values():
            self.knob_written(f"{SYS}/{h.name}/nr_overcommit_hugepages")
            self.knob_written(f"{SYS}/{h.name}/nr_hugepages")

    def knob_written(self, path: str) -> None:
        found = self._knob_hstate(path)
        if found is None:
            return
        h, attr = found
        value = int(self.k.knobs.get(path))
        if attr == "nr_overcommit_hugepages":
            h.nr_overcommit_huge_pages = value
        elif attr == "nr_hugepages":
            self.set_max_huge_pages(h, value)
            self.publish(h)

    def publish(self, h: Hstate) -> None:
        """Make the knob files read back what the pool really holds."""
        self.k.knobs.set(f"{SYS}/{h.name}/nr_hugepages", str(h.nr_huge_pages))

    # -- pool ------------------------------------------------------------------------------
    def alloc_buddy_page(self, h: Hstate) -> int:
        """alloc_buddy_hugetlb_folio() / alloc_gigantic_folio(): NO_PAGE when the buddy
        allocator cannot give a block (the pool loop then stops: alloc_pool_huge_folio)."""
        k = self.k
        if h.order > MAX_PAGE_ORDER:
            pfn = self._alloc_contig(h)
        else:
            pfn = self._alloc_above_watermarks(h.order)
            # __GFP_RETRY_MAYFAIL allows direct compaction (alloc_buddy_hugetlb_folio).
            if pfn == NO_PAGE and self._compaction_suitable(h.order) and \
                    compaction.try_to_compact_pages(k, h.order):
                pfn = self._alloc_above_watermarks(h.order)
        if pfn == NO_PAGE:
            k.vm_events[VmEvent.HTLB_BUDDY_ALLOC_FAIL] += 1
            return NO_PAGE
        if h.order <= MAX_PAGE_ORDER:
            k.vm_events[VmEvent.HTLB_BUDDY_ALLOC_SUCCESS] += 1
        k.memmap.flags[pfn] |= PageFlag.HUGETLB | PageFlag.HEAD
        k.memmap.order[pfn] = min(h.order, 127)
        k.memmap.refcount[pfn] = 0
        return pfn

    def _alloc_above_watermarks(self, order: int) -> int:
        """get_page_from_freelist() over the zonelist, first against each zone's low
        watermark (the fast path), then against its min watermark (the slow path): a zone
        gives a block only while its free pages stay above the mark plus its lowmem
        reserve, so a pool asked for more than memory leaves the reserves free."""
        k = self.k
        marks = page_alloc.zone_watermarks(k)
        for low in (True, False):
            for zone in k.buddy.zonelist():
                mark = marks[zone].low if low else marks[zone].min
                if page_alloc.zone_watermark_ok(k, zone, order, mark):
                    pfn = k.buddy.alloc_pages_zone(zone, order)
                    if pfn != NO_PAGE:
                        return pfn
        return NO_PAGE

    def _compaction_suitable(self, order: int) -> bool:
        """__compaction_suitable(): some zone keeps its low watermark plus compact_gap
        (2 << order) free pages; else direct compaction is skipped (no compact_stall)."""
        k = self.k
        marks = page_alloc.zone_watermarks(k)
        return any(page_alloc.zone_watermark_ok(k, zone, 0, marks[zone].low + (2 << order))
                   for zone in k.buddy.zonelist())

    def _alloc_contig(self, h: Hstate) -> int:
        """alloc_contig_range() over the first 1 GiB-aligned range that is wholly free."""
        k = self.k
        buddy, memmap = k.buddy, k.memmap
        nr = h.pages_per_huge_page
        for zone in reversed(buddy.populated_zones()):
            lo = (int(buddy.zone_start[zone]) + nr - 1) & ~(nr - 1)
            for start in range(lo, int(buddy.zone_end[zone]) - nr + 1, nr):
                blocks, pfn = [], start
                while pfn < start + nr and memmap.flags[pfn] & PageFlag.BUDDY:
                    blocks.append((pfn, int(memmap.order[pfn])))
                    pfn += 1 << int(memmap.order[pfn])
                if pfn != start + nr:
                    continue
                for block, order in blocks:
                    list_del(memmap.flags, memmap.order, memmap.next, memmap.prev,
                             buddy.free_head, buddy.nr_free, zone, block, order)
                k.node_stat[NodeStat.NR_FREE_PAGES] -= nr
                return start
        return NO_PAGE

    def free_buddy_page(self, h: Hstate, pfn: int) -> None:
        k = self.k
        k.memmap.flags[pfn] = 0
        if h.order <= MAX_PAGE_ORDER:
            k.buddy.free_pages(pfn, h.order)
            return
        for block in range(pfn, pfn + h.pages_per_huge_page, 1 << MAX_PAGE_ORDER):
            k.buddy.free_pages(block, MAX_PAGE_ORDER)

    def set_max_huge_pages(self, h: Hstate, count: int) -> None:
        """set_max_huge_pages(): surplus pages become persistent first, then the pool grows
        from the buddy allocator until ``count`` or the first failed allocation
        (alloc_pool_huge_folio; no error: the pool is what it got); shrinking frees free
        pages (never below what is reserved or in use) and turns the in-use excess into
        surplus pages."""
        while h.surplus_huge_pages and count > h.nr_huge_pages - h.surplus_huge_pages:
            h.surplus_huge_pages -= 1  # adjust_pool_surplus(-1)
        while count > h.nr_huge_pages - h.surplus_huge_pages:
            pfn = self.alloc_buddy_page(h)
            if pfn == NO_PAGE:
                break
            h.free_list.append(pfn)
            h.nr_huge_pages += 1
            h.free_huge_pages += 1
        min_count = max(count, h.resv_huge_pages + h.nr_huge_pages - h.free_huge_pages)
        while min_count < h.nr_huge_pages - h.surplus_huge_pages and h.free_list:
            pfn = h.free_list.pop()
            h.nr_huge_pages -= 1
            h.free_huge_pages -= 1
            self.free_buddy_page(h, pfn)
        while count < h.nr_huge_pages - h.surplus_huge_pages:
            h.surplus_huge_pages += 1  # adjust_pool_surplus(+1): in-use pages become surplus

    def acct_memory(self, h: Hstate, delta: int) -> None:
        """hugetlb_acct_memory(): reserve (gather_surplus_pages) or release reservations."""
        if delta > 0:
            needed = h.resv_huge_pages + delta - h.free_huge_pages
            allocated: list[int] = []
            if needed > 0:
                if h.surplus_huge_pages + needed > h.nr_overcommit_huge_pages:
                    raise SyscallError(Errno.ENOMEM, "hugetlb pool cannot cover the reservation")
                for _ in range(needed):
                    pfn = self.alloc_buddy_page(h)
                    if pfn == NO_PAGE:
                        for done in allocated:
                            self.free_buddy_page(h, done)
                        raise SyscallError(Errno.ENOMEM, "no memory for surplus huge pages")
                    allocated.append(pfn)
                for pfn in allocated:
                    h.free_list.append(pfn)
                    h.nr_huge_pages += 1
                    h.free_huge_pages += 1
                    h.surplus_huge_pages += 1
            h.resv_huge_pages += delta
        else:
            h.resv_huge_pages += delta
            self.return_unused_surplus_pages(h)
        self.publish(h)

    def check_reservation(self, h: Hstate, delta: int) -> None:
        """Would acct_memory(h, delta) succeed? (so mmap fails before changing anything)"""
        needed = h.resv_huge_pages + delta - h.free_huge_pages
        if needed > 0 and h.surplus_huge_pages + needed > h.nr_overcommit_huge_pages:
            raise SyscallError(Errno.ENOMEM, "hugetlb pool cannot cover the reservation")

    def return_unused_surplus_pages(self, h: Hstate) -> None:
        while h.surplus_huge_pages and h.free_huge_pages > h.resv_huge_pages:
            pfn = h.free_list.pop()
            h.nr_huge_pages -= 1
            h.free_huge_pages -= 1
            h.surplus_huge_pages -= 1
            self.free_buddy_page(h, pfn)

    def dequeue(self, h: Hstate, reserved: bool) -> int:
        """alloc_hugetlb_folio(): a pool page (consuming a reservation), else an unreserved
        free page, else a new surplus page, else NO_PAGE (-ENOSPC -> SIGBUS)."""
        if (reserved or h.free_huge_pages - h.resv_huge_pages > 0) and h.free_list:
            pfn = h.free_list.pop(0)
            h.free_huge_pages -= 1
            if reserved:
                h.resv_huge_pages -= 1
            return pfn
        if h.surplus_huge_pages >= h.nr_overcommit_huge_pages:
            return NO_PAGE
        pfn = self.alloc_buddy_page(h)
        if pfn == NO_PAGE:
            return NO_PAGE
        h.nr_huge_pages += 1
        h.surplus_huge_pages += 1
        return pfn

    def put_page(self, h: Hstate, pfn: int) -> None:
        """folio_put() of a hugetlb folio: free_huge_folio() back to the pool, or to the
        buddy allocator for a surplus page."""
        k = self.k
        k.memmap.refcount[pfn] -= 1
        if k.memmap.refcount[pfn] > 0:
            return
        k.physmem_drop_range(pfn, h.pages_per_huge_page)
        if k.memmap.flags[pfn] & PageFlag.RESTORE_RESERVE:   # free_huge_folio()
            k.memmap.flags[pfn] &= ~PageFlag.RESTORE_RESERVE
            h.resv_huge_pages += 1
        if h.surplus_huge_pages:   # free_huge_folio(): while surplus, a freed page leaves
            h.nr_huge_pages -= 1
            h.surplus_huge_pages -= 1
            self.free_buddy_page(h, pfn)
        else:
            h.free_list.append(pfn)
            h.free_huge_pages += 1
        self.publish(h)


def hugetlb_file(vma: Vma) -> HugetlbFile:
    """The hugetlbfs file behind a hugetlb VMA (its vm_file)."""
    file = vma.file
    assert isinstance(file, HugetlbFile), f"not a hugetlb VMA: {vma}"
    return file


def hstate_vma(vma: Vma) -> Hstate:
    """hstate_vma(): the huge page size (hstate) of a hugetlb VMA."""
    return hugetlb_file(vma).hstate


def vma_kernel_pagesize(vma: Vma) -> int:
    """vma_kernel_pagesize(): the huge page size of a hugetlb VMA, else PAGE_SIZE."""
    return hstate_vma(vma).size if vma.is_hugetlb() else 4096


def hstate_for(k: Kernel, huge_size: int | None) -> Hstate:
    size = huge_size or 2 << 20
    if size not in k.hugetlb.hstates:
        raise SyscallError(Errno.EINVAL, f"no hugetlb page size {size}")
    return k.hugetlb.hstates[size]


def hugetlb_file_setup(k: Kernel, h: Hstate, length: int, vm_flags: VmFlags,
                       shared: bool) -> HugetlbFile:
    """hugetlb_file_setup() + hugetlbfs_file_mmap() -> hugetlb_reserve_pages(): ENOMEM if
    the pool cannot cover it. do_mmap calls it once a MAP_FIXED mapping has closed what it
    replaces (__mmap_region: vms_clean_up_area before the file's mmap hook)."""
    chg = 0 if vm_flags & VmFlags.NORESERVE else length // h.size
    if chg:
        k.hugetlb.check_reservation(h, chg)
        k.hugetlb.acct_memory(h, chg)
    resv = ResvMap(set(range(chg)))
    return HugetlbFile(h, length, shared, resv, owner=not shared and bool(chg))


# -- page-table walks ------------------------------------------------------------------------

def huge_pte_none(entry: int) -> bool:
    """huge_pte_none(): nothing mapped. A PROT_NONE leaf is not none."""
    return entry == 0


def huge_pte_present(entry: int) -> bool:
    """pte_present() of a hugetlb leaf: present, or PROT_NONE (_PAGE_PROTNONE)."""
    return bool(entry & (pt._PAGE_PRESENT | pt._PAGE_PROTNONE))


def hugetlb_walk(k: Kernel, mm: MmStruct, h: Hstate, addr: int) -> int | None:
    """hugetlb_walk() -> huge_pte_offset(): the physical address of the PMD (2 MiB) or
    PUD (1 GiB) entry for ``addr``, or None when the table that would hold it is missing."""
    entry_paddr, reached = k.pgtables.walk(mm, addr, h.shift, alloc=False)
    return entry_paddr if reached == h.shift else None


def want_pmd_share(vma: Vma, addr: int) -> bool:
    """want_pmd_share(): a VM_MAYSHARE mapping that covers the whole PUD range of addr."""
    start = addr & ~(PUD_SIZE - 1)
    return bool(vma.flags & VmFlags.MAYSHARE) and vma.start <= start and start + PUD_SIZE <= vma.end


def huge_pte_alloc(k: Kernel, mm: MmStruct, vma: Vma, addr: int) -> int:
    """huge_pte_alloc(): the entry for ``addr``, allocating the tables above it; a 2 MiB
    mapping that may share (want_pmd_share) with a none PUD entry looks for another mm's
    PMD table first (huge_pmd_share)."""
    h: Hstate = hstate_vma(vma)
    pud_paddr, _ = k.pgtables.walk(mm, addr, 30, alloc=True)   # p4d_alloc, pud_alloc
    if h.size == PUD_SIZE:
        return pud_paddr
    if want_pmd_share(vma, addr) and k.pgtables.read(pud_paddr) == 0:
        huge_pmd_share(k, mm, vma, addr, pud_paddr)
    entry_paddr, _ = k.pgtables.walk(mm, addr, 21, alloc=True)  # pmd_alloc
    return entry_paddr


def page_table_shareable(svma: Vma, vma: Vma, addr: int, idx: int) -> int | None:
    """page_table_shareable(): where ``svma`` maps file page ``idx``, if its PMD table
    there can serve ``vma`` at ``addr``: the same slot in the table, the same flags but
    VM_LOCKED, and a PUD range svma covers whole; else None."""
    saddr = ((idx - svma.pgoff) << 12) + svma.start
    sbase = saddr & ~(PUD_SIZE - 1)
    if (saddr >> 21) & 511 != (addr >> 21) & 511:
        return None
    if (svma.flags ^ vma.flags) & ~VmFlags.LOCKED:      # VM_LOCKED_MASK
        return None
    if not (svma.start <= sbase and sbase + PUD_SIZE <= svma.end):
        return None
    if not svma.flags & VmFlags.MAYSHARE:                 # vm_private_data: the vma lock
        return None
    return saddr


def huge_pmd_share(k: Kernel, mm: MmStruct, vma: Vma, addr: int, pud_paddr: int) -> None:
    """huge_pmd_share(): the first other mapping of the same file page (i_mmap order) that
    has a PMD table it can share (page_table_shareable) lends it: ``mm``'s PUD entry
    points at that table."""
    file = hugetlb_file(vma)
    idx = vma.pgoff + ((addr - vma.start) >> 12)
    for task in k.tasks.values():
        for svma in task.mm.vmas:
            if svma is vma or not svma.is_hugetlb() or hugetlb_file(svma).inode is not file.inode:
                continue
            if not svma.pgoff <= idx < svma.pgoff + (svma.length >> 12):
                continue
            saddr = page_table_shareable(svma, vma, addr, idx)
            spte = None if saddr is None else hugetlb_walk(k, task.mm, file.hstate, saddr)
            if spte is not None:
                k.pgtables.share_pmd_table(mm, pud_paddr, spte >> 12)
                return


def huge_pmd_unshare(k: Kernel, mm: MmStruct, vma: Vma, addr: int, entry_paddr: int) -> bool:
    """huge_pmd_unshare(): if the PMD table holding ``entry_paddr`` is shared, ``mm`` lets
    go of it (its PUD entry cleared, its TLB flushed for the PUD range) and nothing in it
    is zapped or changed for ``mm``: True then, and the caller skips the PUD range."""
    if hstate_vma(vma).size != PMD_SIZE or not k.pgtables.pmd_is_shared(entry_paddr >> 12):
        return False
    pud_paddr, _ = k.pgtables.walk(mm, addr, 30, alloc=False)
    k.pgtables.unshare_pmd_table(mm, pud_paddr)
    base = addr & ~(PUD_SIZE - 1)
    flush_tlb_mm_range(k, mm, base, base + PUD_SIZE)     # huge_pmd_unshare_flush
    return True


def hugetlb_split(k: Kernel, mm: MmStruct, vma: Vma, addr: int) -> None:
    """hugetlb_split(): a split of a shared mapping at ``addr`` inside a PUD range the VMA
    covers whole unshares that range's PMD table (hugetlb_unshare_pmds)."""
    if not vma.flags & VmFlags.MAYSHARE or not addr & (PUD_SIZE - 1):
        return
    floor = addr & ~(PUD_SIZE - 1)
    if vma.start <= floor and floor + PUD_SIZE <= vma.end:
        entry_paddr = hugetlb_walk(k, mm, hstate_vma(vma), floor)
        if entry_paddr is not None:
            huge_pmd_unshare(k, mm, vma, floor, entry_paddr)


def hugetlb_fault(k: Kernel, mm: MmStruct, vma: Vma, vaddr: int, flags: FaultFlags) -> VmFault:
    """hugetlb_fault() -> hugetlb_no_page(): map a pool page with a PMD or PUD leaf. The
    entry may already be present when huge_pte_alloc shared another mm's PMD table: the
    fault then only marks it young, and this mm's hugetlb_usage does not change."""
    file = hugetlb_file(vma)
    h = file.hstate
    haddr = vaddr & ~(h.size - 1)
    entry_paddr = huge_pte_alloc(k, mm, vma, haddr)
    entry = k.pgtables.read(entry_paddr)
    write = bool(flags & FaultFlags.WRITE)
    if entry & pt._PAGE_PRESENT:
        if write and not entry & pt._PAGE_RW:
            return hugetlb_wp(k, mm, vma, haddr, entry_paddr, entry)
        k.pgtables.set_entry(mm, entry_paddr, entry | pt._PAGE_ACCESSED)
        return VmFault.OK
    if vma.hugetlb_resv_unmapped:
        return VmFault.SIGBUS      # hugetlb_no_page(): "killed due to inadequate hugepage pool"
    index = file.index(vma, haddr)
    if not vma.flags & VmFlags.SHARED:
        anon_vma_prepare(vma)  # hugetlb_no_page: vmf_anon_prepare() for private mappings
    pfn = file.pages.get(index, NO_PAGE) if file.shared else NO_PAGE
    if pfn == NO_PAGE:
        reserved = index in file.resv.reserved
        pfn = k.hugetlb.dequeue(h, reserved)
        if pfn == NO_PAGE:
            return VmFault.SIGBUS
        if reserved:
            file.resv.reserved.discard(index)
        k.physmem_drop_range(pfn, h.pages_per_huge_page)  # hugetlb pages are zeroed
        k.memmap.refcount[pfn] = 1
        if file.shared:
            file.pages[index] = pfn
            k.memmap.refcount[pfn] += 1
    else:
        k.memmap.refcount[pfn] += 1
    new = pt.mk_huge(pfn, vma.page_prot) | pt._PAGE_ACCESSED | pt._PAGE_DIRTY
    if vma.flags & VmFlags.WRITE and (write or vma.flags & VmFlags.SHARED):
        new |= pt._PAGE_RW
    k.pgtables.set_entry(mm, entry_paddr, new)
    mm.stat[MmStat.HUGETLB_USAGE] += h.pages_per_huge_page
    k.hugetlb.publish(h)
    return VmFault.OK


def hugetlb_wp(k: Kernel, mm: MmStruct, vma: Vma, haddr: int, entry_paddr: int,
               entry: int) -> VmFault:
    """hugetlb_wp(): reuse a page only this mapping holds, else copy it into a new huge page
    taken without a reservation. When none is left, the mapping's reservation owner takes
    the page from the children instead (unmap_ref_private) and reuses it; anyone else
    gets SIGBUS."""
    file = hugetlb_file(vma)
    h = file.hstate
    old = pt.huge_pfn(entry, h.shift)
    if not vma.flags & VmFlags.SHARED and k.memmap.refcount[old] != 1:
        new = k.hugetlb.dequeue(h, False)
        if new != NO_PAGE:
            k.memmap.refcount[new] = 1
            for i in range(h.pages_per_huge_page):
                k.physmem.copy_frame(new + i, old + i)
            k.pgtables.set_entry(mm, entry_paddr, pt.mk_huge(new, vma.page_prot) |
                                 pt._PAGE_ACCESSED | pt._PAGE_DIRTY | pt._PAGE_RW)
            flush_tlb_page(k, mm, haddr)
            k.hugetlb.put_page(h, old)
            return VmFault.OK
        if not file.owner:
            return VmFault.SIGBUS
        unmap_ref_private(k, mm, vma, old, haddr)
        if k.memmap.refcount[old] != 1:
            return VmFault.SIGBUS
    # wp_page_reuse: MAP_SHARED, or the only mapper (retry_avoidcopy)
    k.pgtables.set_entry(mm, entry_paddr, entry | pt._PAGE_RW | pt._PAGE_DIRTY | pt._PAGE_ACCESSED)
    flush_tlb_page(k, mm, haddr)
    return VmFault.OK


def unmap_ref_private(k: Kernel, mm: MmStruct, vma: Vma, pfn: int, haddr: int) -> None:
    """unmap_ref_private(): unmap huge page ``pfn`` at ``haddr`` from every other private
    mapping of the same inode that owns no reservations (the children), marking each
    HPAGE_RESV_UNMAPPED so that their later faults there are SIGBUS."""
    file = hugetlb_file(vma)
    h = file.hstate
    for task in k.tasks.values():
        for other in task.mm.vmas:
            if other is vma or not other.is_hugetlb() or hugetlb_file(other).inode is not file.inode:
                continue
            if other.flags & VmFlags.SHARED or hugetlb_file(other).owner or not other.contains(haddr):
                continue
            entry_paddr = hugetlb_walk(k, task.mm, h, haddr)
            if entry_paddr is None:
                continue
            entry = k.pgtables.read(entry_paddr)
            # __unmap_hugepage_range(ref_page): that page only, PROT_NONE included
            if not huge_pte_present(entry) or pt.huge_pfn(entry, h.shift) != pfn:
                continue
            other.hugetlb_resv_unmapped = True
            _zap_huge_leaf(k, task.mm, h, entry_paddr, pfn)
            flush_tlb_mm_range(k, task.mm, haddr, haddr + h.size)


def _zap_huge_leaf(k: Kernel, mm: MmStruct, h: Hstate, entry_paddr: int, pfn: int) -> None:
    """Clear one huge leaf and drop its page (back to the pool when its last user goes)."""
    k.pgtables.set_entry(mm, entry_paddr, 0)
    mm.stat[MmStat.HUGETLB_USAGE] -= h.pages_per_huge_page
    k.hugetlb.put_page(h, pfn)


def unmap_hugepage_range(k: Kernel, mm: MmStruct, vma: Vma, start: int, end: int) -> None:
    """__unmap_hugepage_range(): clear the leaves, present or PROT_NONE, and drop the pages
    (back to the pool). A shared PMD table is only unshared, its PUD range skipped.

    A page of a private mapping zapped in the process that owns its reservation map, while
    no surplus page exists, gets its reservation back: the index is reserved again in the
    map (vma_add_reservation) and the folio is marked to raise resv_huge_pages when it is
    freed (hugetlb_restore_reserve). A page still mapped by a child is freed later, after
    hugetlb_vm_op_close may already have released the index's reservation: the kernel's
    HugePages_Rsvd then goes below zero (wraps) until the child lets the page go, and so
    does pagewalk's (measured: tests/data/measured/hugetlb-restore-reserve*.yaml)."""
    file = hugetlb_file(vma)
    h = file.hstate
    addr = start & ~(h.size - 1)
    while addr < end:
        entry_paddr = hugetlb_walk(k, mm, h, addr)
        if entry_paddr is None or huge_pmd_unshare(k, mm, vma, addr, entry_paddr):
            addr = (addr | h.last_addr_mask) + h.size
            continue
        entry = k.pgtables.read(entry_paddr)
        if not huge_pte_none(entry):
            pfn = pt.huge_pfn(entry, h.shift)
            # __vma_private_lock() and folio_test_anon(): a private MAP_HUGETLB mapping maps
            # anonymous folios only (no page cache behind it)
            if file.owner and not h.surplus_huge_pages:
                k.memmap.flags[pfn] |= PageFlag.RESTORE_RESERVE
                file.resv.reserved.add(file.index(vma, addr))
            _zap_huge_leaf(k, mm, h, entry_paddr, pfn)
        addr += h.size
    flush_tlb_mm_range(k, mm, start, end)


def hugetlbfs_punch_hole(k: Kernel, file: HugetlbFile, offset: int, length: int) -> None:
    """hugetlbfs_punch_hole() (fallocate PUNCH_HOLE, MADV_REMOVE of a shared mapping): the
    partial huge pages at either end are zeroed in part (hugetlbfs_zero_partial_page); the
    whole ones leave every mapping (hugetlb_vmdelete_list) and the inode's page cache
    (remove_inode_hugepages), back to the pool. Their reservation regions go with them
    (hugetlb_unreserve_pages per folio): a later fault there allocates unreserved."""
    h = file.hstate
    end = offset + length
    hole_start = -(-offset // h.size) * h.size
    hole_end = end // h.size * h.size
    if offset < hole_start:
        _zero_partial_huge_page(k, file, offset, min(end, hole_start))
    if hole_end > hole_start:
        first, last = hole_start // h.size, hole_end // h.size
        for task in k.tasks.values():
            mm = task.mm
            for vma in list(mm.vmas):
                if vma.file is None or not vma.is_hugetlb() or hugetlb_file(vma).inode \
                        is not file.inode:
                    continue
                lo = max(first, file.index(vma, vma.start))
                hi = min(last, file.index(vma, vma.end))
                if lo < hi:
                    base = vma.start - file.index(vma, vma.start) * h.size
                    unmap_hugepage_range(k, mm, vma, base + lo * h.size, base + hi * h.size)
    if end > hole_end and end > hole_start:
        _zero_partial_huge_page(k, file, hole_end, end)
    for index in [i for i in file.pages if hole_start // h.size <= i < hole_end // h.size]:
        k.hugetlb.put_page(h, file.pages.pop(index))


def _zero_partial_huge_page(k: Kernel, file: HugetlbFile, start: int, end: int) -> None:
    """hugetlbfs_zero_partial_page(): zero [start, end) of the cached page holding start."""
    pfn = file.pages.get(start // file.huge_size, NO_PAGE)
    if pfn == NO_PAGE:
        return
    paddr = (pfn << 12) + start % file.huge_size
    stop = paddr + end - start
    while paddr < stop:
        frame_end = min((paddr | 4095) + 1, stop)
        if paddr & 4095 == 0 and frame_end - paddr == 4096:
            k.physmem_drop_range(paddr >> 12, 1)      # a whole frame reads as zeros again
        else:
            k.physmem.write_bytes(paddr, bytes(frame_end - paddr))
        paddr = frame_end


def hugetlb_change_protection(k: Kernel, mm: MmStruct, vma: Vma, start: int, end: int,
                              newprot: int) -> None:
    """hugetlb_change_protection(): every leaf that is not none (PROT_NONE ones too) takes
    the new protection (huge_pte_modify); a shared PMD table is unshared instead, so this
    mm faults its pages in again later."""
    file = hugetlb_file(vma)
    h = file.hstate
    addr = start
    while addr < end:
        entry_paddr = hugetlb_walk(k, mm, h, addr)
        if entry_paddr is None or huge_pmd_unshare(k, mm, vma, addr, entry_paddr):
            addr = (addr | h.last_addr_mask) + h.size
            continue
        entry = k.pgtables.read(entry_paddr)
        if not huge_pte_none(entry):
            k.pgtables.set_entry(mm, entry_paddr, pt.pte_modify(entry, newprot) | pt._PAGE_PSE)
        addr += h.size
    flush_tlb_mm_range(k, mm, start, end)


def copy_hugetlb_page_range(k: Kernel, src_mm: MmStruct, dst_mm: MmStruct, src_vma: Vma,
                            dst_vma: Vma) -> None:
    """copy_hugetlb_page_range(): the child gets the tables wherever the parent has them
    (huge_pte_alloc) and every leaf that is not none, PROT_NONE included: the page is
    shared, write-protected in both for a COW mapping; a shared PMD table is not copied."""
    h: Hstate = hstate_vma(src_vma)
    cow = is_cow_mapping(src_vma.flags)
    pgt = k.pgtables
    addr = src_vma.start
    while addr < src_vma.end:
        src_paddr = hugetlb_walk(k, src_mm, h, addr)
        if src_paddr is None:
            addr = (addr | h.last_addr_mask) + h.size
            continue
        dst_paddr = huge_pte_alloc(k, dst_mm, dst_vma, addr)
        if h.size == PMD_SIZE and pgt.pmd_is_shared(dst_paddr >> 12):
            addr = (addr | h.last_addr_mask) + h.size
            continue
        entry = pgt.read(src_paddr)
        if not huge_pte_none(entry):
            if cow and entry & pt._PAGE_RW:
                entry &= ~pt._PAGE_RW          # huge_ptep_set_wrprotect
                pgt.set_entry(src_mm, src_paddr, entry)
            pgt.set_entry(dst_mm, dst_paddr, entry)
            k.memmap.refcount[pt.huge_pfn(entry, h.shift)] += 1
            dst_mm.stat[MmStat.HUGETLB_USAGE] += h.pages_per_huge_page
        addr += h.size


def node_hugetlb_pages(k: Kernel) -> int:
    return int(k.node_stat[NodeStat.NR_FREE_PAGES])
