"""Replaying a recording against `pagewalk trace` of the same accesses, whole processes.

Issue 16: replay throughput at least that of ``trace`` on the same accesses (the
syscalls must not slow the access path), host RSS flat in the recording's length.

A synthetic recording (``.pwr``, record/recfile.py's writer) of a program-like stream:
a process with 2 MiB of code, a stack and a heap, whose accesses come in short runs
(instruction fetches along basic blocks in a hot set of functions, stack pushes and
pops near the top, loads and stores in a hot part of the heap, a stream through a
buffer), with the memory syscalls of a program that mallocs a large block now and then:
every 2^20 accesses an anonymous mmap of 256 KiB (above glibc's mmap threshold), streamed
through, and its munmap; a brk that grows the heap by 1 MiB every 8 of them, up to 8 MiB.
The same accesses (the recorded addresses) also go into a ``.pwt`` trace. For each length
(default 10^7 and 10^8 accesses) both run as whole processes, start-up included, on the
reference TLB model:

    pagewalk replay REC.pwr --tlb reference --json
    pagewalk trace  REC.pwt --tlb reference --json

and the benchmark prints accesses/s of each (best of ``--repeat``, interleaved), the ratio
(issue: replay >= trace), each one's peak RSS, where one replay's time goes (start-up,
decoding the recording, the compiled access loop, page faults in the Python kernel,
syscalls), and replay's peak RSS at the longer length over the shorter (flat: at most
1.1x). The replay must translate every access and raise no signal (else the recording is
wrong, and the benchmark stops). About 5.7% of the stream's accesses miss the L1 TLBs
(reference model). Files are made once into ``--cache`` (about 1 GB at 10^8 accesses).

    python benchmarks/bench_replay.py [--lengths 10000000,100000000] [--repeat 3] [--cache DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from bench_trace import Launcher as TraceLauncher
from bench_trace import default_cache

from pagewalk.record.recfile import RecordingWriter
from pagewalk.record.valgrind_log import Syscall
from pagewalk.trace.formats import pack_records

KiB, MiB = 1 << 10, 1 << 20
STREAM_VERSION = 1                   # in the cached files' names: bump when the stream changes
EPOCH = 1 << 20                      # accesses between one buffer's mmap and its munmap
BUFFER = 256 * KiB
HEAP_STEP, HEAP_MAX, HEAP_EVERY = 1 * MiB, 8 * MiB, 8
RSS_FLAT = 1.10                      # replay's peak RSS, longer over shorter recording
PROGRAM = "/usr/local/bin/bench-replay-program"
CODE = 2 * MiB
# The layout: (start in valgrind's client, start natively), as record/recorder.py keeps it.
REC_IMAGE, NATIVE_IMAGE = 0x108000, 0x555555554000
REC_STACK_END, NATIVE_STACK_END = 0x1FFF001000, 0x7FFFFFFFF000
NATIVE_STACK = 136 * KiB
REC_BRK = 0x4A4B000                  # valgrind's client brk segment
REC_MMAP = 0x6000000                 # where valgrind put the client's mmaps (two slots)
PROT_RW, MAP_PRIVATE_ANONYMOUS, FD_NONE = 3, 0x22, (1 << 64) - 1
SYS_MMAP, SYS_MUNMAP, SYS_BRK, SYS_EXIT_GROUP = 9, 11, 12, 231
# Segments of the stream: share of segments, mean run length, step between accesses.
MAX_RUN = 32
SPAN = MAX_RUN * 8                   # the most bytes one run covers
SEGMENTS = (("code", 0.45, 6, 4), ("stack", 0.25, 3, 8), ("heap", 0.20, 2, 8),
            ("buffer", 0.10, 16, 8))


# -- the recording ---------------------------------------------------------------------------
def image_lines(base: int) -> list[list[object]]:
    """The program's mappings (maps-line JSON: start, end, perms, offset, path): a header
    page, the code, read-only data, data, and the anonymous bss after them."""
    text, rodata, data = base + 0x1000, base + 0x1000 + CODE, base + 0x11000 + CODE
    return [[base, text, "r--p", 0, PROGRAM],
            [text, rodata, "r-xp", 0x1000, PROGRAM],
            [rodata, data, "r--p", 0x1000 + CODE, PROGRAM],
            [data, data + 0x2000, "rw-p", 0x11000 + CODE, PROGRAM],
            [data + 0x2000, data + 0xA000, "rw-p", 0, ""]]


def header() -> dict[str, object]:
    native = image_lines(NATIVE_IMAGE)
    native.append([NATIVE_STACK_END - NATIVE_STACK, NATIVE_STACK_END, "rw-p", 0, "[stack]"])
    valgrind = image_lines(REC_IMAGE)[:4]
    valgrind.append([REC_STACK_END - 2 * MiB, REC_STACK_END, "rw-p", 0, ""])
    return {"format": "pagewalk-recording", "version": 1, "argv": [PROGRAM],
            "native": {"maps": native, "present": [], "start_brk": int(str(native[-2][1]))},
            "valgrind": {"maps": valgrind, "stack_end": REC_STACK_END},
            "files": {PROGRAM: 0x13000 + CODE}}


@dataclass
class Stream:
    """The program-like access stream, an epoch (one buffer's life) at a time."""

    rng: np.random.Generator
    heap_size: int = 0
    position: int = 0                # of the buffer stream

    def epoch(self, nr_accesses: int, buffer: int) -> npt.NDArray[np.uint64]:
        rng = self.rng
        nr_segments = nr_accesses // 4 + 64       # runs average under 5 accesses
        shares = np.array([s[1] for s in SEGMENTS])
        kind_of = rng.choice(len(SEGMENTS), size=nr_segments, p=shares)
        means = np.array([s[2] for s in SEGMENTS])[kind_of]
        lengths = np.minimum(rng.geometric(1.0 / means), MAX_RUN)
        steps = np.array([s[3] for s in SEGMENTS], dtype=np.uint64)[kind_of]
        # where each segment starts (a run stays inside its area: at most MAX_RUN * 8 bytes)
        functions = rng.zipf(1.3, nr_segments) % 4096
        code = REC_IMAGE + 0x1000 + functions * 509 * 64 % (CODE - SPAN)
        stack = REC_STACK_END - SPAN - 8 * rng.integers(0, 1024, nr_segments)
        heap_top = np.where(rng.random(nr_segments) < 0.8, MiB, self.heap_size) - SPAN
        heap = REC_BRK + 16 * (rng.integers(0, 1 << 40, nr_segments) % (heap_top // 16))
        in_buffer = np.cumsum(np.where(kind_of == 3, 128, 0)) + self.position
        self.position = int(in_buffer[-1]) % BUFFER
        starts = np.select([kind_of == 0, kind_of == 1, kind_of == 2],
                           [code, stack, heap], buffer + in_buffer % (BUFFER - SPAN))
        starts = starts.astype(np.uint64)
        total = np.cumsum(lengths)
        last = int(np.searchsorted(total, nr_accesses))   # enough segments for the epoch
        lengths, starts, steps, kind_of = (lengths[:last + 1], starts[:last + 1],
                                           steps[:last + 1], kind_of[:last + 1])
        first = np.repeat(np.cumsum(lengths) - lengths, lengths)
        within = (np.arange(first.shape[0]) - first).astype(np.uint64)
        vaddrs = np.repeat(starts, lengths) + within * np.repeat(steps, lengths)
        is_code = np.repeat(kind_of == 0, lengths)
        stores = rng.random(vaddrs.shape[0]) < 0.35
        kinds = np.where(is_code, 2, stores.astype(np.int64))
        words: npt.NDArray[np.uint64] = pack_records(vaddrs[:nr_accesses], kinds[:nr_accesses])
        return words


def make_recording(rec_path: Path, trace_path: Path, nr_accesses: int, seed: int = 16) -> None:
    """The recording and the .pwt of its accesses."""
    stream = Stream(np.random.default_rng(seed))
    partial = [p.with_name(p.name + ".partial") for p in (rec_path, trace_path)]
    with open(partial[0], "wb") as rec, open(partial[1], "wb") as trace:
        writer = RecordingWriter(rec)
        writer.header(header())
        writer.syscall(Syscall(SYS_BRK, "brk", (0,), REC_BRK))
        done, epoch = 0, 0
        while done < nr_accesses:
            if epoch % HEAP_EVERY == 0 and stream.heap_size < HEAP_MAX:
                stream.heap_size += HEAP_STEP
                top = REC_BRK + stream.heap_size
                writer.syscall(Syscall(SYS_BRK, "brk", (top,), top))
            buffer = REC_MMAP + (epoch % 2) * 2 * BUFFER
            writer.syscall(Syscall(SYS_MMAP, "mmap", (0, BUFFER, PROT_RW, MAP_PRIVATE_ANONYMOUS,
                                                      FD_NONE, 0), buffer))
            words = stream.epoch(min(EPOCH, nr_accesses - done), buffer)
            writer.accesses_run(words)
            words.tofile(trace)
            writer.syscall(Syscall(SYS_MUNMAP, "munmap", (buffer, BUFFER), 0))
            done += words.shape[0]
            epoch += 1
        writer.syscall(Syscall(SYS_EXIT_GROUP, "exit_group", (0,), 0))
        writer.end(0)
    for made, path in zip(partial, (rec_path, trace_path), strict=True):
        made.replace(path)


# -- running ---------------------------------------------------------------------------------
# One replay in a child, timing its parts: decoding the recording's frames (zlib), the
# access runs (record/fastloop.py run_accesses) less the page faults handed back to the
# Python kernel (Kernel.do_user_addr_fault), and the syscalls.
BREAKDOWN = """
import json, sys, time
from pagewalk.kernel.kernel import Kernel
from pagewalk.record import recfile, replay
spent = {"decode": 0.0, "runs": 0.0, "faults": 0.0, "syscalls": 0.0}
faults = [0]
def timed(name, function):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - start
            faults[0] += name == "faults"
    return wrapper
recfile._decode = timed("decode", recfile._decode)
replay.run_accesses = timed("runs", replay.run_accesses)
replay.Replay.syscall = timed("syscalls", replay.Replay.syscall)
start = time.perf_counter()
replay.replay_recording(sys.argv[1], None, "reference")
total = time.perf_counter() - start
Kernel.do_user_addr_fault = timed("faults", Kernel.do_user_addr_fault)
spent = dict.fromkeys(spent, 0.0)
start = time.perf_counter()
replay.replay_recording(sys.argv[1], None, "reference")
print(json.dumps({**spent, "total": time.perf_counter() - start, "faults_n": faults[0],
                  "plain": total}))
"""


@dataclass
class Run:
    wall_s: float
    cpu_s: float
    max_rss_kib: int
    report: dict[str, Any]


class Launcher(TraceLauncher):
    """bench_trace's launcher (it says why whole processes run from a small launcher),
    giving each run's wall time, CPU time, peak RSS and JSON output."""

    def run(self, command: list[str]) -> Run:  # type: ignore[override]
        return Run(*self.raw(command))


def pagewalk(*args: str) -> list[str]:
    return [sys.executable, "-m", "pagewalk", *args, "--tlb", "reference", "--json"]


def bench_length(launcher: Launcher, rec: Path, trace: Path, nr_accesses: int,
                 repeat: int) -> tuple[float, int]:
    """Time both on one length; print the figures; the ratio and replay's peak RSS."""
    runs: dict[str, list[Run]] = {"trace": [], "replay": []}
    for _ in range(repeat):                  # interleaved: both see the same machine
        runs["trace"].append(launcher.run(pagewalk("trace", str(trace))))
        runs["replay"].append(launcher.run(pagewalk("replay", str(rec))))
    replay, traced = runs["replay"][0].report, runs["trace"][0].report
    if replay["accesses"] != nr_accesses or traced["accesses"] != nr_accesses:
        sys.exit(f"accesses: replay {replay['accesses']}, trace {traced['accesses']}, "
                 f"recorded {nr_accesses}")
    if replay["untranslated"] or replay["signals"] or replay["diverged"]:
        sys.exit(f"the replay lost accesses: {replay}")
    print(f"\n{nr_accesses:,} accesses: recording {rec.stat().st_size / 1e6:.0f} MB, "
          f"trace {trace.stat().st_size / 1e6:.0f} MB; replay: {replay['minflt']:,} faults, "
          f"{replay['stlb_misses']:,} STLB misses; trace: {traced['faults']:,} faults, "
          f"{traced['walks']:,} walks")
    best = {}
    for who, timings in runs.items():
        walls = sorted(r.wall_s for r in timings)
        cpu = min(r.cpu_s for r in timings)
        rss = max(r.max_rss_kib for r in timings) / KiB
        best[who] = walls[0]
        print(f"  {who:7s} wall {walls[0]:6.2f} s (of {repeat}: "
              f"{', '.join(f'{w:.2f}' for w in walls)})   cpu {cpu:6.2f} s   "
              f"{nr_accesses / walls[0] / 1e6:6.1f} M accesses/s   peak RSS {rss:5.0f} MiB")
    ratio = best["trace"] / best["replay"]
    print(f"  replay / trace throughput: {ratio:.2f}x (issue: >= 1)   "
          f"{'ok' if ratio >= 1 else 'SHORT'}")
    bench_breakdown(launcher, rec, nr_accesses, best["replay"])
    return ratio, max(r.max_rss_kib for r in runs["replay"])


def bench_breakdown(launcher: Launcher, rec: Path, nr_accesses: int, whole_s: float) -> None:
    """Where one replay's time goes (a child: two replays, the second with the fault
    path timed too, each wrapped call costing a little)."""
    parts = launcher.run([sys.executable, "-c", BREAKDOWN, str(rec)]).report
    loop = float(parts["runs"]) - float(parts["faults"])
    faults = int(parts["faults_n"])
    print(f"  replay's parts: start-up {whole_s - float(parts['plain']):.2f} s, decoding the "
          f"recording {parts['decode']:.2f} s, the compiled access loop {loop:.2f} s "
          f"({nr_accesses / loop / 1e6:.0f} M accesses/s), {faults:,} page faults in the "
          f"Python kernel {parts['faults']:.2f} s "
          f"({float(parts['faults']) / max(faults, 1) * 1e6:.0f} us each), syscalls "
          f"{parts['syscalls']:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="10000000,100000000",
                        help="comma-separated numbers of accesses (two: RSS flatness)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=default_cache(),
                        help="where the recordings are made once and kept")
    args = parser.parse_args()
    lengths = sorted(int(n) for n in args.lengths.split(",") if n.strip())
    args.cache.mkdir(parents=True, exist_ok=True)
    files = {}
    for length in lengths:
        stem = f"replay-v{STREAM_VERSION}-{length}"
        rec, trace = args.cache / f"{stem}.pwr", args.cache / f"{stem}.pwt"
        if not rec.exists() or not trace.exists():
            print(f"making {rec} and {trace.name} ...", flush=True)
            make_recording(rec, trace, length)
        files[length] = (rec, trace)
    launcher = Launcher()
    try:
        small = files[lengths[0]]               # warm-up: builds the compiled code once
        launcher.run(pagewalk("replay", str(small[0])))
        launcher.run(pagewalk("trace", str(small[1])))
        print(f"pagewalk replay vs trace, whole processes, best of {args.repeat}; machine "
              f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        results = {n: bench_length(launcher, *files[n], n, args.repeat) for n in lengths}
    finally:
        launcher.close()
    verdicts = [f"{n:,}: {'ok' if r[0] >= 1 else 'SHORT'}" for n, r in results.items()]
    if len(lengths) > 1:
        growth = results[lengths[-1]][1] / results[lengths[0]][1]
        flat = growth <= RSS_FLAT
        print(f"\nreplay peak RSS: {results[lengths[-1]][1] / KiB:.0f} MiB at "
              f"{lengths[-1]:,} accesses, {results[lengths[0]][1] / KiB:.0f} MiB at "
              f"{lengths[0]:,}: {growth:.2f}x (flat: <= {RSS_FLAT}x)   "
              f"{'ok' if flat else 'GROWS'}")
        verdicts.append(f"RSS: {'ok' if flat else 'GROWS'}")
    print("\n" + ", ".join(verdicts))


if __name__ == "__main__":
    main()
