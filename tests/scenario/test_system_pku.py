"""``system.pku``: whether the CPU has memory protection keys (default true, as on the
reference machine). It reaches the machine (CPUID PKU, CR4.PKE), a bad value is a
ScenarioError naming the field, and `pagewalk verify` refuses a scenario with PROT_EXEC-only
memory whose ``pku`` is not the live CPU's (the kernel would answer differently)."""

from __future__ import annotations

import pytest

from pagewalk.errors import Location, ScenarioError
from pagewalk.live import verify as live_verify
from pagewalk.scenario.runner import ScenarioRun
from pagewalk.scenario.schema import SystemConfig, parse_scenario

FILE = "pku.yaml"
EXEC_ONLY = ("  - mmap: {name: x, length: 4KiB, prot: x}\n"
             "  - touch: {region: x, access: read, expect_signal: SIGSEGV}\n")


def scenario(system: str, steps: str = EXEC_ONLY) -> str:
    return f"name: pku\n{system}steps:\n{steps}"


def test_pku_defaults_to_true_and_reaches_the_machine() -> None:
    on = parse_scenario(scenario(""), FILE)
    off = parse_scenario(scenario("system: {pku: false}\n"), FILE)
    assert on.system.pku is True and SystemConfig().pku is True
    assert off.system.pku is False
    for parsed, pku in ((on, True), (off, False)):
        mmu = ScenarioRun(parsed).machine.mmu
        assert (mmu.pku, mmu.cr4_pke) == (pku, pku)


@pytest.mark.parametrize("value", ["1", "'true'", "[]", "null"])
def test_pku_must_be_true_or_false(value: str) -> None:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(scenario(f"system: {{pku: {value}}}\n"), FILE)
    assert info.value.location == Location(FILE, None, "system.pku")
    assert "expected true or false" in info.value.message


@pytest.mark.parametrize("live", [True, False])
def test_verify_refuses_exec_only_memory_on_a_cpu_with_other_keys(
        monkeypatch: pytest.MonkeyPatch, live: bool) -> None:
    monkeypatch.setattr(live_verify, "machine_has_pku", lambda: live)
    same = parse_scenario(scenario(f"system: {{pku: {str(live).lower()}}}\n"), FILE)
    other = parse_scenario(scenario(f"system: {{pku: {str(not live).lower()}}}\n"), FILE)
    assert live_verify.pku_refusal(same) is None
    refused = live_verify.pku_refusal(other)
    assert refused is not None and refused.location == Location(FILE, 0, "mmap.prot")
    assert f"system.pku: {str(live).lower()}" in str(refused)
    # without PROT_EXEC alone the keys change nothing a scenario can see
    readable = parse_scenario(scenario(f"system: {{pku: {str(not live).lower()}}}\n",
                                       "  - mmap: {name: x, length: 4KiB, prot: rx}\n"), FILE)
    assert live_verify.pku_refusal(readable) is None
