"""Run a scenario on the live kernel of this machine; report in the schema of scenario.md.

The live twin of ``pagewalk.scenario.runner``, and the same method as the kernel
oracle (shared/oracle/run_on_kernel.py) that made the reference reports:

* every scenario process is a probe process (probe.py) started with ASLR off, so
  ``main`` begins with the spec's start image; steps are sent to it as commands;
* a ``measure`` reads /proc/PID/{status,smaps_rollup,stat}, /proc/meminfo and
  /proc/vmstat from here, so measuring adds no fault to a measured process;
* process sizes are changes from main's values at scenario start, fault counters
  count from the process's start (a child: from its fork); ``HugePages_*`` are
  absolute, the vmstat events changes since the start;
* after a fork both probes re-touch their own pages (COW-breaking them, as the
  simulator's runner models in ``_warm_image``); those faults are taken out of the
  processes' counters and of ``pgfault``, and so are the measuring process's own
  faults (getrusage), since ``pgfault`` is system-wide;
* version 2 files (files.py): the step's probe creates a file, this process holds it
  open, and every probe reaches it as ``/proc/<this process>/fd/N``; with a disk file
  every step, and each faulting access of a touch, waits until the root disk has no
  read in flight;
* version 3 memory pressure (pressure.py): main joins the scenario's memory cgroup and
  is pinned to one CPU before its baseline (children inherit both); every CPU's folio
  batches are drained before each step; with a swap file every step and each faulting
  access of a touch also wait until the root disk has no write in flight (swap-out
  writeback done: an infinitely fast disk). A probe whose channel closes during a step
  was killed: by the OOM killer when :func:`pressure.death_cause` says SIGKILL, and the
  step then ends with SIGKILL (its ``expect_signal``); so does a step during which the
  OOM killer took another process (a memory cgroup's OOM kill picks the largest). The
  report says ``"pressure": true``, for the comparison's version 3 tolerances.

Noise: per measure, :class:`MeasureNoise` keeps what the measuring process faulted
(subtracted) and ``accounted``, the sum of the scenario processes' own fault counters
(exited ones included). The kernel's ``pgfault`` lies between ``accounted`` (it may
be a little higher: a fault answered with SIGBUS counts in vmstat only) and the figure
measured (other processes on the machine only add to it). The THP counters have no
per-process twin, so a run also samples the counters while its probes stand idle, for
QUIET_SECONDS before its baseline and, after its last step, for as long as the steps
took (at most QUIET_MAX_SECONDS): ``background``, what other processes' work adds to
them here (NumPy, for one, asks for THP on its large arrays).
"""

from __future__ import annotations

import collections
import ctypes
import mmap
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pagewalk.errors import (
    Errno,
    ExpectationFailed,
    Location,
    ScenarioError,
    Signal,
    SignalError,
    SyscallError,
)
from pagewalk.kernel.exec_image import BRK, START_BRK
from pagewalk.live import pressure as pressure_mod
from pagewalk.live import probe as probe_mod
from pagewalk.live import procfs
from pagewalk.live.errors import LiveError, ProbeDied, ProbeError
from pagewalk.live.files import (
    FileStore,
    LiveFile,
    clear_stale,
    inflight_file,
    settle_reads,
    uses_disk_files,
)
from pagewalk.live.knobs import THP_ENABLED, Decoy, KnobGuard, read_knob
from pagewalk.live.pressure import Pressure
from pagewalk.scenario import schema as s
from pagewalk.scenario.runner import EVENT_FIELDS, PROCESS_FIELDS, SIZE_FIELDS

MEMINFO_FIELDS = ("HugePages_Total", "HugePages_Free", "HugePages_Rsvd", "HugePages_Surp")
MEMINFO_DELTA_FIELDS = ("Mlocked",)        # version 2: changes since the start, kB
MREMAP_BITS = {"maymove": 1, "fixed": 2, "dontunmap": 4}      # MREMAP_*
MCL_BITS = {"current": 1, "future": 2, "onfault": 4}          # MCL_*
MS_BITS = {"async": 1, "invalidate": 2, "sync": 4}            # MS_*
SYS_MOVE_PAGES = 279
MPOL_MF_MOVE = 2
VMSTAT_FIELDS = tuple(EVENT_FIELDS)        # thp_fault_alloc ... pgfault
CHUNK = 4096                               # bytes per probe write/read command
IDLE_PINGS = 3                             # commands sent to check the probe adds no fault
QUIET_SECONDS = 0.2                        # idle window that samples other processes' events
QUIET_MAX_SECONDS = 2.0                    # longest idle window after the steps
EXIT_WAIT = 10.0                           # seconds for an exited process to be gone
OOM_VICTIM_WAIT = 10.0                     # seconds for the OOM killer's victim to be gone
#: not the probe's: how the runner answers for a step whose process the OOM killer took,
#: in the probe's words, so that a subclass's outcome() sees it as any other signal
KILLED_REPLY = "sig SIGKILL"


