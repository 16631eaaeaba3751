"""`pagewalk translate`: the walk the MMU does for one address, with the SDM's figures.

A walk from CR3 reads one entry per level down to the leaf (Intel SDM vol. 3A §4.5):
4 entries for a 4 KiB page, 3 for a 2 MiB page (PS in the PDE), 2 for a 1 GiB page (PS
in the PDPTE), 5 for a 4 KiB page with 5-level paging. A fault carries the error code
of §4.7 (P, W/R, U/S, I/D). Explaining must not change the machine: no A/D bit, no
TLB or page-walk-cache entry, no LRU stamp.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pagewalk.cli import main
from pagewalk.explain.state import fresh_run, run_to_label
from pagewalk.explain.translate import explain_translation, tlb_entry_allows
from pagewalk.hw import pgtable_types as pt
from pagewalk.hw.mmu import Mmu, MmuStat, PageFault
from pagewalk.hw.walker import ACCESS_IFETCH, ACCESS_READ, ACCESS_WRITE
from pagewalk.scenario.schema import load_scenario

DATA = Path(__file__).resolve().parents[1] / "data"
HEAP = 0x4D9000                    # [heap] of the start image: present, rw-p, NX
TEXT = 0x401000                    # program text: present, r-xp
DIRECT_MAP = 0xFFFF888000001000    # the kernel's direct map: a 1 GiB supervisor page

WRITTEN = """name: written
system:
  sysfs:
    /sys/kernel/mm/transparent_hugepage/enabled: never
steps:
  - mmap: {name: a, length: 4MiB}
  - write: {region: a, offset: 0x1000, data: "hello"}
  - read: {region: a, offset: 0x3000, length: 1}
  - measure: written
  - fork: {name: child}
  - measure: forked
