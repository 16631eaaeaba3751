"""mmap, munmap and address-space teardown (mm/mmap.c, mm/vma.c, arch/x86/kernel/sys_x86_64.c).

do_mmap -> __get_unmapped_area (THP alignment of hint-less anonymous mappings whose
length is a multiple of 2 MiB: __thp_get_unmapped_area; shared anonymous mappings:
shmem_get_unmapped_area) -> arch_get_unmapped_area_topdown -> unmapped_area_topdown; mmap_region with MAP_FIXED replacing what it covers;
do_vmi_munmap with VMA splitting, zapping and free_pgtables (floor/ceiling rules).
Every check that can fail runs before the address space changes, but one: a hugetlb
reservation is taken after MAP_FIXED has unmapped what it replaces, as in __mmap_region.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pagewalk.errors import Errno, SyscallError
from pagewalk.hw import pgtable_types as pt
from pagewalk.mm import memory, mlock, pkeys
from pagewalk.mm.tlb import flush_tlb_mm
from pagewalk.mm.types import VM_LOCKED_MASK, MmStruct, Vma, VmFlags
from pagewalk.mm.util import __vm_enough_memory, vm_acct_memory, vm_unacct_memory
from pagewalk.mm.vma import (
    VmaIterator,
    VmaMergeStruct,
    can_vma_merge_after,
    find_vma,
    next_of_addr,
    prev_of_addr,
    split_vma,
    vm_stat_account,
    vma_insert,
    vma_merge_new_range,
    vma_remove,
    vmas_in_range,
)

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel
    from pagewalk.mm.filemap import File
    from pagewalk.mm.hugetlb import HugetlbFile
    from pagewalk.mm.shmem import PageCacheFile
    from pagewalk.mm.types import VmaFile

PAGE_SIZE = 4096
PMD_SIZE = 1 << 21
PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
MMAP_MIN_ADDR = 4096          # /proc/sys/vm/mmap_min_addr on the reference machine
STACK_GUARD_GAP = 256 << 12   # stack_guard_gap: 256 pages


def calc_vm_prot_bits(prot: int) -> VmFlags:
    flags = VmFlags.NONE
    if prot & PROT_READ:
        flags |= VmFlags.READ
    if prot & PROT_WRITE:
        flags |= VmFlags.WRITE
    if prot & PROT_EXEC:
        flags |= VmFlags.EXEC
    return flags


def vma_wants_writenotify(flags: VmFlags, file: VmaFile | None) -> bool:
    """vma_wants_writenotify(): a shared writable mapping of a file with ->page_mkwrite
    (ext4; shmem has none and no writeback) maps pages read-only, so that the first write
    to each page faults (and dirties it). New VMAs are VM_SOFTDIRTY: no soft-dirty reason."""
    if flags & (VmFlags.WRITE | VmFlags.SHARED) != VmFlags.WRITE | VmFlags.SHARED:
        return False
    from pagewalk.mm.filemap import File
    return isinstance(file, File) and file.inode.fs == "disk"


def vma_page_prot(flags: VmFlags, file: VmaFile | None) -> int:
    """vma_set_page_prot(): vm_get_page_prot, without the shared write bit under
    write-notify."""
    if vma_wants_writenotify(flags, file):
        flags &= ~VmFlags.SHARED
    return vm_get_page_prot(flags)


def vm_get_page_prot(flags: VmFlags) -> int:
    """vm_get_page_prot() (arch/x86/mm/pgprot.c): protection_map[] and the VMA's pkey."""
    return _protection_map(flags) | pkeys.vm_pkey_pte_bits(flags)


def _protection_map(flags: VmFlags) -> int:
    """protection_map[]: the PTE bits for the VMA's read/write/exec/shared flags."""
    rwx = flags & (VmFlags.READ | VmFlags.WRITE | VmFlags.EXEC)
    if not rwx:
        return pt.PAGE_NONE
    shared = bool(flags & VmFlags.SHARED)
    exec_ = bool(flags & VmFlags.EXEC)
    if flags & VmFlags.WRITE:
        if shared:
            return pt.PAGE_SHARED_EXEC if exec_ else pt.PAGE_SHARED
        return pt.PAGE_COPY_EXEC if exec_ else pt.PAGE_COPY
    return pt.PAGE_READONLY_EXEC if exec_ else pt.PAGE_READONLY


