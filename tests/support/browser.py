"""A real headless browser for page tests: Debian's chromium driven by its chromedriver through selenium.

Nothing is downloaded: the system chromedriver is used as it is (no Selenium Manager), and chromium
is told not to reach any update, sync or QUIC endpoint, so the page under test is the only traffic."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = "chromium"
CHROMEDRIVER = "chromedriver"
# the color of the first series of every dashboard chart (dashboard.js COLORS[0] = #2563eb)
SERIES_RGB = (37, 99, 235)
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--window-size=1400,1000")


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install Debian's '{package}' package (scripts/setup.sh installs it)")
    return path


@contextlib.contextmanager
def headless_chromium(profile: Path) -> Iterator[webdriver.Chrome]:
    """A Chrome WebDriver on a fresh profile in `profile`; the browser's console is kept (get_log("browser"))."""
    options = webdriver.ChromeOptions()
    options.binary_location = _tool(CHROMIUM, "chromium")
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(_tool(CHROMEDRIVER, "chromium-driver")), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def series_pixels(driver, chart_id: str) -> int:
    """Pixels of the chart's canvas in the first series' color: > 0 once a line or bar was drawn (-1: no canvas)."""
    return driver.execute_script("""
        const c = document.querySelector('#' + arguments[0] + ' canvas');
        if (!c) return -1;
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const [r, g, b] = arguments[1];
        let n = 0;
        for (let i = 0; i < d.length; i += 4)
            if (Math.abs(d[i] - r) < 10 && Math.abs(d[i + 1] - g) < 10 && Math.abs(d[i + 2] - b) < 10 && d[i + 3] > 200) n++;
        return n;""", chart_id, list(SERIES_RGB))
