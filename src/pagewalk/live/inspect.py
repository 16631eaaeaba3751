"""Inspect a real process: its VMAs, how their memory is mapped, what their page tables
cost, and what the same footprint would cost with 2 MiB pages.

Sources (read from outside; the process is not stopped, so this is a snapshot of a
moving target): /proc/PID/smaps (per VMA: Rss, AnonHugePages, Shmem/FilePmdMapped,
Private/Shared_Hugetlb, KernelPageSize, VmFlags; fs/proc/task_mmu.c show_smap),
/proc/PID/status (VmPTE and the Rss lines) and the pagemap runs of pagemap.py.

Page-table cost, counted from which ranges hold entries (present pages, and swap or
guard entries, which live in PTE tables too), on x86_64 4-level paging:

* a 4 KiB page needs the PTE table of its 2 MiB range, a PMD table for its 1 GiB range
  and a PUD table for its 512 GiB range; a PMD-mapped page (THP, 2 MiB hugetlb) needs
  no PTE table, a PUD-mapped one (1 GiB hugetlb) only the PUD table;
* Linux also keeps one PTE table *deposited* under every PMD-mapped anonymous THP (and
  huge zero page), ready for a split (mm/huge_memory.c pgtable_trans_huge_deposit):
  the walk never reads it, but ``mm->pgtables_bytes`` counts it;
* VmPTE (``mm_pgtables_bytes``: PTE, PMD and PUD tables, not the PGD) is the kernel's
  own count. It is larger than what the present pages need when tables outlived their
  pages (munmap inside a table's range, MADV_DONTNEED, page reclaim).

A VMA's cost counts every table its entries use, shared with a neighbour or not; the
process total counts each table once. "With 2 MiB pages" maps every 2 MiB-aligned range
that lies wholly inside a VMA (not hugetlb) and holds an entry with one 2 MiB page
(resident in full), and leaves the rest, at the VMA's unaligned ends, in 4 KiB pages.

Page-size map (``pagewalk inspect PID --replay``): a JSON list of the process's present
pages as ranges, sorted, non-overlapping, each aligned to its page size::

    [{"start": "0x400000", "end": "0x4fb000", "page_shift": 12},
     {"start": "0x7fffe7e00000", "end": "0x7ffff3e00000", "page_shift": 21}]

``start`` and ``end`` (half-open) are hex strings, as the ``mappings`` of a report
(:func:`load_page_size_map` also takes integers); ``page_shift`` is 12, 21 or 30.
Adjacent ranges of one size are merged; addresses not listed hold no present page.
Its triples feed ``pagewalk.trace.replay.PageSizeMap.from_ranges``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from pagewalk.live import procfs
from pagewalk.live.errors import LiveError
from pagewalk.live.pagemap import PageRun, read_runs
from pagewalk.live.probe import TASK_SIZE
from pagewalk.units import PMD_SHIFT, PUD_SHIFT, KiB

TABLE_SIZE = 4 * KiB
PUD_TABLE_SHIFT = 39               # one PUD table maps 512 GiB
SIZE_NAMES = {12: "4KiB", 21: "2MiB", 30: "1GiB"}
SPECIAL_VMAS = ("[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]")
_HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) [0-9a-f]+ \S+ (\d+)\s*(.*)$")


@dataclass(frozen=True, slots=True)
class TableCount:
    """Page-table pages by level; ``deposited`` PTE tables are held for huge PMDs."""

    pte: int = 0
    pmd: int = 0
    pud: int = 0
    deposited: int = 0

    @property
    def size(self) -> int:
        """Bytes of the tables a hardware walk uses."""
        return (self.pte + self.pmd + self.pud) * TABLE_SIZE

    @property
    def linux_size(self) -> int:
        """Bytes Linux counts in VmPTE: the walked tables and the deposited ones."""
        return self.size + self.deposited * TABLE_SIZE

    def to_json(self) -> dict[str, int]:
        return {"pte": self.pte, "pmd": self.pmd, "pud": self.pud,
                "deposited_pte": self.deposited, "bytes": self.size,
                "linux_bytes": self.linux_size}


@dataclass(slots=True)
class TableSet:
    """The tables in use, as the index of the range each maps (2 MiB for a PTE table,
    1 GiB for a PMD table, 512 GiB for a PUD table); sets, so shared tables count once."""

    pte: set[int] = field(default_factory=set)
    pmd: set[int] = field(default_factory=set)
    pud: set[int] = field(default_factory=set)
    deposited: set[int] = field(default_factory=set)   # 2 MiB ranges of anonymous huge PMDs

    def add(self, start: int, end: int, page_shift: int, deposit: bool = False) -> None:
        """Entries for ``[start, end)`` in pages of ``1 << page_shift``."""
        last = end - 1
        if page_shift == 12:
            self.pte.update(range(start >> PMD_SHIFT, (last >> PMD_SHIFT) + 1))
        elif page_shift == PMD_SHIFT and deposit:
            self.deposited.update(range(start >> PMD_SHIFT, (last >> PMD_SHIFT) + 1))
        if page_shift <= PMD_SHIFT:
            self.pmd.update(range(start >> PUD_SHIFT, (last >> PUD_SHIFT) + 1))
        self.pud.update(range(start >> PUD_TABLE_SHIFT, (last >> PUD_TABLE_SHIFT) + 1))

    def update(self, other: TableSet) -> None:
        self.pte |= other.pte
        self.pmd |= other.pmd
        self.pud |= other.pud
        self.deposited |= other.deposited

    def count(self) -> TableCount:
        return TableCount(len(self.pte), len(self.pmd), len(self.pud), len(self.deposited))


@dataclass(slots=True)
class Footprint:
    """Tables, resident bytes and pages (TLB entries to map it all) of some mappings."""

    tables: TableSet = field(default_factory=TableSet)
    resident: int = 0          # bytes in present pages (hugetlb included)
    pages: int = 0

    def update(self, other: Footprint) -> None:
        self.tables.update(other.tables)
        self.resident += other.resident
        self.pages += other.pages

    def to_json(self) -> dict[str, Any]:
        return {"page_tables": self.tables.count().to_json(),
                "resident_bytes": self.resident, "pages": self.pages}


@dataclass(slots=True)
class VmaInspection:
    """One VMA: smaps' view, the pagemap runs, and the two footprints."""

    start: int
    end: int
    perms: str
    name: str
    anonymous: bool                  # no file behind it (inode 0, not a special mapping)
    hugetlb: bool
    kernel_page_size: int            # bytes
    smaps: dict[str, int]            # the kB fields of its smaps entry
    runs: list[PageRun] = field(default_factory=list)
    now: Footprint = field(default_factory=Footprint)
    with_2mib: Footprint = field(default_factory=Footprint)

    @property
    def huge_shift(self) -> int:
        return self.kernel_page_size.bit_length() - 1 if self.hugetlb else PMD_SHIFT

    def present(self) -> dict[str, int]:
        """Present bytes by page size."""
        sizes = {name: 0 for name in SIZE_NAMES.values()}
        for run in self.runs:
            if run.present:
                sizes[SIZE_NAMES[run.page_shift]] += run.size
        return sizes

    def to_json(self) -> dict[str, Any]:
        kb = self.smaps
        return {
            "start": f"{self.start:#x}", "end": f"{self.end:#x}", "perms": self.perms,
            "name": self.name, "kernel_page_size": self.kernel_page_size,
            "rss_bytes": kb.get("Rss", 0) * KiB,
            "thp_bytes": (kb.get("AnonHugePages", 0) + kb.get("ShmemPmdMapped", 0)
                          + kb.get("FilePmdMapped", 0)) * KiB,
            "hugetlb_bytes": (kb.get("Private_Hugetlb", 0) + kb.get("Shared_Hugetlb", 0)) * KiB,
            "swap_bytes": kb.get("Swap", 0) * KiB,
            "present_bytes": self.present(),
            "resident_bytes": self.now.resident,
            "page_tables": self.now.tables.count().to_json(),
            "pages": self.now.pages,
            "with_2mib_pages": self.with_2mib.to_json(),
        }


