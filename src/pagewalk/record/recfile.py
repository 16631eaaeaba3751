"""The recording file (``.pwr``): a program's initial layout, its memory system calls and
the accesses between them, in program order, written and read as a stream.

::

    magic  b"PWREC1\\n"
    frame  kind (1 byte) | payload length (uint32 LE) | payload
      H  header, JSON: the program, the native layout at exec, valgrind's client layout
      A  a run of accesses: number of records (uint64 LE) | zlib(.pwt words)
      S  one memory system call, JSON (valgrind_log.Syscall.to_json)
      E  the end, JSON: exit code, counts

The access words are the ``.pwt`` encoding of docs/trace-model.md (address in bits 0..56,
kind in bits 62..63), compressed a run at a time; a run holds at most
:data:`RUN_RECORDS` words, so writing and reading stay in bounded memory.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from pagewalk.errors import Location, TraceError
from pagewalk.record.valgrind_log import Syscall

MAGIC = b"PWREC1\n"
RUN_RECORDS = 1 << 20
_FRAME = struct.Struct("<cI")
_COUNT = struct.Struct("<Q")


@dataclass(frozen=True, slots=True)
class End:
    """The last frame: the program's exit code and what the recording holds."""

    exit_code: int
    accesses: int
    syscalls: int


RecordEvent = dict[str, Any] | npt.NDArray[np.uint64] | Syscall | End


class RecordingWriter:
    """Writes a recording frame by frame; accesses are gathered into runs."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.stream.write(MAGIC)
        self.pending: list[npt.NDArray[np.uint64]] = []
        self.pending_records = 0
        self.accesses = 0
        self.syscalls = 0

    def _frame(self, kind: bytes, payload: bytes) -> None:
        self.stream.write(_FRAME.pack(kind, len(payload)))
        self.stream.write(payload)

    def header(self, doc: dict[str, Any]) -> None:
        self._frame(b"H", json.dumps(doc).encode())

    def accesses_run(self, words: npt.NDArray[np.uint64]) -> None:
        """Queue accesses; a run is written when it is full or a syscall comes."""
        self.pending.append(words)
        self.pending_records += int(words.shape[0])
        if self.pending_records >= RUN_RECORDS:
            self.flush()

    def flush(self) -> None:
        if not self.pending_records:
            return
        words = np.concatenate(self.pending).astype("<u8", copy=False)
        self._frame(b"A", _COUNT.pack(words.shape[0]) + zlib.compress(words.tobytes(), 1))
        self.accesses += int(words.shape[0])
        self.pending, self.pending_records = [], 0

    def syscall(self, call: Syscall) -> None:
        self.flush()
        self._frame(b"S", json.dumps(call.to_json()).encode())
        self.syscalls += 1

    def end(self, exit_code: int) -> End:
        self.flush()
        end = End(exit_code, self.accesses, self.syscalls)
        self._frame(b"E", json.dumps({"exit_code": exit_code, "accesses": self.accesses,
                                      "syscalls": self.syscalls}).encode())
        return end


def read_recording(path: str | os.PathLike[str]) -> Iterator[RecordEvent]:
    """The frames of a recording, in order: the header (a dict), access runs (uint64
    arrays), syscalls, and the :class:`End`. Bad input: TraceError naming the byte."""
    name = str(path)
    if not os.path.isfile(path):
        raise TraceError("no such recording", Location(file=name))
    with open(path, "rb") as stream:
        if stream.read(len(MAGIC)) != MAGIC:
            raise TraceError("not a pagewalk recording (no PWREC1 magic at byte 0)",
                             Location(file=name))
        offset = len(MAGIC)
        while True:
            head = stream.read(_FRAME.size)
            if not head:
                raise TraceError(f"truncated recording: no end frame (byte {offset})",
                                 Location(file=name))
            if len(head) < _FRAME.size:
                raise TraceError(f"truncated frame at byte {offset}", Location(file=name))
            kind, length = _FRAME.unpack(head)
            payload = stream.read(length)
            if len(payload) < length:
                raise TraceError(f"truncated frame at byte {offset}: {length} bytes promised, "
                                 f"{len(payload)} there", Location(file=name))
            event = _decode(kind, payload, name, offset)
            yield event
            if isinstance(event, End):
                return
            offset += _FRAME.size + length


def _decode(kind: bytes, payload: bytes, name: str, offset: int) -> RecordEvent:
    try:
        if kind == b"A":
            (count,) = _COUNT.unpack_from(payload)
            words = np.frombuffer(zlib.decompress(payload[_COUNT.size:]), dtype="<u8")
            if words.shape[0] != count:
                raise ValueError(f"{count} accesses promised, {words.shape[0]} there")
            return words.astype(np.uint64, copy=False)
        doc = json.loads(payload)
        if kind == b"H":
            return dict(doc)
        if kind == b"S":
            return Syscall.from_json(doc)
        if kind == b"E":
            return End(int(doc["exit_code"]), int(doc["accesses"]), int(doc["syscalls"]))
    except (ValueError, KeyError, TypeError, zlib.error, struct.error) as err:
        raise TraceError(f"frame {kind.decode(errors='replace')!r} at byte {offset}: {err}",
                         Location(file=name)) from None
    raise TraceError(f"unknown frame kind {kind!r} at byte {offset}", Location(file=name))
