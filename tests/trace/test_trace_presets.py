"""Named TLB models (trace/presets.py): the reference preset is the spec's model, the real
processors carry their published figures, and model files are validated field by field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pagewalk.errors import ConfigError
from pagewalk.hw.pwc import REFERENCE_PWC
from pagewalk.hw.tlb import REFERENCE_TLB
from pagewalk.trace import replay_trace
from pagewalk.trace.presets import PRESET_DIR, load_model, parse_model, preset_names


def test_presets_are_listed_reference_first() -> None:
    names = preset_names()
    assert names[0] == "reference"
    assert {"skylake", "haswell", "zen"} <= set(names)


def test_the_reference_preset_is_the_spec_model() -> None:
    """presets/reference.yaml describes the model `--tlb reference` replays through."""
    model = load_model(str(PRESET_DIR / "reference.yaml"))
    assert model.tlb.arrays == REFERENCE_TLB.arrays
    assert model.pwc == REFERENCE_PWC and model.paging_levels == 4
    assert load_model("reference").tlb == model.tlb and load_model("reference").name == model.name


def test_skylake_publishes_the_reference_figures() -> None:
    """docs/trace-model.md's TLBs are Intel's Skylake figures."""
    assert load_model("skylake").tlb.arrays == REFERENCE_TLB.arrays


@pytest.mark.parametrize("name", ["skylake", "haswell", "zen"])
def test_real_processor_presets_cite_their_source(name: str) -> None:
    data = yaml.safe_load((PRESET_DIR / f"{name}.yaml").read_text())
    assert "Optimization" in data["source"]


def test_haswell_has_no_1g_stlb_entries(traces: Path) -> None:
    """A 1 GiB page that leaves the 4-entry L1 dTLB walks again on Haswell."""
    skylake = replay_trace(traces / "mixed-200k.pwt", pages="1GiB", model=load_model("skylake"))
    haswell = replay_trace(traces / "mixed-200k.pwt", pages="1GiB", model=load_model("haswell"))
    assert haswell.stlb_hits < skylake.stlb_hits


@pytest.mark.parametrize("name", ["haswell", "zen"])
def test_presets_replay_the_same_on_both_engines(traces: Path, name: str) -> None:
    model = load_model(name)
    reports = [replay_trace(traces / "true.lackey", model=model, engine=engine).to_json()
               for engine in ("fast", "reference")]
    assert reports[0] == reports[1]


@pytest.mark.parametrize("document, field, message", [
    ([], None, "a model file is a mapping"),
    ({"tlb": []}, "tlb", "a list of TLB arrays"),
    ({"tlb": [{"level": 1}]}, "tlb[0].serves", "is required"),
    ({"tlb": [{"level": 1, "serves": "data", "pages": ["8KiB"], "entries": 4, "ways": 4}]},
     "tlb[0].pages", "page sizes are 4KiB, 2MiB or 1GiB"),
    ({"tlb": [{"level": 1, "serves": "both", "pages": ["4KiB"], "entries": 4, "ways": 4}]},
     "tlb[0].serves", "must be one of"),
    ({"tlb": [{"level": 1, "serves": "data", "pages": ["4KiB"], "entries": 4, "ways": 4,
               "colour": "red"}]}, "tlb[0].colour", "unknown key"),
    ({"tlb": [{"level": 1, "serves": "data", "pages": ["4KiB"], "entries": 4, "ways": 4}],
      "pwc": {"pde": -1}}, "pwc.pde", "entries >= 0"),
    ({"tlb": [{"level": 1, "serves": "data", "pages": ["4KiB"], "entries": 4, "ways": 4}],
      "paging_levels": 3}, "paging_levels", "must be 4 or 5"),
])
def test_model_files_are_checked_field_by_field(document: Any, field: str | None,
                                                message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_model(document, "m.yaml")
    assert caught.value.location is not None
    assert caught.value.location.file == "m.yaml" and caught.value.location.field == field


def test_an_unknown_model_is_an_error() -> None:
    with pytest.raises(ConfigError, match="no such TLB model"):
        load_model("pentium-pro")
