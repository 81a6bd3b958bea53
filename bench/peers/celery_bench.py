"""Celery with the Redis broker and result backend: `--pool solo` (one process runs the tasks) at
concurrency 1, a thread pool of the run's concurrency above that; without gossip and mingle
(cluster chatter that only slows the start)."""

from __future__ import annotations

import time
from typing import Any

from celery import Celery, signals
from celery.result import AsyncResult

from bench.peers.common import CONCURRENCY, QUEUE, REDIS_URL, do_job
from bench.work import warm_up

app = Celery("bench", broker=REDIS_URL, backend=REDIS_URL)
app.conf.task_default_queue = QUEUE
app.conf.worker_hijack_root_logger = False


@app.task(name="bench.job")
def job(kind: str, run: str, i: int) -> Any:
    return do_job(kind, run, i)


@signals.worker_init.connect
def _preload(**_: Any) -> None:
    # Load the data before the prefork pool forks, so a pool process started after a terminate
    # computes at once (as RQ's preloaded forking worker does).
    warm_up()


def worker_argv(python: str, index: int, variant: str) -> list[str]:
    if variant == "prefork":
        pool = ["--pool", "prefork", "--concurrency", "1"]
    elif CONCURRENCY > 1:
        pool = ["--pool", "threads", "--concurrency", str(CONCURRENCY)]
    else:
        pool = ["--pool", "solo"]
    return [
        python,
        "-m",
        "celery",
        "-A",
        "bench.peers.celery_bench",
        "worker",
        *pool,
        "-Q",
        QUEUE,
        "-n",
        f"w{index}@%h",
        "--without-gossip",
        "--without-mingle",
        "-l",
        "WARNING",
    ]


def submit(kind: str, run: str, indices: range, times: dict[int, float]) -> None:
    for i in indices:
        times[i] = time.time()
        job.apply_async((kind, run, i))


class CancelClient:
    """The cancel scenario's calls (prefork pool: `terminate` signals the process running the job)."""

    def submit_long(self, run: str, i: int) -> AsyncResult:
        return job.apply_async(("long", run, i))

    def cancel(self, handle: AsyncResult) -> None:
        app.control.revoke(handle.id, terminate=True)

    def stopped(self, handle: AsyncResult) -> bool:
        return handle.state == "REVOKED"
