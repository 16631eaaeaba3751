"""The knob registry: every /sys and /proc file a scenario may write, keyed by its path.

Models the writable memory-management tunables of Linux 6.18 that pagewalk simulates,
with the defaults of the reference machine (linux-mm-notes.md sections 0, 4.1 and 6.1)
and the input rules of the kernel's store handlers:

* ``/sys/kernel/mm/transparent_hugepage/*`` -- ``enabled_store``, ``defrag_store``,
  ``single_hugepage_flag_store`` (use_zero_page, khugepaged/defrag),
  ``thpsize_enabled_store`` (mTHP ``hugepages-<N>kB/enabled``), ``shmem_enabled_store``
  and ``thpsize_shmem_enabled_store`` (``hugepages-<N>kB/shmem_enabled``, mm/shmem.c);
  khugepaged's ``max_ptes_*``, ``pages_to_scan`` and ``*_sleep_millisecs``
  (mm/khugepaged.c).
* ``/sys/kernel/mm/hugepages/hugepages-<N>kB/nr_(overcommit_)hugepages`` and their
  ``/proc/sys/vm`` twins for the default (2 MiB) size -- ``nr_hugepages_store``,
  ``nr_overcommit_hugepages_store``, ``hugetlb_sysctl_handler`` (mm/hugetlb.c). The /proc
  files are *aliases*: they are the same pool as ``hugepages-2048kB``, so a value lives
  once, under the sysfs path.

Besides the per-file rules (:func:`normalise`), a store handler may refuse a value because
of another knob's value (:meth:`KnobValues.set`, EINVAL): ``shmem_enabled`` takes
``force`` only while ``huge_shmem_orders_inherit`` is exactly the PMD order, and a
non-PMD ``hugepages-<N>kB/shmem_enabled`` takes ``inherit`` only while ``shmem_enabled``
is not ``force``. ``hugepages-1048576kB/nr_overcommit_hugepages`` refuses every write
(gigantic pages have no surplus).
* ``/proc/sys/vm/overcommit_memory`` and ``overcommit_ratio`` (mm/util.c, kernel/sysctl.c).
* ``/sys/block/vda/queue/read_ahead_kb`` (version 2): the root disk's readahead window.

A value is always held as the string the kernel file would hold: the selected word for
a choice (``madvise``, where the file shows ``always [madvise] never``) and the decimal
number for a count (an int ``16`` and a string ``"16\\n"`` both become ``"16"``).

Two deliberate narrowings of what the kernel accepts, both for values no scenario
needs: numbers are decimal only (the sysctl handlers would take leading blanks), and
``overcommit_ratio`` must not be negative (``proc_dointvec`` would store a negative
ratio, which then wraps in ``vm_commit_limit``).

``KNOBS`` is an immutable table of :class:`KnobSpec`; the values a running kernel holds
live in a :class:`KnobValues` per kernel, so two simulations never share a knob.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from pagewalk.errors import ConfigError, Location

THP = "/sys/kernel/mm/transparent_hugepage"
KHUGEPAGED = f"{THP}/khugepaged"
HUGEPAGES = "/sys/kernel/mm/hugepages"
VM = "/proc/sys/vm"

UINT_MAX = (1 << 32) - 1
ULONG_MAX = (1 << 64) - 1
INT_MAX = (1 << 31) - 1
KHUGEPAGED_MAX_PTES_LIMIT = 511      # HPAGE_PMD_NR - 1 (mm/khugepaged.c)
HPAGE_PMD_NR = 512

#: mTHP sizes with an anonymous ``enabled`` file: orders 2..9 (THP_ORDERS_ALL_ANON).
MTHP_SIZES_KB = (16, 32, 64, 128, 256, 512, 1024, 2048)
#: mTHP sizes with a ``shmem_enabled`` file: orders 1..9 (THP_ORDERS_ALL_FILE_DEFAULT).
SHMEM_MTHP_SIZES_KB = (8,) + MTHP_SIZES_KB
#: hugetlb sizes (hstates): 2 MiB (default) and 1 GiB (the CPU has pdpe1gb).
HUGETLB_SIZES_KB = (2048, 1048576)
GIGANTIC_SIZES_KB = (1048576,)       # hstate_is_gigantic(): order > MAX_PAGE_ORDER


@dataclass(frozen=True, slots=True)
class Choice:
    """A file that takes one word from a fixed list (``sysfs_streq`` against each)."""

    options: tuple[str, ...]

    def describe(self) -> str:
        return "one of " + ", ".join(self.options)

    def normalise(self, value: object) -> str:
        """The word, or ValueError saying what is allowed."""
        word = _strip_newline(value) if isinstance(value, str) else None
        if word not in self.options:
            raise ValueError(f"expected {self.describe()}; got {_show(value)}")
        return word


@dataclass(frozen=True, slots=True)
class Number:
    """A file that takes a decimal integer in ``[low, high]`` (kstrtoul/proc_do*vec_minmax)."""

    low: int
    high: int
    #: the file reads back a multiple of this (read_ahead_kb keeps whole pages)
    granule: int = 1

    def describe(self) -> str:
        if self.high - self.low == 1:
            return f"{self.low} or {self.high}"
        if self.high - self.low == 2:
            return f"{self.low}, {self.low + 1} or {self.high}"
        return f"an integer from {self.low} to {self.high}"

    def normalise(self, value: object) -> str:
        """The decimal string, or ValueError saying what is allowed."""
        number = _to_int(value)
        if number is None or not self.low <= number <= self.high:
            raise ValueError(f"expected {self.describe()}; got {_show(value)}")
        return str(number - number % self.granule)


KnobKind = Choice | Number


@dataclass(frozen=True, slots=True)
class KnobSpec:
    """One knob file.

    ``default`` is the value on the reference machine at boot. An alias (``alias_of``
    set) is another name for the file at ``alias_of``: it shares that file's value,
    default and kind. A file whose store handler answers every write with EINVAL has
    ``refused`` set: it keeps its default for ever.
    """

    path: str
    default: str
    kind: KnobKind
    doc: str
    alias_of: str | None = None
    #: why the store handler refuses every write with EINVAL (the file still reads back)
    refused: str | None = None


def _strip_newline(text: str) -> str:
    """What the store handlers compare: the written text without one trailing newline."""
    return text.removesuffix("\n")


def _to_int(value: object) -> int | None:
    """An int from an int or a plain decimal string; None for anything else (bools too)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        return None
    text = _strip_newline(value)
    if not text.isascii() or not text.isdigit() or len(text) > 40:
        return None
    return int(text)


