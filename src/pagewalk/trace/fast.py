"""The compiled replay: Numba kernels over the flat arrays of hw/tlb.py and hw/pwc.py.

Does exactly what ``pagewalk.trace.reference`` does with the TLB and page-walk-cache
objects (the model of ``docs/trace-model.md``, SDM vol. 3A §4.10), on the very same
arrays (the ``LruArrays`` of ``TlbHierarchy.storage`` and ``PageWalkCaches.storage``), in
the three layers of STYLE rule 12: ``replay.TraceReplayer`` validates and packs, the
drivers :func:`tlb_stage`, :func:`fault_stage` and :func:`walk_stage` loop over a slice of
a chunk (as a pipeline), :func:`translate_access` does one access. The TLB and LRU rules
are hw/fasttlb.py's (shared with the MMU's fast path). No Python object crosses into
Numba: every argument is an integer or an array. trace/kernels.py loads the drivers
(from a cache of their machine code when it can, without importing Numba).

Flat-array arguments (beyond hw/fasttlb.py's ``layout`` ... ``tlb_stats``):

=============  ================  ==========================================================
name           dtype, shape      meaning
=============  ================  ==========================================================
top_row        int               1 for 4-level paging, 0 for 5-level
pwc_layout     int64 [4, 4]      per PWC row (PML5E, PML4E, PDPTE, PDE): offset, nr_entries,
                                 key_shift, key_bits
pwc_tags ...   as tags ...       the page-walk caches' storage; keys VA[..:shift] | pcid << 48
pwc_stats      int64 [4, 2]      hits, misses per PWC row
mapped         int64 [2**k]      open-addressing set of mapped pages (-1 empty):
                                 key = vpn << 2 | size code
counters       int64 [NR]        the report counters, indexed by kernels.C_*
run_state      int64 [16]        the same-page slots of :func:`tlb_stage` (kernels.RUN_*)
=============  ================  ==========================================================

Why it is fast (measured in benchmarks/bench_trace.py):

- Same-page runs without lookups. An access to a page its class (data: the dTLB;
  instruction fetches: the iTLB) used among its last two distinct L1 entries, whose
  entry is still there, is an L1 hit that only stamps that entry again: :func:`tlb_stage`
  counts it as such (4 compares, no set lookup), and once a page has a run of
  STREAK_BULK, finds the run's end a block at a time with a branch-free scan LLVM
  vectorises (:func:`run_end`) and counts the block at once, with the stamps the serial
  model gives. Real programs' traces are mostly such runs (95% of gzip's accesses).
- Two stages that depend on each other one way only: the TLBs' state follows from the
  sequence of accesses alone (a miss fills the same entries whatever the walk finds),
  the page-walk caches' and the mapped pages' from the sequence of walks alone. So stage
  one (:func:`tlb_stage`) writes a slice's walks to a buffer, and stage two counts their
  faults (:func:`fault_stage`, prefetching the hash slots of the walks ahead: the trace
  is known, so the cache misses overlap) and runs them through the page-walk caches
  (:func:`walk_stage`) in a second thread while stage one takes the next slice.
- Helpers are inlined into the drivers (``inline="always"``), and the drivers are
  compiled without Numba's reference counting (:func:`compiled_loop`); loops index with
  unsigned integers (no negative-index wrap-around, so LLVM vectorises them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numpy as np
import numpy.typing as npt
from llvmlite import ir  # type: ignore[import-untyped]
from numba import config as numba_config
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from pagewalk.hw.fasttlb import (
    VA_MASK,
    Int,
    Ints,
    Words,
    lru_find,
    lru_insert,
    lru_touch,
    set_base,
    size_code,
    tlb_probe,
    tlb_tag,
)
from pagewalk.trace.kernels import (
    BAD_KIND,
    BAD_RESERVED,
    C_ACCESSES,
    C_FAULTS,
    C_IFETCHES,
    C_L1_HITS,
    C_LOADS,
    C_STLB_HITS,
    C_STORES,
    C_WALK_REFS,
    C_WALKS,
    DONE,
    GROW_MAPPED,
    LACKEY_BAD_LINE,
    LACKEY_NON_CANONICAL,
    LACKEY_OK,
    NO_RUN,
    NON_CANONICAL,
    RUN_ARRAY,
    RUN_ENTRY,
    RUN_FIELDS,
    RUN_KEY,
    RUN_TAG,
)

PWC_PCID_SHIFT = 48
OUTCOME_L1 = 0       # translate_access: an L1 hit; OUTCOME_STLB an STLB hit; > 0 a walk
OUTCOME_STLB = -1
OUTCOME_WALK = -2    # tlb_access: a miss in every TLB (the entry is filled already)
STORE_BIT = 1 << 62  # kind 1 (a store) in a record; a fetch (kind 2) has bit 63 instead
STREAK_BULK = 8      # tlb_stage: records in a row on one page before it scans for the run's end
RUN_BLOCK_MIN = 64   # records it scans at a time, first ...
RUN_BLOCK_MAX = 1024  # ... doubling while the run outlasts the block, up to this
PREFETCH_AHEAD = 32  # fault_stage: walks ahead whose hash slot is prefetched
_F = TypeVar("_F", bound=Callable[..., Any])


def compiled_loop(func: _F) -> _F:
    """``njit(cache=True, nogil=True)`` without Numba's reference counting (``_nrt=False``),
    for the drivers: they allocate nothing, and the array arguments of the helpers inlined
    into them otherwise cost atomic increments and decrements on every access (3.7x
    slower, measured). Without the GIL, :func:`walk_stage` can run in a second thread.
    The NumPy error model (no exception for an integer division by zero, which cannot
    happen here) leaves the code free of Python's exception machinery, so its machine
    code runs without Numba (trace/kernels.py)."""
    options: dict[str, Any] = {"cache": True, "_nrt": False, "nogil": True,
                               "error_model": "numpy"}
    return cast(_F, njit(**options)(func))


def _prefetch_codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
    ary = context.make_array(sig.args[0])(context, builder, args[0])
    byte_ptr = ir.PointerType(ir.IntType(8))
    hint = builder.module.declare_intrinsic(
        "llvm.prefetch", (), ir.FunctionType(ir.VoidType(), [byte_ptr] + [ir.IntType(32)] * 3))
    address = builder.bitcast(builder.gep(ary.data, [args[1]]), byte_ptr)
    # a read, kept in every cache level (locality 3), of data (cache type 1)
    builder.call(hint, [address, ir.Constant(ir.IntType(32), 0), ir.Constant(ir.IntType(32), 3),
                        ir.Constant(ir.IntType(32), 1)])
    return context.get_dummy_value()


@intrinsic
def _prefetch(typingctx: Any, array: Any, index: Any) -> Any:
    return types.none(array, index), _prefetch_codegen


def _no_prefetch(array: Ints, index: Int) -> None:
    """NUMBA_DISABLE_JIT: plain Python has nothing to hint."""


# Hint the CPU to bring ``array[index]`` into the cache (no effect on any result).
prefetch = cast(Callable[[Ints, Int], None],
                _no_prefetch if getattr(numba_config, "DISABLE_JIT", 0) else _prefetch)


def _as_array_codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
    array_type = sig.return_type
    pointer, shape = args
    llvm_helpers: Any = cgutils             # untyped
    dims = llvm_helpers.unpack_tuple(builder, shape)
    itemsize = context.get_abi_sizeof(context.get_data_type(array_type.dtype))
    strides: list[Any] = []
    stride = context.get_constant(types.intp, itemsize)
    for dim in reversed(dims):                 # C order: the last index varies fastest
        strides.insert(0, stride)
        stride = builder.mul(stride, dim)
    array = context.make_array(array_type)(context, builder)
    context.populate_array(array, data=pointer, shape=llvm_helpers.pack_array(builder, dims),
                           strides=llvm_helpers.pack_array(builder, strides),
                           itemsize=context.get_constant(types.intp, itemsize), meminfo=None)
    return array._getvalue()


@intrinsic
def as_array(typingctx: Any, pointer: Any, shape: Any) -> Any:
    """The C-contiguous array of ``shape`` at ``pointer`` (a CPointer), owned by no one:
    how trace/kernels.py's C entry points hand their arguments to the drivers (Numba's
    carray needs its reference-counting runtime)."""
    return types.Array(pointer.dtype, len(shape), "C")(pointer, shape), _as_array_codegen


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
               tags: Ints, stamps: Ints, payload: Words, clock: Ints,
               tlb_stats: Ints) -> tuple[Int, Int]:
    """The TLB half of one access (PCID 0): L1, else the STLB (a hit is copied into the
    L1), else the entry is filled into the STLB and the L1 as after its walk (the walk's
    outcome does not change the fill). Returns OUTCOME_L1, OUTCOME_STLB or OUTCOME_WALK,
    and the flat index of the page's L1 entry (-1: no L1 array holds it)."""
    code = size_code(page_shift)
    l1 = routes[0, kind, code]
    found = tlb_probe(l1, vaddr, page_shift, 0, layout, tags, stamps, clock, tlb_stats)
    if found >= 0:
        return OUTCOME_L1, found
    l2 = routes[1, kind, code]
    found = tlb_probe(l2, vaddr, page_shift, 0, layout, tags, stamps, clock, tlb_stats)
    tag = tlb_tag(vaddr, page_shift, 0)
    if found >= 0:
        entry: Int = -1
        if l1 >= 0:                  # it just missed there: absent, insert directly
            entry = lru_insert(tags, stamps, payload, clock,
                               set_base(layout, l1, vaddr, page_shift), layout[l1, 2], tag,
                               payload[np.uint64(found)])
        return OUTCOME_STLB, entry
    if l2 >= 0:                      # both just missed: insert directly
        lru_insert(tags, stamps, payload, clock, set_base(layout, l2, vaddr, page_shift),
                   layout[l2, 2], tag, np.uint64(0))
    entry = -1
    if l1 >= 0:
        entry = lru_insert(tags, stamps, payload, clock, set_base(layout, l1, vaddr, page_shift),
                           layout[l1, 2], tag, np.uint64(0))
    return OUTCOME_WALK, entry


