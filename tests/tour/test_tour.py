"""The guided tour runs as written (docs/tour.md and its Japanese twin docs/tour.ja.md).

Every command of a ```sh block runs, with the exit status it shows (0 unless a trailing
``# exit status N`` says otherwise); a ```text block right after a one-command ```sh
block is an extract of what that command prints (its standard output; of a command shown
failing, its standard error): its lines, whitespace aside, are the command's own lines, consecutive except where a ``...`` line stands, and the extract's
first and last lines are the output's first and last unless ``...`` opens or closes it
(so no line is ever cut). ``<pagewalk>`` in an extract stands for the installed package.

Every figure the prose quotes is held in a comment beside it,
``<!-- figures: COMMAND --json`` followed by one Python expression a line and ``-->``:
the command runs, its JSON is ``doc`` (keys as attributes: ``doc.processes[0].tables``),
and each expression must be true. Helpers: ``m(label)`` (a measurement of a ``run``
report), ``change(process, field, since, until)``, ``meminfo(label, key)`` and ``sar(label,
column)`` (from the ``--show`` views), and KiB ... PiB.

``pagewalk verify`` needs root, gcc and this machine's kernel: those commands run only
under the conditions of tests/live (live_support), except a verify the tour shows being
refused before anything runs. Their extracts leave the noise out, and a closing ``N
agree, 0 differ ...`` line stands for any agreeing count (other processes' faults move
the noise count). The picture command runs into a temporary directory and must write
exactly the pictures the tours show, each a PNG under 150 KB.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pagewalk.cli import main
from pagewalk.scenario.examples import list_examples
from tests.live.live_support import needs_clean_hugetlb, needs_gcc, needs_root

ROOT = Path(__file__).resolve().parents[2]
TOURS = [ROOT / "docs" / "tour.md", ROOT / "docs" / "tour.ja.md"]
PICTURES = ROOT / "docs" / "tour"
PICTURE_COMMAND = "python docs/tour/make_pictures.py"
MAX_PICTURE_BYTES = 150 * 1024
CONCEPTS = 10

FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.DOTALL | re.MULTILINE)
FIGURES = re.compile(r"^<!-- figures: (.*?)\n(.*?)^-->", re.DOTALL | re.MULTILINE)
IMAGE = re.compile(r"!\[[^\]]*\]\((tour/[^)]+\.png)\)")
SECTION = re.compile(r"^## (\d+)\. ", re.MULTILINE)
EXIT_STATUS = re.compile(r"#\s*exit status (\d+)\s*$")
AGREEMENT = re.compile(r"^\d+ agree, 0 differ(, \d+ within measured noise)?$")
UNITS = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40, "PiB": 1 << 50}


@dataclass(frozen=True)
class Command:
    """One command of a ```sh block, with the extract shown after it (or None)."""

    tour: str
    line: int                      # 1-based line of the command in its tour
    text: str                      # as written, without the trailing comment
    status: int                    # the exit status the tour shows (0 unless it says)
    extract: tuple[str, ...] | None

    @property
    def is_verify(self) -> bool:
        return self.text.startswith("pagewalk verify ")

    def __str__(self) -> str:
        return f"{self.tour}:{self.line}: {self.text}"


@dataclass(frozen=True)
class Figures:
    """A ``<!-- figures: ... -->`` comment: the JSON command and its expressions."""

    tour: str
    line: int
    command: str
    expressions: tuple[tuple[int, str], ...]     # (line, expression)


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def parse_commands(path: Path) -> list[Command]:
    return commands_of(path.read_text(encoding="utf-8"), path.name)


def commands_of(text: str, tour: str) -> list[Command]:
    """The commands of ``text``'s ```sh blocks, each with the extract that follows it."""
    blocks = list(FENCE.finditer(text))
    commands = []
    for i, block in enumerate(blocks):
        if block.group(1) != "sh":
            continue
        following = blocks[i + 1] if i + 1 < len(blocks) else None
        extract = None
        if (following is not None and following.group(1) == "text"
                and not text[block.end():following.start()].strip()):
            extract = tuple(following.group(2).rstrip("\n").split("\n"))
        lines = [(n, line) for n, line in enumerate(block.group(2).splitlines())
                 if line.strip() and not line.lstrip().startswith("#")]
        assert extract is None or len(lines) == 1, \
            f"{tour}:{_line_of(text, block.start())}: an output extract follows a " \
            "block of several commands"
        for n, line in lines:
            status = EXIT_STATUS.search(line)
            command = line.split("#", 1)[0].strip()
            commands.append(Command(tour, _line_of(text, block.start(2)) + n, command,
                                    int(status.group(1)) if status else 0, extract))
    return commands


def parse_figures(path: Path) -> list[Figures]:
    text = path.read_text(encoding="utf-8")
    found = []
    for match in FIGURES.finditer(text):
        first = _line_of(text, match.start())
        expressions = tuple((first + 1 + n, line.strip())
                            for n, line in enumerate(match.group(2).splitlines())
                            if line.strip())
        found.append(Figures(path.name, first, match.group(1).strip(), expressions))
    return found


ALL_COMMANDS = [c for tour in TOURS for c in parse_commands(tour)]
ALL_FIGURES = [f for tour in TOURS for f in parse_figures(tour)]


# -- running the commands ------------------------------------------------------------------------

@dataclass(frozen=True)
class Ran:
    status: int
    stdout: str
    stderr: str            # notes (a first compile, a wait for the live lock) and errors

    @property
    def shown(self) -> str:
        """What an extract quotes: the output, or the error of a command that fails."""
        return self.stdout if self.status == 0 else self.stderr


@functools.cache
def run(command: str) -> Ran:
    """A pagewalk command of the tour, in this process (CliRunner: standard output is not
    a terminal, so the format is plain, as in the tour); run once however often quoted."""
    argv = shlex.split(command)
    assert argv[0] == "pagewalk", f"not a pagewalk command: {command}"
    result = CliRunner().invoke(main, argv[1:])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{command}: raised {result.exception!r}") from result.exception
    return Ran(result.exit_code, result.stdout, result.stderr)


def _normal(line: str) -> str:
    return " ".join(line.split())


def _same(expected: str, actual: str, verify: bool) -> bool:
    if verify and AGREEMENT.match(expected):
        return bool(AGREEMENT.match(actual))
    return expected == actual


def extract_mismatch(extract: tuple[str, ...], output: str, verify: bool) -> str | None:
    """Why ``extract`` is not an extract of ``output`` (None when it is)."""
    package = str(resources.files("pagewalk"))
    wanted = [_normal(line.replace("<pagewalk>", package)) for line in extract]
    actual = [_normal(line) for line in output.rstrip("\n").split("\n")]
    segments: list[list[str]] = [[]]
    for line in wanted:
        if line == "...":
            segments.append([])
        else:
            segments[-1].append(line)
    anchored_start, anchored_end = bool(segments[0]), bool(segments[-1])
    position = 0
    for index, segment in enumerate(segments):
        if not segment:
            continue
        last = index == len(segments) - 1
        starts = ([0] if index == 0 and anchored_start
                  else [len(actual) - len(segment)] if last and anchored_end
                  else range(position, len(actual) - len(segment) + 1))
        found = next((s for s in starts if position <= s <= len(actual) - len(segment) and all(
            _same(w, a, verify) for w, a in zip(segment, actual[s:s + len(segment)]))), None)
        if found is None:
            return (f"these consecutive lines are not in the output"
                    f"{' at its start' if index == 0 and anchored_start else ''}"
                    f"{' at its end' if last and anchored_end else ''} "
                    f"(after line {position}):\n  " + "\n  ".join(segment))
        position = found + len(segment)
    return None


def check_command(command: Command) -> None:
    ran = run(command.text)
    assert ran.status == command.status, \
        f"{command}: exit status {ran.status}, the tour shows {command.status}\n{ran.stderr}"
    if command.extract is not None:
        problem = extract_mismatch(command.extract, ran.shown, command.is_verify)
        assert problem is None, f"{command}: {problem}\n--- the output:\n{ran.shown}"


def _is_refusal(command: Command) -> bool:
    """A verify the tour shows refused before any live run (exit status 3)."""
    return command.is_verify and command.status == 3


def _offline(command: Command) -> bool:
    return command.text != PICTURE_COMMAND and (not command.is_verify or _is_refusal(command))


def _live_marks(command: Command) -> list[pytest.MarkDecorator]:
    marks = [needs_root, needs_gcc]
    name = command.text.split()[2]
    if "hugetlb" in (resources.files("pagewalk") / "examples" / f"{name}.yaml").read_text():
        marks.append(needs_clean_hugetlb)
    return marks


# -- the commands and their extracts -------------------------------------------------------------

@pytest.mark.parametrize("command", [c for c in ALL_COMMANDS if _offline(c)], ids=str)
def test_tour_command_prints_its_extract(command: Command) -> None:
    """Each simulator command of the tours exits as shown and prints its extract."""
    check_command(command)


@pytest.mark.parametrize("command", [pytest.param(c, marks=_live_marks(c))
                                     for c in ALL_COMMANDS
                                     if c.is_verify and not _is_refusal(c)], ids=str)
def test_tour_verify_on_the_live_kernel_shows_its_extract(command: Command) -> None:
    """`pagewalk verify` of a tour scenario agrees with the simulator (exit status 0) and
    the kernel's figures are those the tour quotes."""
    check_command(command)


