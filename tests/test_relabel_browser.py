"""The review page in a real headless Chromium: load, decide with keys, reload, check the log.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and the ``selenium``
test extra; skipped, with the reason shown, only where they are missing.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_relabel import dataset, oracle_root  # noqa: F401 - session fixtures shared with the API tests

from fercurate.relabel import ServeParams, log_path, make_server
from fercurate.workspace import Workspace

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def _browser() -> tuple[str, str]:
    browser = next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip(
            "no headless browser: install Debian's chromium and chromium-driver "
            "(apt-get install chromium chromium-driver; .ci/run does) to run the review page test"
        )
    return browser, driver


@pytest.fixture
def chrome(tmp_path: Path) -> Iterator[Any]:
    browser, driver_path = _browser()
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium (a test extra) is not installed")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1200,900",
        f"--user-data-dir={tmp_path / 'chrome-profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def server(oracle_root: Path, tmp_path: Path) -> Iterator[Any]:  # noqa: F811 - the imported fixture
    shutil.copytree(oracle_root, tmp_path / "ws")
    srv = make_server(Workspace(tmp_path / "ws"), ServeParams())
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _wait(driver: Any, condition: str, timeout: float = 15) -> None:
    """Wait until a JavaScript expression is true on the page."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: d.execute_script(f"return {condition};"))


def _press(driver: Any, key: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(key).perform()


def _at(driver: Any, index: int, decided: int) -> None:
    _wait(driver, f"document.body.dataset.index === '{index}' && document.body.dataset.decided === '{decided}'")


def test_review_page_decides_with_keys_survives_reload_and_logs_each_decision(chrome: Any, server: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    items = server.state.queue()["items"]
    assert len(items) >= 4
    classes = server.state.classes
    ids = [item["image_id"] for item in items]

    chrome.get(server.url)
    _wait(chrome, "document.body.dataset.ready === '1'")
    _at(chrome, 0, 0)
    assert chrome.find_element(By.ID, "progress").text == f"0 / {len(items)} decided"
    face = chrome.find_element(By.ID, "face")
    _wait(chrome, "document.getElementById('face').naturalWidth === 48")
    assert face.value_of_css_property("image-rendering") == "pixelated"
    assert face.size["width"] >= 240  # shown large

    _press(chrome, "2")  # relabel item 0 as the second class (a keep if that is its given label)
    _at(chrome, 1, 1)
    _press(chrome, "k")  # keep item 1
    _at(chrome, 2, 2)
    _press(chrome, "x")  # remove item 2
    _at(chrome, 3, 3)
    _press(chrome, "u")  # item 3 has no decision: undo the latest one (item 2) and go back to it
    _at(chrome, 2, 2)
    _press(chrome, Keys.ARROW_RIGHT)
    _at(chrome, 3, 2)
    _press(chrome, Keys.ARROW_LEFT)
    _at(chrome, 2, 2)
    assert chrome.find_element(By.ID, "progress").text == f"2 / {len(items)} decided"
    assert chrome.find_element(By.ID, "decision").text == "undecided"

    # reopening continues at the first undecided image, with the decisions shown
    chrome.refresh()
    _wait(chrome, "document.body.dataset.ready === '1'")
    _at(chrome, 2, 2)
    assert chrome.execute_script("return document.body.dataset.imageId") == ids[2]
    _press(chrome, Keys.ARROW_LEFT)
    _at(chrome, 1, 2)
    assert chrome.find_element(By.ID, "decision").text == "keep the given label"

    records = [json.loads(line) for line in log_path(server.state.log.path.parents[1]).read_text().splitlines()]
    first = "keep" if items[0]["given"] == classes[1] else "relabel"
    assert [(r["image_id"], r["decision"]) for r in records] == [
        (ids[0], first),
        (ids[1], "keep"),
        (ids[2], "remove"),
        (ids[2], "undo"),
    ]
    if first == "relabel":
        assert records[0]["label"] == classes[1]
    assert all(r["by"] == "human" and r["flag_version"] == "v0002" for r in records)
