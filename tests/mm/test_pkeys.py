"""Execute-only memory with protection keys (arch/x86/mm/pkeys.c __execute_only_pkey,
__arch_override_mprotect_pkey; arch/x86/mm/pgprot.c vm_get_page_prot; arch/x86/mm/fault.c
access_error / bad_area_access_from_pkeys; kernel/fork.c arch_dup_mmap, copy_thread).

A PROT_EXEC-only mapping gets the mm's execute-only key (1: key 0 is allocated with the
mm), its entries carry it, and the task's PKRU (init_pkru_value at exec) denies data
accesses through it: a read or write is SIGSEGV (SEGV_PKUERR) before handle_mm_fault, so
no fault is counted and nothing is mapped; instruction fetches still work. Without PKU
PROT_EXEC implies read. PKRU belongs to the task (saved and loaded at context switch) and
the compiled touch loop applies the same key check as the reference path."""

from __future__ import annotations

import numpy as np
import pytest

from pagewalk.errors import SignalError
from pagewalk.hw import pgtable_types as pt
from pagewalk.hw.mmu import PageFault
from pagewalk.hw.pkru import INIT_PKRU_VALUE, PKRU_AD_BIT, PKRU_WD_BIT
from pagewalk.hw.walker import ACCESS_IFETCH, ACCESS_READ, ACCESS_WRITE
from pagewalk.kernel import syscalls
from pagewalk.kernel.kernel import Kernel
from pagewalk.kernel.task import Task
from pagewalk.machine import Machine, MachineConfig
from pagewalk.mm import fastpath, pkeys
from pagewalk.mm.types import MmStat
from pagewalk.mm.vma import find_vma
from pagewalk.proc.task_mmu import format_smaps

ANON = frozenset({"private", "anonymous"})
FIXED = ANON | {"fixed"}
ADDR = 0x600000000000
PROT_R, PROT_RW, PROT_X, PROT_RX = 1, 3, 4, 5


def boot(pku: bool = True) -> tuple[Kernel, Task]:
    k = Machine(MachineConfig(ram=128 << 20, pku=pku)).kernel
    return k, k.spawn("main")


def keys(task: Task) -> list[int]:
    """The protection keys of the VMAs in [ADDR, ADDR + 1 GiB)."""
    return [pkeys.vma_pkey(v) for v in task.mm.vmas if ADDR <= v.start < ADDR + (1 << 30)]


def leaf(k: Kernel, task: Task, vaddr: int) -> int:
    return k.pgtables.lookup(task.mm, vaddr)[1]


def test_a_new_process_runs_with_init_pkru_and_key_0_allocated() -> None:
    k, t = boot()
    k.switch_to(t)
    assert k.mmu.cr4_pke and k.mmu.pkru == INIT_PKRU_VALUE
    assert (t.mm.pkey_allocation_map, t.mm.execute_only_pkey) == (0x1, -1)
    k, t = boot(pku=False)
    k.switch_to(t)
    assert not k.mmu.cr4_pke and k.mmu.pkru == 0


def test_exec_only_mmap_takes_the_execute_only_key() -> None:
    k, t = boot()
    syscalls.sys_mmap(k, t, ADDR, 4096, PROT_X, FIXED)
    vma = find_vma(t.mm, ADDR)
    assert vma is not None and pkeys.vma_pkey(vma) == 1
    assert (t.mm.pkey_allocation_map, t.mm.execute_only_pkey) == (0x3, 1)
    assert pt.pte_pkey(vma.page_prot) == 1 and vma.page_prot & pt._PAGE_PRESENT
    # a second execute-only mapping reuses the key; rx and r get key 0
    syscalls.sys_mmap(k, t, ADDR + (1 << 20), 4096, PROT_X, FIXED)
    syscalls.sys_mmap(k, t, ADDR + (2 << 20), 4096, PROT_RX, FIXED)
    assert keys(t) == [1, 1, 0] and t.mm.pkey_allocation_map == 0x3


@pytest.mark.parametrize("access", [ACCESS_READ, ACCESS_WRITE])
def test_exec_only_data_access_is_sigsegv_pkuerr_without_a_fault(access: int) -> None:
    k, t = boot()
    syscalls.sys_mmap(k, t, ADDR, 4096, PROT_X, FIXED)
    pgfault, vmpte = k.vm_events.copy(), int(t.mm.stat[MmStat.PGTABLES_BYTES])
    with pytest.raises(SignalError, match="SEGV_PKUERR"):
        k.user_access(t, ADDR, access)
    assert t.min_flt == 0 and np.array_equal(k.vm_events, pgfault)
    assert int(t.mm.stat[MmStat.PGTABLES_BYTES]) == vmpte and leaf(k, t, ADDR) == 0


