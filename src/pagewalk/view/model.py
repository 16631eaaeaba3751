"""The JSON document the web view shows: one scenario run, step by step.

The scenario runs on a fresh Machine one step at a time (:meth:`ScenarioRun.run_step`);
after every step the document records each live process's figures (VmRSS, RssAnon,
VmPTE, AnonHugePages, HugetlbPages, as /proc/PID/status and smaps_rollup print them)
and the THP and fault events of /proc/vmstat; at the start, after every step (or only at
the measures, for long scenarios) and at the end it records the state: per process the
VMAs (/proc/PID/maps), the page-table tree read from the PGD's user half (entries
0..255) down to the leaves, and the page-table cost (``explain/cost.py``); at each
``measure`` it adds the /proc views. Nothing here changes the simulated state.

Tree nodes hold what the entries hold. 64-bit values travel as hex strings (JSON
numbers are doubles); the leaves of a PTE table are grouped into runs of consecutive
entries with the same flags mapping consecutive frames of one kind, so a 64 MiB touch
stays a few hundred lines. A frame mapped by more than one process (fork's COW
sharing, shared memory, the program's page cache) carries, per other process, the
virtual address where that process maps it, so the page can link them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from pagewalk.errors import PagewalkError
from pagewalk.explain.cost import TABLE_BYTES, process_cost
from pagewalk.hw import pgtable_types as pt
from pagewalk.hw.paging import LEVEL_NAMES, LINUX_LEVEL_NAMES
from pagewalk.mm.filemap import page_cache_owners
from pagewalk.mm.page_alloc import NO_PAGE, PageFlag
from pagewalk.mm.pgtable import USER_PGD_ENTRIES
from pagewalk.mm.vmstat import NodeStat, VmEvent
from pagewalk.proc.task_mmu import VM_FLAG_MNEMONICS, anon_huge_pages, maps_line, task_mem
from pagewalk.scenario import schema as s
from pagewalk.scenario.runner import ScenarioRun
from pagewalk.units import format_size

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel
    from pagewalk.kernel.task import Task
    from pagewalk.mm.shmem import PageCacheFile

FORMAT = "pagewalk-view/1"
MAX_STEP_STATES = 64          # longer scenarios keep the tree at the measures only
SERIES_FIELDS = ("VmRSS", "RssAnon", "RssFile", "VmPTE", "AnonHugePages", "HugetlbPages")
EVENT_SERIES = {"pgfault": VmEvent.PGFAULT, "thp_fault_alloc": VmEvent.THP_FAULT_ALLOC,
                "thp_fault_fallback": VmEvent.THP_FAULT_FALLBACK,
                "thp_split_pmd": VmEvent.THP_SPLIT_PMD,
                "thp_collapse_alloc": VmEvent.THP_COLLAPSE_ALLOC}
SYSTEM_VIEWS = ("/proc/meminfo", "/proc/vmstat", "/proc/buddyinfo", "sar")
PROCESS_VIEWS = ("status", "maps", "smaps", "smaps_rollup")
SMAPS_MAX_PTES = 1 << 18      # 1 GiB of 4 KiB pages
PFN_BITS = pt.PTE_PFN_MASK


# -- frames mapped by each process (for the links between processes) ---------------------------

@dataclass(slots=True)
class FrameIndex:
    """Every 4 KiB frame one process maps, sorted, with the virtual address mapping it."""

    pfns: npt.NDArray[np.int64]
    vaddrs: npt.NDArray[np.int64]

    def lookup(self, pfns: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """The vaddr mapping each pfn here, or -1."""
        if not self.pfns.size:
            return np.full(pfns.shape, -1, dtype=np.int64)
        pos = np.searchsorted(self.pfns, pfns).clip(0, self.pfns.size - 1)
        return np.where(self.pfns[pos] == pfns, self.vaddrs[pos], -1)


def _leaf_arrays(k: Kernel, task: Task) -> tuple[list[npt.NDArray[np.int64]],
                                                 list[npt.NDArray[np.int64]]]:
    """(pfns, vaddrs) of every 4 KiB frame the task's leaves map (huge leaves expanded)."""
    shifts = k.pgtables.shifts
    pfns: list[npt.NDArray[np.int64]] = []
    vaddrs: list[npt.NDArray[np.int64]] = []

    def visit(table_pfn: int, level: int, base: int) -> None:
        shift = shifts[level]
        words = k.physmem.frame_words(table_pfn)
        if level == 0:
            words = words[:USER_PGD_ENTRIES]
        indexes = np.flatnonzero(words)
        if shift == 12:
            pfns.append(((words[indexes] & np.uint64(PFN_BITS)) >> np.uint64(12)).astype(np.int64))
            vaddrs.append(base + (indexes.astype(np.int64) << 12))
            return
        for index in indexes:
            entry = int(words[index])
            vaddr = base | (int(index) << shift)
            if entry & pt._PAGE_PSE:
                count = 1 << (shift - 12)
                pfns.append(pt.huge_pfn(entry, shift) + np.arange(count, dtype=np.int64))
                vaddrs.append(vaddr + (np.arange(count, dtype=np.int64) << 12))
                continue
            visit(pt.pte_pfn(entry), level + 1, vaddr)

    visit(task.mm.pgd_pfn, 0, 0)
    return pfns, vaddrs


