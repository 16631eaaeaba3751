"""A fresh install's first run: `pip install .` into a new virtual environment, then the
first `pagewalk run anon-4k-write-64m` with an empty cache directory and an empty home
(nothing compiled by an earlier run can help it). Issue 14's figure: under 3 s here, and
no compile at run time (the install built the machine code into the package).

    python benchmarks/bench_first_run.py [--keep VENV]

The install itself takes minutes (it compiles); only the run is timed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_SECONDS = 3.0
ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="build the venv here and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pagewalk-first-run-") as scratch:
        venv = args.keep or Path(scratch) / "venv"
        if not (venv / "bin" / "pagewalk").exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            started = time.perf_counter()
            subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", str(ROOT)],
                           check=True)
            print(f"install: {time.perf_counter() - started:.0f} s (not the figure)")
        for sub in ("cache", "home", "cwd"):
            (Path(scratch) / sub).mkdir()
        env = dict(os.environ, PAGEWALK_CACHE_DIR=str(Path(scratch) / "cache"),
                   HOME=str(Path(scratch) / "home"))
        started = time.perf_counter()
        done = subprocess.run([str(venv / "bin" / "pagewalk"), "run", "anon-4k-write-64m"],
                              capture_output=True, text=True, env=env,
                              cwd=Path(scratch) / "cwd", check=False)
        seconds = time.perf_counter() - started
        compiled = "compiling" in done.stderr
        print(f"first run: {seconds:.2f} s (target < {TARGET_SECONDS:.0f} s), exit "
              f"{done.returncode}, compiled at run time: {'yes' if compiled else 'no'}")
        ok = done.returncode == 0 and not compiled and seconds < TARGET_SECONDS
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
