"""LruTable: one set-associative true-LRU table (hw/lru_table.py), the building block of
every TLB and page-walk cache."""

from __future__ import annotations

from collections import OrderedDict

from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from pagewalk.hw.lru_table import INVALID_TAG, LruArrays, LruTable


def test_a_miss_then_a_fill_then_a_hit() -> None:
    """A lookup of an absent tag misses; after a fill it hits the way it was put in."""
    table = LruTable(nr_sets=4, nr_ways=2)
    assert table.lookup(1, 0x42) == -1
    assert table.fill(1, 0x42, payload=7) == INVALID_TAG
    way = table.lookup(1, 0x42)
    assert way >= 0
    assert table.payload_at(1, way) == 7


def test_a_hit_makes_the_entry_most_recently_used() -> None:
    """4 ways filled A B C D; touching A makes B the LRU, so E evicts B."""
    table = LruTable(nr_sets=1, nr_ways=4)
    for tag in (10, 11, 12, 13):
        table.fill(0, tag)
    assert table.lookup(0, 10) >= 0
    assert table.fill(0, 14) == 11
    assert table.valid_tags(0) == [14, 10, 13, 12]


def test_a_fill_takes_the_lowest_invalid_way_first() -> None:
    """Invalid ways have stamp 0: they go before any valid entry, the lowest first."""
    table = LruTable(nr_sets=1, nr_ways=4)
    table.fill(0, 1)
    table.fill(0, 2)
    table.invalidate(0, 1)            # way 0 is free again
    table.fill(0, 3)
    assert table.tags[0].tolist() == [3, 2, INVALID_TAG, INVALID_TAG]


def test_filling_a_present_tag_rewrites_it_in_place() -> None:
    """No duplicate, no eviction: the payload is replaced and the entry becomes MRU."""
    table = LruTable(nr_sets=1, nr_ways=2)
    table.fill(0, 5, payload=1)
    table.fill(0, 6, payload=2)
    assert table.fill(0, 5, payload=3) == INVALID_TAG
    assert sorted(table.tags[0].tolist()) == [5, 6]
    assert table.payload_at(0, table.find(0, 5)) == 3
    assert table.fill(0, 7) == 6      # 5 was refreshed, 6 is the LRU


def test_sets_are_independent() -> None:
    """A page number picks its set modulo the number of sets; sets do not evict each other."""
    table = LruTable(nr_sets=16, nr_ways=1)
    assert table.set_of(0x1234) == 0x4
    table.fill(table.set_of(3), 3)
    table.fill(table.set_of(4), 4)
    assert table.lookup(table.set_of(3), 3) >= 0
    table.fill(table.set_of(19), 19)  # 19 % 16 == 3: evicts 3 only
    assert table.lookup(table.set_of(3), 3) == -1
    assert table.lookup(table.set_of(4), 4) >= 0


def test_invalidate_matching_drops_only_the_matching_tags() -> None:
    """E.g. one PCID's entries: tag & mask == value."""
    table = LruTable(nr_sets=2, nr_ways=4)
    for tag in (0x100, 0x101, 0x200, 0x201):
        table.fill(tag & 1, tag)
    assert table.invalidate_matching(0xF00, 0x100) == 2
    remaining = sorted(t for t in table.tags.ravel().tolist() if t != INVALID_TAG)
    assert remaining == [0x200, 0x201]
    table.flush()
    assert (table.tags == INVALID_TAG).all() and (table.stamps == 0).all()


def test_tables_in_one_storage_do_not_overlap_and_share_the_clock() -> None:
    """Two tables carved out of one LruArrays (as a TLB hierarchy does)."""
    storage = LruArrays.allocate(8 + 4)
    first = LruTable(2, 4, storage, offset=0)
    second = LruTable(1, 4, storage, offset=8)
    first.fill(0, 1)
    second.fill(0, 1)
    assert storage.tags[:8].tolist().count(1) == 1 and storage.tags[8:].tolist().count(1) == 1
    assert int(storage.clock[0]) == 2


# A model of true LRU per set: an OrderedDict from tag to payload, oldest first.
operations = st.lists(st.tuples(st.sampled_from(["lookup", "fill", "invalidate"]),
                                st.integers(0, 3), st.integers(0, 11)), max_size=200)


@settings(max_examples=200, deadline=None,
          phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink])
@given(operations)
def test_table_behaves_as_true_lru(ops: list[tuple[str, int, int]]) -> None:
    """Random lookups, fills and invalidations agree with an OrderedDict LRU per set."""
    table = LruTable(nr_sets=4, nr_ways=3)
    model: list[OrderedDict[int, int]] = [OrderedDict() for _ in range(4)]
    for op, set_index, tag in ops:
        lru = model[set_index]
        if op == "lookup":
            hit = table.lookup(set_index, tag) >= 0
            assert hit == (tag in lru)
            if hit:
                lru.move_to_end(tag)
        elif op == "fill":
            evicted = table.fill(set_index, tag, payload=tag * 3)
            if tag in lru:
                assert evicted == INVALID_TAG
                lru.move_to_end(tag)
            elif len(lru) == 3:
                assert evicted == next(iter(lru))
                lru.popitem(last=False)
            else:
                assert evicted == INVALID_TAG
            lru[tag] = tag * 3
        else:
            assert table.invalidate(set_index, tag) == (tag in lru)
            lru.pop(tag, None)
        assert table.valid_tags(set_index) == list(reversed(lru))
