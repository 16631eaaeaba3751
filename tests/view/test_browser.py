"""The web view in headless Chromium: it loads a run, draws the timeline, the charts, the
VMAs, the page-table tree (expandable, huge leaves marked, shared frames linked) and the
/proc views, fetches nothing but its own files, and looks like a page (screenshot)."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from pagewalk.view.server import build_site, write_static

from .conftest import DATA, WINDOW

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


def load(driver: Any, url: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait
    driver.get(url)
    WebDriverWait(driver, 30).until(
        lambda d: d.execute_script("return document.body.dataset.ready === '1'"))


def css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By
    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def wait_css(driver: Any, selector: str, root: Any = None) -> list[Any]:
    """The elements matching ``selector`` once there is at least one (a <details> fills
    its children on its toggle event, which the browser fires a moment after the click)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    scope = root or driver
    WebDriverWait(driver, 10).until(lambda d: scope.find_elements(By.CSS_SELECTOR, selector))
    return list(scope.find_elements(By.CSS_SELECTOR, selector))


def click(driver: Any, element: Any) -> None:
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
    element.click()


def severe_console_messages(driver: Any) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_page_draws_the_run(browser: Any, fork_url: str) -> None:
    load(browser, fork_url)
    assert css(browser, "#scenario-name")[0].text == "fork-cow-write"
    items = css(browser, "#timeline li")
    assert len(items) == 12                                    # start + 11 steps
    assert "measure" in items[-1].text and "parent-write-after-exit" in items[-1].text
    assert "selected" in items[-1].get_attribute("class")      # the end is shown first
    assert [b.text for b in css(browser, "#process-tabs button")] == ["main (1000)"]
    assert css(browser, "#chart .main-svg") and css(browser, "#system-chart .main-svg")
    assert len(css(browser, "#chart .scatterlayer .trace")) == 6
    assert len(css(browser, "#vmas tbody tr")) == 12
    assert "(agrees)" in css(browser, "#cost")[0].text
    assert severe_console_messages(browser) == []


def test_expanding_tables_down_to_the_pte_runs(browser: Any, fork_url: str) -> None:
    load(browser, fork_url)
    root = css(browser, "#tree > details.pt-node")[0]
    assert root.get_attribute("open") is not None and "PML4 table (pgd)" in root.text
    top = css(browser, "#tree > details > details.pt-node")
    assert [t.text.split()[0] for t in top] == ["[0]", "[255]"]
    assert css(browser, "#tree > details > details.pt-node > details") == []   # not built yet
    click(browser, top[1].find_element("css selector", "summary"))           # PML4[255]
    pdpt = wait_css(browser, "#tree > details > details:nth-of-type(2) > details.pt-node")
    assert len(pdpt) == 1 and "PD table (pmd)" in pdpt[0].text
    click(browser, pdpt[0].find_element("css selector", "summary"))
    pds = wait_css(browser, "#tree > details > details:nth-of-type(2) > details > details.pt-node")
    assert any("PT table (pte)" in d.text for d in pds)
    click(browser, pds[0].find_element("css selector", "summary"))
    runs = wait_css(browser, "details.run", pds[0])
    assert runs and "× 4K" in runs[0].text and "anon" in runs[0].text
    click(browser, runs[0].find_element("css selector", "summary"))
    pages = wait_css(browser, "div.leaf.page", runs[0])
    assert len(pages) == int(runs[0].text.split("×")[0].split()[-1])
    assert "P RW US A D NX" in pages[0].text or "P US" in pages[0].text


def test_shared_frames_after_fork_link_to_the_other_process(browser: Any, fork_url: str) -> None:
    load(browser, fork_url)
    click(browser, css(browser, '#timeline li[data-after="3"]')[0])          # after-fork
    assert [b.text.split()[0] for b in css(browser, "#process-tabs button")] == ["main", "child"]
    data_row = next(r for r in css(browser, "#vmas tbody tr") if "16 MiB" in r.text)
    start = data_row.get_attribute("data-start")
    click(browser, data_row)                                   # reveals the data mapping
    target = css(browser, "#tree .highlight")[0]
    links = target.find_elements("css selector", "a.shared-link")
    assert links and links[0].get_attribute("data-process") == "child"
    assert int(links[0].get_attribute("data-va"), 16) == int(start, 16)
    click(browser, links[0])
    active = css(browser, "#process-tabs button.active")[0]
    assert active.text.startswith("child")
    target = css(browser, "#tree .highlight")[0]
    assert target.is_displayed() and int(start, 16) == int(
        target.find_element("xpath", "..").get_attribute("data-va") or
        target.get_attribute("data-va"), 16)