"""


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def scenario_file(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def snapshot(k) -> tuple:  # type: ignore[no-untyped-def]
    """Everything a translation could touch: physmem, TLB and PWC arrays, counters."""
    mmu = k.mmu
    return (k.physmem.pool.copy(), k.physmem.slot_of.copy(),
            mmu.tlb.storage.tags.copy(), mmu.tlb.storage.stamps.copy(),
            mmu.tlb.storage.clock.copy(), mmu.tlb.stats.copy(),
            mmu.pwc.storage.tags.copy(), mmu.pwc.storage.stamps.copy(), mmu.pwc.stats.copy(),
            mmu.counters.copy(), mmu.cr3)


def same(a: tuple, b: tuple) -> bool:  # type: ignore[type-arg]
    return all(np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y
               for x, y in zip(a, b))


# -- the walk from CR3 ----------------------------------------------------------------------

def test_4k_page_takes_four_references_one_index_per_level() -> None:
    """PML4 [47:39], PDPT [38:30], PD [29:21], PT [20:12]: four entries, a 4 KiB leaf."""
    run = fresh_run()
    k, task = run.kernel, run.kernel.tasks["main"]
    vaddr = HEAP + 0x123
    e = explain_translation(k, task, vaddr, "read")
    assert e.outcome == "translation" and e.refs == 4
    assert [r.name for r in e.reads] == ["PML4", "PDPT", "PD", "PT"]
    assert [r.index for r in e.reads] == [(vaddr >> s) & 511 for s in (39, 30, 21, 12)]
    assert e.reads[0].table_paddr == task.mm.pgd_pfn << 12        # CR3 points at the PGD
    for upper, lower in zip(e.reads, e.reads[1:]):
        assert upper.role == "table" and lower.table_paddr == upper.target_paddr
        assert lower.entry_paddr == lower.table_paddr + lower.index * 8
    leaf = e.reads[-1]
    assert leaf.role == "leaf" and "PS" not in leaf.flags
    assert e.page_shift == 12 and e.paddr == leaf.target_paddr + 0x123
    assert e.paddr == k.pgtables.lookup(task.mm, vaddr)[1] & pt.PTE_PFN_MASK | 0x123


def test_2m_thp_takes_three_references_leaf_in_the_pd() -> None:
    scen = load_scenario(DATA / "scenarios" / "thp-madvise-64m.yaml")
    run = run_to_label(scen, None)
    heap, _ = run.maps["main"]["heap"]
    e = explain_translation(run.kernel, run.kernel.tasks["main"], heap + 0x201234, "write")
    assert e.outcome == "translation" and e.refs == 3
    assert [r.name for r in e.reads] == ["PML4", "PDPT", "PD"]
    assert "PS" in e.reads[-1].flags and e.page_shift == 21
    assert e.paddr == e.reads[-1].target_paddr + 0x1234          # offset: VA[20:0]


def test_1g_hugetlb_page_takes_two_references_leaf_in_the_pdpt() -> None:
    scen = load_scenario(DATA / "measured" / "hugetlb-1g.yaml")
    run = run_to_label(scen, "touched")
    start, _ = run.maps["main"]["g"]
    e = explain_translation(run.kernel, run.kernel.tasks["main"], start + 0x12345678, "read")
    assert e.outcome == "translation" and e.refs == 2
    assert [r.name for r in e.reads] == ["PML4", "PDPT"] and "PS" in e.reads[-1].flags
    assert e.page_shift == 30 and e.paddr & ((1 << 30) - 1) == 0x12345678


def test_5_level_paging_takes_five_references_and_pti_walks_the_user_pgd(tmp_path: Path) -> None:
    path = scenario_file(tmp_path, WRITTEN.replace("steps:", "  paging: 5\n  pti: true\nsteps:")
                         .replace("system:\n  sysfs:", "system:\n  sysfs:"))
    run = run_to_label(load_scenario(path), "written")
    task = run.kernel.tasks["main"]
    e = explain_translation(run.kernel, task, run.maps["main"]["a"][0] + 0x1000, "read")
    assert [r.name for r in e.reads] == ["PML5", "PML4", "PDPT", "PD", "PT"]
    assert e.reads[0].table_paddr == (task.mm.pgd_pfn + 1) << 12   # PTI: the user PGD
    assert e.pcid & (1 << 11)                                       # PTI's user PCID bit


# -- faults ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("vaddr", "access", "code", "refs"), [
    (0x10000000, "read", pt.X86_PF_USER, 3),                                   # 0x4: no PD entry
    (0x10000000, "write", pt.X86_PF_USER | pt.X86_PF_WRITE, 3),                # 0x6
    (TEXT, "write", pt.X86_PF_USER | pt.X86_PF_WRITE | pt.X86_PF_PROT, 4),     # 0x7: read-only
    (HEAP, "exec", pt.X86_PF_USER | pt.X86_PF_INSTR | pt.X86_PF_PROT, 4),      # 0x15: NX
    (DIRECT_MAP, "read", pt.X86_PF_USER | pt.X86_PF_PROT, 2),                  # 0x5: supervisor
])
def test_fault_error_codes_follow_the_sdm(vaddr: int, access: str, code: int, refs: int) -> None:
    run = fresh_run()
    e = explain_translation(run.kernel, run.kernel.tasks["main"], vaddr, access)
    assert e.outcome == "page fault"
    assert e.error_code == code and e.refs == refs
    assert e.kernel.startswith(("no VMA", "the VMA does not allow"))


def test_fault_error_code_is_the_one_the_mmu_raises() -> None:
    run = fresh_run()
    k, task = run.kernel, run.kernel.tasks["main"]
    k.switch_to(task)
    for vaddr, access in ((TEXT, ACCESS_WRITE), (HEAP, ACCESS_IFETCH), (0x10000000, ACCESS_READ)):
        name = {ACCESS_READ: "read", ACCESS_WRITE: "write", ACCESS_IFETCH: "exec"}[access]
        expected = explain_translation(k, task, vaddr, name).error_code
        with pytest.raises(PageFault) as fault:
            k.mmu.translate(vaddr, access, user=True)
        assert fault.value.code == expected


def test_cow_page_after_fork_faults_with_protection_and_write(tmp_path: Path) -> None:
    run = run_to_label(load_scenario(scenario_file(tmp_path, WRITTEN)), "forked")
    child = run.kernel.tasks["child"]
    e = explain_translation(run.kernel, child, run.maps["child"]["a"][0] + 0x1000, "write")
    assert e.error_code == pt.X86_PF_USER | pt.X86_PF_WRITE | pt.X86_PF_PROT
    assert "do_wp_page" in e.kernel


def test_non_canonical_address_is_a_general_protection_fault_without_a_walk() -> None:
    run = fresh_run()
    e = explain_translation(run.kernel, run.kernel.tasks["main"], 0x0000_8000_0000_0000, "read")
    assert e.outcome == "general protection" and e.refs == 0 and e.error_code is None
    code, out, _ = cli("translate", "0x800000000000", "--json")
    assert code == 0 and json.loads(out)["outcome"] == "general protection"


# -- the TLBs and page-walk caches ----------------------------------------------------------

def test_explaining_changes_nothing_not_even_accessed_bits(tmp_path: Path) -> None:
    """fork leaves the child's PTEs without A; a walk would set it, explaining must not."""
    run = run_to_label(load_scenario(scenario_file(tmp_path, WRITTEN)), "forked")
    k = run.kernel
    before = snapshot(k)
    for name in ("main", "child"):
        for offset in (0x1000, 0x3000, 0x5000):
            for access in ("read", "write", "exec"):
                explain_translation(k, k.tasks[name], run.maps[name]["a"][0] + offset, access)
    assert same(before, snapshot(k))
    e = explain_translation(k, k.tasks["child"], run.maps["child"]["a"][0] + 0x1000, "read")
    assert "A" in e.reads[-1].sets and not e.reads[-1].entry & pt._PAGE_ACCESSED


