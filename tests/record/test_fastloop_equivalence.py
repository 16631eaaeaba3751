"""The compiled replay loop (record/fastloop.py) does what the readable path does
(Replay._run_reference: AddressMap, then Kernel.user_access per access): the same /proc
figures, MMU counters, TLB and page-walk-cache contents (LRU stamps included) and page
tables, on a small recording that goes through each of its paths: slot hits of both
classes, loads then stores to a clean page, TLB evictions, faults (demand paging, the
zero page then a store to it, THP), an mprotect that makes stores fault with SIGSEGV,
accesses to a range after its munmap, and the stack grown by an access below it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pagewalk.errors import TraceError
from pagewalk.hw.pkru import INIT_PKRU_VALUE
from pagewalk.mm import pkeys
from pagewalk.record.recfile import RecordingWriter
from pagewalk.record.replay import Replay, ReplayResult, replay_recording
from pagewalk.record.valgrind_log import Syscall
from pagewalk.trace.formats import pack_records

KiB, MiB = 1 << 10, 1 << 20
PROGRAM = "/usr/local/bin/fastloop-test"
CODE = 1 * MiB
REC_IMAGE, NATIVE_IMAGE = 0x108000, 0x555555554000
REC_STACK_END, NATIVE_STACK_END = 0x1FFF001000, 0x7FFFFFFFF000
NATIVE_STACK = 136 * KiB
REC_BRK, REC_MMAP, REC_KEPT, BUFFER = 0x4A4B000, 0x6000000, 0x7000000, 4 * MiB
LOAD, STORE, FETCH = 0, 1, 2
#: a unified L1 of two ways: fills evict the slots' entries, data and fetch share sets
TINY_TLB = """name: tiny
paging_levels: 4
tlb:
  - {name: L1, level: 1, serves: unified, pages: [4KiB, 2MiB], entries: 8, ways: 2}
  - {name: STLB, level: 2, serves: unified, pages: [4KiB, 2MiB], entries: 64, ways: 4}