def test_exec_only_fetch_maps_the_page_with_the_key_and_a_read_then_has_pk_set() -> None:
    k, t = boot()
    syscalls.sys_mmap(k, t, ADDR, 4096, PROT_X, FIXED)
    k.user_access(t, ADDR, ACCESS_IFETCH)          # keys never affect instruction fetches
    assert t.min_flt == 1 and pt.pte_pkey(leaf(k, t, ADDR)) == 1
    with pytest.raises(SignalError, match="SEGV_PKUERR"):
        k.user_access(t, ADDR, ACCESS_READ)
    with pytest.raises(PageFault) as fault:          # the MMU's error code has PK (bit 5)
        k.mmu.translate(ADDR, ACCESS_READ)
    assert fault.value.code == pt.X86_PF_PROT | pt.X86_PF_USER | pt.X86_PF_PK
    assert t.min_flt == 1


def test_mprotect_exec_only_to_read_goes_back_to_key_0() -> None:
    k, t = boot()
    syscalls.sys_mmap(k, t, ADDR, 8192, PROT_X, FIXED)
    k.user_access(t, ADDR, ACCESS_IFETCH)
    syscalls.sys_mprotect(k, t, ADDR, 8192, PROT_R)  # arch_override_mprotect_pkey: key 0
    vma = find_vma(t.mm, ADDR)
    assert vma is not None and pkeys.vma_pkey(vma) == 0
    assert pt.pte_pkey(leaf(k, t, ADDR)) == 0       # change_pte_range: pte_modify
    k.user_access(t, ADDR, ACCESS_READ)
    k.user_access(t, ADDR + 4096, ACCESS_READ)
    assert t.min_flt == 2


def test_mprotect_of_touched_memory_to_exec_only_refuses_reads_through_the_pte() -> None:
    k, t = boot()
    syscalls.sys_mmap(k, t, ADDR, 8192, PROT_RW, FIXED)
    k.user_access(t, ADDR, ACCESS_WRITE)
    syscalls.sys_mprotect(k, t, ADDR, 4096, PROT_X)  # splits: [x key 1][rw key 0]
    assert keys(t) == [1, 0]
    assert pt.pte_pkey(leaf(k, t, ADDR)) == 1
    with pytest.raises(SignalError, match="SEGV_PKUERR"):
        k.user_access(t, ADDR, ACCESS_READ)
    k.user_access(t, ADDR + 4096, ACCESS_WRITE)
    syscalls.sys_mprotect(k, t, ADDR, 4096, PROT_RW)  # back to key 0: the VMAs merge again
    assert keys(t) == [0]
    k.user_access(t, ADDR, ACCESS_READ)


def test_fork_inherits_the_keys_and_pkru() -> None:
    k, t = boot()
    syscalls.sys_mmap(k, t, ADDR, 4096, PROT_X, FIXED)
    child = syscalls.sys_fork(k, t, "child")
    assert (child.mm.pkey_allocation_map, child.mm.execute_only_pkey) == (0x3, 1)
    assert child.pkru == INIT_PKRU_VALUE
    with pytest.raises(SignalError, match="SEGV_PKUERR"):
        k.user_access(child, ADDR, ACCESS_READ)
    syscalls.sys_mmap(k, child, ADDR + (1 << 20), 4096, PROT_X, FIXED)
    assert child.mm.execute_only_pkey == 1 and child.mm.pkey_allocation_map == 0x3


def test_without_pku_exec_implies_read() -> None:
    k, t = boot(pku=False)
    syscalls.sys_mmap(k, t, ADDR, 4096, PROT_X, FIXED)
    vma = find_vma(t.mm, ADDR)
    assert vma is not None and pkeys.vma_pkey(vma) == 0 and t.mm.execute_only_pkey == -1
    k.user_access(t, ADDR, ACCESS_READ)              # the zero page, one minor fault
    assert t.min_flt == 1 and pt.pte_pkey(leaf(k, t, ADDR)) == 0
    with pytest.raises(SignalError, match="SEGV_ACCERR"):
        k.user_access(t, ADDR, ACCESS_WRITE)
    assert "ProtectionKey" not in format_smaps(k, t)


def test_smaps_shows_each_vmas_protection_key() -> None:
    k, t = boot()
    syscalls.sys_mmap(k, t, ADDR, 4096, PROT_X, FIXED)
    smaps = format_smaps(k, t)
    keys = [line for line in smaps.splitlines() if line.startswith("ProtectionKey:")]
    assert len(keys) == len(t.mm.vmas)
    assert keys[[v.start for v in t.mm.vmas].index(ADDR)] == "ProtectionKey:         1"
    assert keys[0] == "ProtectionKey:         0"