def test_tlb_hit_and_pwc_shortcut_are_what_the_mmu_then_does(tmp_path: Path) -> None:
    """The predicted source (L1, STLB or walk) and walk length equal a real translate()."""
    run = run_to_label(load_scenario(scenario_file(tmp_path, WRITTEN)), "written")
    k = run.kernel
    task = k.tasks["main"]
    base = run.maps["main"]["a"][0]
    seen = set()
    for offset, access in ((0x1000, "write"), (0x1000, "read"), (0x3000, "read"),
                           (0x3000, "write"), (0x5000, "read"), (0x201000, "read"),
                           (HEAP - base, "read"), (0x7000, "exec")):
        e = explain_translation(k, task, base + offset, access)
        k.switch_to(task)
        refs = int(k.mmu.counters[MmuStat.WALK_REFS])
        kind = {"read": ACCESS_READ, "write": ACCESS_WRITE, "exec": ACCESS_IFETCH}[access]
        if e.mmu_source == "walk":
            seen.add("walk shortened by the PWC" if e.mmu_refs < e.refs else "full walk")
        try:
            got = k.mmu.translate(base + offset, kind, user=True)
        except PageFault as fault:
            assert e.outcome == "page fault" and fault.code == e.error_code
            seen.add("fault")
        else:
            assert got.source == e.mmu_source and got.paddr == e.paddr
            seen.add(got.source)
        assert int(k.mmu.counters[MmuStat.WALK_REFS]) - refs == e.mmu_refs
    assert {"l1", "walk shortened by the PWC", "fault"} <= seen


def test_tlb_rule_matches_the_mmus() -> None:
    for leaf in range(1 << 8):
        entry = (leaf & 0x7F) | (pt._PAGE_NX if leaf & 0x80 else 0)
        for access in (ACCESS_READ, ACCESS_WRITE, ACCESS_IFETCH):
            assert tlb_entry_allows(entry, access, True) == Mmu._tlb_entry_allows(entry, access, True)


# -- the command -------------------------------------------------------------------------------

