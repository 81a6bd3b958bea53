"""Dramatiq with the Redis broker: one process with as many threads as the
run's concurrency (no result backend: its default)."""

from __future__ import annotations

import time
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench.peers.common import CONCURRENCY, QUEUE, REDIS_URL, do_job

broker = RedisBroker(url=REDIS_URL)
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def job(kind: str, run: str, i: int) -> Any:
    do_job(kind, run, i)


def worker_argv(python: str, index: int, variant: str) -> list[str]:
    return [
        python,
        "-m",
        "dramatiq",
        "bench.peers.dramatiq_bench",
        "--processes",
        "1",
        "--threads",
        str(CONCURRENCY),
        "--queues",
        QUEUE,
    ]


def submit(kind: str, run: str, indices: range, times: dict[int, float]) -> None:
    for i in indices:
        times[i] = time.time()
        job.send(kind, run, i)
