"""A real headless Chromium for the tests of charlstm's HTML pages (inspect, export --format html).

The Debian packages `chromium` and `chromium-driver` give the browser and its driver; Selenium is pointed at
both binaries, so nothing is downloaded at run time (Selenium Manager is never asked). Where either is missing
the tests that use the `browser` fixture skip, saying what to install; `.ci/run` installs them where it can.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")
INSTALL_HINT = "apt-get install -y chromium chromium-driver"


def find_chromium() -> tuple[str, str] | None:
    """(browser binary, chromedriver binary), or None where either is missing."""
    browser = os.environ.get("CHARLSTM_CHROMIUM") or next(filter(None, map(shutil.which, BROWSERS)), None)
    driver = os.environ.get("CHARLSTM_CHROMEDRIVER") or shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def start_browser(width: int = 1280, height: int = 900):
    """A headless Chromium under Selenium that records the page's console (see `console_errors`)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[test]')")
    found = find_chromium()
    if found is None:
        pytest.skip(f"no headless Chromium found (install it: {INSTALL_HINT})")
    browser, driver = found
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
        "--allow-file-access-from-files",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def console_errors(driver) -> list[str]:
    """The SEVERE entries of the page's console since the last call (JavaScript errors, failed loads)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def open_page(driver, path: Path) -> None:
    driver.get(path.resolve().as_uri())


@pytest.fixture(scope="session")
def browser():
    driver = start_browser()
    try:
        yield driver
    finally:
        driver.quit()
