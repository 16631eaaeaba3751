"""Trace formats of ``spec/trace-model.md``: lackey text, binary .pwt and NumPy .npy, read
in chunks of one uint64 word per access.

A word holds the virtual address in bits 0..56 and the kind in bits 62..63 (0 load,
1 store, 2 instruction fetch); bits 57..61 are zero. Binary traces are NumPy memory
maps read a chunk at a time, so memory stays flat however large the file. Lackey text
(what ``valgrind --tool=lackey --trace-mem=yes`` writes, valgrind's
``lackey/lk_main.c``: ``I  %08lx,%lu``, `` L``, `` S``, `` M``) is parsed chunk by chunk
with vectorised NumPy, no Python loop per line: lines are split at newlines, classified
by their first three bytes, and the hex address read right to left from the comma.
Every error names the 1-based line (lackey) or the 0-based record and its byte offset.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from pagewalk.errors import Location, TraceError

FORMATS = ("lackey", "pwt", "npy")
RECORD_BYTES = 8
VA_BITS_FIELD = 57
VA_MASK = (1 << VA_BITS_FIELD) - 1
KIND_SHIFT = 62
KIND_NAMES = ("load", "store", "ifetch")
CHUNK_RECORDS = 1 << 22          # 32 MiB of binary records per chunk
CHUNK_TEXT_BYTES = 1 << 24       # 16 MiB of lackey text per chunk

_NL, _COMMA, _SPACE, _EQ, _DASH = 10, 44, 32, 61, 45
_HEX = np.full(256, 255, dtype=np.uint8)   # hex digit value of each byte, 255 if none
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i
_IS_DEC = np.zeros(256, dtype=bool)
_IS_DEC[ord("0"):ord("9") + 1] = True
# lackey kind letter (second byte of a data line) -> record kind; M (modify) is a store
_DATA_KIND = np.full(256, -1, dtype=np.int8)
_DATA_KIND[ord("L")], _DATA_KIND[ord("S")], _DATA_KIND[ord("M")] = 0, 1, 1


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
def iter_lackey(stream: BinaryIO, name: str, va_bits: int = 48,
                chunk_bytes: int = CHUNK_TEXT_BYTES,
                skip_valgrind_notes: bool = False) -> Iterator[Chunk]:
    """Parse lackey text from a binary stream (a file or a pipe), a chunk at a time.

    A chunk ends at its last newline; the partial line is carried into the next one.
    ``skip_valgrind_notes`` also skips valgrind's ``--PID--`` lines (``--record``)."""
    carry = b""
    line_number = 0          # lines before the current chunk
    record = 0
    consumed = 0
    while True:
        block = stream.read(chunk_bytes)
        if not block:
            break
        data = carry + block
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            carry = data
            continue
        carry = data[cut:]
        consumed += cut
        words, nr_lines = parse_lackey(data[:cut], name, line_number, va_bits,
                                       skip_valgrind_notes)
        line_number += nr_lines
        yield Chunk(words, record, consumed)
        record += words.shape[0]
    if carry:
        words, _ = parse_lackey(carry + b"\n", name, line_number, va_bits, skip_valgrind_notes)
        yield Chunk(words, record, consumed + len(carry))


