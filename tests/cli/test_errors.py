"""Bad input is one line naming it, exit status 2, never a traceback; input that does
nothing gets a note on standard error.

Each case here was a traceback, an exit status 70 or a silent no-op before (issue 14):
a hugetlb pool larger than RAM (the kernel's answer is a smaller pool, not an error),
binary TLB-model and page-size-map files, unwritable output paths, a Dask scheduler
address that does not answer, Ctrl-C during a sweep, Matplotlib warnings on degenerate
data, empty traces and addresses, ``--json`` with ``--show``, a trace no page of the map
covers, khugepaged passes that could not finish and ranges that start past the end of
their mapping."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from pagewalk.cli import main
from pagewalk.errors import ConfigError, ScenarioError
from pagewalk.machine import Machine, MachineConfig
from pagewalk.scenario.runner import run_scenario
from pagewalk.scenario.schema import MAX_KHUGEPAGED_SCANS, parse_scenario
from pagewalk.sweep.execute import CONNECT_SECONDS, dask_client
from pagewalk.sweep.plot import plot_table
from pagewalk.sweep.spec import PlotSpec

TRACES = Path(__file__).resolve().parents[1] / "data" / "traces"
LACKEY = TRACES / "true.lackey"
POOL = "/proc/sys/vm/nr_hugepages"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def assert_one_line(code: int, err: str, *words: str, status: int = 2) -> None:
    """Exit ``status`` and one ``error:`` line on standard error holding ``words`` (besides
    the announcement of a first compile, hw/compiled.py, which a process may make)."""
    lines = [line for line in err.strip().splitlines()
             if not line.startswith("pagewalk: compiling ")]
    assert code == status, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, err)


def blocker(tmp_path: Path) -> Path:
    """A regular file: any path under it cannot be made (ENOTDIR, root or not)."""
    path = tmp_path / "a-file"
    path.write_text("not a directory\n")
    return path


# -- a hugetlb pool larger than RAM at boot ----------------------------------------------------

def pool_that_fits(ram: int) -> int:
    """Grow a pool one page per write until a write adds nothing (set_max_huge_pages
    stops at the first page the buddy allocator cannot give): the pages that fit."""
    k = Machine(MachineConfig(ram=ram)).kernel
    while True:
        had = k.hugetlb.default.nr_huge_pages
        k.set_knob(POOL, str(had + 1))
        if k.hugetlb.default.nr_huge_pages == had:
            return had


def test_a_boot_pool_larger_than_ram_is_the_pool_that_fits(tmp_path: Path) -> None:
    """system.sysfs nr_hugepages of a million on 256 MiB: not an error, HugePages_Total
    is the number of 2 MiB pages the buddy allocator gives at boot, as grown page by page."""
    path = tmp_path / "big-pool.yaml"
    path.write_text(f"""name: big-pool
system:
  ram: 256MiB
  sysfs: {{{POOL}: 1000000}}
steps:
  - measure: boot
