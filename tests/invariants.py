"""Invariants of a running pagewalk machine, checked from the state the kernel keeps.

Every checker here recounts from the page tables themselves: it walks each live mm
from its PGD (user half, entries 0..255) down through the real 64-bit entries in
simulated physical memory, and compares what it finds with the counters the kernel
bumped at the point of change (STYLE rule 5). The rules are the kernel's own:

* RSS (include/linux/mm.h add_mm_counter): RssAnon counts present PTEs of anonymous
  pages plus HPAGE_PMD_NR per PMD-mapped THP; the zero page and the huge zero page are
  special and never counted; RssShmem and RssFile likewise; hugetlb counts only in
  mm->hugetlb_usage.
* VmPTE (mm_inc_nr_ptes/pmds/puds): PUD, PMD and PTE tables reachable from the PGD plus
  the PTE table deposited under every huge PMD (pgtable_trans_huge_deposit).
  NR_PAGETABLE adds the PGD pages (1, or 2 with PTI) and any P4D tables.
* The buddy allocator (mm/page_alloc.c): free blocks are aligned, inside their zone,
  never overlap, and add up to NR_FREE_PAGES; no free frame is mapped or a table.
* rmap (mm/rmap.c): mapcounts equal the PTE mappings, entire mapcounts the PMD
  mappings, an anonymous folio holds one reference per mapping, a page-cache folio one
  more for the cache; NR_ANON_MAPPED counts anonymous pages mapped at least once.
* hugetlb (mm/hugetlb.c): resv <= free <= total, surplus <= total, pages in use plus
  free pages make the pool, reservations equal what the reservation maps still hold.
* Teardown (kernel/exit.c, exit_mmap): with every task gone, only what is cached by
  design stays allocated: the program's page cache, the huge zero page, hugetlb pools.

``check_machine`` runs them all; ``check_all_freed`` is the teardown rule;
``observable_state`` is what a failed system call must leave unchanged.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from pagewalk.hw import pgtable_types as pt
from pagewalk.mm.page_alloc import NO_PAGE, NR_PAGE_ORDERS, ZONE_NAMES, PageFlag
from pagewalk.mm.pgtable import USER_PGD_ENTRIES
from pagewalk.mm.types import MmStat, MmStruct
from pagewalk.mm.vmstat import NodeStat, VmEvent

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel
    from pagewalk.kernel.task import Task

PAGE_SHIFT = 12
TABLE_BYTES = 4096
PMD_SHIFT = 21
HPAGE_PMD_NR = 512
KERNEL_STACK_PAGES = 4                       # THREAD_SIZE 16 KiB, order 2
MAPS_A_PAGE = pt._PAGE_PRESENT | pt._PAGE_PROTNONE   # pte_present(): PROT_NONE still maps
TLB_FLUSH_EVENTS = (VmEvent.TLB_FLUSH_ALL, VmEvent.TLB_FLUSH_ONE)
# Events a failed call may still count, as the kernel does: allocation attempts whose
# pages went straight back (gather_surplus_pages) and TLB flushes.
ATTEMPT_EVENTS = TLB_FLUSH_EVENTS + (
    VmEvent.PGALLOC_DMA, VmEvent.PGALLOC_DMA32, VmEvent.PGALLOC_NORMAL, VmEvent.PGFREE,
    VmEvent.HTLB_BUDDY_ALLOC_SUCCESS, VmEvent.HTLB_BUDDY_ALLOC_FAIL,
)


# --- walking the page tables ---------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Leaf:
    """One leaf entry that maps memory: a 4 KiB PTE, a 2 MiB PMD or a 1 GiB PUD."""

    vaddr: int
    shift: int          # 12, 21 or 30
    entry_paddr: int
    entry: int

    @property
    def pfn(self) -> int:
        if self.shift == PAGE_SHIFT:
            return pt.pte_pfn(self.entry)
        return pt.huge_pfn(self.entry, self.shift)

    @property
    def nr_pages(self) -> int:
        return 1 << (self.shift - PAGE_SHIFT)


@dataclass(slots=True, eq=False)
class MmWalk:
    """Everything reachable from one mm's PGD user half."""

    task: Task
    mm: MmStruct
    tables: list[tuple[int, int]] = field(default_factory=list)  # (pfn, shift its entries map)
    leaves: list[Leaf] = field(default_factory=list)


