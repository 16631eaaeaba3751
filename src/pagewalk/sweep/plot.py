"""Plots of a sweep's table with Matplotlib (the Agg canvas; no pyplot, no global state).

:func:`plot_table` draws ``y`` against ``x``, one series per ``hue`` value, over the rows
without an error that match ``where``; rows that meet at one (x, hue) point are averaged
(a sweep that varies a third parameter not on the plot shows its mean). Categories are
put in a reading order: sizes (``4KiB`` < ``2MiB`` < ``1GiB``) and numbers by value,
anything else in the order of the table. Bars for categories, lines for numbers, unless
``kind`` says otherwise. PNG, SVG or PDF, by the file's suffix; its directory is made if
missing. Degenerate data draws without a Matplotlib warning: infinities are left out like
missing values, and a log axis with no value above 0 stays linear (the title says so).

:func:`standard_plots` are the figures a sweep draws when its file names none: for
trace sweeps the STLB and L1 miss rates (log scale) and the references per walk, by page size if
the sweep varies it (else the first parameter), one series per next parameter (per
trace, say); for scenario sweeps VmPTE, VmRSS, AnonHugePages and minflt of ``main`` at
the last measurement, by the parameter with the most values, per the next one; for
recording sweeps AnonHugePages, VmPTE, STLB misses, walk references, minflt and RssAnon
at the program's exit, by THP mode if the sweep varies it (else the first parameter),
one series per next parameter (per TLB preset, say).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pagewalk.errors import OutputError, ScenarioError
from pagewalk.sweep.spec import PLOT_SUFFIXES, PlotSpec, RecordingBase, ScenarioBase, Sweep
from pagewalk.units import parse_size

if TYPE_CHECKING:
    import pandas as pd

FIGURE_INCHES = (8.0, 5.0)
FIGURE_DPI = 100
TRACE_FIGURES = ("stlb_miss_rate", "l1_miss_rate", "walk_refs_per_walk")
SCENARIO_FIGURES = ("VmPTE", "VmRSS", "AnonHugePages", "minflt")
RECORDING_FIGURES = ("AnonHugePages", "VmPTE", "stlb_misses", "walk_refs", "minflt", "RssAnon")
LOG_FIGURES = ("stlb_miss_rate", "l1_miss_rate")      # they span orders of magnitude


# -- choosing rows and points ------------------------------------------------------------

def _require_column(table: pd.DataFrame, column: str, option: str) -> None:
    if column not in table.columns:
        known = ", ".join(str(c) for c in table.columns)
        raise ScenarioError(f"{option}: no column {column!r} in the results; columns: {known}")


def selected_rows(table: pd.DataFrame, where: dict[str, Any]) -> pd.DataFrame:
    """The rows without an error whose columns equal ``where``'s values (compared as text,
    so ``2MiB`` matches however the column is typed)."""
    rows = table
    if "error" in rows.columns:
        rows = rows[rows["error"].isna()]
    for column, value in where.items():
        _require_column(table, column, "where")
        rows = rows[rows[column].astype(str) == str(value)]
    return rows


def reading_order(values: Sequence[Any]) -> list[Any]:
    """Distinct values: by size if all are sizes, by value if all are numbers, else as
    they come."""
    distinct = list(dict.fromkeys(values))
    sizes = [_size_or_none(v) for v in distinct]
    known = [size for size in sizes if size is not None]
    if distinct and len(known) == len(distinct):
        return [v for _, v in sorted(zip(known, distinct), key=lambda pair: pair[0])]
    return distinct


def _size_or_none(value: Any) -> int | None:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if hasattr(value, "item"):          # NumPy scalars
        value = value.item()
    try:
        return parse_size(value)
    except (ValueError, TypeError):
        return None


def _is_numeric(values: Sequence[Any]) -> bool:
    return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                for v in values)


def points(table: pd.DataFrame, spec: PlotSpec) -> tuple[list[Any], dict[str, list[float]]]:
    """The x values in reading order and, per hue value, y at each x (NaN where none)."""
    import pandas as pd
    for column, option in ((spec.x, "x"), (spec.y, "y"), (spec.hue, "hue")):
        if column is not None:
            _require_column(table, column, option)
    rows = selected_rows(table, spec.where)
    y = pd.to_numeric(rows[spec.y], errors="coerce")
    finite = y.notna() & y.abs().lt(float("inf"))     # an infinity has no place on an axis
    rows = rows.assign(_y=y)[finite]
    if rows.empty:
        raise ScenarioError(f"y: no row without an error has a finite number in {spec.y!r}"
                            + (f" where {spec.where}" if spec.where else ""))
    keys = [spec.x] if spec.hue is None else [spec.x, spec.hue]
    means = rows.groupby(keys, sort=False, dropna=False)["_y"].mean()
    xs = reading_order(rows[spec.x].tolist())
    hues = reading_order(rows[spec.hue].tolist()) if spec.hue else [None]
    series: dict[str, list[float]] = {}
    for hue in hues:
        values = []
        for x in xs:
            key = x if hue is None else (x, hue)
            values.append(float(means[key]) if key in means.index else float("nan"))
        series["" if hue is None else str(hue)] = values
    return xs, series


# -- drawing -----------------------------------------------------------------------------

def plot_table(table: pd.DataFrame, spec: PlotSpec, path: str | Path) -> Path:
    """Draw ``spec`` from ``table`` into ``path``; raises ScenarioError on a missing
    column or when no row has a value to plot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in PLOT_SUFFIXES:
        raise ScenarioError(f"a plot file ends in {', '.join(PLOT_SUFFIXES)}, got {str(path)!r}")
    xs, series = points(table, spec)
    kind = spec.kind or ("line" if _is_numeric(xs) and len(xs) > 1 else "bar")
    figure = Figure(figsize=FIGURE_INCHES, dpi=FIGURE_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if kind == "bar":
        _bars(axes, xs, series)
    else:
        _lines(axes, xs, series)
    axes.set_xlabel(spec.x)
    axes.set_ylabel(spec.y)
    title = spec.title or _title(spec)
    if spec.logy and not _any_positive(series):
        title += " (linear: no value above 0 for a log axis)"
    elif spec.logy:
        axes.set_yscale("log")
    axes.set_title(title)
    if spec.hue is not None:
        axes.legend(title=spec.hue)
    axes.grid(axis="y", alpha=0.3)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, format=suffix[1:])
    except OSError as err:
        raise OutputError.writing(path, err) from None
    return path


