"""End to end through real processes on real Redis: an API, a projector and two workers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from orchestrator.storage.keys import WORKER_GROUP, Keys
from tests.folding import verify
from tests.processes import Cluster, wait_until

pytestmark = pytest.mark.redis

# About a tenth of a second of work each, so that both workers get some.
SWEEP: dict[str, Any] = {
    "strategy": "sma_cross",
    "symbol": "IBM",
    "params": {"fast": [5, 10, 15, 20, 25], "slow": [30, 40, 50, 60, 80, 100]},
}


@pytest.fixture
def cluster(real_url: str, real_prefix: str, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(real_url, real_prefix, tmp_path, progress_interval_ms="50")
    yield c
    c.close()


def statuses(url: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    return {i: httpx.get(f"{url}/api/backtests/tasks/{i}", timeout=5).json() for i in ids}


def test_tasks_submitted_over_http_complete_on_both_workers(cluster: Cluster) -> None:
    api, url = cluster.api()
    projector = cluster.start("projector")
    workers = [cluster.start("worker", "--name", name) for name in ("worker-a", "worker-b")]

    ids = []
    for i in range(16):
        reply = httpx.post(f"{url}/api/backtests", json={**SWEEP, "cash": 10_000 + i}, timeout=5)
        assert reply.status_code == 202, reply.text
        ids.append(reply.json()["task_id"])
        assert httpx.get(f"{url}/api/backtests/tasks/{ids[-1]}", timeout=5).json()["status"] in (
            "queued",
            "running",
            "completed",
        )

    def all_completed() -> dict[str, dict[str, Any]] | None:
        now = statuses(url, ids)
        return now if all(t["status"] == "completed" for t in now.values()) else None

    done = wait_until(all_completed, timeout=120, what="all tasks to complete")
    assert {t["worker"] for t in done.values()} == {"worker-a", "worker-b"}
    assert all(t["attempt"] == 1 and t["result"]["combinations"] == 30 for t in done.values())

    # The list (read from the projection alone) catches up with every task.
    def listed() -> bool:
        page = httpx.get(f"{url}/api/backtests/tasks?status=completed&limit=100", timeout=5).json()
        return {t["task_id"] for t in page["tasks"]} == set(ids)

    wait_until(listed, timeout=30, what="the projection to list every task as completed")
    for role in (*workers, projector, api):
        assert role.stop() == 0, role.log_path.read_text()[-3000:]
    completed = [e for w in workers for e in w.logs() if e["event"] == "task.finished"]
    assert sorted(e["task_id"] for e in completed) == sorted(ids)
    assert all(e["attempt"] == 1 and e["outcome"] == "completed" for e in completed)

    async def replayed() -> tuple[list[Any], int]:
        client = aioredis.Redis.from_url(cluster.redis_url, protocol=2)
        keys = Keys(prefix=cluster.prefix)
        try:
            differences = await verify(client, keys)
            pending = (await client.xpending(keys.work, WORKER_GROUP))["pending"]
            return differences, pending
        finally:
            await client.aclose()

    differences, pending = asyncio.run(replayed())
    assert differences == [] and pending == 0


def test_roles_refuse_to_start_without_redis(cluster: Cluster) -> None:
    cluster.env.pop("REDIS_URL")
    worker = cluster.start("worker")
    assert worker.proc.wait(30) == 2
    assert "REDIS_URL" in worker.log_path.read_text()
