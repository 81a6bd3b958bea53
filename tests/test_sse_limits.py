"""SSE under load and odd requests, on a real HTTP server (uvicorn on a free port): catch-up in
bounded pages, a limit on open streams per client with a 429, HEAD answered at once, and a
resume point from the first byte."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest
import redis.asyncio as aioredis

from api.app import create_app
from api.live import PAGE, QUEUE_EVENTS, LiveFeed
from orchestrator.domain.events import Progress, Started, Submitted
from orchestrator.domain.spec import BacktestSpec
from orchestrator.settings import ApiToken
from orchestrator.storage.keys import event_field
from orchestrator.storage.readmodel.log import log_pages
from tests.conftest import Backend
from tests.harness import System
from tests.log_entries import entry_fields
from tests.processes import InProcessServer, eventually
from tests.test_live import sse

pytestmark = pytest.mark.redis
DEADLINE_S = 20


class RecordingRedis(aioredis.Redis):
    """A real client that notes each XRANGE / XREAD / HMGET it sends (not those in pipelines)
    and how many entries came back (HMGET: fields asked, values found)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reads: list[tuple[str, int | None, int]] = []  # (command, COUNT asked, entries returned)

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        reply = await super().execute_command(*args, **options)
        name = (args[0].decode() if isinstance(args[0], bytes) else str(args[0])).upper()
        if name == "HMGET":
            self.reads.append((name, len(args) - 2, sum(v is not None for v in reply)))
        elif name in ("XRANGE", "XREAD"):
            words = [a.decode() if isinstance(a, bytes) else str(a) for a in args]
            count = next((int(words[i + 1]) for i, a in enumerate(words) if a.upper() == "COUNT"), None)
            got = len(reply) if name == "XRANGE" else sum(len(e) for _, e in (reply or []))
            self.reads.append((name, count, got))
        return reply


@contextlib.asynccontextmanager
async def recording_system(backend: Backend, **settings: Any) -> AsyncIterator[tuple[System, RecordingRedis]]:
    client = RecordingRedis.from_url(backend.url or "", protocol=2)
    try:
        yield System(msgspec.structs.replace(backend, redis=client), **settings), client
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def served(system: System) -> AsyncIterator[tuple[InProcessServer, httpx.AsyncClient]]:
    app = create_app(system.settings, checker=system.checker, catalog=system.catalog, connections=system.connections)
    async with InProcessServer(app) as server, httpx.AsyncClient(base_url=server.url, timeout=DEADLINE_S) as http:
        yield server, http


async def write_events(backend: Backend, count: int) -> list[str]:
    """`count` progress events in the log, each of its own task (so none is coalesced away); their ids."""
    async with backend.redis.pipeline(transaction=False) as pipe:
        for seq in range(1, count + 1):
            event = Progress(task_id=str(uuid.uuid4()), seq=2, attempt=1, progress=seq / count)
            pipe.xadd(backend.keys.events, entry_fields(event))
        ids = await pipe.execute()
    return [i.decode() for i in ids]


async def test_catch_up_reads_one_page_per_call_and_only_when_asked(real_backend: Backend) -> None:
    ids = await write_events(real_backend, 2 * PAGE + 7)
    async with recording_system(real_backend) as (_, client):
        pages = log_pages(client, real_backend.keys.events, "0-0", PAGE)
        first = (await anext(pages)).events
        # One page read, and nothing more until the caller asks: memory holds one page.
        assert client.reads == [("XRANGE", PAGE, PAGE)] and len(first) == PAGE
        rest = [e for page in [p async for p in pages] for e in page.events]
        assert [e.id for e in first + rest] == ids
        assert client.reads == [("XRANGE", PAGE, PAGE), ("XRANGE", PAGE, PAGE), ("XRANGE", PAGE, 7)]


async def test_a_stream_from_the_start_of_the_log_catches_up_in_pages(real_backend: Backend) -> None:
    ids = await write_events(real_backend, 2 * PAGE + 7)
    async with recording_system(real_backend) as (system, client), served(system) as (_, http):
        got: list[str] = []
        headers = {"Last-Event-ID": "0-0"}
        async with asyncio.timeout(DEADLINE_S), http.stream("GET", "/api/stream", headers=headers) as response:
            assert response.status_code == 200
            async for event in sse(response):
                got.append(event["id"])
                if len(got) == len(ids):
                    break
        assert got == ids
        log_reads = [r for r in client.reads if r[0] == "XRANGE"]
        assert log_reads and all(count == PAGE and returned <= PAGE for _, count, returned in log_reads)


