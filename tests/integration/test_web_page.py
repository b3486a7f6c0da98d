"""The web page at / in a real browser — Debian's headless Chromium driven by selenium — against the running stack:
a photo's three answers, a file that is no photo, one over the limit, a phone's screen, and a bridge with keys that
is busy at first. Screenshots: test-artifacts/web_page.png (the answers) and web_page_phone.png (a phone's screen).

Chromium and its driver come from Debian (`make test` installs them: python -m stack.browser); selenium is given both
paths, so it never looks for a browser of its own. Missing, they fail this test: a skip would check nothing.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import requests
import uvicorn
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bridge.app import create_app
from bridge.settings import Settings
from bridge.web import PAGE_MODELS
from stack.browser import CHROMEDRIVER, CHROMIUM
from stack.database.api_keys import create_key
from tests.databases import fresh_database
from tests.integration.conftest import BRIDGE, LiveStack

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
SCREENSHOT = ARTIFACTS / "web_page.png"
PHONE_SCREENSHOT = ARTIFACTS / "web_page_phone.png"
PRIVATE_PORT = 18061
SECRET_KEY = "web-page-test-" + uuid.uuid4().hex  # a settings-file key: the API asks for keys
FINISHED = "#status[data-state='done'], #status[data-state='failed'], #message:not([hidden])"


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    """Headless Chromium at a desktop's size (a test may emulate a phone and clears it again)."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: `make test` installs Debian's chromium and chromium-driver "
                    "(or run .venv/bin/python -m stack.browser)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console: a script error fails a test
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--lang=en-US",
                     "--window-size=1280,900", "--disable-extensions", "--no-first-run"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(20)
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


def open_page(driver: WebDriver, base: str = BRIDGE) -> None:
    driver.get(f"{base}/")
    WebDriverWait(driver, 10).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true",
                                    "the page did not load its config")


def choose(driver: WebDriver, path: Path) -> None:
    """What the user does with "Choose a photo"."""
    driver.find_element(By.ID, "choose").send_keys(str(path))


def wait_finished(driver: WebDriver, timeout_s: float = 30) -> None:
    try:
        WebDriverWait(driver, timeout_s, poll_frequency=0.05).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, FINISHED))
    except TimeoutException:
        pytest.fail(f"the page did not finish within {timeout_s} s; it shows: {visible_text(driver)!r}")


def visible_text(driver: WebDriver) -> str:
    return driver.find_element(By.TAG_NAME, "main").text


def panel(driver: WebDriver, model: str) -> Any:
    return driver.find_element(By.ID, f"panel-{model}")


def screenshot(driver: WebDriver, path: Path) -> str:
    """The page as shown, whole (the window grows to the document's height first)."""
    width = driver.execute_script("return window.innerWidth")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(max(width, 1280), max(height + 100, 900))
    driver.save_screenshot(str(path))
    return f"screenshot: {path}"


def test_a_photo_shows_its_category_price_similar_items_and_job(
        live_stack: LiveStack, browser: WebDriver, photos: dict[str, bytes], tmp_path: Path) -> None:
    photo = tmp_path / "chelsea.jpg"
    photo.write_bytes(photos["chelsea"])
    open_page(browser)
    choose(browser, photo)
    wait_finished(browser)
    shot = screenshot(browser, SCREENSHOT)
    shown = visible_text(browser)

    job_id = browser.find_element(By.ID, "job-id").text
    assert uuid.UUID(job_id), f"no job id shown: {shown!r}; {shot}"
    job = requests.get(f"{live_stack.bridge}/v1/jobs/{job_id}", timeout=10).json()
    assert job["status"] == "succeeded", f"{job}; {shot}"
    assert browser.find_element(By.ID, "status").get_attribute("data-state") == "done", f"{shown!r}; {shot}"
    results = job["results"]

    category = panel(browser, "classifier")
    top = results["classifier"]["output"]["predictions"][0]["label"]
    assert category.get_attribute("data-state") == "ok", f"{category.text!r}; {shot}"
    assert category.find_element(By.CLASS_NAME, "answer").text == top, f"{category.text!r}; {shot}"

    price = panel(browser, "price")
    assert price.get_attribute("data-state") == "ok", f"{price.text!r}; {shot}"
    amount = price.find_element(By.CLASS_NAME, "answer").text
    interval = price.find_element(By.CLASS_NAME, "interval").text
    answer = results["price"]["output"]
    assert f"{answer['price']:,.2f}" in amount, f"{amount!r} for {answer}; {shot}"
    low, high = f"{answer['interval']['low']:,.2f}", f"{answer['interval']['high']:,.2f}"
    assert re.search(rf"{re.escape(low)}.*–.*{re.escape(high)}", interval), f"{interval!r} for {answer}; {shot}"

    similar = panel(browser, "similar")
    ids = [e.text for e in similar.find_elements(By.CLASS_NAME, "item-id")]
    assert ids and ids == [item["id"] for item in results["similar"]["output"]["items"]], f"{ids}; {shot}"
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, f"the console: {errors}; {shot}"  # a script error, a CSP refusal, a failed load


