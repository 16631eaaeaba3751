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
    monkeypatch.setattr(replay, "PARALLEL_MIN_WALKS", 1)
    rng = np.random.default_rng(11)
    vaddrs = np.where(rng.random(24_000) < 0.6, BASE + rng.integers(0, 4 * MiB, 24_000),
                      BASE + rng.integers(0, 2 * GiB, 24_000))
    words = pack_records(vaddrs, rng.integers(0, 3, 24_000))
    if bad_at is not None:
        words[bad_at] = np.uint64(3 << 62)
    fast_run, reference_run = replay_both(words)
    assert_same(fast_run, reference_run)
    assert fast_run.stats().accesses == (bad_at if bad_at is not None else 24_000)


# -- same-page runs (fast.tlb_stage counts them without a lookup) ----------------------------
# Pages of a few kinds: neighbours, pages 16 apart (one set of the reference L1 dTLB, 16
# sets of 4 ways: the fifth evicts), 2 MiB and 1 GiB neighbours, code low in memory.
run_pages = st.sampled_from([BASE + n * 4096 for n in (0, 1, 2, 16, 32, 48, 64, 80)] +
                            [BASE + 2 * MiB, BASE + 3 * GiB, 0x400000, 0x401000])


@st.composite
def same_page_runs(draw: st.DrawFn) -> list[tuple[int, int]]:
    """Runs of accesses: to one page (loads and stores mixed, or fetches), or two pages
    interleaved (a fetch page and a data page, as real programs do), long enough for the
    block scans, in 8-byte steps that may cross into the next page or at random offsets."""
    accesses: list[tuple[int, int]] = []
    for _ in range(draw(st.integers(1, 8))):
        shape = draw(st.sampled_from(["data", "fetch", "interleaved", "stride"]))
        length = draw(st.sampled_from([1, 2, 7, 8, 9, 63, 64, 65, 700, 2500]))
        page, other = draw(run_pages), draw(run_pages)
        start = draw(st.integers(0, 4095))
        seed = draw(st.integers(0, 2**32 - 1))
        rng = np.random.default_rng(seed)
        stores = rng.random(length) < 0.3
        for n in range(length):
            if shape == "data":
                accesses.append((page + int(rng.integers(0, 4096)), int(stores[n])))
            elif shape == "fetch":
                accesses.append((page + int(rng.integers(0, 4096)), 2))
            elif shape == "interleaved":
                accesses.append((page + (start + 4 * n) % 4096, 2) if n % 2 else
                                (other + int(rng.integers(0, 4096)), int(stores[n])))
            else:                                      # 8-byte steps across the page end
                accesses.append((page + start + 8 * n, int(stores[n])))
    return accesses


@SETTINGS
@given(same_page_runs(), st.sampled_from(["4KiB", "2MiB", "1GiB"]))
def test_engines_agree_on_same_page_runs(accesses: list[tuple[int, int]], pages: str) -> None:
    """Runs counted in bulk give the serial model's counts, stamps and clock."""
    assert_same(*replay_both(to_words(accesses), pages=pages))


@SETTINGS
@given(same_page_runs(), page_maps())
def test_engines_agree_on_same_page_runs_with_a_page_size_map(
        accesses: list[tuple[int, int]], page_map: PageSizeMap) -> None:
    """With a map a run's key is a 4 KiB piece: pieces of one huge page share its entry."""
    assert_same(*replay_both(to_words(accesses), page_map=page_map))


@SETTINGS
@given(same_page_runs(), models(), st.sampled_from(["4KiB", "2MiB"]))
def test_engines_agree_on_same_page_runs_in_other_geometries(
        accesses: list[tuple[int, int]], model: TraceModel, pages: str) -> None:
    """Tiny sets evict a run's entry, a unified L1 array serves both classes' runs."""
    assert_same(*replay_both(to_words(accesses), model=model, pages=pages))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.data_too_large])
