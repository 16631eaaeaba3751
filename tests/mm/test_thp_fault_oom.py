"""A THP write fault that gets its order-9 folio but no page for the deposited PTE table
(__do_huge_pmd_anonymous_page: pte_alloc_one fails -> folio_put, VM_FAULT_OOM) gives the
folio back: the compiled touch path and the reference path leave the same free memory,
struct pages and counters, and the access ends with the out-of-memory signal."""

from __future__ import annotations

import numpy as np
import pytest

from pagewalk.errors import SignalError
from pagewalk.kernel import syscalls
from pagewalk.machine import Machine, MachineConfig
from pagewalk.mm import fastpath
from pagewalk.mm.page_alloc import NO_PAGE
from pagewalk.mm.vmstat import VmEvent

RW = 3
ANON_FIXED = frozenset({"private", "anonymous", "fixed"})
BASE = 0x600000000000


def oom_at_the_deposit(fast: bool):  # type: ignore[no-untyped-def]
    m = Machine(MachineConfig(ram=64 << 20, sysfs={
        "/sys/kernel/mm/transparent_hugepage/enabled": "always"}))
    k = m.kernel
    t = k.spawn("main")
    touch = fastpath.touch if fast else fastpath.touch_reference
    syscalls.sys_mmap(k, t, BASE, 4 << 20, RW, ANON_FIXED)
    touch(k, t, BASE, 4096, 4096, 1)          # a THP; the PUD and PMD tables now exist
    keep = k.buddy.alloc_pages(9)             # hold one order-9 block back,
    while k.buddy.alloc_pages(0) != NO_PAGE:  # take every other free page,
        pass
    k.buddy.free_pages(keep, 9)               # and give the block back: 512 pages free
    assert k.buddy.free_pages_total() == 512
    with pytest.raises(SignalError, match="out of memory"):
        touch(k, t, BASE + (2 << 20), 4096, 4096, 1)
    return k, t


def test_thp_fault_without_a_deposit_table_frees_its_folio_on_both_paths() -> None:
    fast_k, fast_t = oom_at_the_deposit(True)
    ref_k, ref_t = oom_at_the_deposit(False)
    assert fast_k.buddy.free_pages_total() == ref_k.buddy.free_pages_total() == 512
    assert fast_k.vm_events[VmEvent.THP_FAULT_ALLOC] == ref_k.vm_events[VmEvent.THP_FAULT_ALLOC] == 1
    for name in ("flags", "order", "refcount", "mapcount", "head"):
        assert np.array_equal(getattr(fast_k.memmap, name), getattr(ref_k.memmap, name)), name
    assert np.array_equal(fast_k.node_stat, ref_k.node_stat)
    assert np.array_equal(fast_k.vm_events, ref_k.vm_events)
    assert np.array_equal(fast_t.mm.stat, ref_t.mm.stat)
    assert fast_t.min_flt == ref_t.min_flt
