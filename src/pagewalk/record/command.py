"""``pagewalk record`` and ``pagewalk replay`` (issue 16)::

    pagewalk record [-o REC] [--compare] [--json] -- PROGRAM [ARGS]...
    pagewalk replay REC [--scenario-system FILE] [--thp always|madvise|never]
                        [--hugetlb SIZE=COUNT]... [--paging 4|5] [--tlb PRESET]
                        [--measure-every N] [--json]

``record`` writes a recording (record/recfile.py); with ``--compare`` it also runs the
program natively (ASLR off), replays the recording, and prints the /proc figures of both
side by side (``--json``: ``{"native": {...}, "simulated": {...}}``, sizes in kB).
``replay`` prints the figures at the program's exit: minflt, VmHWM, RssAnon, RssFile,
VmPTE, AnonHugePages and the TLB counts; with ``--measure-every N`` also a table of the
figures every N recorded accesses and at exit (``--json``: the list under "series").
The machine is a scenario file's ``system`` section (``--scenario-system``) with
``--thp``, ``--hugetlb`` and ``--paging`` written over it (record/system.py). Bad input:
one red line, exit status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from pagewalk.cli_common import OneLineUsageErrors, reports_errors
from pagewalk.cli_output import write_json
from pagewalk.errors import TraceError
from pagewalk.record.system import THP_MODES, parse_hugetlb


@click.command("record", cls=OneLineUsageErrors,
               context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("program", nargs=-1, required=True, type=click.UNPROCESSED,
                metavar="-- PROGRAM [ARGS]...")
@click.option("-o", "--output", default=None, metavar="REC",
              help="The recording file (default: PROGRAM.pwr in the current directory).")
@click.option("--compare", is_flag=True,
              help="Also run PROGRAM natively (ASLR off), replay the recording, and print "
                   "both runs' /proc figures at exit side by side.")
@click.option("--json", "as_json", is_flag=True,
              help="With --compare: one JSON object {native, simulated} on standard output.")
@reports_errors
def record_command(program: tuple[str, ...], output: str | None, compare: bool,
                   as_json: bool) -> None:
    """Record PROGRAM's memory system calls and accesses under valgrind."""
    from pagewalk.record.recorder import record
    from pagewalk.record.replay import replay_recording
    path = Path(output or f"{Path(program[0]).name}.pwr")
    stdout = sys.stderr.fileno() if as_json else None
    result = record(list(program), path, compare, program_stdout=stdout)
    click.echo(f"recorded {result.end.accesses:,} accesses and {result.end.syscalls} memory "
               f"syscalls to {path}", err=True)
    if not compare:
        return
    simulated = replay_recording(path)
    native = result.native.figures
    if as_json:
        write_json({"native": native, "simulated": simulated.figures}, indent=1)
        return
    click.echo(f"{'field':<16}{'native':>12}{'simulated':>12}")
    for key, value in native.items():
        click.echo(f"{key:<16}{value:>12,}{simulated.figures.get(key, 0):>12,}")
    _notes(simulated.untranslated, simulated.diverged)


@click.command("replay", cls=OneLineUsageErrors,
               context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("recording", metavar="REC")
@click.option("--thp", type=click.Choice(THP_MODES), default=None,
              help="transparent_hugepage/enabled (default: the kernel's default).")
@click.option("--tlb", "tlb_model", default=None, metavar="NAME|FILE.yaml",
              help="TLB model: a preset (reference, skylake, haswell, zen) or a model file.")
@click.option("--scenario-system", "scenario_system", default=None, metavar="FILE",
              help="Boot the machine of this scenario file's system section (RAM, paging, "
                   "sysfs knobs, swap ...); --thp, --hugetlb and --paging override it.")
@click.option("--hugetlb", "hugetlb", multiple=True, metavar="SIZE=COUNT",
              help="Reserve a hugetlb pool at boot, e.g. 2MiB=64 or 1GiB=2 (repeatable).")
@click.option("--paging", type=click.Choice(("4", "5")), default=None,
              help="Page-table levels (5: LA57); default: the system's (4).")
@click.option("--measure-every", "measure_every", type=click.IntRange(min=1), default=None,
              metavar="N", help="Also measure every N recorded accesses (a time series).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the figures as one JSON object keyed by the /proc field names.")
@reports_errors
def replay_command(recording: str, thp: str | None, tlb_model: str | None,
                   scenario_system: str | None, hugetlb: tuple[str, ...], paging: str | None,
                   measure_every: int | None, as_json: bool) -> None:
    """Replay a recording through the simulated kernel and MMU; print the /proc figures at
    the program's exit and the TLB counts."""
    from pagewalk.record.replay import replay_recording
    pools = dict(parse_hugetlb(text) for text in hugetlb)
    if not Path(recording).is_file():
        raise TraceError(f"{recording}: no such recording file")
    result = replay_recording(recording, thp, tlb_model, system=scenario_system,
                              hugetlb=pools, paging=int(paging) if paging else None,
                              measure_every=measure_every)
    if as_json:
        write_json(result.to_json(), indent=1)
        return
    for key, value in {**result.figures, **result.tlb, **result.system}.items():
        click.echo(f"{key:<16}{value:>14,}")
    if measure_every is not None:
        _series_table(result.series)
    _notes(result.untranslated, result.diverged)


def _series_table(series: list[dict[str, int]]) -> None:
    """One row per measurement; the last is the exit."""
    from pagewalk.record.replay import SERIES_FIELDS
    click.echo()
    click.echo("".join(f"{key:>14}" for key in SERIES_FIELDS))
    for point in series:
        click.echo("".join(f"{point[key]:>14,}" for key in SERIES_FIELDS))


def _notes(untranslated: int, diverged: list[str]) -> None:
    if untranslated:
        click.echo(f"note: {untranslated:,} accesses fell outside every replayed mapping "
                   "(valgrind's own)", err=True)
    for line in diverged:
        click.echo(f"note: the simulated kernel refused {line}", err=True)
