"""Trace formats (trace/formats.py, docs/trace-model.md "Trace formats"): lackey text,
binary .pwt and .npy; every bad input is named by its line or record."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from pagewalk.errors import TraceError
from pagewalk.trace import replay_trace
from pagewalk.trace.formats import (
    detect_format,
    iter_chunks,
    iter_lackey,
    load,
    pack_records,
    parse_lackey,
)

LACKEY = b"""==4908== Lackey, an example Valgrind tool
==4908== Copyright (C) 2002-2017, and GNU GPL'd, by Nicholas Nethercote.

I  0401ab70,3
 S 1fff000768,8
 L 04021e58,8
 M 0402a0c8,4
I  ffffffffff600000,4
==4908== Counted 0 calls to main()
"""


def kinds_and_addresses(words: np.ndarray) -> list[tuple[int, int]]:
    return [(int(w) >> 62, int(w) & ((1 << 57) - 1)) for w in words]


def test_lackey_lines_become_records() -> None:
    """I: fetch (2), L: load (0), S: store (1), M: one store (1); == lines and blank lines
    are skipped; a kernel-half address keeps its low 57 bits."""
    words, nr_lines = parse_lackey(LACKEY)
    assert nr_lines == 9
    assert kinds_and_addresses(words) == [
        (2, 0x0401AB70), (1, 0x1FFF000768), (0, 0x04021E58), (1, 0x0402A0C8),
        (2, 0xFFFFFFFFFF600000 & ((1 << 57) - 1))]


def test_upper_case_hex_and_wide_sizes_are_accepted() -> None:
    words, _ = parse_lackey(b" L 7FFF0000ABCD,4096\n")
    assert kinds_and_addresses(words) == [(0, 0x7FFF0000ABCD)]


@pytest.mark.parametrize("line", [
    b"X  0401ab70,3",            # unknown kind
    b" L 0401ab70",              # no size
    b" L 0401ab70,",             # empty size
    b" L 04g1ab70,8",            # not hex
    b" L ,8",                    # no address
    b"I 0401ab70,3",             # one space only
    b" L 0401ab70,8 ",           # trailing blank
    b" L 11223344556677889,8",   # 17 digits
    b"--4908-- a valgrind note",
])
def test_a_bad_line_is_named_by_its_number(line: bytes) -> None:
    text = LACKEY.replace(b" M 0402a0c8,4\n", line + b"\n")
    with pytest.raises(TraceError, match=r"trace.lackey: line 7: not a lackey line"):
        parse_lackey(text, name="trace.lackey")


def test_a_non_canonical_address_is_named_by_its_line() -> None:
    """4-level paging: bits 63..47 must all be equal (SDM vol. 1 §3.3.7.1)."""
    text = b"I  0401ab70,3\n L 0000800000000000,8\n"
    with pytest.raises(TraceError, match="line 2: non-canonical address"):
        parse_lackey(text)
    words, _ = parse_lackey(text, va_bits=57)           # fine with 5-level paging
    assert len(words) == 2


def test_valgrind_notes_are_skipped_only_when_recording() -> None:
    text = b"--123-- WARNING: something\nI  0401ab70,3\n"
    words, _ = parse_lackey(text, skip_valgrind_notes=True)
    assert len(words) == 1


@pytest.mark.parametrize("chunk_bytes", [1, 7, 64, 1 << 20])
def test_lackey_chunks_split_at_line_ends_and_keep_line_numbers(chunk_bytes: int) -> None:
    """Any chunk size gives the same records, and errors keep their true line number;
    a last line without a newline is still read."""
    text = LACKEY * 3 + b" L 0401ab70,8"
    whole, _ = parse_lackey(text + b"\n")
    parts = list(iter_lackey(io.BytesIO(text), "t", chunk_bytes=chunk_bytes))
    assert (np.concatenate([c.words for c in parts]) == whole).all()
    assert [c.first_record for c in parts] == list(np.cumsum([0] + [len(c.words)
                                                                  for c in parts[:-1]]))
    assert parts[-1].bytes_done == len(text)
    bad = LACKEY * 3 + b"oops\n"
    with pytest.raises(TraceError, match="line 28:"):
        list(iter_lackey(io.BytesIO(bad), "t", chunk_bytes=chunk_bytes))


def test_binary_records_round_trip(tmp_path: Path) -> None:
    words = pack_records([0x7F0000001000, 0x401000, 0x7F0000002000], [0, 2, 1])
    words.tofile(tmp_path / "t.pwt")
    np.save(tmp_path / "t.npy", words)
    assert (load(tmp_path / "t.pwt") == words).all()
    assert (load(tmp_path / "t.npy") == words).all()


def test_a_truncated_binary_trace_names_the_incomplete_record(tmp_path: Path) -> None:
    (tmp_path / "t.pwt").write_bytes(bytes(8 * 5 + 3))
    with pytest.raises(TraceError, match=r"t.pwt: truncated trace: 43 bytes .* \(record 5, "
                                         r"at byte 40, is incomplete"):
        replay_trace(tmp_path / "t.pwt")


@pytest.mark.parametrize("array, message", [
    (np.zeros(4, dtype=np.int32), "dtype <i4"),
    (np.zeros((2, 2), dtype="<u8"), r"shape \(2, 2\)"),
    (np.zeros(4, dtype=">u8"), "dtype >u8"),
])
def test_an_npy_trace_must_be_one_dimensional_little_endian_uint64(
        tmp_path: Path, array: np.ndarray, message: str) -> None:
    np.save(tmp_path / "t.npy", array)
    with pytest.raises(TraceError, match=message):
        replay_trace(tmp_path / "t.npy")


def test_a_file_that_is_not_npy_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "t.npy").write_bytes(b"not numpy at all")
    with pytest.raises(TraceError, match="not a readable .npy trace"):
        replay_trace(tmp_path / "t.npy")


def test_the_format_follows_the_extension_unless_given(tmp_path: Path) -> None:
    assert detect_format("a.pwt") == "pwt"
    assert detect_format("a.NPY") == "npy"
    assert detect_format("a.out") == "lackey"
    assert detect_format("a.out", "pwt") == "pwt"
    with pytest.raises(TraceError, match="unknown trace format"):
        detect_format("a.out", "csv")
    words = pack_records([0x7F0000001000], [1])
    words.tofile(tmp_path / "t.dat")
    assert replay_trace(tmp_path / "t.dat", fmt="pwt").stores == 1


def test_binary_traces_are_read_a_chunk_at_a_time(tmp_path: Path) -> None:
    """Each chunk is its own small memory map; bytes_done tracks progress."""
    words = pack_records(np.arange(10, dtype=np.uint64) * 4096 + 0x7F0000000000, [0] * 10)
    words.tofile(tmp_path / "t.pwt")
    chunks = list(iter_chunks(tmp_path / "t.pwt", chunk_records=4))
    assert [len(c.words) for c in chunks] == [4, 4, 2]
    assert [c.bytes_done for c in chunks] == [32, 64, 80]
    assert all(isinstance(c.words, np.memmap) for c in chunks)


def test_an_empty_trace_reports_zeros(tmp_path: Path) -> None:
    (tmp_path / "t.pwt").write_bytes(b"")
    stats = replay_trace(tmp_path / "t.pwt")
    assert stats.accesses == 0 and stats.l1_miss_rate == 0.0 and stats.walk_refs_per_walk == 0.0
