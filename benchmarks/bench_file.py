"""Reading a 4 GiB file mapping, one byte per 4 KiB page, cached and uncached:
pagewalk against the real kernel (issue: at least as fast as the kernel).

The kernel side is benchmarks/c/fileread.c: it writes the file in 4 KiB write(2)s,
fsyncs it (and for "uncached" drops it with POSIX_FADV_DONTNEED), then times mmap and
the reads alone. The pagewalk side runs the same scenario in this process and times
the `mmap` and `touch` steps alone (making the file is the scenario's own setup, as
writing it is the C program's). Both report their fault counts, which must agree with
each other (1 major fault for uncached: readahead). Printed: each time, the ratio
pagewalk / kernel (goal <= 1) and pagewalk's peak host memory.

    python benchmarks/bench_file.py [--size-mib 4096] [--repeat 3] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import time
from pathlib import Path

from _common import build_c

from pagewalk.scenario.runner import ScenarioRun
from pagewalk.scenario.schema import parse_scenario

SCENARIO = """name: bench-file-{mode}
system:
  ram: {ram}MiB
steps:
  - file: {{name: data, size: {size}MiB}}
{drop}  - mmap: {{name: m, length: {size}MiB, prot: r, flags: [shared], file: data}}
  - touch: {{region: m, access: read}}
  - measure: read
"""


def kernel_time(program: Path, directory: Path, size_mib: int, mode: str) -> tuple[float, int, int]:
    out = subprocess.run([str(program), str(directory / "pagewalk-bench-file"), str(size_mib),
                          mode], check=True, capture_output=True, text=True).stdout.split()
    return float(out[0]), int(out[1]), int(out[2])


def pagewalk_time(size_mib: int, mode: str) -> tuple[float, int, int]:
    drop = "  - fadvise: {file: data, advice: dontneed}\n" if mode == "uncached" else ""
    ram = max(1024, 2 * size_mib + 512)
    text = SCENARIO.format(mode=mode, size=size_mib, ram=ram, drop=drop)
    run = ScenarioRun(parse_scenario(text, f"bench-file-{mode}"), ())
    steps = run.scenario.steps
    for step in steps[:-3]:
        run.run_step(step)
    start = time.perf_counter()
    for step in steps[-3:-1]:                          # mmap and touch
        run.run_step(step)
    elapsed = time.perf_counter() - start
    task = run.kernel.tasks["main"]
    return elapsed, task.min_flt, task.maj_flt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    args = parser.parse_args()
    program = build_c("fileread")
    pagewalk_time(4, "cached")                     # warm: compiled code, imports
    for mode in ("cached", "uncached"):
        kernel = min(kernel_time(program, args.dir, args.size_mib, mode)
                     for _ in range(args.repeat))
        simulated = min(pagewalk_time(args.size_mib, mode) for _ in range(args.repeat))
        ratio = simulated[0] / kernel[0]
        print(f"{mode:>8}: pagewalk {simulated[0]:7.2f} s ({simulated[1]} minor, "
              f"{simulated[2]} major) | kernel {kernel[0]:7.3f} s ({kernel[1]} minor, "
              f"{kernel[2]} major) | pagewalk/kernel = {ratio:.1f} -> "
              f"{'PASS' if ratio <= 1 else 'FAIL'} (goal <= 1)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(f"pagewalk peak host memory: {peak} MiB")


if __name__ == "__main__":
    main()
