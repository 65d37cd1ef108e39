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
# the colors of the dashboard charts' series (dashboard.js COLORS: #2563eb, #dc2626, #16a34a, #9333ea)
SERIES_RGB = ((37, 99, 235), (220, 38, 38), (22, 163, 74), (147, 51, 234))
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
    """Pixels of the chart's canvas in a series' color: > 0 once a line, point or bar was drawn (-1: no
    canvas). Any series' color: a series drawn later covers an earlier one where their values meet (a
    lone p95 point over the p50 point when every request of the bucket took the same milliseconds)."""
    return driver.execute_script("""
        const c = document.querySelector('#' + arguments[0] + ' canvas');
        if (!c) return -1;
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < d.length; i += 4)
            if (d[i + 3] > 200 && arguments[1].some(([r, g, b]) =>
                    Math.abs(d[i] - r) < 10 && Math.abs(d[i + 1] - g) < 10 && Math.abs(d[i + 2] - b) < 10)) n++;
        return n;""", chart_id, [list(rgb) for rgb in SERIES_RGB])
