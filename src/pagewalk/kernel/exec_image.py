"""The process image every scenario starts from (the spec's "process at scenario start").

A small static program run with ASLR off, exactly as the reference kernel showed it
(/proc/PID/maps and smaps of the oracle's probe): five file-backed program VMAs, bss,
[heap], [vvar], [vvar_vclock], [vdso] and [stack], with the pages that were present
there (RssAnon 600 kB, RssFile 672 kB) and the page tables they need (VmPTE 28 kB).

[vvar] and [vvar_vclock] start with no page present: they are special PFN mappings
(VM_IO | VM_PFNMAP) whose fault handler inserts a kernel data page on the first touch
(vmf_insert_pfn: a minor fault, no RSS, no struct page accounting) or answers
VM_FAULT_SIGBUS for a page the kernel has no data for (:data:`VVAR_DATA_PAGES`).
[vdso] is present from the start (its two text pages count in RssFile).
"""

from __future__ import annotations

from dataclasses import dataclass

from pagewalk.mm.types import VmFlags

R, W, X = VmFlags.READ, VmFlags.WRITE, VmFlags.EXEC
MAY = VmFlags.MAYREAD | VmFlags.MAYWRITE | VmFlags.MAYEXEC
PROGRAM_PATH = "/usr/local/bin/workload"
PROGRAM_SIZE = 0xAB000     # i_size: at least the end of the last file-backed page


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
#: The pages of the vvar VMAs that their fault handlers map, by page offset in the VMA;
#: every other page is VM_FAULT_SIGBUS. [vvar] is 6.18's generic vDSO datastore
#: (lib/vdso/datastore.c vvar_fault): 0 the time data (vdso_k_time_data), 1 the time
#: namespace page (SIGBUS outside a time namespace), 2 the getrandom state
#: (CONFIG_VDSO_GETRANDOM), 3 arch data (SIGBUS on the reference machine); [vvar_vclock]
#: (arch/x86/entry/vdso/vma.c vvar_vclock_fault): 0 the pvclock page (kvm-clock was used),
#: 1 the Hyper-V TSC page (none). Measured page by page: tests/data/measured/vvar-every-page.
VVAR_DATA_PAGES: dict[str, tuple[int, ...]] = {"[vvar]": (0, 2), "[vvar_vclock]": (0,)}
#: Where those kernel data pages sit: frames inside the kernel image (its .data), 16 MiB
#: above the image start (CONFIG_PHYSICAL_START), never handed to the buddy allocator.
VVAR_DATA_PFN = ((16 << 20) + (16 << 20)) >> 12


def vvar_fault_pfn(name: str, pgoff: int) -> int | None:
    """The frame vvar_fault()/vvar_vclock_fault() inserts for page ``pgoff`` of the special
    mapping ``name``, or None where it answers VM_FAULT_SIGBUS."""
    pages = VVAR_DATA_PAGES.get(name, ())
    if pgoff not in pages:
        return None
    return VVAR_DATA_PFN + 4 * list(VVAR_DATA_PAGES).index(name) + pgoff


MMAP_BASE = 0x7FFFF7FFF000  # arch_pick_mmap_layout() with ASLR off: 128 MiB below TASK_SIZE
START_BRK = 0x4D9000
BRK = 0x4FB000
