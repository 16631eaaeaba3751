"""``pagewalk replay``: run a recording through the simulated kernel and MMU.

The process is rebuilt as the native exec left it (record/native.py): the program, its
interpreter, [vvar]/[vdso] and the stack at their native addresses (MAP_FIXED maps of
files of the recorded sizes), the break at the native start_brk, and the pages present
at exec faulted in uncounted. Then, in program order, each memory system call goes
through kernel/syscalls.py (where the simulated kernel chooses the address, as Linux
would natively, and :class:`AddressMap` keeps where each recorded range went) and each
access goes through ``Kernel.user_access``: the MMU's TLBs, page-walk caches and walk,
and on a fault do_user_addr_fault -> handle_mm_fault (demand paging, THP, COW).

The machine is the one a scenario's ``system`` section describes (scenario/schema.py
SystemConfig: RAM, paging levels, PTI, PCID, PKU, sysfs knobs such as THP and the hugetlb
pools, swap, a memory cgroup limit), booted as scenario/runner.py boots it; the
replay's own options (THP mode, hugetlb pools, paging levels) override it. With
``measure_every`` the /proc figures and the MMU's counters are read every N recorded
accesses and at exit: each access run is cut at the N boundaries, and the pieces go
through the same compiled loop in the same order, so the cut changes no figure.

Not modelled here: the stack's growth by expand_downwards (an access in the gap below
the stack first maps the pages up to it as anonymous memory, in program order),
fork/clone (NotImplementedStep), and the mappings valgrind adds to its client
(vgpreload_*.so: neither mapped nor accessed).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from pagewalk.errors import (
    ConfigError,
    Location,
    NotImplementedStep,
    SignalError,
    SyscallError,
    TraceError,
)
from pagewalk.hw.mmu import MmuStat
from pagewalk.kernel import syscalls
from pagewalk.kernel.exec_image import START_IMAGE
from pagewalk.kernel.task import Task
from pagewalk.machine import Machine, MachineConfig
from pagewalk.mm import memcontrol, swap_state, swapfile
from pagewalk.mm.mremap import MREMAP_DONTUNMAP, MREMAP_FIXED
from pagewalk.mm.types import VmFlags
from pagewalk.mm.vma import find_vma, prev_of_addr, vma_lookup
from pagewalk.proc.meminfo import meminfo
from pagewalk.proc.task_mmu import anon_huge_pages, task_mem
from pagewalk.record.address_map import AddressMap
from pagewalk.record.fastloop import run_accesses
from pagewalk.record.native import MapLine
from pagewalk.record.recfile import End, read_recording
from pagewalk.record.system import replay_system
from pagewalk.record.valgrind_log import Syscall
from pagewalk.scenario.schema import SystemConfig

PROT = {"r": 1, "w": 2, "x": 4}
MAP_SHARED, MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS = 0x1, 0x2, 0x10, 0x20
MAP_NORESERVE, MAP_POPULATE, MAP_FIXED_NOREPLACE = 0x4000, 0x8000, 0x100000
#: include/uapi/asm-generic/mman-common.h: the advice the simulated kernel knows
MADVICE = {0: "normal", 1: "random", 2: "sequential", 3: "willneed", 4: "dontneed",
           8: "free", 9: "remove", 14: "hugepage", 15: "nohugepage", 20: "cold",
           21: "pageout", 22: "populate_read", 23: "populate_write", 25: "collapse"}
SPECIAL = ("[vvar]", "[vvar_vclock]", "[vdso]")
STACK_SPAN = 8 << 20                 # RLIMIT_STACK's default: how far the stack may grow
VALGRIND_FILES = "/valgrind/"        # vgpreload_*.so, which only valgrind's client maps
FORK_CALLS = ("clone", "fork", "vfork", "clone3")
#: one point of the time series: the recorded accesses so far, then /proc and MMU figures
SERIES_FIELDS = ("accesses", "VmRSS", "RssAnon", "VmPTE", "AnonHugePages", "minflt",
                 "majflt", "l1_misses", "stlb_misses", "walk_refs")
#: the machine's /proc/meminfo lines kept at exit: RAM and the hugetlb pools
SYSTEM_FIELDS = ("MemTotal", "MemFree", "HugePages_Total", "HugePages_Free", "Hugetlb")


@dataclass(slots=True)
class ReplayResult:
    """The /proc figures at exit (sizes in kB, as /proc prints them), the TLB counts, the
    machine's :data:`SYSTEM_FIELDS` of /proc/meminfo, the time series, and what could
    not be replayed exactly.

    ``series`` holds one dict of :data:`SERIES_FIELDS` per measurement, in strictly
    increasing ``accesses`` (recorded accesses replayed so far, those outside every
    mapping included): one every ``measure_every`` accesses, and the last at exit (it
    replaces a point at the same count: syscalls after the last access may change it).
    Without ``measure_every`` it holds the exit point alone. l1_misses are translations
    that missed the L1 TLB of their kind (dTLB for loads and stores, iTLB for fetches),
    stlb_misses those that missed the STLB too (walks), walk_refs the walks' reads of
    paging-structure entries; all three count the retry after each fault.
    """

    figures: dict[str, int]
    tlb: dict[str, int]
    system: dict[str, int] = field(default_factory=dict)
    series: list[dict[str, int]] = field(default_factory=list)
    measure_every: int | None = None     # None: to_json leaves the series out
    accesses: int = 0
    untranslated: int = 0            # accesses outside every mapped recorded range
    signals: int = 0                 # accesses the simulated kernel answered with a signal
    diverged: list[str] = field(default_factory=list)   # syscalls the simulation refused
    skipped: list[str] = field(default_factory=list)    # syscalls not replayed, and why

    def to_json(self) -> dict[str, object]:
        doc: dict[str, object] = {
            **self.figures, **self.tlb, **self.system, "accesses": self.accesses,
            "untranslated": self.untranslated, "signals": self.signals,
            "diverged": self.diverged, "skipped": self.skipped}
        if self.measure_every is not None:
            doc["series"] = self.series
        return doc


def _page_up(size: int) -> int:
    return (size + 4095) & ~4095


def _prot(perms: str) -> int:
    return sum(PROT[c] for c in perms[:3] if c in PROT)


class Replay:
    """One replay: the machine, the replayed process and the address translation."""

    def __init__(self, system: SystemConfig | None = None, tlb_model: str | None = None,
                 measure_every: int | None = None) -> None:
        system = system or SystemConfig()
        # booted as scenario/runner.py ScenarioRun boots a scenario's system
        self.machine = Machine(MachineConfig(
            ram=system.ram, paging=system.paging, pti=system.pti, pcid=system.pcid,
            pku=system.pku, sysfs=dict(system.sysfs)))
        if tlb_model is not None:
            from pagewalk.hw.tlb import TlbHierarchy
            from pagewalk.trace.presets import load_model
            self.machine.mmu.tlb = TlbHierarchy(load_model(tlb_model).tlb)
        self.kernel = self.machine.kernel
        if system.swap:                    # swapon before the program starts
            self.kernel.swap = swap_state.SwapSpace(swapfile.swapon(system.swap))
        self.task: Task = self.kernel.spawn("main")
        if system.memory_limit:            # main joins its cgroup after it started
            memcontrol.mem_cgroup_create(self.kernel, system.memory_limit)
        self.measure_every = measure_every
        self.map = AddressMap()
        self.files: dict[str, int] = {}
        self.created: set[str] = set()
        self.rec_brk_start: int | None = None
        self.stack_end = 0
        self.result = ReplayResult({}, {}, measure_every=measure_every)

    # -- the process at exec --------------------------------------------------------------
    def exec_native(self, header: dict[str, object]) -> None:
        """Rebuild the native process at exec and map valgrind's layout onto it."""
        native = header["native"]
        valgrind = header["valgrind"]
        assert isinstance(native, dict) and isinstance(valgrind, dict)
        files = header.get("files", {})
        assert isinstance(files, dict)
        self.files.update({str(p): int(s) for p, s in files.items()})
        maps = [MapLine.from_json(m) for m in native["maps"]]
        k, task = self.kernel, self.task
        for spec in START_IMAGE:                       # the simulator's own start image goes
            if spec.kind not in ("vvar", "vdso"):
                syscalls.sys_munmap(k, task, spec.start, spec.end - spec.start)
        self._move_special(maps)
        task.mm.start_brk = task.mm.brk = int(native["start_brk"])
        for line in maps:
            if line.path in SPECIAL or line.start >> 47:
                continue
            self._map_fixed(line)
            if line.path == "[stack]":
                self.stack_end = line.end
        self._prefault([(int(v), bool(f)) for v, f in native["present"]])
        self._map_valgrind_layout(maps, [MapLine.from_json(m) for m in valgrind["maps"]],
                                  int(valgrind["stack_end"]))

    def _move_special(self, maps: list[MapLine]) -> None:
        """[vvar], [vvar_vclock] and [vdso] to their native places (special_mapping_mremap
        allows moving them whole)."""
        k, task = self.kernel, self.task
        for spec in START_IMAGE:
            if spec.kind not in ("vvar", "vdso"):
                continue
            target = next((m for m in maps if m.path == spec.name), None)
            length = spec.end - spec.start
            try:
                if target is None or target.end - target.start != length:
                    syscalls.sys_munmap(k, task, spec.start, length)
                elif target.start != spec.start:
                    syscalls.sys_mremap(k, task, spec.start, length, length,
                                        1 | MREMAP_FIXED, target.start)
            except SyscallError as err:
                self.result.skipped.append(f"moving {spec.name}: {err.message}")

    def _file(self, path: str) -> None:
        if path in self.created:
            return
        size = self.files.get(path, 0)
        syscalls.sys_file_create(self.kernel, self.task, path, max(size, 1), "disk")
        self.created.add(path)

    def _map_fixed(self, line: MapLine) -> None:
        shared = line.perms[3] == "s"
        flags = {"shared" if shared else "private", "fixed"}
        path = line.path if line.path.startswith("/") else None
        if path is None:
            flags.add("anonymous")
        else:
            self._file(path)
        syscalls.sys_mmap(self.kernel, self.task, line.start, line.end - line.start,
                          _prot(line.perms), frozenset(flags), None, path, line.offset)

    def _prefault(self, present: list[tuple[int, bool]]) -> None:
        """The pages present at the native exec stop, faulted in without counting (execve
        put them there: the argument pages, the ELF loader's bss clearing)."""
        k, task = self.kernel, self.task
        for vaddr, file_page in present:
            vma = vma_lookup(task.mm, vaddr)
            if vma is None:
                continue
            write = not file_page and bool(vma.flags & VmFlags.WRITE)
            k.user_access(task, vaddr, 1 if write else 0)
        task.min_flt = task.maj_flt = 0
        task.mmu_counters[:] = 0

    def _map_valgrind_layout(self, maps: list[MapLine], valgrind: list[MapLine],
                             stack_end: int) -> None:
        """Valgrind's client mappings of each file the native exec mapped (program,
        interpreter), shifted as a whole; its client stack onto the native stack."""
        for path in {m.path for m in maps if m.path.startswith("/")}:
            rec = [m for m in valgrind if m.path == path]
            sim = [m for m in maps if m.path == path]
            if not rec:
                continue
            rec_start, rec_end = min(m.start for m in rec), max(m.end for m in rec)
            sim_start, sim_end = min(m.start for m in sim), max(m.end for m in sim)
            self.map.add(rec_start, rec_end, sim_start)
            bss = next((m for m in maps if m.start == sim_end and not m.path), None)
            if bss is not None:                # the anonymous bss after the last segment
                self.map.add(rec_end, rec_end + bss.end - bss.start, sim_end)
        if stack_end and self.stack_end:
            self.map.add(stack_end - STACK_SPAN, stack_end, self.stack_end - STACK_SPAN)

    # -- system calls ---------------------------------------------------------------------
    def syscall(self, call: Syscall) -> bool:
        """Replay one call; False at the program's exit."""
        if call.name in ("exit", "exit_group"):
            return False
        if call.name in FORK_CALLS:
            raise NotImplementedStep(f"the recording forks ({call.name}); replaying more than "
                                     "one process is not simulated yet")
        if call.errno:
            self.result.skipped.append(f"{call.name} failed natively (errno {call.errno})")
            return True
        handler = getattr(self, "sys_" + call.name, None)
        if handler is None:
            self.result.skipped.append(f"{call.name}: not replayed")
            return True
        try:
            handler(call)
        except SyscallError as err:
            self.result.diverged.append(f"{call.name}{call.args}: {err.message}")
        return True

    def _sim(self, rec: int) -> int | None:
        return self.map.translate(rec)

    def sys_mmap(self, call: Syscall) -> None:
        addr, length, prot, flags, _, offset = call.args[:6]
        if call.path is not None and VALGRIND_FILES in call.path:
            self.map.remove(call.result, call.result + _page_up(length))
            return
        names = {"shared" if flags & MAP_SHARED else "private"}
        if call.path is None:
            names.add("anonymous")
        else:
            self._file(call.path)
        for bit, name in ((MAP_NORESERVE, "noreserve"), (MAP_POPULATE, "populate")):
            if flags & bit:
                names.add(name)
        hint = 0
        if flags & (MAP_FIXED | MAP_FIXED_NOREPLACE):
            hint = self._sim(addr) or 0
            if hint:
                names.add("fixed" if flags & MAP_FIXED else "fixed_noreplace")
        got = syscalls.sys_mmap(self.kernel, self.task, hint, length, prot, frozenset(names),
                                None, call.path, offset)
        self.map.add(call.result, call.result + _page_up(length), got)

    def sys_munmap(self, call: Syscall) -> None:
        addr, length = call.args[:2]
        sim = self._sim(addr)
        if sim is not None:
            syscalls.sys_munmap(self.kernel, self.task, sim, length)
        self.map.remove(addr, addr + _page_up(length))

    def sys_mprotect(self, call: Syscall) -> None:
        sim = self._sim(call.args[0])
        if sim is not None:
            syscalls.sys_mprotect(self.kernel, self.task, sim, call.args[1], call.args[2])

    def sys_madvise(self, call: Syscall) -> None:
        sim = self._sim(call.args[0])
        advice = MADVICE.get(call.args[2])
        if advice is None:
            self.result.skipped.append(f"madvise advice {call.args[2]}: not simulated")
            return
        if sim is not None:
            syscalls.sys_madvise(self.kernel, self.task, sim, call.args[1], advice)

    def sys_brk(self, call: Syscall) -> None:
        """The recorded break moves by as much as the native one (valgrind's heap starts
        elsewhere); the first brk(0) tells where valgrind's starts."""
        if self.rec_brk_start is None:
            self.rec_brk_start = call.result
        requested = call.args[0]
        if requested == 0 or requested != call.result:
            return                         # a query, or a refusal under valgrind
        mm = self.task.mm
        target = mm.start_brk + requested - self.rec_brk_start
        syscalls.sys_sbrk(self.kernel, self.task, target - mm.brk)
        self.map.add(self.rec_brk_start, _page_up(requested), mm.start_brk)

    def sys_mremap(self, call: Syscall) -> None:
        old, old_length, new_length, flags = call.args[:4]
        new_addr = call.args[4] if len(call.args) > 4 else 0
        sim_old = self._sim(old)
        if sim_old is None:
            return
        sim_new = (self._sim(new_addr) or 0) if flags & MREMAP_FIXED else 0
        got = syscalls.sys_mremap(self.kernel, self.task, sim_old, old_length, new_length,
                                  flags, sim_new)
        if not flags & MREMAP_DONTUNMAP:
            self.map.remove(old, old + _page_up(old_length))
        self.map.add(call.result, call.result + _page_up(new_length), got)

    def sys_mlock(self, call: Syscall) -> None:
        sim = self._sim(call.args[0])
        if sim is not None:
            syscalls.sys_mlock(self.kernel, self.task, sim, call.args[1], False)

    def sys_mlock2(self, call: Syscall) -> None:
        sim = self._sim(call.args[0])
        if sim is not None:
            syscalls.sys_mlock(self.kernel, self.task, sim, call.args[1],
                               bool(call.args[2] & 1))

    def sys_munlock(self, call: Syscall) -> None:
        sim = self._sim(call.args[0])
        if sim is not None:
            syscalls.sys_munlock(self.kernel, self.task, sim, call.args[1])

    def sys_mlockall(self, call: Syscall) -> None:
        syscalls.sys_mlockall(self.kernel, self.task, call.args[0])

    def sys_munlockall(self, call: Syscall) -> None:
        syscalls.sys_munlockall(self.kernel, self.task)

    # -- accesses -------------------------------------------------------------------------
    def accesses(self, words: npt.NDArray[np.uint64]) -> None:
        """One run of recorded accesses through the MMU, with demand paging; cut where the
        count of accesses reaches a multiple of ``measure_every``, measured there."""
        for piece, measure in self._pieces(words):
            self._run(piece)
            if measure:
                self.result.series.append(self._point())

    def _pieces(self, words: npt.NDArray[np.uint64]
                ) -> Iterator[tuple[npt.NDArray[np.uint64], bool]]:
        """``words`` cut after each access whose count is a multiple of measure_every:
        (piece, whether a measurement follows it)."""
        every, start, length = self.measure_every, self.result.accesses, int(words.shape[0])
        if every is None:
            yield words, False
            return
        cut = 0
        for boundary in range((start // every + 1) * every, start + length + 1, every):
            yield words[cut:boundary - start], True
            cut = boundary - start
        if cut < length:
            yield words[cut:], False

    def _run(self, words: npt.NDArray[np.uint64]) -> None:
        self.result.accesses += int(words.shape[0])
        if self.kernel.pti:            # the compiled walk starts at the user PGD only
            self._run_reference(words)
        else:
            self._run_compiled(words)

    def _run_compiled(self, words: npt.NDArray[np.uint64]) -> None:
        """The compiled loop (record/fastloop.py), which does what _run_reference does."""
        signalled, untranslated = run_accesses(self.kernel, self.task, words, self.map,
                                               self._stack_gap, self._grow_stack)
        self.result.untranslated += untranslated
        self.result.signals += len(signalled)

    def _run_reference(self, words: npt.NDArray[np.uint64]) -> None:
        """The readable path: every recorded address moved by the AddressMap, every access
        through Kernel.user_access; the stack grown before the first access below it."""
        rec = words & np.uint64((1 << 57) - 1)
        sim, valid = self.map.translate_array(rec)
        kinds = (words >> np.uint64(62)).astype(np.int64)
        self.result.untranslated += int((~valid).sum())
        vaddrs = sim[valid].astype(np.int64)
        kinds = kinds[valid]
        done, length = 0, int(vaddrs.shape[0])
        while done < length:
            below = self._first_below_stack(vaddrs, done)
            signalled = self._accesses_python(vaddrs[done:below].tolist(),
                                              kinds[done:below].tolist())
            self.result.signals += len(signalled)
            if below < length:
                self._grow_stack(int(vaddrs[below]))
            done = below

    def _accesses_python(self, vaddrs: list[int], kinds: list[int]) -> list[tuple[int, int]]:
        signalled: list[tuple[int, int]] = []
        for vaddr, kind in zip(vaddrs, kinds, strict=True):
            try:
                self.kernel.user_access(self.task, vaddr, kind)
            except SignalError:
                signalled.append((vaddr, kind))
        return signalled

    def _stack_gap(self) -> tuple[int, int]:
        """The gap below the stack where an access grows it: [low, start of the stack),
        within STACK_SPAN of its top and above the mapping before it; (0, 0) without one."""
        stack = vma_lookup(self.task.mm, self.stack_end - 1) if self.stack_end else None
        if stack is None:
            return 0, 0
        prev = prev_of_addr(self.task.mm, stack.start)
        return max(self.stack_end - STACK_SPAN, prev.end if prev is not None else 0), stack.start

    def _first_below_stack(self, vaddrs: npt.NDArray[np.int64], start: int) -> int:
        """The index of the first access from ``start`` on into the gap below the stack,
        or len(vaddrs)."""
        low, high = self._stack_gap()
        tail = vaddrs[start:]
        hits = np.flatnonzero((tail >= low) & (tail < high))
        return start + int(hits[0]) if hits.shape[0] else int(vaddrs.shape[0])

    def _grow_stack(self, vaddr: int) -> None:
        """Map the pages from ``vaddr`` up to the stack before the access that needs them:
        expand_downwards is not modelled, but like it this happens in program order, at
        the first access below the stack (the access then faults as usual)."""
        stack = find_vma(self.task.mm, vaddr)
        assert stack is not None           # _first_below_stack found the stack above vaddr
        page = vaddr & ~4095
        syscalls.sys_mmap(self.kernel, self.task, page, stack.start - page, 3,
                          frozenset({"private", "anonymous", "fixed"}))

    # -- the figures ----------------------------------------------------------------------
    def _figures(self) -> tuple[dict[str, int], dict[str, int]]:
        """The /proc figures (task_mem, smaps_rollup's AnonHugePages; kB) and the MMU's
        counters of the replayed task, now."""
        task = self.task
        status = task_mem(task)
        figures = {"minflt": task.min_flt, "majflt": task.maj_flt, "VmHWM": status["VmHWM"],
                   "VmRSS": status["VmRSS"], "RssAnon": status["RssAnon"],
                   "RssFile": status["RssFile"], "VmPTE": status["VmPTE"],
                   "AnonHugePages": anon_huge_pages(self.kernel, task.mm) >> 10}
        c = task.mmu_counters
        accesses = int(c[MmuStat.ACCESSES])
        tlb = {"tlb_accesses": accesses, "l1_misses": accesses - int(c[MmuStat.L1_HITS]),
               "stlb_misses": int(c[MmuStat.WALKS]), "walk_refs": int(c[MmuStat.WALK_REFS])}
        return figures, tlb

    def _point(self) -> dict[str, int]:
        figures, tlb = self._figures()
        now = {"accesses": self.result.accesses, **figures, **tlb}
        return {key: now[key] for key in SERIES_FIELDS}

    def finish(self) -> ReplayResult:
        """The figures at exit, before exit_mm() frees anything; the series' last point."""
        self.result.figures, self.result.tlb = self._figures()
        lines = meminfo(self.kernel)
        self.result.system = {key: lines[key] for key in SYSTEM_FIELDS}
        series = self.result.series
        if series and series[-1]["accesses"] == self.result.accesses:
            series.pop()                   # the exit point is the later state
        series.append(self._point())
        return self.result


def replay_recording(path: str | os.PathLike[str], thp: str | None = None,
                     tlb_model: str | None = None, *,
                     system: SystemConfig | str | os.PathLike[str] | None = None,
                     hugetlb: Mapping[int, int] | None = None, paging: int | None = None,
                     sysfs: Mapping[str, str] | None = None,
                     measure_every: int | None = None) -> ReplayResult:
    """Replay the recording at ``path`` and return the figures at exit and the series.

    The machine: :func:`replay_system` (``system``: a SystemConfig or the path of a
    scenario file whose ``system`` section is booted; ``sysfs``: {knob path: value};
    ``thp``: always, madvise or never; ``hugetlb``: {page size in bytes: nr_hugepages};
    ``paging``: 4 or 5), with the TLB model ``tlb_model`` (a preset name or a model
    file; None: the reference TLBs). ``measure_every``: also measure every that many
    recorded accesses (ReplayResult.series; without it the series is the exit point).
    Bad input: TraceError naming the recording, ScenarioError naming the scenario file
    and field, ConfigError naming the option."""
    if measure_every is not None and (isinstance(measure_every, bool) or
                                      not isinstance(measure_every, int) or measure_every < 1):
        raise ConfigError(f"expected a number of accesses >= 1, got {measure_every!r}",
                          Location(field="measure_every"))
    machine = replay_system(system, thp, hugetlb, paging, sysfs)
    run: Replay | None = None
    for event in read_recording(path):
        if isinstance(event, dict):
            if run is None:
                if event.get("format") != "pagewalk-recording":
                    raise TraceError("the first frame is not a recording header",
                                     _where(path))
                run = Replay(machine, tlb_model, measure_every)
                run.exec_native(event)
            elif "file" in event:
                run.files[str(event["file"])] = int(event["size"])
            continue
        if run is None:
            raise TraceError("accesses before the recording's header", _where(path))
        if isinstance(event, End):
            break
        if isinstance(event, Syscall):
            if not run.syscall(event):
                break
        else:
            run.accesses(event)
    if run is None:
        raise TraceError("the recording holds no header", _where(path))
    return run.finish()


def _where(path: str | os.PathLike[str]) -> Location:
    return Location(file=str(path))
