"""The knob registry: defaults of the reference machine, the kernel's input rules, aliases,
and one independent store per kernel (kernel/knobs.py)."""

from __future__ import annotations

import pytest

from pagewalk.errors import ConfigError
from pagewalk.kernel import knobs
from pagewalk.kernel.knobs import KNOB_SPECS, KNOBS, KnobValues

THP = "/sys/kernel/mm/transparent_hugepage"
POOL_2M = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"


@pytest.mark.parametrize(("path", "default"), [
    (f"{THP}/enabled", "madvise"),
    (f"{THP}/defrag", "madvise"),
    (f"{THP}/use_zero_page", "1"),
    (f"{THP}/shmem_enabled", "never"),
    (f"{THP}/hugepages-2048kB/shmem_enabled", "inherit"),
    (f"{THP}/hugepages-8kB/shmem_enabled", "never"),
    (f"{THP}/khugepaged/max_ptes_none", "511"),
    (f"{THP}/khugepaged/max_ptes_swap", "64"),
    (f"{THP}/khugepaged/max_ptes_shared", "256"),
    (f"{THP}/khugepaged/pages_to_scan", "4096"),
    (f"{THP}/khugepaged/scan_sleep_millisecs", "10000"),
    (f"{THP}/khugepaged/alloc_sleep_millisecs", "60000"),
    (f"{THP}/khugepaged/defrag", "1"),
    (f"{THP}/hugepages-16kB/enabled", "never"),
    (f"{THP}/hugepages-1024kB/enabled", "never"),
    (f"{THP}/hugepages-2048kB/enabled", "inherit"),
    (POOL_2M, "0"),
    ("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_overcommit_hugepages", "0"),
    ("/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages", "0"),
    ("/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_overcommit_hugepages", "0"),
    ("/proc/sys/vm/nr_hugepages", "0"),
    ("/proc/sys/vm/nr_overcommit_hugepages", "0"),
    ("/proc/sys/vm/overcommit_memory", "0"),
    ("/proc/sys/vm/overcommit_ratio", "50"),
])
def test_boot_defaults_are_the_reference_machines(path: str, default: str) -> None:
    """A fresh store reads what linux-mm-notes sections 0, 4.1 and 6.1 measured at boot."""
    assert KnobValues().get(path) == default


def test_mthp_sizes_are_orders_2_to_9() -> None:
    """Anonymous mTHP has an `enabled` file for 16 kB .. 2048 kB (THP_ORDERS_ALL_ANON)."""
    sizes = [path for path in KNOBS
             if path.startswith(f"{THP}/hugepages-") and path.endswith("/enabled")]
    assert sizes == [f"{THP}/hugepages-{kb}kB/enabled"
                     for kb in (16, 32, 64, 128, 256, 512, 1024, 2048)]


def test_shmem_mthp_sizes_are_orders_1_to_9_and_2mib_inherits() -> None:
    """Shmem has a `shmem_enabled` file for 8 kB .. 2048 kB (THP_ORDERS_ALL_FILE_DEFAULT);
    shmem_init() sets huge_shmem_orders_inherit = BIT(HPAGE_PMD_ORDER), the rest never (the
    reference machine reads `always [inherit] within_size advise never` for 2048 kB)."""
    sizes = [path for path in KNOBS
             if path.startswith(f"{THP}/hugepages-") and path.endswith("/shmem_enabled")]
    assert sizes == [f"{THP}/hugepages-{kb}kB/shmem_enabled"
                     for kb in (8, 16, 32, 64, 128, 256, 512, 1024, 2048)]
    store = KnobValues()
    assert [store.get(path) for path in sizes] == ["never"] * 8 + ["inherit"]
    assert KNOBS[sizes[0]].kind.options == ("always", "inherit", "within_size", "advise", "never")


GIGANTIC_OVERCOMMIT = "/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_overcommit_hugepages"


@pytest.mark.parametrize("value", [0, "0", 4])
def test_gigantic_nr_overcommit_hugepages_refuses_every_write(value: object) -> None:
    """nr_overcommit_hugepages_store() returns -EINVAL for hstate_is_gigantic(h) before it
    even parses the text: 0 is refused as well; the file still reads 0."""
    with pytest.raises(ConfigError) as info:
        knobs.normalise(GIGANTIC_OVERCOMMIT, value)
    assert info.value.location is not None and info.value.location.field == GIGANTIC_OVERCOMMIT
    assert "EINVAL" in info.value.message and "gigantic" in info.value.message
    store = KnobValues()
    with pytest.raises(ConfigError):
        store.set(GIGANTIC_OVERCOMMIT, value)
    assert store.get(GIGANTIC_OVERCOMMIT) == "0"


def test_only_the_gigantic_overcommit_file_refuses_every_write() -> None:
    """The registry's other store handlers parse their input (the 2 MiB overcommit file and
    its /proc twin accept a count; nr_hugepages of 1 GiB is allowed at run time on x86-64)."""
    refused = [spec.path for spec in KNOB_SPECS if spec.refused is not None]
    assert refused == [GIGANTIC_OVERCOMMIT]