def _show(value: object) -> str:
    """A short repr for messages (numbers too long for repr() shown by their size)."""
    if isinstance(value, int) and value.bit_length() > 256:
        return f"a {value.bit_length()}-bit number"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- the table ---------------------------------------------------------------------------

_THP_ENABLED = Choice(("always", "madvise", "never"))
_THP_DEFRAG = Choice(("always", "defer", "defer+madvise", "madvise", "never"))
_MTHP_ENABLED = Choice(("always", "inherit", "madvise", "never"))
_SHMEM_ENABLED = Choice(("always", "within_size", "advise", "never", "deny", "force"))
_MTHP_SHMEM_ENABLED = Choice(("always", "inherit", "within_size", "advise", "never"))
_FLAG = Number(0, 1)
_MAX_PTES = Number(0, KHUGEPAGED_MAX_PTES_LIMIT)
_PAGES = Number(0, ULONG_MAX)


def _thp_specs() -> tuple[KnobSpec, ...]:
    """transparent_hugepage/ (hugepage_attr group, mm/huge_memory.c)."""
    return (
        KnobSpec(f"{THP}/enabled", "madvise", _THP_ENABLED,
                 "THP for anonymous memory: every VMA, MADV_HUGEPAGE VMAs, or none"),
        KnobSpec(f"{THP}/defrag", "madvise", _THP_DEFRAG,
                 "how hard a THP fault allocates (vma_thp_gfp_mask)"),
        KnobSpec(f"{THP}/use_zero_page", "1", _FLAG,
                 "read faults map the huge zero page"),
        KnobSpec(f"{THP}/shmem_enabled", "never", _SHMEM_ENABLED,
                 "THP for shmem and shared anonymous memory"),
    )


