"""The compiled replay: Numba kernels over the flat arrays of hw/tlb.py and hw/pwc.py.

Does exactly what ``pagewalk.trace.reference`` does with the TLB and page-walk-cache
objects (the model of ``spec/trace-model.md``, SDM vol. 3A §4.10), on the very same
arrays (the ``LruArrays`` of ``TlbHierarchy.storage`` and ``PageWalkCaches.storage``), in
the three layers of STYLE rule 12: ``replay.TraceReplayer`` validates and packs, the
drivers :func:`tlb_stage` and :func:`walk_stage` loop over a slice of a chunk (in two
threads, as a pipeline), :func:`translate_access` does one access. No Python object crosses into Numba: every argument is an integer or an array.

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
top_row        int               1 for 4-level paging, 0 for 5-level
pwc_layout     int64 [4, 4]      per PWC row (PML5E, PML4E, PDPTE, PDE): offset, nr_entries,
                                 key_shift, key_bits
pwc_tags ...   as tags ...       the page-walk caches' storage; keys VA[..:shift] | pcid << 48
pwc_stats      int64 [4, 2]      hits, misses per PWC row
mapped         int64 [2**k]      open-addressing set of mapped pages (-1 empty):
                                 key = vpn << 2 | size code
counters       int64 [NR]        the report counters, indexed by the C_* constants
=============  ================  ==========================================================

Entry points other jitted code may call (the scenario MMU's fast path): :func:`tlb_lookup`
and :func:`tlb_fill` (hardware lookups with PCIDs and payloads), :func:`pwc_walk`, and
the trace model's per-access functions :func:`replay_access` (one access, demand paging
included) and :func:`translate_access` (the same without the page-fault check).

Why it is fast (measured in benchmarks/bench_trace.py): helpers are inlined into the
driver (``inline="always"``); table indexes are unsigned so Numba emits no negative-index
wrap-around; searching a set for a tag or a victim is a branch-free minimum LLVM
vectorises (no mispredicted loop exits); and an access is replayed in two stages that
depend on each other one way only: the TLBs' state follows from the sequence of
accesses alone (a miss fills the same entries whatever the walk finds), the page-walk
caches' and the mapped pages' from the sequence of walks alone. So stage one
(:func:`tlb_stage`) runs over a slice of the chunk writing its walks to a buffer while
stage two (:func:`walk_stage`: the page-walk caches) runs over the previous
slice's walks in a second thread, while this one counts the slice's faults
(:func:`fault_stage`). The drivers
are compiled without Numba's reference counting (:func:`compiled_loop`): with it, the
array arguments of the inlined helpers cost atomic increments and decrements on every
access (3.7x slower, measured).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numpy as np
import numpy.typing as npt
from numba import njit

# -- counters (replay.TraceReplayer reads them back by these indexes) ----------------------
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
LEVEL_L1 = 1
LEVEL_STLB = 2
OUTCOME_L1 = 0       # translate_access: an L1 hit; OUTCOME_STLB an STLB hit; > 0 a walk
OUTCOME_STLB = -1
OUTCOME_WALK = -2    # tlb_access: a miss in every TLB (the entry is filled already)

Ints = npt.NDArray[np.int64]
Words = npt.NDArray[np.uint64]
Int = int | np.integer[Any]       # compiled code mixes Python ints and NumPy scalars
_F = TypeVar("_F", bound=Callable[..., Any])


def compiled_loop(func: _F) -> _F:
    """``njit(cache=True, nogil=True)`` without Numba's reference counting (``_nrt=False``),
    for the drivers: they allocate nothing, and the array arguments of the helpers inlined
    into them otherwise cost atomic increments and decrements on every access. Without
    the GIL, :func:`walk_stage` can run in a second thread."""
    options: dict[str, Any] = {"cache": True, "_nrt": False, "nogil": True}
    return cast(_F, njit(**options)(func))


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
            victim = i
    return np.int64(victim)


@njit(cache=True, inline="always")
def lru_insert(tags: Ints, stamps: Ints, payload: Words, clock: Ints, base: Int,
               nr_ways: Int, tag: Int, value: np.uint64) -> None:
    """Fill a tag the caller knows is absent (it just missed): replace the victim."""
    index = np.uint64(lru_victim(stamps, base, nr_ways))
    clock[0] += 1
    tags[index] = tag
    stamps[index] = clock[0]
    payload[index] = value


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


# -- TLBs -------------------------------------------------------------------------------------
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


# -- page-walk caches ----------------------------------------------------------------------
@njit(cache=True, inline="always")
def pwc_key(pwc_layout: Ints, row: Int, vaddr: Int, pcid: Int) -> Int:
    key: Int = ((vaddr >> pwc_layout[row, 2]) & ((1 << pwc_layout[row, 3]) - 1)) | (
        pcid << PWC_PCID_SHIFT)
    return key


@njit(cache=True, inline="always")
def pwc_walk(vaddr: Int, page_shift: Int, pcid: Int, top_row: Int, pwc_layout: Ints,
             pwc_tags: Ints, pwc_stamps: Ints, pwc_payload: Words, pwc_clock: Ints,
             pwc_stats: Ints) -> Int:
    """PageWalkCaches.walk: probe from the level above the leaf upwards, stop at the first
    hit, cache the upper-level entries read below it; returns the entries read."""
    leaf_row = 4 - size_code(page_shift)
    first_read = top_row
    for row in range(leaf_row - 1, top_row - 1, -1):
        nr_entries = pwc_layout[row, 1]
        if nr_entries == 0:
            continue
        found = lru_find(pwc_tags, pwc_layout[row, 0], nr_entries,
                         pwc_key(pwc_layout, row, vaddr, pcid))
        if found >= 0:
            pwc_stats[row, 0] += 1
            lru_touch(pwc_stamps, pwc_clock, found)
            first_read = row + 1
            break
        pwc_stats[row, 1] += 1
    for row in range(first_read, leaf_row):
        nr_entries = pwc_layout[row, 1]
        if nr_entries > 0:
            lru_insert(pwc_tags, pwc_stamps, pwc_payload, pwc_clock, pwc_layout[row, 0],
                       nr_entries, pwc_key(pwc_layout, row, vaddr, pcid), np.uint64(0))
    return leaf_row - first_read + 1


# -- demand paging: the set of mapped pages ------------------------------------------------
@njit(cache=True, inline="always")
def page_key(vaddr: Int, page_shift: Int) -> Int:
    return (((vaddr & VA_MASK) >> page_shift) << 2) | size_code(page_shift)


@njit(cache=True, inline="always")
def mapped_slot(key: Int, mask: Int) -> Int:
    """Home slot of ``key`` (0 <= key < 2**47): multiplicative mixing, no int64 overflow."""
    mixed = ((key & 0x7FFFFFFF) * 0x5BD1E995) ^ ((key >> 31) * 0x1B873593)
    return ((mixed >> 24) ^ mixed) & mask


@njit(cache=True, inline="always")
def mapped_insert(mapped: Ints, key: Int) -> bool:
    """Add ``key``; True if it was not there (a page fault). Linear probing; the caller
    keeps the set at most half full."""
    mask = mapped.shape[0] - 1
    slot = mapped_slot(key, mask)
    while True:
        held = mapped[np.uint64(slot)]
        if held == key:
            return False
        if held == -1:
            mapped[np.uint64(slot)] = key
            return True
        slot = (slot + 1) & mask


@compiled_loop
def mapped_rehash(old: Ints, new: Ints) -> None:
    for i in range(old.shape[0]):
        if old[i] != -1:
            mapped_insert(new, old[i])


# -- one access ----------------------------------------------------------------------------
@njit(cache=True, inline="always")
def tlb_access(vaddr: Int, kind: Int, page_shift: Int, layout: Ints, routes: Ints,
               tags: Ints, stamps: Ints, payload: Words, clock: Ints, tlb_stats: Ints) -> Int:
    """The TLB half of one access (PCID 0): L1, else the STLB (a hit is copied into the
    L1), else the entry is filled into the STLB and the L1 as after its walk (the walk's
    outcome does not change the fill). Returns OUTCOME_L1, OUTCOME_STLB or OUTCOME_WALK."""
    code = size_code(page_shift)
    l1 = routes[0, kind, code]
    if tlb_probe(l1, vaddr, page_shift, 0, layout, tags, stamps, clock, tlb_stats) >= 0:
        return OUTCOME_L1
    l2 = routes[1, kind, code]
    found = tlb_probe(l2, vaddr, page_shift, 0, layout, tags, stamps, clock, tlb_stats)
    if found >= 0:
        if l1 >= 0:                  # it just missed there: absent, insert directly
            lru_insert(tags, stamps, payload, clock, set_base(layout, l1, vaddr, page_shift),
                       layout[l1, 2], tlb_tag(vaddr, page_shift, 0), payload[np.uint64(found)])
        return OUTCOME_STLB
    tag = tlb_tag(vaddr, page_shift, 0)
    for index in (l2, l1):           # both just missed: insert directly
        if index >= 0:
            lru_insert(tags, stamps, payload, clock, set_base(layout, index, vaddr, page_shift),
                       layout[index, 2], tag, np.uint64(0))
    return OUTCOME_WALK


@njit(cache=True, inline="always")
def translate_access(vaddr: Int, kind: Int, page_shift: Int, layout: Ints, routes: Ints,
                     tags: Ints, stamps: Ints, payload: Words, clock: Ints, tlb_stats: Ints,
                     top_row: Int, pwc_layout: Ints, pwc_tags: Ints, pwc_stamps: Ints,
                     pwc_payload: Words, pwc_clock: Ints, pwc_stats: Ints) -> Int:
    """One access of the trace model (PCID 0) without demand paging: :func:`tlb_access`,
    and on a miss in every TLB a walk through the page-walk caches. Returns OUTCOME_L1
    (0), OUTCOME_STLB (-1), or for a walk the number of entries it read (> 0);
    :func:`count_access` turns that into the report's counters."""
    outcome = tlb_access(vaddr, kind, page_shift, layout, routes, tags, stamps, payload,
                         clock, tlb_stats)
    if outcome != OUTCOME_WALK:
        return outcome
    walk_refs: Int = pwc_walk(vaddr, page_shift, 0, top_row, pwc_layout, pwc_tags, pwc_stamps,
                              pwc_payload, pwc_clock, pwc_stats)
    return walk_refs


