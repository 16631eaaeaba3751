"""Random system-call sequences against the kernel's invariants (Hypothesis state machines).

Three machines, each on a fresh 256 MiB Machine, each checked by tests/invariants.py
after every rule (RSS, VmPTE, NR_PAGETABLE, buddy, rmap, hugetlb pools) and by a byte
model: every byte read equals the last byte that process wrote there (for shared
mappings: that any process wrote into the shared inode), unwritten bytes read 0, and a
page a `touch` wrote or MADV_FREE released holds unspecified bytes until dropped.

* ``SingleProcess``: mmap (4 KiB..16 MiB, 2 MiB multiples, MAP_FIXED in a 64 MiB arena,
  random prot, private or shared, populate), munmap/mprotect/madvise over random
  sub-ranges (holes included), touches with random strides (fastpath.touch), byte
  writes and reads, THP and mTHP knob flips, MADV_COLLAPSE.
* ``ManyProcesses``: processes p0..p3 forking, exiting, mapping private and shared
  anonymous memory, writing, reading, touching and unmapping; fork copies the byte model,
  shared mappings share it.
* ``HugetlbPools``: nr_hugepages/nr_overcommit_hugepages changes, MAP_HUGETLB with and
  without MAP_NORESERVE, touches (SIGBUS only for MAP_NORESERVE with the pool exhausted),
  byte writes and reads, mprotect (PROT_NONE included), munmap.

A system call that fails must leave everything observable unchanged (counters, VMAs,
page-table words), except where Linux documents partial work: mprotect or madvise over a
hole (ENOMEM after the VMAs before it were changed) and MADV_COLLAPSE failing midway.
When every task has exited, everything but what is cached by design is free again.

Regressions the machines found are kept as plain tests at the end of this file.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from pagewalk.errors import Errno, Signal, SignalError, SyscallError
from pagewalk.kernel import syscalls
from pagewalk.kernel.task import Task
from pagewalk.machine import Machine, MachineConfig
from pagewalk.mm import fastpath
from pagewalk.mm.types import MmStruct, Vma, VmFlags
from pagewalk.mm.vma import vma_lookup, vmas_in_range
from pagewalk.mm.vmstat import NodeStat
from tests import invariants as inv

T = TypeVar("T")

RAM = 256 << 20
PAGE = 4096
HPAGE = 2 << 20
THP = "/sys/kernel/mm/transparent_hugepage"
POOL = "/proc/sys/vm/nr_hugepages"
OVERCOMMIT = "/proc/sys/vm/nr_overcommit_hugepages"
ARENA = 0x600000000000            # MAP_FIXED mappings land in [ARENA, ARENA + 64 MiB)
ARENA_SIZE = 64 << 20
VVAR_START = 0x7FFFF7FF7000       # hint-less mappings grow down from just below [vvar]
LOW_WATER_PAGES = 16384           # rules that allocate keep 64 MiB free: no OOM, no compaction
MAX_ACCESSES = 2048               # per touch
PROT = (0, 1, 2, 3, 3, 3)         # none, r, w (x86: rw), rw
STRIDES = (1, 64, PAGE, 3 * PAGE, 64 << 10, HPAGE)
COLLAPSE_ERRNOS = frozenset({Errno.EINVAL, Errno.ENOMEM, Errno.EAGAIN, Errno.EBUSY})


picks = st.integers(0, 1 << 16)


@dataclass(frozen=True, slots=True)
class SpanSpec:
    """A range drawn by Hypothesis, resolved against a task's VMAs when the rule runs:
    which VMA, which pages of it, the shape (``pages``, the ``whole`` VMA, or ``huge``:
    whole 2 MiB units) and how many pages it spills past the VMA's end."""

    vma: int
    first: int
    count: int
    shape: str
    spill: int = 0


@dataclass(frozen=True, slots=True)
class PlaceSpec:
    """A byte address drawn the same way: VMA, page and offset (small values repeat, so
    reads meet earlier writes)."""

    vma: int
    page: int
    offset: int


def span_specs(spill: bool = False) -> st.SearchStrategy[SpanSpec]:
    return st.builds(SpanSpec, picks, st.one_of(st.integers(0, 4), picks),
                     st.one_of(st.integers(0, 16), picks),
                     st.sampled_from(["pages", "pages", "whole", "huge"]),
                     st.sampled_from([0, 0, 0, 1, 600]) if spill else st.just(0))


place_specs = st.builds(PlaceSpec, picks, st.one_of(st.integers(0, 3), picks),
                        st.one_of(st.integers(0, 31), st.integers(0, PAGE - 1)))


# --- the byte model --------------------------------------------------------------------------

