"""``pagewalk record``: run a program under valgrind (lackey's access trace and valgrind's
syscall trace in one ordered log, read from a pipe as it fills) and write a recording.

The header holds two layouts of the process at its start: the native one (the program
exec'd on this kernel with ASLR off and stopped right after execve: record/native.py),
which the replay rebuilds, and valgrind's client layout (valgrind loads the program, its
interpreter and its stack at addresses of its own: coregrind/m_ume, m_initimg), read from
/proc/PID/maps of the valgrind process once the program runs, which the replay maps onto
the native one. The sizes of the files the program maps are kept too (the replay makes
files of those sizes).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from pagewalk.errors import TraceError
from pagewalk.record.native import NativeRun, parse_maps_line, run_native
from pagewalk.record.recfile import End, RecordingWriter
from pagewalk.record.valgrind_log import Syscall, iter_events
from pagewalk.trace.formats import KIND_SHIFT, VA_MASK

FORMAT_VERSION = 1
STORE_KIND = 1


@dataclass(frozen=True, slots=True)
class RecordResult:
    """What ``record`` did: the file, its end frame and the native run it made."""

    path: Path
    end: End
    native: NativeRun


def record(program: list[str], output: Path, compare: bool, program_stdout: int | None = None
           ) -> RecordResult:
    """Record ``program`` into ``output``; with ``compare`` its native run goes to the end
    (it is the run whose figures are compared), else it stops at exec (layout only)."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise TraceError("record needs valgrind, which is not installed (not on PATH)")
    resolved = shutil.which(program[0])
    if resolved is None:
        raise TraceError(f"no such program: {program[0]!r}")
    argv = [resolved, *program[1:]]
    native = run_native(argv, layout_only=not compare)
    read_fd, write_fd = os.pipe()
    command = ["setarch", "-R", valgrind, "--tool=lackey", "--trace-mem=yes",
               "--trace-syscalls=yes", f"--log-fd={write_fd}", *argv]
    process = subprocess.Popen(command, pass_fds=(write_fd,), stdout=program_stdout)
    os.close(write_fd)
    try:
        with os.fdopen(read_fd, "rb") as stream, open(output, "wb") as out:
            end = _write(stream, out, process, argv, native)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return RecordResult(output, end, native)


def _write(stream: BinaryIO, out: BinaryIO, process: subprocess.Popen[bytes],
           argv: list[str], native: NativeRun) -> End:
    writer = RecordingWriter(out)
    header_done = False
    file_sizes: dict[str, int] = {}
    for event in iter_events(stream, f"valgrind lackey {argv[0]}"):
        if not header_done:
            if isinstance(event, Syscall):
                raise TraceError("valgrind's log shows a syscall before any access")
            writer.header(_header(argv, native, process.pid, event, file_sizes))
            header_done = True
        if isinstance(event, Syscall):
            if event.path is not None and event.path not in file_sizes:
                file_sizes[event.path] = _file_size(event.path)
                writer.header({"file": event.path, "size": file_sizes[event.path]})
            writer.syscall(event)
        else:
            writer.accesses_run(event)
    status = process.wait()
    if not header_done:
        raise TraceError(f"valgrind ran {argv[0]} but its log holds no access (status "
                         f"{status})")
    return writer.end(status)


def _file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _header(argv: list[str], native: NativeRun, pid: int, first: np.ndarray,
            file_sizes: dict[str, int]) -> dict[str, object]:
    """The header, written when valgrind's first accesses arrive: the program runs then,
    so its client mappings are in place; the first store is a push on its stack."""
    try:
        valgrind_maps = [parse_maps_line(line) for line in
                         Path(f"/proc/{pid}/maps").read_text().splitlines()]
    except OSError as err:
        raise TraceError(f"valgrind (pid {pid}) ended before its layout could be read: "
                         f"{err.strerror}") from None
    stores = first[(first >> np.uint64(KIND_SHIFT)) == STORE_KIND]
    stack_vaddr = int(stores[0] & np.uint64(VA_MASK)) if stores.shape[0] else 0
    stack = next((m for m in valgrind_maps if m.start <= stack_vaddr < m.end and
                  not m.path.startswith("/")), None)
    if stack is None:
        # valgrind's client stack carries no [stack] name: it is the highest anonymous
        # rw-p mapping (valgrind's own stacks are rwx; its host stack is [stack]), also
        # when the first run of accesses is too short to hold a push
        anonymous = [m for m in valgrind_maps if not m.path and m.perms == "rw-p"]
        stack = max(anonymous, key=lambda m: m.start, default=None)
    for line in native.maps:
        if line.path.startswith("/"):
            file_sizes[line.path] = _file_size(line.path)
    return {
        "format": "pagewalk-recording", "version": FORMAT_VERSION, "argv": argv,
        "native": {"maps": [m.to_json() for m in native.maps],
                   "present": [[vaddr, file_page] for vaddr, file_page in native.present],
                   "start_brk": native.start_brk},
        "valgrind": {"maps": [m.to_json() for m in valgrind_maps
                              if m.path in file_sizes or m is stack],
                     "stack_end": stack.end if stack else 0},
        "files": dict(file_sizes),
    }
