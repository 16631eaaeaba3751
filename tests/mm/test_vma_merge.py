"""The VMA walk and merge rules of mm/vma.c (Linux 6.18), one rule a test.

The address-space drawings follow tools/testing/vma/vma.c: one column per page
(0x1000), a letter per VMA (A, B, C ...), ``.`` for a hole, ``<->`` for the range an
operation covers, ``->`` for the result.
"""

from __future__ import annotations

import pytest

from pagewalk.errors import Errno, SyscallError
from pagewalk.kernel import syscalls
from pagewalk.kernel.kernel import Kernel
from pagewalk.kernel.task import Task
from pagewalk.machine import Machine, MachineConfig
from pagewalk.mm import fastpath
from pagewalk.mm.types import AnonVma, MmStruct, Vma, VmFlags
from pagewalk.mm.vma import (
    VmaIterator,
    VmaMergeStruct,
    find_mergeable_anon_vma,
    vma_had_uncowed_parents,
    vma_insert,
    vma_lookup,
    vma_merge_new_range,
    vma_remove,
)

P = 0x1000
BASE = 0x600000000000
RW = VmFlags.READ | VmFlags.WRITE | VmFlags.MAYREAD | VmFlags.MAYWRITE | VmFlags.MAYEXEC
RWX = RW | VmFlags.EXEC
ANON_FIXED = frozenset({"private", "anonymous", "fixed"})


def bare_mm(*ranges: tuple[int, int, VmFlags]) -> MmStruct:
    """An mm holding private anonymous VMAs [BASE + lo*P, BASE + hi*P), pgoff = start >> 12."""
    mm = MmStruct(pgd_pfn=0, pgd_order=0, mmap_base=BASE, task_size=1 << 47)
    for lo, hi, flags in ranges:
        vma_insert(mm, Vma(BASE + lo * P, BASE + hi * P, flags, (BASE + lo * P) >> 12, 0))
    return mm


def faulted(vma: Vma, anon_vma: AnonVma | None = None) -> AnonVma:
    """As anon_vma_prepare() leaves a VMA: one anon_vma, a singular anon_vma_chain."""
    av = anon_vma or AnonVma()
    vma.anon_vma, vma.anon_vma_chain = av, (av,)
    return av


def kernel_task() -> tuple[Kernel, Task]:
    m = Machine(MachineConfig(ram=64 << 20,
                              sysfs={"/sys/kernel/mm/transparent_hugepage/enabled": "never"}))
    return m.kernel, m.kernel.spawn("main")


