"""Version 2 rules of mm/mmap.c brk, mm/mlock.c and mm/mremap.c (Linux 6.18), one rule a
test, each checked on the simulated kernel's own state (VMAs, mm counters, page tables)."""

from __future__ import annotations

import pytest

from pagewalk.errors import Errno, SyscallError
from pagewalk.hw import pgtable_types as pt
from pagewalk.hw.walker import ACCESS_WRITE
from pagewalk.kernel import syscalls
from pagewalk.kernel.exec_image import BRK, START_BRK
from pagewalk.kernel.kernel import Kernel
from pagewalk.kernel.task import Task
from pagewalk.machine import Machine, MachineConfig
from pagewalk.mm import fastpath, mlock, mremap
from pagewalk.mm.types import MmStat, VmFlags
from pagewalk.mm.vma import vma_lookup
from pagewalk.mm.vmstat import NodeStat, VmEvent

BASE = 0x600000000000
MiB = 1 << 20
FIXED = frozenset({"private", "anonymous", "fixed"})


def kernel_task(thp: str = "never") -> tuple[Kernel, Task]:
    m = Machine(MachineConfig(ram=256 << 20,
                              sysfs={"/sys/kernel/mm/transparent_hugepage/enabled": thp}))
    return m.kernel, m.kernel.spawn("main")


def mlocked_kb(k: Kernel) -> int:
    return int(k.node_stat[NodeStat.NR_MLOCK]) * 4


# -- brk ---------------------------------------------------------------------------------------

def test_brk_grows_the_heap_vma_in_place() -> None:
    """do_brk_flags(): the heap VMA ending at the old break is extended, no new VMA."""
    k, t = kernel_task()
    vmas = len(t.mm.vmas)
    assert syscalls.sys_sbrk(k, t, 4 * MiB) == BRK + 4 * MiB
    heap = vma_lookup(t.mm, START_BRK)
    assert heap is not None and heap.end == BRK + 4 * MiB and len(t.mm.vmas) == vmas
    assert heap.flags & VmFlags.SOFTDIRTY


def test_brk_below_start_brk_is_enomem_and_keeps_the_break() -> None:
    """SYSCALL brk: below mm->start_brk the old break is returned (sbrk: ENOMEM)."""
    k, t = kernel_task()
    with pytest.raises(SyscallError) as err:
        syscalls.sys_sbrk(k, t, -(BRK - START_BRK) - 4096)
    assert err.value.errno == Errno.ENOMEM and t.mm.brk == BRK


def test_brk_into_a_mapping_is_refused() -> None:
    """A grow whose new break plus a page would reach the next VMA is refused."""
    k, t = kernel_task()
    syscalls.sys_mmap(k, t, BRK + 2 * MiB, 4096, 3, FIXED)
    with pytest.raises(SyscallError):
        syscalls.sys_sbrk(k, t, 2 * MiB)
    assert t.mm.brk == BRK
    syscalls.sys_sbrk(k, t, 2 * MiB - 4096)


def test_brk_unaligned_break_maps_whole_pages_and_shrinks_by_unmapping() -> None:
    """The break keeps its byte value; the VMA ends on the next page; shrinking unmaps."""
    k, t = kernel_task()
    syscalls.sys_sbrk(k, t, 100)
    assert t.mm.brk == BRK + 100 and vma_lookup(t.mm, START_BRK).end == BRK + 4096  # type: ignore[union-attr]
    total = t.mm.total_vm
    syscalls.sys_sbrk(k, t, -100)
    assert t.mm.total_vm == total - 1 and vma_lookup(t.mm, BRK) is None


# -- mlock -------------------------------------------------------------------------------------

def test_mlock_populates_and_counts_vmlck_and_mlocked() -> None:
    """do_mlock(): VM_LOCKED, locked_vm, then __mm_populate; each page PG_mlocked."""
    k, t = kernel_task()
    syscalls.sys_mmap(k, t, BASE, 4 * MiB, 3, FIXED)
    syscalls.sys_mlock(k, t, BASE, MiB, onfault=False)
    assert t.mm.locked_vm == 256 and t.min_flt == 256 and mlocked_kb(k) == 1024
    assert k.vm_events[VmEvent.UNEVICTABLE_PGMLOCKED] == 256


