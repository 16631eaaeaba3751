"""Public trace replay: validate, pack the model into arrays, pick an engine, report.

``replay_trace`` replays a trace (a file in any format of ``trace.formats``, an array of
.pwt words, or an iterable of chunks) through a :class:`TraceModel` (TLB geometry of
hw/tlb.py, page-walk caches of hw/pwc.py, paging levels; the reference model of
``docs/trace-model.md`` by default) with every page of one size or with a
:class:`PageSizeMap`, on the compiled engine (``fast``) or the readable one
(``reference``), and returns :class:`TraceStats` holding the report of the spec.
The engines keep their state in the same objects and arrays and agree counter for
counter. :class:`TraceReplayer` is the incremental form (``--record`` streams into it).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from pagewalk.errors import Location, TraceError
from pagewalk.hw.pwc import PWC_NAMES, REFERENCE_PWC, PageWalkCaches, PwcGeometry
from pagewalk.hw.tlb import REFERENCE_TLB, TlbGeometry, TlbHierarchy
from pagewalk.trace import kernels
from pagewalk.trace.formats import (
    Chunk,
    describe_record,
    iter_chunks,
    record_error,
    trace_size,
)
from pagewalk.trace.reference import ReferenceReplay
from pagewalk.units import GiB, KiB, MiB, format_size, parse_size

ENGINES = ("fast", "reference")
PAGE_SHIFT_OF_SIZE = {4 * KiB: 12, 2 * MiB: 21, 1 * GiB: 30}
MAPPED_INITIAL_SLOTS = 1 << 16
PARALLEL_MIN_WALKS = 1 << 14       # fewer walks in a slice are not worth a thread's hand-off
SLICE_RECORDS = 1 << 18            # the pipeline's step: 2 MiB of walk buffer per slice
Progress = Callable[[int, int], None]      # (bytes done, bytes total or 0 if unknown)


@dataclass(frozen=True, slots=True)
class TraceModel:
    """What is replayed through: TLB arrays, page-walk caches and the paging depth."""

    name: str = "reference"
    tlb: TlbGeometry = REFERENCE_TLB
    pwc: PwcGeometry = REFERENCE_PWC
    paging_levels: int = 4
    description: str = "the reference model of docs/trace-model.md"

    @property
    def va_bits(self) -> int:
        return 48 if self.paging_levels == 4 else 57


REFERENCE_MODEL = TraceModel()


@dataclass(frozen=True, slots=True)
class PageSizeMap:
    """Page sizes by address: sorted, non-overlapping ranges ``[starts[i], ends[i])``
    mapped with pages of ``shifts[i]`` (12, 21 or 30); addresses outside: 4 KiB."""

    starts: npt.NDArray[np.int64]
    ends: npt.NDArray[np.int64]
    shifts: npt.NDArray[np.int64]

    @classmethod
    def from_ranges(cls, ranges: Iterable[tuple[int, int, int]]) -> PageSizeMap:
        """From ``(start, end, page_shift)`` triples; raises ValueError if they overlap,
        are not aligned to their page size or use another size."""
        rows = sorted((int(s), int(e), int(p)) for s, e, p in ranges)
        previous_end = 0
        for start, end, shift in rows:
            if shift not in (12, 21, 30):
                raise ValueError(f"range {start:#x}-{end:#x}: page shift {shift} is not "
                                 "12, 21 or 30")
            if not 0 <= start < end <= kernels.VA_MASK + 1:
                raise ValueError(f"range {start:#x}-{end:#x} is empty or out of bounds")
            if (start | end) & ((1 << shift) - 1):
                raise ValueError(f"range {start:#x}-{end:#x} is not aligned to its "
                                 f"{format_size(1 << shift)} pages")
            if start < previous_end:
                raise ValueError(f"range {start:#x}-{end:#x} overlaps the one before")
            previous_end = end
        columns = np.array(rows, dtype=np.int64).reshape(len(rows), 3)
        return cls(np.ascontiguousarray(columns[:, 0]), np.ascontiguousarray(columns[:, 1]),
                   np.ascontiguousarray(columns[:, 2]))

    def shift_at(self, vaddr: int) -> int:
        """The page shift of ``vaddr`` (the reference's lookup; the fast path has its own)."""
        index = int(np.searchsorted(self.starts, vaddr, side="right")) - 1
        if index >= 0 and vaddr < int(self.ends[index]):
            return int(self.shifts[index])
        return 12


@dataclass(slots=True)
class TraceStats:
    """The report of docs/trace-model.md, plus per-structure hits and misses."""

    accesses: int = 0
    loads: int = 0
    stores: int = 0
    ifetches: int = 0
    l1_hits: int = 0
    stlb_hits: int = 0
    walks: int = 0
    walk_refs: int = 0
    pwc_hits_pml4e: int = 0
    pwc_hits_pdpte: int = 0
    pwc_hits_pde: int = 0
    faults: int = 0
    pwc_hits_pml5e: int = 0
    model: str = "reference"
    pages: str = "4KiB"
    tlb: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def l1_miss_rate(self) -> float:
        return 1.0 - self.l1_hits / self.accesses if self.accesses else 0.0

    @property
    def stlb_miss_rate(self) -> float:
        return self.walks / self.accesses if self.accesses else 0.0

    @property
    def walk_refs_per_walk(self) -> float:
        return self.walk_refs / self.walks if self.walks else 0.0

    def counters(self) -> dict[str, int]:
        """The twelve counted report fields, in the spec's order."""
        names = ("accesses", "loads", "stores", "ifetches", "l1_hits", "stlb_hits", "walks",
                 "walk_refs", "pwc_hits_pml4e", "pwc_hits_pdpte", "pwc_hits_pde", "faults")
        return {name: getattr(self, name) for name in names}

    def to_json(self) -> dict[str, Any]:
        report: dict[str, Any] = self.counters()
        report.update(l1_miss_rate=self.l1_miss_rate, stlb_miss_rate=self.stlb_miss_rate,
                      walk_refs_per_walk=self.walk_refs_per_walk)
        report.update(pwc_hits_pml5e=self.pwc_hits_pml5e, model=self.model, pages=self.pages,
                      tlb={name: {"hits": h, "misses": m} for name, (h, m) in self.tlb.items()})
        return report

    def to_dict(self) -> dict[str, Any]:
        """The report of docs/trace-model.md, as ``pagewalk trace --json`` prints it."""
        return self.to_json()

    def to_pandas(self) -> Any:
        """The report as a one-row pandas DataFrame, per-array TLB counters as
        ``tlb.ARRAY.hits`` columns (the columns of a sweep's trace rows); ImportError
        naming the extra if pandas is not installed."""
        from pagewalk.extras import require
        pd = require("pandas", "TraceStats.to_pandas")
        row = {key: value for key, value in self.to_json().items() if key != "tlb"}
        for name, (hits, misses) in self.tlb.items():
            row[f"tlb.{name}.hits"] = hits
            row[f"tlb.{name}.misses"] = misses
        return pd.DataFrame([row])


def parse_pages(pages: int | str) -> int:
    """The page shift of ``4KiB``/``2MiB``/``1GiB`` (or those sizes in bytes)."""
    try:
        size = parse_size(pages)
    except ValueError as err:
        raise TraceError(str(err), Location(field="pages")) from None
    if size not in PAGE_SHIFT_OF_SIZE:
        raise TraceError(f"pages must be 4KiB, 2MiB or 1GiB, got {pages!r}",
                         Location(field="pages"))
    return PAGE_SHIFT_OF_SIZE[size]


class TraceReplayer:
    """Replay state that chunks are fed into: the TLBs, the page-walk caches, the set of
    mapped pages and the counters, driven by one engine."""

    def __init__(self, model: TraceModel = REFERENCE_MODEL, pages: int | str = "4KiB",
                 page_map: PageSizeMap | None = None, engine: str = "fast",
                 name: str = "<trace>") -> None:
        if engine not in ENGINES:
            raise TraceError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}",
                             Location(field="engine"))
        self.model = model
        self.page_shift = parse_pages(pages)
        self.page_map = page_map
        self.engine = engine
        self.name = name
        self.tlb = TlbHierarchy(model.tlb)
        self.pwc = PageWalkCaches(model.pwc, model.paging_levels)
        self.counters = np.zeros(kernels.NR_COUNTERS, dtype=np.int64)
        self.mapped = np.full(MAPPED_INITIAL_SLOTS, -1, dtype=np.int64)
        # stage two's counters (walk references, faults), apart from stage one's
        self._walk_counters = np.zeros(2, dtype=np.int64)
        self._walk_buffers = (np.empty(SLICE_RECORDS, dtype=np.int64),
                              np.empty(SLICE_RECORDS, dtype=np.int64))
        # the same-page runs stage one continues from one slice to the next
        self.run_state = np.array(kernels.new_run_state(), dtype=np.int64)
        self.reference = ReferenceReplay(self.tlb, self.pwc, self.counters)
        self._no_map = np.zeros(0, dtype=np.int64)
        self._kernels: kernels.Kernels | None = None

    def feed(self, chunk: Chunk) -> None:
        """Replay one chunk; a bad record raises TraceError naming it (the records before
        it are counted)."""
        if self.engine == "reference":
            self._feed_reference(chunk)
        else:
            self._feed_fast(chunk)

    def _feed_reference(self, chunk: Chunk) -> None:
        va_bits = self.model.va_bits

        def check(index: int, word: int) -> None:
            reason = describe_record(word, va_bits)
            if reason is not None:
                raise record_error(self.name, chunk.first_record + index, reason)

        page_map = self.page_map
        shift_of = page_map.shift_at if page_map is not None else self._fixed_shift
        self.reference.replay(chunk.words, shift_of, check)

    def _fixed_shift(self, vaddr: int) -> int:
        return self.page_shift

    def _feed_fast(self, chunk: Chunk) -> None:
        """The stages of fast.py over the chunk, as a pipeline of slices: the TLBs of
        slice j in this thread while the walks of slice j - 1 fault pages in and go
        through the page-walk caches in another (when there are enough of them to pay
        for the hand-off). Stops at the first bad record, having replayed every record
        before it."""
        words = np.ascontiguousarray(chunk.words, dtype=np.uint64).view(np.int64)
        nr_records = words.shape[0]
        page_map = self.page_map
        starts, ends, shifts = ((page_map.starts, page_map.ends, page_map.shifts)
                                if page_map is not None else (self._no_map,) * 3)
        tlb = self.tlb
        compiled = self._compiled()
        pending: _Background | None = None
        stop, status = nr_records, kernels.DONE
        try:
            for slice_no, low in enumerate(range(0, nr_records, SLICE_RECORDS)):
                high = min(nr_records, low + SLICE_RECORDS)
                walks = self._walk_buffers[slice_no & 1]
                stop, status, nr_walks = compiled.tlb_stage(
                    words, low, high, self.model.va_bits, self.page_shift, starts, ends,
                    shifts, tlb.layout, tlb.routes, tlb.storage.tags, tlb.storage.stamps,
                    tlb.storage.payload, tlb.storage.clock, tlb.stats, self.run_state, walks,
                    self.counters)
                if pending is not None:
                    pending.result()             # frees the other buffer for the next slice
                    pending = None
                if nr_walks >= PARALLEL_MIN_WALKS:
                    pending = _Background(self._walks_stage, walks, int(nr_walks))
                else:
                    self._walks_stage(walks, int(nr_walks))
                if status != kernels.DONE:
                    break
        finally:
            if pending is not None:
                pending.result()
        if status != kernels.DONE:
            reason = describe_record(int(words[stop]) & ((1 << 64) - 1), self.model.va_bits)
            raise record_error(self.name, chunk.first_record + int(stop), reason or "bad record")

    def _walks_stage(self, walks: npt.NDArray[np.int64], nr_walks: int) -> None:
        """Stage two over a slice's walks: their faults, then the page-walk caches."""
        self._fault_stage(walks, nr_walks)
        self._walk_stage(walks, nr_walks)

    def _fault_stage(self, walks: npt.NDArray[np.int64], nr_walks: int) -> None:
        """fast.fault_stage over a slice's walks, growing the set of mapped pages when it
        asks."""
        index = 0
        while True:
            index, status = self._compiled().fault_stage(walks, index, nr_walks,
                                                         self.mapped, self._walk_counters)
            if status != kernels.GROW_MAPPED:
                return
            self._grow_mapped()

    def _walk_stage(self, walks: npt.NDArray[np.int64], nr_walks: int) -> None:
        pwc = self.pwc
        self._compiled().walk_stage(walks, nr_walks, pwc.top_row, pwc.layout,
                                    pwc.storage.tags, pwc.storage.stamps, pwc.storage.payload,
                                    pwc.storage.clock, pwc.stats, self._walk_counters)

    def _grow_mapped(self) -> None:
        bigger = np.full(self.mapped.shape[0] * 2, -1, dtype=np.int64)
        self._compiled().mapped_rehash(self.mapped, bigger)
        self.mapped = bigger

    def _compiled(self) -> kernels.Kernels:
        if self._kernels is None:
            self._kernels = kernels.compiled()
        return self._kernels

    def stats(self) -> TraceStats:
        counters = self.counters
        # the reference engine counts these in ``counters``, the fast one's stage two apart
        walk_refs = int(counters[kernels.C_WALK_REFS] + self._walk_counters[0])
        faults = int(counters[kernels.C_FAULTS] + self._walk_counters[1])
        pwc_hits = {name: int(self.pwc.stats[row, 0]) for row, name in enumerate(PWC_NAMES)}
        pages = "mix" if self.page_map is not None else format_size(1 << self.page_shift)
        return TraceStats(
            accesses=int(counters[kernels.C_ACCESSES]), loads=int(counters[kernels.C_LOADS]),
            stores=int(counters[kernels.C_STORES]), ifetches=int(counters[kernels.C_IFETCHES]),
            l1_hits=int(counters[kernels.C_L1_HITS]), stlb_hits=int(counters[kernels.C_STLB_HITS]),
            walks=int(counters[kernels.C_WALKS]), walk_refs=walk_refs,
            pwc_hits_pml4e=pwc_hits["pml4e"], pwc_hits_pdpte=pwc_hits["pdpte"],
            pwc_hits_pde=pwc_hits["pde"], faults=faults,
            pwc_hits_pml5e=pwc_hits["pml5e"], model=self.model.name, pages=pages,
            tlb=self.tlb.counters())


