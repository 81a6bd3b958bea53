"""SAQ: one worker process with the run's concurrency; otherwise its defaults."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from saq import Queue

from bench.peers.common import CONCURRENCY, QUEUE, REDIS_URL, do_job

queue = Queue.from_url(REDIS_URL, name=QUEUE)


async def job(ctx: dict[str, Any], *, kind: str, run: str, i: int) -> Any:
    return do_job(kind, run, i)


settings = {"queue": queue, "functions": [job], "concurrency": CONCURRENCY}


def worker_argv(python: str, index: int, variant: str) -> list[str]:
    return [python, "-m", "saq", "bench.peers.saq_bench.settings", "--workers", "1"]


async def _submit(kind: str, run: str, indices: range, times: dict[int, float], concurrency: int) -> None:
    q = Queue.from_url(REDIS_URL, name=QUEUE)
    await q.connect()
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            times[i] = time.time()
            await q.enqueue("job", kind=kind, run=run, i=i)

    await asyncio.gather(*(one(i) for i in indices))
    await q.disconnect()


def submit(kind: str, run: str, indices: range, times: dict[int, float], concurrency: int = 32) -> None:
    asyncio.run(_submit(kind, run, indices, times, concurrency))
