"""Store faults under real processes: connections that die silently, Redis out of memory, a
rebuild under a running projector, and what /readyz says about all of it."""

from __future__ import annotations

import asyncio
import inspect
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.exceptions
from redis._parsers.base import BaseParser
from structlog.testing import capture_logs

from api.live import READ_BLOCK_MS as LIVE_BLOCK_MS
from consumers.projector import Projector
from consumers.worker.intake import READ_BLOCK_MS as WORKER_BLOCK_MS
from orchestrator.domain.events import StoredEvent
from orchestrator.domain.spec import BacktestSpec
from orchestrator.storage.commands import Commands
from orchestrator.storage.connections import BLOCKING_TIMEOUT_S, LONGEST_BLOCK_MS, store_unavailable
from orchestrator.storage.keys import DEFAULT_PROJECTION, WORKER_GROUP
from orchestrator.storage.readmodel import Projection
from tests.blackhole import BlackholeProxy
from tests.conftest import Backend
from tests.folding import verify
from tests.harness import System
from tests.processes import Cluster, RedisServer, eventually, wait_until
from tests.test_faults import FAST_LEASES, LONG, SHORT, Log, projector_caught_up, submit

pytestmark = [pytest.mark.redis, pytest.mark.slow]

SPEC = BacktestSpec(strategy="sma_cross", symbol="GOOG", params={"fast": 10, "slow": 20})


