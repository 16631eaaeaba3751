"""The memory-pressure examples (pressure-*.yaml, issue 17) show what their descriptions
teach: each test runs one built-in example and checks the rule behind it (VmRSS stays
under the cgroup's limit, VmRSS + VmSwap is what was written, sequential swap-in reads
about 8 pages per major fault, ...) and then the figures its description quotes, so that
a change to the simulator that moves them also shows that the description is out of date.

Sizes are in kB and counts in pages or faults, changes since the scenario started, as in
every report; "phase" figures are the change between two measures.
"""

from __future__ import annotations

import functools

import pytest

import pagewalk
from pagewalk.scenario.examples import example_path, list_examples
from pagewalk.scenario.runner import Measurement, Report
from pagewalk.units import KiB

PRESSURE_EXAMPLES = ("pressure-thrash-vs-fit", "pressure-swap-readahead",
                     "pressure-pageout-then-touch", "pressure-oom-kill",
                     "pressure-thp-vs-4k", "pressure-hugetlb-untouched")
PAGES_PER_THP = 512
PAGE_KB = 4


@functools.cache
def report(name: str) -> Report:
    """One run of a built-in example, shared by the tests that read it."""
    return pagewalk.run(name)


def limit_kb(name: str) -> int:
    """The example's memory cgroup limit, in kB (0: none)."""
    path = example_path(name)
    assert path is not None
    return pagewalk.load_scenario(path).system.memory_limit // KiB


def measurement(name: str, label: str) -> Measurement:
    return next(m for m in report(name).measurements if m.label == label)


def fig(name: str, label: str, field: str, process: str | None = "main") -> int:
    """A figure of one measure: a process's, or with process=None the system's."""
    measured = measurement(name, label)
    return measured.system[field] if process is None else measured.processes[process][field]


def change(name: str, field: str, since: str, until: str,
           process: str | None = "main") -> int:
    """How much a figure moved between two measures."""
    return fig(name, until, field, process) - fig(name, since, field, process)


# -- all six ------------------------------------------------------------------------------

def test_the_pressure_examples_are_built_in_with_a_description() -> None:
    examples = dict(list_examples())
    assert {name for name in examples if name.startswith("pressure-")} == set(PRESSURE_EXAMPLES)
    for name in PRESSURE_EXAMPLES:
        assert len(examples[name]) > 200, f"{name}: the description should teach"


@pytest.mark.parametrize("name", PRESSURE_EXAMPLES)
def test_every_measure_keeps_each_process_under_the_limit(name: str) -> None:
    """A process in the cgroup never has more resident than the cgroup's limit, and the
    report says it ran under pressure."""
    assert report(name).pressure
    limit = limit_kb(name)
    for measurement in report(name).measurements:
        for process, figures in measurement.processes.items():
            assert not limit or figures["VmRSS"] <= limit, (measurement.label, process)


# -- a working set larger than its limit thrashes -----------------------------------------

def test_thrash_a_working_set_that_fits_is_reread_without_a_fault() -> None:
    name = "pressure-thrash-vs-fit"
    assert fig(name, "fits-written", "minflt") == 12 * 1024 // PAGE_KB
    for field in ("minflt", "majflt", "VmRSS"):
        assert change(name, field, "fits-written", "fits-reread") == 0
    for field in ("pswpin", "pswpout", "pgmajfault"):
        assert fig(name, "fits-reread", field, None) == 0


def test_thrash_a_working_set_larger_than_the_limit_faults_every_page_each_pass() -> None:
    name = "pressure-thrash-vs-fit"
    big_kb, big_pages = 24 * 1024, 24 * 1024 // PAGE_KB
    for label in ("big-written", "big-reread-once", "big-reread-twice"):
        assert fig(name, label, "VmRSS") + fig(name, label, "VmSwap") == big_kb
    assert fig(name, "big-written", "VmSwap") == fig(name, "big-written", "pswpout", None) * PAGE_KB
    for since, until in (("big-written", "big-reread-once"),
                         ("big-reread-once", "big-reread-twice")):
        majflt = change(name, "majflt", since, until)
        assert majflt + change(name, "minflt", since, until) == big_pages   # every page
        assert change(name, "pswpin", since, until, None) >= big_pages      # read from swap
        assert big_pages // 8 <= majflt < big_pages // 7                    # readahead: ~8 a read
    # Every page went out once in the first pass; the second drops clean swap-cache copies.
    assert fig(name, "big-reread-once", "pswpout", None) == big_pages
    assert change(name, "pswpout", "big-reread-once", "big-reread-twice", None) == 0
    # The description's figures.
    assert (fig(name, "big-written", "VmRSS"), fig(name, "big-written", "VmSwap"),
            fig(name, "big-written", "pswpout", None)) == (14688, 9888, 2472)
    assert (change(name, "majflt", "big-written", "big-reread-once"),
            change(name, "minflt", "big-written", "big-reread-once"),
            fig(name, "big-reread-once", "pswpin", None)) == (773, 5371, 6149)
    assert (change(name, "majflt", "big-reread-once", "big-reread-twice"),
            change(name, "minflt", "big-reread-once", "big-reread-twice"),
            change(name, "pswpin", "big-reread-once", "big-reread-twice", None)) == \
        (770, 5374, 6144)


