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


def test_bundles_described_early_in_a_call_stay_valid_when_the_cache_turns_over() -> None:
    """Each call passes two bundles never seen before; across many more calls than the
    descriptor cache holds, every allocation and free keeps NR_FREE_PAGES exact (a bundle
    freed while its call runs would read freed memory)."""
    k = Machine(MachineConfig(ram=64 << 20)).kernel
    pages, vmstat = k.buddy.arrays, k.buddy.vmstat
    free_before = int(k.node_stat[NodeStat.NR_FREE_PAGES])
    taken = []
    for _ in range(3 * compiled._Descriptors.LIMIT):
        pfn = alloc_pages(PageArrays(*pages), VmStatArrays(*vmstat), 0)
        assert 0 <= pfn < k.physmem.nr_frames
        taken.append(pfn)
    assert int(k.node_stat[NodeStat.NR_FREE_PAGES]) == free_before - len(taken)
    for pfn in taken:
        free_pages(PageArrays(*pages), VmStatArrays(*vmstat), pfn, 0)
    assert int(k.node_stat[NodeStat.NR_FREE_PAGES]) == free_before
    assert k.buddy.free_pages_total() == free_before


def test_a_description_lives_until_a_whole_cache_of_others_came_after_it() -> None:
    """The descriptor of an argument stays allocated while fewer than LIMIT other
    arguments were described after it: a call's first arguments survive the cache turning
    over while its last ones are described."""
    descriptors = compiled._Descriptors()
    arrays = [np.arange(3, dtype=np.int64) for _ in range(2 * compiled._Descriptors.LIMIT + 1)]
    first = arrays[0]
    descriptors.address(first, "q1")
    held = weakref.ref(descriptors.cache[id(first)][1])
    for other in arrays[1: compiled._Descriptors.LIMIT + 1]:
        descriptors.address(other, "q1")          # the cache turns over on the last one
    assert id(first) in descriptors.retired
    assert held() is not None
    for other in arrays[compiled._Descriptors.LIMIT + 1:]:
        descriptors.address(other, "q1")
    assert held() is None                         # freed once a whole cache came after it