@njit(cache=True, inline="always")
def translate_access(vaddr: Int, kind: Int, page_shift: Int, layout: Ints, routes: Ints,
                     tags: Ints, stamps: Ints, payload: Words, clock: Ints, tlb_stats: Ints,
                     top_row: Int, pwc_layout: Ints, pwc_tags: Ints, pwc_stamps: Ints,
                     pwc_payload: Words, pwc_clock: Ints, pwc_stats: Ints) -> Int:
    """One access of the trace model (PCID 0) without demand paging: :func:`tlb_access`,
    and on a miss in every TLB a walk through the page-walk caches. Returns OUTCOME_L1
    (0), OUTCOME_STLB (-1), or for a walk the number of entries it read (> 0);
    :func:`count_access` turns that into the report's counters."""
    outcome, _ = tlb_access(vaddr, kind, page_shift, layout, routes, tags, stamps, payload,
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


@njit(cache=True, inline="always")
def run_key(record: Int, key_mask: Int) -> Int:
    """The key of a record's page and class: its bits from the page up (``key_mask``), a
    store's kind bit cleared (a store and a load share the dTLB entry); a fetch keeps
    bit 63, and a bad record keeps its bad bits, so it never matches a valid key."""
    bits = record & key_mask
    key: Int = bits & ~(STORE_BIT & ~(bits >> 1))     # clear bit 62 when bit 63 is clear
    return key


@njit(cache=True, inline="always")
def run_end(records: Ints, low: Int, high: Int, key_mask: Int, key: Int) -> Int:
    """The first index in ``[low, high)`` whose record is not of page and class ``key``,
    or ``high``: a branch-free minimum, which LLVM vectorises."""
    end = np.uint64(high)
    first = end
    for j in range(np.uint64(low), end):
        first = min(first, end if run_key(records[j], key_mask) == key else np.uint64(j))
    return np.int64(first)


@njit(cache=True, inline="always")
def run_length(records: Ints, i: Int, stop: Int, key_mask: Int, key: Int,
               block: Int) -> tuple[Int, Int]:
    """How many records from ``i`` on (which is of page and class ``key``) continue its
    run, looking one block ahead (:func:`run_end`), and the next block size: doubled
    while runs outlast the block, back to the smallest when one ends in it."""
    high = min(i + block, stop)
    count = run_end(records, i + 1, high, key_mask, key) - i
    block = min(block * 2, RUN_BLOCK_MAX) if i + count == high else RUN_BLOCK_MIN
    return count, block


@njit(cache=True, inline="always")
def count_stores(records: Ints, low: Int, high: Int) -> Int:
    """Stores among data records ``[low, high)`` (kind 1: bit 62); vectorised."""
    stores: Int = 0
    for j in range(np.uint64(low), np.uint64(high)):
        stores += (records[j] >> 62) & 1
    return stores


@njit(cache=True, inline="always")
def slot_entry(run_state: Ints, slot: Int) -> np.uint64:
    """The L1 entry of the slot at ``slot`` as an unsigned index (0 when void: unused)."""
    return np.uint64(max(run_state[slot + RUN_ENTRY], 0))


@njit(cache=True, inline="always")
def flush_hits(tlb_stats: Ints, run_state: Ints, slot: Int, hits: Int) -> None:
    """Add a slot's hits to its TLB array's counter."""
    if hits:
        tlb_stats[run_state[slot + RUN_ARRAY], 0] += hits


@njit(cache=True, inline="always")
def still_held(key: Int, entry: Int, tag: Int, tags: Ints) -> Int:
    """A slot's key while its L1 entry still holds its page, else NO_RUN."""
    held: Int = key if key == NO_RUN or tags[np.uint64(entry)] == tag else NO_RUN
    return held


# run_state offsets of the four slots (trace/kernels.py): data first and second, fetch ...
DATA_A, DATA_B, FETCH_A, FETCH_B = (slot * RUN_FIELDS for slot in range(4))


@compiled_loop
def tlb_stage(records: Ints, start: Int, stop: Int, va_bits: Int, page_shift: Int,
              map_starts: Ints, map_ends: Ints, map_shifts: Ints, layout: Ints, routes: Ints,
              tags: Ints, stamps: Ints, payload: Words, clock: Ints, tlb_stats: Ints,
              run_state: Ints, walks_out: Ints, counters: Ints) -> tuple[Int, Int, Int]:
    """Stage one of a chunk: the TLBs for ``records[start:stop]`` (.pwt words viewed as
    int64), every page of ``page_shift`` or sized by the map when ``map_starts`` is not
    empty. Stops before the first bad record; returns ``(index, status, number of
    walks)``.

    Same-page runs: four slots (``run_state``, trace/kernels.py) hold the pages of the
    last two distinct L1 entries each class used (data: DATA_A, the more recent, and
    DATA_B; fetches: FETCH_A, FETCH_B) with their entries. A record of a slot's page and
    class hits that L1 entry, which nothing but another access could have evicted (and
    each access outside the slots re-checks them): it is counted and its entry stamped
    with the next clock value, as the serial model does, without a lookup. After
    STREAK_BULK records in a row on a class's first slot, the rest of the run is found
    a block at a time (:func:`run_length`). Every other record goes through the TLBs
    (:func:`tlb_access`) and becomes its class's first slot. Each access that misses
    every TLB is filled into the STLB and the L1 (as after its walk: the walk's outcome
    does not change the fill) and written to ``walks_out`` as ``vaddr | size code << 57``
    for :func:`walk_stage`."""
    use_map = map_starts.shape[0] > 0
    canon_shift = va_bits - 1                  # bits canon_shift..56 must all be equal
    canon_ones = (1 << (58 - va_bits)) - 1
    # with a map, a slot's page is a 4 KiB piece of whatever page holds it
    key_mask = ~((1 << (12 if use_map else page_shift)) - 1)
    shared_l1 = False                          # an L1 array serving data and fetches?
    for code in range(3):
        for fetch_code in range(3):
            shared_l1 |= routes[0, 0, code] >= 0 and routes[0, 0, code] == routes[0, 2, fetch_code]
    # the slots' keys and entries, the counters and the clock live in registers during
    # the loop (stores to the tables could alias them); tlb_access uses the clock array
    k0, k1 = run_state[DATA_A + RUN_KEY], run_state[DATA_B + RUN_KEY]
    k2, k3 = run_state[FETCH_A + RUN_KEY], run_state[FETCH_B + RUN_KEY]
    e0, e1 = slot_entry(run_state, DATA_A), slot_entry(run_state, DATA_B)
    e2, e3 = slot_entry(run_state, FETCH_A), slot_entry(run_state, FETCH_B)
    h0 = h1 = h2 = h3 = 0                      # each slot's hits not yet in tlb_stats
    clk = clock[0]
    l1_hits = stlb_hits = stores = fetches = 0
    nr_walks: Int = 0
    status: Int = DONE
    end = stop
    streak = streak_fetch = 0                  # records in a row on DATA_A, on FETCH_A
    block: Int = RUN_BLOCK_MIN
    i = start
    while i < stop:
        record = records[i]
        key = run_key(record, key_mask)
        if key == k2:                        # fetches first: most of a program's trace
            streak = 0
            streak_fetch += 1
            if streak_fetch < STREAK_BULK:
                clk += 1
                stamps[e2] = clk
                h2 += 1
                i += 1
                continue
            count, block = run_length(records, i, stop, key_mask, key, block)
            clk += count
            stamps[e2] = clk
            h2 += count
            i += count
            continue
        streak_fetch = 0
        if key == k0:
            streak += 1
            if streak < STREAK_BULK:
                clk += 1
                stamps[e0] = clk
                h0 += 1
                stores += (record >> 62) & 1
                i += 1
                continue
            count, block = run_length(records, i, stop, key_mask, key, block)
            stores += count_stores(records, i, i + count)
            clk += count
            stamps[e0] = clk
            h0 += count
            i += count
            continue
        streak = 0
        if key == k1:
            clk += 1
            stamps[e1] = clk
            h1 += 1
            stores += (record >> 62) & 1
            i += 1
            continue
        if key == k3:
            clk += 1
            stamps[e3] = clk
            h3 += 1
            i += 1
            continue
        status = record_status(record, canon_shift, canon_ones)
        if status != DONE:
            end = i
            break
        vaddr = record & VA_MASK
        kind = (record >> 62) & 3
        stores += kind == 1
        fetches += kind == 2
        shift = page_shift_at(vaddr, map_starts, map_ends, map_shifts) if use_map else page_shift
        clock[0] = clk
        outcome, entry = tlb_access(vaddr, kind, shift, layout, routes, tags, stamps, payload,
                                    clock, tlb_stats)
        clk = clock[0]
        if outcome == OUTCOME_L1:
            l1_hits += 1
        elif outcome == OUTCOME_STLB:
            stlb_hits += 1
        else:
            walks_out[np.uint64(nr_walks)] = vaddr | (size_code(shift) << 57)
            nr_walks += 1
        # the class's slots: the second leaves (its hits counted now), the first becomes
        # the second, the page just looked up the first
        array = routes[0, kind, size_code(shift)]
        new_key = key if entry >= 0 else NO_RUN
        new_tag = tags[np.uint64(entry)] if entry >= 0 else -1
        if kind == 2:
            flush_hits(tlb_stats, run_state, FETCH_B, h3)
            flush_hits(tlb_stats, run_state, FETCH_A, h2)
            l1_hits += h2 + h3
            fetches += h2 + h3
            h2 = h3 = 0
            k3, e3 = k2, e2
            run_state[FETCH_B + RUN_TAG] = run_state[FETCH_A + RUN_TAG]
            run_state[FETCH_B + RUN_ARRAY] = run_state[FETCH_A + RUN_ARRAY]
            k2, e2 = new_key, np.uint64(max(entry, 0))
            run_state[FETCH_A + RUN_TAG] = new_tag
            run_state[FETCH_A + RUN_ARRAY] = array
        else:
            flush_hits(tlb_stats, run_state, DATA_B, h1)
            flush_hits(tlb_stats, run_state, DATA_A, h0)
            l1_hits += h0 + h1
            h0 = h1 = 0
            k1, e1 = k0, e0
            run_state[DATA_B + RUN_TAG] = run_state[DATA_A + RUN_TAG]
            run_state[DATA_B + RUN_ARRAY] = run_state[DATA_A + RUN_ARRAY]
            k0, e0 = new_key, np.uint64(max(entry, 0))
            run_state[DATA_A + RUN_TAG] = new_tag
            run_state[DATA_A + RUN_ARRAY] = array
        # a fill (not a hit) may have taken a slot's entry: the class's other slot's from
        # its set, the other class's slots' if an L1 array serves both
        if outcome != OUTCOME_L1:
            if kind == 2:
                k3 = still_held(k3, e3, run_state[FETCH_B + RUN_TAG], tags)
            else:
                k1 = still_held(k1, e1, run_state[DATA_B + RUN_TAG], tags)
            if shared_l1:
                k0 = still_held(k0, e0, run_state[DATA_A + RUN_TAG], tags)
                k1 = still_held(k1, e1, run_state[DATA_B + RUN_TAG], tags)
                k2 = still_held(k2, e2, run_state[FETCH_A + RUN_TAG], tags)
                k3 = still_held(k3, e3, run_state[FETCH_B + RUN_TAG], tags)
        i += 1
    flush_hits(tlb_stats, run_state, DATA_A, h0)
    flush_hits(tlb_stats, run_state, DATA_B, h1)
    flush_hits(tlb_stats, run_state, FETCH_A, h2)
    flush_hits(tlb_stats, run_state, FETCH_B, h3)
    l1_hits += h0 + h1 + h2 + h3
    fetches += h2 + h3
    run_state[DATA_A + RUN_KEY], run_state[DATA_B + RUN_KEY] = k0, k1
    run_state[FETCH_A + RUN_KEY], run_state[FETCH_B + RUN_KEY] = k2, k3
    run_state[DATA_A + RUN_ENTRY], run_state[DATA_B + RUN_ENTRY] = np.int64(e0), np.int64(e1)
    run_state[FETCH_A + RUN_ENTRY], run_state[FETCH_B + RUN_ENTRY] = np.int64(e2), np.int64(e3)
    clock[0] = clk
    counters[C_ACCESSES] += end - start
    counters[C_LOADS] += end - start - stores - fetches
    counters[C_STORES] += stores
    counters[C_IFETCHES] += fetches
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
    and returns ``(index, status)``. A loop of its own, prefetching the home slots of the
    walks PREFETCH_AHEAD ahead, so that their cache misses overlap."""
    room = mapped.shape[0] // 2
    mask = mapped.shape[0] - 1
    faults = walk_counters[1]
    for i in range(start, stop):
        if faults >= room:
            walk_counters[1] = faults
            return i, GROW_MAPPED
        ahead = min(i + PREFETCH_AHEAD, int(stop) - 1)
        soon = walks[ahead]
        prefetch(mapped, mapped_slot(page_key(soon & VA_MASK, 12 + 9 * (soon >> 57)), mask))
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


# -- lackey text -------------------------------------------------------------------------
_NL, _COMMA, _SPACE, _EQ, _DASH = 10, 44, 32, 61, 45
_LETTER_I, _LETTER_L, _LETTER_S, _LETTER_M = 73, 76, 83, 77
KIND_SHIFT = 62


@compiled_loop
def lackey_scan(buf: npt.NDArray[np.uint8], length: Int, words: Words, va_bits: Int,
                skip_valgrind_notes: Int) -> tuple[Int, Int, Int, Int]:
    """Parse lackey text ``buf[:length]`` (whole lines; 3 bytes of padding follow) into
    .pwt ``words`` (trace/formats.py); returns ``(records, lines, bad line index or -1,
    LACKEY_* reason)``. ``skip_valgrind_notes`` also skips valgrind's ``--PID--`` lines."""
    i = 0
    line = 0
    count = 0
    top_ones = (np.uint64(1) << np.uint64(65 - va_bits)) - np.uint64(1)
    while i < length:
        c0, c1 = buf[i], buf[i + 1]
        if c0 == _NL:                                          # a blank line
            i += 1
            line += 1
            continue
        if (c0 == _EQ and c1 == _EQ) or (skip_valgrind_notes and c0 == _DASH and c1 == _DASH):
            while buf[i] != _NL:                               # "==PID== ..." (or "--PID--")
                i += 1
            i += 1
            line += 1
            continue
        if buf[i + 2] != _SPACE:
            return count, line, line, LACKEY_BAD_LINE
        if c0 == _LETTER_I and c1 == _SPACE:
            kind = 2
        elif c0 == _SPACE and c1 == _LETTER_L:
            kind = 0
        elif c0 == _SPACE and (c1 == _LETTER_S or c1 == _LETTER_M):   # M: one store
            kind = 1
        else:
            return count, line, line, LACKEY_BAD_LINE
        i += 3
        vaddr = np.uint64(0)
        digits = 0
        while True:                                            # ADDR: hex, no 0x
            c = buf[i]
            if 48 <= c <= 57:
                nibble = c - 48
            elif 97 <= c <= 102:
                nibble = c - 87
            elif 65 <= c <= 70:
                nibble = c - 55
            else:
                break
            vaddr = (vaddr << np.uint64(4)) | np.uint64(nibble)
            digits += 1
            i += 1
        if buf[i] != _COMMA or digits == 0 or digits > 16:
            return count, line, line, LACKEY_BAD_LINE
        i += 1
        size_digits = 0
        while 48 <= buf[i] <= 57:                              # SIZE: decimal
            i += 1
            size_digits += 1
        if buf[i] != _NL or size_digits == 0:
            return count, line, line, LACKEY_BAD_LINE
        top = vaddr >> np.uint64(va_bits - 1)
        if top != 0 and top != top_ones:
            return count, line, line, LACKEY_NON_CANONICAL
        words[count] = (vaddr & np.uint64(VA_MASK)) | (np.uint64(kind) << np.uint64(KIND_SHIFT))
        count += 1
        i += 1
        line += 1
    return count, line, -1, LACKEY_OK