def _mthp_specs() -> tuple[KnobSpec, ...]:
    """transparent_hugepage/hugepages-<N>kB/enabled (thpsize_enabled_store): 2 MiB
    inherits the global setting at boot (huge_anon_orders_inherit), the rest are never."""
    return tuple(
        KnobSpec(f"{THP}/hugepages-{size_kb}kB/enabled",
                 "inherit" if size_kb == 2048 else "never", _MTHP_ENABLED,
                 f"anonymous mTHP of {size_kb} kB")
        for size_kb in MTHP_SIZES_KB
    )


def _mthp_shmem_specs() -> tuple[KnobSpec, ...]:
    """transparent_hugepage/hugepages-<N>kB/shmem_enabled (thpsize_shmem_enabled_store):
    the orders anonymous shmem may use; shmem_init() makes 2 MiB inherit shmem_enabled
    (huge_shmem_orders_inherit = BIT(HPAGE_PMD_ORDER)) and the rest never."""
    return tuple(
        KnobSpec(f"{THP}/hugepages-{size_kb}kB/shmem_enabled",
                 "inherit" if size_kb == 2048 else "never", _MTHP_SHMEM_ENABLED,
                 f"shared anonymous (shmem) mTHP of {size_kb} kB")
        for size_kb in SHMEM_MTHP_SIZES_KB
    )


def _khugepaged_specs() -> tuple[KnobSpec, ...]:
    """transparent_hugepage/khugepaged/ (khugepaged_attr group, khugepaged_init())."""
    return (
        KnobSpec(f"{KHUGEPAGED}/defrag", "1", _FLAG, "khugepaged may direct-compact"),
        KnobSpec(f"{KHUGEPAGED}/max_ptes_none", str(KHUGEPAGED_MAX_PTES_LIMIT), _MAX_PTES,
                 "empty PTEs a collapse may fill"),
        KnobSpec(f"{KHUGEPAGED}/max_ptes_swap", "64", _MAX_PTES,
                 "swapped-out PTEs a collapse may read back"),
        KnobSpec(f"{KHUGEPAGED}/max_ptes_shared", "256", _MAX_PTES,
                 "shared PTEs a collapse may copy"),
        # pages_to_scan_store rejects 0.
        KnobSpec(f"{KHUGEPAGED}/pages_to_scan", str(HPAGE_PMD_NR * 8), Number(1, UINT_MAX),
                 "pages scanned per wake-up"),
        KnobSpec(f"{KHUGEPAGED}/scan_sleep_millisecs", "10000", Number(0, UINT_MAX),
                 "sleep between scans"),
        KnobSpec(f"{KHUGEPAGED}/alloc_sleep_millisecs", "60000", Number(0, UINT_MAX),
                 "sleep after a failed huge page allocation"),
    )