def live_tasks(k: Kernel) -> list[Task]:
    return list(k.tasks.values())


def walk_mm(k: Kernel, task: Task) -> MmWalk:
    """Walk ``task.mm`` from the PGD: every table below it and every leaf that maps.

    Asserts the shape on the way: a non-leaf entry is a present _PAGE_TABLE entry, a
    leaf is present or PROT_NONE (pagewalk has no swap or migration entries)."""
    result = MmWalk(task, task.mm)
    shifts = k.pgtables.shifts

    def visit(table_pfn: int, level: int, base: int) -> None:
        shift = shifts[level]
        words = k.physmem.frame_words(table_pfn)
        if level == 0:
            words = words[:USER_PGD_ENTRIES]
        for index in np.flatnonzero(words):
            entry = int(words[index])
            vaddr = base | (int(index) << shift)
            paddr = (table_pfn << PAGE_SHIFT) + int(index) * 8
            if shift == PAGE_SHIFT or entry & pt._PAGE_PSE:
                assert entry & MAPS_A_PAGE, (
                    f"{task.comm}: leaf {entry:#x} at {vaddr:#x} is neither present nor PROT_NONE")
                result.leaves.append(Leaf(vaddr, shift, paddr, entry))
                continue
            assert entry & pt._PAGE_TABLE == pt._PAGE_TABLE, (
                f"{task.comm}: table entry {entry:#x} at {vaddr:#x} (shift {shift}) is not "
                f"a _PAGE_TABLE entry")
            child = pt.pte_pfn(entry)
            result.tables.append((child, shifts[level + 1]))
            visit(child, level + 1, vaddr)

    visit(task.mm.pgd_pfn, 0, 0)
    return result


def walk_all(k: Kernel) -> list[MmWalk]:
    return [walk_mm(k, task) for task in live_tasks(k)]


def table_words(k: Kernel, walk: MmWalk) -> tuple[tuple[int, bytes], ...]:
    """The words of every table of one mm, PGD user half first, in walk order."""
    pgd = k.physmem.frame_words(walk.mm.pgd_pfn)[:USER_PGD_ENTRIES].tobytes()
    return ((walk.mm.pgd_pfn, pgd),) + tuple(
        (pfn, k.physmem.frame_words(pfn).tobytes()) for pfn, _ in walk.tables)


# --- what a leaf maps ----------------------------------------------------------------------

def is_hugetlb_leaf(k: Kernel, leaf: Leaf) -> bool:
    return leaf.shift > PAGE_SHIFT and bool(k.memmap.flags[leaf.pfn] & PageFlag.HUGETLB)


def is_huge_zero_leaf(k: Kernel, leaf: Leaf) -> bool:
    return leaf.shift == PMD_SHIFT and k.huge_zero_pfn != NO_PAGE and leaf.pfn == k.huge_zero_pfn


def is_thp_leaf(k: Kernel, leaf: Leaf) -> bool:
    """A PMD leaf of an anonymous THP (not hugetlb, not the huge zero page)."""
    return leaf.shift == PMD_SHIFT and not is_hugetlb_leaf(k, leaf) and not is_huge_zero_leaf(k, leaf)


def rss_counter_of_page(k: Kernel, pfn: int) -> MmStat:
    """mm_counter(): which RSS counter a mapped 4 KiB page counts in."""
    flags = int(k.memmap.flags[pfn])
    if flags & PageFlag.ANON:
        return MmStat.MM_ANONPAGES
    if flags & PageFlag.SHMEM:
        return MmStat.MM_SHMEMPAGES
    assert flags & PageFlag.FILE, f"mapped page {pfn:#x} is neither anon, shmem nor file"
    return MmStat.MM_FILEPAGES


