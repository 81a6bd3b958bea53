"""taskiq with taskiq-redis's Redis Streams broker: one worker process, `--max-async-tasks`
set to the run's concurrency; no result backend (its default)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from taskiq_redis import RedisStreamBroker

from bench.peers.common import CONCURRENCY, QUEUE, REDIS_URL, do_job

broker = RedisStreamBroker(url=REDIS_URL, queue_name=QUEUE)


@broker.task(task_name="bench.job")
async def job(kind: str, run: str, i: int) -> Any:
    return do_job(kind, run, i)


def worker_argv(python: str, index: int, variant: str) -> list[str]:
    return [
        python,
        "-m",
        "taskiq",
        "worker",
        "bench.peers.taskiq_bench:broker",
        "--workers",
        "1",
        "--max-async-tasks",
        str(CONCURRENCY),
        "--no-configure-logging",
    ]


async def _submit(kind: str, run: str, indices: range, times: dict[int, float], concurrency: int) -> None:
    await broker.startup()
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            times[i] = time.time()
            await job.kiq(kind, run, i)

    await asyncio.gather(*(one(i) for i in indices))
    await broker.shutdown()


def submit(kind: str, run: str, indices: range, times: dict[int, float], concurrency: int = 32) -> None:
    asyncio.run(_submit(kind, run, indices, times, concurrency))
