"""The simulated kernel: boot, tasks, the user-fault entry, TLB flushing, knobs.

Follows arch/x86/mm/fault.c (do_user_addr_fault, access_error), kernel/fork.c and
kernel/exit.c for task lifetime, kernel/sched/core.c context_switch for the task switch.
All state hangs off one Kernel object (STYLE rule 6); the mm logic that works on it
takes it explicitly: arch/x86/mm/tlb.c is mm/tlb.py, overcommit (mm/util.c) mm/util.py,
the huge zero folio and the deferred split queue mm/huge_memory.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from pagewalk.errors import ConfigError, Errno, Signal, SignalError, SyscallError
from pagewalk.hw import pgtable_types as pt
from pagewalk.hw.mmu import GeneralProtection, Mmu, PageFault
from pagewalk.hw.walker import ACCESS_IFETCH, ACCESS_WRITE
from pagewalk.kernel import exec_image
from pagewalk.kernel.knobs import KnobValues
from pagewalk.kernel.task import Task
from pagewalk.mm import hugetlb, memory, pkeys, rmap, shmem, tlb
from pagewalk.mm.huge_memory import mm_put_huge_zero_folio
from pagewalk.mm.mmap import exit_mmap, vm_get_page_prot
from pagewalk.mm.oom_kill import OomKilled
from pagewalk.mm.page_alloc import NO_PAGE, BuddyAllocator, MemMap
from pagewalk.mm.pgtable import PageTables, mk_anon_pte, pte_alloc
from pagewalk.mm.types import FaultFlags, MmStat, MmStruct, Vma, VmFault, VmFlags
from pagewalk.mm.util import vm_acct_memory
from pagewalk.mm.vma import find_vma, vm_stat_account, vma_insert
from pagewalk.mm.vmstat import NodeStat, new_node_stats, new_vm_events

if TYPE_CHECKING:
    from pagewalk.hw.physmem import PhysicalMemory
    from pagewalk.mm.memcontrol import MemCgroup
    from pagewalk.mm.swap_state import SwapSpace

KERNEL_STACK_ORDER = 2               # THREAD_SIZE 16 KiB
DIRECT_MAP_PGD_INDEX = 273           # pgd_index(PAGE_OFFSET 0xffff888000000000), no KASLR
KERNEL_TEXT_PGD_INDEX = 511          # __START_KERNEL_map 0xffffffff80000000
KERNEL_IMAGE_START = 16 << 20        # physical load address (CONFIG_PHYSICAL_START)
KERNEL_IMAGE_SIZE = 32 << 20
BOOT_SLAB_PAGES = 4096               # slab caches set up at boot (16 MiB)


class Kernel:
    """One booted kernel on one machine."""

    def __init__(self, physmem: PhysicalMemory, mmu: Mmu, levels: int, pti: bool,
                 knobs: KnobValues) -> None:
        self.physmem = physmem
        self.mmu = mmu
        self.levels = levels
        self.pti = pti
        self.knobs = knobs
        self.node_stat = new_node_stats()
        self.vm_events = new_vm_events()
        self.memmap = MemMap(physmem.nr_frames)
        self.buddy = BuddyAllocator(physmem.nr_frames, self.memmap, self.node_stat, self.vm_events)
        self.pgtables = PageTables(physmem, self.buddy, levels, pti)
        self.tasks: dict[str, Task] = {}
        self.next_pid = 1000
        self.current: Task | None = None
        # Folio state kept beside the struct page arrays (rare, so dicts).
        self.entire_mapcount: dict[int, int] = {}
        self.deposit: dict[int, int] = {}          # PMD entry paddr -> deposited PTE table
        self.deferred_split: set[int] = set()
        self.mlock_count: dict[int, int] = {}       # PG_mlocked folio head -> mlock_count
        self.mthp_stats: dict[tuple[int, str], int] = {}
        self.huge_zero_pfn = NO_PAGE
        self.huge_zero_mms: set[int] = set()        # id(mm) with MMF_HUGE_ZERO_FOLIO
        self.committed_pages = 0                    # vm_committed_as
        self.khugepaged_pages_collapsed = 0
        self.khugepaged_full_scans = 0
        self.max_map_count = 65530
        self.task_size = (1 << (47 if levels == 4 else 56)) - 4096
        self.default_map_window = (1 << 47) - 4096
        self.asids: list[int | None] = [None] * tlb.TLB_NR_DYN_ASIDS  # id(mm) per ASID slot
        self.next_asid = 0
        self.mm_asid: dict[int, int] = {}
        self.mmu.cr4_pke = self.mmu.pku      # setup_pku(): CR4.PKE on a CPU with PKU
        self._boot()
        # The page cache of the start image's program file and of the vdso.
        self.program_file = shmem.PageCacheFile(exec_image.PROGRAM_PATH, kind="file",
                                                size=exec_image.PROGRAM_SIZE)
        self.vdso_file = shmem.PageCacheFile("[vdso]", kind="vdso")
        # The scenario's files (version 2): every one stays open (name -> inode); the
        # names still in a directory (unlink removes one).
        self.inodes: dict[str, shmem.PageCacheFile] = {}
        self.dentries: set[str] = set()
        self.next_ino = 2000000
        self.hugetlb = hugetlb.HugetlbState(self)
        # memory pressure (version 3): the swap file (system.swap) and the scenario's
        # memory cgroup (system.memory_limit); None: no swap, no limit
        self.swap: SwapSpace | None = None
        self.memcg: MemCgroup | None = None
        self.apply_knobs()

    # -- boot -----------------------------------------------------------------------------------
    def _boot(self) -> None:
        """Reserve firmware and kernel-image memory and mem_map, build swapper_pg_dir's kernel
        half (direct map with 1 GiB pages, kernel text with 2 MiB pages), free the rest."""
        nr = self.physmem.nr_frames
        reserved = np.zeros(nr, dtype=np.bool_)
        reserved[: 256] = True                                   # first 1 MiB (BIOS, trampoline)
        img_lo, img_hi = KERNEL_IMAGE_START >> 12, (KERNEL_IMAGE_START + KERNEL_IMAGE_SIZE) >> 12
        reserved[img_lo: img_hi] = True
        memmap_pages = (nr * 64 + 4095) // 4096                  # 64-byte struct page per frame
        reserved[nr - memmap_pages:] = True
        self.node_stat[NodeStat.NR_RESERVED] = int(reserved.sum())
        # Page frames inside the image: kernel page tables, then empty_zero_page (.bss).
        direct_pud, text_pud, text_pmd = img_hi - 4, img_hi - 3, img_hi - 2
        self.zero_pfn = img_hi - 1
        for index in range(min(512, (nr + (1 << 18) - 1) >> 18)):
            self.physmem.write_u64((direct_pud << 12) + index * 8,
                                   pt.mk_huge(index << 18, pt._KERNPG_TABLE | pt._PAGE_GLOBAL | pt._PAGE_NX))
        for index in range(KERNEL_IMAGE_SIZE >> 21):
            self.physmem.write_u64((text_pmd << 12) + index * 8,
                                   pt.mk_huge((KERNEL_IMAGE_START >> 12) + index * 512,
                                              pt._KERNPG_TABLE | pt._PAGE_GLOBAL))
        self.physmem.write_u64((text_pud << 12) + 510 * 8, pt.mk_table(text_pmd) & ~pt._PAGE_USER)
        direct_index = DIRECT_MAP_PGD_INDEX if self.levels == 4 else 0x1F1
        self.pgtables.kernel_pgd_entries = {
            direct_index: pt.mk_table(direct_pud) & ~pt._PAGE_USER,
            KERNEL_TEXT_PGD_INDEX: pt.mk_table(text_pud) & ~pt._PAGE_USER,
        }
        self.buddy.free_boot_memory(reserved)
        self.node_stat[NodeStat.NR_FREE_PAGES] = self.buddy.free_pages_total()
        self.memmap.refcount[self.zero_pfn] = 1
        for _ in range(BOOT_SLAB_PAGES >> 3):
            if self.buddy.alloc_pages(3) != NO_PAGE:
                self.node_stat[NodeStat.NR_SLAB_UNRECLAIMABLE] += 4
                self.node_stat[NodeStat.NR_SLAB_RECLAIMABLE] += 4
        self.vm_events[:] = 0  # boot allocations are not part of any run's events

    @property
    def totalram_pages(self) -> int:
        return int(self.buddy.managed_pages.sum())

    # -- knobs ----------------------------------------------------------------------------------
    def apply_knobs(self) -> None:
        """Bring kernel state in line with knob values (hugetlb pool sizes)."""
        self.hugetlb.sync_from_knobs()

    def set_knob(self, path: str, value: str) -> None:
        """Write a knob as root would (echo VALUE > PATH); the pool knobs resize the pools.
        A value the store handler refuses (a rule across knobs) is EINVAL, as write(2) says."""
        try:
            self.knobs.set(path, value)
        except ConfigError as err:
            raise SyscallError(Errno.EINVAL, f"{path}: {err.message.removeprefix('EINVAL: ')}") \
                from None
        self.hugetlb.knob_written(path)

    # -- tasks ----------------------------------------------------------------------------------
    def new_mm(self) -> MmStruct:
        pgd, order = self.pgtables.pgd_alloc()
        if pgd == NO_PAGE:
            raise SyscallError(Errno.ENOMEM, "no memory for a PGD")
        return MmStruct(pgd_pfn=pgd, pgd_order=order, mmap_base=exec_image.MMAP_BASE,
                        task_size=self.task_size)

    def alloc_kernel_stack(self) -> int:
        pfn = self.buddy.alloc_pages(KERNEL_STACK_ORDER)
        if pfn == NO_PAGE:
            raise SyscallError(Errno.ENOMEM, "no memory for a kernel stack")
        self.node_stat[NodeStat.NR_KERNEL_STACK_KB] += 4 << KERNEL_STACK_ORDER
        return pfn

    def spawn(self, name: str) -> Task:
        """fork() of init + execve() of the start image: a new process named ``name``."""
        mm = self.new_mm()
        task = Task(self.next_pid, name, mm, stack_pfn=self.alloc_kernel_stack())
        task.pkru = pkeys.exec_pkru(self)
        self.next_pid += 1
        self.tasks[name] = task
        self._exec_start_image(task)
        return task

    def _exec_start_image(self, task: Task) -> None:
        mm = task.mm
        program = self.program_file
        for spec in exec_image.START_IMAGE:
            file = program if spec.kind == "file" else (
                self.vdso_file if spec.kind == "vdso" else None)
            pgoff = spec.file_offset >> 12 if file else spec.start >> 12
            vma = Vma(spec.start, spec.end, spec.flags, pgoff, vm_get_page_prot(spec.flags),
                      file=file, name=spec.name, special=spec.kind in ("vvar", "vdso"))
            vma_insert(mm, vma)
            vm_stat_account(mm, spec.flags, vma.length >> 12)
            if spec.flags & VmFlags.ACCOUNT:
                vm_acct_memory(self, vma.length >> 12)
            addr = spec.start
            source = self.vdso_file if spec.kind == "vdso" else program
            for i in range(spec.file_pages):
                pfn = source.find_or_create_page(self, pgoff + i if spec.kind == "file" else i)
                shmem.map_file_page(self, mm, vma, addr, pfn, write=False)
                addr += 4096
            for _ in range(spec.anon_pages):
                rmap.anon_vma_prepare(vma)
                pmd_paddr, _ = self.pgtables.walk(mm, addr, 21, alloc=True)
                table = pte_alloc(self, mm, pmd_paddr)
                pfn = rmap.folio_alloc(self, 0)
                rmap.folio_add_new_anon_rmap(self, pfn, 1, pmd_mapped=False)
                entry = mk_anon_pte(vma, pfn) | pt._PAGE_DIRTY
                self.pgtables.set_entry(mm, (table << 12) + ((addr >> 12) & 511) * 8, entry)
                mm.stat[MmStat.MM_ANONPAGES] += 1
                addr += 4096
        mm.start_brk, mm.brk = exec_image.START_BRK, exec_image.BRK
        mm.start_code, mm.end_code = 0x401000, 0x47C000
        mm.update_hiwater_vm()
        mm.hiwater_rss = mm.get_rss()

    def free_task(self, task: Task) -> None:
        """do_exit() -> exit_mm() -> mmput() -> exit_mmap() + mm_free_pgd; free the stack."""
        if self.current is task:
            self.current = None
        exit_mmap(self, task.mm)
        mm_put_huge_zero_folio(self, task.mm)
        tlb.flush_tlb_mm(self, task.mm)
        self.pgtables.pgd_free(task.mm)
        tlb.destroy_context(self, task.mm)
        self.buddy.free_pages(task.stack_pfn, KERNEL_STACK_ORDER)
        self.node_stat[NodeStat.NR_KERNEL_STACK_KB] -= 4 << KERNEL_STACK_ORDER
        task.alive = False
        del self.tasks[task.comm]

    # -- task switch and kernel entry/exit (CR3: mm/tlb.py) --------------------------------------
    def switch_to(self, task: Task) -> None:
        """context_switch(): PKRU goes with the task (x86_pkru_load), then
        switch_mm_irqs_off() loads its CR3."""
        if self.current is task:
            return
        if self.current is not None:
            self.current.pkru = self.mmu.pkru
        self.mmu.pkru = task.pkru
        self.current = task
        self.mmu.counters = task.mmu_counters
        tlb.switch_mm_irqs_off(self, task.mm)

    def kernel_entry(self) -> None:
        """SWITCH_TO_KERNEL_CR3 on a syscall or exception entry (PTI only)."""
        if self.pti and self.current is not None:
            tlb.load_kernel_cr3(self, self.current.mm)

    def kernel_exit(self) -> None:
        """SWITCH_TO_USER_CR3 on the way back to user mode (PTI only)."""
        if self.pti and self.current is not None:
            mm = self.current.mm
            tlb.load_user_cr3(self, mm, self.mm_asid.get(id(mm), 0), False)

    # -- user accesses ------------------------------------------------------------------------------
    def user_access(self, task: Task, vaddr: int, access: int) -> int:
        """One user-mode access through the MMU; page faults go to do_user_addr_fault and the
        access is retried. Returns the physical address; raises SignalError."""
        self.switch_to(task)
        for _ in range(4):
            try:
                return self.mmu.translate(vaddr, access, user=True).paddr
            except GeneralProtection:
                raise SignalError(Signal.SIGSEGV, vaddr, "non-canonical address (#GP)") from None
            except PageFault as fault:
                self.kernel_entry()
                try:
                    self.do_user_addr_fault(task, vaddr, fault.code)
                finally:
                    self.kernel_exit()
        raise AssertionError(f"access at {vaddr:#x} kept faulting")

    def do_user_addr_fault(self, task: Task, vaddr: int, code: int) -> None:
        """do_user_addr_fault(): find the VMA, check access_error(), handle_mm_fault()."""
        mm = task.mm
        vma = find_vma(mm, vaddr)
        if vma is None or vma.start > vaddr:
            raise SignalError(Signal.SIGSEGV, vaddr, "no VMA (SEGV_MAPERR)")
        if pkeys.bad_area_access_from_pkeys(self, code, vma):  # access_error()'s first checks
            raise SignalError(Signal.SIGSEGV, vaddr, "protection key (SEGV_PKUERR)")
        if access_error(code, vma):
            raise SignalError(Signal.SIGSEGV, vaddr, "access not permitted (SEGV_ACCERR)")
        flags = FaultFlags.USER
        if code & pt.X86_PF_WRITE:
            flags |= FaultFlags.WRITE
        if code & pt.X86_PF_INSTR:
            flags |= FaultFlags.INSTRUCTION
        try:
            ret = memory.handle_mm_fault(self, task, vma, vaddr, flags)
        except OomKilled:
            raise SignalError(Signal.SIGKILL, vaddr, "killed by the memory cgroup OOM killer") \
                from None
        raise_fault_error(ret, vaddr)

    # -- physical memory contents ------------------------------------------------------------------
    def physmem_drop_range(self, pfn: int, nr_pages: int) -> None:
        """Forget the contents of ``nr_pages`` frames (they read as zeros again)."""
        self.physmem.drop_range(pfn, nr_pages)

    def physmem_drop_range_many(self, pfns: np.ndarray) -> None:
        """Forget the contents of the given frames."""
        self.physmem.touched[pfns] = 0
        stored = pfns[self.physmem.slot_of[pfns] >= 0]
        for pfn in stored.tolist():
            self.physmem.drop(pfn)


def access_error(code: int, vma: Vma) -> bool:
    """access_error() (arch/x86/mm/fault.c)."""
    if code & pt.X86_PF_WRITE:
        return not vma.flags & VmFlags.WRITE
    if code & pt.X86_PF_PROT:
        return True
    return not vma.flags & (VmFlags.READ | VmFlags.WRITE | VmFlags.EXEC)


def raise_fault_error(ret: VmFault, vaddr: int) -> None:
    """mm_fault_error(): SIGBUS, SIGSEGV or the OOM killer."""
    if ret & VmFault.SIGBUS:
        raise SignalError(Signal.SIGBUS, vaddr, "the kernel answered VM_FAULT_SIGBUS")
    if ret & VmFault.SIGSEGV:
        raise SignalError(Signal.SIGSEGV, vaddr)
    if ret & VmFault.OOM:
        raise SignalError(Signal.SIGBUS, vaddr, "out of memory: the OOM killer would run")


ACCESS_KINDS = {"read": 0, "write": ACCESS_WRITE, "exec": ACCESS_IFETCH}
