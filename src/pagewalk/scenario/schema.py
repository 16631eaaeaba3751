"""Scenario files (scenario.md, versions 1 and 2) -> typed, frozen step dataclasses.

The whole format is read and checked here, before anything runs: YAML (or JSON)
syntax, the top-level fields, ``system``, and every step with its fields, types,
sizes, addresses and knob values. Every failure is one :class:`ScenarioError` whose
:class:`Location` names the file, the 0-based step index and the field
(``steps[3].mmap.length``), and whose message says what was wrong and what is allowed.
Steps are also checked against each other statically: a step's ``process`` must be
alive at that point, a ``region`` must name a mapping that process made (or inherited
by fork) in an earlier ``mmap`` step, and ``measure`` labels are unique. Whether that
mmap succeeded is the runner's business.

pagewalk extensions and decisions where scenario.md is silent:

* ``system.pti`` (default false) and ``system.pcid`` (default true) choose page-table
  isolation and PCIDs; the defaults match the reference machine (Meltdown "Not
  affected", so PTI off at run time; PCID present).
* ``system.pku`` (default true, as the reference machine's CPU has it): memory protection
  keys. With them Linux makes PROT_EXEC-only memory execute-only (a read or write is
  SIGSEGV); ``pku: false`` is a CPU without them, where PROT_EXEC implies read.
* ``system.ram`` is a size from 64 MiB to 1 TiB and a multiple of 4 MiB (one
  MAX_PAGE_ORDER buddy block, so every free list starts out whole).
* ``system.sysfs`` keeps the knobs in the order written (the runner writes them in
  that order, so of two names for one file the later wins); values are normalised to
  the string the kernel file would hold (``16`` -> ``"16"``) by kernel/knobs.py.
* ``mmap.flags`` omitted means ``[private, anonymous]``. Given flags must include
  ``anonymous``, or the step names a ``file`` (version 2), and then flags are required
  and ``anonymous`` and ``hugetlb`` are refused. ``private`` together with
  ``shared`` is refused (the two bits together are MAP_SHARED_VALIDATE, which the
  format does not express). Neither ``private`` nor ``shared`` is accepted and left
  to the kernel, which answers EINVAL. ``fixed`` with ``fixed_noreplace`` is accepted
  (the kernel lets NOREPLACE win). A flag listed twice is refused.
* ``mmap.page_size`` is only allowed with ``hugetlb`` (2MiB or 1GiB); hugetlb without
  it is None, the default huge page size (2 MiB). ``mmap.addr`` absent is None.
* ``prot`` is ``none`` or the letters r, w, x, each at most once, in any order.
* ``write.offset`` and ``read.offset`` default to 0, as a range's ``offset`` does.
  ``read.length`` defaults to the length of ``expect``; one of them is required, and
  when both are given they must agree.
* ``expect_error`` is allowed on the system-call steps (mmap, munmap, mprotect,
  madvise, fork), ``expect_signal`` on the access steps (touch, write, read), and
  ``expect_signal: SIGKILL`` (the OOM killer, version 3) on the system-call steps too;
  never both. ``exit`` takes only ``process`` (default ``main``, as on every step: ``exit: {}``
  exits main, whose children go on); ``set`` only knob paths (at least
  one); ``measure`` only its label; ``khugepaged`` only ``scans`` (1 to
  MAX_KHUGEPAGED_SCANS, 1000: a count that could not finish is refused; ``khugepaged:``
  with no value means ``scans: 1``). These steps act system-wide and carry no ``process``.
* Process and mapping names match ``[A-Za-z0-9._-]+``. A fork must not reuse the name of
  a live process; a name may be reused after that process exited. Mapping names are
  unique within a process, its inherited ones included.
* Version 2 files: a ``file`` step's name is unique in the scenario; ``mmap``,
  ``truncate``, ``fadvise`` and ``unlink`` must name a file made by an earlier step (the
  scenario keeps every file open: a file is reachable after its unlink, as the oracle's
  ``/proc/<controller>/fd/N``); ``unlink`` of a memfd is refused (it has no name).
  ``file_offset`` is not checked for alignment: the kernel answers EINVAL.
* Sizes, offsets and addresses must be below 2**64; YAML mappings with a duplicate key
  are refused rather than silently keeping the last value.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

import yaml

from pagewalk.errors import ConfigError, Errno, Location, ScenarioError, Signal
from pagewalk.kernel import knobs
from pagewalk.units import GiB, KiB, MiB, TiB, format_size, parse_addr, parse_size

PROT_NONE = 0
PROT_READ = 1    # asm-generic/mman-common.h
PROT_WRITE = 2
PROT_EXEC = 4
_PROT_LETTERS = {"r": PROT_READ, "w": PROT_WRITE, "x": PROT_EXEC}

MMAP_FLAGS = ("private", "shared", "anonymous", "fixed", "fixed_noreplace", "noreserve",
              "populate", "hugetlb")
DEFAULT_MMAP_FLAGS: frozenset[str] = frozenset({"private", "anonymous"})
MADVISE_ADVICE = ("hugepage", "nohugepage", "dontneed", "free", "collapse", "willneed",
                  # version 2
                  "populate_read", "populate_write", "remove", "cold", "pageout", "random",
                  "sequential", "normal")
ACCESS_KINDS = ("read", "write")
MREMAP_FLAGS = ("maymove", "fixed", "dontunmap")
MLOCK_FLAGS = ("onfault",)
MLOCKALL_FLAGS = ("current", "future", "onfault")
MSYNC_FLAGS = ("sync", "async", "invalidate")
FILE_SYSTEMS = ("disk", "tmpfs", "memfd")   # version 2: where a ``file`` step makes its file
FADVISE_ADVICE = ("dontneed",)
HEAP_REGION = "[heap]"           # version 2: [start_brk, brk) of the process
HUGETLB_PAGE_SIZES = (2 * MiB, 1 * GiB)
MAIN_PROCESS = "main"
# what an access can raise; SIGKILL: the memory cgroup's OOM killer (version 3)
EXPECTABLE_SIGNALS = (Signal.SIGSEGV, Signal.SIGBUS, Signal.SIGKILL)

RAM_MIN = 64 * MiB
RAM_MAX = 1 * TiB
RAM_ALIGN = 4 * MiB      # one MAX_PAGE_ORDER (order-10) buddy block
PAGING_LEVELS = (4, 5)
ADDRESS_LIMIT = 1 << 64
# A khugepaged pass costs about 6 us per eligible 2 MiB (3 ms for a touched 1 GiB THP
# mapping, measured): 1000 passes of that finish in seconds, a billion never would.
MAX_KHUGEPAGED_SCANS = 1000

_SCENARIO_NAME = re.compile(r"[a-z0-9._-]+")
_OBJECT_NAME = re.compile(r"[A-Za-z0-9._-]+")
_TOP_FIELDS = ("name", "description", "system", "steps")
_SYSTEM_FIELDS = ("ram", "paging", "pti", "pcid", "pku", "sysfs", "swap", "memory_limit")
SWAP_MIN = 40 * KiB      # mkswap refuses fewer than 10 pages

T = TypeVar("T")
D = TypeVar("D")


# -- the scenario, as data ---------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SystemConfig:
    """The ``system`` section: the machine and its knobs at boot."""

    ram: int = 4 * GiB                 # bytes of physical memory
    paging: int = 4                    # page-table levels, 4 or 5
    pti: bool = False                  # page-table isolation (pagewalk extension)
    pcid: bool = True                  # process-context identifiers (pagewalk extension)
    pku: bool = True                   # protection keys: PROT_EXEC alone is execute-only
    sysfs: dict[str, str] = field(default_factory=dict, hash=False)  # path -> normalised value
    swap: int = 0                      # bytes of the swap file (version 3); 0: no swap
    memory_limit: int = 0              # bytes: the memory cgroup's limit (version 3); 0: none


@dataclass(frozen=True, slots=True)
class Range:
    """A part of a named mapping: ``[start + offset, start + offset + length)``."""

    region: str
    offset: int = 0                    # bytes from the mapping's start
    length: int | None = None          # bytes; None = to the end of the mapping


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """What every step has. ``kind`` is the step's key in the file."""

    kind: ClassVar[str] = ""
    index: int                         # 0-based position in ``steps``
    process: str = MAIN_PROCESS
    expect_error: Errno | None = None
    expect_signal: Signal | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MmapStep(Step):
    kind: ClassVar[str] = "mmap"
    name: str
    length: int                        # bytes, as given (the kernel rounds up)
    prot: int = PROT_READ | PROT_WRITE
    flags: frozenset[str] = DEFAULT_MMAP_FLAGS
    page_size: int | None = None       # hugetlb page size; None = the default (2 MiB)
    addr: int | None = None            # hint, or the address with fixed
    file: str | None = None            # version 2: the file mapped (None: anonymous)
    file_offset: int = 0               # bytes into the file (the kernel wants it page aligned)


