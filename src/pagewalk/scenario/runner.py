"""Run a scenario (scenario.md version 1) on a fresh Machine and build its report.

Steps become system calls and user accesses of the simulated processes; ``measure``
records each live process's figures as changes from main's values at scenario start
(children too), fault counters from the process's start, HugePages_* absolute and the
vmstat events as changes since the start, exactly the kernel oracle's schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pagewalk.errors import (
    ExpectationFailed,
    KernelError,
    Location,
    NotImplementedStep,
    ScenarioError,
    Signal,
    SignalError,
    SyscallError,
)
from pagewalk.hw.mmu import MmuStat
from pagewalk.hw.walker import ACCESS_READ, ACCESS_WRITE
from pagewalk.kernel import syscalls
from pagewalk.kernel.exec_image import BRK, START_BRK, START_IMAGE
from pagewalk.kernel.task import Task
from pagewalk.machine import Machine, MachineConfig
from pagewalk.mm import fastpath, khugepaged, memcontrol, swap_state, swapfile
from pagewalk.mm.mlock import MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT
from pagewalk.mm.mremap import MREMAP_DONTUNMAP, MREMAP_FIXED, MREMAP_MAYMOVE
from pagewalk.mm.types import VmFlags
from pagewalk.mm.vma import vma_lookup
from pagewalk.mm.vmstat import NodeStat, VmEvent
from pagewalk.proc import render
from pagewalk.proc.task_mmu import anon_huge_pages, task_mem
from pagewalk.scenario import schema as s
from pagewalk.scenario.schema import PROT_EXEC, PROT_READ, PROT_WRITE

PROCESS_FIELDS = ("minflt", "majflt", "VmRSS", "RssAnon", "RssShmem", "VmPTE", "VmSize",
                  "AnonHugePages", "HugetlbPages", "RssFile", "VmLck", "VmSwap")
MREMAP_BITS = {"maymove": MREMAP_MAYMOVE, "fixed": MREMAP_FIXED, "dontunmap": MREMAP_DONTUNMAP}
SIZE_FIELDS = ("VmRSS", "RssAnon", "RssShmem", "VmPTE", "VmSize", "AnonHugePages", "HugetlbPages",
               "RssFile", "VmLck", "VmSwap")
EVENT_FIELDS = {
    "thp_fault_alloc": VmEvent.THP_FAULT_ALLOC,
    "thp_fault_fallback": VmEvent.THP_FAULT_FALLBACK,
    "thp_split_pmd": VmEvent.THP_SPLIT_PMD,
    "thp_collapse_alloc": VmEvent.THP_COLLAPSE_ALLOC,
    "pgfault": VmEvent.PGFAULT,
    "pgmajfault": VmEvent.PGMAJFAULT,      # version 2
    "pswpin": VmEvent.PSWPIN,              # version 3
    "pswpout": VmEvent.PSWPOUT,
    "oom_kill": VmEvent.OOM_KILL,
}
EXTRA_EVENT_FIELDS = {
    "thp_deferred_split_page": VmEvent.THP_DEFERRED_SPLIT_PAGE,
    "thp_split_page": VmEvent.THP_SPLIT_PAGE,
    "thp_zero_page_alloc": VmEvent.THP_ZERO_PAGE_ALLOC,
    "thp_collapse_alloc_failed": VmEvent.THP_COLLAPSE_ALLOC_FAILED,
    "compact_stall": VmEvent.COMPACT_STALL,
}


@dataclass(slots=True)
class Measurement:
    label: str
    step: int
    processes: dict[str, dict[str, int]]
    system: dict[str, int]
    views: dict[str, str] = field(default_factory=dict)   # --show PATH -> text


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """A step that failed as its ``expect_error`` or ``expect_signal`` said it would."""

    step: int                          # 0-based index in ``steps``
    kind: str                          # the step's key: munmap, touch ...
    process: str
    failure: str                       # the errno or signal name
    vaddr: int | None = None           # a signal's faulting address

    def describe(self) -> str:
        """``step 4 munmap: EINVAL as expected``, ``step 6 touch: SIGBUS at 0x... as
        expected`` (the process named when it is not main)."""
        who = "" if self.process == s.MAIN_PROCESS else f" ({self.process})"
        at = "" if self.vaddr is None else f" at {self.vaddr:#x}"
        return f"step {self.step} {self.kind}{who}: {self.failure}{at} as expected"

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"step": self.step, "kind": self.kind, "process": self.process}
        if self.vaddr is None:
            doc["error"] = self.failure
        else:
            doc["signal"], doc["address"] = self.failure, f"{self.vaddr:#x}"
        return doc


@dataclass(slots=True)
class Report:
    scenario: str
    measurements: list[Measurement]
    mappings: dict[str, dict[str, tuple[int, int]]]
    outcomes: list[StepOutcome] = field(default_factory=list)   # expected failures, in order
    pressure: bool = False             # version 3: the scenario has swap or a memory limit

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "measurements": [
                {"label": m.label, "step": m.step, "processes": m.processes, "system": m.system,
                 # --show: the views' text, by path (only then: the oracle's schema has none)
                 **({"views": m.views} if m.views else {})}
                for m in self.measurements
            ],
            "mappings": {
                proc: {name: {"start": f"{start:#x}", "length": length}
                       for name, (start, length) in maps.items()}
                for proc, maps in self.mappings.items()
            },
            # the oracle's compare.py checks only the keys of the kernel's report
            "outcomes": [outcome.to_json() for outcome in self.outcomes],
            **({"pressure": True} if self.pressure else {}),
        }

    def to_dict(self) -> dict[str, Any]:
        """The report in the oracle's JSON schema, as ``pagewalk run --json`` prints it."""
        return self.to_json()

    def rows(self) -> list[tuple[str, int, str | None, str, int]]:
        """One ``(measure, step, process, field, value)`` per figure, in report order:
        each process's figures, then the system's (process None)."""
        rows: list[tuple[str, int, str | None, str, int]] = []
        for m in self.measurements:
            for process, figures in m.processes.items():
                rows.extend((m.label, m.step, process, key, value)
                            for key, value in figures.items())
            rows.extend((m.label, m.step, None, key, value) for key, value in m.system.items())
        return rows

    def to_pandas(self) -> Any:
        """:meth:`rows` as a pandas DataFrame (columns measure, step, process, field,
        value); ImportError naming the extra if pandas is not installed."""
        from pagewalk.extras import require
        pd = require("pandas", "Report.to_pandas")
        return pd.DataFrame(self.rows(), columns=list(ROW_COLUMNS))


