"""Trace replay against a straightforward C implementation of the model, whole processes.

``python -m pagewalk trace T --json`` against ``benchmarks/c/tlbsim.c`` (built here with
``gcc -O2``), both reading the same .pwt file, start-up and loading included, on:

- stream-1g: 400 M accesses in 8-byte steps over 1 GiB (3 passes; 3 loads to 1 store):
  long same-page runs; the figure asks pagewalk for at least 2x the speed of C;
- gzip: the trace of a real program, ``valgrind --tool=lackey --trace-mem=yes gzip -c``
  of about 1 MB of generated prose (about 230 M accesses: instruction fetches
  interleaved with stack and buffer accesses), recorded once and converted to .pwt;
  at least 1x;
- random-4g: 20 M accesses uniform over 4 GiB (TLB-hostile), 70% loads, 30% stores;
  at least 2.5x;
- mixed: 20 M accesses, 70% in a hot 64 MiB set, 25% random over 1 GiB, 5% instruction
  fetches in 8 MiB of code (the recipe of shared/traces/mixed-200k.pwt); issue 6's
  figure, at least 1.25x (0.8x the time of C).

For each it checks that both report the same counters, prints the speed-up (C's time /
pagewalk's) on wall and CPU time (user + system: the steadier figure on a busy machine)
and pagewalk's peak RSS (at most 512 MiB). Each process runs ``--repeat`` times,
interleaved with the other (both see the same machine); the best time counts. The
traces are made once into ``--cache`` (about 5.2 GB; the gzip trace takes valgrind some
minutes). Also prints the lackey parsing rate and ``pagewalk trace`` start-up time on a
small trace (issue: under 0.4 s).

    python benchmarks/bench_trace.py [--repeat 3] [--only stream-1g,gzip] [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pagewalk.trace.formats import iter_chunks, iter_lackey, pack_records

HERE = Path(__file__).resolve().parent
C_SOURCE = HERE / "c" / "tlbsim.c"
BASE = 0x7F0000000000
CODE = 0x400000
MiB, GiB = 1 << 20, 1 << 30
BLOCK = 1 << 22                     # records generated at a time
RSS_LIMIT_MIB = 512
STARTUP_LIMIT_S = 0.4
COUNTERS = ("accesses", "loads", "stores", "ifetches", "l1_hits", "stlb_hits", "walks",
            "walk_refs", "pwc_hits_pml4e", "pwc_hits_pdpte", "pwc_hits_pde", "faults")


@dataclass
class Timing:
    wall_s: float
    cpu_s: float
    max_rss_kib: int
    report: dict[str, int]


# -- the traces ------------------------------------------------------------------------------
def write_blocks(path: Path, accesses: int,
                 block: Callable[[int, int], tuple[np.ndarray, np.ndarray]]) -> None:
    """``block(first, n)`` gives the addresses and kinds of accesses first..first+n-1."""
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as out:
        for first in range(0, accesses, BLOCK):
            vaddrs, kinds = block(first, min(BLOCK, accesses - first))
            pack_records(vaddrs, kinds).tofile(out)
    partial.replace(path)


def make_stream_trace(path: Path, accesses: int) -> None:
    """8-byte steps over 1 GiB, round and round; every fourth access a store."""
    def block(first: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        index = np.arange(first, first + n, dtype=np.uint64)
        vaddrs = BASE + (index * np.uint64(8)) % np.uint64(GiB)
        return vaddrs, (index % np.uint64(4) == 3).astype(np.uint64)
    write_blocks(path, accesses, block)


def make_random_trace(path: Path, accesses: int, seed: int = 1) -> None:
    """Uniform over 4 GiB: every access a different page, almost every one a walk."""
    rng = np.random.default_rng(seed)

    def block(first: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        vaddrs = BASE + rng.integers(0, 4 * GiB, n, dtype=np.uint64)
        return vaddrs, (rng.random(n) < 0.3).astype(np.uint64)
    write_blocks(path, accesses, block)


def make_mixed_trace(path: Path, accesses: int, seed: int = 2) -> None:
    """70% hot 64 MiB, 25% random over 1 GiB, 5% instruction fetches in 8 MiB of code."""
    rng = np.random.default_rng(seed)

    def block(first: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        pick = rng.random(n)
        hot = BASE + rng.integers(0, 64 * MiB, n, dtype=np.uint64)
        cold = BASE + 2 * GiB + rng.integers(0, GiB, n, dtype=np.uint64)
        code = CODE + rng.integers(0, 8 * MiB, n, dtype=np.uint64)
        vaddrs = np.where(pick < 0.70, hot, np.where(pick < 0.95, cold, code))
        data_kind = (rng.random(n) < 0.3).astype(np.uint64)
        return vaddrs, np.where(pick < 0.95, data_kind, np.uint64(2))
    write_blocks(path, accesses, block)


def make_prose(size: int, seed: int = 5) -> bytes:
    """``size`` bytes of prose-like text: words of a Zipf-distributed vocabulary of 20,000
    made-up words, in sentences and lines of about 72 characters (deterministic)."""
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"etaoinshrdlcumwfgypbvkjxqz", dtype=np.uint8)
    weights = 1.0 / np.arange(1, 27) ** 0.9
    vocabulary = [bytes(letters[rng.choice(26, size=int(rng.integers(1, 11)),
                                           p=weights / weights.sum())])
                  for _ in range(20_000)]
    ranks = np.minimum(rng.zipf(1.2, size=size // 4), len(vocabulary)) - 1
    text, line = bytearray(), 0
    for number, rank in enumerate(ranks.tolist()):
        word = vocabulary[rank]
        text += word
        line += len(word) + 1
        if line > 72:
            text += b"\n"
            line = 0
        else:
            text += b". " if number % 13 == 12 else b" "
        if len(text) >= size:
            break
    return bytes(text[:size])


def record_gzip_trace(path: Path, text_bytes: int) -> None:
    """Run gzip -c over generated prose under valgrind lackey, converting its trace to
    .pwt as it streams (the text form would be about 4 GB)."""
    for tool in ("valgrind", "gzip"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"the gzip trace needs {tool}")
    text = path.with_name(f"prose-{text_bytes}.txt")
    text.write_bytes(make_prose(text_bytes))
    partial = path.with_name(path.name + ".partial")
    read_fd, write_fd = os.pipe()
    command = ["valgrind", "--tool=lackey", "--trace-mem=yes", f"--log-fd={write_fd}",
               "gzip", "-c", str(text)]
    print(f"recording {' '.join(command)} (once; a few minutes) ...", flush=True)
    process = subprocess.Popen(command, pass_fds=(write_fd,), stdout=subprocess.DEVNULL)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as stream, open(partial, "wb") as out:
        for chunk in iter_lackey(stream, "lackey gzip", chunk_bytes=16 * MiB,
                                 skip_valgrind_notes=True):
            chunk.words.tofile(out)
    if process.wait() != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode})")
    partial.replace(path)


def make_lackey_text(path: Path, size: int, seed: int = 3) -> None:
    """About ``size`` bytes of lackey lines (fetches, loads, stores, modifies)."""
    rng = np.random.default_rng(seed)
    lines = []
    for kind, base in (("I ", 0x401000), (" L", 0x1FFF000000), (" S", 0x1FFF000000),
                       (" M", 0x4A000000)):
        for addr in base + rng.integers(0, 1 << 20, 2000):
            lines.append(f"{kind} {addr:08x},{int(rng.integers(1, 9))}\n")
    block = "".join(rng.permutation(lines)).encode()
    with open(path, "wb") as out:
        out.write(b"==1== Lackey, an example Valgrind tool\n")
        out.writelines(block for _ in range(size // len(block) + 1))


# -- running and timing ------------------------------------------------------------------
# Linux carries a process's peak RSS across fork and exec into its child's (exec records
# the replaced image's), so a child of this process, which holds traces in memory while
# making them, would report this process's peak. Children are started by a small
# launcher process made first, whose own peak is a few MiB.
LAUNCHER = """
import json, os, subprocess, sys, tempfile, time
for line in sys.stdin:
    command = json.loads(line)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        print(json.dumps({"wall": wall, "cpu": usage.ru_utime + usage.ru_stime,
                          "maxrss": usage.ru_maxrss, "status": os.waitstatus_to_exitcode(status),
                          "stdout": out.read(), "stderr": err.read()}), flush=True)
