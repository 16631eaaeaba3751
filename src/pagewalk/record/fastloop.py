"""The replay's access loop in compiled code: a run of recorded accesses through the MMU.

Does what the readable path does (record/replay.py Replay._run_reference: each recorded
address moved to its simulated place by the AddressMap, the stack grown before the first
access below it, each access through Kernel.user_access), access by access, on the same
arrays: hw/fastmmu.py mmu_translate (the TLBs, page-walk caches and the walk with its A/D
bits) until a page fault, which goes back to Python (Kernel.do_user_addr_fault); the loop
then retries the access, as Kernel.user_access does. tests/record/
test_fastloop_equivalence.py checks that both leave the same figures, counters and TLBs.

Why it is fast (benchmarks/bench_replay.py): most of a program's accesses go to a page
its class (data: the dTLB; instruction fetches: the iTLB) used among its last two distinct
pages. Four slots hold those pages (their recorded addresses: no translation) with the
L1 entry the lookup found for them; an access to a slot's page whose rights that entry
grants is the L1 hit mmu_translate would find (nothing but another access changes the L1
while the loop runs, and each access outside the slots re-checks them): it is counted
and its entry stamped with the next LRU clock value, without a lookup, as trace/fast.py
tlb_stage does for the trace model. Every other access takes the full path: its recorded
range (the one its class used last, else a binary search), mmu_translate, and its class's
first slot becomes its page.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import numpy.typing as npt

from pagewalk.errors import SignalError, TraceError
from pagewalk.hw import pgtable_types as pt
from pagewalk.hw.compiled import bundle, compiled
from pagewalk.hw.mmu import MmuStat
from pagewalk.hw.physmem import PhysArrays
from pagewalk.mm.fastfault import MmuArrays
from pagewalk.record.address_map import AddressMap

if TYPE_CHECKING:  # compiled code of hw/: imported when Numba compiles (needs=), not here
    from pagewalk.hw.fastmmu import _pkey_denies, mmu_translate  # noqa: TC004
    from pagewalk.hw.fasttlb import lru_find, set_base, tlb_tag  # noqa: TC004
    from pagewalk.kernel.kernel import Kernel
    from pagewalk.kernel.task import Task

Ints = npt.NDArray[np.int64]
FASTMMU = "pagewalk.hw.fastmmu"
FASTTLB = "pagewalk.hw.fasttlb"


class ReplayRun(NamedTuple):
    """One run of recorded accesses and where the recorded ranges live in the simulation
    (record/address_map.py: sorted, disjoint ``[map_starts[i], map_ends[i])`` moved by
    ``map_deltas[i]``)."""

    words: Ints                  # the .pwt words, viewed as int64
    map_starts: Ints
    map_ends: Ints
    map_deltas: Ints


bundle(ReplayRun, "q1 q1 q1 q1")


class Out(enum.IntEnum):
    """Indexes of the loop's ``out`` array."""

    NEXT = 0            # the next access to do
    ERROR_CODE = 1      # FAULT: the #PF error code (the failed translation already counted)
    VADDR = 2           # FAULT: the simulated address of the access that faulted
    KIND = 3            # FAULT: its kind
    UNTRANSLATED = 4    # accesses outside every recorded range (added up)
    SIZE = 5


# Stop reasons of the compiled loop.
DONE = 0
FAULT = 1            # out[NEXT] faulted: Python handles the fault and retries it
BAD_KIND = 2         # out[NEXT] has kind 3 (no such access)
STACK_GAP = 3        # out[NEXT] lies in the gap below the stack (out[VADDR]): grow it first
USER_ACCESS_TRIES = 4  # Kernel.user_access: translations of one access before it gives up

VA_MASK = (1 << 57) - 1
KIND_SHIFT = 62
STORE_BIT = 1 << KIND_SHIFT
PAGE_KEY_MASK = ~0xFFF          # a word's 4 KiB page and kind bits: a slot's key
NO_RUN = 0xFFF                  # a key no word has (page keys have bits 0..11 clear)
ACCESSES, L1_HITS = int(MmuStat.ACCESSES), int(MmuStat.L1_HITS)
RW, DIRTY = np.uint64(pt._PAGE_RW), np.uint64(pt._PAGE_DIRTY)