def test_gigantic_overcommit_in_a_scenario_names_the_field() -> None:
    """Boot knobs (system.sysfs) and set steps are checked when the scenario is read."""
    from pagewalk.errors import ScenarioError
    from pagewalk.scenario.schema import parse_scenario
    boot = (f"name: x\nsystem:\n  sysfs:\n    {GIGANTIC_OVERCOMMIT}: 0\n"
            "steps:\n  - measure: m\n")
    for text in (boot, f"name: x\nsteps:\n  - set: {{{GIGANTIC_OVERCOMMIT}: 2}}\n"):
        with pytest.raises(ScenarioError) as info:
            parse_scenario(text, "x.yaml")
        assert GIGANTIC_OVERCOMMIT in str(info.value) and "EINVAL" in str(info.value)


SHMEM = f"{THP}/shmem_enabled"
SHMEM_16K = f"{THP}/hugepages-16kB/shmem_enabled"
SHMEM_2M = f"{THP}/hugepages-2048kB/shmem_enabled"


def test_shmem_force_needs_only_the_pmd_size_inheriting() -> None:
    """shmem_enabled_store: force is EINVAL unless huge_shmem_orders_inherit is exactly
    BIT(HPAGE_PMD_ORDER): a smaller size that inherits, or 2 MiB not inheriting, refuses it."""
    assert KnobValues().set(SHMEM, "force") == "force"
    for changed, value in ((SHMEM_16K, "inherit"), (SHMEM_2M, "never"), (SHMEM_2M, "always")):
        store = KnobValues({changed: value})
        with pytest.raises(ConfigError, match="EINVAL") as info:
            store.set(SHMEM, "force")
        assert info.value.location is not None and info.value.location.field == SHMEM
        assert store.get(SHMEM) == "never"


def test_non_pmd_size_cannot_inherit_under_force() -> None:
    """thpsize_shmem_enabled_store: inherit is EINVAL for a non-PMD order while shmem_enabled
    is force; 2 MiB may inherit, and other values are taken."""
    store = KnobValues({SHMEM: "force"})
    with pytest.raises(ConfigError, match="EINVAL"):
        store.set(SHMEM_16K, "inherit")
    assert store.get(SHMEM_16K) == "never"
    assert store.set(SHMEM_16K, "always") == "always"
    assert store.set(SHMEM_2M, "inherit") == "inherit"


def test_set_step_refused_across_knobs_is_einval_at_its_step() -> None:
    """A `set` the kernel refuses because of another knob fails the step with EINVAL."""
    from pagewalk.errors import SyscallError
    from pagewalk.scenario.runner import run_scenario
    from pagewalk.scenario.schema import parse_scenario
    scenario = parse_scenario(
        f"name: x\nsystem:\n  sysfs:\n    {SHMEM_16K}: inherit\n"
        f"steps:\n  - set: {{{SHMEM}: force}}\n", "x.yaml")
    with pytest.raises(SyscallError) as info:
        run_scenario(scenario)
    assert info.value.errno.name == "EINVAL"
    assert info.value.location is not None and info.value.location.step == 0


def test_every_default_passes_its_own_validator() -> None:
    """The table is consistent: each default is a value its file accepts, unchanged."""
    for spec in KNOB_SPECS:
        assert spec.kind.normalise(spec.default) == spec.default


def test_aliases_point_at_canonical_knobs() -> None:
    """An alias names a real, non-alias knob and shares its kind and default."""
    for spec in KNOB_SPECS:
        if spec.alias_of is None:
            continue
        target = KNOBS[spec.alias_of]
        assert target.alias_of is None
        assert (target.kind, target.default) == (spec.kind, spec.default)


def test_registry_is_read_only() -> None:
    """KNOBS is not module state a simulation can change."""
    with pytest.raises(TypeError):
        KNOBS[f"{THP}/enabled"] = KNOBS[f"{THP}/defrag"]  # type: ignore[index]


@pytest.mark.parametrize(("path", "value", "stored"), [
    (f"{THP}/enabled", "always", "always"),
    (f"{THP}/enabled", "never\n", "never"),          # echo adds a newline
    (f"{THP}/defrag", "defer+madvise", "defer+madvise"),
    (f"{THP}/shmem_enabled", "within_size", "within_size"),
    (f"{THP}/shmem_enabled", "force", "force"),
    (f"{THP}/hugepages-64kB/enabled", "always", "always"),
    (f"{THP}/use_zero_page", 0, "0"),
    (f"{THP}/khugepaged/max_ptes_none", 0, "0"),
    (f"{THP}/khugepaged/max_ptes_none", "511", "511"),
    (f"{THP}/khugepaged/scan_sleep_millisecs", 0, "0"),
    ("/proc/sys/vm/nr_hugepages", 16, "16"),
    ("/proc/sys/vm/overcommit_memory", "2", "2"),
])
def test_accepted_values_are_stored_as_the_file_holds_them(
        path: str, value: object, stored: str) -> None:
    """Ints become decimal strings; a trailing newline is dropped (sysfs_streq/kstrtoul)."""
    assert knobs.normalise(path, value) == stored
    assert KnobValues().set(path, value) == stored


