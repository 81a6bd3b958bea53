"""The dashboard in a real headless Chromium against a real `backstream up` (the embedded store)."""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from orchestrator.storage.partitions import chunk_id
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
# A sweep that runs for a minute or more on any machine, so a test can watch and cancel it: the
# largest grid over LONGRUN, a series many times longer than the bundled ones (`long_data`).
LONG_SWEEP: dict[str, Any] = {
    "strategy": "sma_cross",
    "symbol": "LONGRUN",
    "objective": "calmar",
    "params": {"fast": list(range(1, 101)), "slow": list(range(101, 201))},
}
LONG_BARS = 40_000


def long_data(directory: Path) -> str:
    """A data directory holding LONGRUN.csv: LONG_BARS daily bars of a cent-priced random walk."""
    directory.mkdir(parents=True, exist_ok=True)
    close = np.round(50 + np.abs(np.cumsum(np.random.default_rng(7).choice([-0.05, 0.0, 0.05], LONG_BARS))), 2)
    first = dt.date(1900, 1, 1).toordinal()
    lines = ["Date,Open,High,Low,Close,Volume"]
    for i, c in enumerate(close.tolist()):
        lines.append(f"{dt.date.fromordinal(first + i).isoformat()},{c:.2f},{c + 0.1:.2f},{c - 0.1:.2f},{c:.2f},1000")
    (directory / "LONGRUN.csv").write_text("\n".join(lines) + "\n")
    return str(directory)


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


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One `backstream up` for the module's tests: starting one takes seconds, and no test here
    needs an empty store (each finds its own tasks by id)."""
    tmp_path = tmp_path_factory.mktemp("up")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}  # the embedded default
    env.update(BACKSTREAM_PROGRESS_INTERVAL_MS="100", BACKSTREAM_HEARTBEAT_MS="100")
    env["BACKSTREAM_HOME"] = str(tmp_path / "home")  # not the user's own
    env["BACKSTREAM_DATA_DIR"] = long_data(tmp_path / "data")
    role = Role(["up", "--port", str(port), "--workers", "2"], env, tmp_path / "up.log")
    url = f"http://127.0.0.1:{port}"

    try:
        role.wait_serving(url, timeout=30)
        yield url
    finally:
        assert role.stop() == 0, role.log_path.read_text()[-3000:]


@pytest.fixture(scope="module")
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

    # A sweep long enough to watch: submit it from the form, follow its page to completion. Its
    # objective (calmar) keeps it off the compiled batch kernel: a few seconds, not a fraction of one.
    page.fill("input[name='param:fast']", ",".join(map(str, range(1, 71))))
    page.fill("input[name='param:slow']", ",".join(map(str, range(101, 171))))
    page.select_option("select[name=objective]", "calmar")
    page.click("#submit-button")
    page.wait_for_url(f"{server}/tasks/*")
    bar = page.locator("#progress .bar")
    wait_until(lambda: 0 < progress_of(bar) < 100, timeout=30, what="the progress bar to move")
    moving = progress_of(bar)
    page.wait_for_selector("#status.completed")  # the page reloads with the result
    page.wait_for_selector("#equity-chart canvas")
    page.wait_for_selector("#drawdown-chart canvas")
    assert page.locator("#trades tbody tr").count() > 0
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


SWEEP_2D: dict[str, Any] = {
    "strategy": "sma_cross",
    "symbol": "AAPL",
    "params": {"fast": list(range(2, 21, 2)), "slow": list(range(30, 101, 10))},
    "objective": "sharpe",
}


def submit(server: str, spec: dict[str, Any]) -> str:
    reply = httpx.post(f"{server}/api/backtests", json=spec, timeout=5)
    assert reply.status_code == 202, reply.text
    return str(reply.json()["task_id"])


def task(server: str, task_id: str) -> dict[str, Any]:
    return httpx.get(f"{server}/api/backtests/tasks/{task_id}", timeout=5).json()  # type: ignore[no-any-return]


def finished(server: str, *task_ids: str) -> dict[str, dict[str, Any]]:
    states: dict[str, dict[str, Any]] = {}

    def done() -> bool:
        states.update({t: task(server, t) for t in task_ids})
        return all(s["status"] in ("completed", "failed", "cancelled") for s in states.values())

    wait_until(done, timeout=60, what="the tasks to finish")
    return states


def result(server: str, task_id: str) -> dict[str, Any]:
    return httpx.get(f"{server}/api/backtests/tasks/{task_id}/result", timeout=10).json()  # type: ignore[no-any-return]


def cents(value: float) -> str:
    return f"{value:,.2f}"


def new_page(browser: Any) -> tuple[Any, list[str]]:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    return page, errors


def test_equity_chart_trades_and_metrics_of_a_run(server: str, browser: Any) -> None:
    run = submit(server, {**QUICK, "symbol": "AAPL"})
    assert finished(server, run)[run]["status"] == "completed"
    detail = result(server, run)
    curve, trades = detail["equity_curve"], detail["trades"]
    page, errors = new_page(browser)
    page.goto(f"{server}/tasks/{run}")

    # Strategy, buy and hold, entries and exits on one chart (log scale), drawdown beneath it.
    page.wait_for_selector("#equity-chart canvas")
    page.wait_for_selector("#drawdown-chart canvas")
    labels = page.locator("#equity-chart .u-legend .u-series th").all_inner_texts()
    assert [x.strip().lower() for x in labels] == ["date", "strategy", "buy and hold", "entry", "exit"]
    assert page.locator("#log-scale").is_checked()
    # One marker per bar where a trade was entered, and one where one was exited, at its equity.
    marked = "i => document.getElementById('equity-chart').uplot.data[i].filter(v => v !== null)"
    assert page.evaluate(marked, 3) == [curve["equity"][b] for b in sorted(set(trades["entry_bar"]))]
    assert page.evaluate(marked, 4) == [curve["equity"][b] for b in sorted(set(trades["exit_bar"]))]
    assert page.evaluate("document.getElementById('equity-chart').uplot.scales.y.distr") == 3  # log

    # Hover: the legend shows that bar's date and values, to the cent.
    page.locator("#equity-chart .u-over").hover(position={"x": 500, "y": 100})
    values = page.locator("#equity-chart .u-legend .u-series td.u-value").all_inner_texts()
    day = values[0]
    assert day in curve["time"], values
    i = curve["time"].index(day)
    hold = curve["equity"][0] * curve["close"][i] / curve["close"][0]
    assert values[1:3] == [cents(curve["equity"][i]), cents(hold)]
    drawdown = page.locator("#drawdown-chart .u-legend .u-series td.u-value").all_inner_texts()
    assert drawdown == [day, f"{curve['drawdown_pct'][i]:,.2f} %"]  # the cursors move together
    page.locator("#equity-chart").screenshot(path=str(ARTIFACTS / "equity.png"))

    # The log-scale box redraws on a linear scale.
    page.uncheck("#log-scale")
    assert page.evaluate("document.getElementById('equity-chart').uplot.scales.y.distr") == 1

    # Trades: prices, P&L and returns to the cent, right-aligned; days and sizes whole.
    rows = page.locator("#trades tbody tr")
    shown = min(rows.count(), 25)
    assert shown == min(len(trades["entry_bar"]), 25) > 0
    head = [h.strip().lower() for h in page.locator("#trades thead th").all_inner_texts()]
    col = {name: head.index(name) for name in ("entry price", "exit price", "p&l", "size", "days")}
    cells = [rows.nth(r).locator("td").all_inner_texts() for r in range(shown)]
    for r, row in enumerate(cells):
        assert row[col["entry price"]] == cents(trades["entry_price"][r])
        assert row[col["exit price"]] == cents(trades["exit_price"][r])
        assert row[col["p&l"]] == cents(trades["pnl"][r])
        assert row[col["size"]] == f"{trades['size'][r]:,}"
        assert row[col["days"]] == f"{trades['duration_days'][r]:,}"
    # Among them a price whose fourth significant digit is not its last (168.21, not 168.2).
    assert any(f"{p:.4g}" != f"{p:.2f}" for p in trades["entry_price"][:shown] + trades["exit_price"][:shown])
    align = rows.first.locator("td.num").first.evaluate("el => getComputedStyle(el).textAlign")
    assert align == "right"

    # Every metric from the result, two decimals, counts whole.
    metrics = detail["metrics"]
    grid = page.locator("#metrics-table")
    assert grid.locator("[data-metric]").count() == len(metrics)
    assert grid.locator('[data-metric="equity_final"] .num').inner_text() == cents(metrics["equity_final"])
    assert grid.locator('[data-metric="sharpe"] .num').inner_text() == cents(metrics["sharpe"])
    assert grid.locator('[data-metric="num_trades"] .num').inner_text() == str(metrics["num_trades"])
    page.screenshot(path=str(ARTIFACTS / "dashboard-run.png"), full_page=True)

    # Downloads: each table in CSV, Parquet and JSON, from links on the page.
    with page.expect_download() as csv_download:
        page.locator("#downloads a", has_text="csv").nth(1).click()  # trades (equity comes first)
    rows_read = list(csv.DictReader(Path(csv_download.value.path()).read_text().splitlines()))
    assert csv_download.value.suggested_filename == f"{run}-trades.csv"
    assert [float(r["entry_price"]) for r in rows_read] == trades["entry_price"]
    with page.expect_download() as parquet_download:
        page.locator("#downloads a", has_text="parquet").first.click()  # equity
    assert Path(parquet_download.value.path()).read_bytes()[:4] == b"PAR1"
    page.close()
    assert errors == []


def test_sweep_heatmap_table_and_a_cell_opens_its_run(server: str, browser: Any) -> None:
    sweep = submit(server, SWEEP_2D)
    assert finished(server, sweep)[sweep]["status"] == "completed"
    table = result(server, sweep)["table"]
    combos = len(SWEEP_2D["params"]["fast"]) * len(SWEEP_2D["params"]["slow"])
    assert len(table) == combos
    page, errors = new_page(browser)
    page.goto(f"{server}/tasks/{sweep}")

    # One cell per combination, colored by the objective; any metric can color it.
    cells = page.locator("#heatmap rect.cell")
    cells.first.wait_for()
    assert cells.count() == combos
    by_params = {(r["params"]["fast"], r["params"]["slow"]): r for r in table}

    def cell_value(fast: int, slow: int) -> str:
        return page.locator(f'#heatmap rect.cell[data-x="{fast}"][data-y="{slow}"]').get_attribute("data-value") or ""

    assert float(cell_value(10, 50)) == pytest.approx(by_params[(10, 50)]["objective"])
    page.locator('#heatmap rect.cell[data-x="10"][data-y="50"]').hover()
    assert "fast=10, slow=50: sharpe " + cents(by_params[(10, 50)]["objective"]) in page.inner_text("#heatmap-readout")
    top, bottom = page.locator("#sweep").bounding_box(), page.locator("#sweep-table tbody tr").nth(5).bounding_box()
    scrolled = page.evaluate("window.scrollY")  # bounding boxes are in the viewport, a clip in the page
    clip = {"x": top["x"], "y": top["y"] + scrolled, "width": top["width"], "height": bottom["y"] - top["y"]}
    page.screenshot(path=str(ARTIFACTS / "heatmap.png"), clip=clip, full_page=True)
    page.select_option("#heatmap-metric", "return_pct")
    assert float(cell_value(10, 50)) == pytest.approx(by_params[(10, 50)]["return_pct"])

    # The full table: paged 25 at a time, sorted by the objective, then by any column.
    sweep_rows = page.locator("#sweep-table tbody tr")
    assert sweep_rows.count() == 25
    assert page.inner_text("#sweep-table .where") == f"rows 1–25 of {combos}"
    page.click("#sweep-table button.next")
    assert page.inner_text("#sweep-table .where") == f"rows 26–50 of {combos}"
    page.click("#sweep-table button.prev")
    keys = [th.get_attribute("data-key") for th in page.locator("#sweep-table thead th").all()]

    def column(key: str) -> list[str]:
        index = keys.index(key)
        return [sweep_rows.nth(r).locator("td").nth(index).inner_text() for r in range(sweep_rows.count())]

    def sorted_by() -> str:
        return page.locator("#sweep-table th[data-sort]:not([data-sort=''])").get_attribute("data-key") or ""

    def top(key: str, descending: bool) -> list[str]:
        values = sorted((r[key] for r in table if r[key] is not None), reverse=descending)
        return [cents(v) for v in values[:25]]

    assert sorted_by() == "objective"
    assert column("objective") == top("objective", True)
    page.click('#sweep-table th[data-key="return_pct"]')  # numbers sort largest first
    assert column("return_pct") == top("return_pct", True)
    page.click('#sweep-table th[data-key="return_pct"]')  # a second click: smallest first
    assert page.get_attribute('#sweep-table th[data-key="return_pct"]', "data-sort") == "asc"
    assert column("return_pct") == top("return_pct", False)

    # A click on a cell submits that combination as a single run and opens it.
    page.locator('#heatmap rect.cell[data-x="10"][data-y="50"]').click()
    page.wait_for_url(lambda url: "/tasks/" in url and sweep not in url)
    single = page.url.rsplit("/", 1)[1]
    spec = task(server, single)["spec"]
    assert spec["params"] == {"fast": 10, "slow": 50} and spec["symbol"] == "AAPL"
    assert finished(server, single)[single]["status"] == "completed"
    page.wait_for_selector("#equity-chart canvas")
    assert result(server, single)["metrics"]["return_pct"] == pytest.approx(by_params[(10, 50)]["return_pct"])

    # A second click on the same cell opens that run again instead of running it twice.
    page.goto(f"{server}/tasks/{sweep}")
    page.locator('#heatmap rect.cell[data-x="10"][data-y="50"]').click()
    page.wait_for_url(f"{server}/tasks/{single}")
    page.close()
    assert errors == []


def test_compare_two_to_four_runs(server: str, browser: Any) -> None:
    runs = [
        submit(server, {**QUICK, "symbol": "AAPL"}),
        submit(server, {**QUICK, "params": {"fast": 5, "slow": 30}}),
        submit(server, {"strategy": "momentum", "symbol": "AAPL", "params": {"lookback": 20, "threshold": 0.02}}),
    ]
    assert {s["status"] for s in finished(server, *runs).values()} == {"completed"}
    page, errors = new_page(browser)

    # The picker: two runs ticked and submitted.
    page.goto(f"{server}/compare")
    for run in runs[:2]:
        page.check(f"#pick-{run}")
    page.click("#compare-button")
    page.wait_for_selector("#compare-equity canvas")
    assert page.locator("#compare-equity .u-legend .u-series").count() == 1 + 2  # the date and two curves

    # Three at once: three curves, three columns of metrics, each from its run's result.
    page.goto(f"{server}/compare?ids={','.join(runs)}")
    page.wait_for_selector("#compare-metrics")
    assert page.locator("#compare-equity .u-legend .u-series").count() == 1 + 3
    assert page.locator("#compare-drawdown .u-legend .u-series").count() == 1 + 3
    sharpe = page.locator("#compare-metrics tbody tr", has=page.locator("th", has_text="sharpe")).first
    expected = [cents(result(server, r)["metrics"]["sharpe"]) for r in runs]
    assert sharpe.locator("td").all_inner_texts() == expected
    page.screenshot(path=str(ARTIFACTS / "dashboard-compare.png"), full_page=True)

    # One run alone is not a comparison: the page says so and draws nothing.
    page.goto(f"{server}/compare?ids={runs[0]}")
    assert "at least one more" in page.inner_text("#compare-problem")
    assert page.locator("#compare").count() == 0
    page.close()
    assert errors == []


def test_running_failed_and_cancelled_pages_say_what_is_known(server: str, browser: Any) -> None:
    failed = submit(server, {**LONG_SWEEP, "timeout_s": 0.2})
    victim = submit(server, LONG_SWEEP)
    page, errors = new_page(browser)

    # Running: who runs it, since when, how far.
    wait_until(lambda: task(server, victim)["progress"] > 0, timeout=30, what="the victim to make progress")
    page.goto(f"{server}/tasks/{victim}")
    running = page.locator("#outcome.running")
    assert task(server, victim)["worker"] in running.inner_text()
    assert "None yet" not in page.inner_text("main")

    # Cancelled while the page is open: it reloads and says who stopped it and how far it got.
    httpx.delete(f"{server}/api/backtests/tasks/{victim}", timeout=5).raise_for_status()
    cancelled = page.locator("#outcome.cancelled")
    cancelled.wait_for()
    state = task(server, victim)
    assert f"{state['progress']:.0%} done" in cancelled.inner_text()
    assert "while running" in cancelled.inner_text()
    cancelled_look = cancelled.evaluate("el => getComputedStyle(el).backgroundColor")
    cancelled_badge = page.locator("#status").evaluate("el => getComputedStyle(el).backgroundColor")
    page.screenshot(path=str(ARTIFACTS / "dashboard-cancelled.png"), full_page=True)

    # Failed: the error, whether it may be retried; red where cancelled is slate.
    assert finished(server, failed)[failed]["status"] == "failed"
    page.goto(f"{server}/tasks/{failed}")
    outcome = page.locator("#outcome.failed")
    assert task(server, failed)["error"] in outcome.locator("pre.error").inner_text()
    assert "not retryable" in outcome.inner_text()
    assert outcome.evaluate("el => getComputedStyle(el).backgroundColor") != cancelled_look
    assert page.locator("#status").evaluate("el => getComputedStyle(el).backgroundColor") != cancelled_badge
    assert "None yet" not in page.inner_text("main")
    page.screenshot(path=str(ARTIFACTS / "dashboard-failed.png"), full_page=True)
    page.close()
    assert errors == []


@pytest.fixture
def signed_server(tmp_path: Path) -> Iterator[tuple[str, Role]]:
    """`backstream up` with access control on: alice may write."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(BACKSTREAM_TOKENS="alice:alice-secret:rw", BACKSTREAM_PROGRESS_INTERVAL_MS="100")
    env["BACKSTREAM_HOME"] = str(tmp_path / "home")  # not the user's own
    env["BACKSTREAM_DATA_DIR"] = long_data(tmp_path / "data")
    role = Role(["up", "--port", str(port), "--workers", "1"], env, tmp_path / "up.log")
    url = f"http://127.0.0.1:{port}"

    try:
        role.wait_serving(url, timeout=30)
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


