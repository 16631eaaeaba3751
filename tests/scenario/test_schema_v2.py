"""Reading the version 2 steps (scenario.md "Version 2 additions": brk, mremap, mlock,
munlock, mlockall, munlockall, the [heap] region): defaults, and one clear error naming
the step and the field for every malformed one."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from pagewalk.errors import Errno, ScenarioError
from pagewalk.scenario.schema import (
    HEAP_REGION,
    BrkStep,
    MlockallStep,
    MlockStep,
    MremapStep,
    MunlockallStep,
    MunlockStep,
    parse_scenario,
)

MMAP_A = {"mmap": {"name": "a", "length": "4MiB"}}


def parse(*steps: dict[str, Any]) -> Any:
    return parse_scenario(yaml.safe_dump({"name": "t", "steps": list(steps)}), "t.yaml").steps


def refused(*steps: dict[str, Any]) -> ScenarioError:
    with pytest.raises(ScenarioError) as err:
        parse(*steps)
    return err.value


def test_v2_steps_and_their_defaults() -> None:
    steps = parse(MMAP_A, {"brk": {"delta": "-64KiB"}},
                  {"mremap": {"region": "a", "new_length": "8MiB", "flags": ["maymove"]}},
                  {"mlock": {"region": "a", "flags": ["onfault"]}},
                  {"munlock": {"region": HEAP_REGION, "offset": "136KiB"}},
                  {"mlockall": {"flags": ["current", "future"]}},
                  {"munlockall": {}}, {"munlockall": None},
                  {"brk": {"delta": 100, "expect_error": "ENOMEM"}})
    brk, mremap, mlock, munlock, mlockall, munlockall, _, brk2 = steps[1:]
    assert isinstance(brk, BrkStep) and brk.delta == -64 * 1024
    assert isinstance(mremap, MremapStep) and mremap.new_length == 8 << 20
    assert mremap.flags == {"maymove"} and mremap.addr is None and mremap.name is None
    assert isinstance(mlock, MlockStep) and mlock.onfault
    assert isinstance(munlock, MunlockStep) and munlock.range.region == HEAP_REGION
    assert isinstance(mlockall, MlockallStep) and mlockall.flags == {"current", "future"}
    assert isinstance(munlockall, MunlockallStep)
    assert isinstance(brk2, BrkStep) and brk2.expect_error == Errno.ENOMEM


def test_dontunmap_names_a_new_mapping_usable_later() -> None:
    steps = parse(MMAP_A, {"mremap": {"region": "a", "new_length": "4MiB",
                                      "flags": ["maymove", "dontunmap"], "name": "b"}},
                  {"touch": {"region": "b"}})
    assert steps[1].name == "b"


@pytest.mark.parametrize(("step", "field", "words"), [
    ({"brk": {}}, "steps[1].brk.delta", "missing required field"),
    ({"brk": {"delta": "-x"}}, "steps[1].brk.delta", ""),
    ({"mremap": {"region": "a"}}, "steps[1].mremap.new_length", "missing required field"),
    ({"mremap": {"region": "a", "new_length": 4096, "flags": ["fixed"]}},
     "steps[1].mremap.addr", "required with flag 'fixed'"),
    ({"mremap": {"region": "a", "new_length": 4096, "addr": 0x1000}},
     "steps[1].mremap.addr", "needs flag 'fixed'"),
    ({"mremap": {"region": "a", "new_length": 4096, "flags": ["maymove", "dontunmap"]}},
     "steps[1].mremap.name", "required with flag 'dontunmap'"),
    ({"mremap": {"region": "a", "new_length": 4096, "name": "b"}},
     "steps[1].mremap.name", "needs flag 'dontunmap'"),
    ({"mremap": {"region": "a", "new_length": 4096, "flags": ["maymove", "dontunmap"],
                 "name": "[heap]"}}, "steps[1].mremap.name", "reserved"),
    ({"mremap": {"region": "a", "new_length": 4096, "flags": ["grow"]}},
     "steps[1].mremap.flags.0", "unknown flag"),
    ({"mlock": {"region": "a", "flags": ["onfault", "onfault"]}},
     "steps[1].mlock.flags.1", "listed twice"),
    ({"mlock": {"region": "nope"}}, "steps[1].mlock.region", "no mapping named"),
    ({"mlockall": {}}, "steps[1].mlockall.flags", "missing required field"),
    ({"mlockall": {"flags": ["onfault"]}}, "steps[1].mlockall.flags", "at least one"),
    ({"munlockall": {"flags": []}}, "steps[1].munlockall.flags", "unknown field"),
    ({"mmap": {"name": "[heap]", "length": 4096}}, "steps[1].mmap.name", "reserved"),
    ({"touch": {"region": "[stack]"}}, "steps[1].touch.region", "must match"),
])
def test_malformed_v2_steps_name_step_and_field(step: dict[str, Any], field: str,
                                                 words: str) -> None:
    err = refused(MMAP_A, step)
    assert str(err.location).endswith(field) or field in str(err), (str(err), field)
    assert words in str(err)
