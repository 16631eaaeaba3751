"""``pagewalk replay``: run a recording through the simulated kernel and MMU.

The process is rebuilt as the native exec left it (record/native.py): the program, its
interpreter, [vvar]/[vdso] and the stack at their native addresses (MAP_FIXED maps of
files of the recorded sizes), the break at the native start_brk, and the pages present
at exec faulted in uncounted. Then, in program order, each memory system call goes
through kernel/syscalls.py (where the simulated kernel chooses the address, as Linux
would natively, and :class:`AddressMap` keeps where each recorded range went) and each
access goes through ``Kernel.user_access``: the MMU's TLBs, page-walk caches and walk,
and on a fault do_user_addr_fault -> handle_mm_fault (demand paging, THP, COW).

Not modelled here: the stack's growth by expand_downwards (a fault below the stack maps
the pages between as anonymous memory), fork/clone (NotImplementedStep), and the
mappings valgrind adds to its client (vgpreload_*.so: neither mapped nor accessed).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from pagewalk.errors import Location, NotImplementedStep, SignalError, SyscallError, TraceError
from pagewalk.hw.mmu import MmuStat
from pagewalk.kernel import syscalls
from pagewalk.kernel.exec_image import START_IMAGE
from pagewalk.kernel.task import Task
from pagewalk.machine import Machine, MachineConfig
from pagewalk.mm.mremap import MREMAP_DONTUNMAP, MREMAP_FIXED
from pagewalk.mm.types import VmFlags
from pagewalk.mm.vma import find_vma, vma_lookup
from pagewalk.proc.task_mmu import anon_huge_pages, task_mem
from pagewalk.record.address_map import AddressMap
from pagewalk.record.fastloop import run_accesses
from pagewalk.record.native import MapLine
from pagewalk.record.recfile import End, read_recording
from pagewalk.record.valgrind_log import Syscall

THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"
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


@dataclass(slots=True)
class ReplayResult:
    """The /proc figures at exit (sizes in kB, as /proc prints them), the TLB counts, and
    what could not be replayed exactly."""

    figures: dict[str, int]
    tlb: dict[str, int]
    accesses: int = 0
    untranslated: int = 0            # accesses outside every mapped recorded range
    signals: int = 0                 # accesses the simulated kernel answered with a signal
    diverged: list[str] = field(default_factory=list)   # syscalls the simulation refused
    skipped: list[str] = field(default_factory=list)    # syscalls not replayed, and why

    def to_json(self) -> dict[str, object]:
        return {**self.figures, **self.tlb, "accesses": self.accesses,
                "untranslated": self.untranslated, "signals": self.signals,
                "diverged": self.diverged, "skipped": self.skipped}


def _page_up(size: int) -> int:
    return (size + 4095) & ~4095


def _prot(perms: str) -> int:
    return sum(PROT[c] for c in perms[:3] if c in PROT)


class Replay:
    """One replay: the machine, the replayed process and the address translation."""

    def __init__(self, thp: str | None = None, tlb_model: str | None = None) -> None:
        sysfs = {THP_ENABLED: thp} if thp else {}
        self.machine = Machine(MachineConfig(sysfs=sysfs))
        if tlb_model is not None:
            from pagewalk.hw.tlb import TlbHierarchy
            from pagewalk.trace.presets import load_model
            self.machine.mmu.tlb = TlbHierarchy(load_model(tlb_model).tlb)
        self.kernel = self.machine.kernel
        self.task: Task = self.kernel.spawn("main")
        self.map = AddressMap()
        self.files: dict[str, int] = {}
        self.created: set[str] = set()
        self.rec_brk_start: int | None = None
        self.stack_end = 0
        self.result = ReplayResult({}, {})

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
        """One run of recorded accesses through the MMU, with demand paging."""
        rec = words & np.uint64((1 << 57) - 1)
        sim, valid = self.map.translate_array(rec)
        kinds = (words >> np.uint64(62)).astype(np.int64)
        self.result.accesses += int(words.shape[0])
        self.result.untranslated += int((~valid).sum())
        vaddrs = sim[valid].astype(np.int64)
        if self.kernel.pti:            # the compiled walk starts at the user PGD only
            signalled = self._accesses_python(vaddrs.tolist(), kinds[valid].tolist())
        else:
            signalled = run_accesses(self.kernel, self.task, vaddrs, kinds[valid])
        for vaddr, kind in signalled:
            if not self._grow_stack(vaddr, kind):
                self.result.signals += 1

    def _accesses_python(self, vaddrs: list[int], kinds: list[int]) -> list[tuple[int, int]]:
        signalled: list[tuple[int, int]] = []
        for vaddr, kind in zip(vaddrs, kinds, strict=True):
            try:
                self.kernel.user_access(self.task, vaddr, kind)
            except SignalError:
                signalled.append((vaddr, kind))
        return signalled

    def _grow_stack(self, vaddr: int, kind: int) -> bool:
        """A fault below the stack: map the pages up to it, then retry (expand_downwards
        is not modelled)."""
        vma = find_vma(self.task.mm, vaddr)
        if vma is None or vma.end != self.stack_end or vaddr >= vma.start or \
                vaddr < self.stack_end - STACK_SPAN:
            return False
        page = vaddr & ~4095
        syscalls.sys_mmap(self.kernel, self.task, page, vma.start - page, 3,
                          frozenset({"private", "anonymous", "fixed"}))
        try:
            self.kernel.user_access(self.task, vaddr, kind)
        except SignalError:
            return False
        return True

    # -- the figures ----------------------------------------------------------------------
    def finish(self) -> ReplayResult:
        """The figures at exit, before exit_mm() frees anything."""
        task = self.task
        status = task_mem(task)
        figures = {"minflt": task.min_flt, "VmHWM": status["VmHWM"],
                   "RssAnon": status["RssAnon"], "RssFile": status["RssFile"],
                   "VmPTE": status["VmPTE"],
                   "AnonHugePages": anon_huge_pages(self.kernel, task.mm) >> 10}
        c = task.mmu_counters
        accesses = int(c[MmuStat.ACCESSES])
        self.result.figures = figures
        self.result.tlb = {"tlb_accesses": accesses,
                           "l1_misses": accesses - int(c[MmuStat.L1_HITS]),
                           "stlb_misses": int(c[MmuStat.WALKS]),
                           "walk_refs": int(c[MmuStat.WALK_REFS])}
        return self.result


def replay_recording(path: str | os.PathLike[str], thp: str | None = None,
                     tlb_model: str | None = None) -> ReplayResult:
    """Replay the recording at ``path`` (bad input: TraceError naming the file)."""
    run: Replay | None = None
    for event in read_recording(path):
        if isinstance(event, dict):
            if run is None:
                if event.get("format") != "pagewalk-recording":
                    raise TraceError("the first frame is not a recording header",
                                     _where(path))
                run = Replay(thp, tlb_model)
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
