"""The buddy allocator and the struct page array (mm/page_alloc.c, include/linux/mmzone.h).

Zones DMA [0, 16 MiB), DMA32 [16 MiB, 4 GiB) and Normal [4 GiB, RAM) each keep one free
list per order 0..MAX_PAGE_ORDER (10), as doubly linked lists threaded through the
struct page array (``next``/``prev`` per pfn), exactly as ``free_area[order].free_list``
does. Allocation is ``__rmqueue_smallest`` + ``expand``; freeing is ``__free_one_page``
(merge with the buddy ``pfn ^ (1 << order)`` while it is free and of the same order).

Simplifications, documented in docs/differences.md: one migratetype (no pageblock
stealing), no per-CPU page lists (buddyinfo changes at once), no watermarks other
than running out: the zone watermarks (``zone_watermarks``) are computed from the managed
pages as the kernel would set them, and only the callers that model a watermark check
(``zone_watermark_ok``: hugetlb pool pages) apply one.

The allocator's array work is compiled once (Numba) over NumPy arrays and shared by the
Python path (BuddyAllocator's methods call it) and the compiled fault path
(mm/fastfault.py): the free-list operations, ``alloc_pages``, ``folio_alloc`` and
``free_pages``, which take mem_map and the free areas as one :class:`PageArrays` bundle
and the counters they bump as one :class:`VmStatArrays`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from math import isqrt
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import numpy.typing as npt

from pagewalk.hw.compiled import bundle, compiled
from pagewalk.hw.physmem import PhysArrays, frame_drop_range
from pagewalk.mm.vmstat import NodeStat, VmEvent
from pagewalk.units import GiB, MiB

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel

MAX_PAGE_ORDER = 10
NR_PAGE_ORDERS = MAX_PAGE_ORDER + 1
NO_PAGE = -1


class PageFlag(enum.IntFlag):
    """The struct page / folio flags pagewalk needs (include/linux/page-flags.h)."""

    BUDDY = 1 << 0          # PageBuddy: head of a free block; order[] holds its order
    RESERVED = 1 << 1       # PG_reserved: never handed out (boot memory, zero page)
    ANON = 1 << 2           # PageAnon (folio->mapping has PAGE_MAPPING_ANON)
    HEAD = 1 << 3           # PG_head: first page of a large folio; order[] holds its order
    TAIL = 1 << 4           # a tail page of a large folio
    TABLE = 1 << 5          # PG_table: a page-table page (pagetable_*_ctor)
    ANON_EXCLUSIVE = 1 << 6  # PageAnonExclusive: mapped by exactly one mm, may be reused
    HUGETLB = 1 << 7        # a hugetlb folio (in a pool or mapped)
    SHMEM = 1 << 8          # shmem/tmpfs page cache page (shared anonymous memory)
    FILE = 1 << 9           # other page cache page (the program image)
    LAZYFREE = 1 << 10      # MADV_FREE'd (clean, !swapbacked)
    DIRTY = 1 << 11         # PG_dirty
    PARTIALLY_MAPPED = 1 << 12  # folio_set_partially_mapped (on the deferred split queue)
    RESTORE_RESERVE = 1 << 13   # hugetlb: freeing the folio gives a reservation back
    READAHEAD = 1 << 14     # PG_readahead: reaching this page-cache folio starts async readahead


_BUDDY = np.uint16(1)  # PageFlag.BUDDY, as a constant Numba can fold
_HEAD = np.uint16(PageFlag.HEAD)
_TAIL = np.uint16(PageFlag.TAIL)
ZONE_NAMES = ("DMA", "DMA32", "Normal")
ZONE_LIMITS = (16 * MiB, 4 * GiB, 1 << 62)


class MemMap:
    """The struct page array (mem_map): per-frame metadata as parallel NumPy arrays."""

    def __init__(self, nr_frames: int) -> None:
        self.flags: npt.NDArray[np.uint16] = np.zeros(nr_frames, dtype=np.uint16)
        self.order: npt.NDArray[np.int8] = np.zeros(nr_frames, dtype=np.int8)
        self.refcount: npt.NDArray[np.int32] = np.zeros(nr_frames, dtype=np.int32)
        self.mapcount: npt.NDArray[np.int32] = np.zeros(nr_frames, dtype=np.int32)
        self.head: npt.NDArray[np.int32] = np.full(nr_frames, NO_PAGE, dtype=np.int32)
        self.next: npt.NDArray[np.int32] = np.full(nr_frames, NO_PAGE, dtype=np.int32)
        self.prev: npt.NDArray[np.int32] = np.full(nr_frames, NO_PAGE, dtype=np.int32)

    @property
    def host_bytes(self) -> int:
        return int(sum(a.nbytes for a in (self.flags, self.order, self.refcount,
                                             self.mapcount, self.head, self.next, self.prev)))


class PageArrays(NamedTuple):
    """mem_map and the zones' free areas, as compiled code takes them."""

    flags: npt.NDArray[np.uint16]        # PageFlag bits per pfn
    order: npt.NDArray[np.int8]          # buddy order of a free block / folio order of a head
    refcount: npt.NDArray[np.int32]      # on the head of a large folio
    mapcount: npt.NDArray[np.int32]      # PTE mappings per page
    head: npt.NDArray[np.int32]          # compound head of a tail page, else NO_PAGE
    next: npt.NDArray[np.int32]          # free-list links
    prev: npt.NDArray[np.int32]
    free_head: npt.NDArray[np.int32]     # [zone, order] first free block or NO_PAGE
    nr_free: npt.NDArray[np.int64]       # [zone, order] free blocks
    zone_start: npt.NDArray[np.int64]    # [zone] first pfn
    zone_end: npt.NDArray[np.int64]      # [zone] pfn past the end
    zonelist: npt.NDArray[np.int64]      # GFP_HIGHUSER_MOVABLE's fallback order of zones


