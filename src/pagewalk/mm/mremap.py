"""mremap(2) (mm/mremap.c): shrink, grow in place, move (MREMAP_MAYMOVE, MREMAP_FIXED,
MREMAP_DONTUNMAP).

A move does not copy: move_vma() makes the new VMA (copy_vma), then move_page_tables()
moves the entries: a whole PUD or PMD entry (its page table goes along) where the
extent is PUD/PMD-sized and the destination entry is none, a huge PMD only to a
2 MiB-aligned destination (else split_huge_pmd, thp_split_pmd, and its PTEs move), and
otherwise PTE by PTE (move_ptes). No fault, no RSS change; the old range is then
unmapped (with its VM_ACCOUNT concealed, so the charge moves with the mapping).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from pagewalk.errors import Errno, SyscallError
from pagewalk.hw import pgtable_types as pt
from pagewalk.mm import huge_memory
from pagewalk.mm.filemap import File
from pagewalk.mm.mmap import (
    PAGE_SIZE,
    PMD_SIZE,
    check_split_allowed,
    do_munmap,
    do_munmap_range,
    get_unmapped_area,
)
from pagewalk.mm.pgtable import pte_alloc
from pagewalk.mm.tlb import flush_tlb_mm
from pagewalk.mm.types import VM_LOCKED_MASK, MmStruct, Vma, VmFlags
from pagewalk.mm.util import __vm_enough_memory, vm_acct_memory
from pagewalk.mm.vma import (
    VmaMergeStruct,
    vm_stat_account,
    vma_insert,
    vma_lookup,
    vma_merge_new_range,
    vmas_in_range,
)

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel
    from pagewalk.kernel.task import Task

MREMAP_MAYMOVE, MREMAP_FIXED, MREMAP_DONTUNMAP = 1, 2, 4
PUD_SIZE = 1 << 30
VM_SPECIAL_EXPAND = VmFlags.DONTEXPAND | VmFlags.PFNMAP


def _page_align(length: int) -> int:
    return (length + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def sys_mremap(k: Kernel, task: Task, addr: int, old_len: int, new_len: int, flags: int,
               new_addr: int) -> tuple[int, tuple[int, int] | None]:
    """SYSCALL_DEFINE5(mremap): returns (the new address, the range to populate because
    the mapping is VM_LOCKED and grew, or None). Raises SyscallError before changing
    anything where the kernel refuses up front."""
    mm = task.mm
    old_len, new_len = _page_align(old_len), _page_align(new_len)
    check_mremap_params(k, mm, addr, old_len, new_len, flags, new_addr)
    vma = vma_lookup(mm, addr)
    if vma is None:
        raise SyscallError(Errno.EFAULT, "no mapping at the old address")
    if vma.is_hugetlb():
        from pagewalk.mm.hugetlb import vma_kernel_pagesize
        size = vma_kernel_pagesize(vma)
        old_len = (old_len + size - 1) & ~(size - 1)
        new_len = (new_len + size - 1) & ~(size - 1)
        if addr & (size - 1) or new_addr & (size - 1):
            raise SyscallError(Errno.EINVAL, "hugetlb address not huge-page aligned")
        if new_len > old_len:
            raise SyscallError(Errno.EINVAL, "growing hugetlb memory is not supported")
    if flags & MREMAP_FIXED and old_len == new_len:       # vrm_move_only()
        return remap_move(k, task, addr, old_len, new_addr, flags), None
    if flags & (MREMAP_FIXED | MREMAP_DONTUNMAP):
        return mremap_to(k, task, addr, old_len, new_addr, new_len, flags)
    if old_len >= new_len:             # always allow a shrinking remap
        if old_len > new_len:
            do_munmap(k, mm, addr + new_len, old_len - new_len)
        return addr, None
    vma = vma_to_resize(mm, addr, old_len, new_len, flags)
    if old_len == vma.end - addr and vma_expandable(mm, vma, new_len - old_len):
        delta = new_len - old_len
        pages = delta >> 12
        if vma.flags & VmFlags.ACCOUNT:
            __vm_enough_memory(k, mm, pages)
            vm_acct_memory(k, pages)
        vma = vma_merge_extend(k, mm, vma, delta)
        vm_stat_account(mm, vma.flags, pages)
        mm.update_hiwater_vm()
        if vma.flags & VmFlags.LOCKED:
            mm.locked_vm += pages
            return addr, (addr + old_len, addr + new_len)
        return addr, None
    if not flags & MREMAP_MAYMOVE:
        raise SyscallError(Errno.ENOMEM, "cannot grow in place and MREMAP_MAYMOVE not given")
    new_addr = _unmapped_area(k, mm, vma, addr, 0, new_len, fixed=False)
    return move_vma(k, mm, vma, addr, old_len, new_len, new_addr, flags)


def check_mremap_params(k: Kernel, mm: MmStruct, addr: int, old_len: int, new_len: int,
                        flags: int, new_addr: int) -> None:
    """check_mremap_params() (6.17+): every check that needs no VMA, before vma_lookup, so a
    MREMAP_FIXED overlap is EINVAL even when the old address is a hole (not EFAULT)."""
    if flags & ~(MREMAP_FIXED | MREMAP_MAYMOVE | MREMAP_DONTUNMAP):
        raise SyscallError(Errno.EINVAL, "unknown mremap flags")
    if addr & (PAGE_SIZE - 1):
        raise SyscallError(Errno.EINVAL, "address not page aligned")
    if not new_len:
        raise SyscallError(Errno.EINVAL, "new length 0")
    if new_len > mm.task_size:
        raise SyscallError(Errno.EINVAL, "new length beyond TASK_SIZE")
    if not flags & (MREMAP_FIXED | MREMAP_DONTUNMAP):   # vrm_implies_new_addr()
        return
    if new_addr > mm.task_size - new_len:
        raise SyscallError(Errno.EINVAL, "new range beyond TASK_SIZE")
    if new_addr & (PAGE_SIZE - 1):
        raise SyscallError(Errno.EINVAL, "new address not page aligned")
    if not flags & MREMAP_MAYMOVE:
        raise SyscallError(Errno.EINVAL, "MREMAP_FIXED/MREMAP_DONTUNMAP need MREMAP_MAYMOVE")
    if flags & MREMAP_DONTUNMAP and old_len != new_len:
        raise SyscallError(Errno.EINVAL, "MREMAP_DONTUNMAP needs old_len == new_len")
    if addr + old_len > new_addr and new_addr + new_len > addr:   # vrm_overlaps()
        raise SyscallError(Errno.EINVAL, "old and new ranges overlap")
    if len(mm.vmas) + 2 >= k.max_map_count - 3:
        raise SyscallError(Errno.ENOMEM, "vm.max_map_count reached")


def _unmapped_area(k: Kernel, mm: MmStruct, vma: Vma, old_addr: int, addr: int, length: int,
                   fixed: bool) -> int:
    """vrm_set_new_addr(): get_unmapped_area(vma->vm_file, addr, len, pgoff, MAP_SHARED if
    VM_MAYSHARE) with pgoff that of old_addr: the placement of a new mapping like this one
    (THP-aligned anonymous, shmem with its file, hugetlb)."""
    pgoff = vma.pgoff + ((old_addr - vma.start) >> 12)
    if isinstance(vma.file, File):       # the file's ->get_unmapped_area (ext4, shmem)
        return get_unmapped_area(mm, addr, length, fixed, False, 0, k.default_map_window,
                                 shmem_k=k, shmem_pgoff=pgoff, file=vma.file)
    align_mask = 0
    if vma.is_hugetlb():
        from pagewalk.mm.hugetlb import vma_kernel_pagesize
        align_mask = vma_kernel_pagesize(vma) - 1
    shared = bool(vma.flags & VmFlags.MAYSHARE) and not vma.is_hugetlb()
    anonymous = vma.file is None and not vma.special
    return get_unmapped_area(mm, addr, length, fixed, anonymous and not shared, align_mask,
                             k.default_map_window, shmem_k=k if shared else None,
                             shmem_pgoff=pgoff)


def vma_to_resize(mm: MmStruct, addr: int, old_len: int, new_len: int, flags: int) -> Vma:
    """vma_to_resize(): the VMA at addr, which must hold all of the old range; a growing
    VM_DONTEXPAND/VM_PFNMAP mapping is EFAULT. Root: no RLIMIT_AS/MEMLOCK."""
    vma = vma_lookup(mm, addr)
    if vma is None:
        raise SyscallError(Errno.EFAULT, "no mapping at the old address")
    if not old_len and not vma.flags & (VmFlags.SHARED | VmFlags.MAYSHARE):
        raise SyscallError(Errno.EINVAL, "old_len 0 duplicates only shared mappings")
    if flags & MREMAP_DONTUNMAP and vma.flags & VM_SPECIAL_EXPAND:
        raise SyscallError(Errno.EINVAL, "MREMAP_DONTUNMAP of a special mapping")
    if old_len > vma.end - addr:
        raise SyscallError(Errno.EFAULT, "the old range crosses the end of its mapping")
    if new_len == old_len:
        return vma
    if vma.flags & VM_SPECIAL_EXPAND:
        raise SyscallError(Errno.EFAULT, "the mapping may not grow (VM_DONTEXPAND)")
    return vma


def vma_expandable(mm: MmStruct, vma: Vma, delta: int) -> bool:
    """vma_expandable(): nothing mapped in [end, end + delta) and the result below TASK_SIZE."""
    end = vma.end + delta
    if vmas_in_range(mm, vma.end, end):
        return False
    return end - vma.start <= mm.task_size and vma.start <= mm.task_size - (end - vma.start)


def vma_merge_extend(k: Kernel, mm: MmStruct, vma: Vma, delta: int) -> Vma:
    """vma_merge_extend(): ``vma`` grows by delta, and joins the next VMA if that is now
    adjacent and compatible."""
    end = vma.end
    vmg = VmaMergeStruct(end, end + delta, vma.flags, vma.pgoff + (vma.length >> 12),
                         vma.file, vma.name, vma.anon_vma, special=vma.special)
    merged = vma_merge_new_range(k, mm, vmg)
    if merged is not None:
        return merged
    vma.end = end + delta
    return vma


def remap_move(k: Kernel, task: Task, addr: int, length: int, new_addr: int,
               flags: int) -> int:
    """remap_move() (6.17+): a pure MREMAP_FIXED move may span several VMAs: each part of
    [addr, addr + length) that a VMA maps moves (mremap_to, splitting at the edges) so
    that the gaps between them stay as they were; a gap at the start, or no VMA at all,
    is EFAULT. Every VMA pagewalk has is vma_multi_allowed (anonymous, shmem, hugetlb,
    ext4's thp_get_unmapped_area). Returns where the first part went."""
    mm = task.mm
    end = addr + length
    position, target, last_end = addr, new_addr, 0
    result: int | None = None
    while position < end:
        vma = next((v for v in vmas_in_range(mm, position, end)), None)
        if vma is None:
            break
        if result is None and addr < vma.start:
            raise SyscallError(Errno.EFAULT, "no mapping at the old address")
        start = max(vma.start, position)
        part = min(end, vma.end) - start
        offset = vma.start - last_end if result is not None else 0
        last_end = vma.end
        moved, _ = mremap_to(k, task, start, part, target + offset, part, flags)
        if result is None:
            result = moved
        target = moved + part
        position = start + part
    if result is None:
        raise SyscallError(Errno.EFAULT, "no mapping at the old address")
    return result


def mremap_to(k: Kernel, task: Task, addr: int, old_len: int, new_addr: int, new_len: int,
              flags: int) -> tuple[int, tuple[int, int] | None]:
    """mremap_to(): MREMAP_FIXED unmaps the destination first; a shrinking old range loses
    its tail; then the move."""
    mm = task.mm
    if new_addr & (PAGE_SIZE - 1):
        raise SyscallError(Errno.EINVAL, "new address not page aligned")
    if new_len > mm.task_size or new_addr > mm.task_size - new_len:
        raise SyscallError(Errno.EINVAL, "new range beyond TASK_SIZE")
    if addr + old_len > new_addr and new_addr + new_len > addr:
        raise SyscallError(Errno.EINVAL, "old and new ranges overlap")
    if len(mm.vmas) + 2 >= k.max_map_count - 3:
        raise SyscallError(Errno.ENOMEM, "vm.max_map_count reached")
    # 6.17+ do_mremap: vma_lookup and check_prep_vma (EFAULT) run before mremap_to
    # unmaps the destination, which then survives a refused call
    vma_to_resize(mm, addr, min(old_len, new_len), new_len, flags)
    if flags & MREMAP_FIXED:
        do_munmap(k, mm, new_addr, new_len)
    if old_len > new_len:
        do_munmap(k, mm, addr + new_len, old_len - new_len)
        old_len = new_len
    vma = vma_to_resize(mm, addr, old_len, new_len, flags)
    found = _unmapped_area(k, mm, vma, addr, new_addr, new_len,
                           fixed=bool(flags & MREMAP_FIXED))
    if not flags & MREMAP_FIXED:
        new_addr = found
    return move_vma(k, mm, vma, addr, old_len, new_len, new_addr, flags)


def move_vma(k: Kernel, mm: MmStruct, vma: Vma, old_addr: int, old_len: int, new_len: int,
             new_addr: int, flags: int) -> tuple[int, tuple[int, int] | None]:
    """move_vma(): copy_vma at new_addr, move_page_tables, then unmap the old range (or,
    with MREMAP_DONTUNMAP, leave it empty and unlocked)."""
    if len(mm.vmas) >= k.max_map_count - 3:
        raise SyscallError(Errno.ENOMEM, "vm.max_map_count reached")
    dontunmap = bool(flags & MREMAP_DONTUNMAP)
    to_account = new_len if dontunmap else new_len - old_len
    check_split_allowed(mm, old_addr, old_addr + old_len)
    vm_flags = vma.flags
    if vm_flags & VmFlags.ACCOUNT and to_account > 0:
        __vm_enough_memory(k, mm, to_account >> 12)
        vm_acct_memory(k, to_account >> 12)
    new_pgoff = vma.pgoff + ((old_addr - vma.start) >> 12)
    new_vma = copy_vma(k, mm, vma, new_addr, new_len, new_pgoff)
    move_page_tables(k, mm, vma, old_addr, new_vma, new_addr, old_len)
    if vma.is_hugetlb():
        _clear_vma_resv_huge_pages(vma)
    account_start = account_end = False
    if vm_flags & VmFlags.ACCOUNT and not dontunmap:   # conceal VM_ACCOUNT: the charge moves
        vma.flags &= ~VmFlags.ACCOUNT
        account_start = vma.start < old_addr
        account_end = vma.end > old_addr + old_len
    hiwater_vm = mm.hiwater_vm
    vm_stat_account(mm, vma.flags, new_len >> 12)
    if vm_flags & VmFlags.LOCKED:   # vrm_stat_account(): the new VMA's pages, DONTUNMAP too
        mm.locked_vm += new_len >> 12
    if dontunmap:
        # 6.18 move_vma(): vm_flags_clear(vma, VM_LOCKED_MASK) on the whole old VMA, not
        # split: locked_vm keeps counting it, and its mlocked pages stay so until freed
        vma.flags &= ~VM_LOCKED_MASK
        if vma.start == old_addr and vma.end == old_addr + old_len:
            vma.anon_vma, vma.anon_vma_chain = None, ()   # unlink_anon_vmas: unfaulted
            if vma.is_anonymous():
                vma.pgoff = vma.start >> 12
        mm.update_hiwater_vm()
        return new_addr, None
    do_munmap_range(k, mm, old_addr, old_addr + old_len)   # unlocks old_len of locked_vm
    mm.hiwater_vm = hiwater_vm
    if account_start:
        before = vma_lookup(mm, old_addr - 1)
        if before is not None:
            before.flags |= VmFlags.ACCOUNT
    if account_end:
        after = vma_lookup(mm, old_addr + old_len)
        if after is not None:
            after.flags |= VmFlags.ACCOUNT
    locked = bool(vm_flags & VmFlags.LOCKED) and new_len > old_len
    return new_addr, (new_addr + old_len, new_addr + new_len) if locked else None


def _clear_vma_resv_huge_pages(vma: Vma) -> None:
    """clear_vma_resv_huge_pages(): the old private hugetlb VMA drops its reservation map
    (the new VMA holds it now), so unmapping it gives nothing back."""
    from pagewalk.mm.hugetlb import HugetlbFile, ResvMap, hugetlb_file
    file = hugetlb_file(vma)
    if file.shared:
        return
    orphan = HugetlbFile(file.hstate, file.length, False, ResvMap(), owner=False)
    orphan.pages = file.pages
    orphan.inode = file.inode
    vma.file = orphan


def copy_vma(k: Kernel, mm: MmStruct, vma: Vma, addr: int, length: int, pgoff: int) -> Vma:
    """copy_vma(): the new VMA, merged into a neighbour where it can be (an unfaulted
    anonymous VMA takes pgoff addr >> PAGE_SHIFT), else a duplicate sharing the
    anon_vma (anon_vma_clone)."""
    if vma.is_anonymous() and vma.anon_vma is None:
        pgoff = addr >> 12
    vmg = VmaMergeStruct(addr, addr + length, vma.flags, pgoff, vma.file, vma.name,
                         vma.anon_vma, special=vma.special)
    merged = vma_merge_new_range(k, mm, vmg)
    if merged is not None:
        return merged
    new = replace(vma, start=addr, end=addr + length, pgoff=pgoff, vm_mm=None)
    vma_insert(mm, new)
    return new


# --- page tables -----------------------------------------------------------------------

def get_extent(size: int, old_addr: int, old_end: int, new_addr: int) -> int:
    """get_extent(): up to the next ``size`` boundary of either address, within the range."""
    mask = ~(size - 1)
    extent = ((old_addr + size) & mask) - old_addr
    extent = min(extent, old_end - old_addr)
    return min(extent, ((new_addr + size) & mask) - new_addr)


def _can_align_down(mm: MmStruct, vma: Vma, addr: int, mask: int) -> bool:
    """can_align_down(): only from a VMA's start, and nothing mapped below it to the boundary."""
    if vma.start != addr:
        return False
    return not vmas_in_range(mm, addr & mask, vma.start)


def move_page_tables(k: Kernel, mm: MmStruct, vma: Vma, old_addr: int, new_vma: Vma,
                     new_addr: int, length: int) -> None:
    """move_page_tables(): PUD-, PMD- or PTE-level moves over [old_addr, old_addr + len)."""
    if not length:
        return
    if vma.is_hugetlb():
        _move_hugetlb_page_tables(k, mm, vma, old_addr, new_addr, length)
        return
    old_end = old_addr + length
    mask = ~(PMD_SIZE - 1)
    # try_realign_addr(): mutually misaligned starts of both VMAs move from the boundary
    if length >= PMD_SIZE - (old_addr & (PMD_SIZE - 1)) and old_addr & ~mask and \
            old_addr & ~mask == new_addr & ~mask and \
            _can_align_down(mm, vma, old_addr, mask) and \
            _can_align_down(mm, new_vma, new_addr, mask):
        old_addr &= mask
        new_addr &= mask
    pgt = k.pgtables
    while old_addr < old_end:
        extent = get_extent(PUD_SIZE, old_addr, old_end, new_addr)
        old_pud, shift = pgt.walk(mm, old_addr, 30, alloc=False)
        if shift != 30 or not pgt.read(old_pud):        # get_old_pud(): none
            old_addr, new_addr = old_addr + extent, new_addr + extent
            continue
        new_pud, _ = pgt.walk(mm, new_addr, 30, alloc=True)     # alloc_new_pud
        if extent == PUD_SIZE and not pgt.read(new_pud) and \
                not pgt.read(old_pud) & pt._PAGE_PSE:
            # move_normal_pud(): the whole PMD table goes along
            pgt.set_entry(mm, new_pud, pgt.read(old_pud))
            pgt.set_entry(mm, old_pud, 0)
            flush_tlb_mm(k, mm)
            old_addr, new_addr = old_addr + extent, new_addr + extent
            continue
        extent = get_extent(PMD_SIZE, old_addr, old_end, new_addr)
        old_pmd, shift = pgt.walk(mm, old_addr, 21, alloc=False)
        if shift != 21 or not pgt.read(old_pmd):         # get_old_pmd(): none
            old_addr, new_addr = old_addr + extent, new_addr + extent
            continue
        new_pmd, _ = pgt.walk(mm, new_addr, 21, alloc=True)     # alloc_new_pmd
        entry = pgt.read(old_pmd)
        if entry & pt._PAGE_PSE:
            if extent == PMD_SIZE and not pgt.read(new_pmd):
                _move_huge_pmd(k, mm, old_pmd, new_pmd)
                old_addr, new_addr = old_addr + extent, new_addr + extent
                continue
            huge_memory.split_huge_pmd(k, mm, vma, old_pmd, old_addr)
        elif extent == PMD_SIZE and not pgt.read(new_pmd):
            # move_normal_pmd(): the PTE table goes along
            pgt.set_entry(mm, new_pmd, entry)
            pgt.set_entry(mm, old_pmd, 0)
            flush_tlb_mm(k, mm)
            old_addr, new_addr = old_addr + extent, new_addr + extent
            continue
        if not pgt.read(old_pmd):
            old_addr, new_addr = old_addr + extent, new_addr + extent
            continue
        new_table = pte_alloc(k, mm, new_pmd)
        if new_table < 0:
            raise SyscallError(Errno.ENOMEM, "no memory for a page table")
        move_ptes(k, mm, pt.pte_pfn(pgt.read(old_pmd)), old_addr, old_addr + extent,
                  new_table, new_addr)
        old_addr, new_addr = old_addr + extent, new_addr + extent
    flush_tlb_mm(k, mm)


def _move_huge_pmd(k: Kernel, mm: MmStruct, old_pmd: int, new_pmd: int) -> None:
    """move_huge_pmd(): the huge PMD moves, and its deposited PTE table with it
    (pmd_move_must_withdraw: the two PMDs have different locks)."""
    pgt = k.pgtables
    pgt.set_entry(mm, new_pmd, pgt.read(old_pmd))
    pgt.set_entry(mm, old_pmd, 0)
    if old_pmd in k.deposit:
        k.deposit[new_pmd] = k.deposit.pop(old_pmd)


def move_ptes(k: Kernel, mm: MmStruct, old_table: int, old_addr: int, old_end: int,
              new_table: int, new_addr: int) -> None:
    """move_ptes(): every PTE of [old_addr, old_end) to the same offset at new_addr."""
    pgt = k.pgtables
    while old_addr < old_end:
        src = (old_table << 12) + ((old_addr >> 12) & 511) * 8
        entry = pgt.read(src)
        if entry:
            pgt.set_entry(mm, src, 0)
            pgt.set_entry(mm, (new_table << 12) + ((new_addr >> 12) & 511) * 8, entry)
        old_addr += PAGE_SIZE
        new_addr += PAGE_SIZE


def _move_hugetlb_page_tables(k: Kernel, mm: MmStruct, vma: Vma, old_addr: int,
                              new_addr: int, length: int) -> None:
    """move_hugetlb_page_tables(): each huge page's leaf entry to its new place."""
    from pagewalk.mm.hugetlb import vma_kernel_pagesize
    size = vma_kernel_pagesize(vma)
    shift = 30 if size == PUD_SIZE else 21
    pgt = k.pgtables
    for offset in range(0, length, size):
        src, found = pgt.walk(mm, old_addr + offset, shift, alloc=False)
        if found != shift or not pgt.read(src):
            continue
        dst, _ = pgt.walk(mm, new_addr + offset, shift, alloc=True)
        pgt.set_entry(mm, dst, pgt.read(src))
        pgt.set_entry(mm, src, 0)
    flush_tlb_mm(k, mm)
