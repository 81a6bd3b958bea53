"""A single computing step longer than the lease, on a healthy worker: real processes, real Redis.

The worker keeps its lease on a timer while a step computes in its thread, so such a task
completes at attempt 1 and is never reclaimed. Before the timer, leases were renewed only between
chunks: the worker reclaimed its own task three times and it failed as WorkerLost."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

from consumers.engine.datasets import read_user_csv
from orchestrator.domain.events import Failed
from tests.conftest import Backend
from tests.harness import System
from tests.processes import Cluster, wait_until
from tests.test_faults import Log, submit

pytestmark = [pytest.mark.redis, pytest.mark.slow]

LEASE_MS = 600
HEARTBEAT_MS = 100
# How long the worker's first step (loading the file, within one chunk) should take: six leases, so
# the premise (over two) holds even when the machine loads it faster than the timed sample.
LONG_STEP_S = 6 * LEASE_MS / 1000


def write_long_csv(path: Path, rows: int) -> None:
    """Daily bars from the year 1000 on: a cent-priced random walk that never reaches zero."""
    rng = np.random.default_rng(13)
    close = np.round(50 + np.abs(np.cumsum(rng.choice([-0.05, 0.0, 0.05], rows))), 2)
    first = dt.date(1000, 1, 1).toordinal()
    lines = ["Date,Open,High,Low,Close,Volume"]
    for i, c in enumerate(close.tolist()):
        lines.append(f"{dt.date.fromordinal(first + i).isoformat()},{c:.2f},{c + 0.1:.2f},{c - 0.1:.2f},{c:.2f},1000")
    path.write_text("\n".join(lines) + "\n")


def rows_loading_in(seconds: float, scratch: Path) -> int:
    """Rows of such a file that this machine loads in about `seconds` (timed on a sample)."""
    sample = scratch / "SAMPLE.csv"
    write_long_csv(sample, 10_000)
    began = time.perf_counter()
    read_user_csv(sample)
    per_row = (time.perf_counter() - began) / 10_000
    sample.unlink()
    return min(1_000_000, int(seconds / per_row))


class LongRun(NamedTuple):
    cluster: Cluster
    log: Log
    rows: int  # of LONGRUN.csv, whose loading (the first step) takes about LONG_STEP_S


@pytest.fixture
def long_run(real_url: str, real_prefix: str, tmp_path: Path) -> Iterator[LongRun]:
    data = tmp_path / "data"
    data.mkdir()
    rows = rows_loading_in(LONG_STEP_S, tmp_path)
    write_long_csv(data / "LONGRUN.csv", rows)
    cluster = Cluster(
        real_url,
        real_prefix,
        tmp_path,
        lease_ms=str(LEASE_MS),
        heartbeat_ms=str(HEARTBEAT_MS),
        # Progress after every chunk or two: the first one dates the end of the first chunk.
        progress_interval_ms="20",
        data_dir=str(data),
    )
    log = Log(real_url, real_prefix)
    try:
        yield LongRun(cluster, log, rows)
    finally:
        cluster.close()
        log.redis.close()


def tag(entry: Any) -> str:
    return str(type(entry.event).__struct_config__.tag)


def test_one_step_longer_than_the_lease_keeps_attempt_1(long_run: LongRun) -> None:
    cluster, log, rows = long_run
    _, url = cluster.api()
    # One worker with free slots: it looks for expired leases (its own task's too) all along.
    worker = cluster.start("worker", "--name", "alone", "--concurrency", "4")
    # A window a quarter of the series (at most the strategy's bound): its standard deviation took
    # seconds when it cost O(n·window).
    spec = {"strategy": "bollinger", "symbol": "LONGRUN", "params": {"window": min(rows // 4, 100_000), "k": 2.0}}
    task_id = submit(url, spec)
    wait_until(lambda: log.has(task_id, "completed") or log.has(task_id, "failed"), timeout=60, what="an outcome")
    events = log.events(task_id)
    assert log.types(task_id).count("started") == 1, log.types(task_id)
    assert log.has(task_id, "completed", attempt=1)
    assert {e.event.attempt for e in events[1:]} == {1}
    assert not [e for e in worker.logs() if e["event"] in ("worker.reclaimed", "task.write_refused")]
    assert log.pending() == 0
    # The premise: the first chunk (from the claim to the first progress report, or to the
    # outcome if the run ended within it) was one thread hop longer than two leases, during
    # which no chunk ended to send a heartbeat.
    started = next(e for e in events if tag(e) == "started")
    boundary = next(e for e in events if tag(e) in ("progress", "completed"))
    assert boundary.at_ms - started.at_ms > 2 * LEASE_MS, (rows, boundary.at_ms - started.at_ms)


def test_a_step_running_past_the_time_limit_fails_the_task_at_once(long_run: LongRun) -> None:
    """The lease is kept while a step computes, but not past the task's time limit: the task
    fails with TaskTimeout (not retried) while the step still runs, and when the step returns
    that attempt writes nothing."""
    cluster, log, _ = long_run
    _, url = cluster.api()
    worker = cluster.start("worker", "--name", "alone", "--concurrency", "4")
    # Loading the file alone takes about six leases; the task may run for a third of one.
    task_id = submit(url, {"strategy": "buy_and_hold", "symbol": "LONGRUN", "timeout_s": LEASE_MS / 3000})
    wait_until(lambda: log.has(task_id, "completed") or log.has(task_id, "failed"), timeout=60, what="an outcome")
    failed = log.events(task_id)[-1].event
    assert isinstance(failed, Failed), log.types(task_id)
    assert (failed.attempt, failed.error_type, failed.retryable) == (1, "TaskTimeout", False)
    assert "within one step" in failed.error, failed.error
    # The step returns later; its attempt stops there without writing.
    wait_until(
        lambda: any(e["event"] == "task.stopped" and e.get("reason") == "timed_out" for e in worker.logs()),
        timeout=30,
        what="the step to return",
    )
    assert log.types(task_id) == ["submitted", "started", "failed"]
    assert not [e for e in worker.logs() if e["event"] in ("worker.reclaimed", "task.write_refused", "task.crashed")]
    assert log.pending() == 0


async def test_the_api_answers_while_a_submit_reads_a_long_file(real_backend: Backend, tmp_path: Path) -> None:
    """The API checks a spec against its data; the first read of a long user file takes seconds.
    It happens off the event loop, so other requests are answered meanwhile."""
    data = tmp_path / "data"
    data.mkdir()
    write_long_csv(data / "LONGRUN.csv", rows_loading_in(LONG_STEP_S, tmp_path))
    system = System(real_backend, data_dir=str(data))
    async with system.client() as http:
        submitting = asyncio.create_task(
            http.post("/api/backtests", json={"strategy": "buy_and_hold", "symbol": "LONGRUN"})
        )
        answers = []
        while not submitting.done():  # each answer is a probe the submit did not block
            answers.append((await http.get("/healthz")).status_code)
        submitted = await submitting
    assert submitted.status_code == 202, submitted.text
    # Blocked, the loop would get one answer before the submit began and one once the file was
    # read: it gets many while the file is read.
    assert len(answers) > 5 and set(answers) == {200}, answers
