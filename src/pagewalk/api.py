"""The Python API (docs/api.md): what ``pagewalk run``, ``pagewalk trace`` and ``pagewalk
translate`` do, as functions that return the report instead of printing it.

A scenario is given the way the commands take one, or as data:

* a path (``str`` or ``os.PathLike``) to a scenario file, or the name of a built-in
  example (``pagewalk examples``): a file of that name wins, as on the command line;
* a ``str`` holding YAML (or JSON) text: any string with a line break, or that starts
  with ``{``; errors name the file ``<string>``;
* a mapping (``dict``) of the scenario's fields, as the YAML would load; errors name the
  file ``<dict>``;
* a :class:`~pagewalk.scenario.schema.Scenario` already loaded.

Bad input raises the :mod:`pagewalk.errors` types the command would report with exit
status 2 (ScenarioError, TraceError, ConfigError); a step the simulated kernel refuses
without an ``expect_error``/``expect_signal`` raises its KernelError (exit status 1 on
the command line). An argument of the wrong Python type is a TypeError.

>>> report = run("anon-4k-write-64m")
>>> report.measurements[-1].processes["main"]["minflt"]    # one fault per 4 KiB page
16384
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Union

from pagewalk.errors import ConfigError, Location, ScenarioError

if TYPE_CHECKING:
    import numpy.typing as npt

    from pagewalk.explain.translate import Explanation
    from pagewalk.scenario.runner import Report, ScenarioRun
    from pagewalk.scenario.schema import Scenario
    from pagewalk.trace.replay import PageSizeMap, TraceModel, TraceStats

ScenarioInput = Union[str, "os.PathLike[str]", Mapping[str, Any], "Scenario"]
STRING_FILE = "<string>"
DICT_FILE = "<dict>"


def load(scenario: ScenarioInput) -> Scenario:
    """The checked :class:`Scenario` of any of the forms the module docstring lists."""
    from pagewalk.scenario import schema
    if isinstance(scenario, schema.Scenario):
        return scenario
    if isinstance(scenario, Mapping):
        return schema.parse_scenario(_as_text(scenario), DICT_FILE)
    if isinstance(scenario, str) and ("\n" in scenario or scenario.lstrip().startswith("{")):
        return schema.parse_scenario(scenario, STRING_FILE)
    if isinstance(scenario, (str, os.PathLike)):
        from pagewalk.cli_common import resolve_scenario
        return schema.load_scenario(resolve_scenario(os.fspath(scenario)))
    raise TypeError(f"a scenario is a path, a built-in example name, YAML text, a dict or a "
                    f"Scenario, not {type(scenario).__name__}")


def _as_text(data: Mapping[str, Any]) -> str:
    """A scenario mapping as JSON text (YAML reads JSON), so that the schema checks it
    exactly as it checks a file."""
    try:
        return json.dumps(dict(data), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ScenarioError(f"not scenario data: {err}", Location(DICT_FILE)) from None


def run(scenario: ScenarioInput, *, show: Sequence[str] = ()) -> Report:
    """Run ``scenario`` on a fresh machine and return its report, as ``pagewalk run``.

    ``show``: views (``/proc/meminfo``, ``/proc/main/status``, ``sar``, a knob path ...)
    rendered at every measure into ``measurement.views``. The report's ``to_dict()`` is
    ``pagewalk run --json``; ``to_pandas()`` one row per figure."""
    from pagewalk.scenario.runner import run_scenario
    if isinstance(show, str):
        show = (show,)
    return run_scenario(load(scenario), tuple(show))


def replay(trace: str | os.PathLike[str] | npt.ArrayLike, *, pages: int | str | None = None,
           tlb: str | TraceModel = "reference", scenario: ScenarioInput | None = None,
           process: str = "main", at: str | None = None,
           page_map: str | os.PathLike[str] | PageSizeMap | Iterable[tuple[int, int, int]]
           | None = None, engine: str = "fast", fmt: str | None = None) -> TraceStats:
    """Replay ``trace`` through a TLB model and return its report, as ``pagewalk trace``.

    ``trace``: a trace file (lackey text, .pwt, .npy; ``fmt`` overrides the extension), the
    name of a shipped sample trace (``pagewalk examples``: ``mixed-200k.pwt``), or an
    array of .pwt words (``pagewalk.trace.formats.pack_records``). ``tlb``: a preset
    name, a model file or a TraceModel. Page sizes come from one of ``pages`` (every
    page; default 4KiB), ``scenario`` (each page the size the simulated kernel mapped it
    with in ``process`` at the end of the scenario, or at its measure ``at``) or
    ``page_map`` (a ``pagewalk inspect PID --replay`` file, a PageSizeMap or
    ``(start, end, page_shift)`` ranges)."""
    from pagewalk.trace.presets import load_model
    from pagewalk.trace.replay import replay_trace
    model = load_model(tlb) if isinstance(tlb, str) else tlb
    sizes = _page_sizes(pages, scenario, process, at, page_map)
    if isinstance(trace, (str, os.PathLike)):
        from pagewalk.scenario.examples import resolve_trace
        trace = resolve_trace(os.fspath(trace))
    return replay_trace(trace, pages=pages if pages is not None else "4KiB", page_map=sizes,
                        model=model, engine=engine, fmt=fmt)


def _page_sizes(pages: int | str | None, scenario: ScenarioInput | None, process: str,
                at: str | None,
                page_map: str | os.PathLike[str] | PageSizeMap | Iterable[tuple[int, int, int]]
                | None) -> PageSizeMap | None:
    """The page-size map of ``scenario`` or ``page_map`` (None: every page of ``pages``)."""
    from pagewalk.trace.replay import PageSizeMap
    chosen = [name for name, value in (("pages", pages), ("scenario", scenario),
                                       ("page_map", page_map)) if value is not None]
    if len(chosen) > 1:
        raise ConfigError(f"{' and '.join(chosen)} both choose the page sizes: give one")
    if scenario is None and (at is not None or process != "main"):
        raise ConfigError("process and at need a scenario")
    if scenario is not None:
        return _scenario_page_map(scenario, process, at)
    if page_map is None or isinstance(page_map, PageSizeMap):
        return page_map
    if isinstance(page_map, (str, os.PathLike)):
        from pagewalk.trace.page_map import file_page_map
        return file_page_map(os.fspath(page_map))
    try:
        return PageSizeMap.from_ranges(page_map)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"bad page-size map: {err}", Location(field="page_map")) from None


def _scenario_page_map(scenario: ScenarioInput, process: str, at: str | None) -> PageSizeMap:
    """What ``pagewalk trace --scenario`` replays with (trace/page_map.py), for any form of
    scenario."""
    from pagewalk.explain.state import find_process
    from pagewalk.trace.page_map import task_page_ranges
    from pagewalk.trace.replay import PageSizeMap
    state = _state(scenario, at)
    ranges = task_page_ranges(state.kernel, find_process(state, process))
    if not ranges:
        where = f"at {at!r}" if at else "at the end of the scenario"
        raise ScenarioError(f"process {process!r} has no present page {where}: nothing to "
                            "take page sizes from", Location(state.scenario.file))
    return PageSizeMap.from_ranges(ranges)


def _state(scenario: ScenarioInput | None, at: str | None) -> ScenarioRun:
    """The run stopped after the measure ``at`` (or at the end); a fresh machine when
    there is no scenario."""
    from pagewalk.explain.state import fresh_run, run_to_label
    if scenario is None:
        if at is not None:
            raise ScenarioError("at needs a scenario")
        return fresh_run()
    return run_to_label(load(scenario), at)


def translate(address: int | str, *, scenario: ScenarioInput | None = None,
              process: str = "main", at: str | None = None,
              access: str = "read") -> Explanation:
    """Walk the page tables for ``address`` as the MMU would, as ``pagewalk translate``;
    nothing in the simulated state changes.

    ``address``: a number, or ``NAME[+OFFSET]`` with NAME a mapping of the scenario or a
    VMA name such as ``[heap]``. Without a scenario, a fresh machine's ``main``.
    ``access``: read, write or exec (user mode)."""
    from pagewalk.explain import translate as t
    from pagewalk.explain.state import find_process
    if access not in t.ACCESS_NAMES:
        raise ConfigError(f"access must be one of {', '.join(sorted(t.ACCESS_NAMES))}, "
                          f"got {access!r}", Location(field="access"))
    state = _state(scenario, at)
    task = find_process(state, process)
    if isinstance(address, int):
        vaddr = address
    else:
        try:
            vaddr = t.resolve_address(address, task, state.maps.get(task.comm, {}))
        except ValueError as err:
            raise ConfigError(str(err)) from None
    if not 0 <= vaddr < 1 << 64:
        raise ConfigError(f"bad address {address!r}: not a 64-bit address")
    return t.explain_translation(state.kernel, task, vaddr, access)


__all__ = ["ScenarioInput", "load", "replay", "run", "translate"]
