"""The demo page in a real browser: headless Debian Chromium driven by Selenium against
the real Serve application (tiny generator, run directory built in the test).

Load the page, see K starter chips, click one: the click (and the impressions of the
shown list) reach ``/v1/feedback`` and are in the SQLite store. Skipped, saying why, only
when Chromium, its driver or Selenium is not installed (``apt-get install chromium
chromium-driver``; ``pip install -e .[dev]``).
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile

import pytest
from serve_support import build_run, start_app, stop_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
selenium = pytest.importorskip("selenium", reason="selenium is not installed (pip install -e .[dev])")
if CHROMIUM is None or not shutil.which(CHROMEDRIVER):
    pytest.skip("Debian chromium / chromium-driver are not installed "
                "(apt-get install chromium chromium-driver)", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

K = 3


@pytest.fixture(scope="module")
def app(ray_local, tiny_generator, tmp_path_factory):
    run = build_run(tmp_path_factory.mktemp("serve-browser-run"))
    running = start_app(run, tiny_generator, [f"generation.K={K}"])
    yield running
    stop_app()


@pytest.fixture(scope="module")
def browser():
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _events(store_path: str, type_: str) -> list[tuple[str, str, int]]:
    with sqlite3.connect(store_path) as conn:
        return conn.execute("SELECT request_id, starter, position FROM events WHERE type = ?",
                            (type_,)).fetchall()


def test_demo_page_shows_k_starters_and_logs_a_click(app, browser):
    browser.get(f"{app.url}/?user=u0000001")
    wait = WebDriverWait(browser, 180)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#starters .starter")) == K)
    # The user picker lists the run's simulated users.
    options = [o.get_attribute("value") for o in browser.find_elements(By.CSS_SELECTOR, "#user option")]
    assert "u0000001" in options and browser.find_element(By.ID, "user").get_attribute("value") == "u0000001"
    chips = browser.find_elements(By.CSS_SELECTOR, "#starters .starter")
    texts = [c.text for c in chips]
    assert all(texts) and len(set(texts)) == K

    chips[1].click()
    # The page marks <body data-click-logged> once /v1/feedback acknowledged the click.
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-click-logged"))
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-click-logged") == texts[1]
    clicks = _events(app.store_path, "click")
    assert [(starter, pos) for _, starter, pos in clicks] == [(texts[1], 1)]
    # The impressions of the shown list were logged under the same request id.
    shown = {(rid, starter, pos) for rid, starter, pos in _events(app.store_path, "impression")}
    assert {(clicks[0][0], t, i) for i, t in enumerate(texts)} <= shown


def test_pasted_history_gives_a_new_list(app, browser):
    browser.get(f"{app.url}/")
    wait = WebDriverWait(browser, 180)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#starters .starter")) == K)
    box = browser.find_element(By.ID, "history")
    box.send_keys("Training for a first half marathon\nBest running shoes for flat feet")
    browser.find_element(By.ID, "refresh").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "interests"), "half marathon"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#starters .starter")) == K
