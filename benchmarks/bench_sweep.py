"""Issue 8's figure: the speed-up of a sweep of 8 trace replays from 1 to 2 Dask workers.

Four synthetic traces (``--accesses`` each, written as .pwt to a temporary directory:
random loads and stores over footprints of 64 MiB to 4 GiB, with a hot tenth of each
taking most accesses) replayed with 4 KiB and 2 MiB pages: 8 runs of the sweep file
written beside them, run through ``pagewalk.sweep`` exactly as ``pagewalk sweep`` runs
them. Each cluster is started and its workers have loaded the compiled replay kernels
before the clock starts, so the figure is the sweep itself; the tables of both runs must
be equal.

    python benchmarks/bench_sweep.py [--accesses 8000000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pagewalk.sweep.execute import dask_client, run_sweep
from pagewalk.sweep.runs import expand_runs
from pagewalk.sweep.spec import load_sweep
from pagewalk.trace.formats import pack_records
from pagewalk.units import GiB, MiB

FOOTPRINTS = (64 * MiB, 256 * MiB, 1 * GiB, 4 * GiB)
BASE_VADDR = 0x7F00_0000_0000
HOT_SHARE = 0.8


def write_trace(path: Path, footprint: int, nr_accesses: int, seed: int) -> None:
    """Loads and stores (2:1) over ``footprint`` bytes, ``HOT_SHARE`` of them in its first
    tenth."""
    rng = np.random.default_rng(seed)
    hot = rng.random(nr_accesses) < HOT_SHARE
    offsets = np.where(hot, rng.integers(0, footprint // 10, nr_accesses),
                       rng.integers(0, footprint, nr_accesses))
    kinds = (rng.random(nr_accesses) < 1 / 3).astype(np.uint64)
    pack_records(BASE_VADDR + offsets.astype(np.uint64), kinds).tofile(path)


def write_sweep(directory: Path, nr_accesses: int) -> Path:
    names = []
    for seed, footprint in enumerate(FOOTPRINTS):
        name = f"random-{footprint // MiB}m.pwt"
        write_trace(directory / name, footprint, nr_accesses, seed)
        names.append(name)
    path = directory / "sweep.yaml"
    path.write_text(f"name: bench\nbase: {{trace: {names[0]}}}\n"
                    f"grid:\n  trace: [{', '.join(names)}]\n  pages: [4KiB, 2MiB]\n")
    return path


def warm_up() -> None:
    """Load the compiled replay kernels in this worker (Numba's cache) before timing."""
    from pagewalk.trace.replay import replay_trace
    replay_trace(pack_records(np.arange(4096, dtype=np.uint64) << 12,
                              np.zeros(4096, dtype=np.uint64)))


def timed_sweep(sweep_path: Path, workers: int) -> tuple[float, pd.DataFrame]:
    runs = expand_runs(load_sweep(sweep_path))
    with dask_client(workers=workers) as client:
        client.run(warm_up)
        start = time.perf_counter()
        table = run_sweep(runs, client, title=f"{workers} workers")
        return time.perf_counter() - start, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accesses", type=int, default=8_000_000,
                        help="accesses per trace (default 8,000,000)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pagewalk-bench-sweep-") as tmp:
        sweep_path = write_sweep(Path(tmp), args.accesses)
        one, table_one = timed_sweep(sweep_path, 1)
        two, table_two = timed_sweep(sweep_path, 2)
    columns = [c for c in table_one.columns if c != "seconds"]
    pd.testing.assert_frame_equal(table_one[columns], table_two[columns])
    failed = int(table_one["error"].notna().sum())
    print(f"sweep of {len(table_one)} trace replays ({len(FOOTPRINTS)} traces x 2 page sizes, "
          f"{args.accesses:,} accesses each, {failed} failed)")
    print(f"  run time per replay: {table_one['seconds'].sum() / len(table_one):.2f} s "
          f"(1 worker)")
    print(f"  1 worker : {one:7.2f} s")
    print(f"  2 workers: {two:7.2f} s")
    print(f"  speed-up : {one / two:7.2f}x")


if __name__ == "__main__":
    main()
