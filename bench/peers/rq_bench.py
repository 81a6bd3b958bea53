"""RQ: `rq worker` (forks a work horse per job) or SimpleWorker (runs jobs in its own process)."""

from __future__ import annotations

from typing import Any

from redis import Redis
from rq import Queue
from rq.command import send_stop_job_command
from rq.job import Job, JobStatus
from rq.worker import SimpleWorker, Worker

from bench.peers.common import QUEUE, REDIS_URL, do_job
from bench.work import warm_up


class PreloadedWorker(Worker):
    """RQ's default forking worker, with the data and engine loaded before it forks (as a real
    deployment would preload): otherwise every forked work horse would parse the data again."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        warm_up()
        super().__init__(*args, **kwargs)


class PreloadedSimpleWorker(SimpleWorker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        warm_up()
        super().__init__(*args, **kwargs)


def worker_argv(python: str, index: int, variant: str) -> list[str]:
    name = "PreloadedSimpleWorker" if variant == "simple" else "PreloadedWorker"
    worker_class = ["--worker-class", f"bench.peers.rq_bench.{name}"]
    return [
        python,
        "-m",
        "rq.cli",
        "worker",
        "--url",
        REDIS_URL,
        "--name",
        f"w{index}",
        "--quiet",
        *worker_class,
        QUEUE,
    ]


def job(kind: str, run: str, i: int) -> Any:
    return do_job(kind, run, i)


def submit(kind: str, run: str, indices: range, times: dict[int, float], batch: int = 500) -> None:
    import time

    q = Queue(QUEUE, connection=Redis.from_url(REDIS_URL))
    for lo in range(indices.start, indices.stop, batch):
        chunk = range(lo, min(lo + batch, indices.stop))
        t = time.time()
        q.enqueue_many([Queue.prepare_data(job, args=(kind, run, i)) for i in chunk])
        for i in chunk:
            times[i] = t


class CancelClient:
    """The cancel scenario's calls (forking worker only: SimpleWorker has no horse to kill)."""

    def __init__(self) -> None:
        self.redis = Redis.from_url(REDIS_URL)
        self.queue = Queue(QUEUE, connection=self.redis)

    def submit_long(self, run: str, i: int) -> Job:
        return self.queue.enqueue(job, "long", run, i)

    def cancel(self, handle: Job) -> None:
        send_stop_job_command(self.redis, handle.id)

    def stopped(self, handle: Job) -> bool:
        return handle.get_status(refresh=True) == JobStatus.STOPPED
