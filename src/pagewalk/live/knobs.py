"""The live kernel's knobs during a run: set them, and put every one back afterwards.

A run changes system-wide files (the /sys and /proc/sys paths of
``pagewalk.kernel.knobs.KNOB_SPECS``), so :class:`KnobGuard`

* takes a machine-wide lock first (``/tmp/pagewalk-oracle/lock``, the kernel oracle's
  own lock, so pagewalk and ``run_on_kernel.py`` never run at the same time);
* records every knob's value before touching any, in memory and in
  ``/tmp/pagewalk-oracle/knobs-original.json`` (the oracle's file and format: a run
  killed with SIGKILL is undone by the next run of either tool);
* restores them when the run ends, fails, or is interrupted: ``with`` exit, SIGINT,
  SIGTERM and SIGHUP (turned into KeyboardInterrupt while the guard is held, and blocked
  while restoring) and atexit.

Before a run every knob is set to the value the simulator boots with
(``knobs.defaults()``), then the scenario's ``system.sysfs``. khugepaged is kept from
scanning, as the oracle does: its sleep knobs are raised to an hour (a scenario's
values for them are not written; the simulator only scans in ``khugepaged`` steps),
and a :class:`Decoy` mm is registered ahead of the scenario's (see its docstring).
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import re
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, Self, TextIO

from pagewalk.errors import ConfigError
from pagewalk.kernel import knobs as knob_registry
from pagewalk.live import probe as probe_mod
from pagewalk.live.errors import LiveError
from pagewalk.live.files import real_knob, scheduler_knob
from pagewalk.units import GiB

SYSTEM_DIR = Path("/tmp/pagewalk-oracle")     # shared with shared/oracle/run_on_kernel.py
LOCK_FILE = SYSTEM_DIR / "lock"
STATE_FILE = SYSTEM_DIR / "knobs-original.json"
KHUGEPAGED = knob_registry.KHUGEPAGED
#: khugepaged held still for a run (values of run_on_kernel.py INTERNAL_KNOBS).
FROZEN_KHUGEPAGED = {
    f"{KHUGEPAGED}/scan_sleep_millisecs": "3600000",
    f"{KHUGEPAGED}/alloc_sleep_millisecs": "3600000",
    f"{KHUGEPAGED}/pages_to_scan": "4096",
}
THP_ENABLED = f"{knob_registry.THP}/enabled"
SETTLE_SECONDS = 0.5      # after writing khugepaged knobs: let the pass they start finish
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

Notify = Callable[[str], None]


def read_knob(path: str) -> str:
    """The value a knob file holds: the bracketed word of a choice, else the text. The
    spec's read_ahead_kb path reads this machine's root disk's knob (files.real_knob)."""
    text = Path(real_knob(path)).read_text().strip()
    match = re.search(r"\[([^\]]+)\]", text)
    return match.group(1) if match else text


def is_pool(path: str) -> bool:
    return path.endswith("/nr_hugepages")


def canonical_knobs() -> dict[str, str]:
    """Every knob this kernel has, canonical path -> the simulator's boot value."""
    return {path: value for path, value in knob_registry.defaults().items()
            if os.path.exists(real_knob(path))}


def differing_from_simulator() -> dict[str, tuple[str, str]]:
    """Knobs whose live value is not the simulator's boot value: path -> (live, boot).
    khugepaged's scheduling knobs are left out: they change no figure of a run."""
    found = {}
    for path, boot in canonical_knobs().items():
        if path in FROZEN_KHUGEPAGED:
            continue
        live = read_knob(path)
        if live != boot and not (is_pool(path) and _surplus_held(path, boot)):
            found[path] = (live, boot)
    return found