@compiled(inline=True)
def _find_range(run: ReplayRun, rec: int) -> int:
    """AddressMap.translate's search: the index of the recorded range holding ``rec``, or
    -1 (the last range starting at or below it, if it reaches that far)."""
    lo, hi = 0, run.map_starts.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if run.map_starts[mid] <= rec:
            lo = mid + 1
        else:
            hi = mid
    if lo == 0 or rec >= run.map_ends[lo - 1]:
        return -1
    return lo - 1


@compiled(inline=True, needs=(f"{FASTTLB}:lru_find", f"{FASTTLB}:set_base",
                              f"{FASTTLB}:tlb_tag"))
def _l1_entry(vaddr: int, kind: int, pcid: int, mmu: MmuArrays) -> tuple[int, int]:
    """The L1 entry a lookup of ``vaddr`` finds (hw/fasttlb.py tlb_lookup's order: each
    page size from the smallest) and its size code, or (-1, 0)."""
    for code in range(3):
        index = mmu.tlb_routes[0, kind, code]
        if index < 0:
            continue
        shift = 12 + 9 * code
        found = int(lru_find(mmu.tlb_tags, set_base(mmu.tlb_layout, index, vaddr, shift),
                             mmu.tlb_layout[index, 2], tlb_tag(vaddr, shift, pcid)))
        if found >= 0:
            return found, code
    return -1, 0


@compiled(inline=True, needs=(f"{FASTMMU}:_pkey_denies",))
def _slot_keys(key: int, leaf: np.uint64, fetch: bool, entry: int,
               pkru: int) -> tuple[int, int]:
    """The keys a slot of ``key``'s page matches (mmu_translate's L1-hit rule on its
    leaf), NO_RUN for none. An access of the slot's class has just translated through
    the entry, so the leaf grants that class (a user page, executable for fetches, a key
    PKRU lets read for data); a data slot's stores need more: a writable, dirty leaf
    whose key PKRU lets write. No L1 entry (``entry`` -1): no keys."""
    if entry < 0:
        return NO_RUN, NO_RUN
    if fetch or (leaf & RW) == 0 or (leaf & DIRTY) == 0 or _pkey_denies(leaf, 1, pkru):
        return key, NO_RUN
    return key, key | STORE_BIT


@compiled(inline=True)
def _count_hits(mmu: MmuArrays, kind: int, code: int, hits: int) -> None:
    """A slot's L1 hits, as mmu_translate counts each: the access, the L1 hit, a hit in
    the entry's array and a miss in each L1 array probed before it (smaller pages)."""
    if hits == 0:
        return
    mmu.counters[ACCESSES] += hits
    mmu.counters[L1_HITS] += hits
    mmu.tlb_stats[mmu.tlb_routes[0, kind, code], 0] += hits   # loads, stores: one route
    for smaller in range(code):
        index = mmu.tlb_routes[0, kind, smaller]
        if index >= 0:
            mmu.tlb_stats[index, 1] += hits


@compiled(inline=True)
def _held(key: int, entry: np.uint64, tag: int, mmu: MmuArrays) -> int:
    """A slot's key while its L1 entry still holds its page, else NO_RUN."""
    if key == NO_RUN or mmu.tlb_tags[entry] == tag:
        return key
    return NO_RUN


@compiled(entry="ReplayRun PhysArrays MmuArrays i i i i i i q1", result="i",
          needs=(f"{FASTMMU}:mmu_translate",))
