"""The Python API (docs/api.md): ``pagewalk.run``, ``pagewalk.replay`` and
``pagewalk.translate`` return what ``pagewalk run/trace/translate --json`` print, take a
scenario in every documented form, raise pagewalk's error tree on bad input, and the
examples of docs/api.md and of the module docstrings run as written."""

from __future__ import annotations

import doctest
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import pagewalk
import pagewalk.api
from pagewalk.cli import main
from pagewalk.trace.formats import pack_records
from tests.test_cli import SCENARIO as SMALL  # the same small scenario the CLI tests run

ROOT = Path(__file__).resolve().parent.parent
API_DOC = ROOT / "docs" / "api.md"
PYCON_BLOCK = re.compile(r"^```pycon\n(.*?)^```", re.DOTALL | re.MULTILINE)
THP_HEAP = 0x7FFFF3E00000      # thp-madvise-64m's 64 MiB mapping (the mappings of its report)


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def heap_stores() -> np.ndarray:
    """One store to each 4 KiB page of thp-madvise-64m's heap."""
    addresses = np.arange(THP_HEAP, THP_HEAP + (64 << 20), 4096, dtype=np.uint64)
    return pack_records(addresses, np.ones(addresses.size, dtype=np.uint64))


# -- the documented examples -------------------------------------------------------------

def test_docs_api_md_examples_run_as_written() -> None:
    """Every ```pycon block of docs/api.md, in order, in one namespace, gives the output
    it shows (the figures on the page are the simulator's)."""
    pytest.importorskip("pandas")
    text = API_DOC.read_text()
    parser = doctest.DocTestParser()
    examples = []
    for match in PYCON_BLOCK.finditer(text):
        first_line = text.count("\n", 0, match.start(1))
        for example in parser.get_examples(match.group(1)):
            example.lineno += first_line
            examples.append(example)
    assert len(examples) > 40, "docs/api.md lost its examples"
    test = doctest.DocTest(examples, {}, "docs/api.md", str(API_DOC), 0, None)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed"


