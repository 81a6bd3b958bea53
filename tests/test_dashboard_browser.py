"""The dashboard in a real headless Chromium against a real `backstream up` (the embedded store)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import service_missing
from tests.processes import Role, free_port, wait_until

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
CHROMIUM = os.environ.get("BACKSTREAM_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# About 10,000 backtests: a few seconds of work, so a progress bar visibly moves. Its objective
# (calmar) keeps it on the interpreted path: the compiled sweep kernel would finish in ~0.5 s.
LONG_SWEEP: dict[str, Any] = {
    "strategy": "sma_cross",
    "symbol": "AAPL",
    "objective": "calmar",
    "params": {"fast": list(range(1, 101)), "slow": list(range(101, 201))},
}
QUICK: dict[str, Any] = {
    "strategy": "sma_cross",
    "symbol": "GOOG",
    "params": {"fast": 10, "slow": 20},
    "commission": 0.002,
}
TIMEOUT_MS = 30_000


def _require_browser() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None  # type: ignore[assignment]
    if sync_playwright is None or not shutil.which(CHROMIUM):
        message = f"the browser tests need playwright (pip) and Chromium at {CHROMIUM} (apt-get install chromium)"
        service_missing(message)
    return sync_playwright


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}  # the embedded default
    env.update(BACKSTREAM_PROGRESS_INTERVAL_MS="100", BACKSTREAM_HEARTBEAT_MS="100")
    env["BACKSTREAM_HOME"] = str(tmp_path / "home")  # not the user's own
    role = Role(["up", "--port", str(port), "--workers", "2"], env, tmp_path / "up.log")
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        assert role.proc.poll() is None, role.log_path.read_text()[-2000:]
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(answers, timeout=30, what="backstream up to answer")
        yield url
    finally:
        assert role.stop() == 0, role.log_path.read_text()[-3000:]


@pytest.fixture
def browser() -> Iterator[Any]:
    sync_playwright = _require_browser()
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


def progress_of(locator: Any) -> float:
    return float(locator.get_attribute("aria-valuenow") or 0)


def test_submit_watch_chart_and_cancel(server: str, browser: Any) -> None:
    for _ in range(3):  # some finished history for the table
        httpx.post(f"{server}/api/backtests", json=QUICK, timeout=5).raise_for_status()
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    # The form: a bad request is refused with the API's message next to the field.
    page.goto(f"{server}/submit")
    page.select_option("select[name=strategy]", "sma_cross")
    page.select_option("select[name=symbol]", "AAPL")
    page.fill("input[name='param:fast']", "30")
    page.fill("input[name='param:slow']", "20")
    page.click("#submit-button")
    page.wait_for_selector("label.invalid .error:not(:empty)")
    assert "fast" in page.inner_text("label.invalid")
    page.screenshot(path=str(ARTIFACTS / "dashboard-submit.png"), full_page=True)

    # A sweep long enough to watch: submit it from the form, follow its page to completion.
    page.fill("input[name='param:fast']", ",".join(map(str, range(1, 71))))
    page.fill("input[name='param:slow']", ",".join(map(str, range(101, 171))))
    page.click("#submit-button")
    page.wait_for_url(f"{server}/tasks/*")
    bar = page.locator("#progress .bar")
    wait_until(lambda: 0 < progress_of(bar) < 100, timeout=30, what="the progress bar to move")
    moving = progress_of(bar)
    page.wait_for_selector("#status.completed")  # the page reloads with the result
    page.wait_for_selector("#equity-chart svg polyline")
    page.wait_for_selector("#drawdown-chart svg polygon")
    assert page.locator("table.trades tbody tr").count() > 0
    assert page.locator("#events tbody tr").count() >= 3  # submitted, started, … completed
    assert progress_of(page.locator("#progress .bar")) == 100 > moving
    page.screenshot(path=str(ARTIFACTS / "dashboard-task.png"), full_page=True)

    # A long task runs: the workers page shows who runs it; the table cancels it mid-run.
    victim = httpx.post(f"{server}/api/backtests", json=LONG_SWEEP, timeout=5).json()["task_id"]
    page.goto(f"{server}/workers")
    page.wait_for_selector(f'#consumers a[href="/tasks/{victim}"]')  # listed under its worker
    assert "alive" in page.inner_text("#consumers")
    page.screenshot(path=str(ARTIFACTS / "dashboard-workers.png"), full_page=True)

    page.goto(server)
    row = page.locator(f'tr[data-task="{victim}"]')
    wait_until(lambda: 0 < progress_of(row.locator(".bar")) < 100, timeout=30, what="the victim to make progress")
    page.screenshot(path=str(ARTIFACTS / "dashboard-tasks.png"), full_page=True)
    row.locator("button.cancel").click()
    row.locator(".badge.cancelled").wait_for()
    task = httpx.get(f"{server}/api/backtests/tasks/{victim}", timeout=5).json()
    assert task["status"] == "cancelled" and 0 < task["progress"] < 1
    assert row.locator("button.cancel").is_hidden()

    # A task submitted while the table is open appears in it live.
    newcomer = httpx.post(f"{server}/api/backtests", json=QUICK, timeout=5).json()["task_id"]
    page.locator(f'tr[data-task="{newcomer}"] .badge.completed').wait_for()
    page.close()  # closes its event streams before the server stops
    assert errors == []


@pytest.fixture
def signed_server(tmp_path: Path) -> Iterator[tuple[str, Role]]:
    """`backstream up` with access control on: alice may write."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(BACKSTREAM_TOKENS="alice:alice-secret:rw", BACKSTREAM_PROGRESS_INTERVAL_MS="100")
    env["BACKSTREAM_HOME"] = str(tmp_path / "home")  # not the user's own
    role = Role(["up", "--port", str(port), "--workers", "1"], env, tmp_path / "up.log")
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        assert role.proc.poll() is None, role.log_path.read_text()[-2000:]
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(answers, timeout=30, what="backstream up to answer")
        yield url, role
    finally:
        assert role.stop() == 0, role.log_path.read_text()[-3000:]


