"""Readers for the live kernel's /proc files, from outside the process they describe.

Reading /proc/PID/* of another process makes the kernel walk that process's mm
(fs/proc/task_mmu.c, fs/proc/array.c) but never faults in it, which is why every live
measurement is taken from here and not by the measured process itself.

Sizes are returned as the kernel prints them (kB); fault counters as counts.
"""

from __future__ import annotations

import os
import re
import resource
from pathlib import Path

from pagewalk.live.errors import LiveError

_KB_LINE = re.compile(r"^(\w+):\s+(\d+)(?: kB)?\s*$")


def read_text(path: str) -> str:
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        raise LiveError(f"{path}: no such file (has the process exited?)") from None
    except PermissionError:
        raise LiveError(f"{path}: permission denied (run as root, or as the owner of "
                        "the process)") from None
    except ProcessLookupError:
        raise LiveError(f"{path}: the process has exited") from None


def read_kb_fields(path: str) -> dict[str, int]:
    """Every ``Name:  N kB`` (or ``Name: N``) line of a /proc file as ``{Name: N}``."""
    fields: dict[str, int] = {}
    for line in read_text(path).splitlines():
        match = _KB_LINE.match(line)
        if match:
            fields[match.group(1)] = int(match.group(2))
    return fields


def read_status(pid: int) -> dict[str, int]:
    """The numeric lines of /proc/PID/status (VmRSS, RssAnon, VmPTE ... in kB)."""
    return read_kb_fields(f"/proc/{pid}/status")


def others_locked_kb(exclude: set[int]) -> int:
    """The locked memory of every other process: the sum of their VmLck. Another program
    that mlocks, or runs under mlockall(MCL_FUTURE) (this machine's PID 1 does), moves the
    system-wide Mlocked while a scenario runs; populated as such mappings are, their
    VmLck moves with it. (Their smaps, which would say which locked pages are resident,
    cannot be read: PID 1's is closed even to root here.)"""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in exclude:
            continue
        try:
            total += read_kb_fields(f"/proc/{entry.name}/status").get("VmLck", 0)
        except LiveError:
            continue                                   # it exited meanwhile
    return total


def read_comm(pid: int) -> str:
    return read_text(f"/proc/{pid}/comm").strip()


def read_anon_huge_pages(pid: int) -> int:
    """AnonHugePages of /proc/PID/smaps_rollup, kB (PMD-mapped anonymous THP)."""
    return read_kb_fields(f"/proc/{pid}/smaps_rollup").get("AnonHugePages", 0)


def read_faults(pid: int) -> tuple[int, int]:
    """(minflt, majflt) of /proc/PID/stat (fields 10 and 12; fs/proc/array.c do_task_stat)."""
    text = read_text(f"/proc/{pid}/stat")
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[7]), int(fields[9])


def read_meminfo() -> dict[str, int]:
    return read_kb_fields("/proc/meminfo")


def read_vmstat() -> dict[str, int]:
    """/proc/vmstat as ``{name: value}``."""
    counters: dict[str, int] = {}
    for line in read_text("/proc/vmstat").splitlines():
        name, _, value = line.partition(" ")
        if value.strip().isdigit():
            counters[name] = int(value)
    return counters


def own_faults() -> int:
    """Page faults of this (the measuring) process so far, minor and major."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_minflt + usage.ru_majflt


def process_gone(pid: int) -> bool:
    """True once ``pid`` has exited (gone, or a zombie: its mm is released)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return text[text.rindex(")") + 2] in "ZX"


def read_maps(pid: int) -> list[tuple[int, int, str, str]]:
    """/proc/PID/maps as (start, end, perms, name)."""
    rows = []
    for line in read_text(f"/proc/{pid}/maps").splitlines():
        parts = line.split(None, 5)
        start, _, end = parts[0].partition("-")
        rows.append((int(start, 16), int(end, 16), parts[1], parts[5] if len(parts) > 5 else ""))
    return rows


def kernel_release() -> str:
    return os.uname().release


__all__ = [
    "kernel_release",
    "own_faults",
    "process_gone",
    "read_anon_huge_pages",
    "read_comm",
    "read_faults",
    "read_kb_fields",
    "read_maps",
    "read_meminfo",
    "read_status",
    "read_text",
    "read_vmstat",
]
