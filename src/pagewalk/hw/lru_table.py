"""One set-associative, true-LRU table: the building block of every TLB and page-walk cache.

Intel SDM vol. 3A §4.10.2 (TLBs) and §4.10.3 (paging-structure caches) describe caches
of translations and of upper-level entries without fixing their organisation; pagewalk
models each one as a table of ``nr_sets`` sets of ``nr_ways`` ways with true LRU
replacement inside a set, as ChampSim does with one class (``inc/msl/lru_table.h``,
STYLE rule 8). A TLB is several of these with different geometry; a page-walk cache is
one with a single set (fully associative).

The state lives in NumPy arrays (:class:`LruArrays`) so that the same memory can be
driven by the plain-Python methods below (the reference) and by the Numba kernels of
``pagewalk.trace.fast`` (the fast path). Several tables share one :class:`LruArrays`;
each table owns the slice ``[offset, offset + nr_sets * nr_ways)``, set ``s`` way ``w``
at ``offset + s * nr_ways + w``.

Replacement rule (the fast path and ``benchmarks/c/tlbsim.c`` follow it exactly):
every hit and every fill stamps the entry with ``++clock``; an invalid entry has stamp
0; a fill of a tag already present rewrites that entry, otherwise it takes the way with
the smallest stamp (an invalid way first, then the least recently used), the lowest way
on a tie.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

INVALID_TAG = -1


@dataclass(frozen=True, slots=True)
class LruArrays:
    """The storage of one or more LRU tables.

    ``tags[i]`` is the entry's tag, ``INVALID_TAG`` (-1) when invalid (tags are >= 0);
    ``stamps[i]`` the ``clock`` value of its last use, 0 when invalid; ``payload[i]`` an
    opaque 64-bit value stored with the entry (the MMU keeps the leaf entry there);
    ``clock`` a one-element counter shared by every table in this storage.
    """

    tags: npt.NDArray[np.int64]
    stamps: npt.NDArray[np.int64]
    payload: npt.NDArray[np.uint64]
    clock: npt.NDArray[np.int64]

    @classmethod
    def allocate(cls, nr_entries: int) -> LruArrays:
        return cls(np.full(nr_entries, INVALID_TAG, dtype=np.int64),
                   np.zeros(nr_entries, dtype=np.int64),
                   np.zeros(nr_entries, dtype=np.uint64),
                   np.zeros(1, dtype=np.int64))

    def reset(self) -> None:
        """Every entry invalid, the clock back to 0."""
        self.tags[:] = INVALID_TAG
        self.stamps[:] = 0
        self.payload[:] = 0
        self.clock[0] = 0


class LruTable:
    """A table of ``nr_sets`` x ``nr_ways`` entries with true LRU inside each set."""

    def __init__(self, nr_sets: int, nr_ways: int, storage: LruArrays | None = None,
                 offset: int = 0) -> None:
        if nr_sets < 1 or nr_ways < 1:
            raise ValueError(f"an LRU table needs at least one set and one way, "
                             f"got {nr_sets} sets of {nr_ways} ways")
        nr_entries = nr_sets * nr_ways
        if storage is None:
            storage = LruArrays.allocate(nr_entries)
        if offset < 0 or offset + nr_entries > storage.tags.shape[0]:
            raise ValueError("the table does not fit in its storage")
        self.nr_sets = nr_sets
        self.nr_ways = nr_ways
        self.offset = offset
        self.storage = storage
        window = slice(offset, offset + nr_entries)
        self.tags = storage.tags[window].reshape(nr_sets, nr_ways)      # views, not copies
        self.stamps = storage.stamps[window].reshape(nr_sets, nr_ways)
        self.payload = storage.payload[window].reshape(nr_sets, nr_ways)
        self._clock = storage.clock

    @property
    def nr_entries(self) -> int:
        return self.nr_sets * self.nr_ways

    def set_of(self, number: int) -> int:
        """The set a page (or key) number maps to: the number modulo the number of sets."""
        return number % self.nr_sets

    def _tick(self) -> int:
        self._clock[0] += 1
        return int(self._clock[0])

    def find(self, set_index: int, tag: int) -> int:
        """The way holding ``tag`` in ``set_index``, or -1; does not touch LRU order."""
        ways = self.tags[set_index].tolist()
        return ways.index(tag) if tag in ways else -1

    def lookup(self, set_index: int, tag: int) -> int:
        """The way holding ``tag`` (made most recently used), or -1 on a miss."""
        way = self.find(set_index, tag)
        if way >= 0:
            self.stamps[set_index, way] = self._tick()
        return way

    def victim(self, set_index: int) -> int:
        """The way a fill replaces: the smallest stamp (invalid ways have 0), lowest first."""
        stamps: list[int] = self.stamps[set_index].tolist()
        return stamps.index(min(stamps))

    def fill(self, set_index: int, tag: int, payload: int = 0) -> int:
        """Insert ``tag`` as most recently used; returns the evicted valid tag or -1.

        A tag already present is rewritten in place (its payload replaced), never doubled.
        """
        if tag < 0:
            raise ValueError(f"tags are non-negative, got {tag}")
        way = self.find(set_index, tag)
        evicted = INVALID_TAG
        if way < 0:
            way = self.victim(set_index)
            evicted = int(self.tags[set_index, way])
        self.tags[set_index, way] = tag
        self.payload[set_index, way] = payload
        self.stamps[set_index, way] = self._tick()
        return evicted

    def payload_at(self, set_index: int, way: int) -> int:
        return int(self.payload[set_index, way])

    def invalidate(self, set_index: int, tag: int) -> bool:
        """Drop ``tag`` from ``set_index``; True if it was there."""
        way = self.find(set_index, tag)
        if way < 0:
            return False
        self._clear(set_index, way)
        return True

    def invalidate_matching(self, tag_mask: int, tag_value: int) -> int:
        """Drop every valid entry with ``tag & tag_mask == tag_value`` (e.g. one PCID's);
        returns how many were dropped."""
        valid = self.tags != INVALID_TAG
        hit = valid & ((self.tags & np.int64(tag_mask)) == np.int64(tag_value))
        self.tags[hit] = INVALID_TAG
        self.stamps[hit] = 0
        self.payload[hit] = 0
        return int(hit.sum())

    def flush(self) -> None:
        """Drop every entry (the clock keeps running: it is shared)."""
        self.tags[:] = INVALID_TAG
        self.stamps[:] = 0
        self.payload[:] = 0

    def valid_tags(self, set_index: int) -> list[int]:
        """The valid tags of one set, most recently used first (for tests and `explain`)."""
        order = np.argsort(-self.stamps[set_index], kind="stable")
        return [int(self.tags[set_index, w]) for w in order
                if self.tags[set_index, w] != INVALID_TAG]

    def _clear(self, set_index: int, way: int) -> None:
        self.tags[set_index, way] = INVALID_TAG
        self.stamps[set_index, way] = 0
        self.payload[set_index, way] = 0
