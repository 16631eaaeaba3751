"""/proc/vmstat and /proc/buddyinfo (mm/vmstat.c: vmstat_text, vmstat_start, vmstat_show,
frag_show_print).

/proc/vmstat prints ``name value`` for the counters pagewalk keeps, in the order of the
kernel's ``vmstat_text`` (zone items, node items, then vm events); counters pagewalk does
not keep are left out rather than printed as 0. Values are the kernel's own counters
(``Kernel.node_stat``, ``Kernel.vm_events``) with vmstat_start()'s conversions:
``nr_anon_transparent_hugepages`` is NR_ANON_THPS in PMD-sized units
(``vmstat_item_print_in_thp``), ``nr_kernel_stack`` stays in kB.

/proc/buddyinfo reads the free-block counts of each populated zone; pagewalk has no
per-CPU page lists, so the blocks add up to NR_FREE_PAGES exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pagewalk.mm.page_alloc import ZONE_NAMES
from pagewalk.mm.vmstat import NodeStat, VmEvent

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel

HPAGE_PMD_NR = 512

#: (name, counter) in vmstat_text order: enum zone_stat_item, enum node_stat_item, then
#: enum vm_event_item (include/linux/mmzone.h, include/linux/vm_event_item.h, 6.18).
VMSTAT_ITEMS: tuple[tuple[str, NodeStat | VmEvent], ...] = (
    # zone_stat_item
    ("nr_free_pages", NodeStat.NR_FREE_PAGES),
    ("nr_mlock", NodeStat.NR_MLOCK),
    # node_stat_item
    ("nr_inactive_anon", NodeStat.NR_INACTIVE_ANON),
    ("nr_active_anon", NodeStat.NR_ACTIVE_ANON),
    ("nr_inactive_file", NodeStat.NR_INACTIVE_FILE),
    ("nr_active_file", NodeStat.NR_ACTIVE_FILE),
    ("nr_unevictable", NodeStat.NR_UNEVICTABLE),
    ("nr_slab_reclaimable", NodeStat.NR_SLAB_RECLAIMABLE),
    ("nr_slab_unreclaimable", NodeStat.NR_SLAB_UNRECLAIMABLE),
    ("nr_anon_pages", NodeStat.NR_ANON_MAPPED),
    ("nr_mapped", NodeStat.NR_FILE_MAPPED),
    ("nr_file_pages", NodeStat.NR_FILE_PAGES),
    ("nr_dirty", NodeStat.NR_FILE_DIRTY),
    ("nr_shmem", NodeStat.NR_SHMEM),
    ("nr_file_hugepages", NodeStat.NR_FILE_THPS),
    ("nr_file_pmdmapped", NodeStat.NR_FILE_PMDMAPPED),
    ("nr_anon_transparent_hugepages", NodeStat.NR_ANON_THPS),
    ("nr_dirtied", NodeStat.NR_DIRTIED),
    ("nr_written", NodeStat.NR_WRITTEN),
    ("nr_kernel_stack", NodeStat.NR_KERNEL_STACK_KB),
    ("nr_page_table_pages", NodeStat.NR_PAGETABLE),
    # vm_event_item
    ("pgpgin", VmEvent.PGPGIN),
    ("pswpin", VmEvent.PSWPIN),
    ("pswpout", VmEvent.PSWPOUT),
    ("pgalloc_dma", VmEvent.PGALLOC_DMA),
    ("pgalloc_dma32", VmEvent.PGALLOC_DMA32),
    ("pgalloc_normal", VmEvent.PGALLOC_NORMAL),
    ("pgfree", VmEvent.PGFREE),
    ("pgactivate", VmEvent.PGACTIVATE),
    ("pgdeactivate", VmEvent.PGDEACTIVATE),
    ("pglazyfree", VmEvent.PGLAZYFREE),
    ("pgfault", VmEvent.PGFAULT),
    ("pgmajfault", VmEvent.PGMAJFAULT),
    ("pgreuse", VmEvent.PGREUSE),
    ("pgscan_anon", VmEvent.PGSCAN_ANON),
    ("pgsteal_anon", VmEvent.PGSTEAL_ANON),
    ("oom_kill", VmEvent.OOM_KILL),
    ("thp_migration_success", VmEvent.THP_MIGRATION_SUCCESS),
    ("thp_migration_fail", VmEvent.THP_MIGRATION_FAIL),
    ("thp_migration_split", VmEvent.THP_MIGRATION_SPLIT),
    ("compact_migrate_scanned", VmEvent.COMPACT_MIGRATE_SCANNED),
    ("compact_free_scanned", VmEvent.COMPACT_FREE_SCANNED),
    ("compact_isolated", VmEvent.COMPACT_ISOLATED),
    ("compact_stall", VmEvent.COMPACT_STALL),
    ("compact_fail", VmEvent.COMPACT_FAIL),
    ("compact_success", VmEvent.COMPACT_SUCCESS),
    ("htlb_buddy_alloc_success", VmEvent.HTLB_BUDDY_ALLOC_SUCCESS),
    ("htlb_buddy_alloc_fail", VmEvent.HTLB_BUDDY_ALLOC_FAIL),
    ("unevictable_pgs_culled", VmEvent.UNEVICTABLE_PGCULLED),
    ("unevictable_pgs_scanned", VmEvent.UNEVICTABLE_PGSCANNED),
    ("unevictable_pgs_rescued", VmEvent.UNEVICTABLE_PGRESCUED),
    ("unevictable_pgs_mlocked", VmEvent.UNEVICTABLE_PGMLOCKED),
    ("unevictable_pgs_munlocked", VmEvent.UNEVICTABLE_PGMUNLOCKED),
    ("unevictable_pgs_cleared", VmEvent.UNEVICTABLE_PGCLEARED),
    ("unevictable_pgs_stranded", VmEvent.UNEVICTABLE_PGSTRANDED),
    ("thp_fault_alloc", VmEvent.THP_FAULT_ALLOC),
    ("thp_fault_fallback", VmEvent.THP_FAULT_FALLBACK),
    ("thp_fault_fallback_charge", VmEvent.THP_FAULT_FALLBACK_CHARGE),
    ("thp_collapse_alloc", VmEvent.THP_COLLAPSE_ALLOC),
    ("thp_collapse_alloc_failed", VmEvent.THP_COLLAPSE_ALLOC_FAILED),
    ("thp_file_alloc", VmEvent.THP_FILE_ALLOC),
    ("thp_file_fallback", VmEvent.THP_FILE_FALLBACK),
    ("thp_file_fallback_charge", VmEvent.THP_FILE_FALLBACK_CHARGE),
    ("thp_file_mapped", VmEvent.THP_FILE_MAPPED),
    ("thp_split_page", VmEvent.THP_SPLIT_PAGE),
    ("thp_split_page_failed", VmEvent.THP_SPLIT_PAGE_FAILED),
    ("thp_deferred_split_page", VmEvent.THP_DEFERRED_SPLIT_PAGE),
    ("thp_underused_split_page", VmEvent.THP_UNDERUSED_SPLIT_PAGE),
    ("thp_split_pmd", VmEvent.THP_SPLIT_PMD),
    ("thp_scan_exceed_none_pte", VmEvent.THP_SCAN_EXCEED_NONE_PTE),
    ("thp_scan_exceed_swap_pte", VmEvent.THP_SCAN_EXCEED_SWAP_PTE),
    ("thp_scan_exceed_share_pte", VmEvent.THP_SCAN_EXCEED_SHARE_PTE),
    ("thp_split_pud", VmEvent.THP_SPLIT_PUD),
    ("thp_zero_page_alloc", VmEvent.THP_ZERO_PAGE_ALLOC),
    ("thp_zero_page_alloc_failed", VmEvent.THP_ZERO_PAGE_ALLOC_FAILED),
    ("thp_swpout", VmEvent.THP_SWPOUT),
    ("thp_swpout_fallback", VmEvent.THP_SWPOUT_FALLBACK),
    # CONFIG_DEBUG_TLBFLUSH
    ("nr_tlb_local_flush_all", VmEvent.TLB_FLUSH_ALL),
    ("nr_tlb_local_flush_one", VmEvent.TLB_FLUSH_ONE),
)


def vmstat(k: Kernel) -> dict[str, int]:
    """The /proc/vmstat items pagewalk keeps, name -> value, in vmstat_text order."""
    values = {}
    for name, item in VMSTAT_ITEMS:
        if isinstance(item, VmEvent):
            values[name] = int(k.vm_events[item])
        elif item == NodeStat.NR_ANON_THPS:
            values[name] = int(k.node_stat[item]) // HPAGE_PMD_NR
        else:
            values[name] = int(k.node_stat[item])
    return values


def format_vmstat(k: Kernel) -> str:
    """vmstat_show(): one ``"%s %lu\\n"`` line per item."""
    return "".join(f"{name} {value}\n" for name, value in vmstat(k).items())


def format_buddyinfo(k: Kernel) -> str:
    """frag_show_print(): per populated zone ``"Node %d, zone %8s "`` then ``"%6lu "``
    for the free blocks of each order 0..MAX_PAGE_ORDER, then a newline."""
    lines = []
    for zone in k.buddy.populated_zones():
        counts = "".join(f"{blocks:>6} " for blocks in k.buddy.free_blocks(zone))
        lines.append(f"Node 0, zone {ZONE_NAMES[zone]:>8} {counts}\n")
    return "".join(lines)