class VmStatArrays(NamedTuple):
    """The node counters and VM events (mm/vmstat.py), as compiled code takes them."""

    node: npt.NDArray[np.int64]          # indexed by NodeStat
    events: npt.NDArray[np.int64]        # indexed by VmEvent


class KernelArrays(NamedTuple):
    """Everything the kernel's compiled code works on besides one mm's counters and the
    MMU: physical memory, mem_map with the free areas, the node counters and events
    (PageTables.arrays builds it; take a fresh one after physmem's pool grew)."""

    phys: PhysArrays
    pages: PageArrays
    vmstat: VmStatArrays


bundle(PageArrays, "H1 b1 i1 i1 i1 i1 i1 i2 q2 q1 q1 q1")
bundle(VmStatArrays, "q1 q1")
bundle(KernelArrays, "PhysArrays PageArrays VmStatArrays")
LISTS = "H1 b1 i1 i1 i2 q2"     # the arrays of the free-list operations


# --- free-list primitives (compiled; the Python path and mm/fastfault.py share them) -------

@compiled(entry=LISTS + " i i i", inline=True)
def list_add(flags: npt.NDArray[np.uint16], order_of: npt.NDArray[np.int8],
             next_: npt.NDArray[np.int32], prev: npt.NDArray[np.int32],
             free_head: npt.NDArray[np.int32], nr_free: npt.NDArray[np.int64],
             zone: int, pfn: int, order: int) -> None:
    """__add_to_free_list(): push a free block at the head of its order's list."""
    head = free_head[zone, order]
    next_[pfn] = head
    prev[pfn] = NO_PAGE
    if head != NO_PAGE:
        prev[head] = pfn
    free_head[zone, order] = pfn
    nr_free[zone, order] += 1
    flags[pfn] |= _BUDDY
    order_of[pfn] = order


