"""The reference replay: one access at a time through the TLB and page-walk-cache objects.

This is the readable definition of the trace model of ``docs/trace-model.md`` (Intel SDM
vol. 3A §4.10 for the structures): an access looks up the L1 TLB of its kind, then the
STLB (a hit there refills the L1), and on a miss walks with the page-walk caches and
fills the STLB and the L1. Memory is demand-paged: a walk to a page never touched
before is first a page fault that maps it (``faults``); the access then walks like any
other. ``pagewalk.trace.fast`` must agree with this module counter for counter
(tests/trace/test_trace_engines.py).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from pagewalk.hw.pwc import PageWalkCaches
from pagewalk.hw.tlb import SIZE_CODE, VA_FIELD_MASK, TlbHierarchy
from pagewalk.trace.kernels import (
    C_ACCESSES,
    C_FAULTS,
    C_L1_HITS,
    C_LOADS,
    C_STLB_HITS,
    C_WALK_REFS,
    C_WALKS,
)

TRACE_PCID = 0      # a trace is one address space: one PCID
REFERENCE_BATCH = 1 << 16


class ReferenceReplay:
    """Replays accesses on ``tlb`` and ``pwc``, counting into ``counters`` (fast.C_*)."""

    def __init__(self, tlb: TlbHierarchy, pwc: PageWalkCaches,
                 counters: npt.NDArray[np.int64]) -> None:
        self.tlb = tlb
        self.pwc = pwc
        self.counters = counters
        self.mapped: set[tuple[int, int]] = set()     # (page number, page shift)

    def access(self, vaddr: int, kind: int, page_shift: int) -> None:
        """One access of ``kind`` (0 load, 1 store, 2 ifetch) to a page of ``page_shift``."""
        counters = self.counters
        counters[C_ACCESSES] += 1
        counters[C_LOADS + kind] += 1
        hit = self.tlb.lookup(vaddr, kind, TRACE_PCID, page_shift)
        if hit.level == "l1":
            counters[C_L1_HITS] += 1
            return
        if hit.level == "stlb":
            counters[C_STLB_HITS] += 1
            return
        self.walk(vaddr, kind, page_shift)

    def walk(self, vaddr: int, kind: int, page_shift: int) -> None:
        """A miss in every TLB: fault the page in if it was never touched, walk, fill."""
        counters = self.counters
        counters[C_WALKS] += 1
        if self.fault_in(vaddr, page_shift):
            counters[C_FAULTS] += 1
        counters[C_WALK_REFS] += self.pwc.walk(vaddr, TRACE_PCID, page_shift)
        self.tlb.fill(vaddr, kind, page_shift, TRACE_PCID, 0)

    def fault_in(self, vaddr: int, page_shift: int) -> bool:
        """Demand paging: map the page on its first touch; True if this was that touch."""
        page = ((vaddr & VA_FIELD_MASK) >> page_shift, SIZE_CODE[page_shift])
        if page in self.mapped:
            return False
        self.mapped.add(page)
        return True

    def replay(self, words: npt.NDArray[np.uint64], page_shift_of: Callable[[int], int],
               check: Callable[[int, int], None]) -> None:
        """Replay .pwt ``words`` in order; ``check(index, word)`` raises on a bad record,
        ``page_shift_of(vaddr)`` gives each page's size."""
        for first in range(0, words.shape[0], REFERENCE_BATCH):
            batch = words[first:first + REFERENCE_BATCH].tolist()   # Python ints, a batch at a time
            for offset, word in enumerate(batch):
                check(first + offset, word)
                vaddr = word & VA_FIELD_MASK
                self.access(vaddr, word >> 62, page_shift_of(vaddr))
