"""hugetlb: per-size pools, reservations and faults (mm/hugetlb.c).

Pools are filled from the buddy allocator (order 9; 1 GiB pages by alloc_contig_range
over a free, 1 GiB-aligned range) by writing nr_hugepages; surplus pages come and go
within nr_overcommit_hugepages. mmap reserves (hugetlb_reserve_pages ->
hugetlb_acct_memory -> gather_surplus_pages) unless MAP_NORESERVE; a fault consumes a
reservation or needs an unreserved free page or a surplus page, else SIGBUS
(alloc_hugetlb_folio -> -ENOSPC). 2 MiB pages map as PMD leaves, 1 GiB pages as PUD
leaves; they count in HugetlbPages (mm->hugetlb_usage), never in RSS.
Not modelled: PMD sharing of shared mappings >= 1 GiB (docs/differences.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pagewalk.errors import Errno, SyscallError
from pagewalk.hw import pgtable_types as pt
from pagewalk.mm.page_alloc import MAX_PAGE_ORDER, NO_PAGE, PageFlag, list_del
from pagewalk.mm.types import MmStat, MmStruct, Vma, VmFlags
from pagewalk.mm.vmstat import NodeStat, VmEvent

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel
    from pagewalk.mm.memory import FaultFlags, VmFault

SIZES = {2 << 20: "hugepages-2048kB", 1 << 30: "hugepages-1048576kB"}
SYS = "/sys/kernel/mm/hugepages"


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
        """alloc_buddy_hugetlb_folio() / alloc_gigantic_folio()."""
        k = self.k
        pfn = k.buddy.alloc_pages(h.order) if h.order <= MAX_PAGE_ORDER else self._alloc_contig(h)
        if pfn == NO_PAGE and h.order <= MAX_PAGE_ORDER:
            # __GFP_RETRY_MAYFAIL allows direct compaction (alloc_buddy_hugetlb_folio).
            from pagewalk.mm import compaction
            if compaction.try_to_compact_pages(k, h.order):
                pfn = k.buddy.alloc_pages(h.order)
        if pfn == NO_PAGE:
            k.vm_events[VmEvent.HTLB_BUDDY_ALLOC_FAIL] += 1
            return NO_PAGE
        if h.order <= MAX_PAGE_ORDER:
            k.vm_events[VmEvent.HTLB_BUDDY_ALLOC_SUCCESS] += 1
        k.memmap.flags[pfn] |= PageFlag.HUGETLB | PageFlag.HEAD
        k.memmap.order[pfn] = min(h.order, 127)
        k.memmap.refcount[pfn] = 0
        return pfn

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
        from the buddy allocator until ``count`` or failure; shrinking frees free pages (never
        below what is reserved or in use) and turns the in-use excess into surplus pages."""
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
        if reserved or h.free_huge_pages - h.resv_huge_pages > 0:
            if h.free_list:
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


def hstate_for(k: Kernel, huge_size: int | None) -> Hstate:
    size = huge_size or 2 << 20
    if size not in k.hugetlb.hstates:
        raise SyscallError(Errno.EINVAL, f"no hugetlb page size {size}")
    return k.hugetlb.hstates[size]


def hugetlb_file_setup(k: Kernel, h: Hstate, length: int, vm_flags: VmFlags,
                       shared: bool) -> HugetlbFile:
    """hugetlb_file_setup() + hugetlb_reserve_pages(): ENOMEM if the pool cannot cover it."""
    chg = 0 if vm_flags & VmFlags.NORESERVE else length // h.size
    if chg:
        k.hugetlb.check_reservation(h, chg)
        k.hugetlb.acct_memory(h, chg)
    resv = ResvMap(set(range(chg)))
    return HugetlbFile(h, length, shared, resv, owner=not shared and bool(chg))


def hugetlb_fault(k: Kernel, mm: MmStruct, vma: Vma, vaddr: int, flags: FaultFlags) -> VmFault:
    """hugetlb_fault() -> hugetlb_no_page(): map a pool page with a PMD or PUD leaf."""
    from pagewalk.mm.memory import FaultFlags, VmFault
    file: HugetlbFile = vma.file
    h = file.hstate
    shift = 21 if h.size == 2 << 20 else 30
    haddr = vaddr & ~(h.size - 1)
    entry_paddr, reached = k.pgtables.walk(mm, haddr, shift, alloc=True)  # huge_pte_alloc
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
        from pagewalk.mm.memory import anon_vma_prepare
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
    from pagewalk.mm.memory import VmFault
    file: HugetlbFile = vma.file
    h = file.hstate
    old = pt.huge_pfn(entry, 21 if h.size == 2 << 20 else 30)
    if not vma.flags & VmFlags.SHARED and k.memmap.refcount[old] != 1:
        new = k.hugetlb.dequeue(h, False)
        if new != NO_PAGE:
            k.memmap.refcount[new] = 1
            for i in range(h.pages_per_huge_page):
                k.physmem.copy_frame(new + i, old + i)
            k.pgtables.set_entry(mm, entry_paddr, pt.mk_huge(new, vma.page_prot) |
                                 pt._PAGE_ACCESSED | pt._PAGE_DIRTY | pt._PAGE_RW)
            k.flush_tlb_page(mm, haddr)
            k.hugetlb.put_page(h, old)
            return VmFault.OK
        if not file.owner:
            return VmFault.SIGBUS
        unmap_ref_private(k, mm, vma, old, haddr)
        if k.memmap.refcount[old] != 1:
            return VmFault.SIGBUS
    # wp_page_reuse: MAP_SHARED, or the only mapper (retry_avoidcopy)
    k.pgtables.set_entry(mm, entry_paddr, entry | pt._PAGE_RW | pt._PAGE_DIRTY | pt._PAGE_ACCESSED)
    k.flush_tlb_page(mm, haddr)
    return VmFault.OK