class KnobGuard:
    """The lock, the saved originals and their restoration (see the module docstring).

    Without root nothing is written: the guard only takes the lock when it can.
    """

    def __init__(self, notify: Notify, write: bool) -> None:
        self.notify = notify
        self.write = write
        self.original: dict[str, str] = {}
        self._lock: TextIO | None = None
        self._handlers: dict[int, Any] = {}

    # -- entering: lock, leftovers, originals, handlers ------------------------------------
    def __enter__(self) -> Self:
        self._take_lock()
        try:
            if self.write:
                self._restore_leftovers()
                self._save_originals()
                self._install_handlers()
                atexit.register(self.restore)
        except BaseException:
            self._release_lock()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.write:
                self.restore()
                atexit.unregister(self.restore)
        finally:
            self._uninstall_handlers()
            self._release_lock()

    def _take_lock(self) -> None:
        if self.write:
            self._check_system_dir()
            SYSTEM_DIR.mkdir(mode=0o755, exist_ok=True)
            self._lock = open(LOCK_FILE, "a")  # noqa: SIM115 (held until __exit__)
        elif LOCK_FILE.exists():
            try:
                self._lock = open(LOCK_FILE)  # noqa: SIM115 (held until __exit__)
            except OSError:
                return
        else:
            return
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.notify(f"waiting for another live run to finish (lock {LOCK_FILE})")
            fcntl.flock(self._lock, fcntl.LOCK_EX)

    @staticmethod
    def _check_system_dir() -> None:
        """Root writes here: refuse a directory someone else could have planted."""
        try:
            info = os.lstat(SYSTEM_DIR)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() \
                or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise LiveError(f"{SYSTEM_DIR} is not a directory owned by uid {os.getuid()} "
                            "and writable only by it; remove it and run again")

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()          # closing drops the flock
            self._lock = None

    def _restore_leftovers(self) -> None:
        """A run killed outright (SIGKILL) left its originals on disk: put them back."""
        try:
            leftover = json.loads(STATE_FILE.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError):
            STATE_FILE.unlink(missing_ok=True)
            return
        if isinstance(leftover, dict):
            self.notify(f"restoring knobs left by an interrupted run ({STATE_FILE})")
            self.original = {str(k): str(v) for k, v in leftover.items()}
            self.restore()

    def _save_originals(self) -> None:
        """Keyed by the real file, as the oracle's state file is (read_ahead_kb: the root
        disk's); the root disk's I/O scheduler too (:meth:`quiet_disk` changes it)."""
        unrestored = self.original          # leftovers that could not be put back
        self.original = {real_knob(path): read_knob(path) for path in canonical_knobs()}
        scheduler = scheduler_knob()
        if scheduler is not None:
            self.original[scheduler] = read_knob(scheduler)
        self.original.update(unrestored)
        tmp = STATE_FILE.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.original))
        os.replace(tmp, STATE_FILE)

    def _install_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in SIGNALS:
            self._handlers[signum] = signal.signal(signum, _interrupt)

    def _uninstall_handlers(self) -> None:
        for signum, handler in self._handlers.items():
            signal.signal(signum, handler)
        self._handlers.clear()

    # -- writing -----------------------------------------------------------------------------
    def prepare(self, sysfs: dict[str, str], decoy: Decoy | None) -> None:
        """Before a run: khugepaged frozen, every knob at the simulator's boot value, the
        decoy registered, then the scenario's ``system.sysfs`` (in its order)."""
        wrote = False
        for path, value in FROZEN_KHUGEPAGED.items():
            wrote |= self._write_if_different(path, value)
        for path, value in canonical_knobs().items():
            if path not in FROZEN_KHUGEPAGED:
                wrote |= self._write_if_different(path, value)
        if decoy is not None:
            decoy.start()
        for path, value in sysfs.items():
            if self._resolve(path) in FROZEN_KHUGEPAGED:
                self.notify(f"{path}: not written on the live kernel (khugepaged is kept "
                            "from scanning during a run)")
                continue
            wrote |= self._write_if_different(path, value)
        if wrote:
            time.sleep(SETTLE_SECONDS)

    def set(self, path: str, value: str) -> None:
        """A ``set`` step: write the knob as root would (khugepaged's sleeps excepted)."""
        if self._resolve(path) in FROZEN_KHUGEPAGED:
            self.notify(f"{path}: not written on the live kernel (khugepaged is kept "
                        "from scanning during a run)")
            return
        self._write(path, value)

    def quiet_disk(self) -> None:
        """I/O scheduler ``none`` on the root disk while a scenario uses disk files:
        requests go to the driver at once, so ``inflight`` counts every read not yet
        done (under mq-deadline an 8 MiB window took 1-2 extra faults in 3 of 10 runs);
        restored with the knobs."""
        scheduler = scheduler_knob()
        if self.write and scheduler is not None:
            self._write_if_different(scheduler, "none")

    def _write_if_different(self, path: str, value: str) -> bool:
        if os.path.exists(real_knob(path)) and read_knob(path) == value:
            return False
        self._write(path, value)
        return True

    def _resolve(self, path: str) -> str:
        try:
            return knob_registry.resolve(path)
        except ConfigError:
            return path

    def _write(self, path: str, value: str) -> None:
        if not self.write:
            raise LiveError(f"{path}: writing a knob needs root")
        real = real_knob(path)
        if not os.path.exists(real):
            raise LiveError(f"{path}: this kernel has no such knob"
                            + (f" ({real})" if real != path else ""))
        try:
            with open(real, "w") as file:
                file.write(value)
        except OSError as err:
            raise LiveError(f"{path}: the kernel refused {value!r} ({err.strerror})") from None
        # A pool shrunk below its pages in use reads back larger (they become surplus, as
        # set_max_huge_pages does and the simulator models); only a shortfall is this
        # machine's memory, not the scenario's.
        if is_pool(path) and int(read_knob(path)) < int(value):
            raise LiveError(f"{path}: asked for {value} huge pages, the kernel allocated "
                            f"{read_knob(path)} (not enough contiguous free memory?)")

    def restore(self) -> None:
        """Put every recorded knob back (pools first: their pages are free by now), with
        the interrupting signals held off until it is done."""
        if not self.original:
            return
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        try:
            failures = []
            for path, value in sorted(self.original.items(), key=lambda kv: not is_pool(kv[0])):
                try:
                    if read_knob(path) != value:
                        with open(real_knob(path), "w") as file:
                            file.write(value)
                except OSError as err:
                    failures.append(f"{path}: {err.strerror}")
                    continue
                if is_pool(path) and read_knob(path) != value \
                        and not _surplus_held(path, value):
                    # the pages are back in the buddy allocator; another allocation may
                    # have split them meanwhile
                    failures.append(f"{path}: the kernel gave {read_knob(path)} of {value} "
                                    "pages")
            if failures:
                self.notify("WARNING: could not restore " + "; ".join(failures)
                            + f" (originals kept in {STATE_FILE})")
            else:
                STATE_FILE.unlink(missing_ok=True)
                self.original = {}
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _surplus_held(path: str, value: str) -> bool:
    """A pool that reads back above ``value`` only by surplus pages that reservations
    hold (set_max_huge_pages keeps them): restored as far as the kernel can; the
    reservation's owner (or a kernel leak: see live/hugetlb_state.py) has them."""
    try:
        surplus = int(read_knob(path.replace("nr_hugepages", "surplus_hugepages")))
    except (OSError, ValueError):
        return False
    return "nr_hugepages" in path and 0 < int(read_knob(path)) - int(value) <= surplus


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"interrupted by {signal.Signals(signum).name}")


