"""``pagewalk translate`` and ``pagewalk pagetable-cost`` (loaded lazily by pagewalk.cli)."""

from __future__ import annotations

import click

from pagewalk.cli_common import escape, reports_errors
from pagewalk.cli_output import (
    Column,
    Output,
    choose_format,
    fields_table,
    format_option,
    grouped,
    write_json,
    write_tables_csv,
)
from pagewalk.cli_output import Table as OutputTable
from pagewalk.errors import ConfigError
from pagewalk.explain import cost as c
from pagewalk.explain import translate as t
from pagewalk.explain.state import find_process, load_state
from pagewalk.units import parse_size

STATE_HELP = "Run this scenario (a YAML file or a built-in example name) first."
AT_HELP = "Stop the scenario after its measure LABEL (default: run it to the end)."


# -- translate ---------------------------------------------------------------------------------

@click.command("translate")
@click.argument("addr")
@click.option("--scenario", "scenario_file", metavar="FILE", help=STATE_HELP)
@click.option("--process", "process", default="main", show_default=True,
              help="The process whose address space is used (name or pid).")
@click.option("--at", "label", metavar="LABEL", help=AT_HELP)
@click.option("--access", type=click.Choice(sorted(t.ACCESS_NAMES)), default="read",
              show_default=True, help="The kind of user-mode access.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object (the same as --format json).")
@format_option
@reports_errors
def translate_command(addr: str, scenario_file: str | None, process: str, label: str | None,
                      access: str, as_json: bool, output_format: str | None) -> None:
    """Walk the page tables for ADDR as the MMU does: CR3, the index and entry at each level,
    the physical address or the page fault, and what the TLBs and page-walk caches hold.

    ADDR is hex (0x4d9000), decimal, or NAME[+OFFSET] for a mapping of the scenario
    (heap+0x1000) or a VMA such as [heap]. Without --scenario the address is translated in
    a fresh machine's `main` process. Nothing in the simulated state changes.
    """
    fmt = choose_format(output_format, as_json)
    run = load_state(scenario_file, label)
    task = find_process(run, process)
    try:
        vaddr = t.resolve_address(addr, task, run.maps.get(task.comm, {}))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if vaddr >= 1 << 64:
        raise ConfigError(f"bad address {addr!r}: wider than 64 bits")
    explanation = t.explain_translation(run.kernel, task, vaddr, access)
    if fmt == "json":
        doc = explanation.to_json()
        doc["scenario"] = run.scenario.name
        doc["at"] = label
        write_json(doc)
    elif fmt == "csv":
        write_tables_csv(translation_tables(explanation))
    else:
        print_translation(explanation, run.scenario.name, label, Output(fmt))


def translation_tables(e: t.Explanation) -> list[OutputTable]:
    """The outcome, the walk and the cache lookups as tables (the csv of translate)."""
    found = e.outcome == "translation"
    summary = fields_table("translation", (
        ("vaddr", f"{e.vaddr:#x}"), ("access", e.access), ("process", e.process),
        ("pid", e.pid), ("paging_levels", e.levels), ("cr3", f"{e.cr3:#x}"), ("pcid", e.pcid),
        ("outcome", e.outcome), ("paddr", f"{e.paddr:#x}" if found else None),
        ("page_size", 1 << e.page_shift if found else None), ("error_code", e.error_code),
        ("refs", e.refs), ("mmu_source", e.mmu_source), ("mmu_walk_refs", e.mmu_refs),
        ("kernel", e.kernel)))
    return [summary, walk_table(e), *cache_tables(e)]


