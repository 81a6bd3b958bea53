"""Server-Sent Events from the log: ids, resuming with Last-Event-ID, per-task streams, coalescing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from api.app import create_app
from api.live import COALESCE_S, Coalescer, close_streams
from orchestrator.domain.events import Progress, StoredEvent, Submitted
from orchestrator.domain.spec import BacktestSpec
from orchestrator.storage.keys import WORKER_GROUP
from orchestrator.storage.readmodel import LogCursor
from tests.conftest import Backend
from tests.harness import System
from tests.processes import InProcessServer

# The live feed runs on fakeredis, real Redis and a real Redis Cluster (conftest).
pytestmark = pytest.mark.also_on_cluster

BODY: dict[str, Any] = {"strategy": "sma_cross", "symbol": "GOOG", "params": {"fast": 10, "slow": 20}}
DEADLINE_S = 20


@pytest.fixture
def system(backend: Backend) -> System:
    return System(backend)


@contextlib.asynccontextmanager
async def served(system: System) -> AsyncIterator[tuple[InProcessServer, httpx.AsyncClient]]:
    app = create_app(system.settings, checker=system.checker, catalog=system.catalog, connections=system.connections)
    async with InProcessServer(app) as server, httpx.AsyncClient(base_url=server.url, timeout=DEADLINE_S) as http:
        yield server, http


async def sse(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Each SSE event as {"event", "id", "data"}; comments and the retry hint are skipped."""
    event: dict[str, Any] = {"event": "message", "id": None, "data": None}
    async for line in response.aiter_lines():
        if not line:
            if event["data"] is not None:
                yield event
            event = {"event": "message", "id": None, "data": None}
        elif line.startswith((":", "retry:")):
            continue
        else:
            field, _, value = line.partition(": ")
            event[field] = json.loads(value) if field == "data" else value