@dataclass(slots=True)
class LiveProcess:
    """A scenario process, played by a probe process."""

    name: str
    pid: int
    channel: probe_mod.Channel
    fault_base: tuple[int, int] = (0, 0)         # (minflt, majflt) not scenario work
    maps: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (start, length)
    alive: bool = True
    start_brk: int = 0                           # [heap] is [start_brk, brk)
    brk: int = 0                                 # the break, tracked from brk(0)


@dataclass(frozen=True, slots=True)
class MeasureNoise:
    """What one measure saw besides the scenario (see the module docstring)."""

    label: str
    controller_faults: int     # the measuring process's own faults since the start
    pgfault: int               # the figure reported
    accounted: int             # sum of the scenario processes' fault counters

    @property
    def other(self) -> int:
        """Faults in ``pgfault`` that no scenario process counted (other processes)."""
        return self.pgfault - self.accounted


@dataclass(slots=True)
class LiveRunResult:
    """One run: the report (scenario.md schema) and what was measured about noise."""

    report: dict[str, Any]
    noise: list[MeasureNoise]
    probe_command_faults: int          # faults the probe took answering idle commands
    layout_differences: list[str]      # main's start image vs the simulator's
    background: dict[str, int]         # vmstat events of others in the idle windows
    idle_seconds: float                # how long the idle windows were


