"""The web view's document and server: what the page is given to draw, and how it is
served (127.0.0.1 only, a fixed set of files, nothing from elsewhere)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from threading import Thread

import pytest
from click.testing import CliRunner

from pagewalk.cli import main
from pagewalk.scenario.schema import load_scenario
from pagewalk.view.model import build_document
from pagewalk.view.server import build_site, make_server, serve, write_static

DATA = Path(__file__).resolve().parents[1] / "data"


def document(name: str) -> dict:  # type: ignore[type-arg]
    folder = "measured" if (DATA / "measured" / f"{name}.yaml").exists() else "scenarios"
    return build_document(load_scenario(DATA / folder / f"{name}.yaml"))


def leaves(node: dict) -> list[dict]:  # type: ignore[type-arg]
    """Every huge leaf and PTE run of a tree."""
    out = list(node.get("runs", []))
    for entry in node.get("entries", []):
        out += leaves(entry["child"]) if entry["t"] == "table" else [entry]
    return out


def test_document_has_every_step_a_state_after_each_and_views_at_measures() -> None:
    doc = document("fork-cow-write")
    assert doc["format"] == "pagewalk-view/1" and doc["failed"] is None
    assert [s["index"] for s in doc["steps"]] == list(range(11))
    assert [st["after"] for st in doc["states"]] == list(range(-1, 11))
    assert len(doc["series"]) == 12                      # the start and after every step
    measures = [st for st in doc["states"] if st["label"]]
    assert [m["label"] for m in measures] == ["after-fork", "child-read", "child-write",
                                             "parent-write-after-exit"]
    assert all("views" in m for m in measures)
    assert "VmPTE:" in measures[0]["views"]["/proc/child/status"]
    assert set(doc["states"][4]["processes"]) == {"main", "child"}


def test_series_follow_the_kernels_figures() -> None:
    doc = document("thp-madvise-64m")
    last = doc["series"][-1]
    assert last["processes"]["main"]["AnonHugePages"] == 64 * 1024
    assert last["system"]["thp_fault_alloc"] == 32
    assert doc["measurements"][0]["system"]["thp_fault_alloc"] == 32


def test_tree_marks_huge_leaves_with_their_deposited_tables() -> None:
    doc = document("thp-madvise-64m")
    tree = doc["states"][-1]["processes"]["main"]["tree"]
    huge = [leaf for leaf in leaves(tree) if leaf.get("t") == "huge"]
    assert len(huge) == 32
    assert all(leaf["size"] == "2MiB" and leaf["kind"] == "THP" and "deposit" in leaf
               for leaf in huge)


def test_tree_runs_cover_every_present_leaf_and_agree_with_the_cost() -> None:
    doc = document("fork-cow-write")
    for st in doc["states"]:
        for proc in st["processes"].values():
            runs = [leaf for leaf in leaves(proc["tree"]) if "n" in leaf]
            assert sum(r["n"] for r in runs) == proc["cost"]["leaves"]["4KiB"]
            assert proc["cost"]["agrees_with_VmPTE"]


def test_frames_shared_after_fork_link_to_the_same_address_in_the_other_process() -> None:
    doc = document("fork-cow-write")
    after_fork = doc["states"][4]
    data = int(after_fork["processes"]["main"]["maps"]["data"]["start"], 16)
    for me, other in (("main", "child"), ("child", "main")):
        runs = [r for r in leaves(after_fork["processes"][me]["tree"])
                if "n" in r and data <= int(r["va"], 16) < data + (16 << 20)]
        assert sum(r["n"] for r in runs) == 4096
        assert all(r["shared"] == {other: r["va"]} for r in runs)
    after_cow = doc["states"][7]                          # the child wrote everything
    runs = [r for r in leaves(after_cow["processes"]["child"]["tree"])
            if "n" in r and data <= int(r["va"], 16) < data + (16 << 20)]
    assert not any("shared" in r for r in runs)


def test_hugetlb_1g_leaf_and_a_failed_step(tmp_path: Path) -> None:
    doc = document("hugetlb-1g")
    touched = next(st for st in doc["states"] if st["label"] == "touched")
    huge = [leaf for leaf in leaves(touched["processes"]["main"]["tree"]) if leaf.get("t") == "huge"]
    assert [(h["size"], h["kind"]) for h in huge] == [("1GiB", "hugetlb")]
    path = tmp_path / "fails.yaml"
    path.write_text("name: fails\nsteps:\n  - mmap: {name: a, length: 4MiB, prot: r}\n"
                    "  - touch: {region: a, access: write}\n  - measure: never\n")
    failed = build_document(load_scenario(path))
    assert failed["failed"]["step"] == 1 and "SIGSEGV" in failed["failed"]["message"]
    assert failed["steps"][-1]["outcome"] == "failed" and failed["states"][-1]["after"] == 1


# -- serving ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def served() -> tuple[str, dict]:  # type: ignore[type-arg]
    doc = document("thp-madvise-64m")
    server = make_server(build_site(doc))
    thread = Thread(target=serve, args=(server,), daemon=True)
    thread.start()
    yield server.url, doc
    server.shutdown()
    thread.join(5)


def test_server_listens_on_loopback_and_serves_only_its_files(served) -> None:  # type: ignore[no-untyped-def]
    url, doc = served
    assert url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(url, timeout=5) as answer:
        page = answer.read().decode()
        assert "Content-Security-Policy" in answer.headers
        assert "connect-src 'none'" in answer.headers["Content-Security-Policy"]
    for src in re.findall(r'(?:src|href)="([^"]+)"', page):
        assert not src.startswith(("http:", "https:", "//")), src
    with urllib.request.urlopen(url + "data.js", timeout=5) as answer:
        text = answer.read().decode()
    assert json.loads(text.removeprefix("window.PAGEWALK_RUN = ").rstrip(";\n")) == doc
    with urllib.request.urlopen(url + "plotly.min.js", timeout=5) as answer:
        assert answer.read(200).startswith(b"/**\n* plotly.js")
    for bad in ("../pyproject.toml", "etc/passwd", "static/app.js", "%2e%2e/x"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url + bad, timeout=5)
        assert err.value.code == 404
        err.value.close()
    request = urllib.request.Request(url, data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=5)
    assert err.value.code == 501
    err.value.close()


def test_static_files_are_the_served_files(tmp_path: Path) -> None:
    code = CliRunner().invoke(main, ["view", "thp-madvise-64m", "--static", str(tmp_path / "out")])
    assert code.exit_code == 0, code.output
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["THIRD-PARTY-LICENSES.txt", "app.css", "app.js", "data.js", "index.html",
                     "plotly.min.js"]
    assert "MIT" in (tmp_path / "out" / "THIRD-PARTY-LICENSES.txt").read_text()
    site = build_site(document("thp-madvise-64m"))
    write_static(site, tmp_path / "again")
    assert (tmp_path / "again" / "index.html").read_bytes() == site["index.html"][1]


def test_view_command_prints_its_url_and_stops_by_itself() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "pagewalk", "view", "thp-madvise-64m",
                             "--serve-seconds", "20"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert url, line
        with urllib.request.urlopen(url.group(0), timeout=5) as answer:
            assert b"pagewalk" in answer.read()
    finally:
        proc.terminate()
        proc.communicate(timeout=10)      # closes the pipes


def test_view_of_a_bad_scenario_is_one_line_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nsteps:\n  - mmap: {name: a, length: lots}\n")
    result = CliRunner().invoke(main, ["view", str(path), "--static", str(tmp_path / "o")])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
