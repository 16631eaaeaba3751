"""Version 3 memory pressure on the live kernel: the swap file, the memory cgroup, and
what tells an OOM kill from any other death of a probe.

The kernel oracle's way (shared/oracle/run_on_kernel.py, class Pressure, and its
README's "Version 3"), which made the ``v3-`` kernel reports:

* ``system.swap``: a swap file of that size in a fresh ``run-PID-*`` directory under
  :data:`SWAP_DIR` on the root disk (fallocate, mode 600, mkswap, swapon with the default
  priority), active from before the first step to the end of the run;
* ``system.memory_limit``: a fresh cgroup v1 memory cgroup ``pagewalk-live-PID`` under
  :data:`CGROUP_MEMORY`: ``memory.limit_in_bytes`` the limit, memsw left unlimited,
  ``memory.swappiness`` 60. The main probe joins it after it started and before the
  baseline, forked children inherit it; the khugepaged decoy and this process stay
  outside. Pages the probe wrote before it joined stay charged where they were
  (move_charge_at_immigrate 0), as the simulator's memcontrol.py models;
* the scenario's processes run on one CPU (:func:`pin`), so that only that CPU's folio
  batches hold pages off the LRU lists; the runner drains every CPU's before each step;
* at the end the cgroup's tasks go back to this process's memory cgroup and the cgroup
  is removed, the swap file is turned off and deleted. A run killed outright leaves
  them behind: the next run as root removes them (:func:`clear_stale`), holding the
  machine-wide lock, so no other run can be using them.

The kernel must swap as the reference machine does: ``page-cluster`` 3 and zswap off
(:func:`refusal`); a swap file on a non-rotational disk gets swap clusters, which send
THPs out whole (a note, :func:`notes`).

A probe whose channel closes during a step is gone; :func:`death_cause` names what
ended it, with the oracle's rule (``Runner.died``): the main probe's exit status (this
process is its parent), a forked child's (reaped by the kernel) SIGKILL when
``/proc/vmstat`` ``oom_kill`` rose during the step.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pagewalk.errors import Location
from pagewalk.live import procfs
from pagewalk.live.errors import LiveError
from pagewalk.live.files import root_disk
from pagewalk.mm.memcontrol import SWAPPINESS
from pagewalk.mm.swap_state import PAGE_CLUSTER
from pagewalk.scenario import schema as s

SWAP_DIR = Path("/var/tmp/pagewalk-live-swap")
CGROUP_MEMORY = Path("/sys/fs/cgroup/memory")      # the cgroup v1 memory hierarchy
CGROUP_PREFIX = "pagewalk-live-"
PAGE_CLUSTER_KNOB = "/proc/sys/vm/page-cluster"
ZSWAP_KNOB = "/sys/module/zswap/parameters/enabled"
SYS_PATH = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}   # where mkswap, swapon, swapoff live
SWAP_TOOLS = ("mkswap", "swapon", "swapoff")
REMOVE_TIMEOUT = 10.0      # seconds for a cgroup's exiting tasks to leave it
REMOVE_POLL = 0.05
SIGKILL = signal.SIGKILL.name

Notify = Callable[[str], None]


def uses_pressure(scenario: s.Scenario) -> bool:
    """Whether the scenario has a swap file or a memory limit (a report with
    ``"pressure": true``)."""
    return bool(scenario.system.swap or scenario.system.memory_limit)


# -- what this machine has ------------------------------------------------------------------

def active_swaps(swaps_text: str) -> list[str]:
    """The swap areas of a /proc/swaps text (its first line is a header; the kernel
    writes a space in a name as ``\\040``)."""
    return [line.split()[0].replace("\\040", " ")
            for line in swaps_text.splitlines()[1:] if line.strip()]


def ours(swap_path: str) -> bool:
    """Whether an active swap area is a file a pagewalk run made."""
    return swap_path.startswith(f"{SWAP_DIR}/")


def memcg_of(cgroup_text: str) -> Path:
    """The memory cgroup directory of a /proc/PID/cgroup text (the v1 line
    ``N:memory:/path``); the hierarchy's root when there is none."""
    for line in cgroup_text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and "memory" in parts[1].split(","):
            return CGROUP_MEMORY / parts[2].lstrip("/")
    return CGROUP_MEMORY


def own_memcg() -> Path:
    """This process's memory cgroup, where a removed cgroup's tasks go back to."""
    try:
        return memcg_of(Path("/proc/self/cgroup").read_text())
    except OSError:
        return CGROUP_MEMORY


def stale_cgroups(names: Iterable[str]) -> list[str]:
    """The names among a memory hierarchy's entries that a pagewalk run made."""
    return sorted(name for name in names if name.startswith(CGROUP_PREFIX))


