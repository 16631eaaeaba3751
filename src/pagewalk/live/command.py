"""``pagewalk verify`` and ``pagewalk inspect`` (loaded lazily by pagewalk.cli).

Exit status of both: 0 done (verify: every figure agrees), 1 verify found differences
or a side failed the scenario, 2 bad input, 3 this machine cannot do it (no root for a
knob, a simulator-only step, a hugetlb pool the kernel would not fill, no gcc ...).
Notes (knobs not written, the probe's layout ...) go to standard error; with
``--json`` standard output holds one JSON object and nothing else.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click

from pagewalk.cli_common import (
    EXIT_RUN_FAILED,
    escape,
    fail,
    note,
    output_file,
    reports_errors,
    resolve_scenario,
)
from pagewalk.cli_output import (
    Cell,
    Column,
    Output,
    choose_format,
    fields_table,
    format_option,
    grouped,
    hexadecimal,
    write_json,
    write_tables_csv,
)
from pagewalk.cli_output import Table as OutputTable
from pagewalk.errors import KernelError, NotImplementedStep, OutputError, PagewalkError
from pagewalk.live.compare import (
    AGREE,
    DIFFER,
    NOISE,
    Comparison,
    compare_reports,
    describe_failure,
    failure_json,
)
from pagewalk.live.errors import EXIT_UNAVAILABLE, LiveError
from pagewalk.units import format_size

if TYPE_CHECKING:
    from pagewalk.live.compare import FieldCheck
    from pagewalk.live.inspect import ProcessInspection
    from pagewalk.live.verify import LiveResult
    from pagewalk.scenario.schema import Scenario


# -- verify ------------------------------------------------------------------------------------

@click.command("verify")
@click.argument("scenario")
@click.option("--repeat", type=click.IntRange(1, 1000), default=1, show_default=True,
              help="Run it N times on the kernel: each figure takes its most common value "
                   "(system-wide event counters: the minimum; under memory pressure sizes, "
                   "faults, pswpin and pswpout the median); the noise of every run is shown.")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object: the kernel's report, the simulator's, the "
                   "differences and the noise.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), metavar="FILE",
              help="Also write the kernel's report (the schema of `pagewalk run --json`).")
@reports_errors
def verify_command(scenario: str, repeat: int, as_json: bool, output: str | None) -> None:
    """Run SCENARIO on this machine's live kernel and compare it with the simulator.

    The scenario (a YAML file or a built-in example name) runs in probe processes
    started as the spec's static program with ASLR off; figures are read from /proc from
    outside them. Root is needed for knobs and hugetlb pools (every knob changed is
    restored, also on failure or interruption); without root, scenarios that set no
    knob run when this machine's knobs are the simulator's defaults. The comparison
    follows the kernel oracle: exact figures, pgfault within 2 (or within the noise the
    run measured), mapping lengths, alignment classes and adjacency.

    Memory pressure (system.swap, system.memory_limit; root): each run turns on a swap
    file and makes a cgroup v1 memory cgroup, and removes both at its end (a killed
    run's go at the next start); a process the OOM killer takes ends its step with
    SIGKILL. The kernel varies under reclaim, so sizes agree within max(64 kB, 3%) and
    counts within max(16, 3%); with --repeat they take the median, as the stored kernel
    reports do (5 runs).
    """
    from pagewalk.live.verify import run_live
    from pagewalk.scenario.runner import run_scenario
    from pagewalk.scenario.schema import load_scenario
    scen = load_scenario(resolve_scenario(scenario))
    if output:
        output_file(output)          # refused before the kernel runs anything
    try:
        live = run_live(scen, repeat, notify=note)
    except LiveError as err:
        fail(escape(str(err)), EXIT_UNAVAILABLE)
        return
    except KernelError as err:
        _verify_failure(scen, err, as_json)
        return
    if output:
        try:
            with open(output, "w") as file:
                file.write(json.dumps(live.report, indent=2) + "\n")
        except OSError as err:
            raise OutputError.writing(output, err) from None
    try:
        simulated = run_scenario(scen).to_json()
    except (KernelError, NotImplementedStep) as err:
        fail(escape(f"the simulator failed the scenario: {err}; the live kernel ran it"),
             EXIT_RUN_FAILED)
        return
    comparison = compare_reports(live.report, simulated, live.pgfault_bounds(),
                                 live.background())
    if as_json:
        click.echo(json.dumps(_verify_json(live, simulated, comparison), indent=2))
    else:
        print_verify(live, simulated, comparison)
    sys.exit(0 if comparison.agrees else EXIT_RUN_FAILED)


def _simulate(scen: Scenario) -> tuple[dict[str, Any], str]:
    """The simulator's report (only the scenario and its ``failure`` if it failed the
    scenario) and what it did, in words."""
    from pagewalk.scenario.runner import run_scenario
    try:
        return run_scenario(scen).to_json(), "ran it without error"
    except KernelError as err:
        return {"scenario": scen.name, "failure": failure_json(err)}, str(err)
    except PagewalkError as err:
        step = err.location.step if err.location is not None else None
        return {"scenario": scen.name, "failure": {"step": step, "refused": str(err)}}, str(err)


def _verify_failure(scen: Scenario, err: KernelError, as_json: bool) -> None:
    """The live kernel failed the scenario: agreement (exit status 0) if the simulator
    fails it identically (same step, same errno, or same signal at the same address),
    else one red line (exit status 1)."""
    from pagewalk.live.procfs import kernel_release
    failure = failure_json(err)
    kernel = {"scenario": scen.name, "failure": failure}
    simulated, outcome = _simulate(scen)
    comparison = compare_reports(kernel, simulated)
    if not comparison.agrees:
        fail(escape(f"the live kernel failed the scenario: {err}; the simulator: {outcome}"),
             EXIT_RUN_FAILED)
    if as_json:
        write_json({"scenario": scen.name, "kernel_release": kernel_release(), "runs": 1,
                    "kernel": kernel, "simulator": simulated, "agree": True,
                    "counts": {"agree": comparison.count(AGREE), "differ": 0, "noise": 0},
                    "differences": []})
    else:
        out = Output(choose_format(None))
        out.line(f"[bold]scenario[/] {escape(scen.name)} on Linux {kernel_release()}: the "
                 f"kernel and the simulator fail it identically, "
                 f"{escape(describe_failure(failure))}")
        out.line(f"[bold green]{comparison.summary()}[/]")
    sys.exit(0)


def _verify_json(live: LiveResult, simulated: dict[str, Any], comparison: Comparison) -> dict[str, Any]:
    from pagewalk.live.procfs import kernel_release
    return {
        "scenario": live.scenario, "kernel_release": kernel_release(), "runs": len(live.runs),
        "kernel": live.report, "simulator": simulated,
        "agree": comparison.agrees,
        "counts": {"agree": comparison.count(AGREE), "differ": comparison.count(DIFFER),
                   "noise": comparison.count(NOISE)},
        "differences": [c.to_json() for c in comparison.checks if c.verdict != AGREE],
        "noise": live.noise_json(), "varied": live.varied_json(), "notes": live.notes,
    }


def _cell(check: FieldCheck) -> Cell:
    if check.verdict == AGREE:
        return Cell(check.kernel, str(check.kernel))
    style = "red" if check.verdict == DIFFER else "yellow"
    return Cell(check.kernel, f"{check.kernel} ≠ sim {check.simulator}", style)


def print_verify(live: LiveResult, simulated: dict[str, Any], comparison: Comparison) -> None:
    from pagewalk.live.procfs import kernel_release
    out = Output(choose_format(None))
    runs = len(live.runs)
    out.line(f"[bold]scenario[/] {escape(live.scenario)} on Linux {kernel_release()} "
             f"({runs} run{'s' if runs > 1 else ''}); cells: kernel value, "
             "[red]kernel ≠ simulator[/]")
    checks = {(c.label, c.process, c.field): c for c in comparison.checks}
    for m in live.report["measurements"]:
        out.heading(f"measure [bold]{escape(m['label'])}[/] (step {m['step']})")
        procs = list(m["processes"])
        if procs:
            table = OutputTable("processes", (Column("figure"),
                                              *(Column(p, True) for p in procs)),
                                title="processes (changes since scenario start)")
            for name in m["processes"][procs[0]]:
                table.add_row(name, *(_cell(checks[(m["label"], p, name)]) for p in procs))
            out.table(table)
        system = OutputTable("system", (Column("figure"), Column("system", True)))
        for name in m["system"]:
            system.add_row(name, _cell(checks[(m["label"], "system", name)]))
        out.table(system)
    _print_mappings(out, live.report, simulated, checks)
    _print_noise(out, live)
    for check in comparison.checks:
        if check.verdict != AGREE:
            style = "red" if check.verdict == DIFFER else "yellow"
            out.line(f"[{style}]{check.verdict}[/] {escape(check.line())}")
    style = "green" if comparison.agrees else "red"
    out.line(f"[bold {style}]{comparison.summary()}[/]")


def _print_mappings(out: Output, kernel: dict[str, Any], simulated: dict[str, Any],
                    checks: dict[tuple[str, str, str], FieldCheck]) -> None:
    table = OutputTable("mappings", (Column("process"), Column("mapping"),
                                     Column("kernel start", True),
                                     Column("simulator start", True),
                                     Column("length", True, grouped)),
                        title="mappings (compared: length, alignment class, adjacency)")
    for proc, maps in kernel["mappings"].items():
        for name, mapping in maps.items():
            theirs = simulated.get("mappings", {}).get(proc, {}).get(name, {})
            ok = all(c.verdict == AGREE for key, c in checks.items()
                     if key[0] == "mappings" and key[1] == proc
                     and key[2].startswith(f"mapping:{name}"))
            start = theirs.get("start", "missing")
            table.add_row(proc, name, mapping["start"], Cell(start, start, "" if ok else "red"),
                          mapping["length"])
    out.table(table)


def _print_noise(out: Output, live: LiveResult) -> None:
    """What the runs measured besides the scenario: one line, or a table per run."""
    from pagewalk.live.runner import IDLE_PINGS
    rows = []
    for index, run in enumerate(live.runs, 1):
        other = max((n.other for n in run.noise), default=0)
        own = max((n.controller_faults for n in run.noise), default=0)
        idle = ", ".join(f"{k} {v}" for k, v in run.background.items() if v) or "none"
        rows.append((index, own, other, run.probe_command_faults,
                     f"{idle} ({run.idle_seconds:.1f} s)"))
    if len(rows) == 1:
        cells = rows[0]
        out.line(f"noise: the measuring process faulted {cells[1]} times (taken out of "
                 f"pgfault); other processes added {cells[2]} faults to pgfault; the "
                 f"probe took {cells[3]} faults answering {IDLE_PINGS} idle commands; "
                 f"events of others while the run stood idle: {escape(str(cells[4]))}")
        return
    table = OutputTable("noise", (Column("run", True),
                                  Column("measuring process faults (subtracted)", True),
                                  Column("other processes' faults in pgfault", True),
                                  Column("probe faults, idle commands", True),
                                  Column("others' events, run idle")), title="noise")
    for row in rows:
        table.add_row(*row)
    out.table(table)
    for key, values in live.varied.items():
        out.line(f"varied over the runs: {escape(' '.join(key))}: {values}")
    if not live.varied:
        out.line(f"no figure varied over the {len(rows)} runs")


# -- inspect -------------------------------------------------------------------------------------

@click.command("inspect")
@click.argument("pid", type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object (the same as --format json).")
@format_option
@click.option("--replay", is_flag=True,
              help="Print the page-size map of the present pages (JSON list of "
                   "{start, end, page_shift}) for trace replay.")
@reports_errors
def inspect_command(pid: int, as_json: bool, output_format: str | None, replay: bool) -> None:
    """Show a running process's mappings: per VMA its RSS, what THP and hugetlb back, the
    page-table pages its entries need at each level, and the cost with 2 MiB pages.

    Reads /proc/PID/smaps, status and pagemap (PAGEMAP_SCAN); root, or the owner of
    the process, may read them.
    """
    from pagewalk.live.inspect import inspect_process
    fmt = choose_format(output_format, as_json)
    try:
        result = inspect_process(pid)
    except LiveError as err:
        fail(escape(str(err)), EXIT_UNAVAILABLE)
        return
    if not result.page_sizes_known:
        note("this kernel has no PAGEMAP_SCAN: THPs are counted as 4 KiB pages")
    if replay:
        ranges = [json.dumps(entry) for entry in result.page_size_map()]
        click.echo("[\n " + ",\n ".join(ranges) + "\n]" if ranges else "[]")
    elif fmt == "json":
        write_json(result.to_json())
    elif fmt == "csv":
        write_tables_csv(inspection_tables(result))
    else:
        print_inspection(result, Output(fmt))


def _size(size: int) -> str:
    return format_size(size) if size else "0"


def inspection_tables(result: ProcessInspection) -> list[OutputTable]:
    """Per VMA its RSS, THP, hugetlb and tables (bytes), and the process's totals."""
    table = OutputTable("vmas", (
        Column("vma", True, hexadecimal), Column("size", True, _size), Column("perms"),
        Column("name"), Column("rss", True, _size), Column("thp", True, _size),
        Column("hugetlb", True, _size), Column("tables pte/pmd/pud", True),
        Column("table bytes", True, _size), Column("2MiB: tables", True, _size),
        Column("2MiB: resident", True, _size)),
        title="VMAs (tables: the page-table pages its entries use; +Nd: PTE tables "
              "deposited under huge PMDs)")
    for vma in result.vmas:
        doc = vma.to_json()
        now, est = vma.now.tables.count(), vma.with_2mib.tables.count()
        pte = f"{now.pte}+{now.deposited}d" if now.deposited else str(now.pte)
        table.add_row(vma.start, vma.end - vma.start, vma.perms, vma.name, doc["rss_bytes"],
                      doc["thp_bytes"], doc["hugetlb_bytes"], f"{pte}/{now.pmd}/{now.pud}",
                      now.linux_size, est.linux_size, vma.with_2mib.resident)
    total, est = result.now.tables.count(), result.with_2mib.tables.count()
    totals = fields_table("total", (
        ("pid", result.pid), ("comm", result.comm), ("pte_tables", total.pte),
        ("deposited_pte_tables", total.deposited), ("pmd_tables", total.pmd),
        ("pud_tables", total.pud), ("table_bytes", total.linux_size),
        ("walked_table_bytes", total.size), ("vm_pte_bytes", result.vm_pte),
        ("resident_bytes", result.now.resident), ("pages", result.now.pages),
        ("2mib_resident_bytes", result.with_2mib.resident),
        ("2mib_pages", result.with_2mib.pages), ("2mib_table_bytes", est.linux_size)))
    return [table, totals]


def print_inspection(result: ProcessInspection, out: Output) -> None:
    out.line(f"[bold]process[/] {result.pid} ({escape(result.comm)})")
    out.table(inspection_tables(result)[0])
    total = result.now.tables.count()
    est = result.with_2mib.tables.count()
    out.line(
        f"page tables (each counted once): {total.pte} PTE + {total.deposited} deposited, "
        f"{total.pmd} PMD, {total.pud} PUD = {_size(total.linux_size)} "
        f"({_size(total.size)} walked); VmPTE {_size(result.vm_pte)}"
        + (f", {_size(result.vm_pte - total.linux_size)} held beyond what the present "
           "pages need" if result.vm_pte != total.linux_size else ", exactly that"))
    out.line(
        f"resident {_size(result.now.resident)} in {result.now.pages:,} pages; with 2 MiB "
        f"pages: {_size(result.with_2mib.resident)} in {result.with_2mib.pages:,} pages, "
        f"tables {_size(est.linux_size)} ({est.pte} PTE + {est.deposited} deposited, "
        f"{est.pmd} PMD, {est.pud} PUD; {_size(est.size)} walked)")


__all__ = ["inspect_command", "print_inspection", "print_verify", "verify_command"]
