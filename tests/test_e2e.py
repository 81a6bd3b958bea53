"""End to end through real processes on real Redis (and on a real Redis Cluster, REDIS_URL at
one of its nodes): an API, a projector and two workers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.storage.connections import client as plain_client
from orchestrator.storage.connections import cluster_client, is_cluster
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
def cluster(request: pytest.FixtureRequest, real_prefix: str, tmp_path: Path) -> Iterator[Cluster]:
    """The processes of the test, on the shared Redis, or (param "cluster") on the session's Redis
    Cluster, REDIS_URL at a node that does not hold the test's keys."""
    if getattr(request, "param", "real") == "cluster":
        request.getfixturevalue("cluster_url")  # the cluster, empty
        url = request.getfixturevalue("redis_cluster").url_away_from(real_prefix)
    else:
        url = request.getfixturevalue("real_url")
    c = Cluster(url, real_prefix, tmp_path, progress_interval_ms="50")
    yield c
    c.close()


def statuses(url: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    return {i: httpx.get(f"{url}/api/backtests/tasks/{i}", timeout=5).json() for i in ids}


@pytest.mark.parametrize("cluster", ["real", pytest.param("cluster", marks=pytest.mark.cluster)], indirect=True)
def test_tasks_submitted_over_http_complete_on_both_workers(cluster: Cluster, request: pytest.FixtureRequest) -> None:
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
    # Each role found out for itself whether REDIS_URL names a cluster node.
    on_cluster = request.node.callspec.params["cluster"] == "cluster"
    assert asyncio.run(is_cluster(cluster.redis_url)) == on_cluster
    for role in (*workers, projector, api):
        assert any(e["event"] == "store.cluster_detected" for e in role.logs()) == on_cluster, role.args
    assert sorted(e["task_id"] for e in completed) == sorted(ids)
    assert all(e["attempt"] == 1 and e["outcome"] == "completed" for e in completed)

    async def replayed() -> tuple[list[Any], int]:
        client = (cluster_client if on_cluster else plain_client)(cluster.redis_url, socket_timeout=5)
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
