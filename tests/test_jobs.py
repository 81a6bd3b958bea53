"""Jobs through real processes on real Redis: an API, a projector and workers fan a sweep and a
universe out, survive SIGKILLed workers, stop on a cancel, resume a chunk from its checkpoint,
and give the same table as the one-task sweep (streams.md, "Jobs")."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from consumers.engine.datasets import Catalog
from consumers.engine.runner import start_run
from orchestrator.domain.spec import BacktestSpec
from orchestrator.storage.connections import client as plain_client
from orchestrator.storage.keys import WORKER_GROUP, Keys
from orchestrator.storage.partitions import chunk_id
from tests.folding import verify
from tests.processes import Cluster, wait_until

pytestmark = pytest.mark.redis

# 5,000 combinations of which the 4,950 with fast < slow are admissible.
GRID: dict[str, Any] = {"strategy": "sma_cross", "params": {"fast": list(range(2, 52)), "slow": list(range(52, 152))}}


@pytest.fixture
def cluster(real_url: str, real_prefix: str, tmp_path: Path) -> Iterator[Cluster]:
    # Chunks of about 50 ms: a few dozen per job, so that every worker gets some.
    c = Cluster(real_url, real_prefix, tmp_path, progress_interval_ms="50", chunk_seconds="0.05", lease_ms="2000")
    yield c
    c.close()


def _submit(url: str, body: dict[str, Any]) -> str:
    reply = httpx.post(f"{url}/api/backtests", json=body, timeout=10)
    assert reply.status_code == 202, reply.text
    task_id: str = reply.json()["task_id"]
    return task_id


def _task(url: str, task_id: str) -> dict[str, Any]:
    reply: dict[str, Any] = httpx.get(f"{url}/api/backtests/tasks/{task_id}", timeout=10).json()
    return reply


def _ended(url: str, task_id: str, timeout: float = 180) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        task = _task(url, task_id)
        return task if task["status"] in ("completed", "failed", "cancelled") else None

    return wait_until(ended, timeout=timeout, what=f"job {task_id} to end")


def _table(url: str, task_id: str) -> list[dict[str, Any]]:
    reply = httpx.get(f"{url}/api/backtests/tasks/{task_id}/result", params={"table": "sweep"}, timeout=60)
    assert reply.status_code == 200, reply.text
    rows: list[dict[str, Any]] = reply.json()["rows"] if "rows" in reply.json() else reply.json()
    return rows


def _one_task_sweep(body: dict[str, Any]) -> dict[str, Any]:
    """The engine's own run of the whole sweep as one task, in this process."""
    run = start_run(msgspec.convert(body, BacktestSpec), Catalog.from_env_dir(None))
    while not run.done:
        run.advance(10.0)
    detail: dict[str, Any] = run.outcome().detail
    return detail


def _same_rows(job_rows: list[dict[str, Any]], task_rows: list[dict[str, Any]]) -> None:
    """The job's table is the task's: the same rows, metrics and order (the job's rows also say
    their symbol and their place in the grid)."""
    assert len(job_rows) == len(task_rows)
    for mine, theirs in zip(job_rows, task_rows, strict=True):
        assert {k: v for k, v in mine.items() if k in theirs} == theirs


async def _verified(cluster: Cluster) -> tuple[list[Any], int]:
    client = plain_client(cluster.redis_url, socket_timeout=5)
    keys = Keys(prefix=cluster.prefix)
    try:
        return await verify(client, keys), (await client.xpending(keys.work, WORKER_GROUP))["pending"]
    finally:
        await client.aclose()


