"""Reading scenario files (scenario.md, version 1): every example parses, and every
malformed file is one ScenarioError naming the file, the step and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pagewalk.errors import Errno, Location, ScenarioError, Signal
from pagewalk.scenario import schema
from pagewalk.scenario.schema import (
    PROT_EXEC,
    PROT_NONE,
    PROT_READ,
    PROT_WRITE,
    ExitStep,
    ForkStep,
    KhugepagedStep,
    MadviseStep,
    MeasureStep,
    MmapStep,
    MprotectStep,
    MunmapStep,
    Range,
    ReadStep,
    Scenario,
    SetStep,
    SystemConfig,
    TouchStep,
    WriteStep,
    load_scenario,
    parse_scenario,
)
from pagewalk.units import GiB, KiB, MiB, format_size

DATA = Path(__file__).resolve().parent.parent / "data" / "scenarios"
EXAMPLES = sorted(DATA.glob("*.yaml"))
MEASURED = sorted((DATA.parent / "measured").glob("*.yaml"))
FILE = "t.yaml"
THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"


def scenario_text(*steps: str, system: str = "", name: str = "t") -> str:
    """A scenario with one step per line, each given in YAML flow style."""
    lines = [f"name: {name}", system, "steps:"] + [f"  - {step}" for step in steps]
    return "\n".join(line for line in lines if line) + "\n"


def parse(*steps: str, system: str = "") -> Scenario:
    return parse_scenario(scenario_text(*steps, system=system), FILE)


def refused(text: str) -> ScenarioError:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, FILE)
    return info.value


def assert_refused(text: str, step: int | None, field: str | None, *words: str) -> None:
    """``text`` is refused at (FILE, step, field) with a message containing ``words``."""
    err = refused(text)
    assert err.location == Location(FILE, step, field), str(err)
    for word in words:
        assert word in err.message, str(err)
    assert FILE in str(err)


MMAP_A = "mmap: {name: a, length: 8MiB}"


# -- the examples ------------------------------------------------------------------------

def test_examples_are_all_present() -> None:
    """tests/data/scenarios holds every shared example with its kernel report."""
    assert len(EXAMPLES) >= 23
    for path in EXAMPLES:
        assert path.with_suffix("").with_suffix(".kernel.json").exists() or \
            (DATA / f"{path.stem}.kernel.json").exists()


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_parses(path: Path) -> None:
    scenario = load_scenario(path)
    assert scenario.name == path.stem
    assert scenario.file == str(path)
    assert [step.index for step in scenario.steps] == list(range(len(scenario.steps)))


@pytest.mark.parametrize("path", MEASURED, ids=lambda p: p.stem)
def test_every_measured_scenario_parses(path: Path) -> None:
    """The scenarios measured on the live kernel (tests/data/measured) are valid too."""
    assert load_scenario(path).steps


def test_example_thp_madvise_64m_reads_as_written() -> None:
    scenario = load_scenario(DATA / "thp-madvise-64m.yaml")
    assert scenario.system == SystemConfig()
    assert scenario.steps == (
        MmapStep(index=0, name="heap", length=64 * MiB, prot=PROT_READ | PROT_WRITE,
                 flags=frozenset({"private", "anonymous"})),
        MadviseStep(index=1, range=Range("heap"), advice="hugepage"),
        TouchStep(index=2, range=Range("heap"), access="write", stride=4 * KiB),
        MeasureStep(index=3, label="after-touch"),
    )


def test_example_data_through_fork_reads_as_written() -> None:
    steps = load_scenario(DATA / "data-through-fork.yaml").steps
    assert steps[3] == ForkStep(index=3, name="child")
    assert steps[4] == ReadStep(index=4, process="child", region="buf", offset=0,
                                length=len(b"hello, parent"), expect=b"hello, parent")
    assert steps[10] == WriteStep(index=10, region="buf", offset=2 * MiB, data=b"parent")


def test_example_hugetlb_and_expectations() -> None:
    steps = load_scenario(DATA / "hugetlb-noreserve-sigbus.yaml").steps
    assert steps[0] == MmapStep(index=0, name="h", length=8 * MiB,
                                flags=frozenset({"private", "anonymous", "hugetlb",
                                                 "noreserve"}))
    assert isinstance(steps[2], TouchStep) and steps[2].expect_signal is Signal.SIGBUS
    errno_steps = load_scenario(DATA / "errno-mmap-munmap-args.yaml").steps
    assert errno_steps[2].expect_error is Errno.ENOMEM
    assert isinstance(errno_steps[1], MmapStep) and errno_steps[1].addr == 0x600000000100


def test_example_system_sysfs_is_normalised() -> None:
    """`/proc/sys/vm/nr_hugepages: 16` (an int in YAML) is held as the file holds it."""
    system = load_scenario(DATA / "hugetlb-2m-pool.yaml").system
    assert system.sysfs == {"/proc/sys/vm/nr_hugepages": "16"}


# -- defaults ----------------------------------------------------------------------------

def test_defaults_of_every_step() -> None:
    scenario = parse(
        "mmap: {name: a, length: 4096}", "munmap: {region: a}",
        "mprotect: {region: a, prot: r}", "madvise: {region: a, advice: willneed}",
        "touch: {region: a}", "write: {region: a, data: x}",
        "read: {region: a, length: 3}", "fork: {name: c}", "exit: {process: c}",
        "set: {/proc/sys/vm/overcommit_memory: 1}", "measure: m", "khugepaged: {}",
        "khugepaged:")
    assert scenario.description == ""
    assert scenario.system == SystemConfig(ram=4 * GiB, paging=4, pti=False, pcid=True)
    assert scenario.steps == (
        MmapStep(index=0, name="a", length=4096, prot=PROT_READ | PROT_WRITE,
                 flags=frozenset({"private", "anonymous"}), page_size=None, addr=None),
        MunmapStep(index=1, range=Range("a", 0, None)),
        MprotectStep(index=2, range=Range("a"), prot=PROT_READ),
        MadviseStep(index=3, range=Range("a"), advice="willneed"),
        TouchStep(index=4, range=Range("a"), access="write", stride=4096),
        WriteStep(index=5, region="a", offset=0, data=b"x"),
        ReadStep(index=6, region="a", offset=0, length=3, expect=None),
        ForkStep(index=7, process="main", name="c"),
        ExitStep(index=8, process="c"),
        SetStep(index=9, knobs={"/proc/sys/vm/overcommit_memory": "1"}),
        MeasureStep(index=10, label="m"),
        KhugepagedStep(index=11, scans=1),
        KhugepagedStep(index=12, scans=1),
    )


def test_system_section_is_read() -> None:
    scenario = parse_scenario(
        "name: s\ndescription: words\nsystem:\n  ram: 24GiB\n  paging: 5\n  pti: true\n"
        "  pcid: false\n  sysfs:\n    /proc/sys/vm/nr_hugepages: 2\n"
        "    /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages: '4'\nsteps: []\n", FILE)
    assert scenario.system == SystemConfig(
        ram=24 * GiB, paging=5, pti=True, pcid=False,
        sysfs={"/proc/sys/vm/nr_hugepages": "2",
               "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages": "4"})
    # The order is kept: the runner writes them in turn, so the later write wins.
    assert list(scenario.system.sysfs) == [
        "/proc/sys/vm/nr_hugepages", "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"]
    assert scenario.description == "words"


def test_json_is_accepted() -> None:
    text = ('{"name": "j", "steps": [{"mmap": {"name": "a", "length": "2MiB"}},'
            ' {"touch": {"region": "a", "stride": 4096}}]}')
    scenario = parse_scenario(text, "j.json")
    assert scenario.steps[1] == TouchStep(index=1, range=Range("a"), stride=4096)


@pytest.mark.parametrize(("prot", "bits"), [
    ("none", PROT_NONE), ("r", PROT_READ), ("w", PROT_WRITE), ("x", PROT_EXEC),
    ("rw", PROT_READ | PROT_WRITE), ("wr", PROT_READ | PROT_WRITE),
    ("rx", PROT_READ | PROT_EXEC), ("xwr", PROT_READ | PROT_WRITE | PROT_EXEC),
])
def test_prot_letters_in_any_order(prot: str, bits: int) -> None:
    step = parse(f"mmap: {{name: a, length: 4096, prot: {prot}}}").steps[0]
    assert isinstance(step, MmapStep) and step.prot == bits


def test_hugetlb_page_sizes() -> None:
    steps = parse("mmap: {name: a, length: 2MiB, flags: [private, anonymous, hugetlb]}",
                  "mmap: {name: b, length: 1GiB, flags: [shared, anonymous, hugetlb], "
                  "page_size: 1GiB}",
                  "mmap: {name: c, length: 4MiB, flags: [private, anonymous, hugetlb], "
                  "page_size: 0x200000}").steps
    assert [s.page_size for s in steps if isinstance(s, MmapStep)] == [None, GiB, 2 * MiB]


def test_neither_private_nor_shared_is_left_to_the_kernel() -> None:
    """mmap(2) answers EINVAL for neither MAP_PRIVATE nor MAP_SHARED; the file is valid."""
    step = parse("mmap: {name: a, length: 4096, flags: [anonymous], expect_error: EINVAL}"
                 ).steps[0]
    assert isinstance(step, MmapStep) and step.flags == frozenset({"anonymous"})


def test_fixed_with_fixed_noreplace_is_left_to_the_kernel() -> None:
    step = parse("mmap: {name: a, length: 4096, addr: 0x600000000000, "
                 "flags: [private, anonymous, fixed, fixed_noreplace]}").steps[0]
    assert isinstance(step, MmapStep) and {"fixed", "fixed_noreplace"} <= step.flags


def test_region_inherited_by_fork() -> None:
    """A child knows its parent's mappings made before the fork (scenario.md, mmap)."""
    steps = parse(MMAP_A, "fork: {name: c}", "fork: {name: g, process: c}",
                  "touch: {region: a, process: g}").steps
    assert steps[3].process == "g"


