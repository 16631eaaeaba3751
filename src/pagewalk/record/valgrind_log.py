"""valgrind's log of one run: lackey's access lines and valgrind's own syscall trace
(``--trace-syscalls=yes``) in one ordered stream, parsed a chunk at a time.

Both go through valgrind's one log sink in program order: lackey prints each access from
its instrumentation as the guest runs, and the syscall wrapper (coregrind/m_syswrap
syswrap-main.c ``VG_(client_syscall)``) prints ``SYSCALL[pid,tid](nr) name ( args )``
before the call and the result after it, so every access line lies between the syscalls
that came before and after it in the program. The syscall lines look like::

    SYSCALL[16959,1](9) sys_mmap ( 0x0, 8192, 3, 34, 4294967295, 0 ) --> [pre-success] Success(0x4835000)
    SYSCALL[16959,1](11) sys_munmap ( 0x4a2a000, 1048576 )[sync] --> Success(0x0)
    SYSCALL[16959,1](257) sys_openat ( 4294967196, 0x40290b1(/etc/ld.so.cache), 524288 ) --> [async] ...
    SYSCALL[16959,1](257) ... [async] --> Success(0x4)
    SYSCALL[16959,1](334) unimplemented (by the kernel) syscall: 334! (ni_syscall)
     --> [pre-fail] Failure(0x26)

Access lines are handed whole to the lackey scanner of trace/formats.py (one compiled
pass, no Python loop per line); only the syscall lines are parsed in Python.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from pagewalk.errors import Location, TraceError
from pagewalk.trace.formats import parse_lackey

CHUNK_BYTES = 4 << 20
#: the system calls a recording keeps (arch/x86/entry/syscalls/syscall_64.tbl)
MEMORY_SYSCALLS = {9: "mmap", 10: "mprotect", 11: "munmap", 12: "brk", 25: "mremap",
                   28: "madvise", 149: "mlock", 150: "munlock", 151: "mlockall",
                   152: "munlockall", 325: "mlock2", 56: "clone", 57: "fork", 58: "vfork",
                   435: "clone3", 60: "exit", 231: "exit_group"}
#: the calls that name files, so that a file mmap knows its path
OPEN_SYSCALLS = {2: "open", 257: "openat"}
CLOSE_SYSCALL = 3

_HEAD = re.compile(rb"SYSCALL\[(\d+),(\d+)\]\((\d+)\) (.*)")
_RESULT = re.compile(rb"(Success|Failure)\((0x[0-9a-fA-F]+)\)\s*$")
_NUMBER = re.compile(rb"\s*(0x[0-9a-fA-F]+|-?\d+|[0-9a-fA-F]+)")
_PATH = re.compile(rb"0x[0-9a-fA-F]+\((.*?)\)")


@dataclass(frozen=True, slots=True)
class Syscall:
    """One memory system call as the program made it: its number and name, the arguments
    as valgrind printed them (unsigned), the result (an address or 0) or the errno, and for
    a file mmap the path of the descriptor."""

    nr: int
    name: str
    args: tuple[int, ...]
    result: int
    errno: int = 0
    path: str | None = None
    tid: int = 1

    def to_json(self) -> dict[str, object]:
        doc: dict[str, object] = {"nr": self.nr, "name": self.name, "args": list(self.args),
                                  "result": self.result, "errno": self.errno, "tid": self.tid}
        if self.path is not None:
            doc["path"] = self.path
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> Syscall:
        args = doc["args"]
        assert isinstance(args, list)
        path = doc.get("path")
        return cls(int(str(doc["nr"])), str(doc["name"]), tuple(int(a) for a in args),
                   int(str(doc["result"])), int(str(doc.get("errno", 0))),
                   None if path is None else str(path), int(str(doc.get("tid", 1))))


Event = npt.NDArray[np.uint64] | Syscall


@dataclass(slots=True)
class _Pending:
    nr: int
    args: tuple[int, ...]
    path: str | None


class SyscallTracker:
    """Turns syscall lines into :class:`Syscall` events: pairs an ``[async]`` call with its
    completion line (by thread), and follows open/openat/close so that an mmap of a
    descriptor carries the file's path."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.fds: dict[int, str] = {}
        self.pending: dict[int, _Pending] = {}
        self.unimplemented = False          # the next " --> " line answers it

    def line(self, text: bytes, line_number: int) -> Syscall | None:
        """The memory syscall one line completes, or None."""
        if text.startswith(b" -->"):
            return None                     # the result of an unimplemented syscall
        head = _HEAD.match(text)
        if head is None:
            raise TraceError(f"line {line_number}: not a valgrind syscall line: "
                             f"{text[:60].decode('utf-8', 'replace')!r}", Location(file=self.name))
        tid, nr, rest = int(head[2]), int(head[3]), head[4]
        if rest.startswith(b"... [async]"):
            pending = self.pending.pop(tid, None)
            if pending is None:
                return None
            return self._finish(nr, pending.args, pending.path, rest, tid)
        if nr not in MEMORY_SYSCALLS and nr not in OPEN_SYSCALLS and nr != CLOSE_SYSCALL:
            return None
        args, path = _arguments(rest)
        if rest.rstrip().endswith(b"[async] ..."):
            self.pending[tid] = _Pending(nr, args, path)
            return None
        return self._finish(nr, args, path, rest, tid)

    def _finish(self, nr: int, args: tuple[int, ...], path: str | None, rest: bytes,
                tid: int) -> Syscall | None:
        found = _RESULT.search(rest)
        if found is None:          # exit_group never returns; valgrind may print nothing
            ok, value = True, 0
        else:
            ok, value = found[1] == b"Success", int(found[2], 16)
        if nr in OPEN_SYSCALLS:
            if ok and path is not None:
                self.fds[value] = path
            return None
        if nr == CLOSE_SYSCALL:
            if ok and args:
                self.fds.pop(args[0], None)
            return None
        file = None
        if nr == 9 and len(args) == 6 and args[4] & 0xFFFFFFFF != 0xFFFFFFFF:
            file = self.fds.get(args[4] & 0xFFFFFFFF)
        return Syscall(nr, MEMORY_SYSCALLS[nr], args, value if ok else 0,
                       0 if ok else value, file, tid)