@dataclass(slots=True)
class ProcessInspection:
    pid: int
    comm: str
    status: dict[str, int]           # the kB lines of /proc/PID/status
    vmas: list[VmaInspection]
    page_sizes_known: bool           # False: no PAGEMAP_SCAN, THPs counted as 4 KiB pages
    now: Footprint = field(default_factory=Footprint)
    with_2mib: Footprint = field(default_factory=Footprint)

    @property
    def vm_pte(self) -> int:
        """VmPTE, bytes."""
        return self.status.get("VmPTE", 0) * KiB

    def page_size_map(self) -> list[dict[str, Any]]:
        """The present pages as the ranges of the module docstring's format."""
        ranges: list[list[int]] = []
        for vma in self.vmas:
            for run in vma.runs:
                if not run.present:
                    continue
                if ranges and ranges[-1][1] == run.start and ranges[-1][2] == run.page_shift:
                    ranges[-1][1] = run.end
                else:
                    ranges.append([run.start, run.end, run.page_shift])
        return [{"start": f"{s:#x}", "end": f"{e:#x}", "page_shift": p} for s, e, p in ranges]

    def to_json(self) -> dict[str, Any]:
        tables = self.now.tables.count()
        return {
            "pid": self.pid, "comm": self.comm, "kernel": procfs.kernel_release(),
            "page_sizes_known": self.page_sizes_known,
            "status": {key: self.status.get(key, 0) * KiB for key in
                       ("VmSize", "VmRSS", "RssAnon", "RssFile", "RssShmem", "VmPTE",
                        "HugetlbPages")},
            "vmas": [vma.to_json() for vma in self.vmas],
            "total": {
                "rss_bytes": sum(v.smaps.get("Rss", 0) for v in self.vmas) * KiB,
                "hugetlb_bytes": sum(v.smaps.get("Private_Hugetlb", 0)
                                     + v.smaps.get("Shared_Hugetlb", 0) for v in self.vmas) * KiB,
                "resident_bytes": self.now.resident,
                "page_tables": tables.to_json(), "pages": self.now.pages,
                "vm_pte_bytes": self.vm_pte,
                "tables_beyond_need_bytes": self.vm_pte - tables.linux_size,
                "with_2mib_pages": self.with_2mib.to_json(),
            },
        }


