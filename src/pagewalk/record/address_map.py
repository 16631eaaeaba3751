"""Recorded addresses -> simulated addresses.

Under valgrind the program's mappings sit where valgrind put them; in the replay the
simulated kernel chooses (as Linux would natively). Each recorded range the replay has
mapped is kept with the distance to its simulated place; a newer range replaces the
parts of older ones it covers (as MAP_FIXED replaces mappings). Accesses are translated
a run at a time with one ``searchsorted`` (no Python loop per access).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt


@dataclass(slots=True)
class AddressMap:
    """Sorted, disjoint recorded ranges [starts[i], ends[i]) shifted by deltas[i]."""

    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    deltas: list[int] = field(default_factory=list)

    def add(self, rec_start: int, rec_end: int, sim_start: int) -> None:
        """Recorded [rec_start, rec_end) now lives at sim_start."""
        if rec_end <= rec_start:
            return
        self.remove(rec_start, rec_end)
        at = bisect.bisect_left(self.starts, rec_start)
        self.starts.insert(at, rec_start)
        self.ends.insert(at, rec_end)
        self.deltas.insert(at, sim_start - rec_start)

    def remove(self, rec_start: int, rec_end: int) -> None:
        """Forget recorded [rec_start, rec_end) (parts of ranges outside it stay)."""
        kept: list[tuple[int, int, int]] = []
        for start, end, delta in zip(self.starts, self.ends, self.deltas, strict=True):
            if end <= rec_start or start >= rec_end:
                kept.append((start, end, delta))
                continue
            if start < rec_start:
                kept.append((start, rec_start, delta))
            if end > rec_end:
                kept.append((rec_end, end, delta))
        kept.sort()
        self.starts = [k[0] for k in kept]
        self.ends = [k[1] for k in kept]
        self.deltas = [k[2] for k in kept]

    def translate(self, rec: int) -> int | None:
        """The simulated address of one recorded address, or None if unmapped."""
        at = bisect.bisect_right(self.starts, rec) - 1
        if at < 0 or rec >= self.ends[at]:
            return None
        return rec + self.deltas[at]

    def translate_array(self, rec: npt.NDArray[np.uint64]
                        ) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.bool_]]:
        """Simulated addresses of ``rec`` and which of them are mapped."""
        if not self.starts:
            return rec, np.zeros(rec.shape[0], dtype=np.bool_)
        starts = np.asarray(self.starts, dtype=np.uint64)
        ends = np.asarray(self.ends, dtype=np.uint64)
        deltas = np.asarray(self.deltas, dtype=np.int64).astype(np.uint64)   # two's complement
        at = np.searchsorted(starts, rec, side="right").astype(np.int64) - 1
        valid = at >= 0
        index = np.where(valid, at, 0)
        valid &= rec < ends[index]
        return rec + deltas[index], valid     # uint64 wraps: adding -d subtracts d