def test_a_fanned_out_sweep_on_two_workers_equals_the_one_task_sweep(cluster: Cluster) -> None:
    _, url = cluster.api()
    cluster.start("projector")
    workers = [cluster.start("worker", "--name", name, "--concurrency", "2") for name in ("wa", "wb")]
    body = {**GRID, "symbol": "GOOG", "objective": "sharpe"}
    job_id = _submit(url, body)
    job = _ended(url, job_id)
    assert job["status"] == "completed", job
    chunks = job["job"]["chunks"]
    assert chunks > 4 and job["job"]["done"] == chunks and job["job"]["failed"] == 0

    def all_chunks_folded() -> dict[str, int] | None:
        counts: dict[str, int] = _task(url, job_id)["chunk_statuses"]
        return counts if counts["completed"] == chunks else None

    counts = wait_until(all_chunks_folded, timeout=30, what="the projector to fold every chunk")
    assert counts == {"queued": 0, "running": 0, "completed": chunks, "failed": 0, "cancelled": 0}
    expected = _one_task_sweep(body)
    assert job["result"]["best_params"] == expected["best"]["params"]
    assert job["result"]["metrics"] == {k: expected["best"]["metrics"][k] for k in job["result"]["metrics"]}
    _same_rows(_table(url, job_id), expected["table"])
    # Both workers computed chunks; the job's own trail is bounded.
    finished = [e for w in workers for e in w.logs() if e["event"] == "task.finished"]
    assert {e["task_id"] for e in finished} == {chunk_id(job_id, i) for i in range(chunks)}
    assert len({e["worker"] for e in finished}) == 2
    events = httpx.get(f"{url}/api/backtests/tasks/{job_id}/events", timeout=10).json()["events"]
    assert [e["type"] for e in events[:3]] == ["submitted", "started", "fanned_out"]
    assert events[-1]["type"] == "completed" and len(events) <= 3 + 99 + 1
    # The chunks are not in the task list: the job is.
    listed = httpx.get(f"{url}/api/backtests/tasks?limit=100", timeout=10).json()["tasks"]
    assert [t["task_id"] for t in listed] == [job_id]
    differences, pending = asyncio.run(_verified(cluster))
    assert differences == [] and pending == 0


def test_a_universe_job_reports_each_symbol_and_the_best_of_all(cluster: Cluster) -> None:
    _, url = cluster.api()
    cluster.start("projector")
    cluster.start("worker", "--concurrency", "2")
    grid = {"strategy": "sma_cross", "params": {"fast": [5, 10, 20], "slow": [50, 100]}}
    job_id = _submit(url, {**grid, "symbols": ["GOOG", "IBM"], "objective": "-max_drawdown_pct"})
    job = _ended(url, job_id)
    assert job["status"] == "completed", job
    assert job["job"]["symbols"] == ["GOOG", "IBM"]
    singles = {s: _one_task_sweep({**grid, "symbol": s, "objective": "-max_drawdown_pct"}) for s in ("GOOG", "IBM")}
    result = httpx.get(f"{url}/api/backtests/tasks/{job_id}/result", timeout=60).json()
    by_symbol = {row["symbol"]: row for row in result["symbols"]}
    for symbol, single in singles.items():
        assert by_symbol[symbol]["params"] == single["best"]["params"]
    best = min(singles, key=lambda s: singles[s]["table"][0]["max_drawdown_pct"])
    assert job["result"]["symbol"] == best and job["result"]["best_params"] == singles[best]["best"]["params"]


def test_workers_killed_in_the_middle_of_a_job_leave_one_outcome_and_the_same_table(cluster: Cluster) -> None:
    _, url = cluster.api()
    cluster.start("projector")
    doomed = [cluster.start("worker", "--name", f"doomed-{i}") for i in range(2)]
    body = {**GRID, "symbol": "IBM"}
    job_id = _submit(url, body)

    def some_done() -> bool:
        job = _task(url, job_id).get("job")
        return bool(job) and job["done"] >= 2

    wait_until(some_done, timeout=60, what="a few chunks to complete")
    for worker in doomed:
        worker.kill()  # SIGKILL, chunks in hand
    cluster.start("worker", "--name", "survivor")
    job = _ended(url, job_id)
    assert job["status"] == "completed", job
    events = httpx.get(f"{url}/api/backtests/tasks/{job_id}/events", timeout=10).json()["events"]
    assert [e["type"] for e in events].count("completed") == 1
    _same_rows(_table(url, job_id), _one_task_sweep(body)["table"])
    differences, pending = asyncio.run(_verified(cluster))
    assert differences == [] and pending == 0


