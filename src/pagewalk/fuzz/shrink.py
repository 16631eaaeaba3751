"""Shrinking: the smallest scenario for which a predicate (the same mismatch) still holds.

Greedy and valid at every step: a candidate is the current scenario less some steps, a
knob, a flag, or with a length or offset halved; :func:`document.repair` then drops
whatever the schema would refuse (the steps that use a dropped mapping, the steps of a
dropped process), and a candidate that the schema still refuses is never tried. The
first candidate for which the predicate holds becomes the current scenario and the
search starts again from the largest cuts; it ends when no candidate holds, or when the
budget (predicate calls, seconds) is spent.

Candidates, largest cuts first: chunks of steps (halves, quarters, ... single steps; a
fork step dropped takes its process with it), the whole ``system.sysfs`` and then each
of its knobs, each knob of a ``set`` step; then per step: flags dropped (populate,
noreserve, fixed_noreplace, an explicit page size, a hint), prot back to the default,
a step of a child done by main instead, lengths and offsets halved (kept page aligned
if they were), a range narrowed to the default, data and reads cut to one byte,
strides made the default.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pagewalk.fuzz.document import (
    REGION_STEPS,
    Doc,
    canonical,
    is_valid,
    repair,
    step_item,
)
from pagewalk.units import MiB

Predicate = Callable[[Doc], bool]
Progress = Callable[[int, Doc], None]
PAGE = 4096
DROPPABLE_FLAGS = ("populate", "noreserve", "fixed_noreplace")


@dataclass(slots=True)
class ShrinkResult:
    doc: Doc
    tried: int             # predicate calls
    accepted: int          # candidates that held
    exhausted: bool        # stopped by the budget, not at a minimum


def shrink(doc: Doc, holds: Predicate, *, max_tries: int = 200,
           max_seconds: float | None = None, progress: Progress | None = None) -> ShrinkResult:
    """Shrink ``doc`` (for which ``holds`` is true) while ``holds`` stays true."""
    current = repair(doc)
    if not is_valid(current):
        current = copy.deepcopy(doc)
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    seen = {canonical(current)}
    tried = accepted = 0
    while True:
        for candidate in _candidates(current):
            if tried >= max_tries or (deadline is not None and time.monotonic() > deadline):
                return ShrinkResult(current, tried, accepted, exhausted=True)
            candidate = repair(candidate)
            key = canonical(candidate)
            if key in seen or not is_valid(candidate):
                continue
            seen.add(key)
            tried += 1
            if holds(candidate):
                current = candidate
                accepted += 1
                if progress is not None:
                    progress(tried, current)
                break
        else:
            return ShrinkResult(current, tried, accepted, exhausted=False)


def _candidates(doc: Doc) -> Iterator[Doc]:
    yield from _fewer_steps(doc)
    yield from _fewer_knobs(doc)
    for index in range(len(doc["steps"])):
        yield from _simpler_step(doc, index)


def _fewer_steps(doc: Doc) -> Iterator[Doc]:
    steps = doc["steps"]
    size = max(1, len(steps) // 2) if steps else 0
    while size >= 1:
        for start in range(0, len(steps), size):
            out = copy.deepcopy(doc)
            del out["steps"][start:start + size]
            yield out
        size //= 2


def _fewer_knobs(doc: Doc) -> Iterator[Doc]:
    sysfs = doc.get("system", {}).get("sysfs", {})
    if sysfs:
        out = copy.deepcopy(doc)
        del out["system"]["sysfs"]
        if not out["system"]:
            del out["system"]
        yield out
        if len(sysfs) > 1:
            for path in sysfs:
                out = copy.deepcopy(doc)
                del out["system"]["sysfs"][path]
                yield out
    for index, step in enumerate(doc["steps"]):
        kind, knobs = step_item(step)
        if kind == "set" and len(knobs) > 1:
            for path in knobs:
                out = copy.deepcopy(doc)
                del out["steps"][index]["set"][path]
                yield out


def _halved(value: int, grain: int) -> int:
    half = value // 2
    return half - half % grain if value % grain == 0 else half


def _with(doc: Doc, index: int, change: Callable[[Doc], None]) -> Doc:
    out = copy.deepcopy(doc)
    _, fields = step_item(out["steps"][index])
    change(fields)
    return out


def _simpler_step(doc: Doc, index: int) -> Iterator[Doc]:
    kind, fields = step_item(doc["steps"][index])
    if not isinstance(fields, dict):
        return
    changes: list[Callable[[Doc], None]] = []
    if "process" in fields and kind != "exit":
        changes.append(lambda f: f.pop("process"))     # done by main instead of a child
    if kind == "mmap":
        changes += _simpler_mmap(fields)
    if kind in REGION_STEPS or kind in ("write", "read"):
        changes += _simpler_range(fields)
    if kind == "touch":
        if "stride" in fields:
            changes.append(lambda f: f.pop("stride"))
        if fields.get("access") == "write":
            changes.append(lambda f: f.pop("access"))
    if kind == "write" and len(fields["data"]) > 1:
        changes.append(lambda f: f.__setitem__("data", f["data"][:1]))
    if kind == "read" and fields.get("length", 1) > 1:
        changes.append(lambda f: f.__setitem__("length", 1))
    for change in changes:
        yield _with(doc, index, change)


def _drop_flag(flag: str) -> Callable[[Doc], None]:
    def change(fields: Doc) -> None:
        fields["flags"].remove(flag)
    return change


def _simpler_mmap(fields: Doc) -> list[Callable[[Doc], None]]:
    changes: list[Callable[[Doc], None]] = []
    flags = fields.get("flags", [])
    changes += [_drop_flag(flag) for flag in DROPPABLE_FLAGS if flag in flags]
    if "addr" in fields and not {"fixed", "fixed_noreplace"} & set(flags):
        changes.append(lambda f: f.pop("addr"))
    if fields.get("page_size") == 2 * MiB:
        changes.append(lambda f: f.pop("page_size"))
    if "prot" in fields and fields["prot"] != "rw":
        changes.append(lambda f: f.pop("prot"))
    if flags == ["private", "anonymous"]:
        changes.append(lambda f: f.pop("flags"))
    grain = fields.get("page_size", 2 * MiB) if "hugetlb" in flags else PAGE
    length = fields["length"]
    if isinstance(length, int) and length > grain:
        changes.append(lambda f: f.__setitem__("length", max(grain, _halved(length, grain))))
    return changes


def _simpler_range(fields: Doc) -> list[Callable[[Doc], None]]:
    changes: list[Callable[[Doc], None]] = []
    offset, length = fields.get("offset"), fields.get("length")
    if offset is not None:
        changes.append(lambda f: f.pop("offset"))
        if offset > PAGE:
            changes.append(lambda f: f.__setitem__("offset", _halved(offset, PAGE)))
    if length is not None and "region" in fields and "data" not in fields:
        if "expect" not in fields and length != 0:
            changes.append(lambda f: f.pop("length"))
        if length > PAGE:
            changes.append(lambda f: f.__setitem__("length", _halved(length, PAGE)))
    return changes


__all__ = ["Predicate", "ShrinkResult", "shrink"]