class SseRecorder:
    """Reads `GET /api/stream` in a thread as a browser does (reconnecting with the last id it
    got when a stream ends) and keeps every event's (type, task_id)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seen: list[tuple[str, str]] = []
        self.opened = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last: str | None = None
        while not self._stop.is_set():
            headers = {"Last-Event-ID": last} if last else {}
            try:
                with (
                    httpx.Client(timeout=httpx.Timeout(5, read=None)) as http,
                    http.stream("GET", f"{self.url}/api/stream", headers=headers) as response,
                ):
                    self.opened.set()
                    for line in response.iter_lines():
                        if self._stop.is_set():
                            return
                        if line.startswith("id:"):
                            last = line.split(":", 1)[1].strip()
                        elif line.startswith("data:"):
                            data = json.loads(line.split(":", 1)[1])
                            if "type" in data:
                                self.seen.append((data["type"], str(data["task_id"])))
            except httpx.HTTPError:
                pass  # the stream ended or the server went away: reconnect, as a browser does
            self._stop.wait(0.5)

    def saw(self, kind: str, task_id: str) -> bool:
        return (kind, task_id) in self.seen

    def close(self) -> None:
        self._stop.set()


@pytest.mark.parametrize(
    ("reply", "passes"),
    [
        ("OOM command not allowed when used memory > 'maxmemory'.", True),
        ("MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist", True),
        ("READONLY You can't write against a read only replica.", True),
        ("LOADING Redis is loading the dataset in memory", True),
        ("BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.", True),
        ("NOREPLICAS Not enough good replicas to write.", True),
        ("TRYAGAIN Multiple keys request during rehashing of slot", True),
        ("CLUSTERDOWN The cluster is down", True),
        ("MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.", True),
        ("WRONGTYPE Operation against a key holding the wrong kind of value", False),
        ("ERR unknown command 'FOO'", False),
        ("ERR Error running script (call to f_0): user_script:1: bad argument", False),
        ("NOPERM this user has no permissions to run the 'xadd' command", False),
    ],
)
def test_every_store_refusal_that_passes_is_waited_out_and_no_other(reply: str, passes: bool) -> None:
    # The exception redis-py raises for that error reply, built by redis-py's own parser.
    error = BaseParser.parse_error(reply)
    assert store_unavailable(error) is passes, type(error).__name__
    assert store_unavailable(redis.exceptions.TimeoutError("Timeout reading from 127.0.0.1:6379"))
    assert store_unavailable(redis.exceptions.ConnectionError("Connection refused"))


def test_no_blocking_read_outlasts_the_blocking_clients_socket_timeout() -> None:
    # The blocking client's socket timeout is what notices a silently dropped connection; a
    # BLOCK longer than the longest it allows would be cut off and re-sent on every idle read.
    projector_ms = inspect.signature(Projector).parameters["block_ms"].default
    blocks_ms = [WORKER_BLOCK_MS, LIVE_BLOCK_MS, projector_ms]
    assert max(blocks_ms) <= LONGEST_BLOCK_MS < BLOCKING_TIMEOUT_S * 1000


@pytest.fixture
def proxied(real_url: str, real_prefix: str, tmp_path: Path) -> Iterator[tuple[Cluster, BlackholeProxy, Log]]:
    """Processes that reach the shared Redis only through a blackholing proxy."""
    port = int(real_url.rsplit(":", 1)[1].split("/")[0])
    proxy = BlackholeProxy(port)
    cluster = Cluster(proxy.url, real_prefix, tmp_path, **FAST_LEASES)
    log = Log(real_url, real_prefix)
    yield cluster, proxy, log
    cluster.close()
    proxy.close()
    log.redis.close()


def test_silently_dropped_connections_are_noticed_and_replaced(
    proxied: tuple[Cluster, BlackholeProxy, Log],
) -> None:
    cluster, proxy, log = proxied
    _, url = cluster.api()
    cluster.start("projector")
    worker = cluster.start("worker", "--name", "behind-proxy", "--concurrency", "1")
    feed = SseRecorder(url)
    assert feed.opened.wait(10)
    warm = submit(url, SHORT)
    wait_until(lambda: log.has(warm, "completed"), timeout=30, what="the first task to complete")
    wait_until(lambda: feed.saw("completed", warm), timeout=10, what="the live feed to carry the first task")
    wait_until(lambda: projector_caught_up(log), timeout=10, what="the projector to catch up")

    # Every open connection (the worker's blocking read among them) goes silent: no FIN, no RST.
    assert proxy.blackhole() >= 3
    dropped_at = time.monotonic()
    task_id = submit(url, SHORT)  # the API notices its own dead pool connection and reconnects
    wait_until(lambda: log.has(task_id, "completed"), timeout=20, what="a task submitted after the drop to complete")
    # Within seconds: the API's and the worker's dead connections each cost one socket timeout.
    assert time.monotonic() - dropped_at < 15
    wait_until(lambda: projector_caught_up(log), timeout=10, what="the projector to catch up after the drop")
    wait_until(lambda: feed.saw("completed", task_id), timeout=10, what="the live feed to carry the new task")
    feed.close()
    # And it says so.
    assert any(e["event"] == "store.connection_dropped" for e in worker.logs())


def backstream(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def live_projection_caught_up(log: Log) -> bool:
    """The projection the pointer names has folded the whole log."""
    name: Any = log.redis.get(log.keys.live_projection)
    keys = log.keys.with_projection(name.decode() if name else DEFAULT_PROJECTION)
    last: Any = log.redis.xrevrange(log.keys.events, count=1)
    return bool(last) and log.redis.get(keys.projection_position) == last[0][0]


def test_the_live_projector_follows_a_rebuild_and_carries_on(real_url: str, real_prefix: str, tmp_path: Path) -> None:
    cluster = Cluster(real_url, real_prefix, tmp_path, **FAST_LEASES)
    log = Log(real_url, real_prefix)
    try:
        _, url = cluster.api()
        projector = cluster.start("projector")
        cluster.start("worker", "--name", "w")
        before = [submit(url, SHORT) for _ in range(3)]
        wait_until(lambda: all(log.has(t, "completed") for t in before), timeout=30, what="the first tasks")
        wait_until(lambda: live_projection_caught_up(log), timeout=10, what="the projector to catch up")

        rebuilt = backstream(cluster, "replay", "--rebuild")
        assert rebuilt.returncode == 0, rebuilt.stderr
        after = [submit(url, SHORT) for _ in range(3)]
        wait_until(lambda: all(log.has(t, "completed") for t in after), timeout=30, what="the later tasks")
        wait_until(lambda: live_projection_caught_up(log), timeout=10, what="the projector to follow the rebuild")

        listed = httpx.get(f"{url}/api/backtests/tasks?status=completed&limit=50", timeout=5).json()["tasks"]
        assert {t["task_id"] for t in listed} == set(before + after)
        verified = backstream(cluster, "replay", "--verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert projector.proc.poll() is None
    finally:
        cluster.close()
        log.redis.close()


async def test_a_batch_folded_onto_a_refused_one_is_not_taken_for_a_gap(backend: Backend) -> None:
    commands = Commands(backend.redis, backend.layout)
    other_task, task = str(uuid.uuid4()), str(uuid.uuid4())
    await commands.submit(other_task, SPEC)  # event 1
    await commands.submit(task, SPEC)  # event 2: the task's seq 1
    await commands.cancel(task)  # event 3: its seq 2
    projection = Projection(backend.redis, backend.keys, follow_live=True)
    other = Projector(Projection(backend.redis, backend.keys, follow_live=True), batch_size=1)
    reads = 0
    with capture_logs() as logs:

        async def source(after: str | None, count: int, block_ms: int | None) -> list[StoredEvent]:
            nonlocal reads
            reads += 1
            events = await projection.read_log(after, count, block_ms)
            if reads == 1:
                # Another projector stores event 1 alone: this one's store of events 1-2 is refused.
                await other.step()
            elif reads == 2:
                # Events 3.. reach the fold only after that refusal (the order a slow read gives).
                # (a log event has no awaitable to wait on, so poll the captured log)
                await eventually(
                    lambda: any(e["event"] == "projector.retrying_batch" for e in logs),
                    timeout=10,
                    what="the refused store",
                    every=0.01,
                )
            return events

        projector = Projector(projection, batch_size=2, source=source)
        await asyncio.wait_for(projector.run(burst=True), timeout=10)
    assert await verify(backend.redis, backend.keys) == []
    assert (await projection.current(task)).status == "cancelled"  # type: ignore[union-attr]


async def test_racing_projectors_never_stop_on_a_gap_that_is_not_in_the_log(real_backend: Backend) -> None:
    # Two live projectors with small batches: each often has a batch refused because the other
    # stored first, while its next batch was already folded onto the refused one.
    backend = real_backend
    system = System(backend, progress_interval_ms=10)
    async with system.client() as http:
        ids = [(await http.post("/api/backtests", json=SHORT)).json()["task_id"] for _ in range(40)]
        projectors = [Projector(Projection(backend.redis, backend.keys, follow_live=True), batch_size=3) for _ in "ab"]
        running = [asyncio.create_task(p.run()) for p in projectors]
        await system.worker(concurrency=4).run(burst=True)
        await Projector(system.projection).run(burst=True)
        for p in projectors:
            p.stop()
        await asyncio.wait_for(asyncio.gather(*running), timeout=30)  # neither died on the way
        assert sum(p.applied for p in projectors) > 0
        assert await verify(backend.redis, backend.keys) == []
        assert len(ids) == 40


@pytest.fixture
def private(tmp_path: Path, real_prefix: str) -> Iterator[tuple[Cluster, RedisServer, Log]]:
    """Processes on a private redis-server that the test may starve of memory."""
    server = RedisServer(tmp_path)
    cluster = Cluster(server.url, real_prefix, tmp_path, **FAST_LEASES)
    log = Log(server.url, real_prefix)
    yield cluster, server, log
    cluster.close()
    log.redis.close()
    server.stop()


def test_out_of_memory_is_waited_out_and_the_computed_result_kept(private: tuple[Cluster, RedisServer, Log]) -> None:
    cluster, _, log = private
    _, url = cluster.api()
    projector = cluster.start("projector")
    worker = cluster.start("worker", "--name", "w", "--concurrency", "1")
    task_id = submit(url, LONG)
    wait_until(lambda: log.has(task_id, "progress", attempt=1), timeout=30, what="the task to compute")

    log.redis.config_set("maxmemory", 1)  # noeviction (the default policy): every write refused
    refused = httpx.post(f"{url}/api/backtests", json=SHORT, timeout=10)
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"] == "store_out_of_memory"
    assert int(refused.headers["Retry-After"]) > 0

    def waiting_to_store() -> bool:
        return any(e["event"] == "store.unavailable" and e.get("doing") == "storing the outcome" for e in worker.logs())

    # The task computes to the end and holds its outcome while the store refuses it.
    wait_until(waiting_to_store, timeout=60, what="the worker to wait with its outcome")
    assert not log.has(task_id, "completed")

    def held_past_two_leases() -> bool:
        waits = [e["timestamp"] for e in worker.logs() if e.get("doing") == "storing the outcome"]
        held = datetime.fromisoformat(waits[-1]) - datetime.fromisoformat(waits[0])
        return held.total_seconds() > 2 * int(FAST_LEASES["lease_ms"]) / 1000

    # Held longer than a lease, beside an idle worker that takes over any task whose lease lapses.
    cluster.start("worker", "--name", "eager")
    wait_until(held_past_two_leases, timeout=30, what="the outcome to be held past two leases")
    log.redis.config_set("maxmemory", 0)

    wait_until(lambda: log.has(task_id, "completed"), timeout=30, what="the held outcome to be stored")
    assert log.types(task_id).count("started") == 1, log.types(task_id)  # not run again
    assert log.events(task_id)[-1].event.attempt == 1
    later = submit(url, SHORT)
    wait_until(lambda: log.has(later, "completed"), timeout=30, what="a task submitted after")
    wait_until(lambda: live_projection_caught_up(log), timeout=15, what="the projector to carry on")
    assert projector.proc.poll() is None and worker.proc.poll() is None
    task = httpx.get(f"{url}/api/backtests/tasks/{task_id}", timeout=5).json()
    assert task["status"] == "completed" and task["attempt"] == 1
    assert httpx.get(f"{url}/api/backtests/tasks/{task_id}/result", timeout=5).status_code == 200


def test_readyz_follows_the_projector_and_an_idle_worker_stays_alive(
    real_url: str, real_prefix: str, tmp_path: Path
) -> None:
    lease_s = int(FAST_LEASES["lease_ms"]) / 1000
    cluster = Cluster(real_url, real_prefix, tmp_path, **FAST_LEASES)
    log = Log(real_url, real_prefix)
    try:
        _, url = cluster.api()
        projector = cluster.start("projector")
        cluster.start("worker", "--name", "idler")

        def ready() -> dict[str, Any] | None:
            reply = httpx.get(f"{url}/readyz", timeout=5)
            return reply.json() if reply.status_code == 200 and reply.json()["workers_alive"] == 1 else None

        wait_until(ready, timeout=30, what="/readyz to see the projector and the worker")
        # The worker stays idle for two leases: XINFO CONSUMERS' idle time grows past the lease on
        # Redis before 7.2 (empty reads do not reset it), but its own heartbeat keeps it alive.
        joined = time.monotonic()
        wait_until(lambda: time.monotonic() - joined > 2 * lease_s, timeout=10, what="two leases")
        consumers = log.redis.xinfo_consumers(log.keys.work, WORKER_GROUP)
        if tuple(int(p) for p in log.redis.info("server")["redis_version"].split(".")[:2]) < (7, 2):
            assert consumers[0]["idle"] > lease_s * 1000  # what made it look dead before
        found = httpx.get(f"{url}/readyz", timeout=5)
        assert found.status_code == 200 and found.json()["workers_alive"] == 1, found.text
        page = httpx.get(f"{url}/workers", timeout=5).text
        assert 'class="alive"><td>idler</td>' in page
        metrics = httpx.get(f"{url}/metrics", timeout=5).text
        assert "backstream_workers_alive 1.0" in metrics

        projector.kill()  # SIGKILL: it cannot say goodbye
        task_id = submit(url, SHORT)
        wait_until(lambda: log.has(task_id, "completed"), timeout=30, what="the task to complete")

        def not_ready() -> Any:
            reply = httpx.get(f"{url}/readyz", timeout=5)
            return reply.json() if reply.status_code == 503 else None

        body = wait_until(not_ready, timeout=10, what="/readyz to notice the projector is gone")
        assert body["status"] == "not_ready" and body["projector_lag_events"] > 0
        assert "projector" in [r["check"] for r in body["reasons"]]

        cluster.start("projector")
        wait_until(ready, timeout=30, what="/readyz to be ready with a projector again")
    finally:
        cluster.close()
        log.redis.close()
