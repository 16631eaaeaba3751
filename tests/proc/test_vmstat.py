"""/proc/vmstat and /proc/buddyinfo (mm/vmstat.c vmstat_text, vmstat_show, frag_show_print):
names in the kernel's order, the kernel's line formats, and the counters of
linux-mm-notes.md 9.5 and 10.2."""

from __future__ import annotations

import re

from pagewalk.kernel import syscalls
from pagewalk.kernel.kernel import Kernel
from pagewalk.kernel.task import Task
from pagewalk.machine import Machine
from pagewalk.mm import fastpath
from pagewalk.mm.page_alloc import MAX_PAGE_ORDER, ZONE_NAMES
from pagewalk.mm.vmstat import VmEvent
from pagewalk.proc.meminfo import meminfo
from pagewalk.proc.vmstat import VMSTAT_ITEMS, format_buddyinfo, format_vmstat, vmstat

THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"
ANON_PRIVATE = frozenset({"private", "anonymous"})
MiB = 1 << 20

#: vmstat_text of mm/vmstat.c (x86_64, CONFIG_NUMA, ZSMALLOC, SWAP, MIGRATION, COMPACTION,
#: HUGETLB_PAGE, TRANSPARENT_HUGEPAGE, DEBUG_TLBFLUSH), abridged where pagewalk keeps
#: nothing; the relative order is the kernel's.
_VMSTAT_TEXT = """
nr_free_pages nr_zone_inactive_anon nr_zone_active_anon nr_zone_inactive_file
nr_zone_active_file nr_zone_unevictable nr_zone_write_pending nr_mlock nr_bounce nr_zspages
nr_free_cma numa_hit numa_miss numa_foreign numa_interleave numa_local numa_other
nr_inactive_anon nr_active_anon nr_inactive_file nr_active_file nr_unevictable
nr_slab_reclaimable nr_slab_unreclaimable nr_isolated_anon nr_isolated_file workingset_nodes
workingset_refault_anon workingset_refault_file workingset_activate_anon
workingset_activate_file workingset_restore_anon workingset_restore_file
workingset_nodereclaim nr_anon_pages nr_mapped nr_file_pages nr_dirty nr_writeback
nr_writeback_temp nr_shmem nr_shmem_hugepages nr_shmem_pmdmapped nr_file_hugepages
nr_file_pmdmapped nr_anon_transparent_hugepages nr_vmscan_write nr_vmscan_immediate_reclaim
nr_dirtied nr_written nr_throttled_written nr_kernel_misc_reclaimable nr_foll_pin_acquired
nr_foll_pin_released nr_kernel_stack nr_page_table_pages nr_sec_page_table_pages
nr_iommu_pages nr_swapcached pgdemote_kswapd pgdemote_direct pgdemote_khugepaged
nr_dirty_threshold nr_dirty_background_threshold nr_memmap_pages nr_memmap_boot_pages
pgpgin pgpgout pswpin pswpout pgalloc_dma pgalloc_dma32 pgalloc_normal pgalloc_movable
allocstall_dma allocstall_dma32 allocstall_normal allocstall_movable pgskip_dma pgskip_dma32
pgskip_normal pgskip_movable pgfree pgactivate pgdeactivate pglazyfree pgfault pgmajfault
pglazyfreed pgrefill pgreuse pgsteal_kswapd pgsteal_direct pgsteal_khugepaged pgscan_kswapd
pgscan_direct pgscan_khugepaged pgscan_direct_throttle pgscan_anon pgscan_file pgsteal_anon
pgsteal_file zone_reclaim_success zone_reclaim_failed pginodesteal slabs_scanned
kswapd_inodesteal kswapd_low_wmark_hit_quickly kswapd_high_wmark_hit_quickly pageoutrun
pgrotated drop_pagecache drop_slab oom_kill numa_pte_updates numa_huge_pte_updates
numa_hint_faults numa_hint_faults_local numa_pages_migrated pgmigrate_success pgmigrate_fail
thp_migration_success thp_migration_fail thp_migration_split compact_migrate_scanned
compact_free_scanned compact_isolated compact_stall compact_fail compact_success
compact_daemon_wake compact_daemon_migrate_scanned compact_daemon_free_scanned
htlb_buddy_alloc_success htlb_buddy_alloc_fail unevictable_pgs_culled
unevictable_pgs_scanned unevictable_pgs_rescued unevictable_pgs_mlocked unevictable_pgs_munlocked
unevictable_pgs_cleared unevictable_pgs_stranded thp_fault_alloc
thp_fault_fallback thp_fault_fallback_charge thp_collapse_alloc thp_collapse_alloc_failed
thp_file_alloc thp_file_fallback thp_file_fallback_charge thp_file_mapped thp_split_page
thp_split_page_failed thp_deferred_split_page thp_underused_split_page thp_split_pmd
thp_scan_exceed_none_pte thp_scan_exceed_swap_pte thp_scan_exceed_share_pte thp_split_pud
thp_zero_page_alloc thp_zero_page_alloc_failed thp_swpout thp_swpout_fallback
balloon_inflate balloon_deflate balloon_migrate nr_tlb_remote_flush
nr_tlb_remote_flush_received nr_tlb_local_flush_all nr_tlb_local_flush_one swap_ra
swap_ra_hit direct_map_level2_splits direct_map_level3_splits
"""
VMSTAT_TEXT = _VMSTAT_TEXT.split()


