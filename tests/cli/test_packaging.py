"""What a fresh `pip install .` gives: machine code built at install (found by contents, not
file times; a compile announced), the core without the `sweep` extra (and one line naming
the extra when a command needs it), sample traces and example sweeps usable from any
directory, `pagewalk examples NAME`, shell completion, `-V`, and the README saying so."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import click
import pytest
from click.shell_completion import BashComplete
from click.testing import CliRunner

import pagewalk.machine  # noqa: F401  (registers every @compiled function, as every command)
from pagewalk import cli_common
from pagewalk.cli import main
from pagewalk.extras import EXTRA_OF_MODULE
from pagewalk.hw import compiled
from pagewalk.scenario.examples import list_example_sweeps, list_examples, list_sample_traces
from pagewalk.scenario.schema import parse_scenario
from pagewalk.sweep.runs import TraceConfig, expand_runs
from pagewalk.sweep.spec import load_sweep, resolve_sweep
from pagewalk.trace import kernels

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = json.loads((ROOT / "tests/data/traces/expected.json").read_text())
UNCOMPILED = os.environ.get("NUMBA_DISABLE_JIT", "0") not in ("", "0")
needs_jit = pytest.mark.skipif(UNCOMPILED, reason="NUMBA_DISABLE_JIT=1: nothing is compiled")
installed = pytest.mark.skipif(not compiled.shipped_dir().is_dir(),
                               reason="pagewalk runs from its sources (an editable install): "
                                      "no machine code was built at install")
ANNOUNCE = "pagewalk: compiling "


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), prog_name="pagewalk")
    return result.exit_code, result.stdout, result.stderr


#: the modules whose @compiled code only `replay` registers (setup.py EXTRA_SETS): a set of
#: its own, shipped beside every command's
REPLAY_ONLY = ("pagewalk.record.",)


def entries(replay: bool = False) -> list[str]:
    """The @compiled entries every command loads (hw/compiled.py _use_native); ``replay``:
    those `replay` loads, its access loop's included. (This test process has imported
    every test module, so the registry holds both.)"""
    return sorted(k for k, kernel in compiled._State.kernels.items() if kernel.entry is not None
                  and (replay or not kernel.module.startswith(REPLAY_ONLY)))


def fault_path_code(replay: bool = False) -> Path:
    """The fault path's machine code for this machine (built first if need be), without
    its suffix; ``replay``: the set `replay` loads."""
    assert compiled.mode() == "native"
    name = compiled.machine_code_name(entries(replay))
    for directory in (compiled.shipped_dir(), compiled.cache_dir()):
        if (directory / name).with_suffix(".so").exists() or \
                compiled._read_object((directory / name).with_suffix(".o")) is not None:
            return directory / name
    raise AssertionError(f"{name} neither in the package nor in the cache")


def python(script: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != "NUMBA_DISABLE_JIT"}
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                          text=True, timeout=600, check=True, env={**clean, **env})


# -- machine code: the package's copy, then the user's cache, then a compile announced -------

LOAD_FAULT_PATH = """
import json, sys
from pathlib import Path
from pagewalk.hw import compiled
compiled.shipped_dir = lambda: Path(sys.argv[1])
import pagewalk.machine
for extra in sys.argv[2:]:
    __import__(extra)