def unmap_ref_private(k: Kernel, mm: MmStruct, vma: Vma, pfn: int, haddr: int) -> None:
    """unmap_ref_private(): unmap huge page ``pfn`` at ``haddr`` from every other private
    mapping of the same inode that owns no reservations (the children), marking each
    HPAGE_RESV_UNMAPPED so that their later faults there are SIGBUS."""
    file: HugetlbFile = vma.file
    h = file.hstate
    shift = 21 if h.size == 2 << 20 else 30
    for task in k.tasks.values():
        for other in task.mm.vmas:
            if other is vma or not other.is_hugetlb() or other.file.inode is not file.inode:
                continue
            if other.flags & VmFlags.SHARED or other.file.owner or not other.contains(haddr):
                continue
            entry_paddr, reached = k.pgtables.walk(task.mm, haddr, shift, alloc=False)
            if reached != shift:
                continue
            entry = k.pgtables.read(entry_paddr)
            if not entry & pt._PAGE_PRESENT or pt.huge_pfn(entry, shift) != pfn:
                continue            # __unmap_hugepage_range(ref_page): that page only
            other.hugetlb_resv_unmapped = True
            _zap_huge_leaf(k, task.mm, h, entry_paddr, pfn)
            k.flush_tlb_range(task.mm, haddr, haddr + h.size)


def _zap_huge_leaf(k: Kernel, mm: MmStruct, h: Hstate, entry_paddr: int, pfn: int) -> None:
    """Clear one huge leaf and drop its page (back to the pool when its last user goes)."""
    k.pgtables.set_entry(mm, entry_paddr, 0)
    mm.stat[MmStat.HUGETLB_USAGE] -= h.pages_per_huge_page
    k.hugetlb.put_page(h, pfn)


def unmap_hugepage_range(k: Kernel, mm: MmStruct, vma: Vma, start: int, end: int) -> None:
    """__unmap_hugepage_range(): clear the leaves, drop the pages (back to the pool).

    A page of a private mapping zapped in the process that owns its reservation map, while
    no surplus page exists, gets its reservation back: the index is reserved again in the
    map (vma_add_reservation) and the folio is marked to raise resv_huge_pages when it is
    freed (hugetlb_restore_reserve). A page still mapped by a child is freed later, after
    hugetlb_vm_op_close may already have released the index's reservation: the kernel's
    HugePages_Rsvd then goes below zero (wraps) until the child lets the page go, and so
    does pagewalk's (measured: tests/data/measured/hugetlb-restore-reserve*.yaml)."""
    file: HugetlbFile = vma.file
    h = file.hstate
    shift = 21 if h.size == 2 << 20 else 30
    for haddr in range(start & ~(h.size - 1), end, h.size):
        entry_paddr, reached = k.pgtables.walk(mm, haddr, shift, alloc=False)
        if reached != shift:
            continue
        entry = k.pgtables.read(entry_paddr)
        if not entry & pt._PAGE_PRESENT:
            continue
        pfn = pt.huge_pfn(entry, shift)
        # __vma_private_lock() and folio_test_anon(): a private MAP_HUGETLB mapping maps
        # anonymous folios only (no page cache behind it)
        if file.owner and not h.surplus_huge_pages:
            k.memmap.flags[pfn] |= PageFlag.RESTORE_RESERVE
            file.resv.reserved.add(file.index(vma, haddr))
        _zap_huge_leaf(k, mm, h, entry_paddr, pfn)
    k.flush_tlb_range(mm, start, end)


def hugetlb_change_protection(k: Kernel, mm: MmStruct, vma: Vma, start: int, end: int,
                              newprot: int) -> None:
    file: HugetlbFile = vma.file
    h = file.hstate
    shift = 21 if h.size == 2 << 20 else 30
    for haddr in range(start, end, h.size):
        entry_paddr, reached = k.pgtables.walk(mm, haddr, shift, alloc=False)
        if reached != shift:
            continue
        entry = k.pgtables.read(entry_paddr)
        if entry:
            new = pt.pte_modify(entry, newprot) | pt._PAGE_PSE
            if not newprot & pt._PAGE_PRESENT:
                new &= ~pt._PAGE_PRESENT
            k.pgtables.set_entry(mm, entry_paddr, new)
    k.flush_tlb_range(mm, start, end)


def node_hugetlb_pages(k: Kernel) -> int:
    return int(k.node_stat[NodeStat.NR_FREE_PAGES])