async def test_a_task_stream_reads_the_task_history_in_pages(real_backend: Backend) -> None:
    """A long task's history is sent as it is read, a page of its log index at a time."""
    keys, task_id = real_backend.keys, str(uuid.uuid4())
    spec = BacktestSpec(strategy="buy_and_hold", symbol="GOOG")
    events: list[Any] = [Submitted(task_id=task_id, seq=1, spec=spec)]
    # Started events (takeovers) are never coalesced, so every one of them must arrive.
    events += [Started(task_id=task_id, seq=s, attempt=s - 1, worker="w") for s in range(2, 2 * PAGE + 9)]
    async with real_backend.redis.pipeline(transaction=False) as pipe:
        for event in events:
            pipe.xadd(keys.events, entry_fields(event))
        ids = [i.decode() for i in await pipe.execute()]
    index = {event_field(seq): i for seq, i in enumerate(ids, start=1)}
    await real_backend.redis.hset(keys.control(task_id), mapping={"seq": len(ids), **index})
    async with recording_system(real_backend) as (system, client), served(system) as (_, http):
        await system.project()  # as usual, the projection holds the task: nothing left to fold
        got: list[str] = []
        async with (
            asyncio.timeout(DEADLINE_S),
            http.stream("GET", f"/api/backtests/tasks/{task_id}/stream") as response,
        ):
            assert response.status_code == 200
            async for event in sse(response):
                got.append(event["id"])
                if len(got) == len(ids):
                    break
        assert got == ids
        # Read in pages of the index (and one read of the newest event's id): never more at once.
        pages = [asked for name, asked, _ in client.reads if name == "HMGET"]
        assert pages.count(PAGE) == 2 and max(pages) == PAGE


async def test_a_subscriber_that_falls_behind_is_cut_off_by_events_not_batches(real_backend: Backend) -> None:
    """What a slow stream holds is bounded in events: past QUEUE_EVENTS it is cut off (and its
    queue dropped at once), while a stream that keeps up gets everything."""
    feed = LiveFeed(real_backend.blocking, [real_backend.keys.events])
    slow, fast = await feed.subscribe(), await feed.subscribe()
    try:
        ids = await write_events(real_backend, QUEUE_EVENTS + PAGE)
        got: list[str] = []
        async with asyncio.timeout(DEADLINE_S):
            while len(got) < len(ids):
                batch = await fast.get(1.0)
                assert batch is not None
                got += [e.id for e in batch]
        assert got == ids and not fast.overflowed
        # The feed read the same batches for both: the slow one went over its bound on the way.
        assert slow.overflowed and slow.waiting == 0
        assert await slow.get(1.0) is None  # its stream ends; the client resumes from its last id
    finally:
        feed.close()


class _BrokenClient(aioredis.Redis):
    """A client whose XREAD breaks with what is no redis error, as redis-py's cluster client
    did when a connection it shared was closed under a command (AttributeError)."""

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if args[0] in ("XREAD", b"XREAD"):
            raise AttributeError("'NoneType' object has no attribute 'writelines'")
        return await super().execute_command(*args, **options)


async def test_a_feed_reader_that_breaks_ends_its_streams_instead_of_leaving_them_waiting(
    real_backend: Backend,
) -> None:
    assert real_backend.url is not None
    broken = _BrokenClient.from_url(real_backend.url)
    feed = LiveFeed(broken, [real_backend.keys.events])
    try:
        sub = await feed.subscribe()
        # The stream ends (the client reconnects and resumes from its Last-Event-ID).
        assert await sub.get(DEADLINE_S) is None
    finally:
        feed.close()
        await broken.aclose()


