"""arq: max_jobs of the run's concurrency but at least its default 10, and a 10 ms poll delay
instead of its default 0.5 s.

The job body is synchronous (like every peer's), so it blocks the worker's event loop and only one
job computes at a time, as in the other systems. With max_jobs=1 arq starts one job per poll
delay (2 jobs/s with the default 0.5 s), which would measure the delay, not arq."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from arq import create_pool
from arq.connections import RedisSettings

from bench.peers.common import CONCURRENCY, REDIS_URL, do_job


async def job(ctx: dict[str, Any], kind: str, run: str, i: int) -> Any:
    return do_job(kind, run, i)


class WorkerSettings:
    functions = [job]
    redis_settings = RedisSettings.from_dsn(REDIS_URL)
    max_jobs = max(CONCURRENCY, 10)
    poll_delay = 0.01
    allow_abort_jobs = True


def worker_argv(python: str, index: int, variant: str) -> list[str]:
    from pathlib import Path

    return [str(Path(python).parent / "arq"), "bench.peers.arq_bench.WorkerSettings"]


async def _submit(kind: str, run: str, indices: range, times: dict[int, float], concurrency: int) -> None:
    pool = await create_pool(RedisSettings.from_dsn(REDIS_URL))
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            times[i] = time.time()
            await pool.enqueue_job("job", kind, run, i)

    await asyncio.gather(*(one(i) for i in indices))
    await pool.aclose()


def submit(kind: str, run: str, indices: range, times: dict[int, float], concurrency: int = 32) -> None:
    asyncio.run(_submit(kind, run, indices, times, concurrency))
