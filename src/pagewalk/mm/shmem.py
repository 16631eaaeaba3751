"""Page-cache backed mappings: shared anonymous memory (shmem), the program file, the vdso.

Follows mm/shmem.c (shmem_zero_setup, shmem_fault, shmem_acct_size), mm/filemap.c
(filemap_map_pages) and mm/memory.c (do_fault, do_read_fault with do_fault_around,
do_shared_fault, do_cow_fault, finish_fault). A page-cache page holds one reference
for the cache and one per mapping; shmem pages count in Shmem and RssShmem. A shmem THP
(made by MADV_COLLAPSE, mm/khugepaged.c collapse_file) sits in ``pages`` as its 512
subpages, the cache holding one reference per subpage on the head; a fault where the PMD
is none maps it by PMD (do_set_pmd), with no deposited table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pagewalk.hw import pgtable_types as pt
from pagewalk.mm import rmap
from pagewalk.mm.page_alloc import NO_PAGE, PageFlag
from pagewalk.mm.types import MmStat, MmStruct, Vma, VmFlags
from pagewalk.mm.vmstat import NodeStat

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel
    from pagewalk.mm.memory import FaultFlags, VmFault

FAULT_AROUND_PAGES = 16  # fault_around_bytes 64 KiB


class PageCacheFile:
    """An inode's page cache: index -> pfn. ``kind`` is "shmem", "file" or "vdso"."""

    def __init__(self, name: str, kind: str, size: int = 0, accounted_pages: int = 0) -> None:
        self.name = name
        self.kind = kind
        self.size = size
        self.pages: dict[int, int] = {}
        self.accounted_pages = accounted_pages   # shmem_acct_size() charge (Committed_AS)

    @property
    def map_name(self) -> str:
        return "/dev/zero (deleted)" if self.kind == "shmem" else self.name

    def find_or_create_page(self, k: Kernel, index: int) -> int:
        """filemap_grab_folio()/shmem_get_folio(): the cached page, or a new zeroed one."""
        pfn = self.pages.get(index, NO_PAGE)
        if pfn != NO_PAGE:
            return pfn
        pfn = rmap.folio_alloc(k, 0)
        if pfn == NO_PAGE:
            return NO_PAGE
        flags = k.memmap.flags
        if self.kind == "shmem":
            flags[pfn] |= PageFlag.SHMEM
            k.node_stat[NodeStat.NR_SHMEM] += 1
            k.node_stat[NodeStat.NR_FILE_PAGES] += 1
            k.node_stat[NodeStat.NR_INACTIVE_ANON] += 1
        elif self.kind == "file":
            flags[pfn] |= PageFlag.FILE
            k.node_stat[NodeStat.NR_FILE_PAGES] += 1
            k.node_stat[NodeStat.NR_ACTIVE_FILE] += 1
        else:
            flags[pfn] |= PageFlag.FILE
        self.pages[index] = pfn
        return pfn

    def vma_close(self, k: Kernel, vma: Vma) -> None:
        """The last mapping of an unlinked shmem inode went away: truncate it."""
        if self.kind != "shmem":
            return
        for task in k.tasks.values():
            if any(v.file is self for v in task.mm.vmas):
                return
        for pfn in self.pages.values():
            k.node_stat[NodeStat.NR_SHMEM] -= 1
            k.node_stat[NodeStat.NR_FILE_PAGES] -= 1
            k.node_stat[NodeStat.NR_INACTIVE_ANON] -= 1
            rmap.folio_put(k, rmap.folio_head(k, pfn))   # a THP: one reference a page
        self.pages.clear()
        if self.accounted_pages:
            k.vm_unacct_memory(self.accounted_pages)
            self.accounted_pages = 0


