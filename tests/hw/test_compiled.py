"""Compiled array code (hw/compiled.py) answers what its Python function answers, however
it runs (native machine code, Numba, plain Python), and the arguments it describes for
machine code stay valid for the whole call."""

from __future__ import annotations

import weakref

import numpy as np

from pagewalk.hw import compiled
from pagewalk.hw import pgtable_types as pt
from pagewalk.machine import Machine, MachineConfig
from pagewalk.mm.page_alloc import PageArrays, VmStatArrays, alloc_pages, free_pages
from pagewalk.mm.pgtable import anon_pte
from pagewalk.mm.vmstat import NodeStat


def test_an_entry_answers_what_its_python_function_answers() -> None:
    """anon_pte (an entry returning a uint64): the same 64-bit entry, NX bit included."""
    kernel = compiled._State.kernels["pagewalk.mm.pgtable.anon_pte"]
    prot = np.uint64(pt._PAGE_PRESENT | pt._PAGE_USER | pt._PAGE_NX)
    for pfn, writable in ((5, True), (0x12345, False), ((1 << 40) - 1, True)):
        assert int(anon_pte(pfn, prot, writable)) == int(kernel.py_func(pfn, prot, writable))
    assert compiled.mode() in ("native", "numba", "python")


def test_new_bundles_in_every_call_keep_the_figures_exact() -> None:
    """Each call passes two bundles never seen before, many times over: every allocation
    and free keeps NR_FREE_PAGES exact (a description freed while its call runs would
    read freed memory)."""
    k = Machine(MachineConfig(ram=64 << 20)).kernel
    pages, vmstat = k.buddy.arrays, k.buddy.vmstat
    free_before = int(k.node_stat[NodeStat.NR_FREE_PAGES])
    taken = []
    for _ in range(1500):
        pfn = alloc_pages(PageArrays(*pages), VmStatArrays(*vmstat), 0)
        assert 0 <= pfn < k.physmem.nr_frames
        taken.append(pfn)
    assert int(k.node_stat[NodeStat.NR_FREE_PAGES]) == free_before - len(taken)
    for pfn in taken:
        free_pages(PageArrays(*pages), VmStatArrays(*vmstat), pfn, 0)
    assert int(k.node_stat[NodeStat.NR_FREE_PAGES]) == free_before
    assert k.buddy.free_pages_total() == free_before


def test_a_description_lives_until_another_object_takes_its_position() -> None:
    """Per argument position, the last object's description is kept (so a call that passes
    the same arrays again describes nothing) and dropped when another object comes there:
    objects of finished simulations are not kept alive."""
    descriptors = compiled._Descriptors(2)
    first, second, third = (np.arange(3, dtype=np.int64) for _ in range(3))
    address = descriptors.address(0, first, "q1")
    held = weakref.ref(descriptors.slots[0][1])   # type: ignore[index]
    assert descriptors.address(0, first, "q1") == address
    descriptors.address(1, second, "q1")          # another position: the first one stays
    assert held() is not None
    descriptors.address(0, third, "q1")
    assert held() is None


def test_finished_machines_are_not_kept_alive_by_compiled_calls() -> None:
    """A machine that ran compiled code and is dropped is freed (its arrays are gone),
    apart from at most the last one that called each entry."""
    refs = []
    for _ in range(4):
        machine = Machine(MachineConfig(ram=64 << 20))
        k = machine.kernel
        pfn = alloc_pages(PageArrays(*k.buddy.arrays), VmStatArrays(*k.buddy.vmstat), 0)
        free_pages(PageArrays(*k.buddy.arrays), VmStatArrays(*k.buddy.vmstat), pfn, 0)
        refs.append(weakref.ref(k.memmap.flags))
        del machine, k
    import gc
    gc.collect()
    assert sum(ref() is not None for ref in refs) <= 1
