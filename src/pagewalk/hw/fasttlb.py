"""The TLBs' and LRU tables' rules in compiled code (Numba), on the flat arrays of
hw/tlb.py and hw/lru_table.py.

One copy of the rules for every compiled user: the MMU's fast path (hw/fastmmu.py) and
the trace replay (trace/fast.py) inline these helpers (``inline="always"``), so both
keep the replacement rule of hw/lru_table.py (true LRU by stamps from one clock, an
invalid way has stamp 0, a fill takes the smallest stamp, the lowest way on a tie) and
the lookup order of hw/tlb.py TlbHierarchy (SDM vol. 3A §4.10.2). No Python object
crosses into Numba: every argument is an integer or an array.

=============  ================  ==========================================================
name           dtype, shape      meaning
=============  ================  ==========================================================
layout         int64 [A, 4]      per TLB array: offset, nr_sets, nr_ways, set_mask (-1: use %)
routes         int64 [2, 3, 3]   [level-1, kind, size code] -> TLB array index or -1
tags           int64 [E]         TLB entry tags (-1 invalid): vpn | size << 45 | pcid << 47
stamps         int64 [E]         LRU stamps (0 invalid)
payload        uint64 [E]        value stored with each entry (the MMU's leaf entry)
clock          int64 [1]         the TLB storage's LRU clock
tlb_stats      int64 [A, 2]      hits, misses per TLB array (per probe)
=============  ================  ==========================================================

Table indexes are unsigned so Numba emits no negative-index wrap-around; searching a
set for a tag is a branch-free minimum LLVM vectorises (no mispredicted loop exit).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from numba import njit

VA_MASK = (1 << 57) - 1
TAG_SIZE_SHIFT = 45
TAG_PCID_SHIFT = 47
LEVEL_L1 = 1
LEVEL_STLB = 2

Ints = npt.NDArray[np.int64]
Words = npt.NDArray[np.uint64]
Int = int | np.integer[Any]       # compiled code mixes Python ints and NumPy scalars


# -- one LRU table on flat arrays (hw/lru_table.py's rules) ---------------------------------
@njit(cache=True, inline="always")
def lru_find(tags: Ints, base: Int, nr_ways: Int, tag: Int) -> Int:
    """Flat index of ``tag`` in ``tags[base:base + nr_ways]``, or -1 (no LRU update).

    A branch-free minimum over the ways (tags are unique in a set), which LLVM vectorises:
    no mispredicted loop exit."""
    first = np.uint64(base)
    end = first + np.uint64(nr_ways)
    found = end
    for i in range(first, end):
        found = min(found, np.uint64(i) if tags[i] == tag else end)
    return np.int64(found) if found < end else -1


@njit(cache=True, inline="always")
def lru_touch(stamps: Ints, clock: Ints, index: Int) -> None:
    """Make entry ``index`` the most recently used."""
    clock[0] += 1
    stamps[np.uint64(index)] = clock[0]


@njit(cache=True, inline="always")
def lru_victim(stamps: Ints, base: Int, nr_ways: Int) -> Int:
    """The way a fill replaces: the smallest stamp (invalid = 0), the lowest on a tie.

    A plain scalar loop: the vectorised minimum reads the stamps just written by the
    previous access's scalar store, which the store buffer cannot forward to a vector
    load (measured 25-30% slower on the page-walk caches' 32-entry scans)."""
    first = np.uint64(base)
    victim = first
    oldest = stamps[first]
    for i in range(first + np.uint64(1), first + np.uint64(nr_ways)):
        stamp = stamps[i]
        if stamp < oldest:
            oldest = stamp
            victim = np.uint64(i)
    return np.int64(victim)


@njit(cache=True, inline="always")
def lru_insert(tags: Ints, stamps: Ints, payload: Words, clock: Ints, base: Int,
               nr_ways: Int, tag: Int, value: np.uint64) -> Int:
    """Fill a tag the caller knows is absent (it just missed): replace the victim; returns
    the flat index it now holds."""
    index = np.uint64(lru_victim(stamps, base, nr_ways))
    clock[0] += 1
    tags[index] = tag
    stamps[index] = clock[0]
    payload[index] = value
    return np.int64(index)


@njit(cache=True, inline="always")
def lru_fill(tags: Ints, stamps: Ints, payload: Words, clock: Ints, base: Int,
             nr_ways: Int, tag: Int, value: np.uint64) -> None:
    """LruTable.fill: rewrite ``tag`` in place if present, else replace the victim."""
    index = lru_find(tags, base, nr_ways, tag)
    if index < 0:
        lru_insert(tags, stamps, payload, clock, base, nr_ways, tag, value)
        return
    lru_touch(stamps, clock, index)
    payload[np.uint64(index)] = value


# -- TLBs (hw/tlb.py TlbHierarchy) ----------------------------------------------------------
@njit(cache=True, inline="always")
def size_code(page_shift: Int) -> Int:
    """4 KiB -> 0, 2 MiB -> 1, 1 GiB -> 2."""
    return (page_shift - 12) // 9


@njit(cache=True, inline="always")
def tlb_tag(vaddr: Int, page_shift: Int, pcid: Int) -> Int:
    return ((vaddr & VA_MASK) >> page_shift) | (size_code(page_shift) << TAG_SIZE_SHIFT) | (
        pcid << TAG_PCID_SHIFT)


@njit(cache=True, inline="always")
def set_base(layout: Ints, index: Int, vaddr: Int, page_shift: Int) -> Int:
    """Flat index of way 0 of the set the page of ``vaddr`` maps to in array ``index``."""
    vpn = (vaddr & VA_MASK) >> page_shift
    mask = layout[index, 3]
    set_index = vpn & mask if mask >= 0 else vpn % layout[index, 1]
    first: Int = layout[index, 0] + set_index * layout[index, 2]
    return first


@njit(cache=True, inline="always")
def tlb_probe(index: Int, vaddr: Int, page_shift: Int, pcid: Int, layout: Ints, tags: Ints,
              stamps: Ints, clock: Ints, tlb_stats: Ints) -> Int:
    """Look up array ``index`` (-1: none) for the page of ``page_shift``: the flat index
    of the entry (made MRU) or -1; counts the hit or miss."""
    if index < 0:
        return -1
    found = lru_find(tags, set_base(layout, index, vaddr, page_shift), layout[index, 2],
                     tlb_tag(vaddr, page_shift, pcid))
    if found < 0:
        tlb_stats[index, 1] += 1
        return -1
    tlb_stats[index, 0] += 1
    lru_touch(stamps, clock, found)
    return found


@njit(cache=True, inline="always")
def tlb_fill_array(index: Int, vaddr: Int, page_shift: Int, pcid: Int, value: np.uint64,
                   layout: Ints, tags: Ints, stamps: Ints, payload: Words,
                   clock: Ints) -> None:
    """Enter a translation in array ``index`` (nothing if -1)."""
    if index >= 0:
        lru_fill(tags, stamps, payload, clock, set_base(layout, index, vaddr, page_shift),
                 layout[index, 2], tlb_tag(vaddr, page_shift, pcid), value)


@njit(cache=True, inline="always")
def tlb_lookup(vaddr: Int, kind: Int, page_shift: Int, pcid: Int, layout: Ints,
               routes: Ints, tags: Ints, stamps: Ints, payload: Words, clock: Ints,
               tlb_stats: Ints) -> tuple[Int, Int, np.uint64]:
    """TlbHierarchy.lookup: ``(level, page_shift, payload)`` with level LEVEL_L1,
    LEVEL_STLB or 0 (a miss). ``page_shift`` 0 probes every size (the MMU: the hardware
    does not know the size), else only that size. An STLB hit is copied into the L1."""
    first = 0 if page_shift == 0 else size_code(page_shift)
    last = 2 if page_shift == 0 else first
    for code in range(first, last + 1):
        shift = 12 + 9 * code
        found = tlb_probe(routes[0, kind, code], vaddr, shift, pcid, layout, tags, stamps,
                          clock, tlb_stats)
        if found >= 0:
            return LEVEL_L1, shift, payload[np.uint64(found)]
    for code in range(first, last + 1):
        shift = 12 + 9 * code
        found = tlb_probe(routes[1, kind, code], vaddr, shift, pcid, layout, tags, stamps,
                          clock, tlb_stats)
        if found >= 0:
            value = payload[np.uint64(found)]
            tlb_fill_array(routes[0, kind, code], vaddr, shift, pcid, value, layout, tags,
                           stamps, payload, clock)
            return LEVEL_STLB, shift, value
    return 0, 0, np.uint64(0)


@njit(cache=True, inline="always")
def tlb_fill(vaddr: Int, kind: Int, page_shift: Int, pcid: Int, value: np.uint64,
             layout: Ints, routes: Ints, tags: Ints, stamps: Ints, payload: Words,
             clock: Ints) -> None:
    """TlbHierarchy.fill: after a walk, the STLB then the L1 of ``kind``."""
    code = size_code(page_shift)
    tlb_fill_array(routes[1, kind, code], vaddr, page_shift, pcid, value, layout, tags,
                   stamps, payload, clock)
    tlb_fill_array(routes[0, kind, code], vaddr, page_shift, pcid, value, layout, tags,
                   stamps, payload, clock)
