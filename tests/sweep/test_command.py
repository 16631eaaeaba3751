"""`pagewalk sweep` and `pagewalk plot`: standard output holds the JSON and nothing else,
the table file matches it, plots are written and open as images, and bad input is one
line naming the file and field with exit status 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from pagewalk.cli import main
from pagewalk.sweep.plot import FIGURE_DPI, FIGURE_INCHES

DATA = Path(__file__).resolve().parent.parent / "data"
TRACE = DATA / "traces" / "mixed-200k.pwt"
PIXELS = (int(FIGURE_INCHES[0] * FIGURE_DPI), int(FIGURE_INCHES[1] * FIGURE_DPI))

SWEEP = """name: pages
base: {trace: mixed.pwt}
grid:
  pages: [4KiB, 2MiB, 1GiB]
list:
  - {tlb: reference}
  - {tlb: zen}
plots:
  - {file: stlb.png, x: pages, y: stlb_miss_rate, logy: true}
"""


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def sweep_dir(tmp_path: Path, text: str = SWEEP) -> Path:
    (tmp_path / "mixed.pwt").symlink_to(TRACE)
    (tmp_path / "sweep.yaml").write_text(text)
    return tmp_path


@pytest.fixture(scope="module")
def results(client: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The sweep run through the CLI on the test cluster (--scheduler), as JSON and Parquet."""
    directory = sweep_dir(tmp_path_factory.mktemp("cli"))
    code, out, err = invoke("sweep", str(directory / "sweep.yaml"), "--json",
                            "--scheduler", client.scheduler.address,
                            "-o", str(directory / "out" / "table.parquet"))
    assert code == 0, err
    return directory / "out", json.loads(out)


def test_sweep_json_is_the_only_output_and_matches_the_table_file(
        results: tuple[Path, dict[str, Any]]) -> None:
    directory, report = results
    assert report["sweep"] == "pages" and report["runs"] == 6 and report["failed"] == 0
    table = pd.read_parquet(directory / "table.parquet")
    assert list(table["pages"]) == ["4KiB", "2MiB", "1GiB"] * 2
    assert list(table["tlb"]) == ["reference"] * 3 + ["zen"] * 3
    for row, record in zip(table.to_dict(orient="records"), report["rows"]):
        assert set(row) == set(record)
        for name in ("accesses", "walks", "stlb_miss_rate", "tlb.STLB 4K+2M.hits"):
            assert row[name] == record[name]
    assert [r["walks"] for r in report["rows"][:3]] == [190165, 548, 3]   # expected.json


@pytest.mark.parametrize("run", [1, 3])
def test_a_trace_row_is_the_report_of_pagewalk_trace_json(
        results: tuple[Path, dict[str, Any]], run: int) -> None:
    _, report = results
    row = report["rows"][run]
    code, out, err = invoke("trace", str(TRACE), "--json", "--pages", row["pages"],
                            "--tlb", row["tlb"])
    assert code == 0, err
    for name, value in json.loads(out).items():
        if isinstance(value, dict):
            for array, counts in value.items():
                for counter, number in counts.items():
                    assert row[f"{name}.{array}.{counter}"] == number
        else:
            assert row[name] == value, name


def image_size(path: Path) -> tuple[int, int]:
    assert path.stat().st_size > 0
    with Image.open(path) as image:
        image.load()
        return image.size


def test_the_sweep_draws_its_plots_beside_the_table(
        results: tuple[Path, dict[str, Any]]) -> None:
    directory, _ = results
    assert image_size(directory / "stlb.png") == PIXELS


def test_plot_draws_a_png_from_the_table(results: tuple[Path, dict[str, Any]]) -> None:
    directory, _ = results
    out = directory / "walks.png"
    code, _, err = invoke("plot", str(directory / "table.parquet"), "--x", "pages",
                          "--y", "walk_refs_per_walk", "--hue", "trace", "-o", str(out))
    assert code == 0, err
    assert image_size(out) == PIXELS


def test_plot_draws_an_svg_from_a_csv(results: tuple[Path, dict[str, Any]]) -> None:
    directory, _ = results
    pd.read_parquet(directory / "table.parquet").to_csv(directory / "table.csv", index=False)
    out = directory / "l1.svg"
    code, _, err = invoke("plot", str(directory / "table.csv"), "--x", "pages", "--y",
                          "l1_miss_rate", "--where", "engine=fast", "--kind", "line",
                          "-o", str(out))
    assert code == 0, err
    assert "<svg" in out.read_text()


def test_plot_names_the_file_and_the_missing_column(
        results: tuple[Path, dict[str, Any]]) -> None:
    directory, _ = results
    code, out, err = invoke("plot", str(directory / "table.parquet"), "--x", "page_size",
                            "--y", "walks", "-o", str(directory / "x.png"))
    assert code == 2 and out == ""
    assert "table.parquet" in err and "page_size" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 or "columns:" in err


def test_a_bad_sweep_file_is_one_line_naming_the_file_and_field(tmp_path: Path) -> None:
    directory = sweep_dir(tmp_path, SWEEP.replace("pages: [", "page: ["))
    code, out, err = invoke("sweep", str(directory / "sweep.yaml"), "--dry-run")
    assert code == 2 and out == ""
    assert "sweep.yaml" in err and "field 'grid.page'" in err and "Traceback" not in err


def test_dry_run_lists_the_runs_without_a_cluster(tmp_path: Path) -> None:
    directory = sweep_dir(tmp_path)
    code, out, _ = invoke("sweep", str(directory / "sweep.yaml"), "--dry-run")
    assert code == 0
    assert "6 runs" in out and "1GiB" in out and "zen" in out


def test_workers_and_scheduler_exclude_each_other(tmp_path: Path) -> None:
    directory = sweep_dir(tmp_path)
    code, _, err = invoke("sweep", str(directory / "sweep.yaml"), "--workers", "2",
                          "--scheduler", "tcp://127.0.0.1:1")
    assert code == 2 and "--workers" in err


def test_a_sweep_starts_and_closes_its_own_local_cluster(tmp_path: Path) -> None:
    """No scheduler given: a local cluster (here of 1 worker) is started and closed; the
    readable summary goes to standard output."""
    directory = sweep_dir(tmp_path, SWEEP.replace("[4KiB, 2MiB, 1GiB]", "[2MiB]"))
    code, out, err = invoke("sweep", str(directory / "sweep.yaml"), "--workers", "1",
                            "--no-plots")
    assert code == 0, err
    assert "2 runs, 0 failed" in out and "on 1 worker\n" in out
    assert err == ""