"""


class Launcher:
    """Runs whole processes for timing (wall time, their own CPU time and peak RSS)."""

    def __init__(self) -> None:
        self._process = subprocess.Popen([sys.executable, "-c", LAUNCHER], text=True,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def raw(self, command: list[str]) -> tuple[float, float, int, Any]:
        """The command's wall time, CPU time, peak RSS (KiB) and JSON output."""
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(json.dumps(command) + "\n")
        self._process.stdin.flush()
        result = json.loads(self._process.stdout.readline())
        if result["status"] != 0:
            sys.exit(f"{' '.join(command)} failed ({result['status']}):\n{result['stderr']}")
        return result["wall"], result["cpu"], result["maxrss"], json.loads(result["stdout"])

    def run(self, command: list[str]) -> Timing:
        wall, cpu, maxrss, report = self.raw(command)
        return Timing(wall, cpu, maxrss, {k: int(report[k]) for k in COUNTERS})

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        self._process.wait()


def compile_c(workdir: Path) -> Path:
    if shutil.which("gcc") is None:
        sys.exit("gcc is needed to build the C baseline")
    binary = workdir / "tlbsim"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(C_SOURCE)], check=True)
    return binary


def bench_trace(launcher: Launcher, name: str, trace: Path, tlbsim: Path, repeat: int,
                goal: float) -> bool:
    """Time both on one trace; print the figures; True if they meet ``goal`` (speed-up)
    and the memory limit."""
    pagewalk = [sys.executable, "-m", "pagewalk", "trace", str(trace), "--json"]
    baseline = [str(tlbsim), str(trace), "4KiB"]
    runs: dict[str, list[Timing]] = {"pagewalk": [], "C": []}
    for _ in range(repeat):                       # interleaved: both see the same machine
        runs["C"].append(launcher.run(baseline))
        runs["pagewalk"].append(launcher.run(pagewalk))
    reports = {who: {str(t.report) for t in timings} for who, timings in runs.items()}
    if len(reports["C"] | reports["pagewalk"]) != 1:
        sys.exit(f"{name}: counters differ\n C:        {reports['C']}\n"
                 f" pagewalk: {reports['pagewalk']}")
    accesses = runs["C"][0].report["accesses"]
    wall = {who: sorted(r.wall_s for r in timings) for who, timings in runs.items()}
    cpu = {who: min(r.cpu_s for r in timings) for who, timings in runs.items()}
    print(f"\n{name}: {accesses:,} accesses, {trace.stat().st_size / 1e9:.2f} GB "
          "(counters identical)")
    for who in ("C", "pagewalk"):
        print(f"  {who:9s} wall {wall[who][0]:6.2f} s (of {repeat}: "
              f"{', '.join(f'{w:.2f}' for w in wall[who])})   cpu {cpu[who]:6.2f} s   "
              f"{accesses / wall[who][0] / 1e6:7.1f} M accesses/s")
    speedup = wall["C"][0] / wall["pagewalk"][0]
    rss_mib = max(r.max_rss_kib for r in runs["pagewalk"]) / 1024
    ok = speedup >= goal and rss_mib <= RSS_LIMIT_MIB
    print(f"  speed-up (C time / pagewalk time): {speedup:.2f}x wall, "
          f"{cpu['C'] / cpu['pagewalk']:.2f}x cpu   (goal >= {goal}x)   "
          f"peak RSS {rss_mib:.0f} MiB (limit {RSS_LIMIT_MIB})   {'ok' if ok else 'SHORT'}")
    return ok