async def collect(
    http: httpx.AsyncClient, path: str, *, count: int | None = None, headers: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Events of a stream until it ends (or `count` events arrived), within the deadline."""
    out: list[dict[str, Any]] = []
    async with asyncio.timeout(DEADLINE_S), http.stream("GET", path, headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        async for event in sse(response):
            out.append(event)
            if count is not None and len(out) >= count:
                break
    return out


async def log_ids(backend: Backend, task_id: str | None = None) -> list[str]:
    """The log's ids: partition 0's, or those of `task_id`'s partition."""
    keys = backend.layout.of(task_id) if task_id else backend.keys
    return [i.decode() for i, _ in await backend.redis.xrange(keys.events)]


def own_position(backend: Backend, event: dict[str, Any]) -> str:
    """The position an event's SSE id (a log cursor: the plain stream id with one partition)
    gives for its task's partition."""
    cursor = LogCursor.parse(event["id"], backend.layout.width)
    return cursor.positions[backend.layout.partition_index(event["data"]["task_id"])]


async def test_all_tasks_stream_carries_stream_ids_and_resumes_with_last_event_id(
    system: System, backend: Backend
) -> None:
    async with served(system) as (_, http):
        first = (await http.post("/api/backtests", json=BODY)).json()["task_id"]
        # From the start of the log: the submit, then everything the worker appends.
        reading = asyncio.create_task(collect(http, "/api/stream?last_event_id=0-0", count=3))
        await system.run_workers()
        events = await reading
        ids = await log_ids(backend, first)
        assert [e["data"]["id"] for e in events] == ids[:3]
        assert [e["data"]["type"] for e in events] == ["submitted", "started", "completed"]
        assert all(e["data"]["id"] == own_position(backend, e) and e["data"]["task_id"] == first for e in events)

        # A client that saw only the first event reconnects with Last-Event-ID: it misses nothing,
        # including what was appended while it was away.
        second = (await http.post("/api/backtests", json=BODY)).json()["task_id"]
        await system.run_workers()
        resumed = await collect(http, "/api/stream", count=5, headers={"Last-Event-ID": events[0]["id"]})
        # In each partition's log order (there is none across partitions).
        firsts = [e["data"]["id"] for e in resumed if e["data"]["task_id"] == first]
        assert firsts == (await log_ids(backend, first))[1:3]
        seconds = [e["data"]["id"] for e in resumed if e["data"]["task_id"] == second]
        assert seconds == (await log_ids(backend, second))[-3:]  # its partition's last three
        if backend.layout.width == 1:
            assert [e["id"] for e in resumed] == (await log_ids(backend))[1:6]


async def test_a_stream_without_last_event_id_starts_now(system: System, backend: Backend) -> None:
    async with served(system) as (_, http):
        await http.post("/api/backtests", json=BODY)  # before the stream: not sent
        async with asyncio.timeout(DEADLINE_S), http.stream("GET", "/api/stream") as response:
            events = sse(response)
            later = (await http.post("/api/backtests", json=BODY)).json()["task_id"]
            event = await anext(events)
        assert event["data"]["task_id"] == later and event["data"]["type"] == "submitted"
        assert own_position(backend, event) == (await log_ids(backend, later))[-1]


async def test_a_stream_resumed_after_the_last_possible_id_opens(system: System, backend: Backend) -> None:
    async with served(system) as (_, http):
        await http.post("/api/backtests", json=BODY)
        # Nothing can come after this id, and Redis refuses a range that starts past it.
        last = f"{2**64 - 1}-{2**64 - 1}"
        async with asyncio.timeout(DEADLINE_S), http.stream("GET", "/api/stream", headers={"Last-Event-ID": last}) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")


async def test_task_stream_sends_history_then_live_events_and_ends(system: System, backend: Backend) -> None:
    async with served(system) as (_, http):
        other = (await http.post("/api/backtests", json=BODY)).json()["task_id"]
        task_id = (await http.post("/api/backtests", json=BODY)).json()["task_id"]
        reading = asyncio.create_task(collect(http, f"/api/backtests/tasks/{task_id}/stream"))
        await system.run_workers()
        events = await reading  # returns because the stream ends after the terminal event
        assert [e["data"]["type"] for e in events[:-1]] == ["submitted", "started", "completed"]
        assert {e["data"]["task_id"] for e in events[:-1]} == {task_id} != {other}
        assert events[-1]["event"] == "end"
        # Reconnecting after the end: nothing more will come, and 204 tells an EventSource to stop.
        again = await http.get(f"/api/backtests/tasks/{task_id}/stream", headers={"Last-Event-ID": events[-2]["id"]})
        assert again.status_code == 204
        # From the middle: only what came after.
        tail = await collect(http, f"/api/backtests/tasks/{task_id}/stream", headers={"Last-Event-ID": events[0]["id"]})
        assert [e["id"] for e in tail[:-1]] == [e["id"] for e in events[1:-1]]

        assert (await http.get(f"/api/backtests/tasks/{uuid.uuid4()}/stream")).status_code == 404
        assert (await http.get("/api/backtests/tasks/nope/stream")).status_code == 404  # names no task
        bad = await http.get("/api/stream", headers={"Last-Event-ID": "yesterday"})
        assert bad.status_code == 422 and bad.json()["fields"][0]["field"] == "Last-Event-ID"


async def test_progress_is_coalesced_but_the_latest_value_arrives(system: System, backend: Backend) -> None:
    await system.queue.ensure_group()
    spec = BacktestSpec(strategy="sma_cross", symbol="GOOG", params={"fast": 10, "slow": 20})
    task_id = str(uuid.uuid4())
    await system.commands.submit(task_id, spec)
    reply = await backend.redis.xreadgroup(WORKER_GROUP, "w1", {backend.keys.work: ">"}, count=1)
    message_id = reply[0][1][0][0].decode()
    await system.queue.claim(task_id, worker="w1", token="t", message_id=message_id, reclaim=False, max_attempts=3)
    async with (
        served(system) as (_, http),
        asyncio.timeout(DEADLINE_S),
        http.stream("GET", f"/api/backtests/tasks/{task_id}/stream") as response,
    ):
        events = sse(response)
        assert [(await anext(events))["data"]["type"] for _ in range(2)] == ["submitted", "started"]
        # 50 progress events in a burst, far faster than COALESCE_S.
        for step in range(1, 51):
            await system.queue.heartbeat(task_id, 1, worker="w1", message_id=message_id, progress=step / 50)
        seen: list[float] = []
        while not seen or seen[-1] != 1.0:
            event = await anext(events)
            assert event["data"]["type"] == "progress"
            seen.append(event["data"]["data"]["progress"])
    assert seen[0] == 0.02 and seen[-1] == 1.0
    assert len(seen) <= 5, f"{len(seen)} progress events reached the client: {seen}"


def test_coalescer_holds_progress_per_task_and_keeps_the_latest() -> None:
    spec = BacktestSpec(strategy="s", symbol="X")

    def progress(entry: str, task: str, value: float) -> StoredEvent:
        return StoredEvent(id=entry, event=Progress(task_id=task, seq=2, progress=value))

    c = Coalescer(COALESCE_S)
    assert [s.id for s in c.offer(progress("1-0", "a", 0.1), now=0.0)] == ["1-0"]  # the first goes at once
    assert c.offer(progress("2-0", "a", 0.2), now=0.1) == []  # held
    assert c.offer(progress("3-0", "a", 0.3), now=0.2) == []  # replaces the held one
    assert [s.id for s in c.offer(progress("4-0", "b", 0.5), now=0.2)] == ["4-0"]  # another task: not held
    assert c.next_due() == COALESCE_S
    assert c.due(now=0.2) == []
    assert [s.id for s in c.due(now=COALESCE_S)] == ["3-0"]
    assert c.next_due() is None
    # Any other event of the task supersedes its held progress.
    assert c.offer(progress("5-0", "a", 0.9), now=0.3) == []
    submitted = StoredEvent(id="6-0", event=Submitted(task_id="a", seq=3, spec=spec))
    assert [s.id for s in c.offer(submitted, now=0.3)] == ["6-0"]
    assert c.due(now=10.0) == []


async def test_closing_the_streams_lets_the_server_shut_down(system: System) -> None:
    app = create_app(system.settings, checker=system.checker, catalog=system.catalog, connections=system.connections)
    async with InProcessServer(app) as server, httpx.AsyncClient(base_url=server.url, timeout=DEADLINE_S) as http:
        async with asyncio.timeout(DEADLINE_S), http.stream("GET", "/api/stream") as response:
            assert response.status_code == 200
            close_streams(app)  # what the server's signal handler does
            # No event: the stream ends (after its retry hint and resume point).
            assert [line async for line in response.aiter_lines() if line.startswith(("data", "event"))] == []
        refused = await http.get("/api/stream")
        assert refused.status_code == 503 and refused.json()["error"] == "shutting_down"
        assert (await http.get("/readyz")).status_code == 503
        await server.stop(timeout=5)
