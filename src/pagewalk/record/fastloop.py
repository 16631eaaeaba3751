"""The replay's access loop in compiled code: recorded accesses through the MMU's compiled
translate (hw/fastmmu.py mmu_translate: TLBs, page-walk caches, the walk with A/D bits)
until the first page fault, which goes back to Python (Kernel.do_user_addr_fault, then the
access is retried through Kernel.user_access), as the `touch` step's loop does
(mm/fastpath.py). Accesses that hit or walk to a present page never leave the loop.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numba import njit

from pagewalk.errors import SignalError
from pagewalk.hw.fastmmu import mmu_translate
from pagewalk.kernel.kernel import Kernel
from pagewalk.kernel.task import Task


@njit(cache=True)
def translate_until_fault(vaddrs, kinds, i, pcid, root_pfn, levels, slot_of, pool,  # type: ignore[no-untyped-def]
                          tlb_layout, tlb_routes, tlb_tags, tlb_stamps, tlb_payload,
                          tlb_clock, tlb_stats, pwc_layout, pwc_top, pwc_tags, pwc_stamps,
                          pwc_payload, pwc_clock, pwc_stats, counters, pkru, code_out):
    """Accesses from ``i`` on; returns the index of the first that faulted (its #PF error
    code in code_out[0], the failed translation counted) or len(vaddrs)."""
    n = vaddrs.shape[0]
    while i < n:
        code = mmu_translate(vaddrs[i], kinds[i], pcid, root_pfn, levels, slot_of, pool,
                             tlb_layout, tlb_routes, tlb_tags, tlb_stamps, tlb_payload,
                             tlb_clock, tlb_stats, pwc_layout, pwc_top, pwc_tags, pwc_stamps,
                             pwc_payload, pwc_clock, pwc_stats, counters, pkru)
        if code != 0:
            code_out[0] = code
            return i
        i += 1
    return n


def run_accesses(k: Kernel, task: Task, vaddrs: npt.NDArray[np.int64],
                 kinds: npt.NDArray[np.int64]) -> list[tuple[int, int]]:
    """Every access in order; returns the (address, kind) of those the simulated kernel
    answered with a signal (the caller decides: stack growth or a count)."""
    k.switch_to(task)
    code = np.zeros(1, dtype=np.int64)
    signalled: list[tuple[int, int]] = []
    i, n = 0, int(vaddrs.shape[0])
    while i < n:
        mmu, phys = k.mmu, k.pgtables.arrays.phys
        tlb, pwc = mmu.tlb, mmu.pwc
        i = int(translate_until_fault(
            vaddrs, kinds, i, mmu.pcid, task.mm.pgd_pfn, k.levels, phys.slot_of, phys.pool,
            tlb.layout, tlb.routes, tlb.storage.tags, tlb.storage.stamps,
            tlb.storage.payload, tlb.storage.clock, tlb.stats, pwc.layout, pwc.top_row,
            pwc.storage.tags, pwc.storage.stamps, pwc.storage.payload, pwc.storage.clock,
            pwc.stats, mmu.counters, mmu.active_pkru, code))
        if i >= n:
            break
        vaddr, kind = int(vaddrs[i]), int(kinds[i])
        try:
            k.kernel_entry()
            try:
                k.do_user_addr_fault(task, vaddr, int(code[0]))
            finally:
                k.kernel_exit()
            k.user_access(task, vaddr, kind)        # the retry, as Kernel.user_access does
        except SignalError:
            signalled.append((vaddr, kind))
        i += 1
    return signalled
