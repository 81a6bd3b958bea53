"""Live updates as Server-Sent Events, fed from the event log; progress coalesced per task."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import redis.exceptions
import structlog
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from api.errors import ApiError, task_id_param
from orchestrator.codec import LAST_ID, canonical_stream_id, decode_entry, id_order, text
from orchestrator.errors import EventDecodeError
from orchestrator.events import Cancelled, Completed, Failed, Progress, StoredEvent
from orchestrator.history import event_view

log = structlog.get_logger("backstream.live")

# At most one progress event per task per this interval reaches a client (the latest one wins).
COALESCE_S = 0.25
# A comment line this often keeps proxies from closing an idle stream and notices gone clients.
KEEPALIVE_S = 15.0
# A stream ends after this long; the browser reconnects at once with Last-Event-ID and misses
# nothing. It bounds how long an open stream can hold up a server that is shutting down.
MAX_STREAM_S = 60.0
# What the browser waits before reconnecting (the SSE `retry:` field), in ms.
RETRY_MS = 1000
# Batches a subscriber may have waiting before it is cut off (it reconnects and catches up).
QUEUE_BATCHES = 1000
READ_BLOCK_MS = 1000
PAGE = 500
TERMINAL = (Completed, Failed, Cancelled)


def _decode(entries: list[Any]) -> list[StoredEvent]:
    events = []
    for entry_id, fields in entries:
        try:
            events.append(decode_entry(entry_id, fields))
        except EventDecodeError as e:  # written by a newer Backstream: skip it here, never crash
            log.warning("sse.undecodable", entry=text(entry_id), error=str(e))
    return events


class Coalescer:
    """Holds back progress events so each task gets at most one per `interval_s` (the latest
    wins); any other event of the task supersedes its held progress. Pure: the caller passes
    the time."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._sent_at: dict[str, float] = {}
        self._held: dict[str, StoredEvent] = {}

    def offer(self, stored: StoredEvent, now: float) -> list[StoredEvent]:
        """The events to send now for this one."""
        task_id = stored.event.task_id
        if not isinstance(stored.event, Progress):
            self._held.pop(task_id, None)
            if isinstance(stored.event, TERMINAL):
                self._sent_at.pop(task_id, None)
            return [stored]
        if now - self._sent_at.get(task_id, float("-inf")) >= self.interval_s:
            self._held.pop(task_id, None)
            self._sent_at[task_id] = now
            return [stored]
        self._held[task_id] = stored
        return []

    def due(self, now: float) -> list[StoredEvent]:
        """Held progress events whose interval has passed, in log order."""
        ready = [t for t in self._held if now - self._sent_at.get(t, float("-inf")) >= self.interval_s]
        out = sorted((self._held.pop(t) for t in ready), key=lambda s: id_order(s.id))
        for stored in out:
            self._sent_at[stored.event.task_id] = now
        return out

    def next_due(self) -> float | None:
        """When the earliest held event is due, or None."""
        if not self._held:
            return None
        return min(self._sent_at.get(t, float("-inf")) for t in self._held) + self.interval_s


class _Subscription:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[list[StoredEvent] | None] = asyncio.Queue(QUEUE_BATCHES)
        # Set when the stream fell too far behind: it ends, and the client catches up on reconnect.
        self.overflowed = False

    def put(self, batch: list[StoredEvent] | None) -> bool:
        try:
            self.queue.put_nowait(batch)
        except asyncio.QueueFull:
            self.overflowed = True
            return False
        return True


class LiveFeed:
    """One blocking XREAD loop per API process, fanned out to every open stream, so a hundred
    browsers cost one Redis connection. It runs only while someone listens."""

    def __init__(self, blocking: Any, stream: str) -> None:
        self.blocking = blocking
        self.stream = stream
        self.closed = False
        self._subscribers: set[_Subscription] = set()
        self._reader: asyncio.Task[None] | None = None
        # Streams opening together must not start a reader each (only one would be stopped).
        self._starting = asyncio.Lock()

    async def subscribe(self) -> _Subscription:
        if self.closed:
            raise ApiError(
                503, "shutting_down", "the server is shutting down; reconnect shortly", headers={"Retry-After": "1"}
            )
        sub = _Subscription()
        async with self._starting:
            if self._reader is None or self._reader.done():
                # Start at the end of the log as it is now: every stream catches up on its own first.
                latest = await self.blocking.xrevrange(self.stream, "+", "-", count=1)
                start = text(latest[0][0]) if latest else "0-0"
                self._reader = asyncio.create_task(self._read(start))
            # Added before the reader's first read can run: no event falls between the two.
            self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: _Subscription) -> None:
        self._subscribers.discard(sub)
        if not self._subscribers and self._reader is not None:
            self._reader.cancel()
            self._reader = None

    def close(self) -> None:
        """End every open stream (on shutdown) and refuse new ones."""
        self.closed = True
        for sub in list(self._subscribers):
            sub.put(None)
        if self._reader is not None:
            self._reader.cancel()
            self._reader = None

    async def _read(self, position: str) -> None:
        while True:
            try:
                reply = await self.blocking.xread({self.stream: position}, count=PAGE, block=READ_BLOCK_MS)
            except asyncio.CancelledError:
                raise
            except (redis.exceptions.RedisError, OSError) as e:  # Redis away: end the streams; clients reconnect
                log.warning("sse.feed_failed", error=str(e))
                for sub in list(self._subscribers):
                    sub.put(None)
                return
            if not reply:
                continue
            entries = reply[0][1]
            position = text(entries[-1][0])
            batch = _decode(entries)
            for sub in list(self._subscribers):
                if not sub.put(batch):
                    log.warning("sse.subscriber_overflow")
                    self._subscribers.discard(sub)


