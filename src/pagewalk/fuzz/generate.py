"""Random scenarios (scenario.md, versions 1 to 3), valid by construction.

A scenario is built as plain data (the YAML document: ``{"name", "system", "steps"}``
with integer sizes) by :func:`generate`, from a seeded ``random.Random`` (the same seed
and class give the same scenario; no global state). The generator keeps a model of
what the schema checks statically (live processes, the mapping names each one knows)
and of where its ``MAP_FIXED`` mappings lie in an arena of empty address space, so
every step names a live process and a mapping that process made or inherited, and
ranges can be aimed at neighbouring VMAs, holes and the ends of mappings.

It does not know the kernel's answer: steps carry no ``expect_error`` or
``expect_signal``; discover.py runs the scenario, records what the kernel said and
annotates the steps. A step whose mapping is gone by then (its mmap failed, a munmap
covered it) is left out by the annotation, as the runners would refuse it.

The steps come from :data:`STEP_KINDS`, a table of makers with a weight per class
(:data:`CLASSES`); a version-2 step (brk, mremap, mlock, files) is one more entry. The
``pressure`` class (version 3) runs in a memory cgroup with a limit, with or without a
swap file (or with swap alone): anonymous memory of up to twice the limit, written,
read back, paged out, forked and locked, so that reclaim, swap-in and the OOM killer
all have their turn.
Sizes stay small enough for a run of a second or two on the kernel: anonymous mappings
up to 64 MiB (a few sparse ones up to 1 GiB, touched at large strides), hugetlb pools
up to 64 pages of 2 MiB and 2 of 1 GiB, at most four live processes, files up to
16 MiB and 64 MiB of them in all. The khugepaged step is simulator-only and never
generated.

Files (version 2) follow the kernel oracle's rule (shared/oracle/README.md, Version 2):
populating an uncached disk file is timing dependent on the live kernel (readahead I/O
races the populate), so a step that populates (MADV_POPULATE_READ/WRITE, MAP_POPULATE,
mlock, mlockall(MCL_CURRENT), and mremap growing or mprotect making writable a locked
VMA) is only made while every disk file the process may map is fully cached (no
fadvise, MADV_PAGEOUT/REMOVE or extending truncate since its creation) or was mapped
with ``read_ahead_kb`` 0 (and no MADV_HUGEPAGE, which reads ahead regardless).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, TypeVar

from pagewalk.kernel import knobs as registry
from pagewalk.units import GiB, KiB, MiB

Doc = dict[str, Any]
T = TypeVar("T")

CLASSES = ("basic", "thp", "hugetlb", "processes", "knobs", "mixed", "files", "pressure")
#: how often ``all`` draws each class: files and pressure (versions 2 and 3) less often
CLASS_DRAW: Mapping[str, float] = MappingProxyType({c: 0.5 if c in ("files", "pressure")
                                                    else 1.0 for c in CLASSES})
NO_HUGETLB_CLASSES = tuple(c for c in CLASSES if c != "hugetlb")   # --no-hugetlb
ALL = "all"
ARENA = 0x600000000000            # empty in the start image: MAP_FIXED mappings go here
ARENA_1G = 0x640000000000         # 1 GiB-aligned arena for 1 GiB hugetlb pages
PAGE = 4 * KiB
HUGE_2M = 2 * MiB
MAX_LIVE_PROCESSES = 4
MAX_FORKS = 5
MAX_POOL_2M = 64
MAX_POOL_1G = 2
SPARSE_MIN = 256 * MiB            # a mapping this long is touched only sparsely
MAPPED_MAX = 192 * MiB            # dense (touchable) anonymous bytes mapped in a scenario
SPARSE_TOUCHES = 32
START_BRK = 0x4D9000              # version 2: the heap at scenario start, [start_brk, brk)
INITIAL_BRK = 0x4FB000            # the spec: the break never goes below it
HEAP = "[heap]"
HEAP_KEEP = INITIAL_BRK - START_BRK   # the first part of [heap]: never unmapped or written
BRK_MAX = 64 * MiB                # how far the break grows above the initial one
STEP_RANGE = MappingProxyType({"basic": (8, 20), "thp": (8, 20), "hugetlb": (6, 16),
                               "processes": (8, 22), "knobs": (8, 18), "mixed": (10, 24),
                               "files": (10, 24), "pressure": (8, 18)})
FILE_MAX = 16 * MiB               # version 2: a file's size, at its largest
FILES_TOTAL = 64 * MiB            # the files of a scenario, each at its largest
MAX_FILES = 6
READ_AHEAD_VALUES = (0, 4, 128, 8192)   # kB: none, one page, the default of most disks, vda's
# version 3 (pressure): the memory cgroup's limit and the swap file, in MiB
LIMITS_MIB = (16, 24, 32, 48, 64, 96)
SWAPS_MIB = (0, 0, 64, 128, 256, 512)        # 0: no swap (the OOM killer's turn)

PROTS = ("rw", "r", "none", "rwx", "x", "rx", "w", "wx")
PROT_WEIGHTS = (40, 10, 8, 6, 4, 4, 4, 4)
ADVICE_WEIGHTS: Mapping[str, Mapping[str, float]] = MappingProxyType({
    "basic": {"dontneed": 4, "free": 3, "willneed": 2, "hugepage": 1, "nohugepage": 1,
              "collapse": 1},
    "thp": {"hugepage": 5, "nohugepage": 2, "collapse": 4, "dontneed": 3, "free": 3,
            "willneed": 1},
    # version 2: every advice, on file mappings and every other kind
    "files": {"dontneed": 3, "free": 1, "willneed": 2, "hugepage": 1, "nohugepage": 0.5,
              "collapse": 0.5, "populate_read": 3, "populate_write": 3, "remove": 2,
              "cold": 2, "pageout": 3, "random": 1.5, "sequential": 1.5, "normal": 1},
    # version 3: swap-out by hand and the advice that moves pages between LRU lists
    "pressure": {"pageout": 5, "cold": 2, "nohugepage": 3, "dontneed": 2, "free": 1,
                 "willneed": 1.5, "hugepage": 0.5, "populate_write": 1, "populate_read": 0.5},
})
POPULATE_ADVICE = frozenset({"populate_read", "populate_write"})
UNCACHE_ADVICE = frozenset({"pageout", "remove"})   # drop disk-file pages (remove punches)


# -- the model ------------------------------------------------------------------------------

@dataclass(slots=True)
class MapModel:
    """A mapping the generator made: where it is (if MAP_FIXED made it known) and its kind."""

    name: str
    length: int                  # bytes as mapped (rounded up to its page size)
    kind: str                    # private, shared, hugetlb
    page: int                    # 4 KiB, 2 MiB or 1 GiB
    start: int | None = None     # known for MAP_FIXED mappings in the arena
    sparse: bool = False         # too long to touch densely
    file: str | None = None      # version 2: the file mapped
    ra: int = 0                  # read_ahead_kb at its mmap (the file is opened afresh)
    # the least length the scenario runner may resolve the name to (its mmap's length, or
    # an mremap's new one if that succeeded): a range without a length starts below it
    region_length: int = -1      # -1: ``length``

    def __post_init__(self) -> None:
        if self.region_length < 0:
            self.region_length = self.length

    @property
    def end(self) -> int | None:
        return None if self.start is None else self.start + self.length


@dataclass(slots=True)
class ProcModel:
    """A live process: the mapping names it may use and its arena layout."""

    name: str
    maps: dict[str, MapModel] = field(default_factory=dict)
    arena: list[tuple[int, int]] = field(default_factory=list)   # mapped [start, end)
    brk_low: int = 0             # the lowest the break can be (a grow may have failed)
    brk_high: int = 0            # the highest it can be (every grow succeeded)
    # version 2: (file, read_ahead_kb at mmap) of every file mapping it may hold, named or
    # not (a partial mremap leaves an unnamed part behind), never forgotten
    file_maps: set[tuple[str, int]] = field(default_factory=set)
    locked: bool = False         # may hold a VM_LOCKED VMA without VM_LOCKONFAULT
    hugepage: bool = False       # may hold a VM_HUGEPAGE VMA (file readahead even at ra 0)

    def __post_init__(self) -> None:
        self.brk_low = self.brk_low or INITIAL_BRK
        self.brk_high = self.brk_high or INITIAL_BRK

    def child(self, name: str) -> ProcModel:
        # dup_mmap clears VM_LOCKED in the child: locks are not inherited
        return ProcModel(name, dict(self.maps), list(self.arena), self.brk_low, self.brk_high,
                         set(self.file_maps), False, self.hugepage)

    def occupy(self, start: int, end: int) -> None:
        self.vacate(start, end)
        self.arena.append((start, end))
        self.arena.sort()

    def vacate(self, start: int, end: int) -> None:
        kept: list[tuple[int, int]] = []
        for lo, hi in self.arena:
            if hi <= start or lo >= end:
                kept.append((lo, hi))
                continue
            if lo < start:
                kept.append((lo, start))
            if hi > end:
                kept.append((end, hi))
        self.arena = sorted(kept)

    def next_above(self, addr: int) -> int | None:
        """Start of the first arena range at or above ``addr``."""
        return min((lo for lo, _ in self.arena if lo >= addr), default=None)


@dataclass(slots=True)
class FileModel:
    """A file a ``file`` step made (version 2)."""

    name: str
    fs: str                      # disk, tmpfs, memfd
    size: int
    peak: int                    # the largest it has been (counts against FILES_TOTAL)
    cached: bool = True          # disk: every page in the page cache since its creation
    unlinked: bool = False


class Gen:
    """The state of one generation: the random source, the steps so far and the model."""

    def __init__(self, seed: int, cls: str, hugetlb: bool = True) -> None:
        self.rng = random.Random(f"pagewalk-fuzz:{seed}:{cls}")
        self.seed = seed
        self.hugetlb = hugetlb       # False: no hugetlb mapping, no hugetlb pool knob
        classes = CLASSES if hugetlb else NO_HUGETLB_CLASSES
        self.cls = self.pick(classes, [CLASS_DRAW[c] for c in classes]) if cls == ALL else cls
        self.steps: list[Doc] = []
        self.procs: dict[str, ProcModel] = {"main": ProcModel("main")}
        self.counters: dict[str, int] = {}
        self.forks = 0
        self.knobs: dict[str, str] = registry.defaults()
        self.writes: list[tuple[str, str, int, int]] = []   # process, mapping, offset, length
        self.mapped = 0          # dense anonymous bytes mapped by all processes (memory bound)
        self.files: dict[str, FileModel] = {}
        self.limit = 0           # version 3: the memory cgroup's limit, bytes (0: none)
        self.swap = 0            # version 3: the swap file's size, bytes (0: none)

    # -- random helpers --------------------------------------------------------------------
    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def pick(self, options: Sequence[T], weights: Sequence[float] | None = None) -> T:
        return self.rng.choices(options, weights=weights)[0]

    def weighted(self, table: Mapping[str, float]) -> str:
        keys = list(table)
        return self.pick(keys, [table[k] for k in keys])

    def counter(self, prefix: str) -> str:
        self.counters[prefix] = self.counters.get(prefix, 0) + 1
        return f"{prefix}{self.counters[prefix]}"

    # -- processes and mappings --------------------------------------------------------------
    def pick_proc(self, with_maps: bool = False) -> ProcModel | None:
        procs = [p for p in self.procs.values() if p.maps or not with_maps]
        if not procs:
            return None
        main = self.procs.get("main")
        weights = [(1.0 if self.cls == "processes" else 3.0) if p is main else 1.5
                   for p in procs]
        return self.pick(procs, weights)

    def pick_map(self, proc: ProcModel, prefer_file: bool = False) -> MapModel:
        """A mapping of ``proc``, the recent ones and the arena's more often (the steps
        pile up on a few VMAs, where splits, merges and COW meet); a file mapping more
        often in the files class or with ``prefer_file``."""
        maps = list(proc.maps.values())
        if ((prefer_file or self.cls == "files") and any(m.file for m in maps)
                and self.chance(0.6)):
            maps = [m for m in maps if m.file]
        weights = [(position + 1) ** 1.5 * (2.0 if m.start is not None else 1.0)
                   for position, m in enumerate(maps)]
        return self.pick(maps, weights)

    def forget(self, proc: ProcModel, start: int, end: int) -> None:
        """A munmap of [start, end) known by address: names it covers are gone."""
        proc.vacate(start, end)
        for name, m in list(proc.maps.items()):
            if m.start is not None and start <= m.start and m.start + m.length <= end:
                del proc.maps[name]

    def pool(self, size_kb: int) -> int:
        return int(self.knobs[f"{registry.HUGEPAGES}/hugepages-{size_kb}kB/nr_hugepages"])

    # -- files (version 2) -------------------------------------------------------------------
    def read_ahead_kb(self) -> int:
        return int(self.knobs[registry.READ_AHEAD_KB])

    def file_total(self) -> int:
        return sum(f.peak for f in self.files.values())

    def uncached_read(self, file: str, ra: int, hugepage: bool) -> bool:
        """Would populating a mapping of ``file`` (opened with read_ahead_kb ``ra``) read
        an uncached disk file with readahead? do_sync_mmap_readahead reads nothing
        around the page with ra_pages 0, but a VM_HUGEPAGE VMA reads ahead regardless."""
        f = self.files[file]
        return f.fs == "disk" and not f.cached and (ra != 0 or hugepage)

    def populate_unsafe(self, proc: ProcModel) -> bool:
        """Might a populating step of ``proc`` (the oracle README: timing dependent on an
        uncached disk file) reach such a file? Any of its file mappings counts, a range
        may cross into one."""
        return any(self.uncached_read(file, ra, proc.hugepage) for file, ra in proc.file_maps)

    def pick_file(self) -> FileModel | None:
        """A file of the scenario, the recent ones more often."""
        files = list(self.files.values())
        if not files:
            return None
        return self.pick(files, [(i + 1) ** 1.5 for i in range(len(files))])


# -- sizes -------------------------------------------------------------------------------------

def _align_up(value: int, align: int) -> int:
    return -(-value // align) * align


def _anon_length(gen: Gen) -> int:
    rng = gen.rng
    if gen.cls == "pressure":
        return _pressure_length(gen)
    shape = gen.pick(("pages", "2m", "mib", "odd", "bytes", "zero", "sparse"),
                     (25, 20, 20, 15, 10, 2, 3) if gen.cls != "thp" else (10, 35, 20, 20, 10, 2, 3))
    if shape == "pages":
        return rng.randint(1, 64) * PAGE
    if shape == "2m":
        return rng.randint(1, 16) * HUGE_2M
    if shape == "mib":
        return rng.randint(1, 32) * MiB
    if shape == "odd":
        return rng.randint(1, 16) * MiB + rng.randint(1, 511) * PAGE
    if shape == "bytes":
        return rng.randint(0, 8 * MiB // PAGE) * PAGE + rng.randint(1, PAGE - 1)
    if shape == "zero":
        return 0
    return rng.choice((256 * MiB, 512 * MiB, 1 * GiB))


def _pressure_length(gen: Gen) -> int:
    """Version 3: a quarter of the limit to twice it, some pages, or a 2 MiB multiple."""
    rng = gen.rng
    limit = gen.limit or 64 * MiB
    shape = gen.pick(("limit", "pages", "2m"), (6, 2, 2))
    if shape == "pages":
        return rng.randint(1, 256) * PAGE
    if shape == "2m":
        return rng.randint(1, max(1, limit // HUGE_2M)) * HUGE_2M
    return rng.randint(max(1, limit // MiB // 4), 2 * limit // MiB) * MiB


def _huge_length(gen: Gen, page: int) -> int:
    rng = gen.rng
    count = rng.randint(1, 4) if page == HUGE_2M else rng.randint(1, 2)
    if gen.chance(0.15):      # not a multiple of the huge page size: the kernel rounds up
        return count * page - rng.choice((PAGE, MiB))
    return count * page


def _prot(gen: Gen) -> str:
    return gen.pick(PROTS, PROT_WEIGHTS)


# -- ranges ------------------------------------------------------------------------------------

RANGE_MODES = ("whole", "head", "tail", "middle", "cross", "unaligned", "zero")


def _range(gen: Gen, proc: ProcModel, m: MapModel, weights: Sequence[float]) -> Doc:
    """``region``/``offset``/``length`` over ``m``: whole, a part, across its end into the
    next VMA or a hole, unaligned, or empty."""
    rng = gen.rng
    grain = m.page if m.page != GiB or gen.chance(0.5) else HUGE_2M
    if m.page != PAGE and gen.chance(0.1):
        grain = PAGE                       # inside a huge page: the kernel's EINVAL cases
    units = max(1, m.length // grain)
    mode = gen.pick(RANGE_MODES, weights)
    fields: Doc = {"region": m.name}
    if mode == "whole":
        if gen.chance(0.2):
            fields["offset"] = 0
    elif mode == "head":
        fields["length"] = rng.randint(1, units) * grain
    elif mode == "tail":
        fields["offset"] = rng.randint(0, units - 1) * grain
    elif mode == "middle":
        first = rng.randint(0, units - 1)
        fields["offset"] = first * grain
        fields["length"] = rng.randint(1, max(1, units - first)) * grain
    elif mode == "cross":
        offset = rng.randint(0, units - 1) * grain
        fields["offset"] = offset
        fields["length"] = m.length - offset + _reach(gen, proc, m)
    elif mode == "unaligned":
        fields["offset"] = rng.randint(0, units - 1) * grain + rng.choice((1, 512, PAGE - 1))
        if gen.chance(0.5):
            fields["length"] = rng.randint(1, 4) * PAGE
    else:
        fields["offset"] = rng.randint(0, units - 1) * grain
        fields["length"] = 0
    if "length" not in fields and fields.get("offset", 0) >= m.region_length:
        fields["length"] = grain           # past the runner's end: reach there explicitly
    return fields


def _reach(gen: Gen, proc: ProcModel, m: MapModel) -> int:
    """How far past the end of ``m`` a crossing range goes: into the next arena VMA (or
    over it, into what follows), else some pages or huge pages."""
    end = m.end
    nxt = proc.next_above(end) if end is not None else None
    if end is not None and nxt is not None and nxt - end <= 64 * MiB:
        over = [hi for lo, hi in proc.arena if lo == nxt]
        span = nxt - end + ((over[0] - nxt) if over else PAGE)
        return gen.pick((nxt - end + PAGE, span, max(PAGE, span // 2 // PAGE * PAGE)))
    return gen.pick((PAGE, 16 * PAGE, HUGE_2M, 4 * MiB))


# -- step makers ------------------------------------------------------------------------------

Maker = Callable[[Gen], Doc | None]


def _flags(kind: str, *extra: str) -> list[str]:
    return [kind, "anonymous", *extra]


def _mmap_anon(gen: Gen) -> Doc | None:
    """mmap of private or shared anonymous memory, anywhere (a hint sometimes)."""
    proc = gen.pick_proc()
    if proc is None:
        return None
    length = _anon_length(gen)
    # pressure: shmem under a limit is a known gap (docs/differences.md), seldom drawn
    kind = "shared" if gen.chance(0.08 if gen.cls == "pressure" else 0.25) else "private"
    sparse = length >= SPARSE_MIN
    if not sparse and gen.mapped + length > MAPPED_MAX:
        length = min(length, 4 * MiB)
    fields: Doc = {"name": gen.counter("m"), "length": length, "prot": _prot(gen)}
    extra = [flag for flag, p in (("populate", 0.12), ("noreserve", 0.15)) if gen.chance(p)]
    if sparse:
        extra = [f for f in extra if f != "populate"]
    if gen.chance(0.03):
        fields["flags"] = ["anonymous", *extra]        # neither private nor shared: EINVAL
    elif kind == "private" and not extra and gen.chance(0.3):
        pass                                           # flags omitted: private, anonymous
    else:
        fields["flags"] = _flags(kind, *extra)
    if gen.chance(0.15):
        fields["addr"] = gen.pick((ARENA + 64 * GiB, ARENA + 64 * GiB + 5 * PAGE,
                                   0x10000, ARENA + 128 * GiB + HUGE_2M))
    if gen.chance(0.1):
        del fields["prot"]                             # the default, rw
    _record_map(gen, proc, fields, MapModel(fields["name"], _align_up(length, PAGE), kind,
                                            PAGE, sparse=sparse))
    return {"mmap": fields}


def _record_map(gen: Gen, proc: ProcModel, fields: Doc, m: MapModel) -> None:
    if proc.name != "main":
        fields["process"] = proc.name
    if m.length == 0:
        return                                         # EINVAL: nothing to refer to later
    if m.file is not None:
        proc.file_maps.add((m.file, m.ra))
    proc.maps[m.name] = m
    if m.kind != "hugetlb" and not m.sparse:
        gen.mapped += m.length


def _mmap_fixed(gen: Gen) -> Doc | None:
    """MAP_FIXED (or MAP_FIXED_NOREPLACE) mappings of mixed kinds in the arena: adjacent to
    one another, with holes, or over an existing one."""
    proc = gen.pick_proc()
    if proc is None:
        return None
    rng = gen.rng
    pool = gen.pool(2048) + int(gen.knobs[f"{registry.HUGEPAGES}/hugepages-2048kB/"
                                          "nr_overcommit_hugepages"])
    kind = gen.pick(("private", "shared", "hugetlb"),
                    (5, 2, 0 if gen.cls == "basic" or not gen.hugetlb else
                     (2 if pool else 0.4)))
    page = HUGE_2M if kind == "hugetlb" else PAGE
    if kind == "hugetlb":
        length = _huge_length(gen, HUGE_2M)
    else:
        length = gen.pick((rng.randint(1, 512) * PAGE, rng.randint(1, 4) * HUGE_2M,
                           rng.randint(1, 8) * MiB + rng.randint(0, 255) * PAGE))
    addr = _arena_addr(gen, proc, _align_up(length, page))
    if kind == "hugetlb" and gen.chance(0.85):
        addr = _align_up(addr, HUGE_2M)
    mode = gen.pick(("fixed", "fixed_noreplace", "both"), (75, 20, 5))
    extra = {"fixed": ["fixed"], "fixed_noreplace": ["fixed_noreplace"],
             "both": ["fixed", "fixed_noreplace"]}[mode]
    extra += [flag for flag, p in (("populate", 0.1), ("noreserve", 0.1)) if gen.chance(p)]
    flags = ["private" if kind == "hugetlb" and gen.chance(0.6) else
             ("shared" if kind != "private" else "private"), "anonymous", *extra]
    if kind == "hugetlb":
        flags.insert(2, "hugetlb")
    fields: Doc = {"name": gen.counter("m"), "length": length, "prot": _prot(gen),
                   "flags": flags, "addr": addr}
    if kind == "hugetlb" and gen.chance(0.3):
        fields["page_size"] = HUGE_2M
    m = MapModel(fields["name"], _align_up(length, page), kind, page, start=addr)
    _record_map(gen, proc, fields, m)
    if length and (mode == "fixed" or addr % page == 0):
        proc.occupy(addr, addr + m.length)
    return {"mmap": fields}


def _arena_addr(gen: Gen, proc: ProcModel, length: int) -> int:
    rng = gen.rng
    if not proc.arena or gen.chance(0.1):
        return ARENA + gen.pick((0, HUGE_2M, rng.randint(1, 511) * PAGE, 8 * MiB))
    lo, hi = gen.pick(proc.arena)
    where = gen.pick(("after", "before", "gap", "over"), (40, 20, 20, 20))
    if where == "after":
        return hi
    if where == "before" and lo - length >= ARENA:
        return lo - length
    if where == "over":
        return lo + rng.randint(0, max(0, (hi - lo) // PAGE - 1)) * PAGE
    top = max(h for _, h in proc.arena)
    return top + gen.pick((PAGE, 16 * PAGE, HUGE_2M, HUGE_2M - PAGE))


def _mmap_hugetlb(gen: Gen) -> Doc | None:
    """mmap of hugetlb memory: 2 MiB (default or named) or 1 GiB pages, private or shared,
    populated or not, sometimes more than the pool holds; 1 GiB ones sometimes fixed."""
    proc = gen.pick_proc()
    if proc is None:
        return None
    one_gib = gen.chance(0.3 if gen.pool(1048576) else 0.1)
    page = GiB if one_gib else HUGE_2M
    length = _huge_length(gen, page)
    extra = [flag for flag, p in (("populate", 0.2), ("noreserve", 0.2)) if gen.chance(p)]
    kind = "shared" if gen.chance(0.4) else "private"
    fields: Doc = {"name": gen.counter("m"), "length": length, "prot": _prot(gen) if
                   gen.chance(0.3) else "rw", "flags": _flags(kind, "hugetlb", *extra)}
    start = None
    if one_gib:
        fields["page_size"] = GiB
        if gen.chance(0.3):
            start = ARENA_1G + gen.pick((0, GiB, HUGE_2M))
            fields["flags"].append("fixed")
            fields["addr"] = start
    elif gen.chance(0.4):
        fields["page_size"] = HUGE_2M
    m = MapModel(fields["name"], _align_up(length, page), "hugetlb", page, start=start)
    _record_map(gen, proc, fields, m)
    return {"mmap": fields}


# range-mode weights (whole, head, tail, middle, cross, unaligned, zero) per step
MUNMAP_RANGES = (35, 15, 15, 15, 10, 5, 5)
MPROTECT_RANGES = (30, 15, 15, 20, 12, 5, 3)
MADVISE_RANGES = (35, 15, 15, 15, 12, 5, 3)
TOUCH_RANGES = (50, 15, 15, 10, 10, 0, 0)
MLOCK_RANGES = (40, 15, 15, 15, 10, 5, 0)
MREMAP_RANGES = (0, 40, 10, 30, 10, 10, 0)
MSYNC_RANGES = (40, 15, 10, 15, 8, 8, 4)


def _ranged(gen: Gen, kind: str, weights: Sequence[float]) -> tuple[ProcModel, MapModel,
                                                                       Doc] | None:
    proc = gen.pick_proc(with_maps=True)
    if proc is None:
        return None
    m = gen.pick_map(proc, prefer_file=kind == "msync")
    fields = _range(gen, proc, m, weights)
    if proc.name != "main":
        fields["process"] = proc.name
    return proc, m, fields


def _munmap(gen: Gen) -> Doc | None:
    """munmap of a whole mapping, a part of it (splitting it), or across its neighbours."""
    got = _ranged(gen, "munmap", MUNMAP_RANGES)
    if got is None:
        return None
    proc, m, fields = got
    offset = int(fields.get("offset", 0))
    length = fields.get("length")
    if offset == 0 and (length is None or length >= m.length):
        del proc.maps[m.name]          # the runners forget a name munmap covered whole
    if m.start is not None and offset % PAGE == 0 and length != 0:
        end = m.start + (m.length if length is None else offset + _align_up(length, m.page))
        gen.forget(proc, m.start + offset, end)
    return {"munmap": fields}


def _mprotect(gen: Gen) -> Doc | None:
    got = _ranged(gen, "mprotect", MPROTECT_RANGES)
    if got is None:
        return None
    proc, _, fields = got
    fields["prot"] = _prot(gen)
    if proc.locked and "w" in fields["prot"] and gen.populate_unsafe(proc):
        # mprotect_fixup populates a private VM_LOCKED VMA that becomes writable
        fields["prot"] = gen.pick(("r", "none", "rx", "x"))
    return {"mprotect": fields}


def _madvise(gen: Gen) -> Doc | None:
    got = _ranged(gen, "madvise", MADVISE_RANGES)
    if got is None:
        return None
    proc, _, fields = got
    if gen.cls == "files" or (gen.cls == "mixed" and gen.chance(0.2)):
        table = ADVICE_WEIGHTS["files"]
    elif gen.cls == "pressure":
        table = ADVICE_WEIGHTS["pressure"]
    else:
        table = ADVICE_WEIGHTS["thp" if gen.cls in ("thp", "mixed", "knobs") else "basic"]
    advice = gen.weighted(table)
    if advice in POPULATE_ADVICE and gen.populate_unsafe(proc):
        advice = gen.weighted({a: w for a, w in table.items() if a not in POPULATE_ADVICE})
    if advice in UNCACHE_ADVICE:         # the range may reach any file mapping of proc
        for file, _ in proc.file_maps:
            gen.files[file].cached = False
    proc.hugepage |= advice == "hugepage"
    fields["advice"] = advice
    return {"madvise": fields}


def _touch(gen: Gen) -> Doc | None:
    """Reads or writes at a stride over a range; sparse mappings only at large strides."""
    heap_proc = gen.pick_proc()
    if heap_proc is not None and heap_proc.brk_low > INITIAL_BRK and gen.chance(0.15):
        heap = _heap_range(gen, heap_proc, destructive=False)   # version 2: [heap]
        if heap is not None:
            if heap_proc.name != "main":
                heap["process"] = heap_proc.name
            return {"touch": heap}
    got = _ranged(gen, "touch", TOUCH_RANGES)
    if got is None:
        return None
    _, m, fields = got
    stride = gen.pick((PAGE, 2 * PAGE, 16 * PAGE, 64 * KiB, MiB, HUGE_2M, PAGE + 64, 3 * PAGE),
                      (40, 6, 6, 6, 6, 12, 3, 3))
    if m.page == GiB and gen.chance(0.5):
        stride = GiB
    offset = int(fields.get("offset", 0))
    span = fields.get("length", max(m.length - offset, 0))
    if m.sparse:
        stride = max(stride, _align_up(max(span // SPARSE_TOUCHES, HUGE_2M), HUGE_2M))
    if stride != PAGE:
        fields["stride"] = stride
    if gen.chance(0.4):
        fields["access"] = "read"
    elif gen.chance(0.2):
        fields["access"] = "write"
    return {"touch": fields}


DATA_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_ "


def _data_offset(gen: Gen, m: MapModel) -> int:
    rng = gen.rng
    pages = max(1, m.length // PAGE)
    return gen.pick((0, rng.randint(0, pages - 1) * PAGE + rng.randint(0, 200),
                     rng.randint(1, pages) * PAGE - rng.randint(1, 20),
                     m.length + rng.choice((0, PAGE, HUGE_2M))), (30, 40, 20, 10))


def _write(gen: Gen) -> Doc | None:
    """Bytes stored at an offset (across a page boundary, or past the end, sometimes)."""
    proc = gen.pick_proc(with_maps=True)
    if proc is None:
        return None
    m = gen.pick_map(proc)
    offset = _data_offset(gen, m)
    data = "".join(gen.rng.choice(DATA_ALPHABET) for _ in range(gen.rng.randint(1, 40)))
    fields: Doc = {"region": m.name, "offset": offset, "data": data}
    if offset == 0 and gen.chance(0.5):
        del fields["offset"]
    if proc.name != "main":
        fields["process"] = proc.name
    gen.writes.append((proc.name, m.name, offset, len(data)))
    return {"write": fields}


def _read(gen: Gen) -> Doc | None:
    """Bytes loaded, often where a write stored some (discover.py fills ``expect``)."""
    proc = gen.pick_proc(with_maps=True)
    if proc is None:
        return None
    mine = [w for w in gen.writes if w[1] in proc.maps]
    if mine and gen.chance(0.6):
        _, name, offset, length = gen.pick(mine)
        offset += gen.rng.randint(0, length - 1) if gen.chance(0.3) else 0
        length = gen.rng.randint(1, length + 8)
    else:
        m = gen.pick_map(proc)
        name, offset, length = m.name, _data_offset(gen, m), gen.rng.randint(1, 64)
    fields: Doc = {"region": name, "offset": offset, "length": length}
    if proc.name != "main":
        fields["process"] = proc.name
    return {"read": fields}


def _fork(gen: Gen) -> Doc | None:
    if len(gen.procs) >= MAX_LIVE_PROCESSES or gen.forks >= MAX_FORKS:
        return None
    parent = gen.pick_proc()
    if parent is None:
        return None
    name = gen.counter("c")
    gen.procs[name] = parent.child(name)
    gen.forks += 1
    fields: Doc = {"name": name}
    if parent.name != "main":
        fields["process"] = parent.name
    return {"fork": fields}


def _exit(gen: Gen) -> Doc | None:
    """A process exits (a child mostly; main sometimes, its children going on)."""
    if len(gen.procs) < 2:
        return None
    names = list(gen.procs)
    name = gen.pick(names, [1.0 if n == "main" else 4.0 for n in names])
    del gen.procs[name]
    return {"exit": {"process": name}}


def _set(gen: Gen) -> Doc | None:
    """One to three knobs written mid-run (pools grown and shrunk, THP modes changed)."""
    knobs: Doc = {}
    for _ in range(gen.rng.randint(1, 3)):
        path = _knob_path(gen)
        knobs.pop(path, None)          # picked again: written last, as its value was checked
        knobs[path] = _knob_value(gen, path)
        gen.knobs[registry.resolve(path)] = str(knobs[path])
    return {"set": knobs}


def _measure(gen: Gen) -> Doc | None:
    return {"measure": gen.counter("at-")}


# -- knobs ---------------------------------------------------------------------------------

KNOB_GROUPS = ("thp", "mthp", "khugepaged", "hugetlb", "vm", "block")
KNOB_GROUP_WEIGHTS: Mapping[str, Sequence[float]] = MappingProxyType({
    "basic": (6, 1, 1, 0, 1, 0), "thp": (6, 3, 2, 0.5, 0.5, 0),
    "hugetlb": (1, 0.5, 0.5, 8, 1, 0), "processes": (4, 1, 1, 1, 1, 0),
    "knobs": (4, 3, 3, 3, 2, 1), "mixed": (4, 2, 1, 3, 1, 0.5), "files": (1, 0.3, 0, 0, 0.2, 6),
    "pressure": (6, 0.5, 0, 0, 1, 0),
})


def _knob_group(path: str) -> str:
    if path.startswith("/sys/block/"):
        return "block"                 # version 2: read_ahead_kb
    if path.startswith(registry.KHUGEPAGED):
        return "khugepaged"
    if "/transparent_hugepage/hugepages-" in path:
        return "mthp"
    if path.startswith(registry.THP):
        return "thp"
    if "hugepages" in path:
        return "hugetlb"
    return "vm"


#: knobs the kernel refuses every write to: gigantic pages have no surplus
#: (nr_overcommit_hugepages_store returns EINVAL for hstate_is_gigantic)
UNWRITABLE = frozenset({f"{registry.HUGEPAGES}/hugepages-1048576kB/nr_overcommit_hugepages"})
KNOB_PATHS: tuple[str, ...] = tuple(spec.path for spec in registry.KNOB_SPECS
                                    if spec.path not in UNWRITABLE)


def _knob_path(gen: Gen) -> str:
    weights = KNOB_GROUP_WEIGHTS[gen.cls]
    if not gen.hugetlb:
        weights = [0 if g == "hugetlb" else w for g, w in zip(KNOB_GROUPS, weights, strict=True)]
    group = gen.pick(KNOB_GROUPS, weights)
    paths = [p for p in KNOB_PATHS if _knob_group(p) == group]
    if group == "thp":
        return gen.pick(paths, [4 if p.endswith("/enabled") else 1 for p in paths])
    if group == "hugetlb":
        return gen.pick(paths, [4 if p.endswith("nr_hugepages") else 1 for p in paths])
    return gen.pick(paths)


def _knob_value(gen: Gen, path: str) -> str | int:
    """A value the kernel's store handler accepts, within this machine's means."""
    rng = gen.rng
    spec = registry.knob_spec(path)
    canonical = registry.resolve(path)
    if canonical.endswith("/nr_hugepages"):
        top = MAX_POOL_1G if "1048576kB" in canonical else MAX_POOL_2M
        now = int(gen.knobs[canonical])
        return max(0, min(top, now + rng.randint(-3, 3) if now and gen.chance(0.6)
                          else rng.randint(0, top // 2 if top > 2 else top)))
    if canonical.endswith("/nr_overcommit_hugepages"):
        return rng.randint(0, 16)
    if canonical.endswith("/overcommit_ratio"):
        return rng.choice((50, 75, 100))              # never below the boot value
    if "/max_ptes_" in canonical:
        return rng.choice((0, 1, 64, 255, 256, 510, 511, rng.randint(0, 511)))
    if canonical.endswith(("_millisecs", "/pages_to_scan")):
        return rng.choice((1, 100, 4096, 10000))
    if canonical == registry.READ_AHEAD_KB:
        return gen.pick(READ_AHEAD_VALUES, (3, 1, 2, 2))
    kind = spec.kind
    if isinstance(kind, registry.Choice):
        word = rng.choice(kind.options)
        # refused because of another knob (shmem force vs inherit: EINVAL): the boot value
        return spec.default if registry.cross_knob_refusal(gen.knobs, canonical, word) else word
    return rng.randint(kind.low, min(kind.high, 2))


def _initial_sysfs(gen: Gen) -> Doc:
    """Boot knobs for the class: THP modes, hugetlb pools, a few others."""
    sysfs: Doc = {}
    cls = gen.cls
    thp = f"{registry.THP}/enabled"
    if cls in ("thp",) or gen.chance(0.6):
        sysfs[thp] = gen.pick(("always", "madvise", "never"),
                              (5, 4, 0.5) if cls == "thp" else (2, 2, 3))
    if gen.hugetlb and (cls in ("hugetlb",) or (cls in ("mixed", "knobs", "processes", "files")
                                               and gen.chance(0.4))):
        path = gen.pick((f"{registry.VM}/nr_hugepages",
                         f"{registry.HUGEPAGES}/hugepages-2048kB/nr_hugepages"))
        sysfs[path] = gen.rng.randint(0, 32)
        if gen.chance(0.3 if cls == "hugetlb" else 0.1):
            sysfs[f"{registry.HUGEPAGES}/hugepages-1048576kB/nr_hugepages"] = \
                gen.rng.randint(1, MAX_POOL_1G)
    if cls == "files" and gen.chance(0.4):
        sysfs[registry.READ_AHEAD_KB] = gen.pick(READ_AHEAD_VALUES, (3, 1, 2, 2))
    extra = {"basic": 0, "thp": 2, "hugetlb": 1, "processes": 1, "knobs": 4, "mixed": 2,
             "files": 1, "pressure": 0}[cls]
    for _ in range(gen.rng.randint(0, extra)):
        path = _knob_path(gen)
        if registry.resolve(path) not in {registry.resolve(p) for p in sysfs}:
            sysfs[path] = _knob_value(gen, path)
            gen.knobs[registry.resolve(path)] = str(sysfs[path])   # seen by the next pick
    for path, value in sysfs.items():
        gen.knobs[registry.resolve(path)] = str(value)
    return sysfs


# -- version 3: memory pressure ---------------------------------------------------------------

def _pressure_system(gen: Gen) -> Doc:
    """A memory cgroup's limit with or without swap, or swap alone (MADV_PAGEOUT's)."""
    system: Doc = {}
    gen.swap = gen.pick(SWAPS_MIB) * MiB
    if not gen.swap or gen.chance(0.85):
        gen.limit = gen.pick(LIMITS_MIB) * MiB
        system["memory_limit"] = gen.limit
    if gen.swap:
        system["swap"] = gen.swap
    return system


# -- version 2: the program break, mremap, memory locking -------------------------------------

def _brk(gen: Gen) -> Doc | None:
    """brk(break + delta): grows (sometimes by an unaligned amount), shrinks (never below
    the initial break, by the lowest the break can be), or 0."""
    proc = gen.pick_proc()
    if proc is None:
        return None
    rng = gen.rng
    shrink_room = proc.brk_low - INITIAL_BRK
    grow_room = INITIAL_BRK + BRK_MAX - proc.brk_high
    choice = gen.pick(("grow", "shrink", "zero", "below"), (50, 35 if shrink_room else 0, 5, 3))
    if choice == "grow" and grow_room >= PAGE:
        delta = gen.pick((rng.randint(1, 64) * PAGE, rng.randint(1, 8) * HUGE_2M,
                          rng.randint(1, PAGE * 4), rng.randint(1, 16) * MiB + 100))
        delta = min(delta, grow_room)
        proc.brk_high += delta
        gen.mapped += _align_up(delta, PAGE)
    elif choice == "shrink" and shrink_room:
        delta = -gen.pick((shrink_room, rng.randint(1, shrink_room),
                           min(shrink_room, rng.randint(1, 64) * PAGE)))
        proc.brk_low += delta
        proc.brk_high += delta
    elif choice == "below":
        delta = -(proc.brk_high - START_BRK + gen.pick((PAGE, 8 * MiB)))   # ENOMEM, stays
    else:
        delta = 0
    fields: Doc = {"delta": delta}
    if proc.name != "main":
        fields["process"] = proc.name
    return {"brk": fields}


def _heap_range(gen: Gen, proc: ProcModel, destructive: bool) -> Doc | None:
    """A range of [heap]: anywhere for touch and lock steps; above its first part (the
    program's own data) for a step that may unmap, discard or move."""
    rng = gen.rng
    low = HEAP_KEEP if destructive else 0
    top = proc.brk_low - START_BRK
    if top <= low:
        return None
    offset = low + rng.randint(0, (top - low) // PAGE - 1) * PAGE if top - low >= PAGE else low
    fields: Doc = {"region": HEAP, "offset": offset}
    if gen.chance(0.6):
        fields["length"] = rng.randint(1, max(1, (top - offset) // PAGE)) * PAGE
    elif destructive:
        fields["length"] = top - offset        # the break may be higher: stay below it
    return fields


def _mlock_range(gen: Gen, destructive: bool = False) -> tuple[ProcModel, Doc] | None:
    """A range for mlock/munlock/mremap: a mapping's, or [heap]'s sometimes."""
    proc = gen.pick_proc()
    if proc is None:
        return None
    if proc.maps and not (gen.chance(0.15) and proc.brk_low > INITIAL_BRK):
        m = gen.pick_map(proc)
        fields = _range(gen, proc, m, MLOCK_RANGES)
        if m.sparse:            # locking populates: keep it to a few MiB of a sparse one
            fields["length"] = min(int(fields.get("length", 4 * MiB)), 4 * MiB)
    else:
        got = _heap_range(gen, proc, destructive)
        if got is None:
            return None
        fields = got
    if proc.name != "main":
        fields["process"] = proc.name
    return proc, fields


def _mlock(gen: Gen) -> Doc | None:
    got = _mlock_range(gen)
    if got is None:
        return None
    proc, fields = got
    if gen.chance(0.3) or gen.populate_unsafe(proc):     # MLOCK_ONFAULT populates nothing
        fields["flags"] = ["onfault"]
    else:
        proc.locked = True
    return {"mlock": fields}


def _munlock(gen: Gen) -> Doc | None:
    got = _mlock_range(gen)
    return None if got is None else {"munlock": got[1]}


def _mlockall(gen: Gen) -> Doc | None:
    """mlockall: MCL_CURRENT populates everything (not with sparse mappings around);
    MCL_FUTURE always with MCL_ONFAULT (a later sparse mapping is not populated)."""
    proc = gen.pick_proc()
    if proc is None:
        return None
    sparse = any(m.sparse for m in proc.maps.values())
    options = [["future", "onfault"], ["current", "future", "onfault"], ["current", "onfault"]]
    if not sparse and not gen.populate_unsafe(proc):
        options += [["current"], ["current"]]
    fields: Doc = {"flags": gen.pick(options)}
    proc.locked |= "onfault" not in fields["flags"]
    if proc.name != "main":
        fields["process"] = proc.name
    return {"mlockall": fields}


def _munlockall(gen: Gen) -> Doc | None:
    proc = gen.pick_proc()
    if proc is None:
        return None
    return {"munlockall": {"process": proc.name} if proc.name != "main" else {}}


def _mremap(gen: Gen) -> Doc | None:
    """mremap of a mapping (or the heap above its first part): shrink, grow in place or
    moving, MREMAP_FIXED into the arena (2 MiB-aligned or not), MREMAP_DONTUNMAP."""
    proc = gen.pick_proc(with_maps=True)
    if proc is None:
        return None
    rng = gen.rng
    m = gen.pick_map(proc)
    fields: Doc = {"region": m.name}
    # Linux 6.18 leaks hugetlb reservations (HugePages_Rsvd, for good) when part of a
    # private hugetlb VMA moves: a live run would spoil the machine, so hugetlb mappings
    # are only remapped whole (reproducer: the issue note of this step).
    if gen.chance(0.3) and m.kind != "hugetlb":
        fields.update(_range(gen, proc, m, MREMAP_RANGES))
    offset = int(fields.get("offset", 0))
    old = int(fields.get("length", max(m.length - offset, 0)))
    grain = m.page if m.page != GiB else HUGE_2M
    mode = gen.pick(("shrink", "grow", "move", "fixed", "dontunmap"), (15, 25, 25, 25, 10))
    if m.sparse:
        mode = gen.pick(("shrink", "fixed"))
    if m.kind == "hugetlb" and mode in ("move", "dontunmap"):
        mode = "grow"                  # EINVAL: hugetlb memory does not grow
    if mode == "shrink":
        new = max(grain, _align_up(old // 2, grain)) if gen.chance(0.8) else old
    elif mode == "dontunmap":
        new = old
    else:
        new = old + gen.pick((grain, rng.randint(1, 8) * grain, HUGE_2M, rng.randint(1, 16) * MiB))
        new = min(new, old + 32 * MiB)
        if mode == "fixed" and (gen.chance(0.4) or m.kind == "hugetlb"):
            new = old                  # a whole hugetlb VMA moves without a leak
    if proc.locked and gen.populate_unsafe(proc):
        # mremap populates what it grows of a VM_LOCKED VMA, growth judged against the
        # old length given (the model's length may be stale): give it, grow nothing
        fields["length"], new = old, min(new, old)
    flags: list[str] = []
    if mode in ("move", "fixed", "dontunmap"):
        flags.append("maymove")
    if mode == "fixed":
        flags.append("fixed")
        addr = _arena_addr(gen, proc, _align_up(max(new, PAGE), HUGE_2M) + HUGE_2M)
        if gen.chance(0.4):
            addr += gen.pick((PAGE, 5 * PAGE, MiB))
        fields["addr"] = addr
    if mode == "dontunmap":
        flags.append("dontunmap")
        fields["name"] = gen.counter("r")
    fields["new_length"] = new
    if flags:
        fields["flags"] = flags
    if proc.name != "main":
        fields["process"] = proc.name
    gen.mapped += max(0, _align_up(new, PAGE) - old)
    if mode == "dontunmap":
        proc.maps[fields["name"]] = replace(m, name=fields["name"], start=None, sparse=False,
                                            length=_align_up(max(new, PAGE), m.page),
                                            region_length=_align_up(new, PAGE))
    elif mode == "fixed":
        if m.start is not None:
            proc.vacate(m.start + offset, m.start + offset + old)
        gen.forget(proc, fields["addr"], fields["addr"] + _align_up(max(new, PAGE), m.page))
        proc.occupy(fields["addr"], fields["addr"] + _align_up(max(new, PAGE), m.page))
        if m.name in proc.maps:
            proc.maps[m.name] = replace(m, length=_align_up(max(new, PAGE), m.page),
                                        start=fields["addr"])
        else:
            proc.maps[m.name] = m
    elif mode != "shrink" or offset:
        proc.maps[m.name] = replace(m, length=max(m.length, _align_up(new, m.page)), start=None)
    if mode != "dontunmap":     # the runner's length of the name, if the mremap succeeds
        now = proc.maps[m.name]
        proc.maps[m.name] = replace(now, region_length=min(now.region_length,
                                                           _align_up(new, PAGE)))
    return {"mremap": fields}


# -- version 2: files and the page cache ------------------------------------------------------

def _with_process(gen: Gen, fields: Doc) -> Doc:
    """``fields`` done by a live process (main mostly): a file step runs in a process too."""
    proc = gen.pick_proc()
    if proc is not None and proc.name != "main":
        fields["process"] = proc.name
    return fields


def _file_size(gen: Gen, cap: int) -> int:
    """A file size up to ``cap``: some pages, whole MiB or 2 MiB (PMD-sized folios in the
    page cache), unaligned (a partial last page), or empty."""
    rng = gen.rng
    size = gen.pick((rng.randint(1, 64) * PAGE, rng.randint(1, 16) * MiB,
                     rng.randint(1, 8) * HUGE_2M,
                     rng.randint(0, 4 * MiB // PAGE) * PAGE + rng.randint(1, PAGE - 1), 0),
                    (30, 25, 15, 20, 3))
    return min(size, cap)


def _file(gen: Gen) -> Doc | None:
    """A file on disk (ext4), tmpfs or a memfd; the scenario's files stay within
    FILES_TOTAL at their largest."""
    room = min(FILE_MAX, FILES_TOTAL - gen.file_total())
    if len(gen.files) >= MAX_FILES or room < PAGE:
        return None
    fs = gen.pick(("disk", "tmpfs", "memfd"), (5, 3, 3))
    size = _file_size(gen, room)
    fields: Doc = {"name": gen.counter("f"), "size": size}
    if fs != "disk" or gen.chance(0.5):
        fields["fs"] = fs                              # disk is the default
    gen.files[fields["name"]] = FileModel(fields["name"], fs, size, size)
    return {"file": _with_process(gen, fields)}


def _mmap_file(gen: Gen) -> Doc | None:
    """mmap of a file, private or shared: the whole file, a part at a page-aligned
    file_offset, past its end (SIGBUS there), an unaligned file_offset (EINVAL); with
    MAP_POPULATE only where populating reads no uncached disk file (the oracle's rule)."""
    f = gen.pick_file()
    proc = gen.pick_proc()
    if f is None or proc is None:
        return None
    rng = gen.rng
    pages = max(1, _align_up(f.size, PAGE) // PAGE)
    shape = gen.pick(("whole", "part", "beyond", "offset-beyond", "unaligned", "zero"),
                     (45, 25, 15, 5, 3, 2))
    offset = 0
    if shape == "whole":
        length = f.size if f.size and gen.chance(0.5) else pages * PAGE
    elif shape == "part":
        first = rng.randint(0, pages - 1)
        offset = first * PAGE
        length = rng.randint(1, pages - first) * PAGE
    elif shape == "beyond":
        offset = rng.randint(0, pages - 1) * PAGE if gen.chance(0.3) else 0
        length = pages * PAGE - offset + gen.pick((PAGE, rng.randint(2, 16) * PAGE, HUGE_2M))
    elif shape == "offset-beyond":
        offset = pages * PAGE + gen.pick((0, PAGE, MiB))
        length = rng.randint(1, 16) * PAGE
    elif shape == "unaligned":
        offset = rng.randint(0, pages - 1) * PAGE + gen.pick((1, 512, PAGE - 1))
        length = rng.randint(1, 16) * PAGE
    else:
        length = 0
    kind = "shared" if gen.chance(0.45) else "private"
    ra = gen.read_ahead_kb()
    extra = [flag for flag, p in (("populate", 0.15), ("noreserve", 0.05)) if gen.chance(p)]
    if "populate" in extra and gen.uncached_read(f.name, ra, False):
        extra.remove("populate")
    prot = gen.pick(("rw", "r", "none", "rx", "rwx", "w", "x", "wx"), (40, 25, 5, 5, 3, 3, 2, 2))
    fields: Doc = {"name": gen.counter("m"), "length": length, "prot": prot, "file": f.name}
    if offset or gen.chance(0.1):
        fields["file_offset"] = offset
    start = None
    if gen.chance(0.15):                               # beside the arena's other VMAs
        start = _arena_addr(gen, proc, _align_up(max(length, PAGE), PAGE))
        extra.append(gen.pick(("fixed", "fixed_noreplace"), (4, 1)))
        fields["addr"] = start
    elif gen.chance(0.05):
        fields["addr"] = gen.pick((ARENA + 96 * GiB, ARENA + 96 * GiB + 3 * PAGE))
    fields["flags"] = [kind, *extra] if not gen.chance(0.02) else extra  # neither: EINVAL
    if gen.chance(0.1) and prot == "rw":
        del fields["prot"]                             # the default, rw
    m = MapModel(fields["name"], _align_up(length, PAGE), kind, PAGE, start=start,
                 file=f.name, ra=ra)
    _record_map(gen, proc, fields, m)
    if start is not None and length and ("fixed" in extra or start % PAGE == 0):
        proc.occupy(start, start + m.length)
    return {"mmap": fields}


def _truncate(gen: Gen) -> Doc | None:
    """ftruncate: shrink (to 0, a page boundary, mid-page), grow (a hole: the file is no
    longer fully cached) or keep the size; at most FILE_MAX, FILES_TOTAL in all."""
    f = gen.pick_file()
    if f is None:
        return None
    rng = gen.rng
    top = min(FILE_MAX, FILES_TOTAL - gen.file_total() + f.peak)
    mode = gen.pick(("shrink", "grow", "same"), (45 if f.size else 0, 45, 10))
    if mode == "shrink":
        size = gen.pick((0, _align_up(f.size // 2, PAGE), rng.randint(0, f.size - 1),
                         f.size - min(f.size, PAGE)))
    elif mode == "grow":
        size = min(top, f.size + gen.pick((rng.randint(1, 16) * PAGE, rng.randint(1, 4) * MiB,
                                           rng.randint(1, PAGE - 1), HUGE_2M)))
    else:
        size = f.size
    if size > f.size:
        f.cached = False                               # the new range is a hole on disk
    f.size = size
    f.peak = max(f.peak, size)
    return {"truncate": _with_process(gen, {"file": f.name, "size": size})}


def _fadvise(gen: Gen) -> Doc | None:
    """POSIX_FADV_DONTNEED of a whole file: its unmapped clean pages leave the cache."""
    f = gen.pick_file()
    if f is None:
        return None
    f.cached = False
    return {"fadvise": _with_process(gen, {"file": f.name, "advice": "dontneed"})}


def _unlink(gen: Gen) -> Doc | None:
    """unlink of a disk or tmpfs file (a memfd has no name); now and then a second one,
    which the kernel answers with ENOENT."""
    files = [f for f in gen.files.values() if f.fs != "memfd"]
    if not files:
        return None
    f = gen.pick(files, [1.0 if f.unlinked else 3.0 for f in files])
    f.unlinked = True
    return {"unlink": _with_process(gen, {"file": f.name})}


MSYNC_FLAGS: tuple[tuple[str, ...] | None, ...] = (
    None, ("sync",), ("async",), ("invalidate",), ("sync", "invalidate"),
    ("async", "invalidate"), (), ("sync", "async"), ("sync", "async", "invalidate"))
MSYNC_FLAG_WEIGHTS = (15, 15, 12, 8, 8, 6, 3, 4, 2)   # the last two: MS_SYNC|MS_ASYNC, EINVAL


def _msync(gen: Gen) -> Doc | None:
    """msync of a file mapping mostly (any mapping sometimes, a hole is ENOMEM), with every
    flag combination: MS_SYNC with MS_ASYNC and an unaligned start are EINVAL, and
    MS_INVALIDATE of a locked VMA is EBUSY."""
    got = _ranged(gen, "msync", MSYNC_RANGES)
    if got is None:
        return None
    fields = got[2]
    flags = gen.pick(MSYNC_FLAGS, MSYNC_FLAG_WEIGHTS)
    if flags is not None:
        fields["flags"] = list(flags)
    return {"msync": fields}


# -- the table -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class StepKind:
    """A maker of one kind of step and its weight in each class."""

    name: str                      # the entry's name (several may make the same step key)
    step: str                      # the step's key in the scenario file
    make: Maker
    weights: Mapping[str, float]


def _w(basic: float, thp: float, hugetlb: float, processes: float, knobs: float,
       mixed: float, files: float = 0, pressure: float = 0) -> Mapping[str, float]:
    return MappingProxyType(dict(zip(CLASSES, (basic, thp, hugetlb, processes, knobs, mixed,
                                               files, pressure), strict=True)))


STEP_KINDS: tuple[StepKind, ...] = (
    StepKind("mmap-anon", "mmap", _mmap_anon, _w(3, 3, 1.5, 2, 2, 3, 1.5, 3)),
    StepKind("mmap-fixed", "mmap", _mmap_fixed, _w(3, 2, 2, 1.5, 1.5, 2, 1, 0.7)),
    StepKind("mmap-hugetlb", "mmap", _mmap_hugetlb, _w(0, 0.3, 4, 0.7, 0.7, 1.5, 0.4, 0.2)),
    StepKind("munmap", "munmap", _munmap, _w(2, 2, 2, 1, 1, 2, 1.5, 1)),
    StepKind("mprotect", "mprotect", _mprotect, _w(3, 2, 2, 1, 1, 2, 1, 0.5)),
    StepKind("madvise", "madvise", _madvise, _w(2, 5, 2, 2, 2, 3, 5, 3)),
    StepKind("touch", "touch", _touch, _w(8, 8, 7, 7, 6, 8, 8, 9)),
    StepKind("write", "write", _write, _w(2, 1, 1, 2, 1, 1, 2, 1.5)),
    StepKind("read", "read", _read, _w(2, 1, 1, 2, 1, 1, 2, 1.5)),
    StepKind("fork", "fork", _fork, _w(0.3, 0.5, 0.5, 4, 0.5, 1, 0.7, 1.5)),
    StepKind("exit", "exit", _exit, _w(0, 0, 0, 1.5, 0.2, 0.5, 0.3, 0.7)),
    StepKind("set", "set", _set, _w(0.2, 1.5, 1.5, 0.3, 6, 1.5, 1, 0.3)),
    StepKind("measure", "measure", _measure, _w(2, 2, 2, 2, 2, 2, 2, 3)),
    # version 2
    StepKind("brk", "brk", _brk, _w(1, 1, 0.3, 0.7, 0.3, 1, 0.3, 0.3)),
    StepKind("mremap", "mremap", _mremap, _w(1.5, 1.5, 1, 0.7, 0.5, 1.5, 1, 0.4)),
    StepKind("mlock", "mlock", _mlock, _w(1, 1, 0.7, 0.7, 0.3, 1, 1, 0.6)),
    StepKind("munlock", "munlock", _munlock, _w(0.5, 0.5, 0.3, 0.3, 0.2, 0.5, 0.5, 0.3)),
    StepKind("mlockall", "mlockall", _mlockall, _w(0.2, 0.2, 0.2, 0.3, 0.1, 0.3, 0.3, 0.1)),
    StepKind("munlockall", "munlockall", _munlockall, _w(0.2, 0.2, 0.2, 0.3, 0.1, 0.3, 0.3, 0.1)),
    # version 2 files: a few in mixed (and so in all), the files class's own
    StepKind("file", "file", _file, _w(0, 0, 0, 0, 0, 0.2, 1.2)),
    StepKind("mmap-file", "mmap", _mmap_file, _w(0, 0, 0, 0, 0, 0.4, 4)),
    StepKind("truncate", "truncate", _truncate, _w(0, 0, 0, 0, 0, 0.15, 1.2)),
    StepKind("fadvise", "fadvise", _fadvise, _w(0, 0, 0, 0, 0, 0.15, 1.2)),
    StepKind("msync", "msync", _msync, _w(0, 0, 0, 0, 0, 0.15, 1.5)),
    StepKind("unlink", "unlink", _unlink, _w(0, 0, 0, 0, 0, 0.1, 0.6)),
)
#: what a scenario of the class starts with (after its first mappings)
OPENING: Mapping[str, tuple[str, ...]] = MappingProxyType({"processes": ("fork",)})
#: what a scenario of the class starts with (before its first mappings)
PRELUDE: Mapping[str, tuple[str, ...]] = MappingProxyType({"files": ("file",)})
MAKES_MAPPINGS = frozenset(k.name for k in STEP_KINDS if k.step == "mmap")
HUGETLB_KINDS = frozenset({"mmap-hugetlb"})     # left out with --no-hugetlb


def _choose(gen: Gen, kinds: Sequence[StepKind]) -> Doc:
    """A step from ``kinds`` by the class's weights; makers that cannot apply now
    (no mapping to name, too many processes) are passed over."""
    pool = [k for k in kinds if k.weights[gen.cls] > 0 and
            (gen.hugetlb or k.name not in HUGETLB_KINDS)]
    while pool:
        kind = gen.pick(pool, [k.weights[gen.cls] for k in pool])
        step = kind.make(gen)
        if step is not None:
            return step
        pool.remove(kind)
    raise AssertionError("no step kind applies")   # measure always applies


def generate(seed: int, cls: str = ALL, hugetlb: bool = True) -> Doc:
    """The scenario (as YAML-ready data) of ``seed`` in class ``cls`` (one of CLASSES or
    ``all``, which picks a class from the seed). ``hugetlb=False`` (--no-hugetlb): no
    hugetlb mapping and no hugetlb pool knob, ``all`` never picks the hugetlb class."""
    if cls != ALL and cls not in CLASSES:
        raise ValueError(f"unknown class {cls!r}; one of {', '.join(CLASSES)} or all")
    if cls == "hugetlb" and not hugetlb:
        raise ValueError("the hugetlb class cannot be generated without hugetlb")
    gen = Gen(seed, cls, hugetlb)
    doc: Doc = {"name": f"fuzz-{gen.cls}-{seed}",
                "description": f"pagewalk fuzz seed {seed}, class {gen.cls}" +
                ("" if hugetlb else ", no hugetlb")}
    sysfs = _initial_sysfs(gen)
    system: Doc = {"sysfs": sysfs} if sysfs else {}
    if gen.cls == "pressure":
        system.update(_pressure_system(gen))
    if system:
        doc["system"] = system
    low, high = STEP_RANGE[gen.cls]
    total = gen.rng.randint(low, high)
    mappers = [k for k in STEP_KINDS if k.name in MAKES_MAPPINGS]
    for name in PRELUDE.get(gen.cls, ()):
        gen.steps.append(_choose(gen, [k for k in STEP_KINDS if k.name == name]))
    for _ in range(gen.rng.randint(1, 3)):
        gen.steps.append(_choose(gen, mappers))
    for name in OPENING.get(gen.cls, ()):
        gen.steps.append(_choose(gen, [k for k in STEP_KINDS if k.name == name]))
    while len(gen.steps) < total:
        gen.steps.append(_choose(gen, STEP_KINDS))
    gen.steps.append({"measure": "end"})
    doc["steps"] = gen.steps
    return doc


__all__ = ["ALL", "ARENA", "ARENA_1G", "CLASSES", "FILES_TOTAL", "FILE_MAX", "KNOB_PATHS",
           "NO_HUGETLB_CLASSES", "READ_AHEAD_VALUES", "STEP_KINDS", "UNWRITABLE", "Doc",
           "StepKind", "generate"]
