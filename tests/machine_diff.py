"""Where two kernels that ran the same steps differ: the first difference, said readably.

The strict state machine runs every step on two machines, one touching memory through
the compiled loop (mm/fastpath.touch) and one through the reference path
(fastpath.touch_reference, every access via Kernel.user_access); STYLE rule 12 says they
must leave identical machines. ``first_difference`` compares, in this order, and
returns a sentence for the first thing that differs (None when nothing does):

* the tasks and their VMAs (start, end, flags, pgoff, page_prot);
* each mm's page tables, walked from its PGD through physical memory: the first entry
  whose word differs, named by process, level and virtual address;
* per-mm counters (rss_stat and pgtables_bytes, total_vm ..., hiwater), per-task
  min_flt/maj_flt and MMU counters;
* vmstat node counters and events, by the kernel's names;
* the TLBs and page-walk caches (tags, LRU stamps, payloads, clock, hit/miss counts);
* the buddy free lists (heads and counts per zone and order) and struct pages (flags,
  order, refcount, mapcount, compound head, list links);
* hugetlb pools, THP bookkeeping (deposited tables, entire mapcounts, deferred split,
  mTHP counters, the huge zero page), committed memory;
* the contents of every stored physical frame.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from pagewalk.hw.mmu import MmuStat
from pagewalk.mm.pgtable import USER_PGD_ENTRIES
from pagewalk.mm.types import MmStat
from pagewalk.mm.vmstat import NodeStat, VmEvent

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel
    from pagewalk.mm.types import MmStruct

LEVEL_NAMES = {5: ("PGD", "P4D", "PUD", "PMD", "PTE"), 4: ("PGD", "PUD", "PMD", "PTE")}
PSE = 1 << 7
PRESENT_OR_PROTNONE = 1 | (1 << 8)
MM_FIELDS = ("total_vm", "data_vm", "exec_vm", "stack_vm", "locked_vm", "pinned_vm",
             "hiwater_rss", "hiwater_vm", "start_brk", "brk")
HSTATE_FIELDS = ("nr_huge_pages", "free_huge_pages", "resv_huge_pages", "surplus_huge_pages",
                 "nr_overcommit_huge_pages")


def _first_index(a: Any, b: Any) -> tuple[int, ...] | None:
    """The first index at which two equally shaped arrays differ, or None."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return (-1,)
    diff = np.argwhere(a != b)
    return None if not len(diff) else tuple(int(i) for i in diff[0])


def _array(what: str, a: Any, b: Any, names: Any = None,
           labels: tuple[str, str] = ("A", "B")) -> str | None:
    at = _first_index(a, b)
    if at is None:
        return None
    if at == (-1,):
        return f"{what}: shapes {np.shape(a)} and {np.shape(b)}"
    name = names(at[0]).name if names is not None and len(at) == 1 else at
    return (f"{what}[{name}]: {labels[0]} {np.asarray(a)[at]}, "
            f"{labels[1]} {np.asarray(b)[at]}")


def _show_vma(v: tuple[int, int, int, int, int] | None) -> str:
    if v is None:
        return "no VMA"
    return f"{v[0]:#x}-{v[1]:#x} flags {v[2]:#x} pgoff {v[3]:#x} prot {v[4]:#x}"


def _tables(ka: Kernel, kb: Kernel, comm: str, mma: MmStruct, mmb: MmStruct,
            labels: tuple[str, str]) -> str | None:
    """Walk both page-table trees side by side; report the first differing word."""
    shifts = ka.pgtables.shifts
    names = LEVEL_NAMES.get(len(shifts), tuple(f"L{i}" for i in range(len(shifts))))

    def visit(pfn_a: int, pfn_b: int, level: int, base: int) -> str | None:
        wa, wb = ka.physmem.frame_words(pfn_a), kb.physmem.frame_words(pfn_b)
        if level == 0:
            wa, wb = wa[:USER_PGD_ENTRIES], wb[:USER_PGD_ENTRIES]
        shift = shifts[level]
        for index in np.flatnonzero((wa != 0) | (wb != 0)):
            ea, eb = int(wa[index]), int(wb[index])
            vaddr = base | (int(index) << shift)
            if ea != eb:
                return (f"{comm}: {names[level]} entry for {vaddr:#x} (table pfn {pfn_a:#x}"
                        f"/{pfn_b:#x}, index {int(index)}): {labels[0]} {ea:#018x}, "
                        f"{labels[1]} {eb:#018x}")
            leaf = shift == 12 or ea & PSE
            if not leaf and ea & 1:
                found = visit(ea >> 12 & ((1 << 40) - 1), eb >> 12 & ((1 << 40) - 1),
                              level + 1, vaddr)
                if found:
                    return found
        return None

    return visit(mma.pgd_pfn, mmb.pgd_pfn, 0, 0)


