"""Memory protection keys as Linux uses them without pkey_alloc: execute-only memory
(arch/x86/mm/pkeys.c, arch/x86/include/asm/pkeys.h, arch/x86/include/asm/mmu_context.h).

On a CPU with PKU (X86_FEATURE_OSPKE once the kernel set CR4.PKE) a PROT_EXEC-only
mmap or mprotect puts the mm's execute-only key in the VMA's VM_PKEY_BIT* flags
(__execute_only_pkey: allocated on first use with mm_pkey_alloc, its access-disable
bit set in the task's PKRU), vm_get_page_prot copies the key into every leaf entry,
and the MMU refuses data accesses through it. A later mprotect to anything else goes
back to key 0 (__arch_override_mprotect_pkey). Without PKU every VMA keeps key 0 and
PROT_EXEC implies read, as x86 page tables cannot express execute-only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pagewalk.hw import pgtable_types as pt
from pagewalk.hw.pkru import (
    INIT_PKRU_VALUE,
    NR_PKEYS,
    pkru_allows_pkey,
    pkru_allows_read,
    set_pkey_rights,
)
from pagewalk.mm.types import (
    ARCH_VM_PKEY_FLAGS,
    VM_ACCESS_FLAGS,
    VM_PKEY_SHIFT,
    MmStruct,
    Vma,
    VmFlags,
)

if TYPE_CHECKING:
    from pagewalk.kernel.kernel import Kernel
    from pagewalk.kernel.task import Task

PROT_EXEC = 0x4                  # include/uapi/asm-generic/mman-common.h
ARCH_DEFAULT_PKEY = 0


def arch_pkeys_enabled(k: Kernel) -> bool:
    """cpu_feature_enabled(X86_FEATURE_OSPKE): the CPU has PKU and CR4.PKE is on."""
    return k.mmu.cr4_pke


def read_pkru(k: Kernel) -> int:
    """read_pkru(): the running task's PKRU (0 without OSPKE)."""
    return k.mmu.pkru if arch_pkeys_enabled(k) else 0


def write_pkru(k: Kernel, pkru: int) -> None:
    """write_pkru(): WRPKRU on this CPU, i.e. for the running task."""
    if arch_pkeys_enabled(k):
        k.mmu.pkru = pkru


def task_pkru(k: Kernel, task: Task) -> int:
    """The PKRU ``task`` runs with: the register while it is current, else its saved copy."""
    if not arch_pkeys_enabled(k):
        return 0
    return k.mmu.pkru if k.current is task else task.pkru


def exec_pkru(k: Kernel) -> int:
    """pkru_write_default() at execve(): init_pkru_value (every key but 0 access-disabled)."""
    return INIT_PKRU_VALUE if arch_pkeys_enabled(k) else 0


def vma_pkey(vma: Vma) -> int:
    """vma_pkey(): the key in the VMA's VM_PKEY_BIT0..3."""
    return (int(vma.flags) & int(ARCH_VM_PKEY_FLAGS)) >> VM_PKEY_SHIFT


def arch_calc_vm_prot_bits(pkey: int) -> VmFlags:
    """arch_calc_vm_prot_bits(prot, key): the VM_PKEY_BIT* flags of ``pkey``."""
    return VmFlags((pkey & (NR_PKEYS - 1)) << VM_PKEY_SHIFT)


def vm_pkey_pte_bits(flags: VmFlags) -> int:
    """vm_get_page_prot(): the VMA's VM_PKEY_BIT* flags as _PAGE_PKEY_BIT* leaf bits."""
    return pt.pkey_pte_bits((int(flags) & int(ARCH_VM_PKEY_FLAGS)) >> VM_PKEY_SHIFT)


def mm_pkey_alloc(k: Kernel, mm: MmStruct) -> int:
    """mm_pkey_alloc(): the lowest free key of the mm, or -1 (none left, or no PKU)."""
    if not arch_pkeys_enabled(k):
        return -1
    all_pkeys_mask = (1 << NR_PKEYS) - 1
    if mm.pkey_allocation_map == all_pkeys_mask:
        return -1
    pkey = next(i for i in range(NR_PKEYS) if not mm.pkey_allocation_map & (1 << i))  # ffz()
    mm.pkey_allocation_map |= 1 << pkey
    return pkey