def refusal(scenario: s.Scenario) -> LiveError | None:
    """Why this machine cannot replay the scenario's pressure as the reference machine
    did, or None (called as root: writing needs it)."""
    system = scenario.system
    if system.memory_limit and not (CGROUP_MEMORY / "memory.limit_in_bytes").exists():
        return LiveError(f"system.memory_limit: this kernel has no cgroup v1 memory controller "
                         f"at {CGROUP_MEMORY} (the reference machine's memory.limit_in_bytes)",
                         Location(scenario.file, None, "system.memory_limit"))
    if not system.swap:
        return None
    where = Location(scenario.file, None, "system.swap")
    missing = [tool for tool in SWAP_TOOLS if shutil.which(tool, path=SYS_PATH["PATH"]) is None]
    if missing:
        return LiveError(f"system.swap: {', '.join(missing)} not found (util-linux): a swap "
                         "file is made with mkswap and turned on with swapon", where)
    cluster = _read(PAGE_CLUSTER_KNOB)
    if cluster is not None and cluster != str(PAGE_CLUSTER):
        return LiveError(f"system.swap: {PAGE_CLUSTER_KNOB} is {cluster}, the reference machine's "
                         f"(and the simulator's) is {PAGE_CLUSTER}: swap readahead would "
                         f"differ; write {PAGE_CLUSTER} to it first", where)
    if _read(ZSWAP_KNOB) in ("Y", "1"):
        return LiveError(f"system.swap: zswap is on ({ZSWAP_KNOB}); the reference machine "
                         "swaps to the disk: write N to it first", where)
    return None


def notes(scenario: s.Scenario) -> list[str]:
    """What differs from the reference machine without making the run unfair."""
    if not scenario.system.swap:
        return []
    found = []
    disk = root_disk()
    if disk is not None and _read(str(disk / "queue" / "rotational")) == "0":
        found.append(f"the swap file's disk ({disk.name}) is not rotational: the kernel gives "
                     "it swap clusters and may swap THPs out whole (the reference disk is "
                     "rotational: every THP is split first)")
    others = [path for path in active_swaps(_read("/proc/swaps") or "") if not ours(path)]
    if others:
        found.append(f"other swap areas are active ({', '.join(others)}): the kernel may use "
                     "them before the scenario's swap file")
    return found


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def oom_kills() -> int:
    """The ``oom_kill`` counter of /proc/vmstat."""
    return procfs.read_vmstat().get("oom_kill", 0)


def pin_cpu() -> int:
    """The CPU the scenario's processes run on under pressure: the last one allowed."""
    return max(os.sched_getaffinity(0))


def pin(pid: int) -> None:
    """Keep ``pid`` (and the children it forks later) on :func:`pin_cpu`."""
    os.sched_setaffinity(pid, {pin_cpu()})


def death_cause(exit_status: int | None, oom_killed: bool) -> str:
    """What ended a probe whose channel closed during a step: a signal's name
    (``SIGKILL``: the OOM killer), ``exit status N``, or ``an unknown cause``.

    ``exit_status`` is the main probe's ``Popen.returncode`` (negative: the signal);
    a forked child is reaped by the kernel (None), so its death is a SIGKILL when
    ``oom_killed``: /proc/vmstat ``oom_kill`` rose during the step.
    """
    if exit_status is not None and exit_status < 0:
        return signal.Signals(-exit_status).name
    if exit_status is not None:
        return f"exit status {exit_status}"
    return SIGKILL if oom_killed else "an unknown cause"


# -- setting up and removing -----------------------------------------------------------------

def _write(path: Path, value: object) -> None:
    with open(path, "w") as file:
        file.write(str(value))


def _run(command: list[str]) -> str | None:
    """Run a util-linux tool; its error text, or None if it succeeded."""
    done = subprocess.run(command, capture_output=True, text=True, env=dict(SYS_PATH),
                          check=False)
    if done.returncode == 0:
        return None
    return (done.stderr.strip() or done.stdout.strip() or f"exit status {done.returncode}")


def swapoff(path: str) -> str | None:
    """Turn one swap file off; the error, or None."""
    error = _run(["swapoff", path])
    return None if error is None else f"swapoff {path}: {error}"


def remove_memcg(cgroup: Path, home: Path) -> str | None:
    """Move the tasks still in ``cgroup`` to ``home``, then remove it, retrying while
    they exit; the error, or None (also when it is gone already)."""
    deadline = time.monotonic() + REMOVE_TIMEOUT
    while True:
        try:
            pids = (cgroup / "cgroup.procs").read_text().split()
        except FileNotFoundError:
            return None
        except OSError:
            pids = []
        for pid in pids:
            try:
                _write(home / "cgroup.procs", pid)
            except OSError:
                pass                               # it is exiting
        try:
            os.rmdir(cgroup)
            return None
        except FileNotFoundError:
            return None
        except OSError as err:
            if time.monotonic() > deadline:
                return f"rmdir {cgroup}: {err.strerror}"
            time.sleep(REMOVE_POLL)


