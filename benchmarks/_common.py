"""Shared helpers of the benchmarks: build the C reference programs, time whole processes."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def build_c(name: str) -> Path:
    """Compile benchmarks/c/NAME.c with gcc -O2 into a temporary directory."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        sys.exit("a C compiler (gcc) is needed for the kernel side of this benchmark")
    out = Path(tempfile.mkdtemp(prefix="pagewalk-bench-")) / name
    subprocess.run([gcc, "-O2", "-o", str(out), str(HERE / "c" / f"{name}.c")], check=True)
    return out


def time_process(argv: list[str], repeat: int = 3) -> tuple[float, int, str]:
    """Best wall time of ``repeat`` runs of a whole process, its peak RSS in KiB, its stdout."""
    times, peak, output = [], 0, ""
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        out = proc.stdout.read().decode() if proc.stdout else ""
        err = proc.stderr.read().decode() if proc.stderr else ""
        proc.stdout and proc.stdout.close()
        proc.stderr and proc.stderr.close()
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"{argv[0]} failed: {err.strip()}")
        times.append(elapsed)
        peak = max(peak, usage.ru_maxrss)
        output = out
    return min(times), peak, output


def pagewalk_argv(*args: str) -> list[str]:
    exe = shutil.which("pagewalk")
    return [exe, *args] if exe else [sys.executable, "-m", "pagewalk", *args]


def median(values: list[float]) -> float:
    return statistics.median(values)
