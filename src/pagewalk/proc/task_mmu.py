"""/proc/PID/status memory lines, maps, smaps and smaps_rollup (fs/proc/task_mmu.c:
task_mem, show_map_vma, smaps_pte_entry, smaps_pmd_entry, smaps_hugetlb_range,
__show_smap, show_smaps_rollup).

status reads the mm's counters; smaps walks the page tables as the kernel's smaps walk
does (that walk is the kernel's own way to produce these figures).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np

from pagewalk.hw import pgtable_types as pt
from pagewalk.mm import huge_memory, hugetlb, pkeys, shmem
from pagewalk.mm.filemap import File
from pagewalk.mm.page_alloc import PageFlag
from pagewalk.mm.rmap import folio_head
from pagewalk.mm.types import MmStat, MmStruct, Vma, VmFlags

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel
    from pagewalk.kernel.task import Task


def task_mem(task: Task) -> dict[str, int]:
    """task_mem(): the memory lines of /proc/PID/status, in kB."""
    mm = task.mm
    s = mm.stat
    anon = int(s[MmStat.MM_ANONPAGES])
    file = int(s[MmStat.MM_FILEPAGES])
    shmem = int(s[MmStat.MM_SHMEMPAGES])
    rss = anon + file + shmem
    hiwater_rss = max(mm.hiwater_rss, rss)
    hiwater_vm = max(mm.hiwater_vm, mm.total_vm)
    text = ((mm.end_code + 4095) & ~4095) - (mm.start_code & ~4095)
    text = min(text, mm.exec_vm << 12)
    lib = (mm.exec_vm << 12) - text
    return {
        "VmPeak": hiwater_vm << 2, "VmSize": mm.total_vm << 2, "VmLck": mm.locked_vm << 2,
        "VmPin": mm.pinned_vm << 2, "VmHWM": hiwater_rss << 2, "VmRSS": rss << 2,
        "RssAnon": anon << 2, "RssFile": file << 2, "RssShmem": shmem << 2,
        "VmData": mm.data_vm << 2, "VmStk": mm.stack_vm << 2, "VmExe": text >> 10,
        "VmLib": lib >> 10, "VmPTE": int(s[MmStat.PGTABLES_BYTES]) >> 10,
        "VmSwap": int(s[MmStat.MM_SWAPENTS]) << 2,
        # hugetlb_report_usage() prints an unsigned long: an mm that zaps pages another mm
        # faulted into a shared PMD table goes below zero and wraps
        "HugetlbPages": (int(s[MmStat.HUGETLB_USAGE]) << 2) & ((1 << 64) - 1),
    }


def format_status(task: Task) -> str:
    """The memory part of /proc/PID/status (Name, Pid, then task_mem's lines)."""
    lines = [f"Name:\t{task.comm}", f"Pid:\t{task.pid}",
             f"PPid:\t{task.parent.pid if task.parent else 1}"]
    for key, value in task_mem(task).items():
        lines.append(f"{key}:\t{value:>8} kB")  # SEQ_PUT_DEC("VmPeak:\t", ...) + " kB\n"
    lines.append(f"THP_enabled:\t{0 if task.mm.thp_disable else 1}")
    return "\n".join(lines) + "\n"


@dataclass(slots=True)
class MemSize:
    """struct mem_size_stats, in bytes (pss in bytes << PSS_SHIFT is kept exact as float)."""

    resident: int = 0
    pss: float = 0.0
    pss_dirty: float = 0.0
    pss_anon: float = 0.0
    pss_file: float = 0.0
    pss_shmem: float = 0.0
    shared_clean: int = 0
    shared_dirty: int = 0
    private_clean: int = 0
    private_dirty: int = 0
    referenced: int = 0
    anonymous: int = 0
    lazyfree: int = 0
    anonymous_thp: int = 0
    shmem_thp: int = 0
    file_thp: int = 0
    shared_hugetlb: int = 0
    private_hugetlb: int = 0
    swap: int = 0
    swap_pss: float = 0.0
    pss_locked: float = 0.0

    def add(self, other: MemSize) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def _account(k: Kernel, mss: MemSize, pfn: int, size: int, young: bool, dirty: bool,
             mapcount: int) -> None:
    """smaps_account() for one page or huge page."""
    flags = int(k.memmap.flags[pfn])
    anon = bool(flags & PageFlag.ANON)
    if anon:
        mss.anonymous += size
        if flags & PageFlag.LAZYFREE and not dirty:
            mss.lazyfree += size
    mss.resident += size
    if young:
        mss.referenced += size
    dirty = dirty or bool(flags & PageFlag.DIRTY and not flags & PageFlag.LAZYFREE and anon)
    mapcount = max(mapcount, 1)
    share = size / mapcount
    mss.pss += share
    if dirty:
        mss.pss_dirty += share
    if anon:
        mss.pss_anon += share
    elif flags & PageFlag.SHMEM:
        mss.pss_shmem += share
    else:
        mss.pss_file += share
    if mapcount >= 2:
        if dirty:
            mss.shared_dirty += size
        else:
            mss.shared_clean += size
    elif dirty:
        mss.private_dirty += size
    else:
        mss.private_clean += size


def smaps_vma(k: Kernel, mm: MmStruct, vma: Vma) -> MemSize:
    """walk_page_vma() with smaps_pte_entry / smaps_pmd_entry / smaps_hugetlb_range."""
    mss = MemSize()
    if vma.is_hugetlb():
        _smaps_hugetlb_range(k, mm, vma, mss)
        return mss
    for entry, shift in _leaves(k, mm, vma.start, vma.end):
        _smaps_leaf(k, mss, vma, entry, shift)
    if vma.flags & VmFlags.LOCKED:
        mss.pss_locked = mss.pss     # smaps_page_accumulate(): every page's pss when VM_LOCKED
    return mss


def _smaps_hugetlb_range(k: Kernel, mm: MmStruct, vma: Vma, mss: MemSize) -> None:
    """smaps_hugetlb_range(): a present (or PROT_NONE) huge page is Shared_Hugetlb when it
    is mapped more than once or its PMD table is shared (hugetlb_pmd_shared)."""
    h = hugetlb.hstate_vma(vma)
    addr = vma.start
    while addr < vma.end:
        entry_paddr = hugetlb.hugetlb_walk(k, mm, h, addr)
        if entry_paddr is None:                    # walk_hugetlb_range: no table here
            addr = (addr | h.last_addr_mask) + h.size
            continue
        entry = k.pgtables.read(entry_paddr)
        addr += h.size
        if not hugetlb.huge_pte_present(entry):
            continue
        pfn = pt.huge_pfn(entry, h.shift)
        # A shared mapping's page cache holds one reference; every mapping holds one more.
        mappings = int(k.memmap.refcount[pfn]) - (1 if hugetlb.hugetlb_file(vma).shared else 0)
        if mappings > 1 or (h.size == hugetlb.PMD_SIZE and
                            k.pgtables.pmd_is_shared(entry_paddr >> 12)):
            mss.shared_hugetlb += h.size
        else:
            mss.private_hugetlb += h.size


def _leaves(k: Kernel, mm: MmStruct, start: int, end: int) -> Iterator[tuple[int, int]]:
    """Present leaf entries mapping [start, end): (entry, level shift). Walks table by table
    and skips empty ones, so a sparse or huge range costs what its tables cost."""
    pgt = k.pgtables
    yield from _leaves_in(k, mm.pgd_pfn, 0, pgt.shifts, start, end, 0)


def _leaves_in(k: Kernel, table: int, level: int, shifts: tuple[int, ...], start: int, end: int,
               base: int) -> Iterator[tuple[int, int]]:
    shift = shifts[level]
    words = k.physmem.frame_words(table)
    first = max((start - base) >> shift, 0)
    last = min(((end - 1 - base) >> shift), 511)
    if last < first:
        return
    sub = words[first: last + 1]
    for offset in np.nonzero(sub & np.uint64(pt._PAGE_PRESENT | pt._PAGE_PROTNONE))[0]:
        index = first + int(offset)
        entry = int(sub[offset])
        if shift == 12 or entry & pt._PAGE_PSE:
            yield entry, shift  # pte_present()/pmd_present(): P or PROT_NONE
            continue
        if level + 1 == len(shifts):
            continue  # a PMD-level walk does not read PTE tables
        child_base = base + (index << shift)
        yield from _leaves_in(k, pt.pte_pfn(entry), level + 1, shifts, start, end, child_base)


def anon_huge_pages(k: Kernel, mm: MmStruct) -> int:
    """smaps_rollup AnonHugePages in bytes: PMD-mapped anonymous THPs (not the huge zero page)."""
    total = 0
    for vma in mm.vmas:
        if vma.is_hugetlb() or not vma.is_anonymous():
            continue
        for entry, shift in _leaves_pmd(k, mm, vma.start, vma.end):
            if shift == 21 and not huge_memory.is_huge_zero_pmd(k, entry):
                total += 1 << 21
    return total


def _leaves_pmd(k: Kernel, mm: MmStruct, start: int, end: int) -> Iterator[tuple[int, int]]:
    """Like _leaves but stops at the PMD level (PTE tables are not read)."""
    shifts = tuple(s for s in k.pgtables.shifts if s >= 21)
    yield from _leaves_in(k, mm.pgd_pfn, 0, shifts, start, end, 0)


def _smaps_leaf(k: Kernel, mss: MemSize, vma: Vma, entry: int, shift: int) -> None:
    young = bool(entry & pt._PAGE_ACCESSED)
    dirty = bool(entry & pt._PAGE_DIRTY)
    if entry & pt._PAGE_SPECIAL:
        return  # zero page, huge zero page, pfn maps: no struct page to account
    if shift == 12:
        pfn = pt.pte_pfn(entry)
        head = folio_head(k, pfn)
        mapcount = int(k.memmap.mapcount[pfn]) + k.entire_mapcount.get(head, 0)
        _account(k, mss, pfn, 4096, young, dirty, mapcount)
        return
    head = pt.huge_pfn(entry, shift)
    if huge_memory.is_huge_zero_pmd(k, entry):
        return
    mapcount = k.entire_mapcount.get(head, 1)
    if k.memmap.flags[head] & PageFlag.ANON:          # smaps_pmd_entry()
        mss.anonymous_thp += 1 << shift
    elif k.memmap.flags[head] & PageFlag.SHMEM:       # folio_test_swapbacked
        mss.shmem_thp += 1 << shift
    _account(k, mss, head, 1 << shift, young, dirty, mapcount)


def smaps_rollup(k: Kernel, task: Task) -> MemSize:
    total = MemSize()
    for vma in task.mm.vmas:
        total.add(smaps_vma(k, task.mm, vma))
    return total


def _flag_chars(vma: Vma) -> str:
    f = vma.flags
    return ("r" if f & VmFlags.READ else "-") + ("w" if f & VmFlags.WRITE else "-") + \
        ("x" if f & VmFlags.EXEC else "-") + ("s" if f & VmFlags.MAYSHARE else "p")


#: st_dev as show_map_vma prints it (MAJOR:MINOR in hex): the root disk (vda, 254:0),
#: /dev/shm's tmpfs, the internal shm_mnt of shared anonymous memory and memfds
FS_DEVICE = {"disk": "fe:00", "tmpfs": "00:1a", "memfd": "00:01"}
PROGRAM_INODE = 2146364


def maps_line(vma: Vma) -> str:
    """show_map_vma(): START-END PERMS OFFSET DEV INODE NAME; a file's path is its
    current one (d_path: `` (deleted)`` once unlinked)."""
    offset = vma.pgoff << 12 if vma.file is not None else 0
    name = vma.name
    if isinstance(vma.file, File):
        inode_ = vma.file.inode
        dev, inode = FS_DEVICE[inode_.fs or "disk"], inode_.ino
        name = inode_.map_name
    elif vma.file is not None and vma.file.kind == "file":
        dev, inode = "fe:00", PROGRAM_INODE
    elif vma.file is not None:
        dev, inode = "00:01", 1
    else:
        dev, inode = "00:00", 0
    head = f"{vma.start:08x}-{vma.end:08x} {_flag_chars(vma)} {offset:08x} {dev} {inode:<7d}"
    return f"{head:<73}{name}".rstrip() if name else head.rstrip()


def format_maps(task: Task) -> str:
    return "".join(maps_line(v) + "\n" for v in task.mm.vmas)


VM_FLAG_MNEMONICS = (
    (VmFlags.READ, "rd"), (VmFlags.WRITE, "wr"), (VmFlags.EXEC, "ex"), (VmFlags.SHARED, "sh"),
    (VmFlags.MAYREAD, "mr"), (VmFlags.MAYWRITE, "mw"), (VmFlags.MAYEXEC, "me"),
    (VmFlags.MAYSHARE, "ms"), (VmFlags.GROWSDOWN, "gd"), (VmFlags.PFNMAP, "pf"),
    (VmFlags.LOCKED, "lo"), (VmFlags.IO, "io"), (VmFlags.DONTCOPY, "dc"),
    (VmFlags.DONTEXPAND, "de"), (VmFlags.ACCOUNT, "ac"), (VmFlags.NORESERVE, "nr"),
    (VmFlags.HUGETLB, "ht"), (VmFlags.MIXEDMAP, "mm"), (VmFlags.HUGEPAGE, "hg"),
    (VmFlags.NOHUGEPAGE, "nh"), (VmFlags.DONTDUMP, "dd"),
)


def _mss_lines(mss: MemSize, rollup: bool) -> list[str]:
    def kb(value: float) -> str:
        return f"{int(value) >> 10:>8} kB"
    rows = [("Rss", mss.resident), ("Pss", mss.pss), ("Pss_Dirty", mss.pss_dirty)]
    if rollup:
        rows += [("Pss_Anon", mss.pss_anon), ("Pss_File", mss.pss_file),
                 ("Pss_Shmem", mss.pss_shmem)]
    rows += [("Shared_Clean", mss.shared_clean), ("Shared_Dirty", mss.shared_dirty),
             ("Private_Clean", mss.private_clean), ("Private_Dirty", mss.private_dirty),
             ("Referenced", mss.referenced), ("Anonymous", mss.anonymous), ("KSM", 0),
             ("LazyFree", mss.lazyfree), ("AnonHugePages", mss.anonymous_thp),
             ("ShmemPmdMapped", mss.shmem_thp), ("FilePmdMapped", mss.file_thp),
             ("Shared_Hugetlb", mss.shared_hugetlb), ("Private_Hugetlb", mss.private_hugetlb),
             ("Swap", mss.swap), ("SwapPss", mss.swap_pss), ("Locked", mss.pss_locked)]
    return [f"{name + ':':<16}{kb(value)}" for name, value in rows]


def thp_eligible(k: Kernel, mm: MmStruct, vma: Vma) -> bool:
    """THPeligible: thp_vma_allowable_orders(TVA_SMAPS) for any order, and a 2 MiB block fits;
    for shmem, some order whose block fits at the VMA's end and shmem_allowable_huge_orders
    at its pgoff (__thp_vma_allowable_orders)."""
    if vma.is_shmem() and not huge_memory.vma_thp_disabled(mm, vma):
        if not any(huge_memory.thp_vma_suitable_order(vma, vma.end - (4096 << o), o)
                   for o in shmem.SHMEM_ORDERS):
            return False
        assert isinstance(vma.file, shmem.PageCacheFile)
        return bool(shmem.shmem_allowable_huge_orders(k, vma.file, vma, vma.pgoff))
    if not vma.is_anonymous() or huge_memory.vma_thp_disabled(mm, vma):
        return False
    orders = [o for o in huge_memory.MTHP_ORDERS if huge_memory.order_enabled(k, vma, o)]
    return any(((vma.start + (4096 << o) - 1) & ~((4096 << o) - 1)) + (4096 << o) <= vma.end
               for o in orders)


def format_smaps(k: Kernel, task: Task) -> str:
    out = []
    for vma in task.mm.vmas:
        mss = smaps_vma(k, task.mm, vma)
        page = hugetlb.vma_kernel_pagesize(vma)
        out.append(maps_line(vma))
        out.append(f"{'Size:':<16}{vma.length >> 10:>8} kB")
        out.append(f"{'KernelPageSize:':<16}{page >> 10:>8} kB")
        out.append(f"{'MMUPageSize:':<16}{page >> 10:>8} kB")
        out.extend(_mss_lines(mss, rollup=False))
        out.append(f"THPeligible:    {int(thp_eligible(k, task.mm, vma)):>8}")   # "%8u"
        if pkeys.arch_pkeys_enabled(k):           # arch_show_smap(): "ProtectionKey:  %8u"
            out.append(f"ProtectionKey:  {pkeys.vma_pkey(vma):>8}")
        flags = " ".join(name for bit, name in VM_FLAG_MNEMONICS if vma.flags & bit)
        out.append(f"VmFlags: {flags} ")
    return "\n".join(out) + "\n"


def format_smaps_rollup(k: Kernel, task: Task) -> str:
    vmas = task.mm.vmas
    start = vmas[0].start if vmas else 0
    end = vmas[-1].end if vmas else 0
    head = f"{start:08x}-{end:08x} ---p 00000000 00:00 0"
    return "\n".join([f"{head:<73}[rollup]"] + _mss_lines(smaps_rollup(k, task), True)) + "\n"
