"""`pagewalk inspect PID` on a child with known mappings: a THP-backed region, 4 KiB regions
and a hugetlb region. Per VMA it reports RSS, THP and hugetlb backing and the page-table
pages each level needs; the process's tables (with the PTE tables Linux deposits under
huge PMDs) add up to VmPTE; `--replay` turns the present pages into a page-size map.

The child's address space (hint-less mappings go down from below the vdso)::

    ... [hugetlb 4 MiB: 2 x 2 MiB] [thp 8 MiB: 4 THPs] [4k 4 MiB, NOHUGEPAGE] [small 1 MiB] ...
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from click.testing import CliRunner

from pagewalk.cli import main
from pagewalk.live.errors import LiveError
from pagewalk.live.inspect import (
    ProcessInspection,
    VmaInspection,
    inspect_process,
    load_page_size_map,
)
from pagewalk.live.knobs import KnobGuard
from pagewalk.live.pagemap import PagemapReader
from pagewalk.live.probe import Channel, build_probe, spawn, stop
from pagewalk.trace.replay import PageSizeMap
from pagewalk.units import MiB
from tests.live.live_support import needs_gcc, needs_root

pytestmark = [needs_gcc, needs_root]


@dataclass
class Child:
    pid: int
    regions: dict[str, tuple[int, int]]       # name -> (start, length)
    hugetlb: bool                             # the hugetlb region exists


def mmap(channel: Channel, length: int, flags: str = "-") -> int:
    reply = channel.ask(f"mmap {length} rw {flags} 0")
    assert reply.startswith("ok "), reply
    return int(reply.split()[1], 16)


def ask_ok(channel: Channel, command: str) -> None:
    reply = channel.ask(command)
    assert reply.startswith("ok"), (command, reply)


@pytest.fixture(scope="module")
def child() -> Iterator[Child]:
    """A probe with the regions of the module docstring, THP `madvise` and a pool of 2."""
    with KnobGuard(lambda _: None, write=True) as guard:
        guard.prepare({}, decoy=None)            # every knob at the simulator's boot value
        _pool_of_two(guard)
        popen, channel = spawn(build_probe(), "inspected")
        try:
            regions = {}
            for name, length, advice in (("small", 1 * MiB, "nohugepage"),
                                         ("4k", 4 * MiB, "nohugepage"),
                                         ("thp", 8 * MiB, "hugepage")):
                start = mmap(channel, length)
                ask_ok(channel, f"madvise {start:#x} {length} {advice}")
                ask_ok(channel, f"touch {start:#x} {length} 4096 w")
                regions[name] = (start, length)
            hugetlb = False
            reply = channel.ask(f"mmap {4 * MiB} rw hugetlb 0")
            if reply.startswith("ok "):
                regions["hugetlb"] = (int(reply.split()[1], 16), 4 * MiB)
                ask_ok(channel, f"touch {regions['hugetlb'][0]:#x} {4 * MiB} 4096 w")
                hugetlb = True
            yield Child(channel.pid, regions, hugetlb)
        finally:
            stop(popen)


def _pool_of_two(guard: KnobGuard) -> None:
    """Ask for two 2 MiB hugetlb pages; memory may be too fragmented to give them, and then
    the hugetlb mmap fails and its test is skipped."""
    try:
        guard.set("/proc/sys/vm/nr_hugepages", "2")
    except LiveError:
        pass


def vma_of(result: ProcessInspection, start: int) -> VmaInspection:
    (vma,) = [v for v in result.vmas if v.start == start]
    return vma


def test_thp_region_is_pmd_mapped_with_deposited_pte_tables(child: Child) -> None:
    start, length = child.regions["thp"]
    assert start % (2 * MiB) == 0
    doc = vma_of(inspect_process(child.pid), start).to_json()
    assert doc["thp_bytes"] == length and doc["rss_bytes"] == length
    assert doc["present_bytes"] == {"4KiB": 0, "2MiB": length, "1GiB": 0}
    assert doc["page_tables"]["pte"] == 0 and doc["page_tables"]["deposited_pte"] == 4
    assert doc["page_tables"]["pmd"] == 1 and doc["page_tables"]["pud"] == 1
    assert doc["pages"] == 4


def test_4k_region_needs_a_pte_table_per_2mib_and_would_need_none_with_2mib_pages(
        child: Child) -> None:
    start, length = child.regions["4k"]
    doc = vma_of(inspect_process(child.pid), start).to_json()
    assert doc["thp_bytes"] == 0 and doc["rss_bytes"] == length
    assert doc["present_bytes"]["4KiB"] == length and doc["pages"] == length // 4096
    blocks = len(range(start >> 21, ((start + length - 1) >> 21) + 1))
    assert doc["page_tables"]["pte"] == blocks
    whole = [b for b in range(start >> 21, (start + length) >> 21)
             if b << 21 >= start and (b + 1) << 21 <= start + length]
    est = doc["with_2mib_pages"]
    assert est["page_tables"]["pte"] == blocks - len(whole)
    assert est["page_tables"]["deposited_pte"] == len(whole)
    assert est["pages"] == len(whole) + (length - len(whole) * 2 * MiB) // 4096


def test_hugetlb_region_is_mapped_by_pmds_without_pte_tables(child: Child) -> None:
    if not child.hugetlb:
        pytest.skip("the kernel would not give a pool of two 2 MiB pages (fragmented memory)")
    start, length = child.regions["hugetlb"]
    doc = vma_of(inspect_process(child.pid), start).to_json()
    assert doc["hugetlb_bytes"] == length and doc["rss_bytes"] == 0
    assert doc["kernel_page_size"] == 2 * MiB
    assert doc["present_bytes"]["2MiB"] == length
    assert doc["page_tables"]["pte"] == 0 and doc["page_tables"]["deposited_pte"] == 0


def test_process_tables_counted_once_add_up_to_vmpte(child: Child) -> None:
    """Nothing was unmapped or zapped, so the kernel holds exactly the tables in use."""
    result = inspect_process(child.pid)
    total = result.to_json()["total"]
    assert total["page_tables"]["linux_bytes"] == result.vm_pte
    assert total["tables_beyond_need_bytes"] == 0
    # a VMA counts the tables its entries use, shared ones too; the process, each once
    assert sum(v.now.tables.count().pud for v in result.vmas) > total["page_tables"]["pud"]


def test_pagemap_read_fallback_sees_the_same_present_pages(child: Child) -> None:
    """Without PAGEMAP_SCAN, /proc/PID/pagemap itself gives the same present bytes (THPs
    counted as 4 KiB pages; hugetlb pages take the VMA's size)."""
    result = inspect_process(child.pid)
    with PagemapReader(child.pid) as reader:
        reader.has_scan = False
        for vma in result.vmas:
            runs = reader.runs(vma.start, vma.end, vma.huge_shift, vma.hugetlb)
            assert sum(r.size for r in runs if r.present) == \
                sum(r.size for r in vma.runs if r.present), vma.name


def test_replay_map_holds_the_page_sizes_and_feeds_trace_replay(child: Child) -> None:
    ranges = load_page_size_map(json.dumps(inspect_process(child.pid).page_size_map()))
    page_map = PageSizeMap.from_ranges(ranges)
    thp, _ = child.regions["thp"]
    small, _ = child.regions["small"]
    assert page_map.shift_at(thp) == 21 and page_map.shift_at(small) == 12
    if child.hugetlb:
        assert page_map.shift_at(child.regions["hugetlb"][0] + 4096) == 21
    assert all(start % (1 << shift) == 0 and end % (1 << shift) == 0
               for start, end, shift in ranges)
    assert ranges == sorted(ranges)


def test_inspect_cli_prints_tables_json_and_the_replay_map(child: Child) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["inspect", str(child.pid)])
    assert result.exit_code == 0
    assert "VmPTE" in result.stdout and "exactly that" in result.stdout
    doc = json.loads(runner.invoke(main, ["inspect", str(child.pid), "--json"]).stdout)
    assert doc["pid"] == child.pid and doc["page_sizes_known"] is True
    replay = json.loads(runner.invoke(main, ["inspect", str(child.pid), "--replay"]).stdout)
    assert {"start", "end", "page_shift"} == set(replay[0])


def test_inspect_refuses_a_kernel_thread_and_a_missing_pid_in_one_line() -> None:
    runner = CliRunner()
    for pid, words in ((2, "no user address space"), (1 << 22, "no such file")):
        result = runner.invoke(main, ["inspect", str(pid)])
        assert result.exit_code == 3 and words in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_page_size_map_loader_names_the_bad_entry() -> None:
    assert load_page_size_map('[{"start": 4096, "end": "0x2000", "page_shift": 12}]') == \
        [(4096, 8192, 12)]
    for text, words in (('{"start": 1}', "JSON list"),
                        ('[{"start": "0x0", "end": "0x1000"}]', "entry 0"),
                        ('[{"start": "0x0", "end": "0x1000", "page_shift": 13}]', "12, 21 or 30")):
        with pytest.raises(ValueError, match=words):
            load_page_size_map(text)