def bench_startup(launcher: Launcher, trace: Path, repeat: int) -> None:
    """Whole ``pagewalk trace`` of a small trace: start-up, imports and loading."""
    command = [sys.executable, "-m", "pagewalk", "trace", str(trace), "--json"]
    timings = sorted(launcher.run(command).wall_s for _ in range(max(repeat, 5)))
    print(f"\nstart-up: pagewalk trace of {trace.stat().st_size:,} bytes: "
          f"{timings[0]:.2f} s best, {timings[len(timings) // 2]:.2f} s median "
          f"(goal < {STARTUP_LIMIT_S} s)")


def bench_lackey(path: Path) -> None:
    list(iter_chunks(path, "lackey", chunk_bytes=1 << 16))      # load the compiled scanner
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        records = sum(chunk.words.shape[0] for chunk in iter_chunks(path, "lackey"))
        best = min(best, time.process_time() - start)
    size = os.path.getsize(path)
    print(f"\nlackey parsing: {size / 1e6:.0f} MB, {records:,} records: "
          f"{size / best / 1e6:.0f} MB/s (issue 6: >= 100 MB/s)")


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pagewalk" / "bench-traces"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", default="stream-1g,gzip,random-4g,mixed",
                        help="comma-separated figures to run")
    parser.add_argument("--cache", type=Path, default=default_cache(),
                        help="where the traces are made once and kept")
    parser.add_argument("--gzip-text-bytes", type=int, default=1_000_000)
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-trace-"))
    launcher = Launcher()
    try:
        tlbsim = compile_c(workdir)
        figures: dict[str, tuple[Path, Callable[[Path], None], float]] = {
            "stream-1g": (args.cache / "stream-1g-400m.pwt",
                          lambda p: make_stream_trace(p, 400_000_000), 2.0),
            "gzip": (args.cache / f"gzip-{args.gzip_text_bytes}.pwt",
                     lambda p: record_gzip_trace(p, args.gzip_text_bytes), 1.0),
            "random-4g": (args.cache / "random-4g-20m.pwt",
                          lambda p: make_random_trace(p, 20_000_000), 2.5),
            "mixed": (args.cache / "mixed-20m.pwt",
                      lambda p: make_mixed_trace(p, 20_000_000), 1.25),
        }
        chosen = [name.strip() for name in args.only.split(",") if name.strip()]
        for name in chosen:
            if name not in figures:
                sys.exit(f"unknown figure {name!r} (figures: {', '.join(figures)})")
            path, make, _ = figures[name]
            if not path.exists():
                make(path)
        small = workdir / "small.pwt"
        make_mixed_trace(small, 200_000)
        # warm-up: builds pagewalk's cache of compiled kernels on a first run ever
        launcher.run([sys.executable, "-m", "pagewalk", "trace", str(small), "--json"])
        print(f"pagewalk vs C (gcc -O2 {C_SOURCE.relative_to(HERE.parent)}), whole processes, "
              f"best of {args.repeat}; machine load {os.getloadavg()[0]:.1f} "
              f"on {os.cpu_count()} CPUs")
        verdicts = {name: bench_trace(launcher, name, figures[name][0], tlbsim, args.repeat,
                                      figures[name][2]) for name in chosen}
        bench_startup(launcher, small, args.repeat)
        lackey = workdir / "bench.lackey"
        make_lackey_text(lackey, 100 * 1_000_000)
        bench_lackey(lackey)
        print("\n" + ", ".join(f"{name}: {'ok' if ok else 'SHORT'}"
                               for name, ok in verdicts.items()))
    finally:
        launcher.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