@given(same_page_runs(), st.lists(st.integers(1, 5000), min_size=1, max_size=6))
def test_runs_continue_across_chunks_and_slices(accesses: list[tuple[int, int]],
                                                cuts: list[int]) -> None:
    """The run state carries over from slice to slice and chunk to chunk."""
    from pagewalk.trace import replay
    words = to_words(accesses)
    pieces = TraceReplayer()
    first = 0
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(replay, "SLICE_RECORDS", 1 << 9)
        for cut in sorted(set(cuts)) + [len(words)]:
            if cut > first:
                pieces.feed(Chunk(words[first:cut], first, 8 * cut))
                first = cut
    whole = TraceReplayer(engine="reference")
    whole.feed(Chunk(words, 0, words.nbytes))
    assert_same(pieces, whole)


@pytest.mark.parametrize("bad_word, reason", [
    ((1 << 58) | BASE, "bits 57..61"),
    ((3 << 62) | 0x400000, "kind 3"),
    ((1 << 47) | BASE, "non-canonical"),
])
@pytest.mark.parametrize("kind", [0, 2])
def test_a_bad_record_inside_a_run_stops_it_there(bad_word: int, reason: str,
                                                  kind: int) -> None:
    """A bad record on a run's page (same page bits) is never counted as a hit of it."""
    page = 0x400000 if kind == 2 else BASE
    words = to_words([(page + 8 * (i % 512), kind) for i in range(3000)])
    words[1500] = np.uint64(bad_word)
    fast_run, reference_run = replay_both(words)
    assert_same(fast_run, reference_run)
    assert fast_run.stats().accesses == 1500
    with pytest.raises(TraceError, match=f"record 1500 \\(byte 12000\\): .*{reason}"):
        TraceReplayer().feed(Chunk(words, 0, words.nbytes))


def small_l1_model(l1_serves: tuple[str, ...], ways: int) -> TraceModel:
    """L1 arrays of one set of ``ways`` entries (a page beyond them evicts), a roomy STLB."""
    arrays = [TlbArray(f"L1 {serves}", 1, serves, (12, 21, 30), ways, ways)
              for serves in l1_serves]
    arrays.append(TlbArray("STLB", 2, "unified", (12, 21, 30), 64, 4))
    return TraceModel("small", TlbGeometry("small", tuple(arrays)), PwcGeometry(), 4)


X, Y, CODE_X, CODE_Y = BASE, BASE + 4096, 0x400000, 0x401000


@pytest.mark.parametrize("l1_serves, ways, pattern", [
    (("data", "instruction"), 1, [(X, 0), (Y, 1), (X, 0)]),
    (("data", "instruction"), 1, [(CODE_X, 2), (CODE_Y, 2), (CODE_X, 2)]),
    (("unified",), 1, [(CODE_X, 2), (X, 0), (CODE_X, 2), (X, 1)]),
    (("unified",), 1, [(X, 0), (CODE_X, 2), (X, 1), (CODE_X, 2)]),
    (("unified",), 2, [(X, 0), (Y, 0), (CODE_X, 2), (X, 0)]),      # a fetch evicts data
    (("unified",), 2, [(CODE_X, 2), (CODE_Y, 2), (X, 1), (CODE_X, 2)]),  # and back
])
def test_a_run_ends_when_another_access_evicts_its_entry(
        l1_serves: tuple[str, ...], ways: int, pattern: list[tuple[int, int]]) -> None:
    """Runs of 20 on more pages than an L1 set holds (one class's, or two classes' in an
    L1 array serving both): a return to a page whose entry was taken is an STLB hit,
    never a run's hit."""
    accesses = [(page + 8 * n, kind) for page, kind in pattern for n in range(20)] * 3
    fast_run, reference_run = replay_both(to_words(accesses),
                                          model=small_l1_model(l1_serves, ways))
    assert_same(fast_run, reference_run)
    stats = fast_run.stats()
    assert stats.walks == len({page for page, _ in pattern})
    assert stats.stlb_hits > 0 and stats.l1_hits > len(accesses) * 9 // 10


def test_a_stream_is_one_walk_per_page_and_hits_for_the_rest() -> None:
    """8-byte steps over 64 pages: 64 faults and walks, every other access an L1 hit."""
    words = to_words([(BASE + 8 * i, i % 4 == 3) for i in range(64 * 512)])
    fast_run, reference_run = replay_both(words)
    assert_same(fast_run, reference_run)
    stats = fast_run.stats()
    assert (stats.walks, stats.faults, stats.l1_hits) == (64, 64, 64 * 511)
    assert (stats.loads, stats.stores) == (64 * 384, 64 * 128)
