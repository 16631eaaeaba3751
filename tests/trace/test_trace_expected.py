"""The reference model reproduces expected.json exactly (docs/trace-model.md): both
reference traces, 4 KiB, 2 MiB and 1 GiB pages, both engines, every trace format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pagewalk.trace import replay_trace
from pagewalk.trace.formats import load

CONFIGS = [(trace, pages) for trace in ("mixed-200k.pwt", "true.lackey")
           for pages in ("4KiB", "2MiB", "1GiB")]


@pytest.mark.parametrize("trace, pages", CONFIGS)
def test_fast_engine_matches_expected_json(traces: Path, expected: dict[str, Any], trace: str,
                                           pages: str) -> None:
    stats = replay_trace(traces / trace, pages=pages, engine="fast")
    assert stats.counters() == expected[f"{trace} --pages {pages}"]


@pytest.mark.parametrize("trace, pages", CONFIGS)
def test_reference_engine_matches_expected_json(traces: Path, expected: dict[str, Any],
                                                trace: str, pages: str) -> None:
    stats = replay_trace(traces / trace, pages=pages, engine="reference")
    assert stats.counters() == expected[f"{trace} --pages {pages}"]


def test_derived_fields_follow_from_the_counters(traces: Path, expected: dict[str, Any]) -> None:
    """l1_miss_rate = 1 - l1_hits/accesses, stlb_miss_rate = walks/accesses,
    walk_refs_per_walk = walk_refs/walks."""
    report = replay_trace(traces / "mixed-200k.pwt").to_json()
    want = expected["mixed-200k.pwt --pages 4KiB"]
    assert report["l1_miss_rate"] == 1 - want["l1_hits"] / want["accesses"]
    assert report["stlb_miss_rate"] == want["walks"] / want["accesses"]
    assert report["walk_refs_per_walk"] == want["walk_refs"] / want["walks"]


def test_the_same_trace_in_every_format_gives_the_same_report(traces: Path,
                                                              tmp_path: Path) -> None:
    """true.lackey as lackey text, as .pwt and as .npy; and an in-memory array."""
    words = load(traces / "true.lackey")
    words.tofile(tmp_path / "true.pwt")
    np.save(tmp_path / "true.npy", words)
    reports = [replay_trace(source).counters() for source in
               (traces / "true.lackey", tmp_path / "true.pwt", tmp_path / "true.npy", words)]
    assert all(report == reports[0] for report in reports)


def test_small_chunks_give_the_same_report(traces: Path, expected: dict[str, Any]) -> None:
    """State carries across chunks: replaying 1000 records at a time changes nothing."""
    from pagewalk.trace.formats import iter_chunks
    chunks = iter_chunks(traces / "mixed-200k.pwt", chunk_records=1000)
    assert replay_trace(chunks).counters() == expected["mixed-200k.pwt --pages 4KiB"]
