"""Run a sweep's runs on Dask and collect their reports into one table.

Each run is one Dask task, :func:`execute_run`, on a worker process: it runs the
scenario (``run_scenario(...).to_json()``, the report of ``pagewalk run --json``),
replays the trace (``replay_trace(...).to_json()``, the report of ``pagewalk trace
--json``) or replays the recording (:func:`replay_report`, the report of ``pagewalk
replay --json``) and flattens the report into rows. A run that fails -- the kernel
refuses a step, a trace record is malformed, even a bug or a worker that dies --
becomes one row whose ``error`` column holds the one-line message ``pagewalk`` would
print; the sweep goes on.

Rows: a scenario run gives one row per (measurement label, process), with that process's
figures and the measurement's system figures side by side; a trace run and a recording
run give one row (a recording's at the program's exit). Columns, in order: ``run``, the
run's identity (``scenario``; or ``trace``, ``pages``, ``tlb``, ``engine``; or
``recording``, ``thp``, ``tlb``), the sweep's parameters as written,
``label``/``step``/``process``, the report's figures (a nested figure such as a trace's
per-array TLB counters becomes ``tlb.ARRAY.hits``; a recording's lists of syscalls the
replay refused or skipped become their counts), ``error`` (null when the run succeeded)
and ``seconds`` (the run's wall time on its worker). Rows are ordered by run, then as
the report lists them.

The cluster: :func:`dask_client` starts a LocalCluster of worker processes (one thread
each, one per core by default) listening on 127.0.0.1 only, with no dashboard and its
logs silenced, and closes it on the way out; or connects to a running scheduler, which
it leaves running (an address that does not answer as one is refused within seconds).
Nothing is set as Dask's default client. Ctrl-C: the workers ignore it (only this
process answers the terminal's Ctrl-C), one during the start or close of the cluster
waits for it, and :func:`run_sweep` cancels the runs left and raises SweepInterrupted;
the cluster is always closed before the exit, never left to Dask's exit hooks.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pagewalk.errors import ConfigError, OutputError, PagewalkError, ScenarioError
from pagewalk.sweep.runs import (
    RecordingConfig,
    RunConfig,
    ScenarioConfig,
    TraceConfig,
    trace_model,
)

if TYPE_CHECKING:
    import pandas as pd
    from distributed import Client
    from rich.console import Console

Row = dict[str, Any]
TABLE_SUFFIXES = (".parquet", ".csv")
MEASURE_COLUMNS = ("label", "step", "process")
TAIL_COLUMNS = ("error", "seconds")
#: a replay's syscalls it refused or skipped: a count each (`pagewalk replay` names them)
COUNTED_LISTS = ("diverged", "skipped")
CONNECT_SECONDS = 3          # a --scheduler that does not answer in this is refused


# -- one run, on a worker ----------------------------------------------------------------

def execute_run(run: RunConfig) -> list[Row]:
    """The rows of one run; never raises (a failure is an error row)."""
    start = time.perf_counter()
    try:
        rows = report_rows(run, run_report(run))
    except PagewalkError as err:
        rows = [error_row(run, str(err))]
    except Exception as err:  # noqa: BLE001 -- a bug must not end the sweep: it is a row
        rows = [error_row(run, f"internal error: {type(err).__name__}: {err}")]
    seconds = time.perf_counter() - start
    for row in rows:
        row["seconds"] = seconds
    return rows


def run_report(run: RunConfig) -> dict[str, Any]:
    """The JSON report of ``pagewalk run --json``, ``pagewalk trace --json`` or
    ``pagewalk replay --json`` for a run."""
    if isinstance(run, ScenarioConfig):
        from pagewalk.scenario.runner import run_scenario
        return run_scenario(run.scenario).to_json()
    if isinstance(run, RecordingConfig):
        return replay_report(run)
    from pagewalk.trace.replay import replay_trace
    stats = replay_trace(run.path, pages=run.pages, model=trace_model(run.model),
                         engine=run.engine, fmt=run.format)
    return stats.to_json()


def replay_report(run: RecordingConfig) -> dict[str, Any]:
    """The report of ``pagewalk replay REC --thp MODE --tlb MODEL --json``: the one place
    a sweep replays a recording (record/replay.py)."""
    from pagewalk.record.replay import replay_recording
    return replay_recording(run.path, thp=run.thp, tlb_model=run.model).to_json()


def identity(run: RunConfig) -> Row:
    """The columns that say which run a row belongs to."""
    if isinstance(run, ScenarioConfig):
        return {"run": run.index, "scenario": run.scenario.name}
    if isinstance(run, RecordingConfig):
        return {"run": run.index, "recording": run.recording, "thp": run.thp, "tlb": run.tlb}
    return {"run": run.index, "trace": run.trace, "pages": run.pages, "tlb": run.tlb,
            "engine": run.engine}


def report_rows(run: RunConfig, report: dict[str, Any]) -> list[Row]:
    """Flatten a run's report: one row per (measurement, process), or one per trace or
    recording. Identity columns win over a report field or parameter of the same name."""
    head = identity(run)
    if isinstance(run, TraceConfig):
        return [{**run.params, **_flatten(report), **head, "error": None}]
    if isinstance(run, RecordingConfig):
        figures = {key: len(value) if key in COUNTED_LISTS else value
                   for key, value in _flatten(report).items()}
        return [{**run.params, **figures, **head, "error": None}]
    rows = []
    for measurement in report["measurements"]:
        for process, figures in measurement["processes"].items():
            rows.append({**run.params, "label": measurement["label"],
                         "step": measurement["step"], "process": process, **figures,
                         **measurement["system"], **head, "error": None})
    return rows or [{**run.params, **head, "error": None}]


def _flatten(report: dict[str, Any], prefix: str = "") -> Row:
    """Nested maps become dotted columns (``tlb.STLB 4K+2M.hits``)."""
    flat: Row = {}
    for key, value in report.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def error_row(run: RunConfig, message: str) -> Row:
    return {**run.params, **identity(run), "error": message}


# -- the table ---------------------------------------------------------------------------

def results_table(runs: Sequence[RunConfig], rows: Sequence[Row]) -> pd.DataFrame:
    """The rows as a DataFrame with the columns in the documented order; a column of
    whole numbers with gaps (error rows) is a nullable Int64, a column mixing numbers
    and strings (parameters written as ``4096`` and ``2MiB``) is strings."""
    import pandas as pd
    first = identity(runs[0]) if runs else {"run": 0}
    params = list(dict.fromkeys(k for run in runs for k in run.params))
    leading = list(first) + [p for p in params if p not in first]
    seen = list(dict.fromkeys(k for row in rows for k in row))
    middle = [c for c in MEASURE_COLUMNS if c in seen]
    rest = [c for c in seen if c not in leading and c not in middle and c not in TAIL_COLUMNS]
    columns = leading + middle + rest + list(TAIL_COLUMNS)
    return pd.DataFrame({column: _column([row.get(column) for row in rows], column)
                         for column in columns}, index=pd.RangeIndex(len(rows)))


def _column(values: list[Any], name: str) -> pd.Series:
    """One column from the rows' raw values (None where a row has none)."""
    import pandas as pd
    present = [v for v in values if v is not None]
    if name != "error" and present and all(isinstance(v, bool) for v in present):
        return pd.Series(values, dtype="boolean")
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pd.Series(values, dtype="Int64")
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                       for v in present):
        return pd.Series([float("nan") if v is None else v for v in values], dtype="float64")
    if all(isinstance(v, str) for v in present):
        return pd.Series(values, dtype=object)
    return pd.Series([None if v is None else str(v) for v in values], dtype=object)