def walk_table(e: t.Explanation) -> OutputTable:
    table = OutputTable("walk", (Column("level"), Column("index", True), Column("bits"),
                                 Column("entry at", True), Column("entry", True),
                                 Column("flags"), Column("then")),
                        title="the walk (SDM vol. 3A §4.5)")
    for r in e.reads:
        shift = 12 + 9 * (e.levels - 1 - r.level)
        if r.role == "leaf":
            then = f"{t.PAGE_SIZE_NAMES[shift]} page at {r.target_paddr:#x}"
        else:
            then = f"table at {r.target_paddr:#x}" if r.role == "table" else "not present: #PF"
        if r.sets:
            then += f" (walk sets {'/'.join(r.sets)})"
        if r.cached:
            then += " [PWC: not read]"
        table.add_row(r.name, r.index, f"[{shift + 8}:{shift}]", f"{r.entry_paddr:#x}",
                      f"{r.entry:#018x}", " ".join(r.flags), then)
    return table


def cache_tables(e: t.Explanation) -> list[OutputTable]:
    """The TLB and page-walk-cache lookups (no LRU change)."""
    tlb = OutputTable("tlb", (Column("TLB array"), Column("lookup"), Column("result")),
                      title="TLB lookups (no LRU change)")
    for probe in e.tlb:
        tlb.add_row(probe.structure, probe.key,
                    f"hit: {probe.payload:#018x}" if probe.hit else "miss")
    pwc = OutputTable("pwc", (Column("cache"), Column("lookup"), Column("result")),
                      title="page-walk caches")
    for probe in e.pwc:
        pwc.add_row(probe.structure, probe.key,
                    f"hit: table pfn {probe.payload:#x}" if probe.hit else "miss")
    return [table for table in (tlb, pwc) if table.rows]


def print_translation(e: t.Explanation, scenario: str, label: str | None,
                      out: Output) -> None:
    where = escape(scenario + (f" at {label}" if label else ""))
    out.line(f"[bold]translate[/] {e.vaddr:#x} ({e.access}, user mode) in "
             f"[bold]{escape(e.process)}[/] (pid {e.pid}), {where}, {e.levels}-level paging")
    if not e.canonical:
        out.line(f"[bold red]#GP[/]: {e.vaddr:#x} is not canonical. {escape(e.kernel)}")
        return
    pti = ", PTI user PGD" if e.pti else ""
    out.line(f"CR3 {e.cr3:#x}: PGD at {e.cr3 & ~0xFFF:#x}{pti}, PCID {e.pcid}")
    out.table(walk_table(e))
    if e.pkey is not None and e.pkru:
        rights = e.pkru >> (2 * e.pkey) & 3
        what = "access disabled" if rights & 1 else ("write disabled" if rights & 2 else "allowed")
        out.line(f"protection key {e.pkey}: PKRU {e.pkru:#010x} has it {what} "
                 "(data accesses only; SDM §4.6.2)")
    if e.outcome == "translation":
        out.line(f"[bold green]physical address {e.paddr:#x}[/] "
                 f"({t.PAGE_SIZE_NAMES[e.page_shift]} page, offset "
                 f"{e.vaddr & ((1 << e.page_shift) - 1):#x}); "
                 f"{e.refs} entries read from CR3")
        if e.page:
            out.line(f"the page: {escape(e.page)}")
    else:
        assert e.error_code is not None
        out.line(f"[bold red]#PF[/], error code {e.error_code:#x} = "
                 f"{' | '.join(t.error_code_names(e.error_code))}; {e.refs} entries read")
        out.line(f"kernel: {escape(e.kernel)}")
    for table in cache_tables(e):
        out.table(table)
        if table.name == "tlb" and e.tlb_note:
            out.line(f"TLB: {escape(e.tlb_note)}")
    if e.tlb_note and not e.tlb:
        out.line(f"TLB: {escape(e.tlb_note)}")
    if e.mmu_source in ("l1", "stlb"):
        out.line(f"MMU: answered from the {e.mmu_source.upper()} TLB, no walk")
    else:
        out.line(f"MMU: TLB miss, the walk reads {e.mmu_refs} "
                 f"entr{'y' if e.mmu_refs == 1 else 'ies'}")


# -- pagetable-cost ---------------------------------------------------------------------------

def _size_option(value: str | None, what: str) -> int | None:
    if value is None:
        return None
    try:
        return parse_size(value)
    except ValueError as err:
        raise ConfigError(f"--{what}: {err}") from None


