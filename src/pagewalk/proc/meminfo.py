"""/proc/meminfo as Linux 6.18 prints it (fs/proc/meminfo.c meminfo_proc_show).

Every line comes from a counter the kernel keeps at the point of change (NodeStat,
``committed_pages``, the hstates); this module only converts pages to kB and lays the
lines out. Followed, besides meminfo_proc_show and its ``show_val_kb``:

* mm/show_mem.c ``si_mem_available`` for MemAvailable, with the zone watermarks of
  mm/page_alloc.c (``calculate_min_free_kbytes``, ``__setup_per_zone_wmarks``,
  ``setup_per_zone_lowmem_reserve``, ``calculate_totalreserve_pages``) and
  mm/khugepaged.c ``set_recommended_min_free_kbytes`` -- pagewalk's allocator keeps no
  watermarks, so mm/page_alloc.py derives them from the managed pages (``min_free_kbytes``);
* mm/hugetlb.c ``hugetlb_report_meminfo`` for HugePages_* / Hugepagesize / Hugetlb;
* arch/x86/mm/pat/set_memory.c ``arch_report_meminfo`` for DirectMap*.

The line set is the one the reference machine prints (linux-mm-notes.md 9.1): with
CONFIG_ZSWAP, without HIGHMEM, SHADOW_CALL_STACK, MEMORY_FAILURE, CMA and
UNACCEPTED_MEMORY. Lines for things pagewalk does not simulate (swap, zswap, block
devices, dirty page cache, mlock, vmalloc, per-CPU areas, balloons, file THPs) print 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pagewalk.hw import pgtable_types as pt
from pagewalk.kernel.kernel import KERNEL_TEXT_PGD_INDEX
from pagewalk.mm.page_alloc import Watermarks, lowmem_reserve, zone_watermarks
from pagewalk.mm.swap_state import swap_cache_pages
from pagewalk.mm.swapfile import swap_free_kb, swap_total_kb
from pagewalk.mm.util import vm_commit_limit
from pagewalk.mm.vmstat import NodeStat

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel

PAGE_KB = 4                         # K(x): x << (PAGE_SHIFT - 10)
HPAGE_PMD_NR = 512
#: VMALLOC_TOTAL >> 10: VMALLOC_SIZE_TB_L4 = 32, VMALLOC_SIZE_TB_L5 = 12800
#: (arch/x86/include/asm/pgtable_64_types.h; VMALLOC_END is START + size - 1).
VMALLOC_TOTAL_KB = {4: ((32 << 40) - 1) >> 10, 5: ((12800 << 40) - 1) >> 10}

#: The lines of /proc/meminfo, in the order 6.18 prints them.
MEMINFO_FIELDS: tuple[str, ...] = (
    "MemTotal", "MemFree", "MemAvailable", "Buffers", "Cached", "SwapCached",
    "Active", "Inactive", "Active(anon)", "Inactive(anon)", "Active(file)", "Inactive(file)",
    "Unevictable", "Mlocked", "SwapTotal", "SwapFree", "Zswap", "Zswapped",
    "Dirty", "Writeback", "AnonPages", "Mapped", "Shmem", "KReclaimable",
    "Slab", "SReclaimable", "SUnreclaim", "KernelStack", "PageTables", "SecPageTables",
    "NFS_Unstable", "Bounce", "WritebackTmp", "CommitLimit", "Committed_AS",
    "VmallocTotal", "VmallocUsed", "VmallocChunk", "Percpu",
    "AnonHugePages", "ShmemHugePages", "ShmemPmdMapped", "FileHugePages", "FilePmdMapped",
    "Balloon",
    "HugePages_Total", "HugePages_Free", "HugePages_Rsvd", "HugePages_Surp",
    "Hugepagesize", "Hugetlb",
    "DirectMap4k", "DirectMap2M", "DirectMap1G",
)
#: hugetlb_report_meminfo prints these as counts with "%5lu" after a 19-column label.
HUGEPAGES_COUNT_FIELDS = frozenset(
    {"HugePages_Total", "HugePages_Free", "HugePages_Rsvd", "HugePages_Surp"})


# -- the view --------------------------------------------------------------------------------

def meminfo(k: Kernel) -> dict[str, int]:
    """Every /proc/meminfo line: kB, except HugePages_* (counts of huge pages)."""
    stat = k.node_stat

    def kb(item: NodeStat) -> int:
        return int(stat[item]) * PAGE_KB

    buffers = 0                                         # nr_blockdev_pages(): no block devices
    swapcache = swap_cache_pages(k) * PAGE_KB          # NR_SWAPCACHE
    # NR_FILE_PAGES - swapcache - buffers: pagewalk keeps swap-cache folios out of
    # NR_FILE_PAGES (mm/swap_state.py), so there is nothing to take off for them
    cached = max(0, kb(NodeStat.NR_FILE_PAGES) - buffers)
    sreclaimable, sunreclaim = kb(NodeStat.NR_SLAB_RECLAIMABLE), kb(NodeStat.NR_SLAB_UNRECLAIMABLE)
    active_anon, inactive_anon = kb(NodeStat.NR_ACTIVE_ANON), kb(NodeStat.NR_INACTIVE_ANON)
    active_file, inactive_file = kb(NodeStat.NR_ACTIVE_FILE), kb(NodeStat.NR_INACTIVE_FILE)
    values = {
        "MemTotal": k.totalram_pages * PAGE_KB,
        "MemFree": kb(NodeStat.NR_FREE_PAGES),
        "MemAvailable": si_mem_available(k) * PAGE_KB,
        "Buffers": buffers,
        "Cached": cached,
        "SwapCached": swapcache,
        "Active": active_anon + active_file,
        "Inactive": inactive_anon + inactive_file,
        "Active(anon)": active_anon,
        "Inactive(anon)": inactive_anon,
        "Active(file)": active_file,
        "Inactive(file)": inactive_file,
        "Unevictable": kb(NodeStat.NR_UNEVICTABLE),
        "Mlocked": kb(NodeStat.NR_MLOCK),
        "SwapTotal": swap_total_kb(k), "SwapFree": swap_free_kb(k), "Zswap": 0, "Zswapped": 0,
        "Dirty": kb(NodeStat.NR_FILE_DIRTY), "Writeback": 0,
        "AnonPages": kb(NodeStat.NR_ANON_MAPPED),
        "Mapped": kb(NodeStat.NR_FILE_MAPPED),
        "Shmem": kb(NodeStat.NR_SHMEM),                 # si_meminfo: sharedram = NR_SHMEM
        "KReclaimable": sreclaimable,                   # + NR_KERNEL_MISC_RECLAIMABLE (0)
        "Slab": sreclaimable + sunreclaim,
        "SReclaimable": sreclaimable,
        "SUnreclaim": sunreclaim,
        "KernelStack": int(stat[NodeStat.NR_KERNEL_STACK_KB]),   # already kB
        "PageTables": kb(NodeStat.NR_PAGETABLE),
        "SecPageTables": 0,
        "NFS_Unstable": 0, "Bounce": 0, "WritebackTmp": 0,
        "CommitLimit": vm_commit_limit(k) * PAGE_KB,
        "Committed_AS": k.committed_pages * PAGE_KB,
        "VmallocTotal": VMALLOC_TOTAL_KB[k.levels],
        # Kernel stacks are buddy pages here (no CONFIG_VMAP_STACK model): nothing vmallocs.
        "VmallocUsed": 0, "VmallocChunk": 0, "Percpu": 0,
        "AnonHugePages": kb(NodeStat.NR_ANON_THPS),      # NR_ANON_THPS is kept in pages
        "ShmemHugePages": kb(NodeStat.NR_SHMEM_THPS),     # both kept in pages, per 512
        "ShmemPmdMapped": kb(NodeStat.NR_SHMEM_PMDMAPPED),
        "FileHugePages": kb(NodeStat.NR_FILE_THPS),
        "FilePmdMapped": kb(NodeStat.NR_FILE_PMDMAPPED),
        "Balloon": 0,
    }
    values.update(hugetlb_meminfo(k))
    values.update(direct_map_kb(k))
    return {name: values[name] for name in MEMINFO_FIELDS}


def format_meminfo(k: Kernel) -> str:
    """The text of /proc/meminfo, byte for byte as 6.18 lays it out."""
    return "".join(meminfo_line(name, value) + "\n" for name, value in meminfo(k).items())


def meminfo_line(name: str, value: int) -> str:
    """One line: show_val_kb() pads the label to 16 columns and the value to 8
    (``seq_put_decimal_ull_width(m, s, num, 8)``); hugetlb_report_meminfo's counts are
    ``"HugePages_Total:   %5lu"``. Wider values push the line out, they are never cut."""
    label = f"{name + ':':<16}"
    if name in HUGEPAGES_COUNT_FIELDS:
        return f"{label}   {value:>5}"
    return f"{label}{value:>8} kB"


# -- hugetlb_report_meminfo, arch_report_meminfo --------------------------------------------

def hugetlb_meminfo(k: Kernel) -> dict[str, int]:
    """hugetlb_report_meminfo(): the default hstate's counts, and Hugetlb over all hstates."""
    h = k.hugetlb.default
    total_bytes = sum(hs.nr_huge_pages * hs.size for hs in k.hugetlb.hstates.values())
    return {
        "HugePages_Total": h.nr_huge_pages,
        "HugePages_Free": h.free_huge_pages,
        "HugePages_Rsvd": h.resv_huge_pages_shown,
        "HugePages_Surp": h.surplus_huge_pages,
        "Hugepagesize": h.size >> 10,
        "Hugetlb": total_bytes >> 10,
    }