def feed_of(request: Request) -> LiveFeed:
    state = request.app.state
    feed = getattr(state, "live", None)
    if feed is None:
        ctx = state.ctx
        feed = state.live = LiveFeed(ctx.blocking, ctx.store.keys.events)
    return feed


def close_streams(app: Any) -> None:
    """End the open SSE streams of `app` so a shutting-down server is not held up by them."""
    feed = getattr(app.state, "live", None)
    if feed is not None:
        feed.close()


def _frame(stored: StoredEvent, with_id: bool) -> str:
    data = json.dumps(event_view(stored), separators=(",", ":"))
    return (f"id: {stored.id}\n" if with_id else "") + f"data: {data}\n\n"


def _start_after(request: Request) -> str | None:
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if raw is None:
        return None
    after = canonical_stream_id(raw.strip())
    if after is None:
        raise ApiError.invalid("Last-Event-ID", "must be a stream id such as 1700000000000-0 (or 0: the start)")
    return after


async def _catch_up(request: Request, after: str, task_id: str | None) -> list[StoredEvent]:
    store = request.app.state.ctx.store
    if task_id is not None:
        return [e for e in await store.task_events(task_id) if id_order(e.id) > id_order(after)]
    if id_order(after) == LAST_ID:
        return []
    out: list[StoredEvent] = []
    position = after
    while True:
        entries = await store.redis.xrange(store.keys.events, f"({position}", "+", count=PAGE)
        if not entries:
            return out
        out += _decode(entries)
        position = text(entries[-1][0])
        if len(entries) < PAGE:
            return out


async def _events(
    request: Request, feed: LiveFeed, sub: _Subscription, after: str, task_id: str | None, backlog: list[StoredEvent]
) -> AsyncIterator[str]:
    """The SSE body: the backlog after `after`, then live events, progress coalesced."""
    loop = asyncio.get_running_loop()
    coalescer = Coalescer(COALESCE_S)
    seen = after  # the newest id looked at (sent, or coalesced away)
    sent = after  # the newest id sent with an `id:` line: what the browser would resume from
    opened = last_write = loop.time()
    log.info("sse.connected", task_id=task_id, after=after)
    try:
        yield f"retry: {RETRY_MS}\n\n"
        batch: list[StoredEvent] | None = backlog
        while True:
            now = loop.time()
            out: list[StoredEvent] = []
            for stored in batch or []:
                if id_order(stored.id) <= id_order(seen) or (task_id is not None and stored.event.task_id != task_id):
                    continue
                seen = stored.id
                out += coalescer.offer(stored, now)
            out += coalescer.due(now)
            chunks = []
            for stored in out:
                newer = id_order(stored.id) > id_order(sent)
                chunks.append(_frame(stored, newer))
                sent = stored.id if newer else sent
            if chunks:
                last_write = now
                yield "".join(chunks)
            if task_id is not None and any(isinstance(s.event, TERMINAL) for s in out):
                yield "event: end\ndata: {}\n\n"
                return
            if now - last_write >= KEEPALIVE_S:
                last_write = now
                yield ": keep-alive\n\n"
            if now - opened >= MAX_STREAM_S:
                return
            due = coalescer.next_due()
            wait = min(KEEPALIVE_S - (now - last_write), MAX_STREAM_S - (now - opened))
            if due is not None:
                wait = min(wait, max(due - now, 0.0))
            try:
                batch = await asyncio.wait_for(sub.queue.get(), timeout=max(wait, 0.0))
            except TimeoutError:
                batch = []
            if batch is None or sub.overflowed:
                return
    finally:
        feed.unsubscribe(sub)
        log.info("sse.disconnected", task_id=task_id, last_event_id=sent)


_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def stream_all(request: Request) -> Response:
    """GET /api/stream: every task's events from now on (or after Last-Event-ID)."""
    after = _start_after(request)
    feed = feed_of(request)
    sub = await feed.subscribe()
    try:
        if after is None:
            latest = await request.app.state.ctx.store.redis.xrevrange(feed.stream, "+", "-", count=1)
            after = text(latest[0][0]) if latest else "0-0"
            backlog = []
        else:
            backlog = await _catch_up(request, after, None)
    except BaseException:
        feed.unsubscribe(sub)
        raise
    return StreamingResponse(
        _events(request, feed, sub, after, None, backlog), media_type="text/event-stream", headers=_HEADERS
    )


async def stream_task(request: Request) -> Response:
    """GET /api/backtests/tasks/{id}/stream: the task's events from its start (or after
    Last-Event-ID), live, ending after its terminal event. 204 once there is nothing more."""
    task_id = task_id_param(request)
    after = _start_after(request) or "0-0"
    feed = feed_of(request)
    sub = await feed.subscribe()
    try:
        history = await request.app.state.ctx.store.task_events(task_id)
        if not history:
            raise ApiError.task_not_found(f"task {task_id} does not exist")
        backlog = [e for e in history if id_order(e.id) > id_order(after)]
        if not backlog and isinstance(history[-1].event, TERMINAL):
            feed.unsubscribe(sub)
            return Response(status_code=204)  # tells an EventSource to stop reconnecting
    except BaseException:
        feed.unsubscribe(sub)
        raise
    return StreamingResponse(
        _events(request, feed, sub, after, task_id, backlog), media_type="text/event-stream", headers=_HEADERS
    )


routes = [
    Route("/api/stream", stream_all),
    Route("/api/backtests/tasks/{task_id}/stream", stream_task),
]