@click.command("pagetable-cost")
@click.option("--address-space", metavar="SIZE", help="Size of the virtual address space "
              "(arithmetic mode), e.g. 128TiB.")
@click.option("--page-size", metavar="SIZE", default="4KiB", show_default=True)
@click.option("--levels", type=click.IntRange(1, 64), help="Levels of the hierarchical table "
              "(default: as many as needed).")
@click.option("--entry-size", metavar="SIZE", default="8", show_default=True)
@click.option("--table-size", metavar="SIZE", default="4KiB", show_default=True,
              help="Bytes of one table (x86: always 4 KiB; a textbook uses the page size).")
@click.option("--scenario", "scenario_file", metavar="FILE", help=STATE_HELP)
@click.option("--at", "label", metavar="LABEL", help=AT_HELP)
@click.option("--process", "process", help="Only this process (default: every live one).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object (the same as --format json).")
@format_option
@reports_errors
def pagetable_cost_command(address_space: str | None, page_size: str, levels: int | None,
                           entry_size: str, table_size: str, scenario_file: str | None,
                           label: str | None, process: str | None, as_json: bool,
                           output_format: str | None) -> None:
    """Page-table memory: for an address space (flat vs hierarchical), or for the processes
    of a scenario at a measure (tables per level, VmPTE, the same footprint with 2 MiB and
    1 GiB pages). With neither --address-space nor --scenario: a fresh machine's `main`.
    Sizes take KiB, MiB, GiB, TiB or PiB; they show in the same units."""
    fmt = choose_format(output_format, as_json)
    if address_space is not None:
        if scenario_file is not None:
            raise ConfigError("give --address-space (arithmetic) or --scenario, not both")
        result = c.arithmetic_cost(
            _size_option(address_space, "address-space") or 0,
            _size_option(page_size, "page-size") or 0, levels,
            _size_option(entry_size, "entry-size") or 0,
            _size_option(table_size, "table-size") or 0)
        if fmt == "json":
            write_json(result.to_json())
        elif fmt == "csv":
            write_tables_csv(arithmetic_tables(result))
        else:
            print_arithmetic(result, Output(fmt))
        return
    run = load_state(scenario_file, label)
    tasks = [find_process(run, process)] if process else list(run.kernel.tasks.values())
    costs = [c.process_cost(run.kernel, task) for task in tasks]
    counted, page_tables = c.page_tables_total(run.kernel)
    if fmt == "json":
        write_json({
            "scenario": run.scenario.name, "at": label,
            "processes": [pc.to_json() for pc in costs],
            "system": {"tables_of_all_processes_bytes": counted, "PageTables_bytes": page_tables,
                       "agrees_with_PageTables": counted == page_tables}})
        return
    system = fields_table("system", (
        ("scenario", run.scenario.name), ("at", label),
        ("tables_of_all_processes_bytes", counted), ("PageTables_bytes", page_tables),
        ("agrees_with_PageTables", counted == page_tables)))
    if fmt == "csv":
        write_tables_csv([table for pc in costs for table in process_tables(pc)] + [system])
        return
    out = Output(fmt)
    out.line(f"[bold]page tables[/] of {escape(run.scenario.name)}"
             + (f" at {escape(label)}" if label else ""))
    for pc in costs:
        print_process_cost(out, pc)
    status = "[green]agrees[/]" if counted == page_tables else "[bold red]DIFFERS[/]"
    out.line(f"every process's tables, PGDs included: {_bytes(counted)}; "
             f"/proc/meminfo PageTables {_bytes(page_tables)}: {status}")