def test_fork_name_may_be_reused_after_exit() -> None:
    steps = parse("fork: {name: c}", "exit: {process: c}", "fork: {name: c}").steps
    assert isinstance(steps[2], ForkStep)


def test_read_length_agrees_with_expect() -> None:
    step = parse(MMAP_A, "read: {region: a, length: 3, expect: hé}").steps[1]
    assert isinstance(step, ReadStep) and step.length == 3 and step.expect == "hé".encode()


def test_load_scenario_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(scenario_text(MMAP_A, name="x"))
    assert load_scenario(path).file == str(path)
    assert load_scenario(str(path)).name == "x"


def test_steps_are_frozen() -> None:
    step = parse(MMAP_A).steps[0]
    assert isinstance(step, MmapStep)
    with pytest.raises(AttributeError):
        step.length = 0  # type: ignore[misc]
    assert hash(step) == hash(parse(MMAP_A).steps[0])


# -- sizes -------------------------------------------------------------------------------

@pytest.mark.parametrize("written", ["2MiB", "2048KiB", "0x200000", "2097152", 2097152])
def test_size_spellings_agree(written: object) -> None:
    step = parse(f"mmap: {{name: a, length: {written!s}}}").steps[0]
    assert isinstance(step, MmapStep) and step.length == 2 * MiB