def _arguments(rest: bytes) -> tuple[tuple[int, ...], str | None]:
    """The numbers between the first ``(`` and its ``)``, and a path shown as
    ``0xADDR(path)``."""
    open_at = rest.find(b"(")
    close_at = rest.rfind(b")", 0, rest.find(b"-->") if b"-->" in rest else len(rest))
    inside = rest[open_at + 1:close_at] if open_at >= 0 and close_at > open_at else b""
    path_match = _PATH.search(inside)
    path = path_match[1].decode("utf-8", "replace") if path_match else None
    if path_match:
        inside = inside[:path_match.start()] + b"0x0" + inside[path_match.end():]
    args = []
    for part in inside.split(b","):
        number = _NUMBER.match(part)
        if number is None:
            continue
        token = number[1]
        args.append(int(token, 0) if token.startswith((b"0x", b"-")) or token.isdigit()
                    else int(token, 16))
    return tuple(args), path


def iter_events(stream: BinaryIO, name: str, va_bits: int = 48,
                chunk_bytes: int = CHUNK_BYTES) -> Iterator[Event]:
    """Accesses (.pwt words, in runs between syscalls) and memory syscalls, in program
    order, from valgrind's log read a chunk at a time (bounded memory)."""
    tracker = SyscallTracker(name)
    held = b""
    line_number = 0
    read = getattr(stream, "read1", stream.read)   # a pipe: what is there, not a full chunk
    while True:
        data = read(chunk_bytes)
        if not data:
            break
        buffer = held + data
        cut = buffer.rfind(b"\n") + 1
        held = buffer[cut:]
        yield from _events_of(buffer[:cut], tracker, name, line_number, va_bits)
        line_number += buffer.count(b"\n", 0, cut)
    if held:
        yield from _events_of(held + b"\n", tracker, name, line_number, va_bits)


def _special_starts(text: bytes) -> list[int]:
    """Offsets of the lines that are not lackey's: syscall lines and their continuations."""
    starts = []
    for marker in (b"\nSYSCALL[", b"\n --> "):
        at = text.find(marker)
        while at >= 0:
            starts.append(at + 1)
            at = text.find(marker, at + 1)
    if text.startswith((b"SYSCALL[", b" --> ")):
        starts.append(0)
    return sorted(starts)


def _events_of(text: bytes, tracker: SyscallTracker, name: str, first_line: int,
               va_bits: int) -> Iterator[Event]:
    """The events of whole lines ``text``."""
    position = 0
    line_number = first_line
    for start in _special_starts(text):
        if start > position:
            words, nr_lines = parse_lackey(text[position:start], name, line_number, va_bits,
                                           skip_valgrind_notes=True)
            line_number += nr_lines
            if words.shape[0]:
                yield words
        end = text.index(b"\n", start)
        line_number += 1
        syscall = tracker.line(text[start:end], line_number)
        if syscall is not None:
            yield syscall
        position = end + 1
    if position < len(text):
        words, _ = parse_lackey(text[position:], name, line_number, va_bits,
                                skip_valgrind_notes=True)
        if words.shape[0]:
            yield words