def replay_accesses(run: ReplayRun, phys: PhysArrays, mmu: MmuArrays, pcid: int,
                    root_pfn: int, levels: int, pkru: int, gap_start: int, gap_end: int,
                    out: Ints) -> int:
    """The accesses of ``run`` from out[NEXT] on, each as Kernel.user_access would do it
    (without its retry): DONE, or FAULT with out[NEXT] the access that faulted (its error
    code, simulated address and kind in out), STACK_GAP with out[NEXT] the access into
    simulated [gap_start, gap_end) (not done; its address in out[VADDR]), or BAD_KIND.

    The slots (module docstring): data A (the more recent) and B, fetch A and B, each
    with the keys it matches (a page's loads, its stores; its fetches), its L1 entry and
    that entry's tag, the entry's size code, and its hits not yet counted. They live in
    registers (stores to the tables could alias them in memory)."""
    tags, stamps = mmu.tlb_tags, mmu.tlb_stamps
    da_load = da_store = db_load = db_store = fa_key = fb_key = NO_RUN
    da_entry = db_entry = fa_entry = fb_entry = np.uint64(0)
    da_tag = db_tag = fa_tag = fb_tag = -1
    da_code = db_code = fa_code = fb_code = 0
    da_hits = db_hits = fa_hits = fb_hits = 0
    data_range = fetch_range = -1               # the recorded range each class used last
    clk = mmu.tlb_clock[0]
    words = run.words
    n = words.shape[0]
    i = out[Out.NEXT]
    status = DONE
    while i < n:
        word = words[i]
        key = word & PAGE_KEY_MASK
        if key == fa_key:                       # fetches first: most of a program's accesses
            clk += 1
            stamps[fa_entry] = clk
            fa_hits += 1
            i += 1
            continue
        if key == da_load or key == da_store:
            clk += 1
            stamps[da_entry] = clk
            da_hits += 1
            i += 1
            continue
        if key == db_load or key == db_store:
            clk += 1
            stamps[db_entry] = clk
            db_hits += 1
            i += 1
            continue
        if key == fb_key:
            clk += 1
            stamps[fb_entry] = clk
            fb_hits += 1
            i += 1
            continue
        # -- the full path: the recorded address moved, then mmu_translate ------------------
        kind = (word >> KIND_SHIFT) & 3
        if kind == 3:
            status = BAD_KIND
            break
        rec = word & VA_MASK
        last = fetch_range if kind == 2 else data_range
        if last < 0 or rec < run.map_starts[last] or rec >= run.map_ends[last]:
            last = _find_range(run, rec)
            if last < 0:
                out[Out.UNTRANSLATED] += 1
                i += 1
                continue
            if kind == 2:
                fetch_range = last
            else:
                data_range = last
        vaddr = rec + run.map_deltas[last]
        if gap_start <= vaddr < gap_end:        # unmapped: never a slot's page
            out[Out.VADDR] = vaddr
            status = STACK_GAP
            break
        mmu.tlb_clock[0] = clk
        l1_hits = mmu.counters[L1_HITS]
        code = mmu_translate(vaddr, kind, pcid, root_pfn, levels, phys.slot_of, phys.pool,
                             mmu.tlb_layout, mmu.tlb_routes, tags, stamps, mmu.tlb_payload,
                             mmu.tlb_clock, mmu.tlb_stats, mmu.pwc_layout, mmu.pwc_top,
                             mmu.pwc_tags, mmu.pwc_stamps, mmu.pwc_payload, mmu.pwc_clock,
                             mmu.pwc_stats, mmu.counters, pkru)
        clk = mmu.tlb_clock[0]
        filled = mmu.counters[L1_HITS] == l1_hits   # not an L1 hit: entries filled
        if code != 0:
            out[Out.ERROR_CODE] = code
            out[Out.VADDR] = vaddr
            out[Out.KIND] = kind
            status = FAULT
            break
        # the class's second slot leaves, the first becomes the second, this page the first
        entry, size = _l1_entry(vaddr, kind, pcid, mmu)
        tag = tags[entry] if entry >= 0 else -1
        leaf = mmu.tlb_payload[entry] if entry >= 0 else np.uint64(0)
        if kind == 2:
            _count_hits(mmu, 2, fb_code, fb_hits)
            fb_key, fb_entry, fb_tag, fb_code, fb_hits = fa_key, fa_entry, fa_tag, fa_code, fa_hits
            fa_key, _ = _slot_keys(key, leaf, True, entry, pkru)
            fa_entry, fa_tag, fa_code, fa_hits = np.uint64(max(entry, 0)), tag, size, 0
        else:
            _count_hits(mmu, 0, db_code, db_hits)
            db_load, db_store, db_entry, db_tag, db_code, db_hits = \
                da_load, da_store, da_entry, da_tag, da_code, da_hits
            da_load, da_store = _slot_keys(key & ~STORE_BIT, leaf, False, entry, pkru)
            da_entry, da_tag, da_code, da_hits = np.uint64(max(entry, 0)), tag, size, 0
        if filled:                              # a fill may have replaced a slot's entry
            fb_key = _held(fb_key, fb_entry, fb_tag, mmu)
            db_load = _held(db_load, db_entry, db_tag, mmu)
            db_store = db_store if db_load != NO_RUN else NO_RUN
            if kind == 2:
                da_load = _held(da_load, da_entry, da_tag, mmu)
                da_store = da_store if da_load != NO_RUN else NO_RUN
            else:
                fa_key = _held(fa_key, fa_entry, fa_tag, mmu)
        i += 1
    _count_hits(mmu, 0, da_code, da_hits)
    _count_hits(mmu, 0, db_code, db_hits)
    _count_hits(mmu, 2, fa_code, fa_hits)
    _count_hits(mmu, 2, fb_code, fb_hits)
    mmu.tlb_clock[0] = clk
    out[Out.NEXT] = i
    return status


