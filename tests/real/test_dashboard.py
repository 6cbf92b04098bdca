"""The web dashboard in a real headless browser: Debian's chromium driven by Selenium through
/usr/bin/chromedriver (no browser download; Selenium Manager is kept offline).

Covered: the page loads with no console errors, the endpoints table shows the configured mocks
with live status, a mock killed by the test turns offline on the page within seconds, the
keyboard sorts the table, the page fits a phone-sized screen, the recent-requests list shows a
request the test sent, and the admin UI (token form, then the Drain button) drains a backend,
checked through the admin API. Screenshots go to target/test-artifacts/dashboard/.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from conftest import REPO_ROOT, free_port, http_get, mock_backend, wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = REPO_ROOT / "target" / "test-artifacts" / "dashboard"
TOKEN = "dashboard-admin-token"

os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must never reach the network

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402


@pytest.fixture
def browser(tmp_path):
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            pytest.fail(f"{path} missing: apt-get install chromium chromium-driver (.ci/run does)",
                        pytrace=False)
    profile = tempfile.mkdtemp(prefix="olla-chromium-", dir=tmp_path)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,1600"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=opts)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def shot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def console_errors(driver, allowed_404: tuple[str, ...] = ()) -> list[dict]:
    """SEVERE browser-log entries (script errors, failed loads), except 404s of `allowed_404`."""
    out = []
    for e in driver.get_log("browser"):
        if e.get("level") != "SEVERE":
            continue
        msg = e.get("message", "")
        if any(p in msg for p in allowed_404) and "404" in msg:
            continue
        out.append(e)
    return out


def row_status(driver, name: str) -> str:
    rows = driver.find_elements(By.CSS_SELECTOR, f'#ep-body tr[data-endpoint="{name}"]')
    if not rows:
        return ""
    return rows[0].find_elements(By.CSS_SELECTOR, "td")[0].text.strip()


def admin_get(base: str, path: str) -> dict:
    req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


def recent_route_missing(olla) -> bool:
    return http_get(olla.url("/internal/stats/recent"))[0] == 404


def start_pair(olla, olla_mock, admin: bool = False):
    a = olla_mock("dash-a", models=("llama3.2:3b",))
    b = olla_mock("dash-b", models=("llama3.2:3b", "qwen2.5:7b"))
    overrides = {"proxy": {"health": {"unhealthy_threshold": 1}}}
    admin_port = None
    if admin:
        admin_port = free_port()
        overrides["admin"] = {"enabled": True, "listen": f"127.0.0.1:{admin_port}", "token": TOKEN}
    o = olla([mock_backend(a, "openai", priority=100), mock_backend(b, "openai", priority=50)], overrides)
    return a, b, o, admin_port


def test_page_shows_live_endpoints_and_a_killed_backend_turns_offline(olla, olla_mock, browser):
    a, b, o, _ = start_pair(olla, olla_mock)
    browser.get(o.url("/internal/ui/"))
    assert browser.title == "olla dashboard"
    wait_until(lambda: row_status(browser, "dash-a") == "healthy" and row_status(browser, "dash-b") == "healthy",
               timeout=15, desc="both mocks healthy on the page")
    assert browser.find_element(By.ID, "ov-up").text == "2/2"
    # The model catalog lists the shared model on both backends, the other on one.
    wait_until(lambda: "qwen2.5:7b" in browser.find_element(By.ID, "models-body").text, timeout=15,
               desc="models table filled")
    # The supervision tree shows the backend actors.
    wait_until(lambda: "backend:dash-b" in browser.find_element(By.ID, "sup-tree").text, timeout=15,
               desc="supervision tree filled")
    shot(browser, "endpoints-healthy")

    # Keyboard: focus the "Name" header button and press Enter to sort by name, ascending.
    name_button = browser.find_element(By.CSS_SELECTOR, 'th[data-key="name"] button')
    name_button.send_keys(Keys.ENTER)
    th = browser.find_element(By.CSS_SELECTOR, 'th[data-key="name"]')
    assert th.get_attribute("aria-sort") == "ascending"
    names = [r.get_attribute("data-endpoint") for r in browser.find_elements(By.CSS_SELECTOR, "#ep-body tr")]
    assert names == ["dash-a", "dash-b"]
    name_button.send_keys(Keys.ENTER)
    assert th.get_attribute("aria-sort") == "descending"
    names = [r.get_attribute("data-endpoint") for r in browser.find_elements(By.CSS_SELECTOR, "#ep-body tr")]
    assert names == ["dash-b", "dash-a"]

    t0 = time.monotonic()
    b.kill()
    wait_until(lambda: row_status(browser, "dash-b") == "offline", timeout=10, interval=0.1,
               desc="the killed mock shown offline")
    took = time.monotonic() - t0
    assert row_status(browser, "dash-a") == "healthy"
    wait_until(lambda: browser.find_element(By.ID, "ov-up").text == "1/2", timeout=5, desc="1/2 up")
    shot(browser, "endpoint-offline")
    print(f"killed backend shown offline after {took:.1f}s")
    allowed = ("/internal/stats/recent",) if recent_route_missing(o) else ()
    errors = console_errors(browser, allowed)
    assert not errors, errors


def test_phone_sized_screen_has_no_page_wide_horizontal_scroll(olla, olla_mock, browser):
    _, _, o, _ = start_pair(olla, olla_mock)
    browser.set_window_size(390, 844)
    browser.get(o.url("/internal/ui/"))
    wait_until(lambda: row_status(browser, "dash-a") == "healthy", timeout=15, desc="page filled")
    overflow = browser.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth;")
    assert overflow <= 1, f"page is {overflow}px wider than the screen"
    shot(browser, "phone")
    # Every control is reachable with Tab: walk the focus order and collect what gets focus.
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)
    seen = set()
    for _ in range(40):
        active = browser.switch_to.active_element
        seen.add(active.text.strip() or active.get_attribute("id") or active.tag_name)
        active.send_keys(Keys.TAB)
    assert {"Skip to endpoints", "Pause", "Name", "Status"} <= seen, seen


def test_recent_requests_list_shows_a_request_the_test_sent(olla, olla_mock, browser):
    _, _, o, _ = start_pair(olla, olla_mock)
    status, _ = http_get(o.url("/internal/stats/recent"))
    assert status == 200, (f"GET /internal/stats/recent answered {status}: this build lacks the "
                           f"recent-requests route the page reads")
    browser.get(o.url("/internal/ui/"))
    wait_until(lambda: row_status(browser, "dash-a") == "healthy", timeout=15, desc="page filled")
    rid = f"dash-{uuid.uuid4().hex[:12]}"
    body = json.dumps({"model": "llama3.2:3b", "messages": [{"role": "user", "content": "hi"}]}).encode()
    req = urllib.request.Request(o.url("/olla/proxy/v1/chat/completions"), data=body, method="POST",
                                 headers={"Content-Type": "application/json", "X-Request-Id": rid})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
        r.read()

    def row():
        rows = browser.find_elements(By.CSS_SELECTOR, f'#req-body tr[data-request-id="{rid}"]')
        return rows[0] if rows else None

    tr = wait_until(row, timeout=10, desc="the request in the recent list")
    cells = [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
    assert cells[1] == "llama3.2:3b" and cells[2] == "dash-a" and cells[3] == "200", cells
    shot(browser, "recent-requests")
    assert not console_errors(browser)


def test_admin_ui_drain_button_drains_the_backend(olla, olla_mock, browser):
    _, _, o, admin_port = start_pair(olla, olla_mock, admin=True)
    admin = f"http://127.0.0.1:{admin_port}"
    browser.get(admin + "/admin/ui/")
    assert browser.title == "olla admin"
    form = browser.find_element(By.ID, "token-form")
    assert form.is_displayed()
    field = browser.find_element(By.ID, "token-input")
    field.send_keys("wrong-token")
    field.send_keys(Keys.ENTER)
    wait_until(lambda: "refused" in browser.find_element(By.ID, "token-error").text, timeout=10,
               desc="a wrong token is refused")
    field = browser.find_element(By.ID, "token-input")
    field.send_keys(TOKEN)
    field.send_keys(Keys.ENTER)
    wait_until(lambda: row_status(browser, "dash-a") == "healthy" and row_status(browser, "dash-b") == "healthy",
               timeout=15, desc="both mocks healthy on the admin page")
    assert not browser.find_element(By.ID, "admin-login").is_displayed()
    assert admin_get(admin, "/admin/backends/dash-a")["draining"] is False

    browser.find_element(By.CSS_SELECTOR, 'button[data-action="drain"][data-endpoint="dash-a"]').click()
    wait_until(lambda: admin_get(admin, "/admin/backends/dash-a")["draining"] is True, timeout=10,
               desc="dash-a draining per the admin API")
    wait_until(lambda: row_status(browser, "dash-a") == "draining", timeout=10, desc="page shows draining")
    assert admin_get(admin, "/admin/backends/dash-b")["draining"] is False

    # Priority / weight form.
    from selenium.webdriver.support.ui import Select
    Select(browser.find_element(By.ID, "w-endpoint")).select_by_value("dash-b")
    w = browser.find_element(By.ID, "w-weight")
    w.clear()
    w.send_keys("3")
    p = browser.find_element(By.ID, "w-priority")
    p.clear()
    p.send_keys("75")
    p.send_keys(Keys.ENTER)
    wait_until(lambda: (lambda b: b["weight"] == 3 and b["priority"] == 75)(admin_get(admin, "/admin/backends/dash-b")),
               timeout=10, desc="weight and priority applied")

    browser.find_element(By.CSS_SELECTOR, 'button[data-action="enable"][data-endpoint="dash-a"]').click()
    wait_until(lambda: admin_get(admin, "/admin/backends/dash-a")["draining"] is False, timeout=10,
               desc="dash-a enabled again")
    # Reload re-reads the config file (unchanged: nothing to apply, but the call succeeds).
    browser.find_element(By.ID, "reload-config").click()
    wait_until(lambda: browser.find_element(By.ID, "toast").text == "reload: done.", timeout=10,
               desc="reload reported done")
    shot(browser, "admin")
    # The token stays in this tab only: a reload does not ask again.
    browser.refresh()
    wait_until(lambda: row_status(browser, "dash-a") == "healthy", timeout=15, desc="page after refresh")
    assert not browser.find_element(By.ID, "admin-login").is_displayed()
    allowed = ("/internal/stats/recent",) if recent_route_missing(o) else ()
    # The wrong token's 401 is an expected failed load.
    errors = [e for e in console_errors(browser, allowed) if "401" not in e.get("message", "")]
    assert not errors, errors


def test_admin_ui_on_a_listener_without_a_token_asks_for_none(olla, olla_mock, browser):
    a = olla_mock("open-a")
    admin_port = free_port()
    o = olla([mock_backend(a, "openai")],
             {"admin": {"enabled": True, "listen": f"127.0.0.1:{admin_port}"}})
    browser.get(f"http://127.0.0.1:{admin_port}/admin/ui/")
    wait_until(lambda: row_status(browser, "open-a") == "healthy", timeout=15, desc="admin page filled")
    assert not browser.find_element(By.ID, "admin-login").is_displayed()
    browser.find_element(By.CSS_SELECTOR, 'button[data-action="probe"][data-endpoint="open-a"]').click()
    wait_until(lambda: "probe open-a: done." in browser.find_element(By.ID, "toast").text, timeout=10,
               desc="probe reported done")
    allowed = ("/internal/stats/recent",) if recent_route_missing(o) else ()
    assert not console_errors(browser, allowed)


# The page's side of the recent-requests contract, with the route's documented shape served by
# a fetch stub injected before the page's own script (the live route is covered above).
RECENT_STUB = """
(() => {
  const real = window.fetch;
  window.fetch = (url, opts) => {
    if (String(url).startsWith('/internal/stats/recent')) {
      const now = Date.now();
      const body = {capacity: 512, totals: {requests: 3, errors_4xx: 0, errors_5xx: 1, in_flight: 0},
        requests: [
          {time: new Date(now - 1000).toISOString(), request_id: 'stub-poll', method: 'GET',
           path: '/internal/status', route: 'internal', model: null, endpoint: null, status: 200,
           stream: false, ttfb_ms: null, duration_ms: 0.3, bytes_out: 10, tokens_in: null,
           tokens_out: null, failovers: 0, client: '127.0.0.1', key: null},
          {time: new Date(now - 2000).toISOString(), request_id: 'stub-chat', method: 'POST',
           path: '/olla/proxy/v1/chat/completions', route: 'openai', model: 'llama3.2:3b',
           endpoint: 'dash-a', status: 200, stream: true, ttfb_ms: 12.5, duration_ms: 840.0,
           bytes_out: 1234, tokens_in: 5, tokens_out: 20, failovers: 0, client: '127.0.0.1', key: null},
          {time: new Date(now - 3000).toISOString(), request_id: 'stub-fail', method: 'POST',
           path: '/olla/proxy/v1/chat/completions', route: 'openai', model: 'nope', endpoint: null,
           status: 502, stream: false, ttfb_ms: null, duration_ms: 3.0, bytes_out: 90,
           tokens_in: null, tokens_out: null, failovers: 1, client: '127.0.0.1', key: 'alice'}]};
      return Promise.resolve(new Response(JSON.stringify(body),
        {status: 200, headers: {'Content-Type': 'application/json'}}));
    }
    return real(url, opts);
  };
})();
"""


def test_recent_requests_render_the_routes_documented_shape(olla, olla_mock, browser):
    _, _, o, _ = start_pair(olla, olla_mock)
    browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": RECENT_STUB})
    browser.get(o.url("/internal/ui/"))

    def rows():
        found = browser.find_elements(By.CSS_SELECTOR, "#req-body tr")
        return found if len(found) == 2 else None

    got = wait_until(rows, timeout=10, desc="two proxied requests listed (the status poll hidden)")
    chat = [td.text for td in got[0].find_elements(By.TAG_NAME, "td")]
    assert got[0].get_attribute("data-request-id") == "stub-chat"
    assert chat[1:] == ["llama3.2:3b", "dash-a", "200", "12.5 ms", "840 ms", "5 / 20"], chat
    fail = [td.text for td in got[1].find_elements(By.TAG_NAME, "td")]
    assert fail[1:] == ["nope", "–", "502", "–", "3.0 ms", "–"], fail
    wait_until(lambda: browser.find_element(By.ID, "ov-ttfb").text == "12.5 ms / 12.5 ms", timeout=10,
               desc="TTFB percentiles from the list")
    assert browser.find_element(By.ID, "ov-dur").text == "3.0 ms / 840 ms"
    assert browser.find_element(By.ID, "req-note").text == ""
    assert not console_errors(browser)
