"""Cancel, as the old system's tests meant it, on the real stack: the HTTP answer and what is stored."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from orchestrator.storage.keys import WORKER_GROUP
from tests.conftest import Backend
from tests.harness import System

# The store tests here run on fakeredis, real Redis and a real Redis Cluster (conftest).
pytestmark = pytest.mark.also_on_cluster

SHORT: dict[str, Any] = {"strategy": "sma_cross", "symbol": "GOOG", "params": {"fast": 10, "slow": 20}}
# A sweep of 6,000 backtests: seconds of work, long enough to cancel while it runs.
LONG: dict[str, Any] = {
    "strategy": "sma_cross",
    "symbol": "AAPL",
    "params": {"fast": list(range(2, 62)), "slow": list(range(70, 170))},
}


@pytest.fixture
def system(backend: Backend, tmp_path: Path) -> System:
    return System(backend, data_dir=str(tmp_path), progress_interval_ms=20)


async def stored(system: System, task_id: str) -> tuple[list[str], str | None]:
    """The task's event types in the log, and the status in its control hash."""
    events = [type(e.event).__name__.lower() for e in await system.projection.task_events(task_id)]
    status = await system.backend.redis.hget(system.backend.layout.of(task_id).control(task_id), "status")
    return events, status.decode() if status else None


async def test_cancel_queued_task(system: System, backend: Backend) -> None:
    async with system.client() as http:
        task_id = (await http.post("/api/backtests", json=SHORT)).json()["task_id"]
        reply = await http.delete(f"/api/backtests/tasks/{task_id}")
        assert reply.status_code == 200 and reply.json()["status"] == "cancelled"
        assert (await http.get(f"/api/backtests/tasks/{task_id}")).json()["status"] == "cancelled"
        # No worker ever starts it.
        await system.run_workers()
        assert await stored(system, task_id) == (["submitted", "cancelled"], "cancelled")
        projected = (await system.projection.load([task_id]))[task_id]
        assert projected.status == "cancelled" and projected.attempt == 0
        assert await backend.redis.xlen(backend.keys.work) == 0


async def test_cancel_running_task_stops_the_worker(system: System, backend: Backend) -> None:
    async with system.client() as http:
        task_id = (await http.post("/api/backtests", json=LONG)).json()["task_id"]
        worker = system.worker()
        with capture_logs(processors=[merge_contextvars]) as logs:
            running = asyncio.create_task(worker.run())
            await system.wait_for_event(task_id, "progress")
            reply = await http.delete(f"/api/backtests/tasks/{task_id}")
            assert reply.status_code == 200 and reply.json()["status"] == "cancelled"
            worker.stop()
            await asyncio.wait_for(running, timeout=10)
        stops = [e for e in logs if e["event"] == "task.stopped"]
        assert stops and stops[0]["reason"] == "cancelled" and stops[0]["task_id"] == task_id
        events, status = await stored(system, task_id)
        assert status == "cancelled"
        assert events[-1] == "cancelled" and events.count("cancelled") == 1
        assert "completed" not in events and "failed" not in events
        assert (await backend.redis.xpending(backend.keys.work, WORKER_GROUP))["pending"] == 0
        await system.project()
        task = (await http.get(f"/api/backtests/tasks/{task_id}")).json()
        assert task["status"] == "cancelled" and 0 < task["progress"] < 1
        cancelled = (await http.get(f"/api/backtests/tasks/{task_id}/events")).json()["events"][-1]
        assert cancelled["data"]["previous_status"] == "running"


async def test_cancel_completed_task_is_refused(system: System) -> None:
    async with system.client() as http:
        task_id = (await http.post("/api/backtests", json=SHORT)).json()["task_id"]
        await system.run_workers()
        before = (await http.get(f"/api/backtests/tasks/{task_id}")).json()
        reply = await http.delete(f"/api/backtests/tasks/{task_id}")
        assert reply.status_code == 400 and reply.json()["error"] == "invalid_for_status"
        assert (await http.get(f"/api/backtests/tasks/{task_id}")).json() == before
        assert await stored(system, task_id) == (["submitted", "started", "completed"], "completed")


async def test_cancel_failed_task_is_refused(system: System, tmp_path: Path) -> None:
    good = "Date,Open,High,Low,Close,Volume\n" + "".join(
        f"2020-01-{d:02d},{10 + d},{11 + d},{9 + d},{10.5 + d},1000\n" for d in range(1, 31)
    )
    (tmp_path / "ZZZ.csv").write_text(good)
    spec = {"strategy": "buy_and_hold", "symbol": "ZZZ"}
    async with system.client() as http:
        task_id = (await http.post("/api/backtests", json=spec)).json()["task_id"]
        # The file is damaged between submit and run: the worker's run fails on it.
        (tmp_path / "ZZZ.csv").write_text(good.replace("10.5", "nan", 1).replace(",13.5,", ",-1,"))
        await system.run_workers()
        before = (await http.get(f"/api/backtests/tasks/{task_id}")).json()
        assert before["status"] == "failed" and "ZZZ" in before["error"]
        reply = await http.delete(f"/api/backtests/tasks/{task_id}")
        assert reply.status_code == 400
        assert (await http.get(f"/api/backtests/tasks/{task_id}")).json() == before
        events, status = await stored(system, task_id)
        assert status == "failed" and events[-1] == "failed" and "cancelled" not in events


async def test_cancel_unknown_task_stores_nothing(system: System, backend: Backend) -> None:
    async with system.client() as http:
        task_id = str(uuid.uuid4())
        reply = await http.delete(f"/api/backtests/tasks/{task_id}")
        assert reply.status_code == 404 and reply.json()["error"] == "task_not_found"
    assert await backend.redis.exists(backend.layout.of(task_id).control(task_id), backend.layout.of(task_id).task_log(task_id)) == 0
    assert await backend.redis.xlen(backend.keys.events) == 0


async def test_delete_then_get_agree_and_cancel_twice_is_harmless(system: System) -> None:
    async with system.client() as http:
        task_id = (await http.post("/api/backtests", json=SHORT)).json()["task_id"]
        first = await http.delete(f"/api/backtests/tasks/{task_id}")
        second = await http.delete(f"/api/backtests/tasks/{task_id}")
        got = await http.get(f"/api/backtests/tasks/{task_id}")
        assert first.status_code == second.status_code == got.status_code == 200
        assert first.json() == second.json() == got.json()
        assert await stored(system, task_id) == (["submitted", "cancelled"], "cancelled")