def _hugetlb_specs() -> tuple[KnobSpec, ...]:
    """hugepages/hugepages-<N>kB/ (hstate_attrs, mm/hugetlb.c) and the /proc/sys/vm twins
    of the default hstate (hugetlb_sysctl_handler, hugetlb_overcommit_handler)."""
    specs: list[KnobSpec] = []
    for size_kb in HUGETLB_SIZES_KB:
        specs.append(KnobSpec(f"{HUGEPAGES}/hugepages-{size_kb}kB/nr_hugepages", "0", _PAGES,
                              f"persistent pool of {size_kb} kB pages"))
        # nr_overcommit_hugepages_store(): hstate_is_gigantic(h) -> -EINVAL, whatever the text.
        refused = ("gigantic pages have no surplus pool: nr_overcommit_hugepages_store "
                   "refuses hstate_is_gigantic") if size_kb in GIGANTIC_SIZES_KB else None
        specs.append(KnobSpec(f"{HUGEPAGES}/hugepages-{size_kb}kB/nr_overcommit_hugepages",
                              "0", _PAGES, f"surplus limit of {size_kb} kB pages",
                              refused=refused))
    default = f"{HUGEPAGES}/hugepages-2048kB"
    specs.append(KnobSpec(f"{VM}/nr_hugepages", "0", _PAGES, "the default (2 MiB) pool",
                          alias_of=f"{default}/nr_hugepages"))
    specs.append(KnobSpec(f"{VM}/nr_overcommit_hugepages", "0", _PAGES,
                          "surplus limit of the default (2 MiB) pool",
                          alias_of=f"{default}/nr_overcommit_hugepages"))
    return tuple(specs)


def _overcommit_specs() -> tuple[KnobSpec, ...]:
    """vm.overcommit_* (mm/util.c __vm_enough_memory, vm_commit_limit)."""
    return (
        KnobSpec(f"{VM}/overcommit_memory", "0", Number(0, 2),
                 "0 heuristic, 1 always, 2 never (strict commit limit)"),
        KnobSpec(f"{VM}/overcommit_ratio", "50", Number(0, INT_MAX),
                 "percent of RAM in the commit limit under mode 2"),
    )


#: The root disk's readahead knob as the spec names it (the reference machine's disk is
#: vda; live runs map it to the disk that holds their files).
READ_AHEAD_KB = "/sys/block/vda/queue/read_ahead_kb"


def _block_specs() -> tuple[KnobSpec, ...]:
    """queue/read_ahead_kb (block/blk-sysfs.c queue_ra_store: kstrtoul, at most UINT_MAX,
    kept as bdi->ra_pages = kb >> 2, so it reads back in whole 4 KiB pages)."""
    return (KnobSpec(READ_AHEAD_KB, "8192", Number(0, UINT_MAX, granule=4),
                     "the root disk's readahead window in kB (ra_pages), taken by a file "
                     "at each open (file_ra_state_init)"),)


KNOB_SPECS: tuple[KnobSpec, ...] = (
    _thp_specs() + _mthp_specs() + _mthp_shmem_specs() + _khugepaged_specs()
    + _hugetlb_specs() + _overcommit_specs() + _block_specs()
)
#: The registry, read-only: path -> spec (aliases included).
KNOBS: Mapping[str, KnobSpec] = MappingProxyType({spec.path: spec for spec in KNOB_SPECS})


# -- lookups -----------------------------------------------------------------------------

def knob_spec(path: str) -> KnobSpec:
    """The spec of ``path``; ConfigError naming the path if pagewalk has no such knob."""
    spec = KNOBS.get(path) if isinstance(path, str) else None
    if spec is None:
        raise ConfigError(_unknown_knob_message(path), Location(field=str(path)))
    return spec


def _unknown_knob_message(path: object) -> str:
    close = difflib.get_close_matches(str(path), list(KNOBS), n=1, cutoff=0.8)
    if close:
        return f"unknown knob {_show(path)}; did you mean {close[0]}?"
    return f"unknown knob {_show(path)}; the knobs are: " + ", ".join(KNOBS)


def resolve(path: str) -> str:
    """The path that holds the value of ``path`` (itself unless it is an alias)."""
    spec = knob_spec(path)
    return spec.alias_of or spec.path


def normalise(path: str, value: object) -> str:
    """``value`` as the knob file would hold it; ConfigError naming the path and the
    allowed values if the kernel's store handler would refuse it (EINVAL)."""
    spec = knob_spec(path)
    if spec.refused is not None:
        raise ConfigError(f"EINVAL: the kernel refuses every write to this file "
                          f"({spec.refused}); got {_show(value)}", Location(field=path))
    try:
        return spec.kind.normalise(value)
    except ValueError as err:
        raise ConfigError(str(err), Location(field=path)) from None


