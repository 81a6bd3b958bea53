"""The worker given work it cannot run: the task fails, visibly; the worker and its other tasks carry on."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from orchestrator.domain.events import Failed
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
    failed = (await system.projection.task_events(ids[1]))[-1].event
    assert isinstance(failed, Failed) and failed.error_type == "UnreadableSpec"
    assert [(d["task_id"], d["reason"]) for d in letters] == [(ids[1], "UnreadableSpec")]
    assert await backend.redis.xlen(backend.keys.work) == 0


def _zigzag_csv(directory: Path) -> None:
    """Prices alternating between 1 and 1000, each bar opening at the last close: RSI(1) buys
    every fall at 1 and sells every rise at 1000, so equity, and the units it buys at 1,
    multiply by ~2,000 a cycle, past what the engine represents (2^53 units) at bar 11."""
    close = [1.0, 1000.0] * 8
    lines = ["Date,Open,High,Low,Close,Volume"]
    for k, c in enumerate(close):
        o = close[k - 1] if k else c
        lines.append(f"{dt.date(2015, 1, 5) + dt.timedelta(days=k)},{o},{max(o, c)},{min(o, c)},{c},1")
    (directory / "ZIGZAG.csv").write_text("\n".join(lines) + "\n")


async def test_an_error_the_input_raises_again_fails_at_once(backend: Backend, tmp_path: Path) -> None:
    _zigzag_csv(tmp_path)
    system = System(backend, data_dir=str(tmp_path))  # default budget: 3 attempts
    spec = {"strategy": "rsi", "symbol": "ZIGZAG", "params": {"period": 1, "lower": 30, "upper": 70}}
    async with system.client() as http:
        submitted = await http.post("/api/backtests", json=spec)
        assert submitted.status_code == 202  # nothing at the door says it cannot run
        task_id = submitted.json()["task_id"]
        await system.run_workers()
        task = (await http.get(f"/api/backtests/tasks/{task_id}")).json()
        letters = (await http.get("/api/dead-letters")).json()["dead_letters"]
    assert (task["status"], task["attempt"], task["error_retryable"]) == ("failed", 1, False)
    assert "2^53" in task["error"]
    history = [e.event for e in await system.projection.task_events(task_id)]
    assert [type(e).__name__ for e in history] == ["Submitted", "Started", "Failed"]
    assert isinstance(history[-1], Failed) and history[-1].error_type == "RepresentationError"
    assert [(d["task_id"], d["reason"]) for d in letters] == [(task_id, "RepresentationError")]