# -- the quoted figures --------------------------------------------------------------------------

class Doc:
    """A JSON value whose object keys read as attributes (``doc.walk[3].flags``)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __getattr__(self, name: str) -> Any:
        return wrap(self.value[name])

    def __getitem__(self, key: Any) -> Any:
        return wrap(self.value[key])

    def __iter__(self) -> Any:
        return (wrap(item) for item in self.value)

    def __len__(self) -> int:
        return len(self.value)

    def __contains__(self, item: Any) -> bool:
        return item in self.value

    def __eq__(self, other: object) -> bool:
        return bool(self.value == (other.value if isinstance(other, Doc) else other))

    def __repr__(self) -> str:
        return repr(self.value)


def wrap(value: Any) -> Any:
    return Doc(value) if isinstance(value, (dict, list)) else value


def _view_field(text: str, name: str) -> int:
    """The figure ``name`` of a view's text, read as the tour's picture script reads it
    (one reader for both, so the pictures and the asserted figures agree)."""
    return int(_pictures_module()._view_field(text, name))


@functools.cache
def _pictures_module() -> Any:
    import importlib.util
    path = Path(__file__).parents[2] / "docs" / "tour" / "make_pictures.py"
    spec = importlib.util.spec_from_file_location("tour_make_pictures", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def namespace(doc: dict[str, Any]) -> dict[str, Any]:
    """What a figures expression may use."""

    def measurement(label: str) -> dict[str, Any]:
        found = [m for m in doc["measurements"] if m["label"] == label]
        assert found, f"no measure labelled {label!r}"
        return found[0]

    def change(process: str, field: str, since: str, until: str) -> int:
        return int(measurement(until)["processes"][process][field]
                   - measurement(since)["processes"][process][field])

    return {"doc": wrap(doc), "m": lambda label: wrap(measurement(label)), "change": change,
            "meminfo": lambda label, key: _view_field(
                measurement(label)["views"]["/proc/meminfo"], key),
            "sar": lambda label, column: _view_field(measurement(label)["views"]["sar"], column),
            "round": round, **UNITS}


@pytest.mark.parametrize("figures", [f for f in ALL_FIGURES
                                     if not f.command.startswith("pagewalk verify ")],
                         ids=lambda f: f"{f.tour}:{f.line}")
def test_tour_figures_are_what_pagewalk_computes(figures: Figures) -> None:
    """Each figure the tours quote is the one the --json of its command gives."""
    assert "--json" in figures.command.split(), f"{figures.tour}:{figures.line}: not --json"
    ran = run(figures.command)
    assert ran.status == 0, f"{figures.command}: exit status {ran.status}\n{ran.stderr}"
    names = namespace(json.loads(ran.stdout))
    for line, expression in figures.expressions:
        assert eval(expression, {"__builtins__": {}, **names}) is True, \
            f"{figures.tour}:{line}: {expression}"


# -- the two tours, the sections, the scenarios, the pictures ------------------------------------

def test_both_tours_run_the_same_commands_and_check_the_same_figures() -> None:
    """The Japanese tour shows the English one's commands, extracts and figures, in order."""
    english, japanese = (parse_commands(t) for t in TOURS)
    assert [(c.text, c.status, c.extract) for c in japanese] == \
        [(c.text, c.status, c.extract) for c in english]
    english_figures, japanese_figures = (parse_figures(t) for t in TOURS)
    assert [(f.command, [e for _, e in f.expressions]) for f in japanese_figures] == \
        [(f.command, [e for _, e in f.expressions]) for f in english_figures]