""")
    code, out, err = run("run", str(path), "--json")
    assert code == 0, err
    fits = pool_that_fits(256 << 20)
    assert 0 < fits < 128                  # fewer than the 128 pages of 256 MiB
    system = json.loads(out)["measurements"][0]["system"]
    assert system["HugePages_Total"] == fits
    assert system["HugePages_Free"] == fits


# -- trace inputs that are binary --------------------------------------------------------------

@pytest.mark.parametrize("option", ["--tlb", "--page-map"])
@pytest.mark.parametrize("content", [bytes(range(256)) * 4, b"\0" * 64])
def test_a_binary_model_or_page_map_is_one_line_naming_it(option: str, content: bytes,
                                                          tmp_path: Path) -> None:
    binary = tmp_path / "model.bin"
    binary.write_bytes(content)
    code, _, err = run("trace", str(LACKEY), option, str(binary), "--json")
    assert_one_line(code, err, str(binary))


# -- unwritable output paths -------------------------------------------------------------------

def test_view_static_into_an_unwritable_path_names_it_before_running(tmp_path: Path) -> None:
    target = blocker(tmp_path) / "site"
    code, out, err = run("view", "anon-4k-write-64m", "--static", str(target))
    assert_one_line(code, err, f"cannot write {target}", "Not a directory")
    assert out == ""


def test_plot_makes_missing_directories_and_names_an_unwritable_path(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    pd.DataFrame({"x": [1, 2, 3], "y": [1.0, 4.0, 9.0]}).to_csv(table, index=False)
    made = tmp_path / "new" / "deeper" / "plot.png"
    code, _, err = run("plot", str(table), "--x", "x", "--y", "y", "-o", str(made))
    assert code == 0, err
    assert made.stat().st_size > 0
    refused = blocker(tmp_path) / "plot.png"
    code, _, err = run("plot", str(table), "--x", "x", "--y", "y", "-o", str(refused))
    assert_one_line(code, err, f"cannot write {refused}", "Not a directory")


def test_verify_output_is_refused_before_the_kernel_runs(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from pagewalk.live import verify

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("the live kernel ran before -o was checked")

    monkeypatch.setattr(verify, "run_live", must_not_run)
    refused = blocker(tmp_path) / "kernel.json"
    code, _, err = run("verify", "anon-4k-write-64m", "-o", str(refused))
    assert_one_line(code, err, f"cannot write {refused}", "Not a directory")


def test_sweep_output_is_refused_before_any_run(tmp_path: Path) -> None:
    refused = blocker(tmp_path) / "t.parquet"
    start = time.monotonic()
    code, _, err = run("sweep", "thp-pte-cost", "-o", str(refused))
    assert_one_line(code, err, f"cannot write {refused}")
    assert time.monotonic() - start < 30           # no cluster, no run


# -- a scheduler that does not answer ----------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def not_a_scheduler() -> Iterator[str]:
    """A TCP server on 127.0.0.1 that answers every connection as a web server would."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def answer() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    yield f"tcp://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    server.close()


def test_a_refused_scheduler_address_fails_fast_naming_it() -> None:
    import distributed  # noqa: F401 -- its import (seconds) is not the connect being timed
    address = f"tcp://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(ConfigError, match=f"cannot reach the Dask scheduler at {address}"), \
            dask_client(scheduler=address):
        pass
    assert time.monotonic() - start < 2            # Dask alone retries for its timeout


def test_a_server_that_is_no_scheduler_fails_within_the_connect_timeout(
        not_a_scheduler: str) -> None:
    start = time.monotonic()
    with pytest.raises(ConfigError, match=f"no Dask scheduler answers at {not_a_scheduler}"), \
            dask_client(scheduler=not_a_scheduler):
        pass
    assert time.monotonic() - start < CONNECT_SECONDS + 2


@pytest.mark.parametrize("address", ["nonsense", "http://127.0.0.1:8786", "tcp://host:99999"])
def test_a_malformed_scheduler_address_is_refused(address: str) -> None:
    with pytest.raises(ConfigError, match="expected tcp://HOST:PORT"), \
            dask_client(scheduler=address):
        pass


def test_the_sweep_command_names_the_address_and_exits_without_a_traceback(
        not_a_scheduler: str) -> None:
    """In a process of its own: the half-made Dask client must not hang its exit for 20 s
    or print a traceback there."""
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pagewalk", "sweep", "thp-pte-cost",
                           "--scheduler", not_a_scheduler], capture_output=True, text=True, check=False,
                          timeout=60)
    assert_one_line(done.returncode, done.stderr, not_a_scheduler)
    assert time.monotonic() - start < 20


# -- Ctrl-C during a sweep -------------------------------------------------------------------

