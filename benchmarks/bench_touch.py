"""Touching 4 GiB of private anonymous memory: pagewalk against the real kernel.

Issue 3: 4 KiB pages (1,048,576 faults) through `pagewalk run`, as a whole process, must
take no longer than the real kernel doing the same (a small mmap-and-write program run
here), with at most 512 MiB of host memory for 8 GiB of simulated RAM.
Issue 4: the same with THP (2048 huge faults); both ratios are printed and the THP path
must not be slower per byte than the 4 KiB path.

    python benchmarks/bench_touch.py [--size-mib 4096] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from _common import build_c, pagewalk_argv, time_process

SCENARIO = """name: bench-touch-{mode}
system:
  ram: 8GiB
steps:
  - mmap: {{name: big, length: {size}MiB}}
  - madvise: {{region: big, advice: {advice}}}
  - touch: {{region: big}}
  - measure: touched
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    touch = build_c("touch")
    tmp = Path(tempfile.mkdtemp(prefix="pagewalk-bench-"))
    results = {}
    for mode, advice in (("4k", "nohugepage"), ("thp", "hugepage")):
        path = tmp / f"touch-{mode}.yaml"
        path.write_text(SCENARIO.format(mode=mode, size=args.size_mib, advice=advice))
        argv = pagewalk_argv("run", str(path), "--json")
        time_process(argv, repeat=1)  # warm the Numba cache (first run compiles)
        sim_s, sim_kib, out = time_process(argv, args.repeat)
        faults = json.loads(out)["measurements"][0]["processes"]["main"]["minflt"]
        kern_s, _, kout = time_process([str(touch), str(args.size_mib), mode], args.repeat)
        results[mode] = (sim_s, kern_s)
        print(f"{mode:>4}: pagewalk {sim_s:6.2f} s ({faults} faults, peak host memory "
              f"{sim_kib / 1024:.0f} MiB) | kernel {kern_s:6.2f} s ({kout.strip()} faults) | "
              f"pagewalk/kernel = {sim_s / kern_s:.2f}")
        if mode == "4k":
            print(f"      target: pagewalk/kernel <= 1.00 -> {'PASS' if sim_s <= kern_s else 'FAIL'};"
                  f" host memory <= 512 MiB -> {'PASS' if sim_kib <= 512 * 1024 else 'FAIL'}")
    per_byte = results["thp"][0] / results["4k"][0]
    print(f"THP/4k time per byte in pagewalk = {per_byte:.2f} -> "
          f"{'PASS' if per_byte <= 1.0 else 'FAIL'} (THP must not be slower per byte)")


if __name__ == "__main__":
    main()
