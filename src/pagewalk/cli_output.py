"""How a command prints what it found: one table model, four renderings (``--format``).

A command builds :class:`Table` objects (raw values, and per column how a value shows)
and prints them through an :class:`Output`; ``csv`` and ``json`` print data instead.

* ``table``: Rich tables, the default on a terminal. Nothing is cut: a number, an
  address or a size is never broken, a label only between words, and a table too wide
  for the terminal even so is stacked (each row as ``column  value`` lines).
* ``plain``: aligned text as wide as it needs, no box drawing, lines never wrapped:
  the default when standard output is not a terminal (a pipe, a file).
* ``csv``: rows for the csv module, raw values (bytes, counts; addresses in hex).
* ``json``: the command's JSON object (``--json`` is an alias).

This module sits beside cli_common, below the tool commands, and imports neither.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import click

from pagewalk.errors import ConfigError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table as RichTable

F = TypeVar("F", bound=Callable[..., Any])
FORMATS = ("table", "plain", "csv", "json")
LONG_CSV_HEADER = ("table", "row", "field", "value")
FORMAT_HELP = ("table (Rich, the default on a terminal), plain (aligned text, the default "
               "when piped), csv or json. Nothing is cut in any of them.")


def format_option(func: F) -> F:
    """The ``--format table|plain|csv|json`` option (parameter ``output_format``)."""
    return click.option("--format", "output_format", type=click.Choice(FORMATS),
                        default=None, help=FORMAT_HELP)(func)


def stdout_is_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):      # replaced or closed standard output
        return False


def choose_format(output_format: str | None, as_json: bool = False) -> str:
    """The format to print in: ``--json`` means json, else ``--format``, else table on a
    terminal and plain when standard output is a pipe or a file."""
    if as_json:
        if output_format not in (None, "json"):
            raise ConfigError(f"--json and --format {output_format} ask for two formats: "
                              "give one")
        return "json"
    if output_format is not None:
        return output_format
    return "table" if stdout_is_terminal() else "plain"


# -- how values show ---------------------------------------------------------------------------

def grouped(value: int) -> str:
    """Digits in groups of three (65,536), as the mappings table shows lengths."""
    return f"{value:,}"


def hexadecimal(value: int) -> str:
    return f"{value:#x}"


# -- the table model ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Column:
    """One column: its header, and how its raw values show. A ``numeric`` column is
    right-aligned and its cells are never broken across lines."""

    name: str
    numeric: bool = False
    show: Callable[[Any], str] = str


@dataclass(frozen=True, slots=True)
class Cell:
    """A raw value with its own text and style (for a cell unlike its column's others)."""

    value: Any
    text: str
    style: str = ""


@dataclass(slots=True)
class Table:
    """Rows of raw values under named columns. ``name`` keys the table in long csv."""

    name: str
    columns: tuple[Column, ...]
    title: str = ""
    caption: str = ""
    rows: list[tuple[Any, ...]] = field(default_factory=list)

    def add_row(self, *values: Any) -> None:
        if len(values) != len(self.columns):
            raise ValueError(f"table {self.name!r}: {len(values)} cells for "
                             f"{len(self.columns)} columns")
        self.rows.append(values)

    def texts(self) -> list[list[str]]:
        """Each row's cells as they show."""
        return [[_text(value, column) for value, column in zip(row, self.columns)]
                for row in self.rows]

    def long_rows(self) -> list[tuple[str, str, str, Any]]:
        """``(table, row, field, value)`` per cell but the first, which names the row; for
        a table of fields (columns ``field``, ``value``) ``(table, "", field, value)``."""
        if tuple(c.name for c in self.columns) == FIELD_COLUMNS:
            return [(self.name, "", str(_raw(key)), _raw(value)) for key, value in self.rows]
        out: list[tuple[str, str, str, Any]] = []
        for row, texts in zip(self.rows, self.texts()):
            out.extend((self.name, texts[0], column.name, _raw(value))
                       for value, column in zip(row[1:], self.columns[1:]))
        return out


FIELD_COLUMNS = ("field", "value")


def fields_table(name: str, fields: Iterable[tuple[str, Any]], title: str = "",
                 show: Callable[[Any], str] = str) -> Table:
    """A table of named values, one record (long csv: ``name,,field,value``)."""
    table = Table(name, (Column("field"), Column("value", True, show)), title=title)
    for key, value in fields:
        table.add_row(key, value)
    return table


def _text(value: Any, column: Column) -> str:
    if isinstance(value, Cell):
        return value.text
    if value is None:
        return ""
    return column.show(value)


def _raw(value: Any) -> Any:
    return value.value if isinstance(value, Cell) else value


def _style(value: Any) -> str:
    return value.style if isinstance(value, Cell) else ""


# -- csv and json --------------------------------------------------------------------------------

def write_csv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """``header`` and ``rows`` as CSV on standard output (None: an empty field)."""
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(["" if value is None else value for value in row] for row in rows)


def write_tables_csv(tables: Iterable[Table]) -> None:
    """Several tables as one long CSV: ``table,row,field,value``, one line per cell."""
    write_csv(LONG_CSV_HEADER, [row for table in tables for row in table.long_rows()])


def write_json(doc: Any, indent: int = 2) -> None:
    import json
    click.echo(json.dumps(doc, indent=indent))


# -- table and plain -----------------------------------------------------------------------------

class Output:
    """Prints lines, headings and tables in the ``table`` or ``plain`` format."""

    def __init__(self, fmt: str) -> None:
        from rich.console import Console
        self.plain = fmt != "table"
        # plain: never wrapped, whatever COLUMNS says; table: the terminal's width
        self.console: Console = Console(highlight=False, soft_wrap=self.plain)

    def line(self, markup: str = "") -> None:
        """One line of Rich markup (plain: its text, unwrapped)."""
        self.console.print(markup)

    def heading(self, markup: str) -> None:
        """A section: a rule across the terminal, or ``== title ==`` in plain text."""
        if self.plain:
            self.console.print(f"\n== {markup} ==")
        else:
            self.console.rule(markup)

    def verbatim(self, text: str) -> None:
        """Text as it is, tabs included (a /proc file): no markup, no wrapping."""
        click.echo(text, nl=not text.endswith("\n"))

    def table(self, table: Table) -> None:
        if self.plain:
            self._plain(table)
        else:
            self._rich(table)

    # plain: every column as wide as its widest cell, two spaces between columns
    def _plain(self, table: Table) -> None:
        from rich.cells import cell_len
        from rich.text import Text
        texts = table.texts()
        widths = [max([cell_len(c.name), *(cell_len(row[i]) for row in texts)])
                  for i, c in enumerate(table.columns)]
        if table.title:
            self.console.print(Text(table.title))
        self.console.print(self._plain_line(
            [Text(c.name) for c in table.columns], table.columns, widths))
        for row, cells in zip(table.rows, texts):
            self.console.print(self._plain_line(
                [Text(text, style=_style(value)) for value, text in zip(row, cells)],
                table.columns, widths))
        if table.caption:
            self.console.print(Text(table.caption))

    @staticmethod
    def _plain_line(cells: list[Any], columns: Sequence[Column], widths: list[int]) -> Any:
        from rich.text import Text
        line = Text()
        for index, (cell, column, width) in enumerate(zip(cells, columns, widths)):
            pad = " " * (width - cell.cell_len)
            if index:
                line.append("  ")
            line.append_text(Text(pad) + cell if column.numeric else cell + Text(pad))
        line.rstrip()
        return line

    # table: Rich, at natural widths if they fit, else labels wrapped between words,
    # else stacked
    def _rich(self, table: Table) -> None:
        from rich.cells import cell_len
        texts = table.texts()
        natural, least = [], []
        for i, column in enumerate(table.columns):
            cells = [row[i] for row in texts]
            natural.append(max([cell_len(column.name), *map(cell_len, cells)]))
            unbreakable = [cell_len(text) for text in cells] if column.numeric else \
                [_longest_word(text) for text in cells]
            least.append(max([_longest_word(column.name), *unbreakable]))
        for boxed in (True, False):         # boxed, else a header rule and no edges
            room = self.console.width - self._overhead(table, boxed)
            if sum(least) <= room:
                break
        else:
            self._stacked(table, texts)
            return
        from rich.text import Text
        if table.title:         # a line of its own: a title over a narrow table wraps
            self.console.print(Text(table.title, style="italic"))
        widths = None if sum(natural) <= room else _spread(least, natural, room)
        self.console.print(self._rich_table(table, texts, widths, boxed))
        if table.caption:
            self.console.print(Text(table.caption, style="italic"))

    def _overhead(self, table: Table, boxed: bool) -> int:
        """Columns of a Rich table that are borders and padding, not cells."""
        from rich.measure import Measurement
        probe = self._rich_table(table, [], [1] * len(table.columns), boxed)
        wide = self.console.options.update_width(1 << 20)
        return Measurement.get(self.console, wide, probe).maximum - len(table.columns)

    @staticmethod
    def _rich_table(table: Table, texts: list[list[str]], widths: list[int] | None,
                    boxed: bool = True) -> RichTable:
        from rich import box
        from rich.table import Table as RichTable
        from rich.text import Text
        out = RichTable() if boxed else RichTable(box=box.SIMPLE_HEAD, show_edge=False,
                                                   pad_edge=False)
        for i, column in enumerate(table.columns):
            out.add_column(column.name, justify="right" if column.numeric else "left",
                           overflow="fold", width=None if widths is None else widths[i])
        for row, cells in zip(table.rows, texts):
            out.add_row(*(Text(text, style=_style(value)) for value, text in zip(row, cells)))
        return out

    def _stacked(self, table: Table, texts: list[list[str]]) -> None:
        """Each row as lines ``column  value`` under its first cell."""
        from rich.text import Text
        if table.title:
            self.console.print(Text(table.title, style="italic"))
        names = [c.name for c in table.columns[1:]]
        pad = max(map(len, names), default=0)
        for row, cells in zip(table.rows, texts):
            self.console.print(Text(f"{table.columns[0].name} ", style="bold")
                               + Text(cells[0], style=_style(row[0]) or "bold"))
            for name, value, text in zip(names, row[1:], cells[1:]):
                self.console.print(Text(f"  {name:<{pad}}  ") + Text(text, style=_style(value)))
        if table.caption:
            self.console.print(Text(table.caption, style="italic"))


def _longest_word(text: str) -> int:
    from rich.cells import cell_len
    return max((cell_len(word) for word in text.split()), default=0)


def _spread(least: list[int], natural: list[int], room: int) -> list[int]:
    """Column widths from ``least`` up towards ``natural``, one column at a time, within
    ``room``."""
    widths = list(least)
    spare = room - sum(widths)
    while spare > 0:
        wanting = [i for i, width in enumerate(widths) if width < natural[i]]
        if not wanting:
            break
        for i in wanting[:spare]:
            widths[i] += 1
        spare -= len(wanting[:spare])
    return widths


__all__ = ["FORMATS", "Cell", "Column", "Output", "Table", "choose_format", "fields_table",
           "format_option", "grouped", "hexadecimal", "stdout_is_terminal", "write_csv", "write_json",
           "write_tables_csv"]