def parse_lackey(text: bytes, name: str = "<lackey>", first_line: int = 0, va_bits: int = 48,
                 skip_valgrind_notes: bool = False) -> tuple[npt.NDArray[np.uint64], int]:
    """Records of whole lackey lines (``text`` ends with a newline) and the line count.

    Vectorised: one NumPy pass per address digit, none per line."""
    buf = np.frombuffer(text + b"\0\0\0", dtype=np.uint8)   # padding: 3-byte peeks stay inside
    ends = np.flatnonzero(buf == _NL)
    nr_lines = int(ends.shape[0])
    starts = np.empty(nr_lines, dtype=np.int64)
    if nr_lines:
        starts[0] = 0
        starts[1:] = ends[:-1] + 1
    c0, c1, c2 = buf[starts], buf[starts + 1], buf[starts + 2]
    length = ends - starts
    instr = (c0 == ord("I")) & (c1 == _SPACE) & (c2 == _SPACE)
    data_kind = _DATA_KIND[c1]
    data = (c0 == _SPACE) & (data_kind >= 0) & (c2 == _SPACE)
    skip = (length == 0) | ((c0 == _EQ) & (c1 == _EQ))
    if skip_valgrind_notes:
        skip |= (c0 == _DASH) & (c1 == _DASH)
    access = (instr | data) & (length >= 5)       # "I  0,1" is the shortest access line
    bad_line = ~(access | skip)
    rows = np.flatnonzero(access)
    kinds = np.where(instr[rows], 2, data_kind[rows]).astype(np.uint64)
    addrs, bad_field = _parse_fields(buf, starts[rows] + 3, ends[rows])
    if bad_line.any() or bad_field.any():
        _raise_first(text, name, first_line, starts, ends, bad_line, rows, bad_field)
    canonical = _canonical(addrs, va_bits)
    if not canonical.all():
        row = int(rows[np.argmin(canonical)])
        raise TraceError(f"line {first_line + row + 1}: non-canonical address "
                         f"{int(addrs[np.argmin(canonical)]):#x} for {va_bits}-bit virtual "
                         f"addresses", Location(file=name))
    return (addrs & np.uint64(VA_MASK)) | (kinds << np.uint64(KIND_SHIFT)), nr_lines


def _parse_fields(buf: npt.NDArray[np.uint8], addr_start: npt.NDArray[np.int64],
                  line_end: npt.NDArray[np.int64]
                  ) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.bool_]]:
    """``ADDR,SIZE`` of each access line: the address values and which lines are malformed
    (no comma, 0 or more than 16 hex digits, a non-hex digit, a size not in decimal)."""
    commas = np.flatnonzero(buf == _COMMA)
    at = np.searchsorted(commas, addr_start)
    comma = commas[np.minimum(at, max(commas.shape[0] - 1, 0))] if commas.shape[0] else \
        np.full(addr_start.shape[0], -1, dtype=np.int64)
    found = (at < commas.shape[0]) & (comma < line_end) & (comma >= 0)
    comma = np.where(found, comma, addr_start)
    digits = comma - addr_start
    size_digits = line_end - comma - 1
    bad = ~found | (digits < 1) | (digits > 16) | (size_digits < 1) | (size_digits > 20)
    value = np.zeros(addr_start.shape[0], dtype=np.uint64)
    widest = int(digits[~bad].max()) if (~bad).any() else 0
    for k in range(1, widest + 1):            # k-th digit left of the comma
        present = digits >= k
        nibble = _HEX[buf[np.where(present, comma - k, 0)]]
        bad |= present & (nibble == 255)
        value |= np.where(present & (nibble != 255), nibble, 0).astype(np.uint64) \
            << np.uint64(4 * (k - 1))
    widest_size = int(size_digits[~bad].max()) if (~bad).any() else 0
    for k in range(1, widest_size + 1):       # k-th byte right of the comma
        present = size_digits >= k
        bad |= present & ~_IS_DEC[buf[np.where(present, comma + k, 0)]]
    return value, bad


def _canonical(addrs: npt.NDArray[np.uint64], va_bits: int) -> npt.NDArray[np.bool_]:
    """Bits 63..va_bits-1 all equal (SDM vol. 1 §3.3.7.1)."""
    top = addrs >> np.uint64(va_bits - 1)
    return (top == 0) | (top == np.uint64((1 << (65 - va_bits)) - 1))


def _raise_first(text: bytes, name: str, first_line: int, starts: npt.NDArray[np.int64],
                 ends: npt.NDArray[np.int64], bad_line: npt.NDArray[np.bool_],
                 rows: npt.NDArray[np.int64], bad_field: npt.NDArray[np.bool_]) -> None:
    candidates = []
    if bad_line.any():
        candidates.append(int(np.argmax(bad_line)))
    if bad_field.any():
        candidates.append(int(rows[np.argmax(bad_field)]))
    row = min(candidates)
    line = text[int(starts[row]):int(ends[row])].decode("utf-8", "replace")
    shown = line if len(line) <= 60 else line[:57] + "..."
    raise TraceError(f"line {first_line + row + 1}: not a lackey line "
                     f"(expected 'I  ADDR,SIZE' or ' L|S|M ADDR,SIZE'): {shown!r}",
                     Location(file=name))
