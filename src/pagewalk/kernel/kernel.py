"""The simulated kernel: boot, tasks, the user-fault entry, TLB flushing, knobs.

Follows arch/x86/mm/fault.c (do_user_addr_fault, access_error), arch/x86/mm/tlb.c
(switch_mm_irqs_off, choose_new_asid, flush_tlb_mm_range and its 33-page ceiling),
kernel/fork.c and kernel/exit.c for task lifetime, mm/util.c for overcommit.
All state hangs off one Kernel object (STYLE rule 6).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from pagewalk.errors import Errno, Signal, SignalError, SyscallError
from pagewalk.hw import pgtable_types as pt
from pagewalk.hw.mmu import GeneralProtection, Mmu, PageFault
from pagewalk.hw.walker import ACCESS_IFETCH, ACCESS_WRITE
from pagewalk.kernel import exec_image
from pagewalk.kernel.knobs import KnobValues
from pagewalk.kernel.task import Task
from pagewalk.mm import memory, pkeys, rmap
from pagewalk.mm.memory import FaultFlags, VmFault
from pagewalk.mm.page_alloc import NO_PAGE, BuddyAllocator, MemMap, PageFlag
from pagewalk.mm.pgtable import PageTables
from pagewalk.mm.types import MmStat, MmStruct, Vma, VmFlags
from pagewalk.mm.vma import find_vma, vm_stat_account, vma_insert
from pagewalk.mm.vmstat import NodeStat, VmEvent, new_node_stats, new_vm_events

if TYPE_CHECKING:
    from pagewalk.hw.physmem import PhysicalMemory

TLB_SINGLE_PAGE_FLUSH_CEILING = 33   # tlb_single_page_flush_ceiling (arch/x86/mm/tlb.c)
TLB_NR_DYN_ASIDS = 6
X86_CR3_PTI_PCID_USER_BIT = 11
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
        self.mthp_stats: dict[tuple[int, str], int] = {}
        self.huge_zero_pfn = NO_PAGE
        self.huge_zero_mms: set[int] = set()        # id(mm) with MMF_HUGE_ZERO_FOLIO
        self.committed_pages = 0                    # vm_committed_as
        self.khugepaged_pages_collapsed = 0
        self.khugepaged_full_scans = 0
        self.max_map_count = 65530
        self.task_size = (1 << (47 if levels == 4 else 56)) - 4096
        self.default_map_window = (1 << 47) - 4096
        self.asids: list[int | None] = [None] * TLB_NR_DYN_ASIDS  # id(mm) per ASID slot
        self.next_asid = 0
        self.mm_asid: dict[int, int] = {}
        self.mmu.cr4_pke = self.mmu.pku      # setup_pku(): CR4.PKE on a CPU with PKU
        self._boot()
        from pagewalk.mm import hugetlb
        self.hugetlb = hugetlb.HugetlbState(self)
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
        """Write a knob as root would (echo VALUE > PATH); the pool knobs resize the pools."""
        self.knobs.set(path, value)
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
        from pagewalk.mm import shmem
        from pagewalk.mm.mmap import vm_get_page_prot
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
                self.vm_acct_memory(vma.length >> 12)
            addr = spec.start
            source = self.vdso_file if spec.kind == "vdso" else program
            for i in range(spec.file_pages):
                pfn = source.find_or_create_page(self, pgoff + i if spec.kind == "file" else i)
                shmem.map_file_page(self, mm, vma, addr, pfn, write=False)
                addr += 4096
            for _ in range(spec.anon_pages):
                memory.anon_vma_prepare(vma)
                pmd_paddr, _ = self.pgtables.walk(mm, addr, 21, alloc=True)
                table = memory.pte_alloc(self, mm, pmd_paddr)
                pfn = rmap.folio_alloc(self, 0)
                rmap.folio_add_new_anon_rmap(self, pfn, 1, pmd_mapped=False)
                entry = memory.mk_anon_pte(vma, pfn) | pt._PAGE_DIRTY
                self.pgtables.set_entry(mm, (table << 12) + ((addr >> 12) & 511) * 8, entry)
                mm.stat[MmStat.MM_ANONPAGES] += 1
                addr += 4096
        mm.start_brk, mm.brk = exec_image.START_BRK, exec_image.BRK
        mm.start_code, mm.end_code = 0x401000, 0x47C000
        mm.update_hiwater_vm()
        mm.hiwater_rss = mm.get_rss()

    @property
    def program_file(self):  # type: ignore[no-untyped-def]
        from pagewalk.mm import shmem
        if not hasattr(self, "_program_file"):
            self._program_file = shmem.PageCacheFile(exec_image.PROGRAM_PATH, kind="file")
            self._vdso_file = shmem.PageCacheFile("[vdso]", kind="vdso")
        return self._program_file

    @property
    def vdso_file(self):  # type: ignore[no-untyped-def]
        _ = self.program_file
        return self._vdso_file

    def free_task(self, task: Task) -> None:
        """do_exit() -> exit_mm() -> mmput() -> exit_mmap() + mm_free_pgd; free the stack."""
        from pagewalk.mm.mmap import exit_mmap
        if self.current is task:
            self.current = None
        exit_mmap(self, task.mm)
        self.put_huge_zero_folio(task.mm)
        self.flush_tlb_mm(task.mm)
        self.pgtables.pgd_free(task.mm)
        self._release_asid(task.mm)
        self.buddy.free_pages(task.stack_pfn, KERNEL_STACK_ORDER)
        self.node_stat[NodeStat.NR_KERNEL_STACK_KB] -= 4 << KERNEL_STACK_ORDER
        task.alive = False
        del self.tasks[task.comm]

    # -- CR3, ASIDs and TLB flushing --------------------------------------------------------------
    def _release_asid(self, mm: MmStruct) -> None:
        asid = self.mm_asid.pop(id(mm), None)
        if asid is not None:
            self.asids[asid] = None

    def pcids_of(self, mm: MmStruct) -> list[int]:
        """The PCIDs whose TLB entries may belong to ``mm`` (kernel and, with PTI, user)."""
        asid = self.mm_asid.get(id(mm))
        if asid is None or not self.mmu.pcid_enabled:
            return [0] if self.current is not None and self.current.mm is mm else []
        kpcid = asid + 1
        return [kpcid, kpcid | (1 << X86_CR3_PTI_PCID_USER_BIT)] if self.pti else [kpcid]

    def switch_to(self, task: Task) -> None:
        """switch_mm_irqs_off(): load the task's CR3 (choose_new_asid with 6 dynamic ASIDs)."""
        if self.current is task:
            return
        if self.current is not None:      # x86_pkru_load(): PKRU goes with the task
            self.current.pkru = self.mmu.pkru
        self.mmu.pkru = task.pkru
        self.current = task
        self.mmu.counters = task.mmu_counters
        mm = task.mm
        flush = False
        asid = self.mm_asid.get(id(mm))
        if asid is None:
            asid = self.next_asid
            self.next_asid = (self.next_asid + 1) % TLB_NR_DYN_ASIDS
            old = self.asids[asid]
            if old is not None:
                self.mm_asid = {k: v for k, v in self.mm_asid.items() if v != asid}
            self.asids[asid] = id(mm)
            self.mm_asid[id(mm)] = asid
            flush = True
        if self.pti:  # switch_mm() runs in the kernel: its CR3 first, the user CR3 at exit
            from pagewalk.hw.mmu import X86_CR3_PCID_NOFLUSH
            kpcid = asid + 1 if self.mmu.pcid_enabled else 0
            keep = X86_CR3_PCID_NOFLUSH if self.mmu.pcid_enabled and not flush else 0
            self.mmu.load_cr3((mm.pgd_pfn << 12) | kpcid | keep)
        self._load_user_cr3(mm, asid, flush)

    def _load_user_cr3(self, mm: MmStruct, asid: int, flush: bool) -> None:
        from pagewalk.hw.mmu import X86_CR3_PCID_NOFLUSH
        pgd_pa = mm.pgd_pfn << 12
        if self.mmu.pcid_enabled:
            pcid = asid + 1
            if self.pti:
                pcid |= 1 << X86_CR3_PTI_PCID_USER_BIT
                pgd_pa |= 1 << 12
            self.mmu.load_cr3(pgd_pa | pcid | (0 if flush else X86_CR3_PCID_NOFLUSH))
        else:
            self.mmu.load_cr3(pgd_pa | (1 << 12 if self.pti else 0))

    def kernel_entry(self) -> None:
        """SWITCH_TO_KERNEL_CR3 on a syscall or exception entry (PTI only)."""
        if self.pti and self.current is not None:
            from pagewalk.hw.mmu import X86_CR3_PCID_NOFLUSH
            mm = self.current.mm
            if self.mmu.pcid_enabled:
                kpcid = self.mm_asid[id(mm)] + 1
                self.mmu.load_cr3((mm.pgd_pfn << 12) | kpcid | X86_CR3_PCID_NOFLUSH)
            else:
                self.mmu.load_cr3(mm.pgd_pfn << 12)

    def kernel_exit(self) -> None:
        """SWITCH_TO_USER_CR3 on the way back to user mode (PTI only)."""
        if self.pti and self.current is not None:
            self._load_user_cr3(self.current.mm, self.mm_asid.get(id(self.current.mm), 0), False)

    def flush_tlb_mm(self, mm: MmStruct) -> None:
        for pcid in self.pcids_of(mm):
            self.mmu.flush_pcid(pcid)
        self.vm_events[VmEvent.TLB_FLUSH_ALL] += 1

    def flush_tlb_page(self, mm: MmStruct, vaddr: int) -> None:
        for pcid in self.pcids_of(mm):
            self.mmu.invlpg(vaddr, pcid)
        self.vm_events[VmEvent.TLB_FLUSH_ONE] += 1

    def flush_tlb_range(self, mm: MmStruct, start: int, end: int) -> None:
        """flush_tlb_mm_range(): INVLPG per page up to the ceiling, else a full flush."""
        nr_pages = (end - start) >> 12
        if nr_pages > TLB_SINGLE_PAGE_FLUSH_CEILING:
            self.flush_tlb_mm(mm)
            return
        for va in range(start, end, 4096):
            self.flush_tlb_page(mm, va)

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
        ret = memory.handle_mm_fault(self, task, vma, vaddr, flags)
        raise_fault_error(ret, vaddr)

    # -- huge zero folio, deferred split -------------------------------------------------------------
    def get_huge_zero_folio(self, mm: MmStruct) -> int:
        """mm_get_huge_zero_folio(): allocated once (thp_zero_page_alloc), then kept
        (pagewalk keeps it for the kernel's lifetime: no shrinker runs)."""
        if self.huge_zero_pfn == NO_PAGE:
            pfn = self.buddy.alloc_pages(9)
            if pfn == NO_PAGE:
                self.vm_events[VmEvent.THP_ZERO_PAGE_ALLOC_FAILED] += 1
                return NO_PAGE
            self.memmap.flags[pfn] |= PageFlag.HEAD
            self.memmap.order[pfn] = 9
            self.huge_zero_pfn = pfn
            self.vm_events[VmEvent.THP_ZERO_PAGE_ALLOC] += 1
        self.huge_zero_mms.add(id(mm))
        return self.huge_zero_pfn

    def put_huge_zero_folio(self, mm: MmStruct) -> None:
        self.huge_zero_mms.discard(id(mm))

    def queue_deferred_split(self, head: int) -> None:
        """deferred_split_folio(folio, partially_mapped=true): thp_deferred_split_page the
        first time a folio is marked partially mapped."""
        flags = self.memmap.flags
        if flags[head] & PageFlag.PARTIALLY_MAPPED:
            return
        flags[head] |= PageFlag.PARTIALLY_MAPPED
        self.deferred_split.add(head)
        self.vm_events[VmEvent.THP_DEFERRED_SPLIT_PAGE] += 1
        from pagewalk.mm.huge_memory import HPAGE_PMD_ORDER, count_mthp_stat
        count_mthp_stat(self, int(self.memmap.order[head]) or HPAGE_PMD_ORDER, "split_deferred")

    def physmem_drop_range(self, pfn: int, nr_pages: int) -> None:
        """Forget the contents of ``nr_pages`` frames (they read as zeros again)."""
        self.physmem.drop_range(pfn, nr_pages)

    def physmem_drop_range_many(self, pfns: "np.ndarray") -> None:
        """Forget the contents of the given frames."""
        self.physmem.touched[pfns] = 0
        stored = pfns[self.physmem.slot_of[pfns] >= 0]
        for pfn in stored.tolist():
            self.physmem.drop(pfn)

    # -- overcommit (mm/util.c) ------------------------------------------------------------------
    def vm_commit_limit(self) -> int:
        """vm_commit_limit(): (totalram - hugetlb) * overcommit_ratio / 100 + swap, in pages."""
        ratio = int(self.knobs.get("/proc/sys/vm/overcommit_ratio"))
        return (self.totalram_pages - self.hugetlb.total_pages()) * ratio // 100

    def vm_enough_memory(self, mm: MmStruct, pages: int) -> None:
        """__vm_enough_memory(): raise ENOMEM when the overcommit policy refuses ``pages``."""
        mode = self.knobs.get("/proc/sys/vm/overcommit_memory")
        if mode == "1":
            return
        if mode == "0":
            if pages > self.totalram_pages:
                raise SyscallError(Errno.ENOMEM, "request exceeds total RAM (overcommit heuristic)")
            return
        allowed = self.vm_commit_limit()
        # Root (CAP_SYS_ADMIN) keeps no admin reserve; user_reserve_kbytes defaults to
        # min(3% of free memory, 128 MiB) (init_user_reserve), at most total_vm / 32 of it.
        user_reserve = min(self.totalram_pages // 32, (128 << 20) >> 12)
        allowed -= min(mm.total_vm // 32, user_reserve)
        if self.committed_pages + pages > allowed:
            raise SyscallError(Errno.ENOMEM, "over the commit limit (overcommit_memory=2)")

    def vm_acct_memory(self, pages: int) -> None:
        self.committed_pages += pages

    def vm_unacct_memory(self, pages: int) -> None:
        self.committed_pages -= pages


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