def direct_map_kb(k: Kernel) -> dict[str, int]:
    """arch_report_meminfo(): the direct map by page size, in kB.

    The kernel counts ``direct_pages_count[]`` while it builds the direct map; pagewalk
    keeps no such counter, so this reads the leaves of the direct-map tables that boot
    wrote into physmem (they never change afterwards). Boot hangs a PUD table off the
    direct-map PGD slot, so the walk starts at PUD level.
    """
    leaves = {30: 0, 21: 0, 12: 0}
    for index, entry in k.pgtables.kernel_pgd_entries.items():
        if index != KERNEL_TEXT_PGD_INDEX and pt.pte_present(entry):
            _count_leaves(k, pt.pte_pfn(entry), 30, leaves)
    return {"DirectMap4k": leaves[12] * 4, "DirectMap2M": leaves[21] * 2048,
            "DirectMap1G": leaves[30] * 1048576}


def _count_leaves(k: Kernel, table_pfn: int, shift: int, leaves: dict[int, int]) -> None:
    for index in range(512):
        entry = k.physmem.read_u64((table_pfn << 12) + index * 8)
        if not pt.pte_present(entry):
            continue
        if shift == 12 or entry & pt._PAGE_PSE:
            leaves[shift] += 1
        else:
            _count_leaves(k, pt.pte_pfn(entry), shift - 9, leaves)