@compiled(entry=LISTS + " i i i", inline=True)
def list_del(flags: npt.NDArray[np.uint16], order_of: npt.NDArray[np.int8],
             next_: npt.NDArray[np.int32], prev: npt.NDArray[np.int32],
             free_head: npt.NDArray[np.int32], nr_free: npt.NDArray[np.int64],
             zone: int, pfn: int, order: int) -> None:
    """__del_page_from_free_list()."""
    nxt = next_[pfn]
    prv = prev[pfn]
    if prv != NO_PAGE:
        next_[prv] = nxt
    else:
        free_head[zone, order] = nxt
    if nxt != NO_PAGE:
        prev[nxt] = prv
    next_[pfn] = NO_PAGE
    prev[pfn] = NO_PAGE
    nr_free[zone, order] -= 1
    flags[pfn] &= np.uint16(0xFFFE)
    order_of[pfn] = 0


@compiled(entry=LISTS + " i i", result="i", inline=True)
def rmqueue_smallest(flags: npt.NDArray[np.uint16], order_of: npt.NDArray[np.int8],
                     next_: npt.NDArray[np.int32], prev: npt.NDArray[np.int32],
                     free_head: npt.NDArray[np.int32], nr_free: npt.NDArray[np.int64],
                     zone: int, order: int) -> int:
    """__rmqueue_smallest() + expand(): the first block of the smallest order that fits."""
    for current in range(order, MAX_PAGE_ORDER + 1):
        pfn = free_head[zone, current]
        if pfn == NO_PAGE:
            continue
        list_del(flags, order_of, next_, prev, free_head, nr_free, zone, pfn, current)
        high = current
        size = 1 << current
        while high > order:  # expand(): the upper halves go back to the lower lists
            high -= 1
            size >>= 1
            list_add(flags, order_of, next_, prev, free_head, nr_free, zone, pfn + size, high)
        return int(pfn)
    return NO_PAGE


@compiled(entry=LISTS + " q1 q1 i i i")
def free_one_page(flags: npt.NDArray[np.uint16], order_of: npt.NDArray[np.int8],
                  next_: npt.NDArray[np.int32], prev: npt.NDArray[np.int32],
                  free_head: npt.NDArray[np.int32], nr_free: npt.NDArray[np.int64],
                  zone_start: npt.NDArray[np.int64], zone_end: npt.NDArray[np.int64],
                  zone: int, pfn: int, order: int) -> None:
    """__free_one_page(): merge with free buddies up to MAX_PAGE_ORDER, then list_add."""
    while order < MAX_PAGE_ORDER:
        buddy = pfn ^ (1 << order)
        if buddy < zone_start[zone] or buddy + (1 << order) > zone_end[zone]:
            break
        if not (flags[buddy] & _BUDDY) or order_of[buddy] != order:
            break
        list_del(flags, order_of, next_, prev, free_head, nr_free, zone, buddy, order)
        pfn = min(pfn, buddy)
        order += 1
    list_add(flags, order_of, next_, prev, free_head, nr_free, zone, pfn, order)


@compiled(entry="PageArrays VmStatArrays i i", result="i", inline=True)
def alloc_pages_zone(pages: PageArrays, vmstat: VmStatArrays, zone: int, order: int) -> int:
    """rmqueue() from one zone + post_alloc_hook(): a block of 2**order pages with one
    reference, or NO_PAGE."""
    pfn = rmqueue_smallest(pages.flags, pages.order, pages.next, pages.prev, pages.free_head,
                           pages.nr_free, zone, order)
    if pfn == NO_PAGE:
        return NO_PAGE
    vmstat.node[NodeStat.NR_FREE_PAGES] -= 1 << order
    vmstat.events[VmEvent.PGALLOC_DMA + zone] += 1 << order
    pages.refcount[pfn] = 1              # set_page_refcounted()
    return pfn


@compiled(entry="PageArrays VmStatArrays i", result="i", inline=True)
def alloc_pages(pages: PageArrays, vmstat: VmStatArrays, order: int) -> int:
    """__alloc_pages() for GFP_HIGHUSER_MOVABLE / GFP_PGTABLE_USER over the zonelist."""
    for zone in pages.zonelist:
        pfn = alloc_pages_zone(pages, vmstat, zone, order)
        if pfn != NO_PAGE:
            return pfn
    return NO_PAGE


