"""The MMU's translate() in compiled code, for loops of accesses (the `touch` fast path).

Does what ``hw/mmu.py`` Mmu.translate does, on the same arrays: the TLB lookup over every
page size (an STLB hit copied into the L1), the rights check on a hit (a write needs a
writable, dirty entry), else a walk that starts below the deepest page-walk-cache hit,
sets A in every entry it uses and D in the leaf on a write, fills the page-walk caches
with the upper-level entries it read and the TLBs with the leaf; the protection key of a
leaf (cached in the TLB with it) against PKRU, on hits and walks (hw/walker.py
pkey_denies); a fault drops the TLB entries of the address (SDM vol. 3A §4.10.4.1). INVLPG and the PCID flush are here too.
The LRU and TLB primitives are hw/fasttlb.py's (the trace replay uses them too): one LRU rule.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from pagewalk.hw import pgtable_types as pt
from pagewalk.hw.fasttlb import (
    LEVEL_L1,
    lru_fill,
    lru_find,
    lru_touch,
    set_base,
    tlb_fill,
    tlb_lookup,
    tlb_tag,
)
from pagewalk.hw.mmu import MmuStat

# Numba's stubs do not know its private _nrt switch (no reference-counting runtime).
_njit_no_nrt: Any = njit

P = np.uint64(pt._PAGE_PRESENT)
RW = np.uint64(pt._PAGE_RW)
US = np.uint64(pt._PAGE_USER)
ACC = np.uint64(pt._PAGE_ACCESSED)
DIRTY = np.uint64(pt._PAGE_DIRTY)
PSE = np.uint64(pt._PAGE_PSE)
NX = np.uint64(pt._PAGE_NX)
PFN_MASK = np.uint64(pt.PTE_PFN_MASK)
PKEY_SHIFT = np.uint64(pt._PAGE_BIT_PKEY_BIT0)
PKEY_BITS = np.uint64(0xF)
PF_PROT, PF_WRITE, PF_USER, PF_INSTR, PF_PK = 1, 2, 4, 16, 32
PWC_PCID_SHIFT = 48
TLB_PCID_SHIFT = 47
PCID_MASK = 0xFFF
ACCESSES, L1_HITS, STLB_HITS = int(MmuStat.ACCESSES), int(MmuStat.L1_HITS), int(MmuStat.STLB_HITS)
WALKS, WALK_REFS, PAGE_FAULTS = int(MmuStat.WALKS), int(MmuStat.WALK_REFS), int(MmuStat.PAGE_FAULTS)
TRANSLATED = 0


@njit(cache=True, inline="always")
def _pwc_key(pwc_layout, row, vaddr, pcid):  # type: ignore[no-untyped-def]
    return ((vaddr >> pwc_layout[row, 2]) & ((1 << pwc_layout[row, 3]) - 1)) | (
        (pcid & PCID_MASK) << PWC_PCID_SHIFT)


@njit(cache=True, inline="always")
def _pkey_denies(leaf, kind, pkru):  # type: ignore[no-untyped-def]
    """hw/walker.py pkey_denies: PKRU.AD of the leaf's key refuses data accesses, WD writes."""
    if kind == 2 or pkru == 0:
        return False
    rights = pkru >> (np.int64((leaf >> PKEY_SHIFT) & PKEY_BITS) * 2)
    return (rights & 1) != 0 or (kind == 1 and (rights & 2) != 0)