def frame_indexes(k: Kernel) -> dict[str, FrameIndex]:
    """Per live process, the frames it maps; the zero pages are left out (every process
    maps them, so they are marked as such instead of linked)."""
    out = {}
    skip = {k.zero_pfn}
    for name, task in k.tasks.items():
        pfn_parts, va_parts = _leaf_arrays(k, task)
        pfns = np.concatenate(pfn_parts) if pfn_parts else np.zeros(0, dtype=np.int64)
        vaddrs = np.concatenate(va_parts) if va_parts else np.zeros(0, dtype=np.int64)
        keep = ~np.isin(pfns, list(skip))
        if k.huge_zero_pfn != NO_PAGE:
            keep &= (pfns < k.huge_zero_pfn) | (pfns >= k.huge_zero_pfn + 512)
        pfns, vaddrs = pfns[keep], vaddrs[keep]
        order = np.argsort(pfns, kind="stable")
        out[name] = FrameIndex(pfns[order], vaddrs[order])
    return out


# -- the page-table tree ------------------------------------------------------------------------

def frame_kind(k: Kernel, pfn: int) -> str:
    """What a leaf maps, in the words /proc uses."""
    if pfn == k.zero_pfn:
        return "zero page"
    if k.huge_zero_pfn != NO_PAGE and pfn == k.huge_zero_pfn:
        return "huge zero page"
    if pfn >= k.physmem.nr_frames:
        return "pfnmap"
    flags = int(k.memmap.flags[pfn])
    for bit, name in ((PageFlag.HUGETLB, "hugetlb"), (PageFlag.ANON, "anon"),
                      (PageFlag.SHMEM, "shmem"), (PageFlag.FILE, "file")):
        if flags & bit:
            return name
    return "other"


def _flags_text(entry: int) -> str:
    names = pt.decode_flags(entry)
    if not entry & pt._PAGE_PRESENT and entry & pt._PAGE_PROTNONE:
        names = ["PROTNONE" if name == "G" else name for name in names]
    return " ".join(names)