def first_difference(ka: Kernel, kb: Kernel,
                     labels: tuple[str, str] = ("fast", "reference")) -> str | None:
    """The first observable difference between two kernels, as one line, or None."""
    la, lb = labels
    if sorted(ka.tasks) != sorted(kb.tasks):
        return f"tasks: {la} {sorted(ka.tasks)}, {lb} {sorted(kb.tasks)}"
    for comm, ta in ka.tasks.items():
        tb = kb.tasks[comm]
        va = [(v.start, v.end, int(v.flags), v.pgoff, v.page_prot) for v in ta.mm.vmas]
        vb = [(v.start, v.end, int(v.flags), v.pgoff, v.page_prot) for v in tb.mm.vmas]
        if va != vb:
            i = next((i for i, (x, y) in enumerate(zip(va, vb)) if x != y), min(len(va), len(vb)))
            return (f"{comm}: VMA {i}: {la} {_show_vma(va[i] if i < len(va) else None)}, "
                    f"{lb} {_show_vma(vb[i] if i < len(vb) else None)}")
        found = _tables(ka, kb, comm, ta.mm, tb.mm, labels)
        if found:
            return found
        found = _array(f"{comm}: mm counters", ta.mm.stat, tb.mm.stat, MmStat, labels)
        if found:
            return found
        for name in MM_FIELDS:
            if getattr(ta.mm, name) != getattr(tb.mm, name):
                return (f"{comm}: mm.{name}: {la} {getattr(ta.mm, name)}, "
                        f"{lb} {getattr(tb.mm, name)}")
        for name in ("min_flt", "maj_flt"):
            if getattr(ta, name) != getattr(tb, name):
                return f"{comm}: {name}: {la} {getattr(ta, name)}, {lb} {getattr(tb, name)}"
        found = _array(f"{comm}: MMU counters", ta.mmu_counters, tb.mmu_counters, MmuStat,
                       labels)
        if found:
            return found
    for what, a, b, names in (("vmstat", ka.node_stat, kb.node_stat, NodeStat),
                              ("vm events", ka.vm_events, kb.vm_events, VmEvent)):
        found = _array(what, a, b, names, labels)
        if found:
            return found
    for cache in ("tlb", "pwc"):
        ca, cb = getattr(ka.mmu, cache), getattr(kb.mmu, cache)
        if ca is None or cb is None:
            continue
        for name in ("tags", "stamps", "payload", "clock"):
            found = _array(f"{cache} {name}", getattr(ca.storage, name),
                           getattr(cb.storage, name), None, labels)
            if found:
                return found
        found = _array(f"{cache} hit/miss counts", ca.stats, cb.stats, None, labels)
        if found:
            return found
    found = _array("MMU counters", ka.mmu.counters, kb.mmu.counters, MmuStat, labels)
    if found:
        return found
    for name in ("free_head", "nr_free"):
        found = _array(f"buddy {name} (zone, order)", getattr(ka.buddy, name),
                       getattr(kb.buddy, name), None, labels)
        if found:
            return found
    for name in ("flags", "order", "refcount", "mapcount", "head", "next", "prev"):
        found = _array(f"struct page {name} (pfn)", getattr(ka.memmap, name),
                       getattr(kb.memmap, name), None, labels)
        if found:
            return found
    for size, ha in ka.hugetlb.hstates.items():
        hb = kb.hugetlb.hstates[size]
        for name in HSTATE_FIELDS + ("free_list",):
            if getattr(ha, name) != getattr(hb, name):
                return (f"hugetlb {ha.name} {name}: {la} {getattr(ha, name)}, "
                        f"{lb} {getattr(hb, name)}")
    for name in ("deposit", "entire_mapcount", "deferred_split", "mthp_stats",
                 "huge_zero_pfn", "committed_pages"):
        a, b = getattr(ka, name), getattr(kb, name)
        if a != b:
            return f"kernel.{name}: {la} {a}, {lb} {b}"
    return _frames(ka, kb, labels)


def _frames(ka: Kernel, kb: Kernel, labels: tuple[str, str]) -> str | None:
    """The contents of every stored frame (data pages and tables alike)."""
    pa, pb = ka.physmem, kb.physmem
    stored_a = np.flatnonzero(pa.slot_of >= 0)
    stored_b = np.flatnonzero(pb.slot_of >= 0)
    found = _array("stored physical frames", stored_a, stored_b, None, labels)
    if found:
        return found
    if not len(stored_a):
        return None
    frames_a = pa.pool[pa.slot_of[stored_a]]
    frames_b = pb.pool[pb.slot_of[stored_b]]
    rows = np.flatnonzero((frames_a != frames_b).any(axis=tuple(range(1, frames_a.ndim))))
    if not len(rows):
        return None
    pfn = int(stored_a[rows[0]])
    at = _first_index(frames_a[rows[0]], frames_b[rows[0]])
    assert at is not None
    return (f"frame {pfn:#x} (word/byte {at}): {labels[0]} {frames_a[rows[0]][at]}, "
            f"{labels[1]} {frames_b[rows[0]][at]}")
