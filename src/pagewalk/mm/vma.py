"""The VMA tree: lookup, insertion, split and merge (mm/vma.c, mm/mmap.c find_vma).

The maple tree is modelled by a Python list kept sorted by ``start`` (VMAs never
overlap). Merging follows is_mergeable_vma / is_mergeable_anon_vma: same flags (but
VM_SOFTDIRTY), same file and contiguous pgoff, compatible anon_vma.
"""

from __future__ import annotations

import bisect
from dataclasses import replace
from typing import TYPE_CHECKING

from pagewalk.mm.types import VMA_IGNORE_MERGE_FLAGS, MmStruct, Vma, VmFlags

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel

PAGE_SHIFT = 12


def find_vma(mm: MmStruct, addr: int) -> Vma | None:
    """find_vma(): the first VMA with end > addr (it may start above addr)."""
    starts = [v.end for v in mm.vmas]
    i = bisect.bisect_right(starts, addr)
    return mm.vmas[i] if i < len(mm.vmas) else None


def vma_lookup(mm: MmStruct, addr: int) -> Vma | None:
    """vma_lookup(): the VMA containing addr, or None."""
    vma = find_vma(mm, addr)
    return vma if vma is not None and vma.start <= addr else None


def vmas_in_range(mm: MmStruct, start: int, end: int) -> list[Vma]:
    """The VMAs intersecting [start, end), in address order."""
    return [v for v in mm.vmas if v.start < end and v.end > start]


def vma_index(mm: MmStruct, vma: Vma) -> int:
    for i, v in enumerate(mm.vmas):
        if v is vma:
            return i
    raise ValueError("VMA not in this mm")


def vma_prev(mm: MmStruct, vma: Vma) -> Vma | None:
    i = vma_index(mm, vma)
    return mm.vmas[i - 1] if i > 0 else None


def vma_next(mm: MmStruct, vma: Vma) -> Vma | None:
    i = vma_index(mm, vma)
    return mm.vmas[i + 1] if i + 1 < len(mm.vmas) else None


def prev_of_addr(mm: MmStruct, addr: int) -> Vma | None:
    """The last VMA ending at or below addr."""
    prev = None
    for v in mm.vmas:
        if v.end <= addr:
            prev = v
        else:
            break
    return prev


def next_of_addr(mm: MmStruct, addr: int) -> Vma | None:
    """The first VMA starting at or above addr."""
    for v in mm.vmas:
        if v.start >= addr:
            return v
    return None


def vma_insert(mm: MmStruct, vma: Vma) -> None:
    starts = [v.start for v in mm.vmas]
    i = bisect.bisect_left(starts, vma.start)
    assert i == len(mm.vmas) or mm.vmas[i].start >= vma.end, "overlapping VMA"
    assert i == 0 or mm.vmas[i - 1].end <= vma.start, "overlapping VMA"
    mm.vmas.insert(i, vma)


def vma_remove(mm: MmStruct, vma: Vma) -> None:
    mm.vmas.pop(vma_index(mm, vma))


def split_vma(k: Kernel, mm: MmStruct, vma: Vma, addr: int) -> tuple[Vma, Vma]:
    """__split_vma(): cut ``vma`` at ``addr`` into [start, addr) and [addr, end).

    A huge PMD that straddles ``addr`` is split first (vma_adjust_trans_huge)."""
    assert vma.start < addr < vma.end
    if addr & ((1 << 21) - 1) and not vma.is_hugetlb():
        from pagewalk.mm import huge_memory
        from pagewalk.hw import pgtable_types as pt
        pmd_paddr, shift = k.pgtables.walk(mm, addr, 21, alloc=False)
        if shift == 21 and k.pgtables.read(pmd_paddr) & pt._PAGE_PSE:
            huge_memory.split_huge_pmd(k, mm, vma, pmd_paddr, addr)
    upper = replace(vma, start=addr, pgoff=vma.pgoff + ((addr - vma.start) >> PAGE_SHIFT))
    vma.end = addr
    vma_insert(mm, upper)
    if vma.file is not None and hasattr(vma.file, "vma_split"):
        vma.file.vma_split(vma, upper)
    return vma, upper


def is_mergeable(a: Vma, b: Vma) -> bool:
    """Can ``a`` (below) and ``b`` (directly above) become one VMA?"""
    if a.end != b.start:
        return False
    if (a.flags ^ b.flags) & ~VMA_IGNORE_MERGE_FLAGS:
        return False
    if a.file is not b.file or a.special or b.special or a.name != b.name:
        return False
    if a.pgoff + ((a.end - a.start) >> PAGE_SHIFT) != b.pgoff:
        return False
    if a.anon_vma is not None and b.anon_vma is not None and a.anon_vma is not b.anon_vma:
        return False
    return not (a.flags & VmFlags.HUGETLB)


def merge_with_neighbours(mm: MmStruct, vma: Vma) -> Vma:
    """vma_merge_existing_range(): fold ``vma`` into its neighbours where mergeable."""
    prev = vma_prev(mm, vma)
    if prev is not None and is_mergeable(prev, vma):
        prev.end = vma.end
        prev.anon_vma = prev.anon_vma or vma.anon_vma
        vma_remove(mm, vma)
        vma = prev
    nxt = vma_next(mm, vma)
    if nxt is not None and is_mergeable(vma, nxt):
        vma.end = nxt.end
        vma.anon_vma = vma.anon_vma or nxt.anon_vma
        vma_remove(mm, nxt)
    return vma


def vma_modify(k: Kernel, mm: MmStruct, vma: Vma, start: int, end: int) -> Vma:
    """vma_modify(): split ``vma`` so that exactly [start, end) is one VMA; returns it."""
    if start > vma.start:
        _, vma = split_vma(k, mm, vma, start)
    if end < vma.end:
        vma, _ = split_vma(k, mm, vma, end)
    return vma


def vm_stat_account(mm: MmStruct, flags: VmFlags, npages: int) -> None:
    """vm_stat_account() (mm/mmap.c): total_vm and the exec/stack/data split."""
    mm.total_vm += npages
    if flags & (VmFlags.EXEC | VmFlags.WRITE | VmFlags.GROWSDOWN) == VmFlags.EXEC:
        mm.exec_vm += npages
    elif flags & VmFlags.GROWSDOWN:
        mm.stack_vm += npages
    elif flags & (VmFlags.WRITE | VmFlags.SHARED | VmFlags.GROWSDOWN) == VmFlags.WRITE:
        mm.data_vm += npages