class LiveRun:
    """The state of one run on the live kernel: probes, names and baselines."""

    def __init__(self, scenario: s.Scenario, exe: Path, guard: KnobGuard,
                 decoy: Decoy | None, pressure: Pressure | None = None) -> None:
        self.scenario = scenario
        self.exe = exe
        self.guard = guard
        self.decoy = decoy
        self.procs: dict[str, LiveProcess] = collections.OrderedDict()
        self.popen: Any = None
        self.tmpdir = Path(tempfile.mkdtemp(prefix="pagewalk-live-"))
        self.pgfault_adjust = 0        # warm-up faults of forks (not scenario work)
        self.pgmajfault_adjust = 0     # the major ones among them
        self.own_maj_base = 0
        # Every CPU's folio batches are drained before the baseline and each measurement,
        # so Mlocked is up to date (lru_drain_all): the scenario's own mlocks, and those of
        # any other program that locks memory (its share is then taken out of the change).
        self.drain_page: mmap.mmap | None = None
        self.exited_faults = 0         # faults of processes that exited
        self.base_sizes: dict[str, int] = {}
        self.base_system: dict[str, int] = {}
        self.base_others_locked = 0
        self.own_base = 0
        self.noise: list[MeasureNoise] = []
        self.measurements: list[dict[str, Any]] = []
        self.idle_faults = 0
        self.layout: list[str] = []
        self.background: dict[str, int] = {}
        self.idle_seconds = 0.0
        self.started = 0.0
        # Version 2 files (files.py): held open here, removed at cleanup. With a disk
        # file, every step and each faulting access of a touch wait for the root disk's
        # reads, so readahead never races with the next access (the oracle's settle).
        self.store = FileStore()
        # Version 3: swap-in readahead and swap-out writeback go to the root disk too, so
        # with a swap file the waiting also covers writes (the oracle's swap_io).
        self.pressure = pressure
        self.swap_io = bool(scenario.system.swap)
        self.disk_files = uses_disk_files(scenario) or self.swap_io
        self.killed = ""                       # who KILLED_REPLY speaks of, in words

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        clear_stale()                  # file directories of a killed run
        self.popen, channel = probe_mod.spawn(self.exe, "main")
        main = LiveProcess("main", self.popen.pid, channel)
        self.procs["main"] = main
        if self.pressure is not None:  # before the baseline; forked children inherit both
            self.pressure.join(main.pid)
            pressure_mod.pin(main.pid)
        self.layout = probe_mod.start_layout_differences(main.pid)
        self.idle_faults = self._idle_faults(main)
        self._quiet_window(QUIET_SECONDS)
        main.start_brk = read_start_brk(main.pid)
        main.brk = int(main.channel.ask("brk 0").split()[1], 16)
        main.fault_base = procfs.read_faults(main.pid)
        self.base_sizes = self._sizes(main.pid)
        self.lru_drain_all()
        self.base_system = self._system()
        self.base_others_locked = self._others_locked()
        # another program locks memory: its mlock batches move Mlocked by a page or a few
        # at moments no reading can avoid (seen here: PID 1 under mlockall)
        self.background["locked_by_others_kb"] = self.base_others_locked
        self.own_base = procfs.own_faults()
        self.own_maj_base = own_major_faults()
        self.started = time.monotonic()

    @staticmethod
    def _idle_faults(proc: LiveProcess) -> int:
        """Faults the probe takes for commands that touch no scenario memory (expected: 0)."""
        before = sum(procfs.read_faults(proc.pid))
        for _ in range(IDLE_PINGS):
            proc.channel.ask("ping")
        return sum(procfs.read_faults(proc.pid)) - before

    def _quiet_window(self, seconds: float) -> None:
        """Add the vmstat events of a window in which nothing of the run moves (what
        other processes on the machine add to the system-wide counters) to background."""
        before = self._system()
        time.sleep(seconds)
        after = self._system()
        for key in VMSTAT_FIELDS:
            self.background[key] = self.background.get(key, 0) + after[key] - before[key]
        self.idle_seconds += seconds

    def run(self) -> LiveRunResult:
        self.start()
        for step in self.scenario.steps:
            self.run_step(step)
        busy = time.monotonic() - self.started
        self._quiet_window(min(max(busy, QUIET_SECONDS), QUIET_MAX_SECONDS))
        mappings = {
            p.name: {name: {"start": f"{start:#x}", "length": length}
                     for name, (start, length) in p.maps.items()}
            for p in self.procs.values() if p.alive
        }
        report: dict[str, Any] = {"scenario": self.scenario.name,
                                  "measurements": self.measurements, "mappings": mappings}
        if self.pressure is not None:
            report["pressure"] = True          # the comparison's version 3 tolerances
        return LiveRunResult(report, self.noise, self.idle_faults, self.layout,
                             self.background, self.idle_seconds)

    def cleanup(self) -> None:
        """Kill every probe and wait until they are gone (hugetlb pages back in the pool)."""
        for proc in self.procs.values():
            if proc.alive and not procfs.process_gone(proc.pid):
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if proc.name != "main":
                proc.channel.close()
        if self.popen is not None:
            probe_mod.stop(self.popen)
        deadline = time.monotonic() + EXIT_WAIT
        for proc in self.procs.values():
            while not procfs.process_gone(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.005)
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        self.store.close()

    # -- figures ---------------------------------------------------------------------------
    @staticmethod
    def _sizes(pid: int) -> dict[str, int]:
        status = procfs.read_status(pid)
        sizes = {key: status.get(key, 0) for key in SIZE_FIELDS if key != "AnonHugePages"}
        sizes["AnonHugePages"] = procfs.read_anon_huge_pages(pid)
        return sizes

    @staticmethod
    def _system() -> dict[str, int]:
        refresh_vmstat()
        meminfo, vmstat = procfs.read_meminfo(), procfs.read_vmstat()
        # Other programs lock memory for a moment now and then (seen here: 9 MiB for half a
        # second): Mlocked is read again until two reads 20 ms apart agree.
        for _ in range(25):
            time.sleep(0.02)
            again = procfs.read_meminfo()
            if again.get("Mlocked") == meminfo.get("Mlocked"):
                break
            meminfo = again
        system = {key: meminfo.get(key, 0) for key in MEMINFO_FIELDS + MEMINFO_DELTA_FIELDS}
        system.update({key: vmstat.get(key, 0) for key in VMSTAT_FIELDS})
        return system

    def _others_locked(self) -> int:
        """Other programs' locked memory now (noise in Mlocked), kB."""
        ours = {os.getpid()} | {proc.pid for proc in self.procs.values()}
        return procfs.others_locked_kb(ours)

    def lru_drain_all(self) -> None:
        """lru_add_drain_all(), as the oracle does it: munlock by munmap or exit is queued
        per CPU and reaches Mlocked only when the batch drains (Mlocked lagged by 8-56 kB
        without it). move_pages(2) of one of our own pages to its node drains every CPU
        and moves nothing."""
        if self.drain_page is None:
            self.drain_page = mmap.mmap(-1, 4096)
            self.drain_page[0:1] = b"\1"
        libc = ctypes.CDLL(None, use_errno=True)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(self.drain_page))
        pages = (ctypes.c_void_p * 1)(addr)
        nodes = (ctypes.c_int * 1)(page_node(addr))
        status = (ctypes.c_int * 1)(0)
        libc.syscall(SYS_MOVE_PAGES, 0, 1, pages, nodes, status, MPOL_MF_MOVE)

    def measure(self, step: s.MeasureStep) -> None:
        processes = {}
        accounted = self.exited_faults
        for proc in self.procs.values():
            if not proc.alive:
                continue
            sizes = self._sizes(proc.pid)
            minflt, majflt = procfs.read_faults(proc.pid)
            figures = {"minflt": minflt - proc.fault_base[0],
                       "majflt": majflt - proc.fault_base[1]}
            figures.update({key: sizes[key] - self.base_sizes[key] for key in SIZE_FIELDS})
            processes[proc.name] = {key: figures[key] for key in PROCESS_FIELDS}
            accounted += figures["minflt"] + figures["majflt"]
        self.lru_drain_all()
        own = procfs.own_faults() - self.own_base
        own_maj = own_major_faults() - self.own_maj_base
        now = self._system()
        system = {key: now[key] for key in MEMINFO_FIELDS}
        system.update({key: now[key] - self.base_system[key] for key in VMSTAT_FIELDS})
        system.update({key: now[key] - self.base_system[key] for key in MEMINFO_DELTA_FIELDS})
        system["Mlocked"] -= self._others_locked() - self.base_others_locked
        system["pgfault"] -= self.pgfault_adjust + own
        system["pgmajfault"] -= self.pgmajfault_adjust + own_maj
        self.measurements.append({"label": step.label, "step": step.index,
                                  "processes": processes, "system": system})
        self.noise.append(MeasureNoise(step.label, own, system["pgfault"], accounted))

    # -- steps ------------------------------------------------------------------------------
    def location(self, step: s.Step, fieldname: str | None = None) -> Location:
        return Location(self.scenario.file, step.index, fieldname)

    def proc(self, step: s.Step) -> LiveProcess:
        proc = self.procs.get(step.process)
        if proc is None or not proc.alive:
            raise ScenarioError(f"process {step.process!r} is not running",
                                self.location(step, "process"))
        return proc

    def region(self, step: s.Step, rng: s.Range) -> tuple[int, int]:
        """(address, length) of a range, resolved as the simulator's runner does."""
        if rng.region == s.HEAP_REGION:
            proc = self.proc(step)
            heap_length = max(proc.brk - proc.start_brk, 0)
            return proc.start_brk + rng.offset, rng.length if rng.length is not None else \
                max(heap_length - rng.offset, 0)
        maps = self.proc(step).maps
        if rng.region not in maps:
            raise ScenarioError(f"{rng.region!r} is not a mapping of process {step.process!r} "
                                "(its mmap failed, or munmap removed it)",
                                self.location(step, "region"))
        start, length = maps[rng.region]
        return start + rng.offset, rng.length if rng.length is not None else \
            max(length - rng.offset, 0)

    def run_step(self, step: s.Step) -> None:
        if self.disk_files:            # the previous step's readahead (and writeback) is done
            settle_reads(writes=self.swap_io)
        if self.pressure is not None:  # no page waits in a per-CPU batch, off the LRU lists
            self.lru_drain_all()
        handler = getattr(self, "do_" + type(step).__name__.removesuffix("Step").lower())
        oom_base = pressure_mod.oom_kills() if self.pressure is not None else 0
        try:
            handler(step)
        except ProbeDied as died:
            self.probe_died(step, died, oom_base)
            return
        if self.pressure is not None and not isinstance(step, (s.MeasureStep, s.SetStep)):
            self.others_killed(step, oom_base, None)

    # -- version 3: the OOM killer -----------------------------------------------------------
    def probe_died(self, step: s.Step, died: ProbeDied, oom_base: int) -> None:
        """The process of ``step`` vanished during it: an OOM kill ends the step with
        SIGKILL (expected, or raised as SignalError); any other death is a ProbeError."""
        proc = self.procs[died.name]
        deadline = time.monotonic() + EXIT_WAIT
        while not procfs.process_gone(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.002)
        status = None
        if proc.name == "main":        # our child: its exit status is known
            try:
                status = self.popen.wait(EXIT_WAIT)
            except subprocess.TimeoutExpired:
                status = None
        oom = self.pressure is not None and pressure_mod.oom_kills() > oom_base
        cause = pressure_mod.death_cause(status, oom)
        self.gone(proc)
        if cause != pressure_mod.SIGKILL or self.pressure is None:
            raise ProbeError(f"process {proc.name} (pid {proc.pid}) ended by {cause}",
                             self.location(step))
        self.killed = (f"the OOM killer killed process {proc.name}" if oom else
                       f"process {proc.name} was killed")
        self.outcome(KILLED_REPLY, step)       # SignalError unless the step expects it
        self.others_killed(step, oom_base, proc)

    def others_killed(self, step: s.Step, oom_base: int, own: LiveProcess | None) -> None:
        """After ``step`` (whose own process ``own`` the OOM killer may have taken): the
        other processes it killed meanwhile end at this step with SIGKILL, which the step
        must expect; a step that expects SIGKILL needs a victim."""
        expects_kill = step.expect_signal is Signal.SIGKILL
        if pressure_mod.oom_kills() == oom_base and own is None:
            if expects_kill:
                raise ExpectationFailed("expected SIGKILL, but the step succeeded and the OOM "
                                        "killer killed no process", self.location(step))
            return
        others = [proc for proc in self.procs.values() if proc.alive and proc is not own]
        deadline = time.monotonic() + OOM_VICTIM_WAIT
        while True:                    # oom_kill counts at the kill; the exit comes after
            gone = [proc for proc in others if procfs.process_gone(proc.pid)]
            if own is not None or gone or time.monotonic() > deadline:
                break
            time.sleep(0.005)
        for proc in gone:
            self.gone(proc)
        if gone and own is None:
            self.killed = ("the OOM killer killed process "
                           + ", ".join(proc.name for proc in gone))
            self.outcome(KILLED_REPLY, step)
        elif own is None and expects_kill:
            raise ExpectationFailed("expected SIGKILL, but no scenario process was killed "
                                    "(the OOM killer took another one on this machine)",
                                    self.location(step))

    def gone(self, proc: LiveProcess) -> None:
        """A process that was killed (by the OOM killer, as a rule): left out from now on."""
        proc.alive = False
        if proc.name == "main":
            self.popen.wait()
        else:
            proc.channel.close()

    def outcome(self, reply: str, step: s.Step) -> bool:
        """Check a probe reply against expect_error/expect_signal; True if the step
        succeeded, False if it failed as expected; raise if it failed otherwise."""
        parts = reply.split()
        expected = step.expect_error or step.expect_signal
        if parts[0] == "ok":
            if step.expect_signal is Signal.SIGKILL and self.pressure is not None:
                return True            # the victim may be another process: others_killed
            if expected is not None:
                raise ExpectationFailed(f"expected {expected.name}, but the step succeeded",
                                        self.location(step))
            return True
        err: SyscallError | SignalError
        if reply == KILLED_REPLY:
            if step.expect_signal is Signal.SIGKILL:
                return False
            err = SignalError(Signal.SIGKILL, 0)
            err.message = f"SIGKILL: {self.killed}"    # the kernel does not say where
            got = "SIGKILL"
        elif parts[0] == "err" and parts[1] in Errno.__members__:
            if step.expect_error is not None and step.expect_error.name == parts[1]:
                return False
            err, got = SyscallError(Errno[parts[1]]), parts[1]
        elif parts[0] == "sig" and parts[1] in Signal.__members__:
            if step.expect_signal is not None and step.expect_signal.name == parts[1]:
                return False
            err = SignalError(Signal[parts[1]], int(parts[2], 16))
            got = f"{parts[1]} at {parts[2]}"
        else:
            raise ProbeError(f"the probe answered {reply!r}", self.location(step))
        if expected is not None:
            err.message += f" (expected {expected.name}, got {got})"
        raise err.at(self.location(step))

    def do_mmap(self, step: s.MmapStep) -> None:
        proc = self.proc(step)
        flags = sorted(step.flags - {"anonymous"})
        if not {"private", "shared"} & step.flags:
            flags.append("notype")           # the kernel answers EINVAL, as it should
        if "fixed" in step.flags or "fixed_noreplace" in step.flags:
            self.guard_heap(step, step.addr or 0, step.length, "MAP_FIXED would replace", "addr")
        huge = 4096
        if "hugetlb" in step.flags:
            huge = step.page_size or 2 << 20
            if step.page_size is not None:
                flags.append("huge1g" if step.page_size == 1 << 30 else "huge2m")
        command = (f"mmap {step.length} {_prot_letters(step.prot)} "
                   f"{','.join(flags) or '-'} {step.addr or 0}")
        if step.file is not None:      # the probe opens the file afresh (own readahead state)
            command += f" {self.file(step, step.file).ref} {step.file_offset}"
        reply = proc.channel.ask(command)
        if self.outcome(reply, step):
            proc.maps[step.name] = (int(reply.split()[1], 16), -(-step.length // huge) * huge)

    def do_munmap(self, step: s.MunmapStep) -> None:
        proc = self.proc(step)
        addr, length = self.region(step, step.range)
        self.guard_heap(step, addr, length, "the range overlaps", "region")
        if self.outcome(proc.channel.ask(f"munmap {addr:#x} {length}"), step):
            for name, (start, size) in list(proc.maps.items()):
                if addr <= start and start + size <= addr + length:
                    del proc.maps[name]

    def do_mprotect(self, step: s.MprotectStep) -> None:
        addr, length = self.region(step, step.range)
        if step.prot not in (s.PROT_READ | s.PROT_WRITE, s.PROT_READ | s.PROT_WRITE | s.PROT_EXEC):
            self.guard_heap(step, addr, length, "the range overlaps", "region")
        self.outcome(self.proc(step).channel.ask(
            f"mprotect {addr:#x} {length} {_prot_letters(step.prot)}"), step)

    def do_madvise(self, step: s.MadviseStep) -> None:
        addr, length = self.region(step, step.range)
        if step.advice in ("dontneed", "free"):
            self.guard_heap(step, addr, length, "the range overlaps", "region")
        self.outcome(self.proc(step).channel.ask(
            f"madvise {addr:#x} {length} {step.advice}"), step)

    def do_touch(self, step: s.TouchStep) -> None:
        addr, length = self.region(step, step.range)
        mode = "r" if step.access == "read" else "w"
        command = f"touch {addr:#x} {length} {step.stride} {mode}"
        inflight = inflight_file() if self.disk_files else None
        if inflight is not None:       # after each faulting access: wait for the reads
            command += f" {inflight}" + (" all" if self.swap_io else "")   # and writes
        self.outcome(self.proc(step).channel.ask(command), step)

    def do_write(self, step: s.WriteStep) -> None:
        proc = self.proc(step)
        addr, _ = self.region(step, s.Range(step.region, step.offset))
        self.guard_heap(step, addr, len(step.data), "the data would overwrite", "data")
        for pos in range(0, max(len(step.data), 1), CHUNK):   # the probe's lines are bounded
            reply = proc.channel.ask(f"write {addr + pos:#x} {step.data[pos:pos + CHUNK].hex()}")
            if not self.outcome(reply, step):
                return

    def read_bytes(self, step: s.ReadStep) -> bytes | None:
        """The bytes a read step loads, or None if it failed as expected."""
        proc = self.proc(step)
        addr, _ = self.region(step, s.Range(step.region, step.offset))
        got = b""
        for pos in range(0, step.length, CHUNK):
            reply = proc.channel.ask(f"read {addr + pos:#x} {min(CHUNK, step.length - pos)}")
            if not self.outcome(reply, step):
                return None
            got += bytes.fromhex(reply.split()[1]) if len(reply.split()) > 1 else b""
        return got

    def do_read(self, step: s.ReadStep) -> None:
        got = self.read_bytes(step)
        if got is not None and step.expect is not None and got != step.expect:
            raise ExpectationFailed(f"read {got!r}, expected {step.expect!r}",
                                    self.location(step, "expect"))

    def do_fork(self, step: s.ForkStep) -> None:
        parent = self.proc(step)
        cmd_fifo, resp_fifo = self.tmpdir / f"{step.index}.cmd", self.tmpdir / f"{step.index}.resp"
        os.mkfifo(cmd_fifo)
        os.mkfifo(resp_fifo)
        read_fd = os.open(resp_fifo, os.O_RDONLY | os.O_NONBLOCK)
        write_fd = os.open(cmd_fifo, os.O_RDWR)
        before = procfs.read_faults(parent.pid)
        reply = parent.channel.ask(f"fork {cmd_fifo} {resp_fifo}")
        if not self.outcome(reply, step):
            os.close(read_fd)
            os.close(write_fd)
            return
        after = procfs.read_faults(parent.pid)
        # the parent's post-fork warm-up (COW of the probe's own pages) is not scenario work
        warm = (after[0] - before[0], after[1] - before[1])
        parent.fault_base = (parent.fault_base[0] + warm[0], parent.fault_base[1] + warm[1])
        channel = probe_mod.Channel(step.name, int(reply.split()[1]), write_fd, read_fd)
        child = LiveProcess(step.name, channel.pid, channel, maps=dict(parent.maps),
                            start_brk=parent.start_brk, brk=parent.brk)
        self.procs[step.name] = child
        channel.expect_ready()
        child.fault_base = procfs.read_faults(child.pid)
        self.pgfault_adjust += sum(warm) + sum(child.fault_base)
        self.pgmajfault_adjust += warm[1] + child.fault_base[1]

    def do_exit(self, step: s.ExitStep) -> None:
        proc = self.proc(step)
        minflt, majflt = procfs.read_faults(proc.pid)
        self.exited_faults += minflt + majflt - sum(proc.fault_base)
        proc.channel.send("exit")
        if proc.channel.recv() is not None:
            raise ProbeError(f"process {proc.name} did not exit", self.location(step))
        if proc.name == "main":
            self.popen.wait()
        deadline = time.monotonic() + EXIT_WAIT
        while not procfs.process_gone(proc.pid):
            if time.monotonic() > deadline:
                raise ProbeError(f"process {proc.name} is still there after exit",
                                 self.location(step))
            time.sleep(0.002)
        proc.alive = False

    def do_set(self, step: s.SetStep) -> None:
        for path, value in step.knobs.items():
            if (self.guard.write and self.decoy is not None and path == THP_ENABLED
                    and value != "never" and read_knob(path) == "never"):
                # THP turned on again starts khugepaged with an immediate pass, as on any
                # system (start_stop_khugepaged): let that pass reach the scenario's mms.
                self.decoy.stop()
            try:
                self.guard.set(path, value)
            except LiveError as err:
                raise err.at(self.location(step, path))

    def do_measure(self, step: s.MeasureStep) -> None:
        self.measure(step)

    # -- version 2: the program break, mremap, memory locking --------------------------------
    def guard_heap(self, step: s.Step, addr: int, length: int, what: str, fieldname: str) -> None:
        """The initial heap holds the probe's own data (glibc's thread control block): a
        step may not unmap, discard, protect, move or overwrite it (the spec's rule; the
        simulator's runner refuses the same steps)."""
        if length > 0 and addr < BRK and addr + length > START_BRK:
            raise ScenarioError(f"{what} the initial heap {START_BRK:#x}-{BRK:#x}, which holds "
                                "the program's own data; a scenario may not change it",
                                self.location(step, fieldname))

    def do_brk(self, step: s.BrkStep) -> None:
        proc = self.proc(step)
        new = proc.brk + step.delta
        if proc.start_brk <= new < BRK:
            self.guard_heap(step, new, BRK - new, "the break would unmap part of", "delta")
        reply = proc.channel.ask(f"brk {step.delta}")
        if self.outcome(reply, step):
            proc.brk = int(reply.split()[1], 16)

    def do_mremap(self, step: s.MremapStep) -> None:
        proc = self.proc(step)
        addr, length = self.region(step, step.range)
        new_length = -(-step.new_length // 4096) * 4096
        old_length = -(-length // 4096) * 4096
        if step.flags:
            self.guard_heap(step, addr, length, "it may move", "region")
        elif new_length < length:
            self.guard_heap(step, addr + new_length, length - new_length,
                            "it would unmap part of", "new_length")
        if "fixed" in step.flags:
            self.guard_heap(step, step.addr or 0, step.new_length, "the new range overlaps",
                            "addr")
        bits = sum(MREMAP_BITS[flag] for flag in step.flags)
        reply = proc.channel.ask(f"mremap {addr:#x} {length} {step.new_length} {bits} "
                                 f"{step.addr or 0:#x}")
        if not self.outcome(reply, step):
            return
        new_addr = int(reply.split()[1], 16)
        gone = []
        if "fixed" in step.flags:
            gone.append((new_addr, new_length))          # whatever was there is replaced
        if "dontunmap" not in step.flags:
            if new_addr != addr:
                gone.append((addr, old_length))
            elif new_length < old_length:
                gone.append((addr + new_length, old_length - new_length))
        for lo, size in gone:
            for name, (start, mlen) in list(proc.maps.items()):
                if lo <= start and start + mlen <= lo + size:
                    del proc.maps[name]
        if step.name is not None:
            proc.maps[step.name] = (new_addr, new_length)
        elif step.range.region != s.HEAP_REGION:
            proc.maps[step.range.region] = (new_addr, new_length)

    def do_mlock(self, step: s.MlockStep) -> None:
        addr, length = self.region(step, step.range)
        self.outcome(self.proc(step).channel.ask(
            f"mlock {addr:#x} {length} {1 if step.onfault else 0}"), step)

    def do_munlock(self, step: s.MunlockStep) -> None:
        addr, length = self.region(step, step.range)
        self.outcome(self.proc(step).channel.ask(f"munlock {addr:#x} {length}"), step)

    def do_mlockall(self, step: s.MlockallStep) -> None:
        bits = sum(MCL_BITS[flag] for flag in step.flags)
        self.outcome(self.proc(step).channel.ask(f"mlockall {bits}"), step)

    def do_munlockall(self, step: s.MunlockallStep) -> None:
        self.outcome(self.proc(step).channel.ask("munlockall"), step)

    # -- version 2: files --------------------------------------------------------------------
    def file(self, step: s.Step, name: str) -> LiveFile:
        live = self.store.files.get(name)
        if live is None:
            raise ScenarioError(f"file {name!r} was not created (its file step failed)",
                                self.location(step, "file"))
        return live

    def do_file(self, step: s.FileStep) -> None:
        """The probe of the step's process creates it (4 KiB write(2)s + fsync, or
        memfd_create + ftruncate); we hold it open, the probe closes its descriptor."""
        proc = self.proc(step)
        path = self.store.new_path(step.fs, step.name)
        kind = "m" if step.fs == "memfd" else "f"
        reply = proc.channel.ask(f"fcreate {kind} {step.size} {path}")
        if not self.outcome(reply, step):
            return
        probe_fd = int(reply.split()[1])
        try:
            self.store.adopt(step.name, step.fs, path, proc.pid, probe_fd)
        except OSError as err:
            raise LiveError(f"cannot hold file {step.name!r} open ({err.strerror})",
                            self.location(step, "name")) from None
        proc.channel.ask(f"close {probe_fd}")

    def do_truncate(self, step: s.TruncateStep) -> None:
        ref = self.file(step, step.file).ref
        self.outcome(self.proc(step).channel.ask(f"ftrunc {ref} {step.size}"), step)

    def do_fadvise(self, step: s.FadviseStep) -> None:
        """fsync, then POSIX_FADV_DONTNEED over the whole file (the only advice)."""
        ref = self.file(step, step.file).ref
        self.outcome(self.proc(step).channel.ask(f"fadv {ref}"), step)

    def do_unlink(self, step: s.UnlinkStep) -> None:
        path = self.file(step, step.file).path
        self.outcome(self.proc(step).channel.ask(f"unlink {path}"), step)

    def do_msync(self, step: s.MsyncStep) -> None:
        addr, length = self.region(step, step.range)
        bits = sum(MS_BITS[flag] for flag in step.flags)
        self.outcome(self.proc(step).channel.ask(f"msync {addr:#x} {length} {bits}"), step)

    def do_khugepaged(self, step: s.KhugepagedStep) -> None:
        raise LiveError("the khugepaged step is simulator-only: it cannot be replayed on a "
                        "live kernel", self.location(step, "khugepaged"))


def read_start_brk(pid: int) -> int:
    """start_brk: field 47 of /proc/PID/stat (fs/proc/array.c do_task_stat)."""
    text = procfs.read_text(f"/proc/{pid}/stat")
    return int(text[text.rindex(")") + 2:].split()[44])


def refresh_vmstat() -> None:
    """Fold the per-CPU vmstat deltas into the global counters (/proc/sys/vm/stat_refresh):
    without it a 32-page mlock did not show in /proc/meminfo's Mlocked at all."""
    try:
        with open("/proc/sys/vm/stat_refresh", "w", encoding="ascii") as f:
            f.write("1")
    except OSError:
        pass


def own_major_faults() -> int:
    """Major page faults of this (the measuring) process so far."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_majflt


def page_node(addr: int) -> int:
    """The NUMA node of our page at ``addr`` (/proc/self/numa_maps), 0 if unknown."""
    try:
        with open("/proc/self/numa_maps", encoding="ascii") as f:
            for line in f:
                if line.startswith(f"{addr:x} "):
                    for word in line.split():
                        if word.startswith("N") and "=" in word:
                            return int(word[1:word.index("=")])
    except OSError:
        pass
    return 0


def _prot_letters(prot: int) -> str:
    letters = "".join(letter for letter, bit in (("r", s.PROT_READ), ("w", s.PROT_WRITE),
                                                 ("x", s.PROT_EXEC)) if prot & bit)
    return letters or "none"


__all__ = ["MEMINFO_FIELDS", "VMSTAT_FIELDS", "LiveProcess", "LiveRun", "LiveRunResult",
           "MeasureNoise"]