@dataclass(slots=True)
class TreeBuilder:
    """Builds one process's tree; ``others`` are the other processes' frame indexes."""

    k: Kernel
    task: Task
    others: dict[str, FrameIndex]
    names: tuple[str, ...] = ()
    stats: dict[str, int] = field(default_factory=dict)
    owners: dict[int, tuple[PageCacheFile, int]] | None = None   # page-cache pages

    def page_cache_owners(self) -> dict[int, tuple[PageCacheFile, int]]:
        if self.owners is None:
            self.owners = page_cache_owners(self.k)
        return self.owners

    def build(self) -> dict[str, Any]:
        self.names = LEVEL_NAMES[self.k.levels]
        mm = self.task.mm
        root = self.table(mm.pgd_pfn, 0, 0)
        root["pti_user_pgd"] = mm.pgd_pfn + 1 if mm.pgd_order else None
        return root

    def table(self, table_pfn: int, level: int, base: int) -> dict[str, Any]:
        shift = self.k.pgtables.shifts[level]
        words = self.k.physmem.frame_words(table_pfn)
        if level == 0:
            words = words[:USER_PGD_ENTRIES]
        indexes = np.flatnonzero(words)
        node: dict[str, Any] = {"level": self.names[level], "linux": LINUX_LEVEL_NAMES[
            self.k.levels][level], "pfn": table_pfn, "paddr": f"{table_pfn << 12:#x}",
            "shift": shift, "used": int(indexes.size)}
        if shift == 12:
            node["runs"] = self.pte_runs(table_pfn, words, indexes, base)
            return node
        entries = []
        for index in indexes:
            entry = int(words[index])
            vaddr = base | (int(index) << shift)
            item: dict[str, Any] = {"i": int(index), "va": f"{vaddr:#x}", "e": f"{entry:#018x}",
                                    "f": _flags_text(entry)}
            if entry & pt._PAGE_PSE:
                item.update(self.huge_leaf(table_pfn, int(index), entry, shift, vaddr))
            else:
                item["t"] = "table"
                item["child"] = self.table(pt.pte_pfn(entry), level + 1, vaddr)
            entries.append(item)
        node["entries"] = entries
        return node

    def huge_leaf(self, table_pfn: int, index: int, entry: int, shift: int,
                  vaddr: int) -> dict[str, Any]:
        pfn = pt.huge_pfn(entry, shift)
        count = 1 << (shift - 12)
        item: dict[str, Any] = {"t": "huge", "size": format_size(1 << shift), "pfn": pfn,
                                "kind": frame_kind(self.k, pfn)}
        owned = self.page_cache_owners().get(pfn)
        if owned is not None:
            item["file"], item["index"] = owned[0].map_name, owned[1]
        if item["kind"] == "anon":
            item["kind"] = "THP"
        deposit = self.k.deposit.get((table_pfn << 12) + index * 8)
        if deposit is not None:
            item["deposit"] = deposit
        frames = pfn + np.arange(count, dtype=np.int64)
        shared = {}
        for name, other in self.others.items():
            found = other.lookup(frames)
            hits = np.flatnonzero(found >= 0)
            if hits.size:
                shared[name] = f"{int(found[hits[0]]):#x}"
        if shared:
            item["shared"] = shared
        return item

    def pte_runs(self, table_pfn: int, words: npt.NDArray[np.uint64],
                 indexes: npt.NDArray[np.intp], base: int) -> list[dict[str, Any]]:
        """The leaves of one PTE table as runs: consecutive indexes, equal flags, frames
        consecutive (or the same zero page), one kind, the same sharing; a frame shared
        with another process at ``va`` means entry ``k`` of the run is at ``va + k * 4096``
        there."""
        if not indexes.size:
            return []
        k = self.k
        entries = words[indexes]
        flags = (entries & np.uint64(~PFN_BITS & (1 << 64) - 1)).astype(np.uint64)
        pfns = ((entries & np.uint64(PFN_BITS)) >> np.uint64(12)).astype(np.int64)
        in_ram = pfns < k.physmem.nr_frames
        kinds = np.where(in_ram, k.memmap.flags[np.where(in_ram, pfns, 0)], 0xFFFF).astype(
            np.int64)
        zero = pfns == k.zero_pfn
        kinds[zero] = -1
        found = {name: other.lookup(pfns) for name, other in self.others.items()}
        shared_mask = np.zeros(indexes.size, dtype=np.int64)
        for bit, (_, where) in enumerate(found.items()):
            shared_mask |= (where >= 0).astype(np.int64) << bit
        owners = self.page_cache_owners()
        owner = [owners.get(pfn) for pfn in pfns.tolist()]
        file_ids = np.array([id(o[0]) if o else 0 for o in owner], dtype=np.int64)
        file_index = np.array([o[1] if o else -1 for o in owner], dtype=np.int64)
        breaks = np.ones(indexes.size, dtype=bool)
        if indexes.size > 1:
            step_ok = (np.diff(pfns) == 1) | (zero[1:] & zero[:-1])
            # a run of page-cache pages is one file's consecutive pages too
            step_ok &= (file_ids[1:] == file_ids[:-1]) & \
                ((file_ids[1:] == 0) | (np.diff(file_index) == 1))
            breaks[1:] = ((np.diff(indexes) != 1) | (flags[1:] != flags[:-1]) | ~step_ok
                          | (kinds[1:] != kinds[:-1]) | (shared_mask[1:] != shared_mask[:-1]))
            for where in found.values():   # in a run, the other process's vaddrs are linear too
                breaks[1:] |= (where[1:] >= 0) & (np.diff(where) != 4096)
        starts = np.flatnonzero(breaks)
        ends = np.append(starts[1:], indexes.size)
        runs = []
        for first, end in zip(starts.tolist(), ends.tolist()):
            entry = int(entries[first])
            pfn = int(pfns[first])
            run: dict[str, Any] = {
                "i": int(indexes[first]), "n": end - first,
                "va": f"{base | (int(indexes[first]) << 12):#x}", "e": f"{entry:#018x}",
                "f": _flags_text(entry), "pfn": pfn, "step": 0 if zero[first] else 1,
                "kind": frame_kind(k, pfn)}
            first_owner = owner[first]
            if first_owner is not None:      # page->mapping, page->index
                run["file"], run["index"] = first_owner[0].map_name, first_owner[1]
            shared = {name: f"{int(where[first]):#x}" for name, where in found.items()
                      if where[first] >= 0}
            if shared:
                run["shared"] = shared
            runs.append(run)
        return runs


