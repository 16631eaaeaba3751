"""``pagewalk translate`` and ``pagewalk pagetable-cost`` (loaded lazily by pagewalk.cli)."""

from __future__ import annotations

import json

import click
from rich import box
from rich.console import Console
from rich.table import Table

from pagewalk.cli_common import reports_errors
from pagewalk.errors import ConfigError
from pagewalk.explain import cost as c
from pagewalk.explain import translate as t
from pagewalk.explain.state import find_process, load_state
from pagewalk.units import format_size, parse_size

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
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@reports_errors
def translate_command(addr: str, scenario_file: str | None, process: str, label: str | None,
                      access: str, as_json: bool) -> None:
    """Walk the page tables for ADDR as the MMU does: CR3, the index and entry at each level,
    the physical address or the page fault, and what the TLBs and page-walk caches hold.

    ADDR is hex (0x4d9000), decimal, or NAME[+OFFSET] for a mapping of the scenario
    (heap+0x1000) or a VMA such as [heap]. Without --scenario the address is translated in
    a fresh machine's `main` process. Nothing in the simulated state changes.
    """
    run = load_state(scenario_file, label)
    task = find_process(run, process)
    try:
        vaddr = t.resolve_address(addr, task, run.maps.get(task.comm, {}))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if vaddr >= 1 << 64:
        raise ConfigError(f"bad address {addr!r}: wider than 64 bits")
    explanation = t.explain_translation(run.kernel, task, vaddr, access)
    if as_json:
        doc = explanation.to_json()
        doc["scenario"] = run.scenario.name
        doc["at"] = label
        click.echo(json.dumps(doc, indent=2))
        return
    print_translation(explanation, run.scenario.name, label)


def print_translation(e: t.Explanation, scenario: str, label: str | None) -> None:
    console = Console(highlight=False)
    where = f"{scenario}" + (f" at {label}" if label else "")
    console.print(f"[bold]translate[/] {e.vaddr:#x} ({e.access}, user mode) in "
                  f"[bold]{e.process}[/] (pid {e.pid}), {where}, {e.levels}-level paging")
    if not e.canonical:
        console.print(f"[bold red]#GP[/]: {e.vaddr:#x} is not canonical. {e.kernel}")
        return
    pti = ", PTI user PGD" if e.pti else ""
    console.print(f"CR3 {e.cr3:#x}: PGD at {e.cr3 & ~0xFFF:#x}{pti}, PCID {e.pcid}")
    table = Table(title="the walk (SDM vol. 3A §4.5)", box=box.SIMPLE_HEAD)
    for name in ("level", "index", "bits", "entry at", "entry"):
        table.add_column(name, no_wrap=True)
    table.add_column("flags")
    table.add_column("then")
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
        table.add_row(r.name, str(r.index), f"[{shift + 8}:{shift}]", f"{r.entry_paddr:#x}",
                      f"{r.entry:#018x}", " ".join(r.flags), then)
    console.print(table)
    if e.pkey is not None and e.pkru:
        rights = e.pkru >> (2 * e.pkey) & 3
        what = "access disabled" if rights & 1 else ("write disabled" if rights & 2 else "allowed")
        console.print(f"protection key {e.pkey}: PKRU {e.pkru:#010x} has it {what} "
                      "(data accesses only; SDM §4.6.2)")
    if e.outcome == "translation":
        console.print(f"[bold green]physical address {e.paddr:#x}[/] "
                      f"({t.PAGE_SIZE_NAMES[e.page_shift]} page, offset "
                      f"{e.vaddr & ((1 << e.page_shift) - 1):#x}); "
                      f"{e.refs} entries read from CR3")
        if e.page:
            console.print(f"the page: {e.page}")
    else:
        assert e.error_code is not None
        console.print(f"[bold red]#PF[/], error code {e.error_code:#x} = "
                      f"{' | '.join(t.error_code_names(e.error_code))}; {e.refs} entries read")
        console.print(f"kernel: {e.kernel}")
    _print_caches(console, e)


