"""Fault tests: real processes killed, paused and restarted on real Redis. A task, once
accepted, reaches exactly one outcome."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import os
import random
import resource
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from orchestrator.domain.events import Failed, Started
from orchestrator.storage.codec import decode_entry
from orchestrator.storage.keys import WORKER_GROUP, Keys
from orchestrator.storage.workqueue import LOST_WORKERS_PER_ATTEMPT
from tests.folding import verify
from tests.processes import Cluster, RedisServer, Role, wait_until

pytestmark = [pytest.mark.redis, pytest.mark.slow]

# About two seconds of computing (6,000 backtests). Its objective (calmar) keeps it on the
# interpreted path: the compiled sweep kernel (STRATEGIES.md, "Sweep speed") would finish the same
# grid ~7x sooner, shorter than the several leases and the kills these tests need it to outlast.
LONG: dict[str, Any] = {
    "strategy": "sma_cross",
    "symbol": "AAPL",
    "objective": "calmar",
    "params": {"fast": list(range(2, 62)), "slow": list(range(70, 170))},
}
SHORT: dict[str, Any] = {"strategy": "sma_cross", "symbol": "MSFT", "params": {"fast": [5, 10], "slow": [20, 30]}}
OUTCOMES = ("completed", "failed", "cancelled")

FAST_LEASES = {
    # These tests are about a task's attempts: a long sweep here stays one task (never fanned
    # out). test_jobs.py kills workers under jobs.
    "chunk_seconds": "1e9",
    "lease_ms": "1500",
    "heartbeat_ms": "200",
    "progress_interval_ms": "100",
    "retry_base_ms": "100",
    "retry_cap_ms": "300",
    "shutdown_grace_s": "0.5",
}


class Log:
    """Reads the event log of one deployment straight from Redis."""

    def __init__(self, url: str, prefix: str) -> None:
        self.redis = redis.Redis.from_url(url)
        self.keys = Keys(prefix=prefix)

    def events(self, task_id: str | None = None) -> list[Any]:
        entries = [decode_entry(i, f) for i, f in self.redis.xrange(self.keys.events)]
        return [e for e in entries if task_id is None or e.event.task_id == task_id]

    def types(self, task_id: str) -> list[str]:
        return [type(e.event).__struct_config__.tag for e in self.events(task_id)]

    def has(self, task_id: str, event_type: str, **fields: Any) -> bool:
        return any(
            type(e.event).__struct_config__.tag == event_type
            and all(getattr(e.event, k) == v for k, v in fields.items())
            for e in self.events(task_id)
        )

    def pending(self) -> int:
        return int(self.redis.xpending(self.keys.work, WORKER_GROUP)["pending"])

    def outcome_counts(self) -> Counter[str]:
        return Counter(e.event.task_id for e in self.events() if type(e.event).__struct_config__.tag in OUTCOMES)


def submit(url: str, body: dict[str, Any]) -> str:
    reply = httpx.post(f"{url}/api/backtests", json=body, timeout=10)
    assert reply.status_code == 202, reply.text
    return str(reply.json()["task_id"])


def replay_differences(url: str, prefix: str) -> list[Any]:
    async def run() -> list[Any]:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(url, protocol=2)
        try:
            return await verify(client, Keys(prefix=prefix))
        finally:
            await client.aclose()

    return asyncio.run(run())


def projector_caught_up(log: Log) -> bool:
    position = log.redis.get(log.keys.projection_position)
    last = log.redis.xrevrange(log.keys.events, count=1)
    return bool(last) and position == last[0][0]


@pytest.fixture
def cluster(real_url: str, real_prefix: str, tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(real_url, real_prefix, tmp_path, **FAST_LEASES)
    yield c
    c.close()


@pytest.fixture
def log(cluster: Cluster) -> Iterator[Log]:
    reader = Log(cluster.redis_url, cluster.prefix)
    yield reader
    reader.redis.close()


def test_sigkill_mid_backtest_completes_on_another_worker(cluster: Cluster, log: Log) -> None:
    _, url = cluster.api()
    first = cluster.start("worker", "--name", "doomed")
    task_id = submit(url, LONG)
    wait_until(lambda: log.has(task_id, "progress", attempt=1), timeout=30, what="attempt 1 to compute")
    first.kill()
    cluster.start("worker", "--name", "survivor")
    wait_until(lambda: log.has(task_id, "completed"), timeout=60, what="the task to complete")
    started = [e.event for e in log.events(task_id) if type(e.event).__struct_config__.tag == "started"]
    assert [(s.attempt, s.worker, s.reclaimed) for s in started] == [(1, "doomed", False), (2, "survivor", True)]
    assert log.types(task_id).count("completed") == 1
    assert [e.event.attempt for e in log.events(task_id)][-1] == 2
    assert log.pending() == 0


def test_paused_worker_cannot_write_after_losing_its_claim(cluster: Cluster, log: Log) -> None:
    _, url = cluster.api()
    paused = cluster.start("worker", "--name", "sleeper")
    task_id = submit(url, LONG)
    wait_until(lambda: log.has(task_id, "progress", attempt=1), timeout=30, what="attempt 1 to compute")
    paused.signal(signal.SIGSTOP)
    cluster.start("worker", "--name", "taker")
    wait_until(lambda: log.has(task_id, "started", attempt=2), timeout=30, what="the takeover")
    paused.signal(signal.SIGCONT)
    wait_until(lambda: log.has(task_id, "completed"), timeout=60, what="the task to complete")

    def dropped() -> list[dict[str, Any]]:
        return [
            e
            for e in paused.logs()
            if e.get("task_id") == task_id and e["event"] in ("task.write_refused", "task.stopped")
        ]

    notices = wait_until(dropped, timeout=30, what="the paused worker to drop the task")
    assert notices[0]["attempt"] == 1
    events = log.events(task_id)
    assert log.types(task_id).count("completed") == 1 and "failed" not in log.types(task_id)
    takeover = next(i for i, e in enumerate(events) if e.event.attempt == 2)
    assert all(e.event.attempt == 2 for e in events[takeover:]), "attempt 1 wrote after the takeover"
    assert paused.stop() == 0
    assert log.pending() == 0


def test_long_task_on_healthy_worker_is_never_reclaimed(real_url: str, real_prefix: str, tmp_path: Path) -> None:
    cluster = Cluster(real_url, real_prefix, tmp_path, lease_ms="500", heartbeat_ms="100")
    log = Log(real_url, real_prefix)
    try:
        _, url = cluster.api()
        cluster.start("worker", "--name", "steady")
        cluster.start("worker", "--name", "eager")  # idle, checking for expired leases all along
        task_id = submit(url, LONG)
        wait_until(lambda: log.has(task_id, "completed"), timeout=60, what="the task to complete")
        events = log.events(task_id)
        duration_ms = events[-1].at_ms - events[1].at_ms
        assert duration_ms > 3 * 500, f"the task took only {duration_ms} ms: not several leases"
        assert log.types(task_id).count("started") == 1
        assert {e.event.attempt for e in events[1:]} == {1}
    finally:
        cluster.close()
        log.redis.close()


def test_always_failing_backtest_is_retried_then_dead_lettered_once(cluster: Cluster, log: Log, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "FLAKY.csv").write_text(
        "Date,Open,High,Low,Close,Volume\n"
        + "".join(f"2020-01-{d:02d},{10 + d},{11 + d},{9 + d},{10.5 + d},1000\n" for d in range(1, 31))
    )
    cluster.env["BACKSTREAM_DATA_DIR"] = str(data)
    cluster.env["BACKSTREAM_MAX_ATTEMPTS"] = "3"
    _, url = cluster.api()
    task_id = submit(url, {"strategy": "buy_and_hold", "symbol": "FLAKY"})
    # The data share goes away: every attempt fails to read it (an I/O error, which may pass).
    data.rename(tmp_path / "away")
    cluster.start("worker", "--name", "w")
    wait_until(lambda: log.has(task_id, "failed"), timeout=60, what="the task to fail")
    assert log.types(task_id) == [
        "submitted",
        "started",
        "retry_scheduled",
        "started",
        "retry_scheduled",
        "started",
        "failed",
    ]
    failed = log.events(task_id)[-1].event
    assert failed.error_type == "DataUnavailable" and failed.retryable  # type: ignore[union-attr]
    letters = httpx.get(f"{url}/api/dead-letters", timeout=5).json()["dead_letters"]
    assert [d["task_id"] for d in letters] == [task_id]
    assert [a["outcome"] for a in letters[0]["history"]] == ["retry_scheduled", "retry_scheduled", "failed"]
    assert log.pending() == 0
    # The share is back; a user requeues the task and it completes as attempt 4.
    (tmp_path / "away").rename(data)
    reply = httpx.post(f"{url}/api/backtests/tasks/{task_id}/retry", timeout=5)
    assert reply.status_code == 202 and reply.json()["status"] in ("queued", "running", "completed")
    wait_until(lambda: log.has(task_id, "completed", attempt=4), timeout=60, what="the requeued task to complete")
    assert log.types(task_id).count("failed") == 1 and log.has(task_id, "requeued")
    assert len(httpx.get(f"{url}/api/dead-letters", timeout=5).json()["dead_letters"]) == 1


def test_sigterm_releases_running_tasks_to_another_worker_at_once(
    real_url: str, real_prefix: str, tmp_path: Path
) -> None:
    # A lease far longer than the test: only a release, not a reclaim, can move the tasks.
    cluster = Cluster(real_url, real_prefix, tmp_path, **{**FAST_LEASES, "lease_ms": "600000"})
    log = Log(real_url, real_prefix)
    try:
        _, url = cluster.api()
        leaving = cluster.start("worker", "--name", "leaving", "--concurrency", "2")
        ids = [submit(url, LONG), submit(url, LONG)]
        for task_id in ids:
            wait_until(lambda t=task_id: log.has(t, "progress", attempt=1), timeout=30, what="both to compute")
        cluster.start("worker", "--name", "staying", "--concurrency", "2")
        assert leaving.stop() == 0
        for task_id in ids:
            assert log.has(task_id, "released", worker="leaving")
        wait_until(lambda: all(log.has(t, "completed") for t in ids), timeout=60, what="both to complete")
        for task_id in ids:
            assert log.has(task_id, "started", attempt=2, worker="staying")
            assert log.types(task_id).count("completed") == 1
        assert log.pending() == 0
    finally:
        cluster.close()
        log.redis.close()


def test_two_rolling_deploys_and_a_crash_do_not_fail_a_healthy_task(
    real_url: str, real_prefix: str, tmp_path: Path
) -> None:
    """Releases are never charged and a lost worker is not either: before, the third attempt was
    the last of a budget of 3, and the reclaim after the crash failed the task (WorkerLost)."""
    # A lease of 5 s: only the crash may move the task without a release, even on a busy machine.
    cluster = Cluster(real_url, real_prefix, tmp_path, **{**FAST_LEASES, "lease_ms": "5000"})
    log = Log(real_url, real_prefix)
    try:
        _two_rolling_deploys_and_a_crash(cluster, log)
    finally:
        cluster.close()
        log.redis.close()


def _two_rolling_deploys_and_a_crash(cluster: Cluster, log: Log) -> None:
    _, url = cluster.api()
    task_id = submit(url, LONG)
    for attempt, name in ((1, "before-deploy"), (2, "after-first-deploy")):
        worker = cluster.start("worker", "--name", name)
        wait_until(lambda a=attempt: log.has(task_id, "progress", attempt=a), timeout=60, what=f"attempt {attempt}")
        assert worker.stop() == 0  # SIGTERM: the grace period is too short for it, so it is released
        assert log.has(task_id, "released", attempt=attempt, worker=name)
    crashing = cluster.start("worker", "--name", "crashing")
    wait_until(lambda: log.has(task_id, "progress", attempt=3), timeout=60, what="attempt 3")
    crashing.kill()
    cluster.start("worker", "--name", "survivor")
    wait_until(lambda: log.has(task_id, "completed") or log.has(task_id, "failed"), timeout=90, what="an outcome")
    assert log.types(task_id).count("completed") == 1 and "failed" not in log.types(task_id), log.types(task_id)
    started = [e.event for e in log.events(task_id) if isinstance(e.event, Started)]
    assert [(s.attempt, s.reclaimed, s.isolated) for s in started] == [
        (1, False, False),
        (2, False, False),
        (3, False, False),
        (4, True, True),  # taken over after the crash, in a process of its own
    ]
    assert log.pending() == 0


def test_projector_killed_anywhere_resumes_without_applying_twice(cluster: Cluster, log: Log) -> None:
    _, url = cluster.api()
    cluster.start("worker", "--name", "w1", "--concurrency", "2")
    ids = [submit(url, SHORT) for _ in range(40)]
    rng = random.Random(7)
    for _ in range(8):
        projector = cluster.start("projector")
        wait_until(
            lambda: log.redis.get(log.keys.projection_position) is not None,
            timeout=30,
            what="the projector to store a position",
        )
        threading_pause(rng.uniform(0.0, 0.3))
        projector.kill()
        ids.append(submit(url, SHORT))
    cluster.start("projector")
    wait_until(lambda: all(log.has(t, "completed") for t in ids), timeout=120, what="all tasks to complete")
    wait_until(lambda: projector_caught_up(log), timeout=30, what="the projector to catch up")
    assert replay_differences(cluster.redis_url, cluster.prefix) == []


def threading_pause(seconds: float) -> None:
    import threading

    threading.Event().wait(seconds)


def test_redis_restart_under_load_loses_no_accepted_task(real_prefix: str, tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    cluster = Cluster(server.url, real_prefix, tmp_path, **FAST_LEASES)
    log = Log(server.url, real_prefix)
    try:
        _, url = cluster.api()
        cluster.start("projector")
        cluster.start("worker", "--name", "w1", "--concurrency", "2")
        cluster.start("worker", "--name", "w2", "--concurrency", "2")
        accepted, refused = [], 0
        for i in range(60):
            if i == 20:
                server.stop()
                down = httpx.get(f"{url}/healthz", timeout=15)
                assert down.status_code == 503 and "Retry-After" in down.headers
            if i == 35:
                server.start()
                wait_until(
                    lambda: httpx.get(f"{url}/healthz", timeout=15).status_code == 200,
                    timeout=30,
                    what="the API to see Redis again",
                )
            try:
                reply = httpx.post(f"{url}/api/backtests", json=SHORT, timeout=15)
            except httpx.HTTPError:
                refused += 1
                continue
            if reply.status_code == 202:
                accepted.append(reply.json()["task_id"])
            else:
                assert reply.status_code == 503 and "Retry-After" in reply.headers, reply.text
                refused += 1
        assert refused > 0 and len(accepted) >= 40
        logged = {e.event.task_id for e in log.events() if type(e.event).__struct_config__.tag == "submitted"}
        assert set(accepted) <= logged
        wait_until(
            lambda: all(log.has(t, "completed") for t in accepted), timeout=120, what="every accepted task to complete"
        )
        assert max(log.outcome_counts().values()) == 1
    finally:
        cluster.close()
        log.redis.close()
        server.stop()


# A healthy batch-mate: 1,000 combinations, about 1.6 s of CPU in a process of its own here,
# imports included (2.4 s for 2,000, 4.1 s for 4,000: the interpreted path costs ~0.85 ms per
# combination). It must fit the capped worker's budget of its startup CPU + 3 s with room to
# spare, also on a loaded machine, where the same work takes more CPU time (at 2,000 a healthy
# task was once charged a failure while other test suites shared the two cores).
HEALTHY: dict[str, Any] = {**LONG, "params": {"fast": list(range(2, 12)), "slow": list(range(70, 170))}}


def write_huge_csv(path: Path, bars: int) -> None:
    """A user's series of `bars` daily bars (a random walk): a sweep over it computes ~15x longer
    per combination than over a bundled symbol."""
    rng = random.Random(1)
    price, day = 100.0, dt.date(1950, 1, 2)
    lines = ["Date,Open,High,Low,Close,Volume"]
    for _ in range(bars):
        opened, price = price, max(1.0, price * (1 + rng.gauss(0, 0.01)))
        lines.append(
            f"{day},{opened:.4f},{max(opened, price) * 1.005:.4f},{min(opened, price) * 0.995:.4f},{price:.4f},1000"
        )
        day += dt.timedelta(days=1)
    path.write_text("\n".join(lines) + "\n")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (/proc/<pid>/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_task_that_kills_its_worker_fails_alone_and_its_batch_mates_complete(
    cluster: Cluster, log: Log, tmp_path: Path
) -> None:
    """A poison pill: a sweep over a user's huge series needs far more CPU than the operator's
    limit on the worker process (RLIMIT_CPU, as systemd's LimitCPU= sets it), so the kernel kills
    (SIGXCPU) the process that computes it. The first time that is the worker, with three
    batch-mates in hand: a lost worker is not charged to anyone, and the four run again, each in
    a process of its own. The batch-mates complete; the poison pill kills its own process on each
    attempt, which its worker sees and charges to it, and it ends failed with the true reason and
    a dead letter giving every attempt's outcome."""
    data = tmp_path / "data"
    data.mkdir()
    write_huge_csv(data / "HUGE.csv", 20_000)
    cluster.env["BACKSTREAM_DATA_DIR"] = str(data)
    _, url = cluster.api()
    # How much CPU a worker spends starting, on this machine: the limit is that plus 3 s.
    probe = cluster.start("worker", "--name", "probe")
    wait_until(lambda: any(e["event"] == "worker.started" for e in probe.logs()), timeout=60, what="the probe")
    limit = math.ceil(cpu_seconds(probe.proc.pid)) + 3
    assert probe.stop() == 0
    # ~20 s of computing: no process gets that far under the limit.
    poison = submit(
        url, {**LONG, "symbol": "HUGE", "params": {"fast": list(range(2, 52)), "slow": list(range(70, 170))}}
    )
    healthy = [submit(url, HEALTHY) for _ in range(3)]

    def capped() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (limit, limit + 30))

    def start_limited() -> Role:
        """A worker (a supervisor restarts it under its name) allowed about 3 s of CPU once
        started: enough for any one healthy task, not for the four at once, nor for the poison
        pill. The processes it starts inherit the limit (each with a clock of its own)."""
        return cluster.start("worker", "--name", "capped", "--concurrency", "4", preexec_fn=capped)

    workers = [start_limited()]

    def supervise() -> bool:
        if workers[-1].proc.poll() is not None:
            workers.append(start_limited())
        return log.has(poison, "failed") and all(log.has(t, "completed") for t in healthy)

    wait_until(supervise, timeout=300, what="the poison pill to fail and its batch-mates to complete")
    deaths = [w.proc.returncode for w in workers[:-1]]
    assert deaths and set(deaths) == {-signal.SIGXCPU}, deaths  # only the CPU limit killed workers
    first = [e.event for e in log.events() if isinstance(e.event, Started) and e.event.attempt == 1]
    assert {s.task_id for s in first} == {poison, *healthy}
    for task_id in healthy:
        events = [e.event for e in log.events(task_id)]
        types = log.types(task_id)
        # Lost with the poison pill the first time, then completed isolated: nothing charged.
        assert types.count("started") >= 2 and types.count("completed") == 1, types
        assert "failed" not in types and "retry_scheduled" not in types, types
        assert [e.isolated for e in events if isinstance(e, Started)][-1]
    failed = log.events(poison)[-1].event
    assert isinstance(failed, Failed) and failed.error_type == "TaskProcessDied", failed
    assert "killed by SIGXCPU" in failed.error
    letters = httpx.get(f"{url}/api/dead-letters", timeout=5).json()["dead_letters"]
    assert [d["task_id"] for d in letters] == [poison]
    history = letters[0]["history"]
    assert letters[0]["reason"] == "TaskProcessDied"
    # Every attempt's true outcome: lost with its worker (not charged), then its own process
    # killed under it three times (charged: retried twice, then failed).
    assert history[0]["outcome"] == "lost" and not history[0]["isolated"]
    charged = [(a["outcome"], a["isolated"]) for a in history if a["outcome"] != "lost"]
    assert charged == [("retry_scheduled", True), ("retry_scheduled", True), ("failed", True)], history
    assert all(a["outcome"] is not None for a in history)
    assert log.pending() == 0