@dataclass(frozen=True, slots=True, kw_only=True)
class MunmapStep(Step):
    kind: ClassVar[str] = "munmap"
    range: Range


@dataclass(frozen=True, slots=True, kw_only=True)
class MprotectStep(Step):
    kind: ClassVar[str] = "mprotect"
    range: Range
    prot: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MadviseStep(Step):
    kind: ClassVar[str] = "madvise"
    range: Range
    advice: str                        # one of MADVISE_ADVICE


@dataclass(frozen=True, slots=True, kw_only=True)
class TouchStep(Step):
    kind: ClassVar[str] = "touch"
    range: Range
    access: str = "write"              # "read" or "write"
    stride: int = 4 * KiB              # bytes between accesses, > 0


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteStep(Step):
    kind: ClassVar[str] = "write"
    region: str
    offset: int = 0
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadStep(Step):
    kind: ClassVar[str] = "read"
    region: str
    offset: int = 0
    length: int                        # bytes
    expect: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ForkStep(Step):
    kind: ClassVar[str] = "fork"
    name: str                          # the child's process name


@dataclass(frozen=True, slots=True, kw_only=True)
class ExitStep(Step):
    kind: ClassVar[str] = "exit"       # ``process`` exits and is reaped


@dataclass(frozen=True, slots=True, kw_only=True)
class SetStep(Step):
    kind: ClassVar[str] = "set"
    knobs: dict[str, str] = field(hash=False)   # path as written -> normalised value


@dataclass(frozen=True, slots=True, kw_only=True)
class MeasureStep(Step):
    kind: ClassVar[str] = "measure"
    label: str


@dataclass(frozen=True, slots=True, kw_only=True)
class KhugepagedStep(Step):
    kind: ClassVar[str] = "khugepaged"
    scans: int = 1                     # full passes over every registered mm


@dataclass(frozen=True, slots=True, kw_only=True)
class BrkStep(Step):
    kind: ClassVar[str] = "brk"
    delta: int                         # bytes, may be negative: brk(break + delta)


@dataclass(frozen=True, slots=True, kw_only=True)
class MremapStep(Step):
    kind: ClassVar[str] = "mremap"
    range: Range                       # the old range
    new_length: int
    flags: frozenset[str] = frozenset()   # of MREMAP_FLAGS
    addr: int | None = None            # with fixed
    name: str | None = None            # with dontunmap: the new mapping's name


@dataclass(frozen=True, slots=True, kw_only=True)
class MlockStep(Step):
    kind: ClassVar[str] = "mlock"
    range: Range
    onfault: bool = False              # mlock2(MLOCK_ONFAULT)


@dataclass(frozen=True, slots=True, kw_only=True)
class MunlockStep(Step):
    kind: ClassVar[str] = "munlock"
    range: Range