def test_a_file_that_is_no_photo_is_refused_with_its_reason(
        live_stack: LiveStack, browser: WebDriver, tmp_path: Path) -> None:
    fake = tmp_path / "holiday.jpg"
    fake.write_bytes(b"these are words, not the pixels of a photo\n" * 20)
    open_page(browser)
    choose(browser, fake)
    wait_finished(browser)
    shown = visible_text(browser)
    message = browser.find_element(By.ID, "message")
    assert message.is_displayed() and message.get_attribute("data-kind") == "not-a-photo", shown
    assert "This file was refused: it is not a photo we can read." in message.text, shown
    assert "not a recognised image" in message.text, shown  # and the models' own reason beside it
    for model in ("classifier", "price", "similar"):  # each model's own refusal in its own panel
        box = panel(browser, model)
        assert box.get_attribute("data-state") == "error" and box.get_attribute("data-status") == "400", box.text
        assert "Not a photo this model can read." in box.text, box.text
        assert len(box.find_element(By.CLASS_NAME, "detail").text) > 5, f"no reason from the model: {box.text!r}"


def test_a_photo_over_the_limit_is_refused_before_it_is_sent(
        live_stack: LiveStack, browser: WebDriver, tmp_path: Path) -> None:
    limit = requests.get(f"{live_stack.bridge}/web/config.json", timeout=5).json()["max_body_bytes"]
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * (limit - 3))
    open_page(browser)
    choose(browser, big)
    wait_finished(browser, timeout_s=5)
    message = browser.find_element(By.ID, "message")
    assert message.is_displayed() and message.get_attribute("data-kind") == "too-large", visible_text(browser)
    assert f"({limit} bytes)" in message.text and "too large" in message.text, message.text
    sent = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert not [url for url in sent if "/v1/jobs" in url], f"the photo was sent anyway: {sent}"
    assert not browser.find_element(By.ID, "job").is_displayed()


def test_on_a_phone_the_page_fits_the_screen_and_the_camera_opens(
        live_stack: LiveStack, browser: WebDriver, photos: dict[str, bytes], tmp_path: Path) -> None:
    photo = tmp_path / "coffee.jpg"
    photo.write_bytes(photos["coffee"])
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 390, "height": 844, "deviceScaleFactor": 3, "mobile": True})
    try:
        open_page(browser)
        camera = browser.find_element(By.ID, "camera")
        assert camera.get_attribute("capture") == "environment" and camera.get_attribute("accept") == "image/*"
        assert browser.find_element(By.ID, "choose").get_attribute("capture") is None  # the plain choice
        for label in browser.find_elements(By.CSS_SELECTOR, ".pick .button"):
            assert label.is_displayed() and label.size["height"] >= 44, f"{label.text!r}: {label.size}"
        choose(browser, photo)
        wait_finished(browser)
        browser.save_screenshot(str(PHONE_SCREENSHOT))
        shot = f"screenshot: {PHONE_SCREENSHOT}"
        layout = browser.execute_script("""
            const root = document.documentElement;
            return {inner: window.innerWidth, scroll: root.scrollWidth, body: document.body.scrollWidth,
                    right: Math.max(...[...document.querySelectorAll('main *')].map(e => e.getBoundingClientRect().right))};
        """)
        assert layout["inner"] == 390, f"{layout}; {shot}"
        assert layout["scroll"] <= 390 and layout["body"] <= 390 and layout["right"] <= 390, f"{layout}; {shot}"
        panels = browser.find_elements(By.CSS_SELECTOR, ".panel")
        assert len(panels) == 3 and len({p.location["x"] for p in panels}) == 1, f"not one column; {shot}"
        assert all(p.get_attribute("data-state") == "ok" for p in panels), f"{visible_text(browser)!r}; {shot}"
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


