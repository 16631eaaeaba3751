"""Trace formats of ``docs/trace-model.md``: lackey text, binary .pwt and NumPy .npy, read
in chunks of one uint64 word per access.

A word holds the virtual address in bits 0..56 and the kind in bits 62..63 (0 load,
1 store, 2 instruction fetch); bits 57..61 are zero. Binary traces are NumPy memory
maps read a chunk at a time, so memory stays flat however large the file. Lackey text
(what ``valgrind --tool=lackey --trace-mem=yes`` writes, valgrind's
``lackey/lk_main.c``: ``I  %08lx,%lu``, `` L``, `` S``, `` M``) is read a chunk of
whole lines at a time and parsed by one compiled pass over its bytes (Numba), with no
Python loop per line; a pipe (``--record``) is read the same way as it fills.
Every error names the 1-based line (lackey) or the 0-based record and its byte offset.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from io import BufferedIOBase
from pathlib import Path

import numpy as np
import numpy.typing as npt

from pagewalk.errors import Location, TraceError
from pagewalk.trace import kernels
from pagewalk.trace.kernels import LACKEY_NON_CANONICAL, LACKEY_OK

FORMATS = ("lackey", "pwt", "npy")
RECORD_BYTES = 8
VA_BITS_FIELD = 57
VA_MASK = (1 << VA_BITS_FIELD) - 1
KIND_SHIFT = 62
CHUNK_RECORDS = 1 << 22          # 32 MiB of binary records per chunk
CHUNK_TEXT_BYTES = 1 << 24       # 16 MiB of lackey text per chunk

_PAD = bytes(3)                    # so that peeking at a line's first three bytes stays inside


@dataclass(frozen=True, slots=True)
class Chunk:
    """Consecutive records of a trace: ``words`` (uint64), the index of the first one, and
    how many bytes of the source have been consumed once this chunk is done."""

    words: npt.NDArray[np.uint64]
    first_record: int
    bytes_done: int


def pack_records(vaddrs: npt.ArrayLike, kinds: npt.ArrayLike) -> npt.NDArray[np.uint64]:
    """.pwt words from addresses (their low 57 bits) and kinds (0 load, 1 store, 2 ifetch)."""
    addr = np.asarray(vaddrs, dtype=np.uint64) & np.uint64(VA_MASK)
    kind = np.asarray(kinds, dtype=np.uint64) << np.uint64(KIND_SHIFT)
    return addr | kind


def detect_format(path: str | os.PathLike[str], fmt: str | None = None) -> str:
    """``fmt`` if given, else from the extension: .pwt, .npy, anything else lackey."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise TraceError(f"unknown trace format {fmt!r} (use one of {', '.join(FORMATS)})",
                             Location(file=str(path), field="format"))
        return fmt
    suffix = Path(path).suffix.lower()
    return {".pwt": "pwt", ".npy": "npy"}.get(suffix, "lackey")


def iter_chunks(path: str | os.PathLike[str], fmt: str | None = None, va_bits: int = 48,
                chunk_records: int = CHUNK_RECORDS,
                chunk_bytes: int = CHUNK_TEXT_BYTES) -> Iterator[Chunk]:
    """The records of the trace at ``path``, a chunk at a time (bad input: TraceError).

    ``va_bits`` (48: 4-level paging, 57: 5-level) is the width lackey addresses must be
    canonical for; binary records are checked by the replay itself."""
    fmt = detect_format(path, fmt)
    name = str(path)
    if not Path(path).is_file():
        raise TraceError("no such trace file", Location(file=name))
    if fmt == "lackey":
        with open(path, "rb") as stream:
            yield from iter_lackey(stream, name, va_bits, chunk_bytes)
        return
    offset, nr_records = binary_extent(path) if fmt == "pwt" else npy_extent(path)
    yield from iter_binary(path, offset, nr_records, chunk_records)