@pytest.mark.parametrize(("path", "value", "allowed"), [
    (f"{THP}/enabled", "sometimes", "always, madvise, never"),
    (f"{THP}/enabled", "inherit", "always, madvise, never"),   # only per-size files inherit
    (f"{THP}/enabled", 1, "always, madvise, never"),
    (f"{THP}/defrag", "defer madvise", "defer+madvise"),
    (f"{THP}/hugepages-2048kB/enabled", "within_size", "always, inherit, madvise, never"),
    (f"{THP}/use_zero_page", 2, "0 or 1"),
    (f"{THP}/use_zero_page", True, "0 or 1"),
    (f"{THP}/khugepaged/defrag", "yes", "0 or 1"),
    (f"{THP}/khugepaged/max_ptes_none", 512, "from 0 to 511"),
    (f"{THP}/khugepaged/max_ptes_swap", -1, "from 0 to 511"),
    (f"{THP}/khugepaged/pages_to_scan", 0, "from 1 to"),         # pages_to_scan_store: !pages
    ("/proc/sys/vm/nr_hugepages", "0x10", "an integer from 0"),
    ("/proc/sys/vm/nr_hugepages", 1.5, "an integer from 0"),
    ("/proc/sys/vm/nr_hugepages", 1 << 64, "an integer from 0"),
    ("/proc/sys/vm/nr_hugepages", 1 << 5000, "5001-bit number"),
    ("/proc/sys/vm/overcommit_memory", 3, "0, 1 or 2"),
    ("/proc/sys/vm/overcommit_ratio", -1, "from 0 to"),
])
def test_refused_values_name_the_path_and_what_is_allowed(
        path: str, value: object, allowed: str) -> None:
    """The kernel's store handler would return EINVAL: ConfigError says what it accepts."""
    with pytest.raises(ConfigError) as info:
        knobs.normalise(path, value)
    assert info.value.location is not None and info.value.location.field == path
    assert allowed in info.value.message
    assert path in str(info.value)


def test_unknown_knob_is_refused_with_a_suggestion() -> None:
    with pytest.raises(ConfigError, match="did you mean /sys/kernel/mm/transparent_hugepage/"
                                          "enabled"):
        KnobValues().set("/sys/kernel/mm/transparent_hugepage/enable", "always")


def test_unknown_knob_without_a_close_match_lists_the_knobs() -> None:
    with pytest.raises(ConfigError, match="the knobs are: .*overcommit_ratio"):
        knobs.knob_spec("/proc/sys/kernel/pid_max")


def test_refused_write_changes_nothing() -> None:
    store = KnobValues()
    with pytest.raises(ConfigError):
        store.set(f"{THP}/enabled", "bogus")
    assert store.get(f"{THP}/enabled") == "madvise"


def test_proc_nr_hugepages_is_the_2mib_pool() -> None:
    """/proc/sys/vm/nr_hugepages and hugepages-2048kB/nr_hugepages are one file's value."""
    store = KnobValues()
    store.set("/proc/sys/vm/nr_hugepages", 16)
    assert store.get(POOL_2M) == "16"
    store.set(POOL_2M, 4)
    assert store.get("/proc/sys/vm/nr_hugepages") == "4"
    assert store.resolve("/proc/sys/vm/nr_hugepages") == POOL_2M
    assert store.resolve(POOL_2M) == POOL_2M


def test_proc_nr_overcommit_hugepages_is_the_2mib_pool() -> None:
    store = KnobValues()
    store.set("/proc/sys/vm/nr_overcommit_hugepages", 4)
    assert store.get("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_overcommit_hugepages") == "4"
    assert store.get("/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_overcommit_hugepages") \
        == "0"


def test_items_list_each_value_once_under_its_canonical_path() -> None:
    paths = [path for path, _ in KnobValues().items()]
    assert "/proc/sys/vm/nr_hugepages" not in paths
    assert POOL_2M in paths
    assert len(paths) == len(set(paths)) == sum(1 for s in KNOB_SPECS if s.alias_of is None)


def test_two_stores_run_side_by_side() -> None:
    """Two simulated kernels never share a knob value (STYLE rule 6)."""
    first, second = KnobValues(), KnobValues({f"{THP}/enabled": "always"})
    first.set(f"{THP}/enabled", "never")
    assert (first.get(f"{THP}/enabled"), second.get(f"{THP}/enabled")) == ("never", "always")
    twin = second.copy()
    twin.set(f"{THP}/enabled", "madvise")
    assert second.get(f"{THP}/enabled") == "always"


def test_store_built_from_values_validates_them() -> None:
    with pytest.raises(ConfigError):
        KnobValues({"/proc/sys/vm/overcommit_memory": 7})
