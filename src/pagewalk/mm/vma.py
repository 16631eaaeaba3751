"""The VMA tree: lookup, iteration, insertion, split and merge (mm/vma.c, mm/mmap.c find_vma).

The maple tree is modelled by a Python list kept sorted by ``start`` (VMAs never
overlap). Merging follows vma_merge_existing_range / vma_merge_new_range: same flags (but
VM_SOFTDIRTY), same file and contiguous pgoff, compatible anon_vma (is_mergeable_anon_vma:
a fork child's anon_vma never spreads to an unfaulted neighbour). A first anonymous fault
shares a neighbour's anon_vma where it may (find_mergeable_anon_vma), so VMAs that differ
only in their access flags can merge later.

mm/vma.c and the THP/hugetlb code call each other: a split or merge here splits huge
PMDs and registers VMAs with khugepaged (mm/huge_memory.py, mm/hugetlb.py), whose faults
need find_mergeable_anon_vma() from here (through rmap.anon_vma_prepare). The calls from
here into those modules import them when called; everything else in mm/ imports at the top.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from pagewalk.errors import Errno, SyscallError
from pagewalk.hw import pgtable_types as pt
from pagewalk.mm.types import (
    VM_ACCESS_FLAGS,
    VMA_IGNORE_MERGE_FLAGS,
    AnonVma,
    MmStruct,
    Vma,
    VmFlags,
)

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel

PAGE_SHIFT = 12
HPAGE_PMD_SIZE = 1 << 21
# VM_SPECIAL (include/linux/mm.h): never merged (hugetlb VMAs carry VM_DONTEXPAND).
VM_SPECIAL = VmFlags.IO | VmFlags.DONTEXPAND | VmFlags.PFNMAP | VmFlags.MIXEDMAP


def find_vma(mm: MmStruct, addr: int) -> Vma | None:
    """find_vma(): the first VMA with end > addr (it may start above addr)."""
    ends = [v.end for v in mm.vmas]
    i = bisect.bisect_right(ends, addr)
    return mm.vmas[i] if i < len(mm.vmas) else None


def vma_lookup(mm: MmStruct, addr: int) -> Vma | None:
    """vma_lookup(): the VMA containing addr, or None."""
    vma = find_vma(mm, addr)
    return vma if vma is not None and vma.start <= addr else None


def vmas_in_range(mm: MmStruct, start: int, end: int) -> list[Vma]:
    """The VMAs intersecting [start, end), in address order (a snapshot: for code that
    does not change the tree while it looks at them)."""
    return [v for v in mm.vmas if v.start < end and v.end > start]


class VmaIterator:
    """for_each_vma_range(vmi, vma, end) over a struct vma_iterator: yields the VMAs that
    intersect [start, end) in address order, each one looked up afresh.

    The caller may split, merge or unmap the VMA it was given before asking for the next
    one: like the kernel's iterator, which the caller's split/merge leaves on the VMA
    that now covers the range just handled, the walk resumes at the end of that VMA
    (``vma_iter_end``), never at a stale snapshot's next entry.
    """

    def __init__(self, mm: MmStruct, start: int, end: int) -> None:
        self.mm = mm
        self.end = end
        self._resume = start      # where vma_find() looks next
        self._last = -1           # the last address of the range the caller was given

    def __iter__(self) -> VmaIterator:
        return self

    def __next__(self) -> Vma:
        vma = find_vma(self.mm, self.vma_iter_end())     # vma_find(&vmi, end)
        if vma is None or vma.start >= self.end:
            raise StopIteration
        self._last = min(vma.end, self.end) - 1
        return vma

    def vma_iter_end(self) -> int:
        """vma_iter_end(): the end of the VMA that now covers the last address handed out
        (after the caller's split or merge), or just past that address if it was unmapped."""
        if self._last < 0:
            return self._resume
        vma = vma_lookup(self.mm, self._last)
        self._resume = max(self._resume, vma.end if vma is not None else self._last + 1)
        return self._resume


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
    vma.vm_mm = mm


def vma_remove(mm: MmStruct, vma: Vma) -> None:
    mm.vmas.pop(vma_index(mm, vma))


def split_huge_pmd_if_needed(k: Kernel, mm: MmStruct, vma: Vma, addr: int) -> None:
    """split_huge_pmd_if_needed(): a VMA boundary moving to an address inside a huge PMD
    of ``vma`` splits that PMD first (vma_adjust_trans_huge)."""
    if not addr & (HPAGE_PMD_SIZE - 1) or vma.is_hugetlb():
        return
    haddr = addr & ~(HPAGE_PMD_SIZE - 1)
    if haddr < vma.start or haddr + HPAGE_PMD_SIZE > vma.end:
        return
    from pagewalk.mm import huge_memory  # mm's one cycle, see the module docstring
    pmd_paddr, shift = k.pgtables.walk(mm, addr, 21, alloc=False)
    if shift == 21 and k.pgtables.read(pmd_paddr) & pt._PAGE_PSE:
        huge_memory.split_huge_pmd(k, mm, vma, pmd_paddr, addr)


def vma_may_split(vma: Vma, addr: int) -> None:
    """vm_ops->may_split: hugetlb_vm_op_split refuses a cut off a huge page boundary,
    special_mapping_split refuses any cut (EINVAL)."""
    if vma.file is not None:
        vma.file.may_split(vma, addr)
    if vma.special:
        raise SyscallError(Errno.EINVAL, "a special mapping cannot be split")


def split_vma(k: Kernel, mm: MmStruct, vma: Vma, addr: int) -> tuple[Vma, Vma]:
    """__split_vma(): cut ``vma`` at ``addr`` into [start, addr) and [addr, end); the new
    VMA shares the anon_vma and its chain (anon_vma_clone). A huge PMD that straddles
    ``addr`` is split first (vma_adjust_trans_huge); EINVAL where may_split refuses."""
    assert vma.start < addr < vma.end
    vma_may_split(vma, addr)
    split_huge_pmd_if_needed(k, mm, vma, addr)
    if vma.is_hugetlb():
        from pagewalk.mm import hugetlb  # mm's one cycle, see the module docstring
        hugetlb.hugetlb_split(k, mm, vma, addr)     # shared PMD tables straddling addr
    upper = replace(vma, start=addr, pgoff=vma.pgoff + ((addr - vma.start) >> PAGE_SHIFT))
    vma.end = addr
    vma_insert(mm, upper)
    return vma, upper


# --- anon_vma ------------------------------------------------------------------------------

def vma_had_uncowed_parents(vma: Vma | None) -> bool:
    """vma_had_uncowed_parents() (vma_is_fork_child() in later kernels): the VMA's
    anon_vma_chain links more than one anon_vma, so it may map its parent's pages."""
    return vma is not None and vma.anon_vma is not None and len(vma.anon_vma_chain) != 1


def anon_vma_compatible(a: Vma, b: Vma) -> bool:
    """anon_vma_compatible() (mm/vma.c): ``a`` directly below ``b``, same file, flags equal
    but for the access bits and VM_SOFTDIRTY, contiguous pgoff."""
    return (a.end == b.start and a.file is b.file
            and not (a.flags ^ b.flags) & ~(VM_ACCESS_FLAGS | VmFlags.SOFTDIRTY)
            and b.pgoff == a.pgoff + ((b.start - a.start) >> PAGE_SHIFT))


def reusable_anon_vma(old: Vma, a: Vma, b: Vma) -> AnonVma | None:
    """reusable_anon_vma(): ``old``'s anon_vma, if a and b are compatible and old's
    anon_vma_chain is singular (old is not a fork child)."""
    if anon_vma_compatible(a, b) and old.anon_vma is not None and len(old.anon_vma_chain) == 1:
        return old.anon_vma
    return None


def find_mergeable_anon_vma(vma: Vma) -> AnonVma | None:
    """find_mergeable_anon_vma(): an anon_vma that __anon_vma_prepare() may share with
    ``vma``: the next VMA's first, then the previous one's."""
    mm = vma.vm_mm
    if mm is None:
        return None
    nxt = find_vma(mm, vma.end)
    if nxt is not None:
        anon_vma = reusable_anon_vma(nxt, vma, nxt)
        if anon_vma is not None:
            return anon_vma
    prev = prev_of_addr(mm, vma.start)
    return reusable_anon_vma(prev, prev, vma) if prev is not None else None


def dup_anon_vma(dst: Vma, src: Vma) -> None:
    """dup_anon_vma(): a VMA growing over a faulted one takes its anon_vma (anon_vma_clone)."""
    if src.anon_vma is not None and dst.anon_vma is None:
        dst.anon_vma = src.anon_vma
        dst.anon_vma_chain = src.anon_vma_chain


# --- merging -------------------------------------------------------------------------------

@dataclass(slots=True, eq=False)
class VmaMergeStruct:
    """struct vma_merge_struct: the range [start, end) that is to have these attributes,
    with its neighbours; ``middle`` is the VMA being modified (None for a new range)."""

    start: int
    end: int
    flags: VmFlags
    pgoff: int
    file: Any
    name: str
    anon_vma: AnonVma | None
    prev: Vma | None = None
    next: Vma | None = None
    middle: Vma | None = None
    special: bool = False


def is_mergeable_vma(vmg: VmaMergeStruct, merge_next: bool) -> bool:
    """is_mergeable_vma(): same flags but VMA_IGNORE_MERGE_FLAGS, same file and name."""
    vma = vmg.next if merge_next else vmg.prev
    assert vma is not None
    if (vma.flags ^ vmg.flags) & ~VMA_IGNORE_MERGE_FLAGS:
        return False
    return vma.file is vmg.file and vma.name == vmg.name and not vma.special


def is_mergeable_anon_vma(vmg: VmaMergeStruct, merge_next: bool) -> bool:
    """is_mergeable_anon_vma(): merging may spread an anon_vma to an unfaulted VMA unless
    the faulted side is a fork child (vma_had_uncowed_parents); two anon_vmas must be one."""
    tgt = vmg.next if merge_next else vmg.prev
    assert tgt is not None
    if tgt.anon_vma is None and vmg.anon_vma is not None:     # dup_anon_vma from middle
        return not vma_had_uncowed_parents(vmg.middle)
    if tgt.anon_vma is not None and vmg.anon_vma is None:     # take tgt's anon_vma
        return not vma_had_uncowed_parents(tgt)
    return tgt.anon_vma is vmg.anon_vma


def can_vma_merge_before(vmg: VmaMergeStruct) -> bool:
    """can_vma_merge_before(): the range can be merged in front of vmg.next."""
    assert vmg.next is not None
    pglen = (vmg.end - vmg.start) >> PAGE_SHIFT
    return (is_mergeable_vma(vmg, True) and is_mergeable_anon_vma(vmg, True)
            and vmg.next.pgoff == vmg.pgoff + pglen)


def can_vma_merge_after(vmg: VmaMergeStruct) -> bool:
    """can_vma_merge_after(): the range can be merged behind vmg.prev."""
    prev = vmg.prev
    assert prev is not None
    return (is_mergeable_vma(vmg, False) and is_mergeable_anon_vma(vmg, False)
            and prev.pgoff + (prev.length >> PAGE_SHIFT) == vmg.pgoff)


def can_vma_merge_left(vmg: VmaMergeStruct) -> bool:
    return vmg.prev is not None and vmg.prev.end == vmg.start and can_vma_merge_after(vmg)


def can_vma_merge_right(vmg: VmaMergeStruct, can_merge_left: bool) -> bool:
    """can_vma_merge_right(): and when merging both ways, prev and next must not have two
    different anon_vmas."""
    nxt = vmg.next
    if nxt is None or vmg.end != nxt.start or not can_vma_merge_before(vmg):
        return False
    if not can_merge_left:
        return True
    assert vmg.prev is not None
    return vmg.prev.anon_vma is None or nxt.anon_vma is None or vmg.prev.anon_vma is nxt.anon_vma


def vma_merge_existing_range(k: Kernel, mm: MmStruct, vmg: VmaMergeStruct) -> Vma | None:
    """vma_merge_existing_range(): [start, end) of vmg.middle is to get vmg.flags; if it
    touches a side of middle and the neighbour there is compatible, the neighbour grows
    over it (middle shrinks or goes). Returns the merged VMA, or None (no change)."""
    middle = vmg.middle
    assert middle is not None
    left_side, right_side = vmg.start == middle.start, vmg.end == middle.end
    if vmg.flags & VM_SPECIAL or vmg.special or not (left_side or right_side):
        return None
    vmg.prev = vma_prev(mm, middle) if left_side else None
    merge_left = left_side and can_vma_merge_left(vmg)
    merge_right = False
    if right_side:
        vmg.next = vma_next(mm, middle)
        merge_right = can_vma_merge_right(vmg, merge_left)
    if not merge_left and not merge_right:
        return None
    prev, nxt = vmg.prev, vmg.next
    remove_middle = left_side and right_side
    if merge_left and merge_right:
        #  prev   middle   next
        # extend  delete  delete
        assert prev is not None and nxt is not None
        dup_anon_vma(prev, nxt if nxt.anon_vma is not None else middle)
        prev.end = nxt.end
        vma_remove(mm, middle)
        vma_remove(mm, nxt)
        target = prev
    elif merge_left:
        #  prev      middle
        # extend  shrink/delete
        assert prev is not None
        dup_anon_vma(prev, middle)
        if not remove_middle:
            split_huge_pmd_if_needed(k, mm, middle, vmg.end)
            middle.pgoff += (vmg.end - middle.start) >> PAGE_SHIFT
            middle.start = vmg.end
        else:
            vma_remove(mm, middle)
        prev.end = vmg.end
        target = prev
    else:
        #     middle      next
        # shrink/delete  extend
        assert nxt is not None
        dup_anon_vma(nxt, middle)
        if not remove_middle:
            split_huge_pmd_if_needed(k, mm, middle, vmg.start)
            middle.end = vmg.start
        else:
            vma_remove(mm, middle)
        nxt.pgoff -= (nxt.start - vmg.start) >> PAGE_SHIFT
        nxt.start = vmg.start
        target = nxt
    from pagewalk.mm import huge_memory  # mm's one cycle, see the module docstring
    huge_memory.khugepaged_enter_vma(k, mm, target)
    return target


def vma_merge_new_range(k: Kernel, mm: MmStruct, vmg: VmaMergeStruct) -> Vma | None:
    """vma_merge_new_range(): a new mapping [start, end) extends the VMA before it, the
    one after it, or joins both. Returns the expanded VMA, or None."""
    vmg.prev = prev_of_addr(mm, vmg.start)
    vmg.next = next_of_addr(mm, vmg.end)
    if vmg.flags & VM_SPECIAL or vmg.special or (vmg.prev is None and vmg.next is None):
        return None
    can_merge_left = can_vma_merge_left(vmg)
    can_merge_right = can_vma_merge_right(vmg, can_merge_left)
    prev, nxt = vmg.prev, vmg.next
    if can_merge_left:
        assert prev is not None
        prev.end = vmg.end
        if can_merge_right:           # vma_expand() over next: delete it
            assert nxt is not None
            dup_anon_vma(prev, nxt)
            prev.end = nxt.end
            vma_remove(mm, nxt)
        target = prev
    elif can_merge_right:
        assert nxt is not None
        nxt.start, nxt.pgoff = vmg.start, vmg.pgoff
        target = nxt
    else:
        return None
    from pagewalk.mm import huge_memory  # mm's one cycle, see the module docstring
    huge_memory.khugepaged_enter_vma(k, mm, target)
    return target


def vma_modify_flags(k: Kernel, mm: MmStruct, vma: Vma, start: int, end: int,
                     newflags: VmFlags) -> Vma:
    """vma_modify_flags() -> vma_modify(): make [start, end) of ``vma`` one VMA that is to
    get ``newflags``: merged into a neighbour if it can be, else split off (the split at
    start stays if the one at end fails). The caller then sets the flags."""
    vmg = VmaMergeStruct(start, end, newflags, vma.pgoff + ((start - vma.start) >> PAGE_SHIFT),
                         vma.file, vma.name, vma.anon_vma, middle=vma, special=vma.special)
    merged = vma_merge_existing_range(k, mm, vmg)
    if merged is not None:
        return merged
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