def count_rss(k: Kernel, walk: MmWalk) -> Counter[MmStat]:
    """RSS and hugetlb usage recounted from the leaves of one mm."""
    counts: Counter[MmStat] = Counter()
    for leaf in walk.leaves:
        if leaf.shift == PAGE_SHIFT:
            if leaf.entry & pt._PAGE_SPECIAL:
                assert leaf.pfn == k.zero_pfn, (
                    f"special PTE at {leaf.vaddr:#x} maps {leaf.pfn:#x}, not the zero page")
                continue
            counts[rss_counter_of_page(k, leaf.pfn)] += 1
        elif is_hugetlb_leaf(k, leaf):
            counts[MmStat.HUGETLB_USAGE] += leaf.nr_pages
        elif is_huge_zero_leaf(k, leaf):
            continue
        else:
            assert leaf.shift == PMD_SHIFT, f"PUD leaf at {leaf.vaddr:#x} that is not hugetlb"
            head = leaf.pfn
            flags = int(k.memmap.flags[head])
            assert flags & PageFlag.ANON and flags & PageFlag.HEAD and k.memmap.order[head] == 9, (
                f"PMD leaf at {leaf.vaddr:#x} maps {head:#x}, not the head of an anon THP")
            counts[MmStat.MM_ANONPAGES] += HPAGE_PMD_NR
    return counts


# --- per-mm checks -------------------------------------------------------------------------

def check_rss(k: Kernel, walk: MmWalk, hugetlb: bool = True) -> None:
    """RssAnon, RssFile, RssShmem and HugetlbPages equal what the page tables map. Once PMD
    tables were shared, HugetlbPages counts the faults each mm took instead (a sharer adds
    none, an unsharer takes none away): ``hugetlb=False`` leaves it out."""
    counts = count_rss(k, walk)
    items = (MmStat.MM_ANONPAGES, MmStat.MM_FILEPAGES, MmStat.MM_SHMEMPAGES)
    for item in items + ((MmStat.HUGETLB_USAGE,) if hugetlb else ()):
        kept = int(walk.mm.stat[item])
        assert kept == counts[item], (
            f"{walk.task.comm}: {item.name} is {kept} pages, the page tables map {counts[item]}")


def thp_deposits(k: Kernel, walk: MmWalk) -> list[int]:
    """The deposited PTE tables under this mm's huge PMDs (THP and huge zero page)."""
    deposits = []
    for leaf in walk.leaves:
        if leaf.shift == PMD_SHIFT and not is_hugetlb_leaf(k, leaf):
            assert leaf.entry_paddr in k.deposit, (
                f"{walk.task.comm}: huge PMD at {leaf.vaddr:#x} has no deposited PTE table")
            deposits.append(k.deposit[leaf.entry_paddr])
    return deposits


def check_vmpte(k: Kernel, walk: MmWalk) -> None:
    """VmPTE = 4 KiB x (PUD + PMD + PTE tables reachable + deposited tables)."""
    counted = [pfn for pfn, shift in walk.tables if shift <= 30]   # P4D tables: no counter
    expected = TABLE_BYTES * (len(counted) + len(thp_deposits(k, walk)))
    kept = int(walk.mm.stat[MmStat.PGTABLES_BYTES])
    assert kept == expected, (
        f"{walk.task.comm}: VmPTE {kept} bytes, the page tables need {expected}")


def check_pgd(k: Kernel, walk: MmWalk) -> None:
    """The PGD's kernel half is swapper_pg_dir's; with PTI the user PGD mirrors the user
    half (the kernel copy of a present user entry carries NX: __pti_set_user_pgtbl)."""
    words = k.physmem.frame_words(walk.mm.pgd_pfn)
    kernel_half = {int(i): int(words[i]) for i in np.flatnonzero(words[USER_PGD_ENTRIES:])
                   + USER_PGD_ENTRIES}
    assert kernel_half == k.pgtables.kernel_pgd_entries, (
        f"{walk.task.comm}: the PGD's kernel half differs from swapper_pg_dir")
    if walk.mm.pgd_order:
        user = k.physmem.frame_words(walk.mm.pgd_pfn + 1)
        for index in range(USER_PGD_ENTRIES):
            expected = int(user[index])
            if expected & pt._PAGE_PRESENT:
                expected |= pt._PAGE_NX
            assert int(words[index]) == expected, (
                f"{walk.task.comm}: PTI PGD entry {index} differs between the two PGDs")