@dataclass(frozen=True, slots=True, kw_only=True)
class MlockallStep(Step):
    kind: ClassVar[str] = "mlockall"
    flags: frozenset[str]              # of MLOCKALL_FLAGS, with current or future


@dataclass(frozen=True, slots=True, kw_only=True)
class MunlockallStep(Step):
    kind: ClassVar[str] = "munlockall"


@dataclass(frozen=True, slots=True, kw_only=True)
class FileStep(Step):
    kind: ClassVar[str] = "file"
    name: str
    size: int                          # bytes, every one 0x00
    fs: str = "disk"                   # one of FILE_SYSTEMS


@dataclass(frozen=True, slots=True, kw_only=True)
class TruncateStep(Step):
    kind: ClassVar[str] = "truncate"
    file: str
    size: int


@dataclass(frozen=True, slots=True, kw_only=True)
class FadviseStep(Step):
    kind: ClassVar[str] = "fadvise"
    file: str
    advice: str = "dontneed"           # one of FADVISE_ADVICE


@dataclass(frozen=True, slots=True, kw_only=True)
class MsyncStep(Step):
    kind: ClassVar[str] = "msync"
    range: Range
    flags: frozenset[str] = frozenset({"sync"})   # of MSYNC_FLAGS (the kernel judges them)


@dataclass(frozen=True, slots=True, kw_only=True)
class UnlinkStep(Step):
    kind: ClassVar[str] = "unlink"
    file: str


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str
    system: SystemConfig
    steps: tuple[Step, ...]
    file: str


# -- where a value sits, and reading maps ------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Where:
    """The location of a value being read: file, step index and dotted field path."""

    file: str
    step: int | None
    field: str

    def child(self, key: object) -> _Where:
        name = str(key)
        return _Where(self.file, self.step, f"{self.field}.{name}" if self.field else name)

    def error(self, message: str) -> ScenarioError:
        return ScenarioError(message, Location(self.file, self.step, self.field or None))


class _Fields:
    """A YAML map being read field by field; unknown keys are refused up front."""

    __slots__ = ("data", "where")

    def __init__(self, data: object, where: _Where, allowed: tuple[str, ...], what: str) -> None:
        if not isinstance(data, dict):
            raise where.error(f"{what} must be a map of fields ({', '.join(allowed)}), "
                              f"got {_show(data)}")
        for key in data:
            if key not in allowed:
                raise where.child(key).error(
                    f"unknown field {_show(key)} in {what}; allowed: {', '.join(allowed)}")
        self.data: dict[Any, Any] = data
        self.where = where

    def required(self, key: str, convert: Callable[[object, _Where], T]) -> T:
        if key not in self.data:
            raise self.where.child(key).error(f"missing required field '{key}'")
        return convert(self.data[key], self.where.child(key))

    def optional(self, key: str, convert: Callable[[object, _Where], T], default: D) -> T | D:
        if key not in self.data:
            return default
        return convert(self.data[key], self.where.child(key))


def _show(value: object) -> str:
    """A short repr for messages (numbers too long for repr() shown by their size)."""
    if isinstance(value, int) and value.bit_length() > 256:
        return f"a {value.bit_length()}-bit number"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- value converters: (value, where) -> typed value, or ScenarioError -------------------

def _string(value: object, where: _Where) -> str:
    if not isinstance(value, str):
        hint = "" if isinstance(value, (list, dict)) or value is None else "; quote it"
        raise where.error(f"expected a string, got {_show(value)} "
                          f"({type(value).__name__}){hint}")
    return value


def _matching(pattern: re.Pattern[str], what: str) -> Callable[[object, _Where], str]:
    def convert(value: object, where: _Where) -> str:
        text = _string(value, where)
        if not pattern.fullmatch(text):
            raise where.error(f"{what} must match {pattern.pattern}, got {_show(text)}")
        return text
    return convert


_scenario_name = _matching(_SCENARIO_NAME, "a scenario name")
_object_name = _matching(_OBJECT_NAME, "a name")


def _label(value: object, where: _Where) -> str:
    text = _string(value, where)
    if not text.strip():
        raise where.error("expected a non-empty label")
    return text


def _description(value: object, where: _Where) -> str:
    return "" if value is None else _string(value, where)


def _bool(value: object, where: _Where) -> bool:
    if not isinstance(value, bool):
        raise where.error(f"expected true or false, got {_show(value)}")
    return value


def _below_limit(number: int, what: str, where: _Where) -> int:
    if number >= ADDRESS_LIMIT:
        raise where.error(f"{what} {_show(number)} does not fit in 64 bits")
    return number


def _size(value: object, where: _Where) -> int:
    try:
        size = parse_size(value)
    except ValueError as err:
        raise where.error(str(err)) from None
    return _below_limit(size, "size", where)


def _signed_size(value: object, where: _Where) -> int:
    """A size that may be negative: ``-64KiB``, ``-4096``."""
    negative = False
    if isinstance(value, str) and value.strip().startswith("-"):
        negative, value = True, value.strip()[1:]
    elif isinstance(value, int) and not isinstance(value, bool) and value < 0:
        negative, value = True, -value
    size = _size(value, where)
    return -size if negative else size


def _region_name(value: object, where: _Where) -> str:
    """A mapping name, or the reserved ``[heap]``."""
    if value == HEAP_REGION:
        return HEAP_REGION
    return _object_name(value, where)


def _mapping_name(value: object, where: _Where) -> str:
    """The name a step gives a new mapping; ``[heap]`` is reserved."""
    if value == HEAP_REGION:
        raise where.error(f"{HEAP_REGION!r} is reserved for the heap; choose another name")
    return _object_name(value, where)