class Front:
    """In front of a bridge of our own: answers the first ``busy`` job submissions 429 + Retry-After: 1 (a rate
    limit), as a busy bridge would; may tell the page a larger body limit than the bridge's (``page_limit``); notes
    the key every submission offered."""

    def __init__(self, app: ASGIApp, busy: int = 0, page_limit: int | None = None) -> None:
        self.app = app
        self.busy = busy
        self.page_limit = page_limit
        self.keys: list[str | None] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/web/config.json" and self.page_limit is not None:
            settings = self.app.state.settings  # type: ignore[attr-defined]
            body = {"api_key": settings.web_key, "max_body_bytes": self.page_limit, "models": list(PAGE_MODELS)}
            await self.answer(send, 200, json.dumps(body).encode())
            return
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/v1/jobs":
            key = dict(scope["headers"]).get(b"x-api-key")
            self.keys.append(key.decode() if key is not None else None)
            if self.busy:
                self.busy -= 1
                message: Message = {"more_body": True}
                while message.get("more_body"):
                    message = await receive()
                body = b'{"code": 429, "type": "TooManyRequests", "message": "slow down", "request_id": "x"}'
                await self.answer(send, 429, body, [(b"retry-after", b"1")])
                return
        await self.app(scope, receive, send)

    @staticmethod
    async def answer(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), *(headers or [])]})
        await send({"type": "http.response.body", "body": body})


@contextmanager
def private_bridge(tmp_path: Path, front: Callable[[ASGIApp], Front], **settings: Any) -> Iterator[tuple[str, Front]]:
    """A bridge of our own, in this process, behind ``front``; its jobs go to the stack's queue, where the stack's
    bridge runs them, unless it is given a database of its own (``pg_dsn``): then it runs them."""
    config = Settings(port=PRIVATE_PORT, telemetry_interval_s=0, spool_dir=tmp_path / "spool",
                      capture_dir=tmp_path / "captures", **settings)
    app = front(create_app(config, run_jobs="pg_dsn" in settings))  # its own database: it runs its own jobs
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=PRIVATE_PORT, log_level="warning"))
    thread = threading.Thread(target=server.run, name="private-bridge", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, f"the bridge on :{PRIVATE_PORT} did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{PRIVATE_PORT}", app
    finally:
        server.should_exit = True
        thread.join(30)


def test_a_bridge_with_keys_gets_the_web_key_and_a_busy_one_is_retried(
        live_stack: LiveStack, browser: WebDriver, photos: dict[str, bytes], tmp_path: Path) -> None:
    photo = tmp_path / "rocket.jpg"
    photo.write_bytes(photos["rocket"])
    busy_once = partial(Front, busy=1)
    with fresh_database("web_page_keys", migrated=True) as dsn:
        with closing(psycopg2.connect(dsn)) as conn, conn:  # the publishable key servingctl keys create would make
            web_key, _ = create_key(conn, "web page", "publishable", "tests")
        with private_bridge(tmp_path, busy_once, api_keys=(SECRET_KEY,), web_key=web_key, pg_dsn=dsn) as (base, front):
            page_flow(base, front, web_key, browser, photo)


def page_flow(base: str, front: Front, web_key: str, browser: WebDriver, photo: Path) -> None:
    """The page on a bridge with keys: it sends its publishable key, and retries a busy (429) submission."""
    assert requests.get(f"{base}/web/config.json", timeout=5).json()["api_key"] == web_key
    assert requests.get(f"{base}/v1/jobs/{uuid.uuid4()}", timeout=5).status_code == 401  # the API needs a key
    refused = requests.get(f"{base}/v1/results", headers={"X-API-Key": web_key}, timeout=5)
    assert refused.status_code == 403, "the page's key must not read the results"
    open_page(browser, base)
    browser.execute_script("""
        window.statusLog = [];
        new MutationObserver(() => window.statusLog.push(document.getElementById('status').textContent))
            .observe(document.getElementById('status'), {childList: true, characterData: true, subtree: true});
    """)
    choose(browser, photo)
    wait_finished(browser)
    log = browser.execute_script("return window.statusLog")
    assert any("The service is busy, retrying in 1 s" in line for line in log), log
    assert front.keys == [web_key, web_key], front.keys  # the 429'd submission and its retry, both with the key
    assert browser.find_element(By.ID, "status").get_attribute("data-state") == "done", visible_text(browser)
    assert [p.get_attribute("data-state") for p in browser.find_elements(By.CSS_SELECTOR, ".panel")] == ["ok"] * 3


def test_the_bridges_own_413_is_shown_with_its_limit(live_stack: LiveStack, browser: WebDriver, tmp_path: Path) -> None:
    """A page told a larger limit than its bridge's (a bridge restarted with another limit): the bridge's 413."""
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 200_000)
    with private_bridge(tmp_path, partial(Front, page_limit=10_000_000), max_body_bytes=100_000) as (base, front):
        open_page(browser, base)
        choose(browser, big)
        wait_finished(browser, timeout_s=10)
    message = browser.find_element(By.ID, "message")
    assert message.get_attribute("data-kind") == "too-large", visible_text(browser)
    assert "This photo is too large for the service." in message.text, message.text
    assert "the limit is 100000 bytes" in message.text, message.text  # the bridge's own words
    assert front.keys == [None]  # sent once (a 413 is not retried), and with no key: this bridge has no web_key