# -- reading ------------------------------------------------------------------------------------

def read_smaps(pid: int) -> list[VmaInspection]:
    """The user VMAs of /proc/PID/smaps (the [vsyscall] gate above user space is left out)."""
    vmas: list[VmaInspection] = []
    path = f"/proc/{pid}/smaps"
    for line in procfs.read_text(path).splitlines():
        header = _HEADER.match(line)
        if header:
            start, end = int(header.group(1), 16), int(header.group(2), 16)
            name = header.group(5).strip()
            vmas.append(VmaInspection(start, end, header.group(3), name,
                                      header.group(4) == "0" and name not in SPECIAL_VMAS,
                                      False, 4 * KiB, {}))
            continue
        if not vmas:
            continue
        key, _, value = line.partition(":")
        if key == "VmFlags":
            vmas[-1].hugetlb = "ht" in value.split()
        elif value.strip().endswith("kB"):
            vmas[-1].smaps[key] = int(value.split()[0])
    for vma in vmas:
        vma.kernel_page_size = vma.smaps.get("KernelPageSize", 4) * KiB
        vma.anonymous = vma.anonymous and not vma.hugetlb
    return [vma for vma in vmas if vma.end <= TASK_SIZE]


def inspect_process(pid: int) -> ProcessInspection:
    """Read process ``pid`` and count what its mappings cost (see the module docstring)."""
    status = procfs.read_status(pid)
    comm = procfs.read_comm(pid)
    vmas = read_smaps(pid)
    if not vmas:
        raise LiveError(f"process {pid} ({comm}) has no user address space "
                        "(a kernel thread, or it is exiting)")
    runs, known = read_runs(pid, [(v.start, v.end, v.huge_shift, v.hugetlb) for v in vmas])
    result = ProcessInspection(pid, comm, status, vmas, known)
    for vma, vma_runs in zip(vmas, runs):
        vma.runs = vma_runs
        vma.now = footprint_now(vma)
        vma.with_2mib = footprint_with_2mib(vma)
        result.now.update(vma.now)
        result.with_2mib.update(vma.with_2mib)
    return result