def _flag_list(allowed: tuple[str, ...]) -> Callable[[object, _Where], frozenset[str]]:
    def convert(value: object, where: _Where) -> frozenset[str]:
        if value is None:
            return frozenset()
        if not isinstance(value, list):
            raise where.error(f"expected a list of flags ({', '.join(allowed)}), "
                              f"got {_show(value)}")
        for position, flag in enumerate(value):
            if flag not in allowed:
                raise where.child(position).error(
                    f"unknown flag {_show(flag)}; allowed: {', '.join(allowed)}")
            if value.index(flag) != position:
                raise where.child(position).error(f"flag '{flag}' is listed twice")
        return frozenset(value)
    return convert


def _positive_size(value: object, where: _Where) -> int:
    size = _size(value, where)
    if size == 0:
        raise where.error("expected a size greater than 0, got 0")
    return size


def _addr(value: object, where: _Where) -> int:
    try:
        addr = parse_addr(value)
    except ValueError as err:
        raise where.error(str(err)) from None
    return _below_limit(addr, "address", where)


def _count(value: object, where: _Where) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise where.error(f"expected an integer >= 1, got {_show(value)}")
    return value


def _choice(options: tuple[str, ...]) -> Callable[[object, _Where], str]:
    def convert(value: object, where: _Where) -> str:
        if value not in options:
            allowed = " or ".join(f"'{o}'" for o in options) if len(options) == 2 else \
                "one of " + ", ".join(options)
            raise where.error(f"expected {allowed}, got {_show(value)}")
        return str(value)
    return convert


_access = _choice(ACCESS_KINDS)
_advice = _choice(MADVISE_ADVICE)


def _prot(value: object, where: _Where) -> int:
    """'none', or the letters r, w, x (each at most once, any order) -> PROT_* bits."""
    allowed = "expected 'none' or letters from 'rwx' (each once), like 'r', 'rw', 'rwx'"
    if value == "none":
        return PROT_NONE
    if not isinstance(value, str) or not value or len(set(value)) != len(value) \
            or not set(value) <= set(_PROT_LETTERS):
        raise where.error(f"{allowed}; got {_show(value)}")
    prot = PROT_NONE
    for letter in value:
        prot |= _PROT_LETTERS[letter]
    return prot


def _errno(value: object, where: _Where) -> Errno:
    if not isinstance(value, str) or value not in Errno.__members__:
        raise where.error(f"expected an errno name ({', '.join(Errno.__members__)}), "
                          f"got {_show(value)}")
    return Errno[value]


def _signal(value: object, where: _Where) -> Signal:
    names = [signal.name for signal in EXPECTABLE_SIGNALS]
    if not isinstance(value, str) or value not in names:
        raise where.error(f"expected {' or '.join(names)}, got {_show(value)}")
    return Signal[value]


def _utf8(value: object, where: _Where) -> bytes:
    text = _string(value, where)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise where.error(f"{_show(text)} cannot be encoded as UTF-8") from None


def _mapping_or_empty(value: object) -> object:
    """``key:`` with no value is an empty map."""
    return {} if value is None else value


# -- mmap flags --------------------------------------------------------------------------

def _mmap_flags(file: str | None) -> Callable[[object, _Where], frozenset[str]]:
    def convert(value: object, where: _Where) -> frozenset[str]:
        flags = _flag_names(value, where)
        _check_flag_combination(flags, where, file)
        return flags
    return convert


def _flag_names(value: object, where: _Where) -> frozenset[str]:
    if not isinstance(value, list):
        raise where.error(f"expected a list of flags ({', '.join(MMAP_FLAGS)}), "
                          f"got {_show(value)}")
    for position, flag in enumerate(value):
        if flag not in MMAP_FLAGS:
            raise where.child(position).error(
                f"unknown flag {_show(flag)}; allowed: {', '.join(MMAP_FLAGS)}")
        if value.index(flag) != position:
            raise where.child(position).error(f"flag '{flag}' is listed twice")
    return frozenset(value)


def _check_flag_combination(flags: frozenset[str], where: _Where,
                            file: str | None = None) -> None:
    if file is None and "anonymous" not in flags:
        raise where.error("flags must include 'anonymous', or the mapping needs a 'file' "
                          "(version 2)")
    if file is not None and "anonymous" in flags:
        raise where.error(f"a mapping of file {_show(file)} is not 'anonymous'; "
                          "give 'private' or 'shared'")
    if file is not None and "hugetlb" in flags:
        raise where.error("'hugetlb' maps no file of the scenario's (hugetlbfs files are "
                          "not part of the format)")
    if {"private", "shared"} <= flags:
        raise where.error("'private' and 'shared' exclude each other; give one of them")


def _page_size(flags: frozenset[str]) -> Callable[[object, _Where], int]:
    def convert(value: object, where: _Where) -> int:
        if "hugetlb" not in flags:
            raise where.error("page_size is only allowed with the 'hugetlb' flag")
        size = _size(value, where)
        if size not in HUGETLB_PAGE_SIZES:
            raise where.error(f"expected 2MiB or 1GiB, got {_show(value)}")
        return size
    return convert


# -- steps -------------------------------------------------------------------------------

_StepParser = Callable[[object, _Where, int], Step]


def _base(fields: _Fields, index: int) -> dict[str, Any]:
    """The common fields a step may carry: process, expect_error, expect_signal."""
    base: dict[str, Any] = {
        "index": index,
        "process": fields.optional("process", _object_name, MAIN_PROCESS),
        "expect_error": fields.optional("expect_error", _errno, None),
        "expect_signal": fields.optional("expect_signal", _signal, None),
    }
    if base["expect_error"] is not None and base["expect_signal"] is not None:
        raise fields.where.child("expect_signal").error(
            "a step expects an error or a signal, not both")
    return base


def _range(fields: _Fields) -> Range:
    return Range(region=fields.required("region", _region_name),
                 offset=fields.optional("offset", _size, 0),
                 length=fields.optional("length", _size, None))


