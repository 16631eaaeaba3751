"""Growing a hugetlb pool past what memory holds (mm/hugetlb.c set_max_huge_pages).

The kernel allocates pool pages one by one (alloc_pool_huge_folio) and stops at the
first failure, without an error: HugePages_Total reads what it got. A 2 MiB page comes
from the buddy allocator only while its zone keeps its min watermark and lowmem reserve
free (get_page_from_freelist, __zone_watermark_ok); a 1 GiB page from a free, aligned
1 GiB range (alloc_contig_range). The live kernel cannot replay a smaller RAM, so these
tests check the rule, not a measured figure."""

from __future__ import annotations

from pagewalk.kernel import syscalls
from pagewalk.kernel.kernel import Kernel
from pagewalk.machine import Machine, MachineConfig
from pagewalk.mm import page_alloc
from pagewalk.mm.vmstat import NodeStat
from pagewalk.scenario.runner import run_scenario
from pagewalk.scenario.schema import parse_scenario

MiB, GiB = 1 << 20, 1 << 30
POOL = "/proc/sys/vm/nr_hugepages"
GIGANTIC = "/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages"


def zone_free(k: Kernel, zone: int) -> int:
    return sum(int(k.buddy.nr_free[zone, o]) << o for o in range(page_alloc.NR_PAGE_ORDERS))


def assert_pool_stopped_at_the_watermarks(k: Kernel) -> None:
    """No zone could give one more 2 MiB block above its min watermark."""
    marks = page_alloc.zone_watermarks(k)
    for zone in k.buddy.populated_zones():
        assert not page_alloc.zone_watermark_ok(k, zone, 9, marks[zone].min), (
            f"zone {zone} could still give a 2 MiB page: {zone_free(k, zone)} pages free, "
            f"min {marks[zone].min}, reserve {page_alloc.lowmem_reserve(k, zone)}")


def test_a_pool_larger_than_ram_at_boot_takes_what_is_free() -> None:
    """nr_hugepages=1000 on 256 MiB: fewer pages, no error; the knob reads back the pool;
    every zone the pool took from keeps its min watermark and reserve; a process starts."""
    k = Machine(MachineConfig(ram=256 * MiB, sysfs={POOL: "1000"})).kernel
    h = k.hugetlb.default
    assert 0 < h.nr_huge_pages < 1000
    assert h.free_huge_pages == h.nr_huge_pages
    assert k.knobs.get(POOL) == str(h.nr_huge_pages)
    assert_pool_stopped_at_the_watermarks(k)
    marks = page_alloc.zone_watermarks(k)
    for zone in k.buddy.populated_zones():
        assert zone_free(k, zone) >= marks[zone].min + page_alloc.lowmem_reserve(k, zone)
    task = k.spawn("main")
    syscalls.sys_exit(k, task)


def test_the_pool_shrinks_to_a_lower_value_and_grows_back() -> None:
    """A later, lower nr_hugepages frees the extra pages to the buddy allocator; asking
    for 1000 again gets the same number as before."""
    k = Machine(MachineConfig(ram=256 * MiB)).kernel
    free_at_boot = int(k.node_stat[NodeStat.NR_FREE_PAGES])
    k.set_knob(POOL, "1000")
    got = k.hugetlb.default.nr_huge_pages
    assert 20 < got < 1000
    k.set_knob(POOL, "20")
    assert k.hugetlb.default.nr_huge_pages == 20
    assert int(k.node_stat[NodeStat.NR_FREE_PAGES]) == free_at_boot - 20 * 512
    k.set_knob(POOL, "1000")
    assert k.hugetlb.default.nr_huge_pages == got
    assert_pool_stopped_at_the_watermarks(k)


def test_a_scenario_asking_for_too_large_a_pool_runs() -> None:
    """The scenario's figures: HugePages_Total what the pool got, then the lower value."""
    text = """
name: big-pool
system:
  ram: 256MiB
  sysfs: {/proc/sys/vm/nr_hugepages: 1000}
steps:
  - mmap: {name: a, length: 1MiB}
  - touch: {region: a}
  - measure: boot
  - set: {/proc/sys/vm/nr_hugepages: 20}
  - measure: shrunk
  - set: {/proc/sys/vm/nr_hugepages: 1000000}
  - measure: regrown
"""
    report = run_scenario(parse_scenario(text, "big-pool.yaml")).to_json()
    totals = [m["system"]["HugePages_Total"] for m in report["measurements"]]
    assert 20 < totals[0] < 1000 and totals[1] == 20 and 20 < totals[2] < 1000


def test_a_gigantic_pool_takes_the_free_aligned_gigabytes() -> None:
    """1 GiB pages come from wholly free, 1 GiB-aligned ranges only: on 4 GiB the first
    holds the kernel image and the last mem_map, so 2 of 100 asked for."""
    k = Machine(MachineConfig(ram=4 * GiB, sysfs={GIGANTIC: "100"})).kernel
    assert k.hugetlb.hstates[GiB].nr_huge_pages == 2
    assert k.knobs.get(GIGANTIC) == "2"
    task = k.spawn("main")
    syscalls.sys_exit(k, task)