# -- rules across knobs ------------------------------------------------------------------

SHMEM_ENABLED = f"{THP}/shmem_enabled"
SHMEM_PMD_SIZE_KB = 2048


def shmem_size_knob(size_kb: int) -> str:
    """The per-size shmem knob of ``size_kb`` (hugepages-<N>kB/shmem_enabled)."""
    return f"{THP}/hugepages-{size_kb}kB/shmem_enabled"


def cross_knob_refusal(values: Mapping[str, str], path: str, text: str) -> str | None:
    """Why the store handler of ``path`` refuses ``text`` given the other knobs (EINVAL),
    or None. mm/shmem.c: shmem_enabled_store refuses ``force`` unless
    huge_shmem_orders_inherit == BIT(HPAGE_PMD_ORDER); thpsize_shmem_enabled_store refuses
    ``inherit`` for a non-PMD order while shmem_enabled is ``force``."""
    if path == SHMEM_ENABLED and text == "force":
        inherit = [kb for kb in SHMEM_MTHP_SIZES_KB
                   if values[shmem_size_knob(kb)] == "inherit"]
        if inherit != [SHMEM_PMD_SIZE_KB]:
            shown = ", ".join(f"{kb}kB" for kb in inherit) or "none"
            return ("shmem_enabled takes force only while hugepages-2048kB alone inherits "
                    f"(huge_shmem_orders_inherit); inheriting now: {shown}")
    if path.endswith("/shmem_enabled") and path != SHMEM_ENABLED and text == "inherit" \
            and path != shmem_size_knob(SHMEM_PMD_SIZE_KB) and values[SHMEM_ENABLED] == "force":
        return "a non-PMD size may not inherit while shmem_enabled is force"
    return None


def defaults() -> dict[str, str]:
    """Canonical path -> boot value, in table order (aliases left out)."""
    return {spec.path: spec.default for spec in KNOB_SPECS if spec.alias_of is None}


# -- per-kernel values -------------------------------------------------------------------

class KnobValues:
    """The knob values of one simulated kernel, starting at the boot defaults.

    ``set``/``get`` accept an alias or the canonical path alike; the value is stored
    once, under the canonical path.
    """

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, object] | None = None) -> None:
        self._values: dict[str, str] = defaults()
        for path, value in (values or {}).items():
            self.set(path, value)

    def resolve(self, path: str) -> str:
        """The canonical path of ``path`` (see :func:`resolve`)."""
        return resolve(path)

    def get(self, path: str) -> str:
        """The value the file holds now."""
        return self._values[resolve(path)]

    def set(self, path: str, value: object) -> str:
        """Write ``value`` as root would; returns the stored string. A refused value
        (the file's own rule, or a rule across knobs) raises ConfigError and changes
        nothing."""
        text = normalise(path, value)
        canonical = resolve(path)
        refusal = cross_knob_refusal(self._values, canonical, text)
        if refusal is not None:
            raise ConfigError(f"EINVAL: {refusal}", Location(field=path))
        self._values[canonical] = text
        return text

    def items(self) -> Iterator[tuple[str, str]]:
        """(canonical path, value) for every knob, in table order."""
        return iter(list(self._values.items()))

    def copy(self) -> KnobValues:
        """An independent store with the same values."""
        twin = KnobValues()
        twin._values = dict(self._values)
        return twin

    def __repr__(self) -> str:
        changed = {path: value for path, value in self._values.items()
                   if value != KNOBS[path].default}
        return f"KnobValues({changed!r})"


__all__ = [
    "KNOBS", "KNOB_SPECS", "SHMEM_ENABLED", "Choice", "KnobKind", "KnobSpec", "KnobValues",
    "Number", "cross_knob_refusal", "defaults", "knob_spec", "normalise", "resolve",
    "shmem_size_knob",
]
