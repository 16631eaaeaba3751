"""The compiled fault loop and the reference fault path leave the same machine (STYLE
rule 12), whatever the sequence of steps: Hypothesis drives random mappings (private and
shared anonymous, files on disk, tmpfs and memfd with their page cache dropped or
truncated, THP advice), THP knobs (enabled, use_zero_page, an mTHP size), touches
(reads and writes, random ranges and strides), forks with copy-on-write writes on both
sides, munmap, MADV_DONTNEED and MADV_FREE and exits through two twin machines: one
touches memory through the compiled loop (fastpath.touch), the other through the
reference path (fastpath.touch_reference: every access via Kernel.user_access, every fault
via handle_mm_fault). After every step tests/machine_diff.py compares everything: page
tables, counters, TLBs and page-walk caches with their LRU stamps, free lists, struct
pages, THP bookkeeping and frame contents; an error (a signal, an errno) must be the same
on both. The machines are small, so THP allocation fails, falls back and runs out too.
The same runs once more with NUMBA_DISABLE_JIT=1: the compiled code as plain Python.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pagewalk.errors import PagewalkError
from pagewalk.kernel import syscalls
from pagewalk.kernel.kernel import Kernel
from pagewalk.kernel.task import Task
from pagewalk.machine import Machine, MachineConfig
from pagewalk.mm import fastpath
from tests.machine_diff import first_difference

ARENA = 0x7F0000000000           # 2 MiB aligned: room for THPs
ARENA_SIZE = 12 << 21
PAGE = 4096
HPAGE = 2 << 20
THP = "/sys/kernel/mm/transparent_hugepage"
NAMES = ("p0", "p1", "p2")
MAX_ACCESSES = 400               # per touch: the reference path is slow
STRIDES = (PAGE, PAGE, PAGE, 2 * PAGE, 3 * PAGE, 64, 1000, 64 << 10, HPAGE)
ADVICE = ("dontneed", "dontneed", "free", "hugepage", "nohugepage")
#: the scenario files of both machines: name -> (size, file system)
FILES = {"d": (6 << 20, "disk"), "t": (2 << 20, "tmpfs"), "m": (1 << 20, "memfd")}

offsets = st.integers(0, ARENA_SIZE // PAGE - 1).map(lambda page: page * PAGE)
# an address: a page of one of the process's mappings in the arena (by index), or anywhere
places = st.tuples(st.sampled_from(["vma", "vma", "vma", "arena"]), st.integers(0, 1 << 16),
                   st.integers(0, 1 << 16))
sizes = st.one_of(st.integers(1, 24).map(lambda pages: pages * PAGE),
                  st.integers(1, 6).map(lambda hpages: hpages * HPAGE))
procs = st.integers(0, 2)


class TwinMachines(RuleBasedStateMachine):
    """Processes p0 (and children by fork) on a fast and a reference machine."""

    def __init__(self) -> None:
        super().__init__()
        self.fast: Kernel | None = None
        self.ref: Kernel | None = None
        self.errors: list[str] = []       # outcomes of the step running on both

    @property
    def kernels(self) -> tuple[tuple[str, Kernel], ...]:
        assert self.fast is not None and self.ref is not None
        return (("fast", self.fast), ("reference", self.ref))

    @initialize(ram_mib=st.sampled_from([72, 80, 128]), paging=st.sampled_from([4, 4, 5]),
                pcid=st.booleans(), thp=st.sampled_from(["always", "madvise", "never"]))
    def boot(self, ram_mib: int, paging: int, pcid: bool, thp: str) -> None:
        """Two identical machines (small: THP allocations run out), each running p0."""
        config = MachineConfig(ram=ram_mib << 20, paging=paging, pcid=pcid,
                               sysfs={f"{THP}/enabled": thp})
        self.fast, self.ref = Machine(config).kernel, Machine(config).kernel
        for _, k in self.kernels:
            task = k.spawn("p0")
            syscalls.sys_mmap(k, task, ARENA, 8 << 20, 3,
                              frozenset({"anonymous", "private", "fixed"}), None)
            for name, (size, fs) in FILES.items():
                syscalls.sys_file_create(k, task, name, size, fs)

    def proc(self, pick: int) -> str:
        names = sorted(self.kernels[0][1].tasks)
        return names[pick % len(names)]

    def address(self, proc: str, place: tuple[str, int, int]) -> int:
        """A page of the ``place[1]``-th mapping of ``proc`` in the arena, or of the arena."""
        kind, which, page = place
        vmas = [v for v in self.kernels[0][1].tasks[proc].mm.vmas
                if ARENA <= v.start < ARENA + ARENA_SIZE]
        if kind == "arena" or not vmas:
            return ARENA + page % (ARENA_SIZE // PAGE) * PAGE
        vma = vmas[which % len(vmas)]
        return vma.start + page % ((vma.end - vma.start) // PAGE) * PAGE

    def both(self, what: str, step: Callable[[Kernel, Task], object], proc: str) -> None:
        """One step on both machines: the same outcome, error or not."""
        outcomes = []
        for _, k in self.kernels:
            try:
                step(k, k.tasks[proc])
            except PagewalkError as err:
                outcomes.append(f"{type(err).__name__}: {err}")
            else:
                outcomes.append("ok")
        assert outcomes[0] == outcomes[1], f"{proc}: {what}: fast {outcomes[0]}, " \
                                           f"reference {outcomes[1]}"

    @invariant()
    def twins_are_identical(self) -> None:
        """Page tables, counters, TLBs, PWCs, free lists, struct pages: all the same."""
        if self.fast is None:
            return
        diff = first_difference(self.fast, self.ref)   # type: ignore[arg-type]
        assert diff is None, f"compiled and reference fault paths differ: {diff}"

    def booted(self) -> bool:
        return self.fast is not None

    # -- steps --------------------------------------------------------------------------------
    @precondition(booted)
    @rule(who=procs, offset=offsets, size=sizes, shared=st.sampled_from([False] * 4 + [True]),
          prot=st.sampled_from([3, 3, 3, 1, 0]))
    def mmap(self, who: int, offset: int, size: int, shared: bool, prot: int) -> None:
        """mmap(MAP_FIXED) of anonymous memory over part of the arena."""
        flags = frozenset({"anonymous", "fixed", "shared" if shared else "private"})
        size = min(size, ARENA_SIZE - offset)
        self.both(f"mmap({ARENA + offset:#x}, {size:#x}, {prot}, {sorted(flags)})",
                  lambda k, t: syscalls.sys_mmap(k, t, ARENA + offset, size, prot, flags, None),
                  self.proc(who))

    @precondition(booted)
    @rule(who=procs, offset=offsets, size=sizes, file=st.sampled_from(sorted(FILES)),
          page=st.integers(0, 2048), shared=st.booleans(), prot=st.sampled_from([1, 1, 3, 5]))
    def mmap_file(self, who: int, offset: int, size: int, file: str, page: int, shared: bool,
                  prot: int) -> None:
        """mmap(MAP_FIXED) of a file (disk, tmpfs, memfd) at a page offset, maybe past its
        end: read faults map the page cache through fault-around, compiled or not."""
        flags = frozenset({"fixed", "shared" if shared else "private"})
        size = min(size, ARENA_SIZE - offset)
        page %= FILES[file][0] // PAGE + 8
        self.both(f"mmap({ARENA + offset:#x}, {size:#x}, {prot}, {file}@{page})",
                  lambda k, t: syscalls.sys_mmap(k, t, ARENA + offset, size, prot, flags, None,
                                                 file, page * PAGE), self.proc(who))

    @precondition(booted)
    @rule(who=procs, file=st.sampled_from(sorted(FILES)),
          how=st.sampled_from(["dontneed", "dontneed", "shrink", "grow"]),
          pages=st.integers(0, 2048))
    def file_cache(self, who: int, file: str, how: str, pages: int) -> None:
        """Change what the page cache holds: POSIX_FADV_DONTNEED (later reads are major
        and read ahead: large folios, PG_readahead marks) or ftruncate."""
        size = (pages % (FILES[file][0] // PAGE + 16)) * PAGE + (100 if how == "shrink" else 0)
        if how == "dontneed":
            step = lambda k, t: syscalls.sys_fadvise_dontneed(k, t, file)
        else:
            step = lambda k, t: syscalls.sys_ftruncate(k, t, file, size)
        self.both(f"{how} {file} {size:#x}", step, self.proc(who))

    @precondition(booted)
    @rule(who=procs, place=places, size=sizes, stride=st.sampled_from(STRIDES),
          write=st.booleans(), skew=st.sampled_from([0, 0, 0, 8, 2048]))
    def touch(self, who: int, place: tuple[str, int, int], size: int, stride: int,
              write: bool, skew: int) -> None:
        """The touch step: an access every ``stride`` bytes, the first refused one raising
        (SIGSEGV, the OOM signal) on both machines alike."""
        self.touch_both(self.proc(who), self.address(self.proc(who), place) + skew, size,
                        stride, write)

    @precondition(booted)
    @rule(who=procs, place=places, size=sizes, write=st.sampled_from([True, True, False]))
    def touch_pages(self, who: int, place: tuple[str, int, int], size: int, write: bool) -> None:
        """The common touch: every 4 KiB page of a range."""
        self.touch_both(self.proc(who), self.address(self.proc(who), place), size, PAGE, write)

    @precondition(lambda self: self.booted() and len(self.kernels[0][1].tasks) < len(NAMES))
    @rule(who=procs, place=places, size=sizes, stride=st.sampled_from([PAGE, 2 * PAGE]))
    def fork_and_write(self, who: int, place: tuple[str, int, int], size: int,
                       stride: int) -> None:
        """fork(), then the child and the parent write the same pages: the child copies
        (wp_page_copy), the parent reuses what it now maps alone (wp_page_reuse)."""
        parent = self.proc(who)
        start = self.address(parent, place)
        child = self.fork_process(parent)
        self.touch_both(child, start, size, stride, True)
        self.touch_both(parent, start, size, stride, True)

    def touch_both(self, proc: str, start: int, size: int, stride: int, write: bool) -> None:
        """One touch on both machines: the same outcome, error or not."""
        length = min(size, stride * MAX_ACCESSES)
        access = 1 if write else 0
        for label, k in self.kernels:
            touch = fastpath.touch if label == "fast" else fastpath.touch_reference
            self._touch_one(k, touch, proc, start, length, stride, access)
        self.both_errors(f"{proc}: touch({start:#x}, {length:#x}, stride {stride}, "
                         f"{'write' if write else 'read'})")

    def _touch_one(self, k: Kernel, touch: Callable[..., None], proc: str, start: int,
                   length: int, stride: int, access: int) -> None:
        try:
            touch(k, k.tasks[proc], start, length, stride, access)
        except PagewalkError as err:
            self.errors.append(f"{type(err).__name__}: {err}")
        else:
            self.errors.append("ok")

    def both_errors(self, what: str) -> None:
        outcomes, self.errors = self.errors, []
        assert outcomes[0] == outcomes[1], f"{what}: fast {outcomes[0]}, reference {outcomes[1]}"

    @precondition(booted)
    @rule(who=procs, place=places, size=sizes)
    def munmap(self, who: int, place: tuple[str, int, int], size: int) -> None:
        start = self.address(self.proc(who), place)
        self.both(f"munmap({start:#x}, {size:#x})",
                  lambda k, t: syscalls.sys_munmap(k, t, start, size), self.proc(who))

    @precondition(booted)
    @rule(who=procs, place=places, size=sizes, advice=st.sampled_from(ADVICE))
    def madvise(self, who: int, place: tuple[str, int, int], size: int, advice: str) -> None:
        start = self.address(self.proc(who), place)
        self.both(f"madvise({start:#x}, {size:#x}, {advice})",
                  lambda k, t: syscalls.sys_madvise(k, t, start, size, advice), self.proc(who))

    @precondition(lambda self: self.booted() and len(self.kernels[0][1].tasks) < len(NAMES))
    @rule(who=procs)
    def fork(self, who: int) -> None:
        """fork(): the pages of both become copy-on-write."""
        self.fork_process(self.proc(who))

    def fork_process(self, parent: str) -> str:
        child = next(n for n in NAMES if n not in self.kernels[0][1].tasks)
        for _, k in self.kernels:
            syscalls.sys_fork(k, k.tasks[parent], child)
        return child

    @precondition(lambda self: self.booted() and len(self.kernels[0][1].tasks) > 1)
    @rule(who=procs)
    def exit(self, who: int) -> None:
        proc = self.proc(who)
        for _, k in self.kernels:
            syscalls.sys_exit(k, k.tasks[proc])

    @precondition(booted)
    @rule(knob=st.sampled_from([("enabled", "always"), ("enabled", "madvise"),
                                ("enabled", "never"), ("use_zero_page", "0"),
                                ("use_zero_page", "1"), ("hugepages-64kB/enabled", "always"),
                                ("hugepages-64kB/enabled", "never"),
                                ("defrag", "always"), ("defrag", "madvise")]))
    def set_thp_knob(self, knob: tuple[str, str]) -> None:
        for _, k in self.kernels:
            k.set_knob(f"{THP}/{knob[0]}", knob[1])


TestFaultPaths = TwinMachines.TestCase
TestFaultPaths.settings = settings(
    max_examples=40, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


UNCOMPILED = """
from hypothesis import HealthCheck, settings
from tests.mm.test_fault_paths_property import TwinMachines
from pagewalk.hw import compiled
assert compiled.mode() == "python"
TwinMachines.TestCase.settings = settings(
    max_examples=6, stateful_step_count=20, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TwinMachines.TestCase().runTest()
"""


def test_fault_paths_agree_with_the_compiled_code_run_as_python() -> None:
    """NUMBA_DISABLE_JIT=1: the compiled loop and primitives run as the plain Python they
    are written in (coverage), and the twins still agree."""
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    result = subprocess.run([sys.executable, "-c", UNCOMPILED], cwd=root, env=env,
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
