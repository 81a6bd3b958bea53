"""Redis commands a short task costs from submit to its outcome (issue 21): counted by a private
redis-server's INFO commandstats (Lua scripts' inner calls included), not estimated."""

from __future__ import annotations

import functools
import uuid
from pathlib import Path

import msgspec
import pytest
import redis.asyncio as aioredis

from consumers.engine.datasets import Catalog
from consumers.engine.runner import start_run
from consumers.worker.loop import Worker
from orchestrator.domain.spec import BacktestSpec
from orchestrator.settings import Settings
from orchestrator.storage.commands import Commands
from orchestrator.storage.keys import Keys
from orchestrator.storage.partitions import Layout
from orchestrator.storage.workqueue import WorkQueue
from tests.processes import RedisServer

SMA = msgspec.convert(
    {"strategy": "sma_cross", "symbol": "GOOG", "params": {"fast": 10, "slow": 20}, "start": "2012-01-01"},
    BacktestSpec,
)
TASKS = 200


async def _command_calls(r: aioredis.Redis) -> dict[str, int]:
    stats = await r.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


@pytest.mark.redis
async def test_a_short_task_costs_at_most_20_commands_from_submit_to_outcome(tmp_path: Path) -> None:
    """Submit, take (read and claim, in batches), finish, and the worker run's own fixed costs
    spread over its tasks: 31.3 a task before issue 21's work began, 24-25 with jobs (the
    checkpoint's DEL, the status check between chunks). Gone since: an HGET each for
    status and attempt (one HMGET), a HINCRBY for `seq` beside every HSET, three HDELs, an RPUSH
    per event to the task's log index (now fields of the HSET the scripts make anyway), the
    EXISTS of the staged result (its RENAME checks), a DEL of a checkpoint never saved, and the
    status check of a task shorter than RUNNING_CHECK_SECONDS (18.9-19.1). What is left: three XADDs to the
    log and one to the work stream, three HSETs, two HMGETs, the three script calls, submit's
    EXISTS, finish's HDEL, the staged result (SET, RENAME, PERSIST), XACK and XDEL (one
    XACKDEL on Redis 8.2+)."""
    server = RedisServer(tmp_path)
    r = aioredis.Redis.from_url(server.url)
    blocking = aioredis.Redis.from_url(server.url)
    try:
        keys = Keys(prefix="{t}")
        queue = WorkQueue(r, Layout(prefix=keys.prefix), reader=blocking)
        settings = Settings(prefix=keys.prefix)
        worker = Worker(
            queue,
            functools.partial(start_run, catalog=Catalog.from_env_dir(None)),
            settings,
            name="w1",
            concurrency=8,
        )
        await queue.ensure_group()
        await r.config_resetstat()
        task_ids = [str(uuid.uuid4()) for _ in range(TASKS)]
        for task_id in task_ids:
            await Commands(r, Layout(prefix=keys.prefix)).submit(task_id, SMA)
        submitted = await _command_calls(r)
        await worker.run(burst=True)
        after = await _command_calls(r)
        assert worker.outcomes == {"completed": TASKS}
        statuses = {await r.hget(keys.control(t), "status") for t in task_ids}
        assert statuses == {b"completed"}
        run_calls = {name: n - submitted.get(name, 0) for name, n in after.items()}
        per_task = (sum(submitted.values()) + sum(run_calls.values())) / TASKS
        counts = {name: round((submitted.get(name, 0) + run_calls.get(name, 0)) / TASKS, 2) for name in after}
        assert per_task <= 20, f"{per_task:.2f} commands per task: {counts}"
    finally:
        await r.aclose()
        await blocking.aclose()
        server.stop()