def sections(path: Path) -> dict[int, str]:
    text = path.read_text(encoding="utf-8")
    heads = list(SECTION.finditer(text))
    return {int(h.group(1)): text[h.start():heads[i + 1].start() if i + 1 < len(heads)
                                  else len(text)] for i, h in enumerate(heads)}


@pytest.mark.parametrize("tour", TOURS, ids=lambda p: p.name)
def test_each_concept_has_a_command_an_extract_a_live_run_and_a_picture(tour: Path) -> None:
    """Ten sections, in order; each runs pagewalk with an output extract, shows the live
    kernel's `pagewalk verify`, and shows at least one picture of docs/tour."""
    found = sections(tour)
    assert list(found) == list(range(1, CONCEPTS + 1))
    for number, text in found.items():
        commands = commands_of(text, tour.name)
        assert any(not c.is_verify and c.extract for c in commands), f"section {number}"
        assert any(c.is_verify for c in commands), f"section {number}: no pagewalk verify"
        pictures = IMAGE.findall(text)
        assert pictures, f"section {number}: no picture"
        for picture in pictures:
            assert (PICTURES.parent / picture).is_file(), f"section {number}: {picture}"


def tour_scenarios() -> set[str]:
    return {word for c in ALL_COMMANDS for word in shlex.split(c.text)
            if word.startswith("tour-")}


