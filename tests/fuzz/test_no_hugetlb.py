"""`pagewalk fuzz --no-hugetlb`: the generator makes no hugetlb mapping and sets no hugetlb
pool knob (what the live runner refuses while huge pages are held outside a scenario), the
same seed and options still give the same scenario, and without the option the command
says once, before the first seed, that hugetlb cannot be measured on this kernel."""

from __future__ import annotations

import os
from typing import Any

import pytest
from click.testing import CliRunner

from pagewalk.cli import main
from pagewalk.fuzz import command
from pagewalk.fuzz.campaign import AGREE, CampaignResult, Settings, SimulatorSide
from pagewalk.fuzz.document import load, to_yaml
from pagewalk.fuzz.generate import ALL, NO_HUGETLB_CLASSES, generate
from pagewalk.live import hugetlb_state, probe
from pagewalk.scenario import schema as s

SEEDS = range(300)
POOL_KNOBS = hugetlb_state.POOL_KNOB_NAMES


def _hugetlb_parts(scenario: s.Scenario) -> list[str]:
    """The hugetlb mappings and pool knobs of a scenario (boot sysfs and set steps)."""
    parts = [p for p in scenario.system.sysfs if p.rsplit("/", 1)[-1] in POOL_KNOBS]
    for step in scenario.steps:
        if isinstance(step, s.MmapStep) and ("hugetlb" in step.flags or step.page_size):
            parts.append(f"mmap {step.name}")
        if isinstance(step, s.SetStep):
            parts += [p for p in step.knobs if p.rsplit("/", 1)[-1] in POOL_KNOBS]
    return parts


def test_no_hugetlb_scenarios_map_no_hugetlb_and_set_no_pool() -> None:
    """Over 300 seeds of every class left: nothing the live runner counts as hugetlb use
    (hugetlb_state.uses_hugetlb), while the same seeds with hugetlb do use it."""
    used_with = 0
    for seed in SEEDS:
        for cls in (ALL, NO_HUGETLB_CLASSES[seed % len(NO_HUGETLB_CLASSES)]):
            scenario = load(generate(seed, cls, hugetlb=False), f"seed-{seed}")
            assert not _hugetlb_parts(scenario), (seed, cls, _hugetlb_parts(scenario))
            assert not hugetlb_state.uses_hugetlb(scenario), (seed, cls)
        used_with += hugetlb_state.uses_hugetlb(load(generate(seed, ALL)))
    assert used_with > 50


def test_no_hugetlb_is_deterministic_and_leaves_the_default_alone() -> None:
    """Same seed + same options = same scenario; the default is hugetlb=True; `all`
    without hugetlb picks every other class; the hugetlb class cannot be asked for."""
    for seed in range(40):
        assert to_yaml(generate(seed, ALL, hugetlb=False)) == \
            to_yaml(generate(seed, ALL, hugetlb=False))
        assert generate(seed) == generate(seed, ALL, hugetlb=True)
    picked = {generate(seed, ALL, hugetlb=False)["name"].split("-")[1] for seed in range(120)}
    assert picked == set(NO_HUGETLB_CLASSES)
    with pytest.raises(ValueError, match="hugetlb"):
        generate(1, "hugetlb", hugetlb=False)


@pytest.mark.parametrize("seed", range(0, 200, 25))
def test_the_simulator_runs_no_hugetlb_scenarios(seed: int) -> None:
    """Valid by construction without hugetlb too: no crash, the annotated run replays."""
    evaluation = SimulatorSide().evaluate(generate(seed, ALL, hugetlb=False))
    assert evaluation.verdict == AGREE, (evaluation.cls, evaluation.detail)


def _fake_live(monkeypatch: pytest.MonkeyPatch, reserved: int) -> list[Settings]:
    """Root, a probe, HugePages_Rsvd ``reserved`` held outside; the campaign recorded."""
    seen: list[Settings] = []

    def run_campaign(seeds: Any, side: Any, settings: Settings,
                     listener: Any) -> CampaignResult:
        seen.append(settings)
        return CampaignResult("kernel")

    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(probe, "build_probe", lambda: None)
    monkeypatch.setattr(hugetlb_state, "held_outside", lambda: hugetlb_state.HeldOutside(
        {"HugePages_Total": reserved, "HugePages_Free": reserved,
         "HugePages_Rsvd": reserved, "HugePages_Surp": reserved}))
    monkeypatch.setattr(command, "run_campaign", run_campaign)
    return seen


def test_unmeasurable_hugetlb_is_said_once_with_the_option_to_use(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _fake_live(monkeypatch, reserved=5)
    result = CliRunner().invoke(main, ["fuzz", "--seeds", "1..3", "--json"])
    assert result.exit_code == 0, result.stderr
    assert result.stderr.count("--no-hugetlb") == 1
    assert "cannot be measured" in result.stderr and "HugePages_Rsvd 5" in result.stderr
    assert seen[0].hugetlb                      # the scenarios are not changed silently


def test_no_note_when_clean_or_with_no_hugetlb(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _fake_live(monkeypatch, reserved=0)
    result = CliRunner().invoke(main, ["fuzz", "--seed", "1", "--json"])
    assert result.exit_code == 0 and "no-hugetlb" not in result.stderr
    seen = _fake_live(monkeypatch, reserved=5)
    result = CliRunner().invoke(main, ["fuzz", "--seed", "1", "--no-hugetlb", "--json"])
    assert result.exit_code == 0 and "hugetlb" not in result.stderr
    assert not seen[0].hugetlb


def test_hugetlb_class_with_no_hugetlb_exits_2() -> None:
    result = CliRunner().invoke(main, ["fuzz", "--class", "hugetlb", "--no-hugetlb",
                                       "--simulator-only"])
    assert result.exit_code == 2 and "--no-hugetlb" in result.stderr
    assert "Traceback" not in result.stderr