@compiled(entry="KernelArrays i", result="i", inline=True)
def folio_alloc(ka: KernelArrays, order: int) -> int:
    """vma_alloc_folio()/folio_prealloc(): a zeroed folio of 2**order pages (prep_compound_page
    for order > 0; __GFP_ZERO: an unstored frame reads as zeros), or NO_PAGE."""
    pages = ka.pages
    pfn = alloc_pages(pages, ka.vmstat, order)
    if pfn == NO_PAGE:
        return NO_PAGE
    if order:
        pages.flags[pfn] |= _HEAD
        pages.order[pfn] = order
        for tail in range(pfn + 1, pfn + (1 << order)):
            pages.flags[tail] |= _TAIL
            pages.head[tail] = pfn
    frame_drop_range(ka.phys, pfn, 1 << order)
    return pfn


@compiled(entry="PageArrays VmStatArrays q1")
def free_pages_bulk(pages: PageArrays, vmstat: VmStatArrays, pfns: npt.NDArray[np.int64]) -> None:
    """free_unref_folios() for many order-0 pages, freed in the given order."""
    for i in range(pfns.shape[0]):
        free_pages(pages, vmstat, pfns[i], 0)


@compiled(entry="PageArrays VmStatArrays i i")
def free_pages(pages: PageArrays, vmstat: VmStatArrays, pfn: int, order: int) -> None:
    """__free_pages() after the last reference: clear the struct pages, PGFREE, then
    __free_one_page() into the zone holding ``pfn``."""
    for page in range(pfn, pfn + (1 << order)):
        pages.flags[page] = 0
        pages.refcount[page] = 0
        pages.mapcount[page] = 0
        pages.order[page] = 0
        pages.head[page] = NO_PAGE
    vmstat.events[VmEvent.PGFREE] += 1 << order
    zone = 0
    while pfn >= pages.zone_end[zone]:
        zone += 1
    free_one_page(pages.flags, pages.order, pages.next, pages.prev, pages.free_head,
                  pages.nr_free, pages.zone_start, pages.zone_end, zone, pfn, order)
    vmstat.node[NodeStat.NR_FREE_PAGES] += 1 << order


