"""`pagewalk pagetable-cost`: the arithmetic of flat and hierarchical page tables, and the
tables a simulated process holds, which must add up to the kernel's VmPTE.

A flat table has one entry per page: 128 TiB / 4 KiB x 8 B = 256 GiB. A fully populated
4-level x86_64 table (512 entries per 4 KiB table) needs 2^26 PT + 2^17 PD + 2^8 PDPT
tables and one PML4 (SDM vol. 3A §4.5). VmPTE is mm->pgtables_bytes: PUD, PMD and PTE
tables plus the PTE table deposited under each huge PMD (include/linux/mm.h,
mm/huge_memory.c pgtable_trans_huge_deposit).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from pagewalk.cli import main
from pagewalk.errors import ConfigError
from pagewalk.explain.cost import arithmetic_cost, page_tables_total, process_cost
from pagewalk.explain.state import fresh_run, run_to_label
from pagewalk.mm.types import MmStat
from pagewalk.scenario import schema as s
from pagewalk.scenario.runner import ScenarioRun
from pagewalk.scenario.schema import load_scenario
from pagewalk.units import GiB, KiB, MiB, TiB

DATA = Path(__file__).resolve().parents[1] / "data"
SCENARIOS = sorted((DATA / "scenarios").glob("*.yaml")) + sorted((DATA / "measured").glob("*.yaml"))


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


# -- arithmetic -----------------------------------------------------------------------------

def test_flat_table_for_128_tib_of_4_kib_pages_is_256_gib() -> None:
    cost = arithmetic_cost(128 * TiB, 4 * KiB, 4, 8)
    assert cost.flat_size == 256 * GiB


def test_fully_populated_4_level_table_counts_per_level() -> None:
    cost = arithmetic_cost(128 * TiB, 4 * KiB, 4, 8)
    assert [(lv.name, lv.tables) for lv in cost.levels] == [
        ("PML4", 1), ("PDPT", 256), ("PD", 1 << 17), ("PT", 1 << 26)]
    assert cost.levels[0].entries_used == 256            # the user half of the PML4
    assert cost.hierarchical_size == 256 * GiB + 512 * MiB + 1 * MiB + 4 * KiB
    assert cost.levels_needed == 4


def test_2_mib_pages_need_three_levels_and_512_times_less() -> None:
    cost = arithmetic_cost(128 * TiB, 2 * MiB, 3, 8)
    assert cost.flat_size == 512 * MiB
    assert [(lv.name, lv.tables) for lv in cost.levels] == [("PML4", 1), ("PDPT", 256), ("PD", 1 << 17)]


def test_textbook_32_bit_two_level_table() -> None:
    """4 GiB of 4 KiB pages with 4-byte entries: a 4 MiB flat table, or one directory of
    1024 entries and 1024 tables (i386 without PAE)."""
    cost = arithmetic_cost(4 * GiB, 4 * KiB, None, 4)
    assert cost.flat_size == 4 * MiB and cost.levels_needed == 2
    assert [lv.tables for lv in cost.levels] == [1, 1024]
    assert cost.hierarchical_size == 4 * MiB + 4 * KiB


def test_more_levels_than_needed_add_single_tables_fewer_is_an_error() -> None:
    cost = arithmetic_cost(128 * TiB, 4 * KiB, 5, 8)
    assert [lv.name for lv in cost.levels] == ["PML5", "PML4", "PDPT", "PD", "PT"]
    assert cost.levels[0].tables == 1 and cost.levels[0].entries_used == 1
    with pytest.raises(ConfigError, match="needs 4"):
        arithmetic_cost(128 * TiB, 4 * KiB, 3, 8)
    with pytest.raises(ConfigError):
        arithmetic_cost(128 * TiB, 4 * KiB, None, 3)          # 4096 is not a whole number of 3s


def test_cli_arithmetic_json_and_text() -> None:
    code, out, _ = cli("pagetable-cost", "--address-space", "128TiB", "--page-size", "4KiB",
                       "--levels", "4", "--entry-size", "8", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["flat_bytes"] == 256 * GiB == 274877906944
    assert [lv["tables"] for lv in doc["levels"]] == [1, 256, 131072, 67108864]
    code, out, _ = cli("pagetable-cost", "--address-space", "128TiB")
    assert code == 0 and "256 GiB" in out and "67,108,864" in out


@pytest.mark.parametrize("args", [
    ("--address-space", "lots"),
    ("--address-space", "128TiB", "--levels", "2"),
    ("--address-space", "128TiB", "--scenario", "thp-madvise-64m"),
    ("--scenario", "thp-madvise-64m", "--at", "nope"),
])
def test_cli_bad_input_is_one_line_exit_2(args: tuple[str, ...]) -> None:
    code, out, err = cli("pagetable-cost", *args)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1


# -- a process's tables ------------------------------------------------------------------------

def test_start_image_tables_are_its_28_kb_of_vmpte() -> None:
    run = fresh_run()
    cost = process_cost(run.kernel, run.kernel.tasks["main"])
    assert cost.tables == {"pgd": 1, "pud": 2, "pmd": 2, "pte": 3, "deposited": 0}
    assert cost.vmpte_counted == cost.vmpte_kernel == 28 * KiB


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.stem)
def test_tables_walked_equal_vmpte_at_every_measure(path: Path) -> None:
    """For every process at every measure of every kernel-checked scenario, and at its end;
    and all the processes' tables, PGDs included, are /proc/meminfo's PageTables
    (NR_PAGETABLE)."""
    scenario = load_scenario(path)
    run = ScenarioRun(scenario)
    checked = 0
    for index, step in enumerate(scenario.steps):
        run.run_step(step)
        if not isinstance(step, s.MeasureStep) and index < len(scenario.steps) - 1:
            continue
        label = step.label if isinstance(step, s.MeasureStep) else "the end"
        for task in run.kernel.tasks.values():
            cost = process_cost(run.kernel, task)
            assert cost.vmpte_counted == int(task.mm.stat[MmStat.PGTABLES_BYTES]), (
                f"{task.comm} at {label}: walked {cost.tables}")
            checked += 1
        counted, page_tables = page_tables_total(run.kernel)
        assert counted == page_tables, f"at {label}"
    assert checked or not run.kernel.tasks      # an OOM kill may end every process


def test_thp_deposits_count_in_vmpte_and_2m_pages_price_the_same_footprint() -> None:
    run = run_to_label(load_scenario(DATA / "scenarios" / "thp-madvise-64m.yaml"), None)
    cost = process_cost(run.kernel, run.kernel.tasks["main"])
    assert cost.leaves[21] == 32 and cost.tables["deposited"] == 32
    assert cost.agrees
    by_size = {a.page_size: a for a in cost.alternatives}
    assert by_size[4 * KiB].pages == cost.leaves[12] + 32 * 512
    assert by_size[2 * MiB].vmpte_thp == by_size[2 * MiB].vmpte + by_size[2 * MiB].pages * 4 * KiB


def test_sparse_writes_cost_one_pte_table_per_2_mib_and_nothing_with_huge_pages() -> None:
    """One write per 2 MiB over 1 GiB in an empty 512 GiB slot: 512 PTE tables, one PMD
    table, one PUD table (2 MiB of tables for 2 MiB of data); with 2 MiB pages the PTE
    tables go, with a 1 GiB page the PMD table too."""
    run = run_to_label(load_scenario(DATA / "scenarios" / "sparse-pte-cost.yaml"), "after-touch")
    base = process_cost(fresh_run().kernel, fresh_run().kernel.tasks["main"])
    cost = process_cost(run.kernel, run.kernel.tasks["main"])
    assert cost.tables["pte"] - base.tables["pte"] == 512
    assert cost.tables["pmd"] - base.tables["pmd"] == 1
    assert cost.tables["pud"] - base.tables["pud"] == 1
    by_size = {a.page_size: a for a in cost.alternatives}
    sparse_2m = by_size[2 * MiB]
    assert sparse_2m.tables["pte"] == 0
    assert sparse_2m.tables["pmd"] == base.alternatives[1].tables["pmd"] + 1
    assert by_size[1 * GiB].tables["pmd"] == 0


def test_cli_scenario_mode_reports_agreement_per_process() -> None:
    code, out, _ = cli("pagetable-cost", "--scenario", "fork-cow-write", "--at", "after-fork",
                       "--json")
    assert code == 0
    doc = json.loads(out)
    assert [p["process"] for p in doc["processes"]] == ["main", "child"]
    assert all(p["agrees_with_VmPTE"] for p in doc["processes"])
    assert doc["system"]["agrees_with_PageTables"]
    code, out, _ = cli("pagetable-cost", "--scenario", "fork-cow-write", "--process", "main")
    assert code == 0 and "agrees" in out and "PT (pte)" in out