pwc: {pml5e: 0, pml4e: 2, pdpte: 2, pde: 4}
"""
#: init_pkru_value with key 0 write-disabled too: every store faults (SEGV_PKUERR)
PKRU_NO_WRITES = INIT_PKRU_VALUE | 0b10


def _image(base: int) -> list[list[object]]:
    text, rodata, data = base + 0x1000, base + 0x1000 + CODE, base + 0x11000 + CODE
    return [[base, text, "r--p", 0, PROGRAM], [text, rodata, "r-xp", 0x1000, PROGRAM],
            [rodata, data, "r--p", 0x1000 + CODE, PROGRAM],
            [data, data + 0x2000, "rw-p", 0x11000 + CODE, PROGRAM],
            [data + 0x2000, data + 0xA000, "rw-p", 0, ""]]


def _header() -> dict[str, object]:
    native = _image(NATIVE_IMAGE)
    native.append([NATIVE_STACK_END - NATIVE_STACK, NATIVE_STACK_END, "rw-p", 0, "[stack]"])
    valgrind = _image(REC_IMAGE)[:4]
    valgrind.append([REC_STACK_END - 2 * MiB, REC_STACK_END, "rw-p", 0, ""])
    return {"format": "pagewalk-recording", "version": 1, "argv": [PROGRAM],
            "native": {"maps": native, "present": [[NATIVE_STACK_END - 4096, False]],
                       "start_brk": int(str(native[-2][1]))},
            "valgrind": {"maps": valgrind, "stack_end": REC_STACK_END},
            "files": {PROGRAM: 0x13000 + CODE}}


def _mixed(rng: np.random.Generator, count: int, heap: int) -> np.ndarray:
    """Program-like accesses: fetches along the code, stack pushes and pops, loads and
    stores over ``heap`` bytes of the heap (more pages than the L1 dTLB holds)."""
    runs = rng.integers(1, 12, count // 6)
    area = rng.choice(3, size=runs.shape[0], p=[0.5, 0.3, 0.2])
    starts = np.select([area == 0, area == 1],
                       [REC_IMAGE + 0x1000 + rng.integers(0, CODE - 256, runs.shape[0]),
                        REC_STACK_END - 256 - 8 * rng.integers(0, 1024, runs.shape[0])],
                       REC_BRK + rng.integers(0, heap - 256, runs.shape[0]))
    offsets = np.arange(int(runs.sum())) - np.repeat(np.cumsum(runs) - runs, runs)
    vaddrs = np.repeat(starts, runs) + 8 * offsets
    kinds = np.where(np.repeat(area == 0, runs), FETCH,
                     np.less(rng.random(vaddrs.shape[0]), 0.4).astype(np.int64))
    return pack_records(vaddrs, kinds)


def _loop(rng: np.random.Generator, iterations: int) -> np.ndarray:
    """A loop: its body's fetches on two code pages, then a load and a store on one of
    64 heap pages and a push on the stack, round and round."""
    body = REC_IMAGE + 0x1000 + np.array([0xFF0, 0xFF8, 0x1000, 0x1008, 0x1010])
    heap = REC_BRK + 4096 * rng.integers(0, 64, iterations)
    vaddrs = np.concatenate([np.tile(body, (iterations, 1)),
                             np.stack([heap, heap + 8, np.full(iterations, REC_STACK_END - 64)],
                                      axis=1)], axis=1)
    kinds = np.tile([FETCH] * 5 + [LOAD, STORE, STORE], (iterations, 1))
    return pack_records(vaddrs.ravel(), kinds.ravel())


def _call(name: str, nr: int, args: tuple[int, ...], result: int) -> Syscall:
    return Syscall(nr, name, args, result)


def write_recording(path: Path, seed: int = 3) -> None:
    rng = np.random.default_rng(seed)
    with open(path, "wb") as stream:
        out = RecordingWriter(stream)
        out.header(_header())
        out.syscall(_call("brk", 12, (0,), REC_BRK))
        out.syscall(_call("brk", 12, (REC_BRK + MiB,), REC_BRK + MiB))
        out.accesses_run(_mixed(rng, 12_000, MiB))
        out.accesses_run(_loop(rng, 2_000))
        # fresh heap pages: read (the zero page), then written (its copy)
        fresh = REC_BRK + MiB - 64 * KiB + 4096 * np.arange(16)
        out.accesses_run(pack_records(np.concatenate([fresh, fresh + 8]),
                                      np.repeat([LOAD, STORE], 16)))
        out.syscall(_call("mmap", 9, (0, BUFFER, 3, 0x22, (1 << 64) - 1, 0), REC_MMAP))
        stream_through = REC_MMAP + 512 * np.arange(BUFFER // 512)
        out.accesses_run(pack_records(stream_through, np.full(stream_through.shape, STORE)))
        out.accesses_run(_mixed(rng, 12_000, MiB))
        out.syscall(_call("mprotect", 10, (REC_MMAP, BUFFER, 1), 0))
        some = REC_MMAP + 4096 * rng.integers(0, BUFFER // 4096, 200)
        # on each page a load, a store (refused: read-only, though dirty), a load
        out.accesses_run(pack_records(np.repeat(some, 3) + np.tile([0, 8, 16], 200),
                                      np.tile([LOAD, STORE, LOAD], 200)))
        out.syscall(_call("munmap", 11, (REC_MMAP, BUFFER), 0))
        out.accesses_run(pack_records(some[:50], np.zeros(50, dtype=np.int64)))
        below = REC_STACK_END - 200 * KiB + 8 * np.arange(64)      # under the native stack
        out.accesses_run(pack_records(below, np.full(64, STORE)))
        # a buffer kept to the exit (THP: huge pages at exit), stored to in runs
        out.syscall(_call("mmap", 9, (0, BUFFER, 3, 0x22, (1 << 64) - 1, 0), REC_KEPT))
        runs = REC_KEPT + 4096 * rng.integers(0, BUFFER // 4096, 300)
        kept = (runs[:, None] + 8 * np.arange(20)).ravel()
        out.accesses_run(pack_records(kept, rng.integers(0, 2, kept.shape[0])))
        out.accesses_run(_mixed(rng, 12_000, MiB))
        out.syscall(_call("exit_group", 231, (0,), 0))
        out.end(0)


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fastloop") / "mixed.pwr"
    write_recording(path)
    return path


def _replay(path: Path, thp: str, tlb: str | None, pkru: int | None,
            monkeypatch: pytest.MonkeyPatch, reference: bool) -> tuple[ReplayResult, Replay]:
    """Replay ``path`` (``pkru``: written once the process is built); also hand back
    the Replay (its machine) as it finished."""
    finished: list[Replay] = []
    finish, exec_native = Replay.finish, Replay.exec_native

    def keep(self: Replay) -> ReplayResult:
        finished.append(self)
        return finish(self)

    def exec_then_wrpkru(self: Replay, header: dict[str, object]) -> None:
        exec_native(self, header)
        if pkru is not None:
            self.kernel.switch_to(self.task)
            pkeys.write_pkru(self.kernel, pkru)

    with monkeypatch.context() as patch:
        patch.setattr(Replay, "finish", keep)
        patch.setattr(Replay, "exec_native", exec_then_wrpkru)
        if reference:
            patch.setattr(Replay, "_run_compiled", Replay._run_reference)
        result = replay_recording(path, thp, tlb)
    return result, finished[0]


@pytest.mark.parametrize(("thp", "tlb", "pkru"), [
    ("never", None, None), ("always", None, None), ("always", "zen", None),
    ("always", "tiny", None), ("never", None, PKRU_NO_WRITES)])
def test_compiled_loop_leaves_what_the_reference_path_leaves(
        recording: Path, thp: str, tlb: str | None, pkru: int | None, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Figures, counters, TLBs and page-walk caches (tags, LRU stamps, entries, clock,
    statistics) and the page tables in physical memory: identical."""
    if tlb == "tiny":
        tlb = str(tmp_path / "tiny.yaml")
        Path(tlb).write_text(TINY_TLB)
    fast, fast_run = _replay(recording, thp, tlb, pkru, monkeypatch, reference=False)
    slow, slow_run = _replay(recording, thp, tlb, pkru, monkeypatch, reference=True)
    assert fast.to_json() == slow.to_json()
    # the recording went through the paths the loop hands back or shortcuts
    assert fast.signals >= (10_000 if pkru else 200) and fast.untranslated == 50
    assert fast.figures["minflt"] > 100
    assert fast.tlb["tlb_accesses"] > fast.tlb["l1_misses"] > fast.tlb["stlb_misses"] > 0
    assert (fast.figures["AnonHugePages"] > 0) == (thp == "always")
    fast_k, slow_k = fast_run.kernel, slow_run.kernel
    for name in ("tlb", "pwc"):
        a, b = getattr(fast_k.mmu, name), getattr(slow_k.mmu, name)
        for array in ("tags", "stamps", "payload", "clock"):
            assert np.array_equal(getattr(a.storage, array), getattr(b.storage, array)), \
                (name, array)
        assert np.array_equal(a.stats, b.stats), name
    assert np.array_equal(fast_run.task.mmu_counters, slow_run.task.mmu_counters)
    fast_phys, slow_phys = fast_k.pgtables.arrays.phys, slow_k.pgtables.arrays.phys
    assert np.array_equal(fast_phys.slot_of, slow_phys.slot_of)
    used = np.flatnonzero(fast_phys.slot_of >= 0)
    assert np.array_equal(fast_phys.pool[fast_phys.slot_of[used]],
                          slow_phys.pool[slow_phys.slot_of[used]])