def test_a_cancelled_job_stops_and_nothing_of_it_runs_or_writes_after(cluster: Cluster) -> None:
    _, url = cluster.api()
    cluster.start("projector")
    workers = [cluster.start("worker", "--name", f"w{i}") for i in range(2)]
    job_id = _submit(url, {**GRID, "symbol": "AAPL"})

    def some_done() -> dict[str, Any] | None:
        job = _task(url, job_id).get("job")
        return job if job and job["done"] >= 1 else None

    job = wait_until(some_done, timeout=60, what="a chunk to complete")
    statuses = _task(url, job_id)["chunk_statuses"]
    assert sum(statuses.values()) == job["chunks"] and statuses["completed"] >= 1
    reply = httpx.delete(f"{url}/api/backtests/tasks/{job_id}", timeout=10)
    assert reply.status_code in (200, 202), reply.text
    cancelled_at = time.monotonic()
    assert _ended(url, job_id)["status"] == "cancelled"
    chunks = [_task(url, chunk_id(job_id, i)) for i in range(job["chunks"])]
    assert {c["status"] for c in chunks} <= {"completed", "cancelled"}
    assert any(c["status"] == "completed" for c in chunks) and any(c["status"] == "cancelled" for c in chunks)
    trails = {
        c["task_id"]: httpx.get(f"{url}/api/backtests/tasks/{c['task_id']}/events", timeout=10).json()["events"]
        for c in chunks
    }
    # The chunks that were running when the job was cancelled: their workers stop computing them
    # (or, had they computed already, their outcome is refused).
    running = {
        t for t, trail in trails.items() if trail[-1]["type"] == "cancelled" and trail[-2]["type"] != "submitted"
    }

    def stopped() -> bool:
        ended = ("task.stopped", "task.write_refused")
        return running <= {e["task_id"] for w in workers for e in w.logs() if e["event"] in ended}

    wait_until(stopped, timeout=30, what="the running chunks' workers to stop them")
    for task_id, trail in trails.items():
        again = httpx.get(f"{url}/api/backtests/tasks/{task_id}/events", timeout=10).json()["events"]
        assert again == trail and trail[-1]["type"] in ("completed", "cancelled")  # the last word stays
    late = [
        e
        for w in workers
        for e in w.logs()
        if e["event"] == "task.finished" and e.get("outcome") == "completed" and e["task_id"] != job_id
    ]
    assert all(_task(url, e["task_id"])["status"] == "completed" for e in late)
    assert time.monotonic() - cancelled_at < 60
    # The results of the chunks that completed stay readable.
    done = next(c for c in chunks if c["status"] == "completed")
    assert httpx.get(f"{url}/api/backtests/tasks/{done['task_id']}/result", timeout=30).status_code == 200


def test_a_chunk_taken_over_after_a_sigkill_resumes_from_its_checkpoint(
    tmp_path: Path, real_url: str, real_prefix: str
) -> None:
    # One long chunk (the interpreted path: position management), saved every 0.2 s.
    c = Cluster(
        real_url, real_prefix, tmp_path, chunk_seconds="60", checkpoint_s="0.2", lease_ms="1000", heartbeat_ms="200"
    )
    try:
        _, url = c.api()
        c.start("projector")
        body = {
            "strategy": "sma_cross",
            "symbols": ["GOOG"],
            "params": {"fast": list(range(2, 32)), "slow": list(range(60, 80))},
            "stop_loss_pct": 5,
        }
        first = c.start("worker", "--name", "first")
        job_id = _submit(url, body)
        chunk = chunk_id(job_id, 0)
        saved = Keys(prefix=real_prefix).checkpoint(chunk)

        async def checkpoint() -> bytes | None:
            client = plain_client(real_url, socket_timeout=5)
            try:
                state: bytes | None = await client.get(saved)
                return state
            finally:
                await client.aclose()

        first_state = wait_until(lambda: asyncio.run(checkpoint()), timeout=60, what="the chunk to save a checkpoint")
        # Killed after a later save: the state the next attempt resumes from is mid-chunk.
        wait_until(lambda: asyncio.run(checkpoint()) not in (None, first_state), timeout=30, what="a second save")
        first.kill()
        second = c.start("worker", "--name", "second")
        job = _ended(url, job_id)
        assert job["status"] == "completed", job
        resumed = [e for e in second.logs() if e["event"] == "task.resuming"]
        assert resumed and resumed[0]["task_id"] == chunk
        spec = {k: v for k, v in body.items() if k != "symbols"} | {"symbol": "GOOG"}
        _same_rows(_table(url, job_id), _one_task_sweep(spec)["table"])
    finally:
        c.close()