def _raw_get(port: int, path: str, headers: str = "") -> socket.socket:
    """A GET sent on a socket with a small receive buffer, whose answer nobody reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n{headers}\r\n".encode())
    return sock


async def test_a_client_that_reads_nothing_holds_a_bounded_part_of_the_backlog(real_backend: Backend) -> None:
    """Memory per stream does not grow with the log: a client that stops reading stops the
    catch-up after a few pages (TCP flow control), where building the backlog first read all."""
    pages = 80
    await write_events(real_backend, pages * PAGE)
    async with recording_system(real_backend) as (system, client), served(system) as (server, _):
        sock = _raw_get(server.port, "/api/stream", "Last-Event-ID: 0-0\r\n")
        try:
            # Wait until the catch-up stalls (no new read for a while), within the deadline.
            seen = [-1]

            def stalled() -> bool:
                stopped, seen[0] = len(client.reads) == seen[0], len(client.reads)
                return stopped

            await eventually(stalled, timeout=DEADLINE_S, what="the catch-up to stall", every=0.5)
            read = sum(returned for name, _, returned in client.reads if name == "XRANGE")
            assert 0 < read <= pages * PAGE // 2, f"a stream nobody reads pulled {read} entries of {pages * PAGE}"
        finally:
            sock.close()


async def test_open_streams_per_client_are_limited_with_a_429(real_backend: Backend) -> None:
    async with (
        recording_system(real_backend, sse_streams_per_client=2) as (system, _),
        served(system) as (_, http),
        contextlib.AsyncExitStack() as streams_after,
    ):
        async with contextlib.AsyncExitStack() as streams:
            for _ in range(2):
                opened = await streams.enter_async_context(http.stream("GET", "/api/stream"))
                assert opened.status_code == 200
            refused = await http.get("/api/stream")
            assert refused.status_code == 429 and refused.headers["retry-after"]
            body = refused.json()
            assert body["error"] == "too_many_streams" and body["fields"][0]["field"] == "Authorization"
            task_stream = await http.get(f"/api/backtests/tasks/{uuid.uuid4()}/stream")
            assert task_stream.status_code == 429  # every kind of stream counts
            # HEAD holds no stream, so it needs no slot.
            assert (await http.head(f"/api/backtests/tasks/{uuid.uuid4()}/stream")).status_code == 404
            assert (await http.head("/api/stream")).status_code == 200

        # Closed streams give their slots back (once the server saw the client go).
        async def reopened() -> bool:
            again = await streams_after.enter_async_context(http.stream("GET", "/api/stream"))
            assert again.status_code in (200, 429)
            return again.status_code == 200

        for _ in range(2):  # the server notices the closed streams on its own
            await eventually(reopened, timeout=DEADLINE_S, what="a stream slot to be given back")
        # Released once each: the count is exact again, not below the limit.
        assert (await http.get("/api/stream")).status_code == 429


async def test_the_limit_is_per_token(real_backend: Backend) -> None:
    tokens = (ApiToken(owner="alice", secret="a" * 24), ApiToken(owner="bob", secret="b" * 24))
    async with (
        recording_system(real_backend, sse_streams_per_client=1, tokens=tokens) as (system, _),
        served(system) as (_, http),
    ):
        alice, bob = ({"Authorization": f"Bearer {t.secret}"} for t in tokens)
        async with http.stream("GET", "/api/stream", headers=alice) as first:
            assert first.status_code == 200
            assert (await http.get("/api/stream", headers=alice)).status_code == 429
            async with http.stream("GET", "/api/stream", headers=bob) as other:
                assert other.status_code == 200


async def test_head_is_answered_at_once_and_a_pipelined_request_behind_it_too(real_backend: Backend) -> None:
    async with recording_system(real_backend) as (system, _), served(system) as (server, http):
        task_id = (await http.post("/api/backtests", json={"strategy": "buy_and_hold", "symbol": "GOOG"})).json()[
            "task_id"
        ]
        for path in ("/api/stream", f"/api/backtests/tasks/{task_id}/stream"):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(
                f"HEAD {path} HTTP/1.1\r\nHost: test\r\n\r\nGET /healthz HTTP/1.1\r\nHost: test\r\n\r\n".encode()
            )
            await writer.drain()
            answer = b""
            async with asyncio.timeout(5):  # a held HEAD kept the GET waiting 60 s
                while answer.count(b"HTTP/1.1 ") < 2 or not answer.endswith(b"}"):
                    chunk = await reader.read(65536)
                    assert chunk, answer
                    answer += chunk
            writer.close()
            head, healthz = answer.split(b"HTTP/1.1 ")[1:]
            assert head.startswith(b"200") and b"text/event-stream" in head
            assert healthz.startswith(b"200")
        missing = await http.head(f"/api/backtests/tasks/{uuid.uuid4()}/stream")
        assert missing.status_code == 404


async def test_a_quiet_stream_gives_a_resume_point_at_once(real_backend: Backend) -> None:
    ids = await write_events(real_backend, 3)
    async with recording_system(real_backend) as (system, _), served(system) as (_, http):
        async with asyncio.timeout(DEADLINE_S), http.stream("GET", "/api/stream") as response:
            lines = response.aiter_lines()
            first = [await anext(lines) for _ in range(3)]
        # Without Last-Event-ID the stream starts now; its first event says where "now" is, so a
        # client dropped before anything happens resumes from there and misses nothing.
        assert first[0].startswith("retry: ") and first[1] == f"id: {ids[-1]}" and first[2] == ""