def test_module_docstring_examples_run() -> None:
    """The examples in pagewalk.api's docstrings."""
    result = doctest.testmod(pagewalk.api, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_docs_api_md_is_linked_from_the_readme() -> None:
    assert "docs/api.md" in (ROOT / "README.md").read_text()


# -- the public surface ------------------------------------------------------------------

def test_every_name_in___all___resolves() -> None:
    for name in pagewalk.__all__:
        assert getattr(pagewalk, name) is not None, name
    assert set(pagewalk.__all__) <= set(dir(pagewalk))
    for name in ("run", "replay", "translate"):
        assert callable(getattr(pagewalk, name))


def test_import_pagewalk_loads_only_the_error_tree() -> None:
    """``import pagewalk`` is fast: no simulator, NumPy, Numba, pandas or click."""
    code = ("import sys, pagewalk; print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('pagewalk', 'numpy', 'numba', 'pandas', 'click', 'yaml', 'rich')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert json.loads(out.replace("'", '"')) == ["pagewalk", "pagewalk.errors"]


def test_run_stays_the_function_when_the_run_command_is_imported() -> None:
    """Importing the `pagewalk run` command's module (pagewalk.report.command) leaves
    pagewalk.run the API function (no subpackage shares its name)."""
    import pagewalk.report.command
    assert pagewalk.run is pagewalk.api.run
    from pagewalk import run
    assert run is pagewalk.api.run


# -- run ---------------------------------------------------------------------------------

def test_run_to_dict_is_what_run_json_prints() -> None:
    code, out, _ = cli("run", "anon-4k-write-64m", "--json")
    assert code == 0
    assert pagewalk.run("anon-4k-write-64m").to_dict() == json.loads(out)


def test_run_takes_a_scenario_in_every_documented_form(tmp_path: Path) -> None:
    """A path (str or Path), YAML text, one-line flow YAML, a dict and a Scenario give the
    same report: 1024 faults for 4 MiB of 4 KiB pages, two PTE tables (8 kB)."""
    path = tmp_path / "small.yaml"
    path.write_text(SMALL)
    import yaml
    forms = [str(path), path, SMALL, json.dumps(yaml.safe_load(SMALL)), yaml.safe_load(SMALL),
             pagewalk.load_scenario(path)]
    reports = [pagewalk.run(form).to_dict() for form in forms]
    assert all(report == reports[0] for report in reports)
    figures = reports[0]["measurements"][0]["processes"]["main"]
    assert (figures["minflt"], figures["RssAnon"], figures["VmPTE"]) == (1024, 4096, 8)


def test_a_file_named_like_a_built_in_example_wins(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "anon-4k-write-64m").write_text(SMALL)
    assert pagewalk.run("anon-4k-write-64m").scenario == "small"
    (tmp_path / "thp-madvise-64m").mkdir()          # a directory does not hide the example
    assert pagewalk.run("thp-madvise-64m").scenario == "thp-madvise-64m"


def test_run_show_renders_views_at_each_measure() -> None:
    report = pagewalk.run("anon-4k-write-64m", show="/proc/meminfo")
    assert [list(m.views) for m in report.measurements] == [["/proc/meminfo"]] * 2
    assert "AnonPages:" in report.measurements[0].views["/proc/meminfo"]


def test_to_pandas_is_one_row_per_figure_of_to_dict() -> None:
    pytest.importorskip("pandas")
    report = pagewalk.run("fork-cow-write")
    table = report.to_pandas()
    expected = []
    for m in report.to_dict()["measurements"]:
        for process, figures in m["processes"].items():
            expected += [(m["label"], m["step"], process, k, v) for k, v in figures.items()]
        expected += [(m["label"], m["step"], None, k, v) for k, v in m["system"].items()]
    rows = [(r.measure, r.step, None if not isinstance(r.process, str) else r.process,
             r.field, r.value) for r in table.itertuples()]
    assert rows == expected
    assert {"main", "child"} <= set(table["process"].dropna())


def test_to_pandas_without_pandas_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    report = pagewalk.run(SMALL)
    stats = pagewalk.replay([1 << 62 | 0x1000])
    monkeypatch.setitem(sys.modules, "pandas", None)      # import pandas -> ImportError
    for thing, what in ((report, "Report.to_pandas"), (stats, "TraceStats.to_pandas")):
        with pytest.raises(ImportError) as info:
            thing.to_pandas()
        assert what in str(info.value) and "pip install 'pagewalk[sweep]'" in str(info.value)


def test_run_errors_are_pagewalks_error_tree(tmp_path: Path) -> None:
    with pytest.raises(pagewalk.ScenarioError, match="no such file or built-in example"):
        pagewalk.run("no-such-example")
    with pytest.raises(pagewalk.ScenarioError) as info:
        pagewalk.run(SMALL.replace("touch: {region: a}", "touch: {region: a, access: exec}"))
    assert info.value.location is not None
    assert (info.value.location.file, info.value.location.step) == ("<string>", 1)
    with pytest.raises(pagewalk.ScenarioError, match="<dict>: not scenario data"):
        pagewalk.run({"name": "x", "steps": [{"mmap": {"name": "a", "length": {4096}}}]})
    with pytest.raises(pagewalk.SyscallError) as failed:
        pagewalk.run({"name": "zero", "steps": [{"mmap": {"name": "a", "length": 0}}]})
    assert failed.value.errno == pagewalk.errors.Errno.EINVAL
    with pytest.raises(pagewalk.SignalError):
        pagewalk.run("name: segv\nsteps:\n  - mmap: {name: a, length: 4KiB, prot: none}\n"
                     "  - touch: {region: a}\n")
    with pytest.raises(TypeError):
        pagewalk.run(42)  # type: ignore[arg-type]


# -- replay ------------------------------------------------------------------------------

def test_replay_to_dict_is_what_trace_json_prints(tmp_path: Path) -> None:
    path = tmp_path / "heap.npy"
    np.save(path, heap_stores())
    code, out, _ = cli("trace", str(path), "--scenario", "thp-madvise-64m", "--json")
    assert code == 0
    stats = pagewalk.replay(path, scenario="thp-madvise-64m")
    assert stats.to_dict() == json.loads(out)
    assert (stats.walks, stats.faults) == (32, 32)       # one per 2 MiB page


def test_replay_page_sizes_from_every_source_agree(tmp_path: Path) -> None:
    """2 MiB pages over the heap: from pages=, a scenario, ranges, a PageSizeMap and a
    page-map file, each 32 faults for 64 MiB."""
    words = heap_stores()
    ranges = [(THP_HEAP, THP_HEAP + (64 << 20), 21)]
    page_map_file = tmp_path / "pages.json"
    page_map_file.write_text(json.dumps([{"start": hex(THP_HEAP), "end": hex(ranges[0][1]),
                                          "page_shift": 21}]))
    from pagewalk.trace.replay import PageSizeMap
    runs = [pagewalk.replay(words, pages="2MiB"),
            pagewalk.replay(words, scenario="thp-madvise-64m", at="after-touch"),
            pagewalk.replay(words, page_map=ranges),
            pagewalk.replay(words, page_map=PageSizeMap.from_ranges(ranges)),
            pagewalk.replay(words, page_map=page_map_file)]
    assert {(s.walks, s.faults, s.l1_hits) for s in runs} == {(32, 32, 16352)}
    assert pagewalk.replay(words, tlb="skylake").model == "skylake"


def test_replay_to_pandas_is_one_row_with_the_sweep_columns() -> None:
    pytest.importorskip("pandas")
    stats = pagewalk.replay(heap_stores())
    row = stats.to_pandas()
    assert len(row) == 1
    assert int(row.loc[0, "faults"]) == 16384
    assert int(row.loc[0, "tlb.L1 dTLB 4K.misses"]) == 16384


def test_replay_errors_are_pagewalks_error_tree() -> None:
    words = heap_stores()
    with pytest.raises(pagewalk.ConfigError, match="both choose the page sizes"):
        pagewalk.replay(words, pages="2MiB", page_map=[(0, 1 << 21, 21)])
    with pytest.raises(pagewalk.ConfigError, match="process and at need a scenario"):
        pagewalk.replay(words, at="after-touch")
    with pytest.raises(pagewalk.ConfigError, match="bad page-size map"):
        pagewalk.replay(words, page_map=[(0, 4096, 21)])
    with pytest.raises(pagewalk.ConfigError, match="no such TLB model"):
        pagewalk.replay(words, tlb="nehalem")
    with pytest.raises(pagewalk.TraceError, match="no such trace file"):
        pagewalk.replay("no-such-trace.pwt")
    with pytest.raises(pagewalk.TraceError, match="pages must be"):
        pagewalk.replay(words, pages="3KiB")
    with pytest.raises(pagewalk.ScenarioError, match="no measure labelled"):
        pagewalk.replay(words, scenario="thp-madvise-64m", at="nowhere")


# -- translate ---------------------------------------------------------------------------

def test_translate_to_dict_is_what_translate_json_prints() -> None:
    code, out, _ = cli("translate", "heap+0x201000", "--scenario", "thp-madvise-64m",
                       "--at", "after-touch", "--access", "write", "--json")
    assert code == 0
    printed = json.loads(out)
    walk = pagewalk.translate("heap+0x201000", scenario="thp-madvise-64m", at="after-touch",
                              access="write")
    assert walk.to_dict() == {k: v for k, v in printed.items() if k not in ("scenario", "at")}
    assert (walk.refs, walk.page_shift) == (3, 21)       # a PMD leaf: PML4, PDPT, PD


def test_translate_errors_are_pagewalks_error_tree() -> None:
    with pytest.raises(pagewalk.ConfigError, match="access must be one of"):
        pagewalk.translate(0x1000, access="fly")
    with pytest.raises(pagewalk.ConfigError, match="not a number, nor a mapping"):
        pagewalk.translate("nothere+1", scenario="thp-madvise-64m")
    with pytest.raises(pagewalk.ConfigError, match="not a 64-bit address"):
        pagewalk.translate(1 << 64)
    with pytest.raises(pagewalk.ScenarioError, match="no process 'ghost'"):
        pagewalk.translate(0x1000, scenario="thp-madvise-64m", process="ghost")
    assert pagewalk.translate(0x1000).outcome == "page fault"   # nothing maps page 1


def test_replay_takes_a_sample_trace_by_name() -> None:
    """A shipped sample trace is found by its name, as `pagewalk trace NAME` finds it."""
    from pagewalk.scenario.examples import sample_trace
    path = sample_trace("mixed-200k.pwt")
    assert path is not None
    by_name = pagewalk.replay("mixed-200k.pwt", pages="2MiB").to_dict()
    assert by_name == pagewalk.replay(path, pages="2MiB").to_dict()
    assert by_name["accesses"] == 200_000
