"""Which pages of a live process are mapped, and by which page size (fs/proc/task_mmu.c).

Two ways in, best first:

* the PAGEMAP_SCAN ioctl on /proc/PID/pagemap (Linux 6.7+, ``pagemap_scan_*`` in
  fs/proc/task_mmu.c) returns runs of pages with the same categories: PAGE_IS_PRESENT,
  PAGE_IS_SWAPPED, PAGE_IS_HUGE (the page is mapped by a PMD or PUD: a PMD-mapped THP or
  a hugetlb page; a PTE-mapped THP is not "huge"), PAGE_IS_FILE, PAGE_IS_GUARD (a guard
  marker: no page, but a PTE). It needs no root, only the right to read the file
  (ptrace read access: the owner, or root);
* reading /proc/PID/pagemap itself, one 64-bit entry per 4 KiB page (bit 63 present,
  bit 62 swapped; Documentation/admin-guide/mm/pagemap.rst). It shows no page size: a
  hugetlb VMA's pages take the VMA's size, everything else counts as 4 KiB.

A :class:`PageRun` is a half-open range ``[start, end)`` of one kind of entry, aligned
to its page size.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
from dataclasses import dataclass
from itertools import pairwise
from typing import Self

from pagewalk.live.errors import LiveError

# include/uapi/linux/fs.h
PAGE_IS_PRESENT = 1 << 3
PAGE_IS_SWAPPED = 1 << 4
PAGE_IS_FILE = 1 << 2
PAGE_IS_HUGE = 1 << 6
PAGE_IS_GUARD = 1 << 8
_ARG = struct.Struct("12Q")          # struct pm_scan_arg: size, flags, start, end, walk_end,
_REGION = struct.Struct("3Q")        # vec, vec_len, max_pages, 4 masks; page_region
PAGEMAP_SCAN = (3 << 30) | (_ARG.size << 16) | (ord("f") << 8) | 16   # _IOWR('f', 16, ...)
VEC_LEN = 4096                       # page_region slots per ioctl
PAGEMAP_ENTRY = 8                    # bytes per page in /proc/PID/pagemap
PM_PRESENT = 1 << 63
PM_SWAP = 1 << 62
READ_PAGES = 1 << 16                 # pagemap entries read at once


@dataclass(frozen=True, slots=True)
class PageRun:
    """``[start, end)`` holding entries of one kind, all of ``1 << page_shift`` bytes.

    ``present`` False means swapped out or a guard marker: no page, but an entry in
    a PTE table. ``file`` is set for page-cache pages (shmem included).
    """

    start: int
    end: int
    page_shift: int
    present: bool
    file: bool = False

    @property
    def size(self) -> int:
        return self.end - self.start


class PagemapReader:
    """Page runs of one process; PAGEMAP_SCAN when the kernel has it."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        path = f"/proc/{pid}/pagemap"
        try:
            self.fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise LiveError(f"no process {pid}") from None
        except PermissionError:
            raise LiveError(f"{path}: permission denied (inspect needs root, or to run as "
                            "the owner of the process)") from None
        self.has_scan = True
        self._categories = PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_GUARD
        self._vec = bytearray(_REGION.size * VEC_LEN)
        self._vec_buffer = (ctypes.c_char * len(self._vec)).from_buffer(self._vec)

    def close(self) -> None:
        del self._vec_buffer
        os.close(self.fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def runs(self, start: int, end: int, huge_shift: int, hugetlb: bool) -> list[PageRun]:
        """The runs in ``[start, end)`` (one VMA). ``huge_shift`` is the size of a huge
        page there: 21 outside hugetlb, the hstate's shift in a ``hugetlb`` VMA."""
        if self.has_scan:
            try:
                return self._scan(start, end, huge_shift)
            except OSError as err:
                if err.errno not in (errno.ENOTTY, errno.EINVAL):
                    raise LiveError(f"PAGEMAP_SCAN on pid {self.pid}: {err.strerror}") from None
                if err.errno == errno.EINVAL and self._categories & PAGE_IS_GUARD:
                    self._categories &= ~PAGE_IS_GUARD     # a kernel without guard markers
                    return self.runs(start, end, huge_shift, hugetlb)
                self.has_scan = False
        return self._read(start, end, huge_shift if hugetlb else 12)

    def _scan(self, start: int, end: int, huge_shift: int) -> list[PageRun]:
        runs: list[PageRun] = []
        address = ctypes.addressof(self._vec_buffer)
        report = self._categories | PAGE_IS_HUGE | PAGE_IS_FILE
        while start < end:
            arg = bytearray(_ARG.pack(_ARG.size, 0, start, end, 0, address, VEC_LEN, 0, 0, 0,
                                      self._categories, report))
            count = fcntl.ioctl(self.fd, PAGEMAP_SCAN, arg, True)
            for index in range(count):
                low, high, categories = _REGION.unpack_from(self._vec, index * _REGION.size)
                runs.append(_run(low, high, categories, huge_shift))
            walk_end = _ARG.unpack_from(arg)[4]
            if walk_end <= start:
                break
            start = walk_end
        return runs

    def _read(self, start: int, end: int, shift: int) -> list[PageRun]:
        """Fallback: one entry per 4 KiB page; every page counts as ``1 << shift``
        bytes (a hugetlb VMA's size, else 4 KiB)."""
        import numpy as np
        runs: list[PageRun] = []
        for chunk in range(start, end, READ_PAGES << 12):
            chunk_end = min(end, chunk + (READ_PAGES << 12))
            data = os.pread(self.fd, ((chunk_end - chunk) >> 12) * PAGEMAP_ENTRY,
                            (chunk >> 12) * PAGEMAP_ENTRY)
            entries = np.frombuffer(data, dtype="<u8")
            kinds = np.where(entries & np.uint64(PM_PRESENT), 2,
                             np.where(entries & np.uint64(PM_SWAP), 1, 0)).astype(np.int8)
            edges = np.flatnonzero(np.diff(kinds)) + 1
            bounds = np.concatenate(([0], edges, [len(kinds)]))
            for lo, hi in pairwise(bounds.tolist()):
                if kinds[lo]:
                    runs.append(PageRun(chunk + (lo << 12), chunk + (hi << 12),
                                        12, bool(kinds[lo] == 2)))
        return _merge(runs) if shift == 12 else _widen(_merge(runs), shift)


def read_runs(pid: int, vmas: list[tuple[int, int, int, bool]]) -> tuple[list[list[PageRun]], bool]:
    """Runs of every VMA ``(start, end, huge_shift, hugetlb)``, and whether the page sizes
    are known (PAGEMAP_SCAN) rather than guessed from the VMAs."""
    with PagemapReader(pid) as reader:
        result = []
        for start, end, huge_shift, hugetlb in vmas:
            result.append(reader.runs(start, end, huge_shift, hugetlb))
        return result, reader.has_scan


def _run(low: int, high: int, categories: int, huge_shift: int) -> PageRun:
    present = bool(categories & PAGE_IS_PRESENT)
    shift = huge_shift if categories & PAGE_IS_HUGE and present else 12
    return PageRun(low, high, shift, present, bool(categories & PAGE_IS_FILE))


def _merge(runs: list[PageRun]) -> list[PageRun]:
    merged: list[PageRun] = []
    for run in runs:
        last = merged[-1] if merged else None
        if last and last.end == run.start and (last.page_shift, last.present, last.file) == \
                (run.page_shift, run.present, run.file):
            merged[-1] = PageRun(last.start, run.end, last.page_shift, last.present, last.file)
        else:
            merged.append(run)
    return merged


def _widen(runs: list[PageRun], shift: int) -> list[PageRun]:
    """4 KiB runs of a hugetlb VMA as whole huge pages (pagemap shows each 4 KiB part)."""
    mask = (1 << shift) - 1
    return _merge([PageRun(r.start & ~mask, (r.end + mask) & ~mask, shift, r.present, r.file)
                   for r in runs])


__all__ = ["PAGEMAP_SCAN", "PageRun", "PagemapReader", "read_runs"]