# --- the buddy allocator -------------------------------------------------------------------

def free_frames(k: Kernel) -> npt.NDArray[np.bool_]:
    """Check the free lists and return the mask of free frames.

    Every list is walked: each block head is PageBuddy with its order, aligned to it and
    inside its zone; the lists hold exactly the PageBuddy frames; blocks never overlap;
    nr_free per order and NR_FREE_PAGES agree with them."""
    memmap, buddy = k.memmap, k.buddy
    nr_frames = k.physmem.nr_frames
    heads_seen: list[int] = []
    total = 0
    for zone in range(len(ZONE_NAMES)):
        lo, hi = int(buddy.zone_start[zone]), int(buddy.zone_end[zone])
        for order in range(NR_PAGE_ORDERS):
            pfn, prev, blocks = int(buddy.free_head[zone, order]), NO_PAGE, 0
            while pfn != NO_PAGE:
                assert memmap.flags[pfn] & PageFlag.BUDDY, f"free-list block {pfn:#x} not PageBuddy"
                assert memmap.order[pfn] == order, (
                    f"block {pfn:#x} on the order-{order} list has order {memmap.order[pfn]}")
                assert pfn % (1 << order) == 0, f"order-{order} block {pfn:#x} misaligned"
                assert lo <= pfn and pfn + (1 << order) <= hi, f"block {pfn:#x} outside its zone"
                assert memmap.prev[pfn] == prev, f"free-list prev link broken at {pfn:#x}"
                heads_seen.append(pfn)
                blocks += 1
                assert blocks <= nr_frames, "free list has a cycle"
                prev, pfn = pfn, int(memmap.next[pfn])
            assert blocks == buddy.nr_free[zone, order], (
                f"zone {ZONE_NAMES[zone]} order {order}: {blocks} blocks listed, "
                f"nr_free says {buddy.nr_free[zone, order]}")
            total += blocks << order
    buddy_flagged = np.flatnonzero(memmap.flags & np.uint16(PageFlag.BUDDY))
    assert sorted(heads_seen) == buddy_flagged.tolist(), (
        "PageBuddy frames and free-list blocks differ")
    coverage = np.zeros(nr_frames + 1, dtype=np.int32)
    heads = np.array(heads_seen, dtype=np.int64)
    sizes = np.left_shift(1, memmap.order[heads].astype(np.int64)) if heads.size else heads
    np.add.at(coverage, heads, 1)
    np.add.at(coverage, heads + sizes, -1)
    covered = np.cumsum(coverage)[:nr_frames]
    assert covered.max(initial=0) <= 1, (
        f"free blocks overlap at {np.flatnonzero(covered > 1)[:4].tolist()}")
    assert total == int(k.node_stat[NodeStat.NR_FREE_PAGES]) == buddy.free_pages_total(), (
        f"free lists hold {total} pages, NR_FREE_PAGES {k.node_stat[NodeStat.NR_FREE_PAGES]}, "
        f"free_pages_total() {buddy.free_pages_total()}")
    return covered == 1


# --- frames, references and mapcounts -------------------------------------------------------

def page_cache_files(k: Kernel) -> list[Any]:
    """The page-cache inodes that hold pages: the program, the vdso, and the shmem and
    hugetlb inodes of live mappings (an inode without mappings has been truncated)."""
    files: dict[int, Any] = {}
    files[id(k.program_file)] = k.program_file
    files[id(k.vdso_file)] = k.vdso_file
    for task in live_tasks(k):
        for vma in task.mm.vmas:
            if vma.file is not None and getattr(vma.file, "pages", None):
                files[id(vma.file)] = vma.file
    return list(files.values())


