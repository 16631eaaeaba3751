"""Plots: categories in reading order (sizes by size), points averaged over the rows that
meet there, error rows left out, and a missing column named."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from pagewalk.errors import ScenarioError
from pagewalk.sweep.plot import FIGURE_DPI, FIGURE_INCHES, plot_table, points, reading_order
from pagewalk.sweep.spec import PlotSpec

TABLE = pd.DataFrame({
    "run": [0, 1, 2, 3, 4, 5],
    "pages": ["2MiB", "4KiB", "1GiB", "2MiB", "4KiB", "1GiB"],
    "trace": ["a", "a", "a", "b", "b", "b"],
    "walks": [10, 40, 1, 30, 80, None],
    "error": [None, None, None, None, None, "EINVAL"],
})


def test_sizes_are_read_in_size_order_and_other_values_as_they_come() -> None:
    assert reading_order(["2MiB", "4KiB", "1GiB", "4KiB"]) == ["4KiB", "2MiB", "1GiB"]
    assert reading_order([64, 8, 4096]) == [8, 64, 4096]
    assert reading_order(["never", "always"]) == ["never", "always"]


def test_points_average_the_rows_at_one_x_and_leave_out_error_rows() -> None:
    xs, series = points(TABLE, PlotSpec(file="x.png", x="pages", y="walks"))
    assert xs == ["4KiB", "2MiB", "1GiB"]
    assert series == {"": [60.0, 20.0, 1.0]}
    xs, series = points(TABLE, PlotSpec(file="x.png", x="pages", y="walks", hue="trace"))
    assert series["a"] == [40.0, 10.0, 1.0]
    assert series["b"][:2] == [80.0, 30.0] and pd.isna(series["b"][2])


def test_where_keeps_the_matching_rows() -> None:
    _, series = points(TABLE, PlotSpec(file="x.png", x="pages", y="walks",
                                       where={"trace": "b"}))
    assert series[""][:2] == [80.0, 30.0]


@pytest.mark.parametrize("kind", ["bar", "line"])
def test_a_plot_is_an_image_of_the_figure_size(tmp_path: Path, kind: str) -> None:
    path = plot_table(TABLE, PlotSpec(file="p.png", x="pages", y="walks", hue="trace",
                                      kind=kind, logy=True), tmp_path / "p.png")
    assert path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.size == (FIGURE_INCHES[0] * FIGURE_DPI, FIGURE_INCHES[1] * FIGURE_DPI)


def test_a_missing_column_is_named_with_the_ones_there() -> None:
    with pytest.raises(ScenarioError) as info:
        points(TABLE, PlotSpec(file="x.png", x="pages", y="stlb_miss_rate"))
    assert "stlb_miss_rate" in info.value.message and "walks" in info.value.message


def test_no_value_to_plot_is_an_error_not_an_empty_figure() -> None:
    with pytest.raises(ScenarioError, match="no row without an error"):
        points(TABLE, PlotSpec(file="x.png", x="pages", y="walks", where={"trace": "c"}))