# -- swap readahead: sequential vs strided ------------------------------------------------

def test_readahead_a_strided_read_is_one_major_fault_and_one_read_per_page() -> None:
    name = "pressure-swap-readahead"
    pages = 16 * 1024 // 32                                   # one page per 32 KiB
    assert fig(name, "written", "VmRSS") + fig(name, "written", "VmSwap") == 34 * 1024
    assert fig(name, "written", "VmSwap") >= (16 + 2) * 1024  # at least rnd and seq
    assert change(name, "majflt", "written", "strided") == pages
    assert change(name, "minflt", "written", "strided") == 0
    assert change(name, "pswpin", "written", "strided", None) == pages


def test_readahead_a_sequential_read_is_about_one_major_fault_per_8_pages() -> None:
    name = "pressure-swap-readahead"
    pages = 2 * 1024 // PAGE_KB
    majflt = change(name, "majflt", "strided", "sequential")
    assert majflt + change(name, "minflt", "strided", "sequential") == pages
    assert majflt < change(name, "majflt", "written", "strided") / 4   # same page count
    assert pages // 8 <= majflt < pages // 7
    pswpin = change(name, "pswpin", "strided", "sequential", None)
    assert pages <= pswpin < pages + 8                       # at most one block past the end
    assert fig(name, "sequential", "VmRSS") + fig(name, "sequential", "VmSwap") == 34 * 1024
    # The description's figures.
    assert (fig(name, "written", "VmSwap"), fig(name, "written", "pswpout", None)) == (20096, 5024)
    assert (majflt, change(name, "minflt", "strided", "sequential"), pswpin) == (67, 445, 518)


# -- MADV_PAGEOUT, then touch -------------------------------------------------------------

def test_pageout_swaps_out_at_once_and_the_swap_cache_makes_touching_minor() -> None:
    name = "pressure-pageout-then-touch"
    assert (fig(name, "paged-out", "RssAnon"), fig(name, "paged-out", "VmSwap"),
            fig(name, "paged-out", "pswpout", None)) == (0, 8 * 1024, 2048)
    for since, until, swap_kb in (("paged-out", "first-half-read", 4 * 1024),
                                  ("first-half-read", "second-half-written", 0)):
        assert change(name, "minflt", since, until) == 1024
        assert fig(name, until, "majflt") == 0
        assert fig(name, until, "pswpin", None) == 0
        assert fig(name, until, "VmSwap") == swap_kb
        assert fig(name, until, "RssAnon") + swap_kb == 8 * 1024


def test_pageout_again_writes_only_what_was_written_since() -> None:
    """The read half keeps its swap slots (clean copies: dropped without I/O), the
    written half let its slots go and is written again."""
    name = "pressure-pageout-then-touch"
    assert change(name, "pswpout", "second-half-written", "paged-out-again", None) == 1024
    assert fig(name, "paged-out-again", "VmSwap") == 8 * 1024
    assert fig(name, "paged-out-again", "RssAnon") == 0


def test_pageout_skips_pages_another_process_maps() -> None:
    name = "pressure-pageout-then-touch"
    assert change(name, "pswpout", "paged-out-again", "pageout-while-shared", None) == 0
    for process in ("main", "child"):
        assert fig(name, "pageout-while-shared", "RssAnon", process) == 2 * 1024
    assert "child" not in measurement(name, "pageout-after-exit").processes
    assert change(name, "pswpout", "pageout-while-shared", "pageout-after-exit", None) == 512
    assert change(name, "VmSwap", "pageout-while-shared", "pageout-after-exit") == 2 * 1024
    assert fig(name, "pageout-after-exit", "RssAnon") == 0


# -- an OOM kill ----------------------------------------------------------------------------

def test_oom_kill_takes_the_faulting_child_and_leaves_main_alone() -> None:
    name = "pressure-oom-kill"
    (outcome,) = report(name).outcomes
    assert (outcome.kind, outcome.process, outcome.failure) == ("touch", "child", "SIGKILL")
    assert fig(name, "child-wrote-8m", "oom_kill", None) == 0
    assert fig(name, "after-oom", "oom_kill", None) == 1
    assert fig(name, "after-oom", "pswpout", None) == 0           # no swap: nothing reclaimed
    assert "child" not in measurement(name, "after-oom").processes
    for field in ("VmRSS", "RssAnon", "minflt", "majflt"):
        assert change(name, field, "child-wrote-8m", "after-oom") == 0
    assert fig(name, "child-wrote-8m", "VmRSS", "child") == 12 * 1024


