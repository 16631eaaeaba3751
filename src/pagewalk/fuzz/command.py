"""``pagewalk fuzz`` (loaded lazily by pagewalk.cli): random scenarios, the live kernel
against the simulator, mismatches shrunk and kept.

Exit status: 0 no mismatch, 1 at least one mismatch (or, with ``--simulator-only``, a
scenario the simulator failed on), 2 bad input or no root for the live kernel, 3 this
machine cannot run the live side (no gcc ...). Progress goes to standard error (a Rich
display on a terminal, plain lines otherwise); with ``--json`` standard output holds one
JSON object and nothing else.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from pagewalk.cli_common import EXIT_BAD_INPUT, EXIT_RUN_FAILED, escape, fail, reports_errors
from pagewalk.fuzz.campaign import (
    MISMATCH,
    UNAVAILABLE,
    CampaignResult,
    Failure,
    LiveSide,
    SeedResult,
    Settings,
    SimulatorSide,
    run_campaign,
)
from pagewalk.fuzz.generate import ALL, CLASSES

DEFAULT_COUNT = 20
MEASURED = Path("tests/data/measured")        # where a checkout keeps kernel-measured scenarios
FALLBACK_OUT = Path("pagewalk-fuzz")
NO_ROOT = ("pagewalk fuzz runs scenarios on the live kernel, which needs root (it sets "
           "/sys knobs and hugetlb pools); run it as root, or with --simulator-only")


def parse_seeds(seed: int | None, seeds: str | None, count: int | None) -> list[int]:
    """The seeds asked for: ``--seeds A..B`` (inclusive), or ``--count`` seeds from
    ``--seed`` (default 0; ``--seed`` alone is that one seed)."""
    if seeds is not None:
        if seed is not None or count is not None:
            raise click.UsageError("--seeds A..B excludes --seed and --count")
        low, sep, high = seeds.partition("..")
        if not sep or not low.strip().isdigit() or not high.strip().isdigit():
            raise click.BadParameter(f"expected A..B (two seeds), got {seeds!r}",
                                     param_hint="--seeds")
        first, last = int(low), int(high)
        if last < first:
            raise click.BadParameter(f"{seeds}: the last seed is below the first",
                                     param_hint="--seeds")
        return list(range(first, last + 1))
    if count is None:
        count = 1 if seed is not None else DEFAULT_COUNT
    start = seed or 0
    return list(range(start, start + count))


class Reporter:
    """The campaign's listener: a Rich progress display on a terminal, else plain lines,
    both on standard error."""

    def __init__(self, total: int, side: str) -> None:
        self.console = Console(stderr=True, highlight=False)
        self.total = total
        self.side = side
        self.progress: Progress | None = None
        self.task = None
        self.found = 0
        if self.console.is_terminal:
            self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"),
                                     BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                     console=self.console, transient=True)
            self.task = self.progress.add_task("fuzz", total=total)
            self.progress.start()

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()

    def _say(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(text, soft_wrap=True)
        else:
            self.console.print(text, soft_wrap=True, markup=False)

    def _describe(self, text: str) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, description=text)

    def seed_started(self, seed: int, gen_class: str) -> None:
        self._describe(f"seed {seed} ({gen_class}) on the {self.side}; "
                       f"{self.found} mismatching")

    def seed_done(self, result: SeedResult) -> None:
        if result.verdict == MISMATCH:
            self.found += 1
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task)
            if result.verdict == MISMATCH:
                same = f" (as seed {result.same_as})" if result.same_as is not None else ""
                self._say(f"[red]seed {result.seed}[/] ({result.gen_class}): "
                          f"{escape(result.cls or '')}{same}: {escape(result.detail)}")
            elif result.verdict == UNAVAILABLE:
                self._say(f"[yellow]seed {result.seed}[/]: not run: {escape(result.detail)}")
            return
        word = "ok" if self.side == "simulator" and result.verdict == "agree" else \
            result.verdict
        text = f"seed {result.seed} ({result.gen_class}): {word}"
        if result.verdict != "agree":
            text += f" {result.cls or ''}".rstrip() + f": {result.detail}"
        if result.same_as is not None:
            text += f" (same class as seed {result.same_as})"
        self._say(f"{text} [{result.steps} steps, {result.seconds:.1f} s]")

    def shrinking(self, failure: Failure, tried: int, steps: int) -> None:
        text = (f"seed {failure.seed}: shrinking {failure.cls}: {steps} steps "
                f"after {tried} runs")
        if self.progress is not None:
            self._describe(escape(text))
        else:
            self._say(text)

    def note(self, text: str) -> None:
        self._say(f"note: {text}" if self.progress is None else f"[yellow]note:[/] "
                  f"{escape(text)}")


def _live_notes(reporter: Reporter) -> Callable[[str], None]:
    def notify(text: str) -> None:
        if text.startswith(("waiting for", "WARNING", "restoring")):
            reporter.note(text)
    return notify


def _warn_unmeasurable_hugetlb(reporter: Reporter) -> None:
    """Say once, before the first seed, that this kernel's hugetlb figures cannot be
    measured (its scenarios that use hugetlb will not run); the scenarios stay as asked."""
    from pagewalk.live import hugetlb_state
    held = hugetlb_state.held_outside()
    if not held.clean:
        reporter.note(f"hugetlb figures cannot be measured on this kernel now: "
                      f"{held.describe()}; scenarios that use hugetlb will not run "
                      f"(pass --no-hugetlb to generate none)")


@click.command("fuzz")
@click.option("--seed", type=click.IntRange(0), default=None,
              help="First seed (alone: just that seed). Same seed, same scenario.")
@click.option("--seeds", metavar="A..B", default=None, help="The seeds A to B inclusive.")
@click.option("--class", "gen_class", type=click.Choice([*CLASSES, ALL]), default=ALL,
              show_default=True, help="What the scenarios stress; all: a class per seed.")
@click.option("--count", type=click.IntRange(1), default=None,
              help=f"How many seeds from --seed (default {DEFAULT_COUNT}).")
@click.option("--keep-going", is_flag=True, help="Go on after the first mismatch.")
@click.option("--no-shrink", is_flag=True, help="Keep mismatching scenarios unshrunk.")
@click.option("--shrink-runs", type=click.IntRange(1), default=150, show_default=True,
              help="Most candidate runs spent shrinking one mismatch.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help=f"Where mismatching scenarios are kept (default: {MEASURED} in a "
                   f"checkout, else ./{FALLBACK_OUT}; with --simulator-only: not kept).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object at the end.")
@click.option("--no-hugetlb", is_flag=True,
              help="Generate no hugetlb mapping and set no hugetlb pool knob (for a kernel "
                   "whose hugetlb figures cannot be measured).")
@click.option("--simulator-only", is_flag=True,
              help="No kernel: check that the simulator runs every scenario (valid by "
                   "construction, no crash, annotated runs replay).")
@reports_errors
def fuzz_command(seed: int | None, seeds: str | None, gen_class: str, count: int | None,
                 keep_going: bool, no_shrink: bool, shrink_runs: int, out_dir: str | None,
                 as_json: bool, no_hugetlb: bool, simulator_only: bool) -> None:
    """Random scenarios run on the live kernel and in the simulator; each new mismatch
    class is shrunk and kept as fuzz-CLASS-SEED.yaml with its .kernel.json.

    Each scenario runs once on the kernel recording every step's errno or signal, its
    steps are annotated with those answers, and the simulator runs the annotated
    scenario; the reports are compared with the oracle's tolerances. Needs root (the
    scenarios set knobs and hugetlb pools); --simulator-only needs no kernel.
    """
    try:
        seed_list = parse_seeds(seed, seeds, count)
    except click.UsageError as err:
        fail(escape(err.format_message()), EXIT_BAD_INPUT)
        return
    if no_hugetlb and gen_class == "hugetlb":
        fail("--class hugetlb cannot be generated with --no-hugetlb", EXIT_BAD_INPUT)
    settings = Settings(gen_class=gen_class, keep_going=keep_going, shrink=not no_shrink,
                        shrink_runs=shrink_runs, hugetlb=not no_hugetlb)
    if out_dir is not None:
        settings.out_dir = Path(out_dir)
    elif not simulator_only:
        settings.out_dir = MEASURED if MEASURED.is_dir() else FALLBACK_OUT
    reporter = Reporter(len(seed_list), "simulator" if simulator_only else "kernel")
    try:
        if simulator_only:
            result = run_campaign(seed_list, SimulatorSide(), settings, reporter)
        else:
            if os.geteuid() != 0:
                reporter.stop()
                fail(NO_ROOT, EXIT_BAD_INPUT)
            from pagewalk.live.errors import EXIT_UNAVAILABLE, LiveError
            from pagewalk.live.probe import build_probe
            try:
                build_probe()
            except LiveError as err:
                reporter.stop()
                fail(escape(str(err)), EXIT_UNAVAILABLE)
            if not no_hugetlb:
                _warn_unmeasurable_hugetlb(reporter)
            side = LiveSide(notify=_live_notes(reporter))
            result = run_campaign(seed_list, side, settings, reporter)
    finally:
        reporter.stop()
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        print_summary(result)
    sys.exit(EXIT_RUN_FAILED if result.mismatches else 0)


def print_summary(result: CampaignResult) -> None:
    plain = Console(highlight=False)
    console = plain if plain.is_terminal else Console(highlight=False, width=200)
    counts = result.to_json()
    verdict = "agree" if result.side == "kernel" else "ran cleanly"
    console.print(f"[bold]pagewalk fuzz[/] ({_against(result.side)}): {counts['seeds']} "
                  f"scenarios, {counts['agree']} {verdict}, {counts['mismatches']} "
                  f"{'mismatch' if result.side == 'kernel' else 'failed'}, "
                  f"{counts['unavailable']} could not run here")
    if result.refused:
        shown = ", ".join(f"{what} {n}" for what, n in result.refused.most_common(12))
        console.print(f"steps the {result.side} refused (expectations of the scenarios): "
                      f"{escape(shown)}")
    if not result.failures:
        return
    table = Table("first difference", "seeds", "steps", "scenario", "detail",
                  title="distinct failures, by the first differing field")
    for failure in sorted(result.failures.values(), key=lambda f: f.cls):
        steps = str(failure.steps_before)
        if failure.steps_after is not None:
            steps += f" -> {failure.steps_after}"
        where = failure.path or ("flaky: " if failure.flaky else "") + (failure.kept_note
                                                                        or "not kept")
        table.add_row(escape(failure.cls), " ".join(map(str, failure.seeds)), steps,
                      escape(where), escape(failure.detail))
    console.print(table)
    for failure in result.failures.values():
        if failure.path and failure.kept_note:
            console.print(f"{escape(Path(failure.path).name)}: {escape(failure.kept_note)}")


def _against(side: str) -> str:
    return "the live kernel against the simulator" if side == "kernel" else "simulator only"


__all__ = ["fuzz_command", "parse_seeds", "print_summary"]