# A universe: a job of at least one chunk a symbol, whose result has a `symbols` table.
UNIVERSE: dict[str, Any] = {
    "strategy": "sma_cross",
    "symbols": ["AAPL", "IBM"],
    "objective": "sharpe",
    "params": {"fast": [5, 10, 15], "slow": [30, 50]},
}


def test_a_job_shows_its_chunks_best_and_symbols(server: str, browser: Any) -> None:
    page, errors = new_page(browser)
    # The list shows the job live (with its chunk count once it fans out), never its chunks.
    page.goto(server)
    page.wait_for_function("document.body.dataset.since !== undefined")
    job_id = submit(server, UNIVERSE)
    row = page.locator(f'#tasks tr[data-task="{job_id}"]')
    row.locator("small.chunks").wait_for()
    job = finished(server, job_id)[job_id]
    assert job["status"] == "completed", job
    total = job["job"]["chunks"]
    assert row.locator("small.chunks").inner_text() == f"job of {total} chunks" and "AAPL, IBM" in row.inner_text()
    page.wait_for_function(f"document.querySelector('tr[data-task=\"{job_id}\"]').dataset.status === 'completed'")
    listed = {
        page.locator("#tasks tbody tr").nth(i).get_attribute("data-task")
        for i in range(page.locator("#tasks tbody tr").count())
    }
    assert not listed & {chunk_id(job_id, i) for i in range(total)}
    page.reload()
    assert row.locator("small.chunks").inner_text() == f"job of {total} chunks"
    detail = result(server, job_id)

    # The job's page: its counts, best, every chunk in chunk order with a link to its page.
    page.goto(f"{server}/tasks/{job_id}")
    assert page.inner_text("#job-counts").startswith(f"{total} done, 0 failed of {total} chunks")
    best = job["job"]["best"]
    assert f"on {best['symbol']}" in page.inner_text("#job-best")
    chunks = page.locator("#chunks tbody tr")
    assert chunks.count() == total
    assert [chunks.nth(i).get_attribute("data-chunk") for i in range(total)] == [str(i) for i in range(total)]
    assert {chunks.nth(i).locator("td").nth(1).inner_text() for i in range(total)} == {"AAPL", "IBM"}
    assert all(chunks.nth(i).locator(".badge").inner_text() == "completed" for i in range(total))

    # The assembled result draws as a sweep's, with the symbols table of a universe.
    page.wait_for_selector("#symbols-table tbody tr")
    symbols = page.locator("#symbols-table tbody tr")
    assert symbols.count() == 2 and len(detail["symbols"]) == 2
    assert symbols.first.locator("td").first.inner_text() == detail["symbols"][0]["symbol"]
    assert page.inner_text("#sweep-table .where") == f"rows 1–12 of {len(detail['table'])}"
    assert page.locator("#heatmap rect.cell").count() == 6  # the best symbol's grid
    page.screenshot(path=str(ARTIFACTS / "dashboard-job.png"), full_page=True)

    # A chunk's page names its job, and links back to it.
    page.click('#chunks tr[data-chunk="0"] a')
    page.wait_for_selector("#chunk-of")
    assert "Chunk 0 (combinations 0–" in page.inner_text("#chunk-of") and job_id in page.inner_text("#chunk-of")
    page.click("#chunk-of a")
    page.wait_for_url(f"{server}/tasks/{job_id}")
    page.close()
    assert errors == []
