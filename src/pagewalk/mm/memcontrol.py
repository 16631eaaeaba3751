"""One memory cgroup with a limit (mm/memcontrol.c, mm/memcontrol-v1.c): ``system.memory_limit``.

Every process of the scenario runs in it. What it is charged: each anonymous folio a
scenario process allocates after scenario start (faults, COW copies, swap-in and swap
readahead folios; a folio stays charged while it sits in the swap cache), the page-table
pages and page-cache pages allocated since scenario start (their node counters' growth:
every such page belongs to a scenario process, __GFP_ACCOUNT for page tables). Pages the
processes had at scenario start stay charged outside, as the live runner's probe joins
its cgroup after starting. The charged anonymous folios are the cgroup's LRU lists
(vmscan.py): ``inactive`` and ``active`` keep them oldest first with the linear page
index rmap needs to find their PTEs (folio->index); a PMD-mapped THP is one entry there,
its head, weighing HPAGE_PMD_NR pages (``thp``), until reclaim or a split breaks it up.

try_charge_memcg: a charge that would pass the limit runs direct reclaim on the cgroup
(try_to_free_mem_cgroup_pages, SWAP_CLUSTER_MAX at a time) until it fits; when reclaim
makes no progress (no swap, swap full, nothing evictable) the memcg OOM killer runs,
except for a THP's charge (an order above PAGE_ALLOC_COSTLY_ORDER: mem_cgroup_oom skips
it), which fails instead and the fault falls back to small pages.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pagewalk.mm.vmstat import NodeStat, VmEvent

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel

MAX_RECLAIM_RETRIES = 16               # try_charge_memcg's reclaim retries before OOM
PAGE_ALLOC_COSTLY_ORDER = 3            # mem_cgroup_oom() runs no OOM killer above it
HPAGE_PMD_NR = 512
SWAPPINESS = 60                        # memory.swappiness (the reference cgroup's)


@dataclass(slots=True, eq=False)
class MemCgroup:
    """A mem_cgroup with ``limit`` pages (memory.limit_in_bytes >> PAGE_SHIFT)."""

    limit: int
    base_pagetables: int = 0           # NR_PAGETABLE at scenario start
    base_file: int = 0                 # NR_FILE_PAGES at scenario start
    inactive: OrderedDict[int, int] = field(default_factory=OrderedDict)  # pfn -> index
    active: OrderedDict[int, int] = field(default_factory=OrderedDict)
    referenced: set[int] = field(default_factory=set)   # PG_referenced
    thp: set[int] = field(default_factory=set)          # LRU entries that are whole THPs
    unevictable: dict[int, int] = field(default_factory=dict)   # mlocked: never scanned
    writeback: deque[int] = field(default_factory=deque)  # written, oldest first (vmscan.py)

    def usage(self, k: Kernel) -> int:
        """page_counter_read(&memcg->memory), in pages."""
        stat = k.node_stat
        return (len(self.inactive) + len(self.active) + len(self.unevictable)
                + (HPAGE_PMD_NR - 1) * len(self.thp)
                + int(stat[NodeStat.NR_PAGETABLE]) - self.base_pagetables
                + int(stat[NodeStat.NR_FILE_PAGES]) - self.base_file)


def mem_cgroup_create(k: Kernel, limit: int) -> None:
    """mkdir in the memory hierarchy + memory.limit_in_bytes; the scenario's processes
    join it from now on (charges before this stay outside)."""
    k.memcg = MemCgroup(limit=limit >> 12,
                        base_pagetables=int(k.node_stat[NodeStat.NR_PAGETABLE]),
                        base_file=int(k.node_stat[NodeStat.NR_FILE_PAGES]))


def charge(k: Kernel, nr_pages: int) -> bool:
    """try_charge_memcg() for a folio of ``nr_pages`` about to be allocated: reclaim until
    it fits, else the OOM killer (which raises SignalError when it kills the caller); a
    costly order gets no OOM kill: False, the charge failed."""
    memcg = k.memcg
    if memcg is None:
        return True
    from pagewalk.mm import oom_kill, vmscan
    retries = MAX_RECLAIM_RETRIES
    while memcg.usage(k) + nr_pages > memcg.limit:
        progress = vmscan.try_to_free_mem_cgroup_pages(k, max(nr_pages, vmscan.SWAP_CLUSTER_MAX))
        if progress:
            continue
        if retries:
            retries -= 1
            continue
        if nr_pages > 1 << PAGE_ALLOC_COSTLY_ORDER:
            return False
        oom_kill.mem_cgroup_out_of_memory(k)
        retries = MAX_RECLAIM_RETRIES
    return True


def lru_add(k: Kernel, pfn: int, index: int, thp: bool = False) -> None:
    """folio_add_lru(): a new charged anonymous folio joins the inactive list (the
    youngest end); ``index`` is its linear page index, -1 while no page table maps it;
    ``thp``: a PMD-sized folio, ``pfn`` its head."""
    memcg = k.memcg
    if memcg is not None:
        memcg.inactive[pfn] = index
        memcg.inactive.move_to_end(pfn)
        if thp:
            memcg.thp.add(pfn)


def lru_split(k: Kernel, head: int, subpages: list[tuple[int, int]]) -> None:
    """__split_huge_page() -> lru_add_split_folio(): a THP's LRU entry gives way to its
    order-0 pages still in use, ``(pfn, index)``, each after it on its list."""
    memcg = k.memcg
    if memcg is None or head not in memcg.thp:
        return
    memcg.thp.discard(head)
    lru = memcg.active if head in memcg.active else \
        memcg.unevictable if head in memcg.unevictable else memcg.inactive
    lru.pop(head, None)
    for pfn, index in subpages:
        lru[pfn] = index


def lru_set_index(k: Kernel, pfn: int, index: int) -> None:
    """A swap-cache folio was mapped at linear page ``index`` (folio->index)."""
    memcg = k.memcg
    if memcg is None:
        return
    for lru in (memcg.inactive, memcg.active):
        if pfn in lru:
            lru[pfn] = index


def uncharge(k: Kernel, pfn: int) -> None:
    """mem_cgroup_uncharge() as the folio is freed: it leaves the LRU."""
    memcg = k.memcg
    if memcg is None:
        return
    memcg.inactive.pop(pfn, None)
    memcg.active.pop(pfn, None)
    memcg.unevictable.pop(pfn, None)
    memcg.referenced.discard(pfn)
    memcg.thp.discard(pfn)


def folio_deactivate(k: Kernel, pfn: int) -> None:
    """folio_deactivate() -> lru_deactivate(): an active folio goes to the inactive list
    (the young end), PG_referenced cleared, counted in pgdeactivate; others stay."""
    memcg = k.memcg
    if memcg is None or pfn not in memcg.active:
        return
    memcg.inactive[pfn] = memcg.active.pop(pfn)
    memcg.referenced.discard(pfn)
    k.vm_events[VmEvent.PGDEACTIVATE] += HPAGE_PMD_NR if pfn in memcg.thp else 1


def lru_mlock(k: Kernel, head: int) -> None:
    """__mlock_folio(): an mlocked folio leaves the evictable lists for the unevictable
    one, where reclaim never looks."""
    memcg = k.memcg
    if memcg is None:
        return
    for lru in (memcg.inactive, memcg.active):
        if head in lru:
            memcg.unevictable[head] = lru.pop(head)


def lru_munlock(k: Kernel, head: int) -> None:
    """__munlock_folio(): the last lock gone, the folio is rescued to the inactive list."""
    memcg = k.memcg
    if memcg is not None and head in memcg.unevictable:
        memcg.inactive[head] = memcg.unevictable.pop(head)