def _any_positive(series: dict[str, list[float]]) -> bool:
    """Whether a log axis has something to show (Matplotlib warns and draws nothing
    when every value is 0, negative or missing)."""
    return any(value > 0 for values in series.values() for value in values)


def _bars(axes: Any, xs: list[Any], series: dict[str, list[float]]) -> None:
    width = 0.8 / len(series)
    for position, (label, values) in enumerate(series.items()):
        offsets = [i - 0.4 + width * (position + 0.5) for i in range(len(xs))]
        axes.bar(offsets, values, width=width, label=label or None)
    axes.set_xticks(range(len(xs)), [str(x) for x in xs])


def _lines(axes: Any, xs: list[Any], series: dict[str, list[float]]) -> None:
    numeric = _is_numeric(xs)
    positions = xs if numeric else list(range(len(xs)))
    for label, values in series.items():
        axes.plot(positions, values, marker="o", label=label or None)
    if not numeric:
        axes.set_xticks(range(len(xs)), [str(x) for x in xs])


def _title(spec: PlotSpec) -> str:
    title = f"{spec.y} by {spec.x}" + (f" per {spec.hue}" if spec.hue else "")
    if spec.where:
        title += " (" + ", ".join(f"{k}={v}" for k, v in spec.where.items()) + ")"
    return title


# -- a sweep's own plots -----------------------------------------------------------------

def standard_plots(sweep: Sweep, table: pd.DataFrame) -> list[PlotSpec]:
    """The sweep file's ``plots``, or the standard figures of its kind of base."""
    if sweep.plots:
        return list(sweep.plots)
    varied = [column for column in sweep.parameters if column in table.columns
              and table[column].nunique(dropna=True) > 1]
    if not varied:
        return []
    if isinstance(sweep.base, ScenarioBase):
        return _scenario_plots(sweep, table, varied)
    if isinstance(sweep.base, RecordingBase):
        return _replay_plots(sweep, varied, "thp", RECORDING_FIGURES)
    return _replay_plots(sweep, varied, "pages", TRACE_FIGURES)


def _replay_plots(sweep: Sweep, varied: list[str], first: str,
                  figures: tuple[str, ...]) -> list[PlotSpec]:
    """One row per run: ``figures`` by ``first`` if it varies (else the first varied
    parameter), one series per the next varied parameter."""
    x = first if first in varied else varied[0]
    hues = [column for column in varied if column != x]
    hue = hues[0] if hues else None
    return [PlotSpec(file=f"{sweep.name}-{y}.png", x=x, y=y, hue=hue, logy=y in LOG_FIGURES)
            for y in figures]


def _scenario_plots(sweep: Sweep, table: pd.DataFrame, varied: list[str]) -> list[PlotSpec]:
    ok = selected_rows(table, {})
    where: dict[str, Any] = {}
    if "process" in ok.columns and (ok["process"] == "main").any():
        where["process"] = "main"
        ok = ok[ok["process"] == "main"]
    if "label" in ok.columns and ok["label"].notna().any():
        first_run = ok["run"].iloc[0]
        where["label"] = ok[ok["run"] == first_run]["label"].iloc[-1]
    x = max(varied, key=lambda column: table[column].nunique(dropna=True))
    hues = [column for column in varied if column != x]
    hue = hues[0] if hues else None
    return [PlotSpec(file=f"{sweep.name}-{y}.png", x=x, y=y, hue=hue, where=where)
            for y in SCENARIO_FIGURES if y in table.columns]


def write_plots(sweep: Sweep, table: pd.DataFrame, directory: str | Path) -> list[Path]:
    """Draw the sweep's plots into ``directory``; a plot that cannot be drawn raises
    ScenarioError naming the sweep file and the plot."""
    directory = Path(directory)
    written = []
    for position, spec in enumerate(standard_plots(sweep, table)):
        try:
            written.append(plot_table(table, spec, directory / spec.file))
        except ScenarioError as err:
            from pagewalk.errors import Location
            where = f"plots[{position}]" if sweep.plots else f"standard plot {spec.file}"
            raise err.at(Location(sweep.file, None, where)) from None
    return written


__all__ = ["plot_table", "points", "reading_order", "selected_rows", "standard_plots",
           "write_plots"]