def test_huge_leaves_are_marked_with_their_deposits(browser: Any, thp_url: str) -> None:
    load(browser, thp_url)
    click(browser, css(browser, "#expand-all")[0])
    huge = css(browser, "#tree .huge-leaf")
    assert len(huge) == 32
    assert all("2MiB" in leaf.text and "THP" in leaf.text and "deposited PTE table" in leaf.text
               for leaf in huge[:3])
    cards = {c.get_attribute("data-field"): c.text for c in css(browser, "#summary .card")}
    assert "65,536 kB" in cards["AnonHugePages"]


def test_proc_views_at_a_measure(browser: Any, fork_url: str) -> None:
    load(browser, fork_url)
    click(browser, css(browser, '#timeline li[data-after="5"]')[0])          # child-read
    assert "child-read" in css(browser, "#views-at")[0].text
    click(browser, next(b for b in css(browser, "#process-tabs button")
                        if b.text.startswith("child")))
    tabs = {b.text: b for b in css(browser, "#view-tabs button")}
    assert "/proc/child/status" in tabs and "/proc/meminfo" in tabs
    click(browser, tabs["/proc/child/status"])
    assert "Name:\tchild" in css(browser, "#view-text")[0].get_attribute("textContent")
    click(browser, css(browser, "#view-tabs button[data-view='/proc/meminfo']")[0])
    assert "MemTotal:" in css(browser, "#view-text")[0].get_attribute("textContent")
    # a step that is not a measure shows the views of the last measure before it
    click(browser, css(browser, '#timeline li[data-after="6"]')[0])
    assert "child-read" in css(browser, "#views-at")[0].text


def test_nothing_is_fetched_from_anywhere_but_the_server(browser: Any, thp_url: str) -> None:
    load(browser, thp_url)
    click(browser, css(browser, "#expand-all")[0])
    urls = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert urls and all(url.startswith(thp_url) for url in urls), urls
    assert {url.rsplit("/", 1)[1] for url in urls} >= {"plotly.min.js", "data.js", "app.js", "app.css"}


def test_static_files_work_opened_from_disk(browser: Any, tmp_path: Path) -> None:
    from pagewalk.scenario.schema import load_scenario
    from pagewalk.view.model import build_document
    doc = build_document(load_scenario(DATA / "measured" / "hugetlb-1g.yaml"))
    write_static(build_site(doc), tmp_path / "site")
    load(browser, (tmp_path / "site" / "index.html").as_uri())
    assert css(browser, "#scenario-name")[0].text == "hugetlb-1g"
    assert css(browser, "#chart .main-svg")


def test_screenshot_of_the_main_page(browser: Any, fork_url: str, tmp_path: Path) -> None:
    """The main page as a person sees it: a PNG of the window, not blank. Set
    PAGEWALK_SCREENSHOT_DIR to keep it."""
    from PIL import Image
    load(browser, fork_url)
    click(browser, css(browser, '#timeline li[data-after="3"]')[0])
    browser.execute_script("window.scrollTo(0, 0)")
    path = tmp_path / "view-main.png"
    assert browser.save_screenshot(str(path))
    png = path.read_bytes()
    assert len(png) > 50_000
    image = Image.open(io.BytesIO(png)).convert("RGB")
    viewport = browser.execute_script("return [window.innerWidth, window.innerHeight]")
    assert list(image.size) == viewport and viewport[1] > 1000
    small = image.resize((140, 180))
    colours = small.getcolors(maxcolors=140 * 180) or []
    assert len(colours) > 100                                     # text, charts, badges
    background = max(colours)[0] / (140 * 180)
    assert background < 0.85                                      # not one flat colour
    dark_header = image.crop((0, 0, WINDOW[0], 40)).resize((1, 1)).getpixel((0, 0))
    assert sum(dark_header) < 200                                 # the header bar is drawn
    keep = os.environ.get("PAGEWALK_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / "view-main.png")


def test_find_an_address_opens_the_tree_down_to_its_entry(browser: Any, thp_url: str) -> None:
    load(browser, thp_url)
    heap = next(r for r in css(browser, "#vmas tbody tr") if "64 MiB" in r.text)
    start = int(heap.get_attribute("data-start"), 16)
    box = css(browser, "#goto")[0]
    box.clear()
    box.send_keys(hex(start + 0x201234) + "\n")
    target = css(browser, "#tree .highlight")[0]
    assert "huge-leaf" in target.get_attribute("class") and "2MiB" in target.text
    assert int(target.get_attribute("data-va"), 16) == start + 0x200000
    assert css(browser, "#goto-result")[0].text == ""
    box.clear()
    box.send_keys(str(0x10000000) + "\n")                       # decimal, nothing mapped there
    assert "not mapped" in css(browser, "#goto-result")[0].text
    box.clear()
    box.send_keys("heap\n")
    assert "not an address" in css(browser, "#goto-result")[0].text