@pytest.mark.parametrize("pku,populated", [(True, 0), (False, 1)])
def test_map_populate_of_exec_only_memory(pku: bool, populated: int) -> None:
    # populate_vma_page_range -> check_vma_flags: arch_vma_access_permitted() fails for
    # the execute-only key, -EFAULT, which __mm_populate ignores
    k, t = boot(pku)
    syscalls.sys_mmap(k, t, ADDR, 4096, PROT_X, FIXED | {"populate"})
    assert t.min_flt == populated and bool(leaf(k, t, ADDR)) == bool(populated)


def test_pkru_is_per_task_across_context_switches() -> None:
    k, a = boot()
    b = k.spawn("b")
    for task in (a, b):
        syscalls.sys_mmap(k, task, ADDR, 8192, PROT_RW, FIXED)
        k.user_access(task, ADDR, ACCESS_WRITE)
    k.switch_to(a)
    k.mmu.pkru = INIT_PKRU_VALUE | PKRU_WD_BIT      # WRPKRU in a: key 0 write-disabled
    k.switch_to(b)
    assert k.mmu.pkru == INIT_PKRU_VALUE and a.pkru == INIT_PKRU_VALUE | PKRU_WD_BIT
    k.user_access(b, ADDR, ACCESS_WRITE)
    with pytest.raises(SignalError, match="SEGV_PKUERR"):
        k.user_access(a, ADDR, ACCESS_WRITE)         # the switch loaded a's PKRU
    assert k.mmu.pkru == INIT_PKRU_VALUE | PKRU_WD_BIT
    k.user_access(a, ADDR, ACCESS_READ)
    k.user_access(b, ADDR + 4096, ACCESS_WRITE)
    assert k.mmu.pkru == INIT_PKRU_VALUE


def _run(fast: bool, pkru_bits: int) -> tuple[Kernel, list[tuple[str, int]]]:
    """Accesses through one touch path; PKRU denies key 0 (``pkru_bits``) half-way."""
    k, t = boot()
    touch = fastpath.touch if fast else fastpath.touch_reference
    signals: list[tuple[str, int]] = []
    a = syscalls.sys_mmap(k, t, 0, 4 << 20, PROT_RW, ANON)
    touch(k, t, a, 1 << 20, 4096, ACCESS_READ)
    touch(k, t, a, 2 << 20, 4096, ACCESS_WRITE)
    k.switch_to(t)
    k.mmu.pkru = INIT_PKRU_VALUE | pkru_bits
    for start, access in ((a, ACCESS_READ), (a, ACCESS_WRITE), (a + (3 << 20), ACCESS_WRITE)):
        try:
            touch(k, t, start, 1 << 20, 4096, access)
        except SignalError as err:
            signals.append((str(err), access))
    k.mmu.pkru = INIT_PKRU_VALUE
    touch(k, t, a, 4 << 20, 4096, ACCESS_WRITE)
    return k, signals


@pytest.mark.parametrize("pkru_bits", [PKRU_WD_BIT, PKRU_AD_BIT])
def test_compiled_and_reference_paths_apply_the_same_key_check(pkru_bits: int) -> None:
    (fast, fast_signals), (ref, ref_signals) = _run(True, pkru_bits), _run(False, pkru_bits)
    assert fast_signals == ref_signals and fast_signals
    assert all("SEGV_PKUERR" in text for text, _ in fast_signals)
    for pfn in np.nonzero(fast.physmem.slot_of >= 0)[0]:
        assert np.array_equal(fast.physmem.pool[fast.physmem.slot_of[pfn]],
                              ref.physmem.pool[ref.physmem.slot_of[pfn]]), hex(pfn)
    assert np.array_equal(fast.vm_events, ref.vm_events)
    assert np.array_equal(fast.node_stat, ref.node_stat)
    for name, task in fast.tasks.items():
        other = ref.tasks[name]
        assert task.min_flt == other.min_flt
        assert np.array_equal(task.mm.stat, other.mm.stat)
        assert np.array_equal(task.mmu_counters, other.mmu_counters)
    for cache in ("tlb", "pwc"):
        x, y = getattr(fast.mmu, cache), getattr(ref.mmu, cache)
        for field in ("tags", "stamps", "payload", "clock"):
            assert np.array_equal(getattr(x.storage, field), getattr(y.storage, field)), cache
        assert np.array_equal(x.stats, y.stats), cache
