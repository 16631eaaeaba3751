"""Errors of the live-kernel tools, as a branch of pagewalk's error tree (errors.py).

::

    PagewalkError
    └── LiveError                 this machine cannot do what was asked (exit 3):
        │                         no root for a knob, a pool the kernel would not fill,
        │                         a step a live kernel cannot replay, no gcc ...
        └── ProbeError            a probe process died, hung or answered nonsense
            └── ProbeDied         its channel closed: the process is gone (the runner
                                  asks why: the OOM killer's SIGKILL, or not)

A step the live kernel refuses (an errno or a signal the scenario did not expect) is
reported with the simulator's own classes, SyscallError and SignalError, so both sides
of `pagewalk verify` fail in the same words.
"""

from __future__ import annotations

from pagewalk.errors import PagewalkError

EXIT_UNAVAILABLE = 3    # the run_on_kernel.py convention: "cannot set up on this kernel"


class LiveError(PagewalkError):
    """The live kernel of this machine cannot run or show what was asked."""


class ProbeError(LiveError):
    """A probe process did not behave (died, timed out, unexpected reply)."""


class ProbeDied(ProbeError):
    """A probe process's channel closed in the middle of a command: it is gone.
    ``name`` is the scenario process it played."""

    def __init__(self, message: str, name: str, pid: int) -> None:
        super().__init__(message)
        self.name = name
        self.pid = pid


__all__ = ["EXIT_UNAVAILABLE", "LiveError", "ProbeDied", "ProbeError"]
