"""The compiled engine agrees with the reference counter for counter (STYLE rule 12):
random traces, page-size maps, other geometries, 5-level paging, bad records mid-trace,
the per-access entry point, and once with NUMBA_DISABLE_JIT=1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from pagewalk.errors import TraceError
from pagewalk.hw.pwc import PwcGeometry
from pagewalk.hw.tlb import TlbArray, TlbGeometry
from pagewalk.trace import fast
from pagewalk.trace.formats import Chunk, pack_records
from pagewalk.trace.replay import PageSizeMap, TraceModel, TraceReplayer
from pagewalk.units import GiB, MiB

BASE = 0x7F0000000000
# No explain phase: it imports libcst, whose DeprecationWarning (an error here) would
# hide the falsifying example.
SETTINGS = settings(max_examples=60, deadline=None,
                    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def replay_both(words: np.ndarray, **options: Any) -> tuple[TraceReplayer, TraceReplayer]:
    """The same words through both engines (any TraceError is re-raised after both ran)."""
    replayers = [TraceReplayer(engine=engine, **options) for engine in ("fast", "reference")]
    errors = []
    for replayer in replayers:
        try:
            replayer.feed(Chunk(words, 0, words.nbytes))
        except TraceError as err:
            errors.append(str(err))
    assert len(errors) in (0, 2) and len(set(errors)) <= 1, errors
    return replayers[0], replayers[1]


def assert_same(fast_run: TraceReplayer, reference_run: TraceReplayer) -> None:
    """Same report, same per-array counters, and the very same LRU state arrays."""
    assert fast_run.stats() == reference_run.stats()
    assert (fast_run.pwc.stats == reference_run.pwc.stats).all()
    for left, right in ((fast_run.tlb.storage, reference_run.tlb.storage),
                        (fast_run.pwc.storage, reference_run.pwc.storage)):
        assert (left.tags == right.tags).all() and (left.stamps == right.stamps).all()
        assert left.clock[0] == right.clock[0]


# Addresses: a few hot pages, 2 MiB and 1 GiB neighbourhoods, far-apart regions (other
# PML4Es), code low in memory, and now and then anything canonical.
regions = st.sampled_from([BASE, BASE + 37 * MiB, BASE + 3 * GiB, BASE - (5 << 39), 0x400000,
                           0x1FFF000000])
addresses = st.one_of(
    st.builds(lambda base, offset: base + offset, regions, st.integers(0, 64 * MiB)),
    st.builds(lambda base, page: base + page * 4096, regions, st.integers(0, 40)),
    st.integers(0, (1 << 47) - 1))
records = st.lists(st.tuples(addresses, st.integers(0, 2)), min_size=1, max_size=400)


def to_words(accesses: list[tuple[int, int]]) -> np.ndarray:
    vaddrs, kinds = zip(*accesses)
    return pack_records(np.array(vaddrs, dtype=np.uint64), np.array(kinds, dtype=np.uint64))


@SETTINGS
@given(records, st.sampled_from(["4KiB", "2MiB", "1GiB"]))
def test_engines_agree_on_random_traces(accesses: list[tuple[int, int]], pages: str) -> None:
    assert_same(*replay_both(to_words(accesses), pages=pages))


@st.composite
def page_maps(draw: st.DrawFn) -> PageSizeMap:
    """Sorted, non-overlapping ranges of 2 MiB and 1 GiB pages (and explicit 4 KiB)."""
    ranges, cursor = [], BASE - 2 * GiB
    for _ in range(draw(st.integers(0, 6))):
        shift = draw(st.sampled_from([12, 21, 30]))
        size = 1 << shift
        start = (cursor + draw(st.integers(0, 3)) * size + size - 1) & ~(size - 1)
        end = start + draw(st.integers(1, 3)) * size
        ranges.append((start, end, shift))
        cursor = end
    return PageSizeMap.from_ranges(ranges)


@SETTINGS
@given(records, page_maps())
def test_engines_agree_with_a_page_size_map(accesses: list[tuple[int, int]],
                                            page_map: PageSizeMap) -> None:
    assert_same(*replay_both(to_words(accesses), page_map=page_map))


@st.composite
def models(draw: st.DrawFn) -> TraceModel:
    """Small random TLBs (so that sets fill and evict), any page-walk caches, 4 or 5 levels."""
    arrays = []
    for level in (1, 2):
        for serves in draw(st.sampled_from([("data", "instruction"), ("unified",)])):
            shifts = draw(st.sets(st.sampled_from([12, 21, 30]), min_size=1))
            ways = draw(st.integers(1, 4))
            sets = draw(st.sampled_from([1, 2, 3, 4]))        # 3: not a power of two
            arrays.append(TlbArray(f"L{level} {serves}", level, serves, tuple(sorted(shifts)),
                                   sets * ways, ways))
    pwc = PwcGeometry(*(draw(st.integers(0, 3)) for _ in range(4)))
    return TraceModel("random", TlbGeometry("random", tuple(arrays)), pwc,
                      draw(st.sampled_from([4, 5])))


@SETTINGS
@given(records, models(), st.sampled_from(["4KiB", "2MiB", "1GiB"]))
def test_engines_agree_on_other_geometries(accesses: list[tuple[int, int]], model: TraceModel,
                                           pages: str) -> None:
    assert_same(*replay_both(to_words(accesses), model=model, pages=pages))


@pytest.mark.parametrize("bad_word, reason", [
    (1 << 58, "bits 57..61"),
    (3 << 62, "kind 3"),
    ((1 << 47) | BASE, "non-canonical"),
])
def test_engines_stop_at_the_same_bad_record_with_the_same_counts(bad_word: int,
                                                                  reason: str) -> None:
    """Records before the bad one are replayed; the error names it by number and offset."""
    words = to_words([(BASE + i * 4096, i % 3) for i in range(50)])
    words[37] = np.uint64(bad_word)
    fast_run, reference_run = replay_both(words)
    assert fast_run.stats() == reference_run.stats()
    assert fast_run.stats().accesses == 37
    with pytest.raises(TraceError, match=f"record 37 \\(byte 296\\): .*{reason}"):
        TraceReplayer().feed(Chunk(words, 0, words.nbytes))


def test_a_canonical_five_level_address_is_not_an_error_there() -> None:
    """Bit 47 set with bits 48..56 clear is canonical for LA57 (57-bit addresses)."""
    words = to_words([((1 << 47) | BASE, 0)])
    model = TraceModel(paging_levels=5)
    assert_same(*replay_both(words, model=model))


def test_the_mapped_page_set_grows_past_its_first_size() -> None:
    """100,000 distinct pages (the set starts with room for 32,768): faults = pages."""
    rng = np.random.default_rng(1)
    pages = rng.permutation(100_000)
    words = to_words([(BASE + int(page) * 4096, 0) for page in pages[:50_000]] +
                     [(BASE + int(page) * 4096, 1) for page in pages])
    replayer = TraceReplayer()
    replayer.feed(Chunk(words, 0, words.nbytes))
    assert replayer.stats().faults == 100_000


@SETTINGS
@given(records, st.sampled_from([12, 21, 30]))
def test_the_per_access_entry_point_agrees_with_the_driver(accesses: list[tuple[int, int]],
                                                           shift: int) -> None:
    """fast.replay_access (faults counted at the walk) == the driver (faults in a pass)."""
    words = to_words(accesses)
    driver = TraceReplayer(pages=1 << shift)
    driver.feed(Chunk(words, 0, words.nbytes))
    single = TraceReplayer(pages=1 << shift)
    tlb, pwc = single.tlb, single.pwc
    mapped = np.full(1 << 12, -1, dtype=np.int64)
    done = fast.replay_records_per_access(
        words.view(np.int64), 48, shift, tlb.layout, tlb.routes, tlb.storage.tags,
        tlb.storage.stamps, tlb.storage.payload, tlb.storage.clock, tlb.stats, pwc.top_row,
        pwc.layout, pwc.storage.tags, pwc.storage.stamps, pwc.storage.payload,
        pwc.storage.clock, pwc.stats, mapped, single.counters)
    assert done == len(words)
    assert single.stats() == driver.stats()


SCRIPT = """
import json, sys
import numpy as np
from pagewalk.trace.formats import Chunk
from pagewalk.trace.replay import PageSizeMap, TraceReplayer
words = np.array(json.loads(sys.argv[1]), dtype=np.uint64)
page_map = PageSizeMap.from_ranges([(0x7f0000200000, 0x7f0000600000, 21)])
out = {}
for engine in ("fast", "reference"):
    replayer = TraceReplayer(engine=engine, page_map=page_map)
    replayer.feed(Chunk(words, 0, words.nbytes))
    out[engine] = replayer.stats().counters()