def mapped(t: Task, lo: int, hi: int) -> list[tuple[int, int]]:
    """The VMAs of ``t`` within [BASE + lo*P, BASE + hi*P), as page-column ranges."""
    return [((v.start - BASE) // P, (v.end - BASE) // P) for v in t.mm.vmas
            if v.start >= BASE + lo * P and v.end <= BASE + hi * P]


# --- the iterator (for_each_vma_range) ------------------------------------------------------

def test_iterator_resumes_at_the_end_of_a_vma_merged_with_its_next() -> None:
    """The caller merges the VMA it was given with the next one; the walk goes on at the
    end of the merged VMA, so it neither revisits the removed VMA nor skips C:

        <-------->
        0123456789
        AABB.CC
                   ->  caller merges A with B
        AAAA.CC
    """
    mm = bare_mm((0, 2, RW), (2, 4, RW), (5, 7, RW))
    a, b, c = mm.vmas
    seen = []
    for vma in VmaIterator(mm, BASE, BASE + 10 * P):
        seen.append(vma)
        if vma is a:
            a.end = b.end
            vma_remove(mm, b)
    assert seen == [a, c]


def test_iterator_resumes_after_the_piece_a_split_left() -> None:
    """The caller splits the VMA at the end of the range: the walk stops there.

        <-->
        0123456789
        AAAAAA
              ->  split at 4
        AAAABB
    """
    k, t = kernel_task()
    syscalls.sys_mmap(k, t, BASE, 6 * P, 3, ANON_FIXED)
    vmi = VmaIterator(t.mm, BASE, BASE + 4 * P)
    vma = next(vmi)
    from pagewalk.mm.vma import split_vma
    split_vma(k, t.mm, vma, BASE + 4 * P)
    assert vmi.vma_iter_end() == BASE + 4 * P
    assert list(vmi) == []


def test_iterator_goes_on_after_the_caller_unmaps_the_vma() -> None:
    """The caller takes the VMA out of the tree: the walk resumes just past the range it
    was given.

        <-------->
        0123456789
        AA.BB
              ->  A removed
        ...BB
    """
    mm = bare_mm((0, 2, RW), (3, 5, RW))
    a, b = mm.vmas
    seen = []
    for vma in VmaIterator(mm, BASE, BASE + 10 * P):
        seen.append(vma)
        if vma is a:
            vma_remove(mm, a)
    assert seen == [a, b]


def test_iterator_yields_only_vmas_that_intersect_the_range() -> None:
    """A VMA that starts at the range's end is not part of it; one that ends inside the
    range's first page is.

          <-->
        0123456789
        AAA.BBCCC
    """
    mm = bare_mm((0, 3, RW), (4, 6, RW), (6, 9, RW))
    a, b, _ = mm.vmas
    assert list(VmaIterator(mm, BASE + 2 * P, BASE + 6 * P)) == [a, b]


# --- anon_vma reuse (find_mergeable_anon_vma) -----------------------------------------------

def test_a_first_fault_shares_the_next_vmas_anon_vma_before_the_previous_ones() -> None:
    """Both neighbours differ only in access flags and are faulted: next wins.

        0123456789
        AABBCC        A rw (faulted), B rwx (faulting), C rw (faulted)
    """
    mm = bare_mm((0, 2, RW), (2, 4, RWX), (4, 6, RW))
    a, b, c = mm.vmas
    faulted(a)
    av_c = faulted(c)
    assert find_mergeable_anon_vma(b) is av_c


def test_a_first_fault_shares_the_previous_vmas_anon_vma() -> None:
    """No next neighbour: the previous one's anon_vma is shared.

        0123456789
        AABB          A rw (faulted), B rwx (faulting)
    """
    mm = bare_mm((0, 2, RW), (2, 4, RWX))
    a, b = mm.vmas
    av = faulted(a)
    assert find_mergeable_anon_vma(b) is av


@pytest.mark.parametrize("case", ["hugepage-flag", "hole", "fork-child"])
def test_no_anon_vma_is_shared_across_other_differences(case: str) -> None:
    """anon_vma_compatible() wants adjacency and flags equal but for access bits and
    VM_SOFTDIRTY; reusable_anon_vma() wants the neighbour's anon_vma_chain singular.

        0123456789
        AA.BB         (hole)      AABB   (the others)
    """
    if case == "hole":
        mm = bare_mm((0, 2, RW), (3, 5, RWX))
    else:
        mm = bare_mm((0, 2, RW | (VmFlags.HUGEPAGE if case == "hugepage-flag" else 0)),
                     (2, 4, RWX))
    a, b = mm.vmas
    av = faulted(a)
    if case == "fork-child":
        a.anon_vma_chain = (AnonVma(), av)
    assert find_mergeable_anon_vma(b) is None


def test_a_soft_dirty_difference_does_not_stop_sharing() -> None:
    """VM_SOFTDIRTY is ignored by anon_vma_compatible().

        0123456789
        AABB          A rw|softdirty (faulted), B rw
    """
    mm = bare_mm((0, 2, RW | VmFlags.SOFTDIRTY), (2, 4, RW))
    a, b = mm.vmas
    av = faulted(a)
    assert find_mergeable_anon_vma(b) is av


def test_fault_path_shares_the_anon_vma_so_mprotect_merges() -> None:
    """Written A (rw) then B (rwx) share A's anon_vma, so mprotect(B, rw) merges them.

        0123456789
        AABB
            ->  mprotect(B, rw)
        AAAA
    """
    k, t = kernel_task()
    syscalls.sys_mmap(k, t, BASE, 2 * P, 3, ANON_FIXED)
    syscalls.sys_mmap(k, t, BASE + 2 * P, 2 * P, 7, ANON_FIXED)
    fastpath.touch_reference(k, t, BASE, P, P, 1)
    fastpath.touch_reference(k, t, BASE + 2 * P, P, P, 1)
    a, b = vma_lookup(t.mm, BASE), vma_lookup(t.mm, BASE + 2 * P)
    assert a is not None and b is not None and a.anon_vma is b.anon_vma
    syscalls.sys_mprotect(k, t, BASE + 2 * P, 2 * P, 3)
    assert mapped(t, 0, 4) == [(0, 4)]


# --- is_mergeable_anon_vma ------------------------------------------------------------------

@pytest.mark.parametrize("prev_chain,merges", [(1, True), (2, False)])
def test_a_new_range_joins_a_faulted_vma_unless_it_is_a_fork_child(
        prev_chain: int, merges: bool) -> None:
    """Case 2 of is_mergeable_anon_vma(): the new range has no anon_vma and takes the
    target's, unless the target had unCoW'd parents (chain longer than one).

        <>
        0123456789
        AA
          ->  mmap [2, 4)
        AAAA    (singular chain)      AABB   (fork child)
    """
    mm = bare_mm((0, 2, RW))
    a = mm.vmas[0]
    av = faulted(a)
    a.anon_vma_chain = (AnonVma(), av)[-prev_chain:]
    assert vma_had_uncowed_parents(a) == (prev_chain > 1)
    vmg = VmaMergeStruct(BASE + 2 * P, BASE + 4 * P, RW, (BASE + 2 * P) >> 12, None, "", None)
    k, _ = kernel_task()
    merged = vma_merge_new_range(k, mm, vmg)
    assert (merged is a) == merges
    assert len(mm.vmas) == 1 if merges else mm.vmas == [a]


def test_a_new_range_between_two_anon_vmas_joins_only_one() -> None:
    """can_vma_merge_right(): merging both ways needs prev and next not to hold two
    different anon_vmas; the range then merges with prev alone.

          <>
        0123456789
        AA..BB
              ->  mmap [2, 4)
        AAAABB
    """
    mm = bare_mm((0, 2, RW), (4, 6, RW))
    a, b = mm.vmas
    faulted(a)
    faulted(b)
    vmg = VmaMergeStruct(BASE + 2 * P, BASE + 4 * P, RW, (BASE + 2 * P) >> 12, None, "", None)
    k, _ = kernel_task()
    assert vma_merge_new_range(k, mm, vmg) is a
    assert [(v.start, v.end) for v in mm.vmas] == [(BASE, BASE + 4 * P), (b.start, b.end)]


# --- the walks that use the iterator --------------------------------------------------------

def test_mprotect_continues_after_merging_with_the_next_vma() -> None:
    """do_mprotect_pkey(): A merges with B mid-call; the walk resumes at the end of the
    merged VMA and goes on to C.

        <---->
        0123456789
        AABBCC        A rwx, B rw, C r
              ->  mprotect(rw)
        AAAAAA
    """
    k, t = kernel_task()
    for i, prot in enumerate((7, 3, 1)):
        syscalls.sys_mmap(k, t, BASE + 2 * i * P, 2 * P, prot, ANON_FIXED)
    syscalls.sys_mprotect(k, t, BASE, 6 * P, 3)
    assert mapped(t, 0, 6) == [(0, 6)]


def test_mprotect_stops_at_a_hole_after_merging() -> None:
    """The merge before the hole stays; the hole is ENOMEM.

        <---->
        0123456789
        AABB..
              ->  mprotect(rw): ENOMEM
        AAAA..
    """
    k, t = kernel_task()
    syscalls.sys_mmap(k, t, BASE, 2 * P, 7, ANON_FIXED)
    syscalls.sys_mmap(k, t, BASE + 2 * P, 2 * P, 3, ANON_FIXED)
    with pytest.raises(SyscallError) as err:
        syscalls.sys_mprotect(k, t, BASE, 6 * P, 3)
    assert err.value.errno == Errno.ENOMEM
    assert mapped(t, 0, 6) == [(0, 4)]


def test_madvise_walk_resumes_after_its_own_merge() -> None:
    """madvise_walk_vmas(): MADV_HUGEPAGE on A merges it into B (which has the flag), the
    walk goes on from the end of the merged VMA to C.

        <---->
        0123456789
        AABBCC        B already VM_HUGEPAGE
              ->  madvise(HUGEPAGE)
        AAAAAA
    """
    k, t = kernel_task()
    for i in range(3):
        syscalls.sys_mmap(k, t, BASE + 2 * i * P, 2 * P, 3, ANON_FIXED)
        if i == 0:
            syscalls.sys_madvise(k, t, BASE, 2 * P, "nohugepage")
    syscalls.sys_madvise(k, t, BASE + 2 * P, 2 * P, "hugepage")
    assert mapped(t, 0, 6) == [(0, 2), (2, 4), (4, 6)]
    syscalls.sys_madvise(k, t, BASE, 6 * P, "hugepage")
    assert mapped(t, 0, 6) == [(0, 6)]
    assert t.mm.vmas[[v.start for v in t.mm.vmas].index(BASE)].flags & VmFlags.HUGEPAGE


def test_madvise_gap_is_enomem_but_both_sides_are_advised() -> None:
    """A gap makes madvise ENOMEM, the VMAs on both sides still get the advice.

        <---->
        0123456789
        AA..BB
              ->  madvise(NOHUGEPAGE): ENOMEM
    """
    k, t = kernel_task()
    syscalls.sys_mmap(k, t, BASE, 2 * P, 3, ANON_FIXED)
    syscalls.sys_mmap(k, t, BASE + 4 * P, 2 * P, 3, ANON_FIXED)
    with pytest.raises(SyscallError) as err:
        syscalls.sys_madvise(k, t, BASE, 6 * P, "nohugepage")
    assert err.value.errno == Errno.ENOMEM
    advised = [v for v in t.mm.vmas if BASE <= v.start < BASE + 6 * P]
    assert len(advised) == 2 and all(v.flags & VmFlags.NOHUGEPAGE for v in advised)


# --- VM_ACCOUNT given back by mprotect (6.7+) -----------------------------------------------

@pytest.mark.parametrize("written,released", [(False, True), (True, False)])
def test_mprotect_read_only_releases_the_charge_of_a_never_written_vma(
        written: bool, released: bool) -> None:
    """mprotect_fixup(): an accounted private anonymous VMA without an anon_vma made
    read-only loses VM_ACCOUNT and its pages leave Committed_AS; a written one keeps both."""
    k, t = kernel_task()
    syscalls.sys_mmap(k, t, BASE, 16 * P, 3, ANON_FIXED)
    if written:
        fastpath.touch_reference(k, t, BASE, P, P, 1)
    before = k.committed_pages
    syscalls.sys_mprotect(k, t, BASE, 16 * P, 1)
    vma = vma_lookup(t.mm, BASE)
    assert vma is not None
    assert k.committed_pages == before - (16 if released else 0)
    assert bool(vma.flags & VmFlags.ACCOUNT) != released