@given(st.integers(min_value=0, max_value=(1 << 64) - 1))
def test_sizes_round_trip(size: int) -> None:
    """A size written with format_size (the largest exact unit) reads back unchanged."""
    for written in (format_size(size), size, hex(size)):
        text = yaml.safe_dump({"name": "r", "steps": [
            {"mmap": {"name": "a", "length": written, "addr": hex(size)}}]})
        step = parse_scenario(text, FILE).steps[0]
        assert isinstance(step, MmapStep) and (step.length, step.addr) == (size, size)


# -- refusals: the file as a whole -------------------------------------------------------

def test_yaml_syntax_error_names_the_line() -> None:
    assert_refused("name: t\nsteps:\n  - mmap: {name: a,\n", None, None,
                   "YAML syntax error at line")


def test_yaml_duplicate_key_is_refused() -> None:
    assert_refused("name: t\nsteps: []\nname: u\n", None, None, "YAML error at line 3",
                   "duplicate key 'name'", "first at line 1")


def test_yaml_duplicate_key_inside_a_step_is_refused() -> None:
    assert_refused(scenario_text("mmap: {name: a, length: 1, length: 2}"), None, None,
                   "duplicate key 'length'")


def test_yaml_nested_too_deeply_is_refused() -> None:
    assert_refused("name: t\nsteps: " + "[" * 5000 + "]" * 5000 + "\n", None, None,
                   "YAML")


def test_empty_file_is_refused() -> None:
    assert_refused("", None, None, "empty", "'name'", "'steps'")


def test_top_level_must_be_a_map() -> None:
    assert_refused("- mmap: {}\n", None, None, "must be a map")


def test_unknown_top_level_field() -> None:
    assert_refused("name: t\nsteps: []\nversion: 1\n", None, "version",
                   "unknown field 'version'", "name, description, system, steps")


def test_missing_name() -> None:
    assert_refused("steps: []\n", None, "name", "missing required field 'name'")


def test_missing_steps() -> None:
    assert_refused("name: t\n", None, "steps", "missing required field 'steps'")


@pytest.mark.parametrize("name", ["Upper", "with space", "'a/b'", "''"])
def test_name_pattern(name: str) -> None:
    assert_refused(f"name: {name}\nsteps: []\n", None, "name", "[a-z0-9._-]+")


def test_name_must_be_a_string() -> None:
    assert_refused("name: 42\nsteps: []\n", None, "name", "expected a string", "quote it")


