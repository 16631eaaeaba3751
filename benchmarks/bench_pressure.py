"""Writing past a memory cgroup's limit with swap: pagewalk against the real kernel.

Issue 17's figure: 8 GiB written page by page (4 KiB pages) under a 2 GiB limit with
8 GiB of swap must run at least as fast in `pagewalk run` as the kernel does it here,
in at most 512 MiB of host memory. The kernel side (root, cgroup v1 memory controller)
runs benchmarks/c/touch.c in a fresh memory cgroup with a fresh swap file, set up and
removed by pagewalk.live.pressure as `pagewalk verify` does; without root only
pagewalk's side runs. Sizes scale with the options, so a smaller run shows the trend:

    python benchmarks/bench_pressure.py [--write-mib 8192] [--limit-mib 2048] \\
        [--swap-mib 8192] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from functools import partial
from pathlib import Path

from _common import build_c, pagewalk_argv, time_process

HOST_LIMIT_KIB = 512 * 1024

SCENARIO = """name: bench-pressure
system:
  ram: {ram}MiB
  swap: {swap}MiB
  memory_limit: {limit}MiB
steps:
  - mmap: {{name: big, length: {size}MiB}}
  - madvise: {{region: big, advice: nohugepage}}
  - touch: {{region: big}}
  - measure: written
"""


def _join(procs: Path | None) -> None:
    """In the child, before exec: into the cgroup, so that it is charged from its start."""
    if procs is not None:
        procs.write_text(str(os.getpid()))


def kernel_time(touch: Path, size: int, limit: int, swap: int, repeat: int) -> float | None:
    """Best wall time of touch.c writing ``size`` MiB in a cgroup of ``limit`` MiB with a
    swap file of ``swap`` MiB, or None where this machine cannot run it (not root)."""
    if os.geteuid() != 0:
        return None
    from pagewalk.live.pressure import Pressure
    best = None
    for _ in range(repeat):
        pressure = Pressure(swap << 20, limit << 20)
        try:
            pressure.setup()
            procs = pressure.cgroup / "cgroup.procs" if pressure.cgroup else None
            start = time.perf_counter()
            subprocess.run([str(touch), str(size), "4k"], check=True,
                           preexec_fn=partial(_join, procs), stdout=subprocess.DEVNULL)
            elapsed = time.perf_counter() - start
        finally:
            pressure.teardown()
        best = elapsed if best is None else min(best, elapsed)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-mib", type=int, default=8192)
    parser.add_argument("--limit-mib", type=int, default=2048)
    parser.add_argument("--swap-mib", type=int, default=8192)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="pagewalk-bench-"))
    path = tmp / "pressure.yaml"
    ram = max(4096, 2 * args.limit_mib)
    path.write_text(SCENARIO.format(ram=ram, swap=args.swap_mib, limit=args.limit_mib,
                                    size=args.write_mib))
    argv = pagewalk_argv("run", str(path), "--json")
    time_process(pagewalk_argv("run", "thp-madvise-64m"), repeat=1)   # compiled code ready
    sim, peak, out = time_process(argv, repeat=args.repeat)
    report = json.loads(out)["measurements"][0]
    kernel = kernel_time(build_c("touch"), args.write_mib, args.limit_mib, args.swap_mib,
                         args.repeat)
    print(f"{args.write_mib} MiB written under a {args.limit_mib} MiB limit, "
          f"{args.swap_mib} MiB of swap")
    print(f"  pagewalk: {sim:.2f} s, host peak RSS {peak / 1024:.0f} MiB "
          f"(limit {HOST_LIMIT_KIB // 1024} MiB: {'ok' if peak <= HOST_LIMIT_KIB else 'OVER'}), "
          f"pswpout {report['system']['pswpout']}, "
          f"VmSwap {report['processes']['main']['VmSwap']} kB")
    if kernel is None:
        print("  kernel: not measured (needs root and a cgroup v1 memory controller)")
        return
    ratio = sim / kernel
    print(f"  kernel: {kernel:.2f} s;  pagewalk / kernel = {ratio:.2f} "
          f"(target at most 1.00: {'met' if ratio <= 1 else 'NOT met'})")


if __name__ == "__main__":
    main()
