"""The compiled touch path and the reference path leave the same machine behind: page
tables, struct pages, counters, and the TLBs and page-walk caches with their LRU order and
hit/miss statistics (STYLE rule 12), in 4- and 5-level paging, with and without PCID."""

from __future__ import annotations

import numpy as np
import pytest

from pagewalk.kernel import syscalls
from pagewalk.machine import Machine, MachineConfig
from pagewalk.mm import fastpath

ANON = frozenset({"private", "anonymous"})


def run(fast: bool, thp: str, levels: int, pcid: bool):  # type: ignore[no-untyped-def]
    m = Machine(MachineConfig(ram=128 << 20, paging=levels, pcid=pcid,
                              sysfs={"/sys/kernel/mm/transparent_hugepage/enabled": thp}))
    k = m.kernel
    t = k.spawn("main")
    touch = fastpath.touch if fast else fastpath.touch_reference
    a = syscalls.sys_mmap(k, t, 0, 8 << 20, 3, ANON)
    touch(k, t, a, 4 << 20, 4096, 0)              # zero page (or huge zero page)
    touch(k, t, a, 8 << 20, 4096, 1)              # writes over it
    touch(k, t, a, 8 << 20, 1000, 0)              # TLB hits
    child = syscalls.sys_fork(k, t, "c")
    touch(k, child, a, 8 << 20, 4096, 1)          # copy-on-write (and THP splits)
    touch(k, t, a, 2 << 20, 8192, 1)              # the parent reuses or copies
    b = syscalls.sys_mmap(k, t, 0x600000001000, 3 << 20, 3, ANON | {"fixed"})
    touch(k, t, b, 3 << 20, 4096, 1)
    syscalls.sys_mprotect(k, t, b, 1 << 20, 1)
    touch(k, t, b, 1 << 20, 4096, 0)
    syscalls.sys_mprotect(k, t, b, 1 << 20, 3)
    touch(k, t, b, 3 << 20, 4096, 1)
    return k


@pytest.mark.parametrize("thp,levels,pcid", [("never", 4, True), ("always", 4, True),
                                             ("never", 5, True), ("always", 4, False)])
def test_fast_and_reference_paths_agree(thp: str, levels: int, pcid: bool) -> None:
    fast, ref = run(True, thp, levels, pcid), run(False, thp, levels, pcid)
    stored_fast = np.nonzero(fast.physmem.slot_of >= 0)[0]
    stored_ref = np.nonzero(ref.physmem.slot_of >= 0)[0]
    assert np.array_equal(stored_fast, stored_ref)
    assert np.array_equal(fast.physmem.touched, ref.physmem.touched)   # what writes stored
    assert fast.physmem.touched.any()
    for pfn in stored_fast:
        assert np.array_equal(fast.physmem.pool[fast.physmem.slot_of[pfn]],
                              ref.physmem.pool[ref.physmem.slot_of[pfn]]), hex(pfn)
    for name in ("flags", "order", "refcount", "mapcount", "head", "next", "prev"):
        assert np.array_equal(getattr(fast.memmap, name), getattr(ref.memmap, name)), name
    assert np.array_equal(fast.node_stat, ref.node_stat)
    assert np.array_equal(fast.vm_events, ref.vm_events)
    for name, task in fast.tasks.items():
        other = ref.tasks[name]
        assert task.min_flt == other.min_flt
        assert np.array_equal(task.mm.stat, other.mm.stat)
        assert np.array_equal(task.mmu_counters, other.mmu_counters)
    for cache in ("tlb", "pwc"):
        a, b = getattr(fast.mmu, cache), getattr(ref.mmu, cache)
        for field in ("tags", "stamps", "payload", "clock"):
            assert np.array_equal(getattr(a.storage, field), getattr(b.storage, field)), cache
        assert np.array_equal(a.stats, b.stats), cache