@njit(cache=True, inline="always")
def count_access(counters: Ints, kind: Int, outcome: Int) -> None:
    """Add one access with ``outcome`` (of :func:`translate_access`) to ``counters``."""
    counters[C_ACCESSES] += 1
    counters[C_LOADS + kind] += 1
    if outcome == OUTCOME_L1:
        counters[C_L1_HITS] += 1
    elif outcome == OUTCOME_STLB:
        counters[C_STLB_HITS] += 1
    else:
        counters[C_WALKS] += 1
        counters[C_WALK_REFS] += outcome


@njit(cache=True, inline="always")
def replay_access(vaddr: Int, kind: Int, page_shift: Int, layout: Ints, routes: Ints,
                  tags: Ints, stamps: Ints, payload: Words, clock: Ints, tlb_stats: Ints,
                  top_row: Int, pwc_layout: Ints, pwc_tags: Ints, pwc_stamps: Ints,
                  pwc_payload: Words, pwc_clock: Ints, pwc_stats: Ints, mapped: Ints,
                  counters: Ints) -> None:
    """One access of the trace model, as the reference does it, counted into ``counters``:
    a walk to a page never touched first faults it in. ``mapped`` must have room for one
    more key."""
    outcome = translate_access(vaddr, kind, page_shift, layout, routes, tags, stamps, payload,
                               clock, tlb_stats, top_row, pwc_layout, pwc_tags, pwc_stamps,
                               pwc_payload, pwc_clock, pwc_stats)
    count_access(counters, kind, outcome)
    if outcome > 0 and mapped_insert(mapped, page_key(vaddr, page_shift)):
        counters[C_FAULTS] += 1