def test_mlock_onfault_locks_only_what_faults_later() -> None:
    """MLOCK_ONFAULT: VmLck at once, Mlocked as pages are touched."""
    k, t = kernel_task()
    syscalls.sys_mmap(k, t, BASE, MiB, 3, FIXED)
    syscalls.sys_mlock(k, t, BASE, MiB, onfault=True)
    assert t.mm.locked_vm == 256 and mlocked_kb(k) == 0
    fastpath.touch(k, t, BASE, 64 << 10, 4096, ACCESS_WRITE)
    assert mlocked_kb(k) == 64


def test_mlock_of_prot_none_is_enomem_but_locks() -> None:
    """populate_vma_page_range(): PROT_NONE is -EFAULT, mlock's ENOMEM; the VMA stays locked."""
    k, t = kernel_task()
    syscalls.sys_mmap(k, t, BASE, MiB, 0, FIXED)
    with pytest.raises(SyscallError) as err:
        syscalls.sys_mlock(k, t, BASE, MiB, onfault=False)
    assert err.value.errno == Errno.ENOMEM and t.mm.locked_vm == 256 and t.min_flt == 0


def test_mlock_over_a_hole_locks_the_vmas_before_it() -> None:
    """apply_vma_lock_flags(): ENOMEM at the hole, nothing populated."""
    k, t = kernel_task()
    syscalls.sys_mmap(k, t, BASE, MiB, 3, FIXED)
    syscalls.sys_mmap(k, t, BASE + 2 * MiB, MiB, 3, FIXED)
    with pytest.raises(SyscallError) as err:
        syscalls.sys_mlock(k, t, BASE, 3 * MiB, onfault=False)
    assert err.value.errno == Errno.ENOMEM
    assert t.mm.locked_vm == 256 and t.min_flt == 0
    assert not vma_lookup(t.mm, BASE + 2 * MiB).flags & VmFlags.LOCKED  # type: ignore[union-attr]


def test_locked_memory_refuses_madv_dontneed() -> None:
    """madvise_dontneed_free_valid_vma(): VM_LOCKED is EINVAL."""
    k, t = kernel_task()
    syscalls.sys_mmap(k, t, BASE, MiB, 3, FIXED)
    syscalls.sys_mlock(k, t, BASE, MiB, onfault=False)
    with pytest.raises(SyscallError) as err:
        syscalls.sys_madvise(k, t, BASE, MiB, "dontneed")
    assert err.value.errno == Errno.EINVAL