def test_description_must_be_a_string() -> None:
    assert_refused("name: t\ndescription: [a]\nsteps: []\n", None, "description",
                   "expected a string")


def test_steps_must_be_a_list() -> None:
    assert_refused("name: t\nsteps: {mmap: {}}\n", None, "steps", "list of steps")


def test_missing_file_is_a_scenario_error(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read") as info:
        load_scenario(tmp_path / "nope.yaml")
    assert info.value.location == Location(str(tmp_path / "nope.yaml"))


# -- refusals: system --------------------------------------------------------------------

def test_unknown_system_field() -> None:
    assert_refused(scenario_text(system="system: {cpus: 2}"), None, "system.cpus",
                   "unknown field 'cpus'", "ram, paging, pti, pcid, pku, sysfs")


@pytest.mark.parametrize("ram", ["32MiB", "2TiB", "65MiB", "lots"])
def test_system_ram_bounds(ram: str) -> None:
    assert_refused(scenario_text(system=f"system: {{ram: {ram}}}"), None, "system.ram")


def test_system_ram_message_says_what_is_allowed() -> None:
    assert_refused(scenario_text(system="system: {ram: 32MiB}"), None, "system.ram",
                   "multiple of 4MiB from 64MiB to 1TiB", "got 32MiB")


@pytest.mark.parametrize("paging", ["3", "'4'", "true", "4.0"])
def test_system_paging_is_4_or_5(paging: str) -> None:
    assert_refused(scenario_text(system=f"system: {{paging: {paging}}}"), None,
                   "system.paging", "expected 4 or 5")


@pytest.mark.parametrize("key", ["pti", "pcid", "pku"])
def test_system_pti_pcid_pku_are_booleans(key: str) -> None:
    assert_refused(scenario_text(system=f"system: {{{key}: 1}}"), None, f"system.{key}",
                   "true or false")


def test_system_sysfs_value_checked_by_the_knob_registry() -> None:
    assert_refused(scenario_text(system=f"system: {{sysfs: {{{THP_ENABLED}: sometimes}}}}"),
                   None, f"system.sysfs.{THP_ENABLED}", "always, madvise, never",
                   "'sometimes'")


def test_system_sysfs_unknown_knob() -> None:
    assert_refused(scenario_text(system="system: {sysfs: {/proc/sys/vm/swappiness: 60}}"),
                   None, "system.sysfs./proc/sys/vm/swappiness", "unknown knob")


# -- refusals: step shape ----------------------------------------------------------------

def test_step_must_be_a_map() -> None:
    assert_refused(scenario_text(MMAP_A, "measure"), 1, "steps[1]", "one-key map",
                   "mmap, munmap")


def test_step_must_have_one_key() -> None:
    text = "name: t\nsteps:\n  - mmap:\n    name: a\n    length: 4096\n"
    assert_refused(text, 0, "steps[0]", "one-key map", "'mmap', 'name'", "indented")


def test_unknown_step_type() -> None:
    assert_refused(scenario_text(MMAP_A, "mbind: {region: a}"), 1, "steps[1].mbind",
                   "unknown step type 'mbind'", "khugepaged")


def test_step_value_must_be_a_map() -> None:
    assert_refused(scenario_text("mmap: a"), 0, "steps[0].mmap", "must be a map")


def test_unknown_step_field() -> None:
    assert_refused(scenario_text("mmap: {name: a, length: 4096, size: 4096}"), 0,
                   "steps[0].mmap.size", "unknown field 'size' in a mmap step",
                   "name, length, prot")


def test_missing_step_field() -> None:
    assert_refused(scenario_text("mmap: {name: a}"), 0, "steps[0].mmap.length",
                   "missing required field 'length'")


def test_wrong_type() -> None:
    assert_refused(scenario_text("mmap: {name: a, length: [1]}"), 0, "steps[0].mmap.length",
                   "expected a size")


def test_bad_size_string() -> None:
    assert_refused(scenario_text("mmap: {name: a, length: 2MB2}"), 0, "steps[0].mmap.length",
                   "bad size")


def test_negative_size() -> None:
    assert_refused(scenario_text(MMAP_A, "touch: {region: a, offset: -4096}"), 1,
                   "steps[1].touch.offset", "negative")


def test_size_beyond_64_bits() -> None:
    assert_refused(scenario_text("mmap: {name: a, length: 0x10000000000000000}"), 0,
                   "steps[0].mmap.length", "64 bits")


def test_size_far_beyond_64_bits() -> None:
    """A number too long for repr() is still reported, by its size."""
    assert_refused(scenario_text("mmap: {name: a, length: 0x" + "f" * 2000 + "}"), 0,
                   "steps[0].mmap.length", "8000-bit number", "64 bits")


def test_address_beyond_64_bits() -> None:
    assert_refused(scenario_text("mmap: {name: a, length: 4096, addr: 0x1ffffffffffffffff}"),
                   0, "steps[0].mmap.addr", "64 bits")


def test_bad_address() -> None:
    assert_refused(scenario_text("mmap: {name: a, length: 4096, addr: 6GiB}"), 0,
                   "steps[0].mmap.addr", "bad address")


def test_mapping_name_pattern() -> None:
    assert_refused(scenario_text("mmap: {name: 'my heap', length: 4096}"), 0,
                   "steps[0].mmap.name", "[A-Za-z0-9._-]+")


# -- refusals: mmap ----------------------------------------------------------------------

@pytest.mark.parametrize("prot", ["rwz", "rr", "''", "rw-", "RW", "7", "[r, w]"])
def test_prot_letters(prot: str) -> None:
    assert_refused(scenario_text(f"mmap: {{name: a, length: 4096, prot: {prot}}}"), 0,
                   "steps[0].mmap.prot", "'none' or letters from 'rwx'")


def test_mprotect_prot_letters() -> None:
    assert_refused(scenario_text(MMAP_A, "mprotect: {region: a, prot: ro}"), 1,
                   "steps[1].mprotect.prot", "'none' or letters from 'rwx'", "'ro'")


def test_mprotect_prot_is_required() -> None:
    assert_refused(scenario_text(MMAP_A, "mprotect: {region: a}"), 1,
                   "steps[1].mprotect.prot", "missing required field 'prot'")


def test_unknown_flag() -> None:
    assert_refused(scenario_text("mmap: {name: a, length: 4096, flags: [private, anonymous, "
                                 "locked]}"), 0, "steps[0].mmap.flags.2",
                   "unknown flag 'locked'", "fixed_noreplace")


def test_flags_must_be_a_list() -> None:
    assert_refused(scenario_text("mmap: {name: a, length: 4096, flags: private}"), 0,
                   "steps[0].mmap.flags", "list of flags")


def test_flag_listed_twice() -> None:
    assert_refused(scenario_text("mmap: {name: a, length: 4096, flags: [private, anonymous, "
                                 "private]}"), 0, "steps[0].mmap.flags.2", "listed twice")


def test_private_and_shared_contradict() -> None:
    assert_refused(scenario_text("mmap: {name: a, length: 4096, flags: [private, shared, "
                                 "anonymous]}"), 0, "steps[0].mmap.flags",
                   "'private' and 'shared' exclude each other")


def test_flags_without_anonymous() -> None:
    assert_refused(scenario_text("mmap: {name: a, length: 4096, flags: [private]}"), 0,
                   "steps[0].mmap.flags", "'anonymous'", "needs a 'file'")


def test_file_mapping_is_not_anonymous() -> None:
    assert_refused(scenario_text("file: {name: f, size: 4096}",
                                 "mmap: {name: a, length: 4096, file: f, "
                                 "flags: [private, anonymous]}"), 1,
                   "steps[1].mmap.flags", "not 'anonymous'")


def test_file_steps_name_an_earlier_file() -> None:
    assert_refused(scenario_text("truncate: {file: f, size: 0}"), 0,
                   "steps[0].truncate.file", "no file 'f' from an earlier file step")
    assert_refused(scenario_text("file: {name: f, size: 4096}", "file: {name: f, size: 0}"), 1,
                   "steps[1].file.name", "already exists")


def test_memfd_has_no_name_to_unlink() -> None:
    assert_refused(scenario_text("file: {name: m, size: 4096, fs: memfd}", "unlink: {file: m}"),
                   1, "steps[1].unlink.file", "is a memfd")


def test_page_size_needs_hugetlb() -> None:
    assert_refused(scenario_text("mmap: {name: a, length: 2MiB, page_size: 2MiB}"), 0,
                   "steps[0].mmap.page_size", "only allowed with the 'hugetlb' flag")


def test_page_size_is_2mib_or_1gib() -> None:
    assert_refused(scenario_text("mmap: {name: a, length: 4MiB, page_size: 4MiB, "
                                 "flags: [private, anonymous, hugetlb]}"), 0,
                   "steps[0].mmap.page_size", "2MiB or 1GiB", "'4MiB'")


def test_mapping_name_unique_in_a_process() -> None:
    assert_refused(scenario_text(MMAP_A, "munmap: {region: a}", MMAP_A), 2,
                   "steps[2].mmap.name", "already has a mapping named 'a' (step 0)")


def test_mapping_name_inherited_counts_as_taken() -> None:
    assert_refused(scenario_text(MMAP_A, "fork: {name: c}",
                                 "mmap: {name: a, length: 4096, process: c}"), 2,
                   "steps[2].mmap.name", "already has a mapping named 'a'")


# -- refusals: ranges and access ---------------------------------------------------------

def test_access_is_read_or_write() -> None:
    assert_refused(scenario_text(MMAP_A, "touch: {region: a, access: exec}"), 1,
                   "steps[1].touch.access", "expected 'read' or 'write', got 'exec'")


def test_stride_must_be_positive() -> None:
    assert_refused(scenario_text(MMAP_A, "touch: {region: a, stride: 0}"), 1,
                   "steps[1].touch.stride", "greater than 0")


def test_advice_from_the_list() -> None:
    assert_refused(scenario_text(MMAP_A, "madvise: {region: a, advice: swapout}"), 1,
                   "steps[1].madvise.advice", "hugepage, nohugepage, dontneed, free, "
                   "collapse, willneed, populate_read", "'swapout'")


def test_region_is_required() -> None:
    assert_refused(scenario_text(MMAP_A, "munmap: {offset: 0}"), 1, "steps[1].munmap.region",
                   "missing required field 'region'")


def test_region_must_come_from_an_earlier_mmap() -> None:
    assert_refused(scenario_text("touch: {region: a}", MMAP_A), 0, "steps[0].touch.region",
                   "no mapping named 'a'", "its mappings: none")


def test_region_made_after_fork_is_not_the_childs() -> None:
    assert_refused(scenario_text("fork: {name: c}", MMAP_A,
                                 "write: {region: a, process: c, data: x}"), 2,
                   "steps[2].write.region", "process 'c' has no mapping named 'a'")


def test_region_of_read_checked() -> None:
    assert_refused(scenario_text(MMAP_A, "read: {region: b, length: 1}"), 1,
                   "steps[1].read.region", "no mapping named 'b'", "its mappings: a")


def test_write_data_must_be_a_string() -> None:
    assert_refused(scenario_text(MMAP_A, "write: {region: a, data: 42}"), 1,
                   "steps[1].write.data", "expected a string")


def test_read_needs_length_or_expect() -> None:
    assert_refused(scenario_text(MMAP_A, "read: {region: a, offset: 0}"), 1,
                   "steps[1].read.length", "missing required field 'length'")


def test_read_length_must_match_expect() -> None:
    assert_refused(scenario_text(MMAP_A, "read: {region: a, length: 4, expect: abc}"), 1,
                   "steps[1].read.length", "length 4 differs from the 3 bytes of 'expect'")


# -- refusals: expectations --------------------------------------------------------------

def test_expect_error_must_be_an_errno_name() -> None:
    assert_refused(scenario_text("mmap: {name: a, length: 0, expect_error: EBOGUS}"), 0,
                   "steps[0].mmap.expect_error", "errno name", "EINVAL", "'EBOGUS'")


def test_expect_signal_is_sigsegv_sigbus_or_sigkill() -> None:
    """An access can end in SIGSEGV, SIGBUS or (version 3: the OOM killer) SIGKILL."""
    assert_refused(scenario_text(MMAP_A, "touch: {region: a, expect_signal: SIGTERM}"), 1,
                   "steps[1].touch.expect_signal", "'SIGTERM'")


def test_a_system_call_expects_no_signal_but_the_oom_killers() -> None:
    """A call never faults (an errno instead), but the OOM killer may end it (version 3)."""
    assert_refused(scenario_text("mmap: {name: a, length: 1, expect_signal: SIGSEGV}"), 0,
                   "steps[0].mmap.expect_signal", "can only be killed (SIGKILL")
    doc = schema.parse_scenario(scenario_text("mmap: {name: a, length: 1, expect_signal: SIGKILL}"),
                                "s.yaml")
    assert doc.steps[0].expect_signal is Signal.SIGKILL


def test_expect_error_on_an_access_is_unknown() -> None:
    assert_refused(scenario_text(MMAP_A, "touch: {region: a, expect_error: EFAULT}"), 1,
                   "steps[1].touch.expect_error", "unknown field 'expect_error'")


def test_expect_error_and_signal_not_both() -> None:
    """No step takes both; the schema says so even where one of them is unknown."""
    text = scenario_text("mmap: {name: a, length: 1, expect_error: EINVAL, "
                         "expect_signal: SIGSEGV}")
    assert refused(text).location == Location(FILE, 0, "steps[0].mmap.expect_signal")


# -- refusals: processes -----------------------------------------------------------------

def test_process_must_exist() -> None:
    assert_refused(scenario_text(MMAP_A, "touch: {region: a, process: child}"), 1,
                   "steps[1].touch.process", "no process 'child'", "live processes: main")


def test_process_must_not_have_exited() -> None:
    assert_refused(scenario_text(MMAP_A, "fork: {name: c}", "exit: {process: c}",
                                 "touch: {region: a, process: c}"), 3,
                   "steps[3].touch.process", "exited at step 2")


def test_main_after_its_exit() -> None:
    assert_refused(scenario_text("fork: {name: c}", "exit: {process: main}", MMAP_A), 2,
                   "steps[2].mmap.process", "'main' exited at step 1", "live processes: c")


def test_fork_name_must_not_be_live() -> None:
    assert_refused(scenario_text("fork: {name: c}", "fork: {name: c}"), 1,
                   "steps[1].fork.name", "'c' is alive")


def test_fork_of_main_named_main() -> None:
    assert_refused(scenario_text("fork: {name: main}"), 0, "steps[0].fork.name", "alive")


def test_exit_defaults_to_main() -> None:
    """Every step's process defaults to main (spec: Processes), exit's too."""
    steps = parse("fork: {name: c}", "exit: {}").steps
    assert steps[1].process == "main"
    assert_refused(scenario_text("fork: {name: c}", "exit: {}", MMAP_A), 2,
                   "steps[2].mmap.process", "'main' exited at step 1", "live processes: c")


def test_exit_of_unknown_process() -> None:
    assert_refused(scenario_text("exit: {process: c}"), 0, "steps[0].exit.process",
                   "no process 'c'")


def test_exit_takes_only_process() -> None:
    assert_refused(scenario_text("fork: {name: c}", "exit: {process: c, status: 0}"), 1,
                   "steps[1].exit.status", "unknown field 'status'")


# -- refusals: set, measure, khugepaged --------------------------------------------------

def test_set_value_checked_by_the_knob_registry() -> None:
    assert_refused(scenario_text(f"set: {{{THP_ENABLED}: sometimes}}"), 0,
                   f"steps[0].set.{THP_ENABLED}", "always, madvise, never")


def test_set_range_checked() -> None:
    path = "/sys/kernel/mm/transparent_hugepage/khugepaged/max_ptes_none"
    assert_refused(scenario_text(f"set: {{{path}: 512}}"), 0, f"steps[0].set.{path}",
                   "from 0 to 511", "512")


def test_set_unknown_knob() -> None:
    assert_refused(scenario_text("set: {process: child}"), 0, "steps[0].set.process",
                   "unknown knob 'process'")


def test_set_needs_a_knob() -> None:
    assert_refused(scenario_text("set: {}"), 0, "steps[0].set", "at least one knob")


def test_measure_label_must_be_a_string() -> None:
    assert_refused(scenario_text("measure: 2024"), 0, "steps[0].measure",
                   "expected a string", "quote it")


def test_measure_label_must_not_be_empty() -> None:
    assert_refused(scenario_text("measure: ' '"), 0, "steps[0].measure", "non-empty")


def test_measure_labels_are_unique() -> None:
    assert_refused(scenario_text("measure: x", MMAP_A, "measure: x"), 2, "steps[2].measure",
                   "'x' is already used by step 0")


def test_khugepaged_scans_at_least_one() -> None:
    assert_refused(scenario_text("khugepaged: {scans: 0}"), 0, "steps[0].khugepaged.scans",
                   "integer >= 1")


def test_khugepaged_takes_no_process() -> None:
    assert_refused(scenario_text("khugepaged: {process: main}"), 0,
                   "steps[0].khugepaged.process", "unknown field 'process'")


# -- robustness --------------------------------------------------------------------------

_STEP_KINDS = ["mmap", "munmap", "mprotect", "madvise", "touch", "write", "read", "fork",
               "exit", "set", "measure", "khugepaged", "mlock", ""]
_FIELDS = ["name", "length", "prot", "flags", "page_size", "addr", "region", "offset",
           "access", "stride", "advice", "data", "expect", "scans", "process",
           "expect_error", "expect_signal", THP_ENABLED, "/proc/sys/vm/nr_hugepages", "bogus"]
_INTERESTING: list[Any] = [
    "a", "b", "main", "c", "r", "rw", "rwx", "none", "read", "write", "exec", "hugepage",
    "collapse", "EINVAL", "ENOMEM", "SIGSEGV", "SIGBUS", "2MiB", "1GiB", "4KiB", "0x1000",
    "0x600000000000", "-1", "always", "never", "1e3", "", " ", "é", 0, 1, 4096, -1,
    2**64, 2**63, 1.5, float("inf"), True, False, None, [], {},
    ["private", "anonymous"], ["shared", "anonymous", "hugetlb"], ["anonymous"],
    ["private", "anonymous", "hugetlb", "noreserve", "fixed"], [["x"]], {"a": 1},
]
_leaf = st.one_of(st.sampled_from(_INTERESTING), st.integers(), st.text(max_size=8),
                  st.booleans(), st.none(), st.floats(allow_nan=False))
_value = st.recursive(_leaf, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.sampled_from(_FIELDS), inner, max_size=3),
                      max_leaves=8)
