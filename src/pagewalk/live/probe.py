"""The probe: a small static C program (probe.c) that performs a scenario's steps on the
live kernel, one probe process per scenario process, driven line by line from here.

The probe is built on first use with ``gcc -O2 -static`` into a cache directory
(``$PAGEWALK_PROBE_CACHE``, else ``$XDG_CACHE_HOME/pagewalk`` or ``~/.cache/pagewalk``,
else ``/tmp/pagewalk-probe-<uid>``), named by the hash of its source, and reused. It
re-executes itself with ASLR off (personality ADDR_NO_RANDOMIZE, as ``setarch -R``), so
it starts with the layout of the spec's start image, which
:func:`start_layout_differences` checks against the simulator's
``pagewalk.kernel.exec_image.START_IMAGE``.

Protocol (probe.c's header has the whole list): one command line in, one reply line
out: ``ok ...``, ``err ENAME`` or ``sig SIGNAME ADDR N``. The first process talks over
its stdin/stdout; a forked child over two FIFOs.
"""

from __future__ import annotations

import hashlib
import os
import select
import shutil
import stat
import subprocess
import tempfile
import time
from importlib import resources
from pathlib import Path

from pagewalk.live.errors import LiveError, ProbeDied, ProbeError
from pagewalk.live.procfs import read_maps

CFLAGS = ("-O2", "-static")
PROBE_ENV = {"PATH": "/usr/bin:/bin"}   # the oracle's: the stack layout depends on it
START_TIMEOUT = 30.0                     # seconds for a probe to say "ready"
STEP_TIMEOUT = 120.0                     # seconds for one command
TASK_SIZE = 0x7FFFFFFFF000               # end of user space with 4-level paging


def probe_source() -> bytes:
    return resources.files("pagewalk.live").joinpath("probe.c").read_bytes()


def cache_dir() -> Path:
    """Where built probes are kept (created private to this user if it is missing)."""
    configured = os.environ.get("PAGEWALK_PROBE_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    if os.path.isdir(base) and os.access(base, os.W_OK):
        return Path(base) / "pagewalk"
    return Path(tempfile.gettempdir()) / f"pagewalk-probe-{os.getuid()}"


def _private_dir(path: Path) -> Path:
    """``path`` as a directory owned by us and writable by nobody else: a root process
    must not run a binary another user could have placed or replaced."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() \
            or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise LiveError(f"{path}: the probe cache must be a directory owned by uid "
                        f"{os.getuid()} and writable only by it; set PAGEWALK_PROBE_CACHE")
    return path


def build_probe() -> Path:
    """The probe executable, built now if the cache has none for this source."""
    source = probe_source()
    digest = hashlib.sha256(source + " ".join(CFLAGS).encode()).hexdigest()[:12]
    directory = _private_dir(cache_dir())
    exe = directory / f"probe-{digest}"
    if exe.exists():
        return exe
    compiler = shutil.which("gcc")
    if compiler is None:
        raise LiveError("gcc not found: the live runner builds its probe (a static C "
                        "program) with gcc; install gcc and the static C library")
    src = directory / f"probe-{digest}.c"
    tmp = directory / f"probe-{digest}.tmp{os.getpid()}"
    src.write_bytes(source)
    result = subprocess.run([compiler, *CFLAGS, "-o", str(tmp), str(src)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tmp.unlink(missing_ok=True)
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise LiveError(f"cannot build the probe with `gcc {' '.join(CFLAGS)}` ({last}); "
                        "a static build needs the C library's static archive (libc.a)")
    os.replace(tmp, exe)
    return exe


class Channel:
    """The line protocol with one probe process over a pair of file descriptors."""

    def __init__(self, name: str, pid: int, write_fd: int, read_fd: int) -> None:
        self.name = name
        self.pid = pid
        self.write_fd = write_fd
        self.read_fd = read_fd
        self._buffer = b""

    def send(self, line: str) -> None:
        data = (line + "\n").encode()
        try:
            while data:
                data = data[os.write(self.write_fd, data):]
        except BrokenPipeError:
            raise ProbeDied(f"process {self.name} (pid {self.pid}) is gone", self.name,
                            self.pid) from None

    def recv(self, timeout: float = STEP_TIMEOUT) -> str | None:
        """One reply line, or None at end of file (the process exited)."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ProbeError(f"process {self.name} (pid {self.pid}) did not answer "
                                 f"in {timeout:.0f} s")
            ready, _, _ = select.select([self.read_fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(self.read_fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def ask(self, line: str) -> str:
        """Send one command and return its reply."""
        self.send(line)
        reply = self.recv()
        if reply is None:
            raise ProbeDied(f"process {self.name} (pid {self.pid}) died during "
                            f"'{line.split()[0]}'", self.name, self.pid)
        return reply

    def expect_ready(self) -> int:
        """Wait for ``ready PID`` and return the PID."""
        reply = self.recv(START_TIMEOUT)
        if not reply or not reply.startswith("ready "):
            raise ProbeError(f"process {self.name} did not start (it said {reply!r})")
        return int(reply.split()[1])

    def close(self) -> None:
        """Close both descriptors, once: a second call must not close numbers that
        were reused meanwhile (a process the OOM killer took is closed at once)."""
        for fd in (self.write_fd, self.read_fd):
            if fd < 0:
                continue
            try:
                os.close(fd)
            except OSError:
                pass
        self.write_fd = self.read_fd = -1


def spawn(exe: Path, name: str) -> tuple[subprocess.Popen[bytes], Channel]:
    """Start a probe process and wait until it is ready (warmed up, ASLR off)."""
    popen = subprocess.Popen([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             env=dict(PROBE_ENV), close_fds=True)
    assert popen.stdin is not None and popen.stdout is not None
    channel = Channel(name, popen.pid, popen.stdin.fileno(), popen.stdout.fileno())
    try:
        channel.expect_ready()
    except ProbeError:
        stop(popen)
        raise
    return popen, channel


def stop(popen: subprocess.Popen[bytes]) -> None:
    """Kill a probe process and reap it."""
    try:
        popen.kill()
    except ProcessLookupError:
        pass
    popen.wait()
    for stream in (popen.stdin, popen.stdout):
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass


def start_layout_differences(pid: int) -> list[str]:
    """How the probe's user mappings differ from the simulator's start image (empty if
    they are the same VMAs with the same permissions)."""
    from pagewalk.kernel.exec_image import START_IMAGE
    from pagewalk.mm.types import VmFlags
    expected = [(v.start, v.end, "".join(letter if v.flags & flag else "-" for letter, flag in
                                         (("r", VmFlags.READ), ("w", VmFlags.WRITE),
                                          ("x", VmFlags.EXEC))))
                for v in START_IMAGE]
    actual = [(start, end, perms[:3]) for start, end, perms, _ in read_maps(pid)
              if end <= TASK_SIZE]
    missing = [f"{s:#x}-{e:#x} {p}" for s, e, p in expected if (s, e, p) not in actual]
    extra = [f"{s:#x}-{e:#x} {p}" for s, e, p in actual if (s, e, p) not in expected]
    return ([f"expected {text}" for text in missing] + [f"found {text}" for text in extra])


__all__ = ["Channel", "build_probe", "cache_dir", "probe_source", "spawn",
           "start_layout_differences", "stop"]
