"""The shrinker, driven by fake comparators (predicates on the scenario): it reaches the
minimal scenario for which the predicate holds, every candidate it tries is a valid
scenario (a step that uses a mapping or a process keeps the step that made it), and it
stops when its budget is spent."""

from __future__ import annotations

from typing import Any

from pagewalk.fuzz.discover import discover_sim
from pagewalk.fuzz.document import is_valid, load, repair, step_item, step_process
from pagewalk.fuzz.generate import generate
from pagewalk.fuzz.shrink import shrink

Doc = dict[str, Any]
MiB = 1 << 20

BUSY: Doc = {
    "name": "busy",
    "system": {"sysfs": {"/proc/sys/vm/nr_hugepages": 4,
                         "/sys/kernel/mm/transparent_hugepage/enabled": "always"}},
    "steps": [
        {"mmap": {"name": "a", "length": 8 * MiB, "prot": "rw"}},
        {"mmap": {"name": "h", "length": 6 * MiB, "prot": "rwx",
                  "flags": ["shared", "anonymous", "hugetlb", "populate", "noreserve"],
                  "page_size": 2 * MiB}},
        {"touch": {"region": "a", "stride": 64 * 1024}},
        {"fork": {"name": "c1"}},
        {"set": {"/sys/kernel/mm/transparent_hugepage/defrag": "never",
                 "/proc/sys/vm/overcommit_memory": 1}},
        {"mprotect": {"region": "a", "offset": 2 * MiB, "length": 2 * MiB, "prot": "r"}},
        {"touch": {"region": "h", "process": "c1", "access": "read"}},
        {"madvise": {"region": "h", "offset": 2 * MiB, "length": 4 * MiB,
                     "advice": "collapse", "process": "c1"}},
        {"measure": "middle"},
        {"write": {"region": "a", "offset": 100, "data": "hello"}},
        {"munmap": {"region": "a", "offset": 4 * MiB}},
        {"exit": {"process": "c1"}},
        {"measure": "end"},
    ],
}


def _collapse_on_hugetlb(doc: Doc) -> bool:
    """Fake comparator: a MADV_COLLAPSE of a hugetlb mapping, in any process."""
    hugetlb = {fields["name"] for kind, fields in map(step_item, doc["steps"])
               if kind == "mmap" and "hugetlb" in fields.get("flags", [])}
    return any(kind == "madvise" and fields["advice"] == "collapse"
               and fields["region"] in hugetlb for kind, fields in map(step_item, doc["steps"]))


def test_shrinks_to_the_two_steps_the_predicate_needs_and_simplifies_them() -> None:
    tried: list[Doc] = []

    def holds(doc: Doc) -> bool:
        tried.append(doc)
        return _collapse_on_hugetlb(doc)

    result = shrink(BUSY, holds)
    assert not result.exhausted and result.accepted > 0
    assert [step_item(step)[0] for step in result.doc["steps"]] == ["mmap", "madvise"]
    mmap, madvise = (step_item(step)[1] for step in result.doc["steps"])
    assert mmap == {"name": "h", "length": 2 * MiB,
                    "flags": ["shared", "anonymous", "hugetlb"]}
    assert madvise == {"region": "h", "advice": "collapse"}   # the child's step, now main's
    assert "system" not in result.doc
    assert all(is_valid(doc) for doc in tried)
    assert _collapse_on_hugetlb(result.doc)


def test_a_step_of_a_child_keeps_the_fork_and_the_mapping_it_uses() -> None:
    """Fake comparator: a read touch in a forked process. The minimum is the mapping, the
    fork and the touch; dropping the fork drops the child's steps (the schema's rule)."""
    def holds(doc: Doc) -> bool:
        return any(kind == "touch" and step_process(step) != "main"
                   for step in doc["steps"] for kind, _ in [step_item(step)])

    result = shrink(BUSY, holds)
    kinds = [step_item(step)[0] for step in result.doc["steps"]]
    assert kinds == ["mmap", "fork", "touch"]
    assert is_valid(result.doc)


def test_with_a_real_simulator_run_as_the_comparator() -> None:
    """Fake mismatch: the simulator reports at least 2 MiB of AnonHugePages in main at the
    last measure. A generated THP scenario shrinks to an mmap, a touch and the measure."""
    seed = next(seed for seed in range(200)
                if generate(seed, "thp")["steps"] and _has_thp(generate(seed, "thp")))

    def holds(doc: Doc) -> bool:
        return _has_thp(doc)

    result = shrink(generate(seed, "thp"), holds, max_tries=400)
    assert holds(result.doc) and is_valid(result.doc)
    kinds = [step_item(step)[0] for step in result.doc["steps"]]
    assert kinds.count("measure") == 1 and kinds[-1] == "measure"
    assert len(kinds) <= 4, result.doc


def _has_thp(doc: Doc) -> bool:
    report, _ = discover_sim(load(doc))
    if not report["measurements"]:
        return False
    main = report["measurements"][-1]["processes"].get("main", {})
    return bool(main.get("AnonHugePages", 0) >= 2048)


def test_the_budget_stops_it() -> None:
    calls = 0

    def holds(doc: Doc) -> bool:
        nonlocal calls
        calls += 1
        return False

    result = shrink(BUSY, holds, max_tries=3)
    assert result.exhausted and result.tried == 3 == calls and result.doc == BUSY


def test_all_but_one_step_goes_when_nothing_is_needed() -> None:
    """(A scenario needs at least one step.)"""
    result = shrink(BUSY, lambda doc: True)
    assert len(result.doc["steps"]) == 1 and "system" not in result.doc
    assert not result.exhausted and is_valid(result.doc)


def test_repair_drops_what_the_schema_would_refuse() -> None:
    doc = {"name": "r", "steps": [
        {"fork": {"name": "c"}},
        {"touch": {"region": "gone", "process": "c"}},
        {"mmap": {"name": "m", "length": 4096, "process": "c"}},
        {"exit": {"process": "c"}},
        {"touch": {"region": "m", "process": "c"}},
        {"measure": "x"}, {"measure": "x"}, {"set": {}},
    ]}
    fixed = repair(doc)
    assert [step_item(step)[0] for step in fixed["steps"]] == ["fork", "mmap", "exit", "measure"]
    assert is_valid(fixed) and not is_valid(doc)


def test_repair_drops_the_steps_of_a_dropped_file() -> None:
    """A shrinker that drops a ``file`` step must drop what names the file (mmap, truncate,
    fadvise, unlink) and the steps on that mapping; a memfd is never unlinked."""
    doc = {"name": "r", "steps": [
        {"file": {"name": "m", "size": 8192, "fs": "memfd"}},
        {"mmap": {"name": "a", "length": 8192, "file": "gone", "flags": ["shared"]}},
        {"msync": {"region": "a"}},
        {"truncate": {"file": "gone", "size": 0}},
        {"unlink": {"file": "m"}},
        {"file": {"name": "m", "size": 4096}},
        {"mmap": {"name": "b", "length": 8192, "file": "m", "flags": ["private"]}},
        {"msync": {"region": "b", "flags": ["async"]}},
        {"fadvise": {"file": "m", "advice": "dontneed"}},
    ]}
    fixed = repair(doc)
    assert [step_item(step)[0] for step in fixed["steps"]] == ["file", "mmap", "msync",
                                                               "fadvise"]
    assert is_valid(fixed) and not is_valid(doc)