def iter_binary(path: str | os.PathLike[str], offset: int, nr_records: int,
                chunk_records: int = CHUNK_RECORDS) -> Iterator[Chunk]:
    """Little-endian uint64 records at byte ``offset``, one read-only memory map per chunk
    (dropped when the next chunk is made, so resident memory stays one chunk)."""
    for first in range(0, nr_records, chunk_records):
        count = min(chunk_records, nr_records - first)
        words = np.memmap(path, dtype="<u8", mode="r", offset=offset + first * RECORD_BYTES,
                          shape=(count,))
        yield Chunk(words, first, offset + (first + count) * RECORD_BYTES)
        del words


def trace_size(path: str | os.PathLike[str]) -> int:
    """Bytes in the file (for progress)."""
    return os.path.getsize(path)


def load(path: str | os.PathLike[str], fmt: str | None = None,
         va_bits: int = 48) -> npt.NDArray[np.uint64]:
    """The whole trace as one uint64 array (small traces and tests; replay streams)."""
    parts = [chunk.words for chunk in iter_chunks(path, fmt, va_bits)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)


# -- binary ------------------------------------------------------------------------------
def binary_extent(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(data offset, number of records)`` of a .pwt file; a size that is not a whole
    number of records is a truncated file."""
    size = os.path.getsize(path)
    if size % RECORD_BYTES:
        raise TraceError(f"truncated trace: {size} bytes is not a whole number of 8-byte "
                         f"records (record {size // RECORD_BYTES}, at byte "
                         f"{size - size % RECORD_BYTES}, is incomplete)", Location(file=str(path)))
    return 0, size // RECORD_BYTES


def npy_extent(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(data offset, number of records)`` of a .npy file of one-dimensional ``<u8``."""
    name = str(path)
    try:
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise TraceError(f"not a readable .npy trace ({err})", Location(file=name)) from None
    dtype, shape = mapped.dtype, mapped.shape
    offset = int(getattr(mapped, "offset", 0))
    del mapped
    if dtype != np.dtype("<u8") or len(shape) != 1:
        raise TraceError(f".npy trace must be one-dimensional little-endian uint64 ('<u8'), "
                         f"got dtype {dtype.str} with shape {shape}", Location(file=name))
    nr_records = int(shape[0])
    available = (os.path.getsize(path) - offset) // RECORD_BYTES
    if available < nr_records:
        raise TraceError(f"truncated trace: the header promises {nr_records} records but "
                         f"the file holds {available} (record {available} is incomplete)",
                         Location(file=name))
    return offset, nr_records


def describe_record(word: int, va_bits: int) -> str | None:
    """Why one binary word is not a valid record, or None (the reference's check)."""
    if (word >> VA_BITS_FIELD) & 0x1F:
        return f"bits 57..61 must be zero (word {word:#018x})"
    if word >> KIND_SHIFT == 3:
        return f"kind 3 is not a load, store or instruction fetch (word {word:#018x})"
    vaddr = word & VA_MASK
    top = vaddr >> (va_bits - 1)
    if top not in (0, (1 << (VA_BITS_FIELD + 1 - va_bits)) - 1):
        return f"non-canonical address {vaddr:#x} for {va_bits}-bit virtual addresses"
    return None


def record_error(path: str, record: int, reason: str) -> TraceError:
    return TraceError(f"record {record} (byte {record * RECORD_BYTES}): {reason}",
                      Location(file=path))


# -- lackey text -------------------------------------------------------------------------
def iter_lackey(stream: BufferedIOBase, name: str, va_bits: int = 48,
                chunk_bytes: int = CHUNK_TEXT_BYTES,
                skip_valgrind_notes: bool = False) -> Iterator[Chunk]:
    """Parse lackey text from a binary stream (a file or a pipe), a chunk at a time.

    Reads into one reusable buffer; a chunk ends at its last newline and the partial line
    after it moves to the front for the next read. ``skip_valgrind_notes`` also skips
    valgrind's ``--PID--`` lines (``--record``)."""
    buffer = bytearray(chunk_bytes + len(_PAD))
    held = 0                 # bytes of a partial line carried at the front of the buffer
    line_number = 0          # lines before the current chunk
    record = 0
    consumed = 0
    while True:
        if len(buffer) < held + chunk_bytes + len(_PAD):      # a very long partial line
            buffer.extend(bytes(held + chunk_bytes + len(_PAD) - len(buffer)))
        nr_read = stream.readinto(memoryview(buffer)[held:held + chunk_bytes])
        if not nr_read:
            break
        length = held + nr_read
        cut = buffer.rfind(b"\n", 0, length) + 1
        if cut:
            words, nr_lines = _parse_buffer(buffer, cut, name, line_number, va_bits,
                                            skip_valgrind_notes)
            consumed += cut
            line_number += nr_lines
            yield Chunk(words, record, consumed)
            record += words.shape[0]
        buffer[:length - cut] = buffer[cut:length]
        held = length - cut
    if held:                                                 # a last line without newline
        words, _ = parse_lackey(bytes(buffer[:held]) + b"\n", name, line_number, va_bits,
                                skip_valgrind_notes)
        yield Chunk(words, record, consumed + held)


def parse_lackey(text: bytes, name: str = "<lackey>", first_line: int = 0, va_bits: int = 48,
                 skip_valgrind_notes: bool = False) -> tuple[npt.NDArray[np.uint64], int]:
    """Records of whole lackey lines (``text`` ends with a newline) and the line count."""
    return _parse_buffer(bytearray(text + _PAD), len(text), name, first_line, va_bits,
                         skip_valgrind_notes)


def _parse_buffer(buffer: bytearray, length: int, name: str, first_line: int, va_bits: int,
                  skip_valgrind_notes: bool) -> tuple[npt.NDArray[np.uint64], int]:
    """Parse the whole lines in ``buffer[:length]`` (at least 3 more bytes follow).

    One compiled pass over the bytes (trace/fast.py lackey_scan), no Python loop per line. (A
    NumPy-vectorised version, lines split at newlines and addresses converted eight hex
    digits at a time with SWAR arithmetic, ran at 100-150 MB/s here, too close to the
    100 MB/s issue 6 asks; this scan runs at about 900 MB/s.)"""
    buf = np.frombuffer(buffer, dtype=np.uint8)
    words = np.empty(length // _SHORTEST_LINE + 1, dtype=np.uint64)
    count, nr_lines, bad_line, reason = kernels.compiled().lackey_scan(
        buf, length, words, va_bits, skip_valgrind_notes)
    if reason != LACKEY_OK:
        _raise_bad_line(bytes(buffer[:length]), name, first_line, bad_line, reason, va_bits)
    return words[:count], nr_lines


_SHORTEST_LINE = 7                # "I  0,1\n"


def _raise_bad_line(text: bytes, name: str, first_line: int, index: int, reason: int,
                    va_bits: int) -> None:
    start = _line_offset(text, index)
    end = text.find(b"\n", start)
    line = text[start:end].decode("utf-8", "replace")
    shown = line if len(line) <= 60 else line[:57] + "..."
    where = f"line {first_line + index + 1}"
    if reason == LACKEY_NON_CANONICAL:
        raise TraceError(f"{where}: non-canonical address in {shown!r} for {va_bits}-bit "
                         "virtual addresses", Location(file=name))
    raise TraceError(f"{where}: not a lackey line (expected 'I  ADDR,SIZE' or "
                     f"' L|S|M ADDR,SIZE'): {shown!r}", Location(file=name))


def _line_offset(text: bytes, index: int) -> int:
    """Byte offset of line ``index`` (0-based) in ``text``."""
    offset = 0
    for _ in range(index):
        offset = text.index(b"\n", offset) + 1
    return offset