class _Background:
    """Run ``func(*args)`` in a thread; ``result()`` joins it and returns its value or
    raises its exception (the compiled stages release the GIL while they run)."""

    def __init__(self, func: Callable[..., Any], *args: Any) -> None:
        self._outcome: list[Any] = []
        self._error: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, args=(func, args),
                                        name="pagewalk-walk-stage", daemon=True)
        self._thread.start()

    def _run(self, func: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            self._outcome.append(func(*args))
        except BaseException as err:  # noqa: BLE001 (handed to the caller by result())
            self._error.append(err)

    def result(self) -> Any:
        self._thread.join()
        if self._error:
            raise self._error[0]
        return self._outcome[0]


def replay_trace(trace: str | os.PathLike[str] | npt.ArrayLike | Iterable[Chunk], *,
                 pages: int | str = "4KiB", page_map: PageSizeMap | None = None,
                 model: TraceModel = REFERENCE_MODEL, engine: str = "fast",
                 fmt: str | None = None, progress: Progress | None = None) -> TraceStats:
    """Replay ``trace`` and return its report.

    ``trace``: a path (format from ``fmt`` or the extension), an array of .pwt words, or
    chunks. ``pages``: the one page size (4KiB, 2MiB, 1GiB); ``page_map``, if given,
    sizes each page instead. ``progress(bytes_done, bytes_total)`` is called per chunk.
    Bad input raises TraceError naming the line or record."""
    name = str(trace) if isinstance(trace, (str, os.PathLike)) else "<trace>"
    replayer = TraceReplayer(model, pages, page_map, engine, name)
    chunks: Iterable[Chunk]
    total = 0
    if isinstance(trace, (str, os.PathLike)):
        chunks = iter_chunks(trace, fmt, model.va_bits)
        total = trace_size(trace) if os.path.isfile(trace) else 0
    elif isinstance(trace, np.ndarray) or isinstance(trace, (list, tuple)) and not (
            trace and isinstance(trace[0], Chunk)):
        words = np.ascontiguousarray(trace, dtype=np.uint64)
        chunks = [Chunk(words, 0, words.nbytes)]
        total = words.nbytes
    else:
        chunks = trace   # type: ignore[assignment]
    for chunk in chunks:
        replayer.feed(chunk)
        if progress is not None:
            progress(chunk.bytes_done, total)
    return replayer.stats()