def write_table(table: pd.DataFrame, path: str | Path) -> None:
    """Parquet or CSV, by the file's suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise ScenarioError(f"a results file ends in {' or '.join(TABLE_SUFFIXES)}, "
                            f"got {str(path)!r}")
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        if suffix == ".parquet":
            table.to_parquet(path, index=False)
        else:
            table.to_csv(path, index=False)
    except OSError as err:
        raise OutputError.writing(path, err) from None


def read_table(path: str | Path) -> pd.DataFrame:
    """A table written by :func:`write_table` (or any Parquet/CSV file)."""
    import pandas as pd
    suffix = Path(path).suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise ScenarioError(f"a results file ends in {' or '.join(TABLE_SUFFIXES)}, "
                            f"got {str(path)!r}")
    try:
        if suffix == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except (OSError, ValueError) as err:
        raise ScenarioError(f"cannot read the results: {err}", None) from None


# -- Dask --------------------------------------------------------------------------------

class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the sweep after ``done`` of ``total`` runs."""

    def __init__(self, done: int, total: int) -> None:
        super().__init__(f"{done} of {total} runs done")
        self.done = done
        self.total = total


@contextmanager
def dask_client(workers: int | None = None, scheduler: str | None = None) -> Iterator[Client]:
    """A client of a new local cluster (``workers`` processes, default one per core), or of
    the scheduler at ``scheduler`` (``tcp://HOST:PORT``); closed on exit, Ctrl-C included:
    a Ctrl-C while they start or close waits until they have (Dask's exit hooks fail on a
    cluster half started), then stops the sweep."""
    import distributed  # noqa: F401 -- imported before Ctrl-C is held: nothing to close yet
    with ExitStack() as opened:
        with interrupt_deferred():
            client = _start_client(opened, workers, scheduler)
        yield client


