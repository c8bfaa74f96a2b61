"""GET /demo: off by default outside dev mode; its JSON helpers tell the truth; the page works in a real browser.

The browser test drives Debian's Chromium headless through its chromedriver (Selenium; nothing is downloaded):
it loads the page from a real ``twotower serve``, looks a user up, adds an event, and checks the rendered
lists against the JSON API's own answers. ``bash scripts/setup.sh --test`` installs ``chromium`` and
``chromium-driver``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from redis_server import free_port
from test_serve_support import TOKEN, settings, shared_artifacts, wait_ready

from twotower.data import SequenceData
from twotower.serve.app import create_app

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="session")
def art(tmp_path_factory, synth_data):
    return shared_artifacts(tmp_path_factory, synth_data)


def test_demo_is_off_unless_asked_for_outside_dev_mode(art):
    with TestClient(create_app(settings(art.root))) as c:
        assert c.get("/demo").status_code == 404
        assert c.get("/demo/info").status_code == 404
    with TestClient(create_app(settings(art.root, dev_mode=True))) as c:  # dev mode: on by default
        assert c.get("/demo").status_code == 200
    with TestClient(create_app(settings(art.root, dev_mode=True, demo=False))) as c:
        assert c.get("/demo").status_code == 404


def test_demo_helpers_show_the_dataset_and_the_store(art):
    data = SequenceData.load(art.data)
    users, items = data.user_ids().astype(str), data.item_ids().astype(str)
    names = data.manifest["actions"]
    with TestClient(create_app(settings(art.root, demo=True))) as c:
        page = c.get("/demo")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert 'id="results"' in page.text and "/v1/retrieve" in page.text
        info = c.get("/demo/info").json()
        assert info["actions"] == names[: len(info["actions"])] and info["example_users"][0] == users[0]
        u = 3
        lo, hi = int(data.user_offsets[u]), int(data.user_offsets[u + 1])
        got = c.get(f"/demo/user/{users[u]}", params={"n": 5}).json()
        assert got["events"] == hi - lo
        want = list(range(max(lo, hi - 5), hi))
        assert [e["item_id"] for e in got["history"]] == [items[data.event_item[e]] for e in want]
        assert [e["timestamp"] for e in got["history"]] == [int(data.event_ts[e]) for e in want]
        for e, row in zip(got["history"], want):
            bits = int(data.event_actions[row])
            assert e["actions"] == [a for i, a in enumerate(names) if bits >> i & 1]
        # states were written for events before as_of: a user with such events has a state ending there
        assert got["state"]["found"] == bool((data.event_ts[lo:hi] < art.as_of).any())
        if got["state"]["found"]:
            assert got["state"]["snapshot_ts"] == art.as_of
        nobody = c.get("/demo/user/no-such-user").json()
        assert nobody["events"] == 0 and nobody["history"] == [] and nobody["state"]["found"] is False
        assert c.get("/demo/user/x", params={"n": 10**6}).status_code == 422


@pytest.fixture()
def demo_server(art):
    port = free_port()
    env = {**os.environ, "TWOTOWER_ADMIN_TOKEN": TOKEN, "TWOTOWER_DEMO": "1"}
    cmd = [sys.executable, "-m", "twotower.cli", "serve", "--artifacts", str(art.root), "--port", str(port),
           "--workers", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def browser():
    """Headless Debian Chromium through its own chromedriver (Selenium Manager is never asked to download)."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        pytest.fail(
            f"{missing} not installed: run `bash scripts/setup.sh --test` (apt-get install chromium chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--window-size=1200,900"):  # fmt: skip
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)


def test_the_demo_page_in_a_real_browser(demo_server, art, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    data = SequenceData.load(art.data)
    user = str(data.user_ids()[3])
    item = str(data.item_ids()[int(np.argmax(np.bincount(data.event_item)))])
    drv = browser()
    try:
        wait = WebDriverWait(drv, 20)
        drv.get(f"{demo_server}/demo")
        wait.until(lambda d: "model" in d.find_element(By.ID, "info").text)
        drv.find_element(By.ID, "user").send_keys(user)
        drv.find_element(By.ID, "k").clear()
        drv.find_element(By.ID, "k").send_keys("7")
        drv.find_element(By.ID, "lookup").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results tr.result")) == 7)

        def shown() -> list[str]:
            return [r.find_elements(By.TAG_NAME, "td")[1].text for r in
                    drv.find_elements(By.CSS_SELECTOR, "#results tr.result")]  # fmt: skip

        want = httpx.post(f"{demo_server}/v1/retrieve", json={"user_id": user, "k": 7}).json()
        assert shown() == [it["item_id"] for it in want["items"]]
        assert drv.find_element(By.ID, "path").text == want["path"]
        history = drv.find_elements(By.CSS_SELECTOR, "#history tr.event")
        assert len(history) == min(20, int(data.user_offsets[4] - data.user_offsets[3]))
        before = shown()

        drv.find_element(By.ID, "new-item").send_keys(item)
        drv.find_element(By.ID, "add").click()  # the page sends it as a recent event and asks again
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#recent li")) == 1)
        wait.until(lambda d: shown() != before)
        assert item not in shown()  # an item the user just interacted with is never returned
        assert drv.find_element(By.ID, "error").text == ""
        shot = tmp_path / "demo.png"
        assert drv.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    finally:
        drv.quit()