class Contents:
    """What user memory must read back.

    Private memory is keyed by (process name, virtual address); shared memory by (inode,
    file offset), so every process mapping an inode sees the same bytes. ``unknown`` pages
    hold unspecified bytes (a touch wrote them, MADV_FREE released them) except the bytes
    written since."""

    def __init__(self) -> None:
        self.bytes: dict[object, dict[int, int]] = {}
        self.unknown: dict[object, set[int]] = {}

    @staticmethod
    def locate(task: Task, vaddr: int) -> tuple[object, int]:
        vma = vma_lookup(task.mm, vaddr)
        assert vma is not None
        if vma.flags & VmFlags.SHARED:
            return vma.file, (vma.pgoff << 12) + (vaddr - vma.start)
        return task.comm, vaddr

    def write(self, task: Task, vaddr: int, data: bytes) -> None:
        owner, addr = self.locate(task, vaddr)
        stored = self.bytes.setdefault(owner, {})
        for i, byte in enumerate(data):
            stored[addr + i] = byte

    def expected(self, task: Task, vaddr: int, length: int) -> list[int | None]:
        """Per byte: its value, or None where it is unspecified."""
        owner, addr = self.locate(task, vaddr)
        stored = self.bytes.get(owner, {})
        unknown = self.unknown.get(owner, set())
        return [stored.get(a, None if a & ~(PAGE - 1) in unknown else 0)
                for a in range(addr, addr + length)]

    def mark_unknown(self, task: Task, vaddr: int) -> None:
        """The page holding ``vaddr`` now holds unspecified bytes."""
        owner, addr = self.locate(task, vaddr)
        page = addr & ~(PAGE - 1)
        self.unknown.setdefault(owner, set()).add(page)
        stored = self.bytes.get(owner, {})
        for a in [a for a in stored if a & ~(PAGE - 1) == page]:
            del stored[a]

    def forget_private(self, task: Task, start: int, end: int) -> None:
        """[start, end) of the process's private memory reads zeros again (unmapped,
        replaced or zapped)."""
        stored = self.bytes.get(task.comm, {})
        for a in [a for a in stored if start <= a < end]:
            del stored[a]
        unknown = self.unknown.get(task.comm, set())
        unknown -= {p for p in unknown if start <= p < end}

    def by_page(self) -> list[tuple[object, int, dict[int, int]]]:
        """Every written byte, grouped: (owner, page address, {offset in page: byte})."""
        pages: dict[tuple[int, int], tuple[object, int, dict[int, int]]] = {}
        for owner, stored in self.bytes.items():
            for addr, byte in stored.items():
                key = (id(owner), addr & ~(PAGE - 1))
                pages.setdefault(key, (owner, key[1], {}))[2][addr & (PAGE - 1)] = byte
        return list(pages.values())

    def fork(self, parent: Task, child: Task) -> None:
        self.bytes[child.comm] = dict(self.bytes.get(parent.comm, {}))
        self.unknown[child.comm] = set(self.unknown.get(parent.comm, set()))

    def exit(self, task: Task) -> None:
        self.bytes.pop(task.comm, None)
        self.unknown.pop(task.comm, None)


# --- address-space helpers ---------------------------------------------------------------------

def user_vmas(mm: MmStruct) -> list[Vma]:
    """The VMAs the test created (the start image lies below ARENA and above VVAR_START)."""
    return [v for v in mm.vmas if v.start >= ARENA and v.end <= VVAR_START]