@njit(cache=True, inline="always")
def mmu_translate(vaddr, kind, pcid, root_pfn, levels, slot_of, pool,  # type: ignore[no-untyped-def]
                  tlb_layout, tlb_routes, tlb_tags, tlb_stamps, tlb_payload, tlb_clock,
                  tlb_stats, pwc_layout, pwc_top, pwc_tags, pwc_stamps, pwc_payload, pwc_clock,
                  pwc_stats, counters, pkru):
    """One user-mode access: 0 when translated, else the #PF error code (> 0). ``pkru`` is
    the PKRU in force (Mmu.active_pkru: 0 without CR4.PKE)."""
    write = kind == 1
    counters[ACCESSES] += 1
    level, shift, leaf = tlb_lookup(vaddr, kind, 0, pcid, tlb_layout, tlb_routes, tlb_tags,
                                    tlb_stamps, tlb_payload, tlb_clock, tlb_stats)
    if level > 0 and leaf & US and (not write or (leaf & RW and leaf & DIRTY)) and \
            not (kind == 2 and leaf & NX) and not _pkey_denies(leaf, kind, pkru):
        counters[L1_HITS if level == LEVEL_L1 else STLB_HITS] += 1
        return TRANSLATED
    # -- page-walk caches: where the walk starts (PageWalkCaches.lookup) -------------------
    start, table = 0, root_pfn
    for row in range(3, pwc_top - 1, -1):
        nr_entries = pwc_layout[row, 1]
        if nr_entries == 0:
            continue
        found = lru_find(pwc_tags, pwc_layout[row, 0], nr_entries,
                         _pwc_key(pwc_layout, row, vaddr, pcid))
        if found >= 0:
            pwc_stats[row, 0] += 1
            lru_touch(pwc_stamps, pwc_clock, found)
            start, table = row - pwc_top + 1, np.int64(pwc_payload[np.uint64(found)])
            break
        pwc_stats[row, 1] += 1
    # -- the walk (hw/walker.py) -----------------------------------------------------------
    top_shift = 39 if levels == 4 else 48
    base = (PF_WRITE if write else 0) | PF_USER | (PF_INSTR if kind == 2 else 0)
    writable, user, no_exec = True, True, False
    refs, code = 0, -1
    leaf_shift, leaf_entry = 12, np.uint64(0)
    for lvl in range(start, levels):
        shift = top_shift - 9 * lvl
        slot = slot_of[table]
        index = (vaddr >> shift) & 511
        entry = pool[slot, index] if slot >= 0 else np.uint64(0)
        refs += 1
        if not entry & P:
            code = base
            break
        writable = writable and (entry & RW) != 0
        user = user and (entry & US) != 0
        no_exec = no_exec or (entry & NX) != 0
        if shift == 12 or entry & PSE:
            pk = user and _pkey_denies(entry, kind, pkru)
            if not user or (write and not writable) or (kind == 2 and no_exec) or pk:
                code = base | PF_PROT | (PF_PK if pk else 0)
                break
            new = entry | ACC | (DIRTY if write else np.uint64(0))
            if new != entry:
                pool[slot, index] = new
            leaf_shift, leaf_entry = shift, new
            break
        if not entry & ACC:
            pool[slot, index] = entry | ACC
        row = lvl + pwc_top                      # PageWalkCaches.fill
        if row < 4 and pwc_layout[row, 1] > 0:
            lru_fill(pwc_tags, pwc_stamps, pwc_payload, pwc_clock, pwc_layout[row, 0],
                     pwc_layout[row, 1], _pwc_key(pwc_layout, row, vaddr, pcid),
                     (entry & PFN_MASK) >> np.uint64(12))
        table = np.int64((entry & PFN_MASK) >> np.uint64(12))
    counters[WALKS] += 1
    counters[WALK_REFS] += refs
    if code >= 0:
        counters[PAGE_FAULTS] += 1
        if level == 0:      # the lookup found nothing where it searched: search the rest
            _invlpg_unsearched(vaddr, kind, pcid, tlb_layout, tlb_routes, tlb_tags,
                               tlb_stamps, tlb_payload)
        else:
            tlb_invlpg(vaddr, pcid, tlb_layout, tlb_routes, tlb_tags, tlb_stamps, tlb_payload)
        return code
    tlb_fill(vaddr, kind, leaf_shift, pcid, leaf_entry, tlb_layout, tlb_routes, tlb_tags,
             tlb_stamps, tlb_payload, tlb_clock)
    return TRANSLATED


@njit(cache=True, inline="always")
def _routed_before(routes, level, kind, code):  # type: ignore[no-untyped-def]
    """An earlier kind reaches the same array for this size: INVLPG has searched it."""
    for earlier in range(kind):
        if routes[level, earlier, code] == routes[level, kind, code]:
            return True
    return False


@njit(cache=True, inline="always")
def _invlpg_unsearched(vaddr, kind, pcid, layout, routes, tags, stamps, payload):  # type: ignore[no-untyped-def]
    """tlb_invlpg() after a lookup of ``kind`` missed in every array it searched (each
    size of that kind's L1 and STLB arrays): only the other arrays can hold an entry of
    ``vaddr``, so only they are searched (the same TLBs, fewer searches)."""
    for level in range(routes.shape[0]):
        for other in range(routes.shape[1]):
            for code in range(routes.shape[2]):
                index = routes[level, other, code]
                if index < 0 or index == routes[level, kind, code] or \
                        _routed_before(routes, level, other, code):
                    continue
                shift = 12 + 9 * code
                first = set_base(layout, index, vaddr, shift)
                found = lru_find(tags, first, layout[index, 2], tlb_tag(vaddr, shift, pcid))
                if found >= 0:
                    tags[found] = -1
                    stamps[found] = 0
                    payload[found] = 0


@_njit_no_nrt(cache=True, _nrt=False)
def tlb_invlpg(vaddr, pcid, layout, routes, tags, stamps, payload):  # type: ignore[no-untyped-def]
    """INVLPG: the entries of every page size covering ``vaddr`` in every TLB array."""
    for level in range(routes.shape[0]):
        for kind in range(routes.shape[1]):
            for code in range(routes.shape[2]):
                index = routes[level, kind, code]
                if index < 0 or _routed_before(routes, level, kind, code):
                    continue
                shift = 12 + 9 * code
                first = set_base(layout, index, vaddr, shift)
                found = lru_find(tags, first, layout[index, 2], tlb_tag(vaddr, shift, pcid))
                if found >= 0:
                    tags[found] = -1
                    stamps[found] = 0
                    payload[found] = 0


@_njit_no_nrt(cache=True, _nrt=False)
def flush_pcid(pcid, tags, stamps, payload, pcid_shift):  # type: ignore[no-untyped-def]
    """INVPCID single-context over one storage (TLB: shift 47, page-walk caches: 48)."""
    for i in range(tags.shape[0]):
        if tags[i] != -1 and (tags[i] >> pcid_shift) & PCID_MASK == pcid & PCID_MASK:
            tags[i] = -1
            stamps[i] = 0
            payload[i] = 0