def boot() -> tuple[Kernel, Task]:
    k = Machine().kernel
    return k, k.spawn("main")


def write(k: Kernel, task: Task, length: int) -> None:
    addr = syscalls.sys_mmap(k, task, 0, length, 3, ANON_PRIVATE)
    fastpath.touch(k, task, addr, length, 4096, 1)


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {name: after[name] - before[name] for name in after if after[name] != before[name]}


# -- /proc/vmstat ----------------------------------------------------------------------------

def test_names_follow_vmstat_text_order() -> None:
    names = list(vmstat(Machine().kernel))
    positions = [VMSTAT_TEXT.index(name) for name in names]
    assert positions == sorted(positions)
    assert len(set(names)) == len(names)


def test_every_vm_event_is_shown_once() -> None:
    events = [item for _, item in VMSTAT_ITEMS if isinstance(item, VmEvent)]
    assert sorted(events) == sorted(VmEvent)


def test_lines_are_name_space_value() -> None:
    """vmstat_show(): seq_puts(name); seq_put_decimal_ull(m, " ", value); seq_putc('\\n')."""
    k, _ = boot()
    text = format_vmstat(k)
    assert text.endswith("\n")
    assert all(re.fullmatch(r"[a-z0-9_]+ \d+", line) for line in text.splitlines())
    assert text.splitlines()[0] == f"nr_free_pages {int(k.node_stat[0])}"


def test_writing_64m_with_4k_pages_counts_faults_pages_and_tables() -> None:
    """Notes 12 #1 and 9.5: 16384 faults, 16384 anon pages, 32 PTE tables, every page
    allocated from the buddy allocator (pgalloc_* += 2^order) and none freed."""
    k, task = boot()
    k.set_knob(THP_ENABLED, "never")
    before = vmstat(k)
    write(k, task, 64 * MiB)
    change = delta(before, vmstat(k))
    assert change["pgfault"] == 16384
    assert change["nr_anon_pages"] == change["nr_active_anon"] == 16384
    assert change["nr_page_table_pages"] == 32
    allocated = sum(change.get(f"pgalloc_{zone.lower()}", 0) for zone in ZONE_NAMES)
    assert allocated == 16384 + 32 == -change["nr_free_pages"]
    assert "nr_anon_transparent_hugepages" not in change and "pgfree" not in change


def test_thps_counted_in_pmd_units() -> None:
    """Notes 4.6 / 12 #2: 32 THPs -> nr_anon_transparent_hugepages +32 (NR_ANON_THPS / 512),
    thp_fault_alloc +32, 32 faults."""
    k, task = boot()
    k.set_knob(THP_ENABLED, "always")
    before = vmstat(k)
    write(k, task, 64 * MiB)
    change = delta(before, vmstat(k))
    assert change["nr_anon_transparent_hugepages"] == 32
    assert change["thp_fault_alloc"] == 32
    assert change["pgfault"] == 32


def test_nr_page_table_pages_is_pagetables_over_4() -> None:
    k, task = boot()
    write(k, task, 8 * MiB)
    assert vmstat(k)["nr_page_table_pages"] * 4 == meminfo(k)["PageTables"]


# -- /proc/buddyinfo -------------------------------------------------------------------------

def test_buddyinfo_lines_use_frag_show_print_format() -> None:
    """``"Node %d, zone %8s "`` then ``"%6lu "`` for orders 0..10, one line per populated
    zone: a 4 GiB machine has DMA and DMA32."""
    k, _ = boot()
    lines = format_buddyinfo(k).splitlines()
    assert [line.split()[3] for line in lines] == ["DMA", "DMA32"]
    for zone, line in zip(k.buddy.populated_zones(), lines, strict=True):
        counts = k.buddy.free_blocks(zone)
        assert len(counts) == MAX_PAGE_ORDER + 1
        # The kernel's printf formats, verbatim.
        expected = "Node %d, zone %8s " % (0, ZONE_NAMES[zone]) + "".join(  # noqa: UP031
            "%6d " % blocks for blocks in counts)  # noqa: UP031
        assert line == expected
    assert lines[0].startswith("Node 0, zone      DMA ")
    assert lines[1].startswith("Node 0, zone    DMA32 ")


def test_buddyinfo_adds_up_to_nr_free_pages() -> None:
    """Free pages = sum of blocks * 2^order over zones (notes 10.2; no per-CPU lists)."""
    k, task = boot()
    for _ in range(2):
        total = 0
        for line in format_buddyinfo(k).splitlines():
            total += sum(int(word) << order for order, word in enumerate(line.split()[4:]))
        assert total == vmstat(k)["nr_free_pages"]
        write(k, task, 6 * MiB)


def test_a_thp_splits_a_higher_block() -> None:
    """Notes 10.3 (c): with no free order-9 block left, one THP splits an order-10 block:
    buddyinfo order 10 -1, order 9 +1 (its PTE-table deposit comes from a smaller block)."""
    k, task = boot()
    k.set_knob(THP_ENABLED, "always")
    dma32 = ZONE_NAMES.index("DMA32")
    while k.buddy.free_blocks(dma32)[9]:
        write(k, task, 2 * MiB)
    before = k.buddy.free_blocks(dma32)
    assert any(before[1:9]) and before[10]
    write(k, task, 2 * MiB)
    after = k.buddy.free_blocks(dma32)
    assert (after[9], after[10]) == (before[9] + 1, before[10] - 1)