def clear_stale(notify: Notify) -> None:
    """Remove the swap files and memory cgroups that killed runs left (idempotent; the
    caller holds the machine-wide lock, so no run is using them)."""
    errors: list[str] = []
    removed: list[str] = []
    for path in active_swaps(_read("/proc/swaps") or ""):
        if ours(path):
            error = swapoff(path)
            errors += [error] if error else []
            removed += [] if error else [f"swap file {path}"]
    try:
        entries = list(SWAP_DIR.iterdir())
    except OSError:
        entries = []
    for entry in entries:
        shutil.rmtree(entry, ignore_errors=True)
    try:
        names = [entry.name for entry in CGROUP_MEMORY.iterdir() if entry.is_dir()]
    except OSError:
        names = []
    home = own_memcg()
    for name in stale_cgroups(names):
        error = remove_memcg(CGROUP_MEMORY / name, home)
        errors += [error] if error else []
        removed += [] if error else [f"memory cgroup {CGROUP_MEMORY / name}"]
    if removed:
        notify("removed what an interrupted run left: " + ", ".join(removed))
    if errors:
        notify("WARNING: could not remove what an interrupted run left: " + "; ".join(errors))


def _private_dir(path: Path) -> Path:
    """``path`` as a directory owned by us and writable by nobody else: root turns a
    file in it into swap, so nobody else may have placed or replaced it (/var/tmp is
    writable by everyone)."""
    path.mkdir(mode=0o700, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() \
            or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise LiveError(f"{path} is not a directory owned by uid {os.getuid()} and writable "
                        "only by it; remove it and run again")
    return path


@dataclass(slots=True)
class Pressure:
    """The swap file and the memory cgroup of one run (see the module docstring)."""

    swap: int                          # bytes of the swap file; 0: none
    limit: int                         # bytes: memory.limit_in_bytes; 0: no cgroup
    swap_dir: Path | None = None       # this run's directory under SWAP_DIR
    swap_file: Path | None = None      # set once swapon succeeded
    cgroup: Path | None = None         # set once the cgroup exists
    home: Path = field(default_factory=own_memcg)

    @classmethod
    def of(cls, scenario: s.Scenario) -> Pressure | None:
        """The pressure a scenario asks for, or None (a version 1 or 2 scenario)."""
        if not uses_pressure(scenario):
            return None
        return cls(scenario.system.swap, scenario.system.memory_limit)

    def setup(self) -> None:
        """Swap file on, cgroup made (LiveError, with what failed, if not; what was
        done is undone by :meth:`teardown`)."""
        if self.swap:
            self._swapon()
        if self.limit:
            self._make_cgroup()

    def _swapon(self) -> None:
        self.swap_dir = Path(tempfile.mkdtemp(prefix=f"run-{os.getpid()}-",
                                              dir=_private_dir(SWAP_DIR)))
        path = self.swap_dir / "swapfile"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.posix_fallocate(fd, 0, self.swap)   # swapon refuses a file with holes
        except OSError as err:
            raise LiveError(f"system.swap: cannot allocate {self.swap} bytes for {path} "
                            f"({err.strerror})") from None
        finally:
            os.close(fd)
        for command in (["mkswap", str(path)], ["swapon", str(path)]):
            error = _run(command)
            if error is not None:
                raise LiveError(f"system.swap: {' '.join(command)}: {error}")
        self.swap_file = path

    def _make_cgroup(self) -> None:
        cgroup = CGROUP_MEMORY / f"{CGROUP_PREFIX}{os.getpid()}"
        try:
            os.mkdir(cgroup)
            self.cgroup = cgroup
            _write(cgroup / "memory.swappiness", SWAPPINESS)
            _write(cgroup / "memory.limit_in_bytes", self.limit)
        except OSError as err:
            raise LiveError(f"system.memory_limit: cannot set up the memory cgroup {cgroup} "
                            f"({err.strerror})") from None

    def join(self, pid: int) -> None:
        """Move ``pid`` into the cgroup (its children inherit it)."""
        if self.cgroup is not None:
            try:
                _write(self.cgroup / "cgroup.procs", pid)
            except OSError as err:
                raise LiveError(f"cannot move process {pid} into {self.cgroup} "
                                f"({err.strerror})") from None

    def teardown(self) -> list[str]:
        """Remove the cgroup, turn the swap file off and delete it; what could not be
        undone (empty when all was). Safe to call twice."""
        errors = []
        if self.cgroup is not None:
            error = remove_memcg(self.cgroup, self.home)
            errors += [error] if error else []
            self.cgroup = None
        if self.swap_file is not None:
            error = swapoff(str(self.swap_file))
            if error:               # kept: the next run's clear_stale tries again
                return [*errors, error]
            self.swap_file = None
        if self.swap_dir is not None:
            shutil.rmtree(self.swap_dir, ignore_errors=True)
            self.swap_dir = None
        return errors


__all__ = ["CGROUP_MEMORY", "CGROUP_PREFIX", "SWAP_DIR", "Pressure", "active_swaps",
           "clear_stale", "death_cause", "memcg_of", "notes", "oom_kills", "ours", "pin",
           "pin_cpu", "refusal", "remove_memcg", "stale_cgroups", "swapoff", "uses_pressure"]
