"""The live feed: one blocking read of each partition's log per API process, fanned out to every
open stream."""

from __future__ import annotations

import asyncio

import structlog
from starlette.applications import Starlette
from starlette.requests import Request

from api.context import context
from api.errors import ApiError, FieldProblem
from orchestrator.domain.events import StoredEvent
from orchestrator.storage.connections import RedisClient, ready_for_concurrent_calls
from orchestrator.storage.readmodel.log import LogPage, latest_cursor, tail

log = structlog.get_logger("backstream.live")

# Events a subscriber may have waiting before it is cut off (it reconnects and catches up from
# its Last-Event-ID, in pages): what one slow client holds is bounded whatever the event rate.
QUEUE_EVENTS = 5_000
READ_BLOCK_MS = 1000
# Entries per XREAD / XRANGE call: a stream holds at most one page of the log in memory.
PAGE = 500
# What a client refused a stream slot is told to wait (Retry-After, s).
STREAM_SLOT_RETRY_S = 5


def decodable(page: LogPage) -> list[StoredEvent]:
    """The page's events; an entry written by a newer Backstream is logged and skipped, never fatal."""
    for entry, error in page.undecodable:
        log.warning("sse.undecodable", entry=entry, error=error)
    return page.events


class Subscription:
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
        """The next batch ([] if none came within `wait_s` seconds); None when the stream must end."""
        try:
            batch = await asyncio.wait_for(self.queue.get(), timeout=wait_s)
        except TimeoutError:
            return []
        if batch is not None:
            self.waiting -= len(batch)
        return batch


class LiveFeed:
    """One blocking XREAD loop per partition per API process, fanned out to every open stream, so
    a hundred browsers cost one Redis connection per partition. It runs only while someone
    listens. `blocking`: a Redis client without a socket timeout; `streams`: the partitions'
    events streams' keys (on a cluster one XREAD cannot name two partitions' streams, so each
    has its own read). A batch holds events of one partition, in its log order."""

    def __init__(self, blocking: RedisClient, streams: list[str]) -> None:
        self.blocking = blocking
        self.streams = streams
        self.closed = False
        self._subscribers: set[Subscription] = set()
        # Open streams per client (see acquire); in memory, per API process.
        self._streams: dict[str, int] = {}
        self._readers: list[asyncio.Task[None]] = []
        # Streams opening together must not start a reader each (only one would be stopped).
        self._starting = asyncio.Lock()

    def check_open(self) -> None:
        """Raise the 503 ApiError a shutting-down server answers a new stream with."""
        if self.closed:
            raise ApiError(
                503, "shutting_down", "the server is shutting down; reconnect shortly", headers={"Retry-After": "1"}
            )

    def acquire(self, client: str, limit: int) -> None:
        """Count one more open stream of `client`; raises a 429 ApiError if it holds `limit` already."""
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
        """Give back one of `client`'s stream slots."""
        held = self._streams.get(client, 0) - 1
        if held > 0:
            self._streams[client] = held
        else:
            self._streams.pop(client, None)

    async def subscribe(self) -> Subscription:
        """A new subscription to every batch read from now on (starting the reader if needed).
        Raises the 503 ApiError when closed, and redis errors."""
        self.check_open()
        sub = Subscription()
        async with self._starting:
            if not self._readers or any(r.done() for r in self._readers):
                self._stop_readers()
                # One read per partition at once: a fresh cluster client must be ready for that.
                await ready_for_concurrent_calls(self.blocking)
                # Start at the end of each log as it is now: every stream catches up on its own first.
                start = await latest_cursor(self.blocking, self.streams)
                self._readers = [
                    asyncio.create_task(self._read(stream, position))
                    for stream, position in zip(self.streams, start.positions, strict=True)
                ]
            # Added before the reader's first read can run: no event falls between the two.
            self._subscribers.add(sub)
            if self.closed:  # closed while this one waited: it ends at once, as the others did
                sub.put(None)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop feeding `sub`; the reader stops with the last subscriber."""
        self._subscribers.discard(sub)
        if not self._subscribers:
            self._stop_readers()

    def _stop_readers(self) -> None:
        for reader in self._readers:
            reader.cancel()
        self._readers = []

    def close(self) -> None:
        """End every open stream (on shutdown) and refuse new ones."""
        self.closed = True
        for sub in list(self._subscribers):
            sub.put(None)
        self._stop_readers()

    async def _read(self, stream: str, position: str) -> None:
        while True:
            try:
                page = await tail(self.blocking, stream, position, count=PAGE, block_ms=READ_BLOCK_MS)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # Redis away (or its client broke): end the streams; clients reconnect
                # Anything else would end this reader silently and leave its streams waiting.
                log.warning("sse.feed_failed", error=str(e), error_type=type(e).__name__)
                for sub in list(self._subscribers):
                    sub.put(None)
                return
            if page is None:
                continue
            position = page.last_id
            batch = decodable(page)
            for sub in list(self._subscribers):
                if not sub.put(batch):
                    log.warning("sse.subscriber_overflow")
                    self._subscribers.discard(sub)


def running_feed(app: Starlette) -> LiveFeed | None:
    """The live feed of `app` (a Starlette app), or None while no stream has opened one."""
    feed: LiveFeed | None = getattr(app.state, "live", None)
    return feed


def feed_of(request: Request) -> LiveFeed:
    """The app's live feed, made on first use from its context's blocking client. Raises
    RuntimeError when the app has no context (see api.context.context)."""
    feed = running_feed(request.app)
    if feed is None:
        ctx = context(request)
        streams = [keys.events for keys in ctx.projection.partitions]
        feed = request.app.state.live = LiveFeed(ctx.blocking, streams)
    return feed


def close_streams(app: Starlette) -> None:
    """End the open SSE streams of `app` so a shutting-down server is not held up by them."""
    feed = running_feed(app)
    if feed is not None:
        feed.close()
