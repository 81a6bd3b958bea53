"""A deployment of 16 partitions on the session's three-master Redis Cluster spreads its keys and
its commands over all three masters, each in proportion to the partitions it holds: tasks
submitted through Commands, run by a real worker and folded by a real projector."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis

from orchestrator.domain.spec import BacktestSpec
from orchestrator.storage.commands import Commands
from tests.conftest import Backend, open_backend
from tests.harness import System
from tests.processes import RedisCluster

pytestmark = [pytest.mark.redis, pytest.mark.cluster]

SPEC = BacktestSpec(strategy="sma_cross", symbol="GOOG", params={"fast": 10, "slow": 20})
TASKS = 240


@pytest.fixture
async def default_deployment(request: pytest.FixtureRequest, unique_prefix: str) -> AsyncIterator[Backend]:
    async with open_backend("cluster", unique_prefix, request) as b:
        yield b


def command_calls(node: redis.Redis) -> int:
    """Commands the node has served since its stats were reset (INFO commandstats, every command)."""
    stats: dict[str, Any] = node.info("commandstats")
    return sum(int(entry["calls"]) for entry in stats.values())


async def completed(backend: Backend) -> int:
    """How many `completed` events the partitions' logs hold."""
    count = 0
    for keys in backend.layout.partitions:
        count += sum(fields[b"type"] == b"completed" for _, fields in await backend.redis.xrange(keys.events))
    return count


async def test_keys_and_commands_spread_over_every_master(
    default_deployment: Backend, redis_cluster: RedisCluster
) -> None:
    backend = default_deployment
    layout = backend.layout
    assert layout.width == 16
    masters = {port: redis.Redis(port=port) for port in redis_cluster.masters}
    try:
        held = {port: 0 for port in masters}
        for keys in layout.partitions:
            held[redis_cluster.port_serving(keys.events)] += 1
        system = System(backend)
        await system.queue.ensure_group()
        before = {port: command_calls(node) for port, node in masters.items()}
        commands = Commands(backend.redis, layout)
        for _ in range(TASKS):
            assert (await commands.submit(None, SPEC)).created
        await system.run_workers()  # a real worker (burst mode), then a real projector, over every partition
        assert await completed(backend) == TASKS
        served = {port: command_calls(node) - before[port] for port, node in masters.items()}
        stored = {port: int(node.dbsize()) for port, node in masters.items()}
    finally:
        for node in masters.values():
            node.close()
    # The partitions' hash tags put 5 or 6 of the 16 on each of redis-cli's three equal slot
    # ranges, whatever the prefix; each master's share of the keys and of the commands follows its
    # share of the partitions (tasks pick a partition at random: within half either way).
    assert sorted(held.values()) == [5, 5, 6], held
    for port, partitions in held.items():
        share = partitions / layout.width
        assert 0.5 * share < stored[port] / sum(stored.values()) < 1.5 * share, (held, stored)
        assert 0.5 * share < served[port] / sum(served.values()) < 1.5 * share, (held, served)
