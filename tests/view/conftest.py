"""Headless Chromium for the web view's tests: Debian's chromium and chromedriver driven by
Selenium, never a downloaded browser. Skips, saying why, where they are not installed
(apt-get install chromium chromium-driver)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from threading import Thread
from typing import Any

import pytest

from pagewalk.scenario.schema import load_scenario
from pagewalk.view.model import build_document
from pagewalk.view.server import build_site, make_server, serve

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
DATA = Path(__file__).resolve().parents[1] / "data"
WINDOW = (1400, 1800)
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--no-first-run", "--disable-sync", "--disable-quic",
                  "--disable-default-apps", "--disable-extensions",
                  f"--window-size={WINDOW[0]},{WINDOW[1]}")


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install selenium)")
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(path).exists():
            pytest.skip(f"{path} is missing: apt-get install {package}")
    profile = tempfile.mkdtemp(prefix="pagewalk-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def serve_scenario(name: str) -> Iterator[str]:
    folder = "measured" if (DATA / "measured" / f"{name}.yaml").exists() else "scenarios"
    server = make_server(build_site(build_document(load_scenario(DATA / folder / f"{name}.yaml"))))
    thread = Thread(target=serve, args=(server,), daemon=True)
    thread.start()
    try:
        yield server.url
    finally:
        server.shutdown()
        thread.join(5)


@pytest.fixture(scope="session")
def fork_url() -> Iterator[str]:
    yield from serve_scenario("fork-cow-write")


@pytest.fixture(scope="session")
def thp_url() -> Iterator[str]:
    yield from serve_scenario("thp-madvise-64m")
