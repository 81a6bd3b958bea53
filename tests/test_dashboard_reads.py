"""The dashboard's task page reads what the API reads: the task's state through the read model
(the same answer as GET /api/backtests/tasks/{id}, read-your-writes included) and its audit trail
through the read model's event pages (the same ids as GET …/events), before and after retention
trims the log. Real Redis, the real app."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from consumers.maintenance.archive import export
from consumers.maintenance.retention import apply_retention
from orchestrator.domain.events import Failed
from orchestrator.domain.spec import BacktestSpec
from tests.conftest import Backend
from tests.harness import System

SHORT: dict[str, Any] = {"strategy": "sma_cross", "symbol": "GOOG", "params": {"fast": 10, "slow": 20}}


async def failed_task(system: System) -> str:
    """A task that failed for good, through the real scripts."""
    task_id = (await system.commands.submit(str(uuid.uuid4()), msgspec.convert(SHORT, BacktestSpec))).task_id
    [taken] = await system.queue.take(worker="w-x", count=1)
    failed = Failed(task_id=task_id, attempt=taken.claim.attempt, error="ValueError: bad data", retryable=False)
    assert await system.queue.finish(failed, message_id=taken.message_id, reason="error") is None
    return task_id


async def page_says(http: httpx.AsyncClient, task_id: str) -> tuple[str, list[str]]:
    """The status badge of the task page, and the stream ids of its audit trail's rows but those
    of progress (a run of progress events is one row)."""
    page = await http.get(f"/tasks/{task_id}")
    assert page.status_code == 200, page.text
    status = re.search(r'<span class="badge (\w+)" id="status">', page.text)
    assert status is not None, page.text
    trail = page.text.split('<table id="events">', 1)[1]
    rows = re.findall(r'<tr data-id="([0-9]+-[0-9]+)"[^>]*>.*?<span class="badge ([\w-]+)', trail, re.S)
    return status[1], [entry_id for entry_id, kind in rows if kind != "progress"]


async def api_says(http: httpx.AsyncClient, task_id: str) -> tuple[str, list[str]]:
    task = (await http.get(f"/api/backtests/tasks/{task_id}")).json()
    events = (await http.get(f"/api/backtests/tasks/{task_id}/events")).json()["events"]
    return task["status"], [e["id"] for e in events if e["type"] != "progress"]


@pytest.mark.redis
async def test_the_task_page_agrees_with_the_api_before_and_after_retention(
    real_backend: Backend, tmp_path: Path
) -> None:
    backend, keys = real_backend, real_backend.keys
    system = System(backend)
    await system.queue.ensure_group()
    async with system.client() as http:
        done = (await http.post("/api/backtests", json=SHORT)).json()["task_id"]
        await system.run_workers()
        broken = await failed_task(system)
        cancelled = (await http.post("/api/backtests", json=SHORT)).json()["task_id"]
        assert (await http.delete(f"/api/backtests/tasks/{cancelled}")).status_code == 200
        # Not projected yet: the page, like the API, folds the events the projector has not.
        for task_id in (done, broken, cancelled):
            assert await page_says(http, task_id) == await api_says(http, task_id)
        await system.project()

        last = (await backend.redis.xrevrange(keys.events, count=1))[0][0].decode()
        await export(backend.redis, keys, tmp_path / "archive.ndjson")
        await backend.redis.set(keys.archived_through, last)
        report = await apply_retention(backend.redis, keys, horizon_ms=0)
        assert report.tasks_compacted == 2 and await backend.redis.xlen(keys.events) == 0

        for task_id, status in ((done, "completed"), (broken, "failed"), (cancelled, "cancelled")):
            assert await page_says(http, task_id) == (status, []) == await api_says(http, task_id)

        # A retry after retention, before the projector folds it: both say queued, one event.
        assert (await http.post(f"/api/backtests/tasks/{broken}/retry")).status_code == 202
        status, trail = await page_says(http, broken)
        assert (status, trail) == await api_says(http, broken) and status == "queued" and len(trail) == 1
        assert "the first 3 events were trimmed" in (await http.get(f"/tasks/{broken}")).text
