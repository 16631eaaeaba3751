"""Context switches and the TLBs (SDM vol. 3A §4.10.4; arch/x86/mm/tlb.c): loading another
process's CR3 keeps the TLB entries tagged with other PCIDs when PCID is on and flushes
them when it is off; PTI adds two CR3 loads per kernel entry. The per-process figures in
the report (tlb_*) show the difference."""

from __future__ import annotations

from pagewalk.scenario.runner import run_scenario
from pagewalk.scenario.schema import parse_scenario

SCENARIO = """name: ping-pong
system:
  {system}
  sysfs:
    /sys/kernel/mm/transparent_hugepage/enabled: never
steps:
  - mmap: {{name: a, length: 64KiB}}
  - touch: {{region: a}}
  - fork: {{name: b}}
  - touch: {{region: a, process: b, access: read}}
  - touch: {{region: a, access: read}}
  - measure: warm
  - touch: {{region: a, access: read}}
  - touch: {{region: a, process: b, access: read}}
  - touch: {{region: a, access: read}}
  - touch: {{region: a, process: b, access: read}}
  - measure: ping-pong
"""


def figures(system: str) -> tuple[dict[str, int], dict[str, int]]:
    report = run_scenario(parse_scenario(SCENARIO.format(system=system), "pp.yaml")).to_json()
    warm, done = report["measurements"]
    delta = {}
    for proc in ("main", "b"):
        delta[proc] = {k: done["processes"][proc][k] - warm["processes"][proc][k]
                       for k in done["processes"][proc] if k.startswith(("tlb_", "cr3"))}
    return delta["main"], delta["b"]


def test_with_pcid_each_process_finds_its_translations_after_a_switch() -> None:
    main, child = figures("pcid: true")
    assert main["tlb_accesses"] == 32 and child["tlb_accesses"] == 32   # 16 pages x 2 rounds
    assert main["tlb_l1_hits"] == 32 and child["tlb_l1_hits"] == 32     # PCID-tagged entries kept
    assert main["tlb_walks"] == 0 and child["tlb_walks"] == 0


def test_without_pcid_every_switch_flushes_the_tlb() -> None:
    main, child = figures("pcid: false")
    assert main["tlb_l1_hits"] + main["tlb_stlb_hits"] < 32
    assert main["tlb_walks"] >= 16 and child["tlb_walks"] >= 16          # a miss after each switch
    assert main["cr3_loads"] == 1 and child["cr3_loads"] == 2         # one per switch to it


def test_pti_switches_cr3_on_every_kernel_entry() -> None:
    _, plain = figures("pti: false")
    _, pti = figures("pti: true")
    assert pti["cr3_loads"] > plain["cr3_loads"]