# -- the drivers -----------------------------------------------------------------------------
@njit(cache=True, inline="always")
def page_shift_at(vaddr: Int, map_starts: Ints, map_ends: Ints, map_shifts: Ints) -> Int:
    """The page size of ``vaddr`` from sorted ranges ``[start, end)``; 4 KiB outside them."""
    lo, hi = 0, map_starts.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if map_starts[mid] <= vaddr:
            lo = mid + 1
        else:
            hi = mid
    if lo > 0 and vaddr < map_ends[lo - 1]:
        shift: Int = map_shifts[lo - 1]
        return shift
    return 12


@njit(cache=True, inline="always")
def record_status(record: Int, canon_shift: Int, canon_ones: Int) -> Int:
    """DONE for a valid .pwt word (viewed as int64), else why not."""
    if (record >> 57) & 0x1F:
        return BAD_RESERVED
    if ((record >> 62) & 3) == 3:
        return BAD_KIND
    top = (record & VA_MASK) >> canon_shift
    if top != 0 and top != canon_ones:
        return NON_CANONICAL
    return DONE


@compiled_loop
def tlb_stage(records: Ints, start: Int, stop: Int, va_bits: Int, page_shift: Int,
              map_starts: Ints, map_ends: Ints, map_shifts: Ints, layout: Ints, routes: Ints,
              tags: Ints, stamps: Ints, payload: Words, clock: Ints, tlb_stats: Ints,
              walks_out: Ints, counters: Ints) -> tuple[Int, Int, Int]:
    """Stage one of a chunk: the TLBs for ``records[start:stop]`` (.pwt words viewed as
    int64), every page of ``page_shift`` or sized by the map when ``map_starts`` is not
    empty. Each access that misses every TLB is filled into the STLB and the L1 (as after
    its walk: the walk's outcome does not change the fill) and written to ``walks_out``
    as ``vaddr | size code << 57`` for :func:`walk_stage`. Stops before the first bad
    record; returns ``(index, status, number of walks)``."""
    use_map = map_starts.shape[0] > 0
    canon_shift = va_bits - 1                  # bits canon_shift..56 must all be equal
    canon_ones = (1 << (58 - va_bits)) - 1
    # the counters live in registers during the loop (stores to the tables could alias them)
    loads = stores = l1_hits = stlb_hits = 0
    nr_walks: Int = 0
    status: Int = DONE
    end = stop
    for i in range(start, stop):
        record = records[i]
        status = record_status(record, canon_shift, canon_ones)
        if status != DONE:
            end = i
            break
        vaddr = record & VA_MASK
        kind = (record >> 62) & 3
        shift = page_shift_at(vaddr, map_starts, map_ends, map_shifts) if use_map else page_shift
        loads += kind == 0
        stores += kind == 1
        outcome = tlb_access(vaddr, kind, shift, layout, routes, tags, stamps, payload, clock,
                             tlb_stats)
        if outcome == OUTCOME_L1:
            l1_hits += 1
        elif outcome == OUTCOME_STLB:
            stlb_hits += 1
        else:
            walks_out[np.uint64(nr_walks)] = vaddr | (size_code(shift) << 57)
            nr_walks += 1
    counters[C_ACCESSES] += end - start
    counters[C_LOADS] += loads
    counters[C_STORES] += stores
    counters[C_IFETCHES] += end - start - loads - stores
    counters[C_L1_HITS] += l1_hits
    counters[C_STLB_HITS] += stlb_hits
    counters[C_WALKS] += nr_walks
    return end, status, nr_walks


