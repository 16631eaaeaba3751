"""Page-walk caches: fully associative LRU caches of upper-level paging entries.

Models Intel SDM vol. 3A §4.10.3 "Paging-Structure Caches": a PML4E cache keyed by
VA[47:39], a PDPTE cache keyed by VA[47:30] and a PDE cache keyed by VA[47:21] (with
5-level paging the keys run from bit 56 and a PML5E cache may be added), each entry
tagged with its PCID; a walk uses the deepest cached entry and reads only the levels
below it; INVLPG and MOV to CR3 invalidate them per §4.10.4. The sizes (4, 4, 32 entries,
no PML5E cache) are those of ``docs/trace-model.md``; Intel does not publish them.

Rows are numbered from the top of the widest walk: 0 PML5E, 1 PML4E, 2 PDPTE, 3 PDE
(the row of a level's entry; row 4 would be the PTE, which is never cached here). Each
row is one :class:`~pagewalk.hw.lru_table.LruTable` with a single set, in one shared
storage so the Numba kernels of ``pagewalk.trace.fast`` can drive the same arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from pagewalk.hw.lru_table import LruArrays, LruTable

PWC_NAMES = ("pml5e", "pml4e", "pdpte", "pde")
PWC_KEY_SHIFTS = (48, 39, 30, 21)       # the low bit of each row's key, VA[top:shift]
LEAF_ROW = {12: 4, 21: 3, 30: 2}        # row of the leaf entry: PTE, PDE, PDPTE
PWC_PCID_SHIFT = 48                     # key | pcid << 48 (keys are at most 36 bits)
PCID_MASK = 0xFFF


@dataclass(frozen=True, slots=True)
class PwcGeometry:
    """Entries of each page-walk cache (0: no cache for that level)."""

    pml5e_entries: int = 0
    pml4e_entries: int = 4
    pdpte_entries: int = 4
    pde_entries: int = 32

    @property
    def entries(self) -> tuple[int, int, int, int]:
        return (self.pml5e_entries, self.pml4e_entries, self.pdpte_entries, self.pde_entries)

    def check(self) -> None:
        for name, count in zip(PWC_NAMES, self.entries):
            if count < 0:
                raise ValueError(f"page-walk cache {name}: entries must not be negative")

    def layout(self, paging_levels: int = 4) -> npt.NDArray[np.int64]:
        """``layout[row] = (offset, nr_entries, key_shift, key_bits)`` in the flat storage;
        ``key_bits`` is how many VA bits above ``key_shift`` form the key (48- or 57-bit
        addresses). Rows above the top level of ``paging_levels`` get 0 entries."""
        va_bits = 48 if paging_levels == 4 else 57
        rows, offset = [], 0
        for row, (count, shift) in enumerate(zip(self.entries, PWC_KEY_SHIFTS)):
            if row < top_row(paging_levels):
                count = 0
            rows.append((offset, count, shift, va_bits - shift))
            offset += count
        return np.array(rows, dtype=np.int64)


REFERENCE_PWC = PwcGeometry()


def top_row(paging_levels: int) -> int:
    """Row of the top-level entry: PML5E (0) with 5 levels, PML4E (1) with 4."""
    if paging_levels not in (4, 5):
        raise ValueError(f"paging has 4 or 5 levels, not {paging_levels}")
    return 5 - paging_levels


def pwc_key(vaddr: int, key_shift: int, key_bits: int, pcid: int = 0) -> int:
    """VA[key_shift + key_bits - 1 : key_shift], tagged with the PCID."""
    return ((vaddr >> key_shift) & ((1 << key_bits) - 1)) | ((pcid & PCID_MASK) << PWC_PCID_SHIFT)


class PageWalkCaches:
    """PML5E/PML4E/PDPTE/PDE caches of one CPU with hit and miss counters per row."""

    def __init__(self, geometry: PwcGeometry = REFERENCE_PWC, paging_levels: int = 4) -> None:
        geometry.check()
        self.geometry = geometry
        self.paging_levels = paging_levels
        self.top_row = top_row(paging_levels)
        self.layout = geometry.layout(paging_levels)
        total = int(self.layout[:, 1].sum())
        self.storage = LruArrays.allocate(max(total, 1))
        self.tables: list[LruTable | None] = [
            LruTable(1, int(count), self.storage, int(offset)) if count else None
            for offset, count, _, _ in self.layout]
        self.stats = np.zeros((len(PWC_NAMES), 2), dtype=np.int64)   # (hits, misses) per row
        self._key_fields = [(int(shift), int(bits)) for _, _, shift, bits in self.layout]

    # -- the trace model's walk (docs/trace-model.md "Page-walk caches") -------------------
    def walk(self, vaddr: int, pcid: int, leaf_shift: int) -> int:
        """One walk to a leaf of ``leaf_shift``: look up the caches from the level above the
        leaf upwards, stop at the first hit, read every entry below it, cache the
        upper-level entries read. Returns the number of entries read (walk_refs)."""
        leaf_row = LEAF_ROW[leaf_shift]
        hit_row = self.deepest_hit(vaddr, pcid, leaf_row - 1)
        first_read = hit_row + 1 if hit_row >= 0 else self.top_row
        for row in range(first_read, leaf_row):
            self.fill_row(row, vaddr, pcid, 0)
        return leaf_row - first_read + 1

    def deepest_hit(self, vaddr: int, pcid: int, from_row: int) -> int:
        """Probe rows ``from_row`` up to the top; the first hit (made MRU), or -1."""
        for row in range(from_row, self.top_row - 1, -1):
            if self.probe_row(row, vaddr, pcid) >= 0:
                return row
        return -1

    # -- the MMU's interface (walk levels: 0 = top level of this paging mode) -------------
    def lookup(self, vaddr: int, pcid: int, start_level: int = 0,
               table_pfn: int = 0) -> tuple[int, int]:
        """Where a walk can start: ``(level + 1, cached payload)`` of the deepest cached
        entry for ``vaddr`` (PDE first), or ``(start_level, table_pfn)`` unchanged."""
        for row in range(len(PWC_NAMES) - 1, self.top_row - 1, -1):
            level = row - self.top_row
            if level < start_level:
                break
            way = self.probe_row(row, vaddr, pcid)
            if way >= 0:
                table = self.tables[row]
                assert table is not None
                return level + 1, table.payload_at(0, way)
        return start_level, table_pfn

    def fill(self, vaddr: int, pcid: int, level: int, payload: int) -> None:
        """Cache the non-leaf entry read at walk ``level`` (payload: the next table's pfn)."""
        row = level + self.top_row
        if row < len(PWC_NAMES):
            self.fill_row(row, vaddr, pcid, payload)

    def invalidate(self, vaddr: int, pcid: int) -> None:
        """Drop the entries that translate ``vaddr`` for ``pcid`` (one per row)."""
        for row, table in enumerate(self.tables):
            if table is not None:
                table.invalidate(0, self._key(row, vaddr, pcid))

    def flush_pcid(self, pcid: int) -> None:
        """Drop every entry tagged ``pcid`` (INVLPG and non-NOFLUSH CR3 loads, §4.10.4.1)."""
        mask = PCID_MASK << PWC_PCID_SHIFT
        for table in self.tables:
            if table is not None:
                table.invalidate_matching(mask, (pcid & PCID_MASK) << PWC_PCID_SHIFT)

    def flush(self) -> None:
        for table in self.tables:
            if table is not None:
                table.flush()

    def counters(self) -> dict[str, tuple[int, int]]:
        """``{name: (hits, misses)}`` of the caches that exist."""
        return {name: (int(self.stats[row, 0]), int(self.stats[row, 1]))
                for row, name in enumerate(PWC_NAMES) if self.tables[row] is not None}

    # -- rows -------------------------------------------------------------------------------
    def probe_row(self, row: int, vaddr: int, pcid: int) -> int:
        """Look up one row (a miss when it has no cache); count hits and misses."""
        table = self.tables[row]
        if table is None:
            return -1
        way = table.lookup(0, self._key(row, vaddr, pcid))
        self.stats[row, 0 if way >= 0 else 1] += 1
        return way

    def fill_row(self, row: int, vaddr: int, pcid: int, payload: int) -> None:
        table = self.tables[row]
        if table is not None:
            table.fill(0, self._key(row, vaddr, pcid), payload)

    def _key(self, row: int, vaddr: int, pcid: int) -> int:
        shift, bits = self._key_fields[row]
        return pwc_key(vaddr, shift, bits, pcid)