_step_map = st.dictionaries(st.sampled_from(_STEP_KINDS),
                            st.dictionaries(st.sampled_from(_FIELDS), _value, max_size=6)
                            | _value, min_size=1, max_size=2)
_step = st.one_of(_step_map, _value)


@settings(max_examples=400, deadline=None)
@given(st.lists(_step, max_size=8),
       st.dictionaries(st.sampled_from(["ram", "paging", "pti", "pcid", "pku", "sysfs", "x"]),
                       _value, max_size=3) | st.none())
def test_parse_raises_only_scenario_errors(steps: list[Any], system: Any) -> None:
    """Whatever YAML-ish steps a user writes, the answer is a Scenario or a ScenarioError."""
    document: dict[str, Any] = {"name": "fuzz", "steps": steps}
    if system is not None:
        document["system"] = system
    try:
        scenario = parse_scenario(yaml.safe_dump(document), FILE)
    except ScenarioError as err:
        assert err.location is not None and err.location.file == FILE
        assert err.message
        return
    assert len(scenario.steps) == len(steps)


_KIND_FIELDS = {
    "mmap": ["name", "length", "prot", "flags", "page_size", "addr", "process", "expect_error"],
    "munmap": ["region", "offset", "length", "process", "expect_error"],
    "mprotect": ["region", "offset", "length", "prot", "process", "expect_error"],
    "madvise": ["region", "offset", "length", "advice", "process", "expect_error"],
    "touch": ["region", "offset", "length", "access", "stride", "process", "expect_signal"],
    "write": ["region", "offset", "data", "process", "expect_signal"],
    "read": ["region", "offset", "length", "expect", "process", "expect_signal"],
    "fork": ["name", "process", "expect_error"],
    "exit": ["process"],
    "khugepaged": ["scans"],
}


