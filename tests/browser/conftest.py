"""The browser tier: the dashboard in real headless Chromium (Debian's ``chromium`` and
``chromium-driver``) driven by selenium, against the read API on real Valkey after a replay.

* ``chrome`` (session): the paths of chromium and chromedriver. When they are missing the setup
  installs them with apt-get (as root, e.g. in CI). Under ``CI=true`` this tier must run: a
  missing browser fails the session instead of skipping it; elsewhere it is skipped with the
  command that installs it.
* ``browser`` (module): one Chrome session (1440×1200, console log captured, downloads into a
  temporary folder) for every test of a module.
* ``screenshots``: where screenshots go: ``PORTRAIT_SCREENSHOTS`` (``docs/img`` refreshes the
  README's pictures) or a folder in pytest's basetemp.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGES = ("chromium", "chromium-driver")
INSTALL = "apt-get install -y " + " ".join(PACKAGES)


@dataclass(frozen=True)
class Chrome:
    binary: str
    driver: str


def _found() -> Chrome | None:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return Chrome(binary, driver) if binary and driver else None


def _install() -> str:
    """Install the Debian packages (as root); what went wrong, or '' when it worked."""
    if shutil.which("apt-get") is None:
        return "no apt-get on this machine"
    if os.geteuid() != 0:
        return "not root"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}

    def apt(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["apt-get", *args], env=env, capture_output=True, text=True, timeout=900, check=False)

    done = apt("install", "-y", *PACKAGES)
    if done.returncode != 0:  # a stale package list: refresh it once
        apt("update")
        done = apt("install", "-y", *PACKAGES)
    if done.returncode == 0:
        return ""
    lines = (done.stderr or done.stdout).strip().splitlines()
    return lines[-1] if lines else f"apt-get exited with {done.returncode}"


@pytest.fixture(scope="session")
def chrome() -> Chrome:
    found = _found()
    if found is None:
        problem = _install()
        found = _found()
        if found is None:
            message = f"headless Chromium is not available ({problem or 'not found after installing'}): {INSTALL}"
            if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
                pytest.fail(message + " (CI=true: the browser tier must run)", pytrace=False)
            pytest.skip(message)
    return found


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = os.environ.get("PORTRAIT_SCREENSHOTS")
    folder = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(chrome: Chrome, downloads: Path) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chrome.binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1440,1200", "--lang=en-US"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    options.add_experimental_option(
        "prefs",
        {
            "download.default_directory": str(downloads),
            "download.prompt_for_download": False,
            "safebrowsing.enabled": True,
        },
    )
    driver = webdriver.Chrome(service=Service(chrome.driver), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