def test_cli_json_names_levels_entries_and_outcome(tmp_path: Path) -> None:
    path = scenario_file(tmp_path, WRITTEN)
    code, out, _ = cli("translate", "a+0x1000", "--scenario", str(path), "--at", "written",
                       "--access", "write", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["outcome"] == "translation" and doc["refs"] == 4 and doc["at"] == "written"
    assert [w["level"] for w in doc["walk"]] == ["PML4", "PDPT", "PD", "PT"]
    assert doc["mmu"]["source"] == "l1" and any(t["hit"] for t in doc["tlb"])
    assert doc["vma"]["maps"].split()[1] == "rw-p"


def test_cli_accepts_hex_decimal_and_region_names() -> None:
    outs = [json.loads(cli("translate", text, "--json")[1])["paddr"]
            for text in (hex(HEAP), str(HEAP), "[heap]")]
    assert outs[0] == outs[1] == outs[2]
    code, out, _ = cli("translate", hex(HEAP))
    assert code == 0 and "physical address" in out and "PML4" in out


@pytest.mark.parametrize("args", [
    ("nonsense",),
    ("0x1000", "--at", "x"),
    ("0x1000", "--scenario", "thp-madvise-64m", "--at", "no-such-label"),
    ("0x1000", "--scenario", "thp-madvise-64m", "--process", "ghost"),
    ("0x1000", "--scenario", "no-such-scenario"),
    (hex(1 << 64),),
])
def test_cli_bad_input_is_one_red_line_and_exit_2(args: tuple[str, ...]) -> None:
    code, out, err = cli("translate", *args)
    assert code == 2 and out == ""
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1


def test_exec_only_page_shows_its_key_and_the_pk_fault() -> None:
    """A PROT_EXEC-only page carries the execute-only key (1) in bits 62:59; PKRU denies a
    read of it (SDM §4.6.2: error code P|U|PK), the fetch passes; the kernel answers
    SEGV_PKUERR, as Kernel.user_access does, and for the untouched page too."""
    from pagewalk.errors import SignalError
    from pagewalk.kernel import syscalls
    run = fresh_run()
    k, task = run.kernel, run.kernel.tasks["main"]
    addr = syscalls.sys_mmap(k, task, 0x600000000000, 8192, 4,
                             frozenset({"private", "anonymous", "fixed"}))
    e = explain_translation(k, task, addr + 4096, "read")
    assert e.error_code == pt.X86_PF_USER and "SEGV_PKUERR" in e.kernel
    k.user_access(task, addr, ACCESS_IFETCH)
    before = snapshot(k)
    e = explain_translation(k, task, addr, "read")
    assert same(before, snapshot(k))
    assert e.pkey == 1 and e.pkru == 0x55555554
    assert e.error_code == pt.X86_PF_PROT | pt.X86_PF_USER | pt.X86_PF_PK
    assert "PK (protection key)" in e.to_json()["error_bits"] and "SEGV_PKUERR" in e.kernel
    with pytest.raises(SignalError, match="SEGV_PKUERR"):
        k.user_access(task, addr, ACCESS_READ)
    fetch = explain_translation(k, task, addr, "exec")
    assert fetch.outcome == "translation" and fetch.pkey == 1


def test_a_page_cache_page_names_its_file_and_offset(tmp_path: Path) -> None:
    """translate shows page->mapping and page->index of a file page, and that a shared
    write dirtied it (ext4 page_mkwrite)."""
    scenario = tmp_path / "file.yaml"
    scenario.write_text("""name: file
steps:
  - file: {name: data, size: 64KiB}
  - mmap: {name: m, length: 64KiB, flags: [shared], file: data, file_offset: 8KiB}
  - touch: {region: m, length: 4KiB}
""")
    result = CliRunner().invoke(main, ["translate", "--scenario", str(scenario), "m+0x10",
                                       "--json"])
    assert result.exit_code == 0, result.output
    page = json.loads(result.output)["page"]
    assert page == ("page cache of /var/tmp/pagewalk-files/data, page 2 "
                    "(file offset 0x2000), dirty")