def _start_client(opened: ExitStack, workers: int | None, scheduler: str | None) -> Client:
    """The client (and its local cluster), each registered on ``opened`` to be closed."""
    from distributed import Client
    if scheduler is not None:
        client = _connect(scheduler)
    else:
        with _sigint_ignored():        # while the worker processes are spawned
            cluster = _local_cluster(workers)
        opened.callback(_close, cluster)
        client = Client(cluster, set_as_default=False)  # type: ignore[no-untyped-call]
    opened.callback(_close, client)
    return client


def _close(closable: Any) -> None:
    with interrupt_deferred():
        closable.close()


def _connect(scheduler: str) -> Client:
    """A client of a running scheduler, or ConfigError naming the address within about
    CONNECT_SECONDS: a plain TCP connection first (Dask retries a refused one until its
    timeout), then Dask's handshake (a server that is not a scheduler fails it)."""
    from distributed import Client
    host, port = _scheduler_address(scheduler)
    try:
        socket.create_connection((host, port), timeout=CONNECT_SECONDS).close()
    except OSError as err:       # refused, unreachable, unknown host, timed out
        reason = err.strerror or str(err) or type(err).__name__
        raise ConfigError(f"cannot reach the Dask scheduler at {scheduler}: {reason}") from None
    failure = None
    try:
        client: Client = Client(scheduler, timeout=f"{CONNECT_SECONDS}s",  # type: ignore[no-untyped-call]
                                set_as_default=False)
        return client
    except Exception as err:  # noqa: BLE001 -- any failure of the handshake is the address's
        failure = f"{type(err).__name__}: {err}"
    # the half-made client goes now, not at exit (where closing it waits for a dead loop)
    gc.collect()
    raise ConfigError(f"no Dask scheduler answers at {scheduler} ({failure})")


def _scheduler_address(scheduler: str) -> tuple[str, int]:
    """(host, port) of ``tcp://HOST:PORT`` (or ``tls://``, or ``HOST:PORT``)."""
    scheme, sep, rest = scheduler.partition("://")
    if not sep:
        scheme, rest = "tcp", scheduler
    host, colon, port = rest.rstrip("/").rpartition(":")
    host = host.strip("[]")                # an IPv6 address in brackets
    if scheme not in ("tcp", "tls") or not colon or not host or not port.isdigit() \
            or not 0 < int(port) < 65536:
        raise ConfigError(f"--scheduler: expected tcp://HOST:PORT, got {scheduler!r}")
    return host, int(port)


