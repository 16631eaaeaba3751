"""Files on a disk file system and their page cache: struct file, readahead, filemap_fault.

Follows mm/filemap.c (filemap_fault, do_sync_mmap_readahead, do_async_mmap_readahead,
filemap_map_pages with next_uptodate_folio, filemap_add_folio, __filemap_remove_folio,
folio_mark_dirty/folio_clear_dirty_for_io, mapping_try_invalidate), mm/readahead.c
(page_cache_sync_ra, page_cache_async_ra, page_cache_ra_order, page_cache_ra_unbounded,
force_page_cache_ra, get_init_ra_size, get_next_ra_size), mm/truncate.c
(truncate_inode_pages_range, truncate_pagecache) and mm/memory.c (unmap_mapping_range).

A scenario's ``file`` step makes an inode (mm/shmem.py PageCacheFile: ``fs`` "disk",
"tmpfs" or "memfd"); each ``mmap`` of it opens it afresh (a :class:`File`, with its own
readahead state, as the oracle's probe does), so two mappings of one file never merge.
Disk files are ext4 as Linux 6.18 has it: large folios in the page cache (readahead
makes them, growing the order by 2 per window up to PMD order), pages that the disk must
read make a fault major, fault-around skips PG_readahead folios and maps a large folio
whole when it lies inside the VMA, one PTE table and i_size (6.18's
filemap_map_folio_range), ``page_mkwrite`` dirties a page on the first write through a
shared mapping (write-notify: shared writable disk mappings map pages read-only).
Disk reads complete at once (the oracle waits for every read before the next access).
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from pagewalk.hw import pgtable_types as pt
from pagewalk.mm import rmap
from pagewalk.mm.page_alloc import NO_PAGE, PageFlag
from pagewalk.mm.types import VmFault, VmFlags
from pagewalk.mm.vmstat import NodeStat, VmEvent

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel
    from pagewalk.mm.shmem import PageCacheFile
    from pagewalk.mm.types import MmStruct, Vma

NOT_READAHEAD = np.uint16(~PageFlag.READAHEAD & 0xFFFF)
NOT_DIRTY = np.uint16(~PageFlag.DIRTY & 0xFFFF)
MMAP_LOTSAMISS = 100
EXEC_FOLIO_ORDER = 0        # exec_folio_order(): x86 asks for no particular size
HPAGE_PMD_ORDER = 9
#: MAX_PAGECACHE_ORDER on x86-64 (PREFERRED_MAX_PAGECACHE_ORDER = HPAGE_PMD_ORDER)
MAX_PAGECACHE_ORDER = HPAGE_PMD_ORDER
#: a 2 MiB chunk per force_page_cache_ra() round
FORCE_RA_CHUNK = (2 << 20) >> 12


class PageCache(MutableMapping[int, int]):
    """mapping->i_pages: file index -> pfn, in one int64 array (NO_PAGE where nothing is
    cached), so that compiled code reads the page cache as it is (``pfns``; the array is
    replaced when it grows). Iteration is in index order, as an xarray walk is."""

    __slots__ = ("count", "pfns")

    def __init__(self) -> None:
        self.pfns: npt.NDArray[np.int64] = np.full(16, NO_PAGE, dtype=np.int64)
        self.count = 0

    def get(self, index: int, default: Any = None) -> Any:
        if 0 <= index < self.pfns.shape[0]:
            pfn = int(self.pfns[index])
            if pfn != NO_PAGE:
                return pfn
        return default

    def __getitem__(self, index: int) -> int:
        pfn = self.get(index, NO_PAGE)
        if pfn == NO_PAGE:
            raise KeyError(index)
        return int(pfn)

    def __setitem__(self, index: int, pfn: int) -> None:
        if index >= self.pfns.shape[0]:
            grown = np.full(max(index + 1, 2 * self.pfns.shape[0]), NO_PAGE, dtype=np.int64)
            grown[: self.pfns.shape[0]] = self.pfns
            self.pfns = grown
        if self.pfns[index] == NO_PAGE:
            self.count += 1
        self.pfns[index] = pfn

    def __delitem__(self, index: int) -> None:
        if self.get(index, NO_PAGE) == NO_PAGE:
            raise KeyError(index)
        self.pfns[index] = NO_PAGE
        self.count -= 1

    def __contains__(self, index: object) -> bool:
        return isinstance(index, int) and self.get(index, NO_PAGE) != NO_PAGE

    def __iter__(self) -> Iterator[int]:
        return iter(np.flatnonzero(self.pfns != NO_PAGE).tolist())

    def __len__(self) -> int:
        return self.count

    def items(self) -> list[tuple[int, int]]:   # type: ignore[override]
        indexes = np.flatnonzero(self.pfns != NO_PAGE)
        return list(zip(indexes.tolist(), self.pfns[indexes].tolist(), strict=True))

    def values(self) -> list[int]:   # type: ignore[override]
        return [int(p) for p in self.pfns[self.pfns != NO_PAGE].tolist()]

    def clear(self) -> None:
        self.pfns = np.full(16, NO_PAGE, dtype=np.int64)
        self.count = 0


@dataclass(slots=True)
class FileRaState:
    """struct file_ra_state: the readahead window of one open file (in pages)."""

    ra_pages: int                   # the disk's read_ahead_kb / 4 when the file was opened
    start: int = 0
    size: int = 0
    async_size: int = 0
    order: int = 0                  # 6.16+: the folio order of the last window
    mmap_miss: int = 0
    prev_pos: int = -1


@dataclass(eq=False)
class File:
    """struct file: one open of an inode. Implements the VmaFile protocol for its VMAs
    (the inode's page cache, its path in /proc/PID/maps)."""

    inode: PageCacheFile
    ra: FileRaState = field(default_factory=lambda: FileRaState(0))
    #: shmem_mmap() of an inode without links (a memfd, an unlinked tmpfs file) gives
    #: its VMAs shmem_anon_vm_ops: vma_is_anon_shmem() is true for them
    anon_vm_ops: bool = False

    @property
    def kind(self) -> str:
        return self.inode.kind

    @property
    def pages(self) -> MutableMapping[int, int]:
        return self.inode.pages

    @property
    def map_name(self) -> str:
        return self.inode.map_name

    def vma_close(self, k: Kernel, vma: Vma) -> None:
        """The scenario keeps every file open: closing a VMA frees nothing of the inode."""

    def may_split(self, vma: Vma, addr: int) -> None:
        """ext4 and shmem have no vm_ops->may_split."""


def file_open(k: Kernel, inode: PageCacheFile) -> File:
    """open(2) -> file_ra_state_init(): ra_pages from the disk's read_ahead_kb now."""
    from pagewalk.kernel.knobs import READ_AHEAD_KB
    ra_pages = int(k.knobs.get(READ_AHEAD_KB)) >> 2 if inode.fs == "disk" else 0
    return File(inode, FileRaState(ra_pages), anon_vm_ops=inode.kind == "shmem" and inode.unlinked)


# --- the page cache --------------------------------------------------------------------------

def filemap_add_folio(k: Kernel, inode: PageCacheFile, head: int, order: int, index: int,
                      readahead: bool = False) -> None:
    """filemap_add_folio() + folio_add_lru() for a new folio of a disk file: the cache
    takes a reference per page; NR_FILE_PAGES (and NR_FILE_THPS for a PMD-sized one)."""
    nr = 1 << order
    memmap = k.memmap
    memmap.flags[head: head + nr] |= np.uint16(PageFlag.FILE)
    if readahead:
        memmap.flags[head] |= np.uint16(PageFlag.READAHEAD)
    memmap.refcount[head] = nr
    k.node_stat[NodeStat.NR_FILE_PAGES] += nr
    k.node_stat[NodeStat.NR_INACTIVE_FILE] += nr
    if order == HPAGE_PMD_ORDER:
        k.node_stat[NodeStat.NR_FILE_THPS] += nr
    for i in range(nr):
        inode.pages[index + i] = head + i


def delete_from_page_cache(k: Kernel, inode: PageCacheFile, head: int, first: int) -> None:
    """__filemap_remove_folio() + filemap_unaccount_folio() + folio_put_refs(): an
    unmapped folio (its head at index ``first``) leaves the cache (a dirty one is
    cleaned: truncation drops the data)."""
    memmap = k.memmap
    order = rmap.folio_order(k, head)
    nr = 1 << order
    for i in range(nr):
        del inode.pages[first + i]
    if memmap.flags[head] & PageFlag.DIRTY:
        folio_cancel_dirty(k, inode, head)
    memmap.flags[head] &= NOT_READAHEAD
    k.node_stat[NodeStat.NR_FILE_PAGES] -= nr
    if memmap.flags[head] & PageFlag.SHMEM:
        k.node_stat[NodeStat.NR_SHMEM] -= nr
        k.node_stat[NodeStat.NR_INACTIVE_ANON] -= nr
        if order == HPAGE_PMD_ORDER:
            k.node_stat[NodeStat.NR_SHMEM_THPS] -= nr
        if inode.fs in ("tmpfs", "memfd"):
            from pagewalk.mm.util import vm_unacct_memory
            vm_unacct_memory(k, nr)                      # shmem_unacct_blocks()
    else:
        k.node_stat[NodeStat.NR_INACTIVE_FILE] -= nr
        if order == HPAGE_PMD_ORDER:
            k.node_stat[NodeStat.NR_FILE_THPS] -= nr
    rmap.folio_put(k, head, nr)


def folio_mark_dirty(k: Kernel, inode: PageCacheFile, head: int) -> None:
    """folio_mark_dirty() of a disk file's folio (ext4 page_mkwrite): NR_FILE_DIRTY and
    nr_dirtied count it once, until writeback cleans it (shmem keeps no dirty count)."""
    memmap = k.memmap
    if memmap.flags[head] & PageFlag.DIRTY:
        return
    memmap.flags[head] |= np.uint16(PageFlag.DIRTY)
    if inode.fs == "disk":
        nr = 1 << rmap.folio_order(k, head)
        k.node_stat[NodeStat.NR_FILE_DIRTY] += nr
        k.node_stat[NodeStat.NR_DIRTIED] += nr


def folio_cancel_dirty(k: Kernel, inode: PageCacheFile, head: int) -> None:
    """folio_cancel_dirty(): truncation drops a dirty folio without writing it."""
    k.memmap.flags[head] &= NOT_DIRTY
    if inode.fs == "disk":
        k.node_stat[NodeStat.NR_FILE_DIRTY] -= 1 << rmap.folio_order(k, head)


def file_write_and_wait(k: Kernel, inode: PageCacheFile, start: int = 0,
                        end: int | None = None) -> None:
    """filemap_write_and_wait_range() of pages [start, end): each dirty folio is cleaned
    for I/O (folio_clear_dirty_for_io -> folio_mkclean: every shared PTE of it becomes
    read-only and clean, so the next write faults again) and written (nr_written)."""
    if inode.fs != "disk":
        return                      # shmem has no writeback
    memmap = k.memmap
    for index, pfn in sorted(inode.pages.items()):
        if index < start or (end is not None and index >= end):
            continue
        head = rmap.folio_head(k, pfn)
        if head != pfn or not memmap.flags[head] & PageFlag.DIRTY:
            continue
        folio_mkclean(k, inode, head, index)
        memmap.flags[head] &= NOT_DIRTY
        nr = 1 << rmap.folio_order(k, head)
        k.node_stat[NodeStat.NR_FILE_DIRTY] -= nr
        k.node_stat[NodeStat.NR_WRITTEN] += nr


def folio_mkclean(k: Kernel, inode: PageCacheFile, head: int, first: int) -> None:
    """folio_mkclean() -> page_vma_mkclean_one(): write-protect and clean every PTE (or
    PMD) that maps the folio (its head at index ``first``) in a shared mapping, flushing
    the TLB entry."""
    from pagewalk.mm.tlb import flush_tlb_page
    nr = 1 << rmap.folio_order(k, head)
    for mm, vma in mappings_of(k, inode):
        if not vma.flags & VmFlags.SHARED:
            continue
        for i in range(nr):
            vaddr = vma_address(vma, first + i)
            if vaddr is None:
                continue
            paddr, entry, shift = k.pgtables.lookup(mm, vaddr)
            if shift > 21 or not entry & pt._PAGE_PRESENT:
                continue
            if shift == 21 and (vaddr & ((1 << 21) - 1)) >> 12 != i:
                continue                 # a PMD is cleaned once, at its first page
            if pt.pte_pfn(entry) in range(head, head + nr) and \
                    entry & (pt._PAGE_RW | pt._PAGE_DIRTY):
                k.pgtables.set_entry(mm, paddr, entry & ~(pt._PAGE_RW | pt._PAGE_DIRTY))
                flush_tlb_page(k, mm, vaddr)


def mappings_of(k: Kernel, inode: PageCacheFile) -> list[tuple[MmStruct, Vma]]:
    """The i_mmap tree of the inode: every VMA of every task that maps it."""
    from pagewalk.mm.shmem import page_cache_of
    found = []
    for task in k.tasks.values():
        for vma in task.mm.vmas:
            if vma.file is not None and vma.file.kind in ("file", "shmem") and \
                    page_cache_of(vma) is inode:
                found.append((task.mm, vma))
    return found


def vma_address(vma: Vma, index: int) -> int | None:
    """vma_address(): where ``vma`` maps page ``index`` of its file, if inside it."""
    if not vma.pgoff <= index < vma.pgoff + (vma.length >> 12):
        return None
    return vma.start + ((index - vma.pgoff) << 12)


# --- readahead (mm/readahead.c) --------------------------------------------------------------

def ra_alloc_folio(k: Kernel, inode: PageCacheFile, index: int, mark: int, order: int) -> bool:
    """ra_alloc_folio(): a folio of 2**order pages at ``index`` enters the cache and is
    read; PG_readahead on the one holding ``mark``. False when it cannot (no memory, or
    a folio is cached there already: -EEXIST)."""
    if any(index + i in inode.pages for i in range(1 << order)):
        return False
    head = rmap.folio_alloc(k, order)
    if head == NO_PAGE:
        return False
    mark &= ~((1 << order) - 1)
    filemap_add_folio(k, inode, head, order, index, readahead=index == mark)
    k.vm_events[VmEvent.PGPGIN] += 4 << order
    return True


def page_cache_ra_unbounded(k: Kernel, inode: PageCacheFile, index: int, nr_to_read: int,
                            lookahead_size: int) -> None:
    """page_cache_ra_unbounded(): order-0 folios for the uncached pages of
    [index, index + nr_to_read), PG_readahead on the page ``lookahead_size`` before the end."""
    mark = nr_to_read - lookahead_size
    for i in range(nr_to_read):
        if index + i in inode.pages:
            continue
        head = rmap.folio_alloc(k, 0)
        if head == NO_PAGE:
            break
        filemap_add_folio(k, inode, head, 0, index + i, readahead=i == mark)
        k.vm_events[VmEvent.PGPGIN] += 4


def do_page_cache_ra(k: Kernel, inode: PageCacheFile, index: int, nr_to_read: int,
                     lookahead_size: int) -> None:
    """do_page_cache_ra(): page_cache_ra_unbounded clipped to i_size."""
    if inode.size == 0:
        return
    end_index = (inode.size - 1) >> 12
    if index > end_index:
        return
    nr_to_read = min(nr_to_read, end_index - index + 1)
    page_cache_ra_unbounded(k, inode, index, nr_to_read, lookahead_size)


def page_cache_ra_order(k: Kernel, inode: PageCacheFile, ra: FileRaState, index: int) -> None:
    """page_cache_ra_order() (6.16+: the order lives in ra->order): naturally aligned
    folios of up to ra.order pages over [index, index + ra.size) within i_size, the
    folio at ra.start + size - async_size marked; on a failure (a cached page in the way,
    no memory) the rest goes through do_page_cache_ra with order-0 folios."""
    if inode.size == 0:
        return
    limit = (inode.size - 1) >> 12
    mark = index + ra.size - ra.async_size
    if ra.size < 4:
        ra.order = 0
        do_page_cache_ra(k, inode, index, ra.size, ra.async_size)
        return
    limit = min(limit, index + ra.size - 1)
    new_order = min(MAX_PAGECACHE_ORDER, ra.order, ra.size.bit_length() - 1)
    ra.order = new_order
    while index <= limit:
        order = new_order
        if index & ((1 << order) - 1):
            order = (index & -index).bit_length() - 1          # __ffs(index)
        while order > 0 and index + (1 << order) - 1 > limit:
            order -= 1
        if not ra_alloc_folio(k, inode, index, mark, order):
            # fallback: do_page_cache_ra(ractl, ra->size, ra->async_size) from where the
            # loop stopped (read_pages() moved the index past what it read)
            do_page_cache_ra(k, inode, index, ra.size, ra.async_size)
            return
        index += 1 << order


def get_init_ra_size(size: int, max_pages: int) -> int:
    newsize = 1 << (size - 1).bit_length() if size > 1 else 1   # roundup_pow_of_two
    if newsize <= max_pages // 32:
        return newsize * 4
    if newsize <= max_pages // 4:
        return newsize * 2
    return max_pages


def get_next_ra_size(ra: FileRaState, max_pages: int) -> int:
    cur = ra.size
    if cur < max_pages // 16:
        return 4 * cur
    if cur <= max_pages // 2:
        return 2 * cur
    return max_pages


def force_page_cache_ra(k: Kernel, inode: PageCacheFile, ra: FileRaState, index: int,
                        nr_to_read: int) -> None:
    """force_page_cache_ra(): read [index, index + nr_to_read) in 2 MiB chunks, at most
    max(io_pages, ra_pages) pages (MADV_WILLNEED, POSIX_FADV_WILLNEED, a read without
    readahead)."""
    nr_to_read = min(nr_to_read, max(ra.ra_pages, IO_PAGES))
    while nr_to_read:
        chunk = min(FORCE_RA_CHUNK, nr_to_read)
        do_page_cache_ra(k, inode, index, chunk, 0)
        index += chunk
        nr_to_read -= chunk


#: bdi->io_pages of the root disk: queue max_sectors_kb (4096 on this virtio disk) / 4
IO_PAGES = 4096 >> 2


def page_cache_sync_ra(k: Kernel, inode: PageCacheFile, ra: FileRaState, index: int,
                       req_count: int) -> None:
    """page_cache_sync_ra() as MADV_SEQUENTIAL faults call it (req_count = ra_pages)."""
    if not ra.ra_pages:
        force_page_cache_ra(k, inode, ra, index, 1)
        return
    max_pages = ra.ra_pages
    if req_count > max_pages and IO_PAGES > max_pages:
        max_pages = min(req_count, IO_PAGES)
    prev_index = ra.prev_pos >> 12 if ra.prev_pos >= 0 else -1
    if not index or req_count > max_pages or index - prev_index <= 1:
        ra.start = index
        ra.size = get_init_ra_size(req_count, max_pages)
        ra.async_size = ra.size - req_count if ra.size > req_count else ra.size >> 1
    else:
        miss = next((i for i in range(index - 1, max(-1, index - 1 - max_pages), -1)
                     if i not in inode.pages), None)           # page_cache_prev_miss
        contig_count = index - (miss if miss is not None else index - 1 - max_pages) - 1
        if contig_count <= req_count:
            do_page_cache_ra(k, inode, index, req_count, 0)
            return
        if miss is None:
            contig_count *= 2
        ra.start = index
        ra.size = min(contig_count + req_count, max_pages)
        ra.async_size = 1
    ra.order = 0
    page_cache_ra_order(k, inode, ra, ra.start)


def page_cache_async_ra(k: Kernel, inode: PageCacheFile, ra: FileRaState, head: int,
                        index: int, req_count: int) -> None:
    """page_cache_async_ra(): the marked folio was reached: clear the mark and read the
    next window (twice as large, up to ra_pages, trimmed to end aligned) with folios 2
    orders larger."""
    if not ra.ra_pages:
        return
    k.memmap.flags[head] &= NOT_READAHEAD
    max_pages = ra.ra_pages
    order = rmap.folio_order(k, head)
    expected = (ra.start + ra.size - ra.async_size) & ~((1 << order) - 1)
    if index == expected:
        ra.start += ra.size
        ra.size = max(ra.size, get_next_ra_size(ra, max_pages))
        ra.async_size = ra.size
    else:
        start = next((i for i in range(index + 1, index + 1 + max_pages)
                      if i not in inode.pages), None)           # page_cache_next_miss
        if start is None or start - index > max_pages:
            return
        ra.start = start
        ra.size = start - index + req_count
        ra.size = get_next_ra_size(ra, max_pages)
        ra.async_size = ra.size
    ra.order += 2
    # readit: the window ends on a boundary of the new folio order (at most the lowest
    # set bit of ra_pages), so that the next window starts naturally aligned
    align = 1 << min(ra.order, (max_pages & -max_pages).bit_length() - 1)
    end = ra.start + ra.size
    aligned_end = end & ~(align - 1)
    if aligned_end > ra.start:
        ra.size -= end - aligned_end
    ra.async_size = ra.size
    page_cache_ra_order(k, inode, ra, ra.start)


def do_sync_mmap_readahead(k: Kernel, vma: Vma, file: File, index: int) -> None:
    """do_sync_mmap_readahead(): on a page-cache miss, read around the fault (ra_pages
    centred on it, a quarter of it asynchronous; for VM_EXEC the VMA's own pages from the
    fault on), or ahead for VM_SEQ_READ, or nothing for VM_RAND_READ, read_ahead_kb 0
    or a file that misses much more than it hits."""
    ra = file.ra
    inode = file.inode
    if vma.flags & VmFlags.HUGEPAGE:
        ra.size = HPAGE_PMD_NR * (1 if vma.flags & VmFlags.RAND_READ else 2)
        ra.async_size = HPAGE_PMD_NR
        ra.order = HPAGE_PMD_ORDER
        start = index & ~(HPAGE_PMD_NR - 1)
        ra.start = start
        page_cache_ra_order(k, inode, ra, start)
        return
    if vma.flags & VmFlags.RAND_READ or not ra.ra_pages:
        return
    if vma.flags & VmFlags.SEQ_READ:
        page_cache_sync_ra(k, inode, ra, index, ra.ra_pages)
        return
    if ra.mmap_miss < MMAP_LOTSAMISS * 10:
        ra.mmap_miss += 1
    if ra.mmap_miss > MMAP_LOTSAMISS:
        return
    if vma.flags & VmFlags.EXEC:
        # 6.16+: executable memory reads its own VMA only (exec_folio_order() is 0 on
        # x86), no asynchronous part: code is read at random
        first, end = vma.pgoff, vma.pgoff + (vma.length >> 12)
        ra.order = EXEC_FOLIO_ORDER
        ra.start = max(index & ~((1 << ra.order) - 1), first)
        ra_end = (ra.start + ra.ra_pages + (1 << ra.order) - 1) & ~((1 << ra.order) - 1)
        ra.size = min(ra_end, end) - ra.start
        ra.async_size = 0
    else:                                # mmap read-around
        ra.start = max(0, index - ra.ra_pages // 2)
        ra.size = ra.ra_pages
        ra.async_size = ra.ra_pages // 4
        ra.order = 0
    page_cache_ra_order(k, inode, ra, ra.start)


def do_async_mmap_readahead(k: Kernel, vma: Vma, file: File, pfn: int, index: int) -> bool:
    """do_async_mmap_readahead(): a cached page was found; one miss less, and a
    PG_readahead folio starts the next window (True: the lock was dropped for it,
    maybe_unlock_mmap_for_io, so the fault will retry)."""
    ra = file.ra
    if vma.flags & VmFlags.RAND_READ or not ra.ra_pages:
        return False
    if ra.mmap_miss:
        ra.mmap_miss -= 1
    head = rmap.folio_head(k, pfn)
    if k.memmap.flags[head] & PageFlag.READAHEAD:
        page_cache_async_ra(k, file.inode, ra, head, index, ra.ra_pages)
        return True
    return False


HPAGE_PMD_NR = 512


def filemap_fault(k: Kernel, vma: Vma, file: File, index: int) -> tuple[int, VmFault]:
    """filemap_fault(): the page at ``index`` from the page cache, (pfn, 0) when it is
    cached, (pfn, VM_FAULT_RETRY) when its folio started async readahead; else
    PGMAJFAULT, sync readahead, and the page read on its own if readahead did not bring
    it: (pfn, VM_FAULT_MAJOR; the fault retries too). SIGBUS past i_size."""
    inode = file.inode
    if index >= inode.size_pages:
        return NO_PAGE, VmFault.SIGBUS
    pfn = inode.pages.get(index, NO_PAGE)
    if pfn != NO_PAGE:
        if do_async_mmap_readahead(k, vma, file, pfn, index):
            return pfn, VmFault.RETRY
        return pfn, VmFault.OK
    k.vm_events[VmEvent.PGMAJFAULT] += 1
    do_sync_mmap_readahead(k, vma, file, index)
    pfn = inode.pages.get(index, NO_PAGE)
    if pfn == NO_PAGE:                   # __filemap_get_folio(FGP_CREAT | FGP_FOR_MMAP)
        head = rmap.folio_alloc(k, 0)
        if head == NO_PAGE:
            return NO_PAGE, VmFault.OOM
        filemap_add_folio(k, inode, head, 0, index)
        k.vm_events[VmEvent.PGPGIN] += 4
        pfn = head
    return pfn, VmFault.MAJOR


# --- truncation and invalidation (mm/truncate.c) ---------------------------------------------

def truncate_inode_pages_range(k: Kernel, inode: PageCacheFile, start: int,
                               end: int | None = None) -> None:
    """truncate_inode_pages_range(): the folios wholly inside pages [start, end) leave the
    cache (they are unmapped already); a large folio straddling an edge is split first
    (pagewalk keeps it whole when it stays partly inside: split_folio's result)."""
    for first, head in folio_heads(k, inode):
        nr = 1 << rmap.folio_order(k, head)
        if first + nr <= start or (end is not None and first >= end):
            continue
        if first < start or (end is not None and first + nr > end):
            continue                     # a partial large folio stays (zeroed in part)
        delete_from_page_cache(k, inode, head, first)


def folio_heads(k: Kernel, inode: PageCacheFile) -> list[tuple[int, int]]:
    """(index, head pfn) of every folio in the cache, by index."""
    return [(index, pfn) for index, pfn in sorted(inode.pages.items())
            if rmap.folio_head(k, pfn) == pfn]


def mapping_try_invalidate(k: Kernel, inode: PageCacheFile) -> None:
    """mapping_try_invalidate() over the whole file (POSIX_FADV_DONTNEED): clean folios
    that nobody maps and nobody else holds leave the cache (mapping_evict_folio)."""
    memmap = k.memmap
    for first, head in folio_heads(k, inode):
        nr = 1 << rmap.folio_order(k, head)
        if memmap.flags[head] & PageFlag.DIRTY or rmap.folio_mapped_pages(k, head):
            continue
        if memmap.refcount[head] > nr:   # folio_ref_count > nr_pages + private + 1 (ours)
            continue
        delete_from_page_cache(k, inode, head, first)


def unmap_mapping_range(k: Kernel, inode: PageCacheFile, first: int, last: int | None,
                        even_cows: bool) -> None:
    """unmap_mapping_range() -> unmap_mapping_range_tree(): take pages [first, last) of
    the file out of every mapping of it (zap_page_range_single); private copies (anon
    pages in MAP_PRIVATE mappings) go too only with ``even_cows`` (truncation), not for
    a punched hole."""
    from pagewalk.mm import memory
    for mm, vma in mappings_of(k, inode):
        lo = max(first, vma.pgoff)
        hi = vma.pgoff + (vma.length >> 12)
        if last is not None:
            hi = min(hi, last)
        if lo >= hi:
            continue
        start = vma.start + ((lo - vma.pgoff) << 12)
        end = vma.start + ((hi - vma.pgoff) << 12)
        memory.unmap_page_range(k, mm, vma, start, end,
                                even_cows=even_cows or bool(vma.flags & VmFlags.SHARED))


def truncate_pagecache(k: Kernel, inode: PageCacheFile, newsize: int) -> None:
    """truncate_setsize() + truncate_pagecache() (ext4_setattr, shmem_setattr): i_size
    becomes ``newsize``; when it shrinks, pages wholly past the new end leave every mapping
    (private copies too) and the page cache; the page holding the end stays."""
    oldsize = inode.size
    inode.size = newsize
    if newsize >= oldsize:
        return
    holebegin = (newsize + 4095) >> 12
    unmap_mapping_range(k, inode, holebegin, None, even_cows=True)
    truncate_inode_pages_range(k, inode, holebegin)
    pfn = inode.pages.get(newsize >> 12, NO_PAGE)
    if newsize & 4095 and pfn != NO_PAGE:     # truncate_inode_partial_folio: zero the tail
        tail = 4096 - (newsize & 4095)
        k.physmem.write_bytes((pfn << 12) + (newsize & 4095), bytes(tail))


def punch_hole(k: Kernel, inode: PageCacheFile, start: int, end: int) -> None:
    """fallocate(FALLOC_FL_PUNCH_HOLE) of whole pages [start, end) (MADV_REMOVE):
    shmem_fallocate / ext4_punch_hole -> unmap_mapping_range(even_cows=0) and
    truncate_pagecache_range: the pages leave shared mappings and the cache; private
    copies stay."""
    if start >= end:
        return
    unmap_mapping_range(k, inode, start, end, even_cows=False)
    truncate_inode_pages_range(k, inode, start, end)


# --- the scenario's files: creation by write(2) ------------------------------------------------

DISK_DIR = "/var/tmp/pagewalk-files"
TMPFS_DIR = "/dev/shm/pagewalk-files"


def create_file(k: Kernel, name: str, size: int, fs: str, ino: int) -> PageCacheFile:
    """A ``file`` step's inode. disk: open(O_CREAT), write(2) of 4 KiB at a time (each
    a new order-0 folio: generic_perform_write -> write_begin), fsync (written back:
    nr_dirtied and nr_written count every page); tmpfs: the same writes allocate shmem
    folios (PMD-sized ones when shmem_enabled is force: /dev/shm's huge= is never);
    memfd: memfd_create + ftruncate, no page. Refused with ENOMEM, leaving nothing, when
    the pages do not fit in free memory."""
    from pagewalk.errors import Errno, SyscallError
    from pagewalk.mm.shmem import HPAGE_PMD_NR as PMD_NR
    from pagewalk.mm.shmem import SHMEM_ENABLED, PageCacheFile
    if fs == "memfd":
        return PageCacheFile(f"/memfd:{name}", "shmem", size, fs="memfd", ino=ino)
    kind = "file" if fs == "disk" else "shmem"
    path = f"{DISK_DIR if fs == 'disk' else TMPFS_DIR}/{name}"
    inode = PageCacheFile(path, kind, size, fs=fs, ino=ino)
    nr = inode.size_pages
    huge = fs == "tmpfs" and k.knobs.get(SHMEM_ENABLED) == "force"
    if nr > k.buddy.free_pages_total():
        raise SyscallError(Errno.ENOMEM, f"{nr} pages of {name!r} do not fit in free memory")
    index = 0
    while index < nr:
        if huge and not index % PMD_NR:
            head = rmap.folio_alloc(k, HPAGE_PMD_ORDER)
            if head != NO_PAGE:
                inode.add_folio(k, head, HPAGE_PMD_ORDER, index)
                k.vm_events[VmEvent.THP_FILE_ALLOC] += 1
                index += PMD_NR
                continue
        head = rmap.folio_alloc(k, 0)
        if head == NO_PAGE:
            raise SyscallError(Errno.ENOMEM, f"out of memory writing {name!r}")
        if fs == "disk":
            filemap_add_folio(k, inode, head, 0, index)
            k.node_stat[NodeStat.NR_DIRTIED] += 1
            k.node_stat[NodeStat.NR_WRITTEN] += 1
        else:
            inode.add_folio(k, head, 0, index)
        index += 1
    return inode


# --- which file a page belongs to (for the views) ---------------------------------------------

def page_cache_owners(k: Kernel) -> dict[int, tuple[PageCacheFile, int]]:
    """pfn -> (inode, index) of every page-cache page the kernel knows: the scenario's
    files, the program file, the vdso and the shmem files of mapped VMAs (page->mapping
    and page->index, which the views show as a file and an offset)."""
    from pagewalk.mm.shmem import page_cache_of
    inodes: dict[int, PageCacheFile] = {id(i): i for i in k.inodes.values()}
    inodes[id(k.program_file)] = k.program_file
    inodes[id(k.vdso_file)] = k.vdso_file
    for task in k.tasks.values():
        for vma in task.mm.vmas:
            if vma.file is not None and vma.file.kind in ("file", "shmem"):
                inode = page_cache_of(vma)
                inodes[id(inode)] = inode
    owners: dict[int, tuple[PageCacheFile, int]] = {}
    for inode in inodes.values():
        for index, pfn in inode.pages.items():
            owners[pfn] = (inode, index)
    return owners


def describe_page(k: Kernel, pfn: int, owners: dict[int, tuple[PageCacheFile, int]]
                  | None = None) -> str:
    """A page's owner in words: its file and offset for a page-cache page."""
    found = (owners if owners is not None else page_cache_owners(k)).get(pfn)
    if found is None:
        return ""
    inode, index = found
    dirty = ", dirty" if k.memmap.flags[rmap.folio_head(k, pfn)] & PageFlag.DIRTY else ""
    return f"page cache of {inode.map_name}, page {index} (file offset {index << 12:#x}){dirty}"
