"""Node counters and VM events, bumped at the point of change (mm/vmstat.c, linux/mmzone.h,
linux/vm_event_item.h).

Counters live in two NumPy int64 arrays owned by the Kernel so compiled code can bump them
too; views read them, never recount.
"""

from __future__ import annotations

import enum

import numpy as np
import numpy.typing as npt


class NodeStat(enum.IntEnum):
    """enum node_stat_item / zone_stat_item entries pagewalk keeps (in pages)."""

    NR_FREE_PAGES = 0
    NR_ANON_MAPPED = 1      # AnonPages
    NR_FILE_PAGES = 2       # page cache incl. shmem
    NR_FILE_MAPPED = 3      # Mapped
    NR_SHMEM = 4            # Shmem
    NR_ANON_THPS = 5        # AnonHugePages, in 4 KiB pages (counted per 512)
    NR_PAGETABLE = 6        # PageTables
    NR_KERNEL_STACK_KB = 7  # KernelStack (kB)
    NR_SLAB_UNRECLAIMABLE = 8
    NR_SLAB_RECLAIMABLE = 9
    NR_ACTIVE_ANON = 10
    NR_INACTIVE_ANON = 11
    NR_ACTIVE_FILE = 12
    NR_INACTIVE_FILE = 13
    NR_DIRTIED = 14
    NR_LAZYFREE = 15
    NR_RESERVED = 16        # pages the kernel keeps for itself at boot (image, mem_map)
    NR_SHMEM_THPS = 17      # ShmemHugePages: PMD-sized shmem folios in the page cache
    NR_SHMEM_PMDMAPPED = 18  # ShmemPmdMapped: shmem THPs mapped by at least one PMD
    NR_MLOCK = 19           # Mlocked: pages of PG_mlocked folios
    NR_UNEVICTABLE = 20     # Unevictable: pages on the unevictable LRU
    NR_FILE_DIRTY = 21      # Dirty: page-cache pages waiting for writeback
    NR_WRITTEN = 22         # nr_written: pages written back since boot
    NR_FILE_THPS = 23       # FileHugePages: PMD-sized folios in a disk file's page cache
    NR_FILE_PMDMAPPED = 24  # FilePmdMapped: such folios mapped by at least one PMD


NR_NODE_STATS = len(NodeStat)


class VmEvent(enum.IntEnum):
    """enum vm_event_item entries shown in /proc/vmstat."""

    PGALLOC_DMA = 0
    PGALLOC_DMA32 = 1
    PGALLOC_NORMAL = 2
    PGFREE = 3
    PGFAULT = 4
    PGMAJFAULT = 5
    THP_FAULT_ALLOC = 6
    THP_FAULT_FALLBACK = 7
    THP_FAULT_FALLBACK_CHARGE = 8
    THP_COLLAPSE_ALLOC = 9
    THP_COLLAPSE_ALLOC_FAILED = 10
    THP_SPLIT_PAGE = 11
    THP_SPLIT_PAGE_FAILED = 12
    THP_DEFERRED_SPLIT_PAGE = 13
    THP_UNDERUSED_SPLIT_PAGE = 14
    THP_SPLIT_PMD = 15
    THP_SCAN_EXCEED_NONE_PTE = 16
    THP_SCAN_EXCEED_SWAP_PTE = 17
    THP_SCAN_EXCEED_SHARE_PTE = 18
    THP_SPLIT_PUD = 19
    THP_ZERO_PAGE_ALLOC = 20
    THP_ZERO_PAGE_ALLOC_FAILED = 21
    HTLB_BUDDY_ALLOC_SUCCESS = 22
    HTLB_BUDDY_ALLOC_FAIL = 23
    COMPACT_STALL = 24
    COMPACT_FAIL = 25
    COMPACT_SUCCESS = 26
    COMPACT_MIGRATE_SCANNED = 27
    COMPACT_FREE_SCANNED = 28
    COMPACT_ISOLATED = 29
    PGLAZYFREE = 30
    TLB_FLUSH_ALL = 31          # nr_tlb_local_flush_all
    TLB_FLUSH_ONE = 32          # nr_tlb_local_flush_one
    THP_FILE_ALLOC = 33
    THP_FILE_FALLBACK = 34
    THP_FILE_FALLBACK_CHARGE = 35
    THP_FILE_MAPPED = 36
    THP_SWPOUT = 37
    THP_SWPOUT_FALLBACK = 38
    THP_MIGRATION_SUCCESS = 39
    THP_MIGRATION_FAIL = 40
    THP_MIGRATION_SPLIT = 41
    PGREUSE = 42
    UNEVICTABLE_PGCULLED = 43     # unevictable_pgs_culled (mm/mlock.c)
    UNEVICTABLE_PGSCANNED = 44
    UNEVICTABLE_PGRESCUED = 45
    UNEVICTABLE_PGMLOCKED = 46
    UNEVICTABLE_PGMUNLOCKED = 47
    UNEVICTABLE_PGCLEARED = 48
    UNEVICTABLE_PGSTRANDED = 49
    PGPGIN = 50                   # kB read from disk (submit_bio counts sectors; shown / 2)
    PSWPIN = 51                   # pages read from swap (nothing swaps yet: no swap device)
    PSWPOUT = 52                  # pages written to swap
    OOM_KILL = 53                 # tasks the OOM killer killed
    # reclaim (mm/vmscan.c): a memory cgroup's reclaim counts pgscan/pgsteal_direct and
    # pgrefill in the cgroup's events only; the global ones below are counted always
    PGSCAN_ANON = 54              # anonymous pages isolated from an inactive list
    PGSTEAL_ANON = 55             # of them, reclaimed (freed)
    PGACTIVATE = 56               # pages moved to an active list by reclaim
    PGDEACTIVATE = 57             # pages moved from an active list to the inactive one


NR_VM_EVENTS = len(VmEvent)


def new_node_stats() -> npt.NDArray[np.int64]:
    return np.zeros(NR_NODE_STATS, dtype=np.int64)


def new_vm_events() -> npt.NDArray[np.int64]:
    return np.zeros(NR_VM_EVENTS, dtype=np.int64)
