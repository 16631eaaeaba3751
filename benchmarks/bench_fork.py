"""fork of a process with 1 GiB of touched memory, the child writing all of it
(262,144 copy-on-write faults): pagewalk against the real kernel, in one run (issue 5).

    python benchmarks/bench_fork.py [--size-mib 1024] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from _common import build_c, pagewalk_argv, time_process

SCENARIO = """name: bench-fork
system:
  ram: 4GiB
steps:
  - mmap: {{name: data, length: {size}MiB}}
  - madvise: {{region: data, advice: nohugepage}}
  - touch: {{region: data}}
  - fork: {{name: child}}
  - touch: {{region: data, process: child}}
  - measure: child-wrote
  - exit: {{process: child}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    program = build_c("fork")
    path = Path(tempfile.mkdtemp(prefix="pagewalk-bench-")) / "fork.yaml"
    path.write_text(SCENARIO.format(size=args.size_mib))
    argv = pagewalk_argv("run", str(path), "--json")
    time_process(argv, repeat=1)  # warm the Numba cache
    sim_s, sim_kib, out = time_process(argv, args.repeat)
    child_faults = json.loads(out)["measurements"][0]["processes"]["child"]["minflt"]
    kern_s, _, kout = time_process([str(program), str(args.size_mib)], args.repeat)
    print(f"fork {args.size_mib} MiB + child writes all: pagewalk {sim_s:.2f} s "
          f"(child {child_faults} faults, peak host memory {sim_kib / 1024:.0f} MiB) | "
          f"kernel {kern_s:.2f} s (child {kout.strip()} faults) | "
          f"pagewalk/kernel = {sim_s / kern_s:.2f}")


if __name__ == "__main__":
    main()
