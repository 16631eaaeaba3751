"""valgrind's log (lackey accesses + --trace-syscalls) parsed in order; the recording file
round trip; recorded -> simulated address translation."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from pagewalk.errors import TraceError
from pagewalk.record.address_map import AddressMap
from pagewalk.record.recfile import End, RecordingWriter, read_recording
from pagewalk.record.valgrind_log import Syscall, iter_events

SNIPPET = Path(__file__).parent.parent / "data" / "record" / "valgrind-lackey-syscalls.log"


def _events(chunk_bytes: int) -> list[object]:
    with open(SNIPPET, "rb") as stream:
        return list(iter_events(stream, SNIPPET.name, chunk_bytes=chunk_bytes))


def _access_lines() -> int:
    lines = SNIPPET.read_bytes().splitlines()
    return sum(1 for line in lines if line.startswith((b"I  ", b" L ", b" S ", b" M ")))


@pytest.mark.parametrize("chunk_bytes", [64, 1 << 20])
def test_syscalls_and_accesses_come_out_in_log_order(chunk_bytes: int) -> None:
    """The memory syscalls of the snippet, in order, with the accesses between them; the
    chunk size (a line split across reads) changes nothing."""
    events = _events(chunk_bytes)
    calls = [e for e in events if isinstance(e, Syscall)]
    assert [c.name for c in calls] == ["brk", "mmap", "mmap", "munmap", "exit_group"]
    nr_accesses = sum(int(e.shape[0]) for e in events if isinstance(e, np.ndarray))
    assert nr_accesses == _access_lines() == 38
    # accesses before the brk: the 7 lackey lines that precede it in the log
    before = next(i for i, e in enumerate(events) if isinstance(e, Syscall))
    assert sum(int(e.shape[0]) for e in events[:before] if isinstance(e, np.ndarray)) == 7


def test_mmap_of_a_descriptor_carries_the_path_from_the_async_openat() -> None:
    """openat completes on its own ``... [async] --> Success(0x4)`` line; the mmap of fd 4
    names the file."""
    calls = [e for e in _events(1 << 20) if isinstance(e, Syscall)]
    file_mmap = calls[1]
    assert file_mmap.args == (0, 16400, 1, 2050, 4, 0)
    assert file_mmap.result == 0x4837000
    assert file_mmap.path == "/usr/libexec/valgrind/vgpreload_core-amd64-linux.so"
    anon = calls[2]
    assert anon.path is None and anon.args[1] == 1 << 20 and anon.result == 0x4A2A000
    assert calls[0].result == 0x4035000 and calls[0].errno == 0


def test_a_failed_syscall_keeps_its_errno() -> None:
    log = (b"SYSCALL[1,1](11) sys_munmap ( 0x1000, 4096 )[sync] --> Failure(0x16) \n")
    (call,) = list(iter_events(io.BufferedReader(io.BytesIO(log)), "x"))
    assert isinstance(call, Syscall) and call.errno == 22 and call.result == 0


def test_a_line_that_is_neither_lackey_nor_valgrind_is_named_by_number() -> None:
    log = b"I  0401000,3\nhello\n"
    with pytest.raises(TraceError, match="line 2"):
        list(iter_events(io.BufferedReader(io.BytesIO(log)), "x"))


def test_recording_round_trip_keeps_order_and_words(tmp_path: Path) -> None:
    words = np.arange(10, dtype=np.uint64) * np.uint64(4096) | (np.uint64(1) << np.uint64(62))
    call = Syscall(9, "mmap", (0, 4096, 3, 34, 0xFFFFFFFF, 0), 0x7000)
    path = tmp_path / "r.pwr"
    with open(path, "wb") as out:
        writer = RecordingWriter(out)
        writer.header({"format": "pagewalk-recording"})
        writer.accesses_run(words[:4])
        writer.syscall(call)
        writer.accesses_run(words[4:])
        writer.end(3)
    events = list(read_recording(path))
    assert events[0] == {"format": "pagewalk-recording"}
    assert np.array_equal(events[1], words[:4])
    assert events[2] == call
    assert np.array_equal(events[3], words[4:])
    assert events[4] == End(3, 10, 1)


def test_a_truncated_recording_names_the_byte(tmp_path: Path) -> None:
    path = tmp_path / "r.pwr"
    with open(path, "wb") as out:
        writer = RecordingWriter(out)
        writer.header({"format": "pagewalk-recording"})
        writer.accesses_run(np.zeros(100, dtype=np.uint64))
        writer.end(0)
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(TraceError, match="truncated frame at byte"):
        list(read_recording(path))


def test_address_map_newer_range_replaces_the_part_it_covers() -> None:
    """
    recorded   0x1000 [--- A: +0x10000 ---) 0x5000
                         0x2000 [B: +0x20000) 0x3000
    """
    amap = AddressMap()
    amap.add(0x1000, 0x5000, 0x11000)
    amap.add(0x2000, 0x3000, 0x22000)
    assert amap.translate(0x1800) == 0x11800
    assert amap.translate(0x2800) == 0x22800
    assert amap.translate(0x4000) == 0x14000
    assert amap.translate(0x5000) is None
    rec = np.array([0x800, 0x1800, 0x2800, 0x4FFF, 0x5000], dtype=np.uint64)
    sim, valid = amap.translate_array(rec)
    assert valid.tolist() == [False, True, True, True, False]
    assert sim[valid].tolist() == [0x11800, 0x22800, 0x14FFF]
    amap.remove(0x1000, 0x5000)
    assert amap.translate(0x2800) is None


def test_address_map_moves_ranges_downwards_too() -> None:
    """A valgrind address above its native place (a negative distance) wraps right."""
    amap = AddressMap()
    amap.add(0x7000_0000, 0x7000_2000, 0x1000)
    sim, valid = amap.translate_array(np.array([0x7000_1234], dtype=np.uint64))
    assert valid.all() and int(sim[0]) == 0x2234
