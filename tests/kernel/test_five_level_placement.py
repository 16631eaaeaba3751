"""mmap placement with 5-level paging (linux-mm-notes 1.2; arch/x86/mm/mmap.c,
Documentation/arch/x86/x86_64/5level-paging.rst): TASK_SIZE is 2**56 - 4 KiB, but
mappings go above the 47-bit window only when the hint asks for it."""

from __future__ import annotations

import pytest

from pagewalk.errors import Errno, SyscallError
from pagewalk.kernel import syscalls
from pagewalk.machine import Machine, MachineConfig

ANON = frozenset({"private", "anonymous"})
FIXED = ANON | {"fixed"}
WINDOW = (1 << 47) - 4096


def machine(paging: int):  # type: ignore[no-untyped-def]
    k = Machine(MachineConfig(ram=256 << 20, paging=paging)).kernel
    return k, k.spawn("main")


def test_without_a_high_hint_mappings_stay_below_47_bits() -> None:
    k, task = machine(5)
    addr = syscalls.sys_mmap(k, task, 0, 64 << 20, 3, ANON)
    assert addr == 0x7FFFF3E00000          # as with 4 levels (the notes' first mapping)


def test_a_hint_above_the_window_is_taken_with_five_levels_only() -> None:
    k5, t5 = machine(5)
    assert syscalls.sys_mmap(k5, t5, 0x900000000000, 2 << 20, 3, ANON) == 0x900000000000
    k4, t4 = machine(4)
    assert syscalls.sys_mmap(k4, t4, 0x900000000000, 2 << 20, 3, ANON) < WINDOW


def test_map_fixed_up_to_task_size() -> None:
    k5, t5 = machine(5)
    top = (1 << 56) - 4096
    assert syscalls.sys_mmap(k5, t5, top - 4096, 4096, 3, FIXED) == top - 4096
    k5.user_access(t5, top - 4096, 1)
    with pytest.raises(SyscallError) as err:
        syscalls.sys_mmap(k5, t5, top, 4096, 3, FIXED)      # the guard page: beyond TASK_SIZE
    assert err.value.errno == Errno.ENOMEM
    k4, t4 = machine(4)
    with pytest.raises(SyscallError) as err:
        syscalls.sys_mmap(k4, t4, 0x800000000000, 4096, 3, FIXED)
    assert err.value.errno == Errno.ENOMEM
