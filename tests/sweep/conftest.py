"""One local Dask cluster of 2 worker processes for the sweep tests (started once).

Before it starts, a small scenario and a small trace replay run in this process, so the
compiled kernels are in Numba's cache and the workers load them rather than each
compiling them again on a cold machine (CI's first run).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from pagewalk.scenario.runner import run_scenario
from pagewalk.scenario.schema import parse_scenario
from pagewalk.sweep.execute import dask_client
from pagewalk.trace.formats import pack_records
from pagewalk.trace.replay import replay_trace

WARM_UP = """name: warm-up
steps:
  - mmap: {name: a, length: 4MiB}
  - madvise: {region: a, advice: hugepage}
  - touch: {region: a}
  - mmap: {name: b, length: 1MiB}
  - touch: {region: b}
  - measure: done
"""


def compile_kernels() -> None:
    run_scenario(parse_scenario(WARM_UP, "<warm-up>"))
    words = pack_records(np.arange(1024, dtype=np.uint64) << np.uint64(12),
                         np.zeros(1024, dtype=np.uint64))
    for pages in ("4KiB", "2MiB", "1GiB"):
        replay_trace(words, pages=pages)


@pytest.fixture(scope="session")
def client() -> Iterator[Any]:
    compile_kernels()
    with dask_client(workers=2) as dask:
        yield dask