def test_an_access_of_kind_3_is_named_not_replayed(tmp_path: Path) -> None:
    """Kind 3 is no access (.pwt): the replay stops with an error naming it."""
    path = tmp_path / "bad.pwr"
    with open(path, "wb") as stream:
        out = RecordingWriter(stream)
        out.header(_header())
        fetches = REC_IMAGE + 0x1000 + 4 * np.arange(10)
        kinds = np.full(10, FETCH)
        kinds[7] = 3
        out.accesses_run(pack_records(fetches, kinds))
        out.end(0)
    with pytest.raises(TraceError, match="access 7 of a run of the recording has kind 3"):
        replay_recording(path)


def test_an_access_the_kernel_never_resolves_stops_the_replay(
        recording: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As Kernel.user_access gives up after four faults of one access, so does the loop
    (it retries a faulted access itself) rather than fault forever."""
    exec_native = Replay.exec_native

    def exec_then_break(self: Replay, header: dict[str, object]) -> None:
        exec_native(self, header)               # its page faults are resolved
        monkeypatch.setattr(self.kernel, "do_user_addr_fault", lambda *args: None)

    for reference in (False, True):
        with monkeypatch.context() as patch:
            patch.setattr(Replay, "exec_native", exec_then_break)
            if reference:
                patch.setattr(Replay, "_run_compiled", Replay._run_reference)
            with pytest.raises(AssertionError, match="kept faulting"):
                replay_recording(recording)