def _parse_mmap(fields: _Fields, index: int) -> Step:
    file = fields.optional("file", _object_name, None)
    if file is None and "file_offset" in fields.data:
        raise fields.where.child("file_offset").error("field 'file_offset' needs 'file'")
    if file is not None and "flags" not in fields.data:
        raise fields.where.child("flags").error(
            "missing field 'flags': a file mapping needs 'private' or 'shared'")
    flags = fields.optional("flags", _mmap_flags(file), DEFAULT_MMAP_FLAGS)
    return MmapStep(**_base(fields, index), file=file,
                    file_offset=fields.optional("file_offset", _size, 0),
                    name=fields.required("name", _mapping_name),
                    length=fields.required("length", _size),
                    prot=fields.optional("prot", _prot, PROT_READ | PROT_WRITE),
                    flags=flags,
                    page_size=fields.optional("page_size", _page_size(flags), None),
                    addr=fields.optional("addr", _addr, None))


def _parse_munmap(fields: _Fields, index: int) -> Step:
    return MunmapStep(**_base(fields, index), range=_range(fields))


def _parse_mprotect(fields: _Fields, index: int) -> Step:
    return MprotectStep(**_base(fields, index), range=_range(fields),
                        prot=fields.required("prot", _prot))


def _parse_madvise(fields: _Fields, index: int) -> Step:
    return MadviseStep(**_base(fields, index), range=_range(fields),
                       advice=fields.required("advice", _advice))


def _parse_touch(fields: _Fields, index: int) -> Step:
    return TouchStep(**_base(fields, index), range=_range(fields),
                     access=fields.optional("access", _access, "write"),
                     stride=fields.optional("stride", _positive_size, 4 * KiB))


def _parse_write(fields: _Fields, index: int) -> Step:
    return WriteStep(**_base(fields, index),
                     region=fields.required("region", _object_name),
                     offset=fields.optional("offset", _size, 0),
                     data=fields.required("data", _utf8))


def _parse_read(fields: _Fields, index: int) -> Step:
    expect = fields.optional("expect", _utf8, None)
    return ReadStep(**_base(fields, index),
                    region=fields.required("region", _region_name),
                    offset=fields.optional("offset", _size, 0),
                    length=_read_length(fields, expect),
                    expect=expect)


def _read_length(fields: _Fields, expect: bytes | None) -> int:
    """``length``, or the length of ``expect``; both given must agree."""
    if expect is None:
        return fields.required("length", _size)
    length = fields.optional("length", _size, len(expect))
    if length != len(expect):
        raise fields.where.child("length").error(
            f"length {length} differs from the {len(expect)} bytes of 'expect' (UTF-8)")
    return length


def _parse_fork(fields: _Fields, index: int) -> Step:
    return ForkStep(**_base(fields, index), name=fields.required("name", _object_name))


def _parse_exit(fields: _Fields, index: int) -> Step:
    return ExitStep(index=index,
                    process=fields.optional("process", _object_name, MAIN_PROCESS))


def _parse_khugepaged(fields: _Fields, index: int) -> Step:
    return KhugepagedStep(index=index, scans=fields.optional("scans", _scans, 1))


def _scans(value: object, where: _Where) -> int:
    scans = _count(value, where)
    if scans > MAX_KHUGEPAGED_SCANS:
        raise where.error(f"at most {MAX_KHUGEPAGED_SCANS} khugepaged passes, got "
                          f"{_show(scans)} (a pass over 1 GiB of eligible memory takes "
                          "about 3 ms; passes after the first rarely change anything)")
    return scans


def _parse_brk(fields: _Fields, index: int) -> Step:
    return BrkStep(**_base(fields, index), delta=fields.required("delta", _signed_size))


def _parse_mremap(fields: _Fields, index: int) -> Step:
    flags = fields.optional("flags", _flag_list(MREMAP_FLAGS), frozenset())
    where = fields.where
    addr = fields.optional("addr", _addr, None)
    name = fields.optional("name", _mapping_name, None)
    if "fixed" in flags and addr is None:
        raise where.child("addr").error("missing field 'addr': it is required with flag 'fixed'")
    if "fixed" not in flags and addr is not None:
        raise where.child("addr").error("field 'addr' needs flag 'fixed'")
    if "dontunmap" in flags and name is None:
        raise where.child("name").error("missing field 'name': it is required with flag "
                                        "'dontunmap' (the name of the new mapping)")
    if "dontunmap" not in flags and name is not None:
        raise where.child("name").error("field 'name' needs flag 'dontunmap'")
    return MremapStep(**_base(fields, index), range=_range(fields),
                      new_length=fields.required("new_length", _size),
                      flags=flags, addr=addr, name=name)


def _parse_mlock(fields: _Fields, index: int) -> Step:
    flags = fields.optional("flags", _flag_list(MLOCK_FLAGS), frozenset())
    return MlockStep(**_base(fields, index), range=_range(fields), onfault="onfault" in flags)


def _parse_munlock(fields: _Fields, index: int) -> Step:
    return MunlockStep(**_base(fields, index), range=_range(fields))


def _parse_mlockall(fields: _Fields, index: int) -> Step:
    flags = fields.required("flags", _flag_list(MLOCKALL_FLAGS))
    if not flags & {"current", "future"}:
        raise fields.where.child("flags").error(
            "expected at least one of 'current' and 'future' (with 'onfault' alone "
            "mlockall is EINVAL)")
    return MlockallStep(**_base(fields, index), flags=flags)


def _parse_munlockall(fields: _Fields, index: int) -> Step:
    return MunlockallStep(**_base(fields, index))


def _parse_file(fields: _Fields, index: int) -> Step:
    return FileStep(**_base(fields, index), name=fields.required("name", _object_name),
                    size=fields.required("size", _size),
                    fs=fields.optional("fs", _choice(FILE_SYSTEMS), "disk"))