def execute_only_pkey(k: Kernel, mm: MmStruct) -> int:
    """execute_only_pkey() -> __execute_only_pkey(): the mm's execute-only key, allocated on
    first use; the running task's PKRU gets its access-disable bit (unless it has it)."""
    if not arch_pkeys_enabled(k):
        return ARCH_DEFAULT_PKEY
    pkey = mm.execute_only_pkey
    need_to_set_mm_pkey = False
    if pkey == -1:
        pkey = mm_pkey_alloc(k, mm)
        if pkey < 0:
            return -1
        need_to_set_mm_pkey = True
    if not need_to_set_mm_pkey and not pkru_allows_read(read_pkru(k), pkey):
        return pkey
    # arch_set_user_pkey_access(current, pkey, PKEY_DISABLE_ACCESS)
    write_pkru(k, set_pkey_rights(read_pkru(k), pkey, disable_access=True, disable_write=False))
    if need_to_set_mm_pkey:
        mm.execute_only_pkey = pkey
    return pkey


def mmap_pkey_flags(k: Kernel, mm: MmStruct, prot: int) -> VmFlags:
    """do_mmap(): PROT_EXEC alone takes the execute-only key (0 if none could be had);
    the VM_PKEY_BIT* flags calc_vm_prot_bits(prot, pkey) adds."""
    pkey = 0
    if prot == PROT_EXEC:
        pkey = max(execute_only_pkey(k, mm), 0)
    return arch_calc_vm_prot_bits(pkey)


def vma_is_pkey_exec_only(mm: MmStruct, vma: Vma) -> bool:
    """vma_is_pkey_exec_only(): PROT_EXEC alone, with the mm's execute-only key."""
    return vma.flags & VM_ACCESS_FLAGS == VmFlags.EXEC and vma_pkey(vma) == mm.execute_only_pkey


def arch_override_mprotect_pkey(k: Kernel, mm: MmStruct, vma: Vma, prot: int,
                                pkey: int = -1) -> int:
    """arch_override_mprotect_pkey() -> __arch_override_mprotect_pkey() for a plain
    mprotect (pkey -1): PROT_EXEC alone takes the execute-only key; an execute-only VMA
    that gets anything else goes back to key 0; otherwise the VMA keeps its key."""
    if not arch_pkeys_enabled(k):
        return 0
    if pkey != -1:
        return pkey
    if prot == PROT_EXEC:
        pkey = execute_only_pkey(k, mm)
        if pkey > 0:
            return pkey
    elif vma_is_pkey_exec_only(mm, vma):
        return ARCH_DEFAULT_PKEY
    return vma_pkey(vma)


def mprotect_pkey_flags(k: Kernel, mm: MmStruct, vma: Vma, prot: int,
                        newflags: VmFlags) -> VmFlags:
    """do_mprotect_pkey(): ``newflags`` with the old key cleared (VM_FLAGS_CLEAR) and the
    key arch_override_mprotect_pkey() picks for this VMA set."""
    pkey = arch_override_mprotect_pkey(k, mm, vma, prot)
    return (newflags & ~ARCH_VM_PKEY_FLAGS) | arch_calc_vm_prot_bits(pkey)


def arch_vma_access_permitted(k: Kernel, vma: Vma, write: bool, execute: bool = False,
                              pkru: int | None = None) -> bool:
    """arch_vma_access_permitted() for a VMA of the running task's mm (never foreign):
    instruction fetches always pass; data accesses need PKRU (the running task's unless
    ``pkru`` is given) to allow the VMA's key."""
    if execute:
        return True
    return pkru_allows_pkey(read_pkru(k) if pkru is None else pkru, vma_pkey(vma), write)


def bad_area_access_from_pkeys(k: Kernel, code: int, vma: Vma, pkru: int | None = None) -> bool:
    """bad_area_access_from_pkeys() (arch/x86/mm/fault.c): access_error() refuses first
    on X86_PF_PK or on the VMA's key, and the signal is then SEGV_PKUERR."""
    if not arch_pkeys_enabled(k):
        return False
    if code & pt.X86_PF_PK:
        return True
    return not arch_vma_access_permitted(k, vma, bool(code & pt.X86_PF_WRITE),
                                         bool(code & pt.X86_PF_INSTR), pkru)


def arch_dup_pkeys(k: Kernel, oldmm: MmStruct, mm: MmStruct) -> None:
    """arch_dup_pkeys() (from arch_dup_mmap at fork): the child's mm has the same keys."""
    if not arch_pkeys_enabled(k):
        return
    mm.pkey_allocation_map = oldmm.pkey_allocation_map
    mm.execute_only_pkey = oldmm.execute_only_pkey