# -- one state -----------------------------------------------------------------------------

def vma_rows(task: Task) -> list[dict[str, Any]]:
    rows = []
    for vma in task.mm.vmas:
        line = maps_line(vma)
        rows.append({
            "start": f"{vma.start:#x}", "end": f"{vma.end:#x}", "size": vma.end - vma.start,
            "perms": line.split()[1], "name": vma.name,
            "kind": ("hugetlb" if vma.is_hugetlb() else "shmem" if vma.is_shmem()
                     else "anon" if vma.is_anonymous() else "file" if vma.file is not None
                     else "special"),
            "flags": " ".join(name for bit, name in VM_FLAG_MNEMONICS if vma.flags & bit),
            "maps": line,
        })
    return rows


def process_state(k: Kernel, task: Task, others: dict[str, FrameIndex]) -> dict[str, Any]:
    cost = process_cost(k, task)
    return {
        "pid": task.pid, "ppid": task.parent.pid if task.parent else 1,
        "vmas": vma_rows(task),
        "tree": TreeBuilder(k, task, others).build(),
        "cost": cost.to_json(),
        "status": task_mem(task),
    }


def state(run: ScenarioRun, after: int, label: str | None, views: bool) -> dict[str, Any]:
    """The state after step ``after`` (-1: the start)."""
    k = run.kernel
    frames = frame_indexes(k)
    processes = {}
    for name, task in k.tasks.items():
        others = {other: index for other, index in frames.items() if other != name}
        processes[name] = process_state(k, task, others)
        processes[name]["maps"] = {region: {"start": f"{start:#x}", "length": length}
                                   for region, (start, length) in run.maps.get(name, {}).items()}
    doc: dict[str, Any] = {"after": after, "label": label, "processes": processes}
    if views:
        doc["views"] = render_views(run, {name: proc["cost"]["leaves"]["4KiB"]
                                          for name, proc in processes.items()})
    return doc


def render_views(run: ScenarioRun, pte_leaves: dict[str, int]) -> dict[str, str]:
    """The /proc views of a measure. smaps and smaps_rollup visit every leaf in Python
    (proc/task_mmu.py), so above SMAPS_MAX_PTES 4 KiB leaves they are left out, saying so."""
    views = {path: run.render(path) for path in SYSTEM_VIEWS}
    for name in run.kernel.tasks:
        for view in PROCESS_VIEWS:
            path = f"/proc/{name}/{view}"
            if view.startswith("smaps") and pte_leaves.get(name, 0) > SMAPS_MAX_PTES:
                views[path] = (f"({pte_leaves[name]:,} pages mapped by PTEs: too many to render "
                               f"here; `pagewalk run FILE --show {path}` prints it)\n")
                continue
            views[path] = run.render(path)
    return views


# -- steps and series ---------------------------------------------------------------------------