def test_oom_kill_comes_when_the_cgroup_is_full() -> None:
    """The pages written before the kill (main's 4 MiB, the child's first 8 MiB and the
    pages before the killing access) fill the limit but for page tables and the pages the
    child copies after fork, well under 1 MiB. The child's 32 MiB mapping lies right below
    main's 4 MiB one (top-down layout): the kill's address says how far it got."""
    name = "pressure-oom-kill"
    (outcome,) = report(name).outcomes
    small_start, _ = report(name).mappings["main"]["small"]
    second_write_start = small_start - 32 * 1024 * KiB + 8 * 1024 * KiB
    assert outcome.vaddr is not None and outcome.vaddr >= second_write_start
    pages_before_kill = (outcome.vaddr - second_write_start) // (PAGE_KB * KiB)
    written_kb = (4 * 1024 + 8 * 1024) + pages_before_kill * PAGE_KB
    assert limit_kb(name) - 1024 < written_kb <= limit_kb(name)
    assert pages_before_kill == 858                               # the description's figure


# -- THPs vs 4 KiB pages under a limit -----------------------------------------------------

def test_thp_4k_pages_go_to_swap_one_by_one() -> None:
    name = "pressure-thp-vs-4k"
    assert fig(name, "4k-written", "minflt") == 8192
    assert fig(name, "4k-written", "VmRSS") + fig(name, "4k-written", "VmSwap") == 32 * 1024
    assert fig(name, "4k-written", "VmSwap") == fig(name, "4k-written", "pswpout", None) * PAGE_KB
    assert (fig(name, "4k-written", "VmRSS"), fig(name, "4k-written", "pswpout", None)) == \
        (14632, 4534)


def test_thp_reclaim_splits_whole_thps_and_swaps_512_pages_each() -> None:
    name = "pressure-thp-vs-4k"
    assert change(name, "minflt", "4k-unmapped", "thp-written") == 16
    assert fig(name, "thp-written", "thp_fault_alloc", None) == 16
    assert fig(name, "thp-written", "thp_fault_fallback", None) == 0
    for label in ("thp-written", "thp-reread"):
        splits = fig(name, label, "thp_split_pmd", None)
        assert change(name, "pswpout", "4k-unmapped", label, None) == splits * PAGES_PER_THP
        assert fig(name, label, "VmRSS") + fig(name, label, "VmSwap") == 32 * 1024
    # What is resident after the write is whole THPs; what is in swap, whole split ones.
    splits = fig(name, "thp-written", "thp_split_pmd", None)
    assert fig(name, "thp-written", "VmRSS") == fig(name, "thp-written", "AnonHugePages")
    assert fig(name, "thp-written", "VmRSS") % (2 * 1024) == 0
    assert fig(name, "thp-written", "VmSwap") == splits * 2 * 1024
    assert (splits, fig(name, "thp-written", "AnonHugePages")) == (9, 14336)


def test_thp_swapped_thps_come_back_as_4k_pages() -> None:
    name = "pressure-thp-vs-4k"
    assert fig(name, "thp-reread", "AnonHugePages") == 0
    assert fig(name, "thp-reread", "thp_split_pmd", None) == 16
    majflt = change(name, "majflt", "thp-written", "thp-reread")
    assert 8192 // 8 <= majflt < 8192 // 7
    assert (majflt, change(name, "pswpin", "thp-written", "thp-reread", None)) == (1027, 8192)


# -- hugetlb is untouched by reclaim -------------------------------------------------------

def test_hugetlb_pages_stay_while_anonymous_memory_is_swapped() -> None:
    name = "pressure-hugetlb-untouched"
    for m in report(name).measurements:
        assert m.processes["main"]["HugetlbPages"] == 8 * 1024, m.label
        assert (m.system["HugePages_Total"], m.system["HugePages_Free"]) == (8, 4), m.label
    # VmRSS and VmSwap are the anonymous mapping's alone.
    for label in ("anon-written", "anon-paged-out"):
        assert fig(name, label, "VmRSS") + fig(name, label, "VmSwap") == 32 * 1024
        assert fig(name, label, "VmSwap") == fig(name, label, "pswpout", None) * PAGE_KB
    assert fig(name, "anon-paged-out", "VmSwap") == 32 * 1024
    assert fig(name, "anon-paged-out", "VmRSS") == 0
    assert change(name, "minflt", "anon-paged-out", "hugetlb-read") == 0


def test_hugetlb_pages_are_not_charged_to_the_cgroup() -> None:
    """Anonymous memory alone keeps more resident than the limit leaves beside 8 MiB."""
    name = "pressure-hugetlb-untouched"
    resident = fig(name, "anon-written", "VmRSS")
    assert resident + fig(name, "anon-written", "HugetlbPages") > limit_kb(name)
    assert (resident, fig(name, "anon-written", "VmSwap")) == (14632, 18136)


def test_hugetlb_pageout_is_einval() -> None:
    (outcome,) = report("pressure-hugetlb-untouched").outcomes
    assert (outcome.kind, outcome.failure) == ("madvise", "EINVAL")