def check_frames(k: Kernel, walks: list[MmWalk], free: npt.NDArray[np.bool_]) -> None:
    """No frame is both free and in use; each table frame is used once, is PG_table and
    never mapped as data."""
    memmap = k.memmap
    table_use = Counter[int]()
    for walk in walks:
        for i in range(1 << walk.mm.pgd_order):
            table_use[walk.mm.pgd_pfn + i] += 1
        for pfn, _ in walk.tables:
            table_use[pfn] += 1
    for pfn in k.deposit.values():
        table_use[pfn] += 1
    # a shared hugetlb PMD table is reached once from each mm pointing at it (huge_pmd_share)
    shares = k.pgtables.pmd_share_count
    wrong = [pfn for pfn, uses in table_use.items() if uses != 1 + shares.get(pfn, 0)]
    assert not wrong, (f"table frames used a number of times other than their sharers: "
                       f"{[(pfn, table_use[pfn], shares.get(pfn, 0)) for pfn in wrong[:4]]}")
    gone = sorted(set(shares) - set(table_use))
    assert not gone, f"share counts of tables no mm reaches: {gone[:4]}"
    tables = np.array(sorted(table_use), dtype=np.int64)
    assert not free[tables].any(), f"free table frames: {tables[free[tables]][:4].tolist()}"
    not_ctor = tables[(memmap.flags[tables] & np.uint16(PageFlag.TABLE)) == 0]
    assert not not_ctor.size, f"table frames without PG_table: {not_ctor[:4].tolist()}"

    data = np.zeros(k.physmem.nr_frames, dtype=np.bool_)
    for walk in walks:
        for leaf in walk.leaves:
            if not leaf.entry & pt._PAGE_SPECIAL or leaf.shift > PAGE_SHIFT:
                data[leaf.pfn: leaf.pfn + leaf.nr_pages] = True
        data[walk.task.stack_pfn: walk.task.stack_pfn + KERNEL_STACK_PAGES] = True
    for file in page_cache_files(k):
        size = getattr(file, "huge_size", 4096) >> PAGE_SHIFT
        for pfn in file.pages.values():
            data[pfn: pfn + size] = True
    for h in k.hugetlb.hstates.values():
        for pfn in h.free_list:
            data[pfn: pfn + h.pages_per_huge_page] = True
    if k.huge_zero_pfn != NO_PAGE:
        data[k.huge_zero_pfn: k.huge_zero_pfn + HPAGE_PMD_NR] = True
    both = np.flatnonzero(data & free)
    assert not both.size, f"frames both free and in use: {both[:4].tolist()}"
    as_data = tables[data[tables]]
    assert not as_data.size, f"table frames also mapped or cached as data: {as_data[:4].tolist()}"