def resolve_span(vma: Vma, spec: SpanSpec) -> tuple[int, int]:
    """[start, start + size) inside ``vma`` per ``spec``; never reaching the start image."""
    pages = vma.length // PAGE
    first = spec.first % pages
    start, size = vma.start + first * PAGE, (1 + spec.count % (pages - first)) * PAGE
    if spec.shape == "whole":
        start, size = vma.start, vma.length
    elif spec.shape == "huge":                # whole 2 MiB units, around the VMA if need be
        start = start & ~(HPAGE - 1) if start + HPAGE > vma.end else -(-start // HPAGE) * HPAGE
        size = max(HPAGE, size & ~(HPAGE - 1))
    end = min(start + size + spec.spill * PAGE, VVAR_START)
    return start, end - start


def covered(mm: MmStruct, start: int, end: int) -> bool:
    """[start, end) is mapped without a hole."""
    return sum(min(v.end, end) - max(v.start, start) for v in vmas_in_range(mm, start, end)) \
        == end - start


def access_denied(vma: Vma | None, write: bool) -> bool:
    """do_user_addr_fault(): no VMA, or access_error()."""
    if vma is None:
        return True
    if write:
        return not vma.flags & VmFlags.WRITE
    return not vma.flags & (VmFlags.READ | VmFlags.WRITE | VmFlags.EXEC)


def first_denied_access(mm: MmStruct, start: int, length: int, stride: int,
                        write: bool) -> int | None:
    """The first access of a touch that must raise SIGSEGV, or None."""
    count = -(-length // stride)
    i = 0
    while i < count:
        vaddr = start + i * stride
        vma = vma_lookup(mm, vaddr)
        if access_denied(vma, write):
            return vaddr
        assert vma is not None
        i = max(i + 1, -(-(vma.end - start) // stride))   # the first access past this VMA
    return None


def free_pages(machine: KernelMachine) -> int:
    return int(machine.k.node_stat[NodeStat.NR_FREE_PAGES])


def memory_to_spare(machine: KernelMachine) -> bool:
    return free_pages(machine) > LOW_WATER_PAGES


# --- the common machine ------------------------------------------------------------------------

class KernelMachine(RuleBasedStateMachine):
    """A fresh Machine; after every rule the invariants; at the end every task exits and
    nothing may leak."""

    def __init__(self) -> None:
        super().__init__()
        self.machine = Machine(MachineConfig(ram=RAM))
        self.k = self.machine.kernel
        self.baseline = inv.Baseline.capture(self.k)
        self.contents = Contents()

    # -- invariants and teardown ----------------------------------------------------------------
    @invariant()
    def kernel_state_adds_up(self) -> None:
        inv.check_machine(self.k, self.baseline)

    @invariant()
    def memory_holds_what_was_written(self) -> None:
        """Without swap, every written byte stays in memory: a private one behind its
        process's page tables, a shared one in its inode's page cache."""
        for owner, page, written in self.contents.by_page():
            paddr = self.frame_of(owner, page)
            if paddr is None:
                continue
            data = self.k.physmem.read_bytes(paddr, PAGE)
            wrong = {off: (data[off], byte) for off, byte in written.items() if data[off] != byte}
            assert not wrong, f"{owner}: page {page:#x} lost written bytes {wrong}"

    def frame_of(self, owner: object, page: int) -> int | None:
        """Where ``owner``'s page lives now (None: a shared inode nobody maps any more)."""
        if isinstance(owner, str):
            mm = self.k.tasks[owner].mm
            _, entry, shift = self.k.pgtables.lookup(mm, page)
            assert entry & inv.MAPS_A_PAGE, f"{owner}: written page {page:#x} is not mapped"
            leaf = inv.Leaf(page & ~((1 << shift) - 1), shift, 0, entry)
            return (leaf.pfn << 12) + (page - leaf.vaddr)
        if not any(v.file is owner for t in self.tasks() for v in t.mm.vmas):
            return None
        unit = getattr(owner, "huge_size", PAGE)
        pfn = owner.pages.get(page // unit)  # type: ignore[attr-defined]
        assert pfn is not None, f"{owner}: written page {page:#x} left the page cache"
        return (pfn << 12) + page % unit

    def teardown(self) -> None:
        for task in list(self.k.tasks.values()):
            syscalls.sys_exit(self.k, task)
        self.release_pools()
        inv.check_all_freed(self.k, self.baseline)

    def release_pools(self) -> None:
        """Nothing to give back unless the machine filled hugetlb pools."""

    # -- choosing targets -------------------------------------------------------------------------
    def tasks(self) -> list[Task]:
        return list(self.k.tasks.values())

    def pick_task(self, pick: int) -> Task:
        tasks = self.tasks()
        return tasks[pick % len(tasks)]

    def pick_vma(self, task: Task, pick: int) -> Vma | None:
        vmas = user_vmas(task.mm)
        return vmas[pick % len(vmas)] if vmas else None

    def span_of(self, task: Task, spec: SpanSpec) -> tuple[int, int] | None:
        vma = self.pick_vma(task, spec.vma)
        return None if vma is None else resolve_span(vma, spec)

    def place_of(self, task: Task, spec: PlaceSpec, length: int) -> int | None:
        """A byte address in one of the test's VMAs with ``length`` bytes left in its page."""
        vma = self.pick_vma(task, spec.vma)
        if vma is None:
            return None
        page = vma.start + (spec.page % (vma.length // PAGE)) * PAGE
        return page + spec.offset % (PAGE - length + 1)

    # -- system calls -------------------------------------------------------------------------
    def syscall(self, call: Callable[[], T], expected: Errno | None = None,
                partial_ok: Collection[Errno] = ()) -> tuple[T | None, Errno | None]:
        """Run one system call. A failure must be ``expected`` (when given) and, unless its
        errno is in ``partial_ok``, leave every observable part of the machine unchanged."""
        before = inv.observable_state(self.k)
        try:
            result = call()
        except SyscallError as err:
            if expected is not None:
                assert err.errno == expected, f"{err}, expected {expected.name}"
            if err.errno not in partial_ok:
                changed = inv.state_changes(before, inv.observable_state(self.k))
                assert not changed, f"the failed call ({err}) changed {changed}"
            return None, err.errno
        assert expected is None, f"the call succeeded, expected {expected.name}"
        return result, None

    def mmap(self, task: Task, addr: int, length: int, prot: int, flags: set[str],
             huge_size: int | None = None, expected: Errno | None = None) -> int | None:
        start, _ = self.syscall(lambda: syscalls.sys_mmap(
            self.k, task, addr, length, prot, frozenset(flags), huge_size), expected)
        if start is not None:                 # a new mapping reads zeros
            unit = (huge_size or HPAGE) if "hugetlb" in flags else PAGE
            self.contents.forget_private(task, start, start + -(-length // unit) * unit)
        return start

    def munmap(self, task: Task, start: int, length: int, expected: Errno | None = None) -> None:
        _, errno = self.syscall(lambda: syscalls.sys_munmap(self.k, task, start, length),
                                expected)
        if errno is None:
            self.contents.forget_private(task, start, start + length)

    def mprotect(self, task: Task, start: int, length: int, prot: int) -> None:
        """ENOMEM exactly when the range has a hole; the VMAs before the hole changed."""
        hole = not covered(task.mm, start, start + length)
        self.syscall(lambda: syscalls.sys_mprotect(self.k, task, start, length, prot),
                     Errno.ENOMEM if hole else None, partial_ok={Errno.ENOMEM})

    def madvise(self, task: Task, start: int, length: int, advice: str) -> None:
        """MADV_*: ENOMEM (after doing the mapped part) when the range has a hole, EINVAL at
        the first VMA MADV_FREE cannot apply to (not private anonymous) or where
        MADV_DONTNEED would start inside a huge page; MADV_COLLAPSE may fail midway with its
        errnos. Contents: MADV_DONTNEED zero-fills private memory
        (the inode keeps shared pages), MADV_FREE makes private pages unspecified."""
        end = start + length
        vmas = vmas_in_range(task.mm, start, end)
        if advice == "collapse":
            self.syscall(lambda: syscalls.sys_madvise(self.k, task, start, length, advice),
                         partial_ok=COLLAPSE_ERRNOS)
            return
        expected: Errno | None = None if covered(task.mm, start, end) else Errno.ENOMEM
        # madvise_walk_vmas(): VMA by VMA; the first one the advice cannot apply to stops
        # the walk with EINVAL, after the VMAs before it were advised
        def refuses(vma: Vma) -> bool:
            if advice == "free":
                return not vma.is_anonymous() or bool(vma.flags & VmFlags.SHARED)
            return advice == "dontneed" and vma.is_hugetlb() and \
                max(vma.start, start) % vma.file.huge_size != 0
        invalid = next((i for i, v in enumerate(vmas) if refuses(v)), None)
        if invalid is not None:
            expected = Errno.EINVAL
        _, errno = self.syscall(
            lambda: syscalls.sys_madvise(self.k, task, start, length, advice), expected,
            partial_ok={Errno.ENOMEM, Errno.EINVAL})
        if errno == Errno.EINVAL:
            vmas = vmas[:invalid]
        for vma in vmas:
            lo, hi = max(vma.start, start), min(vma.end, end)
            if vma.flags & VmFlags.SHARED:
                continue
            if advice == "dontneed":
                if vma.is_hugetlb():              # hugetlb zaps whole huge pages only
                    hi &= ~(HPAGE - 1)
                self.contents.forget_private(task, lo, hi)
            elif advice == "free":
                for vaddr in range(lo, hi, PAGE):
                    self.contents.mark_unknown(task, vaddr)

    def seed(self, task: Task, length: int, flags: set[str], data: bytes) -> None:
        """A read-write mapping with ``data`` written at its start, at +2 MiB + 123 and in
        its last page, so the rules that follow meet written pages from the first step."""
        start = self.mmap(task, 0, length, 3, flags)
        assert start is not None
        for vaddr in (start, start + (HPAGE + 123) % length, start + length - PAGE):
            self.write_bytes(task, vaddr, data)

    # -- user accesses --------------------------------------------------------------------------
    def check_signal(self, task: Task, err: SignalError, denied: int | None) -> None:
        """A signal is right only where do_user_addr_fault() refuses the access."""
        assert err.signal == Signal.SIGSEGV and err.vaddr == denied, (
            f"{err}, expected {f'SIGSEGV at {denied:#x}' if denied is not None else 'no signal'}")

    def access(self, task: Task, vaddr: int, write: bool) -> int | None:
        """One user access; the physical address, or None after the expected signal."""
        denied = vaddr if access_denied(vma_lookup(task.mm, vaddr), write) else None
        try:
            paddr = self.k.user_access(task, vaddr, 1 if write else 0)
        except SignalError as err:
            self.check_signal(task, err, denied)
            return None
        assert denied is None, f"access at {vaddr:#x} succeeded, expected SIGSEGV"
        return paddr

    def write_bytes(self, task: Task, vaddr: int, data: bytes) -> None:
        paddr = self.access(task, vaddr, write=True)
        if paddr is not None:
            self.k.physmem.write_bytes(paddr, data)
            self.contents.write(task, vaddr, data)

    def read_bytes(self, task: Task, vaddr: int, length: int) -> None:
        """Every byte reads as the last one written there, or 0 (unless unspecified)."""
        paddr = self.access(task, vaddr, write=False)
        if paddr is None:
            return
        got = self.k.physmem.read_bytes(paddr, length)
        expected = self.contents.expected(task, vaddr, length)
        wrong = [i for i, (byte, want) in enumerate(zip(got, expected))
                 if want is not None and byte != want]
        assert not wrong, (
            f"{task.comm}: byte at {vaddr + wrong[0]:#x} reads {got[wrong[0]]:#04x}, "
            f"expected {expected[wrong[0]]:#04x} ({len(wrong)} bytes differ)")

    def touch(self, task: Task, start: int, length: int, stride: int, write: bool) -> None:
        """fastpath.touch; SIGSEGV exactly at the first refused access; a write makes the
        pages it reached unspecified."""
        length = min(length, stride * MAX_ACCESSES)
        denied = first_denied_access(task.mm, start, length, stride, write)
        reached = start + length
        try:
            fastpath.touch(self.k, task, start, length, stride, 1 if write else 0)
        except SignalError as err:
            self.check_signal(task, err, denied)
            reached = err.vaddr
        else:
            assert denied is None, f"touch succeeded, expected SIGSEGV at {denied:#x}"
        if write:
            for vaddr in range(start, reached, stride):
                self.contents.mark_unknown(task, vaddr)


# --- one process -------------------------------------------------------------------------------

class SingleProcess(KernelMachine):
    """One process mapping, touching, protecting, advising and unmapping anonymous memory.

    ::

        0x600000000000     +64 MiB                                0x7ffff7ff7000
        | MAP_FIXED arena  |      ...      hint-less mmaps grow down <-- | [vvar] ...
    """

    @initialize(thp=st.sampled_from(["always", "madvise", "never"]),
                data=st.binary(min_size=1, max_size=16))
    def start(self, thp: str, data: bytes) -> None:
        self.k.set_knob(f"{THP}/enabled", thp)
        self.task = self.k.spawn("main")
        self.seed(self.task, 4 * HPAGE, {"private", "anonymous"}, data)

    def has_vmas(self) -> bool:
        return bool(user_vmas(self.task.mm))

    @rule(pages=st.integers(1, 4096), huge_units=st.sampled_from([0, 0, 1, 2, 3, 8]),
          placement=st.sampled_from(["hint-less", "hint-less", "fixed", "fixed_noreplace"]),
          where=st.integers(0, ARENA_SIZE // PAGE - 1), prot=st.sampled_from(PROT),
          shared=st.sampled_from([False, False, False, True]),
          populate=st.sampled_from([False, False, False, True]))
    def mmap_anonymous(self, pages: int, huge_units: int, placement: str, where: int,
                       prot: int, shared: bool, populate: bool) -> None:
        """mmap(2): MAP_FIXED replaces what it covers, MAP_FIXED_NOREPLACE over a mapping is
        EEXIST, hint-less 2 MiB multiples are THP-aligned."""
        length = huge_units * HPAGE or pages * PAGE
        flags = {"shared" if shared else "private", "anonymous"}
        addr = 0
        if placement != "hint-less":
            flags.add(placement)
            addr = ARENA + where * PAGE
        if populate and free_pages(self) > LOW_WATER_PAGES + length // PAGE:
            flags.add("populate")
        busy = placement == "fixed_noreplace" and vmas_in_range(self.task.mm, addr, addr + length)
        self.mmap(self.task, addr, length, prot, flags, expected=Errno.EEXIST if busy else None)

    @precondition(has_vmas)
    @rule(where=span_specs(spill=True))
    def munmap_range(self, where: SpanSpec) -> None:
        start, size = self.span_of(self.task, where) or (0, 0)
        self.munmap(self.task, start, size)

    @precondition(has_vmas)
    @rule(where=span_specs(spill=True), prot=st.sampled_from(PROT))
    def mprotect_range(self, where: SpanSpec, prot: int) -> None:
        start, size = self.span_of(self.task, where) or (0, 0)
        self.mprotect(self.task, start, size, prot)

    @precondition(lambda self: self.has_vmas() and memory_to_spare(self))
    @rule(where=span_specs(spill=True),
          advice=st.sampled_from(["dontneed", "dontneed", "free", "hugepage", "hugepage",
                                  "nohugepage", "willneed", "collapse", "collapse"]))
    def madvise_range(self, where: SpanSpec, advice: str) -> None:
        start, size = self.span_of(self.task, where) or (0, 0)
        self.madvise(self.task, start, size, advice)

    @precondition(lambda self: self.has_vmas() and memory_to_spare(self))
    @rule(where=span_specs(spill=True), stride=st.sampled_from(STRIDES), write=st.booleans())
    def touch_range(self, where: SpanSpec, stride: int, write: bool) -> None:
        start, size = self.span_of(self.task, where) or (0, 0)
        self.touch(self.task, start, size, stride, write)

    @precondition(lambda self: self.has_vmas() and memory_to_spare(self))
    @rule(where=place_specs, data=st.binary(min_size=1, max_size=16))
    def write(self, where: PlaceSpec, data: bytes) -> None:
        vaddr = self.place_of(self.task, where, len(data))
        assert vaddr is not None
        self.write_bytes(self.task, vaddr, data)

    @precondition(memory_to_spare)
    @rule(offset=st.integers(0, ARENA_SIZE - PAGE), write=st.booleans())
    def stray_access(self, offset: int, write: bool) -> None:
        """An access anywhere in the arena: SIGSEGV in a hole, else it lands."""
        self.write_bytes(self.task, ARENA + offset, b"\xa5") if write else \
            self.read_bytes(self.task, ARENA + offset, 1)

    @precondition(has_vmas)
    @rule(where=place_specs, length=st.integers(1, 64))
    def read(self, where: PlaceSpec, length: int) -> None:
        vaddr = self.place_of(self.task, where, length)
        assert vaddr is not None
        self.read_bytes(self.task, vaddr, length)

    @rule(setting=st.sampled_from(["always", "madvise", "never"]))
    def set_thp(self, setting: str) -> None:
        self.k.set_knob(f"{THP}/enabled", setting)

    @rule(size_kb=st.sampled_from([16, 64, 512]),
          setting=st.sampled_from(["never", "never", "always", "inherit", "madvise"]))
    def set_mthp(self, size_kb: int, setting: str) -> None:
        self.k.set_knob(f"{THP}/hugepages-{size_kb}kB/enabled", setting)


# --- several processes -------------------------------------------------------------------------

NAMES = ("p0", "p1", "p2", "p3")


class ManyProcesses(KernelMachine):
    """Processes p0..p3 sharing memory by fork (copy-on-write) and by shared anonymous
    mappings, exiting in any order."""

    @initialize(thp=st.sampled_from(["always", "madvise", "never"]),
                data=st.binary(min_size=1, max_size=16))
    def start(self, thp: str, data: bytes) -> None:
        self.k.set_knob(f"{THP}/enabled", thp)
        task = self.k.spawn("p0")
        self.seed(task, 2 * HPAGE, {"private", "anonymous"}, data)
        self.seed(task, HPAGE, {"shared", "anonymous"}, data)

    def alive(self) -> bool:
        return bool(self.k.tasks)

    def free_name(self) -> str:
        return next(name for name in NAMES if name not in self.k.tasks)

    @precondition(lambda self: len(self.k.tasks) < len(NAMES) and memory_to_spare(self))
    @rule(parent=picks)
    def fork(self, parent: int) -> None:
        """fork(2): the child sees the parent's bytes; later writes stay private."""
        task = self.pick_task(parent)
        child = syscalls.sys_fork(self.k, task, self.free_name())
        self.contents.fork(task, child)
        assert child.min_flt == 0

    @precondition(lambda self: len(self.k.tasks) > 1)     # the last one exits at teardown
    @rule(who=picks)
    def exit(self, who: int) -> None:
        task = self.pick_task(who)
        syscalls.sys_exit(self.k, task)
        self.contents.exit(task)

    @precondition(alive)
    @rule(who=picks, pages=st.integers(1, 1024), huge_units=st.sampled_from([0, 0, 1, 2]),
          shared=st.booleans(), prot=st.sampled_from([1, 3, 3, 3]))
    def mmap_anonymous(self, who: int, pages: int, huge_units: int, shared: bool,
                       prot: int) -> None:
        flags = {"shared" if shared else "private", "anonymous"}
        self.mmap(self.pick_task(who), 0, huge_units * HPAGE or pages * PAGE, prot, flags)

    @precondition(alive)
    @rule(who=picks, where=span_specs())
    def munmap_range(self, who: int, where: SpanSpec) -> None:
        task = self.pick_task(who)
        found = self.span_of(task, where)
        if found is not None:
            self.munmap(task, *found)

    @precondition(alive)
    @rule(who=picks, where=span_specs(), prot=st.sampled_from([1, 3]))
    def mprotect_range(self, who: int, where: SpanSpec, prot: int) -> None:
        task = self.pick_task(who)
        found = self.span_of(task, where)
        if found is not None:
            self.mprotect(task, *found, prot)

    @precondition(alive)
    @rule(who=picks, where=span_specs())
    def madvise_dontneed(self, who: int, where: SpanSpec) -> None:
        task = self.pick_task(who)
        found = self.span_of(task, where)
        if found is not None:
            self.madvise(task, *found, "dontneed")

    @precondition(lambda self: self.alive() and memory_to_spare(self))
    @rule(who=picks, where=span_specs(), stride=st.sampled_from(STRIDES), write=st.booleans())
    def touch_range(self, who: int, where: SpanSpec, stride: int, write: bool) -> None:
        task = self.pick_task(who)
        found = self.span_of(task, where)
        if found is not None:
            self.touch(task, *found, stride, write)

    @precondition(lambda self: self.alive() and memory_to_spare(self))
    @rule(who=picks, where=place_specs, data=st.binary(min_size=1, max_size=16))
    def write(self, who: int, where: PlaceSpec, data: bytes) -> None:
        task = self.pick_task(who)
        vaddr = self.place_of(task, where, len(data))
        if vaddr is not None:
            self.write_bytes(task, vaddr, data)

    @precondition(alive)
    @rule(who=picks, where=place_specs, length=st.integers(1, 64))
    def read(self, who: int, where: PlaceSpec, length: int) -> None:
        """Each process reads its own private bytes and everyone's shared ones."""
        task = self.pick_task(who)
        vaddr = self.place_of(task, where, length)
        if vaddr is not None:
            self.read_bytes(task, vaddr, length)

    @rule(setting=st.sampled_from(["always", "madvise", "never"]))
    def set_thp(self, setting: str) -> None:
        self.k.set_knob(f"{THP}/enabled", setting)


# --- hugetlb pools -----------------------------------------------------------------------------

class HugetlbPools(KernelMachine):
    """A process mapping 2 MiB hugetlb pages while the pool grows and shrinks, and a child
    forked from it that touches, zaps and exits: copy-on-write of private huge pages, the
    owner's reservations given back on zap (restore_reserve) and its COW taking a page
    from the child when the pool has none to spare (unmap_ref_private)."""

    @initialize(pool=st.integers(0, 8))
    def start(self, pool: int) -> None:
        self.k.set_knob(POOL, str(pool))
        self.pool_target = pool
        self.task = self.k.spawn("main")
        self.h = self.k.hugetlb.default

    @invariant()
    def persistent_pool_is_what_was_written(self) -> None:
        """set_max_huge_pages(): the persistent pool (nr - surplus) is the size last
        written; pages in use beyond it are surplus and leave the pool when freed."""
        persistent = self.h.nr_huge_pages - self.h.surplus_huge_pages
        assert persistent == self.pool_target, (
            f"persistent pool {persistent} pages, nr_hugepages was set to {self.pool_target}")

    def has_vmas(self) -> bool:
        return bool(user_vmas(self.task.mm))

    def child(self) -> Task | None:
        return self.k.tasks.get("child")

    def child_has_vmas(self) -> bool:
        child = self.child()
        return child is not None and bool(user_vmas(child.mm))

    def forget_stolen(self) -> None:
        """Bytes of the child's pages that the owner took for its COW are gone with them."""
        child = self.child()
        if child is None:
            return
        for vma in user_vmas(child.mm):
            if not vma.hugetlb_resv_unmapped:
                continue
            for haddr in range(vma.start, vma.end, HPAGE):
                _, entry, _ = self.k.pgtables.lookup(child.mm, haddr)
                if not entry & inv.MAPS_A_PAGE:
                    self.contents.forget_private(child, haddr, haddr + HPAGE)

    @precondition(lambda self: self.child() is None)
    @rule()
    def fork(self) -> None:
        child = syscalls.sys_fork(self.k, self.task, "child")
        self.contents.fork(self.task, child)

    @precondition(lambda self: self.child() is not None)
    @rule()
    def child_exits(self) -> None:
        child = self.child()
        assert child is not None
        syscalls.sys_exit(self.k, child)
        self.contents.exit(child)

    @precondition(child_has_vmas)
    @rule(where=span_specs(), write=st.booleans())
    def child_touch(self, where: SpanSpec, write: bool) -> None:
        child = self.child()
        assert child is not None
        start, size = self.span_of(child, where) or (0, 0)
        self.touch(child, start, size, HPAGE, write)

    @precondition(child_has_vmas)
    @rule(where=place_specs, data=st.binary(min_size=1, max_size=16))
    def child_write(self, where: PlaceSpec, data: bytes) -> None:
        child = self.child()
        assert child is not None
        vaddr = self.place_of(child, where, len(data))
        assert vaddr is not None
        self.write_bytes(child, vaddr, data)

    @precondition(child_has_vmas)
    @rule(where=place_specs, length=st.integers(1, 64))
    def child_read(self, where: PlaceSpec, length: int) -> None:
        child = self.child()
        assert child is not None
        vaddr = self.place_of(child, where, length)
        assert vaddr is not None
        self.read_bytes(child, vaddr, length)

    @precondition(child_has_vmas)
    @rule(pick=picks)
    def child_dontneed(self, pick: int) -> None:
        child = self.child()
        assert child is not None
        vma = self.pick_vma(child, pick)
        assert vma is not None
        self.madvise(child, vma.start, vma.length, "dontneed")

    @precondition(has_vmas)
    @rule(pick=picks)
    def dontneed(self, pick: int) -> None:
        vma = self.pick_vma(self.task, pick)
        assert vma is not None
        self.madvise(self.task, vma.start, vma.length, "dontneed")

    @precondition(has_vmas)
    @rule(pick=picks, prot=st.sampled_from([0, 0, 1, 3]))
    def mprotect_vma(self, pick: int, prot: int) -> None:
        """mprotect(2) of a whole VMA: PROT_NONE leaves are not huge_pte_none, so zap,
        fork and exit still free and copy them, and mprotect back reaches them."""
        vma = self.pick_vma(self.task, pick)
        assert vma is not None
        self.mprotect(self.task, vma.start, vma.length, prot)

    @precondition(child_has_vmas)
    @rule(pick=picks, prot=st.sampled_from([0, 1, 3]))
    def child_mprotect(self, pick: int, prot: int) -> None:
        child = self.child()
        assert child is not None
        vma = self.pick_vma(child, pick)
        assert vma is not None
        self.mprotect(child, vma.start, vma.length, prot)

    def release_pools(self) -> None:
        """With no mappings left, pools shrunk to 0 give every page back."""
        self.k.set_knob(OVERCOMMIT, "0")
        self.k.set_knob(POOL, "0")
        for h in self.k.hugetlb.hstates.values():
            assert h.nr_huge_pages == 0, f"{h.name}: {h.nr_huge_pages} pages left in the pool"

    @rule(pages=st.integers(0, 10))
    def resize_pool(self, pages: int) -> None:
        self.k.set_knob(POOL, str(pages))
        self.pool_target = pages

    @rule(pages=st.integers(0, 3))
    def set_overcommit(self, pages: int) -> None:
        self.k.set_knob(OVERCOMMIT, str(pages))

    @rule(huge_pages=st.integers(1, 4), unaligned=st.booleans(), shared=st.booleans(),
          noreserve=st.booleans(), prot=st.sampled_from([1, 3, 3]))
    def mmap_hugetlb(self, huge_pages: int, unaligned: bool, shared: bool, noreserve: bool,
                     prot: int) -> None:
        """hugetlb_reserve_pages(): ENOMEM exactly when neither free pages nor surplus
        within nr_overcommit_hugepages can cover the reservation; nothing changes then."""
        h = self.h
        length = huge_pages * HPAGE - (PAGE if unaligned else 0)
        flags = {"shared" if shared else "private", "anonymous", "hugetlb"}
        if noreserve:
            flags.add("noreserve")
        needed = 0 if noreserve else h.resv_huge_pages + huge_pages - h.free_huge_pages
        short = needed > 0 and h.surplus_huge_pages + needed > h.nr_overcommit_huge_pages
        self.mmap(self.task, 0, length, prot, flags, HPAGE,
                  expected=Errno.ENOMEM if short else None)

    @precondition(has_vmas)
    @rule(pick=picks, offset=st.integers(0, 3), units=st.integers(1, 4), unaligned=st.booleans())
    def munmap_range(self, pick: int, offset: int, units: int, unaligned: bool) -> None:
        """munmap(2) of whole huge pages; a cut off a huge page boundary is EINVAL."""
        vma = self.pick_vma(self.task, pick)
        assert vma is not None
        start = vma.start + (offset % (vma.length // HPAGE)) * HPAGE + (PAGE if unaligned else 0)
        length = units * HPAGE
        cuts = [c for c in (start, start + length) if vma.start < c < vma.end]
        self.munmap(self.task, start, length,
                    expected=Errno.EINVAL if any(c % HPAGE for c in cuts) else None)

    @precondition(has_vmas)
    @rule(where=span_specs(), stride=st.sampled_from([PAGE, 1 << 20, HPAGE]),
          write=st.booleans())
    def touch_range(self, where: SpanSpec, stride: int, write: bool) -> None:
        start, size = self.span_of(self.task, where) or (0, 0)
        self.touch(self.task, start, size, stride, write)
        self.forget_stolen()

    @precondition(has_vmas)
    @rule(where=place_specs, data=st.binary(min_size=1, max_size=16))
    def write(self, where: PlaceSpec, data: bytes) -> None:
        vaddr = self.place_of(self.task, where, len(data))
        assert vaddr is not None
        self.write_bytes(self.task, vaddr, data)
        self.forget_stolen()

    @precondition(has_vmas)
    @rule(where=place_specs, length=st.integers(1, 64))
    def read(self, where: PlaceSpec, length: int) -> None:
        vaddr = self.place_of(self.task, where, length)
        assert vaddr is not None
        self.read_bytes(self.task, vaddr, length)

    def check_signal(self, task: Task, err: SignalError, denied: int | None) -> None:
        """SIGBUS only where a page is needed without a reservation and the pool has none
        to spare (alloc_hugetlb_folio -> -ENOSPC): a MAP_NORESERVE mapping, a child's
        private mapping (no reservation map), a COW copy; or in a child's mapping that
        the owner took a page from (HPAGE_RESV_UNMAPPED)."""
        if err.signal != Signal.SIGBUS:
            super().check_signal(task, err, denied)
            return
        vma = vma_lookup(task.mm, err.vaddr)
        assert vma is not None and vma.is_hugetlb(), f"{err} outside a hugetlb mapping"
        assert denied is None or err.vaddr < denied, f"{err} before the expected SIGSEGV"
        if vma.hugetlb_resv_unmapped:
            return
        h = vma.file.hstate
        reserved = vma.file.owner and vma.file.index(vma, err.vaddr) in vma.file.resv.reserved
        assert not reserved, f"{err} for a page with a reservation"
        assert h.free_huge_pages - h.resv_huge_pages <= 0 or not h.free_list, (
            f"{err} with unreserved free pages")
        assert h.surplus_huge_pages >= h.nr_overcommit_huge_pages, (
            f"{err} while surplus pages were allowed")


# --- the test cases ------------------------------------------------------------------------------

_SETTINGS = {"deadline": None,
             "suppress_health_check": [HealthCheck.too_slow, HealthCheck.filter_too_much]}
TestSingleProcess = SingleProcess.TestCase
TestSingleProcess.settings = settings(max_examples=40, stateful_step_count=30, **_SETTINGS)
TestManyProcesses = ManyProcesses.TestCase
TestManyProcesses.settings = settings(max_examples=30, stateful_step_count=30, **_SETTINGS)
TestHugetlbPools = HugetlbPools.TestCase
TestHugetlbPools.settings = settings(max_examples=40, stateful_step_count=25, **_SETTINGS)


# --- regressions found by the machines above ------------------------------------------------------------

def test_splitting_a_prot_none_thp_keeps_its_pages_mapped() -> None:
    """__split_huge_pmd_locked() builds the PTEs from the VMA's PAGE_NONE protection: all
    512 stay mapped (PROT_NONE entries are pte_present()), so munmap frees the THP.

    ::

        a          a+4K                                  a+2M
        |  r--     |  ---  (511 PROT_NONE PTEs)          |
    """
    k = Machine(MachineConfig(ram=RAM, sysfs={f"{THP}/enabled": "always"})).kernel
    baseline = inv.Baseline.capture(k)
    task = k.spawn("main")
    a = syscalls.sys_mmap(k, task, 0, HPAGE, 3, frozenset({"private", "anonymous"}))
    k.user_access(task, a, 1)                               # one THP
    syscalls.sys_mprotect(k, task, a, HPAGE, 0)             # change_huge_pmd(): PROT_NONE
    syscalls.sys_mprotect(k, task, a, PAGE, 1)              # the VMA split splits the PMD
    _, pte, _ = k.pgtables.lookup(task.mm, a + PAGE)
    assert pte & inv.MAPS_A_PAGE, f"PTE {pte:#x} maps a page but is neither P nor PROT_NONE"
    syscalls.sys_munmap(k, task, a, HPAGE)
    syscalls.sys_exit(k, task)
    inv.check_all_freed(k, baseline)