def test_the_tour_scenarios_are_built_in_examples_with_a_description() -> None:
    """Every scenario the tours run ships with pagewalk and says what it shows; every
    built-in tour-* example is used by the tours."""
    examples = dict(list_examples())
    for name in tour_scenarios():
        assert examples.get(name), f"{name}: not a built-in example with a description"
    assert {name for name in examples if name.startswith("tour-")} == tour_scenarios()


def test_pcid_changes_no_figure_the_kernel_reports() -> None:
    """tour-two-processes-no-pcid differs from tour-two-processes only in the TLB figures
    (the tour says PCIDs change no /proc figure)."""
    with_pcid, without = (json.loads(run(f"pagewalk run {name} --json").stdout)
                          for name in ("tour-two-processes", "tour-two-processes-no-pcid"))
    for a, b in zip(with_pcid["measurements"], without["measurements"], strict=True):
        assert a["system"] == b["system"]
        for process in a["processes"]:
            kernel = {k: v for k, v in a["processes"][process].items() if not k.startswith("tlb_")}
            assert kernel == {k: v for k, v in b["processes"][process].items()
                              if not k.startswith("tlb_")}
    assert with_pcid["mappings"] == without["mappings"]


def test_the_documented_command_draws_exactly_the_tours_pictures(tmp_path: Path) -> None:
    """`python docs/tour/make_pictures.py DIR` writes one PNG per picture the tours show,
    each under 150 KB, and the committed pictures are those files."""
    assert any(c.text == PICTURE_COMMAND for c in ALL_COMMANDS)
    pytest.importorskip("matplotlib")
    done = subprocess.run([sys.executable, str(ROOT / PICTURE_COMMAND.split()[1]),
                           str(tmp_path)], capture_output=True, text=True, timeout=900,
                          check=False)
    assert done.returncode == 0, done.stderr
    shown = {Path(p).name for tour in TOURS for p in IMAGE.findall(tour.read_text())}
    drawn = {p.name for p in tmp_path.glob("*.png")}
    assert drawn == shown
    for name in drawn:
        for path in (tmp_path / name, PICTURES / name):
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
            assert path.stat().st_size < MAX_PICTURE_BYTES, path
