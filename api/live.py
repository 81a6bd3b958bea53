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

from api.errors import ApiError, FieldProblem, task_id_param
from orchestrator.domain.errors import EventDecodeError
from orchestrator.domain.events import Cancelled, Completed, Failed, Progress, StoredEvent
from orchestrator.domain.history import event_view
from orchestrator.domain.ids import LAST_ID, canonical_stream_id, id_order
from orchestrator.domain.status import TERMINAL_STATUSES
from orchestrator.storage.codec import decode_entry, text

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
# Events a subscriber may have waiting before it is cut off (it reconnects and catches up from
# its Last-Event-ID, in pages): what one slow client holds is bounded whatever the event rate.
QUEUE_EVENTS = 5_000
READ_BLOCK_MS = 1000
# Entries per XREAD / XRANGE call: a stream holds at most one page of the log in memory.
PAGE = 500
# What a client refused a stream slot is told to wait (Retry-After, s).
STREAM_SLOT_RETRY_S = 5
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
    """One stream's queue of the feed's batches, bounded by events (QUEUE_EVENTS)."""

    def __init__(self) -> None:
        # Unbounded as a queue; `waiting` bounds it by events (batches vary from 1 to PAGE).
        self.queue: asyncio.Queue[list[StoredEvent] | None] = asyncio.Queue()
        self.waiting = 0
        # Set when the stream fell too far behind: it ends, and the client catches up on reconnect.
        self.overflowed = False

    def put(self, batch: list[StoredEvent] | None) -> bool:
        """Queue a batch (None: end the stream). False, and the stream ends, when the stream has
        QUEUE_EVENTS waiting already: what it holds is dropped at once."""
        if batch is None:
            self.queue.put_nowait(None)
            return True
        if self.waiting + len(batch) > QUEUE_EVENTS:
            self.overflowed = True
            while not self.queue.empty():
                self.queue.get_nowait()
            self.waiting = 0
            self.queue.put_nowait(None)
            return False
        self.waiting += len(batch)
        self.queue.put_nowait(batch)
        return True

    async def get(self, wait_s: float) -> list[StoredEvent] | None:
        """The next batch ([] if none came within `wait_s`); None when the stream must end."""
        try:
            batch = await asyncio.wait_for(self.queue.get(), timeout=wait_s)
        except TimeoutError:
            return []
        if batch is not None:
            self.waiting -= len(batch)
        return batch


class LiveFeed:
    """One blocking XREAD loop per API process, fanned out to every open stream, so a hundred
    browsers cost one Redis connection. It runs only while someone listens."""

    def __init__(self, blocking: Any, stream: str) -> None:
        self.blocking = blocking
        self.stream = stream
        self.closed = False
        self._subscribers: set[_Subscription] = set()
        # Open streams per client (see acquire); in memory, per API process.
        self._streams: dict[str, int] = {}
        self._reader: asyncio.Task[None] | None = None
        # Streams opening together must not start a reader each (only one would be stopped).
        self._starting = asyncio.Lock()

    def check_open(self) -> None:
        """Raise the 503 a shutting-down server answers a new stream with."""
        if self.closed:
            raise ApiError(
                503, "shutting_down", "the server is shutting down; reconnect shortly", headers={"Retry-After": "1"}
            )

    def acquire(self, client: str, limit: int) -> None:
        """Count one more open stream of `client`; 429 if it holds `limit` already."""
        held = self._streams.get(client, 0)
        if held >= limit:
            log.warning("sse.too_many_streams", client=client, open=held, limit=limit)
            raise ApiError(
                429,
                "too_many_streams",
                f"this client has {held} event streams open, the most allowed; close one first",
                [FieldProblem("Authorization", f"at most {limit} open streams per client")],
                headers={"Retry-After": str(STREAM_SLOT_RETRY_S)},
            )
        self._streams[client] = held + 1

    def release(self, client: str) -> None:
        held = self._streams.get(client, 0) - 1
        if held > 0:
            self._streams[client] = held
        else:
            self._streams.pop(client, None)

    async def subscribe(self) -> _Subscription:
        self.check_open()
        sub = _Subscription()
        async with self._starting:
            if self._reader is None or self._reader.done():
                # Start at the end of the log as it is now: every stream catches up on its own first.
                latest = await self.blocking.xrevrange(self.stream, "+", "-", count=1)
                start = text(latest[0][0]) if latest else "0-0"
                self._reader = asyncio.create_task(self._read(start))
            # Added before the reader's first read can run: no event falls between the two.
            self._subscribers.add(sub)
            if self.closed:  # closed while this one waited: it ends at once, as the others did
                sub.put(None)
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