print(json.dumps(out))
"""


def test_the_fast_path_runs_as_plain_python_too() -> None:
    """NUMBA_DISABLE_JIT=1: the kernels run uncompiled (for coverage) and still agree."""
    rng = np.random.default_rng(7)
    vaddrs = BASE + rng.integers(0, 8 * MiB, 300)
    words = pack_records(vaddrs, rng.integers(0, 3, 300))
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    result = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(words.tolist())],
                            env=env, capture_output=True, text=True, timeout=300, check=True)
    out = json.loads(result.stdout)
    assert out["fast"] == out["reference"]
    assert out["fast"]["accesses"] == 300


@pytest.mark.parametrize("bad_at", [None, 9_000, 20_000])
def test_the_pipeline_over_many_slices_agrees_with_the_reference(
        monkeypatch: pytest.MonkeyPatch, bad_at: int | None) -> None:
    """Small slices and a second thread from the first record: slices pipelined across
    threads (and a bad record in a late slice) give the reference's counts and state."""
    from pagewalk.trace import replay
    monkeypatch.setattr(replay, "SLICE_RECORDS", 1 << 11)
    monkeypatch.setattr(replay, "PARALLEL_MIN_RECORDS", 1)
    rng = np.random.default_rng(11)
    vaddrs = np.where(rng.random(24_000) < 0.6, BASE + rng.integers(0, 4 * MiB, 24_000),
                      BASE + rng.integers(0, 2 * GiB, 24_000))
    words = pack_records(vaddrs, rng.integers(0, 3, 24_000))
    if bad_at is not None:
        words[bad_at] = np.uint64(3 << 62)
    fast_run, reference_run = replay_both(words)
    assert_same(fast_run, reference_run)
    assert fast_run.stats().accesses == (bad_at if bad_at is not None else 24_000)