def shmem_zero_setup(k: Kernel, length: int, vm_flags: VmFlags) -> PageCacheFile:
    """shmem_zero_setup(): an unlinked shmem inode of ``length`` bytes; shmem_acct_size
    charges Committed_AS unless VM_NORESERVE."""
    pages = 0 if vm_flags & VmFlags.NORESERVE else length >> 12
    if pages:
        k.vm_acct_memory(pages)
    return PageCacheFile("/dev/zero", "shmem", length, pages)


def file_index(vma: Vma, vaddr: int) -> int:
    return vma.pgoff + ((vaddr - vma.start) >> 12)


def map_file_page(k: Kernel, mm: MmStruct, vma: Vma, vaddr: int, pfn: int, write: bool) -> None:
    """set_pte_range() for one page-cache page: a reference, a mapcount, RSS."""
    pmd_paddr, _ = k.pgtables.walk(mm, vaddr, 21, alloc=True)
    from pagewalk.mm.memory import pte_alloc
    table = pte_alloc(k, mm, pmd_paddr)
    entry = pt.mk_pte(pfn, vma.page_prot) | pt._PAGE_ACCESSED
    if write:
        entry |= pt._PAGE_DIRTY | (pt._PAGE_RW if vma.flags & VmFlags.WRITE else 0)
    k.pgtables.set_entry(mm, (table << 12) + ((vaddr >> 12) & 511) * 8, entry)
    rmap.folio_get(k, rmap.folio_head(k, pfn))
    rmap.folio_add_pte_rmap(k, pfn)
    shmem_page = bool(k.memmap.flags[pfn] & PageFlag.SHMEM)
    mm.stat[MmStat.MM_SHMEMPAGES if shmem_page else MmStat.MM_FILEPAGES] += 1


def do_fault(k: Kernel, mm: MmStruct, vma: Vma, vaddr: int, pmd_paddr: int,
             flags: FaultFlags) -> VmFault:
    """do_fault(): read -> do_read_fault (fault-around), write to a shared mapping ->
    do_shared_fault, write to a private mapping -> do_cow_fault."""
    from pagewalk.mm.memory import FaultFlags, VmFault
    file = vma.file
    if file is None:
        return VmFault.SIGBUS  # a special mapping without pages (vvar): nothing to map
    if file.kind == "shmem" and file_index(vma, vaddr) >= (file.size + 4095) >> 12:
        return VmFault.SIGBUS
    write = bool(flags & FaultFlags.WRITE)
    if not (write and not vma.flags & VmFlags.SHARED) and \
            map_pmd_if_huge(k, mm, vma, vaddr, pmd_paddr, write):
        return VmFault.OK
    if not flags & FaultFlags.WRITE:
        return do_read_fault(k, mm, vma, vaddr)
    if vma.flags & VmFlags.SHARED:
        pfn = file.find_or_create_page(k, file_index(vma, vaddr))
        if pfn == NO_PAGE:
            return VmFault.OOM
        map_file_page(k, mm, vma, vaddr, pfn, write=True)
        return VmFault.OK
    return do_cow_fault(k, mm, vma, vaddr)


def map_pmd_if_huge(k: Kernel, mm: MmStruct, vma: Vma, vaddr: int, pmd_paddr: int,
                    write: bool) -> bool:
    """filemap_map_pmd() (read faults) and finish_fault() (shared write faults): a THP in the
    page cache is mapped by PMD where the PMD is none and do_set_pmd() accepts the VMA."""
    from pagewalk.mm import huge_memory
    pfn = vma.file.pages.get(file_index(vma, vaddr), NO_PAGE)
    if pfn == NO_PAGE or k.pgtables.read(pmd_paddr):
        return False
    head = rmap.folio_head(k, pfn)
    haddr = vaddr & ~(huge_memory.HPAGE_PMD_SIZE - 1)
    if rmap.folio_order(k, head) != huge_memory.HPAGE_PMD_ORDER or \
            huge_memory.vma_thp_disabled(mm, vma) or \
            not huge_memory.thp_vma_suitable_order(vma, haddr, huge_memory.HPAGE_PMD_ORDER):
        return False
    do_set_pmd(k, mm, vma, pmd_paddr, head, write)
    return True