@compiled_loop
def fault_stage(walks: Ints, start: Int, stop: Int, mapped: Ints,
                walk_counters: Ints) -> tuple[Int, Int]:
    """Demand paging over the walks :func:`tlb_stage` wrote: a walk to a page never
    touched first faults it in (a page's first touch always walks: it cannot be in a
    TLB). Counts faults into ``walk_counters[1]``; stops when ``mapped`` is half full
    and returns ``(index, status)``. A loop of its own: its hash probes do not wait on
    each other and overlap their cache misses."""
    room = mapped.shape[0] // 2
    faults = walk_counters[1]
    for i in range(start, stop):
        if faults >= room:
            walk_counters[1] = faults
            return i, GROW_MAPPED
        walk = walks[i]
        if mapped_insert(mapped, page_key(walk & VA_MASK, 12 + 9 * (walk >> 57))):
            faults += 1
    walk_counters[1] = faults
    done: Int = stop
    return done, DONE


@compiled_loop
def walk_stage(walks: Ints, stop: Int, top_row: Int, pwc_layout: Ints, pwc_tags: Ints,
               pwc_stamps: Ints, pwc_payload: Words, pwc_clock: Ints, pwc_stats: Ints,
               walk_counters: Ints) -> None:
    """The walks :func:`tlb_stage` wrote, in order, through the page-walk caches; counts
    the entries read into ``walk_counters[0]``. Touches nothing :func:`tlb_stage` and
    :func:`fault_stage` touch, so it runs over one slice of a chunk beside them on the
    next."""
    walk_refs: Int = 0
    for i in range(stop):
        walk = walks[i]
        walk_refs += pwc_walk(walk & VA_MASK, 12 + 9 * (walk >> 57), 0, top_row, pwc_layout,
                              pwc_tags, pwc_stamps, pwc_payload, pwc_clock, pwc_stats)
    walk_counters[0] += walk_refs


@compiled_loop
def replay_records_per_access(records: Ints, va_bits: Int, page_shift: Int, layout: Ints,
                              routes: Ints, tags: Ints, stamps: Ints, payload: Words,
                              clock: Ints, tlb_stats: Ints, top_row: Int, pwc_layout: Ints,
                              pwc_tags: Ints, pwc_stamps: Ints, pwc_payload: Words,
                              pwc_clock: Ints, pwc_stats: Ints, mapped: Ints,
                              counters: Ints) -> Int:
    """All of ``records`` through :func:`replay_access`, one access at a time (tests use
    it to check that the per-access entry point agrees with the driver). ``mapped`` must
    hold every page; returns the index of a bad record or ``len(records)``."""
    canon_shift = va_bits - 1
    canon_ones = (1 << (58 - va_bits)) - 1
    for i in range(records.shape[0]):
        if record_status(records[i], canon_shift, canon_ones) != DONE:
            return i
        replay_access(records[i] & VA_MASK, (records[i] >> 62) & 3, page_shift, layout, routes,
                      tags, stamps, payload, clock, tlb_stats, top_row, pwc_layout, pwc_tags,
                      pwc_stamps, pwc_payload, pwc_clock, pwc_stats, mapped, counters)
    done: Int = records.shape[0]
    return done
