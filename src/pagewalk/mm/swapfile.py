"""Swap devices, swap slots and swap entries in PTEs (mm/swapfile.c, include/linux/swapops.h,
arch/x86/include/asm/pgtable_64.h).

One swap file (``system.swap``), type 0, as ``mkswap`` + ``swapon`` leave it: page 0 is the
header, slots 1 .. max-1 hold pages. ``swap_map[offset]`` counts the swap entries that
page tables hold for the slot (swap_duplicate adds one, swap_entry_put drops one) and
``has_cache`` is SWAP_HAS_CACHE: a folio for the slot is in the swap cache. A slot is free
when both are gone. The file sits on a rotational disk (no SWP_SOLIDSTATE), so there are
no per-CPU swap clusters: slots are handed out in ascending order from where the last
allocation stopped (the cluster_next of scan_swap_map_slots), wrapping to the lowest free.

A swap PTE is x86_64's non-present encoding (pgtable_64.h __swp_entry): the type in bits
59-63, the bit-inverted offset in bits 9-58 (so an L1TF-speculated walk lands in
non-existent high memory), PROT_NONE's bit 8 and the present bit 0 clear, and
_PAGE_SWP_EXCLUSIVE (bit 3, _PAGE_PWT) remembering PageAnonExclusive.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from pagewalk.hw import pgtable_types as pt

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel

SWP_TYPE_BITS = 5                      # MAX_SWAPFILES_SHIFT
SWP_OFFSET_FIRST_BIT = 9               # _PAGE_BIT_PROTNONE + 1
SWP_OFFSET_SHIFT = SWP_OFFSET_FIRST_BIT + SWP_TYPE_BITS
_PAGE_SWP_EXCLUSIVE = 1 << 3           # _PAGE_PWT: the page was PageAnonExclusive
_PAGE_SWP_SOFT_DIRTY = 1 << 1          # _PAGE_RW
_U64 = (1 << 64) - 1
SWAP_HEADER_PAGES = 1                  # mkswap's header page (union swap_header)


def swp_entry_to_pte(swp_type: int, offset: int) -> int:
    """__swp_entry() + __swp_entry_to_pte(): a non-present PTE for slot ``offset``."""
    inverted = (~offset << SWP_OFFSET_SHIFT) & _U64
    return (inverted >> SWP_TYPE_BITS) | (swp_type << (64 - SWP_TYPE_BITS))


def pte_swp_type(pte: int) -> int:
    """__swp_type(): bits 59-63."""
    return pte >> (64 - SWP_TYPE_BITS)


def pte_swp_offset(pte: int) -> int:
    """__swp_offset(): shift the type out, invert, shift down past the low bits."""
    return ((~pte << SWP_TYPE_BITS) & _U64) >> SWP_OFFSET_SHIFT


def is_swap_pte(pte: int) -> bool:
    """is_swap_pte(): not none, not present (PROT_NONE's bit 8 counts as present)."""
    return pte != 0 and not pte & (pt._PAGE_PRESENT | pt._PAGE_PROTNONE)


def pte_swp_exclusive(pte: int) -> bool:
    return bool(pte & _PAGE_SWP_EXCLUSIVE)


@dataclass(slots=True, eq=False)
class SwapInfo:
    """A swap_info_struct: ``max`` pages of which the first is the header."""

    max: int                                              # pages in the file
    swap_map: npt.NDArray[np.int32] = field(init=False)   # swap entries per slot
    has_cache: npt.NDArray[np.bool_] = field(init=False)  # SWAP_HAS_CACHE
    inuse_pages: int = 0
    cluster_next: int = 1                                 # where the next scan starts
    # what each written slot holds: (touched, the frame's words or None for all zeros)
    data: dict[int, tuple[int, npt.NDArray[np.uint64] | None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.swap_map = np.zeros(self.max, dtype=np.int32)
        self.has_cache = np.zeros(self.max, dtype=np.bool_)

    @property
    def pages(self) -> int:
        """si->pages: usable slots (the header is not one)."""
        return self.max - SWAP_HEADER_PAGES

    @property
    def nr_free(self) -> int:
        return self.pages - self.inuse_pages


def swapon(size: int) -> SwapInfo:
    """sys_swapon() of a file of ``size`` bytes made by mkswap."""
    return SwapInfo(max=size >> 12)


def get_swap_page(si: SwapInfo) -> int:
    """folio_alloc_swap() -> scan_swap_map_slots() for one order-0 folio on a rotational
    device: the first free slot from cluster_next on, wrapping once; 0 when the file is
    full (offset 0 is the header, never a slot). The slot comes back with SWAP_HAS_CACHE
    set: the caller puts the folio in the swap cache."""
    if si.nr_free <= 0:
        return 0
    nxt = si.cluster_next
    if si.swap_map[nxt] == 0 and not si.has_cache[nxt]:     # the common, sequential case
        return _take_slot(si, nxt)
    free = (si.swap_map == 0) & ~si.has_cache
    free[0] = False
    after = np.flatnonzero(free[si.cluster_next:])
    if after.size:
        offset = si.cluster_next + int(after[0])
    else:
        offset = int(np.flatnonzero(free)[0])
    return _take_slot(si, offset)


def _take_slot(si: SwapInfo, offset: int) -> int:
    si.has_cache[offset] = True
    si.inuse_pages += 1
    si.cluster_next = offset + 1 if offset + 1 < si.max else 1
    return offset


def swap_duplicate(si: SwapInfo, offset: int) -> None:
    """swap_duplicate(): one more swap entry (fork's copy, try_to_unmap's PTE) refers to the
    slot."""
    si.swap_map[offset] += 1


def swap_entry_put(si: SwapInfo, offset: int) -> None:
    """swap_free()/__swap_entry_free(): a swap entry is gone; the slot is freed when no
    entry and no swap-cache folio holds it."""
    assert si.swap_map[offset] > 0, f"swap slot {offset} count underflow"
    si.swap_map[offset] -= 1
    _maybe_free_slot(si, offset)


def swapcache_clear(si: SwapInfo, offset: int) -> None:
    """The swap cache let go of the slot (__delete_from_swap_cache -> put_swap_folio)."""
    si.has_cache[offset] = False
    _maybe_free_slot(si, offset)


def _maybe_free_slot(si: SwapInfo, offset: int) -> None:
    if si.swap_map[offset] == 0 and not si.has_cache[offset]:
        si.inuse_pages -= 1
        si.data.pop(offset, None)


def vm_swap_full(si: SwapInfo) -> bool:
    """vm_swap_full(): less than half of the swap space is free."""
    return si.nr_free * 2 < si.pages


def swap_total_kb(k: Kernel) -> int:
    """SwapTotal: usable slots, in kB."""
    return k.swap.si.pages << 2 if k.swap is not None else 0


def swap_free_kb(k: Kernel) -> int:
    """SwapFree: slots neither swap entries nor the swap cache hold, in kB."""
    return k.swap.si.nr_free << 2 if k.swap is not None else 0