async def log_pages(redis: Any, stream: str, after: str) -> AsyncIterator[tuple[str, list[StoredEvent]]]:
    """The log after `after`, read lazily one `XRANGE … COUNT PAGE` at a time: (the id of the
    page's last entry, its decodable events). At most one page is in memory however long the
    log is; the next page is read only when the caller asks for it. Ends at the log's end as of
    the last read (a page of fewer than PAGE entries)."""
    if id_order(after) == LAST_ID:
        return
    position = after
    while True:
        entries = await redis.xrange(stream, f"({position}", "+", count=PAGE)
        if not entries:
            return
        position = text(entries[-1][0])
        yield position, _decode(entries)
        if len(entries) < PAGE:
            return


async def _nothing() -> AsyncIterator[list[StoredEvent]]:
    return
    yield


class _Open:
    """What one open stream holds, released once whatever way it ends (see _SseResponse)."""

    def __init__(self, feed: LiveFeed, client: str) -> None:
        self.feed, self.client = feed, client
        self.sub: _Subscription | None = None
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.feed.release(self.client)
        if self.sub is not None:
            self.feed.unsubscribe(self.sub)
            self.sub = None


class _SseResponse(StreamingResponse):
    """A streamed response that gives back its subscription and its slot when it ends, also when
    its body was never iterated or the client went away mid-stream."""

    def __init__(self, body: AsyncIterator[str], opened: _Open) -> None:
        super().__init__(body, media_type="text/event-stream", headers=_HEADERS)
        self.opened = opened

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.opened.close()


async def _events(
    request: Request,
    opened: _Open,
    after: str,
    task_id: str | None,
    backlog: AsyncIterator[list[StoredEvent]] | None = None,
) -> AsyncIterator[str]:
    """The SSE body: the backlog after `after` (the whole log's, or for a task stream the task's
    pages in `backlog`), read a page at a time, then live events, progress coalesced. Every
    keep-alive carries a resume point."""
    feed = opened.feed
    loop = asyncio.get_running_loop()
    coalescer = Coalescer(COALESCE_S)
    seen = after  # the newest id looked at (sent, coalesced away, or another task's)
    sent = after  # the newest id sent with an `id:` line: what the browser would resume from
    opened_at = last_write = loop.time()
    ended = False

    def frames(batch: list[StoredEvent], now: float) -> str:
        nonlocal seen, sent, ended
        out: list[StoredEvent] = []
        for stored in batch:
            if id_order(stored.id) <= id_order(seen):
                continue
            seen = stored.id
            if task_id is not None and stored.event.task_id != task_id:
                continue
            out += coalescer.offer(stored, now)
        out += coalescer.due(now)
        chunks = []
        for stored in out:
            newer = id_order(stored.id) > id_order(sent)
            chunks.append(_frame(stored, newer))
            sent = stored.id if newer else sent
        if task_id is not None and any(isinstance(s.event, TERMINAL) for s in out):
            chunks.append("event: end\ndata: {}\n\n")
            ended = True
        return "".join(chunks)

    def resume_point() -> str:
        """An `id:` line moving the client's Last-Event-ID up to what it has seen, when nothing
        it has not been sent lies behind that (no progress held back)."""
        nonlocal sent
        if coalescer.next_due() is None and id_order(seen) > id_order(sent):
            sent = seen
            return f"id: {seen}\n"
        return ""

    log.info("sse.connected", task_id=task_id, after=after, client=opened.client)
    try:
        # The resume point from the first byte on: a client that loses the stream before any
        # event resumes from here, not from "now" at its reconnect.
        yield f"retry: {RETRY_MS}\n" + (f"id: {after}\n" if task_id is None else "") + "\n"
        if task_id is None:
            store = request.app.state.ctx.store
            # Catch up page by page before following the feed (so its queue does not fill while
            # the log is read); then subscribe and read what arrived meanwhile, also in pages.
            for subscribed in (False, True):
                if subscribed:
                    if feed.closed:  # shutting down while this stream caught up: end it
                        return
                    opened.sub = await feed.subscribe()
                async for _, page in log_pages(store.redis, feed.stream, seen):
                    chunk = frames(page, loop.time())
                    if chunk:
                        last_write = loop.time()
                        yield chunk
                    if loop.time() - opened_at >= MAX_STREAM_S:
                        return
        else:
            async for page in backlog or _nothing():
                chunk = frames(page, loop.time())
                if chunk:
                    last_write = loop.time()
                    yield chunk
                if ended or loop.time() - opened_at >= MAX_STREAM_S:
                    return
        batch: list[StoredEvent] | None = []
        while True:
            now = loop.time()
            chunk = frames(batch or [], now)
            if chunk:
                last_write = now
                yield chunk
            if ended:
                return
            if now - last_write >= KEEPALIVE_S:
                last_write = now
                yield f": keep-alive\n{resume_point()}\n"
            if now - opened_at >= MAX_STREAM_S:
                point = resume_point()
                if point:
                    yield point + "\n"
                return
            due = coalescer.next_due()
            wait = min(KEEPALIVE_S - (now - last_write), MAX_STREAM_S - (now - opened_at))
            if due is not None:
                wait = min(wait, max(due - now, 0.0))
            assert opened.sub is not None
            batch = await opened.sub.get(max(wait, 0.0))
            if batch is None:
                return
    finally:
        opened.close()
        log.info("sse.disconnected", task_id=task_id, last_event_id=sent)