# -- counting -----------------------------------------------------------------------------------

def footprint_now(vma: VmaInspection) -> Footprint:
    """What the VMA's entries use as they are mapped."""
    now = Footprint()
    for run in vma.runs:
        deposit = run.page_shift == PMD_SHIFT and not run.file and not vma.hugetlb
        now.tables.add(run.start, run.end, run.page_shift, deposit)
        if run.present:
            now.resident += run.size
            now.pages += run.size >> run.page_shift
    return now


def footprint_with_2mib(vma: VmaInspection) -> Footprint:
    """The same entries with every whole 2 MiB range of the VMA in one 2 MiB page."""
    est = Footprint()
    huge: dict[int, bool] = {}                        # 2 MiB range index -> holds a page
    first = (vma.start + (1 << PMD_SHIFT) - 1) >> PMD_SHIFT   # whole ranges inside the VMA
    last = (vma.end >> PMD_SHIFT) - 1
    for run in vma.runs:
        if run.page_shift != 12 or vma.hugetlb:
            est.tables.add(run.start, run.end, run.page_shift,
                           run.page_shift == PMD_SHIFT and not run.file and not vma.hugetlb)
            if run.present:
                est.resident += run.size
                est.pages += run.size >> run.page_shift
            continue
        for block in range(run.start >> PMD_SHIFT, ((run.end - 1) >> PMD_SHIFT) + 1):
            if first <= block <= last:
                huge[block] = huge.get(block, False) or run.present
                continue
            low, high = max(run.start, block << PMD_SHIFT), min(run.end, (block + 1) << PMD_SHIFT)
            est.tables.add(low, high, 12)
            if run.present:
                est.resident += high - low
                est.pages += (high - low) >> 12
    for block, present in huge.items():
        est.tables.add(block << PMD_SHIFT, (block + 1) << PMD_SHIFT, PMD_SHIFT, vma.anonymous)
        if present:
            est.resident += 1 << PMD_SHIFT
            est.pages += 1
    return est


# -- the page-size map ----------------------------------------------------------------------------

def load_page_size_map(text: str) -> list[tuple[int, int, int]]:
    """``(start, end, page_shift)`` triples from a page-size map (the JSON of the module
    docstring); ValueError naming the entry if one is malformed."""
    try:
        document = json.loads(text)
    except ValueError as err:
        raise ValueError(f"not JSON: {err}") from None
    if not isinstance(document, list):
        raise ValueError(  # noqa: TRY004 (one exception type for every malformed file)
            "a page-size map is a JSON list of {start, end, page_shift}")
    triples = []
    for index, entry in enumerate(document):
        if not isinstance(entry, dict) or set(entry) != {"start", "end", "page_shift"}:
            raise ValueError(f"entry {index}: expected exactly start, end and page_shift")
        try:
            start, end = (_address(entry[key]) for key in ("start", "end"))
        except ValueError as err:
            raise ValueError(f"entry {index}: {err}") from None
        shift = entry["page_shift"]
        if shift not in SIZE_NAMES or isinstance(shift, bool):
            raise ValueError(f"entry {index}: page_shift must be 12, 21 or 30, got {shift!r}")
        triples.append((start, end, shift))
    return triples


def _address(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        return int(value, 0)
    raise ValueError(f"bad address {value!r}")


__all__ = ["Footprint", "ProcessInspection", "TableCount", "TableSet", "VmaInspection",
           "footprint_now", "footprint_with_2mib", "inspect_process", "load_page_size_map",
           "read_smaps"]
