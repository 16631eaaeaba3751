"""The generator's version 2 file steps (scenario.md "Files and the page cache"): every
scenario of every class still loads with the schema; the files class makes every file
step, every file system, every madvise advice on every kind of mapping and the
read_ahead_kb knob; and, over many seeds, the kernel oracle's rules hold (shared/oracle
README, Version 2): nothing populates an uncached disk file unless it was mapped with
read_ahead_kb 0, files stay within 16 MiB each and 64 MiB in all, a memfd is never
unlinked, and ``all`` makes file steps, but few of them."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest

from pagewalk.fuzz.document import load, step_item
from pagewalk.fuzz.generate import ALL, CLASSES, FILE_MAX, FILES_TOTAL, READ_AHEAD_VALUES, generate
from pagewalk.kernel.knobs import READ_AHEAD_KB
from pagewalk.scenario import schema as s

FILE_STEPS = ("file", "truncate", "fadvise", "msync", "unlink")
NEW_ADVICE = ("populate_read", "populate_write", "remove", "cold", "pageout", "random",
              "sequential", "normal")
MAPPING_KINDS = ("private", "shared", "hugetlb", "file-disk", "file-tmpfs", "file-memfd")
FILES_SEEDS = range(600)           # generation alone: about a millisecond a seed


def _value(fields: Any) -> dict[str, Any]:
    return fields if isinstance(fields, dict) else {}


@pytest.mark.parametrize("cls", [*CLASSES, ALL])
def test_every_scenario_of_every_class_loads_with_the_schema(cls: str) -> None:
    """Valid by construction, file steps included: file names unique, every file step
    names a file made before, no memfd unlinked, file mappings private or shared."""
    for seed in range(120):
        scenario = load(generate(seed, cls), f"{cls}-{seed}")
        assert isinstance(scenario.steps[-1], s.MeasureStep)


def test_the_files_class_makes_every_file_step_file_system_and_msync_flag() -> None:
    kinds: Counter[str] = Counter()
    fs: set[str] = set()
    map_types: set[str] = set()
    msync_flags: set[frozenset[str] | None] = set()
    read_ahead: set[int] = set()
    unaligned_offset = double_unlink = grows = shrinks = populate_file = False
    for seed in range(200):
        doc = generate(seed, "files")
        read_ahead.update(v for k, v in doc.get("system", {}).get("sysfs", {}).items()
                          if k == READ_AHEAD_KB)
        sizes: dict[str, int] = {}
        unlinked: Counter[str] = Counter()
        for step in doc["steps"]:
            kind, raw = step_item(step)
            fields = _value(raw)
            if kind == "mmap" and "file" in fields:
                kind = "mmap-file"
                map_types.update({"private", "shared"} & set(fields["flags"]))
                unaligned_offset |= fields.get("file_offset", 0) % 4096 != 0
                populate_file |= "populate" in fields["flags"]
            kinds[kind] += 1
            if kind == "file":
                fs.add(fields.get("fs", "disk"))
                sizes[fields["name"]] = fields["size"]
            elif kind == "truncate":
                grows |= fields["size"] > sizes[fields["file"]]
                shrinks |= fields["size"] < sizes[fields["file"]]
                sizes[fields["file"]] = fields["size"]
            elif kind == "msync":
                flags = fields.get("flags")
                msync_flags.add(None if flags is None else frozenset(flags))
            elif kind == "unlink":
                unlinked[fields["file"]] += 1
            elif kind == "set":
                read_ahead.update(v for k, v in raw.items() if k == READ_AHEAD_KB)
        double_unlink |= any(n > 1 for n in unlinked.values())
    assert all(kinds[k] > 0 for k in (*FILE_STEPS, "mmap-file")), kinds
    assert fs == set(s.FILE_SYSTEMS)
    assert map_types == {"private", "shared"}
    assert read_ahead == set(READ_AHEAD_VALUES)
    # MS_SYNC|MS_ASYNC is EINVAL (msync), the others are accepted
    assert {None, frozenset(), frozenset({"sync", "async"}), frozenset({"invalidate"}),
            frozenset({"sync", "invalidate"}), frozenset({"async", "invalidate"})} <= msync_flags
    assert unaligned_offset and double_unlink and grows and shrinks and populate_file


def test_every_new_advice_meets_every_kind_of_mapping() -> None:
    """populate_read/write, remove, cold, pageout, random, sequential and normal are each
    given to private and shared anonymous, hugetlb and disk, tmpfs and memfd file
    mappings in some seed of the files class."""
    pairs: set[tuple[str, str]] = set()
    for seed in FILES_SEEDS:
        doc = generate(seed, "files")
        fs: dict[str, str] = {}
        procs: dict[str, dict[str, str]] = {"main": {}}
        for step in doc["steps"]:
            kind, raw = step_item(step)
            fields = _value(raw)
            proc = fields.get("process", "main")
            if kind == "file":
                fs[fields["name"]] = fields.get("fs", "disk")
            elif kind == "fork":
                procs[fields["name"]] = dict(procs[proc])
            elif kind == "exit":
                del procs[proc]
            elif kind == "mmap":
                flags = fields.get("flags", ["private", "anonymous"])
                procs[proc][fields["name"]] = (
                    f"file-{fs[fields['file']]}" if "file" in fields else
                    "hugetlb" if "hugetlb" in flags else
                    "shared" if "shared" in flags else "private")
            elif kind == "mremap" and "name" in fields:
                procs[proc][fields["name"]] = procs[proc][fields["region"]]
            elif kind == "madvise" and fields["region"] != s.HEAP_REGION:
                pairs.add((fields["advice"], procs[proc][fields["region"]]))
    missing = {(a, k) for a in NEW_ADVICE for k in MAPPING_KINDS} - pairs
    assert not missing, sorted(missing)


@dataclass
class _Proc:
    maps: set[tuple[str, int]] = field(default_factory=set)   # (file, read_ahead_kb at mmap)
    locked: bool = False          # a VM_LOCKED VMA without VM_LOCKONFAULT, maybe
    hugepage: bool = False        # a VM_HUGEPAGE VMA, maybe


@dataclass
class _File:
    fs: str
    size: int
    peak: int
    cached: bool = True


class _OracleRules:
    """The oracle README's rules, checked on a scenario document step by step."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.where = doc["name"]
        self.ra = int(doc.get("system", {}).get("sysfs", {}).get(READ_AHEAD_KB, 8192))
        self.files: dict[str, _File] = {}
        self.procs: dict[str, _Proc] = {"main": _Proc()}
        self.populated_uncached_at_ra0 = 0

    def uncached_read(self, file: str, ra: int, hugepage: bool) -> bool:
        f = self.files[file]
        return f.fs == "disk" and not f.cached and (ra != 0 or hugepage)

    def populate_ok(self, proc: _Proc, what: str) -> None:
        """A populating step: no disk file the process maps may be uncached (unless it was
        mapped with read_ahead_kb 0 and there is no VM_HUGEPAGE)."""
        bad = [f for f, ra in proc.maps if self.uncached_read(f, ra, proc.hugepage)]
        assert not bad, f"{self.where}: {what} may populate uncached disk files {bad}"
        self.populated_uncached_at_ra0 += any(
            self.files[f].fs == "disk" and not self.files[f].cached for f, _ in proc.maps)

    def sizes_ok(self, size: int) -> None:
        assert size <= FILE_MAX, (self.where, size)
        assert sum(f.peak for f in self.files.values()) <= FILES_TOTAL, self.where

    def step(self, kind: str, raw: Any) -> None:
        fields = _value(raw)
        proc = self.procs.get(fields.get("process", "main"), _Proc())
        if kind == "set":
            if READ_AHEAD_KB in raw:
                assert raw[READ_AHEAD_KB] in READ_AHEAD_VALUES, self.where
                self.ra = int(raw[READ_AHEAD_KB])
        elif kind == "file":
            assert fields["name"] not in self.files
            self.files[fields["name"]] = _File(fields.get("fs", "disk"), fields["size"],
                                               fields["size"])
            self.sizes_ok(fields["size"])
        elif kind == "truncate":
            f = self.files[fields["file"]]
            f.cached &= fields["size"] <= f.size          # growing makes a hole
            f.size, f.peak = fields["size"], max(f.peak, fields["size"])
            self.sizes_ok(f.size)
        elif kind == "fadvise":
            self.files[fields["file"]].cached = False
        elif kind == "unlink":
            assert self.files[fields["file"]].fs != "memfd", self.where
        elif kind == "fork":
            self.procs[fields["name"]] = _Proc(set(proc.maps), False, proc.hugepage)
        elif kind == "exit":
            del self.procs[fields["process"]]
        elif kind == "mmap" and "file" in fields:
            if "populate" in fields["flags"]:
                assert not self.uncached_read(fields["file"], self.ra, False), self.where
            proc.maps.add((fields["file"], self.ra))
        elif kind == "madvise":
            if fields["advice"] in ("populate_read", "populate_write"):
                self.populate_ok(proc, f"madvise {fields['advice']}")
            if fields["advice"] in ("pageout", "remove"):    # any file the range reaches
                for file, _ in proc.maps:
                    self.files[file].cached = False
            proc.hugepage |= fields["advice"] == "hugepage"
        elif kind == "mlock" and "onfault" not in fields.get("flags", []):
            self.populate_ok(proc, "mlock")
            proc.locked = True
        elif kind == "mlockall":
            flags = fields["flags"]
            assert "future" not in flags or "onfault" in flags, self.where  # later mmaps
            if "current" in flags and "onfault" not in flags:
                self.populate_ok(proc, "mlockall")
                proc.locked = True
        elif kind == "mremap" and proc.locked and self.unsafe(proc):
            # mremap populates what it grows of a VM_LOCKED VMA
            assert fields["new_length"] <= fields.get("length", -1), self.where
        elif kind == "mprotect" and proc.locked and self.unsafe(proc):
            # mprotect_fixup populates a private VM_LOCKED VMA made writable
            assert "w" not in fields.get("prot", "rw"), self.where

    def unsafe(self, proc: _Proc) -> bool:
        return any(self.uncached_read(f, ra, proc.hugepage) for f, ra in proc.maps)


