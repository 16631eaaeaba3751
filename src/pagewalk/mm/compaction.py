"""Direct compaction for a high-order allocation (mm/compaction.c try_to_compact_pages,
compact_zone, isolate_migratepages_block, migrate_pages; mm/migrate.c).

The migrate scanner walks pageblocks of the requested order from the start of each zone;
a block qualifies when every page in it is free or a movable order-0 page (anonymous,
shmem or file page cache; never page tables, reserved memory, hugetlb or large folios).
Its free pieces are isolated, each movable page is migrated to a free page elsewhere
(contents copied, every PTE and page-cache slot that referenced it rewritten, the TLBs
of the mms concerned flushed), the old pages freed, and the isolated pieces given back:
the block then merges into one free block of the order asked for. compact_stall counts
every attempt, compact_success or compact_fail its outcome.
Simplification: the free scanner is the allocator itself (the kernel takes free pages
from the end of the zone); no kcompactd, no proactive compaction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from pagewalk.hw import pgtable_types as pt
from pagewalk.mm.page_alloc import NO_PAGE, PageFlag, list_del
from pagewalk.mm.tlb import flush_tlb_mm
from pagewalk.mm.vmstat import NodeStat, VmEvent

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel
    from pagewalk.mm.types import MmStruct, VmaFile

UNMOVABLE = PageFlag.TABLE | PageFlag.RESERVED | PageFlag.HUGETLB | PageFlag.HEAD | PageFlag.TAIL
MOVABLE = PageFlag.ANON | PageFlag.SHMEM | PageFlag.FILE


def try_to_compact_pages(k: Kernel, order: int) -> bool:
    """Make one free block of ``order`` by migration; True on success."""
    k.vm_events[VmEvent.COMPACT_STALL] += 1
    for zone in k.buddy.zonelist():
        if _compact_zone(k, zone, order):
            k.vm_events[VmEvent.COMPACT_SUCCESS] += 1
            return True
    k.vm_events[VmEvent.COMPACT_FAIL] += 1
    return False


def _compact_zone(k: Kernel, zone: int, order: int) -> bool:
    buddy, memmap = k.buddy, k.memmap
    size = 1 << order
    lo = (int(buddy.zone_start[zone]) + size - 1) & ~(size - 1)
    hi = int(buddy.zone_end[zone])
    for start in range(lo, hi - size + 1, size):
        plan = _scan_block(k, start, size)
        k.vm_events[VmEvent.COMPACT_MIGRATE_SCANNED] += size
        if plan is None:
            continue
        free_pieces, movable = plan
        free_elsewhere = int(k.node_stat[NodeStat.NR_FREE_PAGES]) - sum(1 << o for _, o in free_pieces)
        if not movable or free_elsewhere < len(movable):
            continue
        _isolate(k, zone, free_pieces)
        _migrate(k, movable)
        k.vm_events[VmEvent.COMPACT_ISOLATED] += len(movable)
        for pfn, piece_order in free_pieces:   # putback: the block merges again
            buddy._free(zone, pfn, piece_order)
        del memmap
        return True
    return False


def _scan_block(k: Kernel, start: int, size: int) -> tuple[list[tuple[int, int]], list[int]] | None:
    """isolate_migratepages_block(): the block's free pieces and movable pages, or None."""
    memmap = k.memmap
    free_pieces: list[tuple[int, int]] = []
    movable: list[int] = []
    pfn = start
    while pfn < start + size:
        flags = int(memmap.flags[pfn])
        if flags & PageFlag.BUDDY:
            piece = int(memmap.order[pfn])
            if pfn + (1 << piece) > start + size:
                return None  # a larger free block: the block is free already
            free_pieces.append((pfn, piece))
            pfn += 1 << piece
            continue
        if flags & UNMOVABLE or not flags & MOVABLE or memmap.refcount[pfn] <= 0 or \
                pfn == k.zero_pfn:
            return None
        movable.append(pfn)
        pfn += 1
    return free_pieces, movable


def _isolate(k: Kernel, zone: int, pieces: list[tuple[int, int]]) -> None:
    buddy, memmap = k.buddy, k.memmap
    for pfn, order in pieces:
        list_del(memmap.flags, memmap.order, memmap.next, memmap.prev, buddy.free_head,
                 buddy.nr_free, zone, pfn, order)
        k.node_stat[NodeStat.NR_FREE_PAGES] -= 1 << order


def _migrate(k: Kernel, pfns: list[int]) -> None:
    """migrate_pages(): move every page, rewrite its mappings and page-cache slots."""
    wanted = set(pfns)
    users = _mappings_of(k, wanted)
    moved: dict[int, int] = {}
    memmap = k.memmap
    for old in pfns:
        new = k.buddy.alloc_pages(0)
        assert new != NO_PAGE
        k.physmem.copy_frame(new, old)
        memmap.flags[new] = memmap.flags[old]
        memmap.refcount[new] = memmap.refcount[old]
        memmap.mapcount[new] = memmap.mapcount[old]
        moved[old] = new
    flushed: set[int] = set()
    for mm, paddr, entry in users:
        old = pt.pte_pfn(entry)
        k.pgtables.set_entry(mm, paddr, (entry & ~pt.PTE_PFN_MASK) | (moved[old] << 12))
        if id(mm) not in flushed:
            flushed.add(id(mm))
            flush_tlb_mm(k, mm)
    for file in _page_cache_files(k):
        for index, pfn in list(file.pages.items()):
            if pfn in moved:
                file.pages[index] = moved[pfn]
    for old in pfns:
        memmap.refcount[old] = 0
        memmap.mapcount[old] = 0
        k.buddy.free_pages(old, 0)


def _mappings_of(k: Kernel, pfns: set[int]) -> list[tuple[MmStruct, int, int]]:
    """The rmap walk: every PTE of every mm that maps one of ``pfns``."""
    found = []
    for task in k.tasks.values():
        mm = task.mm
        for table, base in _pte_tables(k, mm):
            words = k.physmem.frame_words(table)
            present = (words & np.uint64(pt._PAGE_PRESENT | pt._PAGE_PROTNONE)) != 0
            for index in np.nonzero(present)[0].tolist():
                entry = int(words[index])
                if not entry & pt._PAGE_SPECIAL and pt.pte_pfn(entry) in pfns:
                    found.append((mm, (table << 12) + index * 8, entry))
    return found


def _pte_tables(k: Kernel, mm: MmStruct) -> list[tuple[int, int]]:
    tables: list[tuple[int, int]] = []
    shifts = k.pgtables.shifts

    def descend(table: int, level: int, base: int) -> None:
        words = k.physmem.frame_words(table)
        limit = 256 if level == 0 else 512
        for index in np.nonzero(words[:limit])[0].tolist():
            entry = int(words[index])
            if not entry & pt._PAGE_PRESENT or entry & pt._PAGE_PSE:
                continue
            child_base = base + (index << shifts[level])
            if shifts[level] == 21:
                tables.append((pt.pte_pfn(entry), child_base))
            else:
                descend(pt.pte_pfn(entry), level + 1, child_base)

    descend(mm.pgd_pfn, 0, 0)
    return tables


def _page_cache_files(k: Kernel) -> list[VmaFile]:
    """The page caches whose pages may move: the program's, the vdso's, shmem's (hugetlb
    pages never move)."""
    files: dict[int, VmaFile] = {id(k.program_file): k.program_file, id(k.vdso_file): k.vdso_file}
    for task in k.tasks.values():
        for vma in task.mm.vmas:
            if vma.file is not None and not vma.is_hugetlb():
                files[id(vma.file)] = vma.file
    return list(files.values())