def _parse_truncate(fields: _Fields, index: int) -> Step:
    return TruncateStep(**_base(fields, index), file=fields.required("file", _object_name),
                        size=fields.required("size", _size))


def _parse_fadvise(fields: _Fields, index: int) -> Step:
    return FadviseStep(**_base(fields, index), file=fields.required("file", _object_name),
                       advice=fields.required("advice", _choice(FADVISE_ADVICE)))


def _parse_msync(fields: _Fields, index: int) -> Step:
    return MsyncStep(**_base(fields, index), range=_range(fields),
                     flags=fields.optional("flags", _flag_list(MSYNC_FLAGS),
                                           frozenset({"sync"})))


def _parse_unlink(fields: _Fields, index: int) -> Step:
    return UnlinkStep(**_base(fields, index), file=fields.required("file", _object_name))


def _map_step(kind: str, parse: Callable[[_Fields, int], Step], allowed: tuple[str, ...],
              accepts_none: bool = False) -> _StepParser:
    """A step whose value is a map of ``allowed`` fields. A call (a step that may expect
    an errno) may expect a signal too, but only SIGKILL: the OOM killer's (version 3)."""
    def parser(value: object, where: _Where, index: int) -> Step:
        data = _mapping_or_empty(value) if accepts_none else value
        step = parse(_Fields(data, where, allowed, f"a {kind} step"), index)
        if "expect_error" in allowed and step.expect_signal not in (None, Signal.SIGKILL):
            raise where.child("expect_signal").error(
                f"a {kind} step can only be killed (SIGKILL, the OOM killer), "
                f"got {step.expect_signal.name}")
        return step
    return parser


def _parse_set(value: object, where: _Where, index: int) -> Step:
    if not isinstance(value, dict) or not value:
        raise where.error(f"expected a map of at least one knob path to its value, "
                          f"got {_show(value)}")
    return SetStep(index=index, knobs=_knob_values(value, where))


def _knob_values(value: dict[Any, Any], where: _Where) -> dict[str, str]:
    """Knob path -> normalised value, checked by the knob registry, in the order given."""
    result: dict[str, str] = {}
    for path, raw in value.items():
        at = where.child(path)
        name = _string(path, at)
        try:
            result[name] = knobs.normalise(name, raw)
        except ConfigError as err:
            raise at.error(err.message) from None
    return result


def _parse_measure(value: object, where: _Where, index: int) -> Step:
    return MeasureStep(index=index, label=_label(value, where))


_RANGE = ("region", "offset", "length")
_CALL = ("process", "expect_error", "expect_signal")
_ACCESS = ("process", "expect_signal")

_STEP_PARSERS: Mapping[str, _StepParser] = MappingProxyType({
    "mmap": _map_step("mmap", _parse_mmap, ("name", "length", "prot", "flags", "page_size",
                                            "addr", "file", "file_offset") + _CALL),
    "munmap": _map_step("munmap", _parse_munmap, _RANGE + _CALL),
    "mprotect": _map_step("mprotect", _parse_mprotect, _RANGE + ("prot",) + _CALL),
    "madvise": _map_step("madvise", _parse_madvise, _RANGE + ("advice",) + _CALL),
    "touch": _map_step("touch", _parse_touch, _RANGE + ("access", "stride") + _ACCESS),
    "write": _map_step("write", _parse_write, ("region", "offset", "data") + _ACCESS),
    "read": _map_step("read", _parse_read, ("region", "offset", "length", "expect") + _ACCESS),
    "fork": _map_step("fork", _parse_fork, ("name",) + _CALL),
    "exit": _map_step("exit", _parse_exit, ("process",)),
    "set": _parse_set,
    "measure": _parse_measure,
    "khugepaged": _map_step("khugepaged", _parse_khugepaged, ("scans",), accepts_none=True),
    "brk": _map_step("brk", _parse_brk, ("delta",) + _CALL),
    "mremap": _map_step("mremap", _parse_mremap,
                        _RANGE + ("new_length", "flags", "addr", "name") + _CALL),
    "mlock": _map_step("mlock", _parse_mlock, _RANGE + ("flags",) + _CALL),
    "munlock": _map_step("munlock", _parse_munlock, _RANGE + _CALL),
    "mlockall": _map_step("mlockall", _parse_mlockall, ("flags",) + _CALL),
    "munlockall": _map_step("munlockall", _parse_munlockall, _CALL, accepts_none=True),
    "file": _map_step("file", _parse_file, ("name", "size", "fs") + _CALL),
    "truncate": _map_step("truncate", _parse_truncate, ("file", "size") + _CALL),
    "fadvise": _map_step("fadvise", _parse_fadvise, ("file", "advice") + _CALL),
    "msync": _map_step("msync", _parse_msync, _RANGE + ("flags",) + _CALL),
    "unlink": _map_step("unlink", _parse_unlink, ("file",) + _CALL),
})


def _parse_step(item: object, where: _Where, index: int) -> Step:
    """One ``- kind: value`` item."""
    kind, value = _step_kind(item, where)
    return _STEP_PARSERS[kind](value, where.child(kind), index)


def _step_kind(item: object, where: _Where) -> tuple[str, object]:
    """The step type of a one-key map, and its value."""
    known = ", ".join(_STEP_PARSERS)
    if not isinstance(item, dict) or not item:
        raise where.error(f"a step is a one-key map like '- mmap: {{...}}' ({known}), "
                          f"got {_show(item)}")
    if len(item) > 1:
        keys = ", ".join(_show(key) for key in item)
        raise where.error(f"a step is a one-key map, got keys {keys} "
                          "(are the fields indented under the step type?)")
    ((kind, value),) = item.items()
    if not isinstance(kind, str) or kind not in _STEP_PARSERS:
        raise where.child(kind).error(f"unknown step type {_show(kind)}; allowed: {known}")
    return kind, value


# -- static checks across steps ----------------------------------------------------------