HOSTILE = """<!doctype html><html><body><iframe name="sink"></iframe>
<form id="f" method="post" target="sink" enctype="text/plain" action="{url}/api/backtests/tasks/{task}/retry">
<input name='{{"x":"' value='"}}'></form><script>
const body = JSON.stringify({quick});
Promise.allSettled([
  fetch("{url}/api/backtests", {{method: "POST", mode: "no-cors", credentials: "include",
    headers: {{"content-type": "text/plain"}}, body}}),
  fetch("{url}/api/backtests/tasks/{task}", {{method: "DELETE", credentials: "include"}}),
  new Promise((done) => {{ document.querySelector("iframe").onload = done; document.getElementById("f").submit(); }}),
]).then(() => {{ document.title = "done"; }});
</script></body></html>"""


def test_signed_in_dashboard_acts_and_a_page_on_another_port_cannot(
    signed_server: tuple[str, Role], browser: Any
) -> None:
    import http.server
    import threading

    server, role = signed_server
    alice = {"Authorization": "Bearer alice-secret"}
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    # Signing in: the page is styled without a token, the form posts it, the URL never shows it.
    page.goto(f"{server}/submit")
    assert page.locator("main.login").evaluate("el => getComputedStyle(el).maxWidth") == "360px"
    page.fill("input[name=token]", "alice-secret")
    page.click("button[type=submit]")
    page.wait_for_url(f"{server}/submit")
    assert "signed in as alice" in page.inner_text("header")

    # The form's POST and the task page's DELETE carry the CSRF token: both work.
    page.select_option("select[name=symbol]", "AAPL")
    page.fill("input[name='param:fast']", ",".join(map(str, range(1, 71))))
    page.fill("input[name='param:slow']", ",".join(map(str, range(101, 171))))
    page.click("#submit-button")
    page.wait_for_url(f"{server}/tasks/*")
    task_id = page.url.rsplit("/", 1)[1]
    page.click("section.task-head button.cancel")
    page.wait_for_selector("#status.cancelled")
    task = httpx.get(f"{server}/api/backtests/tasks/{task_id}", headers=alice, timeout=5).json()
    assert task["status"] == "cancelled" and task["cancelled_by"] == "alice"

    # A page on another port of the same host (same site: the SameSite=Strict cookie goes along)
    # tries a text/plain submit, a cancel, and a text/plain form post to retry. Nothing happens.
    victim = httpx.post(f"{server}/api/backtests", json=LONG_SWEEP, headers=alice, timeout=5).json()["task_id"]
    before = httpx.get(f"{server}/api/backtests/tasks", headers=alice, timeout=5).json()["tasks"]
    html = HOSTILE.format(url=server, task=victim, quick=json.dumps(QUICK)).encode()

    class Hostile(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(html)

        def log_message(self, *args: Any) -> None:
            pass

    attacker = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Hostile)
    threading.Thread(target=attacker.serve_forever, daemon=True).start()
    try:
        evil = context.new_page()
        evil.goto(f"http://127.0.0.1:{attacker.server_address[1]}/")
        evil.wait_for_function("document.title === 'done'")
    finally:
        attacker.shutdown()
        attacker.server_close()
    after = httpx.get(f"{server}/api/backtests/tasks", headers=alice, timeout=5).json()["tasks"]
    assert [t["task_id"] for t in after] == [t["task_id"] for t in before]  # nothing submitted
    events = httpx.get(f"{server}/api/backtests/tasks/{victim}/events", headers=alice, timeout=5).json()["events"]
    assert "cancelled" not in [e["type"] for e in events]
    refused = [e for e in role.logs() if e.get("event") == "csrf.cross_origin_refused"]
    # The DELETE needs a CORS preflight, which this server never grants: the browser never sends it.
    assert {(e["method"], e["path"]) for e in refused} == {
        ("POST", "/api/backtests"),
        ("POST", f"/api/backtests/tasks/{victim}/retry"),
    }
    httpx.delete(f"{server}/api/backtests/tasks/{victim}", headers=alice, timeout=5)
    context.close()
    assert errors == []


def test_the_form_sends_position_management(server: str, browser: Any) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{server}/submit")
    page.select_option("select[name=strategy]", "sma_cross")
    page.select_option("select[name=symbol]", "GOOG")
    page.fill("input[name='param:fast']", "10")
    page.fill("input[name='param:slow']", "30")
    page.fill("input[name=stop_loss_pct]", "0")  # refused next to its field
    page.click("#submit-button")
    page.wait_for_selector("label.invalid .error:not(:empty)")
    assert page.get_attribute("label.invalid", "data-field") == "stop_loss_pct"
    page.fill("input[name=stop_loss_pct]", "2,4")  # a sweep over the stop
    page.fill("input[name=take_profit_pct]", "6")
    page.click("#submit-button")
    page.wait_for_url(f"{server}/tasks/*")
    task = httpx.get(f"{server}/api/backtests/tasks/{page.url.rsplit('/', 1)[1]}", timeout=5).json()
    assert task["spec"]["stop_loss_pct"] == [2.0, 4.0] and task["spec"]["take_profit_pct"] == 6.0
    assert "size" not in task["spec"]  # an empty field is not sent
