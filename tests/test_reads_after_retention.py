"""Every read path gives the same answer once retention trimmed a task's log: the API's task,
list and events, the dashboard's task page, the task's SSE stream, and `backstream audit`; and
the audit trail says where the trimmed history went. Real Redis, a real HTTP server, the CLI."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from api.app import create_app
from consumers.maintenance.archive import export
from consumers.maintenance.retention import apply_retention
from orchestrator.domain.events import Failed
from orchestrator.domain.spec import BacktestSpec
from tests.conftest import Backend
from tests.harness import System
from tests.processes import InProcessServer
from tests.test_live import collect

SHORT: dict[str, Any] = {"strategy": "sma_cross", "symbol": "GOOG", "params": {"fast": 10, "slow": 20}}


@contextlib.asynccontextmanager
async def served(system: System) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(system.settings, checker=system.checker, catalog=system.catalog, connections=system.connections)
    async with InProcessServer(app) as server, httpx.AsyncClient(base_url=server.url, timeout=20) as http:
        yield http


def backstream(backend: Backend, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REDIS_URL": backend.url or "", "BACKSTREAM_PREFIX": backend.keys.prefix}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


async def failed_task(system: System) -> str:
    """A task that failed for good, through the real scripts."""
    task_id = (await system.commands.submit(str(uuid.uuid4()), msgspec.convert(SHORT, BacktestSpec))).task_id
    [taken] = await system.queue.take(worker="w-x", count=1)
    failed = Failed(task_id=task_id, attempt=taken.claim.attempt, error="ValueError: bad data", retryable=False)
    assert await system.queue.finish(failed, message_id=taken.message_id, reason="error") is None
    return task_id


@pytest.mark.redis
async def test_every_reader_agrees_after_retention_and_says_where_history_went(
    real_backend: Backend, tmp_path: Path
) -> None:
    backend, keys = real_backend, real_backend.keys
    system = System(backend)
    await system.queue.ensure_group()
    async with served(system) as http:
        done = (await http.post("/api/backtests", json=SHORT)).json()["task_id"]
        await system.run_workers()
        broken = await failed_task(system)
        await system.project()
        before = (await http.get(f"/api/backtests/tasks/{done}/events")).json()["events"]
        assert [e["type"] for e in before] == ["submitted", "started", "completed"]

        last = (await backend.redis.xrevrange(keys.events, count=1))[0][0].decode()
        await export(backend.redis, keys, tmp_path / "archive.ndjson")
        await backend.redis.set(keys.archived_through, last)
        report = await apply_retention(backend.redis, keys, horizon_ms=0)
        assert report.tasks_compacted == 1 and await backend.redis.xlen(keys.events) == 0

        # The API's task and list, the dashboard and the stream: all say completed.
        task = (await http.get(f"/api/backtests/tasks/{done}")).json()
        assert task["status"] == "completed"
        listed = {t["task_id"]: t for t in (await http.get("/api/backtests/tasks")).json()["tasks"]}
        assert listed[done] == task and listed[broken]["status"] == "failed"
        page = await http.get(f"/tasks/{done}")
        assert page.status_code == 200, page.text
        assert 'id="status">completed</span>' in page.text
        stream = await http.get(f"/api/backtests/tasks/{done}/stream")
        assert stream.status_code == 204  # finished: an EventSource stops reconnecting

        # The audit trail says where its history went, everywhere it is shown.
        trail = (await http.get(f"/api/backtests/tasks/{done}/events")).json()
        assert trail["events"] == []
        archived = trail["archived"]
        assert archived["events"] == 3 and archived["archived_through"] == last
        assert archived["log_starts_at"] == report.keep_from and archived["trimmed_at"]
        assert f"through {last}" in archived["message"]
        assert f"through {last}" in page.text and 'id="archived"' in page.text

        # Time travel into the trimmed past is refused with a reason; the present still answers.
        gone = await http.get(f"/api/backtests/tasks/{done}", params={"as_of": before[1]["id"]})
        assert gone.status_code == 410 and gone.json()["error"] == "history_archived"
        assert gone.json()["fields"][0]["field"] == "as_of"
        now = await http.get(f"/api/backtests/tasks/{done}", params={"as_of": before[-1]["id"]})
        assert now.status_code == 200 and now.json() == task

        audit = backstream(backend, "audit", done)
        assert audit.returncode == 0, audit.stderr
        assert audit.stdout.startswith("earlier history: the first 3 events were trimmed") and last in audit.stdout
        as_json = backstream(backend, "audit", done, "--json")
        assert as_json.returncode == 0 and as_json.stdout == "" and "earlier history" in as_json.stderr
        past = backstream(backend, "audit", done, "--as-of", before[1]["id"])
        assert past.returncode == 1 and "trimmed from the log" in past.stderr

        # A failed task keeps its write side (it may be retried); its trimmed events are
        # accounted for, and the trail continues after a retry.
        assert (await http.get(f"/api/backtests/tasks/{broken}/stream")).status_code == 204
        assert (await http.post(f"/api/backtests/tasks/{broken}/retry")).status_code == 202
        again = (await http.get(f"/api/backtests/tasks/{broken}/events")).json()
        assert [e["type"] for e in again["events"]] == ["requeued"] and again["archived"]["events"] == 3
        assert (await http.get(f"/api/backtests/tasks/{broken}")).json()["status"] == "queued"
        assert (await http.get(f"/tasks/{broken}")).status_code == 200


async def test_an_unknown_task_is_unknown_to_every_reader(backend: Backend) -> None:
    system = System(backend)
    missing = str(uuid.uuid4())
    async with system.client() as http:
        assert (await http.get(f"/api/backtests/tasks/{missing}")).status_code == 404
        assert (await http.get(f"/api/backtests/tasks/{missing}/events")).status_code == 404
        assert (await http.get(f"/api/backtests/tasks/{missing}/stream")).status_code == 404
        assert (await http.get(f"/tasks/{missing}")).status_code == 404


@pytest.mark.redis
async def test_a_compacted_task_whose_result_is_then_deleted_reads_the_same_everywhere(
    real_backend: Backend, tmp_path: Path
) -> None:
    """Retention compacts a completed task; then results-retention records `result_deleted`,
    which gives it back a control hash and a log index holding that one event. Before the
    projector folds it, the task (GET), its audit trail and its SSE stream agree: the result is
    deleted, the task is completed, and the stream sends what the log holds and ends."""
    backend, keys = real_backend, real_backend.keys
    system = System(backend)
    await system.queue.ensure_group()
    async with served(system) as http:
        done = (await http.post("/api/backtests", json=SHORT)).json()["task_id"]
        await system.run_workers()
        last = (await backend.redis.xrevrange(keys.events, count=1))[0][0].decode()
        await backend.redis.set(keys.archived_through, last)
        assert (await apply_retention(backend.redis, keys, horizon_ms=0)).tasks_compacted == 1
        outcome = await system.commands.record_result_deleted(
            done, f"{done}/1-x", reason="age", live_projection=system.projection.keys
        )
        assert outcome == "ok"

        trail = (await http.get(f"/api/backtests/tasks/{done}/events")).json()
        [deleted] = trail["events"]
        assert deleted["type"] == "result_deleted" and trail["archived"]["events"] == 3
        task = (await http.get(f"/api/backtests/tasks/{done}")).json()
        assert task["status"] == "completed" and task["result_deleted_at"] == deleted["time"]
        assert task["result_location"] == "deleted"

        # The stream of a finished task sends the events still in the log and ends: a client
        # (an EventSource, `Run.wait`) does not wait for a terminal event retention trimmed.
        streamed = await collect(http, f"/api/backtests/tasks/{done}/stream")
        assert [e["id"] for e in streamed[:-1]] == [deleted["id"]] and streamed[-1]["event"] == "end"
        again = await http.get(f"/api/backtests/tasks/{done}/stream", headers={"Last-Event-ID": deleted["id"]})
        assert again.status_code == 204