IEC_UNITS = ((1 << 50, "PiB"), (1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"),
             (1 << 10, "KiB"))


def _bytes(size: int) -> str:
    """``size`` in the largest IEC unit it reaches, to three decimals (256 GiB, 1.5 KiB)."""
    for unit, name in IEC_UNITS:
        if size >= unit:
            text = f"{size / unit:.3f}".rstrip("0").rstrip(".")
            return f"{text} {name}"
    return f"{size} B"


def arithmetic_tables(r: c.ArithmeticCost) -> list[OutputTable]:
    """The address space, the flat table and the levels (the csv of the arithmetic mode)."""
    summary = fields_table("arithmetic", (
        ("address_space", r.address_space), ("page_size", r.page_size),
        ("entry_size", r.entry_size), ("table_size", r.table_size),
        ("entries_per_table", r.entries_per_table), ("levels_needed", r.levels_needed),
        ("flat_entries", r.address_space // r.page_size), ("flat_bytes", r.flat_size),
        ("hierarchical_bytes", r.hierarchical_size)))
    return [summary, levels_table(r)]


def levels_table(r: c.ArithmeticCost) -> OutputTable:
    table = OutputTable("levels", (Column("level"), Column("tables", True, grouped),
                                   Column("entries used", True, grouped),
                                   Column("bytes", True, _bytes)),
                        title=f"hierarchical, fully populated ({len(r.levels)} levels; "
                              f"{r.levels_needed} needed)")
    for lv in r.levels:
        table.add_row(lv.name, lv.tables, lv.entries_used, lv.size)
    table.add_row("total", sum(lv.tables for lv in r.levels), None, r.hierarchical_size)
    return table


def print_arithmetic(r: c.ArithmeticCost, out: Output) -> None:
    out.line(f"[bold]{_bytes(r.address_space)}[/] of address space in "
             f"{_bytes(r.page_size)} pages, {r.entry_size}-byte entries, "
             f"{_bytes(r.table_size)} tables ({r.entries_per_table:,} entries each)")
    out.line(f"flat (one level): {r.address_space // r.page_size:,} entries x "
             f"{r.entry_size} B = [bold]{_bytes(r.flat_size)}[/] ({r.flat_size:,} bytes)")
    out.table(levels_table(r))
    out.line(f"hierarchical total: {_bytes(r.hierarchical_size)} "
             f"({r.hierarchical_size:,} bytes)")
    out.line(f"a single touched page needs one table per level: "
             f"{_bytes(len(r.levels) * r.table_size)}")


def process_tables(pc: c.ProcessCost) -> list[OutputTable]:
    """A process's tables per level and its footprint with one page size."""
    tables = OutputTable(f"{pc.process} tables", (
        Column("level"), Column("tables", True, grouped), Column("bytes", True, _bytes),
        Column("in VmPTE")), title=f"{pc.process} (pid {pc.pid}): tables reachable from the PGD")
    for name, count in pc.tables.items():
        label = "deposited PTE (under huge PMDs)" if name == "deposited" else \
            c.level_label(pc.levels, name)
        tables.add_row(label, count, count * c.TABLE_BYTES,
                       "no" if name in ("pgd", "p4d") else "yes")
    alt = OutputTable(f"{pc.process} alternatives", (
        Column("pages of", True, _bytes), Column("pages", True, grouped),
        Column("maps", True, _bytes), Column("PUD", True, grouped),
        Column("PMD", True, grouped), Column("PTE", True, grouped),
        Column("VmPTE", True, _bytes), Column("VmPTE as THP", True, _bytes)),
        title="the same footprint with one page size")
    for a in pc.alternatives:
        alt.add_row(a.page_size, a.pages, a.mapped, a.tables["pud"], a.tables["pmd"],
                    a.tables["pte"], a.vmpte, a.vmpte_thp)
    return [tables, alt]


def print_process_cost(out: Output, pc: c.ProcessCost) -> None:
    tables, alternatives = process_tables(pc)
    out.table(tables)
    status = "[green]agrees[/]" if pc.agrees else "[bold red]DIFFERS[/]"
    out.line(f"counted {_bytes(pc.vmpte_counted)}; kernel's VmPTE "
             f"{_bytes(pc.vmpte_kernel)}: {status}")
    leaves = ", ".join(f"{count:,} x {t.PAGE_SIZE_NAMES[shift]}"
                       for shift, count in pc.leaves.items() if count) or "nothing"
    out.line(f"present footprint: {leaves} = {_bytes(pc.footprint)}")
    out.table(alternatives)