def _local_cluster(workers: int | None) -> Any:
    from distributed import LocalCluster
    if workers is not None and workers < 1:
        raise ScenarioError(f"--workers must be at least 1, got {workers}")
    # No dashboard; the scheduler's HTTP server (health and metrics routes, always
    # started) on a free port of 127.0.0.1 rather than 8787, which another cluster may hold.
    # No log at all, not even CRITICAL: a Ctrl-C that cancels many runs makes the
    # in-process scheduler log a traceback about the client it has just lost.
    return LocalCluster(  # type: ignore[no-untyped-call]
        n_workers=workers or os.cpu_count() or 1, threads_per_worker=1, processes=True,
        host="127.0.0.1", dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        silence_logs=logging.CRITICAL + 10)


@contextmanager
def interrupt_deferred() -> Iterator[None]:
    """A Ctrl-C during the block is held until its end, then raised as KeyboardInterrupt
    (in the main thread; elsewhere, or with SIGINT ignored, nothing changes)."""
    if not _sigint_ours():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored for the block. Processes started inside inherit SIG_IGN, and a
    Python started with SIGINT ignored never makes it KeyboardInterrupt: the Dask workers
    stay deaf to the Ctrl-C a terminal sends the whole process group (a caught signal
    would not do: exec resets its handler). A Ctrl-C during the block is lost."""
    if not _sigint_ours():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _sigint_ours() -> bool:
    return threading.current_thread() is threading.main_thread() and \
        signal.getsignal(signal.SIGINT) is not signal.SIG_IGN


def run_sweep(runs: Sequence[RunConfig], client: Client, console: Console | None = None,
              title: str = "sweep") -> pd.DataFrame:
    """Every run on ``client``'s workers; a Rich progress bar on ``console`` if it is a
    terminal. Returns :func:`results_table` of all rows; on Ctrl-C the runs not done are
    cancelled and SweepInterrupted says how many were."""
    from distributed import as_completed
    token = uuid.uuid4().hex[:8]
    futures = {client.submit(execute_run, run, key=f"pagewalk-{title}-{token}-{run.index}",
                             pure=False): run for run in runs}
    by_run: dict[int, list[Row]] = {}
    try:
        with _progress(console, title, len(runs)) as advance:
            for future in as_completed(futures, loop=client.loop):  # type: ignore[no-untyped-call]
                run = futures[future]
                by_run[run.index] = _future_rows(future, run)
                advance(by_run[run.index][0].get("error") is not None)
    except KeyboardInterrupt:
        with interrupt_deferred():       # a scheduler we leave running forgets them
            client.cancel(list(futures))  # type: ignore[no-untyped-call]
        raise SweepInterrupted(len(by_run), len(runs)) from None
    rows = [row for run in runs for row in by_run[run.index]]
    return results_table(runs, rows)


def _future_rows(future: Any, run: RunConfig) -> list[Row]:
    """The rows a task returned, or an error row if the task itself failed (a worker
    died, the run was cancelled)."""
    try:
        rows: list[Row] = future.result()
    except Exception as err:  # noqa: BLE001 -- KilledWorker, CancelledError, lost comms
        return [{**error_row(run, f"the run's worker failed: {type(err).__name__}: {err}"),
                 "seconds": None}]
    return rows


@contextmanager
def _progress(console: Console | None, title: str, total: int) -> Iterator[Any]:
    """``advance(failed)`` for each finished run, drawn only on a terminal."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    enabled = console is not None and console.is_terminal
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                        MofNCompleteColumn(), TextColumn("{task.fields[failed]} failed"),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                        disable=not enabled, transient=False)
    failed = 0
    with progress:
        task = progress.add_task(title, total=total, failed=0)

        def advance(run_failed: bool) -> None:
            nonlocal failed
            failed += run_failed
            progress.update(task, advance=1, failed=failed)

        yield advance


__all__ = ["SweepInterrupted", "dask_client", "error_row", "execute_run", "identity",
           "interrupt_deferred", "read_table", "replay_report", "report_rows", "results_table",
           "run_report", "run_sweep", "write_table"]