# -- MemAvailable ----------------------------------------------------------------------------

def si_mem_available(k: Kernel) -> int:
    """si_mem_available() (mm/show_mem.c), in pages: free pages above the reserves, plus
    the page cache and reclaimable slab that could be dropped, each less the part
    (at most half) that must stay.

    Approximation: the kernel's zone watermarks and totalreserve_pages are computed at
    boot and when min_free_kbytes or THP settings change; pagewalk's allocator keeps
    none, so they are derived here from the managed pages as mm/page_alloc.c would
    (``zone_watermarks``), with min_free_kbytes as the kernel sets it
    (``min_free_kbytes``). No per-CPU lists, so NR_FREE_PAGES is exact.
    """
    watermarks = zone_watermarks(k)
    wmark_low = sum(w.low for w in watermarks)
    available = int(k.node_stat[NodeStat.NR_FREE_PAGES]) - totalreserve_pages(k, watermarks)
    pagecache = int(k.node_stat[NodeStat.NR_ACTIVE_FILE] + k.node_stat[NodeStat.NR_INACTIVE_FILE])
    available += pagecache - min(pagecache // 2, wmark_low)
    reclaimable = int(k.node_stat[NodeStat.NR_SLAB_RECLAIMABLE])  # + NR_KERNEL_MISC_RECLAIMABLE
    available += reclaimable - min(reclaimable // 2, wmark_low)
    return max(available, 0)


def totalreserve_pages(k: Kernel, watermarks: list[Watermarks]) -> int:
    """calculate_totalreserve_pages(): per zone, its largest lowmem_reserve plus its high
    watermark, capped at its managed pages."""
    managed = [int(pages) for pages in k.buddy.managed_pages]
    total = 0
    for zone, zone_pages in enumerate(managed):
        total += min(lowmem_reserve(k, zone) + watermarks[zone].high, zone_pages)
    return total

