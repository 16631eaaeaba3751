"""Fragmentation and direct compaction (linux-mm-notes 10.3, 4.1 defrag table).

A machine whose free memory is all in 4 KiB pieces (every other page of a large mapping
given back with MADV_DONTNEED) has no free order-9 block: a THP fault whose gfp mask has
no direct reclaim falls back (thp_fault_fallback, a 4 KiB page); with MADV_HUGEPAGE under
defrag=madvise the fault compacts (compact_stall, compact_success) and gets its THP.
"""

from __future__ import annotations

from pagewalk.kernel import syscalls
from pagewalk.machine import Machine, MachineConfig
from pagewalk.mm import fastpath
from pagewalk.mm.vmstat import VmEvent
from tests.invariants_light import assert_buddy_consistent

RW = 3
ANON = frozenset({"private", "anonymous"})


def fragmented(defrag: str):  # type: ignore[no-untyped-def]
    m = Machine(MachineConfig(ram=96 << 20, sysfs={
        "/sys/kernel/mm/transparent_hugepage/enabled": "never",
        "/sys/kernel/mm/transparent_hugepage/defrag": defrag}))
    k = m.kernel
    t = k.spawn("main")
    free_kb = int(k.buddy.free_pages_total()) * 4
    length = (free_kb * 1024 - (8 << 20)) & ~((2 << 20) - 1)
    a = syscalls.sys_mmap(k, t, 0, length, RW, ANON)
    fastpath.touch(k, t, a, length, 4096, 1)
    while any(int(n) for zone in k.buddy.populated_zones() for n in k.buddy.nr_free[zone, 9:]):
        extra = syscalls.sys_mmap(k, t, 0, 1 << 20, RW, ANON)   # use up the large blocks
        fastpath.touch(k, t, extra, 1 << 20, 4096, 1)
    for va in range(a, a + length, 8192):   # give back every other page
        syscalls.sys_madvise(k, t, va, 4096, "dontneed")
    k.set_knob("/sys/kernel/mm/transparent_hugepage/enabled", "always")
    assert all(int(n) == 0 for zone in k.buddy.populated_zones()
               for n in k.buddy.nr_free[zone, 9:]), "memory should be fragmented"
    return k, t


def test_without_direct_compaction_a_thp_fault_falls_back() -> None:
    k, t = fragmented("never")
    b = syscalls.sys_mmap(k, t, 0, 2 << 20, RW, ANON)
    fastpath.touch(k, t, b, 4096, 4096, 1)
    assert k.vm_events[VmEvent.THP_FAULT_FALLBACK] == 1
    assert k.vm_events[VmEvent.THP_FAULT_ALLOC] == 0
    assert k.vm_events[VmEvent.COMPACT_STALL] == 0
    assert t.min_flt > 0


def test_madvised_fault_compacts_and_gets_its_thp() -> None:
    k, t = fragmented("madvise")
    b = syscalls.sys_mmap(k, t, 0, 2 << 20, RW, ANON)
    syscalls.sys_madvise(k, t, b, 2 << 20, "hugepage")
    data = k.user_access(t, 0x4AB000, 1)        # a byte in bss that must survive migration
    k.physmem.write_bytes(data, b"Z")
    fastpath.touch(k, t, b, 4096, 4096, 1)
    assert k.vm_events[VmEvent.COMPACT_STALL] == 1
    assert k.vm_events[VmEvent.COMPACT_SUCCESS] == 1
    assert k.vm_events[VmEvent.THP_FAULT_ALLOC] == 1
    assert k.physmem.read_bytes(k.user_access(t, 0x4AB000, 0), 1) == b"Z"
    assert_buddy_consistent(k)
