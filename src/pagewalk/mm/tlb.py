"""ASIDs, CR3 loads and TLB flushing (arch/x86/mm/tlb.c).

switch_mm_irqs_off() gives an mm one of TLB_NR_DYN_ASIDS dynamic ASIDs (choose_new_asid,
round robin) and loads its CR3 with the PCID of that ASID (kern_pcid: ASID + 1; with PTI
the user half also has user_pcid: bit 11 set) and NOFLUSH unless the ASID was just taken
over. flush_tlb_mm_range() invalidates page by page (INVLPG) up to
tlb_single_page_flush_ceiling pages, else the mm's whole PCIDs. The state (the ASID
slots, the mm -> ASID map) lives on the Kernel.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pagewalk.hw.mmu import X86_CR3_PCID_NOFLUSH
from pagewalk.mm.vmstat import VmEvent

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel
    from pagewalk.mm.types import MmStruct

TLB_SINGLE_PAGE_FLUSH_CEILING = 33   # tlb_single_page_flush_ceiling
TLB_NR_DYN_ASIDS = 6
X86_CR3_PTI_PCID_USER_BIT = 11       # arch/x86/include/asm/processor-flags.h


def kern_pcid(asid: int) -> int:
    """kern_pcid(): PCID 0 is left to the kernel's own (non-mm) use."""
    return asid + 1


def user_pcid(asid: int) -> int:
    """user_pcid(): the PTI user half of the ASID."""
    return kern_pcid(asid) | (1 << X86_CR3_PTI_PCID_USER_BIT)


def pcids_of(k: Kernel, mm: MmStruct) -> list[int]:
    """The PCIDs whose TLB entries may belong to ``mm`` (kernel and, with PTI, user)."""
    asid = k.mm_asid.get(id(mm))
    if asid is None or not k.mmu.pcid_enabled:
        return [0] if k.current is not None and k.current.mm is mm else []
    return [kern_pcid(asid), user_pcid(asid)] if k.pti else [kern_pcid(asid)]


def choose_new_asid(k: Kernel, mm: MmStruct) -> tuple[int, bool]:
    """choose_new_asid(): the mm's ASID if it still has one (no flush needed), else the
    next slot round robin, whose previous owner loses it (a flush is needed)."""
    asid = k.mm_asid.get(id(mm))
    if asid is not None:
        return asid, False
    asid = k.next_asid
    k.next_asid = (k.next_asid + 1) % TLB_NR_DYN_ASIDS
    if k.asids[asid] is not None:
        k.mm_asid = {key: slot for key, slot in k.mm_asid.items() if slot != asid}
    k.asids[asid] = id(mm)
    k.mm_asid[id(mm)] = asid
    return asid, True


def switch_mm_irqs_off(k: Kernel, mm: MmStruct) -> None:
    """switch_mm_irqs_off(): load ``mm``'s CR3 with its ASID (with PTI switch_mm() runs in
    the kernel: the kernel CR3 first, the user CR3 on the way out)."""
    asid, flush = choose_new_asid(k, mm)
    if k.pti:
        pcid = kern_pcid(asid) if k.mmu.pcid_enabled else 0
        keep = X86_CR3_PCID_NOFLUSH if k.mmu.pcid_enabled and not flush else 0
        k.mmu.load_cr3((mm.pgd_pfn << 12) | pcid | keep)
    load_user_cr3(k, mm, asid, flush)


def load_user_cr3(k: Kernel, mm: MmStruct, asid: int, flush: bool) -> None:
    """SWITCH_TO_USER_CR3: the user PGD (with PTI the upper half of the order-1 PGD)."""
    pgd_pa = mm.pgd_pfn << 12
    if k.mmu.pcid_enabled:
        pcid = kern_pcid(asid)
        if k.pti:
            pcid = user_pcid(asid)
            pgd_pa |= 1 << 12
        k.mmu.load_cr3(pgd_pa | pcid | (0 if flush else X86_CR3_PCID_NOFLUSH))
    else:
        k.mmu.load_cr3(pgd_pa | (1 << 12 if k.pti else 0))


def load_kernel_cr3(k: Kernel, mm: MmStruct) -> None:
    """SWITCH_TO_KERNEL_CR3: the kernel PGD of the running mm, its TLB entries kept."""
    if k.mmu.pcid_enabled:
        k.mmu.load_cr3((mm.pgd_pfn << 12) | kern_pcid(k.mm_asid[id(mm)]) | X86_CR3_PCID_NOFLUSH)
    else:
        k.mmu.load_cr3(mm.pgd_pfn << 12)


def destroy_context(k: Kernel, mm: MmStruct) -> None:
    """The mm is gone: its ASID slot is free (no CPU can still switch to it)."""
    asid = k.mm_asid.pop(id(mm), None)
    if asid is not None:
        k.asids[asid] = None


def flush_tlb_mm(k: Kernel, mm: MmStruct) -> None:
    """flush_tlb_mm() -> flush_tlb_mm_range(mm, 0, TLB_FLUSH_ALL): every PCID of the mm."""
    for pcid in pcids_of(k, mm):
        k.mmu.flush_pcid(pcid)
    k.vm_events[VmEvent.TLB_FLUSH_ALL] += 1


def flush_tlb_page(k: Kernel, mm: MmStruct, vaddr: int) -> None:
    """flush_tlb_page(): INVLPG of one page in every PCID of the mm."""
    for pcid in pcids_of(k, mm):
        k.mmu.invlpg(vaddr, pcid)
    k.vm_events[VmEvent.TLB_FLUSH_ONE] += 1


def flush_tlb_mm_range(k: Kernel, mm: MmStruct, start: int, end: int) -> None:
    """flush_tlb_mm_range() (flush_tlb_range): INVLPG per page up to the ceiling, else a
    full flush of the mm."""
    if (end - start) >> 12 > TLB_SINGLE_PAGE_FLUSH_CEILING:
        flush_tlb_mm(k, mm)
        return
    for va in range(start, end, 4096):
        flush_tlb_page(k, mm, va)