def do_set_pmd(k: Kernel, mm: MmStruct, vma: Vma, pmd_paddr: int, head: int,
               write: bool) -> None:
    """do_set_pmd() (mm/memory.c): map a page-cache THP by one PMD (no deposited table on
    x86): RssShmem grows by 2 MiB, the mapping holds a reference; thp_file_mapped."""
    from pagewalk.mm.vmstat import VmEvent
    entry = pt.mk_huge(head, vma.page_prot)       # mk_huge_pmd(page, vma->vm_page_prot)
    if write:
        entry |= pt._PAGE_DIRTY | (pt._PAGE_RW if vma.flags & VmFlags.WRITE else 0)
    mm.stat[MmStat.MM_SHMEMPAGES] += 512
    rmap.folio_add_file_rmap_pmd(k, head)
    rmap.folio_get(k, head)
    k.pgtables.set_entry(mm, pmd_paddr, entry)
    k.vm_events[VmEvent.THP_FILE_MAPPED] += 1


def do_read_fault(k: Kernel, mm: MmStruct, vma: Vma, vaddr: int) -> VmFault:
    """do_read_fault(): map the cached pages of the 64 KiB-aligned window around vaddr
    (do_fault_around -> filemap_map_pages); fetch the faulting page if it was not cached."""
    from pagewalk.mm.memory import VmFault
    file = vma.file
    pte_off = (vaddr >> 12) & 511
    vma_off = (vaddr - vma.start) >> 12
    from_pte = max(pte_off & ~(FAULT_AROUND_PAGES - 1), pte_off - min(pte_off, vma_off))
    to_pte = min(from_pte + FAULT_AROUND_PAGES, 512, pte_off + (vma.length >> 12) - vma_off) - 1
    pmd_paddr, _ = k.pgtables.walk(mm, vaddr, 21, alloc=True)
    from pagewalk.mm.memory import pte_alloc
    table = pte_alloc(k, mm, pmd_paddr)
    if table == NO_PAGE:
        return VmFault.OOM
    base = (vaddr & ~4095) - (pte_off << 12)
    mapped_self = False
    for off in range(from_pte, to_pte + 1):
        va = base + (off << 12)
        pfn = file.pages.get(file_index(vma, va), NO_PAGE)
        if pfn == NO_PAGE or k.pgtables.read((table << 12) + off * 8):
            continue
        map_file_page(k, mm, vma, va, pfn, write=False)
        mapped_self = mapped_self or va == vaddr & ~4095
    if mapped_self:
        return VmFault.NOPAGE
    pfn = file.find_or_create_page(k, file_index(vma, vaddr))
    if pfn == NO_PAGE:
        return VmFault.OOM
    map_file_page(k, mm, vma, vaddr & ~4095, pfn, write=False)
    return VmFault.OK


def do_cow_fault(k: Kernel, mm: MmStruct, vma: Vma, vaddr: int) -> VmFault:
    """do_cow_fault(): a private anonymous copy of a file page."""
    from pagewalk.mm.memory import VmFault, anon_vma_prepare, mk_anon_pte, pte_alloc
    anon_vma_prepare(vma)
    src = vma.file.find_or_create_page(k, file_index(vma, vaddr))
    new = rmap.folio_alloc(k, 0)
    if src == NO_PAGE or new == NO_PAGE:
        return VmFault.OOM
    k.physmem.copy_frame(new, src)
    rmap.folio_add_new_anon_rmap(k, new, 1, pmd_mapped=False)
    pmd_paddr, _ = k.pgtables.walk(mm, vaddr, 21, alloc=True)
    table = pte_alloc(k, mm, pmd_paddr)
    k.pgtables.set_entry(mm, (table << 12) + ((vaddr >> 12) & 511) * 8, mk_anon_pte(vma, new))
    mm.stat[MmStat.MM_ANONPAGES] += 1
    return VmFault.OK