@st.composite
def _near_valid_step(draw: st.DrawFn) -> dict[str, Any]:
    """A step of a known kind with only its own fields, valued from the interesting pool."""
    kind = draw(st.sampled_from([*_KIND_FIELDS, "set", "measure"]))
    if kind == "measure":
        return {kind: draw(st.sampled_from(["x", "y", "", 3, None]))}
    if kind == "set":
        return {kind: draw(st.dictionaries(st.sampled_from(_FIELDS[-3:]), _leaf, max_size=2))}
    fields = st.dictionaries(st.sampled_from(_KIND_FIELDS[kind]), st.sampled_from(_INTERESTING),
                             max_size=len(_KIND_FIELDS[kind]))
    return {kind: draw(fields)}


@settings(max_examples=400, deadline=None)
@given(st.lists(_near_valid_step(), max_size=10))
def test_near_valid_steps_raise_only_scenario_errors(steps: list[Any]) -> None:
    """Steps of known kinds after two mappings exist: the checks deep inside each parser
    and across steps answer with a Scenario or a ScenarioError, nothing else."""
    prefix = [{"mmap": {"name": "a", "length": "8MiB"}}, {"mmap": {"name": "b", "length": 1}}]
    text = yaml.safe_dump({"name": "fuzz", "steps": prefix + steps})
    try:
        scenario = parse_scenario(text, FILE)
    except ScenarioError as err:
        assert err.location is not None and err.location.file == FILE
        return
    assert [step.index for step in scenario.steps] == list(range(len(steps) + 2))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("name:steps-[]{},'\"&*!|>%@`#\n\t 0x12rw")),
               max_size=80))
def test_random_text_raises_only_scenario_errors(text: str) -> None:
    try:
        parse_scenario(text, FILE)
    except ScenarioError as err:
        assert err.location is not None and err.location.file == FILE


def test_module_exports_prot_constants() -> None:
    assert (schema.PROT_NONE, schema.PROT_READ, schema.PROT_WRITE, schema.PROT_EXEC) == \
        (0, 1, 2, 4)
