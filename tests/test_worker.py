"""The worker given work it cannot run: the task fails, visibly; the worker and its other tasks carry on."""

from __future__ import annotations

import json
from typing import Any

from orchestrator.events import Failed
from tests.conftest import Backend
from tests.harness import System

SHORT: dict[str, Any] = {"strategy": "sma_cross", "symbol": "GOOG", "params": {"fast": 10, "slow": 20}}


async def test_a_spec_this_worker_cannot_read_fails_that_task_only(backend: Backend) -> None:
    system = System(backend, max_attempts=1)
    async with system.client() as http:
        ids = [(await http.post("/api/backtests", json=SHORT)).json()["task_id"] for _ in range(3)]
        # As a newer version would store it: a field this version does not know. The three are
        # taken and claimed together.
        control = backend.keys.control(ids[1])
        spec = json.loads(await backend.redis.hget(control, "spec"))
        await backend.redis.hset(control, "spec", json.dumps({**spec, "leverage": 2}))
        await system.run_workers()
        tasks = [(await http.get(f"/api/backtests/tasks/{task_id}")).json() for task_id in ids]
        letters = (await http.get("/api/dead-letters")).json()["dead_letters"]
    assert [t["status"] for t in tasks] == ["completed", "failed", "completed"]
    # Another attempt could land on a worker that reads it: a manual retry is worth it.
    assert "leverage" in tasks[1]["error"] and tasks[1]["error_retryable"] is True
    failed = (await system.store.task_events(ids[1]))[-1].event
    assert isinstance(failed, Failed) and failed.error_type == "UnreadableSpec"
    assert [(d["task_id"], d["reason"]) for d in letters] == [(ids[1], "UnreadableSpec")]
    assert await backend.redis.xlen(backend.keys.work) == 0
