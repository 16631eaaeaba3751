"""The program run natively on this kernel with ASLR off, watched by native_probe.c (a
tiny ptrace helper compiled with the host's cc on first use): its layout and present
pages right after execve, and its /proc figures at the PTRACE_EVENT_EXIT stop, before
exit_mm() frees anything (fs/proc/array.c do_task_stat, task_mmu.c task_mem and
show_smaps_rollup).

minflt is counted from the exec stop: task->min_flt survives execve, so the faults the
helper's child took before it (fork, COW) and those of execve itself are taken out; the
replay starts from the same state (the pages present at exec) with its count at 0.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from pagewalk.errors import TraceError

#: /proc/PID/stat fields, 1-based as proc(5) numbers them
STAT_MINFLT, STAT_START_BRK = 10, 47
#: the figures compared, as /proc prints them (sizes in kB)
FIGURES = ("minflt", "VmHWM", "RssAnon", "RssFile", "VmPTE", "AnonHugePages")


@dataclass(frozen=True, slots=True)
class MapLine:
    """One line of /proc/PID/maps: [start, end), permissions, file offset, path or ''."""

    start: int
    end: int
    perms: str
    offset: int
    path: str

    def to_json(self) -> list[object]:
        return [self.start, self.end, self.perms, self.offset, self.path]

    @classmethod
    def from_json(cls, doc: list[object]) -> MapLine:
        start, end, perms, offset, path = doc
        return cls(int(str(start)), int(str(end)), str(perms), int(str(offset)), str(path))


def parse_maps_line(line: str) -> MapLine:
    """``start-end perms offset dev inode [path]`` (fs/proc/task_mmu.c show_map_vma)."""
    parts = line.split(maxsplit=5)
    start, end = (int(x, 16) for x in parts[0].split("-"))
    path = parts[5].strip() if len(parts) > 5 else ""
    return MapLine(start, end, parts[1], int(parts[2], 16), path)


@dataclass(slots=True)
class NativeRun:
    """What native_probe saw: the layout at exec, the pages present then (address, file
    page), start_brk, minflt at exec; at exit the figures (empty with layout only)."""

    maps: list[MapLine]
    present: list[tuple[int, bool]]
    start_brk: int
    exec_minflt: int
    figures: dict[str, int] = field(default_factory=dict)
    exit_code: int = 0


def probe_binary() -> Path:
    """native_probe compiled once per source version into the user's cache directory."""
    source = resources.files("pagewalk.record").joinpath("native_probe.c").read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pagewalk"
    binary = cache / f"native_probe-{digest}"
    if binary.is_file():
        return binary
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise TraceError("--compare needs a C compiler (cc or gcc) to build its ptrace helper")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        src = Path(work) / "native_probe.c"
        src.write_bytes(source)
        built = Path(work) / "native_probe"
        result = subprocess.run([cc, "-O1", "-o", str(built), str(src)], capture_output=True,
                                text=True, check=False)
        if result.returncode:
            raise TraceError(f"building the ptrace helper failed: {result.stderr.strip()}")
        os.replace(built, binary)
    return binary


def run_native(program: list[str], layout_only: bool) -> NativeRun:
    """Run ``program`` natively (ASLR off); ``layout_only`` stops it at exec."""
    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "probe.txt"
        command = [str(probe_binary()), *(["-x"] if layout_only else []), str(out), *program]
        subprocess.run(command, stdout=subprocess.DEVNULL if layout_only else None,
                       check=False)
        return parse_probe(out.read_text() if out.is_file() else "", program[0])


def parse_probe(text: str, program: str) -> NativeRun:
    """native_probe's output: ``exec_stat``, ``map``, ``present``, ``exit_status``,
    ``exit_rollup``, ``exit_stat`` and ``exitcode`` lines."""
    maps: list[MapLine] = []
    present: list[tuple[int, bool]] = []
    exec_stat: list[str] = []
    exit_stat: list[str] = []
    status: dict[str, int] = {}
    exit_code = -1
    for line in text.splitlines():
        tag, _, rest = line.partition(" ")
        if tag == "map":
            maps.append(parse_maps_line(rest))
        elif tag == "present":
            vaddr, file_page = rest.split()
            present.append((int(vaddr, 16), file_page == "1"))
        elif tag == "exec_stat":
            exec_stat = _stat_fields(rest)
        elif tag == "exit_stat":
            exit_stat = _stat_fields(rest)
        elif tag in ("exit_status", "exit_rollup"):
            key, _, value = rest.partition(":")
            if value.strip().endswith("kB"):
                status[key.strip()] = int(value.split()[0])
        elif tag == "exitcode":
            exit_code = int(rest)
        elif tag == "error":
            raise TraceError(f"reading {rest}")
    if not exec_stat or not maps:
        raise TraceError(f"{program}: could not run it natively (exec failed, status "
                         f"{exit_code})")
    exec_minflt = int(exec_stat[STAT_MINFLT - 1])
    figures: dict[str, int] = {}
    if exit_stat:
        figures["minflt"] = int(exit_stat[STAT_MINFLT - 1]) - exec_minflt
        for key in FIGURES[1:]:
            figures[key] = status.get(key, 0)
    return NativeRun(maps, present, int(exec_stat[STAT_START_BRK - 1]), exec_minflt,
                     figures, exit_code)


def _stat_fields(line: str) -> list[str]:
    """/proc/PID/stat split into fields; comm (field 2) may hold spaces."""
    pid, _, rest = line.partition(" (")
    comm, _, tail = rest.rpartition(") ")
    return [pid, comm, *tail.split()]
