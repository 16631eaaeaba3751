"""Version 2 files on the live kernel: where a run keeps them, and the disk under them.

The kernel oracle's way (shared/oracle/run_on_kernel.py, README "Version 2"), which made
the reference reports:

* ``disk`` files live in a fresh ``run-*`` directory under :data:`FILES_DISK` (ext4 on
  the root disk), ``tmpfs`` files under :data:`FILES_TMPFS`; both directories go at the
  end of the run, and a killed run's (its PID in the name is gone) at the next start;
* the probe of the step's process creates the file (``fcreate``: 4 KiB write(2) calls
  and fsync, so the page cache holds clean 4 KiB folios; a memfd is memfd_create +
  ftruncate); the measuring process then opens it through ``/proc/PROBE/fd/N`` and keeps
  it open to the end, and every process reaches it as ``/proc/CONTROLLER/fd/M``, also
  after its unlink (and a memfd, which has no name at all);
* ``/sys/block/vda/queue/read_ahead_kb`` (the spec's name, the reference machine's root
  disk) stands for the readahead knob of the disk that holds :data:`FILES_DISK`;
* with a disk file in the scenario every step waits until that disk has no read in
  flight (:func:`settle_reads`), so readahead I/O never races with the next access, as
  with an infinitely fast disk; its I/O scheduler is ``none`` meanwhile
  (:func:`scheduler_knob`), since mq-deadline holds back requests ``inflight`` does
  not count.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from pagewalk.kernel.knobs import READ_AHEAD_KB
from pagewalk.live.procfs import process_gone
from pagewalk.scenario import schema as s

FILES_DISK = Path("/var/tmp/pagewalk-live-files")
FILES_TMPFS = Path("/dev/shm/pagewalk-live-files")
SETTLE_TIMEOUT = 5.0           # seconds to wait for the disk's reads to complete
SETTLE_POLL = 0.0002
_RUN_DIR = re.compile(r"run-(\d+)-")


def uses_disk_files(scenario: s.Scenario) -> bool:
    """Whether a ``file`` step puts a file on the root disk (readahead, settling)."""
    return any(isinstance(step, s.FileStep) and step.fs == "disk" for step in scenario.steps)


@functools.cache
def root_disk() -> Path | None:
    """The sysfs directory of the disk holding :data:`FILES_DISK` (a partition's parent
    disk), or None when that file system has no block device (overlay, tmpfs ...)."""
    try:
        info = os.stat(FILES_DISK.parent)
        disk = Path(os.path.realpath(f"/sys/dev/block/{os.major(info.st_dev)}:"
                                     f"{os.minor(info.st_dev)}"))
    except OSError:
        return None
    if (disk / "partition").exists():
        disk = disk.parent
    return disk if (disk / "queue").is_dir() else None


def real_knob(path: str) -> str:
    """The file behind a knob path of the spec: only READ_AHEAD_KB differs, it names
    this machine's root disk's knob (a path that does not exist when there is none)."""
    if path != READ_AHEAD_KB:
        return path
    disk = root_disk()
    return str(disk / "queue" / "read_ahead_kb") if disk else "/nonexistent/read_ahead_kb"


def scheduler_knob() -> str | None:
    """The root disk's I/O scheduler file (set to ``none`` while disk files are used)."""
    disk = root_disk()
    path = disk / "queue" / "scheduler" if disk else None
    return str(path) if path is not None and path.exists() else None


def inflight_file() -> str | None:
    """The root disk's ``inflight`` file: requests in flight, ``READS WRITES``."""
    disk = root_disk()
    path = disk / "inflight" if disk else None
    return str(path) if path is not None and path.exists() else None


def settle_reads(timeout: float = SETTLE_TIMEOUT, writes: bool = False) -> None:
    """Wait until the root disk has no read in flight (readahead done) and, with
    ``writes``, no write either (swap-out writeback done: version 3 with a swap file),
    at most ``timeout`` seconds (the oracle's settle_reads)."""
    path = inflight_file()
    if path is None:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if disk_idle(Path(path).read_text(), writes):
                return
        except (OSError, ValueError, IndexError):
            return
        time.sleep(SETTLE_POLL)


def disk_idle(inflight: str, writes: bool) -> bool:
    """Whether a disk's ``inflight`` text (``READS WRITES``) shows no read in flight
    and, with ``writes``, no write either."""
    reads, written = (int(word) for word in inflight.split()[:2])
    return reads == 0 and (not writes or written == 0)


def clear_stale() -> None:
    """Remove the file directories of runs that were killed (their PID is gone)."""
    for parent in (FILES_DISK, FILES_TMPFS):
        try:
            entries = list(parent.iterdir())
        except OSError:
            continue
        for entry in entries:
            match = _RUN_DIR.match(entry.name)
            if match is None or process_gone(int(match.group(1))):
                shutil.rmtree(entry, ignore_errors=True)


@dataclass(frozen=True, slots=True)
class LiveFile:
    """A scenario file, held open by the measuring process."""

    name: str
    fs: str                    # disk, tmpfs or memfd
    path: str                  # its path (a memfd: the name given to memfd_create)
    fd: int                    # our descriptor
    ref: str                   # /proc/<us>/fd/<fd>: how every probe reaches it


@dataclass(slots=True)
class FileStore:
    """The files of one run and the directories that hold them."""

    files: dict[str, LiveFile] = field(default_factory=dict)
    dirs: dict[str, Path] = field(default_factory=dict)       # fs -> this run's directory
    made: int = 0                                            # file steps tried so far

    def new_path(self, fs: str, name: str) -> str:
        """Where the next file goes (created by the probe: O_CREAT|O_EXCL)."""
        number = self.made
        self.made += 1
        if fs == "memfd":
            return f"pagewalk-{number}"
        if fs not in self.dirs:
            parent = FILES_DISK if fs == "disk" else FILES_TMPFS
            parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            self.dirs[fs] = Path(tempfile.mkdtemp(prefix=f"run-{os.getpid()}-", dir=parent))
        return str(self.dirs[fs] / (f"f{number}-" + re.sub(r"[^A-Za-z0-9._-]", "_", name)[:40]))

    def adopt(self, name: str, fs: str, path: str, pid: int, probe_fd: int) -> LiveFile:
        """Hold open the file the probe ``pid`` has as ``probe_fd`` (the probe may then
        close its own descriptor)."""
        fd = os.open(f"/proc/{pid}/fd/{probe_fd}", os.O_RDWR)
        live = LiveFile(name, fs, path, fd, f"/proc/{os.getpid()}/fd/{fd}")
        self.files[name] = live
        return live

    def close(self) -> None:
        """Close every file and remove the run's directories."""
        for live in self.files.values():
            try:
                os.close(live.fd)
            except OSError:
                pass
        self.files.clear()
        for directory in self.dirs.values():
            shutil.rmtree(directory, ignore_errors=True)
        self.dirs.clear()


__all__ = ["FILES_DISK", "FILES_TMPFS", "FileStore", "LiveFile", "clear_stale", "disk_idle",
           "inflight_file", "real_knob", "root_disk", "scheduler_knob", "settle_reads", "uses_disk_files"]
