"""The process image every scenario starts from (the spec's "process at scenario start").

A small static program run with ASLR off, exactly as the reference kernel showed it
(/proc/PID/maps and smaps of the oracle's probe): five file-backed program VMAs, bss,
[heap], [vvar], [vvar_vclock], [vdso] and [stack], with the pages that were present
there (RssAnon 600 kB, RssFile 672 kB) and the page tables they need (VmPTE 28 kB).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pagewalk.mm.types import VmFlags

if TYPE_CHECKING:
    pass

R, W, X = VmFlags.READ, VmFlags.WRITE, VmFlags.EXEC
MAY = VmFlags.MAYREAD | VmFlags.MAYWRITE | VmFlags.MAYEXEC
PROGRAM_PATH = "/usr/local/bin/workload"


@dataclass(frozen=True, slots=True)
class ImageVma:
    """One VMA of the start image: [start, end), flags, what backs it, and which pages are
    present: ``file_pages`` and ``anon_pages`` count present pages from the start."""

    start: int
    end: int
    flags: VmFlags
    kind: str            # "file", "anon", "vvar", "vdso"
    name: str
    file_pages: int = 0  # first N pages map the program file (read-only)
    anon_pages: int = 0  # the following N pages are private anonymous copies
    file_offset: int = 0


START_IMAGE: tuple[ImageVma, ...] = (
    ImageVma(0x400000, 0x401000, R | MAY, "file", PROGRAM_PATH, file_pages=1),
    ImageVma(0x401000, 0x47C000, R | X | MAY, "file", PROGRAM_PATH, file_pages=123,
             file_offset=0x1000),
    ImageVma(0x47C000, 0x4A4000, R | MAY, "file", PROGRAM_PATH, file_pages=40,
             file_offset=0x7C000),
    # RELRO: written by the loader (2 pages COWed to anonymous), then made read-only.
    ImageVma(0x4A4000, 0x4A8000, R | MAY, "file", PROGRAM_PATH, file_pages=2, anon_pages=2,
             file_offset=0xA4000),
    ImageVma(0x4A8000, 0x4AB000, R | W | MAY, "file", PROGRAM_PATH, anon_pages=3,
             file_offset=0xA8000),
    ImageVma(0x4AB000, 0x4D9000, R | W | MAY | VmFlags.ACCOUNT, "anon", "", anon_pages=46),
    ImageVma(0x4D9000, 0x4FB000, R | W | MAY | VmFlags.ACCOUNT, "anon", "[heap]", anon_pages=34),
    ImageVma(0x7FFFF7FF7000, 0x7FFFF7FFB000,
             R | VmFlags.MAYREAD | VmFlags.IO | VmFlags.PFNMAP | VmFlags.DONTEXPAND | VmFlags.DONTDUMP,
             "vvar", "[vvar]"),
    ImageVma(0x7FFFF7FFB000, 0x7FFFF7FFD000,
             R | VmFlags.MAYREAD | VmFlags.IO | VmFlags.PFNMAP | VmFlags.DONTEXPAND | VmFlags.DONTDUMP,
             "vvar", "[vvar_vclock]"),
    ImageVma(0x7FFFF7FFD000, 0x7FFFF7FFF000,
             R | X | VmFlags.MAYREAD | VmFlags.MAYEXEC | VmFlags.DONTEXPAND, "vdso", "[vdso]",
             file_pages=2),
    ImageVma(0x7FFFFFFBE000, 0x7FFFFFFFF000,
             R | W | MAY | VmFlags.GROWSDOWN | VmFlags.ACCOUNT, "anon", "[stack]", anon_pages=65),
)
MMAP_BASE = 0x7FFFF7FFF000  # arch_pick_mmap_layout() with ASLR off: 128 MiB below TASK_SIZE
START_BRK = 0x4D9000
BRK = 0x4FB000