# --- placement ---------------------------------------------------------------------------

def vm_start_gap(vma: Vma) -> int:
    """vm_start_gap(): a stack VMA keeps stack_guard_gap free below it."""
    if vma.flags & VmFlags.GROWSDOWN:
        return max(vma.start - STACK_GUARD_GAP, 0)
    return vma.start


def unmapped_area_topdown(mm: MmStruct, length: int, low_limit: int, high_limit: int,
                          align_mask: int = 0, align_offset: int = 0) -> int:
    """unmapped_area_topdown(): the highest gap that fits ``length`` (+ alignment slack)
    below high_limit; returns its top minus length rounded down to the alignment, or -1."""
    need = length + align_mask
    for gap_start, gap_top in _gaps_desc(mm):
        top = min(gap_top, high_limit)
        bottom = max(gap_start, low_limit)
        if top <= bottom or top - bottom < need:
            continue
        addr = top - length
        addr -= (addr - align_offset) & align_mask
        return addr
    return -1


def _gaps_desc(mm: MmStruct) -> list[tuple[int, int]]:
    """The free gaps [start, end) of the address space, highest first (vm_start_gap applied)."""
    gaps = []
    prev_end = 0
    for vma in mm.vmas:
        gaps.append((prev_end, vm_start_gap(vma)))
        prev_end = vma.end
    gaps.append((prev_end, mm.task_size))
    return [g for g in reversed(gaps) if g[1] > g[0]]


def unmapped_area_bottomup(mm: MmStruct, length: int, low_limit: int, high_limit: int,
                           align_mask: int = 0) -> int:
    for gap_start, gap_top in reversed(_gaps_desc(mm)):
        start = max(gap_start, low_limit)
        start = (start + align_mask) & ~align_mask
        if start + length <= min(gap_top, high_limit):
            return start
    return -1


def mmap_address_hint_valid(mm: MmStruct, addr: int, length: int, window: int) -> bool:
    if mm.task_size - length < addr:
        return False
    return (addr > window) == (addr + length > window)