def _print_caches(console: Console, e: t.Explanation) -> None:
    if e.tlb:
        tlb = Table("TLB array", "lookup", "result", title="TLB lookups (no LRU change)")
        for probe in e.tlb:
            result = f"hit: {probe.payload:#018x}" if probe.hit else "miss"
            tlb.add_row(probe.structure, probe.key, result)
        console.print(tlb)
    if e.tlb_note:
        console.print(f"TLB: {e.tlb_note}")
    if e.pwc:
        pwc = Table("cache", "lookup", "result", title="page-walk caches")
        for probe in e.pwc:
            pwc.add_row(probe.structure, probe.key,
                        f"hit: table pfn {probe.payload:#x}" if probe.hit else "miss")
        console.print(pwc)
    if e.mmu_source in ("l1", "stlb"):
        console.print(f"MMU: answered from the {e.mmu_source.upper()} TLB, no walk")
    else:
        console.print(f"MMU: TLB miss, the walk reads {e.mmu_refs} "
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
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@reports_errors
def pagetable_cost_command(address_space: str | None, page_size: str, levels: int | None,
                           entry_size: str, table_size: str, scenario_file: str | None,
                           label: str | None, process: str | None, as_json: bool) -> None:
    """Page-table memory: for an address space (flat vs hierarchical), or for the processes
    of a scenario at a measure (tables per level, VmPTE, the same footprint with 2 MiB and
    1 GiB pages). With neither --address-space nor --scenario: a fresh machine's `main`."""
    if address_space is not None:
        if scenario_file is not None:
            raise ConfigError("give --address-space (arithmetic) or --scenario, not both")
        result = c.arithmetic_cost(
            _size_option(address_space, "address-space") or 0,
            _size_option(page_size, "page-size") or 0, levels,
            _size_option(entry_size, "entry-size") or 0,
            _size_option(table_size, "table-size") or 0)
        if as_json:
            click.echo(json.dumps(result.to_json(), indent=2))
        else:
            print_arithmetic(result)
        return
    run = load_state(scenario_file, label)
    tasks = [find_process(run, process)] if process else list(run.kernel.tasks.values())
    costs = [c.process_cost(run.kernel, task) for task in tasks]
    counted, page_tables = c.page_tables_total(run.kernel)
    if as_json:
        click.echo(json.dumps({
            "scenario": run.scenario.name, "at": label,
            "processes": [pc.to_json() for pc in costs],
            "system": {"tables_of_all_processes_bytes": counted, "PageTables_bytes": page_tables,
                       "agrees_with_PageTables": counted == page_tables}}, indent=2))
        return
    console = Console(highlight=False)
    console.print(f"[bold]page tables[/] of {run.scenario.name}"
                  + (f" at {label}" if label else ""))
    for pc in costs:
        print_process_cost(console, pc)
    status = "[green]agrees[/]" if counted == page_tables else "[bold red]DIFFERS[/]"
    console.print(f"every process's tables, PGDs included: {counted >> 10} kB; "
                  f"/proc/meminfo PageTables {page_tables >> 10} kB: {status}")


def _bytes(size: int) -> str:
    for unit, name in ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if size >= unit:
            text = f"{size / unit:.3f}".rstrip("0").rstrip(".")
            return f"{text} {name}"
    return f"{size} B"


def print_arithmetic(r: c.ArithmeticCost) -> None:
    console = Console(highlight=False)
    console.print(f"[bold]{format_size(r.address_space)}[/] of address space in "
                  f"{format_size(r.page_size)} pages, {r.entry_size}-byte entries, "
                  f"{format_size(r.table_size)} tables ({r.entries_per_table} entries each)")
    console.print(f"flat (one level): {r.address_space // r.page_size:,} entries x "
                  f"{r.entry_size} B = [bold]{_bytes(r.flat_size)}[/] ({r.flat_size:,} bytes)")
    table = Table("level", "tables", "entries used", "bytes",
                  title=f"hierarchical, fully populated ({len(r.levels)} levels; "
                        f"{r.levels_needed} needed)")
    for lv in r.levels:
        table.add_row(lv.name, f"{lv.tables:,}", f"{lv.entries_used:,}", _bytes(lv.size))
    table.add_row("total", f"{sum(lv.tables for lv in r.levels):,}", "",
                  f"{_bytes(r.hierarchical_size)} ({r.hierarchical_size:,} bytes)")
    console.print(table)
    console.print(f"a single touched page needs one table per level: "
                  f"{_bytes(len(r.levels) * r.table_size)}")


def print_process_cost(console: Console, pc: c.ProcessCost) -> None:
    table = Table("level", "tables", "bytes", "in VmPTE",
                  title=f"{pc.process} (pid {pc.pid}): tables reachable from the PGD")
    for name, count in pc.tables.items():
        label = "deposited PTE (under huge PMDs)" if name == "deposited" else \
            c.level_label(pc.levels, name)
        counted = "no" if name in ("pgd", "p4d") else "yes"
        table.add_row(label, str(count), _bytes(count * c.TABLE_BYTES), counted)
    console.print(table)
    status = "[green]agrees[/]" if pc.agrees else "[bold red]DIFFERS[/]"
    console.print(f"counted {pc.vmpte_counted >> 10} kB; kernel's VmPTE "
                  f"{pc.vmpte_kernel >> 10} kB: {status}")
    leaves = ", ".join(f"{count:,} x {t.PAGE_SIZE_NAMES[shift]}"
                       for shift, count in pc.leaves.items() if count) or "nothing"
    console.print(f"present footprint: {leaves} = {_bytes(pc.footprint)}")
    alt = Table("pages of", "pages", "maps", "PUD", "PMD", "PTE", "VmPTE", "VmPTE as THP",
                title="the same footprint with one page size")
    for a in pc.alternatives:
        alt.add_row(format_size(a.page_size), f"{a.pages:,}", _bytes(a.mapped),
                    str(a.tables["pud"]), str(a.tables["pmd"]), str(a.tables["pte"]),
                    f"{a.vmpte >> 10} kB",
                    f"{a.vmpte_thp >> 10} kB" if a.vmpte_thp is not None else "")
    console.print(alt)
