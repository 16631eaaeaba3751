"""One virtual address translated as the MMU does it, step by step, without changing anything.

Follows Intel SDM vol. 3A §4.5 (4- and 5-level paging: CR3, the 9-bit index taken at each
level, the entry read at ``table + index * 8``, PS leaves at the PDPTE and PDE), §4.7
(the page-fault error code) and §4.10 (the TLBs and paging-structure caches are looked
up before any walk). The walk is the hardware walker's own (``hw/walker.py``), run on a
copy-on-write view of physical memory so the Accessed and Dirty bits it would set are
reported, not written; the TLBs and page-walk caches are probed with
:meth:`LruTable.find`, which leaves their LRU order alone.

The CR3 is the one the task runs user code with: ``pgd_pfn`` and, with PTI, the user
PGD one page above it (``mm/pti.py``, arch/x86/mm/pti.c); its PCID is the task's ASID + 1,
with bit 11 for PTI's user half (arch/x86/mm/tlb.c ``kern_pcid``/``user_pcid``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pagewalk.hw import pgtable_types as pt
from pagewalk.hw.paging import LEVEL_NAMES, PagingMode
from pagewalk.hw.physmem import PhysicalMemory
from pagewalk.hw.walker import (
    ACCESS_IFETCH,
    ACCESS_READ,
    ACCESS_WRITE,
    WalkResult,
    pkey_denies,
    walk,
)
from pagewalk.mm import pkeys
from pagewalk.mm.filemap import describe_page
from pagewalk.mm.types import Vma

if TYPE_CHECKING:
    from pagewalk.hw.mmu import Mmu
    from pagewalk.kernel.kernel import Kernel
    from pagewalk.kernel.task import Task

ACCESS_NAMES = {"read": ACCESS_READ, "write": ACCESS_WRITE, "exec": ACCESS_IFETCH}
X86_CR3_PTI_PCID_USER_BIT = 11          # arch/x86/include/asm/processor-flags.h
PTI_USER_PGD_OFFSET = 4096              # the user PGD is the second page of the pair
PAGE_SIZE_NAMES = {12: "4 KiB", 21: "2 MiB", 30: "1 GiB"}
PF_BIT_NAMES = ((pt.X86_PF_PROT, "P (protection violation)", "not present"),
                (pt.X86_PF_WRITE, "W (write)", "read"),
                (pt.X86_PF_USER, "U (user mode)", "supervisor mode"),
                (pt.X86_PF_RSVD, "RSVD (reserved bit)", None),
                (pt.X86_PF_INSTR, "I (instruction fetch)", None),
                (pt.X86_PF_PK, "PK (protection key)", None))


class SnapshotMemory(PhysicalMemory):
    """Physical memory seen through a copy-on-write overlay: reads fall through to the
    real frames, writes (the walker's A/D updates) stay in ``written`` and change nothing."""

    def __init__(self, base: PhysicalMemory) -> None:  # no frames of its own
        self.base = base
        self.size = base.size
        self.nr_frames = base.nr_frames
        self.written: dict[int, int] = {}

    def read_u64(self, paddr: int) -> int:
        if paddr in self.written:
            return self.written[paddr]
        return self.base.read_u64(paddr)

    def write_u64(self, paddr: int, value: int) -> None:
        self.written[paddr] = value


@dataclass(frozen=True, slots=True)
class EntryRead:
    """One paging-structure entry the walk reads."""

    level: int              # 0 = the top level (PML5 or PML4)
    name: str               # PML5, PML4, PDPT, PD, PT
    index: int              # VA bits [shift + 8 : shift]
    table_paddr: int        # the table's physical address (CR3 or the entry above)
    entry_paddr: int        # table_paddr + index * 8
    entry: int              # the 64-bit word as it is in memory now
    role: str               # "table", "leaf" or "not present"
    target_paddr: int       # the next table or the page frame; 0 when not present
    sets: tuple[str, ...]   # flags the walk would set in this entry (A, D)
    cached: bool = False    # a page-walk-cache hit lets the MMU skip this read

    @property
    def flags(self) -> list[str]:
        """The entry's flag names; bit 8 of a non-present entry is Linux's PROTNONE."""
        names = pt.decode_flags(self.entry)
        if not self.entry & pt._PAGE_PRESENT and self.entry & pt._PAGE_PROTNONE:
            names = ["PROTNONE" if name == "G" else name for name in names]
        return names


@dataclass(frozen=True, slots=True)
class CacheProbe:
    """One TLB array or page-walk cache looked up for the address."""

    structure: str          # "L1 dTLB 4K", "STLB 4K+2M", "pde" ...
    key: str                # set and tag, or the key, as the lookup forms them
    hit: bool
    payload: int = 0        # the cached leaf entry (TLB) or next-table pfn (PWC)


@dataclass(slots=True)
class Explanation:
    """Everything ``pagewalk translate`` shows about one address."""

    vaddr: int
    access: str
    process: str
    pid: int
    levels: int
    canonical: bool
    cr3: int = 0
    pcid: int = 0
    pti: bool = False
    reads: list[EntryRead] = field(default_factory=list)
    outcome: str = ""                  # "translation", "page fault", "general protection"
    paddr: int = 0
    page_shift: int = 0
    error_code: int | None = None
    tlb: list[CacheProbe] = field(default_factory=list)
    tlb_note: str = ""
    tlb_hit: str | None = None         # "l1", "stlb" or None
    pwc: list[CacheProbe] = field(default_factory=list)
    mmu_source: str = "walk"           # what the MMU would answer from: l1, stlb, walk
    mmu_refs: int = 0                  # entries the MMU would read (after the PWC)
    vma: Vma | None = None
    kernel: str = ""                   # what the kernel would do with the fault
    pkey: int | None = None            # the leaf's protection key (bits 62:59), if a leaf
    pkru: int = 0                      # the task's PKRU as the MMU applies it
    page: str = ""                     # the page's file and offset, for a page-cache page

    @property
    def refs(self) -> int:
        """Entries a walk from CR3 reads (SDM: 4 for a 4 KiB page, 3 for 2 MiB, 2 for 1 GiB)."""
        return len(self.reads)

    def to_dict(self) -> dict[str, Any]:
        """What ``pagewalk translate --json`` prints, without its ``scenario`` and ``at``."""
        return self.to_json()

    def to_json(self) -> dict[str, Any]:
        return {
            "vaddr": f"{self.vaddr:#x}", "access": self.access, "process": self.process,
            "pid": self.pid, "paging_levels": self.levels, "canonical": self.canonical,
            "cr3": f"{self.cr3:#x}", "pcid": self.pcid, "pti": self.pti,
            "walk": [{"level": r.name, "index": r.index, "table_paddr": f"{r.table_paddr:#x}",
                      "entry_paddr": f"{r.entry_paddr:#x}", "entry": f"{r.entry:#018x}",
                      "flags": r.flags, "role": r.role, "target_paddr": f"{r.target_paddr:#x}",
                      "would_set": list(r.sets), "skipped_by_pwc": r.cached}
                     for r in self.reads],
            "refs": self.refs,
            "outcome": self.outcome,
            "paddr": f"{self.paddr:#x}" if self.outcome == "translation" else None,
            "page": self.page or None,
            "page_size": 1 << self.page_shift if self.outcome == "translation" else None,
            "error_code": self.error_code,
            "error_bits": error_code_names(self.error_code) if self.error_code is not None else [],
            "tlb": [{"array": p.structure, "key": p.key, "hit": p.hit,
                     "entry": f"{p.payload:#018x}" if p.hit else None} for p in self.tlb],
            "tlb_note": self.tlb_note,
            "pwc": [{"cache": p.structure, "key": p.key, "hit": p.hit,
                     "table_pfn": f"{p.payload:#x}" if p.hit else None} for p in self.pwc],
            "mmu": {"source": self.mmu_source, "walk_refs": self.mmu_refs},
            "vma": vma_json(self.vma),
            "kernel": self.kernel,
            "pkey": self.pkey, "pkru": f"{self.pkru:#010x}",
        }


def vma_json(vma: Vma | None) -> dict[str, Any] | None:
    if vma is None:
        return None
    from pagewalk.proc.task_mmu import maps_line
    return {"start": f"{vma.start:#x}", "end": f"{vma.end:#x}", "maps": maps_line(vma)}


def error_code_names(code: int) -> list[str]:
    """The set bits of an x86 page-fault error code, with the meaning of the clear P bit."""
    names = []
    for bit, name, clear in PF_BIT_NAMES:
        if code & bit:
            names.append(name)
        elif clear is not None and bit in (pt.X86_PF_PROT,):
            names.append(clear)
    return names


# -- the task's CR3 --------------------------------------------------------------------------

def user_cr3(k: Kernel, task: Task) -> tuple[int, int, bool]:
    """(CR3, PCID, TLB usable) the task runs user code with, as switch_mm_irqs_off() and
    SWITCH_TO_USER_CR3 load it. ``TLB usable`` is False when switching to the task would
    flush what the TLBs hold for it (no ASID yet, or no PCID and another task current)."""
    mm = task.mm
    root = mm.pgd_pfn << 12
    if k.pti:
        root += PTI_USER_PGD_OFFSET
    if not k.mmu.pcid_enabled:
        return root, 0, k.current is task
    asid = k.mm_asid.get(id(mm))
    if asid is None:
        return root | 1, 1, False           # choose_new_asid() would flush
    pcid = asid + 1
    if k.pti:
        pcid |= 1 << X86_CR3_PTI_PCID_USER_BIT
    return root | pcid, pcid, True


# -- probes of the TLBs and page-walk caches (no LRU update) ---------------------------------

def probe_tlb(mmu: Mmu, vaddr: int, access: int, pcid: int) -> tuple[list[CacheProbe], Any]:
    """Look ``vaddr`` up in every TLB array the MMU would try, in its order (L1 of the
    access's kind for each page size, then the STLB). Returns the probes and the first
    hit as (level, shift, payload), or None."""
    from pagewalk.hw.tlb import PAGE_SHIFTS, SIZE_CODE, VA_FIELD_MASK, tlb_tag
    tlb = mmu.tlb
    probes: list[CacheProbe] = []
    first = None
    if tlb is None:
        return probes, None
    for level, level_name in ((1, "l1"), (2, "stlb")):
        for shift in PAGE_SHIFTS:
            index = int(tlb.routes[level - 1, access, SIZE_CODE[shift]])
            if index < 0:
                continue
            table = tlb.tables[index]
            set_index = table.set_of((vaddr & VA_FIELD_MASK) >> shift)
            tag = tlb_tag(vaddr, shift, pcid)
            way = table.find(set_index, tag)
            payload = int(table.payload[set_index, way]) if way >= 0 else 0
            name = f"{tlb.geometry.arrays[index].name} ({PAGE_SIZE_NAMES[shift]})"
            probes.append(CacheProbe(name, f"set {set_index} tag {tag:#x}", way >= 0, payload))
            if way >= 0 and first is None:
                first = (level_name, shift, payload)
    return probes, first


def tlb_entry_allows(leaf: int, access: int, user: bool, pkru: int = 0) -> bool:
    """A TLB hit serves the access only if the cached rights and key allow it and a write
    finds the entry dirty (the same rule as ``Mmu._tlb_entry_allows``; tests compare them)."""
    if user and not leaf & pt._PAGE_USER:
        return False
    if leaf & pt._PAGE_USER and pkey_denies(leaf, access, pkru):
        return False
    if access == ACCESS_WRITE:
        return bool(leaf & pt._PAGE_RW) and bool(leaf & pt._PAGE_DIRTY)
    return not (access == ACCESS_IFETCH and leaf & pt._PAGE_NX)


def probe_pwc(mmu: Mmu, vaddr: int, pcid: int) -> tuple[list[CacheProbe], int, int]:
    """Look ``vaddr`` up in the page-walk caches as ``Mmu._walk`` does (PDE cache first,
    upwards). Returns the probes and where the walk would start: (level, table pfn)."""
    from pagewalk.hw.pwc import PWC_NAMES, pwc_key
    pwc = mmu.pwc
    probes: list[CacheProbe] = []
    if pwc is None:
        return probes, 0, mmu.root_pfn
    for row in range(len(PWC_NAMES) - 1, pwc.top_row - 1, -1):
        level = row - pwc.top_row
        table = pwc.tables[row]
        if table is None:
            continue
        _, _, shift, bits = (int(x) for x in pwc.layout[row])
        key = pwc_key(vaddr, shift, bits, pcid)
        way = table.find(0, key)
        payload = int(table.payload[0, way]) if way >= 0 else 0
        probes.append(CacheProbe(PWC_NAMES[row].upper(), f"key {key:#x}", way >= 0, payload))
        if way >= 0:
            return probes, level + 1, payload
    return probes, 0, -1


# -- the explanation ---------------------------------------------------------------------------

def explain_translation(k: Kernel, task: Task, vaddr: int, access: str = "read") -> Explanation:
    """How the MMU translates a user-mode ``access`` to ``vaddr`` in ``task`` right now."""
    kind = ACCESS_NAMES[access]
    mode = PagingMode(k.levels)
    out = Explanation(vaddr, access, task.comm, task.pid, k.levels, mode.is_canonical(vaddr),
                      pti=k.pti)
    from pagewalk.mm.vma import vma_lookup
    out.vma = vma_lookup(task.mm, vaddr) if vaddr < (1 << 64) else None
    if not out.canonical:
        out.outcome = "general protection"
        out.mmu_source = "none"
        out.kernel = (f"#GP, not #PF: bits 63..{mode.va_bits - 1} differ; no walk, "
                      "no TLB lookup; the kernel sends SIGSEGV")
        return out
    out.cr3, out.pcid, tlb_usable = user_cr3(k, task)
    root_pfn = (out.cr3 & pt.PTE_PFN_MASK) >> 12
    memory = SnapshotMemory(k.physmem)
    out.pkru = pkeys.task_pkru(k, task)
    result = walk(memory, mode.shifts, root_pfn, vaddr, kind, True, pkru=out.pkru)
    out.reads = entry_reads(result, mode, root_pfn, memory.written)
    out.pkey = next((pt.pte_pkey(r.entry) for r in out.reads if r.role == "leaf"), None)
    _outcome(out, result)
    if out.outcome == "translation":
        out.page = describe_page(k, out.paddr >> 12)
    _mmu_path(out, k, vaddr, kind, tlb_usable)
    if out.error_code is not None:
        out.kernel = kernel_response(k, task, vaddr, out.error_code)
    return out


def entry_reads(result: WalkResult, mode: PagingMode, root_pfn: int,
                written: dict[int, int]) -> list[EntryRead]:
    names = LEVEL_NAMES[mode.levels]
    reads = []
    table_paddr = root_pfn << 12
    for step in result.steps:
        entry = step.entry
        present = bool(entry & pt._PAGE_PRESENT)
        leaf = present and (step.shift == 12 or bool(entry & pt._PAGE_PSE))
        role = "leaf" if leaf else ("table" if present else "not present")
        target = 0
        if leaf:
            target = (pt.huge_pfn(entry, step.shift) if step.shift > 12 else pt.pte_pfn(entry)) << 12
        elif present:
            target = pt.pte_pfn(entry) << 12
        new = written.get(step.entry_paddr, entry)
        sets = tuple(name for bit, name in ((pt._PAGE_ACCESSED, "A"), (pt._PAGE_DIRTY, "D"))
                     if new & bit and not entry & bit)
        reads.append(EntryRead(step.level, names[step.level], (step.entry_paddr & 0xFFF) >> 3,
                               table_paddr, step.entry_paddr, entry, role, target, sets))
        table_paddr = target
    return reads


def _outcome(out: Explanation, result: WalkResult) -> None:
    if result.fault_code is not None:
        out.outcome = "page fault"
        out.error_code = result.fault_code
        return
    out.outcome = "translation"
    out.paddr = result.paddr
    out.page_shift = result.leaf_shift


def _mmu_path(out: Explanation, k: Kernel, vaddr: int, kind: int, tlb_usable: bool) -> None:
    """What the MMU would do first: a TLB hit, or a walk shortened by the PWC."""
    mmu = k.mmu
    if mmu.tlb is None:
        out.tlb_note = "this machine models no TLB"
    elif not tlb_usable:
        out.tlb_note = ("switching to this task loads CR3 with a flush "
                        "(no ASID yet, or no PCID): every lookup misses")
    else:
        out.tlb, hit = probe_tlb(mmu, vaddr, kind, out.pcid)
        if hit is not None:
            level, _, payload = hit
            if tlb_entry_allows(payload, kind, True, out.pkru):
                out.tlb_hit = level
                out.mmu_source = level
                out.mmu_refs = 0
                return
            out.tlb_note = ("the hit does not serve this access (rights, or a write to a "
                            "clean entry): the MMU walks")
    start_level, table = 0, out.cr3 >> 12
    if mmu.pwc is not None and tlb_usable:
        out.pwc, start_level, cached_table = probe_pwc(mmu, vaddr, out.pcid)
        if start_level:
            table = cached_table
    for i, read in enumerate(out.reads):
        if read.level < start_level:
            out.reads[i] = EntryRead(read.level, read.name, read.index, read.table_paddr,
                                     read.entry_paddr, read.entry, read.role,
                                     read.target_paddr, read.sets, cached=True)
    if start_level == 0:
        out.mmu_refs = out.refs
        return
    mode = PagingMode(k.levels)
    shortened = walk(SnapshotMemory(k.physmem), mode.shifts, table, vaddr, kind, True,
                     start_level, pkru=out.pkru)
    out.mmu_refs = shortened.refs


def kernel_response(k: Kernel, task: Task, vaddr: int, code: int) -> str:
    """What do_user_addr_fault() makes of the fault (arch/x86/mm/fault.c)."""
    from pagewalk.kernel.kernel import access_error
    from pagewalk.mm.vma import find_vma
    vma = find_vma(task.mm, vaddr)
    if vma is None or vma.start > vaddr:
        return "no VMA covers the address: SIGSEGV (SEGV_MAPERR)"
    if pkeys.bad_area_access_from_pkeys(k, code, vma, pkeys.task_pkru(k, task)):
        return (f"protection key {pkeys.vma_pkey(vma)} refuses the access (access_error): "
                "SIGSEGV (SEGV_PKUERR)")
    if access_error(code, vma):
        return "the VMA does not allow this access (access_error): SIGSEGV (SEGV_ACCERR)"
    if code & pt.X86_PF_PROT and code & pt.X86_PF_WRITE:
        return "the VMA allows the write: handle_mm_fault -> do_wp_page (copy-on-write)"
    if vma.is_hugetlb():
        return "the VMA allows it: handle_mm_fault -> hugetlb_fault maps a huge page"
    if vma.is_anonymous():
        what = "a new zeroed page" if code & pt.X86_PF_WRITE else "the zero page (read-only)"
        return (f"the VMA allows it: handle_mm_fault -> do_anonymous_page (or a THP) maps {what}")
    return "the VMA allows it: handle_mm_fault -> do_fault maps the file page"


def resolve_address(text: str, task: Task, maps: dict[str, tuple[int, int]]) -> int:
    """ADDR: a number (hex or decimal), or ``NAME[+OFFSET]`` with NAME a scenario mapping
    of the process or a VMA name such as ``[heap]``. ValueError on anything else."""
    from pagewalk.units import parse_addr, parse_size
    text = text.strip()
    if not text:
        raise ValueError("empty address: give a number (0x4d9000) or NAME[+OFFSET] (heap+0x1000)")
    try:
        return parse_addr(text)
    except ValueError:
        pass
    name, _, offset_text = text.partition("+")
    offset = parse_size(offset_text.strip()) if offset_text else 0
    name = name.strip()
    if not name:       # the bss VMA has no name: an empty one must not find it
        raise ValueError(f"bad address {text!r}: no mapping name before '+'")
    if name in maps:
        return maps[name][0] + offset
    for vma in task.mm.vmas:
        if vma.name == name:
            return vma.start + offset
    known = sorted(set(maps) | {v.name for v in task.mm.vmas if v.name.startswith("[")})
    raise ValueError(f"bad address {text!r}: not a number, nor a mapping of {task.comm} "
                     f"(mappings: {', '.join(known)})")