print(json.dumps({"mode": compiled.mode(), "numba": "numba" in sys.modules}))
"""

LOAD_TRACE = """
import json, sys
from pathlib import Path
from pagewalk.trace import kernels
kernels.shipped_dir = lambda: Path(sys.argv[1])
print(json.dumps({"source": kernels.compiled().source, "numba": "numba" in sys.modules}))
"""


@needs_jit
@pytest.mark.parametrize("replay", [
    False, pytest.param(True, marks=installed)], ids=["every-command", "replay"])
def test_machine_code_in_the_package_is_used_with_an_empty_cache(tmp_path: Path,
                                                                 replay: bool) -> None:
    """A process whose user cache is empty loads the fault path's machine code from the
    package (where setup.py builds it at install, `replay`'s set too): Numba is not
    imported, nothing is compiled or announced, nothing is written to the cache."""
    package, cache = tmp_path / "package", tmp_path / "cache"
    package.mkdir()
    code = fault_path_code(replay)
    for suffix in (".so", ".o"):
        if code.with_suffix(suffix).exists():
            shutil.copy(code.with_suffix(suffix), package)
    extra = ["pagewalk.record.fastloop"] if replay else []
    done = python(LOAD_FAULT_PATH, str(package), *extra, env={"PAGEWALK_CACHE_DIR": str(cache)})
    assert json.loads(done.stdout) == {"mode": "native", "numba": False}
    assert ANNOUNCE not in done.stderr
    assert not cache.exists() or not any(cache.iterdir())


@needs_jit
def test_trace_machine_code_in_the_package_is_used_with_an_empty_cache(tmp_path: Path) -> None:
    """The same for the trace replay's drivers."""
    import llvmlite.binding as llvm  # type: ignore[import-untyped]
    package, cache = tmp_path / "package", tmp_path / "cache"
    package.mkdir()
    assert kernels.compiled().source == "native"
    found = kernels.find_object(kernels.cache_key(llvm))
    assert found is not None
    shutil.copy(found, package)
    done = python(LOAD_TRACE, str(package), env={"PAGEWALK_CACHE_DIR": str(cache)})
    assert json.loads(done.stdout) == {"source": "native", "numba": False}
    assert ANNOUNCE not in done.stderr
    assert not cache.exists() or not any(cache.iterdir())


@needs_jit
def test_a_packaged_copy_made_elsewhere_is_passed_over(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy in the package made for another key (another CPU, other sources) or that
    does not load is not used: the user's cache is looked at next."""
    import llvmlite.binding as llvm
    key = kernels.cache_key(llvm)
    kernels.compiled()
    real = kernels.find_object(key)
    assert real is not None
    code = kernels._read_object(real, key)
    assert code is not None
    package, cache = tmp_path / "package", tmp_path / "cache"
    monkeypatch.setenv("PAGEWALK_CACHE_DIR", str(cache))
    monkeypatch.setattr(kernels, "shipped_dir", lambda: package)
    monkeypatch.setattr(compiled, "shipped_dir", lambda: package)
    kernels._write_object(package / real.name, key + " another CPU", code)
    assert kernels.find_object(key) is None
    kernels._write_object(cache / real.name, key, code)
    assert kernels.find_object(key) == cache / real.name
    name = compiled.machine_code_name(entries())
    (package / name).with_suffix(".so").write_bytes(b"\x7fELF not a library")
    assert compiled._load_native(package / name, entries()) is None


def test_the_machine_codes_keys_follow_contents_not_file_times(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Installing gives every source a new time, so the keys (which the packaged machine
    code must match after `pip install`) read contents only: a new time keeps the key, a
    new content changes it."""
    import llvmlite.binding as llvm
    source = tmp_path / "fast.py"
    source.write_text("x = 1\n")
    monkeypatch.setattr(kernels, "_SOURCES", (str(source),))
    monkeypatch.setattr(compiled, "_source_files", lambda entries: [source])
    before = (kernels.cache_key(llvm), compiled.machine_code_name(entries()))
    os.utime(source, (time.time() - 86400, time.time() - 86400))
    assert (kernels.cache_key(llvm), compiled.machine_code_name(entries())) == before
    source.write_text("x = 2\n")
    after = (kernels.cache_key(llvm), compiled.machine_code_name(entries()))
    assert after[0] != before[0] and after[1] != before[1]


def test_a_compile_is_announced_on_stderr_before_it_starts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """With neither the package nor the cache holding the machine code, the compile (a
    minute or more) is announced first, with its expected length."""
    monkeypatch.setenv("PAGEWALK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(compiled, "shipped_dir", lambda: tmp_path / "package")
    monkeypatch.setattr(kernels, "shipped_dir", lambda: tmp_path / "package")

    def stop(*args: Any) -> Any:
        raise RuntimeError("compile stopped here")

    monkeypatch.setattr(compiled, "build_object", stop)
    monkeypatch.setattr(kernels, "build_object", stop)
    with pytest.raises(RuntimeError, match="compile stopped here"):
        compiled._use_native()
    assert capsys.readouterr().err == (f"{ANNOUNCE}the simulator's machine code "
                                       f"(once, ~{compiled.BUILD_SECONDS} s)...\n")
    with pytest.raises(RuntimeError, match="compile stopped here"):
        kernels._native()
    assert capsys.readouterr().err == (f"{ANNOUNCE}the trace replay's machine code "
                                       f"(once, ~{kernels.BUILD_SECONDS} s)...\n")


@installed
@needs_jit
def test_the_installed_package_ships_machine_code_for_this_machine() -> None:
    """`pip install .` built both machine codes into the package, for this CPU and these
    sources and Numba."""
    import llvmlite.binding as llvm
    name = compiled.machine_code_name(entries())
    assert (compiled.shipped_dir() / name).with_suffix(".so").exists() or \
        compiled._read_object((compiled.shipped_dir() / name).with_suffix(".o")) is not None
    found = kernels.find_object(kernels.cache_key(llvm))
    assert found is not None and found.parent == compiled.shipped_dir()


@installed
@needs_jit
def test_a_fresh_installs_first_run_compiles_nothing(tmp_path: Path) -> None:
    """The first `pagewalk run anon-4k-write-64m` with an empty cache and home compiles
    nothing: it loads the machine code the install built (the time it takes is
    benchmarks/bench_first_run.py's figure, not a test's)."""
    (tmp_path / "cache").mkdir()
    (tmp_path / "home").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_DISABLE_JIT"}
    env.update(PAGEWALK_CACHE_DIR=str(tmp_path / "cache"), HOME=str(tmp_path / "home"))
    command = [sys.executable, "-m", "pagewalk", "run", "anon-4k-write-64m"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env,
                          cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr
    assert ANNOUNCE not in done.stderr
    assert not any((tmp_path / "cache").iterdir())


# -- the sweep extra ---------------------------------------------------------------------------

def test_pyproject_puts_sweeps_packages_in_the_sweep_extra_only() -> None:
    """Dask, pandas, PyArrow and Matplotlib are the `sweep` extra, not core dependencies;
    Plotly stays in the core (the web view serves its plotly.js); the test extra installs
    the sweep extra (the README's test command needs everything)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        return {re.split(r"[\[<>=!~ ]", r, maxsplit=1)[0].lower() for r in requirements}

    extras = project["optional-dependencies"]
    assert names(extras["sweep"]) == {"dask", "pandas", "pyarrow", "matplotlib"}
    assert set(EXTRA_OF_MODULE) == {"dask", "distributed", "pandas", "pyarrow", "matplotlib"}
    assert not names(project["dependencies"]) & set(EXTRA_OF_MODULE)
    assert "plotly" in names(project["dependencies"])
    assert "pagewalk[sweep]" in extras["test"]
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    assert {"numba", "numpy", "llvmlite"} <= names(build)


CORE_WITHOUT_EXTRAS = """
import json, sys
from pagewalk.cli import main
for args in (["run", "thp-madvise-64m"], ["examples"], ["trace", "true.lackey", "--json"],
             ["translate", "heap+0x201000", "--scenario", "thp-madvise-64m"],
             ["pagetable-cost", "--scenario", "fork-cow-write"]):
    try:
        main(args, standalone_mode=False)
    except SystemExit as stop:
        assert not stop.code, (args, stop.code)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in sys.argv[1:])))
"""


def test_the_core_commands_import_nothing_of_the_sweep_extra(tmp_path: Path) -> None:
    """run, examples, trace, translate and pagetable-cost work without the extra: they
    never import its packages."""
    done = python(CORE_WITHOUT_EXTRAS, *EXTRA_OF_MODULE, env={})
    assert json.loads(done.stdout.splitlines()[-1]) == []


def hide_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every package of the extra impossible to import, as if not installed."""
    for module in EXTRA_OF_MODULE:
        monkeypatch.setitem(sys.modules, module, None)


@pytest.mark.parametrize("args", [
    ("sweep", "thp-pte-cost"),
    ("plot", "results.parquet", "--x", "length", "--y", "VmPTE", "-o", "out.png"),
])
def test_sweep_and_plot_without_the_extra_name_it_in_one_line(
        args: tuple[str, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    hide_extras(monkeypatch)
    code, out, err = run(*args)
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0
    assert f"`pagewalk {args[0]}` needs" in err and "pip install '.[sweep]'" in err


def test_a_sweeps_dry_run_needs_no_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    hide_extras(monkeypatch)
    code, out, _ = run("sweep", "thp-pte-cost", "--dry-run")
    assert code == 0 and "thp-pte-cost: 8 runs" in out      # 2 THP modes x 4 lengths


@click.command("needs-matplotlib")
@cli_common.reports_errors
def needs_matplotlib() -> None:
    import matplotlib  # noqa: F401


@click.command("needs-nothing-known")
@cli_common.reports_errors
def needs_unknown() -> None:
    import pagewalk_no_such_module  # type: ignore[import-not-found]  # noqa: F401


def test_an_import_of_a_missing_extra_anywhere_is_one_line_exit_2(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever imports a package of an extra, the command says which extra to install
    (exit 2); any other failed import is still an internal error (exit 70)."""
    hide_extras(monkeypatch)
    monkeypatch.delenv("PAGEWALK_DEBUG", raising=False)
    result = CliRunner().invoke(needs_matplotlib, [])
    assert result.exit_code == 2
    assert "`pagewalk` needs matplotlib, which is not installed: " \
           "pip install '.[sweep]'" in result.stderr
    assert CliRunner().invoke(needs_unknown, []).exit_code == 70


# -- sample traces and example sweeps from any directory ------------------------------------

def readme_block(title: str) -> list[list[str]]:
    """The commands of the first ```sh block under the README heading ``title``."""
    text = (ROOT / "README.md").read_text()
    section = text.split(f"\n## {title}\n", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def test_the_readmes_trace_examples_run_from_any_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each of the README's trace examples (but --record, which needs valgrind) runs in an
    empty directory: the traces it names are the package's sample traces."""
    monkeypatch.chdir(tmp_path)
    commands = [c for c in readme_block("Trace replay") if "--record" not in c]
    assert len(commands) == 2
    for command in commands:
        assert command[0] == "pagewalk"
        code, out, err = run(*command[1:])
        assert code == 0, (command, err)
    code, out, _ = run("trace", "true.lackey", "--pages", "2MiB", "--json")
    report = json.loads(out)
    want = EXPECTED["true.lackey --pages 2MiB"]
    assert {name: report[name] for name in want} == want


def test_an_unknown_trace_is_one_line_naming_it_and_the_samples(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = run("trace", "nope.lackey")
    assert code == 2 and err.strip().count("\n") == 0
    assert "nope.lackey" in err and "true.lackey" in err


@pytest.mark.parametrize("name", ["stlb-by-page-size", "tlb-presets"])
def test_the_shipped_trace_sweeps_find_their_traces_from_any_directory(
        name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """From an empty directory, every run of the example trace sweeps replays a sample
    trace of the package; one run, replayed, gives expected.json's numbers."""
    from pagewalk.sweep.execute import execute_run
    monkeypatch.chdir(tmp_path)
    runs = expand_runs(load_sweep(resolve_sweep(name)))
    samples = {sample for sample, _ in list_sample_traces()}
    assert runs and all(isinstance(r, TraceConfig) and Path(r.path).name in samples
                        and Path(r.path).is_file() for r in runs)
    first = runs[0]
    assert isinstance(first, TraceConfig)
    if first.params.get("tlb", "reference") == "reference":
        (row,) = execute_run(first)
        want = EXPECTED[f"{Path(first.path).name} --pages {first.pages}"]
        assert {field: row[field] for field in want} == want


def test_the_sample_traces_are_the_test_traces() -> None:
    """tests/data/traces links to the package's sample traces: one copy of each."""
    for sample, _ in list_sample_traces():
        assert (ROOT / "tests/data/traces" / sample).resolve() == \
            (ROOT / "src/pagewalk/examples/traces" / sample).resolve()


# -- pagewalk examples [NAME] ----------------------------------------------------------------

def test_examples_name_prints_the_scenarios_yaml_as_shipped() -> None:
    for name, _ in list_examples():
        code, out, _ = run("examples", name)
        assert code == 0
        shipped = resources_text(f"{name}.yaml")
        assert out == shipped
        assert parse_scenario(out, name).name == name


def resources_text(relative: str) -> str:
    from importlib import resources
    return (resources.files("pagewalk") / "examples" / relative).read_text(encoding="utf-8")


def test_examples_name_prints_an_example_sweep_too() -> None:
    code, out, _ = run("examples", "tlb-presets")
    assert code == 0 and out == resources_text("sweeps/tlb-presets.yaml")


def test_examples_of_an_unknown_name_is_one_line_exit_2() -> None:
    code, out, err = run("examples", "no-such-example")
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and "'no-such-example'" in err


def test_examples_lists_every_scenario_sweep_and_trace_uncut(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Piped at 80 columns, the listing keeps every name whole."""
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = run("examples")
    assert code == 0
    words = set(out.split())
    for name, _ in list_examples() + list_example_sweeps() + list_sample_traces():
        assert name in words


# -- shell completion and -V ----------------------------------------------------------------

def complete(args: list[str], incomplete: str) -> list[str]:
    completion = BashComplete(main, {}, "pagewalk", "_PAGEWALK_COMPLETE")
    return [item.value for item in completion.get_completions(args, incomplete)
            if item.type == "plain"]


def files_too(args: list[str], incomplete: str) -> bool:
    completion = BashComplete(main, {}, "pagewalk", "_PAGEWALK_COMPLETE")
    return any(item.type == "file" for item in completion.get_completions(args, incomplete))


@pytest.mark.parametrize("command", [["run"], ["view"], ["verify"],
                                     ["trace", "x", "--scenario"], ["translate", "0", "--scenario"],
                                     ["pagetable-cost", "--scenario"]])
def test_scenario_arguments_complete_the_built_in_names(command: list[str]) -> None:
    assert complete(command, "thp-ma") == ["thp-madvise-64m"]
    assert files_too(command, "thp-ma")
    assert set(complete(command, "")) == {name for name, _ in list_examples()}


def test_show_completes_the_views_and_the_scenarios_processes() -> None:
    views = complete(["run", "fork-cow-write", "--show"], "")
    assert {"/proc/meminfo", "/proc/vmstat", "/proc/buddyinfo", "sar", "/proc/main/status",
            "/proc/child/smaps_rollup",
            "/sys/kernel/mm/transparent_hugepage/enabled"} <= set(views)
    assert complete(["run", "anon-4k-write-64m", "--show"], "/proc/m") == [
        "/proc/meminfo", "/proc/main/status", "/proc/main/maps", "/proc/main/smaps",
        "/proc/main/smaps_rollup"]


def test_tlb_completes_the_presets_sweep_the_example_sweeps_trace_the_samples() -> None:
    assert complete(["trace", "x", "--tlb"], "") == ["reference", "haswell", "skylake", "zen"]
    assert complete(["sweep"], "tlb") == ["tlb-presets"]
    assert complete(["trace"], "true") == ["true.lackey"]
    assert complete(["examples"], "tlb-") == ["tlb-presets"]


def test_the_bash_completion_script_is_clicks() -> None:
    """The README's recipe: ``_PAGEWALK_COMPLETE=bash_source pagewalk`` prints the script."""
    result = CliRunner().invoke(main, [], prog_name="pagewalk",
                                env={"_PAGEWALK_COMPLETE": "bash_source"})
    assert result.exit_code == 0
    assert "_PAGEWALK_COMPLETE=bash_complete" in result.stdout
    assert "complete -o nosort -F _pagewalk_completion pagewalk" in result.stdout


@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_minus_v_prints_the_version(flag: str) -> None:
    code, out, _ = run(flag)
    assert code == 0 and out == f"pagewalk, version {importlib.metadata.version('pagewalk')}\n"


# -- the README --------------------------------------------------------------------------

def test_the_readme_documents_every_exit_status() -> None:
    from pagewalk.live.errors import EXIT_UNAVAILABLE
    text = (ROOT / "README.md").read_text()
    statuses = {0, cli_common.EXIT_RUN_FAILED, cli_common.EXIT_BAD_INPUT,
                cli_common.EXIT_INTERNAL, cli_common.EXIT_INTERRUPTED, EXIT_UNAVAILABLE}
    assert statuses == {0, 1, 2, 3, 70, 130}
    documented = {int(row) for row in re.findall(r"^\| (\d+) \|", text, re.MULTILINE)}
    assert statuses <= documented
    assert "_PAGEWALK_COMPLETE=bash_source pagewalk" in text


def test_the_docs_have_no_stale_references() -> None:
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text()
        assert "spec/trace-model.md" not in text, path
        assert "../scenarios/" not in text, path


def test_a_sets_name_does_not_depend_on_what_else_was_imported() -> None:
    """Every command's machine code is named by its own entries' sources: importing
    `replay`'s access loop beside it (as this test process has) leaves that name as a
    plain `import pagewalk.machine` computes it, so the package's copy is found."""
    script = ("import pagewalk.machine\n"
              "from pagewalk.hw import compiled\n"
              "print(compiled.machine_code_name(sorted(k for k, v in "
              "compiled._State.kernels.items() if v.entry is not None)))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True, timeout=120)
    import pagewalk.record.fastloop  # noqa: F401 (registers the replay loop here)
    assert compiled.machine_code_name(entries()) == done.stdout.strip()
    assert compiled.machine_code_name(entries(replay=True)) != done.stdout.strip()