_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _client(request: Request) -> str:
    """Whose streams these are: the token's owner, or the client's address without access control."""
    user = request.scope.get("user")
    if user:
        return f"user:{user}"
    return f"addr:{request.client.host if request.client else '?'}"


def _open(request: Request) -> _Open:
    """Take one of the client's stream slots (429 when it holds its limit already)."""
    feed = feed_of(request)
    client = _client(request)
    feed.acquire(client, request.app.state.ctx.settings.sse_streams_per_client)
    return _Open(feed, client)


def _head() -> Response:
    """HEAD of a stream: its headers at once, no body and no stream held open."""
    return Response(media_type="text/event-stream", headers=_HEADERS)


async def stream_all(request: Request) -> Response:
    """GET /api/stream: every task's events from now on (or after Last-Event-ID)."""
    after = _start_after(request)
    feed = feed_of(request)
    feed.check_open()
    if request.method == "HEAD":
        return _head()
    if after is None:
        latest = await request.app.state.ctx.store.redis.xrevrange(feed.stream, "+", "-", count=1)
        after = text(latest[0][0]) if latest else "0-0"
    opened = _open(request)
    return _SseResponse(_events(request, opened, after, None), opened)


async def stream_task(request: Request) -> Response:
    """GET /api/backtests/tasks/{id}/stream: the task's events from its start (or after
    Last-Event-ID), live, ending after its terminal event. 204 once there is nothing more."""
    task_id = task_id_param(request)
    after = _start_after(request) or "0-0"
    feed = feed_of(request)
    feed.check_open()
    # HEAD holds nothing: no slot, no subscription, just the answer a GET would start with.
    opened = None if request.method == "HEAD" else _open(request)
    try:
        if opened is not None:
            # Subscribed before the history is read: no event falls between the two.
            opened.sub = await feed.subscribe()
        ctx = request.app.state.ctx
        # The read model decides, as for every other reader: a task whose log retention trimmed
        # is still a finished task (204), not an unknown one.
        state = await ctx.projection.current(task_id, ctx.store)
        if state is None:
            raise ApiError.task_not_found(f"task {task_id} does not exist")
        last = await ctx.projection.last_task_event_id(task_id)
        if state.status in TERMINAL_STATUSES and (last is None or id_order(last) <= id_order(after)):
            if opened is not None:
                opened.close()
            return Response(status_code=204)  # tells an EventSource to stop reconnecting
    except BaseException:
        if opened is not None:
            opened.close()
        raise
    if opened is None:
        return _head()
    # The task's history is read in pages as the stream sends it, not loaded first.
    backlog = ctx.projection.task_event_pages(task_id, after, PAGE)
    return _SseResponse(_events(request, opened, after, task_id, backlog), opened)


routes = [
    Route("/api/stream", stream_all, methods=["GET", "HEAD"]),
    Route("/api/backtests/tasks/{task_id}/stream", stream_task, methods=["GET", "HEAD"]),
]