class BuddyAllocator:
    """The zones of one node and their free areas; owner of MemMap and NR_FREE_PAGES."""

    def __init__(self, nr_frames: int, memmap: MemMap, node_stat: npt.NDArray[np.int64],
                 vm_events: npt.NDArray[np.int64]) -> None:
        self.nr_frames = nr_frames
        self.memmap = memmap
        self.node_stat = node_stat
        self.vm_events = vm_events
        starts, ends = [], []
        lo = 0
        for limit in ZONE_LIMITS:
            hi = min(limit >> 12, nr_frames)
            starts.append(lo)
            ends.append(max(lo, hi))
            lo = max(lo, hi)
        self.zone_start: npt.NDArray[np.int64] = np.array(starts, dtype=np.int64)
        self.zone_end: npt.NDArray[np.int64] = np.array(ends, dtype=np.int64)
        self.free_head: npt.NDArray[np.int32] = np.full((len(ZONE_NAMES), NR_PAGE_ORDERS),
                                                        NO_PAGE, dtype=np.int32)
        self.nr_free: npt.NDArray[np.int64] = np.zeros((len(ZONE_NAMES), NR_PAGE_ORDERS),
                                                       dtype=np.int64)
        self.managed_pages: npt.NDArray[np.int64] = np.zeros(len(ZONE_NAMES), dtype=np.int64)
        zonelist = np.array(self.zonelist(), dtype=np.int64)
        self.arrays = PageArrays(memmap.flags, memmap.order, memmap.refcount, memmap.mapcount,
                                 memmap.head, memmap.next, memmap.prev, self.free_head,
                                 self.nr_free, self.zone_start, self.zone_end, zonelist)
        self.vmstat = VmStatArrays(node_stat, vm_events)

    # -- zones -----------------------------------------------------------------------------
    def zone_of(self, pfn: int) -> int:
        for zone in range(len(ZONE_NAMES)):
            if pfn < self.zone_end[zone]:
                return zone
        raise ValueError(f"pfn {pfn:#x} beyond the end of memory")

    def populated_zones(self) -> list[int]:
        return [z for z in range(len(ZONE_NAMES)) if self.zone_end[z] > self.zone_start[z]]

    def zonelist(self) -> list[int]:
        """Allocation fallback order for GFP_HIGHUSER_MOVABLE: Normal, DMA32, DMA."""
        return list(reversed(self.populated_zones()))

    # -- boot --------------------------------------------------------------------------------
    def free_boot_memory(self, reserved: npt.NDArray[np.bool_]) -> None:
        """memblock_free_all(): hand every frame not reserved to the buddy allocator,
        in the largest naturally aligned blocks (__free_pages_core)."""
        mm = self.memmap
        mm.flags[reserved] |= np.uint16(PageFlag.RESERVED)
        for zone in self.populated_zones():
            pfn, end = int(self.zone_start[zone]), int(self.zone_end[zone])
            while pfn < end:
                if reserved[pfn]:
                    pfn += 1
                    continue
                order = MAX_PAGE_ORDER
                while order and (pfn & ((1 << order) - 1) or pfn + (1 << order) > end
                                 or reserved[pfn: pfn + (1 << order)].any()):
                    order -= 1
                self.managed_pages[zone] += 1 << order
                self._free(zone, pfn, order)
                pfn += 1 << order

    # -- allocation ---------------------------------------------------------------------------
    def alloc_pages(self, order: int) -> int:
        """__alloc_pages() for GFP_HIGHUSER_MOVABLE / GFP_PGTABLE_USER: a pfn or NO_PAGE."""
        return int(alloc_pages(self.arrays, self.vmstat, order))

    def alloc_pages_zone(self, zone: int, order: int) -> int:
        return int(alloc_pages_zone(self.arrays, self.vmstat, zone, order))

    def free_pages(self, pfn: int, order: int) -> None:
        """__free_pages(): the caller dropped the last reference."""
        free_pages(self.arrays, self.vmstat, pfn, order)

    def free_pages_bulk(self, pfns: npt.NDArray[np.int64]) -> None:
        """free_unref_folios() for many order-0 pages, freed in the given order."""
        if pfns.size == 0:
            return
        free_pages_bulk(self.arrays, self.vmstat, pfns.astype(np.int64, copy=False))

    def _free(self, zone: int, pfn: int, order: int) -> None:
        mm = self.memmap
        free_one_page(mm.flags, mm.order, mm.next, mm.prev, self.free_head, self.nr_free,
                      self.zone_start, self.zone_end, zone, pfn, order)
        self.node_stat[NodeStat.NR_FREE_PAGES] += 1 << order

    # -- views ------------------------------------------------------------------------------
    def free_blocks(self, zone: int) -> list[int]:
        """Free blocks per order in ``zone`` (/proc/buddyinfo)."""
        return [int(x) for x in self.nr_free[zone]]

    def free_pages_total(self) -> int:
        return int(sum(int(self.nr_free[z, o]) << o for z in range(len(ZONE_NAMES))
                       for o in range(NR_PAGE_ORDERS)))


# -- watermarks and lowmem reserves ------------------------------------------------------------

PAGE_KB = 4
PAGEBLOCK_NR_PAGES = 512            # pageblock_order 9
MIGRATE_PCPTYPES = 3                # Unmovable, Movable, Reclaimable
WATERMARK_SCALE_FACTOR = 10         # vm.watermark_scale_factor default
LOWMEM_RESERVE_RATIO = (256, 256, 32)  # sysctl_lowmem_reserve_ratio: DMA, DMA32, Normal


@dataclass(frozen=True, slots=True)
class Watermarks:
    """zone->_watermark[WMARK_MIN/LOW/HIGH] of one zone, in pages."""

    min: int
    low: int
    high: int