# The chaos scenario's seeds: CI runs these; BACKSTREAM_CHAOS_SEEDS=1,2,...,10 runs more in a row.
CHAOS_SEEDS = [int(s) for s in os.environ.get("BACKSTREAM_CHAOS_SEEDS", "1").split(",") if s.strip()]
# A sweep of 600 combinations: ~0.3 s of computing alone, long enough to be in flight when its
# worker is killed, short enough for 40 of them to finish in ~30 s under the kills.
SWEEP: dict[str, Any] = {**LONG, "params": {"fast": list(range(2, 14)), "slow": list(range(70, 120))}}


@pytest.mark.parametrize("seed", CHAOS_SEEDS)
def test_chaos_every_healthy_task_completes(cluster: Cluster, log: Log, seed: int) -> None:
    """3 workers at the default concurrency, 40 sweeps, a random worker SIGKILLed every 0.5-2 s
    for 25 s and restarted under its name, the projector killed every fifth time: no task caused
    anything, so every one completes, exactly once, and the projection replays exactly."""
    began = time.monotonic()
    _, url = cluster.api()
    rng = random.Random(seed)
    workers = {f"w{i}": cluster.start("worker", "--name", f"w{i}") for i in range(3)}
    projector = cluster.start("projector")
    ids = [submit(url, SWEEP) for _ in range(40)]
    kills, end = 0, time.monotonic() + 25
    while time.monotonic() < end:
        threading_pause(rng.uniform(0.5, 2.0))
        victim = rng.choice(sorted(workers))
        workers[victim].kill()
        workers[victim] = cluster.start("worker", "--name", victim)
        kills += 1
        if kills % 5 == 0:
            projector.kill()
            projector = cluster.start("projector")
    wait_until(
        lambda: (counts := log.outcome_counts()) and all(counts[t] >= 1 for t in ids),
        timeout=120,
        what="every task to reach an outcome",
    )
    counts = log.outcome_counts()
    assert all(counts[t] == 1 for t in ids), {t: counts[t] for t in ids if counts[t] != 1}
    failed = {t: log.events(t)[-1].event for t in ids if not log.has(t, "completed")}
    assert failed == {}, f"seed {seed}: {len(failed)} healthy tasks did not complete after {kills} kills"
    assert log.redis.xlen(log.keys.dead_letters) == 0
    assert log.pending() == 0
    wait_until(lambda: projector_caught_up(log), timeout=60, what="the projector to catch up")
    assert replay_differences(cluster.redis_url, cluster.prefix) == []
    started = [[e.event for e in log.events(t) if isinstance(e.event, Started)] for t in ids]
    lost = [len(s) - 1 for s in started]  # every attempt but the last lost its worker
    print(
        f"chaos seed={seed} kills={kills} attempts_lost={sum(lost)} tasks_lost={sum(n > 0 for n in lost)} "
        f"most_lost={max(lost)} backstop={3 * LOST_WORKERS_PER_ATTEMPT} "
        f"isolated={sum(a.isolated for s in started for a in s)} "
        f"seconds={time.monotonic() - began:.0f}"
    )