ROW_COLUMNS = ("measure", "step", "process", "field", "value")


class ScenarioRun:
    """The state of one run: the machine, the processes and their named mappings."""

    def __init__(self, scenario: s.Scenario, show: tuple[str, ...] = (),
                 machine: Machine | None = None) -> None:
        self.scenario = scenario
        system = scenario.system
        self.machine = machine or Machine(MachineConfig(
            ram=system.ram, paging=system.paging, pti=system.pti, pcid=system.pcid,
            pku=system.pku, sysfs=dict(system.sysfs)))
        self.kernel = self.machine.kernel
        self.show = show
        self.maps: dict[str, dict[str, tuple[int, int]]] = {}
        if system.swap:                    # swapon before the first step
            self.kernel.swap = swap_state.SwapSpace(swapfile.swapon(system.swap))
        main = self.kernel.spawn("main")
        if system.memory_limit:            # main joins its cgroup after it started
            memcontrol.mem_cgroup_create(self.kernel, system.memory_limit)
        self.maps["main"] = {}
        self.base_sizes = self._sizes(main)
        self.base_events = self.kernel.vm_events.copy()
        self.base_mlock = int(self.kernel.node_stat[NodeStat.NR_MLOCK])
        self.exited_faults: dict[str, tuple[int, int]] = {}
        self.measurements: list[Measurement] = []
        self.outcomes: list[StepOutcome] = []

    # -- figures ------------------------------------------------------------------------------
    def _sizes(self, task: Task) -> dict[str, int]:
        status = task_mem(task)
        sizes = {key: status[key] for key in SIZE_FIELDS if key in status}
        sizes["AnonHugePages"] = anon_huge_pages(self.kernel, task.mm) >> 10
        return sizes

    def measure(self, label: str, index: int) -> Measurement:
        k = self.kernel
        processes = {}
        for name, task in k.tasks.items():
            sizes = self._sizes(task)
            figures = {"minflt": task.min_flt, "majflt": task.maj_flt}
            figures.update({key: sizes[key] - self.base_sizes[key] for key in SIZE_FIELDS})
            processes[name] = {key: figures[key] for key in PROCESS_FIELDS}
            processes[name].update(self._tlb_figures(task))
        h = k.hugetlb.default
        system = {"HugePages_Total": h.nr_huge_pages, "HugePages_Free": h.free_huge_pages,
                  "HugePages_Rsvd": h.resv_huge_pages_shown, "HugePages_Surp": h.surplus_huge_pages}
        for key, event in (EVENT_FIELDS | EXTRA_EVENT_FIELDS).items():
            system[key] = int(k.vm_events[event] - self.base_events[event])
        system["Mlocked"] = (int(k.node_stat[NodeStat.NR_MLOCK]) - self.base_mlock) * 4
        # a process's files show at the measures where it lives
        views = {path: self.render(path) for path in self.show
                 if not render.process_view_missing(k, path)}
        m = Measurement(label, index, processes, system, views)
        self.measurements.append(m)
        return m

    def _tlb_figures(self, task: Task) -> dict[str, int]:
        c = task.mmu_counters
        return {"tlb_accesses": int(c[MmuStat.ACCESSES]), "tlb_l1_hits": int(c[MmuStat.L1_HITS]),
                "tlb_stlb_hits": int(c[MmuStat.STLB_HITS]), "tlb_walks": int(c[MmuStat.WALKS]),
                "tlb_walk_refs": int(c[MmuStat.WALK_REFS]), "cr3_loads": int(c[MmuStat.CR3_LOADS])}

    def render(self, path: str) -> str:
        return render.render_path(self.kernel, path)

    # -- steps ----------------------------------------------------------------------------------
    def run(self) -> Report:
        for step in self.scenario.steps:
            self.run_step(step)
        live = {name: maps for name, maps in self.maps.items() if name in self.kernel.tasks}
        pressure = bool(self.scenario.system.swap or self.scenario.system.memory_limit)
        return Report(self.scenario.name, self.measurements, live, self.outcomes, pressure)

    def location(self, step: s.Step, fieldname: str | None = None) -> Location:
        return Location(self.scenario.file, step.index, fieldname)

    def task(self, step: s.Step) -> Task:
        task = self.kernel.tasks.get(step.process)
        if task is None:
            raise ScenarioError(f"process {step.process!r} is not running",
                                self.location(step, "process"))
        return task

    def region(self, step: s.Step, rng: s.Range) -> tuple[int, int]:
        """(address, length) of a step's range: offset into the named mapping, length to its
        end unless given (as the oracle resolves it)."""
        if rng.region == s.HEAP_REGION:        # [start_brk, brk) of the process, now
            mm = self.task(step).mm
            start, length = mm.start_brk, max(mm.brk - mm.start_brk, 0)
        else:
            maps = self.maps.get(step.process, {})
            if rng.region not in maps:
                raise ScenarioError(f"{rng.region!r} is not a mapping of process "
                                    f"{step.process!r} (its mmap failed, or munmap removed it)",
                                    self.location(step, "region"))
            start, length = maps[rng.region]
        # a step's range to the end of a mapping it starts past would be empty (schema.py
        # refuses what it can see at load; the heap's length is known only now)
        if rng.length is None and rng.offset >= length and getattr(step, "range", None) is rng:
            raise ScenarioError(s.range_past_end(rng, length), self.location(step, "offset"))
        length_out = rng.length if rng.length is not None else max(length - rng.offset, 0)
        return start + rng.offset, length_out

    def run_step(self, step: s.Step) -> None:
        try:
            self.do_step(step)
        except (SyscallError, SignalError) as err:
            self._check_outcome(step, err)
            return
        except KernelError as err:
            raise err.at(self.location(step))
        expected = step.expect_error or step.expect_signal
        if expected is not None:
            raise ExpectationFailed(f"expected {expected.name}, but the step succeeded",
                                    self.location(step))

    def do_step(self, step: s.Step) -> None:
        """The step's handler; SignalError(SIGKILL) when it succeeded but the OOM killer took
        another process of the cgroup (the largest) meanwhile: the kernel runner sees that
        process die during the step and ends the step with SIGKILL (spec, version 3)."""
        kills = int(self.kernel.vm_events[VmEvent.OOM_KILL])
        getattr(self, "do_" + type(step).__name__.removesuffix("Step").lower())(step)
        if int(self.kernel.vm_events[VmEvent.OOM_KILL]) > kills:
            raise SignalError(Signal.SIGKILL, 0, "the OOM killer killed another process")

    def _check_outcome(self, step: s.Step, err: SyscallError | SignalError) -> None:
        if isinstance(err, SyscallError):
            if step.expect_error == err.errno:
                self.outcomes.append(StepOutcome(step.index, step.kind, step.process,
                                                 err.errno.name))
                return
            got = err.errno.name
        else:
            if step.expect_signal == err.signal:
                self.outcomes.append(StepOutcome(step.index, step.kind, step.process,
                                                 err.signal.name, err.vaddr))
                return
            got = f"{err.signal.name} at {err.vaddr:#x}"
        expected = step.expect_error or step.expect_signal
        if expected is not None:
            err.message += f" (expected {expected.name}, got {got})"
        raise err.at(self.location(step))

    def guard_heap(self, step: s.Step, addr: int, length: int, what: str, fieldname: str) -> None:
        """The spec's scenario-level rule: the heap a process starts with, [start_brk, the
        initial break), holds the program's own data; no step may unmap, discard, protect,
        move or overwrite it (the kernel runner could not replay such a step)."""
        if length > 0 and addr < BRK and addr + length > START_BRK:
            raise ScenarioError(f"{what} the initial heap {START_BRK:#x}-{BRK:#x}, which holds "
                                "the program's own data; a scenario may not change it",
                                self.location(step, fieldname))

    def do_mmap(self, step: s.MmapStep) -> None:
        task = self.task(step)
        if "fixed" in step.flags or "fixed_noreplace" in step.flags:
            self.guard_heap(step, step.addr or 0, step.length, "MAP_FIXED would replace", "addr")
        addr = syscalls.sys_mmap(self.kernel, task, step.addr or 0, step.length, step.prot,
                                 step.flags, step.page_size, step.file, step.file_offset)
        huge = (step.page_size or 2 << 20) if "hugetlb" in step.flags else 4096
        self.maps[step.process][step.name] = (addr, (step.length + huge - 1) // huge * huge)

    def do_munmap(self, step: s.MunmapStep) -> None:
        task = self.task(step)
        addr, length = self.region(step, step.range)
        self.guard_heap(step, addr, length, "the range overlaps", "region")
        syscalls.sys_munmap(self.kernel, task, addr, length)
        maps = self.maps[step.process]
        for name, (start, size) in list(maps.items()):
            if addr <= start and start + size <= addr + length:
                del maps[name]

    def do_mprotect(self, step: s.MprotectStep) -> None:
        addr, length = self.region(step, step.range)
        if step.prot != PROT_READ | PROT_WRITE and step.prot != PROT_READ | PROT_WRITE | PROT_EXEC:
            self.guard_heap(step, addr, length, "the range overlaps", "region")
        syscalls.sys_mprotect(self.kernel, self.task(step), addr, length, step.prot)

    def do_madvise(self, step: s.MadviseStep) -> None:
        addr, length = self.region(step, step.range)
        if step.advice in ("dontneed", "free"):
            self.guard_heap(step, addr, length, "the range overlaps", "region")
        syscalls.sys_madvise(self.kernel, self.task(step), addr, length, step.advice)

    def do_touch(self, step: s.TouchStep) -> None:
        task = self.task(step)
        addr, length = self.region(step, step.range)
        access = ACCESS_WRITE if step.access == "write" else ACCESS_READ
        fastpath.touch(self.kernel, task, addr, length, step.stride, access)

    def do_write(self, step: s.WriteStep) -> None:
        task = self.task(step)
        addr, _ = self.region(step, s.Range(step.region, step.offset))
        self.guard_heap(step, addr, len(step.data), "the data would overwrite", "data")
        self._copy(task, addr, step.data)

    def _copy(self, task: Task, addr: int, data: bytes) -> None:
        k = self.kernel
        pos = 0
        while pos < len(data):
            va = addr + pos
            chunk = min(len(data) - pos, 4096 - (va & 4095))
            paddr = k.user_access(task, va, ACCESS_WRITE)
            k.physmem.write_bytes(paddr, data[pos: pos + chunk])
            pos += chunk

    def do_read(self, step: s.ReadStep) -> None:
        task = self.task(step)
        addr, _ = self.region(step, s.Range(step.region, step.offset))
        k = self.kernel
        got = bytearray()
        pos = 0
        while pos < step.length:
            va = addr + pos
            chunk = min(step.length - pos, 4096 - (va & 4095))
            paddr = k.user_access(task, va, ACCESS_READ)
            got += k.physmem.read_bytes(paddr, chunk)
            pos += chunk
        if step.expect is not None and bytes(got) != step.expect:
            raise ExpectationFailed(f"read {bytes(got)!r}, expected {step.expect!r}",
                                    self.location(step, "expect"))

    def do_fork(self, step: s.ForkStep) -> None:
        parent = self.task(step)
        if step.name in self.kernel.tasks:
            raise ScenarioError(f"process {step.name!r} exists", self.location(step, "name"))
        child = syscalls.sys_fork(self.kernel, parent, step.name)
        self.maps[step.name] = dict(self.maps[step.process])
        self._warm_image(child)
        self._warm_image(parent)

    def _warm_image(self, task: Task) -> None:
        """Model the measurement conditions of the kernel oracle: after fork, its probe
        re-reads every page of its own start-image mappings and re-writes the writable ones
        (COW-breaking them) in both processes, and those faults are not counted."""
        k = self.kernel
        min_flt, maj_flt, pgfault = task.min_flt, task.maj_flt, int(k.vm_events[VmEvent.PGFAULT])
        for spec in START_IMAGE:
            if spec.kind == "vvar":
                continue
            for vaddr in range(spec.start, spec.end, 4096):
                if vma_lookup(task.mm, vaddr) is None:
                    continue
                try:
                    k.user_access(task, vaddr, ACCESS_READ)
                    if spec.flags & VmFlags.WRITE:
                        k.user_access(task, vaddr, ACCESS_WRITE)
                except SignalError:     # the scenario protected it: the probe skips it too
                    continue
        task.min_flt, task.maj_flt = min_flt, maj_flt
        k.vm_events[VmEvent.PGFAULT] = pgfault

    def do_exit(self, step: s.ExitStep) -> None:
        syscalls.sys_exit(self.kernel, self.task(step))

    def do_set(self, step: s.SetStep) -> None:
        for path, value in step.knobs.items():
            self.kernel.set_knob(path, value)

    def do_measure(self, step: s.MeasureStep) -> None:
        self.measure(step.label, step.index)

    def do_khugepaged(self, step: s.KhugepagedStep) -> None:
        khugepaged.run_scans(self.kernel, step.scans)

    # -- version 2: the program break, memory locking, mremap ------------------------------
    def do_brk(self, step: s.BrkStep) -> None:
        task = self.task(step)
        new = task.mm.brk + step.delta
        if task.mm.start_brk <= new < BRK:
            self.guard_heap(step, new, BRK - new, "the break would unmap part of", "delta")
        syscalls.sys_sbrk(self.kernel, task, step.delta)

    def do_mremap(self, step: s.MremapStep) -> None:
        task = self.task(step)
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
        new_addr = syscalls.sys_mremap(self.kernel, task, addr, length, step.new_length, bits,
                                       step.addr or 0)
        maps = self.maps[step.process]
        gone = []
        if "fixed" in step.flags:
            gone.append((new_addr, new_length))          # whatever was there is replaced
        if "dontunmap" not in step.flags:
            if new_addr != addr:
                gone.append((addr, old_length))
            elif new_length < old_length:
                gone.append((addr + new_length, old_length - new_length))
        for lo, size in gone:
            for name, (start, mlen) in list(maps.items()):
                if lo <= start and start + mlen <= lo + size:
                    del maps[name]
        if step.name is not None:
            maps[step.name] = (new_addr, new_length)
        elif step.range.region != s.HEAP_REGION:
            maps[step.range.region] = (new_addr, new_length)

    def do_mlock(self, step: s.MlockStep) -> None:
        addr, length = self.region(step, step.range)
        syscalls.sys_mlock(self.kernel, self.task(step), addr, length, step.onfault)

    def do_munlock(self, step: s.MunlockStep) -> None:
        addr, length = self.region(step, step.range)
        syscalls.sys_munlock(self.kernel, self.task(step), addr, length)

    def do_mlockall(self, step: s.MlockallStep) -> None:
        bits = {"current": MCL_CURRENT, "future": MCL_FUTURE, "onfault": MCL_ONFAULT}
        syscalls.sys_mlockall(self.kernel, self.task(step), sum(bits[f] for f in step.flags))

    def do_munlockall(self, step: s.MunlockallStep) -> None:
        syscalls.sys_munlockall(self.kernel, self.task(step))

    # version 2 files: the schema checked that each names a file made earlier
    def do_file(self, step: s.FileStep) -> None:
        syscalls.sys_file_create(self.kernel, self.task(step), step.name, step.size, step.fs)

    def do_truncate(self, step: s.TruncateStep) -> None:
        syscalls.sys_ftruncate(self.kernel, self.task(step), step.file, step.size)

    def do_fadvise(self, step: s.FadviseStep) -> None:
        syscalls.sys_fadvise_dontneed(self.kernel, self.task(step), step.file)

    def do_unlink(self, step: s.UnlinkStep) -> None:
        syscalls.sys_unlink(self.kernel, self.task(step), step.file)

    def do_msync(self, step: s.MsyncStep) -> None:
        addr, length = self.region(step, step.range)
        bits = {"async": syscalls.MS_ASYNC, "invalidate": syscalls.MS_INVALIDATE,
                "sync": syscalls.MS_SYNC}
        syscalls.sys_msync(self.kernel, self.task(step), addr, length,
                           sum(bits[f] for f in step.flags))


def run_scenario(scenario: s.Scenario, show: tuple[str, ...] = ()) -> Report:
    """Run every step; raise PagewalkError (with the step's location) on failure."""
    return ScenarioRun(scenario, show).run()


__all__ = ["Measurement", "NotImplementedStep", "Report", "ScenarioRun", "StepOutcome",
           "run_scenario"]