@pytest.mark.parametrize("cls", ["files", "mixed", ALL])
def test_no_step_populates_an_uncached_disk_file_and_files_stay_small(cls: str) -> None:
    """The oracle's rules as a property over 600 seeds: populate (MADV_POPULATE_*,
    MAP_POPULATE, mlock, mlockall(MCL_CURRENT), a locked VMA grown by mremap or made
    writable by mprotect) only while every disk file the process may map is fully cached
    or was mapped with read_ahead_kb 0; read_ahead_kb set to 0, 4, 128 or 8192; files
    within 16 MiB, 64 MiB in all; no memfd unlinked."""
    populated_at_ra0 = 0
    for seed in FILES_SEEDS:
        doc = generate(seed, cls)
        rules = _OracleRules(doc)
        for path, value in doc.get("system", {}).get("sysfs", {}).items():
            assert path != READ_AHEAD_KB or value in READ_AHEAD_VALUES
        for step in doc["steps"]:
            rules.step(*step_item(step))
        populated_at_ra0 += rules.populated_uncached_at_ra0
    if cls == "files":      # the read_ahead_kb 0 way is taken too, not only cached files
        assert populated_at_ra0 > 0


def test_all_makes_file_steps_with_a_low_weight() -> None:
    """``all`` draws the files class and mixed makes a few file steps: file steps are
    there, and a small share of all steps."""
    kinds: Counter[str] = Counter()
    for seed in range(400):
        kinds.update(step_item(step)[0] for step in generate(seed, ALL)["steps"])
    file_steps = sum(kinds[k] for k in FILE_STEPS)
    assert all(kinds[k] > 0 for k in FILE_STEPS), kinds
    assert 0 < file_steps < 0.06 * sum(kinds.values()), (file_steps, kinds)