def folio_head_of(k: Kernel, pfns: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """page_folio() for many pages at once (memmap.head is -1 for a head or order-0 page)."""
    heads = k.memmap.head[pfns].astype(np.int64)
    return np.where(heads < 0, pfns, heads)


def check_rmap(k: Kernel, walks: list[MmWalk]) -> None:
    """Mapcounts, entire mapcounts, references, NR_ANON_MAPPED and NR_ANON_THPS."""
    memmap = k.memmap
    nr_frames = k.physmem.nr_frames
    pte_pfns = [leaf.pfn for walk in walks for leaf in walk.leaves
                if leaf.shift == PAGE_SHIFT and not leaf.entry & pt._PAGE_SPECIAL]
    pte_maps = np.bincount(np.array(pte_pfns, dtype=np.int64), minlength=nr_frames)
    wrong = np.flatnonzero(pte_maps != memmap.mapcount)
    assert not wrong.size, (
        f"mapcount differs from the PTE mappings at {wrong[:4].tolist()}: kept "
        f"{memmap.mapcount[wrong[:4]].tolist()}, mapped {pte_maps[wrong[:4]].tolist()}")

    pmd_maps = Counter(leaf.pfn for walk in walks for leaf in walk.leaves if is_thp_leaf(k, leaf))
    entire = {head: count for head, count in k.entire_mapcount.items() if count}
    assert entire == dict(pmd_maps), f"entire mapcounts {entire} but PMD mappings {dict(pmd_maps)}"

    # References: an anonymous folio holds one per mapping; a page-cache folio one more.
    mapped = np.flatnonzero(pte_maps)
    heads = folio_head_of(k, mapped)
    refs_needed = Counter[int]()
    for head, nr in zip(heads.tolist(), pte_maps[mapped].tolist()):
        refs_needed[head] += nr
    for head, nr in pmd_maps.items():
        refs_needed[head] += nr
    for head, nr in refs_needed.items():
        cached = 0 if memmap.flags[head] & PageFlag.ANON else 1
        assert memmap.refcount[head] == nr + cached, (
            f"folio {head:#x} ({PageFlag(int(memmap.flags[head]))!r}) has refcount "
            f"{memmap.refcount[head]}, {nr} mappings + {cached} cache reference")

    anon = (memmap.flags & np.uint16(PageFlag.ANON)) != 0
    anon_mapped = int(np.count_nonzero(anon & (memmap.mapcount > 0)))
    for head in pmd_maps:
        anon_mapped += HPAGE_PMD_NR - int(np.count_nonzero(memmap.mapcount[head: head + HPAGE_PMD_NR]))
    assert int(k.node_stat[NodeStat.NR_ANON_MAPPED]) == anon_mapped, (
        f"NR_ANON_MAPPED {k.node_stat[NodeStat.NR_ANON_MAPPED]}, pages mapped {anon_mapped}")
    assert int(k.node_stat[NodeStat.NR_ANON_THPS]) == HPAGE_PMD_NR * len(pmd_maps), (
        f"NR_ANON_THPS {k.node_stat[NodeStat.NR_ANON_THPS]}, PMD-mapped THPs {len(pmd_maps)}")


# --- hugetlb -------------------------------------------------------------------------------

def check_hugetlb(k: Kernel, walks: list[MmWalk]) -> None:
    """Pool counters of every hstate add up with what is mapped, cached and reserved."""
    # one mapping per entry: a shared PMD table's leaves are reached from every sharer
    entries = {leaf.entry_paddr: leaf for walk in walks for leaf in walk.leaves
               if is_hugetlb_leaf(k, leaf)}
    mapped = Counter(leaf.pfn for leaf in entries.values())
    hugetlb_files = {id(vma.file): vma.file for task in live_tasks(k) for vma in task.mm.vmas
                     if vma.is_hugetlb()}
    resv_maps = {id(f.resv): (f.hstate, f.resv) for f in hugetlb_files.values()}
    for h in k.hugetlb.hstates.values():
        name = h.name
        assert 0 <= h.free_huge_pages <= h.nr_huge_pages, f"{name}: free > total"
        assert h.resv_huge_pages <= h.free_huge_pages, f"{name}: reserved > free"
        assert 0 <= h.surplus_huge_pages <= h.nr_huge_pages, f"{name}: surplus > total"
        assert len(h.free_list) == len(set(h.free_list)) == h.free_huge_pages, (
            f"{name}: free list holds {len(h.free_list)} pages, free_huge_pages "
            f"{h.free_huge_pages}")
        for pfn in h.free_list:
            assert memmap_is_hugetlb_head(k, pfn, h.order), f"{name}: free page {pfn:#x} flags"
            assert k.memmap.refcount[pfn] == 0, f"{name}: free page {pfn:#x} has references"
        cached = {pfn for f in hugetlb_files.values() if f.hstate is h and f.shared
                  for pfn in f.pages.values()}
        in_use = {pfn for pfn in mapped if k.memmap.order[pfn] == min(h.order, 127)} | cached
        assert not in_use & set(h.free_list), f"{name}: pages both in use and free"
        assert len(in_use) + h.free_huge_pages == h.nr_huge_pages, (
            f"{name}: {len(in_use)} pages in use + {h.free_huge_pages} free != "
            f"{h.nr_huge_pages} total")
        for pfn in in_use:
            refs = mapped[pfn] + (pfn in cached)
            assert k.memmap.refcount[pfn] == refs, (
                f"{name}: page {pfn:#x} refcount {k.memmap.refcount[pfn]}, {refs} users")
        # A zapped page of its owner's private mapping is reserved again in the map at once
        # but raises resv_huge_pages only when freed (free_huge_folio): while another
        # process still maps it, the count trails the maps (and may wrap below zero).
        reserved = sum(len(resv.reserved) for hstate, resv in resv_maps.values() if hstate is h)
        pending = sum(1 for pfn in in_use if k.memmap.flags[pfn] & PageFlag.RESTORE_RESERVE)
        assert h.resv_huge_pages == reserved - pending, (
            f"{name}: resv_huge_pages {h.resv_huge_pages}, reservation maps hold {reserved}, "
            f"{pending} in-use pages will give one back when freed")
        assert h.resv_huge_pages >= 0 or pending, f"{name}: resv_huge_pages below zero"


def memmap_is_hugetlb_head(k: Kernel, pfn: int, order: int) -> bool:
    flags = int(k.memmap.flags[pfn])
    return bool(flags & PageFlag.HUGETLB and flags & PageFlag.HEAD
                and k.memmap.order[pfn] == min(order, 127))


# --- machine-wide ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Baseline:
    """Node counters of a freshly booted kernel, before any task exists."""

    free_pages: int
    pagetable_pages: int
    anon_mapped: int
    kernel_stack_kb: int
    committed_pages: int

    @classmethod
    def capture(cls, k: Kernel) -> Baseline:
        assert not k.tasks, "the baseline is taken right after boot"
        return cls(int(k.node_stat[NodeStat.NR_FREE_PAGES]),
                   int(k.node_stat[NodeStat.NR_PAGETABLE]),
                   int(k.node_stat[NodeStat.NR_ANON_MAPPED]),
                   int(k.node_stat[NodeStat.NR_KERNEL_STACK_KB]),
                   k.committed_pages)


def check_nr_pagetable(k: Kernel, walks: list[MmWalk], baseline: Baseline) -> None:
    """NR_PAGETABLE = boot tables + every PG_table frame, and every PG_table frame is a PGD,
    a table reachable from one, or a deposit (a table no PGD reaches has leaked)."""
    kept = int(k.node_stat[NodeStat.NR_PAGETABLE])
    table_frames = int(np.count_nonzero(k.memmap.flags & np.uint16(PageFlag.TABLE)))
    assert kept == baseline.pagetable_pages + table_frames, (
        f"NR_PAGETABLE {kept}, boot {baseline.pagetable_pages} + {table_frames} PG_table frames")
    in_use = len(k.deposit) + sum((1 << walk.mm.pgd_order) + len(walk.tables) for walk in walks)
    in_use -= sum(k.pgtables.pmd_share_count.values())    # shared PMD tables: one frame each
    assert table_frames == in_use, (
        f"{table_frames} PG_table frames, {in_use} reachable from a PGD or deposited: "
        f"{table_frames - in_use} leaked")


def check_deposits(k: Kernel, walks: list[MmWalk]) -> None:
    """Exactly the live huge PMDs (THP or huge zero page) have a deposited table."""
    huge_pmds = {leaf.entry_paddr for walk in walks for leaf in walk.leaves
                 if leaf.shift == PMD_SHIFT and not is_hugetlb_leaf(k, leaf)}
    missing = huge_pmds - set(k.deposit)
    assert not missing, f"huge PMDs without a deposited table: {sorted(missing)[:4]}"
    stale = set(k.deposit) - huge_pmds
    assert not stale, f"deposits under PMDs that are no longer huge: {sorted(stale)[:4]}"


def check_machine(k: Kernel, baseline: Baseline) -> list[MmWalk]:
    """Every invariant of this module; returns the walks for further checks."""
    walks = walk_all(k)
    for walk in walks:
        check_pgd(k, walk)
        check_rss(k, walk)
        check_vmpte(k, walk)
    check_deposits(k, walks)
    check_nr_pagetable(k, walks, baseline)
    free = free_frames(k)
    check_frames(k, walks, free)
    check_rmap(k, walks)
    check_hugetlb(k, walks)
    return walks


def cached_by_design(k: Kernel) -> int:
    """Pages that stay allocated with no task alive: the program file's and the vdso's
    page cache, the huge zero page once allocated, and the hugetlb pools."""
    pages = sum(len(f.pages) for f in page_cache_files(k))
    if k.huge_zero_pfn != NO_PAGE:
        pages += HPAGE_PMD_NR
    pages += k.hugetlb.total_pages()
    return pages


def check_all_freed(k: Kernel, baseline: Baseline) -> None:
    """With every task gone: free pages are back to boot minus what is cached by design,
    page tables and anonymous pages back to their boot values, nothing deposited or
    committed."""
    assert not k.tasks, f"tasks still alive: {sorted(k.tasks)}"
    check_machine(k, baseline)
    node = k.node_stat
    expected_free = baseline.free_pages - cached_by_design(k)
    assert int(node[NodeStat.NR_FREE_PAGES]) == expected_free, (
        f"NR_FREE_PAGES {node[NodeStat.NR_FREE_PAGES]} after every exit, expected "
        f"{expected_free}: {expected_free - int(node[NodeStat.NR_FREE_PAGES])} pages leaked")
    assert int(node[NodeStat.NR_PAGETABLE]) == baseline.pagetable_pages, "page tables leaked"
    assert int(node[NodeStat.NR_ANON_MAPPED]) == baseline.anon_mapped, "anon pages still mapped"
    assert int(node[NodeStat.NR_ANON_THPS]) == 0, "THPs still mapped"
    assert int(node[NodeStat.NR_KERNEL_STACK_KB]) == baseline.kernel_stack_kb, "stacks leaked"
    assert int(node[NodeStat.NR_SHMEM]) == 0, "shmem pages outlived their mappings"
    assert not k.deposit, "deposited tables outlived their PMDs"
    assert k.committed_pages == baseline.committed_pages, (
        f"Committed_AS {k.committed_pages} pages, boot {baseline.committed_pages}")
    mapcounted = np.flatnonzero(k.memmap.mapcount)
    assert not mapcounted.size, f"pages with a mapcount: {mapcounted[:4].tolist()}"


# --- what a failed system call must not change --------------------------------------------

def observable_state(k: Kernel) -> dict[str, object]:
    """What a failed system call must leave unchanged, by name: node counters, events (but
    allocation attempts and TLB flushes), hugetlb pools, commit charge, deposits, and per
    task its counters, VMAs as (start, end, flags) and every page-table word."""
    events = k.vm_events.copy()
    events[list(ATTEMPT_EVENTS)] = 0
    state: dict[str, object] = {
        "node_stat": tuple(k.node_stat.tolist()),
        "vm_events": tuple(events.tolist()),
        "hugetlb pools": tuple((h.nr_huge_pages, h.free_huge_pages, h.resv_huge_pages,
                                h.surplus_huge_pages) for h in k.hugetlb.hstates.values()),
        "committed_pages": k.committed_pages,
        "deposits": tuple(sorted(k.deposit.items())),
    }
    for walk in walk_all(k):
        mm, name = walk.mm, walk.task.comm
        state[f"{name} mm.stat"] = tuple(mm.stat.tolist())
        state[f"{name} VMAs"] = tuple((v.start, v.end, int(v.flags)) for v in mm.vmas)
        state[f"{name} total_vm"] = mm.total_vm
        state[f"{name} page tables"] = table_words(k, walk)
        state[f"{name} min_flt"] = walk.task.min_flt
    return state


def state_changes(before: dict[str, object], after: dict[str, object]) -> list[str]:
    """The names of the parts of ``observable_state`` that differ."""
    return sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))