def sigint_ignored(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    return bool(int(status.split("SigIgn:")[1].split()[0], 16) & (1 << (signal.SIGINT - 1)))


def children(pid: int) -> list[int]:
    found = []
    for task in Path("/proc").iterdir():
        try:
            if task.name.isdigit() and \
                    (task / "stat").read_text().rsplit(")", 1)[1].split()[1] == str(pid):
                found.append(int(task.name))
        except OSError:
            continue
    return found


def test_ctrl_c_during_a_sweep_stops_it_cleanly(tmp_path: Path) -> None:
    """SIGINT to the sweep's whole process group (what a terminal's Ctrl-C does), once its
    workers are up: exit 130, one line, no traceback from the workers or from Dask's exit
    hooks, and no worker left behind."""
    spec = tmp_path / "slow.yaml"
    lines = ["name: slow", "base: {scenario: anon-4k-write-64m}",
             "names: {length: 'steps[0].mmap.length'}", "list:"]
    lines += [f"  - {{length: {1024 + run}MiB}}" for run in range(512)]   # minutes of work
    spec.write_text("\n".join(lines) + "\n")
    # Ctrl-C as a terminal's foreground job has it: a test run started in the background
    # of a shell has SIGINT ignored, which the sweep would inherit (a handler is not)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    child = subprocess.Popen([sys.executable, "-m", "pagewalk", "sweep", str(spec),
                              "--workers", "2", "--no-plots"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    signal.signal(signal.SIGINT, previous)
    try:
        deadline = time.monotonic() + 120
        # the workers are spawned, and the sweep listens to Ctrl-C again
        while not (len(children(child.pid)) >= 2 and not sigint_ignored(child.pid)):
            assert child.poll() is None and time.monotonic() < deadline, child.stderr
            time.sleep(0.05)
        workers = children(child.pid)
        time.sleep(1)
        os.killpg(child.pid, signal.SIGINT)
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        child.communicate()                  # and its pipes closed, whatever happened
    assert_one_line(child.returncode, err, "interrupted", status=130)
    assert out == ""
    deadline = time.monotonic() + 10         # the workers (and the resource tracker) go
    while [pid for pid in workers if alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in workers if alive(pid)]


def alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


# -- Matplotlib on degenerate data (warnings are errors here) --------------------------------

@pytest.mark.parametrize(("ys", "logy"), [
    ([0.0], True),                 # one point, a log axis of zeros
    ([5.0, 5.0, 5.0], False),      # all equal: zero variance
    ([5.0, 5.0, 5.0], True),
    ([0.0, 0.0, 0.0], True),
    ([-1.0, -2.0, 0.0], True),     # nothing above 0 for a log axis
    ([float("inf"), 2.0, 3.0], False),
])
@pytest.mark.parametrize("kind", ["bar", "line"])
def test_degenerate_data_plots_without_a_warning(ys: list[float], logy: bool, kind: str,
                                                 tmp_path: Path) -> None:
    table = pd.DataFrame({"x": list(range(1, len(ys) + 1)), "y": ys})
    spec = PlotSpec(file="p.png", x="x", y="y", kind=kind, logy=logy)
    path = plot_table(table, spec, tmp_path / "sub" / "p.png")
    assert path.stat().st_size > 0


# -- input that does nothing -------------------------------------------------------------------

def test_an_empty_trace_gets_a_note(tmp_path: Path) -> None:
    empty = tmp_path / "empty.lackey"
    empty.write_text("")
    code, out, err = run("trace", str(empty), "--json")
    assert code == 0
    assert json.loads(out)["accesses"] == 0
    assert "note:" in err and "holds no access" in err


def test_a_trace_the_page_map_does_not_cover_gets_a_note(tmp_path: Path) -> None:
    trace = tmp_path / "low.lackey"
    trace.write_text(" L 1000,8\n S 2000,8\n")
    far = tmp_path / "far.json"
    far.write_text('[{"start": "0x7f0000000000", "end": "0x7f0000200000", "page_shift": 21}]')
    near = tmp_path / "near.json"
    near.write_text('[{"start": "0x0", "end": "0x200000", "page_shift": 21}]')
    code, _, err = run("trace", str(trace), "--page-map", str(far), "--json")
    assert code == 0 and "no address of the trace lies in a page of --page-map" in err
    code, _, err = run("trace", str(trace), "--page-map", str(near), "--json")
    assert code == 0 and "note:" not in err


@pytest.mark.parametrize("address", ["", "  ", "+4KiB"])
def test_an_empty_address_is_refused(address: str) -> None:
    code, _, err = run("translate", address)
    assert_one_line(code, err, "address")


def test_json_with_show_carries_the_views(tmp_path: Path) -> None:
    """The decision: --show's views are part of --json, by path, at each measure."""
    code, out, err = run("run", "anon-4k-write-64m", "--json", "--show", "/proc/meminfo")
    assert code == 0, err
    for measurement in json.loads(out)["measurements"]:
        assert measurement["views"]["/proc/meminfo"].startswith("MemTotal:")
    code, out, _ = run("run", "anon-4k-write-64m", "--json")
    assert all("views" not in m for m in json.loads(out)["measurements"])
    code, out, err = run("run", "anon-4k-write-64m", "--format", "csv", "--show", "sar")
    assert code == 0 and "not part of --format csv" in err


def test_khugepaged_passes_beyond_the_bound_are_refused_naming_the_field() -> None:
    text = "name: k\nsteps:\n  - khugepaged: {scans: %d}\n"
    assert parse_scenario(text % MAX_KHUGEPAGED_SCANS, "k.yaml").steps[0].scans == 1000
    with pytest.raises(ScenarioError, match="at most 1000 khugepaged passes") as err:
        parse_scenario(text % 10**12, "k.yaml")
    assert str(err.value).startswith("k.yaml, step 0, field 'steps[0].khugepaged.scans'")


# -- ranges that start past the end of their mapping ------------------------------------------

@pytest.mark.parametrize("kind", ["touch", "madvise", "mprotect", "munmap", "mlock",
                                  "munlock", "msync", "mremap"])
def test_a_range_starting_past_its_mapping_is_refused_at_load(kind: str) -> None:
    extra = {"madvise": ", advice: dontneed", "mprotect": ", prot: r",
             "mremap": ", new_length: 4KiB"}.get(kind, "")
    text = f"""name: past
steps:
  - mmap: {{name: a, length: 4MiB}}
  - {kind}: {{region: a, offset: 8MiB{extra}}}
"""
    with pytest.raises(ScenarioError) as err:
        parse_scenario(text, "past.yaml")
    assert str(err.value) == (
        f"past.yaml, step 1, field 'steps[1].{kind}.offset': offset 8MiB is past the end "
        "of region 'a' (4MiB): the range to its end is empty; give a length to reach "
        "beyond the mapping")


def test_the_length_checked_is_the_mapping_length_at_that_step() -> None:
    """mremap's new length counts from its step on (not when it expected an error); a
    child inherits the lengths; hugetlb rounds to its page; a given length may reach past
    the end (the measured vvar and brk scenarios do)."""
    def loads(steps: str) -> bool:
        try:
            parse_scenario("name: r\nsteps:\n" + steps, "r.yaml")
        except ScenarioError:
            return False
        return True

    mmap = "  - mmap: {name: a, length: 4MiB}\n"
    assert not loads(mmap + "  - mremap: {region: a, new_length: 1MiB}\n"
                     "  - touch: {region: a, offset: 2MiB}\n")
    assert loads(mmap + "  - mremap: {region: a, new_length: 8MiB, flags: [maymove]}\n"
                 "  - touch: {region: a, offset: 6MiB}\n")
    assert loads(mmap + "  - mremap: {region: a, new_length: 1MiB, expect_error: EINVAL}\n"
                 "  - touch: {region: a, offset: 2MiB}\n")
    assert not loads(mmap + "  - fork: {name: c}\n"
                     "  - touch: {region: a, offset: 4MiB, process: c}\n")
    assert loads(mmap + "  - touch: {region: a, offset: 4MiB, length: 4KiB, "
                 "expect_signal: SIGSEGV}\n")
    assert loads("  - mmap: {name: h, length: 1MiB, flags: [private, anonymous, hugetlb]}\n"
                 "  - madvise: {region: h, offset: 1MiB, advice: dontneed}\n")


def test_a_heap_range_past_the_break_is_refused_before_the_step_runs() -> None:
    scenario = parse_scenario("""name: heap
steps:
  - brk: {delta: 1MiB}
  - madvise: {region: "[heap]", offset: 2MiB, advice: dontneed}
""", "heap.yaml")
    with pytest.raises(ScenarioError) as err:
        run_scenario(scenario)
    assert str(err.value).startswith("heap.yaml, step 1, field 'offset': offset 2MiB is past "
                                     "the end of region '[heap]'")


def test_ctrl_c_while_a_command_loads_is_the_interrupted_exit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C that lands while a command's modules are imported exits 130 with one
    line, as one during the command does (not click's "Aborted!" and 1)."""
    import importlib

    from click.testing import CliRunner

    from pagewalk.cli import main

    def interrupted(name: str) -> object:
        raise KeyboardInterrupt
    monkeypatch.setattr(importlib, "import_module", interrupted)
    result = CliRunner().invoke(main, ["pagetable-cost", "--help"])
    assert result.exit_code == 130
    assert "interrupted" in result.stderr and "Aborted" not in result.output
