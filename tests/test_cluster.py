"""Backstream on a real Redis Cluster (three masters, one slot per deployment): the cluster is
detected from the same REDIS_URL, and the paths the suites marked `also_on_cluster` do not reach
(reclaim, retry promotion, heartbeats, retention, a node that lost its scripts) work on it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from consumers.maintenance.retention import apply_retention
from orchestrator.domain.spec import BacktestSpec
from orchestrator.settings import Settings
from orchestrator.storage.commands import Commands
from orchestrator.storage.connections import connect, is_cluster, routed_to
from orchestrator.storage.keys import Keys
from orchestrator.storage.presence import read_beats
from orchestrator.storage.workqueue import WorkQueue
from tests.conftest import Backend, open_backend
from tests.processes import RedisCluster

pytestmark = [pytest.mark.redis, pytest.mark.cluster]

SPEC = BacktestSpec(strategy="sma_cross", symbol="GOOG", params={"fast": 10, "slow": 20})


@pytest.fixture
async def on_cluster(request: pytest.FixtureRequest, unique_prefix: str) -> AsyncIterator[Backend]:
    async with open_backend("cluster", unique_prefix, request) as b:
        yield b


async def test_the_same_url_form_names_a_standalone_server_or_a_cluster(cluster_url: str, real_url: str) -> None:
    assert await is_cluster(cluster_url) and not await is_cluster(real_url)
    for url, kind in ((cluster_url, aioredis.RedisCluster), (real_url, aioredis.Redis)):
        conns = await connect(Settings(redis_url=url))
        try:
            assert type(conns.commands) is kind and type(conns.blocking) is kind
            assert conns.cluster == (kind is aioredis.RedisCluster)
            assert await conns.commands.ping()
        finally:
            await conns.close()


async def test_a_dead_workers_item_is_reclaimed(on_cluster: Backend) -> None:
    """XREADGROUP (blocking), then XAUTOCLAIM by another worker, on the node holding the slot."""
    queue = WorkQueue(on_cluster.redis, on_cluster.layout, reader=on_cluster.blocking)
    await queue.ensure_group()
    task_id = str(uuid.uuid4())
    await Commands(on_cluster.redis, on_cluster.layout).submit(task_id, SPEC)
    [read] = await queue.read_new(worker="w1", count=1, block_ms=1000)
    assert read.task_id == task_id
    assert await queue.read_own_pending(worker="w1") == [read]
    assert await queue.reclaim_expired(worker="w2", min_idle_ms=0, count=10) == [read]
    assert await queue.read_own_pending(worker="w2") == [read]


async def test_keyless_reads_go_to_the_node_holding_the_slot(on_cluster: Backend, redis_cluster: RedisCluster) -> None:
    """TIME (retry promotion, heartbeats, retention's horizon) and INFO (retention's memory) are
    read on the node whose clock the slot's scripts use."""
    keys = on_cluster.keys
    target = (await routed_to(on_cluster.redis, keys.events))["target_nodes"]
    assert target.port == redis_cluster.port_serving(keys.events)
    queue = WorkQueue(on_cluster.redis, on_cluster.layout)
    assert await queue.promote_due_retries() == 0
    await queue.liveness("w1", interval_s=1).beat()
    assert (await read_beats(on_cluster.redis, keys.worker_heartbeats)).alive(within_ms=60_000) == ["w1"]
    report = await apply_retention(on_cluster.redis, keys, horizon_ms=0, dry_run=True)
    assert report.used_memory_before is not None and report.used_memory_before > 0


async def test_a_node_that_lost_its_scripts_gets_them_again(on_cluster: Backend, redis_cluster: RedisCluster) -> None:
    """NOSCRIPT on the node holding the slot (a restart, a failover to a replica): batched and
    single script calls load the script there and carry on."""
    commands = Commands(on_cluster.redis, on_cluster.layout)
    queue = WorkQueue(on_cluster.redis, on_cluster.layout)
    await queue.ensure_group()
    await commands.submit(str(uuid.uuid4()), SPEC)
    redis_cluster.flush_scripts()
    task_id = str(uuid.uuid4())
    assert (await commands.submit(task_id, SPEC)).created  # batched (ScriptBatcher)
    redis_cluster.flush_scripts()
    await queue.liveness("w1", interval_s=1).beat()  # a single call (ScriptCall without a batcher)
    assert len(await queue.take(worker="w1", count=10)) == 2


def test_keys_of_one_deployment_share_one_slot() -> None:
    """What makes every script and pipeline single-node today: one hash tag for every key."""
    keys = Keys(prefix="{bs}")
    names = [
        *(keys.events, keys.work, keys.delayed, keys.dead_letters, keys.worker_heartbeats, keys.idempotency("k")),
        *(keys.control("t"), keys.task_log("t"), keys.result("t"), keys.staged_result("t", 1)),
        *(keys.live_projection, keys.projection_position, keys.projected_task("t"), keys.projected_index("queued")),
    ]
    assert {key_slot(name.encode()) for name in names} == {key_slot(b"{bs}")}