def run_accesses(k: Kernel, task: Task, words: npt.NDArray[np.uint64], address_map: AddressMap,
                 stack_gap: Callable[[], tuple[int, int]], grow_stack: Callable[[int], None]
                 ) -> tuple[list[tuple[int, int]], int]:
    """Every access of a run of recorded ``words`` in order, each moved by ``address_map``;
    before an access into ``stack_gap()`` (simulated [start, end), empty: none) the caller's
    ``grow_stack(vaddr)`` runs. Returns the (simulated address, kind) of the accesses the
    simulated kernel answered with a signal and how many fell outside every recorded range;
    TraceError for a word of kind 3."""
    k.switch_to(task)
    mmu = k.mmu
    tlb, pwc = mmu.tlb, mmu.pwc
    run = ReplayRun(words.view(np.int64), np.asarray(address_map.starts, dtype=np.int64),
                    np.asarray(address_map.ends, dtype=np.int64),
                    np.asarray(address_map.deltas, dtype=np.int64))
    arrays = MmuArrays(tlb.layout, tlb.routes, tlb.storage.tags, tlb.storage.stamps,
                       tlb.storage.payload, tlb.storage.clock, tlb.stats, pwc.layout,
                       pwc.top_row, pwc.storage.tags, pwc.storage.stamps, pwc.storage.payload,
                       pwc.storage.clock, pwc.stats, mmu.counters)
    out = np.zeros(Out.SIZE, dtype=np.int64)
    signalled: list[tuple[int, int]] = []
    gap = stack_gap()
    faulted, tries = -1, 0                      # the access that faulted last, its faults
    while True:
        status = int(replay_accesses(run, k.pgtables.arrays.phys, arrays, mmu.pcid,
                                     task.mm.pgd_pfn, k.levels, mmu.active_pkru, gap[0],
                                     gap[1], out))
        if status == DONE:
            return signalled, int(out[Out.UNTRANSLATED])
        if status == BAD_KIND:
            raise TraceError(f"access {int(out[Out.NEXT]):,} of a run of the recording has "
                             "kind 3 (no such access)")
        if status == STACK_GAP:
            grow_stack(int(out[Out.VADDR]))
            gap = stack_gap()
            continue
        vaddr, kind = int(out[Out.VADDR]), int(out[Out.KIND])
        tries = tries + 1 if out[Out.NEXT] == faulted else 1
        faulted = int(out[Out.NEXT])
        try:
            k.kernel_entry()
            try:
                k.do_user_addr_fault(task, vaddr, int(out[Out.ERROR_CODE]))
            finally:
                k.kernel_exit()
        except SignalError:
            signalled.append((vaddr, kind))
            out[Out.NEXT] += 1
            continue
        if tries == USER_ACCESS_TRIES:
            raise AssertionError(f"access at {vaddr:#x} kept faulting")
        # the loop retries the access through the compiled MMU, as Kernel.user_access does