class _Timeline:
    """Which processes are alive and which mappings each knows, step by step."""

    __slots__ = ("exited", "files", "labels", "lengths", "mappings")

    def __init__(self) -> None:
        self.mappings: dict[str, dict[str, int]] = {MAIN_PROCESS: {}}  # process -> name -> step
        # process -> name -> the length the runner resolves the name to (runner.py's maps:
        # the mmap's length rounded to its page size, or the last mremap's new length)
        self.lengths: dict[str, dict[str, int]] = {MAIN_PROCESS: {}}
        self.exited: dict[str, int] = {}
        self.labels: dict[str, int] = {}
        self.files: dict[str, FileStep] = {}   # file name -> the step that made it

    def check(self, step: Step, where: _Where) -> None:
        """Refuse ``step`` if it cannot make sense at this point, then record its effect."""
        if isinstance(step, MeasureStep):
            self._measure(step, where)
            return
        if isinstance(step, (SetStep, KhugepagedStep)):
            return
        self._require_live(step.process, where.child("process"))
        self._require_region(step, where.child("region"))
        self._require_inside(step, where.child("offset"))
        self._require_file(step, where.child("file"))
        self._record(step, where)
        self._record_length(step)

    def _require_file(self, step: Step, where: _Where) -> None:
        """A file step names a file an earlier ``file`` step made (the scenario keeps it
        open to the end: truncate and mmap reach it after an unlink too)."""
        name = step.file if isinstance(step, (MmapStep, TruncateStep, FadviseStep,
                                              UnlinkStep)) else None
        if name is None:
            return
        made = self.files.get(name)
        if made is None:
            known = ", ".join(self.files) or "none"
            raise where.error(f"no file {_show(name)} from an earlier file step; "
                              f"files: {known}")
        if isinstance(step, UnlinkStep) and made.fs == "memfd":
            raise where.error(f"file {_show(name)} is a memfd: it has no name to unlink")

    def _measure(self, step: MeasureStep, where: _Where) -> None:
        if step.label in self.labels:
            raise where.error(f"measure label {_show(step.label)} is already used by "
                              f"step {self.labels[step.label]}; labels must be unique")
        self.labels[step.label] = step.index

    def _require_live(self, process: str, where: _Where) -> None:
        if process in self.mappings:
            return
        live = ", ".join(self.mappings) or "none"
        if process in self.exited:
            raise where.error(f"process {_show(process)} exited at step "
                              f"{self.exited[process]}; live processes: {live}")
        raise where.error(f"no process {_show(process)}; live processes: {live} "
                          "(a process is made by a fork step)")

    def _require_region(self, step: Step, where: _Where) -> None:
        region = _region_of(step)
        if region is None or region == HEAP_REGION or region in self.mappings[step.process]:
            return
        known = ", ".join(self.mappings[step.process]) or "none"
        raise where.error(f"process {_show(step.process)} has no mapping named "
                          f"{_show(region)} from an earlier mmap step; its mappings: {known}")

    def _require_inside(self, step: Step, where: _Where) -> None:
        """A range without a length runs from its offset to the end of its mapping: an
        offset at or past that end makes it empty, a step that would do nothing."""
        rng = getattr(step, "range", None)
        if not isinstance(rng, Range) or rng.length is not None:
            return
        length = self.lengths[step.process].get(rng.region)
        if length is not None and rng.offset >= length:
            raise where.error(range_past_end(rng, length))

    def _record_length(self, step: Step) -> None:
        """What the runner records of a mapping's length; a step expecting an error
        changes nothing (when it does not fail, the run stops there)."""
        lengths = self.lengths.get(step.process)
        if lengths is None or step.expect_error is not None:
            return
        if isinstance(step, MmapStep) and step.length:      # length 0: EINVAL, nothing made
            page = (step.page_size or 2 * MiB) if "hugetlb" in step.flags else 4 * KiB
            lengths[step.name] = -(-step.length // page) * page
        elif isinstance(step, MremapStep):
            name = step.name if step.name is not None else step.range.region
            if name != HEAP_REGION:
                lengths[name] = -(-step.new_length // (4 * KiB)) * (4 * KiB)

    def _record(self, step: Step, where: _Where) -> None:
        if isinstance(step, FileStep):
            if step.name in self.files:
                raise where.child("name").error(
                    f"file {_show(step.name)} already exists (step "
                    f"{self.files[step.name].index}); file names are unique in a scenario")
            self.files[step.name] = step
        elif isinstance(step, MmapStep):
            self._mmap(step, where.child("name"))
        elif isinstance(step, MremapStep) and step.name is not None:
            self._new_name(step.process, step.name, step.index, where.child("name"))
        elif isinstance(step, ForkStep):
            self._fork(step, where.child("name"))
            self.lengths[step.name] = dict(self.lengths[step.process])
        elif isinstance(step, ExitStep):
            del self.mappings[step.process]
            del self.lengths[step.process]
            self.exited[step.process] = step.index

    def _mmap(self, step: MmapStep, where: _Where) -> None:
        self._new_name(step.process, step.name, step.index, where)

    def _new_name(self, process: str, name: str, index: int, where: _Where) -> None:
        names = self.mappings[process]
        if name in names:
            raise where.error(f"process {_show(process)} already has a mapping named "
                              f"{_show(name)} (step {names[name]}); mapping names "
                              "are unique in a process")
        names[name] = index

    def _fork(self, step: ForkStep, where: _Where) -> None:
        if step.name in self.mappings:
            raise where.error(f"process {_show(step.name)} is alive; "
                              "a forked child needs a new name")
        self.mappings[step.name] = dict(self.mappings[step.process])


def range_past_end(rng: Range, length: int) -> str:
    """The message for a range without a length whose offset is not inside its mapping
    of ``length`` bytes (the runner says the same of ``[heap]``)."""
    where = "at" if rng.offset == length else "past"
    return (f"offset {format_size(rng.offset)} is {where} the end of region "
            f"{_show(rng.region)} ({format_size(length)}): the range to its end is empty; "
            "give a length to reach beyond the mapping")


def _region_of(step: Step) -> str | None:
    """The mapping a step works on, if any."""
    if isinstance(step, (MunmapStep, MprotectStep, MadviseStep, TouchStep, MremapStep,
                         MlockStep, MunlockStep, MsyncStep)):
        return step.range.region
    if isinstance(step, (WriteStep, ReadStep)):
        return step.region
    return None


# -- top level ---------------------------------------------------------------------------

def _steps(value: object, where: _Where) -> tuple[Step, ...]:
    if not isinstance(value, list):
        raise where.error(f"expected a list of steps, got {_show(value)}")
    timeline = _Timeline()
    steps: list[Step] = []
    for index, item in enumerate(value):
        at = _Where(where.file, index, f"steps[{index}]")
        step = _parse_step(item, at, index)
        timeline.check(step, at.child(step.kind))
        steps.append(step)
    return tuple(steps)


def _ram(value: object, where: _Where) -> int:
    ram = _size(value, where)
    if not RAM_MIN <= ram <= RAM_MAX or ram % RAM_ALIGN:
        raise where.error(f"expected a multiple of 4MiB from 64MiB to 1TiB, "
                          f"got {format_size(ram)}")
    return ram


def _paging(value: object, where: _Where) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in PAGING_LEVELS:
        raise where.error(f"expected 4 or 5 (page-table levels), got {_show(value)}")
    return value


def _sysfs(value: object, where: _Where) -> dict[str, str]:
    value = _mapping_or_empty(value)
    if not isinstance(value, dict):
        raise where.error(f"expected a map of knob path to value, got {_show(value)}")
    return _knob_values(value, where)


def _swap(value: object, where: _Where) -> int:
    size = _size(value, where)
    if size < SWAP_MIN or size % 4096:
        raise where.error(f"expected a swap file size of whole 4KiB pages, at least 40KiB "
                          f"(mkswap's 10 pages), got {format_size(size)}")
    return size


def _memory_limit(value: object, where: _Where) -> int:
    size = _size(value, where)
    if size < 4096 or size % 4096:
        raise where.error(f"expected a memory cgroup limit of whole 4KiB pages, got "
                          f"{format_size(size)}")
    return size


def _system(value: object, where: _Where) -> SystemConfig:
    fields = _Fields(_mapping_or_empty(value), where, _SYSTEM_FIELDS, "system")
    return SystemConfig(ram=fields.optional("ram", _ram, 4 * GiB),
                        paging=fields.optional("paging", _paging, 4),
                        pti=fields.optional("pti", _bool, False),
                        pcid=fields.optional("pcid", _bool, True),
                        pku=fields.optional("pku", _bool, True),
                        sysfs=fields.optional("sysfs", _sysfs, {}),
                        swap=fields.optional("swap", _swap, 0),
                        memory_limit=fields.optional("memory_limit", _memory_limit, 0))


def _scenario(document: object, file: str) -> Scenario:
    where = _Where(file, None, "")
    if document is None:
        raise where.error("the scenario is empty; it needs 'name' and 'steps'")
    fields = _Fields(document, where, _TOP_FIELDS, "the scenario")
    return Scenario(name=fields.required("name", _scenario_name),
                    description=fields.optional("description", _description, ""),
                    system=fields.optional("system", _system, SystemConfig()),
                    steps=fields.required("steps", _steps),
                    file=file)


# -- YAML --------------------------------------------------------------------------------

class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:
                continue          # unhashable: SafeLoader reports it below
            if first is not key_node:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {_show(key)} "
                    f"(first at line {first.start_mark.line + 1})", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str, file: str) -> object:
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as err:
        raise ScenarioError(_yaml_message(err), Location(file)) from None
    except (yaml.YAMLError, ValueError, TypeError, OverflowError) as err:
        raise ScenarioError(f"YAML error: {err}", Location(file)) from None
    except RecursionError:
        raise ScenarioError("YAML error: nested too deeply", Location(file)) from None


def _yaml_message(err: yaml.MarkedYAMLError) -> str:
    mark = err.problem_mark or err.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = err.problem or err.context or "invalid YAML"
    kind = "YAML error" if isinstance(err, yaml.constructor.ConstructorError) else \
        "YAML syntax error"
    return f"{kind}{where}: {problem}"


# -- public ------------------------------------------------------------------------------

def parse_scenario(text: str, file: str) -> Scenario:
    """The scenario in ``text`` (YAML or JSON); ``file`` names it in errors."""
    return _scenario(_load_yaml(text, file), file)


def load_scenario(path: str | Path) -> Scenario:
    """Read and check the scenario file at ``path``."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ScenarioError(f"cannot read the scenario: {err}", Location(file)) from None
    return parse_scenario(text, file)


__all__ = [
    "ACCESS_KINDS",
    "DEFAULT_MMAP_FLAGS",
    "EXPECTABLE_SIGNALS",
    "HEAP_REGION",
    "HUGETLB_PAGE_SIZES",
    "MADVISE_ADVICE",
    "MAIN_PROCESS",
    "MMAP_FLAGS",
    "PROT_EXEC",
    "PROT_NONE",
    "PROT_READ",
    "PROT_WRITE",
    "BrkStep",
    "ExitStep",
    "ForkStep",
    "KhugepagedStep",
    "MadviseStep",
    "MeasureStep",
    "MlockStep",
    "MlockallStep",
    "MmapStep",
    "MprotectStep",
    "MremapStep",
    "MunlockStep",
    "MunlockallStep",
    "MunmapStep",
    "Range",
    "ReadStep",
    "Scenario",
    "SetStep",
    "Step",
    "SystemConfig",
    "TouchStep",
    "WriteStep",
    "load_scenario",
    "parse_scenario",
    "range_past_end",
]
