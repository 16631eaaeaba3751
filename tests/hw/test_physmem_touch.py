"""The byte a `touch` write stores (hw/physmem.py): 0x01 at each access, as the kernel
runner stores it (spec/scenario.md), kept without a pool row while it is a frame's only
non-zero byte."""

from __future__ import annotations

import pytest

from pagewalk.errors import ExpectationFailed
from pagewalk.hw.physmem import PhysicalMemory
from pagewalk.scenario.runner import run_scenario
from pagewalk.scenario.schema import parse_scenario


def test_lone_touch_byte_needs_no_row_and_reads_back() -> None:
    phys = PhysicalMemory(1 << 20)
    phys.note_touch(0x3123)
    assert phys.stored_frames == 0 and not phys.is_zero(3)
    assert phys.read_bytes(0x3120, 8) == b"\x00\x00\x00\x01\x00\x00\x00\x00"
    phys.note_touch(0x3123)                     # the same byte again: still no row
    assert phys.stored_frames == 0


def test_second_touch_byte_moves_frame_into_a_row() -> None:
    phys = PhysicalMemory(1 << 20)
    phys.note_touch(0x3007)
    phys.note_touch(0x3FFF)
    assert phys.stored_frames == 1 and phys.touched[3] == 0
    assert phys.read_bytes(0x3000, 8) == b"\x00" * 7 + b"\x01"
    assert phys.read_bytes(0x3FFF, 1) == b"\x01"


def test_write_over_a_frame_keeps_its_touch_byte() -> None:
    phys = PhysicalMemory(1 << 20)
    phys.note_touch(0x5010)
    phys.write_bytes(0x5011, b"ab")
    assert phys.read_bytes(0x500F, 4) == b"\x00\x01ab"
    phys.write_bytes(0x5010, b"Z")               # a write over the touch byte wins
    assert phys.read_bytes(0x5010, 1) == b"Z"


def test_copy_and_drop_carry_the_touch_byte() -> None:
    phys = PhysicalMemory(1 << 20)
    phys.note_touch(0x7040)
    phys.copy_frame(9, 7)
    assert phys.read_bytes(0x9040, 1) == b"\x01" and phys.stored_frames == 0
    phys.drop(9)
    assert phys.is_zero(9) and phys.read_bytes(0x9040, 1) == b"\x00"


SCENARIO = """
name: touch-byte
steps:
  - mmap: {name: buf, length: 2MiB}
  - madvise: {region: buf, advice: nohugepage}
  - touch: {region: buf, offset: 0x10, length: 1MiB, access: write}
  - touch: {region: buf, offset: 1MiB, length: 64KiB, stride: 1KiB, access: write}
  - fork: {name: child}
  - read: {region: buf, offset: 0x10, length: 2, expect: "\\x01\\x00", process: child}
  - read: {region: buf, offset: 0x100F, length: 2, expect: "\\x00\\x01"}
  - read: {region: buf, offset: 0x100400, length: 1, expect: "\\x01"}
  - read: {region: buf, offset: 0x100401, length: 1023, expect: "%s"}
"""


@pytest.mark.parametrize("fast", [True, False])
def test_scenario_reads_what_touch_stored(fast: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled touch loop and the reference path store the same bytes."""
    if not fast:
        from pagewalk.mm import fastpath
        monkeypatch.setattr(fastpath, "_fast_path_applies", lambda *a: (False, False))
    run_scenario(parse_scenario(SCENARIO % ("\\x00" * 1023), "touch-byte.yaml"))


def test_read_of_a_touched_byte_expecting_zero_fails() -> None:
    doc = SCENARIO % ("\\x00" * 1022 + "\\x01")
    with pytest.raises(ExpectationFailed):
        run_scenario(parse_scenario(doc, "touch-byte.yaml"))
