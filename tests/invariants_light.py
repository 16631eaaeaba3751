"""Small invariant checks shared by unit tests (the full set lives in tests/invariants.py)."""

from __future__ import annotations

from pagewalk.mm.page_alloc import PageFlag
from pagewalk.mm.vmstat import NodeStat


def assert_buddy_consistent(k) -> None:  # type: ignore[no-untyped-def]
    """NR_FREE_PAGES equals the free lists, and free blocks never overlap."""
    buddy, memmap = k.buddy, k.memmap
    assert int(k.node_stat[NodeStat.NR_FREE_PAGES]) == buddy.free_pages_total()
    seen = set()
    for zone in buddy.populated_zones():
        for order in range(11):
            pfn = int(buddy.free_head[zone, order])
            count = 0
            while pfn != -1:
                assert memmap.flags[pfn] & PageFlag.BUDDY and memmap.order[pfn] == order
                block = range(pfn, pfn + (1 << order))
                assert not seen.intersection((block.start, block.stop - 1))
                seen.update((block.start, block.stop - 1))
                pfn = int(memmap.next[pfn])
                count += 1
            assert count == int(buddy.nr_free[zone, order])
