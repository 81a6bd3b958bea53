"""Server-Sent Event streams: every task's events (`/api/stream`) or one task's, from the read
model and then the live feed; progress coalesced per task."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator

import structlog
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from api.context import context
from api.errors import ApiError, task_id_param
from api.live.coalesce import TERMINAL, Coalescer
from api.live.feed import PAGE, LiveFeed, Subscription, decodable, feed_of
from orchestrator.domain.events import StoredEvent
from orchestrator.domain.history import event_view
from orchestrator.domain.status import TERMINAL_STATUSES
from orchestrator.storage.readmodel import BadCursor, LogCursor, ReadModel

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
_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_END = "event: end\ndata: {}\n\n"


def _frame(stored: StoredEvent, event_id: str | None) -> str:
    data = json.dumps(event_view(stored), separators=(",", ":"))
    return (f"id: {event_id}\n" if event_id is not None else "") + f"data: {data}\n\n"


def _start_after(request: Request, width: int) -> LogCursor | None:
    """The client's Last-Event-ID (or `?last_event_id=`) as a log cursor of `width` partitions
    (see readmodel.cursor: the plain stream id when there is one partition, one id per partition
    otherwise); None without one. A 422 naming Last-Event-ID when it is not a cursor."""
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if raw is None:
        return None
    try:
        return LogCursor.parse(raw, width)
    except BadCursor as e:
        raise ApiError.invalid("Last-Event-ID", str(e)) from None


class _Open:
    """What one open stream holds, released once whatever way it ends (see _SseResponse)."""

    def __init__(self, feed: LiveFeed, client: str) -> None:
        self.feed, self.client = feed, client
        self.sub: Subscription | None = None
        self.closed = False

    def close(self) -> None:
        """Give back the slot and the subscription (idempotent)."""
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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.opened.close()


class _Stream:
    """The SSE body of one stream: the backlog after `after` (every partition's log, or the
    task's events still in the log), read a page at a time, then live events, progress coalesced.
    Every keep-alive carries a resume point. A task stream ends after the task's terminal
    event, or, when the read model said the task was `finished` as it opened, once its backlog
    is sent (retention may have trimmed the terminal event).

    Positions are kept per partition (a task stream's cursor has one: its task's partition's),
    since there is no order across partitions; the `id:` lines carry the whole cursor."""

    def __init__(self, opened: _Open, reads: ReadModel, after: LogCursor, task_id: str | None, finished: bool) -> None:
        self.opened, self.reads, self.task_id, self.finished = opened, reads, task_id, finished
        self.loop = asyncio.get_running_loop()
        self.coalescer = Coalescer(COALESCE_S)
        self.after = after
        self.seen = after.copy()  # the newest ids looked at (sent, coalesced away, or another task's)
        self.sent = after.copy()  # the newest ids sent with an `id:` line: what the browser resumes from
        self.opened_at = self.last_write = self.loop.time()
        self.ended = False

    def _partition(self, stored: StoredEvent) -> int | None:
        """The cursor's index of the partition `stored` was read from (its task's)."""
        return 0 if self.task_id is not None else self.reads.partition_index(stored.event.task_id)

    def frames(self, batch: list[StoredEvent], now: float) -> str:
        """The frames to write for `batch` at time `now` (loop seconds), and any held progress due."""
        out: list[StoredEvent] = []
        for stored in batch:
            # A task's stream looks at its own events only, before its cursor moves: the feed
            # brings every partition's events, and another partition's ids say nothing of the
            # order of this task's (a newer id there would hide an older one of this task's).
            if self.task_id is not None and stored.event.task_id != self.task_id:
                continue
            partition = self._partition(stored)
            if partition is None or not self.seen.advance(partition, stored.id):
                continue
            out += self.coalescer.offer(stored, now)
        out += self.coalescer.due(now)
        chunks = []
        for stored in out:
            partition = self._partition(stored)
            newer = partition is not None and self.sent.advance(partition, stored.id)
            chunks.append(_frame(stored, str(self.sent) if newer else None))
        if self.task_id is not None and any(isinstance(s.event, TERMINAL) for s in out):
            chunks.append(_END)
            self.ended = True
        return "".join(chunks)

    def resume_point(self) -> str:
        """An `id:` line moving the client's Last-Event-ID up to what it has seen, when nothing
        it has not been sent lies behind that (no progress held back)."""
        if self.coalescer.next_due() is None and self.seen.ahead_of(self.sent):
            self.sent = self.seen.copy()
            return f"id: {self.sent}\n"
        return ""

    def _out_of_time(self) -> bool:
        return self.loop.time() - self.opened_at >= MAX_STREAM_S

    async def _log_backlog(self) -> AsyncIterator[str]:
        """All tasks: catch up page by page before following the feed (so its queue does not fill
        while the log is read); then subscribe and read what arrived meanwhile, also in pages."""
        feed = self.opened.feed
        for subscribed in (False, True):
            if subscribed:
                if feed.closed:  # shutting down while this stream caught up: end it
                    self.ended = True
                    return
                self.opened.sub = await feed.subscribe()
            async for _, page in self.reads.cursor_pages(self.seen, PAGE):
                chunk = self.frames(decodable(page), self.loop.time())
                if chunk:
                    self.last_write = self.loop.time()
                    yield chunk
                if self._out_of_time():
                    self.ended = True
                    return

    async def _task_backlog(self, task_id: str) -> AsyncIterator[str]:
        """One task: its events still in the log after `after`, a page of its log index at a time."""
        async for page in self.reads.task_event_pages(task_id, self.after.positions[0], PAGE):
            chunk = self.frames(page, self.loop.time())
            if chunk:
                self.last_write = self.loop.time()
                yield chunk
            if self.ended or self._out_of_time():
                self.ended = True
                return
        if self.finished:
            yield self.frames([], math.inf) + _END
            self.ended = True

    async def _live(self) -> AsyncIterator[str]:
        """The feed's batches until the stream ends, with keep-alives and a final resume point."""
        batch: list[StoredEvent] | None = []
        while True:
            now = self.loop.time()
            chunk = self.frames(batch or [], now)
            if chunk:
                self.last_write = now
                yield chunk
            if self.ended:
                return
            if now - self.last_write >= KEEPALIVE_S:
                self.last_write = now
                yield f": keep-alive\n{self.resume_point()}\n"
            if now - self.opened_at >= MAX_STREAM_S:
                point = self.resume_point()
                if point:
                    yield point + "\n"
                return
            due = self.coalescer.next_due()
            wait = min(KEEPALIVE_S - (now - self.last_write), MAX_STREAM_S - (now - self.opened_at))
            if due is not None:
                wait = min(wait, max(due - now, 0.0))
            assert self.opened.sub is not None
            batch = await self.opened.sub.get(max(wait, 0.0))
            if batch is None:
                return

    async def body(self) -> AsyncIterator[str]:
        """The whole body, releasing the stream's slot and subscription however it ends."""
        log.info("sse.connected", task_id=self.task_id, after=str(self.after), client=self.opened.client)
        try:
            # The resume point from the first byte on: a client that loses the stream before any
            # event resumes from here, not from "now" at its reconnect.
            yield f"retry: {RETRY_MS}\n" + (f"id: {self.after}\n" if self.task_id is None else "") + "\n"
            backlog = self._log_backlog() if self.task_id is None else self._task_backlog(self.task_id)
            async for chunk in backlog:
                yield chunk
            if not self.ended:
                async for chunk in self._live():
                    yield chunk
        finally:
            self.opened.close()
            log.info("sse.disconnected", task_id=self.task_id, last_event_id=str(self.sent))


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
    feed.acquire(client, context(request).settings.sse_streams_per_client)
    return _Open(feed, client)


def _head() -> Response:
    """HEAD of a stream: its headers at once, no body and no stream held open."""
    return Response(media_type="text/event-stream", headers=_HEADERS)


async def stream_all(request: Request) -> Response:
    """GET /api/stream: every task's events from now on (or after Last-Event-ID: a log cursor,
    see readmodel.cursor)."""
    reads = context(request).projection
    after = _start_after(request, reads.width)
    feed_of(request).check_open()
    if request.method == "HEAD":
        return _head()
    if after is None:
        after = await reads.latest()
    opened = _open(request)
    return _SseResponse(_Stream(opened, reads, after, None, finished=False).body(), opened)


async def stream_task(request: Request) -> Response:
    """GET /api/backtests/tasks/{id}/stream: the task's events from its start (or after
    Last-Event-ID), live, ending after its terminal event. 204 once there is nothing more;
    404 when the read model knows no such task."""
    task_id = task_id_param(request)
    after = _start_after(request, 1) or LogCursor.start(1)
    feed = feed_of(request)
    feed.check_open()
    reads = context(request).projection
    # HEAD holds nothing: no slot, no subscription, just the answer a GET would start with.
    opened = None if request.method == "HEAD" else _open(request)
    try:
        if opened is not None:
            # Subscribed before the history is read: no event falls between the two.
            opened.sub = await feed.subscribe()
        # The read model decides, as for every other reader: a task whose log retention trimmed
        # is still a finished task (204), not an unknown one.
        state = await reads.current(task_id)
        if state is None:
            raise ApiError.task_not_found(f"task {task_id} does not exist")
        finished = state.status in TERMINAL_STATUSES
        last = await reads.last_task_event_id(task_id)
        if finished and (last is None or after.passed(0, last)):
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
    return _SseResponse(_Stream(opened, reads, after, task_id, finished).body(), opened)


routes = [
    Route("/api/stream", stream_all, methods=["GET", "HEAD"], name="stream"),
    Route("/api/backtests/tasks/{task_id}/stream", stream_task, methods=["GET", "HEAD"], name="task_stream"),
]