def min_free_kbytes(k: Kernel) -> int:
    """vm.min_free_kbytes as the kernel sets it without a user value.

    calculate_min_free_kbytes(): ``int_sqrt(lowmem_kbytes * 16)`` clamped to
    [128, 262144]; then, while PMD-sized THPs are enabled, khugepaged's
    set_recommended_min_free_kbytes() raises it to 2 + 3*3 pageblocks per zone (at most
    5% of lowmem). Approximation: lowmem_kbytes is the managed memory (the kernel's
    nr_free_buffer_pages() also subtracts the high watermarks once they exist).
    """
    lowmem_pages = k.totalram_pages
    calculated = min(max(isqrt(lowmem_pages * PAGE_KB * 16), 128), 262144)
    if not _hugepage_pmd_enabled(k):
        return calculated
    nr_zones = len(k.buddy.populated_zones())
    recommended = PAGEBLOCK_NR_PAGES * nr_zones * (2 + MIGRATE_PCPTYPES * MIGRATE_PCPTYPES)
    recommended = min(recommended, lowmem_pages // 20) * PAGE_KB
    return max(calculated, recommended)


def _hugepage_pmd_enabled(k: Kernel) -> bool:
    """hugepage_pmd_enabled() (mm/khugepaged.c) for anonymous memory: the 2 MiB size is
    always/madvise, or inherits a global setting other than never."""
    thp = "/sys/kernel/mm/transparent_hugepage"
    pmd_setting = k.knobs.get(f"{thp}/hugepages-2048kB/enabled")
    if pmd_setting in ("always", "madvise"):
        return True
    return pmd_setting == "inherit" and k.knobs.get(f"{thp}/enabled") != "never"


def zone_watermarks(k: Kernel) -> list[Watermarks]:
    """__setup_per_zone_wmarks(): min_free_kbytes shared out by managed pages; low and high
    each one step above, the step max(min/4, managed * watermark_scale_factor / 10000)."""
    managed = [int(pages) for pages in k.buddy.managed_pages]
    lowmem_pages = sum(managed)
    pages_min = min_free_kbytes(k) // PAGE_KB
    marks = []
    for zone_pages in managed:
        zone_min = pages_min * zone_pages // lowmem_pages if lowmem_pages else 0
        step = max(zone_min >> 2, _mult_frac(zone_pages, WATERMARK_SCALE_FACTOR, 10000))
        marks.append(Watermarks(zone_min, zone_min + step, zone_min + 2 * step))
    return marks


def lowmem_reserve(k: Kernel, zone: int) -> int:
    """setup_per_zone_lowmem_reserve(): what ``zone`` keeps back from an allocation that
    could have used a higher zone (GFP_HIGHUSER_MOVABLE): the pages managed above it over
    its sysctl_lowmem_reserve_ratio (the largest of its lowmem_reserve[])."""
    managed = [int(pages) for pages in k.buddy.managed_pages]
    ratio = LOWMEM_RESERVE_RATIO[zone]
    return sum(managed[zone + 1:]) // ratio if ratio and managed[zone] else 0


def zone_watermark_ok(k: Kernel, zone: int, order: int, mark: int) -> bool:
    """__zone_watermark_ok() without reserves: the zone's free pages less the request's
    (1 << order) - 1 stay above ``mark`` plus its lowmem reserve, and a free block of at
    least ``order`` exists."""
    free_pages = int(sum(int(k.buddy.nr_free[zone, o]) << o for o in range(NR_PAGE_ORDERS)))
    if free_pages - ((1 << order) - 1) <= mark + lowmem_reserve(k, zone):
        return False
    return any(k.buddy.nr_free[zone, o] for o in range(order, NR_PAGE_ORDERS))


def _mult_frac(value: int, numerator: int, denominator: int) -> int:
    """mult_frac() (include/linux/math.h): value * n / d without overflowing."""
    quotient, remainder = divmod(value, denominator)
    return quotient * numerator + remainder * numerator // denominator