def step_text(step: s.Step) -> str:
    """A one-line summary of a step, in the scenario format's words."""
    parts = []
    for f in dataclasses.fields(step):
        if f.name in ("index", "process", "expect_error", "expect_signal"):
            continue
        value = getattr(step, f.name)
        if value is None:
            continue
        parts.append(_field_text(f.name, value))
    return " ".join(p for p in parts if p)


def _field_text(name: str, value: object) -> str:
    if isinstance(value, s.Range):
        text = value.region
        if value.offset:
            text += f"+{format_size(value.offset)}"
        if value.length is not None:
            text += f" ({format_size(value.length)})"
        return text
    if name in ("length", "stride", "page_size"):
        return f"{name}={format_size(int(str(value)))}"
    if name == "addr":
        return f"addr={int(str(value)):#x}"
    if name == "prot":
        bits = int(str(value))
        return "prot=" + ("".join(c for bit, c in ((1, "r"), (2, "w"), (4, "x")) if bits & bit)
                          or "none")
    if isinstance(value, frozenset):
        return ",".join(sorted(str(v) for v in value))
    if isinstance(value, dict):
        return " ".join(f"{key}={val}" for key, val in value.items())
    if isinstance(value, bytes):
        return repr(value.decode(errors="replace"))
    if name in ("name", "label", "region", "advice", "access"):
        return str(value)
    return f"{name}={value}"


def series_point(run: ScenarioRun, base_events: npt.NDArray[np.int64]) -> dict[str, Any]:
    k = run.kernel
    processes = {}
    for name, task in k.tasks.items():
        status = task_mem(task)
        row = {key: int(status[key]) for key in SERIES_FIELDS if key in status}
        row["AnonHugePages"] = anon_huge_pages(k, task.mm) >> 10
        processes[name] = row
    system = {key: int(k.vm_events[event] - base_events[event])
              for key, event in EVENT_SERIES.items()}
    system["PageTables"] = int(k.node_stat[NodeStat.NR_PAGETABLE]) * (TABLE_BYTES >> 10)
    return {"processes": processes, "system": system}


def build_document(scenario: s.Scenario) -> dict[str, Any]:
    """Run ``scenario`` and describe it (ScenarioError for bad input is raised as is; a step
    that fails ends the run and is shown as failed)."""
    run = ScenarioRun(scenario)
    base_events = run.kernel.vm_events.copy()
    every_step = len(scenario.steps) <= MAX_STEP_STATES
    steps: list[dict[str, Any]] = []
    points = [series_point(run, base_events)]
    states = [state(run, -1, None, views=False)]
    failed = None
    for step in scenario.steps:
        row = {"index": step.index, "kind": step.kind, "process": step.process,
               "text": step_text(step), "outcome": "ok"}
        if isinstance(step, s.MeasureStep):
            row["label"] = step.label
        try:
            run.run_step(step)
        except PagewalkError as err:
            row["outcome"] = "failed"
            row["error"] = str(err)
            steps.append(row)
            failed = {"step": step.index, "message": str(err)}
            break
        if step.expect_error is not None or step.expect_signal is not None:
            expected = step.expect_error or step.expect_signal
            assert expected is not None
            row["outcome"] = f"{expected.name} (expected)"
        steps.append(row)
        points.append(series_point(run, base_events))
        is_measure = isinstance(step, s.MeasureStep)
        if every_step or is_measure:
            label = step.label if isinstance(step, s.MeasureStep) else None
            states.append(state(run, step.index, label, views=is_measure))
    if steps and states[-1]["after"] != steps[-1]["index"]:
        states.append(state(run, steps[-1]["index"], None, views=False))   # where it ended
    measurements = [{"label": m.label, "step": m.step, "processes": m.processes,
                     "system": m.system} for m in run.measurements]
    system = scenario.system
    return {
        "format": FORMAT,
        "scenario": {"name": scenario.name, "description": scenario.description,
                     "file": scenario.file,
                     "system": {"ram": format_size(system.ram), "paging": system.paging,
                                "pti": system.pti, "pcid": system.pcid,
                                "sysfs": dict(system.sysfs)}},
        "steps": steps,
        "failed": failed,
        "series": points,
        "states": states,
        "measurements": measurements,
    }
