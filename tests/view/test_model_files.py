"""The web view's tree shows a page-cache page's file and offset (page->mapping and
page->index), and a run of page-cache pages is one file's consecutive pages."""

from __future__ import annotations

from typing import Any

from pagewalk.scenario.runner import ScenarioRun
from pagewalk.scenario.schema import parse_scenario
from pagewalk.view.model import TreeBuilder

SCENARIO = """name: view-files
steps:
  - file: {name: data, size: 256KiB}
  - mmap: {name: m, length: 256KiB, prot: r, flags: [shared], file: data, file_offset: 64KiB}
  - touch: {region: m, access: read, length: 4KiB}
  - measure: read
"""


def _runs(node: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for entry in node.get("entries", []):
        if "child" in entry:
            found += _runs(entry["child"])
        found += entry.get("runs", [])
    found += node.get("runs", [])
    return found


def test_file_pages_show_their_file_and_offset() -> None:
    run_ = ScenarioRun(parse_scenario(SCENARIO, "view-files.yaml"), ())
    run_.run()
    k = run_.kernel
    tree = TreeBuilder(k, k.tasks["main"], {}).build()
    runs = [run for run in _runs(tree) if run.get("file")]
    assert runs, "no page-cache run in the tree"
    (run,) = [run for run in runs if "pagewalk-files" in run["file"]]
    assert run["file"] == "/var/tmp/pagewalk-files/data"
    # fault-around maps the 64 KiB window of the first page: file pages 16..31
    assert run["index"] == 16 and run["n"] == 16 and run["kind"] == "file"