def arch_get_unmapped_area_topdown(mm: MmStruct, addr: int, length: int, align_mask: int,
                                   window: int) -> int:
    """arch_get_unmapped_area_topdown(): the hint if free, else the top-down search,
    else bottom-up from mmap_legacy_base. Returns -1 when nothing fits (ENOMEM)."""
    if addr:
        addr &= ~(PAGE_SIZE - 1)
        if align_mask:
            addr = (addr + align_mask) & ~align_mask  # hugetlb: hint rounded to the page size
        if mmap_address_hint_valid(mm, addr, length, window):
            prev, nxt = prev_of_addr(mm, addr + 1), next_of_addr(mm, addr)
            overl = vmas_in_range(mm, addr, addr + length)
            if not overl and (nxt is None or addr + length <= vm_start_gap(nxt)) and \
                    (prev is None or addr >= prev.end):
                return addr
    high = mm.mmap_base
    if addr > window:
        high += mm.task_size - window
    found = unmapped_area_topdown(mm, length, max(PAGE_SIZE, MMAP_MIN_ADDR), high, align_mask)
    if found >= 0:
        return found
    # The bottom-up fallback (arch_get_unmapped_area -> find_start_end): from
    # mmap_legacy_base (a third of the 47-bit window) up to the window, or to TASK_SIZE
    # for a hint above it (task_size_64bit(addr > DEFAULT_MAP_WINDOW)).
    legacy_base = (window // 3 + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
    top = mm.task_size if addr > window else window
    return unmapped_area_bottomup(mm, length, legacy_base, top, align_mask)


def get_unmapped_area(mm: MmStruct, addr: int, length: int, fixed: bool, anonymous_private: bool,
                      align_mask: int, window: int, shmem_k: Kernel | None = None,
                      shmem_pgoff: int | None = None, file: File | None = None) -> int:
    """__get_unmapped_area(): returns the address or raises ENOMEM/EINVAL. A shared
    anonymous mapping (``shmem_k`` given) is placed by shmem_get_unmapped_area, as
    mmap_region will make it a shmem file. A file (``file``, from page ``shmem_pgoff``):
    ext4's ->get_unmapped_area is thp_get_unmapped_area (2 MiB alignment that keeps the
    file offset's), shmem's shmem_get_unmapped_area (a tmpfs file's sb is huge=never)."""
    if length > mm.task_size:
        raise SyscallError(Errno.ENOMEM, "length exceeds TASK_SIZE")
    if fixed:
        result = addr
    elif file is not None and file.inode.fs == "disk":
        result = thp_get_unmapped_area_file(mm, addr, length, (shmem_pgoff or 0) << 12, window)
    elif file is not None:
        from pagewalk.mm import shmem
        assert shmem_k is not None
        result = shmem.shmem_get_unmapped_area(shmem_k, mm, addr, length, window, shmem_pgoff,
                                               sb_huge=shmem.shmem_sb_huge(shmem_k, file.inode))
    elif shmem_k is not None:
        from pagewalk.mm import shmem
        result = shmem.shmem_get_unmapped_area(shmem_k, mm, addr, length, window, shmem_pgoff)
    elif anonymous_private and not addr and length % PMD_SIZE == 0:
        result = thp_get_unmapped_area(mm, length, window)
    else:
        result = arch_get_unmapped_area_topdown(mm, addr, length, align_mask, window)
    if result < 0:
        raise SyscallError(Errno.ENOMEM, "no free range large enough")
    if result > mm.task_size - length:
        raise SyscallError(Errno.ENOMEM, "range beyond TASK_SIZE")
    if result & (PAGE_SIZE - 1):
        raise SyscallError(Errno.EINVAL, "address not page aligned")
    return result


def thp_get_unmapped_area_file(mm: MmStruct, addr: int, length: int, off: int,
                               window: int) -> int:
    """__thp_get_unmapped_area(size=PMD_SIZE) with a file offset: when the range holds a
    whole aligned 2 MiB of the file, search for length + 2 MiB and move the result to
    the file offset's alignment (topdown: +2 MiB when it already is); else the plain
    search."""
    off_align = (off + PMD_SIZE - 1) & ~(PMD_SIZE - 1)
    off_end = (off + length) & ~(PMD_SIZE - 1)
    if off_end <= off_align or off_end - off_align < PMD_SIZE:
        return arch_get_unmapped_area_topdown(mm, addr, length, 0, window)
    padded = arch_get_unmapped_area_topdown(mm, addr, length + PMD_SIZE, 0, window)
    if padded < 0:
        return arch_get_unmapped_area_topdown(mm, addr, length, 0, window)
    if padded == addr:
        return addr
    off_sub = (off - padded) & (PMD_SIZE - 1)
    return padded + PMD_SIZE if off_sub == 0 else padded + off_sub


def thp_get_unmapped_area(mm: MmStruct, length: int, window: int) -> int:
    """__thp_get_unmapped_area(size=PMD_SIZE): search for length + 2 MiB, then round the
    result up to 2 MiB (topdown: +2 MiB when already aligned); unpadded search on failure."""
    padded = arch_get_unmapped_area_topdown(mm, 0, length + PMD_SIZE, 0, window)
    if padded < 0:
        return arch_get_unmapped_area_topdown(mm, 0, length, 0, window)
    off_sub = (0 - padded) & (PMD_SIZE - 1)
    return padded + PMD_SIZE if off_sub == 0 else padded + off_sub


# --- munmap ------------------------------------------------------------------------------

def unmap_vmas(k: Kernel, mm: MmStruct, vmas: list[Vma], floor: int, ceiling: int) -> None:
    """unmap_region(): zap the pages of detached VMAs, then free_pgtables()."""
    for vma in vmas:
        mlock.munlock_vma_range(k, mm, vma, vma.start, vma.end)   # folio_remove_rmap_*
        memory.unmap_page_range(k, mm, vma, vma.start, vma.end)
    free_pgtables(k, mm, vmas, floor, ceiling)


def free_pgtables(k: Kernel, mm: MmStruct, vmas: list[Vma], floor: int, ceiling: int) -> None:
    """free_pgtables(): free_pgd_range over runs of the detached VMAs; a run is cut where the
    next VMA starts more than PMD_SIZE after the current one ends, or at a hugetlb VMA."""
    i = 0
    while i < len(vmas):
        vma = vmas[i]
        addr = vma.start
        j = i
        if not vma.is_hugetlb():
            while j + 1 < len(vmas) and vmas[j + 1].start <= vmas[j].end + PMD_SIZE and \
                    not vmas[j + 1].is_hugetlb():
                j += 1
        nxt = vmas[j + 1].start if j + 1 < len(vmas) else ceiling
        k.pgtables.free_pgd_range(mm, addr, vmas[j].end, floor, nxt)  # floor stays as given
        i = j + 1
    flush_tlb_mm(k, mm)


def detach_range(k: Kernel, mm: MmStruct, start: int, end: int) -> tuple[list[Vma], int, int]:
    """vms_gather_munmap_vmas(): split the VMAs at start and end and take the ones inside
    out of the tree. Returns (detached, floor, ceiling) for unmap_region."""
    first = find_vma(mm, start)
    if first is not None and first.start < start:
        split_vma(k, mm, first, start)
    detached: list[Vma] = []
    for vma in VmaIterator(mm, start, end):      # for_each_vma_range(): does it split the end?
        if vma.end > end:
            vma, _ = split_vma(k, mm, vma, end)
        detached.append(vma)
    prev = prev_of_addr(mm, start)
    nxt = next_of_addr(mm, end)
    for vma in detached:
        vma_remove(mm, vma)
    floor = prev.end if prev is not None else 0
    ceiling = nxt.start if nxt is not None else 0
    return detached, floor, ceiling


def check_split_allowed(mm: MmStruct, start: int, end: int) -> None:
    """vm_ops->may_split of every VMA the range cuts (hugetlb_vm_op_split: EINVAL off a
    huge page boundary)."""
    for vma in vmas_in_range(mm, start, end):
        for cut in (start, end):
            if vma.start < cut < vma.end and vma.file is not None:
                vma.file.may_split(vma, cut)


def do_munmap_range(k: Kernel, mm: MmStruct, start: int, end: int) -> None:
    """do_vmi_align_munmap() after the checks: detach, account, zap, free tables, close."""
    check_split_allowed(mm, start, end)
    if not vmas_in_range(mm, start, end):
        return
    detached, floor, ceiling = detach_range(k, mm, start, end)
    mm.update_hiwater_vm()
    unmap_vmas(k, mm, detached, floor, ceiling)
    for vma in detached:
        vm_stat_account(mm, vma.flags, -(vma.length >> 12))
        if vma.flags & VmFlags.LOCKED:      # vms_gather_munmap_vmas(): vms->locked_vm
            mm.locked_vm -= vma.length >> 12
        if vma.flags & VmFlags.ACCOUNT:
            vm_unacct_memory(k, vma.length >> 12)
        if vma.file is not None:
            vma.file.vma_close(k, vma)


def do_munmap(k: Kernel, mm: MmStruct, start: int, length: int) -> None:
    """do_vmi_munmap(): EINVAL for an unaligned start, a zero length or a range beyond
    TASK_SIZE; an unmapped range succeeds."""
    if start & (PAGE_SIZE - 1) or start > mm.task_size or length > mm.task_size - start:
        raise SyscallError(Errno.EINVAL, "bad munmap range")
    end = start + ((length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1))
    if end == start:
        raise SyscallError(Errno.EINVAL, "zero length")
    do_munmap_range(k, mm, start, end)


def exit_mmap(k: Kernel, mm: MmStruct) -> None:
    """exit_mmap(): zap every VMA, free every page table, then the VMAs themselves."""
    vmas = list(mm.vmas)
    for vma in vmas:
        mlock.munlock_vma_range(k, mm, vma, vma.start, vma.end)
        memory.unmap_page_range(k, mm, vma, vma.start, vma.end)
    free_pgtables(k, mm, vmas, 0, 0)
    for vma in vmas:
        vma_remove(mm, vma)
        vm_stat_account(mm, vma.flags, -(vma.length >> 12))
        if vma.flags & VmFlags.ACCOUNT:
            vm_unacct_memory(k, vma.length >> 12)
        if vma.file is not None:
            vma.file.vma_close(k, vma)


def insert_or_merge(k: Kernel, mm: MmStruct, vma: Vma) -> Vma:
    """__mmap_region(): vma_merge_new_range() extends an adjacent compatible VMA instead of
    adding ``vma``; else ``vma`` goes into the tree."""
    vmg = VmaMergeStruct(vma.start, vma.end, vma.flags, vma.pgoff, vma.file, vma.name, None,
                         special=vma.special)
    merged = vma_merge_new_range(k, mm, vmg)
    if merged is not None:
        return merged
    vma_insert(mm, vma)
    return vma


# --- mmap --------------------------------------------------------------------------------

def round_hint_to_min(hint: int) -> int:
    """round_hint_to_min(): a hint below mmap_min_addr is raised to it, unless it rounds
    down to page 0, which means no hint at all."""
    hint &= ~(PAGE_SIZE - 1)
    if hint and hint < MMAP_MIN_ADDR:
        return MMAP_MIN_ADDR
    return hint


def accountable_mapping(flags: VmFlags) -> bool:
    """accountable_mapping(): private writable memory is charged to Committed_AS."""
    return flags & (VmFlags.NORESERVE | VmFlags.SHARED | VmFlags.WRITE | VmFlags.HUGETLB) \
        == VmFlags.WRITE


def do_mmap(k: Kernel, mm: MmStruct, addr: int, length: int, prot: int, flags: frozenset[str],
            huge_size: int | None, file: File | None = None, pgoff: int = 0) -> int:
    """do_mmap() + mmap_region() for anonymous memory (private, shared, hugetlb) and for
    an open file (``file``, from page ``pgoff``: ext4's or shmem's ->mmap).

    Returns the start address or raises SyscallError before anything changes."""
    shared, private = "shared" in flags, "private" in flags
    if file is not None:
        flags = flags - {"anonymous", "hugetlb"}
    fixed = "fixed" in flags or "fixed_noreplace" in flags
    hugetlb = "hugetlb" in flags
    if hugetlb:
        from pagewalk.mm import hugetlb as htlb
        hstate = htlb.hstate_for(k, huge_size)
        length = (length + hstate.size - 1) & ~(hstate.size - 1)  # ksys_mmap_pgoff: ALIGN
    if not length:
        raise SyscallError(Errno.EINVAL, "length 0")
    if not fixed:
        addr = round_hint_to_min(addr)
    aligned_len = (length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
    if aligned_len < length or aligned_len >= 1 << 64:
        raise SyscallError(Errno.ENOMEM, "length overflows")
    length = aligned_len
    if file is not None and pgoff + (length >> 12) >= 1 << 52:
        raise SyscallError(Errno.EOVERFLOW, "file offset + length overflows")
    vm_flags = calc_vm_prot_bits(prot) | VmFlags.MAYREAD | VmFlags.MAYWRITE | VmFlags.MAYEXEC
    vm_flags |= mm.def_flags                          # VM_LOCKED after mlockall(MCL_FUTURE)
    vm_flags |= pkeys.mmap_pkey_flags(k, mm, prot)   # PROT_EXEC alone: execute_only_pkey()
    if shared:
        vm_flags |= VmFlags.SHARED | VmFlags.MAYSHARE
    if "noreserve" in flags and (hugetlb or k.knobs.get("/proc/sys/vm/overcommit_memory") != "2"):
        vm_flags |= VmFlags.NORESERVE
    if hugetlb:
        vm_flags |= VmFlags.HUGETLB | VmFlags.DONTEXPAND
    if len(mm.vmas) >= k.max_map_count:
        raise SyscallError(Errno.ENOMEM, "vm.max_map_count reached")
    window = k.default_map_window
    align_mask = hstate.size - 1 if hugetlb else 0
    if hugetlb and fixed and addr & align_mask:
        raise SyscallError(Errno.EINVAL, "MAP_HUGETLB address not huge-page aligned")
    if file is not None:
        start = get_unmapped_area(mm, addr, length, fixed, False, 0, window, shmem_k=k,
                                  shmem_pgoff=pgoff, file=file)
    else:
        start = get_unmapped_area(mm, addr, length, fixed, not shared and not hugetlb,
                                  align_mask, window,
                                  shmem_k=k if shared and not hugetlb else None)
    end = start + length
    if "fixed_noreplace" in flags and vmas_in_range(mm, start, end):
        raise SyscallError(Errno.EEXIST, "MAP_FIXED_NOREPLACE range is in use")
    # do_mmap() looks at MAP_TYPE only after the address is found (ENOMEM, EEXIST first)
    if shared == private:
        raise SyscallError(Errno.EINVAL, "exactly one of MAP_SHARED and MAP_PRIVATE is needed")
    check_split_allowed(mm, start, end)
    replaced = vmas_in_range(mm, start, end) if fixed else []
    accounted_old = sum(min(v.end, end) - max(v.start, start) for v in replaced
                        if v.flags & VmFlags.ACCOUNT) >> 12
    if accountable_mapping(vm_flags):
        __vm_enough_memory(k, mm, (length >> 12) - accounted_old)
        vm_flags |= VmFlags.ACCOUNT
    vma_file: PageCacheFile | HugetlbFile | File | None = file
    if file is not None:
        pass
    elif shared and not hugetlb:
        from pagewalk.mm import shmem
        vma_file = shmem.shmem_zero_setup(k, length, vm_flags)
    # vms_clean_up_area(): what MAP_FIXED replaces is zapped and closed (a hugetlb VMA gives
    # its reservations back) before the new file's mmap hook reserves.
    if replaced:
        do_munmap_range(k, mm, start, end)
    if hugetlb:
        # hugetlbfs_file_mmap() -> hugetlb_reserve_pages(): on ENOMEM the replaced range
        # stays unmapped (vms_abort_munmap_vmas cannot reopen closed VMAs: it leaves a gap)
        vma_file = htlb.hugetlb_file_setup(k, hstate, length, vm_flags, shared)
    # Nothing can fail from here on.
    if vm_flags & VmFlags.ACCOUNT:
        vm_acct_memory(k, length >> 12)
    if vm_flags & VmFlags.LOCKED:
        # __mmap_region(): VM_SPECIAL and hugetlb VMAs are never locked
        if hugetlb or vm_flags & (VmFlags.IO | VmFlags.DONTEXPAND | VmFlags.PFNMAP):
            vm_flags &= ~VM_LOCKED_MASK
        else:
            mm.locked_vm += length >> 12
    if vma_file is None:
        pgoff = start >> 12
    vma = Vma(start, end, vm_flags, pgoff, vma_page_prot(vm_flags, vma_file), file=vma_file,
              name=vma_file.map_name if vma_file is not None else "")
    vma = insert_or_merge(k, mm, vma)
    vm_stat_account(mm, vm_flags, length >> 12)
    mm.update_hiwater_vm()
    from pagewalk.mm import huge_memory
    huge_memory.khugepaged_enter_vma(k, mm, vma)
    return start


# --- brk ---------------------------------------------------------------------------------

def sys_brk(k: Kernel, mm: MmStruct, brk: int) -> tuple[int, bool]:
    """brk(2) (mm/mmap.c SYSCALL_DEFINE1(brk)): returns (the break, whether VM_LOCKED asks
    the caller to populate [old, new) after growing). A refused request leaves the break
    where it was and returns it. Without CONFIG_COMPAT_BRK the floor is start_brk; root's
    RLIMIT_DATA is unlimited (check_data_rlimit passes)."""
    origbrk = mm.brk
    if brk < mm.start_brk:
        return origbrk, False
    newbrk = _page_align(brk)
    oldbrk = _page_align(mm.brk)
    if oldbrk == newbrk:
        mm.brk = brk
        return brk, False
    if brk <= mm.brk:          # always allow shrinking brk
        found = vmas_in_range(mm, newbrk, oldbrk)
        if not found or found[0].start >= oldbrk:
            return origbrk, False  # the range holds no brk VMA
        mm.brk = brk
        try:
            do_munmap_range(k, mm, newbrk, oldbrk)
        except SyscallError:
            mm.brk = origbrk
            return origbrk, False
        return brk, False
    length = newbrk - oldbrk
    if length > mm.task_size or oldbrk > mm.task_size - length:   # check_brk_limits()
        return origbrk, False
    # only a VMA within stack_guard_gap of the expansion is in the way
    nxt = next_of_addr(mm, oldbrk)
    overlapping = vmas_in_range(mm, oldbrk, newbrk + PAGE_SIZE + STACK_GUARD_GAP)
    if overlapping:
        nxt = overlapping[0]
    if nxt is not None and nxt.start < newbrk + PAGE_SIZE + STACK_GUARD_GAP and \
            newbrk + PAGE_SIZE > vm_start_gap(nxt):
        return origbrk, False
    prev = prev_of_addr(mm, oldbrk)
    brkvma = prev if prev is not None and prev.end > mm.start_brk else None  # vma_prev_limit
    try:
        do_brk_flags(k, mm, brkvma, oldbrk, length)
    except SyscallError:
        return origbrk, False
    mm.brk = brk
    return brk, bool(mm.def_flags & VmFlags.LOCKED)


def _page_align(addr: int) -> int:
    return (addr + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def do_brk_flags(k: Kernel, mm: MmStruct, vma: Vma | None, addr: int, length: int) -> None:
    """do_brk_flags(): VM_DATA_DEFAULT_FLAGS | VM_ACCOUNT | mm->def_flags; the heap VMA
    grows in place when it ends at ``addr`` and may merge (VMG_FLAG_JUST_EXPAND: with the
    previous VMA only), else a new anonymous VMA; then VM_SOFTDIRTY."""
    flags = (VmFlags.READ | VmFlags.WRITE | VmFlags.MAYREAD | VmFlags.MAYWRITE
             | VmFlags.MAYEXEC | VmFlags.ACCOUNT | mm.def_flags)
    pages = length >> 12
    if len(mm.vmas) > k.max_map_count:
        raise SyscallError(Errno.ENOMEM, "vm.max_map_count reached")
    __vm_enough_memory(k, mm, pages)                 # security_vm_enough_memory_mm()
    vm_acct_memory(k, pages)
    target: Vma | None = None
    if vma is not None and vma.end == addr:
        vmg = VmaMergeStruct(addr, addr + length, flags, addr >> 12, None, vma.name, None,
                             prev=vma)
        if can_vma_merge_after(vmg):
            vma.end = addr + length
            target = vma
            from pagewalk.mm import huge_memory
            huge_memory.khugepaged_enter_vma(k, mm, vma)
    if target is None:
        target = Vma(addr, addr + length, flags, addr >> 12, vm_get_page_prot(flags),
                     name="[heap]")
        vma_insert(mm, target)
    vm_stat_account(mm, flags, pages)
    if flags & VmFlags.LOCKED:
        mm.locked_vm += pages
    target.flags |= VmFlags.SOFTDIRTY
    mm.update_hiwater_vm()
