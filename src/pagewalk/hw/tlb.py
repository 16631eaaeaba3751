"""The TLB hierarchy: L1 iTLB/dTLB arrays per page size and the shared STLB, built from
one LRU-table class with different geometry (STYLE rule 8).

Models Intel SDM vol. 3A §4.10.2 (TLBs: entries per page size, PCID tags, a TLB hit needs
no walk) and §4.10.4 (INVLPG drops the entries of every page size covering an address;
INVPCID single-context drops one PCID; a flush drops all). The reference geometry is the
one of ``docs/trace-model.md``; its figures are those Intel publishes for Skylake (Intel
64 and IA-32 Architectures Optimization Reference Manual, order no. 248966, "Skylake
microarchitecture", TLB parameters). Linux drives these flushes from arch/x86/mm/tlb.c.

An array holds one or more page sizes; the set of a page is its virtual page number at
its own size modulo the number of sets, and its tag (see :func:`tlb_tag`) carries the
page number, the size and the PCID, so entries of different sizes or PCIDs never hit
each other. A lookup tries the L1 array of the access's kind, then the level-2 array
(STLB); an STLB hit refills the L1; a miss is resolved by a walk and :meth:`fill`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pagewalk.hw.lru_table import LruArrays, LruTable

KIND_LOAD = 0
KIND_STORE = 1
KIND_IFETCH = 2
NR_KINDS = 3

PAGE_SHIFTS = (12, 21, 30)                       # 4 KiB, 2 MiB, 1 GiB
SIZE_CODE = {12: 0, 21: 1, 30: 2}                # index of a page size in tags and tables
VA_FIELD_BITS = 57                               # widest linear address (LA57)
VA_FIELD_MASK = (1 << VA_FIELD_BITS) - 1         # addresses are kept as their low 57 bits
TAG_SIZE_SHIFT = 45                              # tag = vpn | size << 45 | pcid << 47
TAG_PCID_SHIFT = 47
PCID_MASK = 0xFFF                                # CR3[11:0]
NR_LEVELS = 2                                    # L1 and the second level (STLB)

# Which accesses an array serves.
SERVES = {"data": (KIND_LOAD, KIND_STORE), "instruction": (KIND_IFETCH,),
          "unified": (KIND_LOAD, KIND_STORE, KIND_IFETCH)}


def tlb_tag(vaddr: int, page_shift: int, pcid: int = 0) -> int:
    """The tag of the page of ``page_shift`` holding ``vaddr`` under ``pcid``."""
    vpn = (vaddr & VA_FIELD_MASK) >> page_shift
    return vpn | (SIZE_CODE[page_shift] << TAG_SIZE_SHIFT) | ((pcid & PCID_MASK) << TAG_PCID_SHIFT)


@dataclass(frozen=True, slots=True)
class TlbArray:
    """One set-associative array: ``nr_entries`` entries in sets of ``nr_ways`` ways.

    ``level`` is 1 (L1) or 2 (STLB, the second-level TLB); ``serves`` is "data" (loads and
    stores), "instruction" (fetches) or "unified"; ``page_shifts`` the sizes it holds.
    """

    name: str
    level: int
    serves: str
    page_shifts: tuple[int, ...]
    nr_entries: int
    nr_ways: int

    @property
    def nr_sets(self) -> int:
        return self.nr_entries // self.nr_ways

    def check(self) -> None:
        """Raise ValueError naming the array if its geometry is impossible."""
        if self.level not in (1, 2):
            raise ValueError(f"{self.name}: level must be 1 or 2, got {self.level}")
        if self.serves not in SERVES:
            raise ValueError(f"{self.name}: serves must be one of {sorted(SERVES)}, "
                             f"got {self.serves!r}")
        if not self.page_shifts or any(s not in SIZE_CODE for s in self.page_shifts):
            raise ValueError(f"{self.name}: page sizes must be among 4KiB, 2MiB, 1GiB")
        if len(set(self.page_shifts)) != len(self.page_shifts):
            raise ValueError(f"{self.name}: a page size is listed twice")
        if self.nr_entries < 1 or self.nr_ways < 1:
            raise ValueError(f"{self.name}: entries and ways must be positive")
        if self.nr_entries % self.nr_ways:
            raise ValueError(f"{self.name}: {self.nr_entries} entries is not a whole number "
                             f"of sets of {self.nr_ways} ways")


@dataclass(frozen=True, slots=True)
class TlbGeometry:
    """A TLB hierarchy: its arrays; at most one array per (level, access kind, page size)."""

    name: str
    arrays: tuple[TlbArray, ...]

    def check(self) -> None:
        seen: dict[tuple[int, int, int], str] = {}
        for array in self.arrays:
            array.check()
            for kind in SERVES[array.serves]:
                for shift in array.page_shifts:
                    key = (array.level, kind, shift)
                    if key in seen:
                        raise ValueError(f"{array.name} and {seen[key]} both hold "
                                         f"{1 << shift >> 10} KiB pages for the same accesses "
                                         f"at level {array.level}")
                    seen[key] = array.name

    def route(self) -> npt.NDArray[np.int64]:
        """``route[level - 1, kind, size code]``: the array index serving it, or -1."""
        table = np.full((NR_LEVELS, NR_KINDS, len(PAGE_SHIFTS)), -1, dtype=np.int64)
        for index, array in enumerate(self.arrays):
            for kind in SERVES[array.serves]:
                for shift in array.page_shifts:
                    table[array.level - 1, kind, SIZE_CODE[shift]] = index
        return table

    def layout(self) -> npt.NDArray[np.int64]:
        """``layout[i] = (offset, nr_sets, nr_ways, set_mask)`` of array ``i`` in the flat
        storage; ``set_mask`` is ``nr_sets - 1`` when that is a power of two, else -1."""
        rows, offset = [], 0
        for array in self.arrays:
            sets = array.nr_sets
            mask = sets - 1 if sets & (sets - 1) == 0 else -1
            rows.append((offset, sets, array.nr_ways, mask))
            offset += array.nr_entries
        return np.array(rows, dtype=np.int64).reshape(len(rows), 4)

    @property
    def nr_entries(self) -> int:
        return sum(a.nr_entries for a in self.arrays)


def _reference_arrays() -> tuple[TlbArray, ...]:
    return (
        TlbArray("L1 dTLB 4K", 1, "data", (12,), 64, 4),
        TlbArray("L1 dTLB 2M", 1, "data", (21,), 32, 4),
        TlbArray("L1 dTLB 1G", 1, "data", (30,), 4, 4),
        TlbArray("L1 iTLB 4K", 1, "instruction", (12,), 128, 8),
        TlbArray("L1 iTLB 2M", 1, "instruction", (21,), 8, 8),
        TlbArray("STLB 4K+2M", 2, "unified", (12, 21), 1536, 12),
        TlbArray("STLB 1G", 2, "unified", (30,), 16, 4),
    )


REFERENCE_TLB = TlbGeometry("reference", _reference_arrays())


@dataclass(frozen=True, slots=True)
class TlbResult:
    """A lookup's answer: ``level`` "l1", "stlb" or None (miss), the page's shift and the
    payload stored with the entry (0 on a miss)."""

    level: str | None
    page_shift: int = 0
    payload: int = 0


TLB_MISS = TlbResult(None)


class TlbHierarchy:
    """The TLBs of one CPU: arrays in one flat storage, hit and miss counters per array."""

    def __init__(self, geometry: TlbGeometry = REFERENCE_TLB) -> None:
        geometry.check()
        self.geometry = geometry
        self.layout = geometry.layout()
        self.routes = geometry.route()
        self.storage = LruArrays.allocate(geometry.nr_entries)
        self.tables = [LruTable(array.nr_sets, array.nr_ways, self.storage, int(row[0]))
                       for array, row in zip(geometry.arrays, self.layout)]
        # stats[i] = (hits, misses) of array i, per probe
        self.stats = np.zeros((len(geometry.arrays), 2), dtype=np.int64)
        self._routes: list[list[list[int]]] = self.routes.tolist()

    # -- lookups ----------------------------------------------------------------------------
    def lookup(self, vaddr: int, kind: int, pcid: int = 0,
               page_shift: int | None = None) -> TlbResult:
        """Translate ``vaddr`` from the TLBs: L1 of ``kind``, then the STLB (an STLB hit is
        copied into the L1). With ``page_shift`` None every page size is probed, as the
        hardware does; with a size (the trace model knows it) only that one."""
        shifts = PAGE_SHIFTS if page_shift is None else (page_shift,)
        for shift in shifts:
            index = self._array_for(1, kind, shift)
            way = self._probe(index, vaddr, shift, pcid)
            if way >= 0:
                table = self.tables[index]
                return TlbResult("l1", shift, table.payload_at(self._set(index, vaddr, shift), way))
        for shift in shifts:
            index = self._array_for(2, kind, shift)
            way = self._probe(index, vaddr, shift, pcid)
            if way >= 0:
                payload = self.tables[index].payload_at(self._set(index, vaddr, shift), way)
                self._fill_level(1, vaddr, kind, shift, pcid, payload)
                return TlbResult("stlb", shift, payload)
        return TLB_MISS

    def fill(self, vaddr: int, kind: int, page_shift: int, pcid: int = 0,
             payload: int = 0) -> None:
        """After a walk: enter the translation in the STLB and in the L1 of ``kind``."""
        self._fill_level(2, vaddr, kind, page_shift, pcid, payload)
        self._fill_level(1, vaddr, kind, page_shift, pcid, payload)

    # -- invalidation (SDM §4.10.4) ---------------------------------------------------------
    def invlpg(self, vaddr: int, pcid: int = 0) -> None:
        """INVLPG: drop the entries of every page size that cover ``vaddr`` for ``pcid``,
        in every array."""
        for index, array in enumerate(self.geometry.arrays):
            for shift in array.page_shifts:
                self.tables[index].invalidate(self._set(index, vaddr, shift),
                                              tlb_tag(vaddr, shift, pcid))

    def flush_pcid(self, pcid: int) -> None:
        """INVPCID single-context: drop every entry tagged ``pcid``."""
        mask = PCID_MASK << TAG_PCID_SHIFT
        for table in self.tables:
            table.invalidate_matching(mask, (pcid & PCID_MASK) << TAG_PCID_SHIFT)

    def flush_all(self) -> None:
        """Drop every entry of every PCID (counters are kept)."""
        for table in self.tables:
            table.flush()

    # -- counters ---------------------------------------------------------------------------
    def counters(self) -> dict[str, tuple[int, int]]:
        """``{array name: (hits, misses)}``."""
        return {a.name: (int(h), int(m)) for a, (h, m) in zip(self.geometry.arrays, self.stats)}

    # -- helpers ----------------------------------------------------------------------------
    def _array_for(self, level: int, kind: int, page_shift: int) -> int:
        return self._routes[level - 1][kind][SIZE_CODE[page_shift]]

    def _set(self, index: int, vaddr: int, page_shift: int) -> int:
        return self.tables[index].set_of((vaddr & VA_FIELD_MASK) >> page_shift)

    def _probe(self, index: int, vaddr: int, page_shift: int, pcid: int) -> int:
        """Look up one array (if there is one); count the hit or miss."""
        if index < 0:
            return -1
        way = self.tables[index].lookup(self._set(index, vaddr, page_shift),
                                        tlb_tag(vaddr, page_shift, pcid))
        self.stats[index, 0 if way >= 0 else 1] += 1
        return way

    def _fill_level(self, level: int, vaddr: int, kind: int, page_shift: int, pcid: int,
                    payload: int) -> None:
        index = self._array_for(level, kind, page_shift)
        if index >= 0:   # e.g. no 1 GiB array in the reference L1 iTLB
            self.tables[index].fill(self._set(index, vaddr, page_shift),
                                    tlb_tag(vaddr, page_shift, pcid), payload)
