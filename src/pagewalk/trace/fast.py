"""The compiled replay: Numba kernels over the flat arrays of hw/tlb.py and hw/pwc.py.

Does exactly what ``pagewalk.trace.reference`` does with the TLB and page-walk-cache
objects (the model of ``spec/trace-model.md``, SDM vol. 3A §4.10), on the very same
arrays (``LruArrays`` of ``TlbHierarchy.storage`` and ``PageWalkCaches.storage``), in the
three layers of STYLE rule 12: ``replay.replay_trace`` validates and packs, the driver
:func:`replay_records` loops over a chunk of records, :func:`replay_access` does one
access. No Python object crosses into Numba: every argument is an integer or an array.

Flat-array arguments (the same names everywhere in this module):

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
pwc_layout     int64 [4, 4]      per PWC row (PML5E, PML4E, PDPTE, PDE): offset, nr_entries,
                                 key_shift, key_bits
pwc_tags ...   as tags ...       the page-walk caches' storage; keys VA[..:shift] | pcid << 48
pwc_stats      int64 [4, 2]      hits, misses per PWC row
top_row        int               1 for 4-level paging, 0 for 5-level
mapped         int64 [2**k]      open-addressing set of mapped pages (-1 empty):
                                 key = vpn << 2 | size code
counters       int64 [NR]        the report counters, indexed by the C_* constants
=============  ================  ==========================================================

The per-access entry points other jitted code may call (the scenario MMU's fast path):
:func:`tlb_lookup`, :func:`tlb_fill`, :func:`pwc_walk` and :func:`replay_access`.
The hot path is small functions that LLVM inlines; it does no allocation.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numba import njit

# -- counters (replay.TraceStats reads them back by these indexes) ------------------------
C_ACCESSES = 0
C_LOADS = 1          # C_LOADS + kind: loads, stores, instruction fetches
C_STORES = 2
C_IFETCHES = 3
C_L1_HITS = 4
C_STLB_HITS = 5
C_WALKS = 6
C_WALK_REFS = 7
C_FAULTS = 8
NR_COUNTERS = 9

# -- stop reasons of the driver ------------------------------------------------------------
DONE = 0
GROW_MAPPED = 1      # the mapped-page set is half full: Python doubles it and calls again
BAD_RESERVED = 2     # bits 57..61 of a record are not zero
BAD_KIND = 3         # kind 3 does not exist
NON_CANONICAL = 4    # the address is not canonical for the paging mode

VA_MASK = (1 << 57) - 1
TAG_SIZE_SHIFT = 45
TAG_PCID_SHIFT = 47
PWC_PCID_SHIFT = 48
NR_PWC_ROWS = 4


@njit(cache=True)
def size_code(page_shift: int) -> int:
    """4 KiB -> 0, 2 MiB -> 1, 1 GiB -> 2."""
    return (page_shift - 12) // 9


@njit(cache=True)
def set_base(layout: npt.NDArray[np.int64], index: int, number: int) -> int:
    """Flat index of way 0 of the set ``number`` maps to in array ``index``."""
    mask = layout[index, 3]
    set_index = number & mask if mask >= 0 else number % layout[index, 1]
    return layout[index, 0] + set_index * layout[index, 2]


@njit(cache=True)
def lru_lookup(tags: npt.NDArray[np.int64], stamps: npt.NDArray[np.int64],
               clock: npt.NDArray[np.int64], base: int, nr_ways: int, tag: int) -> int:
    """LruTable.lookup on flat arrays: the flat index of ``tag`` (made MRU) or -1."""
    for i in range(base, base + nr_ways):
        if tags[i] == tag:
            clock[0] += 1
            stamps[i] = clock[0]
            return i
    return -1


@njit(cache=True)
def lru_fill(tags: npt.NDArray[np.int64], stamps: npt.NDArray[np.int64],
             payload: npt.NDArray[np.uint64], clock: npt.NDArray[np.int64], base: int,
             nr_ways: int, tag: int, value: np.uint64) -> None:
    """LruTable.fill on flat arrays: rewrite ``tag`` if present, else replace the way with
    the smallest stamp (invalid ways have 0), the lowest on a tie."""
    victim = base
    for i in range(base, base + nr_ways):
        if tags[i] == tag:
            victim = i
            break
        if stamps[i] < stamps[victim]:
            victim = i
    clock[0] += 1
    tags[victim] = tag
    stamps[victim] = clock[0]
    payload[victim] = value


# -- TLBs ------------------------------------------------------------------------------------
@njit(cache=True)
def tlb_probe(index: int, vaddr: int, page_shift: int, pcid: int,
              layout: npt.NDArray[np.int64], tags: npt.NDArray[np.int64],
              stamps: npt.NDArray[np.int64], clock: npt.NDArray[np.int64],
              tlb_stats: npt.NDArray[np.int64]) -> int:
    """Look up array ``index`` (-1: none) for the page of ``page_shift``; flat index or -1."""
    if index < 0:
        return -1
    vpn = (vaddr & VA_MASK) >> page_shift
    tag = vpn | (size_code(page_shift) << TAG_SIZE_SHIFT) | (pcid << TAG_PCID_SHIFT)
    found = lru_lookup(tags, stamps, clock, set_base(layout, index, vpn), layout[index, 2], tag)
    if found >= 0:
        tlb_stats[index, 0] += 1
    else:
        tlb_stats[index, 1] += 1
    return found


@njit(cache=True)
def tlb_fill_array(index: int, vaddr: int, page_shift: int, pcid: int, value: np.uint64,
                   layout: npt.NDArray[np.int64], tags: npt.NDArray[np.int64],
                   stamps: npt.NDArray[np.int64], payload: npt.NDArray[np.uint64],
                   clock: npt.NDArray[np.int64]) -> None:
    if index < 0:
        return
    vpn = (vaddr & VA_MASK) >> page_shift
    tag = vpn | (size_code(page_shift) << TAG_SIZE_SHIFT) | (pcid << TAG_PCID_SHIFT)
    lru_fill(tags, stamps, payload, clock, set_base(layout, index, vpn), layout[index, 2],
             tag, value)


@njit(cache=True)
def tlb_lookup(vaddr: int, kind: int, page_shift: int, pcid: int,
               layout: npt.NDArray[np.int64], routes: npt.NDArray[np.int64],
               tags: npt.NDArray[np.int64], stamps: npt.NDArray[np.int64],
               payload: npt.NDArray[np.uint64], clock: npt.NDArray[np.int64],
               tlb_stats: npt.NDArray[np.int64]) -> tuple[int, int, np.uint64]:
    """TlbHierarchy.lookup: ``(level, page_shift, payload)``, level 1 (L1), 2 (STLB) or
    0 (miss). ``page_shift`` 0 probes every size (the MMU), else only that size."""
    first, last = (0, 2) if page_shift == 0 else (size_code(page_shift), size_code(page_shift))
    for code in range(first, last + 1):
        shift = 12 + 9 * code
        found = tlb_probe(routes[0, kind, code], vaddr, shift, pcid, layout, tags, stamps,
                          clock, tlb_stats)
        if found >= 0:
            return 1, shift, payload[found]
    for code in range(first, last + 1):
        shift = 12 + 9 * code
        found = tlb_probe(routes[1, kind, code], vaddr, shift, pcid, layout, tags, stamps,
                          clock, tlb_stats)
        if found >= 0:
            value = payload[found]
            tlb_fill_array(routes[0, kind, code], vaddr, shift, pcid, value, layout, tags,
                           stamps, payload, clock)
            return 2, shift, value
    return 0, 0, np.uint64(0)


@njit(cache=True)
def tlb_fill(vaddr: int, kind: int, page_shift: int, pcid: int, value: np.uint64,
             layout: npt.NDArray[np.int64], routes: npt.NDArray[np.int64],
             tags: npt.NDArray[np.int64], stamps: npt.NDArray[np.int64],
             payload: npt.NDArray[np.uint64], clock: npt.NDArray[np.int64]) -> None:
    """TlbHierarchy.fill: after a walk, the STLB then the L1 of ``kind``."""
    code = size_code(page_shift)
    tlb_fill_array(routes[1, kind, code], vaddr, page_shift, pcid, value, layout, tags,
                   stamps, payload, clock)
    tlb_fill_array(routes[0, kind, code], vaddr, page_shift, pcid, value, layout, tags,
                   stamps, payload, clock)


# -- page-walk caches ------------------------------------------------------------------------
@njit(cache=True)
def pwc_key(pwc_layout: npt.NDArray[np.int64], row: int, vaddr: int, pcid: int) -> int:
    shift = pwc_layout[row, 2]
    return ((vaddr >> shift) & ((1 << pwc_layout[row, 3]) - 1)) | (pcid << PWC_PCID_SHIFT)


@njit(cache=True)
def pwc_walk(vaddr: int, page_shift: int, pcid: int, top_row: int,
             pwc_layout: npt.NDArray[np.int64], pwc_tags: npt.NDArray[np.int64],
             pwc_stamps: npt.NDArray[np.int64], pwc_payload: npt.NDArray[np.uint64],
             pwc_clock: npt.NDArray[np.int64], pwc_stats: npt.NDArray[np.int64]) -> int:
    """PageWalkCaches.walk: probe from the level above the leaf upwards, stop at the first
    hit, fill the upper-level entries read below it; returns the entries read."""
    leaf_row = 4 - size_code(page_shift)
    first_read = top_row
    for row in range(leaf_row - 1, top_row - 1, -1):
        nr_entries = pwc_layout[row, 1]
        if nr_entries == 0:
            continue
        key = pwc_key(pwc_layout, row, vaddr, pcid)
        if lru_lookup(pwc_tags, pwc_stamps, pwc_clock, pwc_layout[row, 0], nr_entries,
                      key) >= 0:
            pwc_stats[row, 0] += 1
            first_read = row + 1
            break
        pwc_stats[row, 1] += 1
    for row in range(first_read, leaf_row):
        nr_entries = pwc_layout[row, 1]
        if nr_entries > 0:
            lru_fill(pwc_tags, pwc_stamps, pwc_payload, pwc_clock, pwc_layout[row, 0],
                     nr_entries, pwc_key(pwc_layout, row, vaddr, pcid), np.uint64(0))
    return leaf_row - first_read + 1


# -- demand paging: the set of mapped pages ------------------------------------------------
@njit(cache=True)
def mapped_slot(key: int, mask: int) -> int:
    """Home slot of ``key`` (>= 0, < 2**47): multiplicative mixing without int64 overflow."""
    h = ((key & 0x7FFFFFFF) * 0x5BD1E995) ^ ((key >> 31) * 0x1B873593)
    return ((h >> 24) ^ h) & mask


@njit(cache=True)
def mapped_insert(mapped: npt.NDArray[np.int64], key: int) -> bool:
    """Add ``key``; True if it was not there (a page fault). Linear probing; the caller
    keeps the set at most half full."""
    mask = mapped.shape[0] - 1
    slot = mapped_slot(key, mask)
    while True:
        held = mapped[slot]
        if held == key:
            return False
        if held == -1:
            mapped[slot] = key
            return True
        slot = (slot + 1) & mask


@njit(cache=True)
def mapped_rehash(old: npt.NDArray[np.int64], new: npt.NDArray[np.int64]) -> None:
    for i in range(old.shape[0]):
        if old[i] != -1:
            mapped_insert(new, old[i])


# -- one access and the loop -----------------------------------------------------------------
@njit(cache=True)
def replay_access(vaddr: int, kind: int, page_shift: int,
                  layout: npt.NDArray[np.int64], routes: npt.NDArray[np.int64],
                  tags: npt.NDArray[np.int64], stamps: npt.NDArray[np.int64],
                  payload: npt.NDArray[np.uint64], clock: npt.NDArray[np.int64],
                  tlb_stats: npt.NDArray[np.int64], top_row: int,
                  pwc_layout: npt.NDArray[np.int64], pwc_tags: npt.NDArray[np.int64],
                  pwc_stamps: npt.NDArray[np.int64], pwc_payload: npt.NDArray[np.uint64],
                  pwc_clock: npt.NDArray[np.int64], pwc_stats: npt.NDArray[np.int64],
                  mapped: npt.NDArray[np.int64], counters: npt.NDArray[np.int64]) -> None:
    """One access of the trace model (PCID 0): L1, STLB, else fault-if-unmapped and walk.

    ``mapped`` must have room for one more key (the driver grows it)."""
    counters[C_ACCESSES] += 1
    counters[C_LOADS + kind] += 1
    code = size_code(page_shift)
    l1 = routes[0, kind, code]
    if tlb_probe(l1, vaddr, page_shift, 0, layout, tags, stamps, clock, tlb_stats) >= 0:
        counters[C_L1_HITS] += 1
        return
    l2 = routes[1, kind, code]
    found = tlb_probe(l2, vaddr, page_shift, 0, layout, tags, stamps, clock, tlb_stats)
    if found >= 0:
        counters[C_STLB_HITS] += 1
        tlb_fill_array(l1, vaddr, page_shift, 0, payload[found], layout, tags, stamps,
                       payload, clock)
        return
    # A page never touched cannot be in a TLB, so only a walk can find it unmapped.
    counters[C_WALKS] += 1
    if mapped_insert(mapped, (((vaddr & VA_MASK) >> page_shift) << 2) | code):
        counters[C_FAULTS] += 1
    counters[C_WALK_REFS] += pwc_walk(vaddr, page_shift, 0, top_row, pwc_layout, pwc_tags,
                                      pwc_stamps, pwc_payload, pwc_clock, pwc_stats)
    tlb_fill_array(l2, vaddr, page_shift, 0, np.uint64(0), layout, tags, stamps, payload, clock)
    tlb_fill_array(l1, vaddr, page_shift, 0, np.uint64(0), layout, tags, stamps, payload, clock)


@njit(cache=True)
def page_shift_at(vaddr: int, map_starts: npt.NDArray[np.int64],
                  map_ends: npt.NDArray[np.int64], map_shifts: npt.NDArray[np.int64]) -> int:
    """The page size of ``vaddr`` from sorted ranges ``[start, end)``; 4 KiB outside them."""
    lo, hi = 0, map_starts.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if map_starts[mid] <= vaddr:
            lo = mid + 1
        else:
            hi = mid
    if lo > 0 and vaddr < map_ends[lo - 1]:
        return map_shifts[lo - 1]
    return 12


@njit(cache=True)
def replay_records(records: npt.NDArray[np.int64], start: int, va_bits: int, page_shift: int,
                   map_starts: npt.NDArray[np.int64], map_ends: npt.NDArray[np.int64],
                   map_shifts: npt.NDArray[np.int64],
                   layout: npt.NDArray[np.int64], routes: npt.NDArray[np.int64],
                   tags: npt.NDArray[np.int64], stamps: npt.NDArray[np.int64],
                   payload: npt.NDArray[np.uint64], clock: npt.NDArray[np.int64],
                   tlb_stats: npt.NDArray[np.int64], top_row: int,
                   pwc_layout: npt.NDArray[np.int64], pwc_tags: npt.NDArray[np.int64],
                   pwc_stamps: npt.NDArray[np.int64], pwc_payload: npt.NDArray[np.uint64],
                   pwc_clock: npt.NDArray[np.int64], pwc_stats: npt.NDArray[np.int64],
                   mapped: npt.NDArray[np.int64],
                   counters: npt.NDArray[np.int64]) -> tuple[int, int]:
    """Replay ``records[start:]`` (.pwt words viewed as int64); returns ``(index, status)``:
    ``(len, DONE)``, or the record it stopped before and why (GROW_MAPPED, BAD_*,
    NON_CANONICAL). With ``map_starts`` empty every page has ``page_shift``."""
    use_map = map_starts.shape[0] > 0
    canon_shift = va_bits - 1                  # bits canon_shift..56 must all be equal
    canon_ones = (1 << (58 - va_bits)) - 1
    room = mapped.shape[0] // 2
    for i in range(start, records.shape[0]):
        record = records[i]
        if (record >> 57) & 0x1F:
            return i, BAD_RESERVED
        kind = (record >> 62) & 3
        if kind == 3:
            return i, BAD_KIND
        vaddr = record & VA_MASK
        top = vaddr >> canon_shift
        if top != 0 and top != canon_ones:
            return i, NON_CANONICAL
        if counters[C_FAULTS] >= room:
            return i, GROW_MAPPED
        shift = page_shift_at(vaddr, map_starts, map_ends, map_shifts) if use_map else page_shift
        replay_access(vaddr, kind, shift, layout, routes, tags, stamps, payload, clock,
                      tlb_stats, top_row, pwc_layout, pwc_tags, pwc_stamps, pwc_payload,
                      pwc_clock, pwc_stats, mapped, counters)
    return records.shape[0], DONE