@contextmanager
def thp_disabled_here() -> Iterator[None]:
    """Keep the measuring process itself out of the THP counters (PR_SET_THP_DISABLE);
    the probe clears the flag it inherits."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set, pr_get = 41, 42
    before = libc.prctl(pr_get, 0, 0, 0, 0)
    libc.prctl(pr_set, 1, 0, 0, 0)
    try:
        yield
    finally:
        libc.prctl(pr_set, 1 if before == 1 else 0, 0, 0, 0)


class Decoy:
    """A probe whose mm keeps khugepaged away from the scenario's processes.

    khugepaged scans registered mms in registration order from a cursor kept between
    wake-ups, at most ``pages_to_scan / 512`` PMD ranges per wake-up, and is woken at
    once when an mm is registered while none is (__khugepaged_enter, mm/khugepaged.c),
    when its knobs are written, and when ``enabled`` turns on. The decoy registers
    first: a 64 GiB MAP_NORESERVE range (no memory, no page tables) with MADV_HUGEPAGE
    and one written 4 KiB page in its unaligned tail (for the anon_vma, without a THP
    fault). While it lives the list is never empty and every scenario mm waits behind its
    32768 PMD ranges. (run_on_kernel.py's class Decoy, whose notes explain the need.)
    """

    SIZE = 64 * GiB

    def __init__(self, exe: Path) -> None:
        self.exe = exe
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.popen, channel = probe_mod.spawn(self.exe, "decoy")
        length = self.SIZE + 4096
        reply = channel.ask(f"mmap {length} rw noreserve 0")
        if not reply.startswith("ok "):
            raise LiveError(f"the khugepaged decoy could not map its range ({reply})")
        start = int(reply.split()[1], 16)
        for command in (f"touch {start + self.SIZE:#x} 4096 4096 w",
                        f"madvise {start:#x} {length} hugepage"):
            reply = channel.ask(command)
            if not reply.startswith("ok"):
                raise LiveError(f"the khugepaged decoy failed '{command}' ({reply})")

    def stop(self) -> None:
        """Kill the decoy and wait until its mm has left khugepaged's list."""
        if self.popen is None:
            return
        from pagewalk.live.procfs import process_gone
        pid = self.popen.pid
        probe_mod.stop(self.popen)
        self.popen = None
        deadline = time.monotonic() + 10
        while not process_gone(pid) and time.monotonic() < deadline:
            time.sleep(0.002)


__all__ = ["FROZEN_KHUGEPAGED", "LOCK_FILE", "STATE_FILE", "Decoy", "KnobGuard",
           "canonical_knobs", "differing_from_simulator", "read_knob", "thp_disabled_here"]
