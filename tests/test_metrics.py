"""/metrics derived from the log and Redis, exact across API restarts; /readyz."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.domain.events import Failed
from orchestrator.domain.spec import BacktestSpec
from orchestrator.storage.keys import WORKER_GROUP
from orchestrator.storage.presence import Heartbeat
from tests.conftest import Backend
from tests.harness import System
from tests.processes import eventually

BODY: dict[str, Any] = {"strategy": "sma_cross", "symbol": "GOOG", "params": {"fast": 10, "slow": 20}}
SPEC = BacktestSpec(strategy="sma_cross", symbol="GOOG", params={"fast": 10, "slow": 20})

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def system(backend: Backend) -> System:
    return System(backend)


async def scrape(system: System) -> Samples:
    """One scrape through a freshly built app: every scrape is also an "API restart"."""
    async with system.client() as http:
        reply = await http.get("/metrics")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(reply.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def take(system: System, backend: Backend, worker: str) -> tuple[str, str]:
    reply = await backend.redis.xreadgroup(WORKER_GROUP, worker, {backend.keys.work: ">"}, count=1)
    message_id, fields = reply[0][1][0]
    return message_id.decode(), fields[b"task_id"].decode()


async def test_counters_and_histograms_come_from_the_log(system: System, backend: Backend) -> None:
    await system.queue.ensure_group()
    async with system.client() as http:
        # A task that fails for good, and one whose worker is presumed dead and is taken over.
        failing, reclaimed = str(uuid.uuid4()), str(uuid.uuid4())
        await system.commands.submit(failing, SPEC)
        await system.commands.submit(reclaimed, SPEC)
        message_id, _ = await take(system, backend, "w1")
        claim = await system.queue.claim(
            failing, worker="w1", token="a", message_id=message_id, reclaim=False, max_attempts=1
        )
        await system.queue.finish(
            Failed(task_id=failing, attempt=claim.attempt, error="boom", error_type="ValueError"),
            message_id=message_id,
            reason="boom",
        )
        message_id, _ = await take(system, backend, "w1")
        await system.queue.claim(
            reclaimed, worker="w1", token="b", message_id=message_id, reclaim=False, max_attempts=3
        )
        await system.queue.claim(reclaimed, worker="w2", token="c", message_id=message_id, reclaim=True, max_attempts=3)
        assert (await http.delete(f"/api/backtests/tasks/{reclaimed}")).status_code == 200  # running
        # Two that complete, one cancelled while queued.
        ids = [(await http.post("/api/backtests", json=BODY)).json()["task_id"] for _ in range(3)]
        assert (await http.delete(f"/api/backtests/tasks/{ids[0]}")).status_code == 200
        await system.run_workers()
        live = await http.get("/metrics")
    assert "backstream_cancel_latency_seconds_count" in live.text

    samples = await scrape(system)
    assert value(samples, "backstream_tasks_submitted_total") == 5
    assert value(samples, "backstream_tasks_completed_total") == 2
    assert value(samples, "backstream_tasks_failed_total", error_type="ValueError") == 1
    assert value(samples, "backstream_tasks_cancelled_total", previous_status="queued") == 1
    assert value(samples, "backstream_tasks_cancelled_total", previous_status="running") == 1
    assert value(samples, "backstream_reclaims_total") == 1
    assert value(samples, "backstream_attempts_started_total") == 5
    assert value(samples, "backstream_task_duration_seconds_count", outcome="completed") == 2
    assert value(samples, "backstream_task_duration_seconds_count", outcome="failed") == 1
    assert value(samples, "backstream_task_duration_seconds_count", outcome="cancelled") == 1
    # Queue waits: the four first claims; a takeover is not a wait in the queue.
    assert value(samples, "backstream_queue_wait_seconds_count") == 4
    assert value(samples, "backstream_dead_letters") == 1
    assert value(samples, "backstream_tasks", status="completed") == 2
    assert value(samples, "backstream_tasks", status="cancelled") == 2
    assert value(samples, "backstream_tasks", status="failed") == 1
    assert value(samples, "backstream_group_pending", group=WORKER_GROUP) == 0
    assert value(samples, "backstream_projector_lag_events") == 0

    # The same numbers from another "restart": they are the log's, not the process's.
    again = await scrape(system)
    counters = {
        k: v
        for k, v in samples.items()
        if k[0].endswith(("_total", "_count", "_bucket")) and "cancel_latency" not in k[0]
    }
    assert counters == {k: again[k] for k in counters}


async def test_cancel_latency_is_timed_per_request(system: System) -> None:
    async with system.client() as http:
        task_id = (await http.post("/api/backtests", json=BODY)).json()["task_id"]
        assert (await http.delete(f"/api/backtests/tasks/{task_id}")).status_code == 200
        assert (await http.delete(f"/api/backtests/tasks/{uuid.uuid4()}")).status_code == 404
        text = (await http.get("/metrics")).text
    samples = {
        (s.name, frozenset(s.labels.items())): s.value for f in text_string_to_metric_families(text) for s in f.samples
    }
    assert value(samples, "backstream_cancel_latency_seconds_count", outcome="cancelled") == 1
    assert value(samples, "backstream_cancel_latency_seconds_count", outcome="refused") == 1


async def test_gauges_show_lag_pending_and_the_queue(system: System, backend: Backend) -> None:
    async with system.client() as http:
        for _ in range(3):
            await http.post("/api/backtests", json=BODY)
    await system.queue.ensure_group()
    await take(system, backend, "w7")  # delivered, not acknowledged
    samples = await scrape(system)
    # Nothing projected yet: the projector is three submits behind.
    assert value(samples, "backstream_projector_lag_events") == 3
    assert value(samples, "backstream_group_pending", group=WORKER_GROUP) == 1
    assert value(samples, "backstream_group_lag", group=WORKER_GROUP) == 2
    assert value(samples, "backstream_consumer_pending", group=WORKER_GROUP, consumer="w7") == 1
    assert value(samples, "backstream_log_entries") == 3
    await system.project()
    samples = await scrape(system)
    assert value(samples, "backstream_projector_lag_events") == 0
    assert value(samples, "backstream_tasks", status="queued") == 3


async def test_readyz_is_separate_from_healthz(system: System, backend: Backend) -> None:
    # A live projector's heartbeat (the real Projector beats the same way on a timer).
    await Heartbeat(backend.redis, backend.keys.projector_heartbeats, "p1", interval_s=1).beat()
    async with system.client() as http:
        ready = await http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {
            "status": "ready",
            "reasons": [],
            "projector_lag_events": 0,
            "projector_lag_s": 0.0,
            "projectors_alive": 1,
            "workers_alive": 0,
        }
        assert (await http.get("/healthz")).json() == {"status": "ok"}


async def test_readyz_is_not_ready_without_a_projector_and_says_why(system: System, backend: Backend) -> None:
    async with system.client() as http:
        ready = await http.get("/readyz")
        assert ready.status_code == 503 and ready.headers["Retry-After"]
        assert ready.json()["status"] == "not_ready"
        assert [r["check"] for r in ready.json()["reasons"]] == ["projector"]
        assert "no projector has sent a heartbeat" in ready.json()["reasons"][0]["message"]
        assert (await http.get("/healthz")).status_code == 200  # the process and Redis are fine


async def test_readyz_is_not_ready_when_the_projector_is_stuck_past_the_allowed_lag(backend: Backend) -> None:
    system = System(backend, ready_max_lag_s=0.2)
    beat = Heartbeat(backend.redis, backend.keys.projector_heartbeats, "stuck", interval_s=1)
    async with system.client() as http:
        await http.post("/api/backtests", json=BODY)  # never projected: the projector beats, but is stuck

        async def not_ready() -> httpx.Response | None:
            await beat.beat()
            ready = await http.get("/readyz")
            return ready if ready.status_code == 503 else None

        ready = await eventually(not_ready, timeout=5, what="/readyz to see the stuck projector")
        body = ready.json()
        assert [r["check"] for r in body["reasons"]] == ["projector_lag"]
        assert body["projector_lag_events"] == 1 and body["projector_lag_s"] > 0.2
        assert "BACKSTREAM_READY_MAX_LAG_S" in body["reasons"][0]["message"]
        await system.project()
        assert (await http.get("/readyz")).status_code == 200  # caught up: ready again
