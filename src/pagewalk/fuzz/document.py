"""Scenarios as data: YAML text, the schema's check, and the schema's static rules as a repair.

The fuzzer works on the scenario document (what the YAML file holds, with integer
sizes), not on the schema's frozen dataclasses: shrinking edits it, annotation adds
``expect_*`` fields to it. :func:`to_yaml` writes it as the hand-written scenarios are
written (one flow map per step, sizes with binary units); :func:`load` checks it with
the schema (scenario/schema.py), so a document the fuzzer runs is exactly the file it
writes.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import yaml

from pagewalk.errors import ScenarioError
from pagewalk.scenario import schema as s
from pagewalk.units import GiB, KiB, MiB

Doc = dict[str, Any]
SIZE_FIELDS = ("length", "offset", "stride", "page_size", "size", "file_offset", "new_length")
ADDRESS_FIELDS = ("addr",)
REGION_STEPS = ("munmap", "mprotect", "madvise", "touch", "write", "read", "mremap", "mlock",
                "munlock", "msync")
FILE_STEPS = ("truncate", "fadvise", "unlink")                       # name a ``file``
CALL_STEPS = ("mmap", "munmap", "mprotect", "madvise", "fork", "brk", "mremap", "mlock",
              "munlock", "mlockall", "munlockall", "file", "truncate", "fadvise", "msync",
              "unlink")                                              # may expect_error
ACCESS_STEPS = ("touch", "write", "read")                            # may expect_signal
GLOBAL_STEPS = ("set", "measure", "khugepaged")                      # carry no process


def step_item(step: Doc) -> tuple[str, Any]:
    """(kind, value) of a one-key step map."""
    ((kind, value),) = step.items()
    return str(kind), value


def step_process(step: Doc) -> str:
    kind, value = step_item(step)
    if kind in GLOBAL_STEPS or not isinstance(value, dict):
        return s.MAIN_PROCESS
    return str(value.get("process", s.MAIN_PROCESS))


def size_text(value: int) -> str | int:
    """4194304 -> '4MiB'; sizes that are no whole number of KiB stay integers."""
    for unit, name in ((GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if value and value % unit == 0:
            return f"{value // unit}{name}"
    return value


def _pretty(fields: Doc) -> Doc:
    shown: Doc = {}
    for key, value in fields.items():
        if key in SIZE_FIELDS and isinstance(value, int):
            shown[key] = size_text(value)
        elif key in ADDRESS_FIELDS and isinstance(value, int):
            shown[key] = f"{value:#x}"
        else:
            shown[key] = value
    return shown


def _flow(value: Any) -> str:
    text: str = yaml.safe_dump(value, default_flow_style=True, sort_keys=False,
                               width=1 << 30, allow_unicode=False)
    return text.strip()


def _scalar(value: Any) -> str:
    return _flow([value])[1:-1]


def to_yaml(doc: Doc) -> str:
    """The scenario file of ``doc``."""
    lines = [f"name: {doc['name']}"]
    if doc.get("description"):
        lines.append(yaml.safe_dump({"description": doc["description"]}, width=1 << 30,
                                    default_flow_style=False).strip())
    system = doc.get("system")
    if system:
        lines.append("system:")
        for key, value in system.items():
            if key == "sysfs":
                lines.append("  sysfs:")
                lines.extend(f"    {path}: {_scalar(knob)}" for path, knob in value.items())
            else:
                lines.append(f"  {key}: {_scalar(value)}")
    lines.append("steps:")
    for step in doc["steps"]:
        kind, value = step_item(step)
        shown = _flow(_pretty(value)) if isinstance(value, dict) else _scalar(value)
        lines.append(f"  - {kind}: {shown}")
    return "\n".join(lines) + "\n"


def load(doc: Doc, file: str = "<fuzz>") -> s.Scenario:
    """The schema's reading of ``doc`` (ScenarioError if it is not a valid scenario)."""
    return s.parse_scenario(to_yaml(doc), file)


def is_valid(doc: Doc) -> bool:
    try:
        load(doc)
    except ScenarioError:
        return False
    return True


def canonical(doc: Doc) -> str:
    """A key for ``doc``: equal documents, equal keys."""
    return json.dumps(doc, sort_keys=True, default=str)


def strip_expectations(doc: Doc) -> Doc:
    """``doc`` without what discovery adds: ``expect_error``, ``expect_signal`` and a
    read's ``expect``."""
    out = copy.deepcopy(doc)
    for step in out["steps"]:
        _, value = step_item(step)
        if isinstance(value, dict):
            for key in ("expect_error", "expect_signal", "expect"):
                value.pop(key, None)
    return out


def repair(doc: Doc) -> Doc:
    """``doc`` less every step the schema would refuse where it stands (scenario/schema.py
    _Timeline): a step of a process that is not alive, a region its process does not
    know, a mapping or child name already taken, a repeated measure label, an empty set,
    a file step naming no file made before (or a second file of one name, or an unlink of
    a memfd). Dropping an mmap drops the steps that use its mapping; dropping a fork drops
    its child's steps; dropping a file step drops the steps that name the file: what a
    shrinker needs to stay valid."""
    out = copy.deepcopy(doc)
    alive: dict[str, set[str]] = {s.MAIN_PROCESS: set()}
    files: dict[str, str] = {}                      # file name -> its fs
    labels: set[str] = set()
    kept = []
    for step in out["steps"]:
        kind, value = step_item(step)
        if kind == "measure":
            if value in labels:
                continue
            labels.add(value)
        elif kind == "set":
            if not value:
                continue
        elif kind != "khugepaged":
            proc = step_process(step)
            if proc not in alive:
                continue
            region = value.get("region") if kind in REGION_STEPS else None
            if region is not None and region != s.HEAP_REGION and region not in alive[proc]:
                continue
            named = value.get("file") if kind in FILE_STEPS or kind == "mmap" else None
            if named is not None and (named not in files or
                                      (kind == "unlink" and files[named] == "memfd")):
                continue
            if kind == "file":
                if value["name"] in files:
                    continue
                files[value["name"]] = value.get("fs", "disk")
            if kind == "mmap" or (kind == "mremap" and "name" in value):
                if value["name"] in alive[proc]:
                    continue
                alive[proc].add(value["name"])
            elif kind == "fork":
                if value["name"] in alive:
                    continue
                alive[value["name"]] = set(alive[proc])
            elif kind == "exit":
                del alive[proc]
        kept.append(step)
    out["steps"] = kept
    return out


__all__ = ["ACCESS_STEPS", "CALL_STEPS", "Doc", "canonical", "is_valid", "load", "repair",
           "size_text", "step_item", "step_process", "strip_expectations", "to_yaml"]