def test_munmap_of_locked_memory_gives_mlocked_back() -> None:
    """munmap: locked_vm drops and each folio is munlocked (munlock_vma_folio)."""
    k, t = kernel_task()
    syscalls.sys_mmap(k, t, BASE, MiB, 3, FIXED)
    syscalls.sys_mlock(k, t, BASE, MiB, onfault=False)
    syscalls.sys_munmap(k, t, BASE, MiB // 2)
    assert t.mm.locked_vm == 128 and mlocked_kb(k) == 512


def test_locks_are_not_inherited_by_fork() -> None:
    """dup_mmap(): VM_LOCKED_MASK cleared in the child, its locked_vm 0."""
    k, t = kernel_task()
    syscalls.sys_mmap(k, t, BASE, MiB, 3, FIXED)
    syscalls.sys_mlock(k, t, BASE, MiB, onfault=False)
    child = syscalls.sys_fork(k, t, "child")
    assert child.mm.locked_vm == 0
    assert not vma_lookup(child.mm, BASE).flags & VmFlags.LOCKED  # type: ignore[union-attr]


def test_mprotect_rw_of_locked_private_memory_breaks_cow_at_once() -> None:
    """mprotect_fixup(): a private VM_LOCKED VMA made writable is populated with write
    faults (populate_vma_page_range, FOLL_WRITE): the zero page mlock mapped read-only is
    replaced by a locked anonymous page, one more minor fault; MLOCK_ONFAULT populates
    nothing (populate_vma_page_range returns at once for VM_LOCKONFAULT)."""
    k, t = kernel_task()
    syscalls.sys_mmap(k, t, BASE, 4096, 1, FIXED)
    syscalls.sys_mmap(k, t, BASE + MiB, 4096, 1, FIXED)
    syscalls.sys_mlock(k, t, BASE, 4096, onfault=False)
    syscalls.sys_mlock(k, t, BASE + MiB, 4096, onfault=True)
    assert t.min_flt == 1 and mlocked_kb(k) == 0       # the zero page is never mlocked
    syscalls.sys_mprotect(k, t, BASE, 4096, 3)
    assert t.min_flt == 2 and mlocked_kb(k) == 4
    _, entry, _ = k.pgtables.lookup(t.mm, BASE)
    assert entry & pt._PAGE_RW and pt.pte_pfn(entry) != k.zero_pfn
    syscalls.sys_mprotect(k, t, BASE + MiB, 4096, 3)
    assert t.min_flt == 2 and mlocked_kb(k) == 4


def test_cow_copy_in_a_locked_vma_munlocks_the_page_left_behind() -> None:
    """A grandchild mlocks a page it shares with its parent: mlock_pte_range locks the
    shared folio, populate's write fault copies it (wp_page_copy -> mlock_new_folio) and
    folio_remove_rmap -> munlock_vma_folio unlocks the old one: one page stays Mlocked."""
    k, t = kernel_task()
    syscalls.sys_mmap(k, t, BASE, 4096, 3, FIXED)
    child = syscalls.sys_fork(k, t, "child")
    fastpath.touch(k, child, BASE, 4096, 4096, ACCESS_WRITE)
    grandchild = syscalls.sys_fork(k, child, "grandchild")
    syscalls.sys_mlock(k, grandchild, BASE, 4096, onfault=False)
    assert mlocked_kb(k) == 4
    _, in_child, _ = k.pgtables.lookup(child.mm, BASE)
    _, in_grandchild, _ = k.pgtables.lookup(grandchild.mm, BASE)
    assert pt.pte_pfn(in_child) != pt.pte_pfn(in_grandchild)
    assert not mlock.folio_test_mlocked(k, pt.pte_pfn(in_child))
    assert mlock.folio_test_mlocked(k, pt.pte_pfn(in_grandchild))


def test_mlockall_current_skips_special_vmas_and_future_locks_new_mmaps() -> None:
    """mlockall: vvar/vdso (VM_SPECIAL) stay unlocked; MCL_FUTURE sets mm->def_flags."""
    k, t = kernel_task()
    syscalls.sys_mlockall(k, t, mlock.MCL_CURRENT | mlock.MCL_FUTURE)
    assert t.mm.locked_vm << 2 == 1264
    start = syscalls.sys_mmap(k, t, 0, 2 * MiB, 3, frozenset({"private", "anonymous"}))
    assert vma_lookup(t.mm, start).flags & VmFlags.LOCKED  # type: ignore[union-attr]
    syscalls.sys_munlockall(k, t)
    assert t.mm.locked_vm == 0 and t.mm.def_flags == VmFlags.NONE


def test_hugetlb_vmas_are_never_locked() -> None:
    """vma_supports_mlock(): hugetlb VMAs are populated but get no VM_LOCKED."""
    m = Machine(MachineConfig(ram=256 << 20, sysfs={"/proc/sys/vm/nr_hugepages": "2"}))
    k = m.kernel
    t = k.spawn("main")
    addr = syscalls.sys_mmap(k, t, 0, 4 * MiB, 3,
                             frozenset({"private", "anonymous", "hugetlb"}))
    syscalls.sys_mlock(k, t, addr, 4 * MiB, onfault=False)
    assert t.mm.locked_vm == 0 and mlocked_kb(k) == 0
    assert k.hugetlb.default.free_huge_pages == 0


def test_munlock_of_part_of_a_thp_splits_the_pmd_and_drops_the_whole_folio() -> None:
    """mlock_pte_range() munlocks a PTE-mapped large folio as a whole."""
    k, t = kernel_task("always")
    syscalls.sys_mmap(k, t, BASE, 2 * MiB, 3, FIXED)
    syscalls.sys_mlock(k, t, BASE, 2 * MiB, onfault=False)
    assert mlocked_kb(k) == 2048
    syscalls.sys_munlock(k, t, BASE + MiB, 4096)
    assert k.vm_events[VmEvent.THP_SPLIT_PMD] == 1 and mlocked_kb(k) == 0


# -- mremap ------------------------------------------------------------------------------------

def test_mremap_move_moves_page_tables_without_faults() -> None:
    """move_vma(): the PTEs move (move_normal_pmd for whole tables): RSS and VmPTE stay."""
    k, t = kernel_task()
    syscalls.sys_mmap(k, t, BASE, 2 * MiB, 3, FIXED)
    fastpath.touch(k, t, BASE, 2 * MiB, 4096, ACCESS_WRITE)
    rss, faults = t.mm.get_rss(), t.min_flt
    pte_bytes = int(t.mm.stat[MmStat.PGTABLES_BYTES])
    new = syscalls.sys_mremap(k, t, BASE, 2 * MiB, 2 * MiB,
                              mremap.MREMAP_MAYMOVE | mremap.MREMAP_FIXED, BASE + (1 << 30))
    assert new == BASE + (1 << 30)
    assert t.mm.get_rss() == rss and t.min_flt == faults
    assert vma_lookup(t.mm, BASE) is None
    _, entry, _ = k.pgtables.lookup(t.mm, new)
    assert entry & pt._PAGE_PRESENT
    assert int(t.mm.stat[MmStat.PGTABLES_BYTES]) >= pte_bytes - 8192


def test_mremap_thp_to_unaligned_address_splits_it() -> None:
    """move_page_tables(): a huge PMD moves only to a 2 MiB-aligned address."""
    k, t = kernel_task("always")
    syscalls.sys_mmap(k, t, BASE, 2 * MiB, 3, FIXED)
    fastpath.touch(k, t, BASE, 2 * MiB, 4096, ACCESS_WRITE)
    syscalls.sys_mremap(k, t, BASE, 2 * MiB, 2 * MiB,
                        mremap.MREMAP_MAYMOVE | mremap.MREMAP_FIXED, BASE + (1 << 30))
    assert k.vm_events[VmEvent.THP_SPLIT_PMD] == 0
    syscalls.sys_mremap(k, t, BASE + (1 << 30), 2 * MiB, 2 * MiB,
                        mremap.MREMAP_MAYMOVE | mremap.MREMAP_FIXED, BASE + (2 << 30) + 4096)
    assert k.vm_events[VmEvent.THP_SPLIT_PMD] == 1


@pytest.mark.parametrize(("flags", "old", "new", "errno"), [
    (mremap.MREMAP_FIXED, MiB, MiB, Errno.EINVAL),                    # FIXED without MAYMOVE
    (mremap.MREMAP_MAYMOVE | mremap.MREMAP_DONTUNMAP, MiB, 2 * MiB, Errno.EINVAL),
    (0, 2 * MiB, 4 * MiB, Errno.EFAULT),                              # past the VMA's end
    (0, MiB, 0, Errno.EINVAL),                                        # new length 0
])
def test_mremap_refusals(flags: int, old: int, new: int, errno: Errno) -> None:
    """SYSCALL_DEFINE5(mremap) and vma_to_resize(): the errno rules; nothing changes."""
    k, t = kernel_task()
    syscalls.sys_mmap(k, t, BASE, MiB, 3, FIXED)
    with pytest.raises(SyscallError) as err:
        syscalls.sys_mremap(k, t, BASE, old, new, flags, BASE + (1 << 30))
    assert err.value.errno == errno
    assert vma_lookup(t.mm, BASE).end == BASE + MiB  # type: ignore[union-attr]


def test_mremap_grow_without_maymove_is_enomem_when_blocked() -> None:
    """vma_expandable() false and no MREMAP_MAYMOVE: ENOMEM."""
    k, t = kernel_task()
    syscalls.sys_mmap(k, t, BASE, MiB, 3, FIXED)
    syscalls.sys_mmap(k, t, BASE + MiB, 4096, 3, FIXED)
    with pytest.raises(SyscallError) as err:
        syscalls.sys_mremap(k, t, BASE, MiB, 2 * MiB, 0, 0)
    assert err.value.errno == Errno.ENOMEM


def test_mremap_dontunmap_leaves_the_old_vma_empty_and_unlocked() -> None:
    """move_vma() with MREMAP_DONTUNMAP: the old VMA stays, without pages or VM_LOCKED."""
    k, t = kernel_task()
    syscalls.sys_mmap(k, t, BASE, MiB, 3, FIXED)
    syscalls.sys_mlock(k, t, BASE, MiB, onfault=False)
    total = t.mm.total_vm
    new = syscalls.sys_mremap(k, t, BASE, MiB, MiB,
                              mremap.MREMAP_MAYMOVE | mremap.MREMAP_DONTUNMAP, 0)
    old = vma_lookup(t.mm, BASE)
    assert old is not None and not old.flags & VmFlags.LOCKED and old.anon_vma is None
    assert t.mm.total_vm == total + 256 and mlocked_kb(k) == 1024
    _, entry, _ = k.pgtables.lookup(t.mm, new)
    assert entry & pt._PAGE_PRESENT


def test_mremap_move_of_locked_memory_and_locked_vm() -> None:
    """vrm_stat_account() adds new_len to mm->locked_vm for a VM_LOCKED move; a plain move
    then unmaps the old range (vms_complete_munmap_vmas: -old_len), while DONTUNMAP only
    clears VM_LOCKED_MASK on the old VMA (dontunmap_complete): VmLck counts both."""
    k, t = kernel_task()
    syscalls.sys_mmap(k, t, BASE, MiB, 3, FIXED)
    syscalls.sys_mlock(k, t, BASE, MiB, onfault=False)
    syscalls.sys_mmap(k, t, BASE + MiB, 4096, 3, FIXED)     # no room to grow in place
    moved = syscalls.sys_mremap(k, t, BASE, MiB, 2 * MiB, mremap.MREMAP_MAYMOVE, 0)
    assert moved != BASE and t.mm.locked_vm == 512 and mlocked_kb(k) == 2048
    syscalls.sys_mremap(k, t, moved, 2 * MiB, 2 * MiB,
                        mremap.MREMAP_MAYMOVE | mremap.MREMAP_DONTUNMAP, 0)
    assert t.mm.locked_vm == 1024 and mlocked_kb(k) == 2048
    syscalls.sys_munmap(k, t, moved, 2 * MiB)     # the old VMA is unlocked: nothing to drop
    assert t.mm.locked_vm == 1024


def test_growing_hugetlb_is_einval() -> None:
    """mremap: a hugetlb VMA may not grow (its reservation cannot be split)."""
    m = Machine(MachineConfig(ram=256 << 20, sysfs={"/proc/sys/vm/nr_hugepages": "4"}))
    k = m.kernel
    t = k.spawn("main")
    addr = syscalls.sys_mmap(k, t, 0, 4 * MiB, 3, frozenset({"private", "anonymous", "hugetlb"}))
    with pytest.raises(SyscallError) as err:
        syscalls.sys_mremap(k, t, addr, 4 * MiB, 6 * MiB, mremap.MREMAP_MAYMOVE, 0)
    assert err.value.errno == Errno.EINVAL
