"""The error tree of pagewalk, in the kernel's terms.

::

    PagewalkError                 base of everything pagewalk raises on purpose
    ├── ScenarioError             a scenario file is malformed (YAML, unknown field, bad size ...)
    ├── TraceError                a trace file is malformed (bad line, truncated record ...)
    ├── ConfigError               a knob value, a system setting or an option is invalid
    │   └── OutputError           an output path (-o, --static) cannot be written
    ├── NotImplementedStep        a valid step that this version does not simulate yet
    └── KernelError               the simulated kernel refused something
        ├── SyscallError          a system call failed with an errno (EINVAL, ENOMEM, EEXIST ...)
        ├── SignalError           an access was answered with a signal (SIGSEGV, SIGBUS)
        └── ExpectationFailed     a `read` step's `expect` or an `expect_*` did not hold

Every error may carry a :class:`Location` (file, step number, field) and prints as
one line. The kernel raises ``SyscallError``/``SignalError`` before changing any
state, or restores the state it changed, so a failed step leaves nothing half done.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Errno(enum.IntEnum):
    """The errno values the simulated system calls return (asm-generic/errno-base.h)."""

    EPERM = 1
    ENOENT = 2
    EINTR = 4
    EIO = 5
    EBADF = 9
    EAGAIN = 11
    ENOMEM = 12
    EACCES = 13
    EFAULT = 14
    EBUSY = 16
    EEXIST = 17
    ENODEV = 19
    EINVAL = 22
    ENFILE = 23
    EMFILE = 24
    EFBIG = 27
    ENOSPC = 28
    ERANGE = 34
    ENOSYS = 38
    EOVERFLOW = 75
    EOPNOTSUPP = 95
    EHWPOISON = 133


class Signal(enum.IntEnum):
    """The signals an access can raise (asm/signal.h)."""

    SIGBUS = 7
    SIGKILL = 9
    SIGSEGV = 11


@dataclass(frozen=True, slots=True)
class Location:
    """Where an error was found: a file, the 0-based step index, and a field path."""

    file: str | None = None
    step: int | None = None
    field: str | None = None

    def __str__(self) -> str:
        parts = []
        if self.file:
            parts.append(self.file)
        if self.step is not None:
            parts.append(f"step {self.step}")
        if self.field:
            parts.append(f"field '{self.field}'")
        return ", ".join(parts)


class PagewalkError(Exception):
    """Base class; ``str(err)`` is the one-line message the CLI prints."""

    def __init__(self, message: str, location: Location | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.location = location

    def at(self, location: Location) -> PagewalkError:
        """Attach a location unless one is already known; returns self for ``raise``."""
        if self.location is None:
            self.location = location
        else:
            self.location = Location(
                self.location.file or location.file,
                self.location.step if self.location.step is not None else location.step,
                self.location.field or location.field,
            )
        return self

    def __str__(self) -> str:
        where = str(self.location) if self.location else ""
        return f"{where}: {self.message}" if where else self.message


class ScenarioError(PagewalkError):
    """The scenario file is not valid (scenario.md)."""


class TraceError(PagewalkError):
    """The trace file is not valid (trace-model.md)."""


class ConfigError(PagewalkError):
    """A knob or system setting has a value the kernel would refuse, or a command-line
    option one pagewalk cannot use."""


class OutputError(ConfigError):
    """An output file or directory cannot be written; the message names the path and the
    operating system's reason (``cannot write out/x.png: Permission denied``)."""

    @classmethod
    def writing(cls, path: object, err: OSError) -> OutputError:
        """``cannot write PATH: REASON``, and the file the OS named if it is another one
        (a parent directory that could not be made)."""
        reason = err.strerror or str(err)
        other = err.filename if err.filename is not None and str(err.filename) != str(path) \
            else None
        if isinstance(err, FileExistsError) and other is not None:
            reason = "Not a directory"          # mkdir of a parent that is a file
        return cls(f"cannot write {path}: {reason}" + (f" ({other})" if other else ""))


class NotImplementedStep(PagewalkError):
    """A valid step or option that this version of pagewalk does not simulate yet."""


class KernelError(PagewalkError):
    """The simulated kernel refused an operation."""


class SyscallError(KernelError):
    """A system call returned -errno."""

    def __init__(self, errno: Errno, message: str = "", location: Location | None = None) -> None:
        text = f"{errno.name}" + (f" ({message})" if message else "")
        super().__init__(text, location)
        self.errno = errno


class SignalError(KernelError):
    """A user access was answered with a signal (and the access did not complete)."""

    def __init__(self, signal: Signal, vaddr: int, message: str = "",
                 location: Location | None = None) -> None:
        text = f"{signal.name} at {vaddr:#x}" + (f" ({message})" if message else "")
        super().__init__(text, location)
        self.signal = signal
        self.vaddr = vaddr


class ExpectationFailed(KernelError):
    """A step's expectation (``expect``, ``expect_error``, ``expect_signal``) did not hold."""
